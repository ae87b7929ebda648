//! The relay's framing over QUIC: length-prefixed relay messages on the control stream,
//! bare relay messages in DATAGRAM frames, and the application error codes. The message
//! types and their bodies are the WebSocket relay's ([`crate::ws::relay`]); the byte table is
//! in the [module doc](super).

use boson_shared::NodeId;
use bytes::BufMut;

use crate::ws::frame::CloseCode;
use crate::ws::handshake::MAX_TOKEN_LEN;
use crate::ws::relay::{MessageType, PREFIX_LEN, node_bytes};

/// The 16-bit big-endian length in front of every control-stream message.
pub const CONTROL_HEADER_LEN: usize = 2;

/// Longest control-stream message: AUTH with the largest token, `[0x05][token: 4096]`.
pub const MAX_CONTROL_MESSAGE: usize = 1 + MAX_TOKEN_LEN;

/// Longest control-stream frame, length included: 4 099 bytes.
pub const MAX_CONTROL_FRAME: usize = CONTROL_HEADER_LEN + MAX_CONTROL_MESSAGE;

/// Length of a framed notice (READY, PEER_GONE, PEER_PRESENT; RECONNECT_HINT is shorter):
/// `[00 11][type][NodeId: 16]`, 19 bytes.
pub const MAX_NOTICE_FRAME: usize = CONTROL_HEADER_LEN + PREFIX_LEN;

/// Application error code of a connection closed for breaking the relay protocol: 1002, the
/// WebSocket relay's code for the same case.
pub const PROTOCOL_ERROR: CloseCode = CloseCode::PROTOCOL_ERROR;

/// Application error code of a rejected token or an authentication timeout: 1008, as on the
/// WebSocket relay (the reason phrase tells `unauthorized` from `auth_timeout`).
pub const POLICY_VIOLATION: CloseCode = CloseCode::POLICY_VIOLATION;

/// Application error code of a connection replaced by a newer one of the same node: 4000.
pub const REPLACED: CloseCode = CloseCode::REPLACED;

/// Why a control-stream frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A zero length: no relay message is empty.
    #[error("empty control message")]
    Empty,
    /// A length above [`MAX_CONTROL_MESSAGE`].
    #[error("control message of {0} bytes exceeds the cap")]
    TooLong(usize),
}

/// The first control-stream frame in `buf`: `Ok(Some((message, frame_len)))`, or `Ok(None)`
/// when `buf` does not hold all of it yet. Never copies.
pub fn parse_control(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ControlError> {
    let Some((&len, rest)) = buf.split_first_chunk::<CONTROL_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Err(ControlError::Empty);
    }
    if len > MAX_CONTROL_MESSAGE {
        return Err(ControlError::TooLong(len));
    }
    Ok(rest
        .get(..len)
        .map(|message| (message, CONTROL_HEADER_LEN + len)))
}

/// Appends `message` to `out` as one control-stream frame. For clients and tests: the relay
/// writes only notices ([`encode_notice`]).
pub fn encode_control(message: &[u8], out: &mut Vec<u8>) -> Result<(), ControlError> {
    if message.is_empty() {
        return Err(ControlError::Empty);
    }
    let len = u16::try_from(message.len())
        .ok()
        .filter(|&len| usize::from(len) <= MAX_CONTROL_MESSAGE)
        .ok_or(ControlError::TooLong(message.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Encodes a framed READY, PEER_GONE or PEER_PRESENT about `node`, or a RECONNECT_HINT
/// (`None`), into `out`; returns its length.
pub fn encode_notice(
    kind: MessageType,
    node: Option<&NodeId>,
    out: &mut [u8; MAX_NOTICE_FRAME],
) -> usize {
    out[CONTROL_HEADER_LEN] = kind as u8;
    let len = match node {
        Some(node) => {
            out[CONTROL_HEADER_LEN + 1..].copy_from_slice(node_bytes(node));
            PREFIX_LEN
        }
        None => 1,
    };
    // At most 17: fits the 16-bit length.
    out[..CONTROL_HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
    CONTROL_HEADER_LEN + len
}

/// Appends a DATAGRAM payload, `[kind][node][packet]` (SEND from a client, RECV from the
/// relay), to `out`.
pub fn encode_datagram(kind: MessageType, node: &NodeId, packet: &[u8], out: &mut impl BufMut) {
    out.put_u8(kind as u8);
    out.put_slice(node_bytes(node));
    out.put_slice(packet);
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;
    use crate::ws::relay::{Message, node_id};

    #[test]
    fn control_frames() {
        let mut out = Vec::new();
        encode_control(b"\x05tok", &mut out).unwrap();
        assert_eq!(out, hex!("0004 05 746f6b"));
        assert_eq!(parse_control(&out), Ok(Some((&b"\x05tok"[..], 6))));
        assert_eq!(parse_control(&out[..5]), Ok(None));
        assert_eq!(parse_control(&out[..1]), Ok(None));
        assert_eq!(parse_control(&hex!("0000")), Err(ControlError::Empty));
        assert_eq!(
            parse_control(&hex!("1002")),
            Err(ControlError::TooLong(0x1002))
        );
        assert_eq!(
            encode_control(&[5; MAX_CONTROL_MESSAGE + 1], &mut out),
            Err(ControlError::TooLong(MAX_CONTROL_MESSAGE + 1))
        );
        assert_eq!(encode_control(&[], &mut out), Err(ControlError::Empty));
    }

    #[test]
    fn notices_and_datagrams() {
        let node = node_id(hex!("00112233445566778899aabbccddeeff"));
        let mut out = [0u8; MAX_NOTICE_FRAME];
        let len = encode_notice(MessageType::Ready, Some(&node), &mut out);
        assert_eq!(out[..len], hex!("0011 07 00112233445566778899aabbccddeeff"));
        let len = encode_notice(MessageType::ReconnectHint, None, &mut out);
        assert_eq!(out[..len], hex!("0001 06"));

        let mut datagram = Vec::new();
        encode_datagram(MessageType::Recv, &node, b"wg", &mut datagram);
        assert_eq!(datagram, hex!("02 00112233445566778899aabbccddeeff 7767"));
        assert_eq!(
            Message::parse(&datagram),
            Ok(Message::Recv {
                src: node,
                packet: b"wg"
            })
        );
    }
}
