//! bpsh: run a program on cluster nodes. See `bproc_bpsh`.
fn main() -> std::process::ExitCode {
    bproc_bpsh::main(std::env::args_os().skip(1).collect())
}
