//! Where the daemons' logs go.
//!
//! In the foreground (`-d`, or bpslave's `-e`) they go to stderr, with colour only when
//! stderr is a terminal, so log files hold plain text. In the background, and under systemd,
//! they go to syslog (`/dev/log`, where journald listens too) with the facility the
//! configuration names (bpmaster's `logfacility`, bpslave's `-l`), one datagram per event,
//! its severity from the event's level. The `syslog` crate formats RFC 3164 messages; this
//! module connects it to `tracing` and reconnects after a syslog daemon restarts (or first
//! appears: a daemon started early in boot may come up before it).
//!
//! `$BPROC_SYSLOG_SOCKET` names another socket than `/dev/log`, for tests and for machines
//! whose syslog listens elsewhere.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

pub use syslog::Facility;
use syslog::{Formatter3164, Logger, LoggerBackend};
use thiserror::Error;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// The syslog socket, unless `$BPROC_SYSLOG_SOCKET` names another.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The environment variable that overrides [`SYSLOG_SOCKET`].
pub const SYSLOG_SOCKET_ENV: &str = "BPROC_SYSLOG_SOCKET";

/// Why syslog cannot be used as asked.
#[derive(Debug, Error)]
pub enum LogError {
    /// The facility name is not one syslog knows.
    #[error("unknown syslog facility `{0}` (use daemon, user, local0 to local7, ...)")]
    UnknownFacility(String),
}

/// Where the logs go.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Standard error, plain text unless it is a terminal.
    Stderr,
    /// Syslog, as `ident[pid]` with this facility.
    Syslog {
        /// The program name in each message (`bpmaster`).
        ident: &'static str,
        /// The facility.
        facility: Facility,
    },
}

/// The facility a name stands for, case-insensitive: glibc's names, where `security` is the
/// old name of `auth` and `mark` (syslogd's own timestamps, no facility a program logs to)
/// logs as `daemon`.
pub fn facility(name: &str) -> Result<Facility, LogError> {
    match name.to_ascii_lowercase().as_str() {
        "security" => Ok(Facility::LOG_AUTH),
        "mark" => Ok(Facility::LOG_DAEMON),
        n => n.parse().map_err(|()| LogError::UnknownFacility(name.to_owned())),
    }
}

/// Sets the process's logger: warnings and errors, info with `verbosity` 1, debug with more.
/// Returns a warning to show the user when syslog cannot be reached yet (messages are
/// dropped until it can).
pub fn init(target: Target, verbosity: u8) -> Option<String> {
    let level = match verbosity {
        0 => Level::WARN,
        1 => Level::INFO,
        _ => Level::DEBUG,
    };
    match target {
        Target::Stderr => {
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
            None
        }
        Target::Syslog { ident, facility } => {
            let sink = Syslog::new(ident, facility);
            let warning = sink.connect().err().map(|e| {
                format!(
                    "cannot reach syslog at {}: {e}; logs are dropped until it listens \
                     (run with -d to log to stderr)",
                    sink.path.display()
                )
            });
            // Syslog stamps time and severity; the line is the message and its fields.
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_writer(sink)
                .init();
            warning
        }
    }
}

/// A connection to syslog shared by every thread, reopened when a send fails.
struct Syslog {
    path: PathBuf,
    formatter: Formatter3164,
    logger: Mutex<Option<Logger<LoggerBackend, Formatter3164>>>,
}

impl Syslog {
    fn new(ident: &str, facility: Facility) -> Syslog {
        let path = std::env::var_os(SYSLOG_SOCKET_ENV).map_or(SYSLOG_SOCKET.into(), PathBuf::from);
        // No host name: a local syslog adds its own, and journald would take it for the tag.
        let formatter = Formatter3164 {
            facility,
            hostname: None,
            process: ident.to_owned(),
            pid: std::process::id(),
        };
        Syslog { path, formatter, logger: Mutex::new(None) }
    }

    /// Whether syslog listens: the system's error, which the `syslog` crate would wrap
    /// twice, when it does not. The logger itself connects on the first message.
    fn connect(&self) -> std::io::Result<()> {
        match std::os::unix::net::UnixDatagram::unbound()?.connect(&self.path) {
            // A stream socket, which the crate speaks too.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPROTOTYPE) => Ok(()),
            r => r,
        }
    }

    /// Sends one message; on failure reconnects once and tries again, then drops it.
    fn send(&self, level: Level, message: &str) {
        let mut guard = self.logger.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            if guard.is_none() {
                *guard = syslog::unix_custom(self.formatter.clone(), &self.path).ok();
            }
            let Some(logger) = guard.as_mut() else { return };
            let sent = match level {
                Level::ERROR => logger.err(message),
                Level::WARN => logger.warning(message),
                Level::INFO => logger.info(message),
                _ => logger.debug(message),
            };
            if sent.is_ok() {
                return;
            }
            *guard = None;
        }
    }
}

/// One event's text, sent when the formatter is done with it.
struct Line<'a> {
    sink: &'a Syslog,
    level: Level,
    buf: Vec<u8>,
}

impl std::io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if !text.is_empty() {
            self.sink.send(self.level, text);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line { sink: self, level: Level::INFO, buf: Vec::new() }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line { sink: self, level: *meta.level(), buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn facilities_by_name() {
        assert_eq!(facility("daemon").unwrap() as i32, 3 << 3);
        assert_eq!(facility("LOCAL3").unwrap() as i32, 19 << 3);
        assert_eq!(facility("security").unwrap() as i32, 4 << 3);
        assert_eq!(facility("mark").unwrap() as i32, 3 << 3);
        assert_eq!(
            facility("kernel").unwrap_err().to_string(),
            "unknown syslog facility `kernel` (use daemon, user, local0 to local7, ...)"
        );
    }

    /// Each event is one datagram with its facility and severity; messages wait for no
    /// receiver, and a syslog that appears or restarts gets the next one.
    #[test]
    fn events_become_datagrams_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("bproc-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut sink = Syslog::new("bptest", Facility::LOG_LOCAL3);
        sink.path = path.clone();
        assert!(sink.connect().is_err());
        sink.send(Level::WARN, "lost: nobody listens");
        let listen = || {
            let rx = UnixDatagram::bind(&path).unwrap();
            rx.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            rx
        };
        let recv = |rx: &UnixDatagram| {
            let mut buf = [0u8; 512];
            let n = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let rx = listen();
        sink.send(Level::WARN, "first");
        let got = recv(&rx);
        // local3 (19) * 8 + warning (4)
        assert!(got.starts_with("<156>"), "{got}");
        assert!(got.ends_with(&format!(" bptest[{}]: first", std::process::id())), "{got}");
        // syslog restarts: the old connection fails, the next message finds the new socket.
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        let rx = listen();
        std::io::Write::write_all(
            &mut Line { sink: &sink, level: Level::ERROR, buf: Vec::new() },
            b"second\n",
        )
        .unwrap();
        let got = recv(&rx);
        assert!(got.starts_with("<155>") && got.ends_with(": second"), "{got}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
