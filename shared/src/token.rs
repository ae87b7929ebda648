//! Node tokens as both their issuer and their checkers agree on them: the claims of the HS256
//! JWT the control plane issues at registration, and the checks of its lifetime against a
//! `now` the caller gives. Signing and the signature check stay with the JWT library in each
//! user (the control plane, the benchmarks' baseline); this module is pure.

use serde::{Deserialize, Serialize};

/// `iss` of every node token.
pub const ISSUER: &str = "bosonserver";
/// `aud` of node tokens; other audiences (relay mesh, admin) will get their own.
pub const AUDIENCE: &str = "bosonserver-node";
/// Clock skew tolerated between hosts that share the secret, seconds. Small, because tokens
/// are minted by the same fleet that checks them.
pub const LEEWAY_SECS: i64 = 5;
/// The registered claims a token must carry (RFC 7519 §4.1), beside `generation`.
pub const REQUIRED_CLAIMS: [&str; 5] = ["exp", "iat", "iss", "aud", "sub"];

/// Claims of a node token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The node id.
    pub sub: String,
    /// [`ISSUER`].
    pub iss: String,
    /// [`AUDIENCE`].
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Registration generation of the node when the token was issued.
    pub generation: i64,
}

/// Why a token's lifetime is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimeError {
    /// Past its expiry, leeway included.
    #[error("token expired")]
    Expired,
    /// Issued in the future (beyond the leeway), or after its own expiry.
    #[error("token issued in the future or after its expiry")]
    BadIssueTime,
}

impl Claims {
    /// The claims of a token for `node` at registration `generation`, issued at `iat` and
    /// expiring at `exp` (unix seconds).
    pub fn new(node: &str, generation: i64, iat: i64, exp: i64) -> Self {
        Self {
            sub: node.to_owned(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat,
            exp,
            generation,
        }
    }

    /// Checks `exp` and `iat` against `now` (unix seconds) with [`LEEWAY_SECS`] of skew.
    pub const fn check_lifetime(&self, now: i64) -> Result<(), LifetimeError> {
        if now > self.exp.saturating_add(LEEWAY_SECS) {
            return Err(LifetimeError::Expired);
        }
        if self.iat > now.saturating_add(LEEWAY_SECS) || self.iat > self.exp {
            return Err(LifetimeError::BadIssueTime);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_checked_with_leeway_both_ways() {
        let claims = Claims::new("n", 1, 1_000, 2_000);
        assert_eq!(claims.check_lifetime(1_000), Ok(()));
        assert_eq!(claims.check_lifetime(2_005), Ok(()));
        assert_eq!(claims.check_lifetime(2_006), Err(LifetimeError::Expired));
        assert_eq!(claims.check_lifetime(995), Ok(()));
        assert_eq!(claims.check_lifetime(994), Err(LifetimeError::BadIssueTime));
        let inverted = Claims::new("n", 1, 3_000, 2_000);
        assert_eq!(
            inverted.check_lifetime(2_000),
            Err(LifetimeError::BadIssueTime)
        );
    }
}
