//! Processes the slave runs for the master: start them as the caller, connect their forwarded
//! fds back to the launcher, track them for signals, and report how they end.
//!
//! A forwarded fd is a TCP connection from this node to the launcher's listener (on the
//! master's address as this node sees it). The slave opens it before the process starts and
//! hands the socket to the process as its fd, so output flows from the process to the launcher
//! with no copy through any daemon, and TCP flow control bounds memory on both sides. The
//! connection opens with a 21-byte header: the launch's 16-byte token, the rank (u32,
//! big-endian) and the fd number (u8).

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bproc_proto::errno::{EINVAL, EPERM};
use bproc_proto::{Creds, ExitStatus, IoSpec, Message, ProcSpec};
use bproc_sys::{prepare_child, FdFile, Identity};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// Length of the header on a forwarded connection.
pub const IO_HEADER_LEN: usize = 21;

/// Running processes by (launch, rank).
#[derive(Debug, Default, Clone)]
pub struct Procs(Arc<Mutex<HashMap<(u64, u32), i32>>>);

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u32), i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `signal` to a launch's process of `rank`, or all of them for `u32::MAX`. Each
    /// process leads its own process group and the whole group gets the signal, as a
    /// terminal's job would: children that hold the output open go too.
    pub fn signal(&self, launch: u64, rank: u32, signal: i32) {
        let Ok(sig) = Signal::try_from(signal) else {
            warn!("launch {launch}: ignoring invalid signal {signal}");
            return;
        };
        for (&(l, r), &pid) in self.lock().iter() {
            if l == launch && (rank == u32::MAX || r == rank) {
                let _ = kill(Pid::from_raw(-pid), sig);
            }
        }
    }

    /// Kills every process (the node is leaving its master for good).
    pub fn kill_all(&self) {
        for &pid in self.lock().values() {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
    }
}

/// Who the slave may run processes as.
#[derive(Debug, Clone, Copy)]
pub struct Authority {
    /// The daemon runs as real root and can take any identity.
    pub root: bool,
    /// The daemon's own uid outside any user namespace.
    pub uid: u32,
}

fn refuse(code: i32, message: String) -> Message {
    Message::Error { code, message }
}

/// Opens the connection for `fd` of `rank` back to the launcher.
async fn connect_back(
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    fd: u8,
) -> std::io::Result<OwnedFd> {
    let mut s = TcpStream::connect(SocketAddrV4::new(master, spec.io_port)).await?;
    s.set_nodelay(true)?;
    let mut head = [0u8; IO_HEADER_LEN];
    head[..16].copy_from_slice(&spec.token);
    head[16..20].copy_from_slice(&rank.to_be_bytes());
    head[20] = fd;
    s.write_all(&head).await?;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(OwnedFd::from(s))
}

/// Starts rank `rank` of `launch`; returns the reply for the master. When the process is
/// running, a task waits for it and sends its [`Message::ProcExit`] through `report`.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    procs: &Procs,
    authority: Authority,
    master: Ipv4Addr,
    launch: u64,
    rank: u32,
    creds: Creds,
    spec: ProcSpec,
    report: impl Fn(Message) + Send + 'static,
) -> Message {
    if !authority.root && creds.uid != authority.uid {
        return refuse(
            EPERM,
            format!(
                "this node's slave runs as uid {} without root, so it runs only that user's jobs",
                authority.uid
            ),
        );
    }
    let Some(argv0) = spec.argv.first() else {
        return refuse(EINVAL, "empty command".into());
    };
    let mut cmd = std::process::Command::new(&spec.path);
    cmd.arg0(argv0).args(&spec.argv[1..]).env_clear().envs(spec.env_for_rank(rank));
    cmd.current_dir(if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" });
    cmd.process_group(0);
    let mut files = Vec::new();
    for fd in 0..3u8 {
        let stdio = match spec.io.get(fd as usize).unwrap_or(&IoSpec::Null) {
            IoSpec::Null => Stdio::null(),
            IoSpec::File(p) => {
                let Ok(path) = CString::new(p.as_str()) else {
                    return refuse(EINVAL, format!("NUL in file name {p:?}"));
                };
                files.push(FdFile { fd: fd.into(), path, write: fd != 0 });
                Stdio::null()
            }
            IoSpec::Forward => match connect_back(master, &spec, rank, fd).await {
                Ok(sock) => Stdio::from(sock),
                Err(e) => {
                    return refuse(
                        e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
                        format!("cannot connect fd {fd} back to the launcher: {e}"),
                    )
                }
            },
        };
        match fd {
            0 => cmd.stdin(stdio),
            1 => cmd.stdout(stdio),
            _ => cmd.stderr(stdio),
        };
    }
    let identity = authority.root.then(|| Identity {
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups.clone(),
    });
    prepare_child(&mut cmd, spec.rlimits.clone(), identity, spec.umask, files);
    let mut child = match tokio::process::Command::from(cmd).spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(bproc_proto::errno::EIO);
            return refuse(code, format!("{}: {e}", spec.path));
        }
    };
    let pid = child.id().map_or(0, |p| p as i32);
    procs.lock().insert((launch, rank), pid);
    info!("launch {launch} rank {rank}: started {} as pid {pid} (uid {})", spec.path, creds.uid);
    let procs = procs.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => ExitStatus::Code(c),
                (None, Some(sig)) => ExitStatus::Signal(sig),
                _ => ExitStatus::Code(255),
            },
            Err(e) => {
                warn!("launch {launch} rank {rank}: wait failed: {e}");
                ExitStatus::Code(255)
            }
        };
        procs.lock().remove(&(launch, rank));
        report(Message::ProcExit { launch, rank, status });
    });
    Message::Spawned { pid }
}
