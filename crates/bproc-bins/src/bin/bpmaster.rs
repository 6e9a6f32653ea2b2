//! bpmaster: the master daemon. Parses options, loads the configuration and runs
//! `bproc_master::serve`.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bproc_master::{config::Config, Options};
use lexopt::prelude::*;

const USAGE: &str = "Usage: bpmaster [-h] [-V] [-d] [-v]... [-i] [-c file]
  -h               print this message and exit
  -V               print the version and exit
  -d               do not daemonize (stay in the foreground)
  -v               more log output on stderr (repeat for more)
  -i               accept slaves of another software version
  -c FILE          configuration file (default /etc/clustermatic/config)
  --keygen [FILE]  create the cluster key (default /etc/clustermatic/key) and exit
  --print-address  print \"TCP-ADDRESS SOCKET\" on stdout once listening
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
            Long("keygen") => return Ok(Err(bproc_cli::keygen("bpmaster", &mut p)?)),
            other => return Err(other.unexpected()).context(USAGE.trim_end().to_owned()),
        }
    }
    Ok(Ok(a))
}

fn run() -> anyhow::Result<ExitCode> {
    let a = match parse()? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    bproc_bins::init_logging(a.verbose);
    let config = Config::load(&a.config)?;
    bproc_master::serve(config, a.options, |addrs, socket| {
        if a.print_address {
            let first = addrs.first().map(ToString::to_string).unwrap_or_default();
            println!("{first} {}", socket.display());
            let _ = std::io::stdout().flush();
        }
        if !a.foreground {
            // Keep stderr: logs go wherever the service manager points it.
            if let Err(e) = nix::unistd::daemon(false, true) {
                tracing::error!("cannot daemonize: {e}");
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpmaster: {e:#}");
            ExitCode::FAILURE
        }
    }
}
