//! Plain counters of the QUIC relay, and the named reasons a datagram is dropped.
//!
//! Same contract as [`crate::stats`]: no registry; each core's [`QuicRelay`](super::QuicRelay)
//! owns its counters, the shell reads them with `stats()` and aggregates on scrape. The
//! [`DropReason::as_str`] labels are stable metric label values.

use crate::stats::{DropCounters, RelayCounters, drop_reasons};

/// Why a datagram (UDP, or a QUIC DATAGRAM frame, or a control message) was dropped. Drops
/// are counted, never errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// A UDP datagram quinn's endpoint discarded: not QUIC, a short or undecryptable
    /// Initial, a packet for no known connection that earns no stateless reset, or an
    /// Initial while the endpoint is saturated.
    Unroutable,
    /// A DATAGRAM from a connection not (yet) authenticated, i.e. before READY.
    Unauthenticated,
    /// A SEND above the relay's cap, or a RECV above the cap or the destination connection's
    /// current limit (path MTU, or the client's max_datagram_frame_size).
    Oversized,
    /// A DATAGRAM that is not a well-formed SEND (empty, too short, or a server-to-client
    /// type).
    Malformed,
    /// A DATAGRAM or control message of a type this version does not know; ignored for
    /// forward compatibility.
    UnknownType,
    /// A RECV found the destination's datagram send buffer full: the client reads (or its
    /// path carries) slower than its peers send.
    SendBufferFull,
    /// A SEND to a node connected nowhere (the shell reported it with
    /// [`QuicRelay::peer_gone`](super::QuicRelay::peer_gone)).
    PeerGone,
    /// A SEND that found more than the event backlog bound undrained: the shell is not
    /// calling [`QuicRelay::poll_event`](super::QuicRelay::poll_event) after each input.
    EventBacklog,
    /// A notice (PEER_GONE, PEER_PRESENT, RECONNECT_HINT) that did not fit the connection's
    /// control-stream buffer: the client does not read its control stream.
    ControlBacklog,
    /// An endpoint-level response (version negotiation, stateless reset, Retry, refusal)
    /// that did not fit the response queue: the shell is not draining
    /// [`QuicRelay::poll_transmit`](super::QuicRelay::poll_transmit).
    ResponseBacklog,
}

drop_reasons!(DropReason {
    Unroutable => "unroutable",
    Unauthenticated => "unauthenticated",
    Oversized => "oversized",
    Malformed => "malformed",
    UnknownType => "unknown_type",
    SendBufferFull => "send_buffer_full",
    PeerGone => "peer_gone",
    EventBacklog => "event_backlog",
    ControlBacklog => "control_backlog",
    ResponseBacklog => "response_backlog",
});

/// Counters of one [`QuicRelay`](super::QuicRelay). Monotonic except the gauges, which say
/// so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QuicStats {
    /// Gauge: live QUIC connections, in any state (handshaking, awaiting a verdict,
    /// authenticated, closing).
    pub connections: u64,
    /// Gauge: authenticated connections (nodes reachable here).
    pub authenticated: u64,
    /// Gauge: bytes in the connections' outbound datagram buffers, quinn's per-datagram
    /// overhead included, as of each connection's last delivery or transmission; at most
    /// connections × the configured send buffer.
    pub datagram_send_buffered: u64,
    /// UDP datagrams handed in (bytes: UDP payload).
    pub udp_rx: RelayCounters,
    /// UDP datagrams handed out, GSO segments counted one by one (bytes: UDP payload).
    pub udp_tx: RelayCounters,
    /// Connection attempts taken into a handshake.
    pub incoming_accepted: u64,
    /// Connection attempts answered with a Retry (address validation).
    pub retries: u64,
    /// Connection attempts refused (CONNECTION_REFUSED) for the connection limit.
    pub refused_full: u64,
    /// Connection attempts refused (CONNECTION_REFUSED) because the relay is draining.
    pub refused_draining: u64,
    /// Connection attempts quinn could not take (bad first packet, stale Initial).
    pub incoming_failed: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Tokens presented (AUTH on the control stream).
    pub auth_requests: u64,
    /// Connections the owner accepted.
    pub auth_accepted: u64,
    /// Connections the owner rejected.
    pub auth_rejected: u64,
    /// Connections closed for no verdict in time.
    pub auth_timeouts: u64,
    /// Connections closed because a newer connection of the same node was accepted.
    pub replaced: u64,
    /// Connections closed for a relay-protocol violation (control stream misuse, no
    /// datagram support).
    pub protocol_errors: u64,
    /// Connections the client closed (CONNECTION_CLOSE or stateless reset).
    pub peer_closes: u64,
    /// Connections lost to the idle timeout.
    pub idle_timeouts: u64,
    /// Connections quinn closed for a transport error.
    pub transport_errors: u64,
    /// SEND datagrams accepted from authenticated clients (bytes: WireGuard packet bytes).
    pub received: RelayCounters,
    /// RECV datagrams queued toward clients (bytes: WireGuard packet bytes).
    pub delivered: RelayCounters,
    /// PEER_GONE notices queued.
    pub peer_gone_sent: u64,
    /// PEER_GONE notices the per-pair rate limit held back.
    pub peer_gone_suppressed: u64,
    /// PEER_PRESENT notices queued.
    pub peer_present_sent: u64,
    /// RECONNECT_HINT notices queued.
    pub reconnect_hints: u64,
    /// Datagrams and messages dropped, by reason.
    pub drops: DropCounters<DropReason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_with_unique_labels() {
        crate::stats::assert_reasons_in_order_with_unique_labels(DropReason::as_str);
    }
}
