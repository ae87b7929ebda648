//! Typed errors of the STUN codec, one enum per stage: structure ([`ParseError`]), attribute
//! values ([`AttrError`]), authentication ([`IntegrityError`], [`FingerprintError`]) and
//! encoding ([`EncodeError`]). Every variant names one precise fault so a server can map it to a
//! drop reason or an error response without string matching.

use super::AttrType;

/// Why a datagram is not a well-formed STUN message. Each variant is a peer fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than the 20-byte header.
    #[error("{len} bytes is shorter than the 20-byte STUN header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// One of the two most significant bits is set: ChannelData or another protocol.
    #[error("the two most significant bits are not zero (first byte {first_byte:#04x})")]
    TopBitsNotZero {
        /// The offending first byte.
        first_byte: u8,
    },
    /// Bytes 4..8 are not 0x2112A442 (an RFC 3489 client, or not STUN at all).
    #[error("magic cookie is {found:#010x}, expected 0x2112a442")]
    WrongMagicCookie {
        /// The value found.
        found: u32,
    },
    /// The Message Length field is not a multiple of 4.
    #[error("message length {length} is not a multiple of 4")]
    LengthNotAligned {
        /// The Message Length field.
        length: u16,
    },
    /// The Message Length field disagrees with the datagram size.
    #[error("message length {length} does not match the {body} bytes after the header")]
    LengthMismatch {
        /// The Message Length field.
        length: u16,
        /// Bytes actually following the header.
        body: usize,
    },
    /// An attribute's value (with padding) runs past the end of the message.
    #[error(
        "attribute {attr:?} at offset {offset} declares {len} value bytes, past the message end"
    )]
    AttributeOverrun {
        /// Type of the attribute.
        attr: AttrType,
        /// Offset of its TLV header in the message.
        offset: usize,
        /// Its declared value length.
        len: u16,
    },
    /// MESSAGE-INTEGRITY (not 20), MESSAGE-INTEGRITY-SHA256 (not 16..=32 in steps of 4) or
    /// FINGERPRINT (not 4) with a length its position-sensitive processing cannot use.
    #[error("attribute {attr:?} has invalid length {len}")]
    InvalidAttributeLength {
        /// Type of the attribute.
        attr: AttrType,
        /// Its declared value length.
        len: u16,
    },
    /// An attribute follows FINGERPRINT, which must be the last attribute.
    #[error("attribute {attr:?} follows FINGERPRINT, which must be last")]
    AttributeAfterFingerprint {
        /// Type of the attribute after FINGERPRINT.
        attr: AttrType,
    },
}

/// Why an attribute value cannot be decoded, or a typed attribute cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttrError {
    /// The value length is impossible for this attribute.
    #[error("attribute {attr:?} has invalid value length {len}")]
    InvalidLength {
        /// Type of the attribute.
        attr: AttrType,
        /// The value length.
        len: usize,
    },
    /// An address attribute with a family other than 0x01 (IPv4) or 0x02 (IPv6).
    #[error("attribute {attr:?} has unknown address family {family:#04x}")]
    UnknownAddressFamily {
        /// Type of the attribute.
        attr: AttrType,
        /// The family byte.
        family: u8,
    },
    /// A text attribute that is not UTF-8.
    #[error("attribute {attr:?} is not valid UTF-8")]
    InvalidUtf8 {
        /// Type of the attribute.
        attr: AttrType,
    },
    /// A text attribute longer than its RFC limit in bytes.
    #[error("attribute {attr:?} is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Type of the attribute.
        attr: AttrType,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A text attribute with 128 or more characters.
    #[error("attribute {attr:?} has more than {max} characters")]
    TooManyChars {
        /// Type of the attribute.
        attr: AttrType,
        /// The limit in characters.
        max: usize,
    },
    /// A value outside the range its attribute allows (a CHANNEL-NUMBER outside
    /// 0x4000..=0x4FFF, for example).
    #[error("attribute {attr:?} has out-of-range value {value:#x}")]
    OutOfRange {
        /// Type of the attribute.
        attr: AttrType,
        /// The value found.
        value: u32,
    },
    /// ERROR-CODE with a class outside 3..=6 or a number above 99.
    #[error("error code class {class} number {number} is outside 300..=699")]
    InvalidErrorCode {
        /// The class (hundreds digit).
        class: u8,
        /// The number (last two digits).
        number: u8,
    },
}

/// Why MESSAGE-INTEGRITY does not authenticate a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message carries no MESSAGE-INTEGRITY (nor MESSAGE-INTEGRITY-SHA256).
    #[error("message has no MESSAGE-INTEGRITY")]
    Missing,
    /// The HMAC does not match: wrong key or tampered message.
    #[error("MESSAGE-INTEGRITY does not match")]
    Mismatch,
}

/// Why FINGERPRINT does not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The message carries no FINGERPRINT.
    #[error("message has no FINGERPRINT")]
    Missing,
    /// The CRC does not match: corruption, or another protocol that looks like STUN.
    #[error("FINGERPRINT is {found:#010x}, expected {expected:#010x}")]
    Mismatch {
        /// The value computed over the message.
        expected: u32,
        /// The value in the message.
        found: u32,
    },
}

/// Why a message cannot be encoded. None of these is a peer fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The caller's buffer cannot hold the message.
    #[error("buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes the message needs so far.
        needed: usize,
        /// Size of the buffer.
        available: usize,
    },
    /// The attributes would exceed the 16-bit Message Length field.
    #[error("message body of {len} bytes exceeds the 65532-byte maximum")]
    MessageTooLong {
        /// Body length the message would reach.
        len: usize,
    },
}
