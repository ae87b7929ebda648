//! MESSAGE-INTEGRITY: HMAC-SHA1 over the message, and the keys it is computed with.
//! [RFC 8489 §14.5](https://www.rfc-editor.org/rfc/rfc8489#section-14.5)
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type = 0x0008                |  Length = 20                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           HMAC-SHA1(key, header ‖ attributes before MI)       |
//! |                          (20 bytes)                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The HMAC input is the message up to, not including, the MESSAGE-INTEGRITY attribute, with the
//! header's Message Length field set as if the message ended right after MESSAGE-INTEGRITY. The
//! sender computes it before appending FINGERPRINT, so a receiver must subtract what follows.
//! This crate feeds the adjusted length to the HMAC separately, so verifying neither copies nor
//! mutates the received bytes.
//!
//! Keys ([RFC 8489 §9]):
//!
//! * short-term: `key = OpaqueString(password)` → [`IntegrityKey::short_term`];
//! * long-term: `key = MD5(username ":" OpaqueString(realm) ":" OpaqueString(password))` →
//!   [`LongTermKey::derive`].
//!
//! OpaqueString (RFC 8265, formerly SASLprep) needs Unicode tables; it is the caller's job. The
//! control plane mints ASCII credentials, for which it is the identity.
//!
//! MESSAGE-INTEGRITY-SHA256 is recognised (parsed, positioned) but not computed: no client we
//! target requires it, and PASSWORD-ALGORITHM negotiation comes with it.
//!
//! [RFC 8489 §9]: https://www.rfc-editor.org/rfc/rfc8489#section-9

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use super::{ATTR_HEADER_LEN, HEADER_LEN, IntegrityError, Message};

/// Length of the HMAC-SHA1 value.
pub(super) const MAC_LEN: usize = 20;

/// Bytes MESSAGE-INTEGRITY takes on the wire: TLV header and HMAC, no padding needed.
pub(super) const TLV_LEN: usize = ATTR_HEADER_LEN + MAC_LEN;

/// A key for MESSAGE-INTEGRITY, borrowed from wherever the caller keeps credentials.
#[derive(Clone, Copy)]
pub struct IntegrityKey<'k>(&'k [u8]);

impl<'k> IntegrityKey<'k> {
    /// The short-term credential key: the password itself, already OpaqueString-prepared.
    /// [RFC 8489 §9.1.1](https://www.rfc-editor.org/rfc/rfc8489#section-9.1.1)
    pub const fn short_term(password: &'k [u8]) -> Self {
        Self(password)
    }

    /// The key bytes.
    pub const fn as_bytes(&self) -> &'k [u8] {
        self.0
    }
}

impl fmt::Debug for IntegrityKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey(<redacted>)")
    }
}

/// A long-term credential key, `MD5(username ":" realm ":" password)`.
/// [RFC 8489 §9.2.2](https://www.rfc-editor.org/rfc/rfc8489#section-9.2.2)
///
/// Servers can store this instead of the password; [`from_bytes`](Self::from_bytes) takes a
/// stored one.
#[derive(Clone)]
pub struct LongTermKey([u8; 16]);

impl LongTermKey {
    /// Derives the key. All three inputs must already be OpaqueString-prepared (see the module
    /// doc); they are hashed as given.
    pub fn derive(username: &str, realm: &str, password: &str) -> Self {
        let mut md5 = Md5::new();
        md5.update(username.as_bytes());
        md5.update(b":");
        md5.update(realm.as_bytes());
        md5.update(b":");
        md5.update(password.as_bytes());
        Self(md5.finalize().into())
    }

    /// Wraps a key derived elsewhere.
    pub const fn from_bytes(key: [u8; 16]) -> Self {
        Self(key)
    }

    /// The 16 key bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The key in the form [`Message::verify_integrity`] and the encoder take.
    pub fn as_integrity_key(&self) -> IntegrityKey<'_> {
        IntegrityKey(&self.0)
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKey(<redacted>)")
    }
}

/// Proof that a message's MESSAGE-INTEGRITY checked under some key.
///
/// Only [`Message::verify_integrity`] builds one; code that needs an authenticated request
/// (TURN Allocate, Refresh, …) takes this type, so skipping the check does not compile.
/// [`dangerous_assume_authenticated`](Self::dangerous_assume_authenticated) is the named
/// escape hatch for tests and for methods that are deliberately unauthenticated.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated<'a>(Message<'a>);

impl<'a> Authenticated<'a> {
    /// The authenticated message.
    pub const fn message(&self) -> &Message<'a> {
        &self.0
    }

    /// Treats `message` as authenticated without checking anything.
    pub const fn dangerous_assume_authenticated(message: Message<'a>) -> Self {
        Self(message)
    }
}

