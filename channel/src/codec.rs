//! The binary form of [`Command`] and [`Event`] in the rings.
//!
//! ```text
//! message  = version:u8 tag:u8 body            all integers little-endian
//! version  = 3                                  CODEC_VERSION
//!
//! Command tag  body
//!   1 Grant         node:16 generation:i64 expires_at:u64
//!   2 Revoke        node:16
//!   3 ClearGrants   (empty)
//!   4 TurnSecrets   count:u8 (≤ 16), then count × (len:u16 (≤ 1024) bytes:len)
//!   5 TurnQuota     max_allocations_per_user:u32
//!   6 Drain         deadline:u64
//!   7 Presence      node:16 has_host:u8 (0|1) [host:16 if 1]
//!   8 PeerFilter    allow_count:u16 (≤ 256) allow_count × cidr
//!                   deny_count:u16 (≤ 256)  deny_count × cidr
//!   9 MeshHost      host:16 until:u64 url_len:u16 (≤ 1024) url:utf8
//!
//! Event tag    body
//!   1 NodeConnected     node:16 core:u16 transport:u8 (0 ws, 1 wss, 2 quic, 3 mesh)
//!   2 NodeDisconnected  node:16 core:u16
//!   3 AllocationCreated core:u16 user_len:u16 (≤ 1024) user:utf8 relay:addr
//!   4 AllocationExpired core:u16 relay:addr
//!   5 NeedGrants        (empty)
//!   6 Listening         udp:u16 has_tcp:u8 (0|1) [tcp:u16 if 1] has_tls:u8 (0|1) [tls:u16 if 1]
//!
//! addr = 4:u8 ip:4 port:u16
//!      | 6:u8 ip:16 port:u16 flowinfo:u32 scope_id:u32
//! cidr = 4:u8 ip:4 prefix:u8 (≤ 32)
//!      | 6:u8 ip:16 prefix:u8 (≤ 128)
//! ```
//!
//! Tag 0 is reserved. The encoding is canonical: every value has exactly one encoding and
//! the decoder accepts nothing else (no trailing bytes, flags only 0 or 1, prefixes within
//! their address), so `encode(decode(b)) == b` whenever `decode(b)` succeeds; the fuzz target
//! checks exactly that. Decoding never panics, and allocates only what the bounds allow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use boson_shared::plane::{Command, Event, Grant, HostId, Transport};
use boson_shared::{Cidr, NodeId};
use uuid::Uuid;

/// The first byte of every message. Bumped with [`LAYOUT_VERSION`](crate::LAYOUT_VERSION)
/// on any change to this format.
pub const CODEC_VERSION: u8 = 3;

/// Most TURN secrets in one [`Command::TurnSecrets`]
/// ([`plane::MAX_TURN_SECRETS`](boson_shared::plane::MAX_TURN_SECRETS)).
pub const MAX_TURN_SECRETS: usize = boson_shared::plane::MAX_TURN_SECRETS;

/// Longest TURN secret, in bytes
/// ([`plane::MAX_TURN_SECRET_LEN`](boson_shared::plane::MAX_TURN_SECRET_LEN)).
pub const MAX_SECRET_LEN: usize = boson_shared::plane::MAX_TURN_SECRET_LEN;

/// Most networks in each list of a [`Command::PeerFilter`]
/// ([`plane::MAX_PEER_CIDRS`](boson_shared::plane::MAX_PEER_CIDRS)).
pub const MAX_PEER_CIDRS: usize = boson_shared::plane::MAX_PEER_CIDRS;

/// Longest REST username user part in [`Event::AllocationCreated`], in bytes.
pub const MAX_USER_LEN: usize = 1024;

/// Longest relay URL in [`Command::MeshHost`], in bytes.
pub const MAX_URL_LEN: usize = 1024;

