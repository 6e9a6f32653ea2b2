//! The messages and their body encodings.
//!
//! Type numbers are grouped: 1–19 slave link, 20–39 client requests, 40–59 master → slave
//! commands, 100–119 replies, 120– events. Numbers are never reused; a retired message keeps
//! its number. See `docs/protocol.md` for the flows.

use std::net::Ipv4Addr;

use crate::codec::{DecodeError, Reader, Writer};

/// Node number of the master (front end).
pub const NODE_MASTER: i32 = -1;

/// In [`Message::Launch`]'s ghosts, from a process on a node that rforks: a ghost that the
/// caller's own ghost forks for the child (so the children's ghosts are its ghost's children).
pub const GHOST_FORKED: i32 = -2;

/// Longest node state string (BProc's `BPROC_STATE_LEN`).
pub const MAX_STATE_LEN: usize = 15;
/// Longest free-text field (error messages, reasons, version strings, host names).
pub const MAX_TEXT: usize = 4096;
/// Longest path.
pub const MAX_PATH: usize = 4096;
/// Most nodes in one list.
pub const MAX_NODES: usize = 1 << 16;
/// Most processes in one process list.
pub const MAX_PROCS: usize = 1 << 20;

/// A change to the library list ([`Message::LibEdit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LibOp {
    /// Empty the list (`bplib -c`).
    Clear = 0,
    /// Add the names; adding one already there does nothing (`bplib -a`).
    Add = 1,
    /// Remove the names; a name not on the list is an error (`bplib -d`).
    Delete = 2,
}

/// A node command that the slave carries out without a reply (BProc's fire-and-forget calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Run the node's reboot command.
    Reboot,
    /// Run the node's halt command.
    Halt,
    /// Run the node's power-off command.
    Poweroff,
}

impl NodeAction {
    fn code(self) -> u8 {
        match self {
            NodeAction::Reboot => 1,
            NodeAction::Halt => 2,
            NodeAction::Poweroff => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            1 => NodeAction::Reboot,
            2 => NodeAction::Halt,
            3 => NodeAction::Poweroff,
            v => return Err(DecodeError::BadValue { what: "node action", value: v.into() }),
        })
    }
    /// The word used in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            NodeAction::Reboot => "reboot",
            NodeAction::Halt => "halt",
            NodeAction::Poweroff => "poweroff",
        }
    }
}

/// Where a launched process's fd 0, 1 or 2 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoSpec {
    /// A TCP connection back to the launcher (bpsh), which forwards it.
    Forward,
    /// `/dev/null` on the node (`bpsh -N`).
    Null,
    /// A file on the node, opened with the caller's credentials (`bpsh -I/-O/-E`): read-only
    /// for fd 0, else write, create (0666 before umask) and truncate.
    File(String),
    /// A file on the node opened with the caller's credentials, these `open(2)` flags and
    /// mode, then positioned at `offset` (libbproc's `BPROC_IO_FILE`).
    Open {
        /// Path on the node.
        path: String,
        /// `open(2)` flags (Linux values).
        flags: i32,
        /// Mode for a created file, before the umask.
        mode: u32,
        /// Where to seek to after opening (0: stay at the start, or at the end with
        /// `O_APPEND`).
        offset: i64,
    },
    /// A TCP connection from the node (libbproc's `BPROC_IO_SOCKET`).
    Connect {
        /// Address; `None` (`0.0.0.0`): the launcher's, as this node reaches it.
        ip: Option<Ipv4Addr>,
        /// Port.
        port: u16,
        /// Send the process's front-end pid and the fd number first, as two native-endian
        /// 32-bit integers (`BPROC_IO_SEND_INFO`).
        send_info: bool,
    },
    /// No file: the fd is closed.
    Closed,
    /// A forwarded fd of a process that moved on from the node it was launched on: a TCP
    /// connection to its launcher's listener (bpsh's, or its relaying ghost's), opened with
    /// the launcher's token and the process's rank in that launch, so the launcher takes it
    /// as the next connection of that rank's stream. Set by the master, never by a client.
    Rejoin {
        /// Address; `None`: the master's, as the node sees it.
        ip: Option<Ipv4Addr>,
        /// Port.
        port: u16,
        /// The launch's token.
        token: [u8; 16],
        /// The rank in that launch.
        rank: u32,
    },
}

/// One entry of an explicit I/O list: what `fd` of the process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdIo {
    /// The fd in the process, 0 to [`MAX_FD`].
    pub fd: i32,
    /// What it is.
    pub io: IoSpec,
    /// When it cannot be set up, leave the fd closed and start the process anyway (with
    /// `BPROC_IO_DELAY`, BProc only logged such errors).
    pub optional: bool,
}

/// Most entries in an explicit I/O list (BProc's `BPROC_IO_MAX_LEN`).
pub const MAX_FD_IO: usize = 16;
/// Highest fd an I/O list may name.
pub const MAX_FD: i32 = 1023;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Its node was lost before it ended (BProc's `BE_SLAVEDIED`); it counts as killed by
    /// SIGKILL.
    NodeLost,
}

/// A process to start on a node: what the launcher asks for, minus who it is (the master adds
/// the caller's credentials from the kernel, never from the request).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcSpec {
    /// Program to execute (an absolute path).
    pub path: String,
    /// Arguments, `argv[0]` as typed.
    pub argv: Vec<String>,
    /// Environment, `NAME=value` each.
    pub env: Vec<String>,
    /// Working directory; `/` is used when it does not exist on the node.
    pub cwd: String,
    /// File mode creation mask; the master replaces it with the launcher's, from its kernel.
    pub umask: u32,
    /// fds 0, 1, 2.
    pub io: Vec<IoSpec>,
    /// Explicit I/O list, applied after `io` (so it may override fds 0–2).
    pub fds: Vec<FdIo>,
    /// Port of the launcher's listener for forwarded fds.
    pub io_port: u16,
    /// Address of that listener: `None` for the master's address as the node sees it (set by
    /// the master for launchers on nodes).
    pub io_ip: Option<Ipv4Addr>,
    /// Secret the node presents on each forwarded connection.
    pub token: [u8; 16],
    /// Resource limits to apply: (resource number, soft, hard), `u64::MAX` for unlimited.
    /// The master replaces what a launcher sends with the launcher's limits as its kernel
    /// has them, so a launcher cannot claim more than it has.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Files a diskless node must hold (program, interpreters, libraries).
    pub files: Vec<StagedRef>,
    /// A process image to restore instead of starting `path` (a move, rfork or vrfork): the
    /// node fetches it from this endpoint (`None` address: the master's, as the node sees
    /// it) with `token`, and each rank's restored copy returns rank + 1 from the dump.
    pub image: Option<Endpoint>,
}

/// Longest node attribute name (as an xattr name's).
pub const MAX_ATTR_NAME: usize = 255;
/// Largest node attribute value (as an xattr value's).
pub const MAX_ATTR_VALUE: usize = 1 << 16;

/// Most resource limits one process carries (Linux has 16).
pub const MAX_RLIMITS: usize = 64;

/// A file a diskless node needs for a launch, fetched from the launcher by content hash
/// unless the node's cache already holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StagedRef {
    /// Absolute path, the same on the node.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub hash: [u8; 32],
}

/// Most files staged for one launch.
pub const MAX_STAGED: usize = 4096;

/// The caller's identity, as the kernel told the master.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// An IPv4 address and port where either part may be left for the receiver to fill in
/// (`bpctl --reconnect`'s omitted parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Address, or `None` for "the one in use now".
    pub ip: Option<Ipv4Addr>,
    /// Port, or 0 for "the one in use now".
    pub port: u16,
}

/// What a slave reports about its machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub mem_total: u64,
    /// Available memory in bytes.
    pub mem_free: u64,
    /// Load averages over 1, 5 and 15 minutes, in hundredths.
    pub load: [u32; 3],
    /// Seconds since the node booted.
    pub uptime: u64,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Host name of the node.
    pub hostname: String,
    /// Machine architecture (`uname -m`).
    pub arch: String,
    /// The node has no filesystem of its own: programs and libraries are staged on it.
    pub diskless: bool,
    /// Bytes of programs and libraries fetched into the node's cache so far.
    pub staged_bytes: u64,
}

/// One row of the master's node table as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Node number (≥ 0).
    pub node: i32,
    /// State string (`down`, `boot`, `up`, `error` or any alphanumeric word).
    pub state: String,
    /// Permission bits, a subset of 0111.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Address of the node's connection; `None` while down.
    pub addr: Option<Ipv4Addr>,
    /// Latest machine report; `None` while down.
    pub info: Option<NodeInfo>,
}

/// A receiver of a copy stream: a data port and the token the sender must present.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyLink {
    /// Node number of the receiver ([`NODE_MASTER`] for the master, [`NODE_CLIENT`] for the
    /// client that asked for the copy).
    pub node: i32,
    /// Its address, or `None` for "the master's address as you see it".
    pub ip: Option<Ipv4Addr>,
    /// Its data port.
    pub port: u16,
    /// Secret the sender presents first.
    pub token: [u8; 16],
}

/// One node's part of a launch tree: where it listens for the tree and which ranks it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Node number.
    pub node: i32,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its tree port.
    pub port: u16,
    /// The ranks it runs.
    pub ranks: Vec<u32>,
    /// For each of `ranks`, the pid of its ghost on the master (0: none), which the process
    /// takes on the node when the slave can give it (a pid namespace per master).
    pub pids: Vec<i32>,
    /// For each of `ranks`, the port its forwarded fds connect to instead of the spec's
    /// `io_port` (empty, or 0: the spec's): a moved process's ghost relays its output.
    pub ports: Vec<u16>,
}

/// What happened to a process on a node (slave → master, [`Message::ProcEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcChange {
    /// It ended.
    Exited(ExitStatus),
    /// It stopped (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    Stopped,
    /// It continued after a stop.
    Continued,
    /// It forked `child` (the child's pid on the node, as the slave names it), running `comm`.
    Forked {
        /// The child's pid on the node.
        child: i32,
        /// The child's pid as it sees itself (in the node's pid namespace for the master).
        child_ns: i32,
        /// Its command name.
        comm: String,
    },
    /// It ran a new program, `comm`.
    Exec {
        /// The new command name.
        comm: String,
    },
}

/// A remote process as the master knows it ([`Message::Procs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    /// Its ghost's pid on the master.
    pub pid: i32,
    /// The node it runs on.
    pub node: i32,
    /// Its pid on the node as the slave names it.
    pub rpid: i32,
    /// Owner.
    pub uid: u32,
}

