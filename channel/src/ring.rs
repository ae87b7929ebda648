//! A bounded single-producer single-consumer ring of variable-length messages in shared
//! memory.
//!
//! The producer owns the tail word and the bytes from the tail up to the head (the free
//! space); the consumer owns the head word and the bytes from the head up to the tail (the
//! committed frames). Each side publishes a change of ownership with one Release store of its
//! word, and reads the other side's with an Acquire load, so a frame's bytes are complete
//! before the consumer can see it and read before the producer can overwrite them.
//!
//! Positions are free-running `u32` byte counts, reduced modulo the (power-of-two) capacity
//! to index the data; `tail - head` in wrapping arithmetic is the committed span, which is
//! sound while the capacity is at most 2^31. Each index word also carries a wrapping `u32`
//! count of messages, so that the message count and the position change in one store: a
//! process killed between two stores can never leave them disagreeing.
//!
//! A frame is a `u32` little-endian payload length, the payload, and zero padding to a
//! multiple of 8 bytes. Frames start 8-aligned and the capacity is a multiple of 8, so the
//! length never straddles the end of the data; the payload may, and is copied in two parts.
//!
//! Nothing here trusts the other side: a corrupt index or length is reported as
//! [`Corruption`] and the consumer skips to the producer's tail (counted as a resync).
//!
//! Besides the segment's rings, [`private_ring`] makes a ring in memory of its own for a
//! hand-off inside one process (the relay's core-to-core records). A producer can gather
//! several slices into one message ([`Producer::push_parts`]), and a consumer can read
//! messages where they lie ([`Consumer::drain`] lends each as a [`Record`]) instead of
//! copying each into a buffer first.

use std::sync::Arc;

use crate::layout::RingRegion;
use crate::mem::{Mem, WORD};
use crate::sync::{AtomicU64, Ordering};

/// Bytes of a frame's length prefix.
const LEN_PREFIX: usize = 4;

// Words of a ring's control block (byte offset / 8). Producer and consumer words are 128
// bytes apart: never in the same cache line nor in one prefetched pair of lines.
/// Producer: packed tail position (messages committed, bytes committed).
const TAIL: usize = 0;
/// Producer: messages dropped because the ring was full (or corrupt).
const DROPPED: usize = 1;
/// Consumer: packed head position (messages consumed, bytes consumed).
const HEAD: usize = 128 / WORD;
/// Consumer: messages consumed but not decodable.
const UNDECODABLE: usize = HEAD + 1;
/// Consumer: times the consumer found the ring corrupt and skipped to the tail.
const RESYNCS: usize = HEAD + 2;

/// What the consumer found wrong with a ring. Only memory corruption or a peer not
/// following the protocol can cause it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The producer is further ahead than the ring is long.
    #[error("the producer is {used} bytes ahead in a {capacity}-byte ring")]
    Span {
        /// Committed bytes claimed.
        used: u32,
        /// The ring's capacity.
        capacity: u32,
    },
    /// A position is not on a frame boundary.
    #[error("position {pos} is not 8-byte aligned")]
    Misaligned {
        /// The position.
        pos: u32,
    },
    /// The committed message count does not fit the committed bytes.
    #[error("{messages} messages committed in {bytes} bytes")]
    Count {
        /// Messages claimed.
        messages: u32,
        /// Bytes claimed.
        bytes: u32,
    },
    /// A frame's length runs past the committed bytes or the largest message.
    #[error("frame length {len} with {available} bytes committed")]
    FrameLength {
        /// The length prefix.
        len: u32,
        /// Committed bytes from the frame's start.
        available: u32,
    },
}

/// A ring's counters, readable by either side at any time (for metrics). Message counts
/// are modulo 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStatus {
    /// Data bytes of the ring.
    pub capacity_bytes: u32,
    /// Bytes committed and not yet consumed.
    pub depth_bytes: u32,
    /// Messages committed and not yet consumed.
    pub depth_messages: u32,
    /// Messages ever committed by the producer (wrapping).
    pub committed: u32,
    /// Messages ever consumed by the consumer (wrapping).
    pub consumed: u32,
    /// Messages the producer dropped: the ring was full (or its head corrupt).
    pub dropped: u64,
    /// Messages the consumer could not decode (and skipped).
    pub undecodable: u64,
    /// Times the consumer found the ring corrupt and skipped to the producer's tail.
    pub resyncs: u64,
}

/// A packed index word: `count << 32 | bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    count: u32,
    bytes: u32,
}

impl Pos {
    fn unpack(word: u64) -> Self {
        Self {
            count: (word >> 32) as u32,
            bytes: word as u32,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.count) << 32) | u64::from(self.bytes)
    }

    fn advance(self, frame: u32) -> Self {
        Self {
            count: self.count.wrapping_add(1),
            bytes: self.bytes.wrapping_add(frame),
        }
    }
}

