//! beoboot: the image a diskless node boots from the network, as Clustermatic's beoboot made
//! it. The image is a Linux kernel and an initramfs (a gzip'd newc cpio archive) holding:
//!
//! - `/init` ([`INIT`]), a busybox script: it loads the NIC drivers, takes an address by DHCP
//!   on the first interface that gets one and runs `bpslave --diskless` against the master
//!   named on the kernel command line (`bproc.master=IP:PORT`, which the boot server writes)
//!   or, failing that, the DHCP server;
//! - busybox (static, as Debian's `busybox-static` ships it) for the shell and its tools;
//! - `bpslave` and the shared libraries and loader it needs (found by [`bproc_stage`]);
//! - the NIC drivers and the modules they depend on ([`modules`]), in load order;
//! - the cluster key, if the image is to carry it (see the README for what that means on an
//!   untrusted boot network).
//!
//! A node booted this way has an empty root in RAM: its processes get their programs from
//! the launches that start them, as on `bpslave --diskless` nodes.
//!
//! The image file is a tar archive of the kernel (`kernel`), the initramfs (`initrd.gz`),
//! the kernel command line (`cmdline`) and the kernel release (`release`), so one file
//! (the configuration's `bootfile`) holds everything the boot server serves.
//!
//! ```no_run
//! use bproc_beoboot::{build, ImageSpec};
//! let mut spec = ImageSpec::for_kernel("/srv/kernel/boot/vmlinuz-6.1.0-57-cloud-amd64".as_ref());
//! spec.bpslave = "/usr/local/sbin/bpslave".into();
//! spec.key = Some("/etc/clustermatic/key".into());
//! build(&spec)?.write(std::path::Path::new("/var/clustermatic/boot.img"))?;
//! # Ok::<(), bproc_beoboot::BeobootError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod modules;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use thiserror::Error;

pub use modules::{Module, ModuleError, NIC_MODULES};

/// The node's `/init`.
pub const INIT: &str = include_str!("init.sh");
/// The script `udhcpc` runs on the node when it gets its lease.
pub const DHCP_SCRIPT: &str = include_str!("dhcp.sh");
/// The kernel command line an image starts with: the serial console, few kernel messages (a
/// serial console is slow, above all under emulation).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet";
/// The largest part of an image file that is read.
pub const MAX_PART: u64 = 1 << 30;

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The kernel (a `bzImage`, such as `/boot/vmlinuz-RELEASE`).
    pub kernel: PathBuf,
    /// Its release (`6.1.0-57-cloud-amd64`), which the modules must be built for.
    pub release: Option<String>,
    /// Its modules directory (`/lib/modules/RELEASE`).
    pub modules_dir: Option<PathBuf>,
    /// The modules to load (with what they depend on), default [`NIC_MODULES`].
    pub modules: Vec<String>,
    /// busybox, the node's shell and tools; static, or its libraries come along.
    pub busybox: PathBuf,
    /// The slave daemon.
    pub bpslave: PathBuf,
    /// The cluster key to put in the image (`None`: the node fetches it at boot, see
    /// `bootkey once`).
    pub key: Option<PathBuf>,
    /// Kernel arguments after [`DEFAULT_CMDLINE`].
    pub cmdline: Vec<String>,
}

impl ImageSpec {
    /// A spec for `kernel`: its release from its file name (`vmlinuz-RELEASE`), its modules
    /// from `../lib/modules/RELEASE` beside it (a kernel package unpacked with `dpkg-deb -x`)
    /// or else `/lib/modules/RELEASE`; `bpslave` from `PATH` is left for the caller to set.
    pub fn for_kernel(kernel: &Path) -> ImageSpec {
        let release = kernel_release(kernel);
        let modules_dir = release.as_ref().map(|r| {
            let beside = kernel
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("lib/modules").join(r))
                .filter(|d| d.is_dir());
            beside.unwrap_or_else(|| Path::new("/lib/modules").join(r))
        });
        ImageSpec {
            kernel: kernel.to_owned(),
            release,
            modules_dir,
            modules: NIC_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            busybox: "/bin/busybox".into(),
            bpslave: "bpslave".into(),
            key: None,
            cmdline: Vec::new(),
        }
    }

    /// A spec for the running kernel (`/boot/vmlinuz-$(uname -r)`).
    pub fn running() -> Result<ImageSpec, BeobootError> {
        let path = Path::new("/proc/sys/kernel/osrelease");
        let release = std::fs::read_to_string(path)
            .map_err(|source| BeobootError::Read { path: path.to_owned(), source })?;
        let kernel = Path::new("/boot").join(format!("vmlinuz-{}", release.trim()));
        if !kernel.is_file() {
            return Err(BeobootError::NoKernel(kernel));
        }
        Ok(ImageSpec::for_kernel(&kernel))
    }
}

