//! Ranks a ghost starts on the front end for its process, a launcher on a node
//! (`bpsh 1 bpsh master hostname`, `bproc_vexecmove` to `BPROC_NODE_MASTER` from a node).
//!
//! The master daemon runs no user code, and nothing else on the front end acts for a process
//! on a node; its ghost does: it is the user's own process there, with the user's uid, groups
//! and rights, so the rank can do exactly what the user could do on the front end. The rank is
//! started as the ghost's child in a process group of its own, with the caller's resource
//! limits and umask (the master put them in the spec, from the caller's kernel), its working
//! directory if the front end has it (else `/`), and `BPROC_SOCKET` naming the master's socket.
//! Its forwarded fds connect back to the launcher on the node with the launch's token and the
//! rank, as a node's slave connects them; files (`-O`, I/O lists) are opened on the front end.
//!
//! The ghost reports the pid ([`bproc_proto::Message::RankSpawned`]) and, when it reaps the
//! child, its end ([`bproc_proto::Message::ProcExit`] with the launch and rank), which the
//! master passes to the launcher like a node's report.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use bproc_proto::{conn, errno, IoSpec, ProcSpec};

/// The ranks started and not yet reaped: pid → (launch, rank).
static STARTED: Mutex<Option<HashMap<i32, (u64, u32)>>> = Mutex::new(None);

/// The launch and rank of `pid`, a child that ended, if it was a rank; forgets it.
pub fn ended(pid: i32) -> Option<(u64, u32)> {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).as_mut()?.remove(&pid)
}

/// How long connecting back to the launcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts rank `rank` of `launch` from `spec`: its pid, or a negated errno.
pub fn start(launch: u64, rank: u32, spec: &ProcSpec) -> i32 {
    match spawn(rank, spec) {
        Ok(pid) => {
            STARTED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(pid, (launch, rank));
            pid
        }
        Err(e) => {
            eprintln!("bpghost: cannot start {} for rank {rank}: {e}", spec.path);
            -e.raw_os_error().unwrap_or(errno::EIO)
        }
    }
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(errno::EINVAL))
}

/// A TCP connection to the launcher (`ip`, or this machine), opened with `header`.
fn connect(ip: Option<Ipv4Addr>, port: u16, header: &[u8]) -> std::io::Result<OwnedFd> {
    let to = SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::LOCALHOST), port);
    let mut s = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    let _ = s.set_nodelay(true);
    s.write_all(header)?;
    Ok(OwnedFd::from(s))
}

/// What fd `fd` is to be: an open fd, a file to open in the child, or nothing (closed).
enum Opened {
    Fd(OwnedFd),
    File(bproc_sys::FdFile),
    Closed,
}

fn open(io: &IoSpec, fd: i32, rank: u32, spec: &ProcSpec) -> std::io::Result<Opened> {
    let what = u8::try_from(fd).unwrap_or(u8::MAX);
    Ok(match io {
        IoSpec::Forward => {
            Opened::Fd(connect(spec.io_ip, spec.io_port, &conn::header(&spec.token, rank, what))?)
        }
        IoSpec::Rejoin { ip, port, token, rank } => {
            Opened::Fd(connect(*ip, *port, &conn::header(token, *rank, what))?)
        }
        IoSpec::Connect { ip, port, send_info } => {
            // The pid is not known before the process starts: 0, as for a local rank.
            let info = [0i32.to_ne_bytes(), fd.to_ne_bytes()].concat();
            Opened::Fd(connect(ip.or(spec.io_ip), *port, if *send_info { &info } else { &[] })?)
        }
        IoSpec::Null => Opened::Fd(OwnedFd::from(
            std::fs::OpenOptions::new().read(fd == 0).write(fd != 0).open("/dev/null")?,
        )),
        IoSpec::File(p) if fd == 0 => Opened::File(bproc_sys::FdFile::read(fd, cstr(p)?)),
        IoSpec::File(p) => Opened::File(bproc_sys::FdFile::write(fd, cstr(p)?)),
        IoSpec::Open { path, flags, mode, offset } => Opened::File(bproc_sys::FdFile {
            fd,
            path: cstr(path)?,
            flags: *flags,
            mode: *mode,
            offset: *offset,
        }),
        IoSpec::Closed => Opened::Closed,
    })
}

fn spawn(rank: u32, spec: &ProcSpec) -> std::io::Result<i32> {
    let mut stdio: [Option<OwnedFd>; 3] = [None, None, None];
    let mut fds: Vec<(i32, OwnedFd)> = Vec::new();
    let mut files: Vec<bproc_sys::FdFile> = Vec::new();
    let wanted = (0..3).map(|fd| (fd, spec.io.get(fd as usize).unwrap_or(&IoSpec::Null), false));
    let listed = spec.fds.iter().map(|f| (f.fd, &f.io, f.optional));
    for (fd, io, optional) in wanted.chain(listed) {
        // A later entry for the same fd replaces an earlier one.
        fds.retain(|(n, _)| *n != fd);
        files.retain(|f| f.fd != fd);
        if let Some(s) = usize::try_from(fd).ok().and_then(|i| stdio.get_mut(i)) {
            *s = None;
        }
        match (open(io, fd, rank, spec), usize::try_from(fd).ok().and_then(|i| stdio.get_mut(i))) {
            (Ok(Opened::Fd(o)), Some(s)) => *s = Some(o),
            (Ok(Opened::Fd(o)), None) => fds.push((fd, o)),
            (Ok(Opened::File(f)), _) => files.push(f),
            (Ok(Opened::Closed), _) => {}
            (Err(_), _) if optional => {}
            (Err(e), _) => return Err(e),
        }
    }
    // The node's socket means nothing here: the master's, as this ghost has it.
    let socket = std::env::var("BPROC_SOCKET").ok();
    let rank = format!("{rank:07}");
    let envp = bproc_sys::CStrings::joined(spec.env_where(&rank, socket.as_deref()))
        .map_err(std::io::Error::other)?;
    let cwd = if std::path::Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" };
    let req = bproc_sys::SpawnSpec {
        path: cstr(&spec.path)?,
        argv: spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        envp,
        cwd: Some(cstr(cwd)?),
        stdio,
        fds,
        limits: spec.rlimits.clone(),
        umask: spec.umask,
        files,
        ..Default::default()
    };
    bproc_sys::spawn(&req)
}
