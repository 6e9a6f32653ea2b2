//! `beoboot`: builds the boot image file that the boot server (`beoserv`) serves to nodes.
//!
//! ```text
//! beoboot -o /var/clustermatic/boot.img --kernel /srv/k/boot/vmlinuz-6.1.0-57-cloud-amd64 \
//!         --key /etc/clustermatic/key
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lexopt::prelude::*;

use crate::{build, BeobootError, ImageSpec};

const USAGE: &str = "Usage: beoboot -o FILE [options]
Builds a network boot image for diskless nodes: a kernel and an initramfs that loads the NIC
drivers, takes an address by DHCP and runs bpslave against the master.
  -o, --output FILE   write the image to FILE (the configuration's bootfile)
  -k, --kernel FILE   the kernel (default /boot/vmlinuz-RELEASE of the running kernel)
  -m, --modules DIR   its modules directory (default: lib/modules/RELEASE beside the kernel's
                      boot/ directory, else /lib/modules/RELEASE)
  --module NAME       also load module NAME (and what it needs); repeat for more
                      (default: the virtio network driver)
  --busybox FILE      busybox for the node's shell and tools (default /bin/busybox, from
                      Debian's busybox-static)
  --bpslave FILE      the slave daemon (default: beside beoboot, or in ../sbin)
  --key FILE          put the cluster key in the image: anyone who can fetch the image can
                      read it (without --key, nodes fetch it once per boot: `bootkey once`)
  --cmdline ARG       one more kernel argument; repeat for more
  -h, --help          print this message
  -V, --version       print the version
";

struct Args {
    output: Option<PathBuf>,
    kernel: Option<PathBuf>,
    modules_dir: Option<PathBuf>,
    modules: Vec<String>,
    busybox: Option<PathBuf>,
    bpslave: Option<PathBuf>,
    key: Option<PathBuf>,
    cmdline: Vec<String>,
}

fn parse(args: Vec<OsString>) -> Result<Option<Args>, lexopt::Error> {
    let mut a = Args {
        output: None,
        kernel: None,
        modules_dir: None,
        modules: Vec::new(),
        busybox: None,
        bpslave: None,
        key: None,
        cmdline: Vec::new(),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("beoboot version {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('o') | Long("output") => a.output = Some(p.value()?.into()),
            Short('k') | Long("kernel") => a.kernel = Some(p.value()?.into()),
            Short('m') | Long("modules") => a.modules_dir = Some(p.value()?.into()),
            Long("module") => a.modules.push(p.value()?.string()?),
            Long("busybox") => a.busybox = Some(p.value()?.into()),
            Long("bpslave") => a.bpslave = Some(p.value()?.into()),
            Long("key") => a.key = Some(p.value()?.into()),
            Long("cmdline") => a.cmdline.push(p.value()?.string()?),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Some(a))
}

/// bpslave beside this program (a build tree) or in `../sbin` (an installation).
fn default_bpslave() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent).unwrap_or(Path::new("."));
    let beside = dir.join("bpslave");
    let sbin = dir.join("../sbin/bpslave");
    if !beside.exists() && sbin.exists() {
        sbin
    } else {
        beside
    }
}

fn run(a: Args, output: &Path) -> Result<String, BeobootError> {
    let mut spec = match &a.kernel {
        Some(k) => ImageSpec::for_kernel(k),
        None => ImageSpec::running()?,
    };
    if a.modules_dir.is_some() {
        spec.modules_dir = a.modules_dir;
    }
    spec.modules.extend(a.modules);
    if let Some(b) = a.busybox {
        spec.busybox = b;
    }
    spec.bpslave = a.bpslave.unwrap_or_else(default_bpslave);
    spec.key = a.key;
    spec.cmdline = a.cmdline;
    let image = build(&spec)?;
    image.write(output)?;
    let mb = |n: usize| n as f64 / (1 << 20) as f64;
    Ok(format!(
        "beoboot: wrote {} (kernel {} {:.1} MiB, initramfs {:.1} MiB{})",
        output.display(),
        if image.release.is_empty() { "of unknown release" } else { &image.release },
        mb(image.kernel.len()),
        mb(image.initrd.len()),
        if spec.key.is_some() { ", with the cluster key" } else { "" }
    ))
}

/// Runs beoboot with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprint!("beoboot: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let Some(output) = a.output.clone() else {
        eprint!("beoboot: say where to write the image (-o FILE)\n{USAGE}");
        return ExitCode::FAILURE;
    };
    match run(a, &output) {
        Ok(report) => {
            eprintln!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("beoboot: {msg}");
            ExitCode::FAILURE
        }
    }
}
