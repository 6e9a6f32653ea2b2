//! The bpslave daemon as a library: connect to the master, prove the cluster key, join,
//! answer pings with machine reports, and carry out node commands.
//!
//! # Sessions
//! The master gives each session a cookie. A slave that loses its master keeps the cookie for
//! a grace period and presents it when it reconnects (`-r`), so a master restart or a network
//! blip resumes the session (state and permissions kept) instead of rebooting the node. After
//! the grace period the slave starts afresh with cookie 0 and the node boots again.
//!
//! The master's configuration sets the grace period (`graceperiod`, in `Conf`; `--grace`
//! until the first `Conf`). Once the slave has been without its master for that long it kills
//! the master's processes itself (self-fencing), since by then the master reports them lost;
//! and a master that answers with a new session instead of resuming the old one gets no old
//! processes either. A resumed session starts with `SessionProcs`, the processes the slave
//! runs, so that a restarted master rebuilds its process table.
//!
//! # Concurrency
//! One current-thread tokio runtime; one link at a time. Everything the slave does in answer
//! to the master is quick, so the link loop handles each frame inline.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod forks;
mod info;
pub mod isolate;
mod master_arg;
pub mod procs;
mod proxy;
mod tree;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bproc_link::{expect_frame, read_frame, slave_handshake, write_frame, ClusterKey, LinkError};
use bproc_proto::errno::{ENOSYS, EPROTO};
use bproc_proto::{Endpoint, Message, NodeAction};
use thiserror::Error;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use info::node_info;
pub use master_arg::{master_address, MasterArgError};
pub use procs::Authority;

pub use bproc_link::DEFAULT_KEYFILE;
pub use bproc_proto::DEFAULT_PORT;
/// Software version sent in the join.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors that stop the slave.
#[derive(Debug, Error)]
pub enum SlaveError {
    /// The master cannot be reached or the link failed (without `-r`).
    #[error("master {addr}")]
    Link {
        /// Master address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: LinkError,
    },
    /// The master ended the session and asked us not to come back.
    #[error("master {addr} closed the session: {reason}")]
    Dismissed {
        /// Master address.
        addr: SocketAddr,
        /// The master's reason.
        reason: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// Another daemon serves the node's client socket (another slave on this host): this one
    /// would send its node's programs to that one.
    #[error(
        "the node's client socket {} is served by another daemon{}; stop it, or give this \
         slave a socket of its own with --client-socket PATH",
        path.display(),
        if *pid > 0 { format!(" (pid {pid})") } else { String::new() }
    )]
    ClientSocketTaken {
        /// The socket.
        path: std::path::PathBuf,
        /// The daemon serving it (0 if unknown).
        pid: i32,
    },
}

/// How the slave runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Master address.
    pub master: SocketAddrV4,
    /// Local address to connect from (`-s`).
    pub source: Option<Ipv4Addr>,
    /// Reconnect after losing the master (`-r`).
    pub reconnect: bool,
    /// The cluster key.
    pub key: ClusterKey,
    /// How long a lost session's cookie is kept for resuming.
    pub grace: Duration,
    /// Command run for `bpctl -R`; without one the daemon starts a new session.
    pub reboot_cmd: Option<String>,
    /// Command run for `bpctl -H`; without one the daemon exits.
    pub halt_cmd: Option<String>,
    /// Command run for `bpctl -P`; without one the daemon exits.
    pub poweroff_cmd: Option<String>,
    /// Whose processes this daemon may run.
    pub authority: Authority,
    /// The node's own filesystem, when it is diskless.
    pub diskless: Option<isolate::Diskless>,
    /// The node's client socket as its processes see it (`$BPROC_SOCKET` on the node);
    /// inside the diskless root when there is one.
    pub client_socket: Option<std::path::PathBuf>,
}

