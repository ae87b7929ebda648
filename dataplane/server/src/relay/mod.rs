//! The node-to-node relay's shell on each worker: a TCP listener (SO_REUSEPORT, one per worker),
//! its connections (plain WebSocket, or TLS with rustls), the per-core [`Hub`] of the sans-IO
//! WebSocket core, and the cross-core hand-off.
//!
//! # One loop per core
//!
//! The relay has no thread of its own. Its sockets live in a small epoll set (`poller`)
//! whose fd the worker's I/O backend watches (`Io::watch_aux`):
//! a readable TCP socket wakes the same blocking wait as a UDP datagram. Each loop turn the
//! worker calls `RelayShell::turn`: drain the inbound cross-core rings, handle ready sockets
//! within a budget, fire the hub's timers, flush the connections that have output, wake the
//! cores that were sent something. Non-blocking reads and writes on readiness; io_uring for TCP
//! is a later step (measured first, as the UDP path was).
//!
//! # Cross-core hand-off
//!
//! A node's session lives on the core whose listener accepted its connection. Every core keeps
//! a `Directory` of the nodes connected to the other cores, kept current by presence records
//! every core broadcasts when a session is accepted or ends. A SEND whose destination is on
//! another core comes out of the hub as [`Forward::Remote`] with the finished RECV frame in the
//! sender's input buffer; the shell appends it to the SPSC ring (`spsc`) of that core pair
//! (one copy, instead of the copy into a local destination's queue) and wakes the core once per
//! turn. The receiving core hands the record, read in place from the ring, to
//! [`Hub::handle_remote`], which copies it into the destination's bounded queue. A full ring
//! drops the frame and counts it (`cross_core_full`): the relay carries WireGuard packets,
//! which tolerate loss, and a slow core must not stall the others.
//!
//! Presence records carry a host-wide session epoch, so records of one node from two cores,
//! read in either order, settle on the newest session; a core that learns a newer session of a
//! node it holds closes its own with 4000 (replaced), so a node has one session per host.
//!
//! # What the shell decides
//!
//! Tokens: [`Authenticator`] (the binary checks the JWT and the control plane's grant).
//! Write batching: everything a connection has queued is copied into one scratch buffer and
//! written with one syscall; when the socket is full the rest waits in the connection's own
//! pending buffer and the hub's bounded queue absorbs (and, when full, drops the oldest of)
//! what arrives meanwhile, so a client that never reads costs a bounded amount of memory.

mod conn;
pub(crate) mod poller;
pub(crate) mod spsc;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boson_dataplane_proto::quic::{self, QuicConfig, QuicEvent, QuicRelay};
use boson_dataplane_proto::ws::frame::{self, CloseCode};
use boson_dataplane_proto::ws::relay::{self, MessageType};
use boson_dataplane_proto::ws::{
    ConnId, Delivery, Forward, Hub, HubEvent, MeshClient, MeshEvent, MeshInput, Presence, Route,
    WsConfig,
};
use boson_shared::plane::{Event, HostId, Transport};
use boson_shared::{MeshKey, NodeId};
use socket2::{Domain, Protocol, Socket, Type};

use crate::io::Waker;
use conn::{Conn, ConnKind, Flush, ReadOutcome};
use poller::{Poller, Ready};

use boson_tls as tls;
pub use boson_tls::{TlsError, TlsSource};

/// Default TCP port of the relay.
pub const DEFAULT_RELAY_PORT: u16 = 8443;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token does not verify (signature, audience, issuer, expiry, format).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is fine but the control plane granted this node nothing (or revoked it, or
    /// a newer registration replaced it).
    #[error("no grant for the node")]
    NoGrant,
}

/// Checks a relay token; implemented by the binary (JWT + control-plane grants). Called once
/// per session on the worker thread, never per packet.
pub trait Authenticator: Send + Sync + 'static {
    /// The node the token authenticates.
    fn authenticate(&self, token: &[u8]) -> Result<NodeId, AuthError>;
}

