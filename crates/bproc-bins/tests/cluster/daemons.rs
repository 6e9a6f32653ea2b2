//! The daemons under failure and administration: node loss, ping timeouts, authentication,
//! configuration errors and reloads, node commands, and malformed client traffic; started in
//! the background as an administrator does (readiness, syslog, failed starts) and the
//! systemd units.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use bproc_proto::{decode, encode, errno, Message};
use bproc_testkit::{node_addr, unique_dir, TestCluster, TestCommand};
use nix::sys::signal::Signal;

use crate::bins;
use crate::nodes::write_hook;

/// A slave killed with SIGKILL turns its node down within the ping timeout.
#[test]
fn killed_slave_goes_down() {
    let mut spec = TestCluster::spec(&bins(), 8, "kill");
    spec.ping_timeout = 2;
    let mut c = TestCluster::start(spec);
    c.signal_slave(6, Signal::SIGKILL).unwrap();
    c.wait_state(6, "down", 2);
    assert_eq!(c.cmd("bpstat").args(["-n", "down"]).ok(), "6\n");
    assert_eq!(
        c.cmd("bpstat").args(["-l", "6"]).ok().lines().nth(1).unwrap(),
        "   6 0.0.0.0         down         ----------\troot       root      "
    );
}

/// A slave that stops answering (SIGSTOP: its socket stays open) is found by the pings and
/// shown `unreachable`; it resumes its session when it runs again within the grace period.
#[test]
fn silent_slave_times_out_and_returns() {
    let mut spec = TestCluster::spec(&bins(), 3, "ping");
    spec.ping_timeout = 2;
    let mut c = TestCluster::start(spec);
    c.cmd("bpctl").args(["-S", "1", "-s", "busy"]).ok();
    c.signal_slave(1, Signal::SIGSTOP).unwrap();
    c.wait_state(1, "unreachable", 5);
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("node 1: unreachable: ping timeout"), "{log}");
    c.signal_slave(1, Signal::SIGCONT).unwrap();
    // The same session: the state set before the hang is kept.
    c.wait_state(1, "busy", 15);
}

/// A slave without the cluster key is refused and learns nothing; so is an unknown address.
#[test]
fn wrong_key_and_unknown_address_are_refused() {
    let mut spec = TestCluster::spec(&bins(), 2, "auth");
    spec.extra_config = format!("ip 5 {}\n", node_addr(50));
    let c = TestCluster::start(spec);
    let other = c.dir().join("other.key");
    bproc_link::ClusterKey::create(&other).unwrap();
    let master = c.master_addr().to_string();
    let out = TestCommand::new(bins().join("bpslave"))
        .args(["-d", "--key"])
        .arg(&other)
        .args(["-s", &node_addr(50).to_string(), &master])
        .fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authentication failed: this slave does not hold the master's cluster key"),
        "{err}"
    );
    assert_eq!(c.cmd("bpstat").args(["-s", "5"]).ok(), "down\n");
    // Issue "hardening", item 12: the master says why before it closes, and the cause is
    // printed once. Before: "connection closed by peer: connection closed by peer".
    let out = TestCommand::new(bins().join("bpslave"))
        .args(["-d", "--key"])
        .arg(c.dir().join("key"))
        .args(["-s", "127.0.1.99", &master])
        .fails();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default(),
        format!(
            "bpslave: master {master}: refused by peer: address 127.0.1.99 is not a node of this \
             cluster (no ip or iprange line of the master's configuration names it)"
        )
    );
    let out = TestCommand::new(bins().join("bpslave"))
        .args(["-d", "--key"])
        .arg(c.dir().join("key"))
        .args(["-s", "127.0.1.99", "127.0.0.1:1"])
        .fails();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default(),
        "bpslave: master 127.0.0.1:1: connection failed: Connection refused (os error 111)"
    );
    if bproc_testkit::require_root("a slave from a port that is not reserved runs as a user") {
        // The master of a root cluster takes reserved source ports only.
        let user = bproc_testkit::test_user();
        let key = c.dir().join("user.key");
        std::fs::copy(c.dir().join("key"), &key).unwrap();
        nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(user.uid)), None).unwrap();
        let out = TestCommand::new(bins().join("bpslave"))
            .as_user(&user)
            .args(["-d", "--client-socket"])
            .arg(c.dir().join("user-node.sock"))
            .arg("--key")
            .arg(&key)
            .args(["-s", &node_addr(1).to_string(), &master])
            .fails();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "bpslave: master {master}: refused by peer: node 1: source port "
            )) && last.ends_with(
                " is not reserved (start bpslave as root, or allow it with \
                     `allowinsecureports` in the master's configuration)"
            ),
            "{err}"
        );
    }
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("node 5: connection from 127.0.1.50:"), "{log}");
    assert!(log.contains("peer failed authentication"), "{log}");
    assert!(log.contains("connect from unrecognized address 127.0.1.99"), "{log}");
}

