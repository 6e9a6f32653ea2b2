//! A client connection as the modules that serve requests take it: its two halves, local
//! (the Unix socket) or proxied (a TCP connection a slave opened for a client on its node);
//! and a proxied client as the slave port hands it to the client socket's service.
//!
//! It sits below `clients`, `launch`, `ghosts`, `copy` and `slaves`, so none of them needs
//! another's internals for these types.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The reading half of a client connection, local or proxied.
pub(crate) type ClientRd = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half.
pub(crate) type ClientWr = Box<dyn AsyncWrite + Send + Unpin>;

/// A client of node `node` (at `ip`) whose slave opened `stream` for it, vouching for its
/// identity as the node's kernel gave it.
pub(crate) struct Proxied {
    pub node: i32,
    pub ip: std::net::Ipv4Addr,
    pub creds: bproc_proto::Creds,
    /// Its pid on the node (0: unknown).
    pub pid: i32,
    /// Its limits and umask, read on the node.
    pub inherited: bproc_sys::peer::Inherited,
    pub stream: TcpStream,
}
