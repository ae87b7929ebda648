//! The node's side of a QUIC relay session, sans-IO: the AUTH message for the control
//! stream, the control stream's notices (READY, PEER_GONE, PEER_PRESENT, RECONNECT_HINT)
//! and the DATAGRAM payloads (SEND out, RECV in), on `boson-dataplane-proto`'s QUIC framing
//! (`quic::wire`) and relay messages. The connection itself (quinn) is the shell's.

use boson_dataplane_proto::quic::wire::{self, ControlError};
use boson_dataplane_proto::ws::relay::{Message, MessageType, PREFIX_LEN};
use boson_shared::NodeId;

use crate::ws::Event;

/// Why the control stream is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A frame the framing refuses.
    #[error("bad control frame: {0}")]
    Frame(ControlError),
    /// A relay message a server does not send on the control stream.
    #[error("unexpected {0:?} on the control stream")]
    Unexpected(MessageType),
}

/// The control stream's reader: bytes in, events out.
#[derive(Debug, Default)]
pub struct ControlStream {
    buf: Vec<u8>,
    ready: Option<NodeId>,
    /// Messages of unknown types or malformed, ignored.
    pub ignored: u64,
}

impl ControlStream {
    /// The AUTH frame to write first: `[len][0x05][token]`.
    pub fn auth(token: &str) -> Result<Vec<u8>, ControlError> {
        let mut message = Vec::with_capacity(1 + token.len());
        message.push(MessageType::Auth as u8);
        message.extend_from_slice(token.as_bytes());
        let mut out = Vec::with_capacity(2 + message.len());
        wire::encode_control(&message, &mut out)?;
        Ok(out)
    }

    /// Bytes read from the stream; appends the events they complete to `events`.
    pub fn handle(&mut self, bytes: &[u8], events: &mut Vec<Event>) -> Result<(), StreamError> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((message, len)) =
            wire::parse_control(&self.buf[at..]).map_err(StreamError::Frame)?
        {
            match Message::parse(message) {
                Ok(Message::Ready(node)) if self.ready.is_none() => {
                    self.ready = Some(node);
                    events.push(Event::Ready(node));
                }
                Ok(Message::PeerGone(node)) if self.ready.is_some() => {
                    events.push(Event::PeerGone(node));
                }
                Ok(Message::PeerPresent(node)) if self.ready.is_some() => {
                    events.push(Event::PeerPresent(node));
                }
                Ok(Message::ReconnectHint) => events.push(Event::ReconnectHint),
                Ok(other) => return Err(StreamError::Unexpected(other.kind())),
                Err(_) => self.ignored += 1,
            }
            at += len;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Whether READY arrived.
    pub const fn is_ready(&self) -> bool {
        self.ready.is_some()
    }
}

/// A SEND datagram's payload: `[0x01][dest][packet]`.
pub fn send_datagram(dest: &NodeId, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + packet.len());
    wire::encode_datagram(MessageType::Send, dest, packet, &mut out);
    out
}

/// The source and packet of a RECV datagram; `None` for anything else (ignored).
pub fn parse_recv(datagram: &[u8]) -> Option<(NodeId, &[u8])> {
    match Message::parse(datagram) {
        Ok(Message::Recv { src, packet }) => Some((src, packet)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: NodeId = NodeId::from_bytes([9; 16]);

    #[test]
    fn control_stream_round_trip() {
        let auth = ControlStream::auth("tok").unwrap();
        assert_eq!(auth, [0, 4, 0x05, b't', b'o', b'k']);
        let mut stream = ControlStream::default();
        let mut events = Vec::new();
        let mut bytes = Vec::new();
        for (kind, node) in [
            (MessageType::Ready, Some(&PEER)),
            (MessageType::PeerGone, Some(&PEER)),
            (MessageType::ReconnectHint, None),
        ] {
            let mut out = [0u8; wire::MAX_NOTICE_FRAME];
            let len = wire::encode_notice(kind, node, &mut out);
            bytes.extend_from_slice(&out[..len]);
        }
        // Split anywhere: the events come out whole.
        stream.handle(&bytes[..5], &mut events).unwrap();
        assert!(events.is_empty());
        stream.handle(&bytes[5..], &mut events).unwrap();
        assert_eq!(
            events,
            [
                Event::Ready(PEER),
                Event::PeerGone(PEER),
                Event::ReconnectHint
            ]
        );
        // An unknown type is skipped; AUTH from the server is a violation.
        stream.handle(&[0, 1, 0x7f], &mut events).unwrap();
        assert_eq!(stream.ignored, 1);
        assert_eq!(
            stream.handle(&auth, &mut events),
            Err(StreamError::Unexpected(MessageType::Auth))
        );
        assert_eq!(
            ControlStream::default().handle(&[0, 0], &mut events),
            Err(StreamError::Frame(ControlError::Empty))
        );
    }

    #[test]
    fn datagrams() {
        let send = send_datagram(&PEER, b"wg");
        assert_eq!(send[0], MessageType::Send as u8);
        let mut recv = send.clone();
        recv[0] = MessageType::Recv as u8;
        assert_eq!(parse_recv(&recv), Some((PEER, &b"wg"[..])));
        assert_eq!(parse_recv(&send), None);
        assert_eq!(parse_recv(&[]), None);
    }
}
