//! The bproc client library: talk to the local `bpmaster`, read the node table, change nodes,
//! watch for changes, and evaluate node specifications.
//!
//! The master listens on a Unix socket (`$BPROC_SOCKET`, default
//! [`DEFAULT_SOCKET`]) and identifies callers by their kernel credentials, so this library
//! needs no privileges of its own: what a caller may do is what its uid and groups allow.
//!
//! # Main types
//! - [`Client`]: one connection, blocking calls (`nodes`, `set_state`, `chmod`, ...).
//! - [`Watcher`]: the node table after every change, for `bpstat -U` and schedulers; it is
//!   a file descriptor, so it works with `poll`/`epoll`.
//! - [`nodespec`]: BProc's node specification grammar (`0-3,7`, `allup`, `n[0-7]`).
//! - [`BprocError`]: every failure, with the errno-style code BProc would report.
//! - [`launch`]: start a program on nodes, each remote process with a ghost that the caller
//!   waits for as for a local child; [`Client::procs`] and [`Client::proc_stats`] read the
//!   master's process table.
//!
//! The wire protocol's message enum is not part of this API: a [`Client`] speaks it inside
//! and offers a method for each request, with types of this crate ([`MasterInfo`],
//! [`CopyRequest`], [`Event`]). The plain data it returns ([`NodeStatus`], [`ProcEntry`], ...)
//! are the protocol's own structs, re-exported.
//!
//! ```no_run
//! let mut c = bproc_client::Client::connect()?;
//! for n in c.nodes()? {
//!     println!("{} {}", n.node, n.state);
//! }
//! # Ok::<(), bproc_client::BprocError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ghost;
pub mod launch;
pub mod migrate;
pub mod nodespec;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use bproc_proto::errno;
use bproc_proto::Message;
pub use bproc_proto::{
    CopyLink, CopyOpts, CopyRequest, Endpoint, ExitStatus, FdIo, IoSpec, LibOp, NodeAction,
    NodeInfo, NodeStatus, ProcEntry, ProcStat, MAX_ATTR_VALUE, MAX_FD, MAX_FD_IO,
    VERSION as PROTOCOL_VERSION,
};
use bproc_proto::{DecodeError, Header, HEADER_LEN};
use thiserror::Error;

pub use bproc_proto::{DEFAULT_PORT, DEFAULT_SOCKET};
/// Node number of the master.
pub const NODE_MASTER: i32 = -1;
/// How long a client waits for bpmaster to accept its connection, and then for each answer,
/// when `$BPROC_TIMEOUT` does not say: longer than the 30 s the master gives a node to answer
/// a request it passes on, so the master's own reason gets through; short enough that a hung
/// master is reported instead of waited on.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long clients wait for bpmaster: `$BPROC_TIMEOUT` seconds (fractions allowed; `0` waits
/// forever), else [`DEFAULT_TIMEOUT`]. `None` is no limit.
///
/// Only waits for an answer are bounded: a watcher waiting for the next change, or bpsh
/// waiting for its processes, waits as long as they run.
pub fn timeout() -> Option<Duration> {
    match std::env::var("BPROC_TIMEOUT").ok().and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(0.0) => None,
        Some(s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
        _ => Some(DEFAULT_TIMEOUT),
    }
}

