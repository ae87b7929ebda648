//! The fixed 20-byte STUN header: message type (method + class), length, magic cookie and
//! transaction id. [RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)
//!
//! [`Header::parse`] checks the header alone, so a stream (TCP/TLS) shell can use
//! [`Header::message_len`] to frame messages before handing each one to
//! [`Message::parse`](super::Message::parse).

use std::fmt;

use super::{HEADER_LEN, MAGIC_COOKIE, ParseError};

/// A 12-bit STUN method. [RFC 8489 §18.2](https://www.rfc-editor.org/rfc/rfc8489#section-18.2)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    /// Binding: learn the reflexive transport address. [RFC 8489 §18.2]
    ///
    /// [RFC 8489 §18.2]: https://www.rfc-editor.org/rfc/rfc8489#section-18.2
    pub const BINDING: Self = Self(0x001);
    /// TURN Allocate. [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const ALLOCATE: Self = Self(0x003);
    /// TURN Refresh. [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const REFRESH: Self = Self(0x004);
    /// TURN Send (indication only). [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const SEND: Self = Self(0x006);
    /// TURN Data (indication only). [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const DATA: Self = Self(0x007);
    /// TURN CreatePermission. [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const CREATE_PERMISSION: Self = Self(0x008);
    /// TURN ChannelBind. [RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)
    pub const CHANNEL_BIND: Self = Self(0x009);

    /// The largest method number: methods are 12 bits wide.
    pub const MAX: u16 = 0x0FFF;

    /// Returns the method numbered `value`, or `None` if it does not fit in 12 bits.
    pub const fn new(value: u16) -> Option<Self> {
        if value <= Self::MAX {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The method number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The IANA name, for the methods this crate knows.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0x001 => Some("Binding"),
            0x003 => Some("Allocate"),
            0x004 => Some("Refresh"),
            0x006 => Some("Send"),
            0x007 => Some("Data"),
            0x008 => Some("CreatePermission"),
            0x009 => Some("ChannelBind"),
            _ => None,
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Method({:#05x})", self.0),
        }
    }
}

/// The message class. [RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `0b00`: expects a response.
    Request,
    /// `0b01`: fire-and-forget, never answered.
    Indication,
    /// `0b10`: success response to a request.
    SuccessResponse,
    /// `0b11`: error response (carries ERROR-CODE).
    ErrorResponse,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Self::Request => 0b00,
            Self::Indication => 0b01,
            Self::SuccessResponse => 0b10,
            Self::ErrorResponse => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Self::Request,
            0b01 => Self::Indication,
            0b10 => Self::SuccessResponse,
            _ => Self::ErrorResponse,
        }
    }

    /// Whether this is a success or error response.
    pub const fn is_response(self) -> bool {
        matches!(self, Self::SuccessResponse | Self::ErrorResponse)
    }
}

/// Method and class, as packed into the 14-bit message type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    method: Method,
    class: Class,
}

impl MessageType {
    /// Binding request, type `0x0001`.
    pub const BINDING_REQUEST: Self = Self::new(Method::BINDING, Class::Request);
    /// Binding indication, type `0x0011` (keepalive).
    pub const BINDING_INDICATION: Self = Self::new(Method::BINDING, Class::Indication);
    /// Binding success response, type `0x0101`.
    pub const BINDING_SUCCESS: Self = Self::new(Method::BINDING, Class::SuccessResponse);
    /// Binding error response, type `0x0111`.
    pub const BINDING_ERROR: Self = Self::new(Method::BINDING, Class::ErrorResponse);

    // Masks that pick the method bits out of the type field (see the layout in the module doc).
    const M_LOW: u16 = 0x000F; // M3..M0 at bits 3..0
    const M_MID: u16 = 0x0070; // M6..M4, shifted up by one past C0
    const M_HIGH: u16 = 0x0F80; // M11..M7, shifted up by two past C0 and C1

    /// Combines a method and a class.
    pub const fn new(method: Method, class: Class) -> Self {
        Self { method, class }
    }

    /// The method.
    pub const fn method(self) -> Method {
        self.method
    }

    /// The class.
    pub const fn class(self) -> Class {
        self.class
    }

    /// Unpacks a type field; `None` if either of the two most significant bits is set (then it is
    /// not STUN).
    pub const fn from_u16(raw: u16) -> Option<Self> {
        if raw & 0xC000 != 0 {
            return None;
        }
        let method = (raw & Self::M_LOW) | ((raw >> 1) & Self::M_MID) | ((raw >> 2) & Self::M_HIGH);
        let class = ((raw >> 4) & 0b01) | ((raw >> 7) & 0b10);
        Some(Self {
            method: Method(method),
            class: Class::from_bits(class),
        })
    }

    /// Packs method and class into the type field.
    pub const fn as_u16(self) -> u16 {
        let m = self.method.0;
        let c = self.class.bits();
        (m & Self::M_LOW)
            | ((m & Self::M_MID) << 1)
            | ((m & Self::M_HIGH) << 2)
            | ((c & 0b01) << 4)
            | ((c & 0b10) << 7)
    }
}

/// The 96-bit transaction id that pairs a response with its request and keys the XOR of
/// XOR-MAPPED-ADDRESS for IPv6. [RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId([u8; 12]);

impl TransactionId {
    /// Width in bytes.
    pub const LEN: usize = 12;

