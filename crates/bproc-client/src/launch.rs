//! Process placement from a program (libbproc's `bproc_vexecmove`, `bproc_execmove` and
//! `bproc_rexec`): start a program on nodes, each remote process with a ghost on the front
//! end, so the caller waits for, signals and sees it as a local child.
//!
//! The program runs from the node's own filesystem (as `bproc_rexec` does). By default (BProc's
//! "weak" forwarding) its standard output and error come back to the caller's own:
//! the node connects them to the process's ghost, which writes them to the caller's stdout
//! and stderr, each in order; stdin is `/dev/null`. An explicit [`IoList`] gives it files on
//! the node and TCP connections instead.
//!
//! A diskless node has none of the front end's files: for a launch that includes one, the
//! program, its interpreters and libraries are gathered by hash (`bproc-stage`, as bpsh does)
//! into the spec, and the caller serves them (`conn::FETCH` connections) while the launch
//! is under way; each node fetches what its cache lacks.

use std::os::unix::process::CommandExt;
use std::process::Command;

use bproc_proto::{FdIo, IoSpec, Message, ProcSpec, MAX_FD, MAX_FD_IO, NODE_MASTER};

use crate::{BprocError, Client};

/// A program to start: its path, arguments (`argv[0]` first) and environment (`NAME=value`;
/// `BPROC_RANK=XXXXXXX` becomes each process's rank, `%07d`, on the nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    /// Path of the program (relative paths are taken from the current directory).
    pub path: String,
    /// Arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Its fds on the node.
    pub io: IoList,
}

/// What a remote process's fds are (libbproc's `bproc_io_t` lists).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IoList {
    /// `/dev/null` as stdin; stdout and stderr forwarded to the caller's (through the
    /// ghost, which relays them).
    #[default]
    Default,
    /// These fds (at most 16, numbered 0 to 1023) and no others; an empty list leaves the
    /// process with no fds at all.
    Exactly(Vec<FdIo>),
}

impl IoList {
    pub(crate) fn check(&self) -> Result<(), BprocError> {
        let IoList::Exactly(v) = self else { return Ok(()) };
        let bad = v.len() > MAX_FD_IO || v.iter().any(|f| !(0..=MAX_FD).contains(&f.fd));
        if bad {
            return Err(BprocError::Remote {
                code: bproc_proto::errno::EINVAL,
                message: format!(
                    "an I/O list holds at most {MAX_FD_IO} entries, for fds 0 to {MAX_FD}"
                ),
            });
        }
        Ok(())
    }
}

/// The null device's number, to tell an fd that is `/dev/null` ([`is_null`]).
pub fn null_device() -> Option<u64> {
    nix::sys::stat::stat("/dev/null").ok().map(|s| s.st_rdev)
}

/// Whether this process's `fd` is the null device (whose number is `null`, from
/// [`null_device`]) or closed (a batch job's `< /dev/null` or `> /dev/null`): a remote
/// process's fd is then `/dev/null` too, which reads the same (end of file at once) or keeps
/// the same (nothing), and costs no connection per process.
pub fn is_null(fd: i32, null: Option<u64>) -> bool {
    use nix::sys::stat::{fstat, SFlag};
    let Ok(st) = fstat(fd) else { return true };
    let char_dev = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    char_dev && null == Some(st.st_rdev)
}

/// The caller's umask.
pub fn current_umask() -> u32 {
    // umask(2) can only be read by setting it; put it back at once.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits()
}

