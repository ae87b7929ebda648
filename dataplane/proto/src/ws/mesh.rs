//! [`MeshClient`]: the receiving end of a mesh link, the WebSocket client a relay host opens
//! to a peer host's relay so the peer pushes it the packets of its nodes.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use boson_shared::{HostId, NodeId};
use rand_core::RngCore;

use super::WsConfig;
use super::frame::{
    self, CloseCode, ClosePayload, FrameError, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode,
};
use super::handshake::{ClientUpgrade, RequestError};
use super::hub::GoneLimiter;
use super::relay::{self, Message, MessageType, RelayError};
use super::stats::MeshStats;

/// What [`MeshClient::handle_input`] did with the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum MeshInput {
    /// Nothing complete at the start of the input: read more, keeping these bytes.
    NeedMore,
    /// This many bytes were consumed (the 101, a control frame, a notice, or anything after
    /// the link closed); nothing to deliver.
    Consumed(usize),
    /// A FORWARD, now a complete RECV frame at `input[frame]` of the input just handed in:
    /// deliver it to the local hub with [`Hub::handle_remote`](super::Hub::handle_remote)
    /// (`&dest`, `&input[frame]`) before the next input. `consumed` bytes were consumed.
    Deliver {
        /// The destination node, connected to this host.
        dest: NodeId,
        /// The RECV frame's position in the input.
        frame: Range<usize>,
        /// Bytes consumed from the start of the input.
        consumed: usize,
    },
}

impl MeshInput {
    /// Bytes consumed from the start of the input (0 for [`NeedMore`](Self::NeedMore)).
    pub const fn consumed(&self) -> usize {
        match self {
            Self::NeedMore => 0,
            Self::Consumed(consumed) | Self::Deliver { consumed, .. } => *consumed,
        }
    }
}

/// What a mesh client reports, drained with [`MeshClient::poll_event`] after each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshEvent {
    /// The server accepted the mesh token as this host: the link is up, FORWARDs follow.
    Ready(HostId),
    /// The server is draining: open a link to its replacement at leisure.
    ReconnectHint,
    /// The link reached `Closed`: flush [`MeshClient::poll_transmit`], close the socket,
    /// reconnect with a fresh token (with backoff; after [`MeshCloseReason::Rejected`],
    /// check the mesh key).
    Closed(MeshCloseReason),
}

/// Where a mesh link is, as reported by [`MeshClient::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshState {
    /// The upgrade is under way, or the 101 is in and READY is awaited.
    Connecting {
        /// Whether the 101 arrived.
        upgraded: bool,
    },
    /// READY arrived for this host: FORWARDs are delivered.
    Open(HostId),
    /// Our Close is sent or queued; waiting for the server's.
    Closing,
    /// Done: flush [`MeshClient::poll_transmit`] and close the connection.
    Closed(MeshCloseReason),
}

/// Why a mesh link closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeshCloseReason {
    /// The server's answer to the upgrade is not an acceptable 101.
    Handshake(MeshHandshakeError),
    /// No complete answer to the upgrade in time.
    HandshakeTimeout,
    /// Upgraded, but no READY in time (close 1001).
    ReadyTimeout,
    /// The server refused the mesh token (or timed out checking it): it closed with 1008
    /// before READY.
    Rejected,
    /// The server broke the protocol (close with [`MeshViolation::close_code`]).
    PeerMisbehaved(MeshViolation),
    /// The server sent a Close frame with this code (`None`: no code), e.g. 4000 when a
    /// newer link of this host replaced this one, 1001 when it shuts down.
    PeerClosed(Option<CloseCode>),
    /// A keepalive ping went unanswered (close 1001).
    IdleTimeout,
    /// The shell closed the link with this code ([`MeshClient::close`]).
    Local(CloseCode),
}