/// A process a slave runs for its master ([`Message::SessionProcs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveProc {
    /// Its pid on the node as the slave names it.
    pub pid: i32,
    /// Its ghost's pid on the master (0: none known).
    pub ghost: i32,
    /// The launch it is a rank of (0: forked, not launched).
    pub launch: u64,
    /// Its rank in that launch.
    pub rank: u32,
    /// Owner.
    pub uid: u32,
}

/// A remote process's state as measured on its node ([`Message::ProcStats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Its pid on the node as the slave names it.
    pub rpid: i32,
    /// State letter from `/proc/PID/stat` (`R`, `S`, `T`...).
    pub state: u8,
    /// User plus system CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
}

/// How a tree node splits the nodes below it among its children: at most `width` contiguous
/// runs of nearly equal length, each led by the child that receives it.
pub fn split_tree(rest: &[TreeEntry], width: u32) -> Vec<&[TreeEntry]> {
    let width = (width.max(1) as usize).min(rest.len());
    if width == 0 {
        return Vec::new();
    }
    let (base, extra) = (rest.len() / width, rest.len() % width);
    let mut out = Vec::with_capacity(width);
    let mut at = 0;
    for i in 0..width {
        let len = base + usize::from(i < extra);
        out.push(&rest[at..at + len]);
        at += len;
    }
    out
}

/// Node number that stands for the client itself in copy requests.
pub const NODE_CLIENT: i32 = i32::MIN;

/// How a copy treats what it moves (bpcp's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOpts {
    /// Copy directories recursively (`-r`).
    pub recursive: bool,
    /// Keep mode and times (`-p`).
    pub preserve: bool,
    /// The target must be a directory (several sources, or a gather).
    pub target_dir: bool,
    /// Umask applied to new files without `-p`.
    pub umask: u32,
}

/// One node's part in a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyTask {
    /// Read `paths` and stream them to each of `to`.
    Send {
        /// Files or directories, as the user typed them.
        paths: Vec<String>,
        /// Receivers to connect to.
        to: Vec<CopyLink>,
    },
    /// Accept one stream presenting `token`, relay it to each of `to`, and write it at
    /// `target`, each top-level name followed by `suffix`.
    Receive {
        /// Secret the sender presents.
        token: [u8; 16],
        /// Target path (a directory, or the new name of a single source).
        target: String,
        /// Appended to each top-level name (`.N` when gathering from many nodes).
        suffix: String,
        /// Receivers further down the broadcast tree.
        to: Vec<CopyLink>,
    },
}

