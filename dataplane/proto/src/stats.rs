//! Plain counters for the shell to export, and the named reasons a datagram is dropped.
//!
//! No metrics registry lives here: each core thread owns its [`Stats`], and the shell reads them
//! with `stats()` and aggregates on scrape. [`DropReason::as_str`] labels are stable metric label
//! values; renaming one is a breaking change for dashboards.

use crate::stun::{ErrorCode, ParseError};

/// Writes a drop reason enum's table from one list of `Variant => "label"`: `ALL` (every
/// reason, in the list's order, which is the declaration order), `COUNT`, the stable
/// `as_str` labels, and the [`Reason`] impl that indexes [`DropCounters`] by it. The list is
/// also `as_str`'s match, so the compiler refuses a list that leaves a reason out.
macro_rules! drop_reasons {
    ($reason:ty { $($variant:ident => $label:literal,)+ }) => {
        impl $reason {
            /// Every reason, in declaration order (the order of
            /// [`DropCounters::iter`](crate::stats::DropCounters::iter)).
            pub const ALL: [Self; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];

            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// Stable `snake_case` label for metrics and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl $crate::stats::Reason for $reason {
            type Counts = [u64; Self::COUNT];
            const ALL: &'static [Self] = &Self::ALL;

            #[inline]
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

pub(crate) use drop_reasons;

/// Why a datagram was dropped without a response.
///
/// Drops are not errors: the server counts them and returns them so the shell can log at debug
/// level, rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Empty, or the first two bits are not `0b00` (ChannelData, or not STUN/TURN at all).
    NotStun,
    /// Shorter than the 20-byte STUN header.
    Truncated,
    /// Message Length not a multiple of 4, or not matching the datagram.
    BadLength,
    /// No RFC 5389+ magic cookie: an RFC 3489 client, or another protocol.
    BadMagicCookie,
    /// An attribute overruns the message, has an impossible length, or follows FINGERPRINT.
    MalformedAttribute,
    /// FINGERPRINT present but wrong.
    BadFingerprint,
    /// A success or error response sent to the server.
    UnexpectedResponse,
    /// A method this server does not handle.
    UnsupportedMethod,
    /// An indication with unknown comprehension-required attributes; RFC 8489 §6.3.2 says to
    /// discard it silently.
    UnknownAttributeInIndication,
    /// The caller's output buffer cannot hold the response (or, for peer data, the
    /// encapsulation).
    BufferTooSmall,
    /// ChannelData shorter than its 4-byte header or than the length it declares.
    ChannelDataTruncated,
    /// ChannelData followed by more than the 3 padding bytes UDP allows.
    ChannelDataTrailingBytes,
    /// ChannelData on a channel that is not bound (or whose binding expired).
    UnboundChannel,
    /// ChannelData or a Send indication from a 5-tuple without an allocation, or peer data for
    /// a relay port without one.
    NoAllocation,
    /// Relaying needs a live permission for the peer's IP, and there is none.
    NoPermission,
    /// A Send indication toward a peer the peer filter denies.
    PeerFiltered,
    /// ChannelData or a Send indication toward, or peer data from, one of this host's own
    /// addresses on a port that is not a live relay allocation (a local service, or a relay
    /// port whose allocation ended since the permission or channel was made).
    NotARelayPort,
    /// A Send indication toward a peer of another address family than the relay.
    PeerFamilyMismatch,
    /// A Send indication without XOR-PEER-ADDRESS or DATA, or with undecodable ones.
    MalformedIndication,
    /// An indication of a method that has none (or a Data indication from a client).
    UnexpectedIndication,
    /// A response before authentication (401, 438, 400) over the source's rate limit.
    RateLimited,
    /// Peer data too large to encapsulate (ChannelData or STUN length field overflow).
    PayloadTooLarge,
}

drop_reasons!(DropReason {
    NotStun => "not_stun",
    Truncated => "truncated",
    BadLength => "bad_length",
    BadMagicCookie => "bad_magic_cookie",
    MalformedAttribute => "malformed_attribute",
    BadFingerprint => "bad_fingerprint",
    UnexpectedResponse => "unexpected_response",
    UnsupportedMethod => "unsupported_method",
    UnknownAttributeInIndication => "unknown_attribute_in_indication",
    BufferTooSmall => "buffer_too_small",
    ChannelDataTruncated => "channel_data_truncated",
    ChannelDataTrailingBytes => "channel_data_trailing_bytes",
    UnboundChannel => "unbound_channel",
    NoAllocation => "no_allocation",
    NoPermission => "no_permission",
    PeerFiltered => "peer_filtered",
    NotARelayPort => "not_a_relay_port",
    PeerFamilyMismatch => "peer_family_mismatch",
    MalformedIndication => "malformed_indication",
    UnexpectedIndication => "unexpected_indication",
    RateLimited => "rate_limited",
    PayloadTooLarge => "payload_too_large",
});

impl From<ParseError> for DropReason {
    fn from(err: ParseError) -> Self {
        match err {
            ParseError::TooShort { .. } => Self::Truncated,
            ParseError::TopBitsNotZero { .. } => Self::NotStun,
            ParseError::WrongMagicCookie { .. } => Self::BadMagicCookie,
            ParseError::LengthNotAligned { .. } | ParseError::LengthMismatch { .. } => {
                Self::BadLength
            }
            ParseError::AttributeOverrun { .. }
            | ParseError::InvalidAttributeLength { .. }
            | ParseError::AttributeAfterFingerprint { .. } => Self::MalformedAttribute,
        }
    }
}

/// A set of named reasons for dropping input: a fieldless enum, one per protocol core (TURN
/// here, [`crate::ws::DropReason`], [`crate::quic::DropReason`]), counted by [`DropCounters`].
pub trait Reason: Copy + 'static {
    /// One counter per reason: `[u64; COUNT]`.
    type Counts: AsRef<[u64]> + AsMut<[u64]> + Copy + Default + Eq + std::fmt::Debug;
    /// Every reason, in declaration order (the order of [`DropCounters::iter`]).
    const ALL: &'static [Self];
    /// Position in [`ALL`](Self::ALL) and in the counter array.
    fn index(self) -> usize;
}

/// Checks that `R::ALL` is in index order and `label` gives every reason a label of its own.
#[cfg(test)]
pub(crate) fn assert_reasons_in_order_with_unique_labels<R: Reason>(label: fn(R) -> &'static str) {
    for (i, reason) in R::ALL.iter().enumerate() {
        assert_eq!(reason.index(), i);
    }
    let mut labels: Vec<_> = R::ALL.iter().map(|&r| label(r)).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), R::ALL.len());
}

