//! The WebSocket generator's client side: a node's relay session opened through the node
//! agent's own client (`boson_node::relay_blocking` around `boson_node::ws`'s sans-IO
//! session: the upgrade, the token as a header or an AUTH message, READY), handed to the
//! generator's non-blocking loop with the session core still driving what it reads.
//!
//! # Why a template
//!
//! The generator must not be the bottleneck. A general client masks every payload byte of
//! every frame. Every packet a sender writes differs from its template only in the 24-byte
//! [`Stamp`](crate::payload::Stamp), so each sender takes one SEND frame masked once
//! ([`RelayClient::dangerous_send_template`]) and per packet writes only the stamp, already
//! masked: 24 XORs instead of `packet` of them, no allocation, and a batch of frames goes
//! out in one `write`. The one masking key per sender is what RFC 6455 §5.3 forbids a
//! browser; on a generator's loopback path no proxy can be steered by it.
//!
//! The codec is the relay's own (`boson_dataplane_proto::ws`), as it is the agent's: the
//! tests below read the template's frames with tungstenite, an independent decoder, so a
//! bug in the shared codec cannot hide behind itself.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use boson_node::relay_blocking::{BlockingClient, Received, UpgradeError};
use boson_node::ws::{self, ClientConfig, CloseReason, RelayClient};
use boson_shared::NodeId;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

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
    /// TCP connect, its options, or a read or write failed (a timeout included).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The upgrade failed: refused, not a WebSocket upgrade, timed out.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// The session closed before READY (a refused token closes with 1008 on bosonserver).
    #[error("closed before READY: {0}")]
    Closed(CloseReason),
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
    /// The session: it reads the relay's frames and answers its pings from here on.
    pub session: RelayClient<StdRng>,
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
    let stream = TcpStream::connect_timeout(&relay, timeout).map_err(io("TCP connect"))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("read timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("write timeout"))?;
    let config = ClientConfig {
        handshake_timeout: timeout,
        ready_timeout: timeout,
        // The generator answers the relay's pings and sends none of its own: a ping
        // between two stamped batches would be work the baseline does not do.
        ping_interval: Duration::from_secs(24 * 3600),
        ..ClientConfig::default()
    };
    let auth = match auth {
        Auth::Header => ws::Auth::Bearer(token),
        Auth::Message => ws::Auth::Message(token),
    };
    let mut client = BlockingClient::upgrade(
        stream,
        config,
        &relay.to_string(),
        path,
        auth,
        StdRng::from_os_rng(),
    )?;
    loop {
        match client.recv().map_err(io("waiting for READY"))? {
            Received::Ready(got) if got == *node => break,
            Received::Ready(got) => return Err(ConnectError::WrongNode { want: *node, got }),
            Received::Closed(reason) => return Err(ConnectError::Closed(reason)),
            // A draining relay may hint before READY; nothing else comes first.
            Received::ReconnectHint
            | Received::Packet { .. }
            | Received::PeerGone(_)
            | Received::PeerPresent(_) => {}
        }
    }
    let (stream, leftover, session) = client.into_session();
    Ok(Connection {
        stream,
        leftover,
        session,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use boson_dataplane_proto::ws::relay::{self, PREFIX_LEN};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

    use super::*;
    use crate::payload::{STAMP_LEN, Stamp};

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

    /// A session past READY, as [`connect`] hands it on.
    fn session() -> RelayClient<StdRng> {
        use boson_dataplane_proto::ws::handshake;
        let now = crate::clock::now();
        let mut client = RelayClient::new(
            ClientConfig::default(),
            "relay",
            "/relay",
            "token",
            now,
            StdRng::seed_from_u64(1),
        )
        .unwrap();
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        let request = handshake::parse_request(&out, "/relay").unwrap().unwrap();
        let mut response = [0u8; handshake::MAX_RESPONSE_LEN];
        let len = handshake::write_response(&request.accept, &mut response).unwrap();
        let _ = client.handle_input(now, &mut response[..len]);
        let mut ready = [0u8; relay::MAX_NOTICE_FRAME];
        let len = relay::encode_notice(
            relay::MessageType::Ready,
            Some(&NodeId::from_bytes([1; 16])),
            &mut ready,
        );
        let _ = client.handle_input(now, &mut ready[..len]);
        assert!(client.is_open());
        client
    }

    #[test]
    fn stamped_templates_are_valid_send_frames() {
        let dest = NodeId::from_bytes([0xAB; 16]);
        let mut session = session();
        for size in [STAMP_LEN, 100, 1200, 70_000 - PREFIX_LEN] {
            let packet = vec![0u8; size];
            let Ok(template) = session.dangerous_send_template(&dest, &packet) else {
                assert!(size > 65_000, "{size} refused");
                continue;
            };
            let mut frame = template.bytes().to_vec();
            let stamp = Stamp {
                flow: 3,
                seq: 41,
                sent_ns: 123_456_789,
            };
            let mut plain = [0u8; STAMP_LEN];
            stamp.encode(&mut plain);
            template.write_packet(&mut frame, 0, &plain);
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
            next.encode(&mut plain);
            template.write_packet(&mut frame, 0, &plain);
            let Message::Binary(message) = tungstenite_decode(&frame) else {
                panic!("not binary");
            };
            assert_eq!(Stamp::decode(&message[PREFIX_LEN..]), Some(next));
        }
    }

    /// What stamping costs per message against a tungstenite client, in this process (the
    /// write system call, the same for both, left out). Run in release:
    /// `cargo test --release -p boson-bench --lib codec_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn codec_cost_against_tungstenite() {
        use boson_dataplane_proto::ws::relay::MessageType;
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
        let mut session = session();
        for size in [100, 1200] {
            let template = session
                .dangerous_send_template(&dest, &vec![0; size])
                .unwrap();
            let mut batch = template.bytes().repeat(64);
            let start = crate::clock::now();
            for seq in 0..MESSAGES {
                let at = (seq % 64) as usize * template.len();
                let mut plain = [0u8; STAMP_LEN];
                Stamp {
                    flow: 1,
                    seq,
                    sent_ns: seq,
                }
                .encode(&mut plain);
                template.write_packet(&mut batch[at..at + template.len()], 0, &plain);
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
}
