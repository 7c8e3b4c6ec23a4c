//! `weixin-fcgi`: serve WeChat Official Account callbacks over FastCGI.
#![deny(clippy::undocumented_unsafe_blocks)]

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weixin_fcgi::app::App;
use weixin_fcgi::config::{Config, DEFAULT_DEMO_TOKEN, RestartSettings};
use weixin_fcgi::fastcgi::{Server, ServerConfig, listen, notify};
use weixin_fcgi::{log_error, log_info, log_warn};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long SIGTERM waits for requests in flight, then for late answers still being computed,
/// before exiting anyway: within the unit's TimeoutStopSec=10s, with time left to save.
const STOP_DEADLINE: Duration = Duration::from_secs(8);

const USAGE: &str = "\
weixin-fcgi — a FastCGI responder for WeChat Official Account callbacks

USAGE:
    weixin-fcgi [--config FILE] [--listen ADDR]   serve
    weixin-fcgi send [OPTIONS] KIND [ARGS…]       play WeChat: send a signed message to a
                                                  responder and show its reply (send --help)
    weixin-fcgi check [--quiet] [--config FILE]   validate a config, summarize it, warn
                                                  (check --help)
    weixin-fcgi status [--to ADDR] [--json|--openmetrics]
                                                  print a running responder's status page
                                                  (status --help)
    weixin-fcgi --help | --version

OPTIONS:
    -c, --config FILE   TOML config (default: the embedded demo config, token from
                        $WEIXIN_TOKEN or \"weixin-fcgi-demo\")
    -l, --listen ADDR   Unix socket path (or unix:PATH) or 127.0.0.1:PORT; overrides the
                        config's `listen`. Ignored when systemd (fd 3) or spawn-fcgi (fd 0)
                        passes a listening socket.
    -h, --help          this text
    -V, --version       the version

SIGNALS:
    SIGTERM, SIGINT     stop accepting, finish requests in flight, exit 0
    SIGHUP              reload the config file; on error keep the old one
";

struct Args {
    config: Option<PathBuf>,
    listen: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        listen: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_str().ok_or("arguments must be UTF-8")?.to_string();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("weixin-fcgi {VERSION}");
                return Ok(None);
            }
            "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "-l" | "--listen" => args.listen = Some(value("--listen")?),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(args))
}

