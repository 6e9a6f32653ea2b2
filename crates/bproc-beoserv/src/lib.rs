//! beoserv: the boot server of a cluster of diskless nodes, as Scyld's and Clustermatic's
//! beoserv were. It reads BProc's configuration file (the `node MAC` lines, `bootfile`,
//! `interface`, the node table; see `bproc_master::bootconf`) and serves, on the cluster
//! interface only:
//!
//! - DHCP ([`dhcp`]) to the hardware addresses the `node` lines name, each getting its node's
//!   address; nobody else gets an answer;
//! - the boot image over HTTP ([`http`]) to the nodes' firmware: iPXE, which QEMU's NICs and
//!   most current network cards run or can chain-load, is sent to a script that loads the
//!   kernel and the initramfs;
//! - an IPv6 router advertisement ([`ra`]) whenever iPXE asks for an address, which spares
//!   each node iPXE's 15-second wait for an IPv6 router;
//! - with `pxeloader FILE`, that one file by TFTP (port 69) to plain PXE firmware, which
//!   should be iPXE to chain-load (`undionly.kpxe`).
//!
//! Bad packets and refused requests are dropped and counted ([`Stats`], also served at
//! `/stats`), never fatal: each packet is handled inside a panic boundary as well.
//!
//! # Threads
//! One thread receives DHCP and answers each packet at once (an answer is a few hundred bytes
//! built from a table in memory). [`HTTP_WORKERS`] threads serve HTTP, each one request at a
//! time, so that many nodes booting at once share the link without one slow download holding
//! up the scripts the others need. The image is read once, at start, and shared.
//!
//! ```no_run
//! use bproc_master::config::Config;
//! let config = Config::load("/etc/clustermatic/config".as_ref()).unwrap();
//! let server = bproc_beoserv::BootServer::bind(&config).unwrap();
//! server.run();
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dhcp;
pub mod http;
pub mod ra;
mod tftp;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bproc_beoboot::{BeobootError, BootImage};
use bproc_master::config::Config;
use dhcproto::v4::MessageType;
use thiserror::Error;
use tracing::{debug, info, warn};

use dhcp::{DhcpPlan, Dropped, Lease};
use http::{Page, Site};

/// How many HTTP requests are served at once.
pub const HTTP_WORKERS: usize = 8;
/// The DHCP server port.
pub const DHCP_SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const DHCP_CLIENT_PORT: u16 = 68;

