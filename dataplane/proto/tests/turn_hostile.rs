//! Hostile input to the TURN server: malformed framing, tampered and misplaced integrity,
//! hostile REST usernames and nonces, floods from spoofed sources, and the amplification a
//! spoofed request can buy. The paths a well-behaved client takes are in `turn_server.rs`.
//!
//! Every datagram here either gets the RFC's error response or is dropped under a named,
//! counted [`DropReason`], and none of them leaves state behind: the server's
//! [`Footprint`](boson_dataplane_proto::turn::Footprint) is checked after each flood.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use boson_dataplane_proto::stun::{
    AttrType, Class, ErrorCode, Message, Method, Nonce, UnknownAttributes,
};
use boson_dataplane_proto::turn::attr::{Data, Lifetime, RequestedTransport, XorPeerAddress};
use boson_dataplane_proto::{ClientAction, ClientAddr, DropReason, PeerAction};
use common::*;

const PEER: &str = "198.51.100.20:7000";

fn alice() -> Client {
    Client::new("192.0.2.10:40000", &secret_a(), "alice")
}

/// A transaction id from a number.
fn tid(n: u32) -> boson_dataplane_proto::stun::TransactionId {
    let mut id = [0x5A; 12];
    id[..4].copy_from_slice(&n.to_be_bytes());
    boson_dataplane_proto::stun::TransactionId::new(id)
}

/// A bare STUN header: `kind` (method and class bits), the Message Length field, the cookie.
fn header(kind: u16, length: u16, cookie: u32) -> Vec<u8> {
    let mut bytes = kind.to_be_bytes().to_vec();
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&cookie.to_be_bytes());
    bytes.extend_from_slice(&[7; 12]);
    bytes
}

const MAGIC: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const ALLOCATE_REQUEST: u16 = 0x0003;

/// Appends an attribute TLV (padded) to `message` and grows its Message Length: for
/// messages without FINGERPRINT, to put attributes where the sender's integrity does not
/// reach.
fn append(message: &mut Vec<u8>, attr: AttrType, value: &[u8]) {
    message.extend_from_slice(&attr.as_u16().to_be_bytes());
    message.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    message.extend_from_slice(value);
    message.resize(message.len().next_multiple_of(4), 0);
    let length = u16::try_from(message.len() - 20).unwrap();
    message[2..4].copy_from_slice(&length.to_be_bytes());
}

/// Whether `h`'s server holds nothing for any client: no allocation, no client or user entry,
/// no timer, no pending command.
fn assert_stateless(h: &Harness, context: &str) {
    let footprint = h.server.footprint();
    assert_eq!(footprint.allocations, 0, "{context}: {footprint:?}");
    assert_eq!(footprint.clients, 0, "{context}: {footprint:?}");
    assert_eq!(footprint.users, 0, "{context}: {footprint:?}");
    assert_eq!(footprint.timers, 0, "{context}: {footprint:?}");
    assert_eq!(footprint.commands, 0, "{context}: {footprint:?}");
    assert!(h.commands.is_empty(), "{context}: {:?}", h.commands);
    assert_eq!(h.server.poll_timeout(), None, "{context}");
}

