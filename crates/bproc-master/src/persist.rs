//! The master's state file: what each connected node's session looks like (cookie, state,
//! mode, owner, group), so that a restarted master gives slaves that resume their session the
//! settings `bpctl` made, instead of booting them afresh.
//!
//! The file is JSON, replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash mid-write leaves the previous version.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One node's saved session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Session cookie the slave will present.
    pub cookie: u64,
    /// State string.
    pub state: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Attributes set with `bproc_setnodeattr`.
    #[serde(default)]
    pub attrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    nodes: BTreeMap<i32, Saved>,
}

/// Errors reading or writing the state file.
#[derive(Debug, Error)]
pub enum PersistError {
    /// I/O on the file.
    #[error("state file {}: cannot {op} it", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("state file {}: not valid ({detail}); move it aside to start with no saved sessions", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Reads the saved sessions; a missing file means none.
pub fn load(path: &Path) -> Result<BTreeMap<i32, Saved>, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(PersistError::Io { path: path.into(), op: "read", source }),
    };
    let f: File = serde_json::from_str(&text)
        .map_err(|e| PersistError::Format { path: path.into(), detail: e.to_string() })?;
    if f.version != 1 {
        return Err(PersistError::Format {
            path: path.into(),
            detail: format!("version {} is not 1", f.version),
        });
    }
    Ok(f.nodes)
}

/// Replaces the file atomically with `nodes`.
pub fn save(path: &Path, nodes: BTreeMap<i32, Saved>) -> Result<(), PersistError> {
    let io = |op, source| PersistError::Io { path: path.into(), op, source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(&File { version: 1, nodes }).expect("serializable");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.write_all(&text).and_then(|_| f.sync_all()).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replace", e))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = std::env::temp_dir().join(format!("bproc-persist-{}", std::process::id()));
        let path = dir.join("nodes.json");
        assert!(load(&path).unwrap().is_empty());
        let mut m = BTreeMap::new();
        m.insert(
            3,
            Saved {
                cookie: 42,
                state: "up".into(),
                mode: 0o100,
                uid: 1000,
                gid: 100,
                attrs: [("rack".to_owned(), b"r7".to_vec())].into(),
            },
        );
        save(&path, m.clone()).unwrap();
        assert_eq!(load(&path).unwrap(), m);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(load(&path), Err(PersistError::Format { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
