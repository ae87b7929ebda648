//! The TURN server's settings changed at run time (secrets, the per-user quota, the peer
//! filter) and the allocation events it reports, through the public API in virtual time.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use boson_dataplane_proto::stun::Method;
use boson_dataplane_proto::turn::attr::RequestedTransport;
use boson_dataplane_proto::turn::{Cidr, ConfigError, PeerFilter};
use boson_dataplane_proto::{ClientAction, DropReason, PeerAction, RelayPort, TurnEvent};
use boson_shared::TurnSecret;
use common::*;

const PEER: &str = "198.51.100.20:7000";
const OTHER_PEER: &str = "192.0.2.50:9000";

/// Every event the server has queued.
fn events(h: &mut Harness) -> Vec<TurnEvent> {
    std::iter::from_fn(|| h.server.poll_event()).collect()
}

fn relay_of(port: RelayPort) -> SocketAddr {
    SocketAddr::from((RELAY_IP, port.get()))
}

/// An Allocate from `client`, whatever the answer.
fn try_allocate(h: &mut Harness, client: &mut Client) -> Response {
    h.request(client, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    })
}

fn relays(h: &mut Harness, client: &Client, number: u16) -> bool {
    matches!(
        h.channel_data(client, number, b"payload").0,
        ClientAction::Relay { .. }
    )
}

fn forwards(h: &mut Harness, port: RelayPort, from: &str) -> bool {
    matches!(
        h.peer_input(port, addr(from), b"from the peer").0,
        PeerAction::Forward { .. }
    )
}

#[test]
fn rotated_secrets_verify_new_requests_while_old_allocations_relay() {
    let mut h = Harness::new(); // secrets a and b
    let mut alice = Client::new("192.0.2.10:40000", &secret_a(), "alice");
    let port = h.allocate(&mut alice);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());

    // b only: a is gone.
    h.server
        .set_secrets(h.now, vec![secret_b(), TurnSecret::new("secret-c")])
        .unwrap();
    assert!(
        relays(&mut h, &alice, 0x4000),
        "alice's allocation relays on"
    );
    assert!(forwards(&mut h, port, PEER));
    assert_eq!(
        h.refresh(&mut alice, Some(600)).code(),
        Some(401),
        "a refresh must verify under the new secrets"
    );
    let mut late = Client::new("192.0.2.11:40000", &secret_a(), "late");
    assert_eq!(
        try_allocate(&mut h, &mut late).code(),
        Some(401),
        "a credential of the old secret"
    );
    let mut carol = Client::new("192.0.2.12:40000", &TurnSecret::new("secret-c"), "carol");
    h.allocate(&mut carol);
    let mut bob = Client::new("192.0.2.13:40000", &secret_b(), "bob");
    h.allocate(&mut bob);

    // An empty list is refused and changes nothing.
    assert_eq!(
        h.server.set_secrets(h.now, Vec::new()),
        Err(ConfigError::NoSecret)
    );
    let mut dave = Client::new("192.0.2.14:40000", &secret_b(), "dave");
    h.allocate(&mut dave);

    // The others refresh under the secrets in use; unrefreshed, alice's allocation runs out at
    // its lifetime, like any other.
    h.advance(Duration::from_secs(300));
    for client in [&mut carol, &mut bob, &mut dave] {
        assert!(h.refresh(client, Some(600)).is_success());
    }
    assert_eq!(h.refresh(&mut alice, Some(600)).code(), Some(401));
    h.advance(Duration::from_secs(299));
    assert_eq!(h.server.allocation_count(), 4);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"late").0,
        ClientAction::Drop(DropReason::NoAllocation)
    );
    assert_eq!(h.server.allocation_count(), 3);
}

