//! A real WireGuard tunnel (wireguard-go, unchanged) through `boson-node` in
//! `--wg-interface` mode and the real `bosonserver`'s WebSocket relay: two network
//! namespaces joined by a veth pair, the server in the first, one WireGuard interface and
//! one agent in each; ping crosses the tunnel, so every ICMP packet went WireGuard → agent →
//! relay → agent → WireGuard.
//!
//! Needs root, `ip`, `wg` (wireguard-tools) and `wireguard-go`; without them it is skipped
//! with a message, except when `CI` is set: then it fails (`scripts/services.sh` installs
//! them).

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, Proc, boson_node, spawn, start_server_in, wait_status};

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether the test can run; panics under `CI` when it cannot.
fn requirements() -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (for network namespaces)");
    }
    for program in ["ip", "wg", "wireguard-go", "ping"] {
        if !installed(program) {
            missing.push(program);
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, and this test needs {}",
        missing.join(", ")
    );
    eprintln!("skipped: this test needs {}", missing.join(", "));
    false
}

/// Runs a command, panicking with its error output if it fails; returns its stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The namespaces, deleted (with everything in them) when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// A wireguard-go process, stopped with SIGTERM when dropped so that it removes its
/// interface and its control socket (in `/var/run/wireguard`, shared by every namespace).
struct WireGuard {
    proc: Proc,
    iface: String,
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        self.proc.signal("TERM");
        let _ = self.proc.wait_exit(Duration::from_secs(5));
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
    }
}

/// A wireguard-go interface `iface` in `ns` with `key_file`, listening on `port`, address
/// `addr`/24, and `peer_key` allowed `peer_addr`/32 (no endpoint: the agent sets it).
fn wireguard(
    ns: &str,
    iface: &str,
    key_file: &str,
    port: u16,
    addr: &str,
    peer_key: &str,
    peer_addr: &str,
) -> WireGuard {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, "wireguard-go", "-f", iface])
        // This kernel may have WireGuard; the test is about the userspace one nodes use.
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    let proc = WireGuard {
        proc: spawn("wireguard-go", command, false),
        iface: iface.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("ip")
        .args(["netns", "exec", ns, "wg", "show", iface])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "wireguard-go never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = port.to_string();
    let allowed = format!("{peer_addr}/32");
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "wg",
            "set",
            iface,
            "private-key",
            key_file,
            "listen-port",
            &port,
            "peer",
            peer_key,
            "allowed-ips",
            &allowed,
        ],
    );
    sh(
        "ip",
        &[
            "-n",
            ns,
            "address",
            "add",
            &format!("{addr}/24"),
            "dev",
            iface,
        ],
    );
    sh("ip", &["-n", ns, "link", "set", iface, "up"]);
    proc
}

#[test]
fn ping_crosses_a_wireguard_go_tunnel_through_the_agents_and_the_ws_relay() {
    if !requirements() {
        return;
    }
    let id = std::process::id() % 100_000;
    let (ns_a, ns_b) = (format!("bnode-a-{id}"), format!("bnode-b-{id}"));
    let (if_a, if_b) = (format!("bna{id}"), format!("bnb{id}"));
    let (veth_a, veth_b) = (format!("bnva{id}"), format!("bnvb{id}"));
    sh("ip", &["netns", "add", &ns_a]);
    let _namespaces = Namespaces(vec![ns_a.clone()]);
    sh("ip", &["netns", "add", &ns_b]);
    let _namespaces = Namespaces(vec![ns_a.clone(), ns_b.clone()]);
    sh(
        "ip",
        &[
            "-n", &ns_a, "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b, "netns",
            &ns_b,
        ],
    );
    for (ns, veth, addr) in [
        (&ns_a, &veth_a, "10.231.0.1/24"),
        (&ns_b, &veth_b, "10.231.0.2/24"),
    ] {
        sh("ip", &["-n", ns, "address", "add", addr, "dev", veth]);
        sh("ip", &["-n", ns, "link", "set", veth, "up"]);
        sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let wrapper_a = ["ip", "netns", "exec", ns_a.as_str()];
    let server = start_server_in(&wrapper_a, "10.231.0.1", 0, 8443, dir.path(), &[]);
    let a = Node::new(dir.path(), 0x51, 1);
    let b = Node::new(dir.path(), 0x51, 2);
    let _wg_a = wireguard(
        &ns_a,
        &if_a,
        a.key_file.to_str().unwrap(),
        51820,
        "10.99.0.1",
        &b.public_key,
        "10.99.0.2",
    );
    let _wg_b = wireguard(
        &ns_b,
        &if_b,
        b.key_file.to_str().unwrap(),
        51820,
        "10.99.0.2",
        &a.public_key,
        "10.99.0.1",
    );
    // The agents read each interface's key with `wg show`: the same as the files'.
    let shown = sh(
        "ip",
        &["netns", "exec", &ns_a, "wg", "show", &if_a, "public-key"],
    );
    assert_eq!(shown.trim(), a.public_key);

    let agent = |name: &'static str, ns: &str, iface: &str, node: &Node, peer: &Node| {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(boson_node().get_program())
            .args([
                "run",
                "--server",
                &server.base,
                "--wg-interface",
                iface,
                "--node-id",
                &node.id,
            ])
            .args([
                "--state-dir",
                node.state_dir.to_str().unwrap(),
                "--peer",
                &peer.peer_arg(),
                "--route",
                "ws",
            ])
            .env("RUST_LOG", "info");
        spawn(
            name,
            command,
            std::env::var_os("BOSON_TEST_AGENT_LOG").is_some(),
        )
    };
    let mut agent_a = agent("agent-a", &ns_a, &if_a, &a, &b);
    let _agent_b = agent("agent-b", &ns_b, &if_b, &b, &a);
    let line = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    });
    // The agent pointed WireGuard's peer at its local socket.
    let endpoints = sh(
        "ip",
        &["netns", "exec", &ns_a, "wg", "show", &if_a, "endpoints"],
    );
    assert!(
        endpoints.contains(&format!("{}\t127.0.0.1:{}", b.public_key, line[3])),
        "{endpoints}"
    );

    // The first pings wait for WireGuard's handshake; then 50 in a row must all answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns_a,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "10.99.0.2",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "no ping ever crossed the tunnel");
    }
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns_a,
            "ping",
            "-c",
            "50",
            "-i",
            "0.05",
            "-W",
            "2",
            "10.99.0.2",
        ],
    );
    assert!(out.contains("50 packets transmitted, 50 received"), "{out}");
    let line = wait_status(&a.state_dir, &b.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    assert!(line[4].parse::<u64>().unwrap() > 50 * 84, "{line:?}");

    agent_a.signal("TERM");
    let exit = agent_a
        .wait_exit(Duration::from_secs(15))
        .expect("agent A stops");
    assert_eq!(exit.code(), Some(0));
}
