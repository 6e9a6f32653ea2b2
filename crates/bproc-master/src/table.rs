//! The node table: every configured node's state, permissions and session, and the rules for
//! changing them (BProc 4.0's bpfs semantics). No I/O happens here: callers hold the
//! lock, call a method, and act on what it returns (send a message, notify watchers, persist).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

use bproc_proto::errno::{BE_INVALIDNODE, BE_NODEDOWN, EINVAL, ENODATA, ENOSPC, EPERM};
use bproc_proto::{Message, NodeInfo, NodeStatus, MAX_STATE_LEN};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::persist::Saved;

/// Mode of a node that has just connected: only root may start processes.
pub const BOOT_MODE: u32 = 0o100;
/// Most attributes one node holds.
pub const MAX_ATTRS: usize = 64;

/// Mode of a node that finished booting.
pub const UP_MODE: u32 = 0o111;

/// Who is asking, as the kernel told us (SO_PEERCRED) plus supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The cluster's administrator: root, or the user the master runs as (a user's own
    /// virtual cluster is theirs to administer). Holds BProc's root-only rights.
    pub admin: bool,
    /// The node and address a client on a node runs at (through its slave); `None` on the
    /// front end.
    pub origin: Option<(i32, Ipv4Addr)>,
    /// Its pid on the front end (from `SO_PEERCRED`); `None` for a client on a node.
    pub pid: Option<i32>,
    /// For a client on a node, its pid there as its slave sees it (the kernel's word).
    pub node_pid: Option<i32>,
    /// Where its launches take their resource limits and umask from.
    pub inherit: Inherit,
}

/// Where a caller's launches take their resource limits and umask from: the kernel, never
/// what the caller sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inherit {
    /// A process on the front end: read from its `/proc/PID` when it launches.
    Local(bproc_sys::peer::Peer),
    /// A client on a node: what its slave read from `/proc/PID` there when it connected.
    Reported(bproc_sys::peer::Inherited),
    /// Not known (the kernel named no pid): the caller cannot launch.
    Unknown,
}

impl Caller {
    fn is_root(&self) -> bool {
        self.admin
    }
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

pub use bproc_proto::Refusal;

/// Why a slave cannot join node `n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The configuration has no such node.
    #[error("node {0} is not configured")]
    NotConfigured(i32),
    /// Another slave holds the node's session.
    #[error("node {0} already has a live session with another cookie; refusing the second slave")]
    LiveSession(i32),
}

/// What goes to a slave's writer task.
// A frame is moved once into the channel and out again; boxing it would cost an allocation
// per frame to save copying a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outgoing {
    /// A frame with its request id.
    Frame(u32, Message),
    /// Send this reason and whether the slave may reconnect, then close the link.
    Close(String, bool),
}

/// A connected slave's session.
#[derive(Debug)]
pub struct Session {
    /// Cookie the slave presents to resume this session.
    pub cookie: u64,
    /// Identifies the connection currently carrying the session.
    pub conn: u64,
    /// The connection's writer.
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Ping credit: set to 2 by a pong, decremented by each ping.
    pub ping_in: u8,
    /// Requests to the slave awaiting replies, by request id.
    pub pending: HashMap<u32, oneshot::Sender<Message>>,
}

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Node number.
    pub number: i32,
    /// State string.
    pub state: String,
    /// Permission bits ⊆ 0111.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Address of the current connection.
    pub addr: Option<Ipv4Addr>,
    /// The slave's data port (copies), on `addr`.
    pub data_port: u16,
    /// The slave's tree port (launch trees), on `addr`.
    pub tree_port: u16,
    /// Latest machine report.
    pub info: Option<NodeInfo>,
    /// The live session, if connected.
    pub session: Option<Session>,
    /// What a previous master saved about this node, offered to a slave that resumes with the
    /// same cookie after a master restart.
    pub saved: Option<Saved>,
    /// Attributes set by the administrator (`bproc_setnodeattr`), kept while the node is up.
    pub attrs: BTreeMap<String, Vec<u8>>,
    /// Since when the node is unreachable: its link was lost without the slave leaving (or a
    /// previous master saved its session), and its jobs are kept for the grace period.
    pub unreachable_since: Option<Instant>,
}

