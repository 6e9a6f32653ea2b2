//! bpcluster: a virtual cluster on this machine. See `bproc_vcluster::cli`.
fn main() -> std::process::ExitCode {
    bproc_vcluster::cli::main(std::env::args_os().skip(1).collect())
}
