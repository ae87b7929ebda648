//! Issue 7's done-when: many relay hosts, each on an address of its own. Three `bosonserver
//! run` processes, each in its own network namespace on a simulated internet
//! (`boson_testsupport::netns`: its bridge is in a namespace of its own, so the host's firewall,
//! Docker's `FORWARD` policy `DROP` with br_netfilter for one, does not matter), share one
//! PostgreSQL and one Redis in the root namespace. The test checks that
//!
//! 1. every host sees the others in the relay host registry, with their real addresses;
//! 2. routing answers a node behind a symmetric NAT with relay routes on live hosts, explained,
//!    spread over the hosts of the right region by the power of two choices, and ICE answers
//!    name TURN servers that really are the hosts (an Allocate with the handed-out credential
//!    succeeds there);
//! 3. nodes on different hosts relay to each other over the mesh, both ways, in order, none
//!    lost;
//! 4. a host killed with SIGKILL (it cannot deregister) drops out of routing and ICE within
//!    the host timeout, and its node reconnects to another host and relays again; a host
//!    stopped with SIGTERM drops out of routing at once while it drains, keeps relaying for
//!    the nodes it still holds, and exits as soon as they have left.
//!
//! It needs root (namespaces, veth pairs, a bridge), `ip`, PostgreSQL's server binaries and
//! redis-server; without them it is skipped with a message, except when `CI` is set: then it
//! fails. Alone: `cargo test -p bosonserver --test multihost_netns`.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::NodeId;
use boson_testsupport::netns::Internet;
use common::services::{Postgres, Redis, installed, is_root, postgres_bin};
use common::turn::TurnClient;
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};
use serde_json::{Value, json};

const MESH_KEY: &str = "netns-mesh-key-0123456789abcdef-0123";
const JWT_SECRET: &str = "netns-jwt-secret-0123456789abcdef-0123";
const TURN_SECRET: &str = "netns-turn-secret";
/// Node ids of this test.
const TAG: u8 = 0x77;
/// How often each host publishes itself.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Silence after which the others drop a host.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// What a reader may take beyond the host timeout to stop naming a dead host: the test's poll
/// (100 ms), an HTTP round trip and scheduling on a busy machine.
const MARGIN: Duration = Duration::from_secs(1);
/// Long enough that a drain which waits for it (rather than for the nodes to leave) shows.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Every host has an address of its own, so all use the same ports.
const HTTP_PORT: u16 = 8080;
const TURN_PORT: u16 = 3478;
const RELAY_PORT: u16 = 8443;
/// Packets relayed each way across hosts before any host stops.
const PACKETS: u32 = 3000;
/// Packets sent before the receiver reads: the relay must keep their order.
const WINDOW: u32 = 50;

/// The clock: this test measures how long real processes on a real network take to notice
/// each other, so real time is its subject.
fn now() -> Instant {
    #[expect(
        clippy::disallowed_methods,
        reason = "the test times real processes against the host timeout"
    )]
    Instant::now()
}

/// What the test needs, or `None` (skip) when something is missing and `CI` is not set.
fn requirements() -> Option<PathBuf> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (for network namespaces)");
    }
    if !installed("ip") {
        missing.push("`ip` (iproute2)");
    }
    let bin = postgres_bin();
    if bin.is_none() {
        missing.push("PostgreSQL's server binaries");
    }
    if !installed("redis-server") {
        missing.push("redis-server");
    }
    if missing.is_empty() {
        return bin;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, and this test needs {}",
        missing.join(", ")
    );
    eprintln!("skipped: this test needs {}", missing.join(", "));
    None
}

/// One relay host: a `bosonserver run` in namespace `i` of the network.
struct Host {
    name: &'static str,
    id: String,
    region: &'static str,
    ip: Ipv4Addr,
    namespace: String,
    dir: tempfile::TempDir,
    server: Option<common::Running>,
}

impl Host {
    fn new(net: &mut Internet, i: usize, name: &'static str, region: &'static str) -> Self {
        let station = net.host(&format!("host{i}"));
        Self {
            name,
            id: format!("7e570000-0000-4000-8000-00000000000{i}"),
            region,
            ip: station.ip,
            namespace: station.namespace.name().to_owned(),
            dir: tempfile::tempdir().unwrap(),
            server: None,
        }
    }

