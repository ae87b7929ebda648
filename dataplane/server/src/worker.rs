//! One worker: a thread pinned to a core, owning its I/O backend, its SO_REUSEPORT listener
//! socket, its protocol core, its relay sockets and its buffers, and running one event loop.
//! Nothing is shared with other workers except the published counters and the control flag.
//!
//! # Event loop
//!
//! Each turn makes exactly one blocking call, [`Io::submit_and_wait`], which submits the
//! previous turn's sends and receive re-arms and sleeps until a datagram arrives, the core's
//! next timer is due, or the control flag is raised. Then, in this order (STYLE §11):
//!
//! 1. **pending commands**: drain [`PacketCore::next_command`] (bind or close relay sockets);
//! 2. **input**: reap up to `budget` datagrams and hand each to the core, executing the
//!    action and draining commands after every call; if the budget runs out, the next wait has
//!    a zero timeout so timers and control still run between bursts;
//! 3. **re-arm the timer** from [`PacketCore::poll_timeout`];
//! 4. **fire timers**: [`PacketCore::handle_timeout`] if due, then drain commands;
//! 5. **control**: stop if shutdown was requested;
//!
//! then hands the core's events (allocations created and ended) to the event sink, and
//! publishes its counters. A drain request and setting changes ([`CoreUpdate`]) are passed
//! to the core at the start of the turn, before any input, so no datagram reaped after the
//! request is handled as before it. Checking for them costs one relaxed atomic load per
//! turn; the lock that guards the new values is taken only when there are some.
//!
//! The hot path takes no lock and allocates nothing: datagrams live in pool slots, the core
//! gets borrowed slices, actions and commands are returned by value, and relay sockets are
//! found with a hash-map point lookup.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boson_dataplane_proto::{BindingConfig, BindingOutcome, ClientAddr, DropReason, StunServer};

use crate::clock;
use crate::io::bufs::SLOT_SIZE;
use crate::io::epoll::Epoll;
use crate::io::socket::bind_udp;
use crate::io::uring::Uring;
use crate::io::{
    BufId, CONTROL_LEN, Datagram, Io, IoBackend, RX_START, SocketId, SocketRole, Waker,
};
use crate::packet_core::{
    ClientAction, Command, CoreUpdate, PacketCore, PeerAction, PeerAddr, RelayPort, TurnEvent,
};
use crate::relay::{EventSink, RelayShell, RelayWiring};
use crate::stats::{SharedStats, WorkerCounters};
use crate::turn_stream::{Mux, StreamShell, StreamWiring};

mod stream;

/// At most one dropped datagram is logged per this interval per worker; the rest are
/// counted in the next log line.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a core constructor learns about the worker it will run on.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Index of this worker, `0..workers`.
    pub index: usize,
    /// Number of workers.
    pub workers: usize,
    /// The current time, for cores whose constructor takes `now`.
    pub now: Instant,
    /// The current wall-clock time in Unix seconds.
    pub unix_now: u64,
}

/// The control link of one worker: the shutdown and drain flags, the setting changes not yet
/// taken, and the waker that makes it notice.
#[derive(Debug)]
pub(crate) struct Control {
    shutdown: AtomicBool,
    drain: AtomicBool,
    /// Set after `pending` gained an update; the loop reads it once per turn.
    updated: AtomicBool,
    pending: Mutex<PendingUpdates>,
    waker: Arc<Waker>,
}

/// The newest update of each kind not yet taken: a later one replaces an earlier one (each
/// carries the whole setting), so what waits is bounded whatever the rate of changes.
#[derive(Debug, Default)]
pub(crate) struct PendingUpdates {
    secrets: Option<CoreUpdate>,
    quota: Option<CoreUpdate>,
    peer_filter: Option<CoreUpdate>,
    alternate: Option<CoreUpdate>,
}

impl PendingUpdates {
    fn put(&mut self, update: CoreUpdate) {
        let slot = match &update {
            CoreUpdate::SetSecrets(_) => &mut self.secrets,
            CoreUpdate::SetMaxAllocationsPerUser(_) => &mut self.quota,
            CoreUpdate::SetPeerFilter(_) => &mut self.peer_filter,
            CoreUpdate::SetAlternateServer(_) => &mut self.alternate,
        };
        *slot = Some(update);
    }

