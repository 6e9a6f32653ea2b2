//! The master's process table: every remote process (by node and its pid there), the launch
//! rank it is, and its ghost on the master, with the ghost's connection.
//!
//! A remote process enters the table when its slave reports it started (`RankSpawned`) or
//! forked (`ProcEvent Forked`), and leaves when it ends or moves. A process that moves to
//! another node keeps its ghost, which then stands for the new copy (the old one's end is
//! ignored); one that moves back to the front end is restored into its ghost, which stops
//! being one. A ghost enters when it connects
//! (`GhostHello`; the kernel's `SO_PEERCRED` says which pid it is) or when its launcher names
//! it in a launch, whichever comes first, and leaves when its connection closes. Messages for
//! a ghost that has not connected yet wait in the table.
//!
//! A restarted master rebuilds the table: each slave that resumes its session lists its
//! processes with their ghosts (`SessionProcs`: a launched rank's ghost came with its launch,
//! a forked process's was told by `GhostOf`), and each ghost, which outlives the master,
//! connects again and says hello. A ghost that does not come back within the grace period
//! has its process killed; a ghost whose process no resumed slave names is told its node is
//! lost.
//!
//! The children a process on a node rforks get ghosts its own ghost forks
//! ([`Message::GhostRfork`]); each is taken in only as that ghost's child of the same user,
//! and says the port it relays output on. A client may wait for the end of one of its
//! remote processes by its ghost's pid ([`Message::ProcWait`]: the stand-ins a node's
//! rforking caller waits for); the waiters are told as the ghost is.
//!
//! Trust: a launch may name as ghosts only processes of the caller's uid (checked in
//! `/proc`); a ghost's hello must come from that uid (the kernel's word); a forked ghost must
//! be the child of a ghost of the same user; and the master signals only ghosts that said
//! hello. So no client can attach a remote process to someone else's process.

use std::collections::HashMap;
use std::sync::Arc;

use bproc_link::{write_frame, FrameReader};
use bproc_proto::{ExitStatus, Message, ProcChange, ProcEntry, SlaveProc};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::conn::{ClientRd, ClientWr};
use crate::Shared;

/// Why a ghost's hello is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotAGhost {
    /// Its parent or user is not the rforking caller's ghost's.
    #[error("pid {pid} is not the ghost of rfork {fork}")]
    OfRfork { pid: i32, fork: u64 },
    /// Its parent or user is not the forking process's ghost's.
    #[error("pid {pid} is not the ghost of fork {fork}")]
    OfFork { pid: i32, fork: u64 },
    /// No fork of that number waits for a ghost.
    #[error("fork {fork} is not pending")]
    NotPending { fork: u64 },
    /// Another connection speaks for that ghost.
    #[error("pid {pid} is already a ghost of another connection")]
    Taken { pid: i32 },
}

/// A remote process.
#[derive(Debug)]
struct Proc {
    /// Its ghost's pid, once known.
    ghost: Option<i32>,
    /// The launch and rank it is, for a launched process.
    launch: Option<(u64, u32)>,
    /// Owner.
    uid: u32,
    /// Where its forwarded output goes, for a launched process: kept across moves, so a copy
    /// on another node connects its streams there again.
    output: Option<Output>,
}

/// Where a launched process's forwarded stdout and stderr go: its launcher's listener (or its
/// relaying ghost's), the launch's token, and its rank there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Output {
    /// Address; `None`: the master's, as the node sees it.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Port.
    pub port: u16,
    /// The launch's token.
    pub token: [u8; 16],
    /// The rank.
    pub rank: u32,
    /// fds 1 and 2 forwarded.
    pub fds: [bool; 2],
}

/// A ghost on the master.
#[derive(Debug, Default)]
struct Ghost {
    /// Its connection, once it said hello.
    tx: Option<mpsc::UnboundedSender<Message>>,
    /// Messages waiting for the connection.
    queue: Vec<Message>,
    /// The remote process it stands for, once started.
    remote: Option<(i32, i32)>,
    /// Owner, from the launch or the connection.
    uid: Option<u32>,
    /// Told to stop (so a continue must wake it).
    stopped: bool,
    /// Seen stopped by a signal of its own (SIGSTOP, which it cannot catch), and its process
    /// stopped for it.
    stopped_here: bool,
    /// Waiting for its answer to [`Message::GhostRestore`].
    restoring: Option<tokio::sync::oneshot::Sender<i32>>,
    /// Counted in [`Inner::made`].
    counted: bool,
    /// Signals it forwarded (with their senders) before its process was known here: a
    /// launch's ghost exists before its rank has started, and they follow the start.
    held: Vec<(i32, i32)>,
}

impl Ghost {
    fn send(&mut self, msg: Message) {
        match &self.tx {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => self.queue.push(msg),
        }
    }
}

/// A child ghost asked for and not yet connected.
#[derive(Debug)]
struct Fork {
    node: i32,
    /// The child's pid on the node.
    child: i32,
    /// The ghost asked to fork it (0 while that ghost is itself a fork on its way), and the
    /// owner: a child ghost whose parent ghost has ended meanwhile (its process ended fast)
    /// is still taken in, from that owner.
    parent_ghost: i32,
    uid: u32,
    /// Messages for the child ghost, delivered when it connects.
    queue: Vec<Message>,
    /// For a fork asked ahead of the process's own ([`Message::ForkAhead`]).
    ahead: Option<Ahead>,
    /// The name the child ghost was given.
    comm: String,
}

/// A child ghost forked before the process forks, so that the child can take its pid. Its
/// [`Fork::child`] is 0 until the process's `Forked` event names the child.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    /// The forking process, on the fork's node.
    parent: i32,
    /// The slave's request number, answered once the ghost says its pid.
    seq: u32,
    /// The child ghost's pid, once its parent ghost said it ([`Message::GhostForked`]).
    ghost: i32,
    /// The child ghost said hello before its process's fork was reported.
    connected: bool,
    /// The fork made no child: the ghost ends as soon as it says hello.
    unused: bool,
}

