//! The library list: `bplib` and its C calls, the configuration filling it, and process
//! images naming the files on it instead of carrying them.

use std::path::Path;

use bproc_image::{ImageReader, Source};
use bproc_testkit::{require_root, test_user, TestCluster};

use crate::bins;
use crate::capi::build_program;

/// How the image at `path` carries the mappings of files whose name ends with `suffix`:
/// `Some(true)` by reference, `Some(false)` by content, `None` when there are none.
fn by_reference(path: &Path, suffix: &str) -> Option<bool> {
    let r = ImageReader::open(std::fs::File::open(path).unwrap()).unwrap();
    let mut found = None;
    for reg in &r.header().regions {
        match &reg.source {
            Source::File { path, .. } if path.ends_with(suffix) => found = Some(true),
            Source::Copied { path } if path.ends_with(suffix) => return Some(false),
            _ => {}
        }
    }
    found
}

/// `bplib` lists what the configuration put on the list (the C library, through
/// `librariesfrombinary`), adds from arguments and stdin, deletes, clears; only root may
/// change the list; a refused change changes nothing. The C calls do the same.
#[test]
fn bplib_lists_and_changes_the_library_list() {
    if !require_root("checks that a second, unprivileged user cannot change the list") {
        return;
    }
    let c = TestCluster::up(&bins(), 1, "bplib");
    let list = c.cmd("bplib").arg("-l").ok();
    assert!(list.lines().any(|l| l.starts_with('/') && l.ends_with("/libc.so.6")), "{list}");
    c.cmd("bplib")
        .args(["-a", "/opt/a/liba.so", "-", "/opt/b/libb.so"])
        .stdin("/opt/c/libc1.so\n\n")
        .ok();
    let list = c.cmd("bplib").arg("-l").ok();
    for lib in ["/opt/a/liba.so", "/opt/b/libb.so", "/opt/c/libc1.so"] {
        assert!(list.lines().any(|l| l == lib), "{lib} missing from:\n{list}");
    }
    let out = c.cmd("bplib").args(["-d", "/opt/a/liba.so", "/opt/none.so"]).fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bproc_libdel") && err.contains("/opt/none.so"), "{err}");
    assert_eq!(c.cmd("bplib").arg("-l").ok(), list, "a refused delete changes nothing");
    let user = test_user();
    let out = c.cmd("bplib").as_user(&user).args(["-a", "/opt/d.so"]).fails();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only root"), "{out:?}");
    assert_eq!(c.cmd("bplib").as_user(&user).arg("-l").ok(), list, "anyone may list");
    let out = c.cmd("bplib").args(["-c", "/opt/a/liba.so"]).fails();
    assert!(String::from_utf8_lossy(&out.stderr).contains("No library names allowed"));
    c.cmd("bplib").args(["-d", "/opt/a/liba.so", "/opt/b/libb.so", "/opt/c/libc1.so"]).ok();
    assert_eq!(
        c.cmd("bplib").arg("-l").ok(),
        list.replace("/opt/a/liba.so\n", "")
            .replace("/opt/b/libb.so\n", "")
            .replace("/opt/c/libc1.so\n", "")
    );

    let Some((dir, exe)) = crate::capi::build_check_program("libs") else { return };
    let exe = exe.to_str().unwrap();
    let want = "libadd: 0 ok\nliblist: 0 ok\nlisted 1 of some\nlibdel: 0 ok\n\
                libdel again: -1 No such file or directory\n\
                libadd relative: -1 Invalid argument\n";
    assert_eq!(c.cmd(exe).args(["libs", "/opt/e/libe.so"]).ok(), want);
    let out = c.cmd(exe).as_user(&user).args(["libs", "/opt/e/libe.so"]).ok();
    assert!(
        out.starts_with("libadd: -1 Operation not permitted\nliblist: 0 ok\nlisted 0 of some\n"),
        "{out}"
    );
    c.cmd("bplib").arg("-c").ok();
    assert_eq!(c.cmd("bplib").arg("-l").ok(), "");
    let _ = std::fs::remove_dir_all(dir);
}

/// An image names the files on the list (the C library) and carries the others (libbproc,
/// the program); with the list cleared it carries the C library too.
#[test]
fn images_name_the_files_on_the_list() {
    let Some((dir, exe)) = build_program("dump_restore.c", "libs-dump") else { return };
    let c = TestCluster::up(&bins(), 1, "libs-dump");
    let dump = |image: &Path| {
        let out = c.cmd(exe.to_str().unwrap()).arg(image).ok();
        assert!(out.starts_with("dumped "), "{out}");
    };
    let (listed, cleared) = (dir.join("listed"), dir.join("cleared"));
    dump(&listed);
    assert_eq!(by_reference(&listed, "/libc.so.6"), Some(true));
    assert_eq!(by_reference(&listed, "/libbproc.so.4"), Some(false));
    assert_eq!(by_reference(&listed, "/dump_restore"), Some(false));
    c.cmd("bplib").arg("-c").ok();
    dump(&cleared);
    assert_eq!(by_reference(&cleared, "/libc.so.6"), Some(false));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&cleared) > size(&listed), "the C library is carried once off the list");
    let _ = std::fs::remove_dir_all(dir);
}
