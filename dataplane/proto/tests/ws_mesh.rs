//! Two relay hosts wired by a mesh link, byte to byte, in virtual time: host B's [`Hub`]
//! serves the link, host A's [`MeshClient`] reads it and hands FORWARDs to A's own hub.
//! Handshake, mesh authentication, delivery, order, backpressure, replacement, keepalive,
//! and the client's RFC 6455 rules; then a property test that random bytes never panic it.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use boson_dataplane_proto::ws::frame::{
    self, CloseCode, ClosePayload, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode, encode_masked,
};
use boson_dataplane_proto::ws::handshake::AcceptKey;
use boson_dataplane_proto::ws::relay::{self, Message, MessageType, node_id};
use boson_dataplane_proto::ws::{
    CloseReason, ConnId, Delivery, DropReason, Forward, Hub, HubEvent, MeshClient, MeshCloseReason,
    MeshEvent, MeshHandshakeError, MeshInput, MeshState, MeshViolation, Presence, Route,
    SessionState, WsConfig,
};
use boson_shared::mesh::{ChannelBinding, DEFAULT_MAX_SKEW, MeshKey, is_mesh_token};
use boson_shared::{HostId, NodeId};
use proptest::prelude::*;
use rand_core::RngCore;

/// Host A: opens the link to B and receives its nodes' packets over it.
const HOST_A: HostId = HostId::from_bytes([0xA0; 16]);
/// The host the relay under test runs as: mesh links are opened to it.
const HOST_B: HostId = HostId::from_bytes([0xB0; 16]);
/// A node connected to host B.
const Y: [u8; 16] = [0xBB; 16];
/// A node connected to host A.
const X: [u8; 16] = [0xAA; 16];
const MESH_KEY: &[u8] = b"the mesh key of this deployment, 32+ bytes";
const UNIX_NOW: u64 = 1_700_000_000;
const NONCE: [u8; 16] = *b"the sample nonce";

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

/// A seeded xorshift: masking keys without OS randomness.
#[derive(Debug)]
struct TestRng(u64);

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill_with(|| self.next_u64() as u8);
    }
}

