//! The hub's filter in the kernel: an eBPF socket filter that passes only the events of the
//! processes in a hash map the hub keeps (the union of its slaves' watched sets), so that the
//! hub is not woken for every process of the machine.
//!
//! A classic BPF filter holds at most about a thousand pids and must be replaced whole at
//! each change (thousands in a launch); a map takes one update per change, and the program
//! watches a watched process's new child itself, at its fork, before it can fork, exec or
//! end: nothing the hub would pass on is dropped while its set is on its way. Measured
//! before: an idle virtual cluster's hub, woken three times by each process anywhere on the
//! machine, made a loop of 1024 spawns of `/bin/true` take 1.3 times as long.
//!
//! Each pid in the map says what is wanted of it ([`Entry`]). A slave's own pid is there as
//! [`Entry::Slave`]: it starts its processes and reaps them, so it needs none of their forks,
//! first execs or ends, only what they do after; the kernel watches each one from its fork
//! ([`Entry::Started`], then [`Entry::Reaped`] once it has exec'd), and a launch's rank wakes
//! no one unless it forks or execs again (measured: on a virtual cluster of 1024 nodes, the
//! hub's and the slaves' event threads woke for each rank's fork and exec).
//!
//! An entry also names the slave its pid is watched for, which a new child inherits: a slave
//! need not tell the hub of the processes it starts, whose events the hub routes by the map.
//!
//! The program, for a datagram of the proc connector (one event each):
//! - a fork that makes a process (not a thread) passes if its parent is in the map, not as
//!   a slave; the child is put in the map for the parent's slave ([`Entry::Started`] if its
//!   parent is the slave, else [`Entry::Watched`]);
//! - an exec passes if its process is in the map, but for a started process's first, which
//!   makes it [`Entry::Reaped`];
//! - a process's end (not a thread's) passes if it is watched, or if its parent is in the
//!   map but as a slave; a started or reaped process leaves the map at its end;
//! - anything else is dropped.
//!
//! Loading it needs `CAP_BPF` (or root), as the subscription needs `CAP_NET_ADMIN`; where it
//! cannot load, the hub takes every process's events as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

use super::{CN_MSG_HDR, EVENT_DATA, NLMSG_HDR, PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK};

/// Most pids the map holds; the least recently used go first (only pids a slave no longer
/// watches should ever be that old).
const MAP_ENTRIES: u32 = 1 << 16;

// bpf(2) commands, map and program types.
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_MAP_DELETE_ELEM: i32 = 3;
/// Flag of an update: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// A map value's low bits: what is wanted of the pid ([`Entry`]); the rest: the pid of the
/// slave it is watched for, which the kernel copies to a watched process's new children, so
/// that the hub knows whose their events are without a word from the slave.
const STATE: i32 = 7;
const OWNER_SHIFT: u32 = 3;

/// The map's value for a pid watched as `entry` for slave `owner` (a pid is below 2^22).
fn value(owner: i32, entry: Entry) -> u32 {
    ((owner as u32) << OWNER_SHIFT) | entry as u32
}

/// What the map says of a pid (the low bits of its value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Entry {
    /// Its forks, execs and end pass.
    Watched = 1,
    /// A slave's process after its first exec: its forks and execs pass, its end does not
    /// (the slave reaps it).
    Reaped = 2,
    /// A slave: nothing of its own passes, nor its children's ends; its new children are
    /// watched from their fork as [`Entry::Started`].
    Slave = 3,
    /// A slave's new child: its forks pass, its first exec (the program the slave started)
    /// and its end do not.
    Started = 4,
}
/// `src_reg` of a 64-bit immediate load that names a map by its fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

