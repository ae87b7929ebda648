//! The dataplane's I/O shell: thread-per-core UDP event loops driving a sans-IO protocol core.
//!
//! # Contract
//!
//! This crate owns every socket, every buffer, the clock and the threads; it makes **no
//! protocol decision**. Each worker thread is pinned to a core and runs one event loop (see
//! `worker`) over its own io_uring instance (or epoll, see `io`), its own SO_REUSEPORT
//! listener socket on the shared port, its own relay sockets and its own instance of the
//! protocol core, a [`PacketCore`]. Workers share nothing on the hot path: no locks, no
//! allocation per packet, no cross-core traffic. The kernel's SO_REUSEPORT hash sends all of a
//! client's datagrams to one worker, and a worker binds the relay sockets of the allocations
//! it creates, so both directions of an allocation stay on one core.
//!
//! # Use
//!
//! ```no_run
//! use boson_dataplane::{DataplaneConfig, start};
//! use boson_dataplane_proto::{BindingConfig, StunServer};
//!
//! # fn main() -> anyhow::Result<()> {
//! let config = DataplaneConfig::default(); // 0.0.0.0:3478, one worker per core, io_uring or epoll
//! let dataplane = start(config, |_worker| StunServer::new(BindingConfig::default()))?;
//! // On scrape:
//! let text = boson_dataplane::metrics::render(&dataplane.stats());
//! # drop(text);
//! // On SIGTERM: stop taking new work, wait for what runs to end (or a deadline), stop.
//! let drain = dataplane.drain_handle();
//! drain.start();
//! while !drain.remaining().is_empty() {
//!     # break;
//!     std::thread::sleep(std::time::Duration::from_millis(100));
//! }
//! dataplane.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! * [`packet_core`]: the [`PacketCore`] trait the worker drives, and its implementation for
//!   the STUN Binding responder.
//! * `worker` (private): the per-core event loop and its turn order.
//! * `io` (private): the I/O surface and its io_uring and epoll backends, buffer slots and
//!   headroom (`cargo doc --document-private-items` shows the design notes).
//! * `stats` (private, re-exported: [`WorkerStatsSnapshot`]) and [`metrics`]: per-worker
//!   counters, read without locks, rendered for Prometheus.
//! * [`clock`]: the only place that reads the time.
//! * `drain` (private, re-exported: [`DrainHandle`]): graceful shutdown.
//! * `settings` (private, re-exported: [`SettingsHandle`]): setting changes for every
//!   worker's core.
//! * [`turn_stream`]: STUN and TURN over TCP and TLS on the same workers.

pub mod clock;
mod drain;
mod ifaddrs;
mod io;
pub mod metrics;
pub mod nofile;
pub mod packet_core;
pub mod relay;
mod settings;
mod stats;
pub mod turn_stream;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, mpsc};
use std::thread;

use anyhow::{Context as _, anyhow, ensure};

pub use drain::{DrainHandle, Remaining};
pub use ifaddrs::interface_addresses;
pub use io::{HEADROOM, IoBackend, check_uring};
pub use packet_core::{
    ClientAction, Command, CoreUpdate, PacketCore, PeerAction, PeerAddr, RelayPort, TurnEvent,
};
pub use settings::SettingsHandle;
pub use stats::{WorkerCounters, WorkerStatsSnapshot};
pub use worker::WorkerInfo;

use stats::SharedStats;
use worker::{Control, WorkerSetup};

/// The STUN/TURN port ([RFC 8489 §9]).
///
/// [RFC 8489 §9]: https://www.rfc-editor.org/rfc/rfc8489#section-9
pub const DEFAULT_PORT: u16 = 3478;

