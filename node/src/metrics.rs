//! Every metric the agent exports, in Prometheus text, rendered from a snapshot of the
//! shell's counters. The one place metric names, units and help strings are defined.

use std::fmt::Write as _;

/// One peer's figures.
#[derive(Debug, Clone)]
pub struct PeerFigures {
    /// The peer's node id.
    pub node: String,
    /// Its current route label, `none` when it has none.
    pub route: &'static str,
    /// Bytes sent to it, received from it.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Packets sent, received.
    pub tx_packets: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Times its route changed.
    pub route_switches: u64,
    /// Whether a direct path to it is up (whatever route its packets take).
    pub direct_up: bool,
    /// Direct paths to it found so far.
    pub direct_paths: u64,
}

/// What the agent exports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per peer.
    pub peers: Vec<PeerFigures>,
    /// Whether a relay session is open.
    pub relay_connected: bool,
    /// Last measured round trip to the relay host, seconds.
    pub relay_rtt_seconds: Option<f64>,
    /// Relay sessions opened.
    pub relay_sessions: u64,
    /// Registrations that succeeded.
    pub registrations: u64,
    /// Heartbeats that succeeded, failed.
    pub heartbeats_ok: u64,
    /// Heartbeats that failed.
    pub heartbeats_failed: u64,
    /// Packets dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
}

/// The route labels a peer can have, so every series exists from the start.
const ROUTES: [&str; 5] = ["direct", "turn", "quic", "ws", "none"];

/// Renders the snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP boson_node_peer_route 1 for the route each peer's packets take now.\n\
         # TYPE boson_node_peer_route gauge"
    );
    for p in &s.peers {
        for route in ROUTES {
            let v = u8::from(p.route == route);
            let _ = writeln!(
                out,
                "boson_node_peer_route{{peer=\"{}\",route=\"{route}\"}} {v}",
                p.node
            );
        }
    }
    for (name, help, get) in [
        (
            "boson_node_peer_tx_bytes_total",
            "Bytes of WireGuard packets sent to the peer.",
            (|p: &PeerFigures| p.tx_bytes) as fn(&PeerFigures) -> u64,
        ),
        (
            "boson_node_peer_rx_bytes_total",
            "Bytes of WireGuard packets received from the peer.",
            |p| p.rx_bytes,
        ),
        (
            "boson_node_peer_tx_packets_total",
            "WireGuard packets sent to the peer.",
            |p| p.tx_packets,
        ),
        (
            "boson_node_peer_rx_packets_total",
            "WireGuard packets received from the peer.",
            |p| p.rx_packets,
        ),
        (
            "boson_node_route_switches_total",
            "Times the peer's route changed.",
            |p| p.route_switches,
        ),
        (
            "boson_node_direct_paths_total",
            "Direct paths to the peer that hole punching found.",
            |p| p.direct_paths,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in &s.peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", p.node, get(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP boson_node_direct_path_up 1 while a direct path to the peer answers.\n\
         # TYPE boson_node_direct_path_up gauge"
    );
    for p in &s.peers {
        let _ = writeln!(
            out,
            "boson_node_direct_path_up{{peer=\"{}\"}} {}",
            p.node,
            u8::from(p.direct_up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP boson_node_relay_connected 1 while a relay session is open.\n\
         # TYPE boson_node_relay_connected gauge\n\
         boson_node_relay_connected {}",
        u8::from(s.relay_connected)
    );
    if let Some(rtt) = s.relay_rtt_seconds {
        let _ = writeln!(
            out,
            "# HELP boson_node_relay_rtt_seconds Last round trip to the relay host.\n\
             # TYPE boson_node_relay_rtt_seconds gauge\n\
             boson_node_relay_rtt_seconds {rtt}"
        );
    }
    for (name, help, value) in [
        (
            "boson_node_relay_sessions_total",
            "Relay sessions that reached READY.",
            s.relay_sessions,
        ),
        (
            "boson_node_registrations_total",
            "Successful registrations.",
            s.registrations,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP boson_node_heartbeats_total Heartbeats by outcome.\n\
         # TYPE boson_node_heartbeats_total counter\n\
         boson_node_heartbeats_total{{outcome=\"ok\"}} {}\n\
         boson_node_heartbeats_total{{outcome=\"failed\"}} {}",
        s.heartbeats_ok, s.heartbeats_failed
    );
    let _ = writeln!(
        out,
        "# HELP boson_node_dropped_packets_total Packets dropped, by reason.\n\
         # TYPE boson_node_dropped_packets_total counter"
    );
    for (reason, value) in &s.drops {
        let _ = writeln!(
            out,
            "boson_node_dropped_packets_total{{reason=\"{reason}\"}} {value}"
        );
    }
    out
}