impl Options {
    /// Options with defaults for everything but the master address and the key.
    pub fn new(master: SocketAddrV4, key: ClusterKey) -> Self {
        Options {
            master,
            key,
            source: None,
            reconnect: false,
            grace: Duration::from_secs(60),
            reboot_cmd: None,
            halt_cmd: None,
            poweroff_cmd: None,
            authority: Authority {
                root: nix::unistd::geteuid().is_root(),
                uid: nix::unistd::geteuid().as_raw(),
            },
            diskless: None,
            client_socket: None,
        }
    }

    /// Where the client socket file is created: inside the diskless root, if any.
    fn client_socket_file(&self) -> Option<std::path::PathBuf> {
        let p = self.client_socket.as_ref()?;
        Some(match &self.diskless {
            Some(d) => d.root.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.clone(),
        })
    }
}

/// The data service and the tree port, opened on the address of the first link.
struct Data {
    copy: std::sync::OnceLock<bproc_copy::service::DataService>,
    tree_port: std::sync::OnceLock<u16>,
    tree: Arc<tree::Ctx>,
    /// The grace period in seconds, as the master last said.
    grace: std::sync::atomic::AtomicU64,
}

impl Data {
    fn new(tree: Arc<tree::Ctx>, grace: Duration) -> Self {
        Data {
            copy: Default::default(),
            tree_port: Default::default(),
            tree,
            grace: std::sync::atomic::AtomicU64::new(grace.as_secs().max(1)),
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.grace.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn set_grace(&self, secs: u32) {
        self.grace.store(u64::from(secs.max(1)), std::sync::atomic::Ordering::Relaxed);
    }

    /// The tree port, opened on `ip` the first time (0 if it cannot be).
    fn tree_port_for(&self, ip: Ipv4Addr) -> u16 {
        *self.tree_port.get_or_init(|| {
            let listener = std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std);
            match listener {
                Ok(l) => {
                    let port = l.local_addr().map_or(0, |a| a.port());
                    tokio::spawn(tree::serve(l, self.tree.clone()));
                    port
                }
                Err(e) => {
                    warn!("cannot open the tree port on {ip}: {e}; launches reach this node only from the master");
                    0
                }
            }
        })
    }

    fn port_for(&self, ip: Ipv4Addr, opts: &Options) -> u16 {
        if let Some(d) = self.copy.get() {
            return d.port();
        }
        let authority =
            bproc_copy::service::Authority { root: opts.authority.root, uid: opts.authority.uid };
        let jail = opts.diskless.as_ref().map(|d| d.root.clone());
        match bproc_copy::service::DataService::start(ip, authority, jail) {
            Ok(d) => self.copy.get_or_init(|| d).port(),
            Err(e) => {
                warn!("cannot open the data port on {ip}: {e}; copies to this node will fail");
                0
            }
        }
    }
}

/// How one link ended.
enum End {
    Action(NodeAction),
    Lost(LinkError),
    Dismissed(String),
}

/// Connects from a reserved port when we may (BProc's `bindresvport`), else from any port.
pub(crate) async fn connect(
    master: SocketAddrV4,
    source: Option<Ipv4Addr>,
) -> Result<TcpStream, LinkError> {
    let src_ip = source.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let privileged = nix::unistd::geteuid().is_root();
    let ports: Box<dyn Iterator<Item = u16> + Send> =
        if privileged { Box::new((600..1024).rev().chain([0])) } else { Box::new([0].into_iter()) };
    let mut last = None;
    for port in ports {
        let sock = TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        match sock.bind(SocketAddr::V4(SocketAddrV4::new(src_ip, port))) {
            Ok(()) => {}
            Err(e) if port != 0 => {
                // Taken, or no right to reserved ports in this namespace: try the next.
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        match tokio::time::timeout(Duration::from_secs(10), sock.connect(master.into())).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrNotAvailable && port != 0 => {
                // This 4-tuple is still in TIME_WAIT from an earlier link.
                last = Some(e);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(LinkError::Timeout("connect")),
        }
    }
    Err(last.map_or(LinkError::Closed, LinkError::Io))
}

/// A joined link, not yet split into its reading and writing halves.
struct Link {
    stream: TcpStream,
    master: SocketAddrV4,
    node: i32,
    ping_timeout: Duration,
}

/// Frames to the master, over whichever link is current. Tasks that outlive a link (a
/// process reporting its exit) send here; frames sent while no link is up are held and go
/// out on the next one.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<OutboxState>>);

/// The current link's writer, and frames held while there is none.
#[derive(Default)]
struct OutboxState {
    link: Option<mpsc::UnboundedSender<(u32, Message)>>,
    held: Vec<(u32, Message)>,
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn send(&self, id: u32, msg: Message) {
        let mut g = self.state();
        match &g.link {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send((id, msg));
            }
            _ => g.held.push((id, msg)),
        }
    }
    fn attach(&self, tx: mpsc::UnboundedSender<(u32, Message)>) {
        let mut g = self.state();
        for (id, msg) in g.held.drain(..) {
            let _ = tx.send((id, msg));
        }
        g.link = Some(tx);
    }
    fn detach(&self) {
        self.state().link = None;
    }
    /// The processes whose end is held, not yet reported.
    fn held_exits(&self) -> Vec<i32> {
        let g = self.state();
        g.held
            .iter()
            .filter_map(|(_, m)| match m {
                Message::ProcEvent { pid, change: bproc_proto::ProcChange::Exited(_) } => {
                    Some(*pid)
                }
                _ => None,
            })
            .collect()
    }
    /// Drops what was held for a session that is gone.
    fn drop_held(&self) {
        self.state().held.clear();
    }
}

async fn writer(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<(u32, Message)>) {
    while let Some((id, msg)) = rx.recv().await {
        if write_frame(&mut wr, id, &msg).await.is_err() {
            break;
        }
    }
    // The connection closes with its read half, which a lost link keeps (see serve_link).
    wr.forget();
}

/// Splits a joined link: its writer serves `outbox` from now on.
fn attach(link: Link, outbox: &Outbox) -> (OwnedReadHalf, SocketAddrV4, i32, Duration, Ipv4Addr) {
    let local = match link.stream.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let (rd, wr) = link.stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(wr, rx));
    outbox.attach(tx);
    (rd, link.master, link.node, link.ping_timeout, local)
}

async fn open_link(
    opts: &Options,
    data: &Data,
    master: SocketAddrV4,
    source: Option<Ipv4Addr>,
    cookie: &mut u64,
) -> Result<Link, End> {
    let key = &opts.key;
    let mut stream = connect(master, source).await.map_err(End::Lost)?;
    let local = match stream.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::LOCALHOST,
    };
    let data_port = data.port_for(local, opts);
    let tree_port = data.tree_port_for(local);
    slave_handshake(&mut stream, key).await.map_err(|e| match e {
        LinkError::Refused(r) => End::Dismissed(r),
        e => End::Lost(e),
    })?;
    let join = Message::Join {
        version: SOFTWARE_VERSION.into(),
        cookie: *cookie,
        info: node_info(),
        data_port,
        tree_port,
    };
    write_frame(&mut stream, 0, &join).await.map_err(End::Lost)?;
    match tokio::time::timeout(bproc_link::HANDSHAKE_TIMEOUT, expect_frame(&mut stream)).await {
        Ok(Ok((_, Message::Conf { node, cookie: c, ping_timeout, time_ms, grace }))) => {
            tree::master_time(time_ms);
            data.set_grace(grace);
            if *cookie != 0 && c != *cookie {
                // The master did not keep the old session: its processes are not the master's
                // any more, and it reports them lost.
                info!("the master started a new session; killing the old session's processes");
                fence(data);
            } else if *cookie != 0 {
                let (procs, again) = data.tree.procs.session_procs(&data.tree.outbox.held_exits());
                write_frame(&mut stream, 0, &Message::SessionProcs { procs })
                    .await
                    .map_err(End::Lost)?;
                // Ends the old link may have lost (a master that restarted never saw them).
                for (pid, end) in again {
                    let change = bproc_proto::ProcChange::Exited(end);
                    write_frame(&mut stream, 0, &Message::ProcEvent { pid, change })
                        .await
                        .map_err(End::Lost)?;
                }
            }
            *cookie = c;
            Ok(Link {
                stream,
                master,
                node,
                ping_timeout: Duration::from_secs(ping_timeout.max(2).into()),
            })
        }
        Ok(Ok((_, Message::Disconnect { reason, .. }))) => Err(End::Dismissed(reason)),
        Ok(Ok((_, other))) => {
            Err(End::Lost(LinkError::Unexpected { expected: "Conf", received: other.name() }))
        }
        Ok(Err(e)) => Err(End::Lost(e)),
        Err(_) => Err(End::Lost(LinkError::Timeout("join"))),
    }
}

