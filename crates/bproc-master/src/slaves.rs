//! Slave links: accept, check the source, authenticate, receive the join, then serve pongs and
//! replies until the link ends; and the ping loop that finds silent slaves. A connection that
//! carries a client on a node instead goes to the handler the daemon gives the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bproc_link::{expect_frame, master_handshake, read_frame, write_frame, LinkError};
use bproc_proto::errno::{ENOSYS, EPROTO};
use bproc_proto::{Message, NodeInfo};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::conn::Proxied;
use crate::table::{JoinError, JoinKind, Outgoing, Session, BOOT_MODE};
use crate::{node_up, now_ms, Shared};

/// Version string slaves and master exchange.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Refused slave connections (unknown addresses, failed handshakes), logged once per
/// interval beyond the first few: the port is open to anyone who can reach it.
pub(crate) static REFUSED: bproc_link::guard::Refusals =
    bproc_link::guard::Refusals::new("slave port");

/// Accepts connections to the slave port; each is checked and becomes a slave's link, or a
/// client its slave carries, which goes to `on_client` (the client socket's service, handed
/// in by the daemon).
pub(crate) async fn accept_loop<F, Fut>(shared: Arc<Shared>, listener: TcpListener, on_client: F)
where
    F: Fn(Arc<Shared>, Proxied) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    match arrive(&shared, stream, peer).await {
                        Some(Arrival::Slave(joining)) => serve_slave(shared, joining).await,
                        Some(Arrival::Client(proxied)) => on_client(shared, proxied).await,
                        None => {}
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                REFUSED.refuse(format_args!("accepting a slave connection failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Ends a session: fails its outstanding requests with `BE_SLAVEDIED` (by dropping their
/// senders) and tells its writer to send the reason and close.
pub(crate) fn disconnect(session: Session, reason: &str, reconnect: bool) {
    let _ = session.tx.send(Outgoing::Close(reason.to_owned(), reconnect));
}

fn conf_for(node: i32, cookie: u64, config: &Config) -> Message {
    Message::Conf {
        node,
        cookie,
        ping_timeout: config.ping_timeout,
        time_ms: now_ms(),
        grace: config.grace,
    }
}

/// Resends `CONF` to every connected slave (after SIGHUP).
pub(crate) fn send_conf_all(shared: &Shared, config: &Config) {
    let t = shared.table();
    for n in t.iter() {
        if let Some(s) = &n.session {
            n.send(0, conf_for(n.number, s.cookie, config));
        }
    }
}

fn new_cookie() -> u64 {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the kernel's random source failed");
        let c = u64::from_be_bytes(b);
        if c != 0 {
            return c;
        }
    }
}

/// Tells a slave why it is refused before the connection closes; `reconnect` lets one with
/// `-r` try again later (a reload may take its address).
async fn refuse(stream: &mut TcpStream, reason: String, reconnect: bool) {
    // A small frame fits the socket's empty buffer; a peer that reads nothing costs no wait.
    let bye = Message::Disconnect { reason, reconnect };
    let _ = tokio::time::timeout(Duration::from_secs(1), write_frame(stream, 0, &bye)).await;
}

/// What a connection to the slave port turned out to be, once checked.
enum Arrival {
    /// A slave asking to join as node `n`.
    Slave(Joining),
    /// A client on a node, carried by its slave.
    Client(Proxied),
}

/// An authenticated slave's `Join`.
struct Joining {
    n: i32,
    ip: Ipv4Addr,
    peer: SocketAddr,
    stream: TcpStream,
    /// The configuration the connection was checked against (its `CONF` comes from it).
    config: Arc<Config>,
    version: String,
    cookie: u64,
    info: NodeInfo,
    data_port: u16,
    tree_port: u16,
}

/// Checks a new connection: its source, the handshake, and its first frame (a `Join`, or a
/// client its slave carries). `None` when it is refused (logged, and the peer told why where
/// it helps).
async fn arrive(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) -> Option<Arrival> {
    let config = shared.config();
    let (n, ip) = check_source(shared, &config, &mut stream, peer).await?;
    let _ = stream.set_nodelay(true);
    if let Err(e) = master_handshake(&mut stream, &shared.key).await {
        shared.metrics.auth_refused();
        REFUSED.refuse(format_args!("node {n}: connection from {peer} refused: {e}"));
        return None;
    }
    let first =
        tokio::time::timeout(bproc_link::HANDSHAKE_TIMEOUT, expect_frame(&mut stream)).await;
    match first {
        Ok(Ok((_, Message::Join { version, cookie, info, data_port, tree_port }))) => {
            if version != SOFTWARE_VERSION && !shared.options.ignore_version {
                let reason = format!(
                    "version mismatch: slave {version}, master {SOFTWARE_VERSION} (run \
                     bpmaster -i to accept)"
                );
                warn!("node {n}: {reason}");
                refuse(&mut stream, reason, false).await;
                return None;
            }
            let j = Joining {
                n,
                ip,
                peer,
                stream,
                config,
                version,
                cookie,
                info,
                data_port,
                tree_port,
            };
            Some(Arrival::Slave(j))
        }
        Ok(Ok((_, Message::ProxyClient { node, creds, pid, rlimits, umask }))) => {
            if node != n {
                REFUSED.refuse(format_args!(
                    "node {n}: {peer} carried a client for node {node}; refused"
                ));
                return None;
            }
            if shared.table().get(n).is_none_or(|x| x.session.is_none()) {
                REFUSED.refuse(format_args!(
                    "node {n}: a client connection arrived while the node is down; refused"
                ));
                return None;
            }
            let inherited = bproc_sys::peer::Inherited { rlimits, umask };
            Some(Arrival::Client(Proxied { node: n, ip, creds, pid, inherited, stream }))
        }
        Ok(Ok((_, other))) => {
            REFUSED.refuse(format_args!(
                "node {n}: expected Join from {peer}, received {}",
                other.name()
            ));
            None
        }
        Ok(Err(e)) => {
            REFUSED.refuse(format_args!("node {n}: {peer}: {e}"));
            None
        }
        Err(_) => {
            REFUSED.refuse(format_args!("node {n}: {peer} sent no Join in time"));
            None
        }
    }
}

/// The node a connection comes from (number, IPv4 address), if its source may be one: an
/// address of the configuration's, from a reserved port unless `allowinsecureports`.
async fn check_source(
    shared: &Shared,
    config: &Config,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<(i32, Ipv4Addr)> {
    let ip = match peer.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => ip,
            None => {
                REFUSED.refuse(format_args!("connect from {peer}: IPv6 slaves are not supported"));
                return None;
            }
        },
    };
    // A refused slave is told why before the connection closes (the configuration's path
    // stays in the master's log).
    let Some(n) = config.node_for_addr(ip) else {
        shared.metrics.connection_rejected();
        REFUSED.refuse(format_args!(
            "connect from unrecognized address {ip}: no ip/iprange line of {} names it",
            config.path.display()
        ));
        let why = format!(
            "address {ip} is not a node of this cluster (no ip or iprange line of the master's \
             configuration names it)"
        );
        refuse(stream, why, true).await;
        return None;
    };
    if !config.allow_insecure_ports && peer.port() >= 1024 {
        shared.metrics.connection_rejected();
        REFUSED.refuse(format_args!(
            "node {n}: connection from {peer} refused: source port is not reserved \
             (start bpslave as root, or add `allowinsecureports` to {})",
            config.path.display()
        ));
        let why = format!(
            "node {n}: source port {} is not reserved (start bpslave as root, or allow it with \
             `allowinsecureports` in the master's configuration)",
            peer.port()
        );
        refuse(stream, why, true).await;
        return None;
    }
    Some((n, ip))
}

/// Serves a slave's link from its `Join` to its end: the session is opened (fresh, moved,
/// or resumed), frames are handled until the link ends, then the node goes down or
/// unreachable.
async fn serve_slave(shared: Arc<Shared>, joining: Joining) {
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = shared.conn_id();
    let (n, peer) = (joining.n, joining.peer);
    let (kind, cookie) = match open_session(&shared, &joining, conn, &tx) {
        Ok(j) => j,
        Err(reason) => {
            warn!("node {n}: {reason}");
            let mut stream = joining.stream;
            refuse(&mut stream, reason.to_string(), false).await;
            return;
        }
    };
    shared.notify();
    info!("node {n}: {kind:?} session from {peer} (slave {})", joining.version);
    if matches!(kind, JoinKind::Fresh | JoinKind::Replace) {
        tokio::spawn(node_up::node_up(shared.clone(), n, cookie));
    }
    let (rd, wr) = joining.stream.into_split();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(writer(wr, rx, done_tx, shared.sent_to_slaves.clone()));
    drop(tx);
    let reason = read_link(&shared, n, conn, rd, done_rx).await;
    link_ended(&shared, n, conn, reason);
}

/// Records the session `joining` opens on its node, over connection `conn` whose writer
/// `tx` feeds, and sends it its `CONF`; returns how it joined and the session's cookie, or
/// why it is refused.
fn open_session(
    shared: &Shared,
    joining: &Joining,
    conn: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
) -> Result<(JoinKind, u64), JoinError> {
    let n = joining.n;
    let mut t = shared.table();
    let kind = t.join_kind(n, joining.cookie)?;
    let node = t.get_mut(n).expect("join_kind checked the node");
    let mut session =
        Session { cookie: 0, conn, tx: tx.clone(), ping_in: 2, pending: HashMap::new() };
    match kind {
        JoinKind::Fresh | JoinKind::Replace => {
            let unreachable = node.unreachable_since.is_some();
            if let Some(old) = node.go_down() {
                disconnect(old, "replaced by a new session from a restarted slave", false);
                // The old daemon's processes are gone with it.
                shared.node_lost(n);
            } else if unreachable {
                // A slave that comes back without its session has killed its jobs.
                shared.node_lost(n);
            }
            session.cookie = new_cookie();
            node.state = "boot".into();
            node.mode = BOOT_MODE;
            node.saved = None;
        }
        JoinKind::Reconnect => {
            let mut old = node.session.take().expect("reconnect needs a live session");
            session.cookie = old.cookie;
            // The reply to the request that moved the link arrives on the new one.
            session.pending = std::mem::take(&mut old.pending);
            disconnect(old, "session moved to a new connection", false);
        }
        JoinKind::Resume => {
            let saved = node.saved.take().expect("resume needs a saved session");
            session.cookie = saved.cookie;
            node.state = saved.state;
            node.mode = saved.mode;
            node.uid = saved.uid;
            node.gid = saved.gid;
            node.attrs = saved.attrs;
            node.unreachable_since = None;
        }
    }
    node.addr = Some(joining.ip);
    node.data_port = joining.data_port;
    node.tree_port = joining.tree_port;
    node.info = Some(joining.info.clone());
    let cookie = session.cookie;
    node.session = Some(session);
    node.send(0, conf_for(n, cookie, &joining.config));
    Ok((kind, cookie))
}

/// The buffer a slave link's frames are read through: most frames fit in it, and a larger
/// body bypasses it.
const LINK_BUFFER: usize = 4 << 10;

/// Handles node `n`'s frames on connection `conn` until the link ends (`done` fires when
/// its writer stopped); returns how it ended.
async fn read_link(
    shared: &Shared,
    n: i32,
    conn: u64,
    rd: OwnedReadHalf,
    mut done: oneshot::Receiver<()>,
) -> Ended {
    // A frame in one read (its header and body, and any frames behind it), not three: one
    // buffer per node, where a buffer per client connection would cost the master as much
    // for each of thousands of ghosts.
    let mut rd = tokio::io::BufReader::with_capacity(LINK_BUFFER, rd);
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd) => f,
            _ = &mut done => return Ended::Left("link closed by the master".to_owned()),
        };
        match frame {
            Ok(Some((id, msg))) => {
                if let Some(reason) = on_frame(shared, n, conn, id, msg) {
                    return Ended::Left(reason);
                }
            }
            Ok(None) => return Ended::Left("connection closed by the slave".to_owned()),
            Err(LinkError::Io(e)) if slave_gone(&e) => {
                return Ended::Left(format!("connection lost: {e}"))
            }
            Err(LinkError::Io(e)) => return Ended::Cut(format!("connection lost: {e}")),
            Err(e) => return Ended::Left(format!("{e}")),
        }
    }
}

