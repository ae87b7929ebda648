//! Two agents with `--route quic` carry WireGuard-shaped packets through the real
//! `bosonserver`'s QUIC relay (its self-signed development certificate trusted with
//! `--ca-file`), both ways, every packet.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use common::{Node, carry_every_packet_both_ways, start_agent, start_server_with_quic};

/// Largest transport payload sent: wireguard-go's full size at MTU 1 420 (1 452 bytes with
/// WireGuard's 32), more than a QUIC datagram holds, so the agents fragment it
/// (`node/src/fragment.rs`).
const MAX_LEN: usize = 1452;

#[test]
fn two_agents_carry_every_packet_both_ways_over_the_quic_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with_quic(dir.path(), &[]);
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
    carry_every_packet_both_ways(&a, &b, "quic", MAX_LEN);
}