/// One counter per reason of `R` ([`DropReason`] by default: the TURN core's).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DropCounters<R: Reason = DropReason>(R::Counts);

impl<R: Reason> Default for DropCounters<R> {
    fn default() -> Self {
        Self(R::Counts::default())
    }
}

impl<R: Reason> std::fmt::Debug for DropCounters<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DropCounters").field(&self.0).finish()
    }
}

impl<R: Reason> DropCounters<R> {
    /// Drops counted for `reason`.
    pub fn get(&self, reason: R) -> u64 {
        self.0.as_ref()[reason.index()]
    }

    /// Every reason with its count, in [`Reason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::ALL.iter().copied().zip(self.0.as_ref().iter().copied())
    }

    /// Drops of any reason.
    pub fn total(&self) -> u64 {
        self.0.as_ref().iter().sum()
    }

    #[inline]
    pub(crate) fn record(&mut self, reason: R) {
        self.add(reason, 1);
    }

    #[inline]
    pub(crate) fn add(&mut self, reason: R, n: u64) {
        self.0.as_mut()[reason.index()] += n;
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.0.as_mut().iter_mut().zip(other.0.as_ref()) {
            *mine += theirs;
        }
    }
}

/// Error responses sent, by code. The codes the TURN server sends have their own counter;
/// anything else lands in [`other`](Self::other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorCounters {
    counts: [u64; Self::CODES.len()],
    other: u64,
}