    fn args(&self, database: &str, redis: Option<&str>) -> Vec<String> {
        let ip = self.ip;
        let mut args: Vec<String> = [
            "run",
            "--workers",
            "2",
            "--region",
            self.region,
            "--host-id",
            &self.id,
            "--database-url",
            database,
            "--mesh-key",
            MESH_KEY,
            // Plain ws:// relay URLs: this test is about routing between namespaces; the
            // mesh's TLS is tested in relay_mesh.rs.
            "--danger-plain-mesh",
            "--jwt-secret",
            JWT_SECRET,
            "--turn-static-secret",
            TURN_SECRET,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(redis) = redis {
            args.extend(["--redis-url".to_owned(), redis.to_owned()]);
        }
        args.extend([
            "--http-listen".to_owned(),
            format!("{ip}:{HTTP_PORT}"),
            "--turn-listen".to_owned(),
            format!("{ip}:{TURN_PORT}"),
            "--public-host".to_owned(),
            ip.to_string(),
            "--relay-listen".to_owned(),
            format!("{ip}:{RELAY_PORT}"),
            "--public-relay-url".to_owned(),
            self.relay_url(),
            "--public-quic-addr".to_owned(),
            format!("{ip}:{RELAY_PORT}"),
            "--host-heartbeat-interval".to_owned(),
            humantime::format_duration(HEARTBEAT).to_string(),
            "--host-timeout".to_owned(),
            humantime::format_duration(HOST_TIMEOUT).to_string(),
            "--drain-timeout".to_owned(),
            humantime::format_duration(DRAIN_TIMEOUT).to_string(),
        ]);
        args
    }

    fn base(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip)
    }

    fn relay(&self) -> SocketAddr {
        (self.ip, RELAY_PORT).into()
    }

    fn relay_url(&self) -> String {
        format!("ws://{}:{RELAY_PORT}/relay", self.ip)
    }

    fn turn_url(&self) -> String {
        format!("turn:{}:{TURN_PORT}?transport=udp", self.ip)
    }

    /// TURN over TCP listens on the UDP port's number by default (issue 14).
    fn turn_tcp_url(&self) -> String {
        format!("turn:{}:{TURN_PORT}?transport=tcp", self.ip)
    }

    fn server(&mut self) -> &mut common::Running {
        self.server.as_mut().unwrap()
    }
}

/// Starts every host at once (their migrations race on the one database, as in a rollout).
fn start_all(hosts: &mut [Host], database: &str, redis: Option<&str>) {
    std::thread::scope(|scope| {
        let starting: Vec<_> = hosts
            .iter()
            .map(|host| {
                let args = host.args(database, redis);
                let namespace = host.namespace.clone();
                let dir = host.dir.path().to_path_buf();
                scope.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let wrapper = ["ip", "netns", "exec", namespace.as_str()];
                    common::start_with(&wrapper, &dir, &args, true)
                })
            })
            .collect();
        for (host, thread) in hosts.iter_mut().zip(starting) {
            let server = thread.join().unwrap();
            // `ip netns exec` execs in place: signals to the child reach the server.
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.child.id()));
            assert_eq!(comm.unwrap().trim(), "bosonserver", "host {}", host.name);
            assert_eq!(
                server.base,
                host.base(),
                "host {} listens where told",
                host.name
            );
            host.server = Some(server);
        }
    });
}

fn node_id(i: u16) -> (String, NodeId) {
    let text = common::node_id(TAG, i);
    let id = text.parse().unwrap();
    (text, id)
}

/// Registers node `i` (symmetric NAT, in `region`) through `host`; returns its token.
fn register(http: &common::Http, host: &Host, i: u16, region: &str) -> String {
    let (text, _) = node_id(i);
    let mut body = common::node_body(&text, &common::wg_key(TAG, i));
    body["location"] = json!({"country": &region[..2], "region": region});
    http.register(&host.base(), &body)
}

/// A relay session of node `i` on `host`.
fn join(host: &Host, i: u16, token: &str) -> Client<TcpStream> {
    let mut client = ws_upgrade(connect(host.relay()), Auth::Bearer(token))
        .unwrap_or_else(|e| panic!("node {i} on host {}: {e}", host.name));
    assert_eq!(
        client.ready().unwrap(),
        node_id(i).1,
        "node {i} on host {}",
        host.name
    );
    client
}

