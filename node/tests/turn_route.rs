//! Two agents with `--route turn` carry WireGuard-shaped packets through the real
//! `bosonserver`'s TURN relay, both ways, every packet: each allocates, learns the other's
//! relayed address over the WebSocket relay session, and binds a channel to it.

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

/// Largest transport payload sent: a full WireGuard packet at MTU 1420.
const MAX_LEN: usize = 1420;

#[test]
fn two_agents_carry_every_packet_both_ways_over_turn() {
    let dir = tempfile::tempdir().unwrap();
    // The relayed addresses are the relay's own (on loopback here): the peer filter lets
    // them through on relay ports.
    let server = start_server_in(&[], "127.0.0.1", 0, free_tcp_port(), dir.path(), &[]);
    let turn = ["--route", "turn"];
    let a = Node::new(dir.path(), 0x72, 1);
    let b = Node::new(dir.path(), 0x72, 2);
    let _agent_a = start_agent("agent-a", &a, &[&server.base], &[&b], &turn);
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &turn);
    let port_ab: u16 = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == "turn"
    })[3]
        .parse()
        .unwrap();
    let port_ba: u16 = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[1] == "turn"
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
    assert_eq!(line[1], "turn");
}