/// One ring of a segment: where it lives. Both ends and observers hold one.
#[derive(Clone)]
pub(crate) struct Ring {
    mem: Arc<Mem>,
    /// Word index of the control block.
    control: usize,
    /// Word index of the data.
    data: usize,
    capacity: u32,
}

impl Ring {
    /// The ring in `region` of `mem`. The layout guarantees the region; a bad one is a bug
    /// in this crate and panics here, once, rather than on some later access.
    pub(crate) fn new(mem: Arc<Mem>, region: RingRegion) -> Self {
        let capacity = region.capacity;
        assert!(
            capacity.is_power_of_two() && (8..=1 << 31).contains(&capacity),
            "ring capacity {capacity}"
        );
        assert!(region.control.is_multiple_of(WORD) && region.data.is_multiple_of(WORD));
        let words = mem.words().len();
        assert!(region.control / WORD + RESYNCS < words);
        assert!(region.data / WORD + capacity as usize / WORD <= words);
        Self {
            control: region.control / WORD,
            data: region.data / WORD,
            capacity,
            mem,
        }
    }

    /// Largest payload: a frame must fit in an empty ring.
    pub(crate) fn max_payload(&self) -> usize {
        self.capacity as usize - LEN_PREFIX
    }

    fn word(&self, word: usize) -> &AtomicU64 {
        &self.mem.words()[self.control + word]
    }

    /// The data word at position `pos` (a multiple of 8).
    fn data_word(&self, pos: u32) -> &AtomicU64 {
        let offset = (pos & (self.capacity - 1)) as usize;
        &self.mem.words()[self.data + offset / WORD]
    }

    /// The `n` data words from position `pos` (a multiple of 8) on, as the part before the
    /// end of the data and the part that wraps to its start. `n` words at most fill the ring.
    fn data_words(&self, pos: u32, n: usize) -> (&[AtomicU64], &[AtomicU64]) {
        let words = &self.mem.words()[self.data..self.data + self.capacity as usize / WORD];
        let first = (pos & (self.capacity - 1)) as usize / WORD;
        let before = n.min(words.len() - first);
        (&words[first..first + before], &words[..n - before])
    }

    /// The ring's counters.
    pub(crate) fn status(&self) -> RingStatus {
        // Acquire on the head, then the tail: the consumer read a tail at least this far
        // ahead before it stored this head, so (by coherence) the tail we read next is not
        // behind it and the depth is never negative. Relaxed suffices for everything else:
        // these are gauges, not synchronisation.
        let head = Pos::unpack(self.word(HEAD).load(Ordering::Acquire));
        let tail = Pos::unpack(self.word(TAIL).load(Ordering::Relaxed));
        RingStatus {
            capacity_bytes: self.capacity,
            depth_bytes: tail.bytes.wrapping_sub(head.bytes).min(self.capacity),
            depth_messages: tail.count.wrapping_sub(head.count),
            committed: tail.count,
            consumed: head.count,
            dropped: self.word(DROPPED).load(Ordering::Relaxed),
            undecodable: self.word(UNDECODABLE).load(Ordering::Relaxed),
            resyncs: self.word(RESYNCS).load(Ordering::Relaxed),
        }
    }
}

/// Bytes before a private ring's data: its control block (see [`private_ring`]).
const PRIVATE_DATA: usize = 256;
const _: () = assert!(RESYNCS < PRIVATE_DATA / WORD);

/// A ring of `capacity` data bytes in a memory file of its own, for a single-producer
/// single-consumer hand-off between two threads of one process. `capacity` must be a power
/// of two from 8 to 2^31; anything else is an [`std::io::ErrorKind::InvalidInput`] error.
#[cfg(not(loom))]
pub fn private_ring(capacity: u32) -> std::io::Result<(Producer, Consumer)> {
    if !capacity.is_power_of_two() || !(8..=1 << 31).contains(&capacity) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("ring capacity {capacity} is not a power of two from 8 to 2^31"),
        ));
    }
    let len = PRIVATE_DATA + capacity as usize;
    let file = crate::mem::memfd(c"boson-ring")?;
    file.set_len(len as u64)?;
    // Populated: a ring is a fixed reservation, so its pages are resident from the start
    // rather than one by one as the producer first writes them (which looks like a leak
    // until the ring has wrapped once).
    let mem = Arc::new(Mem::map_populated(file, len)?);
    let ring = Ring::new(
        mem,
        RingRegion {
            control: 0,
            data: PRIVATE_DATA,
            capacity,
        },
    );
    Ok((Producer::new(ring.clone()), Consumer::new(ring)))
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// Not enough free space now.
    Full,
    /// Larger than the ring can ever hold.
    TooLarge,
    /// The indices make no sense; the consumer will resync.
    Corrupt(Corruption),
}

/// The writing end of a ring. Exactly one may exist per ring (the side's attach lock and
/// the ends' types see to it; a [`private_ring`] has no other).
pub struct Producer {
    ring: Ring,
    /// Our position: only we write the tail word, so this is its value.
    tail: Pos,
    /// The consumer's position when we last looked; reloaded only when the ring looks full,
    /// so the producer touches the consumer's cache line only then.
    head: Pos,
}

