//! BProc's configuration file (`/etc/clustermatic/config`), as bpmaster reads it.
//!
//! The file is shared with the rest of Clustermatic (beoserv, beoboot, the rc scripts), so
//! this parser accepts the whole family of directives, records the ones bpmaster uses into a
//! [`Config`], and reports the ones nobody knows as [`Warning`]s rather than failing on them.
//!
//! # Syntax
//!
//! The format is BProc's `cmconf`:
//!
//! - One directive per line: a case-sensitive tag followed by arguments.
//! - Arguments are separated by whitespace. `"…"` and `'…'` quote whitespace, and may start
//!   or stop in the middle of an argument (`a"b c"d` is the one argument `ab cd`). A backslash
//!   escapes the next character, inside quotes too. `""` is an empty argument.
//! - `#` outside quotes starts a comment that runs to the end of the line.
//! - Each tag has a minimum and a maximum argument count.
//! - Tags are processed in three passes, so their relative order across passes does not
//!   matter: pass 0 sets the scalar options (`bprocport`, `pingtimeout`, …), pass 1 the
//!   listening sockets (`interface`, `listen`) and paths, pass 2 the node table (`ip`,
//!   `iprange`) and `master`, pass 3 the boot server's lines (after the node table, which
//!   they refer to). Hence `listen 10.0.0.1` followed by `bprocport 3000` listens on
//!   port 3000. Within a pass, lines apply in file order.
//!
//! Parsing is all-or-nothing: the first error fails the whole load, which the daemon treats as
//! "refuse to start" (or "keep the old configuration" on SIGHUP).
//!
//! ```
//! use bproc_master::config::Config;
//! let text = "iprange 10.0.0.10 10.0.0.12  # three nodes\nip 10.0.0.20\n";
//! let config = Config::parse(text, std::path::Path::new("config")).unwrap();
//! assert_eq!(config.node_numbers().collect::<Vec<_>>(), [0, 1, 2, 3]);
//! assert_eq!(config.node_for_addr("10.0.0.20".parse().unwrap()), Some(3));
//! ```
//!
//! # Deliberate differences from BProc 4.0.0pre8
//!
//! Where BProc's behaviour is an accident that contradicts its own documentation or would
//! surprise a user, we do what the user expects:
//!
//! 1. **Unknown directives are warned about** (`unknown directive `foo` (ignored)`), not
//!    silently ignored; the configuration still loads. Directives that other Clustermatic
//!    components read from the same file (`nodes`, `kernelimage`, …) are accepted without a
//!    warning; the boot server's (`bootfile`, `node`, …) are checked and recorded in
//!    [`Config::boot`] (see [`crate::bootconf`]).
//! 2. **Error line numbers are the real ones.** BProc keeps counting lines across passes, so
//!    its errors in later passes point past the end of the file.
//! 3. **`#` inside quotes or after a backslash is part of the argument.** BProc cuts every
//!    line at its first `#`, quoted or not.
//! 4. **An unterminated quote or a backslash at the end of a line is an error.** BProc lets a
//!    quote run to the end of the line and reads past the end of the line after a trailing
//!    backslash.
//! 5. **`ip NODE ADDR ADDR…` is accepted**, as the man page promises ("one or more IP
//!    addresses"); BProc's maximum of 2 arguments rejects it.
//! 6. **`ip NODE` without an address is an error.** BProc silently moves the "next node"
//!    counter and assigns nothing.
//! 7. **`iprange ADDR1 ADDR2` without NODE is accepted**, as the man page's `[NODE]`
//!    promises; BProc's minimum of 3 arguments makes NODE mandatory.
//! 8. **`iprange` with ADDR2 before ADDR1 is an error.** BProc silently assigns nothing.
//! 9. **The overlap error names the address and its owner**: `IP already allocated: ADDR
//!    (node N)`, for `iprange` too (BProc: "Duplicate IP addresses in range").
//! 10. **Addresses must be dotted quads** (`10.0.0.1`). BProc uses `inet_aton`, which also
//!     takes `10.1`, `0x0a000001` and `167772161`.
//! 11. **An empty argument is not a node number.** `strtol("")` succeeds with 0, so in BProc
//!     `ip "" 10.0.0.1` assigns node 0.
//! 12. **Node numbers and node counts are bounded**: node numbers must fit an `i32` (BProc
//!     truncates a `long`), and at most [`bproc_proto::MAX_NODES`] nodes may be configured, the
//!     most a node list on the wire can carry. BProc allocates a map as large as the highest
//!     node number, so `ip 2000000000 …` exhausts memory.
//! 13. **`bprocport` takes a number before a service name** (BProc asks `/etc/services`
//!     first, which only matters for a service whose name is a number).
//! 14. **A `master` port of 0 is an error**: no slave can connect to it. BProc accepts it.
//! 15. **`interface` is not resolved while parsing.** BProc opens the listening socket from
//!     inside the parser; we record the name and the daemon binds after a successful load.
//! 16. **Messages follow this workspace's style**: `FILE:LINE: message`, lowercase.
//!
//! # Extensions
//!
//! `listen ADDR[:PORT]` (an IPv4 literal; port 0 picks a free port, which tests use), `socket
//! PATH` (the client Unix socket), `keyfile PATH` (the cluster key), `statedir DIR` (the state
//! file's directory) and `logdir DIR` (`node_up` logs). Relative paths are taken relative to
//! the configuration file's directory, so a configuration and its key can move together.
//! `nodename FORMAT` names every node (`%N`: its number) for the NSS module.
//! `statuspage ADDR[:PORT]` serves the read-only status page and Prometheus metrics there
//! (`statuspage off`, the default, serves nothing).
//! `libraries` and `librariesfrombinary` (read by the beoboot rc script in BProc) are recorded
//! raw, so a replacement for that script can use them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::{Path, PathBuf};

use bproc_proto::MAX_NODES;

use crate::bootconf::BootConfig;
use thiserror::Error;

pub use bproc_proto::DEFAULT_PORT;
/// Default `launchfanout`: a launch reaches 1024 nodes in two hops.
pub const DEFAULT_LAUNCH_FANOUT: u32 = 32;
/// Default `maxclientsperuser`: client connections one user other than root may hold.
pub const DEFAULT_MAX_CLIENTS_PER_USER: u32 = 256;
/// The default `pingtimeout`, in seconds.
pub const DEFAULT_PING_TIMEOUT: u32 = 30;
/// The smallest `pingtimeout` BProc allows, in seconds.
pub const MIN_PING_TIMEOUT: u32 = 2;
/// The default `nodeuptimeout`, in seconds: a boot that takes longer is taken as hung.
pub const DEFAULT_NODE_UP_TIMEOUT: u32 = 300;
/// The default `graceperiod`, in seconds.
pub const DEFAULT_GRACE: u32 = 60;
/// The default `logfacility`.
pub const DEFAULT_LOG_FACILITY: &str = "daemon";
/// The port of `statuspage ADDR` without a port.
pub const DEFAULT_STATUS_PORT: u16 = 8080;

/// The syslog facility names `logfacility` accepts (glibc's `facilitynames`).
const LOG_FACILITIES: &[&str] = &[
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "mark", "news", "security",
    "syslog", "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
];

/// Directives other Clustermatic components read from the same file; accepted silently.
const FOREIGN_DIRECTIVES: &[&str] = &[
    "nodes",
    "mcastbcast",
    "mcastport",
    "mcastthrottle",
    "nodeupmaxclients",
    "nodeupmaxworkers",
    "nodeupworker",
    "node_up",
    "kernelimage",
    "pxefileserver",
    "pxeinterface",
    "moduleinfo",
    "insmod",
    "modprobe",
    "prestage",
    "fsck",
    "filecache",
    "beoboot",
    "bootmodule",
    "host",
];

/// The file `bprocport` service names are looked up in.
const SERVICES: &str = "/etc/services";

/// One configured node and the addresses its slave may connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    /// The node number (0 or more).
    pub node: i32,
    /// Its addresses, in the order the file gives them; never empty.
    pub addrs: Vec<Ipv4Addr>,
}

