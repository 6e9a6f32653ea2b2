//! Restore of a process image ([`crate::dump`]) into a new process, by system call injection.
//!
//! The new process starts as a tiny static program (`syscall; int3` in a segment that goes
//! on with the restore's scratch pages), run from a sealed memfd made once per restorer,
//! traced from its first instruction. The restorer makes it run system calls with the
//! arguments it chooses, in batches (a small runner it writes into the scratch pages
//! executes a table of calls, so a batch costs one ptrace stop; a call may take an argument
//! from a slot that an earlier one filled, so that the files it opens are mapped and closed
//! in the same batch): it unmaps the stub, moves the vDSO to where the image had it, maps
//! every region (files by reference, the rest anonymous) and sets the memory layout
//! (`PR_SET_MM_MAP`), all in one batch; writes the saved pages in with `process_vm_writev`
//! (large anonymous regions through a userfaultfd the process makes, see `Filler`); sets
//! the name, signal actions, alternate stack, rseq, robust list, tid address and open files,
//! unmapping the scratch pages last; and finally loads the saved stack pointer, resume
//! address and thread pointer and lets go. The process then returns from
//! [`crate::dump::checkpoint`] as a restored copy, under the pid the caller chose (`set_tid`)
//! when it runs the restore in a pid namespace.
//!
//! [`restore_in_place`] restores into the calling process instead (BProc's `bproc_undump`,
//! and a ghost taking its process back from a node): the caller makes a helper that seizes
//! it, checks the image, and lets the caller exec the stub; the helper then injects as above.
//! The caller keeps its pid, parent and fds 0 to 2.

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bproc_image::{Header, ImageReader, Source, HUGE_PAGE, PAGE};
use nix::libc;
use nix::sys::ptrace;
use nix::sys::signal::{kill, Signal};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::dump::{parse_maps, this_machine, CkptError, KSigAction, MapLine};
use bproc_sys::{CloneArgs, FdFile, Identity, Limit, SpawnSpec};

/// How to restore.
#[derive(Debug, Default)]
pub struct RestoreSpec {
    /// The new process's fds 0, 1 and 2.
    pub stdio: [Option<OwnedFd>; 3],
    /// Further fds it gets (an I/O list); the image's own files at these numbers are left out.
    pub fds: Vec<(i32, OwnedFd)>,
    /// Files it opens at these fds (an I/O list), as [`SpawnSpec::files`].
    pub files: Vec<FdFile>,
    /// Its pid in the calling thread's pid namespace for children, if chosen.
    pub set_tid: Option<i32>,
    /// Who it runs as.
    pub identity: Option<Identity>,
    /// What `checkpoint` returns in it ([`crate::dump::Resumed::Restored`]), at least 1.
    pub value: i64,
    /// A note for it, written into its mailbox ([`Header::mailbox`]) when it has one.
    pub note: Option<Vec<u8>>,
    /// A root to confine it to (a diskless node's): the files the image names, and its
    /// working directory, are looked up there.
    pub root: Option<std::path::PathBuf>,
    /// The most it may have of each resource (the launcher's limits, from its kernel): the
    /// image's limits are lowered to these ([`bproc_sys::cap_limits`]), since an image says
    /// whatever its maker wrote.
    pub limits: Vec<Limit>,
}

/// The `/proc` of the pid namespace the restorer runs in, pinned by [`prepare`].
static HOST_PROC: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Readies this process to restore from a thread that later enters another pid namespace's
/// mounts (a slave's spawner thread, whose `/proc` then shows only that namespace): keeps
/// this `/proc` open, where restored processes are found by the pids this thread gets, and
/// describes the machine while `/proc/self` is still this process.
pub fn prepare() -> Result<(), CkptError> {
    this_machine()?;
    if HOST_PROC.get().is_none() {
        let fd = std::fs::File::open("/proc").map_err(|e| CkptError::sys("/proc", e))?;
        let _ = HOST_PROC.set(fd.into());
    }
    Ok(())
}

