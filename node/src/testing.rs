//! What the cores' simulated-time tests share: a starting instant and a deterministic RNG.

use std::time::Instant;

use rand::RngCore;

/// The instant virtual time starts from; its value never matters.
#[expect(
    clippy::disallowed_methods,
    reason = "virtual time starts from some Instant; its value never matters"
)]
pub(crate) fn epoch() -> Instant {
    Instant::now()
}

/// A deterministic RNG: a linear congruential counter, a different sequence per seed.
pub(crate) struct Counter(pub(crate) u64);

impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        self.0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
