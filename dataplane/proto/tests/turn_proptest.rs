//! Property tests of the TURN server: no input from a client or a peer makes it panic, and
//! against a reference model of allocations and permissions, it never relays without a live
//! permission and always gives back every port and quota slot once allocations expire.

// The generators and the model runner are helpers outside `#[test]` functions, where clippy's
// `allow-unwrap-in-tests` does not reach; a panic in them is a test failure, as intended.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boson_dataplane_proto::stun::{Class, MAGIC_COOKIE, Method};
use boson_dataplane_proto::turn::attr::{Lifetime, RequestedTransport};
use boson_dataplane_proto::{
    ClientAction, ClientAddr, Command, HEADROOM, PeerAction, PeerAddr, RelayPort,
};
use common::*;
use proptest::prelude::*;

const PEERS: [&str; 4] = [
    "198.51.100.1:1000",
    "198.51.100.2:2000",
    "198.51.100.2:2001", // same IP as the previous one: one permission covers both
    "10.0.0.1:3000",     // denied by the peer filter
];
const CLIENTS: usize = 3;

fn client(i: usize) -> Client {
    // Valid long enough for the final re-allocation after every allocation expired.
    Client::with_expiry(
        &format!("192.0.2.{}:4000", i + 1),
        &secret_a(),
        &format!("user{i}"),
        UNIX_START + 1_000_000,
    )
}

/// A harness with client 0 allocated, a permission and a channel for PEERS[0].
fn busy_harness() -> (Harness, Client, RelayPort) {
    let mut h = Harness::new();
    let mut c = client(0);
    let port = h.allocate(&mut c);
    assert!(h.create_permission(&mut c, &[addr(PEERS[0])]).is_success());
    assert!(h.channel_bind(&mut c, 0x4000, addr(PEERS[0])).is_success());
    (h, c, port)
}

/// STUN-shaped bytes: a valid header with a plausible method, then TLVs with random content.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x0001u16),
            Just(0x0003),
            Just(0x0004),
            Just(0x0008),
            Just(0x0009),
            Just(0x0016),
            Just(0x0017),
            0u16..0x4000
        ],
        any::<[u8; 12]>(),
        prop::collection::vec(
            (
                prop_oneof![
                    Just(0x0006u16),
                    Just(0x0008),
                    Just(0x000C),
                    Just(0x000D),
                    Just(0x0012),
                    Just(0x0013),
                    Just(0x0014),
                    Just(0x0015),
                    Just(0x0018),
                    Just(0x0019),
                    Just(0x0017),
                    Just(0x0022),
                    Just(0x8028),
                    any::<u16>()
                ],
                prop::collection::vec(any::<u8>(), 0..24),
            ),
            0..6,
        ),
    )
        .prop_map(|(message_type, tid, attrs)| {
            let mut msg = message_type.to_be_bytes().to_vec();
            msg.extend_from_slice(&[0, 0]);
            msg.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            msg.extend_from_slice(&tid);
            for (attr, value) in attrs {
                msg.extend_from_slice(&attr.to_be_bytes());
                msg.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
                msg.extend_from_slice(&value);
                msg.resize(msg.len().next_multiple_of(4), 0);
            }
            let body = u16::try_from(msg.len() - 20).unwrap();
            msg[2..4].copy_from_slice(&body.to_be_bytes());
            msg
        })
}

fn channel_data_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0x4000u16..0x8000,
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(number, len, payload)| {
            let mut frame = number.to_be_bytes().to_vec();
            frame.extend_from_slice(&(len % 48).to_be_bytes());
            frame.extend_from_slice(&payload);
            frame
        })
}

