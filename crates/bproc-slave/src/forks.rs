//! Forks on this node that take their ghosts' pids (root slaves, in the master's pid
//! namespace).
//!
//! Every process the slave starts there carries the seccomp filter of the spawner thread,
//! whose listener the slave holds ([`bproc_sys::forkpid`]): a fork (`fork`, `vfork`, a
//! `clone` that makes a process) waits until the slave answers. One thread takes each fork
//! at once (so that it waits unmoved by the signals that come meanwhile); another,
//! [`Forks`], answers them one at a time (at once for the spawner thread's own forks):
//!
//! 1. it asks the master to have the parent's ghost fork now (`ForkAhead`), and waits for
//!    the child ghost's pid (`ForkAheadReply`), at most [`Forks::wait`];
//! 2. it has the namespace's init set `ns_last_pid` to that pid − 1;
//! 3. it lets the fork go on (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the kernel gives the child
//!    the next free pid, the ghost's;
//! 4. it waits (at most [`FORK_SEEN`]) for the fork's process event, so that the next
//!    fork's `ns_last_pid` cannot overtake this one, or until the forking thread's next fork
//!    comes, which it makes only once this one is over: a signal that came while the fork
//!    was held has the kernel start the fork again (`ERESTARTNOINTR`), with no event.
//!
//! Each try is remembered with the host's last pid when it was let go, so that a child gone
//! before the slave could read its pid in the namespace is still known by its try's ghost
//! ([`Forks::aimed`]): pids are handed out in increasing order, so a child belongs to the
//! latest try of its parent let go before its pid was. The master gives every fork the
//! ghost of its own try, and ends the ghosts of tries that made no child.
//!
//! Every step is bounded, and a step that fails (no master, a master too slow, a parent
//! without a ghost, a pid taken in the namespace, a thread started meanwhile by another
//! process, which takes pids too) only means the child gets another pid: the fork goes on
//! after at most [`Forks::wait`] plus a few milliseconds, and the master gives the process's
//! `Forked` event the ghost forked ahead, as it does for any fork.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bproc_sys::forkpid::{Listener, Notification};
use bproc_sys::LastPid;
use tracing::{debug, warn};

/// Longest wait for the fork's process event once it was let go.
const FORK_SEEN: Duration = Duration::from_millis(10);
/// Shortest wait for the init's answer when setting the last pid (it has what is left of
/// [`Forks::wait`] otherwise).
const INIT_WAIT: Duration = Duration::from_millis(5);
/// Default wait for the master's answer (`BPROC_FORK_WAIT_MS` overrides it).
const MASTER_WAIT: Duration = Duration::from_millis(10);
/// Tries remembered for [`Forks::aimed`]: their events come within milliseconds, so this
/// many covers every try whose event can still come.
const TRIES_KEPT: usize = 256;

/// The forks thread's shared state: the master's answers, fork events.
pub(crate) struct Forks {
    /// The spawner thread, whose own forks (helpers, not processes of the master's) go on
    /// at once.
    spawner: i32,
    /// Answers from the master by request number.
    answers: Mutex<HashMap<u32, i32>>,
    answered: Condvar,
    /// The fork awaited once let go.
    seen: Mutex<Awaited>,
    seen_cv: Condvar,
    /// The latest tries let go, oldest first.
    tries: Mutex<VecDeque<Try>>,
    /// The host's `ns_last_pid`, read as each try is let go.
    host_last_pid: Option<std::fs::File>,
    /// The namespace's last-pid setter, replaced with the namespace (by the spawner).
    last_pid: Arc<Mutex<Option<Arc<LastPid>>>>,
    /// How long a fork waits for the master.
    wait: Duration,
}

/// The fork the forks thread waits to see once it let it go.
#[derive(Debug, Default)]
struct Awaited {
    /// Its process (0: none awaited) and thread.
    parent: i32,
    tid: i32,
    /// Seen to fork, or forking again.
    over: bool,
}

/// A fork let go, for naming the ghost its child was meant to have ([`Forks::aimed`]).
#[derive(Debug)]
struct Try {
    /// The forking process.
    parent: i32,
    /// The ghost's pid the child was steered to (0: not steered).
    ghost: i32,
    /// The host's last pid when it was let go: its child's host pid is greater.
    after: i32,
}

/// [`Forks::aimed`] on `tries`.
fn take_aimed(tries: &mut VecDeque<Try>, parent: i32, child: i32) -> i32 {
    let Some(at) = tries.iter().rposition(|t| t.parent == parent && t.after < child) else {
        return 0;
    };
    let ghost = tries[at].ghost;
    let mut i = 0;
    tries.retain(|t| {
        i += 1;
        i > at + 1 || t.parent != parent
    });
    ghost
}

