//! Holding the other threads of the calling process still while it checkpoints itself, and
//! reading their state (the dump half of moving a threaded process; [`crate::restore`]
//! makes them again).
//!
//! A thread cannot be traced by another of its own process, so the others are asked: each
//! gets [`FREEZE_SIGNAL`] (`tgkill`), whose handler, running on that thread, copies what the
//! kernel saved of it on the signal frame (every general register, the FPU and vector state
//! as `xsave` laid it out, the blocked signals) and what only the thread itself can read
//! (its `fs` and `gs` bases, alternate stack, robust list, tid address) into a slot made for
//! it beforehand, then waits on a futex until the dump is written. Those registers are the
//! thread as it was before the signal, so a restored thread resumes where it was
//! interrupted, never inside the handler: a system call it was blocked in is restarted
//! (`SA_RESTART`), or returns `EINTR` for the sleeps the kernel cannot restart across
//! processes.
//!
//! The handler touches only its slot and raw system calls (no allocation, no locks). The
//! dumping thread then reads and writes the process as before, with the others held: they
//! cannot change memory under it. A thread that blocks the signal never answers, and the
//! dump is refused, naming it.
//!
//! Held threads may hold C library locks. The dumper takes none of the likely ones: its
//! allocations use the main arena, which glibc gives no second thread while there are fewer
//! threads than arenas, and it never calls `dlsym` once threads are held ([`rseq_offset`]
//! is read before).

use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bproc_image::{Thread, MAX_XSTATE, REGS};
use nix::libc;

use crate::dump::CkptError;

/// The signal that holds the other threads: the highest real-time one.
pub(crate) const FREEZE_SIGNAL: i32 = 64;
/// How long a thread may take to answer.
const ANSWER: Duration = Duration::from_secs(1);

/// What the handler writes for one thread.
#[repr(C)]
struct Slot {
    /// Set (release) once the rest is written.
    ready: AtomicU32,
    tid: i32,
    regs: [u64; REGS],
    xstate_len: u32,
    xstate: [u8; MAX_XSTATE],
    sigmask: u64,
    altstack: (u64, i32, u64),
    robust_list: (u64, u64),
    tid_address: u64,
}

/// The slots of the freeze under way (null outside one), their number, the next free one.
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static CAPACITY: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The futex the held threads wait on: 0 while held.
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// Handlers entered and not yet returned.
static INSIDE: AtomicUsize = AtomicUsize::new(0);
/// glibc's `__rseq_offset` and `__rseq_size` (0: none), read before any thread is held.
static RSEQ_OFFSET: AtomicI64 = AtomicI64::new(0);
static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);

/// Where, from a thread's `fs` base, glibc keeps its rseq area, and the area's length: read
/// with `dlsym`, which takes the dynamic loader's lock, so only while no thread is held.
pub(crate) fn rseq_offset() -> (isize, u32) {
    // SAFETY: dlsym with NUL-terminated names; the symbols, when present, are glibc's
    // read-only variables of these types.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return (0, 0);
        }
        (*off.cast::<isize>(), *size.cast::<u32>())
    }
}

/// Reads [`rseq_offset`] into the statics [`cached_rseq`] serves.
pub(crate) fn cache_rseq() {
    let (off, size) = rseq_offset();
    RSEQ_OFFSET.store(off as i64, Ordering::Relaxed);
    RSEQ_SIZE.store(size, Ordering::Relaxed);
}

/// [`rseq_offset`] as [`cache_rseq`] last read it (no lock taken).
pub(crate) fn cached_rseq() -> (isize, u32) {
    (RSEQ_OFFSET.load(Ordering::Relaxed) as isize, RSEQ_SIZE.load(Ordering::Relaxed))
}

/// The threads of this process but the caller, from `/proc/self/task`.
fn other_tids() -> Vec<i32> {
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::gettid() };
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|t| *t != me)
                .collect()
        })
        .unwrap_or_default()
}

