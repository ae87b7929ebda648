//! Every metric the dataplane shell exports, defined in one place, rendered in the
//! Prometheus text exposition format (version 0.0.4) from per-worker snapshots.
//!
//! Each series carries a `core` label: the worker index (see
//! [`WorkerStatsSnapshot::worker`]). Per-core series are not summed here; dashboards
//! aggregate with `sum without (core)`. The control plane appends [`render`]'s output to its
//! `/metrics` response, so no exporter crate is needed in this library.

use std::fmt::Write as _;

use crate::stats::{WorkerCounters, WorkerStatsSnapshot};

/// Prefix of every metric name.
pub const PREFIX: &str = "bosonserver_dataplane_";

/// A metric with one series per core.
struct Metric {
    /// Name without [`PREFIX`].
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// Extra label (name, value) of this series, if the metric has several.
    label: Option<(&'static str, &'static str)>,
    value: fn(&WorkerCounters) -> u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// The per-core metrics. Series of one metric are adjacent (the `# HELP`/`# TYPE` header is
/// written once per name).
const METRICS: &[Metric] = &[
    Metric {
        name: "packets_received_total",
        kind: Kind::Counter,
        help: "Datagrams received on the listener and relay sockets.",
        label: None,
        value: |c| c.packets_in,
    },
    Metric {
        name: "bytes_received_total",
        kind: Kind::Counter,
        help: "UDP payload bytes received.",
        label: None,
        value: |c| c.bytes_in,
    },
    Metric {
        name: "packets_sent_total",
        kind: Kind::Counter,
        help: "Datagrams the kernel accepted for sending.",
        label: None,
        value: |c| c.packets_out,
    },
    Metric {
        name: "bytes_sent_total",
        kind: Kind::Counter,
        help: "UDP payload bytes the kernel accepted for sending.",
        label: None,
        value: |c| c.bytes_out,
    },
    Metric {
        name: "send_failures_total",
        kind: Kind::Counter,
        help: "Sends that failed (socket buffer full, unreachable, socket closed).",
        label: None,
        value: |c| c.sends_failed,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "Datagrams the I/O shell dropped before or after the protocol core, by reason (rx_overflow: the kernel dropped them at a full socket receive queue).",
        label: Some(("reason", "rx_truncated")),
        value: |c| c.rx_truncated,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "rx_overflow")),
        value: |c| c.rx_overflow,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "rx_no_buffer")),
        value: |c| c.rx_no_buffer,
    },
    Metric {
        name: "udp_gro_batches_total",
        kind: Kind::Counter,
        help: "Receives that held several datagrams of one sender coalesced by UDP GRO, split into their datagrams.",
        label: None,
        value: |c| c.rx_gro_batches,
    },
    Metric {
        name: "udp_gso_sends_total",
        kind: Kind::Counter,
        help: "Sends that carried several datagrams to one address as UDP GSO segments.",
        label: None,
        value: |c| c.tx_gso_sends,
    },
    Metric {
        name: "udp_offload_refused_total",
        kind: Kind::Counter,
        help: "Sockets on which the kernel refused UDP GRO or GSO, and GSO sends it refused (GSO is then off for that socket).",
        label: None,
        value: |c| c.udp_offload_refused,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "no_tx_buffer")),
        value: |c| c.no_tx_buffer,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "relay_missing")),
        value: |c| c.relay_missing,
    },
    Metric {
        name: "shell_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "bad_core_range")),
        value: |c| c.bad_core_range,
    },
    Metric {
        name: "relay_bind_failures_total",
        kind: Kind::Counter,
        help: "Relay sockets that could not be bound.",
        label: None,
        value: |c| c.relay_bind_failed,
    },
    Metric {
        name: "relay_sockets",
        kind: Kind::Gauge,
        help: "Relay sockets open.",
        label: None,
        value: |c| c.relay_sockets,
    },
    Metric {
        name: "receive_rearms_total",
        kind: Kind::Counter,
        help: "io_uring multishot receives re-armed after ending (mostly: buffer ring ran dry).",
        label: None,
        value: |c| c.rx_rearms,
    },
    Metric {
        name: "loop_turns_total",
        kind: Kind::Counter,
        help: "Event-loop turns.",
        label: None,
        value: |c| c.turns,
    },
    Metric {
        name: "loop_budget_exhausted_total",
        kind: Kind::Counter,
        help: "Event-loop turns that stopped at the datagram budget with input left.",
        label: None,
        value: |c| c.budget_exhausted,
    },
    Metric {
        name: "binding_requests_total",
        kind: Kind::Counter,
        help: "STUN Binding requests answered.",
        label: None,
        value: |c| c.binding_requests,
    },
    Metric {
        name: "binding_responses_total",
        kind: Kind::Counter,
        help: "STUN Binding responses sent, by result.",
        label: Some(("result", "success")),
        value: |c| c.binding_success,
    },
    Metric {
        name: "binding_responses_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("result", "error")),
        value: |c| c.binding_errors,
    },
    Metric {
        name: "binding_indications_total",
        kind: Kind::Counter,
        help: "STUN Binding indications (keepalives) absorbed.",
        label: None,
        value: |c| c.binding_indications,
    },
    Metric {
        name: "turn_allocations",
        kind: Kind::Gauge,
        help: "TURN allocations alive now.",
        label: None,
        value: |c| c.allocations,
    },
    Metric {
        name: "turn_allocation_events_total",
        kind: Kind::Counter,
        help: "TURN allocations created, expired and deleted.",
        label: Some(("event", "created")),
        value: |c| c.allocations_created,
    },
    Metric {
        name: "turn_allocation_events_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("event", "expired")),
        value: |c| c.allocations_expired,
    },
    Metric {
        name: "turn_allocation_events_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("event", "deleted")),
        value: |c| c.allocations_deleted,
    },
    Metric {
        name: "turn_permissions",
        kind: Kind::Gauge,
        help: "TURN permissions installed now.",
        label: None,
        value: |c| c.permissions,
    },
    Metric {
        name: "turn_channels",
        kind: Kind::Gauge,
        help: "TURN channel bindings now, including those cooling down after expiry.",
        label: None,
        value: |c| c.channels,
    },
    Metric {
        name: "turn_responses_total",
        kind: Kind::Counter,
        help: "TURN responses sent, by result.",
        label: Some(("result", "success")),
        value: |c| c.turn_success_responses,
    },
    Metric {
        name: "turn_responses_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("result", "error")),
        value: |c| c.turn_error_responses,
    },
    Metric {
        name: "relayed_packets_total",
        kind: Kind::Counter,
        help: "Payloads relayed, by direction.",
        label: Some(("direction", "to_peer")),
        value: |c| c.relayed_to_peer_packets,
    },
    Metric {
        name: "relayed_packets_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "to_client")),
        value: |c| c.relayed_to_client_packets,
    },
    Metric {
        name: "relayed_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes relayed, without TURN framing, by direction.",
        label: Some(("direction", "to_peer")),
        value: |c| c.relayed_to_peer_bytes,
    },
    Metric {
        name: "relayed_bytes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "to_client")),
        value: |c| c.relayed_to_client_bytes,
    },
    Metric {
        name: "ws_connections_accepted_total",
        kind: Kind::Counter,
        help: "Node relay TCP connections accepted.",
        label: None,
        value: |c| c.ws_accepted,
    },
    Metric {
        name: "ws_connections_closed_total",
        kind: Kind::Counter,
        help: "Node relay TCP connections closed (accepted ones, for any reason).",
        label: None,
        value: |c| c.ws_closed,
    },
    Metric {
        name: "ws_connections_refused_total",
        kind: Kind::Counter,
        help: "Node relay connections refused at the per-worker connection limit.",
        label: None,
        value: |c| c.ws_refused_full,
    },
    Metric {
        name: "ws_connections",
        kind: Kind::Gauge,
        help: "Node relay connections open.",
        label: None,
        value: |c| c.ws_connections,
    },
    Metric {
        name: "ws_sessions",
        kind: Kind::Gauge,
        help: "Node relay sessions authenticated.",
        label: None,
        value: |c| c.ws_sessions,
    },
    Metric {
        name: "ws_auth_rejected_total",
        kind: Kind::Counter,
        help: "Node relay tokens refused.",
        label: None,
        value: |c| c.ws_auth_rejected,
    },
    Metric {
        name: "ws_tls_errors_total",
        kind: Kind::Counter,
        help: "Node relay TLS handshakes or records that failed.",
        label: None,
        value: |c| c.ws_tls_errors,
    },
    Metric {
        name: "ws_frames_received_total",
        kind: Kind::Counter,
        help: "Node relay WebSocket frames received from clients.",
        label: None,
        value: |c| c.ws_frames_in,
    },
    Metric {
        name: "ws_packets_relayed_total",
        kind: Kind::Counter,
        help: "Node relay packets relayed (to a local session or another core).",
        label: None,
        value: |c| c.ws_packets_relayed,
    },
    Metric {
        name: "ws_packet_bytes_total",
        kind: Kind::Counter,
        help: "Node relay WireGuard bytes received in SEND messages.",
        label: None,
        value: |c| c.ws_bytes_relayed,
    },
    Metric {
        name: "ws_socket_bytes_total",
        kind: Kind::Counter,
        help: "Node relay bytes through sockets (plaintext, before TLS), by direction.",
        label: Some(("direction", "in")),
        value: |c| c.ws_bytes_read,
    },
    Metric {
        name: "ws_socket_bytes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "out")),
        value: |c| c.ws_bytes_written,
    },
    Metric {
        name: "ws_drops_total",
        kind: Kind::Counter,
        help: "Node relay frames dropped, by reason (queue_full: oldest frame of a full client queue; other: any other hub drop; cross_core_full: ring to another core full; cross_core_gone: destination left before delivery).",
        label: Some(("reason", "queue_full")),
        value: |c| c.ws_queue_drops,
    },
    Metric {
        name: "ws_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "other")),
        value: |c| c.ws_drops.saturating_sub(c.ws_queue_drops),
    },
    Metric {
        name: "ws_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "cross_core_full")),
        value: |c| c.ws_cross_core_full,
    },
    Metric {
        name: "ws_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "cross_core_gone")),
        value: |c| c.ws_cross_core_gone,
    },
    Metric {
        name: "ws_queued_frames",
        kind: Kind::Gauge,
        help: "Node relay frames waiting in client send queues.",
        label: None,
        value: |c| c.ws_queued_frames,
    },
    Metric {
        name: "ws_cross_core_frames_total",
        kind: Kind::Counter,
        help: "Node relay frames handed between cores, by direction.",
        label: Some(("direction", "out")),
        value: |c| c.ws_cross_core_out,
    },
    Metric {
        name: "ws_cross_core_frames_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "in")),
        value: |c| c.ws_cross_core_in,
    },
    Metric {
        name: "ws_cross_core_ring_bytes",
        kind: Kind::Gauge,
        help: "Node relay bytes waiting in this core's inbound cross-core rings.",
        label: None,
        value: |c| c.ws_cross_core_depth,
    },
    Metric {
        name: "mesh_packets_total",
        kind: Kind::Counter,
        help: "Relay mesh packets between relay hosts, by direction.",
        label: Some(("direction", "out")),
        value: |c| c.mesh_out,
    },
    Metric {
        name: "mesh_packets_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "in")),
        value: |c| c.mesh_in,
    },
    Metric {
        name: "mesh_no_link_drops_total",
        kind: Kind::Counter,
        help: "Packets for a node on another relay host with no mesh link to it, dropped.",
        label: None,
        value: |c| c.mesh_no_link,
    },
    Metric {
        name: "mesh_links",
        kind: Kind::Gauge,
        help: "Relay mesh links open on this core, both directions.",
        label: None,
        value: |c| c.mesh_links,
    },
    Metric {
        name: "quic_sessions",
        kind: Kind::Gauge,
        help: "QUIC relay sessions authenticated.",
        label: None,
        value: |c| c.quic_sessions,
    },
    Metric {
        name: "quic_packets_total",
        kind: Kind::Counter,
        help: "QUIC relay packets, by direction (in: SENDs from clients, out: RECVs queued to clients).",
        label: Some(("direction", "in")),
        value: |c| c.quic_packets_in,
    },
    Metric {
        name: "quic_packets_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("direction", "out")),
        value: |c| c.quic_packets_out,
    },
    Metric {
        name: "quic_drops_total",
        kind: Kind::Counter,
        help: "QUIC relay drops (the core's, any reason; oversized_tx: datagrams larger than a buffer slot).",
        label: Some(("reason", "core")),
        value: |c| c.quic_drops,
    },
    Metric {
        name: "quic_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "oversized_tx")),
        value: |c| c.quic_oversized_tx,
    },
    Metric {
        name: "turn_stream_accepted_total",
        kind: Kind::Counter,
        help: "TURN over TCP and TLS: connections accepted (including those closed at once for a cap).",
        label: None,
        value: |c| c.turn_stream_accepted,
    },
    Metric {
        name: "turn_stream_connections",
        kind: Kind::Gauge,
        help: "TURN over TCP and TLS: open connections.",
        label: None,
        value: |c| c.turn_stream_connections,
    },
    Metric {
        name: "turn_stream_frames_total",
        kind: Kind::Counter,
        help: "TURN over TCP and TLS: frames (STUN messages and ChannelData) received.",
        label: None,
        value: |c| c.turn_stream_frames_in,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "TURN over TCP and TLS: connections closed, by reason (peer: by the client; framing: a header neither STUN nor ChannelData, or malformed; idle, handshake_timeout: the timeouts; too_many_per_ip, worker_full: the caps, closed at accept).",
        label: Some(("reason", "peer")),
        value: |c| c.turn_stream_closed_peer,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "error")),
        value: |c| c.turn_stream_closed_error,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "tls_error")),
        value: |c| c.turn_stream_closed_tls,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "framing")),
        value: |c| c.turn_stream_closed_framing,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "frame_too_long")),
        value: |c| c.turn_stream_closed_too_long,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "idle")),
        value: |c| c.turn_stream_closed_idle,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "handshake_timeout")),
        value: |c| c.turn_stream_closed_handshake_timeout,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "too_many_per_ip")),
        value: |c| c.turn_stream_closed_too_many_per_ip,
    },
    Metric {
        name: "turn_stream_closes_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "worker_full")),
        value: |c| c.turn_stream_closed_worker_full,
    },
    Metric {
        name: "turn_stream_tx_drops_total",
        kind: Kind::Counter,
        help: "TURN over TCP and TLS: frames for a client not written, by reason (queue_full: its write queue was full; no_connection: its connection had closed).",
        label: Some(("reason", "queue_full")),
        value: |c| c.turn_stream_tx_queue_full,
    },
    Metric {
        name: "turn_stream_tx_drops_total",
        kind: Kind::Counter,
        help: "",
        label: Some(("reason", "no_connection")),
        value: |c| c.turn_stream_tx_no_connection,
    },
];

