//! Short-lived shared state: per-IP rate limits and node presence.
//!
//! With `REDIS_URL` set it lives in Redis, so that every host behind one address shares the
//! limits and the relay mesh can see which host a node talks to. Without it, rate limits are
//! kept in this process and presence is not published (one host has no one to tell).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use boson_shared::NodeId;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::clock::UnixMillis;
use crate::config::RedisConfig;

/// Why the cache could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Redis failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

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

    /// Connects to Redis.
    pub async fn redis(config: &RedisConfig) -> Result<Self, CacheError> {
        let client = redis::Client::open(config.url.as_str())?;
        // Short timeouts so that a Redis outage turns into a quick 503, not a hung request.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let mut conn = ConnectionManager::new_with_config(client, manager_config).await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self::Redis {
            conn,
            prefix: config.prefix.clone(),
        })
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
