//! The kernel's process events (netlink proc connector), filtered in the kernel to a set of
//! processes: how a slave learns at once that one of its processes forked, exec'd or ended,
//! with the exact exit status, however short the child's life.
//!
//! The connector sends every event of the machine to every listener. Unfiltered, a
//! thousand slaves on one host (a virtual cluster) are each woken for every fork of every
//! other: 16 ms a fork with 1024 listeners, against 0.4 ms with none (on a loaded 2-core
//! machine). So each socket carries a classic BPF filter ([`Events::watch`]) that keeps only
//! events whose process (for a fork: the parent) is in the watched set, a chain of
//! comparisons the kernel runs before queueing anything: 1.6 ms a fork with 1024 filtered
//! listeners, and nobody woken for another's processes.
//!
//! Slaves sharing one kernel can share one subscription instead ([`hub`], and
//! [`Events::through_hub`]): the kernel then runs one filter per event, not one per slave.
//!
//! Subscribing needs `CAP_NET_ADMIN`; without it [`Events::open`] fails and the caller looks
//! at `/proc` instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

pub mod hub;
mod kfilter;

/// One process event of a watched process (host pids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// `parent` made a new process (not a thread) `child`.
    Fork {
        /// The forking process (its thread group).
        parent: i32,
        /// The new process.
        child: i32,
    },
    /// Process `pid` exec'd a new program.
    Exec {
        /// The process.
        pid: i32,
    },
    /// Process `pid`, a child of `parent`, ended with wait status `status`.
    Exit {
        /// The process.
        pid: i32,
        /// Its parent when it ended.
        parent: i32,
        /// Its wait status (`WIFEXITED`...).
        status: i32,
    },
}

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// Bytes of `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// Bytes of `struct cn_msg` before its data.
const CN_MSG_HDR: usize = 20;
/// Where `struct proc_event`'s `event_data` starts (after `what`, `cpu`, `timestamp_ns`).
const EVENT_DATA: usize = 16;
/// Most processes a filter names (classic BPF programs have at most 4096 instructions, and
/// each process takes four).
pub const MAX_WATCHED: usize = 1000;

/// Where a slave's process events come from: its own subscription, or a hub shared by the
/// slaves of its machine ([`hub`]), left for a subscription of its own if the hub goes.
#[derive(Debug)]
pub struct Events {
    source: std::sync::RwLock<Source>,
    /// The latest watched set, for a subscription that replaces a hub.
    watched: std::sync::Mutex<Vec<i32>>,
    /// The latest set sent to a hub that filters in the kernel (without the processes
    /// started here).
    sent: std::sync::Mutex<Vec<i32>>,
    /// The hub's kernel filter map, where a newly watched pid goes at once: the set sent to
    /// the hub is read a moment later, and the kernel would drop the events in between.
    map: Option<kfilter::Map>,
}

#[derive(Debug)]
enum Source {
    Own(Netlink),
    Hub(OwnedFd),
}

impl Events {
    /// Subscribes to the process events, watching no process yet.
    pub fn open() -> std::io::Result<Events> {
        Ok(Events::from(Source::Own(Netlink::open()?)))
    }

    /// Takes the events from the hub named `path` ([`hub::Hub::start`]), watching no
    /// process yet.
    pub fn through_hub(path: &std::path::Path) -> std::io::Result<Events> {
        let fd = hub::connect(path)?;
        hub::send_set(&fd, &[])?;
        let map = hub::take_hello(&fd);
        Ok(Events { map, ..Events::from(Source::Hub(fd)) })
    }

    fn from(source: Source) -> Events {
        Events {
            source: std::sync::RwLock::new(source),
            watched: Default::default(),
            sent: Default::default(),
            map: None,
        }
    }

    /// Whether the events come from a hub (it has not gone).
    pub fn shared(&self) -> bool {
        matches!(*self.source.read().unwrap_or_else(|e| e.into_inner()), Source::Hub(_))
    }