/// Why the boot server cannot start.
#[derive(Debug, Error)]
pub enum BeoservError {
    /// The configuration turns it off.
    #[error("{}: bootserver off: there is nothing to serve", .0.display())]
    Disabled(PathBuf),
    /// No image to serve.
    #[error("{}: no bootfile line: build an image with beoboot and name it there", .0.display())]
    NoBootfile(PathBuf),
    /// No cluster interface.
    #[error("{}: no interface line: name the cluster network's interface (interface NAME)", .0.display())]
    NoInterface(PathBuf),
    /// The interface has no IPv4 address (or does not exist).
    #[error("interface {0} has no IPv4 address: configure the cluster network first")]
    NoAddress(String),
    /// No `node` line names a node with an address.
    #[error("{}: no node line names a node with an ip or iprange address: nobody to boot", .0.display())]
    NoNodes(PathBuf),
    /// The image cannot be read.
    #[error(transparent)]
    Image(#[from] BeobootError),
    /// The PXE loader cannot be read.
    #[error("cannot read the PXE loader {} (pxeloader)", path.display())]
    Loader {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster key (for `bootkey once`) cannot be read.
    #[error("cannot read the cluster key {} (bootkey once)", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket cannot be opened.
    #[error("cannot serve {what} on {addr} (is another server using it?)")]
    Bind {
        /// DHCP or HTTP.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the server has done, for `/stats` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// DHCP offers sent.
    pub dhcp_offers: AtomicU64,
    /// DHCP acknowledgements sent.
    pub dhcp_acks: AtomicU64,
    /// DHCP refusals (NAK) sent: a node asked for an address not its own.
    pub dhcp_naks: AtomicU64,
    /// DHCP packets that were not valid requests.
    pub dhcp_malformed: AtomicU64,
    /// DHCP requests from hardware addresses no `node` line names.
    pub dhcp_unknown: AtomicU64,
    /// DHCP messages for another server, releases, declines, informs.
    pub dhcp_ignored: AtomicU64,
    /// HTTP requests answered with content.
    pub http_served: AtomicU64,
    /// HTTP requests refused (unknown address, unknown path, key already given, bad method).
    pub http_refused: AtomicU64,
    /// Bytes of content sent over HTTP.
    pub http_bytes: AtomicU64,
    /// TFTP transfers of the PXE loader started.
    pub tftp_served: AtomicU64,
    /// TFTP requests refused (another file, a write).
    pub tftp_refused: AtomicU64,
}

impl Stats {
    /// `name value` lines.
    pub fn render(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "dhcp_offers {}\ndhcp_acks {}\ndhcp_naks {}\ndhcp_malformed {}\ndhcp_unknown {}\n\
             dhcp_ignored {}\nhttp_served {}\nhttp_refused {}\nhttp_bytes {}\n\
             tftp_served {}\ntftp_refused {}\n",
            l(&self.dhcp_offers),
            l(&self.dhcp_acks),
            l(&self.dhcp_naks),
            l(&self.dhcp_malformed),
            l(&self.dhcp_unknown),
            l(&self.dhcp_ignored),
            l(&self.http_served),
            l(&self.http_refused),
            l(&self.http_bytes),
            l(&self.tftp_served),
            l(&self.tftp_refused),
        )
    }
}

pub(crate) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The state the DHCP, HTTP and TFTP threads share.
pub(crate) struct Shared {
    plan: DhcpPlan,
    site: Site,
    kernel: Arc<[u8]>,
    initrd: Arc<[u8]>,
    pub(crate) stats: Stats,
    /// Hardware addresses already reported as unknown (bounded), so a stranger's retries do
    /// not fill the log.
    strangers: Mutex<HashSet<[u8; 6]>>,
}

/// A bound boot server.
pub struct BootServer {
    dhcp: UdpSocket,
    http: tiny_http::Server,
    http_addr: SocketAddrV4,
    interface: String,
    /// TFTP's socket, the loader's name and content, with `pxeloader`.
    tftp: Option<(UdpSocket, String, Arc<[u8]>)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BootServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootServer")
            .field("interface", &self.interface)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// The IPv4 address and mask of `interface`.
fn interface_addr(interface: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != interface {
            return None;
        }
        let ip = a.address?.as_sockaddr_in()?.ip();
        let mask = a.netmask.and_then(|m| m.as_sockaddr_in().map(|m| m.ip()));
        Some((ip, mask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0))))
    })
}

