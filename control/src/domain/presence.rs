//! Relay presence: which relay host each node holds its relay session on, for the relay mesh.
//! Pure bookkeeping; the I/O is in the `AppState` methods of [`crate::io::mesh`].
//!
//! * [`LocalSessions`] counts this host's sessions per node from the dataplane's
//!   `NodeConnected`/`NodeDisconnected` events (a node may hold sessions on several cores):
//!   presence is published on the first and withdrawn after the last.
//! * [`RemotePresence`] remembers what the dataplane was told about nodes on *other* hosts
//!   and turns each poll of the shared presence into `Command::Presence` changes.

use std::collections::{BTreeMap, BTreeSet};

use boson_shared::NodeId;
use boson_shared::plane::{Command, HostId};

/// This host's relay sessions, per node and worker core.
#[derive(Debug, Clone, Default)]
pub struct LocalSessions {
    nodes: BTreeMap<NodeId, BTreeSet<u16>>,
}

/// What to publish after a session event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// The node's first session here: publish `node → this host`.
    Publish,
    /// Its last session here ended: withdraw it.
    Withdraw,
    /// Nothing changes for other hosts.
    Keep,
}

impl LocalSessions {
    /// A session of `node` started on `core`.
    pub fn handle_connected(&mut self, node: NodeId, core: u16) -> PresenceChange {
        let cores = self.nodes.entry(node).or_default();
        let first = cores.is_empty();
        cores.insert(core);
        if first {
            PresenceChange::Publish
        } else {
            PresenceChange::Keep
        }
    }

    /// The session of `node` on `core` ended.
    pub fn handle_disconnected(&mut self, node: NodeId, core: u16) -> PresenceChange {
        let Some(cores) = self.nodes.get_mut(&node) else {
            return PresenceChange::Keep;
        };
        cores.remove(&core);
        if cores.is_empty() {
            self.nodes.remove(&node);
            PresenceChange::Withdraw
        } else {
            PresenceChange::Keep
        }
    }

    /// Whether `node` holds a session here.
    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Every node with a session here, by id.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
}

/// The nodes on other hosts, as the dataplane was last told.
#[derive(Debug, Clone, Default)]
pub struct RemotePresence {
    known: BTreeMap<NodeId, HostId>,
}

impl RemotePresence {
    /// `fresh` is every node on another live host: `Presence` for what is new or moved,
    /// `Presence { host: None }` for what is gone. In node order.
    pub fn handle_poll(&mut self, fresh: BTreeMap<NodeId, HostId>) -> Vec<Command> {
        let mut changes: BTreeMap<NodeId, Option<HostId>> = BTreeMap::new();
        for node in self.known.keys() {
            if !fresh.contains_key(node) {
                changes.insert(*node, None);
            }
        }
        for (node, host) in &fresh {
            if self.known.get(node) != Some(host) {
                changes.insert(*node, Some(*host));
            }
        }
        self.known = fresh;
        changes
            .into_iter()
            .map(|(node, host)| Command::Presence { node, host })
            .collect()
    }

    /// Every known remote node again, for a restarted dataplane.
    pub fn resync(&self) -> Vec<Command> {
        self.known
            .iter()
            .map(|(node, host)| Command::Presence {
                node: *node,
                host: Some(*host),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn host(n: u8) -> HostId {
        HostId(uuid::Uuid::from_bytes([n; 16]))
    }

    #[test]
    fn presence_follows_the_first_and_last_session() {
        use PresenceChange::{Keep, Publish, Withdraw};
        let mut sessions = LocalSessions::default();
        // (connected?, node, core, expected)
        let steps = [
            (true, 1, 0, Publish),
            (true, 1, 1, Keep),
            (true, 1, 1, Keep), // a repeated event
            (false, 1, 0, Keep),
            (true, 2, 0, Publish),
            (false, 1, 1, Withdraw),
            (false, 1, 1, Keep), // a repeated event
            (false, 3, 0, Keep), // never connected
        ];
        for (i, (connected, n, core, want)) in steps.into_iter().enumerate() {
            let got = if connected {
                sessions.handle_connected(node(n), core)
            } else {
                sessions.handle_disconnected(node(n), core)
            };
            assert_eq!(got, want, "step {i}");
        }
        assert_eq!(sessions.nodes(), vec![node(2)]);
        assert!(sessions.contains(node(2)) && !sessions.contains(node(1)));
    }

    #[test]
    fn polls_become_presence_changes() {
        let mut remote = RemotePresence::default();
        let first = BTreeMap::from([(node(1), host(1)), (node(2), host(2))]);
        assert_eq!(
            remote.handle_poll(first.clone()),
            vec![
                Command::Presence {
                    node: node(1),
                    host: Some(host(1))
                },
                Command::Presence {
                    node: node(2),
                    host: Some(host(2))
                },
            ]
        );
        assert_eq!(
            remote.handle_poll(first),
            Vec::new(),
            "no change, no command"
        );
        let moved = BTreeMap::from([(node(2), host(1)), (node(3), host(2))]);
        assert_eq!(
            remote.handle_poll(moved),
            vec![
                Command::Presence {
                    node: node(1),
                    host: None
                },
                Command::Presence {
                    node: node(2),
                    host: Some(host(1))
                },
                Command::Presence {
                    node: node(3),
                    host: Some(host(2))
                },
            ]
        );
        assert_eq!(remote.resync().len(), 2);
    }
}