/// The caller's resource limits, which travel with its processes as BProc's did with its
/// image: (resource number, soft, hard).
pub fn current_rlimits() -> Vec<(u32, u64, u64)> {
    use nix::sys::resource::{getrlimit, Resource};
    [
        Resource::RLIMIT_CPU,
        Resource::RLIMIT_FSIZE,
        Resource::RLIMIT_DATA,
        Resource::RLIMIT_STACK,
        Resource::RLIMIT_CORE,
        Resource::RLIMIT_NOFILE,
        Resource::RLIMIT_AS,
        Resource::RLIMIT_NPROC,
        Resource::RLIMIT_MEMLOCK,
        Resource::RLIMIT_LOCKS,
        Resource::RLIMIT_SIGPENDING,
        Resource::RLIMIT_MSGQUEUE,
        Resource::RLIMIT_NICE,
        Resource::RLIMIT_RTPRIO,
        Resource::RLIMIT_RTTIME,
    ]
    .into_iter()
    .filter_map(|r| getrlimit(r).ok().map(|(soft, hard)| (r as u32, soft, hard)))
    .collect()
}

/// `E2BIG`, with the sizes and the limit, for a spec one launch cannot carry.
fn fits(spec: &ProcSpec) -> Result<(), BprocError> {
    match spec.too_large() {
        Some(message) => Err(BprocError::Remote { code: bproc_proto::errno::E2BIG, message }),
        None => Ok(()),
    }
}

fn spec_of(p: &Program) -> ProcSpec {
    let cwd = std::env::current_dir().map(|d| d.to_string_lossy().into_owned());
    let path = if p.path.starts_with('/') {
        p.path.clone()
    } else {
        format!("{}/{}", cwd.as_deref().unwrap_or(""), p.path)
    };
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).expect("the kernel's random source failed");
    ProcSpec {
        path,
        argv: p.argv.clone(),
        env: p.env.clone(),
        cwd: cwd.unwrap_or_else(|_| "/".into()),
        umask: current_umask(),
        io: match &p.io {
            IoList::Default => vec![IoSpec::Null, IoSpec::Forward, IoSpec::Forward],
            IoList::Exactly(_) => vec![IoSpec::Closed; 3],
        },
        fds: match &p.io {
            IoList::Default => Vec::new(),
            IoList::Exactly(v) => v.clone(),
        },
        io_port: 0,
        io_ip: None,
        token,
        rlimits: current_rlimits(),
        files: Vec::new(),
        image: None,
        image_files: None,
        image_len: None,
    }
}

