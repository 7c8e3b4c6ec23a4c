//! The FastCGI handler: routes a request to its account by exact path, verifies WeChat's
//! signature, decrypts safe-mode bodies, runs the account's rules and renders the reply.
//!
//! Status codes: 200 reply (or `success`), 400 unparsable body or ciphertext, 403 wrong or
//! missing signature / stale timestamp / plaintext refused, 404 unknown path, 405 other methods.
//! The transport answers 413 for bodies over `max_body` before this runs.

use crate::config::{Account, Config};
use crate::fastcgi::{Handler, Outcome, Pending, Request, Response, ServerHandle};
use crate::forward::{self, Forwarder};
use crate::logger::{Bursts, LogValue};
use crate::query;
use crate::replay::{ReplayCache, SignedPost};
use crate::rules::{self, Action};
use crate::state::{MemoryStore, Store};
use crate::status::{self, AccountCounters, Format, Metrics, Snapshot};
use crate::wechat::crypto::{self, AesKey};
use crate::wechat::message::Message;
use crate::wechat::reply::{self, Envelope, Limits};
use crate::wechat::{Sealer, TEXT, XML, signature, unix_time};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The WeChat callback application. The config can be swapped atomically (SIGHUP): each
/// request takes one snapshot and uses it throughout.
pub struct App {
    config: RwLock<Arc<Config>>,
    /// The forward pool and retry table (`forward`/`exec` rules), sized by the first config.
    forwarder: Arc<Forwarder>,
    /// Counters for the status page (`status_path`).
    metrics: Arc<Metrics>,
    /// Unix time of the start, for the status page.
    start_time: u64,
    /// The transport's counters (connections), once the server runs.
    server: OnceLock<ServerHandle>,
    /// The in-process state store (`state_memory_bytes`): kept answers for retries, ….
    state: Arc<MemoryStore>,
    /// The replay cache and its own store (`replay_cache_bytes`), so a burst of answers
    /// cannot push out replay entries, nor the reverse.
    replay: ReplayCache,
    replay_store: Arc<MemoryStore>,
    /// Refusal lines, a few per reason a minute.
    refusals: Bursts,
    /// `shared_state` (Redis), for its health on the status page.
    shared_state: Option<crate::state::shared::Shared>,
    /// Requests handled, and (requests, store bytes) at the last allocator trim.
    handled: AtomicU64,
    trimmed: Mutex<(u64, usize)>,
}

/// Per-worker scratch space, reused across requests.
#[derive(Default)]
struct Scratch {
    /// Rendered template values.
    text: String,
    /// Decrypted safe-mode message.
    plain: Vec<u8>,
    /// Reply XML before encryption.
    reply: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// What happened, for the one log line per request.
#[derive(Default)]
struct Outcomes<'a> {
    account: &'a str,
    /// The account's request counters; `None` for a request no account answers.
    counters: Option<&'a AccountCounters>,
    /// Refused as a possible replay (timestamp outside the window, signature reused).
    replay: bool,
    kind: Short,
    event: Short,
    rule: &'a str,
    outcome: &'static str,
    user: u32,
    mode: &'static str,
    /// A `forward`/`exec` rule matched: the request is answered later from this job.
    deferred: Option<Box<forward::Job>>,
    /// A menu OAuth redirect, completed later from this job.
    oauth: Option<Box<forward::oauth::OAuthJob>>,
}

impl App {
    pub fn new(config: Config) -> App {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(MemoryStore::new(config.state_memory_bytes));
        let replay_store = Arc::new(MemoryStore::new(config.replay_cache_bytes));
        // With `shared_state` the retry table (claims and answers), the replay cache and late
        // answers' claims are in Redis, shared with the other instances; each falls back to
        // its own bounded local store while Redis is unavailable.
        let shared = crate::state::shared::Shared::open(config.shared_state.as_deref());
        let backed = |local: &Arc<MemoryStore>| -> Arc<dyn Store> {
            match &shared {
                Some(shared) => shared.with_fallback(Arc::clone(local) as Arc<dyn Store>),
                None => Arc::clone(local) as Arc<dyn Store>,
            }
        };
        let retry_store = backed(&state);
        let replay = match &shared {
            Some(_) => ReplayCache::shared(backed(&replay_store)),
            None => ReplayCache::local(config.replay_cache_bytes),
        };
        let forwarder = Arc::new(Forwarder::new(
            config.forward,
            config.late.clone(),
            retry_store,
            Arc::clone(&metrics),
            shared.clone(),
        ));
        // Late backend calls the previous process saved at stop are made again.
        forwarder.resume(&config);
        App {
            forwarder,
            shared_state: shared,
            refusals: Bursts::default(),
            config: RwLock::new(Arc::new(config)),
            metrics,
            start_time: unix_time(),
            server: OnceLock::new(),
            replay,
            replay_store,
            state,
            handled: AtomicU64::new(0),
            trimmed: Mutex::new((0, 0)),
        }
    }

