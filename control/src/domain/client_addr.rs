//! The client's address behind trusted proxies: pure parsers for `Forwarded` ([RFC 7239]),
//! `X-Forwarded-For` and the PROXY protocol v2 header, and the rule that picks the client.
//!
//! Only a connection whose peer is in `--trusted-proxies` is believed; from anyone else these
//! headers are ignored (a client could write any address into them). From a trusted peer:
//!
//! 1. a PROXY protocol v2 header at the start of the connection ([`parse_proxy_v2`]) replaces
//!    the TCP peer as the connection's address (a layer-4 load balancer);
//! 2. then, per request, `Forwarded` if present, else `X-Forwarded-For`, lists the hops, each
//!    proxy appending the address it received the request from. Walking from the right, every
//!    hop in a trusted network is one of ours; the first one that is not is the client
//!    ([`client_ip`]). A header that does not parse, or a hop that is not an address
//!    (`unknown`, an obfuscated `_name`) where the walk needs one, is refused: the server
//!    answers 400 `invalid_forwarded_header` rather than guess.
//!
//! [RFC 7239]: https://www.rfc-editor.org/rfc/rfc7239

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use boson_shared::Cidr;

/// Why a forwarding header or a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// Not the header's grammar (`Forwarded` pairs, a list of addresses).
    #[error("{header}: malformed: {detail}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The hop the walk stopped at is not an address (`unknown`, `_obfuscated`).
    #[error("{header}: the client hop is not an IP address")]
    NotAnAddress {
        /// The header.
        header: &'static str,
    },
}

impl ForwardedError {
    /// The header at fault.
    pub fn header(&self) -> &'static str {
        match self {
            Self::Malformed { header, .. } | Self::NotAnAddress { header } => header,
        }
    }
}

/// One hop of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An address (the port, if any, dropped).
    Ip(IpAddr),
    /// `unknown` or an obfuscated identifier: a hop that hides its address.
    Hidden,
}

/// Whether `ip` is in one of `trusted`. IPv4-mapped IPv6 addresses count as IPv4.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|cidr| cidr.contains(ip))
}

/// The client of a request: `peer` itself unless it is trusted; otherwise the rightmost hop
/// that is not trusted, or the leftmost hop when every hop is trusted, or `peer` when there
/// are no hops.
pub fn client_ip(
    peer: IpAddr,
    trusted: &[Cidr],
    hops: &[Hop],
    header: &'static str,
) -> Result<IpAddr, ForwardedError> {
    if !is_trusted(trusted, peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Ip(ip) => {
                client = ip.to_canonical();
                if !is_trusted(trusted, ip) {
                    return Ok(client);
                }
            }
            Hop::Hidden => return Err(ForwardedError::NotAnAddress { header }),
        }
    }
    Ok(client)
}

/// The `for=` hops of every `Forwarded` header value, in order.
pub fn parse_forwarded<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Hop>, ForwardedError> {
    const HEADER: &str = "Forwarded";
    let malformed = |detail: &str| ForwardedError::Malformed {
        header: HEADER,
        detail: detail.to_owned(),
    };
    let mut hops = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, ',') {
            let mut hop = None;
            for pair in split_outside_quotes(element, ';') {
                let pair = pair.trim();
                if pair.is_empty() {
                    continue;
                }
                let (name, raw) = pair
                    .split_once('=')
                    .ok_or_else(|| malformed("a parameter without '='"))?;
                if !name.bytes().all(is_token_byte) || name.is_empty() {
                    return Err(malformed("a parameter name that is not a token"));
                }
                let value = unquote(raw).ok_or_else(|| malformed("a bad value"))?;
                if name.eq_ignore_ascii_case("for") {
                    if hop.is_some() {
                        return Err(malformed("two for= in one element"));
                    }
                    hop = Some(node(&value).ok_or_else(|| malformed("a bad for= node"))?);
                }
            }
            if let Some(hop) = hop {
                hops.push(hop);
            }
        }
    }
    Ok(hops)
}

/// The hops of every `X-Forwarded-For` header value, in order.
pub fn parse_x_forwarded_for<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Hop>, ForwardedError> {
    let mut hops = Vec::new();
    for value in values {
        for item in value.split(',') {
            let item = item.trim();
            let hop = match item {
                "unknown" => Hop::Hidden,
                _ => Hop::Ip(address(item).ok_or_else(|| ForwardedError::Malformed {
                    header: "X-Forwarded-For",
                    detail: format!("{:?} is not an IP address", truncate(item)),
                })?),
            };
            hops.push(hop);
        }
    }
    Ok(hops)
}

/// What a PROXY protocol v2 header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied TCP connection from `source`.
    Proxied {
        /// The client's address and port.
        source: SocketAddr,
    },
    /// `LOCAL` (the proxy's own health check), or a family this server does not take
    /// addresses from (UNIX sockets, UNSPEC): keep the TCP peer.
    Local,
}

