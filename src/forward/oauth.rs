//! Menu OAuth (go-wx-gateway's `redirect-path`), in either of the gateway's two protocols.
//!
//! A menu item points at WeChat's authorize URL with `redirect_uri` = the account's
//! `redirect_path`; WeChat then sends the user's browser there with `code` and `state`.
//! On a forward thread: `GET <api_base>/sns/oauth2/access_token?appid=…&secret=…&code=…
//! &grant_type=authorization_code` gives the user's `openid`; then, per the account's config:
//!
//! - `menu_handler` (the seed's protocol): `{"appId", "openId", "state"}` is POSTed with the
//!   browser's `User-Agent`, `Cookie` and `X-Forwarded-For`; the answer `{"h": {headers},
//!   "r": "redirect URL", "c": "content"}` becomes a 302 to `r` with no body (when `r` is not
//!   empty) or a 200 HTML page with `c`, each with the headers of `h` (a `Content-Type` in `h`
//!   replaces the HTML default; `Location` is only ever `r`).
//! - `redirect_url` (the gateway's protocol since 2020): a reverse proxy. `{"requestURI",
//!   "appId", "openId", "state", "userInfo", "userInfoError"}` is POSTed with the browser's
//!   request headers (cookies included) and `X-Forwarded-For/-Host/-Proto`; the backend's
//!   status, headers and body go back to the browser unchanged (a 302, an HTML page, a 404…).
//!   `userInfo` comes from `cgi-bin/user/info` with `user_info = true` (see [`userinfo`]);
//!   otherwise it is `null` and `userInfoError` is [`NOT_FETCHED`].
//!
//! Every header passed back is checked by [`headers::check_response_header`]; a refused one
//! is dropped and logged. Failures answer 502 and log one line (never the AppSecret).

use super::{Answer, backend, headers, userinfo};
use crate::query::encode;
use serde_json::Value;
use std::time::Duration;

/// Deadline of each of the two calls.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page read from a `redirect_url` backend.
pub const MAX_PAGE: u64 = 256 * 1024;
/// Most browser request headers kept, and their total size in bytes.
pub const MAX_BROWSER_HEADERS: usize = 64;
pub const MAX_BROWSER_HEADER_BYTES: usize = 32 * 1024;
const HTML: &str = "text/html; charset=utf-8";

/// Where the openid goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `menu_handler`: the `{appId, openId, state}` → `{h, r, c}` protocol.
    MenuHandler(String),
    /// `redirect_url`: reverse proxy.
    RedirectUrl(String),
}

/// What the browser sent, owned.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    /// `REQUEST_URI`: path and query as the browser asked for them.
    pub request_uri: String,
    /// Request headers (from `HTTP_*` parameters), bounded by [`MAX_BROWSER_HEADERS`] and
    /// [`MAX_BROWSER_HEADER_BYTES`].
    pub headers: Vec<(String, String)>,
    /// `REMOTE_ADDR`: the client as nginx saw it.
    pub remote_addr: String,
    /// `HTTPS` was `on`.
    pub https: bool,
}

impl Browser {
    /// The first request header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `X-Forwarded-For` for the next hop: the browser's own list plus its address.
    pub fn forwarded_for(&self) -> String {
        match (self.header("X-Forwarded-For"), self.remote_addr.is_empty()) {
            (Some(list), false) => format!("{list}, {}", self.remote_addr),
            (Some(list), true) => list.to_string(),
            (None, _) => self.remote_addr.clone(),
        }
    }
}

/// One OAuth redirect to complete, owned.
pub struct OAuthJob {
    pub account: String,
    pub api_base: String,
    pub app_id: String,
    pub app_secret: String,
    pub target: Target,
    pub code: String,
    pub state: String,
    pub browser: Browser,
    /// Set for accounts with `user_info = true`: `userInfo` for `redirect_url`.
    pub user_info: Option<userinfo::Credentials>,
}

/// What to send back to the browser.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    /// `None`: no Content-Type header.
    pub content_type: Option<String>,
    /// Already checked by [`headers::check_response_header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Page {
    /// The answer for the transport: a dynamic Content-Type travels as a header line.
    pub fn into_answer(self) -> Answer {
        let mut headers = self.headers;
        let content_type = match self.content_type {
            Some(ct) if ct == HTML => HTML,
            Some(ct) => {
                headers.insert(0, ("Content-Type".to_string(), ct));
                ""
            }
            None => "",
        };
        Answer {
            status: self.status,
            content_type,
            headers,
            body: self.body,
        }
    }

    /// A short word for the log line.
    pub fn kind(&self) -> &'static str {
        match self.status {
            300..=399 => "redirect",
            200..=299 => "page",
            _ => "status",
        }
    }
}

