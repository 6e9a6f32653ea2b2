//! bpcp's requests: check who may copy where, then introduce the sender to its receivers.
//! File data never passes through the master daemon: each sender connects straight to its
//! receivers' data ports (a slave's, the client's own, or this daemon's for a client on a
//! node copying to the front end), and a broadcast goes down a chain or tree of receivers,
//! each relaying to its children as it writes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use bproc_copy::service::new_token;
use bproc_link::write_frame;
use bproc_proto::errno::EINVAL;
use bproc_proto::{
    CopyLink, CopyOpts, CopyRequest as Request, CopyTask, Creds, Message, MAX_COPY_ITEMS,
    NODE_CLIENT, NODE_MASTER,
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::conn::{ClientRd, ClientWr};
use crate::table::{Caller, Refusal, Table};
use crate::Shared;

/// How a copy runs.
struct Plan {
    /// The client's links.
    links: Vec<CopyLink>,
    /// Results of nodes refused at once.
    refused: Vec<Message>,
    /// The parts to order.
    orders: Vec<Order>,
}

/// A node's part, to be ordered.
struct Order {
    node: i32,
    task: CopyTask,
}

fn result(node: i32, error: String) -> Message {
    Message::CopyResult { node, source_errors: Vec::new(), errors: vec![error], files: 0, bytes: 0 }
}

/// The master's own address as slaves see it (where its data port listens).
fn master_ip(shared: &Shared) -> Ipv4Addr {
    match shared.listen.first().map(|a| a.ip()) {
        Some(IpAddr::V4(ip)) => ip,
        _ => Ipv4Addr::LOCALHOST,
    }
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    caller: Caller,
    id: u32,
    req: Request,
    mut rd: ClientRd,
    mut wr: ClientWr,
) {
    // New files on nodes are masked with the caller's umask as its kernel has it.
    let umask = match crate::launch::inherited(&caller, &[]) {
        Ok(i) => i.umask,
        Err(r) => {
            let _ = write_frame(&mut wr, id, &r.to_message()).await;
            return;
        }
    };
    let req = Request { opts: CopyOpts { umask, ..req.opts }, ..req };
    let Plan { links: plan, refused, orders } = match plan(&shared, &caller, &req) {
        Ok(p) => p,
        Err(e) => {
            let refusal = Refusal::new(EINVAL, e.to_string());
            let _ = write_frame(&mut wr, id, &refusal.to_message()).await;
            return;
        }
    };
    let reports = (refused.len() + orders.len()) as u32;
    if write_frame(&mut wr, id, &Message::CopyPlan { links: plan, reports }).await.is_err() {
        return;
    }
    for r in refused {
        if write_frame(&mut wr, 0, &r).await.is_err() {
            return;
        }
    }
    let creds = Creds { uid: caller.uid, gid: caller.gid, groups: caller.groups.clone() };
    let (tx, mut rx) = mpsc::unbounded_channel();
    for o in orders {
        let msg = Message::CopyOrder {
            creds: creds.clone(),
            cwd: req.cwd.clone(),
            opts: req.opts,
            task: o.task,
        };
        let tx = tx.clone();
        let node = o.node;
        if node == NODE_MASTER {
            let Message::CopyOrder { creds, cwd, opts, task } = msg else { unreachable!() };
            let own = master_ip(&shared);
            shared.data.run_order(creds, cwd, opts, task, own, move |m| {
                let _ = tx.send((node, m));
            });
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            // A copy takes as long as its data; only the node going down ends the wait.
            let reply = shared.request_within(node, msg, Duration::from_secs(86400 * 365)).await;
            let _ = tx.send((node, reply));
        });
    }
    drop(tx);
    for _ in 0..reports {
        let (node, reply) = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            // The client is gone: the copy's streams break and its parts end on their own.
            _ = bproc_link::read_frame(&mut rd) => return,
        };
        let event = match reply {
            Message::CopyResult { source_errors, errors, files, bytes, .. } => {
                shared.metrics.copied(bytes);
                Message::CopyResult { node, source_errors, errors, files, bytes }
            }
            Message::Error { message, .. } => result(node, format!("rcp: {message}")),
            other => result(node, format!("rcp: node {node} answered {}", other.name())),
        };
        if write_frame(&mut wr, 0, &event).await.is_err() {
            return;
        }
    }
    debug!("copy for uid {} done", caller.uid);
}

/// Why the master refuses a bpcp request before anything moves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("a copy needs a source and a destination")]
    Empty,
    #[error("copying from several nodes works only into a directory of bpcp's own machine")]
    SeveralSources,
    #[error("a copy from bpcp's machine to itself needs no master")]
    ClientToClient,
    #[error("bad copy request")]
    Bad,
    #[error("the front end's own files are bpcp's local files: name them without a node")]
    FrontEnd,
    #[error("invalid node number {0}")]
    Node(i32),
}