impl Node {
    fn new(number: i32) -> Self {
        Node {
            number,
            state: "down".into(),
            mode: 0,
            uid: 0,
            gid: 0,
            addr: None,
            data_port: 0,
            tree_port: 0,
            info: None,
            session: None,
            saved: None,
            attrs: BTreeMap::new(),
            unreachable_since: None,
        }
    }

    /// The node as clients see it.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node: self.number,
            state: self.state.clone(),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            addr: self.addr,
            info: self.info.clone(),
        }
    }

    /// Whether the node is connected.
    pub fn is_up(&self) -> bool {
        self.session.is_some()
    }

    /// Sends a frame to the slave, if connected.
    pub fn send(&self, id: u32, msg: Message) {
        if let Some(s) = &self.session {
            let _ = s.tx.send(Outgoing::Frame(id, msg));
        }
    }

    /// Clears everything a down node must not keep and returns the session.
    pub fn go_down(&mut self) -> Option<Session> {
        self.state = "down".into();
        self.mode = 0;
        self.uid = 0;
        self.gid = 0;
        self.addr = None;
        self.info = None;
        self.attrs.clear();
        self.unreachable_since = None;
        self.session.take()
    }

    /// The link was lost while the slave may still run (no ping answered, a network fault):
    /// the session is kept as saved, for the slave to resume within the grace period, and the
    /// node shows `unreachable`. Returns the session, which the caller disconnects.
    pub fn go_unreachable(&mut self) -> Option<Session> {
        let s = self.session.take()?;
        self.saved = Some(Saved {
            cookie: s.cookie,
            state: std::mem::replace(&mut self.state, UNREACHABLE.into()),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            attrs: self.attrs.clone(),
        });
        self.addr = None;
        self.unreachable_since = Some(Instant::now());
        Some(s)
    }

    /// A saved session that no slave can resume any more: the node is down.
    pub fn forget_saved(&mut self) {
        self.saved = None;
        self.unreachable_since = None;
        if self.session.is_none() {
            self.state = "down".into();
            self.info = None;
        }
    }
}

/// The state of a node whose session waits for its slave to come back.
pub const UNREACHABLE: &str = "unreachable";

/// How a joining slave is received.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// A new session: the node boots.
    Fresh,
    /// A new session replacing a live one whose daemon restarted.
    Replace,
    /// The same session on a new connection (hot reconnect).
    Reconnect,
    /// A session saved by a previous master, resumed with its state and permissions.
    Resume,
}

/// The table of all configured nodes.
#[derive(Debug, Default)]
pub struct Table {
    nodes: BTreeMap<i32, Node>,
    /// Node numbers in configuration order.
    order: Vec<i32>,
}

/// Checks a state string: 1–15 characters of `[A-Za-z0-9]`.
pub fn check_state(state: &str) -> Result<(), Refusal> {
    if state.len() > MAX_STATE_LEN {
        return Err(Refusal::new(
            ENOSPC,
            format!("state \"{state}\" is longer than {MAX_STATE_LEN} characters"),
        ));
    }
    if state.is_empty() || !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Refusal::new(
            EINVAL,
            format!("state \"{state}\" must be 1-{MAX_STATE_LEN} letters and digits"),
        ));
    }
    Ok(())
}

impl Table {
    /// A table with every node of `config` down.
    pub fn from_config(config: &Config) -> Self {
        let mut t = Table::default();
        for n in config.node_numbers() {
            t.order.push(n);
            t.nodes.insert(n, Node::new(n));
        }
        t
    }

