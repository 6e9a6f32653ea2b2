//! bpsh: run a program on cluster nodes, with BProc's options, output formats and exit
//! rules.
//!
//! # How a run goes
//! 1. The command is resolved on the master (`$PATH`, as BProc's `which()`); the node spec is
//!    evaluated against the master's node table.
//! 2. bpsh listens on the master's slave-facing address and sends one `Launch` to the master,
//!    with a fresh random token. The master checks each node's permissions against the
//!    caller's kernel-given identity and asks every slave at once.
//! 3. Each slave connects the forwarded fds of its process straight back to bpsh (presenting
//!    the token, the rank and the fd number), then starts the process as the caller. Output
//!    therefore never passes through a daemon, and TCP flow control bounds memory: bpsh reads
//!    into one buffer per stream and a bounded queue, so a node printing gigabytes blocks on
//!    its socket instead of growing bpsh.
//! 4. bpsh replicates its stdin to every node (the slowest reader sets the pace), prints
//!    output in the chosen format, and relays signals it receives (`kill`, Ctrl-C) to every
//!    remote process. It ends when every process has exited and its output is drained; a
//!    node lost mid-run ends its process as killed, and says so on stderr at once.
//! 5. If bpmaster goes away (a restart), the jobs go on: bpsh follows each remote process
//!    through its ghost, its own child, which waits for the master to come back and ends
//!    with the process's status; signals go to the ghosts, which pass them on.
//! 6. bpsh reaps each ghost as it ends (a wait on its process group at each `SIGCHLD`) and
//!    waits for every one before it exits, so no ghost outlives bpsh. A ghost that ends
//!    without the master reporting its process (the process moved back to the front end
//!    into its ghost, and ended there) gives the rank its own status.
//!    The ghosts keep bpsh's stdout and stderr, where such a process then writes.
//!
//! Exit status: the highest exit code of the remote processes; 255 if any was killed or
//! lost (BProc's rule). Nodes that could not start the program print `NODE: reason` and
//! make the status at least 1, as pdsh and clush do.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod args;
pub mod output;
pub mod report;

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bproc_client::launch::{is_null, null_device};
use bproc_client::{nodespec, strerror, Client};
use bproc_link::{read_frame, write_frame};
use bproc_proto::{ExitStatus, IoSpec, Message, ProcSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use args::{Args, Stop, USAGE};
use output::{divider, Formatter, STDERR, STDOUT};

fn is_executable(p: &Path) -> bool {
    p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Resolves the command on the master as BProc's `which()`: a name with a `/` is used if
/// executable; otherwise `$PATH` (default `:/bin:/usr/bin`, an empty element meaning the
/// current directory) is searched. The result is absolute, for use on the node.
pub fn which(cmd: &OsStr) -> Option<PathBuf> {
    let abs = |p: PathBuf| -> Option<PathBuf> {
        if p.is_absolute() {
            Some(p)
        } else {
            Some(std::env::current_dir().ok()?.join(p))
        }
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return is_executable(&p).then(|| abs(p)).flatten();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| ":/bin:/usr/bin".into());
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let candidate = dir.join(cmd);
        if is_executable(&candidate) {
            return abs(candidate);
        }
    }
    None
}

/// Why [`which`] found nothing to run for `cmd`, as bpsh says it: a file that is there but
/// not executable (or a directory) is named as such; only a name found nowhere is "command
/// not found".
pub fn not_runnable(cmd: &OsStr) -> String {
    let shown = cmd.to_string_lossy();
    let why = |p: &Path| {
        if p.is_dir() {
            Some(format!("{}: is a directory", p.display()))
        } else if p.exists() {
            Some(format!("{}: not executable (Permission denied)", p.display()))
        } else {
            None
        }
    };
    if cmd.as_bytes().contains(&b'/') {
        return why(Path::new(cmd))
            .unwrap_or_else(|| format!("{shown}: No such file or directory"));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| ":/bin:/usr/bin".into());
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let candidate = dir.join(cmd);
        if candidate.is_file() {
            if let Some(w) = why(&candidate) {
                return w;
            }
        }
    }
    format!("{shown}: command not found")
}

