//! Starting a daemon: in the background the Unix way, in the foreground (`-d`), or under
//! systemd, with one report of readiness in each case.
//!
//! # In the background
//! The daemon forks before it starts any thread or async runtime (a fork keeps only the
//! calling thread, so threads started before it, such as bpmaster's data port, would be
//! missing from the daemon). The command the administrator typed stays the parent and exits
//! only once the daemon has said how its start went, over a pipe:
//!
//! ```text
//!   parent (the command typed)                 child (the daemon)
//!   fork ───────────────────────────────────►  setsid (leaves the terminal's session)
//!   reads the pipe to its end                  loads, binds, listens ...
//!                          ◄───────────────── `R` report   ready: the parent prints the
//!                                             report (bpmaster --print-address) and
//!                                             exits 0; the child moves to `/` and puts
//!                                             stdin, stdout and stderr on /dev/null
//!                          ◄───────────────── `F` message  the start failed: the parent
//!                                             prints it and exits 1; so does the child
//! ```
//!
//! A report is a tag byte, a 4-byte little-endian length and that much text, so the parent
//! needs no end of file: helpers the daemon forks without exec (bpslave's pid namespace init)
//! keep a copy of the pipe. The pipe is close-on-exec, so programs the daemon runs do not. A
//! child that dies without a word leaves the parent a short read, and the parent reports its
//! wait status.
//!
//! # Under systemd
//! With `$NOTIFY_SOCKET` set the daemon does not fork, even without `-d`: systemd is the
//! parent, and a `Type=notify` service reports readiness with `READY=1` ([`crate::notify`]).
//! Logs go to syslog as in the background.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;

use crate::logging::{self, Facility, LogError, Target};
use crate::notify::Notifier;

/// Why the daemon cannot go to the background.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Threads already run: a fork would leave them behind (a bug in the caller).
    #[error("cannot fork into the background: {0} threads already run")]
    Threaded(usize),
    /// A system call failed.
    #[error("cannot fork into the background: {call}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

fn sys(call: &'static str) -> impl FnOnce(nix::Error) -> DaemonError {
    move |source| DaemonError::Sys { call, source }
}

/// What [`Daemon::start`] leaves running in this process.
#[derive(Debug)]
pub enum Started {
    /// This is the command that was typed; its daemon has reported: exit with this code.
    Parent(ExitCode),
    /// This is the daemon.
    Daemon(Daemon),
}

/// The longest report the parent reads.
const MAX_REPORT: usize = 64 * 1024;

/// What the daemon says on the pipe to the command that started it.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// Ready; the text is for the parent's stdout.
    Ready(String),
    /// The start failed, for this reason.
    Failed(String),
}

impl Report {
    fn encode(&self) -> Vec<u8> {
        let (tag, text) = match self {
            Report::Ready(t) => (b'R', t.as_bytes()),
            Report::Failed(t) => (b'F', t.as_bytes()),
        };
        let text = &text[..text.len().min(MAX_REPORT)];
        let mut v = vec![tag];
        v.extend_from_slice(&(text.len() as u32).to_le_bytes());
        v.extend_from_slice(text);
        v
    }

    /// Reads one report; `None` when the stream ends first (the daemon died without a word)
    /// or holds something else.
    fn read(r: &mut impl Read) -> Option<Report> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).ok()?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_REPORT {
            return None;
        }
        let mut text = vec![0u8; len];
        r.read_exact(&mut text).ok()?;
        let text = String::from_utf8_lossy(&text).into_owned();
        match head[0] {
            b'R' => Some(Report::Ready(text)),
            b'F' => Some(Report::Failed(text)),
            _ => None,
        }
    }
}

/// The running daemon's side: how it reports readiness and errors.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    /// The pipe to the waiting parent, until the daemon reports (background only).
    pipe: RefCell<Option<OwnedFd>>,
    /// systemd's notification socket, when run as a `Type=notify` service.
    notifier: Option<Notifier>,
    /// Forked into the background or run by systemd: logs belong in syslog.
    background: bool,
    /// Leave stderr open after the start (bpslave's `-e`).
    keep_stderr: bool,
    /// Standard streams are on /dev/null: errors can only be logged.
    detached: Cell<bool>,
}

impl Daemon {
    /// Starts the daemon `name` (`bpmaster`): in the background unless `foreground` or
    /// systemd runs it. Call before any thread starts. In the background, this returns twice
    /// as `fork` does: [`Started::Parent`] once the daemon has reported, in the command that
    /// was typed, and [`Started::Daemon`] in the daemon.
    pub fn start(name: &'static str, foreground: bool) -> Result<Started, DaemonError> {
        let notifier = Notifier::take_from_env();
        let mut d = Daemon {
            name,
            pipe: RefCell::new(None),
            background: !foreground,
            notifier,
            keep_stderr: false,
            detached: Cell::new(false),
        };
        if foreground || d.notifier.is_some() {
            return Ok(Started::Daemon(d));
        }
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
        if threads > 1 {
            return Err(DaemonError::Threaded(threads));
        }
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
        match bproc_sys::fork_single_threaded().map_err(sys("fork"))? {
            0 => {
                drop(rd);
                nix::unistd::setsid().map_err(sys("setsid"))?;
                d.pipe = RefCell::new(Some(wr));
                Ok(Started::Daemon(d))
            }
            child => {
                drop(wr);
                Ok(Started::Parent(wait_for_report(name, rd, Pid::from_raw(child))))
            }
        }
    }