#[test]
fn malformed_framing_is_dropped_under_its_own_reason() {
    let mut h = Harness::new();
    let from = alice().addr;
    // A valid Binding request to graft the bad variants from.
    let mut good = header(BINDING_REQUEST, 0, MAGIC);
    append(&mut good, AttrType::SOFTWARE, b"test");
    let mut overrun = good.clone();
    overrun[22..24].copy_from_slice(&100u16.to_be_bytes()); // SOFTWARE claims 100 bytes
    let mut bad_integrity_len = header(BINDING_REQUEST, 0, MAGIC);
    append(
        &mut bad_integrity_len,
        AttrType::MESSAGE_INTEGRITY,
        &[0; 16],
    );
    let mut after_fingerprint = header(BINDING_REQUEST, 0, MAGIC);
    append(&mut after_fingerprint, AttrType::FINGERPRINT, &[0; 4]);
    append(&mut after_fingerprint, AttrType::SOFTWARE, b"late");
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty", Vec::new(), DropReason::NotStun),
        (
            "shorter than a header",
            good[..19].to_vec(),
            DropReason::Truncated,
        ),
        (
            "length field larger than the datagram",
            [&good[..2], &12u16.to_be_bytes(), &good[4..]].concat(),
            DropReason::BadLength,
        ),
        (
            "length field smaller than the datagram",
            [&good[..2], &0u16.to_be_bytes(), &good[4..]].concat(),
            DropReason::BadLength,
        ),
        (
            "length field not a multiple of 4",
            [&good[..2], &6u16.to_be_bytes(), &good[4..], &[0, 0]].concat(),
            DropReason::BadLength,
        ),
        (
            "header only, length says 65532",
            header(ALLOCATE_REQUEST, 0xFFFC, MAGIC),
            DropReason::BadLength,
        ),
        (
            "wrong magic cookie",
            header(BINDING_REQUEST, 0, 0xDEAD_BEEF),
            DropReason::BadMagicCookie,
        ),
        (
            "RFC 3489 request (no cookie)",
            header(ALLOCATE_REQUEST, 0, 0),
            DropReason::BadMagicCookie,
        ),
        (
            "attribute overruns the message",
            overrun,
            DropReason::MalformedAttribute,
        ),
        (
            "MESSAGE-INTEGRITY of 16 bytes",
            bad_integrity_len,
            DropReason::MalformedAttribute,
        ),
        (
            "attribute after FINGERPRINT",
            after_fingerprint,
            DropReason::MalformedAttribute,
        ),
        // ChannelData: the first two bits are 0b01.
        (
            "ChannelData of 1 byte",
            vec![0x40],
            DropReason::ChannelDataTruncated,
        ),
        (
            "ChannelData of 3 bytes",
            vec![0x40, 0x00, 0x00],
            DropReason::ChannelDataTruncated,
        ),
        (
            "ChannelData claiming 65535 bytes",
            [&[0x40, 0x00, 0xFF, 0xFF][..], &[1; 60]].concat(),
            DropReason::ChannelDataTruncated,
        ),
        (
            "ChannelData with 4 bytes past its length",
            [&[0x40, 0x00, 0x00, 0x01][..], &[1; 5]].concat(),
            DropReason::ChannelDataTrailingBytes,
        ),
        (
            "top bits 0b11",
            [&[0xC0][..], &good[1..]].concat(),
            DropReason::NotStun,
        ),
    ];
    assert!(matches!(h.input(from, &good).0, ClientAction::Reply { .. }));
    let mut expected = boson_dataplane_proto::DropCounters::default();
    for (name, datagram, reason) in &cases {
        let (action, response) = h.input(from, datagram);
        assert_eq!(action, ClientAction::Drop(*reason), "{name}");
        assert!(response.is_empty(), "{name}: no response");
        assert!(
            h.server.stats().drops.get(*reason) > expected.get(*reason),
            "{name}: counted"
        );
        expected = h.server.stats().drops;
    }
    assert_eq!(
        h.server.stats().drops.total(),
        cases.len() as u64,
        "one count per drop"
    );
    assert_stateless(&h, "after malformed framing");
}

#[test]
fn tampered_or_foreign_integrity_gets_401_and_no_state() {
    let mut h = Harness::new();
    let mut alice = alice();
    alice.fingerprint = false;
    // Learn a nonce.
    let probe = alice.encode(Method::ALLOCATE, Class::Request, tid(1), false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, challenge) = h.input(alice.addr, &probe);
    alice.learn(&challenge);
    let signed = alice.encode(Method::ALLOCATE, Class::Request, tid(2), true, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&Lifetime(3600)).unwrap();
    });

    // One bit of LIFETIME flipped after signing.
    let mut tampered = signed.clone();
    tampered[35] ^= 0x01; // the last byte of LIFETIME's value
    // The MAC itself damaged.
    let mut bad_mac = signed.clone();
    let last = bad_mac.len() - 1;
    bad_mac[last] ^= 0x80;
    // A valid MAC under another user's key, sent with alice's USERNAME.
    let mut mallory = Client::new("192.0.2.10:40000", &TurnSecretExt::other(), "alice");
    mallory.fingerprint = false;
    mallory.username.clone_from(&alice.username);
    mallory.nonce.clone_from(&alice.nonce);
    let foreign = mallory.encode(Method::ALLOCATE, Class::Request, tid(3), true, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    // MESSAGE-INTEGRITY-SHA256 alone: this server speaks only SHA-1 long-term credentials.
    let mut sha256_only = alice.encode(Method::ALLOCATE, Class::Request, tid(4), false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&boson_dataplane_proto::stun::Username::new(&alice.username).unwrap())
            .unwrap();
        enc.add(&boson_dataplane_proto::stun::Realm::new(REALM).unwrap())
            .unwrap();
        enc.add(&Nonce::new(alice.nonce.as_deref().unwrap()).unwrap())
            .unwrap();
    });
    append(
        &mut sha256_only,
        AttrType::MESSAGE_INTEGRITY_SHA256,
        &[0x11; 32],
    );

    for (name, request) in [
        ("tampered attribute", tampered),
        ("damaged MAC", bad_mac),
        ("another key", foreign),
        ("SHA-256 integrity only", sha256_only),
    ] {
        let (action, response) = h.input(alice.addr, &request);
        assert!(matches!(action, ClientAction::Reply { .. }), "{name}");
        let response = Response(response);
        assert_eq!(response.code(), Some(401), "{name}");
        let m = response.message();
        assert!(!m.has_integrity(), "{name}: a 401 is not signed");
        assert!(
            m.get::<Nonce<'_>>().unwrap().is_some(),
            "{name}: fresh NONCE"
        );
        assert_stateless(&h, name);
    }
    // The untouched request still works: the 401s were about the damage alone.
    let (_, response) = h.input(alice.addr, &signed);
    assert!(Response(response).is_success());
}

