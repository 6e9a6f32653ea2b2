//! A virtual cluster of real machines: QEMU virtual machines that boot from the network, as
//! the diskless nodes of a Beowulf cluster boot from their front end (`bpcluster up --vm N`).
//!
//! Everything runs inside a network namespace made for the cluster, so its DHCP and its
//! addresses never reach this machine's networks:
//!
//! ```text
//!  network namespace bproc-vm-XXXXXXXX
//!  ┌───────────────────────────────────────────────────────────────────┐
//!  │ bpmaster (in the background, as an administrator starts it)       │
//!  │ beoserv: DHCP, HTTP ── bpbr0 10.22.3.1/24 (bridge) ─┬─ bptap0 ── QEMU node 0 (10.22.3.10)
//!  │                                                     └─ bptap1 ── QEMU node 1 (10.22.3.11)
//!  └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Each machine (`-accel tcg`: KVM guests hang at boot on these hosts) has a virtio NIC with
//! the hardware address its `node` line names and no disk; its iPXE firmware gets an
//! address and the boot script from beoserv, loads the kernel and the initramfs `beoboot`
//! built, and the node's init runs `bpslave --diskless` against the master. Client programs
//! reach the master through its Unix socket, which any namespace sees; those that also take
//! connections from nodes (bpsh, bpcp) must run inside the namespace: [`VmCluster::command`],
//! `bpcluster exec -- CMD` or `ip netns exec NAME CMD`.
//!
//! [`VmCluster`] kills every process it started, by pid, and deletes the namespace when
//! dropped, unless [`VmCluster::detach`] handed them to `bpcluster down`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bproc_client::{Client, NodeStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

/// The front end's address on the cluster network.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 22, 3, 1);
/// The bridge the machines' NICs are plugged into.
pub const BRIDGE: &str = "bpbr0";
/// The master's port: BProc's.
pub const MASTER_PORT: u16 = bproc_client::DEFAULT_PORT;

/// Address of node `i`.
pub fn vm_node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SERVER_ADDR) + 9 + i as u32)
}