/// Name (without prefix) of the per-reason drop counter of the protocol core.
const DROPS: &str = "drops_total";

/// Name (without prefix) of the info metric.
const WORKER_INFO: &str = "worker_info";

/// Renders every metric of every worker.
pub fn render(workers: &[WorkerStatsSnapshot]) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, workers);
    out
}

fn write_all(out: &mut String, workers: &[WorkerStatsSnapshot]) -> std::fmt::Result {
    header(
        out,
        WORKER_INFO,
        Kind::Gauge,
        "Dataplane worker: I/O backend and pinned CPU (-1: unpinned).",
    )?;
    for w in workers {
        let cpu = w.cpu.map_or(-1, |c| i64::try_from(c).unwrap_or(-1));
        writeln!(
            out,
            "{PREFIX}{WORKER_INFO}{{core=\"{}\",backend=\"{}\",cpu=\"{cpu}\"}} 1",
            w.worker,
            w.backend.as_str()
        )?;
    }

    let mut previous = "";
    for metric in METRICS {
        if metric.name != previous {
            header(out, metric.name, metric.kind, metric.help)?;
            previous = metric.name;
        }
        for w in workers {
            write!(out, "{PREFIX}{}{{core=\"{}\"", metric.name, w.worker)?;
            if let Some((name, value)) = metric.label {
                write!(out, ",{name}=\"{value}\"")?;
            }
            writeln!(out, "}} {}", (metric.value)(&w.counters))?;
        }
    }

    header(
        out,
        DROPS,
        Kind::Counter,
        "Datagrams the protocol core dropped, by reason.",
    )?;
    for w in workers {
        for (reason, count) in w.drops() {
            writeln!(
                out,
                "{PREFIX}{DROPS}{{core=\"{}\",reason=\"{}\"}} {count}",
                w.worker,
                reason.as_str()
            )?;
        }
    }
    Ok(())
}

