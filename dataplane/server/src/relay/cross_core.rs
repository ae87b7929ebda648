//! The hand-off between cores: records in and out of the cross-core rings (RECV frames, node
//! presence, mesh links, GONE notices).

use super::*;

/// Record types in the cross-core rings.
pub(super) mod record {
    pub(in crate::relay) const FRAME: u8 = 0;
    pub(in crate::relay) const ARRIVE: u8 = 1;
    pub(in crate::relay) const LEAVE: u8 = 2;
    /// A host's mesh session (it receives from us through it) is up on the sending core.
    pub(in crate::relay) const MESH_UP: u8 = 3;
    pub(in crate::relay) const MESH_DOWN: u8 = 4;
    /// `[GONE][src][dest]`: another host found `dest` gone; tell `src`, on the receiving core.
    pub(in crate::relay) const GONE: u8 = 5;
}

/// A cross-core ring's data bytes for a configured size: a power of two, at least 4 KiB,
/// at most the ring's 2 GiB limit.
pub(super) fn ring_capacity(bytes: usize) -> u32 {
    let bytes = bytes.clamp(4096, 1 << 31).next_power_of_two();
    u32::try_from(bytes).unwrap_or(1 << 31)
}

/// Appends one record to a cross-core ring; a full ring counts a drop there and refuses.
pub(super) fn push_record(tx: &mut RingProducer, parts: &[&[u8]]) -> bool {
    if tx.push_parts(parts).is_ok() {
        return true;
    }
    tx.record_drop();
    false
}

impl RelayShell {
    pub(super) fn drain_inbound(&mut self, now: Instant) {
        let mut depth = 0;
        for from in 0..self.inbound.len() {
            let Some(rx) = self.inbound[from].as_mut() else {
                continue;
            };
            let hub = &mut self.hub;
            let mut quic = self.quic.as_mut();
            let directory = &self.directory;
            let mesh_cores = &mut self.mesh_cores;
            let counters = &mut self.counters;
            let mut replaced = Vec::new();
            let mut gone = Vec::new();
            let scratch = &mut self.inbound_record;
            let drained = rx.drain(|record| {
                let Ok([kind]) = record.array::<1>(0) else {
                    return;
                };
                let Ok(id) = record.array::<16>(1) else {
                    return;
                };
                let epoch = record.array::<8>(17).ok().map(u64::from_le_bytes);
                match (kind, epoch) {
                    (record::FRAME, _) => {
                        if record.copy_suffix_to_vec(17, scratch).is_err() {
                            return;
                        }
                        let dest = NodeId::from_bytes(id);
                        counters.cross_core_in += 1;
                        deliver_remote(
                            now,
                            hub,
                            quic.as_deref_mut(),
                            directory,
                            counters,
                            &dest,
                            scratch,
                        );
                    }
                    (record::ARRIVE, Some(epoch)) => {
                        let node = NodeId::from_bytes(id);
                        directory.arrive(node, from, epoch);
                        replaced.push((node, epoch));
                    }
                    (record::LEAVE, Some(epoch)) => {
                        directory.leave(&NodeId::from_bytes(id), from, epoch);
                    }
                    (record::MESH_UP, _) => {
                        mesh_cores.insert(HostId::from_bytes(id), from);
                    }
                    (record::MESH_DOWN, _) => {
                        let host = HostId::from_bytes(id);
                        if mesh_cores.get(&host) == Some(&from) {
                            mesh_cores.remove(&host);
                        }
                    }
                    (record::GONE, _) => {
                        if let Ok(dest) = record.array::<16>(17) {
                            gone.push((NodeId::from_bytes(id), NodeId::from_bytes(dest)));
                        }
                    }
                    _ => {}
                }
            });
            if let Err(corruption) = drained {
                // Only a bug in this process can corrupt a private ring: say so, loudly.
                tracing::error!(core = self.core, from, %corruption, "cross-core ring corrupt; skipped");
            }
            depth += rx.status().depth_bytes as usize;
            for (src, dest) in gone {
                notify_gone_here(now, &mut self.hub, self.quic.as_mut(), &src, &dest);
            }
            // A newer session of a node we hold lives on another core now: close ours.
            for (node, epoch) in replaced {
                if let Route::Local(conn) = self.hub.route(&node)
                    && let Some(&index) = self.by_hub.get(&conn)
                    && self.conn(index).is_some_and(|c| c.epoch < epoch)
                {
                    let _ = self.hub.close(now, conn, CloseCode::REPLACED);
                }
                if let Some(quic) = self.quic.as_mut()
                    && self
                        .quic_sessions
                        .values()
                        .any(|&(n, e)| n == node && e < epoch)
                {
                    quic.close_node(now, &node, quic::CloseReason::Replaced);
                }
            }
        }
        self.counters.cross_core_depth = depth as u64;
    }

    pub(super) fn push_frame(&mut self, core: usize, dest: &NodeId, frame: &[u8]) -> bool {
        let Some(tx) = self.outbound.get_mut(core).and_then(Option::as_mut) else {
            return false;
        };
        if push_record(tx, &[&[record::FRAME], dest.as_bytes(), frame]) {
            self.counters.cross_core_out += 1;
            self.dirty[core] = true;
            true
        } else {
            self.counters.cross_core_full += 1;
            false
        }
    }

    /// Node presence (`ARRIVE`/`LEAVE`) to every other core.
    pub(super) fn broadcast(&mut self, kind: u8, node: &NodeId, epoch: u64) {
        self.broadcast_record(&[&[kind], node.as_bytes(), &epoch.to_le_bytes()]);
    }

    /// Where a host's mesh session is (`MESH_UP`/`MESH_DOWN`) to every other core.
    pub(super) fn broadcast_host(&mut self, kind: u8, host: &HostId) {
        self.broadcast_record(&[&[kind], host.as_bytes()]);
    }

    pub(super) fn broadcast_record(&mut self, parts: &[&[u8]]) {
        for (core, tx) in self.outbound.iter_mut().enumerate() {
            let Some(tx) = tx else { continue };
            // Presence records are small and rare; a full ring loses one, and the node's next
            // session (or its peers' PEER_GONE) corrects it.
            if push_record(tx, parts) {
                self.dirty[core] = true;
            } else {
                self.counters.cross_core_full += 1;
            }
        }
    }
}
