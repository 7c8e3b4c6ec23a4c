//! Where the listening socket comes from, in this order:
//! 1. systemd socket activation: `LISTEN_PID` = our pid, `LISTEN_FDS` ≥ 1, the socket is fd 3;
//! 2. a listening socket on fd 0 (FCGI_LISTENSOCK_FILENO, as spawn-fcgi passes it);
//! 3. `--listen` / config `listen`: a Unix socket path (a stale socket file is replaced) or
//!    `host:port` on a loopback address.
//!
//! An inherited fd is checked to really be a listening stream socket before use. The
//! activation variables are taken out of the environment ([`take_activation`]) so no child
//! inherits them, and every passed fd is close-on-exec so no child inherits those either.

use crate::socket::Listener;
use rustix::net::{AddressFamily, SocketType, sockopt};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// systemd passes the first socket as fd 3 (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: i32 = 3;
const ENV_LISTEN_PID: &str = "LISTEN_PID";
const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// A listener and how it was obtained.
#[derive(Debug)]
pub struct Acquired {
    pub listener: Listener,
    /// For the startup log line, e.g. `systemd fd 3 (unix)` or `unix:/run/weixin-fcgi.sock`.
    pub description: String,
    /// True when systemd passed the socket (idle exit only makes sense then).
    pub socket_activated: bool,
    /// A socket file we created and should remove on exit.
    pub created_path: Option<String>,
}

/// What systemd's socket activation variables said (`LISTEN_PID`, `LISTEN_FDS`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Activation {
    /// `LISTEN_PID`, when set.
    pid: Option<Result<u32, ()>>,
    /// `LISTEN_FDS`, when set.
    fds: Option<Result<i32, ()>>,
}

/// Reads systemd's socket activation variables and removes them (and `LISTEN_FDNAMES`) from
/// the environment, so no child process believes the sockets are meant for it.
///
/// # Safety
/// Changes the process environment: call it before any other thread starts (first thing in
/// `main`), while nothing else can read or write the environment at the same time.
pub unsafe fn take_activation() -> Activation {
    fn number<T: std::str::FromStr>(name: &str) -> Option<Result<T, ()>> {
        let value = std::env::var(name).ok()?;
        Some(value.trim().parse().map_err(|_| ()))
    }
    let activation = Activation {
        pid: number(ENV_LISTEN_PID),
        fds: number(ENV_LISTEN_FDS),
    };
    // SAFETY: the caller guarantees no other thread runs yet (this function's contract).
    unsafe {
        std::env::remove_var(ENV_LISTEN_PID);
        std::env::remove_var(ENV_LISTEN_FDS);
        std::env::remove_var(ENV_LISTEN_FDNAMES);
    }
    activation
}

/// Takes the socket passed by systemd (`activation`) or on fd 0 if there is one, else binds
/// `listen`.
pub fn acquire(
    activation: Activation,
    listen: Option<&str>,
    socket_mode: u32,
) -> io::Result<Acquired> {
    if let Some(a) = from_systemd(activation)? {
        return Ok(a);
    }
    if let Some(a) = from_stdin() {
        return Ok(a);
    }
    match listen {
        Some(addr) => bind(addr, socket_mode),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no socket to serve: start under systemd socket activation, pass a listening socket \
             on fd 0, or set `listen` in the config / --listen",
        )),
    }
}

