//! [`QuicRelay`]: one core's QUIC endpoint, its connections keyed by NodeId, and the relay
//! protocol on top of them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boson_shared::NodeId;
use bytes::{Bytes, BytesMut};
use quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, Incoming,
    ReadError, SendDatagramError, StreamEvent, StreamId, VarInt, WriteError,
};

use super::config::{ConfigError, Keys, QuicConfig, VirtualClock, check_tls};
use super::stats::{DropReason, QuicStats};
use super::wire::{
    self, MAX_CONTROL_FRAME, MAX_NOTICE_FRAME, POLICY_VIOLATION, PROTOCOL_ERROR, REPLACED,
};
use crate::ws::GoneLimiter;
use crate::ws::relay::{Message, MessageType, PREFIX_LEN, RelayError};

/// A connection's handle in its relay, never reused by that relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuicConnId(u64);

impl QuicConnId {
    /// The raw number, for logs.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for QuicConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quic#{}", self.0)
    }
}

/// One UDP send: `buf[..len]` (the caller's buffer) to `dst`, from `src_ip` if the shell
/// binds several addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to send it.
    pub dst: SocketAddr,
    /// The local address the client's packets came to, if the shell reported one.
    pub src_ip: Option<IpAddr>,
    /// Bytes written to the caller's buffer.
    pub len: usize,
    /// With GSO: the buffer holds several datagrams of this size (the last may be shorter).
    /// `None`: one datagram.
    pub segment_size: Option<usize>,
}

/// What the relay reports, drained with [`QuicRelay::poll_event`] in the order they arose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicEvent {
    /// `conn` presented `token` (AUTH): check it, then [`QuicRelay::accept`] or
    /// [`QuicRelay::reject`]. Until then its datagrams are dropped and the auth deadline
    /// runs.
    Authenticate {
        /// The connection.
        conn: QuicConnId,
        /// The token, opaque to the relay (a copy; the shell may keep it while it checks).
        token: Bytes,
    },
    /// `src` (authenticated as `conn`) sends `packet` to `dest`: [`QuicRelay::deliver`] it
    /// if `dest` is connected here, hand it to the core or host that has `dest`, or report
    /// [`QuicRelay::peer_gone`]. `packet` is a view of the received UDP datagram, no copy.
    Send {
        /// The sender's connection.
        conn: QuicConnId,
        /// The sending node.
        src: NodeId,
        /// The destination node.
        dest: NodeId,
        /// The WireGuard packet.
        packet: Bytes,
    },
    /// `conn`, which had presented a token, is closed; `node` is the node it was
    /// authenticated as, if it was. Reported once per connection; nothing else follows for
    /// `conn`.
    Closed {
        /// The connection.
        conn: QuicConnId,
        /// The node it was authenticated as.
        node: Option<NodeId>,
        /// Why.
        reason: CloseReason,
    },
}

/// What [`QuicRelay::deliver`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued as a RECV datagram to the destination's connection.
    Queued,
    /// The destination is not connected to this relay.
    Gone,
    /// Dropped, and counted.
    Dropped(DropReason),
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The owner rejected the token (application error 1008).
    Rejected,
    /// No verdict on a token in time (1008).
    AuthTimeout,
    /// A newer connection of the same node was accepted (4000).
    Replaced,
    /// The client broke the relay protocol (1002).
    PeerMisbehaved(Violation),
    /// The client closed the connection (CONNECTION_CLOSE, or a stateless reset).
    PeerClosed,
    /// Nothing from the client for the idle timeout.
    IdleTimeout,
    /// quinn closed the connection for a QUIC transport error.
    TransportError,
}

impl CloseReason {
    /// Stable `snake_case` label for logs and metrics; also the reason phrase of the
    /// CONNECTION_CLOSE the relay sends.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "unauthorized",
            Self::AuthTimeout => "auth_timeout",
            Self::Replaced => "replaced",
            Self::PeerMisbehaved(violation) => violation.as_str(),
            Self::PeerClosed => "peer_closed",
            Self::IdleTimeout => "idle_timeout",
            Self::TransportError => "transport_error",
        }
    }

    /// The application error code the relay closed with, if the relay closed.
    pub const fn error_code(self) -> Option<u16> {
        match self {
            Self::Rejected | Self::AuthTimeout => Some(POLICY_VIOLATION.get()),
            Self::Replaced => Some(REPLACED.get()),
            Self::PeerMisbehaved(_) => Some(PROTOCOL_ERROR.get()),
            Self::PeerClosed | Self::IdleTimeout | Self::TransportError => None,
        }
    }
}

/// How a client broke the relay protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The client did not offer DATAGRAM frames (no max_datagram_frame_size).
    NoDatagrams,
    /// A control frame with length 0 or above the cap.
    BadControlFrame,
    /// A control message of a known type the client may not send there (anything but
    /// AUTH), or one that does not parse.
    UnexpectedMessage,
    /// An AUTH with an empty token or one above the cap.
    BadToken,
    /// A second AUTH.
    DuplicateAuth,
    /// The control stream was reset, stopped, or finished before a whole AUTH.
    ControlStreamClosed,
    /// A second stream.
    SecondStream,
}

impl Violation {
    /// Stable `snake_case` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoDatagrams => "no_datagrams",
            Self::BadControlFrame => "bad_control_frame",
            Self::UnexpectedMessage => "unexpected_message",
            Self::BadToken => "bad_token",
            Self::DuplicateAuth => "duplicate_auth",
            Self::ControlStreamClosed => "control_stream_closed",
            Self::SecondStream => "second_stream",
        }
    }
}

