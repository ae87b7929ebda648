//! BosonServer's control plane: the node registry and its REST API, the relay host registry,
//! and the decisions the dataplane enforces.
//!
//! Nodes register, prove who they are with the token they get back, send heartbeats, ask for
//! routes and for TURN credentials. State lives in SQLite (embedded default) or PostgreSQL,
//! and, when configured, in Redis for limits and presence shared between hosts. Every
//! BosonServer process registers itself as a relay host ([`domain::hosts`]), and tells its
//! dataplane which nodes may relay and where remote nodes are ([`io::mesh`]).
//!
//! The tree says which modules decide and which do I/O. [`domain`] holds the decisions, pure
//! functions of `now` and data ([`domain::registry::decide`], [`domain::routing::rank`],
//! [`domain::auth::Tokens::verify`], [`domain::grants::GrantTable`],
//! [`domain::hosts::is_live`]), tested without a database. [`io`] holds the store, the cache
//! (with its pure [`io::cache::rate_decision`]) and the mesh; the handlers (module `http`)
//! are plain async functions that do the I/O around a decision.

pub mod clock;
pub mod config;
pub mod domain;
mod http;
pub mod io;
pub mod metrics;
pub mod openapi;

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use boson_shared::NodeId;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::allocations::AllocationView;
use crate::domain::auth::Tokens;
use crate::domain::grants::GrantTable;
use crate::domain::heartbeats::{Heartbeat, HeartbeatBuffer};
use crate::domain::hosts::LocalHost;
use crate::domain::model::{NodeRecord, NodeStatus};
use crate::domain::presence::{LocalSessions, RemotePresence};
use crate::domain::route_index::RouteIndex;
use crate::io::cache::Cache;
use crate::io::mesh::CommandSink;
use crate::io::store::Store;
use crate::metrics::Metrics;

pub use crate::http::api_routes;

/// Everything a request handler can reach.
pub struct App {
    /// Validated settings.
    pub config: Config,
    /// Node registry.
    pub store: Store,
    /// Rate limits and presence.
    pub cache: Cache,
    /// Node tokens.
    pub tokens: Tokens,
    /// Exported metrics.
    pub metrics: Metrics,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// More Prometheus text for `/metrics`, such as the dataplane's per-core counters when
    /// both planes run in one process. Set once at start.
    extra_metrics: OnceLock<MetricsSource>,
    /// This process as a relay host.
    host: LocalHost,
    /// The grants the dataplane was told about.
    grants: Mutex<GrantTable>,
    /// When the last grant sync read the store; `None` before the first (a full read).
    grants_synced: Mutex<Option<clock::UnixMillis>>,
    /// Relay sessions on this host, from the dataplane's events.
    sessions: Mutex<LocalSessions>,
    /// Nodes on other hosts, as the dataplane was told.
    remote: Mutex<RemotePresence>,
    /// The TURN secrets in use (`config.turn.secrets` until a reload of the secrets file).
    turn_secrets: Mutex<Vec<boson_shared::TurnSecret>>,
    /// TURN allocations on this host, from the dataplane's events.
    allocations: Mutex<AllocationView>,
    /// Where commands to the dataplane go. Set once at start.
    sink: OnceLock<Box<dyn CommandSink>>,
    /// The routing's random choices.
    rng: Mutex<StdRng>,
    /// Set once a graceful shutdown began: readiness fails from then on.
    draining: AtomicBool,
    /// The live nodes routing selects from (see [`domain::route_index`]).
    route_index: Mutex<RouteIndex>,
    /// Until when the index has read the store's changes (see [`index_sync_forever`]).
    index_synced: Mutex<clock::UnixMillis>,
    /// Heartbeats not written to the store yet (see [`domain::heartbeats`]).
    heartbeats: Mutex<HeartbeatBuffer>,
    /// Whether the last batch write or readiness ping reached the database: while it did
    /// not, heartbeats are written directly (and answer 503 like every other request)
    /// instead of piling up in memory unacknowledged.
    store_reachable: AtomicBool,
}

/// Renders Prometheus text appended to `/metrics`.
pub type MetricsSource = Box<dyn Fn() -> String + Send + Sync>;

