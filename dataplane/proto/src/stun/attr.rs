//! Attribute types and typed attribute values.
//!
//! Every attribute is a TLV padded to 4 bytes ([RFC 8489 §14]):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Type                  |            Length             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         Value (variable)                ....
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Types `0x0000..=0x7FFF` are comprehension-required (an agent that does not understand one
//! must reject the request with 420), `0x8000..=0xFFFF` comprehension-optional (ignored when not
//! understood).
//!
//! The registry is open: a typed attribute is any type implementing [`Attribute`], so the TURN
//! layer adds its own (XOR-PEER-ADDRESS, LIFETIME, …) next to the STUN ones defined here, and
//! [`Message::get`](super::Message::get) and [`Encoder::add`](super::Encoder::add) work for all
//! of them. MESSAGE-INTEGRITY and FINGERPRINT are not [`Attribute`]s: their position in the
//! message matters, so [`Message`](super::Message) and [`Encoder`](super::Encoder) handle them.
//!
//! [RFC 8489 §14]: https://www.rfc-editor.org/rfc/rfc8489#section-14

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{AttrError, MAGIC_COOKIE, TransactionId};

/// A 16-bit attribute type. [RFC 8489 §18.3](https://www.rfc-editor.org/rfc/rfc8489#section-18.3)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrType(u16);

impl AttrType {
    // STUN, comprehension-required. RFC 8489 §18.3.1
    /// [RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)
    pub const MAPPED_ADDRESS: Self = Self(0x0001); // 0 | family | port | address (4 or 16)
    /// [RFC 8489 §14.3](https://www.rfc-editor.org/rfc/rfc8489#section-14.3)
    pub const USERNAME: Self = Self(0x0006); // UTF-8, < 509 bytes
    /// [RFC 8489 §14.5](https://www.rfc-editor.org/rfc/rfc8489#section-14.5)
    pub const MESSAGE_INTEGRITY: Self = Self(0x0008); // HMAC-SHA1 (20)
    /// [RFC 8489 §14.8](https://www.rfc-editor.org/rfc/rfc8489#section-14.8)
    pub const ERROR_CODE: Self = Self(0x0009); // 0 (21 bits) | class (3) | number (8) | reason
    /// [RFC 8489 §14.13](https://www.rfc-editor.org/rfc/rfc8489#section-14.13)
    pub const UNKNOWN_ATTRIBUTES: Self = Self(0x000A); // n × type (2)
    /// [RFC 8489 §14.9](https://www.rfc-editor.org/rfc/rfc8489#section-14.9)
    pub const REALM: Self = Self(0x0014); // UTF-8, < 128 chars
    /// [RFC 8489 §14.10](https://www.rfc-editor.org/rfc/rfc8489#section-14.10)
    pub const NONCE: Self = Self(0x0015); // UTF-8, < 128 chars
    /// [RFC 8489 §14.6](https://www.rfc-editor.org/rfc/rfc8489#section-14.6)
    pub const MESSAGE_INTEGRITY_SHA256: Self = Self(0x001C); // HMAC-SHA256, truncated (16..=32)
    /// [RFC 8489 §14.12](https://www.rfc-editor.org/rfc/rfc8489#section-14.12)
    pub const PASSWORD_ALGORITHM: Self = Self(0x001D); // algorithm (2) | params len (2) | params
    /// [RFC 8489 §14.4](https://www.rfc-editor.org/rfc/rfc8489#section-14.4)
    pub const USERHASH: Self = Self(0x001E); // SHA-256 (32)
    /// [RFC 8489 §14.2](https://www.rfc-editor.org/rfc/rfc8489#section-14.2)
    pub const XOR_MAPPED_ADDRESS: Self = Self(0x0020); // 0 | family | port^c | address^(c‖tid)

    // STUN, comprehension-optional. RFC 8489 §18.3.2
    /// [RFC 8489 §14.11](https://www.rfc-editor.org/rfc/rfc8489#section-14.11)
    pub const PASSWORD_ALGORITHMS: Self = Self(0x8002); // n × PASSWORD-ALGORITHM
    /// [RFC 8489 §14.16](https://www.rfc-editor.org/rfc/rfc8489#section-14.16)
    pub const ALTERNATE_DOMAIN: Self = Self(0x8003); // ASCII host name
    /// [RFC 8489 §14.14](https://www.rfc-editor.org/rfc/rfc8489#section-14.14)
    pub const SOFTWARE: Self = Self(0x8022); // UTF-8, < 128 chars
    /// [RFC 8489 §14.15](https://www.rfc-editor.org/rfc/rfc8489#section-14.15)
    pub const ALTERNATE_SERVER: Self = Self(0x8023); // as MAPPED-ADDRESS
    /// [RFC 8489 §14.7](https://www.rfc-editor.org/rfc/rfc8489#section-14.7)
    pub const FINGERPRINT: Self = Self(0x8028); // CRC-32 ^ 0x5354554E (4)

    // NAT behaviour discovery, comprehension-optional. RFC 5780 §7
    /// [RFC 5780 §7.3](https://www.rfc-editor.org/rfc/rfc5780#section-7.3)
    pub const RESPONSE_ORIGIN: Self = Self(0x802B); // as MAPPED-ADDRESS
    /// [RFC 5780 §7.4](https://www.rfc-editor.org/rfc/rfc5780#section-7.4)
    pub const OTHER_ADDRESS: Self = Self(0x802C); // as MAPPED-ADDRESS

    // TURN, comprehension-required. RFC 8656 §18
    /// [RFC 8656 §18.1](https://www.rfc-editor.org/rfc/rfc8656#section-18.1)
    pub const CHANNEL_NUMBER: Self = Self(0x000C); // channel (2) | RFFU (2)
    /// [RFC 8656 §18.2](https://www.rfc-editor.org/rfc/rfc8656#section-18.2)
    pub const LIFETIME: Self = Self(0x000D); // seconds (4)
    /// [RFC 8656 §18.3](https://www.rfc-editor.org/rfc/rfc8656#section-18.3)
    pub const XOR_PEER_ADDRESS: Self = Self(0x0012); // as XOR-MAPPED-ADDRESS
    /// [RFC 8656 §18.4](https://www.rfc-editor.org/rfc/rfc8656#section-18.4)
    pub const DATA: Self = Self(0x0013); // application payload
    /// [RFC 8656 §18.5](https://www.rfc-editor.org/rfc/rfc8656#section-18.5)
    pub const XOR_RELAYED_ADDRESS: Self = Self(0x0016); // as XOR-MAPPED-ADDRESS
    /// [RFC 8656 §18.6](https://www.rfc-editor.org/rfc/rfc8656#section-18.6)
    pub const REQUESTED_ADDRESS_FAMILY: Self = Self(0x0017); // family (1) | RFFU (3)
    /// [RFC 8656 §18.7](https://www.rfc-editor.org/rfc/rfc8656#section-18.7)
    pub const EVEN_PORT: Self = Self(0x0018); // R bit | RFFU (7 bits)
    /// [RFC 8656 §18.8](https://www.rfc-editor.org/rfc/rfc8656#section-18.8)
    pub const REQUESTED_TRANSPORT: Self = Self(0x0019); // protocol (1) | RFFU (3)
    /// [RFC 8656 §18.9](https://www.rfc-editor.org/rfc/rfc8656#section-18.9)
    pub const DONT_FRAGMENT: Self = Self(0x001A); // empty
    /// [RFC 8656 §18.10](https://www.rfc-editor.org/rfc/rfc8656#section-18.10)
    pub const RESERVATION_TOKEN: Self = Self(0x0022); // token (8)

    // TURN, comprehension-optional. RFC 8656 §18
    /// [RFC 8656 §18.11](https://www.rfc-editor.org/rfc/rfc8656#section-18.11)
    pub const ADDITIONAL_ADDRESS_FAMILY: Self = Self(0x8000); // family (1) | RFFU (3)
    /// [RFC 8656 §18.12](https://www.rfc-editor.org/rfc/rfc8656#section-18.12)
    pub const ADDRESS_ERROR_CODE: Self = Self(0x8001); // family | RFFU | class | number | reason
    /// [RFC 8656 §18.13](https://www.rfc-editor.org/rfc/rfc8656#section-18.13)
    pub const ICMP: Self = Self(0x8004); // RFFU (2) | type (1) | code (1) | error data (4)

    /// Wraps a raw type number.
    pub const fn new(value: u16) -> Self {
        Self(value)
    }

    /// The raw type number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// Types below 0x8000 must be understood, or the request is rejected with 420.
    /// [RFC 8489 §14](https://www.rfc-editor.org/rfc/rfc8489#section-14)
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// Whether RFC 8489 defines this type. The default "known" set of a plain STUN server.
    pub const fn is_stun(self) -> bool {
        matches!(
            self,
            Self::MAPPED_ADDRESS
                | Self::USERNAME
                | Self::MESSAGE_INTEGRITY
                | Self::ERROR_CODE
                | Self::UNKNOWN_ATTRIBUTES
                | Self::REALM
                | Self::NONCE
                | Self::MESSAGE_INTEGRITY_SHA256
                | Self::PASSWORD_ALGORITHM
                | Self::USERHASH
                | Self::XOR_MAPPED_ADDRESS
                | Self::PASSWORD_ALGORITHMS
                | Self::ALTERNATE_DOMAIN
                | Self::SOFTWARE
                | Self::ALTERNATE_SERVER
                | Self::FINGERPRINT
        )
    }

    /// Whether RFC 8656 (TURN) defines this type.
    pub const fn is_turn(self) -> bool {
        matches!(
            self,
            Self::CHANNEL_NUMBER
                | Self::LIFETIME
                | Self::XOR_PEER_ADDRESS
                | Self::DATA
                | Self::XOR_RELAYED_ADDRESS
                | Self::REQUESTED_ADDRESS_FAMILY
                | Self::EVEN_PORT
                | Self::REQUESTED_TRANSPORT
                | Self::DONT_FRAGMENT
                | Self::RESERVATION_TOKEN
                | Self::ADDITIONAL_ADDRESS_FAMILY
                | Self::ADDRESS_ERROR_CODE
                | Self::ICMP
        )
    }

    /// The IANA name, for the types this crate knows.
    pub const fn name(self) -> Option<&'static str> {
        let name = match self {
            Self::MAPPED_ADDRESS => "MAPPED-ADDRESS",
            Self::USERNAME => "USERNAME",
            Self::MESSAGE_INTEGRITY => "MESSAGE-INTEGRITY",
            Self::ERROR_CODE => "ERROR-CODE",
            Self::UNKNOWN_ATTRIBUTES => "UNKNOWN-ATTRIBUTES",
            Self::REALM => "REALM",
            Self::NONCE => "NONCE",
            Self::MESSAGE_INTEGRITY_SHA256 => "MESSAGE-INTEGRITY-SHA256",
            Self::PASSWORD_ALGORITHM => "PASSWORD-ALGORITHM",
            Self::USERHASH => "USERHASH",
            Self::XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS",
            Self::PASSWORD_ALGORITHMS => "PASSWORD-ALGORITHMS",
            Self::ALTERNATE_DOMAIN => "ALTERNATE-DOMAIN",
            Self::SOFTWARE => "SOFTWARE",
            Self::ALTERNATE_SERVER => "ALTERNATE-SERVER",
            Self::FINGERPRINT => "FINGERPRINT",
            Self::RESPONSE_ORIGIN => "RESPONSE-ORIGIN",
            Self::OTHER_ADDRESS => "OTHER-ADDRESS",
            Self::CHANNEL_NUMBER => "CHANNEL-NUMBER",
            Self::LIFETIME => "LIFETIME",
            Self::XOR_PEER_ADDRESS => "XOR-PEER-ADDRESS",
            Self::DATA => "DATA",
            Self::XOR_RELAYED_ADDRESS => "XOR-RELAYED-ADDRESS",
            Self::REQUESTED_ADDRESS_FAMILY => "REQUESTED-ADDRESS-FAMILY",
            Self::EVEN_PORT => "EVEN-PORT",
            Self::REQUESTED_TRANSPORT => "REQUESTED-TRANSPORT",
            Self::DONT_FRAGMENT => "DONT-FRAGMENT",
            Self::RESERVATION_TOKEN => "RESERVATION-TOKEN",
            Self::ADDITIONAL_ADDRESS_FAMILY => "ADDITIONAL-ADDRESS-FAMILY",
            Self::ADDRESS_ERROR_CODE => "ADDRESS-ERROR-CODE",
            Self::ICMP => "ICMP",
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Debug for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "AttrType({:#06x})", self.0),
        }
    }
}