/// Starts `prog` once on each of `nodes` (duplicates allowed; rank = index). Returns, per
/// rank, the process's pid (> 0) or its negated error (`-BE_NODEDOWN`, `-EPERM`...). On the
/// front end every remote process gets a ghost, a child of the caller whose pid is returned,
/// so `waitpid` on it gives the remote exit status. A rank on [`NODE_MASTER`] is a local
/// child of the caller.
///
/// ```no_run
/// use bproc_client::launch::{vexecmove, Program};
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::Pid;
///
/// let prog = Program {
///     path: "/bin/sh".into(),
///     argv: vec!["sh".into(), "-c".into(), "exit $((1$BPROC_RANK - 10000000))".into()],
///     env: vec!["BPROC_RANK=XXXXXXX".into()],
///     ..Default::default()
/// };
/// for (rank, pid) in vexecmove(&[0, 1, 2], &prog)?.into_iter().enumerate() {
///     if pid <= 0 {
///         println!("rank {rank}: {}", bproc_client::strerror(pid));
///     } else if let Ok(WaitStatus::Exited(_, code)) = waitpid(Pid::from_raw(pid), None) {
///         assert_eq!(code as usize, rank);
///     }
/// }
/// # Ok::<(), bproc_client::BprocError>(())
/// ```
pub fn vexecmove(nodes: &[i32], prog: &Program) -> Result<Vec<i32>, BprocError> {
    prog.io.check()?;
    let mut client = Client::connect()?;
    let place = client.place()?;
    let ghost = place.ghost;
    let mut spec = spec_of(prog);
    let staged = stage_for_diskless(&mut client, nodes, &mut spec)?;
    fits(&spec)?;
    let comm = crate::ghost::comm_of(&spec.path);
    let plain = |g| ghosts_for(g, &comm, nodes).map(|(made, sent)| (made, Vec::new(), sent));
    let (ghosts, io_ports, sent) = match &ghost {
        Some(g) if spec.io.contains(&IoSpec::Forward) => {
            match relays_for(g, &comm, nodes, &spec.token) {
                Ok(made) => made,
                Err(e) if crate::ghost::killed(&e).is_some() => return Err(killed(e)),
                Err(_) => {
                    // No relays: the ranks run with ghosts that do not relay, and no output.
                    spec.io = vec![IoSpec::Null; 3];
                    plain(g).map_err(killed)?
                }
            }
        }
        Some(g) => plain(g).map_err(killed)?,
        None => {
            // No ghosts (a launch from a node): nobody to relay to.
            if spec.io.contains(&IoSpec::Forward) {
                spec.io = vec![IoSpec::Null; 3];
            }
            (vec![0; nodes.len()], Vec::new(), None)
        }
    };
    let launch = Message::Launch {
        nodes: nodes.to_vec(),
        spec: spec.clone(),
        ghosts: ghosts.clone(),
        io_ports,
    };
    // The ghosts hear once the launch is sent: if this process is killed before, they end
    // (no process will ever start for them). The pipe closes as this call returns, the
    // word in it: each ghost wakes once to stop watching.
    let told = || sent.iter().for_each(crate::ghost::LaunchSent::sent);
    let reply = match &staged {
        Some(files) => serve_files(files, &spec.token, || client.request_telling(&launch, told)),
        None => client.request_telling(&launch, told),
    };
    let mut pids = match reply {
        Ok(Message::Launched { pids }) if pids.len() == nodes.len() => pids,
        other => {
            crate::ghost::discard(ghosts);
            return match other {
                Err(e) => Err(e),
                Ok(m) => Err(BprocError::Unexpected(m.name())),
            };
        }
    };
    for (rank, pid) in pids.iter_mut().enumerate() {
        if nodes[rank] == NODE_MASTER && place.node != NODE_MASTER {
            // The front end, from a node: the caller's ghost started it there, or the master
            // said why not (the pid or the error is the master's).
        } else if nodes[rank] == NODE_MASTER {
            *pid = start_here(&spec, rank)
                .unwrap_or_else(|e| -bproc_sys::spawn_errno(&e).unwrap_or(5));
        } else if *pid <= 0 {
            crate::ghost::discard([ghosts[rank]]);
        } else if ghosts[rank] > 0 {
            *pid = ghosts[rank];
        }
    }
    // The ghosts stand for the processes from now on; the connection may close.
    Ok(pids)
}

/// Files served to diskless nodes by hash, on a listener of their own.
struct Staged {
    listener: std::net::TcpListener,
    files: std::collections::HashMap<[u8; 32], std::path::PathBuf>,
}

/// When one of `nodes` is diskless, gathers the program's files into `spec` and opens the
/// listener nodes fetch them from (the spec's I/O port); `None` otherwise.
/// Names `files` in `spec` for diskless nodes to fetch by hash; returns where each hash's
/// content is read from when a node asks.
pub fn stage_into(
    spec: &mut ProcSpec,
    files: Vec<bproc_stage::StagedFile>,
) -> std::collections::HashMap<[u8; 32], std::path::PathBuf> {
    let mut by_hash = std::collections::HashMap::new();
    for f in files {
        spec.files.push(bproc_proto::StagedRef {
            path: f.path.to_string_lossy().into_owned(),
            mode: f.mode,
            size: f.size,
            hash: f.hash,
        });
        by_hash.insert(f.hash, f.path);
    }
    by_hash
}

