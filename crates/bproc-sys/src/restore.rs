//! Restore of a process image ([`crate::ckpt`]) into a new process, by system call injection.
//!
//! The new process starts as a five-byte static program (`syscall; int3; jmp`) written to a
//! memfd, traced from its first instruction. The restorer makes it run one system call at a
//! time with the registers it chooses: it unmaps the stub, moves the vDSO to where the image
//! had it, maps every region (files by reference, the rest anonymous), writes the saved pages
//! in with `process_vm_writev`, sets the memory layout (`PR_SET_MM_MAP`), name, signal
//! actions, alternate stack, rseq, robust list, tid address and open files, and finally loads
//! the saved stack pointer, resume address and thread pointer and lets go. The process then
//! returns from [`crate::ckpt::checkpoint`] as a restored copy, under the pid the caller chose
//! (`set_tid`) when it runs the restore in a pid namespace.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bproc_image::{Header, ImageReader, Source, PAGE};
use nix::libc;

use crate::ckpt::{parse_maps, this_machine, CkptError, KSigAction, MapLine};
use crate::{Identity, SpawnSpec};

/// How to restore.
#[derive(Debug)]
pub struct RestoreSpec {
    /// The new process's fds 0, 1 and 2.
    pub stdio: [Option<OwnedFd>; 3],
    /// Its pid in the calling thread's pid namespace for children, if chosen.
    pub set_tid: Option<i32>,
    /// Who it runs as.
    pub identity: Option<Identity>,
    /// What `checkpoint` returns in it ([`crate::ckpt::Resumed::Restored`]), at least 1.
    pub value: i64,
}

const STUB_BASE: u64 = 0x1_0000_0000;
const STUB_CODE: [u8; 5] = [0x0f, 0x05, 0xcc, 0xeb, 0xfb]; // syscall; int3; jmp -5
const PR_SET_MM: i32 = 35;
const PR_SET_MM_MAP: u64 = 14;
const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
const MREMAP_MAYMOVE_FIXED: u64 = 3;

/// A minimal static ELF executable whose entry point is [`STUB_CODE`]: no libc, no rseq, no
/// heap, nothing to undo.
fn stub_elf() -> Vec<u8> {
    let code_off = 64 + 2 * 56;
    let mut e = Vec::with_capacity(code_off + STUB_CODE.len());
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(STUB_BASE + code_off as u64).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no sections
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    let size = (code_off + STUB_CODE.len()) as u64;
    // PT_LOAD, read and execute, the whole file.
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&5u32.to_le_bytes());
    for v in [0, STUB_BASE, STUB_BASE, size, size, PAGE] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    // PT_GNU_STACK, read and write: no executable stack.
    e.extend_from_slice(&0x6474_e551u32.to_le_bytes());
    e.extend_from_slice(&6u32.to_le_bytes());
    for v in [0u64, 0, 0, 0, 0, 16] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&STUB_CODE);
    e
}

fn last_err(what: impl Into<String>) -> CkptError {
    CkptError::sys(what, std::io::Error::last_os_error())
}

/// The traced new process and where its system call gadget is.
struct Tracee {
    pid: i32,
    base: libc::user_regs_struct,
    gadget: u64,
    scratch: u64,
}

