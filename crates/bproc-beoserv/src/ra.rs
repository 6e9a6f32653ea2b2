//! Router advertisements that end iPXE's wait for IPv6.
//!
//! iPXE configures a NIC with DHCP and IPv6 autoconfiguration at once and boots only when
//! both are done; on a network without an IPv6 router the second gives up after about 15 s
//! of router solicitations, which would triple a node's boot time under emulation. So each
//! time the DHCP server answers iPXE, this sends an IPv6 router advertisement to all nodes
//! on the cluster interface: no prefix, no default router (lifetime 0), no DHCPv6 (flags M
//! and O clear), which iPXE takes as "IPv6 configuration complete" and Linux as nothing to
//! configure. It is sent three times over 1.5 s, in case one is lost. The message is built by
//! `etherparse`; the kernel fills in the ICMPv6 checksum of a raw socket.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use etherparse::icmpv6::{RouterAdvertisementHeader, RouterAdvertisementPayload};
use etherparse::{Icmpv6Header, Icmpv6Type};
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use tracing::{debug, warn};

/// The router advertisement: ICMPv6 type 134 with everything off.
pub fn advertisement() -> Vec<u8> {
    let header = Icmpv6Header::new(Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
        cur_hop_limit: 64,
        managed_address_config: false,
        other_config: false,
        router_lifetime: 0,
    }));
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(RouterAdvertisementPayload { reachable_time: 0, retrans_timer: 0 }.to_bytes());
    bytes
}

/// The advertiser: a raw ICMPv6 socket on the interface.
pub struct Advertiser {
    sock: OwnedFd,
    to: socket::SockaddrIn6,
}

impl Advertiser {
    /// Opens the socket on `interface` (needs `CAP_NET_RAW`).
    pub fn open(interface: &str) -> nix::Result<Advertiser> {
        let index = nix::net::if_::if_nametoindex(interface)?;
        let sock = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )?;
        socket::setsockopt(&sock, sockopt::BindToDevice, &interface.into())?;
        // Neighbour discovery messages must arrive with the hop limit they were sent with.
        socket::setsockopt(&sock, sockopt::Ipv6MulticastHops, &255)?;
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        Ok(Advertiser { sock, to: SocketAddrV6::new(all_nodes, 0, 0, index).into() })
    }

    fn send(&self, message: &[u8]) {
        if let Err(e) = socket::sendto(self.sock.as_raw_fd(), message, &self.to, MsgFlags::empty())
        {
            debug!("cannot send an IPv6 router advertisement: {e}");
        }
    }

    /// Sends a round of advertisements for each wake-up on `wake`; wake-ups that come during a
    /// round join it.
    pub fn run(self, wake: Receiver<()>) {
        let message = advertisement();
        while wake.recv().is_ok() {
            for pause in [500, 1000, 0] {
                self.send(&message);
                std::thread::sleep(Duration::from_millis(pause));
            }
            while wake.try_recv().is_ok() {}
        }
    }
}

/// Starts the advertiser on `interface`; what to wake it with, or `None` (logged) when it
/// cannot run here.
pub fn start(interface: &str) -> Option<Sender<()>> {
    let adv = match Advertiser::open(interface) {
        Ok(a) => a,
        Err(e) => {
            warn!(
                "cannot send IPv6 router advertisements on {interface} ({e}): iPXE nodes will \
                 wait about 15 s for IPv6 before they boot"
            );
            return None;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("ra".into()).spawn(move || adv.run(rx)).ok()?;
    Some(tx)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_advertisement_offers_nothing() {
        // Type 134, code 0, checksum (the kernel's), hop limit 64, no flags, lifetime 0,
        // reachable time and retransmission timer unspecified.
        assert_eq!(super::advertisement(), [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
