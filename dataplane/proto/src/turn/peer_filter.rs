//! Which peer addresses a client may reach through the relay.
//!
//! A TURN relay sends datagrams wherever an authenticated client asks, from the relay's own
//! network position. Without a filter, a client can reach the relay host's loopback services,
//! the private network it sits in, or a cloud metadata service (`169.254.169.254`): an SSRF
//! with UDP. One filter serves every path: CreatePermission ([`PeerFilter::check`], by IP, since
//! a permission is per IP) and ChannelBind ([`PeerFilter::check_transport`], by IP and port)
//! answer 403 when it denies, Send indications ([`PeerFilter::check_transport`]) are dropped
//! and counted ([`DropReason::PeerFiltered`](crate::DropReason::PeerFiltered)). Peer → client
//! traffic needs a permission, which only an allowed address can get.
//!
//! # Order of the rules
//!
//! 1. the configured deny-list: denied;
//! 2. loopback, when [`PeerFilter::danger_allow_loopback`] is on (tests and benches only):
//!    allowed on every port, the host's own loopback address included;
//! 3. the server's own addresses ([`PeerFilter::own_address`]: relay and listener): allowed
//!    only on a port that is a **live relay allocation** of this host right now, in the
//!    host-wide [`PortTable`] (every worker's allocations). Two clients of this relay that
//!    reach each other through their allocations (both behind symmetric NATs: the case TURN
//!    exists for) have this server's address as their peer; every other port of the host (the
//!    REST API, a database, a DNS resolver's ephemeral socket inside the relay range, a relay
//!    port whose allocation ended) stays out of reach. A permission names no port, so
//!    [`PeerFilter::check`] answers [`Allowed::LiveRelayPorts`] and the port is judged on
//!    every use, in both directions, by the [`Server`](super::Server): a channel or permission
//!    to a port that stops being a live allocation stops carrying traffic at once. The
//!    configured allow-list does not open an own address: an operator allowing their private
//!    network does not open the host's own services in it;
//! 4. the configured allow-list: allowed;
//! 5. the built-in special-purpose ranges below: denied;
//! 6. anything else: allowed.
//!
//! Every rule looks at the address as written **and** at the IPv4 address it embeds, so a
//! denied IPv4 address stays denied in every IPv6 spelling.
//!
//! # Built-in denials
//!
//! IPv4 ([RFC 6890] registry): `0.0.0.0/8` (this network, with `0.0.0.0`), `10/8`,
//! `172.16/12`, `192.168/16` (private), `100.64/10` (CGNAT shared space), `127/8` (loopback),
//! `169.254/16` (link-local, with the `169.254.169.254` metadata service), `192.0.0/24` (IETF
//! protocol assignments), `192.88.99/24` (6to4 relay anycast), `198.18/15` (benchmarking),
//! `224/4` (multicast), `240/4` (reserved, with the `255.255.255.255` broadcast).
//!
//! The documentation ranges (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`)
//! stay allowed: they route nowhere, so relaying to them is harmless, and tests and examples use
//! them as "some public peer".
//!
//! IPv6: `::` (unspecified), `::1` (loopback), `fc00::/7` (unique local), `fec0::/10` (site
//! local), `fe80::/10` (link local), `ff00::/8` (multicast), `100::/64` (discard-only).
//!
//! IPv6 spellings of IPv4 addresses, decoded or denied outright:
//!
//! | Range | Form | Treatment |
//! |---|---|---|
//! | `::ffff:0:0/96` | IPv4-mapped `::ffff:a.b.c.d` | decode, judge the IPv4 address |
//! | `64:ff9b::/96` | NAT64 well-known prefix | decode, judge the IPv4 address |
//! | `2002::/16` | 6to4, `2002:AABB:CCDD::/48` | decode, judge `AA.BB.CC.DD` |
//! | `::/96` | IPv4-compatible `::a.b.c.d` (deprecated, RFC 4291) | denied |
//! | `::ffff:0:0:0/96` | SIIT IPv4-translated | denied |
//! | `64:ff9b:1::/48` | local-use NAT64 (RFC 8215), embedding position unknown | denied |
//! | `2001::/32` | Teredo (obfuscated client IPv4, deprecated) | denied |
//!
//! Denying the deprecated or ambiguous forms outright costs nothing real (no legitimate peer of
//! a WebRTC relay uses them) and removes any doubt about how a host stack would route them.
//!
//! [RFC 6890]: https://www.rfc-editor.org/rfc/rfc6890

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use boson_shared::Cidr;