    /// Keeps only the events of `pids` and `started` (for a fork, of the parent; for an exit,
    /// of the process or its parent), replacing the set. With more than [`MAX_WATCHED`] pids,
    /// nothing passes. `started` are the processes this one started (its children).
    ///
    /// Through a hub that filters in the kernel, this process's own pid in the set watches
    /// the processes it starts from their fork, and passes nothing it knows already: its
    /// own forks, its children's first execs (the programs it started) and their ends (it
    /// reaps them). The hub learns of those children from the kernel's map, so a set that
    /// changed by them alone is not sent. Elsewhere everything comes.
    pub fn watch(&self, pids: &[i32], started: &[i32]) -> std::io::Result<()> {
        let mut set: Vec<i32> = pids.iter().chain(started).copied().collect();
        set.sort_unstable();
        set.dedup();
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if *watched == set {
            // The filter has it already (a start is watched as it forks, then as it is
            // tracked): a hub is not woken for nothing.
            return Ok(());
        }
        let old = std::mem::replace(&mut *watched, set);
        let set = watched.as_slice();
        let source = self.source.read().unwrap_or_else(|e| e.into_inner());
        let (fd, map) = match (&*source, &self.map) {
            (Source::Own(n), _) => return n.watch(set),
            // A hub gone is seen by `next`, which then subscribes with this set.
            (Source::Hub(fd), None) => return hub::send_set(fd, set).or(Ok(())),
            (Source::Hub(fd), Some(map)) => (fd, map),
        };
        let me = std::process::id() as i32;
        let mut started = started.to_vec();
        started.sort_unstable();
        let named: Vec<i32> =
            set.iter().copied().filter(|p| *p == me || started.binary_search(p).is_err()).collect();
        for &pid in named.iter().filter(|p| old.binary_search(p).is_err()) {
            // A pid the kernel put there at its fork keeps what it said.
            match pid == me {
                true => map.put(pid, me, kfilter::Entry::Slave, false),
                false => map.put(pid, me, kfilter::Entry::Watched, true),
            }
        }
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if *sent != named {
            *sent = named;
            // A hub gone is seen by `next`, which then subscribes with the whole set.
            let _ = hub::send_set(fd, &sent);
        }
        Ok(())
    }

    /// Waits for the next events and returns the watched ones (none for other messages,
    /// such as the subscription's answer). `ENOBUFS` means events were lost (also once when
    /// a hub has gone and a subscription of this process's own replaced it).
    pub fn next(&self) -> std::io::Result<Vec<ProcEvent>> {
        {
            let source = self.source.read().unwrap_or_else(|e| e.into_inner());
            match &*source {
                Source::Own(n) => return n.next(),
                Source::Hub(fd) => match hub::recv(fd) {
                    Ok(Some(list)) => return Ok(list),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(e),
                    Ok(None) | Err(_) => {}
                },
            }
        }
        let own = Netlink::open()?;
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        own.watch(&watched)?;
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = Source::Own(own);
        Err(std::io::Error::from_raw_os_error(libc::ENOBUFS))
    }
}

/// A proc connector socket.
#[derive(Debug)]
struct Netlink(OwnedFd);

