//! [`Encoder`]: writes one STUN message into a caller-owned buffer, without allocating.
//!
//! The header's Message Length is kept current after every attribute, so MESSAGE-INTEGRITY and
//! FINGERPRINT, appended last by [`Encoder::finish`], are each computed over a header whose
//! length already counts them, as [RFC 8489 §14.5] and [§14.7] require.
//!
//! [RFC 8489 §14.5]: https://www.rfc-editor.org/rfc/rfc8489#section-14.5
//! [§14.7]: https://www.rfc-editor.org/rfc/rfc8489#section-14.7

use hmac::Mac;

use super::{
    ATTR_HEADER_LEN, AttrType, Attribute, EncodeError, HEADER_LEN, IntegrityKey, MAGIC_COOKIE,
    MAX_BODY_LEN, MessageType, TransactionId, fingerprint, integrity, padded_len,
};

/// Writes a STUN message into `&mut [u8]`.
///
/// ```
/// use boson_dataplane_proto::stun::{
///     Encoder, IntegrityKey, Message, MessageType, Software, TransactionId, Trailer,
/// };
///
/// let mut buf = [0u8; 576];
/// let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId::new([1; 12]))?;
/// enc.add(&Software::new("example")?)?;
/// let key = IntegrityKey::short_term(b"password");
/// let len = enc.finish(Trailer::new().with_integrity(key).with_fingerprint())?;
///
/// let msg = Message::parse(&buf[..len])?;
/// msg.verify_integrity(key)?;
/// msg.verify_fingerprint()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Encoder<'b> {
    buf: &'b mut [u8],
    len: usize,
    transaction_id: TransactionId,
    padding: u8,
}

impl<'b> Encoder<'b> {
    /// Starts a message by writing its header into `buf`.
    pub fn new(
        buf: &'b mut [u8],
        message_type: MessageType,
        transaction_id: TransactionId,
    ) -> Result<Self, EncodeError> {
        let available = buf.len();
        let Some(header) = buf.first_chunk_mut::<HEADER_LEN>() else {
            return Err(EncodeError::BufferTooSmall {
                needed: HEADER_LEN,
                available,
            });
        };
        header[0..2].copy_from_slice(&message_type.as_u16().to_be_bytes());
        header[2..4].fill(0);
        header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        header[8..].copy_from_slice(transaction_id.as_bytes());
        Ok(Self {
            buf,
            len: HEADER_LEN,
            transaction_id,
            padding: 0,
        })
    }

    /// Sets the byte that pads attribute values to 4 bytes; zero by default.
    ///
    /// Receivers ignore padding ([RFC 8489 §14]), so this only matters for reproducing captured
    /// or published messages byte for byte (RFC 5769 pads with spaces). It applies to
    /// attributes added after the call.
    ///
    /// [RFC 8489 §14]: https://www.rfc-editor.org/rfc/rfc8489#section-14
    pub const fn set_padding_byte(&mut self, byte: u8) {
        self.padding = byte;
    }

    /// Appends a typed attribute.
    pub fn add<'v, A: Attribute<'v>>(&mut self, attr: &A) -> Result<(), EncodeError> {
        let transaction_id = self.transaction_id;
        let value = self.reserve(A::TYPE, attr.value_len())?;
        attr.encode_value(&transaction_id, value);
        Ok(())
    }

