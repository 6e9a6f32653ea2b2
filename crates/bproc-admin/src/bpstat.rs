//! `bpstat`: show the nodes, in BProc's formats (see [`crate::bpstat_fmt`]).
//!
//! Deliberate differences from BProc 4.0.0pre8:
//! - an invalid node spec is named in the error (BProc always printed `argv[1]`);
//! - `-A HOST` works: it prints the number of the node whose address HOST resolves to;
//! - `--json` (not in BProc) prints every selected node with its machine report;
//! - `-P` finds the pid by field, not by character column (see [`crate::bpstat_procs`]);
//! - `--stat` (not in BProc) shows each remote process's state, CPU time and memory as
//!   measured on its node.

use std::ffi::OsString;
use std::net::{IpAddr, ToSocketAddrs};
use std::process::ExitCode;

use bproc_client::{nodespec, Client, NodeStatus};
use lexopt::prelude::*;
use nix::sys::signal::{SigSet, Signal};

use crate::bpstat_fmt::{self as fmt, Sort, SystemNames};
use crate::util::write_out;

const USAGE: &str = "Usage: bpstat [options] [nodes ...]
  -h, --help           print this message and exit
  -v, -V, --version    print the version and exit
Display (the last one given wins):
  -c, --compact        grouped table (default)
  -l, --long           one line per node with its address
  -a, --address        node addresses, one per line
  -s, --status         node states, one per line
  -n, --number         node numbers, one per line
  -t, --total          the number of selected nodes
      --json           every selected node as JSON, with its machine report
Sorting:
  -N, --sort-number    by node number (default except in compact mode)
  -S, --sort-status    by state, then number (default in compact mode)
  -O, --keep-order     as selected
  -R, --sort-reverse   reverse the order
Other:
  -U, --update         redisplay whenever a node changes
  -L, --lock           ignore interrupt and suspend keys (with -U, for consoles)
  -A HOST              print the number of the node with HOST's address
      --master-info    print the master's version, slave-facing addresses and the bytes it
                       has sent to slaves, as one JSON line
Processes:
  -p                   every remote process and its node (PID, Node)
  -P                   annotate ps output read on stdin with each process's node
      --stat           each remote process's state, CPU time and memory on its node
Nodes are node specifications (0-3,7 allup n[0-7] master); the default is all.
";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Display {
    Compact,
    Long,
    Address,
    Status,
    Number,
    Total,
    Json,
}

struct Args {
    display: Display,
    sort: Sort,
    reverse: bool,
    update: bool,
    lock: bool,
    address_of: Option<String>,
    master_info: bool,
    procs: Option<Procs>,
    specs: Vec<String>,
}

/// The process views.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Procs {
    List,
    Annotate,
    Stat,
}

fn parse(args: Vec<OsString>) -> Result<Result<Args, ExitCode>, lexopt::Error> {
    let mut a = Args {
        display: Display::Compact,
        sort: Sort::Default,
        reverse: false,
        update: false,
        lock: false,
        address_of: None,
        master_info: false,
        procs: None,
        specs: Vec::new(),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(Err(ExitCode::SUCCESS));
            }
            Short('v') | Short('V') | Long("version") => {
                println!("bpstat version {}", env!("CARGO_PKG_VERSION"));
                return Ok(Err(ExitCode::SUCCESS));
            }
            Short('c') | Long("compact") => a.display = Display::Compact,
            Short('l') | Long("long") => a.display = Display::Long,
            Short('a') | Long("address") => a.display = Display::Address,
            Short('s') | Long("status") => a.display = Display::Status,
            Short('n') | Long("number") => a.display = Display::Number,
            Short('t') | Long("total") => a.display = Display::Total,
            Long("json") => a.display = Display::Json,
            Short('N') | Long("sort-number") => a.sort = Sort::Number,
            Short('S') | Long("sort-status") => a.sort = Sort::Status,
            Short('O') | Long("keep-order") => a.sort = Sort::Keep,
            Short('R') | Long("sort-reverse") => a.reverse = true,
            Short('U') | Long("update") => a.update = true,
            Short('L') | Long("lock") => a.lock = true,
            Short('A') => a.address_of = Some(p.value()?.string()?),
            Long("master-info") => a.master_info = true,
            Short('p') => a.procs = Some(Procs::List),
            Short('P') => a.procs = Some(Procs::Annotate),
            Long("stat") => a.procs = Some(Procs::Stat),
            Value(v) => a.specs.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Ok(a))
}

/// Selects the nodes named by the specs (all by default), in argument order.
fn select(
    all: &[NodeStatus],
    specs: &[String],
) -> Result<Vec<NodeStatus>, nodespec::NodeSpecError> {
    if specs.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    for s in specs {
        out.extend(nodespec::filter(all, s)?.nodes);
    }
    Ok(out)
}

