//! Two (or more) relay clients against a [`Hub`] in virtual time: handshake, authentication,
//! relaying, queue overflow, deadlines, keepalive, replacement, PEER_GONE and remote routes.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use boson_dataplane_proto::ws::frame::{CloseCode, FrameHeader, OpCode, encode_masked};
use boson_dataplane_proto::ws::relay::{self, Message, node_id};
use boson_dataplane_proto::ws::{
    CloseReason, ConnId, Delivery, DropReason, Forward, Hub, HubEvent, LocalOnly, Presence,
    SessionState, WsConfig,
};
use boson_shared::NodeId;

const A: [u8; 16] = [0xAA; 16];
const B: [u8; 16] = [0xBB; 16];
const C: [u8; 16] = [0xCC; 16];

fn upgrade(bearer: Option<&str>) -> Vec<u8> {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "GET /relay HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    .into_bytes()
}

/// What a client got from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rx {
    Http(String),
    Frame(OpCode, Vec<u8>),
}

impl Rx {
    fn relay(&self) -> Option<Message<'_>> {
        match self {
            Self::Frame(OpCode::Binary, payload) => Message::parse(payload).ok(),
            Self::Http(_) | Self::Frame(..) => None,
        }
    }

    fn close_code(&self) -> Option<u16> {
        match self {
            Self::Frame(OpCode::Close, payload) if payload.len() >= 2 => {
                Some(u16::from_be_bytes([payload[0], payload[1]]))
            }
            Self::Http(_) | Self::Frame(..) => None,
        }
    }
}

/// One client's two byte streams, as the shell and the client see them.
#[derive(Debug, Default)]
struct Peer {
    /// Client → server bytes the hub has not consumed yet (the shell's input buffer).
    to_server: Vec<u8>,
    /// Server → client bytes the client has not parsed yet.
    to_client: Vec<u8>,
    /// Whether the client reads: a client that does not leaves the shell's writes blocked,
    /// so the shell stops calling `poll_transmit`.
    reading: bool,
    woken: bool,
    upgraded: bool,
}

struct Sim<P> {
    hub: Hub<P>,
    now: Instant,
    peers: BTreeMap<ConnId, Peer>,
    tokens: Vec<(ConnId, Vec<u8>)>,
    closed: Vec<(ConnId, CloseReason)>,
    forwards: Vec<Forward>,
    /// RECV frames the hub handed out for another core or host.
    remote: Vec<(NodeId, Vec<u8>)>,
    masks: u32,
}

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

impl Sim<LocalOnly> {
    fn new(config: WsConfig) -> Self {
        Self::with_presence(config, LocalOnly)
    }
}

impl<P: Presence> Sim<P> {
    fn with_presence(config: WsConfig, presence: P) -> Self {
        let now = epoch();
        Self {
            hub: Hub::new(config, presence, now),
            now,
            peers: BTreeMap::new(),
            tokens: Vec::new(),
            closed: Vec::new(),
            forwards: Vec::new(),
            remote: Vec::new(),
            masks: 0,
        }
    }

    fn connect(&mut self) -> ConnId {
        let conn = self.hub.handle_connect(self.now);
        self.peers.insert(
            conn,
            Peer {
                reading: true,
                ..Peer::default()
            },
        );
        conn
    }

    /// Connects, upgrades and authenticates as `node` (token in an AUTH message).
    fn join(&mut self, node: [u8; 16]) -> ConnId {
        let conn = self.connect();
        self.write(conn, &upgrade(None));
        let frame = self.client_frame(OpCode::Binary, b"\x05token");
        self.write(conn, &frame);
        let (who, token) = self.tokens.pop().unwrap();
        assert_eq!((who, &token[..]), (conn, &b"token"[..]));
        self.hub.accept(self.now, conn, node_id(node)).unwrap();
        self.pump();
        let rx = self.recv(conn);
        assert!(matches!(&rx[0], Rx::Http(head) if head.starts_with("HTTP/1.1 101")));
        assert_eq!(rx[1].relay(), Some(Message::Ready(node_id(node))));
        conn
    }