impl Netlink {
    /// Subscribes, passing nothing until [`Netlink::watch`].
    fn open() -> std::io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::PF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let events = Netlink(unsafe { OwnedFd::from_raw_fd(fd) });
        events.watch(&[])?;
        // SAFETY: all-zero is a valid sockaddr_nl; the fields are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: binds our socket to a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // From Linux 6.6 the subscription can name the events wanted: the others (ids, session,
        // name changes) are then dropped before any socket's filter runs. Where many slaves
        // share one kernel (a virtual cluster), every event runs every slave's filter.
        let typed = kernel_at_least(6, 6);
        let data = if typed { 8 } else { 4 };
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + data);
        let len = (NLMSG_HDR + CN_MSG_HDR + data) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&(data as u16).to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        if typed {
            let wanted = PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_EXIT;
            msg.extend_from_slice(&wanted.to_ne_bytes());
        }
        // SAFETY: sends a buffer we own.
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(events)
    }

    /// Replaces the socket's filter with one keeping the events of `pids` ([`filter`]).
    fn watch(&self, pids: &[i32]) -> std::io::Result<()> {
        let pids = if pids.len() > MAX_WATCHED { &[][..] } else { pids };
        self.attach(&mut filter(pids))
    }

    /// Attaches classic BPF program `prog`, replacing any filter.
    fn attach(&self, prog: &mut [libc::sock_filter]) -> std::io::Result<()> {
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
        // SAFETY: attaches a filter from a valid sock_fprog whose program outlives the call.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Lets up to `bytes` of events wait to be read (the kernel counts each datagram's whole
    /// buffer): past the default (about 200 events) a busy machine drops events, and every
    /// slave told so looks at all of its processes in `/proc`. Beyond `rmem_max` only with
    /// `CAP_NET_ADMIN`, which a subscriber has.
    fn reserve(&self, bytes: usize) {
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&self.0, sockopt::RcvBufForce, &bytes).is_err() {
            let _ = setsockopt(&self.0, sockopt::RcvBuf, &bytes);
        }
    }

    /// Replaces the filter with one passing every process's events, all but threads' (the
    /// hub's).
    fn watch_all(&self) -> std::io::Result<()> {
        self.attach(&mut processes_only())
    }

    /// Waits for the next datagram and returns the events in it that pass the filter (none
    /// for other messages). `ENOBUFS` means events were lost.
    fn next(&self) -> std::io::Result<Vec<ProcEvent>> {
        let mut buf = [0u8; 4096];
        match self.recv(&mut buf, 0)? {
            Some(n) => Ok(parse(&buf[..n])),
            None => Ok(Vec::new()),
        }
    }

    /// [`Netlink::next`], then the events of up to `more` datagrams already waiting: one
    /// wake-up for a burst (the kernel sends each event on its own).
    fn drain(&self, more: usize) -> std::io::Result<Vec<ProcEvent>> {
        let mut events = self.next()?;
        let mut buf = [0u8; 4096];
        for _ in 0..more {
            match self.recv(&mut buf, libc::MSG_DONTWAIT)? {
                Some(n) => events.extend(parse(&buf[..n])),
                None => break,
            }
        }
        Ok(events)
    }

    /// One datagram into `buf`: its length, `None` when none waits (with `MSG_DONTWAIT`).
    fn recv(&self, buf: &mut [u8], flags: i32) -> std::io::Result<Option<usize>> {
        // SAFETY: receives into a buffer we own, of the given size.
        let n =
            unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN) && flags & libc::MSG_DONTWAIT != 0 => {
                Ok(None)
            }
            e => Err(e),
        }
    }
}

/// Whether the running kernel is at least `major.minor` (from `uname`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else { return false };
    let release = u.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

// Classic BPF instructions the filters use.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JEQ_X: u16 = 0x1d; // BPF_JMP | BPF_JEQ | BPF_X
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// `v` as a big-endian load of it reads: the kernel wrote host order, loads are big-endian.
fn swap(v: u32) -> u32 {
    u32::from_be_bytes(v.to_ne_bytes())
}

/// The filter keeping the events of `pids`: an event whose process (for a fork, the
/// forking parent) is one of them, and an exit whose parent is one of them (a child that ends
/// before it is watched itself). Loads are big-endian; the kernel wrote host order, so each
/// pid is compared byte-swapped. Each comparison falls into a jump to the accept when equal.
fn filter(pids: &[i32]) -> Vec<libc::sock_filter> {
    let event = (NLMSG_HDR + CN_MSG_HDR) as u32;
    let data = event + EVENT_DATA as u32;
    let mut prog = threads_out();
    prog.reserve(4 * pids.len() + 8);
    // Jumps to resolve: (index of a JA, true for the accept, false for the drop).
    let mut jumps: Vec<(usize, bool)> = Vec::new();
    let members = |prog: &mut Vec<libc::sock_filter>, jumps: &mut Vec<(usize, bool)>, at: u32| {
        prog.push(ins(LD_W_ABS, 0, 0, at));
        for pid in pids {
            prog.push(ins(JEQ_K, 0, 1, swap(*pid as u32)));
            jumps.push((prog.len(), true));
            prog.push(ins(JA, 0, 0, 0));
        }
    };
    // The process (exec, exit) or the forking parent: the second u32 of the data.
    members(&mut prog, &mut jumps, data + 4);
    // An exit's parent (its fifth and sixth u32: parent pid and tgid).
    prog.push(ins(LD_W_ABS, 0, 0, event));
    prog.push(ins(JEQ_K, 1, 0, swap(PROC_EVENT_EXIT)));
    jumps.push((prog.len(), false));
    prog.push(ins(JA, 0, 0, 0));
    members(&mut prog, &mut jumps, data + 20);
    let drop = prog.len();
    prog.push(ins(RET_K, 0, 0, 0));
    let accept = prog.len();
    prog.push(ins(RET_K, 0, 0, 0xffff));
    for (at, to_accept) in jumps {
        let target = if to_accept { accept } else { drop };
        prog[at].k = (target - at - 1) as u32;
    }
    prog
}

