//! What the boot server serves over HTTP, without I/O: a path and the asking address in, a
//! page out.
//!
//! | path | what | to whom |
//! |---|---|---|
//! | `/boot.ipxe` | the iPXE script: the kernel with its command line, the initramfs, `boot` | configured nodes |
//! | `/kernel`, `/initrd.gz` | the image's parts | configured nodes |
//! | `/key` | the cluster key, once per DHCP acknowledgement of that node (`bootkey once`) | that node |
//! | `/stats` | the server's counters, one `name value` per line | anyone |
//!
//! The script names the node's master on the kernel command line (`bproc.master=IP:PORT`) and
//! its number (`bproc.node=N`), so the node needs nothing else from DHCP.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;

/// The site's fixed content.
#[derive(Debug)]
pub struct Site {
    /// `http://SERVER:PORT`.
    pub base_url: String,
    /// Where the nodes' slaves connect.
    pub master: SocketAddrV4,
    /// The image's kernel command line, then the configuration's `kernelcommandline`.
    pub cmdline: String,
    /// Configured node addresses → node numbers.
    pub nodes: HashMap<Ipv4Addr, i32>,
    /// The cluster key, when it is handed over at boot (`bootkey once`).
    pub key: Option<Vec<u8>>,
    /// Nodes acknowledged by DHCP that have not fetched the key since.
    pub armed: Mutex<HashSet<Ipv4Addr>>,
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The iPXE script for node `.0`.
    Script(i32, String),
    /// The kernel, for node `.0`.
    Kernel(i32),
    /// The initramfs, for node `.0`.
    Initrd(i32),
    /// The cluster key, for node `.0`.
    Key(i32, Vec<u8>),
    /// The counters.
    Stats,
    /// Not ours to give: (status, reason).
    Refused(u16, &'static str),
}

impl Site {
    /// The iPXE script for node `node`.
    pub fn script(&self, node: i32) -> String {
        let mut args = format!("{} bproc.master={} bproc.node={node}", self.cmdline, self.master);
        if self.key.is_some() {
            let _ = write!(args, " bproc.keyurl={}/key", self.base_url);
        }
        format!(
            "#!ipxe\nkernel {base}/kernel initrd=initrd.gz {args}\ninitrd {base}/initrd.gz\nboot\n",
            base = self.base_url
        )
    }

    /// A DHCP acknowledgement of `ip`: it may now fetch the key once.
    pub fn arm_key(&self, ip: Ipv4Addr) {
        if self.key.is_some() {
            self.armed.lock().unwrap_or_else(|p| p.into_inner()).insert(ip);
        }
    }

    /// The page for `path` asked by `peer` (only GET and HEAD reach here).
    pub fn route(&self, path: &str, peer: Option<Ipv4Addr>) -> Page {
        let path = path.split('?').next().unwrap_or("");
        if path == "/stats" {
            return Page::Stats;
        }
        let Some(node) = peer.and_then(|ip| self.nodes.get(&ip)).copied() else {
            return Page::Refused(403, "not a configured node's address");
        };
        match path {
            "/boot.ipxe" => Page::Script(node, self.script(node)),
            "/kernel" => Page::Kernel(node),
            "/initrd.gz" => Page::Initrd(node),
            "/key" => {
                let Some(key) = &self.key else {
                    return Page::Refused(404, "the key is not handed out (bootkey)");
                };
                let ip = peer.unwrap_or(Ipv4Addr::UNSPECIFIED);
                if self.armed.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip) {
                    Page::Key(node, key.clone())
                } else {
                    Page::Refused(403, "the key was already handed over since this node's DHCP")
                }
            }
            _ => Page::Refused(404, "no such file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(key: Option<&[u8]>) -> Site {
        Site {
            base_url: "http://10.22.3.1:80".into(),
            master: "10.22.3.1:2223".parse().unwrap(),
            cmdline: "console=ttyS0 quiet".into(),
            nodes: HashMap::from([(Ipv4Addr::new(10, 22, 3, 10), 0)]),
            key: key.map(<[u8]>::to_vec),
            armed: Mutex::new(HashSet::new()),
        }
    }

    #[test]
    fn the_script_boots_the_image_with_the_master_named() {
        let node = Some(Ipv4Addr::new(10, 22, 3, 10));
        assert_eq!(
            site(None).route("/boot.ipxe", node),
            Page::Script(
                0,
                "#!ipxe\n\
                 kernel http://10.22.3.1:80/kernel initrd=initrd.gz console=ttyS0 quiet \
                 bproc.master=10.22.3.1:2223 bproc.node=0\n\
                 initrd http://10.22.3.1:80/initrd.gz\n\
                 boot\n"
                    .into()
            )
        );
        assert_eq!(site(None).route("/kernel", node), Page::Kernel(0));
        assert_eq!(site(None).route("/initrd.gz?x=1", node), Page::Initrd(0));
        assert_eq!(site(None).route("/etc/passwd", node), Page::Refused(404, "no such file"));
        let stranger = Some(Ipv4Addr::new(10, 22, 3, 99));
        assert!(matches!(site(None).route("/kernel", stranger), Page::Refused(403, _)));
        assert_eq!(site(None).route("/stats", stranger), Page::Stats);
    }

    #[test]
    fn the_key_goes_once_per_dhcp_acknowledgement() {
        let s = site(Some(b"secret"));
        let ip = Ipv4Addr::new(10, 22, 3, 10);
        let Page::Script(_, script) = s.route("/boot.ipxe", Some(ip)) else { panic!() };
        assert!(script.contains(" bproc.keyurl=http://10.22.3.1:80/key\n"), "{script}");
        assert!(matches!(s.route("/key", Some(ip)), Page::Refused(403, _)));
        s.arm_key(ip);
        assert_eq!(s.route("/key", Some(ip)), Page::Key(0, b"secret".to_vec()));
        assert!(matches!(s.route("/key", Some(ip)), Page::Refused(403, _)));
        assert!(matches!(site(None).route("/key", Some(ip)), Page::Refused(404, _)));
    }
}
