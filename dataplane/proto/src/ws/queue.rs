//! The bounded outbound queue of one session: a byte ring plus a ring of frame entries, both
//! allocated once, so queueing a frame never allocates.
//!
//! Frames are stored back to back in the byte ring (wrapping at its end). When a new frame
//! does not fit, in bytes or in count, the oldest frames are dropped until it does (head
//! drop: fresh packets win). A frame the shell has started to read is pinned — dropping it
//! would corrupt the byte stream — so the drop skips it and takes the next-oldest; its bytes
//! stay reserved (as part of the pinned entry's span) until the pinned frame is read out.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset of the frame's first byte in the ring.
    start: usize,
    /// Frame length.
    len: usize,
    /// Bytes this entry holds reserved: its length plus the bytes of later entries dropped
    /// while it was pinned.
    span: usize,
}

/// Outcome of [`OutQueue::push_parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Whether the new frame was queued (it is not when only a pinned frame is left and
    /// there is still no room, or when it exceeds the whole ring).
    pub(crate) queued: bool,
    /// Older frames dropped to make room.
    pub(crate) dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    ring: Box<[u8]>,
    entries: VecDeque<Entry>,
    max_frames: usize,
    /// Sum of the entries' spans.
    used: usize,
    /// Bytes of the front entry already read out.
    sent: usize,
}

impl OutQueue {
    /// An unallocated queue: holds nothing until [`allocate`](Self::allocate).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Allocates the storage: `bytes` of ring and room for `frames` entries.
    pub(crate) fn allocate(&mut self, bytes: usize, frames: usize) {
        self.ring = vec![0; bytes].into_boxed_slice();
        self.entries = VecDeque::with_capacity(frames);
        self.max_frames = frames;
        self.used = 0;
        self.sent = 0;
    }

    /// Frames queued, the partially read one included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a frame has been partially read out.
    pub(crate) const fn is_mid_frame(&self) -> bool {
        self.sent > 0
    }

    /// Queues a copy of `frame`, dropping the oldest unpinned frames as needed.
    #[cfg(test)]
    pub(crate) fn push(&mut self, frame: &[u8]) -> Pushed {
        self.push_parts(&[frame])
    }

    /// Queues one frame made of `parts` back to back (a header and a body that live apart),
    /// copied straight into the ring, dropping the oldest unpinned frames as needed.
    pub(crate) fn push_parts(&mut self, parts: &[&[u8]]) -> Pushed {
        let cap = self.ring.len();
        let need: usize = parts.iter().map(|part| part.len()).sum();
        let mut dropped = 0;
        if need > cap || self.max_frames == 0 {
            return Pushed {
                queued: false,
                dropped,
            };
        }
        while self.entries.len() >= self.max_frames || self.used + need > cap {
            if self.sent == 0 {
                if let Some(oldest) = self.entries.pop_front() {
                    self.used -= oldest.span;
                    dropped += 1;
                    continue;
                }
            } else if let Some(next) = self.entries.remove(1) {
                let only_pinned_left = self.entries.len() == 1;
                if let Some(pinned) = self.entries.front_mut() {
                    if only_pinned_left {
                        // Nothing lives after the pinned frame any more: every hole is free.
                        pinned.span = pinned.len;
                        self.used = pinned.len;
                    } else {
                        pinned.span += next.span;
                    }
                }
                dropped += 1;
                continue;
            }
            return Pushed {
                queued: false,
                dropped,
            };
        }
        let start = self
            .entries
            .front()
            .map_or(0, |front| (front.start + self.used) % cap);
        let mut at = start;
        for part in parts {
            let first = part.len().min(cap - at);
            self.ring[at..at + first].copy_from_slice(&part[..first]);
            let rest = part.len() - first;
            self.ring[..rest].copy_from_slice(&part[first..]);
            at = if rest > 0 { rest } else { (at + first) % cap };
        }
        self.entries.push_back(Entry {
            start,
            len: need,
            span: need,
        });
        self.used += need;
        Pushed {
            queued: true,
            dropped,
        }
    }

    /// Copies the next bytes of the front frame (only that frame) into `out`; returns how
    /// many. 0 when the queue is empty or `out` is.
    pub(crate) fn read_front(&mut self, out: &mut [u8]) -> usize {
        let Some(&front) = self.entries.front() else {
            return 0;
        };
        let cap = self.ring.len();
        let take = (front.len - self.sent).min(out.len());
        let pos = (front.start + self.sent) % cap;
        let first = take.min(cap - pos);
        out[..first].copy_from_slice(&self.ring[pos..pos + first]);
        out[first..take].copy_from_slice(&self.ring[..take - first]);
        self.sent += take;
        if self.sent == front.len {
            self.entries.pop_front();
            self.used -= front.span;
            self.sent = 0;
        }
        take
    }