/// A typed attribute value: decoded zero-copy from a received message, encoded into a
/// caller-owned buffer.
///
/// `'a` is the lifetime of the message bytes a decoded value may borrow. The transaction id is
/// passed to both directions because the XOR address attributes mix it in.
pub trait Attribute<'a>: Sized {
    /// The attribute type this value is carried in.
    const TYPE: AttrType;

    /// Decodes the value bytes (without TLV header and padding).
    fn decode(value: &'a [u8], transaction_id: &TransactionId) -> Result<Self, AttrError>;

    /// Length of the encoded value in bytes, without padding.
    fn value_len(&self) -> usize;

    /// Writes the value into `out`, which is exactly [`value_len`](Self::value_len) bytes long.
    fn encode_value(&self, transaction_id: &TransactionId, out: &mut [u8]);
}

// ---------------------------------------------------------------------------------------------
// Addresses: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS (and, later, the TURN XOR addresses).
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |0 0 0 0 0 0 0 0|    Family     |         (X-)Port              |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                 (X-)Address (32 bits or 128 bits)             |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// Address family byte for IPv4. [RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)
const FAMILY_IPV4: u8 = 0x01;
/// Address family byte for IPv6. [RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)
const FAMILY_IPV6: u8 = 0x02;

/// Whether an address attribute is sent in the clear or XOR-ed with cookie and transaction id.
/// XOR exists because some NATs rewrite any 32-bit value that looks like their public address.
/// [RFC 8489 §14.2](https://www.rfc-editor.org/rfc/rfc8489#section-14.2)
#[derive(Clone, Copy)]
enum Obfuscation {
    Plain,
    Xor,
}