/// Runs bpsh with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let a = match args::parse(args) {
        Ok(a) => a,
        Err(Stop::Version) => {
            println!("bpsh version {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(Stop::Help) => {
            print!("{USAGE}");
            return ExitCode::FAILURE;
        }
        Err(Stop::Usage(msg)) => {
            eprintln!("bpsh: {msg}");
            print!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    execute(a)
}

/// Runs parsed arguments: resolve, launch, forward, report.
fn execute(a: Args) -> ExitCode {
    match prepare(&a) {
        Ok(Some((p, conn))) => {
            // One thread: bpsh waits on sockets and pipes and copies bytes, which one core
            // keeps up with at 1024 ranks, and starting worker threads and handing wakeups
            // between them cost a single launch about a millisecond.
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("bpsh: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = rt.block_on(run(a, p, conn));
            // Reading our stdin may sit in a blocking thread: do not wait for it.
            rt.shutdown_background();
            code
        }
        Ok(None) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bpsh: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `brsh HOST [options] command...`: BProc's rsh-compatible entry, for programs that expect
/// `rsh`/`ssh` (MPI launchers). HOST is `3`, `n3`, `.3`, `master`, or this machine's host
/// name; the words of the command are joined with spaces and run by `/bin/sh -c` on the node,
/// as a remote shell would, so quoting made for rsh or ssh (`'"/path/proxy"' --port x:1`)
/// means the same. ssh-style options are accepted before HOST and after it.
pub fn brsh_main(args: Vec<OsString>) -> ExitCode {
    const USAGE: &str = "usage: brsh [-l user] [-n] [-x] HOST command...\n       brsh -V|--version";
    let mut host: Option<String> = None;
    let mut no_stdin = false;
    let mut words: Vec<OsString> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy().into_owned();
        if host.is_some() && !words.is_empty() {
            words.push(arg);
            continue;
        }
        match s.as_str() {
            "-V" | "--version" if host.is_none() => {
                println!("brsh version {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-n" => no_stdin = true,
            // ssh/rsh options with a value; -l names a user, which must be ourselves.
            "-l" => {
                let user = it.next().map(|u| u.to_string_lossy().into_owned()).unwrap_or_default();
                let me = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten();
                if me.is_none_or(|m| m.name != user)
                    && user.parse::<u32>().ok() != Some(nix::unistd::getuid().as_raw())
                {
                    eprintln!("brsh: -l {user}: processes run as the caller; run brsh as {user}");
                    return ExitCode::from(255);
                }
            }
            "-p" | "-o" | "-i" | "-F" | "-E" | "-b" | "-c" | "-J" | "-m" | "-S" => {
                it.next();
            }
            "--" if host.is_some() => words.extend(it.by_ref()),
            _ if s.starts_with('-') && s.len() > 1 => {} // -x, -T, -t, -oKey=value ...
            _ if host.is_none() => host = Some(s),
            _ => words.push(arg),
        }
    }
    let (Some(host), false) = (host, words.is_empty()) else {
        eprintln!("{USAGE}\n(an interactive login is not supported: give a command)");
        return ExitCode::from(255);
    };
    let joined = words.iter().map(|w| w.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let local = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
    let node = match bproc_client::nodespec::parse_node_name(&host) {
        Some(n) => n,
        None if local.as_deref() == Some(host.as_str()) || host == "localhost" => {
            bproc_client::NODE_MASTER
        }
        None => {
            eprintln!("brsh: {host}: not a node (use 3, n3, .3, master or this host's name)");
            return ExitCode::from(255);
        }
    };
    // `master` from a node is the front end, where this process's ghost starts the command.
    let named_front_end =
        bproc_client::nodespec::parse_node_name(&host) == Some(bproc_client::NODE_MASTER);
    let from_node = named_front_end
        && Client::connect()
            .and_then(|mut c| c.place())
            .is_ok_and(|p| p.node != bproc_client::NODE_MASTER);
    if node == bproc_client::NODE_MASTER && !from_node {
        // The front end itself: run here, as rsh to the local host would.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(&joined);
        if no_stdin {
            cmd.stdin(std::process::Stdio::null());
        }
        return match cmd.status() {
            Ok(st) => ExitCode::from(st.code().map_or(255, |c| c as u8)),
            Err(e) => {
                eprintln!("brsh: /bin/sh: {e}");
                ExitCode::from(255)
            }
        };
    }
    execute(Args {
        spec: if from_node { "master".into() } else { node.to_string() },
        no_stdin,
        buffer: 4096,
        command: vec!["/bin/sh".into(), "-c".into(), joined.into()],
        ..Args::default()
    })
}

/// What a run needs from the master before it starts.
struct Prepared {
    nodes: Vec<i32>,
    /// The ghost program, when remote processes get ghosts.
    ghost: Option<String>,
    spec: ProcSpec,
    listen_ip: Ipv4Addr,
    /// The node bpsh runs on ([`bproc_client::NODE_MASTER`] on the front end).
    here: i32,
    /// Files diskless nodes may fetch, by content hash.
    staged: Arc<std::collections::HashMap<[u8; 32], PathBuf>>,
}

/// Most nodes a spec may name by number for bpsh to ask the master for their entries alone.
const FEW_NODES: usize = 256;

/// Resolves the command and the nodes, with the master's connection the launch goes on with;
/// `Ok(None)` when a message was printed.
fn prepare(
    a: &Args,
) -> Result<Option<(Prepared, std::os::unix::net::UnixStream)>, bproc_client::BprocError> {
    let cmd = &a.command[0];
    let Some(path) = which(cmd) else {
        eprintln!("bpsh: {}", not_runnable(cmd));
        return Ok(None);
    };
    let mut client = Client::connect()?;
    // Nodes named by number need only their own entries, not a large cluster's table.
    let (table, place) = match nodespec::numbered(&a.spec, FEW_NODES) {
        Some(numbers) => client.nodes_of_and_place(&numbers)?,
        None => client.nodes_and_place()?,
    };
    let sel = match nodespec::filter(&table, &a.spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", e.bproc_message());
            return Ok(None);
        }
    };
    for n in &sel.unconfigured {
        eprintln!("bpsh: node {n} is not configured");
    }
    if sel.nodes.is_empty() {
        eprintln!("bpsh: \"{}\" selects no node; nothing to run", a.spec);
        return Ok(None);
    }
    let listen_ip = place.ip;
    let mut strings = Vec::with_capacity(a.command.len());
    for arg in &a.command {
        match arg.to_str() {
            Some(s) => strings.push(s.to_owned()),
            None => {
                eprintln!("bpsh: argument {arg:?} is not valid UTF-8");
                return Ok(None);
            }
        }
    }
    let path_str = path.to_string_lossy().into_owned();
    let mut env: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
        .filter(|kv| !kv.starts_with("BPROC_RANK=") && !kv.starts_with("BPROC_PROGNAME="))
        .collect();
    env.push("BPROC_RANK=XXXXXXX".into());
    env.push(format!("BPROC_PROGNAME={path_str}"));
    // What goes to bpsh's own /dev/null need not come to it, unless an end-of-run view
    // (`--fold`, `--json`) shows one stream where the other goes.
    let null_dev = null_device();
    let null = |fd: usize| match fd {
        0 => a.no_stdin || is_null(0, null_dev),
        _ => !a.fold && !a.json && is_null(fd as i32, null_dev),
    };
    let io = (0..3)
        .map(|fd| match &a.files[fd] {
            Some(f) => IoSpec::File(f.clone()),
            None if a.no_io || null(fd) => IoSpec::Null,
            None => IoSpec::Forward,
        })
        .collect();
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).expect("the kernel's random source failed");
    let spec = ProcSpec {
        path: path_str,
        argv: strings,
        env,
        cwd: std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
        umask: bproc_client::launch::current_umask(),
        io,
        fds: Vec::new(),
        io_port: 0,
        io_ip: None,
        token,
        rlimits: bproc_client::launch::current_rlimits(),
        files: Vec::new(),
        image: None,
        image_files: None,
        image_len: None,
    };
    // One frame carries the launch: a spec over the limit is said here, with the limit.
    if let Some(why) = spec.too_large() {
        eprintln!("bpsh: {why}");
        return Ok(None);
    }
    // A diskless node needs the program, its interpreters and libraries: gather them by hash
    // (only then: hashing costs more than a whole launch to a node that has a disk).
    let mut spec = spec;
    let mut staged = std::collections::HashMap::new();
    if sel.nodes.iter().any(|n| n.info.as_ref().is_some_and(|i| i.diskless)) {
        let ld = std::env::var("LD_LIBRARY_PATH").ok();
        match bproc_stage::closure(&path, ld.as_deref()) {
            Ok(files) => staged = bproc_client::launch::stage_into(&mut spec, files),
            Err(e) => {
                eprintln!("bpsh: {e}");
                return Ok(None);
            }
        }
    }
    let prepared = Prepared {
        nodes: sel.nodes.iter().map(|n| n.node).collect(),
        ghost: place.ghost,
        spec,
        listen_ip,
        here: place.node,
        staged: Arc::new(staged),
    };
    Ok(Some((prepared, client.into_stream())))
}

/// Listens with a deep accept queue (the kernel caps it at `net.core.somaxconn`): every node
/// connects up to three fds at the same moment, and a dropped SYN costs a second or more.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(addr)?;
    s.listen(65535)
}

/// One end of a process's fd as bpsh sees it: a socket from a node, or a pipe to a process
/// bpsh started itself on the front end.
enum Conn {
    /// The process's stdout or stderr.
    Read(Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    /// The process's stdin.
    Write(Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
}

/// A forwarded fd's slot: where the accept loop (or a local start) delivers it. Stdin takes
/// one connection; stdout and stderr take one after another: a process that moves on from
/// its node to another has its streams there connected again (`IoSpec::Rejoin`), and the
/// rank's reader reads each to its end, in the order they came.
type Slot = Option<mpsc::UnboundedSender<Conn>>;

/// Reads connection headers and hands each valid connection to its (rank, fd) slot.
async fn accept_loop(
    listener: TcpListener,
    token: [u8; 16],
    slots: Arc<Mutex<Vec<[Slot; 3]>>>,
    staged: Arc<std::collections::HashMap<[u8; 32], PathBuf>>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let slots = slots.clone();
        let staged = staged.clone();
        tokio::spawn(async move {
            let mut head = [0u8; bproc_proto::conn::HEADER_LEN];
            let ok = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await;
            let (got, rank, fd) = bproc_proto::conn::parse(&head);
            if !matches!(ok, Ok(Ok(_))) || got != token {
                return; // not one of ours: close silently, as BProc does
            }
            let (rank, fd) = (rank as usize, fd as usize);
            if fd == usize::from(bproc_proto::conn::FETCH) {
                let mut s = s;
                bproc_link::serve_staged_file(&mut s, &staged).await;
                return;
            }
            let slot =
                slots.lock().unwrap_or_else(|e| e.into_inner()).get_mut(rank).and_then(|r| {
                    let slot = r.get_mut(fd)?;
                    if fd == 0 {
                        slot.take()
                    } else {
                        slot.clone()
                    }
                });
            match slot {
                Some(tx) => {
                    let _ = tx.send(if fd == 0 {
                        Conn::Write(Box::new(s))
                    } else {
                        Conn::Read(Box::new(s))
                    });
                }
                None => eprintln!("bpsh: unexpected connection for rank {rank} fd {fd}"),
            }
        });
    }
}

/// Starts rank `rank` on the front end itself (node spec `master`), as the caller, with its
/// forwarded fds as pipes delivered to their slots. Returns the pid, or an errno.
fn start_local(
    spec: &ProcSpec,
    rank: usize,
    slots: &Mutex<Vec<[Slot; 3]>>,
    exits: mpsc::UnboundedSender<(u32, ExitStatus)>,
) -> Result<i32, i32> {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(&spec.path);
    cmd.arg0(spec.argv.first().map_or(spec.path.as_str(), String::as_str))
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env_for_rank(rank as u32))
        .current_dir(if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" })
        .process_group(0);
    for (fd, io) in spec.io.iter().enumerate().take(3) {
        let stdio = match io {
            IoSpec::Forward => Stdio::piped(),
            // bpsh asks for nothing else.
            IoSpec::Null
            | IoSpec::Closed
            | IoSpec::Open { .. }
            | IoSpec::Connect { .. }
            | IoSpec::Rejoin { .. } => Stdio::null(),
            IoSpec::File(path) => {
                let f =
                    if fd == 0 { std::fs::File::open(path) } else { std::fs::File::create(path) };
                Stdio::from(f.map_err(|e| e.raw_os_error().unwrap_or(bproc_client::errno::EIO))?)
            }
        };
        match fd {
            0 => cmd.stdin(stdio),
            1 => cmd.stdout(stdio),
            _ => cmd.stderr(stdio),
        };
    }
    let mut child =
        cmd.spawn().map_err(|e| e.raw_os_error().unwrap_or(bproc_client::errno::EIO))?;
    let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
    let conns: [Option<Conn>; 3] = [
        child.stdin.take().map(|s| Conn::Write(Box::new(s))),
        child.stdout.take().map(|s| Conn::Read(Box::new(s))),
        child.stderr.take().map(|s| Conn::Read(Box::new(s))),
    ];
    for (fd, conn) in conns.into_iter().enumerate() {
        if let (Some(conn), Some(tx)) = (conn, slots[rank][fd].take()) {
            let _ = tx.send(conn);
        }
    }
    let pid = child.id().map_or(0, |p| p as i32);
    tokio::spawn(async move {
        let status = child.wait().await.map_or(ExitStatus::Code(255), ExitStatus::from);
        let _ = exits.send((rank as u32, status));
    });
    Ok(pid)
}

/// What the stream readers tell the output loop.
enum Out {
    Data(usize, u8, Vec<u8>),
    Eof(usize, u8),
}

/// `fut`'s result, or `None` if `limit` passes first (no limit: waits as long as it takes).
async fn within<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(l) => tokio::time::timeout(l, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How each rank ended, for `--report` and `--json`.
fn report_rows(ranks: &[Rank], pids: &[i32], reasons: &[Option<String>]) -> Vec<report::Row> {
    ranks
        .iter()
        .zip(pids)
        .zip(reasons)
        .map(|((r, &pid), reason)| report::Row {
            node: r.node,
            outcome: if r.failed {
                report::Outcome::NotStarted {
                    code: -pid,
                    why: reason.clone().unwrap_or_else(|| strerror(-pid)),
                }
            } else if r.timed_out {
                report::Outcome::TimedOut
            } else {
                match r.status {
                    Some(ExitStatus::Code(c)) => report::Outcome::Exit(c),
                    Some(ExitStatus::Signal(s)) => report::Outcome::Signal(s),
                    Some(ExitStatus::NodeLost) | None => report::Outcome::NodeLost,
                }
            },
        })
        .collect()
}

/// Per-rank progress.
#[derive(Debug, Clone)]
struct Rank {
    node: i32,
    /// Killed by `--timeout`.
    timed_out: bool,
    /// Output streams still open.
    open: u8,
    /// How it ended, once known; `None` while running.
    status: Option<ExitStatus>,
    /// Never started.
    failed: bool,
    /// Its ghost gave up waiting for a master that did not come back.
    master_gone: bool,
    /// Its ghost is still to be reaped.
    ghost: bool,
    /// How its ghost ended, once reaped.
    ghost_end: Option<ExitStatus>,
    /// Since when it has ended with its output drained, waiting only for its ghost.
    lingering: Option<Instant>,
}

/// How long bpsh waits for a ghost whose process has ended and whose output is drained.
const GHOST_LINGER: Duration = Duration::from_secs(2);

/// How long a ghost's own end waits for the master's word on its process (which, when it
/// comes, is the one that counts: a lost node's ghost is killed, but its process was lost).
const GHOST_WORD: Duration = Duration::from_millis(100);

impl Rank {
    fn done(&self) -> bool {
        self.failed || (self.status.is_some() && self.open == 0 && !self.ghost)
    }
}

/// Watches ghosts `(rank, pid)`, children of bpsh in its process group, with one task of the
/// runtime: at each `SIGCHLD` every ghost that ended is reaped (a `waitid` on the group: one
/// system call a ghost, where a pidfd each cost four more and a task of its own), and how it
/// ended (how its process ended) goes to `tx`. The ranks bpsh starts on the front end lead
/// groups of their own. Once no child is left in the group, a ghost not reaped was none of
/// bpsh's children: lost.
fn watch_ghosts(ghosts: Vec<(usize, i32)>, tx: mpsc::UnboundedSender<(usize, ExitStatus)>) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let mut left: std::collections::HashMap<i32, usize> =
        ghosts.into_iter().map(|(rank, pid)| (pid, rank)).collect();
    if left.is_empty() {
        return;
    }
    // Asked for before the first look, so that no ghost's end falls between the two.
    let mut chld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    let group = nix::unistd::getpgrp();
    tokio::spawn(async move {
        loop {
            let (pid, end) =
                match waitid(Id::PGid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                    Ok(WaitStatus::Exited(pid, c)) => (pid.as_raw(), ExitStatus::Code(c)),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => {
                        (pid.as_raw(), ExitStatus::Signal(sig as i32))
                    }
                    Ok(WaitStatus::StillAlive) => {
                        // Without a SIGCHLD stream (it could not be set up), every 20 ms.
                        match &mut chld {
                            Some(c) => {
                                if c.recv().await.is_none() {
                                    chld = None;
                                }
                            }
                            None => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                        continue;
                    }
                    Err(nix::Error::EINTR) | Ok(_) => continue,
                    Err(_) => {
                        for (_, rank) in left.drain() {
                            let _ = tx.send((rank, ExitStatus::NodeLost));
                        }
                        return;
                    }
                };
            if let Some(rank) = left.remove(&pid) {
                let _ = tx.send((rank, end));
                if left.is_empty() {
                    return;
                }
            }
        }
    });
}

/// The forwarded fds' slots (where connections are delivered) and, for each rank, the
/// receiving ends its readers and stdin writer take.
type FdSlots = (Arc<Mutex<Vec<[Slot; 3]>>>, Vec<[Option<mpsc::UnboundedReceiver<Conn>>; 3]>);

/// A slot for each forwarded fd (`forwards`) of each of `n` ranks.
fn fd_slots(n: usize, forwards: &[bool]) -> FdSlots {
    let slots: Arc<Mutex<Vec<[Slot; 3]>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut senders: [Slot; 3] = [None, None, None];
        let mut rxs: [Option<mpsc::UnboundedReceiver<Conn>>; 3] = [None, None, None];
        for fd in 0..3 {
            if forwards[fd] {
                let (tx, rx) = mpsc::unbounded_channel();
                senders[fd] = Some(tx);
                rxs[fd] = Some(rx);
            }
        }
        slots.lock().unwrap_or_else(|e| e.into_inner()).push(senders);
        receivers.push(rxs);
    }
    (slots, receivers)
}

/// The connection to the master, which carries exits in and signals out once the job runs.
type MasterConn = (tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf);

/// A launch as the master answered it.
struct Launched {
    /// Each rank's ghost (0: none).
    ghosts: Vec<i32>,
    /// Each rank's pid, or a negated error; 0 for a rank on the front end left to bpsh.
    pids: Vec<i32>,
    /// Why ranks did not start, as their nodes said.
    reasons: Vec<Option<String>>,
    /// When the connection was made (`-t` counts from here).
    start: Instant,
    /// Told that the launch was sent, and kept open as long as bpsh runs: the light ghosts
    /// watch it for bpsh's end.
    _sent: Option<bproc_client::ghost::LaunchSent>,
}

/// Where a rank that moves back to the front end (into its ghost) connects its forwarded
/// stdout and stderr again, so they come out after what it wrote on its node; `None` when
/// neither is forwarded.
fn rejoin(p: &Prepared, spec: &ProcSpec) -> Option<bproc_client::ghost::Rejoin> {
    let fds: Vec<u8> = [1u8, 2]
        .into_iter()
        .filter(|&fd| spec.io.get(usize::from(fd)) == Some(&IoSpec::Forward))
        .collect();
    if fds.is_empty() || spec.io_port == 0 {
        return None;
    }
    // A listener on every address is reached here through loopback.
    let ip = if p.listen_ip.is_unspecified() { Ipv4Addr::LOCALHOST } else { p.listen_ip };
    Some(bproc_client::ghost::Rejoin {
        addr: std::net::SocketAddrV4::new(ip, spec.io_port),
        token: spec.token,
        fds,
        // Each ghost's rank: `ghosts_keeping_output` knows which ranks get ghosts.
        ranks: Vec::new(),
    })
}

/// Connects to the master and launches `spec` on the nodes, each remote process with a ghost
/// when there is a ghost program; the master's answer, or the exit code once bpsh said why
/// not.
async fn launch(
    p: &Prepared,
    spec: &ProcSpec,
    conn: std::os::unix::net::UnixStream,
) -> Result<(MasterConn, Launched), ExitCode> {
    let path = bproc_client::socket_path();
    let limit = bproc_client::timeout();
    let timed_out = |what| bproc_client::BprocError::Timeout {
        path: path.clone(),
        what,
        limit: limit.unwrap_or_default(),
    };
    let conn = match conn.set_nonblocking(true).and_then(|()| UnixStream::from_std(conn)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bpsh: {}", bproc_client::connect_error(&path, e));
            return Err(ExitCode::FAILURE);
        }
    };
    let (mut mrd, mut mwr) = conn.into_split();
    let start = Instant::now();
    // A ghost for each remote process, in our process group: Ctrl-C, Ctrl-Z and `kill` on it
    // reach the process, and `ps` shows it.
    let (ghosts, sent) = match &p.ghost {
        Some(g) => match bproc_client::launch::ghosts_keeping_output(
            g,
            &bproc_client::ghost::comm_of(&spec.path),
            &p.nodes,
            rejoin(p, spec),
        ) {
            Ok(made) => made,
            // Whoever killed them meant the job to end: nothing is started.
            Err(e) if bproc_client::ghost::killed(&e).is_some() => {
                eprintln!("bpsh: {e}; nothing was started");
                return Err(ExitCode::FAILURE);
            }
            Err(e) => {
                eprintln!(
                    "bpsh: {e}; the processes run without ghosts (ps, kill and job control \
                     on the front end do not reach them)"
                );
                (vec![0; p.nodes.len()], None)
            }
        },
        None => (vec![0; p.nodes.len()], None),
    };
    let launch = Message::Launch {
        nodes: p.nodes.clone(),
        spec: spec.clone(),
        ghosts: ghosts.clone(),
        io_ports: Vec::new(),
    };
    let fail = |ghosts: Vec<i32>, why: String| {
        eprintln!("bpsh: {why}");
        bproc_client::ghost::discard(ghosts);
        ExitCode::FAILURE
    };
    match within(limit, write_frame(&mut mwr, 1, &launch)).await {
        Some(Ok(())) => {
            if let Some(s) = &sent {
                s.sent();
            }
        }
        Some(Err(e)) => return Err(fail(ghosts, format!("bproc_vexecmove_io: {e}"))),
        None => return Err(fail(ghosts, timed_out("answer").to_string())),
    }
    // The master answers once every node has reported its start (it gives each 30 s), after
    // the reasons nodes gave for ranks they could not start.
    let mut reasons: Vec<Option<String>> = vec![None; p.nodes.len()];
    let answer = within(limit, async {
        loop {
            match read_frame(&mut mrd).await {
                Ok(Some((_, Message::RankRefused { rank, reason, .. }))) => {
                    if let Some(r) = reasons.get_mut(rank as usize) {
                        *r = Some(reason);
                    }
                }
                other => return other,
            }
        }
    })
    .await;
    let pids = match answer {
        Some(Ok(Some((_, Message::Launched { pids })))) => pids,
        Some(Ok(Some((_, Message::Error { code, .. })))) => {
            eprintln!("bproc_vexecmove_io: {}", strerror(code));
            return Err(ExitCode::FAILURE);
        }
        None => return Err(fail(ghosts, timed_out("answer").to_string())),
        // The master stopped with the launch in flight: what it started, bpsh cannot follow
        // (its listener goes with it), so the ghosts end, and with them those ranks.
        Some(Ok(None)) => {
            let why = "bproc_vexecmove_io: bpmaster closed the connection before it answered \
                       the launch (did it stop or restart?); run the command again";
            return Err(fail(ghosts, why.into()));
        }
        Some(Err(e)) => return Err(fail(ghosts, format!("bproc_vexecmove_io: {e}"))),
        Some(other) => {
            let why = format!("bproc_vexecmove_io: unexpected answer from bpmaster: {other:?}");
            return Err(fail(ghosts, why));
        }
    };
    Ok(((mrd, mwr), Launched { ghosts, pids, reasons, start, _sent: sent }))
}

/// Runs a prepared job: listen for its fds, launch it, then follow it to its end.
async fn run(a: Args, p: Prepared, conn: std::os::unix::net::UnixStream) -> ExitCode {
    let (kill_tx, kill_rx) = mpsc::unbounded_channel::<i32>();
    catch_signals(&kill_tx);
    let mut spec = p.spec.clone();
    let forwards: Vec<bool> = spec.io.iter().map(|io| *io == IoSpec::Forward).collect();
    let (slots, receivers) = fd_slots(p.nodes.len(), &forwards);
    if forwards.iter().any(|f| *f) || !spec.files.is_empty() {
        let listener = match listen(SocketAddr::new(p.listen_ip.into(), 0)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bpsh: cannot listen on {} for I/O: {e}", p.listen_ip);
                return ExitCode::FAILURE;
            }
        };
        spec.io_port = listener.local_addr().map_or(0, |a| a.port());
        tokio::spawn(accept_loop(listener, spec.token, slots.clone(), p.staged.clone()));
    }
    let (master, mut launched) = match launch(&p, &spec, conn).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    // Ranks on the front end (spec `master`) run here, as the caller; the master skipped them.
    let (exit_tx, exit_rx) = mpsc::unbounded_channel::<(u32, ExitStatus)>();
    let local_pids: Arc<Mutex<Vec<i32>>> = Arc::default();
    for (rank, pid) in launched.pids.iter_mut().enumerate() {
        if is_local(&p, rank) && *pid == 0 {
            *pid = match start_local(&spec, rank, &slots, exit_tx.clone()) {
                Ok(local) => {
                    local_pids.lock().unwrap_or_else(|e| e.into_inner()).push(local);
                    local
                }
                Err(code) => -code,
            };
        }
    }
    let master_gone = follow_master(master, &launched, exit_tx.clone(), kill_rx, local_pids);
    let links = Links { kill: kill_tx, exits: exit_tx, exit_rx, master_gone };
    let mut session = Session::new(a, p, launched, receivers, links);
    session.run().await;
    session.finish().await
}

/// Master events: exits in (until its connection ends, which the returned receiver tells),
/// signals out (`kill`), to the processes bpsh started (`local`) and through the master or,
/// once it is gone, the ghosts.
fn follow_master(
    master: MasterConn,
    launched: &Launched,
    exits: mpsc::UnboundedSender<(u32, ExitStatus)>,
    kill: mpsc::UnboundedReceiver<i32>,
    local: Arc<Mutex<Vec<i32>>>,
) -> oneshot::Receiver<()> {
    let (mrd, mwr) = master;
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // The master sends a thousand ranks' exits in one write: read as they came, not a
        // frame's header and body at a time.
        let mut mrd = tokio::io::BufReader::new(mrd);
        while let Ok(Some((_, msg))) = read_frame(&mut mrd).await {
            if let Message::ProcExit { rank, status, .. } = msg {
                let _ = exits.send((rank, status));
            }
        }
        let _ = gone_tx.send(());
    });
    let ghosts = &launched.ghosts;
    let has_ghosts = ghosts.iter().any(|g| *g > 0);
    // The ghosts of ranks that started (the others' were discarded).
    let ghost_pids: Vec<i32> = ghosts
        .iter()
        .zip(&launched.pids)
        .filter(|(g, p)| **g > 0 && **p > 0)
        .map(|(g, _)| *g)
        .collect();
    tokio::spawn(forward_signals(mwr, kill, local, has_ghosts, ghost_pids));
    gone_rx
}

