//! A TURN client ([RFC 8656] over UDP), sans-IO, on `boson-dataplane-proto`'s STUN codec:
//! Allocate with the 401 challenge and 438 stale-nonce retry, Refresh before expiry,
//! CreatePermission, ChannelBind (refreshed before the channel and its permission lapse),
//! ChannelData and Send/Data indications. Requests are retransmitted on a doubling timer.
//!
//! ```text
//!  new ──▶ Allocate (no credentials) ──401 REALM NONCE──▶ Allocate (MESSAGE-INTEGRITY)
//!                  ──success──▶ Allocated{relayed, mapped} ──▶ Refresh at half the lifetime
//!  add_peer(p) ──▶ ChannelBind(p) ──success──▶ data to p as ChannelData; before: Send indications
//!  any request ──438 NONCE──▶ the same request again with the new nonce
//! ```
//!
//! # Driving it
//!
//! * **Inputs**: [`TurnClient::handle_input`] with every datagram from the server,
//!   [`TurnClient::handle_timeout`] at [`TurnClient::poll_timeout`],
//!   [`TurnClient::add_peer`], [`TurnClient::encode_to_peer`].
//! * **Outputs**: [`TurnClient::poll_transmit`] until `None` (datagrams for the server),
//!   [`TurnClient::poll_event`] until `None`.
//!
//! [RFC 8656]: https://www.rfc-editor.org/rfc/rfc8656

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use boson_dataplane_proto::ChannelNumber;
use boson_dataplane_proto::stun::{
    AttrType, Class, Encoder, ErrorCode, ErrorCodeAttr, LongTermKey, Message, MessageType, Method,
    Nonce, PasswordAlgorithm, PasswordAlgorithmAttr, PasswordAlgorithms, Realm, Trailer,
    TransactionId, Username, XorMappedAddress, password,
};
use boson_dataplane_proto::turn::attr::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use boson_dataplane_proto::turn::channel_data::{self, ChannelData};
use rand_core::RngCore;

/// UDP, for REQUESTED-TRANSPORT ([RFC 8656 §18.7]).
///
/// [RFC 8656 §18.7]: https://www.rfc-editor.org/rfc/rfc8656#section-18.7
const UDP: u8 = 17;

/// First retransmission after this; doubles each time ([RFC 8489 §6.2.1]: RTO 500 ms).
///
/// [RFC 8489 §6.2.1]: https://www.rfc-editor.org/rfc/rfc8489#section-6.2.1
const RTO: Duration = Duration::from_millis(500);

/// Sends of one request before it fails (RFC 8489's Rc is 7).
const MAX_SENDS: u32 = 7;

/// A channel binding lasts 10 minutes and its permission 5 ([RFC 8656 §12], §9): rebind
/// every 4 so both stay fresh.
///
/// [RFC 8656 §12]: https://www.rfc-editor.org/rfc/rfc8656#section-12
const REBIND: Duration = Duration::from_secs(240);

/// The allocation lifetime asked for, seconds (the RFC's default).
const LIFETIME: u32 = 600;

/// An allocated client that heard nothing from the server for this long sends a Binding
/// request, which any STUN server answers: silence is how a dead TURN server shows.
pub const LIVENESS_IDLE: Duration = Duration::from_secs(2);

/// Nothing from the server this long after that probe fails the allocation
/// ([`TurnError::ServerSilent`]), so the agent allocates elsewhere within
/// `LIVENESS_IDLE + LIVENESS_TIMEOUT` of the server's death.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a [`TurnClient`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: peers reach this client at `relayed`; the server saw it at
    /// `mapped`.
    Allocated {
        /// XOR-RELAYED-ADDRESS.
        relayed: SocketAddr,
        /// XOR-MAPPED-ADDRESS (the client's server-reflexive address).
        mapped: SocketAddr,
    },
    /// `peer` has a channel: its data travels as ChannelData from now on.
    ChannelBound(SocketAddr),
    /// The allocation failed or was lost; the client must be made anew.
    Failed(TurnError),
}

/// Why the allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The server answered a request with this error code.
    #[error("{method} refused: {code} {reason}")]
    Refused {
        /// The request's method.
        method: &'static str,
        /// The STUN error code.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A request got no answer after every retransmission.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A success response without the attributes it must carry, or with a bad
    /// MESSAGE-INTEGRITY.
    #[error("malformed {0} response")]
    Malformed(&'static str),
    /// The server answered nothing, not even a Binding request, for
    /// [`LIVENESS_IDLE`] + [`LIVENESS_TIMEOUT`].
    #[error("the TURN server went silent")]
    ServerSilent,
}

/// Why [`TurnClient::encode_to_peer`] sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No allocation yet (or it failed).
    #[error("no TURN allocation")]
    NotAllocated,
    /// The peer was never added: the server would drop the data.
    #[error("no permission for this peer")]
    NoPermission,
    /// The payload does not fit one datagram.
    #[error("payload too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh,
    ChannelBind {
        peer: SocketAddr,
        number: u16,
    },
    /// A Binding request: the liveness probe (unauthenticated).
    Probe,
}