/// A problem in the file that does not stop it from loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The configuration file.
    pub file: PathBuf,
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// One argument of a directive that is resolved later (an interface, a library path), with
/// its line, so that what goes wrong then is reported at that line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigArg {
    /// The argument as written (quotes removed).
    pub arg: String,
    /// The 1-based line number.
    pub line: usize,
}

impl PartialEq<&str> for ConfigArg {
    fn eq(&self, other: &&str) -> bool {
        self.arg == *other
    }
}

/// A loaded configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from; relative paths in it were resolved against its directory.
    pub path: PathBuf,
    /// `bprocport`: the TCP port slaves connect to, default [`DEFAULT_PORT`].
    pub port: u16,
    /// `interface NAME`: listen on the IPv4 address of each of these interfaces, on
    /// [`port`](Self::port). Resolved by the daemon when it binds.
    pub interfaces: Vec<ConfigArg>,
    /// `listen ADDR[:PORT]` (extension): more addresses to listen on. The port defaults to
    /// [`port`](Self::port); 0 means any free port.
    pub listen: Vec<SocketAddr>,
    /// `pingtimeout`: seconds without a ping before a slave is declared dead, at least
    /// [`MIN_PING_TIMEOUT`]. Sent to the slaves.
    pub ping_timeout: u32,
    /// `graceperiod` (ours): seconds a session outlives its link, default [`DEFAULT_GRACE`].
    /// An unreachable node keeps its jobs that long; a slave without its master that long
    /// kills them itself. Sent to the slaves.
    pub grace: u32,
    /// `nodeuptimeout` (ours): seconds the `node_up` program may run, default
    /// [`DEFAULT_NODE_UP_TIMEOUT`]; 0 for no limit. One still running then is killed and the
    /// node goes to `error`.
    pub node_up_timeout: u32,
    /// `launchfanout` (ours): how many nodes each node passes a launch on to, default
    /// [`DEFAULT_LAUNCH_FANOUT`].
    pub launch_fanout: u32,
    /// `maxclientsperuser` (ours): client connections one user other than root (and the
    /// master's own user) may hold at once, default [`DEFAULT_MAX_CLIENTS_PER_USER`]. Ghosts
    /// do not count. Local and node clients count alike.
    pub max_clients_per_user: u32,
    /// `allowinsecureports`: accept slaves whose source port is 1024 or more.
    pub allow_insecure_ports: bool,
    /// `logfacility`: the syslog facility, lowercase, default [`DEFAULT_LOG_FACILITY`].
    pub log_facility: String,
    /// `slave timesync` / `slavetimesync`: slaves set their clocks from the master's pings.
    pub slave_timesync: bool,
    /// `slave privatefs`: each slave daemon builds a private tmpfs root.
    pub slave_privatefs: bool,
    /// The node table (`ip`, `iprange`), each node once, in order of first appearance.
    pub nodes: Vec<NodeAddrs>,
    /// `master HOST[:PORT]`: every master of a multi-master cluster, resolved.
    pub masters: Vec<SocketAddr>,
    /// The raw arguments of every `libraries` line (paths or globs), in file order.
    pub libraries: Vec<ConfigArg>,
    /// The raw arguments of every `librariesfrombinary` line, in file order.
    pub libraries_from_binary: Vec<ConfigArg>,
    /// `socket PATH` (extension): the client Unix socket.
    pub socket: Option<PathBuf>,
    /// `keyfile PATH` (extension): the cluster key.
    pub keyfile: Option<PathBuf>,
    /// `statedir DIR` (extension): where the state file lives.
    pub statedir: Option<PathBuf>,
    /// `logdir DIR` (extension): where `node_up` logs go.
    pub logdir: Option<PathBuf>,
    /// `statuspage ADDR[:PORT]` (extension): where the status page and `/metrics` are
    /// served; `None` (the default, or `statuspage off`): nowhere.
    pub status_page: Option<SocketAddr>,
    /// `nodename FORMAT` (Scyld's, the first argument only): more names for every node,
    /// `%N` standing for its number (`nodename node%N`), in file order. The NSS module
    /// resolves them beside `nN` and `.N`.
    pub node_names: Vec<String>,
    /// The boot server's directives (`bootfile`, `node`, ...), which bpmaster only checks.
    pub boot: BootConfig,
    /// Lines that were ignored, such as unknown directives.
    pub warnings: Vec<Warning>,
}

/// Why a configuration file cannot be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is invalid.
    #[error("{}:{line}: {problem}", path.display())]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line (printed here, so not a source).
        problem: LineError,
    },
}

/// What is wrong with one line of the configuration file; [`ConfigError::Syntax`] adds the
/// file and line.
#[derive(Debug, Error)]
pub enum LineError {
    /// A quote is not closed before the end of the line.
    #[error("unterminated {0} quote")]
    UnterminatedQuote(char),
    /// A backslash has nothing to escape.
    #[error("backslash at the end of the line")]
    TrailingBackslash,
    /// More arguments than the directive takes.
    #[error("too many arguments for {tag} (max = {max})")]
    TooManyArgs {
        /// The directive.
        tag: String,
        /// The most it takes.
        max: usize,
    },
    /// Fewer arguments than the directive needs.
    #[error("too few arguments for {tag} (min = {min})")]
    TooFewArgs {
        /// The directive.
        tag: String,
        /// The fewest it takes.
        min: usize,
    },
    /// A flag that is neither `yes` nor `no`.
    #[error("{tag} must be yes or no, not `{arg}`")]
    YesNo {
        /// The directive.
        tag: String,
        /// What was given.
        arg: String,
    },
    /// Not a dotted-quad IPv4 address.
    #[error("invalid IP address: {0}")]
    Addr(String),
    /// Not a port number.
    #[error("invalid port for {what}: {arg} (must be {min}-65535)")]
    Port {
        /// The directive.
        what: &'static str,
        /// What was given.
        arg: String,
        /// The smallest port allowed.
        min: i64,
    },
    /// `statuspage` is neither an address nor `off`.
    #[error("invalid statuspage: {0} (expected ADDR[:PORT], such as 127.0.0.1:8080, or off)")]
    StatusPage(String),
    /// `bprocport` names no TCP service in `/etc/services`.
    #[error("bprocport: unknown service or invalid port: {0}")]
    Service(String),
    /// A node number below 0.
    #[error("invalid node number: {0} (must be 0 or more)")]
    NegativeNode(String),
    /// A node number beyond an `i32`.
    #[error("invalid node number: {0} (too large)")]
    NodeTooLarge(String),
    /// Not a node number.
    #[error("invalid node number: {0}")]
    NotANode(String),
    /// The node after the last one assigned does not fit an `i32`.
    #[error("no node number after {0}")]
    NoNodeAfter(i64),
    /// An address already belongs to a node.
    #[error("IP already allocated: {ip} (node {node})")]
    AddrTaken {
        /// The address.
        ip: Ipv4Addr,
        /// The node it belongs to.
        node: i32,
    },
    /// More nodes than a node list on the wire can carry.
    #[error("too many nodes (at most {MAX_NODES})")]
    TooManyNodes,
    /// `ip NODE` without an address.
    #[error("missing address for node {0}")]
    MissingAddr(i32),
    /// `iprange NODE` with one address.
    #[error("iprange needs two addresses after the node number")]
    RangeArgs,
    /// `iprange` with its first address after its last.
    #[error("invalid range: {first} comes after {last}")]
    Range {
        /// The first address, as given.
        first: String,
        /// The last address, as given.
        last: String,
    },
    /// An `iprange`'s node numbers would pass `i32::MAX`.
    #[error("node numbers from {0} run past {max}", max = i32::MAX)]
    NodesRunPast(i32),
    /// A path directive with an empty argument.
    #[error("empty path for {0}")]
    EmptyPath(String),
    /// `logfacility` names no syslog facility.
    #[error("unknown log facility: {0}")]
    LogFacility(String),
    /// `pingtimeout` is not a number.
    #[error("invalid number for pingtimeout: {0}")]
    PingTimeout(String),
    /// `pingtimeout` is below the minimum.
    #[error("pingtimeout must be {MIN_PING_TIMEOUT} seconds or more, not {0}")]
    PingTimeoutSmall(String),
    /// `pingtimeout` does not fit a `u32`.
    #[error("pingtimeout too large: {0}")]
    PingTimeoutLarge(String),
    /// A number outside the range its directive allows.
    #[error("{tag} must be {range}, not {arg}")]
    OutOfRange {
        /// The directive.
        tag: String,
        /// What it must be.
        range: &'static str,
        /// What was given.
        arg: String,
    },
    /// `slave OPTION` with an option we do not know.
    #[error("unknown slave option: {0}")]
    SlaveOption(String),
    /// A `nodename` format that cannot name nodes.
    #[error(
        "invalid nodename: {0} (letters, digits, `-`, `.`, `_` and %N for the node number, \
         such as node%N)"
    )]
    NodeName(String),
    /// `listen` is not `IPV4[:PORT]`.
    #[error("invalid listen address: {0} (expected IPV4[:PORT])")]
    Listen(String),
    /// The same `listen` address twice.
    #[error("duplicate listen address: {0}")]
    DuplicateListen(SocketAddr),
    /// A `master` host does not resolve.
    #[error("cannot resolve master host {host}: {error}")]
    Resolve {
        /// The host.
        host: String,
        /// Why (printed here, so not a source).
        error: std::io::Error,
    },
    /// A `master` host has only IPv6 addresses.
    #[error("master host {0} has no IPv4 address")]
    NoIpv4(String),
    /// The same master twice.
    #[error("duplicate master address: {arg} ({addr})")]
    DuplicateMaster {
        /// The argument as given.
        arg: String,
        /// What it resolved to.
        addr: SocketAddr,
    },
    /// A boot server line is invalid.
    #[error(transparent)]
    Boot(#[from] crate::bootconf::BootError),
}