/// Misuse of the relay API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// No such connection: never reported, or closed since.
    #[error("unknown connection {0}")]
    UnknownConn(QuicConnId),
    /// `accept`/`reject` for a connection whose token is not awaiting a verdict.
    #[error("no token of {0} awaits a verdict")]
    NoVerdictPending(QuicConnId),
}

/// Most events held for the shell; beyond it SENDs are dropped
/// ([`DropReason::EventBacklog`]). A UDP datagram yields at most ~80 SENDs, so a shell that
/// drains after every input never comes close.
const EVENT_BACKLOG: usize = 8192;

/// Most endpoint-level responses held for [`QuicRelay::poll_transmit`].
const RESPONSE_BACKLOG: usize = 64;

/// Bytes of notices a connection holds while quinn's stream send buffer is full: a dozen.
const CONTROL_OUTBOX: usize = 16 * MAX_NOTICE_FRAME;

/// Initial size of the shared receive buffer: one Ethernet-MTU datagram and change.
const RX_BUFFER: usize = 2048;

/// Size of a connection's RECV staging chunk (see the module doc on allocations).
const TX_CHUNK: usize = 8 * 1024;

/// The sans-IO QUIC relay of one core: a quinn-proto [`Endpoint`] and its connections, the
/// relay protocol on top (control stream, datagrams), and the routing table of the nodes
/// authenticated here.
///
/// # Driving it
///
/// * **Inputs**: [`handle_datagram`](Self::handle_datagram) for every UDP datagram on the
///   relay's socket (one datagram per call: split GRO batches);
///   [`handle_timeout`](Self::handle_timeout) when the timer fires;
///   [`accept`](Self::accept) / [`reject`](Self::reject) on
///   [`QuicEvent::Authenticate`]; [`deliver`](Self::deliver) /
///   [`peer_gone`](Self::peer_gone) on [`QuicEvent::Send`] (and `deliver` for packets from
///   other cores); [`notify_present`](Self::notify_present),
///   [`start_draining`](Self::start_draining),
///   [`set_server_config`](Self::set_server_config) whenever.
/// * **Outputs**, drained in this order after every input (or batch of inputs):
///   1. [`poll_event`](Self::poll_event) until `None`, acting on each event (which may
///      queue datagrams: `deliver`, `accept`, `peer_gone` are inputs too);
///   2. [`poll_transmit`](Self::poll_transmit) until `None`, sending each datagram;
///   3. re-arm the timer at [`poll_timeout`](Self::poll_timeout).
///
/// ```text
/// relay.handle_datagram(now, from, local_ip, &datagram);
/// while let Some(event) = relay.poll_event() { /* accept/reject, deliver/peer_gone */ }
/// while let Some(t) = relay.poll_transmit(now, &mut buf) { /* send buf[..t.len] to t.dst */ }
/// timer.arm(relay.poll_timeout());
/// ```
///
/// Events hold at most 8 192 SENDs ([`DropReason::EventBacklog`] beyond); a shell that
/// batches inputs must still drain events well before that. `poll_transmit` answers endpoint-level responses first,
/// then the connections round-robin, one QUIC datagram (or GSO batch) per call.
pub struct QuicRelay {
    config: QuicConfig,
    keys: Keys,
    clock: Arc<VirtualClock>,
    endpoint: Endpoint,
    /// Connections by quinn's handle (`ConnectionHandle.0`, a dense slab index).
    conns: Vec<Option<Box<Conn>>>,
    ids: HashMap<QuicConnId, usize>,
    by_node: HashMap<NodeId, usize>,
    /// `(deadline, handle)` of every connection with a deadline.
    timers: BTreeSet<(Instant, usize)>,
    /// Connections that may have something to send, in the order they got it.
    dirty: VecDeque<usize>,
    /// Scratch list of connections whose deadline is due.
    due: Vec<usize>,
    events: VecDeque<QuicEvent>,
    responses: VecDeque<Response>,
    /// Recycled response buffers.
    spare: Vec<Vec<u8>>,
    /// Where quinn's endpoint writes a response.
    scratch: Vec<u8>,
    /// Received datagrams are copied here, then split off and handed to quinn.
    rx: BytesMut,
    gone: GoneLimiter,
    next_id: u64,
    /// Connections handshaking or awaiting a verdict.
    unauthenticated: usize,
    /// Sum of the connections' `buffered`.
    buffered: u64,
    draining: bool,
    stats: QuicStats,
}

struct Conn {
    id: QuicConnId,
    quinn: Connection,
    phase: Phase,
    /// The auth deadline, until authenticated or closed.
    deadline: Option<Instant>,
    /// The control stream, once the client opened it.
    stream: Option<StreamId>,
    /// Control-stream bytes not parsed yet (at most one frame).
    inbox: Vec<u8>,
    /// Notices quinn's stream send buffer did not take yet.
    outbox: Vec<u8>,
    /// Where RECV datagrams are staged before quinn takes them.
    tx: BytesMut,
    /// The deadline this connection has in `timers`.
    timer: Option<Instant>,
    /// In the relay's `dirty` queue.
    dirty: bool,
    /// An Authenticate went out: the shell knows the connection, so its close is reported.
    known: bool,
    /// Bytes in quinn's outbound datagram buffer, as of the last look.
    buffered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshaking, or waiting for AUTH.
    AwaitingToken,
    /// AUTH reported; waiting for `accept`/`reject`.
    AwaitingVerdict,
    Authenticated(NodeId),
    /// Closed by either side; quinn is finishing (draining) the connection.
    Closed,
}

