//! Two agents with `--route turn` carry WireGuard-shaped packets through the real
//! `bosonserver`'s TURN relay, both ways, every packet: each allocates, learns the other's
//! relayed address over the WebSocket relay session, and binds a channel to it.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use common::{Node, carry_every_packet_both_ways, start_agent, start_server};

/// Largest transport payload sent: a full WireGuard packet at MTU 1420.
const MAX_LEN: usize = 1420;

#[test]
fn two_agents_carry_every_packet_both_ways_over_turn() {
    let dir = tempfile::tempdir().unwrap();
    // The relayed addresses are the relay's own (on loopback here): the peer filter lets
    // them through on relay ports.
    let server = start_server(dir.path(), &[]);
    let turn = ["--route", "turn"];
    let a = Node::new(dir.path(), 0x72, 1);
    let b = Node::new(dir.path(), 0x72, 2);
    let _agent_a = start_agent("agent-a", &a, &[&server.base], &[&b], &turn);
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &turn);
    carry_every_packet_both_ways(&a, &b, "turn", MAX_LEN);
}