impl Tracee {
    fn wait_stop(&self) -> Result<i32, CkptError> {
        let mut st = 0;
        // SAFETY: waits for our own traced child.
        let r = unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) };
        if r != self.pid {
            return Err(last_err("waiting for the restored process"));
        }
        if !libc::WIFSTOPPED(st) {
            return Err(CkptError::sys(
                format!("the restored process ended during the restore (status {st:#x})"),
                std::io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        Ok(libc::WSTOPSIG(st))
    }

    fn set_regs(&self, r: &libc::user_regs_struct) -> Result<(), CkptError> {
        // SAFETY: PTRACE_SETREGS reads one user_regs_struct from a valid pointer.
        if unsafe { libc::ptrace(libc::PTRACE_SETREGS, self.pid, 0, r as *const _) } != 0 {
            return Err(last_err("PTRACE_SETREGS"));
        }
        Ok(())
    }

    fn regs(&self) -> Result<libc::user_regs_struct, CkptError> {
        // SAFETY: PTRACE_GETREGS fills one user_regs_struct; all-zero is a valid value.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: as above, with a valid pointer.
        if unsafe { libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut _) } != 0 {
            return Err(last_err("PTRACE_GETREGS"));
        }
        Ok(r)
    }

    /// Runs system call `nr` in the process and returns its result (an errno as an error).
    fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64, CkptError> {
        let mut r = self.base;
        r.rip = self.gadget;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) =
            (args[0], args[1], args[2], args[3], args[4], args[5]);
        self.set_regs(&r)?;
        // SAFETY: resumes our stopped tracee.
        if unsafe { libc::ptrace(libc::PTRACE_CONT, self.pid, 0, 0) } != 0 {
            return Err(last_err("PTRACE_CONT"));
        }
        let sig = self.wait_stop()?;
        if sig != libc::SIGTRAP {
            return Err(CkptError::sys(
                format!("{what} in the restored process stopped with signal {sig}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
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
            let local = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
            let remote = libc::iovec { iov_base: at as *mut _, iov_len: data.len() };
            // SAFETY: one local iovec over a live slice; the remote side is checked by the
            // kernel.
            let n = unsafe { libc::process_vm_writev(self.pid, &local, 1, &remote, 1, 0) };
            if n <= 0 {
                return Err(last_err(format!("writing {} bytes at {at:#x}", data.len())));
            }
            data = &data[n as usize..];
            at += n as u64;
        }
        Ok(())
    }

    /// Puts a NUL-terminated string in the scratch page and returns its address.
    fn string(&self, s: &str) -> Result<u64, CkptError> {
        if s.len() >= PAGE as usize || s.contains('\0') {
            return Err(CkptError::Busy(format!("path too long or with a NUL: {s:?}")));
        }
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.poke(self.scratch, &b)?;
        Ok(self.scratch)
    }

    fn maps(&self) -> Result<Vec<MapLine>, CkptError> {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|e| CkptError::sys("maps of the restored process", e))?;
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
fn check_machine(h: &Header) -> Result<(), CkptError> {
    use std::os::unix::fs::MetadataExt;
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
    for r in &h.regions {
        if let Source::File { path, size, mtime, .. } = &r.source {
            let ok = std::fs::metadata(path).is_ok_and(|st| {
                st.size() == *size && (st.mtime(), st.mtime_nsec() as u32) == *mtime
            });
            if !ok {
                return Err(CkptError::Machine(format!(
                    "{path} is missing or differs from the one the image was made with \
                     (take it off the library list to send it by content)"
                )));
            }
        }
    }
    Ok(())
}

/// Restores the image read from `image` into a new child of the calling thread and lets it
/// run; returns its pid. On failure the new process is killed.
pub fn restore(image: impl Read, spec: RestoreSpec) -> Result<i32, CkptError> {
    let mut reader = ImageReader::open(image)?;
    let h = reader.header().clone();
    check_machine(&h)?;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let memfd = unsafe { libc::memfd_create(c"bproc-stub".as_ptr(), libc::MFD_CLOEXEC) };
    if memfd < 0 {
        return Err(last_err("memfd_create"));
    }
    // SAFETY: a fresh fd we own.
    let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
    let elf = stub_elf();
    std::io::Write::write_all(
        &mut std::fs::File::from(memfd.try_clone().map_err(|e| CkptError::sys("dup", e))?),
        &elf,
    )
    .map_err(|e| CkptError::sys("writing the stub", e))?;
    let cstr =
        |s: &str| std::ffi::CString::new(s).map_err(|_| CkptError::Busy(format!("NUL in {s:?}")));
    let comm = if h.comm.is_empty() { "restored" } else { h.comm.as_str() };
    let req = SpawnSpec {
        path: cstr(&format!("/proc/self/fd/{}", memfd.as_raw_fd()))?,
        argv: vec![cstr(comm)?],
        envp: Vec::new(),
        cwd: Some(cstr(&h.cwd)?),
        stdio: spec.stdio,
        fds: Vec::new(),
        limits: h.rlimits.clone(),
        jail: None,
        identity: spec.identity,
        umask: h.umask,
        files: Vec::new(),
        set_tid: spec.set_tid,
        trace: true,
    };
    let pid = crate::spawn(&req).map_err(|e| CkptError::sys("starting the restore stub", e))?;
    drop(memfd);
    let kill = || {
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
        }
    };
    match inject(pid, &h, &mut reader, spec.value) {
        Ok(()) => Ok(pid),
        Err(e) => {
            kill();
            Err(e)
        }
    }
}

fn inject<R: Read>(
    pid: i32,
    h: &Header,
    reader: &mut ImageReader<R>,
    value: i64,
) -> Result<(), CkptError> {
    let mut t = Tracee {
        pid,
        // SAFETY: all-zero is a valid user_regs_struct; replaced below.
        base: unsafe { std::mem::zeroed() },
        gadget: 0,
        scratch: 0,
    };
    let sig = t.wait_stop()?;
    if sig != libc::SIGTRAP {
        return Err(CkptError::sys(
            format!("the restore stub stopped with signal {sig}"),
            std::io::Error::from_raw_os_error(libc::EFAULT),
        ));
    }
    // SAFETY: sets an option on our stopped tracee.
    if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, libc::PTRACE_O_EXITKILL) } != 0 {
        return Err(last_err("PTRACE_SETOPTIONS"));
    }
    t.base = t.regs()?;
    t.gadget = t.base.rip;

    // A gadget and scratch page where neither the stub nor the image has anything.
    let stub_maps = t.maps()?;
    let mut used: Vec<(u64, u64)> = stub_maps.iter().map(|m| (m.start, m.end)).collect();
    used.extend(h.regions.iter().map(|r| (r.start, r.end)));
    used.extend(h.specials.iter().map(|s| (s.start, s.end)));
    let at = hole(&used, 2 * PAGE, 0x10_0000)
        .ok_or_else(|| CkptError::Busy("no room for the restore's scratch pages".into()))?;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let got = t.call(
        "mmap scratch",
        libc::SYS_mmap,
        [at, 2 * PAGE, rw, anon | MAP_FIXED_NOREPLACE as u64, u64::MAX, 0],
    )?;
    if got != at {
        return Err(CkptError::Busy(format!("scratch landed at {got:#x}, not {at:#x}")));
    }
    t.poke(at, &STUB_CODE[..3])?;
    t.call(
        "mprotect gadget",
        libc::SYS_mprotect,
        [at, PAGE, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0],
    )?;
    t.gadget = at;
    t.scratch = at + PAGE;

    // Only the kernel's own mappings and the scratch pages stay.
    let kernel_made = |m: &MapLine| {
        m.name.starts_with("[vdso") || m.name.starts_with("[vvar") || m.name == "[vsyscall]"
    };
    for m in stub_maps.iter().filter(|m| !kernel_made(m)) {
        t.call("munmap stub", libc::SYS_munmap, [m.start, m.end - m.start, 0, 0, 0, 0])?;
    }
    move_specials(&t, h, &stub_maps, at)?;

    // Every region, writable until its pages are in.
    for r in &h.regions {
        let len = r.end - r.start;
        let got = match &r.source {
            Source::File { path, offset, .. } => {
                let p = t.string(path)?;
                let fd = t.call(
                    &format!("open {path}"),
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, p, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0],
                )?;
                let prot = u64::from(r.prot) | rw;
                let mapped = t.call(
                    &format!("map {path}"),
                    libc::SYS_mmap,
                    [r.start, len, prot, (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64, fd, *offset],
                );
                t.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                mapped?
            }
            Source::Anonymous | Source::Copied { .. } => {
                let grows = if r.stack { libc::MAP_GROWSDOWN as u64 } else { 0 };
                t.call(
                    "map region",
                    libc::SYS_mmap,
                    [r.start, len, rw, anon | libc::MAP_FIXED as u64 | grows, u64::MAX, 0],
                )?
            }
        };
        if got != r.start {
            return Err(CkptError::Busy(format!("region {:#x} landed at {got:#x}", r.start)));
        }
    }
    let mut buf = Vec::new();
    while let Some(addr) = reader.next_chunk(&mut buf)? {
        t.poke(addr, &buf)?;
    }
    for r in h.regions.iter().filter(|r| u64::from(r.prot) != rw) {
        t.call(
            "mprotect",
            libc::SYS_mprotect,
            [r.start, r.end - r.start, u64::from(r.prot), 0, 0, 0],
        )?;
    }

    set_mm(&t, h)?;
    let comm = t.string(&h.comm)?;
    t.call("PR_SET_NAME", libc::SYS_prctl, [libc::PR_SET_NAME as u64, comm, 0, 0, 0, 0])?;
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
        t.poke(t.scratch, bytes)?;
        t.call(
            &format!("rt_sigaction {}", a.signal),
            libc::SYS_rt_sigaction,
            [u64::from(a.signal), t.scratch, 0, 8, 0, 0],
        )?;
    }
    let (ss_sp, ss_flags, ss_size) = h.altstack;
    if ss_size > 0 && ss_flags & libc::SS_DISABLE == 0 {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&ss_sp.to_ne_bytes());
        b.extend_from_slice(&(ss_flags & !libc::SS_ONSTACK).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&ss_size.to_ne_bytes());
        t.poke(t.scratch, &b)?;
        t.call("sigaltstack", libc::SYS_sigaltstack, [t.scratch, 0, 0, 0, 0, 0])?;
    }
    if h.rseq.0 != 0 {
        t.call(
            "rseq",
            libc::SYS_rseq,
            [h.rseq.0, u64::from(h.rseq.1), 0, u64::from(h.rseq.2), 0, 0],
        )?;
    }
    if h.robust_list.0 != 0 {
        t.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [h.robust_list.0, h.robust_list.1, 0, 0, 0, 0],
        )?;
    }
    if h.tid_address != 0 {
        t.call("set_tid_address", libc::SYS_set_tid_address, [h.tid_address, 0, 0, 0, 0, 0])?;
    }
    if h.personality != 0 {
        t.call("personality", libc::SYS_personality, [u64::from(h.personality), 0, 0, 0, 0, 0])?;
    }
    for f in &h.files {
        let p = t.string(&f.path)?;
        let fd = t.call(
            &format!("reopen {} (fd {})", f.path, f.fd),
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, p, (f.flags & !libc::O_CLOEXEC) as u64, 0, 0, 0],
        )?;
        t.call("lseek", libc::SYS_lseek, [fd, f.offset, libc::SEEK_SET as u64, 0, 0, 0])?;
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

    // The last call removes the gadget itself: the int3 after it then faults, which the
    // next registers make moot.
    let mut r = t.base;
    r.rip = t.gadget;
    r.rax = libc::SYS_munmap as u64;
    r.orig_rax = u64::MAX;
    (r.rdi, r.rsi) = (at, 2 * PAGE);
    t.set_regs(&r)?;
    // SAFETY: resumes our stopped tracee.
    if unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) } != 0 {
        return Err(last_err("PTRACE_CONT"));
    }
    let sig = t.wait_stop()?;
    if sig != libc::SIGSEGV {
        return Err(CkptError::sys(
            format!("unmapping the scratch pages stopped with signal {sig}"),
            std::io::Error::from_raw_os_error(libc::EFAULT),
        ));
    }
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
    let mask = h.sigmask;
    // SAFETY: PTRACE_SETSIGMASK reads an 8-byte mask from a valid pointer.
    if unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, pid, 8, &mask as *const u64) } != 0 {
        return Err(last_err("PTRACE_SETSIGMASK"));
    }
    // SAFETY: lets our tracee go, suppressing the pending SIGSEGV.
    if unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) } != 0 {
        return Err(last_err("PTRACE_DETACH"));
    }
    Ok(())
}

