//! Process migration from a program: checkpoint to a file (libbproc's `bproc_dump`,
//! `bproc_undump` and `bproc_execdump`), moving the calling process to another node ([`move_to`], `bproc_move`),
//! and forks whose children live on other nodes ([`rfork`], [`vrfork`]).
//!
//! # How a move goes
//! The caller opens a TCP listener and asks the master to start "an image" on the node, with
//! the listener as its source. The node's slave connects, presents the launch token, says
//! which of the caller's mapped files it has identical (those are named, not sent), and the
//! caller dumps itself straight into that connection ([`bproc_ckpt::dump`]) while the slave
//! restores it ([`bproc_ckpt::restore`]) as the same pid, in the master's pid namespace. Then:
//! - from the front end, the caller execs `bpghost` in place: the same pid and parent, now
//!   the ghost, which keeps the listener and relays the process's stdout and stderr (the
//!   node connects them to it; stdin is `/dev/null`, as in BProc);
//! - from a node, the old copy ends quietly once the master has the new one, and the ghost
//!   stands for the new copy; the next node connects the output to the same ghost;
//! - back to the front end, the ghost restores the image into itself, after relaying the
//!   last output of the copy that left the node.
//!
//! The ghost's port and token live in this process's memory (a static), so they move with
//! it. A process started by `bpsh` or `vexecmove` has its output connected to its launcher:
//! moved back to the front end (into its ghost, which keeps the launcher's stdout and
//! stderr) it writes there again; moved on to another node, the master has the next node
//! connect its stdout and stderr to the launcher again as the same rank (bpsh reads each
//! rank's connections one after the other, so the output stays in order).
//!
//! What cannot travel stays behind, as in BProc (see [`bproc_ckpt::dump`]): fds that are not
//! files on a disk are closed in the moved copy, shared memory becomes private, unless the
//! caller asks for [`STRICT`]; every thread moves.
//!
//! An [`rfork`] or [`vrfork`] dumps the caller once into memory and serves that image to
//! every node; each child is restored with its rank, and has a ghost (a child of the caller,
//! relaying its output) whose pid the caller gets. From a node, the children's ghosts are
//! forked by the caller's ghost on the front end, and the caller gets, for each remote child,
//! a stand-in on its own node (a fork of itself that waits for the child's end through the
//! master and ends the same way), so its `waitpid` works there too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::Mutex;

pub use bproc_ckpt::Resumed;

use bproc_proto::{conn, errno, Endpoint, IoSpec, Message, ProcSpec, NODE_MASTER};

use crate::launch::IoList;
use crate::{BprocError, Client};

/// Send libraries on the library list by content too (BProc's `BPROC_DUMP_LIBS`).
pub const DUMP_LIBS: i32 = 1;
/// Send the executable by content (`BPROC_DUMP_EXEC`).
pub const DUMP_EXEC: i32 = 2;
/// Send other files by content (`BPROC_DUMP_OTHER`).
pub const DUMP_OTHER: i32 = 4;
/// BProc's default: everything by content except the libraries on the list.
pub const DUMP_DEFAULT: i32 = DUMP_EXEC | DUMP_OTHER;
/// Refuse (`EBUSY`, with the reason) instead of closing the fds that cannot travel and making
/// writable shared memory private, which is what a move, fork or dump does without it (as
/// BProc did). `BPROC_MOVE_STRICT` in C.
pub const STRICT: i32 = 0x100;

/// The files mapped into this process that are on the master's library list (files every
/// machine has at the same path, so an image names them instead of carrying them). Without
/// a master to ask, none.
fn mapped_libraries(client: Option<&mut Client>) -> Vec<String> {
    let files = mapped_files();
    let mut own;
    let client = match client {
        Some(c) => c,
        None => match Client::connect() {
            Ok(c) => {
                own = c;
                &mut own
            }
            Err(_) => return Vec::new(),
        },
    };
    client.libraries(&files).unwrap_or_default()
}

