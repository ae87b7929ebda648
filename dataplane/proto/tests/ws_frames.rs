//! RFC 6455 §5.7 framing examples, byte for byte, through the codec and a live session.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use std::time::Instant;

use boson_dataplane_proto::ws::frame::{
    self, CloseCode, FrameHeader, MAX_CLIENT_HEADER_LEN, OpCode, apply_mask, encode_frame,
    encode_masked,
};
use boson_dataplane_proto::ws::relay::{self, node_id};
use boson_dataplane_proto::ws::{Session, SessionEvent, SessionState, WsConfig};
use hex_literal::hex;

const MASK: [u8; 4] = hex!("37 fa 21 3d");

/// Parses one whole frame and returns its header and unmasked payload.
fn parse(bytes: &[u8]) -> (FrameHeader, Vec<u8>) {
    let header = FrameHeader::parse(bytes).unwrap().unwrap();
    assert_eq!(header.frame_len(), Some(bytes.len()));
    let mut payload = bytes[header.header_len..].to_vec();
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask);
    }
    (header, payload)
}

#[test]
fn single_frame_unmasked_text() {
    let wire = hex!("81 05 48 65 6c 6c 6f");
    let (header, payload) = parse(&wire);
    assert!(header.fin);
    assert_eq!(header.opcode, OpCode::Text);
    assert_eq!(header.mask, None);
    assert_eq!(payload, b"Hello");
    let mut out = [0u8; 16];
    let len = encode_frame(OpCode::Text, b"Hello", &mut out).unwrap();
    assert_eq!(out[..len], wire);
}

#[test]
fn single_frame_masked_text() {
    let wire = hex!("81 85 37 fa 21 3d 7f 9f 4d 51 58");
    let (header, payload) = parse(&wire);
    assert_eq!(header.mask, Some(MASK));
    assert_eq!(payload, b"Hello");
    let mut out = [0u8; 16];
    let len = encode_masked(true, OpCode::Text, MASK, b"Hello", &mut out).unwrap();
    assert_eq!(out[..len], wire);
}

#[test]
fn fragmented_unmasked_text() {
    let first = hex!("01 03 48 65 6c");
    let second = hex!("80 02 6c 6f");
    let (h1, p1) = parse(&first);
    let (h2, p2) = parse(&second);
    assert_eq!((h1.fin, h1.opcode), (false, OpCode::Text));
    assert_eq!((h2.fin, h2.opcode), (true, OpCode::Continuation));
    assert_eq!([p1, p2].concat(), b"Hello");
    let mut out = [0u8; 8];
    let len = frame::encode_header(false, OpCode::Text, 3, None, &mut out).unwrap();
    assert_eq!(out[..len], first[..2]);
}

#[test]
fn unmasked_ping_and_masked_pong() {
    let ping = hex!("89 05 48 65 6c 6c 6f");
    let pong = hex!("8a 85 37 fa 21 3d 7f 9f 4d 51 58");
    let (header, payload) = parse(&ping);
    assert_eq!(header.opcode, OpCode::Ping);
    assert_eq!(payload, b"Hello");
    let (header, payload) = parse(&pong);
    assert_eq!(header.opcode, OpCode::Pong);
    assert_eq!(payload, b"Hello");
    let mut out = [0u8; 16];
    let len = encode_frame(OpCode::Ping, b"Hello", &mut out).unwrap();
    assert_eq!(out[..len], ping);
    let len = encode_masked(true, OpCode::Pong, MASK, b"Hello", &mut out).unwrap();
    assert_eq!(out[..len], pong);
}

#[test]
fn binary_256_bytes_uses_the_16_bit_length() {
    let payload = [0x5Au8; 256];
    let mut out = vec![0u8; 4 + 256];
    let len = encode_frame(OpCode::Binary, &payload, &mut out).unwrap();
    assert_eq!(out[..4], hex!("82 7e 01 00"));
    let (header, parsed) = parse(&out[..len]);
    assert_eq!(header.header_len, 4);
    assert_eq!(parsed, payload);
}