impl Config {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read (or is not UTF-8), otherwise as
    /// [`parse`](Self::parse).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path`, which names the file in messages and anchors
    /// relative paths. Host names in `master` lines are resolved, and `bprocport` service
    /// names are looked up in `/etc/services`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Syntax`] for the first invalid line: bad quoting, a wrong argument count,
    /// an invalid value, an address given twice, a host that does not resolve. Unknown
    /// directives are not errors; they become [`Config::warnings`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let syntax = |line, problem| ConfigError::Syntax { path: path.into(), line, problem };
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let args = split_line(raw).map_err(|m| syntax(i + 1, m))?;
            if !args.is_empty() {
                lines.push(Line { number: i + 1, args });
            }
        }
        let mut parser = Parser::new(path);
        for pass in 0..=3 {
            for line in &lines {
                let directive = Directive::from_tag(&line.args[0]);
                if directive.pass() == pass {
                    parser.apply(directive, line).map_err(|m| syntax(line.number, m))?;
                }
            }
        }
        Ok(parser.finish())
    }

    /// The node `ip` belongs to: the first in table order whose addresses include it.
    pub fn node_for_addr(&self, ip: Ipv4Addr) -> Option<i32> {
        self.nodes.iter().find(|n| n.addrs.contains(&ip)).map(|n| n.node)
    }

    /// The configured node numbers, in table order.
    pub fn node_numbers(&self) -> impl Iterator<Item = i32> + '_ {
        self.nodes.iter().map(|n| n.node)
    }
}

/// One non-empty line, split into arguments; `args[0]` is the tag.
struct Line {
    number: usize,
    args: Vec<String>,
}

/// C's `isspace` in the "C" locale (which, unlike [`char::is_ascii_whitespace`], includes
/// vertical tab).
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits one line into arguments, dropping its comment.
fn split_line(line: &str) -> Result<Vec<String>, LineError> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(args),
            Some(_) => {}
        }
        let mut arg = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => match chars.next() {
                    Some(escaped) => arg.push(escaped),
                    None => return Err(LineError::TrailingBackslash),
                },
                (c, Some(q)) if c == q => quote = None,
                (c, Some(_)) => arg.push(c),
                ('"' | '\'', None) => quote = Some(c),
                ('#', None) => {
                    // A comment ends the line; what came before it is still an argument.
                    args.push(arg);
                    return Ok(args);
                }
                (c, None) if is_c_space(c) => break,
                (c, None) => arg.push(c),
            }
        }
        if let Some(q) = quote {
            return Err(LineError::UnterminatedQuote(q));
        }
        args.push(arg);
    }
}

/// The tags the parser knows, with their pass and argument counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    BprocPort,
    AllowInsecurePorts,
    LogFacility,
    PingTimeout,
    GracePeriod,
    NodeUpTimeout,
    LaunchFanout,
    MaxClientsPerUser,
    SlaveTimesync,
    Slave,
    Interface,
    Listen,
    Socket,
    Keyfile,
    Statedir,
    Logdir,
    StatusPage,
    NodeName,
    Ip,
    IpRange,
    Master,
    Libraries,
    LibrariesFromBinary,
    /// Read by the boot server ([`crate::bootconf`]).
    Boot,
    /// Read by another Clustermatic component.
    Foreign,
    Unknown,
}

impl Directive {
    fn from_tag(tag: &str) -> Directive {
        match tag {
            "bprocport" => Directive::BprocPort,
            "allowinsecureports" => Directive::AllowInsecurePorts,
            "logfacility" => Directive::LogFacility,
            "pingtimeout" => Directive::PingTimeout,
            "graceperiod" => Directive::GracePeriod,
            "nodeuptimeout" => Directive::NodeUpTimeout,
            "launchfanout" => Directive::LaunchFanout,
            "maxclientsperuser" => Directive::MaxClientsPerUser,
            "slavetimesync" => Directive::SlaveTimesync,
            "slave" => Directive::Slave,
            "interface" => Directive::Interface,
            "listen" => Directive::Listen,
            "socket" => Directive::Socket,
            "keyfile" => Directive::Keyfile,
            "statedir" => Directive::Statedir,
            "logdir" => Directive::Logdir,
            "statuspage" => Directive::StatusPage,
            "nodename" => Directive::NodeName,
            "ip" => Directive::Ip,
            "iprange" => Directive::IpRange,
            "master" => Directive::Master,
            "libraries" => Directive::Libraries,
            "librariesfrombinary" => Directive::LibrariesFromBinary,
            "bootfile" | "bootserver" | "bootport" | "bootkey" | "pxeloader"
            | "kernelcommandline" | "node" => Directive::Boot,
            t if FOREIGN_DIRECTIVES.contains(&t) => Directive::Foreign,
            _ => Directive::Unknown,
        }
    }

    /// The pass the directive is applied in.
    fn pass(self) -> u8 {
        use Directive::*;
        match self {
            Interface | Listen | Socket | Keyfile | Statedir | Logdir | StatusPage => 1,
            Ip | IpRange | Master => 2,
            Boot => 3,
            _ => 0,
        }
    }

    /// The values a directive of one number allows, and how a message describes them.
    fn bounds(self) -> (std::ops::RangeInclusive<u32>, &'static str) {
        use Directive::*;
        match self {
            GracePeriod => (1..=86_400, "a number of seconds from 1 to 86400"),
            NodeUpTimeout => (0..=86_400, "a number of seconds from 0 (no limit) to 86400"),
            LaunchFanout => (1..=1024, "a number from 1 to 1024"),
            MaxClientsPerUser => (1..=1 << 20, "a number from 1 to 1048576"),
            _ => (0..=u32::MAX, "a number"),
        }
    }

    /// The minimum and maximum (`None`: unbounded) number of arguments after the tag.
    fn arity(self) -> (usize, Option<usize>) {
        use Directive::*;
        match self {
            AllowInsecurePorts => (0, Some(0)),
            BprocPort | LogFacility | PingTimeout | GracePeriod | NodeUpTimeout | LaunchFanout
            | MaxClientsPerUser | SlaveTimesync | Listen | Socket | Keyfile | Statedir | Logdir
            | StatusPage | NodeName => (1, Some(1)),
            Interface => (1, Some(3)),
            IpRange => (2, Some(3)),
            Slave | Ip | Master | Boot => (1, None),
            Libraries | LibrariesFromBinary | Foreign | Unknown => (0, None),
        }
    }
}

/// Checks the argument count of `name`, whose arguments are `args`.
fn check_arity(
    name: &str,
    args: &[String],
    (min, max): (usize, Option<usize>),
) -> Result<(), LineError> {
    if let Some(max) = max.filter(|&max| args.len() > max) {
        return Err(LineError::TooManyArgs { tag: name.into(), max });
    }
    if args.len() < min {
        return Err(LineError::TooFewArgs { tag: name.into(), min });
    }
    Ok(())
}