/// Whether a dump with `flags` names a mapped file instead of carrying it: the executable
/// `exe` unless [`DUMP_EXEC`], files on the library list `libs` unless [`DUMP_LIBS`], others
/// unless [`DUMP_OTHER`]; and whatever the flags, the files in `present`, which the restoring
/// machine has identical (the same bytes either way).
fn by_reference<'a>(
    flags: i32,
    exe: &'a str,
    libs: &'a [String],
    present: &'a [String],
) -> impl Fn(&str) -> bool + 'a {
    move |path: &str| {
        if present.iter().any(|p| p == path) {
            return true;
        }
        let by_content = if path == exe {
            DUMP_EXEC
        } else if libs.iter().any(|l| l == path) {
            DUMP_LIBS
        } else {
            DUMP_OTHER
        };
        flags & by_content == 0
    }
}

/// The files mapped into this process, each once.
fn mapped_files() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut files: Vec<String> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        if path.starts_with('/') && !files.iter().any(|f| f == path) {
            files.push(path.to_owned());
        }
    }
    files
}

/// Asks the machine restoring from `sock` which of this process's mapped files (but those on
/// the library list `libs`, named anyway) it has identical: those the image names.
fn probe(mut sock: &TcpStream, libs: &[String]) -> Result<Vec<String>, BprocError> {
    use std::os::unix::fs::MetadataExt;
    let files: Vec<conn::FileId> = mapped_files()
        .into_iter()
        .filter(|f| !libs.contains(f))
        .filter_map(|path| {
            let st = std::fs::metadata(&path).ok().filter(|st| st.is_file())?;
            let mtime = (st.mtime(), st.mtime_nsec() as u32);
            Some(conn::FileId { path, size: st.size(), mtime })
        })
        .collect();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    sock.write_all(&conn::encode_probe(&files))?;
    let mut head = [0u8; 4];
    sock.read_exact(&mut head)?;
    let mut answer = vec![0u8; conn::answer_len(head, files.len())?];
    sock.read_exact(&mut answer)?;
    sock.set_read_timeout(None)?;
    Ok(files.into_iter().zip(answer).filter(|(_, a)| *a == 1).map(|(f, _)| f.path).collect())
}

/// Writes the calling process to `out` (BProc's `bproc_dump`): `flags` choose what goes by
/// content ([`DUMP_LIBS`], [`DUMP_EXEC`], [`DUMP_OTHER`]); the rest is named by path and must
/// be identical where the image is restored. Files on the master's library list are
/// libraries; with no master, there are none. Returns [`Resumed::Dumped`] here and
/// [`Resumed::Restored`] in each restored copy. Fds 3 and up that cannot be opened again by
/// path (pipes, sockets...) are closed in the copies, and writable shared memory becomes
/// private, unless `flags` has [`STRICT`]. Every thread is dumped. Refuses with `EBUSY`
/// (before writing anything, with the reason in the error) a process with a thread that does
/// not stop for the dump, or under [`STRICT`] one holding such fds or memory.
pub fn dump(out: BorrowedFd<'_>, flags: i32) -> Result<Resumed, BprocError> {
    let libs = mapped_libraries(None);
    dump_skipping(out, flags, &[out.as_raw_fd()], &libs, &[])
}

/// [`dump`], leaving out (and not refusing for) the fds in `skip`, with `libs` as the
/// library list and naming the files in `present` too.
fn dump_skipping(
    out: BorrowedFd<'_>,
    flags: i32,
    skip: &[RawFd],
    libs: &[String],
    present: &[String],
) -> Result<Resumed, BprocError> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let by_ref = by_reference(flags, &exe, libs, present);
    let at = MAILBOX.lock().unwrap_or_else(|e| e.into_inner()).as_ptr() as u64;
    let opts = bproc_ckpt::DumpOptions {
        by_ref: &by_ref,
        skip_fds: skip,
        mailbox: Some((at, MAILBOX_LEN as u32)),
        strict: flags & STRICT != 0,
    };
    let resumed = bproc_ckpt::checkpoint(out, &opts)?;
    if let Resumed::Restored(_) = resumed {
        ARRIVALS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        read_mailbox();
    }
    Ok(resumed)
}

const MAILBOX_LEN: usize = 512;

/// Where a restorer writes the path of the cluster socket where the process now runs (its
/// environment, in its memory, names the one where it was dumped).
static MAILBOX: Mutex<[u8; MAILBOX_LEN]> = Mutex::new([0; MAILBOX_LEN]);

