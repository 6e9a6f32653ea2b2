//! Property tests of the decoder: arbitrary bytes never panic, and every message round-trips.

use bproc_proto::{
    check, decode, encode, CopyLink, CopyOpts, CopyTask, Creds, Endpoint, ExitStatus, FdIo, IoSpec,
    LibOp, Message, NodeAction, NodeInfo, NodeStatus, ProcChange, ProcEntry, ProcSpec, ProcStat,
    SlaveProc, StagedRef, TreeEntry, MAX_FD, MAX_FD_IO,
};
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn info() -> impl Strategy<Value = NodeInfo> {
    (
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<[u32; 3]>(), any::<u64>()),
        (".{0,20}", ".{0,20}", "[a-z0-9_]{0,8}", any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                (cpus, mem_total, mem_free, load, uptime),
                (kernel, hostname, arch, diskless, staged_bytes),
            )| {
                NodeInfo {
                    cpus,
                    mem_total,
                    mem_free,
                    load,
                    uptime,
                    kernel,
                    hostname,
                    arch,
                    diskless,
                    staged_bytes,
                }
            },
        )
}

fn status() -> impl Strategy<Value = NodeStatus> {
    (
        any::<i32>(),
        "[A-Za-z0-9]{1,15}",
        0u32..0o1000,
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(info()),
    )
        .prop_map(|(node, state, mode, uid, gid, addr, info)| NodeStatus {
            node,
            state,
            mode,
            uid,
            gid,
            addr: addr.map(Ipv4Addr::from),
            info,
        })
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (proptest::option::of(any::<u32>()), any::<u16>())
        .prop_map(|(ip, port)| Endpoint { ip: ip.map(Ipv4Addr::from), port })
}

fn action() -> impl Strategy<Value = NodeAction> {
    prop_oneof![Just(NodeAction::Reboot), Just(NodeAction::Halt), Just(NodeAction::Poweroff)]
}

fn io() -> impl Strategy<Value = IoSpec> {
    prop_oneof![
        Just(IoSpec::Forward),
        Just(IoSpec::Null),
        Just(IoSpec::Closed),
        ".{0,20}".prop_map(IoSpec::File),
        (".{0,20}", any::<i32>(), any::<u32>(), any::<i64>())
            .prop_map(|(path, flags, mode, offset)| IoSpec::Open { path, flags, mode, offset }),
        (proptest::option::of(any::<[u8; 4]>()), any::<u16>(), any::<bool>()).prop_map(
            |(ip, port, send_info)| IoSpec::Connect { ip: ip.map(Ipv4Addr::from), port, send_info }
        ),
        (proptest::option::of(any::<[u8; 4]>()), any::<u16>(), any::<[u8; 16]>(), any::<u32>())
            .prop_map(|(ip, port, token, rank)| IoSpec::Rejoin {
                ip: ip.map(Ipv4Addr::from),
                port,
                token,
                rank
            }),
    ]
}

fn fd_io() -> impl Strategy<Value = FdIo> {
    (0..=MAX_FD, io(), any::<bool>()).prop_map(|(fd, io, optional)| FdIo { fd, io, optional })
}

fn spec() -> impl Strategy<Value = ProcSpec> {
    let image = proptest::option::of((proptest::option::of(any::<[u8; 4]>()), any::<u16>()))
        .prop_map(|e| e.map(|(ip, port)| Endpoint { ip: ip.map(Ipv4Addr::from), port }));
    (spec_without_image(), image).prop_map(|(s, image)| ProcSpec { image, ..s })
}

fn spec_without_image() -> impl Strategy<Value = ProcSpec> {
    (
        ".{0,30}",
        proptest::collection::vec(".{0,10}", 0..5),
        proptest::collection::vec(".{0,10}", 0..5),
        ".{0,20}",
        any::<u32>(),
        proptest::collection::vec(io(), 0..=3),
        any::<u16>(),
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<(u32, u64, u64)>(), 0..4),
        proptest::collection::vec((".{0,20}", any::<u32>(), any::<u64>(), any::<[u8; 32]>()), 0..3),
        proptest::option::of(any::<[u8; 4]>()),
        proptest::collection::vec(fd_io(), 0..=MAX_FD_IO),
    )
        .prop_map(
            |(path, argv, env, cwd, umask, io, io_port, token, rlimits, files, io_ip, fds)| {
                ProcSpec {
                    io_ip: io_ip.map(Ipv4Addr::from),
                    fds,
                    path,
                    argv,
                    env,
                    cwd,
                    umask,
                    io,
                    io_port,
                    token,
                    rlimits,
                    files: files
                        .into_iter()
                        .map(|(path, mode, size, hash)| StagedRef { path, mode, size, hash })
                        .collect(),
                    image: None,
                    image_files: None,
                    image_len: None,
                }
            },
        )
}

