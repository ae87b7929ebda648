//! The node agent's end-to-end topology (issue 13 §3), in network namespaces:
//!
//! ```text
//!   root namespace: this test, PostgreSQL and Redis (on the internet's gateway address)
//!   internet (a bridge in a namespace of its own), 10.231.S.0/24
//!     ├── relay host A (bosonserver run)  ┐ one database, one Redis, one mesh key
//!     ├── relay host B (bosonserver run)  ┘
//!     ├── home router 0 (NAT) ── node 0: wireguard-go (10.99.0.1)
//!     └── home router 1 (NAT) ── node 1: wireguard-go (10.99.0.2)
//! ```
//!
//! Each node's wireguard-go has the other as its peer (keys and allowed IPs set by the test)
//! and no endpoint: finding a way to the peer is the node agent's job.
//!
//! Needs root, `ip`, `iptables`, `wireguard-go`, `wg`, PostgreSQL's server binaries and
//! redis-server (skipped without, failing when `CI` is set; `scripts/services.sh` installs
//! them). Alone: `cargo test -p bosonserver --test node_e2e`.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use boson_testsupport::clock::now;
use boson_testsupport::http;
use boson_testsupport::netns::{Internet, Nat, Router, Station};
use boson_testsupport::relay::{RelayHost, Settings};
use boson_testsupport::require;
use boson_testsupport::services::{Postgres, Redis, postgres_bin};
use boson_testsupport::wireguard::WireGuard;

/// WireGuard's port on every node (each is behind its own NAT).
const WG_PORT: u16 = 51820;

/// The programs this test runs.
const PROGRAMS: &[&str] = &[
    "ip",
    "iptables",
    "sysctl",
    "wireguard-go",
    "wg",
    "ping",
    "redis-server",
];

/// What the test needs; `None` (skip) when something is missing and `CI` is not set.
fn requirements() -> Option<PathBuf> {
    if !require(true, PROGRAMS) {
        return None;
    }
    let bin = postgres_bin();
    assert!(
        bin.is_some() || std::env::var_os("CI").is_none(),
        "CI is set, and this test needs PostgreSQL's server binaries"
    );
    if bin.is_none() {
        eprintln!("skipped: this test needs PostgreSQL's server binaries");
    }
    bin
}

/// A node: a namespace behind a home router, running wireguard-go.
struct Node {
    station: Station,
    wg: WireGuard,
}

/// The whole topology. Fields drop in order: nodes, hosts, then the services, then the
/// namespaces.
struct Lab {
    nodes: Vec<Node>,
    hosts: Vec<RelayHost>,
    redis: Redis,
    postgres: Postgres,
    routers: Vec<Router>,
    net: Internet,
}

impl Lab {
    /// Internet `k` with two relay hosts (each as two processes, control plane and dataplane,
    /// if `split`) and one node behind each of two routers with `nats`.
    fn new(k: u8, pg_bin: PathBuf, nats: [Nat; 2], split: bool) -> Self {
        let mut net = Internet::create(k);
        let gateway = IpAddr::V4(net.gateway());
        let postgres = Postgres::init_on(pg_bin, gateway, Some(&net.cidr()));
        let mut redis = Redis::on(gateway);
        redis.start();
        let settings = Settings {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_bosonserver")),
            database_url: postgres.url(),
            redis_url: Some(redis.url()),
            region: "US-CA".to_owned(),
            workers: 1,
            host_heartbeat: Duration::from_millis(500),
            host_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            split,
            extra: Vec::new(),
        };
        let mut hosts: Vec<RelayHost> = (0..2)
            .map(|i| {
                let station = net.host(&format!("relay{i}"));
                let id = format!("7e570000-0000-4000-8000-0000000000e{i}");
                RelayHost::new(station, &id, settings.clone())
            })
            .collect();
        // At once, as in a rollout: their migrations race on the one database.
        std::thread::scope(|scope| {
            for host in &mut hosts {
                scope.spawn(move || host.start());
            }
        });
        let mut routers = Vec::new();
        let mut nodes = Vec::new();
        for (i, nat) in nats.into_iter().enumerate() {
            let mut router = net.router(&format!("home{i}"), nat);
            let station = net.behind(&mut router, &format!("node{i}"));
            let address = Ipv4Addr::new(10, 99, 0, 1 + u8::try_from(i).unwrap());
            let wg = WireGuard::start(&station, address, WG_PORT);
            routers.push(router);
            nodes.push(Node { station, wg });
        }
        // Keys and allowed IPs are the operator's; endpoints are the agent's.
        nodes[0].wg.add_peer(&nodes[1].wg, None, None);
        nodes[1].wg.add_peer(&nodes[0].wg, None, None);
        Self {
            nodes,
            hosts,
            redis,
            postgres,
            routers,
            net,
        }
    }

