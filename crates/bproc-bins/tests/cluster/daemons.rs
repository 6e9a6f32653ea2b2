//! The daemons under failure and administration: node loss, ping timeouts, authentication,
//! configuration errors and reloads, node commands, and malformed client traffic.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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
    let t0 = std::time::Instant::now();
    c.signal_slave(6, Signal::SIGKILL).unwrap();
    c.wait_state(6, "down", 2);
    assert!(t0.elapsed().as_secs_f64() <= 2.0, "took {:?}", t0.elapsed());
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
    let out = TestCommand::new(bins().join("bpslave"))
        .args(["-d", "--key"])
        .arg(c.dir().join("key"))
        .args(["-s", "127.0.1.99", &master])
        .fails();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bpslave: master"), "{out:?}");
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("node 5: connection from 127.0.1.50:"), "{log}");
    assert!(log.contains("peer failed authentication"), "{log}");
    assert!(log.contains("connect from unrecognized address 127.0.1.99"), "{log}");
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
    assert_eq!(String::from_utf8_lossy(&out.stderr), "2: Node is down\n");
}

/// --reconnect moves a node's link to another of its addresses without a new session; chroot
/// reports the slave's errno.
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
    assert_eq!(String::from_utf8_lossy(&out.stderr), "0: No such file or directory\n");
    if nix::unistd::geteuid().is_root() {
        c.cmd("bpctl").args(["-S", "0", "--chroot", "/"]).ok();
    } else {
        // A slave that is not root may not chroot; the slave's errno comes back.
        let out = c.cmd("bpctl").args(["-S", "0", "--chroot", "/"]).fails();
        assert_eq!(String::from_utf8_lossy(&out.stderr), "0: Operation not permitted\n");
    }
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
    let out = Command::new(bins().join("bpstat"))
        .env("BPROC_SOCKET", c.dir().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is bpmaster running?"));
}
