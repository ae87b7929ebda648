//! Executing the core's routing decision: proto's [`Hub::route_frame`] says where a RECV
//! frame goes (a [`Hop`]); the shell pushes it to the cross-core ring, hands it to the QUIC
//! relay or the mesh link, or counts the drop. Nothing here decides a route.

use super::*;

impl RelayShell {
    /// A finished RECV frame for `dest` from `from` (a client of this core, or a mesh link),
    /// routed by the hub and sent on. Returns whether it was handed on.
    pub(super) fn route_and_send(
        &mut self,
        now: Instant,
        dest: &NodeId,
        frame: &[u8],
        from: Origin,
    ) -> bool {
        let hop = self.hub.route_frame(dest, from);
        self.send_hop(now, dest, frame, hop)
    }

    /// Sends a RECV frame for `dest` where `hop` says. Returns whether it was handed on.
    pub(super) fn send_hop(&mut self, now: Instant, dest: &NodeId, frame: &[u8], hop: Hop) -> bool {
        match hop {
            Hop::Session(_) => {
                let queued = matches!(self.hub.handle_remote(dest, frame), Delivery::Queued(_));
                if !queued {
                    self.counters.cross_core_gone += 1;
                }
                queued
            }
            Hop::Quic => {
                match deliver_quic(now, self.quic.as_mut(), &mut self.counters, dest, frame) {
                    Some(queued) => queued,
                    None => {
                        self.counters.cross_core_gone += 1;
                        false
                    }
                }
            }
            Hop::Core(core) => self.push_frame(core, dest, frame),
            Hop::Mesh(host) => forward_mesh(&mut self.hub, &mut self.counters, &host, dest, frame),
            Hop::Drop(reason) => {
                count_drop(&mut self.counters, reason);
                false
            }
        }
    }

    /// Another host found `dest` connected nowhere there (a mesh peer's GONE): `src`, our
    /// node, gets a PEER_GONE from the core it is on (rate-limited per pair there).
    pub(super) fn tell_gone(&mut self, now: Instant, src: &NodeId, dest: &NodeId) {
        match self.hub.route_frame(src, Origin::Mesh) {
            Hop::Core(core) if core != self.core => {
                if let Some(tx) = self.outbound.get_mut(core).and_then(Option::as_mut) {
                    if push_record(
                        tx,
                        CoreRecord::Gone {
                            src: *src,
                            dest: *dest,
                        },
                    ) {
                        self.dirty[core] = true;
                    } else {
                        self.counters.cross_core_full += 1;
                    }
                }
            }
            Hop::Core(_) | Hop::Session(_) | Hop::Quic => {
                notify_gone_here(now, &mut self.hub, self.quic.as_mut(), src, dest);
            }
            // `src` is on another host, or nowhere: nobody here to tell.
            Hop::Mesh(_) | Hop::Drop(_) => {}
        }
    }
}

/// A RECV frame from another core for `dest`: to its session here (WebSocket or QUIC), or
/// on over this core's mesh link when `dest` is on another host.
pub(super) fn deliver_remote(
    now: Instant,
    hub: &mut Hub<Directory>,
    quic: Option<&mut QuicRelay>,
    counters: &mut RelayCounters,
    dest: &NodeId,
    frame: &[u8],
) {
    match hub.route_frame(dest, Origin::Core) {
        Hop::Session(_) => {
            if !matches!(hub.handle_remote(dest, frame), Delivery::Queued(_)) {
                counters.cross_core_gone += 1;
            }
        }
        Hop::Quic => {
            if deliver_quic(now, quic, counters, dest, frame) != Some(true) {
                counters.cross_core_gone += 1;
            }
        }
        Hop::Mesh(host) => {
            forward_mesh(hub, counters, &host, dest, frame);
        }
        // The core never passes a frame from another core on to a third.
        Hop::Core(_) => counters.cross_core_gone += 1,
        Hop::Drop(reason) => count_drop(counters, reason),
    }
}

/// A routing drop in the shell's counters: `mesh_no_link` for a host without a link,
/// `cross_core_gone` for a destination gone (or not to be reached from where the frame
/// came); the core counts every reason apart ([`Directory::drops`]).
fn count_drop(counters: &mut RelayCounters, reason: RouteDrop) {
    if reason == RouteDrop::NoMeshLink {
        counters.mesh_no_link += 1;
    } else {
        counters.cross_core_gone += 1;
    }
}

/// Tells `src`, if it has a session on this core (WebSocket or QUIC), that `dest` is gone.
pub(super) fn notify_gone_here<P: Presence>(
    now: Instant,
    hub: &mut Hub<P>,
    quic: Option<&mut QuicRelay>,
    src: &NodeId,
    dest: &NodeId,
) {
    if hub.notify_gone(now, src, dest) {
        return;
    }
    if let Some(quic) = quic {
        quic.notify_gone(now, src, dest);
    }
}
