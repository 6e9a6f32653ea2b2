//! The master named on bpslave's command line: `MASTER[:PORT] [PORT]`, as BProc's bpslave
//! took it (an address, with the port after a colon or as a second word).

use std::net::{Ipv4Addr, SocketAddrV4};

use thiserror::Error;

use crate::DEFAULT_PORT;

/// Why the words do not name a master.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MasterArgError {
    /// Nothing given.
    #[error("no master given: bpslave MASTER[:PORT]")]
    Missing,
    /// More than `MASTER PORT`.
    #[error("too many arguments: {0}")]
    TooMany(String),
    /// The address is not an IPv4 address.
    #[error("master address {0}: not an IPv4 address")]
    Address(String),
    /// The port is not a port number.
    #[error("port {0}: not a port number")]
    Port(String),
}

/// The master's address from the positional words; the port defaults to [`DEFAULT_PORT`].
pub fn master_address(words: &[String]) -> Result<SocketAddrV4, MasterArgError> {
    let (host, port) = match words {
        [m] => m.split_once(':').map_or((m.as_str(), None), |(h, p)| (h, Some(p))),
        [m, p] => (m.as_str(), Some(p.as_str())),
        [] => return Err(MasterArgError::Missing),
        _ => return Err(MasterArgError::TooMany(words.join(" "))),
    };
    let ip: Ipv4Addr = host.parse().map_err(|_| MasterArgError::Address(host.to_owned()))?;
    let port = match port {
        Some(p) => p.parse().map_err(|_| MasterArgError::Port(p.to_owned()))?,
        None => DEFAULT_PORT,
    };
    Ok(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<SocketAddrV4, MasterArgError> {
        master_address(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_port_comes_after_a_colon_or_as_a_second_word_or_not_at_all() {
        let at = |port| Ok(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port));
        assert_eq!(parse(&["10.0.0.1"]), at(DEFAULT_PORT));
        assert_eq!(parse(&["10.0.0.1:3000"]), at(3000));
        assert_eq!(parse(&["10.0.0.1", "3000"]), at(3000));
    }

    #[test]
    fn what_is_wrong_is_named() {
        assert_eq!(parse(&[]), Err(MasterArgError::Missing));
        assert_eq!(parse(&["a", "b", "c"]), Err(MasterArgError::TooMany("a b c".into())));
        assert_eq!(parse(&["master"]), Err(MasterArgError::Address("master".into())));
        assert_eq!(parse(&["10.0.0.1:x"]), Err(MasterArgError::Port("x".into())));
        assert_eq!(parse(&["10.0.0.1", "70000"]), Err(MasterArgError::Port("70000".into())));
        assert_eq!(
            parse(&["10.0.0.1:1", "2"]),
            Err(MasterArgError::Address("10.0.0.1:1".into())),
            "a port in both places"
        );
    }
}