#[test]
fn binary_64_kib_uses_the_64_bit_length() {
    let payload = vec![0xA5u8; 65_536];
    let mut out = vec![0u8; 10 + 65_536];
    let len = encode_frame(OpCode::Binary, &payload, &mut out).unwrap();
    assert_eq!(out[..10], hex!("82 7f 00 00 00 00 00 01 00 00"));
    let (header, parsed) = parse(&out[..len]);
    assert_eq!(header.payload_len, 65_536);
    assert_eq!(parsed, payload);
}

/// A session past the handshake and authenticated as node 0xAA…
fn authenticated(now: Instant) -> Session {
    let mut session = Session::new(WsConfig::new(), now);
    let mut upgrade = b"GET /relay HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nAuthorization: Bearer t\r\n\r\n"
        .to_vec();
    assert_eq!(session.handle_input(now, &mut upgrade), Ok(upgrade.len()));
    assert!(matches!(
        session.poll_event(),
        Some(SessionEvent::Authenticate { token: b"t" })
    ));
    session.accept(now, node_id([0xAA; 16])).unwrap();
    let mut sink = [0u8; 1024];
    while session.poll_transmit(&mut sink).is_some() {}
    session
}

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

#[test]
fn session_answers_the_rfc_ping_with_the_rfc_pong_payload() {
    let t0 = epoch();
    let mut session = authenticated(t0);
    // The client's ping must be masked; the server's pong is not.
    let mut ping = hex!("89 85 37 fa 21 3d 7f 9f 4d 51 58");
    assert_eq!(session.handle_input(t0, &mut ping), Ok(ping.len()));
    let mut out = [0u8; 32];
    let len = session.poll_transmit(&mut out).unwrap();
    assert_eq!(out[..len], hex!("8a 05 48 65 6c 6c 6f"));
}

#[test]
fn session_refuses_the_rfc_unmasked_client_frame() {
    let t0 = epoch();
    let mut session = authenticated(t0);
    let mut hello = hex!("81 05 48 65 6c 6c 6f");
    assert_eq!(session.handle_input(t0, &mut hello), Ok(hello.len()));
    let mut out = [0u8; 64];
    let len = session.poll_transmit(&mut out).unwrap();
    assert_eq!(out[..4], hex!("88 0b 03 ea"), "close 1002");
    assert_eq!(&out[4..len], b"bad_frame");
    assert_eq!(session.state(), SessionState::Closed);
}

#[test]
fn session_takes_a_64_kib_message_and_refuses_one_byte_more() {
    let t0 = epoch();
    let max = WsConfig::new().max_message();
    let packet = vec![7u8; max - relay::PREFIX_LEN];
    let mut input = vec![0u8; MAX_CLIENT_HEADER_LEN + max];
    let len = relay::encode_send(&node_id([0xBB; 16]), &packet, MASK, &mut input).unwrap();
    assert_eq!(len, input.len());
    let mut session = authenticated(t0);
    assert_eq!(session.handle_input(t0, &mut input), Ok(len));
    let Some(SessionEvent::Packet { dest, payload }) = session.poll_event() else {
        panic!("no packet");
    };
    assert_eq!(dest, node_id([0xBB; 16]));
    assert_eq!(input[payload], packet[..]);

    let mut too_big = vec![0u8; MAX_CLIENT_HEADER_LEN + max + 1];
    relay::encode_send(&node_id([0xBB; 16]), &[7; 65_520], MASK, &mut too_big).unwrap();
    let mut session = authenticated(t0);
    // Refused from the header alone: the payload never needs to arrive.
    assert_eq!(
        session.handle_input(t0, &mut too_big[..MAX_CLIENT_HEADER_LEN]),
        Ok(MAX_CLIENT_HEADER_LEN)
    );
    let mut out = [0u8; 64];
    session.poll_transmit(&mut out).unwrap();
    assert_eq!(
        u16::from_be_bytes([out[2], out[3]]),
        CloseCode::MESSAGE_TOO_BIG.get()
    );
}