impl<F: Fn(&[u8]) -> Result<NodeId, AuthError> + Send + Sync + 'static> Authenticator for F {
    fn authenticate(&self, token: &[u8]) -> Result<NodeId, AuthError> {
        self(token)
    }
}

/// Where relay events (node connected / disconnected) go: the control plane.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Orders for the relay from outside the worker threads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayCommand {
    /// Close the node's session (its grant was withdrawn), with 1008.
    Revoke(NodeId),
    /// Send RECONNECT_HINT to every session and to every new one.
    Drain,
    /// `node` holds its session on relay host `host` (`None`: on no other host any more).
    Presence {
        /// The node.
        node: NodeId,
        /// Its host.
        host: Option<HostId>,
    },
}

/// What a worker's order channel carries: broadcast commands, or a mesh link for it alone.
pub(crate) enum Order {
    Command(RelayCommand),
    MeshLink(Box<MeshLink>),
}

/// A TCP connection to another relay host, opened by the binary, for this worker to run the
/// receiving end of the mesh link on.
#[derive(Debug)]
pub struct MeshLink {
    /// The host at the other end.
    pub host: HostId,
    /// The connected socket.
    pub stream: std::net::TcpStream,
    /// The TLS client connection on `stream`, its handshake done (the peer's certificate
    /// checked); `None` for a plain link, which only `MeshSettings::allow_plain` allows.
    pub tls: Option<rustls::ClientConnection>,
    /// `Host` header of the upgrade (the peer's `host:port`).
    pub authority: String,
    /// Upgrade path (the peer's relay path).
    pub path: String,
}

/// Mesh settings: who this host is, and the key hosts prove themselves with.
#[derive(Clone)]
pub struct MeshSettings {
    /// This host.
    pub host: HostId,
    /// The shared mesh key(s).
    pub key: MeshKey,
    /// Accept and open mesh links on plain WebSocket, where a token is bound to no
    /// connection (`--danger-plain-mesh`, for tests). Off: a mesh token counts only on a
    /// TLS 1.3 connection, bound to its exporter keying material.
    pub allow_plain: bool,
}

/// Sends [`RelayCommand`]s to every worker from any thread.
#[derive(Clone)]
pub struct RelayHandle {
    senders: Vec<mpsc::Sender<Order>>,
    wakers: Vec<Arc<Waker>>,
    links: Arc<Mutex<BTreeSet<HostId>>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("workers", &self.senders.len())
            .finish()
    }
}

impl RelayHandle {
    pub(crate) const fn new(
        senders: Vec<mpsc::Sender<Order>>,
        wakers: Vec<Arc<Waker>>,
        links: Arc<Mutex<BTreeSet<HostId>>>,
    ) -> Self {
        Self {
            senders,
            wakers,
            links,
        }
    }

    /// Hands a connected socket to a worker (chosen by the host id) to run the receiving end
    /// of the mesh link to `link.host` on.
    pub fn mesh_link(&self, link: MeshLink) -> bool {
        if self.senders.is_empty() {
            return false;
        }
        let worker = (link.host.as_bytes()[15] as usize) % self.senders.len();
        let host = link.host;
        let sent = self.senders[worker]
            .send(Order::MeshLink(Box::new(link)))
            .is_ok();
        if sent {
            // Until the worker's link closes (it removes it then), the host counts as linked.
            self.links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(host);
            self.wakers[worker].wake();
        }
        sent
    }

    /// Hosts whose mesh link toward this host is open or being opened.
    pub fn mesh_links(&self) -> BTreeSet<HostId> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Hands `command` to every worker and wakes it. Returns `false` once the workers are gone.
    pub fn send(&self, command: &RelayCommand) -> bool {
        let mut any = false;
        for (tx, waker) in self.senders.iter().zip(&self.wakers) {
            if tx.send(Order::Command(command.clone())).is_ok() {
                waker.wake();
                any = true;
            }
        }
        any
    }
}

