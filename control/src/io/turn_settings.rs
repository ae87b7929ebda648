//! The TURN settings the dataplane enforces, on the I/O side: reloading `--turn-secrets-file`
//! at run time ([`read_turn_secrets`]; its format and bounds are in
//! [`crate::domain::turn_secrets`]) and sending the secrets, quota and peer lists to the
//! dataplane.

use boson_shared::TurnSecret;
use boson_shared::plane::Command;

use crate::AppState;
use crate::config::read_turn_secrets;

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
        let secrets = read_turn_secrets(path)?;
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