    /// Drops every frame not yet started; returns how many.
    pub(crate) fn clear_unsent(&mut self) -> u64 {
        let keep = usize::from(self.sent > 0);
        let dropped = self.entries.len().saturating_sub(keep);
        self.entries.truncate(keep);
        self.used = 0;
        if let Some(pinned) = self.entries.front_mut() {
            pinned.span = pinned.len;
            self.used = pinned.len;
        }
        dropped as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut OutQueue, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = queue.read_front(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn unallocated_queue_refuses() {
        let mut queue = OutQueue::new();
        assert!(!queue.push(b"x").queued);
        assert_eq!(queue.read_front(&mut [0; 4]), 0);
    }

    #[test]
    fn fifo_with_wraparound() {
        let mut queue = OutQueue::new();
        queue.allocate(10, 8);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for i in 0..50u8 {
            let frame = [i, i, i];
            assert_eq!(
                queue.push(&frame),
                Pushed {
                    queued: true,
                    dropped: 0
                }
            );
            expected.extend_from_slice(&frame);
            if i % 3 == 2 {
                got.extend(drain(&mut queue, 2));
            }
        }
        got.extend(drain(&mut queue, 7));
        assert_eq!(got, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn parts_make_one_frame_across_the_wrap() {
        let mut queue = OutQueue::new();
        queue.allocate(10, 8);
        let mut got = Vec::new();
        let mut expected = Vec::new();
        for i in 0..40u8 {
            // Every split of a 3-byte frame, wrapping at every offset of the ring.
            let frame = [i, i.wrapping_add(1), i.wrapping_add(2)];
            let split = usize::from(i % 4);
            let (head, body) = frame.split_at(split.min(3));
            let pushed = queue.push_parts(&[head, &[], body]);
            assert!(pushed.queued && pushed.dropped == 0);
            expected.extend_from_slice(&frame);
            got.extend(drain(&mut queue, 2));
        }
        assert_eq!(got, expected);
        queue.push_parts(&[b"abcd", b"efgh"]);
        let pushed = queue.push_parts(&[b"ij", b"k"]);
        assert_eq!(pushed.dropped, 1, "8 + 3 bytes do not fit in 10");
        assert_eq!(drain(&mut queue, 64), b"ijk");
        assert!(
            !queue.push_parts(&[b"abcdef", b"ghijk"]).queued,
            "larger than the ring"
        );
    }

    #[test]
    fn drops_oldest_by_bytes_and_by_count() {
        let mut queue = OutQueue::new();
        queue.allocate(10, 3);
        queue.push(b"aaaa");
        queue.push(b"bbbb");
        let pushed = queue.push(b"cccc");
        assert_eq!(pushed.dropped, 1, "12 bytes do not fit in 10");
        assert_eq!(drain(&mut queue, 64), b"bbbbcccc");
        for frame in [b"d", b"e", b"f", b"g"] {
            queue.push(frame);
        }
        assert_eq!(queue.len(), 3);
        assert_eq!(drain(&mut queue, 64), b"efg");
        assert!(!queue.push(&[0; 11]).queued, "larger than the ring");
    }

    #[test]
    fn pinned_frame_survives_drops() {
        let mut queue = OutQueue::new();
        queue.allocate(12, 8);
        queue.push(b"aaaa");
        queue.push(b"bbbb");
        queue.push(b"cccc");
        let mut buf = [0u8; 2];
        assert_eq!(queue.read_front(&mut buf), 2);
        assert!(queue.is_mid_frame());
        // Needs 4 bytes: "aaaa" is pinned, so "bbbb" goes; its bytes stay reserved while
        // "cccc" lives after them, so "cccc" goes too, which frees both.
        let pushed = queue.push(b"dddd");
        assert_eq!(
            pushed,
            Pushed {
                queued: true,
                dropped: 2
            }
        );
        assert_eq!(drain(&mut queue, 3), b"aadddd");
        // Only a pinned frame left and still no room: the new frame is refused.
        queue.push(b"eeeeeeeeeeee");
        assert_eq!(queue.read_front(&mut buf), 2);
        let pushed = queue.push(b"ffff");
        assert_eq!(
            pushed,
            Pushed {
                queued: false,
                dropped: 0
            }
        );
        assert_eq!(drain(&mut queue, 5), b"eeeeeeeeee");
    }

    #[test]
    fn clear_keeps_the_pinned_frame() {
        let mut queue = OutQueue::new();
        queue.allocate(32, 8);
        queue.push(b"aaaa");
        queue.push(b"bbbb");
        assert_eq!(queue.clear_unsent(), 2);
        queue.push(b"cccc");
        queue.read_front(&mut [0; 1]);
        assert_eq!(queue.clear_unsent(), 0);
        assert_eq!(drain(&mut queue, 8), b"ccc");
        queue.push(b"dd");
        assert_eq!(drain(&mut queue, 8), b"dd");
    }
}
