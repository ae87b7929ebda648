//! The node's side of a WebSocket relay session, sans-IO: the upgrade with
//! `Authorization: Bearer`, READY, SEND out, RECV / PEER_GONE / PEER_PRESENT /
//! RECONNECT_HINT in, keepalive pings that also measure the round trip to the relay host.
//!
//! It uses `boson-dataplane-proto`'s codecs only: the client handshake
//! ([`ClientUpgrade`]), the RFC 6455 frame codec and the relay message layouts
//! ([`relay`]). No socket, no clock: the shell hands in bytes and `now`.
//!
//! ```text
//!  Upgrading ──101──▶ AwaitingReady ──READY(node)──▶ Open ──close()──▶ Closing ──▶ Closed
//!      └──non-101 / timeout / Close / violation / unanswered ping ──────────────────▲
//! ```
//!
//! The token goes in the upgrade's `Authorization: Bearer` header, or in an AUTH message
//! right after the 101 ([`Auth`]).
//!
//! # Driving it
//!
//! * **Inputs**: [`RelayClient::handle_input`] with the bytes read so far (it consumes the
//!   101 or one frame per call: keep the unconsumed tail and call again until
//!   [`Input::NeedMore`]), [`RelayClient::handle_timeout`] at
//!   [`RelayClient::poll_timeout`], [`RelayClient::encode_send`] for a packet to a peer,
//!   [`RelayClient::close`].
//! * **Outputs**, after every input: act on [`Input::Recv`] (its range points into the
//!   input), then [`RelayClient::poll_event`] until `None`, then
//!   [`RelayClient::poll_transmit`], then re-arm the timer.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use boson_dataplane_proto::ws::DEFAULT_MAX_MESSAGE;
use boson_dataplane_proto::ws::frame::{
    self, CloseCode, ClosePayload, FrameError, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode,
};
use boson_dataplane_proto::ws::handshake::{
    ClientUpgrade, MAX_TOKEN_LEN, RequestError, ResponseError,
};
use boson_dataplane_proto::ws::relay::{self, Message, MessageType, RelayError};
use boson_shared::NodeId;
use rand_core::RngCore;

/// Timers of a relay session. The agent sets tighter keepalive timers
/// (`failover::KEEPALIVE`, `failover::KEEPALIVE_TIMEOUT`) to meet its failover bound.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// From the connection's start to the 101. Default 10 s: a TLS and HTTP round trip on a
    /// slow path.
    pub handshake_timeout: Duration,
    /// From the 101 to READY (the server checks the token with its control plane).
    /// Default 10 s.
    pub ready_timeout: Duration,
    /// A ping after this long without a ping sent. Default 5 s: it measures the round
    /// trip reported in heartbeats and keeps NAT and proxies from closing an idle
    /// connection.
    pub ping_interval: Duration,
    /// Nothing received this long after a ping fails the session. Default 5 s.
    pub pong_timeout: Duration,
    /// How long a [`RelayClient::close`] waits for the server's Close. Default 2 s.
    pub close_timeout: Duration,
    /// Largest message accepted from the server. Default: the relay's own cap.
    pub max_message: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// How a session presents the node's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth<'a> {
    /// In the upgrade request's `Authorization: Bearer` header: no extra round trip.
    Bearer(&'a str),
    /// In an AUTH message, the first frame after the 101: for a path whose proxies strip
    /// the header.
    Message(&'a str),
    /// Not at all: the server closes the session (1008) at its authentication deadline.
    /// Only tests of that deadline want this.
    Withheld,
}

/// What [`RelayClient::handle_input`] did with the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Input {
    /// Nothing complete at the start of the input: read more, keeping these bytes.
    NeedMore,
    /// This many bytes were consumed; nothing to deliver.
    Consumed(usize),
    /// A packet from `src` at `input[packet]`: hand it to WireGuard.
    Recv {
        /// The sending node.
        src: NodeId,
        /// The packet's position in the input.
        packet: Range<usize>,
        /// Bytes consumed from the start of the input.
        consumed: usize,
    },
}

impl Input {
    /// Bytes consumed from the start of the input.
    pub const fn consumed(&self) -> usize {
        match self {
            Self::NeedMore => 0,
            Self::Consumed(consumed) | Self::Recv { consumed, .. } => *consumed,
        }
    }
}

