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
//! 2. otherwise a forward slot is taken (`forward_slots`, a counter); with every slot busy the
//!    rule's fallback is answered at once. A backend call goes to the one HTTP thread
//!    ([`http_loop`]: epoll, no thread per call); a program (or a backend call that first
//!    looks up `user_info`) goes down a bounded channel to a forward thread (started as
//!    needed, up to `forward_slots`).
//!
//! With `shared_state` a new attempt goes to the claims thread first ([`claim`]), which lets
//! it through, answers it from another instance, or keeps it until that instance has answered.
//!
//! When the call ends, its thread renders the reply (and encrypts it in safe mode) and
//! finishes the request and every retry parked on it. A rule with `late` takes another path
//! through [`late::hub`]: its answer may come after WeChat's attempts.
//! Failures (no usable JSON answer, unknown type, timeout, refused, program failure — see
//! [`backend::interpret`]) answer the fallback (or `success` without one) and log one line
//! naming the account, rule and reason; an explicit "no reply" from the backend is never
//! replaced by the fallback. With `user_info`, the user's info is looked up first
//! ([`userinfo`]).

pub mod backend;
pub mod claim;
pub mod dedup;
pub mod exec;
pub mod headers;
pub mod http_loop;
pub mod late;
pub mod oauth;
pub mod oauth_pool;
pub mod userinfo;

use crate::config::{ForwardSettings, LateSettings};
use crate::rules::{Forward, Target};
use crate::status::{self, Metrics};
use crate::wechat::crypto::AesKey;
use crate::wechat::message::Message;
use crate::wechat::reply::{self, Envelope, Limits, Reply};
use crate::wechat::{Sealer, unix_time};
use backend::OwnedReply;
use claim::{ClaimThread, Claimant, Claims, Keys};
use dedup::{Begin, Table};
use http_loop::HttpLoop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of the store for late answers' claims, attempt counts and markers (small, short-lived).
const LATE_STORE_BYTES: usize = 1 << 20;

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
    /// For a rule with `late`: set by [`Job::with_late`].
    late: Option<Box<late::hub::LateJob>>,
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
        // The answer's key in the state store.
        let key = dedup.then(|| crate::state::key(account, "answer", &dedup_key(account, msg)));
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
            late: None,
        }
    }

    /// Adds what a rule with `late` needs for `msg`: the message's key, its rendered
    /// `pending`, the split size, the fallback as an answer to keep, and the account's
    /// credentials for customer-service messages at `api_base`. No-op without `late`.
    pub fn with_late(
        &mut self,
        msg: &Message<'_>,
        account: &crate::config::Account,
        api_base: &str,
        text_max_bytes: usize,
    ) {
        let Some(settings) = &self.forward.late else {
            return;
        };
        self.late = Some(Box::new(late::hub::LateJob::new(
            settings,
            &self.forward,
            msg,
            account,
            api_base,
            dedup_key(&self.account, msg),
            self.limits,
            text_max_bytes,
        )));
    }
}

/// account + FromUserName + MsgId for messages; account + FromUserName + CreateTime + Event +
/// EventKey for events (and for the rare message without MsgId).
pub fn dedup_key(account: &str, msg: &Message<'_>) -> String {
    let from = msg.from_user();
    match msg.get("MsgId").filter(|_| !msg.is_event()) {
        Some(id) => format!("m\0{account}\0{from}\0{id}"),
        None => format!(
            "e\0{account}\0{from}\0{}\0{}\0{}",
            msg.get("CreateTime").unwrap_or(""),
            msg.event(),
            msg.get("EventKey").unwrap_or("")
        ),
    }
}

/// The shared result of one attempt: plain reply XML, or `None` for no reply.
type Shared = Arc<Option<Vec<u8>>>;

/// A request waiting for an answer.
struct Waiter {
    complete: Complete,
    encrypt: Option<Encrypt>,
}

impl Waiter {
    /// Completes the request. Runs on the forwarding threads (the epoll loop, the claims and
    /// late-answer threads): a panic while completing one request must not stop them, so it
    /// is caught here; unwinding dropped the request's completion, which the caller answers.
    fn answer(self, reply_xml: Option<&[u8]>) {
        let Waiter { complete, encrypt } = self;
        let answer = Answer::reply(reply_xml, encrypt.as_ref());
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| complete(answer))).is_err() {
            crate::log_error!("forward: completing a request panicked; it was answered 500");
        }
    }
}

