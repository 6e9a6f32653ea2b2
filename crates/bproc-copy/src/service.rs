//! The data service of a daemon (each slave, and the master for clients on nodes): a TCP
//! port where copy streams arrive, and the threads that carry out copy orders with the
//! caller's identity.
//!
//! Every order runs on a thread of its own that first takes the caller's filesystem identity
//! (and, on a diskless node, the node's root), so files are opened and created exactly as the
//! user's own process would, and the daemon's other work keeps its rights.
//!
//! A stream's connection starts with the 16-byte token of the receiver it is for. Tokens are
//! read by async tasks on one thread of the service's own (a small tokio runtime), never by a
//! thread per connection: each connection has [`TOKEN_DEADLINE`] to send its token, and at
//! most [`MAX_PENDING`] may be reading one at a time (past that, a new connection ends the
//! oldest, see `bproc_link::guard::Pending`). The master sends the orders of one copy at the
//! same moment, so a stream can arrive just before its receiver's order: it then waits, with
//! no thread, among at most [`MAX_EARLY`] early streams, for up to [`MEET_TIMEOUT`]. So a
//! flood of connections with made-up tokens costs the daemon neither threads nor more than a
//! bounded number of descriptors, and its refusals are logged once per interval.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bproc_link::guard::{Pending, Refusals};
use bproc_proto::errno::EPERM;
use bproc_proto::{CopyLink, CopyOpts, CopyTask, Creds, Message};
use tracing::warn;

use crate::sink::{receive, Target};
use crate::source::send;
use crate::NoProgress;

/// How long a stream waits for its receiver's order, and a receiver for its stream.
pub const MEET_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream that sends nothing for this long is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a new connection has to send its token.
pub const TOKEN_DEADLINE: Duration = Duration::from_secs(5);
/// Most connections reading their token at once.
pub const MAX_PENDING: usize = 256;
/// Most streams waiting for their receiver's order.
pub const MAX_EARLY: usize = 256;

/// Refused connections on the data ports, logged once per interval.
static REFUSED: Refusals = Refusals::new("data port");

/// Whose files this daemon may touch.
#[derive(Debug, Clone, Copy)]
pub struct Authority {
    /// The daemon runs as root and can take any identity.
    pub root: bool,
    /// Its own uid.
    pub uid: u32,
}

/// Where receivers and their streams meet; told when a stream waits early (whose expiry
/// the accepting task then awaits: with none waiting, it has no timer to wake for).
#[derive(Default)]
struct Registry(Mutex<Meet>, tokio::sync::Notify);

#[derive(Default)]
struct Meet {
    /// Receivers waiting for their stream.
    waiting: HashMap<[u8; 16], SyncSender<TcpStream>>,
    /// Streams that came before their receiver's order, with their arrival.
    early: HashMap<[u8; 16], (TcpStream, Instant)>,
    /// The same, oldest first (entries whose stream left or was replaced are skipped).
    order: VecDeque<([u8; 16], Instant)>,
}