fn read_mailbox() {
    use std::os::unix::ffi::OsStrExt;
    let mut g = MAILBOX.lock().unwrap_or_else(|e| e.into_inner());
    let end = g.iter().position(|b| *b == 0).unwrap_or(0);
    if end > 0 {
        // A restored process is single-threaded: nothing reads the environment meanwhile.
        std::env::set_var("BPROC_SOCKET", std::ffi::OsStr::from_bytes(&g[..end]));
    }
    g.fill(0);
}

/// Runs `cmd` with `argv` and `envp` and writes the new program, stopped before its first
/// instruction, to `out` (BProc's `bproc_execdump`): a process restored from the image
/// starts the program. `flags` as for [`dump`], with `cmd` as the executable. The program
/// never runs here (a child stopped at its exec is dumped, then killed). Errors: the exec's
/// own (`ENOENT`, `EACCES`...), `EBUSY` for sockets or pipes this process would pass on at
/// fds 3 and up.
pub fn exec_dump(
    out: BorrowedFd<'_>,
    flags: i32,
    cmd: &str,
    argv: &[String],
    envp: &[String],
) -> Result<(), BprocError> {
    use std::ffi::CString;
    let c = |s: &str| {
        CString::new(s).map_err(|_| remote(errno::EINVAL, format!("{s:?} holds a NUL byte")))
    };
    let path = c(cmd)?;
    let argv = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
    let envp = envp.iter().map(|e| c(e)).collect::<Result<Vec<_>, _>>()?;
    let exe =
        std::fs::canonicalize(cmd).map_or_else(|_| cmd.to_owned(), |p| p.to_string_lossy().into());
    let libs = match Client::connect() {
        // The libraries it will map are not known before it runs: ask about them all.
        Ok(mut client) => client.libraries(&[]).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let by_ref = by_reference(flags, &exe, &libs, &[]);
    let opts = bproc_ckpt::DumpOptions {
        by_ref: &by_ref,
        skip_fds: &[out.as_raw_fd()],
        mailbox: None,
        strict: flags & STRICT != 0,
    };
    Ok(bproc_ckpt::exec_dump(out, &opts, &path, &argv, &envp)?)
}

/// Replaces the calling process with the image read from `image` (BProc's `bproc_undump`):
/// returns only on failure. The image's process returns [`Resumed::Restored`]`(1)` from its
/// [`dump`], with this process's pid, parent and fds 0 to 2.
pub fn undump(image: impl Read) -> BprocError {
    BprocError::Migration(bproc_ckpt::restore::restore_in_place(image, 1, None, &mut || Ok(())))
}

/// The ghost that relays this process's output once it has moved: its port on the front end
/// and the token its connections present. It is in the process's memory, so it moves with
/// the process.
static RELAY: Mutex<Option<(u16, [u8; 16])>> = Mutex::new(None);

/// How many times this process has come back to life from an image (restored on a node, or
/// by `undump`), rather than carried on after writing one. Part of the image like all its
/// memory, so a caller that reads it before a move or fork and again after knows which side
/// it is on.
static ARRIVALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times this process has come back to life from an image: a value read before a
/// call that may move or fork this process differs afterwards exactly when it now runs from
/// the image, where the fds that could not travel are closed (their numbers free for the
/// next open).
pub fn arrivals() -> u64 {
    ARRIVALS.load(std::sync::atomic::Ordering::SeqCst)
}

fn relay() -> Option<(u16, [u8; 16])> {
    *RELAY.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_relay(r: Option<(u16, [u8; 16])>) {
    *RELAY.lock().unwrap_or_else(|e| e.into_inner()) = r;
}

fn remote(code: i32, message: impl Into<String>) -> BprocError {
    BprocError::Remote { code, message: message.into() }
}

fn token() -> [u8; 16] {
    let mut t = [0u8; 16];
    getrandom::fill(&mut t).expect("the kernel's random source failed");
    t
}

/// The spec of an image launch served on `port`: the I/O list's fds, or by default
/// `/dev/null` as stdin and stdout and stderr forwarded.
fn image_spec(io: &IoList, port: u16, token: [u8; 16]) -> ProcSpec {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (io, fds) = match io {
        IoList::Default => (vec![IoSpec::Null, IoSpec::Forward, IoSpec::Forward], Vec::new()),
        IoList::Exactly(v) => (vec![IoSpec::Closed; 3], v.clone()),
    };
    ProcSpec {
        argv: vec![crate::ghost::comm_of(&exe)],
        path: exe,
        env: Vec::new(),
        cwd: std::env::current_dir().map_or_else(|_| "/".into(), |d| d.to_string_lossy().into()),
        umask: crate::launch::current_umask(),
        io,
        fds,
        io_port: 0,
        io_ip: None,
        token,
        rlimits: Vec::new(),
        files: Vec::new(),
        image: Some(Endpoint { ip: None, port }),
        image_files: None,
        image_len: None,
    }
}

/// Waits for the image connection of request `id` on `listener`; an answer from the master
/// first means the launch failed.
fn image_connection(
    listener: &TcpListener,
    client: &mut Client,
    id: u32,
    token: &[u8; 16],
) -> Result<TcpStream, BprocError> {
    loop {
        let Some((sock_ready, reply_ready)) = wait_either(listener, client, 60_000)? else {
            return Err(remote(errno::EIO, "no node fetched the process image"));
        };
        if reply_ready {
            return Err(match client.reply(id) {
                Ok(Message::Launched { pids }) => {
                    let code = pids.first().map_or(errno::EIO, |p| -p.min(&-1));
                    remote(code, crate::strerror(-code))
                }
                Ok(m) => BprocError::Unexpected(m.name()),
                Err(e) => e,
            });
        }
        if sock_ready {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut head = [0u8; conn::HEADER_LEN];
            if s.read_exact(&mut head).is_ok() {
                let (got, _, what) = conn::parse(&head);
                if got == *token && what == conn::IMAGE {
                    s.set_read_timeout(None)?;
                    return Ok(s);
                }
            }
        }
    }
}

/// Waits up to `ms` for a connection on `listener` or a reply on `client`: which are ready,
/// or `None` on a timeout.
fn wait_either(
    listener: &TcpListener,
    client: &Client,
    ms: u16,
) -> Result<Option<(bool, bool)>, BprocError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [
        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        PollFd::new(client.stream().as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(None),
        Ok(_) => {
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            Ok(Some((ready(&fds[0]), ready(&fds[1]))))
        }
        Err(nix::Error::EINTR) => Ok(Some((false, false))),
        Err(e) => Err(BprocError::Io(e.into())),
    }
}

/// The single pid of a launch reply, or its error.
fn one_pid(reply: Result<Message, BprocError>) -> Result<i32, BprocError> {
    match reply? {
        Message::Launched { pids } if pids.len() == 1 && pids[0] > 0 => Ok(pids[0]),
        Message::Launched { pids } if pids.len() == 1 => {
            Err(remote(-pids[0], crate::strerror(pids[0])))
        }
        m => Err(BprocError::Unexpected(m.name())),
    }
}

/// Moves the calling process to `node` (BProc's `bproc_move`; [`NODE_MASTER`] is the front
/// end): returns `Ok` on the new node, as the same pid, with its memory, registers, signal
/// handlers and regular open files. What cannot travel is left behind as BProc left it: fds
/// 3 and up that are not files on a disk are closed there (as are files the node lacks),
/// and shared memory becomes private. Every thread moves with it. `EBUSY` (before anything
/// moves, the error naming the cause) for a thread that does not stop for the dump.
/// Moving to the node the process is on does nothing. On failure the process stays where it
/// was. `io` gives its fds there (by default stdout and stderr go to the ghost, which writes
/// them where the process's own went, and stdin is `/dev/null`).
pub fn move_to(node: i32, io: &IoList) -> Result<(), BprocError> {
    move_with(node, io, 0)
}

/// [`move_to`] with `flags`: [`STRICT`] refuses fds and memory that would not move
/// unchanged, instead of leaving them behind.
pub fn move_with(node: i32, io: &IoList, flags: i32) -> Result<(), BprocError> {
    io.check()?;
    let _ = std::io::stdout().flush();
    let mut client = Client::connect()?;
    let place = client.place()?;
    if node == place.node {
        return Ok(());
    }
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    let before = relay();
    let from_master = place.node == NODE_MASTER;
    let (token, relay_port, ghost) = if from_master {
        (token(), port, std::process::id() as i32)
    } else {
        // -1: "my own ghost", which the master finds from who is asking.
        let (p, t) = before.unwrap_or((0, token()));
        (t, p, -1)
    };
    let ghost_prog = match (&place.ghost, from_master) {
        (Some(g), true) => Some(g.clone()),
        (None, true) => {
            return Err(remote(
                errno::ENOSYS,
                "no ghost program on the front end (bpghost beside bpmaster)",
            ))
        }
        _ => None,
    };
    // From a node without a relaying ghost, the master points forwarded output at where the
    // process's launcher takes it (bpsh, or its ghost), or at `/dev/null`.
    let spec = image_spec(io, port, token);
    let launch = Message::Launch {
        nodes: vec![node],
        spec,
        ghosts: vec![ghost],
        io_ports: vec![relay_port],
    };
    // Asked before the launch: the node is waiting for the image once it starts.
    let libs = mapped_libraries(Some(&mut client));
    let id = client.send(&launch)?;
    let sock = image_connection(&listener, &mut client, id, &token)?;
    if from_master {
        set_relay(Some((port, token)));
    }
    let skip = [listener.as_raw_fd(), client.stream().as_raw_fd(), sock.as_raw_fd()];
    let dumped = probe(&sock, &libs).and_then(|present| {
        dump_skipping(sock.as_fd(), DUMP_DEFAULT | (flags & STRICT), &skip, &libs, &present)
    });
    if let Ok(Resumed::Restored(_)) = dumped {
        // On the new node: none of these fds exist here.
        std::mem::forget((sock, listener, client));
        return Ok(());
    }
    if let Err(BprocError::Migration(e @ bproc_ckpt::CkptError::Busy(_))) = &dumped {
        // Refused before a byte was written: the node's log says why.
        let _ = (&sock).write_all(&conn::encode_refusal(&e.to_string()));
    }
    drop(sock);
    let result = one_pid(client.reply(id));
    if let Err(e) = dumped.and(result) {
        set_relay(before);
        return Err(e);
    }
    match ghost_prog {
        Some(prog) => {
            // The front end: this process becomes the ghost, keeping its pid and parent.
            nix::fcntl::fcntl(
                listener.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(|e| BprocError::Io(e.into()))?;
            let comm = crate::ghost::comm_of(
                &std::fs::read_link("/proc/self/exe").unwrap_or_default().to_string_lossy(),
            );
            let err = std::process::Command::new(prog)
                .arg0(format!("[{comm}]"))
                .env_clear()
                .env("BPROC_SOCKET", crate::socket_path())
                .env("BPROC_GHOST_IO", relay_env(&token, listener.as_raw_fd()))
                .exec();
            // The process runs on the node: this copy cannot go back to being it.
            eprintln!("bproc: the process moved to node {node}, but its ghost failed: {err}");
            bproc_sys::exit_now(127)
        }
        // The new copy runs; this one ends without a trace (its end is not reported).
        None => bproc_sys::exit_now(0),
    }
}

pub(crate) fn relay_env(token: &[u8; 16], fd: RawFd) -> String {
    format!("{}:{fd}", hex::encode(token))
}

/// Where a vector fork left the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forked {
    /// The caller, with each child's pid or negated error (`-BE_NODEDOWN`, `-EPERM`...).
    Parent(Vec<i32>),
    /// Child `rank` (its index in the node list), running on its node.
    Child(usize),
}

/// A fork whose child runs on `node` (BProc's `bproc_rfork`): the child's pid in the parent
/// (a ghost's, so `waitpid` gives the child's exit status) or its negated error; 0 in the
/// child.
pub fn rfork(node: i32, io: &IoList) -> Result<i32, BprocError> {
    rfork_with(node, io, 0)
}

/// [`rfork`] with `flags` ([`STRICT`]).
pub fn rfork_with(node: i32, io: &IoList, flags: i32) -> Result<i32, BprocError> {
    match vrfork_with(&[node], io, flags)? {
        Forked::Parent(pids) => Ok(pids[0]),
        Forked::Child(_) => Ok(0),
    }
}

/// One child on each of `nodes` (BProc's `bproc_vrfork`), every one a direct child of the
/// caller: [`Forked::Child`] with its index in each child, [`Forked::Parent`] in the caller.
/// A child on the front end ([`NODE_MASTER`]) is a local fork. The caller is dumped once
/// and the image is served to the nodes concurrently. From a node, the children's ghosts are
/// forked by the caller's own ghost on the front end (so they are its children there) and
/// relay the children's output to where the caller's ghost writes; a child on the caller's
/// node is a local fork, and one on the front end is refused (`-EOPNOTSUPP`).
pub fn vrfork(nodes: &[i32], io: &IoList) -> Result<Forked, BprocError> {
    vrfork_with(nodes, io, 0)
}

/// [`vrfork`] with `flags` ([`STRICT`]).
pub fn vrfork_with(nodes: &[i32], io: &IoList, flags: i32) -> Result<Forked, BprocError> {
    io.check()?;
    if nodes.is_empty() {
        return Err(remote(errno::EINVAL, "vrfork needs at least one node"));
    }
    let _ = std::io::stdout().flush();
    let mut client = Client::connect()?;
    let place = client.place()?;
    // From a node the caller's ghost forks the children's ghosts; on the front end the
    // caller starts them itself.
    let on_node = place.node != NODE_MASTER;
    let prog = match (&place.ghost, on_node) {
        (Some(g), false) => g.clone(),
        (None, false) => return Err(no_ghost_program()),
        (_, true) => String::new(),
    };
    // A local fork: the caller's own machine (on a node, BProc's BE_SAMENODE).
    let here = |n: i32| n == place.node || (n == NODE_MASTER && !on_node);
    let image = nix::sys::memfd::memfd_create(
        c"bproc-image",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| BprocError::Io(e.into()))?;
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let token = token();
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let comm = crate::ghost::comm_of(&exe.to_string_lossy());
    let remote_count = if on_node { 0 } else { nodes.iter().filter(|n| !here(**n)).count() };
    // Where the caller's stdout and stderr are both /dev/null (a batch job's), so are the
    // children's, and their ghosts relay nothing: no connections per child.
    let quiet = !on_node && matches!(io, IoList::Default) && {
        let null = crate::launch::null_device();
        crate::launch::is_null(1, null) && crate::launch::is_null(2, null)
    };
    // The ghosts are made while the caller dumps itself (on another core, where there is
    // one): neither needs the other, and the launch waits for both.
    let ghosts_made =
        |e: std::io::Error| remote(errno::EAGAIN, format!("cannot start ghosts: {e}"));
    let starting = crate::ghost::start(&prog, &comm, remote_count, (!quiet).then_some(&token))
        .map_err(ghosts_made)?;
    let skip: Vec<RawFd> = [image.as_raw_fd(), listener.as_raw_fd(), client.stream().as_raw_fd()]
        .into_iter()
        .chain(starting.fds())
        .collect();
    let libs = mapped_libraries(Some(&mut client));
    // Every regular file is named: each node is asked which it has, and the pages of those
    // it lacks travel in its copy (the same bytes either way).
    let files: Vec<String> = mapped_files()
        .into_iter()
        .filter(|f| std::fs::metadata(f).is_ok_and(|st| st.is_file()))
        .collect();
    match dump_skipping(image.as_fd(), DUMP_DEFAULT | (flags & STRICT), &skip, &libs, &files) {
        Ok(Resumed::Restored(v)) => {
            // The descriptors these hold were left out of the image.
            std::mem::forget((image, listener, client, starting));
            return Ok(Forked::Child((v - 1) as usize));
        }
        Ok(Resumed::Dumped) => {}
        Err(e) => {
            // The ghosts end as their word is dropped unsent; each is reaped here.
            if let Ok((made, sent)) = starting.made() {
                drop(sent);
                crate::ghost::discard(made.into_iter().map(|(pid, _)| pid));
            }
            return Err(e);
        }
    }
    let (relays, sent) = starting.made().map_err(ghosts_made)?;
    let mut made = relays.into_iter();
    let (ghosts, ports): (Vec<i32>, Vec<u16>) = nodes
        .iter()
        .map(|n| match (here(*n), on_node) {
            (true, _) => (0, 0),
            // The master has the caller's ghost fork one, which relays.
            (false, true) => (bproc_proto::GHOST_FORKED, 0),
            (false, false) => made.next().unwrap_or((0, 0)),
        })
        .unzip();
    let port = listener.local_addr()?.port();
    let mut spec = image_spec(io, port, token);
    if quiet {
        spec.io = vec![IoSpec::Null; 3];
    }
    // Each node says at once which of the files the image names it has: no probe.
    let held = std::fs::File::from(image.try_clone()?);
    let files = bproc_ckpt::inline::named(&bproc_ckpt::inline::header_in(&held)?);
    spec.image_files = Some(files.clone());
    spec.image_len = Some(held.metadata()?.len());
    let launch = Message::Launch {
        nodes: nodes.iter().map(|n| if here(*n) { NODE_MASTER } else { *n }).collect(),
        spec,
        ghosts: ghosts.clone(),
        io_ports: ports,
    };
    let id = client.send(&launch)?;
    // The ghosts hear that the request is out (see `launch::vexecmove`).
    sent.iter().for_each(crate::ghost::LaunchSent::sent);
    let reply = serve_image(&listener, &mut client, id, &token, held, files);
    let mut pids = match reply {
        Ok(Message::Launched { pids }) if pids.len() == nodes.len() => pids,
        other => {
            crate::ghost::discard(ghosts.iter().copied().filter(|_| !on_node));
            return Err(match other {
                Err(e) => e,
                Ok(m) => BprocError::Unexpected(m.name()),
            });
        }
    };
    drop((image, listener, client));
    if let Some(rank) = settle(&mut pids, nodes, &ghosts, here, on_node) {
        return Ok(Forked::Child(rank));
    }
    Ok(Forked::Parent(pids))
}

/// A front end without the ghost program cannot give forked children ghosts.
fn no_ghost_program() -> BprocError {
    remote(errno::ENOSYS, "rfork and vrfork need bpghost beside bpmaster on the front end")
}

/// What each of a vrfork's `pids` becomes once the master has launched them: a local fork
/// for a node that is the caller's own (`Some(rank)` in that child), a stand-in for a child
/// whose ghost is on the front end, the ghost's pid for one launched from the front end.
fn settle(
    pids: &mut [i32],
    nodes: &[i32],
    ghosts: &[i32],
    here: impl Fn(i32) -> bool,
    on_node: bool,
) -> Option<usize> {
    for (rank, pid) in pids.iter_mut().enumerate() {
        if here(nodes[rank]) {
            match bproc_sys::fork_single_threaded() {
                Ok(0) => return Some(rank),
                Ok(child) => *pid = child,
                Err(e) => *pid = -(e as i32),
            }
        } else if on_node {
            // The master's pid is the child's ghost's; the caller waits for a stand-in here.
            if *pid > 0 {
                // Signals wait in the new stand-in until it reads them.
                use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
                let mut mask = SigSet::empty();
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut mask));
                let forked = bproc_sys::fork_single_threaded();
                if forked == Ok(0) {
                    stand_in(*pid);
                }
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
                *pid = forked.unwrap_or_else(|e| -(e as i32));
            }
        } else if *pid <= 0 {
            crate::ghost::discard([ghosts[rank]]);
        } else if ghosts[rank] > 0 {
            *pid = ghosts[rank];
        }
    }
    None
}

