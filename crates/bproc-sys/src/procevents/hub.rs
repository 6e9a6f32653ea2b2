//! One subscription to the kernel's process events shared by the slaves of one machine (a
//! virtual cluster), instead of one each.
//!
//! The kernel hands every event to every subscriber and runs each one's filter: with a
//! thousand slaves on one host, a quarter of a launch's CPU went to those filters. The hub
//! subscribes once, with a filter of its own that passes the events of any slave's processes
//! (`procevents::kfilter`; where it cannot load, every process's events come), and passes each
//! event to the slaves watching its process, over a Unix `SOCK_SEQPACKET` connection each:
//!
//! - the hub's first message is one record of kind `HELLO`, carrying the descriptor of its
//!   filter's map of watched pids when it has one (`SCM_RIGHTS`): a slave puts each pid it
//!   starts watching there itself, before it sends its set;
//! - a slave sends its whole watched set as one message: a native-endian `u32` count, then
//!   as many `i32` pids (at most [`MAX_WATCHED`]; more keep nothing, as the kernel filter
//!   does);
//! - the hub sends events as messages of [`RECORD`]-byte records; a record of kind
//!   [`LOST`] says events were dropped (the hub's or the slave's queue was full).
//!
//! The hub applies the kernel filter's rule ([`super::Events::watch`]) per slave, and watches a
//! watched process's new child at once (the slave would, a moment later). The events of a
//! process no set names (a slave's sets leave out the processes it starts, which the kernel
//! watches for it from their fork) go to the slave the kernel's map names. The end of a
//! slave's own child is not sent to it: the slave reaps its children and reports their ends
//! from their wait statuses, and the event only woke it. Each batch of
//! events is read from the kernel before the slaves' new sets are taken, so an event that
//! happened after a slave sent its set is judged by that set, as with the kernel's filter
//! (the map already had the set's new pids, so the kernel passed the event).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use super::kfilter::{Entry, Kfilter, Map};
use super::{Netlink, ProcEvent, MAX_WATCHED};

/// Bytes of one event record: kind, then three `i32` fields.
pub const RECORD: usize = 16;
const FORK: u32 = 1;
const EXEC: u32 = 2;
const EXIT: u32 = 3;
/// Record kind: events were lost.
pub const LOST: u32 = 4;
/// Record kind: the hub's first message, with its kernel filter's map when it has one.
const HELLO: u32 = 5;
/// Most records in one message.
const BATCH: usize = 256;
/// Bytes of events the hub's subscription may hold unread (the kernel doubles it).
const HUB_BUFFER: usize = 16 << 20;
/// Most datagrams read after the first at one wake-up.
const DRAIN: usize = 1024;
/// Most slaves at once; later connections are closed.
const MAX_CLIENTS: usize = 16_384;

