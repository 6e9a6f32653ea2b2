//! `bpctl`: change node state, permissions and ownership, and send node commands.
//!
//! As in BProc, options act strictly left to right: `-S NODES` (or `-M`) selects nodes and
//! every later action applies to each selected node, so `bpctl -S 1 -s up -S 2 -s down` works.
//! Each failure prints `NODE: error text` on stderr; the exit status is 1 if anything failed.
//!
//! Deliberate differences from BProc 4.0.0pre8:
//! - the whole command line is checked before anything is changed, so a bad `-m` at the end
//!   does not leave the earlier actions half done;
//! - an invalid `-S` spec is reported (`bpctl: invalid node specification "x"`) instead of a
//!   silent exit 1;
//! - an action before any `-S`/`-M` is an error instead of silently doing nothing;
//! - `-g` errors say `Invalid group id`.
//! - a refused action prints the master's (or node's) reason, `NODE: reason`, not only the
//!   error's text (`0: mode 0644 for node 0: ...` rather than `0: Operation not permitted`);
//! - an unconfigured node number selected is named, and makes the exit status 1.
//! - `--keygen [FILE]` (not in BProc) creates the cluster key file.

use std::ffi::OsString;
use std::process::ExitCode;

use bproc_client::{nodespec, strerror, BprocError, Client, Endpoint, NodeAction};
use lexopt::prelude::*;

use bproc_client::parse_c_int;

const USAGE: &str = "Usage: bpctl [options]
  -h, --help              print this message and exit
  -v, -V, --version       print the version and exit
  -M, --master            select the master node (-1)
  -S, --slave NODES       select nodes (any node specification: 0-3,7 allup n[0-7])
Actions apply to the nodes selected before them:
  -s, --state STATE       set the state (1-15 letters and digits; \"down\" disconnects)
  -m, --mode MODE         set the permission bits (octal, execute bits only: 0111, 0100...)
  -u, --user USER         set the owner (name or number)
  -g, --group GROUP       set the group (name or number)
  -r, --chroot DIR        make the slave daemon chroot to DIR
  -R, --reboot            reboot the node
  -H, --halt              halt the node
  -P, --pwroff            power the node off
      --reconnect MASTER[:PORT][,LOCAL[:PORT]]
                          move the node's link to new addresses, keeping its processes
  -f                      ignored (compatibility)
      --keygen [FILE]     create a new cluster key (default /etc/clustermatic/key)
";

#[derive(Debug, Clone, PartialEq)]
enum Step {
    SelectMaster,
    Select(String),
    State(String),
    Mode(u32),
    User(u32),
    Group(u32),
    Chroot(String),
    Action(NodeAction),
    Reconnect(Endpoint, Endpoint),
}

enum Parsed {
    Run(Vec<Step>),
    Exit(ExitCode),
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("bpctl: {msg}");
    ExitCode::FAILURE
}

fn lookup_id(s: &str, by_name: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    by_name(s).or_else(|| parse_c_int(s).and_then(|v| u32::try_from(v).ok()))
}

fn parse_user(s: &str) -> Option<u32> {
    lookup_id(s, |n| nix::unistd::User::from_name(n).ok().flatten().map(|u| u.uid.as_raw()))
}

fn parse_group(s: &str) -> Option<u32> {
    lookup_id(s, |n| nix::unistd::Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()))
}

fn parse_endpoint(s: &str) -> Option<Endpoint> {
    if s.is_empty() {
        return Some(Endpoint::default());
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (s, 0),
    };
    let ip = if host.is_empty() { None } else { Some(host.parse().ok()?) };
    Some(Endpoint { ip, port })
}

/// `a[:p][,l[:p]]`, omitted parts left for the slave to fill in.
fn parse_reconnect(s: &str) -> Option<(Endpoint, Endpoint)> {
    let (m, l) = s.split_once(',').unwrap_or((s, ""));
    Some((parse_endpoint(m)?, parse_endpoint(l)?))
}

