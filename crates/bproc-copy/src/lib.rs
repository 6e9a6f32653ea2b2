//! bpcp's engine, shared by the `bpcp` client and the daemons.
//!
//! A copy is a *stream* ([`stream`]) from one sender to one or more receivers. The sender
//! ([`source`]) walks the source paths and writes files, directories and links with an
//! XXH3-128 checksum per file; a receiver ([`sink`]) writes each file unnamed and puts it in
//! place of the old one only when its checksum matches (writing through links, and into FIFOs
//! and devices in place). A receiver can relay
//! the stream to further receivers while it writes ([`service::Tee`]), which is how a
//! broadcast runs down a chain or tree of nodes with each byte leaving the master once.
//!
//! The sender always connects to the receiver. The daemons' [`service`] accepts streams and
//! runs copy orders with the caller's identity; the `bpcp` client sends and receives its own
//! local files itself, with its own rights.
#![deny(missing_docs)]

pub mod service;
pub mod sink;
pub mod source;
pub mod stream;

/// Read and write size: large, so that a copy costs few system calls.
pub const CHUNK: usize = 1 << 20;

/// Told how many data bytes moved (for a progress bar).
pub trait Progress {
    /// `n` more bytes moved.
    fn advance(&self, n: u64);
}

/// No progress display.
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _: u64) {}
}

/// rcp's message for an error on `path`: `rcp: PATH: No such file or directory`.
pub fn rcp_error(path: &str, e: &std::io::Error) -> String {
    format!("rcp: {path}: {}", os_text(e))
}

/// What rcp says of `e`: the C library's text for its errno (`No such file or directory`).
pub(crate) fn os_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}