/// What a session reports, drained with [`RelayClient::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The relay accepted the token as this node: SENDs go through from now on.
    Ready(NodeId),
    /// The relay says this node is not connected there (an answer to a SEND).
    PeerGone(NodeId),
    /// The relay says this node is reachable (again).
    PeerPresent(NodeId),
    /// The relay host is draining: move to another host at leisure.
    ReconnectHint,
    /// A pong answered our ping after this round trip.
    Rtt(Duration),
    /// The session reached `Closed`: flush [`RelayClient::poll_transmit`], close the
    /// connection, reconnect with backoff.
    Closed(CloseReason),
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server's answer to the upgrade is not an acceptable 101.
    Handshake(ResponseError),
    /// No complete answer to the upgrade in time.
    HandshakeTimeout,
    /// Upgraded, but no READY in time.
    ReadyTimeout,
    /// The server refused the token: it closed with 1008 before READY.
    Rejected,
    /// The server broke the protocol.
    PeerMisbehaved(Violation),
    /// The server sent a Close with this code (`None`: without a code); 4000 means a newer
    /// session of this node replaced this one, 1008 after READY that the grant was revoked.
    PeerClosed(Option<CloseCode>),
    /// A ping went unanswered.
    IdleTimeout,
    /// [`RelayClient::close`] was called.
    Local,
}

impl CloseReason {
    /// The code of the Close the server ended the session with, if it sent one: a refused
    /// token's 1008 included.
    pub const fn server_code(self) -> Option<CloseCode> {
        match self {
            Self::Rejected => Some(CloseCode::POLICY_VIOLATION),
            Self::PeerClosed(code) => code,
            Self::Handshake(_)
            | Self::HandshakeTimeout
            | Self::ReadyTimeout
            | Self::PeerMisbehaved(_)
            | Self::IdleTimeout
            | Self::Local => None,
        }
    }

    /// Stable `snake_case` label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Handshake(_) => "handshake_refused",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ReadyTimeout => "ready_timeout",
            Self::Rejected => "rejected",
            Self::PeerMisbehaved(_) => "protocol_error",
            Self::PeerClosed(_) => "peer_closed",
            Self::IdleTimeout => "keepalive_timeout",
            Self::Local => "closing",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handshake(err) => write!(f, "upgrade refused: {err}"),
            Self::PeerMisbehaved(violation) => write!(f, "protocol error: {violation:?}"),
            Self::PeerClosed(Some(code)) => write!(f, "closed by the server with {}", code.get()),
            Self::Rejected => f.write_str("token refused (1008)"),
            Self::PeerClosed(None)
            | Self::HandshakeTimeout
            | Self::ReadyTimeout
            | Self::IdleTimeout
            | Self::Local => f.write_str(self.as_str()),
        }
    }
}

/// How the server broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A frame-level rule: a masked frame, a reserved opcode, a frame above the cap…
    Frame(FrameError),
    /// A continuation or unfinished data frame: the relay never fragments.
    Fragmented,
    /// A text message.
    Text,
    /// A Close with a bad payload.
    BadClose(CloseCode),
    /// A relay message a server does not send to a node here (AUTH, SEND, FORWARD, or
    /// anything but READY before READY).
    UnexpectedMessage(MessageType),
}

impl Violation {
    const fn close_code(self) -> CloseCode {
        match self {
            Self::Frame(err) => err.close_code(),
            Self::Fragmented => CloseCode::PROTOCOL_ERROR,
            Self::Text => CloseCode::UNSUPPORTED_DATA,
            Self::BadClose(code) => code,
            Self::UnexpectedMessage(_) => CloseCode::POLICY_VIOLATION,
        }
    }
}

/// Why [`RelayClient::encode_send`] refuses a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is not open (no READY yet, or closing).
    #[error("relay session not open")]
    NotOpen,
    /// The packet is larger than a relay message can carry.
    #[error("packet of {0} bytes above the relay's cap")]
    TooLarge(usize),
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The upgrade is under way.
    Upgrading,
    /// The 101 is in; READY is awaited.
    AwaitingReady,
    /// READY arrived for this node.
    Open(NodeId),
    /// Our Close is queued; waiting for the server's.
    Closing,
    /// Done.
    Closed(CloseReason),
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Packets and bytes sent in SENDs.
    pub sent_packets: u64,
    /// Bytes of the packets sent.
    pub sent_bytes: u64,
    /// Packets received in RECVs.
    pub recv_packets: u64,
    /// Bytes of the packets received.
    pub recv_bytes: u64,
    /// Relay messages of a type this version does not know, ignored.
    pub unknown_types: u64,
    /// Relay messages too short or too long for their type, ignored.
    pub malformed: u64,
    /// Pings from the server (each answered with a pong unless the session is closing).
    pub pings: u64,
}

/// A SEND frame masked once, from [`RelayClient::dangerous_send_template`]: a load
/// generator copies it and writes into each copy only the bytes that differ per packet,
/// already masked, instead of masking every byte of every packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTemplate {
    frame: Vec<u8>,
    /// Where the packet starts in the frame.
    packet_at: usize,
    mask: [u8; 4],
}

impl SendTemplate {
    /// The whole frame: header, then the masked SEND.
    pub fn bytes(&self) -> &[u8] {
        &self.frame
    }

    /// Bytes of the frame on the wire.
    pub const fn len(&self) -> usize {
        self.frame.len()
    }