/// Everything that can go wrong talking to the master.
#[derive(Debug, Error)]
pub enum BprocError {
    /// No master answers on the socket.
    #[error("cannot reach bpmaster at {} (is bpmaster running? set BPROC_SOCKET to its socket)", path.display())]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The master accepted no connection, or gave no answer, within the client's limit
    /// ([`timeout`]).
    #[error(
        "bpmaster at {} did not {what} within {} s (is it hung or overloaded? \
         BPROC_TIMEOUT sets how many seconds to wait)",
        path.display(),
        limit.as_secs_f64()
    )]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What it did not do: `accept the connection`, `answer`.
        what: &'static str,
        /// How long the client waited.
        limit: Duration,
    },
    /// The socket is there but this user may not connect to it (the socket's or a
    /// directory's permissions).
    #[error(
        "no permission to connect to bpmaster's socket {} (the socket or a directory above it \
         does not let this user in; ask the administrator, or set BPROC_SOCKET to a socket you \
         may use)",
        path.display()
    )]
    ConnectDenied {
        /// The socket tried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-call.
    #[error("lost the connection to bpmaster")]
    Io(#[from] std::io::Error),
    /// The master sent something undecodable.
    #[error("bad reply from bpmaster")]
    Decode(#[from] DecodeError),
    /// The master refused or failed the request.
    #[error("{message}")]
    Remote {
        /// errno or `BE_*` code.
        code: i32,
        /// The master's explanation.
        message: String,
    },
    /// The master answered with the wrong kind of message.
    #[error("unexpected reply {0} from bpmaster")]
    Unexpected(&'static str),
    /// A checkpoint or restore failed (`EBUSY`: the process holds what cannot move).
    #[error(transparent)]
    Migration(#[from] bproc_ckpt::CkptError),
}

impl BprocError {
    /// The errno value BProc's C library would set for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BprocError::Remote { code, .. } => *code,
            BprocError::Connect { .. } => errno::ENOSYS,
            BprocError::ConnectDenied { .. } => errno::EACCES,
            BprocError::Timeout { .. } => errno::ETIMEDOUT,
            BprocError::Migration(e) => e.errno(),
            _ => errno::EIO,
        }
    }

    /// BProc's own error, when it is one (`BE_*`), rather than a system errno.
    ///
    /// ```
    /// use bproc_client::{BeError, BprocError};
    /// let e = BprocError::Remote { code: 301, message: "node 5 is down".into() };
    /// assert_eq!(e.bproc_error(), Some(BeError::NodeDown));
    /// assert_eq!(BeError::from_code(-303), Some(BeError::SlaveDied));
    /// assert_eq!(BeError::NodeDown.code(), 301);
    /// ```
    pub fn bproc_error(&self) -> Option<BeError> {
        BeError::from_code(self.errno())
    }
}

/// BProc's own error codes (`BE_*` in `sys/bproc_common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeError {
    /// `BE_INVALIDNODE` (300): no such node.
    InvalidNode,
    /// `BE_NODEDOWN` (301): the node is down.
    NodeDown,
    /// `BE_SAMENODE` (302): a move to the node the process is on.
    SameNode,
    /// `BE_SLAVEDIED` (303): the node's slave died during the request.
    SlaveDied,
    /// `BE_INVALIDPROC` (304): no such process.
    InvalidProc,
}

impl BeError {
    /// The error for `code` or its negation (as in `bproc_vexecmove`'s `pids`), if it is
    /// one of BProc's.
    pub fn from_code(code: i32) -> Option<BeError> {
        Some(match code.checked_abs()? {
            errno::BE_INVALIDNODE => BeError::InvalidNode,
            errno::BE_NODEDOWN => BeError::NodeDown,
            errno::BE_SAMENODE => BeError::SameNode,
            errno::BE_SLAVEDIED => BeError::SlaveDied,
            errno::BE_INVALIDPROC => BeError::InvalidProc,
            _ => return None,
        })
    }

    /// Its code.
    pub fn code(self) -> i32 {
        match self {
            BeError::InvalidNode => errno::BE_INVALIDNODE,
            BeError::NodeDown => errno::BE_NODEDOWN,
            BeError::SameNode => errno::BE_SAMENODE,
            BeError::SlaveDied => errno::BE_SLAVEDIED,
            BeError::InvalidProc => errno::BE_INVALIDPROC,
        }
    }
}

impl std::fmt::Display for BeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&strerror(self.code()))
    }
}

