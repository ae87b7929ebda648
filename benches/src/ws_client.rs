//! The WebSocket generator's client side: a minimal RFC 6455 client codec of its own, the
//! opening handshake, authentication and the wait for READY.
//!
//! # Why not tungstenite here
//!
//! The generator must not be the bottleneck. A tungstenite client allocates a message per
//! frame, copies and masks every payload byte, and writes through its own buffer. Every
//! packet a sender writes differs from its template only in the 24-byte [`Stamp`], so
//! [`SendTemplate`] masks a whole SEND frame once, at set-up, and per packet writes only the
//! stamp, already masked: 24 XORs instead of `packet` of them, no allocation, and a batch of
//! frames goes out in one `write`. The codec is this crate's own, not the relay's
//! (`boson_dataplane_proto::ws::frame`), so a bug in the server's codec cannot hide behind the
//! same bug here; the tests check it against RFC 6455's examples and against tungstenite.
//!
//! # Frames
//!
//! ```text
//! client (masked):   [FIN|opcode][1|len7] [len16 | len64]? [mask: 4] [payload ^ mask]
//! server (unmasked): [FIN|opcode][0|len7] [len16 | len64]?           [payload]
//! len7 = 126: a 16-bit length follows; 127: a 64-bit length follows (RFC 6455 §5.2)
//! ```
//!
//! The relay never fragments and neither does this client: a server frame without FIN is an
//! error ([`FrameError::Fragmented`]).
//!
//! # Connecting
//!
//! [`connect`]: TCP (`TCP_NODELAY`), `GET <path>` with `Authorization: Bearer <token>` (or
//! the token in an AUTH message after the 101, [`Auth::Message`]), a check of
//! `Sec-WebSocket-Accept`, then frames until READY names the node. A refused upgrade, or a
//! Close before READY (a refused token closes with 1008 on bosonserver), is an error that
//! says so.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boson_dataplane_proto::ws::relay::{self, MessageType, NODE_ID_LEN, PREFIX_LEN};
use boson_shared::NodeId;
use sha1::{Digest as _, Sha1};

use crate::payload::{STAMP_LEN, Stamp};

/// Opcode of a continuation frame (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame: every relay message.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest server frame payload accepted: the relay's 64 KiB message cap with room. A larger
/// length is a broken stream, not a message.
pub const MAX_SERVER_PAYLOAD: usize = 1 << 20;

/// Largest response header block read during the handshake.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The GUID of the accept key (RFC 6455 §1.3).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a server frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A server must not mask (RFC 6455 §5.1).
    #[error("the server sent a masked frame")]
    Masked,
    /// RSV bits set without an extension that defines them.
    #[error("reserved bits set")]
    Reserved,
    /// A frame without FIN, or a continuation: the relay never fragments.
    #[error("a fragmented frame")]
    Fragmented,
    /// A control frame above 125 bytes.
    #[error("a control frame longer than 125 bytes")]
    ControlTooLong,
    /// A payload above [`MAX_SERVER_PAYLOAD`].
    #[error("a frame of {0} bytes")]
    TooLong(u64),
}

/// One server frame, borrowing the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    /// The opcode.
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: &'a [u8],
}

/// Parses the server frame at the start of `buf`: `Ok(None)` until all of it is there, else
/// the frame and its length on the wire.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame<'_>, usize)>, FrameError> {
    let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let opcode = b0 & 0x0F;
    if b0 & 0x80 == 0 || opcode == OP_CONTINUATION {
        return Err(FrameError::Fragmented);
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode >= OP_CLOSE && len > 125 {
        return Err(FrameError::ControlTooLong);
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_SERVER_PAYLOAD)
        .ok_or(FrameError::TooLong(len))?;
    let Some(payload) = buf.get(header..header + len) else {
        return Ok(None);
    };
    Ok(Some((ServerFrame { opcode, payload }, header + len)))
}

/// Bytes of a masked client frame header for a payload of `len` bytes.
pub const fn client_header_len(len: usize) -> usize {
    let extended = if len < 126 {
        0
    } else if len <= 0xFFFF {
        2
    } else {
        8
    };
    2 + extended + 4
}