fn from_systemd(activation: Activation) -> io::Result<Option<Acquired>> {
    let (Some(pid), Some(fds)) = (activation.pid, activation.fds) else {
        return Ok(None);
    };
    let pid = pid.map_err(|_| invalid("LISTEN_PID is not a number"))?;
    if pid != std::process::id() {
        // Meant for another process (e.g. our parent): not activated.
        return Ok(None);
    }
    let fds = fds.map_err(|_| invalid("LISTEN_FDS is not a number"))?;
    if fds < 1 {
        return Ok(None);
    }
    if fds > 1 {
        log::warn!("listener: systemd passed {fds} sockets; serving the first (fd 3) only");
        // The others stay open (systemd holds them too) but no `exec` child may inherit them.
        for fd in SD_LISTEN_FDS_START + 1..SD_LISTEN_FDS_START + fds.min(1024) {
            // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process (LISTEN_PID matched);
            // the borrow lasts for this one fcntl call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC);
        }
    }
    // SAFETY: systemd guarantees fds 3..3+LISTEN_FDS are open and ours; fd 3 is checked below
    // before it is owned, and nothing else in this process refers to it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(SD_LISTEN_FDS_START) };
    let family = check_listening_stream(borrowed).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("fd 3 from systemd is not a listening stream socket: {e}"),
        )
    })?;
    // SAFETY: as above; from here the OwnedFd is the only owner of fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let (listener, kind) = wrap(fd, family);
    Ok(Some(Acquired {
        listener,
        description: format!("systemd fd 3 ({kind})"),
        socket_activated: true,
        created_path: None,
    }))
}

fn from_stdin() -> Option<Acquired> {
    let stdin = std::io::stdin();
    let family = check_listening_stream(stdin.as_fd()).ok()?;
    // SAFETY: fd 0 was just checked to be a listening socket; we take it over as spawn-fcgi
    // intends, and nothing in this process reads stdin.
    let fd = unsafe { OwnedFd::from_raw_fd(0) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    let (listener, kind) = wrap(fd, family);
    Some(Acquired {
        listener,
        description: format!("fd 0 ({kind})"),
        socket_activated: false,
        created_path: None,
    })
}

/// Checks that `fd` is a listening stream socket and returns its family.
fn check_listening_stream(fd: BorrowedFd<'_>) -> io::Result<AddressFamily> {
    if sockopt::socket_type(fd)? != SocketType::STREAM {
        return Err(invalid("not a stream socket"));
    }
    if !sockopt::socket_acceptconn(fd)? {
        return Err(invalid("socket is not listening"));
    }
    let family = sockopt::socket_domain(fd)?;
    if family == AddressFamily::UNIX
        || family == AddressFamily::INET
        || family == AddressFamily::INET6
    {
        Ok(family)
    } else {
        Err(invalid("socket family is not unix, inet or inet6"))
    }
}

fn wrap(fd: OwnedFd, family: AddressFamily) -> (Listener, &'static str) {
    if family == AddressFamily::UNIX {
        (Listener::Unix(UnixListener::from(fd)), "unix")
    } else {
        (Listener::Tcp(TcpListener::from(fd)), "tcp")
    }
}

/// Binds `addr`: `unix:PATH`, a path, or `host:port` on loopback.
pub fn bind(addr: &str, socket_mode: u32) -> io::Result<Acquired> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return bind_unix(path, socket_mode);
    }
    if !addr.contains('/') {
        if let Ok(sock) = addr.parse::<SocketAddr>() {
            if !sock.ip().is_loopback() {
                return Err(invalid(
                    "TCP listen address must be on loopback (127.0.0.1 or [::1]): FastCGI has \
                     no authentication, so anyone who can reach it can bypass nginx",
                ));
            }
            let listener = TcpListener::bind(sock)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            return Ok(Acquired {
                listener: Listener::Tcp(listener),
                description: format!("tcp:{addr}"),
                socket_activated: false,
                created_path: None,
            });
        }
    }
    bind_unix(addr, socket_mode)
}

fn bind_unix(path: &str, socket_mode: u32) -> io::Result<Acquired> {
    let p = Path::new(path);
    match std::fs::symlink_metadata(p) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(p).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{path} is in use by a running process; stop it or choose another path"
                    ),
                ));
            }
            // Nobody answers: a stale socket left by a crash. Replace it.
            std::fs::remove_file(p).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot remove stale socket {path}: {e}"))
            })?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists and is not a socket; refusing to replace it"),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(p)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {path}: {e}")))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(socket_mode))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot chmod {path}: {e}")))?;
    Ok(Acquired {
        listener: Listener::Unix(listener),
        description: format!("unix:{path} (mode {socket_mode:04o})"),
        socket_activated: false,
        created_path: Some(path.to_string()),
    })
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}