const STUB_BASE: u64 = 0x1_0000_0000;
const PR_SET_MM: i32 = 35;
const PR_SET_MM_MAP: u64 = 14;
const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
const MREMAP_MAYMOVE_FIXED: u64 = 3;
/// Protection while a region is being filled, and the flags of an anonymous mapping.
const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
/// Pages the restore works in: code (the gadget and the batch runner, then the slots), data
/// (strings and structures system calls read), and the batch's call table. The stub's own,
/// after its file's page, unless the image needs their place.
const SCRATCH_PAGES: u64 = 3;
/// Where the stub's entry point is in its file: after the ELF and program headers.
const ENTRY_AT: u64 = 64 + 2 * 56;
/// The gadget: `syscall; int3`, the stub's entry point and the code page's start.
const GADGET: [u8; 3] = [0x0f, 0x05, 0xcc];
/// Where the batch runner starts in the code page.
const RUNNER_AT: u64 = 16;
/// Where the slots start in the code page: 8 bytes each, written by calls that keep their
/// result ([`flag::KEEP`]) and read by calls that take an argument from one.
const SLOTS_AT: u64 = 512;
const SLOTS: usize = ((PAGE - SLOTS_AT) / 8) as usize;
/// The batch runner: with `rbx` at a table of 64-byte entries (number and flags, six
/// arguments, result), runs each call and stores its result, until an entry whose number
/// is -1 or a call that fails and may not; then `int3`. The flags, above the number's 32
/// bits, are [`flag`]s: bit 32 loads the fifth argument from the address it holds, bit 33
/// the first; bit 34 also stores the result's low 32 bits at the sixth argument; bit 35
/// lets the call fail.
const RUNNER: [u8; 96] = [
    0x48, 0x8b, 0x03, // 0x00: mov rax, [rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax, -1
    0x74, 0x56, // je done
    0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx + 8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi, [rbx + 16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx, [rbx + 24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10, [rbx + 32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8, [rbx + 40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9, [rbx + 48]
    0x49, 0x89, 0xc4, // 0x21: mov r12, rax
    0x49, 0x0f, 0xba, 0xe4, 0x20, // bt r12, 32
    0x73, 0x03, // jnc +3
    0x4d, 0x8b, 0x00, // mov r8, [r8]
    0x49, 0x0f, 0xba, 0xe4, 0x21, // 0x2e: bt r12, 33
    0x73, 0x03, // jnc +3
    0x48, 0x8b, 0x3f, // mov rdi, [rdi]
    0x89, 0xc0, // 0x38: mov eax, eax
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // 0x3c: mov [rbx + 56], rax
    0x49, 0x0f, 0xba, 0xe4, 0x22, // bt r12, 34
    0x73, 0x03, // jnc +3
    0x41, 0x89, 0x01, // mov [r9], eax
    0x49, 0x0f, 0xba, 0xe4, 0x23, // 0x4a: bt r12, 35
    0x72, 0x08, // jc next
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
    0x73, 0x06, // jae done
    0x48, 0x83, 0xc3, 0x40, // 0x59: next: add rbx, 64
    0xeb, 0xa1, // jmp 0
    0xcc, // 0x5f: done: int3
];
/// Where, in the code page, a call the runner made returns (the instruction after its
/// `syscall`).
const RUNNER_RETURN: u64 = RUNNER_AT + 0x3c;
/// Calls in one table page, leaving room for the end marker.
const TABLE_CALLS: usize = (PAGE as usize / 64) - 1;

/// A minimal static ELF executable whose entry point is the gadget, and whose one segment
/// goes on with the scratch pages, zeros: no libc, no rseq, no heap, nothing to undo, and
/// nothing to map before the first batch. (Its file's page goes with the stub's other
/// mappings: the executable cannot be named while its file is mapped.)
fn stub_elf() -> Vec<u8> {
    let len = ENTRY_AT + GADGET.len() as u64;
    let mut e = Vec::with_capacity(len as usize);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(STUB_BASE + ENTRY_AT).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no sections
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    // PT_LOAD, read, write and execute: the file, then zeros to the scratch pages' end.
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&7u32.to_le_bytes());
    for v in [0, STUB_BASE, STUB_BASE, len, (1 + SCRATCH_PAGES) * PAGE, PAGE] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    // PT_GNU_STACK, read and write: no executable stack.
    e.extend_from_slice(&0x6474_e551u32.to_le_bytes());
    e.extend_from_slice(&6u32.to_le_bytes());
    for v in [0u64, 0, 0, 0, 0, 16] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&GADGET);
    e
}

/// The code page's start: the gadget, then the runner.
fn scratch_code() -> Vec<u8> {
    let mut code = GADGET.to_vec();
    code.resize(RUNNER_AT as usize, 0xcc);
    code.extend_from_slice(&RUNNER);
    code
}

fn last_err(what: impl Into<String>) -> CkptError {
    CkptError::sys(what, std::io::Error::last_os_error())
}

/// A failed system call through nix, as a [`CkptError`].
fn nix_err(what: impl Into<String>, e: nix::Error) -> CkptError {
    CkptError::sys(what, std::io::Error::from(e))
}

/// The traced new process and where its system call gadget, batch runner, data page and
/// call table are.
struct Tracee {
    pid: i32,
    base: libc::user_regs_struct,
    gadget: u64,
    scratch: u64,
    table: u64,
}

/// How the batch runner treats a call: bits above its number's 32 (see [`RUNNER`]).
mod flag {
    /// The fifth argument is the address of a slot, whose value is passed instead.
    pub(super) const ARG5_FROM_SLOT: u64 = 1 << 32;
    /// The first argument is the address of a slot, whose value is passed instead.
    pub(super) const ARG1_FROM_SLOT: u64 = 1 << 33;
    /// The result's low 32 bits also go where the sixth argument points (a slot, or a
    /// field of a structure in the data page).
    pub(super) const KEEP: u64 = 1 << 34;
    /// The call may fail: the runner goes on, and its result reads as `u64::MAX`.
    pub(super) const MAY_FAIL: u64 = 1 << 35;
}

/// One call of a [`Batch`].
struct Call {
    /// What it does, for an error.
    what: std::borrow::Cow<'static, str>,
    nr: i64,
    args: [u64; 6],
    /// [`flag`]s.
    flags: u64,
}

/// System calls run in the tracee together; strings and structures they read go in the data
/// page, through [`Batch::put`].
#[derive(Default)]
struct Batch {
    calls: Vec<Call>,
    data: Vec<u8>,
    /// Where the scratch pages' code goes in with the first table (the restore's first
    /// batch).
    code: Option<u64>,
}

impl Batch {
    /// Adds a call; returns its place among the results.
    fn push(
        &mut self,
        what: impl Into<std::borrow::Cow<'static, str>>,
        nr: i64,
        args: [u64; 6],
    ) -> usize {
        self.push_flagged(what, nr, args, 0)
    }

    /// [`Batch::push`] with [`flag`]s.
    fn push_flagged(
        &mut self,
        what: impl Into<std::borrow::Cow<'static, str>>,
        nr: i64,
        args: [u64; 6],
        flags: u64,
    ) -> usize {
        self.calls.push(Call { what: what.into(), nr, args, flags });
        self.calls.len() - 1
    }

    /// Puts `b` in the data page (8-byte aligned) and returns where it will be: in this
    /// batch's page or, when that is full, in a fresh one once the calls so far have run
    /// (each call's data is put before the call is added, and slots outlast a run).
    fn put(&mut self, t: &Tracee, b: &[u8]) -> Result<u64, CkptError> {
        let room = |data: &Vec<u8>| {
            let at = data.len().next_multiple_of(8);
            (at + b.len() <= PAGE as usize).then_some(at)
        };
        let at = match room(&self.data) {
            Some(at) => at,
            None => {
                std::mem::take(self).run(t)?;
                room(&self.data).ok_or_else(page_full)?
            }
        };
        self.data.resize(at, 0);
        self.data.extend_from_slice(b);
        Ok(t.scratch + at as u64)
    }

    /// A NUL-terminated string in the data page, as [`Batch::put`].
    fn string(&mut self, t: &Tracee, s: &str) -> Result<u64, CkptError> {
        self.put(t, &c_string(s)?)
    }

    /// Runs the calls in order, stopping at the first failure of one that may not fail (its
    /// errno, named); the results otherwise.
    fn run(self, t: &Tracee) -> Result<Vec<u64>, CkptError> {
        self.run_ending(t, false)
    }

    /// [`Batch::run`], the last call unmapping the scratch pages at `at`, the runner's own
    /// code: the process then stops with `SIGSEGV` at the instruction after that call, which
    /// says that every call ran (a failure stops it at the runner's `int3` as ever). Saves
    /// the stop of a call of its own.
    fn run_unmapping(mut self, t: &Tracee, at: u64) -> Result<(), CkptError> {
        self.push("munmap scratch", libc::SYS_munmap, [at, SCRATCH_PAGES * PAGE, 0, 0, 0, 0]);
        self.run_ending(t, true).map(drop)
    }

    fn run_ending(self, t: &Tracee, unmapping: bool) -> Result<Vec<u64>, CkptError> {
        let code = self.code.map(|at| (at, scratch_code()));
        let mut first = code.iter().map(|(at, c)| (*at, &c[..])).collect::<Vec<_>>();
        if !self.data.is_empty() {
            first.push((t.scratch, &self.data[..]));
        }
        let mut results = Vec::with_capacity(self.calls.len());
        let parts = self.calls.chunks(TABLE_CALLS);
        let count = parts.len();
        for (n, part) in parts.enumerate() {
            let mut table: Vec<u8> = Vec::with_capacity((part.len() + 1) * 64);
            for c in part {
                table.extend_from_slice(&(c.nr as u64 | c.flags).to_ne_bytes());
                for a in c.args {
                    table.extend_from_slice(&a.to_ne_bytes());
                }
                table.extend_from_slice(&0u64.to_ne_bytes());
            }
            table.extend_from_slice(&u64::MAX.to_ne_bytes());
            // The code and data go in with the first table.
            let mut pokes = std::mem::take(&mut first);
            pokes.push((t.table, &table));
            t.poke_all(&pokes)?;
            let mut r = t.base;
            r.rip = t.gadget + RUNNER_AT;
            r.rbx = t.table;
            r.orig_rax = u64::MAX;
            t.set_regs(&r)?;
            t.cont()?;
            let sig = t.wait_stop()?;
            if sig == libc::SIGSEGV && unmapping && n + 1 == count {
                let r = t.regs()?;
                if r.rip == t.gadget + RUNNER_RETURN && r.rax == 0 {
                    results.resize(results.len() + part.len(), 0);
                    return Ok(results);
                }
            }
            if sig != libc::SIGTRAP {
                return Err(CkptError::sys(
                    format!("{} in the restored process stopped with signal {sig}", part[0].what),
                    std::io::Error::from_raw_os_error(libc::EFAULT),
                ));
            }
            let mut got = vec![0u8; part.len() * 64];
            t.peek(t.table, &mut got)?;
            for (i, c) in part.iter().enumerate() {
                let at = i * 64 + 56;
                let rax = u64::from_ne_bytes(got[at..at + 8].try_into().expect("8 bytes")) as i64;
                if !(-4095..0).contains(&rax) {
                    results.push(rax as u64);
                } else if c.flags & flag::MAY_FAIL != 0 {
                    results.push(u64::MAX);
                } else {
                    let e = std::io::Error::from_raw_os_error(-rax as i32);
                    return Err(CkptError::sys(c.what.to_string(), e));
                }
            }
        }
        Ok(results)
    }
}

/// `s` with a NUL after it, for the kernel.
fn c_string(s: &str) -> Result<Vec<u8>, CkptError> {
    if s.len() >= PAGE as usize || s.contains('\0') {
        return Err(CkptError::Path(format!("too long or with a NUL: {s:?}")));
    }
    let mut b = Vec::with_capacity(s.len() + 1);
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    Ok(b)
}

impl Tracee {
    fn new(pid: i32) -> Tracee {
        // SAFETY: all-zero is a valid user_regs_struct; replaced before use.
        Tracee { pid, base: unsafe { std::mem::zeroed() }, gadget: 0, scratch: 0, table: 0 }
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.pid)
    }

    /// Waits for the next stop and returns its signal and ptrace event (0 for a plain
    /// signal stop).
    fn wait_event(&self) -> Result<(i32, i32), CkptError> {
        match waitpid(self.nix_pid(), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, sig)) => Ok((sig as i32, 0)),
            Ok(WaitStatus::PtraceEvent(_, sig, event)) => Ok((sig as i32, event)),
            Ok(WaitStatus::PtraceSyscall(_)) => Ok((libc::SIGTRAP, 0)),
            Ok(other) => Err(CkptError::sys(
                format!("the restored process ended during the restore ({other:?})"),
                std::io::Error::from_raw_os_error(libc::ESRCH),
            )),
            Err(e) => Err(nix_err("waiting for the restored process", e)),
        }
    }

    /// Waits for the next stop and returns its signal.
    fn wait_stop(&self) -> Result<i32, CkptError> {
        self.wait_event().map(|(sig, _)| sig)
    }

    fn set_regs(&self, r: &libc::user_regs_struct) -> Result<(), CkptError> {
        ptrace::setregs(self.nix_pid(), *r).map_err(|e| nix_err("PTRACE_SETREGS", e))
    }

    fn regs(&self) -> Result<libc::user_regs_struct, CkptError> {
        ptrace::getregs(self.nix_pid()).map_err(|e| nix_err("PTRACE_GETREGS", e))
    }

    /// Resumes the stopped process.
    fn cont(&self) -> Result<(), CkptError> {
        ptrace::cont(self.nix_pid(), None).map_err(|e| nix_err("PTRACE_CONT", e))
    }

    /// Sets the process's signal mask (nix has no wrapper for `PTRACE_SETSIGMASK`); `what`
    /// names a failure.
    fn set_sigmask(&self, mask: u64, what: &str) -> Result<(), CkptError> {
        // SAFETY: PTRACE_SETSIGMASK reads an 8-byte mask from a valid pointer.
        if unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, self.pid, 8, &mask as *const u64) } != 0 {
            return Err(last_err(what));
        }
        Ok(())
    }

    /// Lets the process run from registers `r` until its next `int3` (`what` names the work
    /// if it stops otherwise).
    fn run_to_trap(&self, r: &libc::user_regs_struct, what: &str) -> Result<(), CkptError> {
        self.set_regs(r)?;
        self.cont()?;
        let sig = self.wait_stop()?;
        if sig != libc::SIGTRAP {
            return Err(CkptError::sys(
                format!("{what} in the restored process stopped with signal {sig}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        Ok(())
    }

    /// Runs system call `nr` in the process and returns its result (an errno as an error).
    fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64, CkptError> {
        let mut r = self.base;
        r.rip = self.gadget;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) =
            (args[0], args[1], args[2], args[3], args[4], args[5]);
        self.run_to_trap(&r, what)?;
        let rax = self.regs()?.rax as i64;
        if (-4095..0).contains(&rax) {
            return Err(CkptError::sys(what, std::io::Error::from_raw_os_error(-rax as i32)));
        }
        Ok(rax as u64)
    }

    /// Writes `data` at `addr` in the process.
    fn poke(&self, addr: u64, mut data: &[u8]) -> Result<(), CkptError> {
        let mut at = addr;
        while !data.is_empty() {
            let remote = RemoteIoVec { base: at as usize, len: data.len() };
            let n = process_vm_writev(self.nix_pid(), &[IoSlice::new(data)], &[remote])
                .and_then(|n| if n == 0 { Err(nix::Error::EFAULT) } else { Ok(n) })
                .map_err(|e| nix_err(format!("writing {} bytes at {at:#x}", data.len()), e))?;
            data = &data[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// Writes each `(addr, data)` in the process, all in one system call when it takes
    /// them whole (each piece else on its own, as [`Tracee::poke`]).
    fn poke_all(&self, parts: &[(u64, &[u8])]) -> Result<(), CkptError> {
        let local: Vec<IoSlice<'_>> = parts.iter().map(|(_, d)| IoSlice::new(d)).collect();
        let remote: Vec<RemoteIoVec> =
            parts.iter().map(|(at, d)| RemoteIoVec { base: *at as usize, len: d.len() }).collect();
        let total: usize = parts.iter().map(|(_, d)| d.len()).sum();
        if process_vm_writev(self.nix_pid(), &local, &remote) == Ok(total) {
            return Ok(());
        }
        // Written again from the start: the same bytes to the same places.
        parts.iter().try_for_each(|(at, d)| self.poke(*at, d))
    }

    /// Reads `buf.len()` bytes at `addr` in the process.
    fn peek(&self, addr: u64, buf: &mut [u8]) -> Result<(), CkptError> {
        let len = buf.len();
        let what = || format!("reading {len} bytes at {addr:#x}");
        let n = self.peek_some(addr, buf).map_err(|e| nix_err(what(), e))?;
        if n != len {
            return Err(nix_err(what(), nix::Error::EFAULT));
        }
        Ok(())
    }

    /// Reads what there is of `buf.len()` bytes at `addr` (up to the first unmapped page);
    /// returns how many.
    fn peek_some(&self, addr: u64, buf: &mut [u8]) -> nix::Result<usize> {
        let remote = RemoteIoVec { base: addr as usize, len: buf.len() };
        process_vm_readv(self.nix_pid(), &mut [IoSliceMut::new(buf)], &[remote])
    }

    /// Puts a NUL-terminated string in the scratch page and returns its address.
    fn string(&self, s: &str) -> Result<u64, CkptError> {
        self.poke(self.scratch, &c_string(s)?)?;
        Ok(self.scratch)
    }

    /// The address of slot `i` (below [`SLOTS`]), in the code page.
    fn slot(&self, i: usize) -> u64 {
        self.gadget + SLOTS_AT + 8 * i as u64
    }

    fn maps(&self) -> Result<Vec<MapLine>, CkptError> {
        let failed = |e: std::io::Error| CkptError::sys("maps of the restored process", e);
        let text = match HOST_PROC.get() {
            Some(dir) => {
                let path = format!("{}/maps", self.pid);
                let fd = nix::fcntl::openat(
                    Some(dir.as_raw_fd()),
                    path.as_str(),
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| failed(e.into()))?;
                // SAFETY: a fresh fd we own.
                let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let mut text = String::new();
                f.read_to_string(&mut text).map_err(failed)?;
                text
            }
            None => std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).map_err(failed)?,
        };
        Ok(parse_maps(&text))
    }
}

/// The lowest page-aligned address from `from` with `size` bytes free of every range in
/// `used`.
fn hole(used: &[(u64, u64)], size: u64, from: u64) -> Option<u64> {
    let mut v = used.to_vec();
    v.sort_unstable();
    let mut at = from;
    for (s, e) in v {
        if e <= at {
            continue;
        }
        if s >= at + size {
            break;
        }
        at = e.next_multiple_of(PAGE);
    }
    (at + size <= bproc_image::USER_END).then_some(at)
}

/// Checks that `h` was made on a machine this one can run: same architecture, kernel
/// release, vDSO and CPU features, and the same library files.
/// Whether this machine has the regular file `path` with this size and modification time
/// (seconds, nanoseconds): the file an image names by reference, or one a mover asks about.
pub fn same_file(path: &str, size: u64, mtime: (i64, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|st| {
        st.is_file() && st.size() == size && (st.mtime(), st.mtime_nsec() as u32) == mtime
    })
}

/// `path` as seen from inside `root` (the host's own when `None`).
pub fn inside(root: Option<&std::path::Path>, path: &str) -> std::path::PathBuf {
    match root {
        Some(r) => r.join(path.trim_start_matches('/')),
        None => path.into(),
    }
}

fn check_machine(h: &Header, root: Option<&std::path::Path>) -> Result<(), CkptError> {
    let here = this_machine()?;
    let m = &h.machine;
    let differs = if m.arch != here.arch {
        Some(format!("made on {}, this machine is {}", m.arch, here.arch))
    } else if m.kernel != here.kernel {
        Some(format!("made under kernel {}, this one runs {}", m.kernel, here.kernel))
    } else if m.vdso_hash != here.vdso_hash {
        Some("the kernel's vDSO differs".into())
    } else if m.cpu_hash != here.cpu_hash {
        Some("the CPU's features differ".into())
    } else {
        None
    };
    if let Some(d) = differs {
        return Err(CkptError::Machine(d));
    }
    // A file mapped several times (a library's text, data and read-only parts) is looked at
    // once: each look is a path walk, about a tenth of a small restore's own work.
    for (path, size, mtime) in named_files(h) {
        if !same_file(&inside(root, path).to_string_lossy(), size, mtime) {
            return Err(CkptError::Machine(format!(
                "{path} is missing or differs from the one the image names (it changed since \
                 the dump, or it is on the library list but differs here: take it off)"
            )));
        }
    }
    Ok(())
}

/// The files the image's regions map (path, size and mtime at the dump), each once, in the
/// order they first appear.
fn named_files(h: &Header) -> Vec<(&str, u64, (i64, u32))> {
    let mut files: Vec<(&str, u64, (i64, u32))> = Vec::new();
    for r in &h.regions {
        if let Source::File { path, size, mtime, .. } = &r.source {
            if !files.iter().any(|(p, ..)| p == path) {
                files.push((path, *size, *mtime));
            }
        }
    }
    files
}

/// Restores the image read from `image` into a new child of the calling thread and lets it
/// run; returns its pid. On failure the new process is killed.
pub fn restore(image: impl Read, spec: RestoreSpec) -> Result<i32, CkptError> {
    restore_noting(image, spec).map(|r| r.pid)
}

/// A process [`restore_noting`] restored.
#[derive(Debug)]
pub struct Restored {
    /// Its pid.
    pub pid: i32,
    /// Its name (`/proc/PID/comm`), from the image.
    pub comm: String,
    /// What it lost on the way: a line for each file it had open that this machine lacks or
    /// denies, left closed (`fd 5 (/var/log/x) left closed: No such file or directory`).
    pub closed: Vec<String>,
}

/// [`restore`], also returning the process's name and what it lost on the way.
pub fn restore_noting(image: impl Read, spec: RestoreSpec) -> Result<Restored, CkptError> {
    restore_from(ImageReader::open(image)?, spec)
}

/// [`restore_noting`] from an image held in memory, whose pages go from there straight into
/// the process (a node restores all of a vector fork's ranks from its one copy).
pub fn restore_shared(
    image: bproc_image::SharedImage,
    spec: RestoreSpec,
) -> Result<Restored, CkptError> {
    restore_from(ImageReader::in_memory(image)?, spec)
}

fn restore_from<R: Read>(
    mut reader: ImageReader<R>,
    spec: RestoreSpec,
) -> Result<Restored, CkptError> {
    let h = reader.header().clone();
    let root = spec.root.as_deref();
    check_machine(&h, root)?;
    let stub = stub_file()?;
    let cstr =
        |s: &str| std::ffi::CString::new(s).map_err(|_| CkptError::Path(format!("NUL in {s:?}")));
    // Reserved: the I/O list's fds, which the image's files must not replace.
    let reserved: Vec<i32> =
        spec.fds.iter().map(|(n, _)| *n).chain(spec.files.iter().map(|f| f.fd)).collect();
    let req = SpawnSpec {
        path: cstr("bproc-stub")?,
        argv: vec![cstr(comm_of(&h))?],
        envp: bproc_sys::CStrings::default(),
        cwd: Some(cstr(cwd_of(&h, root))?),
        stdio: spec.stdio,
        fds: spec.fds,
        limits: bproc_sys::cap_limits(&h.rlimits, &spec.limits),
        jail: match root {
            Some(r) => Some(bproc_sys::Jail {
                root: cstr(&r.to_string_lossy())?,
                cwd: cstr(cwd_of(&h, root))?,
            }),
            None => None,
        },
        identity: spec.identity,
        umask: h.umask,
        files: spec.files,
        set_tid: spec.set_tid,
        trace: true,
        // The image's actions are set on a process whose others are the defaults, not the
        // restorer's (a daemon's inherited ignored signals).
        default_signals: true,
        exec_fd: Some(stub),
    };
    // The pid may still be held by the copy that just moved away from here (it ends once the
    // move has succeeded, and is reaped soon after): wait for it, briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let pid = loop {
        match bproc_sys::spawn(&req) {
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            r => break r.map_err(|e| CkptError::sys("starting the restore stub", e))?,
        }
    };
    let kill = || kill_and_reap(pid);
    let t = Tracee::new(pid);
    let started = t.wait_stop().and_then(|sig| {
        if sig != libc::SIGTRAP {
            return Err(CkptError::sys(
                format!("the restore stub stopped with signal {sig}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        ptrace::setoptions(t.nix_pid(), ptrace::Options::PTRACE_O_EXITKILL)
            .map_err(|e| nix_err("PTRACE_SETOPTIONS", e))
    });
    let how = Inject {
        value: spec.value,
        reserved: &reserved,
        in_place: false,
        note: spec.note.as_deref(),
    };
    match started.and_then(|()| inject(t, &h, &mut reader, &how, &mut || Ok(()))) {
        Ok(closed) => Ok(Restored { pid, comm: h.comm.clone(), closed }),
        Err(e) => {
            kill();
            Err(e)
        }
    }
}

/// Replaces the calling process with the image read from `image` (BProc's `bproc_undump`):
/// the process keeps its pid, parent and fds 0 to 2, and returns from the dump with `value`.
/// A helper process (not a child of the caller's, so the restored program never sees it)
/// seizes the caller, checks the image's header and machine, runs the restore once the
/// caller has exec'd the stub, calls `before_resume` while the process is still held, and
/// lets it go. Returns only on failure, with the caller unchanged; a failure after the
/// caller's exec kills it, as a failed exec would.
///
/// The caller should be single-threaded (it forks, and its other threads end at the exec).
pub fn restore_in_place(
    image: impl Read,
    value: i64,
    note: Option<&[u8]>,
    before_resume: &mut dyn FnMut() -> Result<(), CkptError>,
) -> CkptError {
    match in_place(image, value, note, before_resume) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// A pipe's two ends, close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), CkptError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| CkptError::sys("pipe", std::io::Error::from(e)))
}

fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> Result<(), CkptError> {
    let mut f = std::fs::File::from(fd.try_clone().map_err(|e| CkptError::sys("dup", e))?);
    std::io::Read::read_exact(&mut f, buf)
        .map_err(|e| CkptError::sys("the restore helper went away", e))
}

fn write_all(fd: &OwnedFd, buf: &[u8]) {
    if let Ok(c) = fd.try_clone() {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(c), buf);
    }
}

fn in_place(
    image: impl Read,
    value: i64,
    note: Option<&[u8]>,
    before_resume: &mut dyn FnMut() -> Result<(), CkptError>,
) -> Result<std::convert::Infallible, CkptError> {
    let memfd = stub_memfd()?;
    let (p_rd, h_wr) = pipe()?; // helper → caller
    let (h_rd, p_wr) = pipe()?; // caller → helper
    let me = nix::unistd::getpid().as_raw();
    // The helper is a grandchild whose parent exits at once, so it is nobody's child here.
    match bproc_sys::fork_single_threaded().map_err(|e| CkptError::sys("fork", e.into()))? {
        0 => {
            let code = match bproc_sys::fork_single_threaded() {
                Ok(0) => {
                    let code = helper(me, image, value, note, before_resume, &h_rd, &h_wr);
                    // SAFETY: ends the helper without running the caller's exit handlers.
                    unsafe { libc::_exit(code) }
                }
                Ok(h) => {
                    write_all(&h_wr, &h.to_ne_bytes());
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
        h1 => {
            let mut b = [0u8; 4];
            let got = read_exact(&p_rd, &mut b);
            // Reaps the intermediate child.
            let _ = waitpid(Pid::from_raw(h1), None);
            got?;
            let helper_pid = i32::from_ne_bytes(b);
            // Yama, where present, lets only the named helper attach; elsewhere this fails
            // harmlessly.
            // SAFETY: a prctl with plain integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PTRACER, helper_pid as libc::c_ulong, 0, 0, 0) };
            write_all(&p_wr, &[1]);
            let fail = |e: CkptError| {
                // Ends our helper; it has not taken over this process.
                let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
                e
            };
            let mut head = [0u8; 6];
            read_exact(&p_rd, &mut head).map_err(fail)?;
            let code = i32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
            if code != 0 {
                let mut msg = vec![0u8; usize::from(u16::from_ne_bytes([head[4], head[5]]))];
                read_exact(&p_rd, &mut msg).map_err(fail)?;
                let msg = String::from_utf8_lossy(&msg).into_owned();
                return Err(if code == libc::ENOEXEC {
                    CkptError::Machine(msg)
                } else {
                    CkptError::sys(msg, std::io::Error::from_raw_os_error(code))
                });
            }
            // Nothing of the caller's but fds 0 to 2 survives the exec; the image reopens
            // its own files.
            // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32) };
            let argv0 = std::ffi::CString::new("bproc-restore").unwrap_or_default();
            let argv = [argv0.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: execveat on our memfd with NUL-terminated argv and envp arrays.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    memfd.as_raw_fd(),
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            Err(fail(last_err("exec of the restore stub")))
        }
    }
}

/// The helper of [`restore_in_place`]: returns its exit code.
fn helper(
    target: i32,
    image: impl Read,
    value: i64,
    note: Option<&[u8]>,
    before_resume: &mut dyn FnMut() -> Result<(), CkptError>,
    rd: &OwnedFd,
    wr: &OwnedFd,
) -> i32 {
    let mut go = [0u8; 1];
    if read_exact(rd, &mut go).is_err() {
        return 1;
    }
    let mut reader = match seize_and_check(target, image) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            let msg = &msg.as_bytes()[..msg.len().min(1000)];
            let mut b = e.errno().to_ne_bytes().to_vec();
            b.extend_from_slice(&(msg.len() as u16).to_ne_bytes());
            b.extend_from_slice(msg);
            write_all(wr, &b);
            return 1;
        }
    };
    write_all(wr, &[0; 6]);
    let t = Tracee::new(target);
    let exec_stop = waitpid(t.nix_pid(), Some(WaitPidFlag::__WALL));
    if !matches!(
        exec_stop,
        Ok(WaitStatus::PtraceEvent(_, Signal::SIGTRAP, libc::PTRACE_EVENT_EXEC))
    ) {
        return 1;
    }
    // From here a failure must not leave the stub running.
    let _ = ptrace::setoptions(
        t.nix_pid(),
        ptrace::Options::PTRACE_O_EXITKILL | ptrace::Options::PTRACE_O_TRACEEXEC,
    );
    let h = reader.header().clone();
    let how = Inject { value, reserved: &[], in_place: true, note };
    match step_past_exec(&t).and_then(|()| inject(t, &h, &mut reader, &how, before_resume)) {
        Ok(_closed) => 0,
        Err(e) => {
            eprintln!("bproc: restoring pid {target} failed: {e}");
            // Kills the stub or the half-restored process, which cannot run.
            let _ = kill(Pid::from_raw(target), Signal::SIGKILL);
            1
        }
    }
}

/// Seizes the caller of [`restore_in_place`] (which asked for it), then reads and checks the
/// whole image (every chunk's checksum) while the caller can still be told: once it has
/// exec'd the stub, a failure can only kill it.
fn seize_and_check(
    target: i32,
    mut image: impl Read,
) -> Result<ImageReader<std::io::Cursor<Vec<u8>>>, CkptError> {
    ptrace::seize(Pid::from_raw(target), ptrace::Options::PTRACE_O_TRACEEXEC)
        .map_err(|e| nix_err(format!("cannot trace pid {target}"), e))?;
    let mut bytes = Vec::new();
    image.read_to_end(&mut bytes).map_err(|e| CkptError::sys("reading the image", e))?;
    bproc_image::read_image(&mut &bytes[..], |_, _, _| Ok(()))?;
    let reader = ImageReader::open(std::io::Cursor::new(bytes))?;
    check_machine(reader.header(), None)?;
    Ok(reader)
}

/// The exec event stops inside execve, whose return value would replace the first injected
/// call's number: runs the stub to its int3 first, then points it back at its syscall
/// instruction.
fn step_past_exec(t: &Tracee) -> Result<(), CkptError> {
    let mut r = t.regs()?;
    let entry = r.rip;
    r.rip = entry + 2;
    t.set_regs(&r)?;
    t.cont()?;
    match t.wait_stop()? {
        libc::SIGTRAP => {}
        sig => {
            return Err(CkptError::sys(
                format!("the restore stub stopped with signal {sig}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ))
        }
    }
    let mut r = t.regs()?;
    r.rip = entry;
    t.set_regs(&r)
}

/// The stub program in a new memfd, sealed: nothing can change it once written.
fn stub_memfd() -> Result<OwnedFd, CkptError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    let memfd = memfd_create(c"bproc-stub", flags).map_err(|e| nix_err("memfd_create", e))?;
    std::io::Write::write_all(
        &mut std::fs::File::from(memfd.try_clone().map_err(|e| CkptError::sys("dup", e))?),
        &stub_elf(),
    )
    .map_err(|e| CkptError::sys("writing the stub", e))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(memfd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
        .map_err(|e| nix_err("sealing the stub", e))?;
    Ok(memfd)
}

/// This process's stub program ([`stub_memfd`]), made once for all its restores: each
/// runs it from its fd.
fn stub_file() -> Result<std::os::fd::RawFd, CkptError> {
    static STUB: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = STUB.get() {
        return Ok(fd.as_raw_fd());
    }
    let made = stub_memfd()?;
    Ok(STUB.get_or_init(|| made).as_raw_fd())
}

fn comm_of(h: &Header) -> &str {
    if h.comm.is_empty() {
        "restored"
    } else {
        h.comm.as_str()
    }
}

/// The image's working directory, or `/` where it does not exist (as BProc did).
fn cwd_of<'h>(h: &'h Header, root: Option<&std::path::Path>) -> &'h str {
    if inside(root, &h.cwd).is_dir() {
        &h.cwd
    } else {
        "/"
    }
}

/// What an injection sets beyond the image.
struct Inject<'a> {
    /// What `checkpoint` returns in the restored process.
    value: i64,
    /// fds the image's files leave alone.
    reserved: &'a [i32],
    /// The tracee is the caller itself after exec: the working directory, umask and limits,
    /// which a new process got from its spawn, are set here.
    in_place: bool,
    /// The note for the process's mailbox.
    note: Option<&'a [u8]>,
}

/// Restores the image into the stopped stub `t` (at its entry point) and lets it go, after
/// `before_resume` (the last chance to fail, with the process still held).
fn inject<R: Read>(
    mut t: Tracee,
    h: &Header,
    reader: &mut ImageReader<R>,
    how: &Inject<'_>,
    before_resume: &mut dyn FnMut() -> Result<(), CkptError>,
) -> Result<Vec<String>, CkptError> {
    // Calls that need nothing of the one before go together: each batch costs a stop.
    let (at, stub_maps) = place_scratch(&mut t, h)?;
    let exe_fd = map_regions(&t, h, clear_stub(h, &stub_maps, at)?)?;
    // Large anonymous regions are filled through the process's userfaultfd, on small pages
    // that nothing zeroes first; without one, on huge pages where they are asked for.
    let filler = bproc_sys::uffd::available().then(Filler::default);
    // An image in memory shows all its chunks at once; a stream, one at a time.
    let asked = filler.is_none() && huge_pages_asked();
    let ahead = reader.chunks_ahead();
    let streamed = ahead.is_none();
    let mut huge = match ahead {
        Some(chunks) if asked => filled_spans(h, chunks),
        _ => Vec::new(),
    };
    advise(&t, &huge, libc::MADV_HUGEPAGE);
    let mut finish =
        write_pages(&t, h, reader, how.note, (asked && streamed).then_some(&mut huge), filler)?;
    advise(&t, &huge, libc::MADV_NOHUGEPAGE);
    set_process_state(&t, h, exe_fd, &mut finish)?;
    let reopened = || h.files.iter().any(|f| !how.reserved.contains(&f.fd));
    if !how.in_place && h.threads.is_empty() && !reopened() {
        // Nothing more runs in the process: the scratch pages go with the last batch.
        finish.run_unmapping(&t, at)?;
        before_resume()?;
        let_go(&t, h, how.value, Vec::new())?;
        return Ok(Vec::new());
    }
    finish.run(&t)?;
    if how.in_place {
        set_inherited(&t, h)?;
    }
    let closed = reopen_files(&t, h, how.reserved)?;
    // The other threads, each held until the end.
    let threads = make_threads(&t, h)?;
    before_resume()?;
    unmap_scratch(&t, at)?;
    let_go(&t, h, how.value, threads)?;
    Ok(closed)
}

/// Finds the restore's scratch pages: the stub's own, after its file's page, unless the
/// image has something there; then pages mapped where neither the stub nor the image has
/// anything. Points `t` at them; returns where they are and the stub's own mappings. Their
/// code goes in with the first batch ([`clear_stub`]'s).
fn place_scratch(t: &mut Tracee, h: &Header) -> Result<(u64, Vec<MapLine>), CkptError> {
    t.base = t.regs()?;
    t.gadget = t.base.rip;
    let stub_maps = match stub_maps_known(t, h) {
        Some(maps) => maps,
        None => t.maps()?,
    };
    let mut used: Vec<(u64, u64)> = h.regions.iter().map(|r| (r.start, r.end)).collect();
    used.extend(h.specials.iter().map(|s| (s.start, s.end)));
    let (len, own) = (SCRATCH_PAGES * PAGE, STUB_BASE + PAGE);
    let free = used.iter().all(|&(s, e)| e <= own || own + len <= s);
    let at = if free && t.gadget == STUB_BASE + ENTRY_AT {
        own
    } else {
        used.extend(stub_maps.iter().map(|m| (m.start, m.end)));
        let at = hole(&used, len, 0x10_0000)
            .ok_or_else(|| CkptError::Busy("no room for the restore's scratch pages".into()))?;
        // Executable from the start (the gadget's page), so that writing the code in takes
        // no further call; the pages go before the process runs.
        let rwx = RW | libc::PROT_EXEC as u64;
        let got = t.call(
            "mmap scratch",
            libc::SYS_mmap,
            [at, len, rwx, ANON | MAP_FIXED_NOREPLACE as u64, u64::MAX, 0],
        )?;
        if got != at {
            return Err(CkptError::Busy(format!("scratch landed at {got:#x}, not {at:#x}")));
        }
        at
    };
    t.gadget = at;
    t.scratch = at + PAGE;
    t.table = at + 2 * PAGE;
    Ok((at, stub_maps))
}

/// How much of the address space below the top of the stub's stack is taken as its stack
/// (it has 132 KiB; nothing else is mapped within a MiB of it: the vDSO is above it, or far
/// below with the other mappings).
const STUB_STACK: u64 = 1 << 20;

/// The stub's own mappings without reading `/proc/PID/maps` (an open and reads of a file the
/// kernel writes out each time, 8% of a node's restoring thread): its file's page and the
/// scratch pages after it, its stack, whose top the auxiliary vector's file name marks (the
/// kernel puts it last, 8 bytes below the top), and the vDSO pages, around where the
/// auxiliary vector has the vDSO, laid out as in the image, which this kernel made too.
/// `None` when something there is not as expected: then the maps are read.
fn stub_maps_known(t: &Tracee, h: &Header) -> Option<Vec<MapLine>> {
    const AT_EXECFN: u64 = 31;
    const AT_SYSINFO_EHDR: u64 = 33;
    if t.gadget != STUB_BASE + ENTRY_AT {
        return None;
    }
    let read = |at: u64, buf: &mut [u8]| t.peek_some(at, buf).ok();
    // argc, the argument and environment pointers, then the auxiliary vector.
    let mut top = [0u8; 2048];
    let got = read(t.base.rsp, &mut top)?;
    let words: Vec<u64> =
        top[..got].chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().unwrap())).collect();
    let argc = usize::try_from(*words.first()?).ok()?;
    let envp = 1 + argc.checked_add(1)?;
    let auxv = envp + words.get(envp..)?.iter().position(|w| *w == 0)? + 1;
    let (mut execfn, mut vdso) = (None, None);
    for pair in words.get(auxv..)?.chunks_exact(2) {
        match pair[0] {
            0 => break,
            AT_EXECFN => execfn = Some(pair[1]),
            AT_SYSINFO_EHDR => vdso = Some(pair[1]),
            _ => {}
        }
    }
    let execfn = execfn?;
    let mut name = [0u8; 256];
    let got = read(execfn, &mut name)?;
    let end = execfn + name[..got].iter().position(|b| *b == 0)? as u64 + 1 + 8;
    if !end.is_multiple_of(PAGE) || end <= t.base.rsp {
        return None;
    }
    let line = |start: u64, end: u64, name: &str| MapLine {
        start,
        end,
        perms: *b"----",
        offset: 0,
        inode: 0,
        name: name.to_owned(),
    };
    let mut maps = vec![
        line(STUB_BASE, STUB_BASE + PAGE, "bproc-stub"),
        line(STUB_BASE + PAGE, STUB_BASE + (1 + SCRATCH_PAGES) * PAGE, ""),
        line(end - STUB_STACK, end, "[stack]"),
    ];
    if !h.specials.is_empty() {
        let (vdso, theirs) = (vdso?, h.specials.iter().find(|s| s.name == "[vdso]")?);
        for s in &h.specials {
            let start = (vdso + s.start).checked_sub(theirs.start)?;
            maps.push(line(start, start + (s.end - s.start), &s.name));
        }
    }
    Some(maps)
}

/// The calls that unmap the stub's mappings, leaving only the kernel's own and the scratch
/// pages (at `at`), and move the vDSO to where the image had it.
fn clear_stub(h: &Header, stub_maps: &[MapLine], at: u64) -> Result<Batch, CkptError> {
    let kernel_made = |m: &MapLine| {
        m.name.starts_with("[vdso") || m.name.starts_with("[vvar") || m.name == "[vsyscall]"
    };
    let scratch = |m: &MapLine| at <= m.start && m.end <= at + SCRATCH_PAGES * PAGE;
    let mut b = Batch { code: Some(at), ..Batch::default() };
    for m in stub_maps.iter().filter(|m| !kernel_made(m) && !scratch(m)) {
        b.push("munmap stub", libc::SYS_munmap, [m.start, m.end - m.start, 0, 0, 0, 0]);
    }
    move_specials(h, stub_maps, at, &mut b)?;
    Ok(b)
}

/// Adds to `first` the calls that map every region of the image, writable until its pages
/// are in (each file mapped by reference opened once, into a slot that its maps and its close
/// read; the rest anonymous) and set the memory layout ([`push_mm_map`]), and runs them all
/// together. Returns the fd of the executable, opened for that, if it could be; it stays
/// open for the caller to close.
fn map_regions(t: &Tracee, h: &Header, first: Batch) -> Result<Option<u64>, CkptError> {
    let paths: Vec<&str> = named_files(h).into_iter().map(|(p, ..)| p).collect();
    let mut b = first;
    let ro = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    // As many files at a time as there are slots: nearly always all of them.
    let groups = paths.chunks(SLOTS);
    let last = groups.len().saturating_sub(1);
    for (g, group) in groups.enumerate() {
        for (i, path) in group.iter().enumerate() {
            let p = b.string(t, path)?;
            let args = [libc::AT_FDCWD as u64, p, ro, 0, 0, t.slot(i)];
            b.push_flagged(format!("open {path}"), libc::SYS_openat, args, flag::KEEP);
        }
        for r in &h.regions {
            let Source::File { path, offset, .. } = &r.source else { continue };
            let Some(i) = group.iter().position(|p| p == path) else { continue };
            let prot = u64::from(r.prot) | RW;
            let flags = (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64;
            let args = [r.start, r.end - r.start, prot, flags, t.slot(i), *offset];
            b.push_flagged(format!("map {path}"), libc::SYS_mmap, args, flag::ARG5_FROM_SLOT);
        }
        for i in 0..group.len() {
            let args = [t.slot(i), 0, 0, 0, 0, 0];
            b.push_flagged("close", libc::SYS_close, args, flag::ARG1_FROM_SLOT);
        }
        if g != last {
            // The next group takes the slots again.
            std::mem::take(&mut b).run(t)?;
        }
    }
    for r in h.regions.iter().filter(|r| !matches!(r.source, Source::File { .. })) {
        let grows = if r.stack { libc::MAP_GROWSDOWN as u64 } else { 0 };
        let flags = ANON | libc::MAP_FIXED as u64 | grows;
        b.push("map region", libc::SYS_mmap, [r.start, r.end - r.start, RW, flags, u64::MAX, 0]);
    }
    // The executable, opened straight into the layout's field for it; either may fail.
    let exe = (!h.exe.is_empty()).then_some(h.exe.as_str());
    let (exe_at, map) = put_mm_map(&mut b, t, h, exe)?;
    let opened = exe_at.map(|p| {
        let args = [libc::AT_FDCWD as u64, p, ro, 0, 0, map + MM_MAP_LEN - 4];
        b.push_flagged("open exe", libc::SYS_openat, args, flag::KEEP | flag::MAY_FAIL)
    });
    let set = push_mm_map(&mut b, map, flag::MAY_FAIL);
    let got = b.run(t)?;
    let exe_fd = opened.map(|i| got[i]).filter(|fd| *fd != u64::MAX);
    if got[set] == u64::MAX {
        // Without the executable (naming it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE,
        // and it may be gone), /proc/PID/exe names the stub and the rest is right; a
        // failure again is the error.
        let mut b = Batch::default();
        let (_, map) = put_mm_map(&mut b, t, h, None)?;
        push_mm_map(&mut b, map, 0);
        b.run(t)?;
    }
    Ok(exe_fd)
}

/// Whether this kernel gives huge pages only where asked. Then the huge-page-aligned spans
/// of anonymous memory that the image's chunks fill whole are asked for them: written as
/// huge pages, they take one fault each rather than 512 (faults were most of a restore's
/// time on a node). Read once per process.
fn huge_pages_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| mode.contains("[madvise]"))
    })
}

/// The huge-page-aligned spans of anonymous regions (stacks aside) that `chunks` fill.
fn filled_spans(h: &Header, chunks: Vec<(u64, u32)>) -> Vec<(u64, u64)> {
    // Runs of contiguous chunks (they come in address order).
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (addr, len) in chunks {
        match runs.last_mut() {
            Some(last) if last.1 == addr => last.1 += u64::from(len),
            _ => runs.push((addr, addr + u64::from(len))),
        }
    }
    let mut spans = Vec::new();
    for r in h.regions.iter().filter(|r| !matches!(r.source, Source::File { .. }) && !r.stack) {
        for &(start, end) in &runs {
            let (s, e) =
                (start.max(r.start).next_multiple_of(HUGE_PAGE), end.min(r.end) & !(HUGE_PAGE - 1));
            if s < e {
                spans.push((s, e));
            }
        }
    }
    spans
}

/// Gives `spans` of the tracee the advice `how` (`MADV_HUGEPAGE` before the pages are
/// written, `MADV_NOHUGEPAGE` after: the pages stay huge, and the process's later faults
/// there get small pages as they would have). Failing changes only how pages are backed.
fn advise(t: &Tracee, spans: &[(u64, u64)], how: i32) {
    let mut b = Batch::default();
    for &(s, e) in spans {
        b.push("madvise", libc::SYS_madvise, [s, e - s, how as u64, 0, 0, 0]);
    }
    if !spans.is_empty() {
        let _ = b.run(t);
    }
}

/// How much of a chunk is checked and written at a time: small enough that the check leaves
/// it in the cache for the write (a chunk is up to 4 MiB). A failed check kills the process
/// the pages were written into.
const PIECE: usize = 256 << 10;

/// Writes the image's pages (and `note`, into the mailbox); returns the calls that give each
/// region its own protection. With `huge`, each chunk's whole huge pages are asked for before it is
/// written, and added to `huge` (a stream's chunks, known only as they come; the dump cuts
/// long runs of pages at huge-page boundaries, so a chunk holds each of them whole). With a
/// `filler`, the pages of its regions go through it.
fn write_pages<R: Read>(
    t: &Tracee,
    h: &Header,
    reader: &mut ImageReader<R>,
    note: Option<&[u8]>,
    mut huge: Option<&mut Vec<(u64, u64)>>,
    mut filler: Option<Filler>,
) -> Result<Batch, CkptError> {
    let (mut buf, mut staged) = SPARE.take();
    let mut each = |p: bproc_image::Piece<'_>| {
        if let Some(huge) = huge.as_deref_mut().filter(|_| p.at == p.chunk.0) {
            let spans = filled_spans(h, vec![p.chunk]);
            advise(t, &spans, libc::MADV_HUGEPAGE);
            huge.extend(spans);
        }
        if let Some(f) = filler.as_mut().filter(|_| p.at == p.chunk.0) {
            f.chunk(t, h, p.chunk, &mut staged)?;
        }
        let filled = filler.as_mut().map_or(0, |f| f.write(p.at, p.data));
        if filled == p.data.len() {
            return Ok(());
        }
        staged.write(t, p.at + filled as u64, &p.data[filled..])
    };
    let read = (|| {
        while reader.next_chunk_pieces(&mut buf, PIECE, &mut each)? {}
        Ok::<(), CkptError>(())
    })();
    // Registered ranges end before anything else writes the process (the note below).
    if let Some(f) = filler {
        f.end();
    }
    read?;
    staged.flush(t)?;
    if buf.capacity() <= SPARE_MAX && staged.bytes.capacity() <= SPARE_MAX {
        SPARE.set((buf, staged));
    }
    if let (Some(note), (at, len)) = (note, h.mailbox) {
        if at != 0 && len > 0 {
            let n = note.len().min(len as usize - 1);
            let mut b = note[..n].to_vec();
            b.push(0);
            t.poke(at, &b)?;
        }
    }
    let mut b = Batch::default();
    for r in h.regions.iter().filter(|r| u64::from(r.prot) != RW) {
        b.push(
            "mprotect",
            libc::SYS_mprotect,
            [r.start, r.end - r.start, u64::from(r.prot), 0, 0, 0],
        );
    }
    Ok(b)
}

/// The restored process's anonymous regions that large chunks of the image fill, registered
/// with a userfaultfd that the process makes (see [`bproc_sys::uffd`]) while the image's
/// pages are written: each page is then made holding its bytes, where `process_vm_writev`
/// has the kernel zero it first (and on huge pages, 2 MiB of fresh memory at a time, which
/// on a virtual machine is dear: 64 MiB took 45–120 ms so against 18–20 ms). A small image
/// never makes one: its pages go in the gathered writes of [`Staged`].
#[derive(Default)]
struct Filler {
    uffd: Option<bproc_sys::uffd::Uffd>,
    /// The process could not make or give one: pages go the other way.
    failed: bool,
    /// The registered regions, in address order.
    spans: Vec<(u64, u64)>,
}

impl Filler {
    /// A chunk this long or longer has its region registered.
    const MIN_CHUNK: u32 = 1 << 20;

    /// Called before the first piece of each chunk: registers the chunk's region if the
    /// chunk is large and the region anonymous (the stack aside), making the process's
    /// userfaultfd the first time. What `staged` holds is written first, as a registered
    /// region's missing pages take no other writes.
    fn chunk(
        &mut self,
        t: &Tracee,
        h: &Header,
        (at, len): (u64, u32),
        staged: &mut Staged,
    ) -> Result<(), CkptError> {
        if self.failed || len < Self::MIN_CHUNK || self.span_of(at, at + 1).is_some() {
            return Ok(());
        }
        let Some(r) = h.regions.iter().find(|r| r.start <= at && at < r.end) else {
            return Ok(());
        };
        if matches!(r.source, Source::File { .. }) || r.stack {
            return Ok(());
        }
        if self.uffd.is_none() {
            self.uffd = Self::make(t)?;
            self.failed = self.uffd.is_none();
        }
        let Some(uffd) = &self.uffd else { return Ok(()) };
        staged.flush(t)?;
        if uffd.register(r.start, r.end - r.start).is_ok() {
            let i = self.spans.partition_point(|&(s, _)| s < r.start);
            self.spans.insert(i, (r.start, r.end));
        }
        Ok(())
    }

    /// Has the process make a userfaultfd and takes it; `None` if it could not.
    fn make(t: &Tracee) -> Result<Option<bproc_sys::uffd::Uffd>, CkptError> {
        let flags = libc::O_CLOEXEC as u64 | bproc_sys::uffd::USER_MODE_ONLY;
        let Ok(fd) = t.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]) else {
            return Ok(None);
        };
        let taken = bproc_sys::uffd::Uffd::take(t.pid, fd as i32);
        // The process's own descriptor goes at once: the image says which fds it has.
        t.call("close userfaultfd", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        Ok(taken.ok())
    }

    /// The registered region holding `[at, end)` whole.
    fn span_of(&self, at: u64, end: u64) -> Option<usize> {
        let i = self.spans.partition_point(|&(_, e)| e <= at);
        self.spans.get(i).is_some_and(|&(s, e)| s <= at && end <= e).then_some(i)
    }

    /// Writes what it can of `data` at `at` and returns how much: all of it when a
    /// registered region holds it, none when none does. On a failure (a page there
    /// already) every region is let go, and the rest is written the other way.
    fn write(&mut self, at: u64, data: &[u8]) -> usize {
        let (Some(uffd), Some(_)) = (&self.uffd, self.span_of(at, at + data.len() as u64)) else {
            return 0;
        };
        match uffd.copy(at, data) {
            Ok(()) => data.len(),
            Err((done, _)) => {
                self.unregister();
                self.failed = true;
                done
            }
        }
    }

    fn unregister(&mut self) {
        if let Some(uffd) = &self.uffd {
            for (s, e) in self.spans.drain(..) {
                let _ = uffd.unregister(s, e - s);
            }
        }
    }

    /// Lets every region go: from here their faults are the kernel's as usual. (Closing the
    /// descriptor would too.)
    fn end(mut self) {
        self.unregister();
    }
}

thread_local! {
    /// The page buffers of the thread's last restore, kept for its next one (a slave restores
    /// on one thread): grown afresh, they cost each restore its reallocations, copies and
    /// page faults, and the allocator's trimming after.
    static SPARE: std::cell::Cell<(Vec<u8>, Staged)> = const {
        std::cell::Cell::new((Vec::new(), Staged { bytes: Vec::new(), spans: Vec::new() }))
    };
}

/// The most of either buffer kept between restores (a small image's fit).
const SPARE_MAX: usize = 512 << 10;

/// Small pieces of pages gathered to be written together: a small image is mostly short
/// runs of pages, each a system call of its own otherwise.
#[derive(Default)]
struct Staged {
    bytes: Vec<u8>,
    /// Where each piece goes and its length, in `bytes` in turn.
    spans: Vec<(u64, usize)>,
}

impl Staged {
    /// Pieces up to this long are gathered; longer ones are written at once.
    const SMALL: usize = 64 << 10;
    /// Gathered bytes or pieces that are written together at most.
    const BYTES: usize = 1 << 20;
    const PIECES: usize = 512;

    fn write(&mut self, t: &Tracee, at: u64, data: &[u8]) -> Result<(), CkptError> {
        if data.len() > Self::SMALL {
            self.flush(t)?;
            return t.poke(at, data);
        }
        self.bytes.extend_from_slice(data);
        self.spans.push((at, data.len()));
        if self.bytes.len() >= Self::BYTES || self.spans.len() >= Self::PIECES {
            self.flush(t)?;
        }
        Ok(())
    }

    fn flush(&mut self, t: &Tracee) -> Result<(), CkptError> {
        let mut from = 0;
        let parts: Vec<(u64, &[u8])> = self
            .spans
            .iter()
            .map(|&(at, len)| {
                from += len;
                (at, &self.bytes[from - len..from])
            })
            .collect();
        if !parts.is_empty() {
            t.poke_all(&parts)?;
        }
        self.bytes.clear();
        self.spans.clear();
        Ok(())
    }
}

/// Adds to `b` the calls that close `exe_fd` (the executable, opened for [`push_mm_map`])
/// and set the process's name, signal actions, alternate stack, rseq area, robust list, tid
/// address and personality.
fn set_process_state(
    t: &Tracee,
    h: &Header,
    exe_fd: Option<u64>,
    b: &mut Batch,
) -> Result<(), CkptError> {
    if let Some(fd) = exe_fd {
        b.push("close exe", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    }
    let comm = b.string(t, &h.comm)?;
    b.push("PR_SET_NAME", libc::SYS_prctl, [libc::PR_SET_NAME as u64, comm, 0, 0, 0, 0]);
    for a in &h.sigactions {
        let k =
            KSigAction { handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask };
        // SAFETY: KSigAction is plain old data; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&k as *const KSigAction).cast::<u8>(),
                std::mem::size_of::<KSigAction>(),
            )
        };
        let at = b.put(t, bytes)?;
        let what = format!("rt_sigaction {}", a.signal);
        b.push(what, libc::SYS_rt_sigaction, [u64::from(a.signal), at, 0, 8, 0, 0]);
    }
    push_altstack(b, t, h.altstack)?;
    if h.rseq.0 != 0 {
        let args = [h.rseq.0, u64::from(h.rseq.1), 0, u64::from(h.rseq.2), 0, 0];
        b.push("rseq", libc::SYS_rseq, args);
    }
    if h.robust_list.0 != 0 {
        let args = [h.robust_list.0, h.robust_list.1, 0, 0, 0, 0];
        b.push("set_robust_list", libc::SYS_set_robust_list, args);
    }
    if h.tid_address != 0 {
        b.push("set_tid_address", libc::SYS_set_tid_address, [h.tid_address, 0, 0, 0, 0, 0]);
    }
    if h.personality != 0 {
        b.push("personality", libc::SYS_personality, [u64::from(h.personality), 0, 0, 0, 0, 0]);
    }
    Ok(())
}

