//! Kernel modules for the initramfs: found by name under a kernel's modules directory
//! (`/lib/modules/RELEASE`), each with the modules it depends on, in load order.
//!
//! A module's dependencies are read from its own `.modinfo` section (`depends=a,b`), the
//! data `depmod` builds `modules.dep` from, so a kernel package unpacked with `dpkg-deb -x`
//! (which has no `modules.dep`: depmod runs when the package is installed) works as well as
//! an installed kernel. Modules the kernel has built in (`modules.builtin`) need no file. Each
//! module's `vermagic` must name the kernel release the image is for.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The virtio network driver and what it needs, as QEMU's `virtio-net-pci` NIC and the
/// Debian cloud kernel (which builds them as modules) want them.
pub const NIC_MODULES: &[&str] = &[
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// Why the modules could not be gathered.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// The modules directory cannot be read.
    #[error("cannot read the kernel modules directory {}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A module is neither a file under the directory nor built in.
    #[error("kernel module {name} (needed by {needed_by}) is not under {} nor built into the kernel (see --modules)", dir.display())]
    Missing {
        /// The module.
        name: String,
        /// Who asked for it: `the image` or another module.
        needed_by: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// A module file is compressed; the initramfs loads modules with a plain `insmod`.
    #[error("{}: compressed modules are not supported; give a modules directory with plain .ko files", .0.display())]
    Compressed(PathBuf),
    /// A module file cannot be read.
    #[error("cannot read kernel module {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A module file is not a kernel module.
    #[error("{}: not a kernel module (no .modinfo section)", .0.display())]
    NotModule(PathBuf),
    /// A module was built for another kernel.
    #[error("{}: built for kernel {found}, not {release}", path.display())]
    WrongKernel {
        /// The file.
        path: PathBuf,
        /// The release in its vermagic.
        found: String,
        /// The kernel the image is for.
        release: String,
    },
    /// Modules depend on each other in a circle.
    #[error("kernel modules depend on each other in a circle through {0}")]
    Cycle(String),
}

/// A module to put in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name, with `_` for `-` (`virtio_net`).
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// A module name as the kernel spells it: `-` and `_` are the same.
fn normal(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `dir`: name → path (compressed ones too, to say why they fail).
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ModuleError> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|source| ModuleError::Dir { dir: d.clone(), source })?;
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                stack.push(path);
            } else if let Some(stem) =
                [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().find_map(|ext| name.strip_suffix(ext))
            {
                // A plain .ko wins over a compressed copy of the same module.
                let plain = name.ends_with(".ko");
                found
                    .entry(normal(stem))
                    .and_modify(|p: &mut PathBuf| {
                        if plain {
                            *p = path.clone();
                        }
                    })
                    .or_insert(path);
            }
        }
    }
    Ok(found)
}

/// The modules `modules.builtin` lists (absent: none).
fn builtin(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l.trim()).file_name()?.to_str()?.strip_suffix(".ko").map(normal))
        .collect()
}

