//! Persistent node registry on SQLite (the embedded default) or PostgreSQL, through sqlx's
//! `Any` driver so that every query is written once.
//!
//! Portability rules for the SQL in this file: `$N` placeholders (both drivers accept them),
//! only `TEXT` and `BIGINT` columns, and aggregates cast back to `BIGINT` (PostgreSQL's `SUM`
//! of a `BIGINT` is `NUMERIC`, which the `Any` driver cannot decode).

use std::time::Duration;

use boson_shared::plane::HostId;
use boson_shared::{NodeId, WgPublicKey};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row as _};

use crate::clock::UnixMillis;
use crate::domain::hosts::{self, HostRecord};
use crate::domain::model::{NodeMetrics, NodeRecord, NodeStatus, ReportedStatus};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached (down, restarting, pool exhausted). Worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for another reason.
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// A row holds something this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let unavailable = matches!(
            &error,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
        ) || error
            .as_database_error()
            // SQLSTATE class 08 is "connection exception"; 57P0x are server shutdowns.
            .and_then(|db| db.code())
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P"));
        if unavailable {
            Self::Unavailable(error)
        } else {
            Self::Query(error)
        }
    }
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Result of [`Store::insert`] and [`Store::replace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written.
    Written,
    /// Another node already uses this public key.
    KeyInUse,
    /// The node was created or re-registered concurrently; nothing written.
    Raced,
}

/// Result of [`Store::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Recorded.
    Recorded,
    /// No such node.
    NotFound,
    /// The node re-registered since the token was issued.
    Revoked,
}

pub use crate::domain::heartbeats::Heartbeat;

/// Filters of [`Store::list`]. `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    /// Exact region.
    pub region: Option<String>,
    /// Exact country code.
    pub country: Option<String>,
    /// Status.
    pub status: Option<NodeStatus>,
    /// Page size.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

/// What a node's relay grant is computed from (see [`crate::domain::grants::grant_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantSource {
    /// The node.
    pub node_id: NodeId,
    /// Its current generation.
    pub generation: i64,
    /// Its last registration or heartbeat.
    pub last_seen: UnixMillis,
    /// Expiry of its current token.
    pub token_expires_at: UnixMillis,
}

/// Totals over active nodes, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Active nodes.
    pub nodes: i64,
    /// Sum of their reported active connections.
    pub connections: i64,
}

/// Heartbeats written by one statement of [`Store::flush_heartbeats`] (7 values each, within
/// SQLite's and PostgreSQL's limits on bound values).
pub const FLUSH_CHUNK: usize = 1000;

/// The PostgreSQL `LISTEN`/`NOTIFY` channel on which a host says it changed nodes.
pub const CHANGES_CHANNEL: &str = "boson_node_changes";

/// Wakes up when another host (or this one) says it changed nodes: PostgreSQL `LISTEN` on
/// [`CHANGES_CHANNEL`], on a connection of its own that sqlx re-establishes after a loss
/// (notifications sent meanwhile are lost: the poll behind it catches up).
pub struct ChangeListener {
    listener: sqlx::postgres::PgListener,
    /// The payload of this host's own notifications, which it ignores.
    own: String,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// Connects to the PostgreSQL at `url` and listens, ignoring the notifications whose
    /// payload is `own` (this host's id, see [`Store::notify_changed`]).
    pub async fn connect(url: &str, own: &str) -> Result<Self, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(Self {
            listener,
            own: own.to_owned(),
        })
    }

    /// Waits for the next notification, then takes every one already buffered with it (one
    /// sync answers them all); returns how many came from other hosts.
    pub async fn changed(&mut self) -> Result<usize, StoreError> {
        let first = self.listener.recv().await?;
        let mut count = usize::from(first.payload() != self.own);
        count += self.drain();
        Ok(count)
    }

    /// Takes every notification already buffered; returns how many came from other hosts.
    pub fn drain(&mut self) -> usize {
        let mut count = 0;
        while let Some(note) = self.listener.next_buffered() {
            count += usize::from(note.payload() != self.own);
        }
        count
    }
}

/// A node's row as the incremental grant sync reads it ([`Store::grant_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantChange {
    /// What its grant is made of.
    pub source: GrantSource,
    /// Its status: an inactive node loses its grant.
    pub status: NodeStatus,
}