// The instructions the program uses (class | op | source).
/// `r0 = ntohl(*(u32 *)(packet + imm))` (`BPF_LD | BPF_W | BPF_ABS`; needs the context in r6).
fn ld_abs_w(at: usize) -> Insn {
    insn(0x20, 0, 0, 0, at as i32)
}
/// `r0 = htobe32(r0)`: undoes the load's swap, so r0 holds the field as the kernel wrote it.
fn swap_r0() -> Insn {
    insn(0xdc, 0, 0, 0, 32)
}
/// `dst = src` (64 bits).
fn mov(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
/// `dst = imm` (64 bits).
fn mov_k(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
/// `dst += imm` (64 bits).
fn add_k(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
/// `*(u32 *)(dst + off) = src`.
fn store_w(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0)
}
/// `dst &= imm` (64 bits; `imm` sign-extended).
fn and_k(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
/// `dst |= imm` (64 bits).
fn or_k(dst: u8, imm: i32) -> Insn {
    insn(0x47, dst, 0, 0, imm)
}
/// `dst = *(u32 *)(src + off)`.
fn load_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// `if (u32)dst == imm goto +off`.
fn jeq32_k(dst: u8, imm: u32, off: i16) -> Insn {
    insn(0x16, dst, 0, off, imm as i32)
}
/// `if dst == 0 goto +off` (64 bits: a pointer's null check).
fn jeq_null(dst: u8, off: i16) -> Insn {
    insn(0x15, dst, 0, off, 0)
}
/// `if (u32)dst != imm goto +off` (32 bits: an immediate is sign-extended to 64).
fn jne32_k(dst: u8, imm: u32, off: i16) -> Insn {
    insn(0x56, dst, 0, off, imm as i32)
}
/// `if dst != src goto +off`.
fn jne(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x5d, dst, src, off, 0)
}
/// `goto +off`.
fn ja(off: i16) -> Insn {
    insn(0x05, 0, 0, off, 0)
}
fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `dst = map` (two instructions: a 64-bit immediate naming the map's fd).
fn ld_map(dst: u8, map: i32) -> [Insn; 2] {
    [insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map), Insn::default()]
}

/// A program being written, with its forward jumps to the accept and drop ends.
struct Prog {
    insns: Vec<Insn>,
    /// (index of a jump, whether it goes to the accept).
    ends: Vec<(usize, bool)>,
    map: i32,
}

impl Prog {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }

    /// `r0` = the u32 at `at`, as the kernel wrote it.
    fn field(&mut self, at: usize) {
        self.push(ld_abs_w(at));
        self.push(swap_r0());
    }

    /// A jump whose target is the accept (`true`) or the drop, set by [`Prog::finish`].
    fn jump_end(&mut self, jump: Insn, accept: bool) {
        self.ends.push((self.insns.len(), accept));
        self.push(jump);
    }

    /// `r0` = the map's value for the pid in register `reg`, or null (the key at `r10 - 4`).
    fn lookup(&mut self, reg: u8) {
        self.push(store_w(10, -4, reg));
        self.insns.extend(ld_map(1, self.map));
        self.push(mov(2, 10));
        self.push(add_k(2, -4));
        self.push(call(BPF_FUNC_MAP_LOOKUP_ELEM));
    }

    /// A jump whose target is set later by [`Prog::land`]; its index.
    fn jump_later(&mut self, jump: Insn) -> usize {
        self.push(jump);
        self.insns.len() - 1
    }

    /// Points the jump at `at` to the next instruction.
    fn land(&mut self, at: usize) {
        self.insns[at].off = (self.insns.len() - at - 1) as i16;
    }

    /// Sets the map's value for the key at `r10 - 4` to register `reg`.
    fn put(&mut self, reg: u8) {
        self.push(store_w(10, -8, reg));
        self.insns.extend(ld_map(1, self.map));
        self.push(mov(2, 10));
        self.push(add_k(2, -4));
        self.push(mov(3, 10));
        self.push(add_k(3, -8));
        self.push(mov_k(4, 0));
        self.push(call(BPF_FUNC_MAP_UPDATE_ELEM));
    }

    /// Removes the key at `r10 - 4` from the map.
    fn delete(&mut self) {
        self.insns.extend(ld_map(1, self.map));
        self.push(mov(2, 10));
        self.push(add_k(2, -4));
        self.push(call(BPF_FUNC_MAP_DELETE_ELEM));
    }

    /// The drop and accept ends, with every jump to them resolved.
    fn finish(mut self) -> Vec<Insn> {
        let drop = self.insns.len();
        self.push(mov_k(0, 0));
        self.push(exit());
        let accept = self.insns.len();
        self.push(mov_k(0, 0xffff));
        self.push(exit());
        for (at, to_accept) in std::mem::take(&mut self.ends) {
            let target = if to_accept { accept } else { drop };
            self.insns[at].off = (target - at - 1) as i16;
        }
        self.insns
    }
}

/// The program for map fd `map` (see the module's comment). Registers: r6 the packet (for
/// the loads), r7, r8 and r9 what is kept across calls, r10 the stack (the key at `r10 - 4`,
/// a value to store at `r10 - 8`).
fn program(map: i32) -> Vec<Insn> {
    let event = NLMSG_HDR + CN_MSG_HDR;
    let data = event + EVENT_DATA;
    let field = |i: usize| data + 4 * i;
    let mut p = Prog { insns: Vec::new(), ends: Vec::new(), map };
    p.push(mov(6, 1));
    p.field(event);
    p.push(mov(7, 0));
    // Fork: parent pid and tgid, child pid and tgid.
    let to_exec = p.jump_later(jne32_k(7, PROC_EVENT_FORK, 0));
    p.field(field(2));
    p.push(mov(8, 0));
    p.field(field(3));
    p.jump_end(jne(8, 0, 0), false);
    p.field(field(1));
    p.lookup(0);
    p.jump_end(jeq_null(0, 0), false);
    // The new child is watched from now on (its pid the key), for its parent's owner: a
    // slave's as started.
    p.push(load_w(9, 0, 0));
    p.push(mov(7, 9));
    p.push(and_k(7, STATE));
    p.push(and_k(9, !STATE));
    p.push(jne32_k(7, Entry::Slave as u32, 2));
    p.push(or_k(9, Entry::Started as i32));
    p.push(ja(1));
    p.push(or_k(9, Entry::Watched as i32));
    p.push(store_w(10, -4, 8));
    p.put(9);
    p.jump_end(jeq32_k(7, Entry::Slave as u32, 0), false);
    p.jump_end(ja(0), true);
    // Exec: process pid and tgid.
    p.land(to_exec);
    let to_exit = p.jump_later(jne32_k(7, PROC_EVENT_EXEC, 0));
    p.field(field(1));
    p.push(mov(8, 0));
    p.lookup(8);
    p.jump_end(jeq_null(0, 0), false);
    p.push(load_w(9, 0, 0));
    p.push(mov(1, 9));
    p.push(and_k(1, STATE));
    p.jump_end(jne32_k(1, Entry::Started as u32, 0), true);
    p.push(and_k(9, !STATE));
    p.push(or_k(9, Entry::Reaped as i32));
    p.put(9);
    p.jump_end(ja(0), false);
    // Exit: process pid and tgid, code, signal, parent pid and tgid.
    p.land(to_exit);
    p.jump_end(jne32_k(7, PROC_EVENT_EXIT, 0), false);
    p.field(field(0));
    p.push(mov(8, 0));
    p.field(field(1));
    p.jump_end(jne(8, 0, 0), false);
    p.lookup(8);
    let unknown = p.jump_later(jeq_null(0, 0));
    p.push(load_w(1, 0, 0));
    p.push(and_k(1, STATE));
    p.jump_end(jeq32_k(1, Entry::Watched as u32, 0), true);
    let slave = p.jump_later(jeq32_k(1, Entry::Slave as u32, 0));
    // Started or reaped: its slave reaps it, and its pid may be anyone's next.
    p.delete();
    p.land(unknown);
    p.land(slave);
    p.field(field(5));
    p.push(mov(8, 0));
    p.lookup(8);
    p.jump_end(jeq_null(0, 0), false);
    p.push(load_w(1, 0, 0));
    p.push(and_k(1, STATE));
    p.jump_end(jeq32_k(1, Entry::Slave as u32, 0), false);
    p.jump_end(ja(0), true);
    p.finish()
}

/// `bpf(2)` with an attribute of type `A`.
fn bpf<A>(cmd: libc::c_int, attr: &A) -> std::io::Result<libc::c_long> {
    // SAFETY: the attribute is a live repr(C) struct laid out as the command's part of
    // `union bpf_attr`, of the size passed; the kernel zero-fills the rest.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *const A, std::mem::size_of::<A>() as u32)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Loads `insns` as a socket filter; a refusal says the verifier's last word.
fn load(insns: &[Insn]) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let attr = |log_level: u32, log: &mut [u8]| ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size: if log_level == 0 { 0 } else { log.len() as u32 },
        log_buf: if log_level == 0 { 0 } else { log.as_mut_ptr() as u64 },
    };
    let loaded = bpf(BPF_PROG_LOAD, &attr(0, &mut log)).or_else(|e| {
        // Again with the verifier's log, for its reason.
        let again = bpf(BPF_PROG_LOAD, &attr(1, &mut log));
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let why = String::from_utf8_lossy(&log[..end]);
        let last = why.lines().rfind(|l| !l.is_empty()).unwrap_or("").to_owned();
        again.map_err(|_| std::io::Error::new(e.kind(), format!("{e}: {last}")))
    })?;
    // SAFETY: a new program's fd, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(loaded as i32) })
}

