//! Idle exit: a socket-activated process with `idle_exit = N` exits 0 after N idle seconds;
//! the next request waits in the kernel queue of the held socket until a new process (started
//! the way systemd does it: when the socket becomes readable) answers it. Without socket
//! activation the setting is ignored. Every test has a hard timeout ([`watchdog`]).

pub mod common;
use common::*;
use std::time::{Duration, Instant};

const TOKEN: &str = "idletoken";

#[test]
fn idle_process_exits_and_next_request_starts_a_new_one() {
    let _w = watchdog("idle_exit_restart", Duration::from_secs(90));
    let dir = TempDir::new("idle");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "idle", "idle_exit = 1")).unwrap();
    let nginx = Nginx::start(&held.path, false);

    let mut p = spawn_on(&held, &config, &dir.join("p0.log"));
    assert_eq!(nginx_text(nginx.port, TOKEN, "one").unwrap(), "idle: one");
    let last = Instant::now();
    let st = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits when idle");
    let idle = last.elapsed();
    assert!(st.success(), "{st:?}\n{}", p.stderr());
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "exited after {idle:?} idle, want ~1 s"
    );
    assert!(
        p.stderr().contains("idle for 1s: exiting"),
        "{}",
        p.stderr()
    );
    println!(
        "idle exit after {:.0} ms without requests",
        idle.as_secs_f64() * 1000.0
    );

    let mut latencies = Vec::new();
    for round in 1..=3 {
        // Nothing serves the socket now; the request waits in the accept queue.
        let port = nginx.port;
        let text = format!("again{round}");
        let t0 = Instant::now();
        let client = std::thread::spawn(move || nginx_text(port, TOKEN, &text));
        // systemd's part: the socket becomes readable, start the service.
        assert!(
            held.pending(Duration::from_secs(10)),
            "no pending connection"
        );
        let mut next = spawn_on(&held, &config, &dir.join(&format!("p{round}.log")));
        let reply = client.join().unwrap();
        let latency = t0.elapsed();
        assert_eq!(reply.as_deref(), Ok(format!("idle: again{round}").as_str()));
        latencies.push(latency);
        let st = next
            .wait_exit(Duration::from_secs(10))
            .expect("exits when idle again");
        assert!(st.success(), "{st:?}\n{}", next.stderr());
    }
    println!(
        "first-request latency after idle exit (process start on demand, through nginx): {:?}",
        latencies
            .iter()
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
    );
    assert!(latencies.iter().all(|d| *d < Duration::from_secs(2)));
}

#[test]
fn idle_exit_does_not_fire_while_requests_keep_coming() {
    let _w = watchdog("idle_exit_busy", Duration::from_secs(60));
    let dir = TempDir::new("idlebusy");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "busy", "idle_exit = 1")).unwrap();
    let mut p = spawn_on(&held, &config, &dir.join("p.log"));
    // A request every 300 ms for 3 s: never idle for 1 s, so the process stays.
    for i in 0..10 {
        let (status, content) = fcgi_text(&held.path, TOKEN, &format!("{i}")).unwrap();
        assert_eq!((status, content), (200, format!("busy: {i}")));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        p.alive(),
        "exited while requests kept coming:\n{}",
        p.stderr()
    );
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn idle_exit_is_ignored_without_socket_activation() {
    let _w = watchdog("idle_exit_ignored", Duration::from_secs(60));
    let mut r = Responder::start(&prefix_config(TOKEN, "bound", "idle_exit = 1"));
    let (status, content) = fcgi_text(&r.socket, TOKEN, "x").unwrap();
    assert_eq!((status, content.as_str()), (200, "bound: x"));
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        r.alive(),
        "a process that bound its own socket must not idle-exit:\n{}",
        r.stderr()
    );
    let (status, _) = fcgi_text(&r.socket, TOKEN, "y").unwrap();
    assert_eq!(status, 200);
    r.term();
    assert!(wait_for(Duration::from_secs(10), || !r.alive()));
}

#[test]
fn a_reload_can_turn_idle_exit_on() {
    let _w = watchdog("idle_exit_reload", Duration::from_secs(60));
    let dir = TempDir::new("idle-reload");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "r", "")).unwrap();
    let mut p = spawn_on(&held, &config, &dir.join("p.log"));
    assert!(wait_for(Duration::from_secs(10), || p
        .stderr()
        .contains("serving on")));
    assert_eq!(
        fcgi_text(&held.path, TOKEN, "x").unwrap(),
        (200, "r: x".into())
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(p.alive(), "exited without idle_exit:\n{}", p.stderr());
    std::fs::write(&config, prefix_config(TOKEN, "r", "idle_exit = 1")).unwrap();
    p.hup();
    let st = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the reload turned idle_exit on");
    assert!(st.success(), "{st:?}\n{}", p.stderr());
    let log = p.stderr();
    assert!(log.contains("SIGHUP: reloaded"), "{log}");
    assert!(log.contains("idle for 1s: exiting"), "{log}");
    assert!(
        !log.contains("until a restart"),
        "idle_exit needs no restart:\n{log}"
    );
}