/// A running hub; dropping it stops it and closes every slave's connection.
pub struct Hub {
    wake: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Why the kernel cannot filter its events (every process's wake it), if it cannot.
    unfiltered: Option<std::io::Error>,
}

impl Hub {
    /// Why the kernel does not keep the machine's other processes' events from the hub
    /// (its filter did not load: no `CAP_BPF`), if it does not.
    pub fn unfiltered(&self) -> Option<&std::io::Error> {
        self.unfiltered.as_ref()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = nix::unistd::write(&self.wake, &[1]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Hub {
    /// Subscribes to the process events (needs `CAP_NET_ADMIN`) and serves them, on a
    /// thread of its own, at the abstract Unix socket `name` (no file: slaves with a `/tmp`
    /// of their own reach it too). Only processes of this one's user are served.
    pub fn start(name: &Path) -> std::io::Result<Hub> {
        let events = Netlink::open()?;
        let mut state = State::default();
        // Only the watched processes' events, filtered in the kernel; else every process's.
        let unfiltered = match Kfilter::attach(&events.0) {
            Ok(k) => {
                state.kernel = Some(k);
                None
            }
            Err(e) => {
                events.watch_all()?;
                Some(e)
            }
        };
        // A launch on a thousand nodes sharing this machine makes thousands of events at
        // once, and one event lost is a look at `/proc` by every slave.
        events.reserve(HUB_BUFFER);
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::bind(listener.as_raw_fd(), &address(name)?)?;
        socket::listen(&listener, socket::Backlog::new(1024)?)?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("event-hub".into())
            .spawn(move || state.run(&events, &listener, &rd))?;
        Ok(Hub { wake: wr, thread: Some(thread), unfiltered })
    }
}

/// One slave's connection.
struct Client {
    fd: OwnedFd,
    watched: Vec<i32>,
    /// The slave's pid: the ends of its own children are not sent to it, since it reaps
    /// them (a thousand slaves' event threads woke once more per launched rank for them).
    pid: i32,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, Client>,
    /// Each client by its slave's pid (the owner a kernel filter's entry names).
    by_pid: HashMap<i32, u64>,
    /// Which clients watch each pid.
    watchers: HashMap<i32, Vec<u64>>,
    /// Clients whose events were dropped since the last they were sent.
    lost: std::collections::HashSet<u64>,
    next_id: u64,
    /// Where a client's set is read.
    buf: Vec<u8>,
    /// The kernel's filter, which passes the events of the pids in `watchers` (and of the
    /// children they fork): `None` where it could not load, and every process's come.
    kernel: Option<Kfilter>,
}

/// Epoll keys of the listener and the stop pipe (clients are 2 and up).
const LISTENER: u64 = 0;
const STOP: u64 = 1;

impl State {
    fn run(&mut self, events: &Netlink, listener: &OwnedFd, stop: &OwnedFd) {
        let Ok(epoll) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else { return };
        let add =
            |fd: BorrowedFd<'_>, key: u64| epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, key));
        if add(listener.as_fd(), LISTENER).is_err() || add(stop.as_fd(), STOP).is_err() {
            return;
        }
        let netlink = events.0.as_fd();
        loop {
            let mut fds = [
                nix::poll::PollFd::new(netlink, nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(epoll.0.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
            let kernel = fds[0].revents().is_some_and(|r| !r.is_empty());
            // The kernel's batch first, then the sets sent before its events happened.
            let got = if kernel { Some(events.drain(DRAIN)) } else { None };
            if !self.serve_clients(&epoll, listener) {
                return;
            }
            match got {
                Some(Ok(list)) => self.forward(&list),
                Some(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    self.lost.extend(self.clients.keys());
                    self.forward(&[]);
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(_)) => return,
                None => {}
            }
        }
    }

    /// Takes new connections and the sets sent; false when asked to stop. A connection
    /// accepted here is looked at again at once: a set sent on it may come before events
    /// already read.
    fn serve_clients(&mut self, epoll: &Epoll, listener: &OwnedFd) -> bool {
        let mut ready = [EpollEvent::empty(); 64];
        loop {
            let n = match epoll.wait(&mut ready, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return false,
            };
            let mut accepted = false;
            for ev in &ready[..n] {
                match ev.data() {
                    STOP => return false,
                    LISTENER => accepted |= self.accept(epoll, listener),
                    id => self.read_set(epoll, id),
                }
            }
            if n < ready.len() && !accepted {
                return true;
            }
        }
    }

    /// Accepts the waiting connections; whether there were any.
    fn accept(&mut self, epoll: &Epoll, listener: &OwnedFd) -> bool {
        let mut any = false;
        use std::os::fd::FromRawFd;
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        while let Ok(fd) = socket::accept4(listener.as_raw_fd(), flags) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Anyone may reach an abstract socket: events are for this user's slaves only.
            let peer = socket::getsockopt(&fd, socket::sockopt::PeerCredentials);
            let pid = match peer {
                Ok(p) if p.uid() == nix::unistd::geteuid().as_raw() => p.pid(),
                _ => continue,
            };
            if self.clients.len() >= MAX_CLIENTS {
                continue;
            }
            self.next_id += 1;
            let id = self.next_id + STOP;
            if epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, id)).is_ok() {
                hello(&fd, self.kernel.as_ref().map(|k| k.map.fd()));
                self.clients.insert(id, Client { fd, watched: Vec::new(), pid });
                self.by_pid.insert(pid, id);
                any = true;
            }
        }
        any
    }

    /// Reads client `id`'s latest set (closing it when it has gone).
    fn read_set(&mut self, epoll: &Epoll, id: u64) {
        self.buf.resize(4 * MAX_WATCHED + 8, 0);
        let mut latest = None;
        let gone = loop {
            let Some(c) = self.clients.get(&id) else { return };
            match socket::recv(c.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break true,
                // A set too large (cut short) or malformed keeps nothing.
                Ok(n) => latest = Some(pids_of(&self.buf[..n]).unwrap_or_default()),
                Err(nix::Error::EAGAIN) => break false,
                Err(nix::Error::EINTR) => {}
                Err(_) => break true,
            }
        };
        if let Some(set) = latest {
            self.set_watched(id, set);
        }
        if gone {
            self.set_watched(id, Vec::new());
            self.lost.remove(&id);
            if let Some(c) = self.clients.remove(&id) {
                self.by_pid.retain(|_, i| *i != id);
                let _ = epoll.delete(c.fd.as_fd());
            }
        }
    }

    fn set_watched(&mut self, id: u64, set: Vec<i32>) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        let mut unwatched = Vec::new();
        for pid in std::mem::replace(&mut c.watched, set) {
            if let Some(w) = self.watchers.get_mut(&pid) {
                w.retain(|x| *x != id);
                if w.is_empty() {
                    self.watchers.remove(&pid);
                    unwatched.push(pid);
                }
            }
        }
        for &pid in &c.watched {
            let w = self.watchers.entry(pid).or_default();
            if let (true, Some(k)) = (w.is_empty(), &self.kernel) {
                // The slave put it there first, as what it is.
                k.map.put(pid, c.pid, Entry::Watched, true);
            }
            if !w.contains(&id) {
                w.push(id);
            }
        }
        // The kernel's filter lets go of what no one watches now.
        for pid in unwatched {
            if let (false, Some(k)) = (self.watchers.contains_key(&pid), &self.kernel) {
                k.map.forget(pid);
            }
        }
    }

    /// The client whose slave the kernel's filter watches `pid` for, if it does.
    fn owner_of(&self, pid: i32) -> Option<u64> {
        let owner = self.kernel.as_ref()?.map.owner(pid)?;
        self.by_pid.get(&owner).copied()
    }

    /// Sends each client the events of its watched processes (and a lost mark first when
    /// some were dropped).
    fn forward(&mut self, list: &[ProcEvent]) {
        let mut out: HashMap<u64, Vec<[u8; RECORD]>> = HashMap::new();
        for e in list {
            let (pid, parent) = match *e {
                ProcEvent::Fork { parent, .. } => (parent, None),
                ProcEvent::Exec { pid } => (pid, None),
                ProcEvent::Exit { pid, parent, .. } => (pid, Some(parent)),
            };
            let mut to: Vec<u64> = self.watchers.get(&pid).cloned().unwrap_or_default();
            if to.is_empty() {
                // A process its slave started, which the kernel watches for it from its fork
                // (its set leaves them out), or a child of one: the map names the slave.
                let key = match *e {
                    ProcEvent::Fork { child, .. } => child,
                    _ => pid,
                };
                to.extend(self.owner_of(key).or_else(|| parent.and_then(|p| self.owner_of(p))));
            }
            for id in parent.and_then(|p| self.watchers.get(&p)).into_iter().flatten() {
                if !to.contains(id) {
                    to.push(*id);
                }
            }
            if let Some(parent) = parent {
                to.retain(|id| self.clients.get(id).is_none_or(|c| c.pid != parent));
            }
            for id in to {
                if let ProcEvent::Fork { child, .. } = *e {
                    // Its slave watches it once it hears of it: its own events from now.
                    let w = self.watchers.entry(child).or_default();
                    if let (false, Some(c)) = (w.contains(&id), self.clients.get_mut(&id)) {
                        w.push(id);
                        c.watched.push(child);
                    }
                }
                out.entry(id).or_default().push(encode(e));
            }
            if let (ProcEvent::Exit { pid, .. }, Some(k)) = (*e, &self.kernel) {
                // Watched by the kernel's filter alone (a watched parent's child that no
                // slave took): its pid may be reused by anyone.
                if !self.watchers.contains_key(&pid) {
                    k.map.forget(pid);
                }
            }
        }
        for id in self.lost.iter() {
            out.entry(*id).or_default();
        }
        for (id, records) in out {
            let Some(c) = self.clients.get(&id) else { continue };
            let mut msgs: Vec<Vec<u8>> = Vec::new();
            if self.lost.remove(&id) {
                msgs.push(lost_record().to_vec());
            }
            for part in records.chunks(BATCH) {
                msgs.push(part.concat());
            }
            for m in msgs {
                let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                if socket::send(c.fd.as_raw_fd(), &m, flags).is_err() {
                    // A full queue (or a slave gone, seen when its connection is read).
                    self.lost.insert(id);
                    break;
                }
            }
        }
    }
}

/// A new slave's first message: the kernel filter's map (its descriptor passed along),
/// when there is one, so that the slave's new pids pass from the moment it watches them.
fn hello(fd: &OwnedFd, map: Option<BorrowedFd<'_>>) {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&HELLO.to_ne_bytes());
    let iov = [std::io::IoSlice::new(&r)];
    let fds = map.map(|m| [m.as_raw_fd()]);
    let cmsg: Vec<socket::ControlMessage<'_>> =
        fds.as_ref().map(|f| socket::ControlMessage::ScmRights(f)).into_iter().collect();
    // A slave gone already is seen when its connection is read.
    let _ = socket::sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None);
}

/// A slave's side of [`hello`]: the map, if the hub sent one within a second (a hub without
/// one sends none; one that has not answered yet only keeps the slave's new pids waiting for
/// its set).
pub(super) fn take_hello(fd: &OwnedFd) -> Option<Map> {
    use std::os::fd::FromRawFd;
    let mut ready = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    if !matches!(nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(1000u16)), Ok(1)) {
        return None;
    }
    let mut r = [0u8; RECORD];
    let mut iov = [std::io::IoSliceMut::new(&mut r)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let mut map = None;
    for c in msg.cmsgs().ok()? {
        if let socket::ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: a descriptor the kernel just installed for this process.
                let f = unsafe { OwnedFd::from_raw_fd(f) };
                map.get_or_insert(Map::from_fd(f));
            }
        }
    }
    map
}

