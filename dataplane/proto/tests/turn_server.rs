//! The TURN server, one message and one error path at a time, through the public API.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boson_dataplane_proto::stun::{
    AttrType, Class, ErrorCodeAttr, Message, Method, Nonce, Realm, UnknownAttributes,
    XorMappedAddress,
};
use boson_dataplane_proto::turn::attr::{
    Data, EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress,
};
use boson_dataplane_proto::turn::{Cidr, PeerFilter, PortTable};
use boson_dataplane_proto::{ClientAction, Command, DropReason, PeerAction, RelayPort};
use common::*;

const PEER: &str = "198.51.100.20:7000";

fn alice() -> Client {
    Client::new("192.0.2.10:40000", &secret_a(), "alice")
}

/// A harness with alice allocated and a permission for [`PEER`].
fn allocated() -> (Harness, Client, RelayPort) {
    let mut h = Harness::new();
    let mut alice = alice();
    let port = h.allocate(&mut alice);
    assert!(h.create_permission(&mut alice, &[addr(PEER)]).is_success());
    (h, alice, port)
}

#[test]
fn unauthenticated_allocate_gets_a_small_401_and_leaves_no_state() {
    let mut h = Harness::new();
    let mut client = alice();
    client.fingerprint = false;
    let tid = client.next_tid();
    let request = client.encode(Method::ALLOCATE, Class::Request, tid, false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(request.len(), 28, "the minimal Allocate");
    let (action, response) = h.input(client.addr, &request);
    assert!(matches!(action, ClientAction::Reply { .. }));
    let r = Response(response.clone());
    assert_eq!(r.code(), Some(401));
    let m = r.message();
    assert!(!m.has_integrity());
    assert_eq!(
        m.get::<Realm<'_>>().unwrap().map(|r| r.as_str()),
        Some(REALM)
    );
    assert_eq!(m.get::<Nonce<'_>>().unwrap().unwrap().as_str().len(), 24);
    // The amplification bound of the `turn` module doc.
    let bound = request.len() + 56 + REALM.len().next_multiple_of(4);
    assert!(response.len() <= bound, "{} > {bound}", response.len());
    assert_eq!(response.len(), 88);
    assert!(
        response.len() * 10 <= request.len() * 32,
        "ratio {} / {}",
        response.len(),
        request.len()
    );
    // The worst case: a bare header, and any request with FINGERPRINT.
    for fingerprint in [false, true] {
        client.fingerprint = fingerprint;
        let tid = client.next_tid();
        let bare = client.encode(Method::ALLOCATE, Class::Request, tid, false, |_| {});
        let (_, response) = h.input(client.addr, &bare);
        assert_eq!(Response(response.clone()).code(), Some(401));
        assert!(response.len() <= bare.len() + 56 + REALM.len().next_multiple_of(4));
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.commands.is_empty());
    assert_eq!(h.server.poll_timeout(), None, "no timer, no state");
    assert_eq!(
        h.server
            .stats()
            .error_responses
            .get(boson_dataplane_proto::stun::ErrorCode::UNAUTHENTICATED),
        3
    );
}

#[test]
fn allocate_success_carries_relayed_mapped_and_lifetime() {
    let mut h = Harness::new();
    let mut alice = alice();
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add_raw(AttrType::DONT_FRAGMENT, &[]).unwrap();
    });
    assert!(response.is_success());
    let relayed = response.relayed();
    assert_eq!(relayed.ip(), ip("203.0.113.1"));
    assert!((50_000..=50_009).contains(&relayed.port()));
    assert_eq!(response.lifetime(), 600);
    assert_eq!(
        response
            .message()
            .get::<XorMappedAddress>()
            .unwrap()
            .unwrap()
            .0,
        alice.addr.get()
    );
    assert_eq!(
        h.commands,
        [Command::CreateAllocation {
            port: response.relay_port()
        }]
    );
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.server.available_ports(), 9);
    assert!(h.server.poll_timeout().is_some());
}

#[test]
fn allocate_lifetime_is_clamped() {
    for (requested, granted) in [
        (1, 600),
        (599, 600),
        (1200, 1200),
        (3600, 3600),
        (99_999, 3600),
    ] {
        let mut h = Harness::new();
        let mut alice = alice();
        let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
            enc.add(&Lifetime(requested)).unwrap();
        });
        assert_eq!(response.lifetime(), granted, "requested {requested}");
    }
}

#[test]
fn allocate_retransmission_gets_the_same_response_and_a_new_one_437() {
    let mut h = Harness::new();
    let mut alice = alice();
    let tid = alice.next_tid();
    let allocate = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
    };
    let first = h.request_with_tid(&mut alice, Method::ALLOCATE, tid, allocate);
    assert!(first.is_success());
    let again = h.request_with_tid(&mut alice, Method::ALLOCATE, tid, allocate);
    assert_eq!(again, first, "byte for byte");
    assert_eq!(h.commands.len(), 1, "one CreateAllocation only");
    let other = h.request(&mut alice, Method::ALLOCATE, allocate);
    assert_eq!(other.code(), Some(437));
}

#[test]
fn allocate_attribute_errors() {
    type Attrs = fn(&mut boson_dataplane_proto::stun::Encoder<'_>);
    let cases: [(Attrs, u16); 8] = [
        (|_| {}, 400),
        (|enc| enc.add(&RequestedTransport(6)).unwrap(), 442),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add(&RequestedAddressFamily::IPV6).unwrap();
            },
            440,
        ),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add_raw(AttrType::RESERVATION_TOKEN, &[1; 8]).unwrap();
            },
            508,
        ),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add_raw(AttrType::RESERVATION_TOKEN, &[1; 4]).unwrap();
            },
            400,
        ),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add_raw(AttrType::RESERVATION_TOKEN, &[1; 8]).unwrap();
                enc.add(&RequestedAddressFamily::IPV4).unwrap();
            },
            400,
        ),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add_raw(AttrType::RESERVATION_TOKEN, &[1; 8]).unwrap();
                enc.add(&EvenPort { reserve: false }).unwrap();
            },
            400,
        ),
        (
            |enc| {
                enc.add(&RequestedTransport::UDP).unwrap();
                enc.add_raw(AttrType::LIFETIME, &[0; 2]).unwrap();
            },
            400,
        ),
    ];
    for (i, (attrs, code)) in cases.into_iter().enumerate() {
        let mut h = Harness::new();
        let mut alice = alice();
        let response = h.request(&mut alice, Method::ALLOCATE, attrs);
        assert_eq!(response.code(), Some(code), "case {i}");
        assert_eq!(h.server.allocation_count(), 0, "case {i}");
        assert!(h.commands.is_empty(), "case {i}");
    }
}