use super::PortTable;

/// The peer filter: built-in special-purpose ranges plus configured lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    own: Vec<IpAddr>,
    danger_loopback: bool,
}

/// Where [`PeerFilter::check`] lets a client reach an IP it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allowed {
    /// On every port.
    Anywhere,
    /// One of the server's own addresses: only on ports that are live relay allocations of
    /// this host ([`PortTable::is_allocated`]), judged again on every packet.
    LiveRelayPorts,
}

/// Why [`PeerFilter::check`] refused an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denied {
    /// In the configured deny-list.
    Listed,
    /// One of the server's own relay or listener addresses, on a port that is not a live
    /// relay allocation.
    OwnAddress,
    /// `0.0.0.0/8` or `::`.
    Unspecified,
    /// `127/8` or `::1`.
    Loopback,
    /// RFC 1918 private space.
    Private,
    /// `100.64/10`, carrier-grade NAT space.
    SharedAddressSpace,
    /// `169.254/16` (incl. cloud metadata) or `fe80::/10`.
    LinkLocal,
    /// `224/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Reserved or special-purpose: `240/4`, `192.0.0/24`, `192.88.99/24`, `198.18/15`,
    /// `100::/64`.
    Reserved,
    /// `fc00::/7` unique local or `fec0::/10` site local.
    UniqueLocal,
    /// An IPv6 form embedding an IPv4 address this filter does not decode (IPv4-compatible,
    /// SIIT, local-use NAT64, Teredo).
    OpaqueEmbedding,
}

impl Denied {
    /// Stable `snake_case` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Listed => "listed",
            Self::OwnAddress => "own_address",
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared_address_space",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::UniqueLocal => "unique_local",
            Self::OpaqueEmbedding => "opaque_embedding",
        }
    }
}

impl PeerFilter {
    /// The default: built-in denials on, empty lists, no own addresses (the TURN server adds
    /// its relay address itself).
    pub const fn new() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            own: Vec::new(),
            danger_loopback: false,
        }
    }

    /// Allows `cidr` even where a built-in rule would deny it (the deny-list still wins, and
    /// an own address stays limited to live relay ports).
    pub fn allow(mut self, cidr: Cidr) -> Self {
        self.allow.push(cidr);
        self
    }

    /// Denies `cidr`, whatever the allow-list says.
    pub fn deny(mut self, cidr: Cidr) -> Self {
        self.deny.push(cidr);
        self
    }

    /// Adds one of the server's own addresses (relay or listener): reachable only on the
    /// host's live relay allocations.
    pub fn own_address(mut self, ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        if !self.own.contains(&ip) {
            self.own.push(ip);
        }
        self
    }

    /// Allows `127.0.0.0/8` and `::1` on every port, the host's own loopback address
    /// included, so tests and benches can run peers on the loopback interface. Never for
    /// production: it opens the relay host's local services to clients.
    pub const fn danger_allow_loopback(mut self) -> Self {
        self.danger_loopback = true;
        self
    }

    /// Decides whether a client may get a permission for `ip`. Pure: same answer for the same
    /// filter and address, no state touched. An own address is
    /// [`Allowed::LiveRelayPorts`]: its port is judged on use.
    pub fn check(&self, ip: IpAddr) -> Result<Allowed, Denied> {
        self.judge(ip)
    }

    /// Decides whether a client may send to `peer` now: [`check`](Self::check), and an own
    /// address only on a port `ports` holds as a live relay allocation.
    pub fn check_transport(&self, peer: SocketAddr, ports: &PortTable) -> Result<(), Denied> {
        match self.judge(peer.ip())? {
            Allowed::Anywhere => Ok(()),
            Allowed::LiveRelayPorts if ports.is_allocated(peer.port()) => Ok(()),
            Allowed::LiveRelayPorts => Err(Denied::OwnAddress),
        }
    }

    fn judge(&self, ip: IpAddr) -> Result<Allowed, Denied> {
        let (ip, embedded) = match ip {
            IpAddr::V4(v4) => (ip, Embedded::V4(v4)),
            IpAddr::V6(v6) => (ip, embedded_ipv4(v6)),
        };
        let v4 = match embedded {
            Embedded::V4(v4) => Some(IpAddr::V4(v4)),
            Embedded::None | Embedded::Opaque => None,
        };
        let matches = |list: &[Cidr]| {
            list.iter()
                .any(|cidr| cidr.contains(ip) || v4.is_some_and(|v4| cidr.contains(v4)))
        };
        if matches(&self.deny) {
            return Err(Denied::Listed);
        }
        if self.danger_loopback
            && [Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6]
                .iter()
                .any(|cidr| cidr.contains(ip) || v4.is_some_and(|v4| cidr.contains(v4)))
        {
            return Ok(Allowed::Anywhere);
        }
        if self.own.contains(&ip) || v4.is_some_and(|v4| self.own.contains(&v4)) {
            return Ok(Allowed::LiveRelayPorts);
        }
        if matches(&self.allow) {
            return Ok(Allowed::Anywhere);
        }
        match (ip, embedded) {
            (_, Embedded::V4(v4)) => special_ipv4(v4),
            (_, Embedded::Opaque) => Err(Denied::OpaqueEmbedding),
            (IpAddr::V6(v6), Embedded::None) => special_ipv6(v6),
            (IpAddr::V4(_), Embedded::None) => Ok(()),
        }
        .map(|()| Allowed::Anywhere)
    }
}

