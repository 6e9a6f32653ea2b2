//! The master's metrics in Prometheus' text format, through the official `prometheus-client`
//! crate.
//!
//! Two kinds of values:
//! - **Events**, counted where they happen: the master holds one [`Metrics`] (in its shared
//!   state) and calls a method per event, each a relaxed atomic add, so counting costs nothing
//!   on the paths it sits on and needs no lock. Add a counter here with a method named after
//!   the event, then call it at the one place the event happens.
//! - **State**, read from a [`Snapshot`] at scrape time: nodes per state, each node's load,
//!   memory, CPUs and processes, the ghosts, the bytes sent to slaves.
//!
//! Every name starts with `bproc_`. Counters end in `_total`, as the format wants.

use std::time::Duration;

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::snapshot::Snapshot;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the boot-duration buckets, in seconds: from a virtual node's few
/// milliseconds to a real node's network boot.
const BOOT_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Counters of the master's events. Cheap to bump from any task or thread.
#[derive(Debug)]
pub struct Metrics {
    launches: Counter,
    ranks_started: Counter,
    bpcp_bytes: Counter,
    auth_refused: Counter,
    connections_rejected: Counter,
    boot_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            launches: Counter::default(),
            ranks_started: Counter::default(),
            bpcp_bytes: Counter::default(),
            auth_refused: Counter::default(),
            connections_rejected: Counter::default(),
            boot_seconds: Histogram::new(BOOT_BUCKETS),
        }
    }
}

impl Metrics {
    /// A launch request was accepted (bpsh, `bproc_vexecmove`, a move).
    pub fn launch(&self) {
        self.launches.inc();
    }

    /// A slave reported `n` more ranks started.
    pub fn ranks_started(&self, n: u64) {
        self.ranks_started.inc_by(n);
    }

    /// A node's part of a bpcp copy finished, having written `bytes`.
    pub fn copied(&self, bytes: u64) {
        self.bpcp_bytes.inc_by(bytes);
    }

    /// A connection failed the cluster-key handshake (a slave, or a client on a node).
    pub fn auth_refused(&self) {
        self.auth_refused.inc();
    }

    /// A connection was turned away before it was served (a connection cap, a refused
    /// source). Call it wherever a connection is rejected; the count is
    /// `bproc_connections_rejected_total`.
    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// A node finished booting (from its fresh session to `up`) after `took`.
    pub fn node_booted(&self, took: Duration) {
        self.boot_seconds.observe(took.as_secs_f64());
    }

    /// Every metric, the counters and `snap`'s state, in Prometheus' text format (0.0.4).
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut r = Registry::with_prefix("bproc");
        let counter = |v: &Counter| v.clone();
        r.register("launches", "Launch requests accepted", counter(&self.launches));
        r.register(
            "ranks_started",
            "Remote processes started by launches",
            counter(&self.ranks_started),
        );
        r.register("bpcp_bytes", "Bytes written by bpcp copies", counter(&self.bpcp_bytes));
        r.register(
            "auth_refused",
            "Connections that failed the cluster-key handshake",
            counter(&self.auth_refused),
        );
        r.register(
            "connections_rejected",
            "Connections turned away before being served",
            counter(&self.connections_rejected),
        );
        r.register(
            "node_boot_seconds",
            "Time from a node's fresh session to up (libraries staged, node_up run)",
            self.boot_seconds.clone(),
        );
        let sent = Counter::<u64>::default();
        sent.inc_by(snap.sent_to_slaves);
        r.register("sent_to_slaves_bytes", "Bytes the master wrote to slave links", sent);
        let ghosts = Gauge::<i64>::default();
        ghosts.set(i64::try_from(snap.ghosts).unwrap_or(i64::MAX));
        r.register("ghosts", "Ghosts alive on the front end", ghosts);