fn error_reply(code: i32, message: String) -> Message {
    Message::Error { code, message }
}

/// The node's root after `bpctl -r` (BProc's `bproc_nodechroot`), as a path from the root the
/// slave started with; `None` until then. Process-wide, as the chroot itself is.
static NODE_ROOT: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Where the node's processes are confined: the root `bpctl -r` gave the node, as a path
/// from the slave's original root, which its spawner thread still has (it left the daemon's
/// shared filesystem context before any chroot).
pub(crate) fn node_root() -> Option<std::path::PathBuf> {
    NODE_ROOT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Changes the daemon's root (its copies see it) and records it for the processes it starts,
/// which are chrooted there too.
fn chroot(path: &str) -> Message {
    // Where `path` is from the original root: resolved before the chroot, below any earlier one.
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(bproc_proto::errno::EIO);
            return error_reply(
                code,
                format!("chroot {path}: {}", nix::errno::Errno::from_raw(code).desc()),
            );
        }
    };
    match nix::unistd::chroot(&real).and_then(|()| nix::unistd::chdir("/")) {
        Ok(()) => {
            let mut root = NODE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
            let below = real.strip_prefix("/").unwrap_or(&real);
            let now = root.as_deref().unwrap_or(std::path::Path::new("/")).join(below);
            info!("changed root to {path} ({} from the original root)", now.display());
            *root = Some(now);
            Message::Ok
        }
        Err(e) => error_reply(e as i32, format!("chroot {path}: {}", e.desc())),
    }
}