    fn client_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        self.masks = self.masks.wrapping_mul(0x9E37_79B9).wrapping_add(1);
        let mut out = vec![0u8; payload.len() + 14];
        let len = encode_masked(true, opcode, self.masks.to_be_bytes(), payload, &mut out).unwrap();
        out.truncate(len);
        out
    }

    fn send(&mut self, conn: ConnId, dest: [u8; 16], packet: &[u8]) {
        let mut message = vec![0x01];
        message.extend_from_slice(&dest);
        message.extend_from_slice(packet);
        let frame = self.client_frame(OpCode::Binary, &message);
        self.write(conn, &frame);
    }

    /// The client writes `bytes`; the shell feeds everything the hub will consume.
    fn write(&mut self, conn: ConnId, bytes: &[u8]) {
        let peer = self.peers.get_mut(&conn).unwrap();
        peer.to_server.extend_from_slice(bytes);
        loop {
            let peer = self.peers.get_mut(&conn).unwrap();
            let input = self
                .hub
                .handle_input(self.now, conn, &mut peer.to_server)
                .unwrap();
            if let Some(forward) = input.forward {
                if let Forward::Remote { dest, frame } = &forward {
                    self.remote
                        .push((*dest, peer.to_server[frame.clone()].to_vec()));
                }
                self.forwards.push(forward);
            }
            peer.to_server.drain(..input.consumed);
            self.pump();
            if input.consumed == 0 || self.peers[&conn].to_server.is_empty() {
                break;
            }
        }
    }

    /// Drains hub events and flushes every woken connection whose client reads.
    fn pump(&mut self) {
        while let Some(event) = self.hub.poll_event() {
            match event {
                HubEvent::Authenticate { conn, token } => self.tokens.push((conn, token.to_vec())),
                HubEvent::Wake { conn } => self.peers.get_mut(&conn).unwrap().woken = true,
                HubEvent::Closed { conn, reason } => {
                    self.closed.push((conn, reason));
                    self.peers.get_mut(&conn).unwrap().woken = true;
                }
            }
        }
        let mut buf = [0u8; 1500];
        for (&conn, peer) in &mut self.peers {
            if peer.woken && peer.reading {
                while let Some(len) = self.hub.poll_transmit(conn, &mut buf) {
                    peer.to_client.extend_from_slice(&buf[..len]);
                }
                peer.woken = false;
            }
        }
    }

    /// Everything the client of `conn` can parse now (it starts reading if it did not).
    fn recv(&mut self, conn: ConnId) -> Vec<Rx> {
        self.peers.get_mut(&conn).unwrap().reading = true;
        self.pump();
        let peer = self.peers.get_mut(&conn).unwrap();
        let mut out = Vec::new();
        if !peer.upgraded {
            let Some(end) = peer.to_client.windows(4).position(|w| w == b"\r\n\r\n") else {
                return out;
            };
            let head: Vec<u8> = peer.to_client.drain(..end + 4).collect();
            out.push(Rx::Http(String::from_utf8(head).unwrap()));
            peer.upgraded = true;
        }
        while let Ok(Some(header)) = FrameHeader::parse(&peer.to_client) {
            assert_eq!(header.mask, None, "server frames are never masked");
            let end = header.frame_len().unwrap();
            if peer.to_client.len() < end {
                break;
            }
            let payload = peer.to_client[header.header_len..end].to_vec();
            peer.to_client.drain(..end);
            out.push(Rx::Frame(header.opcode, payload));
        }
        out
    }

    /// Advances virtual time to the hub's next deadline and fires it.
    fn step(&mut self) -> Instant {
        self.now = self.hub.poll_timeout().unwrap();
        self.hub.handle_timeout(self.now);
        self.pump();
        self.now
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.hub.handle_timeout(self.now);
        self.pump();
    }

    fn state(&self, conn: ConnId) -> SessionState {
        self.hub.session(conn).unwrap().state()
    }
}

fn seq_packet(seq: u64, len: usize) -> Vec<u8> {
    let mut packet = vec![(seq % 251) as u8; len.max(8)];
    packet[..8].copy_from_slice(&seq.to_be_bytes());
    packet
}

