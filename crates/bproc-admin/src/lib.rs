//! The client tools' logic: `bpstat`, `bpctl` and `bplib`, with BProc's options and output formats.
//!
//! Each tool is a module with a `main(args) -> ExitCode` that the thin binary calls. Options
//! are parsed with `lexopt`, which follows getopt's rules (clustered short options, attached
//! or separate values), so BProc-era command lines parse as they did.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bpctl;
pub mod bplib;
pub mod bpstat;
pub mod bpstat_fmt;
pub mod bpstat_procs;
mod util;

pub use bproc_client::parse_c_int;
pub use util::{keygen, write_out, DEFAULT_KEYFILE};
