//! coturn's own test client, `turnutils_uclient`, against a TURN server on loopback, with
//! coturn's `turnutils_peer` as the peer. The same runs go against coturn itself (the
//! reference, proving the harness) and against `bosonserver`, over UDP, TCP (`-t`) and TLS
//! (`-t -S`).
//!
//! coturn's tools come from Debian's `coturn` package; `scripts/test.sh` installs it. Without
//! them these tests are skipped with a message, except when `CI` is set: then they fail.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "interop-secret";

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_coturn_tools() -> bool {
    let found = ["turnserver", "turnutils_uclient", "turnutils_peer"]
        .iter()
        .all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "coturn's tools are required when CI is set (apt-get install coturn)"
        );
        eprintln!("skipped: coturn's tools are not installed");
    }
    found
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(program: &str, args: &[&str]) -> Guard {
    Guard(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}")),
    )
}

/// Waits until something answers a STUN Binding request on `port`.
fn wait_for_stun(port: u16) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A Binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[7; 12]);
    let mut buf = [0u8; 1500];
    for _ in 0..100 {
        socket.send_to(&request, ("127.0.0.1", port)).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// Waits until `turnutils_peer` (an echo server) answers on `port`, for up to 20 s.
fn wait_for_echo(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..200 {
        socket.send_to(b"ready?", ("127.0.0.1", port)).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("turnutils_peer never echoed on port {port}");
}

/// What `turnutils_uclient` reported.
#[derive(Debug)]
struct Report {
    sent: u64,
    received: u64,
    lost_percent: f64,
    output: String,
}

/// Runs `turnutils_uclient` with REST-API credentials against `server_port`, relaying to a
/// `turnutils_peer` it starts, and parses the totals.
fn uclient(server_port: u16, flags: &[&str], clients: u32, messages: u32) -> Report {
    uclient_with(&["-W", SECRET], server_port, flags, clients, messages)
}

/// [`uclient`] with other credential flags: `-W <secret>`, or `-u <user> -w <password>`.
fn uclient_with(
    credentials: &[&str],
    server_port: u16,
    flags: &[&str],
    clients: u32,
    messages: u32,
) -> Report {
    let peer_port = free_udp_port();
    let _peer = spawn(
        "turnutils_peer",
        &["-L", "127.0.0.1", "-p", &peer_port.to_string()],
    );
    wait_for_echo(peer_port);
    let mut args: Vec<String> = credentials.iter().map(|c| (*c).to_owned()).collect();
    args.extend([
        "-e".to_owned(),
        "127.0.0.1".to_owned(),
        "-r".to_owned(),
        peer_port.to_string(),
        "-p".to_owned(),
        server_port.to_string(),
        "-m".to_owned(),
        clients.to_string(),
        "-n".to_owned(),
        messages.to_string(),
        "-z".to_owned(),
        "5".to_owned(),
    ]);
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    args.push("127.0.0.1".to_owned());
    let output = Command::new("timeout")
        .arg("120")
        .arg("turnutils_uclient")
        .args(&args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let number_after = |key: &str| -> Option<f64> {
        let line = text.lines().rev().find(|line| line.contains(key))?;
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        digits.parse().ok()
    };
    let lost_percent = text
        .lines()
        .rev()
        .find(|line| line.contains("Total lost packets"))
        .and_then(|line| {
            let inside = line.split('(').nth(1)?.split('%').next()?;
            inside.trim().parse().ok()
        })
        .unwrap_or(f64::NAN);
    Report {
        sent: number_after("tot_send_msgs=").unwrap_or(0.0) as u64,
        received: number_after("tot_recv_msgs=").unwrap_or(0.0) as u64,
        lost_percent,
        output: text,
    }
}

fn assert_lossless(report: &Report, expected: u64) {
    let tail: Vec<&str> = report.output.lines().rev().take(15).collect();
    assert_eq!(report.sent, expected, "{tail:#?}");
    assert_eq!(report.received, expected, "{tail:#?}");
    assert_eq!(report.lost_percent, 0.0, "{tail:#?}");
}

/// coturn on a free port, and that port. A port found free can be taken again before coturn
/// binds it (other tests bind thousands of relay ports in the same range), so a coturn that
/// does not answer within 10 s is replaced, on new ports, up to three times.
fn coturn() -> (Guard, u16) {
    for _ in 0..3 {
        let port = free_udp_port();
        let guard = coturn_on(port);
        if wait_for_stun(port) {
            return (guard, port);
        }
    }
    panic!("coturn never answered STUN, on three ports");
}

fn coturn_on(port: u16) -> Guard {
    let relay_min = free_udp_port().max(20000);
    spawn(
        "turnserver",
        &[
            "-n",
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            "--realm=interop",
            "--allow-loopback-peers",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            &format!("--min-port={relay_min}"),
            &format!("--max-port={}", relay_min.saturating_add(200)),
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
        ],
    )
}

#[test]
fn reference_coturn_relays_channels_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let (_server, port) = coturn();
    assert_lossless(&uclient(port, &["-y"], 4, 200), 800);
}

#[test]
fn reference_coturn_relays_send_indications_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let (_server, port) = coturn();
    assert_lossless(&uclient(port, &["-s"], 4, 200), 800);
}

/// `bosonserver run` on loopback with the interop secret; peers on loopback are allowed, as
/// coturn's `--allow-loopback-peers` above.
fn bosonserver(dir: &std::path::Path, relay_base: u16) -> common::Running {
    bosonserver_with(dir, relay_base, &[])
}

/// [`bosonserver`] with `extra` arguments.
fn bosonserver_with(dir: &std::path::Path, relay_base: u16, extra: &[&str]) -> common::Running {
    let relay_ports = format!("{relay_base}-{}", relay_base + RELAY_RANGE - 1);
    let mut args = vec![
        "--no-pin",
        "--turn-static-secret",
        SECRET,
        "--turn-realm",
        "interop",
        "--relay-ports",
        &relay_ports,
        "--danger-allow-loopback-peers",
    ];
    args.extend_from_slice(extra);
    common::start_local(dir, &args, true)
}

/// The first port of a relay range of [`RELAY_RANGE`] ports that is free now. Each test has
/// its own `slot`, so the tests of this binary never share ports; a range another process
/// holds (another TURN server, another run of these tests) is skipped, because a server
/// whose relay ports are taken runs out of them and answers Allocate with 508.
fn relay_base(slot: u16) -> u16 {
    let first = 20_000 + slot * 2_000;
    let offset = u16::try_from(std::process::id() % 5).unwrap();
    for attempt in 0..5 {
        let base = first + ((offset + attempt) % 5) * RELAY_RANGE;
        let held: Vec<_> = (base..base + RELAY_RANGE)
            .map_while(|port| UdpSocket::bind(("0.0.0.0", port)).ok())
            .collect();
        if held.len() == usize::from(RELAY_RANGE) {
            return base;
        }
    }
    panic!(
        "no free relay port range in {first}..{}",
        first + 5 * RELAY_RANGE
    );
}

/// Ports in the relay range of each bosonserver these tests start.
const RELAY_RANGE: u16 = 400;

#[test]
fn bosonserver_relays_channel_data_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = bosonserver(dir.path(), relay_base(0));
    let report = uclient(server.turn.unwrap().port(), &[], 10, 1000);
    assert_lossless(&report, 10_000);
}

