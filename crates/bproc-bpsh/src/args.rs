//! bpsh's command line, parsed as BProc's getopt loop does: options may come before the node
//! spec and between it and the command (`bpsh 3 -p uname`); the first word after the node
//! spec starts the command, and everything after it belongs to the command.

use std::ffi::OsString;

use lexopt::prelude::*;

/// What `-h` and usage errors print.
pub const USAGE: &str = "usage: bpsh [options] nodenumber command
       bpsh -a [options] command
       bpsh -A [options] command
  -h, --help          print this message
  -v                  print the version
  -a                  run on every node that is up
  -A                  run on every node that is not down
  -n                  remote stdin is /dev/null
  -N                  no I/O forwarding: remote stdin, stdout and stderr are /dev/null
  -L                  line-buffer each node's output
  -p                  prefix each line with its node number (implies -L)
  -s                  show each node's output in node order, one node after another
  -d                  print a divider line before each node's output (implies -s)
  -b N                I/O buffer size and longest line for -L (default 4096)
  -I, --stdin FILE    remote stdin from FILE on the node
  -O, --stdout FILE   remote stdout to FILE on the node
  -E, --stderr FILE   remote stderr to FILE on the node
  -t, --time          print the elapsed time in seconds when all processes are done
  -l USER             ignored (rsh compatibility)
Beyond BProc (long options only):
  --timeout SECS      kill every remote process still running after SECS seconds
  --fail-fast         kill the others as soon as one process fails or a node is lost
  --fold              print nothing until the end, then each distinct result (stdout on
                      stdout, stderr on stderr, and how it ended) once under the nodes that
                      produced it (like dshbak -c); not with -p, -d or --json
  --report            print a table of each node's exit status at the end (on stderr)
  --json              print one JSON object per node at the end (stdout, stderr, status)
NODES is a node specification: 3, 0-7,9, n[0-3], allup, ...
";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args {
    /// The node specification (`-a` gives `allup`, `-A` `allnotdown`).
    pub spec: String,
    /// Remote stdin is /dev/null (`-n`).
    pub no_stdin: bool,
    /// No forwarding at all (`-N`).
    pub no_io: bool,
    /// Line-buffered output (`-L`, implied by `-p`).
    pub line: bool,
    /// Node-number prefixes (`-p`).
    pub prefix: bool,
    /// Node after node (`-s`, implied by `-d`).
    pub sequential: bool,
    /// Dividers (`-d`).
    pub divider: bool,
    /// Buffer size (`-b`).
    pub buffer: usize,
    /// Remote files for fds 0, 1, 2 (`-I`, `-O`, `-E`).
    pub files: [Option<String>; 3],
    /// Print the elapsed time (`-t`).
    pub time: bool,
    /// Kill what still runs after this long (`--timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Kill the others when one fails (`--fail-fast`).
    pub fail_fast: bool,
    /// Group identical outputs at the end (`--fold`).
    pub fold: bool,
    /// Per-node exit table at the end (`--report`).
    pub report: bool,
    /// JSON results at the end (`--json`).
    pub json: bool,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// How parsing ended when it does not give a command to run.
#[derive(Debug, PartialEq)]
pub enum Stop {
    /// Print this to stdout and exit 0 (`-v`).
    Version,
    /// Print the usage to stdout and exit 1 (`-h`, as BProc does).
    Help,
    /// A usage error: print the message and the usage, exit 1.
    Usage(String),
}

fn u(e: lexopt::Error) -> Stop {
    Stop::Usage(e.to_string())
}

