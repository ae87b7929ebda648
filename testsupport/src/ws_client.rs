//! A blocking relay client for the tests: RFC 6455 client framing over any `Read + Write`
//! (plain TCP or rustls), using the codec of `boson_dataplane_proto::ws`. The dataplane's
//! relay tests and bosonserver's black-box tests share it.

#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use boson_dataplane_proto::ws::frame::{self, OpCode};
use boson_dataplane_proto::ws::relay::{self, Message};
use boson_shared::NodeId;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

/// A relay message (type byte, whole payload), or the close code that ended the session.
pub type Received = Result<(u8, Vec<u8>), Option<u16>>;

pub struct Client<S> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    mask: u32,
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: vec![0; 1 << 18],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1 << 17),
            mask: 0x1234_5678,
        }
    }

    /// Sends the upgrade request (with `Authorization: Bearer` when `token` is given) and
    /// returns the status code of the response.
    pub fn upgrade(&mut self, token: Option<&str>) -> io::Result<u16> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "GET /relay HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
        );
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        loop {
            if let Some(pos) = self.buf[self.start..self.end]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                let head =
                    String::from_utf8_lossy(&self.buf[self.start..self.start + pos]).to_string();
                self.start += pos + 4;
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if status == 101 {
                    assert!(
                        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                        "accept key: {head}"
                    );
                }
                return Ok(status);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask = self.mask.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.mask.to_be_bytes()
    }

    /// Queues a masked frame; [`flush`](Self::flush) writes the batch.
    pub fn queue_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.next_mask();
        let at = self.out.len();
        self.out.resize(at + payload.len() + 14, 0);
        let n = frame::encode_masked(true, opcode, mask, payload, &mut self.out[at..]).unwrap();
        self.out.truncate(at + n);
    }

    pub fn queue_send(&mut self, dest: &NodeId, packet: &[u8]) {
        let mut payload = Vec::with_capacity(17 + packet.len());
        payload.push(0x01);
        payload.extend_from_slice(dest.as_bytes());
        payload.extend_from_slice(packet);
        self.queue_frame(OpCode::Binary, &payload);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        self.out.clear();
        Ok(())
    }

    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        self.queue_frame(opcode, payload);
        self.flush()
    }

    pub fn send(&mut self, dest: &NodeId, packet: &[u8]) -> io::Result<()> {
        self.queue_send(dest, packet);
        self.flush()
    }

    pub fn auth(&mut self, token: &str) -> io::Result<()> {
        let mut payload = vec![0x05];
        payload.extend_from_slice(token.as_bytes());
        self.send_frame(OpCode::Binary, &payload)
    }

    /// The next server frame (server frames are never masked).
    pub fn recv(&mut self) -> io::Result<Incoming> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() >= 2 {
                let opcode = avail[0] & 0x0f;
                assert_eq!(avail[1] & 0x80, 0, "server frames are unmasked");
                let (len, header) = match avail[1] & 0x7f {
                    126 if avail.len() >= 4 => {
                        (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
                    }
                    127 if avail.len() >= 10 => (
                        u64::from_be_bytes(avail[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && avail.len() >= header + len {
                    let payload = avail[header..header + len].to_vec();
                    self.start += header + len;
                    return Ok(match opcode {
                        0x2 => Incoming::Binary(payload),
                        0x9 => Incoming::Ping(payload),
                        0x8 => Incoming::Close(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        ),
                        other => panic!("unexpected opcode {other:#x}"),
                    });
                }
            }
            self.fill()?;
        }
    }

    /// The next relay message, answering pings on the way.
    pub fn recv_message(&mut self) -> io::Result<Received> {
        loop {
            match self.recv()? {
                Incoming::Binary(payload) => {
                    return Ok(Ok((payload[0], payload)));
                }
                Incoming::Ping(payload) => self.send_frame(OpCode::Pong, &payload)?,
                Incoming::Close(code) => return Ok(Err(code)),
            }
        }
    }

    /// Waits for READY and returns the node id it names.
    pub fn ready(&mut self) -> NodeId {
        let (kind, payload) = self.recv_message().unwrap().expect("READY, not a close");
        assert_eq!(kind, 0x07, "expected READY, got {payload:?}");
        match Message::parse(&payload).unwrap() {
            Message::Ready(node) => node,
            other => panic!("{other:?}"),
        }
    }

    /// The next RECV as (source, packet).
    pub fn recv_packet(&mut self) -> (NodeId, Vec<u8>) {
        loop {
            let (_, payload) = self.recv_message().unwrap().expect("a frame, not a close");
            match Message::parse(&payload).unwrap() {
                Message::Recv { src, packet } => return (src, packet.to_vec()),
                Message::PeerPresent(_) | Message::PeerGone(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

pub const fn relay_prefix_len() -> usize {
    relay::PREFIX_LEN
}
