//! `forward` and `exec` rule actions: the answer comes from a business backend (the
//! go-wx-gateway HTTP+JSON protocol, see [`backend`]) or a program ([`exec`]).
//!
//! # Threads
//! The FastCGI workers never wait on a backend. The handler defers the request and submits a
//! [`Job`] holding owned copies of what the answer needs (the JSON or environment, the reply
//! envelope, the pre-rendered fallback, the encryption context), with a [`Complete`] callback
//! that sends the [`Answer`]: this module never sees a transport type. On the worker, right
//! away:
//! 1. the de-duplication table is consulted ([`dedup`]): a finished attempt answers at once, an
//!    attempt in flight gets the request parked on it;
//! 2. otherwise a forward slot is taken (`forward_slots`, a counter) and the job goes down a
//!    bounded channel to one of `forward_slots` forward threads (started on first use);
//!    with every slot busy the rule's fallback is answered at once.
//!
//! The forward thread calls the backend under the rule's deadline, renders the reply (and
//! encrypts it in safe mode) and finishes the request and every retry parked on it.
//! Failures (no usable JSON answer, unknown type, timeout, refused, program failure — see
//! [`backend::interpret`]) answer the fallback (or `success` without one) and log one line
//! naming the account, rule and reason; an explicit "no reply" from the backend is never
//! replaced by the fallback. With `user_info`, the user's info is looked up first
//! ([`userinfo`]).

pub mod backend;
pub mod dedup;
pub mod exec;
pub mod headers;
pub mod oauth;
pub mod oauth_pool;
pub mod userinfo;

use crate::config::ForwardSettings;
use crate::rules::{Forward, Target};
use crate::status::{self, Metrics};
use crate::wechat::crypto::AesKey;
use crate::wechat::message::Message;
use crate::wechat::reply::{self, Envelope, Limits, Reply};
use crate::wechat::{Sealer, unix_time};
use backend::OwnedReply;
use dedup::{Begin, Table};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A finished answer to a deferred request, for the caller to send over its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header lines (menu OAuth pages).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// A plain-text answer (errors).
    pub fn plain(status: u16, text: &str) -> Answer {
        Answer {
            status,
            content_type: crate::wechat::TEXT,
            headers: Vec::new(),
            body: text.as_bytes().to_vec(),
        }
    }

    /// The reply (encrypted when `encrypt` is set) or `success`; 500 when it cannot be
    /// encrypted (no OS randomness).
    pub fn reply(reply_xml: Option<&[u8]>, encrypt: Option<&Encrypt>) -> Answer {
        let seal = encrypt.map(|e| Sealer {
            token: e.token.as_bytes(),
            key: &e.key,
            app_id: &e.app_id,
        });
        let mut body = Vec::with_capacity(reply_xml.map_or(16, |x| x.len() * 2 + 256));
        match crate::wechat::write_answer(reply_xml, seal.as_ref(), &mut body) {
            Ok(content_type) => Answer {
                status: 200,
                content_type,
                headers: Vec::new(),
                body,
            },
            Err(e) => {
                crate::log_error!("cannot encrypt the reply (no OS randomness?): {e}");
                Answer::plain(500, "cannot encrypt the reply\n")
            }
        }
    }
}

/// Sends the answer of one deferred request; handed in by the caller with each job. Dropping
/// it unanswered is the caller's to handle (the FastCGI transport answers 500).
pub type Complete = Box<dyn FnOnce(Answer) + Send>;

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
    /// Set by the handler for accounts with `user_info = true` (HTTP targets only).
    pub user_info: Option<userinfo::Credentials>,
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
            user_info: None,
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

/// The shared result of one attempt: plain reply XML, or `None` for no reply.
type Shared = Arc<Option<Vec<u8>>>;

/// A request waiting for an answer.
struct Waiter {
    complete: Complete,
    encrypt: Option<Encrypt>,
}

impl Waiter {
    fn answer(self, reply_xml: Option<&[u8]>) {
        let Waiter { complete, encrypt } = self;
        complete(Answer::reply(reply_xml, encrypt.as_ref()));
    }
}

enum Task {
    Message { job: Box<Job>, waiter: Waiter },
}

/// The forward pool, the de-duplication table, and menu OAuth's own pool.
pub struct Forwarder {
    settings: ForwardSettings,
    busy: Arc<AtomicUsize>,
    dedup: Arc<Table<Waiter, Shared>>,
    sender: OnceLock<SyncSender<Task>>,
    /// `userInfo` lookups (access tokens and user infos in a byte-bounded store).
    user_info: Arc<userinfo::UserInfo>,
    /// Separate from the forward slots: unsigned OAuth GETs never starve messages.
    pub oauth: oauth_pool::OAuthPool,
    /// Forward results and retry-table hits, for the status page.
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Finished answers are kept in `store` (bounded in bytes).
    pub fn new(
        settings: ForwardSettings,
        store: Arc<dyn crate::state::Store>,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        let user_info = Arc::new(userinfo::UserInfo::new(Arc::new(
            crate::state::MemoryStore::new(userinfo::STORE_BUDGET),
        )));
        Forwarder {
            settings,
            metrics,
            busy: Arc::new(AtomicUsize::new(0)),
            dedup: Arc::new(Table::new(
                store,
                Duration::from_secs(settings.dedup_seconds),
            )),
            sender: OnceLock::new(),
            oauth: oauth_pool::OAuthPool::new(settings.oauth, Arc::clone(&user_info)),
            user_info,
        }
    }

