//! The sans-IO core of the node-to-node WebSocket relay: nodes that cannot reach each other
//! directly tunnel WireGuard packets through this server over WebSocket, like Tailscale's
//! DERP.
//!
//! # Contract
//!
//! The same as the crate's: no I/O, no clock, no threads. A shell accepts TCP (and TLS),
//! hands the decrypted bytes in with [`Hub::handle_input`], writes what
//! [`Hub::poll_transmit`] produces, and re-arms one timer from [`Hub::poll_timeout`]. No
//! packet is ever allocated: a received SEND is turned into a RECV frame in the shell's own
//! input buffer and copied once, into the destination's bounded queue.
//!
//! # Flow
//!
//! ```text
//!  TCP accept ─▶ Hub::handle_connect ─▶ ConnId
//!  bytes ──────▶ Hub::handle_input(conn) ─▶ Input { consumed, forward }
//!                  AwaitingHandshake: HTTP upgrade ─▶ 101 (or 400/401/404/426/431 and close)
//!                  AwaitingAuth: Bearer header or AUTH message ─▶ HubEvent::Authenticate
//!                                owner checks the token ─▶ Hub::accept(node) / Hub::reject
//!                                                         Hub::accept_mesh(host) (mesh token)
//!                  Authenticated: SEND ─▶ Forward::Local (RECV queued to the destination)
//!                                              Forward::Remote (shell ships the RECV frame:
//!                                                to another core, or Hub::forward_to_mesh)
//!                                              Forward::Gone (PEER_GONE queued, rate-limited)
//!                  Mesh: pings, pongs and Close only (a relay message fails it: 1008)
//!  HubEvent::Wake(conn) ─▶ Hub::poll_transmit(conn, buf) until None ─▶ write to TCP
//!  timer ──────▶ Hub::handle_timeout (handshake/auth deadlines, keepalive ping, idle close)
//!  HubEvent::Closed(conn) ─▶ flush poll_transmit, close TCP ─▶ Hub::handle_disconnect
//! ```
//!
//! [`handshake`] parses the upgrade, [`frame`] is the RFC 6455 frame codec, [`relay`] holds
//! the relay framing and its byte table, [`Session`] is one connection's state machine,
//! [`Hub`] routes between the sessions of one core, and [`MeshClient`] reads a mesh link
//! from another relay host.
//!
//! # Mesh: relaying across hosts
//!
//! When a SEND's destination is connected to another relay host, the packet crosses a mesh
//! link between the two hosts, authenticated by the deployment's shared mesh key
//! ([`boson_shared::mesh`]).
//!
//! * **Direction.** Every host A that wants to receive mesh traffic from host B opens a
//!   WebSocket to B's relay path (A is the WS client, B the server) and authenticates as a
//!   mesh peer. B then *pushes* to A, as unmasked server frames, every packet B's clients
//!   send to nodes connected to A; A sends nothing but control frames. So each pair of hosts
//!   has two TCP connections, each carrying data server → client only, and the data path
//!   never pays for masking. A's own traffic to B's nodes goes on the link B opened to A.
//! * **Authentication.** A's upgrade request carries
//!   `Authorization: Bearer mesh.<A's host id>.<unix secs>.<base64url HMAC-SHA256>`, minted
//!   per connection with [`MeshKey::token`](boson_shared::MeshKey::token). B's hub reports it
//!   like any token ([`HubEvent::Authenticate`]); B's shell tells it from node tokens by its
//!   prefix ([`is_mesh_token`](boson_shared::mesh::is_mesh_token)), checks it with
//!   [`MeshKey::verify`](boson_shared::MeshKey::verify) and calls [`Hub::accept_mesh`] (or
//!   [`Hub::reject`]: close 1008). The link gets READY with A's host id; it is keyed by
//!   host, apart from nodes, one per host (a newer replaces the older with 4000), kept
//!   alive like any session, with its own larger queue ([`WsConfig::with_mesh_queue`]).
//! * **Forwarding.** B's hub answers a SEND for a node its presence lookup places elsewhere
//!   with [`Forward::Remote`] and a RECV frame built in B's input buffer. B's shell finds
//!   the node's host in its presence table and calls [`Hub::forward_to_mesh`], which queues
//!   the FORWARD frame to that host's link from two slices, with no intermediate buffer.
//!   A's [`MeshClient`] rewrites each FORWARD in A's input buffer back into that RECV frame
//!   and returns [`MeshInput::Deliver`]; A's shell calls its own hub's
//!   [`Hub::handle_remote`], which copies the frame into the destination's queue.
//!
//! Byte by byte, for node Y on B sending a 30-byte packet to node X on A (`X`, `Y`: 16
//! bytes each; offsets in the frame):
//!
//! ```text
//!  Y → B   SEND, masked    [82 af][mask:4] then, unmasked: [01][X][packet:30]     (53 bytes)
//!  B hub   RECV in place   [82 2f][02][Y][packet:30]                              (49 bytes)
//!  B → A   FORWARD         [82 3f][08][X][Y][packet:30]                           (65 bytes)
//!            queued as     head [82 3f][08][X] (19 bytes) + RECV payload from [Y] (46 bytes)
//!  A client in place       byte 18 (last of X) := 02, bytes 16..18 := [82 2f]
//!            delivers      frame 16..65 = [82 2f][02][Y][packet:30], dest X       (49 bytes)
//!  A hub   handle_remote   copies those 49 bytes into X's queue: X reads RECV from Y
//! ```
//!
//! A FORWARD message is 16 bytes longer than the SEND it carries, so the mesh cap is the
//! message cap plus 16 ([`WsConfig::max_mesh_message`]); both hosts must use the same
//! message cap. The shell owns everything around the link: minting a fresh token per
//! connection, reconnecting with backoff (after [`MeshCloseReason::Rejected`], checking its
//! key), the presence table (node → host), and, on a multi-core host, taking a
//! `Forward::Remote` to the core that holds the destination host's link.
//!
//! # Why our own RFC 6455 codec instead of tungstenite
//!
//! tungstenite allocates a `Vec` for every message it reads, and its `Message` owns its
//! payload; the relay must not allocate per packet. The frame format is small (a 2–14 byte
//! header and a 4-byte XOR mask) and server-side rules are few, so we implement the codec
//! over caller buffers: frames are unmasked in place, 8 bytes at a time, and the server's
//! shorter header is written into the space the client's masked one occupied. tungstenite's
//! safety defaults are kept in spirit — refuse unmasked client frames, RSV bits, reserved
//! opcodes, oversized or fragmented control frames, invalid close codes and invalid UTF-8 —
//! but its 64 MiB message and 16 MiB frame limits become one 64 KiB cap
//! ([`DEFAULT_MAX_MESSAGE`]), checked from the frame header before the payload is buffered.
//!
//! # Choices where RFC 6455 leaves room
//!
//! * **No fragmentation.** A data frame without FIN is refused with 1003 and a stray
//!   continuation frame with 1002. Every relay message fits one frame (64 KiB), relay
//!   clients never fragment, and refusing keeps the path zero-copy with no reassembly
//!   buffer. Control frames are handled wherever they arrive.
//! * **Binary only, with one exception.** The token may arrive as a text message, in place of
//!   the AUTH message, while the session awaits authentication (invalid UTF-8 there: 1007).
//!   Any other text message is refused with 1003.
//! * **The 101 comes before the verdict.** A `Bearer` token in the upgrade request is checked
//!   after the 101, like an AUTH message; a rejected token closes with 1008. Only a malformed
//!   `Authorization` header gets 401.
//! * **Pong only the latest ping** (§5.5.3 allows it), so a ping flood cannot queue pongs.
//! * **Closing.** A protocol violation, a refused token, an auth timeout or an unanswered
//!   keepalive fails the connection: the Close frame is queued and the session is `Closed`
//!   at once. A replaced session or a shell-initiated close waits up to
//!   [`WsConfig::with_close_timeout`] for the client's Close. Data queued when a session
//!   closes is discarded; nothing follows a Close frame.
//!
//! # Memory per session
//!
//! Before authentication a session holds a fixed ~1.2 KiB (state, counters, a 160-byte
//! staging buffer for the HTTP response and control frames, three 127-byte control slots)
//! plus the token, at most [`handshake::MAX_TOKEN_LEN`] bytes. Accepting it allocates its
//! outbound queue once: `queue_bytes` of ring plus 24 bytes per entry of `queue_frames`, by
//! default 128 KiB + 6 KiB, so about 134 KiB per authenticated node. Nothing grows after
//! that: a client that never reads loses its oldest queued frames
//! ([`DropReason::QueueFull`]). A mesh link allocates `mesh_queue_bytes` plus 24 bytes per
//! entry of `mesh_queue_frames`, by default 4 MiB + 96 KiB, once per peer host; a peer that
//! stops reading loses its oldest frames ([`DropReason::MeshQueueFull`]). The hub adds a
//! fixed PEER_GONE table (16 bytes per slot, 64 KiB by default) and a map and timer entry
//! per session. The shell's input buffer must hold one whole frame,
//! [`WsConfig::min_input_buffer`] bytes ([`WsConfig::min_mesh_input_buffer`] for a
//! [`MeshClient`]). A `MeshClient` holds about 500 bytes plus its upgrade request until it
//! is sent, and queues nothing.

