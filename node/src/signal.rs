//! Signalling between two agents, carried as relay packets over their relay session (as
//! Tailscale's disco rides DERP): how each side learns the other's TURN relayed address, and
//! the direct route's candidates and punching secret ([`crate::direct`]). Pure codec.
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
//!                      0x02 CANDIDATES (the sender's direct-route candidates)
//! TURN_ADDR:
//! 6       1      family: 4 or 6
//! 7       2      port, big-endian
//! 9       4/16   address
//! CANDIDATES:
//! 6       16     the sender's punching secret
//! 22      1      count (at most MAX_CANDIDATES)
//! 23      ...    count addresses, each as family, port, address above
//! ```
//!
//! The relay session is authenticated (the relay host knows each node by its token and
//! stamps the source), so a secret that rides it is known to the two agents and the relay
//! hosts only; [`crate::direct`] keys its probes' MAC from the two secrets.
//!
//! Unknown versions and kinds are ignored, so later agents can add kinds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: [u8; 4] = [0xFF, b'B', b'N', b'S'];
const VERSION: u8 = 1;
const TURN_ADDR: u8 = 0x01;
const CANDIDATES: u8 = 0x02;

/// The most candidates one message carries; more are left out.
pub const MAX_CANDIDATES: usize = 8;

/// A signalling message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The sender's TURN allocation is at this relayed address.
    TurnAddr(SocketAddr),
    /// The sender's direct-route candidates (its mapped and LAN addresses) and its punching
    /// secret.
    Candidates {
        /// The sender's half of the probes' MAC key.
        secret: [u8; 16],
        /// Where the sender's direct socket may be reached, best first.
        addrs: Vec<SocketAddr>,
    },
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
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

/// One address off the front of `rest`.
fn take_addr(rest: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&[family, p0, p1], rest) = rest.split_first_chunk::<3>()?;
    let port = u16::from_be_bytes([p0, p1]);
    let (ip, rest) = match family {
        4 => {
            let (ip, rest) = rest.split_first_chunk::<4>()?;
            (IpAddr::V4(Ipv4Addr::from(*ip)), rest)
        }
        6 => {
            let (ip, rest) = rest.split_first_chunk::<16>()?;
            (IpAddr::V6(Ipv6Addr::from(*ip)), rest)
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), rest))
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
                put_addr(&mut out, addr);
            }
            Self::Candidates { secret, addrs } => {
                out.push(CANDIDATES);
                out.extend_from_slice(secret);
                let addrs = &addrs[..addrs.len().min(MAX_CANDIDATES)];
                out.push(addrs.len() as u8);
                for addr in addrs {
                    put_addr(&mut out, addr);
                }
            }
        }
        out
    }

    /// Parses a message; `None` for anything malformed or of an unknown version or kind.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let rest = packet.strip_prefix(&MAGIC)?;
        let (&[version, kind], rest) = rest.split_first_chunk::<2>()?;
        if version != VERSION {
            return None;
        }
        match kind {
            TURN_ADDR => {
                let (addr, rest) = take_addr(rest)?;
                rest.is_empty().then_some(Self::TurnAddr(addr))
            }
            CANDIDATES => {
                let (secret, rest) = rest.split_first_chunk::<16>()?;
                let (&count, mut rest) = rest.split_first()?;
                if usize::from(count) > MAX_CANDIDATES {
                    return None;
                }
                let mut addrs = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let (addr, tail) = take_addr(rest)?;
                    addrs.push(addr);
                    rest = tail;
                }
                rest.is_empty().then_some(Self::Candidates {
                    secret: *secret,
                    addrs,
                })
            }
            _ => None,
        }
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

    #[test]
    fn candidates_round_trip() {
        let signal = Signal::Candidates {
            secret: [7; 16],
            addrs: vec![
                "198.51.100.7:40000".parse().unwrap(),
                "[2001:db8::2]:40001".parse().unwrap(),
            ],
        };
        let bytes = signal.encode();
        assert!(is_signal(&bytes));
        assert_eq!(Signal::parse(&bytes), Some(signal));
        // Truncated, trailing bytes, a count beyond the limit: refused.
        assert_eq!(Signal::parse(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Signal::parse(&longer), None);
        let mut many = bytes[..22].to_vec();
        many.push(9);
        assert_eq!(Signal::parse(&many), None);
        // More than the limit given: the first MAX_CANDIDATES go.
        let addrs: Vec<SocketAddr> = (0..12)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 1000)))
            .collect();
        let parsed = Signal::parse(
            &Signal::Candidates {
                secret: [0; 16],
                addrs: addrs.clone(),
            }
            .encode(),
        );
        assert_eq!(
            parsed,
            Some(Signal::Candidates {
                secret: [0; 16],
                addrs: addrs[..MAX_CANDIDATES].to_vec()
            })
        );
    }
}