fn upgrade() -> Vec<u8> {
    b"GET /relay HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + 14];
    let len = encode_masked(true, opcode, [1, 2, 3, 4], payload, &mut out).unwrap();
    out.truncate(len);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One connection's two byte streams.
#[derive(Debug, Default)]
struct Peer {
    /// Client → server bytes the hub has not consumed yet (the shell's input buffer).
    to_server: Vec<u8>,
    /// Server → client bytes the client has not taken yet.
    to_client: Vec<u8>,
    /// Whether the client reads: if not, the shell stops calling `poll_transmit`.
    reading: bool,
    woken: bool,
    upgraded: bool,
}

/// One relay host's hub and the shell around it: it checks tokens at once (node tokens are
/// the node id in hex, mesh tokens go through the mesh key) and, when it knows a host to
/// reach remote nodes by, calls `forward_to_mesh` on the spot with the frame in its input.
struct Relay<P> {
    hub: Hub<P>,
    peers: BTreeMap<ConnId, Peer>,
    key: MeshKey,
    unix_now: u64,
    /// Where `Forward::Remote` destinations live (the shell's presence table).
    remote_host: Option<HostId>,
    /// Copies of the RECV frames handed out in `Forward::Remote`, for byte comparisons.
    remote_frames: Vec<Vec<u8>>,
    deliveries: Vec<Delivery>,
    closed: Vec<(ConnId, CloseReason)>,
}

impl<P: Presence> Relay<P> {
    fn new(config: WsConfig, presence: P, now: Instant) -> Self {
        Self {
            hub: Hub::new(config, presence, now),
            peers: BTreeMap::new(),
            key: MeshKey::new(MESH_KEY).unwrap(),
            unix_now: UNIX_NOW,
            remote_host: None,
            remote_frames: Vec::new(),
            deliveries: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn connect(&mut self, now: Instant) -> ConnId {
        let conn = self.hub.handle_connect(now);
        self.peers.insert(
            conn,
            Peer {
                reading: true,
                ..Peer::default()
            },
        );
        conn
    }

    /// A node client joins: upgrade, AUTH with its id, READY.
    fn join(&mut self, now: Instant, node: [u8; 16]) -> ConnId {
        let conn = self.connect(now);
        self.write(now, conn, &upgrade());
        let mut auth = vec![0x05];
        auth.extend_from_slice(hex(&node).as_bytes());
        self.write(now, conn, &masked(OpCode::Binary, &auth));
        let rx = self.recv(conn);
        assert_eq!(rx[0], (OpCode::Binary, [&[0x07][..], &node].concat()));
        conn
    }

    /// The client of `conn` writes `bytes`; the shell feeds everything the hub consumes.
    fn write(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.peers
            .get_mut(&conn)
            .unwrap()
            .to_server
            .extend_from_slice(bytes);
        loop {
            let peer = self.peers.get_mut(&conn).unwrap();
            let Ok(input) = self.hub.handle_input(now, conn, &mut peer.to_server) else {
                peer.to_server.clear();
                break;
            };
            if let Some(Forward::Remote { dest, frame }) = &input.forward {
                let frame = &peer.to_server[frame.clone()];
                self.remote_frames.push(frame.to_vec());
                if let Some(host) = self.remote_host {
                    // The shell's zero-copy path: straight from its input buffer.
                    let delivery = self.hub.forward_to_mesh(&host, dest, frame);
                    self.deliveries.push(delivery);
                }
            }
            peer.to_server.drain(..input.consumed);
            self.pump(now);
            if input.consumed == 0 || self.peers[&conn].to_server.is_empty() {
                break;
            }
        }
    }

    /// Drains hub events (checking tokens on the spot) and flushes every woken connection
    /// whose client reads.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut tokens = Vec::new();
            while let Some(event) = self.hub.poll_event() {
                match event {
                    HubEvent::Authenticate { conn, token } => tokens.push((conn, token.to_vec())),
                    HubEvent::Wake { conn } => self.peers.get_mut(&conn).unwrap().woken = true,
                    HubEvent::Closed { conn, reason } => {
                        self.closed.push((conn, reason));
                        self.peers.get_mut(&conn).unwrap().woken = true;
                    }
                }
            }
            if tokens.is_empty() {
                break;
            }
            for (conn, token) in tokens {
                self.verdict(now, conn, &token);
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

    /// What the owner of the relay does with a token.
    fn verdict(&mut self, now: Instant, conn: ConnId, token: &[u8]) {
        if is_mesh_token(token) {
            match self.key.verify(
                token,
                HOST_B,
                &ChannelBinding::PLAIN,
                self.unix_now,
                DEFAULT_MAX_SKEW,
            ) {
                Ok(host) => self.hub.accept_mesh(now, conn, host).unwrap(),
                Err(_) => self.hub.reject(now, conn).unwrap(),
            }
            return;
        }
        let node = std::str::from_utf8(token)
            .ok()
            .and_then(|text| u128::from_str_radix(text, 16).ok())
            .map(|id| node_id(id.to_be_bytes()));
        match node {
            Some(node) => self.hub.accept(now, conn, node).unwrap(),
            None => self.hub.reject(now, conn).unwrap(),
        }
    }

    /// The frames a node client of `conn` can parse now: (opcode, payload).
    fn recv(&mut self, conn: ConnId) -> Vec<(OpCode, Vec<u8>)> {
        let peer = self.peers.get_mut(&conn).unwrap();
        if !peer.upgraded {
            let end = peer
                .to_client
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap();
            let head: Vec<u8> = peer.to_client.drain(..end + 4).collect();
            assert!(head.starts_with(b"HTTP/1.1 101 "));
            peer.upgraded = true;
        }
        let mut out = Vec::new();
        while let Ok(Some(header)) = FrameHeader::parse(&peer.to_client) {
            assert_eq!(header.mask, None, "server frames are never masked");
            let end = header.frame_len().unwrap();
            if peer.to_client.len() < end {
                break;
            }
            out.push((
                header.opcode,
                peer.to_client[header.header_len..end].to_vec(),
            ));
            peer.to_client.drain(..end);
        }
        out
    }
}

/// Host B (serving the link) and host A (reading it, with its own hub), one link between
/// them, and the node Y on B and X on A.
struct World {
    now: Instant,
    b: Relay<fn(&NodeId) -> bool>,
    a: Relay<fn(&NodeId) -> bool>,
    link: MeshClient<TestRng>,
    /// B's connection of the link.
    link_conn: ConnId,
    /// A's input buffer of the link: bytes from B not consumed yet.
    link_in: Vec<u8>,
    link_events: Vec<MeshEvent>,
    delivered_to_a: Vec<Delivery>,
}

/// B's presence table: X lives on another host.
fn x_is_remote(node: &NodeId) -> bool {
    *node == node_id(X)
}

fn nowhere(_: &NodeId) -> bool {
    false
}

impl World {
    fn new(config: &WsConfig) -> Self {
        let now = epoch();
        let mut b = Relay::new(config.clone(), x_is_remote as fn(&NodeId) -> bool, now);
        b.remote_host = Some(HOST_A);
        let a = Relay::new(config.clone(), nowhere as fn(&NodeId) -> bool, now);
        let token =
            MeshKey::new(MESH_KEY)
                .unwrap()
                .token(HOST_A, HOST_B, &ChannelBinding::PLAIN, UNIX_NOW);
        let (link, link_conn) = open_link(&mut b, config, now, &token);
        let mut world = Self {
            now,
            b,
            a,
            link,
            link_conn,
            link_in: Vec::new(),
            link_events: Vec::new(),
            delivered_to_a: Vec::new(),
        };
        world.transfer();
        world
    }

    /// Moves bytes both ways on the link until it is quiet: B's output into the client
    /// (whose deliveries go to A's hub), the client's output into B.
    fn transfer(&mut self) {
        loop {
            let peer = self.b.peers.get_mut(&self.link_conn).unwrap();
            let moved = !peer.to_client.is_empty();
            self.link_in.append(&mut peer.to_client);
            self.feed_link();
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            while let Some(len) = self.link.poll_transmit(&mut buf) {
                out.extend_from_slice(&buf[..len]);
            }
            if !out.is_empty() {
                self.b.write(self.now, self.link_conn, &out);
            }
            if !moved && out.is_empty() {
                break;
            }
        }
    }

    /// The link client consumes what it can from its input.
    fn feed_link(&mut self) {
        loop {
            let input = self.link.handle_input(self.now, &mut self.link_in);
            if let MeshInput::Deliver { dest, frame, .. } = &input {
                let frame = &self.link_in[frame.clone()];
                let delivery = self.a.hub.handle_remote(dest, frame);
                self.delivered_to_a.push(delivery);
                if delivery == Delivery::Gone {
                    // As the shell does: the sending host is told, for its node.
                    let header = FrameHeader::parse(frame).unwrap().unwrap();
                    if let Ok(Message::Recv { src, .. }) =
                        Message::parse(&frame[header.header_len..])
                    {
                        self.link.peer_gone(self.now, dest, &src);
                    }
                }
                self.a.pump(self.now);
            }
            while let Some(event) = self.link.poll_event() {
                self.link_events.push(event);
            }
            self.link_in.drain(..input.consumed());
            if input == MeshInput::NeedMore || self.link_in.is_empty() {
                break;
            }
        }
    }

    fn send(&mut self, from: ConnId, dest: [u8; 16], packet: &[u8]) {
        let message = [&[0x01][..], &dest, packet].concat();
        self.b
            .write(self.now, from, &masked(OpCode::Binary, &message));
    }

    /// Advances virtual time by `by` on both hosts and the link, firing what is due.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.b.hub.handle_timeout(self.now);
        self.b.pump(self.now);
        self.a.hub.handle_timeout(self.now);
        self.a.pump(self.now);
        self.link.handle_timeout(self.now);
        self.transfer();
    }
}

/// Opens a link to `b` with `token` and runs the handshake: returns the client and B's
/// connection of it.
fn open_link<P: Presence>(
    b: &mut Relay<P>,
    config: &WsConfig,
    now: Instant,
    token: &str,
) -> (MeshClient<TestRng>, ConnId) {
    let conn = b.connect(now);
    let mut link = MeshClient::new(
        config.clone(),
        "relay-b.test:443",
        "/relay",
        token.as_bytes(),
        now,
        NONCE,
        TestRng(0x1234_5678_9abc_def1),
    )
    .unwrap();
    assert_eq!(link.state(), MeshState::Connecting { upgraded: false });
    let mut request = Vec::new();
    let mut buf = [0u8; 64];
    while let Some(len) = link.poll_transmit(&mut buf) {
        request.extend_from_slice(&buf[..len]);
    }
    b.write(now, conn, &request);
    (link, conn)
}

fn seq_packet(seq: u64, len: usize) -> Vec<u8> {
    let mut packet = vec![(seq % 251) as u8; len.max(8)];
    packet[..8].copy_from_slice(&seq.to_be_bytes());
    packet
}

/// The sequence numbers of the RECVs in `rx`, each checked to come from `from` intact.
fn seqs(rx: &[(OpCode, Vec<u8>)], from: NodeId) -> Vec<u64> {
    rx.iter()
        .filter_map(
            |(opcode, payload)| match (opcode, Message::parse(payload)) {
                (OpCode::Binary, Ok(Message::Recv { src, packet })) => {
                    assert_eq!(src, from);
                    let seq = u64::from_be_bytes(packet[..8].try_into().unwrap());
                    assert_eq!(packet, seq_packet(seq, packet.len()));
                    Some(seq)
                }
                _ => None,
            },
        )
        .collect()
}

/// The masked client frames in `bytes`, unmasked: (opcode, payload).
fn client_frames(mut bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some(header)) = FrameHeader::parse(bytes) {
        let key = header.mask.expect("client frames are masked");
        let end = header.frame_len().unwrap();
        let mut payload = bytes[header.header_len..end].to_vec();
        frame::apply_mask(&mut payload, key);
        out.push((header.opcode, payload));
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "whole frames only");
    out
}

fn drain_link(link: &mut MeshClient<TestRng>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 100];
    while let Some(len) = link.poll_transmit(&mut buf) {
        out.extend_from_slice(&buf[..len]);
    }
    out
}

fn close_code(frames: &[(OpCode, Vec<u8>)]) -> Option<CloseCode> {
    frames
        .iter()
        .find(|(opcode, _)| *opcode == OpCode::Close)
        .and_then(|(_, payload)| ClosePayload::parse(payload).ok()?.code)
}

#[test]
fn the_link_authenticates_with_a_mesh_token() {
    let world = World::new(&WsConfig::new());
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
    assert_eq!(world.link_events, [MeshEvent::Ready(HOST_A)]);
    assert_eq!(
        world.b.hub.session(world.link_conn).unwrap().state(),
        SessionState::Mesh(HOST_A)
    );
    assert_eq!(
        world.b.hub.mesh_hosts().collect::<Vec<_>>(),
        [(HOST_A, world.link_conn)]
    );
    assert_eq!(world.b.hub.mesh_conn(&HOST_A), Some(world.link_conn));
    let stats = world.b.hub.stats();
    assert_eq!((stats.mesh_sessions, stats.authenticated), (1, 0));
    assert_eq!(stats.mesh_accepted, 1);
    assert_eq!(world.b.hub.route(&node_id(X)), Route::Remote(node_id(X)));
}

#[test]
fn the_upgrade_request_is_what_the_server_expects() {
    let mut link = MeshClient::new(
        WsConfig::new(),
        "relay-b.test:443",
        "/relay",
        b"mesh.tok",
        epoch(),
        NONCE,
        TestRng(1),
    )
    .unwrap();
    let request = String::from_utf8(drain_link(&mut link)).unwrap();
    assert_eq!(
        request,
        "GET /relay HTTP/1.1\r\nHost: relay-b.test:443\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer mesh.tok\r\n\r\n"
    );
    assert!(!link.has_transmit());
    let fresh = MeshClient::new(
        WsConfig::new(),
        "r",
        "/relay",
        b"mesh.secret-token",
        epoch(),
        NONCE,
        TestRng(1),
    )
    .unwrap();
    assert!(
        !format!("{fresh:?}").contains("secret-token"),
        "Debug does not print the token"
    );
    for (host, path, token) in [
        ("", "/relay", &b"t"[..]),
        ("a b", "/relay", b"t"),
        ("relay", "relay", b"t"),
        ("relay", "/re lay", b"t"),
        ("relay", "/relay", b""),
        ("relay", "/relay", b"a b"),
        ("relay", "/relay", b"a\r\nX-Evil: 1"),
    ] {
        assert!(
            MeshClient::new(
                WsConfig::new(),
                host,
                path,
                token,
                epoch(),
                NONCE,
                TestRng(1)
            )
            .is_err(),
            "{host:?} {path:?} {token:?}"
        );
    }
}

#[test]
fn a_bad_mesh_token_is_refused_with_1008() {
    let config = WsConfig::new();
    for token in [
        MeshKey::new([7u8; 32])
            .unwrap()
            .token(HOST_A, HOST_B, &ChannelBinding::PLAIN, UNIX_NOW),
        MeshKey::new(MESH_KEY).unwrap().token(
            HOST_A,
            HOST_B,
            &ChannelBinding::PLAIN,
            UNIX_NOW - 3_600,
        ),
        // Minted for a link to another host.
        MeshKey::new(MESH_KEY).unwrap().token(
            HOST_A,
            HostId::from_bytes([0xC0; 16]),
            &ChannelBinding::PLAIN,
            UNIX_NOW,
        ),
        "mesh.not-a-token".to_owned(),
    ] {
        let now = epoch();
        let mut b = Relay::new(config.clone(), nowhere as fn(&NodeId) -> bool, now);
        let (mut link, conn) = open_link(&mut b, &config, now, &token);
        let from_b = std::mem::take(&mut b.peers.get_mut(&conn).unwrap().to_client);
        // The 101 comes first, then the refusal.
        let mut input = from_b.clone();
        let first = link.handle_input(now, &mut input);
        assert!(
            matches!(first, MeshInput::Consumed(n) if from_b[..n].starts_with(b"HTTP/1.1 101"))
        );
        input.drain(..first.consumed());
        assert_eq!(link.state(), MeshState::Connecting { upgraded: true });
        let second = link.handle_input(now, &mut input);
        assert_eq!(second.consumed(), input.len());
        assert_eq!(link.state(), MeshState::Closed(MeshCloseReason::Rejected));
        assert_eq!(
            link.poll_event(),
            Some(MeshEvent::Closed(MeshCloseReason::Rejected))
        );
        let answer = client_frames(&drain_link(&mut link));
        assert_eq!(close_code(&answer), Some(CloseCode::POLICY_VIOLATION));
        assert_eq!(b.closed, [(conn, CloseReason::Rejected)]);
        assert_eq!(b.hub.stats().mesh_sessions, 0);
    }
}

#[test]
fn a_packet_crosses_hosts_byte_exact() {
    let mut world = World::new(&WsConfig::new());
    let now = world.now;
    let y = world.b.join(now, Y);
    let x = world.a.join(now, X);
    world.send(y, X, b"a wireguard packet from Y to X");
    assert_eq!(world.b.deliveries, [Delivery::Queued(world.link_conn)]);
    world.transfer();
    assert_eq!(world.delivered_to_a, [Delivery::Queued(x)]);
    // X gets the RECV frame B built, byte for byte.
    let at_x = world.a.peers[&x].to_client.clone();
    assert_eq!(at_x, world.b.remote_frames[0]);
    assert_eq!(
        world.a.recv(x),
        [(
            OpCode::Binary,
            [&[0x02][..], &Y, b"a wireguard packet from Y to X"].concat()
        )]
    );
    let b_stats = world.b.hub.stats();
    assert_eq!(b_stats.forwarded_remote, 1);
    assert_eq!(b_stats.forwarded_mesh.packets, 1);
    // [82 3f][08][X][Y][30 bytes].
    assert_eq!(b_stats.forwarded_mesh.bytes, 2 + 33 + 30);
    assert_eq!(world.link.stats().delivered.packets, 1);
    assert_eq!(world.link.stats().delivered.bytes, 30);
    // The largest packet fits the mesh cap.
    let big = vec![0x5a; WsConfig::new().max_message() - relay::PREFIX_LEN];
    world.send(y, X, &big);
    world.transfer();
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
    assert_eq!(
        world.a.recv(x),
        [(OpCode::Binary, [&[0x02][..], &Y, &big].concat())]
    );
}

#[test]
fn forward_to_mesh_refuses_what_it_cannot_carry() {
    let mut world = World::new(&WsConfig::new());
    let dest = node_id(X);
    let mut notice = [0u8; relay::MAX_NOTICE_FRAME];
    let len = relay::encode_notice(MessageType::PeerGone, Some(&dest), &mut notice);
    assert_eq!(
        world.b.hub.forward_to_mesh(&HOST_A, &dest, &notice[..len]),
        Delivery::Malformed
    );
    let mut recv = vec![0u8; relay::HEADROOM + 10];
    let frame =
        relay::encode_recv(&mut recv, relay::HEADROOM..relay::HEADROOM + 10, &dest).unwrap();
    let other_host = HostId::from_bytes([0xC0; 16]);
    assert_eq!(
        world
            .b
            .hub
            .forward_to_mesh(&other_host, &dest, &recv[frame.clone()]),
        Delivery::Gone
    );
    // A RECV above the cap would make the peer fail the link (1009).
    let mut huge = vec![0u8; relay::HEADROOM + 65_520];
    let end = huge.len();
    let big = relay::encode_recv(&mut huge, relay::HEADROOM..end, &dest).unwrap();
    assert_eq!(
        world.b.hub.forward_to_mesh(&HOST_A, &dest, &huge[big]),
        Delivery::Malformed
    );
    let drops = world.b.hub.stats().drops;
    assert_eq!(drops.get(DropReason::Malformed), 2);
    assert_eq!(drops.get(DropReason::NoMeshLink), 1);
    assert_eq!(
        world.b.hub.forward_to_mesh(&HOST_A, &dest, &recv[frame]),
        Delivery::Queued(world.link_conn)
    );
}

#[test]
fn hundred_thousand_packets_cross_in_order_without_loss() {
    let mut world = World::new(&WsConfig::new());
    let now = world.now;
    let y = world.b.join(now, Y);
    let x = world.a.join(now, X);
    let mut next = 0u64;
    for _ in 0..2_000 {
        for _ in 0..50 {
            let len = 60 + (next as usize * 7) % 1400;
            world.send(y, X, &seq_packet(next, len));
            next += 1;
        }
        world.transfer();
        let got = seqs(&world.a.recv(x), node_id(Y));
        assert_eq!(got, (next - 50..next).collect::<Vec<_>>());
    }
    assert_eq!(next, 100_000);
    let b_stats = world.b.hub.stats();
    assert_eq!(b_stats.drops.total(), 0, "{:?}", b_stats.drops);
    assert_eq!(b_stats.forwarded_mesh.packets, 100_000);
    assert_eq!(world.link.stats().delivered.packets, 100_000);
    assert_eq!(world.a.hub.stats().drops.total(), 0);
    assert!(
        world
            .delivered_to_a
            .iter()
            .all(|d| *d == Delivery::Queued(x))
    );
}

#[test]
fn a_link_that_stops_reading_costs_bounded_memory() {
    let config = WsConfig::new();
    let mut world = World::new(&config);
    let now = world.now;
    let y = world.b.join(now, Y);
    let x = world.a.join(now, X);
    world.b.peers.get_mut(&world.link_conn).unwrap().reading = false;
    // 10 000 packets of 1000 bytes: 10 MB against a 4 MiB / 4096-frame queue.
    for seq in 0..10_000 {
        world.send(y, X, &seq_packet(seq, 1_000));
    }
    let link_session = world.b.hub.session(world.link_conn).unwrap();
    let queued = link_session.queued_frames();
    let frame_len = 4 + relay::FORWARD_PREFIX_LEN + 1_000;
    assert_eq!(queued, (4 * 1024 * 1024 / frame_len).min(4096));
    let drops = world.b.hub.stats().drops;
    assert_eq!(drops.get(DropReason::MeshQueueFull), 10_000 - queued as u64);
    assert_eq!(drops.get(DropReason::QueueFull), 0);
    // The sender is unaffected; when the link reads again, the newest packets arrive.
    assert_eq!(
        world.b.hub.session(y).unwrap().state(),
        SessionState::Authenticated(node_id(Y))
    );
    world.b.peers.get_mut(&world.link_conn).unwrap().reading = true;
    world.b.peers.get_mut(&world.link_conn).unwrap().woken = true;
    world.b.pump(now);
    world.transfer();
    let got = seqs(&world.a.recv(x), node_id(Y));
    assert_eq!(got, (10_000 - queued as u64..10_000).collect::<Vec<_>>());
}

#[test]
fn a_newer_link_of_the_same_host_replaces_the_older() {
    let config = WsConfig::new();
    let mut world = World::new(&config);
    let now = world.now;
    let y = world.b.join(now, Y);
    let x = world.a.join(now, X);
    let old_conn = world.link_conn;
    let token = MeshKey::new(MESH_KEY).unwrap().token(
        HOST_A,
        HOST_B,
        &ChannelBinding::PLAIN,
        UNIX_NOW + 10,
    );
    let (new_link, new_conn) = open_link(&mut world.b, &config, now, &token);
    assert_eq!(world.b.hub.mesh_conn(&HOST_A), Some(new_conn));
    // The old link gets 4000 and answers it.
    world.transfer();
    assert_eq!(
        world.link.state(),
        MeshState::Closed(MeshCloseReason::PeerClosed(Some(CloseCode::REPLACED)))
    );
    assert_eq!(world.b.closed, [(old_conn, CloseReason::Replaced)]);
    world.b.hub.handle_disconnect(old_conn).unwrap();
    world.b.peers.remove(&old_conn);
    // Traffic flows on the new one.
    world.link = new_link;
    world.link_conn = new_conn;
    world.link_in.clear();
    world.transfer();
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
    world.send(y, X, &seq_packet(7, 100));
    world.transfer();
    assert_eq!(seqs(&world.a.recv(x), node_id(Y)), [7]);
    let stats = world.b.hub.stats();
    assert_eq!(
        (stats.mesh_sessions, stats.replaced, stats.mesh_accepted),
        (1, 1, 2)
    );
}

#[test]
fn keepalive_both_ways_and_the_pong_timeout() {
    let mut world = World::new(&WsConfig::new());
    // Quiet for 30 s: both ends ping, both answer, the link stays up.
    world.advance(Duration::from_secs(30));
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
    assert_eq!(world.link.stats().pings_sent, 1);
    assert_eq!(world.link.stats().pongs_sent, 1);
    let b_stats = world.b.hub.stats();
    assert_eq!((b_stats.pings_sent, b_stats.pongs_sent), (1, 1));
    world.advance(Duration::from_secs(20));
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
    // B goes silent (its host hangs): the link pings at 30 s and gives up 15 s later.
    let t = world.now;
    world.b.peers.get_mut(&world.link_conn).unwrap().reading = false;
    let next = world.link.poll_timeout().unwrap();
    assert_eq!(
        next,
        t + Duration::from_secs(10),
        "30 s after the last frame"
    );
    world.advance(Duration::from_secs(10));
    assert_eq!(
        world.link.poll_timeout(),
        Some(world.now + Duration::from_secs(15))
    );
    world
        .link
        .handle_timeout(world.now + Duration::from_secs(15));
    assert_eq!(
        world.link.state(),
        MeshState::Closed(MeshCloseReason::IdleTimeout)
    );
    let close = client_frames(&drain_link(&mut world.link));
    assert_eq!(close_code(&close), Some(CloseCode::GOING_AWAY));
    assert_eq!(world.link.stats().idle_timeouts, 1);
    assert_eq!(world.link.poll_timeout(), None);
}

#[test]
fn a_server_close_is_answered_and_a_local_close_waits_for_it() {
    let mut world = World::new(&WsConfig::new());
    world
        .b
        .hub
        .close(world.now, world.link_conn, CloseCode::GOING_AWAY)
        .unwrap();
    world.b.pump(world.now);
    world.transfer();
    assert_eq!(
        world.link.state(),
        MeshState::Closed(MeshCloseReason::PeerClosed(Some(CloseCode::GOING_AWAY)))
    );
    assert_eq!(
        world.b.closed,
        [(world.link_conn, CloseReason::Server(CloseCode::GOING_AWAY))],
        "B's close handshake completed"
    );

    let mut world = World::new(&WsConfig::new());
    assert!(world.link.close(world.now, CloseCode::new(1005)).is_err());
    world.link.close(world.now, CloseCode::NORMAL).unwrap();
    assert_eq!(world.link.state(), MeshState::Closing);
    world.transfer();
    assert_eq!(
        world.link.state(),
        MeshState::Closed(MeshCloseReason::Local(CloseCode::NORMAL))
    );
    assert_eq!(
        world.b.closed,
        [(
            world.link_conn,
            CloseReason::PeerClosed(Some(CloseCode::NORMAL))
        )]
    );
}

#[test]
fn drain_reaches_the_link_as_a_hint() {
    let mut world = World::new(&WsConfig::new());
    world.b.hub.start_draining();
    world.b.pump(world.now);
    world.transfer();
    assert_eq!(world.link_events.last(), Some(&MeshEvent::ReconnectHint));
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
}

/// A client that got its 101 and READY, fed bytes from a fake server.
fn open_client(config: WsConfig) -> MeshClient<TestRng> {
    let now = epoch();
    let mut link = MeshClient::new(
        config,
        "relay-b.test",
        "/relay",
        b"mesh.tok",
        now,
        NONCE,
        TestRng(3),
    )
    .unwrap();
    drain_link(&mut link);
    let mut input = response_101();
    input.extend_from_slice(&[0x82, 0x11, 0x07]);
    input.extend_from_slice(HOST_A.as_bytes());
    let first = link.handle_input(now, &mut input);
    let second = link.handle_input(now, &mut input[first.consumed()..]);
    assert_eq!(first.consumed() + second.consumed(), input.len());
    assert_eq!(link.state(), MeshState::Open(HOST_A));
    link
}

fn response_101() -> Vec<u8> {
    let accept = AcceptKey::derive(b"dGhlIHNhbXBsZSBub25jZQ==");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        std::str::from_utf8(accept.as_bytes()).unwrap()
    )
    .into_bytes()
}

