//! The relay shell's lifecycle: built from its wiring, driven once per worker turn, counted
//! and closed. The other files of `relay/` hold the rest of [`RelayShell`]'s methods, one
//! responsibility each.

use super::*;

impl RelayShell {
    pub(crate) fn new(core: usize, wiring: RelayWiring, now: Instant) -> anyhow::Result<Self> {
        let RelayWiring {
            listener,
            outbound,
            inbound,
            wakers,
            commands,
            epochs,
            links,
            config,
            tls,
            quic_socket: _,
        } = wiring;
        let poller = Poller::new(READY_BUDGET).context("creating the relay's epoll set")?;
        poller
            .add(listener.as_raw_fd(), LISTENER_TOKEN)
            .context("watching the relay listener")?;
        let input_len = config.ws.min_input_buffer();
        let workers = wakers.len();
        Ok(Self {
            core,
            poller,
            listener,
            hub: Hub::new(config.ws.clone(), Directory::new(), now),
            conns: Vec::new(),
            free: Vec::new(),
            by_hub: HashMap::new(),
            outbound,
            inbound,
            wakers,
            dirty: vec![false; workers],
            inbound_record: Vec::new(),
            commands,
            epochs,
            links,
            mesh: config.mesh,
            mesh_clients: Vec::new(),
            frame_scratch: Vec::with_capacity(config.ws.max_frame()),
            quic_sessions: std::collections::BTreeMap::new(),
            quic: config.quic.map(|quic| {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
                QuicRelay::new(quic, now, seed)
            }),
            ws: config.ws,
            authenticator: config.authenticator,
            events: config.events,
            tls,
            max_connections: config.max_connections_per_worker,
            input_len,
            ready: Vec::with_capacity(READY_BUDGET),
            to_flush: Vec::new(),
            to_close: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            token: Vec::new(),
            counters: RelayCounters::default(),
            hub_stats_at: None,
            stats_stale: true,
            more: false,
        })
    }

    /// The fd the worker's backend watches.
    pub(crate) fn poll_fd(&self) -> std::os::fd::RawFd {
        self.poller.raw_fd()
    }

    /// The earliest hub deadline, or the next refresh of the hub's counters if they are
    /// stale (so an idle worker still publishes the final figures of a burst).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let refresh = match (self.stats_stale, self.hub_stats_at) {
            (true, Some(at)) => Some(at + STATS_INTERVAL),
            _ => None,
        };
        let mesh = self
            .mesh_clients
            .iter()
            .filter_map(|&index| match &self.conn(index)?.kind {
                ConnKind::Mesh { client, .. } => client.poll_timeout(),
                ConnKind::Hub(_) => None,
            })
            .min();
        let quic = self.quic.as_ref().and_then(QuicRelay::poll_timeout);
        [self.hub.poll_timeout(), refresh, mesh, quic]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the next wait must not sleep (ready sockets were left for the next turn).
    pub(crate) const fn has_more(&self) -> bool {
        self.more
    }

    /// One loop turn; `sockets_ready`: the poller's fd reported readiness.
    pub(crate) fn turn(&mut self, now: Instant, sockets_ready: bool) {
        self.stats_stale = true;
        self.run_commands(now);
        self.drain_inbound(now);
        if sockets_ready || self.more {
            self.poll_sockets(now);
        }
        if self.hub.poll_timeout().is_some_and(|at| at <= now) {
            self.hub.handle_timeout(now);
        }
        if let Some(quic) = self.quic.as_mut()
            && quic.poll_timeout().is_some_and(|at| at <= now)
        {
            quic.handle_timeout(now);
            self.quic_events(now);
        }
        for index in self.mesh_clients.clone() {
            if let Some(Conn {
                kind: ConnKind::Mesh { client, .. },
                ..
            }) = self.conns.get_mut(index).and_then(|s| s.conn.as_mut())
                && client.poll_timeout().is_some_and(|at| at <= now)
            {
                client.handle_timeout(now);
                self.mesh_events(index);
            }
        }
        self.handle_events(now);
        self.flush_and_close(now);
        self.wake_dirty();
    }

    pub(super) fn run_commands(&mut self, now: Instant) {
        while let Ok(order) = self.commands.try_recv() {
            match order {
                Order::Command(RelayCommand::Revoke(node)) => {
                    if let Route::Local(conn) = self.hub.route(&node) {
                        let _ = self.hub.close(now, conn, CloseCode::POLICY_VIOLATION);
                    }
                    if let Some(quic) = self.quic.as_mut() {
                        quic.close_node(now, &node, quic::CloseReason::Rejected);
                    }
                    self.quic_events(now);
                }
                Order::Command(RelayCommand::Drain) => {
                    self.hub.start_draining();
                    if let Some(quic) = self.quic.as_mut() {
                        quic.start_draining(now);
                    }
                }
                Order::Command(RelayCommand::Presence { node, host }) => {
                    tracing::debug!(core = self.core, %node, ?host, "presence");
                    self.hub.directory_mut().set_host(node, host);
                }
                Order::MeshLink(link) => self.open_mesh_link(now, *link),
            }
        }
    }

    pub(super) fn alloc_slot(&mut self) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.conns.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.conns.len() - 1
            }
        };
        let slot = &mut self.conns[index];
        slot.generation = slot.generation.wrapping_add(1);
        index
    }

    pub(super) fn slot_token(&self, index: usize) -> u64 {
        (u64::from(self.conns[index].generation) << 32) | index as u64
    }

    pub(super) fn core_u16(&self) -> u16 {
        u16::try_from(self.core).unwrap_or(u16::MAX)
    }

    pub(super) fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    pub(super) fn wake_dirty(&mut self) {
        for (core, dirty) in self.dirty.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                self.wakers[core].wake();
            }
        }
    }

    /// Counters for publishing; the hub's part is refreshed at most every [`STATS_INTERVAL`].
    pub(crate) fn counters(&mut self, now: Instant) -> RelayCounters {
        if self
            .hub_stats_at
            .is_none_or(|at| now.saturating_duration_since(at) >= STATS_INTERVAL)
        {
            self.hub_stats_at = Some(now);
            self.stats_stale = false;
            let stats = self.hub.stats();
            self.counters.drops = stats.drops.total();
            self.counters.queue_drops = stats
                .drops
                .get(boson_dataplane_proto::ws::DropReason::QueueFull);
            self.counters.bytes_relayed = stats.received.bytes;
            let queued: usize = self
                .conns
                .iter()
                .filter_map(|slot| slot.conn.as_ref())
                .filter_map(|conn| self.hub.session(conn.hub_conn()?))
                .map(|session| session.queued_frames())
                .sum();
            self.counters.queued_frames = queued as u64;
        }
        self.counters.connections = self.by_hub.len() as u64;
        self.counters.quic_sessions = self.quic_sessions.len() as u64;
        if let Some(quic) = &self.quic {
            self.counters.quic_drops = quic.stats().drops.total();
        }
        self.counters
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&mut self, now: Instant) {
        for index in 0..self.conns.len() {
            self.close(now, index);
        }
    }
}