/// Serves one session over `link` (and the links it moves to) until it ends. Returns the
/// link's read half too, which holds the connection open: a link given up for silence (a
/// network fault) must not close before the next one has joined, or the master, reading
/// the close first, would take the node for dead and report its jobs lost.
#[allow(clippy::too_many_arguments)]
async fn serve_link(
    opts: &Options,
    link: Link,
    cookie: &mut u64,
    outbox: &Outbox,
    procs: &procs::Procs,
    data: &Data,
    state: &proxy::LinkState,
) -> (End, OwnedReadHalf) {
    let (mut rd, mut master, mut node, mut ping_timeout, mut local) = attach(link, outbox);
    state.set(Some(proxy::Current { master, local, node }));
    let end = loop {
        let frame = tokio::time::timeout(ping_timeout, read_frame(&mut rd)).await;
        let (id, msg) = match frame {
            Err(_) => break End::Lost(LinkError::Timeout("ping: no ping from the master")),
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => break End::Lost(LinkError::Closed),
            Ok(Err(e)) => break End::Lost(e),
        };
        let reply = match msg {
            Message::Ping { seq, time_ms } => {
                tree::master_time(time_ms);
                Some(Message::Pong { seq, info: node_info() })
            }
            Message::Conf { node: n, cookie: c, ping_timeout: pt, time_ms, grace } => {
                tree::master_time(time_ms);
                data.set_grace(grace);
                if n != node {
                    info!("master renumbered this node from {node} to {n}");
                }
                node = n;
                state.set(Some(proxy::Current { master, local, node }));
                *cookie = c;
                ping_timeout = Duration::from_secs(pt.max(2).into());
                None
            }
            Message::Action { action } => break End::Action(action),
            Message::SlaveChroot { path } => Some(chroot(&path)),
            Message::StageFiles { port, token, files } => {
                let (outbox, diskless, master_ip) =
                    (outbox.clone(), opts.diskless.clone(), *master.ip());
                tokio::spawn(async move {
                    // A node with a filesystem of its own already has the master's files.
                    let reply = match &diskless {
                        None => Message::Ok,
                        Some(d) => {
                            let spec = bproc_proto::ProcSpec {
                                io_port: port,
                                token,
                                files,
                                ..Default::default()
                            };
                            let source = procs::Source::Launcher;
                            match procs::stage(d, &source, master_ip, &spec, u32::MAX).await {
                                Ok(()) => {
                                    outbox.send(0, Message::Pong { seq: 0, info: node_info() });
                                    Message::Ok
                                }
                                Err(e) => {
                                    warn!("staging the master's libraries: {e}");
                                    error_reply(bproc_proto::errno::EIO, e.to_string())
                                }
                            }
                        }
                    };
                    outbox.send(id, reply);
                });
                None
            }
            Message::SignalProc { launch, rank, signal } => {
                procs.signal(launch, rank, signal);
                None
            }
            Message::SignalPid { pid, signal, sender } => {
                procs.signal_pid(pid, signal, sender);
                None
            }
            Message::GhostOf { pid, ghost } => {
                procs.set_ghost(pid, ghost);
                None
            }
            Message::ForkAheadReply { seq, ghost } => {
                procs.fork_ahead_reply(seq, ghost);
                None
            }
            Message::ProcStatQuery { pids } => Some(Message::ProcStats {
                stats: pids.into_iter().filter_map(procs::stat).collect(),
            }),
            Message::SpawnTree { launch, nonce, time_ms, size, creds, spec, width, entries } => {
                let l = tree::Launch { launch, nonce, time_ms, size, creds, spec, width };
                tree::run(data.tree.clone(), l, entries, procs::Source::Launcher);
                None
            }
            Message::CopyOrder { creds, cwd, opts: copy_opts, task } => match data.copy.get() {
                Some(d) => {
                    let outbox = outbox.clone();
                    d.run_order(creds, cwd, copy_opts, task, *master.ip(), move |m| {
                        outbox.send(id, m)
                    });
                    None
                }
                None => Some(error_reply(
                    bproc_proto::errno::EIO,
                    "this node's data port could not be opened".into(),
                )),
            },
            Message::SlaveReconnect { master: m, local: l } => {
                match reconnect(opts, data, master, local, m, l, cookie).await {
                    Ok(new) => {
                        info!("session moved to a new link to {}", new.master);
                        (rd, master, node, ping_timeout, local) = attach(new, outbox);
                        state.set(Some(proxy::Current { master, local, node }));
                        Some(Message::Ok)
                    }
                    Err(e) => Some(error_reply(bproc_proto::errno::EIO, e)),
                }
            }
            Message::Disconnect { reason, reconnect } => {
                break if reconnect {
                    End::Lost(LinkError::Refused(reason))
                } else {
                    End::Dismissed(reason)
                };
            }
            Message::Unknown { msg_type } => {
                Some(error_reply(ENOSYS, format!("unknown message type {msg_type}")))
            }
            other => {
                Some(error_reply(EPROTO, format!("{} is not valid from a master", other.name())))
            }
        };
        if let Some(reply) = reply {
            outbox.send(id, reply);
        }
    };
    outbox.detach();
    state.set(None);
    (end, rd)
}