/// The host ids `host`'s registry lists, with each record.
fn registry(http: &common::Http, host: &Host, token: &str) -> BTreeMap<String, Value> {
    let (status, body) = http.get_auth(&format!("{}/api/v1/hosts", host.base()), token);
    assert_eq!(status, 200, "{body}");
    let hosts = body["hosts"].as_array().unwrap();
    assert_eq!(body["count"], hosts.len(), "{body}");
    hosts
        .iter()
        .map(|record| {
            (
                record["hostId"].as_str().unwrap().to_owned(),
                record.clone(),
            )
        })
        .collect()
}

/// `client`'s routing request to `target`, from a symmetric NAT, answered by `host`.
fn route(http: &common::Http, host: &Host, token: &str, client: u16, target: u16) -> Value {
    let body = json!({
        "clientId": node_id(client).0,
        "targetNodeId": node_id(target).0,
        "clientNetworkInfo": {"ipv4": "192.168.7.7", "natType": "Symmetric"},
    });
    let (status, answer) = http.post(
        &format!("{}/api/v1/routing/request", host.base()),
        &body,
        Some(token),
    );
    assert_eq!(status, 200, "host {}: {answer}", host.name);
    assert_eq!(
        answer["selectedRoute"], answer["routes"][0],
        "host {}",
        host.name
    );
    answer
}

/// The route with `id` in a routing answer.
fn route_by_id<'a>(answer: &'a Value, id: &str) -> &'a Value {
    answer["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no route {id} in {answer}"))
}

/// Every host id a routing answer names.
fn hosts_named(answer: &Value) -> BTreeSet<String> {
    answer["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["relay"]["hostId"].as_str().map(str::to_owned))
        .collect()
}

/// Checks a routing answer between two symmetric NATs for `target`: relay routes only, each
/// explained, each on one of `live` at that host's real address. Returns the TURN route's
/// host.
fn check_relay_routes(answer: &Value, target: u16, live: &[&Host]) -> String {
    let routes = answer["routes"].as_array().unwrap();
    assert!(!routes.is_empty(), "{answer}");
    for route in routes {
        assert_eq!(route["type"], "relay", "symmetric to symmetric: {answer}");
        let explanation = route["explanation"].as_str().unwrap();
        assert!(
            explanation.contains("Symmetric and Symmetric NATs cannot punch through"),
            "{explanation}"
        );
        let hop = &route["relay"];
        let host = live
            .iter()
            .find(|h| hop["hostId"] == h.id.as_str())
            .unwrap_or_else(|| panic!("a route through a host that is not live: {route}"));
        let url = match route["transport"].as_str().unwrap() {
            "turn" => host.turn_url(),
            "ws" => host.relay_url(),
            "quic" => format!("quic://{}:{RELAY_PORT}", host.ip),
            other => panic!("transport {other}: {route}"),
        };
        assert_eq!(hop["url"], url, "{route}");
        assert_eq!(hop["region"], host.region, "{route}");
    }
    let turn = route_by_id(answer, &format!("relay:{}", node_id(target).0));
    turn["relay"]["hostId"].as_str().unwrap().to_owned()
}

/// `GET /api/v1/turn/ice` from `host` for the holder of `token`: the TURN URLs and the
/// credential.
fn ice(http: &common::Http, host: &Host, token: &str) -> (Vec<String>, String, String) {
    http.ice_turn(&host.base(), token)
}

/// Sends probes from `a` to `b` until one arrives (the hosts link and learn where the nodes
/// are within a few heartbeats), then throws away what else arrived on both.
fn wait_path(
    (a, a_id): (&mut Client<TcpStream>, NodeId),
    (b, b_id): (&mut Client<TcpStream>, NodeId),
    what: &str,
) {
    let short = Some(Duration::from_millis(100));
    b.stream().set_read_timeout(short).unwrap();
    let deadline = now() + Duration::from_secs(15);
    'probing: loop {
        assert!(now() < deadline, "{what}: nothing got through in 15 s");
        a.send(&b_id, b"probe").unwrap();
        while let Ok(message) = b.recv() {
            if let Received::Packet { src, .. } = message {
                assert_eq!(src, a_id, "{what}");
                break 'probing;
            }
        }
    }
    a.stream().set_read_timeout(short).unwrap();
    while a.recv().is_ok() {}
    while b.recv().is_ok() {}
    let long = Some(Duration::from_secs(10));
    a.stream().set_read_timeout(long).unwrap();
    b.stream().set_read_timeout(long).unwrap();
}