impl Request {
    const fn method(self) -> Method {
        match self {
            Self::Allocate => Method::ALLOCATE,
            Self::Refresh => Method::REFRESH,
            Self::ChannelBind { .. } => Method::CHANNEL_BIND,
            Self::Probe => Method::BINDING,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Allocate => "Allocate",
            Self::Refresh => "Refresh",
            Self::ChannelBind { .. } => "ChannelBind",
            Self::Probe => "Binding",
        }
    }

    /// What goes on the wire; `None` for a channel number out of range (never made).
    fn wire(self) -> Option<TurnRequest> {
        Some(match self {
            Self::Allocate => TurnRequest::Allocate {
                lifetime: Some(LIFETIME),
            },
            Self::Refresh => TurnRequest::Refresh { lifetime: LIFETIME },
            Self::ChannelBind { peer, number } => TurnRequest::ChannelBind {
                number: ChannelNumber::new(number)?,
                peer,
            },
            Self::Probe => TurnRequest::Binding,
        })
    }
}

/// One TURN request as it goes on the wire: what [`TurnClient`] sends, and what a
/// request-level client ([`crate::turn_blocking`]) sends one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnRequest {
    /// Allocate a UDP relay; LIFETIME when given, else the server's default.
    Allocate {
        /// Seconds asked for.
        lifetime: Option<u32>,
    },
    /// Refresh the allocation for `lifetime` seconds; 0 deletes it.
    Refresh {
        /// Seconds asked for.
        lifetime: u32,
    },
    /// Install a permission for the peer's address.
    CreatePermission(SocketAddr),
    /// Bind `number` to `peer` (installing the permission too).
    ChannelBind {
        /// The channel.
        number: ChannelNumber,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A Binding request, never signed: the liveness probe.
    Binding,
}

impl TurnRequest {
    /// The STUN method.
    pub const fn method(self) -> Method {
        match self {
            Self::Allocate { .. } => Method::ALLOCATE,
            Self::Refresh { .. } => Method::REFRESH,
            Self::CreatePermission(_) => Method::CREATE_PERMISSION,
            Self::ChannelBind { .. } => Method::CHANNEL_BIND,
            Self::Binding => Method::BINDING,
        }
    }

    /// Whether `credentials` sign it (every request but Binding, once challenged).
    pub const fn is_signed(self, credentials: &Credentials) -> bool {
        credentials.auth.is_some() && !matches!(self, Self::Binding)
    }

    /// Encodes the request with `txid` into `buf`, signed by `credentials` once a challenge
    /// taught them realm and nonce; the length, or `None` if `buf` is too small.
    pub fn encode(
        self,
        credentials: &Credentials,
        txid: TransactionId,
        buf: &mut [u8],
    ) -> Option<usize> {
        let kind = MessageType::new(self.method(), Class::Request);
        let mut enc = Encoder::new(buf, kind, txid).ok()?;
        match self {
            Self::Allocate { lifetime } => {
                enc.add(&RequestedTransport(UDP)).ok()?;
                if let Some(lifetime) = lifetime {
                    enc.add(&Lifetime(lifetime)).ok()?;
                }
            }
            Self::Refresh { lifetime } => enc.add(&Lifetime(lifetime)).ok()?,
            Self::CreatePermission(peer) => enc.add(&XorPeerAddress(peer)).ok()?,
            Self::Binding => return enc.finish(Trailer::new().with_fingerprint()).ok(),
            Self::ChannelBind { number, peer } => {
                enc.add(&number).ok()?;
                enc.add(&XorPeerAddress(peer)).ok()?;
            }
        }
        credentials.finish(enc)
    }
}

/// What a final answer to a request says, parsed: its error code, and the addresses and
/// lifetime a success carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The STUN error code; `None` for a success.
    pub code: Option<u16>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    lifetime: Option<u32>,
}

impl Answer {
    /// Reads a response.
    pub fn parse(message: &Message<'_>) -> Self {
        Self {
            code: message
                .get::<ErrorCodeAttr<'_>>()
                .ok()
                .flatten()
                .map(|error| error.code().as_u16()),
            relayed: message
                .get::<XorRelayedAddress>()
                .ok()
                .flatten()
                .map(|a| a.0),
            mapped: message
                .get::<XorMappedAddress>()
                .ok()
                .flatten()
                .map(|a| a.0),
            lifetime: message.get::<Lifetime>().ok().flatten().map(|l| l.0),
        }
    }

    /// Whether it is a success.
    pub const fn is_success(&self) -> bool {
        self.code.is_none()
    }

    /// XOR-RELAYED-ADDRESS (an Allocate's success).
    pub const fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// XOR-MAPPED-ADDRESS (an Allocate's success).
    pub const fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// LIFETIME (an Allocate's or a Refresh's success).
    pub const fn lifetime(&self) -> Option<u32> {
        self.lifetime
    }
}

