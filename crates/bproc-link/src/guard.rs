//! Guards that keep a daemon's ports from being exhausted by peers that have not proved
//! anything yet.
//!
//! - [`Pending`] bounds the connections still being read before they authenticate (a tree
//!   part's MAC, a data stream's token). Past the bound, a new connection ends the oldest
//!   pending one, which has had the longest to prove itself: a peer that opens connections
//!   and sends nothing cannot hold more than the bound, and cannot starve an honest peer,
//!   which proves itself within a round trip of connecting.
//! - [`Refusals`] rate-limits the warnings refused connections cause: the first few of an
//!   interval are logged as they come, the rest are counted and summed up in one line, so a
//!   flood of bad connections costs the log a few lines per interval instead of a line each.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tracing::warn;

/// Connections being read before they authenticate, at most a fixed number (see the module
/// documentation).
#[derive(Debug)]
pub struct Pending {
    max: usize,
    inner: Mutex<PendingInner>,
}

#[derive(Debug, Default)]
struct PendingInner {
    next: u64,
    /// Live pending tasks, oldest first; `None` while a task is being spawned.
    live: BTreeMap<u64, Option<AbortHandle>>,
}

/// A task's place among the pending ones. [`Admitted::admit`] (once the peer proved itself)
/// takes the task out of the count, so it can no longer be ended to make room; a task that
/// ends leaves the count either way.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Pending>,
    id: u64,
}

impl Admitted {
    /// The peer proved itself: the task is no longer pending.
    pub fn admit(self) {
        self.gate.lock().live.remove(&self.id);
    }
}

/// Takes a task out of the count when it ends or is ended.
struct Leave(Arc<Pending>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.lock().live.remove(&self.1);
    }
}

