//! Issue 4's done-when across hosts: two `bosonserver` processes share a Redis (the relay host
//! registry and node presence) and a mesh key; a node on one relays to a node on the other.
//!
//! Needs Redis: `BOSON_TEST_REDIS_URL` (scripts/test.sh starts one). Without it the test is
//! skipped with a message, except when `CI` is set: then it fails.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

#[allow(
    dead_code,
    reason = "shared with the dataplane's tests; this file uses part of it"
)]
#[path = "../../dataplane/server/tests/common/ws_client.rs"]
mod ws_client;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use boson_shared::NodeId;
use ws_client::{Client, connect};

const MESH_KEY: &str = "mesh-key-for-tests-0123456789abcdef";
const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

fn redis_url() -> Option<String> {
    match std::env::var("BOSON_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "BOSON_TEST_REDIS_URL is required when CI is set (scripts/test.sh starts Redis)"
            );
            eprintln!("skipped: BOSON_TEST_REDIS_URL is not set");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn host(dir: &std::path::Path, redis: &str, prefix: &str) -> (common::Running, SocketAddr) {
    let port = free_port();
    let relay = format!("127.0.0.1:{port}");
    let url = format!("ws://{relay}/relay");
    let server = common::start(
        dir,
        &[
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--relay-listen",
            &relay,
            "--public-relay-url",
            &url,
            "--mesh-key",
            MESH_KEY,
            "--jwt-secret",
            JWT_SECRET,
            "--redis-url",
            redis,
            "--redis-prefix",
            prefix,
            "--host-heartbeat-interval",
            "1s",
        ],
        true,
    );
    (server, relay.parse().unwrap())
}

#[test]
fn nodes_on_two_hosts_relay_over_the_mesh() {
    let Some(redis) = redis_url() else { return };
    let prefix = format!("boson-mesh-test-{}:", std::process::id());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (host_a, relay_a) = host(dir_a.path(), &redis, &prefix);
    let (host_b, relay_b) = host(dir_b.path(), &redis, &prefix);

    let http = common::Http::new();
    let (id_x, id_y) = (
        "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a01",
        "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02",
    );
    let token_x = http.register(
        &host_a.base,
        &common::node_body(id_x, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let token_y = http.register(
        &host_b.base,
        &common::node_body(id_y, "yTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let (x, y): (NodeId, NodeId) = (id_x.parse().unwrap(), id_y.parse().unwrap());
    let mut client_x = Client::new(connect(relay_a));
    assert_eq!(client_x.upgrade(Some(&token_x)).unwrap(), 101);
    assert_eq!(client_x.ready(), x);
    let mut client_y = Client::new(connect(relay_b));
    assert_eq!(client_y.upgrade(Some(&token_y)).unwrap(), 101);
    assert_eq!(client_y.ready(), y);

    // Until the hosts have linked and learnt each other's nodes, a SEND across is dropped
    // (counted) or answered PEER_GONE; probe until one gets through, within a few heartbeats.
    client_x
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut through = false;
    for _ in 0..100 {
        client_y.send(&x, b"probe").unwrap();
        if let Ok(Ok((0x02, payload))) = client_x.recv_message() {
            assert_eq!(&payload[1..17], y.as_bytes());
            through = true;
            break;
        }
    }
    if !through {
        for base in [&host_a.base, &host_b.base] {
            let metrics = common::Http::new().text(&format!("{base}/metrics"));
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|l| (l.contains("_mesh_") || l.contains("_ws_")) && !l.starts_with('#'))
                .collect();
            eprintln!("{base}:\n{}", lines.join("\n"));
        }
        panic!("no packet crossed the mesh in 20 s");
    }
    // Drain stray probes, then exchange numbered packets both ways, in order and complete.
    while client_x.recv_message().is_ok() {}
    client_x
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client_y
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Y may hold PEER_GONEs from the probes; X → Y must also be linked (it is the other link).
    let mut back = false;
    for _ in 0..100 {
        client_x.send(&y, b"back").unwrap();
        loop {
            match client_y.recv_message() {
                Ok(Ok((0x02, _))) => {
                    back = true;
                    break;
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        if back {
            break;
        }
    }
    assert!(back, "no packet crossed the mesh the other way");
    while client_y.recv_message().is_ok() {}
    client_y
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for i in 0..2000u32 {
        let packet = [&i.to_le_bytes()[..], &[9u8; 300]].concat();
        client_y.send(&x, &packet).unwrap();
        assert_eq!(
            client_x.recv_packet(),
            (y, packet.clone()),
            "packet {i} Y→X"
        );
        client_x.send(&y, &packet).unwrap();
        assert_eq!(client_y.recv_packet(), (x, packet), "packet {i} X→Y");
    }
    // A node on host A over QUIC reaches Y on host B over the mesh, both ways.
    let id_c = "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a03";
    let token_c = http.register(
        &host_a.base,
        &common::node_body(id_c, "zTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let c: NodeId = id_c.parse().unwrap();
    let node_c = common::quic_node(relay_a, &dir_a.path().join("data"), &token_c);
    let (runtime, quic) = (&node_c.runtime, &node_c.conn);
    // Host B learns where C is at its next presence poll: probe until a packet gets through.
    let mut reached = false;
    for _ in 0..100 {
        client_y.send(&c, b"to quic").unwrap();
        let got = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), quic.read_datagram()).await
        });
        if let Ok(Ok(datagram)) = got {
            assert_eq!(&datagram[..17], &[&[0x02u8][..], y.as_bytes()].concat()[..]);
            reached = true;
            break;
        }
    }
    assert!(reached, "no packet reached the QUIC node across the mesh");
    client_y
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while client_y.recv_message().is_ok() {}
    client_y
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut datagram = vec![0x01];
    datagram.extend_from_slice(y.as_bytes());
    datagram.extend_from_slice(b"from quic");
    quic.send_datagram(datagram.into()).unwrap();
    assert_eq!(client_y.recv_packet(), (c, b"from quic".to_vec()));

    // A fresh client: the pooled connection may have idled past the server's header timeout.
    let metrics = common::Http::new().text(&format!("{}/metrics", host_b.base));
    let sent: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("bosonserver_dataplane_mesh_packets_total{")
                && l.contains("direction=\"out\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        sent >= 2000,
        "host B forwarded {sent} packets over the mesh\n{metrics}"
    );
    drop(host_a);
}