    /// Rebuilds the table for a new configuration (SIGHUP). Live sessions move to the node
    /// their address now maps to; the sessions whose address no longer maps anywhere, or
    /// whose new node is taken, are returned so the caller can disconnect them.
    pub fn reconfigure(&mut self, config: &Config) -> Vec<(i32, Session)> {
        let mut old = std::mem::take(self);
        *self = Table::from_config(config);
        let mut dropped = Vec::new();
        for number in old.order.clone() {
            let Some(mut node) = old.nodes.remove(&number) else {
                continue;
            };
            let target = node.addr.and_then(|a| config.node_for_addr(a));
            match target {
                Some(t) if self.nodes.get(&t).is_some_and(|n| !n.is_up()) => {
                    node.number = t;
                    node.saved = None;
                    self.nodes.insert(t, node);
                }
                _ => {
                    if let Some(s) = node.go_down() {
                        dropped.push((number, s));
                    } else if let Some(n) = self.nodes.get_mut(&number) {
                        // Keep what a previous master saved for nodes that still exist.
                        n.saved = node.saved;
                        n.unreachable_since = node.unreachable_since;
                        if n.unreachable_since.is_some() {
                            n.state = node.state;
                        }
                    }
                }
            }
        }
        dropped
    }

    /// The node, if configured.
    pub fn get(&self, n: i32) -> Option<&Node> {
        self.nodes.get(&n)
    }

    /// The node, if configured.
    pub fn get_mut(&mut self, n: i32) -> Option<&mut Node> {
        self.nodes.get_mut(&n)
    }

