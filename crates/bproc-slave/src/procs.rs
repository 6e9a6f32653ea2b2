//! Processes the slave runs for the master: start them as the caller (in the master's pid
//! namespace, with their ghosts' pids, when the slave is root), connect their forwarded fds
//! back to the launcher, deliver the signals their ghosts forward, and report how they stop,
//! continue, fork, exec and end.
//!
//! A forwarded fd is a TCP connection from this node to the launcher's listener (on the
//! master's address as this node sees it). The slave opens it before the process starts and
//! hands the socket to the process as its fd, so output flows from the process to the launcher
//! with no copy through any daemon, and TCP flow control bounds memory on both sides. The
//! connection opens with a 21-byte header: the launch's 16-byte token, the rank (u32,
//! big-endian) and the fd number (u8).

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bproc_proto::errno::{EINVAL, EPERM};
use bproc_proto::{Creds, ExitStatus, IoSpec, Message, ProcChange, ProcSpec, StagedRef};
use bproc_sys::{FdFile, Identity, Jail};

use crate::isolate::Diskless;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use bproc_proto::conn::{FETCH as FETCH_FD, IMAGE as IMAGE_FD};

/// The processes this slave runs for its master: started here (on a spawner thread that
/// owns the master's pid namespace, when the slave is root), watched for stop, continue and
/// exit through SIGCHLD, and reported as [`Message::ProcEvent`]s.
#[derive(Clone)]
pub struct Procs(Arc<ProcsInner>);

struct ProcsInner {
    /// Running launch ranks: (launch, rank) → pid.
    ranks: Mutex<HashMap<(u64, u32), i32>>,
    /// Direct children being watched.
    children: Mutex<std::collections::HashSet<i32>>,
    /// Direct children killed with their session ([`Procs::kill_all`]): reaped, not reported.
    doomed: Mutex<std::collections::HashSet<i32>>,
    /// Every process of the master's here (direct children and what they forked).
    known: Mutex<HashMap<i32, Known>>,
    /// Processes that ended since the last [`Procs::session_procs`], kept so a restarted
    /// master still learns whose end the events it is yet to receive report.
    ended: Mutex<HashMap<i32, Known>>,
    /// Wakes [`Procs::follow`] when a process starts.
    started: tokio::sync::Notify,
    /// The kernel's process events for the known processes, when this slave may have them
    /// (root): forks, execs and ends as they happen ([`Procs::listen`]).
    events: std::sync::OnceLock<Arc<bproc_sys::procevents::Events>>,
    /// Processes this slave started and does not track yet (their start is on its way to
    /// the master), with the events of theirs that came meanwhile, replayed by
    /// [`Procs::track`]: a process may fork before it is tracked.
    fresh: Mutex<HashMap<i32, Vec<bproc_sys::procevents::ProcEvent>>>,
    /// Where events go.
    report: Box<dyn Fn(Message) + Send + Sync>,
    spawner: Spawner,
    /// Answers the forks of the processes started here, so that each child takes its
    /// ghost's pid (root slaves, [`crate::forks`]).
    forks: std::sync::OnceLock<Arc<crate::forks::Forks>>,
}

/// The forks thread's view of the slave.
struct ForksHost(std::sync::Weak<ProcsInner>);

impl crate::forks::Host for ForksHost {
    fn tracked(&self, tid: i32, limit: std::time::Duration) -> Option<(i32, String)> {
        let deadline = std::time::Instant::now() + limit;
        let pid = match self.0.upgrade().map(|i| Procs(i).known().contains_key(&tid)) {
            Some(true) => tid,
            // A thread other than the main one forks: its process is its thread group.
            _ => thread_group(tid).unwrap_or(tid),
        };
        loop {
            let inner = self.0.upgrade()?;
            let procs = Procs(inner);
            if let Some(k) = procs.known().get(&pid) {
                return Some((pid, k.comm.clone()));
            }
            // Just started: its start is on its way to the master, and it is tracked after.
            if !procs.fresh().contains_key(&pid) || std::time::Instant::now() >= deadline {
                return None;
            }
            drop(procs);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    fn send(&self, msg: Message) {
        if let Some(inner) = self.0.upgrade() {
            (inner.report)(msg);
        }
    }
}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Procs").finish_non_exhaustive()
    }
}

impl Procs {
    /// Tracks processes, sending their events to `report`; with `pid_namespace`, they start
    /// in a pid namespace of their own, where each takes its ghost's pid.
    pub fn new(
        report: impl Fn(Message) + Send + Sync + 'static,
        pid_namespace: bool,
        diskless: Option<&Diskless>,
    ) -> Procs {
        let extra_proc = diskless.map(|d| d.root.join("proc"));
        let procs = Procs(Arc::new(ProcsInner {
            ranks: Mutex::default(),
            children: Mutex::default(),
            doomed: Mutex::default(),
            known: Mutex::default(),
            ended: Mutex::default(),
            started: tokio::sync::Notify::new(),
            events: std::sync::OnceLock::new(),
            fresh: Mutex::default(),
            report: Box::new(report),
            spawner: Spawner::start(pid_namespace, extra_proc),
            forks: std::sync::OnceLock::new(),
        }));
        if procs.same_pids() && std::env::var_os("BPROC_NO_FORK_PIDS").is_none() {
            let host = ForksHost(Arc::downgrade(&procs.0));
            match crate::forks::Forks::start(host, procs.0.spawner.last_pid.clone()) {
                Ok(f) => {
                    let _ = procs.0.forks.set(f);
                }
                Err(e) => warn!("forks keep the pids the kernel gives ({e})"),
            }
        }
        procs
    }