impl Meet {
    /// Drops early streams older than [`MEET_TIMEOUT`]; returns how many.
    fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(token, at)) = self.order.front() {
            if now.duration_since(at) < MEET_TIMEOUT {
                break;
            }
            self.order.pop_front();
            if self.early.get(&token).is_some_and(|e| e.1 == at) {
                self.early.remove(&token);
                n += 1;
            }
        }
        n
    }

    /// Drops the oldest early stream.
    fn evict_oldest(&mut self) {
        while let Some((token, at)) = self.order.pop_front() {
            if self.early.get(&token).is_some_and(|e| e.1 == at) {
                self.early.remove(&token);
                return;
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Meet> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a stream to its receiver, or keeps it (bounded) until the receiver registers.
    fn deliver(&self, token: [u8; 16], s: TcpStream) {
        let mut m = self.lock();
        if let Some(tx) = m.waiting.remove(&token) {
            drop(m);
            let _ = tx.send(s);
            return;
        }
        let now = Instant::now();
        let expired = m.expire(now);
        if m.early.len() >= MAX_EARLY {
            m.evict_oldest();
            drop(m);
            REFUSED.refuse(format_args!(
                "{MAX_EARLY} streams wait for copy orders that have not come; dropped the oldest"
            ));
            m = self.lock();
        }
        m.early.insert(token, (s, now));
        m.order.push_back((token, now));
        drop(m);
        self.1.notify_one();
        if expired > 0 {
            REFUSED.refuse(format_args!(
                "{expired} stream(s) with unknown tokens dropped after {} s",
                MEET_TIMEOUT.as_secs()
            ));
        }
    }
}

/// A daemon's data port and the orders it runs.
#[derive(Clone)]
pub struct DataService {
    port: u16,
    registry: Arc<Registry>,
    authority: Authority,
    /// A diskless node's root: files are read and written inside it.
    jail: Option<PathBuf>,
}

/// Sends the token that opens a stream to `link`.
pub fn connect_link(link: &CopyLink, default_ip: Ipv4Addr) -> io::Result<TcpStream> {
    let addr = SocketAddr::V4(SocketAddrV4::new(link.ip.unwrap_or(default_ip), link.port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.write_all(&link.token)?;
    Ok(s)
}

/// A fresh random token.
pub fn new_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    getrandom::fill(&mut t).expect("the kernel's random source failed");
    t
}

impl DataService {
    /// Opens the data port on `ip` and starts accepting, on a thread of its own.
    pub fn start(
        ip: Ipv4Addr,
        authority: Authority,
        jail: Option<PathBuf>,
    ) -> io::Result<DataService> {
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let svc = DataService { port, registry: Arc::default(), authority, jail };
        let registry = svc.registry.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("bproc-data".into()).spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => accept(l, registry).await,
                    Err(e) => warn!("data port: cannot serve: {e}"),
                }
            });
        })?;
        Ok(svc)
    }

    /// The data port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Registers a receiver's token; the stream comes out of the returned channel.
    pub fn expect(&self, token: [u8; 16]) -> Receiver<TcpStream> {
        let (tx, rx) = sync_channel(1);
        let mut m = self.registry.lock();
        match m.early.remove(&token) {
            // The stream came first; the channel holds it (capacity 1).
            Some((s, _)) => {
                let _ = tx.send(s);
            }
            None => {
                m.waiting.insert(token, tx);
            }
        }
        rx
    }

    fn forget(&self, token: &[u8; 16]) {
        self.registry.lock().waiting.remove(token);
    }

    /// Runs a copy order on a new thread and calls `done` with the [`Message::CopyResult`]
    /// (node 0; the master fills it in). `default_ip` is where links without an address go
    /// (the master's address as this daemon sees it).
    pub fn run_order(
        &self,
        creds: Creds,
        cwd: String,
        opts: CopyOpts,
        task: CopyTask,
        default_ip: Ipv4Addr,
        done: impl FnOnce(Message) + Send + 'static,
    ) {
        // Register before anything else, so a stream arriving now finds its receiver.
        let expected = match &task {
            CopyTask::Receive { token, .. } => Some((*token, self.expect(*token))),
            CopyTask::Send { .. } => None,
        };
        let svc = self.clone();
        let spawned = std::thread::Builder::new().name("bproc-copy".into()).spawn(move || {
            let result = svc.order(&creds, &cwd, &opts, task, expected, default_ip);
            done(result);
        });
        if let Err(e) = spawned {
            warn!("cannot start a copy thread: {e}");
        }
    }

    fn order(
        &self,
        creds: &Creds,
        cwd: &str,
        opts: &CopyOpts,
        task: CopyTask,
        expected: Option<([u8; 16], Receiver<TcpStream>)>,
        default_ip: Ipv4Addr,
    ) -> Message {
        let fail = |m: String| result(Vec::new(), vec![m], 0, 0);
        if let Err(m) = self.take_identity(creds, cwd) {
            if let Some((token, _)) = &expected {
                self.forget(token);
            }
            return fail(m.to_string());
        }
        match task {
            CopyTask::Send { paths, to } => {
                let mut out = Fanout::connect(&to, default_ip);
                if out.outs.is_empty() {
                    return fail(out.errors.join("; "));
                }
                let r = send(&paths, opts.recursive, &mut out, &NoProgress);
                out.finish();
                let mut errors = out.errors;
                match r {
                    Ok(stats) => result(Vec::new(), errors, stats.files, stats.bytes),
                    Err(e) => {
                        errors.push(format!("rcp: lost connection: {e}"));
                        result(Vec::new(), errors, 0, 0)
                    }
                }
            }
            CopyTask::Receive { token, target, suffix, to } => {
                let (_, rx) = expected.expect("a receive order registers its token");
                let upstream = rx.recv_timeout(MEET_TIMEOUT);
                self.forget(&token);
                let Ok(upstream) = upstream else {
                    return fail("rcp: lost connection (no data arrived from the sender)".into());
                };
                let _ = upstream.set_read_timeout(Some(STALL_TIMEOUT));
                let mut relay = Fanout::connect(&to, default_ip);
                let target = Target {
                    path: target.into(),
                    must_be_dir: opts.target_dir,
                    suffix: suffix.into(),
                    preserve: opts.preserve,
                    umask: opts.umask,
                };
                let report = {
                    let mut tee = Tee { inner: upstream, outs: &mut relay };
                    receive(&mut tee, &target, &NoProgress)
                };
                relay.finish();
                let mut errors = report.errors;
                errors.extend(relay.errors);
                result(report.source_errors, errors, report.files, report.bytes)
            }
        }
    }

    /// Takes the caller's identity on this thread: its own filesystem context, the node's
    /// root, the caller's groups, gid and uid, then the caller's working directory.
    fn take_identity(&self, creds: &Creds, cwd: &str) -> Result<(), IdentityError> {
        if !self.authority.root && creds.uid != self.authority.uid {
            return Err(IdentityError::NotRoot { uid: self.authority.uid });
        }
        let sys = |what, errno| IdentityError::Sys { what, errno };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
            .map_err(|e| sys("separate the copy thread", e))?;
        if let Some(root) = &self.jail {
            nix::unistd::chroot(root).map_err(|e| sys("enter the node's root", e))?;
        }
        if self.authority.root {
            let id = bproc_sys::Identity {
                uid: creds.uid,
                gid: creds.gid,
                groups: creds.groups.clone(),
            };
            bproc_sys::thread_fs_identity(&id).map_err(|e| sys("take the caller's identity", e))?;
        }
        if nix::unistd::chdir(cwd).is_err() {
            nix::unistd::chdir("/").map_err(|e| sys("enter /", e))?;
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        Ok(())
    }
}

