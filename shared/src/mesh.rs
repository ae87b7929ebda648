//! Mesh credentials: how one relay host proves to another that it belongs to the same
//! deployment, so the other pushes it the packets of nodes connected to it.
//!
//! Every host holds the same mesh key (configured, never sent). A host that opens a mesh
//! link does so over TLS 1.3 (`wss://`, the other host's relay certificate checked as any
//! https client checks one) and presents a bearer token, in the upgrade request's
//! `Authorization` header:
//!
//! ```text
//! token = "mesh." <host> "." <secs> "." <sig>
//!   host = the connecting host's id: a UUID, hyphenated lower case (36 characters)
//!   secs = unix seconds at minting: decimal, no sign, no leading zero (1 to 20 digits)
//!   sig  = base64url without padding (43 characters) of
//!          HMAC-SHA256(key, "boson-mesh-v3|" <host> "|" <target> "|" <secs> "|" <binding>)
//!   target  = the id of the host the link is opened to (not carried: the verifier uses its
//!             own), hyphenated lower case
//!   binding = the connection's channel binding (not carried: each end computes it), 64
//!             lower-case hex digits of 32 bytes of TLS exporter keying material
//!             (RFC 8446 §7.5, label [`EXPORTER_LABEL`], no context)
//! ```
//!
//! The token fits the `token68` grammar of a bearer header. The receiving host accepts it
//! while `secs` is within a skew window of its own clock ([`DEFAULT_MAX_SKEW`], ±5 min):
//! tokens are minted per connection, so the window only has to cover clock skew and the
//! connect time. A token is bound to the host it was minted for, so one seen on a link to
//! host B cannot open a link to host C; and to the TLS connection it was minted on, whose
//! exporter secret no one else knows and no other connection shares, so a captured token
//! opens nothing, not even on B within its window. (Only with `--danger-plain-mesh`, for
//! tests, do links run on plain WebSocket: the binding is then [`ChannelBinding::PLAIN`],
//! the same for every connection, and a seen token can be replayed within the window.)
//!
//! Several keys can be valid at once, newest first: the first signs, all verify, so a key
//! is rotated by adding the new one behind the old on every host, then moving it to the
//! front, then dropping the old one.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::plane::HostId;

type HmacSha256 = Hmac<Sha256>;

/// What every mesh token starts with; [`is_mesh_token`] tells them from node tokens by it.
pub const MESH_TOKEN_PREFIX: &str = "mesh.";

/// Shortest mesh key accepted: 32 bytes, the output size of SHA-256, so the key is never the
/// weaker half of the HMAC.
pub const MIN_KEY_LEN: usize = 32;

/// Default skew window of [`MeshKey::verify`]: ±5 minutes, well above NTP-synced skew plus
/// a connect, well below a useful replay window.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// Domain separation: the versioned label in front of every signed message.
const CONTEXT: &str = "boson-mesh-v3";

/// The TLS exporter label (RFC 8446 §7.5, RFC 5705 §4) of a mesh link's channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-boson-mesh-v3";

/// Bytes of exporter keying material in a [`ChannelBinding`].
pub const BINDING_LEN: usize = 32;

/// What ties a mesh token to one connection: 32 bytes of the TLS connection's exporter
/// keying material ([`EXPORTER_LABEL`], no context), which both ends compute and no one
/// else can. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBinding([u8; BINDING_LEN]);

impl ChannelBinding {
    /// The binding of a plain-WebSocket mesh link (`--danger-plain-mesh`, tests only): the
    /// same for every connection, so it binds nothing.
    pub const PLAIN: Self = Self([0; BINDING_LEN]);

    /// The binding from a TLS connection's exporter output.
    pub const fn from_exporter(material: [u8; BINDING_LEN]) -> Self {
        Self(material)
    }
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::PLAIN {
            f.write_str("ChannelBinding(plain)")
        } else {
            f.write_str("ChannelBinding(<redacted>)")
        }
    }
}

/// Length of a hyphenated UUID.
const HOST_LEN: usize = 36;