enum Task {
    Message {
        job: Box<Job>,
        /// `None` for a job on a `late` rule: its requests wait in the late hub.
        waiter: Option<Waiter>,
    },
}

/// The forward pool, the de-duplication table, and menu OAuth's own pool.
pub struct Forwarder {
    settings: ForwardSettings,
    busy: Arc<AtomicUsize>,
    dedup: Arc<Table<Waiter, Shared>>,
    /// Threads for programs (`exec`) and `user_info` lookups, started as needed up to `slots`.
    pool: OnceLock<Pool>,
    /// Backend HTTP calls (`url` targets), all on one epoll thread; `None` if it cannot start.
    http: OnceLock<Option<Arc<HttpLoop>>>,
    /// `userInfo` lookups (access tokens and user infos in a byte-bounded store).
    user_info: Arc<userinfo::UserInfo>,
    /// Separate from the forward slots: unsigned OAuth GETs never starve messages.
    pub oauth: oauth_pool::OAuthPool,
    /// Forward results and retry-table hits, for the status page.
    metrics: Arc<Metrics>,
    /// Late answers (started with the first message on a `late` rule, which also reads the
    /// state file), with their global settings.
    hub: OnceLock<Arc<late::hub::Hub>>,
    late: LateSettings,
    /// With `shared_state`: retries' claims and answers shared with other instances.
    claims: Option<ClaimThread>,
    /// With `shared_state`: the shared store, also for late answers' claims and attempt counts.
    shared: Option<Arc<dyn crate::state::Store>>,
    /// With `shared_state`: Redis, to back the late hub's kept answers with (over their own
    /// local store, which is the one saved to the state file).
    shared_state: Option<crate::state::shared::Shared>,
}

