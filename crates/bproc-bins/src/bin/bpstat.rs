//! bpstat: show node status. See `bproc_admin::bpstat`.
fn main() -> std::process::ExitCode {
    bproc_admin::bpstat::main(std::env::args_os().skip(1).collect())
}
