//! [`Session`]: the state machine of one relay connection, from the HTTP upgrade to the close
//! handshake.
//!
//! ```text
//!  AwaitingHandshake ──101──▶ AwaitingAuth ──accept(node)──▶ Authenticated ──▶ Closing ──▶ Closed
//!         │  (deadline)             │  (deadline)                 │  (keepalive)    (deadline)   ▲
//!         │                         └──accept_mesh(host)──▶ Mesh ─┤                              │
//!         └──4xx / timeout──────────┴──reject / timeout / violation┴─────────────────────────────┘
//! ```
//!
//! A `Mesh` session is another relay host's link: it receives FORWARD frames and sends no
//! relay message at all (see [`relay`]).

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use boson_shared::{HostId, NodeId};

use super::WsConfig;
use super::frame::{
    self, CloseCode, ClosePayload, FrameError, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode,
};
use super::handshake::{self, HandshakeError, MAX_RESPONSE_LEN, MAX_TOKEN_LEN};
use super::queue::OutQueue;
use super::relay::{self, Message, MessageType, PREFIX_LEN, RelayError};
use super::stats::{DropReason, Stats};

/// What a session reports, drained with [`Session::poll_event`] after each input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent<'a> {
    /// The client presented `token` (Bearer header, AUTH or text message). Check it and call
    /// [`Session::accept`], [`Session::accept_mesh`] or [`Session::reject`]; until then SENDs
    /// are dropped and the auth deadline runs.
    Authenticate {
        /// The token, opaque to the relay.
        token: &'a [u8],
    },
    /// A SEND to relay: the WireGuard packet is `input[payload]` of the `input` the last
    /// [`Session::handle_input`] call got, already unmasked. The 17 bytes before it are the
    /// SEND prefix and the bytes before those the client's frame header, at least 6: room
    /// for [`relay::send_to_recv_in_place`]. Act on it before the next input.
    Packet {
        /// The destination node.
        dest: NodeId,
        /// The packet's position in the input.
        payload: Range<usize>,
    },
    /// The session reached `Closed`: flush [`Session::poll_transmit`], then close the
    /// connection.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// On a mesh link: the peer host found `dest` connected nowhere there when a FORWARD
    /// from `src`, a node of this host, arrived. Tell `src` (PEER_GONE).
    Gone {
        /// The node that is gone.
        dest: NodeId,
        /// This host's node that sent to it.
        src: NodeId,
    },
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The upgrade request was refused with an HTTP error.
    Handshake(HandshakeError),
    /// No complete upgrade request in time.
    HandshakeTimeout,
    /// No verdict on a token in time (close 1008).
    AuthTimeout,
    /// The owner rejected the token (close 1008).
    Rejected,
    /// A newer session of the same node was accepted (close 4000).
    Replaced,
    /// The client broke the protocol (close with [`Violation::close_code`]).
    PeerMisbehaved(Violation),
    /// The client sent a Close frame with this code (`None`: no code).
    PeerClosed(Option<CloseCode>),
    /// A keepalive ping went unanswered (close 1001).
    IdleTimeout,
    /// The shell closed the session with this code ([`Session::close`]).
    Server(CloseCode),
}

impl CloseReason {
    /// Stable `snake_case` label for logs and metrics; also the reason text of server
    /// Close frames.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Handshake(_) => "handshake_refused",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::AuthTimeout => "auth_timeout",
            Self::Rejected => "unauthorized",
            Self::Replaced => "replaced",
            Self::PeerMisbehaved(violation) => violation.as_str(),
            Self::PeerClosed(_) => "peer_closed",
            Self::IdleTimeout => "keepalive_timeout",
            Self::Server(_) => "server_closing",
        }
    }
}

/// How a client broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A frame-level rule ([`FrameError`]).
    Frame(FrameError),
    /// A continuation frame with no fragmented message in progress (1002).
    UnexpectedContinuation,
    /// A data frame without FIN: the relay refuses fragmented messages (1003).
    Fragmented,
    /// A text message after authentication (1003).
    Text,
    /// A text token that is not UTF-8 (1007).
    InvalidUtf8,
    /// A Close frame with a 1-byte payload or a code invalid on the wire (1002), or a reason
    /// that is not UTF-8 (1007): the code to close with.
    BadClose(CloseCode),
    /// An empty token, or one above [`MAX_TOKEN_LEN`] (1008).
    BadToken,
    /// A second token while the first awaits its verdict (1008).
    DuplicateAuth,
    /// A relay message of a known type from a mesh peer, which may send none (1008).
    MeshMessage,
}

impl Violation {
    /// The close code the session fails the connection with.
    pub const fn close_code(self) -> CloseCode {
        match self {
            Self::Frame(err) => err.close_code(),
            Self::UnexpectedContinuation => CloseCode::PROTOCOL_ERROR,
            Self::Fragmented | Self::Text => CloseCode::UNSUPPORTED_DATA,
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::BadClose(code) => code,
            Self::BadToken | Self::DuplicateAuth | Self::MeshMessage => CloseCode::POLICY_VIOLATION,
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
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadClose(_) => "bad_close",
            Self::BadToken => "bad_token",
            Self::DuplicateAuth => "duplicate_auth",
            Self::MeshMessage => "mesh_message",
        }
    }
}

/// Where a session is, as reported by [`Session::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the HTTP upgrade request.
    AwaitingHandshake,
    /// Upgraded; waiting for a token (`verdict_pending: false`) or for the owner's verdict
    /// on it (`true`).
    AwaitingAuth {
        /// Whether a token was presented.
        verdict_pending: bool,
    },
    /// Authenticated as this node; relaying.
    Authenticated(NodeId),
    /// Authenticated as this peer relay host; it receives FORWARD frames.
    Mesh(HostId),
    /// A server-initiated Close is sent or queued; waiting for the client's.
    Closing,
    /// Done: flush [`Session::poll_transmit`] and close the connection.
    Closed,
}

