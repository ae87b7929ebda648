//! Plain counters of the WebSocket relay, and the named reasons a relay message is dropped.
//!
//! Same contract as [`crate::stats`]: no registry, each core's [`Hub`](super::Hub) owns its
//! [`Stats`], the shell reads them with `stats()` and aggregates on scrape. The
//! [`DropReason::as_str`] labels are stable metric label values.

use crate::stats::{DropCounters, RelayCounters, drop_reasons};

/// Why a relay message (or a queued frame) was dropped. Drops are counted, never errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// A frame queued toward a client was dropped to make room for a newer one (the client
    /// reads slower than its peers send), or a frame found no room at all.
    QueueFull,
    /// SEND before the session was authenticated (before READY).
    Unauthenticated,
    /// A relay message of a type this version does not know; ignored for forward
    /// compatibility.
    UnknownType,
    /// A relay message that does not parse, or a server-to-client type sent by a client.
    Malformed,
    /// SEND to a node connected neither here nor anywhere the presence lookup knows.
    PeerGone,
    /// Frames still queued when the session closed.
    Closing,
    /// A FORWARD frame toward a mesh peer was dropped to make room for a newer one (the peer
    /// host reads slower than this host's clients send to its nodes), or found no room.
    MeshQueueFull,
    /// A packet for a host that has no mesh link to this hub (not connected, or gone).
    NoMeshLink,
}

drop_reasons!(DropReason {
    QueueFull => "queue_full",
    Unauthenticated => "unauthenticated",
    UnknownType => "unknown_type",
    Malformed => "malformed",
    PeerGone => "peer_gone",
    Closing => "closing",
    MeshQueueFull => "mesh_queue_full",
    NoMeshLink => "no_mesh_link",
});

/// Counters of one [`Session`](super::Session), or of a whole [`Hub`](super::Hub) (its
/// sessions, live and gone, plus the hub's own). Monotonic except the gauges, which say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Gauge (hub): live sessions, in any state.
    pub sessions: u64,
    /// Gauge (hub): authenticated sessions (nodes reachable here).
    pub authenticated: u64,
    /// Gauge (hub): mesh sessions (peer hosts that receive their nodes' packets from here).
    pub mesh_sessions: u64,
    /// Upgrade requests answered with 101.
    pub handshakes: u64,
    /// Upgrade requests refused with an HTTP error.
    pub handshake_failures: u64,
    /// Connections closed for not completing the upgrade in time.
    pub handshake_timeouts: u64,
    /// Sessions the owner accepted as a node.
    pub auth_accepted: u64,
    /// Sessions the owner accepted as a mesh peer.
    pub mesh_accepted: u64,
    /// Sessions the owner rejected.
    pub auth_rejected: u64,
    /// Sessions closed for not authenticating in time.
    pub auth_timeouts: u64,
    /// Sessions closed because a newer session of the same node was accepted.
    pub replaced: u64,
    /// Sessions closed because a keepalive ping went unanswered.
    pub idle_timeouts: u64,
    /// Sessions the client closed with a Close frame.
    pub peer_closes: u64,
    /// Sessions failed for a protocol violation (close 1002, 1003, 1007, 1008, 1009).
    pub protocol_errors: u64,
    /// Sessions whose connection the shell dropped before they reached `Closed`.
    pub disconnects: u64,
    /// Keepalive pings sent.
    pub pings_sent: u64,
    /// Pongs sent in answer to client pings.
    pub pongs_sent: u64,
    /// SEND packets accepted from clients (bytes: WireGuard packet bytes).
    pub received: RelayCounters,
    /// Frames queued toward clients: RECV and notices (bytes: whole frames).
    pub queued: RelayCounters,
    /// (hub) SENDs whose destination was a local session.
    pub forwarded_local: u64,
    /// (hub) SENDs handed to the shell for another core or host.
    pub forwarded_remote: u64,
    /// (hub) FORWARD frames queued to mesh peers (bytes: whole frames).
    pub forwarded_mesh: RelayCounters,
    /// (hub) PEER_GONE messages queued.
    pub peer_gone_sent: u64,
    /// (hub) PEER_GONE messages the per-pair rate limit held back.
    pub peer_gone_suppressed: u64,
    /// Messages and frames dropped, by reason.
    pub drops: DropCounters<DropReason>,
}

