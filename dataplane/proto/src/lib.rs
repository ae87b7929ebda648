//! Sans-IO protocol cores of the BosonServer relay: STUN ([RFC 8489]) and a TURN server
//! ([RFC 8656]) over UDP and byte streams (TCP, TLS: [`turn::stream`] frames them), and the
//! node relay between nodes and between relay hosts (the mesh), over WebSocket ([`ws`]) and
//! QUIC datagrams ([`quic`]).
//!
//! # Contract
//!
//! This crate performs **no I/O, reads no clock and spawns no threads**. It never opens a socket,
//! never calls `Instant::now`, and never allocates per relayed packet:
//!
//! * **Bytes in, decisions out.** A shell (the `dataplane` binary) receives datagrams, hands them
//!   in as `&[u8]` together with the source address, and gets back a decision by value: write `len`
//!   bytes to this address, relay this range to that peer, absorb silently, or drop for a named
//!   [`DropReason`]. Allocation changes become [`Command`]s the shell drains.
//! * **The caller owns every buffer.** Parsing borrows the input ([`stun::Message`] is a
//!   zero-copy view); encoding writes into a caller-provided `&mut [u8]` and returns the length.
//!   Peer payloads are encapsulated in place, in [`HEADROOM`] the shell reserves.
//! * **Time is an input.** Every mutating TURN call takes `now: Instant`;
//!   [`Server::poll_timeout`]/[`Server::handle_timeout`] drive expiry. Randomness comes from
//!   the caller's `R: RngCore`.
//! * **Errors are typed, drops are counted.** Codec errors are `#[non_exhaustive]` enums per
//!   layer ([`stun::ParseError`], [`stun::AttrError`], [`stun::EncodeError`], …). A bad packet is
//!   not an error that climbs the event loop: the server turns it into a [`DropReason`], counts it
//!   in [`Stats`] and returns it so the shell can log it, rate-limited.
//!
//! # Layout
//!
//! * [`stun`]: the wire codec (header, attributes, MESSAGE-INTEGRITY, FINGERPRINT, encoder) and
//!   the [`stun::classify`] demultiplexer that tells STUN from ChannelData.
//! * [`binding`]: the STUN Binding responder ([`StunServer`]).
//! * [`turn`]: the TURN server ([`Server`]), its attributes, ChannelData framing, peer filter
//!   and configuration.
//! * [`stats`]: plain counters, [`DropReason`] labels and the [`DropCounters`] every core's
//!   reasons are counted in, exported by the shell.
//! * [`ws`]: the node-to-node WebSocket relay ([`Hub`], [`Session`]), with its own RFC 6455
//!   codec and counters.
//! * [`quic`]: the same relay over QUIC datagrams ([`QuicRelay`]), on quinn-proto driven
//!   sans-IO. quinn owns its packet buffers, so this one path copies into buffers it
//!   reuses rather than being strictly allocation-free; its module doc says exactly where.
//!
//! # Drive loop (TURN)
//!
//! ```
//! use std::time::Instant;
//! use boson_dataplane_proto::{ClientAction, ClientAddr, Command, Server, TurnConfig};
//! use boson_shared::TurnSecret;
//! # struct Seeded(u64);
//! # impl rand_core::RngCore for Seeded {
//! #     fn next_u32(&mut self) -> u32 { self.next_u64() as u32 }
//! #     fn next_u64(&mut self) -> u64 { self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1); self.0 }
//! #     fn fill_bytes(&mut self, dst: &mut [u8]) { dst.fill_with(|| self.next_u64() as u8) }
//! # }
//! # #[expect(clippy::disallowed_methods, reason = "doc example")]
//! # let now = Instant::now();
//! # let (unix_now, rng) = (1_700_000_000, Seeded(1));
//! let config = TurnConfig::new(
//!     "example.org",
//!     vec![TurnSecret::new("shared secret")],
//!     "203.0.113.1".parse()?,
//!     49152..=65535,
//! )?;
//! let mut server = Server::new(config, rng, now, unix_now);
//! let mut out = [0u8; 2048];
//! # let (from, datagram) = (ClientAddr::new("192.0.2.1:32853".parse()?), [0u8; 0]);
//! // For every datagram on the listener socket:
//! match server.handle_client_input(now, from, &datagram, &mut out) {
//!     ClientAction::Reply { dst, len } => { /* send &out[..len] to dst */ }
//!     ClientAction::Relay { port, peer, payload } => { /* send &datagram[payload] from port */ }
//!     ClientAction::Absorb => {}
//!     ClientAction::Drop(reason) => { /* log at debug level: reason.as_str() */ }
//! }
//! while let Some(command) = server.next_command() {
//!     match command {
//!         Command::CreateAllocation { port } => { /* bind the relay socket */ }
//!         Command::FreeAllocation { port } => { /* close it */ }
//!     }
//! }
//! // Re-arm the timer at server.poll_timeout(); call server.handle_timeout(now) when it fires.
//! // On scrape: export server.stats().
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The Binding-only responder ([`StunServer`]) is driven the same way with
//! [`StunServer::handle_datagram`].
//!
//! [RFC 8489]: https://www.rfc-editor.org/rfc/rfc8489
//! [RFC 8656]: https://www.rfc-editor.org/rfc/rfc8656

pub mod binding;
pub mod quic;
pub mod stats;
pub mod stun;
#[cfg(feature = "testing")]
pub mod testing;
pub mod turn;
pub mod ws;

pub use binding::{BindingConfig, BindingOutcome, ClientAddr, StunServer};
pub use quic::{QuicConfig, QuicEvent, QuicRelay};
pub use stats::{DropCounters, DropReason, ErrorCounters, Reason, RelayCounters, Stats};
pub use turn::{
    ChannelNumber, ClientAction, Command, HEADROOM, PeerAction, PeerAddr, PeerFilter, RelayPort,
    Server, TurnConfig, TurnEvent,
};
pub use ws::{ConnId, Hub, HubEvent, Session, SessionEvent, WsConfig};
