//! Socket activation for real: `systemd-socket-activate` starts the binary on the first
//! connection with the socket on fd 3; a harness that holds the socket passes it the same way;
//! the failure modes an operator can hit (LISTEN_PID for another process, fd 3 not a socket);
//! the spawn-fcgi convention (fd 0); and the `sd_notify` datagrams systemd's Type=notify uses.
//! Every test has a hard timeout ([`watchdog`]).

pub mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weixin_fcgi::fastcgi::client;

const TOKEN: &str = "activationtoken";

/// A signed URL-verification GET straight over FastCGI; returns (status, body).
fn fcgi_verify(socket: &std::path::Path, token: &str, echostr: &str) -> (u16, String) {
    let ts = now().to_string();
    let sig = sign(&[token, &ts, "n0nce"]);
    let query = format!("signature={sig}&timestamp={ts}&nonce=n0nce&echostr={echostr}");
    let mut conn = client::Connection::connect(socket.to_str().unwrap(), Duration::from_secs(10))
        .expect("connect");
    let params: Vec<(&str, &[u8])> = vec![
        ("REQUEST_METHOD", b"GET"),
        ("DOCUMENT_URI", b"/weixin"),
        ("SCRIPT_NAME", b"/weixin"),
        ("REQUEST_URI", b"/weixin"),
        ("QUERY_STRING", query.as_bytes()),
    ];
    let resp = client::request(&mut conn, 1, &params, b"", false).expect("verify request");
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn systemd_socket_activate_starts_on_first_connection_and_answers() {
    let _w = watchdog("systemd_socket_activate", Duration::from_secs(60));
    require_tool("systemd-socket-activate");
    let dir = TempDir::new("ssa");
    let config = dir.join("weixin-fcgi.toml");
    std::fs::write(&config, prefix_config(TOKEN, "ssa", "")).unwrap();
    let socket = dir.join("weixin.sock");
    let log = dir.join("stderr.log");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("-E")
        .arg(format!("WEIXIN_TOKEN={TOKEN}"))
        .arg(bin())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let mut p = Proc { child, log };
    assert!(
        wait_for(Duration::from_secs(10), || socket.exists()),
        "systemd-socket-activate did not listen; stderr:\n{}",
        p.stderr()
    );
    // Nothing of ours runs before the first connection: the process is still the activator.
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.alive());
    assert!(
        !exe_of(p.pid()).ends_with("weixin-fcgi"),
        "weixin-fcgi started before any connection: {}",
        exe_of(p.pid())
    );
    assert!(!p.stderr().contains("serving on"), "{}", p.stderr());

    let t0 = Instant::now();
    let (status, content) = fcgi_text(&socket, TOKEN, "first").expect("first request");
    let first = t0.elapsed();
    assert_eq!((status, content.as_str()), (200, "ssa: first"));
    println!(
        "first-request latency via systemd-socket-activate: {:.1} ms",
        first.as_secs_f64() * 1000.0
    );
    assert!(
        exe_of(p.pid()).ends_with("weixin-fcgi"),
        "{}",
        exe_of(p.pid())
    );
    let (status, body) = fcgi_verify(&socket, TOKEN, "5837397520665436492");
    assert_eq!((status, body.as_str()), (200, "5837397520665436492"));
    assert!(
        wait_for(Duration::from_secs(5), || p
            .stderr()
            .contains("serving on systemd fd 3")),
        "{}",
        p.stderr()
    );

    p.term();
    let st = p
        .wait_exit(Duration::from_secs(15))
        .expect("exit after SIGTERM");
    assert!(st.success(), "{st:?}\n{}", p.stderr());
}

#[test]
fn systemd_socket_activate_with_token_from_environment() {
    let _w = watchdog("ssa_env_token", Duration::from_secs(60));
    require_tool("systemd-socket-activate");
    let dir = TempDir::new("ssa-env");
    let socket = dir.join("weixin.sock");
    let log = dir.join("stderr.log");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(format!("--setenv=WEIXIN_TOKEN={TOKEN}"))
        .arg(bin())
        .env_remove("WEIXIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let mut p = Proc { child, log };
    assert!(wait_for(Duration::from_secs(10), || socket.exists()));
    let (status, body) = fcgi_verify(&socket, TOKEN, "42");
    assert_eq!((status, body.as_str()), (200, "42"), "{}", p.stderr());
    let (status, _) = fcgi_verify(&socket, "wrongtoken", "42");
    assert_eq!(status, 403);
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn harness_held_socket_on_fd3_is_served() {
    let _w = watchdog("held_fd3", Duration::from_secs(60));
    let dir = TempDir::new("held");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "held", "")).unwrap();
    let mut p = spawn_on(&held, &config, &dir.join("stderr.log"));
    let (status, content) = fcgi_text(&held.path, TOKEN, "x").expect("request");
    assert_eq!((status, content.as_str()), (200, "held: x"));
    assert!(
        wait_for(Duration::from_secs(5), || p
            .stderr()
            .contains("serving on systemd fd 3 (unix)")),
        "{}",
        p.stderr()
    );
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
    // The socket file is systemd's (here: the harness's), not removed by the responder.
    assert!(held.path.exists());
}

