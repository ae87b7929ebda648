//! [`Server`]: the TURN state machine.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boson_shared::credentials::{RestUsername, TurnSecret};
use rand_core::RngCore;

use super::allocation::{Allocation, AllocationId};
use super::attr::{
    EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayedAddress,
};
use super::channel_data::{self, ChannelData};
use super::nonce::{NONCE_LEN, NonceCheck, NonceKey};
use super::rate_limit::RateLimiter;
use super::{
    Allowed, ChannelNumber, ClientAddr, ConfigError, HEADROOM, PeerAddr, PeerFilter, PortTable,
    RelayPort, TurnConfig, data_indication,
};
use crate::binding::{self, BindingConfig, BindingOutcome, MAX_UNKNOWN_REPORTED};
use crate::stats::{DropReason, Stats};
use crate::stun::password::{NONCE_COOKIE_PASSWORD_ALGORITHMS, SERVER_PASSWORD_ALGORITHMS};
use crate::stun::{
    ATTR_HEADER_LEN, AlternateServer, AttrType, Authenticated, Class, EncodeError, Encoder,
    ErrorCode, ErrorCodeAttr, LongTermKey, Message, MessageType, Method, Nonce, PacketKind,
    PasswordAlgorithm, PasswordAlgorithmAttr, PasswordAlgorithms, Realm, Trailer, TransactionId,
    UnknownAttributes, Username, XorMappedAddress, classify,
};

/// What the shell does with a datagram from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClientAction {
    /// Send `out[..len]` to `dst` from the listener socket (STUN responses, errors).
    Reply {
        /// The request's source.
        dst: ClientAddr,
        /// Length of the response in `out`.
        len: usize,
    },
    /// Send `packet[payload]` from relay socket `port` to `peer` (the ChannelData or Send
    /// indication payload; zero copy).
    Relay {
        /// The allocation's relay port.
        port: RelayPort,
        /// Where to send.
        peer: PeerAddr,
        /// The payload's position in the received datagram.
        payload: Range<usize>,
    },
    /// Handled; nothing to send (a Binding indication).
    Absorb,
    /// Dropped and already counted under this reason.
    Drop(DropReason),
}

/// What the shell does with a datagram from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum PeerAction {
    /// Send `buf[range]` to `dst` from the listener socket (ChannelData or Data indication).
    Forward {
        /// The allocation's client.
        dst: ClientAddr,
        /// The encapsulated message's position in the buffer.
        range: Range<usize>,
    },
    /// Dropped and already counted under this reason.
    Drop(DropReason),
}

/// The sizes of a [`Server`]'s tables, from [`Server::footprint`]. Only an authenticated
/// Allocate adds to the per-client ones, so unauthenticated traffic from any number of
/// sources leaves them as they are; the rate limit's buckets are fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Allocations, each holding a relay port.
    pub allocations: usize,
    /// Client transport addresses with an allocation.
    pub clients: usize,
    /// Users holding allocations (the per-user quota's table).
    pub users: usize,
    /// Pending timers: allocations, permissions, channels, quarantines, reservations.
    pub timers: usize,
    /// Commands the shell has not taken yet.
    pub commands: usize,
    /// Events the shell has not taken yet.
    pub events: usize,
    /// Token buckets of the rate limit on unauthenticated responses.
    pub rate_limit_buckets: usize,
}

/// Work for the shell, drained with [`Server::next_command`] after every `handle_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Bind a UDP socket on `port` (IPv4) and start receiving on it. Queued before the
    /// Allocate success response is returned by the same call, so the shell binds before the
    /// client can use the allocation.
    CreateAllocation {
        /// The relay port.
        port: RelayPort,
    },
    /// Close the socket on `port`.
    FreeAllocation {
        /// The relay port.
        port: RelayPort,
    },
}

/// What happened to the server's allocations, for whoever keeps a view of them (the control
/// plane), drained with [`Server::poll_event`]. Every allocation yields exactly one
/// `AllocationCreated` and, when it ends for any reason, one `AllocationEnded`, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// An Allocate succeeded.
    AllocationCreated {
        /// The relayed transport address (XOR-RELAYED-ADDRESS).
        relay: SocketAddr,
        /// The REST username's user part; empty for a bare-expiry username.
        user: String,
    },
    /// An allocation ended: it expired, was deleted with a zero-lifetime Refresh, or its relay
    /// socket could not be bound.
    AllocationEnded {
        /// The relayed transport address.
        relay: SocketAddr,
    },
}

/// The sans-IO TURN server: one per core. The servers of a host take relay ports from one
/// shared [`PortTable`] (see [`TurnConfig::with_port_table`]).
///
/// # Driving it
///
/// * **Inputs** (`handle_*`): [`handle_client_input`](Self::handle_client_input) for every
///   datagram on the listener socket, [`handle_peer_input`](Self::handle_peer_input) for every
///   datagram on a relay socket, [`handle_timeout`](Self::handle_timeout) when the instant of
///   [`poll_timeout`](Self::poll_timeout) has passed,
///   [`handle_allocation_failed`](Self::handle_allocation_failed) when a relay socket cannot
///   be bound, [`handle_wall_clock`](Self::handle_wall_clock) to re-anchor wall time.
/// * **Outputs**: the [`ClientAction`] or [`PeerAction`] returned by value (act on it before
///   the next call: ranges point into the caller's buffers), then
///   [`next_command`](Self::next_command) until `None`, then re-arm the timer from
///   [`poll_timeout`](Self::poll_timeout). [`poll_event`](Self::poll_event) until `None`
///   at least once per loop turn (events are for the control plane, never urgent).
/// * **Settings** changed at run time, each taking effect for the requests that follow:
///   [`set_secrets`](Self::set_secrets), [`set_max_allocations_per_user`](
///   Self::set_max_allocations_per_user), [`set_peer_filter`](Self::set_peer_filter),
///   [`start_draining`](Self::start_draining),
///   [`set_alternate_server`](Self::set_alternate_server).
/// * **Counters**: [`stats`](Self::stats), read on scrape.
///
/// ```text
/// loop {
///     let action = server.handle_client_input(now, from, &packet, &mut out); // or peer / timeout
///     /* send per action */
///     while let Some(cmd) = server.next_command() { /* bind / close relay sockets */ }
///     timer.arm(server.poll_timeout());
/// }
/// ```
///
/// The server reads no clock: every call takes `now`, and REST-credential expiry uses the wall
/// time anchored at construction (`unix_now`) advanced by `now`.
#[derive(Debug)]
pub struct Server<R> {
    config: TurnConfig,
    filter: PeerFilter,
    binding: BindingConfig,
    rng: R,
    /// `now` at construction: nonce timestamps count seconds from here.
    epoch: Instant,
    /// `(now, unix seconds)` of the last wall-clock anchor.
    wall: (Instant, u64),
    nonce_key: NonceKey,
    limiter: RateLimiter,
    allocations: HashMap<RelayPort, Allocation>,
    by_client: HashMap<ClientAddr, RelayPort>,
    per_user: HashMap<String, u32>,
    ports: Arc<PortTable>,
    timers: BTreeSet<(Instant, Timer)>,
    commands: VecDeque<Command>,
    events: VecDeque<TurnEvent>,
    next_id: u64,
    draining: bool,
    /// Where a new Allocate goes while draining (300), if some other host takes them.
    alternate: Option<SocketAddr>,
    /// The latest `now` seen, for the one input that carries none
    /// ([`handle_allocation_failed`](Self::handle_allocation_failed)).
    last_now: Instant,
    stats: Stats,
}

