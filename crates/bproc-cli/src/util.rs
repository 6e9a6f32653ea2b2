//! Small helpers shared by the tools: C-style number parsing and output that treats a closed
//! pipe as success (`bpstat | head`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Parses an integer as C's `strtol(s, &end, 0)` with a full-string check: decimal, `0x` hex,
/// or leading-`0` octal, with an optional sign.
pub fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else {
        body.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok())?
    };
    Some(if neg { -v } else { v })
}

/// Writes `text` to stdout. A closed pipe is not an error: the reader has what it wanted.
pub fn write_out(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Where the cluster key lives unless a configuration says otherwise.
pub const DEFAULT_KEYFILE: &str = "/etc/clustermatic/key";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_int("10"), Some(10));
        assert_eq!(parse_c_int("0x10"), Some(16));
        assert_eq!(parse_c_int("010"), Some(8));
        assert_eq!(parse_c_int("0"), Some(0));
        assert_eq!(parse_c_int("-1"), Some(-1));
        assert_eq!(parse_c_int("08"), None);
        assert_eq!(parse_c_int("1x"), None);
        assert_eq!(parse_c_int(""), None);
    }
}
