//! MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 over the message, and the keys
//! they are computed with. [RFC 8489 §14.5](https://www.rfc-editor.org/rfc/rfc8489#section-14.5),
//! [§14.6](https://www.rfc-editor.org/rfc/rfc8489#section-14.6)
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
//! MESSAGE-INTEGRITY-SHA256 (0x001C) has the same layout with HMAC-SHA256, whose 32 bytes a
//! sender may truncate to any multiple of 4 from 16 up; the receiver compares the bytes sent.
//! When a message carries both, the SHA-256 one is checked (the stronger, and the one a
//! downgrading attacker cannot forge).
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
//!   [`LongTermKey::derive`], or SHA-256 of the same when PASSWORD-ALGORITHM says so →
//!   [`LongTermKey::derive_with`] (see [`super::password`]).
//!
//! OpaqueString (RFC 8265, formerly SASLprep) needs Unicode tables; it is the caller's job. The
//! control plane mints ASCII credentials, for which it is the identity.
//!
//! [RFC 8489 §9]: https://www.rfc-editor.org/rfc/rfc8489#section-9

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::{ATTR_HEADER_LEN, HEADER_LEN, IntegrityError, Message, PasswordAlgorithm};

/// Length of the HMAC-SHA1 value.
pub(super) const MAC_LEN: usize = 20;

/// Bytes MESSAGE-INTEGRITY takes on the wire: TLV header and HMAC, no padding needed.
pub(super) const TLV_LEN: usize = ATTR_HEADER_LEN + MAC_LEN;

/// Length of the untruncated HMAC-SHA256 value, which this crate always sends.
pub(super) const SHA256_MAC_LEN: usize = 32;

/// Bytes an untruncated MESSAGE-INTEGRITY-SHA256 takes on the wire.
pub(super) const SHA256_TLV_LEN: usize = ATTR_HEADER_LEN + SHA256_MAC_LEN;

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

/// A long-term credential key, `H(username ":" realm ":" password)` with `H` the password
/// algorithm: MD5 (16 bytes) unless PASSWORD-ALGORITHM chose SHA-256 (32 bytes).
/// [RFC 8489 §9.2.2](https://www.rfc-editor.org/rfc/rfc8489#section-9.2.2)
///
/// Servers can store this instead of the password; [`from_bytes`](Self::from_bytes) takes a
/// stored MD5 one.
#[derive(Clone)]
pub struct LongTermKey {
    bytes: [u8; 32],
    algorithm: PasswordAlgorithm,
}

impl LongTermKey {
    /// Derives the MD5 key, the RFC 5389 one. All three inputs must already be
    /// OpaqueString-prepared (see the module doc); they are hashed as given.
    pub fn derive(username: &str, realm: &str, password: &str) -> Self {
        let mut md5 = Md5::new();
        md5.update(username.as_bytes());
        md5.update(b":");
        md5.update(realm.as_bytes());
        md5.update(b":");
        md5.update(password.as_bytes());
        Self::from_bytes(md5.finalize().into())
    }