#[derive(Debug, Default)]
struct Inner {
    procs: HashMap<(i32, i32), Proc>,
    ghosts: HashMap<i32, Ghost>,
    /// Forks asked of a parent's ghost, until the child ghost connects.
    forks: HashMap<u64, Fork>,
    next_fork: u64,
    /// Events that overtook the report of their process (a fork right after the start
    /// races the start's report on the node), kept until it comes.
    early: HashMap<(i32, i32), Vec<ProcChange>>,
    early_count: usize,
    /// Processes that moved away, until their end (which means nothing) is reported.
    moved: std::collections::HashSet<(i32, i32)>,
    /// Ghosts taken in since the master started ([`Ghosts::made`]).
    made: u64,
    /// Child ghosts asked of a ghost for the children its process rforks on a node, until
    /// they have said hello and their relay's port.
    rforks: HashMap<u64, Rfork>,
    /// Clients waiting for the end of the process of a ghost ([`Message::ProcWait`]).
    waiters: HashMap<i32, Vec<tokio::sync::oneshot::Sender<ExitStatus>>>,
    /// Messages for the slaves, made while the table was locked ([`Ghosts::take_for_node`]):
    /// the `GhostOf`s of ahead forks bound when their events came, the signals ghosts held
    /// until their processes were known, and the kills of processes whose ghosts died first.
    for_nodes: Vec<(i32, Message)>,
    /// How the processes of ghosts lately ended, with their owners, for a wait that comes
    /// after the end (a child that exits at once, before its stand-in asks); oldest first,
    /// at most [`MAX_ENDED`].
    ended: HashMap<i32, (u32, ExitStatus)>,
    ended_order: std::collections::VecDeque<i32>,
    /// Ghosts killed before their processes were known (their ranks still starting), oldest
    /// first, at most [`MAX_ENDED`]: a start that names one is killed as it comes.
    gone_early: std::collections::HashSet<i32>,
    gone_early_order: std::collections::VecDeque<i32>,
}

/// Most ends kept for late waits.
const MAX_ENDED: usize = 4096;

/// Most signals a ghost holds until its process is known; and the first real-time signal,
/// below which a signal is held once however often it comes (as the kernel keeps a
/// standard signal pending).
const MAX_HELD: usize = 64;
const FIRST_REALTIME: i32 = 32;

/// A child ghost asked for an rforked child ([`Message::GhostRfork`]).
#[derive(Debug)]
struct Rfork {
    /// The ghost asked to fork it, and its owner.
    parent: i32,
    uid: u32,
    /// Its pid, once it said hello.
    pid: Option<i32>,
    /// Where its pid and relay port go.
    done: Option<tokio::sync::oneshot::Sender<(i32, u16)>>,
}

/// Most early events kept; beyond, the oldest are dropped.
const MAX_EARLY: usize = 65536;

/// What an event means for a launch: rank `.1` of launch `.0` ended with `.2`.
pub(crate) type RankEnd = (u64, u32, ExitStatus);

impl Inner {
    /// The process of ghost `ghost` ended with `status`: tells whoever waits for it.
    fn notify(&mut self, ghost: i32, status: ExitStatus) {
        for w in self.waiters.remove(&ghost).unwrap_or_default() {
            let _ = w.send(status);
        }
    }

