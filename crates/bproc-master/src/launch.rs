//! Launches: a client (bpsh) asks for one process per listed node; the master checks each
//! node's permissions with the caller's kernel-given identity and sends the launch down a
//! tree of slaves (at most `launchfanout` children per node, 32 by default, and about √N of
//! them for N nodes beyond that, see [`tree_width`]): it sends only to the first level, each
//! slave starts its ranks and passes the rest on, and every rank's outcome comes back on its
//! node's own link. So what the master sends per launch stays nearly flat as
//! the node count grows. It answers the client with the pids, then relays each process's exit
//! to the client until the client goes away.
//!
//! The launched processes get the caller's resource limits and umask as its kernel has them
//! (the caller's `/proc/PID` on the front end, read when it launches; for a client on a node,
//! what its slave read there), whatever the request says: a launcher that fakes `getrlimit`
//! gets nothing it does not have. The slave applies them after the identity switch, so they
//! can only lower what the node gives.
//!
//! Ranks on the front end are the launcher's to start; for a launcher on a node (`bpsh 1
//! bpsh master cmd`) its ghost starts them ([`Message::GhostSpawn`]) and reports their pids
//! and ends, which count only from that ghost and for those ranks. An rfork from a node (its
//! ghosts named [`bproc_proto::GHOST_FORKED`]) first has the caller's ghost fork a relaying
//! ghost per remote child, then launches the image with those ghosts.
//!
//! A rank with a ghost (a process the client made on the front end and named in the launch)
//! lives as long as its ghost. A rank without one lives as long as the client's connection: a
//! client that disconnects takes those still running with it (SIGKILL). A node that is lost
//! reports its processes as ended by node loss (`BE_SLAVEDIED`, seen as SIGKILL), so the
//! client never waits forever.

use std::collections::HashMap;
use std::sync::Arc;

use bproc_link::{write_frame, write_frames, FrameReader};
use bproc_proto::{errno, split_tree, tree_width, Creds, ExitStatus, Message, ProcSpec, TreeEntry};
use tokio::sync::mpsc;
use tracing::{debug, info};

use bproc_sys::peer::Inherited;

use crate::conn::{ClientRd, ClientWr};
use crate::table::{Caller, Inherit, Refusal};
use crate::Shared;

/// How long a launch waits for a rank's outcome before counting its node as dead (a node
/// lost on the way down the tree takes its subtree's reports with it).
const SPAWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a rank stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Spawn requested, no reply seen yet.
    Pending,
    /// Spawn requested and its exit already reported: a fast process whose exit overtook
    /// the spawn reply on its way through the master.
    EndedEarly(ExitStatus),
    /// Running.
    Running,
    /// Ended and reported, or never started.
    Done,
}

/// A launch's bookkeeping, shared with the slave links that report exits.
#[derive(Debug)]
pub(crate) struct Launch {
    /// Node of each rank.
    nodes: Vec<i32>,
    /// Ghost of each rank (0: none).
    ghosts: Vec<i32>,
    /// The caller's uid.
    uid: u32,
    /// Each rank's state.
    states: Vec<State>,
    /// Exits to relay to the client.
    events: mpsc::UnboundedSender<(u32, ExitStatus)>,
    /// Spawn outcomes (rank, pid or negated error) for the serving task.
    spawns: mpsc::UnboundedSender<(u32, i32)>,
    /// Why ranks failed to start, as their nodes said, for the launcher.
    reasons: Vec<Option<String>>,
    /// For a launcher on a node, its ghost, which starts the ranks on the front end (0:
    /// none); and those ranks' pids there once started.
    helper: i32,
    front: HashMap<u32, i32>,
    /// Where the ranks' forwarded stdout and stderr go (`None` for a move, whose process
    /// keeps where its output went before).
    output: Option<Output>,
}

/// Where a launch's forwarded output goes: the launcher's listener (bpsh's), or each rank's
/// relaying ghost, with the token the connections present.
#[derive(Debug, Clone)]
struct Output {
    ip: Option<std::net::Ipv4Addr>,
    port: u16,
    ports: Vec<u16>,
    token: [u8; 16],
    /// fds 1 and 2 forwarded.
    fds: [bool; 2],
}

