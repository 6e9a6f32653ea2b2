//! bpctl: change nodes. See `bproc_admin::bpctl`.
fn main() -> std::process::ExitCode {
    bproc_admin::bpctl::main(std::env::args_os().skip(1).collect())
}
