//! boson-node end to end (issue 13 §3): real wireguard-go tunnels through real relay hosts,
//! behind real NAT, in network namespaces.
//!
//! ```text
//!   root namespace: this test, PostgreSQL and Redis (on the internet's gateway address)
//!   internet (a bridge in a namespace of its own), 10.231.S.0/24
//!     ├── relay host A (bosonserver)  ┐ one database, one Redis, one mesh key
//!     ├── relay host B (bosonserver)  ┘
//!     ├── home router 0 (NAT) ── node 0: wireguard-go (10.99.0.1) + boson-node
//!     └── home router 1 (NAT) ── node 1: wireguard-go (10.99.0.2) + boson-node
//! ```
//!
//! Each node's wireguard-go has the other as its peer (keys and allowed IPs set by the test,
//! as an operator would) and no endpoint: the agent (`boson-node run --wg-interface`) finds
//! the way and sets it. Every case runs with the route forced and with `--route auto`. One
//! topology per test function, shared by its cases.
//!
//! Needs root, `ip`, `iptables`, `wireguard-go`, `wg`, `ping`, `iperf3`, PostgreSQL's server
//! binaries and redis-server (skipped without, failing when `CI` is set;
//! `scripts/services.sh` installs them), and the `bosonserver` binary next to this test's
//! (`cargo test --workspace` builds it). Alone:
//! `cargo build -p bosonserver && cargo test -p boson-node --test e2e_netns`.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use boson_node::failover::FAILOVER_BOUND;
use boson_testsupport::clock::{now, wait_until};
use boson_testsupport::http;
use boson_testsupport::netns::{Internet, Nat, Router, Station};
use boson_testsupport::relay::{RelayHost, Settings};
use boson_testsupport::require;
use boson_testsupport::services::{Postgres, Redis, postgres_bin};
use boson_testsupport::wireguard::WireGuard;

/// WireGuard's port on every node (each is behind its own NAT).
const WG_PORT: u16 = 51820;
/// The agent's metrics, on loopback in its node's namespace.
const METRICS: &str = "127.0.0.1:9100";
/// How long a dead relay host may cost the tunnel: the agent's stated bound
/// ([`FAILOVER_BOUND`], README "Relay host choice and failover": a silent host is left
/// within 5 s, a new session on another host follows within 8 s of the death) plus 2 s for
/// the relay hosts to learn where the node now is and for a busy machine.
const KILL_BOUND: Duration = Duration::from_secs(FAILOVER_BOUND.as_secs() + 2);
/// How long a draining relay host may cost it: the agent moves at once on RECONNECT_HINT.
const DRAIN_BOUND: Duration = Duration::from_secs(2);
/// The relay routes `--route` can force (the direct route is not a relay).
const AGENT_ROUTES: &[&str] = &["ws", "quic", "turn"];
/// Pings per second during a flood.
const FLOOD_INTERVAL: Duration = Duration::from_millis(20);

/// The programs this test runs.
const PROGRAMS: &[&str] = &[
    "ip",
    "iptables",
    "sysctl",
    "wireguard-go",
    "wg",
    "ping",
    "iperf3",
    "redis-server",
];

