//! bpcp on live clusters: every direction and option, rcp's messages and exit status, the
//! caller's rights on nodes, interrupted copies, data that bypasses the master, broadcast and
//! gather, bpcp run on nodes, and the seed's examples verbatim.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bproc_testkit::{require_root, test_user, unique_dir, TestCluster, TestCommand};

use crate::bins;

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Node `i`'s view of `path` (its own /tmp when isolated), seen from the front end.
fn on_node(c: &TestCluster, i: usize, path: &str) -> PathBuf {
    let pid = c.slave_pid(i).expect("slave running");
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32 * 31 + seed as u32) as u8).collect()
}

fn master_bytes(c: &TestCluster) -> u64 {
    c.client().unwrap().master_info().unwrap().bytes_to_slaves
}

/// The seed article's examples, verbatim: `bpcp input.dat 2:/tmp`, `bpcp 2:/tmp/input.dat
/// 4:/tmp`, and `bpsh -a -p bpcp /tmp/myoutput` where only node 3 has the file.
#[test]
fn seed_examples_verbatim() {
    let c = TestCluster::up(&bins(), 5, "bpcp-seed");
    let dir = unique_dir("bpcp-seed-cwd");
    let data = pattern(300_000, 1);
    std::fs::write(dir.join("input.dat"), &data).unwrap();
    // bpcp resolves local paths against its working directory.
    let out = TestCommand::from(
        Command::new(bins().join("bpcp"))
            .args(["input.dat", "2:/tmp"])
            .current_dir(&dir)
            .env("BPROC_SOCKET", c.socket()),
    )
    .output_of();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(on_node(&c, 2, "/tmp/input.dat")).unwrap(), data);
    c.cmd("bpcp").args(["2:/tmp/input.dat", "4:/tmp"]).ok();
    assert_eq!(std::fs::read(on_node(&c, 4, "/tmp/input.dat")).unwrap(), data);

    let _ = std::fs::remove_file("/tmp/myoutput");
    c.cmd("bpsh").args(["3", "sh", "-c", "echo result of node 3 > /tmp/myoutput"]).ok();
    let out = c.cmd("bpsh").args(["-a", "-p", "bpcp", "/tmp/myoutput"]).output_of();
    let (o, e) = text(&out);
    let _ = std::fs::remove_dir_all(&dir);
    let got = std::fs::read_to_string("/tmp/myoutput");
    let _ = std::fs::remove_file("/tmp/myoutput");
    assert_eq!(o, "");
    let mut lines: Vec<&str> = e.lines().collect();
    lines.sort();
    let want: Vec<String> = [0, 1, 2, 4]
        .iter()
        .map(|n| format!("{n:3}: rcp: /tmp/myoutput: No such file or directory"))
        .collect();
    assert_eq!(lines, want, "{out:?}");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(got.unwrap(), "result of node 3\n");
}

