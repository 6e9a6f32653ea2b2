//! The ghost's relay of its process's output. A process that moved to a node (or was made
//! there by an rfork) writes its stdout and stderr to TCP connections its node opens to its
//! ghost's listener; the ghost copies them to its own fds 1 and 2, which are the original
//! process's. When the process moves on, the next node connects afresh, and the old
//! connections end as the old copy exits. Before the ghost ends (or becomes the process
//! again) it reads every connection to its end, so no output is lost or comes after the
//! parent's `wait`.
//!
//! `BPROC_GHOST_IO=TOKEN` (32 hex digits) asks for a relay on a new listener, any address, any
//! port; `BPROC_GHOST_IO=TOKEN:FD` hands over a listener the mover (or the ghost before this
//! program, [`Relay::hand_over`]) opened, and `BPROC_GHOST_CONNS` the connections it had open.
//! Connections start with the launch header ([`bproc_proto::conn`]) under that token.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use bproc_proto::conn;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The environment variable that asks for a relay.
pub const ENV_IO: &str = "BPROC_GHOST_IO";

/// The output connections a light ghost's relay hands over with its listener when it
/// becomes a full ghost: `FD:WHICH,...` (WHICH: 1 or 2, the fd the connection feeds).
pub const ENV_CONNS: &str = "BPROC_GHOST_CONNS";

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Output connections and where each goes.
pub struct Relay {
    listener: TcpListener,
    token: [u8; 16],
    conns: Vec<(TcpStream, i32)>,
}

fn parse_token(hex: &str) -> Option<[u8; 16]> {
    let mut t = [0u8; 16];
    hex::decode_to_slice(hex, &mut t).ok()?;
    Some(t)
}

/// The value of [`ENV_IO`] for `token` (and an inherited listener `fd`).
pub fn env_value(token: &[u8; 16], fd: Option<i32>) -> String {
    let hex = hex::encode(token);
    match fd {
        Some(fd) => format!("{hex}:{fd}"),
        None => hex,
    }
}

/// The inherited listener's fd named by the environment, which must survive the ghost's
/// closing of what it inherited.
pub fn inherited_fd() -> Option<u32> {
    std::env::var(ENV_IO).ok()?.split_once(':')?.1.parse().ok()
}

/// The inherited output connections named by the environment, each with the fd it feeds.
pub fn inherited_conns() -> Vec<(u32, i32)> {
    let v = std::env::var(ENV_CONNS).unwrap_or_default();
    v.split(',')
        .filter_map(|c| {
            let (fd, which) = c.split_once(':')?;
            Some((fd.parse().ok()?, which.parse().ok().filter(|w| *w == 1 || *w == 2)?))
        })
        .collect()
}

impl Relay {
    /// The relay the environment asks for, if any.
    pub fn from_env() -> Option<std::io::Result<Relay>> {
        let v = std::env::var(ENV_IO).ok()?;
        let (hex, fd) = match v.split_once(':') {
            Some((h, fd)) => (h, fd.parse::<i32>().ok()),
            None => (v.as_str(), None),
        };
        let token = parse_token(hex)?;
        let listener = match fd {
            Some(fd) => Ok(TcpListener::from(bproc_sys::inherited_socket_fd(fd)?)),
            None => TcpListener::bind("0.0.0.0:0"),
        };
        Some(listener.and_then(|l| {
            l.set_nonblocking(true)?;
            crate::close_on_exec(l.as_raw_fd(), true)?;
            let mut conns = Vec::new();
            for (fd, which) in inherited_conns() {
                if let Some(c) = bproc_sys::inherited_socket_fd(fd as i32) {
                    crate::close_on_exec(c.as_raw_fd(), true)?;
                    conns.push((TcpStream::from(c), which));
                }
            }
            Ok(Relay { listener: l, token, conns })
        }))
    }

    /// The environment that hands this relay's listener and connections to the program the
    /// ghost executes next ([`ENV_IO`], [`ENV_CONNS`]); they stay open across the exec.
    pub fn hand_over(&self) -> Vec<(&'static str, String)> {
        let keep = |fd: i32| crate::close_on_exec(fd, false);
        let fd = self.listener.as_raw_fd();
        if keep(fd).is_err() {
            return Vec::new();
        }
        let conns: Vec<String> = self
            .conns
            .iter()
            .filter(|(c, _)| keep(c.as_raw_fd()).is_ok())
            .map(|(c, which)| format!("{}:{which}", c.as_raw_fd()))
            .collect();
        vec![(ENV_IO, env_value(&self.token, Some(fd))), (ENV_CONNS, conns.join(","))]
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// What to poll: the listener, then each connection.
    pub fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd())
            .chain(self.conns.iter().map(|(c, _)| c.as_fd()))
            .collect()
    }

    /// Serves what `poll` found ready (flags in [`Relay::poll_fds`] order).
    pub fn on_ready(&mut self, ready: &[bool]) {
        // Oldest first: what a copy wrote before it moved on comes out before what the
        // next copy writes.
        let mut ended = Vec::new();
        for i in 0..self.conns.len() {
            if ready.get(i + 1).copied().unwrap_or(false) && !self.pump(i) {
                ended.push(i);
            }
        }
        for i in ended.into_iter().rev() {
            self.conns.remove(i);
        }
        if ready.first().copied().unwrap_or(false) {
            self.accept();
        }
    }

    fn accept(&mut self) {
        while let Ok((mut s, _)) = self.listener.accept() {
            let mut head = [0u8; conn::HEADER_LEN];
            let ok = s.set_nonblocking(false).is_ok()
                && s.set_read_timeout(Some(HEADER_TIMEOUT)).is_ok()
                && s.read_exact(&mut head).is_ok()
                && s.set_read_timeout(None).is_ok();
            let (token, _, what) = conn::parse(&head);
            // Not ours, or not output: closed at once.
            if ok && token == self.token && (what == 1 || what == 2) {
                self.conns.push((s, i32::from(what)));
            }
        }
    }

    /// Copies what connection `i` has to its fd; false at its end.
    fn pump(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 65536];
        let (s, fd) = &mut self.conns[i];
        match s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                write_all(*fd, &buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Relays until every connection has ended, or until `limit` passes.
    pub fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.accept();
        while !self.conns.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds: Vec<PollFd<'_>> =
                self.poll_fds().into_iter().map(|f| PollFd::new(f, PollFlags::POLLIN)).collect();
            if poll(&mut fds, PollTimeout::from(ms)).is_err() {
                continue;
            }
            let ready: Vec<bool> =
                fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            self.on_ready(&ready);
        }
    }
}

/// Writes all of `data` to `fd` (1 or 2); output nobody reads any more (a closed pipe) is
/// dropped, so the remote process is never held up by it.
fn write_all(fd: i32, mut data: &[u8]) {
    let (o, e) = (std::io::stdout(), std::io::stderr());
    let out = if fd == 1 { o.as_fd() } else { e.as_fd() };
    while !data.is_empty() {
        match nix::unistd::write(out, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_the_environment_value() {
        let t = [0xab; 16];
        assert_eq!(parse_token(&env_value(&t, None)), Some(t));
        assert_eq!(env_value(&t, Some(7)).split_once(':').unwrap().1, "7");
        assert_eq!(parse_token("zz"), None);
    }
}