/// How the dataplane runs. Validated by [`start`].
#[derive(Clone)]
pub struct DataplaneConfig {
    /// Listener address, bound by every worker with SO_REUSEPORT. Port 0 picks a free port
    /// (see [`Dataplane::local_addr`]). Default: `0.0.0.0:3478`.
    pub listen: SocketAddr,
    /// Number of worker threads. Default: the available parallelism (cores this process may
    /// use), so one worker per core.
    pub workers: usize,
    /// Pin worker `i` to CPU `i` (modulo the CPU count). Default: on; off only helps when
    /// sharing a machine with other pinned work.
    pub pin: bool,
    /// I/O backend. Default: [`IoBackend::Auto`].
    pub backend: IoBackend,
    /// Address relay sockets bind to. Default: the listener's IP.
    pub relay_ip: Option<IpAddr>,
    /// Datagrams handled per loop turn before timers and control get a look-in. Default: 256,
    /// which bounds a turn to well under a millisecond while amortising the wait syscall.
    pub budget: usize,
    /// Buffer slots per worker (2 KiB each), a power of two in `64..=32768`, at least four
    /// times `budget`. Default: 1024 (2 MiB): half for the receive ring, half for replies and
    /// sends in flight.
    pub buffers: usize,
    /// UDP segmentation offload on the listener and relay sockets: GRO on receive (a batch
    /// of one sender's datagrams in one receive, split into its datagrams for the core) and
    /// GSO on send (consecutive datagrams of one size to one address in one send). Where the
    /// kernel refuses it, sockets fall back to one datagram per message, counted as
    /// `udp_offload_refused` and logged once. Default: on.
    pub udp_offload: bool,
    /// The node relay (WebSocket over TCP, optionally TLS) on the same workers. Default: off.
    pub relay: Option<relay::RelayConfig>,
    /// Receives the cores' events (TURN allocations created and ended), called on the worker
    /// threads; it must only queue. Default: none (the events are dropped).
    pub events: Option<relay::EventSink>,
    /// STUN and TURN over TCP and TLS on the same workers. Default: no listener.
    pub stream: turn_stream::StreamConfig,
    /// A second STUN address for RFC 5780 NAT behaviour discovery, answered on every worker
    /// beside the listener. Default: none.
    pub stun_alternate: Option<StunAlternate>,
}

/// The second STUN address of a host (RFC 5780): a Binding-only responder on every worker,
/// whose answers name their origin and the listener as the other address.
#[derive(Debug, Clone, Copy)]
pub struct StunAlternate {
    /// Bound by every worker with SO_REUSEPORT, like the listener. A fixed port: the
    /// listener's answers announce it.
    pub listen: SocketAddr,
    /// Its responders' configuration (RESPONSE-ORIGIN this address, OTHER-ADDRESS the
    /// listener's, both as clients reach them).
    pub binding: boson_dataplane_proto::BindingConfig,
}

impl std::fmt::Debug for DataplaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneConfig")
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("pin", &self.pin)
            .field("backend", &self.backend)
            .field("relay_ip", &self.relay_ip)
            .field("budget", &self.budget)
            .field("buffers", &self.buffers)
            .field("udp_offload", &self.udp_offload)
            .field("relay", &self.relay)
            .field("events", &self.events.is_some())
            .field("stream", &self.stream)
            .field("stun_alternate", &self.stun_alternate)
            .finish()
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            workers: thread::available_parallelism().map_or(1, usize::from),
            pin: true,
            backend: IoBackend::Auto,
            relay_ip: None,
            budget: 256,
            buffers: 1024,
            udp_offload: true,
            relay: None,
            events: None,
            stream: turn_stream::StreamConfig::default(),
            stun_alternate: None,
        }
    }
}

impl DataplaneConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.workers >= 1, "workers must be at least 1");
        ensure!(self.budget >= 1, "budget must be at least 1");
        ensure!(
            self.buffers.is_power_of_two() && (64..=io::bufs::MAX_SLOTS).contains(&self.buffers),
            "buffers must be a power of two in 64..={}, got {}",
            io::bufs::MAX_SLOTS,
            self.buffers
        );
        ensure!(
            self.buffers >= 4 * self.budget,
            "buffers ({}) must be at least 4 × budget ({})",
            self.buffers,
            self.budget
        );
        Ok(())
    }
}