/// Every direction, several sources, `-r` with links, `-p`, node names, and rcp's errors.
#[test]
fn directions_and_options() {
    let c = TestCluster::up(&bins(), 4, "bpcp-dir");
    let local = unique_dir("bpcp-dir-local");
    let a = local.join("a.bin");
    let data = pattern(5 << 20, 7);
    std::fs::write(&a, &data).unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let a = a.to_str().unwrap();

    // master → node: into a directory, and to a new name; node names of every form.
    for (spec, name) in
        [("1", "/tmp/x1"), ("n2", "/tmp/x2"), (".3", "/tmp/x3"), ("bob@0", "/tmp/x0")]
    {
        c.cmd("bpcp").args([a, &format!("{spec}:{name}")]).ok();
    }
    for (i, name) in [(1, "/tmp/x1"), (2, "/tmp/x2"), (3, "/tmp/x3"), (0, "/tmp/x0")] {
        assert_eq!(std::fs::read(on_node(&c, i, name)).unwrap(), data, "node {i}");
    }
    c.cmd("bpcp").args([a, "1:/tmp"]).ok();
    assert_eq!(std::fs::read(on_node(&c, 1, "/tmp/a.bin")).unwrap(), data);
    // Without -p a new file gets the source's mode under the umask, and a fresh mtime.
    let m = std::fs::metadata(on_node(&c, 1, "/tmp/a.bin")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o640 & !0o022);
    // node → node, node → master (master:, -1:).
    c.cmd("bpcp").args(["1:/tmp/a.bin", "2:/tmp/from1"]).ok();
    assert_eq!(std::fs::read(on_node(&c, 2, "/tmp/from1")).unwrap(), data);
    let back = local.join("back.bin");
    c.cmd("bpcp").args(["2:/tmp/from1", back.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // -p keeps mode and times.
    std::fs::set_permissions(&back, std::fs::Permissions::from_mode(0o604)).unwrap();
    TestCommand::new("touch").args(["-d", "2001-02-03 04:05:06", back.to_str().unwrap()]).ok();
    c.cmd("bpcp").args(["-p", back.to_str().unwrap(), "3:/tmp/kept"]).ok();
    let m = std::fs::metadata(on_node(&c, 3, "/tmp/kept")).unwrap();
    let src = std::fs::metadata(&back).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o604, src.mtime()));
    // Several sources into a directory, from two machines.
    c.cmd("bpsh").args(["0", "mkdir", "-p", "/tmp/many"]).ok();
    c.cmd("bpcp").args([a, back.to_str().unwrap(), "1:/tmp/x1", "0:/tmp/many"]).ok();
    for n in ["a.bin", "back.bin", "x1"] {
        assert_eq!(std::fs::read(on_node(&c, 0, &format!("/tmp/many/{n}"))).unwrap(), data, "{n}");
    }
    // -r: directories, nested files and symbolic links as links.
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("sub/deeper/f"), b"deep").unwrap();
    std::os::unix::fs::symlink("sub/deeper/f", tree.join("link")).unwrap();
    std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = c.cmd("bpcp").args([tree.to_str().unwrap(), "2:/tmp"]).fails();
    assert_eq!(text(&out).1, format!("rcp: {}: not a plain file\n", tree.display()));
    c.cmd("bpcp").args(["-rp", tree.to_str().unwrap(), "2:/tmp"]).ok();
    c.cmd("bpcp").args(["-r", "2:/tmp/tree", "3:/tmp/copy"]).ok();
    for i in [2, 3] {
        let root = on_node(&c, i, if i == 2 { "/tmp/tree" } else { "/tmp/copy" });
        assert_eq!(std::fs::read(root.join("sub/deeper/f")).unwrap(), b"deep");
        assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new("sub/deeper/f"));
    }
    let m = std::fs::metadata(on_node(&c, 2, "/tmp/tree/sub")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o750);
    // Errors: rcp's messages, one count each; the other sources still go.
    let out = c.cmd("bpcp").args(["/no/such", a, "1:/tmp/many-missing", "1:/tmp"]).output_of();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        text(&out).1,
        "rcp: /no/such: No such file or directory\nrcp: /tmp/many-missing: No such file or directory\n"
    );
    let out = c.cmd("bpcp").args([a, back.to_str().unwrap(), "1:/tmp/a.bin"]).fails();
    assert!(text(&out).1.contains("rcp: /tmp/a.bin: Not a directory"), "{out:?}");
    let out = c.cmd("bpcp").args([a, "3x:/tmp"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "bpcp: Invalid node number: 3x\n".into())
    );
    let out = c.cmd("bpcp").args([a, "unreachable:/tmp"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "bpcp: \"unreachable\" selects no node; nothing to copy\n".into())
    );
    // A word that is no state at all is named (issue "hardening", item 10).
    let out = c.cmd("bpcp").args([a, "booting:/tmp"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (
            Some(1),
            "bpcp: Invalid node number: booting: \"booting\" is not a node state (up, down, \
             boot, error, unreachable, unavailable, reboot, halt, pwroff, or one a node has now)\n"
                .into()
        )
    );
    let out = c.cmd("bpcp").args([a]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).0, "Usage: bpcp [-p] f1 f2\n       bpcp [-r] [-p] f1 ... fn directory\n");
    let out = c.cmd("bpcp").args(["-h"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "bpcp: invalid option -- 'h'\n".into())
    );
    // A local copy on the front end.
    c.cmd("bpcp").args([a, local.join("same").to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(local.join("same")).unwrap(), data);
    let _ = std::fs::remove_dir_all(&local);
}

