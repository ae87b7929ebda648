//! WireGuard keys: the public key of a private key file (X25519, as `wg pubkey` does), and
//! the private key itself, kept for the key proof at registration.

use boson_shared::WgPublicKey;
use x25519_dalek::{PublicKey, StaticSecret};

/// A WireGuard private key. Its `Debug` prints the public key only.
#[derive(Clone, PartialEq, Eq)]
pub struct WgSecret([u8; 32]);

impl WgSecret {
    /// Wraps the 32 bytes of a private key.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key, for proving possession of it.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Its public key.
    pub fn public_key(&self) -> WgPublicKey {
        public_key(self.0)
    }
}

impl std::fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgSecret(public {})", self.public_key())
    }
}

/// The public key of a WireGuard private key (clamped as X25519 requires).
pub fn public_key(private: [u8; 32]) -> WgPublicKey {
    let secret = StaticSecret::from(private);
    WgPublicKey::from_bytes(PublicKey::from(&secret).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_alice() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let private = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(public_key(private).as_bytes(), &public);
    }
}
