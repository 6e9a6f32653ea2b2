//! The HTTP server: axum on the caller's runtime, `GET` routes only.
//!
//! Nothing here changes the cluster: the routes read a [`Snapshot`] and the counters. Event
//! streams are capped at [`MAX_EVENT_STREAMS`] at once (a browser tab holds one), so a
//! runaway client cannot make the master serialize the table for thousands of streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::Stream;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::snapshot::{Names, Page, Snapshot};

/// The shortest time between two events of one stream: bursts of changes are coalesced.
pub const MIN_EVENT_GAP: Duration = Duration::from_millis(200);
/// Most event streams served at once; more get `503 Service Unavailable`.
pub const MAX_EVENT_STREAMS: usize = 64;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const STATUS_CSS: &str = include_str!("../assets/status.css");
const STATUS_JS: &str = include_str!("../assets/status.js");

/// Where the server reads the cluster from: the master.
pub trait Source: Send + Sync + 'static {
    /// The node table now.
    fn snapshot(&self) -> Snapshot;
    /// A receiver of the change counter, bumped on every change clients can see.
    fn changes(&self) -> watch::Receiver<u64>;
    /// The event counters.
    fn metrics(&self) -> &Metrics;
}

#[derive(Clone)]
struct App {
    source: Arc<dyn Source>,
    names: Arc<Names>,
    streams: Arc<Semaphore>,
}

impl App {
    fn page(&self, seq: u64) -> Page {
        Page::new(&self.source.snapshot(), &self.names, seq)
    }
}

/// Serves the status page, its events and the metrics on `listener` until the runtime stops.
///
/// # Errors
///
/// Only if the listener itself fails; a failing connection is that client's problem.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>) -> std::io::Result<()> {
    let app =
        App { source, names: Arc::default(), streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)) };
    let router = Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/status.css", get(|| async { file("text/css; charset=utf-8", STATUS_CSS) }))
        .route("/status.js", get(|| async { file("text/javascript; charset=utf-8", STATUS_JS) }))
        .route("/nodes.json", get(nodes))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(app);
    axum::serve(listener, router).await
}

fn file(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn nodes(State(app): State<App>) -> Response {
    let seq = *app.source.changes().borrow();
    let body = app.page(seq).to_json();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    let text = app.source.metrics().render(&app.source.snapshot());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// One stream's state: its place in the change sequence and its slot.
struct Follower {
    app: App,
    rx: watch::Receiver<u64>,
    first: bool,
    last: Instant,
    _slot: OwnedSemaphorePermit,
}

async fn events(State(app): State<App>) -> Response {
    let Ok(slot) = app.streams.clone().try_acquire_owned() else {
        let msg = format!("too many event streams (at most {MAX_EVENT_STREAMS}); close a tab\n");
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    };
    let rx = app.source.changes();
    let state = Follower { app, rx, first: true, last: Instant::now(), _slot: slot };
    Sse::new(stream(state)).keep_alive(KeepAlive::default()).into_response()
}

/// The node table now, then again after each change, at most every [`MIN_EVENT_GAP`]; ends
/// when the master drops its change counter.
fn stream(state: Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(state, |mut s| async move {
        if s.first {
            s.first = false;
        } else {
            s.rx.changed().await.ok()?;
            let since = s.last.elapsed();
            if since < MIN_EVENT_GAP {
                tokio::time::sleep(MIN_EVENT_GAP - since).await;
            }
        }
        let seq = *s.rx.borrow_and_update();
        s.last = Instant::now();
        let event = Event::default().event("nodes").data(s.app.page(seq).to_json());
        Some((Ok(event), s))
    })
}

#[cfg(test)]
mod tests {
    use bproc_proto::NodeStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Fake {
        nodes: std::sync::Mutex<Vec<NodeStatus>>,
        changed: watch::Sender<u64>,
        metrics: Metrics,
    }

    impl Source for Fake {
        fn snapshot(&self) -> Snapshot {
            Snapshot { nodes: self.nodes.lock().unwrap().clone(), ..Snapshot::default() }
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.changed.subscribe()
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Every route answers, a change reaches an open event stream, and nothing but GET is
    /// served.
    #[tokio::test(flavor = "current_thread")]
    async fn routes_and_live_events() {
        let fake = Arc::new(Fake {
            nodes: std::sync::Mutex::new(vec![NodeStatus {
                node: 0,
                state: "up".into(),
                ..NodeStatus::default()
            }]),
            changed: watch::channel(0).0,
            metrics: Metrics::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, fake.clone()));
        assert!(get(addr, "/").await.contains("<title>bproc status</title>"));
        assert!(get(addr, "/status.js").await.contains("EventSource"));
        assert!(get(addr, "/nodes.json").await.contains("\"state\":\"up\""));
        assert!(get(addr, "/metrics").await.contains("bproc_nodes{state=\"up\"} 1"));
        let mut post = tokio::net::TcpStream::connect(addr).await.unwrap();
        post.write_all(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        post.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("\"state\":\"up\"") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        fake.nodes.lock().unwrap()[0].state = "down".into();
        fake.changed.send_modify(|v| *v += 1);
        let started = Instant::now();
        while !seen.contains("\"state\":\"down\"") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
