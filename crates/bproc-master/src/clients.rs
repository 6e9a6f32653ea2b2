//! The client socket: local programs (bpstat, bpctl, libbproc) ask for the node table and
//! request changes. Each caller is identified by the kernel (`SO_PEERCRED`), never by anything
//! it sends; its supplementary groups are read from `/proc/<pid>/status`, and the limits and
//! umask its launches get from `/proc/<pid>` when it launches (see [`Inherit`]).
//!
//! A client running on a node reaches the master through its slave, which opens an
//! authenticated TCP connection for it and vouches for its identity (read from the kernel on
//! the node); from then on the connection is served like a local one.
//!
//! # Limits
//! No user can exhaust the master for the others, or for root:
//! - A user other than root (and the master's own user) holds at most `maxclientsperuser`
//!   connections, local and from nodes together. Ghosts (connections from the ghost
//!   program, which stand for running remote processes) do not count against it.
//! - Together, the connections of users other than root keep clear of the master's open-file
//!   limit by a reserve (see [`Conns`]), so root's `bpstat` always answers.
//! - A refused client is told why in an error frame (request id 0) naming the cap, and the
//!   refusal is logged once per interval at most.
//! - A connection has [`FIRST_REQUEST`] to send its first request whole, and a frame must
//!   arrive within `bproc_link::FRAME_DEADLINE` of its start, its bytes kept only as they
//!   come. A connection of plain requests that stays quiet for [`IDLE_TIMEOUT`] is closed
//!   (the client library reconnects). Ghosts, watchers, launches and copies wait as long as
//!   their job does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bproc_link::guard::Refusals;
use bproc_link::{read_frame, write_frame, LinkError};
use bproc_proto::errno::{EAGAIN, ENOSYS, EPROTO};
use bproc_proto::{Endpoint, Header, Message};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info};

use crate::conn::{ClientRd, ClientWr, Proxied};
use crate::slaves::disconnect;
use crate::table::{Caller, Inherit, Refusal, Session};
use crate::Shared;

/// How long a new connection has to send its first request.
pub(crate) const FIRST_REQUEST: Duration = Duration::from_secs(10);
/// How long a connection of plain requests may stay quiet between them.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Refused client connections, logged once per interval.
pub(crate) static REFUSED: Refusals = Refusals::new("client socket");

/// Client connections, by user, for the caps (see the module documentation).
#[derive(Debug)]
pub(crate) struct Conns {
    /// `maxclientsperuser` (a reload changes it).
    per_user: AtomicUsize,
    /// Most connections of users other than root, together: the open-file limit less a
    /// reserve for root, the slave links and the daemon's own files.
    others_max: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Capped connections by uid (not ghosts, not root's).
    by_uid: HashMap<u32, usize>,
    /// Every connection of users other than root, ghosts included.
    others: usize,
    /// The processes holding capped connections, with how many each holds.
    pids: HashMap<i32, usize>,
}

/// A connection's place in [`Conns`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    conns: Arc<Conns>,
    uid: u32,
    pid: Option<i32>,
    capped: bool,
    other: bool,
}

/// Takes one from `key`'s count, removing it at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.conns.lock();
        if self.capped {
            release(&mut c.by_uid, &self.uid);
            if let Some(pid) = self.pid {
                release(&mut c.pids, &pid);
            }
        }
        if self.other {
            c.others -= 1;
        }
    }
}