/// Counters of one [`MeshClient`](super::MeshClient): the receiving end of a mesh link.
/// Monotonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MeshStats {
    /// FORWARD packets delivered (bytes: WireGuard packet bytes).
    pub delivered: RelayCounters,
    /// Answers to the upgrade refused (not an acceptable 101).
    pub handshake_failures: u64,
    /// Keepalive pings sent.
    pub pings_sent: u64,
    /// Pongs sent in answer to server pings.
    pub pongs_sent: u64,
    /// Relay messages of a type this version does not know; ignored.
    pub unknown_types: u64,
    /// Relay messages that do not parse; ignored.
    pub malformed: u64,
    /// Links failed for a server's protocol violation.
    pub protocol_errors: u64,
    /// Links closed because a keepalive ping went unanswered.
    pub idle_timeouts: u64,
    /// Links the server closed with a Close frame.
    pub peer_closes: u64,
    /// GONE messages sent (PEER_GONE across hosts).
    pub gone_sent: u64,
    /// GONE messages not sent: rate-limited per pair, or too many waiting.
    pub gone_suppressed: u64,
}

impl Stats {
    /// Adds `other`'s counters (gauges included) to these.
    pub(crate) fn merge(&mut self, other: &Self) {
        let Self {
            sessions,
            authenticated,
            mesh_sessions,
            handshakes,
            handshake_failures,
            handshake_timeouts,
            auth_accepted,
            mesh_accepted,
            auth_rejected,
            auth_timeouts,
            replaced,
            idle_timeouts,
            peer_closes,
            protocol_errors,
            disconnects,
            pings_sent,
            pongs_sent,
            received,
            queued,
            forwarded_local,
            forwarded_remote,
            forwarded_mesh,
            peer_gone_sent,
            peer_gone_suppressed,
            drops,
        } = other;
        self.sessions += sessions;
        self.authenticated += authenticated;
        self.mesh_sessions += mesh_sessions;
        self.handshakes += handshakes;
        self.handshake_failures += handshake_failures;
        self.handshake_timeouts += handshake_timeouts;
        self.auth_accepted += auth_accepted;
        self.mesh_accepted += mesh_accepted;
        self.auth_rejected += auth_rejected;
        self.auth_timeouts += auth_timeouts;
        self.replaced += replaced;
        self.idle_timeouts += idle_timeouts;
        self.peer_closes += peer_closes;
        self.protocol_errors += protocol_errors;
        self.disconnects += disconnects;
        self.pings_sent += pings_sent;
        self.pongs_sent += pongs_sent;
        self.received.packets += received.packets;
        self.received.bytes += received.bytes;
        self.queued.packets += queued.packets;
        self.queued.bytes += queued.bytes;
        self.forwarded_local += forwarded_local;
        self.forwarded_remote += forwarded_remote;
        self.forwarded_mesh.packets += forwarded_mesh.packets;
        self.forwarded_mesh.bytes += forwarded_mesh.bytes;
        self.peer_gone_sent += peer_gone_sent;
        self.peer_gone_suppressed += peer_gone_suppressed;
        self.drops.merge(drops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_with_unique_labels() {
        crate::stats::assert_reasons_in_order_with_unique_labels(DropReason::as_str);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::default();
        a.drops.record(DropReason::QueueFull);
        a.received.record(10);
        a.replaced = 2;
        let mut total = Stats::default();
        total.merge(&a);
        total.merge(&a);
        assert_eq!(total.drops.get(DropReason::QueueFull), 2);
        assert_eq!(total.received.bytes, 20);
        assert_eq!(total.replaced, 4);
        assert_eq!(total.drops.total(), 2);
    }
}
