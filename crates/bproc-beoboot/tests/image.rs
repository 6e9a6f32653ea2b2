//! An image built from stand-ins (a fake kernel, a module compiled on the spot, `/bin/sh` as
//! busybox and `/bin/ls` as bpslave) holds what a node needs at the paths its init expects,
//! and reads back whole.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use bproc_beoboot::{build, BootImage, ImageSpec};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("beoboot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `boot/vmlinuz-REL` and `lib/modules/REL/kernel/drivers/net/nic.ko` (needing `ring`),
/// as `dpkg-deb -x` lays a kernel package out.
fn kernel_tree(root: &Path) -> Option<PathBuf> {
    let rel = "6.1.0-test";
    let kernel = root.join("boot").join(format!("vmlinuz-{rel}"));
    std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    std::fs::write(&kernel, b"not really a bzImage").unwrap();
    let mods = root.join("lib/modules").join(rel).join("kernel/drivers/net");
    std::fs::create_dir_all(&mods).unwrap();
    for (name, info) in [("nic", "depends=ring"), ("ring", "depends=")] {
        let src = root.join(format!("{name}.c"));
        std::fs::write(
            &src,
            format!(
                "__attribute__((section(\".modinfo\"), used)) static const char a[] = \"{info}\";\n\
                 __attribute__((section(\".modinfo\"), used)) static const char b[] = \"vermagic={rel} SMP\";\n"
            ),
        )
        .unwrap();
        let st = std::process::Command::new("cc")
            .arg("-c")
            .arg("-o")
            .arg(mods.join(format!("{name}.ko")))
            .arg(&src)
            .status()
            .ok()?;
        assert!(st.success());
    }
    Some(kernel)
}

/// The initramfs's entries: path → (mode, content).
fn entries(initrd: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut gz = flate2::read::GzDecoder::new(initrd);
    let mut cpio = Vec::new();
    gz.read_to_end(&mut cpio).unwrap();
    let mut out = BTreeMap::new();
    let mut rest = &cpio[..];
    loop {
        let mut r = cpio::NewcReader::new(rest).unwrap();
        if r.entry().is_trailer() {
            break;
        }
        let (name, mode) = (r.entry().name().to_owned(), r.entry().mode());
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        out.insert(name, (mode, data));
        rest = r.finish().unwrap();
    }
    out
}

#[test]
fn an_image_holds_what_the_node_needs() {
    let dir = scratch("image");
    let Some(kernel) = kernel_tree(&dir) else {
        eprintln!("SKIPPED: no C compiler to build a test module");
        return;
    };
    std::fs::write(dir.join("key"), b"0123456789abcdef").unwrap();
    let mut spec = ImageSpec::for_kernel(&kernel);
    assert_eq!(spec.release.as_deref(), Some("6.1.0-test"));
    assert_eq!(spec.modules_dir.as_deref(), Some(dir.join("lib/modules/6.1.0-test").as_path()));
    spec.modules = vec!["nic".into()];
    spec.busybox = "/bin/sh".into();
    spec.bpslave = "/bin/ls".into();
    spec.key = Some(dir.join("key"));
    spec.cmdline = vec!["bproc.verbose=1".into()];
    let image = build(&spec).unwrap();
    let path = dir.join("boot.img");
    image.write(&path).unwrap();
    let back = BootImage::read(&path).unwrap();
    assert_eq!(back, image);
    assert_eq!(back.cmdline, "console=ttyS0 quiet bproc.verbose=1");
    assert_eq!(back.release, "6.1.0-test");

    let files = entries(&back.initrd);
    let file = |p: &str| files.get(p).unwrap_or_else(|| panic!("{p} missing: {:?}", files.keys()));
    assert_eq!(file("init").1, bproc_beoboot::INIT.as_bytes());
    assert_eq!(file("init").0 & 0o777, 0o755);
    assert_eq!(file("dev/console").0 & 0o170000, 0o020000, "a character device");
    assert_eq!(file("bin/sh").1, b"busybox", "a symbolic link to busybox");
    assert!(files.contains_key("bin/busybox") && files.contains_key("sbin/bpslave"));
    assert!(files.keys().any(|k| k.ends_with("/libc.so.6")), "{:?}", files.keys());
    // Dependencies first, in the order init loads them.
    assert_eq!(file("etc/beoboot/modules").1, b"ring\nnic\n");
    assert!(files.contains_key("lib/modules/nic.ko") && files.contains_key("lib/modules/ring.ko"));
    assert_eq!(file("etc/clustermatic/key"), &(0o100600, b"0123456789abcdef".to_vec()));
    // Directories come before what they hold.
    let order: Vec<&String> = files.keys().collect();
    assert!(order.iter().any(|k| *k == "etc/clustermatic"));

    // Without a key, none in the image.
    spec.key = None;
    let files = entries(&build(&spec).unwrap().initrd);
    assert!(!files.contains_key("etc/clustermatic/key"));

    // Not an image: said so, naming the file.
    let e = BootImage::read(&dir.join("key")).unwrap_err().to_string();
    assert!(e.contains("not a beoboot image"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
