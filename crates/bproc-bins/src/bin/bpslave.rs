//! bpslave: the slave daemon. Parses options, starts in the background (see
//! `bproc_bins::daemon`), optionally gives the node its own namespaces, and runs
//! `bproc_slave::serve`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bproc_bins::daemon::Daemon;
use bproc_bins::logging;
use bproc_bins::Usage;
use bproc_link::ClusterKey;
use bproc_slave::{isolate, Options, DEFAULT_KEYFILE};
use lexopt::prelude::*;

const USAGE: &str = "Usage: bpslave [options] MASTER[:PORT] [PORT]
  -h                  print this message and exit
  -V                  print the version and exit
  -v                  verbose (implies -d; repeat for more)
  -d                  do not daemonize: stay in the foreground and log to stderr
  -e                  log to stderr, also in the background
  -l FACILITY         syslog facility in the background (default daemon)
  -i                  accepted for compatibility (the master decides: bpmaster -i)
  -r                  reconnect after losing the master
  -s ADDR             connect from local address ADDR
  --key FILE          cluster key (default /etc/clustermatic/key)
  --grace SECS        keep a lost session this long for resuming (default 60)
  --reboot-cmd CMD    run CMD for `bpctl -R` (default: rejoin as a fresh node)
  --halt-cmd CMD      run CMD for `bpctl -H` (default: stop this daemon)
  --poweroff-cmd CMD  run CMD for `bpctl -P` (default: stop this daemon)
  --isolate NAME      give this node its own host name NAME and its own /tmp
  --diskless          with --isolate, as root: processes run in an empty root holding only
                      /proc, /dev, /tmp and the programs and libraries launches bring
  --check-isolation   exit 0 if --isolate can work here, else explain why not
  --client-socket P   where programs on this node reach the cluster ($BPROC_SOCKET on the
                      node; default /run/bproc/node.sock, /tmp/.bproc/node.sock with --isolate)
  --no-client-socket  programs on this node cannot use the cluster
  --event-hub NAME    take process events from the hub at the abstract Unix socket NAME
                      (bpmaster --event-hub), shared by the slaves of one machine; from a
                      subscription of its own if the hub cannot be reached or goes
";

struct Args {
    opts: Options,
    diskless: bool,
    foreground: bool,
    /// `-e`: log to stderr even in the background.
    stderr: bool,
    /// `-l`: the syslog facility in the background.
    facility: logging::Facility,
    verbose: u8,
    isolate: Option<String>,
}

fn parse() -> anyhow::Result<Option<Args>> {
    let mut keyfile = PathBuf::from(DEFAULT_KEYFILE);
    let mut source = None;
    let mut reconnect = false;
    let mut grace = None;
    let mut cmds: [Option<String>; 3] = Default::default();
    let (mut foreground, mut verbose, mut isolate_as, mut diskless) = (false, 0u8, None, false);
    let (mut stderr, mut facility) = (false, logging::Facility::LOG_DAEMON);
    let mut positional = Vec::new();
    let mut client_socket: Option<Option<PathBuf>> = None;
    let mut event_hub = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("bpslave version {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('v') => {
                verbose += 1;
                foreground = true;
            }
            Short('d') => foreground = true,
            Short('i') => {}
            Short('e') => stderr = true,
            Short('l') => facility = logging::facility(&p.value()?.string()?)?,
            Short('r') => reconnect = true,
            Short('s') => {
                let v = p.value()?.string()?;
                source = Some(v.parse().with_context(|| format!("-s {v}: not an IPv4 address"))?);
            }
            Short('m') => bail!("message tracing (-m) is not supported by this bpslave"),
            Long("key") => keyfile = p.value()?.into(),
            Long("grace") => {
                let v = p.value()?.string()?;
                grace = Some(Duration::from_secs(
                    v.parse().with_context(|| format!("--grace {v}: not a number of seconds"))?,
                ));
            }
            Long("reboot-cmd") => cmds[0] = Some(p.value()?.string()?),
            Long("halt-cmd") => cmds[1] = Some(p.value()?.string()?),
            Long("poweroff-cmd") => cmds[2] = Some(p.value()?.string()?),
            Long("isolate") => isolate_as = Some(p.value()?.string()?),
            Long("diskless") => diskless = true,
            Long("client-socket") => client_socket = Some(Some(p.value()?.into())),
            Long("no-client-socket") => client_socket = Some(None),
            Long("event-hub") => event_hub = Some(p.value()?.into()),
            Long("check-isolation") => {
                isolate::isolate("bproc-check")?;
                return Ok(None);
            }
            Value(v) => positional.push(v.string()?),
            other => return Err(Usage(other.unexpected().to_string()).into()),
        }
    }
    let master = bproc_slave::master_address(&positional).map_err(|e| match e {
        bproc_slave::MasterArgError::Missing | bproc_slave::MasterArgError::TooMany(_) => {
            anyhow::Error::from(Usage(e.to_string()))
        }
        e => e.into(),
    })?;
    // Read the key now: isolation may hide the directory it is in.
    let mut opts = Options::new(master, ClusterKey::load(&keyfile)?);
    opts.source = source;
    opts.reconnect = reconnect;
    opts.event_hub = event_hub;
    if let Some(g) = grace {
        opts.grace = g;
    }
    let [reboot, halt, poweroff] = cmds;
    (opts.reboot_cmd, opts.halt_cmd, opts.poweroff_cmd) = (reboot, halt, poweroff);
    opts.client_socket = client_socket.unwrap_or_else(|| {
        // An isolated node's /tmp is its own; other nodes of a virtual cluster share /run.
        Some(
            if isolate_as.is_some() { "/tmp/.bproc/node.sock" } else { "/run/bproc/node.sock" }
                .into(),
        )
    });
    if opts.client_socket.as_ref().is_some_and(|p| p.is_relative()) {
        bail!("--client-socket needs an absolute path");
    }
    if diskless && (isolate_as.is_none() || !opts.authority.root) {
        bail!("--diskless needs --isolate NAME and root: the node's root lives in its own /tmp");
    }
    Ok(Some(Args { opts, foreground, stderr, facility, verbose, isolate: isolate_as, diskless }))
}

/// Reads the options and the key, starts the daemon (in the background unless `-d`), and
/// serves the master.
fn main() -> ExitCode {
    let a = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) if e.is::<Usage>() => {
            // The error first, then what the options are.
            eprint!("bpslave: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("bpslave: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut daemon = match Daemon::begin("bpslave", a.foreground) {
        Ok(d) => d,
        Err(code) => return code,
    };
    daemon.keep_stderr(a.stderr);
    let result = serve(a, &daemon);
    daemon.exit(result.map_err(|e| format!("{e:#}")))
}

fn serve(mut a: Args, daemon: &Daemon) -> anyhow::Result<()> {
    daemon.log(|| Ok(a.facility), a.verbose)?;
    // New namespaces need a single-threaded process: before the runtime starts.
    if let Some(name) = &a.isolate {
        isolate::isolate(name)?;
    }
    if a.diskless {
        a.opts.diskless = Some(isolate::diskless(std::path::Path::new("/tmp/.bproc-node"))?);
    }
    bproc_slave::serve(a.opts, || daemon.ready(""))?;
    Ok(())
}