impl<'a> Message<'a> {
    /// Checks MESSAGE-INTEGRITY under `key` ([RFC 8489 §14.5]), comparing in constant time.
    ///
    /// Only the first MESSAGE-INTEGRITY counts; attributes after it other than
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are already hidden by [`Message::attributes`].
    ///
    /// [RFC 8489 §14.5]: https://www.rfc-editor.org/rfc/rfc8489#section-14.5
    pub fn verify_integrity(
        &self,
        key: IntegrityKey<'_>,
    ) -> Result<Authenticated<'a>, IntegrityError> {
        let Some(offset) = self.integrity else {
            if self.integrity_sha256.is_some() {
                return Err(IntegrityError::UnsupportedAlgorithm);
            }
            return Err(IntegrityError::Missing);
        };
        let (prefix, rest) = self.bytes.split_at(offset);
        let Some(expected) = rest.get(ATTR_HEADER_LEN..TLV_LEN) else {
            // `parse` checked the length; stay total anyway.
            return Err(IntegrityError::Mismatch);
        };
        // Message Length as if the message ended right after MESSAGE-INTEGRITY.
        let Ok(length) = u16::try_from(offset + TLV_LEN - HEADER_LEN) else {
            return Err(IntegrityError::Mismatch);
        };
        let mac = hmac_sha1(key, prefix, length.to_be_bytes());
        if mac.verify_slice(expected).is_err() {
            return Err(IntegrityError::Mismatch);
        }
        Ok(Authenticated(*self))
    }
}

/// HMAC-SHA1 keyed with `key` over `prefix` (header and attributes before MESSAGE-INTEGRITY),
/// with the header's length field replaced by `length`.
pub(super) fn hmac_sha1(key: IntegrityKey<'_>, prefix: &[u8], length: [u8; 2]) -> Hmac<Sha1> {
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(key.0) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(prefix.get(..2).unwrap_or_default());
    mac.update(&length);
    mac.update(prefix.get(4..).unwrap_or_default());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Encoder, MessageType, Software, Trailer, TransactionId};

    const TID: TransactionId = TransactionId::new([3; 12]);

    fn signed(key: IntegrityKey<'_>, fingerprint: bool) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        enc.add(&Software::new("test").unwrap()).unwrap();
        let mut trailer = Trailer::new().with_integrity(key);
        if fingerprint {
            trailer = trailer.with_fingerprint();
        }
        let len = enc.finish(trailer).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // MD5("user:realm:pass")
        let key = LongTermKey::derive("user", "realm", "pass");
        assert_eq!(
            key.as_bytes(),
            &[
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
        assert_eq!(
            LongTermKey::from_bytes(*key.as_bytes())
                .as_integrity_key()
                .as_bytes(),
            key.as_bytes()
        );
        assert_eq!(format!("{key:?}"), "LongTermKey(<redacted>)");
    }

    #[test]
    fn verifies_with_and_without_fingerprint() {
        let key = IntegrityKey::short_term(b"secret");
        for fingerprint in [false, true] {
            let bytes = signed(key, fingerprint);
            let m = Message::parse(&bytes).unwrap();
            let auth = m.verify_integrity(key).unwrap();
            assert_eq!(auth.message().transaction_id(), TID);
            assert_eq!(
                m.verify_integrity(IntegrityKey::short_term(b"Secret"))
                    .map(|_| ()),
                Err(IntegrityError::Mismatch)
            );
        }
    }

    #[test]
    fn tampering_before_integrity_is_detected() {
        let key = IntegrityKey::short_term(b"secret");
        let mut bytes = signed(key, false);
        bytes[HEADER_LEN + 4] ^= 0x20; // flip a SOFTWARE byte
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            m.verify_integrity(key).map(|_| ()),
            Err(IntegrityError::Mismatch)
        );
    }

    #[test]
    fn missing_and_unsupported() {
        let mut buf = [0u8; 64];
        let len = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID)
            .unwrap()
            .finish(Trailer::new())
            .unwrap();
        let m = Message::parse(&buf[..len]).unwrap();
        assert_eq!(
            m.verify_integrity(IntegrityKey::short_term(b"k"))
                .map(|_| ()),
            Err(IntegrityError::Missing)
        );

        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        enc.add_raw(crate::stun::AttrType::MESSAGE_INTEGRITY_SHA256, &[0; 32])
            .unwrap();
        let len = enc.finish(Trailer::new()).unwrap();
        let m = Message::parse(&buf[..len]).unwrap();
        assert_eq!(
            m.verify_integrity(IntegrityKey::short_term(b"k"))
                .map(|_| ()),
            Err(IntegrityError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn dangerous_escape_hatch_is_explicit() {
        let bytes = signed(IntegrityKey::short_term(b"x"), false);
        let m = Message::parse(&bytes).unwrap();
        let auth = Authenticated::dangerous_assume_authenticated(m);
        assert_eq!(auth.message().as_bytes(), &bytes[..]);
    }
}
