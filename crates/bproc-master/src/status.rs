//! The status page and `/metrics` (`statuspage ADDR[:PORT]` in the configuration), served by
//! `bproc-status` on this runtime from the master's own state.
//!
//! The page is read-only and needs no login, so it is off unless the configuration names an
//! address; the example configuration serves it on loopback only. Its listener is opened with
//! the others at start, so a taken port stops the master with a clear message instead of
//! leaving it running without its page. A SIGHUP does not move it: a new address takes a
//! restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::{MasterError, Shared};

/// Opens the status page's listener, if the configuration asks for one.
pub(crate) async fn bind(config: &Config) -> Result<Option<TcpListener>, MasterError> {
    let Some(addr) = config.status_page else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|source| MasterError::Listen {
        what: format!(
            "{addr} (statuspage in {}; pick a free port or say `statuspage off`)",
            config.path.display()
        ),
        source,
    })?;
    Ok(Some(listener))
}

/// The master as the status server sees it.
struct View(Arc<Shared>);

impl bproc_status::Source for View {
    fn snapshot(&self) -> bproc_status::Snapshot {
        let nodes = self.0.table().iter().map(|n| n.status()).collect();
        let list = self.0.ghosts.list();
        let mut procs: HashMap<i32, u32> = HashMap::new();
        for e in &list {
            *procs.entry(e.node).or_default() += 1;
        }
        bproc_status::Snapshot {
            nodes,
            procs,
            ghosts: list.len() as u64,
            sent_to_slaves: self.0.sent_to_slaves.load(Ordering::Relaxed),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    fn metrics(&self) -> &bproc_status::Metrics {
        &self.0.metrics
    }
}

/// Serves the page on `listener` for as long as the master runs.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if let Some(addr) = addr {
        info!("status page on http://{addr}/ (metrics at /metrics)");
    }
    if let Err(e) = bproc_status::serve(listener, Arc::new(View(shared))).await {
        warn!("status page stopped: {e}");
    }
}
