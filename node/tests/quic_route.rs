//! Two agents with `--route quic` carry WireGuard-shaped packets through the real
//! `bosonserver`'s QUIC relay (its self-signed development certificate trusted with
//! `--ca-file`), both ways, every packet.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::time::Duration;

use common::{
    Node, free_tcp_port, recv, start_agent, start_server_in, until_through, wait_status, wg_packet,
};

/// Largest transport payload sent: QUIC datagrams carry about 1 145 bytes of packet before
/// path MTU discovery (see `dataplane/proto/src/quic/mod.rs`).
const MAX_LEN: usize = 1100;

#[test]
fn two_agents_carry_every_packet_both_ways_over_the_quic_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay_port = free_tcp_port();
    let quic_addr = format!("127.0.0.1:{relay_port}");
    let server = start_server_in(
        &[],
        "127.0.0.1",
        0,
        relay_port,
        dir.path(),
        &["--public-quic-addr", &quic_addr],
    );
    let cert = dir.path().join("data/relay-cert.pem");
    assert!(cert.exists(), "the server's development certificate");
    let cert = cert.to_str().unwrap();
    let quic = [
        "--route",
        "quic",
        "--ca-file",
        cert,
        "--quic-server-name",
        "localhost",
    ];
    let a = Node::new(dir.path(), 0x71, 1);
    let b = Node::new(dir.path(), 0x71, 2);
    let _agent_a = start_agent("agent-a", &a, &[&server.base], &[&b], &quic);
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &quic);
    let port_ab: u16 = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == "quic"
    })[3]
        .parse()
        .unwrap();
    let port_ba: u16 = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[1] == "quic"
    })[3]
        .parse()
        .unwrap();
    let src = until_through(
        &a,
        port_ab,
        &b,
        &wg_packet(1, 0, 0),
        Duration::from_secs(30),
    );
    assert_eq!(src.port(), port_ba);
    until_through(
        &b,
        port_ba,
        &a,
        &wg_packet(2, 0, 0),
        Duration::from_secs(10),
    );

    // Datagrams are unordered in principle: collect each round and compare as sets.
    for round in 0..4u32 {
        let mut sent_ab = Vec::new();
        let mut sent_ba = Vec::new();
        for seq in 0..100u32 {
            let packet = wg_packet(4, round * 1000 + seq, (seq as usize * 13) % MAX_LEN);
            a.wg.send_to(&packet, ("127.0.0.1", port_ab)).unwrap();
            sent_ab.push(packet);
            let packet = wg_packet(4, round * 1000 + seq + 500, (seq as usize * 7) % MAX_LEN);
            b.wg.send_to(&packet, ("127.0.0.1", port_ba)).unwrap();
            sent_ba.push(packet);
        }
        for (at, sent, what) in [(&b, &mut sent_ab, "A → B"), (&a, &mut sent_ba, "B → A")] {
            let mut got = Vec::new();
            while got.len() < sent.len() {
                let (packet, _) = recv(&at.wg, Duration::from_secs(10)).unwrap_or_else(|| {
                    panic!("{what}: {} of 100 arrived in round {round}", got.len())
                });
                got.push(packet);
            }
            got.sort();
            sent.sort();
            assert!(got == *sent, "{what}: round {round} differs");
        }
    }
    let line = wait_status(&a.state_dir, &b.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    assert_eq!(line[1], "quic");
}
