//! TFTP for plain PXE firmware: one file, read-only, the configuration's `pxeloader`.
//!
//! PXE firmware without iPXE can only fetch by TFTP, and slowly; so it is sent a network boot
//! program, which should be iPXE (`undionly.kpxe`), that then asks DHCP again, is recognised
//! as iPXE and gets the HTTP boot script like any other node. The protocol is the
//! `async-tftp` crate's; this module only says which file exists. Any other name is "file
//! not found", any write "permission denied", and both are counted.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use tracing::{info, warn};

use crate::{bump, Shared};

/// Serves the loader, and nothing else.
struct Loader {
    /// The name firmware asks for (the file's own name).
    name: String,
    bytes: Arc<[u8]>,
    shared: Arc<Shared>,
}

impl Handler for Loader {
    type Reader = futures_lite::io::Cursor<Arc<[u8]>>;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let asked = path.to_string_lossy();
        if asked.trim_start_matches('/') != self.name {
            bump(&self.shared.stats.tftp_refused);
            info!("TFTP {asked} from {client}: refused: only {} is served", self.name);
            return Err(packet::Error::FileNotFound);
        }
        bump(&self.shared.stats.tftp_served);
        info!("TFTP: {client} fetches the PXE loader {}", self.name);
        let len = self.bytes.len() as u64;
        Ok((futures_lite::io::Cursor::new(self.bytes.clone()), Some(len)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        bump(&self.shared.stats.tftp_refused);
        info!("TFTP write of {} from {client}: refused", path.display());
        Err(packet::Error::PermissionDenied)
    }
}

/// Serves `bytes` as `name` on `sock` until the process ends (on the calling thread).
pub(crate) fn serve(sock: UdpSocket, name: String, bytes: Arc<[u8]>, shared: Arc<Shared>) {
    let loader = Loader { name, bytes, shared };
    let served = futures_lite::future::block_on(async move {
        TftpServerBuilder::with_handler(loader).std_socket(sock)?.build().await?.serve().await
    });
    if let Err(e) = served {
        warn!("TFTP: the server stopped: {e}");
    }
}
