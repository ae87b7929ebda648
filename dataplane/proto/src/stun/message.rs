//! [`Message`]: a zero-copy, structurally validated view of one STUN message.
//!
//! [`Message::parse`] walks the attribute TLVs once, without allocating, and rejects anything
//! malformed, so iterating attributes afterwards cannot fail. It also records where
//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT sit, because their meaning depends
//! on their position ([RFC 8489 §14.5–14.7]):
//!
//! * only the first MESSAGE-INTEGRITY counts, and attributes after it are ignored except
//!   MESSAGE-INTEGRITY-SHA256 and FINGERPRINT;
//! * attributes after MESSAGE-INTEGRITY-SHA256 are ignored except FINGERPRINT;
//! * FINGERPRINT must be last.
//!
//! [`Message::attributes`] applies these rules, so an attacker cannot slip an unauthenticated
//! attribute past the integrity check by appending it.
//!
//! [RFC 8489 §14.5–14.7]: https://www.rfc-editor.org/rfc/rfc8489#section-14.5

use std::fmt;

use super::{
    ATTR_HEADER_LEN, AttrError, AttrType, Attribute, Class, HEADER_LEN, Header, MessageType,
    Method, ParseError, TransactionId, padded_len,
};

/// A parsed STUN message borrowing the datagram it came from.
///
/// Construction validates the header, that the Message Length matches the datagram exactly
/// (one message per UDP datagram), every attribute's length and padding, and the lengths and
/// placement of MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT. Attribute *values* are decoded
/// lazily with [`get`](Self::get).
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub(super) bytes: &'a [u8],
    header: Header,
    /// Offset of the MESSAGE-INTEGRITY TLV that counts, if any.
    pub(super) integrity: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 TLV that counts, if any.
    pub(super) integrity_sha256: Option<usize>,
    /// Offset of the FINGERPRINT TLV, which is then the last attribute.
    pub(super) fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// Parses one STUN message that fills `datagram` exactly.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let header = Header::parse(datagram)?;
        let body = datagram.len() - HEADER_LEN;
        if usize::from(header.length()) != body {
            return Err(ParseError::LengthMismatch {
                length: header.length(),
                body,
            });
        }
        let mut message = Self {
            bytes: datagram,
            header,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        // The body is a multiple of 4 and every step is too, so a TLV header always fits.
        let mut offset = HEADER_LEN;
        while let Some(tlv) = datagram.get(offset..).and_then(<[u8]>::first_chunk::<4>) {
            let attr = AttrType::new(u16::from_be_bytes([tlv[0], tlv[1]]));
            let len = u16::from_be_bytes([tlv[2], tlv[3]]);
            if message.fingerprint.is_some() {
                return Err(ParseError::AttributeAfterFingerprint { attr });
            }
            let next = offset + ATTR_HEADER_LEN + padded_len(usize::from(len));
            if next > datagram.len() {
                return Err(ParseError::AttributeOverrun { attr, offset, len });
            }
            let invalid_length = ParseError::InvalidAttributeLength { attr, len };
            match attr {
                AttrType::MESSAGE_INTEGRITY
                    if message.integrity.is_none() && message.integrity_sha256.is_none() =>
                {
                    if len != 20 {
                        return Err(invalid_length);
                    }
                    message.integrity = Some(offset);
                }
                AttrType::MESSAGE_INTEGRITY_SHA256 if message.integrity_sha256.is_none() => {
                    // RFC 8489 §14.6: truncation to no less than 16 bytes, in steps of 4.
                    if !(16..=32).contains(&len) || !len.is_multiple_of(4) {
                        return Err(invalid_length);
                    }
                    message.integrity_sha256 = Some(offset);
                }
                AttrType::FINGERPRINT => {
                    if len != 4 {
                        return Err(invalid_length);
                    }
                    message.fingerprint = Some(offset);
                }
                _ => {}
            }
            offset = next;
        }
        Ok(message)
    }

    /// The header.
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// Method and class.
    pub const fn message_type(&self) -> MessageType {
        self.header.message_type()
    }

    /// The method.
    pub const fn method(&self) -> Method {
        self.header.method()
    }

    /// The class.
    pub const fn class(&self) -> Class {
        self.header.class()
    }

    /// The transaction id.
    pub const fn transaction_id(&self) -> TransactionId {
        self.header.transaction_id()
    }

    /// The whole message on the wire.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The attributes that count, in wire order: everything up to the first integrity
    /// attribute, then only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (see the module doc).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            offset: HEADER_LEN,
            scope: Scope::All,
        }
    }

    /// The first attribute of type `attr` that counts. Later duplicates are ignored, as
    /// [RFC 8489 §14](https://www.rfc-editor.org/rfc/rfc8489#section-14) allows.
    pub fn attribute(&self, attr: AttrType) -> Option<RawAttribute<'a>> {
        self.attributes().find(|raw| raw.attr == attr)
    }

    /// Decodes the first attribute of type `A::TYPE` that counts; `Ok(None)` if absent.
    pub fn get<A: Attribute<'a>>(&self) -> Result<Option<A>, AttrError> {
        let Some(raw) = self.attribute(A::TYPE) else {
            return Ok(None);
        };
        let value = A::decode(raw.value, &self.transaction_id())?;
        Ok(Some(value))
    }

    /// The comprehension-required attribute types (0x0000..=0x7FFF) that `is_known` rejects, in
    /// wire order, duplicates included: what a 420 (Unknown Attribute) response lists.
    /// [RFC 8489 §6.3.1](https://www.rfc-editor.org/rfc/rfc8489#section-6.3.1)
    ///
    /// `is_known` is the caller's registry, for example [`AttrType::is_stun`] for a plain STUN
    /// server or `|t| t.is_stun() || t.is_turn()` for a TURN server.
    pub fn unknown_comprehension_required<F>(
        &self,
        is_known: F,
    ) -> impl Iterator<Item = AttrType> + use<'a, F>
    where
        F: Fn(AttrType) -> bool,
    {
        self.attributes()
            .map(|raw| raw.attr)
            .filter(move |&attr| attr.is_comprehension_required() && !is_known(attr))
    }

    /// Whether a MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute counts.
    pub const fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Whether the message ends with FINGERPRINT.
    pub const fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("method", &self.method())
            .field("class", &self.class())
            .field("transaction_id", &self.transaction_id())
            .field("attributes", &DebugAttributes(self.attributes()))
            .finish()
    }
}