fn header(out: &mut String, name: &str, kind: Kind, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {PREFIX}{name} {help}")?;
    writeln!(out, "# TYPE {PREFIX}{name} {}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoBackend;
    use crate::stats::SharedStats;
    use boson_dataplane_proto::DropReason;

    #[test]
    fn renders_every_core_with_labels() {
        let a = SharedStats::new(0, Some(0), IoBackend::Uring);
        let b = SharedStats::new(1, None, IoBackend::Uring);
        let counters = WorkerCounters {
            packets_in: 3,
            binding_success: 2,
            rx_overflow: 5,
            ..WorkerCounters::default()
        };
        a.publish(
            &counters,
            DropReason::ALL
                .into_iter()
                .map(|r| (r, u64::from(r == DropReason::NotStun))),
        );
        let text = render(&[a.snapshot(), b.snapshot()]);
        for line in [
            "# TYPE bosonserver_dataplane_packets_received_total counter",
            "bosonserver_dataplane_packets_received_total{core=\"0\"} 3",
            "bosonserver_dataplane_packets_received_total{core=\"1\"} 0",
            "bosonserver_dataplane_binding_responses_total{core=\"0\",result=\"success\"} 2",
            "bosonserver_dataplane_drops_total{core=\"0\",reason=\"not_stun\"} 1",
            "bosonserver_dataplane_shell_drops_total{core=\"0\",reason=\"rx_overflow\"} 5",
            "bosonserver_dataplane_drops_total{core=\"1\",reason=\"bad_fingerprint\"} 0",
            "bosonserver_dataplane_worker_info{core=\"0\",backend=\"io_uring\",cpu=\"0\"} 1",
            "bosonserver_dataplane_worker_info{core=\"1\",backend=\"io_uring\",cpu=\"-1\"} 1",
            "# TYPE bosonserver_dataplane_relay_sockets gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // One header per metric name.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.dedup();
        assert_eq!(types, names.len() + 2);
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with(PREFIX))
        );
    }
}