impl Obfuscation {
    /// The 16 bytes an address is XOR-ed with: cookie ‖ transaction id (IPv4 uses the first 4).
    fn mask(self, transaction_id: &TransactionId) -> [u8; 16] {
        let mut mask = [0; 16];
        if let Self::Xor = self {
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(transaction_id.as_bytes());
        }
        mask
    }
}

fn decode_address(
    attr: AttrType,
    value: &[u8],
    obfuscation: Obfuscation,
    transaction_id: &TransactionId,
) -> Result<SocketAddr, AttrError> {
    let invalid_length = AttrError::InvalidLength {
        attr,
        len: value.len(),
    };
    let Some((head, address)) = value.split_first_chunk::<4>() else {
        return Err(invalid_length);
    };
    // head[0] is reserved: "MUST be ignored by receivers" (RFC 8489 §14.1).
    let family = head[1];
    let mask = obfuscation.mask(transaction_id);
    let port = u16::from_be_bytes([head[2] ^ mask[0], head[3] ^ mask[1]]);
    let ip = match family {
        FAMILY_IPV4 => {
            let Ok(octets) = <[u8; 4]>::try_from(address) else {
                return Err(invalid_length);
            };
            let mut xored = [0; 4];
            for (i, byte) in xored.iter_mut().enumerate() {
                *byte = octets[i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(xored))
        }
        FAMILY_IPV6 => {
            let Ok(octets) = <[u8; 16]>::try_from(address) else {
                return Err(invalid_length);
            };
            let mut xored = [0; 16];
            for (i, byte) in xored.iter_mut().enumerate() {
                *byte = octets[i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(xored))
        }
        family => return Err(AttrError::UnknownAddressFamily { attr, family }),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes an XOR-ed address attribute value (XOR-MAPPED-ADDRESS layout), for the TURN layer's
/// XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS.
pub(crate) fn decode_xor_address(
    attr: AttrType,
    value: &[u8],
    transaction_id: &TransactionId,
) -> Result<SocketAddr, AttrError> {
    decode_address(attr, value, Obfuscation::Xor, transaction_id)
}

/// Encodes an XOR-ed address attribute value into `out` ([`address_value_len`] bytes).
pub(crate) fn encode_xor_address(
    addr: &SocketAddr,
    transaction_id: &TransactionId,
    out: &mut [u8],
) {
    encode_address(addr, Obfuscation::Xor, transaction_id, out);
}

pub(crate) const fn address_value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 4 + 4,
        SocketAddr::V6(_) => 4 + 16,
    }
}

fn encode_address(
    addr: &SocketAddr,
    obfuscation: Obfuscation,
    transaction_id: &TransactionId,
    out: &mut [u8],
) {
    let mask = obfuscation.mask(transaction_id);
    let port = addr.port().to_be_bytes();
    let (family, octets): (u8, &[u8]) = match addr.ip() {
        IpAddr::V4(ip) => (FAMILY_IPV4, &ip.octets()),
        IpAddr::V6(ip) => (FAMILY_IPV6, &ip.octets()),
    };
    out[0] = 0;
    out[1] = family;
    out[2] = port[0] ^ mask[0];
    out[3] = port[1] ^ mask[1];
    for ((dst, src), m) in out[4..].iter_mut().zip(octets).zip(mask) {
        *dst = src ^ m;
    }
}

/// Defines a newtype over `SocketAddr` carried in an address attribute.
macro_rules! address_attribute {
    ($(#[$doc:meta])* $name:ident, $attr:expr, $obfuscation:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttrType = $attr;

            fn decode(value: &'a [u8], transaction_id: &TransactionId) -> Result<Self, AttrError> {
                let addr =
                    decode_address(Self::TYPE, value, Obfuscation::$obfuscation, transaction_id)?;
                Ok(Self(addr))
            }

            fn value_len(&self) -> usize {
                address_value_len(&self.0)
            }

            fn encode_value(&self, transaction_id: &TransactionId, out: &mut [u8]) {
                encode_address(&self.0, Obfuscation::$obfuscation, transaction_id, out);
            }
        }
    };
}

address_attribute!(
    /// MAPPED-ADDRESS: the reflexive address in the clear. Only sent for RFC 3489 clients;
    /// decoded for completeness. [RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)
    MappedAddress,
    AttrType::MAPPED_ADDRESS,
    Plain
);

address_attribute!(
    /// XOR-MAPPED-ADDRESS: the reflexive address XOR-ed with the magic cookie (port, IPv4) and
    /// cookie ‖ transaction id (IPv6).
    /// [RFC 8489 §14.2](https://www.rfc-editor.org/rfc/rfc8489#section-14.2)
    XorMappedAddress,
    AttrType::XOR_MAPPED_ADDRESS,
    Xor
);

address_attribute!(
    /// ALTERNATE-SERVER: where a 300 (Try Alternate) sends the client, in the clear, of the
    /// request's address family. [RFC 8489 §14.15](https://www.rfc-editor.org/rfc/rfc8489#section-14.15)
    AlternateServer,
    AttrType::ALTERNATE_SERVER,
    Plain
);

address_attribute!(
    /// RESPONSE-ORIGIN: the address a Binding response was sent from, in the clear, so the
    /// client can tell which of the server's addresses answered.
    /// [RFC 5780 §7.3](https://www.rfc-editor.org/rfc/rfc5780#section-7.3)
    ResponseOrigin,
    AttrType::RESPONSE_ORIGIN,
    Plain
);

address_attribute!(
    /// OTHER-ADDRESS: the server's other address (another IP, port or both), where the
    /// client sends the requests that show whether its NAT's mapping depends on the
    /// destination. [RFC 5780 §7.4](https://www.rfc-editor.org/rfc/rfc5780#section-7.4)
    OtherAddress,
    AttrType::OTHER_ADDRESS,
    Plain
);

// ---------------------------------------------------------------------------------------------
// Text: USERNAME, REALM, NONCE, SOFTWARE (and the ERROR-CODE reason phrase).

/// "Fewer than 128 characters" is the limit of every free-text attribute but USERNAME.
const MAX_CHARS: usize = 127;

/// Checks UTF-8 and the RFC length limits of a text value.
fn validate_text(
    attr: AttrType,
    bytes: &[u8],
    max_bytes: usize,
    max_chars: Option<usize>,
) -> Result<&str, AttrError> {
    if bytes.len() > max_bytes {
        return Err(AttrError::TooLong {
            attr,
            len: bytes.len(),
            max: max_bytes,
        });
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(AttrError::InvalidUtf8 { attr });
    };
    if let Some(max) = max_chars
        && text.chars().count() > max
    {
        return Err(AttrError::TooManyChars { attr, max });
    }
    Ok(text)
}

/// Defines a borrowed UTF-8 text attribute with its RFC limits.
macro_rules! text_attribute {
    (
        $(#[$doc:meta])* $name:ident, $attr:ident,
        encode_max = $encode_max:expr, decode_max = $decode_max:expr, max_chars = $max_chars:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name<'a>(&'a str);

        impl<'a> $name<'a> {
            /// Longest value in bytes this crate sends.
            pub const MAX_ENCODE_BYTES: usize = $encode_max;
            /// Longest value in bytes this crate accepts (the RFC allows for expansion by
            /// OpaqueString preparation on the sender's side).
            pub const MAX_DECODE_BYTES: usize = $decode_max;

            /// Wraps `value` for sending, checking the RFC length limits.
            pub fn new(value: &'a str) -> Result<Self, AttrError> {
                let text = validate_text(
                    AttrType::$attr,
                    value.as_bytes(),
                    Self::MAX_ENCODE_BYTES,
                    $max_chars,
                )?;
                Ok(Self(text))
            }

            /// The text.
            pub const fn as_str(&self) -> &'a str {
                self.0
            }
        }

        impl<'a> Attribute<'a> for $name<'a> {
            const TYPE: AttrType = AttrType::$attr;

            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
                let text =
                    validate_text(Self::TYPE, value, Self::MAX_DECODE_BYTES, $max_chars)?;
                Ok(Self(text))
            }

            fn value_len(&self) -> usize {
                self.0.len()
            }

            fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
                out.copy_from_slice(self.0.as_bytes());
            }
        }
    };
}

