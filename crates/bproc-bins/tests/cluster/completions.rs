//! The shell completions in `completions/`: bash's driven through its completion machinery
//! (`COMP_WORDS`, `COMP_CWORD`, the registered function, `COMPREPLY`) against a live cluster,
//! fish's through `complete -C`, zsh's loaded by `compinit`.

use std::path::{Path, PathBuf};
use std::process::Command;

use bproc_testkit::{TestCluster, TestCommand};

use crate::bins;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../completions")
}

/// What bash's completion for the words `line` (the last one is being completed, maybe
/// empty) offers, with the tools of `c` in `PATH`.
fn bash_complete(c: &TestCluster, line: &[&str]) -> Vec<String> {
    let script = r#"
        source "$1"; shift
        COMP_WORDS=("$@")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        spec=$(complete -p "$1")
        fn=${spec#*-F }
        fn=${fn%% *}
        "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let path = format!("{}:{}", bins().display(), std::env::var("PATH").unwrap_or_default());
    let out = TestCommand::from(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script, "bash"])
            .arg(dir().join("bash/bproc"))
            .args(line)
            .env("BPROC_SOCKET", c.socket())
            .env("PATH", path)
            .current_dir(c.dir()),
    )
    .output_of();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{line:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_options_nodes_and_paths() {
    let c = TestCluster::up(&bins(), 4, "complete");
    let has = |line: &[&str], want: &[&str]| {
        let got = bash_complete(&c, line);
        for w in want {
            assert!(got.iter().any(|g| g == w), "{line:?}: no {w} in {got:?}");
        }
        got
    };
    // Node specifications: numbers and nN from the master, state words, lists.
    has(&["bpsh", ""], &["0", "3", "n0", "n3", "allup", "master"]);
    let got = has(&["bpsh", "n"], &["n0", "n3", "notdown"]);
    assert!(got.iter().all(|g| g.starts_with('n')), "{got:?}");
    has(&["bpstat", "al"], &["allup", "allnotdown", "all"]);
    has(&["bpctl", "-S", "1,"], &["1,2", "1,n3"]);
    // Options, and the values of options.
    has(&["bpsh", "--f"], &["--fail-fast", "--fold"]);
    assert_eq!(bash_complete(&c, &["bpctl", "-S", "1", "-s", ""]), ["up", "down", "boot", "error"]);
    has(&["bpctl", "-S", "1", "-u", "ro"], &["root"]);
    has(&["bpstat", "--j"], &["--json"]);
    has(&["bpcluster", "d"], &["down", "demo"]);
    // The command after the node spec, or at once with -a.
    has(&["bpsh", "2", "bpst"], &["bpstat"]);
    has(&["bpsh", "-a", "-p", "bpst"], &["bpstat"]);
    // bpcp: NODE: first, then paths on the node (bash splits the word at ':').
    has(&["bpcp", "2"], &["2:"]);
    let etc = bash_complete(&c, &["bpcp", "2", ":", "/et"]);
    assert_eq!(etc, ["/etc/"]);
    assert_eq!(bash_complete(&c, &["bpcp", "2:/et"]), ["2:/etc/"]);
    has(&["brsh", "n"], &["n0", "n3"]);
}

#[test]
fn fish_and_zsh_completions_load() {
    if Command::new("fish").arg("--version").output().is_ok() {
        let out = TestCommand::from(Command::new("fish").arg("-c").arg(format!(
            "source {}; complete -C 'bpctl -s '",
            dir().join("fish/bproc.fish").display()
        )))
        .output_of();
        let text = String::from_utf8_lossy(&out.stdout);
        let states: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap()).collect();
        assert_eq!(states, ["boot", "down", "error", "up"], "{text}");
    } else {
        eprintln!("SKIPPED: no fish to check its completion script (apt install fish)");
    }
    if Command::new("zsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no zsh to check its completion script (apt install zsh)");
        return;
    }
    let out = TestCommand::from(Command::new("zsh").arg("-f").arg("-c").arg(format!(
        "fpath=({} $fpath); autoload -U compinit; compinit -u -D; \
             print -- $_comps[bpsh] $_comps[bpcp] $_comps[bpctl] $_comps[bpstat]",
        dir().join("zsh").display()
    )))
    .output_of();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "_bproc _bproc _bproc _bproc\n");
    let out =
        TestCommand::from(Command::new("zsh").arg("-n").arg(dir().join("zsh/_bproc"))).output_of();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
