//! go-wx-gateway's `userInfo` / `userInfoError` (account key `user_info`, off by default):
//! `GET {api_base}/cgi-bin/user/info?access_token=…&openid=…&lang=zh_CN` with the
//! account's cached access token ([`crate::wxapi`]), its answer kept in the state store for
//! [`TTL`] under `state::key(account, "userinfo", openid)` (the store is bounded in bytes).
//! A failure never fails the message: `userInfo` is `null` and `userInfoError` says why.

use crate::state::{self, Store};
use crate::wxapi::Api;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a user's info is reused.
pub const TTL: Duration = Duration::from_secs(600);
/// Deadline of one WeChat API exchange (a token fetch, or the user info call).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes the in-process store may hold (tokens and user infos; oldest evicted first).
pub const STORE_BUDGET: usize = 1024 * 1024;
/// Largest user info kept (WeChat's are well under 1 KiB).
const MAX_INFO: usize = 8 * 1024;
/// API clients kept (one per account and credentials; a reload may add some).
const MAX_CLIENTS: usize = 64;

/// Whose API to call, owned (travels with a job). Never printed: it holds the AppSecret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub api_base: String,
    pub account: String,
    pub app_id: String,
    pub app_secret: String,
}

impl Credentials {
    /// The credentials of `account` when it has `user_info = true` and an AppID and AppSecret.
    pub fn for_account(
        config: &crate::config::Config,
        account: &crate::config::Account,
    ) -> Option<Credentials> {
        let (true, Some(app_id), Some(secret)) =
            (account.user_info, &account.app_id, &account.app_secret)
        else {
            return None;
        };
        Some(Credentials {
            api_base: config.api_base.clone(),
            account: account.name.clone(),
            app_id: app_id.clone(),
            app_secret: secret.expose().to_string(),
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account", &self.account)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// The API clients and the store they share.
pub struct UserInfo {
    store: Arc<dyn Store>,
    clients: Mutex<Vec<(Credentials, Arc<Api>)>>,
}

impl UserInfo {
    pub fn new(store: Arc<dyn Store>) -> UserInfo {
        UserInfo {
            store,
            clients: Mutex::new(Vec::new()),
        }
    }

    fn client(&self, credentials: &Credentials) -> Arc<Api> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, api)) = clients.iter().find(|(c, _)| c == credentials) {
            return Arc::clone(api);
        }
        let api = Arc::new(Api::new(
            &credentials.api_base,
            &credentials.account,
            &credentials.app_id,
            &credentials.app_secret,
            Arc::clone(&self.store),
            CALL_TIMEOUT,
        ));
        if clients.len() >= MAX_CLIENTS {
            clients.remove(0);
        }
        clients.push((credentials.clone(), Arc::clone(&api)));
        api
    }

    /// `(userInfo, userInfoError)` for `open_id`: the info and `""`, or `null` and the reason.
    pub fn lookup(&self, credentials: &Credentials, open_id: &str) -> (Value, String) {
        if open_id.is_empty() {
            return (Value::Null, "no openid".to_string());
        }
        let key = state::key(&credentials.account, "userinfo", open_id);
        if let Ok(Some(bytes)) = self.store.get(&key) {
            if let Ok(info @ Value::Object(_)) = serde_json::from_slice(&bytes) {
                return (info, String::new());
            }
        }
        let api = self.client(credentials);
        match api.get_json(
            "/cgi-bin/user/info",
            &[("openid", open_id), ("lang", "zh_CN")],
        ) {
            Ok(info @ Value::Object(_)) => {
                if let Ok(bytes) = serde_json::to_vec(&info) {
                    if bytes.len() <= MAX_INFO {
                        // A store that cannot keep it only costs a call next time.
                        let _ = self.store.put(&key, &bytes, TTL);
                    }
                }
                (info, String::new())
            }
            Ok(_) => (Value::Null, "user info is not a JSON object".to_string()),
            Err(e) => {
                crate::log_warn!(
                    "userinfo account={} result=error reason=\"{}\"",
                    credentials.account,
                    e.to_string().escape_debug()
                );
                (Value::Null, e.to_string())
            }
        }
    }
}

/// Adds `"userInfo"` and `"userInfoError"` to the JSON object in `body`.
pub fn append(body: &mut Vec<u8>, info: &Value, error: &str) {
    let mut object: serde_json::Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        _ => return,
    };
    object.insert("userInfo".to_string(), info.clone());
    object.insert("userInfoError".to_string(), Value::from(error));
    if let Ok(out) = serde_json::to_vec(&Value::Object(object)) {
        *body = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_adds_both_members() {
        let mut body = br#"{"MsgType":"text"}"#.to_vec();
        append(&mut body, &serde_json::json!({"openid": "o1"}), "");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"MsgType": "text", "userInfo": {"openid": "o1"}, "userInfoError": ""})
        );
        append(&mut body, &Value::Null, "errcode 40003");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["userInfo"], Value::Null);
        assert_eq!(v["userInfoError"], "errcode 40003");
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c = Credentials {
            api_base: "http://127.0.0.1:1".into(),
            account: "a".into(),
            app_id: "wx".into(),
            app_secret: "TOPSECRET".into(),
        };
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }
}
