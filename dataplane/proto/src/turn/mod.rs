//! The sans-IO TURN server ([RFC 8656]) over UDP, with TURN REST API credentials.
//!
//! # Flow
//!
//! ```text
//!  client ──(listener socket)──▶ handle_client_input ──▶ ClientAction::Reply   → listener → client
//!                                                     └─▶ ClientAction::Relay   → relay port → peer
//!  peer ───(relay socket)──────▶ handle_peer_input   ──▶ PeerAction::Forward   → listener → client
//!  timers ─────────────────────▶ handle_timeout        (expire allocations, permissions, channels)
//!  every call ─────────────────▶ next_command          (CreateAllocation / FreeAllocation)
//! ```
//!
//! A client first sends an Allocate without credentials and gets 401 with a REALM and a
//! stateless NONCE ([`nonce`] explains the format); it retries with USERNAME, REALM, NONCE and
//! MESSAGE-INTEGRITY under the long-term key derived from its REST credential. On success the
//! server takes a relay port from the host's [`PortTable`], queues
//! [`Command::CreateAllocation`] and answers with XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and
//! LIFETIME. CreatePermission and ChannelBind then open the relay to peers (after the
//! [`PeerFilter`]); data flows as Send/Data indications or, once a channel is bound, as
//! 4-byte-framed ChannelData ([`channel_data`]). Refresh extends or (LIFETIME 0) deletes the
//! allocation; otherwise it expires and the server queues [`Command::FreeAllocation`].
//!
//! # Choices where the RFC leaves room
//!
//! * **Authentication** follows RFC 8489 §9.2.4 in order: no MESSAGE-INTEGRITY → 401; missing
//!   USERNAME/REALM/NONCE → 400; a username that is not `<expiry>:<user>`, has expired (wall
//!   clock), or whose HMAC matches under none of the secrets → 401; then a stale or foreign
//!   nonce → 438. 401, 438 and these 400s carry no MESSAGE-INTEGRITY and are rate limited per
//!   source ([`TurnConfig::with_unauthenticated_rate`]). Every later response, success or
//!   error, carries MESSAGE-INTEGRITY, and FINGERPRINT if the request had one. A REST
//!   credential is checked on every request, so Refresh fails with 401 once it expired and
//!   the allocation runs out: clients must allocate again with a fresh credential.
//! * **EVEN-PORT** without the R bit gets an even port. With R (RTP/RTCP clients), the server
//!   allocates an even port P whose successor is free, reserves P + 1 for
//!   [`RESERVATION_LIFETIME`] and returns a RESERVATION-TOKEN for it; 508 if no such pair is
//!   free. An Allocate with that token, from any client address and on any worker sharing the
//!   [`PortTable`], gets P + 1; an unknown, expired or used token gets 508, and
//!   RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY is 400. The reservation
//!   outlives its allocation: it lapses only by time (or when the shell cannot bind P, since
//!   the client never saw the token then).
//! * **DONT-FRAGMENT** is accepted; the shell's relay sockets do not set DF per packet.
//! * **REQUESTED-ADDRESS-FAMILY** other than IPv4 → 440; peers must be IPv4 (443 otherwise,
//!   after the peer filter, so a denied IPv6 spelling of anything gets 403 first).
//!   ADDITIONAL-ADDRESS-FAMILY (comprehension-optional) is ignored.
//! * **Quotas**: allocations per user (the part of the REST username after the first `:`) →
//!   486; allocations per instance, an exhausted port range, permissions per allocation and
//!   channels per allocation → 508 Insufficient Capacity ("some capacity limit being reached",
//!   RFC 8656 §19). Every way an allocation ends frees its quota and port.
//! * **Draining** ([`Server::start_draining`]): new Allocates get 403 Forbidden (an
//!   administrative refusal, RFC 8656 §19); retransmissions of an Allocate that already
//!   succeeded, and every request on an existing allocation, keep working.
//! * **Unknown methods** and requests of the indication-only methods (Send, Data) are dropped
//!   without a response ([`DropReason::UnsupportedMethod`](crate::DropReason)): answering
//!   unauthenticated junk only helps reflection. Indications of request-only methods are
//!   dropped too.
//! * **Relaying** in either direction needs a live allocation and a live permission for the
//!   peer IP at `now`, checked on every packet, so a late `handle_timeout` never extends them.
//!   A peer on one of this host's own addresses must in addition be a live relay allocation
//!   of the host ([`PortTable::is_allocated`], one atomic load), also checked on every packet
//!   in both directions: a channel or permission toward a relay port whose allocation ended
//!   stops carrying traffic at once ([`DropReason::NotARelayPort`](crate::DropReason)), and
//!   carries it again only if that port becomes a relay allocation again (whose own
//!   permissions then decide what reaches its client).
//!
//! # Amplification bound
//!
//! A response to an unauthenticated request (401, 438, 400) is at most
//! `request length + 56 + padded(realm) + SOFTWARE TLV` bytes. It holds the header (20),
//! ERROR-CODE (24 with "Unauthenticated", the longest reason sent before authentication), REALM
//! (4 + padded realm), NONCE (4 + 24) and FINGERPRINT only if the request had one (8 on both
//! sides); the smallest request is a bare 20-byte header. The minimal well-formed Allocate
//! (header + REQUESTED-TRANSPORT, 28 bytes) gets 88 bytes back with a 10-character realm, a
//! ratio near 3:1, and the per-source rate limit caps how often.
//!
//! [RFC 8656]: https://www.rfc-editor.org/rfc/rfc8656