#[test]
fn even_port_without_reservation_gets_an_even_port() {
    let mut h = Harness::new();
    for i in 0..5 {
        let mut client = Client::new(&format!("192.0.2.10:{}", 41_000 + i), &secret_a(), "even");
        let response = h.request(&mut client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
            enc.add(&EvenPort { reserve: false }).unwrap();
        });
        assert_eq!(response.relay_port().get() % 2, 0);
    }
    let mut client = Client::new("192.0.2.10:41999", &secret_a(), "even");
    let response = h.request(&mut client, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&EvenPort { reserve: false }).unwrap();
    });
    assert_eq!(response.code(), Some(508), "no even port left");
}

/// RTCP's socket: another address of the client that reserved.
fn rtcp() -> Client {
    Client::new("192.0.2.10:40001", &secret_a(), "alice")
}

#[test]
fn even_port_with_reserve_returns_a_token_for_the_next_port() {
    let mut h = Harness::new();
    let mut alice = alice();
    let tid = alice.next_tid();
    let reserve = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&EvenPort { reserve: true }).unwrap();
    };
    let response = h.request_with_tid(&mut alice, Method::ALLOCATE, tid, reserve);
    assert!(response.is_success(), "{:?}", response.code());
    let port = response.relay_port();
    assert_eq!(port.get() % 2, 0);
    let token = response.reservation_token().expect("a RESERVATION-TOKEN");
    assert_eq!(token.0[..2], (port.get() + 1).to_be_bytes(), "names P + 1");
    assert_eq!(h.commands, [Command::CreateAllocation { port }], "P only");
    assert_eq!(h.server.available_ports(), 8, "P allocated, P + 1 reserved");
    let again = h.request_with_tid(&mut alice, Method::ALLOCATE, tid, reserve);
    assert_eq!(again, response, "a retransmission carries the same token");
    // Plain allocations take the other 8 ports, never P + 1.
    for i in 0..8 {
        let mut c = Client::new(&format!("192.0.2.11:{i}"), &secret_a(), &format!("u{i}"));
        assert_ne!(h.allocate(&mut c).get(), port.get() + 1);
    }
    let mut late = Client::new("192.0.2.11:99", &secret_a(), "late");
    let response = h.request(&mut late, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(508));
    assert_eq!(
        h.allocate_reserved(&mut rtcp(), token).relay_port().get(),
        port.get() + 1
    );
}

#[test]
fn even_port_with_reserve_needs_a_free_pair() {
    let mut h = Harness::with_config(
        boson_dataplane_proto::TurnConfig::new(REALM, vec![secret_a()], RELAY_IP.into(), 7..=9)
            .unwrap(),
    );
    // 8 with 9 is the only pair; take 9.
    let mut taken = Vec::new();
    while taken.len() < 3 {
        let mut c = Client::new(&format!("192.0.2.11:{}", taken.len()), &secret_a(), "u");
        let port = h.allocate(&mut c);
        taken.push((port, c));
        if port.get() == 9 {
            break;
        }
    }
    for (port, c) in &mut taken {
        if port.get() != 9 {
            assert!(h.refresh(c, Some(0)).is_success());
        }
    }
    let response = h.allocate_reserving(&mut alice());
    assert_eq!(response.code(), Some(508));
    assert_eq!(h.server.allocation_count(), 1, "nothing left claimed");
    assert_eq!(h.server.available_ports(), 2);
}

#[test]
fn another_client_allocates_the_reserved_port_with_the_token_once() {
    let mut h = Harness::new();
    let response = h.allocate_reserving(&mut alice());
    let (rtp, token) = (response.relay_port(), response.reservation_token().unwrap());
    let mut rtcp = rtcp();
    let tid = rtcp.next_tid();
    let with_token = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&token).unwrap();
    };
    let second = h.request_with_tid(&mut rtcp, Method::ALLOCATE, tid, with_token);
    assert!(second.is_success(), "{:?}", second.code());
    assert_eq!(second.relay_port().get(), rtp.get() + 1);
    assert_eq!(second.reservation_token(), None);
    assert_eq!(
        h.commands.last(),
        Some(&Command::CreateAllocation {
            port: second.relay_port()
        })
    );
    let again = h.request_with_tid(&mut rtcp, Method::ALLOCATE, tid, with_token);
    assert_eq!(again, second, "a retransmission gets the same response");
    assert_eq!(h.server.allocation_count(), 2);
    let mut carol = Client::new("192.0.2.12:1", &secret_a(), "carol");
    assert_eq!(
        h.allocate_reserved(&mut carol, token).code(),
        Some(508),
        "used"
    );
    // The reservation's timer finds the port taken and leaves it be.
    h.advance(Duration::from_secs(30));
    assert_eq!(h.server.available_ports(), 8);
    assert!(h.refresh(&mut rtcp, None).is_success());
}

