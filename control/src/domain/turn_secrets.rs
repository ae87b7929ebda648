//! The TURN REST secrets file (`--turn-secrets-file`): its format, its bounds, and reading it.
//!
//! ```text
//! # rotated 2024-05-01: `new` mints, `old` still verifies until the credentials it minted
//! # (24 h by default) have run out.
//! new
//! old
//! ```
//!
//! One secret per line, newest first; surrounding whitespace is trimmed, and blank lines and
//! lines starting with `#` are skipped. The list must hold 1 to
//! [`MAX_TURN_SECRETS`] secrets of at most [`MAX_TURN_SECRET_LEN`] bytes: what one
//! `Command::TurnSecrets` carries to the dataplane. [`parse`] and [`check`] are pure; reading
//! the file and reloading it at run time is [`crate::io::turn_settings`]'s.

use boson_shared::TurnSecret;
use boson_shared::plane::{MAX_TURN_SECRET_LEN, MAX_TURN_SECRETS};

/// Why a list of secrets cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// No secret at all: no credential could verify.
    #[error("no secret")]
    Empty,
    /// More secrets than the dataplane takes.
    #[error("{count} secrets, at most {MAX_TURN_SECRETS} are supported")]
    TooMany {
        /// How many.
        count: usize,
    },
    /// A secret longer than the dataplane takes.
    #[error("secret number {position} has {len} bytes, at most {MAX_TURN_SECRET_LEN}")]
    TooLong {
        /// Which one, from 1 (newest).
        position: usize,
        /// Its length.
        len: usize,
    },
}

/// The secrets in `text`, newest first, checked with [`check`].
pub fn parse(text: &str) -> Result<Vec<TurnSecret>, SecretsError> {
    let secrets: Vec<TurnSecret> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(TurnSecret::new)
        .collect();
    check(&secrets)?;
    Ok(secrets)
}

/// Whether `secrets` can be used: 1 to [`MAX_TURN_SECRETS`] of at most
/// [`MAX_TURN_SECRET_LEN`] bytes each.
pub fn check(secrets: &[TurnSecret]) -> Result<(), SecretsError> {
    if secrets.is_empty() {
        return Err(SecretsError::Empty);
    }
    if secrets.len() > MAX_TURN_SECRETS {
        return Err(SecretsError::TooMany {
            count: secrets.len(),
        });
    }
    if let Some((index, secret)) = secrets
        .iter()
        .enumerate()
        .find(|(_, secret)| secret.as_bytes().len() > MAX_TURN_SECRET_LEN)
    {
        return Err(SecretsError::TooLong {
            position: index + 1,
            len: secret.as_bytes().len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_per_line_newest_first() {
        assert_eq!(
            parse("# comment\n new \n\n\told\t\n#old-er\n"),
            Ok(vec![TurnSecret::new("new"), TurnSecret::new("old")])
        );
        assert_eq!(parse("a,b\r\n"), Ok(vec![TurnSecret::new("a,b")]));
    }

    #[test]
    fn unusable_lists_are_refused() {
        assert_eq!(parse(""), Err(SecretsError::Empty));
        assert_eq!(parse("# only a comment\n\n"), Err(SecretsError::Empty));
        let many = "s\n".repeat(MAX_TURN_SECRETS + 1);
        assert_eq!(
            parse(&many),
            Err(SecretsError::TooMany {
                count: MAX_TURN_SECRETS + 1
            })
        );
        assert!(parse(&"s\n".repeat(MAX_TURN_SECRETS)).is_ok());
        let long = format!("ok\n{}\n", "x".repeat(MAX_TURN_SECRET_LEN + 1));
        assert_eq!(
            parse(&long),
            Err(SecretsError::TooLong {
                position: 2,
                len: MAX_TURN_SECRET_LEN + 1
            })
        );
        assert!(parse(&"x".repeat(MAX_TURN_SECRET_LEN)).is_ok());
    }
}
