//! DHCP for the cluster's nodes, without I/O: a request in, a reply (or the reason there is
//! none) out. Messages are parsed and built by `dhcproto`.
//!
//! Only hardware addresses the configuration's `node` lines name get an answer, always with
//! that node's address (`ip`/`iprange`) and an infinite lease; everyone else on the network
//! is ignored, so the boot server can share a network with another DHCP server that serves
//! other machines. The firmware asks first (iPXE says so with option 175 or the user class
//! `iPXE`): its answer names the boot script by HTTP and carries iPXE's "no ProxyDHCP"
//! setting, so iPXE does not wait seconds for ProxyDHCP offers that never come. Plain PXE
//! firmware (vendor class `PXEClient`, no iPXE) is sent to the `pxeloader` by TFTP, when one
//! is configured: iPXE, which then asks again. The node's own DHCP client asks again once
//! Linux runs; it gets the same address and its host name.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bproc_master::bootconf::Mac;
use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, Encodable, Encoder, HType, Message, MessageType, Opcode,
    OptionCode, UnknownOption,
};

/// iPXE's encapsulated options (RFC-less, "Etherboot"), which its requests carry.
const OPT_IPXE_ENCAP: u8 = 175;
/// Inside option 175: "no ProxyDHCP", so iPXE takes the first offer at once.
const IPXE_NO_PXEDHCP: u8 = 176;

/// One configured node: its number and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The node number.
    pub node: i32,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// What the DHCP server answers with.
#[derive(Debug, Clone)]
pub struct DhcpPlan {
    /// This server's address on the cluster network (its identifier, and the boot server).
    pub server: Ipv4Addr,
    /// The network's mask.
    pub netmask: Ipv4Addr,
    /// The boot script iPXE is told to fetch (`http://SERVER:PORT/boot.ipxe`).
    pub script_url: String,
    /// The file plain PXE firmware is told to fetch by TFTP from this server, if any.
    pub pxe_loader: Option<String>,
    /// The nodes by hardware address.
    pub leases: HashMap<Mac, Lease>,
}

/// Why a packet got no answer; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Not a DHCP message (too short, bad options, not a request, not Ethernet).
    Malformed,
    /// A hardware address no `node` line names.
    UnknownMac,
    /// A request for another server's offer, a release, a decline or an inform.
    NotForUs,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// What it is (offer, ack, nak).
    pub kind: MessageType,
    /// The node it is for.
    pub lease: Lease,
    /// Where it goes: the relay (`giaddr`), the client's address (`ciaddr`), or `None` for
    /// the broadcast address, as a client without an address cannot receive anything else.
    pub unicast: Option<Ipv4Addr>,
    /// The client is iPXE (it was told to fetch the boot script).
    pub ipxe: bool,
    /// The client is plain PXE firmware and was told to fetch the loader by TFTP.
    pub pxe: bool,
}

/// Whether the request comes from iPXE.
fn is_ipxe(req: &Message) -> bool {
    let opts = req.opts();
    opts.get(OptionCode::Unknown(OPT_IPXE_ENCAP)).is_some()
        || matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(c))
            if c.windows(4).any(|w| w == b"iPXE"))
}

