//! The messages: each declared once below, with its type number, its fields and how each
//! field goes on the wire. The [`Message`] enum, [`Message::msg_type`], [`Message::name`] and
//! the body encoder and decoder all come from that one table.
//!
//! Type numbers are grouped: 1–19 slave link, 20–39 client requests, 40–59 master → slave
//! commands, 100–119 replies, 120– events. Numbers are never reused; a retired message keeps
//! its number. See `docs/protocol.md` for the flows.
//!
//! To add a message: give it an unused number in its group, its fields with their codecs
//! ([`crate::wire`]), add a sample to `tests/golden.rs` and write its fixture with
//! `BPROC_BLESS=1`; a change to an existing body also bumps [`crate::VERSION`].

use std::net::Ipv4Addr;

use crate::codec::{DecodeError, Reader, Writer};
use crate::parts::{i32s, strs, u16s, FILES, LINKS, NODES, RLIMITS};
use crate::wire::{Bytes, Codec, Fixed, Flag, Int, List, Nested, Text, Trailing, IP};
use crate::{
    CopyLink, CopyOpts, CopyTask, Creds, Endpoint, ExitStatus, LibOp, NodeAction, NodeInfo,
    NodeStatus, ProcChange, ProcEntry, ProcSpec, ProcStat, SlaveProc, StagedRef, TreeEntry,
};
use crate::{MAX_ATTR_NAME, MAX_ATTR_VALUE, MAX_NODES, MAX_PATH, MAX_PROCS, MAX_TEXT};

/// Declares [`Message`] from the table: `NUMBER Name { field: Type => codec, ... },` or
/// `NUMBER Name,` for a message without a body; doc comments pass through.
macro_rules! messages {
    ($(
        $(#[$vm:meta])*
        $num:literal $name:ident $({
            $( $(#[$fm:meta])* $field:ident : $ty:ty => $codec:expr ),* $(,)?
        })?
    ),* $(,)?) => {
        /// Every message of the protocol.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$vm])* $name $({ $( $(#[$fm])* $field: $ty, )* })?, )*
            /// A message type this version does not know. Its body was skipped; answer with
            /// an error.
            Unknown {
                /// The type number received.
                msg_type: u16,
            },
        }

        /// Every message's type number and name, in table order (for documentation checks
        /// and tools that list the protocol).
        pub const MESSAGE_TYPES: &[(u16, &str)] = &[ $( ($num, stringify!($name)), )* ];

        impl Message {
            /// The frame type number of this message.
            pub fn msg_type(&self) -> u16 {
                match self {
                    $( Message::$name { .. } => $num, )*
                    Message::Unknown { msg_type } => *msg_type,
                }
            }

            /// A short name for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Message::$name { .. } => stringify!($name), )*
                    Message::Unknown { .. } => "Unknown",
                }
            }

            pub(crate) fn encode_body(&self, w: &mut Writer) {
                match self {
                    $( Message::$name $({ $($field),* })? => {
                        $( $( Codec::<$ty>::put(&$codec, $field, w); )* )?
                    } )*
                    Message::Unknown { .. } => {}
                }
            }

            // Two messages with one number would make the second unreachable.
            #[deny(unreachable_patterns)]
            pub(crate) fn decode_body(
                msg_type: u16,
                r: &mut Reader<'_>,
            ) -> Result<Message, DecodeError> {
                Ok(match msg_type {
                    $( $num => Message::$name $({
                        $( $field: Codec::<$ty>::get(&$codec, r)?, )*
                    })?, )*
                    other => {
                        // Skip the body: an unknown message is answered, not parsed.
                        r.skip(r.bytes_left());
                        Message::Unknown { msg_type: other }
                    }
                })
            }
        }
    };
}

