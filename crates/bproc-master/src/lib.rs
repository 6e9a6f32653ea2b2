//! The bpmaster daemon as a library: the node table, slave links, the client socket.
//!
//! # Layout
//! - [`config`]: BProc's configuration file ([`bootconf`]: the boot server's part of it).
//! - [`table`]: the node table and its permission rules, without I/O.
//! - [`persist`]: the state file that lets a restarted master resume sessions.
//! - `conn`: a client connection's halves, and a client a slave carries for its node.
//! - `slaves`: TCP links to slaves (handshake, join, pings, node loss); a client carried by
//!   a slave is handed to the client service by this module's daemon (`Master::run`).
//! - `node_up`: the `node_up` program run when a node boots.
//! - `clients`: the Unix socket for local clients, identified by `SO_PEERCRED`, and what
//!   each request does.
//! - `launch`: launches down the tree of slaves, their ranks' starts and ends.
//! - `ghosts`: the process table of remote processes and their ghosts (forks, moves, ends).
//! - `copy`: planning bpcp's copies (who sends to whom).
//! - `libs`: the library list (`bplib`).
//! - `stage`: the configuration's libraries, staged on diskless nodes.
//! - `status`: the status page and `/metrics` (`statuspage` in the configuration).
//! - `names`: the node names file read by the NSS module (`STATEDIR/hosts`).
//!
//! The modules depend in one direction; this file is the top: it holds the state every task
//! shares (`Shared`, with requests to slaves as its methods), starts the tasks and connects
//! them. Below it:
//! - `clients` → `launch`, `copy`, `ghosts`, `slaves`, `conn`, `table`
//! - `copy` → `launch`, `conn`, `table`
//! - `launch` → `ghosts`, `conn`, `table`
//! - `ghosts` → `conn`
//! - `slaves` → `node_up`, `conn`, `table`, `config`
//! - `node_up` → `table`
//! - `table` → `persist`, `config`; `stage`, `status`, `names` → `config`; `config` →
//!   `bootconf`
//!
//! # Concurrency
//! One tokio runtime. All node state sits behind one `std::sync::Mutex` that is never held
//! across an `.await`; each link has a reader task and a writer task fed by an unbounded channel,
//! so no lock holder ever waits on a socket. Every visible change bumps a `watch` counter that
//! wakes watchers (`bpstat -U`) and the state-file writer, which coalesces bursts.
//!
//! ```no_run
//! # async fn f() -> Result<(), bproc_master::MasterError> {
//! use bproc_master::{config::Config, Master, Options};
//! let config = Config::load(std::path::Path::new("/etc/clustermatic/config"))?;
//! let master = Master::bind(config, Options::default()).await?;
//! master.run(std::future::pending()).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bootconf;
mod clients;
pub mod config;
mod conn;
mod copy;
mod ghosts;
mod launch;
mod libs;
mod names;
mod node_up;
pub mod persist;
mod slaves;
mod stage;
mod status;
pub mod table;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bproc_link::{ClusterKey, KeyError};
use bproc_proto::errno::BE_SLAVEDIED;
use bproc_proto::Message;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use config::{Config, ConfigError};
use persist::PersistError;
use table::{Outgoing, Table};

pub use bproc_link::DEFAULT_KEYFILE;
pub use bproc_proto::DEFAULT_SOCKET;
/// Default directory of the state file.
pub const DEFAULT_STATEDIR: &str = "/var/lib/bproc";
/// Default directory of node_up logs.
pub const DEFAULT_LOGDIR: &str = "/var/log/clustermatic";

