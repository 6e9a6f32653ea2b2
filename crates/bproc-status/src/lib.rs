//! bpmaster's read-only web view of the cluster, for a browser and for Prometheus: the
//! status page (Scyld's beostatus: a table of every node, and one coloured dot per node for
//! large clusters), its live updates, and the metrics.
//!
//! # Layout
//! - [`snapshot`]: what the master hands over ([`Snapshot`]) and the JSON the page reads.
//! - [`metrics`]: the master's event counters ([`Metrics`]) and the Prometheus text format.
//! - [`serve`]: the HTTP server (axum on the caller's tokio runtime), every route `GET` only.
//!
//! # Routes
//! | path | what |
//! |---|---|
//! | `/` | the page (HTML, CSS and JS are files of this crate, compiled in: no build step) |
//! | `/nodes.json` | the node table as the page reads it |
//! | `/events` | server-sent events: the node table at once, then again after every change |
//! | `/metrics` | Prometheus' text format (version 0.0.4) |
//!
//! # Live updates
//! The master bumps a `watch` counter on every change clients can see ([`Source::changes`]).
//! Each `/events` stream waits on it and sends a fresh table, at most every
//! [`MIN_EVENT_GAP`], so a burst (a thousand nodes booting) costs a few events, not thousands,
//! and a change reaches the page well within a second. The page never polls.
//!
//! ```no_run
//! # async fn f(source: std::sync::Arc<dyn bproc_status::Source>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! bproc_status::serve(listener, source).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod http;
pub mod metrics;
pub mod snapshot;

pub use http::{serve, Source, MAX_EVENT_STREAMS, MIN_EVENT_GAP};
pub use metrics::Metrics;
pub use snapshot::Snapshot;
