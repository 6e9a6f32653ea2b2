//! One session with the master, served over its link (and the links `bpctl --reconnect`
//! moves it to): each frame from the master is handled inline, and every reply goes out
//! through the [`Outbox`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bproc_link::{read_frame, LinkError};
use bproc_proto::errno::{ENOSYS, EPROTO};
use bproc_proto::{Endpoint, Message};
use thiserror::Error;
use tokio::net::tcp::OwnedReadHalf;
use tracing::{info, warn};

use crate::{attach, chroot, error_reply, node_info, open_link, procs, proxy, tree};
use crate::{Data, End, Link, Options, Outbox};

/// What every session of the daemon shares.
pub(crate) struct Daemon<'a> {
    pub opts: &'a Options,
    pub outbox: &'a Outbox,
    pub procs: &'a procs::Procs,
    pub data: &'a Data,
    pub state: &'a proxy::LinkState,
}

/// Why `bpctl --reconnect` found no new link; the message goes back to the master as is
/// (its text is what `bpctl` prints, kept as it was: the master's reason ends it).
#[derive(Debug, Error)]
enum ReconnectError {
    /// The new master address could not be reached or joined: check the address and that
    /// a master listens there.
    #[error("reconnect to {target}: {error}")]
    Lost {
        /// Where the new link was to go.
        target: SocketAddrV4,
        /// What the link said.
        error: LinkError,
    },
    /// The master there refused this node.
    #[error("reconnect to {target}: refused: {reason}")]
    Refusal {
        /// Where the new link was to go.
        target: SocketAddrV4,
        /// The master's reason.
        reason: String,
    },
    /// The master there asked for a node action while the link opened: try again once the
    /// node is up.
    #[error("reconnect interrupted")]
    Interrupted,
}

/// The session's current link: its read half and what the master last said of it.
struct Session<'d, 'a> {
    daemon: &'d Daemon<'a>,
    cookie: &'d mut u64,
    rd: OwnedReadHalf,
    master: SocketAddrV4,
    node: i32,
    ping_timeout: Duration,
    local: Ipv4Addr,
}

/// Serves one session over `link` (and the links it moves to) until it ends. Returns the
/// link's read half too, which holds the connection open: a link given up for silence (a
/// network fault) must not close before the next one has joined, or the master, reading
/// the close first, would take the node for dead and report its jobs lost.
pub(crate) async fn serve_link(
    d: &Daemon<'_>,
    link: Link,
    cookie: &mut u64,
) -> (End, OwnedReadHalf) {
    let (rd, master, node, ping_timeout, local) = attach(link, d.outbox);
    let mut s = Session { daemon: d, cookie, rd, master, node, ping_timeout, local };
    s.publish();
    let end = loop {
        let (id, msg) = match s.next_frame().await {
            Ok(f) => f,
            Err(end) => break end,
        };
        match s.handle(id, msg).await {
            Ok(Some(reply)) => d.outbox.send(id, reply),
            Ok(None) => {}
            Err(end) => break end,
        }
    };
    d.outbox.detach();
    d.state.set(None);
    (end, s.rd)
}

impl Session<'_, '_> {
    /// Tells the node's clients which link is current.
    fn publish(&self) {
        let (master, local, node) = (self.master, self.local, self.node);
        self.daemon.state.set(Some(proxy::Current { master, local, node }));
    }

    /// The next frame, or how the link ended (closed, failed, or silent for the ping
    /// timeout).
    async fn next_frame(&mut self) -> Result<(u32, Message), End> {
        match tokio::time::timeout(self.ping_timeout, read_frame(&mut self.rd)).await {
            Err(_) => Err(End::Lost(LinkError::Timeout("ping: no ping from the master"))),
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => Err(End::Lost(LinkError::Closed)),
            Ok(Err(e)) => Err(End::Lost(e)),
        }
    }

