//! End-to-end tests: real bpmaster and bpslave daemons on loopback, driven through the client
//! tools as a user would. Each test starts its own virtual cluster in its own directory and
//! kills every daemon it started when it ends, also on failure.

mod bpcp;
mod bpsh;
mod capi;
mod clients;
mod completions;
mod daemons;
mod deb;
mod exhaust;
mod faults;
mod ghosts;
mod libs;
mod manpages;
mod migrate;
mod mpi;
mod nodes;
mod nss;
mod policy;
mod status;
mod vcluster;
mod vm;

use std::path::{Path, PathBuf};

/// Directory of the binaries under test.
pub fn bins() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bpmaster")).parent().expect("bin dir").to_owned()
}