messages! {
    // 1–19: the slave link.
    /// Master → slave, first frame on a link: a fresh random challenge.
    1 AuthChallenge {
        /// Master's nonce.
        nonce: [u8; 32] => Fixed("nonce"),
    },
    /// Slave → master: the slave's own nonce and its proof of the cluster key.
    2 AuthResponse {
        /// Slave's nonce.
        nonce: [u8; 32] => Fixed("nonce"),
        /// HMAC over both nonces (see `bproc-link`).
        mac: [u8; 32] => Fixed("mac"),
    },
    /// Master → slave: the master's proof of the cluster key.
    3 AuthConfirm {
        /// HMAC over both nonces, with the master's label.
        mac: [u8; 32] => Fixed("mac"),
    },
    /// Slave → master after authentication: who it is.
    4 Join {
        /// Software version of the slave.
        version: String => Text("version", MAX_TEXT),
        /// Session cookie of the slave's previous session, 0 for a fresh daemon.
        cookie: u64 => Int("cookie"),
        /// The machine's report.
        info: NodeInfo => Nested,
        /// Port of the slave's data service (copies), on the link's address.
        data_port: u16 => Int("data port"),
        /// Port where the slave takes launch trees from other slaves, on the same address.
        tree_port: u16 => Int("tree port"),
    },
    /// Master → slave: the node's configuration (BProc's `CONF`); sent on join and on SIGHUP.
    5 Conf {
        /// The node number assigned.
        node: i32 => Int("node"),
        /// The session cookie to present when reconnecting.
        cookie: u64 => Int("cookie"),
        /// Seconds without a ping after which the slave declares the master lost.
        ping_timeout: u32 => Int("ping timeout"),
        /// Master's time of day, milliseconds since the epoch.
        time_ms: u64 => Int("time"),
        /// Seconds a session outlives its link: the master keeps an unreachable node's jobs
        /// that long, and the slave kills them itself (self-fencing) once it has been without
        /// its master that long.
        grace: u32 => Int("grace"),
    },
    /// Master → slave keepalive.
    6 Ping {
        /// Sequence number echoed by the pong.
        seq: u64 => Int("seq"),
        /// Master's time of day, milliseconds since the epoch.
        time_ms: u64 => Int("time"),
    },
    /// Slave → master keepalive answer with a fresh machine report.
    7 Pong {
        /// The ping's sequence number.
        seq: u64 => Int("seq"),
        /// The machine's report.
        info: NodeInfo => Nested,
    },
    /// Either side, just before closing a link: why.
    8 Disconnect {
        /// Human-readable reason.
        reason: String => Text("reason", MAX_TEXT),
        /// Whether a slave started with `-r` should connect again. False when the administrator
        /// set the node down or the slave was refused.
        reconnect: bool => Flag("reconnect flag"),
    },
    /// Slave → master after authentication, instead of [`Message::Join`]: this connection
    /// carries a client running on the node; from here on it speaks the client protocol with
    /// the master, as `creds` (which the slave read from the kernel).
    9 ProxyClient {
        /// The node the client runs on.
        node: i32 => Int("node"),
        /// The client's identity on the node.
        creds: Creds => Nested,
        /// Its pid as the slave sees it (the kernel's word; 0 if unknown), which names it
        /// among the node's processes when it moves itself.
        pid: i32 => Int("pid"),
        /// Its resource limits, from `/proc/PID/limits` on the node, which its launches get.
        rlimits: Vec<(u32, u64, u64)> => RLIMITS,
        /// Its umask, from `/proc/PID/status` on the node.
        umask: u32 => Int("umask"),
    },

    // 20–39: client requests.
    /// Client → master: the whole node table.
    20 NodeList,
    /// Client → master: set a node's state string.
    21 SetState {
        /// Node number.
        node: i32 => Int("node"),
        /// New state.
        state: String => Text("state", MAX_TEXT),
    },
    /// Client → master: set a node's permission bits.
    22 Chmod {
        /// Node number.
        node: i32 => Int("node"),
        /// New mode (only execute bits are valid).
        mode: u32 => Int("mode"),
    },
    /// Client → master: set a node's owner.
    23 Chown {
        /// Node number.
        node: i32 => Int("node"),
        /// New owner.
        uid: u32 => Int("uid"),
    },
    /// Client → master: set a node's group.
    24 Chgrp {
        /// Node number.
        node: i32 => Int("node"),
        /// New group.
        gid: u32 => Int("gid"),
    },
    /// Client → master: reboot, halt or power off a node.
    25 NodeCommand {
        /// Node number.
        node: i32 => Int("node"),
        /// What to do.
        action: NodeAction => Nested,
    },
    /// Client → master: `chroot` a node's slave daemon.
    26 NodeChroot {
        /// Node number.
        node: i32 => Int("node"),
        /// New root directory on the node.
        path: String => Text("path", MAX_PATH),
    },
    /// Client → master: move a node's link to another address (`bpctl --reconnect`).
    27 NodeReconnect {
        /// Node number.
        node: i32 => Int("node"),
        /// Master address for the new link.
        master: Endpoint => Nested,
        /// Slave address for the new link.
        local: Endpoint => Nested,
    },
    /// Client → master: send me [`Message::NodesChanged`] after every change, until I close.
    28 Watch,
    /// Client → master: the master's slave-facing addresses and version.
    29 MasterInfo,
    /// Client → master: start `spec` once on each of `nodes` (rank = index). Replied with
    /// [`Message::Launched`]; then [`Message::ProcExit`] events arrive, one per started rank.
    30 Launch {
        /// Node numbers, duplicates allowed.
        nodes: Vec<i32> => List("node list", MAX_NODES, 4, Int("node")),
        /// The process.
        spec: ProcSpec => Nested,
        /// Per rank, the pid of the ghost the client made for it (empty, or 0: none). A rank
        /// with a ghost lives as long as its ghost, not as long as this connection. For a
        /// process on a node that moves itself (an image launch), -1 names its own ghost;
        /// for one that rforks, [`GHOST_FORKED`](crate::GHOST_FORKED) asks for a ghost its
        /// own ghost forks.
        ghosts: Vec<i32> => i32s("ghost pids"),
        /// Per rank, the port its forwarded fds connect to instead of `spec.io_port` (empty,
        /// or 0: `spec.io_port`).
        io_ports: Vec<u16> => u16s("io ports"),
    },
    /// Client → master: send `signal` to every running process of this connection's launch.
    31 SignalLaunch {
        /// Signal number.
        signal: i32 => Int("signal"),
    },
    /// Client → master: copy `paths` from each of `src` to `target` on each of `dst`
    /// ([`NODE_CLIENT`](crate::NODE_CLIENT) in either list: the client itself). Replied with
    /// [`Message::CopyPlan`], then one [`Message::CopyResult`] per node with a part.
    32 Copy {
        /// Source nodes (several only when gathering to the client).
        src: Vec<i32> => i32s("source nodes"),
        /// Source paths (on every source node).
        paths: Vec<String> => strs("paths"),
        /// Destination nodes (several: a broadcast).
        dst: Vec<i32> => i32s("destination nodes"),
        /// Target path on the destinations.
        target: String => Text("target", MAX_PATH),
        /// Flags.
        opts: CopyOpts => Nested,
        /// The client's working directory, for relative paths on nodes.
        cwd: String => Text("cwd", MAX_PATH),
        /// Children per node in a broadcast tree (1: a chain).
        fanout: u32 => Int("fanout"),
        /// The client's data port, when it receives.
        port: u16 => Int("port"),
    },
    /// Client → master, a ghost's first frame: this connection is the ghost of a remote
    /// process (which one, the kernel-given pid says). `fork` is the fork it answers
    /// ([`Message::GhostFork`]), 0 for a ghost made by its launcher. Then the ghost sends
    /// [`Message::GhostSignal`]s and receives [`Message::GhostState`], [`Message::GhostFork`],
    /// [`Message::GhostExec`] and finally [`Message::ProcExit`].
    33 GhostHello {
        /// Fork id, or 0.
        fork: u64 => Int("fork"),
    },
    /// Ghost → master: a signal arrived for the remote process.
    34 GhostSignal {
        /// Signal number.
        signal: i32 => Int("signal"),
        /// The sender's pid (0: the kernel, a terminal).
        sender: i32 => Int("sender"),
    },
    /// Client → master: every remote process. Replied with [`Message::Procs`].
    35 ProcList,
    /// Client → master: the state, CPU time and memory of the remote processes of `pids`
    /// (ghost pids; empty: all), measured on their nodes. Replied with [`Message::ProcStats`].
    36 ProcStatList {
        /// Ghost pids, or none for all.
        pids: Vec<i32> => i32s("pids"),
    },
    /// Client → master: one attribute of a node (`state`, `addr`, or one set with
    /// [`Message::SetNodeAttr`]). Replied with [`Message::NodeAttr`].
    37 GetNodeAttr {
        /// Node number.
        node: i32 => Int("node"),
        /// Attribute name.
        name: String => Text("attribute name", MAX_ATTR_NAME),
    },
    /// Client → master: set a node's attribute (root only; an empty value removes it). The
    /// node keeps it until it goes down.
    38 SetNodeAttr {
        /// Node number.
        node: i32 => Int("node"),
        /// Attribute name.
        name: String => Text("attribute name", MAX_ATTR_NAME),
        /// Value, at most [`MAX_ATTR_VALUE`] bytes.
        value: Vec<u8> => Bytes("attribute value", MAX_ATTR_VALUE),
    },
    /// Ghost → master: how [`Message::GhostRestore`] went: 0, or an errno (the ghost stays a
    /// ghost).
    39 GhostRestored {
        /// 0 or errno.
        code: i32 => Int("code"),
    },

    // 40–59: master → slave commands.
    /// Master → slave: reboot, halt or power off (no reply).
    40 Action {
        /// What to do.
        action: NodeAction => Nested,
    },
    /// Master → slave request: `chroot(path)` the slave daemon.
    41 SlaveChroot {
        /// New root directory.
        path: String => Text("path", MAX_PATH),
    },
    /// Master → slave request: open a new link to `master` from `local` and move the session.
    42 SlaveReconnect {
        /// Master address to connect to.
        master: Endpoint => Nested,
        /// Local address to connect from.
        local: Endpoint => Nested,
    },
    // 43 was Spawn (one rank per request), replaced by SpawnTree.
    /// Master → slave: signal a launch's process on this node (`rank` `u32::MAX`: all of them).
    44 SignalProc {
        /// Launch id.
        launch: u64 => Int("launch"),
        /// Rank, or `u32::MAX`.
        rank: u32 => Int("rank"),
        /// Signal number.
        signal: i32 => Int("signal"),
    },
    /// Master → slave request, when a diskless node joins: make these files present in the
    /// node's root (the configuration's `libraries`), fetching missing ones from the master's
    /// file port with `token`, as a launch's files are fetched from its launcher.
    45 StageFiles {
        /// Port of the master's file server, on the master's address.
        port: u16 => Int("port"),
        /// Secret to present.
        token: [u8; 16] => Fixed("token"),
        /// The files.
        files: Vec<StagedRef> => FILES,
    },
    /// Master → slave request: take part in a copy, as `creds`. Replied with
    /// [`Message::CopyResult`] when the part is over.
    46 CopyOrder {
        /// Identity to open and create files with.
        creds: Creds => Nested,
        /// Working directory for relative paths (`/` when missing).
        cwd: String => Text("cwd", MAX_PATH),
        /// Flags.
        opts: CopyOpts => Nested,
        /// What to do.
        task: CopyTask => Nested,
    },
    /// Master → slave, and slave → slave over a tree connection: run the ranks of
    /// `entries[0]` (this node) and pass the rest on, split among at most `width` children,
    /// each of which gets its part the same way. Each rank's outcome goes to the master as
    /// [`Message::RankSpawned`].
    47 SpawnTree {
        /// Launch id.
        launch: u64 => Int("launch"),
        /// Random, once per launch: a node takes each launch once, so a recorded tree
        /// message cannot be replayed.
        nonce: u64 => Int("nonce"),
        /// The master's time of day when it sent the launch, milliseconds since the epoch.
        time_ms: u64 => Int("time"),
        /// Number of ranks in the launch.
        size: u32 => Int("size"),
        /// Credentials to run with.
        creds: Creds => Nested,
        /// The process.
        spec: ProcSpec => Nested,
        /// Children per node.
        width: u32 => Int("width"),
        /// This node's part, then the subtree below it.
        entries: Vec<TreeEntry> => List("tree entries", MAX_NODES, 14, Nested),
    },
    /// Master → slave: send `signal` to process `pid` of this node on behalf of `sender` (a
    /// master pid; 0 for the master itself).
    48 SignalPid {
        /// The process's pid on the node as the slave names it.
        pid: i32 => Int("pid"),
        /// Signal number.
        signal: i32 => Int("signal"),
        /// Who sent it, on the master.
        sender: i32 => Int("sender"),
    },
    /// Master → slave request: measure these processes. Replied with [`Message::ProcStats`].
    49 ProcStatQuery {
        /// Pids on the node as the slave names them.
        pids: Vec<i32> => i32s("pids"),
    },
    /// Client → master: the library list (files every machine has at the same path, which
    /// process images name instead of carrying). `only` empty: the whole list; otherwise
    /// those of `only` on it. Replied with [`Message::Libraries`].
    50 LibList {
        /// Paths to look up, or none for all.
        only: Vec<String> => strs("library paths"),
    },
    /// Client → master: change the library list (root only). Replied with
    /// [`Message::Ok`], or an error that changed nothing.
    51 LibEdit {
        /// What to do with `names`.
        op: LibOp => Nested,
        /// Absolute paths (none for [`LibOp::Clear`]).
        names: Vec<String> => strs("library paths"),
    },
    /// Slave → master, first after a [`Message::Conf`] that resumed the session: the
    /// processes the slave runs for it, so a restarted master rebuilds its process table.
    52 SessionProcs {
        /// One entry per live process.
        procs: Vec<SlaveProc> => List("session processes", MAX_PROCS, 24, Nested),
    },
    /// Master → slave: the ghost of process `pid` (one that a process forked there), so the
    /// slave can name it in [`Message::SessionProcs`] after a master restart.
    53 GhostOf {
        /// The process's pid on the node as the slave names it.
        pid: i32 => Int("pid"),
        /// Its ghost's pid on the master.
        ghost: i32 => Int("ghost"),
    },
    /// Ghost → master, after its hello: the port of its relay (a ghost forked for an rforked
    /// child, [`Message::GhostRfork`]).
    54 GhostRelayPort {
        /// The relay's port on the front end.
        port: u16 => Int("port"),
    },
    /// Client → master: wait for the end of the remote process whose ghost is `pid` (one of
    /// the caller's uid). Replied with [`Message::ProcExit`] (launch and rank 0) when it
    /// ends, however long that takes: a node's stand-in for a child its caller rforked.
    /// Meanwhile each [`Message::SignalLaunch`] on the connection goes to that process (no
    /// answer).
    55 ProcWait {
        /// The process's ghost pid.
        pid: i32 => Int("pid"),
    },
    /// Slave → master: process `pid` (the node's) is about to fork and waits. The master has
    /// the process's ghost fork first and answers [`Message::ForkAheadReply`] with the child
    /// ghost's pid, which the slave then gives the child; the process's `Forked` event that
    /// follows takes that ghost whatever pid the child got.
    56 ForkAhead {
        /// The slave's number for the answer.
        seq: u32 => Int("seq"),
        /// The forking process.
        pid: i32 => Int("pid"),
        /// Its command name, the child ghost's name.
        comm: String => Text("comm", MAX_TEXT),
    },
    /// Master → slave: the answer to [`Message::ForkAhead`]: the child ghost's pid, or 0
    /// when there is none (no ghost to fork; the fork is then followed as any other).
    57 ForkAheadReply {
        /// The request's number.
        seq: u32 => Int("seq"),
        /// The child ghost's pid on the master, or 0.
        ghost: i32 => Int("ghost"),
    },
    /// Ghost → master: it forked the child ghost of [`Message::GhostFork`] `fork`, which
    /// got pid `pid` (told at once, before the child connects).
    58 GhostForked {
        /// Fork id.
        fork: u64 => Int("fork"),
        /// The child ghost's pid.
        pid: i32 => Int("pid"),
    },

    // 60–79: client requests, continued.
    /// Client → master: the entries of `nodes` that are configured, in table order (replied
    /// with [`Message::Nodes`]): what a launch to a few numbered nodes needs, where the whole
    /// table of a large cluster took longer than the launch.
    60 NodeListOf {
        /// Node numbers.
        nodes: Vec<i32> => List("node list", MAX_NODES, 4, Int("node")),
    },

    // 100–119: replies.
    /// Reply: success.
    100 Ok,
    /// Reply: failure, with an errno-style code (see [`crate::errno`]) and a message.
    101 Error {
        /// errno value or a `BE_*` code.
        code: i32 => Int("code"),
        /// What went wrong, naming the node or path.
        message: String => Text("message", MAX_TEXT),
    },
    /// Reply to [`Message::NodeList`] and [`Message::NodeListOf`].
    102 Nodes {
        /// Every configured node (or every one asked for) in table order.
        nodes: Vec<NodeStatus> => NODES,
    },
    /// Reply to [`Message::MasterInfo`].
    103 MasterInfoReply {
        /// Software version.
        version: String => Text("version", MAX_TEXT),
        /// Addresses slaves connect to.
        addrs: Vec<Endpoint> => List("address list", MAX_NODES, 3, Nested),
        /// Bytes the master has sent to slaves since it started (launches, pings, commands).
        bytes_to_slaves: u64 => Int("bytes to slaves"),
        /// The node the asking client runs on ([`NODE_MASTER`](crate::NODE_MASTER) on the
        /// front end).
        client_node: i32 => Int("client node"),
        /// Where nodes reach the asking client: its node's address for a client on a node,
        /// `None` on the front end (use `addrs`).
        client_ip: Option<Ipv4Addr> => IP,
        /// The ghost program launchers start for remote processes (empty: none installed).
        ghost: String => Text("ghost path", MAX_PATH),
        /// Ghosts the master has taken in since it started (each launch's, move's and fork's
        /// ghost, counted at its hello). Absent from an older master's reply: 0.
        ghosts_made: u64 => Trailing("ghosts made"),
    },
    /// Reply to [`Message::Launch`]: per rank, the process's pid on its node (> 0) or a
    /// negated error code (≤ 0), as `bproc_vexecmove` returns.
    104 Launched {
        /// One entry per rank.
        pids: Vec<i32> => List("pid list", MAX_NODES, 4, Int("pid")),
    },
    // 105 was Spawned, the reply to Spawn.
    /// Reply to [`Message::Copy`]: the client's links (receivers to stream to when it sends;
    /// the tokens of the senders that will connect when it receives) and how many
    /// [`Message::CopyResult`] events will follow.
    106 CopyPlan {
        /// The links.
        links: Vec<CopyLink> => LINKS,
        /// Number of results to wait for.
        reports: u32 => Int("reports"),
    },
    /// Reply to [`Message::ProcList`].
    107 Procs {
        /// Every remote process.
        procs: Vec<ProcEntry> => List("process list", MAX_PROCS, 16, Nested),
    },
    /// Reply to [`Message::ProcStatQuery`] and [`Message::ProcStatList`].
    108 ProcStats {
        /// One entry per process found; `rpid` is the node pid from a slave and the ghost pid
        /// from the master.
        stats: Vec<ProcStat> => List("process stats", MAX_PROCS, 21, Nested),
    },
    /// Reply to [`Message::GetNodeAttr`].
    109 NodeAttr {
        /// The value.
        value: Vec<u8> => Bytes("attribute value", MAX_ATTR_VALUE),
    },
    /// Reply to [`Message::LibList`]: paths in sorted order.
    110 Libraries {
        /// The paths.
        names: Vec<String> => strs("library paths"),
    },

    // 120–: events.
    /// Event to watchers: the node table after a change.
    120 NodesChanged {
        /// Every configured node in table order.
        nodes: Vec<NodeStatus> => NODES,
    },
    /// Master → launcher and master → ghost: a launched process ended (slaves report it as
    /// [`Message::ProcEvent`]).
    121 ProcExit {
        /// Launch id (0 towards the launcher and the ghost).
        launch: u64 => Int("launch"),
        /// Rank.
        rank: u32 => Int("rank"),
        /// How it ended.
        status: ExitStatus => Nested,
    },
    /// A node's part of a copy ended (slave → master reply, master → client event).
    122 CopyResult {
        /// The node (filled in by the master).
        node: i32 => Int("node"),
        /// Errors of the source, carried in the stream (`rcp: /x: No such file or directory`).
        source_errors: Vec<String> => strs("source errors"),
        /// This node's own errors.
        errors: Vec<String> => strs("errors"),
        /// Files written.
        files: u64 => Int("files"),
        /// Bytes of file data written.
        bytes: u64 => Int("bytes"),
    },
    /// Slave → master: how starting a rank of a launch tree went.
    123 RankSpawned {
        /// Launch id.
        launch: u64 => Int("launch"),
        /// Rank.
        rank: u32 => Int("rank"),
        /// The pid on its node (> 0) or a negated error code.
        pid: i32 => Int("pid"),
    },
    /// Master → ghost: the remote process stopped (`true`) or continued.
    124 GhostState {
        /// Stopped or running.
        stopped: bool => Flag("stopped flag"),
    },
    /// Master → ghost: the remote process forked; fork a child ghost named `comm` that opens
    /// its own connection with [`Message::GhostHello`] `{ fork }`.
    125 GhostFork {
        /// Fork id.
        fork: u64 => Int("fork"),
        /// The child's command name.
        comm: String => Text("comm", MAX_TEXT),
    },
    /// Master → ghost: the remote process ran a new program.
    126 GhostExec {
        /// The new command name.
        comm: String => Text("comm", MAX_TEXT),
    },
    /// Slave → master: what happened to process `pid` of this node.
    127 ProcEvent {
        /// The process's pid on the node as the slave names it.
        pid: i32 => Int("pid"),
        /// What happened.
        change: ProcChange => Nested,
    },
    /// Master → ghost: the remote process moves back to the front end. The ghost becomes it,
    /// restoring the image fetched from `image` with `token`, and answers
    /// [`Message::GhostRestored`] before the restored process runs.
    128 GhostRestore {
        /// Where the image is served.
        image: Endpoint => Nested,
        /// Secret to present there.
        token: [u8; 16] => Fixed("token"),
    },
    /// Why a rank could not start (`/tmp/prog: No such file or directory`): slave → master
    /// just before its [`Message::RankSpawned`] with the negated error, and master → launcher
    /// as an event (request id 0, `launch` 0) before [`Message::Launched`], so the launcher can
    /// say more than the error code.
    129 RankRefused {
        /// Launch id (0 to the launcher).
        launch: u64 => Int("launch"),
        /// Rank.
        rank: u32 => Int("rank"),
        /// The reason, naming what failed.
        reason: String => Text("reason", MAX_TEXT),
    },
    /// Master → ghost: the ghost's remote process (a client on a node) launched rank `rank`
    /// of launch `launch` on the front end ([`NODE_MASTER`](crate::NODE_MASTER)); the ghost,
    /// the user's own process there, starts it as its child (the master daemon runs no user
    /// code), with its forwarded fds connected back to the launcher. It answers
    /// [`Message::RankSpawned`] (the pid, or a negated errno) and, when the child ends,
    /// [`Message::ProcExit`] with the launch and rank.
    130 GhostSpawn {
        /// Launch id.
        launch: u64 => Int("launch"),
        /// Rank.
        rank: u32 => Int("rank"),
        /// The process, with the caller's limits and umask as the master set them.
        spec: ProcSpec => Nested,
    },
    /// Master → ghost: its process, on a node, rforks (`bproc_rfork`, `bproc_vrfork`); fork a
    /// child ghost named `comm` for one of the children, which relays that child's output
    /// (connections presenting `token`) to this ghost's stdout and stderr, opens its own
    /// connection with [`Message::GhostHello`] `{ fork }` and then says its relay's port
    /// ([`Message::GhostRelayPort`]).
    131 GhostRfork {
        /// Fork id.
        fork: u64 => Int("fork"),
        /// The child's command name.
        comm: String => Text("comm", MAX_TEXT),
        /// The token the child's output connections present.
        token: [u8; 16] => Fixed("token"),
    },
}

impl From<crate::CopyRequest> for Message {
    fn from(r: crate::CopyRequest) -> Message {
        let crate::CopyRequest { src, paths, dst, target, opts, cwd, fanout, port } = r;
        Message::Copy { src, paths, dst, target, opts, cwd, fanout, port }
    }
}
