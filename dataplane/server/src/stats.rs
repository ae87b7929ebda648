//! Per-worker counters: written by the worker thread only, read by anyone without locks.
//!
//! The worker keeps plain counters (its backend's [`IoCounters`](crate::io::IoCounters), its
//! core's [`Stats`](boson_dataplane_proto::Stats) and its own), and once per loop turn copies
//! them into a [`SharedStats`] with `Relaxed` stores. Readers load them with `Relaxed` loads
//! into a [`WorkerStatsSnapshot`]. Each value is a monotonic counter (or a gauge) on its own,
//! so a snapshot needs no cross-field consistency and no seqlock: a reader may see one
//! counter from this turn and another from the previous one.

use std::sync::atomic::{AtomicU64, Ordering};

use boson_dataplane_proto::DropReason;

use crate::io::IoBackend;

macro_rules! worker_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The shell's and the core's counters of one worker. Monotonic unless noted.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct WorkerCounters {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl WorkerCounters {
            /// How many counters there are.
            pub const LEN: usize = [$(stringify!($name),)*].len();

            /// The counters in declaration order: the order of a segment's stats slots.
            pub const fn to_array(&self) -> [u64; Self::LEN] {
                [$(self.$name,)*]
            }

            /// The counters from `values` in declaration order; `None` if it is too short.
            pub fn from_slice(values: &[u64]) -> Option<Self> {
                let mut values = values.iter().copied();
                Some(Self {
                    $($name: values.next()?,)*
                })
            }
        }

        /// [`WorkerCounters`] as atomics.
        #[derive(Debug, Default)]
        struct AtomicCounters {
            $($name: AtomicU64,)*
        }

        impl AtomicCounters {
            fn store(&self, counters: &WorkerCounters) {
                $(self.$name.store(counters.$name, Ordering::Relaxed);)*
            }

            fn load(&self) -> WorkerCounters {
                WorkerCounters {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

worker_counters! {
    /// Datagrams received (listener and relay sockets).
    packets_in,
    /// Payload bytes received.
    bytes_in,
    /// Datagrams the kernel accepted for sending.
    packets_out,
    /// Bytes the kernel accepted for sending.
    bytes_out,
    /// Sends that failed.
    sends_failed,
    /// Datagrams dropped by the shell because they did not fit a buffer slot.
    rx_truncated,
    /// Datagrams the kernel dropped at a full receive queue of a listener or relay socket
    /// (`SO_RXQ_OVFL`).
    rx_overflow,
    /// GRO segments dropped because no buffer slot was free to split them into.
    rx_no_buffer,
    /// Receives that held several datagrams coalesced by GRO.
    rx_gro_batches,
    /// Sends that carried several datagrams as GSO segments.
    tx_gso_sends,
    /// Sockets on which the kernel refused UDP GRO or GSO, and GSO sends it refused.
    udp_offload_refused,
    /// Listener datagrams dropped because no buffer was free for the reply.
    no_tx_buffer,
    /// Relay actions naming a port without a relay socket.
    relay_missing,
    /// Actions whose range did not fit the buffer (a core bug), dropped.
    bad_core_range,
    /// Relay sockets that could not be bound.
    relay_bind_failed,
    /// Relay sockets open now (a gauge).
    relay_sockets,
    /// Multishot receives re-armed (io_uring only).
    rx_rearms,
    /// Event-loop turns.
    turns,
    /// Turns that ended because the datagram budget ran out.
    budget_exhausted,
    /// Binding requests the core answered (success or error).
    binding_requests,
    /// Binding success responses.
    binding_success,
    /// Binding error responses.
    binding_errors,
    /// Binding indications absorbed.
    binding_indications,
    /// TURN allocations alive now (a gauge).
    allocations,
    /// TURN allocations created.
    allocations_created,
    /// TURN allocations that ran out without a Refresh.
    allocations_expired,
    /// TURN allocations deleted (Refresh with lifetime 0, or a relay port that could not bind).
    allocations_deleted,
    /// TURN permissions installed now (a gauge).
    permissions,
    /// TURN channel bindings now, including those cooling down after expiry (a gauge).
    channels,
    /// TURN success responses.
    turn_success_responses,
    /// TURN error responses (all codes).
    turn_error_responses,
    /// Payloads relayed from clients to peers (ChannelData and Send indications).
    relayed_to_peer_packets,
    /// Payload bytes relayed from clients to peers, without framing.
    relayed_to_peer_bytes,
    /// Peer datagrams relayed to clients (ChannelData and Data indications).
    relayed_to_client_packets,
    /// Payload bytes relayed from peers to clients, without framing.
    relayed_to_client_bytes,
    /// Node relay (WebSocket): TCP connections accepted.
    ws_accepted,
    /// Node relay: accepted connections closed since.
    ws_closed,
    /// Node relay: connections refused at the per-worker limit.
    ws_refused_full,
    /// Node relay: open connections (a gauge).
    ws_connections,
    /// Node relay: authenticated sessions (a gauge).
    ws_sessions,
    /// Node relay: tokens refused.
    ws_auth_rejected,
    /// Node relay: TLS failures.
    ws_tls_errors,
    /// Node relay: frames received from clients.
    ws_frames_in,
    /// Node relay: packets relayed (SENDs delivered to a local queue or another core).
    ws_packets_relayed,
    /// Node relay: WireGuard bytes received in SENDs.
    ws_bytes_relayed,
    /// Node relay: bytes read from sockets (after TLS).
    ws_bytes_read,
    /// Node relay: bytes written to sockets (before TLS).
    ws_bytes_written,
    /// Node relay: frames dropped because a client's queue was full (oldest first).
    ws_queue_drops,
    /// Node relay: all frames the hub dropped, any reason.
    ws_drops,
    /// Node relay: frames waiting in client queues (a gauge).
    ws_queued_frames,
    /// Node relay: frames handed to another core.
    ws_cross_core_out,
    /// Node relay: frames taken from other cores.
    ws_cross_core_in,
    /// Node relay: frames dropped because the ring to another core was full.
    ws_cross_core_full,
    /// Node relay: frames whose destination was gone when they reached its core.
    ws_cross_core_gone,
    /// Node relay: bytes waiting in this core's inbound cross-core rings (a gauge).
    ws_cross_core_depth,
    /// Relay mesh: packets forwarded to other relay hosts.
    mesh_out,
    /// Relay mesh: packets received from other relay hosts.
    mesh_in,
    /// Relay mesh: packets for a node on another host without a link to it, dropped.
    mesh_no_link,
    /// Relay mesh: links open on this core, both directions (a gauge).
    mesh_links,
    /// QUIC relay: sessions authenticated on this core (a gauge).
    quic_sessions,
    /// QUIC relay: SEND packets received from clients.
    quic_packets_in,
    /// QUIC relay: RECV packets queued to clients.
    quic_packets_out,
    /// QUIC relay: packets and datagrams the QUIC core dropped, any reason.
    quic_drops,
    /// QUIC relay: datagrams larger than a buffer slot, not sent.
    quic_oversized_tx,
    /// TURN over TCP/TLS: connections accepted (those closed at once for a cap included).
    turn_stream_accepted,
    /// TURN over TCP/TLS: open connections (a gauge).
    turn_stream_connections,
    /// TURN over TCP/TLS: frames (STUN messages, ChannelData) received.
    turn_stream_frames_in,
    /// TURN over TCP/TLS: connections the client closed or reset.
    turn_stream_closed_peer,
    /// TURN over TCP/TLS: connections closed on a socket error.
    turn_stream_closed_error,
    /// TURN over TCP/TLS: connections closed on a TLS failure.
    turn_stream_closed_tls,
    /// TURN over TCP/TLS: connections closed on a frame header that is not STUN or
    /// ChannelData, or is malformed.
    turn_stream_closed_framing,
    /// TURN over TCP/TLS: connections closed on a frame longer than the bound.
    turn_stream_closed_too_long,
    /// TURN over TCP/TLS: connections closed after the idle timeout.
    turn_stream_closed_idle,
    /// TURN over TCP/TLS: connections closed after the TLS handshake timeout.
    turn_stream_closed_handshake_timeout,
    /// TURN over TCP/TLS: connections closed at once: their address held its cap.
    turn_stream_closed_too_many_per_ip,
    /// TURN over TCP/TLS: connections closed at once: the worker held its cap.
    turn_stream_closed_worker_full,
    /// TURN over TCP/TLS: frames for a client whose write queue was full, dropped.
    turn_stream_tx_queue_full,
    /// TURN over TCP/TLS: frames for a client whose connection had closed, dropped.
    turn_stream_tx_no_connection,
}

/// One worker's counters at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatsSnapshot {
    /// Worker index, 0-based: the `core` label in metrics.
    pub worker: usize,
    /// The CPU the worker is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// The backend it runs (never [`IoBackend::Auto`]).
    pub backend: IoBackend,
    /// The counters.
    pub counters: WorkerCounters,
    drops: [u64; DropReason::COUNT],
}

impl WorkerStatsSnapshot {
    /// Datagrams the core dropped for `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.drops[i])
    }

    /// Every drop reason with its count, in [`DropReason::ALL`] order.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().zip(self.drops.iter().copied())
    }
}

impl WorkerStatsSnapshot {
    /// Slots of [`to_slots`](Self::to_slots): the backend, the CPU, every counter, every
    /// drop reason.
    pub const SLOTS: usize = 2 + WorkerCounters::LEN + DropReason::COUNT;

    /// The snapshot as `u64` slots, for a shared-memory stats block. The order is fixed
    /// (both planes of one build agree on it; a segment's layout version does not cover it):
    ///
    /// | slot | value |
    /// |---|---|
    /// | 0 | backend: 1 io_uring, 2 epoll (0 unknown) |
    /// | 1 | pinned CPU + 1 (0: unpinned) |
    /// | 2 .. 2 + [`WorkerCounters::LEN`] | [`WorkerCounters::to_array`] |
    /// | then [`DropReason::COUNT`] | drops, in [`DropReason::ALL`] order |
    pub fn to_slots(&self) -> [u64; Self::SLOTS] {
        let mut slots = [0; Self::SLOTS];
        slots[0] = match self.backend {
            IoBackend::Uring => 1,
            IoBackend::Epoll => 2,
            IoBackend::Auto => 0,
        };
        slots[1] = self.cpu.map_or(0, |cpu| cpu as u64 + 1);
        let counters = 2 + WorkerCounters::LEN;
        slots[2..counters].copy_from_slice(&self.counters.to_array());
        slots[counters..].copy_from_slice(&self.drops);
        slots
    }

    /// The snapshot of worker `worker` from [`to_slots`](Self::to_slots)'s output; `None`
    /// if `slots` is too short.
    pub fn from_slots(worker: usize, slots: &[u64]) -> Option<Self> {
        let slots = slots.get(..Self::SLOTS)?;
        let counters = 2 + WorkerCounters::LEN;
        Some(Self {
            worker,
            cpu: slots[1]
                .checked_sub(1)
                .and_then(|cpu| usize::try_from(cpu).ok()),
            backend: match slots[0] {
                1 => IoBackend::Uring,
                2 => IoBackend::Epoll,
                _ => IoBackend::Auto,
            },
            counters: WorkerCounters::from_slice(&slots[2..counters])?,
            drops: slots[counters..].try_into().ok()?,
        })
    }
}

/// The published counters of one worker.
#[derive(Debug)]
pub(crate) struct SharedStats {
    worker: usize,
    cpu: Option<usize>,
    backend: IoBackend,
    counters: AtomicCounters,
    drops: [AtomicU64; DropReason::COUNT],
}

impl SharedStats {
    pub(crate) fn new(worker: usize, cpu: Option<usize>, backend: IoBackend) -> Self {
        Self {
            worker,
            cpu,
            backend,
            counters: AtomicCounters::default(),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Publishes; called by the owning worker only.
    pub(crate) fn publish(
        &self,
        counters: &WorkerCounters,
        drops: impl Iterator<Item = (DropReason, u64)>,
    ) {
        self.counters.store(counters);
        for (slot, (_, count)) in self.drops.iter().zip(drops) {
            slot.store(count, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> WorkerStatsSnapshot {
        WorkerStatsSnapshot {
            worker: self.worker,
            cpu: self.cpu,
            backend: self.backend,
            counters: self.counters.load(),
            drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_and_snapshots() {
        let shared = SharedStats::new(1, Some(3), IoBackend::Epoll);
        let counters = WorkerCounters {
            packets_in: 5,
            ..WorkerCounters::default()
        };
        let drops = DropReason::ALL
            .into_iter()
            .map(|r| (r, u64::from(r == DropReason::NotStun) * 7));
        shared.publish(&counters, drops);
        let snap = shared.snapshot();
        assert_eq!(snap.worker, 1);
        assert_eq!(snap.cpu, Some(3));
        assert_eq!(snap.counters.packets_in, 5);
        assert_eq!(snap.drop_count(DropReason::NotStun), 7);
        assert_eq!(snap.drop_count(DropReason::Truncated), 0);
        assert_eq!(snap.drops().map(|(_, n)| n).sum::<u64>(), 7);
    }

    #[test]
    fn slots_round_trip() {
        let shared = SharedStats::new(2, Some(0), IoBackend::Uring);
        let counters = WorkerCounters {
            packets_in: 5,
            turn_stream_tx_no_connection: 9,
            ..WorkerCounters::default()
        };
        let drops = DropReason::ALL.into_iter().map(|r| (r, 3));
        shared.publish(&counters, drops);
        let snap = shared.snapshot();
        let slots = snap.to_slots();
        assert_eq!(slots[..3], [1, 1, 5]);
        assert_eq!(slots[WorkerCounters::LEN + 1], 9, "the last counter");
        assert_eq!(WorkerStatsSnapshot::from_slots(2, &slots), Some(snap));
        assert_eq!(WorkerStatsSnapshot::from_slots(2, &slots[1..]), None);
    }
}
