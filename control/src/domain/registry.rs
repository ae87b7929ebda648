//! Who may register a node id: the decision as a pure function of what is stored and who asks.

use std::time::Duration;

use crate::clock::UnixMillis;
use crate::domain::auth::NodeToken;
use crate::domain::model::NodeRecord;
use crate::domain::model::{NodeStatus, ValidRegistration};

/// What to do with a registration.
#[derive(Debug)]
pub enum Decision {
    /// A new node (or one deleted before): its generation follows the highest its id ever
    /// had, so a deleted registration's tokens stay dead (the store numbers it, see
    /// `Store::insert`).
    Create,
    /// Replace the stored registration; the generation goes up, revoking older tokens.
    Replace,
    /// Refuse, for this reason.
    Refuse(Refusal),
}

/// Why a registration is refused. The HTTP layer turns each into its status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The token sent belongs to another node id.
    ForeignToken,
    /// The token is of an older generation: a newer registration revoked it.
    TokenRevoked,
    /// No token, and the node id is registered with another public key.
    PublicKeyMismatch,
    /// No token, and the node is still active.
    NodeActive,
}

/// Decides a registration.
///
/// * A token, when sent, must be for this node id (else 403) and of its current generation.
/// * A new node id registers freely (the rate limit and the unique key bound abuse).
/// * The holder of the node's current token may re-register, including with a new key.
/// * Without a token, re-registering is allowed only with the same key and only once the node
///   has gone inactive, so a node that lost its token can come back, but nobody can take over
///   a live node's id, or move it to another key.
pub fn decide(
    existing: Option<&NodeRecord>,
    request: &ValidRegistration,
    token: Option<NodeToken>,
    now: UnixMillis,
    node_timeout: Duration,
) -> Decision {
    if let Some(token) = token
        && token.node_id != request.node_id
    {
        return Decision::Refuse(Refusal::ForeignToken);
    }
    let Some(existing) = existing else {
        return Decision::Create;
    };
    match token {
        Some(token) if token.generation == existing.generation => Decision::Replace,
        Some(_) => Decision::Refuse(Refusal::TokenRevoked),
        None if existing.public_key != request.public_key => {
            Decision::Refuse(Refusal::PublicKeyMismatch)
        }
        None if is_live(existing, now, node_timeout) => Decision::Refuse(Refusal::NodeActive),
        None => Decision::Replace,
    }
}

/// How long a deletion's tombstone must be kept, for nodes that go silent after `node_timeout`
/// and tokens that live `token_ttl`.
///
/// Two readers need it. The other hosts' incremental syncs read a deletion from its tombstone,
/// for which twice the node timeout is plenty. And a node id registered again numbers its
/// generations after its tombstones: once a tombstone is gone, its generation may be handed
/// out again, which is safe only when no token of it can still be accepted. Every such token
/// was issued before the deletion, so it is dead by the TTL after it, plus the verification
/// leeway and a margin for hosts whose clocks disagree (the tombstone is stamped by the
/// deleting host, pruned by another, the token checked by a third).
pub fn tombstone_retention(node_timeout: Duration, token_ttl: Duration) -> Duration {
    let leeway = Duration::from_secs(boson_shared::token::LEEWAY_SECS.unsigned_abs());
    let token_life = token_ttl
        .saturating_add(leeway)
        .saturating_add(crate::INDEX_SYNC_MARGIN);
    node_timeout.saturating_mul(2).max(token_life)
}

/// Whether the node counts as active at `now`, whatever the sweeper has stored so far.
pub fn is_live(node: &NodeRecord, now: UnixMillis, node_timeout: Duration) -> bool {
    node.status == NodeStatus::Active && node.last_seen >= now.saturating_sub(node_timeout)
}

#[cfg(test)]
mod tests {
    use boson_shared::{NodeId, WgPublicKey};

    use super::*;
    use crate::domain::fixtures;

    const TIMEOUT: Duration = Duration::from_secs(90);
    const NOW: UnixMillis = UnixMillis(10_000_000);