impl Output {
    /// Rank `rank`'s streams.
    fn of(&self, rank: u32) -> crate::ghosts::Output {
        let port = self.ports.get(rank as usize).copied().filter(|p| *p != 0);
        crate::ghosts::Output {
            ip: self.ip,
            port: port.unwrap_or(self.port),
            token: self.token,
            rank,
            fds: self.fds,
        }
    }
}

impl Launch {
    /// Whether `rank` runs on the front end, started by `ghost` for a launcher on a node.
    fn is_front(&self, ghost: i32, rank: u32) -> bool {
        self.helper > 0
            && self.helper == ghost
            && self.nodes.get(rank as usize) == Some(&bproc_proto::NODE_MASTER)
    }

    /// The running front-end ranks' pids, each checked to be still the helper's child of
    /// the launch's user (a pid reused since is not signalled).
    fn front_running(&self) -> Vec<(u32, i32)> {
        self.front
            .iter()
            .filter(|(r, _)| self.states.get(**r as usize) == Some(&State::Running))
            .filter(|(_, p)| crate::ghosts::parent_and_uid(**p) == Some((self.helper, self.uid)))
            .map(|(r, p)| (*r, *p))
            .collect()
    }
}

/// Sends `signal` to the process group of each of `pids` (front-end ranks, each the leader
/// of its group).
fn signal_front(pids: impl IntoIterator<Item = i32>, signal: i32) {
    let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else { return };
    for pid in pids {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// All live launches by id.
#[derive(Debug, Default)]
pub(crate) struct Launches(std::sync::Mutex<HashMap<u64, Launch>>);

impl Launches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Launch>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slave reports that rank `rank` of `launch` ended.
    pub(crate) fn exited(&self, launch: u64, rank: u32, status: ExitStatus) {
        if let Some(l) = self.lock().get_mut(&launch) {
            match l.states.get(rank as usize) {
                Some(State::Running) => {
                    l.states[rank as usize] = State::Done;
                    let _ = l.events.send((rank, status));
                }
                Some(State::Pending) => l.states[rank as usize] = State::EndedEarly(status),
                _ => {}
            }
        }
    }

    /// A slave reports how starting `rank` went; returns the rank's ghost (0: none), the
    /// caller's uid and where the rank's output goes.
    pub(crate) fn rank_spawned(
        &self,
        launch: u64,
        rank: u32,
        pid: i32,
    ) -> Option<(i32, u32, Option<crate::ghosts::Output>)> {
        let g = self.lock();
        let l = g.get(&launch)?;
        let _ = l.spawns.send((rank, pid));
        let output = l.output.as_ref().map(|o| o.of(rank));
        Some((l.ghosts.get(rank as usize).copied().unwrap_or(0), l.uid, output))
    }

    /// Ghost `ghost` reports how starting front-end rank `rank` of `launch` went (only the
    /// launch's helper, for its front-end ranks).
    pub(crate) fn front_spawned(&self, ghost: i32, launch: u64, rank: u32, pid: i32) {
        let mut g = self.lock();
        let Some(l) = g.get_mut(&launch).filter(|l| l.is_front(ghost, rank)) else { return };
        if pid > 0 {
            l.front.insert(rank, pid);
        }
        let _ = l.spawns.send((rank, pid));
    }

    /// Ghost `ghost` reports that front-end rank `rank` of `launch`, its child, ended.
    pub(crate) fn front_exited(&self, ghost: i32, launch: u64, rank: u32, status: ExitStatus) {
        let helper = self.lock().get(&launch).is_some_and(|l| l.is_front(ghost, rank));
        if helper {
            self.exited(launch, rank, status);
        }
    }

    /// Node `n` says why rank `rank` of `launch` did not start (only for its own ranks).
    pub(crate) fn rank_refused(&self, n: i32, launch: u64, rank: u32, reason: String) {
        if let Some(l) = self.lock().get_mut(&launch) {
            let rank = rank as usize;
            if l.nodes.get(rank) == Some(&n) {
                l.reasons[rank] = Some(reason);
            }
        }
    }

    /// The reasons nodes gave for ranks of `launch` that did not start.
    fn reasons(&self, launch: u64) -> Vec<(u32, String)> {
        self.lock().get(&launch).map_or_else(Vec::new, |l| {
            l.reasons
                .iter()
                .enumerate()
                .filter_map(|(rank, r)| Some((rank as u32, r.clone()?)))
                .collect()
        })
    }

    /// Records the outcome of rank `rank`'s spawn; relays an exit that came first.
    fn spawned(&self, launch: u64, rank: usize, started: bool) {
        if let Some(l) = self.lock().get_mut(&launch) {
            l.states[rank] = match (l.states[rank], started) {
                (State::EndedEarly(status), true) => {
                    let _ = l.events.send((rank as u32, status));
                    State::Done
                }
                (State::Pending, true) => State::Running,
                _ => State::Done,
            };
        }
    }

    /// Node `n` is lost: every process there is reported ended by node loss, and ranks still
    /// starting there failed.
    pub(crate) fn node_lost(&self, n: i32) {
        for l in self.lock().values_mut() {
            for (rank, node) in l.nodes.iter().enumerate() {
                if *node != n {
                    continue;
                }
                match l.states[rank] {
                    State::Running => {
                        l.states[rank] = State::Done;
                        let _ = l.events.send((rank as u32, ExitStatus::NodeLost));
                    }
                    State::Pending => {
                        let _ = l.spawns.send((rank as u32, -errno::BE_SLAVEDIED));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Nodes with running ranks of `launch`.
    fn running_nodes(&self, launch: u64) -> Vec<i32> {
        let g = self.lock();
        let Some(l) = g.get(&launch) else {
            return Vec::new();
        };
        let mut nodes: Vec<i32> = l
            .nodes
            .iter()
            .zip(&l.states)
            .filter(|(_, s)| **s == State::Running)
            .map(|(n, _)| *n)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}

fn signal_launch(shared: &Shared, launch: u64, signal: i32) {
    let front = shared.launches.lock().get(&launch).map(Launch::front_running);
    signal_front(front.into_iter().flatten().map(|(_, p)| p), signal);
    let t = shared.table();
    for n in shared.launches.running_nodes(launch) {
        if let Some(node) = t.get(n) {
            node.send(0, Message::SignalProc { launch, rank: u32::MAX, signal });
        }
    }
}

/// The client of `launch` is gone: its running ranks without a ghost are killed.
fn orphaned(shared: &Shared, launch: u64) {
    let front = shared.launches.lock().get(&launch).map(Launch::front_running);
    signal_front(
        front.into_iter().flatten().map(|(_, p)| p),
        nix::sys::signal::Signal::SIGKILL as i32,
    );
    let ranks: Vec<(i32, u32)> = match shared.launches.lock().get(&launch) {
        Some(l) => (0..l.nodes.len())
            .filter(|&r| l.states[r] == State::Running && l.ghosts.get(r).is_none_or(|g| *g <= 0))
            .filter(|&r| l.nodes[r] != bproc_proto::NODE_MASTER)
            .map(|r| (l.nodes[r], r as u32))
            .collect(),
        None => return,
    };
    let t = shared.table();
    let signal = nix::sys::signal::Signal::SIGKILL as i32;
    for (n, rank) in ranks {
        if let Some(node) = t.get(n) {
            node.send(0, Message::SignalProc { launch, rank, signal });
        }
    }
}

/// The resource limits and umask `caller`'s processes get, from the kernel: read now from
/// its `/proc/PID` on the front end, or as its slave reported them. A launcher on the front
/// end that is gone (killed just after it sent its launch) made `ghosts` first, its children,
/// which stand for its processes now: they have its limits and umask, and a ghost of the
/// caller's uid is read instead (no more than the caller could set on a process of its own).
pub(crate) fn inherited(caller: &Caller, ghosts: &[i32]) -> Result<Inherited, Refusal> {
    match &caller.inherit {
        Inherit::Local(peer) => peer.inherited().or_else(|e| {
            ghosts.iter().find_map(|&g| ghost_inherited(g, caller.uid)).ok_or_else(|| {
                Refusal::new(errno::ESRCH, format!("cannot read the launcher's limits: {e}"))
            })
        }),
        Inherit::Reported(i) => Ok(i.clone()),
        Inherit::Unknown => Err(Refusal::new(
            errno::EPERM,
            "the kernel named no process for this client, so its limits are unknown",
        )),
    }
}

/// The limits and umask of `ghost`, if it is a live process of `uid` (whose `/proc/PID` it
/// owns, as [`crate::ghosts::Ghosts::claim`] asks of a ghost).
fn ghost_inherited(ghost: i32, uid: u32) -> Option<Inherited> {
    use std::os::unix::fs::MetadataExt;
    if ghost <= 0 {
        return None;
    }
    let peer = bproc_sys::peer::Peer::identify(ghost).ok()?;
    // Read between identifying it and reading its limits, which fails if the pid names
    // another process by then.
    let owner = std::fs::metadata(format!("/proc/{ghost}")).ok()?.uid();
    (owner == uid).then(|| peer.inherited().ok()).flatten()
}

/// How long a launch from a node waits for its caller's ghost on the front end: a process
/// forked on a node gets its ghost once the master hears of the fork, and one that moved
/// there is its ghost's once the master hears it was restored; either can come after the
/// process has already asked for something only its ghost can do (a rank on the front end,
/// an rfork, moving on).
const CALLER_GHOST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The connected ghost of a caller on a node, waited for up to [`CALLER_GHOST_WAIT`];
/// `None` for a caller on the front end, or one whose ghost does not come.
async fn caller_ghost(shared: &Shared, caller: &Caller) -> Option<i32> {
    let (Some((n, _)), Some(pid)) = (caller.origin, caller.node_pid) else { return None };
    ghost_of(shared, (n, pid), caller.uid, true).await
}

/// The ghost of process `key` (node, pid) of user `uid` (one that has connected, when
/// `connected`), waited for up to [`CALLER_GHOST_WAIT`].
async fn ghost_of(shared: &Shared, key: (i32, i32), uid: u32, connected: bool) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + CALLER_GHOST_WAIT;
    loop {
        let ghost = shared.ghosts.ghost_for(key, uid);
        if let Some(g) = ghost.filter(|g| !connected || shared.ghosts.connected(*g)) {
            return Some(g);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The ghosts of the children a process on a node rforks (ranks named
/// [`bproc_proto::GHOST_FORKED`] not on the front end): its own ghost forks one for each, a
/// relay of that child's output. Returns each rank's ghost (0: none) and relay port.
async fn rfork_ghosts(
    shared: &Shared,
    caller: &Caller,
    nodes: &[i32],
    asked: &[i32],
    spec: &ProcSpec,
) -> (Vec<i32>, Vec<u16>) {
    let mut ghosts = vec![0; nodes.len()];
    let mut ports = vec![0; nodes.len()];
    let want: Vec<usize> = (0..nodes.len())
        .filter(|&r| asked.get(r) == Some(&bproc_proto::GHOST_FORKED))
        .filter(|&r| nodes[r] != bproc_proto::NODE_MASTER)
        .collect();
    if want.is_empty() {
        return (ghosts, ports);
    }
    let Some(helper) = caller_ghost(shared, caller).await else {
        return (ghosts, ports);
    };
    let comm = spec.argv.first().cloned().unwrap_or_default();
    let made = shared.ghosts.rfork(helper, caller.uid, &comm, spec.token, want.len()).await;
    for (r, m) in want.into_iter().zip(made) {
        if let Some((pid, port)) = m {
            ghosts[r] = pid;
            ports[r] = port;
        }
    }
    (ghosts, ports)
}

/// A `Launch` request.
pub(crate) struct Request {
    pub nodes: Vec<i32>,
    pub spec: ProcSpec,
    pub ghosts: Vec<i32>,
    pub io_ports: Vec<u16>,
}

/// A launch as planned from its request, before anything is sent.
struct Plan {
    launch: u64,
    nodes: Vec<i32>,
    /// The spec as the nodes get it: the caller's limits and umask, its fds and image
    /// fetched from where it runs.
    spec: ProcSpec,
    /// Each rank's ghost (0: none).
    ghosts: Vec<i32>,
    /// The ghosts the request named.
    asked: Vec<i32>,
    /// Each rank's relay port for its output (0: the launcher's).
    io_ports: Vec<u16>,
    /// The launch carries a process image (a move or an rfork).
    image: bool,
    /// An rfork from a node: each child's ghost is forked by the caller's ghost.
    forking: bool,
    /// The process a node's client is, when it moves itself.
    mover: Option<(i32, i32)>,
    /// The ranks go back to the front end, into their ghosts.
    to_ghosts: bool,
    output: Option<Output>,
    /// For a launcher on a node with ranks on the front end, its ghost there, which starts
    /// them.
    helper: Option<i32>,
}

/// A launch's exits to relay to its client: (rank, how it ended).
type Exits = mpsc::UnboundedReceiver<(u32, ExitStatus)>;
/// A launch's start outcomes: (rank, pid or negated error).
type Spawns = mpsc::UnboundedReceiver<(u32, i32)>;

/// How each rank's start stands while the launch is under way.
struct Starts {
    /// Each rank's pid, or a negated error; 0 for "not attempted here".
    pids: Vec<i32>,
    /// Ranks whose outcome is still to come.
    waiting: Vec<bool>,
    /// Ranks that move back to the front end, into their ghosts.
    back: Vec<usize>,
    /// Ranks the launcher's ghost starts on the front end.
    front: Vec<usize>,
}

/// Serves a `Launch` request and the rest of the client's connection: plan it, send it down
/// the tree, wait for every rank's start, answer, then relay exits and signals until the
/// client goes away.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    caller: Caller,
    id: u32,
    req: Request,
    rd: ClientRd,
    mut wr: ClientWr,
) {
    let plan = match plan(&shared, &caller, req).await {
        Ok(p) => p,
        Err(refusal) => {
            let _ = write_frame(&mut wr, id, &refusal).await;
            return;
        }
    };
    let launch = plan.launch;
    let (events, spawns) = register(&shared, &caller, &plan);
    let mut starts = dispatch(&shared, &caller, &plan);
    start_on_front_end(&shared, &plan, &mut starts).await;
    wait_for_starts(&shared, launch, spawns, &mut starts).await;
    if plan.forking {
        settle_rfork(&shared, &caller, &plan.ghosts, &mut starts.pids);
    }
    let pids = starts.pids;
    let started = pids.iter().filter(|p| **p > 0).count();
    shared.metrics.launch();
    shared.metrics.ranks_started(started as u64);
    info!(
        "launch {launch}: uid {} started {started} of {} ({})",
        caller.uid,
        plan.nodes.len(),
        plan.spec.path
    );
    lost_on_the_way(&shared, launch, &plan.nodes, &pids);
    // What failed where, said by the nodes, ahead of the answer.
    for (rank, reason) in shared.launches.reasons(launch) {
        if pids.get(rank as usize).is_some_and(|p| *p <= 0) {
            let _ =
                write_frame(&mut wr, 0, &Message::RankRefused { launch: 0, rank, reason }).await;
        }
    }
    if write_frame(&mut wr, id, &Message::Launched { pids }).await.is_ok() {
        relay(&shared, launch, events, rd, wr).await;
    }
    // The client is gone: its processes without ghosts go too.
    orphaned(&shared, launch);
    shared.launches.lock().remove(&launch);
}

/// Checks a request and plans its launch; the refusal to answer with otherwise.
async fn plan(shared: &Shared, caller: &Caller, req: Request) -> Result<Plan, Message> {
    let Request { nodes, spec, ghosts: asked, io_ports } = req;
    // Its tree parts carry the spec too, each in one frame.
    if let Some(message) = spec.too_large() {
        return Err(Message::Error { code: errno::E2BIG, message });
    }
    let inherited = inherited(caller, &asked).map_err(|r| {
        info!("launch refused for uid {}: {}", caller.uid, r.message);
        r.to_message()
    })?;
    let launch = shared.launch_id();
    let image = spec.image.is_some();
    let forking = image && caller.pid.is_none() && asked.contains(&bproc_proto::GHOST_FORKED);
    let mover = match (caller.origin, caller.node_pid) {
        (Some((n, _)), Some(pid)) if image && !forking => Some((n, pid)),
        _ => None,
    };
    let (ghosts, io_ports) = if forking {
        rfork_ghosts(shared, caller, &nodes, &asked, &spec).await
    } else {
        (rank_ghosts(shared, caller, &asked, nodes.len(), mover).await, io_ports)
    };
    // Nodes connect a launcher's fds back to where it runs, never where it claims to, and
    // fetch an image from there too; a moving process's output goes to its ghost, here.
    let to_ghosts = mover.is_some() && ghosts.iter().all(|g| *g > 0);
    let mut spec = ProcSpec {
        rlimits: inherited.rlimits,
        umask: inherited.umask,
        io_ip: if to_ghosts || forking { None } else { caller.origin.map(|o| o.1) },
        image: spec.image.map(|e| bproc_proto::Endpoint { ip: caller.origin.map(|o| o.1), ..e }),
        ..spec
    };
    // A process moving on from a node, whose output no ghost relays: its stdout and stderr
    // join its launcher's streams again (bpsh's, or its relaying ghost's), as the same rank.
    if let Some(key) = mover.filter(|_| io_ports.iter().all(|p| *p == 0)) {
        let out = (ghosts.first().copied().unwrap_or(0) > 0)
            .then(|| shared.ghosts.output_of(key))
            .flatten();
        rejoin_output(&mut spec, out.as_ref());
    }
    let forwarded = |fd: usize| spec.io.get(fd) == Some(&bproc_proto::IoSpec::Forward);
    let output = (mover.is_none() && (forwarded(1) || forwarded(2))).then(|| Output {
        ip: spec.io_ip,
        port: spec.io_port,
        ports: io_ports.clone(),
        token: spec.token,
        fds: [forwarded(1), forwarded(2)],
    });
    // A launcher on a node has its ranks on the front end started by its ghost there, the
    // user's own process: the master daemon runs no user code.
    let front_end = nodes.contains(&bproc_proto::NODE_MASTER);
    let helper = if image || !front_end { None } else { caller_ghost(shared, caller).await };
    Ok(Plan {
        launch,
        nodes,
        spec,
        ghosts,
        asked,
        io_ports,
        image,
        forking,
        mover,
        to_ghosts,
        output,
        helper,
    })
}

/// Each of `ranks` ranks' ghost (0: none), from those the request named (`asked`): ghosts
/// are the caller's own children on the front end (or the caller itself, for a move); a
/// process moving from a node (`mover`) keeps its ghost; anything else runs without.
async fn rank_ghosts(
    shared: &Shared,
    caller: &Caller,
    asked: &[i32],
    ranks: usize,
    mover: Option<(i32, i32)>,
) -> Vec<i32> {
    // A process that moves on right after it arrived may ask before its arrival is recorded.
    let mover_ghost = match mover {
        Some(key) if asked.contains(&-1) => ghost_of(shared, key, caller.uid, false).await,
        _ => None,
    };
    (0..ranks)
        .map(|r| {
            let g = asked.get(r).copied().unwrap_or(0);
            let ghost = match (caller.pid, mover) {
                (Some(me), _) => shared.ghosts.claim(g, me, caller.uid).then_some(g),
                // -1: the moving process's own ghost.
                (None, Some(_)) if g == -1 => mover_ghost,
                _ => None,
            };
            ghost.unwrap_or(0)
        })
        .collect()
}

/// Points a moving process's forwarded stdout and stderr at where they went before it moved
/// (`out`, if its ghost knows), as the same rank; without that they go nowhere.
fn rejoin_output(spec: &mut ProcSpec, out: Option<&crate::ghosts::Output>) {
    for fd in 1..spec.io.len().min(3) {
        if spec.io[fd] != bproc_proto::IoSpec::Forward {
            continue;
        }
        spec.io[fd] = match out {
            Some(o) if o.fds[fd - 1] => {
                bproc_proto::IoSpec::Rejoin { ip: o.ip, port: o.port, token: o.token, rank: o.rank }
            }
            _ => bproc_proto::IoSpec::Null,
        };
    }
}

/// Records the launch for the slave links that report on it; returns where its exits and
/// its ranks' start outcomes arrive.
fn register(shared: &Shared, caller: &Caller, plan: &Plan) -> (Exits, Spawns) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (spawns_tx, spawns) = mpsc::unbounded_channel();
    let ranks = plan.nodes.len();
    shared.launches.lock().insert(
        plan.launch,
        Launch {
            nodes: plan.nodes.clone(),
            ghosts: plan.ghosts.clone(),
            uid: caller.uid,
            states: vec![State::Pending; ranks],
            events: tx,
            spawns: spawns_tx,
            reasons: vec![None; ranks],
            helper: plan.helper.unwrap_or(0),
            front: HashMap::new(),
            output: plan.output.clone(),
        },
    );
    (rx, spawns)
}

/// Sends the launch down the tree of slaves, one entry per node in the order nodes first
/// appear (a node may run several ranks); ranks that cannot start are settled at once, and
/// those on the front end sorted out for [`start_on_front_end`].
fn dispatch(shared: &Shared, caller: &Caller, plan: &Plan) -> Starts {
    let ranks = plan.nodes.len();
    let mut starts = Starts {
        pids: vec![0; ranks],
        waiting: vec![false; ranks],
        back: Vec::new(),
        front: Vec::new(),
    };
    let launch = plan.launch;
    let creds = Creds { uid: caller.uid, gid: caller.gid, groups: caller.groups.clone() };
    let nonce = {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the kernel's random source failed");
        u64::from_be_bytes(b)
    };
    let mut entries: Vec<TreeEntry> = Vec::new();
    let t = shared.table();
    let mut index = HashMap::new();
    for (rank, &n) in plan.nodes.iter().enumerate() {
        if n == bproc_proto::NODE_MASTER {
            front_end_rank(shared, caller, plan, rank, &mut starts);
            continue;
        }
        let refused = |pid: i32, starts: &mut Starts| {
            starts.pids[rank] = pid;
            shared.launches.spawned(launch, rank, false);
        };
        if plan.forking && plan.ghosts[rank] <= 0 {
            // Its ghost did not come: it would run unseen on the front end.
            let reason = format!("node {n}: no ghost could be made for the child");
            shared.launches.rank_refused(n, launch, rank as u32, reason);
            refused(-errno::EAGAIN, &mut starts);
            continue;
        }
        let node = match t.may_run(caller, n) {
            Ok(()) => t.get(n).filter(|node| node.addr.is_some()),
            Err(refusal) => {
                refused(-refusal.code, &mut starts);
                continue;
            }
        };
        let Some(node) = node else {
            refused(-errno::BE_NODEDOWN, &mut starts);
            continue;
        };
        let i = *index.entry(n).or_insert_with(|| {
            entries.push(TreeEntry {
                node: n,
                ip: node.addr.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                port: node.tree_port,
                ranks: Vec::new(),
                pids: Vec::new(),
                ports: Vec::new(),
            });
            entries.len() - 1
        });
        entries[i].ranks.push(rank as u32);
        entries[i].pids.push(plan.ghosts[rank]);
        entries[i].ports.push(plan.io_ports.get(rank).copied().unwrap_or(0));
        starts.waiting[rank] = true;
    }
    let width = tree_width(entries.len(), shared.config().launch_fanout);
    for part in split_tree(&entries, width) {
        let msg = Message::SpawnTree {
            launch,
            nonce,
            time_ms: crate::now_ms(),
            size: ranks as u32,
            creds: creds.clone(),
            spec: plan.spec.clone(),
            width,
            entries: part.to_vec(),
        };
        if let Some(node) = t.get(part[0].node) {
            node.send(0, msg);
        }
    }
    starts
}

/// Sorts out rank `rank` on the front end. The launcher runs it itself, as the caller, or
/// from a node its ghost does; the master daemon never runs user code (pid 0 means "not
/// attempted here"). A process coming back from a node is restored by its ghost.
fn front_end_rank(shared: &Shared, caller: &Caller, plan: &Plan, rank: usize, st: &mut Starts) {
    let (launch, n) = (plan.launch, bproc_proto::NODE_MASTER);
    if plan.to_ghosts {
        st.back.push(rank);
    } else if plan.forking && plan.asked.get(rank) == Some(&bproc_proto::GHOST_FORKED) {
        st.pids[rank] = -errno::EOPNOTSUPP;
        let reason = "master: an rfork from a node places no child on the front end";
        shared.launches.rank_refused(n, launch, rank as u32, reason.into());
    } else if caller.origin.is_some() && !plan.image {
        if plan.helper.is_some() {
            st.front.push(rank);
            st.waiting[rank] = true;
            return;
        }
        st.pids[rank] = -errno::EOPNOTSUPP;
        let reason = "master: cannot run on the front end: the launcher has no ghost there to \
                      start it (only a process started from the front end has one)";
        shared.launches.rank_refused(n, launch, rank as u32, reason.into());
    }
    shared.launches.spawned(launch, rank, false);
}

/// Has the launcher's ghost start its ranks on the front end, and ghosts take back the
/// processes that move there.
async fn start_on_front_end(shared: &Shared, plan: &Plan, starts: &mut Starts) {
    if let Some(g) = plan.helper {
        for &rank in &starts.front {
            let msg = Message::GhostSpawn {
                launch: plan.launch,
                rank: rank as u32,
                spec: plan.spec.clone(),
            };
            shared.ghosts.send_to(g, msg);
        }
    }
    if let (Some(key), Some(from)) = (plan.mover, plan.spec.image) {
        for &rank in &starts.back {
            let (ghost, token) = (plan.ghosts[rank], plan.spec.token);
            starts.pids[rank] = shared.ghosts.take_back(ghost, key, from, token).await;
        }
    }
}

/// Waits up to [`SPAWN_TIMEOUT`] for the outcome of every rank still starting; a rank that
/// never reports counts as on a dead node.
async fn wait_for_starts(shared: &Shared, launch: u64, mut spawns: Spawns, starts: &mut Starts) {
    let Starts { pids, waiting, .. } = starts;
    let mut left = waiting.iter().filter(|w| **w).count();
    let deadline = tokio::time::Instant::now() + SPAWN_TIMEOUT;
    while left > 0 {
        let (rank, pid) = tokio::select! {
            r = spawns.recv() => match r { Some(r) => r, None => break },
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let rank = rank as usize;
        if rank < waiting.len() && waiting[rank] {
            waiting[rank] = false;
            left -= 1;
            pids[rank] = pid;
            shared.launches.spawned(launch, rank, pid > 0);
        }
    }
    for rank in (0..waiting.len()).filter(|&r| waiting[r]) {
        debug!("launch {launch}: rank {rank} never reported; counting its node as dead");
        pids[rank] = -errno::BE_SLAVEDIED;
        shared.launches.spawned(launch, rank, false);
    }
}

/// After an rfork from a node: the caller knows its children by their ghosts (the same pids
/// on root slaves), and the ghosts forked for children that did not start stand for nothing.
fn settle_rfork(shared: &Shared, caller: &Caller, ghosts: &[i32], pids: &mut [i32]) {
    for (pid, g) in pids.iter_mut().zip(ghosts) {
        if *pid > 0 && *g > 0 {
            *pid = *g;
        }
    }
    let made = ghosts.iter().zip(pids.iter()).filter(|(g, p)| **g > 0 && **p <= 0);
    let helper = caller
        .node_pid
        .zip(caller.origin)
        .and_then(|(pid, (n, _))| shared.ghosts.ghost_for((n, pid), caller.uid));
    for (&g, _) in made {
        if helper.is_some_and(|h| crate::ghosts::parent_and_uid(g) == Some((h, caller.uid))) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        shared.ghosts.abandon(g);
    }
}

/// A node lost while its spawn reply was on the way: its process is gone.
fn lost_on_the_way(shared: &Shared, launch: u64, nodes: &[i32], pids: &[i32]) {
    let t = shared.table();
    for (rank, &n) in nodes.iter().enumerate() {
        let here = n == bproc_proto::NODE_MASTER;
        if pids[rank] > 0 && !here && !t.get(n).is_some_and(|node| node.is_up()) {
            shared.launches.exited(launch, rank as u32, ExitStatus::NodeLost);
        }
    }
}

/// Relays the ranks' exits (`events`) to the client, and its signals to the ranks, until
/// the client goes away.
async fn relay(shared: &Shared, launch: u64, mut events: Exits, rd: ClientRd, mut wr: ClientWr) {
    // Cancel-safe: the select below also waits for the ranks' exits.
    let mut frames = FrameReader::new(rd);
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some((rank, status)) = ev else { break };
                // The exits that came together go in one write: a thousand ranks of a
                // short program end in a burst, and each write wakes the client.
                let exit = |rank, status| Message::ProcExit { launch: 0, rank, status };
                let more = || events.try_recv().ok().map(|(r, s)| (0, exit(r, s)));
                if write_frames(&mut wr, 0, &exit(rank, status), more).await.is_err() {
                    break;
                }
            }
            frame = frames.next() => match frame {
                Ok(Some((rid, Message::SignalLaunch { signal }))) => {
                    signal_launch(shared, launch, signal);
                    if write_frame(&mut wr, rid, &Message::Ok).await.is_err() {
                        break;
                    }
                }
                Ok(Some((rid, other))) => {
                    let msg = Message::Error {
                        code: errno::EPROTO,
                        message: format!("{} is not valid during a launch", other.name()),
                    };
                    if write_frame(&mut wr, rid, &msg).await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
}