/// Opens a second link for the same session (`bpctl --reconnect`); omitted parts of the
/// endpoints keep the current link's values.
async fn reconnect(
    opts: &Options,
    data: &Data,
    current: SocketAddrV4,
    current_local: Ipv4Addr,
    master: Endpoint,
    local: Endpoint,
    cookie: &mut u64,
) -> Result<Link, String> {
    let target = SocketAddrV4::new(
        master.ip.unwrap_or(*current.ip()),
        if master.port == 0 { current.port() } else { master.port },
    );
    let source = local.ip.or(opts.source).or(Some(current_local));
    match open_link(opts, data, target, source, cookie).await {
        Ok(l) => Ok(l),
        Err(End::Lost(e)) => Err(format!("reconnect to {target}: {e}")),
        Err(End::Dismissed(r)) => Err(format!("reconnect to {target}: refused: {r}")),
        Err(End::Action(_)) => Err("reconnect interrupted".into()),
    }
}

fn run_command(what: &str, cmd: &str) {
    info!("{what}: running `{cmd}`");
    match std::process::Command::new("/bin/sh").arg("-c").arg(cmd).status() {
        Ok(s) if s.success() => {}
        Ok(s) => warn!("{what} command `{cmd}` failed: {s}"),
        Err(e) => warn!("{what} command `{cmd}` could not run: {e}"),
    }
}