pub mod frame;
pub mod handoff;
pub mod handshake;
mod hub;
pub(crate) use hub::GoneLimiter;
mod mesh;
mod queue;
pub mod relay;
pub mod route;
mod session;
mod stats;

use std::sync::Arc;
use std::time::Duration;

pub use hub::{
    ConnId, Delivery, Forward, Hub, HubError, HubEvent, Input, LocalOnly, Presence, Route,
};
pub use mesh::{
    MAX_PENDING_GONE, MeshClient, MeshCloseReason, MeshError, MeshEvent, MeshHandshakeError,
    MeshInput, MeshState, MeshViolation,
};
pub use route::{Directory, Hop, Location, Origin, RouteDrop};
pub use session::{CloseReason, Session, SessionError, SessionEvent, SessionState, Violation};
pub use stats::{DropReason, MeshStats, Stats};

use frame::{MAX_CLIENT_HEADER_LEN, MAX_SERVER_HEADER_LEN};

/// Default message cap, 64 KiB: one WireGuard packet (at most 65 535 bytes of IP, less in
/// practice) plus the 17-byte relay prefix fits, and a client cannot make the server buffer
/// more than this per frame.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// Default request path of the upgrade.
pub const DEFAULT_PATH: &str = "/relay";

/// Configuration of the relay's sessions, validated when built.
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub(crate) path: Arc<str>,
    pub(crate) max_message: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) auth_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) queue_frames: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) mesh_queue_frames: usize,
    pub(crate) mesh_queue_bytes: usize,
    pub(crate) peer_gone_interval: Duration,
    pub(crate) peer_gone_slots: usize,
}