/// A child a process on a node rforked to another node: a copy of the caller that stands
/// in for it here, so that the caller's `waitpid` (and `SIGCHLD`) see the child end. It
/// holds none of the caller's fds, asks the master to wait for the child's end
/// ([`Message::ProcWait`] with its ghost's pid `ghost`), passes the signals it receives on
/// to the child, and ends the way the child ended (a lost node: SIGKILL, as for a ghost).
fn stand_in(ghost: i32) -> ! {
    use nix::sys::signal::{SigSet, Signal};
    bproc_sys::close_fds_from(0, &[]);
    // Signals sent to the stand-in (blocked since before the fork) go on to the child, as
    // `SignalLaunch` on the waiting connection, SIGCHLD aside; SIGKILL and SIGSTOP end or
    // stop the stand-in alone. None of the caller's handlers runs here, and none ignores.
    bproc_sys::default_signal_actions();
    let all = SigSet::all();
    let status = (|| {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let sfd =
            SignalFd::with_flags(&all, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok()?;
        let mut client = Client::connect().ok()?;
        client.stream().set_read_timeout(None).ok()?;
        let id = client.send(&Message::ProcWait { pid: ghost }).ok()?;
        loop {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut fds = [
                PollFd::new(client.stream().as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => return None,
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let (answer, signalled) = (ready(&fds[0]), ready(&fds[1]));
            if signalled {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let signal = info.ssi_signo as i32;
                    if signal != Signal::SIGCHLD as i32 {
                        client.send(&Message::SignalLaunch { signal }).ok()?;
                    }
                }
            }
            if answer {
                return match client.reply(id).ok()? {
                    Message::ProcExit { status, .. } => Some(status),
                    _ => None,
                };
            }
        }
    })();
    let signal = match status {
        Some(bproc_proto::ExitStatus::Code(c)) => bproc_sys::exit_now(c),
        Some(bproc_proto::ExitStatus::Signal(s)) => s,
        Some(bproc_proto::ExitStatus::NodeLost) => nix::sys::signal::Signal::SIGKILL as i32,
        None => bproc_sys::exit_now(255),
    };
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        // No core file, so the waiter sees the signal with the core flag clear.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        bproc_sys::default_signal_actions();
        let mut one = nix::sys::signal::SigSet::empty();
        one.add(sig);
        let _ = nix::sys::signal::raise(sig);
        let _ = one.thread_unblock();
    }
    bproc_sys::exit_now(128 + (signal & 0x7f))
}

/// Serves `image` to every node that connects for request `id`, each on a thread of its own,
/// until the master's answer (which comes once every node has restored or failed).
fn serve_image(
    listener: &TcpListener,
    client: &mut Client,
    id: u32,
    token: &[u8; 16],
    image: std::fs::File,
    files: Vec<conn::FileId>,
) -> Result<Message, BprocError> {
    let size = image.metadata()?.len();
    let served = Served { files, image, size: size as usize, copies: Default::default() };
    let served = &served;
    std::thread::scope(|scope| loop {
        let Some((sock_ready, reply_ready)) = wait_either(listener, client, u16::MAX)? else {
            continue;
        };
        if reply_ready {
            return client.reply(id);
        }
        if sock_ready {
            let Ok((s, _)) = listener.accept() else { continue };
            scope.spawn(move || send_image(s, token, served));
        }
    })
}

/// A vector fork's image as the mover serves it.
struct Served {
    /// The image.
    image: std::fs::File,
    /// Its length.
    size: usize,
    /// The files it names, which each node is asked about.
    files: Vec<conn::FileId>,
    /// Copies made for nodes that lack some of them.
    copies: bproc_ckpt::inline::Copies,
}

/// Sends the image to one node that presents `token`: as it is if the node has every file it
/// names, else a copy carrying those it lacks.
fn send_image(mut s: TcpStream, token: &[u8; 16], served: &Served) {
    use std::os::unix::fs::FileExt;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut head = [0u8; conn::HEADER_LEN];
    if s.read_exact(&mut head).is_err() {
        return;
    }
    let (got, _, what) = conn::parse(&head);
    if got != *token || what != conn::IMAGE {
        return;
    }
    // The node's answer follows, unasked: the launch listed the files.
    let mut count = [0u8; 4];
    if s.read_exact(&mut count).is_err() {
        return;
    }
    let Ok(len) = conn::answer_len(count, served.files.len()) else { return };
    let mut answer = vec![0u8; len];
    if s.read_exact(&mut answer).is_err() {
        return;
    }
    let whole = || {
        let mut bytes = vec![0u8; served.size];
        served.image.read_exact_at(&mut bytes, 0).map_err(|e| {
            bproc_ckpt::CkptError::Path(format!("reading the vector fork's image back: {e}"))
        })?;
        Ok(std::sync::Arc::new(bytes) as std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>)
    };
    match served.copies.for_answer(&served.files, &answer, None, whole) {
        Ok(Some(copy)) => {
            let _ = s.write_all(&copy);
            return;
        }
        Ok(None) => {}
        Err(e) => {
            // The node's log says why its rank failed.
            let _ = s.write_all(&conn::encode_refusal(&e.to_string()));
            return;
        }
    }
    let mut off: i64 = 0;
    while (off as usize) < served.size {
        let left = served.size - off as usize;
        match nix::sys::sendfile::sendfile(&s, &served.image, Some(&mut off), left) {
            Ok(0) => return,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}
