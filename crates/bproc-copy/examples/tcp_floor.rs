//! The floor of a copy over TCP, for `bench/bpcp.sh`: moves FILE into DEST (which must not
//! exist) through one loopback TCP connection, with nothing else a copy does: no checksum, no
//! stream format, no relay, no rename. One thread has the kernel send the file to the socket
//! (`sendfile`, in bpcp's sender's steps); the other reads the socket and writes the file in
//! whole blocks of 512 KiB at offsets that are multiples of it, as bpcp's receiver does. What
//! bpcp takes beyond this is bpcp's own cost; what this takes beyond a local `cp` is the cost
//! of moving the bytes through a socket at all.
//!
//! With `--checksum`, the floor of a copy that checks what it delivers, as bpcp does: the
//! sender reads each piece of the file and checksums it before the kernel sends it (bpcp's
//! pieces and checksum), the receiver checksums each block before writing it, and the two
//! sums are compared at the end (a mismatch fails). Still no stream format, relay or rename.
//!
//!     tcp_floor [--checksum] FILE DEST
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;

/// The receiver's block, as in bpcp's receiver.
const BLOCK: usize = 512 << 10;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let checksum = args.first().is_some_and(|a| a == "--checksum");
    if checksum {
        args.remove(0);
    }
    let [from, to] = args.as_slice() else {
        eprintln!("usage: tcp_floor [--checksum] FILE DEST");
        return ExitCode::from(2);
    };
    match copy(from, to, checksum) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn copy(from: &str, to: &str, checksum: bool) -> io::Result<()> {
    let src = File::open(from)?;
    let size = src.metadata()?.len();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let sender = std::thread::spawn(move || -> io::Result<Option<u128>> {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        let step = bproc_copy::source::SEND_FILE_STEP;
        // The checksum and the piece it reads into.
        let mut check = checksum.then(|| (twox_hash::XxHash3_128::new(), vec![0u8; step]));
        let mut at = 0i64;
        while (at as u64) < size {
            let want = (size - at as u64).min(step as u64) as usize;
            if let Some((sum, piece)) = &mut check {
                let mut f = &src;
                f.read_exact(&mut piece[..want])?;
                sum.write(&piece[..want]);
            }
            let end = at + want as i64;
            while at < end {
                let rest = (end - at) as usize;
                if nix::sys::sendfile::sendfile64(&s, &src, Some(&mut at), rest)? == 0 {
                    return Err(io::Error::other("the file shrank"));
                }
            }
        }
        Ok(check.map(|(sum, _)| sum.finish_128()))
    });
    let (mut s, _) = listener.accept()?;
    let mut out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut sum = checksum.then(twox_hash::XxHash3_128::new);
    let mut block = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let chunk = &mut block[..left.min(BLOCK as u64) as usize];
        s.read_exact(chunk)?;
        if let Some(sum) = &mut sum {
            sum.write(chunk);
        }
        out.write_all(chunk)?;
        left -= chunk.len() as u64;
    }
    let sent = sender.join().map_err(|_| io::Error::other("the sending thread panicked"))??;
    if sent != sum.map(|s| s.finish_128()) {
        return Err(io::Error::other("the checksums differ"));
    }
    Ok(())
}