/// The map of watched pids that the program reads: the hub's, and its slaves' through the
/// descriptor it hands them, so that a slave's new pid passes as soon as it says so.
#[derive(Debug)]
pub(super) struct Map(OwnedFd);

impl Map {
    /// The map behind descriptor `fd` (received from the hub).
    pub(super) fn from_fd(fd: OwnedFd) -> Map {
        Map(fd)
    }

    /// Its descriptor, to hand to a slave.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// Puts `pid` in the map as `entry`, for the slave `owner`; with `only_new`, not if it
    /// is there already (as the kernel's own entry for a fork it saw).
    pub(super) fn put(&self, pid: i32, owner: i32, entry: Entry, only_new: bool) {
        let value = value(owner, entry);
        let attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            _pad: 0,
            key: &pid as *const i32 as u64,
            value: &value as *const u32 as u64,
            flags: if only_new { BPF_NOEXIST } else { 0 },
        };
        // A full map makes room itself (least recently used); a key present with
        // `only_new` is as good.
        let _ = bpf(BPF_MAP_UPDATE_ELEM, &attr);
    }

    /// The slave `pid` is watched for, if it is in the map.
    pub(super) fn owner(&self, pid: i32) -> Option<i32> {
        let mut value: u32 = 0;
        let attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            _pad: 0,
            key: &pid as *const i32 as u64,
            value: &mut value as *mut u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &attr).ok()?;
        Some((value >> OWNER_SHIFT) as i32)
    }

    /// Drops `pid`'s events from now on.
    pub(super) fn forget(&self, pid: i32) {
        let attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            _pad: 0,
            key: &pid as *const i32 as u64,
            value: 0,
            flags: 0,
        };
        // Absent already (a pid forgotten twice) is as good.
        let _ = bpf(BPF_MAP_DELETE_ELEM, &attr);
    }
}

