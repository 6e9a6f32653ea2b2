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
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bproc_proto::errno::{EINVAL, EPERM};
use bproc_proto::{Creds, ExitStatus, IoSpec, Message, ProcSpec, StagedRef};
use bproc_sys::{prepare_child, FdFile, Identity, Jail};

use crate::isolate::Diskless;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// Length of the header on a forwarded connection.
pub const IO_HEADER_LEN: usize = 21;
/// The fd number in a connection header that asks the launcher for a staged file instead:
/// the header is followed by the file's 32-byte hash, and the launcher answers with the size
/// (u64, big-endian) and the content.
pub const FETCH_FD: u8 = 0xff;

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

/// Why a rank could not start: an errno-style code (sent to the master) and the details
/// (logged here).
#[derive(Debug)]
pub struct Refused {
    /// errno or `BE_*` value.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

fn refuse(code: i32, message: String) -> Result<i32, Refused> {
    Err(Refused { code, message })
}

/// Opens a connection to the launcher and sends its header.
async fn open_to_launcher(
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    fd: u8,
) -> std::io::Result<TcpStream> {
    let ip = spec.io_ip.unwrap_or(master);
    let mut s = TcpStream::connect(SocketAddrV4::new(ip, spec.io_port)).await?;
    s.set_nodelay(true)?;
    let mut head = [0u8; IO_HEADER_LEN];
    head[..16].copy_from_slice(&spec.token);
    head[16..20].copy_from_slice(&rank.to_be_bytes());
    head[20] = fd;
    s.write_all(&head).await?;
    Ok(s)
}

/// Opens the connection for `fd` of `rank` back to the launcher.
async fn connect_back(
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    fd: u8,
) -> std::io::Result<OwnedFd> {
    let s = open_to_launcher(master, spec, rank, fd).await?.into_std()?;
    s.set_nonblocking(false)?;
    Ok(OwnedFd::from(s))
}

/// Where a diskless node fetches the staged files its cache lacks.
#[derive(Clone)]
pub enum Source {
    /// The launcher (or the master's file server), at the spec's io address.
    Launcher,
    /// The node that passed this launch on, over the tree connection: each node fetches from
    /// its parent, so a program crosses each tree edge once, not once per node from the
    /// launcher.
    Parent(Arc<tokio::sync::Mutex<TcpStream>>),
}

/// One fetch of each content at a time, so a file wanted by several ranks or children is
/// fetched once.
static FETCHING: Mutex<Option<FetchLocks>> = Mutex::new(None);

/// A lock per content hash.
type FetchLocks = HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>;

async fn fetch(
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<Vec<u8>, String> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    async fn exchange(s: &mut TcpStream, f: &StagedRef) -> std::io::Result<Vec<u8>> {
        s.write_all(&f.hash).await?;
        let size = s.read_u64().await?;
        if size != f.size {
            return Err(std::io::Error::other(format!("sent {size} bytes, expected {}", f.size)));
        }
        let mut data = vec![0u8; size as usize];
        s.read_exact(&mut data).await?;
        Ok(data)
    }
    let from_parent = match source {
        Source::Parent(s) => exchange(&mut *s.lock().await, f).await.ok(),
        Source::Launcher => None,
    };
    // A parent with a disk of its own keeps no cache to serve from: go to the launcher.
    let (data, from) = match from_parent {
        Some(data) => (data, "the parent node"),
        None => {
            let mut s = open_to_launcher(master, spec, rank, FETCH_FD)
                .await
                .map_err(|e| format!("{}: cannot fetch it from the launcher: {e}", f.path))?;
            let data = exchange(&mut s, f)
                .await
                .map_err(|e| format!("{}: from the launcher: {e}", f.path))?;
            (data, "the launcher")
        }
    };
    info!("staged {} ({} bytes) from {from}", f.path, data.len());
    if <[u8; 32]>::from(Sha256::digest(&data)) != f.hash {
        return Err(format!("{}: content does not match its hash", f.path));
    }
    Ok(data)
}

/// The cache entry of `f`, fetched from `source` unless the cache already holds it.
pub(crate) async fn ensure_cached(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let cached = d.cache.join(bproc_stage_hex(&f.hash));
    if cached.exists() {
        return Ok(cached);
    }
    let lock = FETCHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry(f.hash)
        .or_default()
        .clone();
    let _held = lock.lock().await;
    if cached.exists() {
        return Ok(cached);
    }
    let data = fetch(source, master, spec, rank, f).await?;
    let tmp = d.cache.join(format!(".{}.{rank}.{}", bproc_stage_hex(&f.hash), std::process::id()));
    std::fs::write(&tmp, &data)
        .and_then(|_| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode & 0o7777))
        })
        .and_then(|_| std::fs::rename(&tmp, &cached))
        .map_err(|e| format!("{}: cannot cache it: {e}", f.path))?;
    crate::info::STAGED_BYTES.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(cached)
}