/// Most paths or receivers in one copy request.
pub const MAX_COPY_ITEMS: usize = 1 << 16;

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Master → slave, first frame on a link: a fresh random challenge.
    AuthChallenge {
        /// Master's nonce.
        nonce: [u8; 32],
    },
    /// Slave → master: the slave's own nonce and its proof of the cluster key.
    AuthResponse {
        /// Slave's nonce.
        nonce: [u8; 32],
        /// HMAC over both nonces (see `bproc-link`).
        mac: [u8; 32],
    },
    /// Master → slave: the master's proof of the cluster key.
    AuthConfirm {
        /// HMAC over both nonces, with the master's label.
        mac: [u8; 32],
    },
    /// Slave → master after authentication: who it is.
    Join {
        /// Software version of the slave.
        version: String,
        /// Session cookie of the slave's previous session, 0 for a fresh daemon.
        cookie: u64,
        /// The machine's report.
        info: NodeInfo,
        /// Port of the slave's data service (copies), on the link's address.
        data_port: u16,
        /// Port where the slave takes launch trees from other slaves, on the same address.
        tree_port: u16,
    },
    /// Slave → master after authentication, instead of [`Message::Join`]: this connection
    /// carries a client running on the node; from here on it speaks the client protocol with
    /// the master, as `creds` (which the slave read from the kernel).
    ProxyClient {
        /// The node the client runs on.
        node: i32,
        /// The client's identity on the node.
        creds: Creds,
        /// Its pid as the slave sees it (the kernel's word; 0 if unknown), which names it
        /// among the node's processes when it moves itself.
        pid: i32,
        /// Its resource limits, from `/proc/PID/limits` on the node, which its launches get.
        rlimits: Vec<(u32, u64, u64)>,
        /// Its umask, from `/proc/PID/status` on the node.
        umask: u32,
    },
    /// Master → slave: the node's configuration (BProc's `CONF`); sent on join and on SIGHUP.
    Conf {
        /// The node number assigned.
        node: i32,
        /// The session cookie to present when reconnecting.
        cookie: u64,
        /// Seconds without a ping after which the slave declares the master lost.
        ping_timeout: u32,
        /// Master's time of day, milliseconds since the epoch.
        time_ms: u64,
        /// Seconds a session outlives its link: the master keeps an unreachable node's jobs
        /// that long, and the slave kills them itself (self-fencing) once it has been without
        /// its master that long.
        grace: u32,
    },
    /// Master → slave keepalive.
    Ping {
        /// Sequence number echoed by the pong.
        seq: u64,
        /// Master's time of day, milliseconds since the epoch.
        time_ms: u64,
    },
    /// Slave → master keepalive answer with a fresh machine report.
    Pong {
        /// The ping's sequence number.
        seq: u64,
        /// The machine's report.
        info: NodeInfo,
    },
    /// Either side, just before closing a link: why.
    Disconnect {
        /// Human-readable reason.
        reason: String,
        /// Whether a slave started with `-r` should connect again. False when the administrator
        /// set the node down or the slave was refused.
        reconnect: bool,
    },
    /// Master → slave: reboot, halt or power off (no reply).
    Action {
        /// What to do.
        action: NodeAction,
    },
    /// Master → slave request: `chroot(path)` the slave daemon.
    SlaveChroot {
        /// New root directory.
        path: String,
    },
    /// Master → slave request, when a diskless node joins: make these files present in the
    /// node's root (the configuration's `libraries`), fetching missing ones from the master's
    /// file port with `token`, as a launch's files are fetched from its launcher.
    StageFiles {
        /// Port of the master's file server, on the master's address.
        port: u16,
        /// Secret to present.
        token: [u8; 16],
        /// The files.
        files: Vec<StagedRef>,
    },
    /// Master → slave request: take part in a copy, as `creds`. Replied with
    /// [`Message::CopyResult`] when the part is over.
    CopyOrder {
        /// Identity to open and create files with.
        creds: Creds,
        /// Working directory for relative paths (`/` when missing).
        cwd: String,
        /// Flags.
        opts: CopyOpts,
        /// What to do.
        task: CopyTask,
    },
    /// Master → slave, and slave → slave over a tree connection: run the ranks of
    /// `entries[0]` (this node) and pass the rest on, split among at most `width` children,
    /// each of which gets its part the same way. Each rank's outcome goes to the master as
    /// [`Message::RankSpawned`].
    SpawnTree {
        /// Launch id.
        launch: u64,
        /// Random, once per launch: a node takes each launch once, so a recorded tree
        /// message cannot be replayed.
        nonce: u64,
        /// The master's time of day when it sent the launch, milliseconds since the epoch.
        time_ms: u64,
        /// Number of ranks in the launch.
        size: u32,
        /// Credentials to run with.
        creds: Creds,
        /// The process.
        spec: ProcSpec,
        /// Children per node.
        width: u32,
        /// This node's part, then the subtree below it.
        entries: Vec<TreeEntry>,
    },
    /// Master → slave: send `signal` to process `pid` of this node on behalf of `sender` (a
    /// master pid; 0 for the master itself).
    SignalPid {
        /// The process's pid on the node as the slave names it.
        pid: i32,
        /// Signal number.
        signal: i32,
        /// Who sent it, on the master.
        sender: i32,
    },
    /// Master → slave request: measure these processes. Replied with [`Message::ProcStats`].
    ProcStatQuery {
        /// Pids on the node as the slave names them.
        pids: Vec<i32>,
    },
    /// Master → slave: signal a launch's process on this node (`rank` `u32::MAX`: all of them).
    SignalProc {
        /// Launch id.
        launch: u64,
        /// Rank, or `u32::MAX`.
        rank: u32,
        /// Signal number.
        signal: i32,
    },
    /// Master → slave request: open a new link to `master` from `local` and move the session.
    SlaveReconnect {
        /// Master address to connect to.
        master: Endpoint,
        /// Local address to connect from.
        local: Endpoint,
    },

    /// Client → master: the whole node table.
    NodeList,
    /// Client → master: set a node's state string.
    SetState {
        /// Node number.
        node: i32,
        /// New state.
        state: String,
    },
    /// Client → master: set a node's permission bits.
    Chmod {
        /// Node number.
        node: i32,
        /// New mode (only execute bits are valid).
        mode: u32,
    },
    /// Client → master: set a node's owner.
    Chown {
        /// Node number.
        node: i32,
        /// New owner.
        uid: u32,
    },
    /// Client → master: set a node's group.
    Chgrp {
        /// Node number.
        node: i32,
        /// New group.
        gid: u32,
    },
    /// Client → master: reboot, halt or power off a node.
    NodeCommand {
        /// Node number.
        node: i32,
        /// What to do.
        action: NodeAction,
    },
    /// Client → master: one attribute of a node (`state`, `addr`, or one set with
    /// [`Message::SetNodeAttr`]). Replied with [`Message::NodeAttr`].
    GetNodeAttr {
        /// Node number.
        node: i32,
        /// Attribute name.
        name: String,
    },
    /// Client → master: set a node's attribute (root only; an empty value removes it). The
    /// node keeps it until it goes down.
    SetNodeAttr {
        /// Node number.
        node: i32,
        /// Attribute name.
        name: String,
        /// Value, at most [`MAX_ATTR_VALUE`] bytes.
        value: Vec<u8>,
    },
    /// Reply to [`Message::GetNodeAttr`].
    NodeAttr {
        /// The value.
        value: Vec<u8>,
    },
    /// Reply to [`Message::LibList`]: paths in sorted order.
    Libraries {
        /// The paths.
        names: Vec<String>,
    },
    /// Client → master: `chroot` a node's slave daemon.
    NodeChroot {
        /// Node number.
        node: i32,
        /// New root directory on the node.
        path: String,
    },
    /// Client → master: move a node's link to another address (`bpctl --reconnect`).
    NodeReconnect {
        /// Node number.
        node: i32,
        /// Master address for the new link.
        master: Endpoint,
        /// Slave address for the new link.
        local: Endpoint,
    },
    /// Client → master: send me [`Message::NodesChanged`] after every change, until I close.
    Watch,
    /// Client → master: the master's slave-facing addresses and version.
    MasterInfo,
    /// Client → master: start `spec` once on each of `nodes` (rank = index). Replied with
    /// [`Message::Launched`]; then [`Message::ProcExit`] events arrive, one per started rank.
    Launch {
        /// Node numbers, duplicates allowed.
        nodes: Vec<i32>,
        /// The process.
        spec: ProcSpec,
        /// Per rank, the pid of the ghost the client made for it (empty, or 0: none). A rank
        /// with a ghost lives as long as its ghost, not as long as this connection. For a
        /// process on a node that moves itself (an image launch), -1 names its own ghost;
        /// for one that rforks, [`GHOST_FORKED`] asks for a ghost its own ghost forks.
        ghosts: Vec<i32>,
        /// Per rank, the port its forwarded fds connect to instead of `spec.io_port` (empty,
        /// or 0: `spec.io_port`).
        io_ports: Vec<u16>,
    },
    /// Client → master, a ghost's first frame: this connection is the ghost of a remote
    /// process (which one, the kernel-given pid says). `fork` is the fork it answers
    /// ([`Message::GhostFork`]), 0 for a ghost made by its launcher. Then the ghost sends
    /// [`Message::GhostSignal`]s and receives [`Message::GhostState`], [`Message::GhostFork`],
    /// [`Message::GhostExec`] and finally [`Message::ProcExit`].
    GhostHello {
        /// Fork id, or 0.
        fork: u64,
    },
    /// Ghost → master: a signal arrived for the remote process.
    GhostSignal {
        /// Signal number.
        signal: i32,
        /// The sender's pid (0: the kernel, a terminal).
        sender: i32,
    },
    /// Client → master: wait for the end of the remote process whose ghost is `pid` (one of
    /// the caller's uid). Replied with [`Message::ProcExit`] (launch and rank 0) when it
    /// ends, however long that takes: a node's stand-in for a child its caller rforked.
    /// Meanwhile each [`Message::SignalLaunch`] on the connection goes to that process (no
    /// answer).
    ProcWait {
        /// The process's ghost pid.
        pid: i32,
    },
    /// Client → master: every remote process. Replied with [`Message::Procs`].
    ProcList,
    /// Client → master: the state, CPU time and memory of the remote processes of `pids`
    /// (ghost pids; empty: all), measured on their nodes. Replied with [`Message::ProcStats`].
    ProcStatList {
        /// Ghost pids, or none for all.
        pids: Vec<i32>,
    },
    /// Client → master: send `signal` to every running process of this connection's launch.
    SignalLaunch {
        /// Signal number.
        signal: i32,
    },
    /// Client → master: copy `paths` from each of `src` to `target` on each of `dst`
    /// ([`NODE_CLIENT`] in either list: the client itself). Replied with
    /// [`Message::CopyPlan`], then one [`Message::CopyResult`] per node with a part.
    Copy {
        /// Source nodes (several only when gathering to the client).
        src: Vec<i32>,
        /// Source paths (on every source node).
        paths: Vec<String>,
        /// Destination nodes (several: a broadcast).
        dst: Vec<i32>,
        /// Target path on the destinations.
        target: String,
        /// Flags.
        opts: CopyOpts,
        /// The client's working directory, for relative paths on nodes.
        cwd: String,
        /// Children per node in a broadcast tree (1: a chain).
        fanout: u32,
        /// The client's data port, when it receives.
        port: u16,
    },
    /// Client → master: the library list (files every machine has at the same path, which
    /// process images name instead of carrying). `only` empty: the whole list; otherwise
    /// those of `only` on it. Replied with [`Message::Libraries`].
    LibList {
        /// Paths to look up, or none for all.
        only: Vec<String>,
    },
    /// Client → master: change the library list (root only). Replied with
    /// [`Message::Ok`], or an error that changed nothing.
    LibEdit {
        /// What to do with `names`.
        op: LibOp,
        /// Absolute paths (none for [`LibOp::Clear`]).
        names: Vec<String>,
    },

    /// Reply: success.
    Ok,
    /// Reply: failure, with an errno-style code (see [`crate::errno`]) and a message.
    Error {
        /// errno value or a `BE_*` code.
        code: i32,
        /// What went wrong, naming the node or path.
        message: String,
    },
    /// Reply to [`Message::NodeList`].
    Nodes {
        /// Every configured node in table order.
        nodes: Vec<NodeStatus>,
    },
    /// Reply to [`Message::MasterInfo`].
    MasterInfoReply {
        /// Software version.
        version: String,
        /// Addresses slaves connect to.
        addrs: Vec<Endpoint>,
        /// Bytes the master has sent to slaves since it started (launches, pings, commands).
        bytes_to_slaves: u64,
        /// The node the asking client runs on ([`NODE_MASTER`] on the front end).
        client_node: i32,
        /// Where nodes reach the asking client: its node's address for a client on a node,
        /// `None` on the front end (use `addrs`).
        client_ip: Option<Ipv4Addr>,
        /// The ghost program launchers start for remote processes (empty: none installed).
        ghost: String,
        /// Ghosts the master has taken in since it started (each launch's, move's and fork's
        /// ghost, counted at its hello). Absent from an older master's reply: 0.
        ghosts_made: u64,
    },
    /// Master → ghost: the remote process stopped (`true`) or continued.
    GhostState {
        /// Stopped or running.
        stopped: bool,
    },
    /// Master → ghost: the remote process forked; fork a child ghost named `comm` that opens
    /// its own connection with [`Message::GhostHello`] `{ fork }`.
    GhostFork {
        /// Fork id.
        fork: u64,
        /// The child's command name.
        comm: String,
    },
    /// Master → ghost: its process, on a node, rforks (`bproc_rfork`, `bproc_vrfork`); fork a
    /// child ghost named `comm` for one of the children, which relays that child's output
    /// (connections presenting `token`) to this ghost's stdout and stderr, opens its own
    /// connection with [`Message::GhostHello`] `{ fork }` and then says its relay's port
    /// ([`Message::GhostRelayPort`]).
    GhostRfork {
        /// Fork id.
        fork: u64,
        /// The child's command name.
        comm: String,
        /// The token the child's output connections present.
        token: [u8; 16],
    },
    /// Ghost → master, after its hello: the port of its relay (a ghost forked for an rforked
    /// child, [`Message::GhostRfork`]).
    GhostRelayPort {
        /// The relay's port on the front end.
        port: u16,
    },
    /// Master → ghost: the remote process ran a new program.
    GhostExec {
        /// The new command name.
        comm: String,
    },
    /// Master → ghost: the remote process moves back to the front end. The ghost becomes it,
    /// restoring the image fetched from `image` with `token`, and answers
    /// [`Message::GhostRestored`] before the restored process runs.
    GhostRestore {
        /// Where the image is served.
        image: Endpoint,
        /// Secret to present there.
        token: [u8; 16],
    },
    /// Master → ghost: the ghost's remote process (a client on a node) launched rank `rank`
    /// of launch `launch` on the front end ([`NODE_MASTER`]); the ghost, the user's own
    /// process there, starts it as its child (the master daemon runs no user code), with
    /// its forwarded fds connected back to the launcher. It answers
    /// [`Message::RankSpawned`] (the pid, or a negated errno) and, when the child ends,
    /// [`Message::ProcExit`] with the launch and rank.
    GhostSpawn {
        /// Launch id.
        launch: u64,
        /// Rank.
        rank: u32,
        /// The process, with the caller's limits and umask as the master set them.
        spec: ProcSpec,
    },
    /// Ghost → master: how [`Message::GhostRestore`] went: 0, or an errno (the ghost stays a
    /// ghost).
    GhostRestored {
        /// 0 or errno.
        code: i32,
    },
    /// Slave → master: what happened to process `pid` of this node.
    ProcEvent {
        /// The process's pid on the node as the slave names it.
        pid: i32,
        /// What happened.
        change: ProcChange,
    },
    /// Slave → master, first after a [`Message::Conf`] that resumed the session: the
    /// processes the slave runs for it, so a restarted master rebuilds its process table.
    SessionProcs {
        /// One entry per live process.
        procs: Vec<SlaveProc>,
    },
    /// Master → slave: the ghost of process `pid` (one that a process forked there), so the
    /// slave can name it in [`Message::SessionProcs`] after a master restart.
    GhostOf {
        /// The process's pid on the node as the slave names it.
        pid: i32,
        /// Its ghost's pid on the master.
        ghost: i32,
    },
    /// Slave → master: process `pid` (the node's) is about to fork and waits. The master has
    /// the process's ghost fork first and answers [`Message::ForkAheadReply`] with the child
    /// ghost's pid, which the slave then gives the child; the process's `Forked` event that
    /// follows takes that ghost whatever pid the child got.
    ForkAhead {
        /// The slave's number for the answer.
        seq: u32,
        /// The forking process.
        pid: i32,
        /// Its command name, the child ghost's name.
        comm: String,
    },
    /// Master → slave: the answer to [`Message::ForkAhead`]: the child ghost's pid, or 0
    /// when there is none (no ghost to fork; the fork is then followed as any other).
    ForkAheadReply {
        /// The request's number.
        seq: u32,
        /// The child ghost's pid on the master, or 0.
        ghost: i32,
    },
    /// Ghost → master: it forked the child ghost of [`Message::GhostFork`] `fork`, which
    /// got pid `pid` (told at once, before the child connects).
    GhostForked {
        /// Fork id.
        fork: u64,
        /// The child ghost's pid.
        pid: i32,
    },
    /// Reply to [`Message::ProcList`].
    Procs {
        /// Every remote process.
        procs: Vec<ProcEntry>,
    },
    /// Reply to [`Message::ProcStatQuery`] and [`Message::ProcStatList`].
    ProcStats {
        /// One entry per process found; `rpid` is the node pid from a slave and the ghost pid
        /// from the master.
        stats: Vec<ProcStat>,
    },
    /// Reply to [`Message::Launch`]: per rank, the process's pid on its node (> 0) or a
    /// negated error code (≤ 0), as `bproc_vexecmove` returns.
    Launched {
        /// One entry per rank.
        pids: Vec<i32>,
    },
    /// Reply to [`Message::Copy`]: the client's links (receivers to stream to when it sends;
    /// the tokens of the senders that will connect when it receives) and how many
    /// [`Message::CopyResult`] events will follow.
    CopyPlan {
        /// The links.
        links: Vec<CopyLink>,
        /// Number of results to wait for.
        reports: u32,
    },
    /// A node's part of a copy ended (slave → master reply, master → client event).
    CopyResult {
        /// The node (filled in by the master).
        node: i32,
        /// Errors of the source, carried in the stream (`rcp: /x: No such file or directory`).
        source_errors: Vec<String>,
        /// This node's own errors.
        errors: Vec<String>,
        /// Files written.
        files: u64,
        /// Bytes of file data written.
        bytes: u64,
    },
    /// Master → launcher and master → ghost: a launched process ended (slaves report it as
    /// [`Message::ProcEvent`]).
    ProcExit {
        /// Launch id (0 towards the launcher and the ghost).
        launch: u64,
        /// Rank.
        rank: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// Slave → master: how starting a rank of a launch tree went.
    RankSpawned {
        /// Launch id.
        launch: u64,
        /// Rank.
        rank: u32,
        /// The pid on its node (> 0) or a negated error code.
        pid: i32,
    },
    /// Why a rank could not start (`/tmp/prog: No such file or directory`): slave → master
    /// just before its [`Message::RankSpawned`] with the negated error, and master → launcher
    /// as an event (request id 0, `launch` 0) before [`Message::Launched`], so the launcher can
    /// say more than the error code.
    RankRefused {
        /// Launch id (0 to the launcher).
        launch: u64,
        /// Rank.
        rank: u32,
        /// The reason, naming what failed.
        reason: String,
    },
    /// Event to watchers: the node table after a change.
    NodesChanged {
        /// Every configured node in table order.
        nodes: Vec<NodeStatus>,
    },

    /// A message type this version does not know. Its body was skipped; answer with an error.
    Unknown {
        /// The type number received.
        msg_type: u16,
    },
}

