//! The relay framing: what travels inside the WebSocket binary messages.
//!
//! Every relay message is exactly one binary WebSocket message (one frame, FIN set; see
//! [`super`] for why fragmentation is refused). Its first byte is the type; NodeIds are the
//! 16 raw bytes of the node's UUID, in the UUID's own (big-endian) byte order.
//!
//! ```text
//! type  name            dir   layout (bytes)                              total
//! 0x01  SEND            C→S   [0x01][dest NodeId: 16][packet: 0..=max]    17 + packet
//! 0x02  RECV            S→C   [0x02][src NodeId: 16][packet: 0..=max]     17 + packet
//! 0x03  PEER_GONE       S→C   [0x03][NodeId: 16]                          17
//! 0x04  PEER_PRESENT    S→C   [0x04][NodeId: 16]                          17
//! 0x05  AUTH            C→S   [0x05][token: 1..=4096]                     1 + token
//! 0x06  RECONNECT_HINT  S→C   [0x06]                                      1
//! 0x07  READY           S→C   [0x07][own NodeId: 16]                      17
//! ```
//!
//! * **SEND → RECV.** A client sends a WireGuard packet to `dest` with SEND; the relay hands it
//!   to `dest` as RECV carrying the *source* id instead. The two prefixes have the same
//!   length, so the relay rewrites the 17 bytes in place ([`send_to_recv_in_place`]) and
//!   writes the (shorter, unmasked) server frame header into the space the client's masked
//!   header occupied: the packet itself is never copied to build the frame.
//! * **max** packet is the message cap (64 KiB by default,
//!   [`DEFAULT_MAX_MESSAGE`](super::DEFAULT_MAX_MESSAGE)) minus the 17-byte prefix: 65 519
//!   bytes, above any IP packet WireGuard carries.
//! * **PEER_GONE** answers a SEND whose destination is not connected (rate-limited per sender
//!   and destination); **PEER_PRESENT** tells a client a peer is (again) reachable here.
//! * **AUTH** is the first message when the upgrade request had no `Authorization: Bearer`
//!   header. A text message with the token is accepted in its place, and only there.
//! * **READY** is the server's first message after the owner accepted the token: the client
//!   may send from then on (SENDs before it are dropped). It is not part of DERP's framing;
//!   without it a client cannot tell "authenticated" from "verdict pending".
//! * **RECONNECT_HINT**: the server is draining; reconnect (to another relay) at leisure.
//! * **Keepalive** is the WebSocket ping/pong, not a relay message.
//! * Unknown types from a client are counted and ignored, so newer clients can talk to older
//!   servers; clients should do the same.

use std::ops::Range;

use boson_shared::NodeId;

use super::frame::{self, BufferTooSmall, MAX_SERVER_HEADER_LEN, OpCode};
use super::handshake::MAX_TOKEN_LEN;

/// Length of a NodeId on the wire.
pub const NODE_ID_LEN: usize = 16;

/// Type byte plus a NodeId: the prefix of SEND and RECV, and all of PEER_GONE, PEER_PRESENT
/// and READY.
pub const PREFIX_LEN: usize = 1 + NODE_ID_LEN;

/// Bytes to leave in front of a packet for [`encode_recv`]: the largest server frame header
/// plus the RECV prefix.
pub const HEADROOM: usize = MAX_SERVER_HEADER_LEN + PREFIX_LEN;

/// Length of the buffer [`encode_notice`] writes into: a 2-byte header and a 17-byte message.
pub const MAX_NOTICE_FRAME: usize = 2 + PREFIX_LEN;

/// The type byte of a relay message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// 0x01: `[0x01][dest][packet]`, client to server.
    Send = 0x01,
    /// 0x02: `[0x02][src][packet]`, server to client.
    Recv = 0x02,
    /// 0x03: `[0x03][node]`, server to client.
    PeerGone = 0x03,
    /// 0x04: `[0x04][node]`, server to client.
    PeerPresent = 0x04,
    /// 0x05: `[0x05][token]`, client to server.
    Auth = 0x05,
    /// 0x06: `[0x06]`, server to client.
    ReconnectHint = 0x06,
    /// 0x07: `[0x07][node]`, server to client.
    Ready = 0x07,
}

