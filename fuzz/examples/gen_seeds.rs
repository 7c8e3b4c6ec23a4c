//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*` from real samples:
//! PROTOCOL.md messages, the shared WeChat vectors, `examples/*.toml`, and nginx-like FastCGI
//! requests encoded with `weixin_fcgi::fastcgi::client::encode_request`.
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds`.

use std::path::Path;
use weixin_fcgi::fastcgi::client::encode_request;
use weixin_fcgi::fastcgi::record;

// From tests/fixtures/vectors/wechat-vectors.json (token "pamtest").
const TS: &str = "1409304348";
const NONCE: &str = "xxxxxx";
const SIGNATURE: &str = "76480565cbe296026c53aaacd1ad523a1ddba24f";
const MSG_SIGNATURE: &str = "f7de5fafc9918bad3bb32dff7ed52b13bef394e3";
const ENCRYPT: &str = "gh_test]]></ToUserName><Encrypt><![CDATA[yx5hgR7qZDxx/GPgbrhUydkN0Y1UE7TxyGLQXZFNervsH89xtdP1PDHRFwrW0Vmq015nlDjJONg+uPJLV5XDdMRFzLNXx1btHEIyJpiyhEZbLPIl/VjMKO0343vzIOQ02KHWWPn7llwBCnIn1OT1g62n9KXjxGPRCcdddCNTcIetn8AfBttMkMTyb3IOL04CU5TAUCmA7Iixp0IODn1VoRgD3ffIv8Mz8f3Jf+3DahwL3oV73NTU6KibeIDFcqk4cuR+KjTBDpZYGyPk0el+VULiPhlbR9LFehYtoTSvGwvOUhrwldQBcqbDJRRD5j+/uG/NfOOP0qfRgnHv4+ye8b7uLGT0KDx8VaYtvbUY6vpfrarY035o0fpAlIoRJjWV/3oXV0sgW2yp7WwD60kZSutU/hmRvE8lcM9Hp0uOknA=";
const APP_ID: &str = "wxb11529c136998cb6";

const MESSAGES: &[(&str, &str)] = &[
    (
        "text",
        "<xml><ToUserName><![CDATA[gh_account]]></ToUserName><FromUserName><![CDATA[oOpenId]]></FromUserName>\n<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>",
    ),
    (
        "text-entities",
        "<?xml version=\"1.0\"?><xml><ToUserName>gh_a</ToUserName><FromUserName>o&amp;U&#x4f60;&#20320;</FromUserName><MsgType>text</MsgType><Content>a]]&gt;b<![CDATA[c]]]]><![CDATA[>d\x1d]]></Content></xml>",
    ),
    (
        "image",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://x/y.jpg]]></PicUrl><MediaId><![CDATA[m1]]></MediaId><MsgId>2</MsgId></xml>",
    ),
    (
        "voice",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[m]]></MediaId><Format><![CDATA[amr]]></Format><Recognition><![CDATA[你好]]></Recognition><MsgId>3</MsgId></xml>",
    ),
    (
        "location",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>4</MsgId></xml>",
    ),
    (
        "event-subscribe",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_123]]></EventKey><Ticket><![CDATA[T]]></Ticket></xml>",
    ),
    (
        "event-scancode",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[scancode_push]]></Event><EventKey><![CDATA[k]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo></xml>",
    ),
    (
        "event-pics",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[pic_weixin]]></Event><EventKey><![CDATA[k]]></EventKey><SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum><![CDATA[5a75]]></PicMd5Sum></item></PicList></SendPicsInfo></xml>",
    ),
    (
        "event-location-select",
        "<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[location_select]]></Event><EventKey><![CDATA[k]]></EventKey><SendLocationInfo><Location_X><![CDATA[23]]></Location_X><Location_Y><![CDATA[113]]></Location_Y><Scale><![CDATA[15]]></Scale><Label><![CDATA[L]]></Label><Poiname><![CDATA[]]></Poiname></SendLocationInfo></xml>",
    ),
    (
        "empty-and-comment",
        "<xml><!-- c --><Content/><Content></Content><?pi x?></xml>",
    ),
];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn nginx_params<'a>(
    method: &'a str,
    uri: &'a str,
    query: &'a str,
    len: &'a str,
) -> Vec<(&'a str, &'a [u8])> {
    vec![
        ("QUERY_STRING", query.as_bytes()),
        ("REQUEST_METHOD", method.as_bytes()),
        ("CONTENT_TYPE", b"text/xml"),
        ("CONTENT_LENGTH", len.as_bytes()),
        ("SCRIPT_NAME", uri.as_bytes()),
        ("REQUEST_URI", b"/weixin?x"),
        ("DOCUMENT_URI", uri.as_bytes()),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ("REMOTE_ADDR", b"127.0.0.1"),
    ]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // message_xml
    let dir = root.join("message_xml");
    for (name, xml) in MESSAGES {
        write(&dir, name, xml.as_bytes());
    }
    let plaintext = "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1409304348</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello 你好 😀]]></Content><MsgId>1234567890123456</MsgId></xml>";
    write(&dir, "vector-plaintext", plaintext.as_bytes());

    // safe_decrypt: mode 0 = base64 as is; mode 1 = plaintext block encrypted by the target.
    let dir = root.join("safe_decrypt");
    let mut b64 = vec![0u8];
    b64.extend_from_slice(ENCRYPT.as_bytes());
    write(&dir, "vector-b64", &b64);
    let mut plain = vec![1u8];
    plain.extend_from_slice(b"0123456789abcdef");
    plain.extend_from_slice(&(plaintext.len() as u32).to_be_bytes());
    plain.extend_from_slice(plaintext.as_bytes());
    plain.extend_from_slice(APP_ID.as_bytes());
    write(&dir, "vector-plain-block", &plain);
    let mut short = vec![1u8];
    short.extend_from_slice(b"0123456789abcdef\0\0\0\x02hi");
    short.extend_from_slice(APP_ID.as_bytes());
    write(&dir, "short-plain-block", &short);

    // config_parse
    let dir = root.join("config_parse");
    for name in ["default", "full"] {
        let text = std::fs::read(repo.join(format!("examples/{name}.toml"))).expect("example");
        write(&dir, name, &text);
    }
    write(
        &dir,
        "safe-account",
        b"[[account]]\nname = \"s\"\npath = \"/s\"\ntoken = \"tok\"\napp_id = \"wx1\"\naes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\nencrypted_only = true\n[[account.rule]]\nevent = \"CLICK\"\nevent_key = \"K\"\nreply = { type = \"music\", title = \"{A}\", description = \"\", music_url = \"u\", hq_music_url = \"h\", thumb_media_id = \"t\" }\n",
    );

    // template_render: selector byte, template, 0xFF, Content, 0xFF, From, 0xFF, To, 0xFF, MediaId
    let dir = root.join("template_render");
    let t = |sel: u8, parts: &[&str]| {
        let mut v = vec![sel];
        v.extend_from_slice(parts.join("\u{0}").as_bytes());
        v.iter()
            .map(|&b| if b == 0 { 0xFF } else { b })
            .collect::<Vec<u8>>()
    };
    write(
        &dir,
        "echo",
        &t(
            0,
            &["You said: {Content}", "hi ]]> there", "oUser", "gh_a", "m"],
        ),
    );
    write(
        &dir,
        "truncate",
        &t(5, &["{Content}{Content}", "你好😀ab\u{1d}", "o", "g", ""]),
    );
    write(
        &dir,
        "image",
        &t(
            0x80,
            &["{MediaId}-{Missing}", "", "o]]>", "g\u{1}", "MEDIA"],
        ),
    );

    // fastcgi_records: nginx-like requests.
    let dir = root.join("fastcgi_records");
    let query = format!("signature={SIGNATURE}&timestamp={TS}&nonce={NONCE}&openid=oUser");
    let text = MESSAGES[0].1.as_bytes();
    let len = text.len().to_string();
    write(
        &dir,
        "post-text",
        &encode_request(
            1,
            &nginx_params("POST", "/weixin", &query, &len),
            text,
            false,
        ),
    );
    let verify =
        format!("signature={SIGNATURE}&timestamp={TS}&nonce={NONCE}&echostr=5837397520665436492");
    let mut keep = encode_request(1, &nginx_params("GET", "/weixin", &verify, ""), b"", true);
    keep.extend(encode_request(
        2,
        &nginx_params("POST", "/weixin", &query, &len),
        text,
        true,
    ));
    write(&dir, "keepalive-get-post", &keep);
    let safe_query = format!(
        "signature={SIGNATURE}&timestamp={TS}&nonce={NONCE}&openid=oUser&encrypt_type=aes&msg_signature={MSG_SIGNATURE}"
    );
    let safe_body = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{ENCRYPT}]]></Encrypt></xml>"
    );
    let slen = safe_body.len().to_string();
    write(
        &dir,
        "post-safe",
        &encode_request(
            1,
            &nginx_params("POST", "/safe", &safe_query, &slen),
            safe_body.as_bytes(),
            false,
        ),
    );
    // Management records and odd ones: GET_VALUES, an unknown type, ABORT, a second BEGIN.
    let mut mgmt = Vec::new();
    let mut pairs = Vec::new();
    record::write_pair(&mut pairs, b"FCGI_MAX_CONNS", b"");
    record::write_pair(&mut pairs, b"FCGI_MPXS_CONNS", b"");
    record::write_header(
        &mut mgmt,
        record::kind::GET_VALUES,
        0,
        pairs.len() as u16,
        0,
    );
    mgmt.extend_from_slice(&pairs);
    record::write_header(&mut mgmt, 42, 0, 0, 0);
    record::write_begin_request(&mut mgmt, 3, record::ROLE_RESPONDER, record::FLAG_KEEP_CONN);
    record::write_begin_request(&mut mgmt, 4, record::ROLE_RESPONDER, 0);
    record::write_header(&mut mgmt, record::kind::ABORT_REQUEST, 3, 0, 0);
    record::write_begin_request(&mut mgmt, 5, 2, 0);
    write(&dir, "management", &mgmt);
    println!("seeds written under {}", root.display());
}
