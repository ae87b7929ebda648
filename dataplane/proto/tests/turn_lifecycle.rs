//! A TURN session from first Allocate to expiry, in virtual time: the shell's view of the
//! server, stepping through every timer the way the event loop would.

mod common;

use std::time::Duration;

use boson_dataplane_proto::stun::{ErrorCode, Message, Method};
use boson_dataplane_proto::turn::attr::{Data, Lifetime, RequestedTransport, XorPeerAddress};
use boson_dataplane_proto::{ClientAction, Command, DropReason, PeerAction};
use common::*;

const PEER1: &str = "198.51.100.1:5001";
const PEER2: &str = "198.51.100.2:5002";
const PEER3: &str = "198.51.100.3:5003";

/// Seconds since the harness started.
fn at(h: &Harness) -> u64 {
    (h.now - h.start).as_secs()
}

fn advance_to(h: &mut Harness, secs: u64) {
    let target = h.start + Duration::from_secs(secs);
    h.advance(target - h.now);
}

fn assert_relay(action: &ClientAction, peer: &str, frame: &[u8], payload: &[u8]) {
    let ClientAction::Relay {
        peer: to,
        payload: range,
        ..
    } = action
    else {
        panic!("expected a relay to {peer}, got {action:?}");
    };
    assert_eq!(to.get(), addr(peer));
    assert_eq!(&frame[range.clone()], payload);
}

#[test]
fn full_session_in_virtual_time() {
    let mut h = Harness::new();
    let mut alice = Client::new("192.0.2.10:40000", &secret_a(), "alice");

    // t=0: 401, then an authenticated Allocate.
    let port = h.allocate(&mut alice);
    assert_eq!(
        h.server
            .stats()
            .error_responses
            .get(ErrorCode::UNAUTHENTICATED),
        1
    );
    assert_eq!(h.commands, [Command::CreateAllocation { port }]);

    // Permissions for two peers; a channel for the first.
    assert!(
        h.create_permission(&mut alice, &[addr(PEER1), addr(PEER2)])
            .is_success()
    );
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER1)).is_success());

    // ChannelData both ways.
    let (action, frame) = h.channel_data(&alice, 0x4000, b"to peer1");
    assert_relay(&action, PEER1, &frame, b"to peer1");
    let (action, bytes) = h.peer_input(port, addr(PEER1), b"to alice");
    assert!(matches!(action, PeerAction::Forward { dst, .. } if dst == alice.addr));
    assert_eq!(bytes, channel_data_frame(0x4000, b"to alice"));

    // Send and Data indications both ways.
    let (action, frame) = h.send_indication(&mut alice, addr(PEER2), b"to peer2");
    assert_relay(&action, PEER2, &frame, b"to peer2");
    let (_, bytes) = h.peer_input(port, addr(PEER2), b"from peer2");
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get::<XorPeerAddress>().unwrap().unwrap().0, addr(PEER2));
    assert_eq!(m.get::<Data<'_>>().unwrap().unwrap().0, b"from peer2");

    // t=250: refreshing the channel refreshes PEER1's permission (to 550), not PEER2's (300).
    advance_to(&mut h, 250);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER1)).is_success());
    advance_to(&mut h, 300);
    assert_eq!(
        h.server.stats().permissions,
        1,
        "PEER2's permission expired"
    );
    assert_eq!(
        h.send_indication(&mut alice, addr(PEER2), b"late").0,
        ClientAction::Drop(DropReason::NoPermission)
    );
    assert_eq!(
        h.peer_input(port, addr(PEER2), b"late").0,
        PeerAction::Drop(DropReason::NoPermission)
    );
    assert!(matches!(
        h.channel_data(&alice, 0x4000, b"ok").0,
        ClientAction::Relay { .. }
    ));

    // t=500: Refresh. The nonce from t=0 is still fresh (600 s).
    advance_to(&mut h, 500);
    assert_eq!(h.refresh(&mut alice, None).lifetime(), 600); // now expires at 1100
    assert_eq!(
        h.server.stats().error_responses.get(ErrorCode::STALE_NONCE),
        0
    );

    // t=550: PEER1's permission expires though its channel lives on (until 850).
    advance_to(&mut h, 550);
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Drop(DropReason::NoPermission)
    );
    assert_eq!(
        h.peer_input(port, addr(PEER1), b"x").0,
        PeerAction::Drop(DropReason::NoPermission)
    );

    // t=600: the nonce is stale; the harness's retry shows the 438 dance.
    advance_to(&mut h, 600);
    assert!(h.create_permission(&mut alice, &[addr(PEER1)]).is_success());
    assert_eq!(
        h.server.stats().error_responses.get(ErrorCode::STALE_NONCE),
        1
    );
    assert!(matches!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Relay { .. }
    ));

    // t=850: the channel expires. PEER1 still has a permission (until 900): Data indications.
    advance_to(&mut h, 850);
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Drop(DropReason::UnboundChannel)
    );
    let (_, bytes) = h.peer_input(port, addr(PEER1), b"via data");
    assert_eq!(Message::parse(&bytes).unwrap().method(), Method::DATA);
    // Cooldown: neither the number nor the peer can move elsewhere; the same pair can return.
    assert_eq!(
        h.channel_bind(&mut alice, 0x4001, addr(PEER1)).code(),
        Some(400)
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr(PEER3)).code(),
        Some(400)
    );
    assert_eq!(h.server.stats().channels, 1);

    // t=1000: a long refresh keeps the allocation past the cooldown.
    advance_to(&mut h, 1000);
    assert_eq!(h.refresh(&mut alice, Some(3600)).lifetime(), 3600); // until 4600
    advance_to(&mut h, 1150);
    assert_eq!(
        h.server.stats().channels,
        0,
        "cooldown over, binding released"
    );
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER3)).is_success());
    assert!(h.channel_bind(&mut alice, 0x4001, addr(PEER1)).is_success());
    let (action, frame) = h.channel_data(&alice, 0x4000, b"to peer3");
    assert_relay(&action, PEER3, &frame, b"to peer3");

    // Credential rotation: bob's credential is minted under the second secret and expires at
    // t=1200; his allocation keeps its lifetime, but Refresh after expiry gets 401.
    let mut bob = Client::with_expiry("192.0.2.20:40000", &secret_b(), "bob", UNIX_START + 1200);
    let bob_port = h.allocate(&mut bob);
    assert_ne!(bob_port, port);
    advance_to(&mut h, 1300);
    assert!(h.unix_now() > UNIX_START + 1200);
    assert_eq!(h.refresh(&mut bob, None).code(), Some(401));
    // His allocation runs out at 1150 + 600 = 1750 and frees its port.
    advance_to(&mut h, 1749);
    assert_eq!(h.server.allocation_count(), 2);
    advance_to(&mut h, 1750);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(
        h.commands.last(),
        Some(&Command::FreeAllocation { port: bob_port })
    );
    assert_eq!(
        h.peer_input(bob_port, addr(PEER1), b"x").0,
        PeerAction::Drop(DropReason::NoAllocation)
    );
    // The quota is free again: bob allocates with a new credential.
    let mut bob = Client::new("192.0.2.20:40000", &secret_b(), "bob");
    bob.nonce = None;
    let _ = h.allocate(&mut bob);
    assert_eq!(h.server.allocation_count(), 2);

    // Everything expires in the end; every CreateAllocation is matched by a FreeAllocation.
    let unix_before = h.unix_now();
    h.advance(Duration::from_secs(10_000));
    assert_eq!(h.unix_now(), unix_before + 10_000);
    assert_eq!(h.server.allocation_count(), 0);
    let stats = *h.server.stats();
    assert_eq!(stats.allocations, 0);
    assert_eq!(stats.permissions, 0);
    assert_eq!(stats.channels, 0);
    assert_eq!(stats.allocations_created, 3);
    assert_eq!(stats.allocations_expired, 3);
    let created = h
        .commands
        .iter()
        .filter(|c| matches!(c, Command::CreateAllocation { .. }))
        .count();
    let freed = h
        .commands
        .iter()
        .filter(|c| matches!(c, Command::FreeAllocation { .. }))
        .count();
    assert_eq!((created, freed), (3, 3));
    assert_eq!(h.server.available_ports(), 10);
    assert_eq!(h.server.poll_timeout(), None, "no timer left behind");
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Drop(DropReason::NoAllocation)
    );
    assert!(at(&h) > 10_000);
}