/// The restore's data page is full.
fn page_full() -> CkptError {
    CkptError::Busy("the restore's data page overflowed".into())
}

/// Adds the `sigaltstack` call for `altstack` (`ss_sp`, `ss_flags`, `ss_size`) to `b`, when
/// there is one.
fn push_altstack(b: &mut Batch, t: &Tracee, altstack: (u64, i32, u64)) -> Result<(), CkptError> {
    let (ss_sp, ss_flags, ss_size) = altstack;
    if ss_size > 0 && ss_flags & libc::SS_DISABLE == 0 {
        let mut ss = Vec::with_capacity(24);
        ss.extend_from_slice(&ss_sp.to_ne_bytes());
        ss.extend_from_slice(&(ss_flags & !libc::SS_ONSTACK).to_ne_bytes());
        ss.extend_from_slice(&0u32.to_ne_bytes());
        ss.extend_from_slice(&ss_size.to_ne_bytes());
        let at = b.put(t, &ss)?;
        b.push("sigaltstack", libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0]);
    }
    Ok(())
}

/// For a restore in place: the working directory, umask and limits, which a new process
/// got from its spawn.
fn set_inherited(t: &Tracee, h: &Header) -> Result<(), CkptError> {
    let p = t.string(cwd_of(h, None))?;
    t.call("chdir", libc::SYS_chdir, [p, 0, 0, 0, 0, 0])?;
    t.call("umask", libc::SYS_umask, [u64::from(h.umask), 0, 0, 0, 0, 0])?;
    for &(res, soft, hard) in &h.rlimits {
        let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: prlimit on our tracee with a valid limit; a limit the caller may not
        // raise stays as it is.
        unsafe { libc::prlimit(t.pid, res as _, &lim, std::ptr::null_mut()) };
    }
    Ok(())
}