/// Errors that stop the master.
#[derive(Debug, Error)]
pub enum MasterError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster key cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The state file cannot be used.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// A listening socket cannot be opened.
    #[error("cannot listen on {what}")]
    Listen {
        /// The address or path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another master already serves the socket.
    #[error("another bpmaster is already running on {} (only one master per machine)", .0.display())]
    AlreadyRunning(PathBuf),
    /// The configuration gives nothing to listen on.
    #[error("{}: nothing to listen on; add an `interface NAME` or `listen ADDR` line", .0.display())]
    NoListener(PathBuf),
    /// The configured libraries cannot be staged.
    #[error(transparent)]
    Stage(#[from] stage::StageError),
    /// An interface named in the configuration is missing or has no IPv4 address.
    #[error("{}:{line}: interface {name}: {why}", path.display())]
    Interface {
        /// The configuration file.
        path: PathBuf,
        /// The line of the `interface` directive.
        line: usize,
        /// The interface.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Command-line choices that are not in the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept slaves of another software version (`-i`).
    pub ignore_version: bool,
    /// Where to serve this machine's process events to the slaves on it (a virtual
    /// cluster's), which then need not each subscribe (`--event-hub`).
    pub event_hub: Option<PathBuf>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Paths the daemon uses, resolved from the configuration and defaults.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub socket: PathBuf,
    pub state_file: PathBuf,
    /// The node names file for the NSS module, beside the state file.
    pub hosts_file: PathBuf,
    pub logdir: PathBuf,
    pub node_up: PathBuf,
}

impl Paths {
    fn resolve(config: &Config) -> Paths {
        let socket = config
            .socket
            .clone()
            .or_else(|| std::env::var_os("BPROC_SOCKET").map(PathBuf::from))
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        let statedir = config.statedir.clone().unwrap_or_else(|| DEFAULT_STATEDIR.into());
        let confdir = config.path.parent().unwrap_or(Path::new("/"));
        Paths {
            socket,
            state_file: statedir.join("nodes.json"),
            hosts_file: statedir.join("hosts"),
            logdir: config.logdir.clone().unwrap_or_else(|| DEFAULT_LOGDIR.into()),
            // BProc runs node_up from the configuration's directory.
            node_up: confdir.join("node_up"),
        }
    }
}

/// State shared by every task of the daemon.
pub(crate) struct Shared {
    table: Mutex<Table>,
    config: Mutex<Arc<Config>>,
    key: ClusterKey,
    paths: Paths,
    options: Options,
    /// Bumped on every change clients can see; wakes watchers and the state writer.
    changed: watch::Sender<u64>,
    next_conn: AtomicU64,
    next_request: AtomicU32,
    next_launch: AtomicU64,
    /// Running launches, for routing exits and node loss to their clients.
    launches: launch::Launches,
    /// Remote processes and their ghosts.
    ghosts: ghosts::Ghosts,
    /// The ghost program launchers start (`bpghost` beside bpmaster), if installed.
    ghost_program: Option<String>,
    /// The TCP addresses slaves connect to (launchers listen on the same address).
    listen: Vec<SocketAddr>,
    /// The configuration's libraries, staged on diskless nodes as they join.
    stage: Option<Arc<stage::Stage>>,
    /// The library list, which starts as the configuration's libraries.
    libraries: libs::Libraries,
    /// The data port where clients on nodes copy to and from the front end.
    data: bproc_copy::service::DataService,
    /// Client connections by user, under `maxclientsperuser` and root's reserve.
    conns: Arc<clients::Conns>,
    /// Bytes written to slave links, for measuring what a launch costs the master.
    pub(crate) sent_to_slaves: Arc<AtomicU64>,
    /// Event counters for `/metrics`: call `metrics.connection_rejected()`,
    /// `metrics.auth_refused()` and the others where the event happens.
    pub(crate) metrics: bproc_status::Metrics,
    /// Set once shutdown begins, so links closing then do not mark their nodes down in the
    /// state file: their slaves are expected to resume with the next master.
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
    pub(crate) fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn request_id(&self) -> u32 {
        // Never 0: id 0 marks events and unsolicited frames.
        loop {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
    pub(crate) fn launch_id(&self) -> u64 {
        self.next_launch.fetch_add(1, Ordering::Relaxed)
    }
    /// Node `n` went down: its processes are reported lost to their launchers.
    pub(crate) fn node_lost(&self, n: i32) {
        self.launches.node_lost(n);
        self.ghosts.node_lost(n);
    }
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Sends a request to node `n` and waits up to 30 s for its reply.
    pub(crate) async fn request(&self, n: i32, msg: Message) -> Message {
        self.request_within(n, msg, Duration::from_secs(30)).await
    }

    /// Sends a request to node `n` and waits up to `limit` for its reply; the node going
    /// down ends the wait at once (its session's end drops the waiting sender).
    pub(crate) async fn request_within(&self, n: i32, msg: Message, limit: Duration) -> Message {
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.table();
            let Some(s) = t.get_mut(n).and_then(|node| node.session.as_mut()) else {
                return Message::Error { code: BE_SLAVEDIED, message: format!("node {n} is down") };
            };
            s.pending.insert(id, tx);
            let _ = s.tx.send(Outgoing::Frame(id, msg));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Message::Error {
                code: BE_SLAVEDIED,
                message: format!("node {n} went down before answering"),
            },
            Err(_) => {
                if let Some(s) = self.table().get_mut(n).and_then(|node| node.session.as_mut()) {
                    s.pending.remove(&id);
                }
                Message::Error {
                    code: BE_SLAVEDIED,
                    message: format!("node {n} did not answer in {} s", limit.as_secs()),
                }
            }
        }
    }

    /// Re-reads the configuration (SIGHUP). On error the old one stays.
    fn reload(&self) {
        let path = self.config().path.clone();
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                warn!("SIGHUP: keeping the old configuration: {e}");
                return;
            }
        };
        for w in &config.warnings {
            warn!("{w}");
        }
        let config = Arc::new(config);
        let dropped = self.table().reconfigure(&config);
        for (n, session) in dropped {
            warn!("node {n}: no longer in the configuration; disconnecting it");
            self.node_lost(n);
            slaves::disconnect(session, "node removed from the master's configuration", true);
        }
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config.clone();
        self.conns.set_per_user(config.max_clients_per_user);
        slaves::send_conf_all(self, &config);
        self.notify();
        info!("configuration reloaded from {}", path.display());
    }
}

/// A master with its sockets open, ready to run.
pub struct Master {
    shared: Arc<Shared>,
    tcp: Vec<TcpListener>,
    unix: UnixListener,
    /// The status page's listener (`statuspage`), if any.
    status: Option<TcpListener>,
}

async fn listen_addrs(config: &Config) -> Result<Vec<SocketAddr>, MasterError> {
    let mut addrs = config.listen.clone();
    if !config.interfaces.is_empty() {
        let ifaddrs = nix::ifaddrs::getifaddrs().map_err(|e| MasterError::Listen {
            what: "network interfaces".into(),
            source: e.into(),
        })?;
        let ifaddrs: Vec<_> = ifaddrs.collect();
        for interface in &config.interfaces {
            let name = &interface.arg;
            let mine: Vec<_> = ifaddrs.iter().filter(|i| &i.interface_name == name).collect();
            let ip: Option<Ipv4Addr> =
                mine.iter().find_map(|i| i.address.as_ref()?.as_sockaddr_in().map(|s| s.ip()));
            let ip = ip.ok_or_else(|| MasterError::Interface {
                path: config.path.clone(),
                line: interface.line,
                name: name.clone(),
                why: if mine.is_empty() {
                    "no such network interface (see `ip link`)"
                } else {
                    "it has no IPv4 address (slaves connect over IPv4; see `ip addr`)"
                },
            })?;
            addrs.push(SocketAddr::new(ip.into(), config.port));
        }
    }
    if addrs.is_empty() {
        return Err(MasterError::NoListener(config.path.clone()));
    }
    Ok(addrs)
}

/// Listens with a deep accept queue (capped by `net.core.somaxconn`): a thousand slaves
/// connect at once when a cluster boots or the master restarts, and a dropped SYN costs a
/// second or more.
/// The ghost program: `$BPROC_GHOST`, else `bpghost` beside this program, else in `../bin`
/// (an installed bpmaster is in `sbin`, the programs users run in `bin`), if executable.
fn ghost_program() -> Option<String> {
    let executable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok();
    let path = match std::env::var_os("BPROC_GHOST") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let beside = std::env::current_exe().ok()?.with_file_name("bpghost");
            let in_bin = beside.parent().and_then(Path::parent).map(|d| d.join("bin/bpghost"));
            match in_bin {
                Some(b) if !executable(&beside) && executable(&b) => b,
                _ => beside,
            }
        }
    };
    let ok = executable(&path);
    if !ok {
        warn!("no ghost program at {}: remote processes get no ghosts", path.display());
    }
    ok.then(|| path.to_string_lossy().into_owned())
}

fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(65535)
}

fn bind_unix(path: &Path) -> Result<UnixListener, MasterError> {
    // Never remove a socket a live master serves (a blocking connect would also wait
    // forever on one whose accept queue is full).
    if bproc_sys::peer::socket_server(path).is_some() {
        return Err(MasterError::AlreadyRunning(path.into()));
    }
    let listen_err = |source| MasterError::Listen { what: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    // A socket file left by a master that died; nobody answers on it.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(listen_err)?;
    // Any user may connect: the kernel tells us who they are.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(listen_err)?;
    Ok(l)
}

impl Master {
    /// Loads the key and saved sessions and opens every listening socket.
    pub async fn bind(config: Config, options: Options) -> Result<Master, MasterError> {
        for w in &config.warnings {
            warn!("{w}");
        }
        let keyfile = config.keyfile.clone().unwrap_or_else(|| DEFAULT_KEYFILE.into());
        let key = ClusterKey::load(&keyfile)?;
        let paths = Paths::resolve(&config);
        let mut table = Table::from_config(&config);
        // Sessions a previous master left wait for their slaves, with their jobs, for the
        // grace period.
        for (n, saved) in persist::load(&paths.state_file)? {
            if let Some(node) = table.get_mut(n) {
                node.saved = Some(saved);
                node.state = table::UNREACHABLE.into();
                node.unreachable_since = Some(std::time::Instant::now());
            }
        }
        // The client socket first: it is what tells us another master already runs.
        let unix = bind_unix(&paths.socket)?;
        let mut tcp = Vec::new();
        for addr in listen_addrs(&config).await? {
            let l = listen_tcp(addr)
                .map_err(|source| MasterError::Listen { what: addr.to_string(), source })?;
            tcp.push(l);
        }
        let status = status::bind(&config).await?;
        let stage_ip = tcp
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
        let stage = stage::start(&config, stage_ip).await.map_err(MasterError::Stage)?;
        let data_ip = match stage_ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        let euid = nix::unistd::geteuid();
        let authority = bproc_copy::service::Authority { root: euid.is_root(), uid: euid.as_raw() };
        let data = bproc_copy::service::DataService::start(data_ip, authority, None).map_err(
            |source| MasterError::Listen { what: format!("{data_ip}:0 (data port)"), source },
        )?;
        let conns = Arc::new(clients::Conns::new(
            config.max_clients_per_user,
            bproc_sys::fd_limit(),
            config.nodes.len(),
        ));
        let shared = Arc::new(Shared {
            conns,
            table: Mutex::new(table),
            config: Mutex::new(Arc::new(config)),
            key,
            paths,
            options,
            changed: watch::channel(0).0,
            next_conn: AtomicU64::new(1),
            next_request: AtomicU32::new(1),
            // Launch ids outlive a master restart on the nodes: start past the old master's.
            next_launch: AtomicU64::new(now_ms() << 16),
            launches: launch::Launches::default(),
            ghosts: ghosts::Ghosts::default(),
            ghost_program: ghost_program(),
            listen: tcp.iter().filter_map(|l| l.local_addr().ok()).collect(),
            libraries: libs::Libraries::new(
                stage.iter().flat_map(|s| s.files.iter().map(|f| f.path.clone())),
            ),
            stage,
            data,
            sent_to_slaves: Arc::default(),
            metrics: bproc_status::Metrics::default(),
            stopping: AtomicBool::new(false),
        });
        Ok(Master { shared, tcp, unix, status })
    }

    /// The TCP addresses slaves connect to.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Where the status page is served (`statuspage`), if anywhere.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The client socket.
    pub fn socket_path(&self) -> &Path {
        &self.shared.paths.socket
    }

    /// Serves until `shutdown` completes or SIGTERM/SIGINT arrives; SIGHUP reloads the
    /// configuration. Saves the node table before returning.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), MasterError> {
        let shared = self.shared;
        // A client a slave carries for its node is served like a local one.
        for l in self.tcp {
            tokio::spawn(slaves::accept_loop(shared.clone(), l, clients::serve_proxied));
        }
        tokio::spawn(clients::accept_loop(shared.clone(), self.unix));
        tokio::spawn(slaves::ping_loop(shared.clone()));
        tokio::spawn(ghosts::stop_watch(shared.clone()));
        // The end of a flood of refused connections is reported even if nothing follows it.
        tokio::spawn(clients::REFUSED.flush_when_due());
        tokio::spawn(slaves::REFUSED.flush_when_due());
        tokio::spawn(stage::REFUSED.flush_when_due());
        if let Some(l) = self.status {
            tokio::spawn(status::serve(shared.clone(), l));
        }
        let writer = tokio::spawn(state_writer(shared.clone()));
        let signals = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                warn!("cannot install signal handlers; SIGHUP will not reload");
                return std::future::pending().await;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => shared.reload(),
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                }
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = signals => {}
        }
        info!("shutting down");
        shared.stopping.store(true, Ordering::Relaxed);
        writer.abort();
        let snapshot = saved_sessions(&shared.table());
        persist::save(&shared.paths.state_file, snapshot)?;
        let _ = std::fs::remove_file(&shared.paths.socket);
        Ok(())
    }
}

