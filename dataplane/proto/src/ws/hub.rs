//! [`Hub`]: the relay sessions of one core, keyed by NodeId, and the routing between them.
//!
//! One hub per core, single-threaded. A node has at most one authenticated session: a newer
//! one replaces the older, which is closed with 4000 ([`CloseCode::REPLACED`]). A SEND is
//! routed by [`Hub::route`]: to a local session (the RECV frame is built in place in the
//! sender's input and copied into the destination's queue), to another core or host
//! ([`Forward::Remote`]: the shell ships the ready frame and the far hub takes it with
//! [`Hub::handle_remote`]), or nowhere, in which case the sender gets a PEER_GONE, at most
//! one per sender and destination per interval.
//!
//! Mesh links from other relay hosts are sessions too, keyed by [`HostId`] apart from the
//! nodes: [`Hub::accept_mesh`] makes one (a newer link of the same host replaces the older,
//! like a node's), and [`Hub::forward_to_mesh`] queues a [`Forward::Remote`] frame to it as
//! FORWARD.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::time::{Duration, Instant};

use boson_shared::{HostId, NodeId};

use super::WsConfig;
use super::frame::{CloseCode, FrameHeader, OpCode};
use super::relay::{self, MessageType, PREFIX_LEN};
use super::session::{CloseReason, Pending, Session, SessionError};
use super::stats::{DropReason, Stats};

/// A connection's handle in its hub, never reused by that hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The raw number, for logs.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Where a node is connected when it is not connected to this hub. A relay core plugs in
/// its [`Directory`](super::Directory) of other cores, hosts and QUIC sessions, and routes
/// with [`Hub::route_frame`]; a closure `Fn(&NodeId) -> bool` works for tests.
pub trait Presence {
    /// Whether `node` is reachable through another core or host.
    fn is_remote(&self, node: &NodeId) -> bool;
}

impl<F: Fn(&NodeId) -> bool> Presence for F {
    fn is_remote(&self, node: &NodeId) -> bool {
        self(node)
    }
}

/// A [`Presence`] that knows no other core or host: a single-core relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOnly;

impl Presence for LocalOnly {
    fn is_remote(&self, _node: &NodeId) -> bool {
        false
    }
}

/// Where a destination node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Authenticated on this hub.
    Local(ConnId),
    /// Reachable through another core or host, per the [`Presence`] lookup.
    Remote(NodeId),
    /// Connected nowhere we know.
    Unknown,
}

/// What [`Hub::handle_input`] did with the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Input {
    /// Bytes consumed from the start of the input (0: read more).
    pub consumed: usize,
    /// What became of a SEND, if the consumed frame was one.
    pub forward: Option<Forward>,
}

/// The decision for one SEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Queued as RECV to this local session (a [`HubEvent::Wake`] follows if it was idle).
    Local(ConnId),
    /// The destination is on another core or host: ship `input[frame]`, a complete RECV
    /// frame built in place, to it; it arrives there through [`Hub::handle_remote`].
    Remote {
        /// The destination node.
        dest: NodeId,
        /// The RECV frame's position in the input.
        frame: Range<usize>,
    },
    /// The destination is connected nowhere: dropped, and a PEER_GONE queued to the sender
    /// unless one went out recently.
    Gone(NodeId),
    /// Not a SEND: a mesh peer's GONE, saying `dest` is connected nowhere on its host, for
    /// `src`, a node of this host that is not on this hub. Find `src`'s core and call
    /// [`Hub::notify_gone`] there (or tell its QUIC session).
    PeerGone {
        /// This host's node that sent to `dest`.
        src: NodeId,
        /// The node that is gone.
        dest: NodeId,
    },
}

/// What [`Hub::handle_remote`] did with a frame from another core or host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued to this session.
    Queued(ConnId),
    /// The node is not connected to this hub (any more); for
    /// [`Hub::forward_to_mesh`], the host has no mesh link here
    /// ([`DropReason::NoMeshLink`]).
    Gone,
    /// Not a single unmasked binary RECV frame: dropped ([`DropReason::Malformed`]).
    Malformed,
}

