//! STUN wire codec ([RFC 8489]): zero-copy parsing, typed attributes, MESSAGE-INTEGRITY and
//! FINGERPRINT, and an encoder into caller-owned buffers. No state, no clock, no allocation.
//!
//! # Wire layout ([RFC 8489 §5])
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|     STUN Message Type     |         Message Length        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   Magic Cookie = 0x2112A442                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! |                     Transaction ID (96 bits)                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Attribute Type        |    Attribute Value Length     |  ┐ Message Length bytes
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  │ of TLV attributes,
//! |           Value (variable), zero-padded to 4 bytes        ... |  ┘ each 4-byte aligned
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The 14-bit message type interleaves a 12-bit method (M) and a 2-bit class (C):
//!
//! ```text
//!   13 12 11 10  9  8  7  6  5  4  3  2  1  0
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+
//! |M |M |M |M |M |C |M |M |M |C |M |M |M |M |
//! |11|10| 9| 8| 7| 1| 6| 5| 4| 0| 3| 2| 1| 0|
//! +--+--+--+--+--+--+--+--+--+--+--+--+--+--+
//! ```
//!
//! # Flow
//!
//! Receiving: [`classify`] the datagram, [`Message::parse`] it (structure only: header, TLV
//! lengths, positions of MESSAGE-INTEGRITY and FINGERPRINT), then
//! [`Message::verify_fingerprint`] if one is present, reject
//! [`Message::unknown_comprehension_required`] attributes with a 420, check
//! [`Message::verify_integrity`] where the method needs authentication, and only then decode the
//! attributes you need with [`Message::get`].
//!
//! Sending: [`Encoder::new`] writes the header, [`Encoder::add`] appends attributes, and
//! [`Encoder::finish`] appends MESSAGE-INTEGRITY and/or FINGERPRINT as the [`Trailer`] asks.
//!
//! [RFC 8489]: https://www.rfc-editor.org/rfc/rfc8489
//! [RFC 8489 §5]: https://www.rfc-editor.org/rfc/rfc8489#section-5

mod attr;
mod encode;
mod error;
mod fingerprint;
mod header;
mod integrity;
mod message;
pub mod password;

pub use attr::{
    AlternateServer, AttrType, Attribute, ErrorCode, ErrorCodeAttr, MappedAddress, Nonce,
    OtherAddress, Realm, ResponseOrigin, Software, UnknownAttributes, Username, XorMappedAddress,
};
pub(crate) use attr::{address_value_len, decode_xor_address, encode_xor_address};
pub use encode::{Encoder, Trailer};
pub use error::{AttrError, EncodeError, FingerprintError, IntegrityError, ParseError};
pub use fingerprint::FINGERPRINT_XOR;
pub use header::{Class, Header, MessageType, Method, TransactionId};
pub use integrity::{Authenticated, IntegrityKey, LongTermKey};
pub use message::{Attributes, Message, RawAttribute};
pub use password::{PasswordAlgorithm, PasswordAlgorithmAttr, PasswordAlgorithms};

/// Bytes 4..8 of every RFC 5389+ message; its presence tells modern STUN from RFC 3489 STUN and
/// from other protocols multiplexed on the same port.
/// [RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)
pub const MAGIC_COOKIE: u32 = 0x2112_A442; // 21 12 A4 42

/// Fixed header: type (2) + length (2) + cookie (4) + transaction id (12).
/// [RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)
pub const HEADER_LEN: usize = 20;

/// Attribute TLV header: type (2) + value length (2).
/// [RFC 8489 §14](https://www.rfc-editor.org/rfc/rfc8489#section-14)
pub const ATTR_HEADER_LEN: usize = 4;

/// Largest value of the 16-bit Message Length field that is a multiple of 4, hence the largest
/// attribute section a message can carry.
pub const MAX_BODY_LEN: usize = 0xFFFC;

/// What the first byte of a datagram says it is.
///
/// On a TURN port STUN and ChannelData share the 5-tuple and are told apart by the two most
/// significant bits ([RFC 8656 §12]): `0b00` is STUN, `0b01` is ChannelData (channel numbers
/// 0x4000..=0x7FFF), and `0b10`/`0b11` are reserved and must be dropped.
///
/// [RFC 8656 §12]: https://www.rfc-editor.org/rfc/rfc8656#section-12
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Top bits `0b00`: a STUN message candidate; [`Message::parse`] confirms it.
    Stun,
    /// Top bits `0b01`: a TURN ChannelData frame.
    ChannelData,
    /// Empty, or top bits `0b10`/`0b11`: neither.
    Other,
}

/// Classifies a datagram by its first two bits without parsing it. Constant time, never fails.
pub fn classify(datagram: &[u8]) -> PacketKind {
    let Some(&first) = datagram.first() else {
        return PacketKind::Other;
    };
    match first >> 6 {
        0b00 => PacketKind::Stun,
        0b01 => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Rounds an attribute value length up to the 4-byte boundary the next attribute starts on.
pub(crate) const fn padded_len(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_top_two_bits() {
        assert_eq!(classify(&[]), PacketKind::Other);
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[0x3F]), PacketKind::Stun);
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x00]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x7F, 0xFF]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80]), PacketKind::Other);
        assert_eq!(classify(&[0xC0]), PacketKind::Other);
    }

    #[test]
    fn padding_rounds_up_to_four() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 4);
        assert_eq!(padded_len(4), 4);
        assert_eq!(padded_len(11), 12);
        assert_eq!(padded_len(20), 20);
    }
}