/// A second secret nobody configured.
struct TurnSecretExt;

impl TurnSecretExt {
    fn other() -> boson_shared::TurnSecret {
        boson_shared::TurnSecret::new("not-a-configured-secret")
    }
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    // RFC 8489 §14.5: a receiver ignores what follows MESSAGE-INTEGRITY (but
    // MESSAGE-INTEGRITY-SHA256 and FINGERPRINT), so no one on the path can add to a signed
    // request.
    let mut h = Harness::new();
    let mut alice = alice();
    alice.fingerprint = false;
    let probe = alice.encode(Method::ALLOCATE, Class::Request, tid(1), false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, challenge) = h.input(alice.addr, &probe);
    alice.learn(&challenge);
    let mut allocate = alice.encode(Method::ALLOCATE, Class::Request, tid(2), true, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    append(&mut allocate, AttrType::LIFETIME, &3600u32.to_be_bytes());
    append(&mut allocate, AttrType::new(0x7001), b"must-understand");
    append(&mut allocate, AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    let (_, response) = h.input(alice.addr, &allocate);
    let response = Response(response);
    assert!(
        response.is_success(),
        "no 420 and no 442 for what follows MESSAGE-INTEGRITY: {:?}",
        response.code()
    );
    assert_eq!(response.lifetime(), 600, "the appended LIFETIME is ignored");
    let port = response.relay_port();

    // A CreatePermission for one peer, with a second peer appended after the MAC: only the
    // signed peer gets a permission.
    let intruder: SocketAddr = "198.51.100.66:9".parse().unwrap();
    let mut permission = alice.encode(
        Method::CREATE_PERMISSION,
        Class::Request,
        tid(3),
        true,
        |enc| {
            enc.add(&XorPeerAddress(addr(PEER))).unwrap();
        },
    );
    let mut appended = vec![0; 64];
    let len = {
        let mut enc = boson_dataplane_proto::stun::Encoder::new(
            &mut appended,
            boson_dataplane_proto::stun::MessageType::new(
                Method::CREATE_PERMISSION,
                Class::Request,
            ),
            tid(3),
        )
        .unwrap();
        enc.add(&XorPeerAddress(intruder)).unwrap();
        enc.finish(boson_dataplane_proto::stun::Trailer::new())
            .unwrap()
    };
    // The XOR-PEER-ADDRESS TLV as the encoder wrote it (XOR-ed with this transaction id).
    let tlv = &appended[20..len];
    append(&mut permission, AttrType::XOR_PEER_ADDRESS, &tlv[4..]);
    let (_, response) = h.input(alice.addr, &permission);
    assert!(Response(response).is_success());
    assert_eq!(h.server.stats().permissions, 1);
    assert!(matches!(
        h.peer_input(port, addr(PEER), b"signed").0,
        PeerAction::Forward { .. }
    ));
    assert_eq!(
        h.peer_input(port, intruder, b"appended").0,
        PeerAction::Drop(DropReason::NoPermission)
    );
}

#[test]
fn unknown_comprehension_required_attributes() {
    let mut h = Harness::new();
    let mut alice = alice();
    // A 420 lists at most 16 of them, however many the request carries.
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        for t in 0..40u16 {
            enc.add_raw(AttrType::new(0x7100 + t), &[]).unwrap();
        }
    });
    assert_eq!(response.code(), Some(420));
    let listed: Vec<AttrType> = response
        .message()
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(listed.len(), 16);
    assert_eq!(listed[0], AttrType::new(0x7100));
    assert!(response.0.len() <= 120, "{} bytes", response.0.len());
    assert_eq!(h.server.allocation_count(), 0);
    // Comprehension-optional ones (0x8000..) are ignored.
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add_raw(AttrType::new(0xC001), b"whatever").unwrap();
    });
    assert!(response.is_success(), "{:?}", response.code());
    assert!(h.create_permission(&mut alice, &[addr(PEER)]).is_success());
    // In an indication there is no one to tell (RFC 8489 §6.3.2): dropped, counted.
    let send = alice.encode(Method::SEND, Class::Indication, tid(9), false, |enc| {
        enc.add(&XorPeerAddress(addr(PEER))).unwrap();
        enc.add(&Data(b"x")).unwrap();
        enc.add_raw(AttrType::new(0x7001), &[]).unwrap();
    });
    assert_eq!(
        h.input(alice.addr, &send).0,
        ClientAction::Drop(DropReason::UnknownAttributeInIndication)
    );
    assert_eq!(
        h.server
            .stats()
            .drops
            .get(DropReason::UnknownAttributeInIndication),
        1
    );
    assert_eq!(h.server.stats().client_to_peer.packets, 0);
}