/// What the hub reports, drained with [`Hub::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent<'a> {
    /// `conn` presented `token`: check it, then [`Hub::accept`] (a node's token),
    /// [`Hub::accept_mesh`] (a relay host's mesh token) or [`Hub::reject`].
    Authenticate {
        /// The connection.
        conn: ConnId,
        /// The token, opaque to the relay.
        token: &'a [u8],
    },
    /// `conn` has bytes to write: call [`Hub::poll_transmit`] until it returns `None`. No
    /// further `Wake` for `conn` comes before that.
    Wake {
        /// The connection.
        conn: ConnId,
    },
    /// `conn` reached `Closed`: flush [`Hub::poll_transmit`], close the socket, then call
    /// [`Hub::handle_disconnect`].
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Misuse of the hub API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// No such connection (never created, or already disconnected).
    #[error("unknown connection {0}")]
    UnknownConn(ConnId),
    /// The session refused the call.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// The sessions of one core and the routing between them.
///
/// # Driving it
///
/// * **Inputs**: [`handle_connect`](Self::handle_connect) per accepted connection,
///   [`handle_input`](Self::handle_input) with its bytes (one upgrade or frame per call;
///   call again while it consumes), [`handle_remote`](Self::handle_remote) for frames from
///   other cores or hosts, [`accept`](Self::accept)/[`accept_mesh`](Self::accept_mesh)/
///   [`reject`](Self::reject) on [`HubEvent::Authenticate`],
///   [`forward_to_mesh`](Self::forward_to_mesh) for a [`Forward::Remote`] whose destination
///   is connected to a peer host, [`handle_timeout`](Self::handle_timeout) at
///   [`poll_timeout`](Self::poll_timeout), [`handle_disconnect`](Self::handle_disconnect)
///   when a socket is gone.
/// * **Outputs**, after every input: act on the returned [`Forward`] (its range points into
///   the input), then [`poll_event`](Self::poll_event) until `None` — on `Wake` and `Closed`,
///   [`poll_transmit`](Self::poll_transmit) that connection until `None` — then re-arm the
///   timer from `poll_timeout`.
///
/// ```text
/// let input = hub.handle_input(now, conn, &mut buf[start..end])?;
/// if let Some(Forward::Remote { dest, frame }) = &input.forward { /* ship buf[start..][frame] */ }
/// while let Some(event) = hub.poll_event() { /* check tokens, write, close */ }
/// timer.arm(hub.poll_timeout());
/// ```
#[derive(Debug)]
pub struct Hub<P = LocalOnly> {
    config: WsConfig,
    presence: P,
    sessions: BTreeMap<ConnId, Slot>,
    by_node: HashMap<NodeId, ConnId>,
    /// Mesh links, by peer host: few, and iterated by [`Hub::mesh_hosts`].
    by_host: BTreeMap<HostId, ConnId>,
    timers: BTreeSet<(Instant, ConnId)>,
    events: VecDeque<(ConnId, Notice)>,
    gone: GoneLimiter,
    next_conn: u64,
    draining: bool,
    /// Counters of disconnected sessions.
    retired: Stats,
    /// The hub's own counters.
    stats: Stats,
}

#[derive(Debug)]
struct Slot {
    session: Session,
    /// The node this session was accepted as.
    node: Option<NodeId>,
    /// The peer host this session was accepted as (a mesh link).
    host: Option<HostId>,
    /// The deadline this slot has in `timers`.
    timer: Option<Instant>,
    /// A `Wake` is out and `poll_transmit` has not returned `None` since.
    woken: bool,
}

#[derive(Debug, Clone, Copy)]
enum Notice {
    Authenticate,
    Wake,
    Closed(CloseReason),
}

impl<P: Presence> Hub<P> {
    /// An empty hub; `presence` answers for nodes not connected here.
    pub fn new(config: WsConfig, presence: P, now: Instant) -> Self {
        let gone = GoneLimiter::new(now, config.peer_gone_interval, config.peer_gone_slots);
        Self {
            config,
            presence,
            sessions: BTreeMap::new(),
            by_node: HashMap::new(),
            by_host: BTreeMap::new(),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            gone,
            next_conn: 0,
            draining: false,
            retired: Stats::default(),
            stats: Stats::default(),
        }
    }