/// Parses an integer the way C's `strtol(s, &end, 0)` does when it must consume all of `s`:
/// optional sign, then `0x` hex, `0` octal or decimal. Out-of-range values saturate, as
/// `strtol` clamps them. Unlike `strtol`, the empty string is not 0.
pub(crate) fn parse_c_integer(s: &str) -> Option<i64> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) =
        if let Some(hex) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
            (16, hex)
        } else if rest.len() > 1 && rest.starts_with('0') {
            (8, &rest[1..])
        } else {
            (10, rest)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // The digits are valid, so the only possible failure is overflow.
    let magnitude = i64::from_str_radix(digits, radix).unwrap_or(i64::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

/// Parses `yes` or `no`, case-insensitively.
fn parse_yes_no(name: &str, arg: &str) -> Result<bool, LineError> {
    if arg.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(LineError::YesNo { tag: name.into(), arg: arg.into() })
    }
}

/// `pingtimeout SECONDS`, at least [`MIN_PING_TIMEOUT`].
fn parse_ping_timeout(arg: &str) -> Result<u32, LineError> {
    let n = parse_c_integer(arg).ok_or_else(|| LineError::PingTimeout(arg.into()))?;
    if n < i64::from(MIN_PING_TIMEOUT) {
        return Err(LineError::PingTimeoutSmall(arg.into()));
    }
    u32::try_from(n).map_err(|_| LineError::PingTimeoutLarge(arg.into()))
}

/// The number `arg` of `tag`, within the range `directive` allows.
fn bounded(tag: &str, arg: &str, directive: Directive) -> Result<u32, LineError> {
    let (range, what) = directive.bounds();
    parse_c_integer(arg)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| range.contains(n))
        .ok_or_else(|| LineError::OutOfRange { tag: tag.into(), range: what, arg: arg.into() })
}

/// Parses a dotted-quad IPv4 address.
fn parse_addr(arg: &str) -> Result<Ipv4Addr, LineError> {
    arg.parse().map_err(|_| LineError::Addr(arg.into()))
}

/// Parses a port number for `what`; `allow_zero` admits 0 ("any free port").
fn parse_port(what: &'static str, arg: &str, allow_zero: bool) -> Result<u16, LineError> {
    let min = if allow_zero { 0 } else { 1 };
    parse_c_integer(arg)
        .filter(|&p| p >= min)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| LineError::Port { what, arg: arg.into(), min })
}

/// `statuspage ADDR[:PORT]` or `statuspage off`; the port defaults to
/// [`DEFAULT_STATUS_PORT`], 0 picks a free one.
fn parse_status_page(arg: &str) -> Result<Option<SocketAddr>, LineError> {
    if arg == "off" {
        return Ok(None);
    }
    if let Ok(ip) = arg.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, DEFAULT_STATUS_PORT)));
    }
    arg.parse().map(Some).map_err(|_| LineError::StatusPage(arg.into()))
}

/// Finds the TCP port of service `name` (or one of its aliases) in `services`, a file in
/// `/etc/services` format.
fn lookup_service(services: &str, name: &str) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let service = fields.next()?;
        let (port, proto) = fields.next()?.split_once('/')?;
        let named = service == name || fields.any(|alias| alias == name);
        (named && proto == "tcp").then(|| port.parse().ok()).flatten()
    })
}

/// `bprocport PORT`: a port number or a TCP service name.
fn parse_bprocport(arg: &str) -> Result<u16, LineError> {
    if parse_c_integer(arg).is_some() {
        return parse_port("bprocport", arg, false);
    }
    std::fs::read_to_string(SERVICES)
        .ok()
        .and_then(|services| lookup_service(&services, arg))
        .filter(|&port| port != 0)
        .ok_or_else(|| LineError::Service(arg.into()))
}

/// The node table under construction.
#[derive(Default)]
struct NodeTable {
    nodes: Vec<NodeAddrs>,
    /// Node number → position in `nodes`.
    index: HashMap<i32, usize>,
    /// Address → the node it is assigned to.
    owner: HashMap<Ipv4Addr, i32>,
    /// The node an `ip` or `iprange` without NODE assigns; may exceed `i32::MAX`.
    next: i64,
}

impl NodeTable {
    /// The node number given by `arg`, if it is an integer.
    fn node_arg(arg: &str) -> Option<Result<i32, LineError>> {
        let n = parse_c_integer(arg)?;
        Some(if n < 0 {
            Err(LineError::NegativeNode(arg.into()))
        } else {
            i32::try_from(n).map_err(|_| LineError::NodeTooLarge(arg.into()))
        })
    }

    /// The node after the last one assigned.
    fn next_node(&self) -> Result<i32, LineError> {
        i32::try_from(self.next).map_err(|_| LineError::NoNodeAfter(self.next - 1))
    }

    fn add(&mut self, node: i32, ip: Ipv4Addr) -> Result<(), LineError> {
        if let Some(&owner) = self.owner.get(&ip) {
            return Err(LineError::AddrTaken { ip, node: owner });
        }
        let slot = match self.index.get(&node) {
            Some(&slot) => slot,
            None => {
                if self.nodes.len() >= MAX_NODES {
                    return Err(LineError::TooManyNodes);
                }
                self.index.insert(node, self.nodes.len());
                self.nodes.push(NodeAddrs { node, addrs: Vec::new() });
                self.nodes.len() - 1
            }
        };
        self.nodes[slot].addrs.push(ip);
        self.owner.insert(ip, node);
        Ok(())
    }

    /// `ip [NODE] ADDR...`
    fn ip(&mut self, args: &[String]) -> Result<(), LineError> {
        let (node, addrs) = match Self::node_arg(&args[0]) {
            Some(node) => (node?, &args[1..]),
            None => (self.next_node()?, args),
        };
        if addrs.is_empty() {
            return Err(LineError::MissingAddr(node));
        }
        let addrs = addrs.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>, _>>()?;
        for addr in addrs {
            self.add(node, addr)?;
        }
        self.next = i64::from(node) + 1;
        Ok(())
    }

    /// `iprange [NODE] ADDR1 ADDR2`
    fn iprange(&mut self, args: &[String]) -> Result<(), LineError> {
        let (start, range) = match (Self::node_arg(&args[0]), args.len()) {
            (Some(node), 3) => (node?, &args[1..]),
            (Some(_), _) => return Err(LineError::RangeArgs),
            (None, 2) => (self.next_node()?, args),
            (None, _) => return Err(LineError::NotANode(args[0].clone())),
        };
        let first = u32::from(parse_addr(&range[0])?);
        let last = u32::from(parse_addr(&range[1])?);
        if last < first {
            return Err(LineError::Range { first: range[0].clone(), last: range[1].clone() });
        }
        // `span` is one less than the number of addresses, so the full range fits a u32.
        let span = last - first;
        if usize::try_from(span).map_or(true, |span| span >= MAX_NODES) {
            return Err(LineError::TooManyNodes);
        }
        let end = i64::from(start) + i64::from(span) + 1;
        if end - 1 > i64::from(i32::MAX) {
            return Err(LineError::NodesRunPast(start));
        }
        // Look for overlaps in whichever set is smaller: a wide range against a short table
        // or a short range against a wide table.
        let overlap = if usize::try_from(span).is_ok_and(|span| span < self.owner.len()) {
            (first..=last).find(|&ip| self.owner.contains_key(&Ipv4Addr::from(ip)))
        } else {
            self.owner
                .keys()
                .map(|&ip| u32::from(ip))
                .filter(|ip| (first..=last).contains(ip))
                .min()
        };
        if let Some(ip) = overlap {
            let ip = Ipv4Addr::from(ip);
            return Err(LineError::AddrTaken { ip, node: self.owner[&ip] });
        }
        for (node, ip) in (start..).zip(first..=last) {
            self.add(node, Ipv4Addr::from(ip))?;
        }
        self.next = end;
        Ok(())
    }
}