impl Conns {
    /// Caps of `per_user` connections a user, under an open-file limit of `fd_limit` with
    /// `nodes` configured nodes. Root's reserve is 256 descriptors plus 4 a node (its link,
    /// copies, launches), at most half the limit.
    pub(crate) fn new(per_user: u32, fd_limit: u64, nodes: usize) -> Conns {
        let limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let reserve = 256usize.saturating_add(nodes.saturating_mul(4)).min(limit / 2);
        Conns {
            per_user: AtomicUsize::new(per_user as usize),
            others_max: limit - reserve,
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a reloaded `maxclientsperuser` to new connections.
    pub(crate) fn set_per_user(&self, per_user: u32) {
        self.per_user.store(per_user as usize, Ordering::Relaxed);
    }

    /// Admits a connection of `uid` from process `pid` (`admin`: root or the master's own
    /// user; `ghost`: a ghost, see [`is_ghost`]), or says why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        uid: u32,
        pid: Option<i32>,
        admin: bool,
        ghost: bool,
    ) -> Result<Slot, Crowded> {
        let mut c = self.lock();
        if admin {
            return Ok(Slot { conns: self.clone(), uid, pid, capped: false, other: false });
        }
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if !ghost && mine >= self.per_user.load(Ordering::Relaxed) {
            return Err(Crowded::User { uid, held: mine });
        }
        if c.others >= self.others_max {
            return Err(Crowded::Others { held: c.others });
        }
        c.others += 1;
        if !ghost {
            *c.by_uid.entry(uid).or_default() += 1;
            if let Some(pid) = pid {
                *c.pids.entry(pid).or_default() += 1;
            }
        }
        Ok(Slot { conns: self.clone(), uid, pid, capped: !ghost, other: true })
    }

    /// Whether process `pid` holds a capped connection now.
    fn holds_one(&self, pid: i32) -> bool {
        self.lock().pids.contains_key(&pid)
    }
}

/// Why a connection is not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Crowded {
    /// The user holds its `maxclientsperuser` connections.
    #[error(
        "bpmaster refused the connection: user {uid} already has {held} connections \
         (cap maxclientsperuser)"
    )]
    User { uid: u32, held: usize },
    /// Users other than root hold all the descriptors root's reserve leaves.
    #[error(
        "bpmaster refused the connection: users other than root hold {held} connections, \
         all its open-file limit allows beside root's reserve (raise bpmaster's `ulimit -n`)"
    )]
    Others { held: usize },
}

/// The refusal a client reads instead of an answer.
fn refusal(why: &Crowded) -> Vec<u8> {
    bproc_proto::encode(0, &Message::Error { code: EAGAIN, message: why.to_string() })
}