/// `count` numbered packets each way, [`WINDOW`] at a time: all arrive, in order.
fn exchange(
    (a, a_id): (&mut Client<TcpStream>, NodeId),
    (b, b_id): (&mut Client<TcpStream>, NodeId),
    count: u32,
    what: &str,
) {
    let packet = |i: u32| [&i.to_be_bytes()[..], &[0x5a; 200]].concat();
    let mut next = 0;
    while next < count {
        let end = (next + WINDOW).min(count);
        for i in next..end {
            a.queue_send(&b_id, &packet(i)).unwrap();
        }
        a.flush().unwrap();
        for i in next..end {
            assert_eq!(
                b.recv_packet().unwrap(),
                (a_id, packet(i)),
                "{what}: packet {i} there"
            );
        }
        for i in next..end {
            b.queue_send(&a_id, &packet(i)).unwrap();
        }
        b.flush().unwrap();
        for i in next..end {
            assert_eq!(
                a.recv_packet().unwrap(),
                (b_id, packet(i)),
                "{what}: packet {i} back"
            );
        }
        next = end;
    }
}

/// A packet from the WebSocket node `x` to the QUIC node `q` (probing until the hosts know
/// where `q` is), and one back.
fn quic_round_trip(
    q: &common::QuicNode,
    (x, x_id): (&mut Client<TcpStream>, NodeId),
    q_id: NodeId,
) {
    let deadline = now() + Duration::from_secs(15);
    loop {
        assert!(now() < deadline, "nothing reached the QUIC node in 15 s");
        x.send(&q_id, b"to quic").unwrap();
        let got = q.runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), q.conn.read_datagram()).await
        });
        if let Ok(Ok(datagram)) = got {
            assert_eq!(datagram[0], 0x02, "RECV");
            assert_eq!(&datagram[1..17], x_id.as_bytes());
            break;
        }
    }
    x.stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while x.recv().is_ok() {}
    x.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut datagram = vec![0x01];
    datagram.extend_from_slice(x_id.as_bytes());
    datagram.extend_from_slice(b"from quic");
    q.conn.send_datagram(datagram.into()).unwrap();
    assert_eq!(x.recv_packet().unwrap(), (q_id, b"from quic".to_vec()));
}

/// Reads relay messages until RECONNECT_HINT; panics on a close or after 5 s.
fn wait_reconnect_hint(client: &mut Client<TcpStream>, what: &str) {
    let deadline = now() + Duration::from_secs(5);
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    loop {
        assert!(now() < deadline, "{what}: no RECONNECT_HINT in 5 s");
        match client.recv() {
            Ok(Received::ReconnectHint) => return,
            Ok(Received::Closed(reason)) => {
                panic!("{what}: closed ({reason:?}) instead of a RECONNECT_HINT")
            }
            Ok(_) | Err(_) => {}
        }
    }
}

