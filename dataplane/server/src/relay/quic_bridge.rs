//! The QUIC bridge: the core's QUIC relay, its datagrams, events and sessions, and packets
//! between QUIC and the hub's WebSocket sessions.

use super::*;

impl RelayShell {
    /// One UDP datagram on this worker's QUIC socket.
    pub(crate) fn handle_quic_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(quic) = self.quic.as_mut() else {
            return;
        };
        quic.handle_datagram(now, from, None, data);
        self.quic_events(now);
    }

    /// The next QUIC datagram(s) to send, written into `buf`.
    pub(crate) fn poll_quic_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Option<quic::Transmit> {
        self.quic.as_mut()?.poll_transmit(now, buf)
    }

    /// Counts a QUIC datagram the worker could not send.
    pub(crate) fn quic_tx_oversized(&mut self) {
        self.counters.quic_oversized_tx += 1;
    }

    pub(super) fn quic_events(&mut self, now: Instant) {
        loop {
            let Some(quic) = self.quic.as_mut() else {
                return;
            };
            let Some(event) = quic.poll_event() else {
                return;
            };
            match event {
                QuicEvent::Authenticate { conn, token } => {
                    let verdict = if boson_shared::mesh::is_mesh_token(&token) {
                        Err(AuthError::Invalid("mesh links use WebSocket".into()))
                    } else {
                        self.authenticator.authenticate(&token)
                    };
                    match verdict {
                        Ok(node) => self.accept_quic(now, conn, node),
                        Err(err) => {
                            self.counters.auth_rejected += 1;
                            tracing::debug!(core = self.core, %err, "QUIC relay token refused");
                            let _ = quic.reject(now, conn);
                        }
                    }
                }
                QuicEvent::Send {
                    conn,
                    src,
                    dest,
                    packet,
                } => {
                    self.counters.quic_packets_in += 1;
                    self.route_quic_packet(now, conn, &src, &dest, &packet);
                }
                QuicEvent::Closed { conn, .. } => {
                    let Some((node, epoch)) = self.quic_sessions.remove(&conn) else {
                        continue;
                    };
                    if self.hub.directory_mut().quic_down(&node, epoch) {
                        self.broadcast(CoreRecord::Leave { node, epoch });
                        self.emit(Event::NodeDisconnected {
                            node,
                            core: self.core_u16(),
                        });
                    }
                }
            }
        }
    }

    pub(super) fn accept_quic(&mut self, now: Instant, conn: quic::QuicConnId, node: NodeId) {
        let Some(quic) = self.quic.as_mut() else {
            return;
        };
        if quic.accept(now, conn, node).is_err() {
            return;
        }
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        // One session per node: a WebSocket session of it on this core gives way.
        if let Route::Local(old) = self.hub.route(&node) {
            let _ = self.hub.close(now, old, CloseCode::REPLACED);
        }
        self.quic_sessions.insert(conn, (node, epoch));
        self.hub.directory_mut().quic_up(node, epoch);
        self.broadcast(CoreRecord::Arrive { node, epoch });
        self.emit(Event::NodeConnected {
            node,
            core: self.core_u16(),
            transport: Transport::Quic,
        });
    }

    /// A SEND from a QUIC client: to a WebSocket session here, a QUIC session here, another
    /// core or host, or back as PEER_GONE.
    pub(super) fn route_quic_packet(
        &mut self,
        now: Instant,
        conn: quic::QuicConnId,
        src: &NodeId,
        dest: &NodeId,
        packet: &[u8],
    ) {
        let hop = self.hub.route_frame(dest, Origin::Client);
        match hop {
            // QUIC to QUIC: no WebSocket frame.
            Hop::Quic => {
                if let Some(quic) = self.quic.as_mut()
                    && matches!(quic.deliver(now, dest, src, packet), quic::Delivery::Queued)
                {
                    self.counters.quic_packets_out += 1;
                    self.counters.packets_relayed += 1;
                }
                return;
            }
            Hop::Drop(RouteDrop::UnknownNode) => {
                if let Some(quic) = self.quic.as_mut() {
                    quic.peer_gone(now, conn, dest);
                }
                return;
            }
            Hop::Session(_) | Hop::Core(_) | Hop::Mesh(_) | Hop::Drop(_) => {}
        }
        let mut frame = std::mem::take(&mut self.frame_scratch);
        relay::encode_recv_frame(&mut frame, src, packet);
        if self.send_hop(now, dest, &frame, hop) {
            self.counters.packets_relayed += 1;
        }
        self.frame_scratch = frame;
    }
}

/// A RECV frame for `dest`'s QUIC session on this core: whether it was queued, or `None`
/// when there is no QUIC relay or the frame is not a RECV.
pub(super) fn deliver_quic(
    now: Instant,
    quic: Option<&mut QuicRelay>,
    counters: &mut RelayCounters,
    dest: &NodeId,
    frame: &[u8],
) -> Option<bool> {
    let (src, packet) = relay::parse_recv_frame(frame)?;
    let queued = matches!(
        quic?.deliver(now, dest, &src, packet),
        quic::Delivery::Queued
    );
    if queued {
        counters.quic_packets_out += 1;
    }
    Some(queued)
}