fn saved_sessions(t: &Table) -> std::collections::BTreeMap<i32, persist::Saved> {
    t.iter()
        .filter_map(|n| {
            let saved = match &n.session {
                Some(s) => persist::Saved {
                    cookie: s.cookie,
                    state: n.state.clone(),
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    attrs: n.attrs.clone(),
                },
                None => n.saved.clone()?,
            };
            Some((n.number, saved))
        })
        .collect()
}

/// Writes the state file after changes, at most every 50 ms, and the names file when its
/// text changed (it is written once at start).
async fn state_writer(shared: Arc<Shared>) {
    let mut rx = shared.changed.subscribe();
    let mut names = String::new();
    loop {
        let text = names::text(&shared.config(), &shared.listen);
        if text != names {
            let path = shared.paths.hosts_file.clone();
            let t = text.clone();
            // Said once per new text, not at every change.
            match tokio::task::spawn_blocking(move || names::write(&path, &t)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(
                    "cannot write the node names file {}: {e}",
                    shared.paths.hosts_file.display()
                ),
                Err(e) => warn!("names writer failed: {e}"),
            }
            names = text;
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        rx.mark_unchanged();
        if shared.stopping() {
            return;
        }
        let snapshot = saved_sessions(&shared.table());
        let path = shared.paths.state_file.clone();
        match tokio::task::spawn_blocking(move || persist::save(&path, snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("{e}"),
            Err(e) => warn!("state writer failed: {e}"),
        }
    }
}

/// Runs the daemon to completion on a new runtime: raise the open-file limit (every client
/// and link costs a descriptor), bind, report, serve.
///
/// `on_ready` receives the bound addresses once every socket is open.
pub fn serve(
    config: Config,
    options: Options,
    on_ready: impl FnOnce(&[SocketAddr], &Path),
) -> Result<(), MasterError> {
    if let Err(e) = bproc_sys::raise_fd_limit() {
        warn!("cannot raise the limit on open files: {e}");
    }
    // Slaves that cannot reach it subscribe on their own.
    let _hub = options.event_hub.as_deref().and_then(|path| {
        bproc_sys::procevents::hub::Hub::start(path)
            .inspect_err(|e| warn!("no process event hub at {}: {e}", path.display()))
            .inspect(|h| {
                if let Some(e) = h.unfiltered() {
                    info!(
                        "process event hub: the kernel cannot filter its events ({e}): every \
                         process on this machine wakes it; run bpmaster as root or with CAP_BPF"
                    );
                }
            })
            .ok()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| MasterError::Listen { what: "the async runtime".into(), source })?;
    rt.block_on(async {
        let master = Master::bind(config, options).await?;
        on_ready(&master.tcp_addrs(), master.socket_path());
        master.run(std::future::pending()).await
    })
}