impl MeshCloseReason {
    /// Stable `snake_case` label for logs and metrics; also the reason text of our Close
    /// frames.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Handshake(_) => "handshake_refused",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ReadyTimeout => "ready_timeout",
            Self::Rejected => "rejected",
            Self::PeerMisbehaved(violation) => violation.as_str(),
            Self::PeerClosed(_) => "peer_closed",
            Self::IdleTimeout => "keepalive_timeout",
            Self::Local(_) => "closing",
        }
    }
}

/// Why the server's answer to the upgrade is refused: the client handshake's checks.
pub use super::handshake::ResponseError as MeshHandshakeError;

/// How the server broke the protocol on a mesh link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeshViolation {
    /// A frame-level rule ([`FrameError`]): reserved bits or opcodes, a masked frame, a
    /// frame above [`WsConfig::max_mesh_message`] (1009)…
    Frame(FrameError),
    /// A continuation frame: the relay never fragments (1002).
    UnexpectedContinuation,
    /// A data frame without FIN (1003).
    Fragmented,
    /// A text message (1003).
    Text,
    /// A Close frame with a bad payload: the code to close with (1002 or 1007).
    BadClose(CloseCode),
    /// A known relay message a server does not send here: anything but READY before it,
    /// and FORWARD or RECONNECT_HINT after it (1008).
    UnexpectedMessage(MessageType),
}

impl MeshViolation {
    /// The close code the client fails the link with.
    pub const fn close_code(self) -> CloseCode {
        match self {
            Self::Frame(err) => err.close_code(),
            Self::UnexpectedContinuation => CloseCode::PROTOCOL_ERROR,
            Self::Fragmented | Self::Text => CloseCode::UNSUPPORTED_DATA,
            Self::BadClose(code) => code,
            Self::UnexpectedMessage(_) => CloseCode::POLICY_VIOLATION,
        }
    }

    /// Stable `snake_case` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Frame(FrameError::TooLarge { .. }) => "message_too_big",
            Self::Frame(_) => "bad_frame",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::Fragmented => "fragmented",
            Self::Text => "text",
            Self::BadClose(_) => "bad_close",
            Self::UnexpectedMessage(_) => "unexpected_message",
        }
    }
}

/// Why [`MeshClient::new`] refuses its arguments, or a call is misused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The `Host` value is empty, longer than 255 bytes, or not visible ASCII.
    #[error("invalid Host header value")]
    InvalidHost,
    /// The path does not start with `/`, is longer than 2048 bytes, or is not visible ASCII.
    #[error("invalid request path")]
    InvalidPath,
    /// The token is not a bearer `token68` of at most 4096 bytes.
    #[error("invalid mesh token")]
    InvalidToken,
    /// [`MeshClient::close`] with a code that is invalid on the wire.
    #[error("close code {0} is invalid on the wire")]
    InvalidCloseCode(u16),
}