    /// Keeps how the process of ghost `ghost`, owned by `uid`, ended, for a late wait.
    fn remember_end(&mut self, ghost: i32, uid: u32, status: ExitStatus) {
        if self.ended.insert(ghost, (uid, status)).is_none() {
            self.ended_order.push_back(ghost);
        }
        while self.ended_order.len() > MAX_ENDED {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    /// Notes that `ghost` ended before its process was known ([`Inner::gone_early`]).
    fn remember_gone_early(&mut self, ghost: i32) {
        if self.gone_early.insert(ghost) {
            self.gone_early_order.push_back(ghost);
        }
        while self.gone_early_order.len() > MAX_ENDED {
            if let Some(old) = self.gone_early_order.pop_front() {
                self.gone_early.remove(&old);
            }
        }
    }

    /// Sends `msg` to the ghost of process (n, pid), or keeps it for the ghost of a fork
    /// that has not connected yet.
    fn deliver(&mut self, key: (i32, i32), msg: Message) {
        match self.procs.get(&key).and_then(|p| p.ghost) {
            Some(gp) => {
                if let Some(gh) = self.ghosts.get_mut(&gp) {
                    gh.send(msg);
                }
            }
            None => {
                if let Some(f) = self.forks.values_mut().find(|f| (f.node, f.child) == key) {
                    f.queue.push(msg);
                }
            }
        }
    }

    /// Applies the events of (n, pid) kept early, and those of the processes they create.
    fn replay(&mut self, key: (i32, i32), ends: &mut Vec<RankEnd>) {
        let mut work = vec![key];
        while let Some(k) = work.pop() {
            for change in self.early.remove(&k).unwrap_or_default() {
                self.early_count = self.early_count.saturating_sub(1);
                if let ProcChange::Forked { child, .. } = &change {
                    work.push((k.0, *child));
                }
                ends.extend(self.apply(k, change));
            }
        }
    }

    /// Applies one event of a known process.
    fn apply(&mut self, key: (i32, i32), change: ProcChange) -> Option<RankEnd> {
        let n = key.0;
        match change {
            ProcChange::Exited(status) => {
                self.drop_ahead(key);
                self.deliver(key, Message::ProcExit { launch: 0, rank: 0, status });
                let p = self.procs.remove(&key)?;
                if let Some(gh) = p.ghost.and_then(|gp| self.ghosts.get_mut(&gp)) {
                    gh.remote = None;
                    gh.held.clear();
                }
                if let Some(gp) = p.ghost {
                    self.remember_end(gp, p.uid, status);
                    self.notify(gp, status);
                }
                p.launch.map(|(l, r)| (l, r, status))
            }
            ProcChange::Stopped => {
                if let Some(gh) = self.ghost_of(key) {
                    gh.stopped = true;
                }
                self.deliver(key, Message::GhostState { stopped: true });
                None
            }
            ProcChange::Continued => {
                let gp = self.procs.get(&key).and_then(|p| p.ghost);
                if let Some(gh) = self.ghost_of(key) {
                    // Only a connected ghost is known to be what it claims.
                    if std::mem::take(&mut gh.stopped) && gh.tx.is_some() {
                        // A stopped ghost reads nothing until it is woken.
                        if let Some(gp) = gp {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(gp),
                                nix::sys::signal::Signal::SIGCONT,
                            );
                        }
                    }
                }
                if let Some(gh) = self.ghost_of(key) {
                    gh.stopped_here = false;
                }
                self.deliver(key, Message::GhostState { stopped: false });
                None
            }
            ProcChange::Forked { child, child_ns, comm } => {
                let uid = self.procs.get(&key)?.uid;
                if self.bind_ahead(key, child, child_ns, &comm, uid) {
                    return None;
                }
                // A child already known (a repeated report) keeps its ghost, or its fork.
                let pending = self.forks.values().any(|f| (f.node, f.child) == (n, child));
                if pending || self.procs.get(&(n, child)).is_some_and(|p| p.ghost.is_some()) {
                    return None;
                }
                self.procs
                    .insert((n, child), Proc { ghost: None, launch: None, uid, output: None });
                // The parent's ghost forks the child's; one still on its way does it when
                // it comes (the request waits with it).
                let has_ghost = self.procs.get(&key).is_some_and(|p| p.ghost.is_some());
                if has_ghost || self.forks.values().any(|f| (f.node, f.child) == key) {
                    self.next_fork += 1;
                    let fork = self.next_fork;
                    let parent_ghost = self.procs.get(&key).and_then(|p| p.ghost).unwrap_or(0);
                    let f = Fork {
                        node: n,
                        child,
                        parent_ghost,
                        uid,
                        queue: Vec::new(),
                        ahead: None,
                        comm: comm.clone(),
                    };
                    self.forks.insert(fork, f);
                    self.deliver(key, Message::GhostFork { fork, comm });
                }
                None
            }
            ProcChange::Exec { comm } => {
                self.deliver(key, Message::GhostExec { comm });
                None
            }
        }
    }

    /// Gives fork `child` of `key` (`child_ns` in the slave's namespace) the ghost forked
    /// ahead for it, if one is waiting: the one whose pid the child took, else the oldest
    /// (the child got another pid); true if it did.
    fn bind_ahead(
        &mut self,
        key: (i32, i32),
        child: i32,
        child_ns: i32,
        comm: &str,
        uid: u32,
    ) -> bool {
        let waiting: Vec<(u64, i32)> = self
            .forks
            .iter()
            .filter(|(_, f)| f.node == key.0 && f.child == 0)
            .filter_map(|(id, f)| {
                f.ahead.filter(|a| a.parent == key.1 && !a.unused).map(|a| (*id, a.ghost))
            })
            .collect();
        let exact = waiting.iter().find(|w| w.1 == child_ns && child_ns > 0).map(|w| w.0);
        if let Some(id) = exact {
            // The slave lets a process's forks go one at a time, and their events come in
            // that order: a try asked before this one and still waiting made no child (a
            // signal had the kernel start it over).
            self.end_ahead(waiting.iter().map(|w| w.0).filter(|w| *w < id).collect());
        }
        let Some(id) = exact.or_else(|| waiting.iter().map(|w| w.0).min()) else {
            return false;
        };
        if self.procs.get(&(key.0, child)).is_some_and(|p| p.ghost.is_some()) {
            return true;
        }
        self.procs.insert((key.0, child), Proc { ghost: None, launch: None, uid, output: None });
        let Some(f) = self.forks.get_mut(&id) else { return false };
        f.child = child;
        if f.comm != comm {
            // The child ran a program before its fork was reported: its ghost was named
            // after the parent.
            f.comm = comm.to_owned();
            f.queue.push(Message::GhostExec { comm: comm.to_owned() });
        }
        let Some(a) = f.ahead.filter(|a| a.connected) else { return true };
        // Its ghost is here already: they meet now.
        let Some(f) = self.forks.remove(&id) else { return true };
        if let Some(p) = self.procs.get_mut(&(key.0, child)) {
            p.ghost = Some(a.ghost);
        }
        asked_of(&mut self.forks, a.ghost, &f.queue);
        if let Some(gh) = self.ghosts.get_mut(&a.ghost) {
            gh.remote = Some((key.0, child));
            for m in f.queue {
                gh.send(m);
            }
        }
        self.for_nodes.push((key.0, Message::GhostOf { pid: child, ghost: a.ghost }));
        self.release_held(a.ghost, (key.0, child));
        true
    }

    /// Process `key` ended: ghosts forked ahead for forks of its that never came end too.
    fn drop_ahead(&mut self, key: (i32, i32)) {
        let unused: Vec<u64> = self
            .forks
            .iter()
            .filter(|(_, f)| f.node == key.0 && f.child == 0)
            .filter(|(_, f)| f.ahead.is_some_and(|a| a.parent == key.1))
            .map(|(id, _)| *id)
            .collect();
        self.end_ahead(unused);
    }

    /// Ends the ghosts forked ahead for forks `unused`, which made no child: now, or as they
    /// say hello (refused instead, one would come back as a ghost of nothing).
    fn end_ahead(&mut self, unused: Vec<u64>) {
        for id in unused {
            let Some(a) = self.forks.get_mut(&id).and_then(|f| f.ahead.as_mut()) else { continue };
            if !a.connected {
                a.unused = true;
                continue;
            }
            let ghost = a.ghost;
            self.forks.remove(&id);
            if let Some(gh) = self.ghosts.get_mut(&ghost) {
                gh.send(no_child());
            }
        }
    }

    /// Ghost `gp` now stands for process `key`: the signals it held go to that process
    /// (through [`Inner::for_nodes`]).
    fn release_held(&mut self, gp: i32, key: (i32, i32)) {
        let Some(gh) = self.ghosts.get_mut(&gp) else { return };
        for (signal, sender) in std::mem::take(&mut gh.held) {
            self.for_nodes.push((key.0, Message::SignalPid { pid: key.1, signal, sender }));
        }
    }

    fn ghost_of(&mut self, key: (i32, i32)) -> Option<&mut Ghost> {
        let gp = self.procs.get(&key)?.ghost?;
        self.ghosts.get_mut(&gp)
    }
}

/// The process table.
#[derive(Debug, Default)]
pub(crate) struct Ghosts(std::sync::Mutex<Inner>);

/// What ends the ghost of a fork that made no child.
fn no_child() -> Message {
    Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::Code(0) }
}

/// Ghost `gp` is sent `queue`, which waited for it: the forks asked there are its to make
/// (they were asked while it was on its way, of no ghost yet).
fn asked_of(forks: &mut HashMap<u64, Fork>, gp: i32, queue: &[Message]) {
    for m in queue {
        if let Message::GhostFork { fork, .. } = m {
            if let Some(f) = forks.get_mut(fork).filter(|f| f.parent_ghost == 0) {
                f.parent_ghost = gp;
            }
        }
    }
}

/// Whether process `pid` is alive (not ended, not a zombie), from `/proc`.
fn alive(pid: i32) -> bool {
    bproc_sys::peer::Stat::read(pid).and_then(|s| s.state()).is_some_and(|st| st != 'Z')
}

