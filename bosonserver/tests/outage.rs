//! PostgreSQL and Redis go away under traffic, and come back: the real binary keeps relaying
//! (TURN allocations and relay sessions need neither), stays idle instead of spinning, answers
//! the API with 503 and `Retry-After`, and recovers by itself with nothing lost. A Redis that is
//! down at start does not stop the start either.
//!
//! The test runs its own PostgreSQL cluster and redis-server, so it can stop them. It needs
//! PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`) and `redis-server`, which
//! `scripts/test.sh` installs; without them it is skipped with a message, except when `CI` is
//! set: then it fails.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::services::{Postgres, Redis, installed, postgres_bin};
use common::turn::{self, TurnClient};
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};
use reqwest::Method;
use serde_json::Value;

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const SECRET: &str = "outage-turn-secret";
const JWT_SECRET: &str = "outage-jwt-secret-0123456789abcdef-0123";
const CHANNEL: u16 = 0x4000;
/// Node ids of this test.
const TAG: u8 = 0x0e;

/// The services, or `None` (skip) when they are not installed and `CI` is not set.
fn services() -> Option<PathBuf> {
    let bin = postgres_bin();
    let redis = installed("redis-server");
    if bin.is_none() || !redis {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL and redis-server are required when CI is set (scripts/test.sh installs them)"
        );
        eprintln!("skipped: PostgreSQL's server binaries or redis-server are not installed");
        return None;
    }
    bin
}

fn start_server(dir: &Path, postgres: &Postgres, redis: &Redis, ports: &str) -> common::Running {
    common::start_local(
        dir,
        &[
            "--relay-ports",
            ports,
            "--danger-allow-loopback-peers",
            "--turn-static-secret",
            SECRET,
            "--jwt-secret",
            JWT_SECRET,
            "--database-url",
            &postgres.url(),
            "--redis-url",
            &redis.url(),
            "--drain-timeout",
            "2s",
        ],
        true,
    )
}

