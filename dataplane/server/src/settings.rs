//! Setting changes from the control plane (TURN secrets, the per-user quota, the peer filter)
//! for every worker's core, without a lock or a queue on the hot path.
//!
//! Each worker's `Control` holds the newest update of each kind not yet taken and a flag. The
//! worker reads the flag once per loop turn (a relaxed load) and, only when it is set, takes
//! the updates under a lock and hands them to its core before reaping the turn's datagrams
//! ([`PacketCore::handle_update`](crate::PacketCore::handle_update)). A worker busy with
//! traffic sees a change within one turn; an idle one is woken.

use std::sync::Arc;

use crate::packet_core::CoreUpdate;
use crate::worker::Control;

/// Hands setting changes to every worker's core, from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SettingsHandle {
    controls: Vec<Arc<Control>>,
}

impl SettingsHandle {
    pub(crate) const fn new(controls: Vec<Arc<Control>>) -> Self {
        Self { controls }
    }

    /// Gives `update` to every worker and wakes it; it applies before the worker's next
    /// datagram. An update not yet taken is replaced by a newer one of the same kind.
    pub fn update(&self, update: &CoreUpdate) {
        for control in &self.controls {
            control.request_update(update.clone());
        }
    }
}
