//! Every metric the control plane exports, defined in this one file.
//!
//! Registered in a registry owned by the app (no global registry), rendered in Prometheus'
//! text format by `GET /metrics`.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::allocations::AllocationView;
use crate::io::store::Activity;

/// Buckets of `bosonserver_node_latency_ms`: from LAN (1 ms) to a bad satellite link (5 s).
const LATENCY_BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// The control plane's metrics.
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    node_latency: Histogram,
    active_nodes: IntGauge,
    active_connections: IntGauge,
    database_up: IntGauge,
    plane_commands: IntCounterVec,
    relay_hosts: IntGauge,
    connections_refused: IntCounter,
    heartbeats_flushed: IntCounter,
    heartbeat_flushes: IntCounter,
    turn_allocations: IntGaugeVec,
    turn_allocation_users: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let api_requests = IntCounterVec::new(
            Opts::new(
                "bosonserver_api_requests_total",
                "REST API requests by route template, method and status code.",
            ),
            &["route", "method", "status"],
        )?;
        let node_latency = Histogram::with_opts(
            HistogramOpts::new(
                "bosonserver_node_latency_ms",
                "Latency reported by nodes in their heartbeats, in milliseconds.",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
        )?;
        let active_nodes = IntGauge::new(
            "bosonserver_active_nodes",
            "Nodes whose heartbeats arrive within the node timeout.",
        )?;
        let active_connections = IntGauge::new(
            "bosonserver_active_connections",
            "Sum of the active connections that active nodes report.",
        )?;
        let database_up = IntGauge::new(
            "bosonserver_database_up",
            "1 if the last scrape could read the database, else 0 (node gauges are then stale).",
        )?;
        let plane_commands = IntCounterVec::new(
            Opts::new(
                "bosonserver_plane_commands_total",
                "Commands the control plane sent the dataplane, by kind (grant, revoke, \
                 clear_grants, presence, ...).",
            ),
            &["command"],
        )?;
        let relay_hosts = IntGauge::new(
            "bosonserver_relay_hosts",
            "Live relay hosts this host sees, itself included, at its last presence poll.",
        )?;
        let turn_allocations = IntGaugeVec::new(
            Opts::new(
                "bosonserver_turn_allocations",
                "TURN allocations live on this host's dataplane, by worker core, as the control \
                 plane knows them from the dataplane's events (rebuilt after a restart of either).",
            ),
            &["core"],
        )?;
        let turn_allocation_users = IntGauge::new(
            "bosonserver_turn_allocation_users",
            "Users holding at least one TURN allocation on this host, as the control plane knows \
             them.",
        )?;
        let connections_refused = IntCounter::new(
            "bosonserver_http_connections_refused_total",
            "HTTP connections closed on accept because their IP address had too many open.",
        )?;
        let heartbeats_flushed = IntCounter::new(
            "bosonserver_heartbeats_flushed_total",
            "Node heartbeats written to the database in batches (write-behind).",
        )?;
        let heartbeat_flushes = IntCounter::new(
            "bosonserver_heartbeat_flushes_total",
            "Batch writes of node heartbeats to the database.",
        )?;
        registry.register(Box::new(heartbeats_flushed.clone()))?;
        registry.register(Box::new(heartbeat_flushes.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(plane_commands.clone()))?;
        registry.register(Box::new(relay_hosts.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(turn_allocations.clone()))?;
        registry.register(Box::new(turn_allocation_users.clone()))?;
        registry.register(Box::new(node_latency.clone()))?;
        registry.register(Box::new(active_nodes.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(database_up.clone()))?;
        Ok(Self {
            registry,
            api_requests,
            node_latency,
            active_nodes,
            active_connections,
            database_up,
            plane_commands,
            relay_hosts,
            connections_refused,
            heartbeats_flushed,
            heartbeat_flushes,
            turn_allocations,
            turn_allocation_users,
        })
    }

    /// Records the control plane's view of the TURN allocations.
    pub fn set_turn_allocations(&self, view: &AllocationView) {
        for (core, count) in view.per_core() {
            self.turn_allocations
                .with_label_values(&[&core.to_string()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.turn_allocation_users
            .set(i64::try_from(view.users()).unwrap_or(i64::MAX));
    }

    /// Counts one command sent to the dataplane.
    pub fn count_command(&self, kind: &str) {
        self.plane_commands.with_label_values(&[kind]).inc();
    }

    /// Records how many relay hosts are live.
    pub fn set_relay_hosts(&self, count: usize) {
        self.relay_hosts
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one batch write of `count` heartbeats.
    pub fn observe_heartbeat_flush(&self, count: usize) {
        self.heartbeat_flushes.inc();
        self.heartbeats_flushed
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Counts one connection refused by the per-IP limit.
    pub fn count_refused_connection(&self) {
        self.connections_refused.inc();
    }

    /// Counts one API request. `route` must be a template such as `/api/v1/nodes/{node_id}`,
    /// never a raw path, so that the label set stays bounded.
    pub fn record_request(&self, route: &str, method: &str, status: u16) {
        self.api_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
    }

    /// Records a latency a node reported.
    pub fn observe_node_latency(&self, ms: f64) {
        self.node_latency.observe(ms);
    }

    /// Updates the node gauges from the store, or marks them stale.
    pub fn set_activity(&self, activity: Option<Activity>) {
        match activity {
            Some(activity) => {
                self.active_nodes.set(activity.nodes);
                self.active_connections.set(activity.connections);
                self.database_up.set(1);
            }
            None => self.database_up.set(0),
        }
    }

    /// Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