/// The relay's configuration, part of [`DataplaneConfig`](crate::DataplaneConfig).
#[derive(Clone)]
pub struct RelayConfig {
    /// TCP listen address; every worker binds it with SO_REUSEPORT. Port 0 picks one.
    pub listen: SocketAddr,
    /// Session settings (limits, timeouts, queue bounds).
    pub ws: WsConfig,
    /// Serve TLS (wss) with this certificate, reloaded when its files change.
    pub tls: Option<TlsSource>,
    /// How often the certificate files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Connections per worker beyond which new ones are closed at once.
    pub max_connections_per_worker: usize,
    /// Bytes of each cross-core ring (one per ordered pair of workers).
    pub cross_core_ring_bytes: usize,
    /// Checks tokens.
    pub authenticator: Arc<dyn Authenticator>,
    /// Receives node connected/disconnected events, if set.
    pub events: Option<EventSink>,
    /// Relay mesh between hosts; `None`: this host relays only between its own nodes.
    pub mesh: Option<MeshSettings>,
    /// The same relay over QUIC datagrams on the same port number (UDP); `None`: off.
    pub quic: Option<QuicConfig>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("ws", &self.ws)
            .field("tls", &self.tls)
            .field(
                "max_connections_per_worker",
                &self.max_connections_per_worker,
            )
            .field("cross_core_ring_bytes", &self.cross_core_ring_bytes)
            .field("mesh", &self.mesh.as_ref().map(|m| m.host))
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// Defaults around `authenticator`: `0.0.0.0:8443`, plain ws, default session limits,
    /// 65 536 connections per worker, 4 MiB cross-core rings.
    pub fn new(authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_RELAY_PORT)),
            ws: WsConfig::new(),
            tls: None,
            tls_reload_interval: Duration::from_secs(5),
            max_connections_per_worker: 65_536,
            cross_core_ring_bytes: 4 << 20,
            authenticator,
            events: None,
            mesh: None,
            quic: None,
        }
    }
}

/// Counters of one worker's relay, published with the worker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Accepted connections closed since, for any reason.
    pub closed: u64,
    /// Connections refused because the worker was at its limit.
    pub refused_full: u64,
    /// Gauge: open connections.
    pub connections: u64,
    /// Gauge: authenticated sessions (a replaced one counts until its socket closes).
    pub sessions: u64,
    /// TLS handshakes or records that failed.
    pub tls_errors: u64,
    /// Frames sent to another core.
    pub cross_core_out: u64,
    /// Frames taken from other cores.
    pub cross_core_in: u64,
    /// Frames dropped because the ring to the destination core was full.
    pub cross_core_full: u64,
    /// Frames from other cores whose destination had left.
    pub cross_core_gone: u64,
    /// Frames received (binary messages of any type).
    pub frames_in: u64,
    /// SEND packets relayed (to any core).
    pub packets_relayed: u64,
    /// WireGuard bytes relayed.
    pub bytes_relayed: u64,
    /// Bytes read from sockets (after TLS).
    pub bytes_read: u64,
    /// Bytes written to sockets (before TLS).
    pub bytes_written: u64,
    /// Frames dropped because a destination's queue was full (drop-oldest).
    pub queue_drops: u64,
    /// All drops by the hub, any reason.
    pub drops: u64,
    /// Gauge: frames waiting in the sessions' queues.
    pub queued_frames: u64,
    /// Gauge: bytes waiting in this core's inbound cross-core rings.
    pub cross_core_depth: u64,
    /// Tokens refused.
    pub auth_rejected: u64,
    /// Packets forwarded to another relay host over the mesh.
    pub mesh_out: u64,
    /// Packets received from other relay hosts over the mesh.
    pub mesh_in: u64,
    /// Packets for a node on another host with no mesh link to that host: dropped.
    pub mesh_no_link: u64,
    /// Gauge: mesh links open (both directions).
    pub mesh_links: u64,
    /// Gauge: QUIC relay sessions authenticated on this core.
    pub quic_sessions: u64,
    /// QUIC relay packets received from clients (SEND datagrams).
    pub quic_packets_in: u64,
    /// QUIC relay packets queued to clients (RECV datagrams).
    pub quic_packets_out: u64,
    /// QUIC relay drops, any reason (see the core's counters).
    pub quic_drops: u64,
    /// QUIC datagrams larger than a buffer slot, not sent.
    pub quic_oversized_tx: u64,
}