/// Why a [`WsConfig`] setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The path does not start with `/`, or has a query or whitespace.
    #[error("invalid upgrade path")]
    InvalidPath,
    /// A duration is zero or longer than a day (which also keeps `now + duration` far from
    /// overflowing).
    #[error("{0} must be above zero and at most a day")]
    InvalidDuration(&'static str),
    /// The message cap cannot hold a relay prefix and a byte of packet.
    #[error("message cap {0} is too small")]
    MessageCapTooSmall(usize),
    /// The queue cannot hold one largest frame, or holds fewer than 2 frames.
    #[error("queue of {frames} frames / {bytes} bytes cannot hold a {needed}-byte frame")]
    QueueTooSmall {
        /// Frames asked for.
        frames: usize,
        /// Bytes asked for.
        bytes: usize,
        /// Bytes of the largest frame.
        needed: usize,
    },
    /// The PEER_GONE limiter needs at least one slot.
    #[error("the PEER_GONE rate limiter needs at least one slot")]
    NoPeerGoneSlots,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl WsConfig {
    /// The defaults; each `with_*` documents its own.
    pub fn new() -> Self {
        Self {
            path: Arc::from(DEFAULT_PATH),
            max_message: DEFAULT_MAX_MESSAGE,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(5),
            queue_frames: 256,
            queue_bytes: 128 * 1024,
            mesh_queue_frames: 4096,
            mesh_queue_bytes: 4 * 1024 * 1024,
            peer_gone_interval: Duration::from_secs(5),
            peer_gone_slots: 4096,
        }
    }

    /// The request path of the upgrade (default [`DEFAULT_PATH`]). A query string in the
    /// request is ignored when matching.
    pub fn with_path(mut self, path: &str) -> Result<Self, ConfigError> {
        if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace)
        {
            return Err(ConfigError::InvalidPath);
        }
        self.path = Arc::from(path);
        Ok(self)
    }

    /// The largest WebSocket message accepted (default [`DEFAULT_MAX_MESSAGE`], 64 KiB);
    /// larger frames close with 1009. The queue must hold one frame of this size.
    pub fn with_max_message(mut self, max: usize) -> Result<Self, ConfigError> {
        if max <= relay::PREFIX_LEN {
            return Err(ConfigError::MessageCapTooSmall(max));
        }
        self.max_message = max;
        self.check_queue()?;
        Ok(self)
    }

    /// Time from connection to a complete upgrade request (default 10 s: a slow-loris client
    /// holds a connection at most this long).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.handshake_timeout = nonzero(timeout, "handshake timeout")?;
        Ok(self)
    }

    /// Time from the 101 to the owner's verdict on a token (default 10 s, time enough for a
    /// control-plane lookup; an idle unauthenticated connection is closed with 1008).
    pub fn with_auth_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.auth_timeout = nonzero(timeout, "auth timeout")?;
        Ok(self)
    }

    /// Keepalive: a ping after `interval` without any frame from the client (default 30 s,
    /// below the 60 s idle timeout of common NATs and load balancers), and close (1001) if
    /// nothing arrives within `pong_timeout` of it (default 15 s).
    pub fn with_keepalive(
        mut self,
        interval: Duration,
        pong_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        self.keepalive_interval = nonzero(interval, "keepalive interval")?;
        self.pong_timeout = nonzero(pong_timeout, "pong timeout")?;
        Ok(self)
    }

    /// How long a server-initiated graceful close waits for the client's Close (default 5 s).
    pub fn with_close_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.close_timeout = nonzero(timeout, "close timeout")?;
        Ok(self)
    }

    /// The per-session outbound queue: at most `frames` frames and `bytes` bytes (defaults 256
    /// and 128 KiB: about two largest frames, or ~100 full-MTU packets, some 100 ms at
    /// 10 Mbit/s; the frame bound only matters for small packets, where 64 dropped bursts
    /// of 100-byte packets that the byte bound holds easily). Must hold one largest frame and at least 2 frames. This is the session's
    /// memory bound; see the module doc.
    pub fn with_queue(mut self, frames: usize, bytes: usize) -> Result<Self, ConfigError> {
        self.queue_frames = frames;
        self.queue_bytes = bytes;
        self.check_queue()?;
        Ok(self)
    }

    /// The outbound queue of a mesh link: at most `frames` frames and `bytes` bytes
    /// (defaults 4096 and 4 MiB: some 2 800 full-MTU packets, 34 ms at 1 Gbit/s). One link
    /// carries the packets of all this hub's clients to all the nodes of one peer host, so
    /// it gets 32 times a node's queue; there is one per peer host. Must hold one largest
    /// FORWARD frame ([`max_mesh_frame`](Self::max_mesh_frame)) and at least 2 frames.
    pub fn with_mesh_queue(mut self, frames: usize, bytes: usize) -> Result<Self, ConfigError> {
        self.mesh_queue_frames = frames;
        self.mesh_queue_bytes = bytes;
        self.check_queue()?;
        Ok(self)
    }

    /// PEER_GONE rate limit: at most one per sender and destination per `interval` (default
    /// 5 s), tracked in `slots` fixed slots (default 4096, 64 KiB) shared by the hub.
    pub fn with_peer_gone_limit(
        mut self,
        interval: Duration,
        slots: usize,
    ) -> Result<Self, ConfigError> {
        if slots == 0 {
            return Err(ConfigError::NoPeerGoneSlots);
        }
        self.peer_gone_interval = nonzero(interval, "PEER_GONE interval")?;
        self.peer_gone_slots = slots;
        Ok(self)
    }

    /// The smallest input buffer the shell may use: one whole client frame of the largest
    /// message. A frame only parses when all of it is in the buffer.
    pub const fn min_input_buffer(&self) -> usize {
        MAX_CLIENT_HEADER_LEN + self.max_message
    }

    /// The largest server frame: header plus the largest message.
    pub const fn max_frame(&self) -> usize {
        MAX_SERVER_HEADER_LEN + self.max_message
    }

    /// The configured message cap.
    pub const fn max_message(&self) -> usize {
        self.max_message
    }

    /// The largest message on a mesh link: a FORWARD carrying the largest SEND, 16 bytes
    /// longer than the message cap. Both hosts of a link must use the same cap.
    pub const fn max_mesh_message(&self) -> usize {
        self.max_message + relay::NODE_ID_LEN
    }

    /// The largest FORWARD frame: header plus [`max_mesh_message`](Self::max_mesh_message).
    pub const fn max_mesh_frame(&self) -> usize {
        MAX_SERVER_HEADER_LEN + self.max_mesh_message()
    }

    /// The smallest input buffer of a [`MeshClient`]: the 101 response (at most
    /// [`handshake::MAX_HEADER_BLOCK`]) or one whole FORWARD frame, whichever is larger.
    pub const fn min_mesh_input_buffer(&self) -> usize {
        let frame = self.max_mesh_frame();
        if frame > handshake::MAX_HEADER_BLOCK {
            frame
        } else {
            handshake::MAX_HEADER_BLOCK
        }
    }

    fn check_queue(&self) -> Result<(), ConfigError> {
        let needed = self.max_frame();
        if self.queue_frames < 2 || self.queue_bytes < needed {
            return Err(ConfigError::QueueTooSmall {
                frames: self.queue_frames,
                bytes: self.queue_bytes,
                needed,
            });
        }
        let needed = self.max_mesh_frame();
        if self.mesh_queue_frames < 2 || self.mesh_queue_bytes < needed {
            return Err(ConfigError::QueueTooSmall {
                frames: self.mesh_queue_frames,
                bytes: self.mesh_queue_bytes,
                needed,
            });
        }
        Ok(())
    }
}