#[test]
fn hostile_rest_usernames_get_401() {
    // `bad_credentials_get_401` in turn_server.rs has expired, forged, non-numeric and
    // colon-less usernames; these are the edge cases of the parse.
    let password = "cGFzc3dvcmQ=";
    for username in [
        "99999999999999999999999:alice", // expiry overflows u64
        "-1:alice",
        "+1700003600:alice",
        " 1700003600:alice",
        "1700003600 :alice",
        ":alice",
        "0x65535A00:alice",
        "1700003600\u{0}:alice",
    ] {
        let mut h = Harness::new();
        let mut client = Client::with_credential("192.0.2.10:1", username, password);
        let response = h.request(&mut client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        });
        assert_eq!(response.code(), Some(401), "{username:?}");
        assert_stateless(&h, username);
    }
    // A well-formed username whose password was minted for another username: its MAC does not
    // verify under the password the server derives.
    let mut h = Harness::new();
    let real = boson_shared::TurnCredential::mint(&secret_a(), "alice", UNIX_START + 3600);
    let mut client = Client::with_credential("192.0.2.10:1", "1700003600:mallory", &real.password);
    let response = h.request(&mut client, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(401));
    // The wall clock moves on: a credential valid at the start expires, and the same request
    // that worked gets 401.
    let mut h = Harness::new();
    let mut alice = Client::with_expiry("192.0.2.10:2", &secret_a(), "alice", UNIX_START + 60);
    assert_eq!(h.refresh(&mut alice, None).code(), Some(437));
    h.advance(Duration::from_secs(61));
    assert_eq!(h.refresh(&mut alice, None).code(), Some(401));
}

#[test]
fn forged_and_garbled_nonces_get_438() {
    // `stale_and_foreign_nonces_get_438_with_a_fresh_nonce` covers expired and other-source
    // nonces; these are nonces the server never minted.
    for nonce in [
        "000000000000000000000000",
        "ffffffffffffffffffffffff",
        "not-hex-not-hex-not-hex!",
        "0",
        "00000000000000000000000000000000000000000000000000",
    ] {
        let mut h = Harness::new();
        let mut alice = alice();
        alice.nonce = Some(nonce.to_owned());
        let request = alice.encode(Method::ALLOCATE, Class::Request, tid(1), true, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        });
        let (_, response) = h.input(alice.addr, &request);
        let response = Response(response);
        assert_eq!(response.code(), Some(438), "{nonce:?}");
        assert!(!response.message().has_integrity());
        assert_stateless(&h, nonce);
        // The fresh nonce works.
        alice.learn(&response.0);
        assert_ne!(alice.nonce.as_deref(), Some(nonce));
        h.allocate(&mut alice);
    }
}

/// One of 10 000 spoofed sources: IPv4 addresses of 198.18.0.0/15, each with its own port.
fn spoofed(i: u32) -> ClientAddr {
    let ip = Ipv4Addr::from(0xC612_0000 + i);
    ClientAddr::new(SocketAddr::new(IpAddr::V4(ip), 1024 + (i % 60_000) as u16))
}