/// Longest encoded message: a bound on every encoding above (the largest is a
/// `TurnSecrets` of 16 secrets of 1024 bytes, 16 419 bytes; a `PeerFilter` of two full
/// lists of IPv6 networks takes 9 222). Rings hold at least two.
pub const MAX_MESSAGE_LEN: usize = 32 * 1024;

/// Why a value cannot be encoded: a field over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A list or string is longer than its bound.
    #[error("{field} has length {len}, at most {max} can be sent")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// Why bytes are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than any message.
    #[error("message of {len} bytes, longer than {MAX_MESSAGE_LEN}")]
    MessageTooLong {
        /// The input's length.
        len: usize,
    },
    /// Another codec version.
    #[error("codec version {found}, this build speaks {CODEC_VERSION}")]
    Version {
        /// The version byte.
        found: u8,
    },
    /// No such command or event.
    #[error("unknown tag {found}")]
    UnknownTag {
        /// The tag byte.
        found: u8,
    },
    /// The input ends inside a field.
    #[error("truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A length over its bound.
    #[error("{field} has length {len}, at most {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The length read.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A byte that is not one of the field's values.
    #[error("{field} has invalid value {value}")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// The byte read.
        value: u8,
    },
    /// A string that is not UTF-8.
    #[error("{field} is not UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// Bytes after the message.
    #[error("{extra} bytes after the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Appends the encoding of `command` to `out` (which is left as it was on error).
pub fn encode_command(command: &Command, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let written = write_command(command, out);
    if written.is_err() {
        out.truncate(start);
    }
    written?;
    Ok(())
}

fn write_command(command: &Command, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(CODEC_VERSION);
    match command {
        Command::Grant(grant) => {
            out.push(1);
            out.extend_from_slice(grant.node.as_bytes());
            out.extend_from_slice(&grant.generation.to_le_bytes());
            out.extend_from_slice(&grant.expires_at.to_le_bytes());
        }
        Command::Revoke { node } => {
            out.push(2);
            out.extend_from_slice(node.as_bytes());
        }
        Command::ClearGrants => out.push(3),
        Command::TurnSecrets(secrets) => {
            out.push(4);
            let count = check_len("TurnSecrets", secrets.len(), MAX_TURN_SECRETS)?;
            out.push(count as u8);
            for secret in secrets {
                let len = check_len("TurnSecrets secret", secret.len(), MAX_SECRET_LEN)?;
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(secret);
            }
        }
        Command::TurnQuota {
            max_allocations_per_user,
        } => {
            out.push(5);
            out.extend_from_slice(&max_allocations_per_user.to_le_bytes());
        }
        Command::Drain { deadline } => {
            out.push(6);
            out.extend_from_slice(&deadline.to_le_bytes());
        }
        Command::Presence { node, host } => {
            out.push(7);
            out.extend_from_slice(node.as_bytes());
            match host {
                None => out.push(0),
                Some(host) => {
                    out.push(1);
                    out.extend_from_slice(host.0.as_bytes());
                }
            }
        }
        Command::PeerFilter { allow, deny } => {
            out.push(8);
            for (field, list) in [("PeerFilter allow", allow), ("PeerFilter deny", deny)] {
                let count = check_len(field, list.len(), MAX_PEER_CIDRS)?;
                out.extend_from_slice(&(count as u16).to_le_bytes());
                for cidr in list {
                    encode_cidr(cidr, out);
                }
            }
        }
        Command::MeshHost {
            host,
            relay_url,
            until,
        } => {
            out.push(9);
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(&until.to_le_bytes());
            let len = check_len("MeshHost relay_url", relay_url.len(), MAX_URL_LEN)?;
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(relay_url.as_bytes());
        }
    }
    Ok(())
}