    /// Appends an attribute from its raw value bytes (for types without an [`Attribute`] impl,
    /// such as ICE's PRIORITY, or TURN's DATA forwarded zero-copy).
    pub fn add_raw(&mut self, attr: AttrType, value: &[u8]) -> Result<(), EncodeError> {
        self.reserve(attr, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Bytes written so far, header included.
    pub const fn message_len(&self) -> usize {
        self.len
    }

    /// Appends what `trailer` asks for (MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, then
    /// FINGERPRINT) and returns the
    /// length of the finished message in the buffer.
    pub fn finish(mut self, trailer: Trailer<'_>) -> Result<usize, EncodeError> {
        if let Some(key) = trailer.integrity {
            let offset = self.len;
            self.reserve(AttrType::MESSAGE_INTEGRITY, integrity::MAC_LEN)?;
            let (prefix, tlv) = self.buf.split_at_mut(offset);
            // `reserve` already set Message Length to end after MESSAGE-INTEGRITY.
            let length = [prefix[2], prefix[3]];
            let mac = integrity::hmac_sha1(key, prefix, length)
                .finalize()
                .into_bytes();
            tlv[ATTR_HEADER_LEN..integrity::TLV_LEN].copy_from_slice(&mac);
        }
        if let Some(key) = trailer.integrity_sha256 {
            let offset = self.len;
            self.reserve(
                AttrType::MESSAGE_INTEGRITY_SHA256,
                integrity::SHA256_MAC_LEN,
            )?;
            let (prefix, tlv) = self.buf.split_at_mut(offset);
            let length = [prefix[2], prefix[3]];
            let mac = integrity::hmac_sha256(key, prefix, length)
                .finalize()
                .into_bytes();
            tlv[ATTR_HEADER_LEN..integrity::SHA256_TLV_LEN].copy_from_slice(&mac);
        }
        if trailer.fingerprint {
            let offset = self.len;
            self.reserve(AttrType::FINGERPRINT, 4)?;
            let (prefix, tlv) = self.buf.split_at_mut(offset);
            let crc = fingerprint::compute(prefix);
            tlv[ATTR_HEADER_LEN..fingerprint::TLV_LEN].copy_from_slice(&crc.to_be_bytes());
        }
        Ok(self.len)
    }

    /// Writes a TLV header and padding for a `value_len`-byte value, updates Message Length,
    /// and returns the value's bytes for the caller to fill.
    fn reserve(&mut self, attr: AttrType, value_len: usize) -> Result<&mut [u8], EncodeError> {
        let start = self.len;
        let value_start = start + ATTR_HEADER_LEN;
        let value_end = value_start + value_len;
        let end = value_start + padded_len(value_len);
        let body = end - HEADER_LEN;
        // The body limit also bounds `value_len` below 2^16.
        let (Ok(body16), Ok(value_len16), true) = (
            u16::try_from(body),
            u16::try_from(value_len),
            body <= MAX_BODY_LEN,
        ) else {
            return Err(EncodeError::MessageTooLong { len: body });
        };
        let available = self.buf.len();
        let Some(tlv) = self.buf.get_mut(start..end) else {
            return Err(EncodeError::BufferTooSmall {
                needed: end,
                available,
            });
        };
        tlv[0..2].copy_from_slice(&attr.as_u16().to_be_bytes());
        tlv[2..4].copy_from_slice(&value_len16.to_be_bytes());
        tlv[value_end - start..].fill(self.padding);
        self.buf[2..4].copy_from_slice(&body16.to_be_bytes());
        self.len = end;
        Ok(&mut self.buf[value_start..value_end])
    }
}

/// What [`Encoder::finish`] appends after the attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trailer<'k> {
    integrity: Option<IntegrityKey<'k>>,
    integrity_sha256: Option<IntegrityKey<'k>>,
    fingerprint: bool,
}

impl<'k> Trailer<'k> {
    /// Nothing: the message ends with the last attribute added.
    pub const fn new() -> Self {
        Self {
            integrity: None,
            integrity_sha256: None,
            fingerprint: false,
        }
    }

    /// Append MESSAGE-INTEGRITY (HMAC-SHA1) under `key`.
    pub const fn with_integrity(mut self, key: IntegrityKey<'k>) -> Self {
        self.integrity = Some(key);
        self
    }

    /// Append MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, untruncated) under `key`, after
    /// MESSAGE-INTEGRITY if both are asked for.
    /// [RFC 8489 §14.6](https://www.rfc-editor.org/rfc/rfc8489#section-14.6)
    pub const fn with_integrity_sha256(mut self, key: IntegrityKey<'k>) -> Self {
        self.integrity_sha256 = Some(key);
        self
    }

    /// Append FINGERPRINT (after the integrity attributes, if any).
    pub const fn with_fingerprint(mut self) -> Self {
        self.fingerprint = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Message, Software, XorMappedAddress};