impl Phase {
    const fn is_unauthenticated(self) -> bool {
        matches!(self, Self::AwaitingToken | Self::AwaitingVerdict)
    }
}

/// An endpoint-level response (version negotiation, stateless reset, Retry, refusal).
struct Response {
    transmit: Transmit,
    bytes: Vec<u8>,
}

/// A control message from a client, owned.
enum ControlInput {
    Auth(Bytes),
    Unknown,
    Invalid(Violation),
}

impl QuicRelay {
    /// A relay with no connections. `seed` is secret key material: it seeds quinn's RNG
    /// (connection IDs) and derives the stateless-reset and Retry-token keys, so the shell
    /// must draw it from the OS CSPRNG (tests fix it), and a different one per core: a core
    /// that gets a packet of another core's connection (a NAT rebinding re-hashed by
    /// `SO_REUSEPORT`) answers with a stateless reset, which the client must not accept.
    /// TLS key exchange draws from `ring`'s OS random source regardless.
    pub fn new(config: QuicConfig, now: Instant, seed: [u8; 32]) -> Self {
        let keys = Keys::derive(&seed);
        let clock = Arc::new(VirtualClock::new(now));
        let server = config.server(&keys, Arc::clone(&clock) as _);
        let endpoint = Endpoint::new(
            Arc::new(keys.endpoint()),
            Some(Arc::new(server)),
            config.mtu_discovery,
            None,
        );
        let gone = GoneLimiter::new(now, config.peer_gone_interval, config.peer_gone_slots);
        Self {
            config,
            keys,
            clock,
            endpoint,
            conns: Vec::new(),
            ids: HashMap::new(),
            by_node: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: VecDeque::new(),
            due: Vec::new(),
            events: VecDeque::new(),
            responses: VecDeque::new(),
            spare: Vec::new(),
            scratch: Vec::new(),
            rx: BytesMut::with_capacity(RX_BUFFER),
            gone,
            next_id: 0,
            unauthenticated: 0,
            buffered: 0,
            draining: false,
            stats: QuicStats::default(),
        }
    }