impl Producer {
    /// Takes over the ring's producer side where the previous producer (if any) left it.
    pub(crate) fn new(ring: Ring) -> Self {
        // Acquire: see the frames the previous producer committed as committed (we must not
        // overwrite them), including when it was another process.
        let tail = Pos::unpack(ring.word(TAIL).load(Ordering::Acquire));
        // Acquire: pairs with the consumer's Release store of the head, see `push`.
        let head = Pos::unpack(ring.word(HEAD).load(Ordering::Acquire));
        Self { ring, tail, head }
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Appends one message, or fails without side effects.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), PushError> {
        self.push_parts(&[payload])
    }

    /// Appends one message made of `parts` back to back (a header and a body, say, without
    /// first joining them), or fails without side effects.
    pub fn push_parts(&mut self, parts: &[&[u8]]) -> Result<(), PushError> {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > self.ring.max_payload() {
            return Err(PushError::TooLarge);
        }
        // Fits in u32: the payload is at most the capacity, itself at most 2^31.
        let frame = (LEN_PREFIX + len).next_multiple_of(WORD) as u32;
        if !self.tail.bytes.is_multiple_of(WORD as u32) {
            return Err(PushError::Corrupt(Corruption::Misaligned {
                pos: self.tail.bytes,
            }));
        }
        if self.free()? < frame {
            // Acquire: pairs with the consumer's Release store of the head, so its reads of
            // the frames it consumed happen before we overwrite their bytes.
            self.head = Pos::unpack(self.ring.word(HEAD).load(Ordering::Acquire));
            if self.free()? < frame {
                return Err(PushError::Full);
            }
        }
        self.write_frame(len, parts);
        self.tail = self.tail.advance(frame);
        // Release: pairs with the consumer's Acquire load of the tail, so the frame's bytes
        // (stored Relaxed in `write_frame`) are visible before the frame is.
        self.ring
            .word(TAIL)
            .store(self.tail.pack(), Ordering::Release);
        Ok(())
    }

    /// Counts a message the caller gives up on.
    pub fn record_drop(&self) {
        // Relaxed: a counter with one writer, read only as a gauge.
        self.ring.word(DROPPED).fetch_add(1, Ordering::Relaxed);
    }

    fn free(&self) -> Result<u32, PushError> {
        let used = self.tail.bytes.wrapping_sub(self.head.bytes);
        if used > self.ring.capacity {
            return Err(PushError::Corrupt(Corruption::Span {
                used,
                capacity: self.ring.capacity,
            }));
        }
        Ok(self.ring.capacity - used)
    }

    fn write_frame(&self, len: usize, parts: &[&[u8]]) {
        let mut prefix = [0; WORD];
        prefix[..LEN_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
        let (first, wrapped) = self
            .ring
            .data_words(self.tail.bytes, (LEN_PREFIX + len).div_ceil(WORD));
        let mut writer = WordWriter {
            first,
            wrapped,
            word: prefix,
            fill: LEN_PREFIX,
        };
        for part in parts {
            writer.write(part);
        }
        writer.finish();
    }

    /// The ring's counters.
    pub fn status(&self) -> RingStatus {
        self.ring.status()
    }
}

/// Stores a frame's bytes word by word from the frame's start, whatever the slices' bounds.
struct WordWriter<'a> {
    /// The frame's words still to store: up to the end of the data, then from its start.
    first: &'a [AtomicU64],
    wrapped: &'a [AtomicU64],
    /// The word being filled (zero beyond `fill`, so the padding is zero).
    word: [u8; WORD],
    fill: usize,
}