/// The node registry.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The columns [`decode`] reads, as a literal so that queries stay `&'static str`.
macro_rules! node_columns {
    () => {
        "node_id, public_key, generation, registration, status, reported_status, metrics, \
         registered_at_ms, last_seen_ms, token_expires_ms"
    };
}

/// `relay_hosts.status` of a host that heartbeats.
const HOST_UP: &str = "up";
/// `relay_hosts.status` of a host that shut down cleanly.
const HOST_LEFT: &str = "left";

impl Store {
    /// Connects to `url` (`sqlite:` or `postgres:`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Corrupt(
                "DATABASE_URL must start with sqlite: or postgres:".to_owned(),
            ));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time anyway; a few readers share the WAL.
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            // Short, so that an outage answers 503 quickly instead of hanging requests.
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                             PRAGMA synchronous = NORMAL;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Query(e.into()))?;
        Ok(Self { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Round trip to the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The node with this id.
    pub async fn find(&self, node_id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE node_id = $1"
        ))
        .bind(node_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The node that uses this key, if any.
    pub async fn find_by_key(&self, key: &WgPublicKey) -> Result<Option<NodeId>, StoreError> {
        let row = sqlx::query("SELECT node_id FROM nodes WHERE public_key = $1")
            .bind(key.to_base64())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parse_id(&row.try_get::<String, _>("node_id")?))
            .transpose()
    }

    /// Creates a node. Its generation is the store's to choose, whatever `node.generation`
    /// holds: one after the highest the node id ever had (its tombstones in
    /// `node_deletions`), so that a token of a deleted registration never matches the id's
    /// next one. On [`WriteOutcome::Written`], `node.generation` is the one stored.
    ///
    /// The generation is computed in the transaction of the insert, after it: the insert
    /// waits for any transaction that deleted the id's previous row and has not committed yet
    /// (on PostgreSQL, its unique index waits; SQLite writes one transaction at a time), and
    /// the statement after it (a new snapshot under PostgreSQL's read committed) then sees
    /// that deletion's tombstone. Tombstones are kept at least as long as a token lives (see
    /// [`crate::domain::registry::tombstone_retention`]), so this holds for every token that
    /// can still be accepted.
    pub async fn insert(&self, node: &mut NodeRecord) -> Result<WriteOutcome, StoreError> {
        if self.key_taken(node).await? {
            return Ok(WriteOutcome::KeyInUse);
        }
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO nodes (node_id, public_key, generation, registration, country, region, \
             status, reported_status, metrics, active_connections, registered_at_ms, last_seen_ms, \
             token_expires_ms) \
             VALUES ($1, $2, (SELECT COALESCE(MAX(generation), 0) + 1 FROM node_deletions \
             WHERE node_id = $1), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(node.node_id.to_string())
        .bind(node.public_key.to_base64())
        .bind(to_json(&node.registration)?)
        .bind(node.registration.location.country.clone())
        .bind(node.registration.location.region.clone())
        .bind(node.status.as_str())
        .bind(node.reported_status.map(reported_str))
        .bind(node.metrics.as_ref().map(to_json).transpose()?)
        .bind(active_connections(node.metrics.as_ref()))
        .bind(node.registered_at.0)
        .bind(node.last_seen.0)
        .bind(node.token_expires_at.0)
        .execute(&mut *tx)
        .await;
        if let Err(error) = inserted {
            // Dropping the transaction rolls it back.
            drop(tx);
            return self.unique_outcome(node, Err(error)).await;
        }
        // Again, now that the insert has waited out any deletion of the id in flight.
        let row = sqlx::query(
            "UPDATE nodes SET generation = (SELECT COALESCE(MAX(generation), 0) + 1 \
             FROM node_deletions WHERE node_id = $1) WHERE node_id = $1 RETURNING generation",
        )
        .bind(node.node_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let generation: i64 = row.try_get("generation")?;
        tx.commit().await?;
        node.generation = generation;
        Ok(WriteOutcome::Written)
    }

    /// Re-registers a node whose stored generation is `node.generation - 1`.
    pub async fn replace(&self, node: &NodeRecord) -> Result<WriteOutcome, StoreError> {
        if self.key_taken(node).await? {
            return Ok(WriteOutcome::KeyInUse);
        }
        let result = sqlx::query(
            "UPDATE nodes SET public_key = $1, generation = $2, registration = $3, country = $4, \
             region = $5, status = $6, reported_status = $7, metrics = $8, \
             active_connections = $9, last_seen_ms = $10, token_expires_ms = $11 \
             WHERE node_id = $12 AND generation = $13",
        )
        .bind(node.public_key.to_base64())
        .bind(node.generation)
        .bind(to_json(&node.registration)?)
        .bind(node.registration.location.country.clone())
        .bind(node.registration.location.region.clone())
        .bind(node.status.as_str())
        .bind(node.reported_status.map(reported_str))
        .bind(node.metrics.as_ref().map(to_json).transpose()?)
        .bind(active_connections(node.metrics.as_ref()))
        .bind(node.last_seen.0)
        .bind(node.token_expires_at.0)
        .bind(node.node_id.to_string())
        .bind(node.generation - 1)
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() == 0 => Ok(WriteOutcome::Raced),
            other => self.unique_outcome(node, other.map(|_| ())).await,
        }
    }

    /// Records a heartbeat sent with a token of `generation`.
    pub async fn heartbeat(
        &self,
        node_id: NodeId,
        generation: i64,
        beat: &Heartbeat,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let done = sqlx::query(
            "UPDATE nodes SET metrics = $1, active_connections = $2, reported_status = $3, \
             status = $4, last_seen_ms = $5 WHERE node_id = $6 AND generation = $7",
        )
        .bind(to_json(&beat.metrics)?)
        .bind(active_connections(Some(&beat.metrics)))
        .bind(beat.reported_status.map(reported_str))
        .bind(beat.status.as_str())
        .bind(beat.at.0)
        .bind(node_id.to_string())
        .bind(generation)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(HeartbeatOutcome::Recorded);
        }
        Ok(match self.find(node_id).await? {
            None => HeartbeatOutcome::NotFound,
            Some(_) => HeartbeatOutcome::Revoked,
        })
    }

    /// Nodes matching `filter`, ordered by id.
    pub async fn list(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        for (column, value) in [
            ("region", filter.region.clone()),
            ("country", filter.country.clone()),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
        ] {
            if let Some(value) = value {
                values.push(value);
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM nodes {where_clause} ORDER BY node_id LIMIT ${} OFFSET ${}",
            node_columns!(),
            values.len() + 1,
            values.len() + 2
        );
        // Built from fixed column names and placeholder numbers only; values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in values {
            query = query.bind(value);
        }
        let rows = query
            .bind(filter.limit)
            .bind(filter.offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Nodes registered or heartbeating at or after `since`, active or not (for the routing
    /// index of hosts sharing the store). Uses the `(status, last_seen_ms)` index.
    pub async fn seen_since(&self, since: UnixMillis) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE status IN ($1, $2) AND last_seen_ms >= $3"
        ))
        .bind(NodeStatus::Active.as_str())
        .bind(NodeStatus::Inactive.as_str())
        .bind(since.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Marks active nodes last seen before `cutoff` inactive; returns which.
    pub async fn sweep(&self, cutoff: UnixMillis) -> Result<Vec<NodeId>, StoreError> {
        let rows = sqlx::query(
            "UPDATE nodes SET status = $1 WHERE status = $2 AND last_seen_ms < $3 \
             RETURNING node_id",
        )
        .bind(NodeStatus::Inactive.as_str())
        .bind(NodeStatus::Active.as_str())
        .bind(cutoff.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| parse_id(&row.try_get::<String, _>("node_id")?))
            .collect()
    }

    /// The current registration generation of `node_id`, if it exists.
    pub async fn generation(&self, node_id: NodeId) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT generation FROM nodes WHERE node_id = $1")
            .bind(node_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("generation")).transpose()?)
    }

    /// Deletes `node_id` if its generation is still `generation`, leaving a tombstone stamped
    /// `now` for the other hosts' incremental syncs ([`Self::deletions_since`]); returns
    /// whether it did.
    pub async fn delete(
        &self,
        node_id: NodeId,
        generation: i64,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM nodes WHERE node_id = $1 AND generation = $2")
            .bind(node_id.to_string())
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO node_deletions (node_id, generation, deleted_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(node_id.to_string())
        .bind(generation)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Nodes deleted at or after `since`, with the generation each had. A node registered
    /// again since has a row of a higher generation than any of its tombstones (see
    /// [`Self::insert`]), which the readers' "up to this generation" checks spare.
    pub async fn deletions_since(
        &self,
        since: UnixMillis,
    ) -> Result<Vec<(NodeId, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, generation FROM node_deletions WHERE deleted_at_ms >= $1 \
             ORDER BY deleted_at_ms",
        )
        .bind(since.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_id(&row.try_get::<String, _>("node_id")?)?,
                    row.try_get("generation")?,
                ))
            })
            .collect()
    }

    /// Forgets deletions older than `cutoff`; returns how many.
    pub async fn prune_deletions(&self, cutoff: UnixMillis) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM node_deletions WHERE deleted_at_ms < $1")
            .bind(cutoff.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Writes a batch of heartbeats taken in memory (see [`crate::domain::heartbeats`]) with
    /// one statement per [`FLUSH_CHUNK`] of them. A heartbeat is written only if the row still
    /// has its generation (not re-registered or deleted since) and was not seen later (an
    /// `offline` heartbeat written directly since wins); returns how many rows were written.
    pub async fn flush_heartbeats(
        &self,
        beats: &[(NodeId, i64, Heartbeat)],
    ) -> Result<u64, StoreError> {
        let mut written = 0;
        for chunk in beats.chunks(FLUSH_CHUNK) {
            let mut sql = String::from(
                "UPDATE nodes SET metrics = v.column2, active_connections = v.column3, \
                 reported_status = v.column4, status = v.column5, last_seen_ms = v.column6 \
                 FROM (VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 7;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT), \
                     CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT), \
                     CAST(${} AS BIGINT))",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7
                ));
            }
            sql.push_str(
                ") AS v WHERE nodes.node_id = v.column1 AND nodes.generation = v.column7 \
                 AND nodes.last_seen_ms <= v.column6",
            );
            // Built from placeholder numbers only; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (node, generation, beat) in chunk {
                query = query
                    .bind(node.to_string())
                    .bind(to_json(&beat.metrics)?)
                    .bind(active_connections(Some(&beat.metrics)))
                    .bind(beat.reported_status.map(reported_str))
                    .bind(beat.status.as_str())
                    .bind(beat.at.0)
                    .bind(*generation);
            }
            written += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(written)
    }

    /// Wakes the hosts that listen for node changes (PostgreSQL `NOTIFY` on
    /// [`CHANGES_CHANNEL`], with the sender's host id as payload so it can ignore its own);
    /// nothing on SQLite, whose one process sees its own writes.
    pub async fn notify_changed(&self, sender: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(sender)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// What the grants of active nodes seen since `cutoff` are made of, by node id.
    pub async fn grant_sources(&self, cutoff: UnixMillis) -> Result<Vec<GrantSource>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, generation, last_seen_ms, token_expires_ms FROM nodes \
             WHERE status = $1 AND last_seen_ms >= $2 ORDER BY node_id",
        )
        .bind(NodeStatus::Active.as_str())
        .bind(cutoff.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(GrantSource {
                    node_id: parse_id(&row.try_get::<String, _>("node_id")?)?,
                    generation: row.try_get("generation")?,
                    last_seen: UnixMillis(row.try_get("last_seen_ms")?),
                    token_expires_at: UnixMillis(row.try_get("token_expires_ms")?),
                })
            })
            .collect()
    }

    /// Rows seen at or after `since`, active or not: what the incremental grant sync reads.
    pub async fn grant_changes(&self, since: UnixMillis) -> Result<Vec<GrantChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, generation, status, last_seen_ms, token_expires_ms FROM nodes \
             WHERE status IN ($1, $2) AND last_seen_ms >= $3",
        )
        .bind(NodeStatus::Active.as_str())
        .bind(NodeStatus::Inactive.as_str())
        .bind(since.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(GrantChange {
                    source: GrantSource {
                        node_id: parse_id(&row.try_get::<String, _>("node_id")?)?,
                        generation: row.try_get("generation")?,
                        last_seen: UnixMillis(row.try_get("last_seen_ms")?),
                        token_expires_at: UnixMillis(row.try_get("token_expires_ms")?),
                    },
                    status: NodeStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
                })
            })
            .collect()
    }

    /// Publishes a relay host's record (creating or replacing it).
    pub async fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_hosts (host_id, region, record, status, started_at_ms, \
             last_heartbeat_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (host_id) DO UPDATE SET region = excluded.region, \
             record = excluded.record, status = excluded.status, \
             started_at_ms = excluded.started_at_ms, last_heartbeat_ms = excluded.last_heartbeat_ms",
        )
        .bind(hosts::host_id_string(host.host_id))
        .bind(host.region.clone())
        .bind(to_json(host)?)
        .bind(HOST_UP)
        .bind(host.started_at)
        .bind(host.last_heartbeat)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hosts that heartbeat at or after `cutoff` and did not leave, by id.
    pub async fn hosts(&self, cutoff: UnixMillis) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT record FROM relay_hosts WHERE status = $1 AND last_heartbeat_ms >= $2 \
             ORDER BY host_id",
        )
        .bind(HOST_UP)
        .bind(cutoff.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| from_json(&row.try_get::<String, _>("record")?))
            .collect()
    }

    /// Marks `host` as gone (a clean shutdown), so routing stops using it at once.
    pub async fn host_left(&self, host: HostId) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_hosts SET status = $1 WHERE host_id = $2")
            .bind(HOST_LEFT)
            .bind(hosts::host_id_string(host))
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM relay_presence WHERE host_id = $1")
            .bind(hosts::host_id_string(host))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that `node` holds its relay session on `host` until `expires_at`.
    pub async fn set_presence(
        &self,
        node: NodeId,
        host: HostId,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_presence (node_id, host_id, connected_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (node_id) DO UPDATE SET \
             host_id = excluded.host_id, connected_at_ms = excluded.connected_at_ms, \
             expires_at_ms = excluded.expires_at_ms",
        )
        .bind(node.to_string())
        .bind(hosts::host_id_string(host))
        .bind(now.0)
        .bind(expires_at.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Withdraws `node`'s presence if it is still on `host` (it may have moved on).
    pub async fn clear_presence(&self, node: NodeId, host: HostId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM relay_presence WHERE node_id = $1 AND host_id = $2")
            .bind(node.to_string())
            .bind(hosts::host_id_string(host))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Extends the presence of every node on `host` to `expires_at`.
    pub async fn refresh_presence(
        &self,
        host: HostId,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_presence SET expires_at_ms = $1 WHERE host_id = $2")
            .bind(expires_at.0)
            .bind(hosts::host_id_string(host))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The host `node` holds its relay session on, if that has not expired at `now`.
    pub async fn presence(
        &self,
        node: NodeId,
        now: UnixMillis,
    ) -> Result<Option<HostId>, StoreError> {
        let row = sqlx::query(
            "SELECT host_id FROM relay_presence WHERE node_id = $1 AND expires_at_ms > $2",
        )
        .bind(node.to_string())
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| parse_host(&row.try_get::<String, _>("host_id")?))
            .transpose()
    }

    /// Every unexpired presence on a host other than `except`, by node id.
    pub async fn remote_presence(
        &self,
        except: HostId,
        now: UnixMillis,
    ) -> Result<Vec<(NodeId, HostId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, host_id FROM relay_presence WHERE host_id <> $1 \
             AND expires_at_ms > $2 ORDER BY node_id",
        )
        .bind(hosts::host_id_string(except))
        .bind(now.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_id(&row.try_get::<String, _>("node_id")?)?,
                    parse_host(&row.try_get::<String, _>("host_id")?)?,
                ))
            })
            .collect()
    }

    /// Counts over active nodes.
    pub async fn activity(&self) -> Result<Activity, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS nodes, \
             CAST(COALESCE(SUM(active_connections), 0) AS BIGINT) AS connections \
             FROM nodes WHERE status = $1",
        )
        .bind(NodeStatus::Active.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(Activity {
            nodes: row.try_get("nodes")?,
            connections: row.try_get("connections")?,
        })
    }

    /// Remembers a key-proof challenge `nonce` until `expires_at`, unless `max` are
    /// outstanding already (then `false`). Challenges that expired before `forget_before` are
    /// dropped first.
    pub async fn issue_nonce(
        &self,
        nonce: &str,
        expires_at: UnixMillis,
        forget_before: UnixMillis,
        max: u64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM key_proof_nonces WHERE expires_at_ms < $1")
            .bind(forget_before.0)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM key_proof_nonces")
            .fetch_one(&self.pool)
            .await?;
        let outstanding: i64 = row.try_get("n")?;
        if u64::try_from(outstanding).unwrap_or(0) >= max {
            return Ok(false);
        }
        sqlx::query("INSERT INTO key_proof_nonces (nonce, expires_at_ms) VALUES ($1, $2)")
            .bind(nonce)
            .bind(expires_at.0)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// Takes `nonce` out (it answers once): its expiry, or `None` if it is not there (never
    /// handed out, answered already, or forgotten).
    pub async fn take_nonce(&self, nonce: &str) -> Result<Option<UnixMillis>, StoreError> {
        let row =
            sqlx::query("DELETE FROM key_proof_nonces WHERE nonce = $1 RETURNING expires_at_ms")
                .bind(nonce)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|row| row.try_get("expires_at_ms"))
            .transpose()?
            .map(UnixMillis))
    }

    /// The deployment secret `name`, set to `generated` if it has none yet. Every host of the
    /// database gets the same value, whichever wrote it first.
    pub async fn deployment_secret(
        &self,
        name: &str,
        generated: &str,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO deployment_secrets (name, value) VALUES ($1, $2)              ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(generated)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM deployment_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    async fn key_taken(&self, node: &NodeRecord) -> Result<bool, StoreError> {
        Ok(self
            .find_by_key(&node.public_key)
            .await?
            .is_some_and(|owner| owner != node.node_id))
    }

    /// Turns a unique violation into the outcome it means.
    async fn unique_outcome(
        &self,
        node: &NodeRecord,
        result: Result<(), sqlx::Error>,
    ) -> Result<WriteOutcome, StoreError> {
        match result {
            Ok(()) => Ok(WriteOutcome::Written),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                if self.key_taken(node).await? {
                    Ok(WriteOutcome::KeyInUse)
                } else {
                    Ok(WriteOutcome::Raced)
                }
            }
            Err(other) => Err(other.into()),
        }
    }
}