#[test]
fn an_expired_reservation_frees_the_port_and_its_token_gets_508() {
    let mut h = Harness::new();
    let token = h
        .allocate_reserving(&mut alice())
        .reservation_token()
        .unwrap();
    h.advance(Duration::from_secs(29));
    assert_eq!(h.server.available_ports(), 8);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.server.available_ports(), 9, "P + 1 free again");
    assert_eq!(h.allocate_reserved(&mut rtcp(), token).code(), Some(508));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn a_failed_bind_of_the_even_port_drops_its_reservation() {
    let mut h = Harness::new();
    let response = h.allocate_reserving(&mut alice());
    let (port, token) = (response.relay_port(), response.reservation_token().unwrap());
    h.server.handle_allocation_failed(port);
    assert_eq!(h.server.available_ports(), 9, "P quarantined, P + 1 free");
    assert_eq!(h.allocate_reserved(&mut rtcp(), token).code(), Some(508));
}

#[test]
fn servers_sharing_a_port_table_honour_each_others_reservations() {
    // Two workers: the kernel sent the RTCP socket's Allocate to the second one.
    let table = Arc::new(PortTable::new(50_000..=50_009).unwrap());
    let mut first = Harness::with_config(config().with_port_table(Arc::clone(&table)));
    let mut second = Harness::with_config(config().with_port_table(Arc::clone(&table)));
    let response = first.allocate_reserving(&mut alice());
    let (rtp, token) = (response.relay_port(), response.reservation_token().unwrap());
    assert_eq!(table.available(), 8);
    let rtcp_response = second.allocate_reserved(&mut rtcp(), token);
    assert_eq!(rtcp_response.relay_port().get(), rtp.get() + 1);
    assert_eq!(
        second.commands,
        [Command::CreateAllocation {
            port: rtcp_response.relay_port()
        }],
        "the second worker binds P + 1"
    );
    assert_eq!(
        first
            .allocate_reserved(&mut Client::new("192.0.2.12:1", &secret_a(), "c"), token)
            .code(),
        Some(508),
        "used, on either worker"
    );
    // The first worker's reservation timer fires after the second took the port.
    first.advance(Duration::from_secs(30));
    assert_eq!(table.available(), 8);
    // Plain allocations on both never collide, and together they use up the table.
    let mut ports = vec![rtp, rtcp_response.relay_port()];
    for i in 0..8 {
        let h = if i % 2 == 0 { &mut first } else { &mut second };
        let mut c = Client::new(&format!("192.0.2.13:{i}"), &secret_a(), &format!("u{i}"));
        ports.push(h.allocate(&mut c));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 10);
    assert_eq!(second.server.available_ports(), 0);
    // The reservation's P + 1 is freed by the worker holding its allocation.
    let mut rtcp = rtcp();
    assert!(second.refresh(&mut rtcp, Some(0)).is_success());
    assert_eq!(first.server.available_ports(), 1);
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_after_authentication() {
    let mut h = Harness::new();
    let mut alice = alice();
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add_raw(AttrType::new(0x7001), b"??").unwrap();
        enc.add_raw(AttrType::new(0x8FFF), b"optional").unwrap();
    });
    assert_eq!(response.code(), Some(420));
    let listed: Vec<_> = response
        .message()
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(listed, [AttrType::new(0x7001)]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn bad_credentials_get_401() {
    let expired = Client::with_expiry("192.0.2.10:1", &secret_a(), "alice", UNIX_START - 1);
    let forged = Client::new(
        "192.0.2.10:2",
        &boson_shared::TurnSecret::new("wrong"),
        "alice",
    );
    let non_numeric = Client::with_credential("192.0.2.10:3", "soon:alice", "cGFzc3dvcmQ=");
    let no_colon = Client::with_credential("192.0.2.10:4", "alice", "cGFzc3dvcmQ=");
    let mut wrong_realm = alice();
    wrong_realm.addr = boson_dataplane_proto::ClientAddr::new(addr("192.0.2.10:5"));
    for (i, mut client) in [expired, forged, non_numeric, no_colon, wrong_realm]
        .into_iter()
        .enumerate()
    {
        let mut h = Harness::new();
        if i == 4 {
            // Learn a nonce, then sign with another realm.
            let _ = h.request(&mut client, Method::ALLOCATE, |_| {});
            client.realm = "other.realm".to_owned();
        }
        let response = h.request(&mut client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        });
        assert_eq!(response.code(), Some(401), "case {i}");
        assert!(
            response.message().get::<Nonce<'_>>().unwrap().is_some(),
            "fresh nonce"
        );
        assert_eq!(h.server.allocation_count(), 0);
    }
}

#[test]
fn missing_username_realm_or_nonce_with_integrity_gets_400() {
    let mut h = Harness::new();
    let alice = alice();
    let tid = TransactionIdExt::tid(7);
    // MESSAGE-INTEGRITY without USERNAME/REALM/NONCE.
    let mut buf = vec![0u8; 256];
    let mut enc = boson_dataplane_proto::stun::Encoder::new(
        &mut buf,
        boson_dataplane_proto::stun::MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    )
    .unwrap();
    enc.add(&RequestedTransport::UDP).unwrap();
    let key = alice.key();
    let len = enc
        .finish(boson_dataplane_proto::stun::Trailer::new().with_integrity(key.as_integrity_key()))
        .unwrap();
    let (_, response) = h.input(alice.addr, &buf[..len]);
    let r = Response(response);
    assert_eq!(r.code(), Some(400));
    assert!(!r.message().has_integrity());
}

struct TransactionIdExt;

impl TransactionIdExt {
    fn tid(n: u8) -> boson_dataplane_proto::stun::TransactionId {
        boson_dataplane_proto::stun::TransactionId::new([n; 12])
    }
}

