//! libbproc's C API, built as a C program with the system compiler against `sys/bproc.h`
//! and `libbproc.so.4` (and `libbproc.a` for a program run on a node), on a live cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use bproc_testkit::{require_root, test_user, TestCluster, TestCommand};

use crate::bins;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the library (the test binary does not depend on it) and the C program `src` (in
/// `tests/c/`) linked to it dynamically, in a directory nodes see too: (directory, program).
pub(crate) fn build_program(src: &str, tag: &str) -> Option<(PathBuf, PathBuf)> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler (cc) to build {src}");
        return None;
    }
    // A cargo build may take a while on a loaded machine.
    TestCommand::from(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "bproc-capi"])
            .args(bproc_testkit::cargo_profile())
            .current_dir(root()),
    )
    .timeout(600)
    .ok();
    let lib = bins();
    let dir = Path::new("/var/tmp").join(format!("bproc-capi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The program asks for the soname, as an installed library provides it.
    std::fs::copy(lib.join("libbproc.so"), dir.join("libbproc.so.4")).unwrap();
    let exe = dir.join(src.trim_end_matches(".c"));
    cc(&[
        c_flags(src),
        vec![
            "-o".into(),
            exe.clone().into(),
            "-L".into(),
            lib.into(),
            "-lbproc".into(),
            format!("-Wl,-rpath,{}", dir.display()).into(),
        ],
    ]
    .concat());
    Some((dir, exe))
}

/// Builds `src` (in `tests/c/`) as a shared object for LD_PRELOAD, in a directory every user
/// and every node can read.
pub(crate) fn build_preload(src: &str, tag: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler (cc) to build {src}");
        return None;
    }
    let dir = Path::new("/var/tmp").join(format!("bproc-preload-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let so = dir.join(src.trim_end_matches(".c")).with_extension("so");
    cc(&[c_flags(src), vec!["-shared".into(), "-fPIC".into(), "-o".into(), so.clone().into()]]
        .concat());
    Some(so)
}

fn c_flags(src: &str) -> Vec<std::ffi::OsString> {
    let include = root().join("crates/bproc-capi/include");
    let src = root().join("crates/bproc-bins/tests/c").join(src);
    vec!["-Wall".into(), "-Werror".into(), "-I".into(), include.into(), src.into()]
}

fn cc(args: &[std::ffi::OsString]) {
    let out = TestCommand::from(Command::new("cc").args(args)).output_of();
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The check program, linked dynamically: (directory, program).
pub(crate) fn build_check_program(tag: &str) -> Option<(PathBuf, PathBuf)> {
    build_program("libbproc_check.c", tag)
}

/// The check program, linked dynamically and statically.
fn build_check(tag: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let (dir, dynamic) = build_program("libbproc_check.c", tag)?;
    let fixed = dir.join("check-static");
    cc(&[
        c_flags("libbproc_check.c"),
        vec![
            "-o".into(),
            fixed.clone().into(),
            bins().join("libbproc.a").into(),
            "-lpthread".into(),
            "-ldl".into(),
            "-lm".into(),
            "-lrt".into(),
        ],
    ]
    .concat());
    Some((dir, dynamic, fixed))
}

/// Every implemented call, with its error cases, as root on the front end; as a user; and
/// on a node.
#[test]
fn c_programs_use_libbproc() {
    if !require_root("checks EPERM as a second, unprivileged user") {
        return;
    }
    let Some((dir, dynamic, fixed)) = build_check("use") else { return };
    let c = TestCluster::up(&bins(), 4, "capi");
    let out = c.cmd(dynamic.to_str().unwrap()).ok();
    let want = "\
numnodes 4 currnode -1
nodestatus 1: 3 ok
status up
nodestatus 99: -1 Invalid node number
nodestatus -1: -1 No data available
nodeinfo 2: 0 ok
info 2 up 111 0 0 127.0.1.2
nodeaddr 0: 0 ok
addr 127.0.1.0 size 16
nodelist 4
 0:up 1:up 2:up 3:up
nodefilter 1-2,0: 0 ok
 1 2 0
nodeset_append: 0 ok
append 6
nodespec allup: 0 ok
allup 4
nodespec bad: -1 Invalid argument
notifier ok
initially readable 1
nodelist_ 4
then readable 0
nodesetstatus 3: 0 ok
after a change readable 1
nodestatus 3: 6 ok
status maint
chmod 3: 0 ok
access 3: 0 ok
chmod bad bits: -1 Operation not permitted
strerror Node is down / No such file or directory
move -1: 0 ok
move 1: 0 ok
rfork 1: exited 7
";
    assert_eq!(out, want);
    let user = test_user();
    let out = c.cmd(dynamic.to_str().unwrap()).as_user(&user).arg("chmod").ok();
    assert_eq!(out, "chmod 1: -1 Operation not permitted\naccess 2: 0 ok\n");
    c.cmd("bpctl").args(["-S", "2", "-m", "0100"]).ok();
    let out = c.cmd(dynamic.to_str().unwrap()).as_user(&user).arg("chmod").ok();
    assert_eq!(out, "chmod 1: -1 Operation not permitted\naccess 2: -1 Operation not permitted\n");
    // On a node the library goes through the slave: it knows where it runs.
    let out = c.cmd("bpsh").args(["1", fixed.to_str().unwrap(), "where"]).ok();
    assert_eq!(out, "currnode 1\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// I/O lists (files on the node, connections back with BProc's pid/fd header, closed fds,
/// the front end's own rank), node attributes, `bproc_version` and `bproc_nodereconnect`.
#[test]
fn io_lists_attributes_and_version() {
    if !require_root("checks EPERM as a second, unprivileged user") {
        return;
    }
    let Some((dir, exe)) = build_program("io_lists.c", "io") else { return };
    let c = TestCluster::up(&bins(), 4, "capi-io");
    let out = c.cmd(exe.to_str().unwrap()).arg(&dir).ok();
    let version = env!("CARGO_PKG_VERSION");
    let proto = bproc_proto::VERSION;
    let want = format!(
        "\
sizeof bproc_io_t 280
vexecmove_io: 2 ok
connection: pid is a rank's 1, fd 1
connection: pid is a rank's 1, fd 1
fd 0 closed
fd 3 closed
rank 0000000
fd 0 closed
fd 3 closed
rank 0000001
exit 10 11
err: [err
err
]
five: [abcXYfgh]
vexecmove_io iolen 0: 1 ok
exit 6
ran: [ran
]
vexecmove_io refused: 1 ok
pid -111 Connection refused
vexecmove_io delayed: 1 ok
exit 4
vexecmove_io -1: 1 ok
exit 0
local: [local
]
iolen 17: -1 Invalid argument
iolen -2: -1 Invalid argument
memfile: -1 Operation not permitted
inet6: -1 Invalid argument
version: 0 ok
version BPr 62 {proto} {version}
nodereconnect 3: 0 ok
nodereconnect 99: -1 Invalid node number
nodereconnect inet6: -1 Invalid argument
setnodeattr 1 rack: 0 ok
getnodeattr 1 rack size 0: 2 ok
getnodeattr 1 rack size 1: -1 Numerical result out of range
getnodeattr 1 rack: 2 ok
rack [r7]
state [up]
addr [127.0.1.1]
getnodeattr 1 missing: -1 No data available
getnodeattr 99 rack: -1 Invalid node number
setnodeattr 1 addr: -1 Operation not permitted
setnodeattr 1 rack removed: 0 ok
getnodeattr 1 rack: -1 No data available
setnodeattr 2 rack: 0 ok
setnodeattr 2 state down: 0 ok
getnodeattr 2 rack: -1 No data available
"
    );
    assert_eq!(out, want);
    let out = c.cmd(exe.to_str().unwrap()).as_user(&test_user()).arg("user").ok();
    assert_eq!(out, "setnodeattr 1 rack: -1 Operation not permitted\n");
    // The reconnected node is still up, on its new connection.
    c.wait_state(3, "up", 10);
    let _ = std::fs::remove_dir_all(dir);
}

/// A C program checkpoints itself with `bproc_dump` (64 MiB of data, TLS, a handler) and a
/// new process restored from the file, under the original pid, runs on from the call.
#[test]
fn bproc_dump_restores_in_a_new_process() {
    if !require_root("restores under the original pid (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("dump_restore.c", "dump") else { return };
    let image = dir.join("image");
    let out = TestCommand::from(Command::new(&exe).arg(&image)).output_of();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let pid: i32 = stdout.strip_prefix("dumped ").unwrap().trim().parse().unwrap();
    let log = dir.join("out");
    let stdio = [
        Some(std::fs::File::open("/dev/null").unwrap().into()),
        Some(std::fs::File::create(&log).unwrap().into()),
        Some(std::fs::File::create(dir.join("err")).unwrap().into()),
    ];
    let spec = bproc_ckpt::restore::RestoreSpec {
        stdio,
        set_tid: Some(pid),
        identity: None,
        value: 1,
        ..Default::default()
    };
    let got = bproc_ckpt::restore::restore(std::fs::File::open(&image).unwrap(), spec).unwrap();
    assert_eq!(got, pid);
    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(got), None).unwrap();
    let printed = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(got), 42));
    assert_eq!(
        printed,
        "returns 1: ok\nmemory: ok\ntls: ok\nheap growth: ok\nhandler: ok\npid: ok\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `bproc_execdump` writes a program stopped before its first instruction; a process that
/// `bproc_undump`s the image becomes that program, from its start, with its arguments and
/// environment, as the same pid. A program that does not exist is the exec's error.
#[test]
fn execdump_images_start_the_program() {
    let Some((dir, exe)) = build_program("execdump.c", "execdump") else { return };
    let image = dir.join("image");
    let run = |mode: &str| {
        TestCommand::from(Command::new(&exe).args([mode, image.to_str().unwrap()])).output_of()
    };
    let out = run("dump");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dumped\n", "{out:?}");
    assert!(out.status.success());
    let out = run("undump");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pid: i32 =
        stdout.lines().next().unwrap().strip_prefix("undumping ").unwrap().parse().unwrap();
    assert_eq!(
        stdout,
        format!("undumping {pid}\nstarted hello as {pid} with 1 args: zero one\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
    let out = run("missing");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "execdump: No such file or directory\n");
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

/// The header declares exactly the functions the library exports.
#[test]
fn header_matches_the_library() {
    let Some((dir, _, _)) = build_check("header") else { return };
    let _ = std::fs::remove_dir_all(dir);
    let header =
        std::fs::read_to_string(root().join("crates/bproc-capi/include/sys/bproc.h")).unwrap();
    // Every prototype: statements (split at `;`) outside preprocessor lines and comments.
    let code: String = header
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("/*"))
        .filter(|l| !l.trim_start().starts_with('*'))
        .collect::<Vec<_>>()
        .join(" ");
    let mut declared: Vec<String> = code
        .split(';')
        .filter_map(|stmt| {
            let name = stmt.split('(').next()?.split_whitespace().last()?;
            let name = name.trim_start_matches('*');
            name.starts_with("bproc_").then(|| name.to_owned())
        })
        .collect();
    declared.sort();
    let nm =
        Command::new("nm").args(["-D", "--defined-only"]).arg(bins().join("libbproc.so")).output();
    let Ok(nm) = nm else {
        eprintln!("SKIPPED: no nm to list libbproc's symbols");
        return;
    };
    let mut exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("bproc_"))
        .map(str::to_owned)
        .collect();
    exported.sort();
    assert_eq!(declared, exported);
}

/// `scripts/install.sh` puts programs (daemons in sbin), library, headers, `bproc.pc` and the
/// systemd units under a prefix; a BProc-era program builds with pkg-config against it and
/// runs.
#[test]
fn installed_library_builds_old_programs() {
    if Command::new("pkg-config").arg("--version").output().is_err()
        || Command::new("cc").arg("--version").output().is_err()
    {
        eprintln!("SKIPPED: pkg-config or cc missing to build against the installed library");
        return;
    }
    let prefix = Path::new("/var/tmp").join(format!("bproc-install-{}", std::process::id()));
    let st = TestCommand::from(
        Command::new("bash")
            .arg(root().join("scripts/install.sh"))
            .arg(&prefix)
            .env("PROFILE", "debug"),
    )
    // Its cargo build may rebuild crates whose features differ from the tests' build.
    .timeout(600)
    .output_of()
    .status;
    assert!(st.success());
    for f in [
        "sbin/bpmaster",
        "sbin/bpslave",
        "bin/bpsh",
        "bin/bpcp",
        "bin/bpghost",
        "lib/systemd/system/bpslave.service",
        "lib/libbproc.so.4",
        "lib/libbproc.a",
        "include/sys/bproc.h",
        "share/man/man1/bpsh.1",
        "share/man/man3/libbproc.3",
        "share/man/man8/bpmaster.8",
    ] {
        assert!(prefix.join(f).exists(), "{f} installed");
    }
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/bpmaster.service")).unwrap();
    let exec =
        format!("ExecStart={}/sbin/bpmaster -c /etc/clustermatic/config\n", prefix.display());
    assert!(unit.contains(&exec), "{unit}");
    let flags = TestCommand::from(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "bproc"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
    )
    .output_of();
    assert!(flags.status.success());
    let flags = String::from_utf8(flags.stdout).unwrap();
    let build = |name: &str| {
        let prog = prefix.join(name);
        let out = TestCommand::from(
            Command::new("cc")
                .arg(root().join(format!("crates/bproc-bins/tests/c/{name}.c")))
                .args(flags.split_whitespace())
                .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
                .arg("-o")
                .arg(&prog),
        )
        .output_of();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        prog
    };
    let (lister, launcher) = (build("nodelist"), build("launcher"));
    let c = TestCluster::up(&bins(), 3, "capi-install");
    c.cmd("bpctl").args(["-S", "2", "-s", "down"]).ok();
    let out = c.cmd(lister.to_str().unwrap()).ok();
    assert_eq!(out, "3 nodes\n  0 up         x\n  1 up         x\n  2 down       -\n");
    // The launcher waits for its remote children through their ghosts; each exits 10 + rank,
    // and what it printed comes to the launcher's stdout with no I/O list (BProc's weak
    // forwarding), before its exit is seen.
    let out = c.cmd(launcher.to_str().unwrap()).ok();
    let _ = std::fs::remove_dir_all(&prefix);
    let (mut children, mut ranks): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| l.starts_with("child"));
    children.sort_unstable();
    ranks.sort_unstable();
    assert_eq!(children, ["child of rank 0", "child of rank 1"], "{out}");
    assert_eq!(ranks, ["rank 0 node 0 exit 10", "rank 1 node 1 exit 11"], "{out}");
}

/// A C program with 64 MiB of data moves itself to node 2, then node 3, then back to the
/// front end, and checks after each move its memory, TLS, heap growth, stdio, signal
/// handler, pid and node; its output comes through its ghost, in order.
#[test]
fn a_process_moves_to_nodes_and_back() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some(c) = journey(false) else { return };
    // Back on the front end, it is nobody's ghost: the process table is empty.
    let procs = bproc_client::Client::connect_to(&c.socket()).unwrap().procs().unwrap();
    assert!(procs.is_empty(), "{procs:?}");
}

/// The same journey to diskless nodes, whose empty root has none of the front end's files:
/// the probe finds none of them there, so the image carries them all, and the process runs
/// confined to the node's root.
#[test]
fn a_process_moves_to_diskless_nodes_and_back() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let _ = journey(true);
}

/// Runs `move.c` from the front end to nodes 2 and 3 and back, on a cluster of 4 nodes
/// (diskless or not), and checks what it reports; the cluster, for more checks (`None` when
/// there is no C compiler, which `build_program` reports).
fn journey(diskless: bool) -> Option<TestCluster> {
    let tag = if diskless { "move-diskless" } else { "move" };
    let (dir, exe) = build_program("move.c", tag)?;
    let mut spec = TestCluster::spec(&bins(), 4, tag);
    spec.diskless = diskless;
    let c = TestCluster::start(spec);
    let out = c.cmd(exe.to_str().unwrap()).args(["2", "3"]).exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (first, rest) = stdout.split_once('\n').unwrap();
    assert!(first.starts_with("pid ") && first.ends_with(" on node -1"), "{stdout}");
    assert_eq!(rest, "stdout from node 2\nstdout from node 3\nstdout from node -1\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, "stderr from node 2\nstderr from node 3\nstderr from node -1\n");
    let _ = std::fs::remove_dir_all(dir);
    Some(c)
}

/// `bproc_rfork` to 8 nodes, each child exiting with its rank, then `bproc_vrfork` to all 8:
/// every child a direct child of the caller, its output relayed by its ghost. The vrfork's
/// image goes down the launch tree (two children per node): only the first two nodes fetch
/// it from the caller, the others from their parents. The image names the program's file,
/// which the nodes have; run again from a copy only the front end has, every node's copy
/// carries the program's pages instead, whether from the caller or from its parent. A third
/// run, from the program again, fills the copies on nodes with children into the memory the
/// second run's copy left (a larger image), and sends them through pipes the earlier runs
/// left.
#[test]
fn rfork_and_vrfork_children_are_the_callers() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("rfork.c", "rfork") else { return };
    let mut spec = TestCluster::spec(&bins(), 8, "rfork");
    spec.extra_config = "launchfanout 2\n".into();
    let c = TestCluster::start(spec);
    let private = bproc_testkit::unique_dir("rfork-private");
    std::fs::create_dir_all(&private).unwrap();
    let copy = private.join("rfork");
    std::fs::copy(&exe, &copy).unwrap();
    for exe in [&exe, &copy, &exe] {
        let out = c.cmd(exe.to_str().unwrap()).arg("8").exits(42);
        let stdout = String::from_utf8(out.stdout).unwrap();
        for i in 0..8 {
            assert!(stdout.contains(&format!("rfork child {i} on node {i}\n")), "{stdout}");
            assert!(stdout.contains(&format!("vrfork child {i} on node {i}\n")), "{stdout}");
        }
        assert_eq!(stdout.lines().count(), 16, "{stdout}");
    }
    // Each node's log says once per vrfork where its image came from, and its size: a node
    // with children fetched a copy to share, a leaf restored its rank as the image came.
    let fetched = |n: usize| -> Vec<(u64, String)> {
        let log = std::fs::read_to_string(c.slave_log(n)).unwrap();
        log.lines()
            .filter_map(|l| {
                let (how, rest) = match l.split_once("fetched the process image (") {
                    Some((_, rest)) => ("copy", rest),
                    None => {
                        ("stream", l.split_once("restoring the process image as it comes (")?.1)
                    }
                };
                let (size, from) = rest.split_once(" bytes) from ")?;
                Some((size.parse().ok()?, format!("{how} from {from}")))
            })
            .collect()
    };
    let all: Vec<Vec<(u64, String)>> = (0..8).map(fetched).collect();
    let from = |who: &str| all.iter().flatten().filter(|(_, f)| f == who).count();
    let mover = from("copy from the mover");
    assert_eq!(mover, 6, "the first two nodes fetched it from the caller: {all:?}");
    let copies = from("copy from the parent node");
    assert_eq!(copies, 6, "the two others with children, from their parents: {all:?}");
    let streams = from("stream from the parent node");
    assert_eq!(streams, 12, "the four leaves restored it as it came from their parents: {all:?}");
    for (node, got) in all.iter().enumerate() {
        assert_eq!(got.len(), 3, "node {node}: {got:?}");
        assert!(
            got[1].0 > got[0].0 && got[2].0 < got[1].0,
            "node {node}: the program's pages came the second time only: {got:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(private);
}

/// A vector fork whose caller writes to /dev/null (a batch job's output) gives its children
/// /dev/null too and makes ghosts that relay nothing (no connection per child): each child
/// still runs on its node and ends with its own status, which its caller's `waitpid` gets
/// (the program exits 42 only then).
#[test]
fn a_vrfork_with_output_to_dev_null_relays_nothing() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("rfork.c", "rfork-quiet") else { return };
    let c = TestCluster::start(TestCluster::spec(&bins(), 4, "rfork-quiet"));
    let exe = exe.to_str().unwrap();
    c.cmd("/bin/sh").args(["-c", "exec \"$0\" 4 >/dev/null 2>&1", exe]).exits(42);
    // With its output kept, the same run relays it all.
    let out = c.cmd(exe).arg("4").exits(42);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 8);
    let _ = std::fs::remove_dir_all(dir);
}

/// A vector fork's children write, move on to another node, then back into their ghosts on
/// the front end, writing after each move: their ghosts (which share one address space until
/// a child comes back) relay every line, in order, and hand what they relay on when a child
/// comes back.
#[test]
fn vrfork_children_move_on_and_back_with_their_output() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("vrfork_journey.c", "vrfork-journey") else { return };
    let c = TestCluster::up(&bins(), 3, "vrfork-journey");
    let out = c.cmd(exe.to_str().unwrap()).args(["3", "10000"]).exits(42);
    // Each child's bytes, told apart by its alphabet, and decoded.
    let alphabets = ["ABCDEFGHIJ.", "KLMNOPQRST,", "abcdefghij;"];
    for (r, alphabet) in alphabets.iter().enumerate() {
        let mine: String = out
            .stdout
            .iter()
            .filter_map(|b| alphabet.find(char::from(*b)).map(|d| b"0123456789 "[d] as char))
            .collect();
        let got: Vec<&str> = mine.split_whitespace().collect();
        let mut want: Vec<String> = (0..20000).map(|k| k.to_string()).collect();
        want.insert(10000, (1000000 + (r + 1) % 3).to_string());
        want.push("2000000".into());
        assert!(got == want, "child {r}: {} numbers, last {:?}", got.len(), got.last());
    }
    assert!(
        out.stdout.iter().all(|b| alphabets.iter().any(|a| a.contains(char::from(*b)))),
        "nothing else on stdout"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A vector fork's children execute another program: their output goes on through their
/// ghosts, which execute themselves again with the relay and what it has yet to copy.
#[test]
fn vrfork_children_keep_their_output_across_an_exec() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("vrfork_exec.c", "vrfork-exec") else { return };
    let c = TestCluster::up(&bins(), 3, "vrfork-exec");
    let out = c.cmd(exe.to_str().unwrap()).arg("3").exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    for r in 0..3 {
        assert!(stdout.contains(&format!("child {r} before exec\n")), "{stdout}");
        assert!(stdout.contains(&format!("child {r} after exec\n")), "{stdout}");
    }
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A vector fork to diskless nodes, down a tree of two children per node: none has the
/// program or the C library the image names, so every copy carries their pages, from the
/// caller or from the parent node, and each child runs confined to its node's root.
#[test]
fn vrfork_reaches_diskless_nodes() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let Some((dir, exe)) = build_program("rfork.c", "rfork-diskless") else { return };
    let mut spec = TestCluster::spec(&bins(), 4, "rfork-diskless");
    spec.diskless = true;
    spec.extra_config = "launchfanout 2\n".into();
    let c = TestCluster::start(spec);
    let out = c.cmd(exe.to_str().unwrap()).arg("4").exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    for i in 0..4 {
        assert!(stdout.contains(&format!("vrfork child {i} on node {i}\n")), "{stdout}");
    }
    assert_eq!(stdout.lines().count(), 8, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 17, item 1: a process on a node (started by bpsh) vrforks to two other nodes, its own
/// node (a local fork) and the front end (refused from a node, `-EOPNOTSUPP`). The remote
/// children run, each with a ghost on the front end that its caller's ghost forked (so `ps
/// xf` shows them under it), their output reaches bpsh's stdout and stderr through those
/// ghosts, and the caller's `waitpid` gets each one's exit status (through its stand-in on
/// the caller's node, which also passes on a signal sent to it).
#[test]
fn a_process_on_a_node_rforks() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("node_rfork.c", "node_rfork") else { return };
    let c = TestCluster::up(&bins(), 3, "node-rfork");
    let mut run = c.cmd("bpsh").args(["1", exe.to_str().unwrap(), "2", "0"]).spawn();
    let started = ["child 0 on node 2", "child 1 on node 0", "child 2 on node 1"];
    while !started.iter().all(|l| run.out.iter().any(|o| o == l)) {
        run.wait_line(30, "the children's first lines", |n, l| n == 1 && started.contains(&l));
    }
    // The front end's tree: bpsh → the caller's ghost → the two children's ghosts.
    let children = |pid: i32| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let caller_ghost = children(run.pid());
    assert_eq!(caller_ghost.len(), 1, "bpsh's children: {caller_ghost:?}");
    // Two ghosts forked for the rforked children, one for the local fork on node 1, and two
    // for the remote children's stand-ins there (which the caller waits for).
    bproc_testkit::until(10, "five ghosts under the caller's", || {
        let named = |p: &i32| comm(*p) == "node_rfork\n";
        (children(caller_ghost[0]).iter().filter(|p| named(p)).count() == 5).then_some(())
    });
    let st = run.finish(60);
    assert_eq!(st.code(), Some(42), "stdout: {:?}\nstderr: {:?}", run.out, run.err);
    let mut out = run.out.clone();
    out.sort();
    assert_eq!(out, ["child 0 on node 2", "child 1 on node 0", "child 2 on node 1", "parent done"]);
    let mut err = run.err.clone();
    err.sort();
    assert_eq!(err, ["child 0 stderr", "child 1 stderr", "child 2 stderr"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Children that a process on a node vector-forks and that exit at once, before their
/// stand-ins ask how they ended, still give the caller's `waitpid` their statuses.
#[test]
fn a_node_rforks_children_that_end_at_once() {
    if !require_root("rforked children take their ghosts' pids (set_tid)") {
        return;
    }
    let Some((dir, exe)) = build_program("quick_rfork.c", "quick-rfork") else { return };
    let c = TestCluster::up(&bins(), 3, "quick-rfork");
    let out = c.cmd("bpsh").args(["1", exe.to_str().unwrap(), "2", "0", "2"]).output();
    assert_eq!(out.status.code(), Some(42), "{}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

/// A process with a pipe, then with an open socket, that asks for strictness is refused with
/// EBUSY and goes on where it was (a refused vector fork leaves no ghost behind); without the
/// flag the same process moves with a second thread, leaving its socket behind.
#[test]
fn what_cannot_move_is_refused_and_stays() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("refuse.c", "refuse") else { return };
    let c = TestCluster::up(&bins(), 2, "refuse");
    let out = c.cmd(exe.to_str().unwrap()).arg("1").exits(42);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "pipe: Device or resource busy, still on node -1\n\
         vrfork: Device or resource busy, no child left\n\
         socket: Device or resource busy, still on node -1\n\
         moved to node 1 as pid same, socket closed\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The same journey for a Rust program (`bproc_client::migrate`), then a `vrfork` to every node.
#[test]
fn a_rust_program_moves_and_vrforks() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    // A cargo build may take a while on a loaded machine.
    TestCommand::from(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "bproc-client", "--example", "wander"])
            .args(bproc_testkit::cargo_profile())
            .current_dir(root()),
    )
    .timeout(600)
    .ok();
    // A copy where nodes see it too (a checkout under /tmp is the front end's alone).
    let shared = Path::new("/var/tmp").join(format!("bproc-test-wander-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    let exe = shared.join("wander");
    std::fs::copy(bins().join("examples/wander"), &exe).unwrap();
    let c = TestCluster::up(&bins(), 4, "wander");
    let out = c.cmd(exe.to_str().unwrap()).args(["1", "3", "0", "1", "2", "3"]).exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (moves, children) = stdout.split_at(stdout.find("child").unwrap_or(stdout.len()));
    assert_eq!(moves, "on node 1\non node 3\non node -1\n");
    let mut children: Vec<&str> = children.lines().collect();
    children.sort_unstable();
    assert_eq!(
        children,
        ["child 0 on node 0", "child 1 on node 1", "child 2 on node 2", "child 3 on node 3"]
    );
    // The nodes have the program: the image names it.
    let probes = |node: usize| {
        let log = std::fs::read_to_string(c.slave_log(node)).unwrap();
        log.lines()
            .filter_map(|l| {
                let (_, rest) = l.rsplit_once(": ")?;
                let (found, rest) = rest.split_once(" of ")?;
                let asked = rest.strip_suffix(" files the image names are here")?;
                Some((found.parse::<usize>().ok()?, asked.parse::<usize>().ok()?))
            })
            .collect::<Vec<_>>()
    };
    let first = probes(1);
    assert!(!first.is_empty() && first.iter().all(|(f, a)| f == a), "{first:?}");
    // A copy in the front end's own /tmp, which nodes do not see, travels by content.
    let dir = bproc_testkit::unique_dir("wander-private");
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("wander");
    std::fs::copy(&exe, &private).unwrap();
    let out = c.cmd(private.to_str().unwrap()).args(["1", "3"]).exits(42);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "on node 1\non node 3\non node -1\n");
    let after = probes(1);
    assert!(after[first.len()..].iter().any(|(f, _)| *f == 0), "{after:?}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(shared);
}
