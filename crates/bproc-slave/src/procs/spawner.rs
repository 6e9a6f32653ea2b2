//! The spawner thread, which starts and restores the slave's processes (inside the master's
//! pid namespace, when there is one), and the jobs it runs.

use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::Procs;

impl Procs {
    /// Starts `spec`, rank `rank` of a launch `(launch, rank)`, on the spawner thread; under
    /// another pid when the one it asks for is taken here. `done` gets the outcome on that
    /// thread, which goes on with the rank (its report and tracking) without waking the
    /// daemon's runtime.
    pub(super) fn spawn(
        &self,
        spec: bproc_sys::SpawnSpec,
        (launch, rank): (u64, u32),
        done: impl FnOnce(std::io::Result<i32>) + Send + 'static,
    ) {
        let procs = self.clone();
        let job = move |here: bool| {
            if !here {
                return done(Err(gone()));
            }
            let mut spec = spec;
            let mut started = bproc_sys::spawn(&spec);
            if spec.set_tid.is_some()
                && matches!(&started, Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST))
            {
                // The pid is taken here (a process of an earlier session): run under another.
                warn!("launch {launch} rank {rank}: pid {:?} is taken on this node", spec.set_tid);
                spec.set_tid = None;
                started = bproc_sys::spawn(&spec);
            }
            if let Ok(pid) = started {
                procs.fresh_start(pid);
            }
            done(started)
        };
        if let Err(job) = self.0.spawner.submit(Box::new(job)) {
            job(false);
        }
    }

    /// Restores `image` on the spawner thread (whose children are in the pid namespace, and
    /// which alone may trace them); `done` gets the outcome there, as for [`Procs::spawn`],
    /// so the daemon's runtime is not woken for it.
    pub(super) fn restore(
        &self,
        image: Image,
        spec: bproc_ckpt::restore::RestoreSpec,
        done: impl FnOnce(std::io::Result<i32>) + Send + 'static,
    ) {
        let procs = self.clone();
        let restore = move || {
            let restored = match image {
                Image::Stream(s) => {
                    use std::io::BufRead;
                    let mut reader = std::io::BufReader::with_capacity(1 << 20, s);
                    // The mover's reason, when it sent one instead of an image (it writes
                    // the refusal at once and closes).
                    match reader.fill_buf().ok().and_then(bproc_proto::conn::refusal) {
                        Some(why) => Err(bproc_ckpt::CkptError::Busy(why)),
                        None => bproc_ckpt::restore::restore_noting(reader, spec),
                    }
                }
                Image::Bytes(b) => bproc_ckpt::restore::restore_shared(b, spec),
                Image::Parent(p) => {
                    let mut reader = std::io::BufReader::with_capacity(64 << 10, p);
                    let restored = bproc_ckpt::restore::restore_noting(&mut reader, spec);
                    let whole = restored.is_ok() && reader.buffer().is_empty();
                    reader.into_inner().done(whole);
                    restored
                }
            };
            restored
                .map(|r| {
                    procs.fresh_start(r.pid);
                    procs.0.names.lock().unwrap_or_else(|e| e.into_inner()).insert(r.pid, r.comm);
                    for what in r.closed {
                        info!("pid {}: restored without a file this node lacks: {what}", r.pid);
                    }
                    r.pid
                })
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::Error::from_raw_os_error(e.errno()).kind(),
                        RestoreFailed { errno: e.errno(), message: e.to_string() },
                    )
                })
        };
        let procs = self.clone();
        let job = move |here: bool| {
            if !here {
                return done(Err(gone()));
            }
            // No signal for each of the restore's traced stops: the restored process is
            // tracked next (or on failure the children looked at), which reaps, and so finds
            // another child's stop or continue that raised no signal meanwhile.
            let restored = bproc_sys::without_stop_signals(restore);
            // The end of another child, signalled while a SIGCHLD was pending, wakes no
            // one: once that signal is taken, the reap below finds it.
            if !bproc_sys::await_child_signals(std::time::Duration::from_millis(500)) {
                debug!("a child signal still pending after a restore");
            }
            if restored.is_err() {
                // A restored process is tracked next, which reaps.
                procs.reap();
            }
            done(restored)
        };
        if let Err(job) = self.0.spawner.submit(Box::new(job)) {
            job(false);
        }
    }
}

