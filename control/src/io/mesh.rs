//! The control plane's side of the relay mesh and of the link to the dataplane: this host's
//! registration among the relay hosts, relay presence, and the grants the dataplane enforces.
//!
//! The binary drives it through these `AppState` methods:
//!
//! * [`AppState::set_command_sink`] once at start: where [`Command`]s go (grants, revocations,
//!   presence of nodes on other hosts). Before it is set, commands are dropped; the dataplane
//!   asks for everything with `Event::NeedGrants` when it starts.
//! * [`AppState::handle_event`] for every [`Event`] the dataplane reports, one at a time, in
//!   the order they arrive, and [`AppState::forget_allocations`] when a new dataplane
//!   incarnation attaches.
//! * [`AppState::set_host_load`] whenever it has fresh load figures (every second is plenty);
//!   the next host heartbeat publishes them.
//!
//! [`crate::serve`] runs the rest in the background every `host_heartbeat_interval`:
//! [`AppState::heartbeat_host`], [`AppState::poll_presence`] and [`AppState::sync_grants`].
//! The decisions are pure, in [`crate::domain::hosts`], [`crate::domain::presence`] and [`crate::domain::grants`].

use std::collections::BTreeMap;

use boson_shared::NodeId;
use boson_shared::plane::{Command, Event, Generation, Grant, HostId};

use crate::AppState;
use crate::clock::UnixMillis;
use crate::domain::grants::{self, Epoch, GrantTable, GrantUpdate};
use crate::domain::hosts::{self, HostLoad, HostRecord};
use crate::domain::presence::PresenceChange;
use crate::io::cache::CacheError;
use crate::io::store::StoreError;

/// Receives the control plane's commands to the dataplane. It must not block: it is called
/// from the API's request handlers, with the grant table locked so that commands arrive in
/// the order they were decided. A closure `Fn(Command)` is a sink.
pub trait CommandSink: Send + Sync + 'static {
    /// Delivers one command.
    fn send(&self, command: Command);

    /// A mark after every command delivered so far, for [`Self::reached`]; `None` when this
    /// sink cannot tell when the dataplane has taken them.
    fn mark(&self) -> Option<u64> {
        None
    }

    /// Whether the dataplane has taken every command delivered before `mark`.
    fn reached(&self, mark: u64) -> bool {
        let _ = mark;
        true
    }
}

impl<F: Fn(Command) + Send + Sync + 'static> CommandSink for F {
    fn send(&self, command: Command) {
        self(command);
    }
}

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Where a node holds its relay session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPresence {
    /// The relay host.
    pub host: HostId,
    /// Its WebSocket relay URL, if it serves one.
    pub relay_url: Option<String>,
    /// Its QUIC relay address, if it serves one.
    pub quic_addr: Option<String>,
}

impl AppState {
    /// This host's id in the relay host registry.
    pub fn host_id(&self) -> HostId {
        self.host.id()
    }

    /// Replaces this host's live load; the next host heartbeat publishes it.
    pub fn set_host_load(&self, load: HostLoad) {
        self.host.set_load(load);
    }

    /// Sends every later [`Command`] to `sink`. Only one sink may be set; a second call is an
    /// error.
    pub fn set_command_sink(&self, sink: impl CommandSink) -> anyhow::Result<()> {
        self.sink
            .set(Box::new(sink))
            .map_err(|_| anyhow::anyhow!("a command sink is already set"))
    }