    /// Every node in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.order.iter().filter_map(|n| self.nodes.get(n))
    }

    /// Every node in configuration order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.nodes.values_mut()
    }

    /// Snapshot for clients, in configuration order.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.iter().map(Node::status).collect()
    }

    /// The snapshot of the configured nodes among `numbers`, in configuration order.
    pub fn statuses_of(&self, numbers: &[i32]) -> Vec<NodeStatus> {
        let wanted: std::collections::BTreeSet<i32> = numbers.iter().copied().collect();
        self.order
            .iter()
            .filter(|n| wanted.contains(n))
            .filter_map(|n| self.nodes.get(n))
            .map(Node::status)
            .collect()
    }

    /// Decides how a slave presenting `cookie` is received on node `n`.
    pub fn join_kind(&self, n: i32, cookie: u64) -> Result<JoinKind, JoinError> {
        let node = self.nodes.get(&n).ok_or(JoinError::NotConfigured(n))?;
        match &node.session {
            None if cookie != 0 && node.saved.as_ref().is_some_and(|s| s.cookie == cookie) => {
                Ok(JoinKind::Resume)
            }
            None => Ok(JoinKind::Fresh),
            Some(_) if cookie == 0 => Ok(JoinKind::Replace),
            Some(s) if s.cookie == cookie => Ok(JoinKind::Reconnect),
            Some(_) => Err(JoinError::LiveSession(n)),
        }
    }

    fn node_for_change(&mut self, n: i32) -> Result<&mut Node, Refusal> {
        if n == -1 {
            return Err(Refusal::new(
                ENODATA,
                "the master (node -1) has no state or permissions to change",
            ));
        }
        self.nodes
            .get_mut(&n)
            .ok_or_else(|| Refusal::new(BE_INVALIDNODE, format!("node {n} is not configured")))
    }

    /// Sets a state string. Setting `down` returns the session, which the caller disconnects.
    pub fn set_state(
        &mut self,
        caller: &Caller,
        n: i32,
        state: &str,
    ) -> Result<Option<Session>, Refusal> {
        check_state(state)?;
        let node = self.node_for_change(n)?;
        if !caller.is_root() {
            return Err(Refusal::new(EPERM, format!("only root may set the state of node {n}")));
        }
        if !node.is_up() {
            return Err(Refusal::new(
                BE_NODEDOWN,
                format!("node {n} is down; its state cannot be set"),
            ));
        }
        if state == "down" {
            return Ok(node.go_down());
        }
        node.state = state.to_owned();
        Ok(None)
    }

    /// One attribute of node `n`: `state`, `addr` (dotted IPv4, while up), or one that
    /// [`Table::set_attr`] set.
    pub fn attr(&self, n: i32, name: &str) -> Result<Vec<u8>, Refusal> {
        let node = self
            .nodes
            .get(&n)
            .ok_or_else(|| Refusal::new(BE_INVALIDNODE, format!("node {n} is not configured")))?;
        let missing = || Refusal::new(ENODATA, format!("node {n} has no attribute {name:?}"));
        match name {
            "state" => Ok(node.state.clone().into_bytes()),
            "addr" => node.addr.map(|a| a.to_string().into_bytes()).ok_or_else(missing),
            _ => node.attrs.get(name).cloned().ok_or_else(missing),
        }
    }

    /// Sets (or with an empty value removes) an attribute of node `n`: root only, while the
    /// node is up. `state` sets the state (see [`Table::set_state`], whose session return it
    /// shares); `addr` cannot be set.
    pub fn set_attr(
        &mut self,
        caller: &Caller,
        n: i32,
        name: &str,
        value: &[u8],
    ) -> Result<Option<Session>, Refusal> {
        if name == "state" {
            let state = std::str::from_utf8(value)
                .map_err(|_| Refusal::new(EINVAL, "a state is text"))?
                .trim_end_matches('\0');
            return self.set_state(caller, n, state);
        }
        let node = self.node_for_change(n)?;
        if !caller.is_root() {
            return Err(Refusal::new(EPERM, format!("only root may set attributes of node {n}")));
        }
        if name == "addr" {
            return Err(Refusal::new(EPERM, format!("the address of node {n} is read-only")));
        }
        if name.is_empty() || name.contains('\0') {
            return Err(Refusal::new(EINVAL, format!("bad attribute name {name:?}")));
        }
        if !node.is_up() {
            return Err(Refusal::new(
                BE_NODEDOWN,
                format!("node {n} is down; it has no attributes"),
            ));
        }
        if value.is_empty() {
            node.attrs.remove(name);
        } else if node.attrs.len() >= MAX_ATTRS && !node.attrs.contains_key(name) {
            return Err(Refusal::new(
                ENOSPC,
                format!("node {n} has {MAX_ATTRS} attributes already; remove one first"),
            ));
        } else {
            node.attrs.insert(name.to_owned(), value.to_vec());
        }
        Ok(None)
    }

    /// chmod, with BProc's rules: only execute bits, owner or root, not while down.
    pub fn chmod(&mut self, caller: &Caller, n: i32, mode: u32) -> Result<(), Refusal> {
        let node = self.node_for_change(n)?;
        if mode & !0o111 != 0 {
            return Err(Refusal::new(
                EPERM,
                format!(
                    "mode {mode:04o} for node {n}: only execute bits may be set (0100 owner, \
                     0010 group, 0001 others; 0111 for everyone)"
                ),
            ));
        }
        if !node.is_up() {
            return Err(Refusal::new(EPERM, format!("node {n} is down; its mode cannot change")));
        }
        if !caller.is_root() && caller.uid != node.uid {
            return Err(Refusal::new(EPERM, format!("only root or the owner may chmod node {n}")));
        }
        node.mode = mode;
        Ok(())
    }

    /// chown: root only, not while down.
    pub fn chown(&mut self, caller: &Caller, n: i32, uid: u32) -> Result<(), Refusal> {
        let node = self.node_for_change(n)?;
        if !node.is_up() {
            return Err(Refusal::new(EPERM, format!("node {n} is down; its owner cannot change")));
        }
        if !caller.is_root() {
            return Err(Refusal::new(EPERM, format!("only root may change the owner of node {n}")));
        }
        node.uid = uid;
        Ok(())
    }

    /// chgrp: root, or the owner to a group it belongs to; not while down.
    pub fn chgrp(&mut self, caller: &Caller, n: i32, gid: u32) -> Result<(), Refusal> {
        let node = self.node_for_change(n)?;
        if !node.is_up() {
            return Err(Refusal::new(EPERM, format!("node {n} is down; its group cannot change")));
        }
        if !(caller.is_root() || caller.uid == node.uid && caller.in_group(gid)) {
            return Err(Refusal::new(
                EPERM,
                format!("only root, or the owner of node {n} to a group it is in, may chgrp it"),
            ));
        }
        node.gid = gid;
        Ok(())
    }

    /// Checks that `caller` may start a process on node `n`: the node must be up,
    /// and the execute bit for the caller as owner, else group, else other must be set; root
    /// (the administrator) needs any one execute bit.
    pub fn may_run(&self, caller: &Caller, n: i32) -> Result<(), Refusal> {
        let node = self
            .nodes
            .get(&n)
            .ok_or_else(|| Refusal::new(BE_INVALIDNODE, format!("node {n} is not configured")))?;
        if !node.is_up() {
            return Err(Refusal::new(BE_NODEDOWN, format!("node {n} is down")));
        }
        let allowed = if caller.is_root() {
            node.mode & 0o111 != 0
        } else if caller.uid == node.uid {
            node.mode & 0o100 != 0
        } else if caller.in_group(node.gid) {
            node.mode & 0o010 != 0
        } else {
            node.mode & 0o001 != 0
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::new(
                EPERM,
                format!("no execute permission on node {n} (mode {:04o})", node.mode),
            ))
        }
    }

    /// Checks that a root caller may send a node command to `n`, which must be up.
    pub fn command_target(&mut self, caller: &Caller, n: i32) -> Result<&mut Node, Refusal> {
        if !caller.is_root() {
            return Err(Refusal::new(EPERM, format!("only root may send commands to node {n}")));
        }
        let node = self.node_for_change(n)?;
        if !node.is_up() {
            return Err(Refusal::new(BE_NODEDOWN, format!("node {n} is down")));
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(n: usize) -> Table {
        let text: String = (0..n).map(|i| format!("ip {i} 10.0.0.{}\n", i + 1)).collect();
        Table::from_config(&Config::parse(&text, Path::new("t")).unwrap())
    }

    fn connect(t: &mut Table, n: i32) -> mpsc::UnboundedReceiver<Outgoing> {
        let (tx, rx) = mpsc::unbounded_channel();
        let node = t.get_mut(n).unwrap();
        node.session =
            Some(Session { cookie: 7, conn: 1, tx, ping_in: 2, pending: HashMap::new() });
        node.state = "up".into();
        node.mode = UP_MODE;
        node.addr = Some(Ipv4Addr::new(10, 0, 0, n as u8 + 1));
        rx
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        admin: true,
        origin: None,
        pid: None,
        node_pid: None,
        inherit: Inherit::Unknown,
    };
    fn user(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: vec![],
            admin: false,
            origin: None,
            pid: None,
            node_pid: None,
            inherit: Inherit::Unknown,
        }
    }

    #[test]
    fn states_are_checked_like_bpfs() {
        assert_eq!(check_state("unavailable"), Ok(()));
        assert_eq!(check_state("a234567890123456").unwrap_err().code, ENOSPC);
        assert_eq!(check_state("up!").unwrap_err().code, EINVAL);
        assert_eq!(check_state("").unwrap_err().code, EINVAL);
    }

    #[test]
    fn only_root_sets_state_and_down_nodes_refuse() {
        let mut t = table(2);
        let _rx = connect(&mut t, 0);
        assert_eq!(t.set_state(&user(5, 5), 0, "busy").unwrap_err().code, EPERM);
        assert!(t.set_state(&ROOT, 0, "busy").unwrap().is_none());
        assert_eq!(t.get(0).unwrap().state, "busy");
        assert_eq!(t.set_state(&ROOT, 1, "up").unwrap_err().code, BE_NODEDOWN);
        assert_eq!(t.set_state(&ROOT, 9, "up").unwrap_err().code, BE_INVALIDNODE);
        assert_eq!(t.set_state(&ROOT, -1, "up").unwrap_err().code, ENODATA);
    }

    #[test]
    fn setting_down_clears_the_node_and_hands_back_the_session() {
        let mut t = table(1);
        let _rx = connect(&mut t, 0);
        t.chown(&ROOT, 0, 1000).unwrap();
        assert!(t.set_state(&ROOT, 0, "down").unwrap().is_some());
        let n = t.get(0).unwrap();
        assert_eq!((n.state.as_str(), n.mode, n.uid, n.addr), ("down", 0, 0, None));
    }

    #[test]
    fn permission_rules() {
        let mut t = table(1);
        let _rx = connect(&mut t, 0);
        assert_eq!(t.chmod(&ROOT, 0, 0o644).unwrap_err().code, EPERM);
        assert_eq!(t.chmod(&user(5, 5), 0, 0o100).unwrap_err().code, EPERM);
        assert_eq!(t.chown(&user(5, 5), 0, 5).unwrap_err().code, EPERM);
        t.chown(&ROOT, 0, 5).unwrap();
        t.chmod(&user(5, 5), 0, 0o100).unwrap();
        assert_eq!(t.chgrp(&user(5, 5), 0, 7).unwrap_err().code, EPERM);
        t.chgrp(
            &Caller {
                uid: 5,
                gid: 5,
                groups: vec![7],
                admin: false,
                origin: None,
                pid: None,
                node_pid: None,
                inherit: Inherit::Unknown,
            },
            0,
            7,
        )
        .unwrap();
        assert_eq!(t.chgrp(&user(6, 7), 0, 7).unwrap_err().code, EPERM);
        let n = t.get(0).unwrap();
        assert_eq!((n.mode, n.uid, n.gid), (0o100, 5, 7));
    }

    #[test]
    fn run_permission_follows_the_execute_bits() {
        let mut t = table(2);
        let _rx = connect(&mut t, 0);
        t.chown(&ROOT, 0, 5).unwrap();
        t.chgrp(&ROOT, 0, 7).unwrap();
        let owner = user(5, 5);
        let member = Caller {
            uid: 6,
            gid: 9,
            groups: vec![7],
            admin: false,
            origin: None,
            pid: None,
            node_pid: None,
            inherit: Inherit::Unknown,
        };
        let other = user(8, 8);
        for (mode, o, m, x) in [
            (0o100, true, false, false),
            (0o010, false, true, false),
            (0o001, false, false, true),
            (0o111, true, true, true),
        ] {
            t.chmod(&ROOT, 0, mode).unwrap();
            assert_eq!(t.may_run(&owner, 0).is_ok(), o, "owner, mode {mode:o}");
            assert_eq!(t.may_run(&member, 0).is_ok(), m, "member, mode {mode:o}");
            assert_eq!(t.may_run(&other, 0).is_ok(), x, "other, mode {mode:o}");
            assert!(t.may_run(&ROOT, 0).is_ok());
        }
        t.chmod(&ROOT, 0, 0).unwrap();
        assert_eq!(t.may_run(&ROOT, 0).unwrap_err().code, EPERM);
        assert_eq!(t.may_run(&ROOT, 1).unwrap_err().code, BE_NODEDOWN);
        assert_eq!(t.may_run(&ROOT, 7).unwrap_err().code, BE_INVALIDNODE);
    }

    #[test]
    fn join_decisions() {
        let mut t = table(1);
        assert_eq!(t.join_kind(0, 0), Ok(JoinKind::Fresh));
        let _rx = connect(&mut t, 0);
        assert_eq!(t.join_kind(0, 0), Ok(JoinKind::Replace));
        assert_eq!(t.join_kind(0, 7), Ok(JoinKind::Reconnect));
        assert!(t.join_kind(0, 8).is_err());
        t.get_mut(0).unwrap().go_down();
        t.get_mut(0).unwrap().saved = Some(Saved {
            cookie: 9,
            state: "up".into(),
            mode: 0o100,
            uid: 3,
            gid: 4,
            attrs: Default::default(),
        });
        assert_eq!(t.join_kind(0, 9), Ok(JoinKind::Resume));
        assert_eq!(t.join_kind(0, 8), Ok(JoinKind::Fresh));
    }

    #[test]
    fn reconfigure_moves_sessions_by_address() {
        let mut t = table(2);
        let _rx = connect(&mut t, 1);
        // Node 1's address 10.0.0.2 now belongs to node 5; 10.0.0.1 is gone.
        let cfg = Config::parse("ip 5 10.0.0.2\nip 6 10.0.0.3\n", Path::new("t")).unwrap();
        assert!(t.reconfigure(&cfg).is_empty());
        assert!(t.get(5).unwrap().is_up());
        assert!(t.get(0).is_none());
        let cfg = Config::parse("ip 6 10.0.0.3\n", Path::new("t")).unwrap();
        let dropped = t.reconfigure(&cfg);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, 5);
    }
}
