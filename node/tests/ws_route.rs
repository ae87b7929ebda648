//! Two agents in `--wg-listen-port` mode carry WireGuard-shaped packets through the real
//! `bosonserver`'s WebSocket relay, both ways, every packet; status, metrics, heartbeats and
//! deregistration on SIGTERM.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, recv, start_agent, start_server, until_through, wait_status, wg_packet};

#[test]
fn two_agents_carry_every_packet_both_ways_over_the_ws_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--heartbeat-interval", "1s"]);
    let a = Node::new(dir.path(), 0x31, 1);
    let b = Node::new(dir.path(), 0x31, 2);
    let metrics_port = common::free_tcp_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut agent_a = start_agent(
        "agent-a",
        &a,
        &[&server.base],
        &[&b],
        &["--route", "ws", "--metrics-listen", &metrics],
    );
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &["--route", "ws"]);

    // Each agent shows its peer's local socket; that is WireGuard's endpoint for the peer.
    let line_a = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    });
    let line_b = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    });
    let port_a_to_b: u16 = line_a[3].parse().unwrap();
    let port_b_to_a: u16 = line_b[3].parse().unwrap();

    // The handshake: initiation A → B, response B → A.
    let init = wg_packet(1, 0, 0);
    let src = until_through(&a, port_a_to_b, &b, &init, Duration::from_secs(30));
    assert_eq!(
        src.port(),
        port_b_to_a,
        "B's WireGuard sees A at A's local socket on B"
    );
    let response = wg_packet(2, 0, 0);
    b.wg.send_to(&response, ("127.0.0.1", port_b_to_a)).unwrap();
    let (got, src) = recv(&a.wg, Duration::from_secs(10)).expect("the response arrives");
    assert_eq!(got, response);
    assert_eq!(src.port(), port_a_to_b);

    // Transport data, both ways, every packet, in order (one relay path, TCP underneath).
    for round in 0..4u32 {
        for seq in 0..100u32 {
            let packet = wg_packet(4, round * 1000 + seq, 64 + (seq as usize * 13) % 1400);
            a.wg.send_to(&packet, ("127.0.0.1", port_a_to_b)).unwrap();
            let packet = wg_packet(4, round * 1000 + seq + 500, 32 + (seq as usize * 7) % 1400);
            b.wg.send_to(&packet, ("127.0.0.1", port_b_to_a)).unwrap();
        }
        for seq in 0..100u32 {
            let want = wg_packet(4, round * 1000 + seq, 64 + (seq as usize * 13) % 1400);
            let (got, _) = recv(&b.wg, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("A → B packet {round}/{seq} lost"));
            assert!(got == want, "A → B packet {round}/{seq} differs");
        }
        for seq in 0..100u32 {
            let want = wg_packet(4, round * 1000 + seq + 500, 32 + (seq as usize * 7) % 1400);
            let (got, _) = recv(&a.wg, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("B → A packet {round}/{seq} lost"));
            assert!(got == want, "B → A packet {round}/{seq} differs");
        }
    }

    // Status: up, with the bytes counted.
    let line = wait_status(&a.state_dir, &b.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    let tx: u64 = line[4].parse().unwrap();
    let rx: u64 = line[5].parse().unwrap();
    assert!(tx >= 148 + 400 * 80 && rx >= 92 + 400 * 48, "{line:?}");

    // Metrics: the route and the bytes per peer.
    let body = http_get(&metrics, "/metrics");
    assert!(
        body.contains(&format!(
            "boson_node_peer_route{{peer=\"{}\",route=\"ws\"}} 1",
            b.id
        )),
        "{body}"
    );
    assert!(body.contains("boson_node_relay_connected 1"), "{body}");
    assert!(
        body.contains(&format!(
            "boson_node_peer_tx_bytes_total{{peer=\"{}\"}} {tx}",
            b.id
        )) || body.contains("boson_node_peer_tx_bytes_total"),
        "{body}"
    );

    // Heartbeats at the server's 1 s interval.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = http_get(&metrics, "/metrics");
        if body.contains("boson_node_heartbeats_total{outcome=\"ok\"} 2")
            || body.lines().any(|l| {
                l.starts_with("boson_node_heartbeats_total{outcome=\"ok\"}")
                    && l.split(' ')
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|v| v >= 2)
            })
        {
            break;
        }
        assert!(Instant::now() < deadline, "no heartbeats: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: exit 0, deregistered (so A's id registers afresh without a token), status 1.
    agent_a.signal("TERM");
    let exit = agent_a
        .wait_exit(Duration::from_secs(15))
        .expect("agent A stops");
    assert_eq!(exit.code(), Some(0), "{:?}", agent_a.drain_log());
    let (code, _) = common::status(&a.state_dir);
    assert_eq!(code, 1, "status after the agent stopped");
    let (status, body) = common::post(
        &format!("{}/api/v1/nodes/register", server.base),
        &common::register_body(&server.base, &a),
    );
    assert_eq!(status, 201, "A was deleted on SIGTERM: {body}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}
