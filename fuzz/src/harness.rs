//! The body of every fuzz target, as a plain `fn(&[u8])`.
//!
//! The libFuzzer binaries in `fuzz_targets/` call these functions, and so does the stable
//! replay test `dataplane/proto/tests/fuzz_corpus.rs`, which includes this file by path and
//! runs every committed corpus file through it. A function panics if and only if it found a
//! bug: a crash, an out-of-bounds range, or a broken invariant. The structured targets
//! (`turn_server`, `ws_session`) decode their input with [`Unstructured`], so their corpus
//! files are plain bytes too.
//!
//! Only the crate's public API is used, the way a shell would use it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use boson_dataplane_proto::quic::wire;
use boson_dataplane_proto::stun::{
    ATTR_HEADER_LEN, AttrType, Attribute, Class, EncodeError, Encoder, ErrorCodeAttr, HEADER_LEN,
    Header, IntegrityKey, LongTermKey, MappedAddress, Message, MessageType, Method, Nonce,
    PacketKind, Realm, Software, Trailer, TransactionId, UnknownAttributes, Username,
    XorMappedAddress, classify,
};
use boson_dataplane_proto::testing::XorShift;
use boson_dataplane_proto::turn::attr::{
    Data, EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayedAddress,
};
use boson_dataplane_proto::turn::channel_data::{self, ChannelData};
use boson_dataplane_proto::turn::stream;
use boson_dataplane_proto::ws::frame::{
    self, ClosePayload, FrameHeader, MAX_CLIENT_HEADER_LEN, MAX_CONTROL_PAYLOAD,
    MAX_SERVER_HEADER_LEN, OpCode,
};
use boson_dataplane_proto::ws::handshake::{
    self, AcceptKey, MAX_HEADER_BLOCK, MAX_RESPONSE_LEN, MAX_TOKEN_LEN,
};
use boson_dataplane_proto::ws::relay::{self, MessageType as RelayType, PREFIX_LEN};
use boson_dataplane_proto::ws::{
    ConnId, DEFAULT_MAX_MESSAGE, DEFAULT_PATH, Delivery, Forward, Hub, HubError, HubEvent,
    MeshClient, MeshEvent, MeshInput, MeshState, SessionError, WsConfig,
};
use boson_dataplane_proto::{
    BindingConfig, BindingOutcome, ChannelNumber, ClientAction, ClientAddr, Command, HEADROOM,
    PeerAction, PeerAddr, PeerFilter, RelayPort, Server, StunServer, TurnConfig, TurnEvent,
};
use boson_shared::{Cidr, NodeId, TurnCredential, TurnSecret};
use rand_core::RngCore;

/// A target's body: panics if and only if the input exposes a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay: `corpus/<name>/*` goes through the function.
pub const TARGETS: &[(&str, Target)] = &[
    ("stun_parse", stun_parse),
    ("channel_data", channel_data),
    ("turn_stream", turn_stream),
    ("turn_server", turn_server),
    ("ws_frame", ws_frame),
    ("ws_handshake", ws_handshake),
    ("ws_session", ws_session),
    ("relay_message", relay_message),
    ("quic_wire", quic_wire),
    ("mesh_client", mesh_client),
];

/// The fixed short-term key `stun_parse` verifies MESSAGE-INTEGRITY with: RFC 5769's, so the
/// committed RFC vectors take the success path.
const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

// ---------------------------------------------------------------------------------------------
// stun_parse

/// STUN: `Message::parse`, attribute iteration, every typed decoder on every value (with an
/// encode/decode round trip), FINGERPRINT and MESSAGE-INTEGRITY checks, a re-encode of the
/// attributes that count, and the Binding responder.
pub fn stun_parse(data: &[u8]) {
    binding_responder(data);
    let _ = classify(data);
    if let Ok(message) = Message::parse(data) {
        check_message(data, &message);
    } else if let Ok(header) = Header::parse(data) {
        // Stream framing: a TCP shell cuts `message_len` bytes and parses those.
        if let Some(frame) = data.get(..header.message_len())
            && let Ok(message) = Message::parse(frame)
        {
            check_message(frame, &message);
        }
    }
}

fn binding_responder(data: &[u8]) {
    let src = ClientAddr::new(SocketAddr::from(([192, 0, 2, 1], 32853)));
    let config = BindingConfig::new().with_software(Software::new("fuzz").expect("short"));
    let mut server = StunServer::new(config);
    let mut out = [0u8; 576];
    match server.handle_datagram(src, data, &mut out) {
        BindingOutcome::Reply { dst, len } => {
            assert_eq!(dst, src, "a Binding reply goes back to its source");
            let reply = out
                .get(..len)
                .expect("reply length within the output buffer");
            let reply = Message::parse(reply).expect("the Binding responder writes valid STUN");
            assert!(reply.class().is_response());
            if reply.has_fingerprint() {
                reply.verify_fingerprint().expect("own FINGERPRINT checks");
            }
        }
        BindingOutcome::Absorb | BindingOutcome::Drop(_) => {}
    }
}

fn check_message(bytes: &[u8], message: &Message<'_>) {
    assert_eq!(message.as_bytes(), bytes);
    assert_eq!(message.header().message_len(), bytes.len());
    let tid = message.transaction_id();
    let mut end = HEADER_LEN;
    for raw in message.attributes() {
        assert!(raw.offset() >= end, "attributes are in wire order");
        let start = raw.offset() + ATTR_HEADER_LEN;
        let value_end = start + raw.value().len();
        assert_eq!(bytes.get(start..value_end), Some(raw.value()));
        end = value_end;
        decode_everything(raw.value(), &tid);
    }
    let _ = format!("{message:?}");
    for attr in message.unknown_comprehension_required(|t| t.is_stun() || t.is_turn()) {
        assert!(attr.is_comprehension_required());
    }
    let _ = message.get::<Username<'_>>();
    let _ = message.get::<Realm<'_>>();
    let _ = message.get::<Nonce<'_>>();
    let _ = message.get::<Software<'_>>();
    let _ = message.get::<ErrorCodeAttr<'_>>();
    let _ = message.get::<UnknownAttributes<'_>>();
    let _ = message.get::<XorMappedAddress>();
    let _ = message.get::<XorPeerAddress>();
    let _ = message.get::<Lifetime>();
    let _ = message.get::<ChannelNumber>();
    let _ = message.get::<Data<'_>>();
    let _ = message.verify_fingerprint();
    let short_term = IntegrityKey::short_term(SHORT_TERM_PASSWORD);
    if message.verify_integrity(short_term).is_ok() {
        assert!(message.has_integrity());
    }
    let long_term = LongTermKey::derive("user", "realm", "password");
    let _ = message.verify_integrity(long_term.as_integrity_key());
    reencode(message);
}

/// Decodes `value` as every typed attribute; whatever decodes must survive an encode/decode
/// round trip unchanged.
fn decode_everything(value: &[u8], tid: &TransactionId) {
    macro_rules! round_trip {
        ($($ty:ty),* $(,)?) => {$(
            if let Ok(decoded) = <$ty>::decode(value, tid) {
                let mut buf = vec![0u8; decoded.value_len()];
                decoded.encode_value(tid, &mut buf);
                let again = <$ty>::decode(&buf, tid).expect("a re-encoded attribute decodes");
                assert_eq!(again, decoded, "attribute round trip");
            }
        )*};
    }
    round_trip!(
        MappedAddress,
        XorMappedAddress,
        Username<'_>,
        Realm<'_>,
        Nonce<'_>,
        Software<'_>,
        ErrorCodeAttr<'_>,
        UnknownAttributes<'_>,
        Lifetime,
        XorPeerAddress,
        XorRelayedAddress,
        Data<'_>,
        RequestedTransport,
        RequestedAddressFamily,
        EvenPort,
        ReservationToken,
        ChannelNumber,
    );
}

/// Whether `attr` is one of the trailer attributes whose position matters.
fn is_trailer(attr: AttrType) -> bool {
    attr == AttrType::MESSAGE_INTEGRITY
        || attr == AttrType::MESSAGE_INTEGRITY_SHA256
        || attr == AttrType::FINGERPRINT
}