    /// A new connection, accepted at `now`.
    pub fn handle_connect(&mut self, now: Instant) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let slot = Slot {
            session: Session::new(self.config.clone(), now),
            node: None,
            host: None,
            timer: None,
            woken: false,
        };
        self.sessions.insert(conn, slot);
        self.after(conn);
        conn
    }

    /// Bytes read from `conn`, from where the last call's consumption ended. See
    /// [`Session::handle_input`]; a SEND is routed at once and its outcome returned.
    pub fn handle_input(
        &mut self,
        now: Instant,
        conn: ConnId,
        input: &mut [u8],
    ) -> Result<Input, HubError> {
        let consumed = self.slot_mut(conn)?.session.handle_input(now, input)?;
        let forward = self.drain(now, conn, Some(input));
        self.after(conn);
        Ok(Input { consumed, forward })
    }

    /// A RECV frame `frame` for `dest` from another core or host (a [`Forward::Remote`]
    /// there).
    pub fn handle_remote(&mut self, dest: &NodeId, frame: &[u8]) -> Delivery {
        let Some(&conn) = self.by_node.get(dest) else {
            return Delivery::Gone;
        };
        if !is_recv_frame(frame) {
            self.stats.drops.record(DropReason::Malformed);
            return Delivery::Malformed;
        }
        let Some(slot) = self.sessions.get_mut(&conn) else {
            return Delivery::Gone;
        };
        if slot.session.enqueue_frame(frame).is_err() {
            return Delivery::Gone;
        }
        self.wake(conn);
        Delivery::Queued(conn)
    }

    /// `dest`, to which `src` sent, is connected nowhere (another host said so over the mesh,
    /// see [`Forward::PeerGone`]): `src`, if it is on this hub, gets a PEER_GONE, unless one
    /// about `dest` went to it within the rate-limit interval. Returns whether one was
    /// queued.
    pub fn notify_gone(&mut self, now: Instant, src: &NodeId, dest: &NodeId) -> bool {
        let Some(&conn) = self.by_node.get(src) else {
            return false;
        };
        if !self.gone.allow(now, src, dest) {
            self.stats.peer_gone_suppressed += 1;
            return false;
        }
        let queued = self.sessions.get_mut(&conn).is_some_and(|slot| {
            slot.session
                .enqueue_notice(MessageType::PeerGone, Some(dest))
                .is_ok()
        });
        if queued {
            self.stats.peer_gone_sent += 1;
            self.wake(conn);
        }
        queued
    }

    /// The owner accepted `conn`'s token as `node`. An older session of `node` is replaced.
    pub fn accept(&mut self, now: Instant, conn: ConnId, node: NodeId) -> Result<(), HubError> {
        let draining = self.draining;
        let slot = self.slot_mut(conn)?;
        slot.session.accept(now, node)?;
        slot.node = Some(node);
        if draining {
            // An accepted session always takes a notice.
            let _ = slot
                .session
                .enqueue_notice(MessageType::ReconnectHint, None);
        }
        if let Some(old) = self.by_node.insert(node, conn)
            && old != conn
            && let Some(old_slot) = self.sessions.get_mut(&old)
        {
            old_slot.session.replace(now);
            self.drain(now, old, None);
            self.after(old);
        }
        self.drain(now, conn, None);
        self.after(conn);
        Ok(())
    }

    /// The owner accepted `conn`'s token as the mesh token of relay host `host`: from now on
    /// [`forward_to_mesh`](Self::forward_to_mesh) for `host` queues to it. An older mesh
    /// link of `host` is replaced (closed with 4000).
    pub fn accept_mesh(
        &mut self,
        now: Instant,
        conn: ConnId,
        host: HostId,
    ) -> Result<(), HubError> {
        let draining = self.draining;
        let slot = self.slot_mut(conn)?;
        slot.session.accept_mesh(now, host)?;
        slot.host = Some(host);
        if draining {
            // An accepted session always takes a notice.
            let _ = slot
                .session
                .enqueue_notice(MessageType::ReconnectHint, None);
        }
        if let Some(old) = self.by_host.insert(host, conn)
            && old != conn
            && let Some(old_slot) = self.sessions.get_mut(&old)
        {
            old_slot.session.replace(now);
            self.drain(now, old, None);
            self.after(old);
        }
        self.drain(now, conn, None);
        self.after(conn);
        Ok(())
    }

    /// Queues the packet of `recv_frame` — a RECV frame this hub built, as handed out in
    /// [`Forward::Remote`] — for `dest` on `host`'s mesh link, as a FORWARD frame. The frame
    /// is copied once, from two slices straight into the link's queue; a full queue drops
    /// its oldest frames ([`DropReason::MeshQueueFull`]).
    pub fn forward_to_mesh(&mut self, host: &HostId, dest: &NodeId, recv_frame: &[u8]) -> Delivery {
        let Some(payload) = recv_payload(recv_frame) else {
            self.stats.drops.record(DropReason::Malformed);
            return Delivery::Malformed;
        };
        if payload.len() > self.config.max_message {
            // The peer would fail the link on it (1009): not a frame this hub built.
            self.stats.drops.record(DropReason::Malformed);
            return Delivery::Malformed;
        }
        let Some(slot) = self
            .by_host
            .get(host)
            .copied()
            .and_then(|conn| Some((conn, self.sessions.get_mut(&conn)?)))
        else {
            self.stats.drops.record(DropReason::NoMeshLink);
            return Delivery::Gone;
        };
        let (conn, slot) = slot;
        let mut head = [0u8; relay::MAX_FORWARD_HEAD];
        let head_len = relay::encode_forward_head(dest, payload.len(), &mut head);
        // `[0x02]` gives way to `[0x08][dest]`, in the head.
        let body = &payload[1..];
        match slot.session.enqueue_parts(&[&head[..head_len], body]) {
            Ok(true) => self.stats.forwarded_mesh.record(head_len + body.len()),
            Ok(false) => {}
            Err(_) => {
                self.stats.drops.record(DropReason::NoMeshLink);
                return Delivery::Gone;
            }
        }
        self.wake(conn);
        Delivery::Queued(conn)
    }

    /// The peer hosts with a mesh link here, and their connections, in host order.
    pub fn mesh_hosts(&self) -> impl Iterator<Item = (HostId, ConnId)> + '_ {
        self.by_host.iter().map(|(&host, &conn)| (host, conn))
    }

    /// The connection of `host`'s mesh link, if it has one here.
    pub fn mesh_conn(&self, host: &HostId) -> Option<ConnId> {
        self.by_host.get(host).copied()
    }

    /// The owner rejected `conn`'s token: it closes with 1008.
    pub fn reject(&mut self, now: Instant, conn: ConnId) -> Result<(), HubError> {
        self.slot_mut(conn)?.session.reject(now)?;
        self.drain(now, conn, None);
        self.after(conn);
        Ok(())
    }

    /// Starts a graceful close of `conn` with `code` (see [`Session::close`]).
    pub fn close(&mut self, now: Instant, conn: ConnId, code: CloseCode) -> Result<(), HubError> {
        self.slot_mut(conn)?.session.close(now, code)?;
        self.drain(now, conn, None);
        self.after(conn);
        Ok(())
    }

    /// The shell closed `conn`'s socket (after `Closed`, or because the peer went away):
    /// the session is forgotten.
    pub fn handle_disconnect(&mut self, conn: ConnId) -> Result<(), HubError> {
        let mut slot = self
            .sessions
            .remove(&conn)
            .ok_or(HubError::UnknownConn(conn))?;
        if let Some(at) = slot.timer {
            self.timers.remove(&(at, conn));
        }
        self.unmap(conn, slot.node);
        self.unmap_host(conn, slot.host);
        slot.session.handle_disconnect();
        self.retired.merge(slot.session.stats());
        Ok(())
    }

    /// The next bytes to write to `conn` (see [`Session::poll_transmit`]).
    pub fn poll_transmit(&mut self, conn: ConnId, buf: &mut [u8]) -> Option<usize> {
        let slot = self.sessions.get_mut(&conn)?;
        let len = slot.session.poll_transmit(buf);
        if len.is_none() {
            slot.woken = false;
        }
        len
    }

    /// The next event, in the order they arose.
    pub fn poll_event(&mut self) -> Option<HubEvent<'_>> {
        while let Some((conn, notice)) = self.events.pop_front() {
            let Some(slot) = self.sessions.get(&conn) else {
                // Disconnected since: nothing left to do for it.
                continue;
            };
            match notice {
                Notice::Authenticate => {
                    if let Some(token) = slot.session.pending_token() {
                        return Some(HubEvent::Authenticate { conn, token });
                    }
                }
                Notice::Wake => return Some(HubEvent::Wake { conn }),
                Notice::Closed(reason) => return Some(HubEvent::Closed { conn, reason }),
            }
        }
        None
    }

    /// The earliest deadline over all sessions.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Fires every session deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.sessions.get_mut(&conn) {
                slot.timer = None;
                slot.session.handle_timeout(now);
            }
            self.drain(now, conn, None);
            self.after(conn);
        }
    }

    /// The presence lookup this hub was built with.
    pub const fn presence(&self) -> &P {
        &self.presence
    }

    /// The presence lookup this hub was built with, to update.
    pub const fn presence_mut(&mut self) -> &mut P {
        &mut self.presence
    }

    /// Where `dest` is: on this hub, elsewhere per the presence lookup, or nowhere.
    pub fn route(&self, dest: &NodeId) -> Route {
        if let Some(&conn) = self.by_node.get(dest) {
            return Route::Local(conn);
        }
        if self.presence.is_remote(dest) {
            return Route::Remote(*dest);
        }
        Route::Unknown
    }

    /// Tells `to` (if connected here) that `peer` is reachable: PEER_PRESENT. Returns
    /// whether it was queued.
    pub fn notify_present(&mut self, to: &NodeId, peer: &NodeId) -> bool {
        let Some(&conn) = self.by_node.get(to) else {
            return false;
        };
        let queued = self.sessions.get_mut(&conn).is_some_and(|slot| {
            slot.session
                .enqueue_notice(MessageType::PeerPresent, Some(peer))
                .is_ok()
        });
        self.wake(conn);
        queued
    }

    /// The server is draining: every authenticated session (and every one accepted from now
    /// on) gets a RECONNECT_HINT. Sessions stay up until their clients move.
    pub fn start_draining(&mut self) {
        self.draining = true;
        for (&conn, slot) in &mut self.sessions {
            if slot
                .session
                .enqueue_notice(MessageType::ReconnectHint, None)
                .is_ok()
                && !slot.woken
            {
                slot.woken = true;
                self.events.push_back((conn, Notice::Wake));
            }
        }
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub const fn is_draining(&self) -> bool {
        self.draining
    }

    /// The session of `conn`.
    pub fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(&conn).map(|slot| &slot.session)
    }

    /// Live connections, in any state.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Counters of the hub and all its sessions, live and gone. O(sessions): read on scrape.
    pub fn stats(&self) -> Stats {
        let mut total = self.retired;
        total.merge(&self.stats);
        for slot in self.sessions.values() {
            total.merge(slot.session.stats());
        }
        total.sessions = self.sessions.len() as u64;
        total.authenticated = self.by_node.len() as u64;
        total.mesh_sessions = self.by_host.len() as u64;
        total
    }

    // -----------------------------------------------------------------------------------
    // Details.

    fn slot_mut(&mut self, conn: ConnId) -> Result<&mut Slot, HubError> {
        self.sessions
            .get_mut(&conn)
            .ok_or(HubError::UnknownConn(conn))
    }

    /// Handles the session's events; `input` is the input they came from, if any.
    fn drain(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut input: Option<&mut [u8]>,
    ) -> Option<Forward> {
        let mut forward = None;
        while let Some(pending) = self
            .sessions
            .get_mut(&conn)
            .and_then(|slot| slot.session.next_pending())
        {
            match pending {
                Pending::Packet { dest, payload } => {
                    if let Some(input) = input.as_deref_mut() {
                        forward = self.forward(now, conn, dest, input, payload);
                    }
                }
                Pending::Gone { dest, src } => {
                    if !self.notify_gone(now, &src, &dest) && !self.by_node.contains_key(&src) {
                        forward = Some(Forward::PeerGone { src, dest });
                    }
                }
                Pending::Authenticate => self.events.push_back((conn, Notice::Authenticate)),
                Pending::Closed(reason) => self.events.push_back((conn, Notice::Closed(reason))),
            }
        }
        forward
    }

    /// Routes one SEND from `src_conn`; `payload` is its packet in `input`.
    fn forward(
        &mut self,
        now: Instant,
        src_conn: ConnId,
        dest: NodeId,
        input: &mut [u8],
        payload: Range<usize>,
    ) -> Option<Forward> {
        let src = self.sessions.get(&src_conn)?.session.node()?;
        let message = payload.start.checked_sub(PREFIX_LEN)?..payload.end;
        match self.route(&dest) {
            Route::Local(to) => {
                let frame = relay::send_to_recv_in_place(input, message, &src).ok()?;
                let slot = self.sessions.get_mut(&to)?;
                slot.session.enqueue_frame(&input[frame]).ok()?;
                self.stats.forwarded_local += 1;
                self.wake(to);
                Some(Forward::Local(to))
            }
            Route::Remote(node) => {
                let frame = relay::send_to_recv_in_place(input, message, &src).ok()?;
                self.stats.forwarded_remote += 1;
                Some(Forward::Remote { dest: node, frame })
            }
            Route::Unknown => {
                self.stats.drops.record(DropReason::PeerGone);
                if self.gone.allow(now, &src, &dest) {
                    let slot = self.sessions.get_mut(&src_conn)?;
                    if slot
                        .session
                        .enqueue_notice(MessageType::PeerGone, Some(&dest))
                        .is_ok()
                    {
                        self.stats.peer_gone_sent += 1;
                    }
                } else {
                    self.stats.peer_gone_suppressed += 1;
                }
                Some(Forward::Gone(dest))
            }
        }
    }

    /// After any call on `conn`: re-arm its timer, forget its node if it is no longer
    /// authenticated, and wake it if it has output.
    fn after(&mut self, conn: ConnId) {
        let Some(slot) = self.sessions.get_mut(&conn) else {
            return;
        };
        let next = slot.session.poll_timeout();
        if next != slot.timer {
            if let Some(at) = slot.timer {
                self.timers.remove(&(at, conn));
            }
            if let Some(at) = next {
                self.timers.insert((at, conn));
            }
            slot.timer = next;
        }
        let node = slot.node.take_if(|_| slot.session.node().is_none());
        let host = slot.host.take_if(|_| slot.session.host().is_none());
        self.unmap(conn, node);
        self.unmap_host(conn, host);
        self.wake(conn);
    }

    fn unmap_host(&mut self, conn: ConnId, host: Option<HostId>) {
        if let Some(host) = host
            && self.by_host.get(&host) == Some(&conn)
        {
            self.by_host.remove(&host);
        }
    }

    fn unmap(&mut self, conn: ConnId, node: Option<NodeId>) {
        if let Some(node) = node
            && self.by_node.get(&node) == Some(&conn)
        {
            self.by_node.remove(&node);
        }
    }

    fn wake(&mut self, conn: ConnId) {
        if let Some(slot) = self.sessions.get_mut(&conn)
            && !slot.woken
            && slot.session.has_transmit()
        {
            slot.woken = true;
            self.events.push_back((conn, Notice::Wake));
        }
    }
}

