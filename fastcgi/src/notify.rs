//! systemd's notify protocol (`sd_notify`): `READY=1`, `STOPPING=1`, `STATUS=…` datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not run by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<(UnixDatagram, String)>> = OnceLock::new();

/// Reads `$NOTIFY_SOCKET` once; call before starting threads.
pub fn init() {
    SOCKET.get_or_init(|| {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        let sock = UnixDatagram::unbound().ok()?;
        Some((sock, path))
    });
}

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`). Errors are ignored: notification is advisory.
pub fn notify(state: &str) {
    let Some(Some((sock, path))) = SOCKET.get() else {
        return;
    };
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), path);
    }
}
