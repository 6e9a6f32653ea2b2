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

/// A local connection's writing half that lets the socket close with its reading half, without
/// a `shutdown` of its own first (a ghost's connection ends when the ghost has gone: one
/// system call a launched rank less).
pub(crate) struct NoShutdown(pub Option<tokio::net::unix::OwnedWriteHalf>);

impl NoShutdown {
    fn half(&mut self) -> &mut tokio::net::unix::OwnedWriteHalf {
        self.0.as_mut().expect("taken only when dropped")
    }
}

impl AsyncWrite for NoShutdown {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(self.get_mut().half()).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.get_mut().half()).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.get_mut().half()).poll_shutdown(cx)
    }
}

impl Drop for NoShutdown {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.forget();
        }
    }
}

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
