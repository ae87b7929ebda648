//! The WebSocket generator against the tokio-tungstenite baseline, both in this process.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use boson_bench::clock;
use boson_bench::generator::Rate;
use boson_bench::nodes::TokenKeys;
use boson_bench::ws_baseline::{self, Relay};
use boson_bench::ws_client::Auth;
use boson_bench::ws_generator::{self, WsLoadConfig};
use indicatif::ProgressBar;

const SECRET: &[u8] = b"the in-process baseline's test secret";

/// A baseline on a runtime of its own; it stops when the runtime drops.
fn baseline() -> (tokio::runtime::Runtime, SocketAddr, Arc<Relay>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = Arc::new(Relay::new(SECRET, ws_baseline::DEFAULT_QUEUE).unwrap());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(ws_baseline::serve(listener, Arc::clone(&relay)));
    (runtime, addr, relay)
}

fn config(relay: SocketAddr, pairs: usize, rate: Rate) -> WsLoadConfig {
    WsLoadConfig {
        load: common::load(relay, SECRET, pairs, rate),
        path: ws_baseline::PATH.to_owned(),
        auth: Auth::Header,
    }
}

#[test]
fn a_fixed_rate_through_the_baseline_loses_nothing() {
    let (_runtime, addr, _relay) = baseline();
    let mut config = config(addr, 4, Rate::Pps(4_000));
    config.load.threads = 2;
    config.load.packet = 1200;
    let outcome = ws_generator::run(&config, &ProgressBar::hidden()).unwrap();
    common::assert_paced_without_loss(&outcome, 1200);
}

#[test]
fn max_rate_and_auth_messages_through_the_baseline() {
    let (_runtime, addr, relay) = baseline();
    let mut config = config(addr, 2, Rate::Max);
    config.auth = Auth::Message;
    let outcome = ws_generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(outcome.received > 1_000, "{outcome:?}");
    assert!(outcome.received <= outcome.sent, "{outcome:?}");
    assert_eq!((outcome.foreign, outcome.closed), (0, 0), "{outcome:?}");
    // The generator's thread ran while sending, for at most as long as it sent.
    let cpu = outcome.generator_cpu_s.unwrap();
    assert!(cpu > 0.0 && cpu <= outcome.elapsed_s * 1.05, "{outcome:?}");
    assert!(
        outcome
            .generator_cpu_ns_per_message
            .is_some_and(|ns| ns > 0.0)
    );
    common::assert_relay_counted(|| relay.stats().relayed.load(Ordering::Relaxed), &outcome);
}

#[test]
fn refused_tokens_are_reported_clearly() {
    let (_runtime, addr, _relay) = baseline();
    let mut config = config(addr, 1, Rate::Pps(100));
    common::spoil_first_token(&mut config.load);
    let error = ws_generator::run(&config, &ProgressBar::hidden()).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("pair 0 sender"), "{text}");
    assert!(text.contains("401"), "{text}");
}

/// Registration through bosonserver's REST API, when a build of it sits next to the test's
/// `boson-bench`: the tokens it issues verify with the baseline's checks and the same secret,
/// so the baseline's minted tokens and bosonserver's are the same kind.
#[test]
fn bosonserver_issues_tokens_the_baseline_accepts_when_built() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_boson-bench"));
    let bosonserver = bench.with_file_name("bosonserver");
    if !bosonserver.is_file() {
        eprintln!("skipped: no bosonserver build next to boson-bench (cargo build -p bosonserver)");
        return;
    }
    let secret = "a bosonserver test secret, 32 bytes or more";
    let dir = tempfile::tempdir().unwrap();
    let free_tcp = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    // TURN listens on UDP and, by default, TCP at the same port: free on both.
    let free_tcp_and_udp = || loop {
        let addr = free_tcp();
        if std::net::UdpSocket::bind(addr).is_ok() {
            break addr;
        }
    };
    let (api, turn) = (free_tcp(), free_tcp_and_udp());
    let mut child = std::process::Command::new(&bosonserver)
        .args(["run", "--http-listen", &api.to_string()])
        .args([
            "--turn-listen",
            &turn.to_string(),
            "--relay-ports",
            "58900-58909",
        ])
        .args(["--workers", "1", "--no-pin", "--jwt-secret", secret])
        .args(["--register-rate-limit", "1000"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    // A debug build starting beside max-rate tests on a busy machine: a generous 60 s,
    // and the server's own words if it exits or never listens.
    let mut registered = None;
    let mut exited = None;
    for _ in 0..1200 {
        if std::net::TcpStream::connect(api).is_ok() {
            registered = Some(boson_bench::nodes::register(api, 3));
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    let Some(registered) = registered else {
        panic!("the REST API never came up (exit: {exited:?}); the server said:\n{log}");
    };
    let nodes = registered.unwrap_or_else(|error| panic!("{error:#}; the server said:\n{log}"));
    let keys = TokenKeys::new(secret.as_bytes()).unwrap();
    let now = i64::try_from(clock::unix_now()).unwrap();
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        assert_eq!(keys.verify(&node.token, now), Ok(node.node));
    }
}