/// How a session reaches the rest of the run: the signals to relay, the exits reported.
struct Links {
    /// Signals to relay to every process.
    kill: mpsc::UnboundedSender<i32>,
    /// Where exits are sent, and received.
    exits: mpsc::UnboundedSender<(u32, ExitStatus)>,
    exit_rx: mpsc::UnboundedReceiver<(u32, ExitStatus)>,
    /// Fires when the master's connection ends.
    master_gone: oneshot::Receiver<()>,
}

/// From a node, `master` is the front end, where this bpsh's ghost started the rank for it
/// (the master's pid and refusals count, as for a node); only on the front end does bpsh
/// start rank `rank` itself.
fn is_local(p: &Prepared, rank: usize) -> bool {
    p.nodes[rank] == bproc_proto::NODE_MASTER && p.here == bproc_proto::NODE_MASTER
}

/// What the run loop waits on.
struct Events {
    /// The ranks' output, from their stream readers.
    output: mpsc::Receiver<Out>,
    /// The ranks' exits: from the master, from processes bpsh started, from ghosts once the
    /// master is gone.
    exits: mpsc::UnboundedReceiver<(u32, ExitStatus)>,
    /// Fires when the master's connection ends.
    master_gone: oneshot::Receiver<()>,
    /// Ghosts reaped, with how they ended.
    reaped: mpsc::UnboundedReceiver<(usize, ExitStatus)>,
    /// Whether ghosts are still watched (the watcher ends with the last one).
    watching: bool,
    /// A reaped ghost's end, once the master had its chance to report its process first.
    ghost_word: mpsc::UnboundedReceiver<(usize, ExitStatus)>,
    /// `--timeout`'s deadline.
    deadline: Option<tokio::time::Instant>,
}

