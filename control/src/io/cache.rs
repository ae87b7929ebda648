//! Short-lived shared state: per-IP rate limits, node presence, relay hosts and relay
//! presence.
//!
//! With `REDIS_URL` set it lives in Redis, so that every host behind one address shares the
//! limits and the relay mesh can see which host a node talks to. Without it, rate limits are
//! kept in this process, node presence is not published (one host has no one to tell), and
//! relay hosts and relay presence live in the store alone (see [`crate::io::mesh`]).
//!
//! Redis keys, each under the configured prefix:
//!
//! | Key | Type | Expiry | Holds |
//! |---|---|---|---|
//! | `rl:{bucket}:{key}:{window}` | counter | two windows | a rate-limit window |
//! | `presence:{node}` | string | node timeout | `{lastSeen, generation}` of a live node |
//! | `hosts` | set | none | ids of hosts that may be alive (pruned by readers) |
//! | `host:{host}` | string | host timeout | the host's [`HostRecord`] as JSON |
//! | `relay:{node}` | string | host timeout | the host the node holds its relay session on |
//! | `relay-nodes:{host}` | set | host timeout | the nodes holding relay sessions on the host |
//! | `keyproof-nonces` | sorted set | two nonce lifetimes | outstanding key-proof challenges, scored by expiry (unix ms) |
//!
//! Without Redis, key-proof challenges live in the SQL store instead ([`crate::io::store`]),
//! so hosts sharing a database share them either way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use boson_shared::NodeId;
use boson_shared::plane::HostId;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::clock::UnixMillis;
use crate::config::RedisConfig;
use crate::domain::hosts::{self, HostRecord};

/// Why the cache could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Redis failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A value in Redis is not what this version writes.
    #[error("corrupt value under {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`: a host withdraws a node's relay
/// presence only if no other host has taken it over since.
const DELETE_IF_EQUAL: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Remembers a key-proof challenge: drops those that expired before `ARGV[1]`, refuses (0)
/// when `ARGV[2]` are outstanding, else adds `ARGV[4]` scored `ARGV[3]` (its expiry) and
/// keeps the set for `ARGV[5]` ms after this last addition.
const ISSUE_NONCE: &str = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1]) \
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4]) \
redis.call('PEXPIRE', KEYS[1], ARGV[5]) \
return 1";

/// Takes a key-proof challenge out: its score (expiry), or nil.
const TAKE_NONCE: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
if s then redis.call('ZREM', KEYS[1], ARGV[1]) end \
return s";

/// The outcome of counting one request against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the limit.
    Allow,
    /// Over the limit until the window ends.
    Deny {
        /// Seconds until the window ends, rounded up.
        retry_after_secs: u64,
    },
}

/// Fixed-window decision: the `count`th request in the window that started at `window_start`.
pub fn rate_decision(
    count: u64,
    limit: u32,
    window_start: UnixMillis,
    window: Duration,
    now: UnixMillis,
) -> RateDecision {
    if count <= u64::from(limit) {
        return RateDecision::Allow;
    }
    let remaining_ms = window_start
        .saturating_add(window)
        .0
        .saturating_sub(now.0)
        .max(0);
    RateDecision::Deny {
        retry_after_secs: u64::try_from(remaining_ms)
            .unwrap_or(0)
            .div_ceil(1000)
            .max(1),
    }
}

/// Start of the fixed window of length `window` that holds `now`.
pub fn window_start(now: UnixMillis, window: Duration) -> UnixMillis {
    let len = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
    UnixMillis(now.0 - now.0.rem_euclid(len))
}

/// Entries the in-process limiter keeps before it drops finished windows.
const MEMORY_PRUNE_AT: usize = 10_000;

/// Rate limits and presence, in Redis or in this process.
pub enum Cache {
    /// In this process.
    Memory(Mutex<HashMap<String, (UnixMillis, u64)>>),
    /// In Redis, every key under `prefix`.
    Redis {
        /// Reconnects by itself after an outage.
        conn: ConnectionManager,
        /// Key prefix.
        prefix: String,
    },
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("Cache::Memory"),
            Self::Redis { prefix, .. } => write!(f, "Cache::Redis({prefix:?})"),
        }
    }
}

impl Cache {
    /// The in-process cache.
    pub fn memory() -> Self {
        Self::Memory(Mutex::new(HashMap::new()))
    }