/// Moves the vDSO and vvar pages, as a group keeping their offsets, to where the image had
/// them (glibc keeps pointers into the vDSO).
fn move_specials(
    t: &Tracee,
    h: &Header,
    stub_maps: &[MapLine],
    scratch: u64,
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
    let mut used: Vec<(u64, u64)> = h.regions.iter().map(|r| (r.start, r.end)).collect();
    used.extend(h.specials.iter().map(|s| (s.start, s.end)));
    used.extend(here.iter().map(|m| (m.start, m.end)));
    used.push((scratch, scratch + 2 * PAGE));
    let tmp = hole(&used, span, 0x10_0000)
        .ok_or_else(|| CkptError::Busy("no room to move the vDSO".into()))?;
    for (from, to) in [(cmin, tmp), (tmp, imin)] {
        for m in &here {
            let len = m.end - m.start;
            let off = m.start - cmin;
            t.call(
                "mremap vdso",
                libc::SYS_mremap,
                [from + off, len, len, MREMAP_MAYMOVE_FIXED, to + off, 0],
            )?;
        }
    }
    Ok(())
}

/// Restores brk, stack, argument and environment bounds, the auxiliary vector and (when the
/// file is there and the caller may) `/proc/PID/exe`.
fn set_mm(t: &Tracee, h: &Header) -> Result<(), CkptError> {
    let mm = &h.mm;
    let mut auxv: Vec<u64> = h.auxv.iter().flat_map(|(k, v)| [*k, *v]).collect();
    auxv.extend([0, 0]);
    let auxv_at = t.scratch + 256;
    let auxv_bytes: Vec<u8> = auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    if 256 + auxv_bytes.len() > PAGE as usize {
        return Err(CkptError::Busy("auxiliary vector too long".into()));
    }
    let exe_fd = match t.string(&h.exe) {
        Ok(p) if !h.exe.is_empty() => t
            .call(
                "open exe",
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, p, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0],
            )
            .ok(),
        _ => None,
    };
    let map = |exe: u32| {
        let mut b = Vec::with_capacity(104);
        for v in mm.to_array().into_iter().chain([auxv_at]) {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&(auxv_bytes.len() as u32).to_ne_bytes());
        b.extend_from_slice(&exe.to_ne_bytes());
        b
    };
    t.poke(auxv_at, &auxv_bytes)?;
    let mut result = Err(CkptError::Busy("no PR_SET_MM_MAP attempt".into()));
    // With the executable when possible (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE),
    // else without: /proc/PID/exe then names the stub, the rest is right.
    for exe in exe_fd.map(|fd| fd as u32).into_iter().chain([u32::MAX]) {
        t.poke(t.scratch, &map(exe))?;
        result = t.call(
            "PR_SET_MM_MAP",
            libc::SYS_prctl,
            [PR_SET_MM as u64, PR_SET_MM_MAP, t.scratch, 104, 0, 0],
        );
        if result.is_ok() {
            break;
        }
    }
    if let Some(fd) = exe_fd {
        t.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    result.map(|_| ())
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

    #[test]
    fn the_stub_is_a_valid_elf_header() {
        let e = stub_elf();
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(e.len(), 64 + 112 + 5);
        assert_eq!(u64::from_le_bytes(e[24..32].try_into().unwrap()), STUB_BASE + 176);
    }
}