fn stage_for_diskless(
    client: &mut Client,
    nodes: &[i32],
    spec: &mut ProcSpec,
) -> Result<Option<Staged>, BprocError> {
    let table = client.nodes_of(nodes)?;
    let diskless = table.iter().any(|n| n.info.as_ref().is_some_and(|i| i.diskless));
    if !diskless {
        return Ok(None);
    }
    let ld = std::env::var("LD_LIBRARY_PATH").ok();
    let gathered =
        bproc_stage::closure(std::path::Path::new(&spec.path), ld.as_deref()).map_err(|e| {
            BprocError::Remote {
                code: bproc_proto::errno::ENOENT,
                message: format!("cannot stage {} for diskless nodes: {e}", spec.path),
            }
        })?;
    let files = stage_into(spec, gathered);
    let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    spec.io_port = listener.local_addr()?.port();
    Ok(Some(Staged { listener, files }))
}

/// Runs `request` while serving `staged` to the nodes that fetch a file (the launch header
/// with `token` and `conn::FETCH`, then the file's hash; the answer is the size, u64
/// big-endian, and the bytes), each on a thread of its own.
fn serve_files<T>(staged: &Staged, token: &[u8; 16], request: impl FnOnce() -> T) -> T {
    use bproc_proto::conn;
    use std::io::{Read, Write};
    let done = std::sync::atomic::AtomicBool::new(false);
    let _ = staged.listener.set_nonblocking(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = staged.listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    continue;
                };
                scope.spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let mut head = [0u8; conn::HEADER_LEN];
                    let mut hash = [0u8; 32];
                    if s.read_exact(&mut head).is_err() || s.read_exact(&mut hash).is_err() {
                        return;
                    }
                    let (got, _, what) = conn::parse(&head);
                    if got != *token || what != conn::FETCH {
                        return;
                    }
                    let Some(mut f) =
                        staged.files.get(&hash).and_then(|p| std::fs::File::open(p).ok())
                    else {
                        return;
                    };
                    let len = f.metadata().map_or(0, |m| m.len());
                    if s.write_all(&len.to_be_bytes()).is_ok() {
                        let _ = std::io::copy(&mut f, &mut s);
                    }
                });
            }
        });
        let answer = request();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answer
    })
}

/// A ghost for each rank not on the front end (0 for the others, and for all when the ghost
/// program fails: the ranks then run without ghosts), with the word to give them once the
/// launch is sent; the error when ghosts were killed as they were made
/// ([`crate::ghost::killed`]), as the launch must then not go on.
pub fn ghosts_for(
    program: &str,
    comm: &str,
    nodes: &[i32],
) -> std::io::Result<(Vec<i32>, Option<crate::ghost::LaunchSent>)> {
    let remote = nodes.iter().filter(|n| **n != NODE_MASTER).count();
    let (made, sent) = match crate::ghost::spawn(program, comm, remote, None) {
        Err(e) if crate::ghost::killed(&e).is_some() => return Err(e),
        made => made.unwrap_or_default(),
    };
    let made = made.into_iter().map(|(pid, _)| pid).collect();
    Ok((rank_ghosts(nodes, made), sent))
}

/// Each rank's ghost, from the ghosts made for the ranks not on the front end (0 for the
/// others, and for those beyond the ghosts made).
fn rank_ghosts(nodes: &[i32], made: Vec<i32>) -> Vec<i32> {
    let mut made = made.into_iter();
    nodes.iter().map(|&n| if n == NODE_MASTER { 0 } else { made.next().unwrap_or(0) }).collect()
}

/// A launch whose ghosts were killed as they were made, as the caller sees it.
fn killed(e: std::io::Error) -> BprocError {
    BprocError::Remote { code: bproc_proto::errno::EINTR, message: e.to_string() }
}