/// Variables of the caller's environment that would change the agent's settings.
const AGENT_VARS: &[&str] = &[
    "BOSON_NODE_SERVER",
    "BOSON_NODE_WG_INTERFACE",
    "BOSON_NODE_WG_LISTEN_PORT",
    "BOSON_NODE_WG_PRIVATE_KEY_FILE",
    "BOSON_NODE_NODE_ID",
    "BOSON_NODE_STATE_DIR",
    "BOSON_NODE_PEER",
    "BOSON_NODE_ROUTE",
    "BOSON_NODE_METRICS_LISTEN",
    "BOSON_NODE_CA_FILE",
    "BOSON_NODE_QUIC_SERVER_NAME",
    "RUST_LOG",
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

/// The `bosonserver` binary, next to this test's target directory.
fn bosonserver_binary() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_boson-node"));
    let binary = agent.with_file_name("bosonserver");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build -p bosonserver`; `cargo test --workspace` \
         does)",
        binary.display()
    );
    binary
}

/// A running `boson-node run`, killed on drop.
struct Agent {
    child: Option<Child>,
    state: tempfile::TempDir,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGTERM, and its exit status within 10 s.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let mut status = None;
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node: a namespace behind a home router, running wireguard-go and, in a case, the agent.
struct Node {
    id: String,
    station: Station,
    wg: WireGuard,
    agent: Option<Agent>,
}

/// One line of `boson-node status`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerLine {
    peer: String,
    route: String,
    state: String,
}

impl Node {
    /// `boson-node status` for this node: its exit code and lines.
    fn status(&self) -> (i32, Vec<PeerLine>) {
        let agent = self.agent.as_ref().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_boson-node"))
            .args(["status", "--state-dir"])
            .arg(agent.state.path())
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.len() == 6).then(|| PeerLine {
                    peer: fields[0].to_owned(),
                    route: fields[1].to_owned(),
                    state: fields[2].to_owned(),
                })
            })
            .collect();
        (output.status.code().unwrap_or(-1), lines)
    }

    /// The agent's Prometheus text.
    fn metrics(&self) -> String {
        let addr: SocketAddr = METRICS.parse().unwrap();
        self.station
            .namespace
            .enter(move || http::get(addr, "/metrics"))
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// Pings the other node's tunnel address `count` times, `interval` apart; the output. An
    /// answer may take up to 5 s (a busy machine, debug builds): late is not lost.
    fn ping(&self, peer: Ipv4Addr, count: u32, interval: Duration) -> String {
        let output = self
            .station
            .namespace
            .command("ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                &format!("{:.3}", interval.as_secs_f64()),
                "-W",
                "5",
                "-q",
                &peer.to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Node {
    /// Pings `count` times with `size` bytes of ICMP payload, 10 ms apart, waiting up to 5 s
    /// for an answer; the output.
    fn ping_sized(&self, peer: Ipv4Addr, count: u32, size: u16) -> String {
        let output = self
            .station
            .namespace
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.01", "-W", "5", "-q"])
            .args(["-s", &size.to_string(), "-M", "do", &peer.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// `(transmitted, received)` from ping's summary.
fn ping_counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in {output}"));
    let numbers: Vec<u32> = line
        .split([',', ' '])
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// The whole topology. Fields drop in order: nodes (agents, wireguard-go), hosts, then the
/// services, then the namespaces.
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
            binary: bosonserver_binary(),
            database_url: postgres.url(),
            redis_url: Some(redis.url()),
            region: "US-CA".to_owned(),
            workers: 1,
            host_heartbeat: Duration::from_millis(500),
            host_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            split,
            // TURN relays between the hosts' own addresses, private ones, which the built-in
            // peer filter refuses unless allowed.
            extra: vec!["--allowed-peers".to_owned(), net.cidr()],
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
            nodes.push(Node {
                id: format!("7e570000-0000-4000-8000-0000000000a{i}"),
                station,
                wg,
                agent: None,
            });
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

    /// Starts both agents with `route`, each given both hosts (A first).
    fn start_agents(&mut self, route: &str) {
        let servers: Vec<String> = self.hosts.iter().map(RelayHost::base).collect();
        // Each host made its own self-signed relay certificate (QUIC needs TLS): trust both.
        let ca: String = self
            .hosts
            .iter()
            .map(|h| std::fs::read_to_string(h.dir().join("data/relay-cert.pem")).unwrap())
            .collect();
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.wg.keys.public))
            .collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            assert!(node.agent.is_none());
            let state = tempfile::tempdir().unwrap();
            let log = std::fs::File::create(state.path().join("agent.log")).unwrap();
            let ca_file = state.path().join("relays.pem");
            std::fs::write(&ca_file, &ca).unwrap();
            let mut command = node
                .station
                .namespace
                .command(env!("CARGO_BIN_EXE_boson-node"));
            command.arg("run");
            for server in &servers {
                command.args(["--server", server]);
            }
            command
                .args(["--wg-interface", &node.wg.interface])
                .args(["--node-id", &node.id])
                .arg("--state-dir")
                .arg(state.path())
                .args(["--peer", &peers[1 - i]])
                .args(["--route", route])
                .args(["--metrics-listen", METRICS])
                .arg("--ca-file")
                .arg(&ca_file)
                // The hosts' self-signed development certificates name only localhost.
                .args(["--quic-server-name", "localhost"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            for var in AGENT_VARS {
                command.env_remove(var);
            }
            command.env("RUST_LOG", "info").env("NO_COLOR", "1");
            node.agent = Some(Agent {
                child: Some(command.spawn().unwrap()),
                state,
            });
        }
    }

    /// Pings across the tunnel (WireGuard sends nothing until there is traffic) until a
    /// ping answers and both agents report their peer `up` on a route; returns the routes.
    /// Panics with the agents' logs after 30 s.
    fn wait_tunnel(&self) -> [String; 2] {
        let deadline = now() + Duration::from_secs(30);
        let peer = self.nodes[1].wg.address;
        loop {
            let answered = ping_counts(&self.nodes[0].ping(peer, 1, Duration::from_millis(200))).1;
            let lines: Vec<(i32, Vec<PeerLine>)> = self.nodes.iter().map(Node::status).collect();
            let up = lines
                .iter()
                .all(|(code, l)| *code == 0 && l.len() == 1 && l[0].state == "up");
            if up && answered == 1 {
                return [lines[0].1[0].route.clone(), lines[1].1[0].route.clone()];
            }
            assert!(
                now() < deadline,
                "no tunnel in 30 s: {lines:?}\n{}",
                self.agent_logs()
            );
        }
    }

    /// Stops both agents with SIGTERM: each exits 0 (it deregisters first).
    fn stop_agents(&mut self) {
        for node in &mut self.nodes {
            let mut agent = node.agent.take().unwrap();
            let status = agent.stop();
            assert!(
                status.is_some_and(|s| s.success()),
                "agent {} did not exit 0 on SIGTERM: {status:?}\n{}",
                node.id,
                agent.log()
            );
        }
    }

    /// Each agent's log and metrics, what `wg` shows of its node, and the relay hosts'
    /// sessions and drops.
    fn agent_logs(&self) -> String {
        let hosts: String = self
            .hosts
            .iter()
            .map(|h| {
                let lines: String = h
                    .metrics()
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        !l.starts_with('#')
                            && (l.contains("drops") || l.contains("sessions") || l.contains("mesh"))
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                format!("--- relay host {}:\n{lines}", h.id)
            })
            .collect();
        hosts
            + &self
                .nodes
                .iter()
                .filter_map(|n| {
                    let metrics: String = n
                        .metrics()
                        .lines()
                        .filter(|l| !l.starts_with('#'))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let wg = n.wg.wg(&["show", &n.wg.interface]);
                    Some(format!(
                        "--- agent {}:\n{}--- its metrics:\n{metrics}--- wg:\n{wg}",
                        n.id,
                        n.agent.as_ref()?.log()
                    ))
                })
                .collect::<String>()
    }

    /// The hosts' node relay sessions (WebSocket and QUIC), by host.
    fn relay_sessions(&self) -> Vec<f64> {
        self.hosts
            .iter()
            .map(|h| {
                h.metrics().map_or(0.0, |m| {
                    http::metric_sum(&m, "bosonserver_dataplane_ws_sessions", &[])
                        + http::metric_sum(&m, "bosonserver_dataplane_quic_sessions", &[])
                })
            })
            .collect()
    }

    /// Checks that the relay hosts carry both nodes on `route`: two relay sessions (WebSocket
    /// or QUIC), or at least two TURN allocations.
    fn check_carrier(&self, route: &str) {
        if route == "turn" {
            let allocations: f64 = self
                .hosts
                .iter()
                .filter_map(RelayHost::metrics)
                .map(|m| http::metric_sum(&m, "bosonserver_dataplane_turn_allocations", &[]))
                .sum();
            assert!(allocations >= 2.0, "TURN allocations: {allocations}");
        } else {
            let sessions = self.relay_sessions();
            assert_eq!(sessions.iter().sum::<f64>(), 2.0, "{route}: {sessions:?}");
        }
    }

    /// Every packet the relay hosts have relayed so far, on any transport: TURN, WebSocket,
    /// QUIC and the mesh between hosts.
    fn relayed_packets(&self) -> f64 {
        self.hosts
            .iter()
            .filter_map(RelayHost::metrics)
            .map(|m| {
                [
                    "bosonserver_dataplane_relayed_packets_total",
                    "bosonserver_dataplane_ws_packets_relayed_total",
                    "bosonserver_dataplane_quic_packets_total",
                    "bosonserver_dataplane_mesh_packets_total",
                ]
                .iter()
                .map(|metric| http::metric_sum(&m, metric, &[]))
                .sum::<f64>()
            })
            .sum()
    }

    /// Pings 100 times across the tunnel: all answer.
    fn ping_100(&self, what: &str) {
        let out = self.nodes[0].ping(self.nodes[1].wg.address, 100, Duration::from_millis(10));
        assert_eq!(ping_counts(&out), (100, 100), "{what}: {out}");
    }

    /// TCP throughput across the tunnel from node 0 to node 1 (iperf3, 3 s), in Mbit/s.
    fn iperf(&self) -> f64 {
        let server_ip = self.nodes[1].wg.address.to_string();
        let mut server = self.nodes[1]
            .station
            .namespace
            .spawn("iperf3", &["-s", "-B", &server_ip, "-p", "5201"]);
        let mut result = None;
        let ran = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let output = self.nodes[0]
                .station
                .namespace
                .command("iperf3")
                .args(["-c", &server_ip, "-p", "5201", "-t", "3", "-J"])
                .output()
                .unwrap();
            if !output.status.success() {
                return false;
            }
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            result = json["end"]["sum_received"]["bits_per_second"].as_f64();
            result.is_some()
        });
        let _ = server.kill();
        let _ = server.wait();
        assert!(ran, "iperf3 did not run across the tunnel");
        result.unwrap() / 1e6
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
        drop(self.routers);
        let leftovers = self.net.destroy();
        assert!(leftovers.is_empty(), "still there: {leftovers:?}");
        for socket in sockets {
            assert!(!socket.exists(), "{} is still there", socket.display());
        }
    }
}

/// A ping flood from node 0 to node 1 in the background: `count` pings, [`FLOOD_INTERVAL`]
/// apart, each reply's sequence number reported as it comes.
struct Flood {
    child: Child,
    replies: mpsc::Receiver<u32>,
    count: u32,
    first: Option<u32>,
}

impl Flood {
    fn start(node: &Node, peer: Ipv4Addr, count: u32) -> Self {
        let mut child = node
            .station
            .namespace
            .command("ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                &format!("{:.3}", FLOOD_INTERVAL.as_secs_f64()),
                "-W",
                "1",
                &peer.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|s| s.parse().ok())
                {
                    let _ = tx.send(seq);
                }
            }
        });
        Self {
            child,
            replies,
            count,
            first: None,
        }
    }

    /// Waits for the first reply.
    fn wait_first(&mut self) {
        let first = self
            .replies
            .recv_timeout(Duration::from_secs(10))
            .expect("the flood got no reply in 10 s");
        self.first = Some(first);
    }

    /// Waits for the flood to end: (replies, the longest run of pings without a reply after
    /// the first reply, up to the end of the flood).
    fn finish(mut self) -> (u32, Duration) {
        let _ = self.child.wait();
        let mut seqs: Vec<u32> = self.replies.try_iter().chain(self.first).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut longest = 0;
        let first = self.first.expect("wait_first first");
        let mut previous = first;
        for seq in seqs
            .iter()
            .copied()
            .filter(|s| *s > first)
            .chain([self.count + 1])
        {
            longest = longest.max(seq - previous - 1);
            previous = seq;
        }
        (u32::try_from(seqs.len()).unwrap(), FLOOD_INTERVAL * longest)
    }
}

/// Symmetric NAT to symmetric NAT: no direct route, so a relay carries the tunnel. With
/// each route forced and with `--route auto`: the agents report the route up, 100 pings of
/// 100 answer, 20 full-size (1420-byte) packets of 20 too, iperf3 measures TCP across the
/// tunnel, and SIGTERM stops each agent with exit 0. This one: the WebSocket relay, TURN and
/// auto.
#[test]
fn symmetric_to_symmetric_through_a_relay() {
    symmetric_to_symmetric(0, &["ws", "turn", "auto"]);
}

/// As [`symmetric_to_symmetric_through_a_relay`], over the QUIC relay: wireguard-go's
/// full-size packets (1 452 bytes at MTU 1 420) do not fit one QUIC datagram, so the agents
/// fragment them (`node/src/fragment.rs`); the full-size pings and iperf3's TCP prove it.
#[test]
fn symmetric_to_symmetric_over_quic() {
    symmetric_to_symmetric(4, &["quic"]);
}

/// The symmetric-to-symmetric cases on internet `k`, for each of `routes`.
fn symmetric_to_symmetric(k: u8, routes: &[&str]) {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut lab = Lab::new(k, pg_bin, [Nat::Symmetric, Nat::Symmetric], false);
    let mut report = Vec::new();
    for &route in routes {
        lab.start_agents(route);
        let routes = lab.wait_tunnel();
        for chosen in &routes {
            if route == "auto" {
                assert!(
                    ["ws", "quic", "turn"].contains(&chosen.as_str()),
                    "auto between two symmetric NATs chose {chosen}"
                );
            } else {
                assert_eq!(chosen, route, "forced");
            }
        }
        let relayed = lab.relayed_packets();
        lab.ping_100(&format!("--route {route}"));
        // Every ping and its answer went through the relay hosts (the counters the direct
        // case reads, so that case cannot pass on counters that never move).
        let through = lab.relayed_packets() - relayed;
        assert!(
            through >= 200.0,
            "--route {route}: relays counted {through}"
        );
        // Node 0's WireGuard goes to its agent's socket, not to anything it found itself.
        let endpoint = lab.nodes[0].wg.endpoint(&lab.nodes[1].wg).unwrap();
        assert!(endpoint.ip().is_loopback(), "{endpoint}");
        lab.check_carrier(&routes[0]);
        // Full-size packets too: wireguard-go's MTU is 1420, so a 1392-byte ping fills it.
        let out = lab.nodes[0].ping_sized(lab.nodes[1].wg.address, 20, 1392);
        assert_eq!(
            ping_counts(&out),
            (20, 20),
            "--route {route}: full-size packets across the tunnel: {out}\n{}",
            lab.agent_logs()
        );
        let mbits = lab.iperf();
        assert!(mbits > 0.0, "--route {route}: no TCP across the tunnel");
        report.push(format!(
            "--route {route} ({}): {mbits:.0} Mbit/s",
            routes[0]
        ));
        lab.stop_agents();
    }
    eprintln!("{} in {:?}", report.join("; "), began.elapsed());
    lab.destroy();
}

/// Endpoint-independent NAT to endpoint-independent NAT: the agents punch through, with
/// `--route direct` and with `--route auto` (which must choose direct); 100 pings of 100
/// answer and the relay hosts carry none of it (their TURN, WebSocket, QUIC and mesh packet
/// counters do not move).
#[test]
fn endpoint_independent_to_endpoint_independent_goes_direct() {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut lab = Lab::new(
        5,
        pg_bin,
        [Nat::EndpointIndependent, Nat::EndpointIndependent],
        false,
    );
    for route in ["direct", "auto"] {
        lab.start_agents(route);
        let routes = lab.wait_tunnel();
        assert_eq!(routes, ["direct", "direct"], "--route {route}");
        let relayed = lab.relayed_packets();
        lab.ping_100(&format!("--route {route}"));
        assert_eq!(
            lab.relayed_packets(),
            relayed,
            "--route {route}: the relay hosts carried packets of a direct tunnel"
        );
        // Each node's WireGuard sends to its agent's socket, which sends to the peer's router.
        let endpoint = lab.nodes[0].wg.endpoint(&lab.nodes[1].wg).unwrap();
        assert!(endpoint.ip().is_loopback(), "{endpoint}");
        lab.stop_agents();
    }
    eprintln!("direct both ways in {:?}", began.elapsed());
    lab.destroy();
}

/// How a relay host goes away in [`relay_host_killed_or_drained_mid_flood`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// SIGKILL: the kernel resets its connections, so the agents see them close.
    Kill,
    /// Its namespace drops every packet, then SIGKILL: as a machine that lost power or
    /// network, nothing answers and nothing says so; only the keepalives can tell.
    Silent,
    /// SIGTERM: it drains (RECONNECT_HINT).
    Drain,
}

/// A relay host in use dies during a ping flood, killed (SIGKILL) or silently (its packets
/// dropped, then killed): the tunnel recovers on the other host within [`KILL_BOUND`]; in
/// another run the host drains (SIGTERM): the tunnel moves within [`DRAIN_BOUND`] and the
/// host exits 0 once its nodes have left. The pings lost are counted and reported.
///
/// It used to fail in the second run: an agent whose registering control plane was the
/// killed host could not deregister on SIGTERM, so its node id stayed active and the next
/// agent with that id was refused (409 `node_active`) until the server timed it out. The
/// agent now deregisters at the other control planes when its own does not answer.
#[test]
fn relay_host_killed_or_drained_mid_flood() {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut lab = Lab::new(1, pg_bin, [Nat::Symmetric, Nat::Symmetric], false);
    let mut report = Vec::new();
    for (route, death) in [
        ("ws", Death::Kill),
        ("ws", Death::Drain),
        ("ws", Death::Silent),
        ("quic", Death::Silent),
        ("auto", Death::Kill),
    ] {
        let kill = death != Death::Drain;
        lab.start_agents(route);
        lab.wait_tunnel();
        // The host with node sessions (node 0's, when they are on different hosts).
        let sessions = lab.relay_sessions();
        let victim = sessions.iter().position(|s| *s > 0.0).unwrap();
        let count = 1000;
        let mut flood = Flood::start(&lab.nodes[0], lab.nodes[1].wg.address, count);
        flood.wait_first();
        let host = &mut lab.hosts[victim];
        match death {
            Death::Kill => host.kill(),
            Death::Silent => {
                for chain in ["INPUT", "OUTPUT"] {
                    host.station
                        .namespace
                        .run("iptables", &["-I", chain, "-j", "DROP"]);
                }
                host.kill();
            }
            Death::Drain => host.terminate(),
        }
        let (received, gap) = flood.finish();
        let what = format!(
            "--route {route}, host {} {}",
            lab.hosts[victim].id,
            match death {
                Death::Kill => "killed",
                Death::Silent => "silenced",
                Death::Drain => "drained",
            }
        );
        let bound = if kill { KILL_BOUND } else { DRAIN_BOUND };
        assert!(
            gap <= bound,
            "{what}: the tunnel was down {gap:?} (bound {bound:?}); {received} of {count} \
             answered\n{}",
            lab.agent_logs()
        );
        // Carried on the other host to the end.
        let moved = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            lab.relay_sessions()[1 - victim] == 2.0
        });
        assert!(
            moved,
            "{what}: both nodes on the other host: {:?}",
            lab.relay_sessions()
        );
        lab.ping_100(&what);
        let host = &mut lab.hosts[victim];
        if kill {
            assert!(host.wait_exit(Duration::from_secs(5)).is_some());
        } else {
            // Its nodes left: it exits 0 well before the drain timeout.
            let status = host.wait_exit(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "{what}: drained host did not exit 0: {status:?}"
            );
        }
        report.push(format!(
            "{what}: longest gap {gap:?}, {} of {count} pings lost",
            count - received
        ));
        eprintln!("{}", report.last().unwrap());
        lab.stop_agents();
        // Both hosts again for the next run.
        if death == Death::Silent {
            for chain in ["INPUT", "OUTPUT"] {
                lab.hosts[victim]
                    .station
                    .namespace
                    .run("iptables", &["-D", chain, "-j", "DROP"]);
            }
        }
        lab.hosts[victim].start();
    }
    eprintln!("{} in {:?}", report.join("; "), began.elapsed());
    lab.destroy();
}

/// The control plane restarts while the tunnel carries a ping flood: no ping is lost. Then,
/// on the WebSocket and QUIC routes, a node's registration is deleted (as the node itself
/// would, with its token): the relay host closes its relay session. (A TURN allocation has
/// no session to lose: it lives on its own time-limited credential.)
#[test]
fn control_plane_restart_and_deleted_registration() {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let began = now();
    let mut lab = Lab::new(2, pg_bin, [Nat::Symmetric, Nat::Symmetric], true);
    let mut report = Vec::new();
    for &route in AGENT_ROUTES.iter().chain(&["auto"]) {
        lab.start_agents(route);
        let chosen = lab.wait_tunnel()[0].clone();
        let count = 250;
        let mut flood = Flood::start(&lab.nodes[0], lab.nodes[1].wg.address, count);
        flood.wait_first();
        for host in &mut lab.hosts {
            host.restart_control();
        }
        let (received, gap) = flood.finish();
        assert_eq!(
            received, count,
            "--route {route}: pings lost across a control plane restart (longest gap {gap:?})"
        );
        report.push(format!(
            "--route {route}: {received} of {count} across the restart"
        ));

        if chosen == "turn" {
            // No relay session to lose: TURN allocations live on their own credentials.
            lab.stop_agents();
            continue;
        }
        // Delete node 0's registration with its own token.
        let token_file = lab.nodes[0]
            .agent
            .as_ref()
            .unwrap()
            .state
            .path()
            .join("token");
        let token = std::fs::read_to_string(&token_file).unwrap();
        assert_eq!(relay_connected(&lab.nodes[0]), 1.0, "--route {route}");
        let answer = http::request(
            lab.hosts[0].http(),
            "DELETE",
            &format!("/api/v1/nodes/{}", lab.nodes[0].id),
            Some(token.trim()),
            None,
        )
        .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let deleted = now();
        // The host closes the session; the revoked token opens no other (the agent registers
        // again at its next heartbeat).
        let lost = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            relay_connected(&lab.nodes[0]) == 0.0
        });
        assert!(
            lost,
            "--route {route}: the relay session outlived the deletion\n{}",
            lab.agent_logs()
        );
        report.push(format!(
            "deleted: session gone after {:?}",
            deleted.elapsed()
        ));
        lab.stop_agents();
    }
    eprintln!("{} in {:?}", report.join("; "), began.elapsed());
    lab.destroy();
}

/// The agent's `boson_node_relay_connected`: 1 while a relay session is open.
fn relay_connected(node: &Node) -> f64 {
    http::metric_sum(&node.metrics(), "boson_node_relay_connected", &[])
}

/// CPU time (user + system) of process `pid` so far, in seconds; 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    ticks / clock_ticks()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// One route's figures.
struct Figures {
    mbits: f64,
    bytes: f64,
    rtt_avg_ms: f64,
    rtt_mdev_ms: f64,
    /// CPU nanoseconds per byte carried, by process kind: wireguard-go, boson-node,
    /// bosonserver (each summed over both of its processes).
    cpu_ns_per_byte: [f64; 3],
}

impl Lab {
    /// The pids of wireguard-go, boson-node and bosonserver processes of the topology.
    fn pids(&self) -> [Vec<u32>; 3] {
        [
            self.nodes.iter().filter_map(|n| n.wg.pid()).collect(),
            self.nodes
                .iter()
                .filter_map(|n| n.agent.as_ref()?.child.as_ref().map(Child::id))
                .collect(),
            self.hosts.iter().filter_map(RelayHost::pid).collect(),
        ]
    }

    /// Ping latency (200 pings), then TCP throughput (iperf3, 5 s) with each process kind's
    /// CPU time over it.
    fn measure(&self) -> Figures {
        let out = self.nodes[0].ping(self.nodes[1].wg.address, 200, Duration::from_millis(10));
        assert_eq!(ping_counts(&out).1, 200, "{out}");
        // "rtt min/avg/max/mdev = 0.101/0.202/0.303/0.044 ms"
        let rtt: Vec<f64> = out
            .lines()
            .find(|l| l.starts_with("rtt "))
            .and_then(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no rtt in {out}"))
            .split('/')
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{v} in {out}")))
            .collect();
        let pids = self.pids();
        let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
        let before: Vec<f64> = pids.iter().map(|p| cpu(p)).collect();
        let server_ip = self.nodes[1].wg.address.to_string();
        let mut server = self.nodes[1]
            .station
            .namespace
            .spawn("iperf3", &["-s", "-B", &server_ip, "-p", "5201"]);
        let mut result = None;
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let output = self.nodes[0]
                .station
                .namespace
                .command("iperf3")
                .args(["-c", &server_ip, "-p", "5201", "-t", "5", "-J"])
                .output()
                .unwrap();
            if output.status.success() {
                let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                let sum = &json["end"]["sum_received"];
                result = sum["bits_per_second"].as_f64().zip(sum["bytes"].as_f64());
            }
            result.is_some()
        });
        let after: Vec<f64> = pids.iter().map(|p| cpu(p)).collect();
        let _ = server.kill();
        let _ = server.wait();
        let (bits, bytes) = result.expect("iperf3 did not run across the tunnel");
        let per_byte = |i: usize| (after[i] - before[i]) * 1e9 / bytes;
        Figures {
            mbits: bits / 1e6,
            bytes,
            rtt_avg_ms: rtt[1],
            rtt_mdev_ms: rtt[3],
            cpu_ns_per_byte: [per_byte(0), per_byte(1), per_byte(2)],
        }
    }
}

/// Issue 13 §5, a measurement rather than a test: the tunnel's TCP throughput and ping
/// latency through each route the agent has (its own direct route, hole punched, first),
/// against the direct route (wireguard-go with
/// endpoints set by hand across two endpoint-independent NATs, one forwarding WireGuard's
/// port), on one topology in one run, with the CPU per byte of wireguard-go, boson-node and
/// bosonserver. `benches/tunnel.sh` runs it on release builds and prints a Markdown table.
#[test]
#[ignore = "a measurement: benches/tunnel.sh runs it on release builds"]
fn measure_routes() {
    let Some(pg_bin) = requirements() else {
        return;
    };
    let mut lab = Lab::new(
        3,
        pg_bin,
        [Nat::EndpointIndependent, Nat::EndpointIndependent],
        false,
    );
    let mut rows = Vec::new();
    // Direct, without the agent.
    lab.routers[1].forward_udp(WG_PORT, lab.nodes[1].station.ip);
    let endpoint = SocketAddr::from((lab.routers[1].wan, WG_PORT));
    lab.nodes[0]
        .wg
        .add_peer(&lab.nodes[1].wg, Some(endpoint), None);
    let peer = lab.nodes[1].wg.address;
    let up = wait_until(Duration::from_secs(15), Duration::ZERO, || {
        ping_counts(&lab.nodes[0].ping(peer, 1, Duration::from_millis(200))).1 == 1
    });
    assert!(up, "no direct tunnel");
    rows.push(("direct (wireguard-go alone)".to_owned(), lab.measure()));
    for &route in ["direct"].iter().chain(AGENT_ROUTES) {
        lab.start_agents(route);
        let routes = lab.wait_tunnel();
        assert_eq!(routes, [route, route]);
        if route == "direct" {
            rows.push((
                "direct through boson-node (hole punched)".to_owned(),
                lab.measure(),
            ));
            lab.stop_agents();
            continue;
        }
        let sessions = lab.relay_sessions();
        let hosts = if route == "turn" {
            "an allocation each"
        } else if sessions.contains(&2.0) {
            "both nodes on one host"
        } else {
            "one node on each host, over the mesh"
        };
        rows.push((format!("{route} relay ({hosts})"), lab.measure()));
        lab.stop_agents();
    }
    let direct = rows[0].1.mbits;
    // On a line of its own, after the test harness's "test measure_routes ... ".
    eprintln!();
    eprintln!(
        "| route | TCP Mbit/s | of direct | ping avg (mdev) ms | CPU ns/byte: wireguard-go | boson-node | bosonserver | bytes |"
    );
    eprintln!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in &rows {
        if f.bytes == 0.0 {
            eprintln!(
                "| {name} | 0 | 0% | {:.3} ({:.3}) | n/a | n/a | n/a | 0 |",
                f.rtt_avg_ms, f.rtt_mdev_ms
            );
            continue;
        }
        eprintln!(
            "| {name} | {:.0} | {:.0}% | {:.3} ({:.3}) | {:.2} | {:.2} | {:.2} | {:.0} |",
            f.mbits,
            100.0 * f.mbits / direct,
            f.rtt_avg_ms,
            f.rtt_mdev_ms,
            f.cpu_ns_per_byte[0],
            f.cpu_ns_per_byte[1],
            f.cpu_ns_per_byte[2],
            f.bytes
        );
    }
    lab.destroy();
}