/// One event of a run.
enum Event {
    Output(Option<Out>),
    Timeout,
    MasterGone,
    GhostReaped(usize, ExitStatus),
    GhostsWatched,
    GhostWord(Option<(usize, ExitStatus)>),
    Linger,
    Exit(Option<(u32, ExitStatus)>),
}

/// A job being followed: its ranks, their output and ends, until all are done.
struct Session {
    a: Args,
    p: Prepared,
    ranks: Vec<Rank>,
    pids: Vec<i32>,
    reasons: Vec<Option<String>>,
    ghosts: Vec<i32>,
    start: Instant,
    events: Events,
    /// Where exits are sent (a ghost stands for its process once the master is gone).
    exits: mpsc::UnboundedSender<(u32, ExitStatus)>,
    ghost_word: mpsc::UnboundedSender<(usize, ExitStatus)>,
    /// Signals to relay to every process.
    kill: mpsc::UnboundedSender<i32>,
    /// Which ranks have ended: a stream's last connection is known only then (a process that
    /// moves on from a node connects its streams again from the next).
    ended: Vec<watch::Sender<bool>>,
    /// Which ranks' readers were told of their end.
    told: Vec<bool>,
    /// In sequential mode, the rank whose output is read.
    turn: usize,
    turn_tx: watch::Sender<usize>,
    fmt: Formatter,
    /// --fold and --json print at the end: (stdout, stderr) per rank until then.
    collected: Vec<(Vec<u8>, Vec<u8>)>,
    killed: bool,
    master_lost: bool,
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
    /// Kept open as long as bpsh runs (see [`Launched`]).
    _sent: Option<bproc_client::ghost::LaunchSent>,
}