impl WordWriter<'_> {
    fn write(&mut self, mut bytes: &[u8]) {
        if self.fill > 0 {
            let take = bytes.len().min(WORD - self.fill);
            self.word[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill < WORD {
                return;
            }
            self.store(u64::from_le_bytes(self.word));
        }
        // Whole words in tight loops over each part of the frame's words: one load and one
        // store per word.
        let mut chunks = bytes.chunks_exact(WORD);
        for part in [&mut self.first, &mut self.wrapped] {
            let mut stored = 0;
            for (slot, chunk) in part.iter().zip(&mut chunks) {
                let mut word = [0; WORD];
                word.copy_from_slice(chunk);
                // Relaxed data stores: published by the Release store of the tail in
                // `push_parts`.
                slot.store(u64::from_le_bytes(word), Ordering::Relaxed);
                stored += 1;
            }
            *part = &part[stored..];
        }
        let rest = chunks.remainder();
        self.word = [0; WORD];
        self.word[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    fn store(&mut self, word: u64) {
        // The frame's words were counted from its length, which the parts add up to.
        let Some(slot) = next_word(&mut self.first, &mut self.wrapped) else {
            unreachable!("a frame's bytes fill exactly its words")
        };
        // Relaxed data stores: published by the Release store of the tail in `push_parts`.
        slot.store(word, Ordering::Relaxed);
    }

    fn finish(mut self) {
        if self.fill > 0 {
            self.store(u64::from_le_bytes(self.word));
        }
    }
}

/// The reading end of a ring; exactly one may exist per ring.
pub struct Consumer {
    ring: Ring,
    /// Our position: only we write the head word.
    head: Pos,
    /// The producer's position when we last looked; reloaded when we have caught up.
    tail: Pos,
}

impl Consumer {
    /// Takes over the ring's consumer side where the previous consumer (if any) left it.
    pub(crate) fn new(ring: Ring) -> Self {
        // Acquire: the previous consumer's reads are done with (it released the head).
        let head = Pos::unpack(ring.word(HEAD).load(Ordering::Acquire));
        // Acquire: pairs with the producer's Release store, see `pop`.
        let tail = Pos::unpack(ring.word(TAIL).load(Ordering::Acquire));
        Self { ring, head, tail }
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Moves the oldest message into `out` (replacing its contents). `Ok(false)`: empty.
    ///
    /// On corruption the consumer skips everything committed so far (counted in
    /// [`RingStatus::resyncs`]) and the next call carries on with what follows.
    pub fn pop(&mut self, out: &mut Vec<u8>) -> Result<bool, Corruption> {
        if self.head == self.tail {
            // Acquire: pairs with the producer's Release store of the tail, so the bytes
            // of every frame up to it are visible.
            self.tail = Pos::unpack(self.ring.word(TAIL).load(Ordering::Acquire));
            if self.head == self.tail {
                return Ok(false);
            }
        }
        match self.check_frame() {
            Ok((len, frame)) => {
                Record {
                    ring: &self.ring,
                    start: self.head.bytes,
                    len,
                }
                .copy_to_vec(out);
                self.head = self.head.advance(frame);
                // Release: pairs with the producer's Acquire load of the head, so our reads
                // of this frame happen before it reuses the bytes.
                self.ring
                    .word(HEAD)
                    .store(self.head.pack(), Ordering::Release);
                Ok(true)
            }
            Err(corruption) => {
                self.resync();
                Err(corruption)
            }
        }
    }

    /// Lends every message committed so far to `f`, oldest first, where it lies in the ring
    /// (no copy into a buffer), then frees their space at once. Returns how many there were.
    ///
    /// On corruption the consumer skips everything committed so far (counted in
    /// [`RingStatus::resyncs`]); the messages lent before it stay consumed.
    pub fn drain(&mut self, mut f: impl FnMut(Record<'_>)) -> Result<usize, Corruption> {
        // Acquire: pairs with the producer's Release store of the tail, so the bytes of every
        // frame up to it are visible.
        self.tail = Pos::unpack(self.ring.word(TAIL).load(Ordering::Acquire));
        let mut count = 0;
        while self.head != self.tail {
            match self.check_frame() {
                Ok((len, frame)) => {
                    f(Record {
                        ring: &self.ring,
                        start: self.head.bytes,
                        len,
                    });
                    self.head = self.head.advance(frame);
                    count += 1;
                }
                Err(corruption) => {
                    self.resync();
                    return Err(corruption);
                }
            }
        }
        if count > 0 {
            // Release: pairs with the producer's Acquire load of the head, so `f`'s reads of
            // these frames happen before it reuses the bytes.
            self.ring
                .word(HEAD)
                .store(self.head.pack(), Ordering::Release);
        }
        Ok(count)
    }

    /// Counts a consumed message that its reader could not make sense of.
    pub fn record_undecodable(&self) {
        // Relaxed: a counter with one writer, read only as a gauge.
        self.ring.word(UNDECODABLE).fetch_add(1, Ordering::Relaxed);
    }

    /// The ring's counters.
    pub fn status(&self) -> RingStatus {
        self.ring.status()
    }

    /// Checks the frame at the head; returns its payload length and its frame length.
    fn check_frame(&self) -> Result<(u32, u32), Corruption> {
        let (head, tail) = (self.head, self.tail);
        for pos in [head.bytes, tail.bytes] {
            if !pos.is_multiple_of(WORD as u32) {
                return Err(Corruption::Misaligned { pos });
            }
        }
        let used = tail.bytes.wrapping_sub(head.bytes);
        let capacity = self.ring.capacity;
        if used > capacity {
            return Err(Corruption::Span { used, capacity });
        }
        let messages = tail.count.wrapping_sub(head.count);
        if used == 0 || messages == 0 || messages > used / WORD as u32 {
            return Err(Corruption::Count {
                messages,
                bytes: used,
            });
        }
        // Relaxed data loads: ordered by the Acquire load of the tail in `pop` or `drain`.
        let prefix = self
            .ring
            .data_word(head.bytes)
            .load(Ordering::Relaxed)
            .to_le_bytes();
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let frame = u64::from(len)
            .saturating_add(LEN_PREFIX as u64)
            .next_multiple_of(WORD as u64);
        if len as usize > self.ring.max_payload() || frame > u64::from(used) {
            return Err(Corruption::FrameLength {
                len,
                available: used,
            });
        }
        Ok((len, frame as u32))
    }

    /// Skips to the producer's current tail.
    fn resync(&mut self) {
        // Acquire: as in `pop`; everything before this tail is discarded unread.
        self.tail = Pos::unpack(self.ring.word(TAIL).load(Ordering::Acquire));
        self.head = self.tail;
        // Release: as in `pop` (nothing was read, but the producer may now reuse the space).
        self.ring
            .word(HEAD)
            .store(self.head.pack(), Ordering::Release);
        // Relaxed: a counter with one writer.
        self.ring.word(RESYNCS).fetch_add(1, Ordering::Relaxed);
    }
}

/// One message lent by [`Consumer::drain`], read where it lies in the ring. Its bytes may
/// wrap past the end of the ring's data, so it is read by copying ranges out of it.
pub struct Record<'a> {
    ring: &'a Ring,
    /// Position of the frame (its length prefix).
    start: u32,
    len: u32,
}

/// A read past the end of a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bytes {start}..{end} of a {len}-byte record")]
pub struct OutOfRecord {
    /// First byte asked for.
    pub start: usize,
    /// End of the range asked for.
    pub end: usize,
    /// The record's length.
    pub len: usize,
}

impl Record<'_> {
    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the message's bytes from `offset` into all of `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfRecord> {
        let end = offset.saturating_add(dst.len());
        if end > self.len() {
            return Err(OutOfRecord {
                start: offset,
                end,
                len: self.len(),
            });
        }
        if dst.is_empty() {
            return Ok(());
        }
        // Offset from the frame's start; fits in u32, as the frame fits in the ring.
        let at = LEN_PREFIX + offset;
        let within = at % WORD;
        let (mut first, mut wrapped) = self.ring.data_words(
            self.start.wrapping_add((at - within) as u32),
            (within + dst.len()).div_ceil(WORD),
        );
        let mut dst = dst;
        // The end of a word the range starts inside.
        if within != 0 {
            let word = take_word(&mut first, &mut wrapped);
            let take = (WORD - within).min(dst.len());
            let (head, rest) = dst.split_at_mut(take);
            head.copy_from_slice(&word[within..within + take]);
            dst = rest;
        }
        // Whole words in tight loops over each part, one load and one 8-byte store each (a
        // copy of a length known only at run time would be a call per word).
        for part in [&mut first, &mut wrapped] {
            let mut chunks = dst.chunks_exact_mut(WORD);
            let mut copied = 0;
            for (chunk, word) in (&mut chunks).zip(part.iter()) {
                // Relaxed data loads: ordered by the consumer's Acquire load of the tail.
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                copied += 1;
            }
            *part = &part[copied..];
            dst = &mut dst[copied * WORD..];
        }
        // The start of the last word.
        if !dst.is_empty() {
            let word = take_word(&mut first, &mut wrapped);
            dst.copy_from_slice(&word[..dst.len()]);
        }
        Ok(())
    }

    /// The `N` bytes from `offset`.
    pub fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], OutOfRecord> {
        let mut bytes = [0; N];
        self.read(offset, &mut bytes)?;
        Ok(bytes)
    }

    /// Replaces the contents of `out` with the message's bytes from `offset` on.
    pub fn copy_suffix_to_vec(&self, offset: usize, out: &mut Vec<u8>) -> Result<(), OutOfRecord> {
        let Some(len) = self.len().checked_sub(offset) else {
            return Err(OutOfRecord {
                start: offset,
                end: offset,
                len: self.len(),
            });
        };
        out.clear();
        out.resize(len, 0);
        self.read(offset, out)
    }

    /// Replaces the contents of `out` with the message.
    pub fn copy_to_vec(&self, out: &mut Vec<u8>) {
        out.clear();
        out.resize(self.len(), 0);
        // In range by construction.
        let _ = self.read(0, out);
    }
}

