//! Where a relay frame goes, decided by value: [`Hub::route_frame`] returns one [`Hop`] for
//! a destination node and the [`Origin`] of the frame, read from the hub's own sessions and
//! mesh links and from the core's [`Directory`] of everything not connected to its hub.
//!
//! The shell only executes the hop: a local WebSocket session takes the frame through
//! [`Hub::handle_remote`], another core through the cross-core ring (a
//! [`CoreRecord::Frame`](super::handoff::CoreRecord::Frame)), a QUIC session of this core
//! through the QUIC relay, a mesh host through [`Hub::forward_to_mesh`]; a [`Hop::Drop`]
//! names its [`RouteDrop`] reason and is counted in [`Directory::drops`].
//!
//! # The rules
//!
//! ```text
//! dest is ...                 from a client       from another core    from a mesh link
//! a session of this hub       Session             Session              Session
//! QUIC, on this core          Quic                Quic                 Quic
//! on core c                   Core(c)             Drop(CoreLoop)       Core(c)
//! on host h, link here        Mesh(h)             Mesh(h)              Drop(NoMeshBack)
//! on host h, link on core c   Core(c)             Drop(NoMeshLink)     Drop(NoMeshBack)
//! on host h, no link          Drop(NoMeshLink)    Drop(NoMeshLink)     Drop(NoMeshBack)
//! nowhere known               Drop(UnknownNode)   Drop(UnknownNode)    Drop(UnknownNode)
//! ```
//!
//! A frame crosses at most one core boundary on its way in and one on its way out, and a
//! frame that came over the mesh never goes back out over it: two hosts with stale views of
//! a node cannot bounce its packets between them.
//!
//! # The directory
//!
//! Each core owns its [`Directory`] (the hub holds it as its [`Presence`]), and updates it
//! from what it is told:
//!
//! * presence records from the other cores ([`Directory::arrive`], [`Directory::leave`]),
//!   carrying a host-wide session epoch so records of one node from two cores, read in either
//!   order, settle on the newest session;
//! * this core's QUIC sessions ([`Directory::quic_up`], [`Directory::quic_down`]);
//! * the control plane's presence of nodes on other hosts ([`Directory::set_host`]; `None`
//!   when that presence expired or was withdrawn). A session on this host wins over it;
//! * which core holds the mesh link of each host ([`Directory::mesh_up`],
//!   [`Directory::mesh_down`], and [`Directory::mesh_here`] when this core takes one).

use std::collections::{BTreeMap, HashMap};

use boson_shared::{HostId, NodeId};

use super::hub::{ConnId, Hub, Presence, Route};
use crate::stats::{DropCounters, drop_reasons};

/// Where a node not connected to this core's hub is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// On another core of this host, with the session epoch of the record that said so.
    Core {
        /// The core (worker index).
        core: usize,
        /// The session's host-wide epoch.
        epoch: u64,
    },
    /// On another relay host, per the control plane's presence.
    Host(HostId),
    /// On this core, over QUIC, with its session epoch.
    Quic {
        /// The session's host-wide epoch.
        epoch: u64,
    },
}

/// Where a frame being routed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this core: a WebSocket session of its hub, or a QUIC session.
    Client,
    /// Another core of this host, through the cross-core ring.
    Core,
    /// Another relay host, over a mesh link.
    Mesh,
}

/// Where a frame goes: the one decision [`Hub::route_frame`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// To this WebSocket session of the hub ([`Hub::handle_remote`]).
    Session(ConnId),
    /// To the destination's QUIC session on this core.
    Quic,
    /// To another core of this host, through the cross-core ring.
    Core(usize),
    /// Over this hub's mesh link to the host ([`Hub::forward_to_mesh`]).
    Mesh(HostId),
    /// Nowhere; counted in [`Directory::drops`].
    Drop(RouteDrop),
}

/// Why a frame has no [`Hop`] but a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RouteDrop {
    /// The destination is connected nowhere this core knows of.
    UnknownNode,
    /// The frame came over a mesh link and its destination is on another host: it never
    /// goes back out over the mesh.
    NoMeshBack,
    /// The frame came from another core and its destination is on a third: the presence
    /// that sent it there is stale, and frames are not passed on between cores.
    CoreLoop,
    /// The destination is on another host and no mesh link to that host can take the frame
    /// (none on this host; from another core, none on this core).
    NoMeshLink,
}

drop_reasons!(RouteDrop {
    UnknownNode => "unknown_node",
    NoMeshBack => "no_mesh_back",
    CoreLoop => "core_loop",
    NoMeshLink => "no_mesh_link",
});

/// One core's view of the nodes not connected to its hub, and of the mesh links other cores
/// hold; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Directory {
    nodes: HashMap<NodeId, Location>,
    /// Which other core holds the mesh link of each host (this core's own are in the hub).
    /// Few entries, as in the hub's own map of links; a B-tree, because one more hashed key
    /// type in this crate moved the compiler's inlining of SipHash on the TURN core's
    /// peer-to-client path (`benches/icount.sh`: +20 instructions a packet).
    mesh_cores: BTreeMap<HostId, usize>,
    drops: DropCounters<RouteDrop>,
}

impl Presence for Directory {
    fn is_remote(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }
}

impl Directory {
    /// An empty directory: every node unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `node` is, if not on this hub.
    pub fn get(&self, node: &NodeId) -> Option<Location> {
        self.nodes.get(node).copied()
    }