fn status_of_exit() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal),
        Just(ExitStatus::NodeLost),
    ]
}

fn proc_change() -> impl Strategy<Value = ProcChange> {
    prop_oneof![
        status_of_exit().prop_map(ProcChange::Exited),
        Just(ProcChange::Stopped),
        Just(ProcChange::Continued),
        (any::<i32>(), any::<i32>(), ".{0,16}")
            .prop_map(|(child, child_ns, comm)| ProcChange::Forked { child, child_ns, comm }),
        ".{0,16}".prop_map(|comm| ProcChange::Exec { comm }),
    ]
}

fn ghost_messages() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|fork| Message::GhostHello { fork }),
        (any::<i32>(), any::<i32>())
            .prop_map(|(signal, sender)| Message::GhostSignal { signal, sender }),
        Just(Message::ProcList),
        proptest::collection::vec(any::<i32>(), 0..10)
            .prop_map(|pids| Message::ProcStatList { pids }),
        proptest::collection::vec(any::<i32>(), 0..10)
            .prop_map(|pids| Message::ProcStatQuery { pids }),
        (any::<i32>(), any::<i32>(), any::<i32>())
            .prop_map(|(pid, signal, sender)| Message::SignalPid { pid, signal, sender }),
        proptest::collection::vec((any::<i32>(), any::<i32>(), any::<i32>(), any::<u32>()), 0..6)
            .prop_map(|v| Message::Procs {
                procs: v
                    .into_iter()
                    .map(|(pid, node, rpid, uid)| ProcEntry { pid, node, rpid, uid })
                    .collect()
            }),
        proptest::collection::vec((any::<i32>(), any::<u8>(), any::<u64>(), any::<u64>()), 0..6)
            .prop_map(|v| Message::ProcStats {
                stats: v
                    .into_iter()
                    .map(|(rpid, state, cpu_ms, rss_kib)| ProcStat { rpid, state, cpu_ms, rss_kib })
                    .collect()
            }),
        any::<bool>().prop_map(|stopped| Message::GhostState { stopped }),
        (any::<u64>(), ".{0,16}").prop_map(|(fork, comm)| Message::GhostFork { fork, comm }),
        ".{0,16}".prop_map(|comm| Message::GhostExec { comm }),
        (any::<u64>(), ".{0,16}", any::<[u8; 16]>())
            .prop_map(|(fork, comm, token)| Message::GhostRfork { fork, comm, token }),
        any::<u16>().prop_map(|port| Message::GhostRelayPort { port }),
        any::<i32>().prop_map(|pid| Message::ProcWait { pid }),
        (any::<u16>(), any::<[u8; 16]>()).prop_map(|(port, token)| Message::GhostRestore {
            image: Endpoint { ip: None, port },
            token
        }),
        any::<i32>().prop_map(|code| Message::GhostRestored { code }),
        (any::<u64>(), any::<u32>(), spec()).prop_map(|(launch, rank, spec)| Message::GhostSpawn {
            launch,
            rank,
            spec
        }),
        prop::collection::vec(".{0,40}", 0..4).prop_map(|only| Message::LibList { only }),
        prop::collection::vec(".{0,40}", 0..4).prop_map(|names| Message::Libraries { names }),
        (
            prop_oneof![Just(LibOp::Clear), Just(LibOp::Add), Just(LibOp::Delete)],
            prop::collection::vec(".{0,40}", 0..4)
        )
            .prop_map(|(op, names)| Message::LibEdit { op, names }),
        (any::<i32>(), proc_change()).prop_map(|(pid, change)| Message::ProcEvent { pid, change }),
        prop::collection::vec(
            (any::<i32>(), any::<i32>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
                |(pid, ghost, launch, rank, uid)| SlaveProc { pid, ghost, launch, rank, uid }
            ),
            0..4
        )
        .prop_map(|procs| Message::SessionProcs { procs }),
        (any::<i32>(), any::<i32>()).prop_map(|(pid, ghost)| Message::GhostOf { pid, ghost }),
        (any::<u32>(), any::<i32>(), ".{0,16}").prop_map(|(seq, pid, comm)| Message::ForkAhead {
            seq,
            pid,
            comm
        }),
        (any::<u32>(), any::<i32>())
            .prop_map(|(seq, ghost)| Message::ForkAheadReply { seq, ghost }),
        (any::<u64>(), any::<i32>()).prop_map(|(fork, pid)| Message::GhostForked { fork, pid }),
    ]
}

