//! bpctl: change nodes. See `bproc_cli::bpctl`.
fn main() -> std::process::ExitCode {
    bproc_cli::bpctl::main(std::env::args_os().skip(1).collect())
}