    /// Housekeeping, called about once a second: drops expired entries, and when the process
    /// is `idle` after serving (or after its tables shrank) gives freed memory back to the OS,
    /// so RSS returns near its idle figure after a burst.
    pub fn maintain(&self, idle: bool) {
        for (reason, n) in self.refusals.flush(Instant::now()) {
            crate::log_warn!(
                "refused reason=\"{reason}\" similar_left_out={n} (refusals beyond the first {} \
                 of a reason a minute are counted, not logged)",
                Bursts::BURST
            );
        }
        self.state.sweep();
        self.replay_store.sweep();
        self.replay.sweep();
        let handled = self.handled.load(Ordering::Relaxed);
        let bytes = self.state.bytes() + self.replay_store.bytes() + self.replay.bytes();
        let mut last = self.trimmed.lock().unwrap_or_else(|p| p.into_inner());
        if idle && (handled != last.0 || bytes < last.1) {
            crate::allocator::trim();
            last.0 = handled;
        }
        last.1 = bytes;
    }

    /// Gives the status page the running server's connection counters.
    pub fn attach_server(&self, server: ServerHandle) {
        let _ = self.server.set(server);
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// True while backend work runs that no open request waits for (late answers).
    pub fn working(&self) -> bool {
        self.forwarder.working()
    }

    /// How many of those are running (backend calls, programs, pushes).
    pub fn unfinished(&self) -> usize {
        self.forwarder.unfinished()
    }

    /// Saves state that must outlive the process (kept late answers).
    pub fn flush(&self) {
        self.forwarder.flush();
    }

    /// Replaces the config; requests already running keep the one they started with. The
    /// request counters of accounts that keep their name carry over.
    pub fn replace(&self, mut config: Config) {
        let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
        config.keep_counters(&current);
        *current = Arc::new(config);
    }

    /// The status page: plain text, `?json` or `?openmetrics`. GET (and HEAD) only; no
    /// signature (nginx's location lets only 127.0.0.1 in); not counted as a request.
    fn status_page(&self, config: &Config, request: &Request<'_>, response: &mut Response) {
        if !matches!(
            request.param("REQUEST_METHOD").unwrap_or(b""),
            b"GET" | b"HEAD"
        ) {
            response.plain(405, "method not allowed (GET only)\n");
            return;
        }
        let format = Format::from_query(request.param("QUERY_STRING").unwrap_or(b""));
        let accounts = (config.accounts.iter()).map(|a| (a.name.as_str(), &*a.counters));
        let mut snapshot = Snapshot::read(&self.metrics, accounts);
        snapshot.version = env!("CARGO_PKG_VERSION");
        snapshot.start_time = self.start_time;
        snapshot.now = unix_time();
        snapshot.resident_bytes = status::resident_bytes();
        if let Some(server) = self.server.get() {
            let stats = server.stats();
            snapshot.open_conns = stats.open_conns as u64;
            snapshot.max_conns = stats.max_conns as u64;
            snapshot.max_conns_reached = stats.max_conns_reached;
            snapshot.in_flight = stats.in_flight as u64;
        }
        // The retry table: attempts in flight, and the answers kept in the state store.
        let entries = self.forwarder.retry_in_flight() + self.state.len();
        (snapshot.retry_entries, snapshot.retry_bytes) =
            (entries as u64, self.state.bytes() as u64);
        snapshot.shared_state_up = self.shared_state.as_ref().map(|s| !s.degraded());
        let mut text = String::new();
        status::render(&snapshot, format, &mut text);
        response.set_content_type(format.content_type());
        response.body.extend_from_slice(text.as_bytes());
    }
}

impl Handler for App {
    fn handle(&self, request: &Request<'_>, response: &mut Response) -> Outcome {
        let started = Instant::now();
        self.handled.fetch_add(1, Ordering::Relaxed);
        let config = self.config();
        // Looked up once: the param search is a good part of a request's cost.
        let path = path(request);
        if config.status_path.as_deref() == Some(path) {
            self.status_page(&config, request, response);
            return Outcome::Done;
        }
        let mut log = Outcomes {
            mode: "plain",
            ..Outcomes::default()
        };
        let result = serve(&config, &self.replay, path, request, response, &mut log);
        // Menu OAuth is admitted (rate limit, own pool) before anything is logged: a refused
        // GET costs no outbound call and no line of its own (the pool logs a throttled summary).
        let mut admitted = None;
        if let Some(job) = &log.oauth {
            match self.forwarder.oauth.admit(&job.account) {
                Ok(a) => admitted = Some(a),
                Err(refusal) => {
                    fill(response, refusal.answer());
                    if let Some(counters) = log.counters {
                        counters.count(response.status());
                    }
                    self.metrics.request(status::Reply::Refused, 0);
                    return Outcome::Done;
                }
            }
        }
        let micros = started.elapsed().as_micros();
        match log.counters {
            Some(counters) => counters.count(response.status()),
            None => self.metrics.unrouted.count(response.status()),
        }
        let reply = match (&result, log.outcome) {
            (Err(_), _) => status::Reply::Refused,
            (Ok(()), "reply") => status::Reply::Reply,
            (Ok(()), "echo") => status::Reply::Verify,
            (Ok(()), "forward") => status::Reply::Forward,
            (Ok(()), "oauth") => status::Reply::OAuth,
            (Ok(()), _) => status::Reply::Success,
        };
        self.metrics.request(reply, micros as u64);
        if log.replay {
            self.metrics.replay_reject();
        }
        match result {
            Ok(()) => crate::log_info!(
                "request account={} mode={} type={} event={} rule={} outcome={} status={} user={:08x} us={}",
                log.account,
                log.mode,
                LogValue(or_dash(log.kind.as_str())),
                LogValue(or_dash(log.event.as_str())),
                or_dash(log.rule),
                log.outcome,
                response.status(),
                log.user,
                micros
            ),
            // A flood of refusals (a scanner, an attacker without the token) writes the first
            // few lines of each reason a minute and counts the rest.
            Err(reason) => {
                if let Some(left_out) = self.refusals.hit(reason, started) {
                    crate::log_warn!(
                        "refused account={} status={} reason=\"{}\" us={}{}",
                        or_dash(log.account),
                        response.status(),
                        reason,
                        micros,
                        LeftOut(left_out)
                    );
                }
            }
        }
        let forwarder = Arc::clone(&self.forwarder);
        match (log.deferred.take(), log.oauth.take().zip(admitted)) {
            (Some(job), _) => Outcome::Later(Box::new(move |pending| {
                forwarder.submit(*job, completion(pending))
            })),
            (None, Some((job, admitted))) => Outcome::Later(Box::new(move |pending| {
                forwarder.submit_oauth(job, admitted, completion(pending))
            })),
            (None, None) => Outcome::Done,
        }
    }
}

/// ` similar_left_out=N` after a refusal line when N earlier ones were not logged.
struct LeftOut(u64);

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " similar_left_out={n}"),
        }
    }
}