impl Session {
    /// Takes the launched job on: says which ranks did not start, watches the live ghosts,
    /// and starts the stream readers and stdin's writers.
    fn new(
        a: Args,
        p: Prepared,
        launched: Launched,
        mut receivers: Vec<[Option<mpsc::UnboundedReceiver<Conn>>; 3]>,
        links: Links,
    ) -> Session {
        let Launched { ghosts, pids, reasons, start, _sent } = launched;
        let Links { kill, exits, exit_rx, master_gone } = links;
        let n = p.nodes.len();
        let forwarded = |fd: usize| p.spec.io.get(fd) == Some(&IoSpec::Forward);
        let out_streams = u8::from(forwarded(1)) + u8::from(forwarded(2));
        let mut ranks: Vec<Rank> = p
            .nodes
            .iter()
            .zip(&pids)
            .map(|(&node, &pid)| Rank {
                node,
                timed_out: false,
                open: out_streams,
                status: None,
                failed: pid <= 0,
                master_gone: false,
                ghost: false,
                ghost_end: None,
                lingering: None,
            })
            .collect();
        // What a rank that did not start says: its node's reason, else the error's text.
        let why = |rank: usize, pid: i32| reasons[rank].clone().unwrap_or_else(|| strerror(-pid));
        for (rank, (r, pid)) in ranks.iter().zip(&pids).enumerate().filter(|(_, (r, _))| r.failed) {
            eprintln!("{}: {}", r.node, why(rank, *pid));
        }
        bproc_client::ghost::discard(
            ghosts.iter().zip(&ranks).filter(|(_, r)| r.failed).map(|(g, _)| *g),
        );
        // Every live ghost is watched and reaped here.
        let (reaped_tx, reaped) = mpsc::unbounded_channel();
        let (ghost_word, ghost_word_rx) = mpsc::unbounded_channel();
        let mut watched = Vec::new();
        for (rank, (&g, r)) in ghosts.iter().zip(ranks.iter_mut()).enumerate() {
            if g > 0 && !r.failed {
                r.ghost = true;
                watched.push((rank, g));
            }
        }
        watch_ghosts(watched, reaped_tx);
        // Output readers: in sequential mode a rank's streams are read only in its turn.
        let (turn_tx, turn_rx) = watch::channel(0usize);
        let ended: Vec<watch::Sender<bool>> = (0..n).map(|_| watch::channel(false).0).collect();
        let output = start_streams(&a, &ranks, &mut receivers, &ended, &turn_rx);
        let events = Events {
            output,
            exits: exit_rx,
            master_gone,
            reaped,
            watching: true,
            ghost_word: ghost_word_rx,
            deadline: a.timeout.map(|t| tokio::time::Instant::now() + t),
        };
        Session {
            fmt: Formatter::new(a.line, a.prefix, a.buffer, p.nodes.clone()),
            collected: vec![(Vec::new(), Vec::new()); n],
            a,
            p,
            ranks,
            pids,
            reasons,
            ghosts,
            start,
            events,
            exits,
            ghost_word,
            kill,
            ended,
            told: vec![false; n],
            turn: 0,
            turn_tx,
            killed: false,
            master_lost: false,
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
            _sent,
        }
    }