impl ErrorCounters {
    /// The codes with a counter of their own, in [`iter`](Self::iter) order.
    pub const CODES: [ErrorCode; 13] = [
        ErrorCode::BAD_REQUEST,
        ErrorCode::UNAUTHENTICATED,
        ErrorCode::FORBIDDEN,
        ErrorCode::UNKNOWN_ATTRIBUTE,
        ErrorCode::ALLOCATION_MISMATCH,
        ErrorCode::STALE_NONCE,
        ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
        ErrorCode::WRONG_CREDENTIALS,
        ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
        ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
        ErrorCode::ALLOCATION_QUOTA_REACHED,
        ErrorCode::SERVER_ERROR,
        ErrorCode::INSUFFICIENT_CAPACITY,
    ];

    /// Responses sent with `code` (0 for a code without its own counter).
    pub fn get(&self, code: ErrorCode) -> u64 {
        Self::CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.counts[i])
    }

    /// Responses with a code outside [`CODES`](Self::CODES).
    pub const fn other(&self) -> u64 {
        self.other
    }

    /// Every code with its own counter, with its count.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        Self::CODES.into_iter().zip(self.counts.iter().copied())
    }

    /// Error responses of any code.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.other
    }

    pub(crate) fn record(&mut self, code: ErrorCode) {
        match Self::CODES.iter().position(|c| *c == code) {
            Some(i) => self.counts[i] += 1,
            None => self.other += 1,
        }
    }
}

/// Packets and payload bytes relayed in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayCounters {
    /// Datagrams relayed.
    pub packets: u64,
    /// Application payload bytes relayed (without ChannelData or STUN framing).
    pub bytes: u64,
}

impl RelayCounters {
    pub(crate) const fn record(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// Counters of the STUN Binding responder and the TURN server. Plain `u64`s: monotonically
/// increasing, except the gauges, which say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Well-formed Binding requests answered (success or error).
    pub binding_requests: u64,
    /// Binding success responses written.
    pub binding_success: u64,
    /// Binding error responses written (420 Unknown Attribute).
    pub binding_errors: u64,
    /// Binding indications absorbed (keepalives).
    pub binding_indications: u64,
    /// Datagrams dropped, by reason.
    pub drops: DropCounters,
    /// Gauge: live TURN allocations.
    pub allocations: u64,
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that expired (lifetime ran out without a Refresh).
    pub allocations_expired: u64,
    /// Allocations deleted by a Refresh with LIFETIME 0, or because the shell could not bind
    /// their port.
    pub allocations_deleted: u64,
    /// Gauge: installed permissions, over all allocations.
    pub permissions: u64,
    /// Gauge: channel bindings, over all allocations, including those in their post-expiry
    /// cooldown.
    pub channels: u64,
    /// TURN success responses (Allocate, Refresh, CreatePermission, ChannelBind).
    pub success_responses: u64,
    /// TURN error responses, by code.
    pub error_responses: ErrorCounters,
    /// ChannelData and Send-indication payloads relayed from clients to peers.
    pub client_to_peer: RelayCounters,
    /// Peer datagrams relayed to clients as ChannelData or Data indications.
    pub peer_to_client: RelayCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_with_unique_labels() {
        assert_reasons_in_order_with_unique_labels(DropReason::as_str);
    }

    #[test]
    fn counters_record_and_iterate() {
        let mut c = DropCounters::default();
        c.record(DropReason::BadFingerprint);
        c.record(DropReason::BadFingerprint);
        c.record(DropReason::NotStun);
        assert_eq!(c.get(DropReason::BadFingerprint), 2);
        assert_eq!(c.total(), 3);
        let nonzero: Vec<_> = c.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            nonzero,
            [(DropReason::NotStun, 1), (DropReason::BadFingerprint, 2)]
        );
    }

    #[test]
    fn parse_errors_map_to_reasons() {
        assert_eq!(
            DropReason::from(ParseError::TooShort { len: 3 }),
            DropReason::Truncated
        );
        assert_eq!(
            DropReason::from(ParseError::LengthMismatch { length: 4, body: 0 }),
            DropReason::BadLength
        );
        assert_eq!(
            DropReason::from(ParseError::WrongMagicCookie { found: 0 }),
            DropReason::BadMagicCookie
        );
    }
}
