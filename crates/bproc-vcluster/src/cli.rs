//! `bpcluster`: start, inspect, stop and demonstrate a virtual cluster from the shell.
//!
//! ```text
//! eval "$(bpcluster up -n 4)"   # master + 4 nodes; exports BPROC_SOCKET and PATH
//! bpstat
//! bpcluster status
//! bpcluster down
//! bpcluster demo                # a guided tour on a throw-away cluster
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lexopt::prelude::*;

use crate::{node_addr, recorded_pids, stop_detached, Cluster, Spec, VclusterError};

const USAGE: &str = "Usage: bpcluster COMMAND [options]
Commands:
  up -n N       start a master and N nodes in the background and wait until all are up;
                prints shell commands: eval \"$(bpcluster up -n 4)\"
  down          stop the cluster and remove its directory
  status        show the cluster's daemons and nodes
  demo          start 4 nodes, show bpstat, mark a node down, show bpstat -l, stop
Options:
  --dir DIR           cluster directory (default $BPCLUSTER_DIR or /tmp/bpcluster-UID)
  --ping-timeout S    master ping timeout in seconds (default 10)
  --no-isolate        do not give nodes their own host name and /tmp
  --diskless          nodes have no filesystem: their processes see only /proc, /dev, /tmp
                      and the programs and libraries bpsh brings (as root)
  --timeout S         how long `up` waits for the nodes (default 60 + N/10)
  -h, --help          print this message
  -V, --version       print the version
";

struct Args {
    command: String,
    nodes: Option<usize>,
    dir: PathBuf,
    ping_timeout: u32,
    isolate: bool,
    diskless: bool,
    timeout: Option<u64>,
}

fn default_dir() -> PathBuf {
    std::env::var_os("BPCLUSTER_DIR").map_or_else(
        || PathBuf::from(format!("/tmp/bpcluster-{}", nix::unistd::getuid())),
        PathBuf::from,
    )
}

/// What the command line asks for besides a command.
enum Stop {
    Help,
    Version,
}

fn parse(args: Vec<OsString>) -> Result<Result<Args, Stop>, lexopt::Error> {
    let mut a = Args {
        command: String::new(),
        nodes: None,
        dir: default_dir(),
        ping_timeout: 10,
        isolate: true,
        diskless: false,
        timeout: None,
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Err(Stop::Help)),
            Short('V') | Long("version") => return Ok(Err(Stop::Version)),
            Short('n') | Long("nodes") => a.nodes = Some(p.value()?.parse()?),
            Long("dir") => a.dir = p.value()?.into(),
            Long("ping-timeout") => a.ping_timeout = p.value()?.parse()?,
            Long("no-isolate") => a.isolate = false,
            Long("diskless") => a.diskless = true,
            Long("timeout") => a.timeout = Some(p.value()?.parse()?),
            Value(v) if a.command.is_empty() => a.command = v.string()?,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Ok(a))
}

/// Directory of the running program, where its sibling binaries live.
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether nodes can get their own namespaces here; says why not, once, when they cannot.
fn isolation_works(bin: &Path) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let out = crate::daemon_command(&bin.join("bpslave")).arg("--check-isolation").output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "bpcluster: nodes will share this machine's host name and /tmp: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("bpcluster: cannot run bpslave: {e}");
            false
        }
    }
}

/// Where bpmaster and bpslave are: beside this program (a build tree), or in `../sbin` (an
/// installation, where daemons go to sbin).
fn daemon_dir() -> PathBuf {
    let bin = bin_dir();
    match bin.parent().map(|p| p.join("sbin")) {
        Some(sbin) if !bin.join("bpmaster").exists() && sbin.join("bpmaster").exists() => sbin,
        _ => bin,
    }
}

fn spec_for(a: &Args, n: usize) -> Spec {
    let bin = daemon_dir();
    let mut s = Spec::new(n, a.dir.clone(), bin.clone());
    s.isolate = a.isolate && isolation_works(&bin);
    s.diskless = a.diskless;
    s.ping_timeout = a.ping_timeout;
    s.timeout = Duration::from_secs(a.timeout.unwrap_or(60 + n as u64 / 10));
    s
}

