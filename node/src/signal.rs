//! Signalling between two agents, carried as relay packets over their relay session (as
//! Tailscale's disco rides DERP): how each side learns the other's TURN relayed address.
//! Pure codec.
//!
//! A relay packet is normally a WireGuard message, whose first byte is its type (1..=4)
//! followed by three zero bytes. A signalling message starts with `0xFF` and the magic
//! `BNS`, which WireGuard never produces, so the receiving agent tells the two apart by the
//! first four bytes:
//!
//! ```text
//! offset  bytes  field
//! 0       1      0xFF
//! 1       3      "BNS"
//! 4       1      version: 1
//! 5       1      kind: 0x01 TURN_ADDR (the sender's TURN relayed address)
//! 6       1      family: 4 or 6
//! 7       2      port, big-endian
//! 9       4/16   address
//! ```
//!
//! Unknown versions and kinds are ignored, so later agents can add kinds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: [u8; 4] = [0xFF, b'B', b'N', b'S'];
const VERSION: u8 = 1;
const TURN_ADDR: u8 = 0x01;

/// A signalling message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The sender's TURN allocation is at this relayed address.
    TurnAddr(SocketAddr),
}

/// Whether a relay packet is a signalling message rather than WireGuard's.
pub fn is_signal(packet: &[u8]) -> bool {
    packet.starts_with(&MAGIC)
}

impl Signal {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match self {
            Self::TurnAddr(addr) => {
                out.push(TURN_ADDR);
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&addr.port().to_be_bytes());
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&addr.port().to_be_bytes());
                        out.extend_from_slice(&ip.octets());
                    }
                }
            }
        }
        out
    }

    /// Parses a message; `None` for anything malformed or of an unknown version or kind.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let rest = packet.strip_prefix(&MAGIC)?;
        let (&[version, kind], rest) = rest.split_first_chunk::<2>()?;
        if version != VERSION || kind != TURN_ADDR {
            return None;
        }
        let (&[family, p0, p1], ip) = rest.split_first_chunk::<3>()?;
        let port = u16::from_be_bytes([p0, p1]);
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(*<&[u8; 4]>::try_from(ip).ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(*<&[u8; 16]>::try_from(ip).ok()?)),
            _ => return None,
        };
        Some(Self::TurnAddr(SocketAddr::new(ip, port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_never_wireguard() {
        for addr in ["192.0.2.1:50000", "[2001:db8::1]:3478"] {
            let signal = Signal::TurnAddr(addr.parse().unwrap());
            let bytes = signal.encode();
            assert!(is_signal(&bytes));
            assert_eq!(Signal::parse(&bytes), Some(signal));
            assert_eq!(Signal::parse(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(
            Signal::encode(&Signal::TurnAddr("192.0.2.1:258".parse().unwrap())),
            [0xFF, b'B', b'N', b'S', 1, 1, 4, 1, 2, 192, 0, 2, 1]
        );
        // WireGuard's four message types are never signalling.
        for kind in 1..=4u8 {
            assert!(!is_signal(&[kind, 0, 0, 0, 0xFF, b'B', b'N', b'S']));
        }
        assert_eq!(
            Signal::parse(&[0xFF, b'B', b'N', b'S', 2, 1, 4, 0, 1, 1, 2, 3, 4]),
            None
        );
        assert_eq!(Signal::parse(&[0xFF, b'B', b'N', b'S', 1, 9]), None);
    }
}
