//! The parts messages are made of (process specs, node reports, copy tasks...), each with its
//! layout on the wire: structs through [`wire_struct!`](crate::wire_struct) and enums (a kind
//! byte, then that kind's fields) through [`wire_enum!`](crate::wire_enum), field by field; an
//! exit status and the copy flags, which fit neither, by hand.

use std::net::Ipv4Addr;

use crate::codec::{DecodeError, Reader, Writer};
use crate::wire::{Addr, Each, Fixed, Flag, Int, List, Nested, Opt, Text, Wire, Within, IP};
#[cfg(doc)]
use crate::Message;
use crate::{wire_enum, wire_struct};

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

wire_enum! {
    /// A change to the library list ([`Message::LibEdit`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub enum LibOp ("library operation", "library operation") {
        /// Empty the list (`bplib -c`).
        0 Clear,
        /// Add the names; adding one already there does nothing (`bplib -a`).
        1 Add,
        /// Remove the names; a name not on the list is an error (`bplib -d`).
        2 Delete,
    }
}

wire_enum! {
    /// A node command that the slave carries out without a reply (BProc's fire-and-forget calls).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum NodeAction ("action", "node action") {
        /// Run the node's reboot command.
        1 Reboot,
        /// Run the node's halt command.
        2 Halt,
        /// Run the node's power-off command.
        3 Poweroff,
    }
}

impl NodeAction {
    /// The word used in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            NodeAction::Reboot => "reboot",
            NodeAction::Halt => "halt",
            NodeAction::Poweroff => "poweroff",
        }
    }
}

wire_enum! {
    /// Where a launched process's fd 0, 1 or 2 goes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum IoSpec ("io kind", "io kind") {
        /// A TCP connection back to the launcher (bpsh), which forwards it.
        0 Forward,
        /// `/dev/null` on the node (`bpsh -N`).
        1 Null,
        /// A file on the node, opened with the caller's credentials (`bpsh -I/-O/-E`): read-only
        /// for fd 0, else write, create (0666 before umask) and truncate.
        2 File(path: String => Text("io path", MAX_PATH)),
        /// A file on the node opened with the caller's credentials, these `open(2)` flags and
        /// mode, then positioned at `offset` (libbproc's `BPROC_IO_FILE`).
        3 Open {
            /// Path on the node.
            path: String => Text("io path", MAX_PATH),
            /// `open(2)` flags (Linux values).
            flags: i32 => Int("open flags"),
            /// Mode for a created file, before the umask.
            mode: u32 => Int("open mode"),
            /// Where to seek to after opening (0: stay at the start, or at the end with
            /// `O_APPEND`).
            offset: i64 => Int("offset"),
        },
        /// A TCP connection from the node (libbproc's `BPROC_IO_SOCKET`).
        4 Connect {
            /// Address; `None` (`0.0.0.0`): the launcher's, as this node reaches it.
            ip: Option<Ipv4Addr> => IP,
            /// Port.
            port: u16 => Int("io port"),
            /// Send the process's front-end pid and the fd number first, as two native-endian
            /// 32-bit integers (`BPROC_IO_SEND_INFO`).
            send_info: bool => Flag("send info"),
        },
        /// No file: the fd is closed.
        5 Closed,
        /// A forwarded fd of a process that moved on from the node it was launched on: a TCP
        /// connection to its launcher's listener (bpsh's, or its relaying ghost's), opened with
        /// the launcher's token and the process's rank in that launch, so the launcher takes it
        /// as the next connection of that rank's stream. Set by the master, never by a client.
        6 Rejoin {
            /// Address; `None`: the master's, as the node sees it.
            ip: Option<Ipv4Addr> => IP,
            /// Port.
            port: u16 => Int("io port"),
            /// The launch's token.
            token: [u8; 16] => Fixed("io token"),
            /// The rank in that launch.
            rank: u32 => Int("io rank"),
        },
    }
}

wire_struct! {
    /// One entry of an explicit I/O list: what `fd` of the process is.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FdIo {
        /// The fd in the process, 0 to [`MAX_FD`].
        pub fd: i32 => Within("fd", 0..=MAX_FD),
        /// What it is.
        pub io: IoSpec => Nested,
        /// When it cannot be set up, leave the fd closed and start the process anyway (with
        /// `BPROC_IO_DELAY`, BProc only logged such errors).
        pub optional: bool => Flag("optional"),
    }
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