/// One masked control frame: 2-byte header, 4-byte key, at most 125 bytes.
const CONTROL_FRAME_LEN: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// The receiving end of a mesh link (see [Mesh](super#mesh-relaying-across-hosts)), generic
/// over the RNG that picks masking keys.
///
/// ```text
///  Connecting ──101──▶ Connecting ──READY(host)──▶ Open ──▶ Closing ──▶ Closed
///  (upgrade sent)      (awaiting READY)             │ (keepalive)  (deadline)  ▲
///         └──non-101 / bad accept / timeout / Close / violation─────────────────┘
/// ```
///
/// The client writes the upgrade request with the mesh token in `Authorization: Bearer`,
/// checks the 101 (status, `Upgrade`, `Connection`, `Sec-WebSocket-Accept`, and no extension
/// or subprotocol it did not ask for: [RFC 6455 §4.1]), waits for READY, then reads FORWARD
/// frames. It sends no data: only masked control frames (its keepalive pings, pongs to the
/// server's pings, Close), with masking keys from the caller's RNG. A frame above
/// [`WsConfig::max_mesh_message`] fails the link with 1009 from its header; unknown relay
/// types and malformed messages are counted and ignored; any other relay message a server
/// does not send on a mesh link fails it with 1008.
///
/// [RFC 6455 §4.1]: https://www.rfc-editor.org/rfc/rfc6455#section-4.1
///
/// # Driving it
///
/// * **Inputs**: [`handle_input`](Self::handle_input) with the bytes read so far (it
///   consumes at most the 101 or one frame per call; keep the unconsumed tail and call again
///   until it returns [`MeshInput::NeedMore`], then read more; the buffer must hold
///   [`WsConfig::min_mesh_input_buffer`] bytes), [`handle_timeout`](Self::handle_timeout) at
///   [`poll_timeout`](Self::poll_timeout), [`close`](Self::close).
/// * **Outputs**, drained in this order after every input: act on a
///   [`MeshInput::Deliver`] (its range points into the input), then
///   [`poll_event`](Self::poll_event) until `None`, then
///   [`poll_transmit`](Self::poll_transmit) until `None`, then re-arm the timer.
///
/// ```text
/// let mut client = MeshClient::new(config, "relay-b.example:443", "/relay", token.as_bytes(),
///                                  now, nonce, rng)?;
/// while let Some(len) = client.poll_transmit(&mut out) { /* write out[..len] */ }
/// loop {
///     match client.handle_input(now, &mut buf[start..end]) {
///         MeshInput::NeedMore => { /* read more */ }
///         MeshInput::Consumed(n) => start += n,
///         MeshInput::Deliver { dest, frame, consumed } => {
///             hub.handle_remote(&dest, &buf[start..][frame]);
///             start += consumed;
///         }
///     }
///     while let Some(event) = client.poll_event() { /* Ready, ReconnectHint, Closed */ }
///     while let Some(len) = client.poll_transmit(&mut out) { /* write out[..len] */ }
///     timer.arm(client.poll_timeout());
/// }
/// ```
#[derive(Debug)]
pub struct MeshClient<R> {
    config: WsConfig,
    rng: R,
    state: State,
    /// The upgrade request (written until `request_sent` covers it) and the checks on its
    /// answer.
    upgrade: ClientUpgrade,
    request_sent: usize,
    staging: [u8; CONTROL_FRAME_LEN],
    /// The unsent part of `staging`.
    staged: Range<usize>,
    close: Option<ControlFrame>,
    pong: Option<ControlFrame>,
    ping: Option<ControlFrame>,
    /// Our Close frame is staged: nothing may follow it.
    close_sent: bool,
    events: VecDeque<MeshEvent>,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
    /// GONE messages waiting for [`poll_transmit`](Self::poll_transmit), at most
    /// [`MAX_PENDING_GONE`].
    gone: VecDeque<[u8; relay::GONE_LEN]>,
    /// One GONE per (src, dest) per interval.
    gone_limit: GoneLimiter,
    stats: MeshStats,
}

/// GONE messages a link holds unsent; more are dropped (counted): the sender will send
/// again, and a PEER_GONE only spares it some packets.
pub const MAX_PENDING_GONE: usize = 64;

#[derive(Debug, Clone, Copy)]
enum State {
    Upgrading {
        deadline: Instant,
    },
    AwaitingReady {
        deadline: Instant,
    },
    Open {
        host: HostId,
    },
    Closing {
        deadline: Instant,
        reason: MeshCloseReason,
    },
    Closed(MeshCloseReason),
}

/// An encoded, masked control frame.
#[derive(Debug, Clone, Copy)]
struct ControlFrame {
    bytes: [u8; CONTROL_FRAME_LEN],
    len: usize,
}