/// Runs the exchange; `Err` is a one-line reason for the log (without the secret).
pub fn run(job: &OAuthJob, user_info: &userinfo::UserInfo) -> Result<Page, String> {
    let open_id = exchange_code(job)?;
    match &job.target {
        Target::MenuHandler(url) => menu_handler(job, url, &open_id),
        Target::RedirectUrl(url) => {
            let (info, error) = match &job.user_info {
                Some(credentials) => user_info.lookup(credentials, &open_id),
                None => (Value::Null, NOT_FETCHED.to_string()),
            };
            redirect_url(job, url, &open_id, info, &error)
        }
    }
}

/// `userInfoError` when the account does not have `user_info = true`.
pub const NOT_FETCHED: &str = "userInfo not fetched: user_info is off for this account";

/// `code` → the user's openid at `api_base`.
fn exchange_code(job: &OAuthJob) -> Result<String, String> {
    let redact = |s: String| {
        if job.app_secret.is_empty() {
            s
        } else {
            s.replace(&job.app_secret, "<redacted>")
        }
    };
    let url = format!(
        "{}/sns/oauth2/access_token?appid={}&secret={}&code={}&grant_type=authorization_code",
        job.api_base.trim_end_matches('/'),
        encode(&job.app_id),
        encode(&job.app_secret),
        encode(&job.code)
    );
    let agent = backend::agent(TIMEOUT);
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| redact(format!("access_token: {}", backend::describe(&e))))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(backend::MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| redact(format!("access_token: {}", backend::describe(&e))))?;
    if status != 200 {
        return Err(format!("access_token: HTTP {status}"));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| "access_token: answer is not JSON".to_string())?;
    match v
        .get("openid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(open_id) => Ok(open_id.to_string()),
        None => {
            let errcode = v.get("errcode").map(Value::to_string).unwrap_or_default();
            let errmsg = v.get("errmsg").and_then(Value::as_str).unwrap_or("");
            Err(format!(
                "access_token: no openid (errcode {errcode} {})",
                errmsg.escape_debug()
            ))
        }
    }
}

/// The seed's protocol: `{appId, openId, state}` → `{h, r, c}`.
fn menu_handler(job: &OAuthJob, url: &str, open_id: &str) -> Result<Page, String> {
    let request = serde_json::json!({"appId": job.app_id, "openId": open_id, "state": job.state});
    let mut call = backend::agent(TIMEOUT)
        .post(url)
        .header("Content-Type", backend::CONTENT_TYPE);
    let forwarded_for = job.browser.forwarded_for();
    let passed = [
        ("User-Agent", job.browser.header("User-Agent")),
        ("Cookie", job.browser.header("Cookie")),
        ("X-Forwarded-For", Some(forwarded_for.as_str())),
    ];
    for (name, value) in passed {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            if headers::check_response_header(name, value).is_ok() {
                call = call.header(name, value);
            }
        }
    }
    let mut resp = call
        .send(request.to_string().as_bytes())
        .map_err(|e| format!("menu_handler: {}", backend::describe(&e)))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("menu_handler: HTTP {status}"));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(backend::MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| format!("menu_handler: {}", backend::describe(&e)))?;
    let page = parse_menu_answer(&body).map_err(|e| format!("menu_handler: {e}"))?;
    Ok(page.into_page(&job.account))
}

/// A menu handler's answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MenuAnswer {
    pub headers: Vec<(String, String)>,
    pub redirect: String,
    pub content: String,
}

impl MenuAnswer {
    /// 302 to `r` with no body, or 200 with `c`; the headers of `h` that pass the check.
    fn into_page(self, account: &str) -> Page {
        let mut page = Page {
            status: 200,
            content_type: Some(HTML.to_string()),
            headers: Vec::with_capacity(self.headers.len() + 1),
            body: Vec::new(),
        };
        for (name, value) in self.headers {
            if let Err(reason) = headers::check_response_header(&name, &value) {
                refused_header(account, "menu_handler", &name, reason);
            } else if name.eq_ignore_ascii_case("Content-Type") {
                page.content_type = Some(value);
            } else if name.eq_ignore_ascii_case("Location") {
                refused_header(
                    account,
                    "menu_handler",
                    &name,
                    "Location comes from \"r\" only",
                );
            } else {
                page.headers.push((name, value));
            }
        }
        if self.redirect.is_empty() {
            page.body = self.content.into_bytes();
        } else if let Err(reason) = headers::check_response_header("Location", &self.redirect) {
            // An unusable redirect target: show nothing rather than a broken header.
            refused_header(account, "menu_handler", "Location", reason);
            page.status = 502;
            page.content_type = Some(HTML.to_string());
        } else {
            page.status = 302;
            page.headers.push(("Location".to_string(), self.redirect));
        }
        page
    }
}

/// Parses `{"h": {...}, "r": "...", "c": "..."}`; non-string members are ignored.
pub fn parse_menu_answer(body: &[u8]) -> Result<MenuAnswer, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_string())?;
    let Value::Object(obj) = v else {
        return Err("answer is not a JSON object".to_string());
    };
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut headers = Vec::new();
    if let Some(Value::Object(h)) = obj.get("h") {
        for (name, value) in h.iter().take(32) {
            if let Some(value) = value.as_str() {
                headers.push((name.clone(), value.to_string()));
            }
        }
    }
    Ok(MenuAnswer {
        headers,
        redirect: s("r"),
        content: s("c"),
    })
}

