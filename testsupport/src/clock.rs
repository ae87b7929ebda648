//! The clock of the test support: waits on conditions with deadlines, so it reads real time.

use std::time::{Duration, Instant};

/// Now.
#[must_use]
pub fn now() -> Instant {
    #[expect(
        clippy::disallowed_methods,
        reason = "tests wait on real processes with deadlines"
    )]
    Instant::now()
}

/// Polls `condition` every `every` until it holds; `false` if `within` passes first.
pub fn wait_until(within: Duration, every: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = now() + within;
    loop {
        if condition() {
            return true;
        }
        if now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}