impl Forwarder {
    /// Finished answers are kept in `store` (bounded in bytes). With `shared_state`, `store`
    /// is shared with other instances: claims go there too, and late answers' claims, attempt
    /// counts and kept parts, and `user_info`'s access tokens.
    pub fn new(
        settings: ForwardSettings,
        late: LateSettings,
        store: Arc<dyn crate::state::Store>,
        metrics: Arc<Metrics>,
        shared_state: Option<crate::state::shared::Shared>,
    ) -> Forwarder {
        let user_info_local: Arc<dyn crate::state::Store> =
            Arc::new(crate::state::MemoryStore::new(userinfo::STORE_BUDGET));
        let user_info = Arc::new(userinfo::UserInfo::new(match &shared_state {
            Some(shared) => shared.with_fallback(user_info_local),
            None => user_info_local,
        }));
        let shared = shared_state.is_some().then(|| Arc::clone(&store));
        let claims = shared.clone().and_then(|store| {
            // Each waiting attempt holds a slot; finishes come one per slot at a time too.
            let capacity = 4 * settings.slots + 16;
            ClaimThread::start(Claims::new(store), capacity)
                .map_err(|e| {
                    crate::log_error!("cannot start the claims thread: {e}; retries are not shared")
                })
                .ok()
        });
        Forwarder {
            claims,
            shared,
            settings,
            metrics,
            pool: OnceLock::new(),
            http: OnceLock::new(),
            hub: OnceLock::new(),
            late,
            busy: Arc::new(AtomicUsize::new(0)),
            dedup: Arc::new(Table::new(
                store,
                Duration::from_secs(settings.dedup_seconds),
            )),
            oauth: oauth_pool::OAuthPool::new(settings.oauth, Arc::clone(&user_info)),
            user_info,
            shared_state,
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

    /// True while a backend call, program or customer-service push is running, even when
    /// no request waits for it (a late answer): the process must not exit when idle.
    pub fn working(&self) -> bool {
        self.unfinished() > 0
    }

    /// Backend calls, programs and customer-service pushes running now.
    pub fn unfinished(&self) -> usize {
        self.busy.load(Ordering::Acquire) + self.hub.get().map_or(0, |h| h.pushes())
    }

    /// Saves what must survive the process (kept late answers), at exit.
    pub fn flush(&self) {
        if let Some(hub) = self.hub.get() {
            hub.flush();
        }
    }

    /// Takes a forward slot, if one is free.
    fn acquire(&self) -> bool {
        let slots = self.settings.slots;
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < slots).then_some(n + 1)
            })
            .is_ok()
    }

    /// Makes again the late backend calls that were running when the previous process stopped
    /// (saved in the state file), on the rules of `config`. Their answers are kept as usual.
    pub fn resume(self: &Arc<Self>, config: &crate::config::Config) {
        if !self
            .late
            .state_file
            .as_deref()
            .is_some_and(std::path::Path::exists)
        {
            return;
        }
        self.hub().resume(config, |job| {
            let acquired = self.acquire();
            if acquired {
                self.dispatch(job, None);
            }
            acquired
        });
    }

    fn hub(&self) -> Arc<late::hub::Hub> {
        Arc::clone(self.hub.get_or_init(|| {
            // Kept parts get a local store of their own, the one saved to the state file;
            // twice the per-account byte bound covers the store's per-entry overhead. With
            // `shared_state` they go to Redis, and the local store holds only what was kept
            // while Redis was unavailable.
            let budget = self.late.max_bytes.saturating_mul(2).max(1 << 20);
            let kept = Arc::new(crate::state::MemoryStore::new(budget));
            // Claims and attempt counts are shared with other instances (`shared_state`).
            let store: Arc<dyn crate::state::Store> = match &self.shared {
                Some(shared) => Arc::clone(shared),
                None => Arc::new(crate::state::MemoryStore::new(LATE_STORE_BYTES)),
            };
            late::hub::Hub::new(self.late.clone(), store, kept, self.shared_state.as_ref())
        }))
    }

    /// Answers `job` through `complete`: from the de-duplication table, by parking it on an
    /// attempt in flight, on a forward thread, or with the fallback when every slot is busy.
    /// Never blocks (called on a FastCGI worker). With shared state, a new attempt first goes
    /// to the claims thread ([`claim`]), which dispatches it or answers it.
    pub fn submit(self: &Arc<Self>, mut job: Job, complete: Complete) {
        let waiter = Waiter {
            complete,
            encrypt: job.encrypt.clone(),
        };
        let acquire = || self.acquire();
        if let Some(late) = job.late.as_deref_mut() {
            let hub = self.hub();
            late.hub = Some(Arc::clone(&hub));
            hub.submit(job, waiter, acquire, |job| self.dispatch(job, None));
            return;
        }
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
        if let (Some(claims), Some(answer_key)) = (&self.claims, &job.key) {
            let keys = Keys::new(&job.account, answer_key);
            let ttl = job.forward.timeout + claim::CLAIM_MARGIN;
            let attempt = Box::new(SharedAttempt {
                forwarder: Arc::clone(self),
                job,
                waiter,
            });
            return claims.begin(keys, ttl, attempt);
        }
        self.dispatch(job, Some(waiter));
    }

    /// Starts the backend call or program of `job`, which holds a slot.
    fn dispatch(&self, job: Job, waiter: Option<Waiter>) {
        if let (Target::Http { url }, None) = (&job.forward.target, &job.user_info) {
            return self.submit_http(
                format!("{}{}", url.trim_end_matches('/'), job.path),
                job,
                waiter,
            );
        }
        if let Err(task) = self.send_task(Task::Message {
            job: Box::new(job),
            waiter,
        }) {
            // Cannot happen while busy <= slots; answer rather than drop.
            let Task::Message { job, waiter } = *task;
            let result = Ok(Err("forward queue full".to_string()));
            let ctx = (&*self.busy, &*self.dedup, &*self.metrics);
            complete(&job, waiter, result, Instant::now(), ctx);
        }
    }

    /// Calls the backend on the HTTP loop; the loop's thread completes the request.
    fn submit_http(&self, url: String, mut job: Job, waiter: Option<Waiter>) {
        let http = self.http.get_or_init(|| match HttpLoop::start() {
            Ok(l) => Some(l),
            Err(e) => {
                crate::log_error!("cannot start the backend HTTP thread: {e}");
                None
            }
        });
        let busy = Arc::clone(&self.busy);
        let dedup = Arc::clone(&self.dedup);
        let metrics = Arc::clone(&self.metrics);
        let Some(http) = http else {
            let result = Ok(Err("cannot start the backend HTTP thread".to_string()));
            return complete(
                &job,
                waiter,
                result,
                Instant::now(),
                (&busy, &dedup, &metrics),
            );
        };
        let started = Instant::now();
        let body = std::mem::take(&mut job.body);
        http.post_json(
            &url,
            &body,
            job.forward.timeout,
            Box::new(move |answer| {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answer.and_then(|a| backend::interpret(a.status, &a.body))
                }));
                complete(&job, waiter, result, started, (&busy, &dedup, &metrics));
            }),
        );
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

    /// Queues `task` for a pool thread, starting one when every started thread is busy.
    /// Idle threads stay for later tasks. Gives the task back when the queue is full or gone.
    fn send_task(&self, task: Task) -> Result<(), Box<Task>> {
        let pool = self.pool.get_or_init(|| {
            let (tx, rx) = sync_channel::<Task>(self.settings.slots);
            Pool {
                tx,
                rx: Arc::new(Mutex::new(rx)),
                threads: AtomicUsize::new(0),
                idle: Arc::new(AtomicUsize::new(0)),
                queued: Arc::new(AtomicUsize::new(0)),
            }
        });
        // Counted before it is sent: a thread may take it (and count it off) at once.
        let queued = pool.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(
            std::sync::mpsc::TrySendError::Full(task)
            | std::sync::mpsc::TrySendError::Disconnected(task),
        ) = pool.tx.try_send(task)
        {
            pool.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Box::new(task));
        }
        let threads = pool.threads.load(Ordering::Acquire);
        if queued > pool.idle.load(Ordering::Acquire) && threads < self.settings.slots {
            pool.threads.fetch_add(1, Ordering::AcqRel);
            let rx = Arc::clone(&pool.rx);
            let counts = [Arc::clone(&pool.idle), Arc::clone(&pool.queued)];
            let busy = Arc::clone(&self.busy);
            let dedup = Arc::clone(&self.dedup);
            let user_info = Arc::clone(&self.user_info);
            let metrics = Arc::clone(&self.metrics);
            let spawned = std::thread::Builder::new()
                .name(format!("forward-{threads}"))
                .spawn(move || {
                    forward_thread(&rx, &counts, (&busy, &dedup, &metrics), &user_info);
                });
            if let Err(e) = spawned {
                pool.threads.fetch_sub(1, Ordering::AcqRel);
                crate::log_error!("cannot start forward thread {threads}: {e}");
            }
        }
        Ok(())
    }
}

