//! `forward` and `exec` rule actions: the answer comes from a business backend (the
//! go-wx-gateway HTTP+JSON protocol, see [`backend`]) or a program ([`exec`]).
//!
//! # Threads
//! The FastCGI workers never wait on a backend. The handler returns `Outcome::Later` with a
//! [`Job`] holding owned copies of what the answer needs (the JSON or environment, the reply
//! envelope, the pre-rendered fallback, the encryption context). On the worker, right away:
//! 1. the de-duplication table is consulted ([`dedup`]): a finished attempt answers at once, an
//!    attempt in flight gets the request parked on it;
//! 2. otherwise a forward slot is taken (`forward_slots`, a counter) and the job goes down a
//!    bounded channel to one of `forward_slots` forward threads (started on first use);
//!    with every slot busy the rule's fallback is answered at once.
//!
//! The forward thread calls the backend under the rule's deadline, renders the reply (and
//! encrypts it in safe mode) and finishes the request and every retry parked on it.
//! Failures (non-200, bad JSON, unknown type, timeout, refused, program failure) answer the
//! fallback (or `success` without one) and log one line naming the account, rule and reason.

pub mod backend;
pub mod dedup;
pub mod exec;
pub mod headers;
pub mod oauth;
pub mod oauth_pool;

use crate::fastcgi::{Pending, Response};
use crate::rules::ReplyTemplate;
use crate::wechat::crypto::AesKey;
use crate::wechat::message::Message;
use crate::wechat::reply::{self, Article, Envelope, Limits, Reply};
use backend::OwnedReply;
use dedup::{Begin, Table};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A `forward` or `exec` action (from the config).
#[derive(Debug, Clone)]
pub struct Forward {
    pub target: Target,
    /// `timeout_ms`: deadline of one backend call or program run.
    pub timeout: Duration,
    /// `fallback`: the static reply when the backend fails; `None` answers `success`.
    pub fallback: Option<ReplyTemplate>,
}

/// Where the answer comes from.
#[derive(Debug, Clone)]
pub enum Target {
    /// `url`: base URL, `http://` to a loopback or private address.
    Http { url: String },
    /// `command`: program and arguments; `max_output`: stdout cap in bytes.
    Exec {
        command: Vec<String>,
        max_output: usize,
    },
}

/// Global settings (`forward_slots`, `dedup_seconds`, `dedup_entries`, `oauth_slots`,
/// `oauth_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub slots: usize,
    /// 0 turns de-duplication off.
    pub dedup_seconds: u64,
    pub dedup_entries: usize,
    /// Menu OAuth's own pool and rate limit.
    pub oauth: oauth_pool::OAuthSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            slots: 8,
            dedup_seconds: 30,
            dedup_entries: 4096,
            oauth: oauth_pool::OAuthSettings::default(),
        }
    }
}

/// Safe-mode encryption of the reply (owned, to run on a forward thread).
#[derive(Clone)]
pub struct Encrypt {
    pub token: String,
    pub key: AesKey,
    pub app_id: String,
}

/// What a forward thread needs to answer one message, owned.
pub struct Job {
    forward: Arc<Forward>,
    account: String,
    rule: String,
    /// De-duplication key; `None` when off.
    key: Option<String>,
    /// URL path suffix (`/msg/text`) and JSON body, or env and stdin for `exec`.
    path: String,
    body: Vec<u8>,
    env: Vec<(String, String)>,
    to_user: String,
    from_user: String,
    limits: Limits,
    /// The fallback reply rendered for this message (plain XML).
    fallback: Option<Vec<u8>>,
    /// Set by the handler in safe mode.
    pub encrypt: Option<Encrypt>,
}

