//! The client socket: local programs (bpstat, bpctl, libbproc) ask for the node table and
//! request changes. Each caller is identified by the kernel (`SO_PEERCRED`), never by anything
//! it sends; its supplementary groups are read from `/proc/<pid>/status`, and the limits and
//! umask its launches get from `/proc/<pid>` when it launches (see [`Inherit`]).
//!
//! A client running on a node reaches the master through its slave, which opens an
//! authenticated TCP connection for it and vouches for its identity (read from the kernel on
//! the node); from then on the connection is served like a local one.

use std::sync::Arc;
use std::time::Duration;

use bproc_link::{read_frame, write_frame, LinkError};
use bproc_proto::errno::{ENOSYS, EPROTO};
use bproc_proto::{Endpoint, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::slaves::{self, disconnect};
use crate::table::{Caller, Inherit, Refusal, Session};
use crate::Shared;

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(shared.clone(), stream));
            }
            Err(e) => {
                warn!("accepting a client failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The reading half of a client connection, local or proxied.
pub(crate) type ClientRd = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half.
pub(crate) type ClientWr = Box<dyn AsyncWrite + Send + Unpin>;

async fn serve_client(shared: Arc<Shared>, stream: UnixStream) {
    let caller = match stream.peer_cred() {
        Ok(c) => {
            // The process as it is now, so that a pid reused later is noticed.
            let peer = c.pid().and_then(|pid| bproc_sys::peer::Peer::identify(pid).ok());
            Caller {
                uid: c.uid(),
                gid: c.gid(),
                groups: peer.and_then(|p| p.groups().ok()).unwrap_or_default(),
                admin: c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw(),
                origin: None,
                pid: c.pid(),
                node_pid: None,
                inherit: peer.map_or(Inherit::Unknown, Inherit::Local),
            }
        }
        Err(e) => {
            warn!("client without credentials refused: {e}");
            return;
        }
    };
    let (rd, wr) = stream.into_split();
    serve(shared, caller, Box::new(rd), Box::new(wr)).await;
}

/// Serves a client of node `node` (at `ip`) whose slave opened `stream` for it.
pub(crate) async fn serve_proxied(
    shared: Arc<Shared>,
    node: i32,
    ip: std::net::Ipv4Addr,
    creds: bproc_proto::Creds,
    pid: i32,
    inherited: bproc_sys::peer::Inherited,
    stream: TcpStream,
) {
    // Root on a node is root of the cluster, as in BProc, where a node's processes are the
    // master's own.
    let caller = Caller {
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups,
        admin: creds.uid == 0,
        origin: Some((node, ip)),
        pid: None,
        node_pid: (pid > 0).then_some(pid),
        // The slave read these from the node's kernel, as it did the credentials.
        inherit: Inherit::Reported(inherited),
    };
    debug!("node {node}: client uid {} connected through its slave", caller.uid);
    let (rd, wr) = stream.into_split();
    serve(shared, caller, Box::new(rd), Box::new(wr)).await;
}

async fn serve(shared: Arc<Shared>, caller: Caller, mut rd: ClientRd, mut wr: ClientWr) {
    loop {
        let (id, msg) = match read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(LinkError::Decode(e)) => {
                // The stream is out of step after a bad frame: answer once, then close.
                let _ = write_frame(
                    &mut wr,
                    0,
                    &Message::Error { code: EPROTO, message: e.to_string() },
                )
                .await;
                return;
            }
            Err(e) => {
                debug!("client uid {}: {e}", caller.uid);
                return;
            }
        };
        match msg {
            Message::Watch => {
                watch(&shared, id, rd, wr).await;
                return;
            }
            Message::Launch { nodes, spec, ghosts, io_ports } => {
                let req = crate::launch::Request { nodes, spec, ghosts, io_ports };
                crate::launch::serve(shared, caller, id, req, rd, wr).await;
                return;
            }
            Message::GhostHello { fork } => {
                // Ghosts live on the front end only, where the kernel names their pid.
                if let Some(pid) = caller.pid {
                    crate::ghosts::serve(shared, pid, caller.uid, fork, rd, wr).await;
                }
                return;
            }
            Message::ProcStatList { pids } => {
                let reply = crate::ghosts::stats(&shared, pids).await;
                let _ = write_frame(&mut wr, id, &reply).await;
                continue;
            }
            Message::Copy { src, paths, dst, target, opts, cwd, fanout, port } => {
                let req = crate::copy::Request { src, paths, dst, target, opts, cwd, fanout, port };
                crate::copy::serve(shared, caller, id, req, rd, wr).await;
                return;
            }
            _ => {}
        }
        let reply = handle(&shared, &caller, msg).await;
        if write_frame(&mut wr, id, &reply).await.is_err() {
            return;
        }
    }
}

/// Streams the node table after every change until the client goes away.
async fn watch(shared: &Shared, id: u32, mut rd: ClientRd, mut wr: ClientWr) {
    let mut rx = shared.changed.subscribe();
    if write_frame(&mut wr, id, &Message::Ok).await.is_err() {
        return;
    }
    loop {
        // Mark before the snapshot: a change after this point wakes the next round.
        rx.mark_unchanged();
        let nodes = shared.table().statuses();
        if write_frame(&mut wr, 0, &Message::NodesChanged { nodes }).await.is_err() {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            // A watcher sends nothing more; any frame or EOF ends the watch.
            _ = read_frame(&mut rd) => return,
        }
    }
}

fn done(shared: &Shared, r: Result<(), Refusal>) -> Message {
    match r {
        Ok(()) => {
            shared.notify();
            Message::Ok
        }
        Err(e) => e.to_message(),
    }
}

/// The reply to a change of node `node` (`what`, for the log), which may have set it down.
fn changed(
    shared: &Shared,
    caller: &Caller,
    node: i32,
    what: &str,
    r: Result<Option<Session>, Refusal>,
) -> Message {
    match r {
        Ok(Some(session)) => {
            info!("node {node}: set down by uid {}", caller.uid);
            disconnect(session, "node set down by the administrator", false);
            shared.node_lost(node);
            done(shared, Ok(()))
        }
        Ok(None) => {
            info!("node {node}: {what} by uid {}", caller.uid);
            done(shared, Ok(()))
        }
        Err(e) => e.to_message(),
    }
}

async fn handle(shared: &Shared, caller: &Caller, msg: Message) -> Message {
    match msg {
        Message::NodeList => Message::Nodes { nodes: shared.table().statuses() },
        Message::MasterInfo => Message::MasterInfoReply {
            version: crate::slaves::SOFTWARE_VERSION.into(),
            addrs: shared
                .listen
                .iter()
                .map(|a| match a {
                    std::net::SocketAddr::V4(a) => Endpoint { ip: Some(*a.ip()), port: a.port() },
                    std::net::SocketAddr::V6(a) => Endpoint { ip: None, port: a.port() },
                })
                .collect(),
            bytes_to_slaves: shared.sent_to_slaves.load(std::sync::atomic::Ordering::Relaxed),
            client_node: caller.origin.map_or(bproc_proto::NODE_MASTER, |o| o.0),
            client_ip: caller.origin.map(|o| o.1),
            ghost: shared.ghost_program.clone().unwrap_or_default(),
        },
        Message::ProcList => Message::Procs { procs: shared.ghosts.list() },
        Message::LibList { only } => shared.libraries.list(&only),
        Message::LibEdit { op, names } => {
            let reply = shared.libraries.edit(caller.admin, op, names);
            if reply == Message::Ok {
                info!("library list changed ({op:?}) by uid {}", caller.uid);
            }
            reply
        }
        Message::SetState { node, state } => {
            let r = shared.table().set_state(caller, node, &state);
            changed(shared, caller, node, &format!("state set to {state}"), r)
        }
        Message::GetNodeAttr { node, name } => match shared.table().attr(node, &name) {
            Ok(value) => Message::NodeAttr { value },
            Err(e) => e.to_message(),
        },
        Message::SetNodeAttr { node, name, value } => {
            let r = shared.table().set_attr(caller, node, &name, &value);
            changed(shared, caller, node, &format!("attribute {name} set"), r)
        }
        Message::Chmod { node, mode } => {
            let r = shared.table().chmod(caller, node, mode);
            done(shared, r)
        }
        Message::Chown { node, uid } => {
            let r = shared.table().chown(caller, node, uid);
            done(shared, r)
        }
        Message::Chgrp { node, gid } => {
            let r = shared.table().chgrp(caller, node, gid);
            done(shared, r)
        }
        Message::NodeCommand { node, action } => {
            let r = shared.table().command_target(caller, node).map(|n| {
                n.send(0, Message::Action { action });
            });
            if r.is_ok() {
                info!("node {node}: {} requested by uid {}", action.name(), caller.uid);
            }
            r.map_or_else(|e| e.to_message(), |()| Message::Ok)
        }
        Message::NodeChroot { node, path } => {
            if let Err(e) = shared.table().command_target(caller, node) {
                return e.to_message();
            }
            slaves::request(shared, node, Message::SlaveChroot { path }).await
        }
        Message::NodeReconnect { node, master, local } => {
            if let Err(e) = shared.table().command_target(caller, node) {
                return e.to_message();
            }
            slaves::request(shared, node, Message::SlaveReconnect { master, local }).await
        }
        Message::Unknown { msg_type } => Message::Error {
            code: ENOSYS,
            message: format!(
                "unknown request type {msg_type}: is this client newer than bpmaster?"
            ),
        },
        other => Message::Error {
            code: EPROTO,
            message: format!("{} is not a client request", other.name()),
        },
    }
}