/// Shared handle to the [`App`].
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    /// Connects to the database (running migrations) and to Redis if configured.
    pub async fn connect(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database_url)
            .await
            .context("connecting to the database")?;
        let cache = match &config.redis {
            Some(redis) => Cache::redis(redis)
                .await
                .context("setting up Redis (is REDIS_URL a redis:// URL?)")?,
            None => Cache::memory(),
        };
        let tokens = Tokens::new(&config.jwt);
        let metrics = Metrics::new().context("registering metrics")?;
        let host = LocalHost::new(&config.host, &config.turn, clock.now());
        let rng = match config.routing_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let grants = GrantTable::new(config.nodes.timeout / 2);
        // The index starts with every live node the store holds.
        let started = clock.now();
        let mut route_index = RouteIndex::new(config.nodes.timeout);
        let live = store
            .list(&io::store::NodeFilter {
                status: Some(NodeStatus::Active),
                limit: i64::MAX,
                ..io::store::NodeFilter::default()
            })
            .await
            .context("loading the live nodes for routing")?;
        for node in live {
            route_index.upsert(node, started);
        }
        tracing::debug!(nodes = route_index.len(), "routing index built");
        let turn_secrets = Mutex::new(config.turn.secrets.clone());
        Ok(Self(Arc::new(App {
            config,
            store,
            cache,
            tokens,
            metrics,
            clock,
            extra_metrics: OnceLock::new(),
            host,
            grants: Mutex::new(grants),
            grants_synced: Mutex::new(None),
            sessions: Mutex::new(LocalSessions::default()),
            remote: Mutex::new(RemotePresence::default()),
            turn_secrets,
            allocations: Mutex::new(AllocationView::default()),
            sink: OnceLock::new(),
            rng: Mutex::new(rng),
            draining: AtomicBool::new(false),
            route_index: Mutex::new(route_index),
            index_synced: Mutex::new(started),
            heartbeats: Mutex::new(HeartbeatBuffer::default()),
            store_reachable: AtomicBool::new(true),
        })))
    }

    /// A graceful shutdown began: `/health/ready` answers 503 from now on, so load balancers
    /// move new clients elsewhere while the API keeps serving the ones it has, and this host's
    /// record in the relay host registry says it is draining, so routing and ICE (here and on
    /// every other host) leave it out. The other hosts learn it at the next host heartbeat;
    /// call [`heartbeat_host`](Self::heartbeat_host) to tell them at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.host.start_draining();
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs `f` with the routing's random number generator.
    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut rng)
    }

    /// Runs `f` with the routing index, after dropping the nodes that timed out by now.
    pub(crate) fn with_route_index<T>(&self, f: impl FnOnce(&mut RouteIndex) -> T) -> T {
        let now = self.clock.now();
        let mut index = self
            .route_index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index.expire(now);
        f(&mut index)
    }

    /// Takes a node's newest stored state into the routing index.
    pub(crate) fn index_node(&self, node: &NodeRecord) {
        let now = self.clock.now();
        self.with_route_index(|index| index.upsert(node.clone(), now));
    }

    /// Drops a node from the routing index.
    pub(crate) fn unindex_node(&self, node: NodeId) {
        self.with_route_index(|index| index.remove(node));
    }

    fn lock_heartbeats(&self) -> std::sync::MutexGuard<'_, HeartbeatBuffer> {
        self.heartbeats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether heartbeats are written behind, in batches, rather than one by one: when
    /// configured, and while the database answers.
    pub(crate) fn writes_behind(&self) -> bool {
        !self.config.nodes.heartbeat_flush_interval.is_zero()
            && self.store_reachable.load(Ordering::Relaxed)
    }

    /// Records whether the database answered the last batch write or readiness ping.
    pub(crate) fn set_store_reachable(&self, reachable: bool) {
        self.store_reachable.store(reachable, Ordering::Relaxed);
    }

    /// Holds a heartbeat for the next batch write.
    pub(crate) fn buffer_heartbeat(&self, node: NodeId, generation: i64, beat: Heartbeat) {
        self.lock_heartbeats().record(node, generation, beat);
    }

    /// Drops the heartbeat waiting for `node`: a write that must win goes to the store now.
    pub(crate) fn forget_heartbeat(&self, node: NodeId) {
        self.lock_heartbeats().forget(node);
    }

    /// Shows a record read from the store with the heartbeat still waiting for it.
    pub(crate) fn with_pending_heartbeat(&self, mut record: NodeRecord) -> NodeRecord {
        self.lock_heartbeats().apply(&mut record);
        record
    }

    /// Writes every waiting heartbeat to the store in one batch and wakes the other hosts;
    /// returns how many rows it wrote. On failure the batch goes back, under anything newer.
    pub async fn flush_heartbeats(&self) -> Result<u64, io::store::StoreError> {
        let batch = self.lock_heartbeats().take();
        if batch.is_empty() {
            return Ok(0);
        }
        match self.store.flush_heartbeats(&batch).await {
            Ok(written) => {
                self.set_store_reachable(true);
                self.metrics.observe_heartbeat_flush(batch.len());
                if let Err(error) = self.notify_changed().await {
                    tracing::debug!("change notification not sent: {error}");
                }
                Ok(written)
            }
            Err(error) => {
                if matches!(error, io::store::StoreError::Unavailable(_)) {
                    self.set_store_reachable(false);
                }
                self.lock_heartbeats().restore(batch);
                Err(error)
            }
        }
    }

    /// Tells the hosts sharing the store that this one changed nodes (see
    /// [`index_sync_forever`]).
    pub(crate) async fn notify_changed(&self) -> Result<(), io::store::StoreError> {
        self.store
            .notify_changed(&domain::hosts::host_id_string(self.host_id()))
            .await
    }

    /// Heartbeats waiting to be written.
    pub fn pending_heartbeats(&self) -> usize {
        self.lock_heartbeats().len()
    }

    /// Reads the nodes the store saw since the last sync (registrations and heartbeats
    /// through other hosts sharing it) into the routing index, and drops the nodes deleted
    /// since; returns how many rows it read.
    pub async fn sync_route_index(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let since = *self
            .index_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another host's clock may run behind ours, and its heartbeats reach the store up to
        // one flush interval after they arrived: read back a margin before the last sync.
        let from = since
            .saturating_sub(INDEX_SYNC_MARGIN)
            .saturating_sub(self.config.nodes.heartbeat_flush_interval);
        let nodes = self.store.seen_since(from).await?;
        let deleted = self.store.deletions_since(from).await?;
        let count = nodes.len() + deleted.len();
        self.with_route_index(|index| {
            for node in nodes {
                index.upsert(node, now);
            }
            for (node, generation) in deleted {
                if index.get(node).is_some_and(|r| r.generation <= generation) {
                    index.remove(node);
                }
            }
        });
        // Never back: a slow sync that began before the last one read less than it.
        let mut synced = self
            .index_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *synced = (*synced).max(now);
        Ok(count)
    }

    /// Appends `source`'s text to every `/metrics` answer. Only one source may be set; a
    /// second call is an error.
    pub fn set_metrics_source(&self, source: MetricsSource) -> anyhow::Result<()> {
        self.extra_metrics
            .set(source)
            .map_err(|_| anyhow::anyhow!("a metrics source is already set"))
    }

    /// The extra text for `/metrics`, if a source is set.
    pub(crate) fn extra_metrics(&self) -> Option<String> {
        self.extra_metrics.get().map(|source| source())
    }

    /// The API's router.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }
}

