//! bpghost: a remote process's ghost on the master. See `bproc_ghost`.
fn main() -> std::process::ExitCode {
    bproc_ghost::main(std::env::args_os().next().unwrap_or_default())
}
