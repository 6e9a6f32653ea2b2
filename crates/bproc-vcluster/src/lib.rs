//! A virtual cluster on one machine: one `bpmaster` and N `bpslave` processes, each slave with
//! its own loopback address (node i connects from 127.0.1.0 + i) and, where the kernel allows,
//! its own host name `n<i>` and `/tmp`. This is what `bpcluster`, the integration tests and the
//! benchmarks run on, so everything they check goes over real sockets between real daemons.
//!
//! Everything lives in one directory: `config`, `key`, `master.sock`, `state/`, `log/` (one log
//! per daemon) and `pids` once detached. [`Cluster`] owns its processes and kills them, by pid,
//! when dropped, unless [`Cluster::detach`] handed them over to `bpcluster down`.
//!
//! A `pids` file can outlive its daemons, and their pids can then name other processes (even
//! another cluster's daemons). So `bpcluster down` signals a recorded pid only once it has
//! proved the process is this cluster's daemon ([`Recorded::find`]): it opens a pidfd, checks
//! the start time recorded with the pid and that the command line names this directory's
//! `config` (the master) or `key` (a slave), and then signals through the pidfd, which cannot
//! reach another process even if the pid is reused meanwhile.
//!
//! A start records each daemon in `pids` as it spawns it, so `bpcluster down` can stop a start
//! that hangs; a start that fails, times out or is interrupted ([`interrupt`]) stops every
//! daemon it started before it returns.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use bproc_client::{Client, NodeStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

pub mod cli;
pub mod vm;

/// Address of node 0; node i uses this plus i.
pub const BASE_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 0);

/// Errors starting or stopping a virtual cluster.
#[derive(Debug, Error)]
pub enum VclusterError {
    /// A file in the cluster directory could not be written or read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A daemon could not be started.
    #[error("cannot start {}: {source}", prog.display())]
    Spawn {
        /// The program.
        prog: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The master did not come up.
    #[error("bpmaster did not start; its log {} says:\n{log}", path.display())]
    Master {
        /// The master's log file.
        path: PathBuf,
        /// Its last lines.
        log: String,
    },
    /// The cluster did not reach the state waited for.
    #[error("{what}: not reached after {secs} s:\n{detail}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The time waited.
        secs: u64,
        /// Node states and daemon log tails.
        detail: String,
    },
    /// A daemon of the cluster exited.
    #[error("{what} exited; its log ends:\n{log}")]
    Exited {
        /// Which daemon.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// The master refused or failed a request.
    #[error(transparent)]
    Client(#[from] bproc_client::BprocError),
    /// No cluster in the directory.
    #[error("no virtual cluster in {} (start one with `bpcluster up`)", .0.display())]
    NoCluster(PathBuf),
    /// A cluster already runs in the directory.
    #[error("a cluster is already running in {dir}; stop it with `bpcluster down --dir {dir}`", dir = .0.display())]
    Running(PathBuf),
    /// A signal ended the start; the daemons it had started are stopped.
    #[error("interrupted by signal {0}; stopped the daemons it had started")]
    Interrupted(i32),
    /// The master could not hold a link per node.
    #[error(
        "{nodes} nodes need at least {need} open files in bpmaster (one per node, more for \
         each job's ghosts), but the hard limit here is {hard}: raise it (`ulimit -Hn` as \
         root, LimitNOFILE= or limits.conf) or start fewer nodes"
    )]
    FdLimit {
        /// Nodes asked for.
        nodes: usize,
        /// Descriptors the master needs at least.
        need: u64,
        /// The hard limit on open files here, which the master inherits.
        hard: u64,
    },
    /// The node number is not part of the cluster.
    #[error("node {0} is not part of this cluster")]
    NoSuchNode(usize),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of nodes.
    pub nodes: usize,
    /// The cluster directory (created if missing).
    pub dir: PathBuf,
    /// Directory holding `bpmaster` and `bpslave`.
    pub bin_dir: PathBuf,
    /// Give each node its own host name and /tmp.
    pub isolate: bool,
    /// The master's ping timeout in seconds.
    pub ping_timeout: u32,
    /// Slaves reconnect when they lose the master (`bpslave -r`).
    pub reconnect: bool,
    /// Extra configuration lines appended to the generated file.
    pub extra_config: String,
    /// Daemons log at info level.
    pub verbose: bool,
    /// How long to wait for every node to be up.
    pub timeout: Duration,
    /// Nodes are diskless: their processes see an empty root with only what launches stage
    /// (needs root and isolation).
    pub diskless: bool,
    /// Start returns once every node is connected (any state but `down`) instead of `up`:
    /// for clusters whose node_up program holds some nodes in `boot`.
    pub ready_when_connected: bool,
    /// Start the master the way an administrator does, in the background (no `-d`), from the
    /// cluster directory with the relative `-c config`: its logs then go to syslog, and its
    /// pid comes from its `--print-address` report.
    pub daemonize_master: bool,
    /// Environment variables set for each slave (tests tune a slave's waits this way).
    pub slave_env: Vec<(String, String)>,
}

