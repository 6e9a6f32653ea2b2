//! beoboot: build a network boot image for diskless nodes. See `bproc_beoboot::cli`.
fn main() -> std::process::ExitCode {
    bproc_beoboot::cli::main(std::env::args_os().skip(1).collect())
}