/// Misuse of the session API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A [`SessionEvent::Packet`] from the previous input was not drained; its range points
    /// into that input, so the session refuses new input until it is.
    #[error("a Packet event is still pending: drain poll_event before more input")]
    EventPending,
    /// `accept`/`reject` without a token awaiting a verdict.
    #[error("no token awaits a verdict")]
    NoVerdictPending,
    /// A frame for a session that is not (or no longer) authenticated.
    #[error("session is not authenticated")]
    NotAuthenticated,
    /// [`Session::close`] with a code that is invalid on the wire.
    #[error("close code {0} is invalid on the wire")]
    InvalidCloseCode(u16),
}

/// Longest staged output: the HTTP response, or one control frame.
const STAGING_LEN: usize = if MAX_RESPONSE_LEN > 2 + MAX_CONTROL_PAYLOAD {
    MAX_RESPONSE_LEN
} else {
    2 + MAX_CONTROL_PAYLOAD
};

/// One relay connection: handshake, authentication, relaying, keepalive and close.
///
/// # Driving it
///
/// * **Inputs**: [`handle_input`](Self::handle_input) with the bytes read so far (it consumes
///   at most the upgrade request or one frame per call; keep the unconsumed tail and call
///   again until it returns 0, then read more), [`handle_timeout`](Self::handle_timeout) at
///   [`poll_timeout`](Self::poll_timeout), [`accept`](Self::accept) /
///   [`accept_mesh`](Self::accept_mesh) / [`reject`](Self::reject) after
///   [`SessionEvent::Authenticate`], [`close`](Self::close),
///   [`enqueue_frame`](Self::enqueue_frame) for frames from other sessions.
/// * **Outputs**, drained in this order after every input: [`poll_event`](Self::poll_event)
///   until `None` (a `Packet` must be acted on before the next input), then
///   [`poll_transmit`](Self::poll_transmit) until `None`, then re-arm the timer.
///
/// ```text
/// loop {
///     let n = session.handle_input(now, &mut buf[start..end])?;
///     while let Some(event) = session.poll_event() { /* route packets, check tokens */ }
///     if n == 0 { /* read more */ } else { start += n }
///     while let Some(len) = session.poll_transmit(&mut out) { /* write out[..len] */ }
///     timer.arm(session.poll_timeout());
/// }
/// ```
///
/// Output is a byte stream: `poll_transmit` fills any buffer size, stopping mid-frame if
/// need be, and control frames (pong, ping, close) go out between queued frames, ahead of
/// them.
#[derive(Debug)]
pub struct Session {
    config: WsConfig,
    state: State,
    events: VecDeque<Pending>,
    /// The token awaiting a verdict.
    token: Vec<u8>,
    staging: [u8; STAGING_LEN],
    /// The unsent part of `staging`.
    staged: Range<usize>,
    close: Option<ControlFrame>,
    pong: Option<ControlFrame>,
    ping: Option<ControlFrame>,
    /// A Close frame (or an HTTP error response) is staged: nothing may follow it.
    close_sent: bool,
    queue: OutQueue,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
    stats: Stats,
}

#[derive(Debug, Clone, Copy)]
enum State {
    AwaitingHandshake {
        deadline: Instant,
    },
    AwaitingAuth {
        deadline: Instant,
        verdict: bool,
    },
    Authenticated {
        node: NodeId,
    },
    Mesh {
        host: HostId,
    },
    Closing {
        deadline: Instant,
        reason: CloseReason,
    },
    Closed,
}

/// A queued event, without the borrow.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Authenticate,
    Packet { dest: NodeId, payload: Range<usize> },
    Closed(CloseReason),
    Gone { dest: NodeId, src: NodeId },
}

/// An encoded control frame (at most 127 bytes).
#[derive(Debug, Clone, Copy)]
struct ControlFrame {
    bytes: [u8; 2 + MAX_CONTROL_PAYLOAD],
    len: usize,
}

impl ControlFrame {
    /// `opcode` with `payload` (truncated to 125 bytes; callers pass at most that).
    fn new(opcode: OpCode, payload: &[u8]) -> Self {
        let mut bytes = [0; 2 + MAX_CONTROL_PAYLOAD];
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let len = frame::encode_frame(opcode, payload, &mut bytes).unwrap_or(0);
        Self { bytes, len }
    }

    fn close(code: CloseCode, reason: &str) -> Self {
        let mut bytes = [0; 2 + MAX_CONTROL_PAYLOAD];
        let len = frame::encode_close(code, reason, &mut bytes).unwrap_or(0);
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Session {
    /// A session for a connection accepted at `now`; the handshake deadline starts now.
    pub fn new(config: WsConfig, now: Instant) -> Self {
        let deadline = now + config.handshake_timeout;
        Self {
            config,
            state: State::AwaitingHandshake { deadline },
            events: VecDeque::with_capacity(4),
            token: Vec::new(),
            staging: [0; STAGING_LEN],
            staged: 0..0,
            close: None,
            pong: None,
            ping: None,
            close_sent: false,
            queue: OutQueue::new(),
            last_rx: now,
            ping_sent: None,
            pings: 0,
            stats: Stats::default(),
        }
    }

    /// Bytes read from the connection, starting where the last call's consumption ended.
    /// Consumes the upgrade request or one whole frame and returns its length, or returns 0
    /// when more bytes are needed (the buffer must be able to hold
    /// [`WsConfig::min_input_buffer`] bytes). Frames are unmasked in place. After the session
    /// closes, everything is consumed and ignored.
    pub fn handle_input(&mut self, now: Instant, input: &mut [u8]) -> Result<usize, SessionError> {
        if self
            .events
            .iter()
            .any(|event| matches!(event, Pending::Packet { .. }))
        {
            return Err(SessionError::EventPending);
        }
        let consumed = match self.state {
            State::AwaitingHandshake { .. } => self.handle_handshake(now, input),
            State::AwaitingAuth { .. }
            | State::Authenticated { .. }
            | State::Mesh { .. }
            | State::Closing { .. } => self.handle_frame(now, input),
            State::Closed => input.len(),
        };
        Ok(consumed)
    }

    /// The next event, in the order they arose.
    pub fn poll_event(&mut self) -> Option<SessionEvent<'_>> {
        let event = match self.next_pending()? {
            Pending::Authenticate => SessionEvent::Authenticate { token: &self.token },
            Pending::Packet { dest, payload } => SessionEvent::Packet { dest, payload },
            Pending::Closed(reason) => SessionEvent::Closed { reason },
            Pending::Gone { dest, src } => SessionEvent::Gone { dest, src },
        };
        Some(event)
    }

    /// Fills `buf` with the next bytes to write to the connection: the HTTP response,
    /// control frames and queued frames, in that priority, never interleaving two frames.
    /// Returns how many, or `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut n = 0;
        while n < buf.len() {
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
            if !self.queue.is_mid_frame() {
                if let Some(close) = self.close.take() {
                    self.stage(close.as_bytes());
                    self.close_sent = true;
                    continue;
                }
                if let Some(pong) = self.pong.take() {
                    self.stage(pong.as_bytes());
                    self.stats.pongs_sent += 1;
                    continue;
                }
                if let Some(ping) = self.ping.take() {
                    self.stage(ping.as_bytes());
                    continue;
                }
            }
            let read = self.queue.read_front(&mut buf[n..]);
            if read == 0 {
                break;
            }
            n += read;
        }
        (n > 0).then_some(n)
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to write.
    pub fn has_transmit(&self) -> bool {
        !self.staged.is_empty()
            || (!self.close_sent
                && (self.close.is_some()
                    || self.pong.is_some()
                    || self.ping.is_some()
                    || !self.queue.is_empty()))
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work: the handshake, auth or
    /// close deadline, the next keepalive ping, or the pong deadline. `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHandshake { deadline }
            | State::AwaitingAuth { deadline, .. }
            | State::Closing { deadline, .. } => Some(deadline),
            State::Authenticated { .. } | State::Mesh { .. } => Some(match self.ping_sent {
                Some(sent) => sent + self.config.pong_timeout,
                None => self.last_rx + self.config.keepalive_interval,
            }),
            State::Closed => None,
        }
    }