#[test]
fn a_lower_quota_refuses_new_allocations_and_evicts_none() {
    let mut h = Harness::new();
    let mut first = Client::new("192.0.2.10:40000", &secret_a(), "alice");
    let mut second = Client::new("192.0.2.10:40001", &secret_a(), "alice");
    h.allocate(&mut first);
    h.allocate(&mut second);

    h.server.set_max_allocations_per_user(h.now, 1);
    assert_eq!(h.server.allocation_count(), 2, "nothing is evicted");
    assert!(h.refresh(&mut first, Some(600)).is_success());
    assert!(h.refresh(&mut second, Some(600)).is_success());
    let mut third = Client::new("192.0.2.10:40002", &secret_a(), "alice");
    assert_eq!(try_allocate(&mut h, &mut third).code(), Some(486));
    let mut bob = Client::new("192.0.2.11:40000", &secret_a(), "bob");
    h.allocate(&mut bob);

    // Two ending leaves one: still at the quota of one.
    assert!(h.refresh(&mut second, Some(0)).is_success());
    assert_eq!(try_allocate(&mut h, &mut third).code(), Some(486));
    h.server.set_max_allocations_per_user(h.now, 3);
    h.allocate(&mut third);
    assert_eq!(h.server.allocation_count(), 3);
}

#[test]
fn a_denied_peer_stops_relaying_at_once_in_both_directions() {
    let mut h = Harness::new();
    let mut alice = Client::new("192.0.2.10:40000", &secret_a(), "alice");
    let port = h.allocate(&mut alice);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    assert!(
        h.create_permission(&mut alice, &[addr(OTHER_PEER)])
            .is_success()
    );
    let mut bob = Client::new("192.0.2.11:40000", &secret_a(), "bob");
    let bob_port = h.allocate(&mut bob);
    assert!(h.create_permission(&mut bob, &[addr(PEER)]).is_success());
    assert!(relays(&mut h, &alice, 0x4000));
    assert!(forwards(&mut h, port, PEER));
    assert!(forwards(&mut h, bob_port, PEER));
    assert_eq!(h.server.stats().permissions, 3);
    assert_eq!(h.server.stats().channels, 1);
    let timers = h.server.footprint().timers;

    let deny = PeerFilter::new().deny("198.51.100.0/24".parse::<Cidr>().unwrap());
    h.server.set_peer_filter(h.now, deny.clone());
    // The channel to the denied peer is over, and so is every permission for its IP.
    assert_eq!(
        h.channel_data(&alice, 0x4000, b"x").0,
        ClientAction::Drop(DropReason::UnboundChannel)
    );
    assert_eq!(
        h.peer_input(port, addr(PEER), b"x").0,
        PeerAction::Drop(DropReason::NoPermission)
    );
    assert_eq!(
        h.peer_input(bob_port, addr(PEER), b"x").0,
        PeerAction::Drop(DropReason::NoPermission)
    );
    assert_eq!(
        h.send_indication(&mut alice, addr(PEER), b"x").0,
        ClientAction::Drop(DropReason::PeerFiltered)
    );
    assert_eq!(
        h.create_permission(&mut alice, &[addr(PEER)]).code(),
        Some(403)
    );
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr(PEER)).code(),
        Some(403)
    );
    // Other peers are untouched.
    assert!(forwards(&mut h, port, OTHER_PEER));
    assert_eq!(h.server.stats().permissions, 1);
    assert_eq!(
        h.server.stats().channels,
        1,
        "the channel cools down before its number is free"
    );
    // Two permission timers went with their permissions; the channel's timer moved.
    assert_eq!(h.server.footprint().timers, timers - 2);

    // The same filter again changes nothing.
    h.server.set_peer_filter(h.now, deny);
    assert_eq!(h.server.stats().permissions, 1);
    assert_eq!(h.server.footprint().timers, timers - 2);

    // Allowed again: the client may bind the same channel to the same peer in its cooldown.
    h.advance(Duration::from_secs(10));
    h.server.set_peer_filter(h.now, PeerFilter::new());
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    assert!(relays(&mut h, &alice, 0x4000));
    assert!(forwards(&mut h, port, PEER));
    assert!(
        !forwards(&mut h, bob_port, PEER),
        "bob's permission is not restored by itself"
    );

    // Everything still expires on time and leaves no timer behind.
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().permissions, 0);
    assert_eq!(h.server.stats().channels, 0);
    assert_eq!(h.server.footprint().timers, 0);
}

