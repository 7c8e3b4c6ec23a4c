//! Delivery of late answers.
//!
//! # What a message on a `late` rule goes through
//! 1. **A retry of a message already answered** (same user and `MsgId`) gets the same reply.
//! 2. **The first attempt claims the message** (`put_new` in the store) and starts the backend
//!    call with `late_timeout_ms` as its deadline; retries never call again.
//! 3. **A kept answer waiting for this user** is the reply, at once (part by part for a long
//!    one; a `more_hint` tells the user more follows). The message itself is still forwarded
//!    as usual: its answer is kept (or pushed) after the ones already waiting, so neither is
//!    lost. A backend that treats "more"/"继续" as a mere request for the next part answers it
//!    `{"type": "none"}`, which keeps nothing.
//! 4. **Otherwise the request waits** for an answer of this user's. The request of WeChat's
//!    last attempt (the third, or any message while another answer for the user is still
//!    being computed) is answered `pending` [`MARGIN`] before WeChat would give up; earlier
//!    attempts are let go after WeChat has given up on them (their retry comes instead).
//! 5. **The answer**, when it comes, goes to a request of the user's still waiting, if any;
//!    else it is kept for the user's next message (`next_message`) or pushed with the
//!    customer-service API (`customer_service`; on failure it is kept, and the log says why).
//!    A text longer than `text_max_bytes` is split ([`crate::wechat::split`]); the parts go
//!    out in order, one per message or one push each.
//!
//! # State
//! Claims, attempt counts, "still running" markers and given replies live in the shared
//! [`Store`] (short-lived); kept parts in the kept store (a list per user, expiring
//! `late_keep_hours` after the last addition). Keys come from [`state::key`], so a Redis
//! store serves several instances unchanged. Requests waiting for an answer are process-local
//! (they are open FastCGI requests).
//!
//! Without `shared_state` the kept store is a local [`MemoryStore`], the one saved to the
//! state file. With it, kept parts go to Redis, so the user's next message gets them on any
//! instance; the local store then holds only what was kept while Redis was unavailable (and
//! what the state file had), and is taken from first.
//!
//! Kept parts are bounded per account in count and bytes, counted by each instance for what
//! it kept. Other instances take parts this one kept without it seeing: at the bound, the
//! count is checked against the store ([`Hub::recount`]) before anything is dropped.

use super::persist::Persister;
use crate::config::LateSettings as Settings;
use crate::forward::backend::{self, OwnedReply};
use crate::forward::{Job, Waiter, render_to};
use crate::logger::Throttle;
use crate::rules::{Forward, Late, LateMode, ReplyTemplate};
use crate::state::{self, MemoryStore, Store};
use crate::wechat::message::Message;
use crate::wechat::reply::{Article, Envelope, Limits, Reply};
use crate::wechat::unix_time;
use serde_json::{Value, json};
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The last attempt is answered this long before WeChat gives up on it.
pub const MARGIN: Duration = Duration::from_millis(500);
/// An earlier attempt is let go this long after WeChat gave up on it (nginx closed it).
const RELEASE_AFTER: Duration = Duration::from_millis(1000);
/// WeChat tries a message this many times.
const ATTEMPTS: usize = 3;
/// Requests of one user waiting at once; more are answered `pending` at once.
const MAX_WAITING_PER_USER: usize = 8;
/// How long a reply given to a message is kept for its retries (which come within 3 × 5 s).
const DONE_TTL: Duration = Duration::from_secs(20);
/// Customer-service pushes queued at once; more are kept instead.
const PUSH_QUEUE: usize = 256;
/// Timeout of one WeChat API exchange.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two warnings about answers dropped at the bounds (and state file errors).
pub(super) const WARN_EVERY: Duration = Duration::from_secs(60);
/// The key kind of a saved backend call ([`Hub::flush`], [`Hub::resume`]).
const RESUME: &str = "late-resume";
const RESUME_INFIX: &str = ":late-resume:";
/// Least time between two recounts of kept parts against the shared store.
const RECOUNT_EVERY: Duration = Duration::from_secs(5);
/// The customer-service message API.
const CUSTOM_SEND: &str = "/cgi-bin/message/custom/send";

/// What a job on a `late` rule carries (built on the FastCGI worker, owned).
pub struct LateJob {
    mode: LateMode,
    /// The de-duplication key of the message (account, user, MsgId or event).
    message: String,
    /// `pending` rendered for this message (plain XML).
    pending: Vec<u8>,
    /// Parts of a long text are at most this long (the hint included).
    text_max_bytes: usize,
    more_hint: String,
    /// A text fallback, kept like an answer when the backend fails after `pending`.
    fallback: Option<OwnedReply>,
    /// `api_base`, `app_id` and `app_secret`, for `customer_service`.
    credentials: Option<Credentials>,
    /// An event (subscribe, CLICK, unsubscribe, …): never answered with a kept answer, since
    /// WeChat does not show a reply to every event.
    is_event: bool,
    /// The hub that completes the job (set when it is submitted).
    pub(in crate::forward) hub: Option<Arc<Hub>>,
}

/// Where and as whom customer-service messages are sent.
#[derive(Clone)]
struct Credentials {
    api_base: String,
    app_id: String,
    app_secret: String,
}