/// What a timer entry is for. Entries name the allocation by id so that a timer of a freed
/// allocation never touches a later one on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation {
        port: RelayPort,
        id: AllocationId,
    },
    Permission {
        port: RelayPort,
        id: AllocationId,
        ip: IpAddr,
    },
    /// Fires when the channel's cooldown ends (expiry + cooldown).
    Channel {
        port: RelayPort,
        id: AllocationId,
        number: ChannelNumber,
    },
    /// Ends the quarantine of a port this server could not bind.
    Quarantine {
        port: RelayPort,
    },
    /// Ends a reservation this server made, unless some server took it.
    Reservation {
        token: ReservationToken,
    },
}

/// A request whose MESSAGE-INTEGRITY checked, with what the check established.
struct Authed<'m> {
    request: Authenticated<'m>,
    key: Signer,
    username: &'m str,
    user: &'m str,
}

/// The key a response is signed with, and with which integrity attribute: the one the
/// request used (RFC 8489 §9.2.4).
struct Signer {
    key: LongTermKey,
    sha256: bool,
}

/// Why an allocation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Expired,
    Deleted,
    BindFailed,
}

impl<R: RngCore> Server<R> {
    /// A server with no allocations. `unix_now` is the wall-clock time at `now`, in unix
    /// seconds, for REST-credential expiry.
    pub fn new(config: TurnConfig, mut rng: R, now: Instant, unix_now: u64) -> Self {
        let mut binding = BindingConfig::new().with_known_attributes(is_known);
        if let Some(software) = config.software {
            binding = binding.with_software(software);
        }
        if let Some((origin, other)) = config.other_address {
            binding = binding.with_other_address(origin, other);
        }
        let nonce_key = NonceKey::new(&mut rng);
        let limiter = RateLimiter::new(
            &mut rng,
            now,
            config.rate_limit_buckets,
            config.unauthenticated_per_second,
            config.unauthenticated_burst,
        );
        Self {
            filter: config.effective_peer_filter(),
            ports: Arc::clone(&config.ports),
            config,
            binding,
            rng,
            epoch: now,
            wall: (now, unix_now),
            nonce_key,
            limiter,
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            per_user: HashMap::new(),
            timers: BTreeSet::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            draining: false,
            alternate: None,
            last_now: now,
            stats: Stats::default(),
        }
    }

    /// A datagram from `from` on the listener socket. `out` (≥ 1500 bytes) receives any
    /// response.
    pub fn handle_client_input(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        self.last_now = self.last_now.max(now);
        match classify(packet) {
            PacketKind::ChannelData => self.handle_channel_data(now, from, packet),
            PacketKind::Stun => match Message::parse(packet) {
                Ok(message) => self.handle_stun(now, from, &message, out),
                Err(err) => self.drop(DropReason::from(err)),
            },
            PacketKind::Other => self.drop(DropReason::NotStun),
        }
    }