fn active_connections(metrics: Option<&NodeMetrics>) -> i64 {
    metrics.map_or(0, |m| i64::from(m.active_connections))
}

fn reported_str(status: ReportedStatus) -> &'static str {
    match status {
        ReportedStatus::Online => "online",
        ReportedStatus::Degraded => "degraded",
        ReportedStatus::Offline => "offline",
    }
}

fn parse_reported(text: &str) -> Result<ReportedStatus, StoreError> {
    match text {
        "online" => Ok(ReportedStatus::Online),
        "degraded" => Ok(ReportedStatus::Degraded),
        "offline" => Ok(ReportedStatus::Offline),
        other => Err(StoreError::Corrupt(format!("reported status {other:?}"))),
    }
}

fn parse_id(text: &str) -> Result<NodeId, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("node id {text:?}")))
}

fn parse_host(text: &str) -> Result<HostId, StoreError> {
    hosts::parse_host_id(text).ok_or_else(|| StoreError::Corrupt(format!("host id {text:?}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(row: &AnyRow) -> Result<NodeRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let key: String = row.try_get("public_key")?;
    Ok(NodeRecord {
        node_id: parse_id(&row.try_get::<String, _>("node_id")?)?,
        public_key: key
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("public key {key:?}")))?,
        generation: row.try_get("generation")?,
        registration: from_json(&row.try_get::<String, _>("registration")?)?,
        status: NodeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        reported_status: row
            .try_get::<Option<String>, _>("reported_status")?
            .as_deref()
            .map(parse_reported)
            .transpose()?,
        metrics: row
            .try_get::<Option<String>, _>("metrics")?
            .as_deref()
            .map(from_json)
            .transpose()?,
        registered_at: UnixMillis(row.try_get("registered_at_ms")?),
        last_seen: UnixMillis(row.try_get("last_seen_ms")?),
        token_expires_at: UnixMillis(row.try_get("token_expires_ms")?),
    })
}
