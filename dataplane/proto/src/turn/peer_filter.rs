//! Which peer addresses a client may reach through the relay.
//!
//! A TURN relay sends datagrams wherever an authenticated client asks, from the relay's own
//! network position. Without a filter, a client can reach the relay host's loopback services,
//! the private network it sits in, or a cloud metadata service (`169.254.169.254`): an SSRF
//! with UDP. One filter serves every path: CreatePermission ([`PeerFilter::check`], by IP, since
//! a permission is per IP) and ChannelBind ([`PeerFilter::check_transport`], by IP and port)
//! answer 403 when it denies, Send indications ([`PeerFilter::check_transport`]) are dropped
//! and counted ([`DropReason::PeerFiltered`](crate::DropReason::PeerFiltered)). Peer → client
//! traffic needs a permission, which only an allowed address can get, so it needs no second
//! check.
//!
//! # Order of the rules
//!
//! 1. the configured deny-list: denied;
//! 2. the configured allow-list: allowed (this is how tests and benches reach loopback peers,
//!    see [`PeerFilter::danger_allow_loopback`]);
//! 3. the server's own addresses (relay and listener): denied, except on the host's relay ports
//!    ([`PeerFilter::own_relay_ports`]). Two clients of this relay that reach each other
//!    through their allocations (both behind symmetric NATs: the case TURN exists for) have
//!    this server's address as their peer; the host's other ports (the REST API, a database on
//!    the same machine) stay out of reach. A permission names no port, so
//!    [`PeerFilter::check`] lets an own address through when relay ports are known, and the port
//!    is judged where it is known, by [`PeerFilter::check_transport`];
//! 4. the built-in special-purpose ranges below: denied;
//! 5. anything else: allowed.
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
use std::ops::RangeInclusive;

use boson_shared::Cidr;

/// The peer filter: built-in special-purpose ranges plus configured lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    own: Vec<IpAddr>,
    own_relay_ports: Option<RangeInclusive<u16>>,
}

/// Why [`PeerFilter::check`] refused an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denied {
    /// In the configured deny-list.
    Listed,
    /// One of the server's own relay or listener addresses.
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
            own_relay_ports: None,
        }
    }

    /// Allows `cidr` even where a built-in rule or an own address would deny it (the
    /// deny-list still wins).
    pub fn allow(mut self, cidr: Cidr) -> Self {
        self.allow.push(cidr);
        self
    }

    /// Denies `cidr`, whatever the allow-list says.
    pub fn deny(mut self, cidr: Cidr) -> Self {
        self.deny.push(cidr);
        self
    }

    /// Denies one of the server's own addresses (relay or listener).
    pub fn own_address(mut self, ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        if !self.own.contains(&ip) {
            self.own.push(ip);
        }
        self
    }

    /// The relay ports of the whole host (every worker's share), on which the own addresses
    /// may be reached: relay to relay. Without it, own addresses are denied on every port.
    pub fn own_relay_ports(mut self, ports: RangeInclusive<u16>) -> Self {
        self.own_relay_ports = Some(ports);
        self
    }

    /// Whether the host's relay ports are known.
    pub const fn knows_relay_ports(&self) -> bool {
        self.own_relay_ports.is_some()
    }

    /// Allows `127.0.0.0/8` and `::1`, so tests and benches can run peers on the loopback
    /// interface. Never for production: it opens the relay host's local services to clients.
    pub fn danger_allow_loopback(self) -> Self {
        self.allow(Cidr::LOOPBACK_V4).allow(Cidr::LOOPBACK_V6)
    }

    /// Decides whether a client may get a permission for `ip`. Pure: same answer for the same
    /// filter and address, no state touched. An own address passes when the relay ports are
    /// known: its port is judged by [`check_transport`](Self::check_transport) on use.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        self.judge(ip, self.own_relay_ports.is_some())
    }

    /// Decides whether a client may send to `peer`: [`check`](Self::check), except that an own
    /// address passes only on one of the host's relay ports.
    pub fn check_transport(&self, peer: SocketAddr) -> Result<(), Denied> {
        let on_relay_port = self
            .own_relay_ports
            .as_ref()
            .is_some_and(|ports| ports.contains(&peer.port()));
        self.judge(peer.ip(), on_relay_port)
    }

    fn judge(&self, ip: IpAddr, own_allowed: bool) -> Result<(), Denied> {
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
        if matches(&self.allow) {
            return Ok(());
        }
        if self.own.contains(&ip) || v4.is_some_and(|v4| self.own.contains(&v4)) {
            // An own address on a relay port is one of this host's relay sockets.
            return if own_allowed {
                Ok(())
            } else {
                Err(Denied::OwnAddress)
            };
        }
        match (ip, embedded) {
            (_, Embedded::V4(v4)) => special_ipv4(v4),
            (_, Embedded::Opaque) => Err(Denied::OpaqueEmbedding),
            (IpAddr::V6(v6), Embedded::None) => special_ipv6(v6),
            (IpAddr::V4(_), Embedded::None) => Ok(()),
        }
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

    fn check(filter: &PeerFilter, ip: &str) -> Result<(), Denied> {
        filter.check(ip.parse().unwrap())
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
            ("203.0.113.7", Err(Denied::OwnAddress)),
            ("::ffff:203.0.113.7", Err(Denied::OwnAddress)),
            ("2002:cb00:7107::", Err(Denied::OwnAddress)),
            ("198.51.100.1", Err(Denied::OwnAddress)),
            ("203.0.113.8", Ok(())),
        ] {
            assert_eq!(check(&filter, ip), expected, "{ip}");
        }
        // Relay to relay: an own address is reachable on the host's relay ports only, in
        // every spelling; a permission (no port) for it is allowed once the ports are known.
        let filter = PeerFilter::new()
            .own_address("203.0.113.7".parse().unwrap())
            .own_address("10.0.0.5".parse().unwrap())
            .own_relay_ports(49152..=65535);
        let transport = |addr: &str| filter.check_transport(addr.parse().unwrap());
        assert_eq!(transport("203.0.113.7:49152"), Ok(()));
        assert_eq!(transport("203.0.113.7:65535"), Ok(()));
        assert_eq!(transport("[::ffff:203.0.113.7]:50000"), Ok(()));
        assert_eq!(
            transport("10.0.0.5:50000"),
            Ok(()),
            "a private relay IP is still ours"
        );
        assert_eq!(transport("203.0.113.7:8080"), Err(Denied::OwnAddress));
        assert_eq!(transport("203.0.113.7:49151"), Err(Denied::OwnAddress));
        assert_eq!(
            transport("[2002:cb00:7107::]:6379"),
            Err(Denied::OwnAddress)
        );
        assert_eq!(transport("10.0.0.6:50000"), Err(Denied::Private));
        assert_eq!(transport("127.0.0.1:50000"), Err(Denied::Loopback));
        assert_eq!(check(&filter, "203.0.113.7"), Ok(()));
        assert_eq!(check(&filter, "10.0.0.6"), Err(Denied::Private));
        let unknown_ports = PeerFilter::new().own_address("203.0.113.7".parse().unwrap());
        assert_eq!(
            check(&unknown_ports, "203.0.113.7"),
            Err(Denied::OwnAddress)
        );
        assert_eq!(
            unknown_ports.check_transport("203.0.113.7:50000".parse().unwrap()),
            Err(Denied::OwnAddress)
        );

        // The allow-list also beats an own address (loopback benches relay to themselves).
        let filter = PeerFilter::new()
            .own_address("127.0.0.1".parse().unwrap())
            .danger_allow_loopback();
        assert_eq!(check(&filter, "127.0.0.1"), Ok(()));
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
