//! Writes the seed corpus: one small, valid frame per message type (plus an unknown type), as
//! produced by `bproc_proto::encode`. The committed files in `fuzz/seeds/` come from this;
//! re-run it after a protocol change:
//!
//! ```text
//! cd fuzz && cargo +stable run --example gen_seeds -- seeds
//! ```
//!
//! Files named `regress-*` in `fuzz/seeds/` are not made here: they are inputs that once made a
//! fuzz target fail, kept so that every run replays them first. This program leaves them alone.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use bproc_proto::{
    encode, CopyLink, CopyOpts, CopyTask, Creds, Endpoint, ExitStatus, IoSpec, Message, NodeAction,
    NodeInfo, NodeStatus, ProcChange, ProcEntry, ProcSpec, ProcStat, TreeEntry, NODE_CLIENT,
};

fn spec() -> ProcSpec {
    ProcSpec {
        path: "/bin/echo".into(),
        argv: vec!["echo".into(), "hi".into()],
        env: vec!["BPROC_RANK=XXXXXXX".into()],
        cwd: "/tmp".into(),
        umask: 0o022,
        io: vec![IoSpec::Forward, IoSpec::Null, IoSpec::File("/tmp/o".into())],
        fds: vec![
            bproc_proto::FdIo {
                fd: 5,
                io: IoSpec::Open { path: "/tmp/f".into(), flags: 0o1101, mode: 0o644, offset: 3 },
                optional: false,
            },
            bproc_proto::FdIo {
                fd: 1,
                io: IoSpec::Connect { ip: None, port: 4000, send_info: true },
                optional: true,
            },
            bproc_proto::FdIo { fd: 0, io: IoSpec::Closed, optional: false },
        ],
        io_port: 40000,
        io_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
        token: [9; 16],
        rlimits: vec![(7, 1024, 4096)],
        files: vec![bproc_proto::StagedRef {
            path: "/bin/echo".into(),
            mode: 0o755,
            size: 4,
            hash: [1; 32],
        }],
        image: None,
    }
}

fn copy_opts() -> CopyOpts {
    CopyOpts { recursive: true, preserve: true, target_dir: false, umask: 0o022 }
}

fn link() -> CopyLink {
    CopyLink { node: 4, ip: Some(Ipv4Addr::new(10, 0, 0, 6)), port: 40200, token: [6; 16] }
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
        diskless: false,
        staged_bytes: 0,
    }
}

