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
mod kept;
mod master_arg;
pub mod procs;
mod proxy;
mod session;
mod tree;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bproc_link::{expect_frame, slave_handshake, write_frame, ClusterKey, LinkError};
use bproc_proto::{Message, NodeAction};
use nix::sys::socket::MsgFlags;
use thiserror::Error;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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
    /// The hub of this machine's process events, shared by its slaves (a virtual cluster's),
    /// instead of a subscription of this slave's own.
    pub event_hub: Option<std::path::PathBuf>,
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
            event_hub: None,
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
                .inspect(|l| {
                    // A parent connects and sends its part at once: one wake-up for both.
                    use std::os::fd::AsFd;
                    if let Err(e) = bproc_sys::defer_accept(l.as_fd(), TREE_DEFER_SECS) {
                        debug!("tree port: TCP_DEFER_ACCEPT: {e}");
                    }
                })
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
/// out on the next one. Any thread sends without waking the runtime: a frame goes straight
/// into the socket when nothing is queued before it, else to the link's writer task.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<OutboxState>>);

/// The current link's writer, and frames held while there is none.
#[derive(Default)]
struct OutboxState {
    link: Option<LinkOut>,
    held: Vec<(u32, Message)>,
}

/// The current link's sending side.
struct LinkOut {
    /// Bytes for the writer task, which sends them in order.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Queued frames the writer has not written whole yet: while there are any, a frame
    /// joins the queue behind them.
    queued: Arc<AtomicUsize>,
    /// The link's socket. It stays open while this is the current link: the outbox lets go
    /// of it ([`Outbox::attach`], [`Outbox::detach`]) before its read half, which holds the
    /// connection, is dropped.
    fd: std::os::fd::RawFd,
}

