//! Mesh links to other relay hosts: opening and tearing down the sending side, the receiving
//! side's input and events, and authenticating a host's link.

use super::*;

impl RelayShell {
    /// Runs the receiving end of a mesh link on `link.stream`.
    pub(super) fn open_mesh_link(&mut self, now: Instant, link: MeshLink) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let tls = link.tls.map(rustls::Connection::Client);
        let binding = match conn::channel_binding(tls.as_ref(), mesh.allow_plain) {
            Ok(binding) => binding,
            Err(err) => {
                tracing::warn!(host = %link.host, %err, "cannot open a mesh link");
                self.link_down(link.host);
                return;
            }
        };
        let token = mesh
            .key
            .token(mesh.host, link.host, &binding, crate::clock::unix_now());
        let mut nonce = [0u8; 16];
        let mut rng = <conn::MeshRng as rand::SeedableRng>::from_os_rng();
        rand::RngCore::fill_bytes(&mut rng, &mut nonce);
        let client = match MeshClient::new(
            self.ws.clone(),
            &link.authority,
            &link.path,
            token.as_bytes(),
            now,
            nonce,
            rng,
        ) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(host = %link.host, %err, "cannot start a mesh link");
                self.link_down(link.host);
                return;
            }
        };
        let index = self.alloc_slot();
        let token = self.slot_token(index);
        let kind = ConnKind::Mesh {
            host: link.host,
            client: Box::new(client),
        };
        let input = self.ws.min_mesh_input_buffer();
        let conn = match Conn::new(link.stream, tls, input, kind, token) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(host = %link.host, %err, "cannot set up a mesh link");
                self.free.push(index);
                self.link_down(link.host);
                return;
            }
        };
        if let Err(err) = self.poller.add(conn.fd(), token) {
            tracing::warn!(host = %link.host, %err, "cannot watch a mesh link");
            self.free.push(index);
            self.link_down(link.host);
            return;
        }
        tracing::info!(core = self.core, host = %link.host, "mesh link connecting");
        self.conns[index].conn = Some(conn);
        self.mesh_clients.push(index);
        self.counters.mesh_links += 1;
        self.to_flush.push(index);
    }

    pub(super) fn link_down(&self, host: HostId) {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&host);
    }

    /// Input of the receiving end of a mesh link: FORWARDs become RECVs for our nodes.
    pub(super) fn feed_mesh(&mut self, now: Instant, index: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            let Some(outcome) = conn.mesh_input(now) else {
                return;
            };
            match outcome {
                MeshInput::NeedMore => {
                    conn.compact();
                    break;
                }
                MeshInput::Consumed(n) => conn.consume(n),
                MeshInput::Deliver {
                    dest,
                    frame,
                    consumed,
                } => {
                    self.counters.mesh_in += 1;
                    // Lend the input buffer out while the frame is routed.
                    let (input, start) = conn.take_input();
                    let mut gone_src = None;
                    if let Some(bytes) = input.get(start + frame.start..start + frame.end)
                        && !self.route_and_send(now, &dest, bytes, Origin::Mesh)
                    {
                        gone_src = relay::parse_recv_frame(bytes).map(|(src, _)| src);
                    }
                    if let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) {
                        conn.restore_input(input);
                        conn.consume(consumed);
                        // PEER_GONE across hosts: the sending host tells its node.
                        if let (Some(src), ConnKind::Mesh { client, host }) =
                            (gone_src, &mut conn.kind)
                            && client.peer_gone(now, &dest, &src)
                        {
                            tracing::info!(
                                core = self.core,
                                %host,
                                %dest,
                                %src,
                                "mesh: forwarded to a node gone from here; told the sending host"
                            );
                            self.to_flush.push(index);
                        }
                    }
                }
            }
        }
        self.mesh_events(index);
    }

    /// Acts on what the mesh client of `index` reports.
    pub(super) fn mesh_events(&mut self, index: usize) {
        loop {
            let Some(Conn {
                kind: ConnKind::Mesh { client, host },
                ..
            }) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut())
            else {
                return;
            };
            let host = *host;
            let wants_write = client.has_transmit();
            let Some(event) = client.poll_event() else {
                if wants_write {
                    self.to_flush.push(index);
                }
                return;
            };
            match event {
                MeshEvent::Ready(_) => {
                    tracing::info!(core = self.core, %host, "mesh link up");
                }
                MeshEvent::ReconnectHint => {
                    tracing::info!(core = self.core, %host, "mesh peer is draining");
                }
                MeshEvent::Closed(reason) => {
                    tracing::info!(core = self.core, %host, ?reason, "mesh link closed");
                    self.to_flush.push(index);
                    self.to_close.push(index);
                    if let Some(conn) = self.conns[index].conn.as_mut() {
                        conn.closing = true;
                    }
                }
            }
        }
    }

    /// A mesh peer presents its token: it will receive, through this connection, what our
    /// nodes send to nodes on its host.
    pub(super) fn authenticate_mesh(&mut self, now: Instant, conn: ConnId) {
        let binding = self
            .by_hub
            .get(&conn)
            .and_then(|&index| self.conns.get(index)?.conn.as_ref())
            .map(|conn| conn.channel_binding(self.mesh.as_ref().is_some_and(|m| m.allow_plain)));
        let verified = match (&self.mesh, binding) {
            (None, _) => Err("this host has no mesh key".to_owned()),
            (Some(_), None) => Err("the connection is gone".to_owned()),
            (Some(mesh), Some(binding)) => {
                let binding = binding.map_err(|err| err.to_string());
                binding.and_then(|binding| {
                    mesh.key
                        .verify(
                            &self.token,
                            mesh.host,
                            &binding,
                            crate::clock::unix_now(),
                            boson_shared::mesh::DEFAULT_MAX_SKEW,
                        )
                        .map_err(|err| err.to_string())
                })
            }
        };
        match verified {
            Ok(host) if self.hub.accept_mesh(now, conn, host).is_ok() => {
                tracing::info!(core = self.core, %host, "mesh peer connected");
                if let Some(&index) = self.by_hub.get(&conn)
                    && let Some(c) = self.conns[index].conn.as_mut()
                {
                    c.mesh_host = Some(host);
                }
                self.counters.mesh_links += 1;
                self.hub.directory_mut().mesh_here(&host);
                self.broadcast(CoreRecord::MeshUp(host));
            }
            Ok(_) => {}
            Err(err) => {
                self.counters.auth_rejected += 1;
                tracing::info!(core = self.core, %conn, %err, "mesh token refused");
                let _ = self.hub.reject(now, conn);
            }
        }
    }
}

/// A RECV frame for `dest` over `host`'s mesh link, if this hub holds it; counted either way.
pub(super) fn forward_mesh(
    hub: &mut Hub<Directory>,
    counters: &mut RelayCounters,
    host: &HostId,
    dest: &NodeId,
    frame: &[u8],
) -> bool {
    match hub.forward_to_mesh(host, dest, frame) {
        Delivery::Queued(_) => {
            counters.mesh_out += 1;
            true
        }
        Delivery::Gone | Delivery::Malformed => {
            counters.mesh_no_link += 1;
            false
        }
    }
}
