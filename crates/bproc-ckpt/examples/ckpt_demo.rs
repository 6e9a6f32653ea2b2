//! A single-threaded program that checkpoints itself to a file and checks, in the copy
//! restored from it, that it came back whole: memory (and as much of zeros), thread-local
//! storage, heap growth, a signal handler and a blocked signal, an open file's position, its
//! pid. The checkpoint test runs it; by hand: `ckpt_demo IMAGE MIB DATAFILE [socket]`, then
//! restore IMAGE. With `socket` it holds a socket open, which no move can carry, and asks
//! for a strict dump: it prints the refusal and goes on running, exiting 3.
//!
//! Prints `dumped PID` and exits 0 as the original; prints what it checked and exits 42 as a
//! restored copy (1 when a check fails).
#![allow(unsafe_code)] // installing a signal handler

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use bproc_ckpt::{checkpoint, DumpOptions, Resumed};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};

thread_local! {
    static COUNTER: Cell<u64> = const { Cell::new(0) };
}

static USR1: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: i32) {
    USR1.store(true, Ordering::SeqCst);
}

/// A huge page's size (2 MiB on x86-64).
const HUGE: usize = 2 << 20;

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: ckpt_demo IMAGE MIB DATAFILE [socket]");
        std::process::exit(2);
    }
    // Fds inherited from whoever started it (a build tool's pipes) could not move.
    bproc_sys::close_fds_from(3, &[]);
    let mib: usize = args[2].parse().expect("MIB");
    // The pattern starts 1 MiB past a huge page's start (the pages before it are never
    // written, so the image leaves them out): a dump must cut the run where each huge page
    // starts, not every chunk's length from the run's own start.
    let mut space = vec![0u64; (mib << 20) / 8 + (HUGE >> 3)];
    let skip = ((1 << 20) + HUGE - space.as_ptr() as usize % HUGE) % HUGE / 8;
    let big = &mut space[skip..skip + (mib << 20) / 8];
    big.iter_mut().enumerate().for_each(|(i, x)| *x = pattern(i));
    // As much again of zeros, in pages that are present (written), which the image need not
    // carry.
    let mut zeros = vec![1u8; mib << 20];
    std::hint::black_box(&mut zeros).fill(0);
    COUNTER.with(|c| c.set(7));
    let action = signal::SigAction::new(
        SigHandler::Handler(on_usr1),
        signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe { signal::sigaction(Signal::SIGUSR1, &action) }.expect("sigaction");
    let mut usr2 = SigSet::empty();
    usr2.add(Signal::SIGUSR2);
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&usr2), None).expect("sigprocmask");
    let mut data = std::fs::File::open(&args[3]).expect("data file");
    let mut head = [0u8; 4];
    data.read_exact(&mut head).expect("read data");
    let pid = std::process::id();
    let exe = std::env::current_exe().ok();
    let socket =
        (args.len() == 5).then(|| std::os::unix::net::UnixDatagram::pair().expect("socket"));
    let image = std::fs::File::create(&args[1]).expect("image file");
    std::io::stdout().flush().unwrap();
    // The heap as small as it goes, so that the dump's own allocations grow it: the image
    // must still hold all of it.
    // SAFETY: mallopt and malloc_trim only change the allocator's bookkeeping.
    unsafe {
        nix::libc::mallopt(nix::libc::M_TOP_PAD, 0);
        nix::libc::malloc_trim(0);
    }
    let lib = |p: &str| p.starts_with("/usr/lib") || p.starts_with("/lib");
    let skip = [image.as_raw_fd()];
    let t0 = std::time::Instant::now();
    match checkpoint(
        image.as_fd(),
        &DumpOptions { by_ref: &lib, skip_fds: &skip, mailbox: None, strict: socket.is_some() },
    ) {
        Ok(Resumed::Dumped) => {
            eprintln!("dump_ms {:.3}", t0.elapsed().as_secs_f64() * 1e3);
            println!("dumped {pid}");
        }
        Ok(Resumed::Restored(v)) => {
            // The image's fd is not open in this copy.
            std::mem::forget(image);
            let mut ok = true;
            let mut check = |what: &str, good: bool| {
                println!("{what}: {}", if good { "ok" } else { "WRONG" });
                ok &= good;
            };
            check("value", v == 1);
            check("memory", big.iter().enumerate().all(|(i, x)| *x == pattern(i)));
            check("zeros", std::hint::black_box(&zeros).iter().all(|b| *b == 0));
            check("tls", COUNTER.with(|c| c.replace(8)) == 7);
            let grown: Vec<Box<[u8; 4096]>> =
                (0..4096).map(|i| Box::new([i as u8; 4096])).collect();
            check("heap growth", grown.iter().enumerate().all(|(i, b)| b[4095] == i as u8));
            signal::raise(Signal::SIGUSR1).expect("raise");
            check("handler", USR1.load(Ordering::SeqCst));
            let mut now = SigSet::empty();
            signal::sigprocmask(SigmaskHow::SIG_BLOCK, None, Some(&mut now)).expect("mask");
            check("mask", now.contains(Signal::SIGUSR2) && !now.contains(Signal::SIGUSR1));
            let mut next = [0u8; 4];
            check("file", data.read_exact(&mut next).is_ok() && &next == b"4567");
            check("pid", std::process::id() == pid);
            check("clock", std::time::Instant::now().elapsed().as_secs() == 0);
            let out = std::process::Command::new("/bin/echo").arg("child").output();
            check("fork and exec", out.is_ok_and(|o| o.stdout == b"child\n"));
            // Naming the executable takes privilege; as root, /proc/self/exe is it again.
            let root = nix::unistd::geteuid().is_root();
            check("exe", std::env::current_exe().ok() == exe || !root);
            std::io::stdout().flush().unwrap();
            std::process::exit(if ok { 42 } else { 1 });
        }
        Err(e) => {
            println!("refused: {e} (errno {})", e.errno());
            let still_here = big.iter().enumerate().all(|(i, x)| *x == pattern(i));
            std::process::exit(if still_here { 3 } else { 1 });
        }
    }
}