/// Files on nodes are opened and created with the caller's rights; node modes apply.
#[test]
fn caller_rights_on_nodes() {
    if !require_root("copies as a second, unprivileged user") {
        return;
    }
    let user = test_user();
    let c = TestCluster::up(&bins(), 3, "bpcp-perm");
    c.cmd("bpsh")
        .args([
            "1",
            "sh",
            "-c",
            "echo secret > /tmp/secret; chmod 600 /tmp/secret; mkdir -m 755 /tmp/rootonly",
        ])
        .ok();
    let local = unique_dir("bpcp-perm-local");
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mine = local.join("mine");
    std::fs::write(&mine, b"mine\n").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mine = mine.to_str().unwrap();
    let stolen = local.join("stolen");
    let out =
        c.cmd("bpcp").as_user(&user).args(["1:/tmp/secret", stolen.to_str().unwrap()]).fails();
    assert_eq!(text(&out).1, "rcp: /tmp/secret: Permission denied\n");
    assert!(!stolen.exists());
    let out = c.cmd("bpcp").as_user(&user).args([mine, "1:/tmp/rootonly/"]).fails();
    assert_eq!(text(&out).1, "rcp: /tmp/rootonly/mine: Permission denied\n");
    c.cmd("bpcp").as_user(&user).args([mine, "1:/tmp/hers"]).ok();
    let m = std::fs::metadata(on_node(&c, 1, "/tmp/hers")).unwrap();
    assert_eq!((m.uid(), m.gid()), (user.uid, user.gid));
    // A file large enough to be sent from the file (sendfile), there by bpcp and back by the
    // node's daemon with the user's rights.
    let big = local.join("big");
    let data = pattern((1 << 20) + 7, 5);
    std::fs::write(&big, &data).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.cmd("bpcp").as_user(&user).args([big.to_str().unwrap(), "1:/tmp/herbig"]).ok();
    assert!(std::fs::read(on_node(&c, 1, "/tmp/herbig")).unwrap() == data);
    let back = local.join("back");
    c.cmd("bpcp").as_user(&user).args(["1:/tmp/herbig", back.to_str().unwrap()]).ok();
    assert!(std::fs::read(&back).unwrap() == data);
    assert_eq!(std::fs::metadata(&back).unwrap().uid(), user.uid);
    // A node that lets only its owner in.
    c.cmd("bpctl").args(["-S", "2", "-m", "0100"]).ok();
    let out = c.cmd("bpcp").as_user(&user).args([mine, "2:/tmp/"]).fails();
    assert_eq!(text(&out).1, "rcp: no execute permission on node 2 (mode 0100)\n");
    let _ = std::fs::remove_dir_all(&local);
}