/// Where a node not connected to this core is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    /// On another core of this host, with the session epoch of the record that said so.
    Core { core: usize, epoch: u64 },
    /// On another relay host, per the control plane's presence.
    Host(HostId),
    /// On this core, over QUIC, with its session epoch.
    Quic { epoch: u64 },
}

/// This core's view of the nodes on the other cores.
#[derive(Debug, Clone, Default)]
struct Directory(Rc<RefCell<HashMap<NodeId, Location>>>);

impl Presence for Directory {
    fn is_remote(&self, node: &NodeId) -> bool {
        self.0.borrow().contains_key(node)
    }
}

impl Directory {
    fn get(&self, node: &NodeId) -> Option<Location> {
        self.0.borrow().get(node).copied()
    }

    /// A session of `node` with `epoch` is on `core`; keeps the newest.
    fn arrive(&self, node: NodeId, core: usize, epoch: u64) {
        let mut map = self.0.borrow_mut();
        let newer = match map.get(&node) {
            Some(Location::Core { epoch: known, .. } | Location::Quic { epoch: known }) => {
                epoch > *known
            }
            Some(Location::Host(_)) | None => true,
        };
        if newer {
            map.insert(node, Location::Core { core, epoch });
        }
    }

    /// The control plane says `node` is on `host` (or on no other host): a session on this
    /// host's cores wins over it.
    fn set_host(&self, node: NodeId, host: Option<HostId>) {
        let mut map = self.0.borrow_mut();
        match (map.get(&node), host) {
            (Some(Location::Core { .. } | Location::Quic { .. }), _) => {}
            (_, Some(host)) => {
                map.insert(node, Location::Host(host));
            }
            (Some(Location::Host(_)), None) => {
                map.remove(&node);
            }
            (None, None) => {}
        }
    }

    /// The session of `node` with `epoch` on `core` ended.
    fn leave(&self, node: &NodeId, core: usize, epoch: u64) {
        let mut map = self.0.borrow_mut();
        if map.get(node) == Some(&Location::Core { core, epoch }) {
            map.remove(node);
        }
    }
}

/// Record types in the cross-core rings.
mod record {
    pub(super) const FRAME: u8 = 0;
    pub(super) const ARRIVE: u8 = 1;
    pub(super) const LEAVE: u8 = 2;
    /// A host's mesh session (it receives from us through it) is up on the sending core.
    pub(super) const MESH_UP: u8 = 3;
    pub(super) const MESH_DOWN: u8 = 4;
    /// `[GONE][src][dest]`: another host found `dest` gone; tell `src`, on the receiving core.
    pub(super) const GONE: u8 = 5;
}

/// What every worker's relay shares, built once by [`start`](crate::start).
pub(crate) struct RelayWiring {
    pub(crate) listener: TcpListener,
    /// This worker's QUIC socket, when QUIC is on.
    pub(crate) quic_socket: Option<std::net::UdpSocket>,
    /// `outbound[j]`: the ring to worker `j` (`None` for itself).
    pub(crate) outbound: Vec<Option<spsc::Producer>>,
    /// `inbound[j]`: the ring from worker `j` (`None` for itself).
    pub(crate) inbound: Vec<Option<spsc::Consumer>>,
    pub(crate) wakers: Vec<Arc<Waker>>,
    pub(crate) commands: mpsc::Receiver<Order>,
    pub(crate) epochs: Arc<AtomicU64>,
    pub(crate) links: Arc<Mutex<BTreeSet<HostId>>>,
    pub(crate) config: RelayConfig,
    pub(crate) tls: Option<Arc<tls::Reloader>>,
}

