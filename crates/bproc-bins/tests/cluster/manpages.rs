//! The man pages render without warnings, each has EXIT STATUS and FILES sections, each
//! program's page names every option its `--help` lists, and `bproc-config(5)` names every
//! directive the master's parser knows.

use std::path::Path;
use std::process::Command;

use crate::bins;
use bproc_testkit::TestCommand;

#[test]
fn man_pages_render_and_cover_the_options() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../man");
    if Command::new("groff").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no groff to render the man pages (apt install groff-base)");
        return;
    }
    let mut pages: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    assert!(pages.len() >= 11, "{pages:?}");
    for page in &pages {
        let out = TestCommand::from(
            Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(page),
        )
        .output_of();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(page).unwrap();
        for section in [".SH EXIT STATUS\n", ".SH FILES\n"] {
            assert!(text.contains(section), "{}: no {section}", page.display());
        }
    }
    // Every short option in a tool's usage text appears in its page.
    for (tool, help, section) in [
        ("bpsh", "--help", 1),
        ("bpctl", "--help", 1),
        ("bpstat", "--help", 1),
        ("bpcp", "--help", 1),
        ("bplib", "-h", 1),
        ("bpcluster", "--help", 1),
        ("bpmaster", "-h", 8),
        ("bpslave", "-h", 8),
        ("brsh", "--help", 1),
    ] {
        let usage = TestCommand::from(Command::new(bins().join(tool)).arg(help)).output_of();
        let usage = String::from_utf8_lossy(&usage.stdout).into_owned()
            + &String::from_utf8_lossy(&usage.stderr);
        let page = std::fs::read_to_string(dir.join(format!("{tool}.{section}")))
            .unwrap()
            .replace("\\-", "-");
        for word in usage.split(|c: char| c.is_whitespace() || c == ',') {
            let opt = word.trim_end_matches(':');
            let short =
                opt.len() == 2 && opt.starts_with('-') && opt.as_bytes()[1].is_ascii_alphabetic();
            let long = opt.starts_with("--")
                && opt.len() > 3
                && opt[2..].bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            let ignored = ["-h", "-v", "-V", "-l", "-f", "--help", "--version"].contains(&opt);
            if (short || long) && !ignored {
                assert!(page.contains(opt), "{tool}.1 does not mention {opt}");
            }
        }
    }
}

/// Every directive `Directive::from_tag` in the master's config parser knows is documented in
/// `bproc-config(5)`, with its default where it has one.
#[test]
fn config_page_names_every_directive() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = std::fs::read_to_string(root.join("crates/bproc-master/src/config.rs")).unwrap();
    let page =
        std::fs::read_to_string(root.join("man/bproc-config.5")).unwrap().replace("\\-", "-");
    let from_tag = &source[source.find("fn from_tag").unwrap()..];
    let from_tag = &from_tag[..from_tag.find("t if FOREIGN_DIRECTIVES").unwrap()];
    let tags: Vec<&str> =
        from_tag.lines().filter_map(|l| l.trim().strip_prefix('"')?.split('"').next()).collect();
    assert!(tags.len() >= 20, "{tags:?}");
    for tag in tags {
        assert!(
            page.contains(&format!("BI \"{tag} "))
                || page.contains(&format!(".B {tag}\n"))
                || page.contains(&format!(".BI {tag} ")),
            "bproc-config.5 does not document {tag}"
        );
    }
    for default in [
        "2223",
        "30",
        "60",
        "32",
        "daemon",
        "/run/bproc/master.sock",
        "/etc/clustermatic/key",
        "/var/lib/bproc",
        "/var/log/clustermatic",
        "8080",
    ] {
        assert!(page.contains(default), "bproc-config.5 does not give the default {default}");
    }
}
