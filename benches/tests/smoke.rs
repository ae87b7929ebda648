//! End to end on loopback: the generator against the raw forwarder in process, then the
//! `boson-bench run --smoke` binary (raw forwarder always; bosonserver too when a build of it
//! sits next to the test's `boson-bench`, as after `cargo build -p bosonserver`), and
//! `run --ws --smoke` (the tokio-tungstenite baseline always; bosonserver's relay when built)
//! and `run --quic --smoke` (the quinn baseline always; bosonserver's QUIC relay when built),
//! and `run --tcp --smoke` (TURN over TCP; bosonserver when built).
//!
//! The full smoke over every server is `benches/smoke.sh`, which builds bosonserver first.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boson_bench::clock;
use boson_bench::forwarder::{self, Batching};
use boson_bench::generator::{self, LoadConfig, Rate, Target};
use boson_bench::report::Report;
use boson_bench::ws_report::WsReport;
use indicatif::ProgressBar;

#[test]
fn generator_through_the_raw_forwarder_in_process() {
    let socket = forwarder::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let deadline = clock::now() + Duration::from_secs(5);
    let thread = std::thread::spawn(move || {
        forwarder::run_until(&socket, deadline, Batching::Mmsg).unwrap()
    });
    let config = LoadConfig {
        target: Target::Raw { forwarder: addr },
        flows: 3,
        payload: 100,
        rate: Rate::Pps(10_000),
        duration: Duration::from_millis(500),
        drain: Duration::from_millis(300),
        batch: 16,
        core: None,
        user_prefix: "test".into(),
        server_pid: None,
        server_core: None,
        gso: false,
        sink_per_flow: false,
    };
    let outcome = generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(
        (3_000..=6_000).contains(&outcome.sent),
        "paced at 10k pps for 0.5 s: {outcome:?}"
    );
    assert!(outcome.received > 0, "{outcome:?}");
    assert!(outcome.received <= outcome.sent, "{outcome:?}");
    assert_eq!(outcome.foreign, 0, "{outcome:?}");
    assert!(outcome.latency.p50_us > 0.0, "{outcome:?}");
    assert!(outcome.delivered_pps > 0.0);
    let stats = thread.join().unwrap();
    assert_eq!(stats.setups, 3, "one setup per flow");
    assert_eq!(stats.forwarded, outcome.received + outcome.sink_drops);
}

/// GSO sends: each turn's datagrams of a flow leave as one message, which the forwarder
/// (no GRO) receives split by the kernel; every one arrives, stamped, at the GRO sink.
#[test]
fn gso_generator_through_the_raw_forwarder_in_process() {
    let socket = forwarder::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let deadline = clock::now() + Duration::from_secs(5);
    let thread = std::thread::spawn(move || {
        forwarder::run_until(&socket, deadline, Batching::Mmsg).unwrap()
    });
    let config = LoadConfig {
        target: Target::Raw { forwarder: addr },
        flows: 2,
        payload: 1200,
        rate: Rate::Pps(10_000),
        duration: Duration::from_millis(500),
        drain: Duration::from_millis(300),
        batch: 64,
        core: None,
        user_prefix: "test".into(),
        server_pid: None,
        server_core: None,
        gso: true,
        sink_per_flow: false,
    };
    let outcome = generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(
        (3_000..=6_000).contains(&outcome.sent),
        "paced at 10k pps for 0.5 s: {outcome:?}"
    );
    assert!(outcome.received > 0, "{outcome:?}");
    assert_eq!(outcome.foreign, 0, "{outcome:?}");
    let stats = thread.join().unwrap();
    assert_eq!(stats.forwarded, outcome.received + outcome.sink_drops);
    assert_eq!(outcome.sent, stats.forwarded, "{outcome:?}");
}

