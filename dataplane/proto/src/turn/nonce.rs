//! Stateless NONCEs for the long-term credential mechanism ([RFC 8489 §9.2]).
//!
//! The server keeps nothing per client before a request authenticates, so a nonce carries its
//! own proof of origin:
//!
//! ```text
//! nonce = hex(issued, 4 bytes) ‖ hex(HMAC-SHA1(key, issued ‖ client IP (16) ‖ client port (2))[..8])
//!         8 characters            16 characters                          = 24 ASCII characters
//! ```
//!
//! `issued` counts seconds since the server was created (monotonic `now`, not wall time), `key`
//! is 32 random bytes drawn at construction. A nonce is valid for the client address it was
//! given to, for `nonce_lifetime` seconds; after that, or if it was forged, minted by another
//! server instance, or replayed from another address, the request gets 438 Stale Nonce with a
//! fresh one. 64 bits of tag make guessing pointless within a nonce's lifetime.
//!
//! [RFC 8489 §9.2]: https://www.rfc-editor.org/rfc/rfc8489#section-9.2

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use rand_core::RngCore;
use sha1::Sha1;

use crate::binding::ClientAddr;

/// Length of a nonce in ASCII characters.
pub(crate) const NONCE_LEN: usize = 24;

/// Bytes of HMAC kept in a nonce.
const TAG_LEN: usize = 8;

/// What a received nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Minted by this server for this client, and young enough.
    Fresh,
    /// Minted by this server for this client, but too old.
    Stale,
    /// Not minted by this server for this client (forged, another instance, another address).
    Invalid,
}

/// The per-server key nonces are minted and checked with.
pub(crate) struct NonceKey([u8; 32]);

impl NonceKey {
    pub(crate) fn new<R: RngCore>(rng: &mut R) -> Self {
        let mut key = [0; 32];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// The nonce for `client`, issued `issued` seconds after the server epoch.
    pub(crate) fn mint(&self, client: ClientAddr, issued: u32) -> [u8; NONCE_LEN] {
        let tag = self.mac(client, issued).finalize().into_bytes();
        let mut out = [0; NONCE_LEN];
        hex_encode(&issued.to_be_bytes(), &mut out[..8]);
        hex_encode(&tag[..TAG_LEN], &mut out[8..]);
        out
    }

    /// Checks `nonce` for `client` at `now` seconds after the epoch.
    pub(crate) fn check(
        &self,
        nonce: &str,
        client: ClientAddr,
        now: u32,
        lifetime: u32,
    ) -> NonceCheck {
        let Some((issued, tag)) = nonce
            .as_bytes()
            .split_first_chunk::<8>()
            .filter(|(_, tag)| tag.len() == 2 * TAG_LEN)
        else {
            return NonceCheck::Invalid;
        };
        let (Some(issued), Some(tag)) = (hex_decode::<4>(issued), hex_decode::<TAG_LEN>(tag))
        else {
            return NonceCheck::Invalid;
        };
        let issued = u32::from_be_bytes(issued);
        if self
            .mac(client, issued)
            .verify_truncated_left(&tag)
            .is_err()
            || issued > now
        {
            return NonceCheck::Invalid;
        }
        if now - issued >= lifetime {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh
    }

    fn mac(&self, client: ClientAddr, issued: u32) -> Hmac<Sha1> {
        let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.0) else {
            unreachable!("HMAC accepts keys of any length");
        };
        let addr = client.get();
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        mac.update(&issued.to_be_bytes());
        mac.update(&ip);
        mac.update(&addr.port().to_be_bytes());
        mac
    }
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0F)];
    }
}

fn hex_decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);

    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            u32::from(self.next_byte())
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_byte())
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill_with(|| self.next_byte());
        }
    }

    impl Counter {
        fn next_byte(&mut self) -> u8 {
            self.0 = self.0.wrapping_add(1);
            self.0
        }
    }

    fn client(s: &str) -> ClientAddr {
        ClientAddr::new(s.parse().unwrap())
    }

    #[test]
    fn fresh_then_stale() {
        let key = NonceKey::new(&mut Counter(0));
        let alice = client("198.51.100.1:5000");
        let nonce = key.mint(alice, 100);
        let text = std::str::from_utf8(&nonce).unwrap();
        assert_eq!(&text[..8], "00000064");
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key.check(text, alice, 100, 600), NonceCheck::Fresh);
        assert_eq!(key.check(text, alice, 699, 600), NonceCheck::Fresh);
        assert_eq!(key.check(text, alice, 700, 600), NonceCheck::Stale);
        assert_eq!(key.check(text, alice, 99, 600), NonceCheck::Invalid);
    }

    #[test]
    fn bound_to_address_and_key() {
        let key = NonceKey::new(&mut Counter(0));
        let alice = client("198.51.100.1:5000");
        let nonce = key.mint(alice, 7);
        let text = std::str::from_utf8(&nonce).unwrap();
        for other in ["198.51.100.1:5001", "198.51.100.2:5000", "[::1]:5000"] {
            assert_eq!(key.check(text, client(other), 7, 600), NonceCheck::Invalid);
        }
        let other_key = NonceKey::new(&mut Counter(9));
        assert_eq!(other_key.check(text, alice, 7, 600), NonceCheck::Invalid);
        // Tampering with the timestamp breaks the tag.
        let mut forged = nonce;
        forged[7] = b'8';
        let forged = std::str::from_utf8(&forged).unwrap();
        assert_eq!(key.check(forged, alice, 8, 600), NonceCheck::Invalid);
        for junk in [
            "",
            "short",
            "0000000700000000000000000",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(
                key.check(junk, alice, 7, 600),
                NonceCheck::Invalid,
                "{junk}"
            );
        }
    }
}