impl Spec {
    /// A spec with defaults: isolation when root, ping timeout 10 s, reconnecting slaves.
    pub fn new(nodes: usize, dir: impl Into<PathBuf>, bin_dir: impl Into<PathBuf>) -> Self {
        Spec {
            nodes,
            dir: dir.into(),
            bin_dir: bin_dir.into(),
            isolate: nix::unistd::geteuid().is_root(),
            ping_timeout: 10,
            reconnect: true,
            extra_config: String::new(),
            verbose: true,
            timeout: Duration::from_secs(60),
            ready_when_connected: false,
            diskless: false,
            daemonize_master: false,
            slave_env: Vec::new(),
        }
    }
}

/// The signal that interrupted starts in this process, 0 while none has.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Interrupts every start in this process, now and later: it stops the daemons it started and
/// fails with [`VclusterError::Interrupted`]. For a signal handler thread (`bpcluster`'s
/// Ctrl-C), hence async-signal-safe work only.
pub fn interrupt(signal: i32) {
    INTERRUPTED.store(signal.max(1), Ordering::SeqCst);
}

/// The signal given to [`interrupt`], if any.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::SeqCst)).filter(|s| *s != 0)
}

fn check_interrupt() -> Result<(), VclusterError> {
    interrupted().map_or(Ok(()), |s| Err(VclusterError::Interrupted(s)))
}

/// Descriptors bpmaster needs for `nodes` nodes, at least: one link per node, and its own
/// (about 20 measured: sockets, runtime, logs) with a margin for a few clients.
fn fds_needed(nodes: usize) -> u64 {
    nodes as u64 + 64
}

/// A command for `prog` that starts with no signal blocked, whatever this process blocks
/// (`bpcluster` blocks SIGINT, SIGTERM and SIGHUP to catch them).
pub fn daemon_command(prog: &Path) -> Command {
    let mut cmd = Command::new(prog);
    bproc_sys::unblock_signals_in(&mut cmd);
    cmd
}

/// Address of node `i`.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(BASE_ADDR) + i as u32)
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> VclusterError + '_ {
    move |source| VclusterError::File { path: path.to_owned(), source }
}

/// Last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A daemon this handle started: its child, or, gone to the background, its pid.
#[derive(Debug)]
enum Daemon {
    Child(Child),
    Background(u32),
}