#[test]
fn rfc6455_violations_by_the_server_fail_the_link() {
    let cap = WsConfig::new().max_mesh_message();
    let too_big = {
        let mut header = vec![0x82, 0x7f];
        header.extend_from_slice(&(cap as u64 + 1).to_be_bytes());
        header
    };
    let cases: Vec<(Vec<u8>, CloseCode, &str)> = vec![
        (
            vec![0x82, 0x81, 1, 2, 3, 4, 0x08],
            CloseCode::PROTOCOL_ERROR,
            "bad_frame",
        ), // masked
        (vec![0xc2, 0x00], CloseCode::PROTOCOL_ERROR, "bad_frame"), // RSV1
        (vec![0xa2, 0x00], CloseCode::PROTOCOL_ERROR, "bad_frame"), // RSV2
        (vec![0x83, 0x00], CloseCode::PROTOCOL_ERROR, "bad_frame"), // opcode 3
        (too_big, CloseCode::MESSAGE_TOO_BIG, "message_too_big"),
        (
            vec![0x80, 0x00],
            CloseCode::PROTOCOL_ERROR,
            "unexpected_continuation",
        ),
        (
            vec![0x02, 0x01, 0x08],
            CloseCode::UNSUPPORTED_DATA,
            "fragmented",
        ),
        (b"\x81\x02hi".to_vec(), CloseCode::UNSUPPORTED_DATA, "text"),
        (
            vec![0x88, 0x01, 0x03],
            CloseCode::PROTOCOL_ERROR,
            "bad_close",
        ),
        (
            [&[0x82, 0x11, 0x01][..], &X].concat(),
            CloseCode::POLICY_VIOLATION,
            "unexpected_message",
        ), // SEND
        (
            [&[0x82, 0x11, 0x07][..], &X].concat(),
            CloseCode::POLICY_VIOLATION,
            "unexpected_message",
        ), // a second READY
    ];
    for (bytes, code, label) in cases {
        let mut link = open_client(WsConfig::new());
        let mut input = bytes.clone();
        input.extend_from_slice(b"trailing junk");
        let consumed = link.handle_input(epoch(), &mut input);
        assert_eq!(consumed, MeshInput::Consumed(input.len()), "{bytes:02x?}");
        let MeshState::Closed(MeshCloseReason::PeerMisbehaved(violation)) = link.state() else {
            panic!("{bytes:02x?}: {:?}", link.state());
        };
        assert_eq!((violation.close_code(), violation.as_str()), (code, label));
        assert_eq!(
            close_code(&client_frames(&drain_link(&mut link))),
            Some(code)
        );
        assert_eq!(link.stats().protocol_errors, 1);
        assert!(
            link.poll_transmit(&mut [0; 8]).is_none(),
            "nothing after Close"
        );
    }
    // A FORWARD before READY is a violation too.
    let mut link = MeshClient::new(
        WsConfig::new(),
        "relay-b.test",
        "/relay",
        b"mesh.tok",
        epoch(),
        NONCE,
        TestRng(3),
    )
    .unwrap();
    let mut input = response_101();
    input.extend_from_slice(&[0x82, 0x21, 0x08]);
    input.extend_from_slice(&[0; 32]);
    let n = link.handle_input(epoch(), &mut input).consumed();
    let _ = link.handle_input(epoch(), &mut input[n..]);
    assert_eq!(
        link.state(),
        MeshState::Closed(MeshCloseReason::PeerMisbehaved(
            MeshViolation::UnexpectedMessage(MessageType::Forward)
        ))
    );
}

