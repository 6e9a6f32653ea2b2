//! bplib: list and change the library list. See `bproc_admin::bplib`.
fn main() -> std::process::ExitCode {
    bproc_admin::bplib::main(std::env::args_os().skip(1).collect())
}