#[test]
fn stale_and_foreign_nonces_get_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let mut alice = alice();
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&Lifetime(3600)).unwrap();
    });
    assert!(response.is_success());
    let old_nonce = alice.nonce.clone().unwrap();

    // Another client replaying alice's nonce from its own address: 438.
    let mut bob = Client::new("192.0.2.11:40000", &secret_a(), "bob");
    bob.nonce = Some(old_nonce.clone());
    let tid = bob.next_tid();
    let request = bob.encode(Method::ALLOCATE, Class::Request, tid, true, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, response) = h.input(bob.addr, &request);
    assert_eq!(Response(response).code(), Some(438));

    // After the nonce lifetime, alice's refresh gets 438, then succeeds with the new nonce.
    h.advance(Duration::from_secs(600));
    let tid = alice.next_tid();
    let request = alice.encode(Method::REFRESH, Class::Request, tid, true, |_| {});
    let (_, response) = h.input(alice.addr, &request);
    let r = Response(response);
    assert_eq!(r.code(), Some(438));
    let fresh = r
        .message()
        .get::<Nonce<'_>>()
        .unwrap()
        .unwrap()
        .as_str()
        .to_owned();
    assert_ne!(fresh, old_nonce);
    assert!(r.message().get::<Realm<'_>>().unwrap().is_some());
    alice.learn(&r.0);
    let ok = h.refresh(&mut alice, None);
    assert!(ok.is_success());
}

#[test]
fn credentials_of_either_secret_work() {
    let mut h = Harness::new();
    let mut a = Client::new("192.0.2.10:1000", &secret_a(), "alice");
    let mut b = Client::new("192.0.2.10:1001", &secret_b(), "alice");
    h.allocate(&mut a);
    h.allocate(&mut b);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn another_username_on_the_same_five_tuple_gets_441() {
    let mut h = Harness::new();
    let mut alice = alice();
    h.allocate(&mut alice);
    let mut mallory = Client::new("192.0.2.10:40000", &secret_a(), "mallory");
    let response = h.refresh(&mut mallory, None);
    assert_eq!(response.code(), Some(441));
    let response = h.create_permission(&mut mallory, &[addr(PEER)]);
    assert_eq!(response.code(), Some(441));
}

#[test]
fn refresh_paths() {
    let mut h = Harness::new();
    let mut alice = alice();
    assert_eq!(h.refresh(&mut alice, None).code(), Some(437));
    let port = h.allocate(&mut alice);
    assert_eq!(h.refresh(&mut alice, Some(2000)).lifetime(), 2000);
    assert_eq!(h.refresh(&mut alice, Some(5)).lifetime(), 600);
    let response = h.request(&mut alice, Method::REFRESH, |enc| {
        enc.add(&RequestedAddressFamily::IPV6).unwrap();
    });
    assert_eq!(response.code(), Some(443));
    // LIFETIME 0 deletes at once.
    let response = h.refresh(&mut alice, Some(0));
    assert!(response.is_success());
    assert_eq!(response.lifetime(), 0);
    assert_eq!(h.commands.last(), Some(&Command::FreeAllocation { port }));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.available_ports(), 10);
    assert_eq!(h.server.stats().allocations_deleted, 1);
    assert_eq!(h.refresh(&mut alice, None).code(), Some(437));
}

#[test]
fn create_permission_paths() {
    let mut h = Harness::with_config(config().with_allocation_limits(3, 2));
    let mut alice = alice();
    assert_eq!(
        h.create_permission(&mut alice, &[addr(PEER)]).code(),
        Some(437)
    );
    h.allocate(&mut alice);
    assert_eq!(h.create_permission(&mut alice, &[]).code(), Some(400));
    // Several peers at once (the same IP twice counts once).
    let response = h.create_permission(
        &mut alice,
        &[
            addr("198.51.100.1:1"),
            addr("198.51.100.2:2"),
            addr("198.51.100.2:3"),
        ],
    );
    assert!(response.is_success());
    assert_eq!(h.server.stats().permissions, 2);
    // One denied peer refuses the whole request.
    let response = h.create_permission(&mut alice, &[addr("198.51.100.3:1"), addr("10.0.0.1:1")]);
    assert_eq!(response.code(), Some(403));
    assert_eq!(h.server.stats().permissions, 2);
    assert_eq!(
        h.create_permission(&mut alice, &[addr("[2001:db8::1]:1")])
            .code(),
        Some(443)
    );
    // Quota: 3 per allocation; refreshing existing ones is free.
    assert!(
        h.create_permission(&mut alice, &[addr("198.51.100.3:1")])
            .is_success()
    );
    assert_eq!(
        h.create_permission(&mut alice, &[addr("198.51.100.4:1")])
            .code(),
        Some(508)
    );
    assert!(
        h.create_permission(
            &mut alice,
            &[addr("198.51.100.1:9"), addr("198.51.100.3:9")]
        )
        .is_success()
    );
}

#[test]
fn channel_bind_paths() {
    let mut h = Harness::with_config(config().with_allocation_limits(8, 2));
    let mut alice = alice();
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr(PEER)).code(),
        Some(437)
    );
    h.allocate(&mut alice);
    for bad in [0x3FFF, 0x8000, 0xFFFF, 0x0001] {
        assert_eq!(
            h.channel_bind(&mut alice, bad, addr(PEER)).code(),
            Some(400),
            "{bad:#x}"
        );
    }
    let missing_peer = h.request(&mut alice, Method::CHANNEL_BIND, |enc| {
        enc.add_raw(AttrType::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(missing_peer.code(), Some(400));
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr("127.0.0.1:1"))
            .code(),
        Some(403)
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr("[2001:db8::1]:1"))
            .code(),
        Some(443)
    );
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    assert_eq!(
        h.server.stats().permissions,
        1,
        "ChannelBind installs a permission"
    );
    // Refreshing the same binding is fine.
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    // Same number to another peer, or same peer to another number: 400.
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr("198.51.100.21:7000"))
            .code(),
        Some(400)
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4001, addr(PEER)).code(),
        Some(400)
    );
    // Quota: 2 channels.
    assert!(
        h.channel_bind(&mut alice, 0x4FFF, addr("198.51.100.21:7000"))
            .is_success()
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4002, addr("198.51.100.22:7000"))
            .code(),
        Some(508)
    );
    assert_eq!(h.server.stats().channels, 2);
}