fn up(a: &Args) -> Result<(), VclusterError> {
    let n = a.nodes.unwrap_or(4);
    if a.dir.join("pids").exists() || a.dir.join("config").exists() {
        let recorded = recorded_pids(&a.dir).unwrap_or_default();
        let known: Vec<i32> = recorded.iter().map(|r| r.pid).collect();
        let live = recorded.iter().any(|r| r.find(&a.dir).is_some())
            || !crate::unrecorded_daemons(&a.dir, &known).is_empty();
        if live {
            return Err(VclusterError::Running(a.dir.clone()));
        }
        let _ = std::fs::remove_dir_all(&a.dir);
    }
    let t0 = Instant::now();
    let c = Cluster::start(spec_for(a, n))?;
    eprintln!(
        "bpcluster: master and {n} nodes up in {:.2} s (directory {})",
        t0.elapsed().as_secs_f64(),
        a.dir.display()
    );
    println!("export BPROC_SOCKET={}", c.socket().display());
    println!("export PATH={}:$PATH", bin_dir().display());
    c.detach()
}

fn status(a: &Args) -> Result<(), VclusterError> {
    let pids = recorded_pids(&a.dir)?;
    for r in &pids {
        let (name, pid) = (&r.name, r.pid);
        // A pid that now names another process counts as exited.
        let what = if r.find(&a.dir).is_some() { "running" } else { "exited" };
        let addr = name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .map(|i| format!(" {}", node_addr(i)))
            .unwrap_or_default();
        println!("{name:<8} pid {pid:<8} {what}{addr}");
    }
    let known: Vec<i32> = pids.iter().map(|r| r.pid).collect();
    for u in crate::unrecorded_daemons(&a.dir, &known) {
        println!("{:<8} pid {:<8} running (not recorded by `up`: started by hand)", u.name, u.pid);
    }
    match bproc::Client::connect_to(&a.dir.join("master.sock")).and_then(|mut c| c.nodes()) {
        Ok(nodes) => {
            let up = nodes.iter().filter(|n| n.state == "up").count();
            println!(
                "{up} of {} nodes up; BPROC_SOCKET={}",
                nodes.len(),
                a.dir.join("master.sock").display()
            );
        }
        Err(e) => println!("master not answering: {e}"),
    }
    Ok(())
}

/// Runs a tool with the cluster's socket, echoing the command line like a shell session;
/// fails once the demo is interrupted.
fn show(c: &Cluster, prog: &str, args: &[&str]) -> Result<(), VclusterError> {
    if let Some(sig) = crate::interrupted() {
        return Err(VclusterError::Interrupted(sig));
    }
    let mut line = format!("$ {prog}");
    for a in args {
        line.push(' ');
        if a.contains([' ', '$', '(']) {
            line.push_str(&format!("'{a}'"));
        } else {
            line.push_str(a);
        }
    }
    println!("{line}");
    // Our own tools from beside this binary; anything else (ls) from PATH.
    let own = bin_dir().join(prog);
    let program = if own.exists() { own } else { prog.into() };
    let status =
        crate::daemon_command(&program).args(args).env("BPROC_SOCKET", c.socket()).status();
    if let Err(e) = status {
        println!("({prog} failed to run: {e})");
    }
    println!();
    crate::interrupted().map_or(Ok(()), |sig| Err(VclusterError::Interrupted(sig)))
}