/// Reopens the image's files at their fds, except the `reserved` ones. A file the image had
/// open but this machine lacks (or denies) is left closed, as BProc left what it could not
/// carry; returns which, for the caller to hear.
fn reopen_files(t: &Tracee, h: &Header, reserved: &[i32]) -> Result<Vec<String>, CkptError> {
    let mut closed = Vec::new();
    for f in h.files.iter().filter(|f| !reserved.contains(&f.fd)) {
        let p = t.string(&f.path)?;
        let fd = match t.call(
            &format!("reopen {} (fd {})", f.path, f.fd),
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, p, (f.flags & !libc::O_CLOEXEC) as u64, 0, 0, 0],
        ) {
            Ok(fd) => fd,
            Err(CkptError::Sys { source, .. }) if cannot_open(&source) => {
                closed.push(format!("fd {} ({}) left closed: {source}", f.fd, f.path));
                continue;
            }
            Err(e) => return Err(e),
        };
        if f.offset != 0 {
            // Devices that cannot seek keep their position at 0.
            let _ =
                t.call("lseek", libc::SYS_lseek, [fd, f.offset, libc::SEEK_SET as u64, 0, 0, 0]);
        }
        if fd != f.fd as u64 {
            t.call(
                "dup3",
                libc::SYS_dup3,
                [fd, f.fd as u64, (f.flags & libc::O_CLOEXEC) as u64, 0, 0, 0],
            )?;
            t.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        } else if f.flags & libc::O_CLOEXEC != 0 {
            t.call(
                "fcntl",
                libc::SYS_fcntl,
                [fd, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(closed)
}

/// Removes the gadget and scratch pages (at `at`) with the last injected call: the int3
/// after it then faults, which the next registers make moot.
fn unmap_scratch(t: &Tracee, at: u64) -> Result<(), CkptError> {
    let mut r = t.base;
    r.rip = t.gadget;
    r.rax = libc::SYS_munmap as u64;
    r.orig_rax = u64::MAX;
    (r.rdi, r.rsi) = (at, SCRATCH_PAGES * PAGE);
    t.set_regs(&r)?;
    t.cont()?;
    let sig = t.wait_stop()?;
    if sig != libc::SIGSEGV {
        return Err(CkptError::sys(
            format!("unmapping the scratch pages stopped with signal {sig}"),
            std::io::Error::from_raw_os_error(libc::EFAULT),
        ));
    }
    Ok(())
}

/// Loads the saved registers (the dump's return value `value`, its stack pointer, resume
/// address and thread pointers) and signal mask, and lets the process and its `threads` go.
fn let_go(t: &Tracee, h: &Header, value: i64, threads: Vec<i32>) -> Result<(), CkptError> {
    let mut fin = t.base;
    (fin.rax, fin.rbx, fin.rcx, fin.rdx, fin.rsi, fin.rdi, fin.rbp) =
        (value as u64, 0, 0, 0, 0, 0, 0);
    (fin.r8, fin.r9, fin.r10, fin.r11, fin.r12, fin.r13, fin.r14, fin.r15) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    fin.rsp = h.rsp;
    fin.rip = h.rip;
    fin.orig_rax = u64::MAX;
    fin.fs_base = h.fs_base;
    fin.gs_base = h.gs_base;
    fin.eflags = 0x246;
    t.set_regs(&fin)?;
    t.set_sigmask(h.sigmask, "PTRACE_SETSIGMASK")?;
    // Suppresses the pending SIGSEGV.
    ptrace::detach(t.nix_pid(), None).map_err(|e| nix_err("PTRACE_DETACH", e))?;
    for tid in threads {
        // A thread we made and set up. The process, let go, may have ended already (a
        // child that exits at once): the thread, killed while held, is then a zombie only
        // its tracer reaps, and until it is, the process's end is not reported.
        let tid = Pid::from_raw(tid);
        if ptrace::detach(tid, None).is_err() {
            let _ = waitpid(tid, Some(WaitPidFlag::__WALL));
        }
    }
    MADE.with(|m| m.borrow_mut().clear());
    Ok(())
}

thread_local! {
    /// The threads [`make_thread`] made in the process being restored by this thread, which
    /// a failed restore must reap before the process itself.
    static MADE: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Kills our traced child `pid` and reaps it: first the threads made in it, which we trace
/// too (a thread group's leader is not reaped before them).
fn kill_and_reap(pid: i32) {
    let tids = MADE.with(|m| std::mem::take(&mut *m.borrow_mut()));
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for tid in tids {
        let _ = waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL));
    }
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL));
}

