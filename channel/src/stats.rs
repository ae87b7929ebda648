//! Per-core stats blocks: a seqlock with one writer (the core's worker thread) and any
//! number of readers (the control plane's `/metrics`), so a reader gets a consistent
//! snapshot without ever making the writer wait.
//!
//! The writer makes the sequence odd, stores the heartbeat, its incarnation and every slot,
//! and makes it even again. A reader copies everything between two loads of the sequence and
//! keeps the copy only if both loads saw the same even value. Every field is an atomic
//! (relaxed), so a torn read is merely discarded, never undefined behaviour; the fences
//! order the relaxed accesses against the sequence (Boehm, "Can seqlocks get along with
//! programming language memory models?", 2012).

use std::sync::Arc;

use boson_shared::plane::UnixMs;

use crate::layout::{Incarnation, STATS_HEADER_LEN};
use crate::mem::{Mem, WORD};
use crate::sync::{AtomicU64, Ordering, fence, spin};

// Words of a stats block (byte offset / 8).
/// Even: stable; odd: a write is in progress. Bumped by 2 per publish.
const SEQ: usize = 0;
/// The writer's last heartbeat (caller-supplied time).
const HEARTBEAT: usize = 1;
/// The dataplane incarnation that wrote the block last.
const INCARNATION: usize = 2;
/// First slot.
const SLOTS: usize = STATS_HEADER_LEN / WORD;

/// How often a reader retries before reporting the block as being written. A publish takes
/// well under a microsecond, so a thousand attempts only fail if the writer died mid-write.
#[cfg(not(loom))]
const READ_ATTEMPTS: u32 = 1000;
/// Under loom every retry multiplies the interleavings to explore.
#[cfg(loom)]
const READ_ATTEMPTS: u32 = 2;

/// A consistent copy of one core's stats block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Publishes so far (by every incarnation); 0: never written.
    pub publishes: u64,
    /// The worker's last heartbeat, in whatever clock the dataplane feeds it (the control
    /// plane compares it with its own `now` to tell a live worker from a stuck or dead one).
    pub heartbeat: UnixMs,
    /// The dataplane incarnation that published this (its counters restart at zero with
    /// each incarnation).
    pub incarnation: Incarnation,
    /// The slots, as the dataplane defines them.
    pub values: Vec<u64>,
}

impl Snapshot {
    /// How long ago the worker last published, by the caller's clock (0 if its clock is
    /// behind the worker's).
    pub fn age(&self, now: UnixMs) -> u64 {
        now.saturating_sub(self.heartbeat)
    }
}

/// Why a stats read or write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// The block was mid-write at every attempt: its writer publishes extremely often, or
    /// died in the middle of a publish (then its heartbeat is stale too, and the block
    /// stays unreadable until the next dataplane incarnation publishes).
    #[error("stats block still being written after {attempts} attempts")]
    WriteInProgress {
        /// Read attempts made.
        attempts: u32,
    },
    /// No such core in this segment.
    #[error("core {core} of a {cores}-core segment")]
    UnknownCore {
        /// The core asked for.
        core: u16,
        /// Cores in the segment.
        cores: u16,
    },
    /// More values than the segment has slots.
    #[error("{given} values for {slots} stats slots")]
    TooManyValues {
        /// Values given.
        given: usize,
        /// Slots per block.
        slots: usize,
    },
}

/// Where one stats block lives.
#[derive(Clone)]
pub(crate) struct StatsBlock {
    mem: Arc<Mem>,
    /// Word index of the block.
    base: usize,
    slots: usize,
}

impl StatsBlock {
    /// The block at byte `offset` with `slots` slots. A block outside `mem` is a bug in
    /// this crate's layout and panics here, once.
    pub(crate) fn new(mem: Arc<Mem>, offset: usize, slots: usize) -> Self {
        assert!(offset.is_multiple_of(WORD));
        assert!(offset / WORD + SLOTS + slots <= mem.words().len());
        Self {
            mem,
            base: offset / WORD,
            slots,
        }
    }

    fn word(&self, word: usize) -> &AtomicU64 {
        &self.mem.words()[self.base + word]
    }