/// Which challenge an error answer was ([`Credentials::handle_challenge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// 401 with a NONCE: sign with the long-term key.
    Unauthenticated,
    /// 438 Stale Nonce: sign again with the new nonce.
    StaleNonce,
}

/// The signing half of a TURN client ([RFC 8489 §9.2]): the long-term credential, and the
/// realm, nonce and password algorithm the server's challenges taught.
///
/// [RFC 8489 §9.2]: https://www.rfc-editor.org/rfc/rfc8489#section-9.2
#[derive(Debug)]
pub struct Credentials {
    username: String,
    password: String,
    auth: Option<Auth>,
}

impl Credentials {
    /// The REST credential `username`/`password` (as `/api/v1/turn/ice` gives it).
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: password.to_owned(),
            auth: None,
        }
    }

    /// Learns realm, nonce and key from `message` when it is a challenge (a 401, or a 438
    /// Stale Nonce, with a NONCE): the request may go again, signed anew. `None` for any
    /// other answer.
    pub fn handle_challenge(&mut self, message: &Message<'_>) -> Option<Challenge> {
        if message.class() != Class::ErrorResponse {
            return None;
        }
        let code = message.get::<ErrorCodeAttr<'_>>().ok().flatten()?.code();
        let challenge = if code == ErrorCode::UNAUTHENTICATED {
            Challenge::Unauthenticated
        } else if code.as_u16() == 438 {
            Challenge::StaleNonce
        } else {
            return None;
        };
        let nonce = message.get::<Nonce<'_>>().ok().flatten()?;
        let realm = message
            .get::<Realm<'_>>()
            .ok()
            .flatten()
            .map(|r| r.as_str().to_owned())
            .or_else(|| self.auth.as_ref().map(|a| a.realm.clone()))
            .unwrap_or_default();
        // SHA-256 when the server offers it under the nonce cookie (RFC 8489 §9.2.3), else
        // MD5, the key every server takes.
        let offered = message
            .get::<PasswordAlgorithms<'_>>()
            .ok()
            .flatten()
            .filter(|list| {
                password::nonce_offers_password_algorithms(nonce.as_str())
                    && list.contains(PasswordAlgorithm::SHA256)
            });
        let sha256 = offered.and_then(|list| {
            let key = LongTermKey::derive_with(
                PasswordAlgorithm::SHA256,
                &self.username,
                &realm,
                &self.password,
            )?;
            Some((key, list.as_bytes().to_vec()))
        });
        let (key, algorithms) = match sha256 {
            Some((key, algorithms)) => (key, Some(algorithms)),
            None => (
                LongTermKey::derive(&self.username, &realm, &self.password),
                None,
            ),
        };
        self.auth = Some(Auth {
            realm,
            nonce: nonce.as_str().to_owned(),
            key,
            algorithms,
        });
        Some(challenge)
    }

    /// Whether `message` carries a MESSAGE-INTEGRITY under the key in use.
    pub fn verify(&self, message: &Message<'_>) -> bool {
        self.auth.as_ref().is_some_and(|auth| {
            message
                .verify_integrity(auth.key.as_integrity_key())
                .is_ok()
        })
    }

    /// The password algorithm of the key in use, once a challenge gave realm and nonce.
    pub fn password_algorithm(&self) -> Option<PasswordAlgorithm> {
        self.auth.as_ref().map(|auth| auth.key.algorithm())
    }

    /// Finishes `enc`: USERNAME, REALM, NONCE and MESSAGE-INTEGRITY(-SHA256) once a
    /// challenge was learnt, FINGERPRINT always.
    fn finish(&self, mut enc: Encoder<'_>) -> Option<usize> {
        let Some(auth) = &self.auth else {
            return enc.finish(Trailer::new().with_fingerprint()).ok();
        };
        enc.add(&Username::new(&self.username).ok()?).ok()?;
        enc.add(&Realm::new(&auth.realm).ok()?).ok()?;
        enc.add(&Nonce::new(&auth.nonce).ok()?).ok()?;
        let trailer = match &auth.algorithms {
            Some(algorithms) => {
                enc.add_raw(AttrType::PASSWORD_ALGORITHMS, algorithms)
                    .ok()?;
                enc.add(&PasswordAlgorithmAttr(auth.key.algorithm())).ok()?;
                Trailer::new().with_integrity_sha256(auth.key.as_integrity_key())
            }
            None => Trailer::new().with_integrity(auth.key.as_integrity_key()),
        };
        enc.finish(trailer.with_fingerprint()).ok()
    }
}