wire_struct! {
    /// A process to start on a node: what the launcher asks for, minus who it is (the master adds
    /// the caller's credentials from the kernel, never from the request).
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct ProcSpec {
        /// Program to execute (an absolute path).
        pub path: String => Text("path", MAX_PATH),
        /// Arguments, `argv[0]` as typed.
        pub argv: Vec<String> => strs("argv"),
        /// Environment, `NAME=value` each.
        pub env: Vec<String> => strs("environment"),
        /// Working directory; `/` is used when it does not exist on the node.
        pub cwd: String => Text("cwd", MAX_PATH),
        /// File mode creation mask; the master replaces it with the launcher's, from its kernel.
        pub umask: u32 => Int("umask"),
        /// fds 0, 1, 2.
        pub io: Vec<IoSpec> => List("io list", 3, 1, Nested),
        /// Explicit I/O list, applied after `io` (so it may override fds 0–2).
        pub fds: Vec<FdIo> => List("io list", MAX_FD_IO, 6, Nested),
        /// Port of the launcher's listener for forwarded fds.
        pub io_port: u16 => Int("io port"),
        /// Address of that listener: `None` for the master's address as the node sees it (set by
        /// the master for launchers on nodes).
        pub io_ip: Option<Ipv4Addr> => IP,
        /// Secret the node presents on each forwarded connection.
        pub token: [u8; 16] => Fixed("token"),
        /// Resource limits to apply: (resource number, soft, hard), `u64::MAX` for unlimited.
        /// The master replaces what a launcher sends with the launcher's limits as its kernel
        /// has them, so a launcher cannot claim more than it has.
        pub rlimits: Vec<(u32, u64, u64)> => RLIMITS,
        /// Files a diskless node must hold (program, interpreters, libraries).
        pub files: Vec<StagedRef> => FILES,
        /// A process image to restore instead of starting `path` (a move, rfork or vrfork): the
        /// node fetches it from this endpoint (`None` address: the master's, as the node sees
        /// it) with `token`, and each rank's restored copy returns rank + 1 from the dump.
        pub image: Option<Endpoint> => Opt("image flag", Nested),
        /// The files a vector fork's image names (maps by reference), in its order: each
        /// node says which it has when it asks for the image, rather than being asked (see
        /// [`crate::conn`]). `None` for a move, whose mover asks.
        pub image_files: Option<Vec<crate::conn::FileId>> => Opt(
            "image files flag",
            List("image files", crate::conn::MAX_PROBE_FILES, 24, Nested)
        ),
        /// A vector fork's image length in bytes, as the mover sends it to a node that has
        /// every file the image names: such a node passes the image on to its children
        /// while it arrives. `None` for a move.
        pub image_len: Option<u64> => Opt("image length flag", Int("image length")),
    }
}

/// Longest node attribute name (as an xattr name's).
pub const MAX_ATTR_NAME: usize = 255;
/// Largest node attribute value (as an xattr value's).
pub const MAX_ATTR_VALUE: usize = 1 << 16;

/// Most resource limits one process carries (Linux has 16).
pub const MAX_RLIMITS: usize = 64;

wire_struct! {
    /// A file a diskless node needs for a launch, fetched from the launcher by content hash
    /// unless the node's cache already holds it.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct StagedRef {
        /// Absolute path, the same on the node.
        pub path: String => Text("staged path", MAX_PATH),
        /// Permission bits.
        pub mode: u32 => Int("staged mode"),
        /// Size in bytes.
        pub size: u64 => Int("staged size"),
        /// SHA-256 of the content.
        pub hash: [u8; 32] => Fixed("staged hash"),
    }
}

/// Most files staged for one launch.
pub const MAX_STAGED: usize = 4096;

wire_struct! {
    /// The caller's identity, as the kernel told the master.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Creds {
        /// User id.
        pub uid: u32 => Int("uid"),
        /// Group id.
        pub gid: u32 => Int("gid"),
        /// Supplementary groups.
        // Linux allows 65536 supplementary groups.
        pub groups: Vec<u32> => List("groups", 1 << 16, 4, Int("group")),
    }
}

