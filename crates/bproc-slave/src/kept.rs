//! Tree connections kept open between launches. A plain launch's part (no files to fetch,
//! no process image) needs nothing back from the parent, and a vector fork's needs only its
//! image (the child says when its subtree has it), so the parent keeps the connection for
//! its next launch to the same child, and the child waits on it for the next part. A launch
//! then costs each tree edge one write instead of a TCP connection's set-up and teardown
//! (992 of them for 1024 nodes: 3% of the machine's CPU for such a launch on one machine,
//! and a round trip for each tree level on a real network; a vector fork to 64 nodes took
//! 8% less CPU).
//!
//! The parent reuses a connection only while it has been idle less than [`REUSE_FOR`], and
//! closes it then; the child waits [`WAIT_FOR`], twice as long. A child that stops waiting
//! (then, or when [`MAX_WAITING`] connections wait already) first sends the parent a byte
//! ([`retire`]) and still takes, for [`RETIRE_GRACE`], the parts already on their way: a
//! parent takes a connection with anything to read, or ended (its child's slave restarted),
//! as closed, and sends the part over a new one. So no part is written into a connection
//! its child has closed, but for a slave that dies at that moment.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a parent reuses an idle connection.
pub(crate) const REUSE_FOR: Duration = Duration::from_secs(30);

/// How long a child waits on a connection for the next part.
pub(crate) const WAIT_FOR: Duration = Duration::from_secs(60);

/// Idle connections a parent keeps to one child (more are open only while launches overlap).
const PER_CHILD: usize = 2;

/// Connections a child waits on at once; beyond them, a part's connection retires after it.
const MAX_WAITING: usize = 1024;

/// How long a child that retired a connection still takes the parts on their way.
pub(crate) const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Tells the parent that the child waits on connection `s` no more, returning until when it
/// still takes the parts already sent (the parent reads this as the connection's end).
pub(crate) async fn retire(s: &mut TcpStream) -> Instant {
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(&[0]).await;
    Instant::now() + RETIRE_GRACE
}

/// A parent's idle connections to its children, by the child's tree port.
#[derive(Clone, Default)]
pub(crate) struct Kept(Arc<Mutex<Pool>>);

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddrV4, Vec<(TcpStream, Instant)>>,
    /// Whether a task closes the connections that have been idle too long.
    sweeping: bool,
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

impl Kept {
    /// A connection to `addr` kept from an earlier launch, when one is still open.
    pub(crate) fn take(&self, addr: SocketAddrV4) -> Option<TcpStream> {
        let mut pool = lock(&self.0);
        let conns = pool.idle.get_mut(&addr)?;
        let mut found = None;
        while let Some((s, since)) = conns.pop() {
            if reusable(since) && still_open(&s) {
                found = Some(s);
                break;
            }
        }
        if conns.is_empty() {
            pool.idle.remove(&addr);
        }
        found
    }

    /// Keeps `s`, just used for a part to `addr`, for a later launch.
    pub(crate) fn put(&self, addr: SocketAddrV4, s: TcpStream) {
        let mut pool = lock(&self.0);
        let conns = pool.idle.entry(addr).or_default();
        if conns.len() >= PER_CHILD {
            return;
        }
        conns.push((s, Instant::now()));
        if !pool.sweeping {
            pool.sweeping = true;
            tokio::spawn(sweep(self.0.clone()));
        }
    }

    /// How many connections are kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).idle.values().map(Vec::len).sum()
    }
}

/// Whether a connection kept at `since` may still carry a part.
fn reusable(since: Instant) -> bool {
    since.elapsed() < REUSE_FOR
}

/// Closes connections once they have been idle [`REUSE_FOR`], sleeping until the oldest
/// one's time, while any is kept (an idle slave has nothing to wake for).
async fn sweep(pool: Arc<Mutex<Pool>>) {
    loop {
        let due = {
            let mut p = lock(&pool);
            p.idle.retain(|_, conns| {
                conns.retain(|(_, since)| reusable(*since));
                !conns.is_empty()
            });
            match p.idle.values().flatten().map(|(_, since)| *since).min() {
                Some(oldest) => oldest + REUSE_FOR,
                None => {
                    p.sweeping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(due).await;
    }
}

/// Whether the child still waits on `s`: anything to read is its end, or its word that it
/// retires the connection ([`retire`]), or an error.
fn still_open(s: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    let peeked = recv(s.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    matches!(peeked, Err(nix::errno::Errno::EAGAIN))
}

/// A child's place among the connections waiting for a next part; `None` when
/// [`MAX_WAITING`] already wait.
pub(crate) struct Waiting(());

static WAITING: AtomicUsize = AtomicUsize::new(0);

impl Waiting {
    pub(crate) fn enter() -> Option<Waiting> {
        let was = WAITING.fetch_add(1, Ordering::Relaxed);
        if was >= MAX_WAITING {
            WAITING.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiting(()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    fn v4(l: &TcpListener) -> SocketAddrV4 {
        match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not IPv4: {other}"),
        }
    }

    #[tokio::test]
    async fn an_open_connection_is_reused_and_a_closed_or_retired_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (kept, to) = (Kept::default(), v4(&l));
        let (c1, mut s1) = pair(&l).await;
        let (c2, s2) = pair(&l).await;
        let (c3, mut s3) = pair(&l).await;
        // One child closes its connection, another retires it.
        drop(s2);
        c2.readable().await.unwrap();
        retire(&mut s3).await;
        c3.readable().await.unwrap();
        // The one kept last is taken first.
        kept.put(to, c1);
        kept.put(to, c2);
        let c1 = kept.take(to).expect("the open connection, past the closed one");
        kept.put(to, c1);
        kept.put(to, c3);
        let mut taken = kept.take(to).expect("the open connection, past the retired one");
        taken.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s1.read_exact(&mut b).await.unwrap();
        assert!(kept.take(to).is_none());
        assert_eq!(kept.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_its_time() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kept = Kept::default();
        let (c, mut s) = pair(&l).await;
        kept.put(v4(&l), c);
        assert_eq!(kept.len(), 1);
        tokio::time::sleep(REUSE_FOR + Duration::from_millis(1)).await;
        // The sweep closed it: the child reads its end.
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 0);
        assert_eq!(kept.len(), 0);
        assert!(kept.take(v4(&l)).is_none());
    }

    #[test]
    fn waiting_places_are_bounded() {
        let held: Vec<_> = (0..MAX_WAITING).map_while(|_| Waiting::enter()).collect();
        assert_eq!(held.len(), MAX_WAITING);
        assert!(Waiting::enter().is_none());
        drop(held);
        assert!(Waiting::enter().is_some());
    }
}