/// Whether process `pid`, not an admin's, is a ghost: it runs the ghost program `ghost`, or
/// it is a fork of a client connected now that runs the client's program still (a launcher
/// that forks its ghosts, bpsh; a fork of one's own client or a run of the ghost program are
/// open to any user alike, and each counts against the master's limit for all users).
fn is_ghost(pid: i32, ghost: Option<&str>, conns: &Conns) -> bool {
    let exe_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let Some(exe) = exe_of(pid) else { return false };
    if let Some(ghost) = ghost.map(std::path::Path::new) {
        if exe == ghost || std::fs::canonicalize(ghost).is_ok_and(|g| g == exe) {
            return true;
        }
    }
    let parent = bproc_sys::peer::Stat::read(pid).and_then(|s| s.num::<i32>(4));
    parent.is_some_and(|p| conns.holds_one(p) && exe_of(p).as_ref() == Some(&exe))
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit_local(&shared, stream),
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                REFUSED.refuse(format_args!("accepting a client failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Admits a local client under the caps and serves it, or refuses it at once (no task, no
/// waiting: the refusal fits the socket's empty buffer).
fn admit_local(shared: &Arc<Shared>, stream: UnixStream) {
    let c = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return REFUSED.refuse(format_args!("a client without credentials: {e}")),
    };
    let admin = c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw();
    let program = shared.ghost_program.as_deref();
    let ghost = !admin && c.pid().is_some_and(|p| is_ghost(p, program, &shared.conns));
    match shared.conns.admit(c.uid(), c.pid(), admin, ghost) {
        Ok(slot) => {
            let caller = Caller {
                uid: c.uid(),
                gid: c.gid(),
                groups: Vec::new(),
                admin,
                origin: None,
                pid: c.pid(),
                node_pid: None,
                inherit: Inherit::Unknown,
            };
            tokio::spawn(serve_local(shared.clone(), caller, slot, stream));
        }
        Err(why) => {
            let _ = stream.try_write(&refusal(&why));
            shared.metrics.connection_rejected();
            REFUSED.refuse(format_args!("pid {}: {why}", c.pid().unwrap_or(0)));
        }
    }
}

/// Serves an admitted local client. A ghost, which says so first (`GhostHello`), is its pid
/// and uid alone; any other caller is identified first: the process that connected (so that
/// its pid reused later is noticed) and its groups as it connected. A thousand-rank launch
/// makes a thousand ghosts, each spared the look at `/proc` and the pidfd, a seventh of the
/// master's work for a launched rank.
async fn serve_local(shared: Arc<Shared>, mut caller: Caller, slot: Slot, stream: UnixStream) {
    let first = match tokio::time::timeout(FIRST_REQUEST, first_bytes(&stream)).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => return debug!("client uid {}: {e}", caller.uid),
        Err(_) => {
            let quiet = FIRST_REQUEST.as_secs();
            return debug!("client uid {}: sent nothing within {quiet} s; closed", caller.uid);
        }
    };
    let (rd, wr) = stream.into_split();
    let read = match first {
        First::Ghost { fork } => {
            // Ghosts live on the front end only, where the kernel names their pid.
            if let Some(pid) = caller.pid {
                let _slot = slot;
                let wr = Box::new(crate::conn::NoShutdown(Some(wr)));
                crate::ghosts::serve(shared, pid, caller.uid, fork, Box::new(rd), wr).await;
            }
            return;
        }
        First::Other(read) => read,
    };
    {
        use std::os::fd::AsFd;
        let sock = rd.as_ref().as_fd();
        let peer = caller.pid.and_then(|pid| bproc_sys::peer::Peer::of_socket(sock, pid).ok());
        caller.groups = bproc_sys::peer::socket_groups(sock)
            .ok()
            .or_else(|| peer.and_then(|p| p.groups().ok()))
            .unwrap_or_default();
        caller.inherit = peer.map_or(Inherit::Unknown, Inherit::Local);
    }
    // The first request is read from the bytes taken already, then the socket.
    use tokio::io::AsyncReadExt;
    let rd: ClientRd = Box::new(std::io::Cursor::new(read).chain(rd));
    // Boxed: a request loop's state is large, and a ghost's task (most connections) should not
    // carry it.
    Box::pin(serve(shared, caller, slot, rd, Box::new(wr))).await;
}

/// What a local client sent first.
enum First {
    /// A ghost's hello, taken whole (in one read but when the socket splits it).
    Ghost {
        /// Its fork id.
        fork: u64,
    },
    /// Anything else (nothing, at the end of the stream): the bytes read, the first request's
    /// start.
    Other(Vec<u8>),
}

/// A `GhostHello` frame's length.
const HELLO_LEN: usize = bproc_proto::HEADER_LEN + 8;

/// Reads what `stream` has first: a ghost's hello whole, or as much of another client's
/// first request as shows it is not one (its header, or the end of the stream). A ghost
/// writes its hello at once, so this is one read but for a hello the socket splits.
async fn first_bytes(stream: &UnixStream) -> std::io::Result<First> {
    let hello = Message::GhostHello { fork: 0 }.msg_type();
    let mut buf = vec![0u8; HELLO_LEN];
    let mut len = 0;
    while len < HELLO_LEN {
        stream.readable().await?;
        match stream.try_read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let header = buf.first_chunk().filter(|_| len >= bproc_proto::HEADER_LEN);
        if header.is_some_and(|h| Header::parse(h).map_or(true, |h| h.msg_type != hello)) {
            break;
        }
    }
    buf.truncate(len);
    Ok(match bproc_proto::decode(&buf) {
        Ok((_, Message::GhostHello { fork })) => First::Ghost { fork },
        _ => First::Other(buf),
    })
}

/// Serves a client a slave carries for its node, once the slave port has checked the link.
pub(crate) async fn serve_proxied(shared: Arc<Shared>, proxied: Proxied) {
    let Proxied { node, ip, creds, pid, inherited, stream } = proxied;
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
    let mut stream = stream;
    let slot = match shared.conns.admit(caller.uid, None, caller.admin, false) {
        Ok(slot) => slot,
        Err(why) => {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(FIRST_REQUEST, stream.write_all(&refusal(&why))).await;
            shared.metrics.connection_rejected();
            REFUSED.refuse(format_args!("node {node}: {why}"));
            return;
        }
    };
    debug!("node {node}: client uid {} connected through its slave", caller.uid);
    let (rd, wr) = stream.into_split();
    serve(shared, caller, slot, Box::new(rd), Box::new(wr)).await;
}

/// Serves one client connection; `_slot` holds its place under the caps until it ends.
async fn serve(
    shared: Arc<Shared>,
    caller: Caller,
    _slot: Slot,
    mut rd: ClientRd,
    mut wr: ClientWr,
) {
    let mut first = true;
    loop {
        // The first request comes at once; later ones may pause, but not forever.
        let quiet = if first { FIRST_REQUEST } else { IDLE_TIMEOUT };
        first = false;
        let frame = match tokio::time::timeout(quiet, read_frame(&mut rd)).await {
            Ok(f) => f,
            Err(_) => {
                debug!("client uid {}: quiet for {} s; closed", caller.uid, quiet.as_secs());
                return;
            }
        };
        let (id, msg) = match frame {
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
            Message::ProcWait { pid } => {
                // As long as the process runs, this connection only passes signals on to it.
                let Some(reply) = proc_wait(&shared, &caller, pid, &mut rd).await else {
                    return;
                };
                let _ = write_frame(&mut wr, id, &reply).await;
                continue;
            }
            Message::ProcStatList { pids } => {
                let reply = crate::ghosts::stats(&shared, pids).await;
                let _ = write_frame(&mut wr, id, &reply).await;
                continue;
            }
            Message::Copy { src, paths, dst, target, opts, cwd, fanout, port } => {
                let req =
                    bproc_proto::CopyRequest { src, paths, dst, target, opts, cwd, fanout, port };
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
        Message::NodeListOf { nodes } => {
            Message::Nodes { nodes: shared.table().statuses_of(&nodes) }
        }
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
            ghosts_made: shared.ghosts.made(),
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
            shared.request(node, Message::SlaveChroot { path }).await
        }
        Message::NodeReconnect { node, master, local } => {
            if let Err(e) = shared.table().command_target(caller, node) {
                return e.to_message();
            }
            shared.request(node, Message::SlaveReconnect { master, local }).await
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

/// Serves [`Message::ProcWait`] for remote process `pid` (a ghost's pid): its end, when it
/// comes, as [`Message::ProcExit`]. Meanwhile each [`Message::SignalLaunch`] on the
/// connection is sent on to the process (no answer). `None` when the client went away.
async fn proc_wait(
    shared: &Arc<Shared>,
    caller: &Caller,
    pid: i32,
    rd: &mut ClientRd,
) -> Option<Message> {
    let Some(mut rx) = shared.ghosts.wait(pid, caller.uid, caller.admin) else {
        return Some(Message::Error {
            code: bproc_proto::errno::ESRCH,
            message: format!("{pid} is no remote process of yours"),
        });
    };
    loop {
        tokio::select! {
            end = &mut rx => return Some(match end {
                Ok(status) => Message::ProcExit { launch: 0, rank: 0, status },
                Err(_) => Message::Error {
                    code: bproc_proto::errno::ESRCH,
                    message: format!("process {pid} is gone"),
                },
            }),
            frame = read_frame(rd) => match frame {
                Ok(Some((_, Message::SignalLaunch { signal }))) => {
                    if let Some((n, rpid)) = shared.ghosts.signal_target(pid, signal, 0) {
                        if let Some(node) = shared.table().get(n) {
                            node.send(0, Message::SignalPid { pid: rpid, signal, sender: 0 });
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_capped_and_gets_its_slots_back() {
        let conns = Arc::new(Conns::new(2, 100_000, 4));
        let a = conns.admit(1001, None, false, false).unwrap();
        let _b = conns.admit(1001, None, false, false).unwrap();
        assert_eq!(
            conns.admit(1001, None, false, false).unwrap_err().to_string(),
            "bpmaster refused the connection: user 1001 already has 2 connections \
             (cap maxclientsperuser)"
        );
        // Another user, root, the user's ghosts: not held back.
        let _c = conns.admit(1002, None, false, false).unwrap();
        let _r: Vec<Slot> = (0..10).map(|_| conns.admit(0, None, true, false).unwrap()).collect();
        let _g: Vec<Slot> =
            (0..10).map(|_| conns.admit(1001, None, false, true).unwrap()).collect();
        drop(a);
        let _d = conns.admit(1001, None, false, false).unwrap();
        // A reload raises the cap for new connections.
        conns.set_per_user(3);
        let _e = conns.admit(1001, None, false, false).unwrap();
    }

    #[test]
    fn the_processes_holding_counted_connections_are_known() {
        let conns = Arc::new(Conns::new(4, 100_000, 4));
        let one = conns.admit(1001, Some(41), false, false).unwrap();
        let two = conns.admit(1001, Some(41), false, false).unwrap();
        let _root = conns.admit(0, Some(42), true, false).unwrap();
        let _ghost = conns.admit(1001, Some(43), false, true).unwrap();
        assert!(conns.holds_one(41));
        // Neither root's nor a ghost's connection makes its forks ghosts.
        assert!(!conns.holds_one(42) && !conns.holds_one(43));
        drop(one);
        assert!(conns.holds_one(41), "one of two connections left");
        drop(two);
        assert!(!conns.holds_one(41));
    }

    /// What `first_bytes` takes from a client that writes `pieces` one after the other, each
    /// once the reader has taken the one before, and then closes.
    fn first_of(pieces: &[&[u8]]) -> First {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            // A second handle on the reader's socket, to see when it has read everything.
            let watch = std::os::fd::AsFd::as_fd(&ours).try_clone_to_owned().unwrap();
            let unread = move || {
                use nix::sys::socket::{recv, MsgFlags};
                let peek = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
                recv(std::os::fd::AsRawFd::as_raw_fd(&watch), &mut [0], peek).is_ok()
            };
            let done = std::cell::Cell::new(false);
            let read = async {
                let first = first_bytes(&ours).await;
                done.set(true);
                first
            };
            let write = async {
                use tokio::io::AsyncWriteExt;
                // Its own, to close at the end.
                let mut theirs = theirs;
                for p in pieces {
                    theirs.write_all(p).await.unwrap();
                    while unread() && !done.get() {
                        tokio::task::yield_now().await;
                    }
                }
            };
            let both = async { tokio::join!(read, write) };
            let (first, ()) = tokio::time::timeout(Duration::from_secs(10), both).await.unwrap();
            first.unwrap()
        })
    }

    #[test]
    fn a_ghost_hello_is_taken_whole_and_another_request_from_its_header() {
        let hello = bproc_proto::encode(0, &Message::GhostHello { fork: 7 });
        for at in [0, 3, HELLO_LEN - 1] {
            let (a, b) = hello.split_at(at);
            assert!(matches!(first_of(&[a, b]), First::Ghost { fork: 7 }), "split at {at}");
        }
        let nodes = bproc_proto::encode(5, &Message::NodeListOf { nodes: (0..64).collect() });
        for at in [0, 5] {
            let (a, b) = nodes.split_at(at);
            let First::Other(got) = first_of(&[a, b]) else { panic!("not a hello") };
            assert!(got.len() >= bproc_proto::HEADER_LEN && nodes.starts_with(&got), "at {at}");
        }
        let First::Other(got) = first_of(&[b"abc"]) else { panic!("not a hello") };
        assert_eq!(got, b"abc");
    }

    #[test]
    fn root_keeps_a_reserve() {
        // 1000 descriptors, 10 nodes: 296 kept for root, 704 for everybody else.
        let conns = Arc::new(Conns::new(1000, 1000, 10));
        let others: Vec<Slot> =
            (0..704).map(|i| conns.admit(2000 + i, None, false, i % 2 == 0).unwrap()).collect();
        let err = conns.admit(5000, None, false, false).unwrap_err().to_string();
        assert!(err.contains("users other than root hold 704 connections"), "{err}");
        assert!(conns.admit(0, None, true, false).is_ok());
        drop(others);
        assert!(conns.admit(5000, None, false, false).is_ok());
    }
}
