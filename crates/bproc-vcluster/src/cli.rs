//! `bpcluster`: start, inspect, stop and demonstrate a virtual cluster from the shell.
//!
//! ```text
//! eval "$(bpcluster up -n 4)"   # master + 4 nodes; exports BPROC_SOCKET and PATH
//! bpstat
//! bpcluster status
//! bpcluster down
//! bpcluster demo                # a guided tour on a throw-away cluster
//! bpcluster up --vm 2 --kernel vmlinuz   # 2 QEMU machines booted from the network (root)
//! bpcluster exec -- bpsh -a uname -r     # inside the machines' network namespace
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
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
  up --vm N     (root) start N QEMU machines that boot from the network: a namespace with a
                bridge, the master and the boot server (beoserv) inside it, an image built
                by beoboot from --kernel; prints the boot time of each node
  exec -- CMD   run CMD in the machines' network namespace with BPROC_SOCKET and PATH set
                (bpsh and bpcp take connections from nodes, so they must run there)
Options:
  --dir DIR           cluster directory (default $BPCLUSTER_DIR or /tmp/bpcluster-UID)
  --ping-timeout S    master ping timeout in seconds (default 10)
  --no-isolate        do not give nodes their own host name and /tmp
  --diskless          nodes have no filesystem: their processes see only /proc, /dev, /tmp
                      and the programs and libraries bpsh brings (as root)
  --timeout S         how long `up` waits for the nodes (default 60 + N/10; 180 with --vm)
  --kernel FILE       the machines' kernel (default /boot/vmlinuz-RELEASE of this machine),
                      modules from beside it (an unpacked linux-image package) or --modules
  --modules DIR       the kernel's modules directory
  --memory MB         memory of each machine (default 512)
  --bootkey-once      keep the cluster key out of the image: the boot server hands it to each
                      machine once per boot
  -h, --help          print this message
";

struct Args {
    command: String,
    nodes: Option<usize>,
    dir: PathBuf,
    ping_timeout: u32,
    isolate: bool,
    diskless: bool,
    timeout: Option<u64>,
    vms: Option<usize>,
    kernel: Option<PathBuf>,
    modules: Option<PathBuf>,
    memory: Option<u32>,
    key_once: bool,
    rest: Vec<OsString>,
}

fn default_dir() -> PathBuf {
    std::env::var_os("BPCLUSTER_DIR").map_or_else(
        || PathBuf::from(format!("/tmp/bpcluster-{}", nix::unistd::getuid())),
        PathBuf::from,
    )
}