#[test]
fn bosonserver_relays_send_indications_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = bosonserver(dir.path(), relay_base(1));
    let report = uclient(server.turn.unwrap().port(), &["-s"], 10, 1000);
    assert_lossless(&report, 10_000);
}

#[test]
fn bosonserver_relays_client_to_client_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = bosonserver(dir.path(), relay_base(2));
    let report = uclient(server.turn.unwrap().port(), &["-y"], 10, 1000);
    // Client to client, the RTCP allocations carry traffic too: coturn's own server reports
    // 12 000 messages for this run.
    assert_lossless(&report, 12_000);
}

/// The issue's "done when": a node registers over the REST API, asks for ICE servers, and
/// coturn's client relays with exactly those credentials (a static username and password to
/// it, `-u`/`-w`), not with the shared secret.
#[test]
fn ice_credentials_from_the_api_relay_coturns_client_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = bosonserver(dir.path(), relay_base(3));
    let http = common::Http::new();
    let node = serde_json::json!({
        "nodeId": "7d2f6a10-5b7e-4c1a-9f00-0123456789ab",
        "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "networkInfo": {"ipv4": "192.168.1.1", "natType": "Symmetric", "localPort": 51820},
        "capabilities": {"maxConnections": 10, "bandwidth": {"up": 10, "down": 10}},
        "location": {"country": "DE", "region": "DE-BE"}
    });
    let token = http.register(&server.base, &node);
    let (status, ice) = http.get_auth(&format!("{}/api/v1/turn/ice", server.base), &token);
    assert_eq!(status, 200, "{ice}");
    let turn = &ice["iceServers"][1];
    let url = turn["urls"][0].as_str().unwrap();
    let port = server.turn.unwrap().port();
    assert_eq!(url, format!("turn:127.0.0.1:{port}?transport=udp"));
    let username = turn["username"].as_str().unwrap();
    let password = turn["credential"].as_str().unwrap();
    assert!(
        username.ends_with(":7d2f6a10-5b7e-4c1a-9f00-0123456789ab"),
        "{username}"
    );
    let report = uclient_with(&["-u", username, "-w", password], port, &[], 4, 500);
    assert_lossless(&report, 2_000);
    // And a forged password gets nothing through.
    let forged = uclient_with(
        &["-u", username, "-w", "Zm9yZ2VkIHBhc3N3b3JkIQ=="],
        port,
        &[],
        1,
        10,
    );
    assert_eq!(
        forged.received,
        0,
        "{:?}",
        forged.output.lines().rev().take(5).collect::<Vec<_>>()
    );
}