    /// Handles one frame from the master: its reply, if it has one now, or the session's
    /// end.
    async fn handle(&mut self, id: u32, msg: Message) -> Result<Option<Message>, End> {
        let d = self.daemon;
        let procs = d.procs;
        Ok(match msg {
            Message::Ping { seq, time_ms } => {
                tree::master_time(time_ms);
                d.procs.note_starts();
                Some(Message::Pong { seq, info: node_info() })
            }
            Message::Conf { node, cookie, ping_timeout, time_ms, grace } => {
                tree::master_time(time_ms);
                d.data.set_grace(grace);
                self.conf(node, cookie, ping_timeout);
                None
            }
            Message::Action { action } => return Err(End::Action(action)),
            Message::SlaveChroot { path } => Some(chroot(&path)),
            Message::StageFiles { port, token, files } => {
                self.stage_files(id, port, token, files);
                None
            }
            Message::SignalProc { launch, rank, signal } => {
                procs.signal(launch, rank, signal);
                None
            }
            Message::SignalPid { pid, signal, sender } => {
                procs.signal_pid(pid, signal, sender);
                None
            }
            Message::GhostOf { pid, ghost } => {
                procs.set_ghost(pid, ghost);
                None
            }
            Message::ForkAheadReply { seq, ghost } => {
                procs.fork_ahead_reply(seq, ghost);
                None
            }
            Message::ProcStatQuery { pids } => Some(Message::ProcStats {
                stats: pids.into_iter().filter_map(procs::stat).collect(),
            }),
            Message::SpawnTree { launch, nonce, time_ms, size, creds, spec, width, entries } => {
                let l = tree::Launch { launch, nonce, time_ms, size, creds, spec, width };
                tree::run(d.data.tree.clone(), l, entries, procs::Source::Launcher);
                None
            }
            Message::CopyOrder { creds, cwd, opts, task } => match d.data.copy.get() {
                Some(service) => {
                    let outbox = d.outbox.clone();
                    service.run_order(creds, cwd, opts, task, *self.master.ip(), move |m| {
                        outbox.send(id, m)
                    });
                    None
                }
                None => Some(error_reply(
                    bproc_proto::errno::EIO,
                    "this node's data port could not be opened".into(),
                )),
            },
            Message::SlaveReconnect { master, local } => Some(self.move_link(master, local).await),
            Message::Disconnect { reason, reconnect: true } => {
                return Err(End::Lost(LinkError::Refused(reason)))
            }
            Message::Disconnect { reason, reconnect: false } => return Err(End::Dismissed(reason)),
            Message::Unknown { msg_type } => {
                Some(error_reply(ENOSYS, format!("unknown message type {msg_type}")))
            }
            other => {
                Some(error_reply(EPROTO, format!("{} is not valid from a master", other.name())))
            }
        })
    }

    /// The master's new word on this session: its node number, cookie and ping timeout.
    fn conf(&mut self, node: i32, cookie: u64, ping_timeout: u32) {
        if node != self.node {
            info!("master renumbered this node from {} to {node}", self.node);
        }
        self.node = node;
        self.publish();
        *self.cookie = cookie;
        self.ping_timeout = Duration::from_secs(ping_timeout.max(2).into());
    }

    /// Stages the master's files (its libraries) on a diskless node, answering request `id`
    /// when done; a node with a filesystem of its own already has them.
    fn stage_files(&self, id: u32, port: u16, token: [u8; 16], files: Vec<bproc_proto::StagedRef>) {
        let d = self.daemon;
        let (outbox, diskless, master_ip) =
            (d.outbox.clone(), d.opts.diskless.clone(), *self.master.ip());
        tokio::spawn(async move {
            let reply = match &diskless {
                None => Message::Ok,
                Some(d) => {
                    let spec =
                        bproc_proto::ProcSpec { io_port: port, token, files, ..Default::default() };
                    let source = procs::Source::Launcher;
                    match procs::stage(d, &source, master_ip, &spec, u32::MAX).await {
                        Ok(()) => {
                            outbox.send(0, Message::Pong { seq: 0, info: node_info() });
                            Message::Ok
                        }
                        Err(e) => {
                            warn!("staging the master's libraries: {e}");
                            error_reply(bproc_proto::errno::EIO, e.to_string())
                        }
                    }
                }
            };
            outbox.send(id, reply);
        });
    }

    /// Moves the session to a new link (`bpctl --reconnect`); the reply to the master.
    async fn move_link(&mut self, master: Endpoint, local: Endpoint) -> Message {
        let d = self.daemon;
        match reconnect(d, self.master, self.local, master, local, self.cookie).await {
            Ok(new) => {
                info!("session moved to a new link to {}", new.master);
                (self.rd, self.master, self.node, self.ping_timeout, self.local) =
                    attach(new, d.outbox);
                self.publish();
                Message::Ok
            }
            Err(e) => error_reply(bproc_proto::errno::EIO, e.to_string()),
        }
    }
}

/// Opens a second link for the same session (`bpctl --reconnect`); omitted parts of the
/// endpoints keep the current link's values.
async fn reconnect(
    d: &Daemon<'_>,
    current: SocketAddrV4,
    current_local: Ipv4Addr,
    master: Endpoint,
    local: Endpoint,
    cookie: &mut u64,
) -> Result<Link, ReconnectError> {
    let target = SocketAddrV4::new(
        master.ip.unwrap_or(*current.ip()),
        if master.port == 0 { current.port() } else { master.port },
    );
    let source = local.ip.or(d.opts.source).or(Some(current_local));
    match open_link(d.opts, d.data, target, source, cookie).await {
        Ok(l) => Ok(l),
        Err(End::Lost(error)) => Err(ReconnectError::Lost { target, error }),
        Err(End::Dismissed(reason)) => Err(ReconnectError::Refusal { target, reason }),
        Err(End::Action(_)) => Err(ReconnectError::Interrupted),
    }
}