/// The 12-byte signature that starts every PROXY protocol v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, and the 16-bit length that follows.
pub const PROXY_V2_FIXED_LEN: usize = 16;

/// The length of the whole PROXY v2 header that starts with `fixed` (its first 16 bytes), or
/// `None` when `fixed` does not start with the signature.
pub fn proxy_v2_len(fixed: &[u8; PROXY_V2_FIXED_LEN]) -> Option<usize> {
    (fixed[..12] == PROXY_V2_SIGNATURE)
        .then(|| PROXY_V2_FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// Parses a whole PROXY protocol v2 header (`proxy_v2_len` bytes). Layout (spec §2.2):
///
/// ```text
/// | signature (12) | ver 2 << 4 | cmd (1) | family << 4 | proto (1) | len (2) | addresses, TLVs |
/// AF_INET  / STREAM: | src ip (4) | dst ip (4)  | src port (2) | dst port (2) |
/// AF_INET6 / STREAM: | src ip (16) | dst ip (16) | src port (2) | dst port (2) |
/// ```
pub fn parse_proxy_v2(header: &[u8]) -> Result<ProxyHeader, ForwardedError> {
    let malformed = |detail: &str| ForwardedError::Malformed {
        header: "PROXY protocol v2",
        detail: detail.to_owned(),
    };
    let fixed: &[u8; PROXY_V2_FIXED_LEN] = header
        .get(..PROXY_V2_FIXED_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("shorter than 16 bytes"))?;
    let len = proxy_v2_len(fixed).ok_or_else(|| malformed("no signature"))?;
    if header.len() != len {
        return Err(malformed("length does not match"));
    }
    if fixed[12] >> 4 != 2 {
        return Err(malformed("not version 2"));
    }
    let body = &header[PROXY_V2_FIXED_LEN..];
    match (fixed[12] & 0x0F, fixed[13]) {
        (0x0, _) => Ok(ProxyHeader::Local),
        // TCP over IPv4, TCP over IPv6.
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip), port),
            })
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port),
            })
        }
        (0x1, 0x11 | 0x21) => Err(malformed("addresses shorter than their family needs")),
        (0x1, _) => Ok(ProxyHeader::Local),
        _ => Err(malformed("unknown command")),
    }
}

