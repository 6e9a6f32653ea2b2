//! Processes the slave runs for the master: start them as the caller (in the master's pid
//! namespace, with their ghosts' pids, when the slave is root), connect their forwarded fds
//! back to the launcher, deliver the signals their ghosts forward, and report how they stop,
//! continue, fork, exec and end.
//!
//! - `track`: the process table, the processes' ends, forks and execs (process events and
//!   looks at `/proc`), and signals to them;
//! - `spawn`: starting one rank ([`spawn`], [`Start`]);
//! - `spawner`: the thread that starts and restores processes (in the pid namespace);
//! - `io`: the rank's fds, among them the connections to the launcher;
//! - `stage`: a diskless node's staged files and their cache.

mod io;
mod spawn;
mod spawner;
mod stage;
mod track;

pub(crate) use io::{
    connect_image, null_device, request_image, shut_down, FETCHES_DONE, IMAGE_REQUEST,
};
pub use spawn::{spawn, Done, Start};
use spawner::Spawner;
pub(crate) use stage::{ensure_cached, stage};
pub use stage::{Source, TreeConn};
pub use track::stat;
use track::{thread_group, Known};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bproc_proto::Message;
use tracing::error;

use crate::isolate::Diskless;

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
    /// Held while children are reaped: the runtime reaps on SIGCHLD and the spawner thread
    /// after a start, and two reapers would each take one a status meant for the other.
    reaping: Mutex<()>,
    /// Direct children killed with their session ([`Procs::kill_all`]): reaped, not reported.
    doomed: Mutex<std::collections::HashSet<i32>>,
    /// Every process of the master's here (direct children and what they forked).
    known: Mutex<HashMap<i32, Known>>,
    /// Processes that ended since the last [`Procs::session_procs`], kept so a restarted
    /// master still learns whose end the events it is yet to receive report.
    ended: Mutex<HashMap<i32, Known>>,
    /// Wakes [`Procs::follow`] when a process starts.
    started: tokio::sync::Notify,
    /// A process started off the runtime, which [`Procs::child_signal`] wakes
    /// [`Procs::follow`] for.
    started_unseen: std::sync::atomic::AtomicBool,
    /// The kernel's process events for the known processes, when this slave may have them
    /// (root): forks, execs and ends as they happen ([`Procs::listen`]).
    events: std::sync::OnceLock<Arc<bproc_sys::procevents::Events>>,
    /// Processes this slave started and does not track yet (their start is on its way to
    /// the master), with the events of theirs that came meanwhile, replayed by
    /// [`Procs::track`]: a process may fork before it is tracked.
    fresh: Mutex<HashMap<i32, Vec<bproc_sys::procevents::ProcEvent>>>,
    /// The names of restored processes not tracked yet, from their images (the spawner
    /// thread, which tracks them, sees the pid namespace's `/proc`, not theirs).
    names: Mutex<HashMap<i32, String>>,
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
        let fork_pids = std::env::var_os("BPROC_NO_FORK_PIDS").is_none();
        let (spawner, filter) = Spawner::start(pid_namespace, extra_proc, fork_pids);
        let procs = Procs(Arc::new(ProcsInner {
            ranks: Mutex::default(),
            children: Mutex::default(),
            reaping: Mutex::default(),
            doomed: Mutex::default(),
            known: Mutex::default(),
            ended: Mutex::default(),
            started: tokio::sync::Notify::new(),
            started_unseen: std::sync::atomic::AtomicBool::new(false),
            events: std::sync::OnceLock::new(),
            fresh: Mutex::default(),
            names: Mutex::default(),
            report: Box::new(report),
            spawner,
            forks: std::sync::OnceLock::new(),
        }));
        if let Some((listener, spawner_tid)) = filter {
            let host = ForksHost(Arc::downgrade(&procs.0));
            let last_pid = procs.0.spawner.last_pid.clone();
            match crate::forks::Forks::start(host, last_pid, listener, spawner_tid) {
                Ok(f) => {
                    let _ = procs.0.forks.set(f);
                }
                // The filter is on the spawner thread already, and with its listener gone
                // a filtered fork fails: say so (a daemon that cannot start a thread at its
                // start has worse troubles).
                Err(e) => error!(
                    "cannot start the forks thread ({e}): forks by the node's processes will \
                     fail with ENOSYS; restart bpslave, or set BPROC_NO_FORK_PIDS=1"
                ),
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

    fn fresh(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<bproc_sys::procevents::ProcEvent>>> {
        self.0.fresh.lock().unwrap_or_else(|e| e.into_inner())
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
}

/// Who the slave may run processes as.
#[derive(Debug, Clone, Copy)]
pub struct Authority {
    /// The daemon runs as real root and can take any identity.
    pub root: bool,
    /// The daemon's own uid outside any user namespace.
    pub uid: u32,
}

// Why a rank could not start: an errno-style code (sent to the master) and the details
// (logged here), as the master refuses a request.
use bproc_proto::Refusal;

fn refuse(code: i32, message: String) -> Result<i32, Refusal> {
    Err(Refusal::new(code, message))
}