impl Job {
    /// Captures `msg` for `forward`. `fallback` is the rendered fallback XML.
    pub fn new(
        forward: &Arc<Forward>,
        account: &str,
        rule: &str,
        msg: &Message<'_>,
        limits: Limits,
        fallback: Option<Vec<u8>>,
        dedup: bool,
    ) -> Job {
        let key = dedup.then(|| dedup_key(account, msg));
        let (path, body, env) = match &forward.target {
            Target::Http { .. } => (
                backend::path_for(msg.msg_type(), msg.event()),
                backend::to_json(msg.nodes()),
                Vec::new(),
            ),
            Target::Exec { .. } => {
                let mut env: Vec<(String, String)> = Vec::new();
                for node in msg.nodes() {
                    let Some(value) = &node.value else { continue };
                    let name = format!("WX_{}", node.name);
                    if !env.iter().any(|(k, _)| *k == name) {
                        env.push((name, value.to_string()));
                    }
                }
                let stdin = msg.get("Content").unwrap_or("").as_bytes().to_vec();
                (String::new(), stdin, env)
            }
        };
        Job {
            forward: Arc::clone(forward),
            account: account.to_string(),
            rule: rule.to_string(),
            key,
            path,
            body,
            env,
            to_user: msg.from_user().to_string(),
            from_user: msg.to_user().to_string(),
            limits,
            fallback,
            encrypt: None,
        }
    }
}

/// The state-store key of a message's answer: account + FromUserName + MsgId for messages;
/// account + FromUserName + CreateTime + Event + EventKey for events (and for the rare message
/// without MsgId).
pub fn dedup_key(account: &str, msg: &Message<'_>) -> String {
    let from = msg.from_user();
    let id = match msg.get("MsgId").filter(|_| !msg.is_event()) {
        Some(id) => format!("m\0{from}\0{id}"),
        None => format!(
            "e\0{from}\0{}\0{}\0{}",
            msg.get("CreateTime").unwrap_or(""),
            msg.event(),
            msg.get("EventKey").unwrap_or("")
        ),
    };
    crate::state::key(account, "answer", &id)
}

/// The shared answer of one attempt: plain reply XML, or `None` for no reply.
type Answer = Arc<Option<Vec<u8>>>;

/// A request waiting for an answer.
struct Waiter {
    pending: Pending,
    encrypt: Option<Encrypt>,
}

impl Waiter {
    fn answer(self, answer: Option<&[u8]>) {
        let Waiter { pending, encrypt } = self;
        pending.finish(|response| write_reply(answer, encrypt.as_ref(), response));
    }
}

/// Fills `response` with a reply (encrypted when `encrypt` is set) or `success`.
pub fn write_reply(reply_xml: Option<&[u8]>, encrypt: Option<&Encrypt>, response: &mut Response) {
    let seal = encrypt.map(|e| crate::app::Sealer {
        token: e.token.as_bytes(),
        key: &e.key,
        app_id: &e.app_id,
    });
    crate::app::write_reply(reply_xml, seal.as_ref(), response);
}

enum Task {
    Message { job: Box<Job>, waiter: Waiter },
}

/// The forward pool, the de-duplication table, and menu OAuth's own pool.
pub struct Forwarder {
    settings: Settings,
    busy: Arc<AtomicUsize>,
    dedup: Arc<Table<Waiter, Answer>>,
    sender: OnceLock<SyncSender<Task>>,
    /// Separate from the forward slots: unsigned OAuth GETs never starve messages.
    pub oauth: oauth_pool::OAuthPool,
}

impl Forwarder {
    /// Finished answers are kept in `store` (bounded in bytes).
    pub fn new(settings: Settings, store: Arc<dyn crate::state::Store>) -> Forwarder {
        Forwarder {
            settings,
            busy: Arc::new(AtomicUsize::new(0)),
            dedup: Arc::new(Table::new(
                store,
                Duration::from_secs(settings.dedup_seconds),
            )),
            sender: OnceLock::new(),
            oauth: oauth_pool::OAuthPool::new(settings.oauth),
        }
    }

    /// Whether jobs should carry a de-duplication key.
    pub fn dedup_enabled(&self) -> bool {
        self.settings.dedup_seconds > 0
    }