#[test]
fn quotas_filter_and_draining_over_time() {
    let mut h = Harness::with_config(config().with_allocation_quota(3, 2));
    let allocate = |enc: &mut boson_dataplane_proto::stun::Encoder<'_>| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&Lifetime(600)).unwrap();
    };
    let mut a1 = Client::new("192.0.2.1:1", &secret_a(), "alice");
    let mut a2 = Client::new("192.0.2.1:2", &secret_a(), "alice");
    let mut a3 = Client::new("192.0.2.1:3", &secret_a(), "alice");
    let mut b1 = Client::new("192.0.2.2:1", &secret_a(), "bob");
    let mut c1 = Client::new("192.0.2.3:1", &secret_a(), "carol");
    assert!(h.request(&mut a1, Method::ALLOCATE, allocate).is_success());
    advance_to(&mut h, 100);
    assert!(h.request(&mut a2, Method::ALLOCATE, allocate).is_success());
    assert_eq!(
        h.request(&mut a3, Method::ALLOCATE, allocate).code(),
        Some(486)
    );
    assert!(h.request(&mut b1, Method::ALLOCATE, allocate).is_success());
    assert_eq!(
        h.request(&mut c1, Method::ALLOCATE, allocate).code(),
        Some(508)
    );

    // The peer filter holds for every spelling, on an allocation that works.
    for peer in [
        "127.0.0.1:9",
        "[::ffff:7f00:1]:9",
        "[2002:a00:1::1]:9",
        "[fe80::1]:9",
    ] {
        assert_eq!(
            h.create_permission(&mut a1, &[addr(peer)]).code(),
            Some(403),
            "{peer}"
        );
    }

    // a1 expires at 600: one slot for alice and one for the instance come back.
    advance_to(&mut h, 600);
    assert_eq!(h.server.allocation_count(), 2);
    assert!(h.request(&mut a3, Method::ALLOCATE, allocate).is_success());

    // Draining: no new allocations, existing ones refresh until they choose to stop.
    h.server.start_draining();
    advance_to(&mut h, 650);
    assert_eq!(
        h.request(&mut c1, Method::ALLOCATE, allocate).code(),
        Some(403)
    );
    assert!(h.refresh(&mut b1, Some(1200)).is_success()); // until 1850
    advance_to(&mut h, 1300);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "a2 and a3 lapsed, b1 refreshed"
    );
    advance_to(&mut h, 1900);
    assert_eq!(h.server.allocation_count(), 0, "drained");
    assert_eq!(
        h.request(&mut c1, Method::ALLOCATE, allocate).code(),
        Some(403)
    );
}
