//! Checkpoint and restore on one machine, without a cluster: a program dumps itself to a
//! file, and a new process restored from the file runs on from the call point.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;

use bproc_ckpt::restore::{restore, restore_in_place, RestoreSpec};

/// The examples, built now (a test does not make cargo build examples).
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    BUILT.call_once(|| {
        // In this test's own profile (its directory's name), where they are then run from.
        let profile = match dir.file_name().and_then(|d| d.to_str()) {
            Some("debug") | None => vec![],
            Some(p) => vec!["--profile", p],
        };
        let st = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "bproc-ckpt", "--examples"])
            .args(profile)
            .status()
            .expect("run cargo");
        assert!(st.success(), "building the bproc-ckpt examples failed");
    });
    dir.join("examples").join(name)
}

fn demo() -> PathBuf {
    example("ckpt_demo")
}

/// Runs the demo with `MIB` of data (and `extra` arguments) in a new directory; returns the
/// directory, the image's path and the demo's output.
fn run_demo(tag: &str, mib: &str, extra: &[&str]) -> (PathBuf, PathBuf, std::process::Output) {
    let dir = scratch(tag);
    let (image, data) = (dir.join("image"), dir.join("data"));
    std::fs::write(&data, "0123456789").unwrap();
    let out = Command::new(demo())
        .args([image.to_str().unwrap(), mib, data.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    (dir, image, out)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bproc-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_process_is_restored_whole_under_its_pid() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: restoring under the original pid (set_tid) needs root");
        return;
    }
    let (dir, image, out) = run_demo("whole", "64", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pid: i32 = stdout.strip_prefix("dumped ").unwrap().trim().parse().unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    assert!(size > 64 << 20, "the image holds the 64 MiB: {size} bytes");
    // The dump may grow the demo's trimmed heap: the image lists it up to the break it saved.
    let mut reader = bproc_image::ImageReader::open(std::fs::File::open(&image).unwrap()).unwrap();
    let h = reader.header().clone();
    let heap = h.regions.iter().find(|r| r.start <= h.mm.start_brk && h.mm.start_brk < r.end);
    assert!(
        heap.is_some_and(|r| r.end >= h.mm.brk.next_multiple_of(4096)),
        "heap {heap:?}, break {:#x}",
        h.mm.brk
    );
    assert!(size < 72 << 20, "the image leaves out the 64 MiB of zeros: {size} bytes");
    // A run of pages longer than a chunk is cut where a huge page starts (or a region does),
    // so a restore that reads the image as a stream finds each huge page whole in one chunk.
    let (mut buf, mut last, mut cuts) = (Vec::new(), None::<u64>, 0);
    while let Some((addr, data)) = reader.next_chunk(&mut buf).unwrap() {
        let region_starts = h.regions.iter().any(|r| r.start == addr);
        if last == Some(addr) && !region_starts {
            assert_eq!(addr % bproc_image::HUGE_PAGE, 0, "a run cut at {addr:#x}");
            cuts += 1;
        }
        last = Some(addr + data.len() as u64);
    }
    assert!(cuts >= 15, "the 64 MiB run in {cuts} cuts");

    let log = dir.join("out");
    let stdio: [Option<OwnedFd>; 3] = [
        Some(std::fs::File::open("/dev/null").unwrap().into()),
        Some(std::fs::File::create(&log).unwrap().into()),
        Some(std::fs::File::create(dir.join("err")).unwrap().into()),
    ];
    let spec =
        RestoreSpec { stdio, set_tid: Some(pid), identity: None, value: 1, ..Default::default() };
    let got = restore(std::fs::File::open(&image).unwrap(), spec).unwrap();
    assert_eq!(got, pid, "restored under the original pid");
    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(got), None).unwrap();
    let printed = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        st,
        nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(got), 42),
        "{printed}{}",
        std::fs::read_to_string(dir.join("err")).unwrap()
    );
    assert_eq!(
        printed,
        "value: ok\nmemory: ok\nzeros: ok\ntls: ok\nheap growth: ok\nhandler: ok\nmask: ok\nfile: ok\n\
         pid: ok\nclock: ok\nfork and exec: ok\nexe: ok\n"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Where the kernel gives no userfaultfd (here: told not to use one), a restore writes the
/// pages itself, on huge pages where they are asked for.
#[test]
fn a_restore_without_userfaultfd_writes_the_pages_itself() {
    let (dir, image, out) = run_demo("no-uffd", "64", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(example("ckpt_restore"))
        .arg(&image)
        .env("BPROC_NO_USERFAULTFD", "1")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("value: ok\nmemory: ok\nzeros: ok\ntls: ok\nheap growth: ok\n"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_process_becomes_the_image_in_place() {
    let (dir, image, out) = run_demo("in-place", "8", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(example("ckpt_restore"))
        .args(["--in-place", image.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    // In place the process keeps the restorer's pid, so the demo's check for its original
    // pid is the one line that differs; everything else came through.
    assert_eq!(
        printed,
        "value: ok\nmemory: ok\nzeros: ok\ntls: ok\nheap growth: ok\nhandler: ok\nmask: ok\nfile: ok\n\
         pid: WRONG\nclock: ok\nfork and exec: ok\nexe: ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
    let e = restore_in_place(&[b'x'; 4096][..], 1, None, &mut || Ok(()));
    assert_eq!(e.errno(), 22, "a bad image leaves the caller as it was: {e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_damaged_image_restores_nothing() {
    let (dir, image, out) = run_demo("damaged", "1", &[]);
    assert!(out.status.success());
    let mut bytes = std::fs::read(&image).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    let spec = RestoreSpec {
        stdio: [None, None, None],
        set_tid: None,
        identity: None,
        value: 1,
        ..Default::default()
    };
    let e = restore(bytes.as_slice(), spec).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_open_socket_is_refused_and_the_process_runs_on() {
    let (dir, image, out) = run_demo("socket", "1", &["socket"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.starts_with("refused: cannot move this process: fd "), "{stdout}");
    assert!(
        stdout.contains(": a connected Unix socket") && stdout.contains("(errno 16)"),
        "{stdout}"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 0, "nothing written");
    std::fs::remove_dir_all(dir).unwrap();
}
