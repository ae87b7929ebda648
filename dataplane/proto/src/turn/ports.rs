//! The pool of relay ports one server instance owns: random choice ([RFC 8656 §7.2] asks for
//! unpredictable relay ports), O(1) take and release, fixed memory.
//!
//! [RFC 8656 §7.2]: https://www.rfc-editor.org/rfc/rfc8656#section-7.2

use std::ops::RangeInclusive;

use rand_core::RngCore;

use super::RelayPort;

/// Free ports, in no particular order.
pub(crate) struct PortPool {
    free: Vec<u16>,
}

impl std::fmt::Debug for PortPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortPool")
            .field("available", &self.free.len())
            .finish()
    }
}

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            free: range.collect(),
        }
    }

    /// Takes a random free port, an even one if `even`.
    pub(crate) fn take<R: RngCore>(&mut self, rng: &mut R, even: bool) -> Option<RelayPort> {
        let len = self.free.len();
        if len == 0 {
            return None;
        }
        // `len` fits in u64 and the remainder is below it, so it fits back in usize.
        let start = (rng.next_u64() % len as u64) as usize;
        let index = if even {
            // Scan from a random start: EVEN-PORT is rare, so O(n) here is acceptable.
            (0..len)
                .map(|i| (start + i) % len)
                .find(|&i| self.free[i].is_multiple_of(2))?
        } else {
            start
        };
        Some(RelayPort::new(self.free.swap_remove(index)))
    }

    /// Returns a port to the pool.
    pub(crate) fn release(&mut self, port: RelayPort) {
        debug_assert!(
            !self.free.contains(&port.get()),
            "double release of {port:?}"
        );
        self.free.push(port.get());
    }

    pub(crate) fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seq(u64);

    impl RngCore for Seq {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            self.0 >> 33
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill_with(|| self.next_u64() as u8);
        }
    }

    #[test]
    fn takes_every_port_once_then_none() {
        let mut pool = PortPool::new(50_000..=50_009);
        let mut rng = Seq(1);
        let mut taken: Vec<u16> = (0..10)
            .map(|_| pool.take(&mut rng, false).unwrap().get())
            .collect();
        taken.sort_unstable();
        assert_eq!(taken, (50_000..=50_009).collect::<Vec<_>>());
        assert_eq!(pool.take(&mut rng, false), None);
        pool.release(RelayPort::new(50_003));
        assert_eq!(pool.available(), 1);
        assert_eq!(pool.take(&mut rng, true), None, "no even port free");
        assert_eq!(pool.take(&mut rng, false), Some(RelayPort::new(50_003)));
    }

    #[test]
    fn even_ports() {
        let mut pool = PortPool::new(40_001..=40_100);
        let mut rng = Seq(7);
        for _ in 0..50 {
            assert_eq!(pool.take(&mut rng, true).unwrap().get() % 2, 0);
        }
        assert_eq!(pool.take(&mut rng, true), None);
        assert_eq!(pool.available(), 50);
    }
}
