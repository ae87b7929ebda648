//! BosonServer's control plane: the node registry and its REST API.
//!
//! Nodes register, prove who they are with the token they get back, send heartbeats, ask for
//! routes and for TURN credentials. State lives in SQLite (embedded default) or PostgreSQL,
//! and, when configured, in Redis for limits and presence shared between hosts.
//!
//! The handlers (module `http`) are plain async functions; the decisions they make are pure
//! functions of `now` and data ([`registry::decide`], [`routing::rank`],
//! [`cache::rate_decision`], [`auth::Tokens::verify`]), tested without a database.

pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
mod http;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod routing;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::Tokens;
use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

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
                .with_context(|| format!("connecting to Redis at {}", redis.url))?,
            None => Cache::memory(),
        };
        let tokens = Tokens::new(&config.jwt);
        let metrics = Metrics::new().context("registering metrics")?;
        Ok(Self(Arc::new(App {
            config,
            store,
            cache,
            tokens,
            metrics,
            clock,
            extra_metrics: OnceLock::new(),
        })))
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

/// Serves the API on `listener` until `shutdown` completes, and marks silent nodes inactive
/// in the background meanwhile.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_forever(state.clone()));
    let app = state
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the REST API");
    sweeper.abort();
    state.store.close().await;
    served
}

/// Every `sweep_interval`, marks nodes silent for longer than the timeout inactive.
async fn sweep_forever(state: AppState) {
    let policy = state.config.nodes;
    let mut ticks = tokio::time::interval(policy.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let cutoff = state.clock.now().saturating_sub(policy.timeout);
        match state.store.sweep(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} node(s) missed their heartbeats and are now inactive"),
            Err(error) => tracing::warn!("sweeping silent nodes failed: {error}"),
        }
    }
}