#[test]
fn send_indication_relays_only_with_a_permission() {
    let (mut h, mut alice, port) = allocated();
    let (action, bytes) = h.send_indication(&mut alice, addr(PEER), b"hello peer");
    let ClientAction::Relay {
        port: relay_port,
        peer,
        payload,
    } = action
    else {
        panic!("expected a relay, got {action:?}");
    };
    assert_eq!(relay_port, port);
    assert_eq!(peer.get(), addr(PEER));
    assert_eq!(&bytes[payload], b"hello peer");
    assert_eq!(h.server.stats().client_to_peer.packets, 1);
    assert_eq!(h.server.stats().client_to_peer.bytes, 10);

    for (peer, reason) in [
        ("198.51.100.99:1", DropReason::NoPermission),
        ("127.0.0.1:1", DropReason::PeerFiltered),
        ("169.254.169.254:80", DropReason::PeerFiltered),
        ("[::ffff:10.0.0.1]:1", DropReason::PeerFiltered),
        ("[2001:db8::1]:1", DropReason::PeerFamilyMismatch),
    ] {
        let (action, _) = h.send_indication(&mut alice, addr(peer), b"x");
        assert_eq!(action, ClientAction::Drop(reason), "{peer}");
    }
    // Without XOR-PEER-ADDRESS or DATA.
    let tid = alice.next_tid();
    let bytes = alice.encode(Method::SEND, Class::Indication, tid, false, |enc| {
        enc.add(&Data(b"x")).unwrap();
    });
    assert_eq!(
        h.input(alice.addr, &bytes).0,
        ClientAction::Drop(DropReason::MalformedIndication)
    );
    // From a 5-tuple without an allocation.
    let mut bob = Client::new("192.0.2.99:1", &secret_a(), "bob");
    let (action, _) = h.send_indication(&mut bob, addr(PEER), b"x");
    assert_eq!(action, ClientAction::Drop(DropReason::NoAllocation));
    assert_eq!(h.server.stats().drops.get(DropReason::PeerFiltered), 3);
}

#[test]
fn channel_data_from_the_client() {
    let (mut h, mut alice, port) = allocated();
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Drop(DropReason::UnboundChannel)
    );
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    let (action, frame) = h.channel_data(&alice, 0x4000, b"payload");
    let ClientAction::Relay {
        port: relay_port,
        peer,
        payload,
    } = action
    else {
        panic!("expected a relay, got {action:?}");
    };
    assert_eq!((relay_port, peer.get()), (port, addr(PEER)));
    assert_eq!(payload, 4..11);
    assert_eq!(&frame[payload], b"payload");
    // Padding is optional; more than 3 bytes of it is not.
    let mut padded = channel_data_frame(0x4000, b"payload");
    padded.push(0);
    assert!(matches!(
        h.input(alice.addr, &padded).0,
        ClientAction::Relay { .. }
    ));
    padded.extend_from_slice(&[0; 3]);
    assert_eq!(
        h.input(alice.addr, &padded).0,
        ClientAction::Drop(DropReason::ChannelDataTrailingBytes)
    );
    let mut short = channel_data_frame(0x4000, b"payload");
    short.pop();
    assert_eq!(
        h.input(alice.addr, &short).0,
        ClientAction::Drop(DropReason::ChannelDataTruncated)
    );
    // RFC 5766's upper channel numbers are ChannelData; this one is not bound.
    assert_eq!(
        h.input(alice.addr, &[0x60, 0, 0, 0]).0,
        ClientAction::Drop(DropReason::UnboundChannel)
    );
    let stranger = boson_dataplane_proto::ClientAddr::new(addr("192.0.2.50:1"));
    assert_eq!(
        h.input(stranger, &channel_data_frame(0x4000, b"x")).0,
        ClientAction::Drop(DropReason::NoAllocation)
    );
}

#[test]
fn peer_data_becomes_a_data_indication_or_channel_data() {
    let (mut h, mut alice, port) = allocated();
    // No permission for this peer.
    let (action, _) = h.peer_input(port, addr("198.51.100.99:1"), b"x");
    assert_eq!(action, PeerAction::Drop(DropReason::NoPermission));
    // No allocation on this port.
    let other = RelayPort::new(if port.get() == 50_000 { 50_001 } else { 50_000 });
    assert_eq!(
        h.peer_input(other, addr(PEER), b"x").0,
        PeerAction::Drop(DropReason::NoAllocation)
    );

    // A Data indication, byte for byte.
    let (action, bytes) = h.peer_input(port, addr(PEER), b"hello");
    let PeerAction::Forward { dst, range } = action else {
        panic!("expected a forward, got {action:?}");
    };
    assert_eq!(dst, alice.addr);
    assert_eq!(range.start, 12);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.get::<XorPeerAddress>().unwrap().unwrap().0, addr(PEER));
    assert_eq!(m.get::<Data<'_>>().unwrap().unwrap().0, b"hello");
    let tid = m.transaction_id();
    let mut expected = vec![0x00, 0x17, 0x00, 0x18, 0x21, 0x12, 0xA4, 0x42];
    expected.extend_from_slice(tid.as_bytes());
    expected.extend_from_slice(&[0x00, 0x12, 0x00, 0x08, 0x00, 0x01]);
    expected.extend_from_slice(&(7000u16 ^ 0x2112).to_be_bytes());
    expected.extend_from_slice(&[198 ^ 0x21, 51 ^ 0x12, 100 ^ 0xA4, 20 ^ 0x42]);
    expected.extend_from_slice(&[0x00, 0x13, 0x00, 0x05]);
    expected.extend_from_slice(b"hello\0\0\0");
    assert_eq!(bytes, expected);

    // With a channel: 4-byte ChannelData, byte for byte, no padding.
    assert!(h.channel_bind(&mut alice, 0x4ABC, addr(PEER)).is_success());
    let (action, bytes) = h.peer_input(port, addr(PEER), b"hello");
    assert_eq!(
        action,
        PeerAction::Forward {
            dst: alice.addr,
            range: 44..53
        }
    );
    assert_eq!(bytes, b"\x4A\xBC\x00\x05hello");
    let stats = h.server.stats();
    assert_eq!(stats.peer_to_client.packets, 2);
    assert_eq!(stats.peer_to_client.bytes, 10);
}