/// A node's ICE servers from the API of `server`: (TURN URLs, username, password).
fn ice_turn(server: &common::Running, node_id: &str) -> (Vec<String>, String, String) {
    let http = common::Http::new();
    let node = serde_json::json!({
        "nodeId": node_id,
        "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "networkInfo": {"ipv4": "192.168.1.1", "natType": "Symmetric", "localPort": 51820},
        "capabilities": {"maxConnections": 10, "bandwidth": {"up": 10, "down": 10}},
        "location": {"country": "DE", "region": "DE-BE"}
    });
    let token = http.register(&server.base, &node);
    http.ice_turn(&server.base, &token)
}

/// The port of the URL in `urls` that starts with `prefix` (`turn:` or `turns:`) and asks for
/// TCP.
fn tcp_port(urls: &[String], prefix: &str) -> u16 {
    let url = urls
        .iter()
        .find(|u| u.starts_with(prefix) && u.ends_with("?transport=tcp"))
        .unwrap_or_else(|| panic!("no {prefix} URL over TCP in {urls:?}"));
    let port = url.rsplit(':').next().unwrap().split('?').next().unwrap();
    port.parse().unwrap()
}

/// coturn's client over TCP (`-t`): the URL `/api/v1/turn/ice` lists for TCP, its
/// credentials, ChannelData (padded on the stream) to the peer and back, none lost; then
/// Send and Data indications; then client to client.
#[test]
fn bosonserver_relays_over_tcp_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = bosonserver(dir.path(), relay_base(4));
    let (urls, username, password) = ice_turn(&server, "7d2f6a10-5b7e-4c1a-9f00-0123456789ac");
    assert!(
        !urls.iter().any(|u| u.starts_with("turns:")),
        "no TLS listener, no turns: URL: {urls:?}"
    );
    let port = tcp_port(&urls, "turn:");
    let credentials = ["-u", username.as_str(), "-w", password.as_str()];
    assert_lossless(&uclient_with(&credentials, port, &["-t"], 10, 1000), 10_000);
    assert_lossless(&uclient(port, &["-t", "-s"], 10, 1000), 10_000);
    assert_lossless(&uclient(port, &["-t", "-y"], 10, 1000), 12_000);
}

/// coturn's client over TLS (`-t -S`) on the `turns:` URL, with the certificate reloaded
/// from its files.
#[test]
fn bosonserver_relays_over_tls_without_loss() {
    if !have_coturn_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let server = bosonserver_with(
        dir.path(),
        relay_base(5),
        &[
            "--turn-tls-listen",
            "127.0.0.1:0",
            "--turn-tls-cert",
            cert.to_str().unwrap(),
            "--turn-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let (urls, username, password) = ice_turn(&server, "7d2f6a10-5b7e-4c1a-9f00-0123456789ad");
    let port = tcp_port(&urls, "turns:");
    assert_ne!(port, tcp_port(&urls, "turn:"));
    let credentials = ["-u", username.as_str(), "-w", password.as_str()];
    assert_lossless(
        &uclient_with(&credentials, port, &["-t", "-S"], 10, 1000),
        10_000,
    );
    assert_lossless(&uclient(port, &["-t", "-S", "-y"], 4, 500), 2_000);
}