    fn id(n: u8) -> NodeId {
        format!("00000000-0000-4000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    fn request(node: u8, key: u8) -> ValidRegistration {
        ValidRegistration {
            node_id: id(node),
            public_key: WgPublicKey::from_bytes([key; 32]),
            registration: fixtures::registration(),
            metrics: None,
            key_proof: crate::domain::model::ValidKeyProof {
                nonce: String::new(),
                time: 0,
                proof: String::new(),
            },
        }
    }

    fn stored(node: u8, key: u8, last_seen: UnixMillis) -> NodeRecord {
        fixtures::node_record(id(node), WgPublicKey::from_bytes([key; 32]), 4, last_seen)
    }

    fn token(node: u8, generation: i64) -> Option<NodeToken> {
        Some(NodeToken {
            node_id: id(node),
            generation,
            expires_at: NOW.saturating_add(TIMEOUT),
        })
    }

    fn refusal(decision: Decision) -> Refusal {
        match decision {
            Decision::Refuse(refusal) => refusal,
            other @ (Decision::Create | Decision::Replace) => {
                panic!("expected a refusal, got {other:?}")
            }
        }
    }

    #[test]
    fn tombstones_outlive_every_token_of_their_generation() {
        let hour = Duration::from_secs(3600);
        // The token TTL rules unless the node timeout is long.
        assert_eq!(
            tombstone_retention(TIMEOUT, hour),
            hour + Duration::from_secs(7)
        );
        assert_eq!(tombstone_retention(hour, Duration::from_secs(60)), 2 * hour);
        // Never shorter than a token accepted at its expiry plus the leeway.
        let ttl = Duration::from_secs(60);
        let leeway = Duration::from_secs(5);
        assert!(tombstone_retention(Duration::from_secs(1), ttl) > ttl + leeway);
    }

    #[test]
    fn new_nodes_register_with_or_without_their_own_token() {
        assert!(matches!(
            decide(None, &request(1, 1), None, NOW, TIMEOUT),
            Decision::Create
        ));
        assert!(matches!(
            decide(None, &request(1, 1), token(1, 1), NOW, TIMEOUT),
            Decision::Create
        ));
        assert_eq!(
            refusal(decide(None, &request(1, 1), token(2, 1), NOW, TIMEOUT)),
            Refusal::ForeignToken
        );
    }

    #[test]
    fn the_current_token_may_change_the_key() {
        let live = stored(1, 1, NOW);
        assert!(matches!(
            decide(Some(&live), &request(1, 9), token(1, 4), NOW, TIMEOUT),
            Decision::Replace
        ));
        assert_eq!(
            refusal(decide(
                Some(&live),
                &request(1, 9),
                token(1, 3),
                NOW,
                TIMEOUT
            )),
            Refusal::TokenRevoked
        );
        assert_eq!(
            refusal(decide(
                Some(&live),
                &request(1, 1),
                token(2, 4),
                NOW,
                TIMEOUT
            )),
            Refusal::ForeignToken
        );
    }

    #[test]
    fn without_a_token_only_an_inactive_node_with_the_same_key_comes_back() {
        let live = stored(1, 1, NOW.saturating_sub(Duration::from_secs(10)));
        assert_eq!(
            refusal(decide(Some(&live), &request(1, 2), None, NOW, TIMEOUT)),
            Refusal::PublicKeyMismatch
        );
        assert_eq!(
            refusal(decide(Some(&live), &request(1, 1), None, NOW, TIMEOUT)),
            Refusal::NodeActive
        );
        // Silent past the timeout, even if the sweeper has not run yet.
        let silent = stored(1, 1, NOW.saturating_sub(Duration::from_secs(91)));
        assert!(matches!(
            decide(Some(&silent), &request(1, 1), None, NOW, TIMEOUT),
            Decision::Replace
        ));
        assert_eq!(
            refusal(decide(Some(&silent), &request(1, 2), None, NOW, TIMEOUT)),
            Refusal::PublicKeyMismatch
        );
    }
}