wire_struct! {
    /// An IPv4 address and port where either part may be left for the receiver to fill in
    /// (`bpctl --reconnect`'s omitted parts).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Endpoint {
        /// Address, or `None` for "the one in use now".
        pub ip: Option<Ipv4Addr> => IP,
        /// Port, or 0 for "the one in use now".
        pub port: u16 => Int("port"),
    }
}

wire_struct! {
    /// What a slave reports about its machine.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct NodeInfo {
        /// Online CPUs.
        pub cpus: u32 => Int("cpus"),
        /// Total memory in bytes.
        pub mem_total: u64 => Int("mem_total"),
        /// Available memory in bytes.
        pub mem_free: u64 => Int("mem_free"),
        /// Load averages over 1, 5 and 15 minutes, in hundredths.
        pub load: [u32; 3] => Each(Int("load")),
        /// Seconds since the node booted.
        pub uptime: u64 => Int("uptime"),
        /// Kernel release (`uname -r`).
        pub kernel: String => Text("kernel", MAX_TEXT),
        /// Host name of the node.
        pub hostname: String => Text("hostname", MAX_TEXT),
        /// Machine architecture (`uname -m`).
        pub arch: String => Text("arch", MAX_TEXT),
        /// The node has no filesystem of its own: programs and libraries are staged on it.
        pub diskless: bool => Flag("diskless flag"),
        /// Bytes of programs and libraries fetched into the node's cache so far.
        pub staged_bytes: u64 => Int("staged bytes"),
    }
}

wire_struct! {
    /// One row of the master's node table as clients see it.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct NodeStatus {
        /// Node number (≥ 0).
        pub node: i32 => Int("node"),
        /// State string (`down`, `boot`, `up`, `error` or any alphanumeric word).
        pub state: String => Text("state", MAX_STATE_LEN),
        /// Permission bits, a subset of 0111.
        pub mode: u32 => Int("mode"),
        /// Owner.
        pub uid: u32 => Int("uid"),
        /// Group.
        pub gid: u32 => Int("gid"),
        /// Address of the node's connection; `None` while down.
        pub addr: Option<Ipv4Addr> => IP,
        /// Latest machine report; `None` while down.
        pub info: Option<NodeInfo> => Opt("info flag", Nested),
    }
}

wire_struct! {
    /// A receiver of a copy stream: a data port and the token the sender must present.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct CopyLink {
        /// Node number of the receiver ([`NODE_MASTER`] for the master, [`NODE_CLIENT`] for the
        /// client that asked for the copy).
        pub node: i32 => Int("node"),
        /// Its address, or `None` for "the master's address as you see it".
        pub ip: Option<Ipv4Addr> => IP,
        /// Its data port.
        pub port: u16 => Int("port"),
        /// Secret the sender presents first.
        pub token: [u8; 16] => Fixed("token"),
    }
}

wire_struct! {
    /// One node's part of a launch tree: where it listens for the tree and which ranks it runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TreeEntry {
        /// Node number.
        pub node: i32 => Int("node"),
        /// Its address.
        pub ip: Ipv4Addr => Addr("address"),
        /// Its tree port.
        pub port: u16 => Int("port"),
        /// The ranks it runs.
        pub ranks: Vec<u32> => List("ranks", MAX_NODES, 4, Int("rank")),
        /// For each of `ranks`, the pid of its ghost on the master (0: none), which the process
        /// takes on the node when the slave can give it (a pid namespace per master).
        pub pids: Vec<i32> => i32s("ghost pids"),
        /// For each of `ranks`, the port its forwarded fds connect to instead of the spec's
        /// `io_port` (empty, or 0: the spec's): a moved process's ghost relays its output.
        pub ports: Vec<u16> => u16s("io ports"),
    }
}

wire_enum! {
    /// What happened to a process on a node (slave → master, [`Message::ProcEvent`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ProcChange ("change", "change") {
        /// It ended.
        0 Exited(status: ExitStatus => Nested),
        /// It stopped (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
        1 Stopped,
        /// It continued after a stop.
        2 Continued,
        /// It forked `child` (the child's pid on the node, as the slave names it), running `comm`.
        3 Forked {
            /// The child's pid on the node.
            child: i32 => Int("child"),
            /// The child's pid as it sees itself (in the node's pid namespace for the master).
            child_ns: i32 => Int("child ns pid"),
            /// Its command name.
            comm: String => Text("comm", MAX_TEXT),
        },
        /// It ran a new program, `comm`.
        4 Exec {
            /// The new command name.
            comm: String => Text("comm", MAX_TEXT),
        },
    }
}

