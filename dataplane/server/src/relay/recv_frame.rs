//! WebSocket RECV frames as the relay builds and reads them.

use super::*;

/// The source and packet of a RECV frame the hub built (`[header][0x02][src][packet]`).
pub(super) fn recv_parts(frame: &[u8]) -> Option<(NodeId, &[u8])> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    if let relay::Message::Recv { src, packet } =
        relay::Message::parse(frame.get(header..)?).ok()?
    {
        Some((src, packet))
    } else {
        None
    }
}

/// Writes a RECV frame of `packet` from `src` into `buf` (cleared first; its capacity is
/// reserved once for the largest frame, so this does not allocate).
pub(super) fn build_recv(buf: &mut Vec<u8>, src: &NodeId, packet: &[u8]) {
    let payload = relay::PREFIX_LEN + packet.len();
    buf.clear();
    buf.resize(frame::header_len(payload, false), 0);
    let _ = frame::encode_header(true, frame::OpCode::Binary, payload, None, buf);
    buf.push(MessageType::Recv as u8);
    buf.extend_from_slice(src.as_bytes());
    buf.extend_from_slice(packet);
}
