//! The only clock reads of the agent: the cores take `now` from here, through the shell.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn now() -> Instant {
    Instant::now()
}

/// Unix time in milliseconds, for the status file.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
