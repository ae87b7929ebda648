//! The atomics every shared-memory access goes through: `std`'s, or loom's under `--cfg loom`
//! so the model checker sees every load, store and fence of the ring and seqlock protocols.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Backs off inside a retry loop (loom must be told, or it explores the spin forever).
pub(crate) fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
