//! The node relay's settings and its two links to the control plane: which tokens it accepts
//! (a JWT the control plane issued, for a node the control plane granted) and what it reports
//! (nodes connecting and leaving).
//!
//! A token alone is not enough: the control plane pushes a [`Grant`] per registered node
//! (and a newer one on every re-registration, which bumps the generation), so a token of an
//! older registration, or of a node deleted or revoked since, is refused even though its
//! signature still verifies. The grants live here, in the process's memory, read once per
//! session by the worker that authenticates it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, ensure};
use boson_control::clock::{Clock, UnixMillis};
use boson_control::domain::auth::Tokens;
use boson_dataplane::relay::{
    AuthError, MeshSettings, RelayCommand, RelayConfig, RelayHandle, TlsSource,
};
use boson_dataplane::{CoreUpdate, SettingsHandle};
use boson_shared::plane::{Command, Grant};
use boson_shared::{NodeId, TurnSecret};

use crate::dataplane::PeerPolicy;

use crate::mesh::MeshHosts;

/// Node relay settings (WebSocket over TCP, with TLS when a certificate is given).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RelayArgs {
    /// TCP address of the node relay (WebSocket; wss with --relay-cert). Every worker binds it
    /// (SO_REUSEPORT).
    #[arg(long, env = "BOSON_RELAY_LISTEN", default_value = "0.0.0.0:8443")]
    relay_listen: SocketAddr,

    /// Do not serve the node relay.
    #[arg(long, env = "BOSON_NO_RELAY")]
    no_relay: bool,

    /// PEM certificate chain for wss; reloaded when the file changes. Needs --relay-key.
    #[arg(long, env = "BOSON_RELAY_CERT", requires = "relay_key")]
    relay_cert: Option<PathBuf>,

    /// PEM private key for wss. Needs --relay-cert.
    #[arg(long, env = "BOSON_RELAY_KEY", requires = "relay_cert")]
    relay_key: Option<PathBuf>,

    /// Do not serve the relay over QUIC (UDP, same port number as --relay-listen).
    #[arg(long, env = "BOSON_NO_RELAY_QUIC")]
    no_relay_quic: bool,

    /// Relay connections one worker accepts before refusing new ones.
    #[arg(long, env = "BOSON_RELAY_MAX_CONNECTIONS", default_value_t = 65_536)]
    relay_max_connections: usize,

    /// Shared key(s) of the relay mesh, at least 32 bytes each, comma separated, newest first
    /// (it signs; all verify). With it, this host links to every live relay host in the
    /// registry and forwards packets for their nodes; without it, it relays only between its
    /// own nodes.
    #[arg(
        long,
        env = "BOSON_MESH_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    mesh_key: Vec<String>,

    /// PEM file of the CA certificate(s) that sign the other relay hosts' certificates (their
    /// --relay-cert), trusted for mesh links besides the system's roots; read again for
    /// every new link.
    #[arg(long, env = "BOSON_MESH_CA_FILE")]
    mesh_ca_file: Option<PathBuf>,

    /// Tests only: run mesh links on plain WebSocket (ws://), where a captured mesh token can
    /// be replayed to the same host. Without it the mesh needs --relay-cert (TLS 1.3, each
    /// token bound to its connection).
    #[arg(long, env = "BOSON_DANGER_PLAIN_MESH")]
    danger_plain_mesh: bool,
}

impl RelayArgs {
    /// Whether the relay links to other hosts.
    pub(crate) fn mesh_enabled(&self) -> bool {
        !self.no_relay && !self.mesh_key.is_empty()
    }

    /// How the mesh linker opens links.
    pub(crate) fn linker_settings(&self) -> crate::mesh::LinkerSettings {
        crate::mesh::LinkerSettings {
            ca_file: self.mesh_ca_file.clone(),
            allow_plain: self.danger_plain_mesh,
        }
    }

