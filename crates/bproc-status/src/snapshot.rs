//! The master's node table at one moment, and the JSON the status page reads.
//!
//! The JSON rows carry the fields of `bpstat --json` (`node`, `state`, `mode`, `user`,
//! `group`, `uid`, `gid`, `addr`, `info`) plus `procs`, the node's remote processes that
//! have ghosts on the front end, so that a script may read either.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bproc_proto::view::NodeView;
use bproc_proto::NodeStatus;
use serde::Serialize;

/// What the master hands over: its node table and a few counts, copied under its lock.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every configured node, in node order.
    pub nodes: Vec<NodeStatus>,
    /// Remote processes per node (those with ghosts on the front end).
    pub procs: HashMap<i32, u32>,
    /// Ghosts on the front end (remote processes with a stand-in here).
    pub ghosts: u64,
    /// Bytes the master wrote to slave links since it started.
    pub sent_to_slaves: u64,
}

impl Snapshot {
    /// Nodes per state, with the usual states present even when no node is in them.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = ["up", "down", "boot", "error", "unreachable"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for n in &self.nodes {
            *counts.entry(n.state.clone()).or_default() += 1;
        }
        counts
    }
}

/// User and group names by id, looked up once each (the NSS lookup may be slow).
#[derive(Debug, Default)]
pub struct Names {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl Names {
    /// The name of user `uid`, or the number when it has none.
    pub fn user(&self, uid: u32) -> String {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name)
            })
            .clone()
    }

    /// The name of group `gid`, or the number when it has none.
    pub fn group(&self, gid: u32) -> String {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| gid.to_string(), |g| g.name)
            })
            .clone()
    }
}

/// The page's view of the cluster.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Every node.
    pub nodes: Vec<Row>,
    /// Nodes per state.
    pub counts: BTreeMap<String, u64>,
    /// Ghosts on the front end.
    pub ghosts: u64,
    /// The change counter this view was made at.
    pub seq: u64,
}

/// One node, as `bpstat --json` prints it, plus `procs`.
#[derive(Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    node: NodeView,
    procs: u32,
}

impl Page {
    /// The page's view of `snap`, taken at change counter `seq`.
    pub fn new(snap: &Snapshot, names: &Names, seq: u64) -> Page {
        let nodes = snap
            .nodes
            .iter()
            .map(|n| Row {
                node: NodeView::new(n, names.user(n.uid), names.group(n.gid)),
                procs: snap.procs.get(&n.node).copied().unwrap_or(0),
            })
            .collect();
        Page { nodes, counts: snap.counts(), ghosts: snap.ghosts, seq }
    }

    /// The view as compact JSON.
    pub fn to_json(&self) -> String {
        // Plain structs of strings and numbers always serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use bproc_proto::NodeInfo;

    use super::*;

    fn node(n: i32, state: &str) -> NodeStatus {
        NodeStatus { node: n, state: state.into(), ..NodeStatus::default() }
    }

    #[test]
    fn counts_list_the_usual_states() {
        let snap = Snapshot {
            nodes: vec![node(0, "up"), node(1, "up"), node(2, "weird")],
            ..Snapshot::default()
        };
        let c = snap.counts();
        assert_eq!(c["up"], 2);
        assert_eq!(c["down"], 0);
        assert_eq!(c["weird"], 1);
    }

    #[test]
    fn rows_match_bpstat_json() {
        let mut up = node(3, "up");
        up.mode = 0o111;
        up.addr = Some("10.0.0.3".parse().unwrap());
        up.info = Some(NodeInfo { cpus: 4, load: [150, 20, 5], ..NodeInfo::default() });
        let snap = Snapshot {
            nodes: vec![up, node(4, "down")],
            procs: [(3, 7)].into_iter().collect(),
            ..Snapshot::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&Page::new(&snap, &Names::default(), 9).to_json()).unwrap();
        assert_eq!(v["seq"], 9);
        assert_eq!(v["nodes"][0]["mode"], "0111");
        assert_eq!(v["nodes"][0]["addr"], "10.0.0.3");
        assert_eq!(v["nodes"][0]["info"]["load"][0], 1.5);
        assert_eq!(v["nodes"][0]["procs"], 7);
        assert_eq!(v["nodes"][0]["user"], "root");
        assert_eq!(v["nodes"][1]["info"], serde_json::Value::Null);
        assert_eq!(v["counts"]["down"], 1);
    }
}