/// The other threads, held in [`FREEZE_SIGNAL`]'s handler until [`Frozen::thaw`].
pub(crate) struct Frozen {
    slots: Vec<Slot>,
    held: usize,
    old: libc::sigaction,
}

impl Frozen {
    /// Holds every other thread of this process; `None` when there is none. Refused when a
    /// thread does not answer (it blocks the signal), naming it.
    pub(crate) fn hold() -> Result<Option<Frozen>, CkptError> {
        let mut tids = other_tids();
        if tids.is_empty() {
            return Ok(None);
        }
        cache_rseq();
        // Room for threads started while the others are being held.
        let capacity = tids.len() + 16;
        let mut slots: Vec<Slot> = Vec::with_capacity(capacity);
        // SAFETY: Slot is plain data (an atomic u32 among integers and arrays), for which all
        // zeroes is a valid value; the first `capacity` elements are written before use.
        unsafe {
            std::ptr::write_bytes(slots.as_mut_ptr(), 0, capacity);
            slots.set_len(capacity);
        }
        NEXT.store(0, Ordering::SeqCst);
        RELEASE.store(0, Ordering::SeqCst);
        INSIDE.store(0, Ordering::SeqCst);
        CAPACITY.store(capacity, Ordering::SeqCst);
        SLOTS.store(slots.as_mut_ptr(), Ordering::SeqCst);
        // SAFETY: all-zero is a valid sigaction; the fields are set below.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_freeze as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: fills a sigset_t we own.
        unsafe { libc::sigfillset(&mut act.sa_mask) };
        // SAFETY: all-zero is a valid sigaction for the old one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: installs a handler that only touches the slots and makes raw system calls.
        if unsafe { libc::sigaction(FREEZE_SIGNAL, &act, &mut old) } != 0 {
            SLOTS.store(std::ptr::null_mut(), Ordering::SeqCst);
            return Err(CkptError::sys(
                "installing the thread freeze handler",
                std::io::Error::last_os_error(),
            ));
        }
        let mut frozen = Frozen { slots, held: 0, old };
        let pid = nix::unistd::getpid().as_raw();
        let mut asked: Vec<i32> = Vec::new();
        loop {
            let new: Vec<i32> = tids.iter().filter(|t| !asked.contains(t)).copied().collect();
            for tid in new {
                // SAFETY: tgkill with plain integers; a thread that ended meanwhile is ESRCH.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, FREEZE_SIGNAL) } == 0 {
                    asked.push(tid);
                }
            }
            let deadline = Instant::now() + ANSWER;
            while frozen.answered() < asked.len().min(capacity) {
                if Instant::now() > deadline {
                    let silent = asked.iter().find(|t| !frozen.has(**t)).copied().unwrap_or(0);
                    frozen.give_up();
                    return Err(CkptError::Busy(format!(
                        "thread {silent} did not stop for the dump (does it block signal \
                         {FREEZE_SIGNAL}?)"
                    )));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            // A thread started meanwhile is asked too; a thread that ended is dropped.
            tids = other_tids();
            if tids.iter().all(|t| asked.contains(t)) {
                break;
            }
            if asked.len() >= capacity {
                frozen.give_up();
                return Err(CkptError::Busy("threads are being started too fast to hold".into()));
            }
        }
        frozen.held = NEXT.load(Ordering::SeqCst).min(capacity);
        // Threads that ended after answering are not in the image.
        let live = other_tids();
        frozen.slots[..frozen.held].iter_mut().for_each(|s| {
            if !live.contains(&s.tid) {
                s.tid = 0;
            }
        });
        Ok(Some(frozen))
    }

    fn answered(&self) -> usize {
        self.slots.iter().filter(|s| s.ready.load(Ordering::Acquire) == 1).count()
    }

    fn has(&self, tid: i32) -> bool {
        self.slots.iter().any(|s| s.ready.load(Ordering::Acquire) == 1 && s.tid == tid)
    }

    /// The held threads' states for the image, with the tid slot ([`find_tid_slot`]).
    pub(crate) fn threads(&self) -> (Vec<Thread>, u32) {
        let rseq_off = RSEQ_OFFSET.load(Ordering::Relaxed);
        let rseq_size = RSEQ_SIZE.load(Ordering::Relaxed);
        let threads: Vec<Thread> = self.slots[..self.held]
            .iter()
            .filter(|s| s.tid > 0 && s.ready.load(Ordering::Acquire) == 1)
            .map(|s| {
                let fs = s.regs[bproc_image::reg::FS_BASE];
                Thread {
                    tid: s.tid,
                    regs: s.regs.to_vec(),
                    xstate: s.xstate[..s.xstate_len as usize].to_vec(),
                    sigmask: s.sigmask,
                    altstack: s.altstack,
                    rseq: if rseq_size > 0 {
                        (fs.wrapping_add(rseq_off as u64), rseq_size.max(32), 0x5305_3053)
                    } else {
                        (0, 0, 0)
                    },
                    robust_list: s.robust_list,
                    tid_address: s.tid_address,
                }
            })
            .collect();
        let slot = find_tid_slot(&threads);
        (threads, slot)
    }

    /// Lets the held threads go on (`restored`: in a copy restored from the image, where
    /// no thread is in the handler) and puts the signal's disposition back.
    pub(crate) fn thaw(self, restored: bool) {
        RELEASE.store(1, Ordering::SeqCst);
        if !restored {
            wake_held();
            let deadline = Instant::now() + ANSWER;
            while INSIDE.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        SLOTS.store(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: restores the disposition saved by `hold`.
        unsafe { libc::sigaction(FREEZE_SIGNAL, &self.old, std::ptr::null_mut()) };
        if !restored && INSIDE.load(Ordering::SeqCst) > 0 {
            // A handler still running would write into freed slots: keep them.
            std::mem::forget(self.slots);
        }
    }

    /// Lets every thread go after a failed hold. The handler stays installed (a thread that
    /// unblocks the signal later runs it, finds no freeze and returns), and the slots are
    /// kept for any handler still inside.
    fn give_up(&mut self) {
        SLOTS.store(std::ptr::null_mut(), Ordering::SeqCst);
        RELEASE.store(1, Ordering::SeqCst);
        wake_held();
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}

/// Wakes every thread waiting on the release word (after `RELEASE` is set).
fn wake_held() {
    // SAFETY: a futex wake on our own static word; it touches no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            RELEASE.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// The offset from each thread's `fs` base at which every thread (and the caller) finds its
/// own tid: where glibc caches it in `struct pthread`. 0 when there is no single such place.
fn find_tid_slot(threads: &[Thread]) -> u32 {
    const SPAN: usize = 0x800;
    let read = |fs: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; SPAN];
        // The kernel copies from this process into our buffer, checking the source.
        let remote = nix::sys::uio::RemoteIoVec { base: fs as usize, len: SPAN };
        let local = &mut [std::io::IoSliceMut::new(&mut buf)];
        let n = nix::sys::uio::process_vm_readv(nix::unistd::Pid::this(), local, &[remote]);
        (n == Ok(SPAN)).then_some(buf)
    };
    let mut fs = 0u64;
    // SAFETY: ARCH_GET_FS writes one u64 into a local.
    unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64) };
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::gettid() };
    let mut views = vec![(me, read(fs))];
    views.extend(threads.iter().map(|t| (t.tid, read(t.regs[bproc_image::reg::FS_BASE]))));
    let found: Vec<usize> = (8..SPAN)
        .step_by(4)
        .filter(|&off| {
            views.iter().all(|(tid, view)| {
                view.as_ref().is_some_and(|v| {
                    i32::from_ne_bytes(v[off..off + 4].try_into().expect("4 bytes")) == *tid
                })
            })
        })
        .collect();
    match found.as_slice() {
        [one] => *one as u32,
        _ => 0,
    }
}

