//! Fixed-memory rate limit for responses sent before authentication (401, 438, 400).
//!
//! Those responses go to whatever source address a datagram claims, so a spoofing attacker can
//! aim them at a victim. The limiter caps them per source: an array of token buckets indexed by
//! a keyed hash of the source IP (IPv6 by its /64, since one host owns a whole /64). Memory is
//! fixed whatever the number of sources; two sources that collide share a bucket, which only
//! ever makes the limit stricter. The hash key is random per server so an attacker cannot aim
//! collisions at a victim's bucket.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::Instant;

use rand_core::RngCore;

/// Milli-tokens per token: integer arithmetic with sub-token refill.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    /// Milliseconds since the limiter's epoch at the last refill.
    last_ms: u64,
}

/// An array of token buckets keyed by source IP.
pub(crate) struct RateLimiter {
    buckets: Box<[Bucket]>,
    key: [u8; 16],
    epoch: Instant,
    per_second: u64,
    burst_milli: u64,
}

impl RateLimiter {
    /// `buckets` buckets (at least 1) of `burst` tokens, refilled at `per_second`.
    pub(crate) fn new<R: RngCore>(
        rng: &mut R,
        now: Instant,
        buckets: usize,
        per_second: u32,
        burst: u32,
    ) -> Self {
        let mut key = [0; 16];
        rng.fill_bytes(&mut key);
        let burst_milli = u64::from(burst) * MILLI;
        let full = Bucket {
            milli_tokens: burst_milli,
            last_ms: 0,
        };
        Self {
            buckets: vec![full; buckets.max(1)].into_boxed_slice(),
            key,
            epoch: now,
            per_second: u64::from(per_second),
            burst_milli,
        }
    }

    /// Number of buckets, fixed at construction.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Takes one token for `ip` at `now`; `false` if its bucket is empty.
    pub(crate) fn try_take(&mut self, now: Instant, ip: IpAddr) -> bool {
        let index = self.index(ip);
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let Some(bucket) = self.buckets.get_mut(index) else {
            return false;
        };
        let elapsed = now_ms.saturating_sub(bucket.last_ms);
        bucket.milli_tokens = bucket
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.burst_milli);
        bucket.last_ms = bucket.last_ms.max(now_ms);
        if bucket.milli_tokens < MILLI {
            return false;
        }
        bucket.milli_tokens -= MILLI;
        true
    }

    fn index(&self, ip: IpAddr) -> usize {
        let mut hasher = DefaultHasher::new();
        self.key.hash(&mut hasher);
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.octets().hash(&mut hasher),
            IpAddr::V6(v6) => v6.octets()[..8].hash(&mut hasher),
        }
        // The remainder is below `buckets.len()`, so it fits in usize.
        (hasher.finish() % self.buckets.len() as u64) as usize
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("buckets", &self.buckets.len())
            .field("per_second", &self.per_second)
            .field("burst", &(self.burst_milli / MILLI))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Zero;

    impl RngCore for Zero {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0);
        }
    }

    #[test]
    fn burst_then_refill() {
        let t0 = crate::turn::test_epoch();
        let mut limiter = RateLimiter::new(&mut Zero, t0, 64, 2, 3);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!((0..3).all(|_| limiter.try_take(t0, ip)));
        assert!(!limiter.try_take(t0, ip));
        // 2 per second: one token after 500 ms.
        assert!(!limiter.try_take(t0 + Duration::from_millis(499), ip));
        assert!(limiter.try_take(t0 + Duration::from_millis(500), ip));
        assert!(!limiter.try_take(t0 + Duration::from_millis(500), ip));
        // Never more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| limiter.try_take(later, ip)));
        assert!(!limiter.try_take(later, ip));
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let t0 = crate::turn::test_epoch();
        let mut limiter = RateLimiter::new(&mut Zero, t0, 1 << 16, 1, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limiter.try_take(t0, a));
        assert!(!limiter.try_take(t0, b), "same /64, same bucket");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        let plain: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limiter.try_take(t0, plain));
        assert!(
            !limiter.try_take(t0, mapped),
            "mapped spelling, same bucket"
        );
    }
}