    /// [`Daemon::start`] for a `main`: the daemon, or the code to exit with (the parent's,
    /// once the daemon has reported, or 1 after printing why it could not start).
    pub fn begin(name: &'static str, foreground: bool) -> Result<Daemon, ExitCode> {
        match Daemon::start(name, foreground) {
            Ok(Started::Daemon(d)) => Ok(d),
            Ok(Started::Parent(code)) => Err(code),
            Err(e) => {
                eprintln!("{name}: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    }

    /// Sets the logger: syslog under `facility` (asked only then) in the background unless
    /// stderr is kept, stderr otherwise; says on stderr when syslog cannot be reached yet.
    pub fn log(
        &self,
        facility: impl FnOnce() -> Result<Facility, LogError>,
        verbosity: u8,
    ) -> Result<(), LogError> {
        let target = if self.background && !self.keep_stderr {
            Target::Syslog { ident: self.name, facility: facility()? }
        } else {
            Target::Stderr
        };
        if let Some(warning) = logging::init(target, verbosity) {
            eprintln!("{}: {warning}", self.name);
        }
        Ok(())
    }

    /// Keeps stderr open once started (logs to stderr from the background: bpslave's `-e`).
    pub fn keep_stderr(&mut self, keep: bool) {
        self.keep_stderr = keep;
    }

    /// Says the daemon serves: `report` goes to the typed command's stdout (if not empty),
    /// systemd hears `READY=1`. A forked daemon then moves to `/` and leaves its standard
    /// streams to /dev/null.
    pub fn ready(&self, report: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.notify("READY=1") {
                tracing::warn!("cannot tell systemd that {} is ready: {e}", self.name);
            }
        }
        let Some(pipe) = self.pipe.borrow_mut().take() else {
            if !report.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{report}");
                let _ = out.flush();
            }
            return;
        };
        // A parent gone (killed while waiting) is no reason to stop: the write just fails.
        let _ = File::from(pipe).write_all(&Report::Ready(report.to_owned()).encode());
        if let Err(e) = self.detach() {
            tracing::warn!("cannot detach from the terminal: {e}");
        }
    }

    /// The daemon's working directory becomes `/` (so it holds no mount busy) and its
    /// standard streams /dev/null (stderr kept with [`keep_stderr`](Self::keep_stderr)).
    fn detach(&self) -> std::io::Result<()> {
        nix::unistd::chdir("/")?;
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
        let streams: &[i32] = if self.keep_stderr { &[0, 1] } else { &[0, 1, 2] };
        for &fd in streams {
            nix::unistd::dup2(null.as_raw_fd(), fd)?;
        }
        self.detached.set(!self.keep_stderr);
        Ok(())
    }

    /// Reports what ended the daemon, once: to the waiting parent during a background start,
    /// to syslog once detached, else to stderr. Returns the exit code.
    pub fn exit<E: Display>(&self, result: Result<(), E>) -> ExitCode {
        let Err(e) = result else { return ExitCode::SUCCESS };
        if let Some(pipe) = self.pipe.borrow_mut().take() {
            let _ = File::from(pipe).write_all(&Report::Failed(e.to_string()).encode());
        } else if self.detached.get() {
            tracing::error!("{e}");
        } else {
            eprintln!("{}: {e}", self.name);
        }
        ExitCode::FAILURE
    }
}

/// The parent's side: reads the daemon's report and turns it into this process's exit code,
/// printing what the daemon said.
fn wait_for_report(name: &str, rd: OwnedFd, child: Pid) -> ExitCode {
    match Report::read(&mut File::from(rd)) {
        Some(Report::Ready(report)) => {
            if !report.is_empty() {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
        Some(Report::Failed(message)) => {
            let _ = waitpid(child, None);
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        }
        None => {
            let how = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
                Ok(other) => format!("ended ({other:?})"),
                Err(e) => format!("cannot be waited for ({e})"),
            };
            eprintln!("{name}: the daemon {how} before it was ready");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let read = |bytes: &[u8]| Report::read(&mut &bytes[..]);
        for r in [
            Report::Ready("127.0.0.1:2223 /run/bproc/master.sock 42".into()),
            Report::Failed("x: y".into()),
            Report::Ready(String::new()),
        ] {
            assert_eq!(read(&r.encode()), Some(r));
        }
        // A daemon that died before or while writing; garbage.
        assert_eq!(read(b""), None);
        assert_eq!(read(&Report::Failed("cut short".into()).encode()[..8]), None);
        assert_eq!(read(b"?\x01\0\0\0x"), None);
        assert_eq!(read(b"R\xff\xff\xff\xff"), None);
    }
}