impl BootServer {
    /// Reads the image and opens the DHCP and HTTP sockets on the configuration's first
    /// `interface`.
    pub fn bind(config: &Config) -> Result<BootServer, BeoservError> {
        let boot = &config.boot;
        if !boot.server {
            return Err(BeoservError::Disabled(config.path.clone()));
        }
        let bootfile =
            boot.bootfile.as_ref().ok_or_else(|| BeoservError::NoBootfile(config.path.clone()))?;
        let interface = config
            .interfaces
            .first()
            .ok_or_else(|| BeoservError::NoInterface(config.path.clone()))?
            .arg
            .clone();
        let (server, netmask) =
            interface_addr(&interface).ok_or_else(|| BeoservError::NoAddress(interface.clone()))?;
        let image = BootImage::read(bootfile)?;
        let mut leases = HashMap::new();
        let mut nodes = HashMap::new();
        for (mac, node) in &boot.macs {
            let Some(ip) = config.nodes.iter().find(|n| n.node == *node).map(|n| n.addrs[0]) else {
                continue;
            };
            leases.insert(*mac, Lease { node: *node, ip });
            nodes.insert(ip, *node);
        }
        if leases.is_empty() {
            return Err(BeoservError::NoNodes(config.path.clone()));
        }
        // The master listens on this interface's address at bprocport, or where a listen
        // line on this address says.
        let master = config
            .listen
            .iter()
            .find_map(|a| match a {
                SocketAddr::V4(a) if *a.ip() == server && a.port() != 0 => Some(*a),
                _ => None,
            })
            .unwrap_or(SocketAddrV4::new(server, config.port));
        let key = if boot.key_once {
            let path = config
                .keyfile
                .clone()
                .unwrap_or_else(|| PathBuf::from(bproc_master::DEFAULT_KEYFILE));
            Some(std::fs::read(&path).map_err(|source| BeoservError::Key { path, source })?)
        } else {
            None
        };
        let http_addr = SocketAddrV4::new(server, boot.port);
        let base_url = format!("http://{http_addr}");
        let mut cmdline = image.cmdline.clone();
        for a in &boot.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(a);
        }
        let tftp = match &boot.pxe_loader {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|source| BeoservError::Loader { path: path.clone(), source })?;
                let name = path
                    .file_name()
                    .map_or_else(|| "pxeloader".to_owned(), |n| n.to_string_lossy().into_owned());
                let addr = SocketAddrV4::new(server, 69);
                let sock = UdpSocket::bind(addr).map_err(|source| BeoservError::Bind {
                    what: "TFTP",
                    addr: addr.to_string(),
                    source,
                })?;
                Some((sock, name, Arc::<[u8]>::from(bytes)))
            }
            None => None,
        };
        let dhcp = bind_dhcp(&interface)?;
        let http = tiny_http::Server::http(http_addr).map_err(|e| BeoservError::Bind {
            what: "HTTP",
            addr: http_addr.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let shared = Arc::new(Shared {
            plan: DhcpPlan {
                server,
                netmask,
                script_url: format!("{base_url}/boot.ipxe"),
                pxe_loader: tftp.as_ref().map(|(_, name, _)| name.clone()),
                leases,
            },
            site: Site { base_url, master, cmdline, nodes, key, armed: Mutex::new(HashSet::new()) },
            kernel: image.kernel.into(),
            initrd: image.initrd.into(),
            stats: Stats::default(),
            strangers: Mutex::new(HashSet::new()),
        });
        Ok(BootServer { dhcp, http, http_addr, interface, tftp, shared })
    }

    /// Where HTTP is served.
    pub fn http_addr(&self) -> SocketAddrV4 {
        self.http_addr
    }

    /// Where the nodes are told their master is.
    pub fn master_addr(&self) -> SocketAddrV4 {
        self.shared.site.master
    }

    /// The interface DHCP is served on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Serves until the process ends.
    pub fn run(self) {
        let http = Arc::new(self.http);
        for i in 0..HTTP_WORKERS {
            let (http, shared) = (http.clone(), self.shared.clone());
            let spawned =
                std::thread::Builder::new().name(format!("http-{i}")).spawn(move || loop {
                    match http.recv() {
                        Ok(req) => serve_http(&shared, req),
                        Err(e) => warn!("HTTP: {e}"),
                    }
                });
            if let Err(e) = spawned {
                warn!("cannot start HTTP worker {i}: {e}");
            }
        }
        if let Some((sock, name, bytes)) = self.tftp {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("tftp".into())
                .spawn(move || tftp::serve(sock, name, bytes, shared));
            if let Err(e) = spawned {
                warn!("cannot start the TFTP server: {e}");
            }
        }
        let ra = ra::start(&self.interface);
        serve_dhcp(&self.dhcp, &self.shared, ra);
    }
}

/// The DHCP socket: port 67 on `interface` alone, allowed to broadcast.
fn bind_dhcp(interface: &str) -> Result<UdpSocket, BeoservError> {
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_SERVER_PORT);
    let err =
        |source| BeoservError::Bind { what: "DHCP", addr: format!("{interface} port 67"), source };
    let sock = UdpSocket::bind(addr).map_err(err)?;
    sock.set_broadcast(true).map_err(err)?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(sock)
}