/// `PTRACE_GETREGSET`/`SETREGSET` note type of the `xsave` area.
const NT_X86_XSTATE: libc::c_int = 0x202;

/// Makes the image's other threads in the stopped process `t` (whose own state is already
/// restored): for each, a `clone3` run from `t` (with the thread's old id where this pid
/// namespace allows it; else glibc's cached id is corrected through [`Header::tid_slot`]),
/// traced from its first instruction ([`libc::PTRACE_O_TRACECLONE`]); then, in the new
/// thread, its robust list, tid address, rseq area and alternate stack; then its registers,
/// FPU state and signal mask. Returns the threads, held until the caller lets them go.
fn make_threads(t: &Tracee, h: &Header) -> Result<Vec<i32>, CkptError> {
    if h.threads.is_empty() {
        return Ok(Vec::new());
    }
    let opts = ptrace::Options::PTRACE_O_EXITKILL | ptrace::Options::PTRACE_O_TRACECLONE;
    ptrace::setoptions(t.nix_pid(), opts).map_err(|e| nix_err("PTRACE_SETOPTIONS", e))?;
    MADE.with(|m| m.borrow_mut().clear());
    for th in &h.threads {
        make_thread(t, h, th)?;
    }
    Ok(MADE.with(|m| m.borrow().clone()))
}

