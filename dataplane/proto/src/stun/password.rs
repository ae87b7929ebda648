//! Password algorithms for the long-term credential mechanism: PASSWORD-ALGORITHM,
//! PASSWORD-ALGORITHMS, USERHASH and the nonce cookie that protects them from downgrade.
//! [RFC 8489 §9.2](https://www.rfc-editor.org/rfc/rfc8489#section-9.2)
//!
//! ```text
//! PASSWORD-ALGORITHM (0x001D), and each entry of PASSWORD-ALGORITHMS (0x8002):
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Algorithm            |  Algorithm Parameters Length  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Algorithm Parameters (variable, padded to 4)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Flow ([RFC 8489 §9.2.3–9.2.5]): the server's 401 carries a NONCE that starts with the nonce
//! cookie `obMatJos2` and a base64 security-feature set whose "password algorithms" bit is set,
//! plus PASSWORD-ALGORITHMS listing what it accepts. A client that understands this echoes
//! PASSWORD-ALGORITHMS unchanged, names its choice in PASSWORD-ALGORITHM and derives the key
//! with that algorithm. Because the server's nonce carries the cookie, stripping the
//! attributes from the 401 (to force MD5) leaves a client that sees the cookie without the
//! list, and a request that names no algorithm under a cookie nonce is taken as MD5 by the RFC,
//! so the attack gains nothing the client did not already accept.
//!
//! Both registered algorithms (MD5 0x0001, SHA-256 0x0002) take no parameters.
//!
//! [RFC 8489 §9.2.3–9.2.5]: https://www.rfc-editor.org/rfc/rfc8489#section-9.2.3

use sha2::{Digest, Sha256};

use super::{AttrError, AttrType, Attribute, TransactionId};

/// The nonce cookie: a NONCE starting with these 9 characters carries a security-feature set
/// in its next 4. [RFC 8489 §9.2](https://www.rfc-editor.org/rfc/rfc8489#section-9.2)
pub const NONCE_COOKIE: &str = "obMatJos2";

/// The nonce cookie followed by the feature set with only "password algorithms" (bit 0, the
/// most significant of the 24 bits, IETF bit numbering) set: `base64([0x80, 0, 0])`. This
/// server does not offer username anonymity (bit 1): REST usernames cannot be found from
/// their hash.
pub const NONCE_COOKIE_PASSWORD_ALGORITHMS: &str = "obMatJos2gAAA";

/// Length of the cookie plus the encoded feature set.
pub const NONCE_COOKIE_LEN: usize = 13;

/// Whether `nonce` starts with the nonce cookie and its feature set has the "password
/// algorithms" bit set. The bit is read from either end of the 24 bits, as implementations
/// differ on the numbering (bit 0 as the most or the least significant).
pub fn nonce_offers_password_algorithms(nonce: &str) -> bool {
    let Some(features) = nonce
        .strip_prefix(NONCE_COOKIE)
        .and_then(|rest| rest.as_bytes().first_chunk::<4>())
    else {
        return false;
    };
    let mut bits = 0u32;
    for &c in features {
        let Some(value) = base64_value(c) else {
            return false;
        };
        bits = (bits << 6) | u32::from(value);
    }
    bits & 0x80_0000 != 0 || bits & 0x00_0001 != 0
}

fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// A password algorithm number. [RFC 8489 §18.5](https://www.rfc-editor.org/rfc/rfc8489#section-18.5)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm(u16);

impl PasswordAlgorithm {
    /// `key = MD5(username ":" realm ":" password)`, the RFC 5389 key and the default.
    pub const MD5: Self = Self(0x0001);
    /// `key = SHA-256(username ":" realm ":" password)`.
    pub const SHA256: Self = Self(0x0002);

    /// Wraps a number from the wire.
    pub const fn new(value: u16) -> Self {
        Self(value)
    }

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }
}

/// PASSWORD-ALGORITHM: the algorithm a request's key was derived with.
/// [RFC 8489 §14.12](https://www.rfc-editor.org/rfc/rfc8489#section-14.12)
///
/// Parameters are decoded structurally and ignored: neither registered algorithm has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithmAttr(pub PasswordAlgorithm);

impl<'a> Attribute<'a> for PasswordAlgorithmAttr {
    const TYPE: AttrType = AttrType::PASSWORD_ALGORITHM;

    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let mut entries = PasswordAlgorithmsIter(value);
        match (entries.next(), entries.next()) {
            (Some(Ok(algorithm)), None) => Ok(Self(algorithm)),
            (Some(Err(err)), _) => Err(err),
            _ => Err(AttrError::InvalidLength {
                attr: Self::TYPE,
                len: value.len(),
            }),
        }
    }

    fn value_len(&self) -> usize {
        4
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.0.as_u16().to_be_bytes());
        out[2..4].fill(0);
    }
}

/// PASSWORD-ALGORITHMS: the algorithms a server accepts, in its order of preference; the
/// client echoes it unchanged. [RFC 8489 §14.11](https://www.rfc-editor.org/rfc/rfc8489#section-14.11)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithms<'a>(&'a [u8]);

