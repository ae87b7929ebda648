//! The relay host's bandwidth load comes from real traffic, black box: the real binary with a
//! small `--relay-bandwidth`, two TURN clients relaying through it to each other, and the
//! host record and a routing answer read through the REST API. Idle, the host reports no
//! bandwidth and routes through it carry no load cost; under traffic, its record reports the
//! rate and the relay route's cost and explanation weigh it.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::{Duration, Instant};

use common::turn;
use serde_json::{Value, json};

const SECRET: &str = "host-load-secret";
/// Small, so that a few hundred kilobytes a second fill it.
const CAPACITY_MBPS: f64 = 2.0;

fn now() -> Instant {
    #[expect(
        clippy::disallowed_methods,
        reason = "deadlines for a real server process"
    )]
    Instant::now()
}

/// This server's own relay host record, as `GET /api/v1/hosts` lists it.
fn own_bandwidth(http: &common::Http, base: &str, token: &str) -> f64 {
    let (status, body) = http.get_auth(&format!("{base}/api/v1/hosts"), token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    body["hosts"][0]["load"]["bandwidth"].as_f64().unwrap()
}

/// The TURN relay route from `client` to `target` (both symmetric: relay only).
fn relay_route(http: &common::Http, base: &str, token: &str, client: &str, target: &str) -> Value {
    let request = json!({
        "clientId": client,
        "targetNodeId": target,
        "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "Symmetric"}
    });
    let (status, body) = http.post(
        &format!("{base}/api/v1/routing/request"),
        &request,
        Some(token),
    );
    assert_eq!(status, 200, "{body}");
    let route = body["routes"][0].clone();
    assert_eq!(route["transport"], "turn", "{body}");
    route
}

#[test]
fn relayed_traffic_becomes_host_load_that_routing_weighs() {
    let ports = turn::relay_ports(8);
    let dir = tempfile::tempdir().unwrap();
    let capacity = CAPACITY_MBPS.to_string();
    let server = common::start(
        dir.path(),
        &[
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--no-pin",
            "--turn-static-secret",
            SECRET,
            "--relay-ports",
            &ports,
            "--relay-bandwidth",
            &capacity,
            "--host-heartbeat-interval",
            "2s",
            "--host-timeout",
            "6s",
        ],
        true,
    );
    let http = common::Http::new();
    let base = server.base.clone();
    let (client_id, target_id) = (common::node_id(0x71, 1), common::node_id(0x71, 2));
    let token = http.register(
        &base,
        &common::node_body(&client_id, &common::wg_key(0x71, 1)),
    );
    http.register(
        &base,
        &common::node_body(&target_id, &common::wg_key(0x71, 2)),
    );

    // Idle: nothing relayed, no bandwidth, and the relay route costs no host load.
    assert_eq!(own_bandwidth(&http, &base, &token), 0.0);
    let idle = relay_route(&http, &base, &token, &client_id, &target_id);
    assert!(
        idle["explanation"]
            .as_str()
            .unwrap()
            .contains("host load 0%"),
        "{idle}"
    );
    let idle_cost = idle["cost"].as_f64().unwrap();

    // Two allocations relay to each other: about 3 Mbit/s counted (each payload is relayed
    // client to peer on one allocation and peer to client on the other), over the capacity.
    let turn_addr = server.turn.unwrap();
    let [(alice, _), (mut bob, _)] = turn::bound_pair(turn_addr, SECRET, (31, 32));
    let payload = [0x5a_u8; 1000];
    let deadline = now() + Duration::from_secs(30);
    let interval = Duration::from_micros(5000);
    let mut next = now();
    let mut sent = 0u64;
    let loaded = loop {
        assert!(
            now() < deadline,
            "no bandwidth reported after {sent} packets"
        );
        // 200 packets of 1000 bytes a second: 1.6 Mbit/s, counted twice.
        for _ in 0..20 {
            alice.send_channel_data(0x4001, &payload).unwrap();
            sent += 1;
            next += interval;
            std::thread::sleep(next.saturating_duration_since(now()));
        }
        let bandwidth = own_bandwidth(&http, &base, &token);
        // Half the capacity at least: well clear of noise, and reached within a second or
        // two of the 1 s sampling.
        if bandwidth >= CAPACITY_MBPS / 2.0 {
            break bandwidth;
        }
    };
    assert!(
        loaded < CAPACITY_MBPS * 4.0,
        "{loaded} Mbit/s is more than was sent"
    );
    let busy = relay_route(&http, &base, &token, &client_id, &target_id);
    let busy_cost = busy["cost"].as_f64().unwrap();
    // The host load term is HOST_LOAD_WEIGHT (100) × utilization, and utilization is at
    // least a half now.
    assert!(
        busy_cost >= idle_cost + 40.0,
        "idle {idle_cost}, loaded {busy_cost}: {busy}"
    );
    assert!(
        !busy["explanation"]
            .as_str()
            .unwrap()
            .contains("host load 0%"),
        "{busy}"
    );
    // Bob heard it: the traffic was relayed, not dropped.
    assert!(bob.recv_channel_data().is_some());
}