/// Serves the API on `listener` until `shutdown` completes. Meanwhile, in the background, it
/// marks silent nodes inactive and, every host heartbeat interval, publishes this host in the
/// relay host registry, polls relay presence and syncs grants (see [`io::mesh`]). On shutdown it
/// leaves the registry. Dropping the future stops everything it started, as a crash would
/// (without leaving the registry).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut background = JoinSet::new();
    background.spawn(sweep_forever(state.clone()));
    background.spawn(mesh_forever(state.clone()));
    if !state.config.nodes.heartbeat_flush_interval.is_zero() {
        background.spawn(flush_forever(state.clone()));
    }
    if state.store.backend() == io::store::Backend::Postgres {
        background.spawn(index_sync_forever(state.clone()));
    }
    let served = http::server::run(listener, state.clone(), shutdown)
        .await
        .context("serving the REST API");
    background.abort_all();
    // Wait until they are gone, so that no heartbeat publishes this host after it left.
    while background.join_next().await.is_some() {}
    // A clean shutdown loses no heartbeat.
    if let Err(error) = state.flush_heartbeats().await {
        tracing::warn!(
            pending = state.pending_heartbeats(),
            "heartbeats not written at shutdown: {error}"
        );
    }
    state.leave().await;
    state.store.close().await;
    served
}