#[test]
fn unknown_and_malformed_messages_are_counted_and_ignored() {
    let mut link = open_client(WsConfig::new());
    let now = epoch();
    for bytes in [
        &[0x82, 0x03, 0x7f, 0x01, 0x02][..], // unknown type
        &[0x82, 0x00],                       // empty
        &[0x82, 0x05, 0x08, 1, 2, 3, 4],     // short FORWARD
    ] {
        let mut input = bytes.to_vec();
        assert_eq!(
            link.handle_input(now, &mut input),
            MeshInput::Consumed(bytes.len())
        );
    }
    assert_eq!((link.stats().unknown_types, link.stats().malformed), (1, 2));
    assert_eq!(link.state(), MeshState::Open(HOST_A));
    // Pings get the latest payload back, masked.
    let mut input = b"\x89\x01a\x89\x01b\x8a\x00".to_vec();
    let mut at = 0;
    while at < input.len() {
        at += link.handle_input(now, &mut input[at..]).consumed();
    }
    assert_eq!(
        client_frames(&drain_link(&mut link)),
        [(OpCode::Pong, b"b".to_vec())]
    );
}

#[test]
fn a_forward_split_across_reads_needs_more_then_delivers_in_place() {
    let mut link = open_client(WsConfig::new());
    let now = epoch();
    let message = [&[0x08][..], &X, &Y, b"packet"].concat();
    let mut wire = vec![0x82, message.len() as u8];
    wire.extend_from_slice(&message);
    for cut in 0..wire.len() {
        assert_eq!(
            link.handle_input(now, &mut wire[..cut].to_vec()),
            MeshInput::NeedMore,
            "cut {cut}"
        );
    }
    let mut input = wire.clone();
    let MeshInput::Deliver {
        dest,
        frame,
        consumed,
    } = link.handle_input(now, &mut input)
    else {
        panic!("no Deliver");
    };
    assert_eq!((dest, consumed), (node_id(X), wire.len()));
    assert_eq!(frame, 16..wire.len(), "[82 17] right before [02][src]");
    assert_eq!(
        input[frame],
        [&[0x82, 0x17, 0x02][..], &Y, b"packet"].concat()[..]
    );
}