    /// The dataplane's relay configuration, authenticating with `auth`; `None` when disabled.
    pub(crate) fn config(
        &self,
        auth: Arc<RelayAuth>,
        events: Option<boson_dataplane::relay::EventSink>,
        host: boson_shared::plane::HostId,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Option<RelayConfig>> {
        if self.no_relay {
            return Ok(None);
        }
        ensure!(
            self.relay_max_connections >= 1,
            "--relay-max-connections must be at least 1"
        );
        let mut config = RelayConfig::new(auth);
        config.listen = self.relay_listen;
        config.max_connections_per_worker = self.relay_max_connections;
        config.events = events;
        if !self.mesh_key.is_empty() {
            let key = boson_shared::MeshKey::with_keys(
                self.mesh_key.iter().map(|k| k.as_bytes().to_vec()),
            )
            .context("invalid --mesh-key")?;
            ensure!(
                self.relay_cert.is_some() || self.danger_plain_mesh,
                "--mesh-key needs --relay-cert and --relay-key: mesh links run over TLS \
                 (--danger-plain-mesh runs them in clear, for tests only)"
            );
            if self.danger_plain_mesh {
                tracing::warn!(
                    "--danger-plain-mesh: mesh links may run on plain WebSocket, where a \
                     captured mesh token can be replayed; for tests only"
                );
            }
            config.mesh = Some(MeshSettings {
                host,
                key,
                allow_plain: self.danger_plain_mesh,
            });
        }
        if !self.no_relay_quic {
            let (cert, key) = match (&self.relay_cert, &self.relay_key) {
                (Some(cert), Some(key)) => (cert.clone(), key.clone()),
                _ => dev_certificate(data_dir)?,
            };
            let read = |path: &PathBuf| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            config.quic = Some(
                boson_dataplane_proto::quic::QuicConfig::from_pem(&read(&cert)?, &read(&key)?)
                    .context("the QUIC relay's certificate")?,
            );
        }
        config.tls = match (&self.relay_cert, &self.relay_key) {
            (Some(cert), Some(key)) => Some(TlsSource {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(Some(config))
    }
}

/// QUIC always needs TLS: without --relay-cert, a self-signed certificate for `localhost`,
/// made once and kept in the data dir (`relay-cert.pem`, `relay-key.pem`, 0600), so clients
/// can pin it. Fine on one machine; give a real certificate before exposing the relay.
fn dev_certificate(data_dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = data_dir.join("relay-cert.pem");
    let key = data_dir.join("relay-key.pem");
    if !(cert.exists() && key.exists()) {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .context("making a self-signed certificate")?;
        write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert, made.cert.pem().as_bytes())?;
    }
    tracing::warn!(
        "--relay-cert is not set: the QUIC relay uses a self-signed certificate from {}. \
         Set --relay-cert/--relay-key (BOSON_RELAY_CERT/BOSON_RELAY_KEY) before exposing it.",
        cert.display()
    );
    Ok((cert, key))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The grants the control plane pushed, by node.
#[derive(Debug, Default)]
pub(crate) struct Grants(RwLock<HashMap<NodeId, Grant>>);

impl Grants {
    fn get(&self, node: &NodeId) -> Option<Grant> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .copied()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Grant>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Checks relay tokens: the JWT's signature, issuer, audience and lifetime, then the grant.
pub(crate) struct RelayAuth {
    tokens: Tokens,
    grants: Arc<Grants>,
    clock: Arc<dyn Clock>,
}

impl RelayAuth {
    pub(crate) fn new(tokens: Tokens, grants: Arc<Grants>, clock: Arc<dyn Clock>) -> Self {
        Self {
            tokens,
            grants,
            clock,
        }
    }
}

impl boson_dataplane::relay::Authenticator for RelayAuth {
    fn authenticate(&self, token: &[u8]) -> Result<NodeId, AuthError> {
        let token =
            std::str::from_utf8(token).map_err(|_| AuthError::Invalid("not UTF-8".into()))?;
        let now = self.clock.now();
        let claims = self
            .tokens
            .verify(token, now)
            .map_err(|err| AuthError::Invalid(err.to_string()))?;
        decide(self.grants.get(&claims.node_id), claims.generation, now)?;
        Ok(claims.node_id)
    }
}

/// Whether a token of `generation` is covered by `grant` at `now`.
fn decide(grant: Option<Grant>, generation: i64, now: UnixMillis) -> Result<(), AuthError> {
    match grant {
        Some(grant)
            if grant.generation == generation
                && i64::try_from(grant.expires_at).unwrap_or(i64::MAX) > now.0 =>
        {
            Ok(())
        }
        _ => Err(AuthError::NoGrant),
    }
}

/// Where the TURN settings the control plane pushes go: every worker's core.
#[derive(Debug, Clone)]
pub(crate) struct TurnSettings {
    handle: SettingsHandle,
    peers: PeerPolicy,
}

impl TurnSettings {
    pub(crate) const fn new(handle: SettingsHandle, peers: PeerPolicy) -> Self {
        Self { handle, peers }
    }
}

/// Applies control-plane commands: grants to the table, revocations and drain to the relay,
/// TURN settings to every worker's core, mesh host announcements to the mesh linker's table.
#[derive(Debug, Clone)]
pub(crate) struct CommandApplier {
    grants: Arc<Grants>,
    relay: Option<RelayHandle>,
    turn: Option<TurnSettings>,
    /// `None` when this relay opens no mesh links (no mesh key, or no relay).
    mesh: Option<Arc<MeshHosts>>,
}

impl CommandApplier {
    pub(crate) const fn new(
        grants: Arc<Grants>,
        relay: Option<RelayHandle>,
        turn: Option<TurnSettings>,
        mesh: Option<Arc<MeshHosts>>,
    ) -> Self {
        Self {
            grants,
            relay,
            turn,
            mesh,
        }
    }

    pub(crate) fn apply(&self, command: &Command) {
        tracing::debug!(?command, "control → dataplane");
        match command {
            Command::Grant(grant) => {
                let old = self.grants.write().insert(grant.node, *grant);
                // A newer registration revokes the older one's live session.
                if old.is_some_and(|old| old.generation != grant.generation) {
                    self.relay(&RelayCommand::Revoke(grant.node));
                }
            }
            Command::Revoke { node } => {
                self.grants.write().remove(node);
                self.relay(&RelayCommand::Revoke(*node));
            }
            Command::ClearGrants => self.grants.write().clear(),
            Command::Drain { .. } => self.relay(&RelayCommand::Drain),
            Command::Presence { node, host } => self.relay(&RelayCommand::Presence {
                node: *node,
                host: *host,
            }),
            Command::MeshHost {
                host,
                relay_url,
                until,
            } => {
                if let Some(mesh) = &self.mesh {
                    mesh.announce(*host, relay_url.clone(), *until);
                }
            }
            Command::TurnSecrets(secrets) if secrets.is_empty() => {
                tracing::warn!("the control plane sent no TURN secret: the secrets in use stay");
            }
            Command::TurnSecrets(secrets) => {
                tracing::info!(
                    secrets = secrets.len(),
                    "TURN secrets from the control plane"
                );
                self.turn(CoreUpdate::SetSecrets(
                    secrets
                        .iter()
                        .map(|s| TurnSecret::new(s.as_slice()))
                        .collect(),
                ));
            }
            Command::TurnQuota {
                max_allocations_per_user,
            } => {
                tracing::info!(
                    max_allocations_per_user,
                    "TURN quota from the control plane"
                );
                self.turn(CoreUpdate::SetMaxAllocationsPerUser(
                    *max_allocations_per_user,
                ));
            }
            Command::PeerFilter { allow, deny } => {
                tracing::info!(
                    allowed = allow.len(),
                    denied = deny.len(),
                    "TURN peer lists from the control plane"
                );
                if let Some(turn) = &self.turn {
                    let filter = turn.peers.filter(allow, deny);
                    turn.handle.update(&CoreUpdate::SetPeerFilter(filter));
                }
            }
        }
    }

    fn turn(&self, update: CoreUpdate) {
        if let Some(turn) = &self.turn {
            turn.handle.update(&update);
        }
    }

    fn relay(&self, command: &RelayCommand) {
        if let Some(relay) = &self.relay {
            relay.send(command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_decide_generation_and_expiry() {
        let node = NodeId::from_bytes([1; 16]);
        let grant = Grant {
            node,
            generation: 3,
            expires_at: 10_000,
        };
        assert_eq!(decide(Some(grant), 3, UnixMillis(9_999)), Ok(()));
        assert_eq!(
            decide(Some(grant), 2, UnixMillis(9_999)),
            Err(AuthError::NoGrant),
            "an older registration's token"
        );
        assert_eq!(
            decide(Some(grant), 3, UnixMillis(10_000)),
            Err(AuthError::NoGrant),
            "an expired grant"
        );
        assert_eq!(decide(None, 3, UnixMillis(0)), Err(AuthError::NoGrant));
    }

    #[test]
    fn commands_update_the_table() {
        let grants = Arc::new(Grants::default());
        let applier = CommandApplier::new(Arc::clone(&grants), None, None, None);
        let node = NodeId::from_bytes([2; 16]);
        let grant = Grant {
            node,
            generation: 1,
            expires_at: 5,
        };
        applier.apply(&Command::Grant(grant));
        assert_eq!(grants.get(&node), Some(grant));
        applier.apply(&Command::Revoke { node });
        assert_eq!(grants.get(&node), None);
        applier.apply(&Command::Grant(grant));
        applier.apply(&Command::ClearGrants);
        assert_eq!(grants.get(&node), None);
    }
}
