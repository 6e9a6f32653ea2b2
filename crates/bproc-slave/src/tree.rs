//! Launch trees: a launch reaches many nodes without the master sending to each. The master
//! gives each of a few nodes its part of the launch (a [`Message::SpawnTree`] listing that
//! node's ranks and the subtree below it); every node starts its own ranks and passes the
//! rest on, split among at most `width` children, over TCP connections between slaves that
//! prove the cluster key both ways as the master's links do. Each rank's outcome goes
//! straight to the master on the node's own link, so nothing flows back up the tree.
//!
//! A child that cannot be reached has its ranks reported as on a down node, and its part
//! goes on to the next node of the same branch, so one dead node costs only its own ranks.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bproc_link::{expect_frame, master_handshake, slave_handshake, write_frame, HANDSHAKE_TIMEOUT};
use bproc_proto::errno::BE_NODEDOWN;
use bproc_proto::{split_tree, Creds, Message, ProcSpec, TreeEntry};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::{procs, proxy, Options, Outbox};

/// What a tree node needs to start ranks and pass a tree on.
pub(crate) struct Ctx {
    pub opts: Options,
    pub procs: procs::Procs,
    pub outbox: Outbox,
    pub link: proxy::LinkState,
}

/// One launch tree's common part.
#[derive(Clone)]
pub(crate) struct Launch {
    pub launch: u64,
    pub size: u32,
    pub creds: Creds,
    pub spec: ProcSpec,
    pub width: u32,
}

/// Accepts tree connections from other slaves until the daemon ends.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = take(stream, &ctx).await {
                        warn!("launch tree from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("tree port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one tree part from a parent that proves the cluster key.
async fn take(mut s: TcpStream, ctx: &Arc<Ctx>) -> Result<(), String> {
    let _ = s.set_nodelay(true);
    slave_handshake(&mut s, &ctx.opts.key).await.map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, expect_frame(&mut s)).await;
    match frame {
        Ok(Ok((_, Message::SpawnTree { launch, size, creds, spec, width, entries }))) => {
            run(ctx.clone(), Launch { launch, size, creds, spec, width }, entries);
            Ok(())
        }
        Ok(Ok((_, other))) => Err(format!("expected SpawnTree, received {}", other.name())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no launch arrived in time".into()),
    }
}

/// Starts this node's ranks (`entries[0]`) and passes the rest of the tree on.
pub(crate) fn run(ctx: Arc<Ctx>, l: Launch, entries: Vec<TreeEntry>) {
    let Some((me, rest)) = entries.split_first() else { return };
    // The subtree first: its nodes then start while this one starts its own ranks.
    for part in split_tree(rest, l.width) {
        let (ctx, l, part) = (ctx.clone(), l.clone(), part.to_vec());
        tokio::spawn(async move { forward(&ctx, &l, part).await });
    }
    for &rank in &me.ranks {
        let (ctx, l) = (ctx.clone(), l.clone());
        tokio::spawn(async move {
            let pid = start(&ctx, &l, rank).await;
            ctx.outbox.send(0, Message::RankSpawned { launch: l.launch, rank, pid });
        });
    }
}

/// Starts one rank here; its pid or a negated error.
async fn start(ctx: &Ctx, l: &Launch, rank: u32) -> i32 {
    let master = ctx.link.get().map_or(Ipv4Addr::LOCALHOST, |c| *c.master.ip());
    let client_socket = ctx.opts.client_socket.as_ref().map(|p| p.to_string_lossy().into_owned());
    let outbox = ctx.outbox.clone();
    let reply = procs::spawn(
        &ctx.procs,
        ctx.opts.authority,
        ctx.opts.diskless.as_ref(),
        master,
        client_socket.as_deref(),
        l.launch,
        rank,
        l.creds.clone(),
        l.spec.clone(),
        move |m| outbox.send(0, m),
    )
    .await;
    match reply {
        Ok(pid) => pid,
        Err(r) => {
            debug!("launch {} rank {rank}: {}", l.launch, r.message);
            -r.code
        }
    }
}

/// Hands `part` to its first node; a node that cannot be reached has its ranks reported and
/// the part goes to the next one.
async fn forward(ctx: &Ctx, l: &Launch, mut part: Vec<TreeEntry>) {
    while !part.is_empty() {
        let child = &part[0];
        match send(ctx, l, &part).await {
            Ok(()) => return,
            Err(e) => {
                debug!("launch {}: node {} unreachable for the tree: {e}", l.launch, child.node);
                for &rank in &child.ranks {
                    let msg = Message::RankSpawned { launch: l.launch, rank, pid: -BE_NODEDOWN };
                    ctx.outbox.send(0, msg);
                }
                part.remove(0);
            }
        }
    }
}

async fn send(ctx: &Ctx, l: &Launch, part: &[TreeEntry]) -> Result<(), String> {
    let child = &part[0];
    let addr = SocketAddrV4::new(child.ip, child.port);
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    master_handshake(&mut s, &ctx.opts.key).await.map_err(|e| e.to_string())?;
    let msg = Message::SpawnTree {
        launch: l.launch,
        size: l.size,
        creds: l.creds.clone(),
        spec: l.spec.clone(),
        width: l.width,
        entries: part.to_vec(),
    };
    write_frame(&mut s, 0, &msg).await.map_err(|e| e.to_string())
}
