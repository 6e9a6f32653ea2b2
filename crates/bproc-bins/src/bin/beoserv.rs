//! beoserv: the boot server. Parses options, loads BProc's configuration, starts like
//! bpmaster (see `bproc_bins::daemon`: the command returns once the server is bound, or
//! prints why it could not be), then runs `bproc_beoserv::BootServer`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bproc_beoserv::BootServer;
use bproc_bins::daemon::Daemon;
use bproc_bins::logging;
use bproc_master::config::Config;
use lexopt::prelude::*;

const USAGE: &str = "Usage: beoserv [-h] [-V] [-d] [-v]... [-c file] [--print-address]
Serves DHCP to the nodes the configuration's `node MAC` lines name (on its first interface)
and the boot image (bootfile) over HTTP to their iPXE firmware.
  -h               print this message and exit
  -V               print the version and exit
  -d               do not daemonize: stay in the foreground and log to stderr
  -v               more log output (repeat for more)
  -c FILE          configuration file (default /etc/clustermatic/config)
  --print-address  print \"HTTP-ADDRESS MASTER-ADDRESS PID\" on stdout once serving
";

struct Args {
    foreground: bool,
    verbose: u8,
    config: PathBuf,
    print_address: bool,
}

fn parse() -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        foreground: false,
        verbose: 0,
        config: "/etc/clustermatic/config".into(),
        print_address: false,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("beoserv version {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('d') => a.foreground = true,
            Short('v') => a.verbose += 1,
            Short('c') => a.config = p.value()?.into(),
            Long("print-address") => a.print_address = true,
            other => return Err(other.unexpected()).context(USAGE.trim_end().to_owned()),
        }
    }
    Ok(Some(a))
}

/// Loads the configuration, starts the daemon, binds (its HTTP server starts a thread, so
/// only after the fork) and serves.
fn main() -> ExitCode {
    let loaded = parse().and_then(|a| {
        let Some(a) = a else { return Ok(None) };
        let config = Config::load(&a.config)?;
        Ok(Some((a, config)))
    });
    let (a, config) = match loaded {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("beoserv: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match Daemon::begin("beoserv", a.foreground) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if let Err(e) = daemon.log(|| logging::facility(&config.log_facility), a.verbose.max(1)) {
        return daemon.exit(Err(e));
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let server = match BootServer::bind(&config) {
        Ok(s) => s,
        Err(e) => return daemon.exit(Err(format!("{:#}", anyhow::Error::from(e)))),
    };
    tracing::info!(
        "serving DHCP on {} and the boot image at http://{}; nodes' master {}",
        server.interface(),
        server.http_addr(),
        server.master_addr()
    );
    let report = if a.print_address {
        format!("{} {} {}", server.http_addr(), server.master_addr(), std::process::id())
    } else {
        String::new()
    };
    daemon.ready(&report);
    server.run();
    daemon.exit(Ok::<(), String>(()))
}
