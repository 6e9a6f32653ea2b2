//! `bplib`: list and change the library list, the files every machine has at the same path,
//! which process images (`bproc_move`, `bproc_rfork`, `bproc_dump`) name instead of carrying.
//!
//! Options as in BProc: `-c` clears, `-a NAMES` adds, `-d NAMES` deletes, `-l` lists one
//! name per line; a `-` among the names reads one name per line from stdin. With several
//! modes the last wins; with none, bplib prints its usage. Changes need root. Any failure
//! prints `bplib: ...` on stderr and exits 1.
//!
//! Deliberate differences from BProc 4.0.0pre8:
//! - the error labels name the call correctly (`bproc_libadd`, not `broc_libadd`);
//! - the names of one `-a` or `-d` go to the master as one change, so a failure (a relative
//!   path; a name not on the list for `-d`) changes nothing instead of half the list;
//! - blank lines read from stdin are skipped.

use std::ffi::OsString;
use std::io::BufRead;
use std::process::ExitCode;

use bproc_client::{BprocError, Client, LibOp};
use lexopt::prelude::*;

const USAGE: &str = "Usage: bplib -c | -a NAMES... | -d NAMES... | -l
  -h        print this message and exit
  -v        print the version and exit
  -c        clear the library list
  -a NAMES  add absolute paths to the list (- reads names from stdin, one per line)
  -d NAMES  remove paths from the list (- reads names from stdin, one per line)
  -l        print the list, one path per line
Files on the list are named, not copied, when a process moves: they must be identical at
the same path on every node. Changes need root.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Clear,
    Add,
    Delete,
    List,
}

/// Runs bplib with `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let mut p = lexopt::Parser::from_args(args);
    let mut mode = None;
    let mut names: Vec<String> = Vec::new();
    loop {
        let arg = match p.next() {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(e) => return fail(format!("{e}\n{USAGE}")),
        };
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Short('v') | Long("version") => {
                println!("bplib version {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Short('c') => mode = Some(Mode::Clear),
            Short('a') => mode = Some(Mode::Add),
            Short('d') => mode = Some(Mode::Delete),
            Short('l') => mode = Some(Mode::List),
            Value(v) => names.push(v.to_string_lossy().into_owned()),
            other => return fail(format!("{}\n{USAGE}", other.unexpected())),
        }
    }
    let Some(mode) = mode else {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    if mode == Mode::Clear && !names.is_empty() {
        return fail("No library names allowed with -c");
    }
    let names = match expand_stdin(names) {
        Ok(n) => n,
        Err(e) => return fail(format!("reading names from stdin: {e}")),
    };
    let (label, r) = match Client::connect() {
        Err(e) => ("connecting to the master", Err(e)),
        Ok(mut c) => match mode {
            Mode::Clear => ("bproc_libclear", c.edit_libraries(LibOp::Clear, &[])),
            Mode::Add => ("bproc_libadd", c.edit_libraries(LibOp::Add, &names)),
            Mode::Delete => ("bproc_libdel", c.edit_libraries(LibOp::Delete, &names)),
            Mode::List => ("bproc_liblist", list(&mut c)),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{label}: {e}")),
    }
}

/// Replaces each `-` with the names on stdin.
fn expand_stdin(names: Vec<String>) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        if n != "-" {
            out.push(n);
            continue;
        }
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                out.push(line);
            }
        }
    }
    Ok(out)
}

fn list(c: &mut Client) -> Result<(), BprocError> {
    let text: String = c.libraries(&[])?.iter().map(|n| format!("{n}\n")).collect();
    crate::write_out(&text).map_err(BprocError::Io)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("bplib: {msg}");
    ExitCode::FAILURE
}