/// Node `n`'s link `conn` ended for `reason`: if it still carried the session, the node goes
/// down (its jobs reported lost) or unreachable (its jobs kept for the grace period), or,
/// while the master stops, keeps its session for the next master.
fn link_ended(shared: &Shared, n: i32, conn: u64, reason: Ended) {
    let went = {
        let mut t = shared.table();
        match t.get_mut(n) {
            Some(node) if node.session.as_ref().is_some_and(|s| s.conn == conn) => {
                if shared.stopping() {
                    // Keep the session for the next master to resume.
                    node.session.take();
                    None
                } else if matches!(reason, Ended::Cut(_)) {
                    node.go_unreachable();
                    Some(false)
                } else {
                    node.go_down();
                    Some(true)
                }
            }
            _ => None,
        }
    };
    match went {
        Some(true) => {
            shared.node_lost(n);
            warn!("node {n}: down: {reason}");
            shared.notify();
        }
        Some(false) => {
            warn!("node {n}: unreachable: {reason}; keeping its jobs for the grace period");
            shared.notify();
        }
        None => debug!("node {n}: connection {conn} ended: {reason}"),
    }
}

/// How a slave's link ended.
enum Ended {
    /// The slave left: it closed the connection, its kernel reset it (the daemon died), or
    /// it broke the protocol. Its processes are gone.
    Left(String),
    /// The network failed: the slave may still run, with its processes, and come back.
    Cut(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Left(r) | Ended::Cut(r) => f.write_str(r),
        }
    }
}