#[test]
fn quotas_486_and_508_and_expiry_frees_them() {
    let mut h = Harness::with_config(config().with_allocation_quota(3, 2));
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client::new(&format!("192.0.2.10:{}", 30_000 + i), &secret_a(), "alice"))
        .collect();
    h.allocate(&mut clients[0]);
    h.allocate(&mut clients[1]);
    let response = h.request(&mut clients[2], Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(486), "per-user quota");
    // The user is the part after the expiry: a credential with another expiry counts too.
    let mut same_user =
        Client::with_expiry("192.0.2.10:31000", &secret_b(), "alice", UNIX_START + 7200);
    let response = h.request(&mut same_user, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(486));
    let mut bob = Client::new("192.0.2.11:1", &secret_a(), "bob");
    h.allocate(&mut bob);
    let mut carol = Client::new("192.0.2.12:1", &secret_a(), "carol");
    let response = h.request(&mut carol, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(508), "instance quota");

    // Expiry frees both quotas.
    h.advance(Duration::from_secs(601));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_expired, 3);
    h.allocate(&mut carol);
    h.allocate(&mut clients[3]);
}

#[test]
fn exhausted_port_range_gets_508() {
    let config = boson_dataplane_proto::TurnConfig::new(
        REALM,
        vec![secret_a()],
        RELAY_IP.into(),
        50_000..=50_001,
    )
    .unwrap();
    let mut h = Harness::with_config(config);
    for i in 0..2 {
        let mut c = Client::new(
            &format!("192.0.2.10:{}", 100 + i),
            &secret_a(),
            &format!("u{i}"),
        );
        h.allocate(&mut c);
    }
    let mut c = Client::new("192.0.2.10:200", &secret_a(), "u9");
    let response = h.request(&mut c, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert_eq!(response.code(), Some(508));
}

#[test]
fn draining_refuses_new_allocations_only() {
    let mut h = Harness::new();
    let mut alice = alice();
    let tid = alice.next_tid();
    let allocate = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
    };
    let first = h.request_with_tid(&mut alice, Method::ALLOCATE, tid, allocate);
    h.server.start_draining();
    assert!(h.server.is_draining());
    let mut bob = Client::new("192.0.2.11:1", &secret_a(), "bob");
    assert_eq!(
        h.request(&mut bob, Method::ALLOCATE, allocate).code(),
        Some(403)
    );
    // Existing allocations keep working, retransmissions included.
    assert_eq!(
        h.request_with_tid(&mut alice, Method::ALLOCATE, tid, allocate),
        first
    );
    assert!(h.refresh(&mut alice, None).is_success());
    assert!(h.create_permission(&mut alice, &[addr(PEER)]).is_success());
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
}

#[test]
fn draining_with_an_alternate_sends_new_allocates_there() {
    let mut h = Harness::new();
    let allocate = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
    };
    let mut alice = alice();
    assert!(
        h.request(&mut alice, Method::ALLOCATE, allocate)
            .is_success()
    );
    let alternate: SocketAddr = "198.51.100.20:3478".parse().unwrap();
    h.server.start_draining();
    h.server.set_alternate_server(Some(alternate));
    let mut bob = Client::new("192.0.2.11:1", &secret_a(), "bob");
    // `request` checks the 300 is signed with bob's key, as any authenticated answer.
    let response = h.request(&mut bob, Method::ALLOCATE, allocate);
    assert_eq!(response.code(), Some(300));
    assert_eq!(
        response
            .message()
            .get::<boson_dataplane_proto::stun::AlternateServer>()
            .unwrap(),
        Some(boson_dataplane_proto::stun::AlternateServer(alternate))
    );
    assert_eq!(h.server.allocation_count(), 1, "nothing allocated for bob");
    // ALTERNATE-SERVER must be of the request's family: an IPv6 client still gets 403.
    let mut carol = Client::new("[2001:db8::11]:1", &secret_a(), "carol");
    assert_eq!(
        h.request(&mut carol, Method::ALLOCATE, allocate).code(),
        Some(403)
    );
    // Existing allocations keep refreshing; with the alternate withdrawn, 403 again.
    assert!(h.refresh(&mut alice, None).is_success());
    h.server.set_alternate_server(None);
    let mut dave = Client::new("192.0.2.12:1", &secret_a(), "dave");
    assert_eq!(
        h.request(&mut dave, Method::ALLOCATE, allocate).code(),
        Some(403)
    );
}

#[test]
fn unauthenticated_responses_are_rate_limited_per_source() {
    let mut h = Harness::with_config(config().with_unauthenticated_rate(1, 5, 64));
    let client = alice();
    let request = client.encode(
        Method::ALLOCATE,
        Class::Request,
        TransactionIdExt::tid(1),
        false,
        |_| {},
    );
    let replies = (0..20)
        .filter(|_| matches!(h.input(client.addr, &request).0, ClientAction::Reply { .. }))
        .count();
    assert_eq!(replies, 5, "the burst");
    assert_eq!(h.server.stats().drops.get(DropReason::RateLimited), 15);
    // Another source is not affected (distinct bucket for this seed).
    let other = Client::new("198.51.100.200:1", &secret_a(), "x");
    assert!(matches!(
        h.input(other.addr, &request).0,
        ClientAction::Reply { .. }
    ));
    // Refill at 1 per second.
    h.advance(Duration::from_secs(1));
    assert!(matches!(
        h.input(client.addr, &request).0,
        ClientAction::Reply { .. }
    ));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn binding_works_through_the_turn_server() {
    let mut h = Harness::new();
    let client = alice();
    let request = client.encode(
        Method::BINDING,
        Class::Request,
        TransactionIdExt::tid(3),
        false,
        |_| {},
    );
    let (_, response) = h.input(client.addr, &request);
    let m = Message::parse(&response).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap().unwrap().0,
        client.addr.get()
    );
    let indication = client.encode(
        Method::BINDING,
        Class::Indication,
        TransactionIdExt::tid(4),
        false,
        |_| {},
    );
    assert_eq!(h.input(client.addr, &indication).0, ClientAction::Absorb);
    // TURN attributes are known to the Binding responder here: no 420 for LIFETIME.
    let request = client.encode(
        Method::BINDING,
        Class::Request,
        TransactionIdExt::tid(5),
        false,
        |enc| {
            enc.add(&Lifetime(1)).unwrap();
        },
    );
    let (_, response) = h.input(client.addr, &request);
    assert_eq!(
        Message::parse(&response).unwrap().class(),
        Class::SuccessResponse
    );
    assert_eq!(h.server.stats().binding_success, 2);
}

