//! The kernel's process events (the netlink proc connector): forks, execs and exits of every
//! process on the machine, as they happen. The slave follows the processes its jobs fork
//! with them. Needs CAP_NET_ADMIN in the initial network namespace.
//!
//! Message layout (`<linux/netlink.h>`, `<linux/connector.h>`, `<linux/cn_proc.h>`): a 16-byte
//! `nlmsghdr`, a 20-byte `cn_msg`, then `proc_event` { what u32, cpu u32, timestamp u64,
//! data }, all in host byte order.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

/// One process event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// `parent` forked `child` (thread group ids; threads are left out).
    Fork {
        /// The parent's pid.
        parent: i32,
        /// The child's pid.
        child: i32,
    },
    /// `pid` ran a new program.
    Exec {
        /// The process.
        pid: i32,
    },
    /// `pid` ended with `status` in `wait` format.
    Exit {
        /// The process.
        pid: i32,
        /// Its wait status.
        status: i32,
    },
}

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;

/// A subscription to process events.
#[derive(Debug)]
pub struct ProcEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl ProcEvents {
    /// Subscribes to forks, execs and exits (a kernel ≥ 6.6 filters the rest out).
    pub fn subscribe() -> std::io::Result<ProcEvents> {
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_CONNECTOR)
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; zero is a valid value for every field.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The listen request with an event filter (struct proc_input).
        let payload: [u32; 2] =
            [PROC_CN_MCAST_LISTEN, PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_EXIT];
        let total = NLMSG_HDR + CN_MSG + 8;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&8u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        for v in payload {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        nix::unistd::write(&fd, &msg)?;
        Ok(ProcEvents { fd, buf: vec![0u8; 8192] })
    }

    /// Waits for the next datagram and returns its events (none for what is filtered out).
    /// `ENOBUFS` means events were lost: resynchronise from another source.
    pub fn read(&mut self) -> std::io::Result<Vec<ProcEvent>> {
        let n = nix::unistd::read(self.fd.as_raw_fd(), &mut self.buf)?;
        Ok(parse(&self.buf[..n]))
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every event in a datagram (several netlink messages may share one).
fn parse(mut b: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else { break };
        if len < NLMSG_HDR || len > b.len() {
            break;
        }
        let ev = &b[NLMSG_HDR..len];
        // proc_event starts after cn_msg: what(4) cpu(4) timestamp(8), then the data.
        let data = CN_MSG + 16;
        let what = u32_at(ev, CN_MSG);
        let field = |i: usize| u32_at(ev, data + 4 * i).map(|v| v as i32);
        let parsed = match what {
            Some(PROC_EVENT_FORK) => match (field(1), field(2), field(3)) {
                // parent_pid(0) parent_tgid(1) child_pid(2) child_tgid(3): processes only.
                (Some(parent), Some(child), Some(tgid)) if child == tgid => {
                    Some(ProcEvent::Fork { parent, child })
                }
                _ => None,
            },
            Some(PROC_EVENT_EXEC) => field(1).map(|pid| ProcEvent::Exec { pid }),
            Some(PROC_EVENT_EXIT) => match (field(0), field(1), field(2)) {
                // process_pid(0) process_tgid(1) exit_code(2): the whole process only.
                (Some(pid), Some(tgid), Some(status)) if pid == tgid => {
                    Some(ProcEvent::Exit { pid, status })
                }
                _ => None,
            },
            _ => None,
        };
        out.extend(parsed);
        let aligned = (len + 3) & !3;
        b = b.get(aligned..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = vec![0u8; CN_MSG];
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&[0u8; 12]);
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        let mut m = ((NLMSG_HDR + ev.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&[0u8; 12]);
        m.extend_from_slice(&ev);
        m
    }

    #[test]
    fn events_parse_and_threads_are_left_out() {
        let mut b = message(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        b.extend(message(PROC_EVENT_FORK, &[10, 10, 12, 11]));
        b.extend(message(PROC_EVENT_EXEC, &[11, 11]));
        b.extend(message(PROC_EVENT_EXIT, &[11, 11, 0x500, 17]));
        b.extend(message(PROC_EVENT_EXIT, &[12, 11, 0, 17]));
        assert_eq!(
            parse(&b),
            [
                ProcEvent::Fork { parent: 10, child: 11 },
                ProcEvent::Exec { pid: 11 },
                ProcEvent::Exit { pid: 11, status: 0x500 },
            ]
        );
        assert!(parse(&b[..20]).is_empty());
    }

    #[test]
    fn a_real_fork_is_seen() {
        let Ok(mut ev) = ProcEvents::subscribe() else {
            eprintln!("SKIPPED: no proc connector here (needs CAP_NET_ADMIN in the initial network namespace)");
            return;
        };
        let child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        let mut child = child;
        child.wait().unwrap();
        let mut seen = (false, false);
        while !(seen.0 && seen.1) {
            for e in ev.read().unwrap() {
                match e {
                    ProcEvent::Fork { child, .. } if child == pid => seen.0 = true,
                    ProcEvent::Exit { pid: p, status } if p == pid => {
                        assert_eq!(status, 0);
                        seen.1 = true;
                    }
                    _ => {}
                }
            }
        }
    }
}
