//! Issue 5: the control plane and the dataplane as two processes on one shared-memory
//! segment, each killed with SIGKILL and restarted while the other runs, with relay streams
//! and TURN allocations flowing; TURN secrets rotated under both; and (issue 14) the
//! dataplane's TCP and TLS listeners reaching the control plane's ICE answer.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::{NodeId, TurnSecret};
use common::turn::{self, TurnClient};
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};

/// Both processes must agree on these; set explicitly so neither generates its own.
const ENV: &[(&str, &str)] = &[
    (
        "JWT_SECRET",
        "restart-test-jwt-secret-0123456789abcdef0123456789",
    ),
    (
        "TURN_STATIC_SECRET",
        "restart-test-turn-secret-0123456789abcdef",
    ),
];

/// A process of the binary, killed (SIGKILL) when dropped, with its log lines.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(dir: &Path, args: &[&str]) -> Self {
        Self::spawn_with(dir, args, &[])
    }

    /// As [`spawn`](Self::spawn), with `env` on top of [`ENV`] (`None` removes a variable).
    fn spawn_with(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bosonserver"));
        command
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("BOSON_DATA_DIR")
            .env_remove("BOSON_WORKERS")
            .env_remove("BOSON_SEGMENT")
            .env("RUST_LOG", "info");
        for (key, value) in ENV {
            command.env(key, value);
        }
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let echo = std::env::var("BOSON_TEST_SERVER_LOG").is_ok();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[server] {line}");
                }
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The value after `key` on the first line containing `marker`.
    fn wait_for(&self, marker: &str, key: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {marker:?}"));
            if line.contains(marker) {
                let rest = line.split(key).nth(1).unwrap();
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
    }

    /// The first log line containing `marker`.
    fn wait_line(&self, marker: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {marker:?}"));
            if line.contains(marker) {
                return line;
            }
        }
    }

    /// `bosonserver control` on `segment`; returns it with its REST API base URL.
    fn control(dir: &Path, segment: &str, workers: &str) -> (Self, String) {
        Self::control_with(dir, segment, workers, &[], &[])
    }

    /// [`control`](Self::control) with more arguments and environment.
    fn control_with(
        dir: &Path,
        segment: &str,
        workers: &str,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> (Self, String) {
        let mut args = vec![
            "control",
            "--http-listen",
            "127.0.0.1:0",
            "--segment",
            segment,
            "--workers",
            workers,
        ];
        args.extend_from_slice(extra);
        let proc = Self::spawn_with(dir, &args, env);
        let base = proc.wait_for("listening on ", "listening on ");
        (proc, base)
    }

    /// `bosonserver dataplane` on `segment`; returns it with its relay address.
    fn dataplane(dir: &Path, segment: &str, workers: &str) -> (Self, SocketAddr) {
        let (proc, relay, _) = Self::dataplane_with(dir, segment, workers, &[], &[]);
        (proc, relay)
    }

    /// [`dataplane`](Self::dataplane) with more arguments and environment; returns the TURN
    /// listener's address too.
    fn dataplane_with(
        dir: &Path,
        segment: &str,
        workers: &str,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> (Self, SocketAddr, SocketAddr) {
        let mut args = dataplane_args(segment, workers);
        args.extend_from_slice(extra);
        let proc = Self::spawn_with(dir, &args, env);
        let relay = proc.wait_for("node relay listening", "relay_addr=");
        let turn = proc.wait_for("dataplane started", "local_addr=");
        proc.wait_for("dataplane attached to the segment", "incarnation=");
        (proc, relay.parse().unwrap(), turn.parse().unwrap())
    }

    /// Sends `signal` (such as `HUP`) to the process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }
}

fn dataplane_args<'a>(segment: &'a str, workers: &'a str) -> Vec<&'a str> {
    vec![
        "dataplane",
        "--segment",
        segment,
        "--workers",
        workers,
        "--no-pin",
        "--turn-listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--no-relay-quic",
    ]
}

/// A relay session for `node` with `token`. Grants reach the dataplane asynchronously, so
/// a refusal (1008) is retried for up to five seconds, as a real node would.
fn join(relay: SocketAddr, token: &str, node: NodeId) -> Client<TcpStream> {
    for _ in 0..100 {
        let mut client = ws_upgrade(connect(relay), Auth::Bearer(token)).unwrap();
        match client.recv().unwrap() {
            Received::Ready(_) => return client,
            Received::Closed(_) => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("expected READY, got {other:?}"),
        }
    }
    panic!("{node} was never granted a session");
}

/// Polls `/metrics` until `pred` holds (10 s).
fn wait_metrics(
    http: &common::Http,
    base: &str,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    for _ in 0..200 {
        let text = http.text(&format!("{base}/metrics"));
        if pred(&text) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("/metrics never showed {what}");
}

/// SIGKILLs `control` once a stream whose deliveries `received` counts is flowing, and checks
/// that `what` keeps delivering without it: 100 more packets arrive while the control plane
/// is dead (it is restarted only after this returns). Waits on counts, not on fixed times, so
/// a busy machine slows the test down but does not fail it; a stalled relay still does.
fn kill_while_flowing(control: Proc, received: &AtomicU32, what: &str) {
    wait_count(received, 100, &format!("{what}: the stream never started"));
    drop(control); // SIGKILL
    let at_kill = received.load(Ordering::Relaxed);
    wait_count(
        received,
        at_kill + 100,
        &format!("{what} stalled without its control plane after {at_kill} packets"),
    );
}

/// Waits (up to 30 s) until `received` reaches `count`.
fn wait_count(received: &AtomicU32, count: u32, failure: &str) {
    for _ in 0..3000 {
        if received.load(Ordering::Relaxed) >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{failure}: {} packets", received.load(Ordering::Relaxed));
}

/// The value of the series starting with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

const IDS: [&str; 3] = [
    "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a01",
    "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02",
    "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a03",
];
const KEYS: [&str; 3] = [
    "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    "yTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    "zTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
];

#[test]
fn control_plane_killed_and_restarted_while_a_relay_stream_flows() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let (control, base) = Proc::control(dir.path(), segment, "2");
    let (_dataplane, relay) = Proc::dataplane(dir.path(), segment, "2");
    let http = common::Http::new();
    let token_a = http.register(&base, &common::node_body(IDS[0], KEYS[0]));
    let token_b = http.register(&base, &common::node_body(IDS[1], KEYS[1]));
    let (a, b): (NodeId, NodeId) = (IDS[0].parse().unwrap(), IDS[1].parse().unwrap());
    let mut client_a = join(relay, &token_a, a);
    let mut client_b = join(relay, &token_b, b);
    wait_metrics(&http, &base, "both sessions", |m| {
        metric(m, "bosonserver_channel_relay_sessions ") == Some(2.0)
    });

    // A steady stream A → B, one sequence-numbered packet per millisecond, across the kill.
    const PACKETS: u32 = 3000;
    let received = Arc::new(AtomicU32::new(0));
    let sender = std::thread::spawn(move || {
        for seq in 0..PACKETS {
            let packet = [&seq.to_le_bytes()[..], &[5u8; 200]].concat();
            client_a.send(&b, &packet).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        client_a
    });
    let counted = Arc::clone(&received);
    let receiver = std::thread::spawn(move || {
        for seq in 0..PACKETS {
            let (src, packet) = client_b.recv_packet().unwrap();
            assert_eq!(src, a);
            let got = u32::from_le_bytes(packet[..4].try_into().unwrap());
            assert_eq!(
                got, seq,
                "lost or reordered across the control plane's restart"
            );
            counted.store(seq + 1, Ordering::Relaxed);
        }
        client_b
    });

    kill_while_flowing(control, &received, "the relay");

    let (_control, base) = Proc::control(dir.path(), segment, "2");
    let client_a = sender.join().unwrap();
    let mut client_b = receiver.join().unwrap();
    assert_eq!(received.load(Ordering::Relaxed), PACKETS);

    // The new control plane's view is rebuilt from the segment: the dataplane re-announced
    // both sessions, and its counters (published every 100 ms) are on /metrics again.
    let relayed = |m: &str| -> f64 {
        (0..2)
            .filter_map(|core| {
                metric(
                    m,
                    &format!("bosonserver_dataplane_ws_packets_relayed_total{{core=\"{core}\"}} "),
                )
            })
            .sum()
    };
    let metrics = wait_metrics(&http, &base, "the sessions and the stream", |m| {
        metric(m, "bosonserver_channel_relay_sessions ") == Some(2.0)
            && relayed(m) >= f64::from(PACKETS)
    });
    assert_eq!(
        metric(&metrics, "bosonserver_channel_dataplane_attached "),
        Some(1.0)
    );
    assert!(
        metrics.contains("bosonserver_channel_ring_depth_bytes{core=\"1\",direction=\"events\"}")
    );

    // Grants flow again: a node registered after the restart relays.
    let token_c = http.register(&base, &common::node_body(IDS[2], KEYS[2]));
    let c: NodeId = IDS[2].parse().unwrap();
    let mut client_c = join(relay, &token_c, c);
    let mut client_a = client_a;
    client_a.send(&c, b"after the restart").unwrap();
    assert_eq!(
        client_c.recv_packet().unwrap(),
        (a, b"after the restart".to_vec())
    );
    client_c.send(&b, b"and onwards").unwrap();
    assert_eq!(
        client_b.recv_packet().unwrap(),
        (c, b"and onwards".to_vec())
    );
}

#[test]
fn dataplane_killed_and_restarted_gets_every_grant_again() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    // The dataplane first this time: the control plane attaches the segment it created.
    let (dataplane, relay) = Proc::dataplane(dir.path(), segment, "2");
    let (_control, base) = Proc::control(dir.path(), segment, "2");
    let http = common::Http::new();
    let token_a = http.register(&base, &common::node_body(IDS[0], KEYS[0]));
    let token_b = http.register(&base, &common::node_body(IDS[1], KEYS[1]));
    let (a, b): (NodeId, NodeId) = (IDS[0].parse().unwrap(), IDS[1].parse().unwrap());
    drop(join(relay, &token_a, a));
    wait_metrics(&http, &base, "the first dataplane", |m| {
        metric(m, "bosonserver_channel_dataplane_incarnation ") == Some(1.0)
    });

    drop(dataplane); // SIGKILL
    let (_dataplane, relay) = Proc::dataplane(dir.path(), segment, "2");
    // The control plane re-pushed the grants: the tokens issued before the restart work.
    let mut client_a = join(relay, &token_a, a);
    let mut client_b = join(relay, &token_b, b);
    client_a.send(&b, b"hello again").unwrap();
    assert_eq!(
        client_b.recv_packet().unwrap(),
        (a, b"hello again".to_vec())
    );
    let metrics = wait_metrics(&http, &base, "the second dataplane", |m| {
        metric(m, "bosonserver_channel_relay_sessions ") == Some(2.0)
    });
    assert_eq!(
        metric(&metrics, "bosonserver_channel_dataplane_incarnation "),
        Some(2.0)
    );
}

/// A registration answers once the dataplane has taken the node's grant, so a node that
/// connects to the relay the moment it has its token is let in at once, although the
/// dataplane process polls the segment only every few milliseconds.
#[test]
fn a_token_is_good_on_the_relay_as_soon_as_registration_answers() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let (_dataplane, relay) = Proc::dataplane(dir.path(), segment, "2");
    let (_control, base) = Proc::control(dir.path(), segment, "2");
    let http = common::Http::new();
    for i in 0..20u16 {
        let id = common::node_id(9, i);
        let token = http.register(&base, &common::node_body(&id, &common::wg_key(9, i)));
        let mut client = ws_upgrade(connect(relay), Auth::Bearer(&token)).unwrap();
        match client.recv().unwrap() {
            Received::Ready(node) => assert_eq!(node, id.parse::<NodeId>().unwrap()),
            other => panic!("node {i}: expected READY at once, got {other:?}"),
        }
    }
}

#[test]
fn a_segment_of_another_shape_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let (_control, _base) = Proc::control(dir.path(), segment, "2");
    let mut dataplane = Proc::spawn(dir.path(), &dataplane_args(segment, "1"));
    let status = dataplane.child.wait().unwrap();
    assert!(!status.success());
    let log: Vec<String> = dataplane.lines.iter().collect();
    let log = log.join("\n");
    assert!(
        log.contains("opening the segment") && log.contains("cores is 2, expected 1"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// The TURN secret both processes' environments share ([`ENV`]).
const TURN_SECRET: &str = "restart-test-turn-secret-0123456789abcdef";
const CHANNEL: u16 = 0x4001;

/// The live TURN allocations `/metrics` shows the control plane knows of, over every core.
fn allocations_seen(metrics: &str, cores: u16) -> f64 {
    (0..cores)
        .filter_map(|core| {
            metric(
                metrics,
                &format!("bosonserver_turn_allocations{{core=\"{core}\"}} "),
            )
        })
        .sum()
}

/// `--relay-ports` for a test, and the loopback peers TURN clients of tests relay to.
fn turn_args(ports: &str) -> [&str; 3] {
    ["--relay-ports", ports, "--danger-allow-loopback-peers"]
}

/// An allocation of `client` with channel [`CHANNEL`] bound to `peer`; its relayed address.
fn allocate_with_channel(client: &mut TurnClient, peer: &UdpSocket) -> SocketAddr {
    let answer = client.allocate().unwrap();
    assert!(answer.is_success(), "Allocate: {:?}", answer.code);
    let relayed = answer.relayed().unwrap();
    let bound = client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .unwrap();
    assert!(bound.is_success(), "ChannelBind: {:?}", bound.code);
    relayed
}

/// One datagram each way between `client` (on [`CHANNEL`]) and `peer`.
fn turn_round_trip(client: &mut TurnClient, peer: &UdpSocket, relayed: SocketAddr, tag: &[u8]) {
    client.send_channel_data(CHANNEL, tag).unwrap();
    let mut buf = [0u8; 2048];
    let (len, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..len], from), (tag, relayed));
    peer.send_to(tag, relayed).unwrap();
    assert_eq!(client.recv_channel_data(), Some((CHANNEL, tag.to_vec())));
}

#[test]
fn control_plane_killed_and_restarted_while_a_turn_channel_relays() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let ports = turn::relay_ports(16);
    let (control, base) = Proc::control(dir.path(), segment, "2");
    let (_dataplane, _, turn_addr) =
        Proc::dataplane_with(dir.path(), segment, "2", &turn_args(&ports), &[]);
    let http = common::Http::new();
    let peer = turn::peer();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut client = TurnClient::new(turn_addr, TURN_SECRET, "streamer", turn::unix_now());
    let relayed = allocate_with_channel(&mut client, &peer);
    wait_metrics(&http, &base, "the allocation", |m| {
        allocations_seen(m, 2) == 1.0
            && metric(m, "bosonserver_turn_allocation_users ") == Some(1.0)
    });
    // Without a secrets file, SIGHUP (a service manager's reload) is harmless.
    control.signal("HUP");
    control.wait_for("SIGHUP: no --turn-secrets-file", "SIGHUP");
    let (status, _) = http.get(&format!("{base}/health/live"));
    assert_eq!(status, 200);

    // A steady ChannelData stream to the peer, one sequence-numbered datagram per
    // millisecond, across the kill.
    const PACKETS: u32 = 3000;
    let received = Arc::new(AtomicU32::new(0));
    let sender = std::thread::spawn(move || {
        for seq in 0..PACKETS {
            let datagram = [&seq.to_le_bytes()[..], &[7u8; 160]].concat();
            client.send_channel_data(CHANNEL, &datagram).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        client
    });
    let counted = Arc::clone(&received);
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for seq in 0..PACKETS {
            let (len, from) = peer.recv_from(&mut buf).expect("lost across the restart");
            assert_eq!(from, relayed);
            assert_eq!(len, 164);
            let got = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(
                got, seq,
                "lost or reordered across the control plane's restart"
            );
            counted.store(seq + 1, Ordering::Relaxed);
        }
        peer
    });

    kill_while_flowing(control, &received, "TURN");

    let (_control, base) = Proc::control(dir.path(), segment, "2");
    let mut client = sender.join().unwrap();
    let peer = receiver.join().unwrap();
    assert_eq!(received.load(Ordering::Relaxed), PACKETS);

    // The new control plane knows the allocation again: the dataplane re-announced it.
    wait_metrics(&http, &base, "the re-announced allocation", |m| {
        allocations_seen(m, 2) == 1.0
            && metric(m, "bosonserver_turn_allocation_users ") == Some(1.0)
    });
    // It still relays both ways and refreshes, and its end reaches the new control plane.
    turn_round_trip(&mut client, &peer, relayed, b"after the restart");
    let refreshed = client.refresh(600).unwrap();
    assert!(refreshed.is_success(), "Refresh: {:?}", refreshed.code);
    turn_round_trip(&mut client, &peer, relayed, b"refreshed");
    assert!(client.refresh(0).unwrap().is_success());
    wait_metrics(&http, &base, "the allocation's end", |m| {
        allocations_seen(m, 2) == 0.0
            && metric(m, "bosonserver_turn_allocation_users ") == Some(0.0)
    });
}