// ---------------------------------------------------------------------------------------------

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits on `separator` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A token or a quoted string (with `\` escapes).
fn unquote(raw: &str) -> Option<String> {
    match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next()? } else { c });
            }
            Some(out)
        }
        None => (!raw.is_empty() && raw.bytes().all(is_token_byte)).then(|| raw.to_owned()),
    }
}

/// An RFC 7239 §6 node: `IPv4[:port]`, `"[IPv6][:port]"`, `unknown` or `_obfuscated`.
fn node(value: &str) -> Option<Hop> {
    let name = match value.strip_prefix('[') {
        Some(rest) => {
            let (v6, tail) = rest.split_once(']')?;
            port_ok(tail)?;
            return v6
                .parse::<Ipv6Addr>()
                .ok()
                .map(|ip| Hop::Ip(IpAddr::V6(ip)));
        }
        None => match value.split_once(':') {
            Some((name, port)) => {
                port_ok(&format!(":{port}"))?;
                name
            }
            None => value,
        },
    };
    if name.eq_ignore_ascii_case("unknown") || name.starts_with('_') {
        return Some(Hop::Hidden);
    }
    name.parse::<Ipv4Addr>()
        .ok()
        .map(|ip| Hop::Ip(IpAddr::V4(ip)))
}

/// Empty, or `:` and a port (digits) or an obfuscated port (`_...`).
fn port_ok(tail: &str) -> Option<()> {
    match tail.strip_prefix(':') {
        None if tail.is_empty() => Some(()),
        None => None,
        Some(port) if port.starts_with('_') || port.parse::<u16>().is_ok() => Some(()),
        Some(_) => None,
    }
}

/// An address as X-Forwarded-For writes it: `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`.
fn address(item: &str) -> Option<IpAddr> {
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = item.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = item.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The start of a hostile value, for an error message.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        let hops = parse_forwarded([
            r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711""#,
            "for=198.51.100.17;proto=https;by=203.0.113.43, For=unknown",
            r#"host=example.com, for="_hidden", for="192.0.2.60:80""#,
        ])
        .unwrap();
        assert_eq!(
            hops,
            [
                Hop::Ip(ip("192.0.2.43")),
                Hop::Ip(ip("2001:db8:cafe::17")),
                Hop::Ip(ip("198.51.100.17")),
                Hop::Hidden,
                Hop::Hidden,
                Hop::Ip(ip("192.0.2.60")),
            ]
        );
        for bad in [
            "for",
            "for=",
            "for=[2001:db8::1]",
            "for=\"[2001:db8::1\"",
            "for=999.0.0.1",
            "for=192.0.2.1:99999",
            "for=1.2.3.4;for=5.6.7.8",
            "f(r=1.2.3.4",
            "for=\"unterminated",
            "for=example.com",
        ] {
            assert!(
                matches!(
                    parse_forwarded([bad]),
                    Err(ForwardedError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(parse_forwarded(["proto=https"]).unwrap(), []);
    }

    #[test]
    fn x_forwarded_for_lists_addresses() {
        let hops =
            parse_x_forwarded_for(["203.0.113.7, 10.0.0.1:443", "[2001:db8::1]:80, 2001:db8::2"])
                .unwrap();
        assert_eq!(
            hops,
            [
                Hop::Ip(ip("203.0.113.7")),
                Hop::Ip(ip("10.0.0.1")),
                Hop::Ip(ip("2001:db8::1")),
                Hop::Ip(ip("2001:db8::2")),
            ]
        );
        assert_eq!(parse_x_forwarded_for(["unknown"]).unwrap(), [Hop::Hidden]);
        for bad in ["", "a.b.c.d", "1.2.3.4,,5.6.7.8", "1.2.3.4 5.6.7.8", "[::1"] {
            assert!(parse_x_forwarded_for([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_and_only_trusted_peers_are_believed() {
        let trusted = cidrs(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let hops = [
            Hop::Ip(ip("198.51.100.1")),
            Hop::Ip(ip("203.0.113.9")),
            Hop::Ip(ip("10.1.1.1")),
        ];
        let h = "X-Forwarded-For";
        assert_eq!(
            client_ip(ip("10.0.0.2"), &trusted, &hops, h),
            Ok(ip("203.0.113.9")),
            "a spoofed leftmost hop is ignored"
        );
        assert_eq!(
            client_ip(ip("192.0.2.1"), &trusted, &hops, h),
            Ok(ip("192.0.2.1")),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &trusted, &hops, h),
            Ok(ip("203.0.113.9")),
            "a mapped trusted peer"
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &trusted, &[], h),
            Ok(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &trusted, &[Hop::Ip(ip("10.9.9.9"))], h),
            Ok(ip("10.9.9.9")),
            "all trusted: the leftmost"
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &trusted,
                &[Hop::Hidden, Hop::Ip(ip("10.3.3.3"))],
                h
            ),
            Err(ForwardedError::NotAnAddress { header: h })
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &trusted,
                &[Hop::Hidden, Hop::Ip(ip("192.0.2.5"))],
                h
            ),
            Ok(ip("192.0.2.5")),
            "a hidden hop left of the client does not matter"
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &trusted,
                &[Hop::Ip(ip("::ffff:192.0.2.5"))],
                h
            ),
            Ok(ip("192.0.2.5"))
        );
    }

    fn proxy_v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut header = PROXY_V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        header.extend_from_slice(body);
        header
    }

    #[test]
    fn proxy_protocol_v2_headers() {
        let v4 = [
            203, 0, 113, 7, 10, 0, 0, 1, 0xC3, 0x50, 0x1F, 0x90, // + a TLV after
            0x04, 0x00, 0x01, 0xAA,
        ];
        let header = proxy_v2(1, 0x11, &v4);
        let fixed: [u8; 16] = header[..16].try_into().unwrap();
        assert_eq!(proxy_v2_len(&fixed), Some(header.len()));
        assert_eq!(
            parse_proxy_v2(&header),
            Ok(ProxyHeader::Proxied {
                source: "203.0.113.7:50000".parse().unwrap()
            })
        );
        let mut v6 = Vec::new();
        v6.extend_from_slice(&ip_octets("2001:db8::7"));
        v6.extend_from_slice(&ip_octets("2001:db8::1"));
        v6.extend_from_slice(&[0x00, 0x50, 0x01, 0xBB]);
        assert_eq!(
            parse_proxy_v2(&proxy_v2(1, 0x21, &v6)),
            Ok(ProxyHeader::Proxied {
                source: "[2001:db8::7]:80".parse().unwrap()
            })
        );
        assert_eq!(
            parse_proxy_v2(&proxy_v2(0, 0x00, &[])),
            Ok(ProxyHeader::Local)
        );
        assert_eq!(
            parse_proxy_v2(&proxy_v2(1, 0x31, &[0; 216])),
            Ok(ProxyHeader::Local),
            "UNIX sockets: keep the peer"
        );
        let mut not_v2 = proxy_v2(1, 0x11, &v4);
        not_v2[12] = 0x11;
        for bad in [
            proxy_v2(1, 0x11, &v4[..8]),
            proxy_v2(1, 0x21, &v6[..20]),
            proxy_v2(2, 0x11, &v4),
            not_v2,
            b"GET / HTTP/1.1\r\n".to_vec(),
            header[..header.len() - 1].to_vec(),
        ] {
            assert!(parse_proxy_v2(&bad).is_err(), "{bad:?}");
        }
        let http: [u8; 16] = *b"GET / HTTP/1.1\r\n";
        assert_eq!(proxy_v2_len(&http), None);
    }

    fn ip_octets(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }
}
