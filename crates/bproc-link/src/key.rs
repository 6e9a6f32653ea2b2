//! The cluster key: 32 random bytes shared by the master and every slave, kept in a file that
//! only its owner may read.
//!
//! File format, one line: `bproc-key-v1 <64 hex digits>`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

const TAG: &str = "bproc-key-v1";

/// Errors reading or writing a key file.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file cannot be read or written.
    #[error("cluster key {}: cannot access it (create one with `bpmaster --keygen {}`)", path.display(), path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("cluster key {}: not a bproc key file (expected one line `{TAG} <64 hex digits>`)", .0.display())]
    Format(PathBuf),
    /// Others may read the file.
    #[error("cluster key {}: mode {mode:04o} lets others read it; run `chmod 600 {}`", path.display(), path.display())]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Refused to overwrite a key.
    #[error("cluster key {}: already exists; remove it first to make a new key", .0.display())]
    Exists(PathBuf),
}

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A fresh key from the kernel's random source.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the kernel's random source failed");
        ClusterKey(k)
    }

    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(text.trim()).ok_or_else(|| KeyError::Format(path.to_owned()))
    }

    fn parse(line: &str) -> Option<Self> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(line.strip_prefix(TAG)?.trim(), &mut k).ok()?;
        Some(ClusterKey(k))
    }

    /// Writes a new key to `path` with mode 0600, refusing to overwrite an existing file.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let key = Self::generate();
        let mut f =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(
                |source| {
                    if source.kind() == std::io::ErrorKind::AlreadyExists {
                        KeyError::Exists(path.to_owned())
                    } else {
                        KeyError::Io { path: path.to_owned(), source }
                    }
                },
            )?;
        writeln!(f, "{TAG} {}", hex::encode(key.0))
            .and_then(|_| f.sync_all())
            .map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_round_trips_and_is_private() {
        let dir = std::env::temp_dir().join(format!("bproc-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let _ = std::fs::remove_file(&path);
        let k = ClusterKey::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(ClusterKey::load(&path).unwrap().bytes(), k.bytes());
        assert!(matches!(ClusterKey::create(&path), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(ClusterKey::load(&path), Err(KeyError::Exposed { mode: 0o644, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_lines_are_rejected() {
        assert!(ClusterKey::parse("bproc-key-v1 abcd").is_none());
        assert!(ClusterKey::parse(&format!("other {}", "00".repeat(32))).is_none());
        assert!(ClusterKey::parse(&format!("bproc-key-v1 {}", "zz".repeat(32))).is_none());
        assert!(ClusterKey::parse(&format!("bproc-key-v1 {}", "0f".repeat(32))).is_some());
    }
}
