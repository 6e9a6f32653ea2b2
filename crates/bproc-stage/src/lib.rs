//! What a node without a disk needs in order to run a program, as BProc's diskless nodes got
//! it from the master: the program itself, the interpreter of a `#!` script, the ELF program
//! interpreter (`PT_INTERP`, the dynamic loader) and every shared library the program needs,
//! found the way `ld.so` finds them. Each file is identified by the SHA-256 of its content, so
//! a node that already holds it (from an earlier run) is sent nothing.
//!
//! Library search, per needed name and in `ld.so`'s order: the needing object's `DT_RPATH`
//! (only when it has no `DT_RUNPATH`), `LD_LIBRARY_PATH`, its `DT_RUNPATH`, the directories of
//! `/etc/ld.so.conf` (with its `include` globs; what `ldconfig` puts in the cache), then the
//! default directories. `$ORIGIN` is expanded. Files are read, never executed.
//!
//! Data files (Python's standard library, locale files) are not found this way, as on BProc:
//! stage them with the configuration's `libraries` lines.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A file to place on a node, at the same path as on the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Absolute path on the master, and on the node.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub hash: [u8; 32],
}

/// Why a program's files could not be gathered.
#[derive(Debug, Error)]
pub enum StageError {
    /// A file could not be read.
    #[error("{}: cannot read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A needed library was found nowhere.
    #[error("{}: needs {name}, which is not in any library directory (set LD_LIBRARY_PATH?)", needed_by.display())]
    Missing {
        /// The object that needs it.
        needed_by: PathBuf,
        /// The library name.
        name: String,
    },
    /// A `#!` line names no interpreter, or scripts nest too deeply.
    #[error("{}: bad or too deeply nested `#!` interpreter line", .0.display())]
    Script(PathBuf),
}

const DEFAULT_DIRS: &[&str] = &["/lib", "/usr/lib", "/lib64", "/usr/lib64"];

/// Reads `/etc/ld.so.conf`-style files: one directory per line, `include GLOB` lines followed.
fn conf_dirs(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        if let Some(pattern) = line.strip_prefix("include ") {
            if depth < 4 {
                for f in glob(pattern.trim(), path.parent().unwrap_or(Path::new("/"))) {
                    conf_dirs(&f, depth + 1, out);
                }
            }
        } else if !line.is_empty() {
            out.push(PathBuf::from(line));
        }
    }
}