/// BProc's `bproc_strerror`: its own texts for `BE_*` codes, the C library's for the rest.
/// Accepts a code or its negation (as per-node codes come in `bproc_vexecmove`'s `pids`).
///
/// ```
/// use bproc_client::{errno, strerror};
/// assert_eq!(strerror(errno::BE_NODEDOWN), "Node is down");
/// assert_eq!(strerror(-errno::BE_NODEDOWN), "Node is down");
/// assert_eq!(strerror(errno::EPERM), "Operation not permitted");
/// ```
pub fn strerror(code: i32) -> String {
    if let Some(t) = errno::bproc_text(code) {
        return t.to_owned();
    }
    let s = std::io::Error::from_raw_os_error(code.abs()).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Parses an integer as C's `strtol(s, &end, 0)` with a full-string check: decimal, `0x` hex,
/// or leading-`0` octal, with an optional sign.
///
/// ```
/// assert_eq!(bproc_client::parse_c_int("0x10"), Some(16));
/// assert_eq!(bproc_client::parse_c_int("010"), Some(8));
/// assert_eq!(bproc_client::parse_c_int("-3"), Some(-3));
/// assert_eq!(bproc_client::parse_c_int("3x"), None);
/// ```
pub fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else {
        body.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok())?
    };
    Some(if neg { -v } else { v })
}

/// The socket path clients use: `$BPROC_SOCKET` or [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os("BPROC_SOCKET").map_or_else(|| DEFAULT_SOCKET.into(), PathBuf::from)
}

fn read_message(s: &mut UnixStream) -> Result<(u32, Message), BprocError> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head)?;
    let h = Header::parse(&head)?;
    // Kept as it comes: the header's length alone allocates nothing.
    let mut body = Vec::with_capacity((h.len as usize).min(64 << 10));
    s.take(u64::from(h.len)).read_to_end(&mut body)?;
    if body.len() < h.len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok((h.id, bproc_proto::decode_body(&h, &body)?))
}

/// A connection to the master.
///
/// The master closes a connection of plain requests that stays quiet for ten minutes; the
/// next request then reconnects once, transparently. A connection the master refuses (a
/// user's cap of connections, `maxclientsperuser`) fails with its reason as
/// [`BprocError::Remote`] (`EAGAIN`).
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u32,
    path: PathBuf,
    /// The limit on each wait for an answer ([`timeout`]).
    limit: Option<Duration>,
    /// When the latest reply came; `None` before the first.
    answered: Option<std::time::Instant>,
}

/// How long a connection must have been quiet for its loss to be taken as the master's idle
/// close, worth one reconnection.
const QUIET_BEFORE_RECONNECT: std::time::Duration = std::time::Duration::from_secs(60);

/// The [`MasterInfo`] in a reply to `MasterInfo`.
fn master_info_of(reply: Message) -> Result<MasterInfo, BprocError> {
    match reply {
        Message::MasterInfoReply {
            version,
            addrs,
            bytes_to_slaves,
            client_node,
            client_ip,
            ghost,
            ghosts_made,
        } => Ok(MasterInfo {
            version,
            addrs,
            bytes_to_slaves,
            ghosts_made,
            client_node,
            client_ip,
            ghost,
        }),
        other => Err(BprocError::Unexpected(other.name())),
    }
}

/// Where a client runs, from what the master said of it.
/// A master that does not know a request answers `ENOSYS` and keeps the connection.
fn older_master(e: &BprocError) -> bool {
    matches!(e, BprocError::Remote { code, .. } if *code == errno::ENOSYS)
}

/// The entries of `table` among `numbers`, as a master that knows [`Message::NodeListOf`]
/// answers it.
fn only(table: Vec<NodeStatus>, numbers: &[i32]) -> Vec<NodeStatus> {
    table.into_iter().filter(|n| numbers.contains(&n.node)).collect()
}

fn place_of(info: MasterInfo) -> Place {
    let MasterInfo { addrs, client_node, client_ip, ghost, .. } = info;
    Place {
        node: client_node,
        ghost: (client_node == NODE_MASTER && !ghost.is_empty()).then_some(ghost),
        ip: client_ip
            .or_else(|| addrs.iter().find_map(|e| e.ip))
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
    }
}

/// Whether `e` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` report `EAGAIN`).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// The error for a failed connection to the master's socket `path`: "is bpmaster running?"
/// only when no master is there; a socket this user may not use is said so.
pub fn connect_error(path: &Path, source: std::io::Error) -> BprocError {
    match source.kind() {
        std::io::ErrorKind::PermissionDenied => {
            BprocError::ConnectDenied { path: path.to_owned(), source }
        }
        _ => BprocError::Connect { path: path.to_owned(), source },
    }
}

