//! Graceful drain: every worker's core stops taking new work (TURN answers new Allocates with
//! 403) and the node relay sends RECONNECT_HINT to every session, while what exists keeps
//! running. The caller watches [`DrainHandle::remaining`] and shuts the dataplane down when
//! nothing is left or its deadline passes; the dataplane has no deadline of its own.

use std::sync::Arc;

use crate::packet_core::CoreUpdate;
use crate::relay::{RelayCommand, RelayHandle};
use crate::worker::Control;
use crate::{StatsReader, WorkerStatsSnapshot};

/// Starts a drain and watches it run down, from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DrainHandle {
    controls: Vec<Arc<Control>>,
    relay: Option<RelayHandle>,
    stats: StatsReader,
}

/// What still runs on a draining dataplane, from the workers' last published counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Remaining {
    /// Live TURN allocations.
    pub allocations: u64,
    /// Authenticated node relay sessions, WebSocket and QUIC (mesh links between hosts are
    /// not work of their own: they carry other hosts' nodes' packets to these).
    pub sessions: u64,
}

impl Remaining {
    /// What `workers` report, summed.
    pub fn of(workers: &[WorkerStatsSnapshot]) -> Self {
        workers.iter().fold(Self::default(), |sum, worker| {
            let counters = &worker.counters;
            Self {
                allocations: sum.allocations + counters.allocations,
                sessions: sum.sessions + counters.ws_sessions + counters.quic_sessions,
            }
        })
    }

    /// Whether nothing is left.
    pub const fn is_empty(&self) -> bool {
        self.allocations == 0 && self.sessions == 0
    }
}

impl DrainHandle {
    pub(crate) const fn new(
        controls: Vec<Arc<Control>>,
        relay: Option<RelayHandle>,
        stats: StatsReader,
    ) -> Self {
        Self {
            controls,
            relay,
            stats,
        }
    }

    /// Tells every worker to drain and wakes it. Calling it again changes nothing.
    pub fn start(&self) {
        self.start_with_alternate(None);
    }

    /// As [`start`](Self::start), and new TURN Allocates get 300 (Try Alternate) pointing at
    /// `alternate`, another live host's STUN/TURN listener, instead of 403.
    pub fn start_with_alternate(&self, alternate: Option<std::net::SocketAddr>) {
        for control in &self.controls {
            // Both are taken at the top of a loop turn, before its datagrams.
            control.request_update(CoreUpdate::SetAlternateServer(alternate));
            control.request_drain();
        }
        if let Some(relay) = &self.relay {
            relay.send(&RelayCommand::Drain);
        }
    }

    /// What is still running. The counters lag by at most one loop turn of each worker.
    pub fn remaining(&self) -> Remaining {
        Remaining::of(&self.stats.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(allocations: u64, ws: u64, quic: u64, mesh_links: u64) -> WorkerStatsSnapshot {
        let mut snapshot =
            WorkerStatsSnapshot::from_slots(0, &[0; WorkerStatsSnapshot::SLOTS]).unwrap();
        snapshot.counters.allocations = allocations;
        snapshot.counters.ws_sessions = ws;
        snapshot.counters.quic_sessions = quic;
        snapshot.counters.mesh_links = mesh_links;
        snapshot
    }

    #[test]
    fn websocket_and_quic_sessions_remain_and_mesh_links_do_not() {
        assert!(Remaining::of(&[]).is_empty());
        assert!(Remaining::of(&[worker(0, 0, 0, 4), worker(0, 0, 0, 2)]).is_empty());
        let only_quic = Remaining::of(&[worker(0, 0, 1, 2)]);
        assert!(!only_quic.is_empty(), "a QUIC node still relays");
        assert_eq!(only_quic.sessions, 1);
        let all = Remaining::of(&[worker(2, 1, 0, 1), worker(1, 3, 5, 1)]);
        assert_eq!((all.allocations, all.sessions), (3, 9));
    }
}