mod allocation;
pub mod attr;
pub mod channel_data;
mod config;
mod data_indication;
pub mod nonce;
mod peer_filter;
mod ports;
mod rate_limit;
mod server;
pub mod stream;

use std::fmt;
use std::net::SocketAddr;

pub use crate::binding::ClientAddr;
pub use boson_shared::{Cidr, CidrError};
pub use config::{
    CHANNEL_COOLDOWN, CHANNEL_LIFETIME, ConfigError, DEFAULT_LIFETIME, MAX_LIFETIME,
    NONCE_LIFETIME, PERMISSION_LIFETIME, PORT_QUARANTINE, RESERVATION_LIFETIME, TurnConfig,
};
pub use peer_filter::{Allowed, Denied, PeerFilter};
pub use ports::PortTable;
pub use server::{ClientAction, Command, Footprint, PeerAction, Server, TurnEvent};

/// Bytes the shell reserves before a peer payload so the server can prepend its
/// encapsulation in place: a Data indication header (20) + XOR-PEER-ADDRESS (4 + 20 for IPv6)
/// + DATA header (4) = 48. ChannelData needs only the last 4 of them.
pub const HEADROOM: usize = 48;

/// A peer's transport address: the far side of a relay port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(SocketAddr);

impl PeerAddr {
    /// Wraps a peer's address.
    pub const fn new(addr: SocketAddr) -> Self {
        Self(addr)
    }

    /// The address.
    pub const fn get(self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay port: the port of an allocation's relayed transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort(u16);

impl RelayPort {
    /// Wraps a port number.
    pub const fn new(port: u16) -> Self {
        Self(port)
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for RelayPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A TURN channel number, always in 0x4000..=0x7FFF.
///
/// [RFC 8656 §12](https://www.rfc-editor.org/rfc/rfc8656#section-12) narrowed the range to
/// 0x4000..=0x4FFF so that clients can multiplex more protocols on one 5-tuple (RFC 7983), but
/// RFC 5766 clients, coturn's own `turnutils_uclient` among them, still pick numbers up to
/// 0x7FFF. A server loses nothing by accepting them: the first two bits still tell ChannelData
/// from STUN, and a client that multiplexes simply never uses the upper numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// The first valid number.
    pub const MIN: Self = Self(0x4000);
    /// The last valid number (RFC 5766's range; see the type's doc).
    pub const MAX: Self = Self(0x7FFF);

    /// The channel `number`, if it is in 0x4000..=0x7FFF.
    pub const fn new(number: u16) -> Option<Self> {
        if Self::MIN.0 <= number && number <= Self::MAX.0 {
            Some(Self(number))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }
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
    fn channel_number_range() {
        assert_eq!(ChannelNumber::new(0x3FFF), None);
        assert_eq!(ChannelNumber::new(0x4000), Some(ChannelNumber::MIN));
        assert_eq!(
            ChannelNumber::new(0x4FFF).map(ChannelNumber::get),
            Some(0x4FFF)
        );
        assert_eq!(
            ChannelNumber::new(0x61A2).map(ChannelNumber::get),
            Some(0x61A2)
        );
        assert_eq!(ChannelNumber::new(0x7FFF), Some(ChannelNumber::MAX));
        assert_eq!(ChannelNumber::new(0x8000), None);
        assert_eq!(RelayPort::new(5).to_string(), "5");
        assert_eq!(
            PeerAddr::new("192.0.2.1:9".parse().unwrap()).to_string(),
            "192.0.2.1:9"
        );
    }
}
