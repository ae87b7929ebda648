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
//! A node's session lives on the core whose listener accepted its connection. Every core's
//! hub owns a [`Directory`] of the nodes connected to the other cores, kept current by presence
//! records every core broadcasts when a session is accepted or ends. A SEND whose destination
//! is on another core comes out of the hub as [`Forward::Remote`] with the finished RECV frame
//! in the sender's input buffer; the hub's [`Hub::route_frame`] says where it goes (a
//! [`Hop`]) and the shell appends it to the SPSC ring of that core pair (a
//! [`boson_channel::private_ring`], the loom-checked ring of the planes' segment; one copy,
//! instead of the copy into a local destination's queue) and wakes the core once per turn. The
//! receiving core drains the ring in place, copies each frame into one reusable buffer and
//! hands it to [`Hub::handle_remote`], which copies it into the destination's bounded queue. A full ring
//! drops the frame and counts it (`cross_core_full`): the relay carries WireGuard packets,
//! which tolerate loss, and a slow core must not stall the others.
//!
//! Presence records carry a host-wide session epoch, so records of one node from two cores,
//! read in either order, settle on the newest session; a core that learns a newer session of a
//! node it holds closes its own with 4000 (replaced), so a node has one session per host.
//!
//! # What the shell decides
//!
//! Not where a frame goes: proto's [`Hub::route_frame`] decides that for every frame, from
//! a client of this core, another core or a mesh link, and `route.rs` executes its [`Hop`].
//!
//! Tokens: [`Authenticator`] (the binary checks the JWT and the control plane's grant).
//! Write batching: everything a connection has queued is copied into one scratch buffer and
//! written with one syscall; when the socket is full the rest waits in the connection's own
//! pending buffer and the hub's bounded queue absorbs (and, when full, drops the oldest of)
//! what arrives meanwhile, so a client that never reads costs a bounded amount of memory.
//!
//! # Files
//!
//! `RelayShell` is declared here; each file below adds the methods of one responsibility,
//! so no file mixes them:
//!
//! | file | what |
//! |---|---|
//! | `shell.rs` | building the shell, one worker turn, commands, counters, closing |
//! | `sessions.rs` | TCP and TLS connections: accept, read into the hub, its events, flush, close |
//! | `conn.rs`, `poller.rs` | one connection's buffers and TLS state; the relay's epoll set |
//! | `cross_core.rs` | the cross-core rings: proto's `ws::handoff` records in and out, presence into the directory |
//! | `route.rs` | executing the hub's [`Hop`] for a RECV frame: ring, QUIC, mesh, or a counted drop |
//! | `quic_bridge.rs` | the core's QUIC relay and packets between QUIC and the hub |
//! | `mesh.rs` | mesh links to other relay hosts, both sides |
//! | `wire.rs` | every worker's listeners, rings and QUIC sockets, built once |
//!
//! Sockets are bound by `io::socket`; the relay imports nothing from `worker.rs`, which
//! drives it.

mod conn;
mod cross_core;
mod mesh;
pub(crate) mod poller;
mod quic_bridge;
mod route;
mod sessions;
mod shell;
mod wire;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boson_channel::{RingConsumer, RingProducer, private_ring};
use boson_dataplane_proto::quic::{self, QuicConfig, QuicEvent, QuicRelay};
use boson_dataplane_proto::ws::frame::CloseCode;
use boson_dataplane_proto::ws::handoff::{self, CoreRecord};
use boson_dataplane_proto::ws::relay;
use boson_dataplane_proto::ws::{
    ConnId, Delivery, Directory, Forward, Hop, Hub, HubEvent, MeshClient, MeshEvent, MeshInput,
    Origin, Presence, Route, RouteDrop, WsConfig,
};
use boson_shared::plane::{Event, HostId, Transport};
use boson_shared::{MeshKey, NodeId};

use crate::io::Waker;
use crate::io::socket::{bind_tcp, bind_udp};
use conn::{Conn, ConnKind, Flush, ReadOutcome};
use cross_core::{push_record, ring_capacity};
use mesh::forward_mesh;
use poller::{Poller, Ready};
use quic_bridge::deliver_quic;
use route::{deliver_remote, notify_gone_here};
pub(crate) use wire::{RelayWiring, wire};

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
    conns: Vec<Slot>,
    free: Vec<usize>,
    by_hub: HashMap<ConnId, usize>,
    outbound: Vec<Option<RingProducer>>,
    inbound: Vec<Option<RingConsumer>>,
    wakers: Vec<Arc<Waker>>,
    /// Cores sent something this turn: woken once at its end.
    dirty: Vec<bool>,
    /// A cross-core FRAME record's RECV frame, copied out of the ring to be delivered.
    inbound_record: Vec<u8>,
    commands: mpsc::Receiver<Order>,
    epochs: Arc<AtomicU64>,
    links: Arc<Mutex<BTreeSet<HostId>>>,
    mesh: Option<MeshSettings>,
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
