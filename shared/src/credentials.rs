//! TURN REST API credentials, as coturn implements them (`use-auth-secret`).
//!
//! The control plane mints them and the dataplane checks them, with nothing shared but a
//! secret:
//!
//! ```text
//! username = "<expiry unix seconds>:<user id>"
//! password = base64(HMAC-SHA1(secret, username))
//! ```
//!
//! The TURN server then derives the long-term key as `MD5(username ":" realm ":" password)`
//! (RFC 8489 §9.2.2). Several secrets may be valid at once so that a secret can be rotated
//! without cutting off credentials minted under the old one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Length of the base64 text of an HMAC-SHA1 digest (20 bytes).
const PASSWORD_LEN: usize = 28;

/// A shared TURN secret (coturn's `static-auth-secret`). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(Vec<u8>);

impl TurnSecret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `base64(HMAC-SHA1(secret, username))`: the password coturn expects for `username`.
    pub fn password_for(&self, username: &str) -> String {
        STANDARD.encode(self.mac(username).finalize().into_bytes())
    }

    fn mac(&self, username: &str) -> HmacSha1 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha1 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(username.as_bytes());
        mac
    }

    fn verifies(&self, username: &str, password: &str) -> bool {
        let Ok(tag) = STANDARD.decode(password) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        self.mac(username).verify_slice(&tag).is_ok()
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
    }
}

/// A time-limited TURN credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredential {
    /// `"<expiry>:<user>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Unix seconds after which the server refuses the credential.
    pub expires_at: u64,
}

impl TurnCredential {
    /// Mints a credential for `user` that expires at `expires_at` (unix seconds).
    ///
    /// A `:` in `user` is allowed (coturn splits at the first one only).
    pub fn mint(secret: &TurnSecret, user: &str, expires_at: u64) -> Self {
        let username = format!("{expires_at}:{user}");
        let password = secret.password_for(&username);
        Self {
            username,
            password,
            expires_at,
        }
    }
}

/// Why the TURN server refuses a REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The expiry (before the first `:`, or the whole username) is not a decimal number of
    /// seconds.
    #[error("username is not of the form <expiry>[:<user>]")]
    Malformed,
    /// The expiry is in the past.
    #[error("credential expired")]
    Expired,
    /// No configured secret produces this password.
    #[error("password does not match any secret")]
    BadPassword,
    /// No secret is configured, so no credential can be valid.
    #[error("no TURN secret is configured")]
    NoSecret,
}

/// The parts of a REST username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Unix seconds after which the credential is refused.
    pub expires_at: u64,
    /// What follows the first `:`.
    pub user: &'a str,
}

impl<'a> RestUsername<'a> {
    /// Splits `"<expiry>:<user>"`, or takes a bare `"<expiry>"` with an empty user, as coturn
    /// does (its own client, `turnutils_uclient -W`, sends that). The expiry must be plain
    /// ASCII digits (no sign, no spaces).
    pub fn parse(username: &'a str) -> Result<Self, CredentialError> {
        let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CredentialError::Malformed);
        }
        let expires_at = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        Ok(Self { expires_at, user })
    }

    /// Whether the credential is still valid at `now` (unix seconds).
    pub fn is_live(&self, now: u64) -> bool {
        now <= self.expires_at
    }
}

/// Finds which of `secrets` produced the password of `username`, or returns why none did.
///
/// The TURN server calls this with the password it would expect (`TurnSecret::password_for`)
/// when it derives the long-term key; this function serves tools and tests that hold the
/// password itself.
pub fn verify<'s>(
    secrets: &'s [TurnSecret],
    username: &str,
    password: &str,
    now: u64,
) -> Result<&'s TurnSecret, CredentialError> {
    let parsed = RestUsername::parse(username)?;
    if !parsed.is_live(now) {
        return Err(CredentialError::Expired);
    }
    if secrets.is_empty() {
        return Err(CredentialError::NoSecret);
    }
    if password.len() != PASSWORD_LEN {
        return Err(CredentialError::BadPassword);
    }
    secrets
        .iter()
        .find(|secret| secret.verifies(username, password))
        .ok_or(CredentialError::BadPassword)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with
    /// `printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64`.
    const VECTOR_PASSWORD: &str = "Cd/49soE35ICqcJF/bCTn8Z4OyE=";

    #[test]
    fn minted_credential_matches_an_independent_hmac() {
        let credential = TurnCredential::mint(&TurnSecret::new("north"), "alice", 1_700_000_000);
        assert_eq!(credential.username, "1700000000:alice");
        assert_eq!(credential.password, VECTOR_PASSWORD);
    }

    #[test]
    fn verify_accepts_live_credentials_under_any_configured_secret() {
        let old = TurnSecret::new("old-secret");
        let new = TurnSecret::new("new-secret");
        let credential = TurnCredential::mint(&old, "node-1", 1_000);
        let secrets = [new, old.clone()];
        let found = verify(&secrets, &credential.username, &credential.password, 999).unwrap();
        assert_eq!(found, &old);
        // Valid up to and including the expiry second.
        assert!(verify(&secrets, &credential.username, &credential.password, 1_000).is_ok());
    }

    #[test]
    fn verify_refuses_expired_forged_and_malformed_credentials() {
        let secret = TurnSecret::new("s");
        let secrets = [secret.clone()];
        let credential = TurnCredential::mint(&secret, "u", 100);
        assert_eq!(
            verify(&secrets, &credential.username, &credential.password, 101),
            Err(CredentialError::Expired)
        );
        let forged = TurnCredential::mint(&TurnSecret::new("other"), "u", 100);
        assert_eq!(
            verify(&secrets, &forged.username, &forged.password, 50),
            Err(CredentialError::BadPassword)
        );
        // Same password, different user: the HMAC covers the whole username.
        assert_eq!(
            verify(&secrets, "100:v", &credential.password, 50),
            Err(CredentialError::BadPassword)
        );
        assert_eq!(
            verify(&[], &credential.username, &credential.password, 50),
            Err(CredentialError::NoSecret)
        );
        for bad in [
            "nocolon",
            ":user",
            "-5:user",
            "+5:user",
            " 5:user",
            "1e3:user",
            "99999999999999999999999:u",
        ] {
            assert_eq!(
                verify(&secrets, bad, &credential.password, 50),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(
                &secrets,
                &credential.username,
                "not-base64-at-all-but-28chr",
                50
            ),
            Err(CredentialError::BadPassword)
        );
    }

    #[test]
    fn a_bare_expiry_is_a_username_with_an_empty_user() {
        let secret = TurnSecret::new("s");
        let password = secret.password_for("100");
        assert!(verify(&[secret], "100", &password, 100).is_ok());
        let parsed = RestUsername::parse("100").unwrap();
        assert_eq!((parsed.expires_at, parsed.user), (100, ""));
    }

    #[test]
    fn rest_username_splits_at_the_first_colon() {
        let parsed = RestUsername::parse("42:user:with:colons").unwrap();
        assert_eq!(parsed.expires_at, 42);
        assert_eq!(parsed.user, "user:with:colons");
    }
}
