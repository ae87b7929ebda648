//! A bounded single-producer single-consumer ring of variable-length records, one per ordered
//! pair of cores: how a relay frame (and presence news) crosses from the core whose client sent
//! it to the core whose client receives it, with no lock and no allocation.
//!
//! # Layout
//!
//! A power-of-two byte array and two monotonically increasing `usize` positions, `head`
//! (consumer) and `tail` (producer), each on its own cache line. A record is a 4-byte
//! little-endian length `n` followed by `n` bytes, padded to 8 bytes; a record never wraps:
//! when one does not fit before the end of the array, the producer writes a [`PAD`] length
//! there and starts the record at offset 0. Records are therefore contiguous and the consumer
//! reads them in place.
//!
//! # Ordering
//!
//! The producer writes the record bytes, then publishes them with a `Release` store of `tail`;
//! the consumer's `Acquire` load of `tail` makes them visible. Symmetrically the consumer
//! releases the space with a `Release` store of `head` after it is done reading, and the
//! producer's `Acquire` load of `head` orders its next writes after those reads. Each position
//! has exactly one writer, so neither needs a read-modify-write.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Length marker of the skipped space at the end of the array.
const PAD: u32 = u32::MAX;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;

/// Records are aligned to this, so the length prefix is always in one piece.
const ALIGN: usize = 8;

#[repr(align(64))]
struct Padded<T>(T);

struct Shared {
    buf: Box<[UnsafeCell<u8>]>,
    mask: usize,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    /// Records the producer could not push (the ring was full).
    dropped: Padded<AtomicU64>,
}

// SAFETY: the bytes in `buf` are only written by the producer in the free region and only read
// by the consumer in the published region; the positions' acquire/release pairs (see the
// module doc) order those accesses, so no byte is accessed by both sides at once.
unsafe impl Sync for Shared {}

/// Makes a ring of `capacity` bytes (rounded up to a power of two, at least 4 KiB).
pub(crate) fn channel(capacity: usize) -> (Producer, Consumer) {
    let capacity = capacity.max(4096).next_power_of_two();
    let shared = Arc::new(Shared {
        buf: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
        mask: capacity - 1,
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        dropped: Padded(AtomicU64::new(0)),
    });
    (
        Producer {
            shared: Arc::clone(&shared),
            tail: 0,
            head_cache: 0,
        },
        Consumer { shared, head: 0 },
    )
}

impl Shared {
    const fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn ptr(&self, offset: usize) -> *mut u8 {
        self.buf[offset].get()
    }
}

/// The sending end; owned by one thread.
pub(crate) struct Producer {
    shared: Arc<Shared>,
    /// Local copy of `tail` (this side is its only writer).
    tail: usize,
    /// Last `head` seen; refreshed only when the ring looks full.
    head_cache: usize,
}

impl Producer {
    /// Appends one record made of `parts`, back to back. Returns `false` (and counts a drop)
    /// when it does not fit; a record larger than half the ring never fits.
    pub(crate) fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let capacity = self.shared.capacity();
        let need = (LEN_BYTES + len).next_multiple_of(ALIGN);
        let offset = self.tail & self.shared.mask;
        let skip = if offset + need > capacity {
            capacity - offset
        } else {
            0
        };
        let total = skip + need;
        if need > capacity / 2 || !self.has_room(total) {
            self.shared.dropped.0.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let start = if skip > 0 {
            self.write_len(offset, PAD);
            0
        } else {
            offset
        };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "len < capacity / 2 < 4 GiB"
        )]
        self.write_len(start, len as u32);
        let mut at = start + LEN_BYTES;
        for part in parts {
            // SAFETY: `at..at + part.len()` lies within the free region checked above, which
            // the consumer does not read until `tail` is published below.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.shared.ptr(at), part.len())
            };
            at += part.len();
        }
        self.tail += total;
        self.shared.tail.0.store(self.tail, Ordering::Release);
        true
    }

    fn has_room(&mut self, total: usize) -> bool {
        let capacity = self.shared.capacity();
        if self.tail + total - self.head_cache <= capacity {
            return true;
        }
        self.head_cache = self.shared.head.0.load(Ordering::Acquire);
        self.tail + total - self.head_cache <= capacity
    }

    fn write_len(&self, offset: usize, len: u32) {
        let bytes = len.to_le_bytes();
        // SAFETY: `offset` is 8-aligned and at least 8 bytes before the end, in the free
        // region (see `push`).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.shared.ptr(offset), LEN_BYTES)
        };
    }

    /// Records dropped because the ring was full.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.0.load(Ordering::Relaxed)
    }
}