/// The sum of `bosonserver_dataplane_mesh_packets_total{direction}` on `host`.
fn mesh_packets(host: &Host, direction: &str) -> u64 {
    let metrics = common::Http::new().text(&format!("{}/metrics", host.base()));
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("bosonserver_dataplane_mesh_packets_total{")
                && l.contains(&format!("direction=\"{direction}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The registry and relay presence in Redis (with expiry), and in PostgreSQL.
#[test]
fn relay_hosts_share_postgres_and_redis() {
    scenario(0, true);
}

/// Without Redis, the registry and relay presence live in PostgreSQL alone.
#[test]
fn relay_hosts_share_postgres_alone() {
    scenario(1, false);
}

/// The whole story on network `k`, with or without a shared Redis.
fn scenario(k: u8, shared_redis: bool) {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut net = Internet::create(k);
    let gateway = IpAddr::V4(net.gateway());
    let postgres = Postgres::init_on(pg_bin, gateway, Some(&net.cidr()));
    let redis = shared_redis.then(|| {
        let mut redis = Redis::on(gateway);
        redis.start();
        redis
    });
    // Two hosts in one region, one in another.
    let mut hosts = [
        Host::new(&mut net, 0, "A", "US-CA"),
        Host::new(&mut net, 1, "B", "US-CA"),
        Host::new(&mut net, 2, "C", "DE-BE"),
    ];
    let redis_url = redis.as_ref().map(Redis::url);
    start_all(&mut hosts, &postgres.url(), redis_url.as_deref());
    let http = common::Http::new();
    let [a, b, c] = &mut hosts;

    // Nodes: X on A, Y on C (both in US-CA), Z on B (in DE-BE). Registered where they relay,
    // as a node does; their tokens work on every host (one JWT secret, one database).
    let (x, y, z) = (1, 2, 3);
    let token_x = register(&http, a, x, "US-CA");
    let token_y = register(&http, c, y, "US-CA");
    let token_z = register(&http, b, z, "DE-BE");
    let (x_id, y_id) = (node_id(x).1, node_id(y).1);

    // (1) Every host sees the three, with the addresses they advertise.
    let all: BTreeSet<String> = [&*a, &*b, &*c].iter().map(|h| h.id.clone()).collect();
    let deadline = now() + Duration::from_secs(10);
    for host in [&*a, &*b, &*c] {
        let records = loop {
            let records = registry(&http, host, &token_x);
            if records.keys().cloned().collect::<BTreeSet<_>>() == all {
                break records;
            }
            assert!(
                now() < deadline,
                "host {} sees {:?}",
                host.name,
                records.keys()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for other in [&*a, &*b, &*c] {
            let record = &records[&other.id];
            let addresses = &record["addresses"];
            let what = format!("host {} on {}", other.name, host.name);
            assert_eq!(record["region"], other.region, "{what}: {record}");
            assert_eq!(addresses["turnHost"], other.ip.to_string(), "{what}");
            assert_eq!(addresses["turnPort"], TURN_PORT, "{what}");
            assert_eq!(addresses["relayUrl"], other.relay_url(), "{what}");
            assert_eq!(
                addresses["quicAddr"],
                format!("{}:{RELAY_PORT}", other.ip),
                "{what}"
            );
            assert_eq!(record["draining"], false, "{what}: {record}");
        }
    }

    // (3) X on A and Y on C relay to each other over the mesh.
    let mut client_x = join(a, x, &token_x);
    let mut client_y = join(c, y, &token_y);
    let mut client_z = join(b, z, &token_z);
    // Q relays over QUIC, on B.
    let q = 5;
    let token_q = register(&http, b, q, "US-CA");
    let node_q = common::quic_node(b.relay(), &b.dir.path().join("data"), &token_q);

    // Live load: every host publishes its node relay sessions, WebSocket and QUIC, within a
    // load tick (1 s) and a heartbeat; every host reads the others'.
    let deadline = now() + Duration::from_secs(5);
    loop {
        let records = registry(&http, c, &token_x);
        let sessions: Vec<u64> = [&*a, &*b, &*c]
            .iter()
            .map(|h| records[&h.id]["load"]["sessions"].as_u64().unwrap())
            .collect();
        if sessions == [1, 2, 1] {
            break;
        }
        assert!(
            now() < deadline,
            "sessions of A, B, C as C reads them: {sessions:?}, not [1, 2, 1]"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    quic_round_trip(&node_q, (&mut client_x, x_id), node_id(q).1);

    wait_path(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        "X on A → Y on C",
    );
    wait_path(
        (&mut client_y, y_id),
        (&mut client_x, x_id),
        "Y on C → X on A",
    );
    let out_before = mesh_packets(a, "out");
    exchange(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        PACKETS,
        "X on A ↔ Y on C",
    );
    let crossed = mesh_packets(a, "out") - out_before;
    assert!(
        crossed >= u64::from(PACKETS),
        "host A forwarded {crossed} packets over the mesh"
    );

    // (2) Routing from X to Y (both US-CA, both behind symmetric NATs), asked of every host:
    // relay routes only. TURN goes to a US-CA host, drawn by two choices: spread over A and B,
    // never C (a detour to DE-BE). WebSocket and QUIC go to C, where Y holds its session.
    let mut turn_hosts: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..90 {
        let host = [&*a, &*b, &*c][round % 3];
        let answer = route(&http, host, &token_x, x, y);
        let turn = check_relay_routes(&answer, y, &[a, b, c]);
        let explanation = &route_by_id(&answer, &format!("relay:{}", node_id(y).0))["explanation"];
        assert!(
            explanation
                .as_str()
                .unwrap()
                .contains("power of two choices"),
            "{explanation}"
        );
        *turn_hosts.entry(turn).or_default() += 1;
        for transport in ["ws", "quic"] {
            let routed = route_by_id(&answer, &format!("relay-{transport}:{}", node_id(y).0));
            assert_eq!(routed["relay"]["hostId"], c.id.as_str(), "{routed}");
            assert!(
                routed["explanation"]
                    .as_str()
                    .unwrap()
                    .contains("the node holds its relay session on this host"),
                "{routed}"
            );
        }
    }
    // Each US-CA host wins at least a third of its draws in expectation (30 of 90); 10 is
    // far in the tail for a working balancer and unreachable for one that always picks one.
    assert_eq!(turn_hosts.get(&c.id), None, "{turn_hosts:?}");
    for host in [&*a, &*b] {
        let won = turn_hosts.get(&host.id).copied().unwrap_or(0);
        assert!(
            won >= 10,
            "host {} took {won} of 90 TURN routes: {turn_hosts:?}",
            host.name
        );
    }

    // ICE from every host: for X (US-CA) the two US-CA hosts; each URL a host's own address,
    // where an Allocate with the handed-out credential succeeds and relays from that address.
    for host in [&*a, &*b, &*c] {
        let (urls, username, password) = ice(&http, host, &token_x);
        let named: BTreeSet<&str> = urls.iter().map(String::as_str).collect();
        let want: BTreeSet<String> = [
            a.turn_url(),
            a.turn_tcp_url(),
            b.turn_url(),
            b.turn_tcp_url(),
        ]
        .into();
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(named, want, "ICE for X from host {}", host.name);
        for target in [&*a, &*b] {
            let server = SocketAddr::from((target.ip, TURN_PORT));
            let mut client =
                TurnClient::with_credential_from(server, &username, &password, gateway);
            let answer = client.allocate().unwrap();
            assert!(
                answer.is_success(),
                "Allocate on {} with {}'s credential: {:?}",
                target.name,
                host.name,
                answer.code
            );
            assert_eq!(
                answer.relayed().unwrap().ip(),
                IpAddr::V4(target.ip),
                "relayed address of {}",
                target.name
            );
            assert!(client.refresh(0).unwrap().is_success());
        }
    }
    // For Z (DE-BE), C is the nearest host: two choices pick it whenever they draw it.
    let mut c_named = 0;
    for round in 0..12 {
        let host = [&*a, &*b, &*c][round % 3];
        let (urls, _, _) = ice(&http, host, &token_z);
        for url in &urls {
            assert!(
                [&*a, &*b, &*c]
                    .iter()
                    .any(|h| h.turn_url() == *url || h.turn_tcp_url() == *url),
                "{url}"
            );
        }
        c_named += usize::from(urls.contains(&c.turn_url()));
    }
    assert!(
        c_named > 0,
        "ICE for a DE-BE node never named the DE-BE host"
    );

    // (4a) SIGKILL C: it cannot leave the registry; the others must stop naming it once its
    // record is older than the host timeout.
    let killed = now();
    c.server().signal("KILL");
    assert!(c.server().wait_exit(Duration::from_secs(5)).is_some());
    c.server = None;
    let survivors = [&*a, &*b];
    loop {
        let gone = survivors
            .iter()
            .all(|host| !registry(&http, host, &token_x).contains_key(&c.id));
        if gone {
            break;
        }
        assert!(
            killed.elapsed() <= HOST_TIMEOUT + MARGIN,
            "host C still listed {:?} after SIGKILL",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let noticed = killed.elapsed();
    for round in 0..30 {
        let host = survivors[round % 2];
        let answer = route(&http, host, &token_x, x, y);
        check_relay_routes(&answer, y, &survivors);
        assert!(!hosts_named(&answer).contains(&c.id), "{answer}");
        let (urls, _, _) = ice(&http, host, &token_z);
        assert!(!urls.is_empty(), "no TURN server for Z");
        assert!(!urls.contains(&c.turn_url()), "{urls:?}");
    }
    // Y's session died with C: it reconnects to B, and relaying with X on A resumes.
    drop(client_y);
    let mut client_y = join(b, y, &token_y);
    wait_path(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        "X on A → Y on B",
    );
    wait_path(
        (&mut client_y, y_id),
        (&mut client_x, x_id),
        "Y on B → X on A",
    );
    exchange(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        1000,
        "X on A ↔ Y on B",
    );

    // C comes back (same host id, same address): the others list it again within a
    // heartbeat, link to it afresh (their links to its previous process died with it), and
    // a node on it relays to one on A.
    let restarted = now();
    start_all(
        std::slice::from_mut(c),
        &postgres.url(),
        redis_url.as_deref(),
    );
    for host in [&*a, &*b] {
        while !registry(&http, host, &token_x).contains_key(&c.id) {
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "host {} does not list the restarted C",
                host.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rejoined = restarted.elapsed();
    let w = 4;
    let token_w = register(&http, c, w, "US-CA");
    let w_id = node_id(w).1;
    let mut client_w = join(c, w, &token_w);
    wait_path(
        (&mut client_x, x_id),
        (&mut client_w, w_id),
        "X on A → W on C",
    );
    wait_path(
        (&mut client_w, w_id),
        (&mut client_x, x_id),
        "W on C → X on A",
    );
    exchange(
        (&mut client_x, x_id),
        (&mut client_w, w_id),
        500,
        "X on A ↔ W on restarted C",
    );

    // (4b) SIGTERM B, which holds Y and Z: it drains. New routes leave it at once, while the
    // nodes it holds keep relaying until they move.
    let termed = now();
    b.server().signal("TERM");
    wait_reconnect_hint(&mut client_y, "Y on B");
    wait_reconnect_hint(&mut client_z, "Z on B");
    loop {
        let answer = route(&http, a, &token_x, x, y);
        let (urls, _, _) = ice(&http, a, &token_z);
        if !hosts_named(&answer).contains(&b.id) && !urls.contains(&b.turn_url()) {
            break;
        }
        assert!(
            termed.elapsed() <= HOST_TIMEOUT + MARGIN,
            "host B still routed to {:?} after SIGTERM: {answer}",
            termed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained_out = termed.elapsed();
    for round in 0..20 {
        let host = [&*a, &*c][round % 2];
        let answer = route(&http, host, &token_x, x, y);
        check_relay_routes(&answer, y, &[a, c]);
        let ws = route_by_id(&answer, &format!("relay-ws:{}", node_id(y).0));
        assert!(
            ws["explanation"]
                .as_str()
                .unwrap()
                .contains("the node's relay host is draining: one mesh hop"),
            "{ws}"
        );
        let (urls, _, _) = ice(&http, host, &token_z);
        let named: BTreeSet<String> = urls.into_iter().collect();
        assert_eq!(
            named,
            [
                a.turn_url(),
                a.turn_tcp_url(),
                c.turn_url(),
                c.turn_tcp_url()
            ]
            .into()
        );
    }
    assert!(
        b.server().child.try_wait().unwrap().is_none(),
        "B is still draining"
    );
    let records = registry(&http, a, &token_x);
    assert_eq!(records[&b.id]["draining"], true, "{:?}", records.keys());
    // Still relaying for the node it holds.
    client_y
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        200,
        "X on A ↔ Y on draining B",
    );
    // Y follows its route to X to A; Z leaves. B has nothing left and exits.
    let answer = route(&http, a, &token_y, y, x);
    let ws = route_by_id(&answer, &format!("relay-ws:{}", node_id(x).0));
    assert_eq!(ws["relay"]["url"], a.relay_url(), "{ws}");
    drop(client_y);
    drop(client_z);
    // Q, over QUIC, is still there: the drain waits for it too.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        b.server().child.try_wait().unwrap().is_none(),
        "B stopped while a QUIC node still relayed through it"
    );
    let left = now();
    node_q.conn.close(0u32.into(), b"moving");
    // Let the endpoint driver send the CONNECTION_CLOSE before the runtime goes.
    node_q
        .runtime
        .block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    drop(node_q);
    let status = b.server().wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "B did not exit 0 within 5 s of its last node leaving: {status:?}"
    );
    let exited = left.elapsed();
    b.server = None;
    let records = registry(&http, a, &token_x);
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        [a.id.clone(), c.id.clone()].into(),
        "B left the registry on exit"
    );
    let mut client_y = join(a, y, &token_y);
    wait_path((&mut client_x, x_id), (&mut client_y, y_id), "X → Y on A");
    exchange(
        (&mut client_x, x_id),
        (&mut client_y, y_id),
        200,
        "X ↔ Y on A",
    );

    eprintln!(
        "Redis: {shared_redis}. SIGKILL noticed after {noticed:?} (host timeout \
         {HOST_TIMEOUT:?}); restarted host listed again after {rejoined:?}; SIGTERM routed \
         away after {drained_out:?}; drained host exited {exited:?} after its last node; \
         {:?} in all",
        began.elapsed()
    );

    drop((client_x, client_y, client_w));
    drop(hosts);
    drop((redis, postgres));
    let leftovers = net.destroy();
    assert!(leftovers.is_empty(), "still there: {leftovers:?}");
}
