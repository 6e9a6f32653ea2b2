//! The node's client socket: programs running on the node (bpsh, bpcp, libbproc callers) use
//! the cluster API through it. Each connection is carried to the master over a TCP
//! connection of its own, authenticated with the cluster key like the slave's link, and the
//! slave vouches for the client's identity, which it reads from the kernel (`SO_PEERCRED`),
//! and for what the client's launches inherit: its resource limits and umask, read from this
//! node's `/proc/PID` when it connects (checked against the pid's start time, so a pid
//! reused meanwhile is caught), never from what the client says.
//! The slave never interprets the client's requests: the master serves them as it serves a
//! local client, with this node as the client's origin.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bproc_link::{slave_handshake, write_frame, ClusterKey};
use bproc_proto::{Creds, Message};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

/// The link in use now, for clients to follow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    pub master: SocketAddrV4,
    pub local: Ipv4Addr,
    pub node: i32,
}

/// Shared view of the current link; `None` while the master is unreachable.
#[derive(Clone, Default)]
pub(crate) struct LinkState(Arc<Mutex<Option<Current>>>);

impl LinkState {
    pub(crate) fn set(&self, c: Option<Current>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
    pub(crate) fn get(&self) -> Option<Current> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the client socket could not be opened.
#[derive(Debug)]
pub(crate) enum BindError {
    /// Another live daemon serves the path (its pid; 0 if unknown): it is left alone.
    Served(i32),
    /// Creating it failed.
    Io(std::io::Error),
}

/// Opens the client socket at `path` (creating its directory; any user may connect, the
/// kernel says who they are). A socket file left by a daemon that died is replaced; one that
/// a live daemon serves (another slave on this host) is never removed.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(pid) = bproc_sys::peer::socket_server(path) {
        return Err(BindError::Served(pid));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(BindError::Io)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(BindError::Io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(BindError::Io)?;
    Ok(l)
}

/// Accepts clients until the daemon ends.
pub(crate) async fn serve(listener: UnixListener, key: ClusterKey, link: LinkState) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (key, link) = (key.clone(), link.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(stream, &key, &link).await {
                        debug!("node client: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("node client socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a node client's connection was not carried to the master (logged at debug level:
/// the client sees its connection close).
#[derive(Debug, thiserror::Error)]
enum CarryError {
    /// The kernel did not say who the client is.
    #[error("the kernel gave no credentials for the client: {0}")]
    NoCredentials(std::io::Error),
    /// The kernel gave no pid for the client (it is in a pid namespace this node cannot see).
    #[error("the kernel gave no pid for the client")]
    NoPid,
    /// The client's `/proc/PID` could not be read, or names another process now.
    #[error(transparent)]
    Peer(#[from] bproc_sys::peer::PeerError),
    /// The master is unreachable: the client may try again once the node is up.
    #[error("the master is not connected; the client may try again once the node is up")]
    NotConnected,
    /// The connection to the master failed.
    #[error("master {master}: {error}")]
    Master {
        /// The master's address.
        master: SocketAddrV4,
        /// What the link said.
        error: bproc_link::LinkError,
    },
    /// Carrying the bytes failed (either side closed abruptly).
    #[error("client pid {pid}: carrying its connection: {error}")]
    Copy {
        /// The client.
        pid: i32,
        /// What the socket said.
        error: std::io::Error,
    },
}

async fn carry(
    mut client: UnixStream,
    key: &ClusterKey,
    link: &LinkState,
) -> Result<(), CarryError> {
    let cred = client.peer_cred().map_err(CarryError::NoCredentials)?;
    let pid = cred.pid().ok_or(CarryError::NoPid)?;
    let peer = bproc_sys::peer::Peer::of_socket(client.as_fd(), pid)?;
    let groups = match bproc_sys::peer::socket_groups(client.as_fd()) {
        Ok(g) => g,
        Err(_) => peer.groups()?,
    };
    let inherited = peer.inherited()?;
    let creds = Creds { uid: cred.uid(), gid: cred.gid(), groups };
    // With the master unreachable the client sees its connection close at once.
    let cur = link.get().ok_or(CarryError::NotConnected)?;
    let failed = |error| CarryError::Master { master: cur.master, error };
    let mut up = crate::connect(cur.master, Some(cur.local)).await.map_err(failed)?;
    slave_handshake(&mut up, key).await.map_err(failed)?;
    write_frame(
        &mut up,
        0,
        &Message::ProxyClient {
            node: cur.node,
            creds,
            pid,
            rlimits: inherited.rlimits,
            umask: inherited.umask,
        },
    )
    .await
    .map_err(failed)?;
    tokio::io::copy_bidirectional(&mut client, &mut up)
        .await
        .map_err(|error| CarryError::Copy { pid, error })?;
    Ok(())
}
