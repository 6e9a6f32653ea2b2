//! The configuration's `libraries` and `librariesfrombinary` files, staged on every diskless
//! node when it joins, before `node_up` runs and the node turns `up`. The master serves them
//! on a port of its own, with a token, in the same fetch protocol bpsh uses for a launch's
//! files; a node fetches only what its cache lacks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bproc_link::guard::{Pending, Refusals};
use bproc_proto::StagedRef;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;

/// The staged set and where it is served.
#[derive(Debug)]
pub(crate) struct Stage {
    /// Port of the file server on the master's slave-facing address.
    pub port: u16,
    /// Secret nodes present.
    pub token: [u8; 16],
    /// The files, as sent to nodes.
    pub files: Vec<StagedRef>,
    by_hash: HashMap<[u8; 32], PathBuf>,
}

/// Why the configured files cannot be staged (the master does not start).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A file the `libraries` lines name cannot be read.
    #[error("{}: libraries: {why}", config.display())]
    Files {
        /// The configuration file.
        config: PathBuf,
        /// What failed (said in the message, so not a source).
        why: bproc_stage::StageError,
    },
    /// More files than one staging message carries.
    #[error(
        "{}: libraries: {files} files to stage, at most {} fit (list fewer directories)",
        config.display(),
        bproc_proto::MAX_STAGED
    )]
    TooMany {
        /// The configuration file.
        config: PathBuf,
        /// Files named.
        files: usize,
    },
    /// No port to serve them from.
    #[error("cannot listen for library staging on {ip}: {why}")]
    Listen {
        /// The address tried.
        ip: IpAddr,
        /// What the kernel said (in the message, so not a source).
        why: std::io::Error,
    },
}

/// Gathers the configured files and starts serving them; `None` when there are none.
pub(crate) async fn start(config: &Config, ip: IpAddr) -> Result<Option<Arc<Stage>>, StageError> {
    // Each argument that names nothing is said at its line; the others are staged.
    let at = |line: usize| format!("{}:{line}", config.path.display());
    let mut paths = Vec::new();
    for lib in &config.libraries {
        match bproc_stage::library_files(&lib.arg) {
            Ok(found) => paths.extend(found),
            Err(why) => warn!(
                "{}: libraries {}: {why}; nothing is staged or listed for it",
                at(lib.line),
                lib.arg
            ),
        }
    }
    let mut binaries = Vec::new();
    for bin in &config.libraries_from_binary {
        let p = PathBuf::from(&bin.arg);
        if p.is_file() {
            binaries.push(p);
        } else {
            warn!(
                "{}: librariesfrombinary {}: no such program; its libraries are not staged or listed",
                at(bin.line),
                bin.arg
            );
        }
    }
    let files = bproc_stage::config_files(&paths, &binaries)
        .map_err(|why| StageError::Files { config: config.path.clone(), why })?;
    if files.is_empty() {
        return Ok(None);
    }
    // Every diskless node gets them in one message, which carries at most so many.
    if files.len() > bproc_proto::MAX_STAGED {
        return Err(StageError::TooMany { config: config.path.clone(), files: files.len() });
    }
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|why| StageError::Listen { ip, why })?;
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).expect("the kernel's random source failed");
    let stage = Arc::new(Stage {
        port: listener.local_addr().map_err(|why| StageError::Listen { ip, why })?.port(),
        token,
        files: files
            .iter()
            .map(|f| StagedRef {
                path: f.path.to_string_lossy().into_owned(),
                mode: f.mode,
                size: f.size,
                hash: f.hash,
            })
            .collect(),
        by_hash: files.into_iter().map(|f| (f.hash, f.path)).collect(),
    });
    info!("staging {} configured files on diskless nodes", stage.files.len());
    tokio::spawn(serve(listener, stage.clone()));
    Ok(Some(stage))
}

/// Refused staging connections, logged once per interval beyond the first few.
pub(crate) static REFUSED: Refusals = Refusals::new("library staging port");

/// Most connections read at once before they show the token.
const MAX_PENDING: usize = 256;

async fn serve(listener: TcpListener, stage: Arc<Stage>) {
    let pending = Pending::new(MAX_PENDING);
    loop {
        let (mut s, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                REFUSED.refuse(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stage = stage.clone();
        let evicted = pending.spawn(move |place| async move {
            let mut head = [0u8; 21];
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await;
            if !matches!(read, Ok(Ok(_))) || head[..16] != stage.token || head[20] != 0xff {
                REFUSED.refuse(format_args!("refused a connection from {peer}"));
                return;
            }
            place.admit();
            bproc_link::serve_staged_file(&mut s, &stage.by_hash).await;
        });
        if evicted {
            REFUSED.refuse(format_args!(
                "{MAX_PENDING} connections wait to show the token; dropped the oldest"
            ));
        }
    }
}