/// Re-encodes the attributes that count with a fresh MESSAGE-INTEGRITY and FINGERPRINT: the
/// encoder's output must parse back to the same attributes and verify.
fn reencode(message: &Message<'_>) {
    let kept: Vec<(AttrType, &[u8])> = message
        .attributes()
        .filter(|raw| !is_trailer(raw.attr()))
        .map(|raw| (raw.attr(), raw.value()))
        .collect();
    let mut buf = vec![0u8; message.as_bytes().len() + 32];
    let mut enc = Encoder::new(&mut buf, message.message_type(), message.transaction_id())
        .expect("room for the header");
    for &(attr, value) in &kept {
        enc.add_raw(attr, value)
            .expect("a subset of a parsed message fits its buffer");
    }
    let key = IntegrityKey::short_term(b"fuzz");
    let len = match enc.finish(Trailer::new().with_integrity(key).with_fingerprint()) {
        Ok(len) => len,
        Err(EncodeError::MessageTooLong { .. }) => return,
        Err(err) => panic!("re-encoding failed: {err:?}"),
    };
    let again = Message::parse(&buf[..len]).expect("the encoder writes messages that parse");
    assert_eq!(again.message_type(), message.message_type());
    assert_eq!(again.transaction_id(), message.transaction_id());
    again
        .verify_integrity(key)
        .expect("own MESSAGE-INTEGRITY checks");
    again.verify_fingerprint().expect("own FINGERPRINT checks");
    let got: Vec<(AttrType, &[u8])> = again
        .attributes()
        .filter(|raw| !is_trailer(raw.attr()))
        .map(|raw| (raw.attr(), raw.value()))
        .collect();
    assert_eq!(got, kept, "re-encoded attributes");
}

// ---------------------------------------------------------------------------------------------
// channel_data

/// TURN ChannelData framing: `ChannelData::parse`, checked against the datagram.
pub fn channel_data(data: &[u8]) {
    let Ok(parsed) = ChannelData::parse(data) else {
        return;
    };
    assert_eq!(classify(data), PacketKind::ChannelData);
    assert_eq!(parsed.payload.start, channel_data::HEADER_LEN);
    assert!(
        parsed.payload.end <= data.len(),
        "payload within the datagram"
    );
    assert!(
        data.len() - parsed.payload.end <= 3,
        "at most 3 padding bytes"
    );
    let len = u16::try_from(parsed.payload.len()).expect("a 16-bit length field");
    assert_eq!(
        channel_data::encode_header(parsed.number, len),
        data[..channel_data::HEADER_LEN]
    );
}

// ---------------------------------------------------------------------------------------------
// turn_stream

/// STUN/TURN over a stream: the first byte picks the read size (1..=64) and the frame bound
/// (64..=4096); the rest is the stream. The frames `Reassembler` cuts from those reads, and
/// where it closes, must not depend on the read size: they equal what `frame_len` gives when
/// walking the whole stream at once. Nothing it holds exceeds the bound.
pub fn turn_stream(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x3F) + 1;
    let max = 64 << (first >> 6);
    // The reference: walk the stream with `frame_len`.
    let mut expected = Vec::new();
    let mut expected_close = None;
    let mut at = 0;
    loop {
        match stream::frame_len(&stream[at..], max) {
            Ok(Some(len)) if at + len <= stream.len() => {
                assert!(len >= channel_data::HEADER_LEN && len <= max, "{len}");
                expected.push(&stream[at..at + len]);
                at += len;
            }
            Ok(_) => break,
            Err(reason) => {
                expected_close = Some(reason);
                break;
            }
        }
    }
    let mut reassembler = stream::Reassembler::new(max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut close = None;
    let mut rest = stream;
    'feed: loop {
        while let Some(frame) = reassembler.poll_frame() {
            match frame {
                Ok(frame) => got.push(frame.to_vec()),
                Err(reason) => {
                    close = Some(reason);
                    break 'feed;
                }
            }
        }
        assert!(reassembler.buffered() <= max, "bounded");
        if rest.is_empty() {
            break;
        }
        let spare = reassembler.spare();
        assert!(!spare.is_empty(), "an open connection always has room");
        let n = chunk.min(rest.len()).min(spare.len());
        spare[..n].copy_from_slice(&rest[..n]);
        reassembler.handle_read(n);
        rest = &rest[n..];
    }
    assert_eq!(got, expected, "frames independent of the read size");
    assert_eq!(close, expected_close, "the close reason too");
}

// ---------------------------------------------------------------------------------------------
// ws_frame

