//! What the tests, the fuzz targets and the instruction counts drive the cores with (the
//! `testing` feature; never in a production build): a deterministic RNG, so every run of a
//! seed takes the same paths.

use rand_core::RngCore;

/// xorshift64*: a tiny seeded RNG, not a secure one. A seed of 0 behaves as 1.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl RngCore for XorShift {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_its_sequence() {
        let (mut a, mut b) = (XorShift(7), XorShift(7));
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        assert_ne!(XorShift(8).next_u64(), first[0]);
        let mut bytes = [0u8; 11];
        XorShift(7).fill_bytes(&mut bytes);
        assert_eq!(bytes[..8], first[0].to_le_bytes());
    }
}