/// One step of a client/peer/time script.
#[derive(Debug, Clone)]
enum Op {
    Allocate {
        client: usize,
        lifetime: Option<u32>,
    },
    Refresh {
        client: usize,
        lifetime: Option<u32>,
    },
    Permit {
        client: usize,
        peer: usize,
    },
    Bind {
        client: usize,
        number: u16,
        peer: usize,
    },
    Send {
        client: usize,
        peer: usize,
    },
    ChannelData {
        client: usize,
        number: u16,
    },
    PeerData {
        client: usize,
        peer: usize,
    },
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    let peer = 0..PEERS.len();
    let number = prop_oneof![Just(0x4000u16), Just(0x4001), Just(0x4FFF)];
    let lifetime = prop::option::of(prop_oneof![Just(0u32), Just(60), Just(900), Just(5000)]);
    prop_oneof![
        (client.clone(), lifetime.clone())
            .prop_map(|(client, lifetime)| Op::Allocate { client, lifetime }),
        (client.clone(), lifetime).prop_map(|(client, lifetime)| Op::Refresh { client, lifetime }),
        (client.clone(), peer.clone()).prop_map(|(client, peer)| Op::Permit { client, peer }),
        (client.clone(), number.clone(), peer.clone()).prop_map(|(client, number, peer)| {
            Op::Bind {
                client,
                number,
                peer,
            }
        }),
        (client.clone(), peer.clone()).prop_map(|(client, peer)| Op::Send { client, peer }),
        (client.clone(), number).prop_map(|(client, number)| Op::ChannelData { client, number }),
        (client, peer).prop_map(|(client, peer)| Op::PeerData { client, peer }),
        (0u64..400).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// The reference model: what the client was told, with the RFC's lifetimes.
#[derive(Debug, Default)]
struct Model {
    allocations: BTreeMap<usize, ModelAllocation>,
}

#[derive(Debug)]
struct ModelAllocation {
    port: RelayPort,
    expires_at: Instant,
    permissions: BTreeMap<IpAddr, Instant>,
}

impl Model {
    fn live(&self, client: usize, now: Instant) -> Option<&ModelAllocation> {
        self.allocations.get(&client).filter(|a| now < a.expires_at)
    }

    fn permitted(&self, client: usize, ip: IpAddr, now: Instant) -> bool {
        self.live(client, now)
            .is_some_and(|a| a.permissions.get(&ip).is_some_and(|&t| now < t))
    }

    fn client_of(&self, port: RelayPort) -> Option<usize> {
        self.allocations
            .iter()
            .find(|(_, a)| a.port == port)
            .map(|(c, _)| *c)
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let mut clients: Vec<Client> = (0..CLIENTS).map(client).collect();
    let mut model = Model::default();
    let permission = Duration::from_secs(300);

    for op in ops {
        let now = h.now;
        match *op {
            Op::Allocate { client, lifetime } => {
                let response = h.request(&mut clients[client], Method::ALLOCATE, |enc| {
                    enc.add(&RequestedTransport::UDP).unwrap();
                    if let Some(lifetime) = lifetime {
                        enc.add(&Lifetime(lifetime)).unwrap();
                    }
                });
                if response.is_success() {
                    let granted = Duration::from_secs(u64::from(response.lifetime()));
                    prop_assert!(model.live(client, now).is_none());
                    model.allocations.insert(
                        client,
                        ModelAllocation {
                            port: response.relay_port(),
                            expires_at: now + granted,
                            permissions: BTreeMap::new(),
                        },
                    );
                } else {
                    prop_assert_eq!(response.code(), Some(437));
                    prop_assert!(model.live(client, now).is_some());
                }
            }
            Op::Refresh { client, lifetime } => {
                let response = h.refresh(&mut clients[client], lifetime);
                if response.is_success() {
                    let granted = response.lifetime();
                    let allocation = model.allocations.get_mut(&client).unwrap();
                    if granted == 0 {
                        model.allocations.remove(&client);
                    } else {
                        allocation.expires_at = now + Duration::from_secs(u64::from(granted));
                    }
                } else {
                    prop_assert_eq!(response.code(), Some(437));
                    prop_assert!(model.live(client, now).is_none());
                }
            }
            Op::Permit { client, peer } => {
                let peer = addr(PEERS[peer]);
                let response = h.create_permission(&mut clients[client], &[peer]);
                if response.is_success() {
                    let allocation = model.allocations.get_mut(&client).unwrap();
                    allocation.permissions.insert(peer.ip(), now + permission);
                } else {
                    prop_assert!(response.code() == Some(403) || response.code() == Some(437));
                }
            }
            Op::Bind {
                client,
                number,
                peer,
            } => {
                let peer = addr(PEERS[peer]);
                let response = h.channel_bind(&mut clients[client], number, peer);
                if response.is_success() {
                    let allocation = model.allocations.get_mut(&client).unwrap();
                    allocation.permissions.insert(peer.ip(), now + permission);
                }
            }
            Op::Send { client, peer } => {
                let peer = addr(PEERS[peer]);
                let (action, _) = h.send_indication(&mut clients[client], peer, b"data");
                check_relay(&model, client, &action, now)?;
            }
            Op::ChannelData { client, number } => {
                let (action, _) = h.channel_data(&clients[client], number, b"data");
                check_relay(&model, client, &action, now)?;
            }
            Op::PeerData { client, peer } => {
                let port = model
                    .allocations
                    .get(&client)
                    .map_or(RelayPort::new(50_005), |a| a.port);
                let from = addr(PEERS[peer]);
                let (action, _) = h.peer_input(port, from, b"data");
                if let PeerAction::Forward { dst, .. } = action {
                    let owner = model.client_of(port);
                    prop_assert!(owner.is_some(), "forward from a port nobody owns");
                    let owner = owner.unwrap();
                    prop_assert_eq!(dst, clients[owner].addr);
                    prop_assert!(
                        model.permitted(owner, from.ip(), now),
                        "forward without a live permission"
                    );
                }
            }
            Op::Advance { secs } => {
                h.advance(Duration::from_secs(secs));
                let now = h.now;
                model.allocations.retain(|_, a| now < a.expires_at);
            }
        }
        prop_assert_eq!(h.server.allocation_count(), model.allocations.len());
    }

    // Expiry frees everything.
    h.advance(Duration::from_secs(10_000));
    prop_assert_eq!(h.server.allocation_count(), 0);
    let stats = h.server.stats();
    prop_assert_eq!(
        (stats.allocations, stats.permissions, stats.channels),
        (0, 0, 0)
    );
    prop_assert_eq!(h.server.available_ports(), 10);
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
    prop_assert_eq!(created, freed);
    prop_assert_eq!(h.server.poll_timeout(), None);
    // And the quota is usable again by everyone.
    for client in &mut clients {
        client.nonce = None;
        h.allocate(client);
    }
    Ok(())
}

fn check_relay(
    model: &Model,
    client: usize,
    action: &ClientAction,
    now: Instant,
) -> Result<(), TestCaseError> {
    if let ClientAction::Relay { port, peer, .. } = action {
        let allocation = model.live(client, now);
        prop_assert!(allocation.is_some(), "relay without a live allocation");
        prop_assert_eq!(allocation.unwrap().port, *port);
        prop_assert!(
            model.permitted(client, peer.get().ip(), now),
            "relay to {} without a live permission",
            peer
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn client_input_never_panics(
        datagram in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            stun_shaped(),
            channel_data_shaped(),
        ],
        known_source in any::<bool>(),
        out_len in prop_oneof![Just(2048usize), 0usize..128],
    ) {
        let (mut h, c, port) = busy_harness();
        let from = if known_source { c.addr } else { ClientAddr::new(addr("192.0.2.200:1")) };
        let mut out = vec![0u8; out_len];
        let action = h.server.handle_client_input(h.now, from, &datagram, &mut out);
        match action {
            ClientAction::Reply { dst, len } => {
                prop_assert_eq!(dst, from);
                prop_assert!(len <= out_len);
            }
            ClientAction::Relay { port: p, payload, .. } => {
                prop_assert_eq!(p, port);
                prop_assert!(payload.end <= datagram.len());
            }
            ClientAction::Absorb | ClientAction::Drop(_) => {}
        }
    }

    #[test]
    fn peer_input_never_panics(
        port in prop_oneof![Just(None), (49_990u16..50_020).prop_map(Some)],
        peer in prop_oneof![
            (0..PEERS.len()).prop_map(|i| addr(PEERS[i])),
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
        ],
        payload_len in 0usize..1600,
        spare in 0usize..8,
        claimed in prop_oneof![Just(None), any::<usize>().prop_map(Some)],
    ) {
        let (mut h, _, own) = busy_harness();
        let port = port.map_or(own, RelayPort::new);
        let mut buf = vec![0u8; HEADROOM + payload_len + spare];
        let len = claimed.unwrap_or(payload_len);
        let action = h.server.handle_peer_input(h.now, port, PeerAddr::new(peer), &mut buf, len);
        if let PeerAction::Forward { range, .. } = action {
            prop_assert!(range.end <= buf.len());
            prop_assert!(range.start < HEADROOM);
        }
    }

    #[test]
    fn relaying_needs_a_live_permission_and_expiry_frees_everything(
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(&ops)?;
    }
}

#[test]
fn a_send_indication_shaped_request_is_not_relayed() {
    // Send as a request, not an indication: no relay whatever it carries.
    let (mut h, c, _) = busy_harness();
    let tid = boson_dataplane_proto::stun::TransactionId::new([1; 12]);
    let bytes = c.encode(Method::SEND, Class::Request, tid, false, |enc| {
        enc.add(&boson_dataplane_proto::turn::attr::XorPeerAddress(addr(
            PEERS[0],
        )))
        .unwrap();
        enc.add(&boson_dataplane_proto::turn::attr::Data(b"x"))
            .unwrap();
    });
    assert!(matches!(h.input(c.addr, &bytes).0, ClientAction::Drop(_)));
}
