//! Node tokens: HS256 JWTs with a pinned algorithm, issuer and audience.
//!
//! Time is an input: [`Tokens::verify`] checks `exp` and `iat` against the `now` it is given
//! (with `boson_shared::token::LEEWAY_SECS` of skew), not against a clock inside the JWT library.
//!
//! A token carries the node's registration `gen`eration. Every re-registration bumps it, so the
//! store refuses tokens minted before the latest registration (see `Store::heartbeat`).

use std::time::Duration;

use boson_shared::NodeId;
use boson_shared::token::{Claims, Keys, VerifyError};

use crate::clock::UnixMillis;
use crate::config::JwtConfig;

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeToken {
    /// Whose token it is.
    pub node_id: NodeId,
    /// Registration generation it was issued for.
    pub generation: i64,
    /// When it expires (`exp`), whole seconds.
    pub expires_at: UnixMillis,
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// When it expires.
    pub expires_at: UnixMillis,
}

/// Why a token is refused. All of these answer 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("authorization header is not a bearer token")]
    NotBearer,
    /// Bad signature, wrong algorithm, issuer or audience, or garbage.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Issued before the node's latest registration.
    #[error("token was revoked by a newer registration")]
    Revoked,
}

impl TokenError {
    /// Stable code for the API's error body.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::NotBearer | Self::Invalid => "invalid_token",
            Self::Expired => "token_expired",
            Self::Revoked => "token_revoked",
        }
    }
}

/// Issues and verifies node tokens: [`Keys`], the one implementation the benchmarks'
/// baselines share, with the configured lifetime and the node's registration generation.
pub struct Tokens {
    keys: Keys,
    ttl: Duration,
}

impl Tokens {
    /// Keys from the configured secret.
    pub fn new(config: &JwtConfig) -> Self {
        Self {
            keys: Keys::new(&config.secret),
            ttl: config.ttl,
        }
    }

    /// When a token issued at `now` expires (whole seconds, as its `exp` claim says):
    /// [`IssuedToken::expires_at`] of [`Self::issue`] at the same `now`.
    pub fn expiry(&self, now: UnixMillis) -> UnixMillis {
        UnixMillis(now.saturating_add(self.ttl).as_secs() * 1000)
    }

    /// A token for `node_id` at registration `generation`, valid from `now` for the configured TTL.
    pub fn issue(
        &self,
        node_id: NodeId,
        generation: i64,
        now: UnixMillis,
    ) -> anyhow::Result<IssuedToken> {
        let expires_at = self.expiry(now);
        let claims = Claims::new(
            &node_id.to_string(),
            generation,
            now.as_secs(),
            expires_at.as_secs(),
        );
        let token = self.keys.sign(&claims)?;
        Ok(IssuedToken { token, expires_at })
    }