/// Checks a request's nodes and paths before anything is laid out.
fn check(caller: &Caller, req: &Request) -> Result<(), PlanError> {
    if req.src.is_empty() || req.dst.is_empty() {
        return Err(PlanError::Empty);
    }
    if req.src.len() > 1 && req.dst != [NODE_CLIENT] {
        return Err(PlanError::SeveralSources);
    }
    if req.src.contains(&NODE_CLIENT) && req.dst.contains(&NODE_CLIENT) {
        return Err(PlanError::ClientToClient);
    }
    if req.src.len() + req.dst.len() > MAX_COPY_ITEMS || req.paths.is_empty() {
        return Err(PlanError::Bad);
    }
    for &n in req.src.iter().chain(&req.dst) {
        if n == NODE_MASTER && caller.origin.is_none() {
            return Err(PlanError::FrontEnd);
        }
        if n < NODE_MASTER && n != NODE_CLIENT {
            return Err(PlanError::Node(n));
        }
    }
    Ok(())
}

/// Hands out each usable node's data port, under the table's lock, and keeps the results
/// of the nodes the caller may not use.
struct Linker<'a> {
    shared: &'a Shared,
    caller: &'a Caller,
    req: &'a Request,
    own_ip: Ipv4Addr,
    table: MutexGuard<'a, Table>,
    refused: Vec<Message>,
}

impl Linker<'_> {
    /// Where node `n`'s data port is, with a fresh token; `None` if the caller may not use it.
    fn link(&mut self, n: i32) -> Option<CopyLink> {
        let token = new_token();
        match n {
            NODE_CLIENT => Some(CopyLink {
                node: n,
                ip: self.caller.origin.map(|o| o.1),
                port: self.req.port,
                token,
            }),
            NODE_MASTER => Some(CopyLink {
                node: n,
                ip: Some(self.own_ip),
                port: self.shared.data.port(),
                token,
            }),
            n => match self.table.may_run(self.caller, n) {
                Err(refusal) => {
                    self.refused.push(result(n, format!("rcp: {}", refusal.message)));
                    None
                }
                Ok(()) => {
                    let node = self.table.get(n)?;
                    Some(CopyLink { node: n, ip: node.addr, port: node.data_port, token })
                }
            },
        }
    }
}

/// Checks a request and lays out the copy.
fn plan(shared: &Shared, caller: &Caller, req: &Request) -> Result<Plan, PlanError> {
    check(caller, req)?;
    let linker = Linker {
        shared,
        caller,
        req,
        own_ip: master_ip(shared),
        table: shared.table(),
        refused: Vec::new(),
    };
    if req.src.len() > 1 || req.dst == [NODE_CLIENT] {
        Ok(gather(linker))
    } else {
        Ok(tree(linker))
    }
}

/// Pull or gather: every source streams to the client, which names the files.
fn gather(mut linker: Linker<'_>) -> Plan {
    let (req, caller) = (linker.req, linker.caller);
    let mut client_links = Vec::new();
    let mut orders = Vec::new();
    for &s in &req.src {
        let Some(link) = linker.link(s) else { continue };
        let to = CopyLink {
            node: NODE_CLIENT,
            ip: caller.origin.map(|o| o.1),
            port: req.port,
            token: new_token(),
        };
        client_links.push(CopyLink { token: to.token, ..link });
        orders.push(Order {
            node: s,
            task: CopyTask::Send { paths: req.paths.clone(), to: vec![to] },
        });
    }
    Plan { links: client_links, refused: linker.refused, orders }
}

/// Push or broadcast from one source down a tree of receivers, `fanout` children each.
fn tree(mut linker: Linker<'_>) -> Plan {
    let req = linker.req;
    let fanout = req.fanout.clamp(1, 64) as usize;
    let source = req.src[0];
    if source != NODE_CLIENT && linker.link(source).is_none() {
        // The source is refused: nothing moves; its refusal is the only report.
        return Plan { links: Vec::new(), refused: linker.refused, orders: Vec::new() };
    }
    let receivers: Vec<CopyLink> = req.dst.iter().filter_map(|&n| linker.link(n)).collect();
    let refused = std::mem::take(&mut linker.refused);
    drop(linker);
    let children = |i: Option<usize>| -> Vec<CopyLink> {
        let first = match i {
            None => 0,
            Some(i) => fanout * (i + 1),
        };
        receivers.iter().skip(first).take(fanout).cloned().collect()
    };
    let mut orders = Vec::new();
    for (i, r) in receivers.iter().enumerate() {
        orders.push(Order {
            node: r.node,
            task: CopyTask::Receive {
                token: r.token,
                target: req.target.clone(),
                suffix: String::new(),
                to: children(Some(i)),
            },
        });
    }
    let roots = children(None);
    let mut client_links = Vec::new();
    if source == NODE_CLIENT {
        client_links = roots;
    } else if !roots.is_empty() {
        orders.push(Order {
            node: source,
            task: CopyTask::Send { paths: req.paths.clone(), to: roots },
        });
    }
    Plan { links: client_links, refused, orders }
}