impl LinkOut {
    fn send(&self, mut frame: Vec<u8>) {
        if self.queued.load(Ordering::Acquire) == 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match nix::sys::socket::send(self.fd, &frame, flags) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => drop(frame.drain(..n)),
                // A full socket (the writer waits for room) or a failed link (which the
                // writer and the reader find too).
                Err(_) => {}
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn send(&self, id: u32, msg: Message) {
        let mut g = self.state();
        match &g.link {
            Some(out) if !out.tx.is_closed() => out.send(bproc_proto::encode(id, &msg)),
            _ => g.held.push((id, msg)),
        }
    }
    fn attach(&self, out: LinkOut) {
        let mut g = self.state();
        for (id, msg) in std::mem::take(&mut g.held) {
            out.send(bproc_proto::encode(id, &msg));
        }
        g.link = Some(out);
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

/// Sends what the outbox queued, in order, what is queued together in one write.
async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(mut out) = rx.recv().await {
        let mut frames = 1;
        while out.len() < 64 << 10 {
            let Ok(more) = rx.try_recv() else { break };
            out.extend_from_slice(&more);
            frames += 1;
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        queued.fetch_sub(frames, Ordering::AcqRel);
    }
    // The connection closes with its read half, which a lost link keeps (see serve_link).
    wr.forget();
}

/// Splits a joined link: its writer serves `outbox` from now on.
fn attach(link: Link, outbox: &Outbox) -> (OwnedReadHalf, SocketAddrV4, i32, Duration, Ipv4Addr) {
    use std::os::fd::AsRawFd;
    let local = match link.stream.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let fd = link.stream.as_raw_fd();
    let (rd, wr) = link.stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    tokio::spawn(writer(wr, rx, queued.clone()));
    outbox.attach(LinkOut { tx, queued, fd });
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

/// How long the tree port holds a connection that has sent nothing before handing it over
/// anyway (then the part's own deadline applies).
const TREE_DEFER_SECS: u32 = 5;

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
    // The node's processes get /dev/null from outside the new root, which may lack it.
    if let Err(e) = procs::null_device() {
        warn!("cannot open /dev/null before changing root: {e}");
    }
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

/// Starts the thread that reaps the slave's children at each SIGCHLD, so that the runtime
/// is not woken for a launch's process that ends (that wakeup cost a leaf node's runtime as
/// much as the launch itself). [`serve`] blocks the signal in every thread; this one reads it
/// ([`bproc_sys::ChildSignals`]).
fn reaper(mut signals: bproc_sys::ChildSignals, procs: procs::Procs) -> std::io::Result<()> {
    std::thread::Builder::new().name("reaper".into()).spawn(move || {
        // Read, not handled, also if this thread was started with it unblocked.
        let _ = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGCHLD).thread_block();
        while signals.wait().is_ok() {
            procs.child_signal();
        }
    })?;
    Ok(())
}

fn run_command(what: &str, cmd: &str) {
    info!("{what}: running `{cmd}`");
    let mut sh = std::process::Command::new("/bin/sh");
    // Not with the daemon's blocked SIGCHLD.
    bproc_sys::unblock_signals_in(&mut sh);
    match sh.arg("-c").arg(cmd).status() {
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
pub async fn run(mut opts: Options, on_ready: impl FnOnce()) -> Result<(), SlaveError> {
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
                // Nor are they pointed at a path another daemon may have taken meanwhile.
                opts.client_socket = None;
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
    tokio::spawn(procs.clone().follow(opts.event_hub.clone()));
    // The end of a flood of refused connections is reported even if nothing follows it.
    tokio::spawn(tree::REFUSED.flush_when_due());
    // Not a restore's traced stops: its thread waits for those itself (see `Procs::restore`).
    match bproc_sys::child_signals().and_then(|s| reaper(s, procs.clone())) {
        Ok(()) => {}
        Err(e) => warn!("cannot watch SIGCHLD ({e}): process exits will not be reported"),
    }
    let state = proxy::LinkState::default();
    let data = Data::new(
        Arc::new(tree::Ctx {
            opts: opts.clone(),
            procs: procs.clone(),
            outbox: outbox.clone(),
            link: state.clone(),
            kept: kept::Kept::default(),
        }),
        opts.grace,
    );
    if let Some(l) = client_socket {
        tokio::spawn(proxy::serve(l, key.clone(), state.clone()));
    }
    let daemon =
        session::Daemon { opts: &opts, outbox: &outbox, procs: &procs, data: &data, state: &state };
    let result = run_sessions(&daemon, on_ready).await;
    // Leaving the master for good: its processes go too (BProc's slave reset).
    procs.kill_all();
    result
}

/// Kills the processes of a session that is over, with what was held to report about them.
fn fence(data: &Data) {
    data.tree.procs.kill_all();
    data.tree.outbox.drop_held();
}

/// The daemon's sessions, one after another, with what carries over from one to the next.
struct Sessions<F> {
    /// Called once the first attempt to join is over.
    on_ready: Option<F>,
    /// The session's cookie (0: none to resume).
    cookie: u64,
    /// The master's address (the last link's).
    master: SocketAddrV4,
    /// How long to wait before the next attempt.
    backoff: Duration,
    /// When the master was lost, while it is.
    lost_since: Option<Instant>,
    /// The last link, lost for silence, kept open until a new one joins (see serve_link).
    old_link: Option<OwnedReadHalf>,
}

/// Joins the master and serves sessions until the daemon is to stop: reconnecting after a
/// lost link with `-r` (resuming the session within the grace period, else fencing and
/// starting afresh), and carrying out node actions.
async fn run_sessions(d: &session::Daemon<'_>, on_ready: impl FnOnce()) -> Result<(), SlaveError> {
    let mut s = Sessions {
        on_ready: Some(on_ready),
        cookie: 0,
        master: d.opts.master,
        backoff: Duration::from_millis(100),
        lost_since: None,
        old_link: None,
    };
    loop {
        let end = match s.open(d).await {
            Ok(link) => {
                s.joined(&link);
                let (end, rd) = session::serve_link(d, link, &mut s.cookie).await;
                s.old_link = Some(rd);
                end
            }
            Err(end) => end,
        };
        match end {
            End::Action(action) => {
                if s.act(d, action) {
                    return Ok(());
                }
            }
            End::Dismissed(reason) => {
                return Err(SlaveError::Dismissed { addr: s.master.into(), reason });
            }
            End::Lost(e) => {
                if !d.opts.reconnect {
                    return Err(SlaveError::Link { addr: s.master.into(), source: e });
                }
                s.lost(d, &e).await;
            }
        }
    }
}

impl<F: FnOnce()> Sessions<F> {
    /// Opens and joins a link; while the session may still be resumed, no attempt outlasts
    /// the grace period.
    async fn open(&mut self, d: &session::Daemon<'_>) -> Result<Link, End> {
        let fence_at = self.lost_since.filter(|_| self.cookie != 0).map(|t| t + d.data.grace());
        let attempt = open_link(d.opts, d.data, self.master, d.opts.source, &mut self.cookie);
        match fence_at {
            Some(at) => tokio::time::timeout_at(at.into(), attempt)
                .await
                .unwrap_or(Err(End::Lost(LinkError::Timeout("connect")))),
            None => attempt.await,
        }
    }

    /// A link has joined: the old one may close, and the daemon is ready.
    fn joined(&mut self, link: &Link) {
        info!("connected to master {} as node {}", link.master, link.node);
        drop(self.old_link.take());
        self.master = link.master;
        self.backoff = Duration::from_millis(100);
        self.lost_since = None;
        self.ready();
    }

    fn ready(&mut self) {
        if let Some(ready) = self.on_ready.take() {
            ready();
        }
    }

    /// Carries out a node action (`bpctl -R`, `-H`, `-P`); true when the daemon is to stop.
    fn act(&mut self, d: &session::Daemon<'_>, action: NodeAction) -> bool {
        let opts = d.opts;
        let cmd = match action {
            NodeAction::Reboot => &opts.reboot_cmd,
            NodeAction::Halt => &opts.halt_cmd,
            NodeAction::Poweroff => &opts.poweroff_cmd,
        };
        match (action, cmd) {
            (_, Some(cmd)) => {
                run_command(action.name(), cmd);
                true
            }
            (NodeAction::Reboot, None) => {
                // A virtual node's reboot: drop the session and join again afresh, as a
                // rebooted machine's new daemon would.
                info!("reboot: starting a new session");
                d.procs.kill_all();
                self.cookie = 0;
                false
            }
            (_, None) => {
                info!("{}: stopping the slave daemon", action.name());
                true
            }
        }
    }

    /// The master is lost (`e`): past the grace period the session is fenced, and the next
    /// attempt waits for the backoff (no later than the grace period's end).
    async fn lost(&mut self, d: &session::Daemon<'_>, e: &LinkError) {
        let master = self.master;
        let since = *self.lost_since.get_or_insert_with(Instant::now);
        let grace = d.data.grace();
        if self.cookie != 0 && since.elapsed() >= grace {
            // Self-fencing, BProc's slave reset: the master now reports this node's jobs
            // lost, so they must not run on.
            warn!(
                "master {master} gone for {} s (the grace period): killing its processes, starting a new session",
                grace.as_secs()
            );
            fence(d.data);
            self.cookie = 0;
            drop(self.old_link.take());
        }
        let backoff = self.backoff;
        warn!("master {master}: {e}; retrying in {backoff:?}");
        self.ready();
        let wait = match self.cookie {
            0 => backoff,
            _ => backoff.min((since + grace).saturating_duration_since(Instant::now())),
        };
        tokio::time::sleep(wait).await;
        self.backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Runs [`run`] on a new current-thread runtime, with the soft limit on open files raised to
/// the hard limit (every connection costs one).
pub fn serve(opts: Options, on_ready: impl FnOnce()) -> Result<(), SlaveError> {
    if let Err(e) = bproc_sys::raise_fd_limit() {
        warn!("cannot raise the limit on open files: {e}");
    }
    // SIGCHLD goes to the reaper thread alone: blocked here, before the runtime and the
    // threads this one starts, which keep the mask.
    let _ = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGCHLD).thread_block();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SlaveError::Runtime)?
        .block_on(run(opts, on_ready))
}
