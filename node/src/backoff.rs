//! Reconnection backoff, sans-IO: exponential with jitter, the randomness handed in.

use std::time::Duration;

use rand_core::RngCore;

/// Exponential backoff between `base` and `max`, each delay drawn uniformly from the upper
/// half of the current step so that many nodes cut off together do not return together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A backoff whose first delay is at most `base` and whose delays never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            step: base,
        }
    }

    /// The next delay; doubles the step for the one after.
    pub fn next_delay(&mut self, rng: &mut impl RngCore) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 {
            0
        } else {
            rng.next_u64() % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first step, after a success.
    pub const fn reset(&mut self) {
        self.step = self.base;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn doubles_within_bounds_and_resets() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut upper = Duration::from_millis(100);
        for _ in 0..10 {
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay >= upper / 2 && delay <= upper,
                "{delay:?} for step {upper:?}"
            );
            upper = (upper * 2).min(Duration::from_secs(2));
        }
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}
