//! Node tokens as both their issuer and their checkers agree on them: the claims of the HS256
//! JWT the control plane issues at registration, and the checks of its lifetime against a
//! `now` the caller gives. With the `jwt` feature, `Keys` signs and verifies them, the one
//! implementation the control plane and the benchmarks' baselines share. Either way the module
//! is pure: time is the caller's `now`, never a clock of the JWT library.

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

/// Why [`Keys::verify`] refuses a token.
#[cfg(feature = "jwt")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Bad signature, algorithm, issuer, audience or claims, a header that names a key, or
    /// garbage.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry (leeway included).
    #[error("token expired")]
    Expired,
}

/// A token could not be signed.
#[cfg(feature = "jwt")]
#[derive(Debug, thiserror::Error)]
#[error("signing a node token: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

/// Signs and verifies node tokens with one HS256 secret: the algorithm, [`ISSUER`],
/// [`AUDIENCE`] and [`REQUIRED_CLAIMS`] pinned, the lifetime checked against the caller's
/// `now` ([`Claims::check_lifetime`]).
#[cfg(feature = "jwt")]
pub struct Keys {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

#[cfg(feature = "jwt")]
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

#[cfg(feature = "jwt")]
impl Keys {
    /// Keys from `secret` (its length is the caller's to check: at least 32 bytes, the
    /// hash's output, RFC 7518 §3.2).
    pub fn new(secret: &[u8]) -> Self {
        use jsonwebtoken::{Algorithm, Validation};
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.required_spec_claims =
            std::collections::HashSet::from(REQUIRED_CLAIMS.map(String::from));
        // Expiry is checked against the caller's `now` in `verify`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Self {
            encoding: jsonwebtoken::EncodingKey::from_secret(secret),
            decoding: jsonwebtoken::DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The compact JWT of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The claims of `token` if its signature, algorithm, issuer, audience, claims and
    /// lifetime at `now` (unix seconds) check.
    ///
    /// Tokens whose header names a key (`kid`, `jku`, `jwk`, `x5u`, `x5c`) are refused before
    /// their signature is checked: tokens are never issued with one, there is one key, and a
    /// header that picks the key is the lever of key-confusion attacks.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Invalid)?;
        if header.kid.is_some()
            || header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(VerifyError::Invalid);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| VerifyError::Invalid)?
            .claims;
        claims.check_lifetime(now).map_err(|error| match error {
            LifetimeError::Expired => VerifyError::Expired,
            LifetimeError::BadIssueTime => VerifyError::Invalid,
        })?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "jwt")]
    #[test]
    fn signed_claims_verify_with_the_same_secret_only() {
        let keys = Keys::new(&[1; 32]);
        let claims = Claims::new("n", 2, 1_000, 2_000);
        let token = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token, 1_500), Ok(claims.clone()));
        assert_eq!(keys.verify(&token, 2_006), Err(VerifyError::Expired));
        assert_eq!(keys.verify(&token, 994), Err(VerifyError::Invalid));
        assert_eq!(
            Keys::new(&[2; 32]).verify(&token, 1_500),
            Err(VerifyError::Invalid)
        );
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("other".into());
        let encoding = jsonwebtoken::EncodingKey::from_secret(&[1; 32]);
        let with_kid = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        assert_eq!(keys.verify(&with_kid, 1_500), Err(VerifyError::Invalid));
    }

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