/// What the forks thread needs of the rest of the slave.
pub(crate) trait Host: Send + Sync + 'static {
    /// The process of thread `tid` and its command name, if it is one of the master's
    /// (waiting up to `limit` for a process just started to be tracked).
    fn tracked(&self, tid: i32, limit: Duration) -> Option<(i32, String)>;
    /// Sends a message to the master.
    fn send(&self, msg: bproc_proto::Message);
}

impl Forks {
    /// Starts the thread, answering the forks that come to `listener`, the filter of thread
    /// `spawner`.
    pub(crate) fn start(
        host: impl Host,
        last_pid: Arc<Mutex<Option<Arc<LastPid>>>>,
        listener: Listener,
        spawner: i32,
    ) -> std::io::Result<Arc<Forks>> {
        let wait = std::env::var("BPROC_FORK_WAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(MASTER_WAIT, Duration::from_millis);
        let forks = Arc::new(Forks {
            spawner,
            answers: Mutex::default(),
            answered: Condvar::new(),
            seen: Mutex::default(),
            seen_cv: Condvar::new(),
            tries: Mutex::default(),
            host_last_pid: std::fs::File::open("/proc/sys/kernel/ns_last_pid")
                .inspect_err(|e| debug!("/proc/sys/kernel/ns_last_pid: {e}"))
                .ok(),
            last_pid,
            wait,
        });
        // One thread takes each fork as it comes, the other answers them in order: a fork
        // taken waits unmoved by signals (see `install_here`), where one left in the queue
        // while an earlier fork waited for the master failed with EINTR at the parent's
        // SIGCHLD.
        let listener = Arc::new(listener);
        let (tx, rx) = std::sync::mpsc::channel();
        let (taker, state) = (listener.clone(), forks.clone());
        std::thread::Builder::new()
            .name("fork-taker".into())
            .spawn(move || take(&taker, &tx, &state))?;
        let me = forks.clone();
        std::thread::Builder::new()
            .name("forks".into())
            .spawn(move || me.run(&listener, &rx, host))?;
        Ok(forks)
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The master's answer to request `seq`.
    pub(crate) fn answer(&self, seq: u32, ghost: i32) {
        Self::lock(&self.answers).insert(seq, ghost);
        self.answered.notify_all();
    }

    /// A process event: `parent` forked.
    pub(crate) fn forked(&self, parent: i32) {
        self.over_if(|a| a.parent == parent);
    }

    /// The ghost's pid that child `child` (a host pid) of `parent` was steered to, 0 if none
    /// (from the latest try of `parent` let go before `child` was made). Tries of `parent`
    /// up to that one are forgotten: their events, had they made children, came before.
    pub(crate) fn aimed(&self, parent: i32, child: i32) -> i32 {
        take_aimed(&mut Self::lock(&self.tries), parent, child)
    }

    /// Remembers a try of `parent` steered to `ghost` (0: not steered), as it is let go.
    fn remember(&self, parent: i32, ghost: i32) {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.host_last_pid else { return };
        let mut buf = [0u8; 16];
        let after = f
            .read_at(&mut buf, 0)
            .ok()
            .and_then(|n| std::str::from_utf8(&buf[..n]).ok()?.trim().parse::<i32>().ok());
        let Some(after) = after else { return };
        let mut tries = Self::lock(&self.tries);
        if tries.len() == TRIES_KEPT {
            tries.pop_front();
        }
        tries.push_back(Try { parent, ghost, after });
    }

    /// Thread `tid` forks again, so its fork before is over.
    fn forks_again(&self, tid: i32) {
        self.over_if(|a| a.tid == tid);
    }

    fn over_if(&self, this: impl Fn(&Awaited) -> bool) {
        let mut s = Self::lock(&self.seen);
        if s.parent != 0 && this(&s) {
            s.over = true;
            self.seen_cv.notify_all();
        }
    }

    /// Answers the forks [`take`] passes on, in order, until it ends.
    fn run(&self, listener: &Listener, forks: &Receiver<Notification>, host: impl Host) {
        let mut seq: u32 = 0;
        for n in forks {
            seq = seq.wrapping_add(1);
            self.steer(listener, n, seq, &host);
        }
    }

    /// Lets fork `n` go on, with the pid of a ghost forked ahead for it when one comes in
    /// time.
    fn steer(&self, l: &Listener, n: Notification, seq: u32, host: &impl Host) {
        if n.pid == self.spawner {
            if let Err(e) = l.proceed(n.id) {
                debug!("fork of the spawner thread: {e}");
            }
            return;
        }
        let start = Instant::now();
        let last = Self::lock(&self.last_pid).clone();
        // The notification names the forking thread; events and the master name its process.
        let (parent, ghost, asked) = match (&last, host.tracked(n.pid, self.wait)) {
            (Some(_), Some((pid, comm))) => {
                host.send(bproc_proto::Message::ForkAhead { seq, pid, comm });
                (pid, self.await_answer(seq, start + self.wait), true)
            }
            _ => (n.pid, 0, false),
        };
        let set = match (&last, ghost) {
            (Some(last), g) if g > 1 => match last.set(
                g - 1,
                (start + self.wait).saturating_duration_since(Instant::now()).max(INIT_WAIT),
            ) {
                Ok(()) => true,
                Err(e) => {
                    debug!("setting the namespace's last pid to {}: {e}", g - 1);
                    false
                }
            },
            _ => false,
        };
        if set {
            *Self::lock(&self.seen) = Awaited { parent, tid: n.pid, over: false };
        }
        if asked {
            // Even unsteered: its child must not be taken for an older try's.
            self.remember(parent, if set { ghost } else { 0 });
        }
        if let Err(e) = l.proceed(n.id) {
            // The caller went away meanwhile (killed): no fork.
            debug!("fork of {}: {e}", n.pid);
            *Self::lock(&self.seen) = Awaited::default();
            return;
        }
        if set {
            let s = Self::lock(&self.seen);
            let (mut s, _) = self
                .seen_cv
                .wait_timeout_while(s, FORK_SEEN, |s| !s.over)
                .unwrap_or_else(|e| e.into_inner());
            *s = Awaited::default();
        }
        debug!("fork of {}: ghost {ghost} (pid set: {set}) after {:?}", n.pid, start.elapsed());
    }

    /// Waits until `deadline` for the master's answer to `seq` (0 without one).
    fn await_answer(&self, seq: u32, deadline: Instant) -> i32 {
        let mut a = Self::lock(&self.answers);
        loop {
            if let Some(g) = a.remove(&seq) {
                // Late answers to earlier requests are of no use now.
                a.clear();
                return g;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            a = self.answered.wait_timeout(a, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Takes each fork from `listener` as it comes and passes it on, until the spawner thread,
/// and with it every process of the filter, is gone. Runs at once when a fork comes: it only
/// waits on the listener and hands each fork over a channel; then it tells the forks thread
/// that the forking thread's fork before is over ([`Forks::forks_again`]).
fn take(listener: &Listener, forks: &Sender<Notification>, state: &Forks) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // A fork not yet taken fails at the first signal its caller gets: this thread must not
    // wait for a core while the caller's last child ends.
    match listener.hurry_reader() {
        Ok(h) => debug!("fork notifications read by a thread that runs at once ({h:?})"),
        Err(e) => warn!(
            "cannot raise the fork-taker thread's priority ({e}): on a busy node a fork may \
             fail with EINTR when a signal comes before it is read"
        ),
    }
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warn!("fork notifications: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let ready = fds[0].revents().unwrap_or(PollFlags::empty());
        if !ready.contains(PollFlags::POLLIN) {
            if ready.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                return;
            }
            continue;
        }
        match listener.recv() {
            Ok(n) => {
                if forks.send(n).is_err() {
                    return;
                }
                state.forks_again(n.pid);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => debug!("fork notification: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{take_aimed, Try};
    use std::collections::VecDeque;

    fn tries(list: &[(i32, i32, i32)]) -> VecDeque<Try> {
        list.iter().map(|&(parent, ghost, after)| Try { parent, ghost, after }).collect()
    }

    #[test]
    fn a_child_belongs_to_the_latest_try_of_its_parent_let_go_before_it() {
        // Process 10's first try made a child (host pid 103) before its second was let go.
        let mut t = tries(&[(10, 500, 100), (20, 600, 101), (10, 502, 105)]);
        assert_eq!(take_aimed(&mut t, 10, 103), 500);
        assert_eq!(take_aimed(&mut t, 10, 107), 502);
        // Another process's try stays until its own child comes.
        assert_eq!(t.len(), 1);
        assert_eq!(take_aimed(&mut t, 20, 104), 600);
        assert!(t.is_empty());
    }

    #[test]
    fn a_try_started_over_is_passed_over_and_forgotten() {
        // The first try made no child: the kernel started it over as the second.
        let mut t = tries(&[(10, 500, 100), (10, 502, 100)]);
        assert_eq!(take_aimed(&mut t, 10, 101), 502);
        assert!(t.is_empty());
        // No try of that parent before the child: not steered.
        let mut t = tries(&[(10, 500, 200)]);
        assert_eq!(take_aimed(&mut t, 10, 150), 0);
        assert_eq!(take_aimed(&mut t, 11, 250), 0);
        assert_eq!(t.len(), 1);
    }
}
