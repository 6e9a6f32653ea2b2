//! One representative value of every message (more for messages whose body has several
//! shapes), shared by the golden-byte fixtures (`tests/golden.rs`) and the fuzzer's seed corpus
//! (`fuzz/examples/gen_seeds.rs`), so both cover the same wire. Built only with the `samples`
//! feature.

use std::net::Ipv4Addr;

use crate::{
    CopyLink, CopyOpts, CopyTask, Creds, Endpoint, ExitStatus, FdIo, IoSpec, LibOp, Message,
    NodeAction, NodeInfo, NodeStatus, ProcChange, ProcEntry, ProcSpec, ProcStat, SlaveProc,
    StagedRef, TreeEntry, GHOST_FORKED, NODE_CLIENT,
};

fn spec() -> ProcSpec {
    ProcSpec {
        path: "/bin/echo".into(),
        argv: vec!["echo".into(), "hi".into()],
        env: vec!["BPROC_RANK=XXXXXXX".into(), "HOME=/root".into()],
        cwd: "/tmp".into(),
        umask: 0o022,
        io: vec![IoSpec::Forward, IoSpec::Null, IoSpec::File("/tmp/o".into())],
        fds: vec![
            FdIo {
                fd: 5,
                io: IoSpec::Open { path: "/tmp/f".into(), flags: 0o1101, mode: 0o644, offset: -3 },
                optional: false,
            },
            FdIo {
                fd: 6,
                io: IoSpec::Connect {
                    ip: Some(Ipv4Addr::new(10, 0, 0, 7)),
                    port: 4000,
                    send_info: true,
                },
                optional: true,
            },
            FdIo {
                fd: 7,
                io: IoSpec::Connect { ip: None, port: 4001, send_info: false },
                optional: false,
            },
            FdIo { fd: 0, io: IoSpec::Closed, optional: false },
            FdIo {
                fd: 2,
                io: IoSpec::Rejoin { ip: None, port: 40002, token: [0x3c; 16], rank: 3 },
                optional: true,
            },
        ],
        io_port: 40000,
        io_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
        token: [9; 16],
        rlimits: vec![(7, 1024, 4096), (3, 8 << 20, u64::MAX)],
        files: vec![
            StagedRef { path: "/bin/echo".into(), mode: 0o755, size: 4, hash: [1; 32] },
            StagedRef { path: "/lib/libc.so.6".into(), mode: 0o644, size: 2 << 20, hash: [2; 32] },
        ],
        image: None,
        image_files: None,
        image_len: None,
    }
}

fn spec_with_image() -> ProcSpec {
    ProcSpec {
        io: vec![
            IoSpec::Null,
            IoSpec::Rejoin {
                ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                port: 40000,
                token: [9; 16],
                rank: 3,
            },
        ],
        fds: Vec::new(),
        io_ip: None,
        image: Some(Endpoint { ip: Some(Ipv4Addr::new(10, 0, 0, 1)), port: 40020 }),
        image_files: Some(vec![crate::conn::FileId {
            path: "/lib/libc.so.6".into(),
            size: 2 << 20,
            mtime: (1_700_000_000, 7),
        }]),
        image_len: Some(64 << 20),
        ..spec()
    }
}

fn info() -> NodeInfo {
    NodeInfo {
        cpus: 4,
        mem_total: 8 << 30,
        mem_free: 3 << 30,
        load: [12, 34, 56],
        uptime: 3600,
        kernel: "6.1.0".into(),
        hostname: "n0".into(),
        arch: "x86_64".into(),
        diskless: true,
        staged_bytes: 123_456,
    }
}

fn nodes() -> Vec<NodeStatus> {
    vec![
        NodeStatus {
            node: 0,
            state: "up".into(),
            mode: 0o111,
            uid: 0,
            gid: 0,
            addr: Some(Ipv4Addr::new(10, 0, 0, 2)),
            info: Some(info()),
        },
        NodeStatus {
            node: 1,
            state: "down".into(),
            mode: 0o100,
            uid: 1000,
            gid: 100,
            addr: None,
            info: None,
        },
    ]
}

fn ep(ip: Option<[u8; 4]>, port: u16) -> Endpoint {
    Endpoint { ip: ip.map(Ipv4Addr::from), port }
}

fn creds() -> Creds {
    Creds { uid: 1000, gid: 100, groups: vec![100, 27] }
}

fn opts() -> CopyOpts {
    CopyOpts { recursive: true, preserve: false, target_dir: true, umask: 0o022 }
}

fn links() -> Vec<CopyLink> {
    vec![
        CopyLink { node: 4, ip: Some(Ipv4Addr::new(10, 0, 0, 6)), port: 40200, token: [6; 16] },
        CopyLink { node: NODE_CLIENT, ip: None, port: 40201, token: [7; 16] },
    ]
}

