//! The node names file, `STATEDIR/hosts`: every node's names and addresses for the NSS
//! module `libnss_bproc.so.2` (crate `bproc-nss`), so that any program resolves `n3`, `.3` and
//! `master` (with `hosts: files bproc dns` in `/etc/nsswitch.conf`).
//!
//! The format is `/etc/hosts`'s: `ADDRESS NAME ALIAS...` per line, `#` comments. Node N is
//! `nN` with alias `.N` on each address the configuration gives it (its first address
//! first), plus the names of the configuration's `nodename` lines; the master is `master`
//! (alias `n-1`) on each address it listens on. The file follows the configuration, so a
//! node resolves whether it is up or not, as with Scyld's beonss.
//!
//! It is rewritten by the state writer, after changes and only when its text changed,
//! atomically (a temporary file renamed over it), so a lookup reads a whole file and never
//! waits for the master.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::config::Config;

/// The file's text for `config`, with the master on `listen`.
pub(crate) fn text(config: &Config, listen: &[SocketAddr]) -> String {
    let mut text = String::from("# Node names, written by bpmaster for libnss_bproc.so.2\n");
    let mut masters: Vec<IpAddr> = listen.iter().map(|a| a.ip()).collect();
    masters.retain(|ip| !ip.is_unspecified());
    masters.dedup();
    for ip in masters {
        let _ = writeln!(text, "{ip} master n-1");
    }
    for n in &config.nodes {
        let mut names = format!("n{0} .{0}", n.node);
        for format in &config.node_names {
            let _ = write!(names, " {}", format.replace("%N", &n.node.to_string()));
        }
        for addr in &n.addrs {
            let _ = writeln!(text, "{addr} {names}");
        }
    }
    text
}

/// Replaces `path` with `text` atomically.
pub(crate) fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    // Readable by every user: names are no secret, and every program resolves them.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_master() {
        let config = Config::parse(
            "iprange 0 10.0.0.10 10.0.0.11\nip 5 10.0.0.20 10.0.1.20\nnodename node%N\n",
            Path::new("config"),
        )
        .unwrap();
        let listen = ["10.0.0.1:2223".parse().unwrap(), "0.0.0.0:2223".parse().unwrap()];
        assert_eq!(
            text(&config, &listen),
            "# Node names, written by bpmaster for libnss_bproc.so.2\n\
             10.0.0.1 master n-1\n\
             10.0.0.10 n0 .0 node0\n\
             10.0.0.11 n1 .1 node1\n\
             10.0.0.20 n5 .5 node5\n\
             10.0.1.20 n5 .5 node5\n"
        );
    }

    #[test]
    fn write_replaces() {
        let dir = std::env::temp_dir().join(format!("bproc-names-{}", std::process::id()));
        let path = dir.join("hosts");
        write(&path, "a\n").unwrap();
        write(&path, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
