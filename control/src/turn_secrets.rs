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
//! `Command::TurnSecrets` carries to the dataplane. [`parse`] and [`check`] are pure;
//! [`AppState::reload_turn_secrets`] re-reads the file at run time.

use std::path::Path;

use anyhow::Context as _;
use boson_shared::TurnSecret;
use boson_shared::plane::{Command, MAX_TURN_SECRET_LEN, MAX_TURN_SECRETS};

use crate::AppState;

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

/// Reads and parses the secrets file at `path`.
pub fn read(path: &Path) -> anyhow::Result<Vec<TurnSecret>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the TURN secrets file {}", path.display()))?;
    let secrets =
        parse(&text).with_context(|| format!("the TURN secrets file {}", path.display()))?;
    Ok(secrets)
}

/// What [`AppState::reload_turn_secrets`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The file holds the secrets already in use.
    Unchanged,
    /// New secrets are in use and were sent to the dataplane.
    Changed {
        /// How many.
        secrets: usize,
    },
}

impl AppState {
    /// The TURN secrets in use, newest (the one that mints) first.
    pub fn turn_secrets(&self) -> Vec<TurnSecret> {
        self.lock_turn_secrets().clone()
    }

    /// The secret credentials are minted with now.
    pub(crate) fn minting_secret(&self) -> TurnSecret {
        let secrets = self.lock_turn_secrets();
        // Never empty: `check` refuses an empty list.
        secrets
            .first()
            .cloned()
            .unwrap_or_else(|| TurnSecret::new(Vec::new()))
    }

    /// Re-reads `--turn-secrets-file`. New secrets go to the dataplane first and are then used
    /// to mint, so credentials minted with them verify as soon as the dataplane applied them.
    /// A file that cannot be read or used is an error and changes nothing. Without a secrets
    /// file there is nothing to reload.
    pub fn reload_turn_secrets(&self) -> anyhow::Result<Reload> {
        let Some(path) = &self.config.turn.secrets_file else {
            return Ok(Reload::Unchanged);
        };
        let secrets = read(path)?;
        let mut current = self.lock_turn_secrets();
        if *current == secrets {
            return Ok(Reload::Unchanged);
        }
        self.emit([Command::TurnSecrets(
            secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        )]);
        let count = secrets.len();
        *current = secrets;
        Ok(Reload::Changed { secrets: count })
    }

    /// Sends the TURN settings the dataplane enforces: the secrets in use, the per-user quota
    /// and the peer lists. For a dataplane that (re)attached, before its grants.
    pub(crate) fn push_turn_settings(&self) {
        {
            // Sent under the lock, so a reload cannot slip its newer secrets in between
            // reading these and sending them: the dataplane ends with the newest.
            let secrets = self.lock_turn_secrets();
            self.emit([Command::TurnSecrets(
                secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            )]);
        }
        let turn = &self.config.turn;
        self.emit([
            Command::TurnQuota {
                max_allocations_per_user: turn.max_allocations_per_user,
            },
            Command::PeerFilter {
                allow: turn.allowed_peers.clone(),
                deny: turn.denied_peers.clone(),
            },
        ]);
    }

    fn lock_turn_secrets(&self) -> std::sync::MutexGuard<'_, Vec<TurnSecret>> {
        self.turn_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
