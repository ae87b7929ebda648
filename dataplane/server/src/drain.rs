//! Graceful drain: every worker's core stops taking new work (TURN answers new Allocates with
//! 403) and the node relay sends RECONNECT_HINT to every session, while what exists keeps
//! running. The caller watches [`DrainHandle::remaining`] and shuts the dataplane down when
//! nothing is left or its deadline passes; the dataplane has no deadline of its own.

use std::sync::Arc;

use crate::StatsReader;
use crate::relay::{RelayCommand, RelayHandle};
use crate::worker::Control;

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
    /// Authenticated node relay sessions.
    pub sessions: u64,
}

impl Remaining {
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
        for control in &self.controls {
            control.request_drain();
        }
        if let Some(relay) = &self.relay {
            relay.send(&RelayCommand::Drain);
        }
    }

    /// What is still running. The counters lag by at most one loop turn of each worker.
    pub fn remaining(&self) -> Remaining {
        self.stats
            .read()
            .iter()
            .fold(Remaining::default(), |sum, worker| Remaining {
                allocations: sum.allocations + worker.counters.allocations,
                sessions: sum.sessions + worker.counters.ws_sessions,
            })
    }
}