/// Relays packets both ways through a TURN allocation and between two relay sessions, over
/// and over, on its own thread; counts round trips that worked and that did not.
struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Traffic {
    fn start(server: &common::Running, http: &common::Http) -> Self {
        let peer = turn::peer();
        let mut client = TurnClient::new(server.turn.unwrap(), SECRET, "traffic", turn::unix_now());
        let answer = client.allocate().unwrap();
        assert!(answer.is_success(), "{:?}", answer.code);
        let relayed = answer.relayed().unwrap();
        let peer_addr = peer.local_addr().unwrap();
        assert!(client.create_permission(peer_addr).unwrap().is_success());
        assert!(
            client
                .channel_bind(CHANNEL, peer_addr)
                .unwrap()
                .is_success()
        );
        let (a, node_a) = session(server, http, 100);
        let (b, node_b) = session(server, http, 101);
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, failed2, stop2) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let (mut a, mut b) = (a, b);
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let worked = turn_round_trip(&mut client, &peer, relayed, i)
                    && ws_round_trip(&mut a, node_a, &mut b, node_b, i);
                if worked {
                    ok2.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed2.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Leave, so a drain has nothing to wait for.
            assert!(client.refresh(0).unwrap().is_success());
        });
        Self {
            ok,
            failed,
            stop,
            thread,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more round trips have worked.
    fn wait_for(&self, n: u64) {
        let target = self.ok() + n;
        for _ in 0..1000 {
            if self.ok() >= target {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "traffic stalled: {} worked, {} failed",
            self.ok(),
            self.failed()
        );
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = (Arc::clone(&self.ok), Arc::clone(&self.failed));
        self.thread.join().unwrap();
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }
}

fn turn_round_trip(client: &mut TurnClient, peer: &UdpSocket, relayed: SocketAddr, i: u64) -> bool {
    let out = i.to_be_bytes();
    if client.send_channel_data(CHANNEL, &out).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match peer.recv_from(&mut buf) {
        Ok((8, from)) if buf[..8] == out && from == relayed => {}
        _ => return false,
    }
    let back = (!i).to_be_bytes();
    if peer.send_to(&back, relayed).is_err() {
        return false;
    }
    client.recv_channel_data() == Some((CHANNEL, back.to_vec()))
}

fn ws_round_trip(
    a: &mut Client<TcpStream>,
    node_a: NodeId,
    b: &mut Client<TcpStream>,
    node_b: NodeId,
    i: u64,
) -> bool {
    let packet = i.to_le_bytes();
    a.send(&node_b, &packet).is_ok()
        && b.recv_packet().unwrap() == (node_a, packet.to_vec())
        && b.send(&node_a, &packet).is_ok()
        && a.recv_packet().unwrap() == (node_b, packet.to_vec())
}

/// A relay session of node `i`, registered now.
fn session(server: &common::Running, http: &common::Http, i: u16) -> (Client<TcpStream>, NodeId) {
    let id = common::node_id(TAG, i);
    let token = http.register(
        &server.base,
        &common::node_body(&id, &common::wg_key(TAG, i)),
    );
    let mut client = ws_upgrade(connect(server.relay.unwrap()), Auth::Bearer(&token)).unwrap();
    let node: NodeId = id.parse().unwrap();
    assert_eq!(client.ready().unwrap(), node);
    (client, node)
}

/// Asserts a 503 with `Retry-After` and the API's JSON error.
fn assert_unavailable(answer: &(u16, Option<String>, Value), what: &str) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, 503, "{what}: {body}");
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u32>().is_ok()),
        "{what}: Retry-After {retry_after:?}"
    );
    assert!(body["error"]["code"].is_string(), "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

fn wait_ready(http: &common::Http, base: &str) {
    for _ in 0..300 {
        let (status, _, _) = http.call(GET, &format!("{base}/health/ready"), None, None);
        if status == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not ready 30 s after PostgreSQL and Redis came back");
}

#[test]
fn postgres_and_redis_outage_under_traffic() {
    let Some(bin) = services() else {
        return;
    };
    let postgres = Postgres::init(bin);
    let mut redis = Redis::new();
    redis.start();
    let dir = tempfile::tempdir().unwrap();
    let ports = turn::relay_ports(64);
    let mut server = start_server(dir.path(), &postgres, &redis, &ports);
    let base = server.base.clone();
    let http = common::Http::new();

    // Written before the outage: a node and its token.
    let kept = common::node_id(TAG, 1);
    let kept_token = http.register(&base, &common::node_body(&kept, &common::wg_key(TAG, 1)));
    let kept_url = format!("{base}/api/v1/nodes/{kept}");
    let heartbeat_url = format!("{kept_url}/heartbeat");
    let heartbeat = serde_json::json!({
        "metrics": {"latency": 5.0, "cpuUsage": 10, "activeConnections": 1},
        "status": "online"
    });

    let traffic = Traffic::start(&server, &http);
    traffic.wait_for(20);

    postgres.stop();
    redis.stop();

    // The API: 503 with Retry-After and a JSON error, for every kind of request.
    let ready = http.call(GET, &format!("{base}/health/ready"), None, None);
    assert_unavailable(&ready, "ready");
    assert!(
        ready.2["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{}",
        ready.2
    );
    assert!(
        ready.2["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{}",
        ready.2
    );
    let new_node = common::node_body(&common::node_id(TAG, 2), &common::wg_key(TAG, 2));
    let register_url = format!("{base}/api/v1/nodes/register");
    let register = http.call(POST, &register_url, None, Some(&new_node));
    assert_unavailable(&register, "register");
    assert_eq!(register.2["error"]["code"], "unavailable", "{}", register.2);
    assert_unavailable(
        &http.call(GET, &kept_url, Some(&kept_token), None),
        "get node",
    );
    assert_unavailable(
        &http.call(POST, &heartbeat_url, Some(&kept_token), Some(&heartbeat)),
        "heartbeat",
    );
    assert_eq!(
        http.call(GET, &format!("{base}/health/live"), None, None).0,
        200
    );

    // Forwarding goes on, and the process idles: CPU over 3 s (traffic included) far below
    // the one core a retry loop without backoff would burn.
    let ticks_per_second = common::clock_ticks_per_second();
    let before = server.resources();
    let outage_ok = traffic.ok();
    std::thread::sleep(Duration::from_secs(3));
    let after = server.resources();
    let used = after.cpu_ticks - before.cpu_ticks;
    assert!(
        used * 4 < 3 * ticks_per_second,
        "{used} ticks of CPU in 3 s: a quarter of a core or more while PostgreSQL and Redis are down"
    );
    assert!(
        traffic.ok() >= outage_ok + 50,
        "relaying stalled during the outage: {} round trips in 3 s",
        traffic.ok() - outage_ok
    );
    assert_eq!(traffic.failed(), 0, "no packet lost");

    // They come back: the server recovers by itself.
    postgres.start();
    redis.start();
    wait_ready(&http, &base);
    let register = http.call(
        POST,
        &register_url,
        None,
        Some(&http.prove(&base, &new_node)),
    );
    assert_eq!(register.0, 201, "{}", register.2);
    let (status, _, node) = http.call(GET, &kept_url, Some(&kept_token), None);
    assert_eq!(status, 200, "{node}");
    assert_eq!(
        node["nodeId"], kept,
        "the node written before the outage is there"
    );
    let (status, _, body) = http.call(POST, &heartbeat_url, Some(&kept_token), Some(&heartbeat));
    assert_eq!(status, 200, "{body}");
    traffic.wait_for(20);
    let (ok, failed) = traffic.finish();
    assert_eq!(failed, 0, "{ok} round trips worked, {failed} did not");

    // A restart while Redis is down: the server starts, not ready, and recovers when Redis
    // comes; the database still has everything.
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).unwrap().success());
    redis.stop();
    let server = start_server(dir.path(), &postgres, &redis, &ports);
    let base = server.base.clone();
    let ready = http.call(GET, &format!("{base}/health/ready"), None, None);
    assert_unavailable(&ready, "ready without Redis");
    assert!(
        ready.2["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{}",
        ready.2
    );
    assert_eq!(ready.2["checks"]["database"], "ok", "{}", ready.2);
    redis.start();
    wait_ready(&http, &base);
    let kept_url = format!("{base}/api/v1/nodes/{kept}");
    let (status, _, node) = http.call(GET, &kept_url, Some(&kept_token), None);
    assert_eq!(status, 200, "{node}");
    let another = common::node_body(&common::node_id(TAG, 3), &common::wg_key(TAG, 3));
    let register_url = format!("{base}/api/v1/nodes/register");
    let another = http.prove(&base, &another);
    assert_eq!(http.call(POST, &register_url, None, Some(&another)).0, 201);
}