fn seqs(rx: &[Rx], from: NodeId) -> Vec<u64> {
    rx.iter()
        .filter_map(|rx| match rx.relay() {
            Some(Message::Recv { src, packet }) => {
                assert_eq!(src, from);
                let seq = u64::from_be_bytes(packet[..8].try_into().unwrap());
                assert_eq!(packet, seq_packet(seq, packet.len()));
                Some(seq)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn two_nodes_exchange_100k_packets_in_order_without_loss() {
    let mut sim = Sim::new(WsConfig::new());
    let a = sim.join(A);
    let b = sim.join(B);
    let mut next_ab = 0;
    for round in 0..2_000u64 {
        // 50 packets A→B (bursts stay under the 256-frame queue), one B→A, then both read.
        for _ in 0..50 {
            let len = 60 + (next_ab as usize * 7) % 1400;
            sim.send(a, B, &seq_packet(next_ab, len));
            next_ab += 1;
        }
        sim.send(b, A, &seq_packet(round, 100));
        let got = seqs(&sim.recv(b), node_id(A));
        assert_eq!(got, (next_ab - 50..next_ab).collect::<Vec<_>>());
        assert_eq!(seqs(&sim.recv(a), node_id(B)), [round]);
    }
    assert_eq!(next_ab, 100_000);
    let stats = sim.hub.stats();
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops);
    assert_eq!(stats.forwarded_local, 102_000);
    assert_eq!(stats.received.packets, 102_000);
    assert_eq!(stats.authenticated, 2);
    assert!(sim.forwards.iter().all(|f| matches!(f, Forward::Local(_))));
}

#[test]
fn a_reader_that_never_reads_loses_the_oldest_frames_only() {
    // The frame bound explicitly (the default is 256 frames), so 200-byte frames hit it first.
    let mut sim = Sim::new(WsConfig::new().with_queue(64, 128 * 1024).unwrap());
    let a = sim.join(A);
    let b = sim.join(B);
    sim.peers.get_mut(&b).unwrap().reading = false;
    for seq in 0..1_000 {
        sim.send(a, B, &seq_packet(seq, 200));
    }
    // Bounded by frame count (64) here, not bytes.
    assert_eq!(sim.hub.session(b).unwrap().queued_frames(), 64);
    let stats = sim.hub.session(b).unwrap().stats();
    assert_eq!(stats.drops.get(DropReason::QueueFull), 1_000 - 64);
    assert_eq!(
        seqs(&sim.recv(b), node_id(A)),
        (936..1_000).collect::<Vec<_>>()
    );

    // Large packets: bounded by the 128 KiB of bytes first.
    sim.peers.get_mut(&b).unwrap().reading = false;
    for seq in 0..100 {
        sim.send(a, B, &seq_packet(seq, 8_000));
    }
    let queued = sim.hub.session(b).unwrap().queued_frames();
    assert_eq!(queued, 128 * 1024 / (8_000 + 4 + 17));
    assert_eq!(
        seqs(&sim.recv(b), node_id(A)),
        (100 - queued as u64..100).collect::<Vec<_>>()
    );
    // The sender is unaffected.
    assert_eq!(sim.state(a), SessionState::Authenticated(node_id(A)));
    assert_eq!(sim.hub.session(a).unwrap().stats().drops.total(), 0);
}

#[test]
fn a_stalled_reader_keeps_its_partial_frame_intact() {
    let mut sim = Sim::new(WsConfig::new());
    let a = sim.join(A);
    let b = sim.join(B);
    sim.peers.get_mut(&b).unwrap().reading = false;
    sim.send(a, B, &seq_packet(0, 5_000));
    // The shell got part of a frame out before B's socket blocked.
    let mut part = [0u8; 1000];
    assert_eq!(sim.hub.poll_transmit(b, &mut part), Some(1000));
    sim.peers
        .get_mut(&b)
        .unwrap()
        .to_client
        .extend_from_slice(&part);
    for seq in 1..200 {
        sim.send(a, B, &seq_packet(seq, 5_000));
    }
    let got = seqs(&sim.recv(b), node_id(A));
    assert_eq!(got[0], 0, "the pinned frame was delivered whole");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*got.last().unwrap(), 199);
}

#[test]
fn deadlines_close_connections_that_do_not_upgrade_or_authenticate() {
    let mut sim = Sim::new(WsConfig::new());
    let t0 = sim.now;
    let silent = sim.connect();
    let slow = sim.connect();
    sim.write(slow, &upgrade(None)[..40]);
    let t5 = t0 + Duration::from_secs(5);
    sim.now = t5;
    let unauthenticated = sim.connect();
    sim.write(unauthenticated, &upgrade(None));
    let pending = sim.connect();
    sim.write(pending, &upgrade(Some("abc")));
    assert_eq!(sim.tokens.len(), 1);

    assert_eq!(sim.step(), t0 + Duration::from_secs(10));
    assert_eq!(
        sim.closed,
        [
            (silent, CloseReason::HandshakeTimeout),
            (slow, CloseReason::HandshakeTimeout)
        ]
    );
    assert!(
        sim.recv(silent).is_empty(),
        "no response without an upgrade"
    );
    assert_eq!(sim.step(), t5 + Duration::from_secs(10));
    assert_eq!(sim.closed.len(), 4);
    for conn in [unauthenticated, pending] {
        let rx = sim.recv(conn);
        assert_eq!(rx.last().unwrap().close_code(), Some(1008));
        assert!(sim.closed.contains(&(conn, CloseReason::AuthTimeout)));
    }
    // The verdict came too late.
    assert!(sim.hub.accept(sim.now, pending, node_id(A)).is_err());
    for conn in [silent, slow, unauthenticated, pending] {
        sim.hub.handle_disconnect(conn).unwrap();
    }
    assert!(sim.hub.is_empty());
    assert_eq!(sim.hub.poll_timeout(), None);
    let stats = sim.hub.stats();
    assert_eq!((stats.handshake_timeouts, stats.auth_timeouts), (2, 2));
    assert_eq!(stats.sessions, 0);
}

#[test]
fn keepalive_pings_and_closes_an_idle_client() {
    let mut sim = Sim::new(WsConfig::new());
    let t0 = sim.now;
    let a = sim.join(A);
    let t30 = sim.step();
    assert_eq!(t30, t0 + Duration::from_secs(30));
    let rx = sim.recv(a);
    let [Rx::Frame(OpCode::Ping, payload)] = &rx[..] else {
        panic!("expected a ping, got {rx:?}");
    };
    let pong = sim.client_frame(OpCode::Pong, &payload.clone());
    sim.advance(Duration::from_secs(2));
    sim.write(a, &pong);
    // The next ping comes 30 s after the pong, not after the ping.
    let t62 = sim.step();
    assert_eq!(t62, t30 + Duration::from_secs(32));
    assert!(matches!(&sim.recv(a)[..], [Rx::Frame(OpCode::Ping, _)]));
    // No answer this time.
    assert_eq!(sim.step(), t62 + Duration::from_secs(15));
    assert_eq!(sim.recv(a).last().unwrap().close_code(), Some(1001));
    assert_eq!(sim.closed, [(a, CloseReason::IdleTimeout)]);
    assert_eq!(
        sim.hub.route(&node_id(A)),
        boson_dataplane_proto::ws::Route::Unknown
    );
    sim.hub.handle_disconnect(a).unwrap();
    let stats = sim.hub.stats();
    assert_eq!((stats.pings_sent, stats.idle_timeouts), (2, 1));
}

#[test]
fn a_client_ping_is_answered_and_keeps_the_session_alive() {
    let mut sim = Sim::new(WsConfig::new());
    let a = sim.join(A);
    for _ in 0..5 {
        sim.advance(Duration::from_secs(20));
        let ping = sim.client_frame(OpCode::Ping, b"hi");
        sim.write(a, &ping);
        assert_eq!(sim.recv(a), [Rx::Frame(OpCode::Pong, b"hi".to_vec())]);
    }
    assert_eq!(sim.hub.stats().pings_sent, 0);
}

#[test]
fn a_new_session_replaces_the_old_one() {
    let mut sim = Sim::new(WsConfig::new());
    let old = sim.join(A);
    let b = sim.join(B);
    let new = sim.join(A);
    let rx = sim.recv(old);
    assert_eq!(
        rx.last().unwrap().close_code(),
        Some(CloseCode::REPLACED.get())
    );
    assert_eq!(sim.state(old), SessionState::Closing);
    sim.send(b, A, &seq_packet(1, 64));
    assert_eq!(seqs(&sim.recv(new), node_id(B)), [1]);
    assert!(sim.recv(old).is_empty());
    // The old client completes the close handshake.
    let close = sim.client_frame(OpCode::Close, &CloseCode::REPLACED.get().to_be_bytes());
    sim.write(old, &close);
    assert_eq!(sim.closed, [(old, CloseReason::Replaced)]);
    sim.hub.handle_disconnect(old).unwrap();
    // The new session still owns the node.
    assert_eq!(
        sim.hub.route(&node_id(A)),
        boson_dataplane_proto::ws::Route::Local(new)
    );
    assert_eq!(sim.hub.stats().replaced, 1);
}

#[test]
fn peer_gone_is_rate_limited_per_pair() {
    let mut sim = Sim::new(WsConfig::new());
    let a = sim.join(A);
    for _ in 0..10 {
        sim.send(a, C, b"hello?");
    }
    let gone: Vec<_> = sim
        .recv(a)
        .iter()
        .filter_map(Rx::relay)
        .map(|m| format!("{m:?}"))
        .collect();
    assert_eq!(gone, [format!("{:?}", Message::PeerGone(node_id(C)))]);
    sim.send(a, B, b"hello?");
    assert_eq!(sim.recv(a)[0].relay(), Some(Message::PeerGone(node_id(B))));
    sim.advance(Duration::from_secs(5));
    sim.send(a, C, b"hello?");
    assert_eq!(sim.recv(a)[0].relay(), Some(Message::PeerGone(node_id(C))));
    let stats = sim.hub.stats();
    assert_eq!(stats.drops.get(DropReason::PeerGone), 12);
    assert_eq!((stats.peer_gone_sent, stats.peer_gone_suppressed), (3, 9));
    assert!(matches!(sim.forwards[0], Forward::Gone(dest) if dest == node_id(C)));
}

#[test]
fn remote_destinations_are_shipped_as_ready_recv_frames() {
    let remote = node_id(C);
    let mut here = Sim::with_presence(WsConfig::new(), move |node: &NodeId| *node == remote);
    let mut there = Sim::new(WsConfig::new());
    let a = here.join(A);
    let c = there.join(C);
    here.send(a, C, &seq_packet(7, 300));
    assert!(matches!(here.forwards[..], [Forward::Remote { dest, .. }] if dest == remote));
    let (dest, frame) = here.remote.pop().unwrap();
    assert_eq!(there.hub.handle_remote(&dest, &frame), Delivery::Queued(c));
    there.pump();
    assert_eq!(seqs(&there.recv(c), node_id(A)), [7]);
    // Not a RECV frame, or nobody there.
    assert_eq!(
        there.hub.handle_remote(&dest, &frame[1..]),
        Delivery::Malformed
    );
    assert_eq!(there.hub.handle_remote(&node_id(B), &frame), Delivery::Gone);
    assert_eq!(here.hub.stats().forwarded_remote, 1);
}

#[test]
fn draining_hints_every_client_to_reconnect() {
    let mut sim = Sim::new(WsConfig::new());
    let a = sim.join(A);
    let b = sim.join(B);
    sim.hub.start_draining();
    sim.pump();
    for conn in [a, b] {
        assert_eq!(sim.recv(conn)[0].relay(), Some(Message::ReconnectHint));
    }
    let c = sim.connect();
    sim.write(c, &upgrade(Some("t")));
    sim.hub.accept(sim.now, c, node_id(C)).unwrap();
    sim.pump();
    let rx = sim.recv(c);
    assert_eq!(rx[1].relay(), Some(Message::Ready(node_id(C))));
    assert_eq!(rx[2].relay(), Some(Message::ReconnectHint));
    assert!(sim.hub.notify_present(&node_id(A), &node_id(C)));
    assert_eq!(
        sim.recv(a)[0].relay(),
        Some(Message::PeerPresent(node_id(C)))
    );
}

#[test]
fn rejected_and_misbehaving_clients_are_closed() {
    let mut sim = Sim::new(WsConfig::new());
    let conn = sim.connect();
    sim.write(conn, &upgrade(Some("bad")));
    sim.hub.reject(sim.now, conn).unwrap();
    sim.pump();
    assert_eq!(sim.recv(conn).last().unwrap().close_code(), Some(1008));
    assert_eq!(sim.closed, [(conn, CloseReason::Rejected)]);

    let a = sim.join(A);
    let text = sim.client_frame(OpCode::Text, b"hello");
    sim.write(a, &text);
    assert_eq!(sim.recv(a).last().unwrap().close_code(), Some(1003));
    assert_eq!(
        sim.hub.route(&node_id(A)),
        boson_dataplane_proto::ws::Route::Unknown
    );

    let refused = sim.connect();
    sim.write(refused, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n");
    let rx = sim.recv(refused);
    assert!(matches!(&rx[0], Rx::Http(head) if head.starts_with("HTTP/1.1 404 Not Found")));
    let stats = sim.hub.stats();
    assert_eq!(
        (
            stats.auth_rejected,
            stats.protocol_errors,
            stats.handshake_failures
        ),
        (1, 1, 1)
    );
}

#[test]
fn sends_before_the_verdict_are_dropped() {
    let mut sim = Sim::new(WsConfig::new());
    let b = sim.join(B);
    let a = sim.connect();
    sim.write(a, &upgrade(Some("t")));
    sim.send(a, B, b"early");
    assert!(sim.forwards.is_empty());
    assert!(seqs(&sim.recv(b), node_id(A)).is_empty());
    assert_eq!(sim.hub.stats().drops.get(DropReason::Unauthenticated), 1);
    assert_eq!(relay::PREFIX_LEN, 17);
}
