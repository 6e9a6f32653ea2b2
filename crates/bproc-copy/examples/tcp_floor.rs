//! The floor of a copy over TCP, for `bench/bpcp.sh`: moves FILE into DEST (which must not
//! exist) through one loopback TCP connection, with nothing else a copy does: no checksum, no
//! stream format, no relay, no rename. One thread has the kernel send the file to the socket
//! (`sendfile`, in bpcp's sender's steps); the other reads the socket and writes the file, sized
//! first, in whole blocks of 2 MiB at offsets that are multiples of it, as bpcp's receiver
//! does. What bpcp takes beyond this is bpcp's own cost; what this takes beyond a
//! local `cp` is the cost of moving the bytes through a socket at all.
//!
//!     tcp_floor FILE DEST
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;

/// The receiver's block, as in bpcp's receiver.
const BLOCK: usize = 2 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, to] = args.as_slice() else {
        eprintln!("usage: tcp_floor FILE DEST");
        return ExitCode::from(2);
    };
    match copy(from, to) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn copy(from: &str, to: &str) -> io::Result<()> {
    let src = File::open(from)?;
    let size = src.metadata()?.len();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let sender = std::thread::spawn(move || -> io::Result<()> {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        let mut at = 0i64;
        while (at as u64) < size {
            let step = (size - at as u64).min(bproc_copy::source::SEND_FILE_STEP as u64);
            if nix::sys::sendfile::sendfile64(&s, &src, Some(&mut at), step as usize)? == 0 {
                return Err(io::Error::other("the file shrank"));
            }
        }
        Ok(())
    });
    let (mut s, _) = listener.accept()?;
    let mut out = OpenOptions::new().write(true).create_new(true).open(to)?;
    out.set_len(size)?;
    let mut block = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let chunk = &mut block[..left.min(BLOCK as u64) as usize];
        s.read_exact(chunk)?;
        out.write_all(chunk)?;
        left -= chunk.len() as u64;
    }
    sender.join().map_err(|_| io::Error::other("the sending thread panicked"))?
}
