//! Proof of possession of a node's WireGuard key (issue 15 §4): the computation both the
//! registering client and the control plane use, so the two cannot drift apart.
//!
//! The control plane has a static X25519 key pair and publishes its public key. A node
//! proves it holds the private key of the WireGuard public key it registers by a MAC keyed
//! with the X25519 shared secret of the two key pairs, which only the holder of either
//! private key can compute:
//!
//! ```text
//! proof = base64url without padding (43 characters) of
//!         HMAC-SHA256(K, "boson-keyproof-v1|" <nonce> "|" <node> "|" <secs>)
//!   K     = X25519(node private key, server public key)
//!         = X25519(server private key, node public key)
//!   nonce = the server's fresh challenge, as it was handed out (opaque text)
//!   node  = the node id, hyphenated lower case
//!   secs  = unix seconds at proving, decimal
//! ```
//!
//! A public key of small order gives an all-zero shared secret whatever the other private
//! key: it is refused on both sides ([`KeyProofError::NonContributory`]). Freshness (a
//! single-use nonce that expires, a time within a window) is the verifier's business; this
//! module only binds the proof to all three.
//!
//! Every client that registers a node (the node agent, the benchmarks, the tests) answers a
//! challenge through [`Challenge::answer`]: it reads the answer of
//! `POST /api/v1/nodes/challenge` into a [`Challenge`] and puts the [`KeyProof`] it returns
//! into the registration as `keyProof`. Only the HTTP transport is the client's own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::{NodeId, WgPublicKey};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: the versioned label in front of every proven message.
const CONTEXT: &str = "boson-keyproof-v1";

/// Length of the base64url (unpadded) text of a proof.
pub const PROOF_LEN: usize = 43;

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProofError {
    /// The other side's public key has small order: the shared secret would be all zeros.
    #[error("the public key has small order")]
    NonContributory,
    /// The proof is not 43 characters of base64url.
    #[error("malformed key proof")]
    Malformed,
    /// The proof does not match: another key, node id, nonce or time.
    #[error("key proof does not verify")]
    Mismatch,
}

/// The answer of `POST /api/v1/nodes/challenge`, as a registering client reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// The single-use nonce, opaque text.
    pub nonce: String,
    /// The control plane's static X25519 public key, standard base64 (as WireGuard keys).
    pub server_public_key: String,
}

/// The `keyProof` member of a registration request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProof {
    /// The challenge's nonce, as it was handed out.
    pub nonce: String,
    /// Unix seconds at proving.
    pub time: u64,
    /// [`prove`]'s output: 43 characters of base64url.
    pub proof: String,
}

impl Challenge {
    /// The proof that the holder of `node_secret` (the WireGuard private key) registers
    /// `node` at `unix_secs`, in answer to this challenge.
    pub fn answer(
        &self,
        node_secret: &[u8; 32],
        node: NodeId,
        unix_secs: u64,
    ) -> Result<KeyProof, KeyProofError> {
        let server: WgPublicKey = self
            .server_public_key
            .parse()
            .map_err(|_| KeyProofError::Malformed)?;
        let proof = prove(node_secret, server.as_bytes(), &self.nonce, node, unix_secs)?;
        Ok(KeyProof {
            nonce: self.nonce.clone(),
            time: unix_secs,
            proof,
        })
    }
}

/// The proof the holder of `node_secret` gives for registering `node` with the server's
/// public key `server_public`, challenge `nonce`, at `unix_secs`.
pub fn prove(
    node_secret: &[u8; 32],
    server_public: &[u8; 32],
    nonce: &str,
    node: NodeId,
    unix_secs: u64,
) -> Result<String, KeyProofError> {
    let key = shared_key(node_secret, server_public)?;
    let tag = mac(&key, nonce, node, unix_secs).finalize().into_bytes();
    Ok(URL_SAFE_NO_PAD.encode(tag))
}

/// Checks `proof` (constant-time) as the server, with its `server_secret` and the
/// registered WireGuard public key `node_public`.
pub fn verify(
    server_secret: &[u8; 32],
    node_public: &[u8; 32],
    nonce: &str,
    node: NodeId,
    unix_secs: u64,
    proof: &str,
) -> Result<(), KeyProofError> {
    let mut tag = [0u8; 32];
    let decoded_ok =
        proof.len() == PROOF_LEN && URL_SAFE_NO_PAD.decode_slice(proof, &mut tag) == Ok(32);
    if !decoded_ok {
        return Err(KeyProofError::Malformed);
    }
    let key = shared_key(server_secret, node_public)?;
    mac(&key, nonce, node, unix_secs)
        .verify_slice(&tag)
        .map_err(|_| KeyProofError::Mismatch)
}

