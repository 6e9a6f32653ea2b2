//! What the kernel says about another process, read from `/proc/PID`: the supplementary
//! groups of a daemon's client, and what a process it launches inherits (resource limits and
//! umask). A client could lie about any of these in a request (an `LD_PRELOAD` object makes
//! `getrlimit` answer anything); `/proc` cannot be lied to by the process it describes.
//!
//! A pid names a process only while it lives: once it is reaped, the number can be given to
//! another. A [`Peer`] is therefore the pid together with the process's start time
//! (`/proc/PID/stat`, field 22, clock ticks since boot), taken when the client connected, and
//! every read checks the start time again afterwards: if the pid still names a process that
//! started then, it is the same process and what was read is its own.
//!
//! A daemon's client is identified by its connection ([`Peer::of_socket`]): from Linux 6.5
//! the kernel hands over a pidfd of the process that connected (`SO_PEERPIDFD`), and the
//! start time read under its pid is that process's if the process has not ended by the time
//! the read is done (a pid is given to another only once its process has ended and been
//! reaped). Without it, a client that exits, and whose pid is reused, between its `connect`
//! and [`Peer::identify`] (microseconds, and a full turn of the pid space) would be taken for
//! the new process. The pidfd is closed at once: a daemon holds one descriptor per client,
//! as its caps on clients count them. The supplementary groups a client had when it
//! connected come from its connection too ([`socket_groups`], `SO_PEERGROUPS`), which
//! spares reading `/proc/PID/status` and its start time again.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use thiserror::Error;

use crate::Limit;

/// Why `/proc` could not say.
#[derive(Debug, Error)]
pub enum PeerError {
    /// The process has ended, or its pid now names another process.
    #[error("process {pid} is gone (or its pid now names another process)")]
    Gone {
        /// The pid.
        pid: i32,
    },
    /// A file under `/proc/PID` could not be read.
    #[error("cannot read /proc/{pid}/{file}")]
    Read {
        /// The pid.
        pid: i32,
        /// The file.
        file: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file under `/proc/PID` did not hold what this kernel interface promises.
    #[error("/proc/{pid}/{file} is not as expected: {what}")]
    Parse {
        /// The pid.
        pid: i32,
        /// The file.
        file: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// One process, named by its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pid: i32,
    start: u64,
}

/// What a launched process inherits from its launcher.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inherited {
    /// Every resource limit the kernel lists, in resource order.
    pub rlimits: Vec<Limit>,
    /// The file mode creation mask.
    pub umask: u32,
}

impl Peer {
    /// The process that has pid `pid` now.
    pub fn identify(pid: i32) -> Result<Peer, PeerError> {
        let stat = read(pid, "stat")?;
        let start = start_time(&stat).ok_or_else(|| PeerError::Parse {
            pid,
            file: "stat",
            what: "no start time".into(),
        })?;
        Ok(Peer { pid, start })
    }