/// A copy that cannot finish leaves the old file whole: a full disk on the node, and a
/// sender killed mid-file.
#[test]
fn interrupted_copy_keeps_the_old_file() {
    if !require_root("mounts a small filesystem on a node") {
        return;
    }
    let c = TestCluster::up(&bins(), 2, "bpcp-intr");
    let local = unique_dir("bpcp-intr-local");
    let big = local.join("big");
    std::fs::write(&big, pattern(64 << 20, 3)).unwrap();
    let big = big.to_str().unwrap();
    // Disk full: a 1 MiB filesystem holding the old file.
    c.cmd("bpsh")
        .args(["0", "sh", "-c", "mkdir /tmp/small && mount -t tmpfs -o size=1m tmpfs /tmp/small && echo old > /tmp/small/big"])
        .ok();
    let out = c.cmd("bpcp").args([big, "0:/tmp/small/"]).fails();
    assert_eq!(text(&out).1, "rcp: /tmp/small/big: No space left on device\n");
    let names: Vec<_> = std::fs::read_dir(on_node(&c, 0, "/tmp/small"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big"], "the partial file is removed");
    assert_eq!(std::fs::read(on_node(&c, 0, "/tmp/small/big")).unwrap(), b"old\n");

    // A killed sender: stop bpcp as soon as the node is writing the new file, then kill it.
    std::fs::write(on_node(&c, 1, "/tmp/big"), b"old\n").unwrap();
    let slave = c.slave_pid(1).unwrap();
    let node_tmp = Path::new("/tmp");
    let mut child = Command::new(bins().join("bpcp"))
        .args([big, "1:/tmp/big"])
        .env("BPROC_SOCKET", c.socket())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let whole = || std::fs::metadata(on_node(&c, 1, "/tmp/big")).is_ok_and(|m| m.len() == 64 << 20);
    let caught = wait_partial(slave, node_tmp, whole);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let finished_before_stop = !caught || held_in(slave, node_tmp).is_none();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    if finished_before_stop {
        // The copy won the race: it must then be complete.
        assert_eq!(std::fs::read(on_node(&c, 1, "/tmp/big")).unwrap().len(), 64 << 20);
    } else {
        let t0 = Instant::now();
        while held_in(slave, node_tmp).is_some() {
            assert!(t0.elapsed() < Duration::from_secs(20), "the partial file was not dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read(on_node(&c, 1, "/tmp/big")).unwrap(), b"old\n");
        let names = names_in(&on_node(&c, 1, "/tmp"));
        assert!(!names.iter().any(|n| n.contains("bpcp-")), "{names:?}");
    }
    let _ = std::fs::remove_dir_all(&local);
}

/// Node → node data goes straight between the nodes: neither the master daemon nor bpcp
/// carries it.
#[test]
fn node_to_node_bypasses_the_master() {
    let c = TestCluster::up(&bins(), 3, "bpcp-direct");
    let size = 32 << 20;
    std::fs::write(on_node(&c, 0, "/tmp/src"), pattern(size, 9)).unwrap();
    let before = master_bytes(&c);
    let out = c.cmd("bpcp").args(["--stats", "0:/tmp/src", "2:/tmp/dst"]).output_of();
    assert!(out.status.success(), "{out:?}");
    let sent = master_bytes(&c) - before;
    assert_eq!(std::fs::read(on_node(&c, 2, "/tmp/dst")).unwrap(), pattern(size, 9));
    assert!(sent < 64 << 10, "the master sent {sent} bytes to slaves for a {size}-byte copy");
    assert_eq!(
        text(&out).1,
        "bpcp: copy streams: 0 bytes sent, 0 bytes received by this process\n"
    );
}

/// Broadcast to 16 nodes (chain and tree) with each byte leaving bpcp once or twice; gather
/// one file per node, with per-node errors.
#[test]
fn broadcast_and_gather() {
    let c = TestCluster::up(&bins(), 16, "bpcp-bcast");
    let local = unique_dir("bpcp-bcast-local");
    let size = 3 << 20;
    let f = local.join("payload");
    std::fs::write(&f, pattern(size, 5)).unwrap();
    let f = f.to_str().unwrap();
    for (fanout, copies) in [("1", 1), ("2", 2)] {
        let out = c.cmd("bpcp").args(["--stats", "--fanout", fanout, f, "all:/tmp/"]).output_of();
        assert!(out.status.success(), "{out:?}");
        let sent: u64 = text(&out).1.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(
            sent >= (copies * size) as u64 && sent < (copies * size + 4096) as u64,
            "fanout {fanout}: {sent}"
        );
        for i in 0..16 {
            assert_eq!(
                std::fs::read(on_node(&c, i, "/tmp/payload")).unwrap(),
                pattern(size, 5),
                "node {i}"
            );
            std::fs::remove_file(on_node(&c, i, "/tmp/payload")).unwrap();
        }
    }
    // Gather: one file per node, NAME.N; nodes without the file say so.
    for i in 0..16 {
        if i != 7 {
            std::fs::write(on_node(&c, i, "/tmp/result"), format!("node {i}\n")).unwrap();
        }
    }
    let into = local.join("gathered");
    std::fs::create_dir(&into).unwrap();
    let out = c.cmd("bpcp").args(["n[0-15]:/tmp/result", into.to_str().unwrap()]).output_of();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out).1, "7: rcp: /tmp/result: No such file or directory\n");
    for i in 0..16 {
        let got = std::fs::read_to_string(into.join(format!("result.{i}")));
        if i == 7 {
            assert!(got.is_err());
        } else {
            assert_eq!(got.unwrap(), format!("node {i}\n"));
        }
    }
    let _ = std::fs::remove_dir_all(&local);
}

/// bpcp run on a node: to another node, to the master, and from the master.
#[test]
fn bpcp_on_a_node() {
    let c = TestCluster::up(&bins(), 3, "bpcp-onnode");
    let local = unique_dir("bpcp-onnode-local");
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(on_node(&c, 1, "/tmp/f"), b"from node 1\n").unwrap();
    c.cmd("bpsh").args(["1", "bpcp", "/tmp/f", "2:/tmp/g"]).ok();
    assert_eq!(std::fs::read(on_node(&c, 2, "/tmp/g")).unwrap(), b"from node 1\n");
    let dst = local.join("h");
    c.cmd("bpsh").args(["1", "bpcp", "/tmp/f", &format!("master:{}", dst.display())]).ok();
    assert_eq!(std::fs::read(&dst).unwrap(), b"from node 1\n");
    c.cmd("bpsh").args(["2", "bpcp", &format!("-1:{}", dst.display()), "/tmp/back"]).ok();
    assert_eq!(std::fs::read(on_node(&c, 2, "/tmp/back")).unwrap(), b"from node 1\n");
    let _ = std::fs::remove_dir_all(&local);
}

/// The largest file in `dir` that process `pid` holds open: a file being received (unnamed,
/// or under a temporary name). Its size.
fn held_in(pid: u32, dir: &Path) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|to| to.parent() == Some(dir)))
        .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.len()))
        .max()
}

