//! Every client against a master that does not answer, or whose socket it may not use: each
//! says what is wrong within a bounded time instead of waiting or guessing.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use bproc_testkit::{unique_dir, TestCommand};

use crate::bins;

/// The client invocations checked: each needs an answer from the master first.
fn clients(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    let file = dir.join("f").display().to_string();
    std::fs::write(&file, "x").unwrap();
    vec![
        ("bpstat", vec![]),
        ("bpstat", vec!["-U".into()]),
        ("bpctl", vec!["-S".into(), "0".into(), "-s".into(), "up".into()]),
        ("bpsh", vec!["0".into(), "true".into()]),
        ("bpcp", vec![file, "0:/tmp".into()]),
        ("bplib", vec!["-l".into()]),
    ]
}

/// Runs each client with `BPROC_TIMEOUT=1` against `socket` and checks it fails within a few
/// seconds saying `says`.
fn each_fails_within_its_limit(socket: &Path, dir: &Path, says: &str) {
    for (prog, args) in clients(dir) {
        let out = TestCommand::new(bins().join(prog))
            .args(&args)
            .env("BPROC_SOCKET", socket)
            .env("BPROC_TIMEOUT", "1")
            .timeout(10)
            .fails();
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("bpmaster at {} did not {says} within 1 s", socket.display());
        assert!(err.contains(&want), "{prog} {args:?}: {err}");
        assert!(err.contains("BPROC_TIMEOUT"), "{prog}: {err}");
    }
}

/// Issue "hardening", item 5: a master that accepts connections and never answers. Before,
/// bpstat and bpcluster waited for it forever (10 minutes were seen, until the master's own
/// idle close).
#[test]
fn clients_give_up_on_a_master_that_never_answers() {
    let dir = unique_dir("silent-master");
    let socket = dir.join("master.sock");
    let l = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    each_fails_within_its_limit(&socket, &dir, "answer");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 5: a master that stopped accepting (its queue full): a blocking connect would wait
/// forever.
#[test]
fn clients_give_up_on_a_master_that_accepts_nothing() {
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let dir = unique_dir("full-master");
    let socket_path: PathBuf = dir.join("master.sock");
    let addr = UnixAddr::new(&socket_path).unwrap();
    let l = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(l.as_raw_fd(), &addr).unwrap();
    listen(&l, Backlog::new(0).unwrap()).unwrap();
    // Fill the queue (a backlog of 0 takes one connection).
    let mut fillers = Vec::new();
    loop {
        let c = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let full = connect(c.as_raw_fd(), &addr).is_err();
        fillers.push(c);
        if full {
            break;
        }
    }
    each_fails_within_its_limit(&socket_path, &dir, "accept the connection");
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue "hardening", item 13: a socket this user may not connect to (here, in a directory
/// only root may enter) is said so, not taken for a missing master ("is bpmaster running?").
#[test]
fn a_socket_the_user_may_not_use_is_named() {
    if !bproc_testkit::require_root("runs the clients as a second, unprivileged user") {
        return;
    }
    let user = bproc_testkit::test_user();
    let dir = unique_dir("denied-socket");
    let inner = dir.join("private");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = inner.join("master.sock");
    let _l = UnixListener::bind(&socket).unwrap();
    for prog in ["bpstat", "bpctl", "bpsh"] {
        let args: &[&str] = match prog {
            "bpctl" => &["-S", "0", "-s", "up"],
            "bpsh" => &["0", "true"],
            _ => &[],
        };
        let out = TestCommand::new(bins().join(prog))
            .args(args)
            .env("BPROC_SOCKET", &socket)
            .as_user(&user)
            .fails();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "{prog}: no permission to connect to bpmaster's socket {} (the socket or a \
                 directory above it does not let this user in; ask the administrator, or set \
                 BPROC_SOCKET to a socket you may use)\n",
                socket.display()
            )
        );
    }
    // No socket at all is still a master that is not running.
    let out = TestCommand::new(bins().join("bpstat"))
        .env("BPROC_SOCKET", dir.join("none.sock"))
        .as_user(&user)
        .fails();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is bpmaster running?"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