impl LateJob {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::forward) fn new(
        settings: &Late,
        forward: &Forward,
        msg: &Message<'_>,
        account: &crate::config::Account,
        api_base: &str,
        message: String,
        limits: Limits,
        global_text_max_bytes: usize,
    ) -> LateJob {
        let envelope = Envelope {
            to_user: msg.from_user(),
            from_user: msg.to_user(),
            create_time: unix_time(),
        };
        let mut scratch = String::new();
        let mut pending = Vec::new();
        settings
            .pending
            .render(msg, &envelope, &limits, &mut scratch, &mut pending);
        let fallback = match &forward.fallback {
            Some(ReplyTemplate::Text { content }) => {
                let mut text = String::new();
                content.render_into(msg, &mut text);
                Some(Some(Reply::Text { content: text }))
            }
            _ => None,
        };
        let credentials = match (&account.app_id, &account.app_secret) {
            (Some(id), Some(secret)) => Some(Credentials {
                api_base: api_base.to_string(),
                app_id: id.clone(),
                app_secret: secret.expose().to_string(),
            }),
            _ => None,
        };
        LateJob {
            mode: settings.mode,
            message,
            pending,
            text_max_bytes: settings.text_max_bytes(global_text_max_bytes),
            more_hint: settings.more_hint.clone(),
            fallback,
            credentials,
            is_event: msg.is_event(),
            hub: None,
        }
    }
}

/// A request waiting for an answer of its user's.
struct Live {
    id: u64,
    account: String,
    /// The message it is an attempt of.
    message: String,
    arrived: Instant,
    /// WeChat's last attempt: answered `pending` at its deadline.
    last: bool,
    waiter: Waiter,
    pending: Vec<u8>,
    to_user: String,
    from_user: String,
    limits: Limits,
    hint: String,
}

/// Bytes and parts kept for one user (this process's view, for the per-account bounds).
#[derive(Clone, Copy)]
struct Kept {
    parts: usize,
    bytes: usize,
    expires: Instant,
}

/// A customer-service push of one answer's parts.
struct Push {
    account: String,
    rule: String,
    to_user: String,
    credentials: Credentials,
    parts: Vec<OwnedReply>,
}

/// Late-answer delivery for every account of the process.
pub struct Hub {
    settings: Settings,
    store: Arc<dyn Store>,
    /// Where kept parts go: the local store, or Redis backed by it (`shared_state`).
    kept: Arc<dyn Store>,
    /// With `shared_state`: the local store under `kept`, taken first.
    leftovers: Option<Arc<MemoryStore>>,
    /// The local store (the one saved to the state file), also for calls to resume.
    local: Arc<MemoryStore>,
    /// Backend calls running now, by message key: (account, what [`Hub::resume`] needs to make
    /// the call again). Saved to the state file at stop, if still running.
    running: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Unix seconds of the last [`Hub::recount`] (at most one per [`RECOUNT_EVERY`]).
    recounted: AtomicU64,
    persister: Option<Persister>,
    /// Waiting requests by kept-list key (account + user).
    waiting: Mutex<HashMap<String, Vec<Live>>>,
    timers: Timers,
    ledger: Mutex<HashMap<String, Kept>>,
    pushes: OnceLock<SyncSender<Push>>,
    /// Pushes queued or running (for idle exit).
    pushing: AtomicUsize,
    apis: Mutex<HashMap<String, Arc<crate::wxapi::Api>>>,
    next_id: AtomicU64,
    /// This hub, for the threads it starts.
    me: Weak<Hub>,
    /// Answers dropped at the bounds: one warning a minute.
    full_warning: Throttle,
}