    /// Wraps twelve bytes. Requests need them to be cryptographically random
    /// ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)); the caller's RNG
    /// provides them.
    pub const fn new(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({self})")
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A validated STUN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    message_type: MessageType,
    length: u16,
    transaction_id: TransactionId,
}

impl Header {
    /// Parses and validates the first 20 bytes of `bytes`: at least 20 bytes, top two bits zero,
    /// the magic cookie, and a length that is a multiple of 4. Bytes past the header are not
    /// looked at.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(ParseError::TooShort { len: bytes.len() });
        };
        let raw_type = u16::from_be_bytes([header[0], header[1]]);
        let Some(message_type) = MessageType::from_u16(raw_type) else {
            return Err(ParseError::TopBitsNotZero {
                first_byte: header[0],
            });
        };
        let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::WrongMagicCookie { found: cookie });
        }
        let length = u16::from_be_bytes([header[2], header[3]]);
        if !length.is_multiple_of(4) {
            return Err(ParseError::LengthNotAligned { length });
        }
        let mut transaction_id = [0; TransactionId::LEN];
        transaction_id.copy_from_slice(&header[8..HEADER_LEN]);
        Ok(Self {
            message_type,
            length,
            transaction_id: TransactionId(transaction_id),
        })
    }

    /// Method and class.
    pub const fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The method.
    pub const fn method(&self) -> Method {
        self.message_type.method
    }

    /// The class.
    pub const fn class(&self) -> Class {
        self.message_type.class
    }

    /// The Message Length field: bytes of attributes after the header.
    pub const fn length(&self) -> u16 {
        self.length
    }

    /// Total size of the message on the wire, header included.
    pub const fn message_len(&self) -> usize {
        HEADER_LEN + self.length as usize
    }

    /// The transaction id.
    pub const fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_interleaving_matches_the_rfcs() {
        for (method, class, raw) in [
            (Method::BINDING, Class::Request, 0x0001),
            (Method::BINDING, Class::Indication, 0x0011),
            (Method::BINDING, Class::SuccessResponse, 0x0101),
            (Method::BINDING, Class::ErrorResponse, 0x0111),
            (Method::ALLOCATE, Class::Request, 0x0003),
            (Method::ALLOCATE, Class::SuccessResponse, 0x0103),
            (Method::ALLOCATE, Class::ErrorResponse, 0x0113),
            (Method::REFRESH, Class::Request, 0x0004),
            (Method::SEND, Class::Indication, 0x0016),
            (Method::DATA, Class::Indication, 0x0017),
            (Method::CREATE_PERMISSION, Class::Request, 0x0008),
            (Method::CHANNEL_BIND, Class::SuccessResponse, 0x0109),
        ] {
            let t = MessageType::new(method, class);
            assert_eq!(t.as_u16(), raw, "{method:?} {class:?}");
            assert_eq!(MessageType::from_u16(raw), Some(t), "{raw:#06x}");
        }
    }

    #[test]
    fn every_method_and_class_round_trips() {
        for m in 0..=Method::MAX {
            for class in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                let t = MessageType::new(Method::new(m).unwrap(), class);
                let raw = t.as_u16();
                assert_eq!(raw & 0xC000, 0);
                assert_eq!(MessageType::from_u16(raw), Some(t));
            }
        }
    }

    #[test]
    fn method_is_twelve_bits() {
        assert_eq!(Method::new(0x0FFF).map(Method::as_u16), Some(0x0FFF));
        assert_eq!(Method::new(0x1000), None);
        assert_eq!(format!("{:?}", Method::BINDING), "Binding");
        assert_eq!(
            format!("{:?}", Method::new(0x0AB).unwrap()),
            "Method(0x0ab)"
        );
    }

    #[test]
    fn top_bits_are_rejected() {
        assert_eq!(MessageType::from_u16(0x4001), None);
        assert_eq!(MessageType::from_u16(0x8001), None);
    }

    fn header(bytes: [u8; 4]) -> Vec<u8> {
        let mut h = bytes.to_vec();
        h.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h.extend_from_slice(&[7; 12]);
        h
    }

    #[test]
    fn header_parses() {
        let h = Header::parse(&header([0x00, 0x01, 0x00, 0x08])).unwrap();
        assert_eq!(h.message_type(), MessageType::BINDING_REQUEST);
        assert_eq!(h.length(), 8);
        assert_eq!(h.message_len(), 28);
        assert_eq!(h.transaction_id(), TransactionId::new([7; 12]));
        assert_eq!(h.transaction_id().to_string(), "070707070707070707070707");
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            Header::parse(&[0; 19]),
            Err(ParseError::TooShort { len: 19 })
        );
        assert_eq!(
            Header::parse(&header([0x40, 0x01, 0x00, 0x00])),
            Err(ParseError::TopBitsNotZero { first_byte: 0x40 })
        );
        assert_eq!(
            Header::parse(&header([0x00, 0x01, 0x00, 0x05])),
            Err(ParseError::LengthNotAligned { length: 5 })
        );
        let mut wrong_cookie = header([0x00, 0x01, 0x00, 0x00]);
        wrong_cookie[7] = 0x43;
        assert_eq!(
            Header::parse(&wrong_cookie),
            Err(ParseError::WrongMagicCookie { found: 0x2112_A443 })
        );
    }
}