/// A parsed relay message, borrowing the (unmasked) WebSocket payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Relay `packet` to `dest`.
    Send {
        /// The destination node.
        dest: NodeId,
        /// The WireGuard packet.
        packet: &'a [u8],
    },
    /// `packet` from `src`.
    Recv {
        /// The sending node.
        src: NodeId,
        /// The WireGuard packet.
        packet: &'a [u8],
    },
    /// The node is not connected to this relay.
    PeerGone(NodeId),
    /// The node is connected to this relay.
    PeerPresent(NodeId),
    /// The client's bearer token.
    Auth {
        /// The token, opaque to the relay.
        token: &'a [u8],
    },
    /// The server is draining.
    ReconnectHint,
    /// Authenticated as this node.
    Ready(NodeId),
}

/// Why a relay message does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// An empty binary message.
    #[error("empty relay message")]
    Empty,
    /// A type byte this version does not know.
    #[error("unknown relay message type {0:#04x}")]
    UnknownType(u8),
    /// Too short for its type, or (for the fixed-size types) too long.
    #[error("relay message of type {0:?} has the wrong length")]
    BadLength(MessageType),
    /// AUTH with an empty token or one above [`MAX_TOKEN_LEN`].
    #[error("AUTH token empty or longer than the cap")]
    BadToken,
}

impl<'a> Message<'a> {
    /// Parses an unmasked WebSocket binary payload. Never copies.
    pub fn parse(payload: &'a [u8]) -> Result<Self, RelayError> {
        let (&kind, body) = payload.split_first().ok_or(RelayError::Empty)?;
        let kind = MessageType::from_byte(kind).ok_or(RelayError::UnknownType(kind))?;
        let node_then = |body: &'a [u8]| -> Result<(NodeId, &'a [u8]), RelayError> {
            let (id, rest) = body
                .split_first_chunk::<NODE_ID_LEN>()
                .ok_or(RelayError::BadLength(kind))?;
            Ok((node_id(*id), rest))
        };
        let node_only = |body: &'a [u8]| -> Result<NodeId, RelayError> {
            let (node, rest) = node_then(body)?;
            if !rest.is_empty() {
                return Err(RelayError::BadLength(kind));
            }
            Ok(node)
        };
        let message = match kind {
            MessageType::Send => {
                let (dest, packet) = node_then(body)?;
                Self::Send { dest, packet }
            }
            MessageType::Recv => {
                let (src, packet) = node_then(body)?;
                Self::Recv { src, packet }
            }
            MessageType::PeerGone => Self::PeerGone(node_only(body)?),
            MessageType::PeerPresent => Self::PeerPresent(node_only(body)?),
            MessageType::Ready => Self::Ready(node_only(body)?),
            MessageType::Auth => {
                if body.is_empty() || body.len() > MAX_TOKEN_LEN {
                    return Err(RelayError::BadToken);
                }
                Self::Auth { token: body }
            }
            MessageType::ReconnectHint => {
                if !body.is_empty() {
                    return Err(RelayError::BadLength(kind));
                }
                Self::ReconnectHint
            }
        };
        Ok(message)
    }
}

impl MessageType {
    /// The type for `byte`, if known.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(Self::Send),
            0x02 => Some(Self::Recv),
            0x03 => Some(Self::PeerGone),
            0x04 => Some(Self::PeerPresent),
            0x05 => Some(Self::Auth),
            0x06 => Some(Self::ReconnectHint),
            0x07 => Some(Self::Ready),
            _ => None,
        }
    }
}

/// A NodeId from its 16 wire bytes.
pub const fn node_id(bytes: [u8; NODE_ID_LEN]) -> NodeId {
    NodeId::from_bytes(bytes)
}

/// The 16 wire bytes of a NodeId.
pub const fn node_bytes(node: &NodeId) -> &[u8; NODE_ID_LEN] {
    node.as_bytes()
}