/// The map and the program that reads it, attached to a subscription.
#[derive(Debug)]
pub(super) struct Kfilter {
    pub(super) map: Map,
    /// Held for as long as the socket may use it (the socket holds it too).
    _prog: OwnedFd,
}

impl Kfilter {
    /// Creates the map and the program and attaches it to `socket`, replacing its filter.
    pub(super) fn attach(socket: &impl AsRawFd) -> std::io::Result<Kfilter> {
        let attr = MapCreate {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: 4,
            value_size: 4,
            max_entries: MAP_ENTRIES,
        };
        // SAFETY: a new map's fd, owned by nothing else.
        let map = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &attr)? as i32) };
        let prog = load(&program(map.as_raw_fd()))?;
        let (level, name) = (libc::SOL_SOCKET, libc::SO_ATTACH_BPF);
        crate::set_int_option(socket.as_raw_fd(), level, name, prog.as_raw_fd())?;
        Ok(Kfilter { map: Map(map), _prog: prog })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procevents::{Netlink, ProcEvent};

    #[test]
    fn the_kernel_passes_the_watched_processes_and_their_new_children_alone() {
        let events = match Netlink::open() {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIPPED: no process events here ({e}; needs CAP_NET_ADMIN)");
                return;
            }
            Err(e) => panic!("subscribing: {e}"),
        };
        let k = match Kfilter::attach(&events.0) {
            Ok(k) => k,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIPPED: no eBPF here ({e}; needs CAP_BPF)");
                return;
            }
            Err(e) => panic!("the filter did not load: {e}"),
        };
        let me = std::process::id() as i32;
        // Started before this process is watched: nothing of it passes, nor of what it forks.
        let mut early = std::process::Command::new("/bin/sh")
            .args(["-c", "read x; /bin/true"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let early_pid = early.id() as i32;
        k.map.put(me, me, Entry::Slave, false);
        // Started after, by a slave: its fork, first exec and end do not pass, its later
        // exec does; what it forks is watched from its fork on, its end included.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "/bin/true; exec /bin/sh -c 'exit 5'"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let _ = child.wait();
        drop(early.stdin.take());
        let _ = early.wait();
        // The mark: a watched process's end, after everything above.
        let mut last = std::process::Command::new("/bin/sh")
            .args(["-c", "/bin/sh -c 'exit 6'; exit 0"])
            .spawn()
            .unwrap();
        let last_pid = last.id() as i32;
        let _ = last.wait();
        let (tx, rx) = std::sync::mpsc::channel();
        let events = std::sync::Arc::new(events);
        let reader = events.clone();
        std::thread::spawn(move || {
            while let Ok(list) = reader.next() {
                if tx.send(list).is_err() {
                    return;
                }
            }
        });
        let mut got: Vec<ProcEvent> = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let marked = |g: &[ProcEvent]| {
            g.iter().any(|e| matches!(*e, ProcEvent::Exit { parent, status, .. } if parent == last_pid && status == 6 << 8))
        };
        while !marked(&got) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(list) => got.extend(list),
                Err(_) => break,
            }
        }
        assert!(marked(&got), "{got:?}");
        let gc = got.iter().find_map(|e| match *e {
            ProcEvent::Fork { parent, child } if parent == pid => Some(child),
            _ => None,
        });
        let gc = gc.unwrap_or_else(|| panic!("no fork of {pid}: {got:?}"));
        assert!(got.contains(&ProcEvent::Exec { pid: gc }), "{got:?}");
        assert!(got.contains(&ProcEvent::Exit { pid: gc, parent: pid, status: 0 }), "{got:?}");
        // One exec of the child passes: its second.
        assert_eq!(got.iter().filter(|e| **e == ProcEvent::Exec { pid }).count(), 1, "{got:?}");
        // No fork of this process, no end of its children, nothing of the early process
        // (the other tests of this process start children too, watched from their fork).
        assert!(
            got.iter().all(|e| match *e {
                ProcEvent::Fork { parent, child } =>
                    parent != me && parent != early_pid && child != early_pid,
                ProcEvent::Exec { pid } => pid != early_pid && pid != last_pid,
                ProcEvent::Exit { pid: p, parent, .. } =>
                    p != pid && p != early_pid && p != last_pid && parent != early_pid,
            }),
            "{got:?}"
        );
    }
}