/// The `key=value` strings of a module's `.modinfo` section.
fn modinfo(path: &Path, bytes: &[u8]) -> Result<Vec<(String, String)>, ModuleError> {
    let elf =
        goblin::elf::Elf::parse(bytes).map_err(|_| ModuleError::NotModule(path.to_owned()))?;
    let section = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".modinfo"))
        .ok_or_else(|| ModuleError::NotModule(path.to_owned()))?;
    let start = usize::try_from(section.sh_offset).unwrap_or(usize::MAX);
    let data = start
        .checked_add(usize::try_from(section.sh_size).unwrap_or(usize::MAX))
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| ModuleError::NotModule(path.to_owned()))?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The modules named in `wanted`, found under `dir`, with everything they depend on, each
/// once and after its dependencies. `release` (when known) must match each module's vermagic.
pub fn resolve(
    dir: &Path,
    wanted: &[String],
    release: Option<&str>,
) -> Result<Vec<Module>, ModuleError> {
    let files = index(dir)?;
    let builtin = builtin(dir);
    let mut out: Vec<Module> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    // Depth-first, post-order: (name, who needs it, its dependencies pushed yet).
    for want in wanted {
        let mut stack: Vec<(String, String, Option<Module>)> =
            vec![(normal(want), "the image".to_owned(), None)];
        let mut on_path: Vec<String> = Vec::new();
        while let Some((name, needed_by, loaded)) = stack.pop() {
            if let Some(module) = loaded {
                on_path.retain(|n| *n != name);
                if done.insert(name) {
                    out.push(module);
                }
                continue;
            }
            if done.contains(&name) || builtin.contains(&name) {
                continue;
            }
            if on_path.contains(&name) {
                return Err(ModuleError::Cycle(name));
            }
            let path = files.get(&name).ok_or_else(|| ModuleError::Missing {
                name: name.clone(),
                needed_by: needed_by.clone(),
                dir: dir.to_owned(),
            })?;
            if !path.to_string_lossy().ends_with(".ko") {
                return Err(ModuleError::Compressed(path.clone()));
            }
            let bytes = std::fs::read(path)
                .map_err(|source| ModuleError::Read { path: path.clone(), source })?;
            let info = modinfo(path, &bytes)?;
            if let (Some(release), Some((_, magic))) =
                (release, info.iter().find(|(k, _)| k == "vermagic"))
            {
                let found = magic.split_whitespace().next().unwrap_or("");
                if found != release {
                    return Err(ModuleError::WrongKernel {
                        path: path.clone(),
                        found: found.to_owned(),
                        release: release.to_owned(),
                    });
                }
            }
            let deps: Vec<String> = info
                .iter()
                .filter(|(k, _)| k == "depends")
                .flat_map(|(_, v)| v.split(','))
                .filter(|d| !d.is_empty())
                .map(normal)
                .collect();
            on_path.push(name.clone());
            let module = Module { name: name.clone(), path: path.clone(), bytes };
            stack.push((name.clone(), needed_by, Some(module)));
            for d in deps.into_iter().rev() {
                stack.push((d, name.clone(), None));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal relocatable ELF holding a `.modinfo` section, as `gcc -c` would write it.
    fn fake_module(dir: &Path, rel: &str, modinfo: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let src = dir.join("m.c");
        let strings: String = modinfo
            .split(';')
            .enumerate()
            .map(|(i, kv)| {
                format!(
                    "__attribute__((section(\".modinfo\"), used)) static const char m{i}[] = \"{kv}\";\n"
                )
            })
            .collect();
        std::fs::write(&src, strings).unwrap();
        let st = std::process::Command::new("cc")
            .args(["-c", "-o"])
            .arg(&path)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn dependencies_come_first_and_builtins_are_skipped() {
        if std::process::Command::new("cc").arg("--version").output().is_err() {
            eprintln!("SKIPPED: no C compiler to build test modules");
            return;
        }
        let dir = std::env::temp_dir().join(format!("beoboot-mods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fake_module(&dir, "kernel/a/net-drv.ko", "depends=core,bus;vermagic=6.1.0-x SMP");
        fake_module(&dir, "kernel/b/core.ko", "depends=;vermagic=6.1.0-x SMP");
        fake_module(&dir, "kernel/b/bus.ko", "depends=core,ring;vermagic=6.1.0-x SMP");
        std::fs::write(dir.join("modules.builtin"), "kernel/c/ring.ko\n").unwrap();
        let names = |mods: Vec<Module>| mods.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let got = resolve(&dir, &["net_drv".into(), "core".into()], Some("6.1.0-x")).unwrap();
        assert_eq!(names(got), ["core", "bus", "net_drv"]);
        let e = resolve(&dir, &["net_drv".into()], Some("6.2.0")).unwrap_err();
        assert!(e.to_string().contains("built for kernel 6.1.0-x, not 6.2.0"), "{e}");
        let e = resolve(&dir, &["nic9".into()], None).unwrap_err();
        assert!(e.to_string().starts_with("kernel module nic9 (needed by the image)"), "{e}");
        fake_module(&dir, "kernel/d/loop1.ko", "depends=loop2");
        fake_module(&dir, "kernel/d/loop2.ko", "depends=loop1");
        assert!(matches!(resolve(&dir, &["loop1".into()], None), Err(ModuleError::Cycle(_))));
        std::fs::write(dir.join("kernel/d/zipped.ko.xz"), b"").unwrap();
        assert!(matches!(resolve(&dir, &["zipped".into()], None), Err(ModuleError::Compressed(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