/// Why a copy order cannot run as its caller; the order's result carries it.
#[derive(Debug, thiserror::Error)]
enum IdentityError {
    /// A daemon without root can act only as its own user.
    #[error(
        "rcp: this daemon runs as uid {uid} without root, so it copies only that user's files \
         ({})",
        nix::errno::Errno::from_raw(EPERM).desc()
    )]
    NotRoot { uid: u32 },
    /// A step of taking the caller's identity failed.
    #[error("rcp: cannot {what}: {}", errno.desc())]
    Sys { what: &'static str, errno: nix::Error },
}

fn result(source_errors: Vec<String>, errors: Vec<String>, files: u64, bytes: u64) -> Message {
    Message::CopyResult { node: 0, source_errors, errors, files, bytes }
}

/// Accepts streams until the daemon ends: each reads its token in a pending task; early
/// streams are dropped as they expire, and refusals summed up as their interval ends (no
/// timer runs while neither waits).
async fn accept(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let pending = Pending::new(MAX_PENDING);
    tokio::spawn(REFUSED.flush_when_due());
    loop {
        // When the oldest early stream expires, if any waits.
        let expiry = registry.lock().order.front().map(|&(_, at)| at + MEET_TIMEOUT);
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((s, peer)) => {
                    let registry = registry.clone();
                    let evicted = pending.spawn(move |place| async move {
                        let mut s = s;
                        let mut token = [0u8; 16];
                        use tokio::io::AsyncReadExt;
                        let read = tokio::time::timeout(TOKEN_DEADLINE, s.read_exact(&mut token));
                        match read.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return REFUSED.refuse(format_args!("{peer}: {e} before its token")),
                            Err(_) => return REFUSED.refuse(format_args!(
                                "{peer} sent no token within {} s", TOKEN_DEADLINE.as_secs()
                            )),
                        }
                        place.admit();
                        match s.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                            Ok(s) => registry.deliver(token, s),
                            Err(e) => warn!("data port: {peer}: {e}"),
                        }
                    });
                    if evicted {
                        REFUSED.refuse(format_args!(
                            "{MAX_PENDING} connections wait to send a token; dropped the oldest"
                        ));
                    }
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    REFUSED.refuse(format_args!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now).into()),
                if expiry.is_some() => {
                let expired = registry.lock().expire(Instant::now());
                if expired > 0 {
                    REFUSED.refuse(format_args!(
                        "{expired} stream(s) with unknown tokens dropped after {} s",
                        MEET_TIMEOUT.as_secs()
                    ));
                }
            }
            // A stream came early: its expiry is awaited from the next turn.
            _ = registry.1.notified(), if expiry.is_none() => {}
        }
    }
}