    /// Attempts of the retry table in flight (their answers, once finished, are in the state
    /// store: see `App`'s status page).
    pub fn retry_in_flight(&self) -> usize {
        self.dedup.in_flight()
    }

    /// Whether jobs should carry a de-duplication key.
    pub fn dedup_enabled(&self) -> bool {
        self.settings.dedup_seconds > 0
    }

    /// Answers `job` through `complete`: from the de-duplication table, by parking it on an
    /// attempt in flight, on a forward thread, or with the fallback when every slot is busy.
    /// Never blocks (called on a FastCGI worker).
    pub fn submit(&self, job: Job, complete: Complete) {
        let waiter = Waiter {
            complete,
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
                    self.metrics.retry_hit();
                    crate::log_info!(
                        "forward account={} rule={} result=duplicate-answered",
                        job.account,
                        job.rule
                    );
                    waiter.answer(answer.as_deref());
                    return;
                }
                Begin::Parked => {
                    self.metrics.retry_hit();
                    crate::log_info!(
                        "forward account={} rule={} result=duplicate-waiting",
                        job.account,
                        job.rule
                    );
                    return;
                }
                Begin::Refused(waiter) => return busy(job, waiter, &self.metrics),
                Begin::New(waiter) => waiter,
            },
            None if acquire() => waiter,
            None => return busy(job, waiter, &self.metrics),
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
            self.metrics.forward(status::Forward::Fallback);
            crate::log_warn!(
                "forward account={} rule={} result=fallback reason=\"forward queue full\"",
                job.account,
                job.rule
            );
            let answer: Shared = Arc::new(job.fallback.clone());
            finish_all(&self.dedup, &job, waiter, &answer);
        }
    }

    /// Completes an admitted menu OAuth redirect on the OAuth pool (see [`oauth_pool`]).
    pub fn submit_oauth(
        &self,
        job: Box<oauth::OAuthJob>,
        admitted: oauth_pool::Admitted,
        complete: Complete,
    ) {
        self.oauth.submit(job, admitted, complete);
    }

    fn spawn(&self) -> SyncSender<Task> {
        let (tx, rx) = sync_channel::<Task>(self.settings.slots);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.settings.slots {
            let rx = Arc::clone(&rx);
            let busy = Arc::clone(&self.busy);
            let dedup = Arc::clone(&self.dedup);
            let user_info = Arc::clone(&self.user_info);
            let metrics = Arc::clone(&self.metrics);
            let spawned = std::thread::Builder::new()
                .name(format!("forward-{i}"))
                .spawn(move || forward_thread(&rx, &busy, &dedup, &user_info, &metrics));
            if let Err(e) = spawned {
                crate::log_error!("cannot start forward thread {i}: {e}");
            }
        }
        tx
    }
}

/// No slot free (or too many retries parked): the fallback at once, not stored.
fn busy(job: Job, waiter: Waiter, metrics: &Metrics) {
    metrics.forward(status::Forward::Fallback);
    crate::log_warn!(
        "forward account={} rule={} result=fallback reason=\"all forward slots busy\"",
        job.account,
        job.rule
    );
    waiter.answer(job.fallback.as_deref());
}

fn forward_thread(
    rx: &Mutex<Receiver<Task>>,
    busy: &AtomicUsize,
    dedup: &Table<Waiter, Shared>,
    user_info: &userinfo::UserInfo,
    metrics: &Metrics,
) {
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
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job, user_info)));
        let ms = started.elapsed().as_millis();
        metrics.forward(match result {
            Ok(Ok(_)) => status::Forward::Ok,
            _ => status::Forward::Fallback,
        });
        let answer: Shared = match result {
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
fn finish_all(dedup: &Table<Waiter, Shared>, job: &Job, waiter: Waiter, answer: &Shared) {
    let parked = match &job.key {
        Some(key) => dedup.complete(key, answer),
        None => Vec::new(),
    };
    waiter.answer(answer.as_deref());
    for w in parked {
        w.answer(answer.as_deref());
    }
}

fn run(job: &Job, user_info: &userinfo::UserInfo) -> Result<OwnedReply, String> {
    match &job.forward.target {
        Target::Http { url } => {
            let url = format!("{}{}", url.trim_end_matches('/'), job.path);
            match &job.user_info {
                Some(credentials) => {
                    let (info, error) = user_info.lookup(credentials, &job.to_user);
                    let mut body = job.body.clone();
                    userinfo::append(&mut body, &info, &error);
                    backend::call(&url, &body, job.forward.timeout)
                }
                None => backend::call(&url, &job.body, job.forward.timeout),
            }
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
        .map(|content| Some(Reply::Text { content })),
    }
}

/// Renders a backend reply as reply XML; `None` for no reply.
fn render(job: &Job, reply: &OwnedReply) -> Option<Vec<u8>> {
    let reply = reply.as_ref()?;
    let envelope = Envelope {
        to_user: &job.to_user,
        from_user: &job.from_user,
        create_time: unix_time(),
    };
    let mut out = Vec::with_capacity(512);
    reply::render(reply, &envelope, &job.limits, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