/// Starts the workers: resolves the backend (once), binds the listener sockets, and spawns
/// one pinned thread per worker, each of which builds its core with `make_core` and runs its
/// event loop. Returns once every worker is ready, or the first setup error.
pub fn start<C, F>(config: DataplaneConfig, make_core: F) -> anyhow::Result<Dataplane>
where
    C: PacketCore + 'static,
    F: Fn(WorkerInfo) -> C + Send + Sync + 'static,
{
    config.validate().context("invalid dataplane config")?;
    let backend = io::resolve(config.backend)?;
    let listeners = bind_listeners(config.listen, config.workers)?;
    let mut alternates = match &config.stun_alternate {
        Some(alternate) => {
            ensure!(
                alternate.listen.port() != 0,
                "the second STUN address needs a fixed port (the listener's answers name it)"
            );
            bind_listeners(alternate.listen, config.workers)
                .context("binding the second STUN address")?
                .into_iter()
                .map(|socket| Some((socket, alternate.binding)))
                .collect()
        }
        None => (0..config.workers).map(|_| None).collect::<Vec<_>>(),
    };
    let local_addr = listeners[0]
        .local_addr()
        .context("reading the listener address")?;
    let relay_ip = config.relay_ip.unwrap_or(local_addr.ip());
    let cpus = if config.pin {
        let cpus = core_affinity::get_core_ids().filter(|cpus| !cpus.is_empty());
        if cpus.is_none() {
            tracing::warn!("cannot list CPUs; workers run unpinned");
        }
        cpus
    } else {
        None
    };

    let make_core = Arc::new(make_core);
    let (ready_tx, ready_rx) = mpsc::channel();
    let controls = (0..config.workers)
        .map(|_| Control::new().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .context("creating a worker waker")?;
    let wakers: Vec<_> = controls.iter().map(|c| c.waker()).collect();
    let (mut wirings, relay_handle, relay_addr, tls) = match &config.relay {
        Some(relay) => {
            let (wirings, handle, addr) = relay::wire(relay, &wakers)?;
            let tls = wirings.first().and_then(|w| w.tls.clone());
            (
                wirings.into_iter().map(Some).collect(),
                Some(handle),
                Some(addr),
                tls,
            )
        }
        None => (
            (0..config.workers).map(|_| None).collect::<Vec<_>>(),
            None,
            None,
            None,
        ),
    };
    let stream = turn_stream::wire(&config.stream, config.workers)?;
    let mut stream_wirings = stream.wirings.into_iter();
    let mut dataplane = Dataplane {
        workers: Vec::with_capacity(config.workers),
        local_addr,
        backend,
        relay_addr,
        relay_handle,
        reload_stop: None,
        stream_addrs: (stream.tcp_addr, stream.tls_addr),
        stream_reload_stop: None,
    };
    if let Some(reloader) = stream.reloader {
        dataplane.stream_reload_stop = Some(
            boson_tls::spawn_reloader(reloader, config.stream.tls_reload_interval)
                .context("starting the TURN certificate reloader")?,
        );
    }
    if let (Some(tls), Some(relay)) = (tls, &config.relay) {
        dataplane.reload_stop = Some(
            boson_tls::spawn_reloader(tls, relay.tls_reload_interval)
                .context("starting the certificate reloader")?,
        );
    }
    for (index, listener) in listeners.into_iter().enumerate() {
        let cpu = cpus.as_ref().map(|cpus| cpus[index % cpus.len()]);
        let control = Arc::clone(&controls[index]);
        let stats = Arc::new(SharedStats::new(index, cpu.map(|c| c.id), backend));
        let setup = WorkerSetup {
            index,
            workers: config.workers,
            cpu,
            backend,
            listener,
            relay_ip,
            budget: config.budget,
            buffers: config.buffers,
            udp_offload: config.udp_offload,
            control: Arc::clone(&control),
            stats: Arc::clone(&stats),
            relay: wirings[index].take(),
            events: config.events.clone(),
            stream: stream_wirings.next(),
            stun_alternate: alternates[index].take(),
        };
        let make_core = Arc::clone(&make_core);
        let ready = ready_tx.clone();
        let thread = thread::Builder::new()
            .name(format!("boson-dp-{index}"))
            .spawn(move || worker::main(setup, &*make_core, &ready))
            .context("spawning a worker thread")?;
        dataplane.workers.push(WorkerHandle {
            thread: Some(thread),
            control,
            stats,
        });
    }
    drop(ready_tx);

    for _ in 0..config.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let _ = dataplane.stop();
                return Err(err.context("starting a dataplane worker"));
            }
            Err(mpsc::RecvError) => {
                let err = dataplane.stop().err();
                return Err(err.unwrap_or_else(|| anyhow!("a worker exited during setup")))
                    .context("starting a dataplane worker");
            }
        }
    }
    if let Some(addr) = relay_addr {
        tracing::info!(
            relay_addr = %addr,
            tls = config.relay.as_ref().is_some_and(|r| r.tls.is_some()),
            "node relay listening"
        );
    }
    if dataplane.stream_addrs != (None, None) {
        tracing::info!(
            tcp = ?dataplane.stream_addrs.0,
            tls = ?dataplane.stream_addrs.1,
            "STUN/TURN over TCP/TLS started"
        );
    }
    if let Some(alternate) = &config.stun_alternate {
        tracing::info!(listen = %alternate.listen, "second STUN address (RFC 5780) listening");
    }
    tracing::info!(
        %local_addr,
        workers = config.workers,
        backend = backend.as_str(),
        pinned = cpus.is_some(),
        "dataplane started"
    );
    Ok(dataplane)
}