/// The connections a stream is written to: one for a copy, several for a tree's branches.
/// A branch that fails is dropped and reported; the others go on.
pub struct Fanout {
    outs: Vec<(i32, TcpStream)>,
    /// What went wrong, naming the node.
    pub errors: Vec<String>,
    /// Bytes written, counted once per branch.
    pub sent: u64,
}

fn node_name(n: i32) -> String {
    match n {
        bproc_proto::NODE_MASTER => "the master".into(),
        bproc_proto::NODE_CLIENT => "bpcp".into(),
        n => format!("node {n}"),
    }
}

impl Fanout {
    /// Connects to every link.
    pub fn connect(links: &[CopyLink], default_ip: Ipv4Addr) -> Fanout {
        let mut f = Fanout { outs: Vec::new(), errors: Vec::new(), sent: 0 };
        for l in links {
            match connect_link(l, default_ip) {
                Ok(s) => f.outs.push((l.node, s)),
                Err(e) => f.errors.push(format!("rcp: cannot reach {}: {e}", node_name(l.node))),
            }
        }
        f
    }

    /// Sends `len` bytes to every branch with `send`; a branch that fails is dropped and
    /// named, and it is an error once none is left.
    fn send_each(
        &mut self,
        len: usize,
        mut send: impl FnMut(&mut TcpStream) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut failed = Vec::new();
        for (i, (n, s)) in self.outs.iter_mut().enumerate() {
            match send(s) {
                Ok(()) => self.sent += len as u64,
                Err(e) => {
                    failed.push(i);
                    self.errors.push(format!("rcp: lost the connection to {}: {e}", node_name(*n)));
                }
            }
        }
        for i in failed.into_iter().rev() {
            self.outs.remove(i);
        }
        if self.outs.is_empty() && !self.errors.is_empty() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "every receiver is gone"));
        }
        Ok(())
    }

    /// Ends every branch's stream.
    pub fn finish(&mut self) {
        for (_, s) in &self.outs {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        // Wait for each receiver to close, so that a relay's report comes after its branch
        // has read everything.
        for (_, s) in &mut self.outs {
            let _ = s.set_read_timeout(Some(STALL_TIMEOUT));
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }
    }
}