impl Pending {
    /// A gate for at most `max` pending connections.
    pub fn new(max: usize) -> Arc<Pending> {
        Arc::new(Pending { max: max.max(1), inner: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are pending now.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether no connection is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spawns `task` (on the current tokio runtime) as a pending connection. It receives its
    /// [`Admitted`] place, to [`Admitted::admit`] once its peer has proved itself. Returns true when the
    /// oldest pending connection was ended to make room.
    pub fn spawn<F, Fut>(self: &Arc<Self>, task: F) -> bool
    where
        F: FnOnce(Admitted) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (id, evicted) = {
            let mut g = self.lock();
            let mut evicted = false;
            while g.live.len() >= self.max {
                if let Some((_, Some(h))) = g.live.pop_first() {
                    h.abort();
                    evicted = true;
                }
            }
            let id = g.next;
            g.next += 1;
            g.live.insert(id, None);
            (id, evicted)
        };
        let fut = task(Admitted { gate: self.clone(), id });
        let leave = Leave(self.clone(), id);
        let handle = tokio::spawn(async move {
            let _leave = leave;
            fut.await
        });
        if let Some(slot) = self.lock().live.get_mut(&id) {
            *slot = Some(handle.abort_handle());
        }
        evicted
    }
}

/// Rate-limited warnings about refused connections (see the module documentation).
#[derive(Debug)]
pub struct Refusals {
    what: &'static str,
    state: Mutex<RefusalState>,
    /// Told when an interval's first refusal goes uncounted, for [`Refusals::flush_when_due`].
    counted: tokio::sync::Notify,
}

#[derive(Debug)]
struct RefusalState {
    /// Start of the interval in which a line was logged.
    since: Option<Instant>,
    /// Lines logged in it.
    logged: u32,
    /// Refusals not logged in that interval.
    quiet: u64,
    /// The latest of those.
    latest: String,
}

/// The interval of [`Refusals`].
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);
/// Refusals logged one by one in an interval before the rest are counted.
pub const REFUSAL_BURST: u32 = 5;

impl Refusals {
    /// Refusals on `what` (a port or socket, named in every line).
    pub const fn new(what: &'static str) -> Refusals {
        Refusals {
            what,
            state: Mutex::new(RefusalState {
                since: None,
                logged: 0,
                quiet: 0,
                latest: String::new(),
            }),
            counted: tokio::sync::Notify::const_new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection was refused for `why`: logged now if it is one of the first
    /// [`REFUSAL_BURST`] of the interval, else counted for the summary.
    pub fn refuse(&self, why: impl Display) {
        let now = Instant::now();
        let mut s = self.lock();
        let mut summary = None;
        if s.since.is_some_and(|t| now.duration_since(t) < REFUSAL_INTERVAL) {
            if s.logged >= REFUSAL_BURST {
                s.quiet += 1;
                s.latest = why.to_string();
                if s.quiet == 1 {
                    self.counted.notify_one();
                }
                return;
            }
        } else {
            summary = self.take_summary(&mut s);
            s.since = Some(now);
            s.logged = 0;
        }
        s.logged += 1;
        drop(s);
        if let Some(line) = summary {
            warn!("{line}");
        }
        warn!("{}: {why}", self.what);
    }

    /// Logs the summary of an interval that is over as of `now`.
    fn flush_at(&self, now: Instant) {
        let mut s = self.lock();
        if s.since.is_some_and(|t| now.saturating_duration_since(t) >= REFUSAL_INTERVAL) {
            let summary = self.take_summary(&mut s);
            s.since = None;
            s.logged = 0;
            drop(s);
            if let Some(line) = summary {
                warn!("{line}");
            }
        }
    }

    /// Logs each interval's summary once the interval is over, for as long as it runs (a
    /// daemon's task): the end of a flood is reported even if nothing follows it. It sleeps
    /// while nothing is counted, so that an idle daemon has no timer to wake for.
    pub async fn flush_when_due(&self) {
        loop {
            let due = {
                let s = self.lock();
                s.since.filter(|_| s.quiet > 0).map(|t| t + REFUSAL_INTERVAL)
            };
            match due {
                Some(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    // As of the interval's end, which the timer's clock says has come.
                    self.flush_at(at.max(Instant::now()));
                }
                None => self.counted.notified().await,
            }
        }
    }

    fn take_summary(&self, s: &mut RefusalState) -> Option<String> {
        let n = std::mem::take(&mut s.quiet);
        let latest = std::mem::take(&mut s.latest);
        let secs = s.since?.elapsed().as_secs().max(REFUSAL_INTERVAL.as_secs());
        (n > 0).then(|| {
            format!(
                "{}: refused {n} more connection{} in the last {secs} s (the latest: {latest})",
                self.what,
                if n == 1 { "" } else { "s" }
            )
        })
    }

    /// Refusals counted and not yet logged (for tests).
    pub fn unlogged(&self) -> u64 {
        self.lock().quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_pending_connection_makes_room() {
        let gate = Pending::new(2);
        let mut alive = Vec::new();
        for i in 0..3 {
            // Each task holds a sender until it ends; an aborted task drops it.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            alive.push(rx);
            let evicted = gate.spawn(move |_place| async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            });
            assert_eq!(evicted, i == 2, "connection {i}");
        }
        assert_eq!(gate.len(), 2);
        let first = alive.remove(0);
        let ended = tokio::time::timeout(Duration::from_secs(5), first).await;
        assert!(matches!(ended, Ok(Err(_))), "the oldest was ended");
        for mut rx in alive {
            assert!(matches!(rx.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)));
        }
    }

    #[tokio::test]
    async fn an_admitted_connection_leaves_the_count() {
        let gate = Pending::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        gate.spawn(move |place| async move {
            place.admit();
            let _ = rx.await;
        });
        tokio::task::yield_now().await;
        assert!(gate.is_empty());
        // A new connection does not end the admitted one.
        assert!(!gate.spawn(|_| async {}));
        assert!(!tx.is_closed());
    }

    #[test]
    fn refusals_are_counted_within_an_interval() {
        let r = Refusals::new("test port");
        for i in 0..REFUSAL_BURST {
            r.refuse(format_args!("logged {i}"));
        }
        assert_eq!(r.unlogged(), 0);
        for i in 0..100 {
            r.refuse(format_args!("number {i}"));
        }
        assert_eq!(r.unlogged(), 100);
        r.flush_at(Instant::now()); // the interval is not over: nothing yet
        assert_eq!(r.unlogged(), 100);
        let mut s = r.lock();
        assert_eq!(
            r.take_summary(&mut s).unwrap(),
            "test port: refused 100 more connections in the last 10 s (the latest: number 99)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_summed_up_when_its_interval_ends() {
        static R: Refusals = Refusals::new("test port");
        let flusher = tokio::spawn(R.flush_when_due());
        for i in 0..REFUSAL_BURST + 3 {
            R.refuse(format_args!("number {i}"));
        }
        assert_eq!(R.unlogged(), 3);
        tokio::time::sleep(REFUSAL_INTERVAL - Duration::from_secs(1)).await;
        assert_eq!(R.unlogged(), 3);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(R.unlogged(), 0);
        flusher.abort();
    }
}