    const TID: TransactionId = TransactionId::new([5; 12]);

    #[test]
    fn writes_header_and_padded_attributes() {
        let mut buf = [0xEEu8; 64];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).unwrap();
        assert_eq!(enc.message_len(), 20);
        enc.add(&Software::new("abcde").unwrap()).unwrap();
        assert_eq!(enc.message_len(), 32);
        let len = enc.finish(Trailer::new()).unwrap();
        assert_eq!(len, 32);
        assert_eq!(&buf[..4], &[0x01, 0x01, 0x00, 0x0C]);
        assert_eq!(&buf[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&buf[8..20], TID.as_bytes());
        assert_eq!(&buf[20..24], &[0x80, 0x22, 0x00, 0x05]);
        assert_eq!(&buf[24..32], b"abcde\0\0\0");
        assert_eq!(buf[32], 0xEE, "nothing written past the message");
    }

    #[test]
    fn padding_byte_is_configurable() {
        let mut buf = [0u8; 32];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).unwrap();
        enc.set_padding_byte(b' ');
        enc.add_raw(AttrType::SOFTWARE, b"a").unwrap();
        let len = enc.finish(Trailer::new()).unwrap();
        assert_eq!(&buf[24..len], b"a   ");
    }

    #[test]
    fn round_trips_through_the_parser() {
        let mut buf = [0u8; 128];
        let addr = XorMappedAddress("[2001:db8::7]:4242".parse().unwrap());
        let key = IntegrityKey::short_term(b"pw");
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).unwrap();
        enc.add(&addr).unwrap();
        let len = enc
            .finish(Trailer::new().with_integrity(key).with_fingerprint())
            .unwrap();
        assert_eq!(len, 20 + 24 + 24 + 8);
        let m = Message::parse(&buf[..len]).unwrap();
        assert_eq!(m.get::<XorMappedAddress>(), Ok(Some(addr)));
        assert!(m.verify_integrity(key).is_ok());
        assert_eq!(m.verify_fingerprint(), Ok(()));
    }

    #[test]
    fn buffer_too_small() {
        assert_eq!(
            Encoder::new(&mut [0; 19], MessageType::BINDING_REQUEST, TID).map(|_| ()),
            Err(EncodeError::BufferTooSmall {
                needed: 20,
                available: 19
            })
        );
        let mut buf = [0u8; 27];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        assert_eq!(
            enc.add_raw(AttrType::SOFTWARE, b"abcd"),
            Err(EncodeError::BufferTooSmall {
                needed: 28,
                available: 27
            })
        );
        // A failed add leaves the encoder as it was.
        assert_eq!(enc.message_len(), 20);
        assert_eq!(
            enc.finish(Trailer::new().with_fingerprint()),
            Err(EncodeError::BufferTooSmall {
                needed: 28,
                available: 27
            })
        );
        let mut buf = [0u8; 40];
        let enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        assert_eq!(
            enc.finish(Trailer::new().with_integrity(IntegrityKey::short_term(b"k"))),
            Err(EncodeError::BufferTooSmall {
                needed: 44,
                available: 40
            })
        );
    }

    #[test]
    fn message_too_long() {
        let mut buf = vec![0u8; 70_000];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        let big = vec![0u8; 0x1_0000];
        assert_eq!(
            enc.add_raw(AttrType::DATA, &big),
            Err(EncodeError::MessageTooLong { len: 0x1_0004 })
        );
        // The largest body that fits the length field.
        enc.add_raw(AttrType::DATA, &big[..MAX_BODY_LEN - 4])
            .unwrap();
        assert_eq!(
            enc.add_raw(AttrType::DATA, &[]),
            Err(EncodeError::MessageTooLong {
                len: MAX_BODY_LEN + 4
            })
        );
        let len = enc.finish(Trailer::new()).unwrap();
        assert_eq!(len, HEADER_LEN + MAX_BODY_LEN);
        assert!(Message::parse(&buf[..len]).is_ok());
    }
}