/// RFC 6455 frames: header parse (prefix by prefix), the header encoder round trip, the
/// server-side checks, unmasking, and the payload decoders a session applies.
pub fn ws_frame(data: &[u8]) {
    let header = match FrameHeader::parse(data) {
        Ok(Some(header)) => header,
        Ok(None) => {
            assert!(
                data.len() < MAX_CLIENT_HEADER_LEN,
                "needs more with a whole header"
            );
            return;
        }
        Err(err) => {
            let _ = err.close_code();
            return;
        }
    };
    assert!(header.header_len <= data.len());
    assert!(header.header_len <= MAX_CLIENT_HEADER_LEN);
    if header.opcode.is_control() {
        assert!(header.fin, "control frames are never fragmented");
        assert!(header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
    }
    for len in 0..header.header_len {
        assert_eq!(
            FrameHeader::parse(&data[..len]),
            Ok(None),
            "a prefix of a valid header is incomplete, not an error"
        );
    }
    assert_eq!(
        FrameHeader::parse(&data[..header.header_len]),
        Ok(Some(header))
    );
    if let Ok(payload_len) = usize::try_from(header.payload_len) {
        assert_eq!(
            frame::header_len(payload_len, header.mask.is_some()),
            header.header_len
        );
        let mut out = [0u8; MAX_CLIENT_HEADER_LEN];
        let len = frame::encode_header(
            header.fin,
            header.opcode,
            payload_len,
            header.mask,
            &mut out,
        )
        .expect("room for any header");
        assert_eq!(out[..len], data[..header.header_len], "header round trip");
    }
    let _ = header.check_client(125);
    // The mesh client's mirror of the rule: unmasked, and within the mesh cap.
    let mesh_cap = DEFAULT_MAX_MESSAGE + relay::NODE_ID_LEN;
    assert_eq!(
        header.check_server(mesh_cap).is_ok(),
        header.mask.is_none() && header.payload_len <= mesh_cap as u64
    );
    if header.check_client(DEFAULT_MAX_MESSAGE).is_err() {
        return;
    }
    let (Some(key), Some(end)) = (header.mask, header.frame_len()) else {
        return;
    };
    let Some(masked) = data.get(header.header_len..end) else {
        return;
    };
    let mut payload = masked.to_vec();
    frame::apply_mask(&mut payload, key);
    for (i, (&plain, &wire)) in payload.iter().zip(masked).enumerate() {
        assert_eq!(plain, wire ^ key[i % 4], "unmasking at {i}");
    }
    // A client encoder reproduces the frame byte for byte.
    let mut out = vec![0u8; end];
    let len = frame::encode_masked(header.fin, header.opcode, key, &payload, &mut out)
        .expect("room for the frame");
    assert_eq!(out[..len], data[..end], "masked frame round trip");
    match header.opcode {
        OpCode::Close => {
            if let Ok(close) = ClosePayload::parse(&payload) {
                let mut out = [0u8; 2 + MAX_CONTROL_PAYLOAD];
                if let Some(code) = close.code {
                    let len = frame::encode_close(code, close.reason, &mut out).expect("fits");
                    assert_eq!(out[2..len], payload[..len - 2]);
                }
            }
        }
        OpCode::Binary => relay_message(&payload),
        OpCode::Continuation | OpCode::Text | OpCode::Ping | OpCode::Pong => {}
    }
}

// ---------------------------------------------------------------------------------------------
// ws_handshake

/// The HTTP upgrade: `handshake::parse_request`, its incremental contract, and the responses.
pub fn ws_handshake(data: &[u8]) {
    for path in [DEFAULT_PATH, "/"] {
        check_request(data, path);
    }
}

fn check_request(data: &[u8], path: &str) {
    let mut out = [0u8; MAX_RESPONSE_LEN];
    match handshake::parse_request(data, path) {
        Ok(Some(request)) => {
            assert!(request.len <= data.len().min(MAX_HEADER_BLOCK));
            if let Some(token) = request.token {
                assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
                let within = data.as_ptr_range();
                assert!(
                    within.start <= token.as_ptr() && token.as_ptr_range().end <= within.end,
                    "the token borrows the request"
                );
            }
            assert_eq!(
                handshake::parse_request(&data[..request.len], path),
                Ok(Some(request)),
                "bytes after the request do not matter"
            );
            assert_eq!(
                handshake::parse_request(&data[..request.len - 1], path),
                Ok(None),
                "a request cut short is incomplete, not refused"
            );
            handshake::write_response(&request.accept, &mut out).expect("a 101 fits");
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_BLOCK),
        Err(err) => {
            handshake::write_error(err.status(), &mut out).expect("an error response fits");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// relay_message

/// The relay framing: `relay::Message::parse`, and the encoders that rebuild what it parsed.
pub fn relay_message(data: &[u8]) {
    let Ok(message) = relay::Message::parse(data) else {
        return;
    };
    let me = node(0xEE);
    match message {
        relay::Message::Send { dest, packet } => {
            assert_eq!(packet, &data[PREFIX_LEN..]);
            // The hub's rewrite: SEND → RECV in place, behind a server header.
            let mut buf = vec![0u8; MAX_SERVER_HEADER_LEN + data.len()];
            buf[MAX_SERVER_HEADER_LEN..].copy_from_slice(data);
            let end = buf.len();
            let range = relay::send_to_recv_in_place(&mut buf, MAX_SERVER_HEADER_LEN..end, &me)
                .expect("a SEND with headroom becomes a RECV frame");
            let payload = server_frame_payload(&buf[range]);
            assert_eq!(
                relay::Message::parse(payload),
                Ok(relay::Message::Recv { src: me, packet })
            );
            // A client's SEND frame carries the same message.
            let mut out = vec![0u8; MAX_CLIENT_HEADER_LEN + data.len()];
            let len = relay::encode_send(&dest, packet, [1, 2, 3, 4], &mut out).expect("fits");
            let header = FrameHeader::parse(&out[..len])
                .expect("valid")
                .expect("complete");
            assert_eq!(header.frame_len(), Some(len));
            let mut payload = out[header.header_len..len].to_vec();
            frame::apply_mask(&mut payload, header.mask.expect("client frames are masked"));
            assert_eq!(payload, data);
        }
        relay::Message::Recv { src, packet } => {
            assert_eq!(packet, &data[PREFIX_LEN..]);
            let mut buf = vec![0u8; relay::HEADROOM + packet.len()];
            buf[relay::HEADROOM..].copy_from_slice(packet);
            let end = buf.len();
            let range = relay::encode_recv(&mut buf, relay::HEADROOM..end, &src)
                .expect("a packet with headroom becomes a RECV frame");
            assert_eq!(server_frame_payload(&buf[range]), data);
        }
        relay::Message::PeerGone(id) => notice_round_trip(data, RelayType::PeerGone, Some(&id)),
        relay::Message::PeerPresent(id) => {
            notice_round_trip(data, RelayType::PeerPresent, Some(&id));
        }
        relay::Message::Ready(id) => notice_round_trip(data, RelayType::Ready, Some(&id)),
        relay::Message::ReconnectHint => notice_round_trip(data, RelayType::ReconnectHint, None),
        relay::Message::Auth { token } => {
            assert_eq!(token, &data[1..]);
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
        }
        relay::Message::Forward { dest, src, packet } => {
            assert_eq!(packet, &data[relay::FORWARD_PREFIX_LEN..]);
            // The mesh client's rewrite: FORWARD → RECV in place, behind a server header.
            let mut buf = vec![0u8; MAX_SERVER_HEADER_LEN + data.len()];
            buf[MAX_SERVER_HEADER_LEN..].copy_from_slice(data);
            let end = buf.len();
            let (to, range) = relay::forward_to_recv_in_place(&mut buf, MAX_SERVER_HEADER_LEN..end)
                .expect("a FORWARD with headroom becomes a RECV frame");
            assert_eq!(to, dest);
            let recv = server_frame_payload(&buf[range]).to_vec();
            assert_eq!(
                relay::Message::parse(&recv),
                Ok(relay::Message::Recv { src, packet })
            );
            // The hub's splice rebuilds the FORWARD frame from that RECV payload.
            let mut head = [0u8; relay::MAX_FORWARD_HEAD];
            let len = relay::encode_forward_head(&dest, recv.len(), &mut head);
            let mut wire = head[..len].to_vec();
            wire.extend_from_slice(&recv[1..]);
            assert_eq!(server_frame_payload(&wire), data);
        }
        relay::Message::Gone { dest, src } => {
            assert_eq!(relay::encode_gone(&dest, &src)[..], data[..]);
        }
    }
}

fn notice_round_trip(data: &[u8], kind: RelayType, id: Option<&NodeId>) {
    let mut out = [0u8; relay::MAX_NOTICE_FRAME];
    let len = relay::encode_notice(kind, id, &mut out);
    assert_eq!(server_frame_payload(&out[..len]), data);
}

/// The payload of one complete, final, unmasked binary frame: what a server sends.
fn server_frame_payload(bytes: &[u8]) -> &[u8] {
    let header = FrameHeader::parse(bytes)
        .expect("a valid server frame")
        .expect("a complete header");
    assert!(header.fin && header.mask.is_none() && header.opcode == OpCode::Binary);
    assert_eq!(header.frame_len(), Some(bytes.len()));
    &bytes[header.header_len..]
}

/// A node id with every byte `n`.
fn node(n: u8) -> NodeId {
    relay::node_id([n; 16])
}

// ---------------------------------------------------------------------------------------------
// quic_wire

/// The QUIC relay's framing: the control stream split into frames as the relay splits it
/// (`wire::parse_control`), each frame re-encoded to the same bytes and its message parsed;
/// and the whole input as a DATAGRAM payload, where a SEND re-encodes to the same bytes.
pub fn quic_wire(data: &[u8]) {
    let mut rest = data;
    loop {
        match wire::parse_control(rest) {
            Ok(Some((message, frame_len))) => {
                assert!(!message.is_empty() && message.len() <= wire::MAX_CONTROL_MESSAGE);
                assert_eq!(frame_len, wire::CONTROL_HEADER_LEN + message.len());
                assert!(frame_len <= rest.len() && frame_len <= wire::MAX_CONTROL_FRAME);
                let mut again = Vec::new();
                wire::encode_control(message, &mut again).expect("a parsed message re-encodes");
                assert_eq!(again, &rest[..frame_len]);
                // What the relay does with a control message: only AUTH is expected.
                let _ = relay::Message::parse(message);
                rest = &rest[frame_len..];
            }
            Ok(None) => {
                // Incomplete: a header cut short, or a body shorter than its length.
                let whole = rest.get(..wire::CONTROL_HEADER_LEN).map(|len| {
                    wire::CONTROL_HEADER_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]))
                });
                assert!(whole.is_none_or(|whole| whole > rest.len()));
                break;
            }
            Err(error) => {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                assert!(
                    (len == 0 && error == wire::ControlError::Empty)
                        || (len > wire::MAX_CONTROL_MESSAGE
                            && error == wire::ControlError::TooLong(len))
                );
                break;
            }
        }
    }
    if let Ok(relay::Message::Send { dest, packet }) = relay::Message::parse(data) {
        let mut out = Vec::new();
        wire::encode_datagram(RelayType::Send, &dest, packet, &mut out);
        assert_eq!(out, data, "a SEND datagram re-encodes to itself");
    }
}

// ---------------------------------------------------------------------------------------------
// turn_server

const TURN_REALM: &str = "fuzz.example";
const TURN_SECRET: &str = "fuzz secret";
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const FIRST_PORT: u16 = 50_000;
const PORT_COUNT: u16 = 6;
/// Unix time when the run starts.
const UNIX_START: u64 = 1_700_000_000;
/// Ops per run: enough for allocate → permit → relay → expire, small enough to stay fast.
const MAX_OPS: usize = 256;

/// The clients: IPv4 ones with long-lived credentials, one whose credential expires after a
/// minute, and an IPv6 one.
const CLIENTS: [(SocketAddr, &str, u64); 4] = [
    (v4(192, 0, 2, 1, 4000), "alice", UNIX_START + 1_000_000),
    (v4(192, 0, 2, 2, 4001), "bob", UNIX_START + 1_000_000),
    (v4(192, 0, 2, 3, 4002), "carol", UNIX_START + 60),
    (
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            4003,
        ),
        "dave",
        UNIX_START + 1_000_000,
    ),
];

/// The peers: two IPs (one with two ports), one the filter denies, an IPv6 one and the relay's
/// own address.
const PEERS: [SocketAddr; 6] = [
    v4(198, 51, 100, 1, 1000),
    v4(198, 51, 100, 2, 2000),
    v4(198, 51, 100, 2, 2001),
    v4(10, 0, 0, 1, 3000),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        5000,
    ),
    v4(203, 0, 113, 1, 50_000),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