fn load_config(args: &Args) -> Result<Config, String> {
    match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => {
            let token = match std::env::var("WEIXIN_TOKEN") {
                Ok(t) if !t.is_empty() => {
                    weixin_fcgi::config::check_token(&t)
                        .map_err(|e| format!("$WEIXIN_TOKEN: {e}"))?;
                    t
                }
                _ => {
                    log_warn!(
                        "no --config and no $WEIXIN_TOKEN: serving the embedded demo config with \
                         the public default token \"{DEFAULT_DEMO_TOKEN}\" — anyone can sign \
                         requests; set WEIXIN_TOKEN or use --config for a real account"
                    );
                    DEFAULT_DEMO_TOKEN.to_string()
                }
            };
            let mut config = Config::embedded(&token);
            if config.listen.is_none() {
                let dir = std::env::var("XDG_RUNTIME_DIR")
                    .ok()
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| ".".to_string());
                config.listen = Some(format!("{dir}/weixin-fcgi.sock"));
            }
            Ok(config)
        }
    }
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread starts.
    let activation = unsafe { listen::take_activation() };
    // Before any thread starts, as mallopt wants.
    weixin_fcgi::allocator::init();
    weixin_fcgi::logger::set_level(Default::default());
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match argv.get(1).map(String::as_str) {
        Some("send") => return weixin_fcgi::cli::send::main(argv.get(2..).unwrap_or_default()),
        Some("check") => return weixin_fcgi::cli::check::main(argv.get(2..).unwrap_or_default()),
        Some("status") => return weixin_fcgi::cli::status::main(argv.get(2..).unwrap_or_default()),
        _ => {}
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weixin-fcgi: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, activation) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log_error!("weixin-fcgi: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, activation: listen::Activation) -> Result<(), String> {
    let mut config = load_config(&args)?;
    default_state_file(&mut config);
    weixin_fcgi::logger::set_level(config.log_level);
    notify::init();
    let listen = args.listen.clone().or_else(|| config.listen.clone());
    let acquired = listen::acquire(activation, listen.as_deref(), config.socket_mode)
        .map_err(|e| e.to_string())?;

    // Signals: flags say which arrived, the pipe wakes the main loop.
    let (mut wake_rx, wake_tx) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT, SIGHUP] {
        let flag = if sig == SIGHUP { &reload } else { &stop };
        signal_hook::flag::register(sig, Arc::clone(flag))
            .and_then(|_| signal_hook::low_level::pipe::register(sig, wake_tx.try_clone()?))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }

    let server_config = ServerConfig {
        workers: config.workers,
        max_conns: config.max_conns,
        max_body: config.max_body,
        max_params: 64 * 1024,
        io_timeout: config.io_timeout,
        idle_timeout: config.conn_idle_timeout,
    };
    // Compared at each SIGHUP: these take effect only after a restart.
    let restart_settings = config.restart_settings();
    let accounts: Vec<String> = config
        .accounts
        .iter()
        .map(|a| format!("{}={}", a.name, a.path))
        .collect();
    let app = Arc::new(App::new(config));
    let server = Server::start(acquired.listener, server_config, Arc::clone(&app))
        .map_err(|e| format!("cannot start workers: {e}"))?;
    let handle = server.handle();
    app.attach_server(handle.clone());
    log_info!(
        "weixin-fcgi {VERSION} serving on {} with {} workers; accounts: {}",
        acquired.description,
        app.config().workers,
        accounts.join(", ")
    );
    notify::notify("READY=1\nSTATUS=serving, 0 requests");

    wake_rx.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let mut last_served = 0;
    let mut sink = [0u8; 64];
    while !stop.load(Ordering::Acquire) {
        let _ = wake_rx.read(&mut sink);
        if reload.swap(false, Ordering::AcqRel) {
            reload_config(&app, args.config.as_ref(), &restart_settings);
        }
        let stats = handle.stats();
        app.maintain(stats.in_flight == 0);
        if stats.served != last_served {
            last_served = stats.served;
            notify::notify(&format!("STATUS=serving, {} requests", stats.served));
        }
        // Read each time: a reload may change it.
        let idle_exit = app.config().idle_exit;
        if acquired.socket_activated && idle_exit > 0 {
            let limit = Duration::from_secs(idle_exit);
            // A late answer still being computed or pushed keeps the process up.
            if stats.in_flight == 0
                && stats.open_conns == 0
                && stats.idle_for >= limit
                && !app.working()
            {
                log_info!(
                    "idle for {}s: exiting (socket activation restarts on demand)",
                    limit.as_secs()
                );
                break;
            }
        }
    }
    notify::notify("STOPPING=1\nSTATUS=stopping");
    let served = handle.stats().served;
    let stopping = Instant::now();
    if !server.stop(STOP_DEADLINE) {
        log_warn!(
            "requests still in flight after {}s; exiting anyway",
            STOP_DEADLINE.as_secs()
        );
    }
    // Late answers still being computed (their users got `pending`) are kept and saved if
    // they come within the same deadline; meanwhile nothing is accepted.
    if app.working() && stopping.elapsed() < STOP_DEADLINE {
        log_info!(
            "stopping: waiting up to {}s for {} late answer(s) still being computed",
            STOP_DEADLINE.saturating_sub(stopping.elapsed()).as_secs(),
            app.unfinished()
        );
        while app.working() && stopping.elapsed() < STOP_DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if app.working() {
        // The late hub says what becomes of them (saved for the next start, or lost).
        log_warn!(
            "stopping with {} backend call(s) or push(es) unfinished after {}s",
            app.unfinished(),
            STOP_DEADLINE.as_secs()
        );
    }
    app.flush();
    if let Some(path) = acquired.created_path {
        let _ = std::fs::remove_file(path);
    }
    log_info!("stopped after {served} requests");
    Ok(())
}

/// Under systemd's `StateDirectory=` the kept late answers go there unless `state_file` says.
fn default_state_file(config: &mut Config) {
    if config.late.state_file.is_none() {
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
            // Several directories are separated by ':'; ours is the first.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            config.late.state_file = Some(PathBuf::from(first).join("late-answers"));
        }
    }
}

fn reload_config(app: &App, path: Option<&PathBuf>, running: &RestartSettings) {
    let Some(path) = path else {
        log_warn!("SIGHUP: nothing to reload (running the embedded config)");
        return;
    };
    match Config::load(path) {
        Ok(mut new) => {
            default_state_file(&mut new);
            let changed = running.changed_keys(&new.restart_settings());
            if !changed.is_empty() {
                log_warn!(
                    "SIGHUP: {} changed; the running values stay until a restart",
                    changed.join(", ")
                );
            }
            weixin_fcgi::logger::set_level(new.log_level);
            let n = new.accounts.len();
            app.replace(new);
            log_info!("SIGHUP: reloaded {} ({n} accounts)", path.display());
        }
        Err(e) => log_error!("SIGHUP: keeping the old config: {e}"),
    }
}
