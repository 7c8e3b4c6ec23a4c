//! Zero-loss restarts: the harness holds the listening socket as systemd does and starts
//! successive responder processes on it (fd 3, LISTEN_FDS/LISTEN_PID) while a steady, bounded
//! load goes through a real nginx. Each old process gets SIGTERM and must exit 0; no request
//! may fail. Every test has a hard timeout ([`watchdog`]).

pub mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "restarttoken";
const CLIENTS: usize = 4;
const RESTARTS: usize = 4;

/// When the next process starts relative to the old one's exit.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Right after SIGTERM, while the old one may still be finishing (overlap).
    Overlap,
    /// Only after the old one exited, as systemd restarts a service; the kernel queues
    /// connections on the held socket in between.
    AfterExit,
}

fn restart_under_load(keepalive: bool, order: Order) {
    let dir = TempDir::new("restart");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "r", "")).unwrap();
    // With keepalive, nginx sends a request on a cached connection at any moment; if the old
    // process closes that idle connection at the same instant (as it must to exit), the POST
    // fails after nginx considers it sent, and nginx does not retry a POST by default
    // (non-idempotent). WeChat already retries each message three times, so replies must be
    // idempotent anyway: allowing nginx to retry makes this race lossless, and
    // nginx/weixin.conf (included verbatim) says so with `fastcgi_next_upstream … non_idempotent`.
    let nginx = Nginx::start(&held.path, keepalive);
    let mut current = spawn_on(&held, &config, &dir.join("p0.log"));

    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let port = nginx.port;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (running, ok, failures) = (running.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while running.load(Ordering::Relaxed) && i < 100_000 {
                    let text = format!("c{c}-{i}");
                    match nginx_text(port, TOKEN, &text) {
                        Ok(reply) if reply == format!("r: {text}") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(reply) => failures.lock().unwrap().push(format!("{text}: {reply}")),
                        Err(e) => failures.lock().unwrap().push(format!("{text}: {e}")),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut gaps = Vec::new();
    for n in 1..=RESTARTS {
        std::thread::sleep(Duration::from_millis(1200));
        current.term();
        let t0 = Instant::now();
        let mut old = match order {
            Order::Overlap => {
                let next = spawn_on(&held, &config, &dir.join(&format!("p{n}.log")));
                std::mem::replace(&mut current, next)
            }
            Order::AfterExit => {
                let st = current.wait_exit(Duration::from_secs(15));
                assert!(st.is_some(), "old process did not exit within 15 s");
                let next = spawn_on(&held, &config, &dir.join(&format!("p{n}.log")));
                std::mem::replace(&mut current, next)
            }
        };
        let st = old
            .wait_exit(Duration::from_secs(15))
            .expect("old process exits after SIGTERM");
        gaps.push(t0.elapsed());
        assert!(
            st.success(),
            "restart {n}: old process exited with {st:?}; stderr:\n{}",
            old.stderr()
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    println!(
        "keepalive={keepalive} order={order:?}: {served} ok, {} failed, {RESTARTS} restarts in \
         {:.1} s; old-process exit after SIGTERM: {:?}",
        failures.len(),
        started.elapsed().as_secs_f64(),
        gaps
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across restarts, first: {:?}\nnginx error.log:\n{}\nstderr of \
         the last process:\n{}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)],
        nginx.error_log(),
        current.stderr()
    );
    assert!(served > 100, "load too small to mean anything: {served}");
    current.term();
    assert!(
        current
            .wait_exit(Duration::from_secs(15))
            .unwrap()
            .success()
    );
}

#[test]
fn zero_loss_restart_without_keepalive_after_exit() {
    let _w = watchdog("restart_nokeep_after", Duration::from_secs(90));
    restart_under_load(false, Order::AfterExit);
}

#[test]
fn zero_loss_restart_without_keepalive_overlap() {
    let _w = watchdog("restart_nokeep_overlap", Duration::from_secs(90));
    restart_under_load(false, Order::Overlap);
}

#[test]
fn zero_loss_restart_with_keepalive_after_exit() {
    let _w = watchdog("restart_keep_after", Duration::from_secs(90));
    restart_under_load(true, Order::AfterExit);
}

#[test]
fn zero_loss_restart_with_keepalive_overlap() {
    let _w = watchdog("restart_keep_overlap", Duration::from_secs(90));
    restart_under_load(true, Order::Overlap);
}
