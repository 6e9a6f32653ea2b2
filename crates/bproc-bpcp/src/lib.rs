//! bpcp: BProc's rcp for the cluster. Copies files to, from and between nodes, and beyond
//! BProc broadcasts a file to a node set and gathers one file per node.
//!
//! bpcp reads and writes its own machine's files itself, with its own rights; the master
//! checks node permissions and tells each node its part; file data goes straight from the
//! sender to the receivers (see `bproc-copy`), never through the master daemon.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod args;

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{self, IsTerminal, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use args::{split_operand, Args, Parsed, EXTENSIONS, USAGE};
use bproc_client::{nodespec, BprocError, Client, CopyReport, CopyRequest, Event, Place};
use bproc_copy::service::{Fanout, MEET_TIMEOUT, STALL_TIMEOUT};
use bproc_copy::sink::{receive, Report, Target};
use bproc_copy::source::send;
use bproc_copy::{NoProgress, Progress};
use bproc_proto::{CopyLink, CopyOpts, NODE_CLIENT, NODE_MASTER};

/// Where an operand's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// This machine (bpcp's own files).
    Here,
    /// One node (or the master, from a node).
    Node(i32),
    /// A node set: broadcast as a target, gather as a source.
    Set(Vec<i32>),
}

/// A failure that stops bpcp with exit 1.
enum Fatal {
    /// Print this on stderr.
    Message(String),
    /// Print the usage on stdout.
    Usage,
}

impl From<BprocError> for Fatal {
    fn from(e: BprocError) -> Self {
        Fatal::Message(format!("bpcp: {e}"))
    }
}

/// bpcp's `main`: parse, copy, and return the exit status (the number of errors, at most
/// 255; 1 for usage errors).
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let a = match args::parse(argv) {
        Parsed::Run(a) => a,
        Parsed::Help => {
            print!("{USAGE}{EXTENSIONS}");
            return ExitCode::SUCCESS;
        }
        Parsed::Version => {
            println!("bpcp version {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(m) => {
            eprintln!("{m}");
            print!("{USAGE}");
            return ExitCode::from(1);
        }
    };
    let mut run = Run::default();
    match run.copy(&a) {
        Ok(()) => {}
        Err(Fatal::Message(m)) => {
            eprintln!("{m}");
            return ExitCode::from(1);
        }
        Err(Fatal::Usage) => {
            print!("{USAGE}");
            return ExitCode::from(1);
        }
    }
    if a.stats {
        eprintln!(
            "bpcp: copy streams: {} bytes sent, {} bytes received by this process",
            run.sent.load(Ordering::Relaxed),
            run.received.load(Ordering::Relaxed)
        );
    }
    ExitCode::from(run.errors.get().min(255) as u8)
}

/// The nodes' reports on a copy, read as events on a thread while data moves here.
struct Reports {
    results: mpsc::Receiver<Option<Event>>,
    expected: u32,
    reader: std::thread::JoinHandle<()>,
}

impl Reports {
    /// Reads `expected` events from `events`, the copy's connection.
    fn start(mut events: Client, expected: u32) -> Reports {
        let (tx, results) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for _ in 0..expected {
                match events.next_event() {
                    Ok(e) => {
                        if tx.send(Some(e)).is_err() {
                            break;
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(None);
                        break;
                    }
                }
            }
        });
        Reports { results, expected, reader }
    }

    /// Every report, and whether the connection was lost before the last.
    fn wait(self) -> (Vec<Event>, bool) {
        let mut reports = Vec::new();
        let mut lost = false;
        while reports.len() < self.expected as usize {
            match self.results.recv() {
                Ok(Some(e)) => reports.push(e),
                _ => {
                    lost = true;
                    break;
                }
            }
        }
        let _ = self.reader.join();
        (reports, lost)
    }
}

