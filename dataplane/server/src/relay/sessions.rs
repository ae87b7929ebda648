//! TCP and TLS connections of node sessions: accepting, reading into the hub, the hub's
//! events (authentication, forwards), flushing and closing.

use super::*;

impl RelayShell {
    pub(super) fn poll_sockets(&mut self, now: Instant) {
        let mut ready = std::mem::take(&mut self.ready);
        if let Err(err) = self.poller.poll(&mut ready) {
            tracing::warn!(core = self.core, %err, "relay epoll_wait failed");
        }
        self.more = ready.len() == READY_BUDGET;
        for event in &ready {
            if event.token == LISTENER_TOKEN {
                self.accept(now);
                continue;
            }
            let index = (event.token & u64::from(u32::MAX)) as usize;
            let generation = (event.token >> 32) as u32;
            if self
                .conns
                .get(index)
                .is_none_or(|slot| slot.generation != generation)
            {
                continue;
            }
            if event.writable {
                self.to_flush.push(index);
            }
            if event.readable || event.hangup {
                self.read(now, index);
            }
        }
        self.ready = ready;
    }

    pub(super) fn accept(&mut self, now: Instant) {
        for _ in 0..64 {
            let (stream, peer) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    // EMFILE and friends: the listener stays readable; try next turn.
                    tracing::warn!(core = self.core, %err, "relay accept failed");
                    self.more = true;
                    return;
                }
            };
            if self.by_hub.len() >= self.max_connections {
                self.counters.refused_full += 1;
                drop(stream);
                continue;
            }
            let tls = match self.tls.as_ref().map(|reloader| reloader.config()) {
                Some(config) => match rustls::ServerConnection::new(config) {
                    Ok(tls) => Some(rustls::Connection::Server(tls)),
                    Err(err) => {
                        tracing::warn!(core = self.core, %err, "cannot start TLS");
                        continue;
                    }
                },
                None => None,
            };
            let index = self.alloc_slot();
            let token = self.slot_token(index);
            let hub_conn = self.hub.handle_connect(now);
            let kind = ConnKind::Hub(hub_conn);
            let conn = match Conn::new(stream, tls, self.input_len, kind, token) {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(core = self.core, %peer, %err, "cannot set up a connection");
                    let _ = self.hub.handle_disconnect(hub_conn);
                    self.free.push(index);
                    continue;
                }
            };
            if let Err(err) = self.poller.add(conn.fd(), token) {
                tracing::warn!(core = self.core, %err, "cannot watch a relay connection");
                let _ = self.hub.handle_disconnect(hub_conn);
                self.free.push(index);
                continue;
            }
            self.conns[index].conn = Some(conn);
            self.by_hub.insert(hub_conn, index);
            self.counters.accepted += 1;
        }
        self.more = true;
    }

    pub(super) fn conn(&self, index: usize) -> Option<&Conn> {
        self.conns.get(index)?.conn.as_ref()
    }

    /// Reads what `index` has and feeds it to the hub; with TLS, until rustls holds no more
    /// decrypted input (the socket would not report it again).
    pub(super) fn read(&mut self, now: Instant, index: usize) {
        for _ in 0..16 {
            if !self.read_once(now, index) {
                return;
            }
            let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            if conn.closing || !conn.has_buffered_plaintext() {
                return;
            }
        }
        // Still more: come back next turn.
        self.more = true;
    }

    /// One read and feed; returns whether the connection is still open.
    pub(super) fn read_once(&mut self, now: Instant, index: usize) -> bool {
        let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
            return false;
        };
        match conn.read() {
            ReadOutcome::Data(n) => self.counters.bytes_read += n as u64,
            ReadOutcome::Nothing => {}
            ReadOutcome::Closed | ReadOutcome::Failed => {
                self.to_close.push(index);
                return false;
            }
            ReadOutcome::TlsFailed => {
                self.counters.tls_errors += 1;
                self.to_close.push(index);
                return false;
            }
        }
        if conn.tls_wants_write() {
            self.to_flush.push(index);
        }
        self.feed(now, index);
        true
    }

    /// Hands the buffered input of `index` to the hub (or its mesh client), frame by frame.
    pub(super) fn feed(&mut self, now: Instant, index: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            let Some(hub_conn) = conn.hub_conn() else {
                self.feed_mesh(now, index);
                return;
            };
            let input = conn.pending_input();
            if input.is_empty() {
                conn.compact();
                return;
            }
            let result = self.hub.handle_input(now, hub_conn, input);
            let Ok(input) = result else {
                self.to_close.push(index);
                return;
            };
            if input.consumed == 0 {
                conn.compact();
                return;
            }
            self.counters.frames_in += 1;
            if let Some(forward) = &input.forward {
                self.forward(now, index, forward);
            }
            if let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) {
                conn.consume(input.consumed);
            }
            self.handle_events(now);
        }
    }

    pub(super) fn forward(&mut self, now: Instant, index: usize, forward: &Forward) {
        match forward {
            Forward::Local(_) => {
                self.counters.packets_relayed += 1;
            }
            Forward::Remote { dest, frame } => {
                let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
                    return;
                };
                // Lend the input buffer out while the frame is routed.
                let (input, start) = conn.take_input();
                if let Some(bytes) = input.get(start + frame.start..start + frame.end)
                    && self.route_and_send(now, dest, bytes, Origin::Client)
                {
                    self.counters.packets_relayed += 1;
                }
                if let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) {
                    conn.restore_input(input);
                }
            }
            Forward::Gone(dest) => {
                tracing::trace!(core = self.core, %dest, "SEND to a node connected nowhere");
            }
            Forward::PeerGone { src, dest } => self.tell_gone(now, src, dest),
        }
    }

    pub(super) fn handle_events(&mut self, now: Instant) {
        while let Some(event) = self.hub.poll_event() {
            match event {
                HubEvent::Authenticate { conn, token } => {
                    self.token.clear();
                    self.token.extend_from_slice(token);
                    self.authenticate(now, conn);
                }
                HubEvent::Wake { conn } => {
                    if let Some(&index) = self.by_hub.get(&conn) {
                        self.to_flush.push(index);
                    }
                }
                HubEvent::Closed { conn, reason } => {
                    if let Some(&index) = self.by_hub.get(&conn) {
                        tracing::debug!(core = self.core, %conn, reason = reason.as_str(), "relay session closed");
                        if let Some(c) = self.conns[index].conn.as_mut() {
                            c.closing = true;
                        }
                        self.to_flush.push(index);
                        self.to_close.push(index);
                    }
                }
            }
        }
    }

    pub(super) fn authenticate(&mut self, now: Instant, conn: ConnId) {
        if boson_shared::mesh::is_mesh_token(&self.token) {
            self.authenticate_mesh(now, conn);
            return;
        }
        match self.authenticator.authenticate(&self.token) {
            Ok(node) => {
                if self.hub.accept(now, conn, node).is_err() {
                    return;
                }
                let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
                if let Some(&index) = self.by_hub.get(&conn)
                    && let Some(c) = self.conns[index].conn.as_mut()
                {
                    c.node = Some(node);
                    c.epoch = epoch;
                    self.counters.sessions += 1;
                }
                self.broadcast(CoreRecord::Arrive { node, epoch });
                self.emit(Event::NodeConnected {
                    node,
                    core: self.core_u16(),
                    transport: if self.tls.is_some() {
                        Transport::Wss
                    } else {
                        Transport::Ws
                    },
                });
            }
            Err(err) => {
                self.counters.auth_rejected += 1;
                tracing::debug!(core = self.core, %conn, %err, "relay token refused");
                let _ = self.hub.reject(now, conn);
            }
        }
    }

    pub(super) fn flush_and_close(&mut self, now: Instant) {
        // Flushing may close (a write error) and closing may queue flushes (Closed events),
        // so loop until both lists are empty.
        loop {
            let mut flush = std::mem::take(&mut self.to_flush);
            flush.sort_unstable();
            flush.dedup();
            for &index in &flush {
                self.flush(index);
            }
            flush.clear();
            if self.to_flush.is_empty() {
                self.to_flush = flush;
            }
            let mut close = std::mem::take(&mut self.to_close);
            close.sort_unstable();
            close.dedup();
            for &index in &close {
                self.close(now, index);
            }
            close.clear();
            if self.to_close.is_empty() {
                self.to_close = close;
            }
            self.handle_events(now);
            if self.to_flush.is_empty() && self.to_close.is_empty() {
                break;
            }
        }
    }

    pub(super) fn flush(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        let (written, blocked) = match conn.flush(&mut self.hub, &mut self.scratch) {
            Flush::Done(written) => (written, false),
            Flush::Blocked(written) => (written, true),
            Flush::Failed => {
                self.to_close.push(index);
                return;
            }
        };
        self.counters.bytes_written += written as u64;
        if conn.want_write != blocked {
            conn.want_write = blocked;
            let _ = self.poller.set_writable(conn.fd(), conn.token, blocked);
        }
        if conn.closing && !blocked {
            self.to_close.push(index);
        }
    }

    pub(super) fn close(&mut self, _now: Instant, index: usize) {
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let Some(conn) = slot.conn.take() else {
            return;
        };
        self.poller.remove(conn.fd());
        self.free.push(index);
        if let ConnKind::Mesh { host, .. } = &conn.kind {
            self.mesh_clients.retain(|&i| i != index);
            self.counters.mesh_links -= 1;
            self.link_down(*host);
            conn.shutdown();
            return;
        }
        let Some(hub_conn) = conn.hub_conn() else {
            return;
        };
        if self.by_hub.remove(&hub_conn).is_some() {
            self.counters.closed += 1;
        }
        let _ = self.hub.handle_disconnect(hub_conn);
        if let Some(host) = conn.mesh_host {
            self.counters.mesh_links -= 1;
            if self.hub.mesh_conn(&host).is_none() {
                self.broadcast(CoreRecord::MeshDown(host));
            }
        }
        if let Some(node) = conn.node {
            self.counters.sessions -= 1;
            // Only if no newer session of the node took over on this core.
            if !matches!(self.hub.route(&node), Route::Local(_)) {
                self.broadcast(CoreRecord::Leave {
                    node,
                    epoch: conn.epoch,
                });
                self.emit(Event::NodeDisconnected {
                    node,
                    core: self.core_u16(),
                });
            }
        }
        conn.shutdown();
    }
}
