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

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{node_addr, recorded_pids, stop_detached, Cluster, Spec, VclusterError};

const USAGE: &str = "Usage: bpcluster COMMAND [options]
Commands:
  up -n N       start a master and N nodes in the background and wait until all are up;
                prints shell commands: eval \"$(bpcluster up -n 4)\"
  down          stop the cluster and remove its directory
  status        show the cluster's daemons and nodes
  demo          a tour on 4 nodes: bpstat, bpsh, bpcp, a job's ghosts in ps and Ctrl-C
                reaching it, another user refused, a node taken down; then stop
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
  --quiet             the daemons log warnings and errors only, as installed daemons do
                      (default: also every node's and process's start, as with -v)
  --timeout S         how long `up` waits for the nodes (default 60 + N/10; 180 with --vm)
  --kernel FILE       the machines' kernel (default /boot/vmlinuz-RELEASE of this machine),
                      modules from beside it (an unpacked linux-image package) or --modules
  --modules DIR       the kernel's modules directory
  --memory MB         memory of each machine (default 512)
  --bootkey-once      keep the cluster key out of the image: the boot server hands it to each
                      machine once per boot
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
    quiet: bool,
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
        quiet: false,
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
            Short('h') | Long("help") => return Ok(Err(Stop::Help)),
            Short('V') | Long("version") => return Ok(Err(Stop::Version)),
            Short('n') | Long("nodes") => a.nodes = Some(p.value()?.parse()?),
            Long("dir") => a.dir = p.value()?.into(),
            Long("ping-timeout") => a.ping_timeout = p.value()?.parse()?,
            Long("no-isolate") => a.isolate = false,
            Long("diskless") => a.diskless = true,
            Long("quiet") => a.quiet = true,
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
    s.verbose = !a.quiet;
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
    let known: Vec<i32> = pids.iter().map(|r| r.pid).collect();
    for u in crate::unrecorded_daemons(&a.dir, &known) {
        println!("{:<8} pid {:<8} running (not recorded by `up`: started by hand)", u.name, u.pid);
    }
    match bproc_client::Client::connect_to(&a.dir.join("master.sock")).and_then(|mut c| c.nodes()) {
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

/// The demo's stdout for a tool's stderr too, so that a transcript holds both in order.
fn as_stdout() -> std::process::Stdio {
    use std::os::fd::AsFd;
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| std::process::Stdio::inherit(), std::process::Stdio::from)
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
    let status = crate::daemon_command(&program)
        .args(args)
        .env("BPROC_SOCKET", c.socket())
        .stderr(as_stdout())
        .status();
    if let Err(e) = status {
        println!("({prog} failed to run: {e})");
    }
    println!();
    crate::interrupted().map_or(Ok(()), |sig| Err(VclusterError::Interrupted(sig)))
}

/// A job left running on nodes 0 and 1: its ghosts in `ps`, then what Ctrl-C does to it.
fn demo_ghosts(c: &Cluster) -> Result<(), VclusterError> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    println!("A running job has a ghost on the front end for each remote process, a child of");
    println!("bpsh: ps shows it as [sleep], and bpstat -P adds the node the process runs on:");
    println!("$ bpsh 0-1 sleep 30 &");
    let bpsh = bin_dir().join("bpsh");
    let spawn_err = |source| VclusterError::Spawn { prog: bpsh.clone(), source };
    // Its own process group, as a shell's job: what the terminal's Ctrl-C signals.
    let mut job = crate::daemon_command(&bpsh)
        .arg0("bpsh")
        .args(["0-1", "sleep", "30"])
        .env("BPROC_SOCKET", c.socket())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let pid = job.id() as i32;
    let stop = |job: &mut std::process::Child| {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = job.wait();
    };
    // Until both ghosts are in the master's process table (the cluster runs nothing else).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = c.client()?;
    while client.procs()?.len() < 2 {
        if Instant::now() > deadline || matches!(job.try_wait(), Ok(Some(_))) {
            stop(&mut job);
            println!("(the job did not start)\n");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let p = pid.to_string();
    println!("$ ps f --pid {p} --ppid {p} | bpstat -P");
    let ps = Command::new("ps").args(["f", "--pid", &p, "--ppid", &p]).output();
    match ps {
        Ok(ps) => {
            let mut bpstat = crate::daemon_command(&bin_dir().join("bpstat"))
                .arg("-P")
                .env("BPROC_SOCKET", c.socket())
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|source| VclusterError::Spawn { prog: "bpstat".into(), source })?;
            if let Some(mut input) = bpstat.stdin.take() {
                let _ = input.write_all(&ps.stdout);
            }
            let _ = bpstat.wait();
        }
        Err(e) => println!("(ps failed to run: {e})"),
    }
    println!();
    println!("Ctrl-C: the terminal sends SIGINT to the job's process group, and each ghost");
    println!("passes it on to its remote process:");
    println!("$ kill -INT -{p}");
    let _ = kill(Pid::from_raw(-pid), Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match job.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    let mut said = String::new();
    if let Some(mut err) = job.stderr.take() {
        let _ = err.read_to_string(&mut said);
    }
    print!("{said}");
    match status.and_then(|s| s.code()) {
        Some(code) => println!("(bpsh exited with status {code})\n"),
        None => {
            stop(&mut job);
            println!("(bpsh did not end; killed)\n");
        }
    }
    crate::interrupted().map_or(Ok(()), |sig| Err(VclusterError::Interrupted(sig)))
}

/// Another user refused on nodes given to user 65534, and let in on node 0 (root only: it
/// runs bpsh as that user).
fn demo_refusal(c: &Cluster) -> Result<(), VclusterError> {
    use std::os::unix::process::CommandExt;
    println!("Any other user is refused there; the master checks each launch against who the");
    println!("kernel says asks (here uid 65533), and node 0 is open to all:");
    println!("$ bpsh 0-2 id -u          # as uid 65533");
    if !nix::unistd::geteuid().is_root() {
        println!("(run the demo as root to see it)\n");
        return Ok(());
    }
    let status = crate::daemon_command(&bin_dir().join("bpsh"))
        .args(["0-2", "id", "-u"])
        .env("BPROC_SOCKET", c.socket())
        .current_dir("/")
        .stderr(as_stdout())
        .uid(65533)
        .gid(65533)
        .status();
    if let Err(e) = status {
        println!("(bpsh failed to run: {e})");
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
    demo_ghosts(&c)?;
    println!("Give nodes 1-2 to user 65534 (nobody), and only to them:");
    show(&c, "bpctl", &["-S", "1-2", "-u", "65534", "-g", "65534", "-m", "0100"])?;
    demo_refusal(&c)?;
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
        "up" if a.vms.is_none() => up(&a),
        "down" if crate::vm::is_vm_cluster(&a.dir) => crate::vm::stop_detached_vms(&a.dir)
            .map(|n| eprintln!("bpcluster: stopped {n} machines and daemons")),
        "down" => stop_detached(&a.dir).map(|s| {
            let by_hand = match s.unrecorded {
                0 => String::new(),
                n => format!(" ({n} not recorded by `up`: started by hand)"),
            };
            eprintln!("bpcluster: stopped {} daemons{by_hand}", s.daemons);
        }),
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