impl Daemon {
    fn id(&self) -> u32 {
        match self {
            Daemon::Child(c) => c.id(),
            Daemon::Background(pid) => *pid,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; a child is always reaped.
    fn stop(&mut self, grace: Duration) {
        match self {
            Daemon::Child(c) => stop_child(c, grace),
            Daemon::Background(pid) => {
                let pid = Pid::from_raw(*pid as i32);
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && !child_exited(pid.as_raw() as u32) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !child_exited(pid.as_raw() as u32) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// A running virtual cluster.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    port: u16,
    master: Option<Daemon>,
    slaves: Vec<Option<Child>>,
    owned: bool,
    /// `DIR/pids`, appended to as each daemon starts.
    pids: Option<std::fs::File>,
}

impl Cluster {
    /// Writes the configuration and key, starts the master and every slave, and waits until
    /// every node is `up`.
    pub fn start(mut spec: Spec) -> Result<Cluster, VclusterError> {
        // Absolute, so that the daemons' command lines name the directory wherever `down`
        // runs, and the socket path printed for shells holds after a `cd`.
        spec.dir = std::path::absolute(&spec.dir).map_err(file_err(&spec.dir))?;
        check_interrupt()?;
        // The master inherits our limit and raises its soft limit to the hard one: below what
        // it needs, it would stop accepting nodes and clients, and the start would hang.
        let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(u64::MAX, |(_, hard)| hard);
        if hard < fds_needed(spec.nodes) {
            return Err(VclusterError::FdLimit {
                nodes: spec.nodes,
                need: fds_needed(spec.nodes),
                hard,
            });
        }
        let dir = &spec.dir;
        for d in [dir.clone(), dir.join("log"), dir.join("state")] {
            std::fs::create_dir_all(&d).map_err(file_err(&d))?;
        }
        let key = dir.join("key");
        let _ = std::fs::remove_file(&key);
        bproc_link::ClusterKey::create(&key).map_err(|e| VclusterError::File {
            path: key.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let _ = std::fs::remove_file(dir.join("state/nodes.json"));
        let pids_path = dir.join("pids");
        let pids = std::fs::File::create(&pids_path).map_err(file_err(&pids_path))?;
        let mut c = Cluster {
            slaves: (0..spec.nodes).map(|_| None).collect(),
            spec,
            // Any free port: the master binds it and says which (`start_master`).
            port: 0,
            master: None,
            owned: true,
            pids: Some(pids),
        };
        // From here on, an error drops `c`, which stops what was started.
        c.write_config()?;
        c.start_master()?;
        // The port the master now holds goes into the configuration, so a master restarted
        // from it listens where the slaves look.
        c.write_config()?;
        for i in 0..c.spec.nodes {
            check_interrupt()?;
            c.start_slave(i)?;
        }
        let connected_only = c.spec.ready_when_connected;
        let ready = |n: &NodeStatus| {
            if connected_only {
                n.state != "down"
            } else {
                n.state == "up"
            }
        };
        let what = if connected_only { "every node connected" } else { "every node up" };
        c.wait(what, c.spec.timeout, true, |nodes| {
            nodes.iter().filter(|n| ready(n)).count() == c.spec.nodes
        })?;
        Ok(c)
    }

    fn write_config(&self) -> Result<(), VclusterError> {
        let dir = &self.spec.dir;
        let mut text = String::from("# Virtual cluster written by bpcluster\n");
        let _ = writeln!(text, "listen 127.0.0.1:{}", self.port);
        let _ = writeln!(text, "pingtimeout {}", self.spec.ping_timeout);
        let _ = writeln!(text, "socket {}", dir.join("master.sock").display());
        let _ = writeln!(text, "keyfile {}", dir.join("key").display());
        let _ = writeln!(text, "statedir {}", dir.join("state").display());
        let _ = writeln!(text, "logdir {}", dir.join("log").display());
        if !nix::unistd::geteuid().is_root() {
            // Only root can bind the reserved ports BProc requires of slaves.
            text.push_str("allowinsecureports\n");
        }
        if self.spec.nodes > 0 {
            let _ = writeln!(text, "iprange 0 {} {}", node_addr(0), node_addr(self.spec.nodes - 1));
        }
        if !self.spec.diskless {
            // The nodes share this machine's files: the C library and the others every
            // program of ours loads go on the library list, so moved processes name them.
            // (Diskless nodes take no moves, and would get these staged at join.)
            let bpmaster = self.spec.bin_dir.join("bpmaster");
            let _ = writeln!(text, "librariesfrombinary {}", bpmaster.display());
        }
        text.push_str(&self.spec.extra_config);
        let path = self.config_path();
        std::fs::write(&path, text).map_err(file_err(&path))
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.spec.dir.join("config")
    }

    /// The master's client socket (what `BPROC_SOCKET` should be).
    pub fn socket(&self) -> PathBuf {
        self.spec.dir.join("master.sock")
    }

    /// The master's TCP address.
    pub fn master_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The spec the cluster was started with.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Log file of the master.
    pub fn master_log(&self) -> PathBuf {
        self.spec.dir.join("log/master.log")
    }

    /// Log file of node `i`'s slave.
    pub fn slave_log(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("log/n{i}.log"))
    }

    fn log_file(&self, path: &Path) -> Result<std::fs::File, VclusterError> {
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(file_err(path))
    }

    /// The name under which the master serves the host's process events to the slaves
    /// (`--event-hub`, an abstract socket, one per cluster directory): each of a thousand
    /// slaves subscribing on its own made every fork on the host run a thousand filters.
    fn event_hub(&self) -> PathBuf {
        let dir = std::path::absolute(&self.spec.dir).unwrap_or_else(|_| self.spec.dir.clone());
        PathBuf::from(format!("bproc-events:{}", dir.display()))
    }

    /// Starts the master (again) and waits until it listens.
    pub fn start_master(&mut self) -> Result<(), VclusterError> {
        let prog = self.spec.bin_dir.join("bpmaster");
        let log = self.master_log();
        let mut cmd = daemon_command(&prog);
        if self.spec.daemonize_master {
            cmd.arg("--print-address").arg("-c").arg("config").current_dir(&self.spec.dir);
        } else {
            cmd.arg("-d").arg("--print-address").arg("-c").arg(self.config_path());
        }
        if self.spec.verbose {
            cmd.arg("-v");
        }
        cmd.arg("--event-hub").arg(self.event_hub());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log_file(&log)?)
            .env_remove("NOTIFY_SOCKET")
            .process_group(0)
            .spawn()
            .map_err(|source| VclusterError::Spawn { prog: prog.clone(), source })?;
        // The master prints "ADDRESS SOCKET PID" once every socket is open: that is readiness
        // (from the daemon itself with -d, else from the command, which then exits).
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let failed = |mut child: Child| {
            let _ = child.kill();
            let _ = child.wait();
            Err(VclusterError::Master { log: log_tail(&log, 20), path: log.clone() })
        };
        if line.trim().is_empty() {
            return failed(child);
        }
        if self.port == 0 {
            // A first start binds any free port (`up`); the master says which.
            let addr = line.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
            match addr {
                Some(addr) => self.port = addr.port(),
                None => return failed(child),
            }
        }
        if !self.spec.daemonize_master {
            self.record("master", child.id());
            self.master = Some(Daemon::Child(child));
            return Ok(());
        }
        let pid = line.split_whitespace().nth(2).and_then(|p| p.parse().ok());
        match (child.wait(), pid) {
            (Ok(st), Some(pid)) if st.success() => {
                self.record("master", pid);
                self.master = Some(Daemon::Background(pid));
                Ok(())
            }
            _ => failed(child),
        }
    }

    /// Starts node `i`'s slave (again).
    pub fn start_slave(&mut self, i: usize) -> Result<(), VclusterError> {
        if i >= self.spec.nodes {
            return Err(VclusterError::NoSuchNode(i));
        }
        let prog = self.spec.bin_dir.join("bpslave");
        let mut cmd = daemon_command(&prog);
        cmd.arg("-d")
            .arg("--key")
            .arg(self.spec.dir.join("key"))
            .arg("-s")
            .arg(node_addr(i).to_string());
        if self.spec.reconnect {
            cmd.arg("-r");
        }
        cmd.envs(self.spec.slave_env.iter().map(|(k, v)| (k, v)));
        if self.spec.verbose {
            cmd.arg("-v");
        }
        if self.spec.isolate {
            cmd.arg("--isolate").arg(format!("n{i}"));
            if self.spec.diskless {
                cmd.arg("--diskless");
            }
        } else {
            // Without a /tmp of their own, the nodes' client sockets must not collide.
            cmd.arg("--client-socket").arg(self.spec.dir.join(format!("node{i}.sock")));
        }
        // The slaves share the host's kernel: one subscription to its process events serves
        // them all (a slave that cannot reach it subscribes on its own).
        cmd.arg("--event-hub").arg(self.event_hub());
        cmd.arg(self.master_addr().to_string());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(&self.slave_log(i))?)
            .env_remove("NOTIFY_SOCKET")
            .process_group(0)
            .spawn()
            .map_err(|source| VclusterError::Spawn { prog, source })?;
        self.record(&format!("n{i}"), child.id());
        self.slaves[i] = Some(child);
        Ok(())
    }

    /// Appends a daemon just started to `DIR/pids`, so that `bpcluster down` finds it even
    /// while this start is still waiting (or hangs). Best effort: the file is a convenience,
    /// and `detach` writes it whole.
    fn record(&mut self, name: &str, pid: u32) {
        use std::io::Write as _;
        if let Some(f) = &mut self.pids {
            let start = start_time(pid as i32).map(|t| format!(" {t}")).unwrap_or_default();
            let _ = writeln!(f, "{name} {pid}{start}");
        }
    }

    /// Pid of the master, if running under this handle.
    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Daemon::id)
    }

    /// Pid of node `i`'s slave, if running under this handle.
    pub fn slave_pid(&self, i: usize) -> Option<u32> {
        self.slaves.get(i)?.as_ref().map(Child::id)
    }

    /// Sends `sig` to node `i`'s slave; SIGKILL also reaps it.
    pub fn signal_slave(&mut self, i: usize, sig: Signal) -> Result<(), VclusterError> {
        let child =
            self.slaves.get_mut(i).and_then(Option::as_mut).ok_or(VclusterError::NoSuchNode(i))?;
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        if sig == Signal::SIGKILL {
            let _ = child.wait();
            self.slaves[i] = None;
        }
        Ok(())
    }

    /// Stops the master with SIGTERM (it saves its state) and waits for it.
    pub fn stop_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            m.stop(Duration::from_secs(5));
        }
    }