/// ICE credentials the control plane at `base` hands `token` now: (username, password).
fn ice_credential(http: &common::Http, base: &str, token: &str) -> (String, String) {
    let (status, body) = http.get_auth(&format!("{base}/api/v1/turn/ice"), token);
    assert_eq!(status, 200, "{body}");
    let turn = &body["iceServers"][1];
    (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    )
}

/// Waits (10 s) until `/api/v1/turn/ice` mints with `secret`; returns that credential.
fn ice_minted_with(http: &common::Http, base: &str, token: &str, secret: &str) -> (String, String) {
    for _ in 0..200 {
        let (username, password) = ice_credential(http, base, token);
        if password == TurnSecret::new(secret).password_for(&username) {
            return (username, password);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the control plane never minted with {secret:?}");
}

/// The code of an Allocate with `credential` at `server` (`None`: success), once it is
/// `want`: settings reach the dataplane asynchronously, so it is retried for 10 s (no faster
/// than the server's rate limit on 401s from one address allows).
fn allocate_until(server: SocketAddr, credential: &(String, String), want: Option<u16>) {
    let mut last = None;
    for _ in 0..40 {
        let mut client = TurnClient::with_credential(server, &credential.0, &credential.1);
        let answer = client.allocate().unwrap();
        if answer.code == want {
            if answer.is_success() {
                assert!(client.refresh(0).unwrap().is_success());
            }
            return;
        }
        last = answer.code;
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("an Allocate with {credential:?} answered {last:?}, never {want:?}");
}

/// A credential minted with `secret` for `user`, as the control plane would.
fn credential(secret: &str, user: &str) -> (String, String) {
    let minted =
        boson_shared::TurnCredential::mint(&TurnSecret::new(secret), user, turn::unix_now() + 3600);
    (minted.username, minted.password)
}

#[test]
fn rotated_turn_secrets_reach_a_running_and_a_restarted_dataplane() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let ports = turn::relay_ports(16);
    let file = dir.path().join("turn-secrets");
    // 22 bytes, as long as the rotated file below: see the SIGHUP step.
    std::fs::write(&file, "old-secret\n#ooooooooo\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let (control, base) = Proc::control_with(
        dir.path(),
        segment,
        "2",
        &["--turn-secrets-file", file_arg],
        &[("TURN_STATIC_SECRET", None)],
    );
    // The dataplane's own environment has another secret: the control plane's wins.
    let dataplane_env = [("TURN_STATIC_SECRET", Some("the-dataplanes-own-secret"))];
    let (dataplane, _, turn_addr) =
        Proc::dataplane_with(dir.path(), segment, "2", &turn_args(&ports), &dataplane_env);
    let http = common::Http::new();
    let token = http.register(&base, &common::node_body(IDS[0], KEYS[0]));
    let old = ice_minted_with(&http, &base, &token, "old-secret");
    allocate_until(turn_addr, &old, None);
    allocate_until(
        turn_addr,
        &credential("the-dataplanes-own-secret", "x"),
        Some(401),
    );

    // An allocation made under the old secret, relaying.
    let peer = turn::peer();
    let mut before = TurnClient::with_credential(turn_addr, &old.0, &old.1);
    let relayed = allocate_with_channel(&mut before, &peer);
    turn_round_trip(&mut before, &peer, relayed, b"before the rotation");

    // Rotation on SIGHUP alone: the file is rewritten in place at the same length and its
    // modification time put back, so the poll sees no change.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "new-secret\nold-secret\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    control.signal("HUP");
    let reloaded = control.wait_for("TURN secrets reloaded", "cause=");
    assert!(reloaded.contains("SIGHUP"), "{reloaded}");
    let new = ice_minted_with(&http, &base, &token, "new-secret");
    allocate_until(turn_addr, &new, None);
    allocate_until(turn_addr, &old, None);

    // The old secret removed, noticed by the poll alone: old credentials are refused, the
    // allocation made under it relays on (its refresh is refused: it runs out in time).
    std::fs::write(&file, "new-secret\n").unwrap();
    allocate_until(turn_addr, &old, Some(401));
    allocate_until(turn_addr, &new, None);
    turn_round_trip(&mut before, &peer, relayed, b"after the rotation");
    assert_eq!(before.refresh(600).unwrap().code, Some(401));
    turn_round_trip(&mut before, &peer, relayed, b"still relaying");

    // A file the control plane cannot use changes nothing.
    std::fs::write(&file, "# emptied by mistake\n").unwrap();
    control.signal("HUP");
    let refused = control.wait_for("TURN secrets file not used", "cause=");
    assert!(refused.contains("SIGHUP"), "{refused}");
    ice_minted_with(&http, &base, &token, "new-secret");
    allocate_until(turn_addr, &new, None);

    // SIGHUP is the control plane's: the dataplane ignores it.
    dataplane.signal("HUP");
    dataplane.wait_for("SIGHUP ignored", "SIGHUP");
    allocate_until(turn_addr, &new, None);

    // A restarted dataplane starts from its own environment, and the control plane pushes
    // the secrets in use.
    drop(dataplane); // SIGKILL
    let (_dataplane, _, turn_addr) =
        Proc::dataplane_with(dir.path(), segment, "2", &turn_args(&ports), &dataplane_env);
    allocate_until(turn_addr, &new, None);
    allocate_until(turn_addr, &old, Some(401));
    allocate_until(
        turn_addr,
        &credential("the-dataplanes-own-secret", "x"),
        Some(401),
    );
}

/// The TURN URLs (`iceServers[1]`) that `/api/v1/turn/ice` at `base` hands `token`.
fn ice_turn_urls(http: &common::Http, base: &str, token: &str) -> Vec<String> {
    let (status, body) = http.get_auth(&format!("{base}/api/v1/turn/ice"), token);
    assert_eq!(status, 200, "{body}");
    body["iceServers"][1]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap().to_owned())
        .collect()
}

/// Waits (10 s) until `/api/v1/turn/ice` lists exactly the TURN URLs `want`.
fn wait_ice_urls(http: &common::Http, base: &str, token: &str, want: &[String]) {
    let mut urls = Vec::new();
    for _ in 0..200 {
        urls = ice_turn_urls(http, base, token);
        if urls == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the control plane lists {urls:?}, never {want:?}");
}

/// The port in `line` after `key` (`tcp=Some(127.0.0.1:PORT)`).
fn port_after(line: &str, key: &str) -> u16 {
    let rest = &line[line.find(key).unwrap() + key.len()..];
    let addr: SocketAddr = rest[..rest.find(')').unwrap()].parse().unwrap();
    addr.port()
}

/// Issue 14: the control plane of a split host learns the dataplane's listeners over the
/// segment (`Event::Listening`), so ICE lists `?transport=tcp` and `turns:` there too, with
/// the ports the dataplane really bound, and follows a dataplane restarted without them.
#[test]
fn a_split_control_plane_hands_out_the_dataplanes_tcp_and_tls_urls() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("segment");
    let segment = segment.to_str().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    // The control plane first: until a dataplane attaches it knows its defaults only.
    let (_control, base) = Proc::control(dir.path(), segment, "1");
    let http = common::Http::new();
    let token = http.register(&base, &common::node_body(IDS[0], KEYS[0]));
    assert_eq!(
        ice_turn_urls(&http, &base, &token),
        ["turn:127.0.0.1:3478?transport=udp"]
    );

    let mut args = dataplane_args(segment, "1");
    let tls_args = [
        "--turn-tls-listen",
        "127.0.0.1:0",
        "--turn-tls-cert",
        cert.to_str().unwrap(),
        "--turn-tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(&tls_args);
    let dataplane = Proc::spawn(dir.path(), &args);
    let line = dataplane.wait_line("STUN/TURN over TCP/TLS started");
    let (tcp, tls) = (
        port_after(&line, "tcp=Some("),
        port_after(&line, "tls=Some("),
    );
    let udp: SocketAddr = dataplane
        .wait_for("dataplane started", "local_addr=")
        .parse()
        .unwrap();
    wait_ice_urls(
        &http,
        &base,
        &token,
        &[
            format!("turn:127.0.0.1:{}?transport=udp", udp.port()),
            format!("turn:127.0.0.1:{tcp}?transport=tcp"),
            format!("turns:127.0.0.1:{tls}?transport=tcp"),
        ],
    );

    // A dataplane restarted without the stream listeners takes their URLs away.
    drop(dataplane); // SIGKILL
    let (_dataplane, _, udp) =
        Proc::dataplane_with(dir.path(), segment, "1", &["--no-turn-tcp"], &[]);
    wait_ice_urls(
        &http,
        &base,
        &token,
        &[format!("turn:127.0.0.1:{}?transport=udp", udp.port())],
    );
}