/// Whether `frame` is exactly one unmasked, final binary frame holding a RECV message.
fn is_recv_frame(frame: &[u8]) -> bool {
    recv_payload(frame).is_some()
}

/// The payload, `[0x02][src][packet]`, if `frame` is exactly one unmasked, final binary
/// frame holding a RECV message.
fn recv_payload(frame: &[u8]) -> Option<&[u8]> {
    let Ok(Some(header)) = FrameHeader::parse(frame) else {
        return None;
    };
    let is_recv = header.fin
        && header.opcode == OpCode::Binary
        && header.mask.is_none()
        && header.frame_len() == Some(frame.len())
        && header.payload_len >= PREFIX_LEN as u64
        && frame.get(header.header_len) == Some(&(MessageType::Recv as u8));
    is_recv.then(|| &frame[header.header_len..])
}

/// Fixed-memory rate limit of PEER_GONE: one slot per hash of (sender, destination),
/// holding the pair's hash and until when it stays quiet. Two pairs that collide evict each
/// other, which only ever lets an extra PEER_GONE through, to the sender that caused it.
/// The QUIC relay limits its PEER_GONEs with the same type.
#[derive(Debug)]
pub(crate) struct GoneLimiter {
    /// `(pair hash, quiet until, in ms since epoch)`.
    slots: Box<[(u64, u64)]>,
    epoch: Instant,
    interval_ms: u64,
}