fn launch_messages() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::MasterInfo),
        (
            proptest::collection::vec(any::<i32>(), 0..10),
            spec(),
            proptest::collection::vec(any::<i32>(), 0..10)
        )
            .prop_map(|(nodes, spec, ghosts)| Message::Launch {
                io_ports: ghosts.iter().map(|g| *g as u16).collect(),
                nodes,
                spec,
                ghosts,
            }),
        any::<i32>().prop_map(|signal| Message::SignalLaunch { signal }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..5),
            spec(),
            any::<u32>(),
            proptest::collection::vec(
                (
                    any::<i32>(),
                    any::<[u8; 4]>(),
                    any::<u16>(),
                    proptest::collection::vec(any::<u32>(), 0..4),
                    proptest::collection::vec(any::<i32>(), 0..4)
                ),
                0..5
            )
        )
            .prop_map(|(launch, size, uid, gid, groups, spec, width, entries)| {
                Message::SpawnTree {
                    launch,
                    nonce: launch.rotate_left(7),
                    time_ms: launch / 3,
                    size,
                    creds: Creds { uid, gid, groups },
                    spec,
                    width,
                    entries: entries
                        .into_iter()
                        .map(|(node, ip, port, ranks, pids)| TreeEntry {
                            node,
                            ip: Ipv4Addr::from(ip),
                            port,
                            ranks,
                            ports: pids.iter().map(|p| *p as u16).collect(),
                            pids,
                        })
                        .collect(),
                }
            }),
        (any::<u64>(), any::<u32>(), any::<i32>())
            .prop_map(|(launch, rank, pid)| Message::RankSpawned { launch, rank, pid }),
        (any::<u64>(), any::<u32>(), ".{0,40}")
            .prop_map(|(launch, rank, reason)| Message::RankRefused { launch, rank, reason }),
        (any::<u64>(), any::<u32>(), any::<i32>())
            .prop_map(|(launch, rank, signal)| { Message::SignalProc { launch, rank, signal } }),
        (any::<u16>(), any::<[u8; 16]>(), spec())
            .prop_map(|(port, token, s)| Message::StageFiles { port, token, files: s.files }),
        (
            ".{0,10}",
            proptest::collection::vec(endpoint(), 0..4),
            any::<u64>(),
            any::<i32>(),
            proptest::option::of(any::<[u8; 4]>()),
            ".{0,10}",
            any::<u64>()
        )
            .prop_map(
                |(version, addrs, bytes_to_slaves, client_node, ip, ghost, ghosts_made)| {
                    Message::MasterInfoReply {
                        version,
                        addrs,
                        bytes_to_slaves,
                        client_node,
                        client_ip: ip.map(Ipv4Addr::from),
                        ghost,
                        ghosts_made,
                    }
                }
            ),
        proptest::collection::vec(any::<i32>(), 0..10).prop_map(|pids| Message::Launched { pids }),
        (any::<u64>(), any::<u32>(), status_of_exit())
            .prop_map(|(launch, rank, status)| { Message::ProcExit { launch, rank, status } }),
    ]
}

fn link() -> impl Strategy<Value = CopyLink> {
    (any::<i32>(), proptest::option::of(any::<[u8; 4]>()), any::<u16>(), any::<[u8; 16]>())
        .prop_map(|(node, ip, port, token)| CopyLink {
            node,
            ip: ip.map(Ipv4Addr::from),
            port,
            token,
        })
}

fn copy_opts() -> impl Strategy<Value = CopyOpts> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<u32>()).prop_map(
        |(recursive, preserve, target_dir, umask)| CopyOpts {
            recursive,
            preserve,
            target_dir,
            umask,
        },
    )
}

