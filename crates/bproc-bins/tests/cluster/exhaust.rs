//! No user exhausts the daemons ("Faults lose nothing", part 4): a user's flood of client
//! connections meets its cap while root's `bpstat` answers; headers claiming large bodies
//! cost nothing before the sender is proved; made-up data-port tokens cost no threads; and
//! floods of refused connections cost the logs a few lines, not a line each.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bproc_proto::{encode, Message, MAX_BODY};
use bproc_testkit::{require_root, test_user, TestCluster};

use crate::bins;

/// A field of `/proc/PID/status` (`VmRSS` in kB, `Threads`).
fn status_field(pid: u32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The lines of `/proc/PID/net/tcp`: (local ip, local port, state, rx queue, inode).
fn tcp_sockets(pid: u32) -> Vec<(Ipv4Addr, u16, u8, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, port) = f.get(1)?.split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let rx = u64::from_str_radix(f.get(4)?.split_once(':')?.1, 16).ok()?;
            Some((ip, port, state, rx, f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// The TCP ports process `pid` listens on (a slave: its data port and its tree port).
fn listening_ports(pid: u32) -> Vec<(Ipv4Addr, u16)> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.2 == 0x0a && inodes.contains(&s.4))
        .map(|s| (s.0, s.1))
        .collect()
}

/// Waits until the daemon has read every byte sent to `ports` (no connection to them holds
/// unread data), which is when its memory and threads show what the bytes cost.
fn wait_read(pid: u32, ports: &[(Ipv4Addr, u16)]) {
    let t0 = Instant::now();
    loop {
        let unread: u64 = tcp_sockets(pid)
            .iter()
            .filter(|s| s.2 == 0x01 && ports.contains(&(s.0, s.1)))
            .map(|s| s.3)
            .sum();
        if unread == 0 {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{unread} bytes still unread");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Holds N connections to the client socket as `bpalice`, each with a request sent and its
/// answer unread; prints how many it holds, then waits for its stdin to close.
const HOLDER: &str = r#"
use IO::Socket::UNIX; use IO::Handle;
$SIG{PIPE} = 'IGNORE';
my ($path, $n, $hex) = @ARGV;
my $req = pack("H*", $hex);
my @held;
for (1 .. $n) {
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) or last;
    $s->syswrite($req);
    push @held, $s;
}
print scalar(@held), "\n";
STDOUT->flush;
<STDIN>;
"#;

/// Starts a holder of `n` connections as `user` and waits until it holds them.
fn hold(c: &TestCluster, user: &bproc_testkit::TestUser, n: usize) -> std::process::Child {
    let hex: String = encode(1, &Message::NodeList).iter().map(|b| format!("{b:02x}")).collect();
    let mut h = Command::new("setpriv")
        .args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string()])
        .args(["--clear-groups", "perl", "-e", HOLDER])
        .arg(c.socket())
        .args([&n.to_string(), &hex])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the connection holder (setpriv, perl)");
    let mut line = String::new();
    BufReader::new(h.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), n.to_string(), "the holder opened every connection");
    h
}

/// Ends a holder: it lets go when its stdin closes.
fn release(mut h: std::process::Child) {
    drop(h.stdin.take());
    h.wait().unwrap();
}

/// An unprivileged user holding 20,000 connections to the client socket gets its cap of
/// 256 (each further connection is refused, naming the cap) while root's bpstat answers at
/// once; the master's descriptors stay bounded, its log gets a few lines, and partial frames
/// claiming 4 MiB each cost it almost nothing.
#[test]
fn a_user_cannot_exhaust_the_client_socket() {
    if !require_root("connections as another user") {
        return;
    }
    let c = TestCluster::up(&bins(), 1, "exhaust-clients");
    let user = test_user();
    let master = c.master_pid().unwrap();
    c.cmd("bpstat").ok();
    let (fds0, lines0) = (open_fds(master), log_lines(&c.master_log()));
    // Two holders of 10,000 each: an unprivileged process's open-file limit may be lower
    // than 20,000, and root may not be allowed to raise it (in a container).
    let holders = [hold(&c, &user, 10000), hold(&c, &user, 10000)];
    // Root is not held up by the flood.
    let t0 = Instant::now();
    assert_eq!(c.cmd("bpstat").arg("-t").timeout(2).ok(), "1\n");
    let took = t0.elapsed();
    // The user is at its cap, and told so.
    let out = c.cmd("bpstat").as_user(&user).fails();
    let err = String::from_utf8_lossy(&out.stderr);
    let cap = format!("user {} already has 256 connections (cap maxclientsperuser)", user.uid);
    assert!(err.contains(&cap), "{err}");
    let fds = open_fds(master);
    assert!(fds < fds0 + 256 + 50, "the master holds {fds} descriptors ({fds0} before)");
    let lines = log_lines(&c.master_log()) - lines0;
    assert!(lines <= 12, "{lines} log lines for 19,744 refusals");
    // Partial frames claiming 4 MiB each, as root (no cap): nothing set aside for them.
    let rss0 = status_field(master, "VmRSS");
    let mut head = encode(1, &Message::NodeList);
    head[12..16].copy_from_slice(&(MAX_BODY as u32).to_be_bytes());
    let partial: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(c.socket()).unwrap();
            s.write_all(&head).unwrap();
            s.write_all(&[0u8; 4096]).unwrap();
            s
        })
        .collect();
    // The master serves in order: once bpstat answers, it has read what came before.
    c.cmd("bpstat").arg("-t").ok();
    let grew = status_field(master, "VmRSS").saturating_sub(rss0);
    eprintln!(
        "client flood: root's bpstat {took:?}; master fds {fds0} -> {fds}; {lines} log lines; \
         50 partial 4 MiB frames: VmRSS +{grew} kB"
    );
    assert!(grew < 16 << 10, "50 partial frames cost the master {grew} kB");
    drop(partial);
    // Once the user lets go, it connects again.
    holders.into_iter().for_each(release);
    let t0 = Instant::now();
    while !c.cmd("bpstat").as_user(&user).output_of().status.success() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the user's slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 100 connections to a slave's ports, each a 16-byte header claiming a 4 MiB body: the
