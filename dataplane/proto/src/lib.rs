//! Sans-IO protocol core of the BosonServer relay: STUN ([RFC 8489]) today, TURN ([RFC 8656])
//! on top of it next.
//!
//! # Contract
//!
//! This crate performs **no I/O, reads no clock and spawns no threads**. It never opens a socket,
//! never calls `Instant::now`, and never allocates per packet:
//!
//! * **Bytes in, decisions out.** A shell (the `dataplane` binary) receives datagrams, hands them
//!   in as `&[u8]` together with the source address, and gets back a decision by value: write `len`
//!   bytes to this address, absorb silently, or drop for a named [`DropReason`].
//! * **The caller owns every buffer.** Parsing borrows the input ([`stun::Message`] is a
//!   zero-copy view); encoding writes into a caller-provided `&mut [u8]` and returns the length.
//! * **Time is an input.** Nothing in the STUN layer is time-dependent. Stateful TURN parts will
//!   take `now: Instant` on every mutating call and expose `poll_timeout`/`handle_timeout`.
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
//! * [`stats`]: plain counters and [`DropReason`] labels, exported by the shell.
//!
//! # Drive loop (Binding only, so far)
//!
//! ```
//! use boson_dataplane_proto::{BindingConfig, BindingOutcome, ClientAddr, StunServer};
//!
//! let mut server = StunServer::new(BindingConfig::default());
//! let mut out = [0u8; 1500];
//! # let (src, datagram) = ("192.0.2.1:32853".parse().unwrap(), [0u8; 0]);
//! // For every datagram the socket yields:
//! match server.handle_datagram(ClientAddr::new(src), &datagram, &mut out) {
//!     BindingOutcome::Reply { dst, len } => { /* send &out[..len] to dst */ }
//!     BindingOutcome::Absorb => {}
//!     BindingOutcome::Drop(reason) => { /* log at debug level: reason.as_str() */ }
//! }
//! // On scrape: export server.stats().
//! ```
//!
//! [RFC 8489]: https://www.rfc-editor.org/rfc/rfc8489
//! [RFC 8656]: https://www.rfc-editor.org/rfc/rfc8656

pub mod binding;
pub mod stats;
pub mod stun;

pub use binding::{BindingConfig, BindingOutcome, ClientAddr, StunServer};
pub use stats::{DropCounters, DropReason, Stats};