        let by_state = Family::<Vec<(String, String)>, Gauge>::default();
        for (state, count) in snap.counts() {
            by_state.get_or_create(&vec![("state".into(), state)]).set(count as i64);
        }
        r.register("nodes", "Configured nodes by state", by_state);

        type F64 = Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>;
        type I64 = Family<Vec<(String, String)>, Gauge>;
        let (load1, load5, load15) = (F64::default(), F64::default(), F64::default());
        let (mem_total, mem_free, cpus, uptime, procs) =
            (I64::default(), I64::default(), I64::default(), I64::default(), I64::default());
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for n in &snap.nodes {
            let label = vec![("node".to_owned(), n.node.to_string())];
            let Some(info) = &n.info else { continue };
            load1.get_or_create(&label).set(f64::from(info.load[0]) / 100.0);
            load5.get_or_create(&label).set(f64::from(info.load[1]) / 100.0);
            load15.get_or_create(&label).set(f64::from(info.load[2]) / 100.0);
            mem_total.get_or_create(&label).set(int(info.mem_total));
            mem_free.get_or_create(&label).set(int(info.mem_free));
            cpus.get_or_create(&label).set(i64::from(info.cpus));
            uptime.get_or_create(&label).set(int(info.uptime));
            let p = snap.procs.get(&n.node).copied().unwrap_or(0);
            procs.get_or_create(&label).set(i64::from(p));
        }
        r.register("node_load1", "Load average over 1 minute of each connected node", load1);
        r.register("node_load5", "Load average over 5 minutes of each connected node", load5);
        r.register("node_load15", "Load average over 15 minutes of each connected node", load15);
        r.register("node_memory_total_bytes", "Memory of each connected node", mem_total);
        r.register("node_memory_free_bytes", "Available memory of each connected node", mem_free);
        r.register("node_cpus", "Online CPUs of each connected node", cpus);
        r.register("node_uptime_seconds", "Seconds since each connected node booted", uptime);
        r.register(
            "node_processes",
            "Remote processes (with ghosts) on each connected node",
            procs,
        );

        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &r);
        text
    }
}

#[cfg(test)]
mod tests {
    use bproc_proto::{NodeInfo, NodeStatus};

    use super::*;

    #[test]
    fn renders_events_and_state() {
        let m = Metrics::default();
        m.launch();
        m.ranks_started(3);
        m.copied(1000);
        m.auth_refused();
        m.connection_rejected();
        m.connection_rejected();
        m.node_booted(Duration::from_millis(30));
        let up = NodeStatus {
            node: 2,
            state: "up".into(),
            info: Some(NodeInfo {
                cpus: 8,
                load: [125, 0, 0],
                mem_total: 4096,
                ..NodeInfo::default()
            }),
            ..NodeStatus::default()
        };
        let snap = Snapshot {
            nodes: vec![up, NodeStatus { node: 3, state: "down".into(), ..NodeStatus::default() }],
            procs: [(2, 5)].into_iter().collect(),
            ghosts: 5,
            sent_to_slaves: 77,
        };
        let text = m.render(&snap);
        for line in [
            "bproc_launches_total 1",
            "bproc_ranks_started_total 3",
            "bproc_bpcp_bytes_total 1000",
            "bproc_auth_refused_total 1",
            "bproc_connections_rejected_total 2",
            "bproc_node_boot_seconds_count 1",
            "bproc_node_boot_seconds_bucket{le=\"0.05\"} 1",
            "bproc_sent_to_slaves_bytes_total 77",
            "bproc_ghosts 5",
            "bproc_nodes{state=\"up\"} 1",
            "bproc_nodes{state=\"down\"} 1",
            "bproc_nodes{state=\"boot\"} 0",
            "bproc_node_load1{node=\"2\"} 1.25",
            "bproc_node_memory_total_bytes{node=\"2\"} 4096",
            "bproc_node_cpus{node=\"2\"} 8",
            "bproc_node_processes{node=\"2\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("node=\"3\""), "a down node has no machine metrics:\n{text}");
    }
}
