//! Per-core stats blocks: one writer (the core's worker thread), any number of readers
//! (the control plane's `/metrics`), consistent snapshots, and neither side ever waits for
//! the other.
//!
//! A block holds a sequence number and two copies of the stats (a "latch", as Linux's
//! `seqcount_latch`). Readers read the copy the sequence's parity names; the writer only
//! ever writes the other copy, then bumps the sequence to make readers switch to it, and
//! does that twice per publish so both copies end up current. So the copy readers use is
//! always complete: a writer preempted (or killed) mid-write costs readers nothing, which a
//! plain odd/even seqlock cannot offer (its readers spin until the writer runs again, and
//! forever if it died). A reader retries only if the sequence moved while it copied.
//!
//! Every field is an atomic (relaxed), so a torn read is merely discarded, never undefined
//! behaviour; the fences order the relaxed accesses against the sequence (as in Boehm, "Can
//! seqlocks get along with programming language memory models?", 2012).

use std::sync::Arc;

use boson_shared::plane::UnixMs;

use crate::layout::{Incarnation, STATS_HEADER_LEN};
use crate::mem::{Mem, WORD};
use crate::sync::{AtomicU64, Ordering, fence, spin};

// Words of a stats block (byte offset / 8).
/// Readers use copy `sequence & 1`; +2 per publish.
const SEQ: usize = 0;
/// First word of copy 0; copy 1 follows it. A copy is the heartbeat, the incarnation, then
/// the slots.
const COPIES: usize = STATS_HEADER_LEN / WORD;
/// Words of a copy before its slots.
const COPY_HEADER: usize = 2;

/// How often a reader retries before giving up: it only retries when the writer switched
/// copies during its read, so a thousand failures in a row mean a pathological writer.
#[cfg(not(loom))]
const READ_ATTEMPTS: u32 = 1000;
/// Under loom every retry multiplies the interleavings to explore.
#[cfg(loom)]
const READ_ATTEMPTS: u32 = 2;

/// Words of a block with `slots` slots (before padding).
pub(crate) const fn block_words(slots: usize) -> usize {
    COPIES + 2 * (COPY_HEADER + slots)
}

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
    /// The writer switched copies during every attempt: it publishes back to back without
    /// pause (only possible for a writer that does nothing else).
    #[error("stats block rewritten during each of {attempts} read attempts")]
    Contended {
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
        assert!(offset / WORD + block_words(slots) <= mem.words().len());
        Self {
            mem,
            base: offset / WORD,
            slots,
        }
    }

    fn word(&self, word: usize) -> &AtomicU64 {
        &self.mem.words()[self.base + word]
    }

    /// Word `word` of copy `copy` (0 or 1).
    fn copy_word(&self, copy: u64, word: usize) -> &AtomicU64 {
        let start = COPIES
            + if copy == 0 {
                0
            } else {
                COPY_HEADER + self.slots
            };
        self.word(start + word)
    }

    /// A consistent snapshot, or `Contended` after [`READ_ATTEMPTS`] tries.
    pub(crate) fn read(&self) -> Result<Snapshot, StatsError> {
        let mut values = vec![0; self.slots];
        for _ in 0..READ_ATTEMPTS {
            // Acquire: pairs with the writer's Release store of this value, which followed
            // its writes of the copy this value points readers to.
            let seq = self.word(SEQ).load(Ordering::Acquire);
            let copy = seq & 1;
            // Relaxed: validated by the sequence check below.
            let heartbeat = self.copy_word(copy, 0).load(Ordering::Relaxed);
            let incarnation = self.copy_word(copy, 1).load(Ordering::Relaxed);
            for (slot, value) in values.iter_mut().enumerate() {
                *value = self
                    .copy_word(copy, COPY_HEADER + slot)
                    .load(Ordering::Relaxed);
            }
            // Acquire fence: if any load above read a store the writer made to this copy
            // after moving readers off it, the writer's Release fence (between that move
            // and its stores) happens before this fence, so the load below sees the moved
            // sequence and the copy is discarded.
            fence(Ordering::Acquire);
            if self.word(SEQ).load(Ordering::Relaxed) == seq {
                return Ok(Snapshot {
                    publishes: seq / 2,
                    heartbeat,
                    incarnation: Incarnation(incarnation),
                    values,
                });
            }
            spin();
        }
        Err(StatsError::Contended {
            attempts: READ_ATTEMPTS,
        })
    }
}