#[test]
fn a_channel_expired_by_the_filter_frees_its_number_after_the_cooldown() {
    let mut h = Harness::new();
    let mut alice = Client::new("192.0.2.10:40000", &secret_a(), "alice");
    h.allocate(&mut alice);
    assert!(h.channel_bind(&mut alice, 0x4000, addr(PEER)).is_success());
    h.server.set_peer_filter(
        h.now,
        PeerFilter::new().deny("198.51.100.20/32".parse::<Cidr>().unwrap()),
    );
    // The number stays with its peer through the cooldown (5 minutes from the denial, not
    // from the channel's own expiry 10 minutes away).
    assert_eq!(
        h.channel_bind(&mut alice, 0x4000, addr(OTHER_PEER)).code(),
        Some(400)
    );
    h.advance(Duration::from_secs(300));
    assert!(
        h.refresh(&mut alice, Some(3600)).is_success(),
        "keep the allocation"
    );
    assert_eq!(h.server.stats().channels, 0);
    assert!(
        h.channel_bind(&mut alice, 0x4000, addr(OTHER_PEER))
            .is_success()
    );
    assert!(relays(&mut h, &alice, 0x4000));
}

#[test]
fn every_allocation_reports_its_creation_and_its_end() {
    let mut h = Harness::new();
    assert_eq!(events(&mut h), []);
    let mut alice = Client::new("192.0.2.10:40000", &secret_a(), "alice");
    let first = h.allocate(&mut alice);
    let mut bob = Client::new("192.0.2.11:40000", &secret_a(), "bob");
    let second = h.allocate(&mut bob);
    // coturn's client sends a bare expiry as the username: it names no user.
    let username = (UNIX_START + 3600).to_string();
    let password = secret_a().password_for(&username);
    let mut bare = Client::with_credential("192.0.2.12:40000", &username, &password);
    let third = h.allocate(&mut bare);
    assert_eq!(
        events(&mut h),
        [
            TurnEvent::AllocationCreated {
                relay: relay_of(first),
                user: "alice".to_owned()
            },
            TurnEvent::AllocationCreated {
                relay: relay_of(second),
                user: "bob".to_owned()
            },
            TurnEvent::AllocationCreated {
                relay: relay_of(third),
                user: String::new()
            },
        ]
    );
    assert_eq!(h.server.footprint().events, 0, "drained");

    // A Refresh is no new allocation.
    assert!(h.refresh(&mut bob, Some(600)).is_success());
    assert_eq!(events(&mut h), []);

    // Deleted, expired, and not bound.
    assert!(h.refresh(&mut alice, Some(0)).is_success());
    assert_eq!(
        events(&mut h),
        [TurnEvent::AllocationEnded {
            relay: relay_of(first)
        }]
    );
    h.advance(Duration::from_secs(600));
    let mut ended = events(&mut h);
    ended.sort_by_key(|event| format!("{event:?}"));
    let mut expected = vec![
        TurnEvent::AllocationEnded {
            relay: relay_of(second),
        },
        TurnEvent::AllocationEnded {
            relay: relay_of(third),
        },
    ];
    expected.sort_by_key(|event| format!("{event:?}"));
    assert_eq!(ended, expected);
    let mut carol = Client::new("192.0.2.13:40000", &secret_a(), "carol");
    let port = h.allocate(&mut carol);
    h.server.handle_allocation_failed(port);
    assert_eq!(
        events(&mut h),
        [
            TurnEvent::AllocationCreated {
                relay: relay_of(port),
                user: "carol".to_owned()
            },
            TurnEvent::AllocationEnded {
                relay: relay_of(port)
            },
        ]
    );
}