fn lost_record() -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&LOST.to_ne_bytes());
    r
}

fn encode(e: &ProcEvent) -> [u8; RECORD] {
    let (kind, a, b, c) = match *e {
        ProcEvent::Fork { parent, child } => (FORK, parent, child, 0),
        ProcEvent::Exec { pid } => (EXEC, pid, 0, 0),
        ProcEvent::Exit { pid, parent, status } => (EXIT, pid, parent, status),
    };
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&kind.to_ne_bytes());
    r[4..8].copy_from_slice(&a.to_ne_bytes());
    r[8..12].copy_from_slice(&b.to_ne_bytes());
    r[12..].copy_from_slice(&c.to_ne_bytes());
    r
}

/// The pids of a set message: their count, then each (`None` if the count does not match).
fn pids_of(b: &[u8]) -> Option<Vec<i32>> {
    let count = u32::from_ne_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let pids = &b[4..];
    if count > MAX_WATCHED || pids.len() != 4 * count {
        return None;
    }
    Some(pids.chunks_exact(4).map(|p| i32::from_ne_bytes(p.try_into().expect("4 bytes"))).collect())
}

/// What a message from the hub says: events, or that some were lost.
pub(super) fn decode(b: &[u8]) -> Result<Vec<ProcEvent>, std::io::Error> {
    let mut out = Vec::with_capacity(b.len() / RECORD);
    for r in b.chunks_exact(RECORD) {
        let f = |i: usize| i32::from_ne_bytes(r[i..i + 4].try_into().expect("4 bytes"));
        match f(0) as u32 {
            FORK => out.push(ProcEvent::Fork { parent: f(4), child: f(8) }),
            EXEC => out.push(ProcEvent::Exec { pid: f(4) }),
            EXIT => out.push(ProcEvent::Exit { pid: f(4), parent: f(8), status: f(12) }),
            LOST => return Err(std::io::Error::from_raw_os_error(nix::libc::ENOBUFS)),
            _ => {}
        }
    }
    Ok(out)
}