/// The public key of an X25519 private key (the node's WireGuard public key, the server's
/// published key).
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// X25519(secret, public), refused when `public` has small order.
fn shared_key(secret: &[u8; 32], public: &[u8; 32]) -> Result<[u8; 32], KeyProofError> {
    let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(KeyProofError::NonContributory);
    }
    Ok(shared.to_bytes())
}

fn mac(key: &[u8; 32], nonce: &str, node: NodeId, unix_secs: u64) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    let mut node_text = [0u8; 36];
    mac.update(CONTEXT.as_bytes());
    mac.update(b"|");
    mac.update(nonce.as_bytes());
    mac.update(b"|");
    mac.update(
        uuid::Uuid::from_bytes(*node.as_bytes())
            .hyphenated()
            .encode_lower(&mut node_text)
            .as_bytes(),
    );
    mac.update(b"|");
    mac.update(unix_secs.to_string().as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_SECRET: [u8; 32] = [0x11; 32];
    const SERVER_SECRET: [u8; 32] = [0x22; 32];
    const NONCE: &str = "n-0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn node() -> NodeId {
        NodeId::from_bytes([0x5a; 16])
    }

    fn proof() -> String {
        prove(
            &NODE_SECRET,
            &public_key(&SERVER_SECRET),
            NONCE,
            node(),
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn the_holder_of_the_key_proves_and_the_server_verifies() {
        let proof = proof();
        assert_eq!(proof.len(), PROOF_LEN);
        let node_public = public_key(&NODE_SECRET);
        assert_eq!(
            verify(&SERVER_SECRET, &node_public, NONCE, node(), NOW, &proof),
            Ok(())
        );
    }

    #[test]
    fn another_key_node_nonce_or_time_does_not_verify() {
        let proof = proof();
        let node_public = public_key(&NODE_SECRET);
        // Made with another private key than the registered public key's.
        let impostor = prove(&[0x33; 32], &public_key(&SERVER_SECRET), NONCE, node(), NOW);
        assert_eq!(
            verify(
                &SERVER_SECRET,
                &node_public,
                NONCE,
                node(),
                NOW,
                &impostor.unwrap()
            ),
            Err(KeyProofError::Mismatch)
        );
        // Checked by a server with another key (the proof was for this one).
        assert_eq!(
            verify(&[0x44; 32], &node_public, NONCE, node(), NOW, &proof),
            Err(KeyProofError::Mismatch)
        );
        let other_node = NodeId::from_bytes([0x5b; 16]);
        for (nonce, node, secs) in [
            ("n-other", node(), NOW),
            (NONCE, other_node, NOW),
            (NONCE, node(), NOW + 1),
        ] {
            assert_eq!(
                verify(&SERVER_SECRET, &node_public, nonce, node, secs, &proof),
                Err(KeyProofError::Mismatch),
                "{nonce} {node} {secs}"
            );
        }
    }

    #[test]
    fn a_challenge_answer_verifies_with_the_server_key() {
        let challenge = Challenge {
            nonce: NONCE.to_owned(),
            server_public_key: WgPublicKey::from_bytes(public_key(&SERVER_SECRET)).to_base64(),
        };
        let answer = challenge.answer(&NODE_SECRET, node(), NOW).unwrap();
        assert_eq!((answer.nonce.as_str(), answer.time), (NONCE, NOW));
        assert_eq!(answer.proof, proof());
        let garbled = Challenge {
            server_public_key: "not base64".to_owned(),
            ..challenge
        };
        assert_eq!(
            garbled.answer(&NODE_SECRET, node(), NOW),
            Err(KeyProofError::Malformed)
        );
    }

    #[test]
    fn small_order_keys_and_malformed_proofs_are_refused() {
        // The identity point: every shared secret with it is zero.
        let zero = [0u8; 32];
        assert_eq!(
            prove(&NODE_SECRET, &zero, NONCE, node(), NOW),
            Err(KeyProofError::NonContributory)
        );
        assert_eq!(
            verify(&SERVER_SECRET, &zero, NONCE, node(), NOW, &proof()),
            Err(KeyProofError::NonContributory)
        );
        let node_public = public_key(&NODE_SECRET);
        let good = proof();
        for bad in [
            String::new(),
            good[1..].to_owned(),
            format!("{good}A"),
            format!("+{}", &good[1..]),
            format!("{}=", &good[1..]),
        ] {
            assert_eq!(
                verify(&SERVER_SECRET, &node_public, NONCE, node(), NOW, &bad),
                Err(KeyProofError::Malformed),
                "{bad}"
            );
        }
    }
}