mod ty {
    pub const AUTH_CHALLENGE: u16 = 1;
    pub const AUTH_RESPONSE: u16 = 2;
    pub const AUTH_CONFIRM: u16 = 3;
    pub const JOIN: u16 = 4;
    pub const CONF: u16 = 5;
    pub const PING: u16 = 6;
    pub const PONG: u16 = 7;
    pub const DISCONNECT: u16 = 8;
    pub const PROXY_CLIENT: u16 = 9;
    pub const NODE_LIST: u16 = 20;
    pub const SET_STATE: u16 = 21;
    pub const CHMOD: u16 = 22;
    pub const CHOWN: u16 = 23;
    pub const CHGRP: u16 = 24;
    pub const NODE_COMMAND: u16 = 25;
    pub const NODE_CHROOT: u16 = 26;
    pub const NODE_RECONNECT: u16 = 27;
    pub const WATCH: u16 = 28;
    pub const MASTER_INFO: u16 = 29;
    pub const LAUNCH: u16 = 30;
    pub const SIGNAL_LAUNCH: u16 = 31;
    pub const COPY: u16 = 32;
    pub const GHOST_HELLO: u16 = 33;
    pub const GHOST_SIGNAL: u16 = 34;
    pub const PROC_LIST: u16 = 35;
    pub const PROC_STAT_LIST: u16 = 36;
    pub const GET_NODE_ATTR: u16 = 37;
    pub const SET_NODE_ATTR: u16 = 38;
    pub const GHOST_RESTORED: u16 = 39;
    pub const ACTION: u16 = 40;
    pub const SLAVE_CHROOT: u16 = 41;
    pub const SLAVE_RECONNECT: u16 = 42;
    // 43 was Spawn (one rank per request), replaced by SpawnTree.
    pub const SIGNAL_PROC: u16 = 44;
    pub const STAGE_FILES: u16 = 45;
    pub const COPY_ORDER: u16 = 46;
    pub const SPAWN_TREE: u16 = 47;
    pub const SIGNAL_PID: u16 = 48;
    pub const PROC_STAT_QUERY: u16 = 49;
    pub const LIB_LIST: u16 = 50;
    pub const LIB_EDIT: u16 = 51;
    pub const SESSION_PROCS: u16 = 52;
    pub const GHOST_OF: u16 = 53;
    pub const GHOST_RELAY_PORT: u16 = 54;
    pub const PROC_WAIT: u16 = 55;
    pub const FORK_AHEAD: u16 = 56;
    pub const FORK_AHEAD_REPLY: u16 = 57;
    pub const GHOST_FORKED: u16 = 58;
    pub const OK: u16 = 100;
    pub const ERROR: u16 = 101;
    pub const NODES: u16 = 102;
    pub const MASTER_INFO_REPLY: u16 = 103;
    pub const LAUNCHED: u16 = 104;
    // 105 was Spawned, the reply to Spawn.
    pub const COPY_PLAN: u16 = 106;
    pub const PROCS: u16 = 107;
    pub const PROC_STATS: u16 = 108;
    pub const NODE_ATTR: u16 = 109;
    pub const LIBRARIES: u16 = 110;
    pub const NODES_CHANGED: u16 = 120;
    pub const PROC_EXIT: u16 = 121;
    pub const COPY_RESULT: u16 = 122;
    pub const RANK_SPAWNED: u16 = 123;
    pub const GHOST_STATE: u16 = 124;
    pub const GHOST_FORK: u16 = 125;
    pub const GHOST_EXEC: u16 = 126;
    pub const PROC_EVENT: u16 = 127;
    pub const GHOST_RESTORE: u16 = 128;
    pub const RANK_REFUSED: u16 = 129;
    pub const GHOST_SPAWN: u16 = 130;
    pub const GHOST_RFORK: u16 = 131;
}

// Smallest encodings, used to bound list counts before allocating.
const MIN_NODE_STATUS: usize = 4 + 4 + 12 + 2;

fn put_ip(w: &mut Writer, ip: Option<Ipv4Addr>) {
    match ip {
        Some(ip) => {
            w.u8(1);
            w.fixed(&ip.octets());
        }
        None => w.u8(0),
    }
}

fn get_ip(r: &mut Reader<'_>) -> Result<Option<Ipv4Addr>, DecodeError> {
    match r.u8("address flag")? {
        0 => Ok(None),
        1 => Ok(Some(Ipv4Addr::from(r.fixed::<4>("address")?))),
        v => Err(DecodeError::BadValue { what: "address flag", value: v.into() }),
    }
}

fn get_bool(r: &mut Reader<'_>, what: &'static str) -> Result<bool, DecodeError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::BadValue { what, value: v.into() }),
    }
}

fn put_endpoint(w: &mut Writer, e: &Endpoint) {
    put_ip(w, e.ip);
    w.u16(e.port);
}

fn get_endpoint(r: &mut Reader<'_>) -> Result<Endpoint, DecodeError> {
    Ok(Endpoint { ip: get_ip(r)?, port: r.u16("port")? })
}

impl NodeInfo {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.cpus);
        w.u64(self.mem_total);
        w.u64(self.mem_free);
        for l in self.load {
            w.u32(l);
        }
        w.u64(self.uptime);
        w.str(&self.kernel);
        w.str(&self.hostname);
        w.str(&self.arch);
        w.u8(u8::from(self.diskless));
        w.u64(self.staged_bytes);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(NodeInfo {
            cpus: r.u32("cpus")?,
            mem_total: r.u64("mem_total")?,
            mem_free: r.u64("mem_free")?,
            load: [r.u32("load")?, r.u32("load")?, r.u32("load")?],
            uptime: r.u64("uptime")?,
            kernel: r.str("kernel", MAX_TEXT)?,
            hostname: r.str("hostname", MAX_TEXT)?,
            arch: r.str("arch", MAX_TEXT)?,
            diskless: get_bool(r, "diskless flag")?,
            staged_bytes: r.u64("staged bytes")?,
        })
    }
}

impl NodeStatus {
    fn encode(&self, w: &mut Writer) {
        w.i32(self.node);
        w.str(&self.state);
        w.u32(self.mode);
        w.u32(self.uid);
        w.u32(self.gid);
        put_ip(w, self.addr);
        match &self.info {
            Some(i) => {
                w.u8(1);
                i.encode(w);
            }
            None => w.u8(0),
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(NodeStatus {
            node: r.i32("node")?,
            state: r.str("state", MAX_STATE_LEN)?,
            mode: r.u32("mode")?,
            uid: r.u32("uid")?,
            gid: r.u32("gid")?,
            addr: get_ip(r)?,
            info: match r.u8("info flag")? {
                0 => None,
                1 => Some(NodeInfo::decode(r)?),
                v => return Err(DecodeError::BadValue { what: "info flag", value: v.into() }),
            },
        })
    }
}

/// Most arguments or environment entries of one process.
pub const MAX_ARGS: usize = 1 << 16;

fn put_strs(w: &mut Writer, v: &[String]) {
    w.u32(v.len() as u32);
    for s in v {
        w.str(s);
    }
}

fn get_strs(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = r.count(what, MAX_ARGS, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // A single argument may be large, but the body limit bounds them all together.
        out.push(r.str(what, crate::MAX_BODY)?);
    }
    Ok(out)
}

fn put_rlimits(w: &mut Writer, v: &[(u32, u64, u64)]) {
    w.u32(v.len() as u32);
    for (r, soft, hard) in v {
        w.u32(*r);
        w.u64(*soft);
        w.u64(*hard);
    }
}

fn get_rlimits(r: &mut Reader<'_>) -> Result<Vec<(u32, u64, u64)>, DecodeError> {
    let n = r.count("rlimits", MAX_RLIMITS, 20)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((r.u32("rlimit resource")?, r.u64("rlimit soft")?, r.u64("rlimit hard")?));
    }
    Ok(v)
}

fn put_files(w: &mut Writer, files: &[StagedRef]) {
    w.u32(files.len() as u32);
    for f in files {
        w.str(&f.path);
        w.u32(f.mode);
        w.u64(f.size);
        w.fixed(&f.hash);
    }
}

fn get_files(r: &mut Reader<'_>) -> Result<Vec<StagedRef>, DecodeError> {
    let n = r.count("staged files", MAX_STAGED, 48)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(StagedRef {
            path: r.str("staged path", MAX_PATH)?,
            mode: r.u32("staged mode")?,
            size: r.u64("staged size")?,
            hash: r.fixed("staged hash")?,
        });
    }
    Ok(v)
}

