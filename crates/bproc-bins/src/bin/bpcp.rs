//! bpcp: copy files to, from and between nodes. See `bproc_bpcp`.
fn main() -> std::process::ExitCode {
    bproc_bpcp::main(std::env::args_os().skip(1).collect())
}
