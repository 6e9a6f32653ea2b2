//! bpcp on live clusters: every direction and option, rcp's messages and exit status, the
//! caller's rights on nodes, interrupted copies, data that bypasses the master, broadcast and
//! gather, bpcp run on nodes, and the seed's examples verbatim.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bproc_testkit::{require_root, test_user, unique_dir, TestCluster};

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
    match c.client().unwrap().request(&bproc::Message::MasterInfo).unwrap() {
        bproc::Message::MasterInfoReply { bytes_to_slaves, .. } => bytes_to_slaves,
        other => panic!("{other:?}"),
    }
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
    let out = Command::new(bins().join("bpcp"))
        .args(["input.dat", "2:/tmp"])
        .current_dir(&dir)
        .env("BPROC_SOCKET", c.socket())
        .output()
        .unwrap();
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
    Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06", back.to_str().unwrap()])
        .status()
        .unwrap();
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
    let out = c.cmd("bpcp").args([a, "booting:/tmp"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "bpcp: \"booting\" selects no node; nothing to copy\n".into())
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

    // A killed sender: stop bpcp as soon as the node holds the temporary file, then kill it.
    std::fs::write(on_node(&c, 1, "/tmp/big"), b"old\n").unwrap();
    let tmpdir = on_node(&c, 1, "/tmp");
    let mut child = Command::new(bins().join("bpcp"))
        .args([big, "1:/tmp/big"])
        .env("BPROC_SOCKET", c.socket())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let temp = loop {
        let found = std::fs::read_dir(&tmpdir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(".big.bpcp-"));
        if let Some(e) = found {
            break e.path();
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no temporary file appeared");
        std::thread::sleep(Duration::from_micros(200));
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let finished_before_stop = !temp.exists();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    if finished_before_stop {
        // The copy won the race: it must then be complete.
        assert_eq!(std::fs::read(on_node(&c, 1, "/tmp/big")).unwrap().len(), 64 << 20);
    } else {
        let t0 = Instant::now();
        while temp.exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "the partial file was not removed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read(on_node(&c, 1, "/tmp/big")).unwrap(), b"old\n");
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
