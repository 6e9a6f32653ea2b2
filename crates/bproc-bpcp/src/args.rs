//! bpcp's command line: BProc's `-p` and `-r`, rcp's `host:path` operands with bproc node
//! names and node sets, and the long options that go beyond BProc.

use std::ffi::OsString;

/// BProc's usage text, printed to stdout with exit 1 on a usage error.
pub const USAGE: &str = "Usage: bpcp [-p] f1 f2
       bpcp [-r] [-p] f1 ... fn directory
";

/// The long options, shown by `--help`.
pub const EXTENSIONS: &str = "
  -p            keep modes and times
  -r            copy directories recursively
  f is PATH (on this machine) or NODE:PATH, where NODE is a node number, n3, .3, master or
  -1 (the front end), or a node set (all, 0-63, n[0-7]): a node set as the target
  broadcasts, as the source gathers one file per node into DIRECTORY as NAME.N.
  --fanout K    children per node in a broadcast tree (default 1: a pipelined chain)
  --stats       print the copy-stream bytes this process sent and received
  --help        this text
  --version     print the version
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-p`.
    pub preserve: bool,
    /// `-r`.
    pub recursive: bool,
    /// `--fanout`.
    pub fanout: u32,
    /// `--stats`.
    pub stats: bool,
    /// Sources then the target.
    pub operands: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Copy.
    Run(Args),
    /// Print the help and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
    /// Print this message and the usage, exit 1.
    Usage(String),
}

/// Parses bpcp's arguments (without argv\[0\]) like getopt with `-p` and `-r`, except that
/// an operand naming the master by number (`-1:/etc/hosts`) is an operand, not an option.
pub fn parse(args: Vec<OsString>) -> Parsed {
    let mut a =
        Args { preserve: false, recursive: false, fanout: 1, stats: false, operands: Vec::new() };
    let mut it = args.into_iter();
    let mut only_operands = false;
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            return Parsed::Usage(format!("bpcp: {}: not valid UTF-8", arg.to_string_lossy()));
        };
        if only_operands || !s.starts_with('-') || s == "-" || is_node_operand(s) {
            a.operands.push(s.to_owned());
            continue;
        }
        if s == "--" {
            only_operands = true;
            continue;
        }
        if let Some(long) = s.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            match name {
                "help" => return Parsed::Help,
                "version" => return Parsed::Version,
                "stats" => a.stats = true,
                "fanout" => {
                    let v = inline.or_else(|| it.next().and_then(|v| v.into_string().ok()));
                    match v.as_deref().map(str::parse::<u32>) {
                        Some(Ok(k)) if (1..=64).contains(&k) => a.fanout = k,
                        _ => {
                            return Parsed::Usage(
                                "bpcp: --fanout needs a number from 1 to 64".into(),
                            )
                        }
                    }
                }
                _ => return Parsed::Usage(format!("bpcp: unrecognized option '--{name}'")),
            }
            continue;
        }
        for c in s[1..].chars() {
            match c {
                'p' => a.preserve = true,
                'r' => a.recursive = true,
                'd' | 'f' | 't' => {
                    return Parsed::Usage(format!(
                        "bpcp: -{c} is BProc's internal server mode, which this bpcp does not use"
                    ))
                }
                c => return Parsed::Usage(format!("bpcp: invalid option -- '{c}'")),
            }
        }
    }
    Parsed::Run(a)
}

/// `-1:path` (a node given by a negative number): an operand.
fn is_node_operand(s: &str) -> bool {
    s.strip_prefix('-')
        .and_then(|r| r.split_once(':'))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits `host:path`: the first `:` before any `/` ends the host, and a `user@` before the
/// host is accepted and ignored (rcp's rules). `None` for a local path.
pub fn split_operand(s: &str) -> (Option<&str>, &str) {
    match s.find([':', '/']) {
        Some(i) if s.as_bytes()[i] == b':' => {
            let host = &s[..i];
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            (Some(host), &s[i + 1..])
        }
        _ => (None, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Parsed {
        parse(v.iter().map(OsString::from).collect())
    }

    #[test]
    fn operands_split_like_rcp() {
        assert_eq!(split_operand("2:/tmp"), (Some("2"), "/tmp"));
        assert_eq!(split_operand("-1:/etc/x"), (Some("-1"), "/etc/x"));
        assert_eq!(split_operand("bob@n3:x"), (Some("n3"), "x"));
        assert_eq!(split_operand("/a:b"), (None, "/a:b"));
        assert_eq!(split_operand("3:"), (Some("3"), ""));
        assert_eq!(split_operand("n[0-3]:/tmp"), (Some("n[0-3]"), "/tmp"));
        assert_eq!(split_operand("plain"), (None, "plain"));
    }

    #[test]
    fn options() {
        let Parsed::Run(a) = args(&["-rp", "a", "2:/tmp"]) else { panic!() };
        assert!(a.recursive && a.preserve);
        assert_eq!(a.operands, ["a", "2:/tmp"]);
        assert_eq!(args(&["-h"]), Parsed::Usage("bpcp: invalid option -- 'h'".into()));
        assert!(matches!(args(&["-t", "x"]), Parsed::Usage(_)));
        assert!(matches!(args(&["--fanout", "0", "a", "b"]), Parsed::Usage(_)));
        let Parsed::Run(a) = args(&["--fanout", "2", "a", "all:/tmp"]) else { panic!() };
        assert_eq!(a.fanout, 2);
        assert_eq!(args(&["--help"]), Parsed::Help);
        let Parsed::Run(a) = args(&["-p", "-1:/etc/hosts", "x", "--fanout=3"]) else { panic!() };
        assert_eq!(
            (a.operands.as_slice(), a.fanout),
            (&["-1:/etc/hosts".to_owned(), "x".to_owned()][..], 3)
        );
        let Parsed::Run(a) = args(&["--", "-r", "y"]) else { panic!() };
        assert_eq!(a.operands, ["-r", "y"]);
    }
}