/// Parses bpsh's arguments (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Args, Stop> {
    let mut a = Args { buffer: 4096, ..Args::default() };
    let mut have_spec = false;
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(u)? {
        match arg {
            Short('h') | Long("help") => return Err(Stop::Help),
            Short('v') | Long("version") => return Err(Stop::Version),
            Short('l') => {
                p.value().map_err(u)?;
            }
            Short('a') => {
                a.spec = "allup".into();
                have_spec = true;
            }
            Short('A') => {
                a.spec = "allnotdown".into();
                have_spec = true;
            }
            Short('1') => {
                a.spec = "-1".into();
                have_spec = true;
            }
            Short('n') => a.no_stdin = true,
            Short('N') => a.no_io = true,
            Short('L') => a.line = true,
            Short('p') => {
                a.prefix = true;
                a.line = true;
            }
            Short('s') => a.sequential = true,
            Short('d') => {
                a.divider = true;
                a.sequential = true;
            }
            Short('b') => {
                let v = p.value().map_err(u)?.string().map_err(u)?;
                match bproc_client::parse_c_int(&v) {
                    Some(n) if n > 0 => a.buffer = n as usize,
                    _ => return Err(Stop::Usage(format!("Invalid buffer size: {v}"))),
                }
            }
            Short('I') | Long("stdin") => {
                a.files[0] = Some(p.value().map_err(u)?.string().map_err(u)?)
            }
            Short('O') | Long("stdout") => {
                a.files[1] = Some(p.value().map_err(u)?.string().map_err(u)?)
            }
            Short('E') | Long("stderr") => {
                a.files[2] = Some(p.value().map_err(u)?.string().map_err(u)?)
            }
            Short('t') | Long("time") => a.time = true,
            Long("timeout") => {
                let v = p.value().map_err(u)?.string().map_err(u)?;
                match v.parse::<f64>() {
                    Ok(secs) if secs > 0.0 && secs.is_finite() => {
                        a.timeout = Some(std::time::Duration::from_secs_f64(secs))
                    }
                    _ => return Err(Stop::Usage(format!("--timeout {v}: expected seconds > 0"))),
                }
            }
            Long("fail-fast") => a.fail_fast = true,
            Long("fold") => a.fold = true,
            Long("report") => a.report = true,
            Long("json") => a.json = true,
            Value(v) if !have_spec => {
                a.spec = v.string().map_err(u)?;
                have_spec = true;
            }
            Value(v) => {
                a.command.push(v);
                a.command.extend(p.raw_args().map_err(u)?);
                break;
            }
            other => return Err(u(other.unexpected())),
        }
    }
    check_fold(&mut a)?;
    if a.command.is_empty() {
        return Err(Stop::Usage("no command given".into()));
    }
    Ok(a)
}

/// `--fold`: what each option does with it, or why it cannot be combined.
fn check_fold(a: &mut Args) -> Result<(), Stop> {
    if a.fold && a.json {
        return Err(Stop::Usage("--fold and --json both collect the output; choose one".into()));
    }
    if a.fold && a.prefix {
        return Err(Stop::Usage(
            "--fold prints each output once under the nodes that produced it; -p would give \
             every node's lines its own number, so nothing would fold: choose one"
                .into(),
        ));
    }
    if a.fold && a.divider {
        return Err(Stop::Usage(
            "--fold heads each group of nodes itself; -d dividers would stand over nothing: \
             choose one"
                .into(),
        ));
    }
    if a.fold {
        // Groups come in node order anyway; -L changes nothing in whole outputs.
        a.sequential = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, Stop> {
        parse(v.iter().map(OsString::from).collect())
    }

    #[test]
    fn options_around_the_node_spec() {
        let a = args(&["3", "-p", "uname", "-a"]).unwrap();
        assert_eq!(a.spec, "3");
        assert!(a.prefix && a.line);
        assert_eq!(a.command, vec![OsString::from("uname"), "-a".into()]);
        let a = args(&["-a", "-p", "-s", "-d", "-L", "ls", "-l", "/tmp"]).unwrap();
        assert_eq!(a.spec, "allup");
        assert!(a.divider && a.sequential && a.line);
        assert_eq!(a.command.len(), 3);
        let a = args(&["-A", "-b", "0x100", "-O", "/tmp/o", "cat"]).unwrap();
        assert_eq!((a.spec.as_str(), a.buffer), ("allnotdown", 256));
        assert_eq!(a.files[1].as_deref(), Some("/tmp/o"));
    }

    #[test]
    fn extensions() {
        let a =
            args(&["--timeout", "1.5", "--fold", "--report", "-a", "--fail-fast", "x"]).unwrap();
        assert_eq!(a.timeout, Some(std::time::Duration::from_millis(1500)));
        assert!(a.fold && a.report && a.fail_fast);
        assert!(matches!(args(&["--timeout", "0", "1", "x"]), Err(Stop::Usage(_))));
        assert!(matches!(args(&["--fold", "--json", "1", "x"]), Err(Stop::Usage(_))));
        // Issue "hardening", item 16: --fold with each output option.
        assert!(
            matches!(args(&["--fold", "-p", "1", "x"]), Err(Stop::Usage(m)) if m.contains("-p"))
        );
        assert!(
            matches!(args(&["--fold", "-d", "1", "x"]), Err(Stop::Usage(m)) if m.contains("-d"))
        );
        let a = args(&["--fold", "-s", "-L", "-t", "--report", "1", "x"]).unwrap();
        assert!(a.fold && !a.sequential && a.line && a.time && a.report);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(args(&["3"]), Err(Stop::Usage("no command given".into())));
        assert_eq!(args(&["-b", "0", "3", "x"]), Err(Stop::Usage("Invalid buffer size: 0".into())));
        assert_eq!(args(&["-h"]), Err(Stop::Help));
        assert_eq!(args(&["-v", "3", "x"]), Err(Stop::Version));
        assert!(matches!(args(&["-Z", "3", "x"]), Err(Stop::Usage(_))));
    }
}