impl IoSpec {
    fn encode(&self, w: &mut Writer) {
        match self {
            IoSpec::Forward => w.u8(0),
            IoSpec::Null => w.u8(1),
            IoSpec::File(p) => {
                w.u8(2);
                w.str(p);
            }
            IoSpec::Open { path, flags, mode, offset } => {
                w.u8(3);
                w.str(path);
                w.i32(*flags);
                w.u32(*mode);
                w.u64(*offset as u64);
            }
            IoSpec::Connect { ip, port, send_info } => {
                w.u8(4);
                put_ip(w, *ip);
                w.u16(*port);
                w.u8(u8::from(*send_info));
            }
            IoSpec::Closed => w.u8(5),
            IoSpec::Rejoin { ip, port, token, rank } => {
                w.u8(6);
                put_ip(w, *ip);
                w.u16(*port);
                w.fixed(token);
                w.u32(*rank);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("io kind")? {
            0 => IoSpec::Forward,
            1 => IoSpec::Null,
            2 => IoSpec::File(r.str("io path", MAX_PATH)?),
            3 => IoSpec::Open {
                path: r.str("io path", MAX_PATH)?,
                flags: r.i32("open flags")?,
                mode: r.u32("open mode")?,
                offset: r.u64("offset")? as i64,
            },
            4 => IoSpec::Connect {
                ip: get_ip(r)?,
                port: r.u16("io port")?,
                send_info: get_bool(r, "send info")?,
            },
            5 => IoSpec::Closed,
            6 => IoSpec::Rejoin {
                ip: get_ip(r)?,
                port: r.u16("io port")?,
                token: r.fixed("io token")?,
                rank: r.u32("io rank")?,
            },
            v => return Err(DecodeError::BadValue { what: "io kind", value: v.into() }),
        })
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    /// How a local child ended: its exit code or the signal that killed it.
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            // Stopped or continued: not an end; callers only convert final statuses.
            _ => ExitStatus::Code(255),
        }
    }
}

impl ExitStatus {
    fn encode(&self, w: &mut Writer) {
        match self {
            ExitStatus::Code(c) => {
                w.u8(0);
                w.i32(*c);
            }
            ExitStatus::Signal(s) => {
                w.u8(1);
                w.i32(*s);
            }
            ExitStatus::NodeLost => {
                w.u8(2);
                w.i32(0);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = r.u8("exit kind")?;
        let v = r.i32("exit value")?;
        Ok(match kind {
            0 => ExitStatus::Code(v),
            1 => ExitStatus::Signal(v),
            // Carries no value: anything but 0 would not survive a re-encode.
            2 if v == 0 => ExitStatus::NodeLost,
            2 => {
                return Err(DecodeError::BadValue { what: "node-lost exit value", value: v as u64 })
            }
            k => return Err(DecodeError::BadValue { what: "exit kind", value: k.into() }),
        })
    }
}

/// Most bytes a launch's arguments and environment may take together (each string with its
/// length): the launch travels in one frame of at most [`crate::MAX_BODY`] (4 MiB), and its
/// tree parts add the nodes to the same spec, so a quarter is left for them.
pub const MAX_LAUNCH_TEXT: usize = 3 << 20;

impl ProcSpec {
    /// Bytes the arguments take on the wire.
    pub fn argv_size(&self) -> usize {
        self.argv.iter().map(|a| a.len() + 4).sum()
    }

    /// Bytes the environment takes on the wire.
    pub fn env_size(&self) -> usize {
        self.env.iter().map(|e| e.len() + 4).sum()
    }

    /// Why this spec cannot be launched for its size, if it cannot: its arguments and
    /// environment take more than [`MAX_LAUNCH_TEXT`]. Names the larger part and the limit.
    pub fn too_large(&self) -> Option<String> {
        let (argv, env) = (self.argv_size(), self.env_size());
        if argv + env <= MAX_LAUNCH_TEXT {
            return None;
        }
        let mib = |n: usize| n as f64 / f64::from(1u32 << 20);
        let limit = mib(MAX_LAUNCH_TEXT);
        Some(if env >= argv {
            format!(
                "the environment is too large to launch: {:.1} MiB with the arguments' {:.1} MiB, \
                 and a launch carries at most {limit:.0} MiB of both (unset large variables, or \
                 pass the data in a file)",
                mib(env),
                mib(argv)
            )
        } else {
            format!(
                "the arguments are too large to launch: {:.1} MiB with the environment's {:.1} \
                 MiB, and a launch carries at most {limit:.0} MiB of both (pass the data in a \
                 file)",
                mib(argv),
                mib(env)
            )
        })
    }

    /// The environment for rank `rank`: `BPROC_RANK=XXXXXXX` becomes the rank in seven digits,
    /// as BProc's vexecmove rewrote it in each child.
    pub fn env_for_rank(&self, rank: u32) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = if k == "BPROC_RANK" && v == "XXXXXXX" {
                    format!("{rank:07}")
                } else {
                    v.into()
                };
                (k.to_owned(), v)
            })
            .collect()
    }

    /// [`ProcSpec::env_for_rank`] as `NAME=value` strings, with `BPROC_SOCKET` naming
    /// `socket` (the cluster socket where the process runs; left out when `None`) instead of
    /// the launcher's.
    pub fn env_where(&self, rank: u32, socket: Option<&str>) -> Vec<String> {
        let env = self.env_for_rank(rank).into_iter().filter(|(k, _)| k != "BPROC_SOCKET");
        env.map(|(k, v)| format!("{k}={v}"))
            .chain(socket.map(|s| format!("BPROC_SOCKET={s}")))
            .collect()
    }

    fn encode(&self, w: &mut Writer) {
        w.str(&self.path);
        put_strs(w, &self.argv);
        put_strs(w, &self.env);
        w.str(&self.cwd);
        w.u32(self.umask);
        w.u32(self.io.len() as u32);
        for io in &self.io {
            io.encode(w);
        }
        w.u32(self.fds.len() as u32);
        for f in &self.fds {
            w.i32(f.fd);
            f.io.encode(w);
            w.u8(u8::from(f.optional));
        }
        w.u16(self.io_port);
        put_ip(w, self.io_ip);
        w.fixed(&self.token);
        put_rlimits(w, &self.rlimits);
        put_files(w, &self.files);
        match &self.image {
            Some(e) => {
                w.u8(1);
                put_endpoint(w, e);
            }
            None => w.u8(0),
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let path = r.str("path", MAX_PATH)?;
        let argv = get_strs(r, "argv")?;
        let env = get_strs(r, "environment")?;
        let cwd = r.str("cwd", MAX_PATH)?;
        let umask = r.u32("umask")?;
        let n = r.count("io list", 3, 1)?;
        let mut io = Vec::with_capacity(n);
        for _ in 0..n {
            io.push(IoSpec::decode(r)?);
        }
        let n = r.count("io list", MAX_FD_IO, 6)?;
        let mut fds = Vec::with_capacity(n);
        for _ in 0..n {
            let fd = r.i32("fd")?;
            if !(0..=MAX_FD).contains(&fd) {
                return Err(DecodeError::BadValue { what: "fd", value: fd as u64 });
            }
            fds.push(FdIo { fd, io: IoSpec::decode(r)?, optional: get_bool(r, "optional")? });
        }
        Ok(ProcSpec {
            path,
            argv,
            env,
            cwd,
            umask,
            io,
            fds,
            io_port: r.u16("io port")?,
            io_ip: get_ip(r)?,
            token: r.fixed("token")?,
            rlimits: get_rlimits(r)?,
            files: get_files(r)?,
            image: if get_bool(r, "image flag")? { Some(get_endpoint(r)?) } else { None },
        })
    }
}

impl Creds {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.uid);
        w.u32(self.gid);
        w.u32(self.groups.len() as u32);
        for g in &self.groups {
            w.u32(*g);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let uid = r.u32("uid")?;
        let gid = r.u32("gid")?;
        // Linux allows 65536 supplementary groups.
        let n = r.count("groups", 1 << 16, 4)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            groups.push(r.u32("group")?);
        }
        Ok(Creds { uid, gid, groups })
    }
}

fn put_i32s(w: &mut Writer, v: &[i32]) {
    w.u32(v.len() as u32);
    for x in v {
        w.i32(*x);
    }
}

fn get_i32s(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<i32>, DecodeError> {
    let n = r.count(what, MAX_NODES, 4)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.i32(what)?);
    }
    Ok(v)
}

fn put_u16s(w: &mut Writer, v: &[u16]) {
    w.u32(v.len() as u32);
    for x in v {
        w.u16(*x);
    }
}

fn get_u16s(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u16>, DecodeError> {
    let n = r.count(what, MAX_NODES, 2)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.u16(what)?);
    }
    Ok(v)
}

fn put_links(w: &mut Writer, links: &[CopyLink]) {
    w.u32(links.len() as u32);
    for l in links {
        w.i32(l.node);
        put_ip(w, l.ip);
        w.u16(l.port);
        w.fixed(&l.token);
    }
}

fn get_links(r: &mut Reader<'_>) -> Result<Vec<CopyLink>, DecodeError> {
    let n = r.count("copy links", MAX_COPY_ITEMS, 4 + 1 + 2 + 16)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(CopyLink {
            node: r.i32("node")?,
            ip: get_ip(r)?,
            port: r.u16("port")?,
            token: r.fixed("token")?,
        });
    }
    Ok(v)
}

impl CopyOpts {
    fn encode(&self, w: &mut Writer) {
        w.u8(u8::from(self.recursive)
            | u8::from(self.preserve) << 1
            | u8::from(self.target_dir) << 2);
        w.u32(self.umask);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = r.u8("copy flags")?;
        if f & !7 != 0 {
            return Err(DecodeError::BadValue { what: "copy flags", value: f.into() });
        }
        Ok(CopyOpts {
            recursive: f & 1 != 0,
            preserve: f & 2 != 0,
            target_dir: f & 4 != 0,
            umask: r.u32("umask")?,
        })
    }
}