#[test]
fn handshake_refusals() {
    let now = epoch();
    let with = |from: &str, to: &str| {
        String::from_utf8(response_101())
            .unwrap()
            .replace(from, to)
            .into_bytes()
    };
    let cases: Vec<(Vec<u8>, MeshHandshakeError)> = vec![
        (
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\n".to_vec(),
            MeshHandshakeError::Status(401),
        ),
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            MeshHandshakeError::Status(404),
        ),
        (
            with(
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            MeshHandshakeError::BadAccept,
        ),
        (
            with("Sec-WebSocket-Accept", "X-Accept"),
            MeshHandshakeError::BadAccept,
        ),
        (
            with(
                "Upgrade: websocket\r\n",
                "Upgrade: websocket\r\nSec-WebSocket-Accept: x\r\n",
            ),
            MeshHandshakeError::BadAccept,
        ),
        (
            with("Upgrade: websocket", "Upgrade: h2c"),
            MeshHandshakeError::NotWebSocket,
        ),
        (
            with("Connection: Upgrade", "Connection: close"),
            MeshHandshakeError::NoConnectionUpgrade,
        ),
        (
            with(
                "Upgrade: websocket\r\n",
                "Upgrade: websocket\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
            ),
            MeshHandshakeError::Unrequested,
        ),
        (with("HTTP/1.1", "HTTP/1.0"), MeshHandshakeError::Malformed),
        (
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            MeshHandshakeError::Malformed,
        ),
        (
            [
                &b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: "[..],
                &[b'a'; 8192],
            ]
            .concat(),
            MeshHandshakeError::TooLarge,
        ),
    ];
    for (response, expected) in cases {
        let mut link =
            MeshClient::new(WsConfig::new(), "r", "/relay", b"t", now, NONCE, TestRng(1)).unwrap();
        drain_link(&mut link);
        let mut input = response.clone();
        assert_eq!(
            link.handle_input(now, &mut input),
            MeshInput::Consumed(response.len())
        );
        assert_eq!(
            link.state(),
            MeshState::Closed(MeshCloseReason::Handshake(expected)),
            "{}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        );
        assert!(
            drain_link(&mut link).is_empty(),
            "no Close before a WebSocket"
        );
    }
    // The accept key is the RFC's for the RFC's nonce: the 101 above is accepted.
    let mut link =
        MeshClient::new(WsConfig::new(), "r", "/relay", b"t", now, NONCE, TestRng(1)).unwrap();
    assert!(drain_link(&mut link).starts_with(b"GET /relay HTTP/1.1\r\n"));
    let mut response = response_101();
    for cut in 0..response.len() {
        assert_eq!(
            link.handle_input(now, &mut response[..cut].to_vec()),
            MeshInput::NeedMore
        );
    }
    assert_eq!(
        link.handle_input(now, &mut response),
        MeshInput::Consumed(response.len())
    );
    // No READY in time.
    assert_eq!(link.poll_timeout(), Some(now + Duration::from_secs(10)));
    link.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(
        link.state(),
        MeshState::Closed(MeshCloseReason::ReadyTimeout)
    );
    assert_eq!(
        close_code(&client_frames(&drain_link(&mut link))),
        Some(CloseCode::GOING_AWAY)
    );
    // No 101 in time.
    let mut link =
        MeshClient::new(WsConfig::new(), "r", "/relay", b"t", now, NONCE, TestRng(1)).unwrap();
    link.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(
        link.state(),
        MeshState::Closed(MeshCloseReason::HandshakeTimeout)
    );
}

fn control_or_data_frame() -> impl Strategy<Value = Vec<u8>> {
    let message = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|tail| { [&[0x08][..], &X, &Y, &tail].concat() }),
    ];
    // Mostly final, unmasked binary frames, so FORWARDs get through to delivery.
    let opcode = prop_oneof![3 => Just(0x2u8), 1 => 0u8..16];
    let fin = prop_oneof![3 => Just(true), 1 => Just(false)];
    let mask = prop_oneof![3 => Just(false), 1 => Just(true)];
    (opcode, fin, mask, message).prop_map(|(op, fin, mask, payload)| {
        let payload = if op & 0x8 != 0 {
            payload[..payload.len().min(MAX_CONTROL_PAYLOAD)].to_vec()
        } else {
            payload
        };
        let mut out = vec![0u8; payload.len() + 14];
        let first = (if fin { 0x80 } else { 0 }) | op;
        out[0] = first;
        let len = if mask {
            encode_masked(fin, OpCode::Binary, [9, 9, 9, 9], &payload, &mut out).unwrap()
        } else {
            frame::encode_frame(OpCode::Binary, &payload, &mut out).unwrap()
        };
        out[0] = first;
        out.truncate(len);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes, from the first byte of the response on, never panic the client, and
    /// its consumption and delivery contract holds.
    #[test]
    fn random_bytes_never_panic(
        opened in any::<bool>(),
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                control_or_data_frame(),
            ],
            0..20,
        ),
        read in 1usize..300,
    ) {
        let now = epoch();
        let mut link = if opened {
            open_client(WsConfig::new().with_max_message(1024).unwrap())
        } else {
            MeshClient::new(WsConfig::new(), "r", "/relay", b"t", now, NONCE, TestRng(5)).unwrap()
        };
        let stream: Vec<u8> = chunks.concat();
        let mut buffer = Vec::new();
        let mut out = [0u8; 64];
        let mut now = now;
        for piece in stream.chunks(read) {
            now += Duration::from_secs(1);
            buffer.extend_from_slice(piece);
            loop {
                let len = buffer.len();
                let input = link.handle_input(now, &mut buffer);
                prop_assert!(input.consumed() <= len);
                if let MeshInput::Deliver { frame, consumed, .. } = &input {
                    prop_assert!(frame.end <= *consumed);
                    let header = FrameHeader::parse(&buffer[frame.clone()]).unwrap().unwrap();
                    prop_assert_eq!(header.frame_len(), Some(frame.len()));
                    prop_assert_eq!(buffer[frame.start + header.header_len], 0x02);
                }
                while link.poll_event().is_some() {}
                buffer.drain(..input.consumed());
                if input.consumed() == 0 || buffer.is_empty() {
                    break;
                }
            }
            while let Some(n) = link.poll_transmit(&mut out) {
                prop_assert!(n <= out.len());
            }
            link.handle_timeout(now);
        }
    }
}