/// Whether the request comes from PXE firmware (vendor class `PXEClient...`).
fn is_pxe(req: &Message) -> bool {
    matches!(req.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"))
}

/// Decodes a packet and answers it. Never panics, whatever the bytes.
pub fn answer(plan: &DhcpPlan, packet: &[u8]) -> Result<Reply, Dropped> {
    // dhcproto 0.14's option decoder can panic on some bad lengths (debug assertions and a
    // `len - 1` of the bulk lease query options, 151-158); a packet that makes it panic is
    // as malformed as one it rejects.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(packet)));
    let req = decoded.map_err(|_| Dropped::Malformed)?.map_err(|_| Dropped::Malformed)?;
    // `chaddr()` trusts `hlen`: check it before anything reads the address.
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return Err(Dropped::Malformed);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(req.chaddr());
    let lease = *plan.leases.get(&Mac(mac)).ok_or(Dropped::UnknownMac)?;
    let opts = req.opts();
    let kind = match opts.msg_type().ok_or(Dropped::Malformed)? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            let server = match opts.get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
                _ => None,
            };
            if server.is_some_and(|s| s != plan.server) {
                return Err(Dropped::NotForUs);
            }
            let wanted = match opts.get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => req.ciaddr(),
            };
            if wanted == lease.ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        _ => return Err(Dropped::NotForUs),
    };
    let ipxe = is_ipxe(&req);
    let pxe = !ipxe && is_pxe(&req) && plan.pxe_loader.is_some();
    let yiaddr = if kind == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { lease.ip };
    let mut reply = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        plan.server,
        req.giaddr(),
        &mac,
    );
    reply.set_opcode(Opcode::BootReply).set_htype(HType::Eth).set_flags(req.flags());
    let o = reply.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(plan.server));
    if kind != MessageType::Nak {
        o.insert(DhcpOption::AddressLeaseTime(u32::MAX));
        o.insert(DhcpOption::SubnetMask(plan.netmask));
        o.insert(DhcpOption::Hostname(format!("n{}", lease.node)));
        if let (true, Some(loader)) = (pxe, &plan.pxe_loader) {
            reply.set_fname_str(loader);
        }
        if ipxe {
            reply.set_fname_str(&plan.script_url);
            reply.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(OPT_IPXE_ENCAP),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
        }
    }
    let mut bytes = Vec::with_capacity(300);
    reply.encode(&mut Encoder::new(&mut bytes)).map_err(|_| Dropped::Malformed)?;
    let unicast = if !req.giaddr().is_unspecified() {
        Some(req.giaddr())
    } else if !req.ciaddr().is_unspecified() && kind != MessageType::Nak {
        Some(req.ciaddr())
    } else {
        None
    };
    Ok(Reply { bytes, kind, lease, unicast, ipxe, pxe })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 1];

    fn plan() -> DhcpPlan {
        DhcpPlan {
            server: Ipv4Addr::new(10, 22, 3, 1),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            script_url: "http://10.22.3.1:80/boot.ipxe".into(),
            pxe_loader: Some("undionly.kpxe".into()),
            leases: HashMap::from([(
                Mac(MAC),
                Lease { node: 0, ip: Ipv4Addr::new(10, 22, 3, 10) },
            )]),
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], extra: &[DhcpOption]) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(7, z, z, z, z, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    fn decode(r: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&r.bytes)).unwrap()
    }

    #[test]
    fn ipxe_gets_its_address_and_the_script_without_waiting_for_proxydhcp() {
        let ipxe = DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![1]));
        let r = answer(&plan(), &request(MessageType::Discover, MAC, &[ipxe])).unwrap();
        assert_eq!((r.kind, r.ipxe, r.unicast), (MessageType::Offer, true, None));
        let m = decode(&r);
        assert_eq!((m.opcode(), m.xid()), (Opcode::BootReply, 7));
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 22, 3, 10));
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 22, 3, 1));
        let file = m.fname_str().unwrap().unwrap();
        assert_eq!(file.trim_end_matches('\0'), "http://10.22.3.1:80/boot.ipxe");
        let o = m.opts();
        assert!(matches!(o.get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "n0"));
        assert!(matches!(o.get(OptionCode::Unknown(175)),
            Some(DhcpOption::Unknown(u)) if u.data() == [176, 1, 1]));
        // The user class says iPXE too.
        let class = DhcpOption::UserClass(b"\x04iPXE".to_vec());
        assert!(answer(&plan(), &request(MessageType::Discover, MAC, &[class])).unwrap().ipxe);
    }

    #[test]
    fn linux_gets_the_same_address_and_no_boot_file() {
        let req = DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 22, 3, 10));
        let sid = DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 22, 3, 1));
        let r = answer(&plan(), &request(MessageType::Request, MAC, &[req, sid])).unwrap();
        assert_eq!((r.kind, r.ipxe), (MessageType::Ack, false));
        let m = decode(&r);
        assert_eq!(m.fname(), None);
        assert!(matches!(
            m.opts().get(OptionCode::AddressLeaseTime),
            Some(DhcpOption::AddressLeaseTime(u32::MAX))
        ));
        // Another address: NAK. Another server's offer: not for us.
        let other = DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 22, 3, 99));
        let r = answer(&plan(), &request(MessageType::Request, MAC, &[other])).unwrap();
        assert_eq!(r.kind, MessageType::Nak);
        assert_eq!(decode(&r).yiaddr(), Ipv4Addr::UNSPECIFIED);
        let sid = DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 22, 3, 2));
        assert_eq!(
            answer(&plan(), &request(MessageType::Request, MAC, &[sid])),
            Err(Dropped::NotForUs)
        );
    }

    #[test]
    fn plain_pxe_firmware_gets_the_loader() {
        let class = DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec());
        let r = answer(&plan(), &request(MessageType::Discover, MAC, std::slice::from_ref(&class)))
            .unwrap();
        assert!(r.pxe && !r.ipxe);
        let m = decode(&r);
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 22, 3, 1));
        // Without a loader, an address alone.
        let mut p = plan();
        p.pxe_loader = None;
        let r = answer(&p, &request(MessageType::Discover, MAC, &[class])).unwrap();
        assert!(!r.pxe && decode(&r).fname().is_none());
    }

    #[test]
    fn strangers_and_garbage_get_nothing() {
        let stranger = [2, 0, 0, 0, 0, 9];
        assert_eq!(
            answer(&plan(), &request(MessageType::Discover, stranger, &[])),
            Err(Dropped::UnknownMac)
        );
        assert_eq!(answer(&plan(), b"hello"), Err(Dropped::Malformed));
        let mut long_hlen = request(MessageType::Discover, MAC, &[]);
        long_hlen[2] = 200;
        assert_eq!(answer(&plan(), &long_hlen), Err(Dropped::Malformed));
        let release = request(MessageType::Release, MAC, &[]);
        assert_eq!(answer(&plan(), &release), Err(Dropped::NotForUs));
        // dhcproto's decoder asserts on that option only in debug builds (caught: dropped);
        // a release build reads past it, and the request is answered as any other.
        let upset = answer(&plan(), &upsetting());
        if cfg!(debug_assertions) {
            assert_eq!(upset, Err(Dropped::Malformed));
        } else {
            assert!(upset.is_ok(), "{upset:?}");
        }
    }

    /// A request whose option 152 (bulk lease query base time) is one byte long, which
    /// dhcproto's decoder asserts is four (a panic in debug builds).
    pub(crate) fn upsetting() -> Vec<u8> {
        let mut p = request(MessageType::Discover, MAC, &[]);
        let end = p.iter().rposition(|b| *b == 255).unwrap();
        p.splice(end..end, [152, 1, 0]);
        p
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_answered_or_dropped(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = answer(&plan(), &bytes);
        }

        #[test]
        fn damaged_requests_never_panic(i in 0usize..300, b in proptest::num::u8::ANY) {
            let mut req = request(MessageType::Discover, MAC, &[DhcpOption::UserClass(b"\x04iPXE".to_vec())]);
            if i < req.len() {
                req[i] = b;
            }
            let _ = answer(&plan(), &req);
        }
    }
}