/// slave sets nothing aside for them (they are not proved), so its memory barely moves.
#[test]
fn claimed_lengths_cost_a_slave_nothing() {
    let c = TestCluster::up(&bins(), 1, "exhaust-tree");
    let slave = c.slave_pid(0).unwrap();
    let ports = listening_ports(slave);
    assert_eq!(ports.len(), 2, "a slave listens on its data and tree ports: {ports:?}");
    let rss0 = status_field(slave, "VmRSS");
    let mut head = encode(0, &Message::NodeList);
    head[12..16].copy_from_slice(&(MAX_BODY as u32).to_be_bytes());
    let held: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(ports[i % 2]).unwrap();
            s.write_all(&head).unwrap();
            s
        })
        .collect();
    wait_read(slave, &ports);
    let grew = status_field(slave, "VmRSS").saturating_sub(rss0);
    eprintln!("100 headers claiming 4 MiB: slave VmRSS {rss0} kB, +{grew} kB");
    assert!(grew < 16 << 10, "the headers cost the slave {grew} kB");
    drop(held);
    c.wait_state(0, "up", 5);
}

/// A flood of made-up tokens on a slave's ports costs it no threads, and floods of refused
/// connections (there, and on the master's slave port from an unknown address) cost the logs
/// a few lines each.
#[test]
fn refused_floods_cost_no_threads_and_few_log_lines() {
    let c = TestCluster::up(&bins(), 1, "exhaust-data");
    let slave = c.slave_pid(0).unwrap();
    let ports = listening_ports(slave);
    let (threads0, lines0) = (status_field(slave, "Threads"), log_lines(&c.slave_log(0)));
    let mut peak = threads0;
    let mut held = Vec::new();
    for i in 0..1000u32 {
        let mut s = TcpStream::connect(ports[i as usize % ports.len()]).unwrap();
        let mut token = [0u8; 16];
        token[..4].copy_from_slice(&i.to_be_bytes());
        token[4..8].copy_from_slice(&std::process::id().to_be_bytes());
        s.write_all(&token).unwrap();
        held.push(s);
        if i % 100 == 99 {
            peak = peak.max(status_field(slave, "Threads"));
        }
    }
    wait_read(slave, &ports);
    let threads = status_field(slave, "Threads");
    peak = peak.max(threads);
    let lines = log_lines(&c.slave_log(0)) - lines0;
    eprintln!("1000 made-up tokens: slave threads {threads0} -> {threads} (peak {peak}); {lines} log lines");
    assert!(peak <= threads0 + 2, "threads went from {threads0} to {peak}");
    assert!(lines <= 12, "{lines} log lines for 1000 refused connections");
    drop(held);
    // The master's slave port, from an address no ip line names.
    let lines0 = log_lines(&c.master_log());
    for _ in 0..1000 {
        drop(TcpStream::connect(c.master_addr()).unwrap());
    }
    c.cmd("bpstat").ok();
    let t0 = Instant::now();
    while !std::fs::read_to_string(c.master_log()).unwrap().contains("unrecognized address") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no refusal logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = log_lines(&c.master_log()) - lines0;
    assert!(lines <= 12, "{lines} log lines for 1000 refused slave connections");
    c.wait_state(0, "up", 5);
}

/// Ghosts do not count against a user's cap: they stand for processes the user runs, and a
/// job has one for each. A job of 8 ranks runs under a cap of 3 connections, while a fourth
/// plain connection of the same user is refused.
#[test]
fn ghosts_do_not_count_against_the_cap() {
    if !require_root("runs a job as a second, unprivileged user") {
        return;
    }
    let user = test_user();
    let mut spec = TestCluster::spec(&bins(), 2, "exhaust-ghosts");
    spec.extra_config = "maxclientsperuser 3\n".into();
    let c = TestCluster::start(spec);
    use std::os::unix::process::CommandExt;
    let mut job = Command::new(bins().join("bpsh"))
        .args(["0,1,0,1,0,1,0,1", "sh", "-c", "echo x; exec sleep 60"])
        .env("BPROC_SOCKET", c.socket())
        .uid(user.uid)
        .gid(user.gid)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(job.stdout.take().unwrap());
    for _ in 0..8 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "x\n");
    }
    // Every rank has its ghost: the master lists them with their nodes, and refused none.
    let t0 = Instant::now();
    loop {
        let procs = c.cmd("bpstat").arg("-p").ok();
        let ghosts = procs.lines().skip(1).count();
        if ghosts == 8 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{ghosts} ghosts:\n{procs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(!log.contains("refused"), "{log}");
    let _ = job.kill();
    let _ = job.wait();
    let holder = hold(&c, &user, 3);
    let out = c.cmd("bpstat").as_user(&user).fails();
    let err = String::from_utf8_lossy(&out.stderr);
    let cap = format!("user {} already has 3 connections (cap maxclientsperuser)", user.uid);
    assert!(err.contains(&cap), "{err}");
    release(holder);
}