    /// Answers `pending` for `job`: from the de-duplication table, by parking it on an attempt
    /// in flight, on a forward thread, or with the fallback when every slot is busy.
    /// Never blocks (called on a FastCGI worker).
    pub fn submit(&self, job: Job, pending: Pending) {
        let waiter = Waiter {
            pending,
            encrypt: job.encrypt.clone(),
        };
        let acquire = || {
            let slots = self.settings.slots;
            self.busy
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < slots).then_some(n + 1)
                })
                .is_ok()
        };
        let waiter = match &job.key {
            Some(key) => match self.dedup.begin(key, waiter, acquire) {
                Begin::Done(answer, waiter) => {
                    crate::log_info!(
                        "forward account={} rule={} result=duplicate-answered",
                        job.account,
                        job.rule
                    );
                    waiter.answer(answer.as_deref());
                    return;
                }
                Begin::Parked => {
                    crate::log_info!(
                        "forward account={} rule={} result=duplicate-waiting",
                        job.account,
                        job.rule
                    );
                    return;
                }
                Begin::Refused(waiter) => return busy(job, waiter),
                Begin::New(waiter) => waiter,
            },
            None if acquire() => waiter,
            None => return busy(job, waiter),
        };
        let sender = self.sender.get_or_init(|| self.spawn());
        if let Err(e) = sender.try_send(Task::Message {
            job: Box::new(job),
            waiter,
        }) {
            // Cannot happen while busy <= slots; answer rather than drop.
            let (std::sync::mpsc::TrySendError::Full(task)
            | std::sync::mpsc::TrySendError::Disconnected(task)) = e;
            let Task::Message { job, waiter } = task;
            let job = *job;
            self.busy.fetch_sub(1, Ordering::AcqRel);
            crate::log_warn!(
                "forward account={} rule={} result=fallback reason=\"forward queue full\"",
                job.account,
                job.rule
            );
            let answer: Answer = Arc::new(job.fallback.clone());
            finish_all(&self.dedup, &job, waiter, &answer);
        }
    }

    /// Completes an admitted menu OAuth redirect on the OAuth pool (see [`oauth_pool`]).
    pub fn submit_oauth(
        &self,
        job: oauth::OAuthJob,
        admitted: oauth_pool::Admitted,
        pending: Pending,
    ) {
        self.oauth.submit(job, admitted, pending);
    }

    fn spawn(&self) -> SyncSender<Task> {
        let (tx, rx) = sync_channel::<Task>(self.settings.slots);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.settings.slots {
            let rx = Arc::clone(&rx);
            let busy = Arc::clone(&self.busy);
            let dedup = Arc::clone(&self.dedup);
            let spawned = std::thread::Builder::new()
                .name(format!("forward-{i}"))
                .spawn(move || forward_thread(&rx, &busy, &dedup));
            if let Err(e) = spawned {
                crate::log_error!("cannot start forward thread {i}: {e}");
            }
        }
        tx
    }
}

/// No slot free (or too many retries parked): the fallback at once, not stored.
fn busy(job: Job, waiter: Waiter) {
    crate::log_warn!(
        "forward account={} rule={} result=fallback reason=\"all forward slots busy\"",
        job.account,
        job.rule
    );
    waiter.answer(job.fallback.as_deref());
}

fn forward_thread(rx: &Mutex<Receiver<Task>>, busy: &AtomicUsize, dedup: &Table<Waiter, Answer>) {
    loop {
        let task = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let (job, waiter) = match task {
            Ok(Task::Message { job, waiter }) => (*job, waiter),
            Err(_) => return,
        };
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job)));
        let ms = started.elapsed().as_millis();
        let answer: Answer = match result {
            Ok(Ok(reply)) => {
                crate::log_info!(
                    "forward account={} rule={} result=ok ms={ms}",
                    job.account,
                    job.rule
                );
                Arc::new(render(&job, &reply))
            }
            Ok(Err(reason)) => {
                crate::log_warn!(
                    "forward account={} rule={} result=fallback reason=\"{}\" ms={ms}",
                    job.account,
                    job.rule,
                    reason.escape_debug()
                );
                Arc::new(job.fallback.clone())
            }
            Err(_) => {
                crate::log_error!(
                    "forward account={} rule={} result=fallback reason=\"internal error\"",
                    job.account,
                    job.rule
                );
                Arc::new(job.fallback.clone())
            }
        };
        busy.fetch_sub(1, Ordering::AcqRel);
        finish_all(dedup, &job, waiter, &answer);
    }
}

