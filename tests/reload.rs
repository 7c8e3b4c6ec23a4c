//! SIGHUP re-reads the config: the next request gets the new rules; a broken file keeps the
//! old config and logs `FILE:LINE`; under load through nginx, reloads never fail a request and
//! never mix two configs in one reply. Every test has a hard timeout ([`watchdog`]).

pub mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const TOKEN: &str = "reloadtoken";

fn start(prefix: &str) -> (TempDir, HeldSocket, std::path::PathBuf, Proc) {
    let dir = TempDir::new("reload");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, prefix, "")).unwrap();
    let p = spawn_on(&held, &config, &dir.join("stderr.log"));
    // Signal handlers are installed before this line; a SIGHUP earlier would kill the process
    // (default action), as it would under systemd before READY=1.
    assert!(
        wait_for(Duration::from_secs(10), || p
            .stderr()
            .contains("serving on")),
        "{}",
        p.stderr()
    );
    (dir, held, config, p)
}

/// Sends SIGHUP and waits until the log shows `count` reload outcomes.
fn hup_and_wait(p: &Proc, needle: &str, count: usize) {
    p.hup();
    assert!(
        wait_for(Duration::from_secs(10), || p
            .stderr()
            .matches(needle)
            .count()
            >= count),
        "no {needle:?} #{count} after SIGHUP; stderr:\n{}",
        p.stderr()
    );
}

#[test]
fn sighup_with_changed_config_changes_the_next_reply() {
    let _w = watchdog("sighup_changed", Duration::from_secs(60));
    let (_dir, held, config, mut p) = start("old");
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "a").unwrap(),
        (200, "old: a".into())
    );
    std::fs::write(&config, prefix_config(TOKEN, "new", "")).unwrap();
    hup_and_wait(&p, "SIGHUP: reloaded", 1);
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "b").unwrap(),
        (200, "new: b".into())
    );
    assert!(p.alive());
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn sighup_with_broken_config_keeps_the_old_one_and_logs_file_and_line() {
    let _w = watchdog("sighup_broken", Duration::from_secs(60));
    let (_dir, held, config, mut p) = start("kept");
    // The reply has an unknown type.
    let broken =
        prefix_config(TOKEN, "never", "").replace("{ type = \"text\"", "{ type = \"txet\"");
    let line = broken.lines().position(|l| l.contains("txet")).unwrap() + 1;
    std::fs::write(&config, &broken).unwrap();
    hup_and_wait(&p, "SIGHUP: keeping the old config", 1);
    let err = p.stderr();
    let logged = err
        .lines()
        .find(|l| l.contains("SIGHUP: keeping the old config"))
        .unwrap();
    assert!(
        logged.contains(&format!("{}:{line}", config.display())),
        "error must name {}:{line}: {logged}",
        config.display()
    );
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "c").unwrap(),
        (200, "kept: c".into())
    );

    // Syntax error: same.
    std::fs::write(&config, "workers = 2\n[[account]\nname = \"x\"\n").unwrap();
    hup_and_wait(&p, "SIGHUP: keeping the old config", 2);
    let err = p.stderr();
    let logged = err
        .lines()
        .filter(|l| l.contains("SIGHUP: keeping the old config"))
        .nth(1)
        .unwrap();
    assert!(
        logged.contains(&format!("{}:2", config.display())),
        "{logged}"
    );
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "d").unwrap(),
        (200, "kept: d".into())
    );

    // Unreadable (removed) file: old config stays, error names the file.
    std::fs::remove_file(&config).unwrap();
    hup_and_wait(&p, "SIGHUP: keeping the old config", 3);
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "e").unwrap(),
        (200, "kept: e".into())
    );
    assert!(p.alive());
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn reloads_under_load_never_fail_or_mix() {
    let _w = watchdog("reload_load", Duration::from_secs(90));
    for keepalive in [false, true] {
        let (dir, held, config, mut p) = start("A");
        let nginx = Nginx::start(&held.path, keepalive);
        let running = Arc::new(AtomicBool::new(true));
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let port = nginx.port;
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (running, counts, bad) = (running.clone(), counts.clone(), bad.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while running.load(Ordering::Relaxed) && i < 100_000 {
                        let text = format!("c{c}-{i}");
                        match nginx_text(port, TOKEN, &text) {
                            Ok(r) if r == format!("A: {text}") => {
                                counts[0].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) if r == format!("B: {text}") => {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => bad.lock().unwrap().push(format!("{text}: mixed {r:?}")),
                            Err(e) => bad.lock().unwrap().push(format!("{text}: {e}")),
                        }
                        i += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        let configs = [prefix_config(TOKEN, "A", ""), prefix_config(TOKEN, "B", "")];
        for n in 1..=10 {
            std::thread::sleep(Duration::from_millis(250));
            let tmp = dir.join("c.toml.tmp");
            std::fs::write(&tmp, &configs[n % 2]).unwrap();
            std::fs::rename(&tmp, &config).unwrap();
            p.hup();
        }
        std::thread::sleep(Duration::from_millis(500));
        running.store(false, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let bad = bad.lock().unwrap();
        let (a, b) = (
            counts[0].load(Ordering::Relaxed),
            counts[1].load(Ordering::Relaxed),
        );
        println!(
            "keepalive={keepalive}: 10 reloads, {a} replies from A, {b} from B, {} bad",
            bad.len()
        );
        assert!(
            bad.is_empty(),
            "{} bad replies, first {:?}\nnginx:\n{}",
            bad.len(),
            &bad[..bad.len().min(5)],
            nginx.error_log()
        );
        assert!(
            a > 50 && b > 50,
            "both configs must have answered: A {a}, B {b}"
        );
        assert!(p.alive());
        p.term();
        assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
    }
}

#[test]
fn sighup_names_exactly_the_settings_that_need_a_restart() {
    let _w = watchdog("sighup_restart_keys", Duration::from_secs(60));
    let (_dir, held, config, mut p) = start("keys");
    // Reloadable settings change silently; restart-only ones are named, and the rules still
    // change at once.
    std::fs::write(
        &config,
        prefix_config(
            TOKEN,
            "keys2",
            "max_conns = 9\nio_timeout_ms = 4000\nforward_slots = 2\ntimestamp_window = 100\nidle_exit = 30",
        ),
    )
    .unwrap();
    hup_and_wait(&p, "SIGHUP: reloaded", 1);
    let log = p.stderr();
    let warning = log
        .lines()
        .find(|l| l.contains("until a restart"))
        .unwrap_or_else(|| panic!("no restart warning:\n{log}"));
    assert!(
        warning.contains("SIGHUP: max_conns, io_timeout_ms, forward_slots changed;"),
        "{warning}"
    );
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "c").unwrap(),
        (200, "keys2: c".into())
    );
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).is_some());
}