    /// Connects to Redis. Only a malformed URL is an error: a Redis that does not answer yet
    /// is logged, and the server starts without it, not ready (and answering 503 where it
    /// needs Redis) until the connection, retried on each use, succeeds.
    pub async fn redis(config: &RedisConfig) -> Result<Self, CacheError> {
        let client = redis::Client::open(config.url.as_str())?;
        // Short timeouts so that a Redis outage turns into a quick 503, not a hung request.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        let cache = Self::Redis {
            conn,
            prefix: config.prefix.clone(),
        };
        if let Err(error) = cache.ping().await {
            tracing::warn!(
                "Redis does not answer ({error}); starting without it: not ready until it does"
            );
        }
        Ok(cache)
    }

    /// Whether this is Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis { .. })
    }

    /// Round trip to Redis; always fine in process.
    pub async fn ping(&self) -> Result<(), CacheError> {
        if let Self::Redis { conn, .. } = self {
            let _: String = redis::cmd("PING").query_async(&mut conn.clone()).await?;
        }
        Ok(())
    }

    /// Counts one request by `key` against `limit` per `window`.
    pub async fn hit(
        &self,
        bucket: &str,
        key: &str,
        limit: u32,
        window: Duration,
        now: UnixMillis,
    ) -> Result<RateDecision, CacheError> {
        let start = window_start(now, window);
        let count = match self {
            Self::Memory(map) => {
                let mut map = map
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if map.len() >= MEMORY_PRUNE_AT {
                    map.retain(|_, (entry_start, _)| *entry_start == start);
                }
                let entry = map.entry(format!("{bucket}:{key}")).or_insert((start, 0));
                if entry.0 != start {
                    *entry = (start, 0);
                }
                entry.1 += 1;
                entry.1
            }
            Self::Redis { conn, prefix } => {
                let redis_key = format!("{prefix}rl:{bucket}:{key}:{}", start.0);
                // Kept for two windows so a slow clock on another host still finds it.
                let ttl_ms =
                    i64::try_from(window.as_millis().saturating_mul(2)).unwrap_or(i64::MAX);
                let (count,): (u64,) = redis::pipe()
                    .atomic()
                    .incr(&redis_key, 1)
                    .pexpire(&redis_key, ttl_ms)
                    .ignore()
                    .query_async(&mut conn.clone())
                    .await?;
                count
            }
        };
        Ok(rate_decision(count, limit, start, window, now))
    }

    /// Remembers a key-proof challenge `nonce` until `expires_at` in Redis (unless `max` are
    /// outstanding: `Some(false)`), forgetting those that expired before `forget_before`.
    /// `None` in process: the caller keeps it in the store.
    pub async fn issue_nonce(
        &self,
        nonce: &str,
        expires_at: UnixMillis,
        forget_before: UnixMillis,
        max: u64,
    ) -> Result<Option<bool>, CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(None);
        };
        let keep_ms = expires_at.0.saturating_sub(forget_before.0).max(1);
        let added: i64 = redis::cmd("EVAL")
            .arg(ISSUE_NONCE)
            .arg(1)
            .arg(format!("{prefix}keyproof-nonces"))
            .arg(forget_before.0)
            .arg(max)
            .arg(expires_at.0)
            .arg(nonce)
            .arg(keep_ms)
            .query_async(&mut conn.clone())
            .await?;
        Ok(Some(added == 1))
    }

    /// Takes `nonce` out of Redis (it answers once): `Some(expiry)` if it was there,
    /// `Some(None)` if not. `None` in process: the caller asks the store.
    pub async fn take_nonce(&self, nonce: &str) -> Result<Option<Option<UnixMillis>>, CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(None);
        };
        let key = format!("{prefix}keyproof-nonces");
        let score: Option<String> = redis::cmd("EVAL")
            .arg(TAKE_NONCE)
            .arg(1)
            .arg(&key)
            .arg(nonce)
            .query_async(&mut conn.clone())
            .await?;
        score
            .map(|text| {
                text.parse::<i64>()
                    .map(UnixMillis)
                    .map_err(|_| CacheError::Corrupt {
                        key: key.clone(),
                        message: format!("score {text:?} is not unix ms"),
                    })
            })
            .transpose()
            .map(Some)
    }

    /// Publishes that `node` is alive on this host, for `ttl`.
    pub async fn set_presence(
        &self,
        node: NodeId,
        value: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        if let Self::Redis { conn, prefix } = self {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let () = conn
                .clone()
                .pset_ex(format!("{prefix}presence:{node}"), value, ttl_ms)
                .await?;
        }
        Ok(())
    }

    /// Withdraws `node`'s presence.
    pub async fn clear_presence(&self, node: NodeId) -> Result<(), CacheError> {
        if let Self::Redis { conn, prefix } = self {
            let _: i64 = conn.clone().del(format!("{prefix}presence:{node}")).await?;
        }
        Ok(())
    }

    /// Publishes a relay host's record for `ttl`. A no-op in process.
    pub async fn put_host(&self, host: &HostRecord, ttl: Duration) -> Result<(), CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(());
        };
        let id = hosts::host_id_string(host.host_id);
        let value = serde_json::to_string(host).map_err(|e| CacheError::Corrupt {
            key: format!("{prefix}host:{id}"),
            message: e.to_string(),
        })?;
        let () = redis::pipe()
            .atomic()
            .pset_ex(format!("{prefix}host:{id}"), value, millis(ttl))
            .ignore()
            .sadd(format!("{prefix}hosts"), &id)
            .ignore()
            .query_async(&mut conn.clone())
            .await?;
        Ok(())
    }

    /// Every host record that has not expired, by id; `None` in process (the store has them).
    /// Ids whose record expired are pruned from the `hosts` set on the way.
    pub async fn hosts(&self) -> Result<Option<Vec<HostRecord>>, CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(None);
        };
        let mut conn = conn.clone();
        let mut ids: Vec<String> = conn.smembers(format!("{prefix}hosts")).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}host:{id}")).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut records = Vec::with_capacity(ids.len());
        let mut expired = Vec::new();
        for ((id, key), value) in ids.iter().zip(&keys).zip(values) {
            match value {
                Some(text) => {
                    records.push(
                        serde_json::from_str(&text).map_err(|e| CacheError::Corrupt {
                            key: key.clone(),
                            message: e.to_string(),
                        })?,
                    )
                }
                None => expired.push(id.clone()),
            }
        }
        if !expired.is_empty() {
            let _: i64 = conn.srem(format!("{prefix}hosts"), &expired).await?;
        }
        Ok(Some(records))
    }

    /// Withdraws a host that shuts down cleanly, with the relay presence it published.
    pub async fn remove_host(&self, host: HostId) -> Result<(), CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(());
        };
        let id = hosts::host_id_string(host);
        let mut conn = conn.clone();
        let nodes: Vec<String> = conn.smembers(format!("{prefix}relay-nodes:{id}")).await?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("EVAL")
                .arg(DELETE_IF_EQUAL)
                .arg(1)
                .arg(format!("{prefix}relay:{node}"))
                .arg(&id)
                .ignore();
        }
        pipe.del(format!("{prefix}relay-nodes:{id}"))
            .ignore()
            .del(format!("{prefix}host:{id}"))
            .ignore()
            .srem(format!("{prefix}hosts"), &id)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Records that `node` holds its relay session on `host`, for `ttl`. A no-op in process.
    pub async fn set_relay_presence(
        &self,
        node: NodeId,
        host: HostId,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(());
        };
        let id = hosts::host_id_string(host);
        let () = redis::pipe()
            .atomic()
            .pset_ex(format!("{prefix}relay:{node}"), &id, millis(ttl))
            .ignore()
            .sadd(format!("{prefix}relay-nodes:{id}"), node.to_string())
            .ignore()
            .pexpire(format!("{prefix}relay-nodes:{id}"), to_i64(millis(ttl)))
            .ignore()
            .query_async(&mut conn.clone())
            .await?;
        Ok(())
    }

    /// Withdraws `node`'s relay presence on `host`, unless another host has taken it over.
    pub async fn clear_relay_presence(&self, node: NodeId, host: HostId) -> Result<(), CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(());
        };
        let id = hosts::host_id_string(host);
        let () = redis::pipe()
            .atomic()
            .cmd("EVAL")
            .arg(DELETE_IF_EQUAL)
            .arg(1)
            .arg(format!("{prefix}relay:{node}"))
            .arg(&id)
            .ignore()
            .srem(format!("{prefix}relay-nodes:{id}"), node.to_string())
            .ignore()
            .query_async(&mut conn.clone())
            .await?;
        Ok(())
    }

    /// Re-publishes the relay presence of every node in `nodes` (all of `host`'s) for `ttl`,
    /// and rewrites the host's node set to exactly them.
    pub async fn refresh_relay_presence(
        &self,
        host: HostId,
        nodes: &[NodeId],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(());
        };
        let id = hosts::host_id_string(host);
        let set = format!("{prefix}relay-nodes:{id}");
        let mut pipe = redis::pipe();
        pipe.atomic().del(&set).ignore();
        for node in nodes {
            pipe.pset_ex(format!("{prefix}relay:{node}"), &id, millis(ttl))
                .ignore()
                .sadd(&set, node.to_string())
                .ignore();
        }
        if !nodes.is_empty() {
            pipe.pexpire(&set, to_i64(millis(ttl))).ignore();
        }
        let () = pipe.query_async(&mut conn.clone()).await?;
        Ok(())
    }

    /// The host `node` holds its relay session on; `None` in process or when there is none.
    pub async fn relay_presence(&self, node: NodeId) -> Result<Option<HostId>, CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(None);
        };
        let key = format!("{prefix}relay:{node}");
        let value: Option<String> = conn.clone().get(&key).await?;
        value
            .map(|text| {
                hosts::parse_host_id(&text).ok_or(CacheError::Corrupt {
                    key,
                    message: format!("{text:?} is not a host id"),
                })
            })
            .transpose()
    }

    /// The nodes on each of `hosts`, as those hosts published them. A node listed by two hosts
    /// (it moved, and the old host has not refreshed yet) goes to the host its `relay:` key
    /// names.
    pub async fn relay_nodes(
        &self,
        hosts: &[HostId],
    ) -> Result<BTreeMap<NodeId, HostId>, CacheError> {
        let Self::Redis { conn, prefix } = self else {
            return Ok(BTreeMap::new());
        };
        let mut conn = conn.clone();
        let mut found: BTreeMap<NodeId, HostId> = BTreeMap::new();
        let mut contested = Vec::new();
        for host in hosts {
            let key = format!("{prefix}relay-nodes:{}", hosts::host_id_string(*host));
            let members: Vec<String> = conn.smembers(&key).await?;
            for member in members {
                let node: NodeId = member.parse().map_err(|_| CacheError::Corrupt {
                    key: key.clone(),
                    message: format!("{member:?} is not a node id"),
                })?;
                if found.insert(node, *host).is_some() {
                    contested.push(node);
                }
            }
        }
        for node in contested {
            match self.relay_presence(node).await? {
                Some(host) if hosts.contains(&host) => {
                    found.insert(node, host);
                }
                Some(_) | None => {
                    found.remove(&node);
                }
            }
        }
        Ok(found)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn decision_allows_up_to_the_limit_then_says_when_to_retry() {
        let start = UnixMillis(60_000);
        assert_eq!(
            rate_decision(3, 3, start, MINUTE, UnixMillis(61_000)),
            RateDecision::Allow
        );
        assert_eq!(
            rate_decision(4, 3, start, MINUTE, UnixMillis(61_000)),
            RateDecision::Deny {
                retry_after_secs: 59
            }
        );
        assert_eq!(
            rate_decision(4, 3, start, MINUTE, UnixMillis(119_999)),
            RateDecision::Deny {
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn windows_are_aligned() {
        assert_eq!(
            window_start(UnixMillis(125_000), MINUTE),
            UnixMillis(120_000)
        );
        assert_eq!(
            window_start(UnixMillis(120_000), MINUTE),
            UnixMillis(120_000)
        );
    }

    #[tokio::test]
    async fn memory_limiter_counts_per_key_and_resets_each_window() {
        let cache = Cache::memory();
        let t0 = UnixMillis(600_000);
        for _ in 0..2 {
            assert_eq!(
                cache.hit("r", "a", 2, MINUTE, t0).await.unwrap(),
                RateDecision::Allow
            );
        }
        assert!(matches!(
            cache.hit("r", "a", 2, MINUTE, t0).await.unwrap(),
            RateDecision::Deny { .. }
        ));
        assert_eq!(
            cache.hit("r", "b", 2, MINUTE, t0).await.unwrap(),
            RateDecision::Allow
        );
        assert_eq!(
            cache.hit("other", "a", 2, MINUTE, t0).await.unwrap(),
            RateDecision::Allow
        );
        let next = t0.saturating_add(MINUTE);
        assert_eq!(
            cache.hit("r", "a", 2, MINUTE, next).await.unwrap(),
            RateDecision::Allow
        );
    }

    #[tokio::test]
    async fn memory_limiter_stays_bounded_under_many_addresses() {
        let cache = Cache::memory();
        let t0 = UnixMillis(0);
        for i in 0..MEMORY_PRUNE_AT {
            cache.hit("r", &i.to_string(), 1, MINUTE, t0).await.unwrap();
        }
        let later = t0.saturating_add(MINUTE);
        cache.hit("r", "fresh", 1, MINUTE, later).await.unwrap();
        let Cache::Memory(map) = &cache else {
            unreachable!()
        };
        assert_eq!(map.lock().unwrap().len(), 1);
    }
}