/// Takes the next of a frame's words: from `first`, then from `wrapped` (the part past the
/// end of the data). The producer stores and the consumer loads through it.
fn next_word<'a>(
    first: &mut &'a [AtomicU64],
    wrapped: &mut &'a [AtomicU64],
) -> Option<&'a AtomicU64> {
    let part = if first.is_empty() { wrapped } else { first };
    let (word, rest) = part.split_first()?;
    *part = rest;
    Some(word)
}

/// The next of a frame's words as bytes; zeros past its end, which its callers never reach
/// (a record's words are counted from its length).
fn take_word<'a>(first: &mut &'a [AtomicU64], wrapped: &mut &'a [AtomicU64]) -> [u8; WORD] {
    // Relaxed data loads: ordered by the consumer's Acquire load of the tail.
    next_word(first, wrapped).map_or([0; WORD], |word| word.load(Ordering::Relaxed).to_le_bytes())
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").field("len", &self.len).finish()
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::mem::memfd;

    const DATA: usize = 256;

    fn ring(capacity: u32) -> Ring {
        let len = DATA + capacity as usize;
        let file = memfd(c"ring-test").unwrap();
        file.set_len(len as u64).unwrap();
        let mem = Arc::new(Mem::map(file, len).unwrap());
        Ring::new(
            mem,
            RingRegion {
                control: 0,
                data: DATA,
                capacity,
            },
        )
    }

    fn poke(ring: &Ring, word: usize, value: u64) {
        ring.word(word).store(value, Ordering::SeqCst);
    }

    fn payload(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed * 7 + 1) as u8).collect()
    }

    fn frame(len: usize) -> usize {
        (LEN_PREFIX + len).next_multiple_of(WORD)
    }

    #[test]
    fn wraps_around_many_times_in_order() {
        let ring = ring(64);
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        let mut model = VecDeque::new();
        let mut used = 0;
        let mut out = Vec::new();
        // A fixed pseudo-random mix of pushes and pops of 0..=28-byte messages: ~2000
        // frames through a 64-byte ring wrap it hundreds of times, at every offset.
        let mut state = 0x2545_f491_u32;
        for i in 0..4000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if !state.is_multiple_of(3) {
                let message = payload(i % 29, i);
                let fits = used + frame(message.len()) <= 64;
                match producer.push(&message) {
                    Ok(()) => {
                        assert!(fits, "push {i} succeeded in a full ring");
                        used += frame(message.len());
                        model.push_back(message);
                    }
                    Err(PushError::Full) => assert!(!fits, "push {i} refused with room"),
                    Err(other) => panic!("push {i}: {other:?}"),
                }
            } else {
                let got = consumer.pop(&mut out).unwrap();
                match model.pop_front() {
                    Some(expected) => {
                        assert!(got);
                        assert_eq!(out, expected, "message {i}");
                        used -= frame(expected.len());
                    }
                    None => assert!(!got),
                }
            }
            let status = ring.status();
            assert_eq!(status.depth_bytes as usize, used);
            assert_eq!(status.depth_messages as usize, model.len());
        }
        assert!(
            ring.status().committed > 1000,
            "the mix must exercise the ring"
        );
    }

    #[test]
    fn full_ring_refuses_until_the_consumer_frees_space() {
        let ring = ring(64);
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        for n in 0..8u8 {
            producer.push(&[n; 4]).unwrap(); // 8-byte frames: eight fill the ring
        }
        assert_eq!(producer.push(&[]), Err(PushError::Full));
        assert_eq!(producer.push(&[9; 4]), Err(PushError::Full));
        let status = ring.status();
        assert_eq!((status.depth_bytes, status.depth_messages), (64, 8));
        let mut out = Vec::new();
        assert!(consumer.pop(&mut out).unwrap());
        assert_eq!(out, [0; 4]);
        // One 8-byte frame free: a 5-byte payload (a 16-byte frame) still does not fit.
        assert_eq!(producer.push(&[9; 5]), Err(PushError::Full));
        producer.push(&[9; 4]).unwrap();
        for n in (1..8u8).chain([9]) {
            assert!(consumer.pop(&mut out).unwrap());
            assert_eq!(out, [n; 4]);
        }
        assert!(!consumer.pop(&mut out).unwrap());
    }

    #[test]
    fn every_size_up_to_the_max_at_every_offset() {
        let capacity = 4096;
        let ring = ring(capacity);
        let max = ring.max_payload();
        assert_eq!(max, 4092);
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        let mut out = Vec::new();
        for len in 0..=max {
            // A one-word frame first moves the start of the next frame by 8 bytes each
            // round, so sizes meet the end of the data at every offset.
            producer.push(b"x").unwrap();
            assert!(consumer.pop(&mut out).unwrap());
            let message = payload(len, len);
            producer.push(&message).unwrap();
            assert!(consumer.pop(&mut out).unwrap());
            assert_eq!(out, message, "length {len}");
        }
        assert_eq!(
            producer.push(&payload(max + 1, 0)),
            Err(PushError::TooLarge)
        );
        // Not empty: the largest message no longer fits, the largest that does still does.
        producer.push(b"x").unwrap();
        assert_eq!(producer.push(&payload(max, 0)), Err(PushError::Full));
        producer.push(&payload(max - WORD, 1)).unwrap();
        assert_eq!(ring.status().depth_bytes, capacity);
    }

    #[test]
    fn positions_and_counts_wrap_at_u32() {
        let ring = ring(64);
        let start = Pos {
            count: u32::MAX - 1,
            bytes: u32::MAX - 15,
        };
        poke(&ring, TAIL, start.pack());
        poke(&ring, HEAD, start.pack());
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        let mut out = Vec::new();
        for i in 0..10 {
            producer.push(&payload(i, i)).unwrap();
            producer.push(&payload(10, i)).unwrap();
            let status = ring.status();
            let depth = frame(i) + frame(10);
            assert_eq!(
                (status.depth_messages, status.depth_bytes as usize),
                (2, depth)
            );
            assert!(consumer.pop(&mut out).unwrap());
            assert_eq!(out, payload(i, i));
            assert!(consumer.pop(&mut out).unwrap());
            assert_eq!(out, payload(10, i));
        }
        let status = ring.status();
        assert_eq!(status.committed, 18, "20 messages after u32::MAX - 1");
        assert_eq!(status.consumed, 18);
        assert_eq!(status.depth_messages, 0);
    }

    #[test]
    fn counters_are_visible_to_observers() {
        let ring = ring(64);
        let producer = Producer::new(ring.clone());
        let consumer = Consumer::new(ring.clone());
        producer.record_drop();
        producer.record_drop();
        consumer.record_undecodable();
        let status = ring.status();
        assert_eq!(
            (
                status.dropped,
                status.undecodable,
                status.resyncs,
                status.capacity_bytes
            ),
            (2, 1, 0, 64)
        );
    }

    #[test]
    fn corrupt_indices_and_lengths_are_reported_then_skipped() {
        let pos = |count, bytes| Pos { count, bytes }.pack();
        let cases = [
            (
                "span",
                pos(1, 72),
                None,
                Corruption::Span {
                    used: 72,
                    capacity: 64,
                },
            ),
            (
                "misaligned",
                pos(1, 12),
                None,
                Corruption::Misaligned { pos: 12 },
            ),
            (
                "count",
                pos(0, 16),
                None,
                Corruption::Count {
                    messages: 0,
                    bytes: 16,
                },
            ),
            (
                "too many",
                pos(3, 16),
                None,
                Corruption::Count {
                    messages: 3,
                    bytes: 16,
                },
            ),
            (
                "length",
                pos(1, 16),
                Some(13),
                Corruption::FrameLength {
                    len: 13,
                    available: 16,
                },
            ),
            (
                "huge length",
                pos(1, 64),
                Some(u64::from(u32::MAX)),
                Corruption::FrameLength {
                    len: u32::MAX,
                    available: 64,
                },
            ),
        ];
        for (name, tail, len, expected) in cases {
            let ring = ring(64);
            poke(&ring, TAIL, tail);
            if let Some(len) = len {
                ring.data_word(0).store(len, Ordering::SeqCst);
            }
            let mut consumer = Consumer::new(ring.clone());
            let mut out = Vec::new();
            assert_eq!(consumer.pop(&mut out), Err(expected), "{name}");
            assert_eq!(ring.status().resyncs, 1, "{name}");
            assert_eq!(ring.status().depth_messages, 0, "{name}");
            if name == "misaligned" {
                continue; // the producer's own tail is broken: nothing can be sent
            }
            let mut producer = Producer::new(ring.clone());
            producer.push(b"after").unwrap();
            assert_eq!(consumer.pop(&mut out), Ok(true), "{name}");
            assert_eq!(out, b"after");
        }
    }

    #[test]
    fn producer_refuses_a_corrupt_head() {
        let ring = ring(64);
        poke(&ring, HEAD, Pos { count: 0, bytes: 8 }.pack()); // head ahead of tail
        let mut producer = Producer::new(ring);
        let error = producer.push(&[0; 60]).unwrap_err();
        assert!(
            matches!(error, PushError::Corrupt(Corruption::Span { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn successors_resume_and_never_see_an_uncommitted_frame() {
        let ring = ring(64);
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        let mut out = Vec::new();
        producer.push(b"first").unwrap();
        producer.push(b"second").unwrap();
        assert!(consumer.pop(&mut out).unwrap());
        drop(consumer);
        // A producer killed mid-write leaves bytes past the tail, but no tail store.
        ring.data_word(32)
            .store(u64::from(4u32) | 0xdead_beef << 32, Ordering::SeqCst);
        drop(producer);

        let mut consumer = Consumer::new(ring.clone());
        assert!(consumer.pop(&mut out).unwrap());
        assert_eq!(out, b"second");
        assert!(
            !consumer.pop(&mut out).unwrap(),
            "the half-written frame is invisible"
        );

        let mut producer = Producer::new(ring.clone());
        producer.push(b"third").unwrap();
        assert!(consumer.pop(&mut out).unwrap());
        assert_eq!(out, b"third");
        assert_eq!(ring.status().committed, 3);
    }
    #[test]
    fn gathered_messages_drain_in_place_across_the_wrap() {
        let (mut producer, mut consumer) = private_ring(64).unwrap();
        let mut model = VecDeque::new();
        let mut state = 0x9e37_79b9_u32;
        let mut lent = 0;
        for i in 0..3000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let message = payload(i % 41, i);
            // Split at two pseudo-random points: empty parts and parts that end mid-word.
            let a = state as usize % (message.len() + 1);
            let b = a + (state as usize >> 8) % (message.len() - a + 1);
            let parts = [&message[..a], &message[a..b], &[][..], &message[b..]];
            match producer.push_parts(&parts) {
                Ok(()) => model.push_back(message),
                Err(PushError::Full) => {}
                Err(other) => panic!("push {i}: {other:?}"),
            }
            if state.is_multiple_of(3) {
                let drained = consumer
                    .drain(|record| {
                        let expected = model.pop_front().expect("a pushed message");
                        assert_eq!(record.len(), expected.len());
                        let mut whole = Vec::new();
                        record.copy_to_vec(&mut whole);
                        assert_eq!(whole, expected, "message {i}");
                        // Any range, read where it lies.
                        let from = expected.len() / 3;
                        let mut part = vec![0; expected.len() - from - expected.len() / 4];
                        record.read(from, &mut part).unwrap();
                        assert_eq!(part, expected[from..from + part.len()]);
                        lent += 1;
                    })
                    .unwrap();
                assert!(drained <= 8);
                assert_eq!(consumer.status().depth_messages, 0);
            }
        }
        assert!(lent > 1000, "the mix must exercise the ring: {lent}");
        // Wider than the ring in total, but each message fits once drained.
        producer.push_parts(&[&[1; 30], &[2; 30]]).unwrap();
        assert_eq!(
            producer.push_parts(&[&[1; 30], &[2; 31]]),
            Err(PushError::TooLarge)
        );
    }

    /// Every range of records that start at every offset of a small ring, and so wrap at every
    /// point: the word loops' first, whole and last words, on both sides of the wrap.
    #[test]
    fn every_range_of_a_record_reads_right_across_the_wrap() {
        let (mut producer, mut consumer) = private_ring(128).unwrap();
        for round in 0..64 {
            // Moves the next record's start by one word each round.
            producer.push(b"").unwrap();
            consumer.drain(|_| {}).unwrap();
            let message = payload(61 + round % 3, round);
            let (a, b) = (round % 13, 20 + round % 29);
            producer
                .push_parts(&[&message[..a], &message[a..b], &message[b..]])
                .unwrap();
            let drained = consumer
                .drain(|record| {
                    for from in 0..=message.len() {
                        for len in 0..=message.len() - from {
                            let mut part = vec![0xee; len];
                            record.read(from, &mut part).unwrap();
                            assert_eq!(part, message[from..from + len], "round {round}");
                        }
                    }
                })
                .unwrap();
            assert_eq!(drained, 1);
        }
    }

    #[test]
    fn records_refuse_reads_past_their_end() {
        let (mut producer, mut consumer) = private_ring(64).unwrap();
        producer.push_parts(&[b"head", b"er", b"body"]).unwrap();
        let count = consumer
            .drain(|record| {
                assert_eq!(record.array::<6>(0), Ok(*b"header"));
                assert_eq!(record.array::<4>(6), Ok(*b"body"));
                let mut out = Vec::new();
                record.copy_suffix_to_vec(6, &mut out).unwrap();
                assert_eq!(out, b"body");
                record.copy_suffix_to_vec(10, &mut out).unwrap();
                assert!(out.is_empty());
                assert_eq!(
                    record.array::<4>(7),
                    Err(OutOfRecord {
                        start: 7,
                        end: 11,
                        len: 10
                    })
                );
                assert!(record.copy_suffix_to_vec(11, &mut out).is_err());
                assert!(record.read(usize::MAX, &mut [0]).is_err());
            })
            .unwrap();
        assert_eq!(count, 1);
        assert_eq!(consumer.drain(|_| panic!("empty")), Ok(0));
    }

    #[test]
    fn drain_reports_corruption_and_resumes_after_it() {
        let ring = ring(64);
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring.clone());
        producer.push(b"kept").unwrap();
        assert_eq!(consumer.drain(|_| {}), Ok(1));
        // A length prefix claiming more than was committed.
        producer.push(b"x").unwrap();
        ring.data_word(8).store(40, Ordering::SeqCst);
        assert_eq!(
            consumer.drain(|_| panic!("a corrupt frame was lent")),
            Err(Corruption::FrameLength {
                len: 40,
                available: 8
            })
        );
        assert_eq!(ring.status().resyncs, 1);
        producer.push(b"after").unwrap();
        let mut seen = Vec::new();
        assert_eq!(consumer.drain(|r| r.copy_to_vec(&mut seen)), Ok(1));
        assert_eq!(seen, b"after");
    }

    #[test]
    fn private_rings_need_a_power_of_two_capacity() {
        for bad in [0, 4, 12, 100, u32::MAX] {
            let error = private_ring(bad).err().expect("refused");
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
        let (producer, _consumer) = private_ring(1 << 12).unwrap();
        assert_eq!(producer.status().capacity_bytes, 4096);
    }

    /// A ring is a fixed reservation: all of it is resident from the start, so the process's
    /// resident size does not grow page by page as traffic first reaches each part of it.
    #[test]
    fn a_private_ring_is_resident_from_the_start() {
        let capacity = 1 << 20;
        let (producer, _consumer) = private_ring(capacity).unwrap();
        let (resident, pages) = producer.ring().mem.resident_pages().unwrap();
        assert!(pages >= (capacity as usize).div_ceil(64 << 10));
        assert_eq!(resident, pages);
    }
}