/// `(ppid, uid)` of a live process, from `/proc`.
pub(crate) fn parent_and_uid(pid: i32) -> Option<(i32, u32)> {
    let text = bproc_sys::peer::read_proc(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some((field("PPid:")? as i32, field("Uid:")? as u32))
}

impl Ghosts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A launch by `caller_pid` (uid `uid`) names `ghost` for one of its ranks; false (and
    /// the rank runs without a ghost) unless it is a process of the caller's uid. The ghost
    /// must then say hello with that uid (the kernel's word), and only a ghost that did is
    /// ever signalled by the master.
    pub(crate) fn claim(&self, ghost: i32, caller_pid: i32, uid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        // A ghost connected already is a live process of the uid the kernel gave for its
        // connection; for one not connected yet, /proc/PID belongs to the process's
        // effective uid: one stat (not under the lock), not a status read.
        if ghost <= 0 {
            return false;
        }
        let mut g = self.lock();
        let connected =
            g.ghosts.get(&ghost).is_some_and(|gh| gh.tx.is_some() && gh.uid == Some(uid));
        if !connected {
            drop(g);
            let owner = std::fs::metadata(format!("/proc/{ghost}")).map(|m| m.uid()).ok();
            if owner != Some(uid) {
                warn!("pid {caller_pid}: {ghost} is not a process of uid {uid}; no ghost");
                return false;
            }
            g = self.lock();
        }
        let entry = g.ghosts.entry(ghost).or_default();
        if entry.remote.is_some() || entry.uid.is_some_and(|u| u != uid) {
            return false;
        }
        entry.uid = Some(uid);
        true
    }

    /// Asks ghost `parent` (of uid `uid`, connected) to fork `n` child ghosts named `comm`
    /// that relay output presenting `token`, for the children its process rforks; returns
    /// each one's pid and relay port, or `None` for those that did not come within 10 s.
    pub(crate) async fn rfork(
        &self,
        parent: i32,
        uid: u32,
        comm: &str,
        token: [u8; 16],
        n: usize,
    ) -> Vec<Option<(i32, u16)>> {
        let mut waits = Vec::with_capacity(n);
        {
            let mut g = self.lock();
            let inner = &mut *g;
            for _ in 0..n {
                inner.next_fork += 1;
                let fork = inner.next_fork;
                let (tx, rx) = tokio::sync::oneshot::channel();
                inner.rforks.insert(fork, Rfork { parent, uid, pid: None, done: Some(tx) });
                if let Some(gh) = inner.ghosts.get_mut(&parent) {
                    gh.send(Message::GhostRfork { fork, comm: comm.to_owned(), token });
                }
                waits.push((fork, rx));
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut made = Vec::with_capacity(n);
        for (fork, rx) in waits {
            let got = tokio::time::timeout_at(deadline, rx).await.ok().and_then(Result::ok);
            if got.is_none() {
                warn!("ghost {parent}: no child ghost for rfork {fork}");
            }
            self.lock().rforks.remove(&fork);
            made.push(got);
        }
        made
    }

    /// The end of the remote process of ghost `ghost`, for a client of uid `uid` (its
    /// owner's, or root's); `None` when it is no remote process of theirs.
    pub(crate) fn wait(
        &self,
        ghost: i32,
        uid: u32,
        admin: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<ExitStatus>> {
        let mut g = self.lock();
        let (tx, rx) = tokio::sync::oneshot::channel();
        match g.ghosts.get(&ghost).and_then(|gh| gh.remote) {
            Some(key) => {
                let owner = g.procs.get(&key)?.uid;
                if owner != uid && !admin {
                    return None;
                }
                g.waiters.entry(ghost).or_default().push(tx);
            }
            None => {
                // Ended already: told at once, and only once.
                let (owner, status) = *g.ended.get(&ghost)?;
                if owner != uid && !admin {
                    return None;
                }
                g.ended.remove(&ghost);
                g.ended_order.retain(|p| *p != ghost);
                let _ = tx.send(status);
            }
        }
        Some(rx)
    }

    /// Ghost `pid` says its relay's port: completes the rfork it answers.
    fn relay_port(&self, pid: i32, port: u16) {
        let mut g = self.lock();
        if let Some(rf) = g.rforks.values_mut().find(|rf| rf.pid == Some(pid)) {
            if let Some(done) = rf.done.take() {
                let _ = done.send((pid, port));
            }
        }
    }

    /// Whether ghost `pid` has said hello on a connection that is still open.
    pub(crate) fn connected(&self, pid: i32) -> bool {
        self.lock().ghosts.get(&pid).is_some_and(|g| g.tx.is_some())
    }

    /// Sends `msg` to ghost `pid` (kept for it until it connects).
    pub(crate) fn send_to(&self, pid: i32, msg: Message) {
        if let Some(gh) = self.lock().ghosts.get_mut(&pid) {
            gh.send(msg);
        }
    }

    /// Where process `key`'s forwarded output goes, if it was launched with any.
    pub(crate) fn output_of(&self, key: (i32, i32)) -> Option<Output> {
        self.lock().procs.get(&key)?.output
    }

    /// The ghost of process `key` (of uid `uid`), which asks to move.
    pub(crate) fn ghost_for(&self, key: (i32, i32), uid: u32) -> Option<i32> {
        let g = self.lock();
        let ghost = g.procs.get(&key).filter(|p| p.uid == uid)?.ghost?;
        g.ghosts.get(&ghost).is_some_and(|gh| gh.remote == Some(key)).then_some(ghost)
    }

    /// Rank `rank` of `launch` started on node `n` as `pid` there (`ghost`: its ghost or 0).
    /// Returns the launch ranks that ended in events that came before this report. A ghost
    /// that stood for another process (which moved here) now stands for this one, which
    /// takes over the launch and rank the old one was.
    pub(crate) fn started(
        &self,
        n: i32,
        pid: i32,
        (launch, rank): (u64, u32),
        ghost: i32,
        uid: u32,
        mut output: Option<Output>,
    ) -> Vec<RankEnd> {
        let ghost = (ghost > 0).then_some(ghost);
        // A launch's ghost not connected by the time its rank started may have been killed
        // before its hello, which then never comes: one /proc read, not under the lock.
        let waiting = |gh: &Ghost| gh.tx.is_none() && gh.remote.is_none();
        let dead = ghost.is_some_and(|gp| {
            let unconnected = self.lock().ghosts.get(&gp).is_some_and(waiting);
            unconnected && !alive(gp)
        });
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(gp) = ghost {
            let killed = match inner.ghosts.get(&gp) {
                // Killed after its hello.
                None => inner.gone_early.remove(&gp),
                // Killed before it (and not connected since).
                Some(gh) => dead && waiting(gh),
            };
            if killed {
                // Its ghost was killed while the rank was starting: so is the process.
                inner.ghosts.remove(&gp);
                let signal = nix::sys::signal::Signal::SIGKILL as i32;
                inner.for_nodes.push((n, Message::SignalPid { pid, signal, sender: 0 }));
            }
        }
        let mut was = (launch, rank);
        if let Some(gh) = ghost.and_then(|p| inner.ghosts.get_mut(&p)) {
            if let Some(old) = gh.remote.replace((n, pid)).filter(|o| *o != (n, pid)) {
                if let Some(p) = inner.procs.remove(&old) {
                    was = p.launch.unwrap_or(was);
                    output = output.or(p.output);
                }
                inner.moved.insert(old);
            }
        }
        if let Some(gp) = ghost {
            inner.release_held(gp, (n, pid));
        }
        g.procs.insert((n, pid), Proc { ghost, launch: Some(was), uid, output });
        let mut ends = Vec::new();
        g.replay((n, pid), &mut ends);
        ends
    }

    /// A named ghost's rank did not start: forget it, unless it still stands for a process
    /// (one that failed to move), and tell it to end as its launcher would end it (by
    /// SIGKILL). Its launcher does so too, but one stopped or killed before it did would
    /// leave it waiting: a ghost whose connection just closes takes its master for gone and
    /// waits for it to come back.
    pub(crate) fn abandon(&self, ghost: i32) {
        let mut g = self.lock();
        let unused = g.ghosts.get(&ghost).is_some_and(|gh| gh.remote.is_none());
        if let Some(mut gh) = unused.then(|| g.ghosts.remove(&ghost)).flatten() {
            let killed = ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL as i32);
            gh.send(Message::ProcExit { launch: 0, rank: 0, status: killed });
        }
    }

    /// Process `key` moves back to the front end: its ghost restores it from the image at
    /// `image` (with `token`) and becomes it. Returns the ghost's pid, or the negated error.
    pub(crate) async fn take_back(
        &self,
        ghost: i32,
        key: (i32, i32),
        image: bproc_proto::Endpoint,
        token: [u8; 16],
    ) -> i32 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A process that moves back at once may find its ghost still starting.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut tx = Some(tx);
        loop {
            {
                let mut g = self.lock();
                let Some(gh) = g.ghosts.get_mut(&ghost).filter(|gh| gh.remote == Some(key)) else {
                    return -bproc_proto::errno::ESRCH;
                };
                if gh.tx.is_some() {
                    gh.restoring = tx.take();
                    gh.send(Message::GhostRestore { image, token });
                    break;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return -bproc_proto::errno::EAGAIN;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(60), rx).await {
            Ok(Ok(0)) => ghost,
            Ok(Ok(code)) => -code,
            _ => -bproc_proto::errno::EIO,
        }
    }

    /// Ghost `pid` answered its restore: with 0 it is its process now, no ghost, and the
    /// copy it took back from the node is gone from the table.
    fn restored(&self, pid: i32, code: i32) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(gh) = inner.ghosts.get_mut(&pid) else { return };
        let waiter = gh.restoring.take();
        if code == 0 {
            if let Some(key) = gh.remote.take() {
                inner.procs.remove(&key);
                inner.moved.insert(key);
            }
            inner.ghosts.remove(&pid);
        }
        if let Some(w) = waiter {
            let _ = w.send(code);
        }
    }

    /// Something happened to process `pid` of node `n`. Returns the launch ranks that ended,
    /// for the launches' own bookkeeping.
    pub(crate) fn event(&self, n: i32, pid: i32, change: ProcChange) -> Vec<RankEnd> {
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.moved.contains(&(n, pid)) {
            if matches!(change, ProcChange::Exited(_)) {
                inner.moved.remove(&(n, pid));
            }
            return Vec::new();
        }
        if !inner.procs.contains_key(&(n, pid)) {
            if inner.early_count >= MAX_EARLY {
                warn!("{MAX_EARLY} process events wait for their processes; dropping them");
                inner.early.clear();
                inner.early_count = 0;
            }
            inner.early.entry((n, pid)).or_default().push(change);
            inner.early_count += 1;
            return Vec::new();
        }
        let mut ends: Vec<RankEnd> = Vec::new();
        let forked = match &change {
            ProcChange::Forked { child, .. } => Some(*child),
            _ => None,
        };
        ends.extend(inner.apply((n, pid), change));
        if let Some(child) = forked {
            inner.replay((n, child), &mut ends);
        }
        ends
    }

    /// Node `n` is lost: every ghost of its processes dies as if by SIGKILL.
    pub(crate) fn node_lost(&self, n: i32) {
        let mut g = self.lock();
        let inner = &mut *g;
        let lost: Vec<(i32, i32)> = inner.procs.keys().filter(|k| k.0 == n).copied().collect();
        for key in lost {
            let Some(p) = inner.procs.remove(&key) else { continue };
            let Some(gp) = p.ghost else { continue };
            inner.remember_end(gp, p.uid, ExitStatus::NodeLost);
            inner.notify(gp, ExitStatus::NodeLost);
            if let Some(gh) = inner.ghosts.get_mut(&gp) {
                gh.remote = None;
                gh.held.clear();
                gh.send(Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::NodeLost });
            }
        }
        for f in inner.forks.values_mut().filter(|f| f.node == n) {
            f.queue.push(Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::NodeLost });
        }
        inner.early.retain(|k, _| k.0 != n);
        inner.moved.retain(|k| k.0 != n);
        inner.early_count = inner.early.values().map(Vec::len).sum();
    }

    /// Every remote process with a ghost, for `bpstat -p`.
    pub(crate) fn list(&self) -> Vec<ProcEntry> {
        let g = self.lock();
        let mut v: Vec<ProcEntry> = g
            .procs
            .iter()
            .filter_map(|(&(node, rpid), p)| {
                Some(ProcEntry { pid: p.ghost?, node, rpid, uid: p.uid })
            })
            .collect();
        v.sort_by_key(|e| e.pid);
        v
    }

    /// Node `n` resumed its session and runs `procs` for the master: the processes this
    /// master does not know yet enter the table (after a restart), with their ghosts, which
    /// must connect again. Returns the pids of processes to kill: ranks of a launch without
    /// ghosts (their launcher's connection went with the old master), and processes whose
    /// named ghost is already another process's or another user's; and the launch ranks that
    /// ended in events that waited for these processes.
    pub(crate) fn resumed(&self, n: i32, procs: Vec<SlaveProc>) -> (Vec<i32>, Vec<RankEnd>) {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut kill = Vec::new();
        for p in procs {
            let key = (n, p.pid);
            if inner.procs.contains_key(&key) || inner.moved.contains(&key) {
                continue;
            }
            let launch = (p.launch != 0).then_some((p.launch, p.rank));
            if p.ghost <= 0 {
                if launch.is_some() {
                    kill.push(p.pid);
                } else {
                    inner.procs.insert(key, Proc { ghost: None, launch, uid: p.uid, output: None });
                }
                continue;
            }
            if !inner.ghosts.contains_key(&p.ghost) && !alive(p.ghost) {
                // Its ghost has ended (the process too, whose end the slave sends again).
                continue;
            }
            let gh = inner.ghosts.entry(p.ghost).or_default();
            if gh.uid.is_some_and(|u| u != p.uid) || gh.remote.is_some_and(|r| r != key) {
                warn!(
                    "node {n}: process {} names ghost {}, which is not its; killing it",
                    p.pid, p.ghost
                );
                kill.push(p.pid);
                continue;
            }
            gh.uid = Some(p.uid);
            gh.remote = Some(key);
            inner.release_held(p.ghost, key);
            inner
                .procs
                .insert(key, Proc { ghost: Some(p.ghost), launch, uid: p.uid, output: None });
        }
        let mut ends = Vec::new();
        for key in inner.procs.keys().filter(|k| k.0 == n).copied().collect::<Vec<_>>() {
            inner.replay(key, &mut ends);
        }
        (kill, ends)
    }

    /// Connects ghost `pid` (uid `uid`), answering fork `fork` when not 0, and hands it the
    /// messages that waited for it. Returns the remote process of a forked ghost, whose slave
    /// is to be told its ghost; Err names why it is refused.
    fn connect(
        &self,
        pid: i32,
        uid: u32,
        fork: u64,
        tx: mpsc::UnboundedSender<Message>,
    ) -> Result<Option<(i32, i32)>, NotAGhost> {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut forked = None;
        let mut unused = false;
        let rforked = inner.rforks.get(&fork).is_some_and(|rf| rf.pid.is_none());
        if let Some(rf) = inner.rforks.get_mut(&fork).filter(|rf| rf.pid.is_none()) {
            // A ghost for an rforked child: forked by the caller's ghost, of its user.
            if parent_and_uid(pid) != Some((rf.parent, uid)) || rf.uid != uid {
                return Err(NotAGhost::OfRfork { pid, fork });
            }
            rf.pid = Some(pid);
            inner.ghosts.insert(pid, Ghost { uid: Some(uid), ..Ghost::default() });
        } else if fork != 0 {
            // A child ghost is forked by a ghost of the same user; if that ghost has ended
            // since (its process ended before the child ghost said hello), by the ghost that
            // was asked: its parent still, while it ends, or gone, which the child outlived.
            let parent = parent_and_uid(pid).map(|p| p.0);
            let by_ghost =
                parent.and_then(|pp| inner.ghosts.get(&pp)).is_some_and(|g| g.uid == Some(uid));
            let by_asked = inner.forks.get(&fork).is_some_and(|f| {
                f.uid == uid
                    && f.parent_ghost > 0
                    && (parent == Some(f.parent_ghost) || !alive(f.parent_ghost))
            });
            if !by_ghost && !by_asked {
                return Err(NotAGhost::OfFork { pid, fork });
            }
            let unbound = inner.forks.get_mut(&fork).filter(|f| f.child == 0);
            if let Some(a) = unbound.and_then(|f| f.ahead.as_mut()) {
                // Forked ahead, its process not forked yet: it waits for the event.
                a.ghost = pid;
                a.connected = true;
                let mut gh = Ghost { uid: Some(uid), ..Ghost::default() };
                if a.unused {
                    inner.forks.remove(&fork);
                    gh.queue.push(no_child());
                    unused = true;
                }
                inner.ghosts.insert(pid, gh);
            }
        }
        let bound = inner.forks.get(&fork).is_none_or(|f| f.child != 0);
        if fork != 0 && bound && !rforked && !unused {
            let Some(Fork { node: n, child, queue, .. }) = inner.forks.remove(&fork) else {
                return Err(NotAGhost::NotPending { fork });
            };
            // What happened meanwhile (a rename, its own forks, its end) follows at once.
            // A process that ended before its ghost came has its end in the queue: the ghost
            // stands for nothing else (the pid may be another process's by now).
            let ended = queue.iter().any(|m| matches!(m, Message::ProcExit { .. }));
            let mut gh = Ghost { uid: Some(uid), queue, ..Ghost::default() };
            if let Some(p) =
                inner.procs.get_mut(&(n, child)).filter(|p| !ended && p.ghost.is_none())
            {
                p.ghost = Some(pid);
                gh.remote = Some((n, child));
                forked = Some((n, child));
            }
            inner.ghosts.insert(pid, gh);
        }
        let gh = inner.ghosts.entry(pid).or_default();
        if gh.uid.is_some_and(|u| u != uid) || gh.tx.is_some() {
            return Err(NotAGhost::Taken { pid });
        }
        gh.uid = Some(uid);
        asked_of(&mut inner.forks, pid, &gh.queue);
        for m in gh.queue.drain(..) {
            let _ = tx.send(m);
        }
        gh.tx = Some(tx);
        if !gh.counted {
            gh.counted = true;
            inner.made += 1;
        }
        Ok(forked)
    }

    /// Ghosts that stayed half-known (not connected but with a process, or connected with
    /// none) for longer than `limit`, tracked in `since` from one call to the next; they are
    /// dropped from the table (a connected one is told its node is lost). Returns each with
    /// the process it leaves.
    fn half_known(
        &self,
        since: &mut HashMap<i32, tokio::time::Instant>,
        limit: std::time::Duration,
    ) -> Vec<(i32, Option<(i32, i32)>)> {
        let now = tokio::time::Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        let half = |gh: &Ghost| gh.restoring.is_none() && gh.tx.is_some() != gh.remote.is_some();
        since.retain(|pid, _| inner.ghosts.get(pid).is_some_and(half));
        for (&pid, gh) in &inner.ghosts {
            if half(gh) {
                since.entry(pid).or_insert(now);
            }
        }
        let over: Vec<i32> =
            since.iter().filter(|(_, t)| now - **t > limit).map(|(p, _)| *p).collect();
        let mut ended = Vec::new();
        for pid in over {
            since.remove(&pid);
            let Some(mut gh) = inner.ghosts.remove(&pid) else { continue };
            inner.notify(pid, ExitStatus::NodeLost);
            if let Some(key) = gh.remote {
                inner.procs.remove(&key);
            } else {
                let lost = ExitStatus::NodeLost;
                gh.send(Message::ProcExit { launch: 0, rank: 0, status: lost });
            }
            ended.push((pid, gh.remote));
        }
        ended
    }

    /// Ghost `pid`'s connection closed: returns the remote process it leaves running (it was
    /// killed: only SIGKILL can end a ghost before its process). One killed while its rank
    /// was starting is remembered, and its process killed as the start comes.
    fn disconnect(&self, pid: i32) -> Option<(i32, i32)> {
        let mut g = self.lock();
        // A ghost forked ahead for a fork that never came.
        g.forks.retain(|_, f| f.child != 0 || f.ahead.is_none_or(|a| a.ghost != pid));
        let gh = g.ghosts.remove(&pid)?;
        // Its process is killed with it: now, or as its start comes.
        g.notify(pid, ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL as i32));
        let Some(remote) = gh.remote else {
            // None yet, or none any more (its process ended, which is remembered).
            if !g.ended.contains_key(&pid) {
                g.remember_gone_early(pid);
            }
            return None;
        };
        // Only the process this ghost stands for (another ghost may stand for its pid now).
        let p = g.procs.get_mut(&remote).filter(|p| p.ghost == Some(pid))?;
        p.ghost = None;
        Some(remote)
    }

    /// Process `pid` on node `n` is about to fork (`ForkAhead` number `seq`): asks its ghost
    /// to fork the child's ghost now. Returns the answer when it is known at once: 0, no
    /// ghost to fork (the fork is followed as any other). Otherwise [`Ghosts::ghost_forked`]
    /// answers.
    pub(crate) fn fork_ahead(&self, n: i32, pid: i32, comm: String, seq: u32) -> Option<i32> {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(p) = inner.procs.get(&(n, pid)) else { return Some(0) };
        let uid = p.uid;
        // A ghost that has yet to connect gets the request when it does.
        let Some(gp) = p.ghost.filter(|gp| inner.ghosts.contains_key(gp)) else {
            return Some(0);
        };
        inner.next_fork += 1;
        let fork = inner.next_fork;
        let ahead = Ahead { parent: pid, seq, ghost: 0, connected: false, unused: false };
        let f = Fork {
            node: n,
            child: 0,
            parent_ghost: gp,
            uid,
            queue: Vec::new(),
            ahead: Some(ahead),
            comm: comm.clone(),
        };
        inner.forks.insert(fork, f);
        if let Some(gh) = inner.ghosts.get_mut(&gp) {
            gh.send(Message::GhostFork { fork, comm });
        }
        None
    }

    /// Ghost `by` forked the child ghost of fork `fork`, which has pid `pid`: returns the
    /// node and request to answer with it, for a fork asked ahead.
    fn ghost_forked(&self, by: i32, fork: u64, pid: i32) -> Option<(i32, u32)> {
        let mut g = self.lock();
        let f = g.forks.get_mut(&fork).filter(|f| f.parent_ghost == by && pid > 0)?;
        let a = f.ahead.as_mut().filter(|a| !a.unused)?;
        if a.ghost == 0 {
            a.ghost = pid;
        }
        Some((f.node, a.seq))
    }

    /// What the table made for node `n` since the last call ([`Inner::for_nodes`]).
    pub(crate) fn take_for_node(&self, n: i32) -> Vec<Message> {
        let mut g = self.lock();
        let (mine, rest) = std::mem::take(&mut g.for_nodes).into_iter().partition(|m| m.0 == n);
        g.for_nodes = rest;
        mine.into_iter().map(|m: (i32, Message)| m.1).collect()
    }

    /// How many ghosts have said hello since the master started (each at its first hello
    /// on a connection the master kept).
    pub(crate) fn made(&self) -> u64 {
        self.lock().made
    }

    /// Where a signal to ghost `pid` goes: its process `(node, pid)`; none while that is
    /// not known yet (its rank still starting), and the signal is held until it is (one of
    /// each standard signal, as the kernel keeps them pending, and at most [`MAX_HELD`]).
    pub(crate) fn signal_target(&self, pid: i32, signal: i32, sender: i32) -> Option<(i32, i32)> {
        let mut g = self.lock();
        let gh = g.ghosts.get_mut(&pid)?;
        if gh.remote.is_none() {
            let again = signal < FIRST_REALTIME && gh.held.iter().any(|h| h.0 == signal);
            if !again && gh.held.len() < MAX_HELD {
                gh.held.push((signal, sender));
            }
        }
        gh.remote
    }
}