/// Appends a ChannelData frame carrying `payload` on `number` to `out`. No padding: it is
/// optional over UDP ([RFC 8656 §12.5]).
///
/// [RFC 8656 §12.5]: https://www.rfc-editor.org/rfc/rfc8656#section-12.5
pub fn encode_channel_data(
    number: ChannelNumber,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SendError> {
    let len = u16::try_from(payload.len()).map_err(|_| SendError::TooLarge)?;
    out.extend_from_slice(&channel_data::encode_header(number, len));
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a Send indication with `txid` carrying `payload` to `peer` to `out`.
pub fn encode_send_indication(
    txid: TransactionId,
    peer: SocketAddr,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SendError> {
    let start = out.len();
    out.resize(start + payload.len() + 64, 0);
    let written = (|| {
        let mut enc = Encoder::new(
            &mut out[start..],
            MessageType::new(Method::SEND, Class::Indication),
            txid,
        )
        .ok()?;
        enc.add(&XorPeerAddress(peer)).ok()?;
        enc.add(&Data(payload)).ok()?;
        enc.finish(Trailer::new()).ok()
    })();
    match written {
        Some(len) => {
            out.truncate(start + len);
            Ok(())
        }
        None => {
            out.truncate(start);
            Err(SendError::TooLarge)
        }
    }
}

#[derive(Debug)]
struct Pending {
    request: Request,
    bytes: Vec<u8>,
    next_send: Instant,
    sends: u32,
    /// Whether it went with MESSAGE-INTEGRITY (its answer must carry it too).
    authenticated: bool,
    /// Retries after 401/438, so a server that keeps refusing cannot loop us.
    auth_retries: u32,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    bound: bool,
    rebind_at: Instant,
}

/// The long-term credential and the server's realm and nonce.
struct Auth {
    realm: String,
    nonce: String,
    key: LongTermKey,
    /// The server's PASSWORD-ALGORITHMS, echoed, when the key is SHA-256 (RFC 8489 §9.2.4);
    /// such requests are signed with MESSAGE-INTEGRITY-SHA256.
    algorithms: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// A TURN client for one allocation, generic over the RNG that picks transaction ids.
#[derive(Debug)]
pub struct TurnClient<R> {
    credentials: Credentials,
    rng: R,
    pending: BTreeMap<[u8; 12], Pending>,
    /// Datagrams for the server.
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    failed: bool,
    channels: BTreeMap<SocketAddr, Channel>,
    by_number: BTreeMap<u16, SocketAddr>,
    next_number: u16,
    /// When anything last came from the server.
    last_rx: Instant,
    /// When the outstanding liveness probe went out.
    probe_at: Option<Instant>,
    stats: TurnStats,
}

/// Counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnStats {
    /// 401 challenges answered with credentials.
    pub challenges: u64,
    /// 438 Stale Nonce answers retried with the new nonce.
    pub stale_nonces: u64,
    /// Requests sent again after no answer.
    pub retransmits: u64,
}

impl<R: RngCore> TurnClient<R> {
    /// A client that allocates at once with the REST credential `username`/`password`
    /// (as `/api/v1/turn/ice` gives it).
    pub fn new(username: &str, password: &str, now: Instant, rng: R) -> Self {
        let mut client = Self {
            credentials: Credentials::new(username, password),
            rng,
            pending: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            relayed: None,
            refresh_at: None,
            failed: false,
            channels: BTreeMap::new(),
            by_number: BTreeMap::new(),
            next_number: ChannelNumber::MIN.get(),
            last_rx: now,
            probe_at: None,
            stats: TurnStats::default(),
        };
        client.start(now, Request::Allocate, 0);
        client
    }

    /// A datagram from the server. Returns the peer and the payload's position in
    /// `datagram` for data from a peer (ChannelData or a Data indication); answers to our
    /// requests are consumed.
    pub fn handle_input(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Option<(SocketAddr, Range<usize>)> {
        // The shell hands in only datagrams from the server's address: it is alive.
        self.last_rx = now;
        self.probe_at = None;
        if let Ok(frame) = ChannelData::parse(datagram) {
            let peer = *self.by_number.get(&frame.number.get())?;
            return Some((peer, frame.payload));
        }
        let message = Message::parse(datagram).ok()?;
        if message.class() == Class::Indication && message.method() == Method::DATA {
            let peer = message.get::<XorPeerAddress>().ok()??.0;
            let data = message.get::<Data<'_>>().ok()??.0;
            // Data borrows `datagram`: its offset gives the range.
            let start = data.as_ptr() as usize - datagram.as_ptr() as usize;
            return Some((peer, start..start + data.len()));
        }
        self.handle_response(now, &message);
        None
    }

    /// Adds `peer` (another node's relayed address): binds a channel, which also installs
    /// the permission. Data may be sent to it at once (as Send indications until the channel
    /// is bound).
    pub fn add_peer(&mut self, now: Instant, peer: SocketAddr) {
        if self.channels.contains_key(&peer) || self.next_number > ChannelNumber::MAX.get() {
            return;
        }
        let number = self.next_number;
        self.next_number += 1;
        self.channels.insert(
            peer,
            Channel {
                number,
                bound: false,
                rebind_at: now + REBIND,
            },
        );
        self.by_number.insert(number, peer);
        if self.relayed.is_some() {
            self.start(now, Request::ChannelBind { peer, number }, 0);
        }
    }

    /// Appends one datagram for the server carrying `payload` to `peer` to `out`:
    /// ChannelData once the channel is bound, a Send indication before.
    pub fn encode_to_peer(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        if self.relayed.is_none() || self.failed {
            return Err(SendError::NotAllocated);
        }
        let channel = self.channels.get(&peer).ok_or(SendError::NoPermission)?;
        if channel.bound {
            let number = ChannelNumber::new(channel.number).ok_or(SendError::NoPermission)?;
            return encode_channel_data(number, payload, out);
        }
        let txid = self.transaction_id();
        encode_send_indication(txid, peer, payload, out)
    }

    /// The next datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let retransmit = self.pending.values().map(|p| p.next_send).min();
        let rebind = self
            .channels
            .values()
            .filter(|c| c.bound)
            .map(|c| c.rebind_at)
            .min();
        [retransmit, self.refresh_at, rebind, self.liveness_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retransmits, refreshes the allocation and rebinds channels that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        let mut timed_out = None;
        for pending in self.pending.values_mut() {
            if now < pending.next_send {
                continue;
            }
            if pending.sends >= MAX_SENDS {
                timed_out = Some(pending.request.name());
                continue;
            }
            pending.sends += 1;
            self.stats.retransmits += 1;
            pending.next_send = now + RTO * 2u32.pow(pending.sends - 1);
            self.out.push_back(pending.bytes.clone());
        }
        if let Some(name) = timed_out {
            self.fail(TurnError::Timeout(name));
            return;
        }
        if self.liveness_at().is_some_and(|at| now >= at) {
            if self.probe_at.is_some() {
                self.fail(TurnError::ServerSilent);
                return;
            }
            self.probe_at = Some(now);
            self.start(now, Request::Probe, 0);
        }
        if self.refresh_at.is_some_and(|at| now >= at) {
            self.refresh_at = None;
            self.start(now, Request::Refresh, 0);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.bound && now >= c.rebind_at)
            .map(|(peer, c)| (*peer, c.number))
            .collect();
        for (peer, number) in due {
            if let Some(channel) = self.channels.get_mut(&peer) {
                channel.rebind_at = now + REBIND;
            }
            self.start(now, Request::ChannelBind { peer, number }, 0);
        }
    }

    /// When the liveness check is due: once allocated, a probe after [`LIVENESS_IDLE`] of
    /// silence, then the verdict [`LIVENESS_TIMEOUT`] later.
    fn liveness_at(&self) -> Option<Instant> {
        self.relayed?;
        Some(match self.probe_at {
            Some(at) => at + LIVENESS_TIMEOUT,
            None => self.last_rx + LIVENESS_IDLE,
        })
    }

    /// The relayed address, once allocated.
    pub const fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// The counters.
    pub const fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// The password algorithm of the key in use, once a challenge gave realm and nonce.
    pub fn password_algorithm(&self) -> Option<PasswordAlgorithm> {
        self.credentials.password_algorithm()
    }

    /// Whether the allocation failed for good.
    pub const fn is_failed(&self) -> bool {
        self.failed
    }

    fn transaction_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        TransactionId::new(id)
    }

    /// Encodes and queues `request`; `auth_retries` counts 401/438 rounds so far.
    fn start(&mut self, now: Instant, request: Request, auth_retries: u32) {
        let txid = self.transaction_id();
        let mut buf = vec![0u8; 1024];
        let Some(len) = self.encode(&mut buf, request, txid) else {
            self.fail(TurnError::Malformed(request.name()));
            return;
        };
        buf.truncate(len);
        self.out.push_back(buf.clone());
        self.pending.insert(
            *txid.as_bytes(),
            Pending {
                request,
                bytes: buf,
                next_send: now + RTO,
                sends: 1,
                authenticated: request
                    .wire()
                    .is_some_and(|wire| wire.is_signed(&self.credentials)),
                auth_retries,
            },
        );
    }

    fn encode(&self, buf: &mut [u8], request: Request, txid: TransactionId) -> Option<usize> {
        request.wire()?.encode(&self.credentials, txid, buf)
    }

    fn handle_response(&mut self, now: Instant, message: &Message<'_>) {
        if !matches!(
            message.class(),
            Class::SuccessResponse | Class::ErrorResponse
        ) {
            return;
        }
        let Some(pending) = self.pending.remove(message.transaction_id().as_bytes()) else {
            return;
        };
        if message.method() != pending.request.method() {
            self.pending
                .insert(*message.transaction_id().as_bytes(), pending);
            return;
        }
        let request = pending.request;
        if request == Request::Probe {
            // Any answer proves the server alive (handle_input noted it); nothing else to do.
            return;
        }
        if message.class() == Class::ErrorResponse {
            let error = message.get::<ErrorCodeAttr<'_>>().ok().flatten();
            let code = error.map_or(0, |e| e.code().as_u16());
            if pending.auth_retries < 2
                && let Some(challenge) = self.credentials.handle_challenge(message)
            {
                match challenge {
                    Challenge::StaleNonce => self.stats.stale_nonces += 1,
                    Challenge::Unauthenticated => self.stats.challenges += 1,
                }
                self.start(now, request, pending.auth_retries + 1);
                return;
            }
            self.fail(TurnError::Refused {
                method: request.name(),
                code,
                reason: error.map(|e| e.reason().to_owned()).unwrap_or_default(),
            });
            return;
        }
        // A success must carry MESSAGE-INTEGRITY under our key when we sent one.
        if pending.authenticated && !self.credentials.verify(message) {
            self.fail(TurnError::Malformed(request.name()));
            return;
        }
        match request {
            Request::Allocate => {
                let relayed = message.get::<XorRelayedAddress>().ok().flatten();
                let mapped = message.get::<XorMappedAddress>().ok().flatten();
                let lifetime = message
                    .get::<Lifetime>()
                    .ok()
                    .flatten()
                    .map_or(LIFETIME, |l| l.0);
                let (Some(relayed), Some(mapped)) = (relayed, mapped) else {
                    self.fail(TurnError::Malformed("Allocate"));
                    return;
                };
                self.relayed = Some(relayed.0);
                self.refresh_at = Some(now + Duration::from_secs(u64::from(lifetime / 2).max(1)));
                self.events.push_back(TurnEvent::Allocated {
                    relayed: relayed.0,
                    mapped: mapped.0,
                });
                let peers: Vec<(SocketAddr, u16)> =
                    self.channels.iter().map(|(p, c)| (*p, c.number)).collect();
                for (peer, number) in peers {
                    self.start(now, Request::ChannelBind { peer, number }, 0);
                }
            }
            Request::Refresh => {
                let lifetime = message
                    .get::<Lifetime>()
                    .ok()
                    .flatten()
                    .map_or(LIFETIME, |l| l.0);
                self.refresh_at = Some(now + Duration::from_secs(u64::from(lifetime / 2).max(1)));
            }
            Request::Probe => {}
            Request::ChannelBind { peer, .. } => {
                if let Some(channel) = self.channels.get_mut(&peer)
                    && !channel.bound
                {
                    channel.bound = true;
                    self.events.push_back(TurnEvent::ChannelBound(peer));
                }
            }
        }
    }

    fn fail(&mut self, error: TurnError) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.pending.clear();
        self.events.push_back(TurnEvent::Failed(error));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use boson_dataplane_proto::turn::{ClientAddr, PeerAddr, RelayPort, TurnConfig};
    use boson_dataplane_proto::{ClientAction, PeerAction, Server};
    use boson_shared::{TurnCredential, TurnSecret};
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::testing::epoch;

    /// The relay's public address in the simulation (no packet leaves the test).
    const RELAY_IP: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
    const UNIX: u64 = 1_800_000_000;

    /// proto's own TURN server and two clients on a simulated network.
    struct Sim {
        server: Server<StdRng>,
        clients: Vec<(SocketAddr, TurnClient<StdRng>)>,
        /// Payloads delivered to each client from a peer.
        delivered: Vec<Vec<(SocketAddr, Vec<u8>)>>,
    }

    impl Sim {
        fn new(now: Instant, password_of: impl Fn(&str, &str) -> String) -> Self {
            Self::with_sha256(now, password_of, false)
        }

        /// With `offer_sha256`, the server offers SHA-256 passwords (RFC 8489 §9.2).
        fn with_sha256(
            now: Instant,
            password_of: impl Fn(&str, &str) -> String,
            offer_sha256: bool,
        ) -> Self {
            let secret = TurnSecret::new(b"turn-secret".to_vec());
            let config = TurnConfig::new(
                "boson.test",
                vec![secret.clone()],
                RELAY_IP,
                50_000..=50_100,
            )
            .unwrap()
            .with_nonce_lifetime(Duration::from_secs(100))
            .unwrap()
            .with_password_algorithms(offer_sha256);
            let server = Server::new(config, StdRng::seed_from_u64(1), now, UNIX);
            let clients = ["10.0.0.1:5000", "10.0.0.2:6000"]
                .iter()
                .enumerate()
                .map(|(i, addr)| {
                    let cred = TurnCredential::mint(&secret, &format!("node{i}"), UNIX + 86_400);
                    let password = password_of(&cred.username, &cred.password);
                    let client = TurnClient::new(
                        &cred.username,
                        &password,
                        now,
                        StdRng::seed_from_u64(10 + i as u64),
                    );
                    (addr.parse().unwrap(), client)
                })
                .collect();
            Self {
                server,
                clients,
                delivered: vec![Vec::new(), Vec::new()],
            }
        }

        /// Moves every queued datagram until the network is quiet.
        fn pump(&mut self, now: Instant) {
            for _ in 0..100 {
                let mut moved = false;
                for i in 0..self.clients.len() {
                    while let Some(datagram) = self.clients[i].1.poll_transmit() {
                        moved = true;
                        self.deliver_to_server(now, i, &datagram);
                    }
                }
                while self.server.next_command().is_some() {}
                if !moved {
                    return;
                }
            }
            panic!("the network never went quiet");
        }

        fn deliver_to_server(&mut self, now: Instant, from: usize, datagram: &[u8]) {
            let mut out = vec![0u8; 1500];
            let src = ClientAddr::new(self.clients[from].0);
            match self
                .server
                .handle_client_input(now, src, datagram, &mut out)
            {
                ClientAction::Reply { dst, len } => {
                    self.deliver_to_client(now, dst.get(), &out[..len])
                }
                ClientAction::Relay {
                    port,
                    peer,
                    payload,
                } => {
                    // The relay port's datagram reaches the peer's relayed address.
                    let from = SocketAddr::from((RELAY_IP, port.get()));
                    let mut buf = vec![0u8; boson_dataplane_proto::HEADROOM + payload.len() + 3];
                    let len = payload.len();
                    buf[boson_dataplane_proto::HEADROOM..][..len]
                        .copy_from_slice(&datagram[payload]);
                    let at = RelayPort::new(peer.get().port());
                    match self
                        .server
                        .handle_peer_input(now, at, PeerAddr::new(from), &mut buf, len)
                    {
                        PeerAction::Forward { dst, range } => {
                            let frame = buf[range].to_vec();
                            self.deliver_to_client(now, dst.get(), &frame);
                        }
                        other => panic!("peer data dropped: {other:?}"),
                    }
                }
                ClientAction::Absorb => {}
                ClientAction::Drop(reason) => panic!("the server dropped a datagram: {reason:?}"),
            }
        }

        fn deliver_to_client(&mut self, now: Instant, dst: SocketAddr, datagram: &[u8]) {
            let i = self.clients.iter().position(|(a, _)| *a == dst).unwrap();
            if let Some((peer, range)) = self.clients[i].1.handle_input(now, datagram) {
                self.delivered[i].push((peer, datagram[range].to_vec()));
            }
        }

        fn events(&mut self, i: usize) -> Vec<TurnEvent> {
            std::iter::from_fn(|| self.clients[i].1.poll_event()).collect()
        }

        fn send(&mut self, now: Instant, from: usize, to: SocketAddr, payload: &[u8]) {
            let mut out = Vec::new();
            self.clients[from]
                .1
                .encode_to_peer(to, payload, &mut out)
                .unwrap();
            self.deliver_to_server(now, from, &out);
        }

        fn advance(&mut self, now: Instant) {
            for i in 0..self.clients.len() {
                self.clients[i].1.handle_timeout(now);
            }
            self.pump(now);
        }
    }

    #[test]
    fn allocates_binds_relays_and_refreshes_against_protos_server() {
        lifecycle(false);
    }

    #[test]
    fn uses_sha256_passwords_when_the_server_offers_them() {
        lifecycle(true);
    }

    fn lifecycle(sha256: bool) {
        let t0 = epoch();
        let mut sim = Sim::with_sha256(t0, |_, password| password.to_owned(), sha256);
        sim.pump(t0);
        let expected = if sha256 {
            PasswordAlgorithm::SHA256
        } else {
            PasswordAlgorithm::MD5
        };
        for (_, client) in &sim.clients {
            assert_eq!(client.password_algorithm(), Some(expected));
        }
        let mut relayed = Vec::new();
        for i in 0..2 {
            let events = sim.events(i);
            let [TurnEvent::Allocated { relayed: r, mapped }] = events.as_slice() else {
                panic!("{events:?}")
            };
            assert_eq!(
                *mapped, sim.clients[i].0,
                "the server saw the client's address"
            );
            assert_eq!(r.ip(), RELAY_IP);
            relayed.push(*r);
            assert_eq!(
                sim.clients[i].1.stats().challenges,
                1,
                "one 401, then credentials"
            );
        }
        // Before any permission the client refuses to send.
        let mut out = Vec::new();
        assert_eq!(
            sim.clients[0].1.encode_to_peer(relayed[1], b"x", &mut out),
            Err(SendError::NoPermission)
        );
        // B permits A and binds a channel to it.
        sim.clients[1].1.add_peer(t0, relayed[0]);
        sim.pump(t0);
        assert_eq!(sim.events(1), [TurnEvent::ChannelBound(relayed[0])]);
        // A's ChannelBind reaches the server but its answer is lost: A is not bound yet and
        // sends a Send indication, which the server relays.
        sim.clients[0].1.add_peer(t0, relayed[1]);
        let bind = sim.clients[0].1.poll_transmit().unwrap();
        let mut lost = vec![0u8; 1500];
        let _ =
            sim.server
                .handle_client_input(t0, ClientAddr::new(sim.clients[0].0), &bind, &mut lost);
        sim.send(t0, 0, relayed[1], b"send indication");
        assert_eq!(
            sim.delivered[1],
            [(relayed[0], b"send indication".to_vec())]
        );
        sim.delivered[1].clear();
        // The retransmission gets its answer.
        sim.advance(t0 + Duration::from_secs(1));
        assert_eq!(sim.events(0), [TurnEvent::ChannelBound(relayed[1])]);
        assert_eq!(sim.clients[0].1.stats().retransmits, 1);
        // Bound: ChannelData both ways.
        sim.send(t0, 0, relayed[1], b"from A");
        sim.send(t0, 1, relayed[0], b"from B");
        assert_eq!(sim.delivered[1], [(relayed[0], b"from A".to_vec())]);
        assert_eq!(sim.delivered[0], [(relayed[1], b"from B".to_vec())]);

        // Half an hour in virtual time: refreshes (with 438s, as the nonce lives 100 s) and
        // rebinds keep everything alive.
        let mut now = t0;
        for step in 1..=30u32 {
            now = t0 + Duration::from_secs(60) * step;
            sim.advance(now);
            sim.send(now, 0, relayed[1], &step.to_be_bytes());
            sim.send(now, 1, relayed[0], &step.to_be_bytes());
        }
        assert_eq!(sim.delivered[0].len(), 31);
        assert_eq!(sim.delivered[1].len(), 31);
        assert_eq!(
            sim.delivered[1][30],
            (relayed[0], 30u32.to_be_bytes().to_vec())
        );
        assert!(
            sim.clients[0].1.stats().stale_nonces > 0,
            "refreshes met stale nonces"
        );
        assert!(!sim.clients[0].1.is_failed());
        assert_eq!(sim.events(0), []);
        assert!(sim.clients[0].1.poll_timeout().is_some_and(|t| t > now));
    }

    #[test]
    fn a_wrong_password_fails_and_silence_times_out() {
        let t0 = epoch();
        let mut sim = Sim::new(t0, |_, _| "wrong".to_owned());
        sim.pump(t0);
        let events = sim.events(0);
        assert!(
            matches!(
                events.as_slice(),
                [TurnEvent::Failed(TurnError::Refused { code: 401, .. })]
            ),
            "{events:?}"
        );
        assert!(sim.clients[0].1.relayed().is_none());

        // Nobody answers: 7 sends over about 32 s, then the Allocate times out.
        let mut lonely = TurnClient::new("u", "p", t0, StdRng::seed_from_u64(3));
        let mut sends = 0;
        while lonely.poll_transmit().is_some() {
            sends += 1;
        }
        while let Some(at) = lonely.poll_timeout() {
            assert!(at < t0 + Duration::from_secs(120), "gave up in time");
            lonely.handle_timeout(at);
            while lonely.poll_transmit().is_some() {
                sends += 1;
            }
        }
        assert_eq!(sends, 7);
        assert_eq!(
            lonely.poll_event(),
            Some(TurnEvent::Failed(TurnError::Timeout("Allocate")))
        );
    }

    #[test]
    fn a_silent_server_fails_the_allocation_within_the_liveness_bound() {
        let t0 = epoch();
        let mut sim = Sim::new(t0, |_, password| password.to_owned());
        sim.pump(t0);
        assert!(matches!(
            sim.events(0).as_slice(),
            [TurnEvent::Allocated { .. }]
        ));
        // An idle allocation whose server answers: a Binding probe after 2 s of silence,
        // answered, and nothing fails however long it lasts.
        assert_eq!(sim.clients[0].1.poll_timeout(), Some(t0 + LIVENESS_IDLE));
        let mut now = t0;
        for _ in 0..10 {
            now += LIVENESS_IDLE;
            sim.advance(now);
        }
        assert_eq!(sim.events(0), []);
        assert!(!sim.clients[0].1.is_failed());
        // The server dies: nothing reaches the client any more.
        let client = &mut sim.clients[0].1;
        let dead = now;
        let mut probes = 0;
        while let Some(at) = client.poll_timeout() {
            assert!(
                at <= dead + LIVENESS_IDLE + LIVENESS_TIMEOUT,
                "{:?}",
                at - dead
            );
            client.handle_timeout(at);
            while client.poll_transmit().is_some() {
                probes += 1;
            }
            now = at;
        }
        assert_eq!(
            client.poll_event(),
            Some(TurnEvent::Failed(TurnError::ServerSilent))
        );
        assert_eq!(now, dead + LIVENESS_IDLE + LIVENESS_TIMEOUT);
        // The probe and its retransmissions (RTO 500 ms, doubling) within the timeout.
        assert_eq!(probes, 3);
    }
}