    /// A datagram from peer `from` on relay port `port`, received into
    /// `buf[HEADROOM..HEADROOM + len]`. The server writes the encapsulation around it in place
    /// and returns the range of `buf` to send; `buf` needs 3 spare bytes after the payload for
    /// Data-indication padding.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        port: RelayPort,
        from: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        self.last_now = self.last_now.max(now);
        let Some(allocation) = self.allocations.get(&port).filter(|a| a.is_live(now)) else {
            return self.drop_peer(DropReason::NoAllocation);
        };
        match allocation.permission(from.get().ip(), now) {
            None => return self.drop_peer(DropReason::NoPermission),
            // From one of this host's own addresses: only a live relay allocation may send
            // (relay to relay), never a local service or a relay port whose allocation ended.
            Some(Allowed::LiveRelayPorts) if !self.ports.is_allocated(from.get().port()) => {
                return self.drop_peer(DropReason::NotARelayPort);
            }
            Some(Allowed::LiveRelayPorts | Allowed::Anywhere) => {}
        }
        let client = allocation.client;
        let channel = allocation.peer_channel(from, now);
        if HEADROOM.checked_add(len).is_none_or(|end| buf.len() < end) {
            return self.drop_peer(DropReason::BufferTooSmall);
        }
        let range = match channel {
            Some(number) => {
                let Ok(len16) = u16::try_from(len) else {
                    return self.drop_peer(DropReason::PayloadTooLarge);
                };
                let start = HEADROOM - channel_data::HEADER_LEN;
                buf[start..HEADROOM].copy_from_slice(&channel_data::encode_header(number, len16));
                start..HEADROOM + len
            }
            None => {
                let mut transaction_id = [0; TransactionId::LEN];
                self.rng.fill_bytes(&mut transaction_id);
                let transaction_id = TransactionId::new(transaction_id);
                match data_indication::encapsulate(buf, len, from.get(), transaction_id) {
                    Ok(range) => range,
                    Err(reason) => return self.drop_peer(reason),
                }
            }
        };
        self.stats.peer_to_client.record(len);
        PeerAction::Forward { dst: client, range }
    }

    /// The next command for the shell, in the order they arose.
    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next allocation event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work: the earliest expiry of an
    /// allocation, permission, channel cooldown, port quarantine or port reservation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Expires everything due at `now`: allocations (queueing
    /// [`Command::FreeAllocation`]), permissions, channel bindings, port quarantines and the
    /// port reservations this server made.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.fire(now, timer);
        }
    }

    /// The counters.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Re-anchors wall time: `unix_now` is the unix time at `now`.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_now: u64) {
        self.last_now = self.last_now.max(now);
        self.wall = (now, unix_now);
    }

    /// The shell could not bind `port`: the allocation on it is deleted (the client's next
    /// request gets 437), the port stays out of the table for
    /// [`PORT_QUARANTINE`](super::PORT_QUARANTINE), and a port the allocation reserved is
    /// freed (its token was never sent). No [`Command::FreeAllocation`] follows: there is no
    /// socket to close.
    pub fn handle_allocation_failed(&mut self, port: RelayPort) {
        if self.allocations.contains_key(&port) {
            self.end_allocation(port, Ending::BindFailed, self.last_now);
        }
    }

    /// The stream connection of `client` closed: its allocation, if any, is deleted at once
    /// (its relayed traffic had nowhere left to go), as a Refresh with lifetime 0 would.
    pub fn handle_client_closed(&mut self, now: Instant, client: ClientAddr) {
        if let Some(port) = self.by_client.get(&client).copied() {
            self.end_allocation(port, Ending::Deleted, now);
        }
    }

    /// Replaces the TURN REST secrets (newest first; the first is the one credentials are
    /// minted with, every one verifies). Every request from now on, Refresh included, must
    /// verify under one of `secrets`; allocations made under a secret that is gone keep
    /// relaying until they expire, and their Refreshes get 401, so their clients allocate
    /// again with a fresh credential. An empty list is refused and changes nothing.
    pub fn set_secrets(
        &mut self,
        now: Instant,
        secrets: Vec<TurnSecret>,
    ) -> Result<(), ConfigError> {
        self.last_now = self.last_now.max(now);
        if secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        self.config.secrets = secrets;
        Ok(())
    }

    /// Replaces the per-user allocation quota. Allocates from now on are judged against it;
    /// allocations already over it are not evicted (they end as they would have).
    pub fn set_max_allocations_per_user(&mut self, now: Instant, per_user: u32) {
        self.last_now = self.last_now.max(now);
        self.config.max_allocations_per_user = per_user;
    }

    /// Replaces the peer filter (the relay address is added as an own address, as at
    /// construction). CreatePermission, ChannelBind and Send from now on are judged by it, and
    /// what exists is judged again at once: a permission for an IP it denies is removed and a
    /// channel to a transport address it denies expires (into its cooldown, RFC 8656 §12), so
    /// a denied peer stops exchanging traffic with every client in both directions, not when
    /// the permission would have run out. Costs one pass over the allocations, unless the
    /// filter is the one in use.
    pub fn set_peer_filter(&mut self, now: Instant, filter: PeerFilter) {
        self.last_now = self.last_now.max(now);
        // The control plane sends its lists again on every resync: nothing to judge then.
        if filter == self.config.peer_filter {
            return;
        }
        self.config.peer_filter = filter;
        self.filter = self.config.effective_peer_filter();
        let cooldown = secs(self.config.channel_cooldown);
        // The order of the pass does not matter: each allocation is judged on its own and the
        // counters and timers only lose what it loses.
        for (&port, allocation) in &mut self.allocations {
            let id = allocation.id;
            for (ip, expires_at) in allocation.revoke_permissions(|ip| self.filter.check(ip).ok()) {
                self.stats.permissions -= 1;
                self.timers
                    .remove(&(expires_at, Timer::Permission { port, id, ip }));
            }
            // An own address's port is judged on every packet (it may stop or start being a
            // relay allocation at any time); here only what the filter itself refuses.
            let denied = |peer: PeerAddr| self.filter.check(peer.get().ip()).is_err();
            for (number, expired_at) in allocation.expire_channels(denied, now) {
                let timer = Timer::Channel { port, id, number };
                self.timers.remove(&(expired_at + cooldown, timer));
                self.timers.insert((now + cooldown, timer));
            }
        }
    }

    /// Refuses new allocations from now on (403); existing ones keep working until they end.
    pub const fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Where new Allocates go while draining: instead of 403 they get 300 (Try Alternate) with
    /// ALTERNATE-SERVER `alternate` ([RFC 8656 §7.2], [RFC 8489 §10]), when the request came
    /// from the same address family (the RFC requires it; others still get 403). `None`: 403.
    ///
    /// [RFC 8656 §7.2]: https://www.rfc-editor.org/rfc/rfc8656#section-7.2
    /// [RFC 8489 §10]: https://www.rfc-editor.org/rfc/rfc8489#section-10
    pub const fn set_alternate_server(&mut self, alternate: Option<SocketAddr>) {
        self.alternate = alternate;
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub const fn is_draining(&self) -> bool {
        self.draining
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The sizes of every table the server keeps: what traffic could make it grow.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            allocations: self.allocations.len(),
            clients: self.by_client.len(),
            users: self.per_user.len(),
            timers: self.timers.len(),
            commands: self.commands.len(),
            events: self.events.len(),
            rate_limit_buckets: self.limiter.len(),
        }
    }

    /// Relay ports free for new allocations in the port table, which other servers may share
    /// (quarantined and reserved ports excluded). O(ports).
    pub fn available_ports(&self) -> usize {
        self.ports.available()
    }

    // ---------------------------------------------------------------------------------------
    // Client input: the hot paths.

    fn handle_channel_data(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
    ) -> ClientAction {
        let frame = match ChannelData::parse(packet) {
            Ok(frame) => frame,
            Err(reason) => return self.drop(reason),
        };
        let Some((port, allocation)) = self.live_allocation_of(from, now) else {
            return self.drop(DropReason::NoAllocation);
        };
        let Some(peer) = allocation.channel_peer(frame.number, now) else {
            return self.drop(DropReason::UnboundChannel);
        };
        match allocation.permission(peer.get().ip(), now) {
            None => return self.drop(DropReason::NoPermission),
            Some(Allowed::LiveRelayPorts) if !self.ports.is_allocated(peer.get().port()) => {
                return self.drop(DropReason::NotARelayPort);
            }
            Some(Allowed::LiveRelayPorts | Allowed::Anywhere) => {}
        }
        self.stats.client_to_peer.record(frame.payload.len());
        ClientAction::Relay {
            port,
            peer,
            payload: frame.payload,
        }
    }

    fn handle_send(
        &mut self,
        now: Instant,
        from: ClientAddr,
        message: &Message<'_>,
    ) -> ClientAction {
        if message
            .unknown_comprehension_required(is_known)
            .next()
            .is_some()
        {
            return self.drop(DropReason::UnknownAttributeInIndication);
        }
        let Some((port, allocation)) = self.live_allocation_of(from, now) else {
            return self.drop(DropReason::NoAllocation);
        };
        let (Ok(Some(XorPeerAddress(peer))), Some(data)) = (
            message.get::<XorPeerAddress>(),
            message.attribute(AttrType::DATA),
        ) else {
            return self.drop(DropReason::MalformedIndication);
        };
        if self.filter.check_transport(peer, &self.ports).is_err() {
            return self.drop(DropReason::PeerFiltered);
        }
        if !peer.is_ipv4() {
            return self.drop(DropReason::PeerFamilyMismatch);
        }
        if allocation.permission(peer.ip(), now).is_none() {
            return self.drop(DropReason::NoPermission);
        }
        let start = data.offset() + ATTR_HEADER_LEN;
        let payload = start..start + data.value().len();
        self.stats.client_to_peer.record(payload.len());
        ClientAction::Relay {
            port,
            peer: PeerAddr::new(peer),
            payload,
        }
    }

    fn live_allocation_of(
        &self,
        from: ClientAddr,
        now: Instant,
    ) -> Option<(RelayPort, &Allocation)> {
        let port = *self.by_client.get(&from)?;
        let allocation = self.allocations.get(&port).filter(|a| a.is_live(now))?;
        Some((port, allocation))
    }

    // ---------------------------------------------------------------------------------------
    // Client input: STUN messages.

    fn handle_stun(
        &mut self,
        now: Instant,
        from: ClientAddr,
        message: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        if message.has_fingerprint() && message.verify_fingerprint().is_err() {
            return self.drop(DropReason::BadFingerprint);
        }
        if message.method() == Method::BINDING {
            return match binding::respond(&self.binding, &mut self.stats, from, message, out) {
                BindingOutcome::Reply { dst, len } => ClientAction::Reply { dst, len },
                BindingOutcome::Absorb => ClientAction::Absorb,
                BindingOutcome::Drop(reason) => ClientAction::Drop(reason),
            };
        }
        match (message.class(), message.method()) {
            (Class::SuccessResponse | Class::ErrorResponse, _) => {
                self.drop(DropReason::UnexpectedResponse)
            }
            (Class::Indication, Method::SEND) => self.handle_send(now, from, message),
            (Class::Indication, _) => self.drop(DropReason::UnexpectedIndication),
            (
                Class::Request,
                Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND,
            ) => self.handle_request(now, from, message, out),
            (Class::Request, _) => self.drop(DropReason::UnsupportedMethod),
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        from: ClientAddr,
        message: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let auth = match self.authenticate(now, from, message, out) {
            Ok(auth) => auth,
            Err(action) => return action,
        };
        // An allocation past its lifetime whose timer has not fired yet is gone already.
        if let Some(&port) = self.by_client.get(&from)
            && self.allocations.get(&port).is_some_and(|a| !a.is_live(now))
        {
            self.end_allocation(port, Ending::Expired, now);
        }
        let mut unknown = [AttrType::new(0); MAX_UNKNOWN_REPORTED];
        let unknown = binding::collect_unknown(message, is_known, &mut unknown);
        if !unknown.is_empty() {
            let written = self.write_error(
                out,
                message,
                ErrorCode::UNKNOWN_ATTRIBUTE,
                Some(&auth.key),
                |enc| enc.add(&UnknownAttributes::new(unknown)),
            );
            return self.error_sent(from, ErrorCode::UNKNOWN_ATTRIBUTE, written);
        }
        if let Some(port) = self.by_client.get(&from)
            && let Some(allocation) = self.allocations.get(port)
            && allocation.username() != auth.username
        {
            return self.error(from, &auth, ErrorCode::WRONG_CREDENTIALS, out);
        }
        match message.method() {
            Method::ALLOCATE => self.allocate(now, from, &auth, out),
            Method::REFRESH => self.refresh(now, from, &auth, out),
            Method::CREATE_PERMISSION => self.create_permission(now, from, &auth, out),
            _ => self.channel_bind(now, from, &auth, out),
        }
    }

    /// The long-term credential checks of RFC 8489 §9.2.4, in its order.
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        from: ClientAddr,
        message: &Message<'m>,
        out: &mut [u8],
    ) -> Result<Authed<'m>, ClientAction> {
        if !message.has_integrity() {
            return Err(self.challenge(now, from, message, ErrorCode::UNAUTHENTICATED, out));
        }
        let (Ok(Some(username)), Ok(Some(_)), Ok(Some(nonce))) = (
            message.get::<Username<'m>>(),
            message.get::<Realm<'m>>(),
            message.get::<Nonce<'m>>(),
        ) else {
            return Err(self.challenge(now, from, message, ErrorCode::BAD_REQUEST, out));
        };
        // With password algorithms offered, every nonce this server mints carries the cookie,
        // so RFC 8489 §9.2.4's algorithm checks apply (a nonce without it fails the nonce
        // check below); without, the attributes are ignored and the key is MD5.
        let algorithm = if self.config.password_algorithms {
            let Some(algorithm) = requested_algorithm(message) else {
                return Err(self.challenge(now, from, message, ErrorCode::BAD_REQUEST, out));
            };
            algorithm
        } else {
            PasswordAlgorithm::MD5
        };
        let username = username.as_str();
        let rest = match RestUsername::parse(username) {
            Ok(rest) if rest.is_live(self.unix_now(now)) => rest,
            Ok(_) | Err(_) => {
                return Err(self.challenge(now, from, message, ErrorCode::UNAUTHENTICATED, out));
            }
        };
        // Rotation: any configured secret may have minted the password.
        let verified = self.config.secrets.iter().find_map(|secret| {
            let password = secret.password_for(username);
            let key = LongTermKey::derive_with(algorithm, username, &self.config.realm, &password)?;
            let request = message.verify_integrity(key.as_integrity_key()).ok()?;
            Some((request, key))
        });
        let Some((request, key)) = verified else {
            return Err(self.challenge(now, from, message, ErrorCode::UNAUTHENTICATED, out));
        };
        let cookie = if self.config.password_algorithms {
            NONCE_COOKIE_PASSWORD_ALGORITHMS
        } else {
            ""
        };
        let check = nonce
            .as_str()
            .strip_prefix(cookie)
            .map_or(NonceCheck::Invalid, |inner| {
                self.nonce_key.check(
                    inner,
                    from,
                    self.nonce_clock(now),
                    self.config.nonce_lifetime,
                )
            });
        if check != NonceCheck::Fresh {
            return Err(self.challenge(now, from, message, ErrorCode::STALE_NONCE, out));
        }
        let key = Signer {
            key,
            sha256: message.has_integrity_sha256(),
        };
        Ok(Authed {
            request,
            key,
            username,
            // Quotas count per user; a bare-expiry username (coturn's client sends those)
            // names no user, so it counts on its own.
            user: if rest.user.is_empty() {
                username
            } else {
                rest.user
            },
        })
    }

    // ---------------------------------------------------------------------------------------
    // The four authenticated requests.

    fn allocate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        auth: &Authed<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let message = auth.request.message();
        if let Some(&port) = self.by_client.get(&from) {
            let existing = self
                .allocations
                .get(&port)
                .filter(|a| a.transaction_id == message.transaction_id());
            return match existing {
                // A retransmission: same response again (RFC 8656 §7.2).
                Some(allocation) => {
                    let (lifetime, reservation) =
                        (allocation.granted_lifetime, allocation.reservation);
                    self.allocate_success(from, auth, port, lifetime, reservation, out)
                }
                None => self.error(from, auth, ErrorCode::ALLOCATION_MISMATCH, out),
            };
        }
        match message.get::<RequestedTransport>() {
            Ok(Some(RequestedTransport::UDP)) => {}
            Ok(Some(_)) => {
                return self.error(from, auth, ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL, out);
            }
            Ok(None) | Err(_) => return self.error(from, auth, ErrorCode::BAD_REQUEST, out),
        }
        let (Ok(even_port), Ok(family), Ok(lifetime), Ok(token)) = (
            message.get::<EvenPort>(),
            message.get::<RequestedAddressFamily>(),
            message.get::<Lifetime>(),
            message.get::<ReservationToken>(),
        ) else {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        };
        if token.is_some() && (even_port.is_some() || family.is_some()) {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        }
        if family.is_some_and(|f| f != RequestedAddressFamily::IPV4) {
            return self.error(from, auth, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED, out);
        }
        if self.draining {
            let source = from.get();
            return match self.alternate {
                Some(alternate) if alternate.is_ipv4() == source.is_ipv4() => {
                    let written = self.write_error(
                        out,
                        message,
                        ErrorCode::TRY_ALTERNATE,
                        Some(&auth.key),
                        |enc| enc.add(&AlternateServer(alternate)),
                    );
                    self.error_sent(from, ErrorCode::TRY_ALTERNATE, written)
                }
                Some(_) | None => self.error(from, auth, ErrorCode::FORBIDDEN, out),
            };
        }
        let user_count = self.per_user.get(auth.user).copied().unwrap_or(0);
        if user_count >= self.config.max_allocations_per_user {
            return self.error(from, auth, ErrorCode::ALLOCATION_QUOTA_REACHED, out);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return self.error(from, auth, ErrorCode::INSUFFICIENT_CAPACITY, out);
        }
        // The port last: a request refused above leaves the table and the token untouched.
        let hint = self.rng.next_u64();
        let claimed = match (token, even_port) {
            (Some(token), _) => self.ports.take_reservation(token).map(|port| (port, None)),
            (None, Some(EvenPort { reserve: true })) => {
                let secret = self.rng.next_u64();
                self.ports
                    .claim_reserving_next(hint, secret)
                    .map(|(port, token)| (port, Some(token)))
            }
            (None, even_port) => self
                .ports
                .claim(hint, even_port.is_some())
                .map(|port| (port, None)),
        };
        let Some((port, reservation)) = claimed else {
            return self.error(from, auth, ErrorCode::INSUFFICIENT_CAPACITY, out);
        };
        if let Some(token) = reservation {
            let until = now + secs(self.config.reservation_lifetime);
            self.timers.insert((until, Timer::Reservation { token }));
        }

        let granted = self.granted_lifetime(lifetime);
        let expires_at = now + secs(granted);
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        let mut allocation = Allocation::new(
            id,
            from,
            auth.username,
            auth.user,
            message.transaction_id(),
            granted,
            expires_at,
        );
        allocation.reservation = reservation;
        self.allocations.insert(port, allocation);
        self.by_client.insert(from, port);
        *self.per_user.entry(auth.user.to_owned()).or_default() += 1;
        self.timers
            .insert((expires_at, Timer::Allocation { port, id }));
        self.stats.allocations += 1;
        self.stats.allocations_created += 1;
        self.commands.push_back(Command::CreateAllocation { port });
        // `user` is the whole username for a bare-expiry one (it counts on its own).
        let user = if auth.user == auth.username {
            ""
        } else {
            auth.user
        };
        self.events.push_back(TurnEvent::AllocationCreated {
            relay: self.relayed_address(port),
            user: user.to_owned(),
        });
        self.allocate_success(from, auth, port, granted, reservation, out)
    }

    fn allocate_success(
        &mut self,
        from: ClientAddr,
        auth: &Authed<'_>,
        port: RelayPort,
        lifetime: u32,
        reservation: Option<ReservationToken>,
        out: &mut [u8],
    ) -> ClientAction {
        let relayed = self.relayed_address(port);
        let written = self.write_success(out, auth, |enc| {
            enc.add(&XorRelayedAddress(relayed))?;
            enc.add(&Lifetime(lifetime))?;
            if let Some(token) = &reservation {
                enc.add(token)?;
            }
            enc.add(&XorMappedAddress(from.reflexive()))
        });
        self.success_sent(from, written)
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: ClientAddr,
        auth: &Authed<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let message = auth.request.message();
        let Some(port) = self.by_client.get(&from).copied() else {
            return self.error(from, auth, ErrorCode::ALLOCATION_MISMATCH, out);
        };
        let (Ok(requested), Ok(family)) = (
            message.get::<Lifetime>(),
            message.get::<RequestedAddressFamily>(),
        ) else {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        };
        if family.is_some_and(|f| f != RequestedAddressFamily::IPV4) {
            return self.error(from, auth, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, out);
        }
        let granted = match requested {
            Some(Lifetime(0)) => {
                self.end_allocation(port, Ending::Deleted, now);
                0
            }
            requested => {
                let granted = self.granted_lifetime(requested);
                let expires_at = now + secs(granted);
                if let Some(allocation) = self.allocations.get_mut(&port) {
                    let timer = Timer::Allocation {
                        port,
                        id: allocation.id,
                    };
                    self.timers.remove(&(allocation.expires_at, timer));
                    allocation.expires_at = expires_at;
                    self.timers.insert((expires_at, timer));
                }
                granted
            }
        };
        let written = self.write_success(out, auth, |enc| enc.add(&Lifetime(granted)));
        self.success_sent(from, written)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: ClientAddr,
        auth: &Authed<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let message = auth.request.message();
        let Some(port) = self.by_client.get(&from).copied() else {
            return self.error(from, auth, ErrorCode::ALLOCATION_MISMATCH, out);
        };
        let peers = || {
            message
                .attributes()
                .filter(|raw| raw.attr() == AttrType::XOR_PEER_ADDRESS)
        };
        // Validate every peer before installing any: the request succeeds or fails whole.
        let mut new = 0;
        for (i, raw) in peers().enumerate() {
            let Ok(XorPeerAddress(peer)) = decode_peer(message, raw.value()) else {
                return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
            };
            if let Err(code) = self.vet_peer(peer, PeerScope::Permission) {
                return self.error(from, auth, code, out);
            }
            let repeated = peers().take(i).any(|earlier| {
                decode_peer(message, earlier.value()).is_ok_and(|p| p.0.ip() == peer.ip())
            });
            let known = self
                .allocations
                .get(&port)
                .is_some_and(|a| a.permission_expiry(peer.ip()).is_some());
            if !repeated && !known {
                new += 1;
            }
        }
        if peers().next().is_none() {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        }
        let installed = self
            .allocations
            .get(&port)
            .map_or(0, Allocation::permission_count);
        if installed + new > self.config.max_permissions_per_allocation {
            return self.error(from, auth, ErrorCode::INSUFFICIENT_CAPACITY, out);
        }
        for raw in peers() {
            if let Ok(XorPeerAddress(peer)) = decode_peer(message, raw.value()) {
                self.install_permission(port, peer.ip(), now);
            }
        }
        let written = self.write_success(out, auth, |_| Ok(()));
        self.success_sent(from, written)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: ClientAddr,
        auth: &Authed<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let message = auth.request.message();
        let Some(port) = self.by_client.get(&from).copied() else {
            return self.error(from, auth, ErrorCode::ALLOCATION_MISMATCH, out);
        };
        let (Ok(Some(number)), Ok(Some(XorPeerAddress(peer)))) = (
            message.get::<ChannelNumber>(),
            message.get::<XorPeerAddress>(),
        ) else {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        };
        if let Err(code) = self.vet_peer(peer, PeerScope::Channel) {
            return self.error(from, auth, code, out);
        }
        let peer = PeerAddr::new(peer);
        let Some(allocation) = self.allocations.get(&port) else {
            return self.error(from, auth, ErrorCode::ALLOCATION_MISMATCH, out);
        };
        // RFC 8656 §12: a number stays with its peer and a peer with its number, through the
        // cooldown after expiry; refreshing the same pair is fine.
        let existing = allocation.channel(number);
        if existing.is_some_and(|c| c.peer != peer)
            || allocation.channel_of(peer).is_some_and(|n| n != number)
        {
            return self.error(from, auth, ErrorCode::BAD_REQUEST, out);
        }
        let new_channel = existing.is_none();
        let new_permission = allocation.permission_expiry(peer.get().ip()).is_none();
        if (new_channel && allocation.channel_count() >= self.config.max_channels_per_allocation)
            || (new_permission
                && allocation.permission_count() >= self.config.max_permissions_per_allocation)
        {
            return self.error(from, auth, ErrorCode::INSUFFICIENT_CAPACITY, out);
        }
        let id = allocation.id;
        let cooldown = secs(self.config.channel_cooldown);
        let expires_at = now + secs(self.config.channel_lifetime);
        if let Some(allocation) = self.allocations.get_mut(&port) {
            let previous = allocation.bind_channel(number, peer, expires_at);
            let timer = Timer::Channel { port, id, number };
            match previous {
                Some(previous) => {
                    self.timers.remove(&(previous.expires_at + cooldown, timer));
                }
                None => self.stats.channels += 1,
            }
            self.timers.insert((expires_at + cooldown, timer));
        }
        self.install_permission(port, peer.get().ip(), now);
        let written = self.write_success(out, auth, |_| Ok(()));
        self.success_sent(from, written)
    }

    /// The peer checks CreatePermission and ChannelBind share: filter (403), then family (443).
    /// A permission is per IP; a channel binds a transport address, whose port counts too.
    fn vet_peer(&self, peer: SocketAddr, scope: PeerScope) -> Result<(), ErrorCode> {
        let verdict = match scope {
            PeerScope::Permission => self.filter.check(peer.ip()).map(|_| ()),
            PeerScope::Channel => self.filter.check_transport(peer, &self.ports),
        };
        if verdict.is_err() {
            return Err(ErrorCode::FORBIDDEN);
        }
        if !peer.is_ipv4() {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        Ok(())
    }

    fn install_permission(&mut self, port: RelayPort, ip: IpAddr, now: Instant) {
        let expires_at = now + secs(self.config.permission_lifetime);
        // Vetted by the caller; were it refused now, the narrowest reach is the safe one.
        let allowed = self.filter.check(ip).unwrap_or(Allowed::LiveRelayPorts);
        let Some(allocation) = self.allocations.get_mut(&port) else {
            return;
        };
        let timer = Timer::Permission {
            port,
            id: allocation.id,
            ip,
        };
        match allocation.set_permission(ip, expires_at, allowed) {
            Some(previous) => {
                self.timers.remove(&(previous, timer));
            }
            None => self.stats.permissions += 1,
        }
        self.timers.insert((expires_at, timer));
    }

    /// RFC 8656 §7.2: `max(default, min(requested, max))`, the default when absent.
    fn granted_lifetime(&self, requested: Option<Lifetime>) -> u32 {
        requested.map_or(self.config.default_lifetime, |Lifetime(requested)| {
            requested
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime)
        })
    }

    // ---------------------------------------------------------------------------------------
    // Timers and the end of allocations.

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Allocation { port, id } => {
                if self
                    .allocations
                    .get(&port)
                    .is_some_and(|a| a.id == id && !a.is_live(now))
                {
                    self.end_allocation(port, Ending::Expired, now);
                }
            }
            Timer::Permission { port, id, ip } => {
                if let Some(allocation) = self.allocations.get_mut(&port).filter(|a| a.id == id)
                    && allocation.expire_permission(ip, now)
                {
                    self.stats.permissions -= 1;
                }
            }
            Timer::Channel { port, id, number } => {
                let cooldown = secs(self.config.channel_cooldown);
                if let Some(allocation) = self.allocations.get_mut(&port).filter(|a| a.id == id)
                    && allocation.release_channel(number, cooldown, now)
                {
                    self.stats.channels -= 1;
                }
            }
            Timer::Quarantine { port } => self.ports.end_quarantine(port),
            Timer::Reservation { token } => {
                self.ports.cancel_reservation(token);
            }
        }
    }

    /// Removes the allocation on `port`, its timers, and frees its port and quota.
    fn end_allocation(&mut self, port: RelayPort, ending: Ending, now: Instant) {
        let Some(allocation) = self.allocations.remove(&port) else {
            return;
        };
        let id = allocation.id;
        self.timers
            .remove(&(allocation.expires_at, Timer::Allocation { port, id }));
        if self.by_client.get(&allocation.client) == Some(&port) {
            self.by_client.remove(&allocation.client);
        }
        if let Some(count) = self.per_user.get_mut(allocation.user()) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(allocation.user());
            }
        }
        self.events.push_back(TurnEvent::AllocationEnded {
            relay: self.relayed_address(port),
        });
        self.stats.allocations -= 1;
        self.stats.permissions -= allocation.permission_count() as u64;
        self.stats.channels -= allocation.channel_count() as u64;
        let reservation = allocation.reservation;
        // Left queued, they would only find nothing when they fire, but a client that
        // allocates, binds and deletes in a loop would grow the queue for their whole
        // lifetime (up to 15 minutes for a channel).
        let expiries = allocation.into_expiries();
        for (ip, at) in expiries.permissions {
            self.timers
                .remove(&(at, Timer::Permission { port, id, ip }));
        }
        let cooldown = secs(self.config.channel_cooldown);
        for (number, expires_at) in expiries.channels {
            self.timers
                .remove(&(expires_at + cooldown, Timer::Channel { port, id, number }));
        }
        match ending {
            Ending::Expired | Ending::Deleted => {
                if ending == Ending::Expired {
                    self.stats.allocations_expired += 1;
                } else {
                    self.stats.allocations_deleted += 1;
                }
                self.ports.release(port);
                self.commands.push_back(Command::FreeAllocation { port });
            }
            Ending::BindFailed => {
                self.stats.allocations_deleted += 1;
                if let Some(token) = reservation {
                    self.ports.cancel_reservation(token);
                }
                self.ports.quarantine(port);
                let until = now + secs(self.config.port_quarantine);
                self.timers.insert((until, Timer::Quarantine { port }));
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Responses.

    /// A response before authentication (401 and 438 with REALM and a fresh NONCE, or 400),
    /// without MESSAGE-INTEGRITY, if the source's rate limit allows.
    fn challenge(
        &mut self,
        now: Instant,
        from: ClientAddr,
        request: &Message<'_>,
        code: ErrorCode,
        out: &mut [u8],
    ) -> ClientAction {
        if !self.limiter.try_take(now, from.get().ip()) {
            return self.drop(DropReason::RateLimited);
        }
        let inner = self.nonce_key.mint(from, self.nonce_clock(now));
        let offer = self.config.password_algorithms;
        let mut buf = [0u8; NONCE_COOKIE_PASSWORD_ALGORITHMS.len() + NONCE_LEN];
        let (cookie, rest) = buf.split_at_mut(NONCE_COOKIE_PASSWORD_ALGORITHMS.len());
        cookie.copy_from_slice(NONCE_COOKIE_PASSWORD_ALGORITHMS.as_bytes());
        rest.copy_from_slice(&inner);
        let nonce = if offer { &buf[..] } else { &inner[..] };
        let realm = self.config.realm.as_str();
        let written = self.write_error(out, request, code, None, |enc| {
            if code == ErrorCode::BAD_REQUEST {
                return Ok(());
            }
            // Both were validated: the realm in `TurnConfig::new`, the nonce is 24 hex digits
            // after the cookie if any.
            let nonce = std::str::from_utf8(nonce).unwrap_or_default();
            if let (Ok(realm), Ok(nonce)) = (Realm::new(realm), Nonce::new(nonce)) {
                enc.add(&realm)?;
                enc.add(&nonce)?;
                if offer {
                    enc.add(&SERVER_PASSWORD_ALGORITHMS)?;
                }
            }
            Ok(())
        });
        self.error_sent(from, code, written)
    }

    /// An error response after authentication, with MESSAGE-INTEGRITY.
    fn error(
        &mut self,
        from: ClientAddr,
        auth: &Authed<'_>,
        code: ErrorCode,
        out: &mut [u8],
    ) -> ClientAction {
        let written = self.write_error(out, auth.request.message(), code, Some(&auth.key), |_| {
            Ok(())
        });
        self.error_sent(from, code, written)
    }

    fn write_success(
        &self,
        out: &mut [u8],
        auth: &Authed<'_>,
        attributes: impl FnOnce(&mut Encoder<'_>) -> Result<(), EncodeError>,
    ) -> Result<usize, EncodeError> {
        self.write(
            out,
            auth.request.message(),
            Class::SuccessResponse,
            Some(&auth.key),
            attributes,
        )
    }

    fn write_error(
        &self,
        out: &mut [u8],
        request: &Message<'_>,
        code: ErrorCode,
        key: Option<&Signer>,
        attributes: impl FnOnce(&mut Encoder<'_>) -> Result<(), EncodeError>,
    ) -> Result<usize, EncodeError> {
        self.write(out, request, Class::ErrorResponse, key, |enc| {
            enc.add(&ErrorCodeAttr::with_default_reason(code))?;
            attributes(enc)
        })
    }

    /// Header, `attributes`, SOFTWARE if configured, MESSAGE-INTEGRITY under `key`, and
    /// FINGERPRINT if the request had one.
    fn write(
        &self,
        out: &mut [u8],
        request: &Message<'_>,
        class: Class,
        key: Option<&Signer>,
        attributes: impl FnOnce(&mut Encoder<'_>) -> Result<(), EncodeError>,
    ) -> Result<usize, EncodeError> {
        let message_type = MessageType::new(request.method(), class);
        let mut enc = Encoder::new(out, message_type, request.transaction_id())?;
        attributes(&mut enc)?;
        if let Some(software) = &self.config.software {
            enc.add(software)?;
        }
        let mut trailer = Trailer::new();
        trailer = match key {
            Some(Signer { key, sha256: true }) => {
                trailer.with_integrity_sha256(key.as_integrity_key())
            }
            Some(Signer { key, sha256: false }) => trailer.with_integrity(key.as_integrity_key()),
            None => trailer,
        };
        if request.has_fingerprint() {
            trailer = trailer.with_fingerprint();
        }
        let len = enc.finish(trailer)?;
        Ok(len)
    }

    fn success_sent(
        &mut self,
        dst: ClientAddr,
        written: Result<usize, EncodeError>,
    ) -> ClientAction {
        let Ok(len) = written else {
            return self.drop(DropReason::BufferTooSmall);
        };
        self.stats.success_responses += 1;
        ClientAction::Reply { dst, len }
    }

    fn error_sent(
        &mut self,
        dst: ClientAddr,
        code: ErrorCode,
        written: Result<usize, EncodeError>,
    ) -> ClientAction {
        let Ok(len) = written else {
            return self.drop(DropReason::BufferTooSmall);
        };
        self.stats.error_responses.record(code);
        ClientAction::Reply { dst, len }
    }

    fn drop(&mut self, reason: DropReason) -> ClientAction {
        self.stats.drops.record(reason);
        ClientAction::Drop(reason)
    }

    fn drop_peer(&mut self, reason: DropReason) -> PeerAction {
        self.stats.drops.record(reason);
        PeerAction::Drop(reason)
    }

    /// An allocation's relayed transport address.
    const fn relayed_address(&self, port: RelayPort) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.config.relay_ip), port.get())
    }

    // ---------------------------------------------------------------------------------------
    // Clocks.

    /// Unix seconds at `now`, from the last wall-clock anchor.
    fn unix_now(&self, now: Instant) -> u64 {
        let (anchor, unix) = self.wall;
        unix.saturating_add(now.saturating_duration_since(anchor).as_secs())
    }

    /// Seconds since construction, the nonce timestamp.
    fn nonce_clock(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }
}

/// The password algorithm a request's key was derived with, under a nonce that offered the
/// choice (RFC 8489 §9.2.4): MD5 if it names none; the one it names if it echoes exactly the
/// list this server sent and the choice is on it; `None` (400) otherwise.
fn requested_algorithm(message: &Message<'_>) -> Option<PasswordAlgorithm> {
    match (
        message.get::<PasswordAlgorithms<'_>>(),
        message.get::<PasswordAlgorithmAttr>(),
    ) {
        (Ok(None), Ok(None)) => Some(PasswordAlgorithm::MD5),
        (Ok(Some(list)), Ok(Some(PasswordAlgorithmAttr(choice))))
            if list.as_bytes() == SERVER_PASSWORD_ALGORITHMS.as_bytes()
                && list.contains(choice) =>
        {
            Some(choice)
        }
        _ => None,
    }
}

/// The attribute types this server understands: RFC 8489 and RFC 8656.
fn is_known(attr: AttrType) -> bool {
    attr.is_stun() || attr.is_turn()
}

fn decode_peer(
    message: &Message<'_>,
    value: &[u8],
) -> Result<XorPeerAddress, crate::stun::AttrError> {
    use crate::stun::Attribute as _;
    XorPeerAddress::decode(value, &message.transaction_id())
}

const fn secs(secs: u32) -> Duration {
    Duration::from_secs(secs as u64)
}

/// What a peer address is vetted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerScope {
    /// CreatePermission: the IP only.
    Permission,
    /// ChannelBind: the IP and the port.
    Channel,
}
