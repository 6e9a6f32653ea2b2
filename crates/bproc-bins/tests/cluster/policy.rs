//! The workspace's dependency policy: versions come from
//! `[workspace.dependencies]` with `default-features = false`, and every crate takes its
//! dependencies from there.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("workspace root")
}

/// Lines of the `[section]` of a manifest, without comments and blanks.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            out.push(line);
        }
    }
    out
}

#[test]
fn registry_dependencies_disable_default_features() {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let deps = section(&text, "workspace.dependencies");
    assert!(deps.len() > 5, "no workspace dependencies found");
    for line in deps {
        if line.contains("path =") {
            continue;
        }
        assert!(
            line.contains("default-features = false"),
            "Cargo.toml: `{line}` must set default-features = false"
        );
    }
}

#[test]
fn crates_take_versions_from_the_workspace() {
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        for kind in ["dependencies", "dev-dependencies"] {
            for line in section(&text, kind) {
                assert!(
                    line.contains("workspace = true"),
                    "{}: `{line}` must use `workspace = true`",
                    manifest.display()
                );
            }
        }
    }
}