/// Hardware address of node `i`'s NIC.
pub fn vm_mac(i: usize) -> String {
    format!("52:54:00:22:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

/// Errors starting, driving or stopping a cluster of machines.
#[derive(Debug, Error)]
pub enum VmError {
    /// Machines need root: namespaces, bridges and tap devices.
    #[error("a cluster of virtual machines needs root (network namespace, bridge, tap devices)")]
    NotRoot,
    /// A program the cluster needs is missing.
    #[error("{0} not found: {1}")]
    Missing(String, &'static str),
    /// Setting up the network failed.
    #[error("cannot set up the cluster network: `{command}` failed: {detail}")]
    Network {
        /// The command.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// A file in the cluster directory could not be written or read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The boot image could not be built.
    #[error("cannot build the boot image")]
    Image(#[source] bproc_beoboot::BeobootError),
    /// A program could not be started.
    #[error("cannot start {}: {source}", prog.display())]
    Spawn {
        /// The program.
        prog: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A daemon did not start.
    #[error("{what} did not start: {detail}")]
    Daemon {
        /// Which daemon.
        what: &'static str,
        /// What it said.
        detail: String,
    },
    /// The cluster did not reach the state waited for.
    #[error("{what}: not reached after {secs} s:\n{detail}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The time waited.
        secs: u64,
        /// Node states and logs.
        detail: String,
    },
    /// A machine exited.
    #[error("the machine of node {node} exited; its console ends:\n{log}")]
    Exited {
        /// The node.
        node: usize,
        /// The end of its console log.
        log: String,
    },
    /// The master refused or failed a request.
    #[error(transparent)]
    Client(#[from] bproc_client::BprocError),
    /// The node number is not part of the cluster.
    #[error("node {0} is not part of this cluster")]
    NoSuchNode(usize),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::File { path: path.to_owned(), source }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Number of machines.
    pub nodes: usize,
    /// The cluster directory (created if missing).
    pub dir: PathBuf,
    /// Directory holding `bpmaster`, `bpslave` and `beoserv`.
    pub bin_dir: PathBuf,
    /// The nodes' kernel.
    pub kernel: PathBuf,
    /// Its modules directory, when not found from the kernel's path.
    pub modules_dir: Option<PathBuf>,
    /// Memory of each machine, in MiB.
    pub memory_mb: u32,
    /// The master's ping timeout in seconds.
    pub ping_timeout: u32,
    /// How long to wait for every node to be up.
    pub timeout: Duration,
    /// The QEMU program.
    pub qemu: PathBuf,
    /// Extra configuration lines appended to the generated file.
    pub extra_config: String,
    /// Leave the cluster key out of the image and have the boot server hand it to each node
    /// once per boot (`bootkey once`), instead of in the image for anyone who fetches it.
    pub key_once: bool,
}

impl VmSpec {
    /// A spec with defaults: 512 MiB a machine, ping timeout 10 s, 180 s to come up.
    pub fn new(
        nodes: usize,
        dir: impl Into<PathBuf>,
        bin_dir: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
    ) -> VmSpec {
        VmSpec {
            nodes,
            dir: dir.into(),
            bin_dir: bin_dir.into(),
            kernel: kernel.into(),
            modules_dir: None,
            memory_mb: 512,
            ping_timeout: 10,
            timeout: Duration::from_secs(180),
            qemu: "qemu-system-x86_64".into(),
            extra_config: String::new(),
            key_once: false,
        }
    }
}

/// Why a cluster of machines cannot run here, if it cannot (for tests that then skip).
pub fn unavailable(qemu: &Path) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(VmError::NotRoot.to_string());
    }
    for (prog, why) in [(qemu, "install qemu-system-x86"), (Path::new("ip"), "install iproute2")] {
        if Command::new(prog).arg("-V").output().is_err()
            && Command::new(prog).arg("-version").output().is_err()
        {
            return Some(VmError::Missing(prog.display().to_string(), why).to_string());
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun: tap devices cannot be made here".into());
    }
    None
}

/// Runs `ip ARGS` (in the host namespace: only `netns add/del`, or with `-n NS`).
fn ip(args: &[&str]) -> Result<(), VmError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::Spawn { prog: "ip".into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmError::Network {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The namespace's name for a cluster directory (stable, so `bpcluster down` finds it).
pub fn netns_name(dir: &Path) -> String {
    // FNV-1a of the path: short, stable, and distinct for distinct directories in practice.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("bproc-vm-{h:08x}")
}

/// Last lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    crate::log_tail(path, n)
}

/// A running cluster of machines.
#[derive(Debug)]
pub struct VmCluster {
    spec: VmSpec,
    netns: String,
    master: Option<u32>,
    beoserv: Option<Child>,
    vms: Vec<Option<Child>>,
    started: Vec<Instant>,
    boot_times: Vec<Option<Duration>>,
    owned: bool,
}

impl VmCluster {
    /// Sets up the namespace and its network, writes the configuration and key, builds the
    /// boot image, starts the master (in the background) and the boot server, starts every
    /// machine and waits until every node is `up`.
    pub fn start(spec: VmSpec) -> Result<VmCluster, VmError> {
        if let Some(why) = unavailable(&spec.qemu) {
            return Err(VmError::Daemon { what: "the cluster", detail: why });
        }
        let dir = spec.dir.clone();
        for d in [dir.clone(), dir.join("log"), dir.join("state")] {
            std::fs::create_dir_all(&d).map_err(file_err(&d))?;
        }
        let netns = netns_name(&dir);
        let mut c = VmCluster {
            netns,
            master: None,
            beoserv: None,
            vms: (0..spec.nodes).map(|_| None).collect(),
            started: vec![Instant::now(); spec.nodes],
            boot_times: vec![None; spec.nodes],
            owned: true,
            spec,
        };
        c.network()?;
        let key = dir.join("key");
        let _ = std::fs::remove_file(&key);
        bproc_link::ClusterKey::create(&key).map_err(|e| VmError::File {
            path: key.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        c.write_config()?;
        c.build_image()?;
        c.start_master()?;
        c.start_beoserv()?;
        for i in 0..c.spec.nodes {
            c.start_vm(i)?;
        }
        let n = c.spec.nodes;
        c.wait_for_within("every node up", c.spec.timeout, |t| {
            t.iter().filter(|s| s.state == "up").count() == n
        })?;
        Ok(c)
    }

    /// The namespace, its bridge with the front end's address, and a tap device a node.
    fn network(&self) -> Result<(), VmError> {
        let ns = self.netns.as_str();
        // A namespace left by a cluster in this directory that was never stopped.
        let _ = ip(&["netns", "del", ns]);
        ip(&["netns", "add", ns])?;
        let addr = format!("{SERVER_ADDR}/24");
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0"])?;
        ip(&["-n", ns, "addr", "add", &addr, "dev", BRIDGE])?;
        ip(&["-n", ns, "link", "set", BRIDGE, "up"])?;
        for i in 0..self.spec.nodes {
            let tap = format!("bptap{i}");
            ip(&["-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip(&["-n", ns, "link", "set", &tap, "master", BRIDGE, "up"])?;
        }
        Ok(())
    }

    fn write_config(&self) -> Result<(), VmError> {
        let dir = &self.spec.dir;
        let mut text = String::from("# Virtual cluster of machines written by bpcluster\n");
        let _ = writeln!(text, "interface {BRIDGE}");
        let _ = writeln!(text, "bprocport {MASTER_PORT}");
        let _ = writeln!(text, "pingtimeout {}", self.spec.ping_timeout);
        let _ = writeln!(text, "socket {}", self.socket().display());
        let _ = writeln!(text, "keyfile {}", dir.join("key").display());
        let _ = writeln!(text, "statedir {}", dir.join("state").display());
        let _ = writeln!(text, "logdir {}", dir.join("log").display());
        if self.spec.nodes > 0 {
            let last = vm_node_addr(self.spec.nodes - 1);
            let _ = writeln!(text, "iprange 0 {} {last}", vm_node_addr(0));
        }
        for i in 0..self.spec.nodes {
            let _ = writeln!(text, "node {i} {}", vm_mac(i));
        }
        let _ = writeln!(text, "bootfile {}", self.image_path().display());
        if self.spec.key_once {
            text.push_str("bootkey once\n");
        }
        text.push_str(&self.spec.extra_config);
        let path = self.config_path();
        std::fs::write(&path, text).map_err(file_err(&path))
    }

    fn build_image(&self) -> Result<(), VmError> {
        let mut spec = bproc_beoboot::ImageSpec::for_kernel(&self.spec.kernel);
        if let Some(m) = &self.spec.modules_dir {
            spec.modules_dir = Some(m.clone());
        }
        spec.bpslave = self.spec.bin_dir.join("bpslave");
        spec.key = (!self.spec.key_once).then(|| self.spec.dir.join("key"));
        let image = bproc_beoboot::build(&spec).map_err(VmError::Image)?;
        image.write(&self.image_path()).map_err(VmError::Image)
    }

    /// A command running `prog` inside the cluster's namespace, with `BPROC_SOCKET` set and
    /// the cluster's programs first in `PATH`.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(prog);
        c.env("BPROC_SOCKET", self.socket());
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.spec.bin_dir.clone()];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(p) = std::env::join_paths(dirs) {
            c.env("PATH", p);
        }
        c
    }

    /// Starts the master the way an administrator does: in the background (its pid comes
    /// from its report), naming the cluster's config file, which `down` checks before it
    /// signals it.
    fn start_master(&mut self) -> Result<(), VmError> {
        let prog = self.spec.bin_dir.join("bpmaster");
        let out = self
            .command(&prog)
            .args(["--print-address", "-c"])
            .arg(self.config_path())
            .current_dir(&self.spec.dir)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| VmError::Spawn { prog: prog.clone(), source })?;
        let report = String::from_utf8_lossy(&out.stdout);
        let pid = report.split_whitespace().nth(2).and_then(|p| p.parse().ok());
        match pid {
            Some(pid) if out.status.success() => {
                self.master = Some(pid);
                Ok(())
            }
            _ => Err(VmError::Daemon {
                what: "bpmaster",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    }

    /// Starts the boot server in the foreground (a child, logging to `log/beoserv.log`) and
    /// waits until it serves.
    fn start_beoserv(&mut self) -> Result<(), VmError> {
        let prog = self.spec.bin_dir.join("beoserv");
        let log = self.beoserv_log();
        let err = std::fs::File::create(&log).map_err(file_err(&log))?;
        let mut child = self
            .command(&prog)
            .args(["-d", "-v", "--print-address", "-c"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .env_remove("NOTIFY_SOCKET")
            .process_group(0)
            .spawn()
            .map_err(|source| VmError::Spawn { prog: prog.clone(), source })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Daemon { what: "beoserv", detail: tail(&log, 10) });
        }
        self.beoserv = Some(child);
        Ok(())
    }

    /// Starts (again) the machine of node `i`: it boots from the network.
    pub fn start_vm(&mut self, i: usize) -> Result<(), VmError> {
        if i >= self.spec.nodes {
            return Err(VmError::NoSuchNode(i));
        }
        let log = self.vm_log(i);
        let out = std::fs::File::create(&log).map_err(file_err(&log))?;
        let tap = format!("bptap{i}");
        let child = self
            .command(&self.spec.qemu)
            .args(["-name", &format!("n{i}"), "-accel", "tcg", "-m"])
            .arg(self.spec.memory_mb.to_string())
            .args(["-nographic", "-boot", "n", "-netdev"])
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", vm_mac(i)))
            // Names the cluster's directory on its command line, which `down` checks.
            .arg("-pidfile")
            .arg(self.spec.dir.join(format!("log/vm{i}.pid")))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(file_err(&log))?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|source| VmError::Spawn { prog: self.spec.qemu.clone(), source })?;
        self.vms[i] = Some(child);
        self.started[i] = Instant::now();
        self.boot_times[i] = None;
        Ok(())
    }

    /// Kills node `i`'s machine (SIGKILL, as a power cut) and reaps it.
    pub fn kill_vm(&mut self, i: usize) -> Result<(), VmError> {
        let mut child = self.vms.get_mut(i).and_then(Option::take).ok_or(VmError::NoSuchNode(i))?;
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Pid of node `i`'s QEMU.
    pub fn vm_pid(&self, i: usize) -> Option<u32> {
        self.vms.get(i)?.as_ref().map(Child::id)
    }

    /// Pid of the master.
    pub fn master_pid(&self) -> Option<u32> {
        self.master
    }

    /// How long each node took from its machine's start to `up` (the last start).
    pub fn boot_times(&self) -> &[Option<Duration>] {
        &self.boot_times
    }

    /// The network namespace everything runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The master's client socket.
    pub fn socket(&self) -> PathBuf {
        self.spec.dir.join("master.sock")
    }

    /// The master's address on the cluster network.
    pub fn master_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(SERVER_ADDR, MASTER_PORT)
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.spec.dir.join("config")
    }

    /// The boot image.
    pub fn image_path(&self) -> PathBuf {
        self.spec.dir.join("boot.img")
    }

    /// Node `i`'s serial console.
    pub fn vm_log(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("log/vm{i}.log"))
    }

    /// The boot server's log.
    pub fn beoserv_log(&self) -> PathBuf {
        self.spec.dir.join("log/beoserv.log")
    }

    /// Waits until `done` holds for the node table, or `timeout` passes; woken by the
    /// master's change notifications. A machine that exits ends the wait at once.
    pub fn wait_for_within(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[NodeStatus]) -> bool,
    ) -> Result<Vec<NodeStatus>, VmError> {
        let deadline = Instant::now() + timeout;
        let mut w = Client::connect_to(&self.socket())?.watch()?;
        let mut last = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [nix::poll::PollFd::new(w.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis().min(200)).unwrap_or(200);
            if nix::poll::poll(&mut fds, ms).unwrap_or(0) > 0 {
                last = w.next_table()?;
                self.note_boot_times(&last);
                if done(&last) {
                    return Ok(last);
                }
            } else if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    detail: self.describe(&last),
                });
            }
            for (i, vm) in self.vms.iter_mut().enumerate() {
                if let Some(child) = vm {
                    if let Ok(Some(_)) = child.try_wait() {
                        *vm = None;
                        return Err(VmError::Exited { node: i, log: tail(&self.vm_log(i), 15) });
                    }
                }
            }
        }
    }

    fn note_boot_times(&mut self, table: &[NodeStatus]) {
        for n in table.iter().filter(|n| n.state == "up") {
            let Ok(i) = usize::try_from(n.node) else { continue };
            if i < self.boot_times.len() && self.boot_times[i].is_none() && self.vms[i].is_some() {
                self.boot_times[i] = Some(self.started[i].elapsed());
            }
        }
    }

    /// The nodes that are not up with their consoles' ends, and the boot server's log end.
    fn describe(&self, nodes: &[NodeStatus]) -> String {
        let mut d = String::new();
        for n in nodes.iter().filter(|n| n.state != "up") {
            let _ = writeln!(d, "node {} is {}; its console ends:", n.node, n.state);
            let _ = writeln!(d, "{}", tail(&self.vm_log(n.node as usize), 8));
        }
        let _ = writeln!(d, "beoserv log ends:\n{}", tail(&self.beoserv_log(), 10));
        d
    }

    /// Hands the processes over to the directory (`DIR/pids`, `DIR/netns`) and leaves them
    /// running when this handle is dropped (`bpcluster up --vm`).
    pub fn detach(mut self) -> Result<(), VmError> {
        let mut text = String::new();
        // Each with its start time, which `down` checks before it signals.
        let mut record = |name: &str, pid: u32| {
            let start = crate::start_time(pid as i32).map(|t| format!(" {t}")).unwrap_or_default();
            let _ = writeln!(text, "{name} {pid}{start}");
        };
        if let Some(m) = self.master {
            record("master", m);
        }
        if let Some(b) = &self.beoserv {
            record("beoserv", b.id());
        }
        for (i, vm) in self.vms.iter().enumerate() {
            if let Some(vm) = vm {
                record(&format!("vm{i}"), vm.id());
            }
        }
        let path = self.spec.dir.join("pids");
        std::fs::write(&path, text).map_err(file_err(&path))?;
        let path = self.spec.dir.join("netns");
        std::fs::write(&path, &self.netns).map_err(file_err(&path))?;
        self.owned = false;
        Ok(())
    }

    /// Kills every process this handle started (machines, boot server, master) and deletes
    /// the namespace.
    pub fn stop(&mut self) {
        for vm in self.vms.iter_mut().filter_map(Option::take) {
            let mut vm = vm;
            let _ = vm.kill();
            let _ = vm.wait();
        }
        if let Some(mut b) = self.beoserv.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        if let Some(pid) = self.master.take() {
            stop_pid(pid as i32, "bpmaster");
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

impl Drop for VmCluster {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
        }
    }
}

/// SIGTERM to `pid` if it runs `prog`, SIGKILL after 5 s.
fn stop_pid(pid: i32, prog: &str) {
    if !crate::pid_runs(pid, prog) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::pid_runs(pid, prog) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if crate::pid_runs(pid, prog) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Whether `dir` holds a cluster of machines (started by `bpcluster up --vm`).
pub fn is_vm_cluster(dir: &Path) -> bool {
    dir.join("netns").exists()
}

/// Stops a detached cluster of machines: the machines, the boot server, the master; deletes
/// its namespace and directory. Returns how many processes were stopped.
pub fn stop_detached_vms(dir: &Path) -> Result<usize, crate::VclusterError> {
    // Only processes proved to be this cluster's (crate::Recorded::find) are signalled.
    let pids = crate::recorded_pids(dir)?;
    let mut stopped = 0;
    for r in pids.iter().filter(|r| r.name.starts_with("vm")) {
        if let Some(fd) = r.find(dir) {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
            stopped += 1;
        }
    }
    for r in pids.iter().filter(|r| !r.name.starts_with("vm")) {
        if r.find(dir).is_some() {
            stop_pid(r.pid, r.program());
            stopped += 1;
        }
    }
    if let Ok(ns) = std::fs::read_to_string(dir.join("netns")) {
        let _ = ip(&["netns", "del", ns.trim()]);
    }
    std::fs::remove_dir_all(dir)
        .map_err(|source| crate::VclusterError::File { path: dir.to_owned(), source })?;
    Ok(stopped)
}
