//! bpstat: show node status. See `bproc_cli::bpstat`.
fn main() -> std::process::ExitCode {
    bproc_cli::bpstat::main(std::env::args_os().skip(1).collect())
}
