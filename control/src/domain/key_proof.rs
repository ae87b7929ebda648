//! Proof of possession of the WireGuard key at registration (issue 15 §4): the server's static
//! X25519 key, its challenges, and the verdict on an answer, as pure functions of `now`.
//!
//! The flow:
//!
//! 1. `POST /api/v1/nodes/challenge` hands out a fresh [`new_nonce`], remembered (in Redis, or
//!    the SQL store without it, so every host of a deployment knows it) until
//!    [`NONCE_TTL`] has passed, together with the server's public key.
//! 2. The node registers with `keyProof: {nonce, time, proof}`, the proof made by
//!    [`boson_shared::key_proof::prove`] with its WireGuard private key.
//! 3. The server checks the time ([`check_time`]), takes the nonce out of the shared state
//!    (so it answers once, whatever the outcome: one guess per nonce), checks its expiry
//!    ([`check_nonce`]), and verifies the MAC against the registered public key ([`verify`]).
//!
//! The node id, the nonce and the time are all inside the MAC, so a proof answers one
//! challenge for one node id, once.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use boson_shared::key_proof::{self, KeyProofError};
use boson_shared::{NodeId, WgPublicKey};
use rand::RngCore;

use crate::clock::UnixMillis;
use crate::domain::model::ValidKeyProof;

/// How long a challenge may be answered: long enough for a node on a slow link to compute
/// one X25519 and send one request, short enough that a leaked nonce is soon worthless.
pub const NONCE_TTL: Duration = Duration::from_secs(60);

/// How far the proof's `time` may be from the server's clock, either way: the nodes' clocks
/// are not ours (the same ±5 minutes as mesh tokens).
pub const TIME_WINDOW: Duration = Duration::from_secs(300);

/// Challenges outstanding at once, per deployment: beyond it, new challenges get 503 until
/// some are answered or expire. With the per-address rate limit it bounds the memory an
/// attacker can make the deployment hold (about 100 bytes each).
pub const MAX_OUTSTANDING: u64 = 100_000;

/// Characters of a nonce: 24 random bytes in base64url.
pub const NONCE_LEN: usize = 32;

/// The deployment's static X25519 key pair for key proofs.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerKey(public {})", self.public().to_base64())
    }
}

impl ServerKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self(secret)
    }

    /// The private key as `wg genkey` writes one: standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes: WgPublicKey = text
            .parse()
            .map_err(|_| "must be the standard base64 of 32 bytes (as `wg genkey` prints)")?;
        Ok(Self(*bytes.as_bytes()))
    }

    /// [`ServerKey::parse`]'s format.
    pub fn to_base64(&self) -> String {
        WgPublicKey::from_bytes(self.0).to_base64()
    }

    /// The public key the challenge endpoint publishes.
    pub fn public(&self) -> WgPublicKey {
        WgPublicKey::from_bytes(key_proof::public_key(&self.0))
    }
}