    /// Handles events until every rank is done.
    async fn run(&mut self) {
        if self.a.divider && !self.ranks.is_empty() {
            let _ = self.stdout.write_all(&divider(self.ranks[0].node)).await;
            let _ = self.stdout.flush().await;
        }
        loop {
            // Each rank's readers are told once; `told` spares a thousand-rank launch the
            // watch's lock for every rank at every event.
            for ((r, tx), told) in self.ranks.iter().zip(&self.ended).zip(&mut self.told) {
                if r.status.is_some() && !*told {
                    *told = true;
                    tx.send_replace(true);
                }
            }
            if self.a.sequential {
                self.advance_turn().await;
            }
            if self.ranks.iter().all(Rank::done) {
                return;
            }
            let event = self.next_event().await;
            self.on_event(event).await;
            // What else has come is taken before the ranks are looked at again: a big launch's
            // ends come in bursts, and each turn of this loop looks at every rank.
            while let Some(event) = self.ready_event() {
                self.on_event(event).await;
            }
        }
    }

    /// Handles one event.
    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Output(out) => self.on_output(out).await,
            Event::Timeout => self.on_timeout(),
            Event::MasterGone => self.on_master_gone(),
            Event::GhostReaped(rank, end) => self.on_ghost_reaped(rank, end),
            Event::GhostsWatched => self.events.watching = false,
            Event::GhostWord(Some((rank, end))) => {
                let r = &mut self.ranks[rank];
                if r.status.is_none() {
                    r.status = Some(end);
                }
            }
            // Never: the session keeps a sender.
            Event::GhostWord(None) => {}
            Event::Linger => self.on_linger(),
            Event::Exit(exit) => self.on_exit(exit),
        }
    }

    /// An exit or a ghost's end that has already come, taken without waiting.
    fn ready_event(&mut self) -> Option<Event> {
        let ev = &mut self.events;
        if let Ok(exit) = ev.exits.try_recv() {
            return Some(Event::Exit(Some(exit)));
        }
        if !ev.watching {
            return None;
        }
        ev.reaped.try_recv().ok().map(|(rank, end)| Event::GhostReaped(rank, end))
    }

    /// Advances the sequential turn past finished ranks, a divider for each new one.
    async fn advance_turn(&mut self) {
        let n = self.ranks.len();
        while self.turn < n && self.ranks[self.turn].done() {
            self.turn += 1;
            let _ = self.turn_tx.send(self.turn);
            if self.a.divider && self.turn < n {
                let _ = self.stdout.write_all(&divider(self.ranks[self.turn].node)).await;
                let _ = self.stdout.flush().await;
            }
        }
    }

    /// Waits for the next event.
    async fn next_event(&mut self) -> Event {
        let reading = !self.ranks.iter().all(|r| r.open == 0 || r.failed);
        let lingering = self.ranks.iter().any(|r| r.ghost && r.status.is_some() && r.open == 0);
        let ev = &mut self.events;
        tokio::select! {
            out = ev.output.recv(), if reading => Event::Output(out),
            _ = sleep_until(ev.deadline), if !self.killed => Event::Timeout,
            _ = &mut ev.master_gone, if !self.master_lost => Event::MasterGone,
            end = ev.reaped.recv(), if ev.watching => match end {
                Some((rank, end)) => Event::GhostReaped(rank, end),
                None => Event::GhostsWatched,
            },
            end = ev.ghost_word.recv() => Event::GhostWord(end),
            _ = tokio::time::sleep(Duration::from_millis(50)), if lingering => Event::Linger,
            exit = ev.exits.recv() => Event::Exit(exit),
        }
    }

    /// Output from a rank, or the end of one of its streams; `None`: every reader is done.
    async fn on_output(&mut self, out: Option<Out>) {
        let (rank, fd, bytes) = match out {
            Some(Out::Data(rank, fd, data)) => {
                if self.ranks[rank].status == Some(ExitStatus::NodeLost) {
                    return; // abandoned
                }
                (rank, fd, self.fmt.data(rank, fd, &data))
            }
            Some(Out::Eof(rank, fd)) => {
                let bytes = self.fmt.eof(rank, fd);
                self.ranks[rank].open = self.ranks[rank].open.saturating_sub(1);
                (rank, fd, bytes)
            }
            None => {
                for r in &mut self.ranks {
                    r.open = 0;
                }
                return;
            }
        };
        if self.a.fold || self.a.json {
            let c = &mut self.collected[rank];
            if fd == STDERR { &mut c.1 } else { &mut c.0 }.extend_from_slice(&bytes);
        } else {
            write_to(fd, &bytes, &mut self.stdout, &mut self.stderr).await;
        }
    }

    /// Says why, and has every process killed.
    fn kill_all(&self, why: String) {
        eprintln!("bpsh: {why}");
        let _ = self.kill.send(nix::sys::signal::Signal::SIGKILL as i32);
    }

    /// `--timeout` passed: what still runs is killed.
    fn on_timeout(&mut self) {
        self.killed = true;
        for r in self.ranks.iter_mut().filter(|r| !r.failed && r.status.is_none()) {
            r.timed_out = true;
        }
        let secs = self.a.timeout.map_or(0.0, |t| t.as_secs_f64());
        self.kill_all(format!("--timeout: {secs} s passed; killing what still runs"));
    }

    /// The master went away: remote processes are followed through their ghosts; those
    /// without one are lost with it.
    fn on_master_gone(&mut self) {
        self.master_lost = true;
        let follow: Vec<(u32, i32)> = (self.ranks.iter().zip(&self.ghosts))
            .enumerate()
            .filter(|(_, (r, g))| {
                !r.failed && r.status.is_none() && r.node != bproc_proto::NODE_MASTER && **g > 0
            })
            .map(|(i, (_, g))| (i as u32, *g))
            .collect();
        eprintln!(
            "bpsh: bpmaster at {} went away; following {} remote process(es) through their \
             ghosts until it is back",
            bproc_client::socket_path().display(),
            follow.len()
        );
        for i in 0..self.ranks.len() {
            let followed = follow.iter().any(|f| f.0 as usize == i);
            let local = is_local(&self.p, i);
            let r = &mut self.ranks[i];
            if !followed && !r.failed && r.status.is_none() && !local {
                // Nothing follows it without the master: it is lost with it.
                r.master_gone = true;
                r.status = Some(ExitStatus::NodeLost);
                r.open = 0;
            }
        }
        // The ghosts are watched already: those that ended stand for their processes.
        for &(rank, _) in &follow {
            if let Some(end) = self.ranks[rank as usize].ghost_end {
                let _ = self.exits.send((rank, end));
            }
        }
    }

    /// Rank `rank`'s ghost was reaped, having ended as `end`.
    fn on_ghost_reaped(&mut self, rank: usize, end: ExitStatus) {
        let r = &mut self.ranks[rank];
        r.ghost = false;
        r.ghost_end = Some(end);
        if r.status.is_some() {
            return;
        }
        if self.master_lost {
            let _ = self.exits.send((rank as u32, end));
        } else {
            // A ghost that took its process back, and ended as it: the master no longer
            // knows the process. Its word, if it comes, counts first.
            let tx = self.ghost_word.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GHOST_WORD).await;
                let _ = tx.send((rank, end));
            });
        }
    }

    /// Ghosts of ranks that ended with their output drained are waited for no longer than
    /// [`GHOST_LINGER`].
    fn on_linger(&mut self) {
        let now = Instant::now();
        for r in self.ranks.iter_mut().filter(|r| r.ghost && r.status.is_some() && r.open == 0) {
            let since = *r.lingering.get_or_insert(now);
            if now.duration_since(since) > GHOST_LINGER {
                r.ghost = false;
            }
        }
    }

    /// A rank ended (`None`: nothing more will be reported).
    fn on_exit(&mut self, exit: Option<(u32, ExitStatus)>) {
        let Some((rank, status)) = exit else {
            // The master went away: nothing more will be reported.
            for r in self.ranks.iter_mut().filter(|r| r.status.is_none()) {
                r.status = Some(ExitStatus::NodeLost);
                r.open = 0;
            }
            return;
        };
        let Some(r) = self.ranks.get_mut(rank as usize) else { return };
        let kill = ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL as i32);
        if self.master_lost && status == kill && !master_answers() {
            // Its ghost gave up: no master came back within the grace period.
            r.master_gone = true;
        }
        r.status = Some(status);
        if status == ExitStatus::NodeLost && !r.master_gone {
            eprintln!(
                "bpsh: node {}: lost ({}); its process is gone",
                r.node,
                strerror(bproc_client::errno::BE_SLAVEDIED)
            );
        }
        if status == ExitStatus::NodeLost {
            // Its streams may never close: stop waiting for them.
            r.open = 0;
        }
        if self.a.fail_fast && !self.killed && status != ExitStatus::Code(0) {
            self.killed = true;
            let node = r.node;
            self.kill_all(format!("--fail-fast: node {node} failed; killing the others"));
        }
    }

    /// Prints what is printed at the end (`--fold`, `--json`, `--report`, `-t`) and gives
    /// the exit status.
    async fn finish(mut self) -> ExitCode {
        let (stdout, stderr) = (&mut self.stdout, &mut self.stderr);
        let rows = || report_rows(&self.ranks, &self.pids, &self.reasons);
        if self.a.fold {
            for (fd, bytes) in report::fold(&rows(), &self.collected) {
                write_to(fd, &bytes, stdout, stderr).await;
            }
        }
        if self.a.json {
            let _ = stdout.write_all(report::json(&rows(), &self.collected).as_bytes()).await;
        }
        let _ = stdout.flush().await;
        let _ = stderr.flush().await;
        if self.a.report {
            let _ = stderr.write_all(report::table(&rows()).as_bytes()).await;
            let _ = stderr.flush().await;
        }
        if self.a.time {
            let elapsed = format!("{:.6}\n", self.start.elapsed().as_secs_f64());
            let _ = stdout.write_all(elapsed.as_bytes()).await;
            let _ = stdout.flush().await;
        }
        exit_code(&self.ranks)
    }
}