fn change(pid: i32, change: ProcChange) -> Message {
    Message::ProcEvent { pid, change }
}

/// Every sample: a name suffix (empty, or which shape of the body) and the message. One
/// table, an entry per message, so its length grows with the protocol.
pub fn all() -> Vec<(&'static str, Message)> {
    use Message::*;
    vec![
        ("", AuthChallenge { nonce: [0xa5; 32] }),
        ("", AuthResponse { nonce: [1; 32], mac: [2; 32] }),
        ("", AuthConfirm { mac: [3; 32] }),
        (
            "",
            Join {
                version: "0.1.0".into(),
                cookie: 0x1122_3344_5566_7788,
                info: info(),
                data_port: 40100,
                tree_port: 40101,
            },
        ),
        ("", Conf { node: 3, cookie: 42, ping_timeout: 30, time_ms: 1_700_000_000_000, grace: 60 }),
        ("", Ping { seq: 7, time_ms: 1_700_000_000_123 }),
        ("", Pong { seq: 7, info: info() }),
        ("", Disconnect { reason: "node set down".into(), reconnect: true }),
        (
            "",
            ProxyClient {
                node: 3,
                creds: creds(),
                pid: 4321,
                rlimits: vec![(0, 10, 10), (7, 512, 1024)],
                umask: 0o027,
            },
        ),
        ("", NodeList),
        ("", NodeListOf { nodes: vec![0, 3, 7] }),
        ("", SetState { node: 2, state: "boot".into() }),
        ("", Chmod { node: 2, mode: 0o111 }),
        ("", Chown { node: 2, uid: 1000 }),
        ("", Chgrp { node: -1, gid: 100 }),
        ("", NodeCommand { node: 2, action: NodeAction::Poweroff }),
        ("", NodeChroot { node: 2, path: "/new/root".into() }),
        ("", NodeReconnect { node: 2, master: ep(None, 2223), local: ep(Some([10, 0, 0, 9]), 0) }),
        ("", Watch),
        ("", MasterInfo),
        (
            "",
            Launch {
                nodes: vec![0, 1],
                spec: spec(),
                ghosts: vec![4321, GHOST_FORKED],
                io_ports: vec![0, 40010],
            },
        ),
        ("", SignalLaunch { signal: 10 }),
        (
            "",
            Copy {
                src: vec![NODE_CLIENT, 3],
                paths: vec!["a".into(), "b/c".into()],
                dst: vec![0, 1],
                target: "/tmp".into(),
                opts: opts(),
                cwd: "/home/u".into(),
                fanout: 2,
                port: 40210,
            },
        ),
        ("", GhostHello { fork: 7 }),
        ("", GhostSignal { signal: 15, sender: 999 }),
        ("", ProcList),
        ("", ProcStatList { pids: vec![4321, 4322] }),
        ("", GetNodeAttr { node: 1, name: "rack".into() }),
        ("", SetNodeAttr { node: 1, name: "rack".into(), value: b"r7\0x".to_vec() }),
        ("", GhostRestored { code: 13 }),
        ("", Action { action: NodeAction::Halt }),
        ("", SlaveChroot { path: "/tmp/root".into() }),
        ("", SlaveReconnect { master: ep(Some([10, 0, 0, 1]), 2223), local: ep(None, 0) }),
        ("", SignalProc { launch: 3, rank: u32::MAX, signal: 9 }),
        ("", StageFiles { port: 40001, token: [5; 16], files: spec().files }),
        (
            "-Receive",
            CopyOrder {
                creds: creds(),
                cwd: "/".into(),
                opts: opts(),
                task: CopyTask::Receive {
                    token: [4; 16],
                    target: "/tmp".into(),
                    suffix: ".3".into(),
                    to: links(),
                },
            },
        ),
        (
            "-Send",
            CopyOrder {
                creds: Creds { uid: 0, gid: 0, groups: vec![] },
                cwd: "/root".into(),
                opts: CopyOpts { recursive: false, preserve: true, target_dir: false, umask: 0 },
                task: CopyTask::Send {
                    paths: vec!["/etc/hosts".into(), "rel".into()],
                    to: links(),
                },
            },
        ),
        (
            "",
            SpawnTree {
                launch: 3,
                nonce: 0x5eed_5eed_5eed_5eed,
                time_ms: 1_700_000_000_000,
                size: 3,
                creds: creds(),
                spec: spec_with_image(),
                width: 32,
                entries: vec![
                    TreeEntry {
                        node: 0,
                        ip: Ipv4Addr::new(10, 0, 0, 2),
                        port: 40300,
                        ranks: vec![0],
                        pids: vec![4321],
                        ports: vec![40010],
                    },
                    TreeEntry {
                        node: 1,
                        ip: Ipv4Addr::new(10, 0, 0, 3),
                        port: 40301,
                        ranks: vec![1, 2],
                        pids: vec![4322, 0],
                        ports: Vec::new(),
                    },
                ],
            },
        ),
        ("", SignalPid { pid: 17, signal: 10, sender: 999 }),
        ("", ProcStatQuery { pids: vec![17, 18] }),
        ("", LibList { only: vec!["/lib/libc.so.6".into(), "/lib/libm.so.6".into()] }),
        (
            "",
            LibEdit { op: LibOp::Add, names: vec!["/usr/lib/a.so".into(), "/usr/lib/b.so".into()] },
        ),
        ("-Clear", LibEdit { op: LibOp::Clear, names: vec![] }),
        (
            "",
            SessionProcs {
                procs: vec![
                    SlaveProc { pid: 4242, ghost: 1234, launch: 9, rank: 2, uid: 1000 },
                    SlaveProc { pid: 4243, ghost: 0, launch: 0, rank: 0, uid: 0 },
                ],
            },
        ),
        ("", GhostOf { pid: 4243, ghost: 1235 }),
        ("", GhostRelayPort { port: 40030 }),
        ("", ProcWait { pid: 4321 }),
        ("", ForkAhead { seq: 12, pid: 4243, comm: "sh".into() }),
        ("", ForkAheadReply { seq: 12, ghost: 1236 }),
        ("", GhostForked { fork: 5, pid: 1236 }),
        ("", Ok),
        ("", Error { code: 2, message: "node 9: no such node".into() }),
        ("", Nodes { nodes: nodes() }),
        (
            "",
            MasterInfoReply {
                version: "0.1.0".into(),
                addrs: vec![ep(Some([127, 0, 0, 1]), 2223), ep(None, 2224)],
                bytes_to_slaves: 1 << 20,
                client_node: 3,
                client_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                ghost: "/usr/local/bin/bpghost".into(),
                ghosts_made: 7,
            },
        ),
        (
            "-NoClientIp",
            MasterInfoReply {
                version: "0.1.0".into(),
                addrs: vec![],
                bytes_to_slaves: 0,
                client_node: -1,
                client_ip: None,
                ghost: String::new(),
                ghosts_made: 0,
            },
        ),
        ("", Launched { pids: vec![100, -301] }),
        ("", CopyPlan { links: links(), reports: 3 }),
        (
            "",
            Procs {
                procs: vec![
                    ProcEntry { pid: 4321, node: 1, rpid: 17, uid: 1000 },
                    ProcEntry { pid: 4322, node: 2, rpid: 18, uid: 0 },
                ],
            },
        ),
        (
            "",
            ProcStats {
                stats: vec![
                    ProcStat { rpid: 17, state: b'S', cpu_ms: 1500, rss_kib: 2048 },
                    ProcStat { rpid: 18, state: b'R', cpu_ms: 1, rss_kib: 0 },
                ],
            },
        ),
        ("", NodeAttr { value: b"r7".to_vec() }),
        ("", Libraries { names: vec!["/lib/libc.so.6".into(), "/lib/libm.so.6".into()] }),
        ("", NodesChanged { nodes: nodes() }),
        ("", ProcExit { launch: 3, rank: 1, status: ExitStatus::Code(3) }),
        ("-Signal", ProcExit { launch: 0, rank: 2, status: ExitStatus::Signal(9) }),
        ("-NodeLost", ProcExit { launch: 0, rank: 0, status: ExitStatus::NodeLost }),
        (
            "",
            CopyResult {
                node: 2,
                source_errors: vec!["rcp: /x: No such file or directory".into(), "y".into()],
                errors: vec!["z".into(), String::new()],
                files: 1,
                bytes: 4096,
            },
        ),
        ("", RankSpawned { launch: 3, rank: 1, pid: -2 }),
        ("", GhostState { stopped: true }),
        ("", GhostFork { fork: 7, comm: "sleep".into() }),
        ("", GhostExec { comm: "sleep".into() }),
        ("", change(17, ProcChange::Exited(ExitStatus::Signal(9)))),
        ("-Stopped", change(17, ProcChange::Stopped)),
        ("-Continued", change(17, ProcChange::Continued)),
        ("-Forked", change(17, ProcChange::Forked { child: 18, child_ns: 3, comm: "sh".into() })),
        ("-Exec", change(18, ProcChange::Exec { comm: "sleep".into() })),
        ("", GhostRestore { image: ep(Some([10, 0, 0, 3]), 40020), token: [7; 16] }),
        (
            "",
            RankRefused {
                launch: 3,
                rank: 1,
                reason: "/tmp/prog: No such file or directory".into(),
            },
        ),
        ("", GhostSpawn { launch: 12, rank: 1, spec: spec_with_image() }),
        ("", GhostRfork { fork: 8, comm: "worker".into(), token: [6; 16] }),
    ]
}