struct DebugAttributes<'a>(Attributes<'a>);

impl fmt::Debug for DebugAttributes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.clone()).finish()
    }
}

/// One attribute TLV as it is on the wire, value without padding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    attr: AttrType,
    value: &'a [u8],
    offset: usize,
}

impl<'a> RawAttribute<'a> {
    /// The type.
    pub const fn attr(&self) -> AttrType {
        self.attr
    }

    /// The value bytes, padding excluded.
    pub const fn value(&self) -> &'a [u8] {
        self.value
    }

    /// Offset of the TLV header from the start of the message.
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Debug for RawAttribute<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({} bytes)", self.attr, self.value.len())
    }
}

/// Iterator over the attributes of a [`Message`] that count; see [`Message::attributes`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    offset: usize,
    scope: Scope,
}

/// Which attributes still count, given the integrity attributes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    AfterIntegrity,
    AfterIntegritySha256,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // `Message::parse` validated every TLV, so the `?`s only end the iteration.
            let offset = self.offset;
            let tlv = self.bytes.get(offset..)?.first_chunk::<4>()?;
            let attr = AttrType::new(u16::from_be_bytes([tlv[0], tlv[1]]));
            let len = usize::from(u16::from_be_bytes([tlv[2], tlv[3]]));
            let start = offset + ATTR_HEADER_LEN;
            let value = self.bytes.get(start..start + len)?;
            self.offset = start + padded_len(len);

            let counts = match (self.scope, attr) {
                (Scope::All, AttrType::MESSAGE_INTEGRITY) => {
                    self.scope = Scope::AfterIntegrity;
                    true
                }
                (Scope::All | Scope::AfterIntegrity, AttrType::MESSAGE_INTEGRITY_SHA256) => {
                    self.scope = Scope::AfterIntegritySha256;
                    true
                }
                (Scope::All, _) | (_, AttrType::FINGERPRINT) => true,
                (Scope::AfterIntegrity | Scope::AfterIntegritySha256, _) => false,
            };
            if counts {
                return Some(RawAttribute {
                    attr,
                    value,
                    offset,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{MAGIC_COOKIE, Software, Username};

    /// A Binding request with the given raw attributes (type, value), padded with zeros.
    fn message(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![0x00, 0x01, 0x00, 0x00];
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&[0x11; 12]);
        for (attr, value) in attrs {
            out.extend_from_slice(&attr.to_be_bytes());
            out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            out.extend_from_slice(value);
            out.resize(padded_len(out.len()), 0);
        }
        let body = u16::try_from(out.len() - HEADER_LEN).unwrap();
        out[2..4].copy_from_slice(&body.to_be_bytes());
        out
    }

    fn types(message: &Message<'_>) -> Vec<u16> {
        message.attributes().map(|a| a.attr().as_u16()).collect()
    }

    #[test]
    fn parses_header_only_message() {
        let bytes = message(&[]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_REQUEST);
        assert_eq!(m.method(), Method::BINDING);
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.transaction_id(), TransactionId::new([0x11; 12]));
        assert_eq!(m.attributes().count(), 0);
        assert!(!m.has_integrity());
        assert!(!m.has_fingerprint());
        assert_eq!(m.as_bytes(), &bytes[..]);
    }

    #[test]
    fn iterates_and_decodes_attributes() {
        let bytes = message(&[(0x8022, b"abcde"), (0x0006, b"user"), (0x8022, b"dup")]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(types(&m), [0x8022, 0x0006, 0x8022]);
        let first = m.attributes().next().unwrap();
        assert_eq!(first.value(), b"abcde");
        assert_eq!(first.offset(), HEADER_LEN);
        assert_eq!(m.attributes().nth(1).unwrap().offset(), HEADER_LEN + 12);
        // The first of duplicates wins.
        assert_eq!(
            m.get::<Software<'_>>().unwrap().map(|s| s.as_str()),
            Some("abcde")
        );
        assert_eq!(
            m.get::<Username<'_>>().unwrap().map(|u| u.as_str()),
            Some("user")
        );
        assert_eq!(m.get::<crate::stun::Realm<'_>>(), Ok(None));
        assert_eq!(
            format!("{m:?}"),
            "Message { method: Binding, class: Request, transaction_id: \
             TransactionId(111111111111111111111111), attributes: \
             [SOFTWARE(5 bytes), USERNAME(4 bytes), SOFTWARE(3 bytes)] }"
        );
    }

    #[test]
    fn padding_content_is_ignored() {
        let mut bytes = message(&[(0x8022, b"a")]);
        bytes[HEADER_LEN + 5..].fill(0xFF);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.attribute(AttrType::SOFTWARE).unwrap().value(), b"a");
    }

    #[test]
    fn value_errors_surface_from_get() {
        let bytes = message(&[(0x0006, &[0xFF, 0xFE])]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            m.get::<Username<'_>>(),
            Err(AttrError::InvalidUtf8 {
                attr: AttrType::USERNAME
            })
        );
    }

    #[test]
    fn error_too_short() {
        assert_eq!(parse_err(&[]), ParseError::TooShort { len: 0 });
        let bytes = message(&[]);
        assert_eq!(parse_err(&bytes[..19]), ParseError::TooShort { len: 19 });
    }

    fn parse_err(bytes: &[u8]) -> ParseError {
        match Message::parse(bytes) {
            Ok(m) => panic!("parsed {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn error_top_bits_and_cookie_and_alignment() {
        let mut bytes = message(&[]);
        bytes[0] = 0x40;
        assert_eq!(
            parse_err(&bytes),
            ParseError::TopBitsNotZero { first_byte: 0x40 }
        );
        let mut bytes = message(&[]);
        bytes[4] = 0;
        assert_eq!(
            parse_err(&bytes),
            ParseError::WrongMagicCookie { found: 0x0012_A442 }
        );
        let mut bytes = message(&[(0x8022, b"abcd")]);
        bytes[3] = 6;
        assert_eq!(
            parse_err(&bytes),
            ParseError::LengthNotAligned { length: 6 }
        );
    }

    #[test]
    fn error_length_mismatch() {
        let mut bytes = message(&[(0x8022, b"abcd")]);
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_err(&bytes),
            ParseError::LengthMismatch {
                length: 8,
                body: 12
            }
        );
        let bytes = message(&[(0x8022, b"abcd")]);
        assert_eq!(
            parse_err(&bytes[..24]),
            ParseError::LengthMismatch { length: 8, body: 4 }
        );
    }

    #[test]
    fn error_attribute_overrun() {
        let mut bytes = message(&[(0x8022, b"abcd")]);
        bytes[HEADER_LEN + 3] = 5; // padded to 8, only 4 value bytes present
        assert_eq!(
            parse_err(&bytes),
            ParseError::AttributeOverrun {
                attr: AttrType::SOFTWARE,
                offset: HEADER_LEN,
                len: 5
            }
        );
        let mut bytes = message(&[(0x8022, b"abcd")]);
        bytes[HEADER_LEN + 2] = 0xFF;
        assert!(matches!(
            parse_err(&bytes),
            ParseError::AttributeOverrun { .. }
        ));
    }

    #[test]
    fn error_invalid_structural_lengths() {
        assert_eq!(
            parse_err(&message(&[(0x0008, &[0; 16])])),
            ParseError::InvalidAttributeLength {
                attr: AttrType::MESSAGE_INTEGRITY,
                len: 16
            }
        );
        assert_eq!(
            parse_err(&message(&[(0x8028, &[0; 8])])),
            ParseError::InvalidAttributeLength {
                attr: AttrType::FINGERPRINT,
                len: 8
            }
        );
        for bad in [12, 18, 36] {
            assert_eq!(
                parse_err(&message(&[(0x001C, &vec![0; bad])])),
                ParseError::InvalidAttributeLength {
                    attr: AttrType::MESSAGE_INTEGRITY_SHA256,
                    len: u16::try_from(bad).unwrap()
                }
            );
        }
        for good in [16, 20, 32] {
            assert!(Message::parse(&message(&[(0x001C, &vec![0; good])])).is_ok());
        }
    }

    #[test]
    fn error_attribute_after_fingerprint() {
        assert_eq!(
            parse_err(&message(&[(0x8028, &[0; 4]), (0x8022, b"x")])),
            ParseError::AttributeAfterFingerprint {
                attr: AttrType::SOFTWARE
            }
        );
        assert_eq!(
            parse_err(&message(&[(0x8028, &[0; 4]), (0x8028, &[0; 4])])),
            ParseError::AttributeAfterFingerprint {
                attr: AttrType::FINGERPRINT
            }
        );
    }

    #[test]
    fn attributes_after_integrity_do_not_count() {
        let bytes = message(&[
            (0x0006, b"user"),
            (0x0008, &[0; 20]),
            (0x0014, b"realm"), // ignored
            (0x0008, &[1; 20]), // second MI: ignored (and not length-checked)
            (0x001C, &[0; 32]), // MI-SHA256 after MI: counts
            (0x0015, b"nonce"), // ignored
            (0x8028, &[0; 4]),  // FINGERPRINT: counts
        ]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(types(&m), [0x0006, 0x0008, 0x001C, 0x8028]);
        assert!(m.attribute(AttrType::REALM).is_none());
        assert_eq!(m.integrity, Some(HEADER_LEN + 8));
        assert!(m.integrity_sha256.is_some());
        assert!(m.has_integrity());
        assert!(m.has_fingerprint());
    }

    #[test]
    fn attributes_after_integrity_sha256_do_not_count() {
        let bytes = message(&[
            (0x001C, &[0; 16]),
            (0x0008, &[0; 20]), // MI after MI-SHA256: ignored
            (0x0014, b"realm"), // ignored
            (0x8028, &[0; 4]),
        ]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(types(&m), [0x001C, 0x8028]);
        assert_eq!(m.integrity, None);
        assert!(m.has_integrity());
    }

    #[test]
    fn unknown_comprehension_required() {
        let bytes = message(&[
            (0x0006, b"user"),  // known
            (0x0024, &[0; 4]),  // ICE PRIORITY: required, unknown to plain STUN
            (0x8029, &[0; 8]),  // ICE-CONTROLLED: optional, never reported
            (0x7001, b""),      // unknown, required
            (0x0008, &[0; 20]), // MI
            (0x7002, b""),      // after MI: ignored, not reported
        ]);
        let m = Message::parse(&bytes).unwrap();
        let unknown: Vec<_> = m
            .unknown_comprehension_required(AttrType::is_stun)
            .collect();
        assert_eq!(unknown, [AttrType::new(0x0024), AttrType::new(0x7001)]);
        let none: Vec<_> = m
            .unknown_comprehension_required(|t| t.is_stun() || t.as_u16() >= 0x0024)
            .collect();
        assert!(none.is_empty());
    }
}