/// Binds one SO_REUSEPORT TCP listener per worker on `listen` and cross-wires the rings.
pub(crate) fn wire(
    config: &RelayConfig,
    wakers: &[Arc<Waker>],
) -> anyhow::Result<(Vec<RelayWiring>, RelayHandle, SocketAddr)> {
    let workers = wakers.len();
    let tls = match &config.tls {
        Some(source) => Some(Arc::new(
            tls::Reloader::new(source.clone(), "relay")
                .context("loading the relay's TLS certificate")?,
        )),
        None => None,
    };
    if config.listen.port() != 0 {
        // As for the UDP listener: another process of this user holding the port with
        // SO_REUSEPORT would silently share it with us. A plain bind fails on any holder.
        drop(TcpListener::bind(config.listen).with_context(|| {
            format!(
                "the relay port {} is in use (is another server running?)",
                config.listen
            )
        })?);
    }
    let first = bind_tcp(config.listen)
        .with_context(|| format!("binding the relay listener on {}", config.listen))?;
    let addr = first.local_addr().context("reading the relay address")?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(
            bind_tcp(addr).with_context(|| format!("binding another relay listener on {addr}"))?,
        );
    }
    let mut outbound: Vec<Vec<Option<spsc::Producer>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    let mut inbound: Vec<Vec<Option<spsc::Consumer>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    for from in 0..workers {
        for to in 0..workers {
            if from != to {
                let (tx, rx) = spsc::channel(config.cross_core_ring_bytes);
                outbound[from][to] = Some(tx);
                inbound[to][from] = Some(rx);
            }
        }
    }
    let epochs = Arc::new(AtomicU64::new(1));
    let links = Arc::new(Mutex::new(BTreeSet::new()));
    let mut senders = Vec::with_capacity(workers);
    let mut wirings = Vec::with_capacity(workers);
    let mut quic_sockets: Vec<Option<std::net::UdpSocket>> = match &config.quic {
        Some(_) => {
            let udp = SocketAddr::new(addr.ip(), addr.port());
            (0..workers)
                .map(|_| {
                    crate::worker::bind_udp(udp, true)
                        .map(Some)
                        .with_context(|| format!("binding the QUIC relay socket on {udp}"))
                })
                .collect::<anyhow::Result<_>>()?
        }
        None => (0..workers).map(|_| None).collect(),
    };
    for (index, ((listener, outbound), inbound)) in
        listeners.into_iter().zip(outbound).zip(inbound).enumerate()
    {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        wirings.push(RelayWiring {
            listener,
            quic_socket: quic_sockets[index].take(),
            outbound,
            inbound,
            wakers: wakers.to_vec(),
            commands: rx,
            epochs: Arc::clone(&epochs),
            links: Arc::clone(&links),
            config: config.clone(),
            tls: tls.clone(),
        });
    }
    Ok((
        wirings,
        RelayHandle::new(senders, wakers.to_vec(), links),
        addr,
    ))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Token of the listener in the poller; connections use their slab index and generation.
const LISTENER_TOKEN: u64 = u64::MAX;

/// Ready sockets handled per turn.
const READY_BUDGET: usize = 256;

/// Bytes written per `write` syscall at most: many frames of one connection are batched.
const SCRATCH_BYTES: usize = 256 * 1024;