#[test]
fn wrong_method_and_class_combinations_are_dropped() {
    let (mut h, alice, _) = allocated();
    for (method, class, reason) in [
        (
            Method::ALLOCATE,
            Class::Indication,
            DropReason::UnexpectedIndication,
        ),
        (
            Method::DATA,
            Class::Indication,
            DropReason::UnexpectedIndication,
        ),
        (Method::SEND, Class::Request, DropReason::UnsupportedMethod),
        (Method::DATA, Class::Request, DropReason::UnsupportedMethod),
        (
            Method::new(0x0ABC).unwrap(),
            Class::Request,
            DropReason::UnsupportedMethod,
        ),
        (
            Method::ALLOCATE,
            Class::SuccessResponse,
            DropReason::UnexpectedResponse,
        ),
        (
            Method::REFRESH,
            Class::ErrorResponse,
            DropReason::UnexpectedResponse,
        ),
    ] {
        let bytes = alice.encode(method, class, TransactionIdExt::tid(9), false, |_| {});
        assert_eq!(
            h.input(alice.addr, &bytes).0,
            ClientAction::Drop(reason),
            "{method:?} {class:?}"
        );
    }
    let mut bad_fingerprint = alice.encode(
        Method::ALLOCATE,
        Class::Request,
        TransactionIdExt::tid(9),
        false,
        |_| {},
    );
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 1;
    assert_eq!(
        h.input(alice.addr, &bad_fingerprint).0,
        ClientAction::Drop(DropReason::BadFingerprint)
    );
    assert_eq!(
        h.input(alice.addr, &[0xC0, 0, 0, 0]).0,
        ClientAction::Drop(DropReason::NotStun)
    );
}

#[test]
fn failed_bind_deletes_the_allocation_and_quarantines_the_port() {
    let mut h = Harness::new();
    let mut alice = alice();
    let port = h.allocate(&mut alice);
    h.server.handle_allocation_failed(port);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.available_ports(), 9, "quarantined");
    assert!(
        !h.commands.contains(&Command::FreeAllocation { port }),
        "nothing to close"
    );
    assert_eq!(h.refresh(&mut alice, None).code(), Some(437));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.server.available_ports(), 10);
    // A second call for a port without allocation is ignored.
    h.server.handle_allocation_failed(port);
    assert_eq!(h.server.available_ports(), 10);
}

#[test]
fn peer_filter_refuses_every_spelling_of_internal_addresses() {
    let (mut h, mut alice, _) = allocated();
    for peer in [
        "127.0.0.1:1",
        "0.0.0.0:1",
        "10.1.2.3:1",
        "172.16.0.1:1",
        "192.168.0.1:1",
        "100.64.0.1:1",
        "169.254.169.254:80",
        "224.0.0.1:1",
        "255.255.255.255:1",
        "240.0.0.1:1",
        "[::1]:1",
        "[::]:1",
        "[fc00::1]:1",
        "[fd12::1]:1",
        "[fe80::1]:1",
        "[fec0::1]:1",
        "[ff02::1]:1",
        "[::ffff:127.0.0.1]:1",
        "[::ffff:169.254.169.254]:80",
        "[::127.0.0.1]:1",
        "[2002:7f00:1::]:1",
        "[64:ff9b::a00:1]:1",
        "[64:ff9b:1::a00:1]:1",
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:1",
    ] {
        assert_eq!(
            h.create_permission(&mut alice, &[addr(peer)]).code(),
            Some(403),
            "CreatePermission {peer}"
        );
        assert_eq!(
            h.channel_bind(&mut alice, 0x4100, addr(peer)).code(),
            Some(403),
            "ChannelBind {peer}"
        );
        assert_eq!(
            h.send_indication(&mut alice, addr(peer), b"x").0,
            ClientAction::Drop(DropReason::PeerFiltered),
            "Send {peer}"
        );
    }
}