/// The forwarder's GRO/GSO mode: GSO batches from the generator at max rate arrive as GRO
/// runs and leave as GSO sends, a send for many datagrams, and every forwarded datagram
/// arrives at the sink, stamped and whole, or is dropped there (at max rate the sink can
/// overflow).
#[test]
fn gso_generator_through_the_gro_gso_forwarder_in_process() {
    let socket = forwarder::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let deadline = clock::now() + Duration::from_secs(5);
    let thread = std::thread::spawn(move || {
        forwarder::run_until(&socket, deadline, Batching::GroGso).unwrap()
    });
    let config = LoadConfig {
        target: Target::Raw { forwarder: addr },
        flows: 2,
        payload: 1200,
        rate: Rate::Max,
        duration: Duration::from_millis(300),
        drain: Duration::from_millis(300),
        batch: 64,
        core: None,
        user_prefix: "test".into(),
        server_pid: None,
        server_core: None,
        gso: true,
        sink_per_flow: false,
    };
    let outcome = generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(outcome.received > 1_000, "{outcome:?}");
    assert_eq!(outcome.foreign, 0, "{outcome:?}");
    let stats = thread.join().unwrap();
    // The sink's drops come from /proc/net/udp, which counts skbs: a GSO batch the full sink
    // drops counts once, for up to GSO_SEGMENTS datagrams.
    assert!(
        outcome.received <= stats.forwarded
            && stats.forwarded - outcome.received
                <= outcome.sink_drops * forwarder::GSO_SEGMENTS as u64,
        "forwarded datagrams are received or dropped at the sink: {stats:?} {outcome:?}"
    );
    assert!(
        stats.sends * 4 <= stats.forwarded,
        "GSO sends carry runs of datagrams: {stats:?}"
    );
}

/// Held by every `run --smoke` of this file: they pin their servers and generators to the
/// same two cores, so side by side they would measure each other. QUIC datagrams are
/// unreliable, and a relay starved of its core drops them (a full send queue), which the
/// QUIC smoke run counts as loss at 2k/s.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `command` alone (see [`ONE_RUN_AT_A_TIME`]).
fn run_alone(command: &mut Command) -> std::process::Output {
    let _turn = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    command.output().unwrap()
}

/// The server core for the smoke runs: 1 where there are two cores or more.
fn server_core() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(2).saturating_sub(1).to_string()
}

fn smoke(servers: &str, json: &Path) -> Report {
    let output = run_alone(
        Command::new(env!("CARGO_BIN_EXE_boson-bench"))
            .args(["run", "--smoke", "--quiet", "--servers", servers])
            .args(["--server-core", &server_core(), "--generator-core", "0"])
            .arg("--json")
            .arg(json)
            .env_remove("CI"),
    );
    assert_success(&output);
    let report: Report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert!(report.silent().is_empty());
    report
}

#[test]
fn smoke_run_of_the_raw_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let report = smoke("raw", &dir.path().join("smoke.json"));
    assert_eq!(
        report.records.len(),
        4,
        "both sizes at 2k packets/s and at max rate, one round"
    );
    assert!(report.medians.iter().all(|m| m.delivered_pps > 0.0));
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
}

