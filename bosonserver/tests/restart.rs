//! Issue 5: the control plane and the dataplane as two processes on one shared-memory
//! segment, each killed with SIGKILL and restarted while the other runs.

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

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use boson_shared::NodeId;
use ws_client::{Client, connect};

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

    /// `bosonserver control` on `segment`; returns it with its REST API base URL.
    fn control(dir: &Path, segment: &str, workers: &str) -> (Self, String) {
        let proc = Self::spawn(
            dir,
            &[
                "control",
                "--http-listen",
                "127.0.0.1:0",
                "--segment",
                segment,
                "--workers",
                workers,
            ],
        );
        let base = proc.wait_for("listening on ", "listening on ");
        (proc, base)
    }

    /// `bosonserver dataplane` on `segment`; returns it with its relay address.
    fn dataplane(dir: &Path, segment: &str, workers: &str) -> (Self, SocketAddr) {
        let proc = Self::spawn(dir, &dataplane_args(segment, workers));
        let relay = proc.wait_for("node relay listening", "relay_addr=");
        proc.wait_for("dataplane attached to the segment", "incarnation=");
        (proc, relay.parse().unwrap())
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
        let mut client = Client::new(connect(relay));
        assert_eq!(client.upgrade(Some(token)).unwrap(), 101);
        match client.recv_message().unwrap() {
            Ok((0x07, _)) => return client,
            Ok((kind, payload)) => panic!("expected READY, got {kind}: {payload:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
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
            let (src, packet) = client_b.recv_packet();
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

    std::thread::sleep(Duration::from_millis(300));
    drop(control); // SIGKILL
    let at_kill = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let during = received.load(Ordering::Relaxed);
    assert!(
        during > at_kill + 100,
        "the relay stalled without its control plane: {at_kill} then {during}"
    );

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
    assert_eq!(client_c.recv_packet(), (a, b"after the restart".to_vec()));
    client_c.send(&b, b"and onwards").unwrap();
    assert_eq!(client_b.recv_packet(), (c, b"and onwards".to_vec()));
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
    assert_eq!(client_b.recv_packet(), (a, b"hello again".to_vec()));
    let metrics = wait_metrics(&http, &base, "the second dataplane", |m| {
        metric(m, "bosonserver_channel_relay_sessions ") == Some(2.0)
    });
    assert_eq!(
        metric(&metrics, "bosonserver_channel_dataplane_incarnation "),
        Some(2.0)
    );
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
