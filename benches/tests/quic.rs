//! The QUIC generator against the quinn baseline, both in this process.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use boson_bench::generator::Rate;

use boson_bench::quic_baseline::{self, QuicRelay};
use boson_bench::quic_client::{ClientSetup, MAX_PACKET, QuicNode};
use boson_bench::quic_generator::{self, QuicLoadConfig};
use indicatif::ProgressBar;

const SECRET: &[u8] = b"the in-process quic baseline's secret";

struct Baseline {
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    relay: Arc<QuicRelay>,
    setup: ClientSetup,
}

/// A baseline on a runtime of its own, with a fresh certificate; it stops when the runtime
/// drops.
fn baseline() -> Baseline {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = made.cert.pem();
    let server =
        quic_baseline::server_config(cert.as_bytes(), made.signing_key.serialize_pem().as_bytes())
            .unwrap();
    let relay = Arc::new(QuicRelay::new(SECRET).unwrap());
    let endpoint = runtime
        .block_on(async { quic_baseline::bind("127.0.0.1:0".parse().unwrap(), server) })
        .unwrap();
    let addr = endpoint.local_addr().unwrap();
    runtime.spawn(quic_baseline::serve(endpoint, Arc::clone(&relay)));
    Baseline {
        _runtime: runtime,
        addr,
        relay,
        setup: ClientSetup::new(cert.as_bytes()).unwrap(),
    }
}

fn config(baseline: &Baseline, pairs: usize, rate: Rate) -> QuicLoadConfig {
    QuicLoadConfig {
        load: common::load(baseline.addr, SECRET, pairs, rate),
        setup: baseline.setup.clone(),
    }
}

#[test]
fn a_fixed_rate_through_the_baseline_loses_nothing() {
    let baseline = baseline();
    let mut config = config(&baseline, 4, Rate::Pps(4_000));
    config.load.threads = 2;
    config.load.packet = 1100;
    let outcome = quic_generator::run(&config, &ProgressBar::hidden()).unwrap();
    common::assert_paced_without_loss(&outcome, 1100);
    assert_eq!(outcome.generator_drops, Some(0), "{outcome:?}");
}

#[test]
fn max_rate_through_the_baseline() {
    let baseline = baseline();
    let config = config(&baseline, 2, Rate::Max);
    let outcome = quic_generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(outcome.received > 1_000, "{outcome:?}");
    assert!(outcome.received <= outcome.sent, "{outcome:?}");
    assert_eq!((outcome.foreign, outcome.closed), (0, 0), "{outcome:?}");
    assert!(outcome.generator_ns_per_message.is_some(), "{outcome:?}");
    common::assert_relay_counted(
        || baseline.relay.stats().relayed.load(Ordering::Relaxed),
        &outcome,
    );
}

#[test]
fn the_largest_packet_fits_and_one_more_byte_does_not() {
    let baseline = baseline();
    let mut config = config(&baseline, 1, Rate::Pps(1_000));
    config.load.packet = MAX_PACKET;
    config.load.duration = Duration::from_millis(300);
    let outcome = quic_generator::run(&config, &ProgressBar::hidden()).unwrap();
    assert!(outcome.sent > 0, "{outcome:?}");
    assert_eq!(outcome.received, outcome.sent, "{outcome:?}");

    let node = &common::nodes(SECRET, 1)[0];
    let error = QuicNode::connect(
        &baseline.setup,
        baseline.addr,
        node.node,
        &node.token,
        MAX_PACKET + 1,
        Duration::from_secs(5),
    )
    .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("packets of at most {MAX_PACKET} bytes fit")),
        "{text}"
    );
}

#[test]
fn refused_tokens_are_reported_clearly() {
    let baseline = baseline();
    let mut config = config(&baseline, 1, Rate::Pps(100));
    common::spoil_first_token(&mut config.load);
    let error = quic_generator::run(&config, &ProgressBar::hidden()).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("pair 0 sender"), "{text}");
    assert!(text.contains("before READY"), "{text}");
    assert!(text.contains("unauthorized"), "{text}");
    assert_eq!(baseline.relay.stats().refused.load(Ordering::Relaxed), 1);
}

#[test]
fn a_certificate_not_trusted_is_refused() {
    let baseline = baseline();
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut config = config(&baseline, 1, Rate::Pps(100));
    config.setup = ClientSetup::new(stranger.cert.pem().as_bytes()).unwrap();
    let error = quic_generator::run(&config, &ProgressBar::hidden()).unwrap_err();
    assert!(format!("{error:#}").contains("pair 0 sender"), "{error:#}");
}