/// Every `sweep_interval`, marks nodes silent for longer than the timeout inactive and
/// revokes their grants.
async fn sweep_forever(state: AppState) {
    let policy = state.config.nodes;
    let mut ticks = tokio::time::interval(policy.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // The store must see this host's waiting heartbeats before it judges who is silent.
        if let Err(error) = state.flush_heartbeats().await {
            tracing::warn!("writing heartbeats before the sweep failed: {error}");
            continue;
        }
        let since = state.grant_epoch();
        let cutoff = state.clock.now().saturating_sub(policy.timeout);
        match state.store.sweep(cutoff).await {
            Ok(nodes) if nodes.is_empty() => {}
            Ok(nodes) => {
                tracing::info!(
                    "{} node(s) missed their heartbeats and are now inactive",
                    nodes.len()
                );
                state.revoke_stale(&nodes, since);
            }
            Err(error) => tracing::warn!("sweeping silent nodes failed: {error}"),
        }
        // Deletions are read back by the other hosts' syncs for a little while only.
        let forget_before = state.clock.now().saturating_sub(policy.timeout * 2);
        if let Err(error) = state.store.prune_deletions(forget_before).await {
            tracing::warn!("pruning old deletions failed: {error}");
        }
    }
}

/// Every `heartbeat_flush_interval`, [`AppState::flush_heartbeats`].
async fn flush_forever(state: AppState) {
    let mut ticks = tokio::time::interval(state.config.nodes.heartbeat_flush_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = state.flush_heartbeats().await {
            tracing::warn!(
                pending = state.pending_heartbeats(),
                "writing heartbeats failed (kept for the next try): {error}"
            );
        }
    }
}

/// How far before the last sync each sync reads back, for clocks of hosts that disagree.
pub(crate) const INDEX_SYNC_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// [`AppState::sync_route_index`] whenever a host sharing the PostgreSQL store says it changed
/// nodes (`NOTIFY`, see [`io::store::ChangeListener`]: the staleness bound is then one
/// notification and one sync, milliseconds on a LAN), and every `index_sync_interval` in case
/// notifications were lost (PostgreSQL only: a SQLite store belongs to one process, whose own
/// writes update its index as they happen). A host ignores its own notifications, and answers
/// each burst of the others' with one sync after [`NOTIFY_COALESCE`].
async fn index_sync_forever(state: AppState) {
    let mut ticks = tokio::time::interval(state.config.nodes.index_sync_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener = None;
    let own = domain::hosts::host_id_string(state.host_id());
    loop {
        if listener.is_none() {
            match io::store::ChangeListener::connect(&state.config.database_url, &own).await {
                Ok(connected) => listener = Some(connected),
                Err(error) => tracing::warn!(
                    "listening for node changes failed ({error}); polling every {}",
                    humantime::format_duration(state.config.nodes.index_sync_interval)
                ),
            }
        }
        tokio::select! {
            _ = ticks.tick() => {}
            changed = async {
                match listener.as_mut() {
                    Some(listener) => listener.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    // Only this host's own changes: its index has them already.
                    Ok(0) => continue,
                    Ok(_) => {
                        // Let a burst (a registration storm, every host's flush) end, and
                        // answer it with one sync.
                        tokio::time::sleep(NOTIFY_COALESCE).await;
                        if let Some(listener) = listener.as_mut() {
                            listener.drain();
                        }
                    }
                    Err(error) => {
                        tracing::warn!("listening for node changes failed: {error}");
                        listener = None;
                    }
                }
            }
        }
        if let Err(error) = state.sync_route_index().await {
            tracing::warn!("syncing the routing index failed: {error:#}");
        }
    }
}

/// How long a notified host waits for more notifications before it syncs: the staleness
/// bound's own share, and the most syncs a second notifications cause (10).
const NOTIFY_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Every `host_heartbeat_interval` (the first at once): this host's heartbeat, then the
/// presence poll and the grant sync.
async fn mesh_forever(state: AppState) {
    let mut ticks = tokio::time::interval(state.config.host.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = state.heartbeat_host().await {
            tracing::warn!("relay host heartbeat failed: {error}");
        }
        if let Err(error) = state.poll_presence().await {
            tracing::warn!("polling relay presence failed: {error}");
        }
        if let Err(error) = state.sync_grants().await {
            tracing::warn!("syncing grants failed: {error}");
        }
    }
}