    /// One UDP datagram from `from`, received on `local_ip` if the shell knows it (pass it
    /// when the socket is bound to a wildcard address on a multi-homed host).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        data: &[u8],
    ) {
        self.clock.advance(now);
        self.stats.udp_rx.record(data.len());
        // quinn takes an owned `BytesMut` and decrypts in place. Reuse one buffer: once the
        // previous datagram's views (DATAGRAM payloads in events) are dropped, `reserve`
        // reclaims it instead of allocating.
        self.rx.reserve(data.len());
        self.rx.extend_from_slice(data);
        let datagram = self.rx.split();
        self.scratch.clear();
        match self
            .endpoint
            .handle(now, from, local_ip, None, datagram, &mut self.scratch)
        {
            None => self.stats.drops.record(DropReason::Unroutable),
            Some(DatagramEvent::Response(transmit)) => self.queue_response(&transmit),
            Some(DatagramEvent::NewConnection(incoming)) => self.handle_incoming(now, incoming),
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(conn) = self.conn_mut(handle.0) {
                    conn.quinn.handle_event(event);
                    self.service(now, handle.0);
                }
            }
        }
    }

    /// The next datagram to send, written into `buf` (cleared first; it grows to one MTU,
    /// or the GSO batch, and is reused). Endpoint responses first, then connections
    /// round-robin.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.clock.advance(now);
        buf.clear();
        if let Some(Response {
            transmit,
            mut bytes,
        }) = self.responses.pop_front()
        {
            buf.extend_from_slice(bytes.get(..transmit.len).unwrap_or(&bytes));
            bytes.clear();
            if self.spare.len() < RESPONSE_BACKLOG {
                self.spare.push(bytes);
            }
            self.stats.udp_tx.record(transmit.len);
            return Some(transmit);
        }
        while let Some(handle) = self.dirty.pop_front() {
            let segments = self.config.max_gso_segments;
            let Some(conn) = self.conn_mut(handle) else {
                continue;
            };
            conn.dirty = false;
            let transmit = conn.quinn.poll_transmit(now, segments, buf);
            if transmit.is_some() {
                // Datagrams left quinn's buffer.
                self.observe_buffer(handle);
            }
            self.service_events(now, handle);
            self.refresh_timer(handle);
            let Some(transmit) = transmit else {
                continue;
            };
            // More may follow; back of the queue, so connections take turns.
            self.mark_dirty(handle);
            let datagrams = transmit
                .segment_size
                .map_or(1, |size| transmit.size.div_ceil(size.max(1)));
            self.stats.udp_tx.packets += datagrams as u64;
            self.stats.udp_tx.bytes += transmit.size as u64;
            return Some(Transmit {
                dst: transmit.destination,
                src_ip: transmit.src_ip,
                len: transmit.size,
                segment_size: transmit.segment_size,
            });
        }
        None
    }

    /// The next event, in the order they arose.
    pub fn poll_event(&mut self) -> Option<QuicEvent> {
        self.events.pop_front()
    }

    /// The owner accepted `conn`'s token as `node`: READY goes out (and RECONNECT_HINT if
    /// draining), `node` is reachable here from now on, and an older connection of `node`
    /// is closed with 4000 (counted in [`QuicStats::replaced`]).
    pub fn accept(
        &mut self,
        now: Instant,
        conn: QuicConnId,
        node: NodeId,
    ) -> Result<(), QuicError> {
        self.clock.advance(now);
        let handle = self.verdict_pending(conn)?;
        if let Some(c) = self.conn_mut(handle) {
            c.phase = Phase::Authenticated(node);
            c.deadline = None;
        }
        self.unauthenticated = self.unauthenticated.saturating_sub(1);
        self.stats.auth_accepted += 1;
        // The outbox is empty: READY always fits.
        self.notice(handle, MessageType::Ready, Some(&node));
        if self.draining && self.notice(handle, MessageType::ReconnectHint, None) {
            self.stats.reconnect_hints += 1;
        }
        if let Some(old) = self.by_node.insert(node, handle)
            && old != handle
        {
            self.close(now, old, CloseReason::Replaced);
        }
        self.refresh_timer(handle);
        Ok(())
    }

    /// The owner rejected `conn`'s token: the connection closes with 1008 `unauthorized`.
    pub fn reject(&mut self, now: Instant, conn: QuicConnId) -> Result<(), QuicError> {
        self.clock.advance(now);
        let handle = self.verdict_pending(conn)?;
        self.close(now, handle, CloseReason::Rejected);
        Ok(())
    }

    /// Queues `packet` from `src` to `dest` as a RECV datagram, if `dest` is connected here
    /// and it fits. Copies the packet once, into the connection's staging chunk.
    pub fn deliver(
        &mut self,
        now: Instant,
        dest: &NodeId,
        src: &NodeId,
        packet: &[u8],
    ) -> Delivery {
        self.clock.advance(now);
        let Some(&handle) = self.by_node.get(dest) else {
            return Delivery::Gone;
        };
        let max = self.config.max_datagram_size;
        let Some(conn) = self.conn_mut(handle) else {
            return Delivery::Gone;
        };
        let len = PREFIX_LEN + packet.len();
        let fits = len <= max && conn.quinn.datagrams().max_size().is_some_and(|m| len <= m);
        if !fits {
            return self.drop_delivery(DropReason::Oversized);
        }
        if conn.tx.capacity() < len {
            // Reclaims the chunk if quinn has sent everything staged in it, else allocates.
            conn.tx.reserve(len.max(TX_CHUNK));
        }
        wire::encode_datagram(MessageType::Recv, src, packet, &mut conn.tx);
        let datagram = conn.tx.split().freeze();
        match conn.quinn.datagrams().send(datagram, false) {
            Ok(()) => {
                self.stats.delivered.record(packet.len());
                self.observe_buffer(handle);
                self.mark_dirty(handle);
                Delivery::Queued
            }
            Err(SendDatagramError::Blocked(_)) => self.drop_delivery(DropReason::SendBufferFull),
            Err(
                SendDatagramError::TooLarge
                | SendDatagramError::UnsupportedByPeer
                | SendDatagramError::Disabled,
            ) => self.drop_delivery(DropReason::Oversized),
        }
    }

    /// The shell found `peer`, the destination of a SEND from `to`, connected nowhere: the
    /// packet is counted as dropped ([`DropReason::PeerGone`]) and `to` gets a PEER_GONE,
    /// unless one about `peer` went to the same node within the rate-limit interval.
    /// Returns whether a PEER_GONE was queued.
    pub fn peer_gone(&mut self, now: Instant, to: QuicConnId, peer: &NodeId) -> bool {
        self.clock.advance(now);
        self.stats.drops.record(DropReason::PeerGone);
        let Some(&handle) = self.ids.get(&to) else {
            return false;
        };
        let Some(Phase::Authenticated(src)) = self.conn_mut(handle).map(|c| c.phase) else {
            return false;
        };
        self.gone_notice(now, handle, &src, peer)
    }

    /// `peer`, to which `to` sent, is connected nowhere: another host said so over the mesh
    /// (GONE). `to`, if connected here, gets a PEER_GONE, rate-limited as in
    /// [`peer_gone`](Self::peer_gone); no drop is counted here, the packet was dropped on the
    /// other host. Returns whether one was queued.
    pub fn notify_gone(&mut self, now: Instant, to: &NodeId, peer: &NodeId) -> bool {
        self.clock.advance(now);
        let Some(&handle) = self.by_node.get(to) else {
            return false;
        };
        self.gone_notice(now, handle, to, peer)
    }

    /// A PEER_GONE about `peer` to `src` on `handle`, unless one went within the rate-limit
    /// interval.
    fn gone_notice(&mut self, now: Instant, handle: usize, src: &NodeId, peer: &NodeId) -> bool {
        if !self.gone.allow(now, src, peer) {
            self.stats.peer_gone_suppressed += 1;
            return false;
        }
        let queued = self.notice(handle, MessageType::PeerGone, Some(peer));
        if queued {
            self.stats.peer_gone_sent += 1;
        }
        queued
    }

    /// Tells `to`, if connected here, that `peer` is reachable (again): PEER_PRESENT.
    /// Returns whether it was queued.
    pub fn notify_present(&mut self, now: Instant, to: &NodeId, peer: &NodeId) -> bool {
        self.clock.advance(now);
        let Some(&handle) = self.by_node.get(to) else {
            return false;
        };
        let queued = self.notice(handle, MessageType::PeerPresent, Some(peer));
        if queued {
            self.stats.peer_present_sent += 1;
        }
        queued
    }

    /// Whether `node` is authenticated on this relay.
    /// Closes `node`'s connection, if it has one here: `Rejected` (1008) when its grant was
    /// revoked, `Replaced` (4000) when a newer session of the node lives elsewhere. Returns
    /// whether there was one.
    pub fn close_node(&mut self, now: Instant, node: &NodeId, reason: CloseReason) -> bool {
        self.clock.advance(now);
        let Some(&handle) = self.by_node.get(node) else {
            return false;
        };
        self.close(now, handle, reason);
        true
    }

    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.by_node.contains_key(node)
    }

    /// The earliest deadline over all connections (quinn's timers and auth deadlines).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Fires every deadline due at `now`. Each due connection is handled once per call, so a
    /// deadline that stays due cannot spin the loop.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.advance(now);
        let mut due = std::mem::take(&mut self.due);
        while let Some(&(at, handle)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(conn) = self.conn_mut(handle) {
                conn.timer = None;
                due.push(handle);
            }
        }
        for &handle in &due {
            let Some(conn) = self.conn_mut(handle) else {
                continue;
            };
            let expired = conn.deadline.is_some_and(|deadline| deadline <= now)
                && conn.phase.is_unauthenticated();
            if expired {
                self.stats.auth_timeouts += 1;
                self.close(now, handle, CloseReason::AuthTimeout);
            }
            if let Some(conn) = self.conn_mut(handle) {
                conn.quinn.handle_timeout(now);
                self.service(now, handle);
            }
        }
        due.clear();
        self.due = due;
    }

    /// The relay is draining: every authenticated connection (and every one accepted from
    /// now on) gets a RECONNECT_HINT, and new connection attempts are refused. Connections
    /// stay up until their clients move.
    pub fn start_draining(&mut self, now: Instant) {
        self.clock.advance(now);
        self.draining = true;
        for handle in 0..self.conns.len() {
            let authenticated = self
                .conn_mut(handle)
                .is_some_and(|c| matches!(c.phase, Phase::Authenticated(_)));
            if authenticated && self.notice(handle, MessageType::ReconnectHint, None) {
                self.stats.reconnect_hints += 1;
            }
        }
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub const fn is_draining(&self) -> bool {
        self.draining
    }

    /// Replaces the TLS configuration (a reloaded certificate) for connections from now on;
    /// established ones keep theirs. Checked like [`QuicConfig::new`].
    pub fn set_server_config(&mut self, tls: Arc<rustls::ServerConfig>) -> Result<(), ConfigError> {
        self.config.tls = check_tls(tls)?;
        let server = self.config.server(&self.keys, Arc::clone(&self.clock) as _);
        self.endpoint.set_server_config(Some(Arc::new(server)));
        Ok(())
    }

    /// The configuration.
    pub const fn config(&self) -> &QuicConfig {
        &self.config
    }

    /// The counters. O(1).
    pub fn stats(&self) -> QuicStats {
        let mut stats = self.stats;
        stats.connections = self.endpoint.open_connections() as u64;
        stats.authenticated = self.by_node.len() as u64;
        stats.datagram_send_buffered = self.buffered;
        stats
    }

    // -----------------------------------------------------------------------------------
    // Connections coming and going.

    fn handle_incoming(&mut self, now: Instant, incoming: Incoming) {
        self.scratch.clear();
        if self.draining || self.endpoint.open_connections() >= self.config.max_connections {
            if self.draining {
                self.stats.refused_draining += 1;
            } else {
                self.stats.refused_full += 1;
            }
            let transmit = self.endpoint.refuse(incoming, &mut self.scratch);
            self.queue_response(&transmit);
            return;
        }
        let mut incoming = incoming;
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && self.unauthenticated >= self.config.retry_threshold
        {
            match self.endpoint.retry(incoming, &mut self.scratch) {
                Ok(transmit) => {
                    self.stats.retries += 1;
                    self.queue_response(&transmit);
                    return;
                }
                Err(err) => incoming = err.into_incoming(),
            }
        }
        match self.endpoint.accept(incoming, now, &mut self.scratch, None) {
            Ok((handle, quinn)) => {
                let id = QuicConnId(self.next_id);
                self.next_id += 1;
                let conn = Conn {
                    id,
                    quinn,
                    phase: Phase::AwaitingToken,
                    deadline: Some(now + self.config.auth_timeout),
                    stream: None,
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    tx: BytesMut::new(),
                    timer: None,
                    dirty: false,
                    known: false,
                    buffered: 0,
                };
                let index = handle.0;
                if self.conns.len() <= index {
                    self.conns.resize_with(index + 1, || None);
                }
                self.conns[index] = Some(Box::new(conn));
                self.ids.insert(id, index);
                self.unauthenticated += 1;
                self.stats.incoming_accepted += 1;
                self.service(now, index);
            }
            Err(err) => {
                self.stats.incoming_failed += 1;
                if let Some(transmit) = err.response {
                    self.queue_response(&transmit);
                }
            }
        }
    }

    /// Closes the connection on our side with `reason`'s code and phrase.
    fn close(&mut self, now: Instant, handle: usize, reason: CloseReason) {
        let Some(conn) = self.conn_mut(handle) else {
            return;
        };
        if conn.phase == Phase::Closed {
            return;
        }
        let code = VarInt::from_u32(u32::from(reason.error_code().unwrap_or(0)));
        conn.quinn
            .close(now, code, Bytes::from_static(reason.as_str().as_bytes()));
        self.retire(handle, reason);
        self.mark_dirty(handle);
        self.refresh_timer(handle);
    }

    /// Bookkeeping of a connection that closed, either side: out of the routing table, its
    /// close reported (once) and counted. quinn keeps it until it is drained.
    fn retire(&mut self, handle: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut) else {
            return;
        };
        let phase = std::mem::replace(&mut conn.phase, Phase::Closed);
        conn.deadline = None;
        let (id, known) = (conn.id, conn.known);
        let node = match phase {
            Phase::Closed => return,
            Phase::AwaitingToken | Phase::AwaitingVerdict => {
                self.unauthenticated = self.unauthenticated.saturating_sub(1);
                None
            }
            Phase::Authenticated(node) => {
                if self.by_node.get(&node) == Some(&handle) {
                    self.by_node.remove(&node);
                }
                Some(node)
            }
        };
        self.ids.remove(&id);
        match reason {
            CloseReason::Rejected => self.stats.auth_rejected += 1,
            CloseReason::Replaced => self.stats.replaced += 1,
            CloseReason::PeerMisbehaved(_) => self.stats.protocol_errors += 1,
            CloseReason::PeerClosed => self.stats.peer_closes += 1,
            CloseReason::IdleTimeout => self.stats.idle_timeouts += 1,
            CloseReason::TransportError => self.stats.transport_errors += 1,
            // Counted where the deadline fires.
            CloseReason::AuthTimeout => {}
        }
        if known {
            self.events.push_back(QuicEvent::Closed {
                conn: id,
                node,
                reason,
            });
        }
    }

    /// quinn is done with the connection: forget it.
    fn remove(&mut self, handle: usize) {
        if self
            .conn_mut(handle)
            .is_some_and(|c| c.phase != Phase::Closed)
        {
            // quinn reports the loss before draining; this is only a safety net.
            self.retire(handle, CloseReason::TransportError);
        }
        let Some(conn) = self.conns.get_mut(handle).and_then(Option::take) else {
            return;
        };
        if let Some(at) = conn.timer {
            self.timers.remove(&(at, handle));
        }
        self.buffered = self.buffered.saturating_sub(conn.buffered);
        self.ids.remove(&conn.id);
    }

    // -----------------------------------------------------------------------------------
    // One connection's events.

    /// After an input to a connection: its events, its timer, and a turn at transmitting.
    fn service(&mut self, now: Instant, handle: usize) {
        self.service_events(now, handle);
        self.refresh_timer(handle);
        self.mark_dirty(handle);
    }

    /// Handles the connection's application events, then its endpoint events, until both
    /// are exhausted; removes it once drained.
    fn service_events(&mut self, now: Instant, handle: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut) else {
                return;
            };
            if let Some(event) = conn.quinn.poll() {
                self.handle_event(now, handle, event);
                continue;
            }
            let Some(event) = conn.quinn.poll_endpoint_events() else {
                return;
            };
            let drained = event.is_drained();
            if let Some(back) = self.endpoint.handle_event(ConnectionHandle(handle), event) {
                conn.quinn.handle_event(back);
            }
            if drained {
                self.remove(handle);
                return;
            }
        }
    }

    fn handle_event(&mut self, now: Instant, handle: usize, event: Event) {
        match event {
            Event::Connected => {
                self.stats.handshakes += 1;
                let datagrams = self
                    .conn_mut(handle)
                    .is_some_and(|c| c.quinn.datagrams().max_size().is_some());
                if !datagrams {
                    let reason = CloseReason::PeerMisbehaved(Violation::NoDatagrams);
                    self.close(now, handle, reason);
                }
            }
            Event::ConnectionLost { reason } => {
                let reason = match reason {
                    ConnectionError::TimedOut => CloseReason::IdleTimeout,
                    ConnectionError::ApplicationClosed(_)
                    | ConnectionError::ConnectionClosed(_)
                    | ConnectionError::Reset => CloseReason::PeerClosed,
                    ConnectionError::TransportError(_)
                    | ConnectionError::VersionMismatch
                    | ConnectionError::CidsExhausted => CloseReason::TransportError,
                    // Our own close, already retired.
                    ConnectionError::LocallyClosed => return,
                };
                self.retire(handle, reason);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => self.open_control(now, handle),
            Event::Stream(StreamEvent::Readable { id }) => {
                if self.conn_mut(handle).is_some_and(|c| c.stream == Some(id)) {
                    self.read_control(now, handle);
                }
            }
            Event::Stream(StreamEvent::Writable { .. }) => self.flush_control(handle),
            Event::Stream(StreamEvent::Stopped { .. }) => {
                let reason = CloseReason::PeerMisbehaved(Violation::ControlStreamClosed);
                self.close(now, handle, reason);
            }
            Event::DatagramReceived => self.read_datagrams(handle),
            // Unidirectional streams are refused by the stream limit (0); we never finish our
            // side of the control stream; datagrams are never sent blocking.
            Event::Stream(
                StreamEvent::Opened { dir: Dir::Uni }
                | StreamEvent::Finished { .. }
                | StreamEvent::Available { .. },
            )
            | Event::HandshakeDataReady
            | Event::DatagramsUnblocked => {}
        }
    }

    // -----------------------------------------------------------------------------------
    // The control stream.

    fn open_control(&mut self, now: Instant, handle: usize) {
        let Some(conn) = self.conn_mut(handle) else {
            return;
        };
        while let Some(id) = conn.quinn.streams().accept(Dir::Bi) {
            if conn.stream.is_some() {
                let reason = CloseReason::PeerMisbehaved(Violation::SecondStream);
                self.close(now, handle, reason);
                return;
            }
            conn.stream = Some(id);
        }
        self.read_control(now, handle);
    }

    /// Reads the control stream: at most one frame is buffered, each whole frame is handled
    /// as it completes.
    fn read_control(&mut self, now: Instant, handle: usize) {
        let mut fin = false;
        let mut reset = false;
        loop {
            let Some(conn) = self.conn_mut(handle) else {
                return;
            };
            if conn.phase == Phase::Closed {
                return;
            }
            let Some(id) = conn.stream else {
                return;
            };
            let Conn { quinn, inbox, .. } = conn;
            let mut stream = quinn.recv_stream(id);
            let Ok(mut chunks) = stream.read(true) else {
                break;
            };
            let mut read = false;
            while inbox.len() < MAX_CONTROL_FRAME {
                match chunks.next(MAX_CONTROL_FRAME - inbox.len()) {
                    Ok(Some(chunk)) => {
                        inbox.extend_from_slice(&chunk.bytes);
                        read = true;
                    }
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(_)) => {
                        reset = true;
                        break;
                    }
                }
            }
            // Whether a flow-control update is due: the connection is polled anyway.
            let _ = chunks.finalize();
            while let Some(input) = self
                .conn_mut(handle)
                .and_then(|c| next_control(&mut c.inbox))
            {
                match input {
                    ControlInput::Auth(token) => self.handle_auth(now, handle, token),
                    ControlInput::Unknown => self.stats.drops.record(DropReason::UnknownType),
                    ControlInput::Invalid(violation) => {
                        self.close(now, handle, CloseReason::PeerMisbehaved(violation));
                        return;
                    }
                }
            }
            if reset {
                let reason = CloseReason::PeerMisbehaved(Violation::ControlStreamClosed);
                self.close(now, handle, reason);
                return;
            }
            if fin || !read {
                break;
            }
        }
        let Some(conn) = self.conn_mut(handle) else {
            return;
        };
        if fin && (conn.phase == Phase::AwaitingToken || !conn.inbox.is_empty()) {
            let reason = CloseReason::PeerMisbehaved(Violation::ControlStreamClosed);
            self.close(now, handle, reason);
        }
    }

    fn handle_auth(&mut self, now: Instant, handle: usize, token: Bytes) {
        let Some(conn) = self.conn_mut(handle) else {
            return;
        };
        if conn.phase != Phase::AwaitingToken {
            let reason = CloseReason::PeerMisbehaved(Violation::DuplicateAuth);
            self.close(now, handle, reason);
            return;
        }
        conn.phase = Phase::AwaitingVerdict;
        conn.known = true;
        // The token was the one large message; later ones are notices at most.
        conn.inbox.shrink_to_fit();
        let conn = conn.id;
        self.stats.auth_requests += 1;
        self.events
            .push_back(QuicEvent::Authenticate { conn, token });
    }

    /// Queues a notice on the control stream; false (and counted) if it does not fit.
    fn notice(&mut self, handle: usize, kind: MessageType, node: Option<&NodeId>) -> bool {
        let Some(conn) = self.conn_mut(handle) else {
            return false;
        };
        if conn.stream.is_none() || conn.phase == Phase::Closed {
            return false;
        }
        let mut frame = [0u8; MAX_NOTICE_FRAME];
        let len = wire::encode_notice(kind, node, &mut frame);
        if conn.outbox.len() + len > CONTROL_OUTBOX {
            self.stats.drops.record(DropReason::ControlBacklog);
            return false;
        }
        conn.outbox.extend_from_slice(&frame[..len]);
        self.flush_control(handle);
        true
    }

    /// Moves queued notices into quinn's stream send buffer, as far as flow control allows.
    fn flush_control(&mut self, handle: usize) {
        let Some(conn) = self.conn_mut(handle) else {
            return;
        };
        let Some(id) = conn.stream else {
            return;
        };
        while !conn.outbox.is_empty() {
            match conn.quinn.send_stream(id).write(&conn.outbox) {
                Ok(0) | Err(WriteError::Blocked) => break,
                Ok(n) => {
                    conn.outbox.drain(..n);
                }
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                    conn.outbox.clear();
                    break;
                }
            }
        }
        self.mark_dirty(handle);
    }

    // -----------------------------------------------------------------------------------
    // Datagrams.

    /// Takes every datagram quinn received on the connection: SENDs become events, the rest
    /// is dropped and counted. Emptying quinn's buffer each time keeps it from ever
    /// discarding (uncounted) datagrams of its own.
    fn read_datagrams(&mut self, handle: usize) {
        let max = self.config.max_datagram_size;
        let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut) else {
            return;
        };
        while let Some(datagram) = conn.quinn.datagrams().recv() {
            let Phase::Authenticated(src) = conn.phase else {
                self.stats.drops.record(DropReason::Unauthenticated);
                continue;
            };
            if datagram.len() > max {
                self.stats.drops.record(DropReason::Oversized);
                continue;
            }
            let dest = match Message::parse(&datagram) {
                Ok(Message::Send { dest, .. }) => dest,
                Err(RelayError::UnknownType(_)) => {
                    self.stats.drops.record(DropReason::UnknownType);
                    continue;
                }
                Ok(_) | Err(_) => {
                    self.stats.drops.record(DropReason::Malformed);
                    continue;
                }
            };
            if self.events.len() >= EVENT_BACKLOG {
                self.stats.drops.record(DropReason::EventBacklog);
                continue;
            }
            let packet = datagram.slice(PREFIX_LEN..);
            self.stats.received.record(packet.len());
            self.events.push_back(QuicEvent::Send {
                conn: conn.id,
                src,
                dest,
                packet,
            });
        }
    }

    fn drop_delivery(&mut self, reason: DropReason) -> Delivery {
        self.stats.drops.record(reason);
        Delivery::Dropped(reason)
    }

    /// Updates the connection's share of the buffered-datagram gauge.
    fn observe_buffer(&mut self, handle: usize) {
        let capacity = self.config.datagram_send_buffer;
        let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut) else {
            return;
        };
        // quinn reports the space left less one datagram's overhead (32 bytes).
        let space = conn.quinn.datagrams().send_buffer_space();
        let used = capacity.saturating_sub(space + 32) as u64;
        self.buffered = self.buffered.saturating_sub(conn.buffered) + used;
        conn.buffered = used;
    }

    // -----------------------------------------------------------------------------------
    // Details.

    fn queue_response(&mut self, transmit: &quinn_proto::Transmit) {
        if self.responses.len() >= RESPONSE_BACKLOG {
            self.stats.drops.record(DropReason::ResponseBacklog);
            return;
        }
        let bytes = std::mem::replace(&mut self.scratch, self.spare.pop().unwrap_or_default());
        self.responses.push_back(Response {
            transmit: Transmit {
                dst: transmit.destination,
                src_ip: transmit.src_ip,
                len: transmit.size,
                segment_size: transmit.segment_size,
            },
            bytes,
        });
    }

    fn verdict_pending(&mut self, conn: QuicConnId) -> Result<usize, QuicError> {
        let &handle = self.ids.get(&conn).ok_or(QuicError::UnknownConn(conn))?;
        match self.conn_mut(handle).map(|c| c.phase) {
            Some(Phase::AwaitingVerdict) => Ok(handle),
            Some(_) => Err(QuicError::NoVerdictPending(conn)),
            None => Err(QuicError::UnknownConn(conn)),
        }
    }

    fn conn_mut(&mut self, handle: usize) -> Option<&mut Conn> {
        self.conns.get_mut(handle).and_then(Option::as_deref_mut)
    }

    /// Re-files the connection's next deadline: quinn's, or the auth deadline if earlier.
    fn refresh_timer(&mut self, handle: usize) {
        let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut) else {
            return;
        };
        let next = match (conn.quinn.poll_timeout(), conn.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next != conn.timer {
            if let Some(at) = conn.timer {
                self.timers.remove(&(at, handle));
            }
            if let Some(at) = next {
                self.timers.insert((at, handle));
            }
            conn.timer = next;
        }
    }

    fn mark_dirty(&mut self, handle: usize) {
        if let Some(conn) = self.conns.get_mut(handle).and_then(Option::as_deref_mut)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push_back(handle);
        }
    }
}