/// One thread of [`make_threads`]; returns its id.
fn make_thread(t: &Tracee, h: &Header, th: &bproc_image::Thread) -> Result<i32, CkptError> {
    let what = format!("making thread {}", th.tid);
    let (tid, ns_tid) = clone_thread(t, th, &what)?;
    let new =
        Tracee { pid: tid, base: t.base, gadget: t.gadget, scratch: t.scratch, table: t.table };
    // Its first stop (SIGSTOP, or an event stop when seized).
    new.wait_event()?;
    let mut base = new.regs()?;
    base.rsp = t.base.rsp;
    let new = Tracee { base, ..new };
    set_thread_state(&new, h, th, ns_tid)?;
    set_thread_regs(&new, th, &what)?;
    Ok(tid)
}

/// Runs `clone3` in `t` for thread `th`, with its old id when this pid namespace allows it,
/// else with any; returns the new thread's id as this tracer sees it, and as the process's
/// own pid namespace does.
fn clone_thread(t: &Tracee, th: &bproc_image::Thread, what: &str) -> Result<(i32, i32), CkptError> {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let mut tid = 0;
    for want in [Some(th.tid), None] {
        let tid_at = t.scratch + 256;
        t.poke(tid_at, &(th.tid as u64).to_ne_bytes())?;
        let args = CloneArgs {
            flags,
            set_tid: if want.is_some() { tid_at } else { 0 },
            set_tid_size: u64::from(want.is_some()),
            ..Default::default()
        };
        let bytes = args.as_bytes();
        t.poke(t.scratch, bytes)?;
        let mut r = t.base;
        r.rip = t.gadget;
        r.rax = 435; // clone3
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi) = (t.scratch, bytes.len() as u64);
        t.set_regs(&r)?;
        t.cont()?;
        let (mut sig, event) = t.wait_event()?;
        if event == libc::PTRACE_EVENT_CLONE {
            tid = ptrace::getevent(t.nix_pid()).unwrap_or(0) as i32;
            // On to the gadget's int3.
            t.cont()?;
            sig = t.wait_event()?.0;
        }
        if sig != libc::SIGTRAP {
            return Err(CkptError::sys(
                format!("{what}: stopped with signal {sig}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        if tid > 0 {
            MADE.with(|m| m.borrow_mut().push(tid));
        }
        // Its id in the process's own pid namespace (`tid` is the one this tracer sees).
        let rax = t.regs()?.rax as i64;
        if rax > 0 && tid > 0 {
            return Ok((tid, rax as i32));
        }
        let e = std::io::Error::from_raw_os_error((-rax) as i32);
        // Another id is fine (glibc's copy is corrected later); other failures are not.
        if want.is_none() || !matches!(-rax as i32, libc::EPERM | libc::EEXIST | libc::EINVAL) {
            return Err(CkptError::sys(what, e));
        }
    }
    // Not reached: the second attempt returns either way.
    Err(CkptError::sys(what, std::io::Error::from_raw_os_error(libc::EAGAIN)))
}

/// Sets the new thread's robust list, tid address, rseq area and alternate stack, and
/// corrects glibc's copy of its id when it could not keep its old one (`ns_tid` is the new).
fn set_thread_state(
    new: &Tracee,
    h: &Header,
    th: &bproc_image::Thread,
    ns_tid: i32,
) -> Result<(), CkptError> {
    let mut b = Batch::default();
    if th.robust_list.0 != 0 {
        let args = [th.robust_list.0, th.robust_list.1, 0, 0, 0, 0];
        b.push("set_robust_list", libc::SYS_set_robust_list, args);
    }
    if th.tid_address != 0 {
        b.push("set_tid_address", libc::SYS_set_tid_address, [th.tid_address, 0, 0, 0, 0, 0]);
    }
    if th.rseq.0 != 0 {
        let args = [th.rseq.0, u64::from(th.rseq.1), 0, u64::from(th.rseq.2), 0, 0];
        b.push("rseq", libc::SYS_rseq, args);
    }
    push_altstack(&mut b, new, th.altstack)?;
    b.run(new)?;
    if ns_tid != th.tid && h.tid_slot != 0 {
        // glibc's own copy of the thread's id, which pthread_kill and mutexes use.
        let at = th.regs[bproc_image::reg::FS_BASE] + u64::from(h.tid_slot);
        new.poke(at, &ns_tid.to_ne_bytes())?;
    }
    Ok(())
}

/// Loads the new thread's registers as they were when it was stopped for the dump (the
/// segment selectors stay the kernel's), its FPU state and its signal mask.
fn set_thread_regs(new: &Tracee, th: &bproc_image::Thread, what: &str) -> Result<(), CkptError> {
    use bproc_image::reg;
    let g = &th.regs;
    let mut fin = new.regs()?;
    (fin.r15, fin.r14, fin.r13, fin.r12, fin.rbp, fin.rbx) = (g[0], g[1], g[2], g[3], g[4], g[5]);
    (fin.r11, fin.r10, fin.r9, fin.r8, fin.rax, fin.rcx) = (g[6], g[7], g[8], g[9], g[10], g[11]);
    (fin.rdx, fin.rsi, fin.rdi) = (g[12], g[13], g[14]);
    fin.orig_rax = u64::MAX;
    fin.rip = g[reg::RIP];
    fin.eflags = g[18];
    fin.rsp = g[reg::RSP];
    fin.fs_base = g[reg::FS_BASE];
    fin.gs_base = g[22];
    new.set_regs(&fin)?;
    if th.xstate.len() >= 512 {
        let mut iov = libc::iovec {
            iov_base: th.xstate.as_ptr() as *mut libc::c_void,
            iov_len: th.xstate.len(),
        };
        // nix's register sets stop at the legacy FP area: the xsave area is a raw request.
        // SAFETY: PTRACE_SETREGSET reads `iov_len` bytes from a live buffer.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                new.pid,
                NT_X86_XSTATE,
                &mut iov as *mut libc::iovec,
            )
        };
        if r != 0 {
            // The legacy area alone (x87 and SSE); nix's NT_PRFPREG set would want the saved
            // bytes as a user_fpregs_struct, an unsafe read of its own.
            // SAFETY: PTRACE_SETFPREGS reads 512 bytes (user_fpregs_struct) from the buffer.
            if unsafe { libc::ptrace(libc::PTRACE_SETFPREGS, new.pid, 0, th.xstate.as_ptr()) } != 0
            {
                return Err(last_err(format!("{what}: PTRACE_SETFPREGS")));
            }
        }
    }
    new.set_sigmask(th.sigmask, &format!("{what}: PTRACE_SETSIGMASK"))
}