impl GoneLimiter {
    pub(crate) fn new(now: Instant, interval: Duration, slots: usize) -> Self {
        Self {
            slots: vec![(0, 0); slots.max(1)].into_boxed_slice(),
            epoch: now,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether a PEER_GONE about `dest` may go to `src` at `now`; if so, the pair is quiet
    /// for one interval.
    pub(crate) fn allow(&mut self, now: Instant, src: &NodeId, dest: &NodeId) -> bool {
        let mut hasher = DefaultHasher::new();
        (src, dest).hash(&mut hasher);
        let key = hasher.finish();
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        // The remainder is below `slots.len()`, so it fits in usize.
        let index = (key % self.slots.len() as u64) as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return true;
        };
        if slot.0 == key && now_ms < slot.1 {
            return false;
        }
        *slot = (key, now_ms.saturating_add(self.interval_ms));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::relay::node_id;
    use crate::ws::test_epoch;

    #[test]
    fn gone_limiter_per_pair() {
        let t0 = test_epoch();
        let mut limiter = GoneLimiter::new(t0, Duration::from_secs(5), 64);
        let (a, b, c) = (node_id([1; 16]), node_id([2; 16]), node_id([3; 16]));
        assert!(limiter.allow(t0, &a, &b));
        assert!(!limiter.allow(t0 + Duration::from_secs(4), &a, &b));
        assert!(limiter.allow(t0, &a, &c) || limiter.slots.len() == 1);
        assert!(limiter.allow(t0 + Duration::from_secs(5), &a, &b));
    }

    #[test]
    fn recv_frame_check() {
        let mut out = [0u8; relay::MAX_NOTICE_FRAME];
        let len = relay::encode_notice(MessageType::PeerGone, Some(&node_id([1; 16])), &mut out);
        assert!(!is_recv_frame(&out[..len]), "not RECV");
        out[2] = MessageType::Recv as u8;
        assert!(is_recv_frame(&out[..len]));
        assert!(!is_recv_frame(&out[..len - 1]), "truncated");
        out[0] = 0x02;
        assert!(!is_recv_frame(&out[..len]), "not final");
    }

    #[test]
    fn closure_presence() {
        let remote = node_id([9; 16]);
        let hub = Hub::new(
            WsConfig::new(),
            move |node: &NodeId| *node == remote,
            test_epoch(),
        );
        assert_eq!(hub.route(&remote), Route::Remote(remote));
        assert_eq!(hub.route(&node_id([8; 16])), Route::Unknown);
        let local = Hub::new(WsConfig::new(), LocalOnly, test_epoch());
        assert_eq!(local.route(&remote), Route::Unknown);
        assert!(local.is_empty());
    }
}