text_attribute!(
    /// USERNAME: UTF-8, fewer than 509 bytes, already prepared with the OpaqueString profile
    /// (RFC 8265) by whoever chose it. [RFC 8489 §14.3](https://www.rfc-editor.org/rfc/rfc8489#section-14.3)
    Username, USERNAME, encode_max = 508, decode_max = 508, max_chars = None
);

text_attribute!(
    /// REALM: UTF-8, fewer than 128 characters (509 bytes sent, 763 accepted).
    /// [RFC 8489 §14.9](https://www.rfc-editor.org/rfc/rfc8489#section-14.9)
    Realm, REALM, encode_max = 509, decode_max = 763, max_chars = Some(MAX_CHARS)
);

text_attribute!(
    /// NONCE: UTF-8, fewer than 128 characters (509 bytes sent, 763 accepted).
    /// [RFC 8489 §14.10](https://www.rfc-editor.org/rfc/rfc8489#section-14.10)
    Nonce, NONCE, encode_max = 509, decode_max = 763, max_chars = Some(MAX_CHARS)
);

text_attribute!(
    /// SOFTWARE: UTF-8, fewer than 128 characters (up to 763 bytes).
    /// [RFC 8489 §14.14](https://www.rfc-editor.org/rfc/rfc8489#section-14.14)
    Software, SOFTWARE, encode_max = 763, decode_max = 763, max_chars = Some(MAX_CHARS)
);

