//! Heartbeats held in memory until a batch writes them (write-behind), so that the heartbeat
//! rate is bounded by memory and one statement per batch, not by one row write each. Pure: no
//! I/O, time is an input.
//!
//! The bound: a heartbeat waits at most one flush interval (`--heartbeat-flush-interval`)
//! before it is written. A clean shutdown flushes; a crash loses at most that interval of
//! last-seen times and metrics (never a registration, a deletion or an `offline` heartbeat,
//! which are written at once), and the next heartbeat of each node, to any host, repairs it.
//! The store's `last_seen` of a node is therefore at most one flush interval behind the truth,
//! which the sweeper and the other hosts' syncs allow for.
//!
//! Driving it: [`HeartbeatBuffer::record`] for each heartbeat taken on the fast path,
//! [`HeartbeatBuffer::forget`] when a write that must win goes to the store directly,
//! [`HeartbeatBuffer::take`] to write a batch, then [`HeartbeatBuffer::written`] when it is
//! stored or [`HeartbeatBuffer::restore`] with what a failed write could not store, and
//! [`HeartbeatBuffer::apply`] to show a read the newest state. A batch being written is still
//! shown to reads: until its write commits the store does not have it either.

use std::collections::BTreeMap;

use boson_shared::NodeId;

use crate::clock::UnixMillis;
use crate::domain::model::{NodeMetrics, NodeRecord, NodeStatus, ReportedStatus};

/// A heartbeat to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Metrics sent.
    pub metrics: NodeMetrics,
    /// Health the node reported.
    pub reported_status: Option<ReportedStatus>,
    /// Status it gets.
    pub status: NodeStatus,
    /// When it arrived.
    pub at: UnixMillis,
}

/// The heartbeats not written yet: the newest per node, with the generation of the token it
/// came with.
#[derive(Debug, Default)]
pub struct HeartbeatBuffer {
    pending: BTreeMap<NodeId, (i64, Heartbeat)>,
    /// Taken for a batch write that has not finished.
    writing: BTreeMap<NodeId, (i64, Heartbeat)>,
}

/// Whether `beat` of `generation` should replace `held`: not when `held` is of a newer
/// generation, or of the same one and newer.
fn supersedes(held: Option<&(i64, Heartbeat)>, generation: i64, beat: &Heartbeat) -> bool {
    !matches!(held, Some((g, old)) if *g > generation || (*g == generation && old.at > beat.at))
}

impl HeartbeatBuffer {
    /// Heartbeats waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Holds `beat` of `node` (with a token of `generation`) until the next batch. It replaces
    /// a waiting one of the same or an older generation that is not newer.
    pub fn record(&mut self, node: NodeId, generation: i64, beat: Heartbeat) {
        if supersedes(self.pending.get(&node), generation, &beat) {
            self.pending.insert(node, (generation, beat));
        }
    }

    /// Drops what waits for `node`: a write that must win (deletion, re-registration, an
    /// `offline` heartbeat) is going to the store directly.
    pub fn forget(&mut self, node: NodeId) {
        self.pending.remove(&node);
        self.writing.remove(&node);
    }