/// Whether `e`, from reopening a file, means this machine lacks it or denies it (rather than
/// a failure of the restore itself).
fn cannot_open(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::EPERM
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ENXIO
                | libc::ENODEV
                | libc::EROFS
                | libc::ETXTBSY
                | libc::EISDIR
                | libc::ENAMETOOLONG
        )
    )
}

/// Moves the vDSO and vvar pages, as a group keeping their offsets, to where the image had
/// them (glibc keeps pointers into the vDSO).
fn move_specials(
    h: &Header,
    stub_maps: &[MapLine],
    scratch: u64,
    b: &mut Batch,
) -> Result<(), CkptError> {
    let here: Vec<&MapLine> = stub_maps
        .iter()
        .filter(|m| m.name.starts_with("[vdso") || m.name.starts_with("[vvar"))
        .collect();
    if h.specials.is_empty() || here.is_empty() {
        return Ok(());
    }
    let (cmin, imin) = (
        here.iter().map(|m| m.start).min().unwrap_or(0),
        h.specials.iter().map(|s| s.start).min().unwrap_or(0),
    );
    let same = here.len() == h.specials.len()
        && here.iter().all(|m| {
            h.specials.iter().any(|s| {
                s.name == m.name
                    && s.start - imin == m.start - cmin
                    && s.end - s.start == m.end - m.start
            })
        });
    if !same {
        return Err(CkptError::Machine("the vDSO and vvar pages are laid out differently".into()));
    }
    if cmin == imin {
        return Ok(());
    }
    let span = here.iter().map(|m| m.end).max().unwrap_or(0) - cmin;
    // Straight there, unless the group would land on itself: then by a hole free in both.
    let hops = if cmin + span <= imin || imin + span <= cmin {
        vec![(cmin, imin)]
    } else {
        let mut used: Vec<(u64, u64)> = h.regions.iter().map(|r| (r.start, r.end)).collect();
        used.extend(h.specials.iter().map(|s| (s.start, s.end)));
        used.extend(here.iter().map(|m| (m.start, m.end)));
        used.push((scratch, scratch + SCRATCH_PAGES * PAGE));
        let tmp = hole(&used, span, 0x10_0000)
            .ok_or_else(|| CkptError::Busy("no room to move the vDSO".into()))?;
        vec![(cmin, tmp), (tmp, imin)]
    };
    for (from, to) in hops {
        for m in &here {
            let len = m.end - m.start;
            let off = m.start - cmin;
            b.push(
                "mremap vdso",
                libc::SYS_mremap,
                [from + off, len, len, MREMAP_MAYMOVE_FIXED, to + off, 0],
            );
        }
    }
    Ok(())
}

