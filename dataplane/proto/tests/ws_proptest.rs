//! Property tests of the WebSocket relay: the parsers and the session never panic on
//! arbitrary input, and encoding round-trips through parsing.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use std::time::{Duration, Instant};

use boson_dataplane_proto::ws::frame::{
    self, FrameHeader, MAX_CLIENT_HEADER_LEN, MAX_CONTROL_PAYLOAD, OpCode, apply_mask,
};
use boson_dataplane_proto::ws::handshake;
use boson_dataplane_proto::ws::relay::{self, Message, node_id};
use boson_dataplane_proto::ws::{
    Hub, HubEvent, LocalOnly, Session, SessionEvent, SessionState, WsConfig,
};
use proptest::prelude::*;

const UPGRADE: &[u8] = b"GET /relay HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nAuthorization: Bearer t\r\n\r\n";

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

fn opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Continuation),
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Close),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

/// Payload lengths that hit every length encoding and its boundaries.
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..=130usize,
        Just(125usize),
        Just(126),
        Just(127),
        Just(0xFFFF),
        Just(0x1_0000),
        126..2_000usize,
    ]
}

/// Feeds `bytes` to `session` in `chunks`-sized reads, the way a shell would, checking the
/// consumption contract; drains everything after each read.
fn drive(session: &mut Session, now: Instant, bytes: &[u8], chunk: usize) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut out = [0u8; 512];
    for piece in bytes.chunks(chunk.max(1)) {
        buffer.extend_from_slice(piece);
        loop {
            let len = buffer.len();
            let consumed = session.handle_input(now, &mut buffer).unwrap();
            assert!(consumed <= len);
            while let Some(event) = session.poll_event() {
                if let SessionEvent::Packet { payload, .. } = event {
                    assert!(payload.end <= len && payload.start >= relay::PREFIX_LEN + 6);
                }
            }
            buffer.drain(..consumed);
            if consumed == 0 || buffer.is_empty() {
                break;
            }
        }
        while let Some(n) = session.poll_transmit(&mut out) {
            assert!(n <= out.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(Some(header)) = FrameHeader::parse(&bytes) {
            prop_assert!(header.header_len <= bytes.len());
            prop_assert!(header.header_len <= MAX_CLIENT_HEADER_LEN);
            prop_assert!(header.payload_len >> 63 == 0);
            if header.opcode.is_control() {
                prop_assert!(header.fin && header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            let _ = header.check_client(65_536);
        }
    }

    #[test]
    fn frame_round_trip(
        fin in any::<bool>(),
        opcode in opcode(),
        masked in any::<bool>(),
        mask in any::<[u8; 4]>(),
        len in payload_len(),
        seed in any::<u8>(),
    ) {
        let control = opcode.is_control();
        let len = if control { len.min(MAX_CONTROL_PAYLOAD) } else { len };
        let fin = fin || control;
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let mut out = vec![0u8; len + MAX_CLIENT_HEADER_LEN];
        let written = if masked {
            frame::encode_masked(fin, opcode, mask, &payload, &mut out).unwrap()
        } else {
            let header = frame::encode_header(fin, opcode, len, None, &mut out).unwrap();
            out[header..header + len].copy_from_slice(&payload);
            header + len
        };
        // Every strict prefix of the header is "need more".
        let header = FrameHeader::parse(&out[..written]).unwrap().unwrap();
        for cut in 0..header.header_len {
            prop_assert_eq!(FrameHeader::parse(&out[..cut]), Ok(None));
        }
        prop_assert_eq!(header.fin, fin);
        prop_assert_eq!(header.opcode, opcode);
        prop_assert_eq!(header.mask, masked.then_some(mask));
        prop_assert_eq!(header.payload_len, len as u64);
        prop_assert_eq!(header.header_len, frame::header_len(len, masked));
        prop_assert_eq!(header.frame_len(), Some(written));
        let mut body = out[header.header_len..written].to_vec();
        if let Some(mask) = header.mask {
            apply_mask(&mut body, mask);
        }
        prop_assert_eq!(body, payload);
    }

    #[test]
    fn mask_matches_the_bytewise_definition(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
        mask in any::<[u8; 4]>(),
    ) {
        let mut fast = bytes.clone();
        apply_mask(&mut fast, mask);
        let slow: Vec<u8> = bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn relay_parse_never_panics_and_send_round_trips(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        dest in any::<[u8; 16]>(),
        src in any::<[u8; 16]>(),
        packet in proptest::collection::vec(any::<u8>(), 0..300),
        mask in any::<[u8; 4]>(),
    ) {
        let _ = Message::parse(&bytes);
        let mut out = vec![0u8; packet.len() + 17 + MAX_CLIENT_HEADER_LEN];
        let len = relay::encode_send(&node_id(dest), &packet, mask, &mut out).unwrap();
        let header = FrameHeader::parse(&out[..len]).unwrap().unwrap();
        let message = header.header_len..len;
        apply_mask(&mut out[message.clone()], mask);
        prop_assert_eq!(
            Message::parse(&out[message.clone()]),
            Ok(Message::Send { dest: node_id(dest), packet: &packet })
        );
        let frame = relay::send_to_recv_in_place(&mut out, message, &node_id(src)).unwrap();
        let recv = FrameHeader::parse(&out[frame.clone()]).unwrap().unwrap();
        prop_assert_eq!(recv.mask, None);
        prop_assert_eq!(recv.frame_len(), Some(frame.len()));
        prop_assert_eq!(
            Message::parse(&out[frame.start + recv.header_len..frame.end]),
            Ok(Message::Recv { src: node_id(src), packet: &packet })
        );
        // The in-place RECV frame and the one the shell builds from a QUIC packet agree,
        // and both parse back to the source and packet.
        let mut built = Vec::new();
        relay::encode_recv_frame(&mut built, &node_id(src), &packet);
        prop_assert_eq!(&built[..], &out[frame]);
        prop_assert_eq!(
            relay::parse_recv_frame(&built),
            Some((node_id(src), &packet[..]))
        );
        let _ = relay::parse_recv_frame(&bytes);
    }

    #[test]
    fn handshake_parser_never_panics(
        prefix in 0..UPGRADE.len(),
        junk in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut request = UPGRADE[..prefix].to_vec();
        request.extend_from_slice(&junk);
        let _ = handshake::parse_request(&request, "/relay");
        let _ = handshake::parse_request(&junk, "/relay");
    }

    #[test]
    fn session_never_panics_before_the_upgrade(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        chunk in 1..64usize,
    ) {
        let t0 = epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        drive(&mut session, t0, &bytes, chunk);
        session.handle_timeout(t0 + Duration::from_secs(11));
        prop_assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn session_never_panics_on_arbitrary_frames(
        authenticate in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        frames in proptest::collection::vec(
            (opcode(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..8,
        ),
        chunk in 1..128usize,
        late in 0..100u64,
    ) {
        let t0 = epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        let mut input = UPGRADE.to_vec();
        // Some well-formed frames first, so the fuzzing reaches past the first error.
        for (opcode, fin, payload) in &frames {
            let mut out = vec![0u8; payload.len() + MAX_CLIENT_HEADER_LEN];
            let len = frame::encode_masked(*fin, *opcode, [1, 2, 3, 4], payload, &mut out).unwrap();
            input.extend_from_slice(&out[..len]);
        }
        input.extend_from_slice(&bytes);
        let mut head = UPGRADE.to_vec();
        drive(&mut session, t0, &head.split_off(0), UPGRADE.len());
        if authenticate {
            let _ = session.accept(t0, node_id([1; 16]));
        }
        drive(&mut session, t0, &input[UPGRADE.len()..], chunk);
        let later = t0 + Duration::from_secs(late);
        session.handle_timeout(later);
        if let Some(at) = session.poll_timeout() {
            prop_assert!(at > t0);
        }
        let mut out = [0u8; 64];
        while session.poll_transmit(&mut out).is_some() {}
        if session.state() == SessionState::Closed {
            prop_assert!(!session.has_transmit());
        }
    }

    #[test]
    fn hub_never_panics_and_keeps_its_books(
        script in proptest::collection::vec((0..3usize, 0..4u8, proptest::collection::vec(any::<u8>(), 0..60)), 0..40),
    ) {
        let t0 = epoch();
        let mut now = t0;
        let mut hub = Hub::new(WsConfig::new(), LocalOnly, t0);
        let conns: Vec<_> = (0..3).map(|_| hub.handle_connect(t0)).collect();
        let mut buffers = vec![Vec::new(); 3];
        for (i, conn) in conns.iter().enumerate() {
            buffers[i].extend_from_slice(UPGRADE);
            let input = hub.handle_input(t0, *conn, &mut buffers[i]).unwrap();
            buffers[i].drain(..input.consumed);
        }
        let mut pending = Vec::new();
        while let Some(event) = hub.poll_event() {
            if let HubEvent::Authenticate { conn, .. } = event {
                pending.push(conn);
            }
        }
        for (i, conn) in pending.into_iter().enumerate() {
            // Two connections claim the same node: the second replaces the first.
            hub.accept(t0, conn, node_id([(i as u8).min(1); 16])).unwrap();
        }
        let mut out = [0u8; 256];
        for (who, action, bytes) in script {
            let conn = conns[who];
            match action {
                0 => {
                    let mut message = vec![0x01];
                    message.extend_from_slice(&[bytes.first().copied().unwrap_or(0) % 3; 16]);
                    message.extend_from_slice(&bytes);
                    let mut frame = vec![0u8; message.len() + MAX_CLIENT_HEADER_LEN];
                    let len = frame::encode_masked(true, OpCode::Binary, [9; 4], &message, &mut frame).unwrap();
                    buffers[who].extend_from_slice(&frame[..len]);
                }
                1 => buffers[who].extend_from_slice(&bytes),
                2 => {
                    now += Duration::from_secs(u64::from(bytes.first().copied().unwrap_or(1)));
                    hub.handle_timeout(now);
                }
                _ => {
                    while hub.poll_transmit(conn, &mut out).is_some() {}
                }
            }
            if hub.session(conn).is_some() {
                loop {
                    let input = hub.handle_input(now, conn, &mut buffers[who]).unwrap();
                    buffers[who].drain(..input.consumed);
                    if input.consumed == 0 || buffers[who].is_empty() {
                        break;
                    }
                }
            }
            while hub.poll_event().is_some() {}
        }
        let stats = hub.stats();
        prop_assert_eq!(stats.sessions, 3);
        prop_assert!(stats.authenticated <= 2);
        for conn in conns {
            hub.handle_disconnect(conn).unwrap();
        }
        prop_assert_eq!(hub.stats().sessions, 0);
        prop_assert_eq!(hub.poll_timeout(), None);
    }
}