#[test]
fn own_address_is_reachable_on_live_relay_allocations_only() {
    // Two clients of this relay reaching each other through their allocations have the
    // relay's own address as their peer; every other port of the host must stay out of
    // reach, the relay range's free ports included (a local UDP service may sit there).
    let (mut h, mut alice, alice_port) = allocated();
    let mut bob = Client::new("198.51.100.20:4000", &secret_a(), "bob");
    let bob_port = h.allocate(&mut bob);
    let bob_relayed = SocketAddr::from((RELAY_IP, bob_port.get()));
    let alice_relayed = SocketAddr::from((RELAY_IP, alice_port.get()));
    let free = (50_000..=50_009)
        .find(|&p| p != alice_port.get() && p != bob_port.get())
        .unwrap();
    for own in [
        "203.0.113.1:8080".to_owned(),
        "203.0.113.1:6379".to_owned(),
        "[::ffff:203.0.113.1]:22".to_owned(),
        format!("203.0.113.1:{free}"),
        format!("[::ffff:203.0.113.1]:{free}"),
    ] {
        assert_eq!(
            h.channel_bind(&mut alice, 0x4100, addr(&own)).code(),
            Some(403),
            "ChannelBind {own}"
        );
        assert_eq!(
            h.send_indication(&mut alice, addr(&own), b"x").0,
            ClientAction::Drop(DropReason::PeerFiltered),
            "Send {own}"
        );
    }
    // A permission names no port: allowed, and the port is judged on every use.
    assert!(h.create_permission(&mut alice, &[bob_relayed]).is_success());
    assert!(h.create_permission(&mut bob, &[alice_relayed]).is_success());
    assert!(matches!(
        h.send_indication(&mut alice, bob_relayed, b"hi").0,
        ClientAction::Relay { peer, .. } if peer.get() == bob_relayed
    ));
    assert!(h.channel_bind(&mut alice, 0x4001, bob_relayed).is_success());
    assert!(matches!(
        h.channel_data(&alice, 0x4001, b"hello").0,
        ClientAction::Relay { peer, .. } if peer.get() == bob_relayed
    ));
    // Bob's relay socket receives what alice's sent, and hands it to bob.
    assert!(matches!(
        h.peer_input(bob_port, alice_relayed, b"hello").0,
        PeerAction::Forward { dst, .. } if dst == bob.addr
    ));
    // A datagram from the host's own address but another port (a local service answering,
    // or anything that bound a free relay port) never reaches a client.
    assert_eq!(
        h.peer_input(alice_port, addr(&format!("203.0.113.1:{free}")), b"x")
            .0,
        PeerAction::Drop(DropReason::NotARelayPort)
    );
    assert_eq!(
        h.peer_input(alice_port, addr("203.0.113.1:53"), b"x").0,
        PeerAction::Drop(DropReason::NotARelayPort)
    );

    // Bob's allocation ends: alice's permission and channel toward its port stop carrying
    // traffic at once, both ways, although neither expired.
    assert!(h.refresh(&mut bob, Some(0)).is_success());
    assert_eq!(
        h.channel_data(&alice, 0x4001, b"late").0,
        ClientAction::Drop(DropReason::NotARelayPort)
    );
    assert_eq!(
        h.send_indication(&mut alice, bob_relayed, b"late").0,
        ClientAction::Drop(DropReason::PeerFiltered)
    );
    assert_eq!(
        h.peer_input(alice_port, bob_relayed, b"from whoever binds it now")
            .0,
        PeerAction::Drop(DropReason::NotARelayPort)
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4002, bob_relayed).code(),
        Some(403)
    );
    assert_eq!(
        h.server.stats().drops.get(DropReason::NotARelayPort),
        4,
        "each a counted, named drop"
    );

    // Another worker's allocation on the host-wide port table is live here too; the same
    // port once it ends is not.
    let shared = config();
    let mut h1 = Harness::with_config(shared.clone());
    let mut h2 = Harness::with_config(shared);
    let mut carol = Client::new("198.51.100.30:4000", &secret_a(), "carol");
    let mut dave = Client::new("198.51.100.31:4000", &secret_a(), "dave");
    h1.allocate(&mut carol);
    let dave_port = h2.allocate(&mut dave);
    let dave_relayed = SocketAddr::from((RELAY_IP, dave_port.get()));
    assert!(
        h1.channel_bind(&mut carol, 0x4002, dave_relayed)
            .is_success()
    );
    assert!(matches!(
        h1.channel_data(&carol, 0x4002, b"across cores").0,
        ClientAction::Relay { .. }
    ));
    assert!(h2.refresh(&mut dave, Some(0)).is_success());
    assert_eq!(
        h1.channel_data(&carol, 0x4002, b"gone").0,
        ClientAction::Drop(DropReason::NotARelayPort)
    );
    // Re-allocated (by anyone): a relay socket again, whose own permissions decide.
    let mut erin = Client::new("198.51.100.32:4000", &secret_a(), "erin");
    let mut again = None;
    for _ in 0..50 {
        let port = h2.allocate(&mut erin);
        if port == dave_port {
            again = Some(port);
            break;
        }
        assert!(h2.refresh(&mut erin, Some(0)).is_success());
    }
    assert_eq!(again, Some(dave_port), "the port comes round again");
    assert!(matches!(
        h1.channel_data(&carol, 0x4002, b"to erin's relay").0,
        ClientAction::Relay { .. }
    ));
}

#[test]
fn configured_lists_change_the_verdict() {
    let filter = PeerFilter::new()
        .allow("10.9.0.0/16".parse::<Cidr>().unwrap())
        .deny("198.51.100.0/24".parse::<Cidr>().unwrap());
    let mut h = Harness::with_config(
        config()
            .with_peer_filter(filter)
            .danger_allow_loopback_peers(),
    );
    let mut alice = alice();
    h.allocate(&mut alice);
    assert!(
        h.create_permission(&mut alice, &[addr("10.9.1.1:1")])
            .is_success()
    );
    assert!(
        h.create_permission(&mut alice, &[addr("127.0.0.1:1")])
            .is_success()
    );
    assert_eq!(
        h.create_permission(&mut alice, &[addr("198.51.100.1:1")])
            .code(),
        Some(403)
    );
    assert_eq!(
        h.create_permission(&mut alice, &[addr("10.8.0.1:1")])
            .code(),
        Some(403)
    );
}

#[test]
fn error_responses_of_the_420_path_list_types_and_reasons() {
    // A 420 from the Binding path, for completeness of the error paths.
    let mut h = Harness::new();
    let client = alice();
    let request = client.encode(
        Method::BINDING,
        Class::Request,
        TransactionIdExt::tid(1),
        false,
        |enc| {
            enc.add_raw(AttrType::new(0x7002), b"").unwrap();
        },
    );
    let (_, response) = h.input(client.addr, &request);
    let m = Message::parse(&response).unwrap();
    assert_eq!(
        m.get::<ErrorCodeAttr<'_>>()
            .unwrap()
            .unwrap()
            .code()
            .as_u16(),
        420
    );
}
