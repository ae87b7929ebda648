//! The clock: the only place in this crate that reads `Instant::now` or `SystemTime::now`.
//!
//! Timestamps carried in payloads are nanoseconds since an [`Epoch`] taken when a scenario
//! starts. Sender and sinks live in one process, so they share the epoch and the monotonic
//! clock, and one-way latency needs no clock synchronisation.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The current monotonic time.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn now() -> Instant {
    Instant::now()
}

/// Seconds since the Unix epoch (for the expiry of REST credentials); 0 if the clock is set
/// before 1970.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A reference instant that payload timestamps count from.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Epoch {
    /// An epoch at `at`.
    pub const fn new(at: Instant) -> Self {
        Self(at)
    }

    /// Nanoseconds from the epoch to `at` (0 if `at` is earlier), saturating at `u64::MAX`
    /// (584 years).
    pub fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the epoch.
    pub fn at(&self, nanos: u64) -> Instant {
        self.0 + Duration::from_nanos(nanos)
    }
}