    /// The process at the other end of Unix socket `sock`, whose pid the kernel says is
    /// `pid`: confirmed by the pidfd the kernel keeps for the socket (Linux 6.5); on an older
    /// kernel, as [`Peer::identify`] finds it.
    pub fn of_socket(sock: BorrowedFd<'_>, pid: i32) -> Result<Peer, PeerError> {
        let mut fd: nix::libc::c_int = -1;
        let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int we own.
        let r = unsafe {
            nix::libc::getsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERPIDFD,
                (&mut fd as *mut nix::libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 || fd < 0 {
            return Peer::identify(pid);
        }
        // SAFETY: the kernel gave us this new fd (close-on-exec); we own it from here.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let peer = Peer::identify(pid)?;
        // SAFETY: pidfd_send_signal with signal 0 (none is sent) on a pidfd we own, and no
        // siginfo.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                0,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            return Err(PeerError::Gone { pid });
        }
        Ok(peer)
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its supplementary groups (`SO_PEERCRED` gives only the uid and gid).
    pub fn groups(&self) -> Result<Vec<u32>, PeerError> {
        let status = read(self.pid, "status")?;
        self.same()?;
        Ok(groups(&status).unwrap_or_default())
    }

    /// Its resource limits and umask, as the kernel has them now.
    pub fn inherited(&self) -> Result<Inherited, PeerError> {
        let pid = self.pid;
        let limits = read(pid, "limits")?;
        let status = read(pid, "status")?;
        self.same()?;
        let rlimits = parse_limits(&limits).map_err(|what| PeerError::Parse {
            pid,
            file: "limits",
            what: what.to_string(),
        })?;
        let umask = umask(&status).ok_or_else(|| PeerError::Parse {
            pid,
            file: "status",
            what: "no Umask line (Linux 4.7 added it)".into(),
        })?;
        Ok(Inherited { rlimits, umask })
    }

    /// Fails unless the pid still names the process identified.
    fn same(&self) -> Result<(), PeerError> {
        match read_proc(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) if start_time(&stat) == Some(self.start) => Ok(()),
            _ => Err(PeerError::Gone { pid: self.pid }),
        }
    }
}

/// The supplementary groups the process at the other end of Unix socket `sock` had when it
/// connected (`SO_PEERGROUPS`, Linux 4.13).
pub fn socket_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<u32> = vec![0; 64];
    loop {
        let mut len = (groups.len() * 4) as nix::libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the vector's buffer, which holds
        // that many; on ERANGE it writes the length it needs into `len` and nothing else.
        let r = unsafe {
            nix::libc::getsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let err = io::Error::last_os_error();
        match r {
            0 => {
                groups.truncate(len as usize / 4);
                return Ok(groups);
            }
            _ if err.raw_os_error() == Some(nix::libc::ERANGE)
                && len as usize / 4 > groups.len() =>
            {
                groups.resize(len as usize / 4, 0);
            }
            _ => return Err(err),
        }
    }
}

/// Reads a file of `/proc` whole. Its files say they are empty, so `fs::read_to_string`
/// would ask for the file's size first (`statx` and `lseek`) and then grow its buffer from
/// 32 bytes, a system call each time; this reads a page at a time onto the stack, which
/// holds most of them in one read, and keeps only what came (a slave reads a few of these
/// per process it starts, and a heap block of a page costs the allocator more than the
/// copy).
pub fn read_proc(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut page = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        match file.read(&mut page) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&page[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads `/proc/PID/FILE`; a process that is gone is [`PeerError::Gone`].
fn read(pid: i32, file: &'static str) -> Result<String, PeerError> {
    read_proc(format!("/proc/{pid}/{file}")).map_err(|source| match source.raw_os_error() {
        Some(nix::libc::ENOENT | nix::libc::ESRCH) => PeerError::Gone { pid },
        _ => PeerError::Read { pid, file, source },
    })
}

/// The start time in `/proc/PID/stat` text (field 22).
fn start_time(stat: &str) -> Option<u64> {
    // Field 22, counted as [`Stat`] counts, without the copies it keeps (a master reads
    // this for every connection).
    stat.rsplit_once(')')?.1.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// A process's `/proc/PID/stat`: its command name and numbered fields, as proc(5) numbers
/// them (1 the pid, 2 the name, 3 the state, 4 the parent, 22 the start time...). The name
/// is in parentheses and may hold anything, spaces and parentheses included, so the fields
/// are counted from its last `)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    comm: String,
    /// Fields 3 and on.
    rest: Vec<String>,
}

impl Stat {
    /// Reads `/proc/PID/stat`; `None` when the process is gone.
    pub fn read(pid: i32) -> Option<Stat> {
        Stat::parse(&read_proc(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<Stat> {
        let (head, rest) = text.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        Some(Stat { comm, rest: rest.split_whitespace().map(str::to_owned).collect() })
    }

    /// The command name (field 2, without its parentheses).
    pub fn comm(&self) -> &str {
        &self.comm
    }

    /// The state letter (field 3): `R`, `S`, `T` (stopped), `Z` (a zombie)...
    pub fn state(&self) -> Option<char> {
        self.field(3)?.chars().next()
    }

    /// Field `n` (3 and on) as text.
    pub fn field(&self, n: usize) -> Option<&str> {
        self.rest.get(n.checked_sub(3)?).map(String::as_str)
    }

    /// Field `n` (3 and on) as a number.
    pub fn num<T: std::str::FromStr>(&self, n: usize) -> Option<T> {
        self.field(n)?.parse().ok()
    }
}

/// The `Groups:` of `/proc/PID/status` text.
fn groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// The `Umask:` of `/proc/PID/status` text (octal).
fn umask(status: &str) -> Option<u32> {
    let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok().filter(|m| *m <= 0o777)
}

/// `/proc/PID/limits` rows, in the kernel's order, which is the resource numbers' order
/// (`fs/proc/base.c`, `lnames`).
const LIMIT_NAMES: [&str; 16] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// The limits in `/proc/PID/limits` text: (resource, soft, hard), `u64::MAX` for unlimited.
fn parse_limits(text: &str) -> Result<Vec<Limit>, LimitsFault> {
    let value = |v: &str| match v {
        "unlimited" => Ok(u64::MAX),
        v => v.parse::<u64>().map_err(|_| LimitsFault::Value(v.to_string())),
    };
    let mut out = Vec::with_capacity(LIMIT_NAMES.len());
    for line in text.lines().skip(1) {
        let Some((resource, name)) =
            LIMIT_NAMES.iter().enumerate().find(|(_, n)| line.starts_with(**n))
        else {
            // A row a newer kernel added: not a limit this process can be given.
            continue;
        };
        let mut f = line[name.len()..].split_whitespace();
        let (Some(soft), Some(hard)) = (f.next(), f.next()) else {
            return Err(LimitsFault::ShortRow(line.to_string()));
        };
        out.push((resource as u32, value(soft)?, value(hard)?));
    }
    if out.len() != LIMIT_NAMES.len() {
        return Err(LimitsFault::Count { listed: out.len(), known: LIMIT_NAMES.len() });
    }
    Ok(out)
}

/// What is wrong with a `/proc/PID/limits` text.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum LimitsFault {
    /// A value neither a number nor `unlimited`.
    #[error("bad limit {0:?}")]
    Value(String),
    /// A row without soft and hard values.
    #[error("short row {0:?}")]
    ShortRow(String),
    /// Rows missing.
    #[error("{listed} of {known} limits listed")]
    Count {
        /// Rows found.
        listed: usize,
        /// Rows expected.
        known: usize,
    },
}

/// Whether a process serves the Unix socket at `path`, and which (its pid, when the kernel
/// says; 0 when its accept queue is full): a daemon about to replace a socket file must not
/// remove one that another live daemon serves, which would leave that daemon's clients with
/// nothing to connect to. A non-blocking connect succeeds, or finds the queue full (`EAGAIN`),
/// only while something listens; `SO_PEERCRED` on it names the process that listened.
pub fn socket_server(path: &std::path::Path) -> Option<i32> {
    use nix::sys::socket::{
        connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(path).ok()?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Some(getsockopt(&fd, sockopt::PeerCredentials).map_or(0, |c| c.pid())),
        Err(nix::errno::Errno::EAGAIN) => Some(0),
        Err(_) => None,
    }
}

/// Whether processes `a` and `b` share one address space (the kernel's `kcmp`), as the light
/// ghosts of one launch do.
pub fn same_address_space(a: i32, b: i32) -> nix::Result<bool> {
    const KCMP_VM: nix::libc::c_long = 1;
    // SAFETY: kcmp takes two pids, a type and two unused indices; it reads no memory of ours.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_kcmp, a, b, KCMP_VM, 0usize, 0usize) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(r == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_names_end() {
        let s = Stat::parse("42 (a) b (c) S 7 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 999 9\n")
            .unwrap();
        assert_eq!(s.comm(), "a) b (c");
        assert_eq!((s.state(), s.num::<i32>(4), s.num::<u64>(22)), (Some('S'), Some(7), Some(999)));
        assert_eq!((s.field(2), s.field(60)), (None, None));
        assert!(Stat::parse("42 no name").is_none());
        let me = Stat::read(std::process::id() as i32).unwrap();
        assert_eq!(me.num::<i32>(4), Some(nix::unistd::getppid().as_raw()));
    }

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              10                   10                   seconds   
Max file size             2097152              2097152              bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             63432                63432                processes 
Max open files            512                  512                  files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       63432                63432                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

    #[test]
    fn limits_parse_in_resource_order() {
        let l = parse_limits(LIMITS).unwrap();
        assert_eq!(l.len(), 16);
        assert_eq!(l[0], (0, 10, 10));
        assert_eq!(l[1], (1, 2_097_152, 2_097_152));
        assert_eq!(l[3], (3, 8_388_608, u64::MAX));
        assert_eq!(l[7], (7, 512, 512));
        assert_eq!(l[13], (13, 0, 0));
        assert_eq!(l[15], (15, u64::MAX, u64::MAX));
        let cut: String = LIMITS.lines().take(9).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse_limits(&cut), Err(LimitsFault::Count { listed: 8, known: 16 }));
        let bad = LIMITS.replace("512                  512", "512                  lots");
        assert_eq!(parse_limits(&bad), Err(LimitsFault::Value("lots".into())));
    }

    #[test]
    fn status_and_stat_fields() {
        let status = "Name:\tsh\nUmask:\t0027\nState:\tS (sleeping)\nGroups:\t4 24 1000 \n";
        assert_eq!(umask(status), Some(0o027));
        assert_eq!(groups(status), Some(vec![4, 24, 1000]));
        assert_eq!(umask("Name:\tsh\n"), None);
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000";
        assert_eq!(start_time(stat), Some(987_654));
    }

    #[test]
    fn this_process_is_read_and_a_recycled_pid_is_caught() {
        let me = Peer::identify(std::process::id() as i32).unwrap();
        let got = me.inherited().unwrap();
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(got.rlimits[7], (7, soft, hard));
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(umask);
        assert_eq!(got.umask, umask.bits());
        // Another process's start time under this pid: as if the pid had been reused.
        let other = Peer { start: me.start + 1, ..me };
        assert!(matches!(other.inherited(), Err(PeerError::Gone { .. })));
        assert!(matches!(Peer::identify(i32::MAX), Err(PeerError::Gone { .. })));
    }

    #[test]
    fn a_socket_s_peer_and_groups_come_from_the_connection() {
        use std::os::fd::AsFd;
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("bproc-peer-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        // A child that connects and then waits for the pipe to close.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let addr = nix::sys::socket::UnixAddr::new(path.as_c_str()).unwrap();
        // SAFETY: the child makes only system calls (no allocation, no locks) and `_exit`s.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(wr);
                use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType};
                let stream = SockType::Stream;
                if let Ok(s) = socket(AddressFamily::Unix, stream, SockFlag::empty(), None) {
                    let _ = connect(s.as_raw_fd(), &addr);
                    let _ = nix::unistd::read(rd.as_raw_fd(), &mut [0u8; 1]);
                }
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { nix::libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(rd);
        let (conn, _): (UnixStream, _) = listener.accept().unwrap();
        let _ = std::fs::remove_file(&dir);
        let peer = Peer::of_socket(conn.as_fd(), child.as_raw()).unwrap();
        assert_eq!(peer, Peer::identify(child.as_raw()).unwrap());
        assert!(peer.inherited().is_ok());
        let mine: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        assert_eq!(socket_groups(conn.as_fd()).unwrap(), mine);
        drop(wr);
        nix::sys::wait::waitpid(child, None).unwrap();
        // Its pid names nobody now: the connection's pidfd says so too.
        assert!(matches!(
            Peer::of_socket(conn.as_fd(), child.as_raw()),
            Err(PeerError::Gone { .. })
        ));
    }
}