#[test]
fn ten_thousand_spoofed_allocates_leave_no_state() {
    let mut h = Harness::new();
    let before = h.server.footprint();
    let stranger = Client::new("192.0.2.200:1", &TurnSecretExt::other(), "mallory");
    let expired = Client::with_expiry("192.0.2.200:2", &secret_a(), "old", UNIX_START - 1);
    let mut valid = alice();
    valid.nonce = Some("0123456789abcdef01234567".to_owned());
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..10_000u32 {
        let request = match i % 4 {
            0 => stranger.encode(Method::ALLOCATE, Class::Request, tid(i), false, |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
            }),
            1 => {
                let mut forged = stranger.clone();
                forged.nonce = valid.nonce.clone();
                forged.encode(Method::ALLOCATE, Class::Request, tid(i), true, |enc| {
                    enc.add(&RequestedTransport::UDP).unwrap();
                })
            }
            2 => {
                let mut expired = expired.clone();
                expired.nonce = valid.nonce.clone();
                expired.encode(Method::ALLOCATE, Class::Request, tid(i), true, |enc| {
                    enc.add(&RequestedTransport::UDP).unwrap();
                })
            }
            _ => valid.encode(Method::ALLOCATE, Class::Request, tid(i), true, |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
            }),
        };
        bytes_in += request.len();
        let (action, response) = h.input(spoofed(i), &request);
        if let ClientAction::Reply { .. } = action {
            bytes_out += response.len();
            *codes.entry(Response(response).code()).or_insert(0u32) += 1;
        }
    }
    assert_stateless(&h, "after 10 000 spoofed Allocates");
    assert_eq!(h.server.footprint(), before, "no table grew");
    // Every source had its own fresh bucket, so each got its challenge: 401 for no, forged
    // or expired credentials, 438 for a good credential with a nonce the server never minted.
    assert_eq!(
        codes,
        [(Some(401), 7_500), (Some(438), 2_500)]
            .into_iter()
            .collect()
    );
    assert!(
        bytes_out <= bytes_in,
        "{bytes_out} bytes out for {bytes_in} in: the mix reflects less than it takes"
    );
}

#[test]
fn a_victim_gets_at_most_the_burst_whatever_the_flood() {
    // The same 10 000 requests, all claiming the victim's address (or addresses in the
    // victim's /64): the victim receives the rate limit's burst and nothing more.
    let victims: [fn(u32) -> ClientAddr; 2] = [
        |i| {
            ClientAddr::new(SocketAddr::new(
                [203, 0, 113, 77].into(),
                1024 + (i % 60_000) as u16,
            ))
        },
        |i| {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, (i >> 16) as u16, i as u16);
            ClientAddr::new(SocketAddr::new(IpAddr::V6(ip), 5000))
        },
    ];
    for victim in victims {
        let mut h = Harness::new();
        let client = alice();
        let mut answered = 0;
        let mut reflected = 0;
        for i in 0..10_000u32 {
            let request = client.encode(Method::ALLOCATE, Class::Request, tid(i), false, |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
            });
            let (action, response) = h.input(victim(i), &request);
            if matches!(action, ClientAction::Reply { .. }) {
                answered += 1;
                reflected += response.len();
            }
        }
        assert_eq!(answered, 20, "the default burst");
        assert!(reflected <= 20 * 100, "{reflected} bytes");
        assert_eq!(
            h.server.stats().drops.get(DropReason::RateLimited),
            10_000 - 20
        );
        assert_stateless(&h, "after a flood at one victim");
    }
}