/// PEER_GONE across hosts: B forwards Y's packet to A, where X is connected nowhere; A's
/// link tells B with GONE, and B sends Y a PEER_GONE, rate-limited per pair on both hosts.
#[test]
fn peer_gone_reaches_the_sender_on_the_other_host() {
    let mut world = World::new(&WsConfig::new());
    let y = world.b.join(world.now, Y);
    world.send(y, X, b"to a node that left host A");
    world.transfer();
    assert_eq!(world.delivered_to_a, [Delivery::Gone]);
    assert_eq!(world.link.stats().gone_sent, 1);
    assert_eq!(
        world.b.recv(y),
        [(OpCode::Binary, [&[0x03][..], &X].concat())],
        "Y learns that X is gone"
    );
    assert_eq!(world.b.hub.stats().peer_gone_sent, 1);
    // More packets within the interval: no more GONEs on the link, no more PEER_GONEs.
    for _ in 0..10 {
        world.send(y, X, b"again");
        world.transfer();
    }
    assert!(world.b.recv(y).is_empty());
    assert_eq!(world.link.stats().gone_sent, 1);
    assert_eq!(world.link.stats().gone_suppressed, 10);
    // After the interval, the next packet gets the next PEER_GONE.
    world.advance(Duration::from_secs(6));
    world.send(y, X, b"later");
    world.transfer();
    assert_eq!(world.link.stats().gone_sent, 2);
    assert!(
        world
            .b
            .recv(y)
            .contains(&(OpCode::Binary, [&[0x03][..], &X].concat()))
    );
    // The link stays up: GONE is the one message a mesh client may send.
    assert_eq!(world.link.state(), MeshState::Open(HOST_A));
}