/// A fresh challenge nonce ([`NONCE_LEN`] characters of base64url).
pub fn new_nonce(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 24];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `text` has the shape of a nonce [`new_nonce`] makes.
pub fn is_nonce_shaped(text: &str) -> bool {
    text.len() == NONCE_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a key proof is refused. The HTTP layer turns each into its status, code and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofRefusal {
    /// `time` is more than [`TIME_WINDOW`] away from the server's clock.
    Stale,
    /// The nonce was never handed out, was answered already, or expired long ago.
    UnknownNonce,
    /// The nonce was handed out but has expired.
    ExpiredNonce,
    /// The MAC does not verify: another key, node id, nonce or time.
    Mismatch,
    /// The registered public key has small order: nobody can prove it.
    SmallOrderKey,
}

/// Checks the proof's time against `now`.
pub fn check_time(time_secs: u64, now: UnixMillis) -> Result<(), ProofRefusal> {
    let now_secs = u64::try_from(now.as_secs()).unwrap_or(0);
    if time_secs.abs_diff(now_secs) > TIME_WINDOW.as_secs() {
        return Err(ProofRefusal::Stale);
    }
    Ok(())
}

/// Checks what taking the nonce out of the shared state found: its expiry, or nothing.
pub fn check_nonce(expires_at: Option<UnixMillis>, now: UnixMillis) -> Result<(), ProofRefusal> {
    match expires_at {
        None => Err(ProofRefusal::UnknownNonce),
        Some(expiry) if expiry <= now => Err(ProofRefusal::ExpiredNonce),
        Some(_) => Ok(()),
    }
}

/// Verifies the proof's MAC for `node` registering `public_key`.
pub fn verify(
    key: &ServerKey,
    public_key: &WgPublicKey,
    node: NodeId,
    proof: &ValidKeyProof,
) -> Result<(), ProofRefusal> {
    key_proof::verify(
        &key.0,
        public_key.as_bytes(),
        &proof.nonce,
        node,
        proof.time,
        &proof.proof,
    )
    .map_err(|error| match error {
        KeyProofError::NonContributory => ProofRefusal::SmallOrderKey,
        // The shape was checked at validation; whatever else fails is a mismatch.
        KeyProofError::Malformed | KeyProofError::Mismatch | _ => ProofRefusal::Mismatch,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    #[test]
    fn nonces_are_fresh_and_shaped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = new_nonce(&mut rng);
        let b = new_nonce(&mut rng);
        assert_ne!(a, b);
        assert!(is_nonce_shaped(&a) && is_nonce_shaped(&b), "{a} {b}");
        for bad in ["", "short", &format!("{a}x"), &a.replace(&a[..1], "+")] {
            assert!(!is_nonce_shaped(bad), "{bad}");
        }
    }

    #[test]
    fn time_window_and_nonce_expiry() {
        let now_secs = 1_800_000_000;
        assert_eq!(check_time(now_secs, NOW), Ok(()));
        assert_eq!(check_time(now_secs - 300, NOW), Ok(()));
        assert_eq!(check_time(now_secs + 300, NOW), Ok(()));
        assert_eq!(check_time(now_secs - 301, NOW), Err(ProofRefusal::Stale));
        assert_eq!(check_time(now_secs + 301, NOW), Err(ProofRefusal::Stale));
        assert_eq!(check_time(0, NOW), Err(ProofRefusal::Stale));
        assert_eq!(check_time(u64::MAX, NOW), Err(ProofRefusal::Stale));
        assert_eq!(check_nonce(None, NOW), Err(ProofRefusal::UnknownNonce));
        assert_eq!(check_nonce(Some(NOW), NOW), Err(ProofRefusal::ExpiredNonce));
        assert_eq!(
            check_nonce(Some(NOW.saturating_add(Duration::from_millis(1))), NOW),
            Ok(())
        );
    }

    #[test]
    fn the_key_holder_verifies_and_nobody_else() {
        let server = ServerKey([0x22; 32]);
        assert_eq!(ServerKey::parse(&server.to_base64()), Ok(server.clone()));
        assert!(ServerKey::parse("short").is_err());
        let node_secret = [0x11; 32];
        let node_public = WgPublicKey::from_bytes(key_proof::public_key(&node_secret));
        let node: NodeId = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        let nonce = new_nonce(&mut rand::rngs::StdRng::seed_from_u64(1));
        let made = |secret: &[u8; 32], node| ValidKeyProof {
            nonce: nonce.clone(),
            time: 1_800_000_000,
            proof: key_proof::prove(
                secret,
                server.public().as_bytes(),
                &nonce,
                node,
                1_800_000_000,
            )
            .unwrap(),
        };
        assert_eq!(
            verify(&server, &node_public, node, &made(&node_secret, node)),
            Ok(())
        );
        assert_eq!(
            verify(&server, &node_public, node, &made(&[0x33; 32], node)),
            Err(ProofRefusal::Mismatch)
        );
        let other: NodeId = "00000000-0000-4000-8000-000000000002".parse().unwrap();
        assert_eq!(
            verify(&server, &node_public, node, &made(&node_secret, other)),
            Err(ProofRefusal::Mismatch)
        );
        assert_eq!(
            verify(
                &server,
                &WgPublicKey::from_bytes([0; 32]),
                node,
                &made(&node_secret, node)
            ),
            Err(ProofRefusal::SmallOrderKey)
        );
    }
}