/// Where a restore reads its image: a connection to the mover or the parent node in the
/// launch tree (restored as it arrives), or a copy this node already holds (a vector fork's,
/// shared by its ranks and its children in the launch tree).
pub(super) enum Image {
    Stream(std::net::TcpStream),
    Parent(super::io::ParentImage),
    Bytes(bproc_image::SharedImage),
}

/// A failed restore, keeping its errno and explanation.
#[derive(Debug)]
pub(super) struct RestoreFailed {
    pub(super) errno: i32,
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

/// A request to the spawner thread, which tells its own outcome: run there with `true`, or
/// with `false` where it was made when the thread is gone.
type SpawnJob = Box<dyn FnOnce(bool) + Send>;

/// The thread that starts processes. With a pid namespace it has entered the namespace for
/// its children, which a thread can do only if it never starts threads itself; the
/// namespace's init dies with it. Processes it starts die with it too (parent-death signal),
/// and it lives as long as the daemon. With a namespace, and when asked, it carries the fork
/// filter ([`bproc_sys::forkpid`]) that every process it starts or restores inherits.
pub(super) struct Spawner {
    tx: Mutex<std::sync::mpsc::Sender<SpawnJob>>,
    pub(super) pid_namespace: bool,
    /// Sets the namespace's last pid (through its init), replaced with the namespace.
    pub(super) last_pid: Arc<Mutex<Option<Arc<bproc_sys::LastPid>>>>,
    /// The namespace's init, to reap when it is replaced.
    init: Arc<std::sync::atomic::AtomicI32>,
    /// Asks the thread for a fresh namespace (killing everything in the old one).
    reset: Arc<std::sync::atomic::AtomicBool>,
}

/// What a job for a spawner thread that ended gets.
fn gone() -> std::io::Error {
    std::io::Error::other("the spawner thread is gone")
}

impl Spawner {
    /// Starts the thread; with `fork_filter` and a namespace, also returns the fork filter's
    /// listener and the thread's id, for the forks thread.
    pub(super) fn start(
        want_namespace: bool,
        extra_proc: Option<std::path::PathBuf>,
        fork_filter: bool,
    ) -> (Spawner, Option<(bproc_sys::forkpid::Listener, i32)>) {
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
            let filter = (fork_filter && ns.is_some())
                .then(|| {
                    bproc_sys::forkpid::install_here()
                        .inspect_err(|e| warn!("forks keep the pids the kernel gives ({e})"))
                        .ok()
                })
                .flatten()
                .map(|l| (l, nix::unistd::gettid().as_raw()));
            let _ = ready_tx.send((ns.is_some(), filter));
            while let Ok(job) = rx.recv() {
                if reset2.swap(false, std::sync::atomic::Ordering::Relaxed) && ns.is_some() {
                    ns = None; // kills the init, and every process of the namespace
                    ns = make().or(ns);
                }
                job(true);
            }
        });
        let (pid_namespace, filter) =
            if spawned.is_ok() { ready_rx.recv().unwrap_or((false, None)) } else { (false, None) };
        (Spawner { tx: Mutex::new(tx), pid_namespace, last_pid, init, reset }, filter)
    }

    /// Runs `job` on the thread and waits for its outcome.
    pub(super) async fn run(&self, job: Job) -> std::io::Result<i32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |here| {
            let _ = tx.send(if here { job() } else { Err(gone()) });
        }))
        .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Hands `job` to the thread, which runs it in turn; the job back if the thread is gone.
    pub(super) fn submit(&self, job: SpawnJob) -> Result<(), SpawnJob> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|e| e.0)
    }

    /// Kills the namespace's processes now; the thread makes a new namespace before its next
    /// spawn.
    pub(super) fn reset(&self) {
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
    pub(super) fn reap_init(&self) {
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