/// The abstract socket address named `name`.
fn address(name: &Path) -> std::io::Result<UnixAddr> {
    use std::os::unix::ffi::OsStrExt;
    Ok(UnixAddr::new_abstract(name.as_os_str().as_bytes())?)
}

/// A slave's connection to the hub named `name`.
pub(super) fn connect(name: &Path) -> std::io::Result<OwnedFd> {
    let fd =
        socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    socket::connect(fd.as_raw_fd(), &address(name)?)?;
    Ok(fd)
}

/// Sends the watched set.
pub(super) fn send_set(fd: &OwnedFd, pids: &[i32]) -> std::io::Result<()> {
    let pids = if pids.len() > MAX_WATCHED { &[][..] } else { pids };
    let mut msg = Vec::with_capacity(4 + 4 * pids.len());
    msg.extend_from_slice(&(pids.len() as u32).to_ne_bytes());
    msg.extend(pids.iter().flat_map(|p| p.to_ne_bytes()));
    socket::send(fd.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL)?;
    Ok(())
}

/// Waits for the next message: `Ok(None)` when the hub has gone.
pub(super) fn recv(fd: &OwnedFd) -> std::io::Result<Option<Vec<ProcEvent>>> {
    let mut buf = vec![0u8; RECORD * BATCH];
    loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return Ok(None),
            Ok(n) => return decode(&buf[..n]).map(Some),
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECONNRESET) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procevents::Events;

    #[test]
    fn records_round_trip_and_lost_is_enobufs() {
        let list = [
            ProcEvent::Fork { parent: 10, child: 11 },
            ProcEvent::Exec { pid: 11 },
            ProcEvent::Exit { pid: 11, parent: 10, status: 3 << 8 },
        ];
        let b: Vec<u8> = list.iter().flat_map(encode).collect();
        assert_eq!(decode(&b).unwrap(), list);
        let mut lost = lost_record().to_vec();
        lost.extend(&b);
        assert_eq!(decode(&lost).unwrap_err().raw_os_error(), Some(nix::libc::ENOBUFS));
    }

    type Next = std::io::Result<Vec<ProcEvent>>;

    /// What a watcher reads, on a thread of its own.
    fn reader(events: &std::sync::Arc<Events>) -> std::sync::mpsc::Receiver<Next> {
        let (tx, rx) = std::sync::mpsc::channel();
        let e = events.clone();
        std::thread::spawn(move || loop {
            if tx.send(e.next()).is_err() {
                return;
            }
        });
        rx
    }

    /// The events read within 10 s, until `done` says they hold what is awaited; and whether
    /// some were said lost.
    fn gather(
        rx: &std::sync::mpsc::Receiver<Next>,
        mut done: impl FnMut(&[ProcEvent], bool) -> bool,
    ) -> (Vec<ProcEvent>, bool) {
        let (mut got, mut lost) = (Vec::new(), false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(&got, lost) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(list)) => got.extend(list),
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => lost = true,
                Ok(Err(e)) => panic!("events: {e}"),
                Err(_) => break,
            }
        }
        (got, lost)
    }

    fn ended(got: &[ProcEvent], child: i32, parent: i32, code: i32) -> bool {
        got.contains(&ProcEvent::Exit { pid: child, parent, status: code << 8 })
    }

    #[test]
    fn a_hub_passes_a_watchers_events_and_a_watcher_outlives_it() {
        let dir = std::env::temp_dir().join(format!("bproc-hub-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.sock");
        let hub = match Hub::start(&path) {
            Ok(h) => h,
            Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => {
                eprintln!("SKIPPED: no process events here ({e}; needs CAP_NET_ADMIN)");
                return;
            }
            Err(e) => panic!("the hub did not start: {e}"),
        };
        let events = std::sync::Arc::new(Events::through_hub(&path).unwrap());
        let rx = reader(&events);
        assert!(events.shared());
        let me = std::process::id() as i32;
        events.watch(&[me], &[]).unwrap();
        // Children whose own child ends with `code` while they wait: the grandchildren's
        // forks and ends come, nothing of the children's own but their forks (this process
        // started them and reaps them). The hub learns of the first from the watcher's set,
        // of the second from the kernel's map.
        let child = |script: &str| {
            std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut first = child("read x; /bin/sh -c 'exit 3'; read x; exit 5");
        let first_pid = first.id() as i32;
        events.watch(&[me, first_pid], &[]).unwrap();
        let mut first_in = first.stdin.take().unwrap();
        std::io::Write::write_all(&mut first_in, b"go\n").unwrap();
        let mut second = child("/bin/sh -c 'exit 6'; read x; exit 5");
        let second_pid = second.id() as i32;
        let grandchild = |g: &[ProcEvent], of: i32| {
            g.iter().find_map(|e| match *e {
                ProcEvent::Fork { parent, child } if parent == of => Some(child),
                _ => None,
            })
        };
        let both = |g: &[ProcEvent], _| {
            let of = |p: i32, code: i32| grandchild(g, p).is_some_and(|gc| ended(g, gc, p, code));
            of(first_pid, 3) && of(second_pid, 6)
        };
        let (got, _) = gather(&rx, both);
        drop(first_in);
        drop(second.stdin.take());
        let _ = (first.wait(), second.wait());
        assert!(both(&got, false), "{got:?}");
        // No child's end, nor, where the kernel filters, its fork or first exec (the other
        // tests of this process start children too, which the hub passes on as well).
        let filtered = hub.unfiltered().is_none();
        let kids = [first_pid, second_pid];
        assert!(
            got.iter().all(|e| match *e {
                ProcEvent::Fork { parent, child } =>
                    !filtered || parent != me && !kids.contains(&child),
                ProcEvent::Exec { pid } => !filtered || !kids.contains(&pid),
                ProcEvent::Exit { pid, .. } => !kids.contains(&pid),
            }),
            "{got:?}"
        );
        // The hub goes: the watcher subscribes on its own, with its set, and says events
        // may have been lost meanwhile.
        drop(hub);
        let (_, lost) = gather(&rx, |_, lost| lost);
        assert!(lost && !events.shared());
        let mut child =
            std::process::Command::new("/bin/sh").args(["-c", "exit 4"]).spawn().unwrap();
        let pid = child.id() as i32;
        let _ = child.wait();
        let (got, _) = gather(&rx, |g, _| ended(g, pid, me, 4));
        assert!(ended(&got, pid, me, 4), "{got:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