impl Hub {
    /// A hub over `store` (claims, markers) with kept parts in `local`, or with `shared` in
    /// Redis backed by `local`. With a state file in `settings`, `local` is loaded from it now
    /// and saved whenever it changes.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        local: Arc<MemoryStore>,
        shared: Option<&crate::state::shared::Shared>,
    ) -> Arc<Hub> {
        let kept = local;
        let persister = settings.state_file.as_ref().map(|path| {
            match kept.load(path) {
                Ok(n) => {
                    crate::log_info!("late: {n} kept answer list(s) read from {}", path.display())
                }
                Err(e) => crate::log_warn!(
                    "late: cannot read {} ({e}); starting with no kept answers",
                    path.display()
                ),
            }
            Persister::start(Arc::clone(&kept), path.clone())
        });
        let ledger = Mutex::new(ledger_of(&kept));
        let local = Arc::clone(&kept);
        let (kept, leftovers): (Arc<dyn Store>, _) = match shared {
            Some(shared) => (
                shared.with_fallback(Arc::clone(&kept) as Arc<dyn Store>),
                Some(kept),
            ),
            None => (kept, None),
        };
        let hub = Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            full_warning: Throttle::new(WARN_EVERY),
            ledger,
            settings,
            store,
            kept,
            leftovers,
            local,
            running: Mutex::new(HashMap::new()),
            recounted: AtomicU64::new(0),
            persister,
            waiting: Mutex::new(HashMap::new()),
            timers: Timers::default(),
            pushes: OnceLock::new(),
            pushing: AtomicUsize::new(0),
            apis: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&hub);
        let timers_started = std::thread::Builder::new()
            .name("late-timers".into())
            .spawn(move || timer_thread(&weak));
        if let Err(e) = timers_started {
            crate::log_error!("late: cannot start the timer thread: {e}");
        }
        hub
    }

    /// Work that must finish before the process may exit: pushes queued or in progress.
    pub fn pushes(&self) -> usize {
        self.pushing.load(Ordering::Acquire)
    }

    /// Writes the state file now (at exit), with the backend calls still running: the next
    /// process makes them again ([`Hub::resume`]), so their answers are not lost.
    pub fn flush(&self) {
        let running = std::mem::take(&mut *self.lock_running());
        let n = running.len();
        let Some(p) = &self.persister else {
            if n > 0 {
                crate::log_warn!(
                    "late: {n} backend call(s) still running are lost: their users got `pending` \
                     and will not get these answers (without a state file nothing is kept \
                     across a restart)"
                );
            }
            return;
        };
        // Saved calls share the store with kept answers: at most half of `late_max_bytes`, so
        // that saving them never pushes kept answers out.
        let (mut saved, mut bytes) = (0, 0);
        for (message, (account, record)) in running {
            bytes += record.len();
            let key = state::key(&account, RESUME, &message);
            let put = if bytes > self.settings.max_bytes / 2 {
                Err("saved calls at their bound (half of late_max_bytes)".to_string())
            } else {
                let put = self.local.put(&key, &record, self.settings.keep);
                put.map_err(|e| e.to_string())
            };
            match put {
                Ok(()) => saved += 1,
                Err(e) => crate::log_warn!(
                    "late account={account} result=lost reason=\"{}\"",
                    e.escape_debug()
                ),
            }
        }
        if saved > 0 {
            let n = saved;
            crate::log_warn!(
                "late: {n} backend call(s) still running saved to {}; the next start makes them again",
                p.path().display()
            );
        }
        p.save_now();
    }

    /// Makes again the backend calls a previous process saved when it stopped ([`Hub::flush`]),
    /// with the rules of `config` (a call whose rule is gone is dropped, logged). `dispatch`
    /// starts one call (taking its slot); it returns false when no slot is free.
    pub(in crate::forward) fn resume(
        self: &Arc<Self>,
        config: &crate::config::Config,
        mut dispatch: impl FnMut(Job) -> bool,
    ) {
        let saved: Vec<_> = self
            .local
            .export(state::KEY_PREFIX)
            .into_iter()
            .filter(|e| e.key.contains(RESUME_INFIX))
            .collect();
        if saved.is_empty() {
            return;
        }
        for entry in saved {
            let _ = self.local.remove(&entry.key);
            let state::ExportedValue::Bytes(record) = entry.value else {
                continue;
            };
            match self.rebuild(config, &record) {
                Ok(job) => {
                    let (account, rule) = (job.account.clone(), job.rule.clone());
                    self.track(&job);
                    if dispatch(job) {
                        crate::log_info!(
                            "late account={account} rule={rule} result=resumed (the call was running when the previous process stopped)"
                        );
                    } else {
                        crate::log_warn!(
                            "late account={account} rule={rule} result=lost reason=\"all forward slots busy at start\""
                        );
                    }
                }
                Err(why) => crate::log_warn!("late: a saved backend call is dropped: {why}"),
            }
        }
        if let Some(p) = &self.persister {
            p.changed();
        }
    }

    /// Notes a backend call that is starting, for [`Hub::flush`].
    fn track(&self, job: &Job) {
        let Some(late) = job.late.as_deref() else {
            return;
        };
        let env: Vec<Value> = job.env.iter().map(|(k, v)| json!([k, v])).collect();
        let fallback = (late.fallback.as_ref())
            .and_then(to_item)
            .map(|i| String::from_utf8_lossy(&i).into_owned());
        let record = json!({
            "account": job.account,
            "rule": job.rule,
            "key": job.key,
            "path": job.path,
            "body": String::from_utf8_lossy(&job.body),
            "env": env,
            "to_user": job.to_user,
            "from_user": job.from_user,
            "text_max_bytes": job.limits.text_max_bytes,
            "max_articles": job.limits.max_articles,
            "message": late.message,
            "is_event": late.is_event,
            "fallback": fallback,
        });
        let Ok(record) = serde_json::to_vec(&record) else {
            return;
        };
        self.lock_running()
            .insert(late.message.clone(), (job.account.clone(), record));
    }

    /// A job from a saved record, on the rule of the same name in `config`.
    fn rebuild(
        self: &Arc<Self>,
        config: &crate::config::Config,
        record: &[u8],
    ) -> Result<Job, String> {
        let r: Value = serde_json::from_slice(record).map_err(|e| format!("unreadable ({e})"))?;
        let text = |name: &str| r[name].as_str().unwrap_or("").to_string();
        let (account_name, rule_name) = (text("account"), text("rule"));
        let account = (config.accounts.iter())
            .find(|a| a.name == account_name)
            .ok_or_else(|| format!("account {account_name:?} is no longer in the config"))?;
        let forward = (account.rules.iter())
            .find(|rule| rule.name == rule_name)
            .and_then(|rule| match &rule.action {
                crate::rules::Action::Forward(f) if f.late.is_some() => Some(Arc::clone(f)),
                _ => None,
            })
            .ok_or_else(|| {
                format!("account {account_name:?} has no rule {rule_name:?} with `late` any more")
            })?;
        let settings = forward.late.as_ref().ok_or("no late settings")?;
        // The file is ours, but read as hostile: the path is one `backend::path_for` makes
        // (`/msg/…` or `/event/…`, percent-encoded), so it cannot leave the rule's URL.
        let path = text("path");
        let encoded = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b))
        };
        let path_ok = match forward.target {
            crate::rules::Target::Http { .. } => (path.strip_prefix("/msg/"))
                .or_else(|| path.strip_prefix("/event/"))
                .is_some_and(encoded),
            crate::rules::Target::Exec { .. } => path.is_empty(),
        };
        if !path_ok {
            return Err(format!("its path {path:?} is not a message or event path"));
        }
        let credentials = match (&account.app_id, &account.app_secret) {
            (Some(id), Some(secret)) => Some(Credentials {
                api_base: config.api_base.clone(),
                app_id: id.clone(),
                app_secret: secret.expose().to_string(),
            }),
            _ => None,
        };
        let fallback = r["fallback"]
            .as_str()
            .and_then(|item| backend::parse_answer(item.as_bytes()).ok());
        let late = LateJob {
            mode: settings.mode,
            message: text("message"),
            pending: Vec::new(),
            text_max_bytes: settings.text_max_bytes(config.text_max_bytes),
            more_hint: settings.more_hint.clone(),
            fallback,
            credentials,
            is_event: r["is_event"].as_bool().unwrap_or(false),
            hub: Some(Arc::clone(self)),
        };
        // Only the `WX_…` variables `Job::new` sets.
        let pairs = r["env"].as_array().map(Vec::as_slice).unwrap_or_default();
        let env = (pairs.iter())
            .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string())))
            .filter(|(k, _)| {
                k.strip_prefix("WX_").is_some_and(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
            })
            .collect();
        let count = |name: &str, default: usize| {
            (r[name].as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(default)
        };
        let user_info = match forward.target {
            crate::rules::Target::Http { .. } => {
                crate::forward::userinfo::Credentials::for_account(config, account)
            }
            crate::rules::Target::Exec { .. } => None,
        };
        Ok(Job {
            forward: Arc::clone(&forward),
            account: account_name,
            rule: rule_name,
            key: r["key"].as_str().map(str::to_string),
            path,
            body: text("body").into_bytes(),
            env,
            to_user: text("to_user"),
            from_user: text("from_user"),
            limits: Limits {
                text_max_bytes: count("text_max_bytes", config.text_max_bytes),
                max_articles: count("max_articles", 1),
            },
            fallback: None,
            encrypt: None,
            user_info,
            late: Some(Box::new(late)),
        })
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Vec<u8>)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one attempt of a message on a `late` rule (see the module doc). `acquire`
    /// takes a forward slot; `dispatch` starts the backend call, whose completion must call
    /// [`Hub::finished`].
    pub(in crate::forward) fn submit(
        self: &Arc<Self>,
        job: Job,
        waiter: Waiter,
        acquire: impl FnOnce() -> bool,
        dispatch: impl FnOnce(Job),
    ) {
        let Some(late) = job.late.as_deref() else {
            return;
        };
        let now = Instant::now();
        let account = &job.account;
        let user_key = state::key(account, "late-kept", &job.to_user);
        let done_key = state::key(account, "late-done", &late.message);
        // 1. A retry of a message already answered.
        if let Ok(Some(reply)) = self.store.get(&done_key) {
            crate::log_info!(
                "late account={} rule={} result=repeat user={:08x}",
                account,
                job.rule,
                short(&job.to_user)
            );
            waiter.answer((!reply.is_empty()).then_some(&reply[..]));
            return;
        }
        // 2. Which attempt is this, and is it the first (the one that calls the backend)?
        let tries_key = state::key(account, "late-try", &late.message);
        // Retries come within WeChat's three attempts: claims and counts need not outlive them.
        let call_ttl = self.settings.attempt * 4;
        let attempt = match self.store.push(&tries_key, &[b"."], call_ttl) {
            Ok(()) => self.store.list_len(&tries_key).unwrap_or(1),
            Err(_) => 1,
        };
        let claimed = self
            .store
            .put_new(
                &state::key(account, "late-call", &late.message),
                b"1",
                call_ttl,
            )
            .unwrap_or(true);
        let running_key = state::key(account, "late-run", &job.to_user);
        let other_running = match self.store.get(&running_key) {
            Ok(Some(m)) => m != late.message.as_bytes(),
            _ => false,
        };
        let start = if claimed {
            if !acquire() {
                let _ = self
                    .store
                    .remove(&state::key(account, "late-call", &late.message));
                crate::log_warn!(
                    "late account={} rule={} result=fallback reason=\"all forward slots busy\"",
                    account,
                    job.rule
                );
                waiter.answer(job.fallback.as_deref());
                return;
            }
            let _ = self
                .store
                .put(&running_key, late.message.as_bytes(), job.forward.timeout);
            true
        } else {
            false
        };
        // 3. An answer kept for this user.
        let kept = if late.is_event {
            None
        } else {
            self.take_kept(
                &user_key,
                &job.to_user,
                &job.from_user,
                &job.limits,
                &late.more_hint,
            )
        };
        if let Some((xml, more)) = kept {
            let _ = self.store.put(&done_key, &xml, DONE_TTL);
            crate::log_info!(
                "late account={} rule={} result=delivered-kept more={} user={:08x}",
                account,
                job.rule,
                more,
                short(&job.to_user)
            );
            waiter.answer(Some(&xml));
            if start {
                self.track(&job);
                dispatch(job);
            }
            return;
        }
        // 4. Wait for an answer of this user's.
        let last = attempt >= ATTEMPTS || other_running;
        let deadline = if last {
            now + self.settings.attempt.saturating_sub(MARGIN)
        } else {
            now + self.settings.attempt + RELEASE_AFTER
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            id,
            account: account.clone(),
            message: late.message.clone(),
            arrived: now,
            last,
            waiter,
            pending: late.pending.clone(),
            to_user: job.to_user.clone(),
            from_user: job.from_user.clone(),
            limits: job.limits,
            hint: late.more_hint.clone(),
        };
        let refused = {
            let mut waiting = self.lock_waiting();
            let list = waiting.entry(user_key.clone()).or_default();
            if list.len() >= MAX_WAITING_PER_USER {
                Some(live)
            } else {
                list.push(live);
                None
            }
        };
        match refused {
            Some(live) => live.waiter.answer(Some(&live.pending)),
            None => self.timers.add(deadline, user_key, id),
        }
        crate::log_debug!(
            "late account={} rule={} attempt={attempt} last={last} call={start}",
            account,
            job.rule
        );
        if start {
            self.track(&job);
            dispatch(job);
        }
    }

    /// The backend call of `job` ended (its slot is freed when this returns).
    pub(in crate::forward) fn finished(
        &self,
        job: &Job,
        result: Result<OwnedReply, String>,
        ms: u128,
    ) {
        let Some(late) = job.late.as_deref() else {
            return;
        };
        let account = &job.account;
        self.lock_running().remove(&late.message);
        let running_key = state::key(account, "late-run", &job.to_user);
        if let Ok(Some(m)) = self.store.get(&running_key) {
            if m == late.message.as_bytes() {
                let _ = self.store.remove(&running_key);
            }
        }
        let answer = match result {
            Ok(reply) => {
                crate::log_info!(
                    "forward account={} rule={} result=ok ms={ms}",
                    account,
                    job.rule
                );
                reply
            }
            Err(reason) => {
                crate::log_warn!(
                    "forward account={} rule={} result=fallback reason=\"{}\" ms={ms}",
                    account,
                    job.rule,
                    reason.escape_debug()
                );
                late.fallback.clone().flatten()
            }
        };
        let parts = split_answer(answer, late.text_max_bytes, &late.more_hint);
        self.deliver(job, late, parts);
    }

    /// Gives `parts` to a waiting request of the user's, then keeps or pushes the rest.
    fn deliver(&self, job: &Job, late: &LateJob, mut parts: Vec<OwnedReply>) {
        let account = &job.account;
        let user_key = state::key(account, "late-kept", &job.to_user);
        let now = Instant::now();
        // The newest request WeChat still waits for, and the other attempts of its message.
        let taken = {
            let mut waiting = self.lock_waiting();
            let found = waiting.get_mut(&user_key).and_then(|list| {
                // WeChat waits `attempt` for each request; answer only well within that.
                let open = self.settings.attempt.saturating_sub(MARGIN);
                let i = (0..list.len())
                    .rev()
                    .find(|&i| now.duration_since(list[i].arrived) < open)?;
                let message = list[i].message.clone();
                let mut same = Vec::new();
                let mut k = 0;
                while k < list.len() {
                    if list[k].message == message {
                        same.push(list.swap_remove(k));
                    } else {
                        k += 1;
                    }
                }
                Some(same)
            });
            if waiting.get(&user_key).is_some_and(Vec::is_empty) {
                waiting.remove(&user_key);
            }
            found
        };
        if let Some(requests) = taken {
            let first = parts.first().cloned().flatten();
            let rest = parts.split_off(parts.len().min(1));
            let template = &requests[0];
            let mut reply = first;
            if !rest.is_empty() && late.mode == LateMode::NextMessage {
                append_hint(&mut reply, &late.more_hint);
            }
            let xml = render_to(
                &template.to_user,
                &template.from_user,
                &template.limits,
                &reply,
            );
            let _ = self.store.put(
                &state::key(account, "late-done", &template.message),
                xml.as_deref().unwrap_or(b""),
                DONE_TTL,
            );
            crate::log_info!(
                "late account={} rule={} result=answered parts={} user={:08x}",
                account,
                job.rule,
                1 + rest.len(),
                short(&job.to_user)
            );
            for r in requests {
                r.waiter.answer(xml.as_deref());
            }
            parts = rest;
        }
        if parts.iter().all(Option::is_none) {
            return;
        }
        match (late.mode, &late.credentials) {
            (LateMode::CustomerService, Some(credentials)) => {
                self.push(Push {
                    account: account.clone(),
                    rule: job.rule.clone(),
                    to_user: job.to_user.clone(),
                    credentials: credentials.clone(),
                    parts,
                });
            }
            _ => self.keep(account, &job.rule, &job.to_user, parts),
        }
    }

    /// Appends `parts` to the user's kept list, within the account's bounds.
    fn keep(&self, account: &str, rule: &str, to_user: &str, parts: Vec<OwnedReply>) {
        let user_key = state::key(account, "late-kept", to_user);
        let items: Vec<Vec<u8>> = parts.iter().filter_map(to_item).collect();
        let bytes: usize = items.iter().map(Vec::len).sum();
        let now = Instant::now();
        let prefix = state::key(account, "late-kept", "");
        if !self.within_bounds(&prefix, items.len(), bytes, now) {
            self.recount(&prefix);
        }
        {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            if !self.within_bounds_of(&ledger, &prefix, items.len(), bytes) {
                if let Some(left_out) = self.full_warning.hit(Instant::now()).map(|n| n - 1) {
                    crate::log_warn!(
                        "late account={account} rule={rule} result=dropped reason=\"kept answers of this account at their bound (late_max_answers {}, late_max_bytes {}): {} part(s) not kept\" user={:08x} similar_warnings_left_out={left_out}",
                        self.settings.max_parts,
                        self.settings.max_bytes,
                        items.len(),
                        short(to_user)
                    );
                }
                return;
            }
            let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
            if let Err(e) = self.kept.push(&user_key, &refs, self.settings.keep) {
                if let Some(left_out) = self.full_warning.hit(Instant::now()).map(|n| n - 1) {
                    crate::log_warn!(
                        "late account={account} rule={rule} result=dropped reason=\"{e}\" user={:08x} similar_warnings_left_out={left_out}",
                        short(to_user)
                    );
                }
                return;
            }
            let entry = ledger.entry(user_key).or_insert(Kept {
                parts: 0,
                bytes: 0,
                expires: now,
            });
            entry.parts += items.len();
            entry.bytes += bytes;
            entry.expires = now + self.settings.keep;
        }
        crate::log_info!(
            "late account={account} rule={rule} result=kept parts={} user={:08x}",
            items.len(),
            short(to_user)
        );
        if let Some(p) = &self.persister {
            p.changed();
        }
    }

    /// Whether `parts` more parts of `bytes` stay within the account's bounds (its keys start
    /// with `prefix`), by this instance's count; drops expired counts.
    fn within_bounds(&self, prefix: &str, parts: usize, bytes: usize, now: Instant) -> bool {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.retain(|_, k| k.expires > now);
        self.within_bounds_of(&ledger, prefix, parts, bytes)
    }

    fn within_bounds_of(
        &self,
        ledger: &HashMap<String, Kept>,
        prefix: &str,
        parts: usize,
        bytes: usize,
    ) -> bool {
        let (mut n, mut b) = (0, 0);
        for (key, k) in ledger {
            if key.starts_with(prefix) {
                n += k.parts;
                b += k.bytes;
            }
        }
        n + parts <= self.settings.max_parts && b + bytes <= self.settings.max_bytes
    }

    /// With shared kept parts: sets this instance's counts of the account's lists (keys
    /// starting with `prefix`) to what the stores still hold, since other instances take
    /// parts this one kept. A list that shrank is assumed to have lost its oldest parts in
    /// proportion (the store does not tell bytes). One recount per [`RECOUNT_EVERY`]: each
    /// costs a round trip per list.
    fn recount(&self, prefix: &str) {
        if self.leftovers.is_none() {
            return;
        }
        let now = unix_time();
        let last = self.recounted.load(Ordering::Acquire);
        if now < last.saturating_add(RECOUNT_EVERY.as_secs())
            || self
                .recounted
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let counted: Vec<(String, usize)> = {
            let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger
                .iter()
                .filter(|(key, _)| key.starts_with(prefix))
                .map(|(key, k)| (key.clone(), k.parts))
                .collect()
        };
        // Outside the lock: these are round trips to Redis.
        let held: Vec<(String, usize, usize)> = counted
            .into_iter()
            .map(|(key, parts)| {
                let now_held = self.kept_len(&key);
                (key, parts, now_held)
            })
            .collect();
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        for (key, parts, now_held) in held {
            // Changed meanwhile (kept or taken here): that count is newer than ours.
            let Some(k) = ledger.get_mut(&key).filter(|k| k.parts == parts) else {
                continue;
            };
            if now_held == 0 {
                ledger.remove(&key);
            } else if now_held < k.parts {
                k.bytes = k.bytes * now_held / k.parts;
                k.parts = now_held;
            }
        }
    }

    /// Parts kept for the user of `user_key`, in both stores.
    fn kept_len(&self, user_key: &str) -> usize {
        let local = self
            .leftovers
            .as_ref()
            .map_or(0, |l| l.list_len(user_key).unwrap_or(0));
        local + self.kept.list_len(user_key).unwrap_or(0)
    }

    /// The user's next kept part: what was kept locally first (it can be taken only here),
    /// then the shared list.
    fn pop_kept(&self, user_key: &str) -> Option<Vec<u8>> {
        if let Some(local) = &self.leftovers {
            if let Ok(Some(item)) = local.pop(user_key) {
                return Some(item);
            }
        }
        self.kept.pop(user_key).ok()?
    }

    /// Takes the user's next kept part, rendered as a reply (with the hint when more follow).
    fn take_kept(
        &self,
        user_key: &str,
        to_user: &str,
        from_user: &str,
        limits: &Limits,
        hint: &str,
    ) -> Option<(Vec<u8>, usize)> {
        loop {
            let item = self.pop_kept(user_key)?;
            {
                let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = ledger.get_mut(user_key) {
                    k.parts = k.parts.saturating_sub(1);
                    k.bytes = k.bytes.saturating_sub(item.len());
                    if k.parts == 0 {
                        ledger.remove(user_key);
                    }
                }
            }
            if let Some(p) = &self.persister {
                p.changed();
            }
            let Ok(mut reply) = backend::parse_answer(&item) else {
                crate::log_warn!("late: dropping a kept answer that no longer parses");
                continue;
            };
            let more = self.kept_len(user_key);
            if more > 0 {
                append_hint(&mut reply, hint);
            }
            let xml = render_to(to_user, from_user, limits, &reply)?;
            return Some((xml, more));
        }
    }

    /// A waiting request's deadline passed.
    fn expire(&self, user_key: &str, id: u64) {
        let live = {
            let mut waiting = self.lock_waiting();
            let Some(list) = waiting.get_mut(user_key) else {
                return;
            };
            let Some(i) = list.iter().position(|l| l.id == id) else {
                return;
            };
            let live = list.swap_remove(i);
            if list.is_empty() {
                waiting.remove(user_key);
            }
            live
        };
        if live.last {
            // Another instance (or a race) may have kept the answer meanwhile.
            if let Some((xml, _)) = self.take_kept(
                user_key,
                &live.to_user,
                &live.from_user,
                &live.limits,
                &live.hint,
            ) {
                let done = state::key(&live.account, "late-done", &live.message);
                let _ = self.store.put(&done, &xml, DONE_TTL);
                live.waiter.answer(Some(&xml));
                return;
            }
            crate::log_info!("late result=pending user={:08x}", short(&live.to_user));
        }
        live.waiter.answer(Some(&live.pending));
    }

    fn push(&self, push: Push) {
        let sender = self.pushes.get_or_init(|| {
            let (tx, rx) = sync_channel::<Push>(PUSH_QUEUE);
            let hub = self.me.clone();
            let started = std::thread::Builder::new()
                .name("late-push".into())
                .spawn(move || push_thread(&rx, &hub));
            if let Err(e) = started {
                crate::log_error!("late: cannot start the push thread: {e}");
            }
            tx
        });
        self.pushing.fetch_add(1, Ordering::AcqRel);
        match sender.try_send(push) {
            Ok(()) => {}
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
                self.pushing.fetch_sub(1, Ordering::AcqRel);
                crate::log_warn!(
                    "late account={} rule={} result=kept reason=\"customer-service queue full\" user={:08x}",
                    p.account,
                    p.rule,
                    short(&p.to_user)
                );
                self.keep(&p.account, &p.rule, &p.to_user, p.parts);
            }
        }
    }

    fn api(&self, account: &str, c: &Credentials) -> Arc<crate::wxapi::Api> {
        let mut apis = self.apis.lock().unwrap_or_else(|p| p.into_inner());
        // Keyed by the credentials too: a reload with a new AppSecret or api_base gets a new
        // client.
        let key = format!("{account}\0{}\0{}\0{}", c.api_base, c.app_id, c.app_secret);
        Arc::clone(apis.entry(key).or_insert_with(|| {
            Arc::new(crate::wxapi::Api::new(
                &c.api_base,
                account,
                &c.app_id,
                &c.app_secret,
                Arc::clone(&self.store),
                API_TIMEOUT,
            ))
        }))
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Live>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn push_thread(rx: &Receiver<Push>, hub: &Weak<Hub>) {
    while let Ok(push) = rx.recv() {
        let Some(hub) = hub.upgrade() else { return };
        let Push {
            account,
            rule,
            to_user,
            credentials,
            parts,
        } = push;
        let api = hub.api(&account, &credentials);
        let total = parts.len();
        let mut rest = parts.into_iter().enumerate().peekable();
        while let Some((i, part)) = rest.next() {
            let Some(body) = custom_message(&to_user, &part) else {
                continue;
            };
            match api.post_json(CUSTOM_SEND, &body) {
                Ok(_) => crate::log_info!(
                    "late account={account} rule={rule} result=pushed part={}/{total} user={:08x}",
                    i + 1,
                    short(&to_user)
                ),
                Err(e) => {
                    crate::log_warn!(
                        "late account={account} rule={rule} result=kept reason=\"customer-service message failed: {}\" part={}/{total} user={:08x}",
                        e.to_string().escape_debug(),
                        i + 1,
                        short(&to_user)
                    );
                    let mut left = vec![part];
                    left.extend(rest.map(|(_, p)| p));
                    hub.keep(&account, &rule, &to_user, left);
                    break;
                }
            }
        }
        hub.pushing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The customer-service message for `reply`, as `POST /cgi-bin/message/custom/send` takes it.
fn custom_message(to_user: &str, reply: &OwnedReply) -> Option<Vec<u8>> {
    let (kind, body) = match reply.as_ref()? {
        Reply::Text { content } => ("text", json!({ "content": content })),
        Reply::Image { media_id } => ("image", json!({ "media_id": media_id })),
        Reply::Voice { media_id } => ("voice", json!({ "media_id": media_id })),
        Reply::Video {
            media_id,
            title,
            description,
        } => (
            "video",
            json!({ "media_id": media_id, "title": title, "description": description }),
        ),
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => (
            "music",
            json!({
                "title": title,
                "description": description,
                "musicurl": music_url,
                "hqmusicurl": hq_music_url,
                "thumb_media_id": thumb_media_id,
            }),
        ),
        Reply::News { articles } => {
            // The customer-service API takes one article.
            let a = articles.first()?;
            (
                "news",
                json!({ "articles": [{
                    "title": a.title, "description": a.description, "url": a.url,
                    "picurl": a.pic_url,
                }] }),
            )
        }
        // A backend never answers this; there is nothing to push.
        Reply::TransferCustomerService { .. } => return None,
    };
    let mut message = json!({ "touser": to_user, "msgtype": kind });
    message[kind] = body;
    serde_json::to_vec(&message).ok()
}

/// A kept part: the go-wx-gateway answer JSON of `reply` (read back by `parse_answer`).
fn to_item(reply: &OwnedReply) -> Option<Vec<u8>> {
    let value = match reply.as_ref()? {
        Reply::Text { content } => json!({ "type": "text", "msg": content }),
        Reply::Image { media_id } => json!({ "type": "image", "msg": media_id }),
        Reply::Voice { media_id } => json!({ "type": "voice", "msg": media_id }),
        Reply::Video {
            media_id,
            title,
            description,
        } => {
            json!({ "type": "video", "msg": media_id, "title": title, "description": description })
        }
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => json!({
            "type": "music", "title": title, "description": description, "music_url": music_url,
            "hq_music_url": hq_music_url, "thumb_media_id": thumb_media_id,
        }),
        Reply::News { articles } => json!({
            "type": "news",
            "articles": articles.iter().map(|a: &Article<String>| json!({
                "title": a.title, "description": a.description, "pic_url": a.pic_url, "url": a.url,
            })).collect::<Vec<Value>>(),
        }),
        Reply::TransferCustomerService { .. } => return None,
    };
    serde_json::to_vec(&value).ok()
}

/// A text longer than `max` becomes parts that leave room for `hint`; anything else is one part.
fn split_answer(answer: OwnedReply, max: usize, hint: &str) -> Vec<OwnedReply> {
    match answer {
        Some(Reply::Text { content }) if content.len() > max => {
            let room = max.saturating_sub(hint.len()).max(max / 2);
            crate::wechat::split::split(&content, room)
                .into_iter()
                .map(|p| {
                    Some(Reply::Text {
                        content: p.to_string(),
                    })
                })
                .collect()
        }
        other => vec![other],
    }
}

fn append_hint(reply: &mut OwnedReply, hint: &str) {
    if let Some(Reply::Text { content }) = reply {
        content.push_str(hint);
    }
}

/// The per-account bookkeeping of what `kept` holds (after loading the state file).
fn ledger_of(kept: &MemoryStore) -> HashMap<String, Kept> {
    let now = Instant::now();
    let wall = unix_time().saturating_mul(1000);
    let mut ledger = HashMap::new();
    for e in kept.export(state::KEY_PREFIX) {
        if let state::ExportedValue::List(items) = &e.value {
            let left = Duration::from_millis(e.expires_unix_ms.saturating_sub(wall));
            ledger.insert(
                e.key.clone(),
                Kept {
                    parts: items.len(),
                    bytes: items.iter().map(Vec::len).sum(),
                    expires: now + left,
                },
            );
        }
    }
    ledger
}

/// A short id of an OpenID for logs (the OpenID itself is personal data).
fn short(openid: &str) -> u32 {
    openid.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Deadlines of waiting requests, fired by one thread.
#[derive(Default)]
struct Timers {
    heap: Mutex<BinaryHeap<std::cmp::Reverse<(Instant, u64, String)>>>,
    wake: Condvar,
}

impl Timers {
    fn add(&self, at: Instant, user_key: String, id: u64) {
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        heap.push(std::cmp::Reverse((at, id, user_key)));
        self.wake.notify_one();
    }
}

fn timer_thread(hub: &Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        let due = {
            let mut heap = h.timers.heap.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let now = Instant::now();
                match heap.peek() {
                    Some(std::cmp::Reverse((at, _, _))) if *at <= now => {
                        break heap.pop().map(|std::cmp::Reverse(t)| t);
                    }
                    Some(std::cmp::Reverse((at, _, _))) => {
                        let wait = *at - now;
                        heap = h
                            .timers
                            .wake
                            .wait_timeout(heap, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => {
                        // Wake up now and then so the thread ends with the hub.
                        let (g, _) = h
                            .timers
                            .wake
                            .wait_timeout(heap, Duration::from_secs(1))
                            .unwrap_or_else(|p| p.into_inner());
                        heap = g;
                        if heap.is_empty() {
                            break None;
                        }
                    }
                }
            }
        };
        if let Some((_, id, user_key)) = due {
            h.expire(&user_key, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> OwnedReply {
        Some(Reply::Text {
            content: t.to_string(),
        })
    }

    fn article(t: &str, d: &str, p: &str, u: &str) -> Article<String> {
        Article {
            title: t.into(),
            description: d.into(),
            pic_url: p.into(),
            url: u.into(),
        }
    }

    #[test]
    fn saved_calls_are_rebuilt_on_the_rule_of_the_same_name_and_read_as_hostile() {
        let config = crate::config::Config::parse(
            "[[account]]\nname = \"bot\"\npath = \"/weixin\"\ntoken = \"t\"\n\
             [[account.rule]]\nname = \"ask\"\nreply = { type = \"forward\", url = \
             \"http://127.0.0.1:9/gw\", late = \"next_message\" }\n\
             [[account.rule]]\nname = \"plain\"\nreply = { type = \"forward\", url = \
             \"http://127.0.0.1:9/gw\" }\n",
            "test.toml",
        )
        .expect("config");
        let hub = Hub::new(
            config.late.clone(),
            Arc::new(MemoryStore::new(1 << 20)),
            Arc::new(MemoryStore::new(1 << 20)),
            None,
        );
        let record = |rule: &str, path: &str| {
            serde_json::to_vec(&json!({
                "account": "bot", "rule": rule, "key": null, "path": path,
                "body": "{\"Content\":\"hi\"}",
                "env": [["WX_Content", "hi"], ["LD_PRELOAD", "x"], ["WX_", "y"]],
                "to_user": "oU", "from_user": "gh", "text_max_bytes": 2048, "max_articles": 8,
                "message": "m1", "is_event": false, "fallback": null,
            }))
            .unwrap()
        };
        let job = hub
            .rebuild(&config, &record("ask", "/msg/text"))
            .expect("rebuilt");
        assert_eq!(
            (job.path.as_str(), job.to_user.as_str()),
            ("/msg/text", "oU")
        );
        assert_eq!(job.env, [("WX_Content".to_string(), "hi".to_string())]);
        assert!(job.late.as_ref().is_some_and(|l| l.message == "m1"));
        for (rule, path, why) in [
            ("ask", "/../admin", "not a message or event path"),
            ("ask", "/msg/text?x=1", "not a message or event path"),
            ("ask", "http://evil/", "not a message or event path"),
            ("plain", "/msg/text", "has no rule \"plain\" with `late`"),
            ("gone", "/msg/text", "has no rule \"gone\""),
        ] {
            let err = hub.rebuild(&config, &record(rule, path)).err().expect(path);
            assert!(err.contains(why), "{rule} {path}: {err}");
        }
        assert!(hub.rebuild(&config, b"\xff not json").is_err());
    }

    #[test]
    fn kept_items_read_back_as_the_same_answer() {
        let answers = [
            text("你好 ]]> \"x\""),
            Some(Reply::Image {
                media_id: "M1".into(),
            }),
            Some(Reply::Voice {
                media_id: "V1".into(),
            }),
            Some(Reply::Video {
                media_id: "m".into(),
                title: "t".into(),
                description: "d".into(),
            }),
            Some(Reply::Music {
                title: "t".into(),
                description: "d".into(),
                music_url: "u".into(),
                hq_music_url: "h".into(),
                thumb_media_id: "th".into(),
            }),
            Some(Reply::News {
                articles: vec![article("t", "d", "p", "u")],
            }),
        ];
        for a in answers {
            let item = to_item(&a).expect("item");
            assert_eq!(backend::parse_answer(&item), Ok(a));
        }
        assert_eq!(to_item(&None), None);
    }

    #[test]
    fn customer_service_messages_follow_the_api() {
        let m: Value = serde_json::from_slice(&custom_message("oU", &text("hi")).unwrap()).unwrap();
        assert_eq!(
            m,
            json!({"touser": "oU", "msgtype": "text", "text": {"content": "hi"}})
        );
        let news = Some(Reply::News {
            articles: vec![article("t", "d", "p", "u"), article("t2", "d2", "p2", "u2")],
        });
        let m: Value = serde_json::from_slice(&custom_message("oU", &news).unwrap()).unwrap();
        assert_eq!(
            m,
            json!({"touser": "oU", "msgtype": "news", "news": {"articles": [
                {"title": "t", "description": "d", "url": "u", "picurl": "p"}]}})
        );
        assert_eq!(custom_message("oU", &None), None);
    }

    #[test]
    fn long_text_leaves_room_for_the_hint() {
        let long = "字".repeat(2000); // 6000 bytes
        let hint = "\n（回复任意消息查看后续）";
        let parts = split_answer(text(&long), 2048, hint);
        assert!(parts.len() >= 3);
        let mut joined = String::new();
        for p in &parts {
            let Some(Reply::Text { content }) = p else {
                panic!()
            };
            assert!(content.len() + hint.len() <= 2048);
            joined.push_str(content);
        }
        assert_eq!(joined, long);
        // Short text and other types: one part, unchanged.
        assert_eq!(split_answer(text("hi"), 2048, hint), [text("hi")]);
        let image = Some(Reply::Image {
            media_id: "M".to_string(),
        });
        assert_eq!(split_answer(image.clone(), 10, hint), [image]);
    }
}