impl CopyTask {
    fn encode(&self, w: &mut Writer) {
        match self {
            CopyTask::Send { paths, to } => {
                w.u8(0);
                put_strs(w, paths);
                put_links(w, to);
            }
            CopyTask::Receive { token, target, suffix, to } => {
                w.u8(1);
                w.fixed(token);
                w.str(target);
                w.str(suffix);
                put_links(w, to);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("copy task")? {
            0 => CopyTask::Send { paths: get_strs(r, "paths")?, to: get_links(r)? },
            1 => CopyTask::Receive {
                token: r.fixed("token")?,
                target: r.str("target", MAX_PATH)?,
                suffix: r.str("suffix", MAX_PATH)?,
                to: get_links(r)?,
            },
            v => return Err(DecodeError::BadValue { what: "copy task", value: v.into() }),
        })
    }
}

fn put_nodes(w: &mut Writer, nodes: &[NodeStatus]) {
    w.u32(nodes.len() as u32);
    for n in nodes {
        n.encode(w);
    }
}

fn get_nodes(r: &mut Reader<'_>) -> Result<Vec<NodeStatus>, DecodeError> {
    let n = r.count("node list", MAX_NODES, MIN_NODE_STATUS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(NodeStatus::decode(r)?);
    }
    Ok(out)
}

impl Message {
    /// The frame type number of this message.
    pub fn msg_type(&self) -> u16 {
        use Message::*;
        match self {
            AuthChallenge { .. } => ty::AUTH_CHALLENGE,
            AuthResponse { .. } => ty::AUTH_RESPONSE,
            AuthConfirm { .. } => ty::AUTH_CONFIRM,
            Join { .. } => ty::JOIN,
            Conf { .. } => ty::CONF,
            Ping { .. } => ty::PING,
            Pong { .. } => ty::PONG,
            Disconnect { .. } => ty::DISCONNECT,
            ProxyClient { .. } => ty::PROXY_CLIENT,
            Copy { .. } => ty::COPY,
            CopyOrder { .. } => ty::COPY_ORDER,
            CopyPlan { .. } => ty::COPY_PLAN,
            CopyResult { .. } => ty::COPY_RESULT,
            SpawnTree { .. } => ty::SPAWN_TREE,
            RankSpawned { .. } => ty::RANK_SPAWNED,
            RankRefused { .. } => ty::RANK_REFUSED,
            Action { .. } => ty::ACTION,
            SlaveChroot { .. } => ty::SLAVE_CHROOT,
            SlaveReconnect { .. } => ty::SLAVE_RECONNECT,
            NodeList => ty::NODE_LIST,
            SetState { .. } => ty::SET_STATE,
            Chmod { .. } => ty::CHMOD,
            Chown { .. } => ty::CHOWN,
            Chgrp { .. } => ty::CHGRP,
            NodeCommand { .. } => ty::NODE_COMMAND,
            NodeChroot { .. } => ty::NODE_CHROOT,
            NodeReconnect { .. } => ty::NODE_RECONNECT,
            GetNodeAttr { .. } => ty::GET_NODE_ATTR,
            SetNodeAttr { .. } => ty::SET_NODE_ATTR,
            NodeAttr { .. } => ty::NODE_ATTR,
            LibList { .. } => ty::LIB_LIST,
            LibEdit { .. } => ty::LIB_EDIT,
            SessionProcs { .. } => ty::SESSION_PROCS,
            GhostOf { .. } => ty::GHOST_OF,
            GhostRfork { .. } => ty::GHOST_RFORK,
            ProcWait { .. } => ty::PROC_WAIT,
            GhostRelayPort { .. } => ty::GHOST_RELAY_PORT,
            ForkAhead { .. } => ty::FORK_AHEAD,
            ForkAheadReply { .. } => ty::FORK_AHEAD_REPLY,
            GhostForked { .. } => ty::GHOST_FORKED,
            Libraries { .. } => ty::LIBRARIES,
            Watch => ty::WATCH,
            MasterInfo => ty::MASTER_INFO,
            Launch { .. } => ty::LAUNCH,
            SignalLaunch { .. } => ty::SIGNAL_LAUNCH,
            GhostHello { .. } => ty::GHOST_HELLO,
            GhostSignal { .. } => ty::GHOST_SIGNAL,
            ProcList => ty::PROC_LIST,
            ProcStatList { .. } => ty::PROC_STAT_LIST,
            SignalPid { .. } => ty::SIGNAL_PID,
            ProcStatQuery { .. } => ty::PROC_STAT_QUERY,
            Procs { .. } => ty::PROCS,
            ProcStats { .. } => ty::PROC_STATS,
            GhostState { .. } => ty::GHOST_STATE,
            GhostFork { .. } => ty::GHOST_FORK,
            GhostExec { .. } => ty::GHOST_EXEC,
            GhostRestore { .. } => ty::GHOST_RESTORE,
            GhostSpawn { .. } => ty::GHOST_SPAWN,
            GhostRestored { .. } => ty::GHOST_RESTORED,
            ProcEvent { .. } => ty::PROC_EVENT,
            SignalProc { .. } => ty::SIGNAL_PROC,
            StageFiles { .. } => ty::STAGE_FILES,
            MasterInfoReply { .. } => ty::MASTER_INFO_REPLY,
            Launched { .. } => ty::LAUNCHED,
            ProcExit { .. } => ty::PROC_EXIT,
            Ok => ty::OK,
            Error { .. } => ty::ERROR,
            Nodes { .. } => ty::NODES,
            NodesChanged { .. } => ty::NODES_CHANGED,
            Unknown { msg_type } => *msg_type,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        use Message::*;
        match self {
            AuthChallenge { .. } => "AuthChallenge",
            AuthResponse { .. } => "AuthResponse",
            AuthConfirm { .. } => "AuthConfirm",
            Join { .. } => "Join",
            Conf { .. } => "Conf",
            Ping { .. } => "Ping",
            Pong { .. } => "Pong",
            Disconnect { .. } => "Disconnect",
            ProxyClient { .. } => "ProxyClient",
            Copy { .. } => "Copy",
            CopyOrder { .. } => "CopyOrder",
            CopyPlan { .. } => "CopyPlan",
            CopyResult { .. } => "CopyResult",
            SpawnTree { .. } => "SpawnTree",
            RankSpawned { .. } => "RankSpawned",
            RankRefused { .. } => "RankRefused",
            Action { .. } => "Action",
            SlaveChroot { .. } => "SlaveChroot",
            SlaveReconnect { .. } => "SlaveReconnect",
            NodeList => "NodeList",
            SetState { .. } => "SetState",
            Chmod { .. } => "Chmod",
            Chown { .. } => "Chown",
            Chgrp { .. } => "Chgrp",
            NodeCommand { .. } => "NodeCommand",
            NodeChroot { .. } => "NodeChroot",
            NodeReconnect { .. } => "NodeReconnect",
            GetNodeAttr { .. } => "GetNodeAttr",
            SetNodeAttr { .. } => "SetNodeAttr",
            NodeAttr { .. } => "NodeAttr",
            Watch => "Watch",
            MasterInfo => "MasterInfo",
            Launch { .. } => "Launch",
            SignalLaunch { .. } => "SignalLaunch",
            GhostHello { .. } => "GhostHello",
            GhostSignal { .. } => "GhostSignal",
            ProcList => "ProcList",
            ProcStatList { .. } => "ProcStatList",
            LibList { .. } => "LibList",
            LibEdit { .. } => "LibEdit",
            SessionProcs { .. } => "SessionProcs",
            GhostOf { .. } => "GhostOf",
            GhostRfork { .. } => "GhostRfork",
            ProcWait { .. } => "ProcWait",
            GhostRelayPort { .. } => "GhostRelayPort",
            ForkAhead { .. } => "ForkAhead",
            ForkAheadReply { .. } => "ForkAheadReply",
            GhostForked { .. } => "GhostForked",
            Libraries { .. } => "Libraries",
            SignalPid { .. } => "SignalPid",
            ProcStatQuery { .. } => "ProcStatQuery",
            Procs { .. } => "Procs",
            ProcStats { .. } => "ProcStats",
            GhostState { .. } => "GhostState",
            GhostFork { .. } => "GhostFork",
            GhostExec { .. } => "GhostExec",
            GhostRestore { .. } => "GhostRestore",
            GhostSpawn { .. } => "GhostSpawn",
            GhostRestored { .. } => "GhostRestored",
            ProcEvent { .. } => "ProcEvent",
            SignalProc { .. } => "SignalProc",
            StageFiles { .. } => "StageFiles",
            MasterInfoReply { .. } => "MasterInfoReply",
            Launched { .. } => "Launched",
            ProcExit { .. } => "ProcExit",
            Ok => "Ok",
            Error { .. } => "Error",
            Nodes { .. } => "Nodes",
            NodesChanged { .. } => "NodesChanged",
            Unknown { .. } => "Unknown",
        }
    }

    pub(crate) fn encode_body(&self, w: &mut Writer) {
        use Message::*;
        match self {
            AuthChallenge { nonce } => w.fixed(nonce),
            AuthResponse { nonce, mac } => {
                w.fixed(nonce);
                w.fixed(mac);
            }
            AuthConfirm { mac } => w.fixed(mac),
            Join { version, cookie, info, data_port, tree_port } => {
                w.str(version);
                w.u64(*cookie);
                info.encode(w);
                w.u16(*data_port);
                w.u16(*tree_port);
            }
            SpawnTree { launch, nonce, time_ms, size, creds, spec, width, entries } => {
                w.u64(*launch);
                w.u64(*nonce);
                w.u64(*time_ms);
                w.u32(*size);
                creds.encode(w);
                spec.encode(w);
                w.u32(*width);
                w.u32(entries.len() as u32);
                for e in entries {
                    w.i32(e.node);
                    w.fixed(&e.ip.octets());
                    w.u16(e.port);
                    w.u32(e.ranks.len() as u32);
                    for r in &e.ranks {
                        w.u32(*r);
                    }
                    put_i32s(w, &e.pids);
                    put_u16s(w, &e.ports);
                }
            }
            RankSpawned { launch, rank, pid } => {
                w.u64(*launch);
                w.u32(*rank);
                w.i32(*pid);
            }
            RankRefused { launch, rank, reason } => {
                w.u64(*launch);
                w.u32(*rank);
                w.str(reason);
            }
            ProxyClient { node, creds, pid, rlimits, umask } => {
                w.i32(*node);
                creds.encode(w);
                w.i32(*pid);
                put_rlimits(w, rlimits);
                w.u32(*umask);
            }
            Copy { src, paths, dst, target, opts, cwd, fanout, port } => {
                put_i32s(w, src);
                put_strs(w, paths);
                put_i32s(w, dst);
                w.str(target);
                opts.encode(w);
                w.str(cwd);
                w.u32(*fanout);
                w.u16(*port);
            }
            CopyOrder { creds, cwd, opts, task } => {
                creds.encode(w);
                w.str(cwd);
                opts.encode(w);
                task.encode(w);
            }
            CopyPlan { links, reports } => {
                put_links(w, links);
                w.u32(*reports);
            }
            CopyResult { node, source_errors, errors, files, bytes } => {
                w.i32(*node);
                put_strs(w, source_errors);
                put_strs(w, errors);
                w.u64(*files);
                w.u64(*bytes);
            }
            Conf { node, cookie, ping_timeout, time_ms, grace } => {
                w.i32(*node);
                w.u64(*cookie);
                w.u32(*ping_timeout);
                w.u64(*time_ms);
                w.u32(*grace);
            }
            SessionProcs { procs } => {
                w.u32(procs.len() as u32);
                for p in procs {
                    w.i32(p.pid);
                    w.i32(p.ghost);
                    w.u64(p.launch);
                    w.u32(p.rank);
                    w.u32(p.uid);
                }
            }
            GhostOf { pid, ghost } => {
                w.i32(*pid);
                w.i32(*ghost);
            }
            ForkAhead { seq, pid, comm } => {
                w.u32(*seq);
                w.i32(*pid);
                w.str(comm);
            }
            ForkAheadReply { seq, ghost } => {
                w.u32(*seq);
                w.i32(*ghost);
            }
            GhostForked { fork, pid } => {
                w.u64(*fork);
                w.i32(*pid);
            }
            Ping { seq, time_ms } => {
                w.u64(*seq);
                w.u64(*time_ms);
            }
            Pong { seq, info } => {
                w.u64(*seq);
                info.encode(w);
            }
            Disconnect { reason, reconnect } => {
                w.str(reason);
                w.u8(u8::from(*reconnect));
            }
            Action { action } => w.u8(action.code()),
            SlaveChroot { path } => w.str(path),
            SlaveReconnect { master, local } => {
                put_endpoint(w, master);
                put_endpoint(w, local);
            }
            NodeList | Watch | MasterInfo | ProcList | Ok | Unknown { .. } => {}
            Launch { nodes, spec, ghosts, io_ports } => {
                w.u32(nodes.len() as u32);
                for n in nodes {
                    w.i32(*n);
                }
                spec.encode(w);
                put_i32s(w, ghosts);
                put_u16s(w, io_ports);
            }
            GhostHello { fork } => w.u64(*fork),
            GhostSignal { signal, sender } => {
                w.i32(*signal);
                w.i32(*sender);
            }
            ProcStatList { pids } | ProcStatQuery { pids } => put_i32s(w, pids),
            LibList { only: names } | Libraries { names } => put_strs(w, names),
            LibEdit { op, names } => {
                w.u8(*op as u8);
                put_strs(w, names);
            }
            SignalPid { pid, signal, sender } => {
                w.i32(*pid);
                w.i32(*signal);
                w.i32(*sender);
            }
            Procs { procs } => {
                w.u32(procs.len() as u32);
                for p in procs {
                    w.i32(p.pid);
                    w.i32(p.node);
                    w.i32(p.rpid);
                    w.u32(p.uid);
                }
            }
            ProcStats { stats } => {
                w.u32(stats.len() as u32);
                for s in stats {
                    w.i32(s.rpid);
                    w.u8(s.state);
                    w.u64(s.cpu_ms);
                    w.u64(s.rss_kib);
                }
            }
            GhostState { stopped } => w.u8(u8::from(*stopped)),
            GhostRfork { fork, comm, token } => {
                w.u64(*fork);
                w.str(comm);
                w.fixed(token);
            }
            GhostRelayPort { port } => w.u16(*port),
            ProcWait { pid } => w.i32(*pid),
            GhostFork { fork, comm } => {
                w.u64(*fork);
                w.str(comm);
            }
            GhostExec { comm } => w.str(comm),
            GhostRestore { image, token } => {
                put_endpoint(w, image);
                w.fixed(token);
            }
            GhostRestored { code } => w.i32(*code),
            GhostSpawn { launch, rank, spec } => {
                w.u64(*launch);
                w.u32(*rank);
                spec.encode(w);
            }
            ProcEvent { pid, change } => {
                w.i32(*pid);
                match change {
                    ProcChange::Exited(status) => {
                        w.u8(0);
                        status.encode(w);
                    }
                    ProcChange::Stopped => w.u8(1),
                    ProcChange::Continued => w.u8(2),
                    ProcChange::Forked { child, child_ns, comm } => {
                        w.u8(3);
                        w.i32(*child);
                        w.i32(*child_ns);
                        w.str(comm);
                    }
                    ProcChange::Exec { comm } => {
                        w.u8(4);
                        w.str(comm);
                    }
                }
            }
            SignalLaunch { signal } => w.i32(*signal),
            SignalProc { launch, rank, signal } => {
                w.u64(*launch);
                w.u32(*rank);
                w.i32(*signal);
            }
            StageFiles { port, token, files } => {
                w.u16(*port);
                w.fixed(token);
                put_files(w, files);
            }
            MasterInfoReply {
                version,
                addrs,
                bytes_to_slaves,
                client_node,
                client_ip,
                ghost,
                ghosts_made,
            } => {
                w.str(version);
                w.u32(addrs.len() as u32);
                for a in addrs {
                    put_endpoint(w, a);
                }
                w.u64(*bytes_to_slaves);
                w.i32(*client_node);
                put_ip(w, *client_ip);
                w.str(ghost);
                w.u64(*ghosts_made);
            }
            Launched { pids } => {
                w.u32(pids.len() as u32);
                for p in pids {
                    w.i32(*p);
                }
            }
            ProcExit { launch, rank, status } => {
                w.u64(*launch);
                w.u32(*rank);
                status.encode(w);
            }
            SetState { node, state } => {
                w.i32(*node);
                w.str(state);
            }
            Chmod { node, mode } => {
                w.i32(*node);
                w.u32(*mode);
            }
            Chown { node, uid } => {
                w.i32(*node);
                w.u32(*uid);
            }
            Chgrp { node, gid } => {
                w.i32(*node);
                w.u32(*gid);
            }
            NodeCommand { node, action } => {
                w.i32(*node);
                w.u8(action.code());
            }
            NodeChroot { node, path } => {
                w.i32(*node);
                w.str(path);
            }
            NodeReconnect { node, master, local } => {
                w.i32(*node);
                put_endpoint(w, master);
                put_endpoint(w, local);
            }
            GetNodeAttr { node, name } => {
                w.i32(*node);
                w.str(name);
            }
            SetNodeAttr { node, name, value } => {
                w.i32(*node);
                w.str(name);
                w.bytes(value);
            }
            NodeAttr { value } => w.bytes(value),
            Error { code, message } => {
                w.i32(*code);
                w.str(message);
            }
            Nodes { nodes } | NodesChanged { nodes } => put_nodes(w, nodes),
        }
    }

    pub(crate) fn decode_body(msg_type: u16, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        use Message::*;
        Result::Ok(match msg_type {
            ty::AUTH_CHALLENGE => AuthChallenge { nonce: r.fixed("nonce")? },
            ty::AUTH_RESPONSE => AuthResponse { nonce: r.fixed("nonce")?, mac: r.fixed("mac")? },
            ty::AUTH_CONFIRM => AuthConfirm { mac: r.fixed("mac")? },
            ty::JOIN => Join {
                version: r.str("version", MAX_TEXT)?,
                cookie: r.u64("cookie")?,
                info: NodeInfo::decode(r)?,
                data_port: r.u16("data port")?,
                tree_port: r.u16("tree port")?,
            },
            ty::SPAWN_TREE => {
                let launch = r.u64("launch")?;
                let nonce = r.u64("nonce")?;
                let time_ms = r.u64("time")?;
                let size = r.u32("size")?;
                let creds = Creds::decode(r)?;
                let spec = ProcSpec::decode(r)?;
                let width = r.u32("width")?;
                let n = r.count("tree entries", MAX_NODES, 14)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let node = r.i32("node")?;
                    let ip = Ipv4Addr::from(r.fixed::<4>("address")?);
                    let port = r.u16("port")?;
                    let k = r.count("ranks", MAX_NODES, 4)?;
                    let mut ranks = Vec::with_capacity(k);
                    for _ in 0..k {
                        ranks.push(r.u32("rank")?);
                    }
                    let pids = get_i32s(r, "ghost pids")?;
                    let ports = get_u16s(r, "io ports")?;
                    entries.push(TreeEntry { node, ip, port, ranks, pids, ports });
                }
                SpawnTree { launch, nonce, time_ms, size, creds, spec, width, entries }
            }
            ty::RANK_SPAWNED => {
                RankSpawned { launch: r.u64("launch")?, rank: r.u32("rank")?, pid: r.i32("pid")? }
            }
            ty::RANK_REFUSED => RankRefused {
                launch: r.u64("launch")?,
                rank: r.u32("rank")?,
                reason: r.str("reason", MAX_TEXT)?,
            },
            ty::PROXY_CLIENT => ProxyClient {
                node: r.i32("node")?,
                creds: Creds::decode(r)?,
                pid: r.i32("pid")?,
                rlimits: get_rlimits(r)?,
                umask: r.u32("umask")?,
            },
            ty::COPY => Copy {
                src: get_i32s(r, "source nodes")?,
                paths: get_strs(r, "paths")?,
                dst: get_i32s(r, "destination nodes")?,
                target: r.str("target", MAX_PATH)?,
                opts: CopyOpts::decode(r)?,
                cwd: r.str("cwd", MAX_PATH)?,
                fanout: r.u32("fanout")?,
                port: r.u16("port")?,
            },
            ty::COPY_ORDER => CopyOrder {
                creds: Creds::decode(r)?,
                cwd: r.str("cwd", MAX_PATH)?,
                opts: CopyOpts::decode(r)?,
                task: CopyTask::decode(r)?,
            },
            ty::COPY_PLAN => CopyPlan { links: get_links(r)?, reports: r.u32("reports")? },
            ty::COPY_RESULT => CopyResult {
                node: r.i32("node")?,
                source_errors: get_strs(r, "source errors")?,
                errors: get_strs(r, "errors")?,
                files: r.u64("files")?,
                bytes: r.u64("bytes")?,
            },
            ty::CONF => Conf {
                node: r.i32("node")?,
                cookie: r.u64("cookie")?,
                ping_timeout: r.u32("ping timeout")?,
                time_ms: r.u64("time")?,
                grace: r.u32("grace")?,
            },
            ty::SESSION_PROCS => {
                let n = r.count("session processes", MAX_PROCS, 24)?;
                let mut procs = Vec::with_capacity(n);
                for _ in 0..n {
                    procs.push(SlaveProc {
                        pid: r.i32("pid")?,
                        ghost: r.i32("ghost")?,
                        launch: r.u64("launch")?,
                        rank: r.u32("rank")?,
                        uid: r.u32("uid")?,
                    });
                }
                SessionProcs { procs }
            }
            ty::GHOST_OF => GhostOf { pid: r.i32("pid")?, ghost: r.i32("ghost")? },
            ty::FORK_AHEAD => {
                ForkAhead { seq: r.u32("seq")?, pid: r.i32("pid")?, comm: r.str("comm", MAX_TEXT)? }
            }
            ty::FORK_AHEAD_REPLY => ForkAheadReply { seq: r.u32("seq")?, ghost: r.i32("ghost")? },
            ty::GHOST_FORKED => GhostForked { fork: r.u64("fork")?, pid: r.i32("pid")? },
            ty::PING => Ping { seq: r.u64("seq")?, time_ms: r.u64("time")? },
            ty::PONG => Pong { seq: r.u64("seq")?, info: NodeInfo::decode(r)? },
            ty::DISCONNECT => Disconnect {
                reason: r.str("reason", MAX_TEXT)?,
                reconnect: match r.u8("reconnect flag")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(DecodeError::BadValue {
                            what: "reconnect flag",
                            value: v.into(),
                        })
                    }
                },
            },
            ty::ACTION => Action { action: NodeAction::from_code(r.u8("action")?)? },
            ty::SLAVE_CHROOT => SlaveChroot { path: r.str("path", MAX_PATH)? },
            ty::SLAVE_RECONNECT => {
                SlaveReconnect { master: get_endpoint(r)?, local: get_endpoint(r)? }
            }
            ty::NODE_LIST => NodeList,
            ty::SET_STATE => SetState { node: r.i32("node")?, state: r.str("state", MAX_TEXT)? },
            ty::CHMOD => Chmod { node: r.i32("node")?, mode: r.u32("mode")? },
            ty::CHOWN => Chown { node: r.i32("node")?, uid: r.u32("uid")? },
            ty::CHGRP => Chgrp { node: r.i32("node")?, gid: r.u32("gid")? },
            ty::NODE_COMMAND => NodeCommand {
                node: r.i32("node")?,
                action: NodeAction::from_code(r.u8("action")?)?,
            },
            ty::NODE_CHROOT => NodeChroot { node: r.i32("node")?, path: r.str("path", MAX_PATH)? },
            ty::NODE_RECONNECT => NodeReconnect {
                node: r.i32("node")?,
                master: get_endpoint(r)?,
                local: get_endpoint(r)?,
            },
            ty::GET_NODE_ATTR => {
                GetNodeAttr { node: r.i32("node")?, name: r.str("attribute name", MAX_ATTR_NAME)? }
            }
            ty::SET_NODE_ATTR => SetNodeAttr {
                node: r.i32("node")?,
                name: r.str("attribute name", MAX_ATTR_NAME)?,
                value: r.bytes("attribute value", MAX_ATTR_VALUE)?.to_vec(),
            },
            ty::NODE_ATTR => {
                NodeAttr { value: r.bytes("attribute value", MAX_ATTR_VALUE)?.to_vec() }
            }
            ty::WATCH => Watch,
            ty::MASTER_INFO => MasterInfo,
            ty::LAUNCH => {
                let n = r.count("node list", MAX_NODES, 4)?;
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(r.i32("node")?);
                }
                let spec = ProcSpec::decode(r)?;
                Launch {
                    nodes,
                    spec,
                    ghosts: get_i32s(r, "ghost pids")?,
                    io_ports: get_u16s(r, "io ports")?,
                }
            }
            ty::GHOST_HELLO => GhostHello { fork: r.u64("fork")? },
            ty::GHOST_SIGNAL => GhostSignal { signal: r.i32("signal")?, sender: r.i32("sender")? },
            ty::PROC_LIST => ProcList,
            ty::PROC_STAT_LIST => ProcStatList { pids: get_i32s(r, "pids")? },
            ty::LIB_LIST => LibList { only: get_strs(r, "library paths")? },
            ty::LIBRARIES => Libraries { names: get_strs(r, "library paths")? },
            ty::LIB_EDIT => {
                let op = match r.u8("library operation")? {
                    0 => LibOp::Clear,
                    1 => LibOp::Add,
                    2 => LibOp::Delete,
                    v => {
                        return Err(DecodeError::BadValue {
                            what: "library operation",
                            value: v.into(),
                        })
                    }
                };
                LibEdit { op, names: get_strs(r, "library paths")? }
            }
            ty::PROC_STAT_QUERY => ProcStatQuery { pids: get_i32s(r, "pids")? },
            ty::SIGNAL_PID => {
                SignalPid { pid: r.i32("pid")?, signal: r.i32("signal")?, sender: r.i32("sender")? }
            }
            ty::PROCS => {
                let n = r.count("process list", MAX_PROCS, 16)?;
                let mut procs = Vec::with_capacity(n);
                for _ in 0..n {
                    procs.push(ProcEntry {
                        pid: r.i32("pid")?,
                        node: r.i32("node")?,
                        rpid: r.i32("node pid")?,
                        uid: r.u32("uid")?,
                    });
                }
                Procs { procs }
            }
            ty::PROC_STATS => {
                let n = r.count("process stats", MAX_PROCS, 21)?;
                let mut stats = Vec::with_capacity(n);
                for _ in 0..n {
                    stats.push(ProcStat {
                        rpid: r.i32("pid")?,
                        state: r.u8("state")?,
                        cpu_ms: r.u64("cpu time")?,
                        rss_kib: r.u64("resident memory")?,
                    });
                }
                ProcStats { stats }
            }
            ty::GHOST_STATE => GhostState { stopped: get_bool(r, "stopped flag")? },
            ty::GHOST_FORK => GhostFork { fork: r.u64("fork")?, comm: r.str("comm", MAX_TEXT)? },
            ty::GHOST_RFORK => GhostRfork {
                fork: r.u64("fork")?,
                comm: r.str("comm", MAX_TEXT)?,
                token: r.fixed("token")?,
            },
            ty::GHOST_RELAY_PORT => GhostRelayPort { port: r.u16("port")? },
            ty::PROC_WAIT => ProcWait { pid: r.i32("pid")? },
            ty::GHOST_EXEC => GhostExec { comm: r.str("comm", MAX_TEXT)? },
            ty::GHOST_RESTORE => GhostRestore { image: get_endpoint(r)?, token: r.fixed("token")? },
            ty::GHOST_RESTORED => GhostRestored { code: r.i32("code")? },
            ty::GHOST_SPAWN => GhostSpawn {
                launch: r.u64("launch")?,
                rank: r.u32("rank")?,
                spec: ProcSpec::decode(r)?,
            },
            ty::PROC_EVENT => {
                let pid = r.i32("pid")?;
                let change = match r.u8("change")? {
                    0 => ProcChange::Exited(ExitStatus::decode(r)?),
                    1 => ProcChange::Stopped,
                    2 => ProcChange::Continued,
                    3 => ProcChange::Forked {
                        child: r.i32("child")?,
                        child_ns: r.i32("child ns pid")?,
                        comm: r.str("comm", MAX_TEXT)?,
                    },
                    4 => ProcChange::Exec { comm: r.str("comm", MAX_TEXT)? },
                    v => return Err(DecodeError::BadValue { what: "change", value: v.into() }),
                };
                ProcEvent { pid, change }
            }
            ty::SIGNAL_LAUNCH => SignalLaunch { signal: r.i32("signal")? },
            ty::SIGNAL_PROC => SignalProc {
                launch: r.u64("launch")?,
                rank: r.u32("rank")?,
                signal: r.i32("signal")?,
            },
            ty::STAGE_FILES => {
                StageFiles { port: r.u16("port")?, token: r.fixed("token")?, files: get_files(r)? }
            }
            ty::MASTER_INFO_REPLY => {
                let version = r.str("version", MAX_TEXT)?;
                let n = r.count("address list", MAX_NODES, 3)?;
                let mut addrs = Vec::with_capacity(n);
                for _ in 0..n {
                    addrs.push(get_endpoint(r)?);
                }
                MasterInfoReply {
                    version,
                    addrs,
                    bytes_to_slaves: r.u64("bytes to slaves")?,
                    client_node: r.i32("client node")?,
                    client_ip: get_ip(r)?,
                    ghost: r.str("ghost path", MAX_PATH)?,
                    // A trailing field: an older master's reply ends before it.
                    ghosts_made: if r.bytes_left() >= 8 { r.u64("ghosts made")? } else { 0 },
                }
            }
            ty::LAUNCHED => {
                let n = r.count("pid list", MAX_NODES, 4)?;
                let mut pids = Vec::with_capacity(n);
                for _ in 0..n {
                    pids.push(r.i32("pid")?);
                }
                Launched { pids }
            }
            ty::PROC_EXIT => ProcExit {
                launch: r.u64("launch")?,
                rank: r.u32("rank")?,
                status: ExitStatus::decode(r)?,
            },
            ty::OK => Ok,
            ty::ERROR => Error { code: r.i32("code")?, message: r.str("message", MAX_TEXT)? },
            ty::NODES => Nodes { nodes: get_nodes(r)? },
            ty::NODES_CHANGED => NodesChanged { nodes: get_nodes(r)? },
            other => {
                // Skip the body: an unknown message is answered, not parsed.
                let rest = r.bytes_left();
                r.skip(rest);
                Unknown { msg_type: other }
            }
        })
    }
}

#[cfg(test)]
mod tree_tests {
    use super::*;

    fn entries(n: usize) -> Vec<TreeEntry> {
        (0..n)
            .map(|i| TreeEntry {
                node: i as i32,
                ip: Ipv4Addr::LOCALHOST,
                port: 1,
                ranks: vec![i as u32],
                pids: vec![0],
                ports: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn tree_parts_are_contiguous_and_even() {
        let e = entries(10);
        let parts = split_tree(&e, 3);
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(lens, [4, 3, 3]);
        assert_eq!(parts[1][0].node, 4);
        assert_eq!(split_tree(&e, 32).len(), 10);
        assert!(split_tree(&e[..0], 32).is_empty());
        // 1024 nodes at width 32: 32 parts of 32, each led by its root.
        let e = entries(1024);
        assert!(split_tree(&e, 32).iter().all(|p| p.len() == 32));
    }
}