/// The receiving end; owned by one thread.
pub(crate) struct Consumer {
    shared: Arc<Shared>,
    /// Local copy of `head` (this side is its only writer).
    head: usize,
}

impl Consumer {
    /// Hands every record published so far to `f`, in order, then frees their space. Returns
    /// how many there were.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let tail = self.shared.tail.0.load(Ordering::Acquire);
        let mut count = 0;
        while self.head != tail {
            let offset = self.head & self.shared.mask;
            let mut len_bytes = [0u8; LEN_BYTES];
            // SAFETY: the published region starts at `head`; the producer does not touch it
            // until `head` moves past it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.shared.ptr(offset),
                    len_bytes.as_mut_ptr(),
                    LEN_BYTES,
                );
            };
            let len = u32::from_le_bytes(len_bytes);
            if len == PAD {
                self.head += self.shared.capacity() - offset;
                continue;
            }
            let len = len as usize;
            // SAFETY: as above; the record is contiguous and within the array.
            let record = unsafe {
                std::slice::from_raw_parts(self.shared.ptr(offset + LEN_BYTES).cast_const(), len)
            };
            f(record);
            self.head += (LEN_BYTES + len).next_multiple_of(ALIGN);
            count += 1;
        }
        self.shared.head.0.store(self.head, Ordering::Release);
        count
    }

    /// Bytes published and not yet drained.
    pub(crate) fn depth(&self) -> usize {
        self.shared.tail.0.load(Ordering::Acquire) - self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_across_wraps() {
        let (mut tx, mut rx) = channel(4096);
        let mut expected = std::collections::VecDeque::new();
        let mut seen = 0u64;
        for i in 0..20_000u32 {
            let len = (i as usize * 37) % 1500;
            let byte = (i % 251) as u8;
            let body = vec![byte; len];
            if tx.push(&[&i.to_le_bytes(), &body]) {
                expected.push_back((i, len, byte));
            }
            if i % 3 == 0 {
                rx.drain(|record| {
                    let (id, len, byte) = expected.pop_front().unwrap();
                    assert_eq!(&record[..4], &id.to_le_bytes());
                    assert_eq!(record.len(), 4 + len);
                    assert!(record[4..].iter().all(|&b| b == byte));
                    seen += 1;
                });
            }
        }
        rx.drain(|_| {
            expected.pop_front().unwrap();
            seen += 1;
        });
        assert!(expected.is_empty());
        assert_eq!(seen + tx.dropped(), 20_000);
        assert!(
            tx.dropped() > 0,
            "a 4 KiB ring drained every third push must fill"
        );
        assert_eq!(rx.depth(), 0);
    }

    #[test]
    fn full_ring_refuses_and_counts() {
        let (mut tx, mut rx) = channel(4096);
        assert!(!tx.push(&[&[0u8; 2048]]), "over half the ring");
        let mut pushed = 0;
        while tx.push(&[&[7u8; 100]]) {
            pushed += 1;
        }
        assert_eq!(pushed, 4096 / 104);
        assert_eq!(tx.dropped(), 2);
        assert_eq!(rx.drain(|r| assert_eq!(r, [7u8; 100])), pushed);
        assert!(tx.push(&[&[1u8; 100]]));
    }

    #[test]
    fn threads_see_every_record_in_order() {
        let (mut tx, mut rx) = channel(1 << 16);
        let producer = std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < 200_000 {
                let len = (sent % 200) as usize;
                let fill = vec![(sent % 256) as u8; len];
                if tx.push(&[&sent.to_le_bytes(), &fill]) {
                    sent += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0u64;
        while next < 200_000 {
            rx.drain(|record| {
                let id = u64::from_le_bytes(record[..8].try_into().unwrap());
                assert_eq!(id, next);
                assert_eq!(record.len(), 8 + (id % 200) as usize);
                assert!(record[8..].iter().all(|&b| b == (id % 256) as u8));
                next += 1;
            });
        }
        producer.join().unwrap();
    }
}