/// Runs the slave until it is told to stop, or, without `-r`, until the link ends.
///
/// `on_ready` is called once the daemon is set up and its first attempt to join the master
/// is over: joined, or, with `-r`, failed and to be retried (a node may boot before its
/// master). A first attempt that fails for good ends `run` with the error instead.
pub async fn run(opts: Options, on_ready: impl FnOnce()) -> Result<(), SlaveError> {
    let key = opts.key.clone();
    // First, before anything is started: a socket another daemon serves stays its own.
    let client_socket = match opts.client_socket_file() {
        Some(file) => match proxy::bind(&file) {
            Ok(l) => Some(l),
            Err(proxy::BindError::Served(pid)) => {
                return Err(SlaveError::ClientSocketTaken { path: file, pid })
            }
            Err(proxy::BindError::Io(e)) => {
                warn!(
                    "cannot open the node's client socket {}: {e}; programs on this node cannot use the cluster",
                    file.display()
                );
                None
            }
        },
        None => None,
    };
    let outbox = Outbox::default();
    let procs = {
        let outbox = outbox.clone();
        procs::Procs::new(move |m| outbox.send(0, m), opts.authority.root, opts.diskless.as_ref())
    };
    tokio::spawn(procs.clone().follow());
    // The end of a flood of refused connections is reported even if nothing follows it.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(bproc_link::guard::REFUSAL_INTERVAL);
        loop {
            tick.tick().await;
            tree::REFUSED.flush();
        }
    });
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(mut sigchld) => {
            let procs = procs.clone();
            tokio::spawn(async move {
                while sigchld.recv().await.is_some() {
                    procs.reap();
                }
            });
        }
        Err(e) => warn!("cannot watch SIGCHLD ({e}): process exits will not be reported"),
    }
    let state = proxy::LinkState::default();
    let data = Data::new(
        Arc::new(tree::Ctx {
            opts: opts.clone(),
            procs: procs.clone(),
            outbox: outbox.clone(),
            link: state.clone(),
        }),
        opts.grace,
    );
    if let Some(l) = client_socket {
        tokio::spawn(proxy::serve(l, key.clone(), state.clone()));
    }
    let result = run_sessions(&opts, &outbox, &procs, &data, &state, on_ready).await;
    // Leaving the master for good: its processes go too (BProc's slave reset).
    procs.kill_all();
    result
}

/// Kills the processes of a session that is over, with what was held to report about them.
fn fence(data: &Data) {
    data.tree.procs.kill_all();
    data.tree.outbox.drop_held();
}