/// The release in a kernel's file name: `vmlinuz-6.1.0-57-cloud-amd64` → `6.1.0-57-cloud-amd64`.
pub fn kernel_release(kernel: &Path) -> Option<String> {
    let name = kernel.file_name()?.to_str()?;
    let (_, release) = name.split_once('-')?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// Why an image could not be built, written or read.
#[derive(Debug, Error)]
pub enum BeobootError {
    /// A file that goes into the image cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The running kernel's image is not where it should be.
    #[error("no kernel image at {} (give one with --kernel, e.g. from a linux-image package unpacked with dpkg-deb -x)", .0.display())]
    NoKernel(PathBuf),
    /// The modules directory is unknown.
    #[error("cannot tell where the modules of {} are: name its directory (--modules DIR)", .0.display())]
    NoModulesDir(PathBuf),
    /// A program or one of its libraries cannot be gathered.
    #[error("cannot gather {} and its libraries", program.display())]
    Stage {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: bproc_stage::StageError,
    },
    /// The kernel modules cannot be gathered.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// The image cannot be written.
    #[error("cannot write the boot image {}", path.display())]
    Write {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a boot image.
    #[error("{}: not a beoboot image: {reason} (make one with beoboot)", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A built image: what the boot server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The kernel.
    pub kernel: Vec<u8>,
    /// The initramfs, gzip'd newc cpio.
    pub initrd: Vec<u8>,
    /// The kernel command line.
    pub cmdline: String,
    /// The kernel's release, if known.
    pub release: String,
}

/// The initramfs under construction: directories are added once, before what they hold.
struct Initramfs {
    entries: Vec<(cpio::NewcBuilder, Vec<u8>)>,
    dirs: BTreeSet<String>,
}

impl Initramfs {
    fn new() -> Initramfs {
        Initramfs { entries: Vec::new(), dirs: BTreeSet::new() }
    }

    /// Adds an entry (and its parent directories first); `finish` sets what the mode alone
    /// does not say (a device's numbers).
    fn push(
        &mut self,
        path: &str,
        mode: u32,
        data: Vec<u8>,
        finish: impl FnOnce(cpio::NewcBuilder) -> cpio::NewcBuilder,
    ) {
        let name = path.trim_start_matches('/').to_owned();
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        let ino = self.entries.len() as u32 + 1;
        let b = cpio::NewcBuilder::new(&name).ino(ino).mode(mode).nlink(1);
        self.entries.push((finish(b), data));
    }

    fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.dirs.insert(path.to_owned());
        self.push(path, 0o040_755, Vec::new(), |b| b);
    }

    fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.push(path, 0o100_000 | perm, data, |b| b);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.push(path, 0o120_777, target.as_bytes().to_vec(), |b| b);
    }

    /// A character device (`/dev/console`, which the kernel opens for init before any
    /// filesystem is mounted on `/dev`).
    fn chardev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.push(path, 0o020_000 | perm, Vec::new(), |b| b.rdev_major(major).rdev_minor(minor));
    }

    /// The archive, gzip'd.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        let mut out = GzEncoder::new(Vec::new(), flate2::Compression::default());
        for (b, data) in self.entries {
            let mut w = b.write(&mut out, data.len() as u32);
            w.write_all(&data)?;
            w.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        out.finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BeobootError> {
    std::fs::read(path).map_err(|source| BeobootError::Read { path: path.to_owned(), source })
}

/// An ELF file without its debugging sections (`.debug_*`), which a node never reads: a
/// debug build of bpslave is mostly debug information, and every byte of the image crosses
/// the boot network to every node. Anything else, or an ELF file `object` cannot rewrite,
/// stays as it is. (Also for programs sent to nodes booted from the network, which pay for
/// every byte twice: over the network and into a hash, under emulation in a test.)
pub fn strip_debug(bytes: Vec<u8>) -> Vec<u8> {
    let stripped = (|| {
        let mut elf = object::build::elf::Builder::read(&bytes[..]).ok()?;
        let mut any = false;
        for s in elf.sections.iter_mut() {
            if s.name.starts_with(b".debug") {
                s.delete = true;
                any = true;
            }
        }
        if !any {
            return None;
        }
        let mut out = Vec::new();
        elf.write(&mut out).ok()?;
        Some(out)
    })();
    stripped.unwrap_or(bytes)
}

/// A program and its libraries, each at its own path, without debugging sections.
fn add_program(fs: &mut Initramfs, program: &Path, at: &str) -> Result<(), BeobootError> {
    let stage = |source| BeobootError::Stage { program: program.to_owned(), source };
    for f in bproc_stage::closure(program, None).map_err(stage)? {
        let path = if f.path == program { at.to_owned() } else { f.path.display().to_string() };
        fs.file(&path, f.mode & 0o7777, strip_debug(read(&f.path)?));
    }
    Ok(())
}

/// Builds the image `spec` describes.
pub fn build(spec: &ImageSpec) -> Result<BootImage, BeobootError> {
    let kernel = read(&spec.kernel)?;
    let modules_dir =
        spec.modules_dir.clone().ok_or_else(|| BeobootError::NoModulesDir(spec.kernel.clone()))?;
    let modules = modules::resolve(&modules_dir, &spec.modules, spec.release.as_deref())?;
    let mut fs = Initramfs::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "root"] {
        fs.dir(d);
    }
    fs.chardev("/dev/console", 0o600, 5, 1);
    fs.file("/init", 0o755, INIT.as_bytes().to_vec());
    fs.file("/etc/beoboot/dhcp", 0o755, DHCP_SCRIPT.as_bytes().to_vec());
    add_program(&mut fs, &spec.busybox, "/bin/busybox")?;
    fs.symlink("/bin/sh", "busybox");
    add_program(&mut fs, &spec.bpslave, "/sbin/bpslave")?;
    let mut order = String::new();
    for m in modules {
        fs.file(&format!("/lib/modules/{}.ko", m.name), 0o644, m.bytes);
        order.push_str(&m.name);
        order.push('\n');
    }
    fs.file("/etc/beoboot/modules", 0o644, order.into_bytes());
    fs.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    fs.file("/etc/group", 0o644, b"root:x:0:\n".to_vec());
    if let Some(key) = &spec.key {
        fs.file("/etc/clustermatic/key", 0o600, read(key)?);
    }
    let initrd =
        fs.finish().map_err(|source| BeobootError::Write { path: "initramfs".into(), source })?;
    let mut cmdline = DEFAULT_CMDLINE.to_owned();
    for a in &spec.cmdline {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    Ok(BootImage { kernel, initrd, cmdline, release: spec.release.clone().unwrap_or_default() })
}

impl BootImage {
    /// Writes the image file (a tar archive; see the crate docs), replacing `path` only once
    /// it is complete.
    pub fn write(&self, path: &Path) -> Result<(), BeobootError> {
        let err = |source| BeobootError::Write { path: path.to_owned(), source };
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(err)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        for (name, data) in [
            ("kernel", &self.kernel[..]),
            ("initrd.gz", &self.initrd[..]),
            ("cmdline", self.cmdline.as_bytes()),
            ("release", self.release.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, data).map_err(err)?;
        }
        let mut w = tar.into_inner().map_err(err)?;
        w.flush().map_err(err)?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Reads an image file.
    pub fn read(path: &Path) -> Result<BootImage, BeobootError> {
        let bad = |reason: String| BeobootError::BadImage { path: path.to_owned(), reason };
        let file = std::fs::File::open(path)
            .map_err(|source| BeobootError::Read { path: path.to_owned(), source })?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let (mut kernel, mut initrd, mut cmdline, mut release) = (None, None, None, None);
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry.path().map_err(|e| bad(e.to_string()))?.display().to_string();
            let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
            if size > MAX_PART {
                return Err(bad(format!("{name} is larger than {MAX_PART} bytes")));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
            let text = || String::from_utf8_lossy(&data).trim().to_owned();
            match name.as_str() {
                "kernel" => kernel = Some(data),
                "initrd.gz" => initrd = Some(data),
                "cmdline" => cmdline = Some(text()),
                "release" => release = Some(text()),
                _ => {}
            }
        }
        Ok(BootImage {
            kernel: kernel.ok_or_else(|| bad("no kernel in it".into()))?,
            initrd: initrd.ok_or_else(|| bad("no initrd.gz in it".into()))?,
            cmdline: cmdline.unwrap_or_default(),
            release: release.unwrap_or_default(),
        })
    }
}