/// Most digits of the seconds field: `u64::MAX` has 20.
const MAX_SECS_DIGITS: usize = 20;

/// Length of the base64url (unpadded) text of an HMAC-SHA256 tag.
const SIG_LEN: usize = 43;

/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// The mesh keys of a deployment, newest first: the first signs, all verify. Never printed.
#[derive(Clone)]
pub struct MeshKey {
    keys: Vec<Vec<u8>>,
}

/// Why a mesh key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshKeyError {
    /// No key given.
    #[error("no mesh key configured")]
    NoKey,
    /// A key shorter than [`MIN_KEY_LEN`].
    #[error("mesh key {index} has {len} bytes, fewer than {MIN_KEY_LEN}")]
    TooShort {
        /// Its position in the list, 0 for the signing key.
        index: usize,
        /// Its length.
        len: usize,
    },
}

/// Why a mesh token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshTokenError {
    /// The token does not start with [`MESH_TOKEN_PREFIX`]: it is not a mesh token at all.
    #[error("not a mesh token")]
    NotMesh,
    /// A mesh token that does not follow the grammar (see the module doc).
    #[error("malformed mesh token")]
    Malformed,
    /// No configured key produces the signature: a wrong key, or an altered host or time.
    #[error("mesh token signature does not verify")]
    BadSignature,
    /// Minted more than the skew window before `now`.
    #[error("mesh token minted at {minted}, too long before {now}")]
    Stale {
        /// The token's seconds.
        minted: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Minted more than the skew window after `now`.
    #[error("mesh token minted at {minted}, too far after {now}")]
    FromFuture {
        /// The token's seconds.
        minted: u64,
        /// The verifier's clock.
        now: u64,
    },
}

/// Whether `token` is a mesh token (by its prefix), so the owner of a relay session knows to
/// check it with [`MeshKey::verify`] rather than as a node token.
pub fn is_mesh_token(token: &[u8]) -> bool {
    token.starts_with(MESH_TOKEN_PREFIX.as_bytes())
}

impl MeshKey {
    /// One key.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, MeshKeyError> {
        let key = Self::with_keys([key.into()])?;
        Ok(key)
    }

    /// Several keys, newest first: the first signs, all verify.
    pub fn with_keys(keys: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, MeshKeyError> {
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        if keys.is_empty() {
            return Err(MeshKeyError::NoKey);
        }
        if let Some((index, key)) = keys
            .iter()
            .enumerate()
            .find(|(_, key)| key.len() < MIN_KEY_LEN)
        {
            return Err(MeshKeyError::TooShort {
                index,
                len: key.len(),
            });
        }
        Ok(Self { keys })
    }

    /// The token `host` presents to host `target` on the connection of `binding` at
    /// `unix_now` (seconds), signed with the first key.
    pub fn token(
        &self,
        host: HostId,
        target: HostId,
        binding: &ChannelBinding,
        unix_now: u64,
    ) -> String {
        let mut host_text = [0u8; HOST_LEN];
        let host_text = host.0.hyphenated().encode_lower(&mut host_text);
        let secs = unix_now.to_string();
        let tag = self.keys.first().map_or([0; TAG_LEN], |key| {
            mac(key, host_text, target, &secs, binding)
                .finalize()
                .into_bytes()
                .into()
        });
        let mut token = String::with_capacity(MESH_TOKEN_PREFIX.len() + HOST_LEN + 22 + SIG_LEN);
        token.push_str(MESH_TOKEN_PREFIX);
        token.push_str(host_text);
        token.push('.');
        token.push_str(&secs);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Checks `token`, presented to host `own` on the connection of `binding` at `unix_now`
    /// (seconds): the host it names if the signature verifies under any key (compared in
    /// constant time) for `own` as the target and this connection's binding, and it was
    /// minted within `max_skew` of `unix_now`, either way.
    pub fn verify(
        &self,
        token: &[u8],
        own: HostId,
        binding: &ChannelBinding,
        unix_now: u64,
        max_skew: Duration,
    ) -> Result<HostId, MeshTokenError> {
        let parsed = Parsed::parse(token)?;
        let verifies = self.keys.iter().any(|key| {
            mac(key, parsed.host_text, own, parsed.secs_text, binding)
                .verify_slice(&parsed.tag)
                .is_ok()
        });
        if !verifies {
            return Err(MeshTokenError::BadSignature);
        }
        let skew = max_skew.as_secs();
        if parsed.secs < unix_now.saturating_sub(skew) {
            return Err(MeshTokenError::Stale {
                minted: parsed.secs,
                now: unix_now,
            });
        }
        if parsed.secs > unix_now.saturating_add(skew) {
            return Err(MeshTokenError::FromFuture {
                minted: parsed.secs,
                now: unix_now,
            });
        }
        Ok(parsed.host)
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshKey(<{} redacted>)", self.keys.len())
    }
}

/// HMAC-SHA256 over `CONTEXT|host|target|secs|binding` (the binding in lower-case hex).
fn mac(key: &[u8], host: &str, target: HostId, secs: &str, binding: &ChannelBinding) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    let mut target_text = [0u8; HOST_LEN];
    mac.update(CONTEXT.as_bytes());
    mac.update(b"|");
    mac.update(host.as_bytes());
    mac.update(b"|");
    mac.update(
        target
            .0
            .hyphenated()
            .encode_lower(&mut target_text)
            .as_bytes(),
    );
    mac.update(b"|");
    mac.update(secs.as_bytes());
    mac.update(b"|");
    let mut hex = [0u8; 2 * BINDING_LEN];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(binding.0) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    mac.update(&hex);
    mac
}