/// Waits until `pid` holds a partly written file in `dir`; false if `done` holds first.
fn wait_partial(pid: u32, dir: &Path, done: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if held_in(pid, dir).is_some_and(|n| n > 0) {
            return true;
        }
        if done() {
            return false;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no file was being received in {dir:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A killed receiver leaves nothing behind: bpcp receiving on the front end, and a node's
/// slave receiving, each killed (SIGKILL) in the middle of a large file. Before, each left
/// its partial `.NAME.bpcp-XXXXXXXX` (5 of 5 tries).
#[test]
fn killed_receivers_leave_no_file() {
    if !require_root("kills a node's slave and reads the fds of its copy thread") {
        return;
    }
    let mut c = TestCluster::up(&bins(), 2, "bpcp-leftover");
    let size = 128 << 20;
    // Nodes see /var/tmp (their /tmp is their own).
    let shared = PathBuf::from(format!("/var/tmp/bproc-leftover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    std::fs::create_dir_all(shared.join("in")).unwrap();
    let big = shared.join("big");
    std::fs::write(&big, pattern(size, 4)).unwrap();

    // bpcp receives from node 1 into a local directory, and is killed mid-file.
    let local = unique_dir("bpcp-leftover-local");
    let mut tries = 0;
    loop {
        tries += 1;
        let mut child = Command::new(bins().join("bpcp"))
            .arg(format!("1:{}", big.display()))
            .arg(&local)
            .env("BPROC_SOCKET", c.socket())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let caught = wait_partial(child.id(), &local, || local.join("big").exists());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // Stopped, it can no longer finish: still partial means killed mid-file.
        let mid_file = caught && !local.join("big").exists();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        if mid_file {
            break;
        }
        assert!(tries < 3, "the copy finished before it could be killed, {tries} times");
        std::fs::remove_file(local.join("big")).unwrap();
    }
    assert_eq!(names_in(&local), Vec::<String>::new(), "bpcp left a file behind");

    // Node 1 receives a copy from the front end, and its slave is killed mid-file.
    let into = shared.join("in");
    let slave = c.slave_pid(1).unwrap();
    let mut child = Command::new(bins().join("bpcp"))
        .arg(&big)
        .arg(format!("1:{}/", into.display()))
        .env("BPROC_SOCKET", c.socket())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let caught = wait_partial(slave, &into, || into.join("big").exists());
    c.signal_slave(1, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mid_file = caught && !into.join("big").exists();
    c.signal_slave(1, nix::sys::signal::Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "bpcp did not end after the node died");
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = names_in(&into);
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_dir_all(&local);
    if mid_file {
        assert_eq!(left, Vec::<String>::new(), "the killed slave left a file behind");
    } else {
        eprintln!("note: the node finished its copy before it could be killed");
        assert_eq!(left, ["big"]);
    }
}

/// Makes `dir` hold what a write-through test needs: `null` (a private character device
/// with /dev/null's numbers, never the shared one), `fifo`, `real` holding "old" and
/// `llink` pointing to it.
fn special_files(dir: &Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    std::fs::create_dir_all(dir).unwrap();
    let null = dir.join("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
    nix::unistd::mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    std::fs::write(dir.join("real"), b"old\n").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("llink")).unwrap();
}

/// Checks `dir` after the write-through copies: every special file is still what it was, and
/// the link's file holds `data`.
fn check_special_files(dir: &Path, data: &[u8]) {
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::symlink_metadata(dir.join("null")).unwrap();
    assert!(null.file_type().is_char_device(), "null is no longer a device");
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(std::fs::symlink_metadata(dir.join("fifo")).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(dir.join("llink")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(dir.join("real")).unwrap(), data);
    assert_eq!(names_in(dir), ["fifo", "llink", "null", "real"]);
}

/// bpcp writes through what it must not replace, as rcp and cp do: a device and a FIFO are
/// written in place, a symbolic link's file is replaced. Before, `bpcp FILE N:/dev/null`
/// turned the node's /dev/null into a regular file, and `bpcp 1:/tmp/realfile llink`
/// replaced the link. Both receivers: a node, and bpcp on the front end.
#[test]
fn devices_fifos_and_links_are_written_through() {
    if !require_root("makes a private character device (mknod)") {
        return;
    }
    let c = TestCluster::up(&bins(), 2, "bpcp-through");
    let data = pattern(200_000, 6);
    // A node receives into /var/tmp, which nodes share with the front end (their own /tmp
    // does not allow devices).
    let shared = PathBuf::from(format!("/var/tmp/bproc-through-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    let remote = shared.join("remote");
    special_files(&remote);
    let src = shared.join("src");
    std::fs::write(&src, &data).unwrap();
    let src = src.to_str().unwrap();
    for name in ["null", "llink"] {
        c.cmd("bpcp").args([src, &format!("1:{}", remote.join(name).display())]).ok();
    }
    let mut cat = Command::new(bins().join("bpsh"))
        .args(["1", "cat"])
        .arg(remote.join("fifo"))
        .env("BPROC_SOCKET", c.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = cat.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    c.cmd("bpcp").args([src, &format!("1:{}", remote.join("fifo").display())]).ok();
    assert_eq!(reader.join().unwrap(), data, "what the node's FIFO passed on");
    assert!(cat.wait().unwrap().success());
    check_special_files(&remote, &data);

    // bpcp on the front end receives from node 1.
    let local = unique_dir("bpcp-through-local");
    special_files(&local);
    let from = format!("1:{src}");
    for name in ["null", "llink"] {
        c.cmd("bpcp").args([&from, local.join(name).to_str().unwrap()]).ok();
    }
    let fifo = local.join("fifo");
    let reader = std::thread::spawn(move || std::fs::read(fifo).unwrap());
    c.cmd("bpcp").args([&from, local.join("fifo").to_str().unwrap()]).ok();
    assert_eq!(reader.join().unwrap(), data, "what the local FIFO passed on");
    check_special_files(&local, &data);
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_dir_all(&local);
}