/// Puts in `b`'s data page, all at once, the path `exe` when given and the structure that
/// `PR_SET_MM_MAP` reads ([`push_mm_map`]: brk, stack, argument and environment bounds, the
/// auxiliary vector, and an executable fd of -1, none, unless a call keeps one there);
/// returns where the path is, and where the structure is.
fn put_mm_map(
    b: &mut Batch,
    t: &Tracee,
    h: &Header,
    exe: Option<&str>,
) -> Result<(Option<u64>, u64), CkptError> {
    let mut bytes = match exe {
        Some(p) => c_string(p)?,
        None => Vec::new(),
    };
    bytes.resize(bytes.len().next_multiple_of(8), 0);
    let auxv_off = bytes.len() as u64;
    let auxv: Vec<u64> = h.auxv.iter().flat_map(|(k, v)| [*k, *v]).chain([0, 0]).collect();
    bytes.extend(auxv.iter().flat_map(|v| v.to_ne_bytes()));
    let map_off = bytes.len() as u64;
    if map_off + MM_MAP_LEN > PAGE {
        return Err(CkptError::Busy("auxiliary vector too long".into()));
    }
    // The structure holds the auxiliary vector's address: where the page will have it.
    let at = b.put(t, &vec![0; (map_off + MM_MAP_LEN) as usize])?;
    for v in h.mm.to_array().into_iter().chain([at + auxv_off]) {
        bytes.extend_from_slice(&v.to_ne_bytes());
    }
    bytes.extend_from_slice(&(auxv.len() as u32 * 8).to_ne_bytes());
    bytes.extend_from_slice(&u32::MAX.to_ne_bytes());
    let off = (at - t.scratch) as usize;
    b.data[off..off + bytes.len()].copy_from_slice(&bytes);
    Ok((exe.map(|_| at), at + map_off))
}

/// The size of `struct prctl_mm_map`: 12 addresses, the auxiliary vector's size and the
/// executable's fd (its last field).
const MM_MAP_LEN: u64 = 12 * 8 + 4 + 4;

/// Adds the `PR_SET_MM_MAP` call reading the structure at `map` ([`put_mm_map`]) with
/// `flags`; returns its place among the results.
fn push_mm_map(b: &mut Batch, map: u64, flags: u64) -> usize {
    let args = [PR_SET_MM as u64, PR_SET_MM_MAP, map, MM_MAP_LEN, 0, 0];
    b.push_flagged("PR_SET_MM_MAP", libc::SYS_prctl, args, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_skip_used_ranges() {
        let used = [(0x10_0000, 0x10_2000), (0x10_3000, 0x20_0000)];
        assert_eq!(hole(&used, PAGE, 0x10_0000), Some(0x10_2000));
        assert_eq!(hole(&used, 2 * PAGE, 0x10_0000), Some(0x20_0000));
        assert_eq!(hole(&[], PAGE, 0x10_0000), Some(0x10_0000));
    }

    /// Only whole huge pages of anonymous memory that the chunks fill, however the chunks
    /// split it, are written as huge pages.
    #[test]
    fn huge_pages_only_where_the_chunks_fill_them() {
        let region = |start: u64, end: u64, source: Source| bproc_image::Region {
            start,
            end,
            prot: 3,
            stack: false,
            source,
        };
        let file = Source::File { path: "/lib/x".into(), offset: 0, size: 1, mtime: (0, 0) };
        let regions = vec![
            region(0x4000_0000 - PAGE, 0x4080_0000, Source::Anonymous),
            region(0x5000_0000, 0x5040_0000, file),
        ];
        let h = Header { regions, ..Default::default() };
        let chunks = vec![
            (0x4000_0000 - PAGE, (2 << 20) as u32),
            (0x4020_0000 - PAGE, (1 << 20) as u32),
            (0x4030_0000 - PAGE, (3 << 20) as u32),
            (0x5000_0000, (4 << 20) as u32),
        ];
        assert_eq!(
            filled_spans(&h, chunks),
            [(0x4000_0000, 0x4040_0000)],
            "the run ends a page short of 0x4060_0000; the file region is left as it is"
        );
    }

    #[test]
    fn the_stub_is_a_valid_elf_header() {
        let e = stub_elf();
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(e.len() as u64, ENTRY_AT + GADGET.len() as u64);
        assert_eq!(u64::from_le_bytes(e[24..32].try_into().unwrap()), STUB_BASE + ENTRY_AT);
        assert_eq!(e[ENTRY_AT as usize..], GADGET);
        // The runner and the slots fit the code page, apart.
        let code = scratch_code();
        assert!(code.len() as u64 <= SLOTS_AT && SLOTS_AT + 8 * SLOTS as u64 == PAGE);
    }
}