/// What an IPv6 address says about an IPv4 address inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    /// A plain IPv6 address.
    None,
    /// An IPv4 address decoded from a known form (or the address itself, for IPv4).
    V4(Ipv4Addr),
    /// A form that embeds IPv4 in a way this filter denies outright.
    Opaque,
}

fn embedded_ipv4(ip: Ipv6Addr) -> Embedded {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback, judged as IPv6.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => Embedded::None,
        [0, 0, 0, 0, 0, 0xFFFF, _, _] => Embedded::V4(low),
        [0x64, 0xFF9B, 0, 0, 0, 0, _, _] => Embedded::V4(low),
        [0x2002, hi, lo, ..] => Embedded::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xFFFF, 0, _, _] => Embedded::Opaque,
        [0x64, 0xFF9B, 1, ..] | [0x2001, 0, ..] => Embedded::Opaque,
        _ => Embedded::None,
    }
}

/// The built-in IPv4 denials, most specific first.
const SPECIAL_IPV4: [([u8; 4], u8, Denied); 13] = [
    ([255, 255, 255, 255], 32, Denied::Broadcast),
    ([0, 0, 0, 0], 8, Denied::Unspecified),
    ([10, 0, 0, 0], 8, Denied::Private),
    ([100, 64, 0, 0], 10, Denied::SharedAddressSpace),
    ([127, 0, 0, 0], 8, Denied::Loopback),
    ([169, 254, 0, 0], 16, Denied::LinkLocal),
    ([172, 16, 0, 0], 12, Denied::Private),
    ([192, 0, 0, 0], 24, Denied::Reserved),
    ([192, 88, 99, 0], 24, Denied::Reserved),
    ([192, 168, 0, 0], 16, Denied::Private),
    ([198, 18, 0, 0], 15, Denied::Reserved),
    ([224, 0, 0, 0], 4, Denied::Multicast),
    ([240, 0, 0, 0], 4, Denied::Reserved),
];

fn special_ipv4(ip: Ipv4Addr) -> Result<(), Denied> {
    let ip = u32::from(ip);
    for (net, prefix, reason) in SPECIAL_IPV4 {
        if prefix_matches(ip, u32::from_be_bytes(net), prefix) {
            return Err(reason);
        }
    }
    Ok(())
}

fn special_ipv6(ip: Ipv6Addr) -> Result<(), Denied> {
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => Err(Denied::Unspecified),
        [0, 0, 0, 0, 0, 0, 0, 1] => Err(Denied::Loopback),
        [0x0100, 0, 0, 0, ..] => Err(Denied::Reserved),
        _ if s[0] & 0xFE00 == 0xFC00 || s[0] & 0xFFC0 == 0xFEC0 => Err(Denied::UniqueLocal),
        _ if s[0] & 0xFFC0 == 0xFE80 => Err(Denied::LinkLocal),
        _ if s[0] & 0xFF00 == 0xFF00 => Err(Denied::Multicast),
        _ => Ok(()),
    }
}

