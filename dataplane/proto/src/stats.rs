//! Plain counters for the shell to export, and the named reasons a datagram is dropped.
//!
//! No metrics registry lives here: each core thread owns its [`Stats`], and the shell reads them
//! with `stats()` and aggregates on scrape. [`DropReason::as_str`] labels are stable metric label
//! values; renaming one is a breaking change for dashboards.

use crate::stun::ParseError;

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
    /// The caller's output buffer cannot hold the response.
    BufferTooSmall,
}

impl DropReason {
    /// Every reason, in declaration order (the order of [`DropCounters::iter`]).
    pub const ALL: [Self; 10] = [
        Self::NotStun,
        Self::Truncated,
        Self::BadLength,
        Self::BadMagicCookie,
        Self::MalformedAttribute,
        Self::BadFingerprint,
        Self::UnexpectedResponse,
        Self::UnsupportedMethod,
        Self::UnknownAttributeInIndication,
        Self::BufferTooSmall,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// Stable `snake_case` label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStun => "not_stun",
            Self::Truncated => "truncated",
            Self::BadLength => "bad_length",
            Self::BadMagicCookie => "bad_magic_cookie",
            Self::MalformedAttribute => "malformed_attribute",
            Self::BadFingerprint => "bad_fingerprint",
            Self::UnexpectedResponse => "unexpected_response",
            Self::UnsupportedMethod => "unsupported_method",
            Self::UnknownAttributeInIndication => "unknown_attribute_in_indication",
            Self::BufferTooSmall => "buffer_too_small",
        }
    }

    /// Position in [`ALL`](Self::ALL) and in the counter array.
    const fn index(self) -> usize {
        self as usize
    }
}

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

/// One counter per [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    /// Drops counted for `reason`.
    pub const fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().zip(self.0.iter().copied())
    }

    /// Drops of any reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) const fn record(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
}

/// Counters of the STUN Binding responder. Plain `u64`s, monotonically increasing.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_with_unique_labels() {
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
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