    /// Waits, at most `timeout`, until the dataplane has taken every command sent so far, so
    /// that what a request just decided (a grant) is in force when its answer arrives: a node
    /// that registers and connects to the relay at once is not refused for a grant still in
    /// flight. Returns whether it got there; past `timeout` (a dataplane down or restarting)
    /// the request goes on, and the node's retry finds the grant later.
    pub async fn await_dataplane(&self, timeout: std::time::Duration) -> bool {
        let Some(sink) = self.sink.get() else {
            return true;
        };
        let Some(mark) = sink.mark() else {
            return true;
        };
        let taken = async {
            while !sink.reached(mark) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        let reached = tokio::time::timeout(timeout, taken).await.is_ok();
        if !reached {
            tracing::debug!("the dataplane has not taken the commands within {timeout:?}");
        }
        reached
    }

    /// Handles one event from the dataplane. Failures are logged, not returned: presence is
    /// advisory (it expires by itself) and the dataplane has nothing to retry.
    pub async fn handle_event(&self, event: Event) {
        match event {
            Event::NodeConnected { node, core, .. } => {
                let change = self.lock_sessions().handle_connected(node, core);
                if change == PresenceChange::Publish
                    && let Err(error) = self.publish_relay_presence(node).await
                {
                    tracing::warn!(%node, "relay presence not published: {error}");
                }
            }
            Event::NodeDisconnected { node, core } => {
                let change = self.lock_sessions().handle_disconnected(node, core);
                if change == PresenceChange::Withdraw
                    && let Err(error) = self.withdraw_relay_presence(node).await
                {
                    tracing::warn!(%node, "relay presence not withdrawn: {error}");
                }
            }
            Event::NeedGrants => {
                if let Err(error) = self.resync_grants().await {
                    tracing::warn!("grants re-sent from memory only: {error}");
                }
            }
            Event::AllocationCreated { core, user, relay } => {
                let mut view = self.lock_allocations();
                view.handle_created(core, relay, user);
                self.metrics.set_turn_allocations(&view);
            }
            Event::AllocationExpired { core, relay } => {
                let mut view = self.lock_allocations();
                view.handle_expired(core, relay);
                self.metrics.set_turn_allocations(&view);
            }
        }
    }

    /// A new dataplane incarnation attached: the allocations the previous one reported died
    /// with it. Call it before handing the new one's events to [`Self::handle_event`].
    pub fn forget_allocations(&self) {
        let mut view = self.lock_allocations();
        view.clear();
        self.metrics.set_turn_allocations(&view);
    }

    /// The TURN allocations the dataplane reported live, as this control plane sees them.
    pub fn allocations(&self) -> crate::domain::allocations::AllocationView {
        self.lock_allocations().clone()
    }

    /// Where `node` holds its relay session: this host, or a live other host.
    pub async fn relay_presence(&self, node: NodeId) -> Result<Option<RelayPresence>, MeshError> {
        if self.lock_sessions().contains(node) {
            return Ok(Some(presence_at(&self.own_record(self.clock.now()))));
        }
        let now = self.clock.now();
        let host = if self.cache.is_redis() {
            self.cache.relay_presence(node).await?
        } else {
            self.store.presence(node, now).await?
        };
        let Some(host) = host else {
            return Ok(None);
        };
        let hosts = self.live_hosts().await?;
        Ok(hosts
            .iter()
            .find(|record| record.host_id == host)
            .map(presence_at))
    }

    /// Every live relay host, this one included, by id.
    pub async fn live_hosts(&self) -> Result<Vec<HostRecord>, MeshError> {
        let now = self.clock.now();
        let timeout = self.config.host.timeout;
        let records = match self.cache.hosts().await? {
            Some(records) => records,
            None => self.store.hosts(now.saturating_sub(timeout)).await?,
        };
        Ok(hosts::live_hosts(
            records,
            self.own_record(now),
            now,
            timeout,
        ))
    }

    /// Publishes this host's record and load, and extends the relay presence of the nodes
    /// connected here. Both the store and Redis are tried; the first failure is returned.
    pub async fn heartbeat_host(&self) -> Result<(), MeshError> {
        let now = self.clock.now();
        let record = self.own_record(now);
        let ttl = self.config.host.timeout;
        let stored = self.store.put_host(&record).await.map_err(MeshError::from);
        let cached = self
            .cache
            .put_host(&record, ttl)
            .await
            .map_err(MeshError::from);
        let nodes = self.lock_sessions().nodes();
        let refreshed = if self.cache.is_redis() {
            self.cache
                .refresh_relay_presence(record.host_id, &nodes, ttl)
                .await
                .map_err(MeshError::from)
        } else {
            self.store
                .refresh_presence(record.host_id, now.saturating_add(ttl))
                .await
                .map_err(MeshError::from)
        };
        stored?;
        cached?;
        refreshed?;
        Ok(())
    }

    /// Reads which nodes hold relay sessions on the other live hosts and sends the changes
    /// since the last poll to the dataplane as `Command::Presence`; announces every other
    /// live host's relay URL as `Command::MeshHost`, valid for one host timeout, so the
    /// dataplane (in this process or another) keeps a mesh link to each.
    pub async fn poll_presence(&self) -> Result<(), MeshError> {
        let hosts = self.live_hosts().await?;
        self.metrics.set_relay_hosts(hosts.len());
        let own = self.host_id();
        let until = grants::unix_ms(self.clock.now().saturating_add(self.config.host.timeout));
        self.emit(hosts::mesh_announcements(&hosts, own, until));
        let others: Vec<HostId> = hosts
            .iter()
            .map(|host| host.host_id)
            .filter(|id| *id != own)
            .collect();
        let mut fresh: BTreeMap<NodeId, HostId> = if self.cache.is_redis() {
            self.cache.relay_nodes(&others).await?
        } else {
            let now = self.clock.now();
            self.store
                .remote_presence(own, now)
                .await?
                .into_iter()
                .filter(|(_, host)| others.contains(host))
                .collect()
        };
        {
            let sessions = self.lock_sessions();
            fresh.retain(|node, _| !sessions.contains(*node));
        }
        let mut remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.emit(remote.handle_poll(fresh));
        Ok(())
    }

    /// Brings the dataplane's grants in step with the store (nodes registered, renewed or gone
    /// through other hosts, grants that lapsed) and returns how many rows it read. The first
    /// sync reads every live node; each later one only the rows changed since the previous
    /// one (read back a margin for clock skew and the heartbeats other hosts write behind),
    /// with the deletions since, so its cost follows the rate of change, not the population.
    pub async fn sync_grants(&self) -> Result<usize, StoreError> {
        // (This host's own heartbeats, maybe not written yet, are in the table already.)
        let since = self.lock_grants().epoch();
        let now = self.clock.now();
        let cursor = *self.lock_grants_synced();
        let Some(cursor) = cursor else {
            let fresh = self.live_grants(now).await?;
            let rows = fresh.len();
            let mut table = self.lock_grants();
            let commands = table.handle_sync(fresh, since, grants::unix_ms(now));
            self.emit(commands);
            drop(table);
            self.advance_grants_synced(now);
            return Ok(rows);
        };
        let from = cursor
            .saturating_sub(crate::INDEX_SYNC_MARGIN)
            .saturating_sub(self.config.nodes.heartbeat_flush_interval);
        let changes = self.store.grant_changes(from).await?;
        let deleted = self.store.deletions_since(from).await?;
        let rows = changes.len() + deleted.len();
        let timeout = self.config.nodes.timeout;
        let updates = changes
            .iter()
            .map(|change| {
                let source = change.source;
                let live = (change.status == crate::domain::model::NodeStatus::Active)
                    .then(|| {
                        grants::grant_for(
                            source.node_id,
                            source.generation,
                            source.last_seen,
                            source.token_expires_at,
                            now,
                            timeout,
                        )
                    })
                    .flatten();
                live.map_or(
                    GrantUpdate::Gone {
                        node: source.node_id,
                        generation: source.generation,
                    },
                    GrantUpdate::Live,
                )
            })
            .chain(
                deleted
                    .into_iter()
                    .map(|(node, generation)| GrantUpdate::Gone { node, generation }),
            );
        let mut table = self.lock_grants();
        let commands = table.handle_changes(updates, since, grants::unix_ms(now));
        self.emit(commands);
        drop(table);
        self.advance_grants_synced(now);
        Ok(rows)
    }

    /// For a restarted dataplane: the TURN settings (secrets in use, quota, peer lists),
    /// `ClearGrants`, every live grant, and the presence of every node on another host. The
    /// grants are read from the store first; if that fails, the ones in memory are sent and
    /// the error returned.
    pub async fn resync_grants(&self) -> Result<(), StoreError> {
        self.push_turn_settings();
        let since = self.lock_grants().epoch();
        let now = self.clock.now();
        let fresh = self.live_grants(now).await;
        let mut table = self.lock_grants();
        let now_ms = grants::unix_ms(now);
        if let Ok(fresh) = &fresh {
            // Superseded by the full re-push below.
            let _ = table.handle_sync(fresh.iter().copied(), since, now_ms);
        }
        self.emit(table.resync(now_ms));
        let remote = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.emit(remote.resync());
        fresh.map(|_| ())
    }

    /// The grant table's position, before a sweep (see [`Self::revoke_stale`]).
    pub(crate) fn grant_epoch(&self) -> Epoch {
        self.lock_grants().epoch()
    }

    /// Grants `node` relay sessions for `generation`, if it is new, newer, or due for renewal.
    pub(crate) fn grant(
        &self,
        node: NodeId,
        generation: Generation,
        last_seen: UnixMillis,
        token_expires_at: UnixMillis,
    ) {
        let now = self.clock.now();
        let Some(grant) = grants::grant_for(
            node,
            generation,
            last_seen,
            token_expires_at,
            now,
            self.config.nodes.timeout,
        ) else {
            return;
        };
        let mut table = self.lock_grants();
        let command = table.handle_grant(grant, grants::unix_ms(now));
        self.emit(command);
    }

    /// Revokes `node`'s grant (of `up_to` or older; any with `None`).
    pub(crate) fn revoke(&self, node: NodeId, up_to: Option<Generation>) {
        let mut table = self.lock_grants();
        let command = table.handle_revoke(node, up_to);
        self.emit(command);
    }

    /// Revokes the grants of nodes a sweep that began at `since` found silent.
    pub(crate) fn revoke_stale(&self, nodes: &[NodeId], since: Epoch) {
        let mut table = self.lock_grants();
        for node in nodes {
            let command = table.handle_stale(*node, since);
            self.emit(command);
        }
    }

    /// Withdraws this host from the registry, with the relay presence it published: for a
    /// clean shutdown, so routing moves away at once instead of after the host timeout.
    pub(crate) async fn leave(&self) {
        let id = self.host_id();
        if let Err(error) = self.store.host_left(id).await {
            tracing::warn!("leaving the relay host registry: {error}");
        }
        if let Err(error) = self.cache.remove_host(id).await {
            tracing::warn!("leaving the relay host registry in Redis: {error}");
        }
    }

    /// This host's record at `now`.
    pub(crate) fn own_record(&self, now: UnixMillis) -> HostRecord {
        self.host.record(now)
    }

    async fn live_grants(&self, now: UnixMillis) -> Result<Vec<Grant>, StoreError> {
        let timeout = self.config.nodes.timeout;
        let sources = self
            .store
            .grant_sources(now.saturating_sub(timeout))
            .await?;
        Ok(sources
            .iter()
            .filter_map(|source| {
                grants::grant_for(
                    source.node_id,
                    source.generation,
                    source.last_seen,
                    source.token_expires_at,
                    now,
                    timeout,
                )
            })
            .collect())
    }

    async fn publish_relay_presence(&self, node: NodeId) -> Result<(), MeshError> {
        let host = self.host_id();
        let ttl = self.config.host.timeout;
        if self.cache.is_redis() {
            self.cache.set_relay_presence(node, host, ttl).await?;
        } else {
            let now = self.clock.now();
            self.store
                .set_presence(node, host, now, now.saturating_add(ttl))
                .await?;
        }
        Ok(())
    }

    async fn withdraw_relay_presence(&self, node: NodeId) -> Result<(), MeshError> {
        let host = self.host_id();
        if self.cache.is_redis() {
            self.cache.clear_relay_presence(node, host).await?;
        } else {
            self.store.clear_presence(node, host).await?;
        }
        Ok(())
    }

    /// Sends commands to the sink (dropped when none is set), counting them by kind.
    pub(crate) fn emit(&self, commands: impl IntoIterator<Item = Command>) {
        for command in commands {
            self.metrics.count_command(command_kind(&command));
            match self.sink.get() {
                Some(sink) => sink.send(command),
                None => tracing::debug!("no command sink yet: dropped {command:?}"),
            }
        }
    }

    /// Moves the grant sync's cursor to `now`, never back: a slow sync that began earlier
    /// than the last one must not make the next read again what that one read.
    fn advance_grants_synced(&self, now: UnixMillis) {
        let mut cursor = self.lock_grants_synced();
        *cursor = Some(cursor.map_or(now, |old| old.max(now)));
    }

    fn lock_grants_synced(&self) -> std::sync::MutexGuard<'_, Option<UnixMillis>> {
        self.grants_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_grants(&self) -> std::sync::MutexGuard<'_, GrantTable> {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_allocations(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::domain::allocations::AllocationView> {
        self.allocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, crate::domain::presence::LocalSessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn presence_at(host: &HostRecord) -> RelayPresence {
    RelayPresence {
        host: host.host_id,
        relay_url: host.addresses.relay_url.clone(),
        quic_addr: host.addresses.quic_addr.clone(),
    }
}

/// The metric label of a command.
fn command_kind(command: &Command) -> &'static str {
    match command {
        Command::Grant(_) => "grant",
        Command::Revoke { .. } => "revoke",
        Command::ClearGrants => "clear_grants",
        Command::TurnSecrets(_) => "turn_secrets",
        Command::TurnQuota { .. } => "turn_quota",
        Command::Drain { .. } => "drain",
        Command::Presence { .. } => "presence",
        Command::MeshHost { .. } => "mesh_host",
        Command::PeerFilter { .. } => "peer_filter",
    }
}