/// Sends a forwarded request's answer on its deferred FastCGI request. Dropped unanswered, the
/// `Pending` answers 500 itself.
fn completion(pending: Pending) -> forward::Complete {
    Box::new(move |answer: forward::Answer| pending.finish(|response| fill(response, answer)))
}

/// Puts a forwarded (or refused) request's answer into a FastCGI response.
fn fill(response: &mut Response, answer: forward::Answer) {
    response.set_status(answer.status);
    response.set_content_type(answer.content_type);
    for (name, value) in &answer.headers {
        response.add_header(name, value);
    }
    response.body = answer.body;
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The request path: `DOCUMENT_URI` (nginx), else `SCRIPT_NAME`.
fn path<'r>(request: &'r Request<'_>) -> &'r str {
    request
        .param_str("DOCUMENT_URI")
        .filter(|p| !p.is_empty())
        .or_else(|| request.param_str("SCRIPT_NAME"))
        .unwrap_or("")
}

/// The query parameters of WeChat's callback, in the order `serve` reads them.
pub const CALLBACK_PARAMS: [&str; 6] = [
    "timestamp",
    "nonce",
    "signature",
    "echostr",
    "encrypt_type",
    "msg_signature",
];

/// Fills `response`; `Err` carries the reason of a refusal (already set as the response).
fn serve<'c>(
    config: &'c Config,
    replay: &ReplayCache,
    path: &str,
    request: &Request<'_>,
    response: &mut Response,
    log: &mut Outcomes<'c>,
) -> Result<(), &'static str> {
    let Some(account) = config.account_for_path(path) else {
        if let Some(account) =
            (config.accounts.iter()).find(|a| a.redirect_path.as_deref() == Some(path))
        {
            log.account = &account.name;
            log.counters = Some(&account.counters);
            return oauth_redirect(config, account, request, response, log);
        }
        return refuse(response, 404, "no account at this path");
    };
    log.account = &account.name;
    log.counters = Some(&account.counters);
    let query = request.param("QUERY_STRING").unwrap_or(b"");
    let [
        timestamp,
        nonce,
        signature,
        echostr,
        encrypt_type,
        msg_signature,
    ] = query::get_all(query, CALLBACK_PARAMS);
    let (timestamp, nonce, signature) = (
        timestamp.unwrap_or_default(),
        nonce.unwrap_or_default(),
        signature.unwrap_or_default(),
    );
    let token = account.token.expose().as_bytes();
    let signed = signature::verify(token, &timestamp, &nonce, &signature);
    match request.param("REQUEST_METHOD").unwrap_or(b"") {
        b"GET" => {
            log.kind.set("verify");
            if !signed {
                return refuse(response, 403, "signature mismatch");
            }
            if !timestamp_fresh(&timestamp, config.timestamp_window) {
                log.replay = true;
                return refuse(response, 403, "timestamp outside timestamp_window");
            }
            let Some(echostr) = echostr else {
                return refuse(response, 400, "GET without echostr");
            };
            if !echostr_is_token(&echostr) {
                return refuse(response, 400, "echostr is not a short token");
            }
            response.set_content_type(TEXT);
            response.body.extend_from_slice(&echostr);
            log.outcome = "echo";
            Ok(())
        }
        b"POST" => {
            if !signed {
                return refuse(response, 403, "signature mismatch");
            }
            if !timestamp_fresh(&timestamp, config.timestamp_window) {
                log.replay = true;
                return refuse(response, 403, "timestamp outside timestamp_window");
            }
            // The signature does not cover a plaintext body: it may be used once per body,
            // within the window (`timestamp_window = 0` turns replay protection off).
            if config.timestamp_window > 0 {
                let retry_period = match config.forward.dedup_seconds {
                    0 => crate::replay::RETRY_PERIOD_WITHOUT_DEDUP,
                    s => Duration::from_secs(s),
                };
                let post = SignedPost {
                    account: &account.name,
                    token,
                    timestamp: &timestamp,
                    signature: &signature,
                    body: request.body,
                };
                let verdict = replay.check(&post, config.timestamp_window, retry_period);
                if let Some(reason) = verdict.reason() {
                    log.replay = true;
                    return refuse(response, 403, reason);
                }
            }
            let encrypted = encrypt_type.as_deref() == Some(b"aes");
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let scratch = &mut *scratch;
                if encrypted {
                    log.mode = "aes";
                    let msg_signature = msg_signature.unwrap_or_default();
                    let ctx = SafeRequest {
                        timestamp: &timestamp,
                        nonce: &nonce,
                        msg_signature: &msg_signature,
                    };
                    post_encrypted(config, account, &ctx, request.body, response, scratch, log)
                } else {
                    if account.encrypted_only {
                        return refuse(response, 403, "plaintext POST refused (encrypted_only)");
                    }
                    post_plain(config, account, request.body, response, scratch, log)
                }
            })
        }
        _ => refuse(response, 405, "method not allowed (GET and POST only)"),
    }
}

