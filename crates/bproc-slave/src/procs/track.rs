//! The process table: which processes of the master's run here, what they fork and exec,
//! how they end (the kernel's process events, looks at `/proc`, the reaper), and the signals
//! their ghosts send them.

use std::sync::Arc;

use bproc_proto::{ExitStatus, Message, ProcChange};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::Procs;

impl Procs {
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

    /// A process this slave has just started: a signal for it is delivered at once, and it
    /// is watched at once (it may fork before it is tracked).
    pub(super) fn fresh_start(&self, pid: i32) {
        if self.known().contains_key(&pid) {
            return;
        }
        self.fresh().entry(pid).or_default();
        if self.0.events.get().is_some() {
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
    pub async fn follow(self, event_hub: Option<std::path::PathBuf>) {
        self.listen(event_hub.as_deref());
        loop {
            let youngest = self.0.known.lock().map_or(None, |k| k.values().map(|p| p.seen).max());
            match youngest {
                None => {
                    // The first look waits as below, from the start that woke it.
                    self.0.started.notified().await;
                    continue;
                }
                Some(t) => {
                    // The first look 50 ms after the latest start, then ever less often, up
                    // to once a second: a short process is never looked at, and a thousand
                    // slaves on one host do not poll each other off the CPU. With the
                    // kernel's process events, which say at once what a look would find
                    // (and which say so when some were lost), looking is only a backstop:
                    // once a second from the start (on a busy host a launch's processes
                    // live past 50 ms, and a 1024-node launch spent a twentieth of its
                    // slaves' work looking).
                    let first = if self.0.events.get().is_some() { LOOK_MAX } else { LOOK_FIRST };
                    let tick = t.elapsed().clamp(first, LOOK_MAX);
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
    /// is all there is. With `hub`, the events come from the hub of the slaves sharing this
    /// machine when it answers.
    fn listen(&self, hub: Option<&std::path::Path>) {
        use bproc_sys::procevents::Events;
        if std::env::var_os("BPROC_NO_PROCEVENTS").is_some() {
            return;
        }
        let shared = hub.and_then(|path| {
            Events::through_hub(path)
                .inspect_err(|e| info!("process event hub {}: {e}", path.display()))
                .ok()
        });
        let events = match shared.map_or_else(Events::open, Ok) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                info!("following forks by looking at /proc (process events: {e})");
                return;
            }
        };
        let _ = self.0.events.set(events.clone());
        self.rewatch();
        let procs = self.clone();
        let mut shared = events.shared();
        let started = std::thread::Builder::new().name("procevents".into()).spawn(move || loop {
            match events.next() {
                Ok(list) => list.into_iter().for_each(|e| procs.on_event(e)),
                // Events were lost: look at everything once.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    if shared && !events.shared() {
                        shared = false;
                        warn!("the process event hub went away: events now come to this slave");
                    }
                    procs.scan_proc()
                }
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

    /// Points the event filter at the known processes, those just started, and this slave
    /// (whose forks are the processes it starts).
    fn rewatch(&self) {
        let Some(events) = self.0.events.get() else { return };
        let mut pids: Vec<i32> = self.known().keys().copied().collect();
        pids.push(std::process::id() as i32);
        let mut started: Vec<i32> = self.fresh().keys().copied().collect();
        started.extend(self.children().iter().copied());
        if let Err(e) = events.watch(&pids, &started) {
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
                // A child gone already keeps its parent's name (it had no time to exec), and
                // is known by the pid it was steered to.
                let aimed = self.0.forks.get().map_or(0, |f| f.aimed(parent, child));
                let (comm, child_ns) = comm_and_ns_pid(child).unwrap_or((parent_comm, aimed));
                if !self.adopt(child, Known::new(comm.clone(), 0, 0, 0, uid)) {
                    return;
                }
                self.rewatch();
                let change = ProcChange::Forked { child, child_ns, comm };
                (self.0.report)(Message::ProcEvent { pid: parent, change });
            }
            ProcEvent::Exec { pid } => {
                let Some(comm) = proc_comm(pid) else { return };
                let renamed = match self.known().get_mut(&pid) {
                    Some(k) if k.comm != comm => {
                        k.comm.clone_from(&comm);
                        true
                    }
                    _ => false,
                };
                if renamed {
                    let change = ProcChange::Exec { comm };
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
                // Gone and reaped by its parent before this look. The kernel's event of its
                // end, with its status, may still wait to be read: it has a while. Then its
                // status is taken for lost.
                if !direct && !self.may_be_told(pid) && self.forget(pid, ExitStatus::Code(0)) {
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
            let Ok(kids) = bproc_sys::peer::read_proc(format!("/proc/{pid}/task/{pid}/children"))
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

    /// Whether the end of `pid`, known and gone from `/proc`, may still come with its status
    /// in a process event: events are read, and it was first found gone less than
    /// [`MISSED_GRACE`] ago.
    fn may_be_told(&self, pid: i32) -> bool {
        if self.0.events.get().is_none() {
            return false;
        }
        let mut known = self.known();
        let Some(k) = known.get_mut(&pid) else { return false };
        k.missed.get_or_insert_with(std::time::Instant::now).elapsed() < MISSED_GRACE
    }

    /// Starts watching `pid`, rank `rank` of `launch` with ghost `ghost` (0: none), run for
    /// `uid` (after its start was reported, so its events follow that report). `program` is
    /// the path it was started from, if it ran a program (not a restored image).
    pub fn track(
        &self,
        launch: u64,
        rank: u32,
        pid: i32,
        ghost: i32,
        uid: u32,
        program: Option<&str>,
    ) {
        // A started program's name is the one its exec gives, not read: the start returns
        // once the exec has replaced the memory, a moment before the kernel names the
        // process, so a read could find the spawner's name and report a rename that makes
        // the ghost execute itself again for nothing. A restored process's is its image's.
        let restored = self.0.names.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        let comm = program.map(exec_comm).or(restored).or_else(|| proc_comm(pid));
        {
            // Known whole before a reaper on another thread may take its end.
            let _reaping = self.0.reaping.lock().unwrap_or_else(|e| e.into_inner());
            self.ranks().insert((launch, rank), pid);
            self.children().insert(pid);
            if let Some(comm) = comm {
                self.known().insert(pid, Known::new(comm, ghost, launch, rank, uid));
            }
        }
        let waiting = self.fresh().remove(&pid).unwrap_or_default();
        self.rewatch();
        for e in waiting {
            self.handle(e);
        }
        self.reap();
        // With the kernel's process events, looking is a backstop that may begin late: a
        // start on the spawner thread leaves the runtime asleep, and the looks begin at the
        // next child signal or ping ([`Procs::note_starts`]).
        if self.0.events.get().is_some() && tokio::runtime::Handle::try_current().is_err() {
            self.0.started_unseen.store(true, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.0.started.notify_one();
        }
    }

    /// SIGCHLD came: reaps, and notes the starts made meanwhile.
    pub fn child_signal(&self) {
        self.reap();
        self.note_starts();
    }

    /// Has [`Procs::follow`] look after the starts it was not told of, if any of them still
    /// runs: a launch's short process has ended by its child signal, and waking the runtime
    /// for it would find nothing to look at.
    pub fn note_starts(&self) {
        if self.0.started_unseen.swap(false, std::sync::atomic::Ordering::Relaxed)
            && !self.known().is_empty()
        {
            self.0.started.notify_one();
        }
    }

    /// Collects the state changes of watched children (on SIGCHLD) and reports them.
    pub fn reap(&self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let _reaping = self.0.reaping.lock().unwrap_or_else(|e| e.into_inner());
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
        // One just started is known once its start is reported (on the spawner thread): a
        // signal its caller sent as soon as it learnt the pid may come first.
        if !self.known().contains_key(&pid) && !self.fresh().contains_key(&pid) {
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
}

/// Ended processes kept for a resumed session: those of the last [`ENDED_KEPT`], looked
/// over once there are [`ENDED_PRUNE_AT`].
const ENDED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);
const ENDED_PRUNE_AT: usize = 4096;

/// How long an ended fork's pid is taken for that process, not a new one, by a late look.
const REPORTED_LATELY: std::time::Duration = std::time::Duration::from_secs(5);

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
/// How long the end of a process gone from `/proc` may wait in the kernel's process events
/// (read late on a busy node) before its status is taken for lost.
const MISSED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A process of the master's, as [`Procs::follow`] last saw it.
#[derive(Debug)]
pub(super) struct Known {
    /// Its command name.
    pub(super) comm: String,
    /// When it was first seen.
    pub(super) seen: std::time::Instant,
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
    /// When a look at `/proc` first found it gone, its end not reported yet.
    missed: Option<std::time::Instant>,
}

impl Known {
    fn new(comm: String, ghost: i32, launch: u64, rank: u32, uid: u32) -> Known {
        let seen = std::time::Instant::now();
        Known { comm, seen, ghost, launch, rank, uid, end: None, gone: None, missed: None }
    }
}

/// What `/proc/PID/stat` says of a process.
struct Stat {
    pub(super) comm: String,
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

/// The command name of `pid` alone, from `/proc/PID/comm`: the kernel writes that file for
/// the asking, where `/proc/PID/stat` costs it some fifty fields (read at each exec of a
/// tracked process).
fn proc_comm(pid: i32) -> Option<String> {
    let mut comm = bproc_sys::peer::read_proc(format!("/proc/{pid}/comm")).ok()?;
    if comm.ends_with('\n') {
        comm.pop();
    }
    Some(comm)
}

/// The name the kernel gives a process that executes `path`: its last component, cut to 15
/// bytes (as `/proc/PID/comm` shows it).
fn exec_comm(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path).as_bytes();
    String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned()
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
    let text = bproc_sys::peer::read_proc(format!("/proc/{pid}/status")).ok()?;
    let ns = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    ns.split_whitespace().nth(1)?.parse().ok()
}

/// The thread group (process) of thread `tid`, from `/proc/TID/status`.
pub(super) fn thread_group(tid: i32) -> Option<i32> {
    let text = bproc_sys::peer::read_proc(format!("/proc/{tid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()
}

fn comm_and_ns_pid(pid: i32) -> Option<(String, i32)> {
    let text = bproc_sys::peer::read_proc(format!("/proc/{pid}/status")).ok()?;
    let comm = text.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_owned();
    let ns = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?;
    Some((comm, ns.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::exec_comm;

    #[test]
    fn an_exec_names_a_process_after_its_file_cut_to_15_bytes() {
        assert_eq!(exec_comm("/usr/bin/sleep"), "sleep");
        assert_eq!(exec_comm("sleep"), "sleep");
        assert_eq!(exec_comm("./a-very-long-program-name"), "a-very-long-pro");
    }

    #[test]
    fn the_name_matches_what_the_kernel_gives() {
        let dir = std::env::temp_dir().join(format!("bproc-comm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a-program-named-at-length");
        std::fs::copy("/bin/sleep", &path).unwrap();
        let mut child = std::process::Command::new(&path).arg("10").spawn().unwrap();
        let pid = child.id() as i32;
        // The kernel names it a moment after the exec; wait for the name to change.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            let comm = super::proc_comm(pid).unwrap_or_default();
            if comm == exec_comm(&path.to_string_lossy()) || std::time::Instant::now() > deadline {
                break comm;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(seen, "a-program-named");
    }
}