#[test]
fn listen_pid_of_another_process_is_not_activation() {
    let _w = watchdog("listen_pid_other", Duration::from_secs(60));
    let dir = TempDir::new("otherpid");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "own", "")).unwrap();
    let own = dir.join("own.sock");
    let log = dir.join("stderr.log");
    // fd 3 is a valid listening socket, but LISTEN_PID names our parent: not for us.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec 3<&0 </dev/null; LISTEN_PID=$PPID LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec \"$0\" \"$@\"")
        .arg(bin())
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(&own)
        .stdin(held.fd())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc { child, log };
    assert!(
        wait_for(Duration::from_secs(10), || own.exists()),
        "did not fall back to --listen: {}",
        p.stderr()
    );
    let (status, content) = fcgi_text(&own, TOKEN, "y").expect("request on --listen");
    assert_eq!((status, content.as_str()), (200, "own: y"));
    let want = format!("serving on unix:{}", own.display());
    assert!(
        wait_for(Duration::from_secs(5), || p.stderr().contains(&want)),
        "{}",
        p.stderr()
    );
    assert!(!held.pending(Duration::ZERO));
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn fd3_that_is_not_a_socket_is_a_clear_error() {
    let _w = watchdog("fd3_not_socket", Duration::from_secs(60));
    let dir = TempDir::new("fd3file");
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "x", "")).unwrap();
    let file = std::fs::File::open(&config).unwrap();
    let mut p = spawn_activated(
        file,
        &[OsStr::new("--config"), config.as_os_str()],
        &[],
        &dir.join("stderr.log"),
    );
    let st = p.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(!st.success(), "{st:?}");
    let err = p.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got:\n{err}");
    assert!(
        lines[0].contains("fd 3") && lines[0].contains("not a listening stream socket"),
        "{err}"
    );

    // A socket that is not listening (a connected stream) is refused the same way.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut p = spawn_activated(
        std::os::fd::OwnedFd::from(a),
        &[OsStr::new("--config"), config.as_os_str()],
        &[],
        &dir.join("stderr2.log"),
    );
    let st = p.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(!st.success());
    assert!(p.stderr().contains("not listening"), "{}", p.stderr());
}

#[test]
fn spawn_fcgi_convention_listening_socket_on_fd0() {
    let _w = watchdog("fd0", Duration::from_secs(60));
    let dir = TempDir::new("fd0");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "fd0", "idle_exit = 1")).unwrap();
    let log = dir.join("stderr.log");
    let child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(held.fd())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc { child, log };
    let (status, content) = fcgi_text(&held.path, TOKEN, "z").expect("request");
    assert_eq!((status, content.as_str()), (200, "fd0: z"));
    assert!(
        wait_for(Duration::from_secs(5), || p
            .stderr()
            .contains("serving on fd 0 (unix)")),
        "{}",
        p.stderr()
    );
    p.term();
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}

/// Receives datagrams until one contains `want` or `timeout` passes; returns all seen.
fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> (bool, Vec<String>) {
    let until = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.contains(want);
            seen.push(msg);
            if hit {
                return (true, seen);
            }
        }
    }
    (false, seen)
}

#[test]
fn sd_notify_ready_status_stopping() {
    let _w = watchdog("sd_notify", Duration::from_secs(60));
    let dir = TempDir::new("notify");
    let held = HeldSocket::bind(&dir);
    let config = dir.join("c.toml");
    std::fs::write(&config, prefix_config(TOKEN, "n", "")).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut p = spawn_activated(
        held.fd(),
        &[OsStr::new("--config"), config.as_os_str()],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        &dir.join("stderr.log"),
    );
    let (ready, seen) = recv_until(&notify, "READY=1", Duration::from_secs(10));
    assert!(ready, "no READY=1; got {seen:?}; stderr:\n{}", p.stderr());
    // READY=1 means serving: the workers already accept, so a request right now is answered
    // at once rather than waiting in the queue for a startup still in progress.
    let t0 = Instant::now();
    let (status, _) = fcgi_text(&held.path, TOKEN, "a").expect("request after READY");
    assert_eq!(status, 200);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    fcgi_text(&held.path, TOKEN, "b").expect("second request");
    let (status_seen, seen) = recv_until(
        &notify,
        "STATUS=serving, 2 requests",
        Duration::from_secs(5),
    );
    assert!(
        status_seen,
        "no STATUS with the request count; got {seen:?}"
    );
    p.term();
    let (stopping, seen) = recv_until(&notify, "STOPPING=1", Duration::from_secs(10));
    assert!(stopping, "no STOPPING=1 on SIGTERM; got {seen:?}");
    assert!(p.wait_exit(Duration::from_secs(15)).unwrap().success());
}
