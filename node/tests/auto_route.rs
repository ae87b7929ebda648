//! `--route auto`: each peer asks the server for its ranking of the routes, takes the first
//! (of direct, TURN, the QUIC relay and the WebSocket relay) that carries a WireGuard
//! handshake, and moves to the next when handshakes do not pass. A malformed ranking is
//! logged and the default order (direct, TURN, QUIC, then WebSocket) kept. Agents on loopback
//! have no direct candidate (the agent leaves loopback addresses out), so no direct path comes
//! up here: the direct route has its own cases in `e2e_netns.rs`.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Node, Proc, answering_proxy, drain, recv, start_agent, start_server, start_server_with_quic,
    until_through, wait_log, wait_status, wg_packet,
};

/// The handshake timeout of `node/src/route.rs` (11 s), WireGuard-like retries and a margin
/// for a busy machine.
const FAILOVER: Duration = Duration::from_secs(30);

/// Runs two agents with `--route auto` against a server started with `server_args`; returns
/// the route both settle on after a handshake, having checked a burst goes through it.
fn settle(tag: u8, server_args: &[&str]) -> (String, Duration) {
    settle_with(tag, server_args, false, None, |_, _| {})
}

/// [`settle`], with the routing requests of the agents in `ranking.0` (1: A, 2: B) answered
/// by a proxy with `ranking.1` instead of the server, and `check` run on both agents' logs
/// once they run. With `quic`, the server serves the QUIC relay too, and the agents trust
/// its development certificate.
fn settle_with(
    tag: u8,
    server_args: &[&str],
    quic: bool,
    ranking: Option<(&[u8], String)>,
    check: impl Fn(&Proc, &Proc),
) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let server = if quic {
        start_server_with_quic(dir.path(), server_args)
    } else {
        start_server(dir.path(), server_args)
    };
    let cert = dir.path().join("data/relay-cert.pem");
    let cert = cert.to_str().unwrap();
    let agent_args: &[&str] = if quic {
        &["--ca-file", cert, "--quic-server-name", "localhost"]
    } else {
        &[]
    };
    let a = Node::new(dir.path(), tag, 1);
    let b = Node::new(dir.path(), tag, 2);
    let (proxied, answer) = ranking.unwrap_or((&[], String::new()));
    let proxy = answering_proxy(&server.base, "/api/v1/routing/request", answer);
    let base = |n: u8| {
        if proxied.contains(&n) {
            proxy.as_str()
        } else {
            server.base.as_str()
        }
    };
    let agent_a = start_agent("agent-a", &a, &[base(1)], &[&b], agent_args);
    let agent_b = start_agent("agent-b", &b, &[base(2)], &[&a], agent_args);
    check(&agent_a, &agent_b);
    let port_ab: u16 = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[3] != "0"
    })[3]
        .parse()
        .unwrap();
    let port_ba: u16 = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[3] != "0"
    })[3]
        .parse()
        .unwrap();
    // WireGuard's handshake, retried as WireGuard does until a response comes back.
    let started = Instant::now();
    let deadline = started + FAILOVER;
    loop {
        until_through(
            &a,
            port_ab,
            &b,
            &wg_packet(1, 0, 0),
            deadline - Instant::now(),
        );
        b.wg.send_to(&wg_packet(2, 0, 0), ("127.0.0.1", port_ba))
            .unwrap();
        if recv(&a.wg, Duration::from_millis(500)).is_some_and(|(p, _)| p == wg_packet(2, 0, 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "no handshake passed");
    }
    let took = started.elapsed();
    drain(&a.wg);
    drain(&b.wg);
    for seq in 0..50 {
        a.wg.send_to(&wg_packet(4, seq, 500), ("127.0.0.1", port_ab))
            .unwrap();
        let (got, _) = recv(&b.wg, Duration::from_secs(10)).expect("A → B burst");
        assert!(got == wg_packet(4, seq, 500), "A → B {seq}");
        b.wg.send_to(&wg_packet(4, seq, 700), ("127.0.0.1", port_ba))
            .unwrap();
        let (got, _) = recv(&a.wg, Duration::from_secs(10)).expect("B → A burst");
        assert!(got == wg_packet(4, seq, 700), "B → A {seq}");
    }
    let line_a = wait_status(&a.state_dir, &b.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    let line_b = wait_status(&b.state_dir, &a.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    assert_eq!(line_a[1], line_b[1], "both sides on one route");
    (line_a[1].clone(), took)
}

#[test]
fn auto_keeps_turn_when_it_carries_the_handshake() {
    // The relayed addresses are the relay's own (on loopback here): the peer filter lets
    // them through on relay ports.
    let (route, _) = settle(0x81, &[]);
    assert_eq!(route, "turn");
}

#[test]
fn auto_takes_the_quic_relay_when_turn_does_not_carry() {
    // TURN refused as below; the server serves QUIC too: the next route, QUIC, carries (the
    // node's one relay session on QUIC, which also carried the TURN signalling).
    let (route, took) = settle_with(
        0x87,
        &["--denied-peers", "127.0.0.0/8"],
        true,
        None,
        |_, _| {},
    );
    assert_eq!(route, "quic");
    assert!(
        took >= Duration::from_secs(5),
        "TURN was tried first ({took:?})"
    );
}

#[test]
fn auto_falls_back_to_the_websocket_relay_when_turn_does_not_carry() {
    // The operator's deny list refuses the relayed addresses: TURN cannot relay between the
    // two (ChannelBind gets 403).
    let (route, took) = settle(0x82, &["--denied-peers", "127.0.0.0/8"]);
    assert_eq!(route, "ws");
    assert!(
        took >= Duration::from_secs(5),
        "TURN was tried first ({took:?})"
    );
}

/// How long an agent may take to register and get its ranking on a busy machine.
const PLAN_WAIT: Duration = Duration::from_secs(30);

#[test]
fn auto_asks_the_server_for_the_order() {
    // Without a QUIC relay the server ranks TURN, then WebSocket.
    settle_with(0x83, &[], false, None, |a, b| {
        for agent in [a, b] {
            wait_log(
                agent,
                &[
                    "route order from the server",
                    "ranked=turn,ws",
                    "order=direct,turn,ws",
                ],
                PLAN_WAIT,
            );
        }
    });
    // With one, QUIC between them: the ranking is the server's, and `auto` takes all three.
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with_quic(dir.path(), &[]);
    let a = Node::new(dir.path(), 0x84, 1);
    let b = Node::new(dir.path(), 0x84, 2);
    let agent_a = start_agent("agent-a", &a, &[&server.base], &[&b], &[]);
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &[]);
    wait_log(
        &agent_a,
        &[
            "route order from the server",
            "ranked=turn,quic,ws",
            "order=direct,turn,quic,ws",
        ],
        PLAN_WAIT,
    );
}

#[test]
fn auto_follows_the_servers_order() {
    // TURN carries handshakes here (the first test), yet a ranking that puts the WebSocket
    // relay first is followed, at once.
    let ranking = r#"{"routes":[{"type":"relay","transport":"ws"},{"type":"relay","transport":"turn"}],"selectedRoute":null}"#;
    let (route, took) = settle_with(
        0x85,
        &[],
        false,
        Some((&[1, 2], ranking.to_owned())),
        |a, b| {
            for agent in [a, b] {
                wait_log(
                    agent,
                    &["route order from the server", "order=direct,ws,turn"],
                    PLAN_WAIT,
                );
            }
        },
    );
    assert_eq!(route, "ws");
    assert!(
        took < Duration::from_secs(5),
        "no TURN attempt first ({took:?})"
    );
}

#[test]
fn a_malformed_ranking_is_logged_and_the_default_order_kept() {
    let ranking = r#"{"routes":[{"type":"teleport"}]}"#;
    let (route, _) = settle_with(
        0x86,
        &[],
        false,
        Some((&[1], ranking.to_owned())),
        |a, _| {
            wait_log(
                a,
                &[
                    "malformed routing answer",
                    "routes[0].type is \"teleport\"",
                    "order=direct,turn,quic,ws",
                ],
                PLAN_WAIT,
            );
        },
    );
    assert_eq!(route, "turn");
}