/// Applies directives to a [`Config`] that starts with the defaults.
struct Parser {
    config: Config,
    /// The directory relative paths are resolved against.
    dir: PathBuf,
    table: NodeTable,
    listen_seen: HashSet<SocketAddr>,
}

impl Parser {
    fn new(path: &Path) -> Parser {
        Parser {
            config: Config {
                path: path.into(),
                port: DEFAULT_PORT,
                interfaces: Vec::new(),
                listen: Vec::new(),
                ping_timeout: DEFAULT_PING_TIMEOUT,
                grace: DEFAULT_GRACE,
                launch_fanout: DEFAULT_LAUNCH_FANOUT,
                node_up_timeout: DEFAULT_NODE_UP_TIMEOUT,
                max_clients_per_user: DEFAULT_MAX_CLIENTS_PER_USER,
                allow_insecure_ports: false,
                log_facility: DEFAULT_LOG_FACILITY.into(),
                slave_timesync: true,
                slave_privatefs: false,
                nodes: Vec::new(),
                masters: Vec::new(),
                libraries: Vec::new(),
                libraries_from_binary: Vec::new(),
                socket: None,
                keyfile: None,
                statedir: None,
                logdir: None,
                status_page: None,
                node_names: Vec::new(),
                boot: BootConfig::default(),
                warnings: Vec::new(),
            },
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            table: NodeTable::default(),
            listen_seen: HashSet::new(),
        }
    }

    fn finish(mut self) -> Config {
        self.config.nodes = self.table.nodes;
        self.config
    }

    /// `arg` as a path, relative ones taken from the configuration file's directory.
    fn path_arg(&self, tag: &str, arg: &str) -> Result<PathBuf, LineError> {
        if arg.is_empty() {
            return Err(LineError::EmptyPath(tag.into()));
        }
        Ok(self.dir.join(arg))
    }

    fn apply(&mut self, directive: Directive, line: &Line) -> Result<(), LineError> {
        let (tag, args) = (&line.args[0], &line.args[1..]);
        check_arity(tag, args, directive.arity())?;
        let c = &mut self.config;
        match directive {
            Directive::Interface => {
                c.interfaces.push(ConfigArg { arg: args[0].clone(), line: line.number })
            }
            Directive::Listen => {
                let addr = self.listen(&args[0])?;
                self.config.listen.push(addr);
            }
            Directive::Socket => self.config.socket = Some(self.path_arg(tag, &args[0])?),
            Directive::Keyfile => self.config.keyfile = Some(self.path_arg(tag, &args[0])?),
            Directive::Statedir => self.config.statedir = Some(self.path_arg(tag, &args[0])?),
            Directive::Logdir => self.config.logdir = Some(self.path_arg(tag, &args[0])?),
            Directive::StatusPage => self.config.status_page = parse_status_page(&args[0])?,
            Directive::Ip => self.table.ip(args)?,
            Directive::IpRange => self.table.iprange(args)?,
            Directive::Master => {
                for arg in args {
                    self.master(arg)?;
                }
            }
            Directive::Libraries => c
                .libraries
                .extend(args.iter().map(|a| ConfigArg { arg: a.clone(), line: line.number })),
            Directive::LibrariesFromBinary => c
                .libraries_from_binary
                .extend(args.iter().map(|a| ConfigArg { arg: a.clone(), line: line.number })),
            Directive::Boot => {
                if let Some(node) = c.boot.apply(tag, args, &self.dir)? {
                    if !self.table.index.contains_key(&node) {
                        c.warnings.push(Warning {
                            file: c.path.clone(),
                            line: line.number,
                            message: format!(
                                "node {node} has no ip or iprange address: the boot server \
                                 cannot answer its hardware address"
                            ),
                        });
                    }
                }
            }
            Directive::Foreign => {}
            Directive::Unknown => c.warnings.push(Warning {
                file: c.path.clone(),
                line: line.number,
                message: format!("unknown directive `{tag}` (ignored)"),
            }),
            _ => self.option(directive, tag, args)?,
        }
        Ok(())
    }

    /// The directives that set one of the daemon's options (pass 0) from their arguments.
    fn option(
        &mut self,
        directive: Directive,
        tag: &str,
        args: &[String],
    ) -> Result<(), LineError> {
        let c = &mut self.config;
        match directive {
            Directive::BprocPort => c.port = parse_bprocport(&args[0])?,
            Directive::AllowInsecurePorts => c.allow_insecure_ports = true,
            Directive::LogFacility => {
                let name = args[0].to_ascii_lowercase();
                if !LOG_FACILITIES.contains(&name.as_str()) {
                    return Err(LineError::LogFacility(args[0].clone()));
                }
                c.log_facility = name;
            }
            Directive::PingTimeout => c.ping_timeout = parse_ping_timeout(&args[0])?,
            Directive::GracePeriod
            | Directive::NodeUpTimeout
            | Directive::LaunchFanout
            | Directive::MaxClientsPerUser => {
                let field = match directive {
                    Directive::GracePeriod => &mut c.grace,
                    Directive::NodeUpTimeout => &mut c.node_up_timeout,
                    Directive::LaunchFanout => &mut c.launch_fanout,
                    _ => &mut c.max_clients_per_user,
                };
                *field = bounded(tag, &args[0], directive)?;
            }
            Directive::SlaveTimesync => c.slave_timesync = parse_yes_no(tag, &args[0])?,
            Directive::Slave => {
                let (option, values) = (&args[0], &args[1..]);
                let name = format!("slave {option}");
                let flag = match option.as_str() {
                    "timesync" => &mut c.slave_timesync,
                    "privatefs" => &mut c.slave_privatefs,
                    _ => return Err(LineError::SlaveOption(option.clone())),
                };
                check_arity(&name, values, (1, Some(1)))?;
                *flag = parse_yes_no(&name, &values[0])?;
            }
            Directive::NodeName => {
                let format = &args[0];
                let valid = |c: char| c.is_ascii_alphanumeric() || "-._%".contains(c);
                if !format.contains("%N") || !format.chars().all(valid) {
                    return Err(LineError::NodeName(format.clone()));
                }
                c.node_names.push(format.clone());
            }
            other => unreachable!("{other:?} is not an option directive"),
        }
        Ok(())
    }

    /// `listen ADDR[:PORT]`
    fn listen(&mut self, arg: &str) -> Result<SocketAddr, LineError> {
        let (host, port) = match arg.split_once(':') {
            Some((host, port)) => (host, parse_port("listen", port, true)?),
            None => (arg, self.config.port),
        };
        let ip: Ipv4Addr = host.parse().map_err(|_| LineError::Listen(arg.into()))?;
        let addr = SocketAddr::from(SocketAddrV4::new(ip, port));
        if port != 0 && !self.listen_seen.insert(addr) {
            return Err(LineError::DuplicateListen(addr));
        }
        Ok(addr)
    }