/// The threads for programs and `user_info` lookups, and their queue.
struct Pool {
    tx: SyncSender<Task>,
    rx: Arc<Mutex<Receiver<Task>>>,
    threads: AtomicUsize,
    /// Threads waiting for a task, and tasks not yet taken by a thread.
    idle: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
}

/// What completing a call updates: the slot count, the retry table, the status counters.
type Ctx<'a> = (&'a AtomicUsize, &'a Table<Waiter, Shared>, &'a Metrics);

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
    [idle, queued]: &[Arc<AtomicUsize>; 2],
    ctx: Ctx<'_>,
    user_info: &userinfo::UserInfo,
) {
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        let task = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        idle.fetch_sub(1, Ordering::AcqRel);
        queued.fetch_sub(1, Ordering::AcqRel);
        let (job, waiter) = match task {
            Ok(Task::Message { job, waiter }) => (*job, waiter),
            Err(_) => return,
        };
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job, user_info)));
        complete(&job, waiter, result, started, ctx);
    }
}

/// Logs the outcome of a backend call or program run, renders the answer (or the fallback),
/// frees the slot and answers every request waiting for it — or, on a `late` rule, hands the
/// answer to the late hub.
fn complete(
    job: &Job,
    waiter: Option<Waiter>,
    result: std::thread::Result<Result<OwnedReply, String>>,
    started: Instant,
    (busy, dedup, metrics): Ctx<'_>,
) {
    let ms = started.elapsed().as_millis();
    metrics.forward(match result {
        Ok(Ok(_)) => status::Forward::Ok,
        _ => status::Forward::Fallback,
    });
    if let Some(hub) = job.late.as_ref().and_then(|l| l.hub.clone()) {
        // The slot counts as busy until the answer is kept (or handed to a push): a process
        // stopping or exiting when idle waits for that before it saves the state file.
        struct Release<'a>(&'a AtomicUsize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _release = Release(busy);
        let result = result.unwrap_or_else(|_| Err("internal error".to_string()));
        hub.finished(job, result, ms);
        return;
    }
    let Some(waiter) = waiter else {
        busy.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let answer: Shared = match result {
        Ok(Ok(reply)) => {
            crate::log_info!(
                "forward account={} rule={} result=ok ms={ms}",
                job.account,
                job.rule
            );
            Arc::new(render(job, &reply))
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
    finish_all(dedup, job, waiter, &answer);
}

/// A new attempt at a message that goes through the claims thread first ([`claim`]).
struct SharedAttempt {
    forwarder: Arc<Forwarder>,
    job: Job,
    waiter: Waiter,
}

impl Claimant for SharedAttempt {
    fn call(self: Box<Self>, took_over: Option<Duration>) {
        let SharedAttempt {
            forwarder,
            job,
            waiter,
        } = *self;
        if let Some(waited) = took_over {
            crate::log_warn!(
                "forward account={} rule={} result=claim-expired reason=\"another instance's \
                 claim expired without an answer\" waited_ms={}: calling the backend",
                job.account,
                job.rule,
                waited.as_millis()
            );
        }
        forwarder.dispatch(job, Some(waiter));
    }

    fn answered(self: Box<Self>, answer: Option<Vec<u8>>, waited: Duration) {
        self.forwarder.metrics.retry_hit();
        crate::log_info!(
            "forward account={} rule={} result=duplicate-answered-shared ms={}",
            self.job.account,
            self.job.rule,
            waited.as_millis()
        );
        self.done(Arc::new(answer));
    }

    fn gave_up(self: Box<Self>, waited: Duration) {
        self.forwarder.metrics.forward(status::Forward::Fallback);
        crate::log_warn!(
            "forward account={} rule={} result=fallback reason=\"another instance still holds \
             the claim\" ms={}",
            self.job.account,
            self.job.rule,
            waited.as_millis()
        );
        let fallback = Arc::new(self.job.fallback.clone());
        self.done(fallback);
    }
}

impl SharedAttempt {
    /// Frees the slot and answers the attempt and every retry parked on it. Nothing is
    /// stored: another instance's answer is in the shared store already, and a fallback must
    /// not become the answer for every instance.
    fn done(self: Box<Self>, answer: Shared) {
        let SharedAttempt {
            forwarder,
            job,
            waiter,
        } = *self;
        forwarder.busy.fetch_sub(1, Ordering::AcqRel);
        let parked = match &job.key {
            Some(key) => forwarder.dedup.abandon(key),
            None => Vec::new(),
        };
        waiter.answer(answer.as_deref());
        for w in parked {
            w.answer(answer.as_deref());
        }
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
    render_to(&job.to_user, &job.from_user, &job.limits, reply)
}

/// Renders `reply` as a reply to `to_user` (an OpenID) from `from_user` (the account's id).
fn render_to(
    to_user: &str,
    from_user: &str,
    limits: &Limits,
    reply: &OwnedReply,
) -> Option<Vec<u8>> {
    let reply = reply.as_ref()?;
    let envelope = Envelope {
        to_user,
        from_user,
        create_time: unix_time(),
    };
    let mut out = Vec::with_capacity(512);
    reply::render(reply, &envelope, limits, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_that_panics_does_not_unwind_into_the_forwarding_thread() {
        let answered = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&answered);
        let waiter = Waiter {
            complete: Box::new(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                panic!("test panic while completing");
            }),
            encrypt: None,
        };
        waiter.answer(Some(b"<xml/>"));
        assert_eq!(answered.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dedup_keys() {
        let m = Message::parse(
            b"<xml><FromUserName>o</FromUserName><MsgType>text</MsgType><MsgId>5</MsgId></xml>",
        )
        .expect("parse");
        assert_eq!(dedup_key("a", &m), concat!("m\0a\0o\0", "5"));
        let e = Message::parse(b"<xml><FromUserName>o</FromUserName><CreateTime>9</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>k</EventKey></xml>")
            .expect("parse");
        assert_eq!(dedup_key("a", &e), concat!("e\0a\0o\0", "9\0CLICK\0k"));
    }
}