    /// Checks signature, algorithm, issuer, audience and lifetime of `token` at `now`
    /// ([`Keys::verify`]: a header that names a key is refused too).
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<NodeToken, TokenError> {
        let claims = self
            .keys
            .verify(token, now.as_secs())
            .map_err(|error| match error {
                VerifyError::Expired => TokenError::Expired,
                VerifyError::Invalid | _ => TokenError::Invalid,
            })?;
        let node_id = claims.sub.parse().map_err(|_| TokenError::Invalid)?;
        Ok(NodeToken {
            node_id,
            generation: claims.generation,
            expires_at: UnixMillis(claims.exp.saturating_mul(1000)),
        })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: &str, now: UnixMillis) -> Result<NodeToken, TokenError> {
        let (scheme, token) = header.split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        self.verify(token.trim(), now)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use boson_shared::token::{AUDIENCE, ISSUER};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn tokens(secret: &[u8]) -> Tokens {
        Tokens::new(&JwtConfig {
            secret: secret.to_vec(),
            ttl: Duration::from_secs(3600),
        })
    }

    fn node() -> NodeId {
        "550e8400-e29b-41d4-a716-446655440000".parse().unwrap()
    }

    fn forge(header: &str, claims: &serde_json::Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn issued_token_verifies_until_expiry_plus_leeway() {
        let keys = tokens(&[1; 32]);
        let issued = keys.issue(node(), 3, NOW).unwrap();
        let ok = NodeToken {
            node_id: node(),
            generation: 3,
            expires_at: issued.expires_at,
        };
        assert_eq!(keys.verify(&issued.token, NOW), Ok(ok));
        let expiry = NOW.saturating_add(Duration::from_secs(3600));
        assert_eq!(issued.expires_at, expiry);
        assert_eq!(keys.expiry(NOW), expiry, "known before the token is signed");
        assert_eq!(
            keys.verify(&issued.token, expiry.saturating_add(Duration::from_secs(5))),
            Ok(ok)
        );
        assert_eq!(
            keys.verify(&issued.token, expiry.saturating_add(Duration::from_secs(6))),
            Err(TokenError::Expired)
        );
        let header = format!("Bearer {}", issued.token);
        assert_eq!(keys.verify_header(&header, NOW), Ok(ok));
        assert_eq!(
            keys.verify_header(&format!("Basic {}", issued.token), NOW),
            Err(TokenError::NotBearer)
        );
    }

    #[test]
    fn tokens_from_another_secret_or_in_the_future_are_invalid() {
        let issued = tokens(&[1; 32]).issue(node(), 1, NOW).unwrap();
        assert_eq!(
            tokens(&[2; 32]).verify(&issued.token, NOW),
            Err(TokenError::Invalid)
        );
        let future = tokens(&[1; 32])
            .issue(node(), 1, NOW.saturating_add(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(
            tokens(&[1; 32]).verify(&future.token, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let keys = tokens(&[1; 32]);
        let claims = serde_json::json!({
            "sub": node().to_string(), "iss": ISSUER, "aud": AUDIENCE,
            "iat": NOW.as_secs(), "exp": NOW.as_secs() + 60, "generation": 1,
        });
        let none = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, "");
        assert_eq!(keys.verify(&none, NOW), Err(TokenError::Invalid));
        let hs512 = forge(r#"{"alg":"HS512","typ":"JWT"}"#, &claims, "AAAA");
        assert_eq!(keys.verify(&hs512, NOW), Err(TokenError::Invalid));
        assert_eq!(keys.verify("garbage", NOW), Err(TokenError::Invalid));
    }

    #[test]
    fn headers_that_pick_a_key_are_refused_even_with_a_good_signature() {
        let keys = tokens(&[1; 32]);
        let encoding = EncodingKey::from_secret(&[1; 32]);
        let claims = serde_json::json!({
            "sub": node().to_string(), "iss": ISSUER, "aud": AUDIENCE,
            "iat": NOW.as_secs(), "exp": NOW.as_secs() + 60, "generation": 1,
        });
        let plain = Header::new(Algorithm::HS256);
        assert!(
            keys.verify(
                &jsonwebtoken::encode(&plain, &claims, &encoding).unwrap(),
                NOW
            )
            .is_ok()
        );
        let headers: [fn(&mut Header); 4] = [
            |h| h.kid = Some("../../../dev/null".into()),
            |h| h.jku = Some("https://attacker.example/jwks.json".into()),
            |h| h.x5u = Some("https://attacker.example/cert.pem".into()),
            |h| h.x5c = Some(vec!["MIIB".into()]),
        ];
        for set in headers {
            let mut header = plain.clone();
            set(&mut header);
            let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
            assert_eq!(
                keys.verify(&token, NOW),
                Err(TokenError::Invalid),
                "{header:?}"
            );
        }
    }

    #[test]
    fn wrong_issuer_audience_or_missing_claims_are_refused() {
        let keys = tokens(&[1; 32]);
        let encoding = EncodingKey::from_secret(&[1; 32]);
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &encoding).unwrap()
        };
        let base = || {
            serde_json::json!({
                "sub": node().to_string(), "iss": ISSUER, "aud": AUDIENCE,
                "iat": NOW.as_secs(), "exp": NOW.as_secs() + 60, "generation": 1,
            })
        };
        assert!(keys.verify(&sign(base()), NOW).is_ok());
        for (field, value) in [
            ("iss", serde_json::json!("someone-else")),
            ("aud", serde_json::json!("bosonserver-admin")),
            ("sub", serde_json::json!("not-a-uuid")),
        ] {
            let mut claims = base();
            claims[field] = value;
            assert_eq!(
                keys.verify(&sign(claims), NOW),
                Err(TokenError::Invalid),
                "{field}"
            );
        }
        for field in ["exp", "iat", "aud", "iss", "sub", "generation"] {
            let mut claims = base();
            claims.as_object_mut().unwrap().remove(field);
            assert_eq!(
                keys.verify(&sign(claims), NOW),
                Err(TokenError::Invalid),
                "{field}"
            );
        }
    }
}
