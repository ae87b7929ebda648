//! TURN over TCP, the client side ([RFC 8656 §3.1], framing of [RFC 8489 §6.2.2]): a TCP
//! connection to the server's listener that carries STUN messages and ChannelData back to
//! back, each ChannelData padded to a multiple of 4 bytes ([RFC 8656 §12.5]). The relayed
//! side stays UDP (an ordinary Allocate; RFC 6062 is not involved).
//!
//! ```text
//! client ══ TCP ══▶ server:  | Allocate | … | ChannelData 0x4000 + pad | ChannelData … |
//! server ── UDP ──▶ peer:    payload, payload, …
//! ```
//!
//! Incoming bytes are cut into frames by the server's own reassembler
//! ([`Reassembler`], `boson_dataplane_proto::turn::stream`), so the client and the server
//! share one framing codec. Requests are never retransmitted over a stream; an answer must
//! come within [`ANSWER_TIMEOUT`].
//!
//! [RFC 8656 §3.1]: https://www.rfc-editor.org/rfc/rfc8656#section-3.1
//! [RFC 8656 §12.5]: https://www.rfc-editor.org/rfc/rfc8656#section-12.5
//! [RFC 8489 §6.2.2]: https://www.rfc-editor.org/rfc/rfc8489#section-6.2.2

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};
use boson_dataplane_proto::stun::TransactionId;
use boson_dataplane_proto::turn::ChannelNumber;
use boson_dataplane_proto::turn::channel_data;
use boson_dataplane_proto::turn::stream::{Reassembler, stream_padding};

use crate::clock;
use crate::turn_client::{Reply, Transport, parse_reply};

/// How long a request waits for its answer. Behind a full receive buffer (a max-rate run's
/// backlog) an answer can take a while; on loopback it normally takes microseconds.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest frame the client accepts from the server: a STUN response or a ChannelData
/// frame of a UDP datagram, with room.
const MAX_FRAME: usize = 4 + 65_536;

/// A TCP connection to a TURN server's stream listener.
#[derive(Debug)]
pub struct TcpTransport {
    stream: TcpStream,
    reassembler: Reassembler,
}

impl TcpTransport {
    /// Connects to `server` (with `TCP_NODELAY`: frames go out as they are written).
    pub fn connect(server: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {server} over TCP"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            reassembler: Reassembler::new(MAX_FRAME),
        })
    }

    /// The connection, to write ChannelData on.
    pub const fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Transport for TcpTransport {
    fn exchange(
        &mut self,
        request: &[u8],
        transaction: TransactionId,
        _buf: &mut [u8],
    ) -> anyhow::Result<Reply> {
        // The load leaves the stream non-blocking; requests block, with a deadline.
        self.stream.set_nonblocking(false)?;
        self.stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        self.stream
            .write_all(request)
            .context("sending a TURN request over TCP")?;
        let deadline = clock::now() + ANSWER_TIMEOUT;
        loop {
            while let Some(frame) = self.reassembler.poll_frame() {
                let frame = frame.map_err(|reason| {
                    anyhow::anyhow!("the server's stream: {}", reason.as_str())
                })?;
                if let Some(reply) = parse_reply(frame, transaction) {
                    return Ok(reply);
                }
            }
            let now = clock::now();
            if now >= deadline {
                bail!("no answer over TCP within {ANSWER_TIMEOUT:?}");
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            match self.stream.read(self.reassembler.spare()) {
                Ok(0) => bail!("the server closed the TCP connection"),
                Ok(n) => self.reassembler.handle_read(n),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Err(error).context("reading a TURN answer over TCP"),
            }
        }
    }
}

/// A ChannelData frame on `channel` around `payload` bytes of zeros, padded for a stream:
/// `4 + payload` rounded up to 4 bytes.
pub fn stream_frame(channel: ChannelNumber, payload: usize) -> anyhow::Result<Vec<u8>> {
    let length = u16::try_from(payload).context("payload size")?;
    let unpadded = channel_data::HEADER_LEN + payload;
    let mut frame = vec![0u8; unpadded + stream_padding(unpadded)];
    frame[..channel_data::HEADER_LEN]
        .copy_from_slice(&channel_data::encode_header(channel, length));
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use boson_dataplane_proto::stun::{Class, Encoder, Message, MessageType, Method, Trailer};
    use boson_dataplane_proto::turn::stream::{MAX_FRAME_LEN, frame_len};

    use super::*;

    #[test]
    fn frames_are_padded_to_four_bytes_and_parse_as_one_frame() {
        for payload in [24, 100, 101, 102, 103, 1200] {
            let frame = stream_frame(ChannelNumber::MIN, payload).unwrap();
            assert_eq!(frame.len() % 4, 0, "{payload}");
            assert!(frame.len() - payload - 4 < 4, "{payload}");
            assert_eq!(
                frame_len(&frame, MAX_FRAME_LEN),
                Ok(Some(frame.len())),
                "{payload}: the server cuts exactly this frame"
            );
        }
    }

    /// A server that first sends a ChannelData frame (padded), then the answer in two
    /// writes split inside its header: the client skips the frame and reassembles the
    /// answer.
    #[test]
    fn an_answer_split_across_reads_after_other_frames_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tid = TransactionId::new([7; 12]);
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 20];
            conn.read_exact(&mut request).unwrap();
            let request = Message::parse(&request).unwrap();
            assert_eq!(request.method(), Method::BINDING);
            let mut answer = [0u8; 64];
            let len = Encoder::new(
                &mut answer,
                MessageType::new(Method::BINDING, Class::SuccessResponse),
                request.transaction_id(),
            )
            .unwrap()
            .finish(Trailer::new())
            .unwrap();
            let mut other = stream_frame(ChannelNumber::MIN, 5).unwrap();
            other[4..9].copy_from_slice(b"hello");
            conn.write_all(&other).unwrap();
            conn.write_all(&answer[..7]).unwrap();
            conn.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            conn.write_all(&answer[7..len]).unwrap();
        });
        let mut transport = TcpTransport::connect(addr).unwrap();
        let mut request = [0u8; 20];
        Encoder::new(&mut request, MessageType::BINDING_REQUEST, tid)
            .unwrap()
            .finish(Trailer::new())
            .unwrap();
        let reply = transport.exchange(&request, tid, &mut []).unwrap();
        assert_eq!(reply, Reply::Success { relayed: None });
        server.join().unwrap();
    }

    #[test]
    fn a_closed_connection_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let mut transport = TcpTransport::connect(addr).unwrap();
        server.join().unwrap();
        let tid = TransactionId::new([1; 12]);
        assert!(transport.exchange(&[0; 20], tid, &mut []).is_err());
    }
}
