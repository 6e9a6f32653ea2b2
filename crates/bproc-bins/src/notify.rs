//! systemd's readiness notification (`sd_notify(3)`), for services of `Type=notify`.
//!
//! systemd names a datagram socket in `$NOTIFY_SOCKET` (a path, or an abstract name written
//! with a leading `@`); the service sends `READY=1` there once it serves. That is one
//! datagram, so it is sent with std's `UnixDatagram` rather than a crate. The variable is
//! taken out of the environment at start, while the process is single-threaded, so that
//! nothing the daemon starts (node_up, users' processes) inherits it and speaks for the
//! service.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to report readiness to the service manager.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// Takes `$NOTIFY_SOCKET` out of the environment: `None` when the daemon does not run
    /// under systemd (or the variable names no usable address). Call it before any thread
    /// starts: changing the environment races with threads that read it.
    pub fn take_from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        Self::parse(&value).map(|addr| Notifier { addr })
    }

    fn parse(value: &OsString) -> Option<SocketAddr> {
        let bytes = value.as_bytes();
        match bytes.first()? {
            b'/' => SocketAddr::from_pathname(value).ok(),
            b'@' => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..]).ok()
            }
            _ => None,
        }
    }

    /// Sends `state`, such as `READY=1` (several assignments are separated by newlines).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("bproc-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { addr: Notifier::parse(&path.clone().into_os_string()).unwrap() };
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(Notifier::parse(&"@/org/freedesktop/systemd1/notify".into()).is_some());
        assert!(Notifier::parse(&"relative/path".into()).is_none());
        assert!(Notifier::parse(&"".into()).is_none());
    }
}
