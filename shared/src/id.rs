//! Identifiers and keys shared by the control plane and the dataplane.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A node's stable identity, chosen by the node (a UUID) when it first registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Uuid);

impl NodeId {
    /// Wraps a UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID behind the id.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The id from its 16 bytes, as wire formats carry it.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The id's 16 bytes, as wire formats carry it.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case, the form nodes send and the database stores.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for NodeId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Length of a Curve25519 public key, as WireGuard uses it.
pub const WG_KEY_LEN: usize = 32;

/// A WireGuard public key: exactly 32 bytes, written as standard base64 (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgPublicKey([u8; WG_KEY_LEN]);

/// Why a string is not a WireGuard public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseKeyError {
    /// The text is not standard base64.
    #[error("public key is not valid base64")]
    NotBase64,
    /// The text decodes, but not to 32 bytes.
    #[error("public key must decode to 32 bytes, got {0}")]
    WrongLength(usize),
}

impl WgPublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; WG_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; WG_KEY_LEN] {
        &self.0
    }

    /// The key as WireGuard writes it: standard base64 with padding.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for WgPublicKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| ParseKeyError::NotBase64)?;
        let key: [u8; WG_KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ParseKeyError::WrongLength(bytes.len()))?;
        Ok(Self(key))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({})", self.to_base64())
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl Serialize for WgPublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for WgPublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_base64() {
        let key = WgPublicKey::from_bytes([7; 32]);
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<WgPublicKey>(), Ok(key));
    }

    #[test]
    fn public_key_rejects_wrong_lengths_and_bad_base64() {
        let short = STANDARD.encode([1u8; 31]);
        let long = STANDARD.encode([1u8; 33]);
        assert_eq!(
            short.parse::<WgPublicKey>(),
            Err(ParseKeyError::WrongLength(31))
        );
        assert_eq!(
            long.parse::<WgPublicKey>(),
            Err(ParseKeyError::WrongLength(33))
        );
        assert_eq!(
            "not base64!".parse::<WgPublicKey>(),
            Err(ParseKeyError::NotBase64)
        );
        assert_eq!(
            "".parse::<WgPublicKey>(),
            Err(ParseKeyError::WrongLength(0))
        );
    }

    #[test]
    fn node_id_round_trips_through_its_bytes() {
        let id: NodeId = "550e8400-e29b-41d4-a716-446655440000".parse().unwrap();
        assert_eq!(id.as_bytes()[..2], [0x55, 0x0e]);
        assert_eq!(NodeId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn node_id_displays_hyphenated_lower_case() {
        let id: NodeId = "550E8400-E29B-41D4-A716-446655440000".parse().unwrap();
        assert_eq!(id.to_string(), "550e8400-e29b-41d4-a716-446655440000");
        assert!("550e8400".parse::<NodeId>().is_err());
    }
}