    fn into_updates(self) -> impl Iterator<Item = CoreUpdate> {
        [self.secrets, self.quota, self.peer_filter, self.alternate]
            .into_iter()
            .flatten()
    }
}

impl Control {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            shutdown: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            updated: AtomicBool::new(false),
            pending: Mutex::new(PendingUpdates::default()),
            waker: Arc::new(Waker::new()?),
        })
    }

    /// Queues `update` for the core (replacing one of the same kind not yet taken) and wakes
    /// the worker.
    pub(crate) fn request_update(&self, update: CoreUpdate) {
        self.lock_pending().put(update);
        self.updated.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The updates queued since the last call, if any. One relaxed load when there are none.
    fn take_updates(&self) -> Option<PendingUpdates> {
        if !self.updated.load(Ordering::Relaxed) || !self.updated.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.lock_pending()))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingUpdates> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn request_drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether a drain was requested since the last call.
    fn take_drain(&self) -> bool {
        self.drain.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// Everything a worker thread starts from.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) workers: usize,
    pub(crate) cpu: Option<core_affinity::CoreId>,
    pub(crate) backend: IoBackend,
    pub(crate) listener: UdpSocket,
    pub(crate) relay_ip: IpAddr,
    pub(crate) budget: usize,
    pub(crate) buffers: usize,
    pub(crate) udp_offload: bool,
    pub(crate) control: Arc<Control>,
    pub(crate) stats: Arc<SharedStats>,
    pub(crate) relay: Option<RelayWiring>,
    pub(crate) events: Option<EventSink>,
    pub(crate) stream: Option<StreamWiring>,
    /// The socket on the host's second STUN address and its responder's configuration.
    pub(crate) stun_alternate: Option<(UdpSocket, BindingConfig)>,
}