/// Appends a final, masked client frame of `opcode` carrying `payload` to `out`.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// XORs `buf` with `mask`, where `buf[0]` is byte `offset` of the payload (masking is
/// position dependent, RFC 6455 §5.3). Unmasking is the same operation.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// A SEND frame to one destination, masked once; stamping a copy makes the next packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTemplate {
    frame: Vec<u8>,
    /// Where the payload (the relay message) starts in the frame.
    payload_at: usize,
    mask: [u8; 4],
}

impl SendTemplate {
    /// A SEND to `dest` of a `packet`-byte packet (at least [`STAMP_LEN`], which the stamp
    /// fills; zeros after it), masked with `mask`.
    pub fn new(dest: &NodeId, packet: usize, mask: [u8; 4]) -> Self {
        let packet = packet.max(STAMP_LEN);
        let mut message = vec![0u8; PREFIX_LEN + packet];
        message[0] = MessageType::Send as u8;
        message[1..PREFIX_LEN].copy_from_slice(relay::node_bytes(dest));
        let mut frame = Vec::with_capacity(client_header_len(message.len()) + message.len());
        encode_client_frame(OP_BINARY, &message, mask, &mut frame);
        let payload_at = frame.len() - message.len();
        Self {
            frame,
            payload_at,
            mask,
        }
    }

    /// The frame: header, then the masked message with a zero stamp.
    pub fn bytes(&self) -> &[u8] {
        &self.frame
    }

    /// Bytes of the frame on the wire.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Never: a frame has a header.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Writes `stamp`, masked, into `frame`, a copy of [`bytes`](Self::bytes); the rest of
    /// the copy is left as it is.
    pub fn stamp(&self, frame: &mut [u8], stamp: &Stamp) {
        let mut plain = [0u8; STAMP_LEN];
        stamp.encode(&mut plain);
        // The template holds zeros under the stamp, which masked are the mask bytes:
        // overwriting with `stamp ^ mask` is the same as masking a stamped message.
        apply_mask(&mut plain, self.mask, PREFIX_LEN);
        let at = self.payload_at + PREFIX_LEN;
        if let Some(slot) = frame.get_mut(at..at + STAMP_LEN) {
            slot.copy_from_slice(&plain);
        }
    }
}