    /// Everything waiting, by node id, for one batch write. Reads keep seeing it until
    /// [`Self::written`] or [`Self::restore`].
    pub fn take(&mut self) -> Vec<(NodeId, i64, Heartbeat)> {
        let batch: Vec<_> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(node, (generation, beat))| (node, generation, beat))
            .collect();
        for (node, generation, beat) in &batch {
            if supersedes(self.writing.get(node), *generation, beat) {
                self.writing.insert(*node, (*generation, beat.clone()));
            }
        }
        batch
    }

    /// `batch` (from [`Self::take`]) is in the store: reads find it there now.
    pub fn written(&mut self, batch: &[(NodeId, i64, Heartbeat)]) {
        for (node, generation, beat) in batch {
            self.settle(*node, *generation, beat);
        }
    }

    /// Puts back a batch whose write failed, under anything recorded since (which is newer).
    pub fn restore(&mut self, batch: Vec<(NodeId, i64, Heartbeat)>) {
        for (node, generation, beat) in batch {
            self.settle(node, generation, &beat);
            self.record(node, generation, beat);
        }
    }

    /// Ends the write of `beat`: no longer shown from the batch (a newer batch's stays).
    fn settle(&mut self, node: NodeId, generation: i64, beat: &Heartbeat) {
        if self
            .writing
            .get(&node)
            .is_some_and(|(g, held)| *g == generation && held == beat)
        {
            self.writing.remove(&node);
        }
    }

    /// Shows `record`, read from the store, with the heartbeat waiting for it, if that is of
    /// its generation and newer.
    pub fn apply(&self, record: &mut NodeRecord) {
        // The batch being written first, then anything newer still waiting over it.
        for held in [&self.writing, &self.pending] {
            let Some((generation, beat)) = held.get(&record.node_id) else {
                continue;
            };
            if *generation != record.generation || beat.at < record.last_seen {
                continue;
            }
            record.metrics = Some(beat.metrics.clone());
            record.reported_status = beat.reported_status;
            record.status = beat.status;
            record.last_seen = beat.at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn beat(at: i64, latency: f64) -> Heartbeat {
        Heartbeat {
            metrics: NodeMetrics {
                latency,
                cpu_usage: 1.0,
                active_connections: 0,
                jitter: None,
                packet_loss: None,
                memory_usage: None,
                bandwidth: None,
            },
            reported_status: None,
            status: NodeStatus::Active,
            at: UnixMillis(at),
        }
    }

    #[test]
    fn keeps_the_newest_heartbeat_of_the_newest_generation() {
        let mut buffer = HeartbeatBuffer::default();
        buffer.record(node(1), 1, beat(10, 1.0));
        buffer.record(node(1), 1, beat(20, 2.0));
        buffer.record(node(1), 1, beat(15, 9.0)); // arrived late: older
        buffer.record(node(2), 3, beat(10, 1.0));
        buffer.record(node(2), 2, beat(30, 9.0)); // a revoked token's
        buffer.record(node(2), 4, beat(5, 4.0)); // re-registered: newer generation wins
        assert_eq!(
            buffer.take(),
            vec![(node(1), 1, beat(20, 2.0)), (node(2), 4, beat(5, 4.0))]
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_under_what_came_since() {
        let mut buffer = HeartbeatBuffer::default();
        buffer.record(node(1), 1, beat(10, 1.0));
        buffer.record(node(2), 1, beat(10, 1.0));
        let batch = buffer.take();
        buffer.record(node(1), 1, beat(20, 2.0));
        buffer.forget(node(3));
        buffer.restore(batch);
        assert_eq!(
            buffer.take(),
            vec![(node(1), 1, beat(20, 2.0)), (node(2), 1, beat(10, 1.0))]
        );
    }

    #[test]
    fn apply_shows_a_waiting_heartbeat_of_the_same_generation_only() {
        let mut buffer = HeartbeatBuffer::default();
        buffer.record(node(1), 2, beat(50, 7.0));
        let record = fixtures::node_record(
            node(1),
            boson_shared::WgPublicKey::from_bytes([1; 32]),
            2,
            UnixMillis(40),
        );
        let mut shown = record.clone();
        buffer.apply(&mut shown);
        assert_eq!(shown.last_seen, UnixMillis(50));
        assert_eq!(shown.metrics.as_ref().map(|m| m.latency), Some(7.0));
        let mut other = record.clone();
        other.generation = 3;
        buffer.apply(&mut other);
        assert_eq!(other.last_seen, UnixMillis(40), "re-registered since");
        // Taken for a batch write: still shown until the write is done, as the store does
        // not have it yet.
        let batch = buffer.take();
        let mut writing = record.clone();
        buffer.apply(&mut writing);
        assert_eq!(
            writing.last_seen,
            UnixMillis(50),
            "its batch is being written"
        );
        buffer.written(&batch);
        let mut stored = record.clone();
        buffer.apply(&mut stored);
        assert_eq!(
            stored.last_seen,
            UnixMillis(40),
            "read from the store once written"
        );
        // A failed write goes back and stays shown.
        buffer.record(node(1), 2, beat(50, 7.0));
        let batch = buffer.take();
        buffer.restore(batch);
        let mut restored = record.clone();
        buffer.apply(&mut restored);
        assert_eq!(restored.last_seen, UnixMillis(50));
        buffer.forget(node(1));
        let mut forgotten = record;
        buffer.apply(&mut forgotten);
        assert_eq!(forgotten.last_seen, UnixMillis(40));
    }
}