    /// Fires what is due at `now`: closes on a missed deadline or an unanswered ping, queues
    /// a keepalive ping after a quiet interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingHandshake { deadline } if now >= deadline => {
                self.stats.handshake_timeouts += 1;
                // No WebSocket yet, so no Close frame: the shell just closes.
                self.close_sent = true;
                self.finish(CloseReason::HandshakeTimeout);
            }
            State::AwaitingAuth { deadline, .. } if now >= deadline => {
                self.stats.auth_timeouts += 1;
                self.fail_with(CloseCode::POLICY_VIOLATION, CloseReason::AuthTimeout);
            }
            State::Authenticated { .. } | State::Mesh { .. } => match self.ping_sent {
                Some(sent) if now >= sent + self.config.pong_timeout => {
                    self.stats.idle_timeouts += 1;
                    self.fail_with(CloseCode::GOING_AWAY, CloseReason::IdleTimeout);
                }
                None if now >= self.last_rx + self.config.keepalive_interval => {
                    self.ping = Some(ControlFrame::new(OpCode::Ping, &self.pings.to_be_bytes()));
                    self.pings += 1;
                    self.ping_sent = Some(now);
                    self.stats.pings_sent += 1;
                }
                Some(_) | None => {}
            },
            State::Closing { deadline, reason } if now >= deadline => self.finish(reason),
            State::AwaitingHandshake { .. }
            | State::AwaitingAuth { .. }
            | State::Closing { .. }
            | State::Closed => {}
        }
    }

    /// The owner accepted the token: the session is `node` from now on. Allocates the
    /// outbound queue and queues READY.
    pub fn accept(&mut self, now: Instant, node: NodeId) -> Result<(), SessionError> {
        let State::AwaitingAuth { verdict: true, .. } = self.state else {
            return Err(SessionError::NoVerdictPending);
        };
        self.clear_token();
        self.state = State::Authenticated { node };
        self.stats.auth_accepted += 1;
        self.queue
            .allocate(self.config.queue_bytes, self.config.queue_frames);
        self.last_rx = now;
        self.ping_sent = None;
        self.enqueue_notice(MessageType::Ready, Some(&node))?;
        Ok(())
    }

    /// The owner accepted the token as the mesh token of relay host `host`: the session is
    /// that host's mesh link from now on. Allocates the (larger) mesh queue and queues READY
    /// with the host's id.
    pub fn accept_mesh(&mut self, now: Instant, host: HostId) -> Result<(), SessionError> {
        let State::AwaitingAuth { verdict: true, .. } = self.state else {
            return Err(SessionError::NoVerdictPending);
        };
        self.clear_token();
        self.state = State::Mesh { host };
        self.stats.mesh_accepted += 1;
        self.queue
            .allocate(self.config.mesh_queue_bytes, self.config.mesh_queue_frames);
        self.last_rx = now;
        self.ping_sent = None;
        self.enqueue_notice(MessageType::Ready, Some(&relay::node_id(*host.as_bytes())))?;
        Ok(())
    }

    /// The owner rejected the token: close with 1008.
    pub fn reject(&mut self, _now: Instant) -> Result<(), SessionError> {
        let State::AwaitingAuth { verdict: true, .. } = self.state else {
            return Err(SessionError::NoVerdictPending);
        };
        self.clear_token();
        self.stats.auth_rejected += 1;
        self.fail_with(CloseCode::POLICY_VIOLATION, CloseReason::Rejected);
        Ok(())
    }

    /// Starts a graceful close with `code` (e.g. 1001 on shutdown): queued data is
    /// discarded, a Close frame goes out, and the session waits for the client's Close until
    /// the close timeout. Before the upgrade it just closes. No effect once closing.
    pub fn close(&mut self, now: Instant, code: CloseCode) -> Result<(), SessionError> {
        if !code.is_valid_on_wire() {
            return Err(SessionError::InvalidCloseCode(code.get()));
        }
        self.begin_close(now, code, CloseReason::Server(code));
        Ok(())
    }

    /// Queues a complete server frame (from [`relay::send_to_recv_in_place`],
    /// [`relay::encode_recv`] or [`relay::encode_notice`]) toward the client, dropping the
    /// oldest queued frames if the queue is full ([`DropReason::QueueFull`], or
    /// [`DropReason::MeshQueueFull`] on a mesh link).
    pub fn enqueue_frame(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        self.enqueue_parts(&[frame])?;
        Ok(())
    }

    /// Queues one frame made of `parts` back to back; returns whether it was queued.
    pub(crate) fn enqueue_parts(&mut self, parts: &[&[u8]]) -> Result<bool, SessionError> {
        let full = match self.state {
            State::Authenticated { .. } => DropReason::QueueFull,
            State::Mesh { .. } => DropReason::MeshQueueFull,
            State::AwaitingHandshake { .. }
            | State::AwaitingAuth { .. }
            | State::Closing { .. }
            | State::Closed => return Err(SessionError::NotAuthenticated),
        };
        let pushed = self.queue.push_parts(parts);
        self.stats
            .drops
            .add(full, pushed.dropped + u64::from(!pushed.queued));
        if pushed.queued {
            self.stats
                .queued
                .record(parts.iter().map(|part| part.len()).sum());
        }
        Ok(pushed.queued)
    }

    /// Queues a PEER_GONE, PEER_PRESENT or READY about `node`, or a RECONNECT_HINT (`None`).
    pub fn enqueue_notice(
        &mut self,
        kind: MessageType,
        node: Option<&NodeId>,
    ) -> Result<(), SessionError> {
        let mut frame = [0u8; relay::MAX_NOTICE_FRAME];
        let len = relay::encode_notice(kind, node, &mut frame);
        self.enqueue_frame(&frame[..len])?;
        Ok(())
    }

    /// Where the session is.
    pub const fn state(&self) -> SessionState {
        match self.state {
            State::AwaitingHandshake { .. } => SessionState::AwaitingHandshake,
            State::AwaitingAuth { verdict, .. } => SessionState::AwaitingAuth {
                verdict_pending: verdict,
            },
            State::Authenticated { node } => SessionState::Authenticated(node),
            State::Mesh { host } => SessionState::Mesh(host),
            State::Closing { .. } => SessionState::Closing,
            State::Closed => SessionState::Closed,
        }
    }

    /// The authenticated node, if any.
    pub const fn node(&self) -> Option<NodeId> {
        match self.state {
            State::Authenticated { node } => Some(node),
            State::AwaitingHandshake { .. }
            | State::AwaitingAuth { .. }
            | State::Mesh { .. }
            | State::Closing { .. }
            | State::Closed => None,
        }
    }

    /// The peer relay host, if the session is a mesh link.
    pub const fn host(&self) -> Option<HostId> {
        match self.state {
            State::Mesh { host } => Some(host),
            State::AwaitingHandshake { .. }
            | State::AwaitingAuth { .. }
            | State::Authenticated { .. }
            | State::Closing { .. }
            | State::Closed => None,
        }
    }

    /// Whether the session reached `Closed`.
    pub const fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Frames in the outbound queue.
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// The counters.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    // -----------------------------------------------------------------------------------
    // Crate-internal hooks for the hub.

    pub(crate) fn next_pending(&mut self) -> Option<Pending> {
        self.events.pop_front()
    }

    /// The token awaiting a verdict, if one does.
    pub(crate) fn pending_token(&self) -> Option<&[u8]> {
        matches!(self.state, State::AwaitingAuth { verdict: true, .. }).then_some(&self.token)
    }

    pub(crate) fn replace(&mut self, now: Instant) {
        self.stats.replaced += 1;
        self.begin_close(now, CloseCode::REPLACED, CloseReason::Replaced);
    }

    /// The shell dropped the connection; true if the session had not closed by then.
    pub(crate) fn handle_disconnect(&mut self) -> bool {
        if self.is_closed() {
            return false;
        }
        self.stats.disconnects += 1;
        self.discard_queue();
        self.state = State::Closed;
        true
    }

    // -----------------------------------------------------------------------------------
    // Input.

    fn handle_handshake(&mut self, now: Instant, input: &[u8]) -> usize {
        match handshake::parse_request(input, &self.config.path) {
            Ok(None) => 0,
            Ok(Some(request)) => {
                if let Ok(len) = handshake::write_response(&request.accept, &mut self.staging) {
                    self.staged = 0..len;
                }
                self.stats.handshakes += 1;
                self.state = State::AwaitingAuth {
                    deadline: now + self.config.auth_timeout,
                    verdict: false,
                };
                if let Some(token) = request.token {
                    self.take_token(token);
                }
                request.len
            }
            Err(err) => {
                if let Ok(len) = handshake::write_error(err.status(), &mut self.staging) {
                    self.staged = 0..len;
                }
                self.stats.handshake_failures += 1;
                self.close_sent = true;
                self.finish(CloseReason::Handshake(err));
                input.len()
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, input: &mut [u8]) -> usize {
        let header = match FrameHeader::parse(input) {
            Ok(Some(header)) => header,
            Ok(None) => return 0,
            Err(err) => {
                self.fail(Violation::Frame(err));
                return input.len();
            }
        };
        if let Err(err) = header.check_client(self.config.max_message) {
            self.fail(Violation::Frame(err));
            return input.len();
        }
        let end = header.frame_len().unwrap_or(usize::MAX);
        if input.len() < end {
            return 0;
        }
        let payload = header.header_len..end;
        if let Some(mask) = header.mask {
            frame::apply_mask(&mut input[payload.clone()], mask);
        }
        self.last_rx = now;
        self.ping_sent = None;
        let closing = matches!(self.state, State::Closing { .. });
        match header.opcode {
            OpCode::Ping if !closing => {
                self.pong = Some(ControlFrame::new(OpCode::Pong, &input[payload]));
            }
            OpCode::Ping | OpCode::Pong => {}
            OpCode::Close => self.handle_close(&input[payload]),
            OpCode::Continuation => self.fail(Violation::UnexpectedContinuation),
            OpCode::Text | OpCode::Binary if !header.fin => self.fail(Violation::Fragmented),
            // After our Close, data is discarded (§5.5.1).
            OpCode::Text | OpCode::Binary if closing => {}
            OpCode::Text => self.handle_text(&input[payload]),
            OpCode::Binary => self.handle_binary(&input[payload.clone()], payload.start),
        }
        // Once closed, whatever follows is ignored: consume it all.
        if self.is_closed() { input.len() } else { end }
    }

    fn handle_text(&mut self, payload: &[u8]) {
        match self.state {
            State::AwaitingAuth { verdict: false, .. } => {
                if std::str::from_utf8(payload).is_err() {
                    self.fail(Violation::InvalidUtf8);
                } else {
                    self.take_token(payload);
                }
            }
            State::AwaitingAuth { verdict: true, .. } => self.fail(Violation::DuplicateAuth),
            State::AwaitingHandshake { .. }
            | State::Authenticated { .. }
            | State::Mesh { .. }
            | State::Closing { .. }
            | State::Closed => self.fail(Violation::Text),
        }
    }

    /// A binary message `payload`, which starts at `offset` in the input.
    fn handle_binary(&mut self, payload: &[u8], offset: usize) {
        if let State::Mesh { .. } = self.state {
            // The mesh client sends no relay message but GONE; unknown types stay ignored,
            // for newer peers.
            match Message::parse(payload) {
                Ok(Message::Gone { dest, src }) => {
                    self.events.push_back(Pending::Gone { dest, src });
                }
                Err(RelayError::Empty | RelayError::BadLength(MessageType::Gone)) => {
                    self.stats.drops.record(DropReason::Malformed);
                }
                Err(RelayError::UnknownType(_)) => self.stats.drops.record(DropReason::UnknownType),
                Ok(_) | Err(_) => self.fail(Violation::MeshMessage),
            }
            return;
        }
        let message = match Message::parse(payload) {
            Ok(message) => message,
            Err(RelayError::UnknownType(_)) => {
                self.stats.drops.record(DropReason::UnknownType);
                return;
            }
            Err(RelayError::BadToken) => {
                self.fail(Violation::BadToken);
                return;
            }
            Err(_) => {
                self.stats.drops.record(DropReason::Malformed);
                return;
            }
        };
        match (self.state, message) {
            (State::Authenticated { .. }, Message::Send { dest, packet }) => {
                self.stats.received.record(packet.len());
                self.events.push_back(Pending::Packet {
                    dest,
                    payload: offset + PREFIX_LEN..offset + payload.len(),
                });
            }
            (State::AwaitingAuth { verdict: false, .. }, Message::Auth { token }) => {
                self.take_token(token);
            }
            (State::AwaitingAuth { verdict: true, .. }, Message::Auth { .. }) => {
                self.fail(Violation::DuplicateAuth);
            }
            (State::AwaitingAuth { .. }, Message::Send { .. }) => {
                self.stats.drops.record(DropReason::Unauthenticated);
            }
            // A second AUTH after authentication, or a server-to-client type.
            (_, _) => self.stats.drops.record(DropReason::Malformed),
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
        if let State::Closing { reason, .. } = self.state {
            // The client answered our Close: the handshake is complete.
            self.finish(reason);
            return;
        }
        self.stats.peer_closes += 1;
        // Echo the code (§5.5.1); an empty Close gets an empty one.
        self.queue_close(match close.code {
            Some(code) => ControlFrame::close(code, ""),
            None => ControlFrame::new(OpCode::Close, &[]),
        });
        self.finish(CloseReason::PeerClosed(close.code));
    }

    fn take_token(&mut self, token: &[u8]) {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            self.fail(Violation::BadToken);
            return;
        }
        if let State::AwaitingAuth { verdict, .. } = &mut self.state {
            *verdict = true;
            self.token.clear();
            self.token.extend_from_slice(token);
            self.events.push_back(Pending::Authenticate);
        }
    }

    // -----------------------------------------------------------------------------------
    // Closing.

    /// Fails the connection for a client's violation.
    fn fail(&mut self, violation: Violation) {
        self.stats.protocol_errors += 1;
        self.fail_with(
            violation.close_code(),
            CloseReason::PeerMisbehaved(violation),
        );
    }

    /// Queues a Close with `code` and closes at once, without waiting for the client's.
    fn fail_with(&mut self, code: CloseCode, reason: CloseReason) {
        self.queue_close(ControlFrame::close(code, reason.as_str()));
        self.finish(reason);
    }

    fn begin_close(&mut self, now: Instant, code: CloseCode, reason: CloseReason) {
        match self.state {
            State::AwaitingHandshake { .. } => {
                self.close_sent = true;
                self.finish(reason);
            }
            State::AwaitingAuth { .. } | State::Authenticated { .. } | State::Mesh { .. } => {
                self.clear_token();
                self.discard_queue();
                self.queue_close(ControlFrame::close(code, reason.as_str()));
                self.state = State::Closing {
                    deadline: now + self.config.close_timeout,
                    reason,
                };
            }
            State::Closing { .. } | State::Closed => {}
        }
    }

    /// The first Close queued wins.
    fn queue_close(&mut self, frame: ControlFrame) {
        if !self.close_sent && self.close.is_none() {
            self.close = Some(frame);
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Closed;
        self.clear_token();
        self.discard_queue();
        self.pong = None;
        self.ping = None;
        self.events
            .retain(|event| !matches!(event, Pending::Authenticate));
        self.events.push_back(Pending::Closed(reason));
    }

    fn discard_queue(&mut self) {
        let dropped = self.queue.clear_unsent();
        self.stats.drops.add(DropReason::Closing, dropped);
    }

    fn clear_token(&mut self) {
        self.token.clear();
        self.events
            .retain(|event| !matches!(event, Pending::Authenticate));
    }

    fn stage(&mut self, bytes: &[u8]) {
        self.staging[..bytes.len()].copy_from_slice(bytes);
        self.staged = 0..bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hex_literal::hex;

    use super::*;
    use crate::ws::relay::node_id;
    use crate::ws::test_epoch;

    const UPGRADE: &[u8] = b"GET /relay HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const A: [u8; 16] = [0xAA; 16];
    const B: [u8; 16] = [0xBB; 16];

    fn drain(session: &mut Session) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(len) = session.poll_transmit(&mut buf) {
            out.extend_from_slice(&buf[..len]);
        }
        out
    }

    fn events(session: &mut Session) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(event) = session.poll_event() {
            out.push(format!("{event:?}"));
        }
        out
    }

    fn feed(session: &mut Session, now: Instant, bytes: &[u8]) -> usize {
        let mut buf = bytes.to_vec();
        session.handle_input(now, &mut buf).unwrap()
    }

    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; payload.len() + 14];
        let len = frame::encode_masked(fin, opcode, MASK, payload, &mut out).unwrap();
        out.truncate(len);
        out
    }

    fn closed_with(session: &mut Session) -> (Option<CloseCode>, CloseReason) {
        let out = drain(session);
        let code = (out.len() >= 4 && out[0] == 0x88)
            .then(|| CloseCode::new(u16::from_be_bytes([out[2], out[3]])));
        let reason = loop {
            match session.poll_event() {
                Some(SessionEvent::Closed { reason }) => break reason,
                Some(_) => {}
                None => panic!("no Closed event"),
            }
        };
        assert!(session.is_closed());
        assert!(
            session.poll_transmit(&mut [0; 16]).is_none(),
            "nothing after Close"
        );
        (code, reason)
    }

    /// A session upgraded and waiting for a token, output drained.
    fn upgraded(now: Instant) -> Session {
        let mut session = Session::new(WsConfig::new(), now);
        assert_eq!(feed(&mut session, now, UPGRADE), UPGRADE.len());
        let out = drain(&mut session);
        assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(out.ends_with(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
        session
    }

    fn authenticated(now: Instant) -> Session {
        let mut session = upgraded(now);
        let auth = client_frame(true, OpCode::Binary, b"\x05secret");
        assert_eq!(feed(&mut session, now, &auth), auth.len());
        assert_eq!(
            events(&mut session),
            [r#"Authenticate { token: [115, 101, 99, 114, 101, 116] }"#]
        );
        session.accept(now, node_id(A)).unwrap();
        let ready = drain(&mut session);
        assert_eq!(ready[..3], hex!("82 11 07"));
        assert_eq!(ready[3..], A);
        session
    }

    #[test]
    fn bearer_header_authenticates_without_a_frame() {
        let t0 = test_epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        let upgrade = std::str::from_utf8(UPGRADE)
            .unwrap()
            .replace("Host: r\r\n", "Host: r\r\nAuthorization: Bearer tok\r\n");
        feed(&mut session, t0, upgrade.as_bytes());
        let Some(SessionEvent::Authenticate { token }) = session.poll_event() else {
            panic!("no Authenticate");
        };
        assert_eq!(token, b"tok");
        assert_eq!(
            session.state(),
            SessionState::AwaitingAuth {
                verdict_pending: true
            }
        );
        session.accept(t0, node_id(A)).unwrap();
        assert_eq!(session.node(), Some(node_id(A)));
        assert_eq!(
            session.accept(t0, node_id(A)),
            Err(SessionError::NoVerdictPending)
        );
    }

    #[test]
    fn partial_input_needs_more() {
        let t0 = test_epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        assert_eq!(feed(&mut session, t0, &UPGRADE[..20]), 0);
        assert_eq!(feed(&mut session, t0, UPGRADE), UPGRADE.len());
        drain(&mut session);
        let auth = client_frame(true, OpCode::Text, b"token");
        for cut in 0..auth.len() {
            assert_eq!(feed(&mut session, t0, &auth[..cut]), 0);
        }
        assert_eq!(feed(&mut session, t0, &auth), auth.len());
        assert_eq!(events(&mut session).len(), 1);
    }

    #[test]
    fn handshake_errors_answer_http_and_close() {
        let t0 = test_epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        let bad = std::str::from_utf8(UPGRADE).unwrap().replace("13", "12");
        assert_eq!(feed(&mut session, t0, bad.as_bytes()), bad.len());
        let out = drain(&mut session);
        assert!(out.starts_with(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        assert_eq!(
            events(&mut session),
            ["Closed { reason: Handshake(UnsupportedVersion) }"]
        );
        assert_eq!(feed(&mut session, t0, b"more"), 4, "ignored after close");
        assert_eq!(session.stats().handshake_failures, 1);
    }

    #[test]
    fn handshake_and_auth_deadlines() {
        let t0 = test_epoch();
        let mut session = Session::new(WsConfig::new(), t0);
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        session.handle_timeout(t0 + Duration::from_secs(9));
        assert!(!session.is_closed());
        session.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            closed_with(&mut session),
            (None, CloseReason::HandshakeTimeout)
        );
        assert_eq!(session.poll_timeout(), None);

        let mut session = upgraded(t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(session.poll_timeout(), Some(t1));
        // A token does not stop the clock: the verdict must come in time too.
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, b"\x05tok"),
        );
        session.handle_timeout(t1);
        assert_eq!(
            closed_with(&mut session),
            (Some(CloseCode::POLICY_VIOLATION), CloseReason::AuthTimeout)
        );
        assert_eq!(
            session.accept(t1, node_id(A)),
            Err(SessionError::NoVerdictPending)
        );
    }

    #[test]
    fn reject_closes_with_1008() {
        let t0 = test_epoch();
        let mut session = upgraded(t0);
        assert_eq!(session.reject(t0), Err(SessionError::NoVerdictPending));
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, b"\x05tok"),
        );
        session.reject(t0).unwrap();
        assert_eq!(
            closed_with(&mut session),
            (Some(CloseCode::POLICY_VIOLATION), CloseReason::Rejected)
        );
    }

    #[test]
    fn auth_rules() {
        let t0 = test_epoch();
        // SEND before the verdict is dropped and counted.
        let mut session = upgraded(t0);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, &[0x01; 20]),
        );
        assert_eq!(session.stats().drops.get(DropReason::Unauthenticated), 1);
        // A second token while the first awaits its verdict.
        feed(&mut session, t0, &client_frame(true, OpCode::Text, b"one"));
        feed(&mut session, t0, &client_frame(true, OpCode::Text, b"two"));
        let (code, reason) = closed_with(&mut session);
        assert_eq!(code, Some(CloseCode::POLICY_VIOLATION));
        assert_eq!(
            reason,
            CloseReason::PeerMisbehaved(Violation::DuplicateAuth)
        );
        // A text token must be UTF-8.
        let mut session = upgraded(t0);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Text, b"\xff\xfe"),
        );
        assert_eq!(
            closed_with(&mut session).0,
            Some(CloseCode::INVALID_PAYLOAD)
        );
        // An empty AUTH.
        let mut session = upgraded(t0);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, b"\x05"),
        );
        assert_eq!(
            closed_with(&mut session),
            (
                Some(CloseCode::POLICY_VIOLATION),
                CloseReason::PeerMisbehaved(Violation::BadToken)
            )
        );
    }

    #[test]
    fn send_becomes_a_packet_event() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        let mut send = vec![0u8; 64];
        let len = relay::encode_send(&node_id(B), b"wg-packet", MASK, &mut send).unwrap();
        send.truncate(len);
        let mut input = send.clone();
        input.extend_from_slice(&send);
        assert_eq!(session.handle_input(t0, &mut input), Ok(len));
        assert_eq!(
            session.handle_input(t0, &mut input[len..]),
            Err(SessionError::EventPending)
        );
        let Some(SessionEvent::Packet { dest, payload }) = session.poll_event() else {
            panic!("no Packet");
        };
        assert_eq!(dest, node_id(B));
        assert_eq!(&input[payload.clone()], b"wg-packet");
        assert!(payload.start >= PREFIX_LEN + 6);
        assert_eq!(session.handle_input(t0, &mut input[len..]), Ok(len));
        assert_eq!(session.stats().received.packets, 2);
    }

    #[test]
    fn relay_message_drops() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        for (message, reason) in [
            (&b"\x0aabc"[..], DropReason::UnknownType),
            (b"", DropReason::Malformed),
            // GONE is for mesh links: from a node's client it is dropped.
            (&[0x09; 33], DropReason::Malformed),
            (b"\x01short", DropReason::Malformed),
            (b"\x05again", DropReason::Malformed),
            (&[0x02; 17], DropReason::Malformed),
        ] {
            feed(
                &mut session,
                t0,
                &client_frame(true, OpCode::Binary, message),
            );
            assert!(session.stats().drops.get(reason) > 0, "{message:?}");
        }
        assert!(events(&mut session).is_empty());
        assert_eq!(session.state(), SessionState::Authenticated(node_id(A)));
    }

    #[test]
    fn frame_rule_violations_close_with_their_codes() {
        let t0 = test_epoch();
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (
                hex!("82 05 01 02 03 04 05").to_vec(),
                CloseCode::PROTOCOL_ERROR,
            ), // unmasked
            (
                hex!("c2 80 00 00 00 00").to_vec(),
                CloseCode::PROTOCOL_ERROR,
            ), // RSV1
            (
                hex!("83 80 00 00 00 00").to_vec(),
                CloseCode::PROTOCOL_ERROR,
            ), // opcode 3
            (
                hex!("09 80 00 00 00 00").to_vec(),
                CloseCode::PROTOCOL_ERROR,
            ), // fragmented ping
            (hex!("89 fe 00 7e").to_vec(), CloseCode::PROTOCOL_ERROR), // 126-byte ping
            (
                hex!("82 ff 00 00 00 00 00 01 00 01").to_vec(),
                CloseCode::MESSAGE_TOO_BIG,
            ),
            (
                client_frame(true, OpCode::Continuation, b"x"),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                client_frame(false, OpCode::Binary, b"\x01"),
                CloseCode::UNSUPPORTED_DATA,
            ),
            (
                client_frame(true, OpCode::Text, b"hello"),
                CloseCode::UNSUPPORTED_DATA,
            ),
            (
                client_frame(true, OpCode::Close, &[3]),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                client_frame(true, OpCode::Close, &hex!("03 ee")),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                client_frame(true, OpCode::Close, &hex!("03 e8 c3 28")),
                CloseCode::INVALID_PAYLOAD,
            ),
        ];
        for (bytes, expected) in cases {
            let mut session = authenticated(t0);
            let mut input = bytes.clone();
            input.extend_from_slice(b"trailing junk");
            assert_eq!(feed(&mut session, t0, &input), input.len(), "{bytes:02x?}");
            let (code, reason) = closed_with(&mut session);
            assert_eq!(code, Some(expected), "{bytes:02x?}");
            assert!(matches!(reason, CloseReason::PeerMisbehaved(_)));
            assert_eq!(session.stats().protocol_errors, 1);
        }
    }

    #[test]
    fn ping_gets_pong_with_the_latest_payload() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Ping, b"first"),
        );
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Ping, b"Hello"),
        );
        assert_eq!(drain(&mut session), hex!("8a 05 48 65 6c 6c 6f"));
        assert_eq!(session.stats().pongs_sent, 1);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Pong, b"unsolicited"),
        );
        assert!(drain(&mut session).is_empty());
    }

    #[test]
    fn client_close_is_echoed() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Close, b"\x03\xe9bye"),
        );
        assert_eq!(drain(&mut session), hex!("88 02 03 e9"));
        assert_eq!(
            events(&mut session),
            ["Closed { reason: PeerClosed(Some(CloseCode(1001))) }"]
        );
        let mut session = authenticated(t0);
        feed(&mut session, t0, &client_frame(true, OpCode::Close, b""));
        assert_eq!(drain(&mut session), hex!("88 00"));
    }

    #[test]
    fn server_close_waits_for_the_client() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        session
            .enqueue_notice(MessageType::PeerGone, Some(&node_id(B)))
            .unwrap();
        assert_eq!(
            session.close(t0, CloseCode::new(1005)),
            Err(SessionError::InvalidCloseCode(1005))
        );
        session.close(t0, CloseCode::GOING_AWAY).unwrap();
        assert_eq!(session.state(), SessionState::Closing);
        let out = drain(&mut session);
        assert_eq!(out[..4], hex!("88 10 03 e9"), "queued data discarded");
        assert_eq!(session.stats().drops.get(DropReason::Closing), 1);
        // Data and pings after our Close are discarded; the client's Close completes it.
        feed(&mut session, t0, &client_frame(true, OpCode::Ping, b"x"));
        assert!(drain(&mut session).is_empty());
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Close, b"\x03\xe8"),
        );
        assert_eq!(
            events(&mut session),
            ["Closed { reason: Server(CloseCode(1001)) }"]
        );
        // Or the close timeout does.
        let mut session = authenticated(t0);
        session.close(t0, CloseCode::NORMAL).unwrap();
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        session.handle_timeout(t0 + Duration::from_secs(5));
        assert!(session.is_closed());
    }

    #[test]
    fn keepalive_ping_then_idle_close() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(session.poll_timeout(), Some(t30));
        session.handle_timeout(t30);
        assert_eq!(drain(&mut session), hex!("89 08 00 00 00 00 00 00 00 00"));
        assert_eq!(session.poll_timeout(), Some(t30 + Duration::from_secs(15)));
        // Any frame answers it.
        feed(
            &mut session,
            t30 + Duration::from_secs(1),
            &client_frame(true, OpCode::Pong, b""),
        );
        let t61 = t30 + Duration::from_secs(31);
        assert_eq!(session.poll_timeout(), Some(t61));
        session.handle_timeout(t61);
        drain(&mut session);
        session.handle_timeout(t61 + Duration::from_secs(15));
        assert_eq!(
            closed_with(&mut session),
            (Some(CloseCode::GOING_AWAY), CloseReason::IdleTimeout)
        );
        assert_eq!(session.stats().pings_sent, 2);
        assert_eq!(session.stats().idle_timeouts, 1);
    }

    #[test]
    fn control_frames_never_split_a_data_frame() {
        let t0 = test_epoch();
        let mut session = authenticated(t0);
        session
            .enqueue_notice(MessageType::PeerGone, Some(&node_id(B)))
            .unwrap();
        let mut small = [0u8; 5];
        assert_eq!(session.poll_transmit(&mut small), Some(5));
        feed(&mut session, t0, &client_frame(true, OpCode::Ping, b"p"));
        let rest = drain(&mut session);
        assert_eq!(rest.len(), 14 + 3);
        assert_eq!(
            rest[14..],
            hex!("8a 01 70"),
            "pong after the frame in progress"
        );
    }

    #[test]
    fn a_mesh_peer_gets_ready_with_its_host_and_may_send_gone_only() {
        let t0 = test_epoch();
        let host = HostId::from_bytes([0x11; 16]);
        let mut session = upgraded(t0);
        assert_eq!(
            session.accept_mesh(t0, host),
            Err(SessionError::NoVerdictPending)
        );
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Text, b"mesh.tok"),
        );
        assert_eq!(events(&mut session).len(), 1);
        session.accept_mesh(t0, host).unwrap();
        assert_eq!(session.state(), SessionState::Mesh(host));
        assert_eq!((session.node(), session.host()), (None, Some(host)));
        assert_eq!(
            drain(&mut session),
            hex!("82 11 07 11111111111111111111111111111111")
        );
        assert_eq!(session.stats().mesh_accepted, 1);
        // Keepalive as for nodes.
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        feed(&mut session, t0, &client_frame(true, OpCode::Ping, b"p"));
        assert_eq!(drain(&mut session), hex!("8a 01 70"));
        // Unknown types are ignored, for newer peers; an empty message is malformed.
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, b"\x7fnew"),
        );
        feed(&mut session, t0, &client_frame(true, OpCode::Binary, b""));
        assert_eq!(session.stats().drops.get(DropReason::UnknownType), 1);
        assert_eq!(session.stats().drops.get(DropReason::Malformed), 1);
        assert_eq!(session.state(), SessionState::Mesh(host));
        // GONE (PEER_GONE across hosts) is the one message it may send; a short one is
        // malformed.
        let gone = relay::encode_gone(&node_id(A), &node_id(B));
        feed(&mut session, t0, &client_frame(true, OpCode::Binary, &gone));
        assert!(matches!(
            session.poll_event(),
            Some(SessionEvent::Gone { dest, src }) if dest == node_id(A) && src == node_id(B)
        ));
        assert!(session.poll_event().is_none());
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Binary, &gone[..20]),
        );
        assert_eq!(session.stats().drops.get(DropReason::Malformed), 2);
        assert!(session.poll_event().is_none());
        assert_eq!(session.state(), SessionState::Mesh(host));
        // Any other known relay message fails the link.
        for message in [&b"\x01short"[..], b"\x05token", &[0x08; 40]] {
            let mut session = upgraded(t0);
            feed(
                &mut session,
                t0,
                &client_frame(true, OpCode::Text, b"mesh.tok"),
            );
            session.accept_mesh(t0, host).unwrap();
            drain(&mut session);
            feed(
                &mut session,
                t0,
                &client_frame(true, OpCode::Binary, message),
            );
            assert_eq!(
                closed_with(&mut session),
                (
                    Some(CloseCode::POLICY_VIOLATION),
                    CloseReason::PeerMisbehaved(Violation::MeshMessage)
                )
            );
        }
    }

    #[test]
    fn a_mesh_queue_is_the_mesh_size_and_counts_its_own_drops() {
        let t0 = test_epoch();
        let config = WsConfig::new()
            .with_max_message(1024)
            .unwrap()
            .with_mesh_queue(3, 4096)
            .unwrap();
        let mut session = Session::new(config, t0);
        feed(&mut session, t0, UPGRADE);
        feed(
            &mut session,
            t0,
            &client_frame(true, OpCode::Text, b"mesh.tok"),
        );
        session
            .accept_mesh(t0, HostId::from_bytes([1; 16]))
            .unwrap();
        for _ in 0..5 {
            session.enqueue_frame(&[0x82, 0x01, 0x08]).unwrap();
        }
        assert_eq!(session.queued_frames(), 3, "READY went first");
        assert_eq!(session.stats().drops.get(DropReason::MeshQueueFull), 3);
        assert_eq!(session.stats().drops.get(DropReason::QueueFull), 0);
    }

    #[test]
    fn fixed_size_stays_as_documented() {
        // The module doc's memory bound counts on this.
        assert!(size_of::<Session>() <= 1280, "{}", size_of::<Session>());
    }

    #[test]
    fn not_authenticated_sessions_refuse_frames() {
        let t0 = test_epoch();
        let mut session = upgraded(t0);
        assert_eq!(
            session.enqueue_frame(b"x"),
            Err(SessionError::NotAuthenticated)
        );
    }
}