/// Starts the readers of each started rank's stdout and stderr, and a writer of its stdin
/// fed from bpsh's; returns where the readers send.
fn start_streams(
    a: &Args,
    ranks: &[Rank],
    receivers: &mut [[Option<mpsc::UnboundedReceiver<Conn>>; 3]],
    ended: &[watch::Sender<bool>],
    turn_rx: &watch::Receiver<usize>,
) -> mpsc::Receiver<Out> {
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    let mut stdin_writers = Vec::new();
    for (rank, rxs) in receivers.iter_mut().enumerate() {
        if ranks[rank].failed {
            continue;
        }
        for fd in [1u8, 2] {
            if let Some(rx) = rxs[fd as usize].take() {
                let (out, turn) = (out_tx.clone(), turn_rx.clone());
                let over = ended[rank].subscribe();
                let turn = a.sequential.then_some(turn);
                tokio::spawn(read_stream(rank, fd, rx, over, turn, a.buffer, out));
            }
        }
        if let Some(rx) = rxs[0].take() {
            let (tx, chunks) = mpsc::channel::<Arc<Vec<u8>>>(1);
            stdin_writers.push(tx);
            tokio::spawn(write_stdin(rx, chunks));
        }
    }
    if !stdin_writers.is_empty() {
        tokio::spawn(replicate_stdin(stdin_writers, a.buffer));
    }
    out_rx
}

async fn write_to(fd: u8, bytes: &[u8], out: &mut tokio::io::Stdout, err: &mut tokio::io::Stderr) {
    if bytes.is_empty() {
        return;
    }
    // A closed stdout (bpsh | head) is not an error: the reader has what it wanted.
    let _ = if fd == STDERR { err.write_all(bytes).await } else { out.write_all(bytes).await };
    let _ = if fd == STDOUT { out.flush().await } else { err.flush().await };
}

