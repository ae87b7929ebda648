//! [`Cidr`]: an IP network, as the operator writes peer allow- and deny-lists and as the
//! control plane sends them to the dataplane (`plane::Command::PeerFilter`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network in CIDR notation, `10.0.0.0/8` or `fc00::/7`.
///
/// The address is kept as written (`10.1.2.3/8` stays `10.1.2.3/8`): only the first `prefix`
/// bits take part in [`contains`](Self::contains), and keeping the rest means a value survives
/// a round trip through text or the wire unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR cannot be built or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// Not of the form `<address>/<prefix length>`.
    #[error("expected <address>/<prefix length>")]
    Malformed,
    /// The prefix length exceeds the address width (32 or 128).
    #[error("prefix length {prefix} is longer than the address")]
    PrefixTooLong {
        /// The prefix length given.
        prefix: u8,
    },
}

impl Cidr {
    /// `127.0.0.0/8`.
    pub const LOOPBACK_V4: Self = Self {
        addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    };
    /// `::1/128`.
    pub const LOOPBACK_V6: Self = Self {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    };

    /// The network of `addr` with `prefix` leading bits.
    pub const fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let width = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > width {
            return Err(CidrError::PrefixTooLong { prefix });
        }
        Ok(Self { addr, prefix })
    }

    /// The address as given.
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the network. An IPv4 network never contains an IPv6 address
    /// and vice versa; decoding IPv4 embedded in IPv6 is the caller's business.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.trim().split_once('/').ok_or(CidrError::Malformed)?;
        let addr = addr.parse().map_err(|_| CidrError::Malformed)?;
        let prefix = prefix.parse().map_err(|_| CidrError::Malformed)?;
        let cidr = Self::new(addr, prefix)?;
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_matching() {
        let cidr: Cidr = "fc00::/7".parse().unwrap();
        assert!(cidr.contains("fdff::1".parse().unwrap()));
        assert!(!cidr.contains("fe00::1".parse().unwrap()));
        assert!(!cidr.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(cidr.to_string(), "fc00::/7");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(
            "::/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        let host: Cidr = "10.1.2.3/32".parse().unwrap();
        assert!(host.contains("10.1.2.3".parse().unwrap()));
        assert!(!host.contains("10.1.2.4".parse().unwrap()));
        let kept: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(
            kept.to_string(),
            "10.1.2.3/8",
            "the address is kept as written"
        );
        assert!(kept.contains("10.200.0.1".parse().unwrap()));
        assert_eq!(
            (kept.addr(), kept.prefix()),
            ("10.1.2.3".parse().unwrap(), 8)
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { prefix: 33 })
        );
        assert!("::/128".parse::<Cidr>().is_ok());
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { prefix: 129 })
        );
        for bad in ["10.0.0.0", "10.0.0.0/x", "nope/8", "/8", "10.0.0.0/-1"] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::Malformed), "{bad}");
        }
        assert!(Cidr::LOOPBACK_V4.contains("127.9.9.9".parse().unwrap()));
        assert!(Cidr::LOOPBACK_V6.contains("::1".parse().unwrap()));
    }
}