// ---------------------------------------------------------------------------------------------
// ERROR-CODE
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |           Reserved, should be 0         |Class|     Number    |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |      Reason Phrase (variable)                                ..
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// A STUN error code, 300..=699 (class 3..=6, number 0..=99).
/// [RFC 8489 §14.8](https://www.rfc-editor.org/rfc/rfc8489#section-14.8)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(u16);

impl ErrorCode {
    /// Use the ALTERNATE-SERVER instead. RFC 8489 §14.8
    pub const TRY_ALTERNATE: Self = Self(300);
    /// Malformed request. RFC 8489 §14.8
    pub const BAD_REQUEST: Self = Self(400);
    /// Missing or wrong credentials. RFC 8489 §14.8
    pub const UNAUTHENTICATED: Self = Self(401);
    /// TURN: the request was valid but is not allowed. RFC 8656 §19
    pub const FORBIDDEN: Self = Self(403);
    /// Unknown comprehension-required attributes; lists them in UNKNOWN-ATTRIBUTES. RFC 8489 §14.8
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    /// TURN: no allocation, or one already exists, for this 5-tuple. RFC 8656 §19
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    /// The NONCE is no longer valid; retry with the new one. RFC 8489 §14.8
    pub const STALE_NONCE: Self = Self(438);
    /// TURN: the requested address family is not supported. RFC 8656 §19
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    /// TURN: credentials differ from the ones that created the allocation. RFC 8656 §19
    pub const WRONG_CREDENTIALS: Self = Self(441);
    /// TURN: REQUESTED-TRANSPORT is not UDP. RFC 8656 §19
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: Self = Self(442);
    /// TURN: peer address family differs from the relayed address. RFC 8656 §19
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    /// TURN: per-user allocation quota reached. RFC 8656 §19
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    /// Temporary server error. RFC 8489 §14.8
    pub const SERVER_ERROR: Self = Self(500);
    /// TURN: the server is out of relay capacity. RFC 8656 §19
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// Returns the code if it is in 300..=699.
    pub const fn new(code: u16) -> Option<Self> {
        if 300 <= code && code <= 699 {
            Some(Self(code))
        } else {
            None
        }
    }