/// One step of a TURN run.
#[derive(Debug, Arbitrary)]
enum TurnOp {
    /// Arbitrary bytes from a client.
    Raw {
        client: u8,
        bytes: Vec<u8>,
    },
    /// A well-formed STUN message from a client.
    Stun(StunOp),
    /// Shortcuts to the states worth exploring: an authenticated Allocate, CreatePermission
    /// or ChannelBind for one of the peers, and a Send indication to one.
    Allocate {
        client: u8,
    },
    Permit {
        client: u8,
        peer: u8,
    },
    Bind {
        client: u8,
        peer: u8,
        channel: u8,
    },
    SendTo {
        client: u8,
        peer: u8,
        len: u8,
    },
    /// A ChannelData frame from a client.
    ChannelData {
        client: u8,
        channel: ChannelChoice,
        len: u8,
        padding: u8,
    },
    /// A datagram from a peer on a relay port.
    Peer {
        port: u8,
        peer: u8,
        len: u16,
        spare: u8,
    },
    /// Time passes; with `step`, the timer fires at every deadline on the way, as a shell's
    /// would, otherwise once at the end (a late timer).
    Advance {
        millis: u32,
        step: bool,
    },
    /// The wall clock jumps.
    WallClock {
        seconds: i16,
    },
    /// The shell could not bind the relay ports the previous step asked for.
    FailBind,
    /// Administrative drain.
    Drain,
    /// The control plane denies one peer's IP, or (`None`) lifts every denial.
    PeerFilter {
        deny: Option<u8>,
    },
    /// The control plane changes the per-user quota.
    Quota {
        per_user: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct StunOp {
    client: u8,
    method: MethodChoice,
    indication: bool,
    auth: AuthChoice,
    fingerprint: bool,
    /// A small transaction-id space, so retransmissions happen.
    tid: u8,
    attrs: Vec<AttrChoice>,
}

impl StunOp {
    /// An authenticated request with fingerprint.
    fn shortcut(client: u8, method: MethodChoice, attrs: Vec<AttrChoice>) -> Self {
        Self {
            client,
            method,
            indication: false,
            auth: AuthChoice::Valid,
            fingerprint: true,
            tid: 0,
            attrs,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum MethodChoice {
    Binding,
    Allocate,
    Refresh,
    Send,
    Data,
    CreatePermission,
    ChannelBind,
    Other(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum AuthChoice {
    /// No credentials.
    None,
    /// The client's REST credential and the latest nonce (retried once on 401/438).
    Valid,
    /// The client's username and nonce, MESSAGE-INTEGRITY under a wrong key.
    WrongKey,
    /// Valid credentials with a nonce the server never issued.
    ForeignNonce,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ChannelChoice {
    /// One of a few numbers, so binds and frames meet.
    Small(u8),
    Any(u16),
}

impl ChannelChoice {
    fn number(self) -> u16 {
        match self {
            Self::Small(n) => 0x4000 + u16::from(n % 4),
            Self::Any(n) => n,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum AttrChoice {
    RequestedTransport(u8),
    Udp,
    Lifetime(u32),
    Peer(u8),
    PeerAny {
        ip: [u8; 4],
        port: u16,
    },
    Channel(ChannelChoice),
    Data(Vec<u8>),
    EvenPort(bool),
    /// The last RESERVATION-TOKEN the server handed out, if any.
    LastToken,
    Token([u8; 8]),
    Family(u8),
    DontFragment,
    Raw {
        attr: u16,
        value: Vec<u8>,
    },
}

#[allow(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; only differences from it matter"
)]
fn time_origin() -> Instant {
    Instant::now()
}

/// The client side of a TURN run plus what the harness learned from the server's answers,
/// against which relaying is checked.
struct TurnRun {
    server: Server<XorShift>,
    now: Instant,
    unix_now: u64,
    credentials: Vec<TurnCredential>,
    nonces: [Option<String>; CLIENTS.len()],
    token: Option<ReservationToken>,
    /// Shortcut requests sent, for fresh transaction ids.
    requests: u32,
    /// Relay ports bound by `CreateAllocation` and not yet freed.
    bound: BTreeSet<u16>,
    /// Ports the last step asked to bind.
    just_bound: Vec<u16>,
    /// (client, relay port) pairs of every successful Allocate.
    allocated: BTreeSet<(SocketAddr, u16)>,
    /// (client, peer IP) pairs of every successful CreatePermission or ChannelBind since the
    /// IP was last denied.
    permitted: BTreeSet<(SocketAddr, IpAddr)>,
    /// Relay ports of the allocations reported created and not yet ended.
    reported: BTreeSet<u16>,
}

/// TURN: a `Server` driven by clients, peers, time and the control plane's settings. Checks
/// that replies and relayed ranges are within their buffers, replies are valid STUN, relay
/// commands and allocation events pair up, and nothing is relayed in either direction for a
/// client and peer IP without a successful CreatePermission or ChannelBind since the peer
/// filter last denied the IP.
pub fn turn_server(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(seed) = u.arbitrary::<u64>() else {
        return;
    };
    let secret = TurnSecret::new(TURN_SECRET);
    let config = TurnConfig::new(
        TURN_REALM,
        vec![secret.clone()],
        RELAY_IP,
        FIRST_PORT..=FIRST_PORT + PORT_COUNT - 1,
    )
    .expect("a valid configuration")
    .with_allocation_quota(4, 2)
    .with_allocation_limits(3, 3);
    let now = time_origin();
    let credentials = CLIENTS
        .iter()
        .map(|&(_, user, expiry)| TurnCredential::mint(&secret, user, expiry))
        .collect();
    let mut run = TurnRun {
        server: Server::new(config, XorShift(seed), now, UNIX_START),
        now,
        unix_now: UNIX_START,
        credentials,
        nonces: Default::default(),
        token: None,
        requests: 0,
        bound: BTreeSet::new(),
        just_bound: Vec::new(),
        allocated: BTreeSet::new(),
        permitted: BTreeSet::new(),
        reported: BTreeSet::new(),
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = u.arbitrary::<TurnOp>() else {
            break;
        };
        run.step(op);
    }
}

impl TurnRun {
    fn step(&mut self, op: TurnOp) {
        let just_bound = std::mem::take(&mut self.just_bound);
        match op {
            TurnOp::Raw { client, bytes } => {
                let _ = self.client_input(usize::from(client) % CLIENTS.len(), &bytes);
            }
            TurnOp::Stun(op) => self.stun(&op, false),
            TurnOp::Allocate { client } => {
                self.stun(
                    &StunOp::shortcut(client, MethodChoice::Allocate, vec![AttrChoice::Udp]),
                    true,
                );
            }
            TurnOp::Permit { client, peer } => {
                let attrs = vec![AttrChoice::Peer(peer)];
                self.stun(
                    &StunOp::shortcut(client, MethodChoice::CreatePermission, attrs),
                    true,
                );
            }
            TurnOp::Bind {
                client,
                peer,
                channel,
            } => {
                let attrs = vec![
                    AttrChoice::Channel(ChannelChoice::Small(channel)),
                    AttrChoice::Peer(peer),
                ];
                self.stun(
                    &StunOp::shortcut(client, MethodChoice::ChannelBind, attrs),
                    true,
                );
            }
            TurnOp::SendTo { client, peer, len } => {
                let attrs = vec![
                    AttrChoice::Peer(peer),
                    AttrChoice::Data(vec![0x5A; usize::from(len)]),
                ];
                let mut op = StunOp::shortcut(client, MethodChoice::Send, attrs);
                op.indication = true;
                op.auth = AuthChoice::None;
                self.stun(&op, true);
            }
            TurnOp::ChannelData {
                client,
                channel,
                len,
                padding,
            } => {
                let mut frame = channel.number().to_be_bytes().to_vec();
                frame.extend_from_slice(&u16::from(len).to_be_bytes());
                frame.resize(
                    frame.len() + usize::from(len) + usize::from(padding % 5),
                    0xCD,
                );
                let _ = self.client_input(usize::from(client) % CLIENTS.len(), &frame);
            }
            TurnOp::Peer {
                port,
                peer,
                len,
                spare,
            } => self.peer_input(port, peer, len, spare),
            TurnOp::Advance { millis, step } => {
                self.advance(Duration::from_millis(u64::from(millis)), step);
            }
            TurnOp::WallClock { seconds } => {
                self.unix_now = self.unix_now.saturating_add_signed(i64::from(seconds));
                self.server.handle_wall_clock(self.now, self.unix_now);
            }
            TurnOp::FailBind => {
                for port in just_bound {
                    self.server.handle_allocation_failed(RelayPort::new(port));
                    assert!(self.bound.remove(&port));
                    self.commands();
                }
            }
            TurnOp::Drain => self.server.start_draining(),
            TurnOp::PeerFilter { deny: None } => {
                self.server.set_peer_filter(self.now, PeerFilter::new());
            }
            TurnOp::PeerFilter { deny: Some(peer) } => {
                let ip = PEERS[usize::from(peer) % PEERS.len()].ip();
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                let cidr = Cidr::new(ip, prefix).expect("a host prefix");
                self.server
                    .set_peer_filter(self.now, PeerFilter::new().deny(cidr));
                // What was permitted for it stops at once.
                self.permitted.retain(|&(_, permitted)| permitted != ip);
            }
            TurnOp::Quota { per_user } => {
                self.server
                    .set_max_allocations_per_user(self.now, u32::from(per_user % 4));
            }
        }
        self.commands();
    }

    /// Feeds a datagram from client `i` and checks the action; returns the reply, if any.
    fn client_input(&mut self, i: usize, packet: &[u8]) -> Option<Vec<u8>> {
        let from = ClientAddr::new(CLIENTS[i].0);
        let mut out = [0u8; 1500];
        let action = self
            .server
            .handle_client_input(self.now, from, packet, &mut out);
        self.commands();
        match action {
            ClientAction::Reply { dst, len } => {
                assert_eq!(dst, from, "replies go back to the source");
                let reply = out.get(..len).expect("reply within the output buffer");
                let message = Message::parse(reply).expect("the server writes valid STUN");
                assert!(message.class().is_response());
                if message.has_fingerprint() {
                    message
                        .verify_fingerprint()
                        .expect("own FINGERPRINT checks");
                }
                Some(reply.to_vec())
            }
            ClientAction::Relay {
                port,
                peer,
                payload,
            } => {
                assert!(payload.end <= packet.len() && payload.start <= payload.end);
                assert!(
                    self.permitted.contains(&(from.get(), peer.get().ip())),
                    "relayed to {peer} for {from:?} without a permission"
                );
                assert!(self.allocated.contains(&(from.get(), port.get())));
                assert!(
                    self.bound.contains(&port.get()),
                    "relayed from an unbound port"
                );
                None
            }
            ClientAction::Absorb | ClientAction::Drop(_) => None,
        }
    }

    /// Sends `op` from its client; `fresh` gives it a transaction id never used before.
    fn stun(&mut self, op: &StunOp, fresh: bool) {
        let i = usize::from(op.client) % CLIENTS.len();
        let mut tid = [0x77; TransactionId::LEN];
        tid[0] = op.client;
        tid[1] = op.tid;
        if fresh {
            self.requests += 1;
            tid[4..8].copy_from_slice(&self.requests.to_be_bytes());
        }
        let tid = TransactionId::new(tid);
        let Some(request) = self.encode(i, op, tid) else {
            return;
        };
        let Some(reply) = self.client_input(i, &request) else {
            return;
        };
        let learned = self.learn(i, &request, &reply, op.auth);
        if learned && op.auth == AuthChoice::Valid {
            // The dance: retry once with the nonce just learned, as a client would.
            let mut tid = *tid.as_bytes();
            tid[2] ^= 0xFF;
            let tid = TransactionId::new(tid);
            if let Some(request) = self.encode(i, op, tid)
                && let Some(reply) = self.client_input(i, &request)
            {
                self.learn(i, &request, &reply, op.auth);
            }
        }
    }

    /// Encodes `op` for client `i`; `None` if it does not fit a message.
    fn encode(&self, i: usize, op: &StunOp, tid: TransactionId) -> Option<Vec<u8>> {
        let method = match op.method {
            MethodChoice::Binding => Method::BINDING,
            MethodChoice::Allocate => Method::ALLOCATE,
            MethodChoice::Refresh => Method::REFRESH,
            MethodChoice::Send => Method::SEND,
            MethodChoice::Data => Method::DATA,
            MethodChoice::CreatePermission => Method::CREATE_PERMISSION,
            MethodChoice::ChannelBind => Method::CHANNEL_BIND,
            MethodChoice::Other(raw) => Method::new(raw & Method::MAX)?,
        };
        let class = if op.indication {
            Class::Indication
        } else {
            Class::Request
        };
        let mut buf = vec![0u8; 1400];
        let mut enc = Encoder::new(&mut buf, MessageType::new(method, class), tid).ok()?;
        for attr in &op.attrs {
            let added = match attr {
                AttrChoice::RequestedTransport(protocol) => enc.add(&RequestedTransport(*protocol)),
                AttrChoice::Udp => enc.add(&RequestedTransport::UDP),
                AttrChoice::Lifetime(seconds) => enc.add(&Lifetime(*seconds)),
                AttrChoice::Peer(peer) => {
                    enc.add(&XorPeerAddress(PEERS[usize::from(*peer) % PEERS.len()]))
                }
                AttrChoice::PeerAny { ip, port } => {
                    enc.add(&XorPeerAddress(SocketAddr::from((*ip, *port))))
                }
                AttrChoice::Channel(channel) => match ChannelNumber::new(channel.number()) {
                    Some(number) => enc.add(&number),
                    None => enc.add_raw(AttrType::CHANNEL_NUMBER, &[0, 1, 0, 0]),
                },
                AttrChoice::Data(payload) => enc.add(&Data(payload)),
                AttrChoice::EvenPort(reserve) => enc.add(&EvenPort { reserve: *reserve }),
                AttrChoice::LastToken => match self.token {
                    Some(token) => enc.add(&token),
                    None => Ok(()),
                },
                AttrChoice::Token(token) => enc.add(&ReservationToken(*token)),
                AttrChoice::Family(family) => enc.add(&RequestedAddressFamily(*family)),
                AttrChoice::DontFragment => enc.add_raw(AttrType::DONT_FRAGMENT, &[]),
                AttrChoice::Raw { attr, value } => enc.add_raw(AttrType::new(*attr), value),
            };
            added.ok()?;
        }
        let credential = &self.credentials[i];
        let key = match op.auth {
            AuthChoice::WrongKey => LongTermKey::derive(&credential.username, TURN_REALM, "nope"),
            AuthChoice::None | AuthChoice::Valid | AuthChoice::ForeignNonce => {
                LongTermKey::derive(&credential.username, TURN_REALM, &credential.password)
            }
        };
        let mut trailer = Trailer::new();
        if op.auth != AuthChoice::None {
            let nonce = match op.auth {
                AuthChoice::ForeignNonce => "0123456789abcdef01234567",
                AuthChoice::None | AuthChoice::Valid | AuthChoice::WrongKey => {
                    self.nonces[i].as_deref().unwrap_or("none")
                }
            };
            enc.add(&Username::new(&credential.username).ok()?).ok()?;
            enc.add(&Realm::new(TURN_REALM).ok()?).ok()?;
            enc.add(&Nonce::new(nonce).ok()?).ok()?;
            trailer = trailer.with_integrity(key.as_integrity_key());
        }
        if op.fingerprint {
            trailer = trailer.with_fingerprint();
        }
        let len = enc.finish(trailer).ok()?;
        buf.truncate(len);
        Some(buf)
    }

    /// Learns from a reply to `request`: nonces, relay ports, permissions, tokens. Returns
    /// whether it carried a new nonce (a 401 or 438).
    fn learn(&mut self, i: usize, request: &[u8], reply: &[u8], auth: AuthChoice) -> bool {
        let client = CLIENTS[i].0;
        let request = Message::parse(request).expect("own request parses");
        let reply = Message::parse(reply).expect("checked in client_input");
        assert_eq!(reply.transaction_id(), request.transaction_id());
        assert_eq!(reply.method(), request.method());
        if !reply.has_integrity() && reply.class() == Class::ErrorResponse {
            // The amplification bound of the module doc: header, ERROR-CODE, REALM, NONCE and
            // a FINGERPRINT only if the request had one.
            let realm = TURN_REALM.len().next_multiple_of(4);
            assert!(
                reply.as_bytes().len() <= request.as_bytes().len() + 56 + realm,
                "unauthenticated error of {} bytes for a {}-byte request",
                reply.as_bytes().len(),
                request.as_bytes().len()
            );
        }
        if auth == AuthChoice::Valid && reply.has_integrity() {
            let credential = &self.credentials[i];
            let key = LongTermKey::derive(&credential.username, TURN_REALM, &credential.password);
            reply
                .verify_integrity(key.as_integrity_key())
                .expect("responses are signed with the request's key");
        }
        if reply.class() == Class::ErrorResponse {
            let nonce = reply.get::<Nonce<'_>>().ok().flatten();
            if let Some(nonce) = nonce {
                self.nonces[i] = Some(nonce.as_str().to_owned());
                return true;
            }
            return false;
        }
        if reply.class() != Class::SuccessResponse {
            return false;
        }
        // Successes below are of authenticated requests: only then did the server act.
        match reply.method() {
            Method::ALLOCATE => {
                let relayed = reply
                    .get::<XorRelayedAddress>()
                    .expect("valid XOR-RELAYED-ADDRESS")
                    .expect("an Allocate success names the relayed address");
                assert_eq!(relayed.0.ip(), IpAddr::V4(RELAY_IP));
                let port = relayed.0.port();
                assert!((FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(&port));
                self.allocated.insert((client, port));
                if let Ok(Some(token)) = reply.get::<ReservationToken>() {
                    self.token = Some(token);
                }
            }
            Method::CREATE_PERMISSION | Method::CHANNEL_BIND => {
                for raw in request.attributes() {
                    if raw.attr() == AttrType::XOR_PEER_ADDRESS
                        && let Ok(peer) =
                            XorPeerAddress::decode(raw.value(), &request.transaction_id())
                    {
                        self.permitted.insert((client, peer.0.ip()));
                    }
                }
            }
            _ => {}
        }
        false
    }

    fn peer_input(&mut self, port: u8, peer: u8, len: u16, spare: u8) {
        let port = RelayPort::new(FIRST_PORT + u16::from(port) % PORT_COUNT);
        let from = PEERS[usize::from(peer) % PEERS.len()];
        let len = usize::from(len);
        // Usually the headroom and 3 spare bytes a shell reserves; sometimes less.
        let size = if spare & 0x80 == 0 {
            HEADROOM + len + usize::from(spare % 8)
        } else {
            usize::from(spare % 64) + len / 2
        };
        let mut buf = vec![0xAB; size];
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        if let Some(dst) = buf.get_mut(HEADROOM..HEADROOM + len) {
            dst.copy_from_slice(&payload);
        }
        let action =
            self.server
                .handle_peer_input(self.now, port, PeerAddr::new(from), &mut buf, len);
        self.commands();
        match action {
            PeerAction::Forward { dst, range } => {
                assert!(range.start <= range.end && range.end <= buf.len());
                assert!(
                    self.permitted.contains(&(dst.get(), from.ip())),
                    "forwarded from {from} to {dst:?} without a permission"
                );
                assert!(self.allocated.contains(&(dst.get(), port.get())));
                assert!(
                    self.bound.contains(&port.get()),
                    "forwarded from an unbound port"
                );
                check_forwarded(&buf[range], from, &payload);
            }
            PeerAction::Drop(_) => {}
        }
    }

    fn advance(&mut self, by: Duration, step: bool) {
        let target = self.now + by;
        if step {
            let mut fired = 0;
            while let Some(at) = self.server.poll_timeout() {
                if at > target {
                    break;
                }
                self.now = self.now.max(at);
                self.fire();
                fired += 1;
                assert!(fired < 100_000, "timers do not converge");
            }
        }
        self.now = target;
        self.unix_now = self.unix_now.saturating_add(by.as_secs());
        self.fire();
    }

    fn fire(&mut self) {
        self.server.handle_timeout(self.now);
        self.commands();
        if let Some(at) = self.server.poll_timeout() {
            assert!(at > self.now, "handle_timeout left a due timer behind");
        }
    }

    /// Drains the commands, pairing every free with an earlier bind.
    fn commands(&mut self) {
        while let Some(command) = self.server.next_command() {
            match command {
                Command::CreateAllocation { port } => {
                    let port = port.get();
                    assert!((FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(&port));
                    assert!(self.bound.insert(port), "port {port} bound twice");
                    self.just_bound.push(port);
                }
                Command::FreeAllocation { port } => {
                    assert!(self.bound.remove(&port.get()), "freed unbound port {port}");
                    self.just_bound.retain(|&p| p != port.get());
                }
            }
        }
        assert_eq!(
            self.server.allocation_count(),
            self.bound.len(),
            "every live allocation has exactly one bound port"
        );
        while let Some(event) = self.server.poll_event() {
            match event {
                TurnEvent::AllocationCreated { relay, .. } => {
                    assert_eq!(relay.ip(), IpAddr::V4(RELAY_IP));
                    assert!(self.reported.insert(relay.port()), "{relay} created twice");
                }
                TurnEvent::AllocationEnded { relay } => {
                    assert!(self.reported.remove(&relay.port()), "{relay} ended unseen");
                }
            }
        }
        assert_eq!(
            self.server.allocation_count(),
            self.reported.len(),
            "every live allocation was reported created, and no ended one is left"
        );
    }
}

/// A forwarded datagram is ChannelData or a Data indication carrying the peer's payload.
fn check_forwarded(bytes: &[u8], from: SocketAddr, payload: &[u8]) {
    match classify(bytes) {
        PacketKind::ChannelData => {
            let frame = ChannelData::parse(bytes).expect("valid ChannelData");
            assert_eq!(&bytes[frame.payload], payload);
        }
        PacketKind::Stun => {
            let message = Message::parse(bytes).expect("a valid Data indication");
            assert_eq!(
                message.message_type(),
                MessageType::new(Method::DATA, Class::Indication)
            );
            let peer = message
                .get::<XorPeerAddress>()
                .expect("valid")
                .expect("present");
            assert_eq!(peer.0, from);
            let data = message.get::<Data<'_>>().expect("valid").expect("present");
            assert_eq!(data.0, payload);
        }
        PacketKind::Other => panic!("forwarded neither ChannelData nor STUN"),
    }
}

// ---------------------------------------------------------------------------------------------
// ws_session

/// Connections per run.
const WS_MAX_CONNS: usize = 6;
/// Bytes a connection's inbox may hold; appends beyond are skipped.
const WS_MAX_INBOX: usize = 1 << 15;

/// One step of a relay run.
#[derive(Debug, Arbitrary)]
enum WsOp {
    Connect,
    /// A valid upgrade request, with a Bearer token `tok<n>` if asked.
    Upgrade {
        conn: u8,
        bearer: Option<u8>,
    },
    /// Arbitrary bytes appended to the connection's inbox (fed by `Read`).
    Bytes {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// A masked client frame; `bits` is the first header byte's low 7 bits (RSV, opcode).
    Frame {
        conn: u8,
        fin: bool,
        bits: u8,
        mask: [u8; 4],
        payload: Vec<u8>,
    },
    /// An unmasked frame, which clients must not send.
    Unmasked {
        conn: u8,
        bits: u8,
        payload: Vec<u8>,
    },
    /// A SEND of `len` bytes to node `dest`.
    Send {
        conn: u8,
        dest: u8,
        len: u16,
    },
    /// The token `tok<n>` as an AUTH message or a text message.
    Auth {
        conn: u8,
        token: u8,
        text: bool,
    },
    /// Feeds at most `limit` bytes of the inbox (a partial read).
    Read {
        conn: u8,
        limit: u16,
    },
    Accept {
        conn: u8,
        node: u8,
    },
    Reject {
        conn: u8,
    },
    Close {
        conn: u8,
        code: u16,
    },
    Disconnect {
        conn: u8,
    },
    /// Toggles whether the shell flushes this connection on `Wake` (a slow reader).
    Stall {
        conn: u8,
    },
    /// One `poll_transmit` of `chunk + 1` bytes.
    Transmit {
        conn: u8,
        chunk: u8,
    },
    /// A RECV frame for `dest` from another core, optionally with one byte changed.
    Remote {
        dest: u8,
        src: u8,
        len: u16,
        corrupt: Option<(u16, u8)>,
    },
    NotifyPresent {
        to: u8,
        peer: u8,
    },
    Drain,
    Advance {
        millis: u32,
    },
}

/// What the next bytes of a connection's output must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The HTTP response.
    Http,
    /// Server frames.
    Frames,
    /// Nothing: an HTTP error or a Close frame was the last word.
    Nothing,
}

struct WsConn {
    id: ConnId,
    inbox: Vec<u8>,
    out: Vec<u8>,
    expect: Expect,
    stalled: bool,
    disconnected: bool,
}

type RemotePresence = fn(&NodeId) -> bool;

/// Nodes with a first byte of 8 or more live on another core.
fn is_remote(node: &NodeId) -> bool {
    relay::node_bytes(node)[0] >= 8
}

struct WsRun {
    hub: Hub<RemotePresence>,
    config: WsConfig,
    now: Instant,
    conns: Vec<WsConn>,
    chunk: usize,
}

/// The WebSocket relay: a `Hub` of sessions driven by clients, remote frames and time. Checks
/// that consumption and forwarded ranges are within the input, that a SEND is only relayed
/// for an authenticated sender, that the session never stalls on a buffer holding a whole
/// frame, and that every connection's output is one HTTP response followed by well-formed
/// server frames, with nothing after a Close.
pub fn ws_session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(small), Ok(chunk)) = (u.arbitrary::<bool>(), u.arbitrary::<u16>()) else {
        return;
    };
    let now = time_origin();
    let config = if small {
        WsConfig::new()
            .with_max_message(64)
            .and_then(|c| c.with_queue(3, 160))
            .and_then(|c| c.with_handshake_timeout(Duration::from_secs(3)))
            .and_then(|c| c.with_auth_timeout(Duration::from_secs(3)))
            .and_then(|c| c.with_keepalive(Duration::from_secs(5), Duration::from_secs(2)))
            .and_then(|c| c.with_close_timeout(Duration::from_secs(2)))
            .and_then(|c| c.with_peer_gone_limit(Duration::from_secs(1), 4))
            .expect("a valid configuration")
    } else {
        WsConfig::new()
    };
    let mut run = WsRun {
        hub: Hub::new(config.clone(), is_remote as RemotePresence, now),
        config,
        now,
        conns: Vec::new(),
        chunk: usize::from(chunk % 2048) + 1,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = u.arbitrary::<WsOp>() else {
            break;
        };
        run.step(op);
        let live = run.conns.iter().filter(|c| !c.disconnected).count();
        assert_eq!(run.hub.len(), live, "the hub holds every connected session");
    }
}

impl WsRun {
    fn step(&mut self, op: WsOp) {
        match op {
            WsOp::Connect => {
                if self.conns.len() < WS_MAX_CONNS {
                    let id = self.hub.handle_connect(self.now);
                    self.conns.push(WsConn {
                        id,
                        inbox: Vec::new(),
                        out: Vec::new(),
                        expect: Expect::Http,
                        stalled: false,
                        disconnected: false,
                    });
                    self.events();
                }
            }
            WsOp::Upgrade { conn, bearer } => {
                let mut request = format!(
                    "GET {DEFAULT_PATH} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n"
                );
                if let Some(n) = bearer {
                    request.push_str(&format!("Authorization: Bearer tok{n}\r\n"));
                }
                request.push_str("\r\n");
                self.push_and_feed(conn, request.as_bytes());
            }
            WsOp::Bytes { conn, bytes } => {
                if let Some(c) = self.conn_index(conn)
                    && self.conns[c].inbox.len() + bytes.len() <= WS_MAX_INBOX
                {
                    self.conns[c].inbox.extend_from_slice(&bytes);
                }
            }
            WsOp::Frame {
                conn,
                fin,
                bits,
                mask,
                payload,
            } => {
                let mut out = vec![0u8; MAX_CLIENT_HEADER_LEN + payload.len()];
                let len = frame::encode_masked(fin, OpCode::Binary, mask, &payload, &mut out)
                    .expect("room for the frame");
                out[0] = (u8::from(fin) << 7) | (bits & 0x7F);
                self.push_and_feed(conn, &out[..len]);
            }
            WsOp::Unmasked {
                conn,
                bits,
                payload,
            } => {
                let opcode = OpCode::from_bits(bits & 0x0F).unwrap_or(OpCode::Binary);
                let mut out = vec![0u8; MAX_CLIENT_HEADER_LEN + payload.len()];
                let len = frame::encode_frame(opcode, &payload, &mut out).expect("room");
                self.push_and_feed(conn, &out[..len]);
            }
            WsOp::Send { conn, dest, len } => {
                let packet: Vec<u8> = (0..usize::from(len % 2048)).map(|i| i as u8).collect();
                let mut out = vec![0u8; MAX_CLIENT_HEADER_LEN + PREFIX_LEN + packet.len()];
                let len = relay::encode_send(&node(dest % 12), &packet, [9, 8, 7, 6], &mut out)
                    .expect("room for the frame");
                self.push_and_feed(conn, &out[..len]);
            }
            WsOp::Auth { conn, token, text } => {
                let token = format!("tok{token}");
                let mut out = vec![0u8; MAX_CLIENT_HEADER_LEN + 1 + token.len()];
                let len = if text {
                    frame::encode_masked(
                        true,
                        OpCode::Text,
                        [1, 2, 3, 4],
                        token.as_bytes(),
                        &mut out,
                    )
                } else {
                    let mut message = vec![RelayType::Auth as u8];
                    message.extend_from_slice(token.as_bytes());
                    frame::encode_masked(true, OpCode::Binary, [1, 2, 3, 4], &message, &mut out)
                }
                .expect("room for the frame");
                self.push_and_feed(conn, &out[..len]);
            }
            WsOp::Read { conn, limit } => {
                if let Some(c) = self.conn_index(conn) {
                    self.feed(c, usize::from(limit));
                }
            }
            WsOp::Accept { conn, node: n } => {
                if let Some(c) = self.conn_index(conn) {
                    let result = self.hub.accept(self.now, self.conns[c].id, node(n % 12));
                    self.check_call(c, result);
                }
            }
            WsOp::Reject { conn } => {
                if let Some(c) = self.conn_index(conn) {
                    let result = self.hub.reject(self.now, self.conns[c].id);
                    self.check_call(c, result);
                }
            }
            WsOp::Close { conn, code } => {
                if let Some(c) = self.conn_index(conn) {
                    let code = match code % 8 {
                        0 => 1000,
                        1 => 1001,
                        2 => 4000,
                        _ => code,
                    };
                    let code = frame::CloseCode::new(code);
                    let result = self.hub.close(self.now, self.conns[c].id, code);
                    self.check_call(c, result);
                }
            }
            WsOp::Disconnect { conn } => {
                if let Some(c) = self.conn_index(conn) {
                    let result = self.hub.handle_disconnect(self.conns[c].id);
                    assert_eq!(result.is_ok(), !self.conns[c].disconnected);
                    self.conns[c].disconnected = true;
                    self.conns[c].inbox.clear();
                    self.events();
                }
            }
            WsOp::Stall { conn } => {
                if let Some(c) = self.conn_index(conn) {
                    self.conns[c].stalled ^= true;
                }
            }
            WsOp::Transmit { conn, chunk } => {
                if let Some(c) = self.conn_index(conn) {
                    let mut buf = vec![0u8; usize::from(chunk) + 1];
                    if let Some(len) = self.hub.poll_transmit(self.conns[c].id, &mut buf) {
                        assert!(len > 0 && len <= buf.len());
                        assert!(!self.conns[c].disconnected, "output after disconnect");
                        self.conns[c].out.extend_from_slice(&buf[..len]);
                        check_output(&mut self.conns[c]);
                    }
                }
            }
            WsOp::Remote {
                dest,
                src,
                len,
                corrupt,
            } => {
                let packet: Vec<u8> = (0..usize::from(len % 2048)).map(|i| i as u8).collect();
                let mut buf = vec![0u8; relay::HEADROOM + packet.len()];
                buf[relay::HEADROOM..].copy_from_slice(&packet);
                let end = buf.len();
                let range = relay::encode_recv(&mut buf, relay::HEADROOM..end, &node(src))
                    .expect("room for the frame");
                let mut frame = buf[range].to_vec();
                if let Some((at, byte)) = corrupt {
                    let at = usize::from(at) % frame.len();
                    frame[at] = byte;
                }
                let delivery = self.hub.handle_remote(&node(dest % 12), &frame);
                if let Delivery::Queued(conn) = delivery {
                    let c = self
                        .conns
                        .iter()
                        .position(|c| c.id == conn)
                        .expect("a known conn");
                    assert!(!self.conns[c].disconnected, "queued to a disconnected conn");
                }
                self.events();
            }
            WsOp::NotifyPresent { to, peer } => {
                let _ = self.hub.notify_present(&node(to % 12), &node(peer % 12));
                self.events();
            }
            WsOp::Drain => {
                self.hub.start_draining();
                self.events();
            }
            WsOp::Advance { millis } => self.advance(Duration::from_millis(u64::from(millis))),
        }
    }

    fn conn_index(&self, conn: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(conn) % self.conns.len())
    }

    fn check_call(&mut self, c: usize, result: Result<(), HubError>) {
        match result {
            Ok(()) => assert!(!self.conns[c].disconnected),
            Err(HubError::UnknownConn(_)) => assert!(self.conns[c].disconnected),
            Err(HubError::Session(_)) => {}
            Err(err) => panic!("unexpected hub error {err:?}"),
        }
        self.events();
    }

    fn push_and_feed(&mut self, conn: u8, bytes: &[u8]) {
        let Some(c) = self.conn_index(conn) else {
            return;
        };
        if self.conns[c].inbox.len() + bytes.len() > WS_MAX_INBOX {
            return;
        }
        self.conns[c].inbox.extend_from_slice(bytes);
        self.feed(c, usize::MAX);
    }

    /// Hands up to `limit` inbox bytes to the hub, as often as it consumes.
    fn feed(&mut self, c: usize, limit: usize) {
        loop {
            let conn = &mut self.conns[c];
            let end = conn.inbox.len().min(limit);
            if end == 0 {
                return;
            }
            let id = conn.id;
            let sender = self.hub.session(id).and_then(|s| s.node());
            let input = &mut conn.inbox[..end];
            let result = self.hub.handle_input(self.now, id, input);
            let input = match result {
                Ok(input) => input,
                Err(HubError::UnknownConn(_)) => {
                    assert!(conn.disconnected, "input refused for a live conn");
                    conn.inbox.clear();
                    return;
                }
                Err(HubError::Session(SessionError::EventPending)) => {
                    panic!("the hub left a Packet event undrained")
                }
                Err(err) => panic!("unexpected hub error {err:?}"),
            };
            assert!(input.consumed <= end, "consumed more than the input");
            if let Some(forward) = &input.forward {
                let src = sender.expect("a SEND relayed for an unauthenticated sender");
                match forward {
                    Forward::Remote { dest, frame } => {
                        assert!(is_remote(dest));
                        let bytes = conn
                            .inbox
                            .get(frame.clone())
                            .expect("frame within the input");
                        let recv = relay::Message::parse(server_frame_payload(bytes));
                        assert!(
                            matches!(recv, Ok(relay::Message::Recv { src: from, .. }) if from == src),
                            "a remote frame is the sender's RECV: {recv:?}"
                        );
                    }
                    Forward::Local(_) | Forward::Gone(_) | Forward::PeerGone { .. } => {}
                }
            }
            if input.consumed == 0 {
                if end == conn.inbox.len() {
                    let whole = self.config.min_input_buffer().max(MAX_HEADER_BLOCK);
                    assert!(end < whole, "stalled on {end} bytes");
                }
                self.events();
                return;
            }
            conn.inbox.drain(..input.consumed);
            self.events();
        }
    }

    /// Drains the hub's events like a shell: flush on `Wake` (unless stalled) and `Closed`.
    fn events(&mut self) {
        let mut flush = Vec::new();
        while let Some(event) = self.hub.poll_event() {
            match event {
                HubEvent::Authenticate { token, .. } => {
                    assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
                }
                HubEvent::Wake { conn } => flush.push((conn, false)),
                HubEvent::Closed { conn, .. } => flush.push((conn, true)),
            }
            assert!(flush.len() < 10_000, "endless events");
        }
        for (id, closed) in flush {
            let c = self
                .conns
                .iter()
                .position(|c| c.id == id)
                .expect("a known conn");
            assert!(!self.conns[c].disconnected, "event for a disconnected conn");
            if closed || !self.conns[c].stalled {
                self.flush(c);
            }
        }
    }

    fn flush(&mut self, c: usize) {
        let mut buf = vec![0u8; self.chunk];
        let mut polls = 0;
        while let Some(len) = self.hub.poll_transmit(self.conns[c].id, &mut buf) {
            assert!(len > 0 && len <= buf.len());
            self.conns[c].out.extend_from_slice(&buf[..len]);
            polls += 1;
            assert!(polls < 1_000_000, "poll_transmit never ends");
        }
        check_output(&mut self.conns[c]);
    }

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        let mut fired = 0;
        while let Some(at) = self.hub.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.hub.handle_timeout(self.now);
            self.events();
            if let Some(next) = self.hub.poll_timeout() {
                assert!(next > self.now, "handle_timeout left a due timer behind");
            }
            fired += 1;
            assert!(fired < 100_000, "timers do not converge");
        }
        self.now = target;
    }
}

/// Checks the output not yet checked, and drops it: an HTTP response, then whole server
/// frames, nothing after a Close. A frame cut short stays for the next call.
fn check_output(conn: &mut WsConn) {
    let mut at = 0;
    loop {
        let rest = &conn.out[at..];
        if rest.is_empty() {
            break;
        }
        match conn.expect {
            Expect::Http => {
                let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                    assert!(rest.len() < MAX_RESPONSE_LEN, "runaway HTTP response");
                    break;
                };
                assert!(
                    rest.starts_with(b"HTTP/1.1 "),
                    "an HTTP response comes first"
                );
                conn.expect = if rest.starts_with(b"HTTP/1.1 101 ") {
                    Expect::Frames
                } else {
                    Expect::Nothing
                };
                at += end + 4;
            }
            Expect::Frames => {
                let header = match FrameHeader::parse(rest) {
                    Ok(Some(header)) => header,
                    Ok(None) => break,
                    Err(err) => panic!("the server wrote a bad frame header: {err:?}"),
                };
                assert!(
                    header.fin && header.mask.is_none(),
                    "server frames: final, unmasked"
                );
                let end = header.frame_len().expect("a sane length");
                let Some(payload) = rest.get(header.header_len..end) else {
                    break;
                };
                match header.opcode {
                    OpCode::Binary => {
                        let message = relay::Message::parse(payload);
                        assert!(
                            matches!(
                                message,
                                Ok(relay::Message::Recv { .. }
                                    | relay::Message::PeerGone(_)
                                    | relay::Message::PeerPresent(_)
                                    | relay::Message::Ready(_)
                                    | relay::Message::ReconnectHint)
                            ),
                            "the server sent {message:?}"
                        );
                    }
                    OpCode::Close => {
                        ClosePayload::parse(payload).expect("a valid Close payload");
                        conn.expect = Expect::Nothing;
                    }
                    OpCode::Ping | OpCode::Pong => {}
                    OpCode::Text | OpCode::Continuation => {
                        panic!("the server sent a {:?} frame", header.opcode)
                    }
                }
                at += end;
            }
            Expect::Nothing => panic!("{} bytes after the last word", rest.len()),
        }
    }
    conn.out.drain(..at);
}

// ---------------------------------------------------------------------------------------------
// mesh_client

/// The `Sec-WebSocket-Key` nonce of every `mesh_client` run: RFC 6455's sample, so the
/// accept key is the RFC's too.
const MESH_NONCE: [u8; 16] = *b"the sample nonce";

/// The mesh client on arbitrary server bytes. The first byte picks whether a valid 101 and
/// READY come first, the message cap and the read size; the rest is the server's stream.
/// Checks the consumption contract, that a Deliver is one complete RECV frame within the
/// consumed bytes (what `Hub::handle_remote` takes), that events and states agree, and that
/// the client's output is the upgrade request then whole masked control frames, with nothing
/// after a Close.
pub fn mesh_client(data: &[u8]) {
    let Some((&setup, stream)) = data.split_first() else {
        return;
    };
    let opened = setup & 1 != 0;
    let config = if setup & 2 != 0 {
        WsConfig::new().with_max_message(1024).expect("a valid cap")
    } else {
        WsConfig::new()
    };
    let cap = config.max_mesh_message();
    let chunk = usize::from(setup >> 2) * 37 + 1;
    let mut now = time_origin();
    let mut client = MeshClient::new(
        config,
        "relay.fuzz",
        "/relay",
        b"mesh.token",
        now,
        MESH_NONCE,
        XorShift(u64::from(setup) + 1),
    )
    .expect("valid arguments");
    let mut out = Vec::new();
    mesh_transmit(&mut client, &mut out);
    assert!(out.starts_with(b"GET /relay HTTP/1.1\r\n") && out.ends_with(b"\r\n\r\n"));
    let request_len = out.len();
    let mut server = Vec::new();
    if opened {
        let accept = AcceptKey::derive(b"dGhlIHNhbXBsZSBub25jZQ==");
        server.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        server.extend_from_slice(accept.as_bytes());
        server.extend_from_slice(b"\r\n\r\n\x82\x11\x07");
        server.extend_from_slice(&[0xA0; 16]);
    }
    server.extend_from_slice(stream);
    let mut buffer = Vec::new();
    let mut closed = false;
    for piece in server.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            let len = buffer.len();
            let input = client.handle_input(now, &mut buffer);
            let consumed = input.consumed();
            assert!(consumed <= len);
            if let MeshInput::Deliver { frame, .. } = &input {
                assert!(
                    frame.end <= consumed,
                    "the frame is within the consumed bytes"
                );
                assert!(matches!(client.state(), MeshState::Open(_)));
                let bytes = &buffer[frame.clone()];
                let payload = server_frame_payload(bytes);
                assert!(payload.len() <= cap - relay::NODE_ID_LEN);
                assert!(matches!(
                    relay::Message::parse(payload),
                    Ok(relay::Message::Recv { .. })
                ));
            }
            while let Some(event) = client.poll_event() {
                assert!(!closed, "no event after Closed");
                match event {
                    MeshEvent::Ready(_) => {
                        assert!(matches!(
                            client.state(),
                            MeshState::Open(_) | MeshState::Closed(_)
                        ));
                    }
                    MeshEvent::ReconnectHint => {}
                    MeshEvent::Closed(reason) => {
                        closed = true;
                        assert_eq!(client.state(), MeshState::Closed(reason));
                    }
                }
            }
            buffer.drain(..consumed);
            if client.is_closed() {
                assert!(buffer.is_empty(), "a closed client consumes everything");
            }
            if consumed == 0 || buffer.is_empty() {
                break;
            }
        }
        mesh_transmit(&mut client, &mut out);
        now += Duration::from_secs(1);
        client.handle_timeout(now);
        mesh_transmit(&mut client, &mut out);
        if let Some(next) = client.poll_timeout() {
            assert!(next > now, "handle_timeout leaves nothing due");
        }
    }
    if client.is_closed() {
        assert_eq!(client.poll_timeout(), None);
    }
    check_mesh_output(&out[request_len..]);
}

fn mesh_transmit<R: RngCore>(client: &mut MeshClient<R>, out: &mut Vec<u8>) {
    let mut buf = [0u8; 61];
    while let Some(len) = client.poll_transmit(&mut buf) {
        assert!(len <= buf.len());
        out.extend_from_slice(&buf[..len]);
    }
    assert!(!client.has_transmit());
}

/// A mesh client writes only whole masked control frames, and nothing after its Close.
fn check_mesh_output(mut out: &[u8]) {
    while !out.is_empty() {
        let header = FrameHeader::parse(out)
            .expect("a valid client frame")
            .expect("a whole header");
        assert!(header.fin && header.opcode.is_control());
        let key = header.mask.expect("client frames are masked");
        let end = header.frame_len().expect("a sane length");
        let mut payload = out
            .get(header.header_len..end)
            .expect("a whole frame")
            .to_vec();
        frame::apply_mask(&mut payload, key);
        out = &out[end..];
        if header.opcode == OpCode::Close {
            ClosePayload::parse(&payload).expect("a valid Close payload");
            assert!(out.is_empty(), "nothing after a Close");
        }
    }
}