#[test]
fn a_leaked_credential_from_many_sources_is_held_to_its_quota() {
    let mut h = Harness::with_config(config().with_allocation_quota(10, 4));
    let mut granted = 0;
    let mut quota = 0;
    for i in 0..2_000u32 {
        let mut client = alice();
        client.addr = spoofed(i);
        let response = h.request(&mut client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        });
        match response.code() {
            None => granted += 1,
            Some(486) => quota += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((granted, quota), (4, 1_996));
    let footprint = h.server.footprint();
    assert_eq!(footprint.allocations, 4);
    assert_eq!(footprint.clients, 4);
    assert_eq!(footprint.users, 1);
    assert_eq!(footprint.timers, 4, "one expiry timer per allocation");
    assert_eq!(
        h.server
            .stats()
            .error_responses
            .get(ErrorCode::ALLOCATION_QUOTA_REACHED),
        1_996
    );
}

#[test]
fn amplification_of_unauthenticated_responses_is_bounded() {
    let mut h = Harness::new();
    let v4 = ClientAddr::new("192.0.2.10:40000".parse().unwrap());
    let v6 = ClientAddr::new("[2001:db8::10]:40000".parse().unwrap());
    let mut fingerprinted = alice();
    fingerprinted.fingerprint = true;
    let mut plain = alice();
    plain.fingerprint = false;
    let binding = plain.encode(Method::BINDING, Class::Request, tid(1), false, |_| {});
    let binding_fp = fingerprinted.encode(Method::BINDING, Class::Request, tid(2), false, |_| {});
    let allocate = plain.encode(Method::ALLOCATE, Class::Request, tid(3), false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let bare_allocate = plain.encode(Method::ALLOCATE, Class::Request, tid(4), false, |_| {});
    let unknown = plain.encode(Method::BINDING, Class::Request, tid(5), false, |enc| {
        enc.add_raw(AttrType::new(0x7001), &[]).unwrap();
    });
    assert_eq!(
        (
            binding.len(),
            binding_fp.len(),
            allocate.len(),
            bare_allocate.len(),
            unknown.len()
        ),
        (20, 28, 28, 20, 24),
        "the minimal requests"
    );
    // (request, source, expected response length, expected class or code)
    let cases: [(&str, &[u8], ClientAddr, usize); 7] = [
        // Header + XOR-MAPPED-ADDRESS (12 for IPv4, 24 for IPv6).
        ("Binding, IPv4", &binding, v4, 32),
        ("Binding, IPv6", &binding, v6, 44),
        // + FINGERPRINT on both sides.
        ("Binding with FINGERPRINT, IPv6", &binding_fp, v6, 52),
        // Header + ERROR-CODE 420 (28) + UNKNOWN-ATTRIBUTES (8).
        ("Binding with one unknown attribute", &unknown, v4, 56),
        // Header + ERROR-CODE 401 (24) + REALM (4 + 12) + NONCE (4 + 24).
        ("Allocate", &allocate, v4, 88),
        ("bare Allocate header", &bare_allocate, v4, 88),
        ("bare Allocate header, IPv6", &bare_allocate, v6, 88),
    ];
    let mut worst = 0.0f64;
    for (name, request, from, expected) in cases {
        let (action, response) = h.input(from, request);
        assert!(matches!(action, ClientAction::Reply { .. }), "{name}");
        assert!(Message::parse(&response).is_ok(), "{name}");
        assert_eq!(response.len(), expected, "{name}");
        let ratio = response.len() as f64 / request.len() as f64;
        worst = worst.max(ratio);
    }
    // 88 / 20: the 401 to a bare header is the worst case, and it is rate limited per
    // source; a Binding answer (unlimited, as for any STUN server) stays under 2.4.
    assert!(worst <= 4.4, "worst amplification {worst}");
    for (request, from) in [
        (&binding, v4),
        (&binding, v6),
        (&binding_fp, v6),
        (&unknown, v4),
    ] {
        let (_, response) = h.input(from, request);
        assert!(
            response.len() as f64 / request.len() as f64 <= 2.4,
            "{} / {}",
            response.len(),
            request.len()
        );
    }
    assert_stateless(&h, "after the amplification probes");
}

#[test]
fn allocation_churn_leaves_no_timers_behind() {
    // A client with a valid credential allocates, opens permissions and a channel, and
    // deletes, in a loop: every timer of each allocation goes with it, so the queue does not
    // grow for the 15 minutes a channel's timer would otherwise stay.
    let mut h = Harness::new();
    let mut alice = alice();
    for i in 0..1_000u32 {
        h.allocate(&mut alice);
        let peer = SocketAddr::from(([198, 51, 100, 1 + (i % 200) as u8], 7000));
        assert!(
            h.create_permission(&mut alice, &[addr(PEER), peer])
                .is_success()
        );
        assert!(h.channel_bind(&mut alice, 0x4000, peer).is_success());
        assert!(h.refresh(&mut alice, Some(0)).is_success());
        h.commands.clear();
        assert_stateless(&h, &format!("after cycle {i}"));
    }
    // An allocation that expires, or whose socket could not be bound, takes its timers too.
    let port = h.allocate(&mut alice);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    h.server.handle_allocation_failed(port);
    let footprint = h.server.footprint();
    assert_eq!(
        footprint.timers, 1,
        "the port's quarantine only: {footprint:?}"
    );
    h.advance(Duration::from_secs(60));
    h.commands.clear();
    assert_stateless(&h, "after a failed bind");
    h.allocate(&mut alice);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    h.advance(Duration::from_secs(601));
    h.commands.clear();
    assert_stateless(&h, "after an expiry");
    assert_eq!(h.server.stats().allocations_expired, 1);
}