/// Answers the request and every retry parked on it, and stores the answer.
fn finish_all(dedup: &Table<Waiter, Answer>, job: &Job, waiter: Waiter, answer: &Answer) {
    let parked = match &job.key {
        Some(key) => dedup.complete(key, answer),
        None => Vec::new(),
    };
    waiter.answer(answer.as_deref());
    for w in parked {
        w.answer(answer.as_deref());
    }
}

fn run(job: &Job) -> Result<OwnedReply, String> {
    match &job.forward.target {
        Target::Http { url } => {
            let url = format!("{}{}", url.trim_end_matches('/'), job.path);
            backend::call(&url, &job.body, job.forward.timeout)
        }
        Target::Exec {
            command,
            max_output,
        } => exec::run(
            command,
            &job.env,
            &job.body,
            job.forward.timeout,
            *max_output,
        )
        .map(OwnedReply::Text),
    }
}

/// Renders a backend reply as reply XML; `None` for no reply.
fn render(job: &Job, reply: &OwnedReply) -> Option<Vec<u8>> {
    let envelope = Envelope {
        to_user: &job.to_user,
        from_user: &job.from_user,
        create_time: crate::app::now(),
    };
    let mut out = Vec::with_capacity(512);
    let articles: Vec<Article<'_>>;
    let r = match reply {
        OwnedReply::None => return None,
        OwnedReply::Text(content) => Reply::Text { content },
        OwnedReply::Image(media_id) => Reply::Image { media_id },
        OwnedReply::Voice(media_id) => Reply::Voice { media_id },
        OwnedReply::Video {
            media_id,
            title,
            description,
        } => Reply::Video {
            media_id,
            title,
            description,
        },
        OwnedReply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        },
        OwnedReply::News(items) => {
            articles = items
                .iter()
                .map(|[title, description, pic_url, url]| Article {
                    title,
                    description,
                    pic_url,
                    url,
                })
                .collect();
            Reply::News {
                articles: &articles,
            }
        }
    };
    reply::render(&r, &envelope, &job.limits, &mut out);
    Some(out)
}

/// Checks a forward base URL: `http://` to a loopback or private IP address (or
/// `localhost`), with an optional port and path, no query or fragment.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with http:// (plain HTTP to a loopback or private address)".into());
    };
    let authority = rest.split('/').next().unwrap_or("");
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain a query, fragment, whitespace or control characters".into());
    }
    if authority.contains('@') {
        return Err("must not contain user information".into());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let private = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => host == "localhost",
    };
    if private {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not a loopback or private IP address (or localhost)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:8080/base",
            "http://10.1.2.3/x",
            "http://192.168.1.1:1",
            "http://172.16.0.1/",
            "http://[::1]:80/a",
            "http://localhost:9000",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://127.0.0.1/",
            "http://8.8.8.8/",
            "http://example.com/",
            "http://127.0.0.1/?q",
            "http://u@127.0.0.1/",
            "ftp://127.0.0.1/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dedup_keys() {
        let m = Message::parse(
            b"<xml><FromUserName>o</FromUserName><MsgType>text</MsgType><MsgId>5</MsgId></xml>",
        )
        .expect("parse");
        assert_eq!(dedup_key("a", &m), "weixin-fcgi:a:answer:m%00o%005");
        let e = Message::parse(b"<xml><FromUserName>o</FromUserName><CreateTime>9</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>k</EventKey></xml>")
            .expect("parse");
        assert_eq!(
            dedup_key("a", &e),
            "weixin-fcgi:a:answer:e%00o%009%00CLICK%00k"
        );
    }
}