    /// The numeric code.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The hundreds digit, 3..=6.
    pub const fn class(self) -> u8 {
        (self.0 / 100) as u8
    }

    /// The last two digits, 0..=99.
    pub const fn number(self) -> u8 {
        (self.0 % 100) as u8
    }

    /// The reason phrase the RFCs suggest, or a generic one.
    pub const fn default_reason(self) -> &'static str {
        match self.0 {
            300 => "Try Alternate",
            400 => "Bad Request",
            401 => "Unauthenticated",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "Error",
        }
    }
}

/// ERROR-CODE: an [`ErrorCode`] and a UTF-8 reason phrase of fewer than 128 characters.
/// [RFC 8489 §14.8](https://www.rfc-editor.org/rfc/rfc8489#section-14.8)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCodeAttr<'a> {
    code: ErrorCode,
    reason: &'a str,
}

impl<'a> ErrorCodeAttr<'a> {
    /// Longest reason phrase in bytes this crate sends.
    pub const MAX_ENCODE_BYTES: usize = 509;
    /// Longest reason phrase in bytes this crate accepts.
    pub const MAX_DECODE_BYTES: usize = 763;

    /// An error with a custom reason phrase.
    pub fn new(code: ErrorCode, reason: &'a str) -> Result<Self, AttrError> {
        let reason = validate_text(
            AttrType::ERROR_CODE,
            reason.as_bytes(),
            Self::MAX_ENCODE_BYTES,
            Some(MAX_CHARS),
        )?;
        Ok(Self { code, reason })
    }

    /// The code.
    pub const fn code(&self) -> ErrorCode {
        self.code
    }

    /// The reason phrase.
    pub const fn reason(&self) -> &'a str {
        self.reason
    }
}

impl ErrorCodeAttr<'static> {
    /// An error with the RFC's reason phrase.
    pub const fn with_default_reason(code: ErrorCode) -> Self {
        Self {
            code,
            reason: code.default_reason(),
        }
    }
}

impl<'a> Attribute<'a> for ErrorCodeAttr<'a> {
    const TYPE: AttrType = AttrType::ERROR_CODE;

    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let Some((head, reason)) = value.split_first_chunk::<4>() else {
            return Err(AttrError::InvalidLength {
                attr: Self::TYPE,
                len: value.len(),
            });
        };
        // The 21 reserved bits are ignored on receipt.
        let class = head[2] & 0x07;
        let number = head[3];
        let Some(code) =
            ErrorCode::new(u16::from(class) * 100 + u16::from(number)).filter(|_| number < 100)
        else {
            return Err(AttrError::InvalidErrorCode { class, number });
        };
        let reason = validate_text(Self::TYPE, reason, Self::MAX_DECODE_BYTES, Some(MAX_CHARS))?;
        Ok(Self { code, reason })
    }

    fn value_len(&self) -> usize {
        4 + self.reason.len()
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out[..4].copy_from_slice(&[0, 0, self.code.class(), self.code.number()]);
        out[4..].copy_from_slice(self.reason.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// UNKNOWN-ATTRIBUTES
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |      Attribute 1 Type         |       Attribute 2 Type        |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |      Attribute 3 Type         |       Attribute 4 Type    ...
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// UNKNOWN-ATTRIBUTES: the comprehension-required types a 420 response rejects.
/// [RFC 8489 §14.13](https://www.rfc-editor.org/rfc/rfc8489#section-14.13)
///
/// Borrows either the received wire bytes or a caller's slice of types, so neither direction
/// copies.
#[derive(Clone, Copy)]
pub struct UnknownAttributes<'a>(UnknownRepr<'a>);

#[derive(Clone, Copy)]
enum UnknownRepr<'a> {
    Wire(&'a [u8]),
    Types(&'a [AttrType]),
}

impl<'a> UnknownAttributes<'a> {
    /// The list to send.
    pub const fn new(types: &'a [AttrType]) -> Self {
        Self(UnknownRepr::Types(types))
    }

    /// Number of types listed.
    pub const fn len(&self) -> usize {
        match self.0 {
            UnknownRepr::Wire(bytes) => bytes.len() / 2,
            UnknownRepr::Types(types) => types.len(),
        }
    }

    /// Whether the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listed types, in order.
    pub fn iter(&self) -> impl Iterator<Item = AttrType> + 'a {
        let (wire, types): (&[u8], &[AttrType]) = match self.0 {
            UnknownRepr::Wire(bytes) => (bytes, &[]),
            UnknownRepr::Types(types) => (&[], types),
        };
        wire.chunks_exact(2)
            .map(|pair| AttrType(u16::from_be_bytes([pair[0], pair[1]])))
            .chain(types.iter().copied())
    }
}

impl fmt::Debug for UnknownAttributes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UnknownAttributes")
            .field(&DebugList(self))
            .finish()
    }
}