/// Request headers never passed on to a `redirect_url` backend: the connection's own, the
/// ones this request replaces, and those [`headers::check_response_header`] refuses.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// go-wx-gateway's `redirect-url`: reverse proxy with the openid in a JSON body.
fn redirect_url(
    job: &OAuthJob,
    url: &str,
    open_id: &str,
    user_info: Value,
    user_info_error: &str,
) -> Result<Page, String> {
    let request = serde_json::json!({
        "requestURI": job.browser.request_uri,
        "appId": job.app_id,
        "openId": open_id,
        "state": job.state,
        "userInfo": user_info,
        "userInfoError": user_info_error,
    });
    let mut call = backend::agent(TIMEOUT)
        .post(url)
        .header("Content-Type", backend::CONTENT_TYPE);
    for (name, value) in &job.browser.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str())
            || headers::check_response_header(name, value).is_err()
        {
            continue;
        }
        call = call.header(name.as_str(), value.as_str());
    }
    call = call.header("X-Forwarded-For", job.browser.forwarded_for());
    if let Some(host) = job.browser.header("Host") {
        if headers::check_response_header("X-Forwarded-Host", host).is_ok() {
            call = call.header("X-Forwarded-Host", host);
        }
    }
    let proto = if job.browser.https { "https" } else { "http" };
    call = call.header("X-Forwarded-Proto", proto);
    let mut resp = call
        .send(request.to_string().as_bytes())
        .map_err(|e| format!("redirect_url: {}", backend::describe(&e)))?;
    let status = resp.status().as_u16();
    if !(200..=599).contains(&status) {
        return Err(format!("redirect_url: HTTP {status} cannot be passed on"));
    }
    let mut page = Page {
        status,
        content_type: None,
        headers: Vec::new(),
        body: Vec::new(),
    };
    for (name, value) in resp.headers() {
        let name = name.as_str();
        let Ok(value) = value.to_str() else {
            refused_header(
                &job.account,
                "redirect_url",
                name,
                "value is not visible ASCII",
            );
            continue;
        };
        match headers::check_response_header(name, value) {
            Err(reason) => {
                if !is_hop_by_hop(name) {
                    refused_header(&job.account, "redirect_url", name, reason);
                }
            }
            Ok(()) if name.eq_ignore_ascii_case("Content-Type") => {
                page.content_type = Some(value.to_string());
            }
            Ok(()) => page.headers.push((name.to_string(), value.to_string())),
        }
    }
    page.body = resp
        .body_mut()
        .with_config()
        .limit(MAX_PAGE)
        .read_to_vec()
        .map_err(|e| format!("redirect_url: {}", backend::describe(&e)))?;
    Ok(page)
}

/// Headers every HTTP/1.1 response may carry that are dropped without a warning.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn refused_header(account: &str, from: &str, name: &str, reason: &str) {
    crate::log_warn!(
        "oauth account={account} header dropped from={from} name=\"{}\" reason=\"{reason}\"",
        name.escape_debug()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_answers() {
        let a = parse_menu_answer(br#"{"h":{"Set-Cookie":"a=b"},"r":"http://x/y","c":"hi"}"#)
            .expect("answer");
        assert_eq!(a.redirect, "http://x/y");
        let page = a.into_page("t");
        assert_eq!(page.status, 302);
        assert!(page.body.is_empty(), "a redirect carries no content");
        assert_eq!(
            page.headers,
            vec![
                ("Set-Cookie".to_string(), "a=b".to_string()),
                ("Location".to_string(), "http://x/y".to_string())
            ]
        );

        let a = parse_menu_answer(
            br#"{"h":{"Set-Cookie":"a=b\r\nX: 1","Location":"http://evil","Content-Type":"text/plain"},"c":"hi"}"#,
        )
        .expect("answer");
        let page = a.into_page("t");
        assert_eq!(page.status, 200);
        assert_eq!(page.body, b"hi");
        assert_eq!(page.content_type.as_deref(), Some("text/plain"));
        assert!(page.headers.is_empty(), "{:?}", page.headers);

        let page = parse_menu_answer(br#"{"r":"http://x/\r\nSet-Cookie: a"}"#)
            .expect("answer")
            .into_page("t");
        assert_eq!(page.status, 502);
        assert!(parse_menu_answer(b"nope").is_err());
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn forwarded_for() {
        let mut b = Browser {
            remote_addr: "127.0.0.9".into(),
            ..Browser::default()
        };
        assert_eq!(b.forwarded_for(), "127.0.0.9");
        b.headers
            .push(("X-Forwarded-For".into(), "203.0.113.7".into()));
        assert_eq!(b.forwarded_for(), "203.0.113.7, 127.0.0.9");
    }
}