/// Lower-case hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A token split into its fields, each in the one canonical spelling the signature covers.
struct Parsed<'a> {
    host: HostId,
    host_text: &'a str,
    secs: u64,
    secs_text: &'a str,
    tag: [u8; TAG_LEN],
}

impl<'a> Parsed<'a> {
    fn parse(token: &'a [u8]) -> Result<Self, MeshTokenError> {
        if !is_mesh_token(token) {
            return Err(MeshTokenError::NotMesh);
        }
        let token = std::str::from_utf8(token).map_err(|_| MeshTokenError::Malformed)?;
        let rest = &token[MESH_TOKEN_PREFIX.len()..];
        let mut fields = rest.split('.');
        let (Some(host_text), Some(secs_text), Some(sig), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(MeshTokenError::Malformed);
        };
        // One spelling per host: hyphenated lower case, as `token` writes it.
        let host = Uuid::try_parse(host_text).map_err(|_| MeshTokenError::Malformed)?;
        let mut canonical = [0u8; HOST_LEN];
        if host.hyphenated().encode_lower(&mut canonical) != host_text {
            return Err(MeshTokenError::Malformed);
        }
        // One spelling per number: digits only, no leading zero.
        let digits_ok = !secs_text.is_empty()
            && secs_text.len() <= MAX_SECS_DIGITS
            && secs_text.bytes().all(|b| b.is_ascii_digit())
            && (secs_text == "0" || !secs_text.starts_with('0'));
        if !digits_ok {
            return Err(MeshTokenError::Malformed);
        }
        let secs = secs_text.parse().map_err(|_| MeshTokenError::Malformed)?;
        let mut tag = [0u8; TAG_LEN];
        // 43 characters decode to exactly 32 bytes; the engine refuses non-zero trailing
        // bits, so the signature has one spelling too.
        let decoded_ok =
            sig.len() == SIG_LEN && URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) == Ok(TAG_LEN);
        if !decoded_ok {
            return Err(MeshTokenError::Malformed);
        }
        Ok(Self {
            host: HostId(host),
            host_text,
            secs,
            secs_text,
            tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"boson mesh test key, 32+ bytes long!";
    const HOST: &str = "550e8400-e29b-41d4-a716-446655440000";
    const NOW: u64 = 1_700_000_000;
    /// Computed independently with
    /// `printf '%s' 'boson-mesh-v3|550e8400-e29b-41d4-a716-446655440000|6ba7b810-9dad-11d1-80b4-00c04fd430c8|1700000000|'"$(printf '5a%.0s' $(seq 32))" |
    /// openssl dgst -sha256 -hmac 'boson mesh test key, 32+ bytes long!' -binary |
    /// base64 | tr '+/' '-_' | tr -d '='`.
    const VECTOR: &str = "mesh.550e8400-e29b-41d4-a716-446655440000.1700000000.lVhxo8zoXwB-HYXGyf1viFc--9mFy5xiRKIMkMYY3Yc";

    fn host() -> HostId {
        HOST.parse().unwrap()
    }

    /// The host the links are opened to.
    fn to() -> HostId {
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse().unwrap()
    }

    /// The channel binding of the connection the tokens are minted for.
    fn bound() -> ChannelBinding {
        ChannelBinding::from_exporter([0x5a; BINDING_LEN])
    }

    fn key() -> MeshKey {
        MeshKey::new(KEY).unwrap()
    }

    #[test]
    fn token_matches_an_independent_hmac() {
        assert_eq!(key().token(host(), to(), &bound(), NOW), VECTOR);
        assert_eq!(
            key().verify(VECTOR.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Ok(host())
        );
        assert!(is_mesh_token(VECTOR.as_bytes()));
        // Bound to its target: another host, even the minting one, refuses it.
        for other in [host(), HostId::from_bytes([9; 16])] {
            assert_eq!(
                key().verify(VECTOR.as_bytes(), other, &bound(), NOW, DEFAULT_MAX_SKEW),
                Err(MeshTokenError::BadSignature),
                "presented to {other}"
            );
        }
        // It passes as a bearer token68.
        assert!(
            VECTOR
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        );
    }

    #[test]
    fn bound_to_its_connection() {
        // Replayed on another connection (another exporter secret), or on a plain one.
        for other in [
            ChannelBinding::from_exporter([0x5b; BINDING_LEN]),
            ChannelBinding::PLAIN,
        ] {
            assert_eq!(
                key().verify(VECTOR.as_bytes(), to(), &other, NOW, DEFAULT_MAX_SKEW),
                Err(MeshTokenError::BadSignature),
                "presented on {other:?}"
            );
        }
        let plain = key().token(host(), to(), &ChannelBinding::PLAIN, NOW);
        assert_eq!(
            key().verify(plain.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature),
            "a plain link's token opens no TLS link"
        );
        assert_eq!(format!("{:?}", bound()), "ChannelBinding(<redacted>)");
    }

    #[test]
    fn keys_must_be_long_enough() {
        assert_eq!(
            MeshKey::new(&KEY[..31]).unwrap_err(),
            MeshKeyError::TooShort { index: 0, len: 31 }
        );
        assert_eq!(
            MeshKey::with_keys([KEY.to_vec(), vec![1; 8]]).unwrap_err(),
            MeshKeyError::TooShort { index: 1, len: 8 }
        );
        assert_eq!(MeshKey::with_keys([]).unwrap_err(), MeshKeyError::NoKey);
        assert_eq!(format!("{:?}", key()), "MeshKey(<1 redacted>)");
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let new = vec![0x42; 32];
        let rotated = MeshKey::with_keys([new.clone(), KEY.to_vec()]).unwrap();
        assert_eq!(
            rotated.verify(VECTOR.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Ok(host()),
            "old tokens still verify"
        );
        let token = rotated.token(host(), to(), &bound(), NOW);
        assert_ne!(token, VECTOR, "the new key signs");
        assert_eq!(
            MeshKey::new(new).unwrap().verify(
                token.as_bytes(),
                to(),
                &bound(),
                NOW,
                DEFAULT_MAX_SKEW
            ),
            Ok(host())
        );
        assert_eq!(
            key().verify(token.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature),
            "hosts without the new key refuse it"
        );
    }

    #[test]
    fn wrong_key_and_altered_fields_fail_the_signature() {
        let other = MeshKey::new([7u8; 32]).unwrap();
        assert_eq!(
            other.verify(VECTOR.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature)
        );
        // Host mismatch: the signature covers the host, so naming another one fails.
        let other_host = VECTOR.replace("550e8400", "550e8401");
        assert_eq!(
            key().verify(other_host.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature)
        );
        let other_time = VECTOR.replace("1700000000", "1700000001");
        assert_eq!(
            key().verify(other_time.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature)
        );
        let mut flipped = VECTOR.as_bytes().to_vec();
        let last = flipped.len() - 2;
        flipped[last] = b'A';
        assert_eq!(
            key().verify(&flipped, to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::BadSignature)
        );
    }

    #[test]
    fn skew_window_both_ways() {
        let skew = DEFAULT_MAX_SKEW;
        let token = VECTOR.as_bytes();
        assert!(key().verify(token, to(), &bound(), NOW + 300, skew).is_ok());
        assert!(key().verify(token, to(), &bound(), NOW - 300, skew).is_ok());
        assert_eq!(
            key().verify(token, to(), &bound(), NOW + 301, skew),
            Err(MeshTokenError::Stale {
                minted: NOW,
                now: NOW + 301
            })
        );
        assert_eq!(
            key().verify(token, to(), &bound(), NOW - 301, skew),
            Err(MeshTokenError::FromFuture {
                minted: NOW,
                now: NOW - 301
            })
        );
        // No overflow at the ends of time.
        let late = key().token(host(), to(), &bound(), u64::MAX);
        assert!(
            key()
                .verify(late.as_bytes(), to(), &bound(), u64::MAX, skew)
                .is_ok()
        );
        let early = key().token(host(), to(), &bound(), 0);
        assert!(
            key()
                .verify(early.as_bytes(), to(), &bound(), 0, skew)
                .is_ok()
        );
        assert!(
            key()
                .verify(early.as_bytes(), to(), &bound(), 300, skew)
                .is_ok()
        );
    }

    #[test]
    fn malformed_tokens() {
        let k = key();
        let verify =
            |token: &str| k.verify(token.as_bytes(), to(), &bound(), NOW, DEFAULT_MAX_SKEW);
        assert_eq!(verify("eyJhbGciOi.x.y"), Err(MeshTokenError::NotMesh));
        assert_eq!(verify(""), Err(MeshTokenError::NotMesh));
        assert!(!is_mesh_token(b"MESH.x"));
        let sig = &VECTOR[VECTOR.len() - SIG_LEN..];
        for bad in [
            "mesh.".to_owned(),
            "mesh...".to_owned(),
            format!("mesh.{HOST}.1700000000"),
            format!("mesh.{HOST}.1700000000.{sig}.extra"),
            format!("mesh.{}.1700000000.{sig}", HOST.to_uppercase()),
            format!("mesh.{}.1700000000.{sig}", HOST.replace('-', "")),
            format!("mesh.{HOST}.01700000000.{sig}"),
            format!("mesh.{HOST}.+1700000000.{sig}"),
            format!("mesh.{HOST}..{sig}"),
            format!("mesh.{HOST}.99999999999999999999.{sig}"),
            format!("mesh.{HOST}.123456789012345678901.{sig}"),
            format!("mesh.{HOST}.1700000000.{sig}="),
            format!("mesh.{HOST}.1700000000.{}", &sig[1..]),
            // Standard base64, not base64url.
            format!("mesh.{HOST}.1700000000.+{}", &sig[1..]),
            format!("mesh.{HOST}.1700000000./{}", &sig[1..]),
            // Non-zero trailing bits: another spelling of a near-identical tag.
            format!("mesh.{HOST}.1700000000.{}9", &sig[..SIG_LEN - 1]),
        ] {
            assert_eq!(verify(&bad), Err(MeshTokenError::Malformed), "{bad}");
        }
        assert_eq!(
            k.verify(b"mesh.\xff\xfe", to(), &bound(), NOW, DEFAULT_MAX_SKEW),
            Err(MeshTokenError::Malformed)
        );
    }
}
