//! NAT behaviour discovery behind real NAT (issue 13 §1): one relay host with a second STUN
//! port (`--stun-alt-port`, RFC 5780), and an agent behind each of two home routers, one
//! masquerading with an endpoint-independent mapping (plain `MASQUERADE`, which keeps the
//! source port) and one with a destination-dependent mapping (`MASQUERADE --random-fully`).
//! Each agent must find its own: `PortRestricted` and `Symmetric`, and the server must hold
//! what it registered.
//!
//! ```text
//!   root namespace: this test
//!   internet 10.231.S.0/24
//!     ├── relay host (bosonserver, SQLite, STUN on 3478 and 3479)
//!     ├── home router 0 (MASQUERADE)               ── node 0: boson-node
//!     └── home router 1 (MASQUERADE --random-fully) ── node 1: boson-node
//! ```
//!
//! Needs root, `ip`, `iptables` and `sysctl` (skipped without, failing when `CI` is set),
//! and the `bosonserver` binary next to this test's. Alone:
//! `cargo build -p bosonserver && cargo test -p boson-node --test nat_netns`.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use boson_testsupport::netns::{Internet, Nat};
use boson_testsupport::relay::{RelayHost, Settings};
use boson_testsupport::require;
use common::{Node, http};

/// The relay host's second STUN port.
const STUN_ALT_PORT: &str = "3479";

/// The `bosonserver` binary, next to this test's target directory.
fn bosonserver_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_boson-node")).with_file_name("bosonserver");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build -p bosonserver`)",
        binary.display()
    );
    binary
}

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a line of the log file `path` holding `needle`; returns it.
fn wait_line(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {} within {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_behind_each_nat_reports_its_mapping() {
    if !require(true, &["ip", "iptables", "sysctl"]) {
        return;
    }
    let mut net = Internet::create(0);
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        binary: bosonserver_binary(),
        database_url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("registry.db").display()
        ),
        redis_url: None,
        region: "US-CA".to_owned(),
        workers: 1,
        host_heartbeat: Duration::from_millis(500),
        host_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(5),
        split: false,
        extra: vec!["--stun-alt-port".to_owned(), STUN_ALT_PORT.to_owned()],
    };
    let mut host = RelayHost::new(
        net.host("relay0"),
        "7e570000-0000-4000-8000-0000000000f0",
        settings,
    );
    host.start();

    let nodes = [
        Node::new(dir.path(), 0xb1, 1),
        Node::new(dir.path(), 0xb1, 2),
    ];
    let mut routers = Vec::new();
    let mut agents = Vec::new();
    let mut logs = Vec::new();
    let mut states = Vec::new();
    for (i, nat) in [Nat::EndpointIndependent, Nat::Symmetric]
        .into_iter()
        .enumerate()
    {
        let mut router = net.router(&format!("home{i}"), nat);
        let station = net.behind(&mut router, &format!("node{i}"));
        let state = dir.path().join(format!("state{i}"));
        std::fs::create_dir_all(&state).unwrap();
        let log = state.join("agent.log");
        let node = &nodes[i];
        let mut command = station.namespace.command(env!("CARGO_BIN_EXE_boson-node"));
        command
            .arg("run")
            .args(["--server", &host.base()])
            .args(["--wg-listen-port", &node.wg_port().to_string()])
            .arg("--wg-private-key-file")
            .arg(&node.key_file)
            .args(["--node-id", &node.id])
            .arg("--state-dir")
            .arg(&state)
            .args(["--peer", &nodes[1 - i].peer_arg()])
            .args(["--route", "ws"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        agents.push(Killed(command.spawn().unwrap()));
        routers.push(router);
        logs.push(log);
        states.push(state);
    }

    let mut lines = Vec::new();
    for (log, router) in logs.iter().zip(&routers) {
        let line = wait_line(log, "NAT discovery", Duration::from_secs(60));
        eprintln!("{}: {line}", router.namespace.name());
        // The mapped address is the router's WAN address, whatever the port.
        assert!(
            line.contains(&format!("mapped=Some({}:", router.wan)),
            "{line}"
        );
        lines.push(line);
    }
    assert!(lines[0].contains("nat_type=PortRestricted"), "{}", lines[0]);
    assert!(
        lines[0].contains("EndpointIndependent { other_ip: false }"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("nat_type=Symmetric"), "{}", lines[1]);
    assert!(lines[1].contains("mapping=Dependent"), "{}", lines[1]);

    // The server holds what each registered: node 1 reads node 0's registration and the
    // other way round.
    for (i, expected) in [(0, "PortRestricted"), (1, "Symmetric")] {
        let reader = 1 - i;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let token = std::fs::read_to_string(states[reader].join("token")).unwrap_or_default();
            let (status, view) = http(
                "GET",
                &format!("{}/api/v1/nodes/{}", host.base(), nodes[i].id),
                Some(token.trim()),
                None,
            );
            let info = &view["networkInfo"];
            if status == 200
                && info["natType"] == expected
                && info["stunMappedAddress"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("{}:", routers[i].wan)))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never registered as {expected}: {status} {view}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(agents);
    drop(host);
    let left = net.destroy();
    assert!(left.is_empty(), "left behind: {left:?}");
}