    /// Never: a frame has a header.
    pub const fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Writes `bytes` at offset `at` of the packet into `frame`, a copy of
    /// [`bytes`](Self::bytes), masked as the frame is (masking is positional, RFC 6455
    /// §5.3); the rest of the copy is left as it is. Bytes beyond the packet are dropped.
    pub fn write_packet(&self, frame: &mut [u8], at: usize, bytes: &[u8]) {
        let start = self.packet_at + at;
        let end = (start + bytes.len()).min(self.frame.len()).min(frame.len());
        let Some(slot) = frame.get_mut(start..end) else {
            return;
        };
        slot.copy_from_slice(&bytes[..slot.len()]);
        // The payload starts at `packet_at - PREFIX_LEN`: rotate the key to this offset.
        let offset = start - (self.packet_at - relay::PREFIX_LEN);
        let key = std::array::from_fn(|i| self.mask[(offset + i) % 4]);
        frame::apply_mask(slot, key);
    }
}

/// One masked control frame: 2-byte header, 4-byte key, at most 125 bytes of payload.
const CONTROL_FRAME_LEN: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// A node's relay session over one WebSocket connection, generic over the RNG that picks
/// masking keys. See the [module](self) for the driving loop.
#[derive(Debug)]
pub struct RelayClient<R> {
    config: ClientConfig,
    rng: R,
    state: Inner,
    upgrade: ClientUpgrade,
    /// The AUTH message to send after the 101, for [`Auth::Message`].
    auth_message: Option<Vec<u8>>,
    /// Bytes waiting to be written: the request, then control frames.
    out: Vec<u8>,
    close_queued: bool,
    events: VecDeque<Event>,
    /// When the last ping went out, and whether its pong (or anything) came back.
    last_ping: Instant,
    ping_outstanding: bool,
    last_rx: Instant,
    stats: Stats,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Upgrading { deadline: Instant },
    AwaitingReady { deadline: Instant },
    Open { node: NodeId },
    Closing { deadline: Instant },
    Closed(CloseReason),
}

impl<R: RngCore> RelayClient<R> {
    /// A session about to be opened at `now` on a fresh connection: `host` is the `Host`
    /// header, `path` the relay path from the relay URL, `token` the node's session token.
    /// The upgrade request is ready in [`poll_transmit`](Self::poll_transmit).
    pub fn new(
        config: ClientConfig,
        host: &str,
        path: &str,
        token: &str,
        now: Instant,
        rng: R,
    ) -> Result<Self, RequestError> {
        Self::with_auth(config, host, path, Auth::Bearer(token), now, rng)
    }

    /// As [`new`](Self::new), presenting the token as `auth` says.
    pub fn with_auth(
        config: ClientConfig,
        host: &str,
        path: &str,
        auth: Auth<'_>,
        now: Instant,
        mut rng: R,
    ) -> Result<Self, RequestError> {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let (bearer, auth_message) = match auth {
            Auth::Bearer(token) => (Some(token.as_bytes()), None),
            Auth::Message(token) if token.is_empty() || token.len() > MAX_TOKEN_LEN => {
                return Err(RequestError::InvalidToken);
            }
            Auth::Message(token) => {
                let mut message = Vec::with_capacity(1 + token.len());
                message.push(MessageType::Auth as u8);
                message.extend_from_slice(token.as_bytes());
                (None, Some(message))
            }
            Auth::Withheld => (None, None),
        };
        let upgrade = ClientUpgrade::new(host, path, bearer, nonce)?;
        let mut out = Vec::with_capacity(upgrade.request().len() + CONTROL_FRAME_LEN);
        out.extend_from_slice(upgrade.request());
        let mut upgrade = upgrade;
        upgrade.forget_request();
        let deadline = now + config.handshake_timeout;
        Ok(Self {
            config,
            rng,
            state: Inner::Upgrading { deadline },
            upgrade,
            auth_message,
            out,
            close_queued: false,
            events: VecDeque::new(),
            last_ping: now,
            ping_outstanding: false,
            last_rx: now,
            stats: Stats::default(),
        })
    }

    /// Bytes read from the connection, starting where the last call's consumption ended.
    pub fn handle_input(&mut self, now: Instant, input: &mut [u8]) -> Input {
        match self.state {
            Inner::Upgrading { .. } => self.handle_response(now, input),
            Inner::AwaitingReady { .. } | Inner::Open { .. } | Inner::Closing { .. } => {
                self.handle_frame(now, input)
            }
            Inner::Closed(_) => Input::Consumed(input.len()),
        }
    }

    /// Appends a masked SEND frame carrying `packet` to `dest` to `out`.
    pub fn encode_send(
        &mut self,
        dest: &NodeId,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        if !matches!(self.state, Inner::Open { .. }) {
            return Err(SendError::NotOpen);
        }
        if relay::PREFIX_LEN + packet.len() > self.config.max_message {
            return Err(SendError::TooLarge(packet.len()));
        }
        let start = out.len();
        let len = frame::MAX_CLIENT_HEADER_LEN + relay::PREFIX_LEN + packet.len();
        out.resize(start + len, 0);
        let mask = self.mask();
        match relay::encode_send(dest, packet, mask, &mut out[start..]) {
            Ok(written) => out.truncate(start + written),
            Err(_) => {
                out.truncate(start);
                return Err(SendError::TooLarge(packet.len()));
            }
        }
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += packet.len() as u64;
        Ok(())
    }