/// The start of a filter that drops the events of threads (a fork making a thread, a
/// thread's end), which nobody here wants, and goes on past its end with anything else: a
/// process's threads then wake no one.
fn threads_out() -> Vec<libc::sock_filter> {
    let event = (NLMSG_HDR + CN_MSG_HDR) as u32;
    let data = event + EVENT_DATA as u32;
    // A fork's child pid and tgid are its third and fourth u32, an exit's pid and tgid its
    // first and second; they differ for a thread. (Both loads are swapped alike.)
    vec![
        ins(LD_W_ABS, 0, 0, event),
        ins(JEQ_K, 0, 4, swap(PROC_EVENT_FORK)),
        ins(LD_W_ABS, 0, 0, data + 12),
        ins(TAX, 0, 0, 0),
        ins(LD_W_ABS, 0, 0, data + 8),
        ins(JEQ_X, 6, 5, 0),
        ins(JEQ_K, 0, 5, swap(PROC_EVENT_EXIT)),
        ins(LD_W_ABS, 0, 0, data + 4),
        ins(TAX, 0, 0, 0),
        ins(LD_W_ABS, 0, 0, data),
        ins(JEQ_X, 1, 0, 0),
        ins(RET_K, 0, 0, 0),
    ]
}

/// The hub's filter: every process's events, no thread's.
fn processes_only() -> Vec<libc::sock_filter> {
    let mut prog = threads_out();
    prog.push(ins(RET_K, 0, 0, 0xffff));
    prog
}

