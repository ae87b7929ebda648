//! The relay framing: what travels inside the WebSocket binary messages.
//!
//! Every relay message is exactly one binary WebSocket message (one frame, FIN set; see
//! [`super`] for why fragmentation is refused). Its first byte is the type; NodeIds and
//! HostIds are the 16 raw bytes of the UUID, in the UUID's own (big-endian) byte order.
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
//!                       S→M   [0x07][own HostId: 16]                      17
//! 0x08  FORWARD         S→M   [0x08][dest NodeId: 16][src NodeId: 16]     33 + packet
//!                             [packet: 0..=max]
//! 0x09  GONE            M→S   [0x09][dest NodeId: 16][src NodeId: 16]     33
//! ```
//!
//! `C` is a node's client, `S` the relay server, `M` a mesh client: another relay host that
//! opened this link to receive the packets this host's clients send to nodes connected there
//! (see [`MeshClient`](super::MeshClient)). A mesh link carries data server → mesh client
//! only; the mesh client sends no relay message but GONE.
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
//! * **FORWARD** carries one SEND across hosts: the relay that received the SEND (host B)
//!   pushes it to the host where `dest` is connected (host A) on the link A opened to B.
//!   It is the RECV frame B built in place, with `dest` spliced in after the type byte:
//!   B queues it from two slices without an intermediate buffer ([`encode_forward_head`]),
//!   and A turns it back into a RECV frame in its input buffer with
//!   [`forward_to_recv_in_place`]: the 17 bytes `[0x08][dest]` leave room for A's frame
//!   header and the RECV type byte in front of `[src][packet]`, so the packet is never
//!   copied on A before its destination's queue. A's hub takes the result as it takes any
//!   frame from another core ([`Hub::handle_remote`](super::Hub::handle_remote)). Its
//!   message is 16 bytes longer than the SEND it carries, so a mesh client accepts messages
//!   of the cap plus 16 ([`WsConfig::max_mesh_message`](super::WsConfig::max_mesh_message)).
//! * **READY on a mesh link** carries the HostId the mesh token named: the link is up.
//!   Normal clients never receive FORWARD; a mesh client that sends any known relay type but
//!   GONE is failed with 1008.
//! * **GONE** is PEER_GONE across hosts: host A got a FORWARD for `dest`, which is connected
//!   nowhere on A (any more), and tells host B, on the same link, so that B sends `src`, its
//!   node, a PEER_GONE about `dest` (rate-limited per pair on both hosts). From a node's client
//!   it is dropped (counted as malformed), like any type a client may not send.
//! * **Keepalive** is the WebSocket ping/pong, not a relay message.
//! * Unknown types from a client are counted and ignored, so newer clients can talk to older
//!   servers; clients should do the same.

use std::ops::Range;

use boson_shared::NodeId;

use super::frame::{self, BufferTooSmall, FrameHeader, MAX_SERVER_HEADER_LEN, OpCode};
use super::handshake::MAX_TOKEN_LEN;

/// Length of a NodeId on the wire.
pub const NODE_ID_LEN: usize = 16;

/// Type byte plus a NodeId: the prefix of SEND and RECV, and all of PEER_GONE, PEER_PRESENT
/// and READY.
pub const PREFIX_LEN: usize = 1 + NODE_ID_LEN;

/// Type byte plus two NodeIds: the prefix of FORWARD.
pub const FORWARD_PREFIX_LEN: usize = 1 + 2 * NODE_ID_LEN;

/// Length of the buffer [`encode_forward_head`] writes into: the largest server frame header
/// plus `[0x08][dest]`.
pub const MAX_FORWARD_HEAD: usize = MAX_SERVER_HEADER_LEN + PREFIX_LEN;

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
    /// 0x07: `[0x07][node]` (or `[0x07][host]` on a mesh link), server to client.
    Ready = 0x07,
    /// 0x08: `[0x08][dest][src][packet]`, server to mesh client.
    Forward = 0x08,
    /// 0x09: `[0x09][dest][src]`, mesh client to server.
    Gone = 0x09,
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
    /// Authenticated as this node (on a mesh link: the 16 bytes are the HostId).
    Ready(NodeId),
    /// `packet` from `src` (connected to the sending host) for `dest` (connected to the
    /// receiving host).
    Forward {
        /// The destination node.
        dest: NodeId,
        /// The sending node.
        src: NodeId,
        /// The WireGuard packet.
        packet: &'a [u8],
    },
    /// `dest` (a node the receiving host of a FORWARD should have had) is connected nowhere
    /// there: tell `src`, connected to the host this goes to.
    Gone {
        /// The node that is gone.
        dest: NodeId,
        /// The node whose packet to it found it gone.
        src: NodeId,
    },
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
            MessageType::Forward => {
                let (dest, rest) = node_then(body)?;
                let (src, packet) = node_then(rest)?;
                Self::Forward { dest, src, packet }
            }
            MessageType::Gone => {
                let (dest, rest) = node_then(body)?;
                Self::Gone {
                    dest,
                    src: node_only(rest)?,
                }
            }
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