    /// Derives the key with `algorithm`; `None` for an algorithm this crate does not know.
    pub fn derive_with(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Option<Self> {
        match algorithm {
            PasswordAlgorithm::MD5 => Some(Self::derive(username, realm, password)),
            PasswordAlgorithm::SHA256 => {
                let mut sha = Sha256::new();
                sha.update(username.as_bytes());
                sha.update(b":");
                sha.update(realm.as_bytes());
                sha.update(b":");
                sha.update(password.as_bytes());
                Some(Self {
                    bytes: sha.finalize().into(),
                    algorithm,
                })
            }
            _ => None,
        }
    }

    /// Wraps an MD5 key derived elsewhere.
    pub const fn from_bytes(key: [u8; 16]) -> Self {
        let mut bytes = [0; 32];
        let mut i = 0;
        while i < 16 {
            bytes[i] = key[i];
            i += 1;
        }
        Self {
            bytes,
            algorithm: PasswordAlgorithm::MD5,
        }
    }

    /// The algorithm the key was derived with.
    pub const fn algorithm(&self) -> PasswordAlgorithm {
        self.algorithm
    }

    /// The key bytes: 16 for MD5, 32 for SHA-256.
    pub fn as_bytes(&self) -> &[u8] {
        let len = if self.algorithm == PasswordAlgorithm::SHA256 {
            32
        } else {
            16
        };
        &self.bytes[..len]
    }

    /// The key in the form [`Message::verify_integrity`] and the encoder take.
    pub fn as_integrity_key(&self) -> IntegrityKey<'_> {
        IntegrityKey(self.as_bytes())
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
    /// Checks MESSAGE-INTEGRITY-SHA256 if the message has one, else MESSAGE-INTEGRITY, under
    /// `key` ([RFC 8489 §14.5], [§14.6]), comparing in constant time.
    ///
    /// Only the first of each counts; attributes after them other than the integrity
    /// attributes and FINGERPRINT are already hidden by [`Message::attributes`].
    ///
    /// [RFC 8489 §14.5]: https://www.rfc-editor.org/rfc/rfc8489#section-14.5
    /// [§14.6]: https://www.rfc-editor.org/rfc/rfc8489#section-14.6
    pub fn verify_integrity(
        &self,
        key: IntegrityKey<'_>,
    ) -> Result<Authenticated<'a>, IntegrityError> {
        if let Some(offset) = self.integrity_sha256 {
            return self.verify_sha256(key, offset);
        }
        let Some(offset) = self.integrity else {
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

    /// Whether a MESSAGE-INTEGRITY-SHA256 attribute counts, so that
    /// [`verify_integrity`](Self::verify_integrity) checks it and a response should carry one.
    pub const fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    fn verify_sha256(
        &self,
        key: IntegrityKey<'_>,
        offset: usize,
    ) -> Result<Authenticated<'a>, IntegrityError> {
        let (prefix, rest) = self.bytes.split_at(offset);
        // `parse` checked the length (16..=32, a multiple of 4) and that the value fits.
        let Some(len) = rest
            .get(2..4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Err(IntegrityError::Mismatch);
        };
        let Some(expected) = rest.get(ATTR_HEADER_LEN..ATTR_HEADER_LEN + len) else {
            return Err(IntegrityError::Mismatch);
        };
        let Ok(length) = u16::try_from(offset + ATTR_HEADER_LEN + len - HEADER_LEN) else {
            return Err(IntegrityError::Mismatch);
        };
        let mac = hmac_sha256(key, prefix, length.to_be_bytes());
        if mac.verify_truncated_left(expected).is_err() {
            return Err(IntegrityError::Mismatch);
        }
        Ok(Authenticated(*self))
    }
}

/// HMAC-SHA256, as [`hmac_sha1`] for MESSAGE-INTEGRITY-SHA256.
pub(super) fn hmac_sha256(key: IntegrityKey<'_>, prefix: &[u8], length: [u8; 2]) -> Hmac<Sha256> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.0) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(prefix.get(..2).unwrap_or_default());
    mac.update(&length);
    mac.update(prefix.get(4..).unwrap_or_default());
    mac
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
        let bytes: [u8; 16] = key.as_bytes().try_into().unwrap();
        assert_eq!(
            LongTermKey::from_bytes(bytes).as_integrity_key().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(key.algorithm(), PasswordAlgorithm::MD5);
        let sha =
            LongTermKey::derive_with(PasswordAlgorithm::SHA256, "user", "realm", "pass").unwrap();
        assert_eq!(sha.as_bytes().len(), 32);
        assert_eq!(sha.algorithm(), PasswordAlgorithm::SHA256);
        assert!(LongTermKey::derive_with(PasswordAlgorithm::new(9), "u", "r", "p").is_none());
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
    fn sha256_verifies_full_and_truncated() {
        let key = IntegrityKey::short_term(b"secret");
        let mut buf = [0u8; 128];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        enc.add(&Software::new("test").unwrap()).unwrap();
        let len = enc
            .finish(
                Trailer::new()
                    .with_integrity(key)
                    .with_integrity_sha256(key)
                    .with_fingerprint(),
            )
            .unwrap();
        let m = Message::parse(&buf[..len]).unwrap();
        assert!(m.has_integrity_sha256());
        m.verify_integrity(key).unwrap();
        // The SHA-256 attribute is the one checked: damage it and the intact SHA-1 one
        // does not save the message.
        let mut damaged = buf[..len].to_vec();
        damaged[len - 8 - 4] ^= 1;
        let m = Message::parse(&damaged).unwrap();
        assert_eq!(
            m.verify_integrity(key).map(|_| ()),
            Err(IntegrityError::Mismatch)
        );

        // A sender truncating to 16 bytes computes over a length that counts 16.
        let mut buf = [0u8; 128];
        let enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, TID).unwrap();
        let start = enc.message_len();
        buf[2..4].copy_from_slice(&20u16.to_be_bytes());
        let mac = hmac_sha256(key, &buf[..start], [0, 20])
            .finalize()
            .into_bytes();
        buf[start..start + 4].copy_from_slice(&[0x00, 0x1C, 0x00, 0x10]);
        buf[start + 4..start + 20].copy_from_slice(&mac[..16]);
        let m = Message::parse(&buf[..start + 20]).unwrap();
        m.verify_integrity(key).unwrap();
        assert_eq!(
            m.verify_integrity(IntegrityKey::short_term(b"other"))
                .map(|_| ()),
            Err(IntegrityError::Mismatch)
        );
    }

    #[test]
    fn missing_and_mismatch() {
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
            Err(IntegrityError::Mismatch)
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