/// [`ghosts_for`], the ghosts keeping the caller's stdout and stderr (bpsh's: a process that
/// moves back to the front end into its ghost writes there, or, when the caller forwards its
/// ranks' output to a listener, `rejoin`'s fds connect there again as the same rank). The
/// caller forks into its ghosts ([`crate::ghost::fork_keeping_output`]): for a small launcher,
/// which says when it has sent the launch through the [`crate::ghost::LaunchSent`] it gets
/// with light ghosts. Any failure is the caller's to tell (the ranks may run without ghosts,
/// unless they were killed: [`crate::ghost::killed`]).
pub fn ghosts_keeping_output(
    program: &str,
    comm: &str,
    nodes: &[i32],
    rejoin: Option<crate::ghost::Rejoin>,
) -> std::io::Result<(Vec<i32>, Option<crate::ghost::LaunchSent>)> {
    let remote = nodes.iter().filter(|n| **n != NODE_MASTER).count();
    let rejoin = rejoin.map(|r| crate::ghost::Rejoin {
        ranks: (0..nodes.len() as u32).filter(|&i| nodes[i as usize] != NODE_MASTER).collect(),
        ..r
    });
    let (made, word) = crate::ghost::fork_keeping_output(program, comm, remote, rejoin.as_ref())?;
    Ok((rank_ghosts(nodes, made), word))
}

/// Relaying ghosts for each rank not on the front end, with the ports the nodes connect the
/// ranks' output to (0 for the others) and the word to give them once the launch is sent;
/// the error when the ghost program fails.
#[allow(clippy::type_complexity)]
fn relays_for(
    program: &str,
    comm: &str,
    nodes: &[i32],
    token: &[u8; 16],
) -> std::io::Result<(Vec<i32>, Vec<u16>, Option<crate::ghost::LaunchSent>)> {
    let remote = nodes.iter().filter(|n| **n != NODE_MASTER).count();
    let (made, sent) = crate::ghost::spawn(program, comm, remote, Some(token))?;
    let mut made = made.into_iter();
    let (ghosts, ports) = nodes
        .iter()
        .map(|&n| if n == NODE_MASTER { (0, 0) } else { made.next().unwrap_or((0, 0)) })
        .unzip();
    Ok((ghosts, ports, sent))
}

/// Rank `rank` on the front end: a plain child of the caller, with the caller's stdio or the
/// spec's I/O list.
fn start_here(spec: &ProcSpec, rank: usize) -> std::io::Result<i32> {
    if !spec.fds.is_empty() || spec.io.first() == Some(&IoSpec::Closed) {
        return start_here_with_fds(spec, rank);
    }
    let mut cmd = Command::new(&spec.path);
    cmd.arg0(spec.argv.first().map_or(spec.path.as_str(), |a| a.as_str()))
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env_for_rank(rank as u32));
    Ok(cmd.spawn()?.id() as i32)
}

