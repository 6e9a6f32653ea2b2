//! brsh: rsh-compatible entry to bpsh for MPI launchers. See `bproc_bpsh::brsh_main`.
fn main() -> std::process::ExitCode {
    bproc_bpsh::brsh_main(std::env::args_os().skip(1).collect())
}