/// The small glob `ld.so.conf` uses: `DIR/*.conf` (a `*` in the last component only).
fn glob(pattern: &str, base: &Path) -> Vec<PathBuf> {
    let p =
        if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base.join(pattern) };
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let (pre, post) = name.split_once('*').unwrap_or((name, ""));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        if name.contains('*') {
                            n.starts_with(pre)
                                && n.ends_with(post)
                                && n.len() >= pre.len() + post.len()
                        } else {
                            n == name
                        }
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn expand_origin(dir: &str, object: &Path) -> PathBuf {
    let origin = object.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned();
    PathBuf::from(dir.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
}

fn read(path: &Path) -> Result<Vec<u8>, StageError> {
    std::fs::read(path).map_err(|source| StageError::Read { path: path.to_owned(), source })
}

fn staged(path: &Path, bytes: &[u8]) -> Result<StagedFile, StageError> {
    let meta = std::fs::metadata(path)
        .map_err(|source| StageError::Read { path: path.to_owned(), source })?;
    Ok(StagedFile {
        path: path.to_owned(),
        mode: meta.permissions().mode() & 0o7777,
        size: bytes.len() as u64,
        hash: Sha256::digest(bytes).into(),
    })
}

/// Gathers `program` and everything it needs to run on a node with an empty filesystem.
/// `ld_library_path` is the caller's `LD_LIBRARY_PATH`, if any.
pub fn closure(
    program: &Path,
    ld_library_path: Option<&str>,
) -> Result<Vec<StagedFile>, StageError> {
    let mut conf = Vec::new();
    conf_dirs(Path::new("/etc/ld.so.conf"), 0, &mut conf);
    let env_dirs: Vec<PathBuf> = ld_library_path
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let mut files: BTreeMap<PathBuf, StagedFile> = BTreeMap::new();
    let mut queue: VecDeque<PathBuf> = VecDeque::from([program.to_owned()]);
    let mut scripts = 0;
    while let Some(path) = queue.pop_front() {
        if files.contains_key(&path) {
            continue;
        }
        let bytes = read(&path)?;
        files.insert(path.clone(), staged(&path, &bytes)?);
        if let Some(line) = bytes.strip_prefix(b"#!") {
            scripts += 1;
            let line = line.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let interp = String::from_utf8_lossy(line);
            let Some(interp) = interp.split_whitespace().next().filter(|i| i.starts_with('/'))
            else {
                return Err(StageError::Script(path));
            };
            if scripts > 4 {
                return Err(StageError::Script(path));
            }
            queue.push_back(PathBuf::from(interp));
            continue;
        }
        // Anything that is not ELF (a data file, a static blob) needs nothing more.
        let Ok(elf) = goblin::elf::Elf::parse(&bytes) else { continue };
        if let Some(interp) = elf.interpreter {
            queue.push_back(PathBuf::from(interp));
        }
        let rpath: Vec<PathBuf> = if elf.runpaths.is_empty() {
            elf.rpaths.iter().flat_map(|r| r.split(':')).map(|d| expand_origin(d, &path)).collect()
        } else {
            Vec::new()
        };
        let runpath: Vec<PathBuf> = elf
            .runpaths
            .iter()
            .flat_map(|r| r.split(':'))
            .map(|d| expand_origin(d, &path))
            .collect();
        for name in &elf.libraries {
            let found = if name.contains('/') {
                Some(PathBuf::from(name))
            } else {
                rpath
                    .iter()
                    .chain(&env_dirs)
                    .chain(&runpath)
                    .chain(&conf)
                    .chain(DEFAULT_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>().iter())
                    .map(|d| d.join(name))
                    .find(|c| c.is_file())
            };
            match found {
                Some(lib) => queue.push_back(lib),
                None => {
                    return Err(StageError::Missing {
                        needed_by: path.clone(),
                        name: name.to_string(),
                    })
                }
            }
        }
    }
    Ok(files.into_values().collect())
}

/// The files one `libraries` argument names: the file itself (a regular file stages whatever
/// its name, so a diskless node can be given `/etc/passwd`), every regular file under a
/// directory (its whole tree, which is how a diskless node gets Python's standard library),
/// or, for a glob (`*` in the last component), the same for each match. `Err` says why it
/// names nothing, for the configuration's warning.
///
/// BProc's rc script took only the `*.so*` files directly in each argument and skipped
/// missing ones without a word.
pub fn library_files(arg: &str) -> Result<Vec<PathBuf>, NamesNothing> {
    let matches =
        if arg.contains('*') { glob(arg, Path::new("/")) } else { vec![PathBuf::from(arg)] };
    if matches.is_empty() {
        return Err(NamesNothing::NoMatch);
    }
    let mut out = Vec::new();
    for m in matches {
        match std::fs::metadata(&m) {
            Ok(md) if md.is_file() => out.push(m),
            Ok(md) if md.is_dir() => tree(&m, &mut out),
            Ok(_) => {}
            Err(e) if arg.contains('*') => {
                return Err(NamesNothing::Match { path: m, kind: e.kind() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NamesNothing::Missing)
            }
            Err(e) => return Err(NamesNothing::Unreadable(e)),
        }
    }
    if out.is_empty() {
        return Err(NamesNothing::NoRegularFile);
    }
    Ok(out)
}

/// Why a `libraries` argument stages nothing (said after the argument in the
/// configuration's warning).
#[derive(Debug, Error)]
pub enum NamesNothing {
    /// A glob without a match.
    #[error("the pattern matches nothing")]
    NoMatch,
    /// A glob's match that cannot be read.
    #[error("{}: {kind}", path.display())]
    Match {
        /// The match.
        path: PathBuf,
        /// What the kernel said.
        kind: std::io::ErrorKind,
    },
    /// The named file is not there.
    #[error("no such file or directory")]
    Missing,
    /// The named file cannot be read.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    /// A directory without regular files.
    #[error("it holds no regular file")]
    NoRegularFile,
}

/// Every regular file under `dir`, sorted; symbolic links to files count as the files they
/// name, links to directories are not followed (no loops).
fn tree(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let Ok(link) = std::fs::symlink_metadata(&p) else { continue };
        if link.is_dir() {
            tree(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// The staged files of the configuration's `libraries` paths ([`library_files`]) and of the
/// programs of its `librariesfrombinary` lines (the libraries each needs, not the program).
pub fn config_files(
    libraries: &[PathBuf],
    from_binaries: &[PathBuf],
) -> Result<Vec<StagedFile>, StageError> {
    let mut files: BTreeMap<PathBuf, StagedFile> = BTreeMap::new();
    for p in libraries {
        let bytes = read(p)?;
        files.insert(p.clone(), staged(p, &bytes)?);
    }
    for bin in from_binaries {
        for f in closure(bin, None)? {
            if &f.path != bin {
                files.insert(f.path.clone(), f);
            }
        }
    }
    Ok(files.into_values().collect())
}

/// Lowercase hex of a content hash, as used for cache file names.
pub fn hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[StagedFile]) -> Vec<String> {
        files.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_dynamic_program_brings_its_loader_and_libraries() {
        let ls = Path::new("/bin/ls");
        let files = closure(ls, None).unwrap();
        let n = names(&files);
        assert!(n.iter().any(|f| f.starts_with("libc.so")), "{n:?}");
        assert!(n.iter().any(|f| f.starts_with("ld-linux")), "{n:?}");
        assert!(files.iter().any(|f| f.path == ls && f.mode & 0o111 != 0));
        let me = files.iter().find(|f| f.path == ls).unwrap();
        assert_eq!(me.size, std::fs::metadata(ls).unwrap().len());
        assert_eq!(hex(&me.hash).len(), 64);
    }

    #[test]
    fn a_script_brings_its_interpreter() {
        let dir = std::env::temp_dir().join(format!("bproc-stage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let files = closure(&script, None).unwrap();
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        assert!(
            paths.contains(&script.as_path()) && paths.contains(&Path::new("/bin/sh")),
            "{paths:?}"
        );
        assert!(names(&files).iter().any(|f| f.starts_with("libc.so")));
        std::fs::write(&script, "#!\n").unwrap();
        assert!(matches!(closure(&script, None), Err(StageError::Script(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn configuration_lines() {
        let files = config_files(&["/etc/hostname".into()], &["/bin/ls".into()]).unwrap();
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        assert!(paths.contains(&Path::new("/etc/hostname")), "{paths:?}");
        assert!(!paths.contains(&Path::new("/bin/ls")), "the binary itself is not a library");
        assert!(names(&files).iter().any(|f| f.starts_with("libc.so")), "{paths:?}");
    }

    /// Issue "hardening", item 14: a directory stages its tree; a path that names nothing
    /// says why (before, both were skipped without a word, and a directory gave only its
    /// `*.so*` files).
    #[test]
    fn library_arguments() {
        let dir = std::env::temp_dir().join(format!("bproc-stage-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg/sub")).unwrap();
        std::fs::write(dir.join("pkg/a.py"), "a").unwrap();
        std::fs::write(dir.join("pkg/sub/b.py"), "b").unwrap();
        std::os::unix::fs::symlink(dir.join("pkg"), dir.join("pkg/sub/loop")).unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        let d = dir.display();
        assert_eq!(
            library_files(&format!("{d}/pkg")).unwrap(),
            [dir.join("pkg/a.py"), dir.join("pkg/sub/b.py")]
        );
        assert_eq!(library_files(&format!("{d}/pk*")).unwrap().len(), 2);
        assert_eq!(library_files("/etc/hostname").unwrap(), [PathBuf::from("/etc/hostname")]);
        assert_eq!(
            library_files(&format!("{d}/nope")).unwrap_err().to_string(),
            "no such file or directory"
        );
        assert_eq!(
            library_files(&format!("{d}/x*")).unwrap_err().to_string(),
            "the pattern matches nothing"
        );
        assert_eq!(
            library_files(&format!("{d}/empty")).unwrap_err().to_string(),
            "it holds no regular file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ld_so_conf_globs() {
        let mut dirs = Vec::new();
        conf_dirs(Path::new("/etc/ld.so.conf"), 0, &mut dirs);
        // Debian lists the multiarch directory through an include.
        assert!(
            dirs.iter().any(|d| d.ends_with("x86_64-linux-gnu"))
                || cfg!(not(target_arch = "x86_64")),
            "{dirs:?}"
        );
        assert_eq!(
            expand_origin("$ORIGIN/../lib", Path::new("/opt/x/bin/p")),
            PathBuf::from("/opt/x/bin/../lib")
        );
    }
}