/// Makes every file of `spec` present in a diskless node's root: from the cache when it holds
/// the content, else fetched from `source` and checked against its hash. Each file is a hard
/// link to its cache entry, put in place by rename so concurrent launches never see a partial
/// file.
pub(crate) async fn stage(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
) -> Result<(), String> {
    for f in &spec.files {
        let cached = ensure_cached(d, source, master, spec, rank, f).await?;
        let target = d.root.join(f.path.trim_start_matches('/'));
        let same = |a: &Path, b: &Path| {
            use std::os::unix::fs::MetadataExt;
            matches!((std::fs::metadata(a), std::fs::metadata(b)), (Ok(x), Ok(y)) if x.ino() == y.ino())
        };
        if !same(&target, &cached) {
            let parent = target.parent().unwrap_or(&d.root);
            let tmp = parent.join(format!(".bproc-{}-{rank}", std::process::id()));
            std::fs::create_dir_all(parent)
                .and_then(|_| {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::hard_link(&cached, &tmp)
                })
                .and_then(|_| std::fs::rename(&tmp, &target))
                .map_err(|e| format!("{}: cannot install it: {e}", f.path))?;
        }
    }
    Ok(())
}

fn bproc_stage_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts rank `rank` of `launch`; returns its pid. When the process is running, a task
/// waits for it and sends its [`Message::ProcExit`] through `report`.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    procs: &Procs,
    authority: Authority,
    diskless: Option<&Diskless>,
    source: &Source,
    master: Ipv4Addr,
    client_socket: Option<&str>,
    launch: u64,
    rank: u32,
    creds: Creds,
    spec: ProcSpec,
    report: impl Fn(Message) + Send + 'static,
) -> Result<i32, Refused> {
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
    let mut jail = None;
    if let Some(d) = diskless {
        let before = crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = stage(d, source, master, &spec, rank).await {
            warn!("launch {launch} rank {rank}: {e}");
            return refuse(bproc_proto::errno::EIO, e);
        }
        if crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed) != before {
            // The master learns the new cache total now, ahead of the spawn reply, rather
            // than at the next ping (a pong is the slave's machine report).
            report(Message::Pong { seq: 0, info: crate::node_info() });
        }
        let inside = d.root.join(spec.cwd.trim_start_matches('/'));
        let cwd = if inside.is_dir() { spec.cwd.as_str() } else { "/" };
        match (CString::new(d.root.as_os_str().as_encoded_bytes()), CString::new(cwd)) {
            (Ok(root), Ok(cwd)) => jail = Some(Jail { root, cwd }),
            _ => return refuse(EINVAL, "NUL in a path".into()),
        }
    }
    let mut cmd = std::process::Command::new(&spec.path);
    cmd.arg0(argv0).args(&spec.argv[1..]).env_clear().envs(spec.env_for_rank(rank));
    // The cluster API on this node is the slave's client socket, whatever the launcher's was.
    match client_socket {
        Some(path) => cmd.env("BPROC_SOCKET", path),
        None => cmd.env_remove("BPROC_SOCKET"),
    };
    if jail.is_none() {
        cmd.current_dir(if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" });
    }
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
    prepare_child(&mut cmd, spec.rlimits.clone(), jail, identity, spec.umask, files);
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
            Ok(s) => ExitStatus::from(s),
            Err(e) => {
                warn!("launch {launch} rank {rank}: wait failed: {e}");
                ExitStatus::Code(255)
            }
        };
        procs.lock().remove(&(launch, rank));
        report(Message::ProcExit { launch, rank, status });
    });
    Ok(pid)
}