/// Connects to the Unix socket `path`, waiting at most `limit` for a place in its accept
/// queue: a master that stopped accepting (hung, or out of descriptors) leaves a blocking
/// `connect` waiting forever once its queue is full, so the connect is non-blocking and
/// retried while the queue is full (`EAGAIN`).
fn connect_bounded(path: &Path, limit: Option<Duration>) -> Result<UnixStream, BprocError> {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let failed = |source| connect_error(path, source);
    let Some(limit) = limit else { return UnixStream::connect(path).map_err(failed) };
    let addr = UnixAddr::new(path).map_err(|e| failed(e.into()))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| failed(e.into()))?;
    let deadline = Instant::now() + limit;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(Errno::EAGAIN) => {
                return Err(BprocError::Timeout {
                    path: path.to_owned(),
                    what: "accept the connection",
                    limit,
                })
            }
            Err(e) => return Err(failed(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(failed)?;
    Ok(stream)
}

/// Whether `e` says the master closed the connection.
fn closed_by_master(e: &BprocError) -> bool {
    use std::io::ErrorKind::*;
    matches!(e, BprocError::Io(io) if matches!(io.kind(), UnexpectedEof | BrokenPipe | ConnectionReset))
}

impl Client {
    /// Connects to the master at [`socket_path`].
    pub fn connect() -> Result<Client, BprocError> {
        Self::connect_to(&socket_path())
    }

    /// Connects to the master at `path`, waiting at most [`timeout`] for it to accept.
    pub fn connect_to(path: &Path) -> Result<Client, BprocError> {
        Self::connect_within(path, timeout())
    }

    /// Connects to the master at `path`; `limit` bounds the wait for the connection to be
    /// accepted and then each wait for an answer (`None`: no limit).
    pub fn connect_within(path: &Path, limit: Option<Duration>) -> Result<Client, BprocError> {
        let stream = connect_bounded(path, limit)?;
        Ok(Client { stream, next_id: 1, path: path.to_owned(), limit, answered: None })
    }

    /// The connection, for a caller that goes on with it by itself (bpsh launches on the
    /// connection it resolved the nodes on).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Changes the limit on each wait for an answer (`None`: no limit).
    pub fn set_timeout(&mut self, limit: Option<Duration>) {
        self.limit = limit;
    }

    /// Sends one request and returns the reply; an `Error` reply becomes [`BprocError::Remote`].
    /// Sending and the wait for the reply are each bounded by the client's limit.
    pub(crate) fn request(&mut self, msg: &Message) -> Result<Message, BprocError> {
        self.request_telling(msg, || {})
    }

    /// [`Client::request`], calling `sent` once the request is written (a launcher's word
    /// to its ghosts that the launch is sent).
    pub(crate) fn request_telling(
        &mut self,
        msg: &Message,
        sent: impl Fn(),
    ) -> Result<Message, BprocError> {
        let r = self.request_once(msg, &sent);
        match r {
            Err(e)
                if closed_by_master(&e)
                    && self.answered.is_some_and(|t| t.elapsed() >= QUIET_BEFORE_RECONNECT) =>
            {
                // Closed for being quiet: the request never reached the master.
                *self = Client::connect_within(&self.path.clone(), self.limit)?;
                self.request_once(msg, &sent)
            }
            r => r,
        }
    }

    /// One request and its reply, under the client's limit; `sent` once it is written.
    fn request_once(&mut self, msg: &Message, sent: &impl Fn()) -> Result<Message, BprocError> {
        self.within_limit(|c| c.send(msg).inspect(|_| sent()).and_then(|id| c.reply(id)))
    }

    /// Two requests sent together and their replies: one round trip instead of two, under
    /// the client's limit. (No reconnect: a launcher sends these first, on a fresh
    /// connection.)
    fn request_two(&mut self, a: &Message, b: &Message) -> Result<(Message, Message), BprocError> {
        self.within_limit(|c| {
            let ia = c.next_id;
            let ib = ia.wrapping_add(1).max(1);
            c.next_id = ib.wrapping_add(1).max(1);
            let mut both = bproc_proto::encode(ia, a);
            both.extend_from_slice(&bproc_proto::encode(ib, b));
            if let Err(e) = c.stream.write_all(&both) {
                return Err(c.refusal().unwrap_or(BprocError::Io(e)));
            }
            // An error answering the first leaves the second's reply unread, which a later
            // wait skips as stale.
            let ra = c.reply(ia)?;
            Ok((ra, c.reply(ib)?))
        })
    }

    /// Runs `exchange` with each send and wait bounded by the client's limit.
    fn within_limit<T>(
        &mut self,
        exchange: impl FnOnce(&mut Client) -> Result<T, BprocError>,
    ) -> Result<T, BprocError> {
        self.stream.set_read_timeout(self.limit)?;
        self.stream.set_write_timeout(self.limit)?;
        let r = exchange(self);
        // Later waits (events, a watcher's changes) last as long as they must.
        let _ = self.stream.set_read_timeout(None);
        let _ = self.stream.set_write_timeout(None);
        match r {
            Err(BprocError::Io(e)) if timed_out(&e) => Err(BprocError::Timeout {
                path: self.path.clone(),
                what: "answer",
                limit: self.limit.unwrap_or_default(),
            }),
            r => r,
        }
    }

    /// Sends a request without waiting; its id, for [`Client::reply`].
    pub(crate) fn send(&mut self, msg: &Message) -> Result<u32, BprocError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if let Err(e) = self.stream.write_all(&bproc_proto::encode(id, msg)) {
            // A master that refused the connection wrote why before closing it.
            return Err(self.refusal().unwrap_or(BprocError::Io(e)));
        }
        Ok(id)
    }

    /// The reason the master gave for closing the connection, if it left one unread.
    fn refusal(&mut self) -> Option<BprocError> {
        self.stream.set_nonblocking(true).ok()?;
        let r = read_message(&mut self.stream);
        let _ = self.stream.set_nonblocking(false);
        match r {
            Ok((0, Message::Error { code, message })) => Some(BprocError::Remote { code, message }),
            _ => None,
        }
    }

    /// The connection, to poll while a request is out.
    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The reply to request `id`. An error with request id 0 is about the connection itself
    /// (refused, or a frame the master could not read); the master closes it after.
    pub(crate) fn reply(&mut self, id: u32) -> Result<Message, BprocError> {
        loop {
            let (rid, reply) = read_message(&mut self.stream)?;
            if let (0, Message::Error { code, message }) = (rid, &reply) {
                return Err(BprocError::Remote { code: *code, message: message.clone() });
            }
            if rid != id {
                continue; // a stale reply to an abandoned request
            }
            self.answered = Some(std::time::Instant::now());
            return match reply {
                Message::Error { code, message } => Err(BprocError::Remote { code, message }),
                r => Ok(r),
            };
        }
    }

    fn expect_ok(&mut self, msg: &Message) -> Result<(), BprocError> {
        match self.request(msg)? {
            Message::Ok => Ok(()),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// Every configured node, in configuration order.
    pub fn nodes(&mut self) -> Result<Vec<NodeStatus>, BprocError> {
        match self.request(&Message::NodeList)? {
            Message::Nodes { nodes } => Ok(nodes),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// The configured nodes among `numbers`, in configuration order: a few entries instead
    /// of a large cluster's whole table.
    pub fn nodes_of(&mut self, numbers: &[i32]) -> Result<Vec<NodeStatus>, BprocError> {
        match self.request(&Message::NodeListOf { nodes: numbers.to_vec() }) {
            Ok(Message::Nodes { nodes }) => Ok(nodes),
            Ok(other) => Err(BprocError::Unexpected(other.name())),
            Err(e) if older_master(&e) => Ok(only(self.nodes()?, numbers)),
            Err(e) => Err(e),
        }
    }

    /// [`Client::nodes`] and [`Client::place`] in one round trip (a launcher's first
    /// questions).
    pub fn nodes_and_place(&mut self) -> Result<(Vec<NodeStatus>, Place), BprocError> {
        self.table_and_place(Message::NodeList)
    }

    /// [`Client::nodes_and_place`] for the configured nodes among `numbers` only
    /// ([`Client::nodes_of`]).
    pub fn nodes_of_and_place(
        &mut self,
        numbers: &[i32],
    ) -> Result<(Vec<NodeStatus>, Place), BprocError> {
        self.table_and_place(Message::NodeListOf { nodes: numbers.to_vec() })
    }

    fn table_and_place(&mut self, ask: Message) -> Result<(Vec<NodeStatus>, Place), BprocError> {
        match self.request_two(&ask, &Message::MasterInfo) {
            Ok((Message::Nodes { nodes }, info)) => Ok((nodes, place_of(master_info_of(info)?))),
            Ok((other, _)) => Err(BprocError::Unexpected(other.name())),
            Err(e) if older_master(&e) => match ask {
                Message::NodeListOf { nodes } => {
                    let (table, place) = self.nodes_and_place()?;
                    Ok((only(table, &nodes), place))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Every remote process with a ghost on the front end, in pid order.
    pub fn procs(&mut self) -> Result<Vec<ProcEntry>, BprocError> {
        match self.request(&Message::ProcList)? {
            Message::Procs { procs } => Ok(procs),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// State, CPU time and memory of the remote processes whose ghosts are `pids` (all when
    /// empty), measured on their nodes; each entry's `rpid` is the ghost's pid.
    pub fn proc_stats(&mut self, pids: &[i32]) -> Result<Vec<ProcStat>, BprocError> {
        match self.request(&Message::ProcStatList { pids: pids.to_vec() })? {
            Message::ProcStats { stats } => Ok(stats),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// Sets a node's state string (root only; `down` disconnects the node).
    pub fn set_state(&mut self, node: i32, state: &str) -> Result<(), BprocError> {
        self.expect_ok(&Message::SetState { node, state: state.into() })
    }

    /// Sets a node's permission bits (owner or root; execute bits only).
    pub fn chmod(&mut self, node: i32, mode: u32) -> Result<(), BprocError> {
        self.expect_ok(&Message::Chmod { node, mode })
    }

    /// Sets a node's owner (root only).
    pub fn chown(&mut self, node: i32, uid: u32) -> Result<(), BprocError> {
        self.expect_ok(&Message::Chown { node, uid })
    }

    /// Sets a node's group (root, or the owner to one of its groups).
    pub fn chgrp(&mut self, node: i32, gid: u32) -> Result<(), BprocError> {
        self.expect_ok(&Message::Chgrp { node, gid })
    }

    /// Reboots, halts or powers off a node (root only; does not wait).
    pub fn node_action(&mut self, node: i32, action: NodeAction) -> Result<(), BprocError> {
        self.expect_ok(&Message::NodeCommand { node, action })
    }

    /// Makes a node's slave daemon `chroot` (root only).
    pub fn node_chroot(&mut self, node: i32, path: &str) -> Result<(), BprocError> {
        self.expect_ok(&Message::NodeChroot { node, path: path.into() })
    }

    /// Moves a node's link to new addresses without ending its session (root only).
    pub fn node_reconnect(
        &mut self,
        node: i32,
        master: Endpoint,
        local: Endpoint,
    ) -> Result<(), BprocError> {
        self.expect_ok(&Message::NodeReconnect { node, master, local })
    }

    /// One attribute of a node: `state`, `addr` (dotted IPv4, while up), or one that root
    /// set with [`Client::set_node_attr`]. A missing one is `ENODATA`.
    pub fn node_attr(&mut self, node: i32, name: &str) -> Result<Vec<u8>, BprocError> {
        match self.request(&Message::GetNodeAttr { node, name: name.into() })? {
            Message::NodeAttr { value } => Ok(value),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// Sets a node attribute (root only, while the node is up, which it keeps until it goes
    /// down); an empty value removes it. Setting `state` sets the node's state.
    pub fn set_node_attr(&mut self, node: i32, name: &str, value: &[u8]) -> Result<(), BprocError> {
        self.expect_ok(&Message::SetNodeAttr { node, name: name.into(), value: value.to_vec() })
    }

    /// The library list (BProc's `bproc_liblist`): files every machine has at the same
    /// path, which process images name instead of carrying. With `only`, just those of
    /// `only` that are on it.
    pub fn libraries(&mut self, only: &[String]) -> Result<Vec<String>, BprocError> {
        match self.request(&Message::LibList { only: only.to_vec() })? {
            Message::Libraries { names } => Ok(names),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// Changes the library list (root only; BProc's `bproc_libadd`, `bproc_libdel` and
    /// `bproc_libclear`). Adding a name already there does nothing; deleting one that is not
    /// there is `ENOENT`, and then nothing changes.
    pub fn edit_libraries(&mut self, op: LibOp, names: &[String]) -> Result<(), BprocError> {
        self.expect_ok(&Message::LibEdit { op, names: names.to_vec() })
    }

    /// What the master says of itself and of this client.
    pub fn master_info(&mut self) -> Result<MasterInfo, BprocError> {
        master_info_of(self.request(&Message::MasterInfo)?)
    }

    /// The master's software version.
    pub fn master_version(&mut self) -> Result<String, BprocError> {
        Ok(self.master_info()?.version)
    }

    /// Where this process runs: its node ([`NODE_MASTER`] on the front end) and the address
    /// nodes reach it at (for listeners that nodes connect back to).
    pub fn place(&mut self) -> Result<Place, BprocError> {
        Ok(place_of(self.master_info()?))
    }

    /// Asks the master to lay out a copy: it checks the nodes and tells each its part. The
    /// nodes' reports follow as [`Event`]s ([`Client::next_event`]), as many as the plan
    /// says; the connection serves this copy to its end.
    pub fn copy(&mut self, req: CopyRequest) -> Result<CopyPlan, BprocError> {
        match self.request(&Message::from(req))? {
            Message::CopyPlan { links, reports } => Ok(CopyPlan { links, reports }),
            other => Err(BprocError::Unexpected(other.name())),
        }
    }

    /// Waits for the next event (a frame that answers no request), such as the reports that
    /// follow a copy's plan.
    pub fn next_event(&mut self) -> Result<Event, BprocError> {
        loop {
            let (id, m) = read_message(&mut self.stream)?;
            if id == 0 {
                return Ok(match m {
                    Message::CopyResult { node, source_errors, errors, files, bytes } => {
                        Event::CopyReport(CopyReport { node, source_errors, errors, files, bytes })
                    }
                    other => Event::Other(other.name()),
                });
            }
        }
    }

    /// Turns this connection into a [`Watcher`].
    pub fn watch(mut self) -> Result<Watcher, BprocError> {
        self.expect_ok(&Message::Watch)?;
        Ok(Watcher { stream: self.stream })
    }

    /// Turns this connection into a [`Watcher`] without waiting for the master to agree, for
    /// callers that poll the watcher under a deadline of their own: the first table comes
    /// once the master has answered, and a refusal is the watcher's first error.
    pub fn watch_unconfirmed(mut self) -> Result<Watcher, BprocError> {
        self.stream.set_write_timeout(self.limit)?;
        self.send(&Message::Watch)?;
        self.stream.set_write_timeout(None)?;
        Ok(Watcher { stream: self.stream })
    }
}

/// What the master says of itself and of the client that asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInfo {
    /// The master's software version.
    pub version: String,
    /// The addresses slaves connect to.
    pub addrs: Vec<Endpoint>,
    /// Bytes the master has sent to slaves since it started.
    pub bytes_to_slaves: u64,
    /// Ghosts the master has taken in since it started (0 from an older master).
    pub ghosts_made: u64,
    /// The node the asking client runs on ([`NODE_MASTER`] on the front end).
    pub client_node: i32,
    /// Where nodes reach the asking client, for a client on a node; `None` on the front end
    /// (use `addrs`).
    pub client_ip: Option<std::net::Ipv4Addr>,
    /// The ghost program launchers start for remote processes (empty: none installed).
    pub ghost: String,
}

/// The master's answer to a [`CopyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// The caller's links: the receivers it sends to, or the senders it receives from.
    pub links: Vec<CopyLink>,
    /// How many events ([`Client::next_event`]) will report on the nodes' parts.
    pub reports: u32,
}

/// One node's report on its part of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The node.
    pub node: i32,
    /// Errors of the source, carried in the stream (`rcp: /x: No such file or directory`).
    pub source_errors: Vec<String>,
    /// The node's own errors.
    pub errors: Vec<String>,
    /// Files written.
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Something the master sends unasked, on a connection that waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A node's report on its part of a copy.
    CopyReport(CopyReport),
    /// A kind of event this client does not read, by name; it still counts as one.
    Other(&'static str),
}

/// Where a client runs, as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Its node; [`NODE_MASTER`] on the front end.
    pub node: i32,
    /// The address nodes reach it at.
    pub ip: std::net::Ipv4Addr,
    /// The ghost program to start for remote processes, when there is one and this process
    /// runs on the front end (ghosts live there only).
    pub ghost: Option<String>,
}

/// A stream of node tables, one after every change, starting with the current one.
#[derive(Debug)]
pub struct Watcher {
    stream: UnixStream,
}

/// The table a watcher's frame carries, its error, or `None` for a frame to skip.
fn table_in(m: Message) -> Option<Result<Vec<NodeStatus>, BprocError>> {
    match m {
        Message::NodesChanged { nodes } => Some(Ok(nodes)),
        Message::Error { code, message } => Some(Err(BprocError::Remote { code, message })),
        _ => None,
    }
}

impl Watcher {
    /// Blocks until the next table arrives.
    pub fn next_table(&mut self) -> Result<Vec<NodeStatus>, BprocError> {
        loop {
            if let Some(t) = table_in(read_message(&mut self.stream)?.1) {
                return t;
            }
        }
    }

    /// This watcher for async code: needs a tokio runtime with I/O enabled (feature `tokio`).
    ///
    /// ```no_run
    /// # async fn show() -> Result<(), bproc_client::BprocError> {
    /// let mut w = bproc_client::Client::connect()?.watch()?.into_async()?;
    /// loop {
    ///     let nodes = w.next_table().await?;
    ///     println!("{} nodes up", nodes.iter().filter(|n| n.state == "up").count());
    /// }
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<AsyncWatcher, BprocError> {
        self.stream.set_nonblocking(true)?;
        Ok(AsyncWatcher { stream: tokio::net::UnixStream::from_std(self.stream)? })
    }
}

/// A [`Watcher`] for async code (feature `tokio`).
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct AsyncWatcher {
    stream: tokio::net::UnixStream,
}

#[cfg(feature = "tokio")]
impl AsyncWatcher {
    /// Waits for the next table.
    pub async fn next_table(&mut self) -> Result<Vec<NodeStatus>, BprocError> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; HEADER_LEN];
            self.stream.read_exact(&mut head).await?;
            let h = Header::parse(&head)?;
            let mut body = vec![0u8; h.len as usize];
            self.stream.read_exact(&mut body).await?;
            if let Some(t) = table_in(bproc_proto::decode_body(&h, &body)?) {
                return t;
            }
        }
    }
}

impl AsFd for Watcher {
    /// Readable when a new table is waiting (for `poll`/`epoll`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_int("10"), Some(10));
        assert_eq!(parse_c_int("0x10"), Some(16));
        assert_eq!(parse_c_int("010"), Some(8));
        assert_eq!(parse_c_int("0"), Some(0));
        assert_eq!(parse_c_int("-1"), Some(-1));
        assert_eq!(parse_c_int("08"), None);
        assert_eq!(parse_c_int("1x"), None);
        assert_eq!(parse_c_int(""), None);
    }

    #[test]
    fn strerror_texts() {
        assert_eq!(strerror(301), "Node is down");
        assert_eq!(strerror(-303), "Slave node died");
        assert_eq!(strerror(1), "Operation not permitted");
        assert_eq!(strerror(-2), "No such file or directory");
    }
}