/// Issue "hardening", item 6: a second bpslave on the host (here one holding the wrong key,
/// which the master would refuse anyway) leaves the running slave's client socket alone and
/// says why it does not start. Before, it removed the socket before trying to join, and
/// programs on the node could no longer reach the cluster (`bpstat` there failed).
#[test]
fn second_slave_leaves_the_client_socket_alone() {
    let mut spec = TestCluster::spec(&bins(), 1, "second-slave");
    spec.isolate = false; // the client socket is then DIR/node0.sock, on the host
    let c = TestCluster::start(spec);
    let socket = c.dir().join("node0.sock");
    let serving = listener_pid(&socket);
    let other = c.dir().join("other.key");
    bproc_link::ClusterKey::create(&other).unwrap();
    let out = TestCommand::new(bins().join("bpslave"))
        .args(["-d", "--key"])
        .arg(&other)
        .arg("--client-socket")
        .arg(&socket)
        .args(["-s", &node_addr(0).to_string(), &c.master_addr().to_string()])
        .fails();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default(),
        format!(
            "bpslave: the node's client socket {} is served by another daemon (pid {serving}); \
             stop it, or give this slave a socket of its own with --client-socket PATH",
            socket.display()
        )
    );
    assert_eq!(listener_pid(&socket), serving);
    // Programs on the node still reach the cluster through it.
    assert_eq!(c.cmd("bpsh").args(["0", "bpstat", "-s", "0"]).ok(), "up\n");
    // A socket file nobody serves (its daemon died) is taken over as before.
    let stale = c.dir().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(bproc_sys::peer::socket_server(&stale).is_none());
}