    /// Appends a masked SEND frame whatever the session's state, bypassing the checks of
    /// [`encode_send`](Self::encode_send) (a packet larger than the relay's cap is still
    /// refused). The server drops SENDs before READY: tests use this to check that it
    /// does.
    pub fn dangerous_encode_send(
        &mut self,
        dest: &NodeId,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        let start = out.len();
        out.resize(
            start + frame::MAX_CLIENT_HEADER_LEN + relay::PREFIX_LEN + packet.len(),
            0,
        );
        let mask = self.mask();
        match relay::encode_send(dest, packet, mask, &mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(SendError::TooLarge(packet.len()))
            }
        }
    }

    /// A SEND frame to `dest` carrying `packet`, masked once, for a load generator to stamp
    /// copies of ([`SendTemplate`]). Dangerous: every copy goes with the same masking key,
    /// where RFC 6455 §5.3 wants a fresh one per frame (so that no payload can steer a
    /// proxy on the path). Only for generators on a path without one, where masking each
    /// packet would cost more than the relay's own work.
    pub fn dangerous_send_template(
        &mut self,
        dest: &NodeId,
        packet: &[u8],
    ) -> Result<SendTemplate, SendError> {
        if relay::PREFIX_LEN + packet.len() > self.config.max_message {
            return Err(SendError::TooLarge(packet.len()));
        }
        let mask = self.mask();
        let mut frame = vec![0u8; frame::MAX_CLIENT_HEADER_LEN + relay::PREFIX_LEN + packet.len()];
        let len = relay::encode_send(dest, packet, mask, &mut frame)
            .map_err(|_| SendError::TooLarge(packet.len()))?;
        frame.truncate(len);
        Ok(SendTemplate {
            packet_at: len - packet.len(),
            frame,
            mask,
        })
    }

    /// The next event, in the order they arose.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to write (the upgrade request, control frames) to `out`; whether
    /// there were any.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.out.is_empty() {
            return false;
        }
        out.append(&mut self.out);
        true
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            Inner::Upgrading { deadline }
            | Inner::AwaitingReady { deadline }
            | Inner::Closing { deadline } => Some(deadline),
            Inner::Open { .. } if self.ping_outstanding => {
                Some(self.last_ping + self.config.pong_timeout)
            }
            Inner::Open { .. } => Some(self.last_ping + self.config.ping_interval),
            Inner::Closed(_) => None,
        }
    }

    /// Fires the deadlines due at `now`: handshake, READY, keepalive, close.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            Inner::Upgrading { deadline } if now >= deadline => {
                self.finish(CloseReason::HandshakeTimeout);
            }
            Inner::AwaitingReady { deadline } if now >= deadline => {
                self.fail_with(CloseCode::GOING_AWAY, CloseReason::ReadyTimeout);
            }
            Inner::Closing { deadline } if now >= deadline => self.finish(CloseReason::Local),
            Inner::Open { .. } => {
                if self.ping_outstanding {
                    // Anything received since the ping proves the server alive: a pong
                    // may wait behind a burst of RECVs.
                    if self.last_rx >= self.last_ping {
                        self.ping_outstanding = false;
                        self.handle_timeout(now);
                    } else if now >= self.last_ping + self.config.pong_timeout {
                        self.fail_with(CloseCode::GOING_AWAY, CloseReason::IdleTimeout);
                    }
                } else if now >= self.last_ping + self.config.ping_interval {
                    self.last_ping = now;
                    self.ping_outstanding = true;
                    let mask = self.mask();
                    self.queue_control(OpCode::Ping, b"boson", mask);
                }
            }
            Inner::Upgrading { .. }
            | Inner::AwaitingReady { .. }
            | Inner::Closing { .. }
            | Inner::Closed(_) => {}
        }
    }

    /// Starts a clean close (1000); the session is `Closed` when the server answers or at
    /// the close deadline.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            Inner::Upgrading { .. } => self.finish(CloseReason::Local),
            Inner::AwaitingReady { .. } | Inner::Open { .. } => {
                self.queue_close(Some(CloseCode::NORMAL), "");
                self.state = Inner::Closing {
                    deadline: now + self.config.close_timeout,
                };
            }
            Inner::Closing { .. } | Inner::Closed(_) => {}
        }
    }

    /// Where the session is.
    pub const fn state(&self) -> State {
        match self.state {
            Inner::Upgrading { .. } => State::Upgrading,
            Inner::AwaitingReady { .. } => State::AwaitingReady,
            Inner::Open { node } => State::Open(node),
            Inner::Closing { .. } => State::Closing,
            Inner::Closed(reason) => State::Closed(reason),
        }
    }

    /// Whether READY arrived and the session is not closing.
    pub const fn is_open(&self) -> bool {
        matches!(self.state, Inner::Open { .. })
    }

    /// Whether the session is done.
    pub const fn is_closed(&self) -> bool {
        matches!(self.state, Inner::Closed(_))
    }

    /// The session's timers and limits.
    pub const fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The counters.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes the shell's input buffer must hold: one whole frame.
    pub const fn min_input_buffer(&self) -> usize {
        frame::MAX_SERVER_HEADER_LEN + self.config.max_message
    }

    fn handle_response(&mut self, now: Instant, input: &[u8]) -> Input {
        match self.upgrade.parse_response(input) {
            Ok(None) => Input::NeedMore,
            Ok(Some(len)) => {
                self.state = Inner::AwaitingReady {
                    deadline: now + self.config.ready_timeout,
                };
                self.last_ping = now;
                if let Some(message) = self.auth_message.take() {
                    let start = self.out.len();
                    self.out
                        .resize(start + frame::MAX_CLIENT_HEADER_LEN + message.len(), 0);
                    let mask = self.mask();
                    match frame::encode_masked(
                        true,
                        OpCode::Binary,
                        mask,
                        &message,
                        &mut self.out[start..],
                    ) {
                        Ok(written) => self.out.truncate(start + written),
                        // Cannot happen: the buffer was sized for the message above.
                        Err(_) => self.out.truncate(start),
                    }
                }
                Input::Consumed(len)
            }
            Err(err) => {
                self.finish(CloseReason::Handshake(err));
                Input::Consumed(input.len())
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, input: &mut [u8]) -> Input {
        let header = match FrameHeader::parse(input) {
            Ok(Some(header)) => header,
            Ok(None) => return Input::NeedMore,
            Err(err) => {
                self.fail(Violation::Frame(err));
                return Input::Consumed(input.len());
            }
        };
        if let Err(err) = header.check_server(self.config.max_message) {
            self.fail(Violation::Frame(err));
            return Input::Consumed(input.len());
        }
        let end = header.frame_len().unwrap_or(usize::MAX);
        if input.len() < end {
            return Input::NeedMore;
        }
        let payload = header.header_len..end;
        self.last_rx = now;
        let closing = matches!(self.state, Inner::Closing { .. });
        match header.opcode {
            OpCode::Ping if !closing => {
                self.stats.pings += 1;
                let mask = self.mask();
                let pong = input[payload].to_vec();
                self.queue_control(OpCode::Pong, &pong, mask);
            }
            OpCode::Ping => self.stats.pings += 1,
            OpCode::Pong => self.handle_pong(now),
            OpCode::Close => self.handle_close(&input[payload]),
            OpCode::Continuation => self.fail(Violation::Fragmented),
            OpCode::Text | OpCode::Binary if !header.fin => self.fail(Violation::Fragmented),
            OpCode::Text | OpCode::Binary if closing => {}
            OpCode::Text => self.fail(Violation::Text),
            OpCode::Binary => {
                if let Some(recv) = self.handle_binary(&input[payload]) {
                    let (src, len) = recv;
                    return Input::Recv {
                        src,
                        packet: end - len..end,
                        consumed: end,
                    };
                }
            }
        }
        if self.is_closed() {
            Input::Consumed(input.len())
        } else {
            Input::Consumed(end)
        }
    }

    /// A binary message; `Some((src, packet length))` for a RECV to deliver.
    fn handle_binary(&mut self, payload: &[u8]) -> Option<(NodeId, usize)> {
        let message = match Message::parse(payload) {
            Ok(message) => message,
            Err(RelayError::UnknownType(_)) => {
                self.stats.unknown_types += 1;
                return None;
            }
            // Empty, BadLength, BadToken, and whatever a newer codec adds.
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        match (self.state, message) {
            (Inner::Open { .. }, Message::Recv { src, packet }) => {
                self.stats.recv_packets += 1;
                self.stats.recv_bytes += packet.len() as u64;
                return Some((src, packet.len()));
            }
            (Inner::Open { .. }, Message::PeerGone(node)) => {
                self.events.push_back(Event::PeerGone(node));
            }
            (Inner::Open { .. }, Message::PeerPresent(node)) => {
                self.events.push_back(Event::PeerPresent(node));
            }
            (Inner::AwaitingReady { .. }, Message::Ready(node)) => {
                self.state = Inner::Open { node };
                self.events.push_back(Event::Ready(node));
            }
            (Inner::AwaitingReady { .. } | Inner::Open { .. }, Message::ReconnectHint) => {
                self.events.push_back(Event::ReconnectHint);
            }
            (_, message) => self.fail(Violation::UnexpectedMessage(message.kind())),
        }
        None
    }

    fn handle_pong(&mut self, now: Instant) {
        if self.ping_outstanding {
            self.ping_outstanding = false;
            self.events
                .push_back(Event::Rtt(now.saturating_duration_since(self.last_ping)));
        }
    }

    fn handle_close(&mut self, payload: &[u8]) {
        let close = match ClosePayload::parse(payload) {
            Ok(close) => close,
            Err(code) => {
                self.fail(Violation::BadClose(code));
                return;
            }
        };
        let reason = match self.state {
            Inner::Closing { .. } => {
                self.finish(CloseReason::Local);
                return;
            }
            Inner::AwaitingReady { .. } if close.code == Some(CloseCode::POLICY_VIOLATION) => {
                CloseReason::Rejected
            }
            Inner::Upgrading { .. }
            | Inner::AwaitingReady { .. }
            | Inner::Open { .. }
            | Inner::Closed(_) => CloseReason::PeerClosed(close.code),
        };
        self.queue_close(close.code, "");
        self.finish(reason);
    }

    fn fail(&mut self, violation: Violation) {
        self.fail_with(
            violation.close_code(),
            CloseReason::PeerMisbehaved(violation),
        );
    }

    fn fail_with(&mut self, code: CloseCode, reason: CloseReason) {
        self.queue_close(Some(code), reason.as_str());
        self.finish(reason);
    }

    fn queue_close(&mut self, code: Option<CloseCode>, reason: &str) {
        if self.close_queued {
            return;
        }
        self.close_queued = true;
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match code {
            Some(code) => {
                let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
                while !reason.is_char_boundary(reason_len) {
                    reason_len -= 1;
                }
                payload[..2].copy_from_slice(&code.get().to_be_bytes());
                payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
                2 + reason_len
            }
            None => 0,
        };
        let mask = self.mask();
        self.queue_control(OpCode::Close, &payload[..len], mask);
    }

    fn queue_control(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut bytes = [0u8; CONTROL_FRAME_LEN];
        if let Ok(len) = frame::encode_masked(true, opcode, mask, payload, &mut bytes) {
            self.out.extend_from_slice(&bytes[..len]);
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = Inner::Closed(reason);
        self.events.push_back(Event::Closed(reason));
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.next_u32().to_ne_bytes()
    }
}

#[cfg(test)]
mod tests {
    use boson_dataplane_proto::ws::handshake::{self, AcceptKey};
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::testing::epoch;

    const ME: NodeId = NodeId::from_bytes([1; 16]);
    const PEER: NodeId = NodeId::from_bytes([2; 16]);

    /// The server's side of the bytes, built with proto's server codecs.
    fn open(now: Instant) -> RelayClient<StdRng> {
        let mut client = RelayClient::new(
            ClientConfig::default(),
            "relay.test:80",
            "/relay",
            "tok.en",
            now,
            StdRng::seed_from_u64(1),
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(client.poll_transmit(&mut out));
        let request = handshake::parse_request(&out, "/relay").unwrap().unwrap();
        assert_eq!(request.token, Some(&b"tok.en"[..]));
        let mut response = [0u8; handshake::MAX_RESPONSE_LEN];
        let len = handshake::write_response(&request.accept, &mut response).unwrap();
        let mut input = response[..len].to_vec();
        assert_eq!(client.handle_input(now, &mut input), Input::Consumed(len));
        assert_eq!(client.state(), State::AwaitingReady);
        let mut ready = notice(MessageType::Ready, Some(&ME));
        assert_eq!(
            client.handle_input(now, &mut ready),
            Input::Consumed(ready.len())
        );
        assert_eq!(client.poll_event(), Some(Event::Ready(ME)));
        assert!(client.is_open());
        client
    }

    fn notice(kind: MessageType, node: Option<&NodeId>) -> Vec<u8> {
        let mut out = [0u8; relay::MAX_NOTICE_FRAME];
        let len = relay::encode_notice(kind, node, &mut out);
        out[..len].to_vec()
    }

    /// Unmasks one client frame: opcode and payload.
    fn client_frame(bytes: &[u8]) -> (OpCode, Vec<u8>, usize) {
        let header = FrameHeader::parse(bytes).unwrap().unwrap();
        header.check_client(DEFAULT_MAX_MESSAGE).unwrap();
        let end = header.frame_len().unwrap();
        let mut payload = bytes[header.header_len..end].to_vec();
        frame::apply_mask(&mut payload, header.mask.unwrap());
        (header.opcode, payload, end)
    }

    #[test]
    fn sends_and_receives_through_the_relay_framing() {
        let now = epoch();
        let mut client = open(now);
        let mut out = Vec::new();
        client.encode_send(&PEER, b"wireguard", &mut out).unwrap();
        let (opcode, payload, end) = client_frame(&out);
        assert_eq!((opcode, end), (OpCode::Binary, out.len()));
        assert_eq!(
            Message::parse(&payload).unwrap(),
            Message::Send {
                dest: PEER,
                packet: b"wireguard"
            }
        );
        // A RECV built by the server's encoder, zero copy.
        let mut buf = vec![0u8; relay::HEADROOM + 5];
        buf[relay::HEADROOM..].copy_from_slice(b"hello");
        let end = buf.len();
        let frame = relay::encode_recv(&mut buf, relay::HEADROOM..end, &PEER).unwrap();
        let mut input = buf[frame].to_vec();
        input.extend_from_slice(&notice(MessageType::PeerGone, Some(&PEER)));
        let got = client.handle_input(now, &mut input);
        let Input::Recv {
            src,
            packet,
            consumed,
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!((src, &input[packet]), (PEER, &b"hello"[..]));
        let mut rest = input[consumed..].to_vec();
        let _ = client.handle_input(now, &mut rest);
        assert_eq!(client.poll_event(), Some(Event::PeerGone(PEER)));
        let mut present = notice(MessageType::PeerPresent, Some(&PEER));
        let _ = client.handle_input(now, &mut present);
        assert_eq!(client.poll_event(), Some(Event::PeerPresent(PEER)));
        let mut hint = notice(MessageType::ReconnectHint, None);
        let _ = client.handle_input(now, &mut hint);
        assert_eq!(client.poll_event(), Some(Event::ReconnectHint));
        // Unknown types are ignored and counted; a partial frame waits.
        let mut unknown = vec![0x82, 0x01, 0x7f];
        let _ = client.handle_input(now, &mut unknown);
        assert_eq!(client.stats().unknown_types, 1);
        let mut partial = notice(MessageType::PeerGone, Some(&PEER));
        assert_eq!(client.handle_input(now, &mut partial[..5]), Input::NeedMore);
        assert!(client.is_open());
        assert_eq!(
            client.encode_send(&PEER, &vec![0; DEFAULT_MAX_MESSAGE], &mut out),
            Err(SendError::TooLarge(DEFAULT_MAX_MESSAGE))
        );
    }

    #[test]
    fn a_token_in_an_auth_message_follows_the_101() {
        let now = epoch();
        let mut client = RelayClient::with_auth(
            ClientConfig::default(),
            "h",
            "/relay",
            Auth::Message("tok.en"),
            now,
            StdRng::seed_from_u64(5),
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(client.poll_transmit(&mut out));
        let request = handshake::parse_request(&out, "/relay").unwrap().unwrap();
        assert_eq!(request.token, None, "no Authorization header");
        let mut response = [0u8; handshake::MAX_RESPONSE_LEN];
        let len = handshake::write_response(&request.accept, &mut response).unwrap();
        let _ = client.handle_input(now, &mut response[..len]);
        out.clear();
        assert!(client.poll_transmit(&mut out), "AUTH queued after the 101");
        let (opcode, payload, end) = client_frame(&out);
        assert_eq!((opcode, end), (OpCode::Binary, out.len()));
        assert_eq!(
            Message::parse(&payload).unwrap(),
            Message::Auth { token: b"tok.en" }
        );
        // Nothing before READY but through the escape hatch.
        assert_eq!(
            client.encode_send(&PEER, b"x", &mut out),
            Err(SendError::NotOpen)
        );
        out.clear();
        client.dangerous_encode_send(&PEER, b"x", &mut out).unwrap();
        let (_, payload, _) = client_frame(&out);
        assert_eq!(
            Message::parse(&payload).unwrap(),
            Message::Send {
                dest: PEER,
                packet: b"x"
            }
        );
        // A withheld token sends neither header nor message; an empty one is refused.
        let mut client = RelayClient::with_auth(
            ClientConfig::default(),
            "h",
            "/relay",
            Auth::Withheld,
            now,
            StdRng::seed_from_u64(6),
        )
        .unwrap();
        out.clear();
        let _ = client.poll_transmit(&mut out);
        let request = handshake::parse_request(&out, "/relay").unwrap().unwrap();
        assert_eq!(request.token, None);
        let len = handshake::write_response(&request.accept, &mut response).unwrap();
        let _ = client.handle_input(now, &mut response[..len]);
        out.clear();
        assert!(!client.poll_transmit(&mut out));
        assert_eq!(
            RelayClient::with_auth(
                ClientConfig::default(),
                "h",
                "/relay",
                Auth::Message(""),
                now,
                StdRng::seed_from_u64(7),
            )
            .unwrap_err(),
            RequestError::InvalidToken
        );
        assert_eq!(
            CloseReason::Rejected.server_code(),
            Some(CloseCode::POLICY_VIOLATION)
        );
        assert_eq!(CloseReason::IdleTimeout.server_code(), None);
    }

    #[test]
    fn a_stamped_template_is_the_send_frame_of_the_stamped_packet() {
        let mut client = open(epoch());
        let template = client.dangerous_send_template(&PEER, &[0; 40]).unwrap();
        for at in [0, 1, 3, 17, 38] {
            let mut frame = template.bytes().to_vec();
            template.write_packet(&mut frame, at, b"stamp");
            let (opcode, payload, end) = client_frame(&frame);
            assert_eq!((opcode, end), (OpCode::Binary, frame.len()));
            let mut want = [0u8; 40];
            let fits = (40 - at).min(5);
            want[at..at + fits].copy_from_slice(&b"stamp"[..fits]);
            assert_eq!(
                Message::parse(&payload).unwrap(),
                Message::Send {
                    dest: PEER,
                    packet: &want
                },
                "stamped at {at}"
            );
        }
        assert_eq!(
            client.dangerous_send_template(&PEER, &vec![0; DEFAULT_MAX_MESSAGE]),
            Err(SendError::TooLarge(DEFAULT_MAX_MESSAGE))
        );
    }

    #[test]
    fn keepalive_measures_the_round_trip_and_fails_a_silent_server() {
        let start = epoch();
        let mut client = open(start);
        let config = ClientConfig::default();
        let ping_at = client.poll_timeout().unwrap();
        assert_eq!(ping_at, start + config.ping_interval);
        client.handle_timeout(ping_at);
        let mut out = Vec::new();
        assert!(client.poll_transmit(&mut out));
        assert_eq!(client_frame(&out).0, OpCode::Ping);
        let mut pong = [0u8; 16];
        let len = frame::encode_frame(OpCode::Pong, b"boson", &mut pong).unwrap();
        let _ = client.handle_input(ping_at + Duration::from_millis(30), &mut pong[..len]);
        assert_eq!(
            client.poll_event(),
            Some(Event::Rtt(Duration::from_millis(30)))
        );
        // The next ping goes unanswered: the session fails at the pong deadline.
        let next = client.poll_timeout().unwrap();
        assert_eq!(next, ping_at + config.ping_interval);
        client.handle_timeout(next);
        let deadline = client.poll_timeout().unwrap();
        assert_eq!(deadline, next + config.pong_timeout);
        client.handle_timeout(deadline - Duration::from_millis(1));
        assert!(client.is_open());
        client.handle_timeout(deadline);
        assert_eq!(
            client.state(),
            State::Closed(CloseReason::IdleTimeout),
            "a dead relay is noticed within ping interval + pong timeout"
        );
    }

    #[test]
    fn refusals_and_timeouts_close_the_session() {
        let now = epoch();
        // No answer to the upgrade.
        let mut client = RelayClient::new(
            ClientConfig::default(),
            "h",
            "/relay",
            "t",
            now,
            StdRng::seed_from_u64(2),
        )
        .unwrap();
        client.handle_timeout(client.poll_timeout().unwrap());
        assert_eq!(
            client.poll_event(),
            Some(Event::Closed(CloseReason::HandshakeTimeout))
        );
        // A 401 to the upgrade.
        let mut client = RelayClient::new(
            ClientConfig::default(),
            "h",
            "/relay",
            "t",
            now,
            StdRng::seed_from_u64(3),
        )
        .unwrap();
        let mut answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec();
        let _ = client.handle_input(now, &mut answer);
        assert_eq!(
            client.state(),
            State::Closed(CloseReason::Handshake(ResponseError::Status(401)))
        );
        // Upgraded, then the token refused (1008 before READY).
        let mut client = RelayClient::new(
            ClientConfig::default(),
            "h",
            "/relay",
            "t",
            now,
            StdRng::seed_from_u64(4),
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = client.poll_transmit(&mut out);
        let request = handshake::parse_request(&out, "/relay").unwrap().unwrap();
        let accept: AcceptKey = request.accept;
        let mut response = [0u8; handshake::MAX_RESPONSE_LEN];
        let len = handshake::write_response(&accept, &mut response).unwrap();
        let _ = client.handle_input(now, &mut response[..len]);
        let mut close = [0u8; 32];
        let len =
            frame::encode_close(CloseCode::POLICY_VIOLATION, "bad token", &mut close).unwrap();
        let _ = client.handle_input(now, &mut close[..len]);
        assert_eq!(client.state(), State::Closed(CloseReason::Rejected));
        out.clear();
        assert!(client.poll_transmit(&mut out), "the Close is echoed");
        assert_eq!(client_frame(&out).0, OpCode::Close);
        // A masked server frame is a protocol error.
        let mut client = open(now);
        let mut masked = vec![0u8; 32];
        let len =
            frame::encode_masked(true, OpCode::Binary, [1, 2, 3, 4], &[0x06], &mut masked).unwrap();
        let _ = client.handle_input(now, &mut masked[..len]);
        assert_eq!(
            client.state(),
            State::Closed(CloseReason::PeerMisbehaved(Violation::Frame(
                FrameError::Masked
            )))
        );
        // A clean close waits for the server's Close, at most the close timeout.
        let mut client = open(now);
        client.close(now);
        assert_eq!(client.state(), State::Closing);
        assert_eq!(
            client.encode_send(&PEER, b"x", &mut out),
            Err(SendError::NotOpen)
        );
        client.handle_timeout(client.poll_timeout().unwrap());
        assert_eq!(client.state(), State::Closed(CloseReason::Local));
    }
}