    /// The master's answer to `ForkAhead` number `seq`: the child ghost's pid.
    pub fn fork_ahead_reply(&self, seq: u32, ghost: i32) {
        if let Some(f) = self.0.forks.get() {
            f.answer(seq, ghost);
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Known>> {
        self.0.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets ended process `pid`, keeping what a restarted master may need of it; true if
    /// it was known.
    fn forget(&self, pid: i32, end: ExitStatus) -> bool {
        let Some(mut k) = self.known().remove(&pid) else { return false };
        k.end = Some(end);
        k.gone = Some(std::time::Instant::now());
        let mut ended = self.0.ended.lock().unwrap_or_else(|e| e.into_inner());
        if ended.len() >= ENDED_PRUNE_AT && ended.len().is_multiple_of(256) {
            // Every fork ends up here: keep what a restarted master may still ask about, and
            // under a storm of forks only the last seconds'.
            ended.retain(|_, e| e.gone.is_none_or(|t| t.elapsed() < ENDED_KEPT));
            if ended.len() >= 4 * ENDED_PRUNE_AT {
                ended.retain(|_, e| e.gone.is_none_or(|t| t.elapsed() < REPORTED_LATELY));
            }
        }
        ended.insert(pid, k);
        true
    }

    /// Starts knowing fork `child`; false (nothing to report) when it is known already, or
    /// ended lately and was reported (a late look, or the other of the two watchers).
    fn adopt(&self, child: i32, k: Known) -> bool {
        let mut known = self.known();
        if known.contains_key(&child) {
            return false;
        }
        let lately = |e: &Known| e.gone.is_some_and(|t| t.elapsed() < REPORTED_LATELY);
        if self.0.ended.lock().is_ok_and(|e| e.get(&child).is_some_and(lately)) {
            return false;
        }
        known.insert(child, k);
        true
    }

    /// A process this slave has just started: watched at once (it may fork before it is
    /// tracked).
    fn fresh_start(&self, pid: i32) {
        if self.0.events.get().is_some() && !self.known().contains_key(&pid) {
            self.fresh().entry(pid).or_default();
            self.rewatch();
        }
    }

    /// The processes a resumed session has: every live one, and those that ended with their
    /// end still to be reported (`unreported`), each with its ghost, launch and owner; and
    /// those with a ghost that ended since the last session, with how they ended, whose end
    /// the master may have lost with the old link (a restarted master never saw it): it is
    /// sent again after the list.
    pub fn session_procs(
        &self,
        unreported: &[i32],
    ) -> (Vec<bproc_proto::SlaveProc>, Vec<(i32, ExitStatus)>) {
        let ended = std::mem::take(&mut *self.0.ended.lock().unwrap_or_else(|e| e.into_inner()));
        let known = self.known();
        let entry = |(pid, k): (&i32, &Known)| bproc_proto::SlaveProc {
            pid: *pid,
            ghost: k.ghost,
            launch: k.launch,
            rank: k.rank,
            uid: k.uid,
        };
        let again: Vec<(i32, ExitStatus)> = ended
            .iter()
            .filter(|(p, k)| !unreported.contains(p) && k.ghost > 0)
            .filter_map(|(p, k)| Some((*p, k.end?)))
            .collect();
        let procs = known
            .iter()
            .map(entry)
            .chain(
                ended
                    .iter()
                    .filter(|(p, _)| unreported.contains(p) || again.iter().any(|a| a.0 == **p))
                    .map(entry),
            )
            .collect();
        (procs, again)
    }

    /// The master names the ghost of process `pid` (a fork's).
    pub fn set_ghost(&self, pid: i32, ghost: i32) {
        if let Some(k) = self.known().get_mut(&pid) {
            k.ghost = ghost;
        }
    }

    /// Follows what the master's processes here fork, exec and end, by looking at their
    /// children and names in `/proc`: a fork becomes a ghost on the master under its
    /// parent's. Looking often while a process is young and rarely after keeps the cost to
    /// this node's own processes (the kernel's process events go to every listener on the
    /// machine, which a virtual cluster of a thousand nodes on one host cannot afford).
    pub async fn follow(self) {
        self.listen();
        loop {
            let youngest = self.0.known.lock().map_or(None, |k| k.values().map(|p| p.seen).max());
            match youngest {
                None => self.0.started.notified().await,
                Some(t) => {
                    // The first look 50 ms after the latest start, then ever less often, up
                    // to once a second: a short process is never looked at, and a thousand
                    // slaves on one host do not poll each other off the CPU.
                    let tick = t.elapsed().clamp(LOOK_FIRST, LOOK_MAX);
                    tokio::time::sleep(tick).await;
                }
            }
            self.scan_proc();
        }
    }

    /// Subscribes to the kernel's process events, filtered to the known processes (and the
    /// exits of their children), and handles them on a thread of its own: every fork is
    /// seen as it happens, however short the child's life, and every end with its status.
    /// Looking at `/proc` goes on, as a backstop (events lost to a full socket buffer, a
    /// child that forked before it was watched). Without the right (`CAP_NET_ADMIN`), looking
    /// is all there is.
    fn listen(&self) {
        use bproc_sys::procevents::Events;
        if std::env::var_os("BPROC_NO_PROCEVENTS").is_some() {
            return;
        }
        let events = match Events::open() {
            Ok(e) => Arc::new(e),
            Err(e) => {
                info!("following forks by looking at /proc (process events: {e})");
                return;
            }
        };
        let _ = self.0.events.set(events.clone());
        self.rewatch();
        let procs = self.clone();
        let started = std::thread::Builder::new().name("procevents".into()).spawn(move || loop {
            match events.next() {
                Ok(list) => list.into_iter().for_each(|e| procs.on_event(e)),
                // Events were lost: look at everything once.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => procs.scan_proc(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("process events: {e}; following forks by looking at /proc");
                    return;
                }
            }
        });
        if let Err(e) = started {
            warn!("process events: {e}");
        }
    }

    fn fresh(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<bproc_sys::procevents::ProcEvent>>> {
        self.0.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points the event filter at the known processes, those just started, and this slave
    /// (whose forks are the processes it starts).
    fn rewatch(&self) {
        let Some(events) = self.0.events.get() else { return };
        let mut pids: Vec<i32> = self.known().keys().copied().collect();
        pids.extend(self.fresh().keys().copied());
        pids.push(std::process::id() as i32);
        if let Err(e) = events.watch(&pids) {
            debug!("process event filter: {e}");
        }
    }

    /// One process event of a known process (or of a known process's child).
    fn on_event(&self, e: bproc_sys::procevents::ProcEvent) {
        use bproc_sys::procevents::ProcEvent;
        self.on_event_inner(e);
        // After the fork is reported: the next fork's request must not overtake it.
        if let (ProcEvent::Fork { parent, .. }, Some(f)) = (e, self.0.forks.get()) {
            f.forked(parent);
        }
    }

    fn on_event_inner(&self, e: bproc_sys::procevents::ProcEvent) {
        use bproc_sys::procevents::ProcEvent;
        // This slave's own child: a process it starts, watched at once.
        if let ProcEvent::Fork { parent, child } = e {
            if parent == std::process::id() as i32 {
                if !self.known().contains_key(&child) {
                    self.fresh().insert(child, Vec::new());
                }
                self.rewatch();
                return;
            }
        }
        // An event of (or about the child of) a process not tracked yet waits for it.
        let owner = match e {
            ProcEvent::Fork { parent, .. } => parent,
            ProcEvent::Exec { pid } => pid,
            ProcEvent::Exit { pid, parent, .. } => {
                if self.fresh().remove(&pid).is_some() {
                    // Ended before it was tracked: the reaper reports it.
                    return;
                }
                if self.known().contains_key(&pid) {
                    pid
                } else {
                    parent
                }
            }
        };
        if self.known().contains_key(&owner) {
            // Tracked meanwhile: what waited for it comes first.
            let waiting = self.fresh().remove(&owner).unwrap_or_default();
            for w in waiting {
                self.handle(w);
            }
        } else if let Some(queue) = self.fresh().get_mut(&owner) {
            queue.push(e);
            return;
        }
        self.handle(e);
    }

    /// [`Procs::on_event`] for an event of a tracked process.
    fn handle(&self, e: bproc_sys::procevents::ProcEvent) {
        use bproc_sys::procevents::ProcEvent;
        match e {
            ProcEvent::Fork { parent, child } => {
                let parent_of = self.known().get(&parent).map(|k| (k.uid, k.comm.clone()));
                let Some((uid, parent_comm)) = parent_of else { return };
                // A child gone already keeps its parent's name (it had no time to exec).
                let (comm, child_ns) = comm_and_ns_pid(child).unwrap_or((parent_comm, 0));
                if !self.adopt(child, Known::new(comm.clone(), 0, 0, 0, uid)) {
                    return;
                }
                self.rewatch();
                let change = ProcChange::Forked { child, child_ns, comm };
                (self.0.report)(Message::ProcEvent { pid: parent, change });
            }
            ProcEvent::Exec { pid } => {
                let Some(st) = proc_stat(pid) else { return };
                let renamed = match self.known().get_mut(&pid) {
                    Some(k) if k.comm != st.comm => {
                        k.comm.clone_from(&st.comm);
                        true
                    }
                    _ => false,
                };
                if renamed {
                    let change = ProcChange::Exec { comm: st.comm };
                    (self.0.report)(Message::ProcEvent { pid, change });
                }
            }
            ProcEvent::Exit { pid, parent, status } if !self.known().contains_key(&pid) => {
                // A child whose fork came before its parent was watched: seen at its end.
                let parent_of = self.known().get(&parent).map(|k| (k.uid, k.comm.clone()));
                let Some((uid, comm)) = parent_of else { return };
                if self.children().contains(&pid)
                    || !self.adopt(pid, Known::new(comm.clone(), 0, 0, 0, uid))
                {
                    return;
                }
                let change = ProcChange::Forked { child: pid, child_ns: 0, comm };
                (self.0.report)(Message::ProcEvent { pid: parent, change });
                self.forget(pid, decode_wait(status));
                let change = ProcChange::Exited(decode_wait(status));
                (self.0.report)(Message::ProcEvent { pid, change });
            }
            ProcEvent::Exit { pid, status, .. } => {
                // Direct children are reported by the reaper, with stops and continues.
                if self.children().contains(&pid) || !self.forget(pid, decode_wait(status)) {
                    return;
                }
                self.rewatch();
                let change = ProcChange::Exited(decode_wait(status));
                (self.0.report)(Message::ProcEvent { pid, change });
            }
        }
    }

    /// Reads `/proc` for every known process once: new children, new programs, ends (what
    /// the process events would have said, when there are none or some were lost).
    fn scan_proc(&self) {
        let pids: Vec<(i32, String)> =
            self.known().iter().map(|(p, k)| (*p, k.comm.clone())).collect();
        for (pid, comm) in pids {
            let direct = self.children().contains(&pid);
            let Some(st) = proc_stat(pid) else {
                // Gone and reaped by its parent before this look: its status is lost.
                if !direct && self.forget(pid, ExitStatus::Code(0)) {
                    let change = ProcChange::Exited(ExitStatus::Code(0));
                    (self.0.report)(Message::ProcEvent { pid, change });
                }
                continue;
            };
            if st.state == 'Z' {
                // Direct children are reported by the reaper, with stops and continues.
                if !direct && self.forget(pid, decode_wait(st.exit_code)) {
                    let change = ProcChange::Exited(decode_wait(st.exit_code));
                    (self.0.report)(Message::ProcEvent { pid, change });
                }
                continue;
            }
            if st.comm != comm {
                if let Some(k) = self.known().get_mut(&pid) {
                    k.comm.clone_from(&st.comm);
                }
                let change = ProcChange::Exec { comm: st.comm.clone() };
                (self.0.report)(Message::ProcEvent { pid, change });
            }
            let Ok(kids) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            else {
                continue;
            };
            let uid = self.known().get(&pid).map_or(0, |k| k.uid);
            for child in kids.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if self.known().contains_key(&child) {
                    continue;
                }
                let ended = proc_stat(child).filter(|st| st.state == 'Z');
                let reported = self.0.ended.lock().is_ok_and(|e| e.contains_key(&child));
                if ended.is_some() && reported {
                    // Its end was reported; its parent (stopped, or slow) has yet to reap it.
                    continue;
                }
                let Some((comm, child_ns)) = comm_and_ns_pid(child) else { continue };
                if !self.adopt(child, Known::new(comm.clone(), 0, 0, 0, uid)) {
                    continue;
                }
                let change = ProcChange::Forked { child, child_ns, comm };
                (self.0.report)(Message::ProcEvent { pid, change });
                if let Some(st) = ended {
                    // Born and ended between two looks: its ghost ends as it did.
                    self.forget(child, decode_wait(st.exit_code));
                    let change = ProcChange::Exited(decode_wait(st.exit_code));
                    (self.0.report)(Message::ProcEvent { pid: child, change });
                }
            }
        }
        self.rewatch();
    }

    fn ranks(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u32), i32>> {
        self.0.ranks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn children(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i32>> {
        self.0.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether processes get their ghosts' pids here.
    pub fn same_pids(&self) -> bool {
        self.0.spawner.pid_namespace
    }

    /// Starts watching `pid`, rank `rank` of `launch` with ghost `ghost` (0: none), run for
    /// `uid` (after its start was reported, so its events follow that report).
    pub fn track(&self, launch: u64, rank: u32, pid: i32, ghost: i32, uid: u32) {
        self.ranks().insert((launch, rank), pid);
        self.children().insert(pid);
        if let Some(st) = proc_stat(pid) {
            self.known().insert(pid, Known::new(st.comm, ghost, launch, rank, uid));
        }
        let waiting = self.fresh().remove(&pid).unwrap_or_default();
        self.rewatch();
        for e in waiting {
            self.handle(e);
        }
        self.reap();
        self.0.started.notify_one();
    }

    /// Collects the state changes of watched children (on SIGCHLD) and reports them.
    pub fn reap(&self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let doomed: Vec<i32> =
            self.0.doomed.lock().map(|d| d.iter().copied().collect()).unwrap_or_default();
        for pid in doomed {
            let gone = !matches!(
                waitid(Id::Pid(Pid::from_raw(pid)), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG),
                Ok(WaitStatus::StillAlive)
            );
            if gone {
                if let Ok(mut d) = self.0.doomed.lock() {
                    d.remove(&pid);
                }
            }
        }
        let pids: Vec<i32> = self.children().iter().copied().collect();
        let flags = WaitPidFlag::WEXITED
            | WaitPidFlag::WSTOPPED
            | WaitPidFlag::WCONTINUED
            | WaitPidFlag::WNOHANG;
        for pid in pids {
            let change = match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
                Ok(WaitStatus::Exited(_, code)) => ProcChange::Exited(ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    ProcChange::Exited(ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::Stopped(..)) => ProcChange::Stopped,
                Ok(WaitStatus::Continued(_)) => ProcChange::Continued,
                Err(nix::Error::ECHILD) => ProcChange::Exited(ExitStatus::Code(255)),
                _ => continue,
            };
            if let ProcChange::Exited(end) = change {
                self.children().remove(&pid);
                self.forget(pid, end);
                self.ranks().retain(|_, p| *p != pid);
            }
            (self.0.report)(Message::ProcEvent { pid, change });
        }
        self.0.spawner.reap_init();
    }

    /// Sends `signal` to a launch's process of `rank`, or all of them for `u32::MAX`. Each
    /// process leads its own process group and the whole group gets the signal, as a
    /// terminal's job would: children that hold the output open go too.
    pub fn signal(&self, launch: u64, rank: u32, signal: i32) {
        let Ok(sig) = Signal::try_from(signal) else {
            warn!("launch {launch}: ignoring invalid signal {signal}");
            return;
        };
        for (&(l, r), &pid) in self.ranks().iter() {
            if l == launch && (rank == u32::MAX || r == rank) {
                let _ = kill(Pid::from_raw(-pid), sig);
            }
        }
    }

    /// Sends `signal` from its ghost to process `pid` alone, naming `sender` (a master pid)
    /// as its origin. Only processes of this master's are signalled.
    pub fn signal_pid(&self, pid: i32, signal: i32, sender: i32) {
        if !self.known().contains_key(&pid) {
            debug!("signal {signal} for {pid}: not a process of this master's here");
            return;
        }
        // In the master's pid namespace, the signal is queued from inside it (by a child of
        // the spawner thread), or the kernel would clear the sender's pid.
        let inside = self.same_pids().then(|| job_ns_pid(pid)).flatten();
        let Some(ns_pid) = inside.filter(|_| sender > 0) else {
            if let Err(e) = bproc_sys::signal_from(pid, signal, sender) {
                debug!("signal {signal} to {pid}: {e}");
            }
            return;
        };
        let procs = self.clone();
        tokio::spawn(async move {
            let job = move || {
                bproc_sys::signal_from_inside(ns_pid, signal, sender)
                    .map(|()| 0)
                    .map_err(std::io::Error::from)
            };
            if let Err(e) = procs.0.spawner.run(Box::new(job)).await {
                debug!("signal {signal} to {pid}: {e}");
            }
        });
    }

    /// Kills every process (the node is leaving its master for good), with the whole pid
    /// namespace when there is one.
    pub fn kill_all(&self) {
        for &pid in self.ranks().values() {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        self.0.spawner.reset();
        let children = std::mem::take(&mut *self.children());
        self.0.doomed.lock().unwrap_or_else(|e| e.into_inner()).extend(children);
        self.ranks().clear();
        self.known().clear();
        self.0.ended.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Starts `spec` on the spawner thread.
    async fn spawn(&self, spec: bproc_sys::SpawnSpec) -> std::io::Result<i32> {
        let procs = self.clone();
        let job = move || {
            let mut spec = spec;
            // Its forks wait for this slave, which gives each child its ghost's pid.
            let forks = procs.0.forks.get().and_then(|f| {
                let (tx, rx) = bproc_sys::forkpid::channel().ok()?;
                spec.fork_listener = Some(tx);
                Some((f, rx))
            });
            let started = bproc_sys::spawn(&spec);
            if let Ok(pid) = started {
                procs.fresh_start(pid);
                if let Some((f, rx)) = forks {
                    match bproc_sys::forkpid::take_listener(std::os::fd::AsFd::as_fd(&rx)) {
                        Some(l) => f.add(l),
                        None => debug!("pid {pid}: started without its fork filter"),
                    }
                }
            }
            started
        };
        self.0.spawner.run(Box::new(job)).await
    }

    /// Restores `image` on the spawner thread (whose children are in the pid namespace, and
    /// which alone may trace them).
    async fn restore(
        &self,
        image: Image,
        spec: bproc_ckpt::restore::RestoreSpec,
    ) -> std::io::Result<i32> {
        let procs = self.clone();
        let job = move || {
            let restored = match image {
                Image::Stream(s) => {
                    let mut reader = std::io::BufReader::with_capacity(1 << 20, s);
                    match refusal(&mut reader) {
                        Some(why) => Err(bproc_ckpt::CkptError::Busy(why)),
                        None => bproc_ckpt::restore::restore_noting(reader, spec),
                    }
                }
                Image::Bytes(b) => bproc_ckpt::restore::restore_shared(b, spec),
            };
            restored
                .map(|(pid, closed)| {
                    procs.fresh_start(pid);
                    for what in closed {
                        info!("pid {pid}: restored without a file this node lacks: {what}");
                    }
                    pid
                })
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::Error::from_raw_os_error(e.errno()).kind(),
                        RestoreFailed { errno: e.errno(), message: e.to_string() },
                    )
                })
        };
        self.0.spawner.run(Box::new(job)).await
    }
}

/// The mover's reason, when the stream opens with a refusal instead of an image
/// ([`bproc_proto::conn::REFUSAL`]); the stream is left as it was otherwise.
fn refusal(r: &mut impl std::io::BufRead) -> Option<String> {
    use bproc_proto::conn;
    let head = r.fill_buf().ok()?;
    if head.len() < conn::REFUSAL.len() || head[..conn::REFUSAL.len()] != conn::REFUSAL {
        return None;
    }
    r.consume(conn::REFUSAL.len());
    let mut len = [0u8; 2];
    r.read_exact(&mut len).ok()?;
    let mut why = vec![0u8; conn::refusal_len(len)];
    r.read_exact(&mut why).ok()?;
    Some(String::from_utf8_lossy(&why).into_owned())
}

/// Ended processes kept for a resumed session: those of the last [`ENDED_KEPT`], looked
/// over once there are [`ENDED_PRUNE_AT`].
const ENDED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);
const ENDED_PRUNE_AT: usize = 4096;

/// How long an ended fork's pid is taken for that process, not a new one, by a late look.
const REPORTED_LATELY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a restore reads its image: a connection to the mover (restored as it arrives), or
/// a copy this node already holds (a vector fork's, shared by its ranks and its children in
/// the launch tree).
enum Image {
    Stream(std::net::TcpStream),
    Bytes(Arc<Vec<u8>>),
}

/// A failed restore, keeping its errno and explanation.
#[derive(Debug)]
struct RestoreFailed {
    errno: i32,
    message: String,
}

impl std::fmt::Display for RestoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RestoreFailed {}

/// Work for the spawner thread: start a process, returning its pid.
type Job = Box<dyn FnOnce() -> std::io::Result<i32> + Send>;

/// A request to the spawner thread.
type SpawnJob = (Job, tokio::sync::oneshot::Sender<std::io::Result<i32>>);

/// The thread that starts processes. With a pid namespace it has entered the namespace for
/// its children, which a thread can do only if it never starts threads itself; the
/// namespace's init dies with it. Processes it starts die with it too (parent-death signal),
/// and it lives as long as the daemon.
struct Spawner {
    tx: Mutex<std::sync::mpsc::Sender<SpawnJob>>,
    pid_namespace: bool,
    /// Sets the namespace's last pid (through its init), replaced with the namespace.
    last_pid: Arc<Mutex<Option<Arc<bproc_sys::LastPid>>>>,
    /// The namespace's init, to reap when it is replaced.
    init: Arc<std::sync::atomic::AtomicI32>,
    /// Asks the thread for a fresh namespace (killing everything in the old one).
    reset: Arc<std::sync::atomic::AtomicBool>,
}

impl Spawner {
    fn start(want_namespace: bool, extra_proc: Option<std::path::PathBuf>) -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let init = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (init2, reset2) = (init.clone(), reset.clone());
        let last_pid: Arc<Mutex<Option<Arc<bproc_sys::LastPid>>>> = Arc::default();
        let last_pid2 = last_pid.clone();
        let spawned = std::thread::Builder::new().name("spawner".into()).spawn(move || {
            // No signal handler of the daemon's may run in a child before it execs.
            let _ = nix::sys::signal::SigSet::all().thread_block();
            // Restores here see only the namespace's /proc once it is entered.
            if let Err(e) = bproc_ckpt::restore::prepare() {
                warn!("processes cannot move to this node: {e}");
            }
            // The node's own mounts, to come back to before making a new namespace.
            let home = std::fs::File::open("/proc/thread-self/ns/mnt").ok();
            let make = || -> Option<bproc_sys::PidNamespace> {
                if !want_namespace {
                    return None;
                }
                if let Some(h) = &home {
                    let _ = nix::sched::setns(h, nix::sched::CloneFlags::CLONE_NEWNS);
                }
                match bproc_sys::PidNamespace::create(extra_proc.as_deref()).and_then(|ns| {
                    ns.enter_for_children()?;
                    ns.enter_mounts()?;
                    Ok(ns)
                }) {
                    Ok(ns) => {
                        init2.store(ns.init_pid(), std::sync::atomic::Ordering::Relaxed);
                        *last_pid2.lock().unwrap_or_else(|e| e.into_inner()) =
                            ns.last_pid().ok().map(Arc::new);
                        Some(ns)
                    }
                    Err(e) => {
                        warn!("no pid namespace ({e}): remote processes keep this node's pids");
                        None
                    }
                }
            };
            let mut ns = make();
            let _ = ready_tx.send(ns.is_some());
            while let Ok((job, reply)) = rx.recv() {
                if reset2.swap(false, std::sync::atomic::Ordering::Relaxed) && ns.is_some() {
                    ns = None; // kills the init, and every process of the namespace
                    ns = make().or(ns);
                }
                let _ = reply.send(job());
            }
        });
        let pid_namespace = spawned.is_ok() && ready_rx.recv().unwrap_or(false);
        Spawner { tx: Mutex::new(tx), pid_namespace, last_pid, init, reset }
    }

    async fn run(&self, job: Job) -> std::io::Result<i32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((job, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await.map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }

    /// Kills the namespace's processes now; the thread makes a new namespace before its next
    /// spawn.
    fn reset(&self) {
        if self.pid_namespace {
            let init = self.init.load(std::sync::atomic::Ordering::Relaxed);
            if init > 0 {
                let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
            }
            self.reset.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reaps a killed init (never blocks: a dying init waits for its namespace's processes,
    /// which are reaped by [`Procs::reap`]).
    fn reap_init(&self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let init = self.init.load(std::sync::atomic::Ordering::Relaxed);
        if init > 0 {
            if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(Pid::from_raw(init), Some(WaitPidFlag::WNOHANG))
            {
                let _ = self.init.compare_exchange(
                    init,
                    0,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }
}

/// Who the slave may run processes as.
#[derive(Debug, Clone, Copy)]
pub struct Authority {
    /// The daemon runs as real root and can take any identity.
    pub root: bool,
    /// The daemon's own uid outside any user namespace.
    pub uid: u32,
}

/// Why a rank could not start: an errno-style code (sent to the master) and the details
/// (logged here).
#[derive(Debug)]
pub struct Refused {
    /// errno or `BE_*` value.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

fn refuse(code: i32, message: String) -> Result<i32, Refused> {
    Err(Refused { code, message })
}

/// Opens a connection to the launcher and sends its header.
async fn open_to_launcher(
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    fd: u8,
) -> std::io::Result<TcpStream> {
    let ip = spec.io_ip.unwrap_or(master);
    let mut s = TcpStream::connect(SocketAddrV4::new(ip, spec.io_port)).await?;
    s.set_nodelay(true)?;
    s.write_all(&bproc_proto::conn::header(&spec.token, rank, fd)).await?;
    Ok(s)
}

/// What one fd of a new process is, as the slave prepares it.
enum Opened {
    /// This open file.
    Fd(OwnedFd),
    /// A file the process opens itself, with its own identity.
    File(FdFile),
    /// Nothing.
    Closed,
}

/// The fds of a new process, the latest word on each fd winning.
#[derive(Default)]
struct Fds {
    stdio: [Option<OwnedFd>; 3],
    extra: Vec<(i32, OwnedFd)>,
    files: Vec<FdFile>,
}

impl Fds {
    fn set(&mut self, fd: i32, o: Opened) {
        self.extra.retain(|(n, _)| *n != fd);
        self.files.retain(|f| f.fd != fd);
        let slot = usize::try_from(fd).ok().and_then(|i| self.stdio.get_mut(i));
        match (o, slot) {
            (Opened::Fd(f), Some(s)) => *s = Some(f),
            (Opened::Fd(f), None) => self.extra.push((fd, f)),
            (Opened::File(f), slot) => {
                if let Some(s) = slot {
                    // Open until the process replaces it: the slot must hold something.
                    *s = None;
                }
                self.files.push(f);
            }
            (Opened::Closed, Some(s)) => *s = None,
            (Opened::Closed, None) => {}
        }
    }
}

/// Prepares `io` as fd `fd` of rank `rank` (whose ghost is `ghost`, 0 for none).
async fn open_io(
    io: &IoSpec,
    fd: i32,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    ghost: i32,
) -> Result<Opened, Refused> {
    let failed = |what: String, e: std::io::Error| Refused {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("fd {fd}: {what}: {e}"),
    };
    let path = |p: &str| {
        CString::new(p).map_err(|_| Refused { code: EINVAL, message: format!("NUL in {p:?}") })
    };
    Ok(match io {
        IoSpec::Closed => Opened::Closed,
        IoSpec::Null => Opened::Fd(
            std::fs::OpenOptions::new()
                .read(fd == 0)
                .write(fd != 0)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| failed("/dev/null".into(), e))?,
        ),
        IoSpec::File(p) if fd == 0 => Opened::File(FdFile::read(fd, path(p)?)),
        IoSpec::File(p) => Opened::File(FdFile::write(fd, path(p)?)),
        IoSpec::Open { path: p, flags, mode, offset } => {
            Opened::File(FdFile { fd, path: path(p)?, flags: *flags, mode: *mode, offset: *offset })
        }
        IoSpec::Forward => {
            let Ok(n) = u8::try_from(fd) else {
                return Err(Refused {
                    code: EINVAL,
                    message: format!("fd {fd} cannot be forwarded"),
                });
            };
            let s = open_to_launcher(master, spec, rank, n)
                .await
                .and_then(|s| s.into_std())
                .map_err(|e| failed("cannot connect back to the launcher".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
        IoSpec::Rejoin { ip, port, token, rank } => {
            // A moved process's stream, joining its launcher's again as the same rank.
            let to = SocketAddrV4::new(ip.unwrap_or(master), *port);
            let n = u8::try_from(fd).unwrap_or(u8::MAX);
            let mut s =
                TcpStream::connect(to).await.map_err(|e| failed(format!("connect to {to}"), e))?;
            let _ = s.set_nodelay(true);
            let head = bproc_proto::conn::header(token, *rank, n);
            s.write_all(&head).await.map_err(|e| failed(format!("write to {to}"), e))?;
            let s = s.into_std().map_err(|e| failed("socket".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
        IoSpec::Connect { ip, port, send_info } => {
            let to = SocketAddrV4::new(ip.unwrap_or(spec.io_ip.unwrap_or(master)), *port);
            let mut s =
                TcpStream::connect(to).await.map_err(|e| failed(format!("connect to {to}"), e))?;
            if *send_info {
                // BProc's header: the process's pid on the front end, then the fd number.
                let mut info = [0u8; 8];
                info[..4].copy_from_slice(&ghost.to_ne_bytes());
                info[4..].copy_from_slice(&fd.to_ne_bytes());
                s.write_all(&info).await.map_err(|e| failed(format!("write to {to}"), e))?;
            }
            let s = s.into_std().map_err(|e| failed("socket".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
    })
}

/// Opens the connection that carries rank `rank`'s process image, from `from` (an address of
/// `None`: the master's), and answers the mover's probe: which of its files this node has
/// (under `root`, a diskless node's, when given).
pub(crate) async fn connect_image(
    master: Ipv4Addr,
    spec: &ProcSpec,
    from: bproc_proto::Endpoint,
    rank: u32,
    root: Option<&Path>,
) -> Result<TcpStream, Refused> {
    let to = SocketAddrV4::new(from.ip.unwrap_or(master), from.port);
    let failed = |e: std::io::Error| Refused {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("cannot fetch the process image from {to}: {e}"),
    };
    let mut s = TcpStream::connect(to).await.map_err(failed)?;
    s.write_all(&bproc_proto::conn::header(&spec.token, rank, IMAGE_FD)).await.map_err(failed)?;
    let answer = async {
        use bproc_proto::conn;
        use tokio::io::AsyncReadExt;
        let bad = |e: bproc_proto::DecodeError| std::io::Error::other(e.to_string());
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        let mut body = vec![0u8; conn::probe_len(head).map_err(bad)?];
        s.read_exact(&mut body).await?;
        let here = |f: &conn::FileId| {
            let path = match root {
                Some(r) => r.join(f.path.trim_start_matches('/')).to_string_lossy().into_owned(),
                None => f.path.clone(),
            };
            bproc_ckpt::restore::same_file(&path, f.size, f.mtime)
        };
        let answer = conn::answer(&body, here).map_err(bad)?;
        let asked = answer.len() - 4;
        let found = answer[4..].iter().filter(|a| **a == 1).count();
        if asked > 0 {
            info!("rank {rank}: {found} of {asked} files the mover asked about are here");
        }
        s.write_all(&answer).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), answer).await {
        Ok(r) => r.map_err(failed)?,
        Err(_) => return Err(failed(std::io::ErrorKind::TimedOut.into())),
    }
    Ok(s)
}

/// [`connect_image`], as a blocking socket for the restore.
async fn open_image(
    master: Ipv4Addr,
    spec: &ProcSpec,
    from: bproc_proto::Endpoint,
    rank: u32,
    root: Option<&Path>,
) -> Result<std::net::TcpStream, Refused> {
    let failed = |e: std::io::Error| Refused {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("cannot fetch the process image: {e}"),
    };
    let s = connect_image(master, spec, from, rank, root).await?.into_std().map_err(failed)?;
    s.set_nonblocking(false).map_err(failed)?;
    // A sender that stops mid-image must not hold the spawner thread for ever.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(failed)?;
    Ok(s)
}

/// Where a diskless node fetches the staged files its cache lacks.
#[derive(Clone)]
pub enum Source {
    /// The launcher (or the master's file server), at the spec's io address.
    Launcher,
    /// The node that passed this launch on, over the tree connection: each node fetches from
    /// its parent, so a program crosses each tree edge once, not once per node from the
    /// launcher.
    Parent(Arc<tokio::sync::Mutex<TcpStream>>),
}

/// One fetch of each content at a time, so a file wanted by several ranks or children is
/// fetched once.
static FETCHING: Mutex<Option<FetchLocks>> = Mutex::new(None);

/// A lock per content hash.
type FetchLocks = HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>;

async fn fetch(
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<Vec<u8>, String> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    async fn exchange(s: &mut TcpStream, f: &StagedRef) -> std::io::Result<Vec<u8>> {
        s.write_all(&f.hash).await?;
        let size = s.read_u64().await?;
        if size != f.size {
            return Err(std::io::Error::other(format!("sent {size} bytes, expected {}", f.size)));
        }
        // Kept as it comes: the size is the launch's word, and the peer may send less.
        let mut data = Vec::with_capacity((size as usize).min(1 << 20));
        s.take(size).read_to_end(&mut data).await?;
        if data.len() as u64 != size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(data)
    }
    let from_parent = match source {
        Source::Parent(s) => exchange(&mut *s.lock().await, f).await.ok(),
        Source::Launcher => None,
    };
    // A parent with a disk of its own keeps no cache to serve from: go to the launcher.
    let (data, from) = match from_parent {
        Some(data) => (data, "the parent node"),
        None => {
            let mut s = open_to_launcher(master, spec, rank, FETCH_FD)
                .await
                .map_err(|e| format!("{}: cannot fetch it from the launcher: {e}", f.path))?;
            let data = exchange(&mut s, f)
                .await
                .map_err(|e| format!("{}: from the launcher: {e}", f.path))?;
            (data, "the launcher")
        }
    };
    info!("staged {} ({} bytes) from {from}", f.path, data.len());
    if <[u8; 32]>::from(Sha256::digest(&data)) != f.hash {
        return Err(format!("{}: content does not match its hash", f.path));
    }
    Ok(data)
}

/// The cache entry of `f`, fetched from `source` unless the cache already holds it.
pub(crate) async fn ensure_cached(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let cached = d.cache.join(hex::encode(f.hash));
    if cached.exists() {
        return Ok(cached);
    }
    let lock = FETCHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry(f.hash)
        .or_default()
        .clone();
    let _held = lock.lock().await;
    if cached.exists() {
        return Ok(cached);
    }
    let data = fetch(source, master, spec, rank, f).await?;
    let tmp = d.cache.join(format!(".{}.{rank}.{}", hex::encode(f.hash), std::process::id()));
    std::fs::write(&tmp, &data)
        .and_then(|_| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode & 0o7777))
        })
        .and_then(|_| std::fs::rename(&tmp, &cached))
        .map_err(|e| format!("{}: cannot cache it: {e}", f.path))?;
    crate::info::STAGED_BYTES.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(cached)
}

/// Makes every file of `spec` present in a diskless node's root: from the cache when it holds
/// the content, else fetched from `source` and checked against its hash. Each file is a hard
/// link to its cache entry, put in place by rename so concurrent launches never see a partial
/// file.
pub(crate) async fn stage(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
) -> Result<(), String> {
    for f in &spec.files {
        let cached = ensure_cached(d, source, master, spec, rank, f).await?;
        let target = d.root.join(f.path.trim_start_matches('/'));
        let same = |a: &Path, b: &Path| {
            use std::os::unix::fs::MetadataExt;
            matches!((std::fs::metadata(a), std::fs::metadata(b)), (Ok(x), Ok(y)) if x.ino() == y.ino())
        };
        if !same(&target, &cached) {
            let parent = target.parent().unwrap_or(&d.root);
            let tmp = parent.join(format!(".bproc-{}-{rank}", std::process::id()));
            std::fs::create_dir_all(parent)
                .and_then(|_| {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::hard_link(&cached, &tmp)
                })
                .and_then(|_| std::fs::rename(&tmp, &target))
                .map_err(|e| format!("{}: cannot install it: {e}", f.path))?;
        }
    }
    Ok(())
}

/// Starts rank `rank` of `launch` as `set_tid` when this node gives processes their ghosts'
/// pids; returns its pid here. The caller reports the start, then [`Procs::track`]s it. An
/// image launch restores `shared` when given (the node's copy of a vector fork's image),
/// else the image fetched for this rank. `forward_port` (0: the spec's) is where its
/// forwarded fds connect.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    procs: &Procs,
    authority: Authority,
    diskless: Option<&Diskless>,
    source: &Source,
    master: Ipv4Addr,
    client_socket: Option<&str>,
    launch: u64,
    rank: u32,
    set_tid: Option<i32>,
    creds: Creds,
    spec: ProcSpec,
    forward_port: u16,
    shared: Option<Arc<Vec<u8>>>,
    report: impl Fn(Message) + Send + 'static,
) -> Result<i32, Refused> {
    if !authority.root && creds.uid != authority.uid {
        return refuse(
            EPERM,
            format!(
                "this node's slave runs as uid {} without root, so it runs only that user's jobs",
                authority.uid
            ),
        );
    }
    if spec.argv.is_empty() {
        return refuse(EINVAL, "empty command".into());
    }
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Refused { code: EINVAL, message: format!("NUL in {s:?}") })
    };
    // A root given with `bpctl -r` confines the node's processes, below which a diskless
    // node's root is found (the daemon's own paths resolve there since its chroot).
    let node_root = crate::node_root();
    let jail_root = |inner: &Path| match &node_root {
        Some(r) => r.join(inner.strip_prefix("/").unwrap_or(inner)),
        None => inner.to_owned(),
    };
    let jail_cstr = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Refused { code: EINVAL, message: "NUL in a path".into() })
    };
    let mut jail = None;
    if let (Some(r), None) = (&node_root, diskless) {
        // The working directory is looked up from the daemon, which has this root already.
        let cwd = if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" };
        jail = Some(Jail { root: jail_cstr(r)?, cwd: cstr(cwd)? });
    }
    if let Some(d) = diskless {
        let before = crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = stage(d, source, master, &spec, rank).await {
            warn!("launch {launch} rank {rank}: {e}");
            return refuse(bproc_proto::errno::EIO, e);
        }
        if crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed) != before {
            // The master learns the new cache total now, ahead of the spawn reply, rather
            // than at the next ping (a pong is the slave's machine report).
            report(Message::Pong { seq: 0, info: crate::node_info() });
        }
        let inside = d.root.join(spec.cwd.trim_start_matches('/'));
        let cwd = if inside.is_dir() { spec.cwd.as_str() } else { "/" };
        jail = Some(Jail { root: jail_cstr(&jail_root(&d.root))?, cwd: cstr(cwd)? });
    }
    let mut envp = Vec::new();
    for (k, v) in spec.env_for_rank(rank) {
        // The cluster API on this node is the slave's client socket, whatever the
        // launcher's was.
        if k != "BPROC_SOCKET" {
            envp.push(cstr(&format!("{k}={v}"))?);
        }
    }
    if let Some(path) = client_socket {
        envp.push(cstr(&format!("BPROC_SOCKET={path}"))?);
    }
    // An image's connection opens before the forwarded fds', so a mover that serves both
    // on one listener takes it first.
    let image = match (spec.image, shared) {
        (Some(_), Some(bytes)) => Some(Image::Bytes(bytes)),
        (Some(from), None) => {
            let root = diskless.map(|d| d.root.as_path());
            Some(Image::Stream(open_image(master, &spec, from, rank, root).await?))
        }
        (None, _) => None,
    };
    // The rank's own port for its forwarded fds (its relaying ghost's), once staging, which
    // fetches from the launcher's, is done.
    let spec = if forward_port != 0 { ProcSpec { io_port: forward_port, ..spec } } else { spec };
    let mut fds = Fds::default();
    let ghost = set_tid.unwrap_or(0);
    for fd in 0..3 {
        let io = spec.io.get(fd as usize).unwrap_or(&IoSpec::Null);
        fds.set(fd, open_io(io, fd, master, &spec, rank, ghost).await?);
    }
    for f in &spec.fds {
        match open_io(&f.io, f.fd, master, &spec, rank, ghost).await {
            Ok(o) => fds.set(f.fd, o),
            Err(e) if f.optional => {
                warn!("launch {launch} rank {rank}: fd {} left closed: {}", f.fd, e.message);
                fds.set(f.fd, Opened::Closed);
            }
            Err(e) => return Err(e),
        }
    }
    let Fds { stdio, extra, files } = fds;
    let identity = authority.root.then(|| Identity {
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups.clone(),
    });
    if let Some(image) = image {
        let restore = bproc_ckpt::restore::RestoreSpec {
            stdio,
            fds: extra,
            files,
            set_tid: set_tid.filter(|p| *p > 0 && procs.same_pids()),
            identity,
            value: i64::from(rank) + 1,
            // Where the process finds the cluster now.
            note: client_socket.map(|p| p.as_bytes().to_vec()),
            root: diskless.map(|d| jail_root(&d.root)).or(node_root.clone()),
            // The master filled these in from the launcher's kernel.
            limits: spec.rlimits.clone(),
        };
        return match procs.restore(image, restore).await {
            Ok(pid) => {
                info!("launch {launch} rank {rank}: restored a process image as pid {pid}");
                Ok(pid)
            }
            Err(e) => {
                let code = e
                    .get_ref()
                    .and_then(|r| r.downcast_ref::<RestoreFailed>())
                    .map_or(bproc_proto::errno::EIO, |r| r.errno);
                warn!("launch {launch} rank {rank}: restoring the process image failed: {e}");
                refuse(code, format!("restoring the image: {e}"))
            }
        };
    }
    let cwd = if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" };
    let mut req = bproc_sys::SpawnSpec {
        path: cstr(&spec.path)?,
        argv: spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        envp,
        cwd: Some(cstr(cwd)?),
        stdio,
        fds: extra,
        limits: spec.rlimits.clone(),
        jail,
        identity,
        umask: spec.umask,
        files,
        set_tid: set_tid.filter(|p| *p > 0 && procs.same_pids()),
        trace: false,
        fork_listener: None,
    };
    // What a failure names: the file -I/-O/-E (or an I/O list) opened, else the program.
    let file_paths: Vec<String> =
        req.files.iter().map(|f| f.path.to_string_lossy().into_owned()).collect();
    let jail_path = req.jail.as_ref().map(|j| j.root.to_string_lossy().into_owned());
    let mut result = procs.spawn(clone_spec(&req)?).await;
    if req.set_tid.is_some()
        && matches!(&result, Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST))
    {
        // The pid is taken here (a process of an earlier session): run under another.
        warn!("launch {launch} rank {rank}: pid {:?} is taken on this node", req.set_tid);
        req.set_tid = None;
        result = procs.spawn(req).await;
    }
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            let code = bproc_sys::spawn_errno(&e).unwrap_or(bproc_proto::errno::EIO);
            let text = nix::errno::Errno::from_raw(code).desc();
            let step = e
                .get_ref()
                .and_then(|r| r.downcast_ref::<bproc_sys::SpawnFailed>())
                .map(|f| f.step);
            let message = match step {
                Some(bproc_sys::SpawnStep::File(i)) if i < file_paths.len() => {
                    format!("{}: {text}", file_paths[i])
                }
                Some(bproc_sys::SpawnStep::Root) => {
                    format!("{}: {text} (the node's root)", jail_path.unwrap_or_default())
                }
                Some(bproc_sys::SpawnStep::Identity) => {
                    format!("cannot run as uid {} gid {}: {text}", creds.uid, creds.gid)
                }
                _ => format!("{}: {text}", spec.path),
            };
            return refuse(code, message);
        }
    };
    info!("launch {launch} rank {rank}: started {} as pid {pid} (uid {})", spec.path, creds.uid);
    Ok(pid)
}

/// A copy of `s` for a first attempt (its fds duplicated), so the original can be retried.
fn clone_spec(s: &bproc_sys::SpawnSpec) -> Result<bproc_sys::SpawnSpec, Refused> {
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| Refused {
            code: e.raw_os_error().unwrap_or(EINVAL),
            message: format!("dup: {e}"),
        })
    };
    Ok(bproc_sys::SpawnSpec {
        path: s.path.clone(),
        argv: s.argv.clone(),
        envp: s.envp.clone(),
        cwd: s.cwd.clone(),
        stdio: [
            s.stdio[0].as_ref().map(dup).transpose()?,
            s.stdio[1].as_ref().map(dup).transpose()?,
            s.stdio[2].as_ref().map(dup).transpose()?,
        ],
        fds: s.fds.iter().map(|(n, fd)| Ok((*n, dup(fd)?))).collect::<Result<_, Refused>>()?,
        limits: s.limits.clone(),
        jail: s.jail.clone(),
        identity: s.identity.clone(),
        umask: s.umask,
        files: s.files.clone(),
        set_tid: s.set_tid,
        trace: s.trace,
        fork_listener: None,
    })
}

/// State, CPU time and resident memory of process `pid` here, from `/proc/PID/stat`.
pub fn stat(pid: i32) -> Option<bproc_proto::ProcStat> {
    let st = bproc_sys::peer::Stat::read(pid)?;
    let ticks =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    let page_kib =
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096)
            as u64
            / 1024;
    // utime 14, stime 15, rss 24 (pages).
    let num = |n: usize| st.num::<u64>(n);
    Some(bproc_proto::ProcStat {
        rpid: pid,
        state: st.field(3)?.bytes().next()?,
        cpu_ms: (num(14)? + num(15)?) * 1000 / ticks.max(1),
        rss_kib: num(24)? * page_kib,
    })
}

/// When [`Procs::follow`] first looks at a new process, and how rarely at most.
const LOOK_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const LOOK_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// A process of the master's, as [`Procs::follow`] last saw it.
#[derive(Debug)]
struct Known {
    /// Its command name.
    comm: String,
    /// When it was first seen.
    seen: std::time::Instant,
    /// Its ghost on the master (0: none known).
    ghost: i32,
    /// The launch and rank it is (launch 0: a fork).
    launch: u64,
    rank: u32,
    /// Whom it runs for.
    uid: u32,
    /// How it ended, once it has, and when that was seen.
    end: Option<ExitStatus>,
    gone: Option<std::time::Instant>,
}

impl Known {
    fn new(comm: String, ghost: i32, launch: u64, rank: u32, uid: u32) -> Known {
        let seen = std::time::Instant::now();
        Known { comm, seen, ghost, launch, rank, uid, end: None, gone: None }
    }
}

/// What `/proc/PID/stat` says of a process.
struct Stat {
    comm: String,
    state: char,
    /// Its wait status, once it is a zombie.
    exit_code: i32,
}

fn proc_stat(pid: i32) -> Option<Stat> {
    let st = bproc_sys::peer::Stat::read(pid)?;
    // The wait status is field 52.
    Some(Stat {
        comm: st.comm().to_owned(),
        state: st.state()?,
        exit_code: st.num(52).unwrap_or(0),
    })
}

/// A wait status as an [`ExitStatus`].
fn decode_wait(status: i32) -> ExitStatus {
    if status & 0x7f == 0 {
        ExitStatus::Code((status >> 8) & 0xff)
    } else {
        ExitStatus::Signal(status & 0x7f)
    }
}

/// The command name of `pid` and its pid in its own (innermost) pid namespace.
/// Process `pid`'s pid in the master's pid namespace (the first below this one).
fn job_ns_pid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ns = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    ns.split_whitespace().nth(1)?.parse().ok()
}

/// The thread group (process) of thread `tid`, from `/proc/TID/status`.
fn thread_group(tid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()
}

fn comm_and_ns_pid(pid: i32) -> Option<(String, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let comm = text.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_owned();
    let ns = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?;
    Some((comm, ns.parse().ok()?))
}