/// Serves a ghost's connection: its signals go to its remote process; what happens to that
/// process comes back. `pid` and `uid` are the kernel's.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    pid: i32,
    uid: u32,
    fork: u64,
    rd: ClientRd,
    mut wr: ClientWr,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    match shared.ghosts.connect(pid, uid, fork, tx) {
        Ok(Some((n, child))) => {
            if let Some(node) = shared.table().get(n) {
                node.send(0, Message::GhostOf { pid: child, ghost: pid });
            }
        }
        Ok(None) => {}
        Err(e) => {
            warn!("ghost {pid}: {e}");
            return;
        }
    }
    debug!("ghost {pid} (uid {uid}) connected");
    // Cancel-safe: the select below also waits for messages to the ghost.
    let mut frames = FrameReader::new(rd);
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(msg) = out else { break };
                if write_frame(&mut wr, 0, &msg).await.is_err() {
                    break;
                }
            }
            frame = frames.next() => match frame {
                Ok(Some((_, Message::GhostRestored { code }))) => {
                    shared.ghosts.restored(pid, code);
                    if code == 0 {
                        // No longer a ghost: this connection has nothing more to say.
                        return;
                    }
                }
                // The ranks on the front end it starts for its process (a launcher on a node).
                Ok(Some((_, Message::RankSpawned { launch, rank, pid: child }))) => {
                    shared.launches.front_spawned(pid, launch, rank, child);
                }
                Ok(Some((_, Message::ProcExit { launch, rank, status }))) => {
                    shared.launches.front_exited(pid, launch, rank, status);
                }
                Ok(Some((_, Message::GhostRelayPort { port }))) => {
                    shared.ghosts.relay_port(pid, port);
                }
                Ok(Some((_, Message::GhostForked { fork, pid: child }))) => {
                    if let Some((n, seq)) = shared.ghosts.ghost_forked(pid, fork, child) {
                        if let Some(node) = shared.table().get(n) {
                            node.send(0, Message::ForkAheadReply { seq, ghost: child });
                        }
                    }
                }
                Ok(Some((_, Message::GhostSignal { signal, sender }))) => {
                    if let Some((n, rpid)) = shared.ghosts.signal_target(pid, signal, sender) {
                        if let Some(node) = shared.table().get(n) {
                            node.send(0, Message::SignalPid { pid: rpid, signal, sender });
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    if let Some((n, rpid)) = shared.ghosts.disconnect(pid) {
        debug!("ghost {pid} died; killing its process {rpid} on node {n}");
        if let Some(node) = shared.table().get(n) {
            let signal = nix::sys::signal::Signal::SIGKILL as i32;
            node.send(0, Message::SignalPid { pid: rpid, signal, sender: 0 });
        }
    }
}

/// The state, CPU time and memory of the remote processes with ghosts `pids` (all when
/// empty), asked of their nodes at once; `rpid` in the answer is the ghost's pid.
pub(crate) async fn stats(shared: &Arc<Shared>, pids: Vec<i32>) -> Message {
    let mut by_node: HashMap<i32, Vec<(i32, i32)>> = HashMap::new();
    for e in shared.ghosts.list() {
        if pids.is_empty() || pids.contains(&e.pid) {
            by_node.entry(e.node).or_default().push((e.rpid, e.pid));
        }
    }
    let mut asks = tokio::task::JoinSet::new();
    for (n, procs) in by_node {
        let shared = shared.clone();
        asks.spawn(async move {
            let query = Message::ProcStatQuery { pids: procs.iter().map(|p| p.0).collect() };
            let limit = std::time::Duration::from_secs(5);
            match shared.request_within(n, query, limit).await {
                Message::ProcStats { stats } => stats
                    .into_iter()
                    .filter_map(|mut s| {
                        s.rpid = procs.iter().find(|p| p.0 == s.rpid)?.1;
                        Some(s)
                    })
                    .collect(),
                _ => Vec::new(),
            }
        });
    }
    let mut stats = Vec::new();
    while let Some(r) = asks.join_next().await {
        stats.extend(r.unwrap_or_default());
    }
    stats.sort_by_key(|s| s.rpid);
    Message::ProcStats { stats }
}

/// How often ghosts are checked for a SIGSTOP of their own.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The shortest wait for a half-known ghost: longer than a launch waits for its ranks.
const MIN_HALF_WAIT: std::time::Duration = std::time::Duration::from_secs(35);

/// SIGSTOP cannot be caught, so a ghost cannot forward it: once a second the master looks at
/// the state of every connected ghost, and stops the process of a ghost stopped by nobody but
/// itself. Its SIGCONT, which it can catch, resumes the process the usual way.
///
/// The same look ends what a master restart left half-known, once the grace period is over:
/// a process whose ghost never came back is killed, and a ghost whose process no slave named
/// is told its node is lost.
pub(crate) async fn stop_watch(shared: Arc<Shared>) {
    let mut half: HashMap<i32, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(STOP_CHECK).await;
        let limit = {
            let c = shared.config();
            std::time::Duration::from_secs(u64::from(c.grace) + u64::from(c.ping_timeout))
                .max(MIN_HALF_WAIT)
        };
        for (pid, remote) in shared.ghosts.half_known(&mut half, limit) {
            match remote {
                Some((n, rpid)) => {
                    warn!("ghost {pid} did not come back; killing its process {rpid} on node {n}");
                    if let Some(node) = shared.table().get(n) {
                        let signal = nix::sys::signal::Signal::SIGKILL as i32;
                        node.send(0, Message::SignalPid { pid: rpid, signal, sender: 0 });
                    }
                }
                None => warn!("ghost {pid}: no node named its process; ending it as lost"),
            }
        }
        let ghosts: Vec<(i32, (i32, i32))> = {
            let g = shared.ghosts.lock();
            g.ghosts
                .iter()
                .filter(|(_, gh)| gh.tx.is_some() && !gh.stopped && !gh.stopped_here)
                .filter_map(|(&pid, gh)| Some((pid, gh.remote?)))
                .collect()
        };
        for (pid, (n, rpid)) in ghosts {
            if state_of(pid) != Some('T') {
                continue;
            }
            if let Some(gh) = shared.ghosts.lock().ghosts.get_mut(&pid) {
                gh.stopped_here = true;
            }
            debug!("ghost {pid} was stopped; stopping its process {rpid} on node {n}");
            if let Some(node) = shared.table().get(n) {
                let signal = nix::sys::signal::Signal::SIGSTOP as i32;
                node.send(0, Message::SignalPid { pid: rpid, signal, sender: 0 });
            }
        }
    }
}

/// The state letter of process `pid` (`T` when stopped).
fn state_of(pid: i32) -> Option<char> {
    bproc_sys::peer::Stat::read(pid)?.state()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ghost that said hello (its connection's sending side, left open).
    fn connected() -> Ghost {
        let (tx, rx) = mpsc::unbounded_channel();
        std::mem::forget(rx);
        Ghost { tx: Some(tx), ..Ghost::default() }
    }

    #[test]
    fn signals_before_the_start_are_held_and_follow_it() {
        let g = Ghosts::default();
        g.lock().ghosts.insert(100, connected());
        let signal = |signal, sender| Message::SignalPid { pid: 555, signal, sender };
        // A standard signal is held once, however often it comes; a real-time one each time.
        for (sig, sender) in [(15, 7), (15, 8), (40, 9), (40, 10)] {
            assert_eq!(g.signal_target(100, sig, sender), None);
        }
        assert!(g.take_for_node(3).is_empty(), "nothing goes before the start");
        g.started(3, 555, (1, 0), 100, 0, None);
        assert_eq!(g.take_for_node(3), [signal(15, 7), signal(40, 9), signal(40, 10)]);
        // Once started, a signal goes at once.
        assert_eq!(g.signal_target(100, 2, 0), Some((3, 555)));
        assert!(g.take_for_node(3).is_empty());
        // No more than MAX_HELD are held; none for a ghost the table does not know.
        g.lock().ghosts.insert(101, connected());
        for _ in 0..2 * MAX_HELD {
            g.signal_target(101, 40, 0);
        }
        assert_eq!(g.lock().ghosts[&101].held.len(), MAX_HELD);
        assert_eq!(g.signal_target(999, 15, 0), None);
    }

    #[test]
    fn a_ghost_whose_rank_did_not_start_is_told_to_end() {
        let g = Ghosts::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        g.lock().ghosts.insert(100, Ghost { tx: Some(tx), ..Ghost::default() });
        g.abandon(100);
        let killed = ExitStatus::Signal(9);
        assert_eq!(
            rx.try_recv().ok(),
            Some(Message::ProcExit { launch: 0, rank: 0, status: killed })
        );
        assert!(rx.try_recv().is_err(), "then its connection closes");
        assert!(g.lock().ghosts.is_empty());
    }

    #[test]
    fn a_ghost_killed_before_the_start_takes_its_process_with_it() {
        let g = Ghosts::default();
        let kill = |pid| Message::SignalPid { pid, signal: 9, sender: 0 };
        // Killed after its hello: its connection closed.
        g.lock().ghosts.insert(100, connected());
        assert_eq!(g.disconnect(100), None);
        g.started(3, 555, (1, 0), 100, 0, None);
        assert_eq!(g.take_for_node(3), [kill(555)]);
        // Killed before its hello: claimed by the launch, and no longer a process.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id() as i32;
        gone.wait().unwrap();
        g.lock().ghosts.insert(dead, Ghost::default());
        g.started(3, 556, (1, 1), dead, 0, None);
        assert_eq!(g.take_for_node(3), [kill(556)]);
        // Alive and not connected yet, or not known at all: the process runs.
        let me = std::process::id() as i32;
        g.lock().ghosts.insert(me, Ghost::default());
        g.started(3, 557, (1, 2), me, 0, None);
        g.started(3, 558, (1, 3), 101, 0, None);
        assert!(g.take_for_node(3).is_empty());
    }

    #[test]
    fn ghosts_of_tries_that_made_no_child_end_when_a_later_fork_takes_its_own() {
        let g = Ghosts::default();
        g.lock().ghosts.insert(100, connected());
        g.started(3, 555, (1, 0), 100, 0, None);
        // Three tries of process 555's fork: the ghost of the first said hello, the others
        // not yet; only the third made a child, which took its ghost's pid.
        let fork = |seq| {
            assert_eq!(g.fork_ahead(3, 555, "sh".into(), seq), None);
            g.lock().next_fork
        };
        let (first, second, third) = (fork(1), fork(2), fork(3));
        for (f, pid) in [(first, 201), (second, 202), (third, 203)] {
            assert_eq!(g.ghost_forked(100, f, pid), Some((3, f as u32)));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut inner = g.lock();
            let a = inner.forks.get_mut(&first).and_then(|f| f.ahead.as_mut()).unwrap();
            a.connected = true;
            inner.ghosts.insert(201, Ghost { tx: Some(tx), ..Ghost::default() });
        }
        let change = ProcChange::Forked { child: 9003, child_ns: 203, comm: "sh".into() };
        assert!(g.event(3, 555, change).is_empty());
        let ended = Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::Code(0) };
        assert_eq!(rx.try_recv().ok(), Some(ended), "the first try's ghost ends now");
        let inner = g.lock();
        assert!(!inner.forks.contains_key(&first));
        let unused = |f: u64| inner.forks.get(&f).and_then(|f| f.ahead).map(|a| a.unused);
        assert_eq!(unused(second), Some(true), "the second's ends as it says hello");
        assert_eq!(inner.forks.get(&third).map(|f| f.child), Some(9003));
    }
}