/// The list this crate's server sends: SHA-256 first, MD5 for older clients.
pub const SERVER_PASSWORD_ALGORITHMS: PasswordAlgorithms<'static> =
    PasswordAlgorithms(&[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);

impl<'a> PasswordAlgorithms<'a> {
    /// The algorithms, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = PasswordAlgorithm> + 'a {
        PasswordAlgorithmsIter(self.0).filter_map(Result::ok)
    }

    /// Whether `algorithm` is listed.
    pub fn contains(&self, algorithm: PasswordAlgorithm) -> bool {
        self.iter().any(|a| a == algorithm)
    }

    /// The value bytes, for comparing with what was sent.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<'a> Attribute<'a> for PasswordAlgorithms<'a> {
    const TYPE: AttrType = AttrType::PASSWORD_ALGORITHMS;

    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        if value.is_empty() {
            return Err(AttrError::InvalidLength {
                attr: Self::TYPE,
                len: 0,
            });
        }
        for entry in PasswordAlgorithmsIter(value) {
            entry.map_err(|_| AttrError::InvalidLength {
                attr: Self::TYPE,
                len: value.len(),
            })?;
        }
        Ok(Self(value))
    }

    fn value_len(&self) -> usize {
        self.0.len()
    }

    fn encode_value(&self, _: &TransactionId, out: &mut [u8]) {
        out.copy_from_slice(self.0);
    }
}

/// Walks algorithm entries: number (2), parameter length (2), parameters padded to 4.
struct PasswordAlgorithmsIter<'a>(&'a [u8]);

impl Iterator for PasswordAlgorithmsIter<'_> {
    type Item = Result<PasswordAlgorithm, AttrError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let invalid = AttrError::InvalidLength {
            attr: AttrType::PASSWORD_ALGORITHM,
            len: self.0.len(),
        };
        let Some((head, rest)) = self.0.split_first_chunk::<4>() else {
            self.0 = &[];
            return Some(Err(invalid));
        };
        let params = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let skip = params.next_multiple_of(4);
        let Some(rest) = rest.get(skip..) else {
            self.0 = &[];
            return Some(Err(invalid));
        };
        self.0 = rest;
        Some(Ok(PasswordAlgorithm(u16::from_be_bytes([
            head[0], head[1],
        ]))))
    }
}

/// USERHASH's value: `SHA-256(username ":" realm)`, both OpaqueString-prepared.
/// [RFC 8489 §14.4](https://www.rfc-editor.org/rfc/rfc8489#section-14.4)
///
/// This crate's server does not accept USERHASH (it cannot find a REST username from its
/// hash and does not set the anonymity bit); clients and tests compute it here.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(username.as_bytes());
    sha.update(b":");
    sha.update(realm.as_bytes());
    sha.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId::new([0; 12]);

    #[test]
    fn cookie_bit_is_read_from_either_end() {
        assert!(nonce_offers_password_algorithms(
            NONCE_COOKIE_PASSWORD_ALGORITHMS
        ));
        // Appendix B.1's `AAAC` is bit 1 (username anonymity) under either numbering.
        assert!(!nonce_offers_password_algorithms(
            "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
        ));
        assert!(nonce_offers_password_algorithms("obMatJos2AAAB123"));
        assert!(!nonce_offers_password_algorithms("obMatJos2AAAA123"));
        assert!(!nonce_offers_password_algorithms("obMatJos2gA"));
        assert!(!nonce_offers_password_algorithms("obMatJos2g*AA"));
        assert!(!nonce_offers_password_algorithms(
            "0123456789abcdef01234567"
        ));
        assert_eq!(NONCE_COOKIE_PASSWORD_ALGORITHMS.len(), NONCE_COOKIE_LEN);
    }

    #[test]
    fn algorithms_round_trip_and_reject_overruns() {
        let list = PasswordAlgorithms::decode(SERVER_PASSWORD_ALGORITHMS.as_bytes(), &TID).unwrap();
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5]
        );
        assert!(list.contains(PasswordAlgorithm::MD5));
        assert!(!list.contains(PasswordAlgorithm::new(3)));
        // Parameters are skipped with their padding.
        let with_params = [0, 9, 0, 1, 0xAA, 0, 0, 0, 0, 2, 0, 0];
        let list = PasswordAlgorithms::decode(&with_params, &TID).unwrap();
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            [PasswordAlgorithm::new(9), PasswordAlgorithm::SHA256]
        );
        for bad in [
            &[][..],
            &[0, 1, 0],
            &[0, 1, 0, 8, 0, 0, 0, 0],
            &[0, 1, 0, 0, 0],
        ] {
            assert!(PasswordAlgorithms::decode(bad, &TID).is_err(), "{bad:?}");
        }

        let mut out = [0; 4];
        PasswordAlgorithmAttr(PasswordAlgorithm::SHA256).encode_value(&TID, &mut out);
        assert_eq!(out, [0, 2, 0, 0]);
        assert_eq!(
            PasswordAlgorithmAttr::decode(&out, &TID).unwrap(),
            PasswordAlgorithmAttr(PasswordAlgorithm::SHA256)
        );
        assert!(PasswordAlgorithmAttr::decode(&[0, 2, 0, 0, 0, 1, 0, 0], &TID).is_err());
        assert!(PasswordAlgorithmAttr::decode(&[0, 2], &TID).is_err());
    }

    #[test]
    fn userhash_matches_rfc_8489_appendix_b1() {
        assert_eq!(
            userhash(
                "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
                "example.org"
            ),
            [
                0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17,
                0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41,
                0x40, 0x7f, 0x17, 0x04,
            ]
        );
    }
}