fn parse(args: Vec<OsString>) -> Result<Option<Args>, lexopt::Error> {
    let mut a = Args {
        command: String::new(),
        nodes: None,
        dir: default_dir(),
        ping_timeout: 10,
        isolate: true,
        diskless: false,
        timeout: None,
        vms: None,
        kernel: None,
        modules: None,
        memory: None,
        key_once: false,
        rest: Vec::new(),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('n') | Long("nodes") => a.nodes = Some(p.value()?.parse()?),
            Long("dir") => a.dir = p.value()?.into(),
            Long("ping-timeout") => a.ping_timeout = p.value()?.parse()?,
            Long("no-isolate") => a.isolate = false,
            Long("diskless") => a.diskless = true,
            Long("timeout") => a.timeout = Some(p.value()?.parse()?),
            Long("vm") => a.vms = Some(p.value()?.parse()?),
            Long("kernel") => a.kernel = Some(p.value()?.into()),
            Long("modules") => a.modules = Some(p.value()?.into()),
            Long("memory") => a.memory = Some(p.value()?.parse()?),
            Long("bootkey-once") => a.key_once = true,
            Value(v) if a.command.is_empty() => a.command = v.string()?,
            Value(v) if a.command == "exec" => {
                a.rest.push(v);
                a.rest.extend(p.raw_args()?);
            }
            other => return Err(other.unexpected()),
        }
    }
    Ok(Some(a))
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
    let out = Command::new(bin.join("bpslave")).arg("--check-isolation").output();
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
    if a.dir.join("pids").exists() {
        let live = recorded_pids(&a.dir)?.iter().any(|r| r.find(&a.dir).is_some());
        if live {
            eprintln!(
                "bpcluster: a cluster is already running in {}; stop it with `bpcluster down --dir {}`",
                a.dir.display(),
                a.dir.display()
            );
            return Err(VclusterError::NoCluster(a.dir.clone()));
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

/// `up --vm N`: machines that boot from the network.
fn up_vms(a: &Args) -> Result<(), crate::vm::VmError> {
    use crate::vm::{VmCluster, VmError, VmSpec};
    let n = a.vms.unwrap_or(2);
    let kernel = match &a.kernel {
        Some(k) => k.clone(),
        None => bproc_beoboot::ImageSpec::running().map_err(VmError::Image)?.kernel,
    };
    let mut spec = VmSpec::new(n, a.dir.clone(), daemon_dir(), kernel);
    spec.modules_dir = a.modules.clone();
    if let Some(m) = a.memory {
        spec.memory_mb = m;
    }
    if let Some(t) = a.timeout {
        spec.timeout = Duration::from_secs(t);
    }
    spec.ping_timeout = a.ping_timeout;
    spec.key_once = a.key_once;
    if a.dir.join("pids").exists() {
        return Err(VmError::Daemon {
            what: "the cluster",
            detail: format!(
                "a cluster is already running in {}; stop it with `bpcluster down --dir {}`",
                a.dir.display(),
                a.dir.display()
            ),
        });
    }
    let t0 = Instant::now();
    let c = VmCluster::start(spec)?;
    for (i, t) in c.boot_times().iter().enumerate() {
        if let Some(t) = t {
            eprintln!("bpcluster: node {i} up {:.1} s after its machine started", t.as_secs_f64());
        }
    }
    eprintln!(
        "bpcluster: master and {n} machines up in {:.1} s (directory {}, network namespace {}); \
         run bpsh and bpcp with `bpcluster exec -- CMD`",
        t0.elapsed().as_secs_f64(),
        a.dir.display(),
        c.netns()
    );
    println!("export BPROC_SOCKET={}", c.socket().display());
    println!("export PATH={}:$PATH", bin_dir().display());
    c.detach()
}

/// `exec -- CMD`: runs CMD in the machines' namespace.
fn exec(a: &Args) -> ExitCode {
    let Ok(ns) = std::fs::read_to_string(a.dir.join("netns")) else {
        eprintln!(
            "bpcluster: no cluster of machines in {} (start one with `bpcluster up --vm N`)",
            a.dir.display()
        );
        return ExitCode::FAILURE;
    };
    let Some((prog, args)) = a.rest.split_first() else {
        eprint!("bpcluster: exec needs a command\n{USAGE}");
        return ExitCode::FAILURE;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir()];
    dirs.extend(std::env::split_paths(&path));
    let status = Command::new("ip")
        .args(["netns", "exec", ns.trim()])
        .arg(prog)
        .args(args)
        .env("BPROC_SOCKET", a.dir.join("master.sock"))
        .env("PATH", std::env::join_paths(dirs).unwrap_or(path))
        .status();
    match status {
        Ok(st) => ExitCode::from(st.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))),
        Err(e) => {
            eprintln!("bpcluster: cannot run ip netns exec: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Runs a tool with the cluster's socket, echoing the command line like a shell session.
fn show(c: &Cluster, prog: &str, args: &[&str]) {
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
    let status = Command::new(program).args(args).env("BPROC_SOCKET", c.socket()).status();
    if let Err(e) = status {
        println!("({prog} failed to run: {e})");
    }
    println!();
}

fn demo(a: &Args) -> Result<(), VclusterError> {
    let dir = std::env::temp_dir().join(format!("bpcluster-demo-{}", std::process::id()));
    let mut args_for_demo = spec_for(a, 4);
    args_for_demo.dir = dir.clone();
    println!("Starting a virtual cluster: one bpmaster and 4 bpslave daemons on 127.0.1.0-3 ...");
    let t0 = Instant::now();
    let c = Cluster::start(args_for_demo)?;
    println!("4 nodes up in {:.2} s\n", t0.elapsed().as_secs_f64());
    show(&c, "bpstat", &[]);
    println!("Run a program on every node, output prefixed, sorted and divided by node:");
    let hello = "echo hello from $(hostname), rank $BPROC_RANK";
    show(&c, "bpsh", &["-a", "-p", "-s", "-d", "sh", "-c", hello]);
    println!("Write a file on node 2, then look for it on every node (each has its own /tmp):");
    show(&c, "bpsh", &["2", "-O", "/tmp/myoutput", "echo", "results"]);
    show(&c, "bpsh", &["-a", "-p", "-L", "ls", "/tmp"]);
    println!("Copy it from node 2 to node 3 (straight between the nodes), then gather it:");
    show(&c, "bpcp", &["2:/tmp/myoutput", "3:/tmp"]);
    let gathered = dir.join("gathered");
    let _ = std::fs::create_dir_all(&gathered);
    let g = gathered.to_string_lossy().into_owned();
    show(&c, "bpcp", &["2-3:/tmp/myoutput", &g]);
    show(&c, "ls", &[&g]);
    println!("Broadcast a file from the front end to every node:");
    let input = dir.join("input.dat");
    let _ = std::fs::write(&input, "input for every node\n");
    show(&c, "bpcp", &[&input.to_string_lossy(), "all:/tmp"]);
    show(&c, "bpsh", &["-a", "-p", "cat", "/tmp/input.dat"]);
    println!("Give nodes 1-2 to user 65534 (nobody), and only to them:");
    show(&c, "bpctl", &["-S", "1-2", "-u", "65534", "-g", "65534", "-m", "0100"]);
    println!("Take node 3 out of service:");
    show(&c, "bpctl", &["-S", "3", "-s", "down"]);
    c.wait_for_within("node 3 down", Duration::from_secs(10), |n| {
        n.iter().any(|n| n.node == 3 && n.state == "down")
    })?;
    show(&c, "bpstat", &[]);
    show(&c, "bpstat", &["-l"]);
    show(&c, "bpstat", &["-t", "allup"]);
    println!("A down node is reported, and the others still run:");
    show(&c, "bpsh", &["0-3", "-p", "uname", "-r"]);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    println!("Cluster stopped.");
    Ok(())
}

/// Runs bpcluster with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("bpcluster: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let r = match a.command.as_str() {
        "up" if a.vms.is_none() => up(&a),
        "down" if crate::vm::is_vm_cluster(&a.dir) => crate::vm::stop_detached_vms(&a.dir)
            .map(|n| eprintln!("bpcluster: stopped {n} machines and daemons")),
        "down" => stop_detached(&a.dir).map(|n| eprintln!("bpcluster: stopped {n} daemons")),
        "exec" => return exec(&a),
        "up" if a.vms.is_some() => {
            return match up_vms(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let mut msg = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        msg.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    eprintln!("bpcluster: {msg}");
                    ExitCode::FAILURE
                }
            }
        }
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
        Err(e) => {
            eprintln!("bpcluster: {e}");
            ExitCode::FAILURE
        }
    }
}