/// Turns the SEND message at `buf[message]` into a complete server RECV frame from `src`, in
/// place: the 17-byte prefix is rewritten and a binary frame header is written in the
/// [`MAX_SERVER_HEADER_LEN`] bytes before `message.start`. Returns the frame's range.
///
/// The session guarantees that room for a frame it received: the client's masked header in
/// front of the payload is always 4 bytes longer than the server's unmasked one.
pub fn send_to_recv_in_place(
    buf: &mut [u8],
    message: Range<usize>,
    src: &NodeId,
) -> Result<Range<usize>, BufferTooSmall> {
    let Some(prefix) = buf
        .get_mut(message.clone())
        .and_then(|m| m.first_chunk_mut::<PREFIX_LEN>())
    else {
        return Err(BufferTooSmall {
            needed: message.start + PREFIX_LEN,
        });
    };
    write_prefix(prefix, MessageType::Recv, src);
    let frame = frame::write_header_before(buf, message, OpCode::Binary)?;
    Ok(frame)
}

/// Encodes a RECV frame around the packet at `buf[packet]`, which the caller placed after at
/// least [`HEADROOM`] bytes; returns the frame's range. Zero copy.
pub fn encode_recv(
    buf: &mut [u8],
    packet: Range<usize>,
    src: &NodeId,
) -> Result<Range<usize>, BufferTooSmall> {
    let Some(start) = packet.start.checked_sub(PREFIX_LEN) else {
        return Err(BufferTooSmall { needed: HEADROOM });
    };
    let frame = send_to_recv_in_place(buf, start..packet.end, src)?;
    Ok(frame)
}

/// Encodes a SEND frame, masked with `mask` as a client must, with a copy of `packet` into
/// `out`; returns its length. For clients and tests.
pub fn encode_send(
    dest: &NodeId,
    packet: &[u8],
    mask: [u8; 4],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let payload_len = PREFIX_LEN + packet.len();
    let header = frame::encode_header(true, OpCode::Binary, payload_len, Some(mask), out)?;
    let end = header + payload_len;
    let Some(payload) = out.get_mut(header..end) else {
        return Err(BufferTooSmall { needed: end });
    };
    let (prefix, body) = payload.split_at_mut(PREFIX_LEN);
    if let Some(prefix) = prefix.first_chunk_mut::<PREFIX_LEN>() {
        write_prefix(prefix, MessageType::Send, dest);
    }
    body.copy_from_slice(packet);
    frame::apply_mask(payload, mask);
    Ok(end)
}

/// Encodes a complete server frame for a message without payload beyond a NodeId —
/// PEER_GONE, PEER_PRESENT, READY with `Some(node)`; RECONNECT_HINT with `None` — into
/// `out`; returns its length.
pub fn encode_notice(
    kind: MessageType,
    node: Option<&NodeId>,
    out: &mut [u8; MAX_NOTICE_FRAME],
) -> usize {
    let mut message = [0u8; PREFIX_LEN];
    message[0] = kind as u8;
    let len = match node {
        Some(node) => {
            write_prefix(&mut message, kind, node);
            PREFIX_LEN
        }
        None => 1,
    };
    // A 2-byte header: final binary frame, 7-bit length (at most 17).
    out[0] = 0x80 | OpCode::Binary.bits();
    out[1] = len as u8;
    out[2..2 + len].copy_from_slice(&message[..len]);
    2 + len
}