fn parse(args: Vec<OsString>) -> Result<Parsed, lexopt::Error> {
    let mut p = lexopt::Parser::from_args(args);
    let mut steps = Vec::new();
    while let Some(arg) = p.next()? {
        let step = match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            Short('v') | Short('V') | Long("version") => {
                println!("bpctl version {}", env!("CARGO_PKG_VERSION"));
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            Short('M') | Long("master") => Step::SelectMaster,
            Short('S') | Long("slave") => Step::Select(p.value()?.string()?),
            Short('s') | Long("state") => Step::State(p.value()?.string()?),
            Short('r') | Long("chroot") => Step::Chroot(p.value()?.string()?),
            Short('R') | Long("reboot") => Step::Action(NodeAction::Reboot),
            Short('H') | Long("halt") => Step::Action(NodeAction::Halt),
            Short('P') | Long("pwroff") => Step::Action(NodeAction::Poweroff),
            Short('f') => continue,
            Short('m') | Long("mode") => {
                let v = p.value()?.string()?;
                match u32::from_str_radix(&v, 8) {
                    Ok(m) => Step::Mode(m),
                    Err(_) => {
                        eprintln!("Invalid number: {v}");
                        return Ok(Parsed::Exit(ExitCode::FAILURE));
                    }
                }
            }
            Short('u') | Long("user") => {
                let v = p.value()?.string()?;
                match parse_user(&v) {
                    Some(u) => Step::User(u),
                    None => {
                        eprintln!("Invalid user id: {v}");
                        return Ok(Parsed::Exit(ExitCode::FAILURE));
                    }
                }
            }
            Short('g') | Long("group") => {
                let v = p.value()?.string()?;
                match parse_group(&v) {
                    Some(g) => Step::Group(g),
                    None => {
                        eprintln!("Invalid group id: {v}");
                        return Ok(Parsed::Exit(ExitCode::FAILURE));
                    }
                }
            }
            Long("reconnect") => {
                let v = p.value()?.string()?;
                match parse_reconnect(&v) {
                    Some((m, l)) => Step::Reconnect(m, l),
                    None => {
                        return Ok(Parsed::Exit(fail(format!(
                            "--reconnect {v}: expected MASTER[:PORT][,LOCAL[:PORT]] with IPv4 addresses"
                        ))))
                    }
                }
            }
            Long("keygen") => return Ok(Parsed::Exit(crate::keygen("bpctl", &mut p)?)),
            other => return Err(other.unexpected()),
        };
        steps.push(step);
    }
    Ok(Parsed::Run(steps))
}

/// Runs bpctl with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let steps = match parse(args) {
        Ok(Parsed::Run(steps)) => steps,
        Ok(Parsed::Exit(code)) => return code,
        Err(e) => {
            eprint!("bpctl: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(i) = steps.iter().position(|s| !matches!(s, Step::Select(_) | Step::SelectMaster)) {
        if !steps[..i].iter().any(|s| matches!(s, Step::Select(_) | Step::SelectMaster)) {
            return fail("no nodes selected: put -S NODES (or -M) before the actions");
        }
    }
    if steps.is_empty() {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    }
    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match execute(&mut client, &steps) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(e),
    }
}

/// Runs the steps; `Ok(false)` when some node refused an action.
fn execute(client: &mut Client, steps: &[Step]) -> Result<bool, BprocError> {
    let mut selected: Vec<i32> = Vec::new();
    let mut ok = true;
    for step in steps {
        match step {
            Step::SelectMaster => selected = vec![bproc_client::NODE_MASTER],
            Step::Select(spec) => {
                let nodes = client.nodes()?;
                match nodespec::filter(&nodes, spec) {
                    Ok(sel) => {
                        for n in &sel.unconfigured {
                            eprintln!("bpctl: node {n} is not configured");
                            ok = false;
                        }
                        selected = sel.nodes.iter().map(|n| n.node).collect();
                    }
                    Err(e) => {
                        eprintln!("bpctl: {e}");
                        return Ok(false);
                    }
                }
            }
            _ => {
                for &n in &selected {
                    let r = match step {
                        Step::State(s) => client.set_state(n, s),
                        Step::Mode(m) => client.chmod(n, *m),
                        Step::User(u) => client.chown(n, *u),
                        Step::Group(g) => client.chgrp(n, *g),
                        Step::Chroot(d) => client.node_chroot(n, d),
                        Step::Action(a) => client.node_action(n, *a),
                        Step::Reconnect(m, l) => client.node_reconnect(n, *m, *l),
                        Step::Select(_) | Step::SelectMaster => unreachable!("handled above"),
                    };
                    match r {
                        Ok(()) => {}
                        Err(BprocError::Remote { code, message }) => {
                            // The reason says what the error's text cannot (which bits, how
                            // long, what the node answered).
                            let why = if message.is_empty() { strerror(code) } else { message };
                            eprintln!("{n}: {why}");
                            ok = false;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(args: &[&str]) -> Vec<Step> {
        match parse(args.iter().map(OsString::from).collect()).unwrap() {
            Parsed::Run(s) => s,
            Parsed::Exit(_) => panic!("exited"),
        }
    }

    #[test]
    fn options_keep_their_order() {
        assert_eq!(
            steps(&["-S", "2", "-s", "down", "-S1-3", "-m", "0100", "-u", "0", "-RH"]),
            vec![
                Step::Select("2".into()),
                Step::State("down".into()),
                Step::Select("1-3".into()),
                Step::Mode(0o100),
                Step::User(0),
                Step::Action(NodeAction::Reboot),
                Step::Action(NodeAction::Halt),
            ]
        );
    }

    #[test]
    fn reconnect_spec() {
        let (m, l) = parse_reconnect("10.0.0.1:99,10.0.0.2").unwrap();
        assert_eq!(m, Endpoint { ip: Some([10, 0, 0, 1].into()), port: 99 });
        assert_eq!(l, Endpoint { ip: Some([10, 0, 0, 2].into()), port: 0 });
        assert_eq!(parse_reconnect(":7").unwrap().0, Endpoint { ip: None, port: 7 });
        assert!(parse_reconnect("host:1").is_none());
    }

    #[test]
    fn users_by_name_or_number() {
        assert_eq!(parse_user("root"), Some(0));
        assert_eq!(parse_user("1000"), Some(1000));
        assert_eq!(parse_user("0x10"), Some(16));
        assert_eq!(parse_user("no-such-user-here"), None);
    }
}
