//! A node as JSON shows it: `bpstat --json` prints these and the status page serves them
//! (with a process count beside), one shape for both so the two can never disagree.

use serde::Serialize;

use crate::NodeStatus;

/// One node; field order is output order.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    node: i32,
    state: String,
    /// Octal, as `"0111"`.
    mode: String,
    user: String,
    group: String,
    uid: u32,
    gid: u32,
    /// Dotted quad, or null.
    addr: Option<String>,
    info: Option<InfoView>,
}

/// A node's machine report; `load` as three load averages.
#[derive(Debug, Clone, Serialize)]
struct InfoView {
    cpus: u32,
    mem_total: u64,
    mem_free: u64,
    load: [f64; 3],
    uptime: u64,
    kernel: String,
    hostname: String,
    arch: String,
    diskless: bool,
    staged_bytes: u64,
}

impl NodeView {
    /// The view of `n`, whose owner and group are named `user` and `group`.
    pub fn new(n: &NodeStatus, user: String, group: String) -> NodeView {
        NodeView {
            node: n.node,
            state: n.state.clone(),
            mode: format!("{:04o}", n.mode),
            user,
            group,
            uid: n.uid,
            gid: n.gid,
            addr: n.addr.map(|a| a.to_string()),
            info: n.info.as_ref().map(|i| InfoView {
                cpus: i.cpus,
                mem_total: i.mem_total,
                mem_free: i.mem_free,
                load: i.load.map(|l| f64::from(l) / 100.0),
                uptime: i.uptime,
                kernel: i.kernel.clone(),
                hostname: i.hostname.clone(),
                arch: i.arch.clone(),
                diskless: i.diskless,
                staged_bytes: i.staged_bytes,
            }),
        }
    }
}