impl fmt::Debug for QuicRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicRelay")
            .field("connections", &self.endpoint.open_connections())
            .field("authenticated", &self.by_node.len())
            .field("draining", &self.draining)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Takes the first whole control frame out of `inbox`, if there is one.
fn next_control(inbox: &mut Vec<u8>) -> Option<ControlInput> {
    let (message, frame_len) = match wire::parse_control(inbox) {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(_) => return Some(ControlInput::Invalid(Violation::BadControlFrame)),
    };
    let input = match Message::parse(message) {
        Ok(Message::Auth { token }) => ControlInput::Auth(Bytes::copy_from_slice(token)),
        Err(RelayError::UnknownType(_)) => ControlInput::Unknown,
        Err(RelayError::BadToken) => ControlInput::Invalid(Violation::BadToken),
        Ok(_) | Err(_) => ControlInput::Invalid(Violation::UnexpectedMessage),
    };
    inbox.drain(..frame_len);
    Some(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_inputs() {
        let mut inbox = Vec::new();
        wire::encode_control(b"\x05token", &mut inbox).unwrap();
        wire::encode_control(b"\x7f", &mut inbox).unwrap();
        wire::encode_control(b"\x03", &mut inbox).unwrap();
        inbox.extend_from_slice(&[0, 9, 5]);
        assert!(matches!(next_control(&mut inbox), Some(ControlInput::Auth(t)) if t == "token"));
        assert!(matches!(
            next_control(&mut inbox),
            Some(ControlInput::Unknown)
        ));
        assert!(matches!(
            next_control(&mut inbox),
            Some(ControlInput::Invalid(Violation::UnexpectedMessage))
        ));
        assert!(next_control(&mut inbox).is_none(), "partial frame waits");
        assert_eq!(inbox, [0, 9, 5]);
        let mut bad = vec![0, 0];
        assert!(matches!(
            next_control(&mut bad),
            Some(ControlInput::Invalid(Violation::BadControlFrame))
        ));
        let mut empty_token = vec![0, 1, 5];
        assert!(matches!(
            next_control(&mut empty_token),
            Some(ControlInput::Invalid(Violation::BadToken))
        ));
    }

    #[test]
    fn close_reasons() {
        assert_eq!(CloseReason::Rejected.error_code(), Some(1008));
        assert_eq!(CloseReason::Replaced.error_code(), Some(4000));
        assert_eq!(
            CloseReason::PeerMisbehaved(Violation::BadToken).as_str(),
            "bad_token"
        );
        assert_eq!(CloseReason::IdleTimeout.error_code(), None);
    }
}