async fn run_sessions(
    opts: &Options,
    outbox: &Outbox,
    procs: &procs::Procs,
    data: &Data,
    state: &proxy::LinkState,
    on_ready: impl FnOnce(),
) -> Result<(), SlaveError> {
    let mut on_ready = Some(on_ready);
    let mut cookie = 0u64;
    let mut master = opts.master;
    let mut backoff = Duration::from_millis(100);
    let mut lost_since: Option<Instant> = None;
    // The last link, lost for silence, kept open until a new one joins (see serve_link).
    let mut old_link: Option<OwnedReadHalf> = None;
    loop {
        // While the session may still be resumed, no attempt outlasts the grace period.
        let fence_at = lost_since.filter(|_| cookie != 0).map(|t| t + data.grace());
        let attempt = open_link(opts, data, master, opts.source, &mut cookie);
        let opened = match fence_at {
            Some(at) => tokio::time::timeout_at(at.into(), attempt)
                .await
                .unwrap_or(Err(End::Lost(LinkError::Timeout("connect")))),
            None => attempt.await,
        };
        let end = match opened {
            Ok(link) => {
                info!("connected to master {} as node {}", link.master, link.node);
                drop(old_link.take());
                master = link.master;
                backoff = Duration::from_millis(100);
                lost_since = None;
                if let Some(ready) = on_ready.take() {
                    ready();
                }
                let (end, rd) =
                    serve_link(opts, link, &mut cookie, outbox, procs, data, state).await;
                old_link = Some(rd);
                end
            }
            Err(end) => end,
        };
        match end {
            End::Action(action) => {
                let cmd = match action {
                    NodeAction::Reboot => &opts.reboot_cmd,
                    NodeAction::Halt => &opts.halt_cmd,
                    NodeAction::Poweroff => &opts.poweroff_cmd,
                };
                match (action, cmd) {
                    (_, Some(cmd)) => {
                        run_command(action.name(), cmd);
                        return Ok(());
                    }
                    (NodeAction::Reboot, None) => {
                        // A virtual node's reboot: drop the session and join again afresh,
                        // as a rebooted machine's new daemon would.
                        info!("reboot: starting a new session");
                        procs.kill_all();
                        cookie = 0;
                    }
                    (_, None) => {
                        info!("{}: stopping the slave daemon", action.name());
                        return Ok(());
                    }
                }
            }
            End::Dismissed(reason) => {
                return Err(SlaveError::Dismissed { addr: master.into(), reason });
            }
            End::Lost(e) => {
                if !opts.reconnect {
                    return Err(SlaveError::Link { addr: master.into(), source: e });
                }
                let since = *lost_since.get_or_insert_with(Instant::now);
                let grace = data.grace();
                if cookie != 0 && since.elapsed() >= grace {
                    // Self-fencing, BProc's slave reset: the master now reports this node's
                    // jobs lost, so they must not run on.
                    warn!(
                        "master {master} gone for {} s (the grace period): killing its processes, starting a new session",
                        grace.as_secs()
                    );
                    fence(data);
                    cookie = 0;
                    drop(old_link.take());
                }
                warn!("master {master}: {e}; retrying in {backoff:?}");
                if let Some(ready) = on_ready.take() {
                    ready();
                }
                let wait = match cookie {
                    0 => backoff,
                    _ => backoff.min((since + grace).saturating_duration_since(Instant::now())),
                };
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs [`run`] on a new current-thread runtime, with the soft limit on open files raised to
/// the hard limit (every connection costs one).
pub fn serve(opts: Options, on_ready: impl FnOnce()) -> Result<(), SlaveError> {
    if let Err(e) = bproc_sys::raise_fd_limit() {
        warn!("cannot raise the limit on open files: {e}");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SlaveError::Runtime)?
        .block_on(run(opts, on_ready))
}