    /// Nodes with a location.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has a location.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Which other core holds the mesh link of `host`, as it announced.
    pub fn mesh_core(&self, host: &HostId) -> Option<usize> {
        self.mesh_cores.get(host).copied()
    }

    /// Frames (and GONE notices) routed to a [`Hop::Drop`], by reason.
    pub const fn drops(&self) -> &DropCounters<RouteDrop> {
        &self.drops
    }

    /// A session of `node` with `epoch` is on `core` (its ARRIVE record); kept if it is
    /// newer than what this directory knows of the node on this host. Returns whether it was.
    pub fn arrive(&mut self, node: NodeId, core: usize, epoch: u64) -> bool {
        let newer = match self.nodes.get(&node) {
            Some(Location::Core { epoch: known, .. } | Location::Quic { epoch: known }) => {
                epoch > *known
            }
            Some(Location::Host(_)) | None => true,
        };
        if newer {
            self.nodes.insert(node, Location::Core { core, epoch });
        }
        newer
    }

    /// The session of `node` with `epoch` on `core` ended (its LEAVE record); a newer
    /// session's location stays.
    pub fn leave(&mut self, node: &NodeId, core: usize, epoch: u64) {
        if self.nodes.get(node) == Some(&Location::Core { core, epoch }) {
            self.nodes.remove(node);
        }
    }

    /// `node` has a QUIC session with `epoch` on this core.
    pub fn quic_up(&mut self, node: NodeId, epoch: u64) {
        self.nodes.insert(node, Location::Quic { epoch });
    }

    /// The QUIC session of `node` with `epoch` on this core ended. Returns whether it was
    /// the node's location (false: a newer session elsewhere took over, or none was known).
    pub fn quic_down(&mut self, node: &NodeId, epoch: u64) -> bool {
        let current = self.nodes.get(node) == Some(&Location::Quic { epoch });
        if current {
            self.nodes.remove(node);
        }
        current
    }

    /// The control plane says `node` is on `host`, or (`None`) on no other host any more:
    /// its presence expired or was withdrawn. A session on this host wins over it.
    pub fn set_host(&mut self, node: NodeId, host: Option<HostId>) {
        match (self.nodes.get(&node), host) {
            (Some(Location::Core { .. } | Location::Quic { .. }), _) | (None, None) => {}
            (_, Some(host)) => {
                self.nodes.insert(node, Location::Host(host));
            }
            (Some(Location::Host(_)), None) => {
                self.nodes.remove(&node);
            }
        }
    }

    /// `core` holds the mesh link of `host` now (its MESH_UP record).
    pub fn mesh_up(&mut self, host: HostId, core: usize) {
        self.mesh_cores.insert(host, core);
    }

    /// `core` no longer holds the mesh link of `host` (its MESH_DOWN record); a link
    /// another core announced since stays.
    pub fn mesh_down(&mut self, host: &HostId, core: usize) {
        if self.mesh_cores.get(host) == Some(&core) {
            self.mesh_cores.remove(host);
        }
    }

    /// This core's hub took the mesh link of `host`: what other cores announced of it is
    /// stale.
    pub fn mesh_here(&mut self, host: &HostId) {
        self.mesh_cores.remove(host);
    }
}

impl Hub<Directory> {
    /// The core's directory.
    pub const fn directory(&self) -> &Directory {
        self.presence()
    }

    /// The core's directory, to update.
    pub const fn directory_mut(&mut self) -> &mut Directory {
        self.presence_mut()
    }

    /// Where a frame for `dest` from `from` goes; see the [module docs](self) for the rules.
    /// A [`Hop::Drop`] is counted in [`Directory::drops`].
    ///
    /// A SEND from one of this hub's own WebSocket sessions is routed by the hub itself
    /// ([`Hub::handle_input`]): a local destination is served there, and a
    /// [`Forward::Remote`](super::Forward::Remote) is routed here with [`Origin::Client`].
    pub fn route_frame(&mut self, dest: &NodeId, from: Origin) -> Hop {
        let hop = self.next_hop(dest, from);
        if let Hop::Drop(reason) = hop {
            self.directory_mut().drops.record(reason);
        }
        hop
    }

    fn next_hop(&self, dest: &NodeId, from: Origin) -> Hop {
        if let Route::Local(conn) = self.route(dest) {
            return Hop::Session(conn);
        }
        let directory = self.directory();
        match (directory.get(dest), from) {
            (None, _) => Hop::Drop(RouteDrop::UnknownNode),
            (Some(Location::Quic { .. }), _) => Hop::Quic,
            (Some(Location::Core { .. }), Origin::Core) => Hop::Drop(RouteDrop::CoreLoop),
            (Some(Location::Core { core, .. }), Origin::Client | Origin::Mesh) => Hop::Core(core),
            (Some(Location::Host(_)), Origin::Mesh) => Hop::Drop(RouteDrop::NoMeshBack),
            (Some(Location::Host(host)), _) if self.mesh_conn(&host).is_some() => Hop::Mesh(host),
            (Some(Location::Host(host)), Origin::Client) => directory
                .mesh_core(&host)
                .map_or(Hop::Drop(RouteDrop::NoMeshLink), Hop::Core),
            (Some(Location::Host(_)), Origin::Core) => Hop::Drop(RouteDrop::NoMeshLink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_drop_labels() {
        crate::stats::assert_reasons_in_order_with_unique_labels(RouteDrop::as_str);
    }
}