    /// Tears it all down; panics if anything is left.
    fn destroy(self) {
        let sockets: Vec<PathBuf> = self
            .nodes
            .iter()
            .map(|n| PathBuf::from(format!("/var/run/wireguard/{}.sock", n.wg.interface)))
            .collect();
        drop(self.nodes);
        drop(self.hosts);
        drop(self.redis);
        drop(self.postgres);
        let leftovers = self.net.destroy();
        assert!(leftovers.is_empty(), "still there: {leftovers:?}");
        for socket in sockets {
            assert!(!socket.exists(), "{} is still there", socket.display());
        }
    }
}

/// The topology stands: a split relay host's control plane restarts alone; the relay hosts
/// reach each other across the internet; every node
/// reaches both hosts' control plane through its NAT, and only through it (a host sees the
/// router's address); each node runs its own wireguard-go with the other as its peer, and
/// without an agent no handshake happens.
#[test]
fn topology_stands_without_the_agent() {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut lab = Lab::new(0, pg_bin, [Nat::Symmetric, Nat::EndpointIndependent], true);
    let dataplane = lab.hosts[0].pid();
    lab.hosts[0].restart_control();
    assert_eq!(lab.hosts[0].pid(), dataplane, "the dataplane ran on");
    assert!(lab.hosts[0].running());
    assert!(
        lab.hosts[0].log_text().matches("listening on ").count() >= 2,
        "a second control plane started: {}",
        lab.hosts[0].log_text()
    );
    let [a, b] = [&lab.hosts[0], &lab.hosts[1]];
    for (from, to) in [(a, b), (b, a)] {
        let addr = to.http();
        let ready = from
            .station
            .namespace
            .enter(move || http::get(addr, "/health/ready"));
        assert_eq!(
            ready.map(|r| r.status),
            Some(200),
            "host {} reaches host {}",
            from.id,
            to.id
        );
    }
    for (node, router) in lab.nodes.iter().zip(&lab.routers) {
        for host in &lab.hosts {
            let addr = host.http();
            let ready = node
                .station
                .namespace
                .enter(move || http::get(addr, "/health/ready"));
            assert_eq!(
                ready.map(|r| r.status),
                Some(200),
                "node reaches {}",
                host.id
            );
        }
        // The node's private address is not routable from a host: only the router's is.
        let private = node.station.ip;
        let unroutable = a.station.namespace.enter(move || {
            std::net::TcpStream::connect_timeout(&(private, 22).into(), Duration::from_millis(300))
        });
        assert!(unroutable.is_err(), "a host reached a LAN address");
        assert_ne!(router.wan, node.station.ip);
    }
    let [n0, n1] = [&lab.nodes[0], &lab.nodes[1]];
    assert_ne!(n0.wg.interface, n1.wg.interface);
    assert_eq!(n0.wg.endpoint(&n1.wg), None, "no endpoint before an agent");
    // Traffic into the tunnel finds no endpoint: no handshake.
    let _ = n0
        .station
        .namespace
        .command("ping")
        .args(["-c", "1", "-W", "1"])
        .arg(n1.wg.address.to_string())
        .output();
    assert_eq!(n0.wg.latest_handshake(&n1.wg), 0);
    eprintln!("topology up and checked in {:?}", began.elapsed());
    lab.destroy();
}