impl crate::source::Out for Fanout {
    fn send_file(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<bool> {
        self.send_each(data.len(), |s| send_file_to(s, file, offset, data)).map(|()| true)
    }
}

/// Sends `data`, read from `file` at `offset`, to `s` from the file; what the file no longer
/// holds, or all of it from a file system that cannot send its files so, from `data`.
fn send_file_to(s: &mut TcpStream, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    use nix::errno::Errno;
    let mut done = 0;
    while done < data.len() {
        let mut at = (offset + done as u64) as i64;
        match nix::sys::sendfile::sendfile64(&*s, file, Some(&mut at), data.len() - done) {
            Ok(0) | Err(Errno::EINVAL | Errno::ENOSYS) => return s.write_all(&data[done..]),
            Ok(k) => done += k,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Write for Fanout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.send_each(buf.len(), |s| s.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a stream and passes every byte on to the next receivers as it goes (a relay of a
/// broadcast): pipelined, so a chain of nodes moves the data at the speed of one link.
pub struct Tee<'a, R> {
    /// The stream.
    pub inner: R,
    /// The next receivers.
    pub outs: &'a mut Fanout,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && !self.outs.outs.is_empty() {
            // A relay's own failure to pass data on never stops its own copy.
            let _ = self.outs.write_all(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> DataService {
        let authority = Authority { root: false, uid: nix::unistd::geteuid().as_raw() };
        DataService::start(Ipv4Addr::LOCALHOST, authority, None).unwrap()
    }

    fn send_token(port: u16, token: [u8; 16], data: &[u8]) -> TcpStream {
        let link = CopyLink { node: 0, ip: Some(Ipv4Addr::LOCALHOST), port, token };
        let mut s = connect_link(&link, Ipv4Addr::LOCALHOST).unwrap();
        s.write_all(data).unwrap();
        s
    }

    #[test]
    fn streams_meet_their_receivers_in_either_order() {
        let svc = service();
        // The receiver first.
        let (t1, t2) = (new_token(), new_token());
        let rx = svc.expect(t1);
        let _a = send_token(svc.port(), t1, b"one");
        let mut got = [0u8; 3];
        rx.recv_timeout(Duration::from_secs(10)).unwrap().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one");
        // The stream first: it waits, threadless, until its receiver registers.
        let _b = send_token(svc.port(), t2, b"two");
        let t0 = Instant::now();
        while svc.registry.lock().early.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "the stream never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let rx = svc.expect(t2);
        rx.recv_timeout(Duration::from_secs(1)).unwrap().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two");
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bproc-service-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Files large and small, sent by a sender to two receivers over loopback (large ones
    /// from the file, by `sendfile`), arrive whole at both.
    #[test]
    fn a_stream_to_sockets_carries_every_file_whole() {
        let d = scratch("fanout");
        let sizes = [0, 10, 70 << 10, (1 << 20) + 12345, 3 << 20];
        let mut paths = Vec::new();
        for (i, len) in sizes.iter().enumerate() {
            let p = d.join(format!("f{i}"));
            std::fs::write(&p, pattern(*len, i as u8)).unwrap();
            paths.push(p.to_string_lossy().into_owned());
        }
        let svc = service();
        let links: Vec<CopyLink> = (0..2)
            .map(|node| {
                let token = new_token();
                CopyLink { node, ip: Some(Ipv4Addr::LOCALHOST), port: svc.port(), token }
            })
            .collect();
        let receivers: Vec<_> = links
            .iter()
            .map(|l| {
                let rx = svc.expect(l.token);
                let to = d.join(format!("to{}", l.node));
                std::fs::create_dir_all(&to).unwrap();
                std::thread::spawn(move || {
                    let mut s = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                    let target = crate::sink::Target {
                        path: to,
                        must_be_dir: true,
                        suffix: Default::default(),
                        preserve: false,
                        umask: 0o022,
                    };
                    crate::sink::receive(&mut s, &target, &crate::NoProgress)
                })
            })
            .collect();
        let mut out = Fanout::connect(&links, Ipv4Addr::LOCALHOST);
        let stats = crate::source::send(&paths, false, &mut out, &crate::NoProgress).unwrap();
        out.finish();
        assert_eq!(stats.files, sizes.len() as u64);
        let data: usize = sizes.iter().sum();
        assert!(out.sent >= 2 * data as u64, "{} bytes sent for 2 × {data}", out.sent);
        for (node, r) in receivers.into_iter().enumerate() {
            let report = r.join().unwrap();
            assert!(report.errors.is_empty(), "node {node}: {:?}", report.errors);
            for (i, len) in sizes.iter().enumerate() {
                let got = std::fs::read(d.join(format!("to{node}/f{i}"))).unwrap();
                assert!(got == pattern(*len, i as u8), "node {node}: f{i} differs");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A file cut shorter between its read and its sending still fills its place in the
    /// stream, from what was read.
    #[test]
    fn a_file_cut_shorter_after_its_read_is_sent_as_read() {
        let d = scratch("shrank");
        let p = d.join("f");
        let data = pattern(300 << 10, 7);
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(100 << 10).unwrap();
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut r, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        send_file_to(&mut s, &f, 0, &data).unwrap();
        drop(s);
        assert!(reader.join().unwrap() == data);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn early_streams_are_bounded() {
        let svc = service();
        let held: Vec<TcpStream> =
            (0..MAX_EARLY + 20).map(|_| send_token(svc.port(), new_token(), b"")).collect();
        let t0 = Instant::now();
        // Every connection is taken in; at most MAX_EARLY stay.
        loop {
            let open = held
                .iter()
                .filter(|s| {
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 1];
                    // Dropped ones read EOF; kept ones would block.
                    !matches!(s.peek(&mut b), Ok(0))
                })
                .count();
            if open == MAX_EARLY {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{open} early streams kept");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(svc.registry.lock().early.len(), MAX_EARLY);
    }
}
