//! Property tests of the codec: every command and event within the bounds round-trips, and
//! arbitrary bytes decode to an error or to a value that re-encodes to exactly those bytes.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use boson_channel::codec::{
    CODEC_VERSION, MAX_PEER_CIDRS, MAX_SECRET_LEN, MAX_TURN_SECRETS, MAX_USER_LEN, decode_command,
    decode_event, encode_command, encode_event,
};
use boson_shared::plane::{Command, Event, Grant, HostId, Transport};
use boson_shared::{Cidr, NodeId};
use proptest::prelude::*;
use uuid::Uuid;

fn node() -> impl Strategy<Value = NodeId> {
    any::<[u8; 16]>().prop_map(NodeId::from_bytes)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
            |(ip, port, flow, scope)| SocketAddr::V6(SocketAddrV6::new(
                ip.into(),
                port,
                flow,
                scope
            ))
        ),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(ip, prefix)| Cidr::new(ip.into(), prefix).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(ip, prefix)| Cidr::new(ip.into(), prefix).unwrap()),
    ]
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        Just(Transport::Ws),
        Just(Transport::Wss),
        Just(Transport::Quic),
        Just(Transport::Mesh),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (node(), any::<i64>(), any::<u64>()).prop_map(|(node, generation, expires_at)| {
            Command::Grant(Grant {
                node,
                generation,
                expires_at,
            })
        }),
        node().prop_map(|node| Command::Revoke { node }),
        Just(Command::ClearGrants),
        prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..=MAX_SECRET_LEN),
            0..=MAX_TURN_SECRETS
        )
        .prop_map(Command::TurnSecrets),
        any::<u32>().prop_map(|max_allocations_per_user| Command::TurnQuota {
            max_allocations_per_user
        }),
        any::<u64>().prop_map(|deadline| Command::Drain { deadline }),
        (node(), proptest::option::of(any::<[u8; 16]>())).prop_map(|(node, host)| {
            Command::Presence {
                node,
                host: host.map(|bytes| HostId(Uuid::from_bytes(bytes))),
            }
        }),
        (any::<[u8; 16]>(), "\\PC{0,256}", any::<u64>()).prop_map(|(host, relay_url, until)| {
            Command::MeshHost {
                host: HostId(Uuid::from_bytes(host)),
                relay_url,
                until,
            }
        }),
        (
            prop::collection::vec(cidr(), 0..=MAX_PEER_CIDRS),
            prop::collection::vec(cidr(), 0..=8),
        )
            .prop_map(|(allow, deny)| Command::PeerFilter { allow, deny }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (node(), any::<u16>(), transport()).prop_map(|(node, core, transport)| {
            Event::NodeConnected {
                node,
                core,
                transport,
            }
        }),
        (node(), any::<u16>()).prop_map(|(node, core)| Event::NodeDisconnected { node, core }),
        // Any string whose UTF-8 fits the bound (up to 256 chars of up to 4 bytes).
        (any::<u16>(), "\\PC{0,256}", addr())
            .prop_map(|(core, user, relay)| { Event::AllocationCreated { core, user, relay } }),
        (any::<u16>(), addr()).prop_map(|(core, relay)| Event::AllocationExpired { core, relay }),
        Just(Event::NeedGrants),
        (any::<u16>(), any::<Option<u16>>(), any::<Option<u16>>())
            .prop_map(|(udp, tcp, tls)| Event::Listening { udp, tcp, tls }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn commands_round_trip(command in command()) {
        let mut bytes = Vec::new();
        encode_command(&command, &mut bytes).unwrap();
        prop_assert_eq!(decode_command(&bytes), Ok(command));
    }

    #[test]
    fn events_round_trip(event in event()) {
        let mut bytes = Vec::new();
        encode_event(&event, &mut bytes).unwrap();
        prop_assert!(bytes.len() <= MAX_USER_LEN + 64);
        prop_assert_eq!(decode_event(&bytes), Ok(event));
    }

    #[test]
    fn arbitrary_bytes_decode_canonically_or_not_at_all(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        command_tag in 0u8..10,
    ) {
        // Start most inputs with a valid version and tag so the bodies get exercised.
        let mut input = vec![CODEC_VERSION, command_tag];
        input.extend_from_slice(&bytes);
        for input in [&bytes[..], &input[..]] {
            if let Ok(command) = decode_command(input) {
                let mut again = Vec::new();
                encode_command(&command, &mut again).unwrap();
                prop_assert_eq!(&again[..], input);
            }
            if let Ok(event) = decode_event(input) {
                let mut again = Vec::new();
                encode_event(&event, &mut again).unwrap();
                prop_assert_eq!(&again[..], input);
            }
        }
    }
}