/// Decodes one whole message as a [`Command`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut r = Reader::message(bytes)?;
    let command = match r.u8("tag")? {
        1 => Command::Grant(Grant {
            node: r.node()?,
            generation: i64::from_le_bytes(r.array("generation")?),
            expires_at: r.u64("expires_at")?,
        }),
        2 => Command::Revoke { node: r.node()? },
        3 => Command::ClearGrants,
        4 => {
            let count = usize::from(r.u8("TurnSecrets count")?);
            r.bound("TurnSecrets", count, MAX_TURN_SECRETS)?;
            let mut secrets = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(r.u16("TurnSecrets secret length")?);
                r.bound("TurnSecrets secret", len, MAX_SECRET_LEN)?;
                secrets.push(r.take("TurnSecrets secret", len)?.to_vec());
            }
            Command::TurnSecrets(secrets)
        }
        5 => Command::TurnQuota {
            max_allocations_per_user: u32::from_le_bytes(r.array("max_allocations_per_user")?),
        },
        6 => Command::Drain {
            deadline: r.u64("deadline")?,
        },
        7 => Command::Presence {
            node: r.node()?,
            host: match r.u8("Presence has_host")? {
                0 => None,
                1 => Some(HostId(Uuid::from_bytes(r.array("Presence host")?))),
                value => {
                    return Err(DecodeError::InvalidValue {
                        field: "Presence has_host",
                        value,
                    });
                }
            },
        },
        8 => Command::PeerFilter {
            allow: r.cidrs("PeerFilter allow")?,
            deny: r.cidrs("PeerFilter deny")?,
        },
        9 => {
            let host = HostId(Uuid::from_bytes(r.array("MeshHost host")?));
            let until = r.u64("MeshHost until")?;
            let len = usize::from(r.u16("MeshHost relay_url length")?);
            r.bound("MeshHost relay_url", len, MAX_URL_LEN)?;
            let relay_url = std::str::from_utf8(r.take("MeshHost relay_url", len)?)
                .map_err(|_| DecodeError::InvalidUtf8 {
                    field: "MeshHost relay_url",
                })?
                .to_owned();
            Command::MeshHost {
                host,
                relay_url,
                until,
            }
        }
        found => return Err(DecodeError::UnknownTag { found }),
    };
    r.finish()?;
    Ok(command)
}

/// Appends the encoding of `event` to `out` (which is left as it was on error).
pub fn encode_event(event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let written = write_event(event, out);
    if written.is_err() {
        out.truncate(start);
    }
    written?;
    Ok(())
}