fn serve_dhcp(sock: &UdpSocket, shared: &Shared, ra: Option<std::sync::mpsc::Sender<()>>) {
    let mut buf = [0u8; 1500];
    loop {
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) => {
                warn!("DHCP: receive: {e}");
                continue;
            }
        };
        let packet = &buf[..n];
        // A panic in the decoder must not take the server down: drop the packet instead.
        let answered = std::panic::catch_unwind(|| dhcp::answer(&shared.plan, packet))
            .unwrap_or_else(|_| {
                warn!("DHCP: a {n}-byte packet upset the decoder; dropped");
                Err(Dropped::Malformed)
            });
        let reply = match answered {
            Ok(r) => r,
            Err(why) => {
                let s = &shared.stats;
                match why {
                    Dropped::Malformed => bump(&s.dhcp_malformed),
                    Dropped::NotForUs => bump(&s.dhcp_ignored),
                    Dropped::UnknownMac => {
                        bump(&s.dhcp_unknown);
                        if n >= 34 {
                            let mut mac = [0u8; 6];
                            mac.copy_from_slice(&packet[28..34]);
                            let mut seen =
                                shared.strangers.lock().unwrap_or_else(|p| p.into_inner());
                            if seen.len() < 1024 && seen.insert(mac) {
                                info!(
                                    "DHCP: {} is not in any node line; not answering it",
                                    bproc_master::bootconf::Mac(mac)
                                );
                            }
                        }
                    }
                }
                continue;
            }
        };
        let Lease { node, ip } = reply.lease;
        let s = &shared.stats;
        let what = match reply.kind {
            MessageType::Offer => {
                bump(&s.dhcp_offers);
                "offer"
            }
            MessageType::Ack => {
                bump(&s.dhcp_acks);
                // The node's own system, not its firmware, fetches the key: arming it only
                // then keeps the window in which someone else could take it short.
                if !reply.ipxe {
                    shared.site.arm_key(ip);
                }
                "ack"
            }
            _ => {
                bump(&s.dhcp_naks);
                "nak"
            }
        };
        let dest = match reply.unicast {
            Some(addr) if addr == ip => SocketAddrV4::new(addr, DHCP_CLIENT_PORT),
            Some(relay) => SocketAddrV4::new(relay, DHCP_SERVER_PORT),
            None => SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
        };
        let firmware = match (reply.ipxe, reply.pxe) {
            (true, _) => " (iPXE: sent to the boot script)",
            (_, true) => " (PXE: sent to the loader by TFTP)",
            _ => "",
        };
        info!("DHCP {what} to node {node}: {ip}{firmware}");
        if let Err(e) = sock.send_to(&reply.bytes, dest) {
            warn!("DHCP: cannot send the {what} for node {node} to {dest}: {e}");
        }
        if let (true, Some(ra)) = (reply.ipxe, &ra) {
            let _ = ra.send(());
        }
    }
}

fn serve_http(shared: &Shared, req: tiny_http::Request) {
    use tiny_http::{Header, Method, Response, StatusCode};
    let s = &shared.stats;
    let peer = match req.remote_addr() {
        Some(SocketAddr::V4(a)) => Some(*a.ip()),
        _ => None,
    };
    let head = *req.method() == Method::Head;
    if !head && *req.method() != Method::Get {
        bump(&s.http_refused);
        let _ = req.respond(Response::empty(StatusCode(405)));
        return;
    }
    let page = shared.site.route(req.url(), peer);
    let (body, what, node): (Arc<[u8]>, &str, Option<i32>) = match page {
        Page::Script(n, text) => (text.into_bytes().into(), "the boot script", Some(n)),
        Page::Kernel(n) => (shared.kernel.clone(), "the kernel", Some(n)),
        Page::Initrd(n) => (shared.initrd.clone(), "the initramfs", Some(n)),
        Page::Key(n, key) => (key.into(), "the cluster key", Some(n)),
        Page::Stats => (shared.stats.render().into_bytes().into(), "stats", None),
        Page::Refused(code, why) => {
            bump(&s.http_refused);
            let addr = peer.map_or("?".into(), |p| p.to_string());
            info!("HTTP {} from {addr}: refused ({code}): {why}", req.url());
            let _ = req.respond(Response::from_string(format!("{why}\n")).with_status_code(code));
            return;
        }
    };
    let len = body.len();
    let t0 = std::time::Instant::now();
    let data: Box<dyn std::io::Read + Send> =
        if head { Box::new(std::io::empty()) } else { Box::new(Cursor::new(body)) };
    let mut headers = Vec::new();
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/octet-stream"[..]) {
        headers.push(h);
    }
    // Always a Content-Length, never chunks (tiny_http chunks bodies of 32 KiB and more by
    // default): iPXE then sizes its buffer once instead of growing it as data comes, which
    // took the 14 MiB kernel from 7.5 s to about 1 s under emulation.
    let resp = Response::new(StatusCode(200), headers, data, Some(len), None)
        .with_chunked_threshold(usize::MAX);
    match req.respond(resp) {
        Ok(()) => {
            bump(&s.http_served);
            if !head {
                s.http_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            if let Some(n) = node {
                info!(
                    "HTTP: node {n} fetched {what} ({len} bytes in {:.2} s)",
                    t0.elapsed().as_secs_f64()
                );
            } else {
                debug!("HTTP: served {what}");
            }
        }
        Err(e) => warn!("HTTP: sending {what} failed: {e}"),
    }
}