/// A GET from WeChat's OAuth redirect (`code`, `state`): completed on a forward thread.
fn oauth_redirect<'c>(
    config: &'c Config,
    account: &'c Account,
    request: &Request<'_>,
    response: &mut Response,
    log: &mut Outcomes<'c>,
) -> Result<(), &'static str> {
    log.kind.set("oauth");
    if request.param("REQUEST_METHOD") != Some(b"GET") {
        return refuse(response, 405, "method not allowed (GET only)");
    }
    let query = request.param("QUERY_STRING").unwrap_or(b"");
    let text =
        |name: &str| query::get(query, name).map(|v| String::from_utf8_lossy(&v).into_owned());
    let Some(code) = text("code").filter(|c| !c.is_empty()) else {
        return refuse(response, 400, "OAuth redirect without code");
    };
    if !oauth_code_well_formed(&code) {
        return refuse(response, 400, "OAuth code is not a short token");
    }
    let (Some(app_id), Some(secret)) = (&account.app_id, &account.app_secret) else {
        return refuse(response, 404, "menu OAuth not configured");
    };
    let target = match (&account.menu_handler, &account.redirect_url) {
        (Some(handler), _) => forward::oauth::Target::MenuHandler(handler.clone()),
        (None, Some(url)) => forward::oauth::Target::RedirectUrl(url.clone()),
        (None, None) => return refuse(response, 404, "menu OAuth not configured"),
    };
    log.oauth = Some(Box::new(forward::oauth::OAuthJob {
        account: account.name.clone(),
        api_base: config.api_base.clone(),
        app_id: app_id.clone(),
        app_secret: secret.expose().to_string(),
        target,
        code,
        state: text("state").unwrap_or_default(),
        browser: browser(request),
        user_info: forward::userinfo::Credentials::for_account(config, account),
    }));
    log.outcome = "oauth";
    Ok(())
}

