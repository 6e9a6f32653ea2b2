//! The node names file and lookups in it, without I/O.
//!
//! bpmaster writes the file (`STATEDIR/hosts`) in `/etc/hosts`'s format: `ADDRESS NAME
//! ALIAS...` per line, `#` comments. A name may have several lines (a node with several
//! addresses); the first line that names it gives the canonical name and the aliases, and
//! every line that names it adds its address, in file order. Names compare without regard to
//! case and to one trailing dot (`N3.` is `n3`).

use std::net::Ipv4Addr;

/// One answer: a canonical name, its aliases and its addresses (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The canonical name (`n3`, `master`).
    pub name: String,
    /// Other names of the same host (`.3`).
    pub aliases: Vec<String>,
    /// Its IPv4 addresses, the first one first.
    pub addrs: Vec<Ipv4Addr>,
}

/// The lines of `text` that parse: an IPv4 address and at least one name.
fn entries(text: &str) -> impl Iterator<Item = (Ipv4Addr, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let addr = words.next()?.parse().ok()?;
        let names: Vec<&str> = words.collect();
        (!names.is_empty()).then_some((addr, names))
    })
}

fn same_name(a: &str, b: &str) -> bool {
    let b = b.strip_suffix('.').filter(|b| !b.is_empty() && *b != ".").unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

/// The host named `name` (canonical or alias) in `text`.
pub fn by_name(text: &str, name: &str) -> Option<Host> {
    let mut host: Option<Host> = None;
    for (addr, names) in entries(text) {
        if !names.iter().any(|n| same_name(n, name)) {
            continue;
        }
        match &mut host {
            None => {
                host = Some(Host {
                    name: names[0].to_owned(),
                    aliases: names[1..].iter().map(|s| s.to_string()).collect(),
                    addrs: vec![addr],
                })
            }
            Some(h) if !h.addrs.contains(&addr) => h.addrs.push(addr),
            Some(_) => {}
        }
    }
    host
}

/// The host at `addr` in `text`: the first line with that address.
pub fn by_addr(text: &str, addr: Ipv4Addr) -> Option<Host> {
    let (_, names) = entries(text).find(|(a, _)| *a == addr)?;
    Some(Host {
        name: names[0].to_owned(),
        aliases: names[1..].iter().map(|s| s.to_string()).collect(),
        addrs: vec![addr],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Node names\n\
        10.0.0.1 master n-1\n\
        10.0.0.10 n0 .0 node0\n\
        10.0.0.13 n3 .3   # a comment\n\
        10.0.1.13 n3 .3\n\
        garbage line\n\
        10.0.0.99\n";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn names_and_aliases() {
        let h = by_name(FILE, "n3").unwrap();
        assert_eq!(h.name, "n3");
        assert_eq!(h.aliases, [".3"]);
        assert_eq!(h.addrs, [ip("10.0.0.13"), ip("10.0.1.13")]);
        assert_eq!(by_name(FILE, ".3"), Some(h.clone()));
        assert_eq!(by_name(FILE, "N3."), Some(h));
        assert_eq!(by_name(FILE, "node0").unwrap().name, "n0");
        assert_eq!(by_name(FILE, "master").unwrap().addrs, [ip("10.0.0.1")]);
        assert_eq!(by_name(FILE, "n-1").unwrap().name, "master");
        assert_eq!(by_name(FILE, "n4"), None);
        assert_eq!(by_name(FILE, "."), None);
        assert_eq!(by_name(FILE, ""), None);
        assert_eq!(by_name(FILE, "a"), None);
    }

    #[test]
    fn addresses() {
        let h = by_addr(FILE, ip("10.0.1.13")).unwrap();
        assert_eq!((h.name.as_str(), h.aliases.as_slice()), ("n3", &[".3".to_owned()][..]));
        assert_eq!(h.addrs, [ip("10.0.1.13")]);
        assert_eq!(by_addr(FILE, ip("10.0.0.99")), None);
        assert_eq!(by_addr(FILE, ip("10.0.0.2")), None);
    }
}