fn demo(a: &Args) -> Result<(), VclusterError> {
    let dir = std::env::temp_dir().join(format!("bpcluster-demo-{}", std::process::id()));
    // Its cluster is stopped when `demo_in` returns, also when it fails or is interrupted.
    let r = demo_in(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r?;
    println!("Cluster stopped.");
    Ok(())
}

fn demo_in(a: &Args, dir: &Path) -> Result<(), VclusterError> {
    let mut args_for_demo = spec_for(a, 4);
    args_for_demo.dir = dir.to_owned();
    println!("Starting a virtual cluster: one bpmaster and 4 bpslave daemons on 127.0.1.0-3 ...");
    let t0 = Instant::now();
    let c = Cluster::start(args_for_demo)?;
    println!("4 nodes up in {:.2} s\n", t0.elapsed().as_secs_f64());
    show(&c, "bpstat", &[])?;
    println!("Run a program on every node, output prefixed, sorted and divided by node:");
    let hello = "echo hello from $(hostname), rank $BPROC_RANK";
    show(&c, "bpsh", &["-a", "-p", "-s", "-d", "sh", "-c", hello])?;
    println!("Write a file on node 2, then look for it on every node (each has its own /tmp):");
    show(&c, "bpsh", &["2", "-O", "/tmp/myoutput", "echo", "results"])?;
    show(&c, "bpsh", &["-a", "-p", "-L", "ls", "/tmp"])?;
    println!("Copy it from node 2 to node 3 (straight between the nodes), then gather it:");
    show(&c, "bpcp", &["2:/tmp/myoutput", "3:/tmp"])?;
    let gathered = dir.join("gathered");
    let _ = std::fs::create_dir_all(&gathered);
    let g = gathered.to_string_lossy().into_owned();
    show(&c, "bpcp", &["2-3:/tmp/myoutput", &g])?;
    show(&c, "ls", &[&g])?;
    println!("Broadcast a file from the front end to every node:");
    let input = dir.join("input.dat");
    let _ = std::fs::write(&input, "input for every node\n");
    show(&c, "bpcp", &[&input.to_string_lossy(), "all:/tmp"])?;
    show(&c, "bpsh", &["-a", "-p", "cat", "/tmp/input.dat"])?;
    println!("Give nodes 1-2 to user 65534 (nobody), and only to them:");
    show(&c, "bpctl", &["-S", "1-2", "-u", "65534", "-g", "65534", "-m", "0100"])?;
    println!("Take node 3 out of service:");
    show(&c, "bpctl", &["-S", "3", "-s", "down"])?;
    c.wait_for_within("node 3 down", Duration::from_secs(10), |n| {
        n.iter().any(|n| n.node == 3 && n.state == "down")
    })?;
    show(&c, "bpstat", &[])?;
    show(&c, "bpstat", &["-l"])?;
    show(&c, "bpstat", &["-t", "allup"])?;
    println!("A down node is reported, and the others still run:");
    show(&c, "bpsh", &["0-3", "-p", "uname", "-r"])?;
    Ok(())
}

/// Makes SIGINT (Ctrl-C), SIGTERM and SIGHUP interrupt a start instead of killing bpcluster
/// outright: the daemons run in process groups of their own, out of the terminal's reach, so
/// bpcluster must stop them itself. The signals are blocked (threads started later inherit
/// that; programs started get a clean mask) and read from a signalfd by a thread, which marks
/// the start interrupted ([`crate::interrupt`]); the start then stops what it started.
fn catch_interrupts() {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SignalFd;
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    let Ok(fd) = SignalFd::new(&set) else { return };
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        while let Ok(Some(info)) = fd.read_signal() {
            crate::interrupt(info.ssi_signo as i32);
        }
    });
}

/// Runs bpcluster with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let a = match parse(args) {
        Ok(Ok(a)) => a,
        Ok(Err(Stop::Help)) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Err(Stop::Version)) => {
            println!("bpcluster version {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("bpcluster: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(a.command.as_str(), "up" | "demo") {
        catch_interrupts();
    }
    let r = match a.command.as_str() {
        "up" => up(&a),
        "down" => stop_detached(&a.dir).map(|s| {
            let by_hand = match s.unrecorded {
                0 => String::new(),
                n => format!(" ({n} not recorded by `up`: started by hand)"),
            };
            eprintln!("bpcluster: stopped {} daemons{by_hand}", s.daemons);
        }),
        "status" => status(&a),
        "demo" => demo(&a),
        "" => {
            eprint!("{USAGE}");
            return ExitCode::FAILURE;
        }
        other => {
            eprint!("bpcluster: unknown command {other}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ VclusterError::Interrupted(sig)) => {
            eprintln!("bpcluster: {e}");
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
        Err(e) => {
            eprintln!("bpcluster: {e}");
            ExitCode::FAILURE
        }
    }
}
