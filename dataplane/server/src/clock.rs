//! The shell's clock: the only place in the crate that reads the time. Everything below the
//! event loop, the protocol core above all, gets `now` passed in.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic time, read once per event-loop turn.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before it), for cores that
/// check wall-clock expiries such as TURN REST credentials.
#[expect(clippy::disallowed_methods, reason = "the shell owns the clock")]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