impl ControlFrame {
    /// `opcode` with `payload` (truncated to 125 bytes), masked with `mask`.
    fn new(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Self {
        let mut bytes = [0; CONTROL_FRAME_LEN];
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let len = frame::encode_masked(true, opcode, mask, payload, &mut bytes).unwrap_or(0);
        Self { bytes, len }
    }

    /// A Close with `code` (if any) and `reason` (truncated at a character boundary).
    fn close(code: Option<CloseCode>, reason: &str, mask: [u8; 4]) -> Self {
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
        Self::new(OpCode::Close, &payload[..len], mask)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<R: RngCore> MeshClient<R> {
    /// A link about to be opened at `now` over a fresh connection to the peer relay:
    /// `host` is the `Host` header (the peer's name, with its port if not the default),
    /// `path` the peer's relay path, `token` this host's mesh token, `key_nonce` the 16
    /// random bytes of `Sec-WebSocket-Key`, `rng` the source of masking keys. The upgrade
    /// request is ready in [`poll_transmit`](Self::poll_transmit) and the handshake
    /// deadline starts now.
    pub fn new(
        config: WsConfig,
        host: &str,
        path: &str,
        token: &[u8],
        now: Instant,
        key_nonce: [u8; 16],
        rng: R,
    ) -> Result<Self, MeshError> {
        let upgrade =
            ClientUpgrade::new(host, path, Some(token), key_nonce).map_err(|err| match err {
                RequestError::InvalidHost => MeshError::InvalidHost,
                RequestError::InvalidPath => MeshError::InvalidPath,
                RequestError::InvalidToken => MeshError::InvalidToken,
            })?;
        let deadline = now + config.handshake_timeout;
        Ok(Self {
            rng,
            state: State::Upgrading { deadline },
            upgrade,
            request_sent: 0,
            staging: [0; CONTROL_FRAME_LEN],
            staged: 0..0,
            close: None,
            pong: None,
            ping: None,
            close_sent: false,
            events: VecDeque::with_capacity(4),
            last_rx: now,
            ping_sent: None,
            pings: 0,
            gone: VecDeque::new(),
            gone_limit: GoneLimiter::new(
                now,
                config.peer_gone_interval,
                config.peer_gone_slots.min(4096),
            ),
            config,
            stats: MeshStats::default(),
        })
    }

    /// Bytes read from the connection, starting where the last call's consumption ended.
    /// Consumes the 101 or one whole frame. A FORWARD is rewritten in place into a RECV
    /// frame and returned as [`MeshInput::Deliver`]. After the link closes, everything is
    /// consumed and ignored.
    pub fn handle_input(&mut self, now: Instant, input: &mut [u8]) -> MeshInput {
        match self.state {
            State::Upgrading { .. } => self.handle_response(now, input),
            State::AwaitingReady { .. } | State::Open { .. } | State::Closing { .. } => {
                self.handle_frame(now, input)
            }
            State::Closed(_) => consumed_all(input),
        }
    }

    /// The next event, in the order they arose.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// Fills `buf` with the next bytes to write: the upgrade request, then control frames
    /// (Close first, then pong, then ping), never interleaving two. Returns how many, or
    /// `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut n = 0;
        while n < buf.len() {
            if self.request_sent < self.upgrade.request().len() {
                let take = (self.upgrade.request().len() - self.request_sent).min(buf.len() - n);
                let from = self.request_sent;
                buf[n..n + take].copy_from_slice(&self.upgrade.request()[from..from + take]);
                self.request_sent += take;
                n += take;
                if self.request_sent == self.upgrade.request().len() {
                    // Sent once: the token need not stay in memory.
                    self.upgrade.forget_request();
                    self.request_sent = 0;
                }
                continue;
            }
            if !self.staged.is_empty() {
                let take = self.staged.len().min(buf.len() - n);
                let from = self.staged.start;
                buf[n..n + take].copy_from_slice(&self.staging[from..from + take]);
                self.staged.start += take;
                n += take;
                continue;
            }
            if self.close_sent {
                break;
            }
            if let Some(close) = self.close.take() {
                self.stage(close.as_bytes());
                self.close_sent = true;
            } else if let Some(pong) = self.pong.take() {
                self.stage(pong.as_bytes());
                self.stats.pongs_sent += 1;
            } else if let Some(ping) = self.ping.take() {
                self.stage(ping.as_bytes());
            } else if let Some(gone) = self.gone.pop_front() {
                let mask = self.mask();
                let frame = ControlFrame::new(OpCode::Binary, &gone, mask);
                self.stage(frame.as_bytes());
                self.stats.gone_sent += 1;
            } else {
                break;
            }
        }
        (n > 0).then_some(n)
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to write.
    pub fn has_transmit(&self) -> bool {
        self.request_sent < self.upgrade.request().len()
            || !self.staged.is_empty()
            || (!self.close_sent
                && (self.close.is_some()
                    || self.pong.is_some()
                    || self.ping.is_some()
                    || !self.gone.is_empty()))
    }

    /// The shell found `dest`, the destination of a FORWARD from `src`, connected nowhere on
    /// this host: queue a GONE so that the peer host tells `src` (PEER_GONE), unless one
    /// about the pair went out within the PEER_GONE interval, the link is not open, or
    /// [`MAX_PENDING_GONE`] are already waiting. Returns whether one was queued.
    pub fn peer_gone(&mut self, now: Instant, dest: &NodeId, src: &NodeId) -> bool {
        if !matches!(self.state, State::Open { .. }) || self.close_sent {
            return false;
        }
        if !self.gone_limit.allow(now, src, dest) {
            self.stats.gone_suppressed += 1;
            return false;
        }
        if self.gone.len() >= MAX_PENDING_GONE {
            self.stats.gone_suppressed += 1;
            return false;
        }
        self.gone.push_back(relay::encode_gone(dest, src));
        true
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work: the handshake, READY or
    /// close deadline, the next keepalive ping, or the pong deadline. `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Upgrading { deadline }
            | State::AwaitingReady { deadline }
            | State::Closing { deadline, .. } => Some(deadline),
            State::Open { .. } => Some(match self.ping_sent {
                Some(sent) => sent + self.config.pong_timeout,
                None => self.last_rx + self.config.keepalive_interval,
            }),
            State::Closed(_) => None,
        }
    }

    /// Fires what is due at `now`: closes on a missed deadline or an unanswered ping, queues
    /// a keepalive ping after a quiet interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Upgrading { deadline } if now >= deadline => {
                // No WebSocket yet, so no Close frame: the shell just closes.
                self.close_sent = true;
                self.finish(MeshCloseReason::HandshakeTimeout);
            }
            State::AwaitingReady { deadline } if now >= deadline => {
                self.fail_with(CloseCode::GOING_AWAY, MeshCloseReason::ReadyTimeout);
            }
            State::Open { .. } => match self.ping_sent {
                Some(sent) if now >= sent + self.config.pong_timeout => {
                    self.stats.idle_timeouts += 1;
                    self.fail_with(CloseCode::GOING_AWAY, MeshCloseReason::IdleTimeout);
                }
                None if now >= self.last_rx + self.config.keepalive_interval => {
                    let mask = self.mask();
                    self.ping = Some(ControlFrame::new(
                        OpCode::Ping,
                        &self.pings.to_be_bytes(),
                        mask,
                    ));
                    self.pings += 1;
                    self.ping_sent = Some(now);
                    self.stats.pings_sent += 1;
                }
                Some(_) | None => {}
            },
            State::Closing { deadline, reason } if now >= deadline => self.finish(reason),
            State::Upgrading { .. }
            | State::AwaitingReady { .. }
            | State::Closing { .. }
            | State::Closed(_) => {}
        }
    }

    /// Starts a graceful close with `code` (e.g. 1001 on shutdown): a Close frame goes out
    /// and the link waits for the server's until the close timeout. Before the 101 it just
    /// closes. No effect once closing.
    pub fn close(&mut self, now: Instant, code: CloseCode) -> Result<(), MeshError> {
        if !code.is_valid_on_wire() {
            return Err(MeshError::InvalidCloseCode(code.get()));
        }
        let reason = MeshCloseReason::Local(code);
        match self.state {
            State::Upgrading { .. } => {
                self.close_sent = true;
                self.finish(reason);
            }
            State::AwaitingReady { .. } | State::Open { .. } => {
                let mask = self.mask();
                self.queue_close(ControlFrame::close(Some(code), reason.as_str(), mask));
                self.pong = None;
                self.ping = None;
                self.state = State::Closing {
                    deadline: now + self.config.close_timeout,
                    reason,
                };
            }
            State::Closing { .. } | State::Closed(_) => {}
        }
        Ok(())
    }

    /// Where the link is.
    pub const fn state(&self) -> MeshState {
        match self.state {
            State::Upgrading { .. } => MeshState::Connecting { upgraded: false },
            State::AwaitingReady { .. } => MeshState::Connecting { upgraded: true },
            State::Open { host } => MeshState::Open(host),
            State::Closing { .. } => MeshState::Closing,
            State::Closed(reason) => MeshState::Closed(reason),
        }
    }

    /// Whether the link reached `Closed`.
    pub const fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// The smallest input buffer the shell may use ([`WsConfig::min_mesh_input_buffer`]).
    pub const fn min_input_buffer(&self) -> usize {
        self.config.min_mesh_input_buffer()
    }

    /// The counters.
    pub const fn stats(&self) -> &MeshStats {
        &self.stats
    }

    // -----------------------------------------------------------------------------------
    // Input.

    fn handle_response(&mut self, now: Instant, input: &[u8]) -> MeshInput {
        let parsed = match self.upgrade.parse_response(input) {
            Ok(None) => return MeshInput::NeedMore,
            Ok(Some(len)) => Ok(len),
            Err(err) => Err(err),
        };
        match parsed {
            Ok(len) => {
                self.state = State::AwaitingReady {
                    deadline: now + self.config.auth_timeout,
                };
                self.last_rx = now;
                MeshInput::Consumed(len)
            }
            Err(err) => {
                self.stats.handshake_failures += 1;
                self.close_sent = true;
                self.finish(MeshCloseReason::Handshake(err));
                consumed_all(input)
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, input: &mut [u8]) -> MeshInput {
        let header = match FrameHeader::parse(input) {
            Ok(Some(header)) => header,
            Ok(None) => return MeshInput::NeedMore,
            Err(err) => {
                self.fail(MeshViolation::Frame(err));
                return consumed_all(input);
            }
        };
        if let Err(err) = header.check_server(self.config.max_mesh_message()) {
            self.fail(MeshViolation::Frame(err));
            return consumed_all(input);
        }
        let end = header.frame_len().unwrap_or(usize::MAX);
        if input.len() < end {
            return MeshInput::NeedMore;
        }
        let payload = header.header_len..end;
        self.last_rx = now;
        self.ping_sent = None;
        let closing = matches!(self.state, State::Closing { .. });
        match header.opcode {
            OpCode::Ping if !closing => {
                let mask = self.mask();
                self.pong = Some(ControlFrame::new(OpCode::Pong, &input[payload], mask));
            }
            OpCode::Ping | OpCode::Pong => {}
            OpCode::Close => self.handle_close(&input[payload]),
            OpCode::Continuation => self.fail(MeshViolation::UnexpectedContinuation),
            OpCode::Text | OpCode::Binary if !header.fin => self.fail(MeshViolation::Fragmented),
            // After our Close, data is discarded (§5.5.1).
            OpCode::Text | OpCode::Binary if closing => {}
            OpCode::Text => self.fail(MeshViolation::Text),
            OpCode::Binary => {
                if let Some(deliver) = self.handle_binary(input, payload, end) {
                    return deliver;
                }
            }
        }
        if self.is_closed() {
            consumed_all(input)
        } else {
            MeshInput::Consumed(end)
        }
    }

    /// The binary message at `input[payload]`, the frame ending at `end`.
    fn handle_binary(
        &mut self,
        input: &mut [u8],
        payload: Range<usize>,
        end: usize,
    ) -> Option<MeshInput> {
        let message = match Message::parse(&input[payload.clone()]) {
            Ok(message) => message,
            Err(RelayError::UnknownType(_)) => {
                self.stats.unknown_types += 1;
                return None;
            }
            Err(RelayError::Empty | RelayError::BadLength(_) | RelayError::BadToken) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        match (self.state, message) {
            (State::Open { .. }, Message::Forward { packet, .. }) => {
                let packet_len = packet.len();
                // Cannot fail: the message is a whole FORWARD with a frame header before it.
                let (dest, frame) = relay::forward_to_recv_in_place(input, payload).ok()?;
                self.stats.delivered.record(packet_len);
                return Some(MeshInput::Deliver {
                    dest,
                    frame,
                    consumed: end,
                });
            }
            (State::AwaitingReady { .. }, Message::Ready(id)) => {
                let host = HostId::from_bytes(*relay::node_bytes(&id));
                self.state = State::Open { host };
                self.events.push_back(MeshEvent::Ready(host));
            }
            (State::AwaitingReady { .. } | State::Open { .. }, Message::ReconnectHint) => {
                self.events.push_back(MeshEvent::ReconnectHint);
            }
            (_, message) => self.fail(MeshViolation::UnexpectedMessage(message.kind())),
        }
        None
    }

    fn handle_close(&mut self, payload: &[u8]) {
        let close = match ClosePayload::parse(payload) {
            Ok(close) => close,
            Err(code) => {
                self.fail(MeshViolation::BadClose(code));
                return;
            }
        };
        let reason = match self.state {
            State::Closing { reason, .. } => {
                // The server answered our Close: the handshake is complete.
                self.finish(reason);
                return;
            }
            State::AwaitingReady { .. } if close.code == Some(CloseCode::POLICY_VIOLATION) => {
                MeshCloseReason::Rejected
            }
            State::Upgrading { .. }
            | State::AwaitingReady { .. }
            | State::Open { .. }
            | State::Closed(_) => MeshCloseReason::PeerClosed(close.code),
        };
        self.stats.peer_closes += 1;
        // Echo the code (§5.5.1); an empty Close gets an empty one.
        let mask = self.mask();
        self.queue_close(ControlFrame::close(close.code, "", mask));
        self.finish(reason);
    }

    // -----------------------------------------------------------------------------------
    // Closing.

    /// Fails the link for a server's violation.
    fn fail(&mut self, violation: MeshViolation) {
        self.stats.protocol_errors += 1;
        self.fail_with(
            violation.close_code(),
            MeshCloseReason::PeerMisbehaved(violation),
        );
    }

    /// Queues a Close with `code` and closes at once, without waiting for the server's.
    fn fail_with(&mut self, code: CloseCode, reason: MeshCloseReason) {
        let mask = self.mask();
        self.queue_close(ControlFrame::close(Some(code), reason.as_str(), mask));
        self.finish(reason);
    }

    /// The first Close queued wins.
    fn queue_close(&mut self, frame: ControlFrame) {
        if !self.close_sent && self.close.is_none() {
            self.close = Some(frame);
        }
    }

    fn finish(&mut self, reason: MeshCloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed(reason);
        self.pong = None;
        self.ping = None;
        self.gone.clear();
        self.events.push_back(MeshEvent::Closed(reason));
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.next_u32().to_ne_bytes()
    }

    fn stage(&mut self, bytes: &[u8]) {
        self.staging[..bytes.len()].copy_from_slice(bytes);
        self.staged = 0..bytes.len();
    }
}

/// Everything in `input`, consumed.
const fn consumed_all(input: &[u8]) -> MeshInput {
    MeshInput::Consumed(input.len())
}
