//! The network-boot part of BProc's configuration file: what the boot server (`beoserv`) reads
//! from the same file as bpmaster, as Clustermatic's beoserv did.
//!
//! | directive | meaning |
//! |---|---|
//! | `bootfile FILE` | the boot image (`beoboot` writes it) served to every node |
//! | `node [NODE] MAC...` | these hardware addresses belong to NODE (default: the node after the last `node` line) |
//! | `bootserver on\|off` (ours) | whether `beoserv` serves this file's nodes (default on) |
//! | `bootport PORT` (ours) | the boot server's HTTP port (default 80) |
//! | `kernelcommandline ARG...` | more arguments for the nodes' kernel, after the image's own |
//! | `pxeloader FILE` (ours) | the network boot program plain PXE firmware (without iPXE) gets by TFTP; it should be iPXE itself (`undionly.kpxe`, Debian's `ipxe` package), which then asks again and gets the script |
//! | `bootkey image\|once` (ours) | `once`: the boot server hands the cluster key (`keyfile`) to each node once per boot, for images built without it; `image` (default): the image carries it |
//!
//! A node's address comes from the `ip`/`iprange` lines: the boot server answers a hardware
//! address only if a `node` line names it and that node has an address. bpmaster itself uses
//! none of this; it only checks the lines, so that a mistake is reported when either daemon
//! starts.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Not a hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid hardware address: {0} (expected six bytes like 52:54:00:12:34:01)")]
pub struct MacError(pub String);

/// What is wrong with one of the boot server's lines.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BootError {
    /// A directive that takes exactly one argument got more.
    #[error("{0} takes one argument")]
    OneArgument(String),
    /// `bootserver` is neither on nor off.
    #[error("bootserver must be on or off, not `{0}`")]
    OnOff(String),
    /// `bootfile` with several files.
    #[error("per-node boot files are not supported: give one bootfile")]
    PerNodeBootfile,
    /// A path directive with an empty argument.
    #[error("empty path for {0}")]
    EmptyPath(&'static str),
    /// `bootport` is not a port.
    #[error("invalid port for bootport: {0} (must be 1-65535)")]
    Port(String),
    /// `bootkey` is neither image nor once.
    #[error("bootkey must be image or once, not `{0}`")]
    BootKey(String),
    /// Not one of the boot server's directives.
    #[error("{0} is not a boot directive")]
    NotBoot(String),
    /// A `node` line's number is negative or too large.
    #[error("invalid node number: {0}")]
    Node(String),
    /// The node after the last `node` line does not fit an `i32`.
    #[error("no node number after the last")]
    NoNodeAfter,
    /// `node NODE` without a hardware address.
    #[error("missing hardware address for node {0}")]
    MissingMac(i32),
    /// Not a hardware address.
    #[error(transparent)]
    Mac(#[from] MacError),
    /// A hardware address given to two nodes.
    #[error("hardware address already assigned: {mac} (node {node})")]
    MacTaken {
        /// The address.
        mac: Mac,
        /// The node it was given to first.
        node: i32,
    },
}

/// The default HTTP port of the boot server.
pub const DEFAULT_BOOT_PORT: u16 = 80;

/// A hardware (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl std::str::FromStr for Mac {
    type Err = MacError;

    /// Six hexadecimal bytes separated by `:` or `-` (`52:54:00:12:34:01`).
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let bad = || MacError(s.into());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

/// The boot server's part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `bootserver on|off`: whether the boot server answers at all.
    pub server: bool,
    /// `bootfile FILE`: the image, relative paths from the configuration's directory.
    pub bootfile: Option<PathBuf>,
    /// `bootport PORT`: the HTTP port images are served on.
    pub port: u16,
    /// `kernelcommandline ARG...`: appended to the kernel command line.
    pub kernel_args: Vec<String>,
    /// `bootkey once`: hand the cluster key to each node once per boot.
    pub key_once: bool,
    /// `pxeloader FILE`: what plain PXE firmware is sent by TFTP.
    pub pxe_loader: Option<PathBuf>,
    /// Hardware address → node, from the `node` lines.
    pub macs: Vec<(Mac, i32)>,
    /// The node a `node` line without a number names.
    next: i64,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            server: true,
            bootfile: None,
            port: DEFAULT_BOOT_PORT,
            kernel_args: Vec::new(),
            key_once: false,
            pxe_loader: None,
            macs: Vec::new(),
            next: 0,
        }
    }
}

impl BootConfig {
    /// The node a hardware address belongs to.
    pub fn node_for_mac(&self, mac: Mac) -> Option<i32> {
        self.macs.iter().find(|(m, _)| *m == mac).map(|(_, n)| *n)
    }