    /// Kills the master with SIGKILL (a crash: it saves nothing) and reaps it.
    pub fn kill_master(&mut self) {
        if let Some(m) = self.master.take() {
            match m {
                Daemon::Child(mut c) => {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Daemon::Background(pid) => {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    while !child_exited(pid) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
    }

    /// A client connected to the master.
    pub fn client(&self) -> Result<Client, VclusterError> {
        Ok(Client::connect_to(&self.socket())?)
    }

    /// Waits until `done` holds for the node table, or `timeout` passes; `what` names the
    /// condition in the error. Woken by the master's change notifications, not by polling.
    pub fn wait_for_within(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[NodeStatus]) -> bool,
    ) -> Result<Vec<NodeStatus>, VclusterError> {
        self.wait(what, timeout, false, done)
    }

    /// The waiting loop. With `watch_daemons` (while starting), a daemon that exits ends the
    /// wait at once instead of at the timeout; later, daemons may exit on purpose (halt).
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        watch_daemons: bool,
        done: impl Fn(&[NodeStatus]) -> bool,
    ) -> Result<Vec<NodeStatus>, VclusterError> {
        let deadline = Instant::now() + timeout;
        let timed_out = |last: &[NodeStatus], why: &str| VclusterError::Timeout {
            what: what.to_owned(),
            secs: timeout.as_secs(),
            detail: format!("{why}{}", self.describe(last)),
        };
        // Every wait is bounded by the deadline and broken by an interrupt: a master that
        // accepts but never answers (hung, or out of descriptors) must not hold the start.
        let mut w = loop {
            check_interrupt()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = Some(left.clamp(Duration::from_millis(1), Duration::from_millis(200)));
            match Client::connect_within(&self.socket(), slice) {
                Ok(c) => break c.watch_unconfirmed()?,
                Err(bproc_client::BprocError::Timeout { .. }) if !left.is_zero() => {}
                Err(bproc_client::BprocError::Timeout { .. }) => {
                    return Err(timed_out(&[], "bpmaster accepted no connection; "))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut last = Vec::new();
        let mut answered = false;
        loop {
            check_interrupt()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [nix::poll::PollFd::new(w.as_fd(), nix::poll::PollFlags::POLLIN)];
            // Wake at least every 200 ms to check the daemons and the deadline.
            let ms = u16::try_from(left.as_millis().min(200)).unwrap_or(200);
            if nix::poll::poll(&mut fds, ms).unwrap_or(0) > 0 {
                last = w.next_table()?;
                answered = true;
                if done(&last) {
                    return Ok(last);
                }
            } else if Instant::now() >= deadline {
                let why = if answered { "" } else { "bpmaster answered no request; " };
                return Err(timed_out(&last, why));
            }
            if watch_daemons {
                if let Some(dead) = self.dead_daemon() {
                    return Err(dead);
                }
            }
        }
    }

    /// A daemon of this cluster that has exited, as an error naming it and its log.
    fn dead_daemon(&self) -> Option<VclusterError> {
        if let Some(m) = &self.master {
            if child_exited(m.id()) {
                return Some(VclusterError::Master {
                    path: self.master_log(),
                    log: log_tail(&self.master_log(), 20),
                });
            }
        }
        let (i, _) = self
            .slaves
            .iter()
            .enumerate()
            .find(|(_, s)| s.as_ref().is_some_and(|s| child_exited(s.id())))?;
        Some(VclusterError::Exited {
            what: format!("the slave of node {i}"),
            log: log_tail(&self.slave_log(i), 10),
        })
    }

    /// The nodes that are not up, with their log tails, and the master's log tail.
    fn describe(&self, nodes: &[NodeStatus]) -> String {
        let mut detail = String::new();
        let not_up: Vec<&NodeStatus> = nodes.iter().filter(|n| n.state != "up").collect();
        if !nodes.is_empty() {
            let _ = writeln!(detail, "{} of {} nodes not up", not_up.len(), nodes.len());
        }
        for n in not_up.iter().take(5) {
            let _ = writeln!(detail, "node {} is {}; its log ends:", n.node, n.state);
            let _ = writeln!(detail, "{}", log_tail(&self.slave_log(n.node as usize), 5));
        }
        let _ = writeln!(detail, "master log ends:\n{}", log_tail(&self.master_log(), 10));
        detail
    }

    /// Hands the processes over to the directory: records their pids and start times in
    /// `DIR/pids` and leaves them running when this handle is dropped (`bpcluster up`).
    pub fn detach(mut self) -> Result<(), VclusterError> {
        let mut text = String::new();
        let mut record = |name: &str, pid: u32| {
            // Our own children, alive: their start times can be read.
            let start = start_time(pid as i32).map(|t| format!(" {t}")).unwrap_or_default();
            let _ = writeln!(text, "{name} {pid}{start}");
        };
        if let Some(m) = &self.master {
            record("master", m.id());
        }
        for (i, s) in self.slaves.iter().enumerate() {
            if let Some(s) = s {
                record(&format!("n{i}"), s.id());
            }
        }
        let path = self.spec.dir.join("pids");
        std::fs::write(&path, text).map_err(file_err(&path))?;
        self.pids = None;
        self.owned = false;
        Ok(())
    }

    /// Kills every process this handle started, slaves first, and removes `DIR/pids`, which
    /// then names no live daemon.
    pub fn stop(&mut self) {
        for s in self.slaves.iter_mut().filter_map(Option::take) {
            let mut s = s;
            let _ = s.kill();
            let _ = s.wait();
        }
        self.stop_master();
        if self.pids.take().is_some() {
            let _ = std::fs::remove_file(self.spec.dir.join("pids"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps.
fn stop_child(c: &mut Child, grace: Duration) {
    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Whether our child `pid` has exited (it is a zombie until reaped, or gone). Unlike a look
/// at its command line, this is right even while the child is still inside `execve`.
fn child_exited(pid: u32) -> bool {
    bproc_sys::peer::Stat::read(pid as i32)
        .and_then(|s| s.state())
        .is_none_or(|st| matches!(st, 'Z' | 'X'))
}

/// Whether `pid` is alive and runs `prog`. Only a first look: a stale pid can run a program of
/// that name for someone else; [`Recorded::find`] proves more.
pub fn pid_runs(pid: i32, prog: &str) -> bool {
    runs(&argv(pid), prog)
}

/// The command line of `pid`, argument by argument (empty when it is gone).
fn argv(pid: i32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

/// When `pid` started, in clock ticks after boot (`/proc/PID/stat`, field 22): with the pid,
/// this names one process for as long as the machine runs.
pub fn start_time(pid: i32) -> Option<u64> {
    bproc_sys::peer::Stat::read(pid)?.num(22)
}

/// A daemon recorded in a detached cluster's `pids` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `master`, or `nI` for node I's slave.
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// Its start time ([`start_time`]); `None` in a file written before they were recorded.
    pub start: Option<u64>,
}

impl Recorded {
    /// The program the daemon runs.
    pub fn program(&self) -> &'static str {
        match self.name.as_str() {
            "master" => "bpmaster",
            "beoserv" => "beoserv",
            n if n.starts_with("vm") => "qemu-system-x86_64",
            _ => "bpslave",
        }
    }

    /// A pidfd for the daemon if its pid still names it: the process started when recorded,
    /// runs [`Self::program`], and its command line names the file of cluster directory `dir`
    /// it was started with (`-c DIR/config` for the master and the boot server, `--key
    /// DIR/key` for a slave; a machine's QEMU names files in `dir`).
    /// The pidfd is opened first and checked live last, so what was read in between is that
    /// process's.
    pub fn find(&self, dir: &Path) -> Option<OwnedFd> {
        let pid = rustix::process::Pid::from_raw(self.pid)?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        if self.start.is_some_and(|t| start_time(self.pid) != Some(t)) {
            return None;
        }
        let argv = argv(self.pid);
        if !runs(&argv, self.program()) {
            return None;
        }
        let names_ours = if self.name.starts_with("vm") {
            let dir = std::fs::canonicalize(dir).ok()?;
            let dir = dir.as_os_str().as_bytes();
            self.start.is_some() && argv.iter().any(|a| a.windows(dir.len()).any(|w| w == dir))
        } else {
            let (flag, file) = match self.name.as_str() {
                "master" | "beoserv" => ("-c", "config"),
                _ => ("--key", "key"),
            };
            names_file(self.pid, &argv, flag, &dir.join(file))
        };
        (names_ours && !exited(&fd)).then_some(fd)
    }
}

/// Whether `pid` runs bpmaster (`master`) or bpslave with a command line naming the `config`
/// (`-c`) or `key` (`--key`) file of cluster directory `dir`, as the same file (device and
/// inode). A relative name is taken from the process's working directory.
fn is_daemon_of(pid: i32, master: bool, dir: &Path) -> bool {
    let (prog, flag, file) =
        if master { ("bpmaster", "-c", "config") } else { ("bpslave", "--key", "key") };
    let argv = argv(pid);
    runs(&argv, prog) && names_file(pid, &argv, flag, &dir.join(file))
}

/// Whether command line `argv` runs `prog` (its first word ends with it).
fn runs(argv: &[Vec<u8>], prog: &str) -> bool {
    argv.first().is_some_and(|a0| Path::new(std::ffi::OsStr::from_bytes(a0)).ends_with(prog))
}

/// Whether `argv`, the command line of `pid`, has `flag PATH` with PATH the file `file` is
/// (device and inode); a relative PATH is taken from the process's working directory.
fn names_file(pid: i32, argv: &[Vec<u8>], flag: &str, file: &Path) -> bool {
    let Ok(ours) = std::fs::metadata(file) else { return false };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    argv.windows(2).any(|w| {
        w[0] == flag.as_bytes()
            && std::fs::metadata(cwd.join(std::ffi::OsStr::from_bytes(&w[1])))
                .is_ok_and(|m| (m.dev(), m.ino()) == (ours.dev(), ours.ino()))
    })
}

/// A daemon of a cluster that its `pids` file does not name (restarted by hand).
#[derive(Debug)]
pub struct Unrecorded {
    /// `master` or `slave`.
    pub name: &'static str,
    /// Its pid.
    pub pid: i32,
    /// A pidfd for it, opened once it was proved the cluster's.
    pub fd: OwnedFd,
}

/// The daemons of the cluster in `dir` other than the pids in `known`: the process serving
/// `DIR/master.sock` (which only the cluster's master does), and every bpmaster or bpslave
/// whose executable is that program and whose command line names this directory's `config`
/// or `key` ([`Recorded::find`]'s proof, without a recorded start time: the start time read
/// before the pidfd was opened must still be the process's after).
pub fn unrecorded_daemons(dir: &Path, known: &[i32]) -> Vec<Unrecorded> {
    let open = |pid: i32| {
        let t = start_time(pid)?;
        let fd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()?;
        (start_time(pid) == Some(t) && !exited(&fd)).then_some(fd)
    };
    let mut found = Vec::new();
    let socket = dir.join("master.sock");
    if let Some(pid) = bproc_sys::peer::socket_server(&socket).filter(|p| *p > 0) {
        if !known.contains(&pid) && pid_runs(pid, "bpmaster") {
            if let Some(fd) = open(pid) {
                // Still the process serving the socket, now that the pidfd pins it.
                if bproc_sys::peer::socket_server(&socket) == Some(pid) {
                    found.push(Unrecorded { name: "master", pid, fd });
                }
            }
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    let mut daemons = Vec::new();
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if known.contains(&pid) || found.iter().any(|f| f.pid == pid) {
            continue;
        }
        // Unrecorded, the program itself must be a daemon, not one that calls itself so.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        for master in [true, false] {
            let prog = if master { "bpmaster" } else { "bpslave" };
            if exe.file_name().is_some_and(|n| n == prog) && is_daemon_of(pid, master, dir) {
                if let Some(fd) = open(pid).filter(|_| is_daemon_of(pid, master, dir)) {
                    daemons.push(Unrecorded {
                        name: if master { "master" } else { "slave" },
                        pid,
                        fd,
                    });
                }
            }
        }
    }
    // A daemon's own forks (a slave's pid namespace init) share its command line: only
    // processes whose parent is not a daemon of the cluster count.
    let parents: Vec<i32> = known
        .iter()
        .copied()
        .chain(daemons.iter().map(|d| d.pid))
        .chain(found.iter().map(|f| f.pid))
        .collect();
    found.extend(
        daemons.into_iter().filter(|d| !parent_of(d.pid).is_some_and(|p| parents.contains(&p))),
    );
    found
}

/// The parent of `pid` (`/proc/PID/stat`, field 4).
fn parent_of(pid: i32) -> Option<i32> {
    bproc_sys::peer::Stat::read(pid)?.num(4)
}

/// Whether the process of `pidfd` has ended (a pidfd polls readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, 0u16).is_ok_and(|n| n > 0)
}

/// The processes recorded in a detached cluster's `pids` file.
pub fn recorded_pids(dir: &Path) -> Result<Vec<Recorded>, VclusterError> {
    let path = dir.join("pids");
    let text =
        std::fs::read_to_string(&path).map_err(|_| VclusterError::NoCluster(dir.to_owned()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let pid = f.next()?.parse().ok()?;
            let start = f.next().and_then(|t| t.parse().ok());
            Some(Recorded { name, pid, start })
        })
        .collect())
}

/// What [`stop_detached`] stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Daemons in total.
    pub daemons: usize,
    /// Of those, daemons the `pids` file did not name (restarted by hand).
    pub unrecorded: usize,
}

/// Stops a detached cluster: slaves, then the master (SIGTERM, then SIGKILL), and removes the
/// directory. Only processes proved to be the cluster's daemons are signalled, through their
/// pidfds: those recorded in `pids` ([`Recorded::find`]) and those it does not name, such as
/// a master restarted by hand ([`unrecorded_daemons`]), which would otherwise go on and
/// recreate the directory with its state file. A directory without a `pids` file is a
/// cluster only if such daemons are found.
pub fn stop_detached(dir: &Path) -> Result<Stopped, VclusterError> {
    let pids = match recorded_pids(dir) {
        Ok(p) => p,
        Err(VclusterError::NoCluster(_)) if dir.join("config").exists() => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut live: Vec<(bool, OwnedFd)> =
        pids.iter().filter_map(|r| Some((r.name == "master", r.find(dir)?))).collect();
    let known: Vec<i32> = pids.iter().map(|r| r.pid).collect();
    let extra = unrecorded_daemons(dir, &known);
    if pids.is_empty() && extra.is_empty() && !dir.join("pids").exists() {
        return Err(VclusterError::NoCluster(dir.to_owned()));
    }
    let unrecorded = extra.len();
    live.extend(extra.into_iter().map(|u| (u.name == "master", u.fd)));
    let (masters, slaves): (Vec<_>, Vec<_>) = live.iter().partition(|(master, _)| *master);
    for group in [slaves, masters] {
        for (_, fd) in &group {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while group.iter().any(|(_, fd)| !exited(fd)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, fd) in &group {
            if !exited(fd) {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
        }
    }
    std::fs::remove_dir_all(dir).map_err(file_err(dir))?;
    Ok(Stopped { daemons: live.len(), unrecorded })
}