/// How a client presents its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Auth {
    /// `Authorization: Bearer <token>` on the upgrade request.
    #[default]
    Header,
    /// An AUTH relay message (0x05) right after the 101.
    Message,
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect, read or write failed (a timeout included).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The server answered the upgrade with something other than 101.
    #[error("the upgrade was refused: {0}")]
    Refused(String),
    /// A 101 that is not a valid WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    BadUpgrade(String),
    /// The server closed before READY.
    #[error("closed before READY: code {code:?} {reason:?}")]
    Closed {
        /// The close code, if the Close frame had one.
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
    /// The connection ended before READY.
    #[error("the connection ended before READY")]
    Eof,
    /// A frame the client cannot accept.
    #[error("a bad frame before READY: {0}")]
    Frame(#[from] FrameError),
    /// READY named another node.
    #[error("READY for {got}, not {want}")]
    WrongNode {
        /// The node whose token was sent.
        want: NodeId,
        /// The node READY named.
        got: NodeId,
    },
}

/// An authenticated relay connection: READY arrived.
#[derive(Debug)]
pub struct Connection {
    /// The socket, blocking, with the handshake's timeouts still set.
    pub stream: TcpStream,
    /// Bytes read after READY (frames the relay sent right behind it).
    pub leftover: Vec<u8>,
    /// The mask of this connection's frames.
    pub mask: [u8; 4],
}

/// Connects to the relay at `relay`, upgrades on `path`, authenticates as `node` with `token`
/// and waits for READY; every step is bounded by `timeout`.
pub fn connect(
    relay: SocketAddr,
    path: &str,
    node: &NodeId,
    token: &str,
    auth: Auth,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let io = |what| move |source| ConnectError::Io { what, source };
    let mut stream = TcpStream::connect_timeout(&relay, timeout).map_err(io("TCP connect"))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("read timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("write timeout"))?;
    let key: [u8; 16] = rand::random();
    let key = STANDARD.encode(key);
    let bearer = match auth {
        Auth::Header => format!("Authorization: Bearer {token}\r\n"),
        Auth::Message => String::new(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {relay}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{bearer}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io("sending the upgrade"))?;
    let (head_len, mut buf) = read_response_head(&mut stream)?;
    check_upgrade(&buf[..head_len], &key)?;
    buf.drain(..head_len);
    let mask: [u8; 4] = rand::random();
    if auth == Auth::Message {
        let mut message = vec![MessageType::Auth as u8];
        message.extend_from_slice(token.as_bytes());
        let mut frame = Vec::new();
        encode_client_frame(OP_BINARY, &message, mask, &mut frame);
        stream.write_all(&frame).map_err(io("sending AUTH"))?;
    }
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Some((frame, len)) = parse_server_frame(&buf)? {
            match frame.opcode {
                OP_CLOSE => return Err(closed(frame.payload)),
                OP_PING => {
                    let mut pong = Vec::new();
                    encode_client_frame(OP_PONG, frame.payload, mask, &mut pong);
                    stream.write_all(&pong).map_err(io("answering a ping"))?;
                }
                OP_BINARY => {
                    if let Ok(relay::Message::Ready(got)) = relay::Message::parse(frame.payload) {
                        if got != *node {
                            return Err(ConnectError::WrongNode { want: *node, got });
                        }
                        buf.drain(..len);
                        return Ok(Connection {
                            stream,
                            leftover: buf,
                            mask,
                        });
                    }
                }
                _ => {}
            }
            buf.drain(..len);
        }
        let n = stream.read(&mut chunk).map_err(io("waiting for READY"))?;
        if n == 0 {
            return Err(ConnectError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The Close frame's code and reason.
fn closed(payload: &[u8]) -> ConnectError {
    let code = payload
        .first_chunk::<2>()
        .map(|code| u16::from_be_bytes(*code));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
    ConnectError::Closed { code, reason }
}

/// Reads until the blank line that ends the response head; returns its length and
/// everything read so far.
fn read_response_head(stream: &mut TcpStream) -> Result<(usize, Vec<u8>), ConnectError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((end + 4, buf));
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ConnectError::BadUpgrade(
                "response head above 8 KiB".to_owned(),
            ));
        }
        let n = stream.read(&mut chunk).map_err(|source| ConnectError::Io {
            what: "reading the upgrade response",
            source,
        })?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ConnectError::Eof
            } else {
                ConnectError::Refused(first_line(&buf))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Checks a response head: 101, `Upgrade: websocket` and the accept key for `key`.
pub fn check_upgrade(head: &[u8], key: &str) -> Result<(), ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(ConnectError::BadUpgrade(first_line(head)));
        }
    }
    if response.code != Some(101) {
        return Err(ConnectError::Refused(first_line(head)));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return Err(ConnectError::BadUpgrade("no Upgrade: websocket".to_owned()));
    }
    if header("sec-websocket-accept") != Some(accept_key(key).as_bytes()) {
        return Err(ConnectError::BadUpgrade(
            "wrong Sec-WebSocket-Accept".to_owned(),
        ));
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key ‖ GUID)).
pub fn accept_key(key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(WEBSOCKET_GUID);
    STANDARD.encode(hasher.finalize())
}

fn first_line(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// The source node and packet of a RECV message, if `message` is one.
pub fn parse_recv(message: &[u8]) -> Option<(&[u8; NODE_ID_LEN], &[u8])> {
    let (&kind, rest) = message.split_first()?;
    if kind != MessageType::Recv as u8 {
        return None;
    }
    rest.split_first_chunk::<NODE_ID_LEN>()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

    use super::*;

    /// RFC 6455 §5.7: a single-frame masked text message "Hello".
    const MASKED_HELLO: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc6455_examples() {
        let mut out = Vec::new();
        encode_client_frame(OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
        assert_eq!(out, MASKED_HELLO);

        // A single-frame unmasked text message.
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (frame, len) = parse_server_frame(&unmasked).unwrap().unwrap();
        assert_eq!(
            (frame.opcode, frame.payload, len),
            (OP_TEXT, &b"Hello"[..], 7)
        );
        // An unmasked Ping with "Hello".
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (frame, _) = parse_server_frame(&ping).unwrap().unwrap();
        assert_eq!((frame.opcode, frame.payload), (OP_PING, &b"Hello"[..]));
        // 256 bytes of binary data in a single unmasked message: 16-bit length.
        let mut big = vec![0x82, 0x7E, 0x01, 0x00];
        big.extend_from_slice(&[7; 256]);
        let (frame, len) = parse_server_frame(&big).unwrap().unwrap();
        assert_eq!(
            (frame.opcode, frame.payload.len(), len),
            (OP_BINARY, 256, 260)
        );
        // 64 KiB in a single unmasked message: 64-bit length.
        let mut huge = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        huge.resize(10 + 65_536, 1);
        let (frame, len) = parse_server_frame(&huge).unwrap().unwrap();
        assert_eq!((frame.payload.len(), len), (65_536, 65_546));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut big = vec![0x82, 0x7E, 0x01, 0x00];
        big.extend_from_slice(&[7; 256]);
        for cut in 0..big.len() {
            assert_eq!(parse_server_frame(&big[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_server_frame(&[]), Ok(None));
    }

    #[test]
    fn bad_server_frames_are_refused() {
        assert_eq!(
            parse_server_frame(&MASKED_HELLO),
            Err(FrameError::Masked),
            "a server must not mask"
        );
        assert_eq!(parse_server_frame(&[0xC2, 0x00]), Err(FrameError::Reserved));
        assert_eq!(
            parse_server_frame(&[0x02, 0x00]),
            Err(FrameError::Fragmented)
        );
        assert_eq!(
            parse_server_frame(&[0x80, 0x00]),
            Err(FrameError::Fragmented)
        );
        assert_eq!(
            parse_server_frame(&[0x89, 0x7E, 0x00, 0x7E]),
            Err(FrameError::ControlTooLong)
        );
        assert_eq!(
            parse_server_frame(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::TooLong(1 << 63))
        );
    }

    #[test]
    fn masking_is_positional_and_its_own_inverse() {
        let mask = [1, 2, 3, 4];
        let mut buf = [0u8; 10];
        apply_mask(&mut buf, mask, 0);
        assert_eq!(buf, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]);
        let mut tail = [0u8; 3];
        apply_mask(&mut tail, mask, 17);
        assert_eq!(tail, [2, 3, 4], "byte 17 of a payload uses mask[1]");
        apply_mask(&mut buf, mask, 0);
        assert_eq!(buf, [0; 10]);
    }

    /// Reads client frames with tungstenite in the server role, as a server would: an
    /// independent check of the header, the mask and the payload. Two frames back to back
    /// also check that each is exactly as long as it says.
    fn tungstenite_decode(wire: &[u8]) -> Message {
        let mut twice = wire.to_vec();
        twice.extend_from_slice(wire);
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let mut ws = WebSocket::from_raw_socket(Cursor::new(twice), Role::Server, Some(config));
        let first = ws.read().unwrap();
        assert_eq!(ws.read().unwrap(), first);
        first
    }

    #[test]
    fn tungstenite_reads_our_frames() {
        for len in [0, 1, 125, 126, 127, 1000, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            encode_client_frame(OP_BINARY, &payload, [0xde, 0xad, 0xbe, 0xef], &mut wire);
            assert_eq!(wire.len(), client_header_len(len) + len, "{len}");
            assert_eq!(
                tungstenite_decode(&wire),
                Message::Binary(payload.into()),
                "{len}"
            );
        }
    }

    #[test]
    fn stamped_templates_are_valid_send_frames() {
        let dest = NodeId::from_bytes([0xAB; 16]);
        for size in [STAMP_LEN, 100, 1200] {
            let template = SendTemplate::new(&dest, size, [9, 0x80, 7, 0xFF]);
            let mut frame = template.bytes().to_vec();
            let stamp = Stamp {
                flow: 3,
                seq: 41,
                sent_ns: 123_456_789,
            };
            template.stamp(&mut frame, &stamp);
            let Message::Binary(message) = tungstenite_decode(&frame) else {
                panic!("not binary");
            };
            assert_eq!(message.len(), PREFIX_LEN + size);
            let parsed = relay::Message::parse(&message).unwrap();
            let relay::Message::Send { dest: got, packet } = parsed else {
                panic!("{parsed:?}");
            };
            assert_eq!(got, dest);
            assert_eq!(Stamp::decode(packet), Some(stamp));
            assert!(packet[STAMP_LEN..].iter().all(|&b| b == 0));
            // Restamping a used frame overwrites the previous stamp entirely.
            let next = Stamp { seq: 42, ..stamp };
            template.stamp(&mut frame, &next);
            let Message::Binary(message) = tungstenite_decode(&frame) else {
                panic!("not binary");
            };
            assert_eq!(Stamp::decode(&message[PREFIX_LEN..]), Some(next));
        }
    }

    /// What framing costs per message, ours against a tungstenite client, in this process
    /// (the write system call, the same for both, left out). Run in release:
    /// `cargo test --release -p boson-bench --lib codec_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn codec_cost_against_tungstenite() {
        use bytes::{BufMut as _, BytesMut};

        /// A socket that takes everything.
        struct Discard;
        impl io::Read for Discard {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        impl io::Write for Discard {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        const MESSAGES: u64 = 2_000_000;
        let dest = NodeId::from_bytes([7; 16]);
        for size in [100, 1200] {
            let template = SendTemplate::new(&dest, size, rand::random());
            let mut batch = template.bytes().repeat(64);
            let start = crate::clock::now();
            for seq in 0..MESSAGES {
                let at = (seq % 64) as usize * template.len();
                let stamp = Stamp {
                    flow: 1,
                    seq,
                    sent_ns: seq,
                };
                template.stamp(&mut batch[at..at + template.len()], &stamp);
            }
            let ours = (crate::clock::now() - start).as_nanos() as f64 / MESSAGES as f64;
            std::hint::black_box(&batch);

            let mut ws = WebSocket::from_raw_socket(Discard, Role::Client, None);
            let start = crate::clock::now();
            for seq in 0..MESSAGES {
                let mut message = BytesMut::with_capacity(PREFIX_LEN + size);
                message.put_u8(MessageType::Send as u8);
                message.put_slice(dest.as_bytes());
                let mut stamp = [0u8; STAMP_LEN];
                Stamp {
                    flow: 1,
                    seq,
                    sent_ns: seq,
                }
                .encode(&mut stamp);
                message.put_slice(&stamp);
                message.put_bytes(0, size - STAMP_LEN);
                ws.write(Message::Binary(message.freeze())).unwrap();
            }
            ws.flush().unwrap();
            let theirs = (crate::clock::now() - start).as_nanos() as f64 / MESSAGES as f64;
            eprintln!(
                "{size} B: ours {ours:.1} ns/message, tungstenite client {theirs:.1} ns/message"
            );
        }
    }

    #[test]
    fn recv_messages() {
        let mut message = vec![0x02];
        message.extend_from_slice(&[5; 16]);
        message.extend_from_slice(b"packet");
        let (src, packet) = parse_recv(&message).unwrap();
        assert_eq!((src, packet), (&[5; 16], &b"packet"[..]));
        message[0] = 0x03;
        assert_eq!(parse_recv(&message), None);
        assert_eq!(parse_recv(&[0x02; 16]), None, "too short");
        assert_eq!(parse_recv(&[]), None);
    }

    #[test]
    fn upgrade_responses() {
        // RFC 6455 §1.3's example key.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_upgrade(ok, key).unwrap();
        let wrong = String::from_utf8_lossy(ok).replace("xOo=", "xOp=");
        assert!(matches!(
            check_upgrade(wrong.as_bytes(), key),
            Err(ConnectError::BadUpgrade(_))
        ));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        match check_upgrade(refused, key) {
            Err(ConnectError::Refused(line)) => assert_eq!(line, "HTTP/1.1 401 Unauthorized"),
            other => panic!("{other:?}"),
        }
    }
}