/// Whether a read error means the slave's end is gone (its kernel reset the connection),
/// rather than the network in between failing.
fn slave_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Handles one frame from a slave; returns a reason to end the link.
fn on_frame(shared: &Shared, n: i32, conn: u64, id: u32, msg: Message) -> Option<String> {
    let mut t = shared.table();
    let node = t.get_mut(n)?;
    let session = node.session.as_mut().filter(|s| s.conn == conn)?;
    match msg {
        Message::Pong { info, .. } => {
            session.ping_in = 2;
            node.info = Some(info);
        }
        Message::ProcEvent { pid, change } => {
            for (launch, rank, status) in shared.ghosts.event(n, pid, change) {
                shared.launches.exited(launch, rank, status);
            }
            send_for_node(shared, n, session);
        }
        Message::ForkAhead { seq, pid, comm } => {
            if let Some(ghost) = shared.ghosts.fork_ahead(n, pid, comm, seq) {
                let _ = session.tx.send(Outgoing::Frame(0, Message::ForkAheadReply { seq, ghost }));
            }
        }
        Message::SessionProcs { procs } => {
            // A restarted master learns the processes of a resumed session; those without
            // anyone left to follow them (a launch without ghosts) end.
            let (kill, ends) = shared.ghosts.resumed(n, procs);
            for pid in kill {
                let signal = nix::sys::signal::Signal::SIGKILL as i32;
                let msg = Message::SignalPid { pid, signal, sender: 0 };
                let _ = session.tx.send(Outgoing::Frame(0, msg));
            }
            for (launch, rank, status) in ends {
                shared.launches.exited(launch, rank, status);
            }
            send_for_node(shared, n, session);
        }
        Message::RankRefused { launch, rank, reason } => {
            shared.launches.rank_refused(n, launch, rank, reason);
        }
        Message::RankSpawned { launch, rank, pid } => {
            if let Some((ghost, uid, output)) = shared.launches.rank_spawned(launch, rank, pid) {
                if pid > 0 {
                    for (launch, rank, status) in
                        shared.ghosts.started(n, pid, (launch, rank), ghost, uid, output)
                    {
                        shared.launches.exited(launch, rank, status);
                    }
                    // What its ghost left for the start: signals, or a kill.
                    send_for_node(shared, n, session);
                } else {
                    shared.ghosts.abandon(ghost);
                }
            }
        }
        reply @ (Message::Ok
        | Message::Error { .. }
        | Message::CopyResult { .. }
        | Message::ProcStats { .. }) => {
            if let Some(waiter) = session.pending.remove(&id) {
                let _ = waiter.send(reply);
            }
        }
        Message::Disconnect { reason, .. } => return Some(format!("slave disconnected: {reason}")),
        Message::Unknown { msg_type } => {
            let _ = session.tx.send(Outgoing::Frame(
                id,
                Message::Error {
                    code: ENOSYS,
                    message: format!("unknown message type {msg_type}"),
                },
            ));
        }
        other => {
            let _ = session.tx.send(Outgoing::Frame(
                id,
                Message::Error {
                    code: EPROTO,
                    message: format!("{} is not valid from a slave", other.name()),
                },
            ));
        }
    }
    None
}