const fn prefix_matches(ip: u32, net: u32, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    ip & mask == net & mask
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::turn::RelayPort;

    fn check(filter: &PeerFilter, ip: &str) -> Result<(), Denied> {
        filter.check(ip.parse().unwrap()).map(|_| ())
    }

    #[test]
    fn builtin_table() {
        let filter = PeerFilter::new();
        for (ip, expected) in [
            // Allowed: public and documentation addresses.
            ("8.8.8.8", Ok(())),
            ("1.1.1.1", Ok(())),
            ("192.0.2.1", Ok(())),
            ("198.51.100.9", Ok(())),
            ("203.0.113.200", Ok(())),
            ("100.63.255.255", Ok(())),
            ("100.128.0.0", Ok(())),
            ("172.15.255.255", Ok(())),
            ("172.32.0.0", Ok(())),
            ("169.253.255.255", Ok(())),
            ("223.255.255.255", Ok(())),
            ("2001:db8::1", Ok(())),
            ("2606:4700::1111", Ok(())),
            ("::ffff:8.8.8.8", Ok(())),
            ("64:ff9b::808:808", Ok(())),
            ("2002:0808:0808::1", Ok(())),
            // IPv4 special ranges.
            ("0.0.0.0", Err(Denied::Unspecified)),
            ("0.1.2.3", Err(Denied::Unspecified)),
            ("10.0.0.1", Err(Denied::Private)),
            ("10.255.255.255", Err(Denied::Private)),
            ("172.16.0.1", Err(Denied::Private)),
            ("172.31.255.255", Err(Denied::Private)),
            ("192.168.1.1", Err(Denied::Private)),
            ("100.64.0.1", Err(Denied::SharedAddressSpace)),
            ("100.127.255.255", Err(Denied::SharedAddressSpace)),
            ("127.0.0.1", Err(Denied::Loopback)),
            ("127.255.255.254", Err(Denied::Loopback)),
            ("169.254.169.254", Err(Denied::LinkLocal)),
            ("169.254.0.1", Err(Denied::LinkLocal)),
            ("224.0.0.1", Err(Denied::Multicast)),
            ("239.255.255.250", Err(Denied::Multicast)),
            ("240.0.0.1", Err(Denied::Reserved)),
            ("255.255.255.255", Err(Denied::Broadcast)),
            ("192.0.0.8", Err(Denied::Reserved)),
            ("192.88.99.1", Err(Denied::Reserved)),
            ("198.18.0.1", Err(Denied::Reserved)),
            ("198.19.255.255", Err(Denied::Reserved)),
            // IPv6 special ranges.
            ("::", Err(Denied::Unspecified)),
            ("::1", Err(Denied::Loopback)),
            ("fc00::1", Err(Denied::UniqueLocal)),
            ("fdff:ffff::1", Err(Denied::UniqueLocal)),
            ("fec0::1", Err(Denied::UniqueLocal)),
            ("fe80::1", Err(Denied::LinkLocal)),
            ("febf::1", Err(Denied::LinkLocal)),
            ("ff02::1", Err(Denied::Multicast)),
            ("ff0e::1", Err(Denied::Multicast)),
            ("100::1", Err(Denied::Reserved)),
            // IPv4 written in IPv6.
            ("::ffff:127.0.0.1", Err(Denied::Loopback)),
            ("::ffff:10.1.2.3", Err(Denied::Private)),
            ("::ffff:169.254.169.254", Err(Denied::LinkLocal)),
            ("::ffff:0.0.0.0", Err(Denied::Unspecified)),
            ("::ffff:255.255.255.255", Err(Denied::Broadcast)),
            ("64:ff9b::7f00:1", Err(Denied::Loopback)),
            ("64:ff9b::a9fe:a9fe", Err(Denied::LinkLocal)),
            ("2002:7f00:0001::", Err(Denied::Loopback)),
            ("2002:c0a8:0101:1::5", Err(Denied::Private)),
            ("2002:a9fe:a9fe::", Err(Denied::LinkLocal)),
            ("::127.0.0.1", Err(Denied::OpaqueEmbedding)),
            ("::8.8.8.8", Err(Denied::OpaqueEmbedding)),
            ("::ffff:0:127.0.0.1", Err(Denied::OpaqueEmbedding)),
            ("64:ff9b:1::7f00:1", Err(Denied::OpaqueEmbedding)),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                Err(Denied::OpaqueEmbedding),
            ),
        ] {
            assert_eq!(check(&filter, ip), expected, "{ip}");
        }
    }

    #[test]
    fn lists_and_own_addresses() {
        let filter = PeerFilter::new()
            .danger_allow_loopback()
            .allow("10.1.0.0/16".parse().unwrap())
            .deny("8.8.4.0/24".parse().unwrap())
            .deny("10.1.2.0/24".parse().unwrap())
            .own_address("203.0.113.7".parse().unwrap())
            .own_address("::ffff:198.51.100.1".parse().unwrap());
        for (ip, expected) in [
            ("127.0.0.1", Ok(())),
            ("::ffff:127.0.0.1", Ok(())),
            ("::1", Ok(())),
            ("10.1.9.9", Ok(())),
            ("10.2.0.1", Err(Denied::Private)),
            ("10.1.2.3", Err(Denied::Listed)),
            ("8.8.4.4", Err(Denied::Listed)),
            ("::ffff:8.8.4.4", Err(Denied::Listed)),
            ("8.8.8.8", Ok(())),
            ("203.0.113.8", Ok(())),
        ] {
            assert_eq!(check(&filter, ip), expected, "{ip}");
        }
    }

    #[test]
    fn own_addresses_are_reachable_on_live_relay_ports_only() {
        let table = PortTable::new(50_000..=50_009).unwrap();
        let live = table.claim(3, false).unwrap().get();
        assert_eq!(live, 50_003);
        let quarantined = table.claim(4, false).unwrap();
        table.quarantine(quarantined);
        table.claim_reserving_next(6, 1).unwrap();
        let filter = PeerFilter::new()
            .allow("10.0.0.0/8".parse().unwrap())
            .allow("203.0.113.0/24".parse().unwrap())
            .own_address("203.0.113.7".parse().unwrap())
            .own_address("::ffff:10.0.0.5".parse().unwrap());
        // A permission names no port: an own IP is allowed, limited to live relay ports, in
        // every spelling, whatever the allow-list says.
        for own in [
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "2002:cb00:7107::",
            "10.0.0.5",
        ] {
            assert_eq!(
                filter.check(own.parse().unwrap()),
                Ok(Allowed::LiveRelayPorts),
                "{own}"
            );
        }
        assert_eq!(
            filter.check("203.0.113.8".parse().unwrap()),
            Ok(Allowed::Anywhere)
        );
        let transport = |addr: &str| filter.check_transport(addr.parse().unwrap(), &table);
        assert_eq!(transport("203.0.113.7:50003"), Ok(()), "a live allocation");
        assert_eq!(transport("[::ffff:203.0.113.7]:50003"), Ok(()));
        assert_eq!(transport("10.0.0.5:50003"), Ok(()), "a private own IP too");
        for refused in [
            "203.0.113.7:50000", // free port of the range
            "203.0.113.7:50004", // quarantined: something else holds it
            "203.0.113.7:50007", // reserved, not yet an allocation
            "203.0.113.7:49999", // outside the range
            "203.0.113.7:8080",  // the API, a database, ...
            "[2002:cb00:7107::]:6379",
            "10.0.0.5:22",
        ] {
            assert_eq!(transport(refused), Err(Denied::OwnAddress), "{refused}");
        }
        assert_eq!(transport("203.0.113.8:8080"), Ok(()), "allowed, not ours");
        assert_eq!(transport("127.0.0.1:50003"), Err(Denied::Loopback));
        // Released: the port stops being reachable at once.
        table.release(RelayPort::new(live));
        assert_eq!(transport("203.0.113.7:50003"), Err(Denied::OwnAddress));
        // The deny-list still wins.
        let denied = filter.deny("203.0.113.7/32".parse().unwrap());
        assert_eq!(
            denied.check("203.0.113.7".parse().unwrap()),
            Err(Denied::Listed)
        );
    }

    #[test]
    fn danger_loopback_opens_loopback_own_address_included() {
        let table = PortTable::new(50_000..=50_009).unwrap();
        let filter = PeerFilter::new().own_address("127.0.0.1".parse().unwrap());
        assert_eq!(
            filter.check_transport("127.0.0.1:31500".parse().unwrap(), &table),
            Err(Denied::OwnAddress),
            "the issue's reproduction: an own loopback address on a port no relay holds"
        );
        assert_eq!(check(&filter, "127.0.0.2"), Err(Denied::Loopback));
        let filter = filter.danger_allow_loopback();
        assert_eq!(
            filter.check_transport("127.0.0.1:31500".parse().unwrap(), &table),
            Ok(())
        );
        assert_eq!(check(&filter, "::ffff:127.0.0.2"), Ok(()));
        assert_eq!(check(&filter, "::1"), Ok(()));
        let filter = filter.deny("127.0.0.2/32".parse().unwrap());
        assert_eq!(check(&filter, "127.0.0.2"), Err(Denied::Listed));
    }

    #[test]
    fn denials_have_stable_labels() {
        let labels: Vec<_> = [Denied::Listed, Denied::OpaqueEmbedding]
            .iter()
            .map(|d| d.as_str())
            .collect();
        assert_eq!(labels, ["listed", "opaque_embedding"]);
    }

    /// An independent model of the IPv4 denials: inclusive ranges written out as numbers.
    fn model_denies_v4(ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        [
            (0x0000_0000, 0x00FF_FFFF),
            (0x0A00_0000, 0x0AFF_FFFF),
            (0x6440_0000, 0x647F_FFFF),
            (0x7F00_0000, 0x7FFF_FFFF),
            (0xA9FE_0000, 0xA9FE_FFFF),
            (0xAC10_0000, 0xAC1F_FFFF),
            (0xC000_0000, 0xC000_00FF),
            (0xC058_6300, 0xC058_63FF),
            (0xC0A8_0000, 0xC0A8_FFFF),
            (0xC612_0000, 0xC613_FFFF),
            (0xE000_0000, 0xFFFF_FFFF),
        ]
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&ip))
    }

    /// Every IPv6 spelling of `v4` the filter decodes.
    fn decoded_spellings(v4: Ipv4Addr, subnet: u16, iid: u64) -> [Ipv6Addr; 3] {
        let [a, b, c, d] = v4.octets();
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        [
            v4.to_ipv6_mapped(),
            Ipv6Addr::new(0x64, 0xFF9B, 0, 0, 0, 0, hi, lo),
            Ipv6Addr::new(
                0x2002,
                hi,
                lo,
                subnet,
                (iid >> 48) as u16,
                (iid >> 32) as u16,
                (iid >> 16) as u16,
                iid as u16,
            ),
        ]
    }

    /// An address from a denied range, or any address, half and half.
    fn interesting_v4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (0usize..SPECIAL_IPV4.len(), any::<u32>()).prop_map(|(i, noise)| {
                let (net, prefix, _) = SPECIAL_IPV4[i];
                let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                Ipv4Addr::from(u32::from_be_bytes(net) | (noise & host_mask))
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn every_spelling_agrees_with_the_model(
            v4 in interesting_v4(),
            subnet in any::<u16>(),
            iid in any::<u64>(),
        ) {
            let filter = PeerFilter::new();
            let denied = model_denies_v4(v4);
            prop_assert_eq!(filter.check(IpAddr::V4(v4)).is_err(), denied, "{}", v4);
            for v6 in decoded_spellings(v4, subnet, iid) {
                prop_assert_eq!(filter.check(IpAddr::V6(v6)).is_err(), denied, "{} as {}", v4, v6);
            }
            // The deprecated forms are denied whatever they embed.
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            for v6 in [
                Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo),
                Ipv6Addr::new(0, 0, 0, 0, 0xFFFF, 0, hi, lo),
                Ipv6Addr::new(0x64, 0xFF9B, 1, subnet, 0, 0, hi, lo),
                Ipv6Addr::new(0x2001, 0, subnet, 0, 0, 0, !hi, !lo),
            ] {
                prop_assert!(filter.check(IpAddr::V6(v6)).is_err(), "{}", v6);
            }
        }

        #[test]
        fn allow_list_beats_builtins_in_every_spelling(v4 in interesting_v4(), subnet in any::<u16>()) {
            let filter = PeerFilter::new().allow(Cidr::new(IpAddr::V4(v4), 32).unwrap());
            prop_assert!(filter.check(IpAddr::V4(v4)).is_ok());
            for v6 in decoded_spellings(v4, subnet, 1) {
                prop_assert!(filter.check(IpAddr::V6(v6)).is_ok(), "{}", v6);
            }
            let filter = filter.deny(Cidr::new(IpAddr::V4(v4), 32).unwrap());
            for v6 in decoded_spellings(v4, subnet, 1) {
                prop_assert_eq!(filter.check(IpAddr::V6(v6)), Err(Denied::Listed));
            }
        }
    }
}
