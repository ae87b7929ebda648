//! What the WebSocket and QUIC generator tests share: nodes, a scenario, and the checks of a
//! paced run and of a relay's count.

use std::net::SocketAddr;
use std::time::Duration;

use boson_bench::clock;
use boson_bench::generator::Rate;
use boson_bench::nodes::{NodeCredential, TokenKeys};
use boson_bench::relay_load::{RelayLoad, RelayOutcome};

/// `count` nodes with tokens minted with `secret`.
pub(crate) fn nodes(secret: &[u8], count: usize) -> Vec<NodeCredential> {
    let now = i64::try_from(clock::unix_now()).unwrap();
    TokenKeys::new(secret)
        .unwrap()
        .mint_nodes(count, now)
        .unwrap()
}

/// Half a second of `pairs` pairs at `rate`, 100-byte packets, one thread.
pub(crate) fn load(relay: SocketAddr, secret: &[u8], pairs: usize, rate: Rate) -> RelayLoad {
    RelayLoad {
        relay,
        nodes: nodes(secret, 2 * pairs),
        pairs,
        packet: 100,
        rate,
        duration: Duration::from_millis(500),
        drain: Duration::from_millis(500),
        batch: 16,
        threads: 1,
        cores: Vec::new(),
        server_pid: None,
        server_core: None,
    }
}

/// Gives the first node a token signed with another secret, which the relay must refuse.
pub(crate) fn spoil_first_token(load: &mut RelayLoad) {
    let other = TokenKeys::new(b"another secret, also 32 bytes long!")
        .unwrap()
        .mint(
            &load.nodes[0].node,
            i64::try_from(clock::unix_now()).unwrap(),
        )
        .unwrap();
    load.nodes[0].token = other;
}

/// Half a second at 4k/s of `packet`-byte packets: paced, nothing lost, reordered, foreign
/// or closed, a latency, and MB/s that match messages/s.
pub(crate) fn assert_paced_without_loss(outcome: &RelayOutcome, packet: usize) {
    assert!(
        (1_600..=2_400).contains(&outcome.sent),
        "paced at 4k/s for 0.5 s: {outcome:?}"
    );
    assert_eq!(outcome.received, outcome.sent, "{outcome:?}");
    assert_eq!(outcome.lost, 0);
    assert_eq!(
        outcome.reordered, 0,
        "one path, one relay task: {outcome:?}"
    );
    assert_eq!(
        (outcome.foreign, outcome.peer_gone, outcome.closed),
        (0, 0, 0),
        "{outcome:?}"
    );
    assert!(outcome.latency.p50_us > 0.0, "{outcome:?}");
    let mbps = outcome.delivered_mps * packet as f64 / 1e6;
    assert!((outcome.delivered_mbps - mbps).abs() < 1e-9);
}

/// Waits (2 s at most) until the relay's count of RECVs, `relayed`, reaches what arrived:
/// every RECV that arrived was relayed and counted once its connections closed.
pub(crate) fn assert_relay_counted(relayed: impl Fn() -> u64, outcome: &RelayOutcome) {
    for _ in 0..100 {
        if relayed() >= outcome.received {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the baseline counted fewer RECVs than arrived: {outcome:?}");
}
