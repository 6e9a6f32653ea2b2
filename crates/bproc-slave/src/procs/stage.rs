//! A diskless node's staged files: fetched (from the parent node in the launch tree, else
//! from the launcher) into the node's cache, checked against their hashes, and linked into
//! the node's root.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bproc_proto::conn::FETCH as FETCH_FD;
use bproc_proto::{ProcSpec, StagedRef};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::info;

use super::io::open_to_launcher;
use crate::isolate::Diskless;

/// Why a staged file is not in place; each names the file (its path on the launcher's
/// machine). The I/O error is part of the message, which goes to the launcher as is.
#[derive(Debug, Error)]
pub enum StageError {
    /// The launcher's file server could not be reached: is the launcher still running?
    #[error("{path}: cannot fetch it from the launcher: {error} (the launcher must be running and reachable from this node)")]
    Connect {
        /// The file.
        path: String,
        /// What the connection said.
        error: std::io::Error,
    },
    /// The launcher did not send the file whole.
    #[error("{path}: from the launcher: {error} (launch again)")]
    Fetch {
        /// The file.
        path: String,
        /// What the transfer said.
        error: std::io::Error,
    },
    /// What arrived is not the content the launch names (the file changed on the launcher's
    /// machine since the launch started).
    #[error(
        "{path}: content does not match its hash (it changed during the launch: launch again)"
    )]
    Hash {
        /// The file.
        path: String,
    },
    /// The node's cache could not take it (full, or read-only).
    #[error("{path}: cannot cache it: {error} (check the node's cache {})", cache.display())]
    Cache {
        /// The file.
        path: String,
        /// The node's cache.
        cache: std::path::PathBuf,
        /// What the cache's filesystem said.
        error: std::io::Error,
    },
    /// It could not be linked into the node's root.
    #[error("{path}: cannot install it: {error} (check the node's root {})", root.display())]
    Install {
        /// The file.
        path: String,
        /// The node's root.
        root: std::path::PathBuf,
        /// What the root's filesystem said.
        error: std::io::Error,
    },
}

impl StageError {
    /// `f` could not be written to `d`'s cache.
    fn cache(f: &StagedRef, d: &Diskless, error: std::io::Error) -> Self {
        StageError::Cache { path: f.path.clone(), cache: d.cache.clone(), error }
    }

    /// `f` could not be linked into `d`'s root.
    fn install(f: &StagedRef, d: &Diskless, error: std::io::Error) -> Self {
        StageError::Install { path: f.path.clone(), root: d.root.clone(), error }
    }
}

/// Where a diskless node fetches the staged files its cache lacks.
#[derive(Clone)]
pub enum Source {
    /// The launcher (or the master's file server), at the spec's io address.
    Launcher,
    /// The node that passed this launch on, over the tree connection: each node fetches from
    /// its parent, so a program crosses each tree edge once, not once per node from the
    /// launcher.
    Parent(Arc<TreeConn>),
}

/// A tree connection shared by the fetches of a launch's subtree. One made
/// [`TreeConn::returning`] goes back, once the last of them is done with it, to whoever
/// reads the parent's parts, so that the next part can come over it.
pub struct TreeConn {
    /// The connection, taken by one fetch at a time.
    stream: Option<Arc<tokio::sync::Mutex<TcpStream>>>,
    /// Where it goes back to, with whether the parent was told the subtree fetches nothing
    /// more.
    back: Option<tokio::sync::oneshot::Sender<(TcpStream, bool)>>,
    /// The parent was told (with the image request, [`super::FETCHES_DONE`]).
    told: std::sync::atomic::AtomicBool,
}

impl TreeConn {
    /// A connection shared until its subtree is done, then closed.
    pub fn new(s: TcpStream) -> Arc<TreeConn> {
        let stream = Some(Arc::new(tokio::sync::Mutex::new(s)));
        Arc::new(TreeConn { stream, back: None, told: Default::default() })
    }

    /// A connection shared until its subtree is done, then given back through the receiver
    /// (which gets nothing if a fetch still held it then), with whether the parent was told
    /// that the subtree fetches nothing more.
    pub fn returning(
        s: TcpStream,
    ) -> (Arc<TreeConn>, tokio::sync::oneshot::Receiver<(TcpStream, bool)>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stream = Some(Arc::new(tokio::sync::Mutex::new(s)));
        (Arc::new(TreeConn { stream, back: Some(tx), told: Default::default() }), rx)
    }

    /// The connection, for a fetch to take.
    pub fn stream(&self) -> &Arc<tokio::sync::Mutex<TcpStream>> {
        self.stream.as_ref().expect("present until dropped")
    }

    /// Whether the connection goes back for the parent's next part once its subtree is done:
    /// then the subtree's one fetch, the image's, may say at once that it is the last.
    pub fn returns(&self) -> bool {
        self.back.is_some()
    }

