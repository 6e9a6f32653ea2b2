//! The data service of a daemon (each slave, and the master for clients on nodes): a TCP
//! port where copy streams arrive, and the threads that carry out copy orders with the
//! caller's identity.
//!
//! Every order runs on a thread of its own that first takes the caller's filesystem identity
//! (and, on a diskless node, the node's root), so files are opened and created exactly as the
//! user's own process would, and the daemon's other work keeps its rights.
//!
//! A stream's connection starts with the 16-byte token of the receiver it is for. The master
//! sends the orders of one copy at the same moment, so a stream can arrive just before its
//! receiver's order: the accepting thread waits a little for the token to be registered.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bproc_proto::errno::EPERM;
use bproc_proto::{CopyLink, CopyOpts, CopyTask, Creds, Message};
use tracing::{debug, warn};

use crate::sink::{receive, Target};
use crate::source::send;
use crate::NoProgress;

/// How long a stream waits for its receiver's order, and a receiver for its stream.
pub const MEET_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream that sends nothing for this long is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Whose files this daemon may touch.
#[derive(Debug, Clone, Copy)]
pub struct Authority {
    /// The daemon runs as root and can take any identity.
    pub root: bool,
    /// Its own uid.
    pub uid: u32,
}

#[derive(Default)]
struct Registry {
    waiting: Mutex<HashMap<[u8; 16], SyncSender<TcpStream>>>,
    changed: Condvar,
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
    /// Opens the data port on `ip` and starts accepting.
    pub fn start(
        ip: Ipv4Addr,
        authority: Authority,
        jail: Option<PathBuf>,
    ) -> io::Result<DataService> {
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        let port = listener.local_addr()?.port();
        let svc = DataService { port, registry: Arc::default(), authority, jail };
        let registry = svc.registry.clone();
        std::thread::Builder::new().name("bproc-data".into()).spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        let registry = registry.clone();
                        let _ = std::thread::Builder::new()
                            .name("bproc-data-conn".into())
                            .spawn(move || deliver(&registry, s));
                    }
                    Err(e) => {
                        warn!("data port: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
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
        self.registry.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(token, tx);
        self.registry.changed.notify_all();
        rx
    }

    fn forget(&self, token: &[u8; 16]) {
        self.registry.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
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
            return fail(m);
        }
        match task {
            CopyTask::Send { paths, to } => {
                let mut out = Fanout::connect(&to, default_ip);
                if out.outs.is_empty() {
                    return fail(out.errors.join("; "));
                }
                let r = {
                    let mut w = BufWriter::with_capacity(crate::CHUNK, &mut out);
                    let r = send(&paths, opts.recursive, &mut w, &NoProgress);
                    r.and_then(|s| w.flush().map(|()| s))
                };
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
    fn take_identity(&self, creds: &Creds, cwd: &str) -> Result<(), String> {
        if !self.authority.root && creds.uid != self.authority.uid {
            return Err(format!(
                "rcp: this daemon runs as uid {} without root, so it copies only that user's files ({})",
                self.authority.uid,
                nix::errno::Errno::from_raw(EPERM).desc()
            ));
        }
        let sys = |what: &str, e: nix::Error| format!("rcp: cannot {what}: {}", e.desc());
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

fn result(source_errors: Vec<String>, errors: Vec<String>, files: u64, bytes: u64) -> Message {
    Message::CopyResult { node: 0, source_errors, errors, files, bytes }
}

/// Reads the token of an arriving stream and hands the stream to its receiver.
fn deliver(registry: &Registry, mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut token = [0u8; 16];
    if s.read_exact(&mut token).is_err() {
        return;
    }
    let deadline = Instant::now() + MEET_TIMEOUT;
    let mut waiting = registry.waiting.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(tx) = waiting.remove(&token) {
            drop(waiting);
            let _ = tx.send(s);
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            debug!("data port: a stream with an unknown token was dropped");
            return;
        }
        waiting = registry
            .changed
            .wait_timeout(waiting, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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

impl Write for Fanout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut failed = Vec::new();
        for (i, (n, s)) in self.outs.iter_mut().enumerate() {
            match s.write_all(buf) {
                Ok(()) => self.sent += buf.len() as u64,
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
