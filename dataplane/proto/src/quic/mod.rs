//! The sans-IO core of the node-to-node relay over QUIC: the WebSocket relay's semantics
//! ([`crate::ws`]) carried in QUIC DATAGRAM frames ([RFC 9221]), on [quinn-proto] driven
//! without its runtime.
//!
//! # Contract
//!
//! The same as the crate's: **no I/O, no clock, no threads.** The shell owns one UDP socket
//! per core (8443/udp, `SO_REUSEPORT`) and one [`QuicRelay`] per socket. It hands every
//! received datagram to [`QuicRelay::handle_datagram`], sends what
//! [`QuicRelay::poll_transmit`] writes into its buffer, acts on [`QuicRelay::poll_event`],
//! and re-arms one timer from [`QuicRelay::poll_timeout`]. Every call that can change state
//! takes `now`; the relay never reads a clock. quinn needs a wall clock for Retry tokens:
//! the relay gives it a virtual one fed from those `now`s. All of quinn's randomness comes
//! from the relay's 32-byte seed (connection IDs, stateless-reset and Retry-token keys);
//! only rustls's TLS key exchange draws from `ring`'s OS random source, which the seed
//! cannot reach. Token verification, cross-core routing and sockets are the shell's.
//!
//! # Flow
//!
//! ```text
//!  UDP datagram ─▶ handle_datagram ─▶ quinn Endpoint
//!      new Initial: draining → CONNECTION_REFUSED; at max connections → CONNECTION_REFUSED;
//!                   unauthenticated ≥ retry threshold and no token → Retry; else handshake
//!  client opens its bidirectional stream, writes AUTH ─▶ QuicEvent::Authenticate { conn, token }
//!      owner checks the token ─▶ accept(conn, node): READY on the stream, node reachable here
//!                                                    (an older connection of node: closed 4000)
//!                              ─▶ reject(conn): CONNECTION_CLOSE 1008 "unauthorized"
//!      no verdict by the auth deadline: CONNECTION_CLOSE 1008 "auth_timeout"
//!  DATAGRAM SEND ─▶ QuicEvent::Send { conn, src, dest, packet }   (before READY: dropped)
//!      dest here:     deliver(dest, src, packet) ─▶ DATAGRAM RECV to dest
//!      dest elsewhere: the shell ships it to that core, whose relay calls deliver
//!      dest nowhere:  peer_gone(conn, dest) ─▶ PEER_GONE on the stream, rate-limited
//!  start_draining ─▶ RECONNECT_HINT to every node; new connections refused
//!  connection gone ─▶ QuicEvent::Closed { conn, node, reason }
//! ```
//!
//! # Wire format
//!
//! ALPN `boson-relay/1` ([`ALPN`]), QUIC v1, TLS 1.3. The message types and bodies are the
//! WebSocket relay's ([`crate::ws::relay`]); only the framing around them differs.
//!
//! **The control stream** is the client's first (and only) bidirectional stream, id 0.
//! Reliable and ordered, it carries the handshake and every notice; each message is
//! preceded by its length, 16-bit big-endian, 1 ..= [`wire::MAX_CONTROL_MESSAGE`]:
//!
//! ```text
//! dir   message          bytes on the stream                          length
//! C→S   AUTH             [len: 2][0x05][token: 1..=4096]              3 + token
//! S→C   READY            [00 11][0x07][own NodeId: 16]                19
//! S→C   PEER_GONE        [00 11][0x03][NodeId: 16]                    19
//! S→C   PEER_PRESENT     [00 11][0x04][NodeId: 16]                    19
//! S→C   RECONNECT_HINT   [00 01][0x06]                                3
//! ```
//!
//! **DATAGRAM frames** carry the data, one relay message per frame, with no length of its own
//! (the frame has one):
//!
//! ```text
//! C→S   SEND             [0x01][dest NodeId: 16][WireGuard packet]
//! S→C   RECV             [0x02][src NodeId: 16][WireGuard packet]
//! ```
//!
//! * **AUTH** is the first and only message the client sends on the stream; it may FIN
//!   after it. The token is at most [`MAX_TOKEN_LEN`](crate::ws::handshake::MAX_TOKEN_LEN)
//!   (4096) bytes, as on WebSocket. **READY** is the server's first message, after the
//!   owner's verdict: the client may send SENDs from then on; SENDs before it are dropped
//!   ([`DropReason::Unauthenticated`]) and nothing is ever delivered to an unauthenticated
//!   connection.
//! * **Notices go on the stream, not in datagrams**, because datagrams are unreliable: a
//!   lost READY would leave the client unsure it may send, a lost RECONNECT_HINT would keep
//!   it on a draining relay. PEER_GONE could survive loss (the next SEND after the rate-limit
//!   interval brings another) but costs 19 bytes, rate-limited, so it takes the same
//!   reliable path and the client reads every control message from one place. The stream
//!   is ordered with respect to itself only: a RECV and a PEER_PRESENT may arrive in either
//!   order.
//! * **Later client messages**: a message of an unknown type on the stream is counted
//!   ([`DropReason::UnknownType`]) and skipped, so newer clients can talk to this relay;
//!   any known type (a second AUTH, a SEND, a server message) is a violation. Unknown
//!   DATAGRAM types are counted and skipped too; known non-SEND types are
//!   [`DropReason::Malformed`].
//! * **Closing.** The relay closes with an application CONNECTION_CLOSE whose code is the
//!   WebSocket close code of the same case and whose reason phrase is
//!   [`CloseReason::as_str`]: 1008 `unauthorized` or `auth_timeout`, 4000 `replaced`, 1002
//!   for a violation (`no_datagrams`, `bad_control_frame`, `unexpected_message`,
//!   `bad_token`, `duplicate_auth`, `control_stream_closed`, `second_stream`). A client that
//!   does not offer DATAGRAM frames is closed right after the handshake.
//! * **Keepalive and idle** are QUIC's ([`QuicConfig::with_keepalive`]): the server PINGs
//!   after 15 s of silence, and quinn closes a connection that heard nothing for 30 s.
//!
//! # Limits
//!
//! * **Streams**: `initial_max_streams_bidi` 1 (the control stream; the relay never
//!   finishes its side, so no second one is ever granted), `initial_max_streams_uni` 0.
//!   Stream and connection flow-control windows are 8 KiB, so a client can have at most
//!   one largest AUTH in flight; the relay reads the stream as it arrives and buffers at
//!   most one frame ([`wire::MAX_CONTROL_FRAME`], 4 099 bytes), freed after AUTH.
//! * **Datagram size**: a relayed packet must fit the destination connection's
//!   [`max_size`](quinn_proto::Datagrams::max_size) (path MTU less QUIC overhead: about
//!   1 160 bytes of datagram before path MTU discovery, about 1 410 after it on a 1500-byte
//!   path) and the relay's cap [`QuicConfig::with_max_datagram_size`]; otherwise it is
//!   dropped ([`DropReason::Oversized`]). Measured on a 1500-byte path: 1 145 bytes of
//!   WireGuard packet fit at READY, 1 397 once discovery has run (a few round trips
//!   later). So a tunnel over this relay needs an inner MTU of at most 1 365 (WireGuard
//!   adds 32 bytes), and until discovery completes its largest packets are dropped
//!   (counted). The relay advertises `max_datagram_frame_size` 65 535 and enforces its cap
//!   by dropping, not by closing.
//! * **Outbound datagrams** per connection are bounded by
//!   [`QuicConfig::with_datagram_send_buffer`] (quinn's `datagram_send_buffer_size`, 64 KiB
//!   by default). A client that stops reading, or whose path is slower than its peers
//!   send, fills its congestion window, then this buffer; from then on RECVs to it are
//!   dropped ([`DropReason::SendBufferFull`]: tail drop, because quinn's own head-drop does
//!   not say how many datagrams it discarded and every drop must be counted). Memory per
//!   connection therefore stays bounded, and the client is closed by the idle timeout if it
//!   stops acknowledging.
//! * **Inbound datagrams** are taken out of quinn after every UDP datagram, so quinn's
//!   receive buffer never overflows (it would drop without telling); the relay's event
//!   queue holds at most 8 192 SENDs for the shell ([`DropReason::EventBacklog`]).
//! * **Notices** per connection: quinn's stream send window (8 KiB unacknowledged) plus a
//!   304-byte outbox; a notice that does not fit is dropped ([`DropReason::ControlBacklog`]).
//! * **Connections**: at most [`QuicConfig::with_max_connections`] per relay, in any
//!   state; beyond it, and while draining, new clients get CONNECTION_REFUSED.
//! * **Connection IDs** are 8 bytes derived from the seed (a keyed PRF of a counter plus a
//!   3-byte tag; quinn's own generators would draw from the OS), so a garbage short-header
//!   packet is recognized as not ours before it earns a stateless reset.
//!
//! # Address validation: Retry above a threshold
//!
//! Before the handshake completes, the anti-amplification limit (RFC 9000 §8) already keeps
//! the relay from sending more than 3× what an unvalidated address sent. What it does not
//! bound is *our* cost: every Initial, spoofed or not, buys a TLS key exchange and
//! connection state held until the auth deadline, which a flood of spoofed Initials turns
//! into CPU exhaustion and a full connection table. A stateless Retry (RFC 9000 §8.1.2)
//! makes the client prove it receives at its address first, at the price of one round
//! trip. The relay pays that price only under pressure: while fewer than
//! [`QuicConfig::with_retry_threshold`] connections are unauthenticated (64 by default) new
//! clients are taken directly, and above it every client without a Retry token gets a
//! Retry. Normal reconnects stay one round trip faster; a flood stops costing anything but
//! the Retry packet (never larger than the Initial that caused it). Threshold 0 retries
//! always.
//!
//! # Certificates
//!
//! The configuration takes an `Arc<rustls::ServerConfig>` from any provider that offers TLS
//! 1.3 with TLS_AES_128_GCM_SHA256, the ALPN [`ALPN`] and no early data. The helpers build
//! one on **`ring`**, which compiles with a C compiler alone (aws-lc-rs needs cmake, and
//! quinn-proto defaults to ring): [`QuicConfig::from_pem`] / [`tls_config_from_pem`] from
//! a PEM chain and key, and `QuicConfig::self_signed` (feature `self-signed`, for
//! development and tests) with a certificate from `rcgen`. 0-RTT is refused: its data can
//! be replayed, and a long-lived relay connection gains nothing from it. Reloading a
//! certificate is the shell's: it builds a new rustls configuration and calls
//! [`QuicRelay::set_server_config`]; established connections keep theirs.
//!
//! # Allocations
//!
//! quinn-proto owns its packet buffers, so this relay cannot be allocation-free the way the
//! WebSocket one is. What happens per relayed packet:
//!
//! * **In**: the UDP datagram is copied into a `BytesMut` quinn takes by value and
//!   decrypts in place. The relay reuses one buffer: once the views of the previous
//!   datagram (the `packet` of [`QuicEvent::Send`]) are dropped, `reserve` reclaims it, so
//!   a shell that drops each packet after delivering it allocates nothing; one that keeps
//!   packets (e.g. to hand them to another core) costs a fresh buffer per datagram (two
//!   allocations, about what quinn's own runtime spends). The SEND's packet is a zero-copy
//!   view.
//! * **Out**: [`QuicRelay::deliver`] copies the packet once, behind the RECV prefix, into a
//!   per-connection 8 KiB chunk and hands quinn a view of it. The chunk is reclaimed once
//!   quinn has sent everything staged in it, so a connection whose queue empties between
//!   packets allocates nothing; while a queue stands (several packets delivered before the
//!   next `poll_transmit`), each fresh chunk costs two allocations (the buffer and the
//!   `bytes` header shared by its views), one per ~6 full-size packets. quinn copies the
//!   datagram into the caller's transmit buffer, encrypting in place; that buffer is the
//!   caller's and is reused.
//! * **quinn** allocates for its own bookkeeping (sent-packet records, ACK ranges),
//!   amortized per QUIC packet, not per datagram frame.
//! * **Per connection**: quinn's state, a boxed slot here, the TX chunk on first delivery,
//!   and the 4 KiB control inbox until AUTH. Endpoint responses reuse a pool of buffers.
//!
//! Measured (`tests/quic_allocs.rs`, two clients relaying through one relay, 16 packets in
//! flight each way, each arrival batch delivered before the relay transmits): 0.03
//! allocations per relayed packet at 100 bytes (several datagrams share a QUIC packet),
//! 0.42 at 1 200 bytes (0.29 of them TX chunks, 0.13 quinn's), none in `handle_datagram`.
//!
//! [RFC 9221]: https://www.rfc-editor.org/rfc/rfc9221
//! [quinn-proto]: https://docs.rs/quinn-proto/0.11

mod config;
mod relay;
mod stats;
pub mod wire;

pub use config::{
    ConfigError, DEFAULT_DATAGRAM_SEND_BUFFER, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DATAGRAM_SIZE,
    DEFAULT_RETRY_THRESHOLD, QuicConfig, tls_config_from_pem,
};
pub use relay::{
    CloseReason, Delivery, QuicConnId, QuicError, QuicEvent, QuicRelay, Transmit, Violation,
};
pub use stats::{DropReason, QuicStats};

use wire::MAX_CONTROL_FRAME;

/// The ALPN protocol of the relay over QUIC, version 1 of its framing.
pub const ALPN: &[u8] = b"boson-relay/1";