fn copy_messages() -> impl Strategy<Value = Message> {
    let strs = || proptest::collection::vec(".{0,12}", 0..4);
    let nodes = || proptest::collection::vec(any::<i32>(), 0..6);
    let links = || proptest::collection::vec(link(), 0..4);
    let task = prop_oneof![
        (strs(), links()).prop_map(|(paths, to)| CopyTask::Send { paths, to }),
        (any::<[u8; 16]>(), ".{0,20}", ".{0,4}", links()).prop_map(
            |(token, target, suffix, to)| CopyTask::Receive { token, target, suffix, to }
        ),
    ];
    prop_oneof![
        (
            any::<i32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..4),
            proptest::collection::vec(any::<(u32, u64, u64)>(), 0..17),
        )
            .prop_map(|(node, uid, gid, groups, rlimits)| Message::ProxyClient {
                node,
                creds: Creds { uid, gid, groups },
                pid: uid as i32,
                rlimits,
                umask: gid & 0o777,
            }),
        (nodes(), strs(), nodes(), ".{0,20}", copy_opts(), ".{0,20}", any::<u32>(), any::<u16>())
            .prop_map(|(src, paths, dst, target, opts, cwd, fanout, port)| Message::Copy {
                src,
                paths,
                dst,
                target,
                opts,
                cwd,
                fanout,
                port
            }),
        (any::<u32>(), any::<u32>(), ".{0,20}", copy_opts(), task).prop_map(
            |(uid, gid, cwd, opts, task)| Message::CopyOrder {
                creds: Creds { uid, gid, groups: vec![] },
                cwd,
                opts,
                task
            }
        ),
        (links(), any::<u32>()).prop_map(|(links, reports)| Message::CopyPlan { links, reports }),
        (any::<i32>(), strs(), strs(), any::<u64>(), any::<u64>()).prop_map(
            |(node, source_errors, errors, files, bytes)| Message::CopyResult {
                node,
                source_errors,
                errors,
                files,
                bytes
            }
        ),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![base_message(), launch_messages(), ghost_messages(), copy_messages()]
}

fn base_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Message::AuthChallenge { nonce }),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(nonce, mac)| Message::AuthResponse { nonce, mac }),
        any::<[u8; 32]>().prop_map(|mac| Message::AuthConfirm { mac }),
        (".{0,30}", any::<u64>(), info(), any::<u16>(), any::<u16>()).prop_map(
            |(version, cookie, info, data_port, tree_port)| Message::Join {
                version,
                cookie,
                info,
                data_port,
                tree_port
            }
        ),
        (any::<i32>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(node, cookie, ping_timeout, time_ms, grace)| Message::Conf {
                node,
                cookie,
                ping_timeout,
                time_ms,
                grace
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, time_ms)| Message::Ping { seq, time_ms }),
        (any::<u64>(), info()).prop_map(|(seq, info)| Message::Pong { seq, info }),
        (".{0,40}", any::<bool>())
            .prop_map(|(reason, reconnect)| Message::Disconnect { reason, reconnect }),
        action().prop_map(|action| Message::Action { action }),
        ".{0,40}".prop_map(|path| Message::SlaveChroot { path }),
        (endpoint(), endpoint())
            .prop_map(|(master, local)| Message::SlaveReconnect { master, local }),
        Just(Message::NodeList),
        (any::<i32>(), ".{0,20}").prop_map(|(node, state)| Message::SetState { node, state }),
        (any::<i32>(), any::<u32>()).prop_map(|(node, mode)| Message::Chmod { node, mode }),
        (any::<i32>(), any::<u32>()).prop_map(|(node, uid)| Message::Chown { node, uid }),
        (any::<i32>(), any::<u32>()).prop_map(|(node, gid)| Message::Chgrp { node, gid }),
        (any::<i32>(), action()).prop_map(|(node, action)| Message::NodeCommand { node, action }),
        (any::<i32>(), ".{0,40}").prop_map(|(node, path)| Message::NodeChroot { node, path }),
        (any::<i32>(), endpoint(), endpoint())
            .prop_map(|(node, master, local)| { Message::NodeReconnect { node, master, local } }),
        (any::<i32>(), ".{0,40}").prop_map(|(node, name)| Message::GetNodeAttr { node, name }),
        (any::<i32>(), ".{0,40}", proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(node, name, value)| Message::SetNodeAttr { node, name, value }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|value| Message::NodeAttr { value }),
        Just(Message::Watch),
        Just(Message::Ok),
        (any::<i32>(), ".{0,40}").prop_map(|(code, message)| Message::Error { code, message }),
        proptest::collection::vec(status(), 0..20).prop_map(|nodes| Message::Nodes { nodes }),
        proptest::collection::vec(status(), 0..20)
            .prop_map(|nodes| Message::NodesChanged { nodes }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check(&bytes);
        let _ = decode(&bytes);
    }

    #[test]
    fn any_body_behind_a_valid_header_decodes_or_fails_cleanly(
        ty in 0u16..140, body in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut frame = encode(1, &Message::Ok);
        frame[6..8].copy_from_slice(&ty.to_be_bytes());
        frame[12..16].copy_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let _ = decode(&frame);
    }

    #[test]
    fn messages_round_trip(id in any::<u32>(), msg in message()) {
        let bytes = encode(id, &msg);
        prop_assert_eq!(check(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(decode(&bytes), Ok((id, msg)));
    }

    #[test]
    fn every_truncation_is_incomplete(msg in message()) {
        let bytes = encode(9, &msg);
        for cut in 0..bytes.len() {
            prop_assert_eq!(check(&bytes[..cut]), Ok(None));
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