/// Configuration errors name the file and line and stop the master; unknown directives are
/// warned about, not silently ignored.
#[test]
fn config_errors_name_their_line() {
    let dir = unique_dir("badconf");
    let conf = dir.join("config");
    let master_fails = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        let out = TestCommand::new(bins().join("bpmaster")).arg("-d").arg("-c").arg(&conf).fails();
        String::from_utf8(out.stderr).unwrap()
    };
    assert_eq!(
        master_fails("# test\nlisten 127.0.0.1:0\npingtimeout 1\n"),
        format!("bpmaster: {}:3: pingtimeout must be 2 seconds or more, not 1\n", conf.display())
    );
    assert_eq!(
        master_fails("iprange 0 10.0.0.5 10.0.0.9\nip 10.0.0.7\n"),
        format!("bpmaster: {}:2: IP already allocated: 10.0.0.7 (node 2)\n", conf.display())
    );
    // Issue "hardening", item 14: an interface is reported at its line, saying whether it is
    // missing or has no IPv4 address.
    let key = dir.join("key");
    bproc_link::ClusterKey::create(&key).unwrap();
    let head = format!("keyfile {}\nsocket {}\n", key.display(), dir.join("s.sock").display());
    assert_eq!(
        master_fails(&format!("{head}interface eth9\n")),
        format!(
            "bpmaster: {}:3: interface eth9: no such network interface (see `ip link`)\n",
            conf.display()
        )
    );
    let no_ipv4 = nix::ifaddrs::getifaddrs().ok().and_then(|all| {
        let all: Vec<_> = all.collect();
        all.iter().map(|i| i.interface_name.clone()).find(|n| {
            !all.iter().any(|i| {
                &i.interface_name == n
                    && i.address.as_ref().is_some_and(|a| a.as_sockaddr_in().is_some())
            })
        })
    });
    if let Some(name) = no_ipv4 {
        assert_eq!(
            master_fails(&format!("{head}interface {name}\n")),
            format!(
                "bpmaster: {}:3: interface {name}: it has no IPv4 address (slaves connect over \
                 IPv4; see `ip addr`)\n",
                conf.display()
            )
        );
    }
    let out = TestCommand::new(bins().join("bpmaster"))
        .arg("-d")
        .arg("-c")
        .arg(dir.join("missing"))
        .fails();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"), "{out:?}");
    // An unknown directive is warned about and the cluster still runs.
    let mut spec = TestCluster::spec(&bins(), 1, "warn");
    spec.extra_config = "frobnicate yes\nbootfile /boot/img\n".into();
    let c = TestCluster::start(spec);
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    let conf = std::fs::read_to_string(c.config_path()).unwrap();
    let line = conf.lines().position(|l| l.starts_with("frobnicate")).unwrap() + 1;
    assert!(log.contains(&format!(":{line}: unknown directive `frobnicate` (ignored)")), "{log}");
    assert!(!log.contains("bootfile"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP re-reads the configuration without dropping connected slaves.
#[test]
fn sighup_reload_keeps_slaves() {
    let c = TestCluster::up(&bins(), 4, "hup");
    let conf = std::fs::read_to_string(c.config_path()).unwrap();
    std::fs::write(c.config_path(), format!("{conf}ip 9 {}\n", node_addr(90))).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.master_pid().unwrap() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
    c.wait(10, "node 9 configured", |t| t.iter().any(|n| n.node == 9));
    assert_eq!(c.cmd("bpstat").args(["-s", "-N"]).ok(), "up\nup\nup\nup\ndown\n");
    // A broken file keeps the old configuration.
    std::fs::write(c.config_path(), "pingtimeout x\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.master_pid().unwrap() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
    c.cmd("bpctl").args(["-S", "0", "-s", "marker"]).ok();
    c.wait_state(0, "marker", 5);
    assert_eq!(c.cmd("bpstat").args(["-t"]).ok(), "5\n");
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("SIGHUP: keeping the old configuration"), "{log}");
}

/// Reboot restarts a node (down, boot, up again); halt stops it for good.
#[test]
fn reboot_and_halt() {
    let mut spec = TestCluster::spec(&bins(), 3, "reboot");
    // The second boot of a node lasts long enough to be seen.
    let marks = spec.dir.join("booted");
    std::fs::create_dir_all(&marks).unwrap();
    write_hook(
        &spec.dir,
        &format!(
            "#!/bin/sh\n[ -e {m}/$1 ] && sleep 0.5\ntouch {m}/$1\nexit 0\n",
            m = marks.display()
        ),
    );
    spec.ping_timeout = 2;
    let c = TestCluster::start(spec);
    let pid = c.slave_pid(1).unwrap();
    c.cmd("bpctl").args(["-S", "1", "-R"]).ok();
    c.wait_state(1, "boot", 10);
    c.wait_state(1, "up", 10);
    assert!(bproc_vcluster::pid_runs(pid as i32, "bpslave"), "the daemon restarted in place");
    let pid2 = c.slave_pid(2).unwrap();
    c.cmd("bpctl").args(["--slave", "2", "--halt"]).ok();
    c.wait_state(2, "down", 10);
    let t0 = std::time::Instant::now();
    while bproc_vcluster::pid_runs(pid2 as i32, "bpslave") {
        assert!(t0.elapsed().as_secs() < 5, "halted slave still running");
        std::thread::yield_now();
    }
    let out = c.cmd("bpctl").args(["-S", "2", "-R"]).fails();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "2: node 2 is down\n");
}

/// --reconnect moves a node's link to another of its addresses without a new session; chroot
/// and reconnect report the node's reason.
#[test]
fn reconnect_and_chroot() {
    let mut spec = TestCluster::spec(&bins(), 2, "reconnect");
    spec.extra_config = format!("ip 1 {}\n", node_addr(201));
    let c = TestCluster::start(spec);
    c.cmd("bpctl")
        .args(["-S", "1", "-s", "kept", "--reconnect", &format!(",{}", node_addr(201))])
        .ok();
    assert_eq!(c.cmd("bpstat").args(["-a", "1"]).ok(), format!("{}\n", node_addr(201)));
    assert_eq!(c.cmd("bpstat").args(["-s", "1"]).ok(), "kept\n");
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("node 1: Reconnect session"), "{log}");
    // The old link is gone but the node stayed up: pings still answered.
    let out = c.cmd("bpctl").args(["-S", "0", "-r", "/no/such/dir"]).fails();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "0: chroot /no/such/dir: No such file or directory\n"
    );
    // Issue "hardening", item 9: a reconnect from an address the master does not know says
    // what happened; before, "Input/output error".
    let out = c.cmd("bpctl").args(["-S", "0", "--reconnect", ",127.0.5.5"]).fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("0: reconnect to 127.0.0.1:"), "{err}");
    assert!(
        err.trim_end().ends_with(
            ": refused by peer: address 127.0.5.5 is not a node of this cluster (no ip or \
             iprange line of the master's configuration names it)"
        ),
        "{err}"
    );
    assert_eq!(c.cmd("bpstat").args(["-s", "0"]).ok(), "up\n");
    if nix::unistd::geteuid().is_root() {
        c.cmd("bpctl").args(["-S", "0", "--chroot", "/"]).ok();
    } else {
        // A slave that is not root may not chroot; the slave's errno comes back.
        let out = c.cmd("bpctl").args(["-S", "0", "--chroot", "/"]).fails();
        assert_eq!(String::from_utf8_lossy(&out.stderr), "0: chroot /: Operation not permitted\n");
    }
}