fn nonzero(duration: Duration, what: &'static str) -> Result<Duration, ConfigError> {
    if duration.is_zero() || duration > Duration::from_secs(86_400) {
        return Err(ConfigError::InvalidDuration(what));
    }
    Ok(duration)
}

/// An arbitrary origin for unit tests' virtual time: only differences from it matter.
#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "tests need some Instant to start virtual time from; its value never matters"
)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(WsConfig::new().with_path("relay").is_err());
        assert!(WsConfig::new().with_path("/a?b").is_err());
        assert_eq!(&*WsConfig::new().with_path("/derp").unwrap().path, "/derp");
        assert!(matches!(
            WsConfig::new().with_queue(64, 65_545),
            Err(ConfigError::QueueTooSmall { .. })
        ));
        assert!(WsConfig::new().with_queue(1, 1 << 20).is_err());
        let small = WsConfig::new().with_max_message(1024).unwrap();
        assert!(small.clone().with_queue(2, 1034).is_ok());
        assert!(small.clone().with_queue(2, 1033).is_err());
        assert!(WsConfig::new().with_max_message(17).is_err());
        assert!(
            small.with_max_message(1 << 20).is_err(),
            "queue too small for it"
        );
        assert_eq!(
            WsConfig::new()
                .with_auth_timeout(Duration::ZERO)
                .unwrap_err(),
            ConfigError::InvalidDuration("auth timeout")
        );
        assert!(
            WsConfig::new()
                .with_peer_gone_limit(Duration::from_secs(1), 0)
                .is_err()
        );
        assert_eq!(WsConfig::new().min_input_buffer(), 65_550);
        assert_eq!(WsConfig::new().max_mesh_frame(), 65_562);
        assert_eq!(WsConfig::new().min_mesh_input_buffer(), 65_562);
        assert_eq!(
            WsConfig::new()
                .with_max_message(1024)
                .unwrap()
                .min_mesh_input_buffer(),
            handshake::MAX_HEADER_BLOCK
        );
        assert!(matches!(
            WsConfig::new().with_mesh_queue(4096, 65_561),
            Err(ConfigError::QueueTooSmall { needed: 65_562, .. })
        ));
        assert!(WsConfig::new().with_mesh_queue(2, 65_562).is_ok());
        assert!(WsConfig::new().with_mesh_queue(1, 1 << 22).is_err());
        assert!(
            WsConfig::new()
                .with_mesh_queue(2, 65_562)
                .unwrap()
                .with_max_message(65_537)
                .is_err(),
            "mesh queue too small for it"
        );
    }
}
