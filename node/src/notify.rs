//! systemd readiness notification (`sd_notify`): when the service manager
//! sets `NOTIFY_SOCKET`, the daemon sends `READY=1` once it accepts
//! connections and `STOPPING=1` when it begins to shut down. Without
//! `NOTIFY_SOCKET` this does nothing. A failure to notify is logged, never
//! fatal: the daemon serves either way.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (for example `"READY=1"`) to `$NOTIFY_SOCKET`, if set.
/// Returns whether a notification was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let sent = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: '@' stands for the leading NUL byte.
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    match sent {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, state, "sd_notify failed");
            false
        }
    }
}