fn write_event(event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(CODEC_VERSION);
    match event {
        Event::NodeConnected {
            node,
            core,
            transport,
        } => {
            out.push(1);
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(&core.to_le_bytes());
            out.push(match transport {
                Transport::Ws => 0,
                Transport::Wss => 1,
                Transport::Quic => 2,
                Transport::Mesh => 3,
            });
        }
        Event::NodeDisconnected { node, core } => {
            out.push(2);
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(&core.to_le_bytes());
        }
        Event::AllocationCreated { core, user, relay } => {
            out.push(3);
            out.extend_from_slice(&core.to_le_bytes());
            let len = check_len("AllocationCreated user", user.len(), MAX_USER_LEN)?;
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(user.as_bytes());
            encode_addr(relay, out);
        }
        Event::AllocationExpired { core, relay } => {
            out.push(4);
            out.extend_from_slice(&core.to_le_bytes());
            encode_addr(relay, out);
        }
        Event::NeedGrants => out.push(5),
        Event::Listening { udp, tcp, tls } => {
            out.push(6);
            out.extend_from_slice(&udp.to_le_bytes());
            for port in [tcp, tls] {
                match port {
                    None => out.push(0),
                    Some(port) => {
                        out.push(1);
                        out.extend_from_slice(&port.to_le_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Decodes one whole message as an [`Event`].
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader::message(bytes)?;
    let event = match r.u8("tag")? {
        1 => Event::NodeConnected {
            node: r.node()?,
            core: r.u16("core")?,
            transport: match r.u8("transport")? {
                0 => Transport::Ws,
                1 => Transport::Wss,
                2 => Transport::Quic,
                3 => Transport::Mesh,
                value => {
                    return Err(DecodeError::InvalidValue {
                        field: "transport",
                        value,
                    });
                }
            },
        },
        2 => Event::NodeDisconnected {
            node: r.node()?,
            core: r.u16("core")?,
        },
        3 => {
            let core = r.u16("core")?;
            let len = usize::from(r.u16("AllocationCreated user length")?);
            r.bound("AllocationCreated user", len, MAX_USER_LEN)?;
            let user = std::str::from_utf8(r.take("AllocationCreated user", len)?)
                .map_err(|_| DecodeError::InvalidUtf8 {
                    field: "AllocationCreated user",
                })?
                .to_owned();
            Event::AllocationCreated {
                core,
                user,
                relay: r.addr()?,
            }
        }
        4 => Event::AllocationExpired {
            core: r.u16("core")?,
            relay: r.addr()?,
        },
        5 => Event::NeedGrants,
        6 => Event::Listening {
            udp: r.u16("Listening udp")?,
            tcp: r.port("Listening has_tcp")?,
            tls: r.port("Listening has_tls")?,
        },
        found => return Err(DecodeError::UnknownTag { found }),
    };
    r.finish()?;
    Ok(event)
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<usize, EncodeError> {
    if len > max {
        return Err(EncodeError::TooLong { field, len, max });
    }
    Ok(len)
}

fn encode_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_le_bytes());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_le_bytes());
            out.extend_from_slice(&v6.flowinfo().to_le_bytes());
            out.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
}

fn encode_cidr(cidr: &Cidr, out: &mut Vec<u8>) {
    match cidr.addr() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.push(cidr.prefix());
}

/// A cursor over one message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the length and the version byte.
    fn message(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::MessageTooLong { len: bytes.len() });
        }
        let mut reader = Self { rest: bytes };
        let version = reader.u8("version")?;
        if version != CODEC_VERSION {
            return Err(DecodeError::Version { found: version });
        }
        Ok(reader)
    }

    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        let Some((taken, rest)) = self.rest.split_at_checked(len) else {
            return Err(DecodeError::Truncated { field });
        };
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let Some((taken, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated { field });
        };
        self.rest = rest;
        Ok(*taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.array(field)?;
        Ok(byte)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// A flag (0 or 1) named `field`, then a port if it is 1.
    fn port(&mut self, field: &'static str) -> Result<Option<u16>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.u16("port")?)),
            value => Err(DecodeError::InvalidValue { field, value }),
        }
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn node(&mut self) -> Result<NodeId, DecodeError> {
        Ok(NodeId::from_bytes(self.array("node")?))
    }

    fn bound(&self, field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        Ok(())
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        match self.u8("relay family")? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>("relay ip")?);
                let port = self.u16("relay port")?;
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>("relay ip")?);
                let port = self.u16("relay port")?;
                let flowinfo = u32::from_le_bytes(self.array("relay flowinfo")?);
                let scope_id = u32::from_le_bytes(self.array("relay scope_id")?);
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    ip, port, flowinfo, scope_id,
                )))
            }
            value => Err(DecodeError::InvalidValue {
                field: "relay family",
                value,
            }),
        }
    }

    /// A count (at most [`MAX_PEER_CIDRS`]) and that many networks.
    fn cidrs(&mut self, field: &'static str) -> Result<Vec<Cidr>, DecodeError> {
        let count = usize::from(self.u16(field)?);
        self.bound(field, count, MAX_PEER_CIDRS)?;
        let mut cidrs = Vec::with_capacity(count);
        for _ in 0..count {
            cidrs.push(self.cidr()?);
        }
        Ok(cidrs)
    }

    fn cidr(&mut self) -> Result<Cidr, DecodeError> {
        let ip = match self.u8("cidr family")? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("cidr ip")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("cidr ip")?)),
            value => {
                return Err(DecodeError::InvalidValue {
                    field: "cidr family",
                    value,
                });
            }
        };
        let prefix = self.u8("cidr prefix")?;
        Cidr::new(ip, prefix).map_err(|_| DecodeError::InvalidValue {
            field: "cidr prefix",
            value: prefix,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        if !self.rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                extra: self.rest.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;

    const NODE: [u8; 16] = hex!("00112233445566778899aabbccddeeff");

    fn command_bytes(command: &Command) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(command, &mut out).unwrap();
        out
    }

    fn event_bytes(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(event, &mut out).unwrap();
        out
    }

    #[test]
    fn command_fixtures() {
        let node = NodeId::from_bytes(NODE);
        let cases: [(Command, &[u8]); 8] = [
            (
                Command::Grant(Grant {
                    node,
                    generation: -2,
                    expires_at: 0x0102_0304_0506_0708,
                }),
                &hex!("03 01 00112233445566778899aabbccddeeff feffffffffffffff 0807060504030201"),
            ),
            (
                Command::Revoke { node },
                &hex!("03 02 00112233445566778899aabbccddeeff"),
            ),
            (Command::ClearGrants, &hex!("03 03")),
            (
                Command::TurnSecrets(vec![b"ab".to_vec(), Vec::new()]),
                &hex!("03 04 02 0200 6162 0000"),
            ),
            (
                Command::TurnQuota {
                    max_allocations_per_user: 10,
                },
                &hex!("03 05 0a000000"),
            ),
            (
                Command::Drain { deadline: 1 },
                &hex!("03 06 0100000000000000"),
            ),
            (
                Command::Presence {
                    node,
                    host: Some(HostId(Uuid::from_bytes([0xee; 16]))),
                },
                &hex!("03 07 00112233445566778899aabbccddeeff 01 eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"),
            ),
            (
                Command::PeerFilter {
                    allow: vec!["10.1.0.0/16".parse().unwrap(), "fc00::/7".parse().unwrap()],
                    deny: vec!["198.51.100.7/32".parse().unwrap()],
                },
                &hex!(
                    "03 08 0200 04 0a010000 10 06 fc000000000000000000000000000000 07
                     0100 04 c6336407 20"
                ),
            ),
        ];
        for (command, bytes) in cases {
            assert_eq!(command_bytes(&command), bytes, "{command:?}");
            assert_eq!(decode_command(bytes), Ok(command));
        }
        let mesh_host = Command::MeshHost {
            host: HostId(Uuid::from_bytes([0xee; 16])),
            relay_url: "ws://h/".to_owned(),
            until: 2,
        };
        let bytes =
            hex!("03 09 eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee 0200000000000000 0700 77733a2f2f682f");
        assert_eq!(command_bytes(&mesh_host), bytes);
        assert_eq!(decode_command(&bytes), Ok(mesh_host));
        let absent = Command::Presence { node, host: None };
        assert_eq!(
            command_bytes(&absent),
            hex!("03 07 00112233445566778899aabbccddeeff 00")
        );
        let empty = Command::PeerFilter {
            allow: Vec::new(),
            deny: Vec::new(),
        };
        assert_eq!(command_bytes(&empty), hex!("03 08 0000 0000"));
        assert_eq!(decode_command(&hex!("03 08 0000 0000")), Ok(empty));
    }

    #[test]
    fn event_fixtures() {
        let node = NodeId::from_bytes(NODE);
        let cases: [(Event, &[u8]); 7] = [
            (
                Event::NodeConnected {
                    node,
                    core: 3,
                    transport: Transport::Quic,
                },
                &hex!("03 01 00112233445566778899aabbccddeeff 0300 02"),
            ),
            (
                Event::NodeDisconnected { node, core: 0x0102 },
                &hex!("03 02 00112233445566778899aabbccddeeff 0201"),
            ),
            (
                Event::AllocationCreated {
                    core: 1,
                    user: "é".to_owned(),
                    relay: "192.0.2.1:3478".parse().unwrap(),
                },
                &hex!("03 03 0100 0200 c3a9 04 c0000201 960d"),
            ),
            (
                Event::AllocationExpired {
                    core: 1,
                    relay: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 2, 3)),
                },
                &hex!("03 04 0100 06 00000000000000000000000000000001 0100 02000000 03000000"),
            ),
            (Event::NeedGrants, &hex!("03 05")),
            (
                Event::Listening {
                    udp: 3478,
                    tcp: None,
                    tls: None,
                },
                &hex!("03 06 960d 00 00"),
            ),
            (
                Event::Listening {
                    udp: 3478,
                    tcp: Some(3478),
                    tls: Some(443),
                },
                &hex!("03 06 960d 01 960d 01 bb01"),
            ),
        ];
        for (event, bytes) in cases {
            assert_eq!(event_bytes(&event), bytes, "{event:?}");
            assert_eq!(decode_event(bytes), Ok(event));
        }
    }

    #[test]
    fn the_largest_encodings_fit_the_bound() {
        let secrets = vec![vec![0xff; MAX_SECRET_LEN]; MAX_TURN_SECRETS];
        let largest = command_bytes(&Command::TurnSecrets(secrets));
        assert_eq!(largest.len(), 16_419);
        assert!(largest.len() <= MAX_MESSAGE_LEN);
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        let filter = command_bytes(&Command::PeerFilter {
            allow: vec![v6; MAX_PEER_CIDRS],
            deny: vec![v6; MAX_PEER_CIDRS],
        });
        assert_eq!(filter.len(), 9_222);
        let event = Event::AllocationCreated {
            core: u16::MAX,
            user: "u".repeat(MAX_USER_LEN),
            relay: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 2, 3)),
        };
        assert!(event_bytes(&event).len() <= MAX_MESSAGE_LEN);
        let url = Command::MeshHost {
            host: HostId(Uuid::max()),
            relay_url: "u".repeat(MAX_URL_LEN),
            until: u64::MAX,
        };
        assert!(command_bytes(&url).len() <= MAX_MESSAGE_LEN);
    }

    #[test]
    fn over_bound_values_are_refused_and_leave_the_buffer_alone() {
        let mut out = vec![0xaa];
        let many = Command::TurnSecrets(vec![Vec::new(); MAX_TURN_SECRETS + 1]);
        assert_eq!(
            encode_command(&many, &mut out),
            Err(EncodeError::TooLong {
                field: "TurnSecrets",
                len: 17,
                max: 16
            })
        );
        let long = Command::TurnSecrets(vec![b"ok".to_vec(), vec![0; MAX_SECRET_LEN + 1]]);
        assert!(encode_command(&long, &mut out).is_err());
        let cidr: Cidr = "192.0.2.0/24".parse().unwrap();
        let denials = Command::PeerFilter {
            allow: vec![cidr],
            deny: vec![cidr; MAX_PEER_CIDRS + 1],
        };
        assert_eq!(
            encode_command(&denials, &mut out),
            Err(EncodeError::TooLong {
                field: "PeerFilter deny",
                len: 257,
                max: 256
            })
        );
        let user = Event::AllocationCreated {
            core: 0,
            user: "u".repeat(MAX_USER_LEN + 1),
            relay: "192.0.2.1:1".parse().unwrap(),
        };
        assert!(encode_event(&user, &mut out).is_err());
        let url = Command::MeshHost {
            host: HostId(Uuid::nil()),
            relay_url: "u".repeat(MAX_URL_LEN + 1),
            until: 0,
        };
        assert_eq!(
            encode_command(&url, &mut out),
            Err(EncodeError::TooLong {
                field: "MeshHost relay_url",
                len: MAX_URL_LEN + 1,
                max: MAX_URL_LEN
            })
        );
        assert_eq!(out, [0xaa]);
    }

    #[test]
    fn malformed_input_gets_a_precise_error() {
        let cases: [(&[u8], DecodeError); 17] = [
            (&[], DecodeError::Truncated { field: "version" }),
            (&[2, 3], DecodeError::Version { found: 2 }),
            (&[3], DecodeError::Truncated { field: "tag" }),
            (&[3, 0], DecodeError::UnknownTag { found: 0 }),
            (&[3, 0xff], DecodeError::UnknownTag { found: 0xff }),
            (
                &hex!("03 09 eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee 0000000000000000 0104"),
                DecodeError::TooLong {
                    field: "MeshHost relay_url",
                    len: 1025,
                    max: MAX_URL_LEN,
                },
            ),
            (
                &hex!("03 09 eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee 0000000000000000 0100 ff"),
                DecodeError::InvalidUtf8 {
                    field: "MeshHost relay_url",
                },
            ),
            (&[3, 3, 0], DecodeError::TrailingBytes { extra: 1 }),
            (&[3, 2, 0], DecodeError::Truncated { field: "node" }),
            (
                &hex!("03 04 11"),
                DecodeError::TooLong {
                    field: "TurnSecrets",
                    len: 17,
                    max: 16,
                },
            ),
            (
                &hex!("03 07 00112233445566778899aabbccddeeff 02"),
                DecodeError::InvalidValue {
                    field: "Presence has_host",
                    value: 2,
                },
            ),
            (
                &hex!("03 08 0101"),
                DecodeError::TooLong {
                    field: "PeerFilter allow",
                    len: 257,
                    max: 256,
                },
            ),
            (
                &hex!("03 08 0100 04 c0000200 21 0000"),
                DecodeError::InvalidValue {
                    field: "cidr prefix",
                    value: 33,
                },
            ),
            (
                &hex!("03 08 0000 0100 06 00000000000000000000000000000001 81"),
                DecodeError::InvalidValue {
                    field: "cidr prefix",
                    value: 129,
                },
            ),
            (
                &hex!("03 08 0100 05 c0000200 18 0000"),
                DecodeError::InvalidValue {
                    field: "cidr family",
                    value: 5,
                },
            ),
            (
                &hex!("03 08 0100 04 c00002"),
                DecodeError::Truncated { field: "cidr ip" },
            ),
            (
                &hex!("03 08 0000"),
                DecodeError::Truncated {
                    field: "PeerFilter deny",
                },
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode_command(bytes), Err(error), "{bytes:02x?}");
        }
        let events: [(&[u8], DecodeError); 7] = [
            (
                &hex!("03 01 00112233445566778899aabbccddeeff 0000 04"),
                DecodeError::InvalidValue {
                    field: "transport",
                    value: 4,
                },
            ),
            (
                &hex!("03 03 0000 0100 ff 04 c0000201 0100"),
                DecodeError::InvalidUtf8 {
                    field: "AllocationCreated user",
                },
            ),
            (
                &hex!("03 03 0000 0104"),
                DecodeError::TooLong {
                    field: "AllocationCreated user",
                    len: 1025,
                    max: 1024,
                },
            ),
            (
                &hex!("03 04 0000 05"),
                DecodeError::InvalidValue {
                    field: "relay family",
                    value: 5,
                },
            ),
            (
                &hex!("03 04 0000 06 0000"),
                DecodeError::Truncated { field: "relay ip" },
            ),
            (
                &hex!("03 06 960d 02"),
                DecodeError::InvalidValue {
                    field: "Listening has_tcp",
                    value: 2,
                },
            ),
            (
                &hex!("03 06 960d 00 01 bb"),
                DecodeError::Truncated { field: "port" },
            ),
        ];
        for (bytes, error) in events {
            assert_eq!(decode_event(bytes), Err(error), "{bytes:02x?}");
        }
        let huge = vec![2; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            decode_event(&huge),
            Err(DecodeError::MessageTooLong {
                len: MAX_MESSAGE_LEN + 1
            })
        );
    }
}