/// [`start_here`] for an explicit I/O list: the same rules as on a node, with `0.0.0.0`
/// meaning this machine and a pid of 0 in `SEND_INFO` headers (the pid is not known before
/// the process starts).
fn start_here_with_fds(spec: &ProcSpec, rank: usize) -> std::io::Result<i32> {
    use std::ffi::CString;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    let cstr =
        |s: &str| CString::new(s).map_err(|_| std::io::Error::other(format!("NUL in {s:?}")));
    let mut stdio: [Option<OwnedFd>; 3] = [None, None, None];
    let mut fds: Vec<(i32, OwnedFd)> = Vec::new();
    let mut files: Vec<bproc_sys::FdFile> = Vec::new();
    for f in &spec.fds {
        fds.retain(|(n, _)| *n != f.fd);
        files.retain(|x| x.fd != f.fd);
        if let Some(s) = usize::try_from(f.fd).ok().and_then(|i| stdio.get_mut(i)) {
            *s = None;
        }
        let opened = match &f.io {
            IoSpec::Open { path, flags, mode, offset } => {
                let path = cstr(path)?;
                files.push(bproc_sys::FdFile {
                    fd: f.fd,
                    path,
                    flags: *flags,
                    mode: *mode,
                    offset: *offset,
                });
                continue;
            }
            IoSpec::Connect { ip, port, send_info } => {
                let to =
                    std::net::SocketAddrV4::new(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST), *port);
                std::net::TcpStream::connect(to).and_then(|mut s| {
                    if *send_info {
                        s.write_all(&[0i32.to_ne_bytes(), f.fd.to_ne_bytes()].concat())?;
                    }
                    Ok(OwnedFd::from(s))
                })
            }
            IoSpec::Null => std::fs::OpenOptions::new()
                .read(f.fd == 0)
                .write(f.fd != 0)
                .open("/dev/null")
                .map(OwnedFd::from),
            IoSpec::Closed => continue,
            IoSpec::Forward | IoSpec::File(_) | IoSpec::Rejoin { .. } => {
                Err(std::io::Error::from_raw_os_error(bproc_proto::errno::EINVAL))
            }
        };
        match (opened, usize::try_from(f.fd).ok().and_then(|i| stdio.get_mut(i))) {
            (Ok(fd), Some(s)) => *s = Some(fd),
            (Ok(fd), None) => fds.push((f.fd, fd)),
            (Err(_), _) if f.optional => {}
            (Err(e), _) => return Err(e),
        }
    }
    let env = spec.env_for_rank(rank as u32);
    let req = bproc_sys::SpawnSpec {
        path: cstr(&spec.path)?,
        argv: spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        envp: bproc_sys::CStrings::joined(env.iter().map(|(k, v)| [k.as_str(), "=", v.as_str()]))
            .map_err(std::io::Error::other)?,
        cwd: None,
        stdio,
        fds,
        limits: Vec::new(),
        jail: None,
        identity: None,
        umask: spec.umask,
        files,
        set_tid: None,
        trace: false,
        exec_fd: None,
        default_signals: false,
    };
    bproc_sys::spawn(&req)
}

/// Replaces the caller with `prog` running on `node`: the caller becomes the process's ghost
/// (same pid, same parent). Returns only on failure.
pub fn execmove(node: i32, prog: &Program) -> BprocError {
    let run = || -> Result<std::convert::Infallible, BprocError> {
        prog.io.check()?;
        let mut client = Client::connect()?;
        let Some(ghost) = client.place()?.ghost else {
            return Err(BprocError::Remote {
                code: bproc_proto::errno::ENOSYS,
                message: "no ghost program on the front end (bpghost beside bpmaster)".into(),
            });
        };
        let spec = spec_of(prog);
        fits(&spec)?;
        let me = std::process::id() as i32;
        // The caller becomes the ghost, which relays the output from this listener to the
        // caller's own stdout and stderr.
        let relay = if spec.io.contains(&IoSpec::Forward) {
            Some(std::net::TcpListener::bind("0.0.0.0:0")?)
        } else {
            None
        };
        let io_ports = match &relay {
            Some(l) => vec![l.local_addr()?.port()],
            None => Vec::new(),
        };
        let launch =
            Message::Launch { nodes: vec![node], spec: spec.clone(), ghosts: vec![me], io_ports };
        let pid = match client.request(&launch)? {
            Message::Launched { pids } if pids.len() == 1 => pids[0],
            m => return Err(BprocError::Unexpected(m.name())),
        };
        if pid <= 0 {
            return Err(BprocError::Remote { code: -pid, message: crate::strerror(-pid) });
        }
        let mut cmd = Command::new(&ghost);
        cmd.arg0(format!("[{}]", crate::ghost::comm_of(&spec.path)))
            .env_clear()
            .env("BPROC_SOCKET", crate::socket_path());
        if let Some(l) = &relay {
            use std::os::fd::AsRawFd;
            nix::fcntl::fcntl(
                l.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(|e| BprocError::Io(e.into()))?;
            cmd.env("BPROC_GHOST_IO", crate::migrate::relay_env(&spec.token, l.as_raw_fd()));
        }
        let err = cmd.exec();
        Err(BprocError::Io(err))
    };
    match run() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