/// The handler of [`FREEZE_SIGNAL`]: fills this thread's slot from the signal frame and
/// its own calls, then waits until the freeze ends.
extern "C" fn on_freeze(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut c_void) {
    INSIDE.fetch_add(1, Ordering::SeqCst);
    let slots = SLOTS.load(Ordering::SeqCst);
    let i = NEXT.fetch_add(1, Ordering::SeqCst);
    if !slots.is_null() && i < CAPACITY.load(Ordering::SeqCst) && !uc.is_null() {
        // SAFETY: `i` is below the slots' number and no other thread writes this slot (each
        // handler takes its own index); `uc` is the kernel's ucontext for this delivery.
        unsafe { fill(&mut *slots.add(i), &*uc.cast::<libc::ucontext_t>()) };
        while RELEASE.load(Ordering::SeqCst) == 0 {
            // SAFETY: waits on our futex word while it is 0.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    RELEASE.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
    }
    INSIDE.fetch_sub(1, Ordering::SeqCst);
}

/// Copies this thread's state into `s`.
///
/// # Safety
/// `uc` is the ucontext of a signal delivered to the calling thread.
unsafe fn fill(s: &mut Slot, uc: &libc::ucontext_t) {
    let g = &uc.uc_mcontext.gregs;
    let at = |r: libc::c_int| g[r as usize] as u64;
    // user_regs_struct order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
    // orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
    let mut fs_base = 0u64;
    let mut gs_base = 0u64;
    // SAFETY: each call writes one u64 into a local.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs_base as *mut u64);
        libc::syscall(libc::SYS_arch_prctl, 0x1004, &mut gs_base as *mut u64);
    }
    s.regs = [
        at(libc::REG_R15),
        at(libc::REG_R14),
        at(libc::REG_R13),
        at(libc::REG_R12),
        at(libc::REG_RBP),
        at(libc::REG_RBX),
        at(libc::REG_R11),
        at(libc::REG_R10),
        at(libc::REG_R9),
        at(libc::REG_R8),
        at(libc::REG_RAX),
        at(libc::REG_RCX),
        at(libc::REG_RDX),
        at(libc::REG_RSI),
        at(libc::REG_RDI),
        u64::MAX,
        at(libc::REG_RIP),
        at(libc::REG_CSGSFS) & 0xffff,
        at(libc::REG_EFL),
        at(libc::REG_RSP),
        0,
        fs_base,
        gs_base,
        0,
        0,
        0,
        0,
    ];
    // The FPU and vector state the kernel saved: an xsave area when its software bytes
    // (at 464 of the fxsave area) carry the magic, else the 512-byte fxsave area.
    let fp = uc.uc_mcontext.fpregs.cast::<u8>();
    s.xstate_len = 0;
    if !fp.is_null() {
        // SAFETY: the kernel's fpstate on the signal frame holds at least the 512-byte
        // fxsave area, and the xsave size its software bytes give when they carry the magic.
        unsafe {
            let word = |off: usize| u32::from_ne_bytes(*fp.add(off).cast::<[u8; 4]>());
            let len = if word(464) == 0x4650_5853 { word(480) as usize } else { 512 };
            let len = if (512..=MAX_XSTATE).contains(&len) { len } else { 512 };
            std::ptr::copy_nonoverlapping(fp, s.xstate.as_mut_ptr(), len);
            s.xstate_len = len as u32;
        }
    }
    // SAFETY: sigset_t starts with the 64 signals' bits.
    s.sigmask = unsafe { *(&uc.uc_sigmask as *const libc::sigset_t).cast::<u64>() };
    // SAFETY: each call writes into locals of the right types.
    unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        s.altstack = (ss.ss_sp as u64, ss.ss_flags & !libc::SS_ONSTACK, ss.ss_size as u64);
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut s.robust_list.0 as *mut u64,
            &mut s.robust_list.1 as *mut u64,
        );
        libc::prctl(libc::PR_GET_TID_ADDRESS, &mut s.tid_address as *mut u64);
        s.tid = libc::gettid();
    }
    s.ready.store(1, Ordering::Release);
}
