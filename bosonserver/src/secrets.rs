//! Rotation of the TURN secrets without a restart: `--turn-secrets-file` is re-read on SIGHUP
//! and whenever it changes (checked every [`POLL`]), and the control plane mints with and
//! pushes to the dataplane whatever it now holds (`AppState::reload_turn_secrets`). A file
//! that cannot be used is logged as an error and the secrets in use stay.
//!
//! SIGHUP never ends the process: without a secrets file there is nothing to re-read and it
//! is only logged, so a service manager's reload (`kill -HUP`) is always safe.

use std::path::Path;
use std::time::{Duration, SystemTime};

use boson_control::AppState;
use boson_control::io::turn_settings::Reload;

/// How often the file's metadata is compared with the last seen.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// What tells that a file changed: modification time, length and inode (an editor or
/// `mv` that replaces the file changes the inode even within one clock tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// Watches the secrets file of `state`'s configuration, if any, and SIGHUP until the
/// process ends.
pub(crate) async fn watch(state: AppState) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(
                "cannot listen for SIGHUP; the TURN secrets file is polled only: {error}"
            );
            None
        }
    };
    let Some(path) = state.config.turn.secrets_file.clone() else {
        while let Some(signal) = &mut hangup {
            if signal.recv().await.is_none() {
                break;
            }
            tracing::info!("SIGHUP: no --turn-secrets-file to re-read");
        }
        return;
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = stamp(&path);
    loop {
        let signalled = tokio::select! {
            Some(()) = async {
                match &mut hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = tick.tick() => false,
        };
        let now = stamp(&path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        reload(&state, &path, signalled);
    }
}

fn reload(state: &AppState, path: &Path, signalled: bool) {
    let cause = if signalled { "SIGHUP" } else { "file changed" };
    match state.reload_turn_secrets() {
        Ok(Reload::Changed { secrets }) => tracing::info!(
            file = %path.display(),
            secrets,
            cause,
            "TURN secrets reloaded: minting with the first, pushed to the dataplane"
        ),
        Ok(Reload::Unchanged) => tracing::info!(
            file = %path.display(),
            cause,
            "TURN secrets file re-read: no change"
        ),
        Err(error) => tracing::error!(
            file = %path.display(),
            cause,
            in_use = state.turn_secrets().len(),
            "TURN secrets file not used, the secrets in use stay: {error:#}"
        ),
    }
}