/// Sends node `n` what the ghost table made for it ([`crate::ghosts::Ghosts::take_for_node`]).
fn send_for_node(shared: &Shared, n: i32, session: &crate::table::Session) {
    for msg in shared.ghosts.take_for_node(n) {
        let _ = session.tx.send(Outgoing::Frame(0, msg));
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    done: oneshot::Sender<()>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Frame(id, msg) => {
                let bytes = bproc_proto::encode(id, &msg);
                sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Outgoing::Close(reason, reconnect) => {
                let _ = write_frame(&mut wr, 0, &Message::Disconnect { reason, reconnect }).await;
                break;
            }
        }
    }
    let _ = done.send(());
}

/// Pings every connected slave each `pingtimeout / 2`; a slave that answered none of the
/// last two pings is unreachable (detection within 1–1.5 × pingtimeout, as BProc's): its
/// session and jobs are kept for `graceperiod`. A session unreachable for longer than
/// `graceperiod + pingtimeout` is given up and its jobs are reported lost; by then the
/// slave, which counts the grace period from its own last ping (at most `pingtimeout`
/// after the master's last pong), has killed them itself. So a job is never both reported
/// lost and still running.
pub(crate) async fn ping_loop(shared: Arc<Shared>) {
    let mut seq = 0u64;
    loop {
        let config = shared.config();
        let period = Duration::from_millis(u64::from(config.ping_timeout) * 500);
        let give_up = Duration::from_secs(u64::from(config.grace) + u64::from(config.ping_timeout));
        drop(config);
        tokio::time::sleep(period).await;
        seq += 1;
        let mut lost = Vec::new();
        let mut unreachable = Vec::new();
        {
            let mut t = shared.table();
            for node in t.iter_mut() {
                if node.unreachable_since.is_some_and(|t| t.elapsed() > give_up) {
                    node.forget_saved();
                    lost.push(node.number);
                    continue;
                }
                let Some(s) = node.session.as_mut() else {
                    continue;
                };
                if s.ping_in == 0 {
                    unreachable.push(node.number);
                    if let Some(s) = node.go_unreachable() {
                        disconnect(s, "ping timeout", true);
                    }
                } else {
                    s.ping_in -= 1;
                    let _ = s.tx.send(Outgoing::Frame(0, Message::Ping { seq, time_ms: now_ms() }));
                }
            }
        }
        for n in &unreachable {
            warn!("node {n}: unreachable: ping timeout; keeping its jobs for the grace period");
        }
        for n in &lost {
            shared.node_lost(*n);
            warn!(
                "node {n}: down: unreachable for longer than the grace period ({} s)",
                give_up.as_secs()
            );
        }
        if !lost.is_empty() || !unreachable.is_empty() {
            shared.notify();
        }
    }
}
