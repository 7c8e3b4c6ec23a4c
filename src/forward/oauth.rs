//! Menu OAuth (go-wx-gateway's `redirect-path` + `menu-handler`).
//!
//! A menu item points at WeChat's authorize URL with `redirect_uri` = the account's
//! `redirect_path`; WeChat then sends the user's browser there with `code` and `state`.
//! On a forward thread: `GET <oauth_api_base>/sns/oauth2/access_token?appid=…&secret=…&code=…
//! &grant_type=authorization_code` gives the user's `openid`; then `{"appId", "openId",
//! "state"}` is POSTed to the account's `menu_handler`, whose answer `{"h": {headers},
//! "r": "redirect URL", "c": "content"}` becomes a 302 to `r` (when not empty) or a 200 with
//! `c` as HTML, with the headers of `h` (except Status, Content-Type, Content-Length, Location).
//! Failures answer 502 and log one line (never the AppSecret).

use super::backend;
use crate::fastcgi::Response;
use serde_json::Value;
use std::time::Duration;

/// Deadline of each of the two calls.
pub const TIMEOUT: Duration = Duration::from_secs(5);
const HTML: &str = "text/html; charset=utf-8";

/// One OAuth redirect to complete, owned.
pub struct OAuthJob {
    pub account: String,
    pub api_base: String,
    pub app_id: String,
    pub app_secret: String,
    pub menu_handler: String,
    pub code: String,
    pub state: String,
}

/// What to send back to the browser.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub headers: Vec<(String, String)>,
    pub redirect: String,
    pub content: String,
}

impl Page {
    pub fn write(&self, response: &mut Response) {
        for (name, value) in super::headers::allowed(&self.headers, "menu_handler") {
            response.add_header(name, value);
        }
        response.set_content_type(HTML);
        if self.redirect.is_empty() {
            response.set_status(200);
        } else {
            response.set_status(302);
            response.add_header("Location", &self.redirect);
        }
        response.body.extend_from_slice(self.content.as_bytes());
    }
}

/// Runs the exchange; `Err` is a one-line reason for the log (without the secret).
pub fn run(job: &OAuthJob) -> Result<Page, String> {
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
    let Some(open_id) = v
        .get("openid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        let errcode = v.get("errcode").map(Value::to_string).unwrap_or_default();
        let errmsg = v.get("errmsg").and_then(Value::as_str).unwrap_or("");
        return Err(format!(
            "access_token: no openid (errcode {errcode} {})",
            errmsg.escape_debug()
        ));
    };
    let request = serde_json::json!({"appId": job.app_id, "openId": open_id, "state": job.state});
    let mut resp = agent
        .post(&job.menu_handler)
        .header("Content-Type", "application/json")
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
    parse_page(&body).map_err(|e| format!("menu_handler: {e}"))
}

/// Parses `{"h": {...}, "r": "...", "c": "..."}`.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
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
    Ok(Page {
        headers,
        redirect: s("r"),
        content: s("c"),
    })
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let p =
            parse_page(br#"{"h":{"Set-Cookie":"a=b"},"r":"http://x/y","c":"hi"}"#).expect("page");
        assert_eq!(p.redirect, "http://x/y");
        assert_eq!(
            p.headers,
            vec![("Set-Cookie".to_string(), "a=b".to_string())]
        );
        assert!(parse_page(b"nope").is_err());
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