    /// One `master HOST[:PORT]` argument.
    fn master(&mut self, arg: &str) -> Result<(), LineError> {
        let (host, port) = match arg.split_once(':') {
            Some((host, port)) => (host, parse_port("master", port, false)?),
            None => (arg, self.config.port),
        };
        let resolved = (host, port)
            .to_socket_addrs()
            .map_err(|error| LineError::Resolve { host: host.into(), error })?
            .find(|a| matches!(a.ip(), IpAddr::V4(_)))
            .ok_or_else(|| LineError::NoIpv4(host.into()))?;
        if self.config.masters.contains(&resolved) {
            return Err(LineError::DuplicateMaster { arg: arg.into(), addr: resolved });
        }
        self.config.masters.push(resolved);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.conf")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> String {
        match Config::parse(text, Path::new("test.conf")) {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node(node: i32, addrs: &[&str]) -> NodeAddrs {
        NodeAddrs { node, addrs: addrs.iter().map(|a| ip(a)).collect() }
    }

    fn split(line: &str) -> Vec<String> {
        split_line(line).unwrap()
    }

    #[test]
    fn defaults() {
        let c = parse("");
        assert_eq!(c.path, Path::new("test.conf"));
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.ping_timeout, DEFAULT_PING_TIMEOUT);
        assert_eq!(c.log_facility, "daemon");
        assert!(c.slave_timesync);
        assert!(!c.slave_privatefs);
        assert!(!c.allow_insecure_ports);
        assert!(c.nodes.is_empty() && c.interfaces.is_empty() && c.listen.is_empty());
        assert!(c.masters.is_empty() && c.warnings.is_empty());
        assert_eq!((c.socket, c.keyfile, c.statedir, c.logdir), (None, None, None, None));
        assert!(parse("\n   \n# only a comment\n\t\n").nodes.is_empty());
    }

    #[test]
    fn spec_sample() {
        let c = parse(
            "interface eth1\n\
             iprange 0 10.0.0.10 10.0.0.17\n\
             bootfile /var/clustermatic/boot.img\n\
             librariesfrombinary /bin/sleep /bin/ps /bin/ping /bin/ls\n\
             libraries /usr/lib/libbproc.so* /usr/lib64/libbproc.so*\n",
        );
        assert_eq!(c.interfaces, ["eth1"]);
        assert_eq!(c.node_numbers().collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        for (i, n) in c.nodes.iter().enumerate() {
            assert_eq!(n.addrs, [Ipv4Addr::new(10, 0, 0, 10 + i as u8)]);
        }
        assert_eq!(c.libraries_from_binary, ["/bin/sleep", "/bin/ps", "/bin/ping", "/bin/ls"]);
        assert_eq!(c.libraries, ["/usr/lib/libbproc.so*", "/usr/lib64/libbproc.so*"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn libraries_accumulate() {
        let c = parse("libraries /a /b\nlibraries /c\nlibrariesfrombinary /bin/x\n");
        assert_eq!(c.libraries, ["/a", "/b", "/c"]);
        assert_eq!(c.libraries_from_binary, ["/bin/x"]);
    }

    #[test]
    fn splitting() {
        assert_eq!(split("  ip\t5  10.0.0.1 "), ["ip", "5", "10.0.0.1"]);
        assert_eq!(split("a \"b c\" 'd e'"), ["a", "b c", "d e"]);
        assert_eq!(split(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(split(r#"'say "hi"' "it's""#), [r#"say "hi""#, "it's"]);
        assert_eq!(split(r"a\ b c\\d \#e"), ["a b", r"c\d", "#e"]);
        assert_eq!(split(r#""a\"b""#), [r#"a"b"#]);
        assert_eq!(split(r#"x "" y"#), ["x", "", "y"]);
        assert_eq!(split("a b # c d"), ["a", "b"]);
        assert_eq!(split("a b#c"), ["a", "b"]);
        assert_eq!(
            split("a '#not a comment' \"# nor this\""),
            ["a", "#not a comment", "# nor this"]
        );
        assert_eq!(split("# whole line"), Vec::<String>::new());
        assert_eq!(split("a\x0bb"), ["a", "b"]);
        assert_eq!(split_line("a 'b c").unwrap_err().to_string(), "unterminated ' quote");
        assert_eq!(split_line("a \"b").unwrap_err().to_string(), "unterminated \" quote");
        assert_eq!(
            split_line(r"a b\").unwrap_err().to_string(),
            "backslash at the end of the line"
        );
    }

    #[test]
    fn quoting_in_config() {
        let c =
            parse("libraries \"/opt/my libs/*.so\" /x\\ y # comment 'quoted'\nkeyfile '/k#ey'\n");
        assert_eq!(c.libraries, ["/opt/my libs/*.so", "/x y"]);
        assert_eq!(c.keyfile, Some(PathBuf::from("/k#ey")));
        assert_eq!(error("ip 10.0.0.1\nlibraries 'oops\n"), "test.conf:2: unterminated ' quote");
    }

    #[test]
    fn crlf_lines() {
        let c = parse("ip 10.0.0.1\r\nip 10.0.0.2\r\n");
        assert_eq!(c.nodes, [node(0, &["10.0.0.1"]), node(1, &["10.0.0.2"])]);
    }

    #[test]
    fn ip_numbering() {
        let c = parse("ip 10.0.0.1\nip 10.0.0.2 10.0.1.2\nip 7 10.0.0.7\nip 10.0.0.8\n");
        assert_eq!(
            c.nodes,
            [
                node(0, &["10.0.0.1"]),
                node(1, &["10.0.0.2", "10.0.1.2"]),
                node(7, &["10.0.0.7"]),
                node(8, &["10.0.0.8"]),
            ]
        );
    }

    #[test]
    fn ip_node_with_several_addresses() {
        let c = parse("ip 5 10.0.0.1 10.0.1.1 10.0.2.1\nip 10.0.0.6\n");
        assert_eq!(
            c.nodes,
            [node(5, &["10.0.0.1", "10.0.1.1", "10.0.2.1"]), node(6, &["10.0.0.6"])]
        );
    }

    #[test]
    fn ip_node_number_forms() {
        let c = parse("ip 0x10 10.0.0.1\nip 010 10.0.0.2\nip +3 10.0.0.3\n");
        assert_eq!(c.node_numbers().collect::<Vec<_>>(), [16, 8, 3]);
        // `08` is not octal, so it is read as an address.
        assert_eq!(error("ip 08 10.0.0.1\n"), "test.conf:1: invalid IP address: 08");
        assert_eq!(error("ip \"\" 10.0.0.1\n"), "test.conf:1: invalid IP address: ");
    }

    #[test]
    fn same_node_on_several_lines_merges() {
        let c = parse("ip 3 10.0.0.3\nip 1 10.0.0.1\nip 3 10.0.1.3\niprange 2 10.0.2.2 10.0.2.3\n");
        assert_eq!(
            c.nodes,
            [
                node(3, &["10.0.0.3", "10.0.1.3", "10.0.2.3"]),
                node(1, &["10.0.0.1"]),
                node(2, &["10.0.2.2"]),
            ]
        );
    }

    #[test]
    fn ip_errors() {
        assert_eq!(
            error("ip 10.0.0.1\nip 10.0.0.1\n"),
            "test.conf:2: IP already allocated: 10.0.0.1 (node 0)"
        );
        assert_eq!(
            error("ip 4 10.0.0.1 10.0.0.1\n"),
            "test.conf:1: IP already allocated: 10.0.0.1 (node 4)"
        );
        assert_eq!(
            error("ip -1 10.0.0.1\n"),
            "test.conf:1: invalid node number: -1 (must be 0 or more)"
        );
        assert_eq!(
            error("ip 4294967296 10.0.0.1\n"),
            "test.conf:1: invalid node number: 4294967296 (too large)"
        );
        assert_eq!(error("ip 3\n"), "test.conf:1: missing address for node 3");
        assert_eq!(error("ip 10.0.0.300\n"), "test.conf:1: invalid IP address: 10.0.0.300");
        assert_eq!(error("ip 1 10.1\n"), "test.conf:1: invalid IP address: 10.1");
        assert_eq!(error("\n\nip\n"), "test.conf:3: too few arguments for ip (min = 1)");
        assert_eq!(
            error("ip 2147483647 10.0.0.1\nip 10.0.0.2\n"),
            "test.conf:2: no node number after 2147483647"
        );
    }

    #[test]
    fn iprange_with_and_without_node() {
        let c = parse("iprange 10.0.0.1 10.0.0.3\niprange 10 10.0.1.1 10.0.1.2\nip 10.0.2.1\n");
        assert_eq!(c.node_numbers().collect::<Vec<_>>(), [0, 1, 2, 10, 11, 12]);
        assert_eq!(c.nodes[4], node(11, &["10.0.1.2"]));
        assert_eq!(c.nodes[5], node(12, &["10.0.2.1"]));
        let c = parse("ip 4 10.0.0.4\niprange 10.0.0.5 10.0.0.5\n");
        assert_eq!(c.nodes[1], node(5, &["10.0.0.5"]));
    }

    #[test]
    fn iprange_crosses_octets() {
        let c = parse("iprange 10.0.0.254 10.0.1.1\n");
        let addrs: Vec<_> = c.nodes.iter().map(|n| n.addrs[0].to_string()).collect();
        assert_eq!(addrs, ["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]);
    }

    #[test]
    fn iprange_large() {
        let c = parse("iprange 0 127.0.1.0 127.0.5.255\nip 127.0.6.0\n");
        assert_eq!(c.nodes.len(), 1281);
        assert_eq!(c.nodes[1279], node(1279, &["127.0.5.255"]));
        assert_eq!(c.node_for_addr(ip("127.0.6.0")), Some(1280));
        assert_eq!(c.node_for_addr(ip("127.0.3.7")), Some(2 * 256 + 7));
        assert_eq!(
            error("iprange 0 127.0.1.0 127.0.5.255\niprange 127.0.6.0 127.0.6.9\niprange 127.0.0.0 127.0.1.0\n"),
            "test.conf:3: IP already allocated: 127.0.1.0 (node 0)"
        );
    }

    #[test]
    fn iprange_overlap() {
        let text = "ip 10.0.0.5\n# comment\niprange 3 10.0.0.1 10.0.0.9\n";
        assert_eq!(error(text), "test.conf:3: IP already allocated: 10.0.0.5 (node 0)");
        // Many addresses assigned, small range: the other search direction.
        let text = "iprange 10.0.0.1 10.0.0.200\niprange 10.0.0.200 10.0.0.201\n";
        assert_eq!(error(text), "test.conf:2: IP already allocated: 10.0.0.200 (node 199)");
        let text = "iprange 10.0.0.1 10.0.0.9\nip 10.0.0.9\n";
        assert_eq!(error(text), "test.conf:2: IP already allocated: 10.0.0.9 (node 8)");
    }

    #[test]
    fn iprange_errors() {
        assert_eq!(
            error("iprange 10.0.0.9 10.0.0.1\n"),
            "test.conf:1: invalid range: 10.0.0.9 comes after 10.0.0.1"
        );
        assert_eq!(
            error("iprange 10.0.0.1\n"),
            "test.conf:1: too few arguments for iprange (min = 2)"
        );
        assert_eq!(
            error("iprange 1 2 3 4\n"),
            "test.conf:1: too many arguments for iprange (max = 3)"
        );
        assert_eq!(
            error("iprange 5 10.0.0.1\n"),
            "test.conf:1: iprange needs two addresses after the node number"
        );
        assert_eq!(error("iprange x 10.0.0.1 10.0.0.2\n"), "test.conf:1: invalid node number: x");
        assert_eq!(
            error("iprange -2 10.0.0.1 10.0.0.2\n"),
            "test.conf:1: invalid node number: -2 (must be 0 or more)"
        );
        assert_eq!(
            error("iprange 10.0.0.1 10.0.0.x\n"),
            "test.conf:1: invalid IP address: 10.0.0.x"
        );
        assert_eq!(
            error("iprange 0.0.0.0 255.255.255.255\n"),
            format!("test.conf:1: too many nodes (at most {MAX_NODES})")
        );
        assert_eq!(
            error("iprange 2147483647 10.0.0.1 10.0.0.2\n"),
            "test.conf:1: node numbers from 2147483647 run past 2147483647"
        );
    }

    #[test]
    fn node_count_limit() {
        let last = Ipv4Addr::from(u32::from(ip("10.0.0.0")) + MAX_NODES as u32 - 1);
        let c = parse(&format!("iprange 10.0.0.0 {last}\n"));
        assert_eq!(c.nodes.len(), MAX_NODES);
        assert_eq!(
            error(&format!("iprange 10.0.0.0 {last}\nip 1.2.3.4\n")),
            format!("test.conf:2: too many nodes (at most {MAX_NODES})")
        );
        // Another address for an existing node is fine.
        let c = parse(&format!("iprange 10.0.0.0 {last}\nip 0 1.2.3.4\n"));
        assert_eq!(c.nodes[0].addrs.len(), 2);
    }

    #[test]
    fn node_for_addr() {
        let c = parse("ip 3 10.0.0.3 10.0.1.3\nip 1 10.0.0.1\n");
        assert_eq!(c.node_for_addr(ip("10.0.1.3")), Some(3));
        assert_eq!(c.node_for_addr(ip("10.0.0.1")), Some(1));
        assert_eq!(c.node_for_addr(ip("10.0.0.2")), None);
        assert_eq!(c.node_numbers().collect::<Vec<_>>(), [3, 1]);
    }

    #[test]
    fn graceperiod() {
        assert_eq!(parse("").grace, DEFAULT_GRACE);
        assert_eq!(parse("graceperiod 5\n").grace, 5);
        assert_eq!(
            error("graceperiod 0\n"),
            "test.conf:1: graceperiod must be a number of seconds from 1 to 86400, not 0"
        );
    }

    #[test]
    fn nodeuptimeout() {
        assert_eq!(parse("").node_up_timeout, DEFAULT_NODE_UP_TIMEOUT);
        assert_eq!(parse("nodeuptimeout 0\n").node_up_timeout, 0);
        assert_eq!(parse("nodeuptimeout 2\n").node_up_timeout, 2);
        assert_eq!(
            error("nodeuptimeout soon\n"),
            "test.conf:1: nodeuptimeout must be a number of seconds from 0 (no limit) to 86400, \
             not soon"
        );
    }

    #[test]
    fn maxclientsperuser() {
        assert_eq!(parse("\n").max_clients_per_user, DEFAULT_MAX_CLIENTS_PER_USER);
        assert_eq!(parse("maxclientsperuser 8\n").max_clients_per_user, 8);
        assert_eq!(
            error("maxclientsperuser 0\n"),
            "test.conf:1: maxclientsperuser must be a number from 1 to 1048576, not 0"
        );
        assert_eq!(
            error("maxclientsperuser many\n"),
            "test.conf:1: maxclientsperuser must be a number from 1 to 1048576, not many"
        );
    }

    #[test]
    fn pingtimeout() {
        assert_eq!(parse("pingtimeout 2\n").ping_timeout, 2);
        assert_eq!(parse("pingtimeout 0x10\n").ping_timeout, 16);
        assert_eq!(
            error("ip 10.0.0.1\npingtimeout 1\n"),
            "test.conf:2: pingtimeout must be 2 seconds or more, not 1"
        );
        assert_eq!(
            error("pingtimeout -5\n"),
            "test.conf:1: pingtimeout must be 2 seconds or more, not -5"
        );
        assert_eq!(error("pingtimeout 10s\n"), "test.conf:1: invalid number for pingtimeout: 10s");
        assert_eq!(
            error("pingtimeout 99999999999\n"),
            "test.conf:1: pingtimeout too large: 99999999999"
        );
        assert_eq!(
            error("pingtimeout\n"),
            "test.conf:1: too few arguments for pingtimeout (min = 1)"
        );
        assert_eq!(
            error("pingtimeout 3 4\n"),
            "test.conf:1: too many arguments for pingtimeout (max = 1)"
        );
    }

    #[test]
    fn bprocport() {
        assert_eq!(parse("bprocport 3000\n").port, 3000);
        assert_eq!(parse("bprocport 65535\n").port, 65535);
        assert_eq!(
            error("bprocport 0\n"),
            "test.conf:1: invalid port for bprocport: 0 (must be 1-65535)"
        );
        assert_eq!(
            error("bprocport 65536\n"),
            "test.conf:1: invalid port for bprocport: 65536 (must be 1-65535)"
        );
        assert_eq!(
            error("bprocport no-such-service-here\n"),
            "test.conf:1: bprocport: unknown service or invalid port: no-such-service-here"
        );
    }

    #[test]
    fn service_lookup() {
        let services = "# comment\n\
                        ssh\t\t22/tcp\t\t\t# SSH Remote Login Protocol\n\
                        domain\t\t53/udp\n\
                        bproc\t\t2223/tcp\tbeowulf bp # comment\n";
        assert_eq!(lookup_service(services, "ssh"), Some(22));
        assert_eq!(lookup_service(services, "bproc"), Some(2223));
        assert_eq!(lookup_service(services, "beowulf"), Some(2223));
        assert_eq!(lookup_service(services, "bp"), Some(2223));
        assert_eq!(lookup_service(services, "domain"), None);
        assert_eq!(lookup_service(services, "comment"), None);
        assert_eq!(lookup_service(services, "nope"), None);
    }

    #[test]
    fn scalar_options() {
        let c = parse(
            "allowinsecureports\nlogfacility LOCAL3\nslave timesync NO\nslave privatefs Yes\n",
        );
        assert!(c.allow_insecure_ports);
        assert_eq!(c.log_facility, "local3");
        assert!(!c.slave_timesync);
        assert!(c.slave_privatefs);
        assert!(!parse("slavetimesync no\n").slave_timesync);
        assert!(parse("slavetimesync no\nslavetimesync yes\n").slave_timesync);
        assert_eq!(
            error("allowinsecureports yes\n"),
            "test.conf:1: too many arguments for allowinsecureports (max = 0)"
        );
        assert_eq!(error("logfacility kernel\n"), "test.conf:1: unknown log facility: kernel");
        assert_eq!(
            error("slavetimesync maybe\n"),
            "test.conf:1: slavetimesync must be yes or no, not `maybe`"
        );
        assert_eq!(
            error("slave privatefs 1\n"),
            "test.conf:1: slave privatefs must be yes or no, not `1`"
        );
        assert_eq!(error("slave turbo yes\n"), "test.conf:1: unknown slave option: turbo");
        assert_eq!(error("slave\n"), "test.conf:1: too few arguments for slave (min = 1)");
        assert_eq!(
            error("slave timesync\n"),
            "test.conf:1: too few arguments for slave timesync (min = 1)"
        );
        assert_eq!(
            error("slave timesync yes no\n"),
            "test.conf:1: too many arguments for slave timesync (max = 1)"
        );
    }

    #[test]
    fn interfaces() {
        let c = parse("interface eth0\ninterface eth1 10.0.0.1 255.255.255.0\n");
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(error("interface\n"), "test.conf:1: too few arguments for interface (min = 1)");
        assert_eq!(
            error("interface a b c d\n"),
            "test.conf:1: too many arguments for interface (max = 3)"
        );
    }

    #[test]
    fn listen() {
        let c = parse(
            "listen 127.0.0.1\nlisten 10.0.0.1:4000\nlisten 127.0.0.1:0\nlisten 127.0.0.1:0\n",
        );
        let want: Vec<SocketAddr> =
            ["127.0.0.1:2223", "10.0.0.1:4000", "127.0.0.1:0", "127.0.0.1:0"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        assert_eq!(c.listen, want);
        assert_eq!(
            error("listen localhost\n"),
            "test.conf:1: invalid listen address: localhost (expected IPV4[:PORT])"
        );
        assert_eq!(
            error("listen 1.2.3.4:x\n"),
            "test.conf:1: invalid port for listen: x (must be 0-65535)"
        );
        assert_eq!(
            error("listen 1.2.3.4:2\nlisten 1.2.3.4:2\n"),
            "test.conf:2: duplicate listen address: 1.2.3.4:2"
        );
    }

    #[test]
    fn passes_make_order_irrelevant() {
        let c = parse(
            "master 10.0.0.100\nlisten 127.0.0.1\nip 10.0.0.1\nbprocport 3000\ninterface eth0\n",
        );
        assert_eq!(c.port, 3000);
        assert_eq!(c.listen, ["127.0.0.1:3000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.masters, ["10.0.0.100:3000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.interfaces, ["eth0"]);
        // Errors report their real line, even from a later pass.
        assert_eq!(
            error("ip 10.0.0.1\nip 10.0.0.2\nbprocport 3000\nip 10.0.0.1\n"),
            "test.conf:4: IP already allocated: 10.0.0.1 (node 0)"
        );
        // A pass-0 error comes first even when a pass-2 error is earlier in the file.
        assert_eq!(
            error("ip x\npingtimeout 0\n"),
            "test.conf:2: pingtimeout must be 2 seconds or more, not 0"
        );
    }

    #[test]
    fn masters() {
        let c = parse("bprocport 2000\nmaster 10.0.0.1 10.0.0.2:3000\nmaster 127.0.0.1:0x10\n");
        let want: Vec<SocketAddr> = ["10.0.0.1:2000", "10.0.0.2:3000", "127.0.0.1:16"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(c.masters, want);
        assert_eq!(
            error("master 10.0.0.1\nmaster 10.0.0.1:2223\n"),
            "test.conf:2: duplicate master address: 10.0.0.1:2223 (10.0.0.1:2223)"
        );
        // The same host on another port is a different master.
        assert_eq!(parse("master 10.0.0.1 10.0.0.1:1\n").masters.len(), 2);
        assert_eq!(
            error("master 10.0.0.1:0\n"),
            "test.conf:1: invalid port for master: 0 (must be 1-65535)"
        );
        assert_eq!(error("master\n"), "test.conf:1: too few arguments for master (min = 1)");
        assert!(error("master no-such-host.invalid\n").starts_with("test.conf:1: "));
    }

    #[test]
    fn extension_paths() {
        let c = Config::parse(
            "socket /run/bp.sock\nkeyfile key\nstatedir ../state\nlogdir /var/log/cm\n",
            Path::new("/etc/clustermatic/config"),
        )
        .unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/run/bp.sock")));
        assert_eq!(c.keyfile, Some(PathBuf::from("/etc/clustermatic/key")));
        assert_eq!(c.statedir, Some(PathBuf::from("/etc/clustermatic/../state")));
        assert_eq!(c.logdir, Some(PathBuf::from("/var/log/cm")));
        // A bare file name: relative to the current directory, where the file is.
        assert_eq!(parse("keyfile k\n").keyfile, Some(PathBuf::from("k")));
        assert_eq!(error("keyfile ''\n"), "test.conf:1: empty path for keyfile");
        assert_eq!(
            error("statedir a b\n"),
            "test.conf:1: too many arguments for statedir (max = 1)"
        );
    }

    #[test]
    fn statuspage() {
        assert_eq!(parse("").status_page, None);
        assert_eq!(
            parse("statuspage 127.0.0.1").status_page,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse("statuspage 0.0.0.0:9100").status_page,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(parse("statuspage [::1]:0").status_page, Some("[::1]:0".parse().unwrap()));
        assert_eq!(parse("statuspage 127.0.0.1\nstatuspage off").status_page, None);
        assert!(error("statuspage localhost").contains("invalid statuspage: localhost"));
        assert!(error("statuspage").contains("too few arguments"));
    }

    #[test]
    fn nodename() {
        assert_eq!(parse("nodename node%N\nnodename c%N.x").node_names, ["node%N", "c%N.x"]);
        assert!(error("nodename fixed").contains("invalid nodename: fixed"));
        assert!(error("nodename a/%N").contains("invalid nodename"));
    }

    #[test]
    fn unknown_directives_warn() {
        let c = parse("ip 10.0.0.1\n\nfrobnicate 1 2\nIP 10.0.0.2\nbootfile /boot.img\nnode 00:11:22:33:44:55\n");
        assert_eq!(c.nodes.len(), 1);
        let warnings: Vec<String> = c.warnings.iter().map(Warning::to_string).collect();
        assert_eq!(
            warnings,
            [
                "test.conf:3: unknown directive `frobnicate` (ignored)",
                "test.conf:4: unknown directive `IP` (ignored)",
            ]
        );
        assert_eq!(
            c.warnings[0],
            Warning {
                file: "test.conf".into(),
                line: 3,
                message: "unknown directive `frobnicate` (ignored)".into()
            }
        );
    }

    #[test]
    fn foreign_directives_are_silent() {
        let text: String = FOREIGN_DIRECTIVES.iter().map(|t| format!("{t} a b c\n")).collect();
        let c = parse(&format!("{text}nodes\nnode_up max_clients 256\n"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_integer("42"), Some(42));
        assert_eq!(parse_c_integer("-7"), Some(-7));
        assert_eq!(parse_c_integer("+7"), Some(7));
        assert_eq!(parse_c_integer("0"), Some(0));
        assert_eq!(parse_c_integer("0x1F"), Some(31));
        assert_eq!(parse_c_integer("0X1f"), Some(31));
        assert_eq!(parse_c_integer("017"), Some(15));
        assert_eq!(parse_c_integer("99999999999999999999999"), Some(i64::MAX));
        for bad in ["", "-", "0x", "08", "1.2", "1e3", " 1", "x1", "--1", "+-1"] {
            assert_eq!(parse_c_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("bproc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(&path, "ip 10.0.0.1\nkeyfile key\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.keyfile, Some(dir.join("key")));
        let missing = dir.join("missing");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(e.to_string(), format!("cannot read {}", missing.display()));
        assert!(std::error::Error::source(&e).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