/// One run's connection and counters.
#[derive(Default)]
struct Run {
    client: Option<Client>,
    place: Option<Place>,
    table: Option<Vec<bproc_client::NodeStatus>>,
    errors: Cell<u64>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Run {
    fn client(&mut self) -> Result<&mut Client, Fatal> {
        if self.client.is_none() {
            self.client = Some(Client::connect()?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Where this bpcp runs; without a master, the front end (for local copies).
    fn place(&mut self) -> Result<Place, Fatal> {
        if let Some(p) = &self.place {
            return Ok(p.clone());
        }
        let p = self.client()?.place()?;
        self.place = Some(p.clone());
        Ok(p)
    }

    fn error(&self, msg: &str) {
        eprintln!("{msg}");
        self.errors.set(self.errors.get() + 1);
    }

    fn resolve(&mut self, host: Option<&str>) -> Result<Host, Fatal> {
        let Some(host) = host else { return Ok(Host::Here) };
        if let Some(n) = nodespec::parse_node_name(host) {
            return Ok(if n == self.place()?.node { Host::Here } else { Host::Node(n) });
        }
        if self.table.is_none() {
            let t = self.client()?.nodes()?;
            self.table = Some(t);
        }
        let sel = nodespec::filter(self.table.as_deref().unwrap_or_default(), host).map_err(
            |e| match e.reason() {
                Some(why) => Fatal::Message(format!("bpcp: Invalid node number: {host}: {why}")),
                None => Fatal::Message(format!("bpcp: Invalid node number: {host}")),
            },
        )?;
        for n in &sel.unconfigured {
            eprintln!("bpcp: node {n} is not configured");
        }
        let nodes: Vec<i32> = sel.nodes.iter().map(|n| n.node).collect();
        if nodes.is_empty() {
            return Err(Fatal::Message(format!(
                "bpcp: \"{host}\" selects no node; nothing to copy"
            )));
        }
        Ok(Host::Set(nodes))
    }

    fn copy(&mut self, a: &Args) -> Result<(), Fatal> {
        let mut ops: Vec<(Host, String)> = Vec::new();
        let mut operands = a.operands.clone();
        if operands.len() == 1 {
            // `bpcp FILE` on a node (the seed's `bpsh -a -p bpcp /tmp/myoutput`): the file
            // goes to the same path on the front end.
            if self.place()?.node == NODE_MASTER {
                return Err(Fatal::Usage);
            }
            let abs =
                std::path::absolute(&operands[0]).unwrap_or_else(|_| operands[0].clone().into());
            operands.push(format!("-1:{}", abs.display()));
        }
        if operands.len() < 2 {
            return Err(Fatal::Usage);
        }
        for o in &operands {
            let (host, path) = split_operand(o);
            let host = self.resolve(host)?;
            let path = if path.is_empty() { ".".to_owned() } else { path.to_owned() };
            ops.push((host, path));
        }
        let (target_host, target) = ops.pop().expect("two operands at least");
        let sources = ops;
        let gather = sources.iter().any(|(h, _)| matches!(h, Host::Set(_)));
        if gather && matches!(target_host, Host::Set(_)) {
            return Err(Fatal::Message("bpcp: cannot copy from a node set to a node set".into()));
        }
        let opts = CopyOpts {
            recursive: a.recursive,
            preserve: a.preserve,
            target_dir: sources.len() > 1 || gather,
            umask: bproc_client::launch::current_umask(),
        };
        // Consecutive sources on the same host travel in one stream.
        let mut i = 0;
        while i < sources.len() {
            let host = sources[i].0.clone();
            let mut paths = Vec::new();
            while i < sources.len() && sources[i].0 == host {
                paths.push(sources[i].1.clone());
                i += 1;
            }
            self.transfer(&host, paths, &target_host, &target, opts, a)?;
        }
        Ok(())
    }

    fn transfer(
        &mut self,
        src: &Host,
        paths: Vec<String>,
        dst: &Host,
        target: &str,
        opts: CopyOpts,
        a: &Args,
    ) -> Result<(), Fatal> {
        if *src == Host::Here && *dst == Host::Here {
            return self.local(&paths, target, opts);
        }
        let nodes = |h: &Host| match h {
            Host::Here => vec![NODE_CLIENT],
            Host::Node(n) => vec![*n],
            Host::Set(v) => v.clone(),
        };
        let (src_nodes, dst_nodes) = (nodes(src), nodes(dst));
        let place = self.place()?;
        let listener =
            if *dst == Host::Here {
                Some(TcpListener::bind((place.ip, 0)).map_err(|e| {
                    Fatal::Message(format!("bpcp: cannot listen on {}: {e}", place.ip))
                })?)
            } else {
                None
            };
        let port = listener.as_ref().and_then(|l| l.local_addr().ok()).map_or(0, |a| a.port());
        let cwd = std::env::current_dir().map_or_else(|_| "/".into(), |d| d.display().to_string());
        let req = CopyRequest {
            src: src_nodes,
            paths: if *src == Host::Here { vec![".".into()] } else { paths.clone() },
            dst: dst_nodes.clone(),
            target: target.to_owned(),
            opts,
            cwd,
            fanout: a.fanout,
            port,
        };
        let plan = self.client()?.copy(req)?;
        // The master gives a copy its connection to the end, so the next one opens another.
        let reports = Reports::start(self.client.take().expect("connected above"), plan.reports);
        let local_source_errors =
            (*src == Host::Here).then(|| self.push(&paths, &plan.links, opts));
        let mut pulled = Vec::new();
        if let Some(l) = listener {
            pulled = self.pull(l, &plan.links, target, opts, matches!(src, Host::Set(_)))?;
        }
        // Everything this process did is over; collect the nodes' reports.
        let (node_reports, lost) = reports.wait();
        let gather = matches!(src, Host::Set(_));
        self.print_errors(gather, &dst_nodes, local_source_errors, &pulled, node_reports);
        if lost {
            self.error("rcp: lost connection to bpmaster before every node reported");
        }
        Ok(())
    }

    /// Prints a copy's errors: this process's own, then those `pulled` here, then the nodes'.
    /// Source errors are printed once: by the sender itself, or from the first receiver that
    /// saw them; a gather's come per node.
    fn print_errors(
        &self,
        gather: bool,
        dst_nodes: &[i32],
        local_source_errors: Option<Vec<String>>,
        pulled: &[(i32, Report)],
        node_reports: Vec<Event>,
    ) {
        let mut printed_source = local_source_errors.is_some();
        if let Some(errs) = local_source_errors {
            for e in errs {
                self.error(&e);
            }
        }
        for (node, r) in pulled {
            let prefix = if gather { format!("{node}: ") } else { String::new() };
            for e in r.source_errors.iter().chain(&r.errors) {
                self.error(&format!("{prefix}{e}"));
            }
            printed_source = true;
        }
        let many_dst = dst_nodes.len() > 1;
        for event in node_reports {
            let Event::CopyReport(CopyReport { node, source_errors, errors, .. }) = event else {
                continue;
            };
            if !printed_source && !source_errors.is_empty() {
                for e in &source_errors {
                    self.error(e);
                }
                printed_source = true;
            }
            let prefix = if many_dst && dst_nodes.contains(&node) || gather {
                format!("{node}: ")
            } else {
                String::new()
            };
            for e in &errors {
                self.error(&format!("{prefix}{e}"));
            }
        }
    }

    /// Streams this machine's `paths` to the receivers in `links`; returns the source errors.
    fn push(&self, paths: &[String], links: &[CopyLink], opts: CopyOpts) -> Vec<String> {
        if links.is_empty() {
            return Vec::new();
        }
        let mut out = Fanout::connect(links, std::net::Ipv4Addr::LOCALHOST);
        let bar = bar(total_size(paths, opts.recursive));
        let progress = bar.as_ref().map_or(&NoProgress as &dyn Progress, |b| b);
        let result = send(paths, opts.recursive, &mut out, progress);
        if let Some(b) = bar {
            b.0.finish_and_clear();
        }
        out.finish();
        self.sent.fetch_add(out.sent, Ordering::Relaxed);
        for e in &out.errors {
            self.error(e);
        }
        match result {
            Ok(stats) => stats.errors,
            Err(e) => {
                if out.errors.is_empty() {
                    self.error(&format!("rcp: lost connection: {e}"));
                }
                Vec::new()
            }
        }
    }

    /// Accepts the senders' streams and writes them here (named `NAME.N` when `suffix`);
    /// returns each node's report.
    fn pull(
        &self,
        listener: TcpListener,
        links: &[CopyLink],
        target: &str,
        opts: CopyOpts,
        suffix: bool,
    ) -> Result<Vec<(i32, Report)>, Fatal> {
        listener.set_nonblocking(true).map_err(|e| Fatal::Message(format!("bpcp: {e}")))?;
        let mut threads = Vec::new();
        let mut waiting: Vec<&CopyLink> = links.iter().collect();
        let deadline = std::time::Instant::now() + MEET_TIMEOUT;
        let bar = bar(None);
        let progress: Arc<dyn Progress + Send + Sync> = match &bar {
            Some(b) => Arc::new(b.clone()),
            None => Arc::new(NoProgress),
        };
        while !waiting.is_empty() && std::time::Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => return Err(Fatal::Message(format!("bpcp: accept: {e}"))),
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut token = [0u8; 16];
            if s.read_exact(&mut token).is_err() {
                continue;
            }
            let Some(i) = waiting.iter().position(|l| l.token == token) else { continue };
            let link = waiting.swap_remove(i);
            let _ = s.set_read_timeout(Some(STALL_TIMEOUT));
            let t = Target {
                path: PathBuf::from(target),
                must_be_dir: opts.target_dir,
                suffix: if suffix { format!(".{}", link.node).into() } else { OsString::new() },
                preserve: opts.preserve,
                umask: opts.umask,
            };
            let node = link.node;
            let received = self.received.clone();
            let progress = progress.clone();
            threads.push(std::thread::spawn(move || {
                let mut input = CountingRead { inner: s, n: received };
                (node, receive(&mut input, &t, &*progress))
            }));
        }
        let mut out: Vec<(i32, Report)> =
            threads.into_iter().filter_map(|t| t.join().ok()).collect();
        for l in waiting {
            out.push((
                l.node,
                Report {
                    errors: vec!["rcp: lost connection (the node sent nothing)".into()],
                    ..Report::default()
                },
            ));
        }
        if let Some(b) = bar {
            b.0.finish_and_clear();
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    /// A copy between two paths of this machine, with the same safety as any other.
    fn local(&self, paths: &[String], target: &str, opts: CopyOpts) -> Result<(), Fatal> {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Fatal::Message(format!("bpcp: {e}")))?;
        let paths = paths.to_vec();
        let sender = std::thread::spawn(move || send(&paths, opts.recursive, &mut a, &NoProgress));
        let t = Target {
            path: target.into(),
            must_be_dir: opts.target_dir,
            suffix: OsString::new(),
            preserve: opts.preserve,
            umask: opts.umask,
        };
        let report = receive(&mut b, &t, &NoProgress);
        if let Ok(Ok(stats)) = sender.join() {
            for e in stats.errors {
                self.error(&e);
            }
        }
        for e in report.errors {
            self.error(&e);
        }
        Ok(())
    }
}

/// Bytes of regular files under `paths` (for the progress bar).
fn total_size(paths: &[String], recursive: bool) -> Option<u64> {
    fn walk(p: &Path, recursive: bool, depth: usize) -> u64 {
        let Ok(m) = std::fs::metadata(p) else { return 0 };
        if m.is_file() {
            return m.len();
        }
        if !m.is_dir() || !recursive || depth > 64 {
            return 0;
        }
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink()))
                .map(|e| walk(&e.path(), recursive, depth + 1))
                .sum()
        })
    }
    Some(paths.iter().map(|p| walk(Path::new(p), recursive, 0)).sum())
}

/// A progress bar on stderr, only when it is a terminal and the copy is large.
#[derive(Clone)]
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Copies smaller than this finish before a bar would help.
const BAR_MIN: u64 = 32 << 20;

fn bar(total: Option<u64>) -> Option<Bar> {
    if !io::stderr().is_terminal() || total.is_some_and(|t| t < BAR_MIN) {
        return None;
    }
    let target = indicatif::ProgressDrawTarget::stderr();
    let b = match total {
        Some(t) => {
            let b = indicatif::ProgressBar::with_draw_target(Some(t), target);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
            ) {
                b.set_style(style);
            }
            b
        }
        None => {
            let b = indicatif::ProgressBar::with_draw_target(None, target);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bytes} {bytes_per_sec}") {
                b.set_style(style);
            }
            b
        }
    };
    Some(Bar(b))
}

/// Counts the bytes read through it.
struct CountingRead {
    inner: TcpStream,
    n: Arc<AtomicU64>,
}

impl Read for CountingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