/// The events in a datagram of netlink messages.
fn parse(mut b: &[u8]) -> Vec<ProcEvent> {
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4).map(|v| u32::from_ne_bytes(v.try_into().expect("4 bytes")))
    };
    let mut out = Vec::new();
    while let Some(len) = u32_at(b, 0) {
        let len = len as usize;
        if len < NLMSG_HDR || len > b.len() {
            break;
        }
        let msg = &b[..len];
        let ev = NLMSG_HDR + CN_MSG_HDR;
        let data = ev + EVENT_DATA;
        let field = |i: usize| u32_at(msg, data + 4 * i).map(|v| v as i32);
        let what = u32_at(msg, ev);
        let event = match what {
            Some(PROC_EVENT_FORK) => match (field(1), field(2), field(3)) {
                // A new thread shares its parent's thread group: not a process.
                (Some(parent), Some(pid), Some(tgid)) if pid == tgid => {
                    Some(ProcEvent::Fork { parent, child: pid })
                }
                _ => None,
            },
            Some(PROC_EVENT_EXEC) => field(1).map(|pid| ProcEvent::Exec { pid }),
            Some(PROC_EVENT_EXIT) => match (field(0), field(1), field(2), field(5)) {
                // The thread group's leader ends last: the process ends with it.
                (Some(pid), Some(tgid), Some(status), Some(parent)) if pid == tgid => {
                    Some(ProcEvent::Exit { pid, parent, status })
                }
                _ => None,
            },
            _ => None,
        };
        out.extend(event);
        let step = (len + 3) & !3;
        if step >= b.len() {
            break;
        }
        b = &b[step..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_release_is_read() {
        assert!(kernel_at_least(3, 0) && !kernel_at_least(999, 0));
    }

    fn msg(what: u32, fields: [u32; 4]) -> Vec<u8> {
        let len = NLMSG_HDR + CN_MSG_HDR + EVENT_DATA + 24;
        let mut m = vec![0u8; len];
        m[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        let ev = NLMSG_HDR + CN_MSG_HDR;
        m[ev..ev + 4].copy_from_slice(&what.to_ne_bytes());
        for (i, f) in fields.iter().enumerate() {
            let at = ev + EVENT_DATA + 4 * i;
            m[at..at + 4].copy_from_slice(&f.to_ne_bytes());
        }
        m
    }

    #[test]
    fn events_parse_and_threads_are_left_out() {
        let mut b = msg(PROC_EVENT_FORK, [10, 10, 11, 11]);
        b.extend(msg(PROC_EVENT_FORK, [10, 10, 12, 10]));
        let mut exit = msg(PROC_EVENT_EXIT, [11, 11, 3 << 8, 17]);
        let at = NLMSG_HDR + CN_MSG_HDR + EVENT_DATA + 20;
        exit[at..at + 4].copy_from_slice(&10u32.to_ne_bytes());
        b.extend(exit);
        b.extend(msg(PROC_EVENT_EXEC, [11, 11, 0, 0]));
        assert_eq!(
            parse(&b),
            [
                ProcEvent::Fork { parent: 10, child: 11 },
                ProcEvent::Exit { pid: 11, parent: 10, status: 3 << 8 },
                ProcEvent::Exec { pid: 11 },
            ]
        );
    }

    /// Runs classic BPF `prog` on `pkt` (the few instructions the filter uses).
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut pc, mut a, mut x) = (0usize, 0u32, 0u32);
        loop {
            let i = prog[pc];
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_be_bytes(pkt[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                TAX => {
                    x = a;
                    pc += 1;
                }
                JEQ_K => pc += 1 + if a == i.k { i.jt as usize } else { i.jf as usize },
                JEQ_X => pc += 1 + if a == x { i.jt as usize } else { i.jf as usize },
                JA => pc += 1 + i.k as usize,
                RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_keeps_watched_processes_and_their_exiting_children() {
        let pids: Vec<i32> = (100..400).collect();
        let prog = filter(&pids);
        assert!(prog.len() <= 4096);
        let keep = |m: Vec<u8>| run(&prog, &m) != 0;
        assert!(keep(msg(PROC_EVENT_FORK, [250, 250, 900, 900])), "a watched parent forks");
        assert!(!keep(msg(PROC_EVENT_FORK, [900, 900, 901, 901])), "another's fork");
        assert!(keep(msg(PROC_EVENT_EXEC, [399, 399, 0, 0])), "a watched exec");
        assert!(!keep(msg(PROC_EVENT_EXEC, [400, 400, 0, 0])), "another's exec");
        let exit = |pid: u32, parent: u32| {
            let mut m = msg(PROC_EVENT_EXIT, [pid, pid, 0, 0]);
            let at = NLMSG_HDR + CN_MSG_HDR + EVENT_DATA + 20;
            m[at..at + 4].copy_from_slice(&parent.to_ne_bytes());
            m
        };
        assert!(keep(exit(100, 1)), "a watched exit");
        assert!(keep(exit(900, 300)), "the exit of a watched process's child");
        assert!(!keep(exit(900, 901)), "another's exit");
        assert!(!keep(msg(PROC_EVENT_FORK, [5, 5, 6, 6])) && filter(&[]).len() == 19);
        assert!(!keep(msg(PROC_EVENT_FORK, [250, 250, 901, 900])), "a watched process's thread");
        let mut thread_end = exit(100, 1);
        thread_end[NLMSG_HDR + CN_MSG_HDR + EVENT_DATA..][..4]
            .copy_from_slice(&101u32.to_ne_bytes());
        assert!(!keep(thread_end), "a watched process's thread ends");
    }

    #[test]
    fn the_hub_s_filter_keeps_every_process_s_events_and_no_thread_s() {
        let prog = processes_only();
        let keep = |m: Vec<u8>| run(&prog, &m) != 0;
        assert!(keep(msg(PROC_EVENT_FORK, [900, 900, 901, 901])), "a fork");
        assert!(!keep(msg(PROC_EVENT_FORK, [900, 900, 902, 900])), "a new thread");
        assert!(keep(msg(PROC_EVENT_EXEC, [901, 901, 0, 0])), "an exec");
        assert!(keep(msg(PROC_EVENT_EXIT, [901, 901, 0, 0])), "a process's end");
        assert!(!keep(msg(PROC_EVENT_EXIT, [902, 900, 0, 0])), "a thread's end");
        assert!(keep(msg(0, [0, 0, 0, 0])), "the subscription's answer");
    }
}
