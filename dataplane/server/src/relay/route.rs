//! Where a finished RECV frame goes once the hub has found it is not for one of this core's
//! WebSocket sessions: another core, a QUIC session here, a mesh host, or nowhere.

use super::*;

impl RelayShell {
    /// A finished RECV frame for `dest` that arrived from outside this core's hub clients (a
    /// mesh link): to a local session, another core, or nowhere.
    /// Returns whether it was handed on (false: `dest` is connected nowhere here).
    pub(super) fn route_frame(&mut self, now: Instant, dest: &NodeId, frame: &[u8]) -> bool {
        match self.hub.route(dest) {
            Route::Local(_) => {
                let queued = matches!(self.hub.handle_remote(dest, frame), Delivery::Queued(_));
                if !queued {
                    self.counters.cross_core_gone += 1;
                }
                queued
            }
            // Never back out over the mesh: a packet from another host is for our nodes.
            Route::Remote(_) | Route::Unknown => self.deliver_frame(now, dest, frame, true),
        }
    }

    /// Another host found `dest` connected nowhere there (a mesh peer's GONE): `src`, our
    /// node, gets a PEER_GONE from the core it is on (rate-limited per pair there).
    pub(super) fn tell_gone(&mut self, now: Instant, src: &NodeId, dest: &NodeId) {
        match self.directory.get(src) {
            Some(Location::Core { core, .. }) if core != self.core => {
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
            Some(Location::Core { .. } | Location::Quic { .. }) | None => {
                notify_gone_here(now, &mut self.hub, self.quic.as_mut(), src, dest);
            }
            Some(Location::Host(_)) => {}
        }
    }

    /// A finished RECV frame for `dest`, which is not a hub client of this core: to the core
    /// or host it is on, or to its QUIC session here. Returns whether it was handed on.
    pub(super) fn deliver_frame(
        &mut self,
        now: Instant,
        dest: &NodeId,
        frame: &[u8],
        from_mesh: bool,
    ) -> bool {
        match self.directory.get(dest) {
            Some(Location::Core { core, .. }) => self.push_frame(core, dest, frame),
            Some(Location::Quic { .. }) => {
                match deliver_quic(now, self.quic.as_mut(), &mut self.counters, dest, frame) {
                    Some(queued) => queued,
                    None => {
                        self.counters.cross_core_gone += 1;
                        false
                    }
                }
            }
            Some(Location::Host(host)) if !from_mesh => self.send_to_host(&host, dest, frame),
            Some(Location::Host(_)) | None => {
                self.counters.cross_core_gone += 1;
                false
            }
        }
    }

    /// Over the mesh link of `host`: from this core if it holds the link, else via the core
    /// that does.
    pub(super) fn send_to_host(&mut self, host: &HostId, dest: &NodeId, frame: &[u8]) -> bool {
        if self.hub.mesh_conn(host).is_some() {
            forward_mesh(&mut self.hub, &mut self.counters, host, dest, frame)
        } else if let Some(&core) = self.mesh_cores.get(host) {
            // That core's inbound handling forwards it (see `deliver_remote`).
            self.push_frame(core, dest, frame)
        } else {
            self.counters.mesh_no_link += 1;
            false
        }
    }
}

/// A RECV frame from another core for `dest`: to its local session (WebSocket or QUIC), or
/// on over the mesh when `dest` is on another host and this core holds that host's link.
pub(super) fn deliver_remote(
    now: Instant,
    hub: &mut Hub<Directory>,
    quic: Option<&mut QuicRelay>,
    directory: &Directory,
    counters: &mut RelayCounters,
    dest: &NodeId,
    frame: &[u8],
) {
    match hub.handle_remote(dest, frame) {
        Delivery::Queued(_) => {}
        Delivery::Malformed => counters.cross_core_gone += 1,
        Delivery::Gone => match directory.get(dest) {
            Some(Location::Host(host)) => {
                forward_mesh(hub, counters, &host, dest, frame);
            }
            Some(Location::Quic { .. }) => {
                if deliver_quic(now, quic, counters, dest, frame) != Some(true) {
                    counters.cross_core_gone += 1;
                }
            }
            Some(Location::Core { .. }) | None => counters.cross_core_gone += 1,
        },
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