    /// Applies one boot directive (`tag` with `args`, at least one); `dir` anchors relative
    /// paths. Returns the node a `node` line named.
    pub(crate) fn apply(
        &mut self,
        tag: &str,
        args: &[String],
        dir: &Path,
    ) -> Result<Option<i32>, BootError> {
        let one = || match args {
            [a] => Ok(a.as_str()),
            _ => Err(BootError::OneArgument(tag.into())),
        };
        match tag {
            "bootserver" => {
                self.server = match one()? {
                    "on" | "yes" => true,
                    "off" | "no" => false,
                    other => return Err(BootError::OnOff(other.into())),
                }
            }
            "bootfile" => {
                if args.len() > 1 {
                    return Err(BootError::PerNodeBootfile);
                }
                let file = one()?;
                if file.is_empty() {
                    return Err(BootError::EmptyPath("bootfile"));
                }
                self.bootfile = Some(dir.join(file));
            }
            "bootport" => {
                let p = one()?;
                self.port = crate::config::parse_c_integer(p)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| BootError::Port(p.into()))?;
            }
            "bootkey" => {
                self.key_once = match one()? {
                    "once" => true,
                    "image" => false,
                    other => return Err(BootError::BootKey(other.into())),
                }
            }
            "pxeloader" => {
                let file = one()?;
                if file.is_empty() {
                    return Err(BootError::EmptyPath("pxeloader"));
                }
                self.pxe_loader = Some(dir.join(file));
            }
            "kernelcommandline" => self.kernel_args.extend(args.iter().cloned()),
            "node" => return self.node(args).map(Some),
            _ => return Err(BootError::NotBoot(tag.into())),
        }
        Ok(None)
    }

    /// `node [NODE] MAC...`
    fn node(&mut self, args: &[String]) -> Result<i32, BootError> {
        let (node, macs) = match crate::config::parse_c_integer(&args[0]) {
            Some(n) => {
                let n = i32::try_from(n)
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| BootError::Node(args[0].clone()))?;
                (n, &args[1..])
            }
            None => (i32::try_from(self.next).map_err(|_| BootError::NoNodeAfter)?, args),
        };
        if macs.is_empty() {
            return Err(BootError::MissingMac(node));
        }
        let mut seen: HashMap<Mac, i32> = self.macs.iter().copied().collect();
        for m in macs {
            let mac: Mac = m.parse()?;
            if let Some(owner) = seen.insert(mac, node) {
                return Err(BootError::MacTaken { mac, node: owner });
            }
            self.macs.push((mac, node));
        }
        self.next = i64::from(node) + 1;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/clustermatic/config"))
    }

    #[test]
    fn node_lines_map_hardware_addresses() {
        let c = parse(
            "iprange 0 10.0.0.10 10.0.0.12\n\
             node 52:54:00:12:34:01\n\
             node 52-54-00-12-34-02 52:54:00:12:34:0a\n\
             node 7 02:00:00:00:00:07\n\
             bootfile boot.img\nbootport 8080\nkernelcommandline quiet 'x=a b'\n",
        )
        .unwrap();
        let b = &c.boot;
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        assert_eq!(b.node_for_mac(mac("52:54:00:12:34:01")), Some(0));
        assert_eq!(b.node_for_mac(mac("52:54:00:12:34:0A")), Some(1));
        assert_eq!(b.node_for_mac(mac("02:00:00:00:00:07")), Some(7));
        assert_eq!(b.node_for_mac(mac("02:00:00:00:00:08")), None);
        assert_eq!(b.bootfile.as_deref(), Some(Path::new("/etc/clustermatic/boot.img")));
        assert_eq!((b.port, b.server), (8080, true));
        assert_eq!(b.kernel_args, ["quiet", "x=a b"]);
        // Node 7 has no address: a warning, not an error.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].line, 4, "{:?}", c.warnings);
        assert!(c.warnings[0].message.contains("node 7 has no ip"), "{:?}", c.warnings);
        assert_eq!(mac("52:54:00:12:34:0a").to_string(), "52:54:00:12:34:0a");
    }

    #[test]
    fn bad_boot_lines_are_errors() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("node 0 52:54:00:12:34\n").contains("invalid hardware address"));
        assert!(err("node 0\n").contains("missing hardware address"));
        assert_eq!(
            err("node 0 52:54:00:12:34:01\nnode 52:54:00:12:34:01\n"),
            "/etc/clustermatic/config:2: hardware address already assigned: 52:54:00:12:34:01 (node 0)"
        );
        assert!(err("bootserver maybe\n").contains("on or off"));
        assert!(err("bootport 0\n").contains("bootport"));
        assert!(err("bootfile 0-3 /a\n").contains("per-node"));
        assert!(!parse("bootserver off\n").unwrap().boot.server);
        assert!(parse("bootkey once\n").unwrap().boot.key_once);
        let loader = parse("pxeloader undionly.kpxe\n").unwrap().boot.pxe_loader;
        assert_eq!(loader.as_deref(), Some(Path::new("/etc/clustermatic/undionly.kpxe")));
        assert!(err("bootkey always\n").contains("image or once"));
    }
}
