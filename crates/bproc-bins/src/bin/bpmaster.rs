//! bpmaster: the master daemon. Parses options, loads the configuration, starts in the
//! background (see `bproc_bins::daemon`) and runs `bproc_master::serve`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bproc_bins::daemon::Daemon;
use bproc_bins::logging;
use bproc_bins::Usage;
use bproc_master::{config::Config, Options};
use lexopt::prelude::*;

const USAGE: &str = "Usage: bpmaster [-h] [-V] [-d] [-v]... [-i] [-c file]
  -h               print this message and exit
  -V               print the version and exit
  -d               do not daemonize: stay in the foreground and log to stderr
                   (otherwise logs go to syslog with the config's logfacility)
  -v               more log output (repeat for more)
  -i               accept slaves of another software version
  -c FILE          configuration file (default /etc/clustermatic/config)
  --keygen [FILE]  create the cluster key (default /etc/clustermatic/key) and exit
  --print-address  print \"TCP-ADDRESS SOCKET PID\" on stdout once listening
  --event-hub NAME serve this machine's process events at the abstract Unix socket NAME to
                   the slaves running on it as the same user (a virtual cluster: bpslave
                   --event-hub), which then need not each subscribe to them
";

struct Args {
    foreground: bool,
    verbose: u8,
    config: PathBuf,
    options: Options,
    print_address: bool,
}

/// The arguments, or the exit code of an option that ends the program (`-h`, `--keygen`).
fn parse() -> anyhow::Result<Result<Args, ExitCode>> {
    let mut a = Args {
        foreground: false,
        verbose: 0,
        config: "/etc/clustermatic/config".into(),
        options: Options::default(),
        print_address: false,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(Err(ExitCode::SUCCESS));
            }
            Short('V') | Long("version") => {
                println!("bpmaster version {}", env!("CARGO_PKG_VERSION"));
                return Ok(Err(ExitCode::SUCCESS));
            }
            Short('d') => a.foreground = true,
            Short('v') => a.verbose += 1,
            Short('i') => a.options.ignore_version = true,
            Short('c') => a.config = p.value()?.into(),
            Short('m') => bail!("message tracing (-m) is not supported by this bpmaster"),
            Long("print-address") => a.print_address = true,
            Long("event-hub") => a.options.event_hub = Some(p.value()?.into()),
            Long("keygen") => return Ok(Err(bproc_admin::keygen("bpmaster", &mut p)?)),
            other => return Err(Usage(other.unexpected().to_string()).into()),
        }
    }
    Ok(Ok(a))
}

/// Loads the configuration, starts the daemon (in the background unless `-d`) and serves.
fn main() -> ExitCode {
    let loaded = match parse() {
        Ok(Ok(a)) => load(a),
        Ok(Err(code)) => return code,
        Err(e) => Err(e),
    };
    let (a, config) = match loaded {
        Ok(loaded) => loaded,
        Err(e) if e.is::<Usage>() => {
            // The error first, then what the options are.
            eprint!("bpmaster: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("bpmaster: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match Daemon::begin("bpmaster", a.foreground) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = serve(a, config, &daemon);
    daemon.exit(result.map_err(|e| format!("{e:#}")))
}

/// The arguments and the configuration, read before the daemon forks so that their errors
/// reach the terminal at once. The path is made absolute first: the daemon moves to `/`, and
/// SIGHUP reads the file again.
fn load(mut a: Args) -> anyhow::Result<(Args, Config)> {
    a.config = std::path::absolute(&a.config)
        .with_context(|| format!("configuration file {}", a.config.display()))?;
    let config = Config::load(&a.config)?;
    Ok((a, config))
}

fn serve(a: Args, config: Config, daemon: &Daemon) -> anyhow::Result<()> {
    daemon.log(|| logging::facility(&config.log_facility), a.verbose)?;
    bproc_master::serve(config, a.options, |addrs, socket| {
        let report = if a.print_address {
            let first = addrs.first().map(ToString::to_string).unwrap_or_default();
            format!("{first} {} {}", socket.display(), std::process::id())
        } else {
            String::new()
        };
        daemon.ready(&report);
    })?;
    Ok(())
}