wire_struct! {
    /// A remote process as the master knows it ([`Message::Procs`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ProcEntry {
        /// Its ghost's pid on the master.
        pub pid: i32 => Int("pid"),
        /// The node it runs on.
        pub node: i32 => Int("node"),
        /// Its pid on the node as the slave names it.
        pub rpid: i32 => Int("node pid"),
        /// Owner.
        pub uid: u32 => Int("uid"),
    }
}

wire_struct! {
    /// A process a slave runs for its master ([`Message::SessionProcs`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SlaveProc {
        /// Its pid on the node as the slave names it.
        pub pid: i32 => Int("pid"),
        /// Its ghost's pid on the master (0: none known).
        pub ghost: i32 => Int("ghost"),
        /// The launch it is a rank of (0: forked, not launched).
        pub launch: u64 => Int("launch"),
        /// Its rank in that launch.
        pub rank: u32 => Int("rank"),
        /// Owner.
        pub uid: u32 => Int("uid"),
    }
}

wire_struct! {
    /// A remote process's state as measured on its node ([`Message::ProcStats`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ProcStat {
        /// Its pid on the node as the slave names it.
        pub rpid: i32 => Int("pid"),
        /// State letter from `/proc/PID/stat` (`R`, `S`, `T`...).
        pub state: u8 => Int("state"),
        /// User plus system CPU time, milliseconds.
        pub cpu_ms: u64 => Int("cpu time"),
        /// Resident memory, KiB.
        pub rss_kib: u64 => Int("resident memory"),
    }
}

/// The width of a launch tree over `nodes` nodes whose nodes pass it on to at most `fanout`
/// each: every node when they are no more than `fanout` (one hop), else about the square root
/// of their number (at most `fanout`), so that the master and each node of the first level
/// pass it on to about as many. The tree stays two hops deep up to `fanout`² nodes, and as
/// few nodes as that allows hold a copy to pass on (a vector fork's image, a diskless node's
/// program): at 64 nodes and a fanout of 32, 8 parts of 8 rather than 32 parts of 2.
pub fn tree_width(nodes: usize, fanout: u32) -> u32 {
    let fanout = fanout.max(1);
    if nodes <= fanout as usize {
        return fanout;
    }
    let root = (1u32..).find(|r| (*r as usize) * (*r as usize) >= nodes).unwrap_or(fanout);
    root.min(fanout)
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

/// A copy for the master to lay out, as bpcp asks for one: the body of [`Message::Copy`].
///
/// [`Message::Copy`]: crate::Message::Copy
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// The source nodes ([`NODE_CLIENT`]: the caller's own machine).
    pub src: Vec<i32>,
    /// The paths to copy on each source.
    pub paths: Vec<String>,
    /// The destination nodes.
    pub dst: Vec<i32>,
    /// Where the files go on each destination.
    pub target: String,
    /// Recursive, preserve, target must be a directory, umask.
    pub opts: CopyOpts,
    /// The caller's working directory, for relative paths on nodes.
    pub cwd: String,
    /// How many receivers each receiver relays to in a broadcast.
    pub fanout: u32,
    /// The caller's data port, when it receives (0: it does not).
    pub port: u16,
}

wire_enum! {
    /// One node's part in a copy.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum CopyTask ("copy task", "copy task") {
        /// Read `paths` and stream them to each of `to`.
        0 Send {
            /// Files or directories, as the user typed them.
            paths: Vec<String> => strs("paths"),
            /// Receivers to connect to.
            to: Vec<CopyLink> => LINKS,
        },
        /// Accept one stream presenting `token`, relay it to each of `to`, and write it at
        /// `target`, each top-level name followed by `suffix`.
        1 Receive {
            /// Secret the sender presents.
            token: [u8; 16] => Fixed("token"),
            /// Target path (a directory, or the new name of a single source).
            target: String => Text("target", MAX_PATH),
            /// Appended to each top-level name (`.N` when gathering from many nodes).
            suffix: String => Text("suffix", MAX_PATH),
            /// Receivers further down the broadcast tree.
            to: Vec<CopyLink> => LINKS,
        },
    }
}