/// Body of a worker thread: pins, sets up, reports readiness on `ready`, then runs the loop
/// until shutdown. A setup error goes to `ready` (the thread then returns `Ok`).
pub(crate) fn main<C, F>(
    setup: WorkerSetup,
    make_core: &F,
    ready: &mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()>
where
    C: PacketCore,
    F: Fn(WorkerInfo) -> C,
{
    if let Some(cpu) = setup.cpu
        && !core_affinity::set_for_current(cpu)
    {
        tracing::warn!(
            worker = setup.index,
            cpu = cpu.id,
            "cannot pin worker; it runs unpinned"
        );
    }
    let waker = Arc::clone(&setup.control.waker);
    match setup.backend {
        IoBackend::Epoll => {
            match Epoll::new(setup.buffers, waker, setup.udp_offload).context("setting up epoll") {
                Ok(io) => launch(setup, io, make_core, ready),
                Err(err) => {
                    let _ = ready.send(Err(err));
                    Ok(())
                }
            }
        }
        IoBackend::Uring | IoBackend::Auto => {
            match Uring::new(setup.buffers, waker, setup.udp_offload) {
                Ok(io) => launch(setup, io, make_core, ready),
                Err(err) => {
                    let _ = ready.send(Err(err.context("setting up io_uring")));
                    Ok(())
                }
            }
        }
    }
}

fn launch<C, I, F>(
    setup: WorkerSetup,
    io: I,
    make_core: &F,
    ready: &mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()>
where
    C: PacketCore,
    I: Io,
    F: Fn(WorkerInfo) -> C,
{
    match Worker::new(setup, io, make_core) {
        Ok(worker) => {
            let _ = ready.send(Ok(()));
            worker.run()
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            Ok(())
        }
    }
}

/// Counters only the worker itself keeps.
#[derive(Debug, Default)]
struct ShellCounters {
    no_tx_buffer: u64,
    relay_missing: u64,
    bad_core_range: u64,
    relay_bind_failed: u64,
    turns: u64,
    budget_exhausted: u64,
}

/// Rate-limited debug log of dropped datagrams.
#[derive(Debug, Default)]
struct DropLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    fn record(&mut self, now: Instant, worker: usize, reason: DropReason, from: SocketAddr) {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < DROP_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::debug!(
            worker,
            reason = reason.as_str(),
            %from,
            suppressed = self.suppressed,
            "dropped datagram"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// One worker's state; see the [module docs](self).
pub(crate) struct Worker<C, I> {
    index: usize,
    core: C,
    io: I,
    listener: SocketId,
    relays: HashMap<RelayPort, SocketId>,
    relay_ip: IpAddr,
    budget: usize,
    control: Arc<Control>,
    shared: Arc<SharedStats>,
    counters: ShellCounters,
    drop_log: DropLog,
    relay: Option<RelayShell>,
    /// Where the core's events go (the control plane); dropped when unset.
    events: Option<EventSink>,
    /// The QUIC relay's socket, and the buffer its datagrams are written into.
    quic_socket: Option<SocketId>,
    quic_buf: Vec<u8>,
    /// TURN over TCP and TLS (`turn_stream`), and the epoll fd over its and the node
    /// relay's sets when both run.
    stream: Option<StreamShell>,
    _mux: Option<Mux>,
    /// The socket on the second STUN address (RFC 5780) and its Binding-only responder.
    stun_alternate: Option<(SocketId, StunServer)>,
}

impl<C: PacketCore, I: Io> Worker<C, I> {
    fn new<F>(setup: WorkerSetup, mut io: I, make_core: &F) -> anyhow::Result<Self>
    where
        F: Fn(WorkerInfo) -> C,
    {
        let listener = io
            .register(setup.listener, SocketRole::Listener)
            .context("registering the listener socket")?;
        let now = clock::now();
        let core = make_core(WorkerInfo {
            index: setup.index,
            workers: setup.workers,
            now,
            unix_now: clock::unix_now(),
        });
        let stun_alternate = match setup.stun_alternate {
            Some((socket, binding)) => Some((
                io.register(socket, SocketRole::StunAlternate)
                    .context("registering the second STUN socket")?,
                StunServer::new(binding),
            )),
            None => None,
        };
        let mut quic_socket = None;
        let relay = match setup.relay {
            Some(mut wiring) => {
                if let Some(socket) = wiring.quic_socket.take() {
                    quic_socket = Some(
                        io.register(socket, SocketRole::Quic)
                            .context("registering the QUIC relay socket")?,
                    );
                }
                let shell = RelayShell::new(setup.index, wiring, now)
                    .context("setting up the node relay")?;
                Some(shell)
            }
            None => None,
        };
        let stream = match setup.stream {
            Some(wiring) => {
                Some(StreamShell::new(wiring).context("setting up the TURN stream listeners")?)
            }
            None => None,
        };
        let mux = match (&relay, &stream) {
            (Some(relay), Some(stream)) => {
                let mux = Mux::new(&[relay.poll_fd(), stream.poll_fd()])
                    .context("joining the relay's and the TURN streams' epoll sets")?;
                io.watch_aux(mux.raw_fd())
                    .context("watching the TCP sockets")?;
                Some(mux)
            }
            (Some(relay), None) => {
                io.watch_aux(relay.poll_fd())
                    .context("watching the node relay's sockets")?;
                None
            }
            (None, Some(stream)) => {
                io.watch_aux(stream.poll_fd())
                    .context("watching the TURN stream sockets")?;
                None
            }
            (None, None) => None,
        };
        Ok(Self {
            index: setup.index,
            core,
            io,
            listener,
            relays: HashMap::new(),
            relay_ip: setup.relay_ip,
            budget: setup.budget,
            control: setup.control,
            shared: setup.stats,
            counters: ShellCounters::default(),
            drop_log: DropLog::default(),
            relay,
            events: setup.events,
            quic_socket,
            quic_buf: Vec::with_capacity(64 * 1024),
            stream,
            _mux: mux,
            stun_alternate,
        })
    }

    /// Runs the event loop until shutdown, then closes every socket.
    fn run(mut self) -> anyhow::Result<()> {
        tracing::debug!(worker = self.index, "dataplane worker running");
        let result = self.event_loop();
        if let Some(relay) = &mut self.relay {
            relay.close_all(clock::now());
        }
        if let Some(stream) = &mut self.stream {
            stream.close_all();
        }
        self.io.close();
        self.relays.clear();
        self.publish(clock::now());
        if let Err(err) = &result {
            tracing::error!(worker = self.index, "dataplane worker failed: {err:#}");
        }
        result
    }

    fn event_loop(&mut self) -> anyhow::Result<()> {
        let mut wait = Some(Duration::ZERO);
        loop {
            self.io
                .submit_and_wait(wait)
                .context("waiting for I/O completions")?;
            let now = clock::now();
            self.counters.turns += 1;
            // A drain or setting requested before this turn covers every datagram it reaps.
            if self.control.take_drain() {
                self.core.start_draining();
            }
            if let Some(updates) = self.control.take_updates() {
                for update in updates.into_updates() {
                    self.core.handle_update(now, &update);
                }
            }

            // 1. Pending commands.
            self.run_commands();
            // 2. Completions and input, within the budget.
            let exhausted = self.handle_input(now);
            // 2b. The node relay: cross-core rings, TCP sockets, its timers, its writes.
            let aux_ready = self.io.take_aux_ready();
            let relay_more = match &mut self.relay {
                Some(relay) => {
                    relay.turn(now, aux_ready);
                    let more = relay.has_more();
                    self.send_quic(now);
                    more
                }
                None => false,
            };
            // 2c. TURN over TCP and TLS: accept, read, hand frames to the core.
            let stream_more = self.stream_turn(now, aux_ready);
            // 3. Re-arm the timer.
            let mut deadline = self.core.poll_timeout();
            // 4. Fire timers.
            if deadline.is_some_and(|at| at <= now) {
                self.core.handle_timeout(now);
                self.run_commands();
                deadline = self.core.poll_timeout();
            }
            if let Some(relay) = &self.relay {
                deadline = match (deadline, relay.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            deadline = self.stream_timeout(now, deadline);
            // 5. Control.
            if self.control.is_shutdown() {
                return Ok(());
            }
            self.forward_events();

            if let Some(stream) = &mut self.stream {
                stream.flush();
            }
            self.io.flush();
            self.publish(now);
            wait = if exhausted || relay_more || stream_more {
                self.counters.budget_exhausted += 1;
                Some(Duration::ZERO)
            } else {
                deadline.map(|at| at.saturating_duration_since(now))
            };
        }
    }

    /// Handles up to `budget` datagrams; returns whether the budget ran out.
    fn handle_input(&mut self, now: Instant) -> bool {
        for _ in 0..self.budget {
            let Some(datagram) = self.io.reap() else {
                return false;
            };
            match datagram.role {
                SocketRole::Listener => self.on_listener(now, datagram),
                SocketRole::Relay(port) => self.on_relay(now, port, datagram),
                SocketRole::Quic => self.on_quic(now, datagram),
                SocketRole::StunAlternate => self.on_stun_alternate(now, datagram),
            }
            self.run_commands();
        }
        true
    }

    fn on_listener(&mut self, now: Instant, datagram: Datagram) {
        let Datagram { from, buf, len, .. } = datagram;
        let Some(out) = self.io.alloc() else {
            self.counters.no_tx_buffer += 1;
            self.io.release(buf);
            return;
        };
        let (rx, tx) = self.io.bufs().pair_mut(&buf, &out);
        let packet = &rx[RX_START..RX_START + len];
        let action = self
            .core
            .handle_listener(now, ClientAddr::new(from), packet, tx);
        // Bind the relay sockets this datagram asked for before its reply is queued. If one
        // cannot be bound, the reply (an Allocate success naming that port) is withheld: the
        // client retransmits and the core, told by `handle_relay_failed`, answers afresh.
        let failed_before = self.counters.relay_bind_failed;
        self.run_commands();
        let bind_failed = self.counters.relay_bind_failed != failed_before;
        match action {
            ClientAction::Reply { .. } if bind_failed => {
                self.io.release(buf);
                self.io.release(out);
            }
            ClientAction::Reply { dst, len } => {
                self.io.release(buf);
                if len <= SLOT_SIZE {
                    self.io.send(self.listener, dst.get(), out, 0..len);
                } else {
                    self.counters.bad_core_range += 1;
                    self.io.release(out);
                }
            }
            ClientAction::Relay {
                port,
                peer,
                payload,
            } => {
                self.io.release(out);
                self.send_relayed(port, peer, buf, payload, len);
            }
            ClientAction::Absorb => {
                self.io.release(buf);
                self.io.release(out);
            }
            ClientAction::Drop(reason) => {
                self.io.release(buf);
                self.io.release(out);
                self.drop_log.record(now, self.index, reason, from);
            }
        }
    }

    /// A client's relayed data, `buf[RX_START + payload]` of a `len`-byte packet the core
    /// read, out of the relay socket of `port` to `peer` (a datagram or a stream frame alike);
    /// `buf` is released when the range is bad or the port has no socket, and counted.
    fn send_relayed(
        &mut self,
        port: RelayPort,
        peer: PeerAddr,
        buf: BufId,
        payload: std::ops::Range<usize>,
        len: usize,
    ) {
        match self.relays.get(&port).copied() {
            _ if payload.start > payload.end || payload.end > len => {
                self.counters.bad_core_range += 1;
                self.io.release(buf);
            }
            Some(socket) => {
                let range = RX_START + payload.start..RX_START + payload.end;
                self.io.send(socket, peer.get(), buf, range);
            }
            None => {
                self.counters.relay_missing += 1;
                self.io.release(buf);
            }
        }
    }

    /// A datagram on the second STUN address: Binding only, answered from that socket.
    fn on_stun_alternate(&mut self, now: Instant, datagram: Datagram) {
        let Datagram { from, buf, len, .. } = datagram;
        let Some((socket, responder)) = &mut self.stun_alternate else {
            self.io.release(buf);
            return;
        };
        let socket = *socket;
        let Some(out) = self.io.alloc() else {
            self.counters.no_tx_buffer += 1;
            self.io.release(buf);
            return;
        };
        let (rx, tx) = self.io.bufs().pair_mut(&buf, &out);
        let packet = &rx[RX_START..RX_START + len];
        let outcome = responder.handle_datagram(ClientAddr::new(from), packet, tx);
        self.io.release(buf);
        match outcome {
            BindingOutcome::Reply { dst, len } if len <= SLOT_SIZE => {
                self.io.send(socket, dst.get(), out, 0..len);
            }
            BindingOutcome::Reply { .. } => {
                self.counters.bad_core_range += 1;
                self.io.release(out);
            }
            BindingOutcome::Absorb => self.io.release(out),
            BindingOutcome::Drop(reason) => {
                self.io.release(out);
                self.drop_log.record(now, self.index, reason, from);
            }
        }
    }

    fn on_quic(&mut self, now: Instant, datagram: Datagram) {
        let Datagram { from, buf, len, .. } = datagram;
        if let Some(relay) = &mut self.relay {
            let slot = self.io.bufs().slot_mut(&buf);
            relay.handle_quic_datagram(now, from, &slot[RX_START..RX_START + len]);
        }
        self.io.release(buf);
        self.send_quic(now);
    }

    /// Sends what the QUIC relay has queued, one buffer slot per datagram (a GSO batch is
    /// split into its segments).
    fn send_quic(&mut self, now: Instant) {
        let (Some(relay), Some(socket)) = (&mut self.relay, self.quic_socket) else {
            return;
        };
        while let Some(transmit) = relay.poll_quic_transmit(now, &mut self.quic_buf) {
            let data = &self.quic_buf[..transmit.len.min(self.quic_buf.len())];
            let segment = transmit.segment_size.unwrap_or(data.len()).max(1);
            for datagram in data.chunks(segment) {
                if datagram.len() > SLOT_SIZE {
                    relay.quic_tx_oversized();
                    continue;
                }
                let Some(out) = self.io.alloc() else {
                    self.counters.no_tx_buffer += 1;
                    continue;
                };
                self.io.bufs().slot_mut(&out)[..datagram.len()].copy_from_slice(datagram);
                self.io.send(socket, transmit.dst, out, 0..datagram.len());
            }
        }
    }

    fn on_relay(&mut self, now: Instant, port: RelayPort, datagram: Datagram) {
        let Datagram { from, buf, len, .. } = datagram;
        // The core sees the payload at HEADROOM: the slot from behind the control area.
        let slot = &mut self.io.bufs().slot_mut(&buf)[CONTROL_LEN..];
        match self
            .core
            .handle_relay(now, port, PeerAddr::new(from), slot, len)
        {
            PeerAction::Forward { dst, range } if dst.is_stream() => {
                self.forward_to_stream(dst, buf, range);
            }
            PeerAction::Forward { dst, range } => {
                if range.start <= range.end && range.end <= SLOT_SIZE - CONTROL_LEN {
                    let range = CONTROL_LEN + range.start..CONTROL_LEN + range.end;
                    self.io.send(self.listener, dst.get(), buf, range);
                } else {
                    self.counters.bad_core_range += 1;
                    self.io.release(buf);
                }
            }
            PeerAction::Drop(reason) => {
                self.io.release(buf);
                self.drop_log.record(now, self.index, reason, from);
            }
        }
    }

    /// Hands every queued event of the core to the sink: allocations for the control plane's
    /// view. The sink only queues, so the loop never waits for the control plane.
    fn forward_events(&mut self) {
        let core = u16::try_from(self.index).unwrap_or(u16::MAX);
        while let Some(event) = self.core.poll_event() {
            let Some(sink) = &self.events else {
                continue;
            };
            sink(match event {
                TurnEvent::AllocationCreated { relay, user } => {
                    boson_shared::plane::Event::AllocationCreated { core, user, relay }
                }
                TurnEvent::AllocationEnded { relay } => {
                    boson_shared::plane::Event::AllocationExpired { core, relay }
                }
            });
        }
    }

    /// Executes every queued command of the core.
    fn run_commands(&mut self) {
        while let Some(command) = self.core.next_command() {
            match command {
                Command::CreateAllocation { port } => self.bind_relay(port),
                Command::FreeAllocation { port } => match self.relays.remove(&port) {
                    Some(socket) => self.io.unregister(socket),
                    None => {
                        tracing::debug!(worker = self.index, %port, "free of an unknown relay port")
                    }
                },
            }
        }
    }

    fn bind_relay(&mut self, port: RelayPort) {
        if self.relays.contains_key(&port) {
            tracing::warn!(worker = self.index, %port, "relay port allocated twice; ignored");
            return;
        }
        let addr = SocketAddr::new(self.relay_ip, port.get());
        let registered = bind_udp(addr, false)
            .and_then(|socket| self.io.register(socket, SocketRole::Relay(port)));
        match registered {
            Ok(socket) => {
                self.relays.insert(port, socket);
            }
            Err(err) => {
                self.counters.relay_bind_failed += 1;
                tracing::debug!(worker = self.index, %addr, %err, "cannot bind relay socket");
                self.core.handle_relay_failed(port);
            }
        }
    }

    /// Copies every counter into the shared block (Relaxed stores; this thread is the only
    /// writer).
    fn publish(&mut self, now: Instant) {
        let io = self.io.counters();
        let core = self.core.stats();
        // The second STUN address's responder counts into the same Binding and drop figures.
        let none = boson_dataplane_proto::Stats::default();
        let alt = self
            .stun_alternate
            .as_ref()
            .map_or(&none, |(_, responder)| responder.stats());
        let ws = self
            .relay
            .as_mut()
            .map(|relay| relay.counters(now))
            .unwrap_or_default();
        let stream = self
            .stream
            .as_ref()
            .map(StreamShell::counters)
            .unwrap_or_default();
        let counters = WorkerCounters {
            packets_in: io.rx_packets,
            bytes_in: io.rx_bytes,
            packets_out: io.tx_packets,
            bytes_out: io.tx_bytes,
            sends_failed: io.tx_failed,
            rx_truncated: io.rx_truncated,
            rx_overflow: io.rx_overflow,
            rx_no_buffer: io.rx_no_buffer,
            rx_gro_batches: io.rx_gro_batches,
            tx_gso_sends: io.tx_gso_sends,
            udp_offload_refused: io.udp_offload_refused,
            no_tx_buffer: self.counters.no_tx_buffer,
            relay_missing: self.counters.relay_missing,
            bad_core_range: self.counters.bad_core_range,
            relay_bind_failed: self.counters.relay_bind_failed,
            relay_sockets: self.relays.len() as u64,
            rx_rearms: io.rx_rearms,
            turns: self.counters.turns,
            budget_exhausted: self.counters.budget_exhausted,
            binding_requests: core.binding_requests + alt.binding_requests,
            binding_success: core.binding_success + alt.binding_success,
            binding_errors: core.binding_errors + alt.binding_errors,
            binding_indications: core.binding_indications + alt.binding_indications,
            allocations: core.allocations,
            allocations_created: core.allocations_created,
            allocations_expired: core.allocations_expired,
            allocations_deleted: core.allocations_deleted,
            permissions: core.permissions,
            channels: core.channels,
            turn_success_responses: core.success_responses,
            turn_error_responses: core.error_responses.total(),
            relayed_to_peer_packets: core.client_to_peer.packets,
            relayed_to_peer_bytes: core.client_to_peer.bytes,
            relayed_to_client_packets: core.peer_to_client.packets,
            relayed_to_client_bytes: core.peer_to_client.bytes,
            ws_accepted: ws.accepted,
            ws_closed: ws.closed,
            ws_refused_full: ws.refused_full,
            ws_connections: ws.connections,
            ws_sessions: ws.sessions,
            ws_auth_rejected: ws.auth_rejected,
            ws_tls_errors: ws.tls_errors,
            ws_frames_in: ws.frames_in,
            ws_packets_relayed: ws.packets_relayed,
            ws_bytes_relayed: ws.bytes_relayed,
            ws_bytes_read: ws.bytes_read,
            ws_bytes_written: ws.bytes_written,
            ws_queue_drops: ws.queue_drops,
            ws_drops: ws.drops,
            ws_queued_frames: ws.queued_frames,
            ws_cross_core_out: ws.cross_core_out,
            ws_cross_core_in: ws.cross_core_in,
            ws_cross_core_full: ws.cross_core_full,
            ws_cross_core_gone: ws.cross_core_gone,
            ws_cross_core_depth: ws.cross_core_depth,
            mesh_out: ws.mesh_out,
            mesh_in: ws.mesh_in,
            mesh_no_link: ws.mesh_no_link,
            mesh_links: ws.mesh_links,
            quic_sessions: ws.quic_sessions,
            quic_packets_in: ws.quic_packets_in,
            quic_packets_out: ws.quic_packets_out,
            quic_drops: ws.quic_drops,
            quic_oversized_tx: ws.quic_oversized_tx,
            turn_stream_accepted: stream.accepted,
            turn_stream_connections: stream.connections,
            turn_stream_frames_in: stream.frames_in,
            turn_stream_closed_peer: stream.closed_peer,
            turn_stream_closed_error: stream.closed_error,
            turn_stream_closed_tls: stream.closed_tls,
            turn_stream_closed_framing: stream.closed_framing,
            turn_stream_closed_too_long: stream.closed_too_long,
            turn_stream_closed_idle: stream.closed_idle,
            turn_stream_closed_handshake_timeout: stream.closed_handshake_timeout,
            turn_stream_closed_too_many_per_ip: stream.closed_too_many_per_ip,
            turn_stream_closed_worker_full: stream.closed_worker_full,
            turn_stream_tx_queue_full: stream.tx_queue_full,
            turn_stream_tx_no_connection: stream.tx_no_connection,
        };
        self.shared.publish(
            &counters,
            core.drops
                .iter()
                .map(|(reason, count)| (reason, count + alt.drops.get(reason))),
        );
    }
}

#[cfg(test)]
mod tests {
    use boson_dataplane_proto::turn::PeerFilter;
    use boson_shared::TurnSecret;

    use super::*;

    #[test]
    fn updates_wait_newest_of_each_kind_and_are_taken_once() {
        let control = Control::new().unwrap();
        assert!(control.take_updates().is_none(), "nothing asked");
        control.request_update(CoreUpdate::SetMaxAllocationsPerUser(1));
        control.request_update(CoreUpdate::SetSecrets(vec![TurnSecret::new("a")]));
        control.request_update(CoreUpdate::SetMaxAllocationsPerUser(2));
        control.request_update(CoreUpdate::SetPeerFilter(PeerFilter::new()));
        let taken: Vec<_> = control.take_updates().unwrap().into_updates().collect();
        assert_eq!(
            taken,
            [
                CoreUpdate::SetSecrets(vec![TurnSecret::new("a")]),
                CoreUpdate::SetMaxAllocationsPerUser(2),
                CoreUpdate::SetPeerFilter(PeerFilter::new()),
            ]
        );
        assert!(control.take_updates().is_none(), "taken once");
        control.request_update(CoreUpdate::SetMaxAllocationsPerUser(3));
        let taken: Vec<_> = control.take_updates().unwrap().into_updates().collect();
        assert_eq!(taken, [CoreUpdate::SetMaxAllocationsPerUser(3)]);
    }
}