fn write_prefix(prefix: &mut [u8; PREFIX_LEN], kind: MessageType, node: &NodeId) {
    prefix[0] = kind as u8;
    prefix[1..].copy_from_slice(node_bytes(node));
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;
    use crate::ws::frame::FrameHeader;

    const A: [u8; 16] = hex!("00112233445566778899aabbccddeeff");
    const B: [u8; 16] = hex!("ffeeddccbbaa99887766554433221100");

    #[test]
    fn parses_every_type() {
        let mut send = vec![0x01];
        send.extend_from_slice(&B);
        send.extend_from_slice(b"pkt");
        assert_eq!(
            Message::parse(&send),
            Ok(Message::Send {
                dest: node_id(B),
                packet: b"pkt"
            })
        );
        send[0] = 0x02;
        assert_eq!(
            Message::parse(&send),
            Ok(Message::Recv {
                src: node_id(B),
                packet: b"pkt"
            })
        );
        for (byte, expected) in [
            (0x03, Message::PeerGone(node_id(A))),
            (0x04, Message::PeerPresent(node_id(A))),
            (0x07, Message::Ready(node_id(A))),
        ] {
            let mut message = vec![byte];
            message.extend_from_slice(&A);
            assert_eq!(Message::parse(&message), Ok(expected));
            message.push(0);
            assert!(matches!(
                Message::parse(&message),
                Err(RelayError::BadLength(_))
            ));
            assert!(matches!(
                Message::parse(&message[..16]),
                Err(RelayError::BadLength(_))
            ));
        }
        assert_eq!(
            Message::parse(b"\x05tok"),
            Ok(Message::Auth { token: b"tok" })
        );
        assert_eq!(Message::parse(b"\x06"), Ok(Message::ReconnectHint));
    }

    #[test]
    fn refuses_bad_messages() {
        assert_eq!(Message::parse(&[]), Err(RelayError::Empty));
        assert_eq!(Message::parse(&[0x08]), Err(RelayError::UnknownType(8)));
        assert_eq!(Message::parse(&[0]), Err(RelayError::UnknownType(0)));
        assert_eq!(
            Message::parse(&[0x01; 16]),
            Err(RelayError::BadLength(MessageType::Send))
        );
        assert_eq!(Message::parse(b"\x05"), Err(RelayError::BadToken));
        let mut long = vec![0x05];
        long.resize(2 + MAX_TOKEN_LEN, b'a');
        assert_eq!(Message::parse(&long), Err(RelayError::BadToken));
        assert_eq!(
            Message::parse(b"\x06\x00"),
            Err(RelayError::BadLength(MessageType::ReconnectHint))
        );
    }

    #[test]
    fn send_becomes_recv_in_place() {
        let mut buf = [0u8; 64];
        let len = encode_send(&node_id(B), b"wireguard", [9, 8, 7, 6], &mut buf).unwrap();
        let header = FrameHeader::parse(&buf[..len]).unwrap().unwrap();
        assert_eq!(header.header_len, 6);
        let message = header.header_len..len;
        frame::apply_mask(&mut buf[message.clone()], [9, 8, 7, 6]);
        let frame = send_to_recv_in_place(&mut buf, message.clone(), &node_id(A)).unwrap();
        assert_eq!(frame, 4..len, "2-byte header right before the message");
        let header = FrameHeader::parse(&buf[frame]).unwrap().unwrap();
        assert_eq!(
            (header.opcode, header.mask, header.fin),
            (OpCode::Binary, None, true)
        );
        assert_eq!(
            Message::parse(&buf[message]),
            Ok(Message::Recv {
                src: node_id(A),
                packet: b"wireguard"
            })
        );
    }

    #[test]
    fn recv_needs_headroom() {
        let mut buf = vec![0u8; HEADROOM + 300];
        buf[HEADROOM..].fill(0xAB);
        let frame = encode_recv(&mut buf, HEADROOM..HEADROOM + 300, &node_id(A)).unwrap();
        assert_eq!(frame.start, HEADROOM - PREFIX_LEN - 4);
        assert_eq!(buf[frame.start..frame.start + 5], hex!("82 7e 01 3d 02"));
        assert!(encode_recv(&mut buf, 10..20, &node_id(A)).is_err());
        assert!(encode_recv(&mut buf, 17..20, &node_id(A)).is_err());
    }

    #[test]
    fn notices() {
        let mut out = [0u8; MAX_NOTICE_FRAME];
        let len = encode_notice(MessageType::PeerGone, Some(&node_id(A)), &mut out);
        assert_eq!(len, MAX_NOTICE_FRAME);
        assert_eq!(out[..3], hex!("82 11 03"));
        assert_eq!(
            Message::parse(&out[2..len]),
            Ok(Message::PeerGone(node_id(A)))
        );
        let len = encode_notice(MessageType::ReconnectHint, None, &mut out);
        assert_eq!(out[..len], hex!("82 01 06"));
    }
}