/// What the browser sent, bounded: request headers from the `HTTP_*` parameters.
fn browser(request: &Request<'_>) -> forward::oauth::Browser {
    use forward::oauth::{MAX_BROWSER_HEADER_BYTES, MAX_BROWSER_HEADERS};
    let lossy = |name: &str| {
        request
            .param(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut headers = Vec::new();
    let mut bytes = 0;
    for (name, value) in request.params() {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        let Some(header) = forward::headers::from_cgi_name(name) else {
            continue;
        };
        bytes += header.len() + value.len();
        if headers.len() >= MAX_BROWSER_HEADERS || bytes > MAX_BROWSER_HEADER_BYTES {
            break;
        }
        headers.push((header, value.to_string()));
    }
    forward::oauth::Browser {
        request_uri: lossy("REQUEST_URI"),
        headers,
        remote_addr: lossy("REMOTE_ADDR"),
        https: request
            .param("HTTPS")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"on")),
    }
}

/// Every message and event WeChat pushes to an Official Account names its type, the user and
/// the account. A body without them (a payment notification, an open-platform push, broken
/// input) is not something the rules can answer: a reply would go to nobody.
fn user_message(msg: &Message<'_>) -> Result<(), &'static str> {
    let present = |name| msg.get(name).is_some_and(|v| !v.trim().is_empty());
    if !present("MsgType") {
        Err("message without MsgType (not a user message or event)")
    } else if !present("FromUserName") || !present("ToUserName") {
        Err("message without FromUserName or ToUserName (not a user message or event)")
    } else {
        Ok(())
    }
}

/// Longest `echostr` echoed back (WeChat sends a decimal number of up to 20 digits).
const MAX_ECHOSTR: usize = 128;

/// `echostr` is reflected into the response body, so only a short token is: 1 to
/// [`MAX_ECHOSTR`] ASCII letters, digits, `-`, `_`, `.` or `~` — no markup, quotes or spaces.
fn echostr_is_token(echostr: &[u8]) -> bool {
    !echostr.is_empty()
        && echostr.len() <= MAX_ECHOSTR
        && echostr
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// WeChat's OAuth codes are 32 letters and digits; anything far from that is refused before it
/// costs an outbound call.
fn oauth_code_well_formed(code: &str) -> bool {
    code.len() <= 128
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn refuse(response: &mut Response, status: u16, reason: &'static str) -> Result<(), &'static str> {
    response.plain(status, reason);
    response.body.push(b'\n');
    Err(reason)
}

fn timestamp_fresh(timestamp: &[u8], window: u64) -> bool {
    if window == 0 {
        return true;
    }
    let Some(ts) = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    unix_time().abs_diff(ts) <= window
}

fn post_plain<'c>(
    config: &'c Config,
    account: &'c Account,
    body: &[u8],
    response: &mut Response,
    scratch: &mut Scratch,
    log: &mut Outcomes<'c>,
) -> Result<(), &'static str> {
    let msg = match Message::parse(body) {
        Ok(m) => m,
        Err(e) => return refuse(response, 400, e.as_str()),
    };
    if let Err(reason) = user_message(&msg) {
        return refuse(response, 400, reason);
    }
    let replied = answer(
        config,
        account,
        &msg,
        &mut scratch.text,
        &mut response.body,
        log,
    );
    finish(response, replied);
    Ok(())
}

struct SafeRequest<'q> {
    timestamp: &'q [u8],
    nonce: &'q [u8],
    msg_signature: &'q [u8],
}

fn post_encrypted<'c>(
    config: &'c Config,
    account: &'c Account,
    ctx: &SafeRequest<'_>,
    body: &[u8],
    response: &mut Response,
    scratch: &mut Scratch,
    log: &mut Outcomes<'c>,
) -> Result<(), &'static str> {
    let (Some(key), Some(app_id)) = (&account.aes_key, &account.app_id) else {
        return refuse(
            response,
            400,
            "encrypted message but the account has no aes_key/app_id",
        );
    };
    let outer = match Message::parse(body) {
        Ok(m) => m,
        Err(e) => return refuse(response, 400, e.as_str()),
    };
    let Some(encrypt) = outer.get("Encrypt") else {
        return refuse(response, 400, "encrypt_type=aes but no Encrypt element");
    };
    let token = account.token.expose().as_bytes();
    if !signature::verify_msg(
        token,
        ctx.timestamp,
        ctx.nonce,
        encrypt.as_bytes(),
        ctx.msg_signature,
    ) {
        return refuse(response, 403, "msg_signature mismatch");
    }
    let Scratch { text, plain, reply } = scratch;
    // Current key first, then the one before the last rotation; the reply uses the key that worked.
    let mut attempt = |k: &AesKey| {
        crypto::decrypt(k, app_id, encrypt.as_bytes(), config.max_body, plain)
            .map(|m| (m.as_ptr() as usize, m.len()))
    };
    let (key_used, at, len) = match attempt(key) {
        Ok((at, len)) => (key, at, len),
        Err(first) => match account.previous_aes_key.as_ref().map(|p| (p, attempt(p))) {
            Some((previous, Ok((at, len)))) => {
                log.mode = "aes-previous-key";
                (previous, at, len)
            }
            _ => return refuse(response, 400, first.as_str()),
        },
    };
    let offset = at - plain.as_ptr() as usize;
    let Some(inner) = plain.get(offset..offset + len) else {
        return refuse(response, 500, "decrypted message out of range");
    };
    let msg = match Message::parse(inner) {
        Ok(m) => m,
        Err(e) => return refuse(response, 400, e.as_str()),
    };
    if let Err(reason) = user_message(&msg) {
        return refuse(response, 400, reason);
    }
    reply.clear();
    let replied = answer(config, account, &msg, text, reply, log);
    if let Some(job) = &mut log.deferred {
        job.encrypt = Some(forward::Encrypt {
            token: account.token.expose().to_string(),
            key: key_used.clone(),
            app_id: app_id.clone(),
        });
    }
    let sealed = Sealer {
        token,
        key: key_used,
        app_id,
    };
    if write_reply(replied.then_some(&reply[..]), Some(&sealed), response) {
        Ok(())
    } else {
        Err("cannot encrypt the reply")
    }
}

