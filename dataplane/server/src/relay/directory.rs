//! This core's view of where the nodes not connected to it are: on another core (from the
//! cross-core presence records), on another host (from the control plane), or over QUIC here.

use super::*;

/// Where a node not connected to this core is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Location {
    /// On another core of this host, with the session epoch of the record that said so.
    Core { core: usize, epoch: u64 },
    /// On another relay host, per the control plane's presence.
    Host(HostId),
    /// On this core, over QUIC, with its session epoch.
    Quic { epoch: u64 },
}

/// This core's view of the nodes on the other cores.
#[derive(Debug, Clone, Default)]
pub(super) struct Directory(pub(super) Rc<RefCell<HashMap<NodeId, Location>>>);

impl Presence for Directory {
    fn is_remote(&self, node: &NodeId) -> bool {
        self.0.borrow().contains_key(node)
    }
}

impl Directory {
    pub(super) fn get(&self, node: &NodeId) -> Option<Location> {
        self.0.borrow().get(node).copied()
    }

    /// A session of `node` with `epoch` is on `core`; keeps the newest.
    pub(super) fn arrive(&self, node: NodeId, core: usize, epoch: u64) {
        let mut map = self.0.borrow_mut();
        let newer = match map.get(&node) {
            Some(Location::Core { epoch: known, .. } | Location::Quic { epoch: known }) => {
                epoch > *known
            }
            Some(Location::Host(_)) | None => true,
        };
        if newer {
            map.insert(node, Location::Core { core, epoch });
        }
    }

    /// The control plane says `node` is on `host` (or on no other host): a session on this
    /// host's cores wins over it.
    pub(super) fn set_host(&self, node: NodeId, host: Option<HostId>) {
        let mut map = self.0.borrow_mut();
        match (map.get(&node), host) {
            (Some(Location::Core { .. } | Location::Quic { .. }), _) => {}
            (_, Some(host)) => {
                map.insert(node, Location::Host(host));
            }
            (Some(Location::Host(_)), None) => {
                map.remove(&node);
            }
            (None, None) => {}
        }
    }

    /// The session of `node` with `epoch` on `core` ended.
    pub(super) fn leave(&self, node: &NodeId, core: usize, epoch: u64) {
        let mut map = self.0.borrow_mut();
        if map.get(node) == Some(&Location::Core { core, epoch }) {
            map.remove(node);
        }
    }
}
