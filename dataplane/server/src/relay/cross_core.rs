//! The hand-off between cores: records in and out of the cross-core rings (RECV frames, node
//! presence, mesh links, GONE notices).

use super::*;

/// A cross-core ring's data bytes for a configured size: a power of two, at least 4 KiB,
/// at most the ring's 2 GiB limit.
pub(super) fn ring_capacity(bytes: usize) -> u32 {
    let bytes = bytes.clamp(4096, 1 << 31).next_power_of_two();
    u32::try_from(bytes).unwrap_or(1 << 31)
}

/// Appends one record to a cross-core ring (its header and a FRAME's frame gathered, so the
/// frame is copied once); a full ring counts a drop there and refuses.
pub(super) fn push_record(tx: &mut RingProducer, record: CoreRecord<'_>) -> bool {
    let mut header = [0; handoff::MAX_HEADER_LEN];
    let (header, body) = record.encode(&mut header);
    if tx.push_parts(&[header, body]).is_ok() {
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
            let counters = &mut self.counters;
            let mut replaced = Vec::new();
            let mut gone = Vec::new();
            let scratch = &mut self.inbound_record;
            let mut undecodable = 0;
            let drained = rx.drain(|record| {
                record.copy_to_vec(scratch);
                let Ok(record) = CoreRecord::parse(scratch) else {
                    undecodable += 1;
                    return;
                };
                match record {
                    CoreRecord::Frame { dest, frame } => {
                        counters.cross_core_in += 1;
                        deliver_remote(now, hub, quic.as_deref_mut(), counters, &dest, frame);
                    }
                    CoreRecord::Arrive { node, epoch } => {
                        hub.directory_mut().arrive(node, from, epoch);
                        replaced.push((node, epoch));
                    }
                    CoreRecord::Leave { node, epoch } => {
                        hub.directory_mut().leave(&node, from, epoch);
                    }
                    CoreRecord::MeshUp(host) => hub.directory_mut().mesh_up(host, from),
                    CoreRecord::MeshDown(host) => hub.directory_mut().mesh_down(&host, from),
                    CoreRecord::Gone { src, dest } => gone.push((src, dest)),
                }
            });
            for _ in 0..undecodable {
                rx.record_undecodable();
            }
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
        if push_record(tx, CoreRecord::Frame { dest: *dest, frame }) {
            self.counters.cross_core_out += 1;
            self.dirty[core] = true;
            true
        } else {
            self.counters.cross_core_full += 1;
            false
        }
    }

    /// Node presence (`ARRIVE`/`LEAVE`) to every other core.
    /// Node presence (ARRIVE/LEAVE) or where a host's mesh session is (MESH_UP/MESH_DOWN),
    /// to every other core.
    pub(super) fn broadcast(&mut self, record: CoreRecord<'_>) {
        for (core, tx) in self.outbound.iter_mut().enumerate() {
            let Some(tx) = tx else { continue };
            // Presence records are small and rare; a full ring loses one, and the node's next
            // session (or its peers' PEER_GONE) corrects it.
            if push_record(tx, record) {
                self.dirty[core] = true;
            } else {
                self.counters.cross_core_full += 1;
            }
        }
    }
}