    /// A consistent snapshot, or `WriteInProgress` after [`READ_ATTEMPTS`] tries.
    pub(crate) fn read(&self) -> Result<Snapshot, StatsError> {
        let mut values = vec![0; self.slots];
        for _ in 0..READ_ATTEMPTS {
            // Acquire: if the writer's final (even) store is what we read, everything it
            // stored before is visible to the loads below.
            let before = self.word(SEQ).load(Ordering::Acquire);
            if before % 2 == 1 {
                spin();
                continue;
            }
            // Relaxed: validated by the sequence check below.
            let heartbeat = self.word(HEARTBEAT).load(Ordering::Relaxed);
            let incarnation = self.word(INCARNATION).load(Ordering::Relaxed);
            for (slot, value) in values.iter_mut().enumerate() {
                *value = self.word(SLOTS + slot).load(Ordering::Relaxed);
            }
            // Acquire fence: if any load above read a store of a later publish, the writer's
            // Release fence (after its odd store) happens before this fence, so the load
            // below sees that odd value or later and the copy is discarded.
            fence(Ordering::Acquire);
            let after = self.word(SEQ).load(Ordering::Relaxed);
            if before == after {
                return Ok(Snapshot {
                    publishes: before / 2,
                    heartbeat,
                    incarnation: Incarnation(incarnation),
                    values,
                });
            }
            spin();
        }
        Err(StatsError::WriteInProgress {
            attempts: READ_ATTEMPTS,
        })
    }
}

/// The only writer of one core's stats block: part of that core's
/// [`CoreEnd`](crate::CoreEnd).
pub struct StatsWriter {
    block: StatsBlock,
    /// The sequence's stable (even) value: only we write it.
    seq: u64,
    incarnation: Incarnation,
}

impl StatsWriter {
    pub(crate) fn new(block: StatsBlock, incarnation: Incarnation) -> Self {
        // Acquire: see the previous writer's last publish as complete. An odd value means
        // it died mid-publish; starting from the even value below it, our first publish
        // stores that same odd value, then the next even one, so readers never accept the
        // half-written block in between.
        let seq = block.word(SEQ).load(Ordering::Acquire) & !1;
        Self {
            block,
            seq,
            incarnation,
        }
    }

    /// Slots per block.
    pub fn slots(&self) -> usize {
        self.block.slots
    }

    /// Publishes `values` (slots past its end are set to zero) and the heartbeat `now`.
    pub fn publish(&mut self, now: UnixMs, values: &[u64]) -> Result<(), StatsError> {
        if values.len() > self.block.slots {
            return Err(StatsError::TooManyValues {
                given: values.len(),
                slots: self.block.slots,
            });
        }
        self.write(now, Some(values));
        Ok(())
    }

    /// Publishes only the heartbeat `now` (a worker with nothing new to count).
    pub fn heartbeat(&mut self, now: UnixMs) {
        self.write(now, None);
    }

    fn write(&mut self, now: UnixMs, values: Option<&[u64]>) {
        let seq = self.block.word(SEQ);
        // Relaxed, then the Release fence: every store below is ordered after the odd
        // sequence (see the reader's Acquire fence).
        seq.store(self.seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        // Relaxed: published by the Release store of the even sequence.
        self.block.word(HEARTBEAT).store(now, Ordering::Relaxed);
        self.block
            .word(INCARNATION)
            .store(self.incarnation.0, Ordering::Relaxed);
        if let Some(values) = values {
            for slot in 0..self.block.slots {
                let value = values.get(slot).copied().unwrap_or(0);
                self.block
                    .word(SLOTS + slot)
                    .store(value, Ordering::Relaxed);
            }
        }
        self.seq += 2;
        // Release: pairs with the reader's first Acquire load.
        seq.store(self.seq, Ordering::Release);
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use crate::mem::memfd;

    fn block(slots: usize) -> StatsBlock {
        let len = STATS_HEADER_LEN + slots * WORD;
        let file = memfd(c"stats-test").expect("memfd");
        file.set_len(len as u64).expect("set_len");
        StatsBlock::new(Arc::new(Mem::map(file, len).expect("map")), 0, slots)
    }

    #[test]
    fn a_writer_killed_mid_publish_leaves_the_block_unreadable_until_its_successor_publishes() {
        let block = block(2);
        let mut first = StatsWriter::new(block.clone(), Incarnation(1));
        first.publish(10, &[1, 1]).expect("publish");
        // Killed between the odd store and the even one, after a partial write.
        block.word(SEQ).store(3, Ordering::SeqCst);
        block.word(SLOTS).store(2, Ordering::SeqCst);
        assert_eq!(
            block.read(),
            Err(StatsError::WriteInProgress {
                attempts: READ_ATTEMPTS
            })
        );

        let mut second = StatsWriter::new(block.clone(), Incarnation(2));
        second.publish(20, &[5, 5]).expect("publish");
        let snapshot = block.read().expect("readable again");
        assert_eq!(snapshot.values, [5, 5]);
        assert_eq!(snapshot.incarnation, Incarnation(2));
        assert_eq!(snapshot.publishes, 2, "the torn publish never counted");
    }
}
