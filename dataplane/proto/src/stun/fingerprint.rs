//! FINGERPRINT: CRC-32 of the message, XOR-ed with "STUN", as its last attribute.
//! [RFC 8489 §14.7](https://www.rfc-editor.org/rfc/rfc8489#section-14.7)
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type = 0x8028                |  Length = 4                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        CRC-32(header ‖ attributes before FINGERPRINT)         |
//! |                       XOR 0x5354554E                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The CRC is the ISO-HDLC CRC-32 (the one in zlib and Ethernet). It covers the header with a
//! Message Length that already includes FINGERPRINT; since FINGERPRINT is last, that is the
//! length as received. It exists to tell STUN from other protocols multiplexed on one port,
//! not for security.

use super::{ATTR_HEADER_LEN, FingerprintError, Message};

/// XOR-ed into the CRC so that a packet of another protocol that happens to carry a valid
/// CRC-32 at the same place is not mistaken for STUN. It spells "STUN" in ASCII.
/// [RFC 8489 §14.7](https://www.rfc-editor.org/rfc/rfc8489#section-14.7)
pub const FINGERPRINT_XOR: u32 = 0x5354_554E; // 'S' 'T' 'U' 'N'

/// Bytes FINGERPRINT takes on the wire: TLV header and CRC.
pub(super) const TLV_LEN: usize = ATTR_HEADER_LEN + 4;

/// The FINGERPRINT value for a message whose bytes before the FINGERPRINT TLV are `prefix`
/// (Message Length in `prefix` already counting FINGERPRINT).
pub(super) fn compute(prefix: &[u8]) -> u32 {
    crc32fast::hash(prefix) ^ FINGERPRINT_XOR
}

impl Message<'_> {
    /// Checks the FINGERPRINT attribute.
    ///
    /// Servers check it when present and drop the message on mismatch: a STUN message with a
    /// wrong fingerprint is most likely another protocol's packet.
    pub fn verify_fingerprint(&self) -> Result<(), FingerprintError> {
        let Some(offset) = self.fingerprint else {
            return Err(FingerprintError::Missing);
        };
        let (prefix, rest) = self.bytes.split_at(offset);
        let Some(&[a, b, c, d]) = rest.get(ATTR_HEADER_LEN..TLV_LEN) else {
            // `parse` checked the length; stay total anyway.
            return Err(FingerprintError::Missing);
        };
        let found = u32::from_be_bytes([a, b, c, d]);
        let expected = compute(prefix);
        if found != expected {
            return Err(FingerprintError::Mismatch { expected, found });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Encoder, HEADER_LEN, MessageType, Trailer, TransactionId};

    #[test]
    fn crc_is_iso_hdlc() {
        // The published check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_mismatch() {
        let mut buf = [0u8; 64];
        let enc = Encoder::new(
            &mut buf,
            MessageType::BINDING_REQUEST,
            TransactionId::new([9; 12]),
        )
        .unwrap();
        let len = enc.finish(Trailer::new().with_fingerprint()).unwrap();
        assert_eq!(len, HEADER_LEN + TLV_LEN);
        let m = Message::parse(&buf[..len]).unwrap();
        assert!(m.has_fingerprint());
        assert_eq!(m.verify_fingerprint(), Ok(()));

        buf[10] ^= 1; // transaction id bit
        let m = Message::parse(&buf[..len]).unwrap();
        assert!(matches!(
            m.verify_fingerprint(),
            Err(FingerprintError::Mismatch { .. })
        ));
    }

    #[test]
    fn missing() {
        let mut buf = [0u8; 20];
        let enc = Encoder::new(
            &mut buf,
            MessageType::BINDING_REQUEST,
            TransactionId::new([9; 12]),
        )
        .unwrap();
        let len = enc.finish(Trailer::new()).unwrap();
        let m = Message::parse(&buf[..len]).unwrap();
        assert_eq!(m.verify_fingerprint(), Err(FingerprintError::Missing));
    }
}