/// The only writer of one core's stats block: part of that core's
/// [`CoreEnd`](crate::CoreEnd).
pub struct StatsWriter {
    block: StatsBlock,
    /// The sequence: only we write it.
    seq: u64,
    incarnation: Incarnation,
    heartbeat: UnixMs,
    /// What the next publish writes (a heartbeat alone rewrites both copies, so the writer
    /// keeps the values; they start at zero with each incarnation).
    values: Vec<u64>,
}

impl StatsWriter {
    pub(crate) fn new(block: StatsBlock, incarnation: Incarnation) -> Self {
        // Acquire: see the previous writer's copies as it left them. Whatever point it
        // died at, the copy readers use is complete and we only write the other one.
        let seq = block.word(SEQ).load(Ordering::Acquire);
        let values = vec![0; block.slots];
        Self {
            block,
            seq,
            incarnation,
            heartbeat: 0,
            values,
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
        let (given, rest) = self.values.split_at_mut(values.len());
        given.copy_from_slice(values);
        rest.fill(0);
        self.heartbeat = now;
        self.write();
        Ok(())
    }

    /// Publishes the heartbeat `now` with the last published values (a worker with nothing
    /// new to count).
    pub fn heartbeat(&mut self, now: UnixMs) {
        self.heartbeat = now;
        self.write();
    }

    /// Writes the copy readers are not using and moves them to it, twice.
    fn write(&mut self) {
        for _ in 0..2 {
            let copy = (self.seq & 1) ^ 1;
            // Release fence: our previous store of the sequence (which moved readers onto
            // the copy we are about to write) is ordered before these stores, for the
            // reader's Acquire fence.
            fence(Ordering::Release);
            // Relaxed: published by the Release store of the sequence below.
            self.block
                .copy_word(copy, 0)
                .store(self.heartbeat, Ordering::Relaxed);
            self.block
                .copy_word(copy, 1)
                .store(self.incarnation.0, Ordering::Relaxed);
            for (slot, &value) in self.values.iter().enumerate() {
                self.block
                    .copy_word(copy, COPY_HEADER + slot)
                    .store(value, Ordering::Relaxed);
            }
            // Wrapping: the sequence is read from shared memory and may be anything.
            self.seq = self.seq.wrapping_add(1);
            // Release: pairs with the reader's Acquire load; the copy is complete before
            // any reader is sent to it.
            self.block.word(SEQ).store(self.seq, Ordering::Release);
        }
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use crate::mem::memfd;

    fn block(slots: usize) -> StatsBlock {
        let len = block_words(slots) * WORD;
        let file = memfd(c"stats-test").expect("memfd");
        file.set_len(len as u64).expect("set_len");
        StatsBlock::new(Arc::new(Mem::map(file, len).expect("map")), 0, slots)
    }

    #[test]
    fn a_writer_killed_mid_write_never_makes_the_block_unreadable() {
        let block = block(2);
        let mut first = StatsWriter::new(block.clone(), Incarnation(1));
        first.publish(10, &[1, 1]).expect("publish");
        // Killed after moving readers to copy 1 and half rewriting copy 0.
        first.seq += 1;
        block.word(SEQ).store(first.seq, Ordering::SeqCst);
        block.copy_word(0, COPY_HEADER).store(99, Ordering::SeqCst);
        let snapshot = block.read().expect("readers use the complete copy");
        assert_eq!(
            (snapshot.heartbeat, snapshot.values.as_slice()),
            (10, &[1, 1][..])
        );
        assert_eq!(snapshot.publishes, 1);

        let mut second = StatsWriter::new(block.clone(), Incarnation(2));
        second.heartbeat(20);
        let snapshot = block.read().expect("readable");
        assert_eq!(
            snapshot.values,
            [0, 0],
            "a new incarnation's counters start at zero"
        );
        assert_eq!(
            (snapshot.heartbeat, snapshot.incarnation),
            (20, Incarnation(2))
        );
        second.publish(30, &[5]).expect("publish");
        let snapshot = block.read().expect("readable");
        assert_eq!(
            (snapshot.heartbeat, snapshot.values.as_slice()),
            (30, &[5, 0][..])
        );
        assert_eq!(snapshot.publishes, 3);
    }
}