/// Fills `response` with `reply_xml` — encrypted when `seal` is given — or `success` when
/// there is no reply. Returns false (and answers 500) when the reply cannot be encrypted,
/// which only happens when the OS gives no randomness.
fn write_reply(
    reply_xml: Option<&[u8]>,
    seal: Option<&Sealer<'_>>,
    response: &mut Response,
) -> bool {
    match crate::wechat::write_answer(reply_xml, seal, &mut response.body) {
        Ok(content_type) => {
            response.set_content_type(content_type);
            true
        }
        Err(e) => {
            crate::log_error!("cannot encrypt the reply (no OS randomness?): {e}");
            response.plain(500, "cannot encrypt the reply\n");
            false
        }
    }
}

/// Sets the content type for a rendered reply, or the literal `success` for no reply.
fn finish(response: &mut Response, replied: bool) {
    if replied {
        response.set_content_type(XML);
    } else {
        response.body.clear();
        response.body.extend_from_slice(reply::NO_REPLY);
        response.set_content_type(TEXT);
    }
}

/// Runs the rules for `msg` and renders the reply into `out`. Returns false for no reply.
fn answer<'c>(
    config: &'c Config,
    account: &'c Account,
    msg: &Message<'_>,
    text: &mut String,
    out: &mut Vec<u8>,
    log: &mut Outcomes<'c>,
) -> bool {
    log.user = short_hash(msg.from_user().as_bytes());
    log.kind.set(msg.msg_type());
    log.event.set(msg.event());
    if crate::logger::enabled(crate::logger::LogLevel::Debug) {
        crate::log_debug!(
            "message account={} from={} type={} event={} content={:?}",
            account.name,
            LogValue(msg.from_user()),
            LogValue(msg.msg_type()),
            LogValue(msg.event()),
            msg.get("Content").unwrap_or("")
        );
    }
    let Some(rule) = rules::find_rule(&account.rules, msg) else {
        log.outcome = "no-rule";
        crate::log_debug!(
            "no rule matched in account {}; answering success",
            account.name
        );
        return false;
    };
    log.rule = &rule.name;
    match &rule.action {
        Action::NoReply => {
            log.outcome = "no-reply";
            false
        }
        Action::Reply(template) => {
            let envelope = Envelope {
                to_user: msg.from_user(),
                from_user: msg.to_user(),
                create_time: unix_time(),
            };
            let limits = Limits {
                text_max_bytes: config.text_max_bytes,
                max_articles: if msg.is_event() {
                    reply::MAX_ARTICLES_FOR_EVENT
                } else {
                    reply::MAX_ARTICLES_FOR_MESSAGE
                },
            };
            template.render(msg, &envelope, &limits, text, out);
            log.outcome = "reply";
            true
        }
        Action::Forward(fw) => {
            let limits = limits_for(config, msg);
            let fallback = fw.fallback.as_ref().map(|template| {
                let envelope = Envelope {
                    to_user: msg.from_user(),
                    from_user: msg.to_user(),
                    create_time: unix_time(),
                };
                let mut xml = Vec::new();
                template.render(msg, &envelope, &limits, text, &mut xml);
                xml
            });
            let dedup = config.forward.dedup_seconds > 0;
            let mut job =
                forward::Job::new(fw, &account.name, &rule.name, msg, limits, fallback, dedup);
            job.with_late(msg, account, &config.api_base, config.text_max_bytes);
            if matches!(fw.target, rules::Target::Http { .. }) {
                job.user_info = forward::userinfo::Credentials::for_account(config, account);
            }
            log.deferred = Some(Box::new(job));
            log.outcome = "forward";
            false
        }
    }
}

fn limits_for(config: &Config, msg: &Message<'_>) -> Limits {
    Limits {
        text_max_bytes: config.text_max_bytes,
        max_articles: if msg.is_event() {
            reply::MAX_ARTICLES_FOR_EVENT
        } else {
            reply::MAX_ARTICLES_FOR_MESSAGE
        },
    }
}

/// A short, non-reversible-at-a-glance id for correlating one user's requests in logs
/// without logging the OpenID itself (FNV-1a, 32 bits).
fn short_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// A short copy of a message field for the log line (cut at 32 bytes on a char boundary),
/// so the log does not borrow the request body.
#[derive(Default)]
struct Short {
    buf: [u8; 32],
    len: usize,
}

impl Short {
    fn set(&mut self, s: &str) {
        let s = reply::truncate_utf8(s, self.buf.len());
        self.buf[..s.len()].copy_from_slice(s.as_bytes());
        self.len = s.len();
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}