    /// Notes that the parent was told the subtree fetches nothing more.
    pub fn told(&self) {
        self.told.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for TreeConn {
    fn drop(&mut self) {
        if let (Some(s), Some(back)) = (self.stream.take(), self.back.take()) {
            if let Ok(s) = Arc::try_unwrap(s) {
                let told = self.told.load(std::sync::atomic::Ordering::Relaxed);
                let _ = back.send((s.into_inner(), told));
            }
        }
    }
}

/// One fetch of each content at a time, so a file wanted by several ranks or children is
/// fetched once.
static FETCHING: Mutex<Option<FetchLocks>> = Mutex::new(None);

/// A lock per content hash.
type FetchLocks = HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>;

async fn fetch(
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<Vec<u8>, StageError> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    async fn exchange(s: &mut TcpStream, f: &StagedRef) -> std::io::Result<Vec<u8>> {
        s.write_all(&f.hash).await?;
        let size = s.read_u64().await?;
        if size != f.size {
            return Err(std::io::Error::other(format!("sent {size} bytes, expected {}", f.size)));
        }
        // Kept as it comes: the size is the launch's word, and the peer may send less.
        let mut data = Vec::with_capacity((size as usize).min(1 << 20));
        s.take(size).read_to_end(&mut data).await?;
        if data.len() as u64 != size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(data)
    }
    let from_parent = match source {
        Source::Parent(s) => exchange(&mut *s.stream().lock().await, f).await.ok(),
        Source::Launcher => None,
    };
    // A parent with a disk of its own keeps no cache to serve from: go to the launcher.
    let (data, from) = match from_parent {
        Some(data) => (data, "the parent node"),
        None => {
            let mut s = open_to_launcher(master, spec, rank, FETCH_FD)
                .await
                .map_err(|error| StageError::Connect { path: f.path.clone(), error })?;
            let data = exchange(&mut s, f)
                .await
                .map_err(|error| StageError::Fetch { path: f.path.clone(), error })?;
            (data, "the launcher")
        }
    };
    info!("staged {} ({} bytes) from {from}", f.path, data.len());
    if <[u8; 32]>::from(Sha256::digest(&data)) != f.hash {
        return Err(StageError::Hash { path: f.path.clone() });
    }
    Ok(data)
}

/// The cache entry of `f`, fetched from `source` unless the cache already holds it.
pub(crate) async fn ensure_cached(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    f: &StagedRef,
) -> Result<std::path::PathBuf, StageError> {
    use std::os::unix::fs::PermissionsExt;
    let cached = d.cache.join(hex::encode(f.hash));
    if cached.exists() {
        return Ok(cached);
    }
    let lock = FETCHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry(f.hash)
        .or_default()
        .clone();
    let _held = lock.lock().await;
    if cached.exists() {
        return Ok(cached);
    }
    let data = fetch(source, master, spec, rank, f).await?;
    let tmp = d.cache.join(format!(".{}.{rank}.{}", hex::encode(f.hash), std::process::id()));
    std::fs::write(&tmp, &data)
        .and_then(|_| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode & 0o7777))
        })
        .and_then(|_| std::fs::rename(&tmp, &cached))
        .map_err(|error| StageError::cache(f, d, error))?;
    crate::info::STAGED_BYTES.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(cached)
}

/// Makes every file of `spec` present in a diskless node's root: from the cache when it holds
/// the content, else fetched from `source` and checked against its hash. Each file is a hard
/// link to its cache entry, put in place by rename so concurrent launches never see a partial
/// file.
pub(crate) async fn stage(
    d: &Diskless,
    source: &Source,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
) -> Result<(), StageError> {
    for f in &spec.files {
        let cached = ensure_cached(d, source, master, spec, rank, f).await?;
        let target = d.root.join(f.path.trim_start_matches('/'));
        let same = |a: &Path, b: &Path| {
            use std::os::unix::fs::MetadataExt;
            matches!((std::fs::metadata(a), std::fs::metadata(b)), (Ok(x), Ok(y)) if x.ino() == y.ino())
        };
        if !same(&target, &cached) {
            let parent = target.parent().unwrap_or(&d.root);
            let tmp = parent.join(format!(".bproc-{}-{rank}", std::process::id()));
            std::fs::create_dir_all(parent)
                .and_then(|_| {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::hard_link(&cached, &tmp)
                })
                .and_then(|_| std::fs::rename(&tmp, &target))
                .map_err(|error| StageError::install(f, d, error))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A returning tree connection comes back once its last user is done with it (a fetch
    /// holds the connection itself too, and lets its lock go first), whole and usable; one
    /// still locked when the last user goes does not, nor does one that does not return.
    #[tokio::test]
    async fn a_tree_connection_comes_back_after_its_last_fetch() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pair = || async {
            let (c, p) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
            (c.unwrap(), p.unwrap().0)
        };
        let (child, mut parent) = pair().await;
        let (conn, mut back) = TreeConn::returning(child);
        let subtree = Source::Parent(conn.clone());
        let fetch = (conn.stream().clone().lock_owned().await, conn);
        drop(subtree);
        assert!(back.try_recv().is_err(), "came back while a fetch held it");
        drop(fetch);
        let (mut s, told) = back.await.expect("back once the fetch let go");
        assert!(!told, "nothing told the parent");
        s.write_all(b"next").await.unwrap();
        let mut got = [0u8; 4];
        parent.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"next");
        let (child, mut parent) = pair().await;
        let (conn, back) = TreeConn::returning(child);
        let locked = conn.stream().clone().lock_owned().await;
        drop(conn);
        assert!(back.await.is_err(), "came back while still locked");
        drop(locked);
        assert_eq!(parent.read(&mut got).await.unwrap(), 0);
        let (child, mut parent) = pair().await;
        drop(TreeConn::new(child));
        assert_eq!(parent.read(&mut got).await.unwrap(), 0);
    }
}