impl Message<'_> {
    /// The message's type.
    pub const fn kind(&self) -> MessageType {
        match self {
            Self::Send { .. } => MessageType::Send,
            Self::Recv { .. } => MessageType::Recv,
            Self::PeerGone(_) => MessageType::PeerGone,
            Self::PeerPresent(_) => MessageType::PeerPresent,
            Self::Auth { .. } => MessageType::Auth,
            Self::ReconnectHint => MessageType::ReconnectHint,
            Self::Ready(_) => MessageType::Ready,
            Self::Forward { .. } => MessageType::Forward,
            Self::Gone { .. } => MessageType::Gone,
        }
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
            0x08 => Some(Self::Forward),
            0x09 => Some(Self::Gone),
            _ => None,
        }
    }
}

/// Length of a GONE message.
pub const GONE_LEN: usize = 1 + 2 * NODE_ID_LEN;

/// The GONE message about `dest` for `src`.
pub fn encode_gone(dest: &NodeId, src: &NodeId) -> [u8; GONE_LEN] {
    let mut out = [0u8; GONE_LEN];
    out[0] = MessageType::Gone as u8;
    out[1..=NODE_ID_LEN].copy_from_slice(node_bytes(dest));
    out[1 + NODE_ID_LEN..].copy_from_slice(node_bytes(src));
    out
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

/// The source and packet of a RECV frame, `[header][0x02][src][packet]`, as the relay
/// builds them (one unmasked final binary frame; see [`encode_recv_frame`]); `None` for
/// anything else.
pub fn parse_recv_frame(frame: &[u8]) -> Option<(NodeId, &[u8])> {
    let header = FrameHeader::parse(frame).ok()??;
    if !header.fin
        || header.opcode != OpCode::Binary
        || header.mask.is_some()
        || header.frame_len() != Some(frame.len())
    {
        return None;
    }
    if let Message::Recv { src, packet } = Message::parse(frame.get(header.header_len..)?).ok()? {
        Some((src, packet))
    } else {
        None
    }
}

/// Writes a RECV frame of `packet` from `src` into `buf`, cleared first, with one copy of
/// the packet; reserve the largest frame's capacity once and this does not allocate.
pub fn encode_recv_frame(buf: &mut Vec<u8>, src: &NodeId, packet: &[u8]) {
    let payload = PREFIX_LEN + packet.len();
    buf.clear();
    buf.resize(frame::header_len(payload, false), 0);
    // `buf` was sized for exactly this header.
    let _ = frame::encode_header(true, OpCode::Binary, payload, None, buf);
    buf.push(MessageType::Recv as u8);
    buf.extend_from_slice(node_bytes(src));
    buf.extend_from_slice(packet);
}

/// Writes the head of a FORWARD frame into `out`: the server frame header for a message of
/// `recv_payload_len + NODE_ID_LEN` bytes, then `[0x08][dest]`; returns its length. The
/// frame is complete when followed by the RECV payload `[0x02][src][packet]` without its
/// type byte, `recv_payload_len - 1` bytes: so a RECV frame becomes a FORWARD frame with
/// no copy but the one into the queue.
pub fn encode_forward_head(
    dest: &NodeId,
    recv_payload_len: usize,
    out: &mut [u8; MAX_FORWARD_HEAD],
) -> usize {
    let header_len = frame::header_len(recv_payload_len + NODE_ID_LEN, false);
    // A header of at most MAX_SERVER_HEADER_LEN bytes always fits in front of the prefix.
    let _ = frame::encode_header(
        true,
        OpCode::Binary,
        recv_payload_len + NODE_ID_LEN,
        None,
        out,
    );
    if let Some(prefix) = out
        .get_mut(header_len..header_len + PREFIX_LEN)
        .and_then(|p| p.first_chunk_mut::<PREFIX_LEN>())
    {
        write_prefix(prefix, MessageType::Forward, dest);
    }
    header_len + PREFIX_LEN
}

/// Turns the FORWARD message at `buf[message]` into a complete server RECV frame, in place:
/// `[0x02]` goes where the last byte of `dest` was, right before `[src][packet]`, and a
/// binary frame header in front of it (there are `17 + header` bytes of room, at least 19,
/// for at most [`MAX_SERVER_HEADER_LEN`]). Returns `dest` and the frame's range.
pub fn forward_to_recv_in_place(
    buf: &mut [u8],
    message: Range<usize>,
) -> Result<(NodeId, Range<usize>), BufferTooSmall> {
    let too_small = BufferTooSmall {
        needed: message.start + FORWARD_PREFIX_LEN,
    };
    let Some(prefix) = buf
        .get(message.clone())
        .and_then(|m| m.first_chunk::<FORWARD_PREFIX_LEN>())
    else {
        return Err(too_small);
    };
    let mut dest = [0u8; NODE_ID_LEN];
    dest.copy_from_slice(&prefix[1..PREFIX_LEN]);
    let recv = message.start + NODE_ID_LEN..message.end;
    buf[recv.start] = MessageType::Recv as u8;
    let frame = frame::write_header_before(buf, recv, OpCode::Binary)?;
    Ok((node_id(dest), frame))
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

    const A: [u8; 16] = hex!("00112233445566778899aabbccddeeff");
    const B: [u8; 16] = hex!("ffeeddccbbaa99887766554433221100");

    #[test]
    fn recv_frame_round_trip() {
        let mut buf = Vec::new();
        for len in [0, 100, 125 - PREFIX_LEN + 1, 70_000] {
            let packet: Vec<u8> = (0..len).map(|i| i as u8).collect();
            encode_recv_frame(&mut buf, &node_id(A), &packet);
            let (src, body) = parse_recv_frame(&buf).unwrap();
            assert_eq!((src, body), (node_id(A), &packet[..]));
            // Truncated, trailing bytes, not a RECV: refused.
            assert_eq!(parse_recv_frame(&buf[..buf.len() - 1]), None);
            let mut longer = buf.clone();
            longer.push(0);
            assert_eq!(parse_recv_frame(&longer), None);
        }
        let mut notice = [0u8; MAX_NOTICE_FRAME];
        let len = encode_notice(MessageType::PeerGone, Some(&node_id(B)), &mut notice);
        assert_eq!(parse_recv_frame(&notice[..len]), None);
        assert_eq!(parse_recv_frame(&[]), None);
    }

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
        let mut forward = vec![0x08];
        forward.extend_from_slice(&A);
        forward.extend_from_slice(&B);
        assert_eq!(
            Message::parse(&forward),
            Ok(Message::Forward {
                dest: node_id(A),
                src: node_id(B),
                packet: b""
            })
        );
        forward.extend_from_slice(b"pkt");
        assert_eq!(
            Message::parse(&forward),
            Ok(Message::Forward {
                dest: node_id(A),
                src: node_id(B),
                packet: b"pkt"
            })
        );
        let gone = encode_gone(&node_id(A), &node_id(B));
        assert_eq!(gone[0], 0x09);
        assert_eq!(
            Message::parse(&gone),
            Ok(Message::Gone {
                dest: node_id(A),
                src: node_id(B),
            })
        );
    }

    #[test]
    fn refuses_bad_messages() {
        assert_eq!(Message::parse(&[]), Err(RelayError::Empty));
        assert_eq!(Message::parse(&[0x0a]), Err(RelayError::UnknownType(10)));
        for len in [1, 17, 32, 34] {
            assert_eq!(
                Message::parse(&vec![0x09; len]),
                Err(RelayError::BadLength(MessageType::Gone)),
                "GONE of {len} bytes"
            );
        }
        assert_eq!(
            Message::parse(&[0x08; 32]),
            Err(RelayError::BadLength(MessageType::Forward))
        );
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

    #[test]
    fn recv_frame_becomes_forward_and_back() {
        for len in [0usize, 1, 90, 91, 200, 65_000] {
            let packet: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // On host B: a RECV frame from a local sender, as the hub builds it.
            let mut buf = vec![0u8; HEADROOM + len];
            buf[HEADROOM..].copy_from_slice(&packet);
            let recv = encode_recv(&mut buf, HEADROOM..HEADROOM + len, &node_id(B)).unwrap();
            let header = FrameHeader::parse(&buf[recv.clone()]).unwrap().unwrap();
            let recv_payload = &buf[recv.start + header.header_len..recv.end];
            let mut head = [0u8; MAX_FORWARD_HEAD];
            let head_len = encode_forward_head(&node_id(A), recv_payload.len(), &mut head);
            let mut wire = head[..head_len].to_vec();
            wire.extend_from_slice(&recv_payload[1..]);
            let forward = FrameHeader::parse(&wire).unwrap().unwrap();
            assert_eq!(forward.frame_len(), Some(wire.len()));
            assert_eq!(
                (forward.opcode, forward.mask, forward.fin),
                (OpCode::Binary, None, true)
            );
            let message = forward.header_len..wire.len();
            assert_eq!(
                Message::parse(&wire[message.clone()]),
                Ok(Message::Forward {
                    dest: node_id(A),
                    src: node_id(B),
                    packet: &packet
                })
            );
            // A: back to the RECV frame, byte for byte, in place.
            let (dest, frame) = forward_to_recv_in_place(&mut wire, message).unwrap();
            assert_eq!(dest, node_id(A));
            assert_eq!(&wire[frame], &buf[recv]);
        }
        assert!(forward_to_recv_in_place(&mut [0x08; 40], 8..40).is_err());
    }
}
