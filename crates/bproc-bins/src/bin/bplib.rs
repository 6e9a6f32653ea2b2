//! bplib: list and change the library list. See `bproc_cli::bplib`.
fn main() -> std::process::ExitCode {
    bproc_cli::bplib::main(std::env::args_os().skip(1).collect())
}