/// Most paths or receivers in one copy request.
pub const MAX_COPY_ITEMS: usize = 1 << 16;

/// Most arguments or environment entries of one process.
pub const MAX_ARGS: usize = 1 << 16;

/// A list of strings (arguments, paths, errors): a single one may be large, but the body
/// limit bounds them all together.
pub(crate) const fn strs(what: &'static str) -> List<Text> {
    List(what, MAX_ARGS, 4, Text(what, crate::MAX_BODY))
}

/// A list of pids or node numbers.
pub(crate) const fn i32s(what: &'static str) -> List<Int> {
    List(what, MAX_NODES, 4, Int(what))
}

/// A list of ports.
pub(crate) const fn u16s(what: &'static str) -> List<Int> {
    List(what, MAX_NODES, 2, Int(what))
}

/// Resource limits: (resource, soft, hard).
pub(crate) const RLIMITS: List<(Int, Int, Int)> = List(
    "rlimits",
    MAX_RLIMITS,
    20,
    (Int("rlimit resource"), Int("rlimit soft"), Int("rlimit hard")),
);

/// Files to stage.
pub(crate) const FILES: List<Nested> = List("staged files", MAX_STAGED, 48, Nested);

/// Receivers of a copy stream.
pub(crate) const LINKS: List<Nested> = List("copy links", MAX_COPY_ITEMS, 4 + 1 + 2 + 16, Nested);

/// Smallest encoding of a [`NodeStatus`], which bounds a node list's count.
const MIN_NODE_STATUS: usize = 4 + 4 + 12 + 2;

/// The node table.
pub(crate) const NODES: List<Nested> = List("node list", MAX_NODES, MIN_NODE_STATUS, Nested);

/// A kind byte and a value, always both (the node-lost kind's value is 0).
impl Wire for ExitStatus {
    fn put(&self, w: &mut Writer) {
        let (kind, value) = match *self {
            ExitStatus::Code(c) => (0, c),
            ExitStatus::Signal(s) => (1, s),
            ExitStatus::NodeLost => (2, 0),
        };
        w.u8(kind);
        w.i32(value);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
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

/// The three flags in one byte (bit 0 recursive, 1 preserve, 2 target is a directory), then
/// the umask.
impl Wire for CopyOpts {
    fn put(&self, w: &mut Writer) {
        w.u8(u8::from(self.recursive)
            | u8::from(self.preserve) << 1
            | u8::from(self.target_dir) << 2);
        w.u32(self.umask);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
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
    /// the launcher's; `rank` is the rank in seven digits. Each string comes in two parts to
    /// join, and none is made here: a launch's environment is some dozens of them, made again
    /// for every rank.
    pub fn env_where<'a>(
        &'a self,
        rank: &'a str,
        socket: Option<&'a str>,
    ) -> impl Iterator<Item = [&'a str; 2]> + 'a {
        let kept = self.env.iter().filter_map(move |kv| match kv.split_once('=') {
            None | Some(("BPROC_SOCKET", _)) => None,
            Some(("BPROC_RANK", "XXXXXXX")) => Some(["BPROC_RANK=", rank]),
            Some(_) => Some([kv.as_str(), ""]),
        });
        kept.chain(socket.map(|s| ["BPROC_SOCKET=", s]))
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

    #[test]
    fn trees_are_as_wide_as_they_are_deep() {
        // One hop while the fanout reaches every node.
        assert_eq!(tree_width(3, 32), 32);
        assert_eq!(tree_width(32, 32), 32);
        // Beyond it, about the square root: each first-level node passes on to about as many
        // as the master.
        assert_eq!(tree_width(33, 32), 6);
        assert_eq!(tree_width(64, 32), 8);
        assert_eq!(tree_width(200, 32), 15);
        assert_eq!(tree_width(1024, 32), 32);
        // More than fanout² nodes: the fanout, a third hop.
        assert_eq!(tree_width(2000, 32), 32);
        assert_eq!(tree_width(8, 2), 2);
        assert_eq!(tree_width(5, 0), 1);
        // Two hops whenever the width is below the fanout: no part outgrows one node's reach.
        for n in 1..=1024usize {
            let w = tree_width(n, 32);
            let e = entries(n);
            let parts = split_tree(&e, w);
            assert!(parts.iter().all(|p| p.len() <= 33), "{n} nodes");
        }
    }
}