/// How often the hub's O(sessions) counters are gathered.
const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// One worker's relay; see the [module docs](self).
pub(crate) struct RelayShell {
    core: usize,
    poller: Poller,
    listener: TcpListener,
    hub: Hub<Directory>,
    directory: Directory,
    conns: Vec<Slot>,
    free: Vec<usize>,
    by_hub: HashMap<ConnId, usize>,
    outbound: Vec<Option<spsc::Producer>>,
    inbound: Vec<Option<spsc::Consumer>>,
    wakers: Vec<Arc<Waker>>,
    /// Cores sent something this turn: woken once at its end.
    dirty: Vec<bool>,
    commands: mpsc::Receiver<Order>,
    epochs: Arc<AtomicU64>,
    links: Arc<Mutex<BTreeSet<HostId>>>,
    mesh: Option<MeshSettings>,
    /// Which core holds the mesh session of each host (this core's own are in the hub).
    mesh_cores: HashMap<HostId, usize>,
    /// Connections that are receiving ends of mesh links (few): their timers.
    mesh_clients: Vec<usize>,
    ws: WsConfig,
    quic: Option<QuicRelay>,
    /// Authenticated QUIC connections of this core: node and session epoch.
    quic_sessions: std::collections::BTreeMap<quic::QuicConnId, (NodeId, u64)>,
    /// Where RECV frames for hub clients are built from QUIC packets.
    frame_scratch: Vec<u8>,
    authenticator: Arc<dyn Authenticator>,
    events: Option<EventSink>,
    tls: Option<Arc<tls::Reloader>>,
    max_connections: usize,
    input_len: usize,
    ready: Vec<Ready>,
    /// Connections with output to flush at the end of the turn.
    to_flush: Vec<usize>,
    /// Connections to close at the end of the turn.
    to_close: Vec<usize>,
    scratch: Box<[u8]>,
    token: Vec<u8>,
    counters: RelayCounters,
    hub_stats_at: Option<Instant>,
    /// Something happened since the hub's counters were last gathered.
    stats_stale: bool,
    /// There may be ready sockets left over from the budget: poll again without sleeping.
    more: bool,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

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
        let directory = Directory::default();
        let input_len = config.ws.min_input_buffer();
        let workers = wakers.len();
        Ok(Self {
            core,
            poller,
            listener,
            hub: Hub::new(config.ws.clone(), directory.clone(), now),
            directory,
            conns: Vec::new(),
            free: Vec::new(),
            by_hub: HashMap::new(),
            outbound,
            inbound,
            wakers,
            dirty: vec![false; workers],
            commands,
            epochs,
            links,
            mesh: config.mesh,
            mesh_cores: HashMap::new(),
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

    fn run_commands(&mut self, now: Instant) {
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
                    self.directory.set_host(node, host);
                }
                Order::MeshLink(link) => self.open_mesh_link(now, *link),
            }
        }
    }

    /// Runs the receiving end of a mesh link on `link.stream`.
    fn open_mesh_link(&mut self, now: Instant, link: MeshLink) {
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

    fn link_down(&self, host: HostId) {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&host);
    }

    fn alloc_slot(&mut self) -> usize {
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

    fn slot_token(&self, index: usize) -> u64 {
        (u64::from(self.conns[index].generation) << 32) | index as u64
    }

    fn drain_inbound(&mut self, now: Instant) {
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
            rx.drain(|record| {
                let Some((&kind, rest)) = record.split_first() else {
                    return;
                };
                let Some(id) = rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                    return;
                };
                let rest = &rest[16..];
                let epoch = rest
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                match (kind, epoch) {
                    (record::FRAME, _) => {
                        let dest = NodeId::from_bytes(id);
                        counters.cross_core_in += 1;
                        deliver_remote(
                            now,
                            hub,
                            quic.as_deref_mut(),
                            directory,
                            counters,
                            &dest,
                            rest,
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
                        if let Some(dest) =
                            rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok())
                        {
                            gone.push((NodeId::from_bytes(id), NodeId::from_bytes(dest)));
                        }
                    }
                    _ => {}
                }
            });
            depth += rx.depth();
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

    fn poll_sockets(&mut self, now: Instant) {
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

    fn accept(&mut self, now: Instant) {
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

    fn conn(&self, index: usize) -> Option<&Conn> {
        self.conns.get(index)?.conn.as_ref()
    }

    /// Reads what `index` has and feeds it to the hub; with TLS, until rustls holds no more
    /// decrypted input (the socket would not report it again).
    fn read(&mut self, now: Instant, index: usize) {
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
    fn read_once(&mut self, now: Instant, index: usize) -> bool {
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
    fn feed(&mut self, now: Instant, index: usize) {
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

    /// Input of the receiving end of a mesh link: FORWARDs become RECVs for our nodes.
    fn feed_mesh(&mut self, now: Instant, index: usize) {
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
                        && !self.route_frame(now, &dest, bytes)
                    {
                        gone_src = recv_parts(bytes).map(|(src, _)| src);
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

    /// A finished RECV frame for `dest` that arrived from outside this core's hub clients (a
    /// mesh link): to a local session, another core, or nowhere.
    /// Returns whether it was handed on (false: `dest` is connected nowhere here).
    fn route_frame(&mut self, now: Instant, dest: &NodeId, frame: &[u8]) -> bool {
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
    fn tell_gone(&mut self, now: Instant, src: &NodeId, dest: &NodeId) {
        match self.directory.get(src) {
            Some(Location::Core { core, .. }) if core != self.core => {
                if let Some(tx) = self.outbound.get_mut(core).and_then(Option::as_mut) {
                    if tx.push(&[&[record::GONE], src.as_bytes(), dest.as_bytes()]) {
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
    fn deliver_frame(
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
    fn send_to_host(&mut self, host: &HostId, dest: &NodeId, frame: &[u8]) -> bool {
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

    fn push_frame(&mut self, core: usize, dest: &NodeId, frame: &[u8]) -> bool {
        let Some(tx) = self.outbound.get_mut(core).and_then(Option::as_mut) else {
            return false;
        };
        if tx.push(&[&[record::FRAME], dest.as_bytes(), frame]) {
            self.counters.cross_core_out += 1;
            self.dirty[core] = true;
            true
        } else {
            self.counters.cross_core_full += 1;
            false
        }
    }

    /// Acts on what the mesh client of `index` reports.
    fn mesh_events(&mut self, index: usize) {
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

    fn quic_events(&mut self, now: Instant) {
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
                    if self.directory.get(&node) == Some(Location::Quic { epoch }) {
                        self.directory.0.borrow_mut().remove(&node);
                        self.broadcast(record::LEAVE, &node, epoch);
                        self.emit(Event::NodeDisconnected {
                            node,
                            core: self.core_u16(),
                        });
                    }
                }
            }
        }
    }

    fn accept_quic(&mut self, now: Instant, conn: quic::QuicConnId, node: NodeId) {
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
        self.directory
            .0
            .borrow_mut()
            .insert(node, Location::Quic { epoch });
        self.broadcast(record::ARRIVE, &node, epoch);
        self.emit(Event::NodeConnected {
            node,
            core: self.core_u16(),
            transport: Transport::Quic,
        });
    }

    /// A SEND from a QUIC client: to a WebSocket session here, a QUIC session here, another
    /// core or host, or back as PEER_GONE.
    fn route_quic_packet(
        &mut self,
        now: Instant,
        conn: quic::QuicConnId,
        src: &NodeId,
        dest: &NodeId,
        packet: &[u8],
    ) {
        if let Some(Location::Quic { .. }) = self.directory.get(dest) {
            if let Some(quic) = self.quic.as_mut()
                && matches!(quic.deliver(now, dest, src, packet), quic::Delivery::Queued)
            {
                self.counters.quic_packets_out += 1;
                self.counters.packets_relayed += 1;
            }
            return;
        }
        let route = self.hub.route(dest);
        if matches!(route, Route::Unknown) {
            if let Some(quic) = self.quic.as_mut() {
                quic.peer_gone(now, conn, dest);
            }
            return;
        }
        let mut frame = std::mem::take(&mut self.frame_scratch);
        build_recv(&mut frame, src, packet);
        let delivered = match route {
            Route::Local(_) => matches!(self.hub.handle_remote(dest, &frame), Delivery::Queued(_)),
            Route::Remote(_) | Route::Unknown => self.deliver_frame(now, dest, &frame, false),
        };
        if delivered {
            self.counters.packets_relayed += 1;
        }
        self.frame_scratch = frame;
    }

    fn forward(&mut self, now: Instant, index: usize, forward: &Forward) {
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
                    && self.deliver_frame(now, dest, bytes, false)
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

    fn handle_events(&mut self, now: Instant) {
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

    fn authenticate(&mut self, now: Instant, conn: ConnId) {
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
                self.broadcast(record::ARRIVE, &node, epoch);
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

    /// A mesh peer presents its token: it will receive, through this connection, what our
    /// nodes send to nodes on its host.
    fn authenticate_mesh(&mut self, now: Instant, conn: ConnId) {
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
                self.mesh_cores.remove(&host);
                self.broadcast_host(record::MESH_UP, &host);
            }
            Ok(_) => {}
            Err(err) => {
                self.counters.auth_rejected += 1;
                tracing::info!(core = self.core, %conn, %err, "mesh token refused");
                let _ = self.hub.reject(now, conn);
            }
        }
    }

    fn core_u16(&self) -> u16 {
        u16::try_from(self.core).unwrap_or(u16::MAX)
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    /// Node presence (`ARRIVE`/`LEAVE`) to every other core.
    fn broadcast(&mut self, kind: u8, node: &NodeId, epoch: u64) {
        self.broadcast_record(&[&[kind], node.as_bytes(), &epoch.to_le_bytes()]);
    }

    /// Where a host's mesh session is (`MESH_UP`/`MESH_DOWN`) to every other core.
    fn broadcast_host(&mut self, kind: u8, host: &HostId) {
        self.broadcast_record(&[&[kind], host.as_bytes()]);
    }

    fn broadcast_record(&mut self, parts: &[&[u8]]) {
        for (core, tx) in self.outbound.iter_mut().enumerate() {
            let Some(tx) = tx else { continue };
            // Presence records are small and rare; a full ring loses one, and the node's next
            // session (or its peers' PEER_GONE) corrects it.
            if tx.push(parts) {
                self.dirty[core] = true;
            } else {
                self.counters.cross_core_full += 1;
            }
        }
    }

    fn flush_and_close(&mut self, now: Instant) {
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

    fn flush(&mut self, index: usize) {
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

    fn close(&mut self, _now: Instant, index: usize) {
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
                self.broadcast_host(record::MESH_DOWN, &host);
            }
        }
        if let Some(node) = conn.node {
            self.counters.sessions -= 1;
            // Only if no newer session of the node took over on this core.
            if !matches!(self.hub.route(&node), Route::Local(_)) {
                self.broadcast(record::LEAVE, &node, conn.epoch);
                self.emit(Event::NodeDisconnected {
                    node,
                    core: self.core_u16(),
                });
            }
        }
        conn.shutdown();
    }

    fn wake_dirty(&mut self) {
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

/// A RECV frame from another core for `dest`: to its local session (WebSocket or QUIC), or
/// on over the mesh when `dest` is on another host and this core holds that host's link.
fn deliver_remote(
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

/// A RECV frame for `dest` over `host`'s mesh link, if this hub holds it; counted either way.
fn forward_mesh(
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

/// A RECV frame for `dest`'s QUIC session on this core: whether it was queued, or `None`
/// when there is no QUIC relay or the frame is not a RECV.
fn deliver_quic(
    now: Instant,
    quic: Option<&mut QuicRelay>,
    counters: &mut RelayCounters,
    dest: &NodeId,
    frame: &[u8],
) -> Option<bool> {
    let (src, packet) = recv_parts(frame)?;
    let queued = matches!(
        quic?.deliver(now, dest, &src, packet),
        quic::Delivery::Queued
    );
    if queued {
        counters.quic_packets_out += 1;
    }
    Some(queued)
}

/// Tells `src`, if it has a session on this core (WebSocket or QUIC), that `dest` is gone.
fn notify_gone_here<P: Presence>(
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

/// The source and packet of a RECV frame the hub built (`[header][0x02][src][packet]`).
fn recv_parts(frame: &[u8]) -> Option<(NodeId, &[u8])> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    if let relay::Message::Recv { src, packet } =
        relay::Message::parse(frame.get(header..)?).ok()?
    {
        Some((src, packet))
    } else {
        None
    }
}

/// Writes a RECV frame of `packet` from `src` into `buf` (cleared first; its capacity is
/// reserved once for the largest frame, so this does not allocate).
fn build_recv(buf: &mut Vec<u8>, src: &NodeId, packet: &[u8]) {
    let payload = relay::PREFIX_LEN + packet.len();
    buf.clear();
    buf.resize(frame::header_len(payload, false), 0);
    let _ = frame::encode_header(true, frame::OpCode::Binary, payload, None, buf);
    buf.push(MessageType::Recv as u8);
    buf.extend_from_slice(src.as_bytes());
    buf.extend_from_slice(packet);
}