/// Issue "hardening", item 4: `bpctl -r` confines the processes bpsh starts on the node, as
/// it does the node's copies. Before, it changed only the slave daemon's root, which its
/// spawner thread had left at start, so `bpsh N ls /` listed the node's full root.
#[test]
fn chroot_confines_the_nodes_processes() {
    if !bproc_testkit::require_root("chroot needs root") {
        return;
    }
    let c = TestCluster::up(&bins(), 1, "chroot-procs");
    // Outside /tmp, which an isolated node has of its own.
    let jail = PathBuf::from(format!("/var/tmp/bproc-test-jail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&jail);
    for f in bproc_stage::closure(Path::new("/bin/ls"), None).unwrap() {
        let to = jail.join(f.path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f.path, &to).unwrap();
    }
    std::fs::write(jail.join("marker"), "inside\n").unwrap();
    c.cmd("bpctl").args(["-S", "0", "-r"]).arg(&jail).ok();
    let out = c.cmd("bpsh").args(["0", "/bin/ls", "/"]).ok();
    let names: Vec<&str> = out.lines().collect();
    assert!(names.contains(&"marker"), "{out}");
    assert!(!names.contains(&"etc") && !names.contains(&"proc"), "{out}");
    // Copies see the same root.
    let got = unique_dir("chroot-copy");
    c.cmd("bpcp").arg("0:/marker").arg(&got).ok();
    assert_eq!(std::fs::read_to_string(got.join("marker")).unwrap(), "inside\n");
    let _ = std::fs::remove_dir_all(&jail);
    let _ = std::fs::remove_dir_all(&got);
}

fn frame_exchange(s: &mut UnixStream, bytes: &[u8]) -> Message {
    s.write_all(bytes).unwrap();
    let mut head = [0u8; 16];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[12..16].try_into().unwrap()) as usize;
    let mut frame = head.to_vec();
    frame.resize(16 + len, 0);
    s.read_exact(&mut frame[16..]).unwrap();
    decode(&frame).unwrap().1
}

/// Unknown requests get an error reply and the connection stays usable; garbage gets an error
/// and a close; the master keeps serving.
#[test]
fn malformed_client_traffic_is_answered() {
    let c = TestCluster::up(&bins(), 1, "proto");
    let mut s = UnixStream::connect(c.socket()).unwrap();
    let mut unknown = encode(7, &Message::NodeList);
    unknown[6..8].copy_from_slice(&999u16.to_be_bytes());
    match frame_exchange(&mut s, &unknown) {
        Message::Error { code, message } => {
            assert_eq!(code, errno::ENOSYS);
            assert!(message.contains("999"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(
        frame_exchange(&mut s, &encode(8, &Message::NodeList)),
        Message::Nodes { .. }
    ));
    // A slave-link message on the client socket.
    match frame_exchange(&mut s, &encode(9, &Message::Ping { seq: 1, time_ms: 0 })) {
        Message::Error { code, .. } => assert_eq!(code, errno::EPROTO),
        other => panic!("expected an error, got {other:?}"),
    }
    // A first request whose header comes in pieces is served as any other.
    let mut p = UnixStream::connect(c.socket()).unwrap();
    let list = encode(10, &Message::NodeList);
    p.write_all(&list[..5]).unwrap();
    assert!(matches!(frame_exchange(&mut p, &list[5..]), Message::Nodes { .. }));
    let mut g = UnixStream::connect(c.socket()).unwrap();
    match frame_exchange(&mut g, b"GET / HTTP/1.0\r\n\r\n") {
        Message::Error { code, .. } => assert_eq!(code, errno::EPROTO),
        other => panic!("expected an error, got {other:?}"),
    }
    // Closed after the reply: EOF, or a reset since the rest of the garbage went unread.
    let mut rest = Vec::new();
    match g.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0, "nothing after the error reply"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(c.cmd("bpstat").arg("-t").ok(), "1\n");
}

/// One master per socket; version and help output.
#[test]
fn one_master_per_socket_and_basic_options() {
    let c = TestCluster::up(&bins(), 1, "single");
    let out =
        TestCommand::new(bins().join("bpmaster")).arg("-d").arg("-c").arg(c.config_path()).fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another bpmaster is already running"), "{err}");
    for prog in ["bpmaster", "bpslave", "bpstat", "bpctl"] {
        let flag = if prog == "bpstat" || prog == "bpctl" { "-v" } else { "-V" };
        let v = TestCommand::new(bins().join(prog)).arg(flag).ok();
        assert_eq!(v, format!("{prog} version {}\n", env!("CARGO_PKG_VERSION")));
        assert!(TestCommand::new(bins().join(prog)).arg("-h").ok().starts_with("Usage: "));
    }
    // Issue "hardening", item 15: --version on every program (bpcp, bpcluster and brsh had
    // none), and a daemon's usage error says what was wrong first, then the usage (before:
    // ten lines of usage, then the error).
    for prog in
        ["bpmaster", "bpslave", "bpsh", "bpstat", "bpctl", "bplib", "bpcp", "bpcluster", "brsh"]
    {
        let v = TestCommand::new(bins().join(prog)).arg("--version").ok();
        assert_eq!(v, format!("{prog} version {}\n", env!("CARGO_PKG_VERSION")));
    }
    for prog in ["bpmaster", "bpslave"] {
        let out = TestCommand::new(bins().join(prog)).arg("-x").exits(1);
        let err = String::from_utf8_lossy(&out.stderr);
        let mut lines = err.lines();
        assert_eq!(lines.next(), Some(format!("{prog}: invalid option '-x'").as_str()), "{err}");
        assert!(lines.next().is_some_and(|l| l.starts_with("Usage: ")), "{err}");
    }
    let out = TestCommand::new(bins().join("bpslave")).exits(1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("bpslave: no master given: bpslave MASTER[:PORT]\nUsage: "),
        "{out:?}"
    );
    let out = TestCommand::from(
        Command::new(bins().join("bpstat")).env("BPROC_SOCKET", c.dir().join("nope")),
    )
    .output_of();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is bpmaster running?"));
}

/// A daemon that went to the background (not our child), killed by pid when dropped, also
/// when the test fails.
struct Background(i32);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The pid of the process listening on the Unix socket `path` (the kernel names it:
/// `SO_PEERCRED`).
fn listener_pid(path: &Path) -> i32 {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .expect("SO_PEERCRED");
    cred.pid()
}

/// The daemon that listens on `path`, to be killed when dropped.
fn daemon_behind(path: &Path) -> Background {
    Background(listener_pid(path))
}

/// Fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session, ...
fn proc_stat(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().map(str::to_owned).collect()
}

/// Checks what going to the background promises: a session of its own (no terminal), not
/// the starter's child, in `/`, standard streams on /dev/null.
fn assert_detached(pid: i32) {
    let stat = proc_stat(pid);
    assert_ne!(stat[1], std::process::id().to_string(), "the test's child: {stat:?}");
    assert_eq!(stat[3], pid.to_string(), "not a session leader: {stat:?}");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
}

/// A configuration for a master started by hand in `dir` (with its key), plus `extra`.
fn hand_config(dir: &Path, extra: &str) -> PathBuf {
    let key = dir.join("key");
    if !key.exists() {
        TestCommand::new(bins().join("bpmaster")).arg("--keygen").arg(&key).ok();
    }
    let conf = dir.join("config");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "socket {d}/master.sock\nkeyfile {d}/key\nstatedir {d}/state\nlogdir {d}/log\n{extra}"
        ),
    )
    .unwrap();
    conf
}

/// The last line of a command's stderr (before it, a machine without syslog gets a warning).
fn last_err_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned()
}

/// bpmaster started the normal way (no `-d`, issue "A real cluster") forks before any thread
/// starts, so its data port still accepts: nodes copy to the front end (the seed's `bpsh -a
/// -p bpcp /tmp/myoutput` hung until killed when the fork came after the data port's thread).
#[test]
fn background_master_takes_copies_from_nodes() {
    let mut spec = TestCluster::spec(&bins(), 3, "bg-copy");
    spec.daemonize_master = true;
    let c = TestCluster::start(spec);
    assert_detached(c.master_pid().unwrap() as i32);
    let local = unique_dir("bg-copy-local");
    let name = format!("/tmp/bproc-bg-copy-{}", std::process::id());
    let line = format!("echo result of node 1 > {name}");
    c.cmd("bpsh").args(["1", "sh", "-c", &line]).ok();
    // --timeout: a master that takes no copies fails the test instead of hanging it.
    let dst = local.join("h");
    c.cmd("bpsh")
        .args(["--timeout", "60", "1", "bpcp", &name, &format!("master:{}", dst.display())])
        .ok();
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "result of node 1\n");
    if c.spec().isolate {
        // Each node has its own /tmp: only node 1 has the file, which lands in the front
        // end's /tmp, and the others say they have none.
        let out = c.cmd("bpsh").args(["--timeout", "60", "-a", "-p", "bpcp", &name]).output_of();
        let got = std::fs::read_to_string(&name);
        let _ = std::fs::remove_file(&name);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(got.unwrap(), "result of node 1\n");
    }
    let _ = std::fs::remove_dir_all(&local);
}

/// A daemonized master started with a relative `-c` (from the configuration's directory, as
/// an administrator in /etc/clustermatic would) still finds its file on SIGHUP, although it
/// now runs in `/`.
#[test]
fn background_master_reloads_its_relative_config() {
    let mut spec = TestCluster::spec(&bins(), 1, "bg-hup");
    spec.daemonize_master = true;
    let c = TestCluster::start(spec);
    let pid = c.master_pid().unwrap() as i32;
    assert_detached(pid);
    let conf = std::fs::read_to_string(c.config_path()).unwrap();
    std::fs::write(c.config_path(), format!("{conf}ip 9 {}\n", node_addr(90))).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    c.wait(10, "node 9 configured", |t| t.iter().any(|n| n.node == 9));
    assert_eq!(c.cmd("bpstat").args(["-s", "-N"]).ok(), "up\ndown\n");
}

/// In the background both daemons log to syslog with their facility (bpmaster's
/// `logfacility`, bpslave's `-l`): one datagram per message, `<PRI>... NAME[PID]: text`.
#[test]
fn background_daemons_log_to_syslog() {
    let dir = unique_dir("syslog");
    let log = dir.join("log.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&log).unwrap();
    // Waits for a message, not a sleep: the daemons log at start.
    rx.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let next_from = |name: &str| loop {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).expect("a syslog message within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains(&format!(" {name}[")) {
            return msg;
        }
    };
    let conf = hand_config(&dir, "listen 127.0.0.1:0\nlogfacility local3\nfrobnicate yes\n");
    let out = TestCommand::from(
        Command::new(bins().join("bpmaster")).arg("-c").arg(&conf).env("BPROC_SYSLOG_SOCKET", &log),
    )
    .output_of();
    assert!(out.status.success(), "{out:?}");
    let master = daemon_behind(&dir.join("master.sock"));
    let msg = next_from("bpmaster");
    // local3 (19) × 8 + warning (4)
    assert!(msg.starts_with("<156>"), "{msg}");
    let want = format!(
        " bpmaster[{}]: {}:7: unknown directive `frobnicate` (ignored)",
        master.0,
        conf.display()
    );
    assert!(msg.ends_with(&want), "{msg}");

    // A slave whose master is not there yet (-r) is ready after its first attempt, and logs
    // the retries. Its port is held by a bound socket that never listens: connecting is
    // refused, and nothing else can take the port meanwhile.
    let (port, _held) = {
        use nix::sys::socket::SockaddrIn;
        use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsRawFd;
        let s = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None);
        let s = s.unwrap();
        bind(s.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        (getsockname::<SockaddrIn>(s.as_raw_fd()).unwrap().port(), s)
    };
    let out = TestCommand::from(
        Command::new(bins().join("bpslave"))
            .args(["-r", "-l", "local5", "--key"])
            .arg(dir.join("key"))
            .arg("--client-socket")
            .arg(dir.join("node.sock"))
            .arg(format!("127.0.0.1:{port}"))
            .env("BPROC_SYSLOG_SOCKET", &log),
    )
    .output_of();
    assert!(out.status.success(), "{out:?}");
    let slave = daemon_behind(&dir.join("node.sock"));
    assert_detached(slave.0);
    let msg = next_from("bpslave");
    // local5 (21) × 8 + warning (4)
    assert!(msg.starts_with("<172>"), "{msg}");
    assert!(msg.contains(&format!(" bpslave[{}]: master 127.0.0.1:{port}: ", slave.0)), "{msg}");
    assert!(msg.ends_with("; retrying in 100ms"), "{msg}");
    drop((master, slave));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under systemd (`NOTIFY_SOCKET` set, a `Type=notify` service) the master does not fork
/// even without `-d`: it says `READY=1` once listening, as the process systemd started.
#[test]
fn master_under_systemd_notifies_ready() {
    let dir = unique_dir("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let _syslog = std::os::unix::net::UnixDatagram::bind(dir.join("log.sock")).unwrap();
    let conf = hand_config(&dir, "listen 127.0.0.1:0\n");
    let master = Command::new(bins().join("bpmaster"))
        .arg("-c")
        .arg(&conf)
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env("BPROC_SYSLOG_SOCKET", dir.join("log.sock"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped however the test ends.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut master = Reaped(master);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // The process systemd started is the daemon: it did not fork.
    assert_eq!(listener_pid(&dir.join("master.sock")), master.0.id() as i32);
    assert!(master.0.try_wait().unwrap().is_none(), "bpmaster exited");
    drop(master);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start that fails in the background makes the command that was typed fail with the
/// daemon's reason: an interface without an address, a port in use, a master not there.
#[test]
fn failed_background_start_is_reported() {
    let dir = unique_dir("bg-fail");
    let run = |prog: &str, args: &[&str], socket: &str| {
        let out = TestCommand::from(Command::new(bins().join(prog)).args(args)).output_of();
        // Should one start after all, it must not outlive the test.
        let started = out.status.success().then(|| daemon_behind(&dir.join(socket)));
        (out, started)
    };
    let conf = hand_config(&dir, "interface nosuch0\n");
    let (out, _d) = run("bpmaster", &["-c", conf.to_str().unwrap()], "master.sock");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = std::fs::read_to_string(&conf)
        .unwrap()
        .lines()
        .position(|l| l == "interface nosuch0")
        .unwrap()
        + 1;
    let want = format!(
        "bpmaster: {}:{line}: interface nosuch0: no such network interface (see `ip link`)",
        conf.display()
    );
    assert_eq!(last_err_line(&out), want);

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    hand_config(&dir, &format!("listen 127.0.0.1:{port}\n"));
    let (out, _d) = run("bpmaster", &["-c", conf.to_str().unwrap()], "master.sock");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        last_err_line(&out),
        format!(
            "bpmaster: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"
        )
    );

    drop(held);
    let key = dir.join("key");
    let sock = dir.join("node.sock");
    let args = ["--key", key.to_str().unwrap(), "--client-socket", sock.to_str().unwrap()];
    let master = format!("127.0.0.1:{port}");
    let (out, _d) = run("bpslave", &[&args[..], &[master.as_str()]].concat(), "node.sock");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        last_err_line(&out),
        format!("bpslave: master {master}: connection failed: Connection refused (os error 111)")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The systemd units pass `systemd-analyze verify` (with the daemons where install.sh puts
/// them, and their man pages found).
#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no systemd-analyze to check the units (apt install systemd)");
        return;
    }
    let dir = unique_dir("units");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::create_dir_all(dir.join("man/man8")).unwrap();
    let mut units = Vec::new();
    for name in ["bpmaster", "bpslave", "beoserv"] {
        let text =
            std::fs::read_to_string(root.join(format!("systemd/{name}.service.in"))).unwrap();
        let unit = dir.join(format!("{name}.service"));
        std::fs::write(&unit, text.replace("@SBINDIR@", bins().to_str().unwrap())).unwrap();
        units.push(unit);
        std::fs::copy(root.join(format!("man/{name}.8")), dir.join(format!("man/man8/{name}.8")))
            .unwrap();
    }
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify");
    if Command::new("man").arg("-w").arg("man").output().is_ok() {
        cmd.env("MANPATH", dir.join("man"));
    } else {
        cmd.arg("--man=no");
    }
    let out = cmd.args(&units).output().unwrap();
    // Problems with the machine's own units are not ours; a unit's own problems name it.
    let ours: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .filter(|l| ["bpmaster", "bpslave", "beoserv"].iter().any(|d| l.contains(d)))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