/// BProc's exit rule: the highest exit code; 255 and a message for each killed process (a
/// lost node was reported as it happened); at least 1 if a node could not run the program.
fn exit_code(ranks: &[Rank]) -> ExitCode {
    let mut code = 0i32;
    let mut stderr = std::io::stderr().lock();
    for r in ranks {
        if r.failed {
            code = code.max(1);
        }
        if r.master_gone {
            let _ = writeln!(
                stderr,
                "bpsh: node {}: bpmaster at {} did not come back within the grace period; the process is lost.",
                r.node,
                bproc_client::socket_path().display()
            );
            code = 255;
            continue;
        }
        match r.status {
            Some(ExitStatus::Code(c)) => code = code.max(c & 0xff),
            Some(ExitStatus::Signal(_)) if r.timed_out => {
                let _ = writeln!(stderr, "bpsh: node {}: timed out; killed.", r.node);
                code = 255;
            }
            Some(ExitStatus::Signal(_)) => {
                let _ =
                    writeln!(stderr, "bpsh: Child process on node {} exited abnormally.", r.node);
                code = 255;
            }
            Some(ExitStatus::NodeLost) => code = 255,
            None => {}
        }
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Feeds one node's stdin socket from the replicated chunks; closes it at EOF.
async fn write_stdin(
    mut sock: mpsc::UnboundedReceiver<Conn>,
    mut chunks: mpsc::Receiver<Arc<Vec<u8>>>,
) {
    let Some(Conn::Write(mut s)) = sock.recv().await else { return };
    while let Some(chunk) = chunks.recv().await {
        if s.write_all(&chunk).await.is_err() {
            return; // the remote closed its stdin: stop feeding it
        }
    }
    let _ = s.shutdown().await;
}

/// Reads rank `rank`'s stream `fd`: each connection that comes for it to its end, in order,
/// until the rank has ended and no further connection waits (one comes when the process moves
/// on to another node; it connects there before the copy it leaves ends). In sequential mode
/// it first waits for the rank's `turn`.
async fn read_stream(
    rank: usize,
    fd: u8,
    mut conns: mpsc::UnboundedReceiver<Conn>,
    mut over: watch::Receiver<bool>,
    turn: Option<watch::Receiver<usize>>,
    size: usize,
    out: mpsc::Sender<Out>,
) {
    let Some(mut next) = conns.recv().await else { return };
    if let Some(mut turn) = turn {
        if turn.wait_for(|t| *t >= rank).await.is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; size];
    loop {
        if let Conn::Read(mut s) = next {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if out.send(Out::Data(rank, fd, buf[..k].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        next = tokio::select! {
            c = conns.recv() => match c {
                Some(c) => c,
                None => break,
            },
            _ = over.wait_for(|e| *e) => match conns.try_recv() {
                Ok(c) => c,
                Err(_) => break,
            },
        };
    }
    let _ = out.send(Out::Eof(rank, fd)).await;
}

/// Reads bpsh's stdin and gives each chunk to every node in turn, so the slowest reader
/// throttles the reading (BProc's shared buffer).
async fn replicate_stdin(mut writers: Vec<mpsc::Sender<Arc<Vec<u8>>>>, size: usize) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; size];
    loop {
        let k = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return, // dropping the senders closes every remote stdin
            Ok(k) => k,
        };
        let chunk = Arc::new(buf[..k].to_vec());
        let mut live = Vec::with_capacity(writers.len());
        for w in writers {
            if w.send(chunk.clone()).await.is_ok() {
                live.push(w);
            }
        }
        writers = live;
        if writers.is_empty() {
            return;
        }
    }
}

/// Catches the signals a user may send bpsh (Ctrl-C, `kill`), so that they are relayed
/// instead of ending bpsh. Called before anything starts: a signal that arrived before the
/// handlers would kill bpsh and orphan the remote processes.
fn catch_signals(tx: &mpsc::UnboundedSender<i32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    for kind in kinds {
        let Ok(mut s) = signal(kind) else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = tx.send(kind.as_raw_value());
            }
        });
    }
}

/// Whether a master answers on the client socket now.
fn master_answers() -> bool {
    std::os::unix::net::UnixStream::connect(bproc_client::socket_path()).is_ok()
}

/// Relays the signals a user sends bpsh, and the kills bpsh decides on (`--timeout`,
/// `--fail-fast`), to every remote process: through the master, or, once it is gone,
/// through the ghosts (`ghosts`), which pass them on when it is back.
async fn forward_signals(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<i32>,
    local: Arc<Mutex<Vec<i32>>>,
    has_ghosts: bool,
    ghosts: Vec<i32>,
) {
    let mut id = 2u32;
    let mut master = true;
    while let Some(sig) = rx.recv().await {
        // A terminal's Ctrl-C and Ctrl-\ reach the ghosts, which are in our process group,
        // and each forwards it: relaying it as well would deliver it twice.
        let from_terminal = sig == nix::sys::signal::Signal::SIGINT as i32
            || sig == nix::sys::signal::Signal::SIGQUIT as i32;
        if has_ghosts && from_terminal {
            continue;
        }
        if let Ok(signal) = nix::sys::signal::Signal::try_from(sig) {
            for &pid in local.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
            }
        }
        if master && write_frame(&mut wr, id, &Message::SignalLaunch { signal: sig }).await.is_ok()
        {
            id += 1;
            continue;
        }
        master = false;
        if let Ok(signal) = nix::sys::signal::Signal::try_from(sig) {
            for &pid in &ghosts {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_resolves_like_bproc() {
        assert_eq!(which(OsStr::new("sh")).map(|p| p.is_absolute()), Some(true));
        assert_eq!(which(OsStr::new("/bin/sh")), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which(OsStr::new("no-such-command-anywhere")), None);
        assert_eq!(which(OsStr::new("/etc/passwd")), None);
        assert_eq!(which(OsStr::new("/bin")), None);
    }

    #[test]
    fn what_cannot_run_is_named() {
        assert_eq!(
            not_runnable(OsStr::new("/etc/passwd")),
            "/etc/passwd: not executable (Permission denied)"
        );
        assert_eq!(not_runnable(OsStr::new("/bin")), "/bin: is a directory");
        assert_eq!(
            not_runnable(OsStr::new("/no/such/prog")),
            "/no/such/prog: No such file or directory"
        );
        assert_eq!(
            not_runnable(OsStr::new("no-such-command-anywhere")),
            "no-such-command-anywhere: command not found"
        );
    }

    #[test]
    fn exit_rules() {
        let r = |status, failed| Rank {
            node: 1,
            timed_out: false,
            open: 0,
            status,
            failed,
            master_gone: false,
            ghost: false,
            ghost_end: None,
            lingering: None,
        };
        assert_eq!(
            exit_code(&[r(Some(ExitStatus::Code(3)), false), r(Some(ExitStatus::Code(7)), false)]),
            ExitCode::from(7)
        );
        // A node that could not run the program fails the run, as in pdsh and clush.
        assert_eq!(
            exit_code(&[r(None, true), r(Some(ExitStatus::Code(0)), false)]),
            ExitCode::from(1)
        );
        assert_eq!(exit_code(&[r(None, true), r(None, true)]), ExitCode::from(1));
        assert_eq!(
            exit_code(&[
                r(Some(ExitStatus::Signal(9)), false),
                r(Some(ExitStatus::Code(1)), false)
            ]),
            ExitCode::from(255)
        );
    }
}