#[test]
fn smoke_run_of_bosonserver_when_built() {
    let bench = Path::new(env!("CARGO_BIN_EXE_boson-bench"));
    let bosonserver = bench.with_file_name("bosonserver");
    if !bosonserver.is_file() {
        eprintln!(
            "skipped: no {} (cargo build -p bosonserver; benches/smoke.sh runs it all)",
            bosonserver.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = smoke(
        "boson-uring,boson-epoll,raw",
        &dir.path().join("smoke.json"),
    );
    assert_eq!(report.records.len(), 12, "3 servers, 2 sizes, 2 loads");
    assert!(
        report.ratios.iter().all(|r| r.pps.is_some()),
        "{:?}",
        report.ratios
    );
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
}

/// `run --tcp --smoke` against both of bosonserver's backends: every allocation over a TCP
/// connection, nothing lost at 2k/s, something relayed at max rate.
#[test]
fn tcp_smoke_run_of_bosonserver_when_built() {
    if !bosonserver_built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("smoke-tcp.json");
    let output = run_alone(
        Command::new(env!("CARGO_BIN_EXE_boson-bench"))
            .args(["run", "--tcp", "--smoke", "--quiet"])
            .args(["--servers", "boson-uring,boson-epoll"])
            .args(["--server-core", &server_core(), "--generator-core", "0"])
            .arg("--json")
            .arg(&json)
            .env_remove("CI"),
    );
    assert_success(&output);
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.records.len(), 8, "2 servers, 2 sizes, 2 loads");
    assert!(report.command.contains("--tcp"), "{}", report.command);
    assert!(report.medians.iter().all(|m| m.delivered_pps > 0.0));
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
}

#[test]
fn tcp_run_refuses_the_raw_forwarder() {
    let output = Command::new(env!("CARGO_BIN_EXE_boson-bench"))
        .args(["run", "--tcp", "--smoke", "--quiet", "--servers", "raw"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no TCP listener"), "{stderr}");
}

/// Whether a bosonserver build sits next to the test's `boson-bench`; says so if not.
fn bosonserver_built() -> bool {
    let bench = Path::new(env!("CARGO_BIN_EXE_boson-bench"));
    let built = bench.with_file_name("bosonserver").is_file();
    if !built {
        eprintln!("skipped: no bosonserver build next to boson-bench (cargo build -p bosonserver)");
    }
    built
}

/// Fails with the run's stdout and stderr unless it exited 0.
fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `run --ws --smoke` against the given relays; the exit status and the report.
fn ws_smoke(servers: &str, json: &Path) -> (std::process::Output, Option<WsReport>) {
    relay_smoke("--ws", servers, json)
}

/// `run <mode> --smoke` against the given node relays; the exit status and the report.
fn relay_smoke(mode: &str, servers: &str, json: &Path) -> (std::process::Output, Option<WsReport>) {
    let output = run_alone(
        Command::new(env!("CARGO_BIN_EXE_boson-bench"))
            .args(["run", mode, "--smoke", "--quiet", "--ws-servers", servers])
            .args(["--server-core", &server_core(), "--generator-core", "0"])
            .arg("--json")
            .arg(json),
    );
    let report = std::fs::read_to_string(json)
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    (output, report)
}

#[test]
fn ws_smoke_run_of_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (output, report) = ws_smoke("ws-baseline", &dir.path().join("ws.json"));
    assert_success(&output);
    let report = report.unwrap();
    assert_eq!(
        report.records.len(),
        4,
        "both sizes at 2k/s and max, one round"
    );
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
    assert!(report.medians.iter().all(|m| m.delivered_mps > 0.0));
}

/// bosonserver serves the WebSocket relay: the smoke run against it and the baseline passes,
/// with ratios.
#[test]
fn ws_smoke_run_of_bosonserver_when_built() {
    if !bosonserver_built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, report) = ws_smoke("boson-ws,ws-baseline", &dir.path().join("ws.json"));
    let report = report.unwrap();
    assert_success(&output);
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
    assert!(!report.ratios.is_empty());
    assert!(report.ratios.iter().all(|r| r.delivered.is_some()));
}

#[test]
fn quic_smoke_run_of_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (output, report) = relay_smoke("--quic", "quic-baseline", &dir.path().join("quic.json"));
    assert_success(&output);
    let report = report.unwrap();
    let sizes: Vec<usize> = report.records.iter().map(|r| r.packet).collect();
    assert_eq!(
        sizes,
        [100, 100, 1100, 1100],
        "both QUIC sizes at 2k/s and max, one round"
    );
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
    assert!(report.medians.iter().all(|m| m.delivered_mps > 0.0));
    assert!(
        report.records.iter().all(|r| r
            .outcome
            .as_ref()
            .is_some_and(|o| o.generator_drops.is_some())),
        "the generator's socket drops are measured over QUIC"
    );
}

/// bosonserver's QUIC relay against the quinn baseline and its own WebSocket relay, when a
/// build of it sits next to the test's `boson-bench`: the smoke checks pass and every
/// comparison has a ratio.
#[test]
fn quic_smoke_run_of_bosonserver_when_built() {
    if !bosonserver_built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, report) = relay_smoke(
        "--quic",
        "boson-quic,quic-baseline,boson-ws",
        &dir.path().join("quic.json"),
    );
    assert_success(&output);
    let report = report.unwrap();
    assert_eq!(report.records.len(), 12);
    assert_eq!(report.smoke_failures(), Vec::<String>::new());
    let compared: std::collections::BTreeSet<_> =
        report.ratios.iter().map(|r| (r.ours, r.vs)).collect();
    assert_eq!(
        compared.len(),
        2,
        "quic / baseline and quic / ws: {:?}",
        report.ratios
    );
    assert!(report.ratios.iter().all(|r| r.delivered.is_some()));
}
