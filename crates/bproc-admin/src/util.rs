//! Small helpers shared by the tools: C-style number parsing and output that treats a closed
//! pipe as success (`bpstat | head`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes `text` to stdout. A closed pipe is not an error: the reader has what it wanted.
pub fn write_out(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

pub use bproc_link::DEFAULT_KEYFILE;

/// Handles `--keygen [FILE]` once the parser has seen `--keygen`: takes FILE from
/// `--keygen=FILE` or the next argument, writes a new key there (mode 0600, never
/// overwriting) and reports it. `prog` prefixes the error message.
pub fn keygen(prog: &str, p: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let path: PathBuf = match p.optional_value() {
        Some(v) => v.into(),
        None => match p.next()? {
            Some(lexopt::Arg::Value(v)) => v.into(),
            Some(other) => return Err(other.unexpected()),
            None => DEFAULT_KEYFILE.into(),
        },
    };
    Ok(match bproc_link::ClusterKey::create(&path) {
        Ok(_) => {
            println!("cluster key written to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            ExitCode::FAILURE
        }
    })
}