/// Binds `workers` SO_REUSEPORT sockets on one address (the first one resolves port 0).
fn bind_listeners(listen: SocketAddr, workers: usize) -> anyhow::Result<Vec<UdpSocket>> {
    if listen.port() != 0 {
        // Another process of this user that holds the port with SO_REUSEPORT would silently
        // share it with us, each getting half of the clients. A plain bind fails on any holder.
        drop(io::socket::bind_udp(listen, false).with_context(|| {
            format!("the STUN/TURN port {listen} is in use (is another server running?)")
        })?);
    }
    let first = io::socket::bind_udp(listen, true)
        .with_context(|| format!("binding the listener socket on {listen}"))?;
    let addr = first.local_addr().context("reading the listener address")?;
    let mut sockets = Vec::with_capacity(workers);
    sockets.push(first);
    for _ in 1..workers {
        let socket = io::socket::bind_udp(addr, true)
            .with_context(|| format!("binding another SO_REUSEPORT listener on {addr}"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Reads every worker's published counters; see [`Dataplane::stats_reader`].
#[derive(Debug, Clone)]
pub struct StatsReader(Vec<Arc<SharedStats>>);

impl StatsReader {
    /// Every worker's counters, in worker order.
    pub fn read(&self) -> Vec<WorkerStatsSnapshot> {
        self.0.iter().map(|stats| stats.snapshot()).collect()
    }
}

/// Handle of running workers. Dropping it shuts them down too, ignoring errors.
#[derive(Debug)]
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    local_addr: SocketAddr,
    backend: IoBackend,
    relay_addr: Option<SocketAddr>,
    relay_handle: Option<relay::RelayHandle>,
    reload_stop: Option<boson_tls::ReloadStop>,
    /// The TURN TCP and TLS listeners' addresses.
    stream_addrs: (Option<SocketAddr>, Option<SocketAddr>),
    stream_reload_stop: Option<boson_tls::ReloadStop>,
}

#[derive(Debug)]
struct WorkerHandle {
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
    control: Arc<Control>,
    stats: Arc<SharedStats>,
}

impl Dataplane {
    /// The listener address (with the actual port when configured with port 0).
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node relay's TCP address, if it runs (with the actual port when configured with 0).
    pub const fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }

    /// The TURN-over-TCP listener's address, if it runs (the actual port when configured
    /// with 0).
    pub const fn turn_tcp_addr(&self) -> Option<SocketAddr> {
        self.stream_addrs.0
    }

    /// The TURN-over-TLS listener's address, if it runs.
    pub const fn turn_tls_addr(&self) -> Option<SocketAddr> {
        self.stream_addrs.1
    }

    /// Hands `command` to every worker's relay and wakes them. A no-op without a relay.
    pub fn relay_command(&self, command: &relay::RelayCommand) {
        if let Some(handle) = &self.relay_handle {
            handle.send(command);
        }
    }

    /// A cloneable handle for [`relay_command`](Self::relay_command) and mesh links, from
    /// other threads; `None` without a relay.
    pub fn relay_handle(&self) -> Option<relay::RelayHandle> {
        self.relay_handle.clone()
    }

    /// A handle that starts a graceful drain (see [`DrainHandle`]) and watches it, from any
    /// thread.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle::new(
            self.workers
                .iter()
                .map(|w| Arc::clone(&w.control))
                .collect(),
            self.relay_handle.clone(),
            self.stats_reader(),
        )
    }

    /// A handle that hands setting changes to every worker's core (see [`SettingsHandle`]),
    /// from any thread.
    pub fn settings_handle(&self) -> SettingsHandle {
        SettingsHandle::new(
            self.workers
                .iter()
                .map(|w| Arc::clone(&w.control))
                .collect(),
        )
    }

    /// The backend the workers run ([`IoBackend::Uring`] or [`IoBackend::Epoll`]).
    pub const fn backend(&self) -> IoBackend {
        self.backend
    }

    /// Every worker's counters, in worker order. Lock-free; may lag by one loop turn.
    pub fn stats(&self) -> Vec<WorkerStatsSnapshot> {
        self.stats_reader().read()
    }

    /// A cheap, cloneable reader of the workers' counters that outlives no one: it keeps
    /// reading the last published values after shutdown. For a metrics exporter on another
    /// thread.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.workers.iter().map(|w| Arc::clone(&w.stats)).collect())
    }

    /// Stops every worker, closes every socket, and joins the threads. Returns the final
    /// counters, or the first worker error (or panic).
    pub fn shutdown(mut self) -> anyhow::Result<Vec<WorkerStatsSnapshot>> {
        self.stop()?;
        Ok(self.stats())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.reload_stop.take();
        self.stream_reload_stop.take();
        for worker in &self.workers {
            worker.control.request_shutdown();
        }
        let mut first_error = None;
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let Some(thread) = worker.thread.take() else {
                continue;
            };
            let result = match thread.join() {
                Ok(result) => result.with_context(|| format!("dataplane worker {index} failed")),
                Err(_) => Err(anyhow!("dataplane worker {index} panicked")),
            };
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