fn render(a: &Args, mut nodes: Vec<NodeStatus>) -> Result<String, fmt::FormatError> {
    let compact = a.display == Display::Compact;
    fmt::sort_nodes(&mut nodes, a.sort, a.reverse, compact);
    let names = SystemNames::default();
    Ok(match a.display {
        Display::Compact => fmt::compact(&nodes, fmt::terminal_cols(), &names)?,
        Display::Long => fmt::long(&nodes, &names),
        Display::Address => fmt::addresses(&nodes),
        Display::Status => fmt::statuses(&nodes),
        Display::Number => fmt::numbers(&nodes),
        Display::Total => fmt::total(&nodes),
        Display::Json => fmt::json(&nodes, &names),
    })
}

/// The selected nodes of `all` as the display wants them, or the exit code of a bad spec
/// or a window too small (already reported).
fn show(a: &Args, all: &[NodeStatus]) -> Result<String, ExitCode> {
    let nodes = select(all, &a.specs).map_err(|bad| {
        eprintln!("{}", bad.bproc_message());
        ExitCode::FAILURE
    })?;
    render(a, nodes).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// Reports `e` as bpstat's failure.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("bpstat: {e}");
    ExitCode::FAILURE
}

fn address_of(all: &[NodeStatus], host: &str) -> ExitCode {
    let Ok(addrs) = (host, 0).to_socket_addrs() else {
        eprintln!("Unknown host: {host}");
        return ExitCode::FAILURE;
    };
    let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
    match all.iter().find(|n| n.addr.is_some_and(|a| addrs.contains(&IpAddr::V4(a)))) {
        Some(n) => {
            let _ = write_out(&format!("{}\n", n.node));
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("No node with address {host}");
            ExitCode::FAILURE
        }
    }
}

/// `--master-info`: one JSON line.
fn master_info(client: &mut Client) -> ExitCode {
    let info = match client.master_info() {
        Ok(info) => info,
        Err(e) => return fail(e),
    };
    let addrs: Vec<String> = info
        .addrs
        .iter()
        .map(|e| format!("{}:{}", e.ip.map_or("*".into(), |i| i.to_string()), e.port))
        .collect();
    let v = serde_json::json!({
        "version": info.version, "addrs": addrs, "bytes_to_slaves": info.bytes_to_slaves,
        "ghosts_made": info.ghosts_made
    });
    let _ = write_out(&format!("{v}\n"));
    ExitCode::SUCCESS
}

/// `-L`: the interrupt and suspend keys do nothing (blocked signals stay pending and never
/// act).
fn block_keys() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTSTP);
    let _ = set.thread_block();
}

/// Runs bpstat with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let a = match parse(args) {
        Ok(Ok(a)) => a,
        Ok(Err(code)) => return code,
        Err(e) => {
            eprint!("bpstat: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    if a.lock {
        block_keys();
    }
    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if a.master_info {
        return master_info(&mut client);
    }
    if let Some(view) = a.procs {
        return procs(&mut client, view);
    }
    if let Some(host) = &a.address_of {
        return match client.nodes() {
            Ok(all) => address_of(&all, host),
            Err(e) => fail(e),
        };
    }
    if a.update {
        return update(&a, client);
    }
    let all = match client.nodes() {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    match show(&a, &all) {
        Ok(text) => match write_out(&text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Err(code) => code,
    }
}

/// `-U`: the table again after every change, until the master goes or output fails.
fn update(a: &Args, client: Client) -> ExitCode {
    let mut watcher = match client.watch() {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    loop {
        let all = match watcher.next_table() {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        match show(a, &all) {
            Ok(text) => {
                if write_out(&format!("\x1b[H\x1b[J{text}")).is_err() {
                    return ExitCode::FAILURE;
                }
            }
            Err(code) => return code,
        }
    }
}

/// `-p`, `-P` and `--stat`.
fn procs(client: &mut Client, view: Procs) -> ExitCode {
    use crate::bpstat_procs as p;
    let list = match client.procs() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let text = match view {
        Procs::List => p::pid_list(&list),
        Procs::Annotate => {
            let mut input = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
                return fail(format_args!("reading stdin: {e}"));
            }
            match p::annotate(&input, &list) {
                Ok(t) => t,
                Err(e) => return fail(e),
            }
        }
        Procs::Stat => {
            let stats = match client.proc_stats(&[]) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let comm = |pid: i32| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim_end().to_owned())
                    .unwrap_or_default()
            };
            p::stat_table(&list, &stats, comm)
        }
    };
    match write_out(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
