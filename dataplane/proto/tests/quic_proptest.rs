//! Garbage on the relay's UDP port: random bytes from random sources, and truncated or
//! bit-flipped copies of a real client Initial. The relay must absorb all of it without
//! panicking, count it, answer (if at all) only the sender, and still serve a real client.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod quic_harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use boson_dataplane_proto::quic::DropReason;
use proptest::prelude::*;
use quic_harness::{Client, Sim, client_config, config, node};

/// A UDP datagram from one of a few sources.
fn source() -> impl Strategy<Value = SocketAddr> {
    (1u8..=4, 1u16..=3).prop_map(|(host, port)| {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, host)), 1000 + port)
    })
}

/// How to damage a real Initial: cut it short, and flip some bits.
#[derive(Debug, Clone)]
struct Damage {
    truncate_to: usize,
    flips: Vec<(usize, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        0usize..=1300,
        prop::collection::vec((0usize..1300, 1u8..=255), 0..4),
    )
        .prop_map(|(truncate_to, flips)| Damage { truncate_to, flips })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn garbage_is_absorbed_and_a_real_client_still_connects(
        random in prop::collection::vec(
            (source(), prop::collection::vec(any::<u8>(), 0..1500)), 0..24),
        damaged in prop::collection::vec((source(), damage()), 0..8),
    ) {
        let (config, cert) = config();
        let mut sim = Sim::new(config);

        // A real client's first datagram (its Initial), to damage.
        let mut probe = Client::new(99, client_config(&cert, true), sim.now);
        let initial = probe.first_datagram(sim.now);

        let mut fed = 0u64;
        let mut sources = Vec::new();
        for (from, data) in &random {
            sim.inject(*from, data);
            sources.push(*from);
            fed += 1;
        }
        for (from, damage) in &damaged {
            let mut data = initial.clone();
            data.truncate(damage.truncate_to);
            for &(at, bits) in &damage.flips {
                if let Some(byte) = data.get_mut(at) {
                    *byte ^= bits;
                }
            }
            sim.inject(*from, &data);
            sources.push(*from);
            fed += 1;
        }
        // Let every half-open connection time out.
        sim.run_for(Duration::from_secs(30));
        let stats = sim.relay.stats();
        prop_assert_eq!(stats.udp_rx.packets, fed);
        prop_assert_eq!(stats.authenticated, 0);
        prop_assert!(stats.drops.get(DropReason::Unroutable) <= fed);
        prop_assert!(sim.shell.sends == 0 && sim.shell.pending.is_empty());
        for dst in &sim.relay_sent {
            prop_assert!(sources.contains(dst), "answered a stranger: {}", dst);
        }

        // And it still serves.
        let a = sim.join(1, &cert, node(0xA));
        let b = sim.join(2, &cert, node(0xB));
        sim.clients[a].send(&node(0xB), b"after the garbage").unwrap();
        sim.run_for(Duration::from_millis(20));
        prop_assert_eq!(sim.clients[b].recvs.len(), 1);
    }
}
