//! TURN over a stream (TCP, TLS): frames cut by `turn::stream::Reassembler` from arbitrary
//! reads drive the server exactly as datagrams do, padded ChannelData included (RFC 8656
//! §12.5), and RFC 6062 TCP allocations get 442.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod common;

use boson_dataplane_proto::ClientAction;
use boson_dataplane_proto::stun::Method;
use boson_dataplane_proto::turn::attr::RequestedTransport;
use boson_dataplane_proto::turn::stream::{MAX_FRAME_LEN, Reassembler, stream_padding};
use common::{Client, Harness, Response, secret_a};

const PEER: &str = "198.51.100.7:9000";

fn alice() -> Client {
    Client::new("192.0.2.10:40000", &secret_a(), "alice")
}

fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame.extend(std::iter::repeat_n(0, stream_padding(frame.len())));
    frame
}

#[test]
fn frames_from_a_stream_drive_the_server_like_datagrams() {
    let mut h = Harness::new();
    let mut alice = alice();
    let port = h.allocate(&mut alice);
    let peer = PEER.parse().unwrap();
    assert!(h.channel_bind(&mut alice, 0x4000, peer).is_success());

    let tid = alice.next_tid();
    let refresh = alice.encode(
        Method::REFRESH,
        boson_dataplane_proto::stun::Class::Request,
        tid,
        true,
        |_| {},
    );
    let stream = [
        channel_data(0x4000, b"hello"),
        refresh,
        channel_data(0x4000, b"abc"),
        channel_data(0x4000, b"four"),
    ]
    .concat();
    for chunk in [1, 3, 8, 13, stream.len()] {
        let mut reassembler = Reassembler::new(MAX_FRAME_LEN);
        let mut outcomes = Vec::new();
        for piece in stream.chunks(chunk) {
            let spare = reassembler.spare();
            spare[..piece.len()].copy_from_slice(piece);
            reassembler.handle_read(piece.len());
            while let Some(frame) = reassembler.poll_frame() {
                let frame = frame.unwrap().to_vec();
                let (action, response) = h.input(alice.addr, &frame);
                outcomes.push(match action {
                    ClientAction::Relay {
                        port: p,
                        peer: to,
                        payload,
                    } => {
                        assert_eq!((p, to.get()), (port, peer));
                        frame[payload].to_vec()
                    }
                    ClientAction::Reply { .. } => {
                        assert!(Response(response).is_success());
                        b"refreshed".to_vec()
                    }
                    other @ (ClientAction::Absorb | ClientAction::Drop(_)) => {
                        panic!("chunk {chunk}: {other:?}")
                    }
                });
            }
        }
        assert_eq!(
            outcomes,
            [&b"hello"[..], b"refreshed", b"abc", b"four"],
            "chunk {chunk}"
        );
        assert_eq!(reassembler.buffered(), 0);
    }
}

#[test]
fn tcp_allocations_get_442() {
    // RFC 6062 TCP allocations are not supported: REQUESTED-TRANSPORT TCP (6) is refused
    // with RFC 8656's 442, signed.
    let mut h = Harness::new();
    let mut alice = alice();
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport(6)).unwrap();
    });
    assert_eq!(response.code(), Some(442));
    assert_eq!(h.server.allocation_count(), 0);
}