fn ep(ip: Option<[u8; 4]>, port: u16) -> Endpoint {
    Endpoint { ip: ip.map(Ipv4Addr::from), port }
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

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    std::fs::create_dir_all(&dir)?;
    let msgs: Vec<(u32, Message)> = vec![
        (0, Message::AuthChallenge { nonce: [0xa5; 32] }),
        (0, Message::AuthResponse { nonce: [1; 32], mac: [2; 32] }),
        (0, Message::AuthConfirm { mac: [3; 32] }),
        (
            1,
            Message::Join {
                version: "0.1.0".into(),
                cookie: 0x1122_3344_5566_7788,
                info: info(),
                data_port: 40100,
                tree_port: 40101,
            },
        ),
        (
            0,
            Message::ProxyClient {
                node: 3,
                creds: Creds { uid: 1000, gid: 100, groups: vec![27] },
                pid: 4321,
                rlimits: vec![(0, 10, 10), (7, 512, 1024)],
                umask: 0o022,
            },
        ),
        (
            1,
            Message::Conf {
                node: 3,
                cookie: 42,
                ping_timeout: 30,
                time_ms: 1_700_000_000_000,
                grace: 60,
            },
        ),
        (
            0,
            Message::SessionProcs {
                procs: vec![bproc_proto::SlaveProc {
                    pid: 4242,
                    ghost: 1234,
                    launch: 9,
                    rank: 2,
                    uid: 1000,
                }],
            },
        ),
        (0, Message::GhostOf { pid: 4243, ghost: 1235 }),
        (0, Message::ForkAhead { seq: 12, pid: 4243, comm: "sh".into() }),
        (0, Message::ForkAheadReply { seq: 12, ghost: 1236 }),
        (0, Message::GhostForked { fork: 5, pid: 1236 }),
        (0, Message::Ping { seq: 7, time_ms: 1_700_000_000_123 }),
        (0, Message::Pong { seq: 7, info: info() }),
        (0, Message::Disconnect { reason: "node set down".into(), reconnect: true }),
        (0, Message::Action { action: NodeAction::Reboot }),
        (2, Message::SlaveChroot { path: "/tmp/root".into() }),
        (3, Message::SlaveReconnect { master: ep(Some([10, 0, 0, 1]), 2223), local: ep(None, 0) }),
        (4, Message::NodeList),
        (5, Message::SetState { node: 2, state: "boot".into() }),
        (6, Message::Chmod { node: 2, mode: 0o111 }),
        (7, Message::Chown { node: 2, uid: 1000 }),
        (8, Message::Chgrp { node: -1, gid: 100 }),
        (9, Message::NodeCommand { node: 2, action: NodeAction::Poweroff }),
        (10, Message::NodeChroot { node: 2, path: "/".into() }),
        (
            11,
            Message::NodeReconnect {
                node: 2,
                master: ep(None, 2223),
                local: ep(Some([10, 0, 0, 9]), 0),
            },
        ),
        (12, Message::GetNodeAttr { node: 1, name: "rack".into() }),
        (12, Message::SetNodeAttr { node: 1, name: "rack".into(), value: b"r7".to_vec() }),
        (12, Message::NodeAttr { value: b"r7".to_vec() }),
        (12, Message::Watch),
        (13, Message::Ok),
        (14, Message::Error { code: 2, message: "node 9: no such node".into() }),
        (15, Message::Nodes { nodes: nodes() }),
        (0, Message::NodesChanged { nodes: nodes() }),
        (17, Message::MasterInfo),
        (
            18,
            Message::Launch {
                nodes: vec![0, 1, 1],
                spec: spec(),
                ghosts: vec![4321, 4322, 0],
                io_ports: vec![0, 40010, 0],
            },
        ),
        (
            19,
            Message::Launch {
                nodes: vec![2],
                spec: ProcSpec { image: Some(Endpoint { ip: None, port: 40020 }), ..spec() },
                ghosts: vec![-1],
                io_ports: vec![40010],
            },
        ),
        (0, Message::GhostHello { fork: 7 }),
        (0, Message::GhostSignal { signal: 15, sender: 999 }),
        (25, Message::ProcList),
        (26, Message::ProcStatList { pids: vec![4321] }),
        (0, Message::SignalPid { pid: 17, signal: 10, sender: 999 }),
        (27, Message::ProcStatQuery { pids: vec![17, 18] }),
        (25, Message::Procs { procs: vec![ProcEntry { pid: 4321, node: 1, rpid: 17, uid: 1000 }] }),
        (
            27,
            Message::ProcStats {
                stats: vec![ProcStat { rpid: 17, state: b'S', cpu_ms: 1500, rss_kib: 2048 }],
            },
        ),
        (0, Message::GhostState { stopped: true }),
        (0, Message::GhostFork { fork: 7, comm: "sleep".into() }),
        (0, Message::GhostExec { comm: "sleep".into() }),
        (0, Message::GhostRfork { fork: 8, comm: "worker".into(), token: [6; 16] }),
        (0, Message::GhostRelayPort { port: 40030 }),
        (29, Message::ProcWait { pid: 4321 }),
        (
            0,
            Message::GhostRestore {
                image: Endpoint { ip: Some(Ipv4Addr::new(10, 0, 0, 3)), port: 40020 },
                token: [7; 16],
            },
        ),
        (0, Message::GhostRestored { code: 0 }),
        (
            0,
            Message::GhostSpawn {
                launch: 12,
                rank: 1,
                spec: ProcSpec {
                    io: vec![
                        IoSpec::Null,
                        IoSpec::Rejoin {
                            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                            port: 40000,
                            token: [9; 16],
                            rank: 3,
                        },
                        IoSpec::Forward,
                    ],
                    ..spec()
                },
            },
        ),
        (28, Message::LibList { only: vec!["/lib/x86_64-linux-gnu/libc.so.6".into()] }),
        (28, Message::Libraries { names: vec!["/lib/x86_64-linux-gnu/libc.so.6".into()] }),
        (
            0,
            Message::LibEdit { op: bproc_proto::LibOp::Add, names: vec!["/usr/lib/libbproc.so".into()] },
        ),
        (0, Message::ProcEvent { pid: 17, change: ProcChange::Exited(ExitStatus::Signal(9)) }),
        (
            0,
            Message::ProcEvent {
                pid: 17,
                change: ProcChange::Forked { child: 18, child_ns: 3, comm: "sh".into() },
            },
        ),
        (0, Message::ProcEvent { pid: 18, change: ProcChange::Exec { comm: "sleep".into() } }),
        (0, Message::ProcEvent { pid: 18, change: ProcChange::Stopped }),
        (19, Message::SignalLaunch { signal: 10 }),
        (
            0,
            Message::SpawnTree {
                launch: 3,
                nonce: 0x5eed_5eed_5eed_5eed,
                time_ms: 1_700_000_000_000,
                size: 3,
                creds: Creds { uid: 1000, gid: 100, groups: vec![100, 27] },
                spec: spec(),
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
        (0, Message::RankSpawned { launch: 3, rank: 1, pid: 4321 }),
        (
            0,
            Message::RankRefused {
                launch: 3,
                rank: 1,
                reason: "/tmp/prog: No such file or directory".into(),
            },
        ),
        (0, Message::SignalProc { launch: 3, rank: u32::MAX, signal: 9 }),
        (21, Message::StageFiles { port: 40001, token: [5; 16], files: spec().files }),
        (
            17,
            Message::MasterInfoReply {
                version: "0.1.0".into(),
                addrs: vec![ep(Some([127, 0, 0, 1]), 2223)],
                bytes_to_slaves: 1 << 20,
                client_node: 3,
                client_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                ghost: "/usr/local/bin/bpghost".into(),
                ghosts_made: 7,
            },
        ),
        (
            22,
            Message::Copy {
                src: vec![NODE_CLIENT],
                paths: vec!["a".into(), "b".into()],
                dst: vec![0, 1, 2],
                target: "/tmp".into(),
                opts: copy_opts(),
                cwd: "/home/u".into(),
                fanout: 2,
                port: 0,
            },
        ),
        (
            23,
            Message::CopyOrder {
                creds: Creds { uid: 1000, gid: 100, groups: vec![] },
                cwd: "/".into(),
                opts: copy_opts(),
                task: CopyTask::Receive {
                    token: [4; 16],
                    target: "/tmp".into(),
                    suffix: ".3".into(),
                    to: vec![link()],
                },
            },
        ),
        (
            24,
            Message::CopyOrder {
                creds: Creds { uid: 0, gid: 0, groups: vec![] },
                cwd: "/".into(),
                opts: copy_opts(),
                task: CopyTask::Send { paths: vec!["/etc/hosts".into()], to: vec![link()] },
            },
        ),
        (22, Message::CopyPlan { links: vec![link()], reports: 3 }),
        (
            0,
            Message::CopyResult {
                node: 2,
                source_errors: vec!["rcp: /x: No such file or directory".into()],
                errors: vec![],
                files: 1,
                bytes: 4096,
            },
        ),
        (18, Message::Launched { pids: vec![100, -301, 0] }),
        (0, Message::ProcExit { launch: 3, rank: 1, status: ExitStatus::Signal(9) }),
    ];
    for (id, msg) in &msgs {
        let mut name = msg.name().to_owned();
        if let Message::CopyOrder { task: CopyTask::Send { .. }, .. } = msg {
            name += "Send";
        }
        let path = dir.join(name);
        std::fs::write(&path, encode(*id, msg))?;
    }
    // A bpcp copy stream (for the copy_stream target): a directory holding a file and a link.
    use bproc_copy::stream::{encode_entry, encode_trailer, Entry, Times, Trailer, MAGIC};
    let mut stream = MAGIC.to_vec();
    let times = Times { mtime: (1_700_000_000, 5), atime: (1_700_000_001, 0) };
    encode_entry(&Entry::Dir { name: b"d".to_vec(), mode: 0o755, times }, &mut stream);
    encode_entry(&Entry::File { name: b"f".to_vec(), mode: 0o644, times, size: 3 }, &mut stream);
    stream.extend_from_slice(b"abc");
    encode_trailer(&Trailer::Ok([7; 16]), &mut stream);
    encode_entry(&Entry::Symlink { name: b"l".to_vec(), target: b"f".to_vec() }, &mut stream);
    encode_entry(&Entry::Up, &mut stream);
    encode_entry(
        &Entry::Error { message: "rcp: /x: No such file or directory".into() },
        &mut stream,
    );
    encode_entry(&Entry::End, &mut stream);
    std::fs::write(dir.join("CopyStream"), stream)?;
    // A process image (for the image target): a header with one region and one chunk.
    let header = bproc_image::Header {
        comm: "app".into(),
        regions: vec![bproc_image::Region {
            start: 0x10000,
            end: 0x12000,
            prot: 3,
            stack: false,
            source: bproc_image::Source::Anonymous,
        }],
        ..Default::default()
    };
    let mut image = header.encode();
    let page = [5u8; 4096];
    image.extend_from_slice(&bproc_image::Chunk::for_data(0x11000, &page).encode());
    image.extend_from_slice(&page);
    image.extend_from_slice(&bproc_image::Chunk::End { chunks: 1 }.encode());
    std::fs::write(dir.join("ProcessImage"), image)?;
    // A type this version does not know, with a body that is skipped.
    let mut unknown = encode(16, &Message::NodeList);
    unknown[6..8].copy_from_slice(&0xfffeu16.to_be_bytes());
    unknown[12..16].copy_from_slice(&3u32.to_be_bytes());
    unknown.extend_from_slice(&[1, 2, 3]);
    std::fs::write(dir.join("Unknown"), unknown)?;
    println!("wrote {} seeds to {}", msgs.len() + 1, dir.display());
    Ok(())
}