struct DebugList<'l, 'a>(&'l UnknownAttributes<'a>);

impl fmt::Debug for DebugList<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl PartialEq for UnknownAttributes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for UnknownAttributes<'_> {}

impl<'a> Attribute<'a> for UnknownAttributes<'a> {
    const TYPE: AttrType = AttrType::UNKNOWN_ATTRIBUTES;

    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        if !value.len().is_multiple_of(2) {
            return Err(AttrError::InvalidLength {
                attr: Self::TYPE,
                len: value.len(),
            });
        }
        Ok(Self(UnknownRepr::Wire(value)))
    }

    fn value_len(&self) -> usize {
        self.len() * 2
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        for (chunk, attr) in out.chunks_exact_mut(2).zip(self.iter()) {
            chunk.copy_from_slice(&attr.0.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId::new([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    fn encode<'a, A: Attribute<'a>>(attr: &A) -> Vec<u8> {
        let mut out = vec![0; attr.value_len()];
        attr.encode_value(&TID, &mut out);
        out
    }

    #[test]
    fn comprehension_ranges() {
        assert!(AttrType::new(0x0000).is_comprehension_required());
        assert!(AttrType::new(0x7FFF).is_comprehension_required());
        assert!(!AttrType::new(0x8000).is_comprehension_required());
        assert!(!AttrType::FINGERPRINT.is_comprehension_required());
        assert!(AttrType::XOR_MAPPED_ADDRESS.is_comprehension_required());
    }

    #[test]
    fn registries_and_names() {
        assert!(AttrType::SOFTWARE.is_stun());
        assert!(!AttrType::SOFTWARE.is_turn());
        assert!(AttrType::LIFETIME.is_turn());
        assert!(!AttrType::LIFETIME.is_stun());
        assert!(!AttrType::new(0x0024).is_stun()); // ICE PRIORITY
        assert_eq!(AttrType::ICMP.name(), Some("ICMP"));
        assert_eq!(format!("{:?}", AttrType::NONCE), "NONCE");
        assert_eq!(format!("{:?}", AttrType::new(0x7001)), "AttrType(0x7001)");
    }

    #[test]
    fn xor_mapped_address_ipv4_from_rfc5769() {
        let value = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let addr = XorMappedAddress::decode(&value, &TID).unwrap();
        assert_eq!(addr.0, "192.0.2.1:32853".parse().unwrap());
        assert_eq!(encode(&addr), value);
    }

    #[test]
    fn xor_mapped_address_ipv6_from_rfc5769() {
        let value = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let addr = XorMappedAddress::decode(&value, &TID).unwrap();
        assert_eq!(
            addr.0,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
        assert_eq!(encode(&addr), value);
    }

    #[test]
    fn mapped_address_is_plain() {
        let v4 = MappedAddress("192.0.2.1:32853".parse().unwrap());
        assert_eq!(encode(&v4), [0, 1, 0x80, 0x55, 192, 0, 2, 1]);
        assert_eq!(MappedAddress::decode(&encode(&v4), &TID), Ok(v4));
        let v6 = MappedAddress("[2001:db8::1]:3478".parse().unwrap());
        assert_eq!(encode(&v6).len(), 20);
        assert_eq!(MappedAddress::decode(&encode(&v6), &TID), Ok(v6));
    }

    #[test]
    fn address_reserved_byte_is_ignored() {
        let mut value = encode(&MappedAddress("192.0.2.1:1".parse().unwrap()));
        value[0] = 0xFF;
        assert!(MappedAddress::decode(&value, &TID).is_ok());
    }

    #[test]
    fn address_errors() {
        let attr = AttrType::XOR_MAPPED_ADDRESS;
        assert_eq!(
            XorMappedAddress::decode(&[0, 1, 0], &TID),
            Err(AttrError::InvalidLength { attr, len: 3 })
        );
        assert_eq!(
            XorMappedAddress::decode(&[0, 1, 0, 0, 1, 2, 3], &TID),
            Err(AttrError::InvalidLength { attr, len: 7 })
        );
        assert_eq!(
            XorMappedAddress::decode(&[0, 2, 0, 0, 1, 2, 3, 4], &TID),
            Err(AttrError::InvalidLength { attr, len: 8 })
        );
        assert_eq!(
            XorMappedAddress::decode(&[0, 3, 0, 0, 1, 2, 3, 4], &TID),
            Err(AttrError::UnknownAddressFamily { attr, family: 3 })
        );
    }

    #[test]
    fn text_limits() {
        assert_eq!(Username::new("evtj:h6vY").unwrap().as_str(), "evtj:h6vY");
        let long = "x".repeat(509);
        assert_eq!(
            Username::new(&long),
            Err(AttrError::TooLong {
                attr: AttrType::USERNAME,
                len: 509,
                max: 508
            })
        );
        assert!(Username::new(&long[..508]).is_ok());
        assert_eq!(
            Realm::new(&"r".repeat(128)),
            Err(AttrError::TooManyChars {
                attr: AttrType::REALM,
                max: 127
            })
        );
        assert!(Realm::new(&"r".repeat(127)).is_ok());
        // 127 three-byte characters: 381 bytes, fine.
        assert!(Nonce::new(&"\u{30DE}".repeat(127)).is_ok());
        // 170 three-byte characters: 510 bytes, over the sending limit but decodable… except for
        // the character count.
        let wide = "\u{30DE}".repeat(170);
        assert_eq!(
            Nonce::new(&wide),
            Err(AttrError::TooLong {
                attr: AttrType::NONCE,
                len: 510,
                max: 509
            })
        );
        assert_eq!(
            Nonce::decode(wide.as_bytes(), &TID),
            Err(AttrError::TooManyChars {
                attr: AttrType::NONCE,
                max: 127
            })
        );
        assert_eq!(
            Software::decode(&[0x66, 0xFF], &TID),
            Err(AttrError::InvalidUtf8 {
                attr: AttrType::SOFTWARE
            })
        );
        assert_eq!(
            Software::decode(&[b'a'; 764], &TID),
            Err(AttrError::TooLong {
                attr: AttrType::SOFTWARE,
                len: 764,
                max: 763
            })
        );
        let software = Software::new("BosonServer").unwrap();
        assert_eq!(encode(&software), b"BosonServer");
        assert_eq!(Software::decode(b"BosonServer", &TID), Ok(software));
    }

    #[test]
    fn error_code_round_trip() {
        let err = ErrorCodeAttr::with_default_reason(ErrorCode::UNKNOWN_ATTRIBUTE);
        let bytes = encode(&err);
        assert_eq!(&bytes[..4], &[0, 0, 4, 20]);
        assert_eq!(&bytes[4..], b"Unknown Attribute");
        let decoded = ErrorCodeAttr::decode(&bytes, &TID).unwrap();
        assert_eq!(decoded, err);
        assert_eq!(decoded.code().as_u16(), 420);
        assert_eq!(decoded.code().class(), 4);
        assert_eq!(decoded.code().number(), 20);
        assert_eq!(decoded.reason(), "Unknown Attribute");
        let custom = ErrorCodeAttr::new(ErrorCode::STALE_NONCE, "").unwrap();
        assert_eq!(encode(&custom), [0, 0, 4, 38]);
    }

    #[test]
    fn error_code_reserved_bits_are_ignored() {
        let decoded = ErrorCodeAttr::decode(&[0xFF, 0xFF, 0xF8 | 5, 0], &TID).unwrap();
        assert_eq!(decoded.code(), ErrorCode::SERVER_ERROR);
    }

    #[test]
    fn error_code_errors() {
        assert_eq!(
            ErrorCodeAttr::decode(&[0, 0, 4], &TID),
            Err(AttrError::InvalidLength {
                attr: AttrType::ERROR_CODE,
                len: 3
            })
        );
        assert_eq!(
            ErrorCodeAttr::decode(&[0, 0, 2, 0], &TID),
            Err(AttrError::InvalidErrorCode {
                class: 2,
                number: 0
            })
        );
        assert_eq!(
            ErrorCodeAttr::decode(&[0, 0, 7, 0], &TID),
            Err(AttrError::InvalidErrorCode {
                class: 7,
                number: 0
            })
        );
        assert_eq!(
            ErrorCodeAttr::decode(&[0, 0, 4, 100], &TID),
            Err(AttrError::InvalidErrorCode {
                class: 4,
                number: 100
            })
        );
        assert!(ErrorCodeAttr::decode(&[0, 0, 4, 0, 0xC0], &TID).is_err());
        assert_eq!(ErrorCode::new(299), None);
        assert_eq!(ErrorCode::new(700), None);
        assert_eq!(ErrorCode::new(699).map(ErrorCode::as_u16), Some(699));
    }

    #[test]
    fn unknown_attributes_round_trip() {
        let types = [AttrType::new(0x0024), AttrType::new(0x7001)];
        let attr = UnknownAttributes::new(&types);
        let bytes = encode(&attr);
        assert_eq!(bytes, [0x00, 0x24, 0x70, 0x01]);
        let decoded = UnknownAttributes::decode(&bytes, &TID).unwrap();
        assert_eq!(decoded, attr);
        assert_eq!(decoded.len(), 2);
        assert!(!decoded.is_empty());
        assert_eq!(
            format!("{decoded:?}"),
            "UnknownAttributes([AttrType(0x0024), AttrType(0x7001)])"
        );
        assert_eq!(
            UnknownAttributes::decode(&[0, 1, 2], &TID),
            Err(AttrError::InvalidLength {
                attr: AttrType::UNKNOWN_ATTRIBUTES,
                len: 3
            })
        );
    }
}
