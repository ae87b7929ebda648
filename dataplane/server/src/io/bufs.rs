//! Worker-owned packet buffers: one allocation of fixed-size slots, handed out as move-only
//! [`BufId`] tokens.
//!
//! # Slot layout
//!
//! ```text
//! 0          CONTROL_LEN (24)   RX_START (72)                SLOT_SIZE - TAILROOM   SLOT_SIZE
//! |  control  |  headroom (48)   |  payload (at most MAX_PAYLOAD)  ...  |  tailroom (4)  |
//! ```
//!
//! Both backends receive the payload at [`RX_START`], behind room for the receive's control
//! data (io_uring writes it into the slot; see the [parent module](super)) and [`HEADROOM`]
//! bytes, so the protocol core can write an encapsulation header in front of it (and up to [`TAILROOM`] bytes of padding after it)
//! without moving the payload. A reply the core writes from scratch uses a whole slot as its
//! output buffer.
//!
//! # Ownership
//!
//! A slot is always in exactly one place: the free list, the kernel (an io_uring buffer ring
//! or an in-flight send), or the worker's hands as a [`BufId`]. `BufId` is neither `Copy` nor
//! `Clone`, so the worker cannot send a slot twice or use it after handing it back; the backend
//! re-creates the token when the kernel returns the slot. No Rust reference ever covers a slot
//! the kernel may be writing: slices are made from the raw base pointer, per slot, only for
//! slots the caller holds a token for.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use super::RX_START;
#[cfg(doc)]
use super::{CONTROL_LEN, HEADROOM};

/// Size of one buffer slot. 2 KiB holds a full 1500-byte Ethernet MTU datagram plus
/// [`RX_START`] and [`TAILROOM`] with room to spare, and keeps a 1024-slot pool at 2 MiB per
/// worker. Larger datagrams (jumbo frames) are truncated by the kernel and dropped as
/// `rx_truncated`.
pub(crate) const SLOT_SIZE: usize = 2048;

/// Bytes kept free after the largest payload: the core may pad a Data indication's DATA
/// attribute to a multiple of 4 in place ([RFC 8489 §14]: at most 3 bytes).
///
/// [RFC 8489 §14]: https://www.rfc-editor.org/rfc/rfc8489#section-14
pub(crate) const TAILROOM: usize = 4;

/// The largest payload a slot receives.
pub(crate) const MAX_PAYLOAD: usize = SLOT_SIZE - RX_START - TAILROOM;

/// Slot ids are the io_uring buffer ids, which are 16-bit.
pub(crate) const MAX_SLOTS: usize = 1 << 15;

/// Exclusive ownership of one slot of a [`BufPool`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BufId(u16);

impl BufId {
    /// Re-creates the token for a slot the kernel handed back (a provided-buffer id or the
    /// index carried in a send's user data). Only a backend may do this, and only once per
    /// return.
    pub(super) const fn from_kernel(index: u16) -> Self {
        Self(index)
    }

    /// The slot index (the io_uring buffer id).
    pub(crate) const fn index(&self) -> u16 {
        self.0
    }
}

/// Fixed pool of [`SLOT_SIZE`] buffers in one page-aligned allocation.
pub(crate) struct BufPool {
    base: NonNull<u8>,
    layout: Layout,
    count: usize,
    /// Slots owned by nobody. Pre-sized to `count`, so freeing never allocates.
    free: Vec<u16>,
}

impl BufPool {
    /// A pool of `count` zeroed slots, all free.
    ///
    /// # Panics
    ///
    /// If `count` is 0 or above [`MAX_SLOTS`] (the config is validated before this).
    pub(crate) fn new(count: usize) -> Self {
        assert!(
            (1..=MAX_SLOTS).contains(&count),
            "pool size {count} out of range"
        );
        let layout = Layout::from_size_align(count * SLOT_SIZE, 4096)
            .unwrap_or_else(|_| unreachable!("at most 64 MiB, page-aligned"));
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout);
        };
        let free = (0..count)
            .rev()
            .map(|i| u16::try_from(i).unwrap_or_else(|_| unreachable!("count <= MAX_SLOTS")))
            .collect();
        Self {
            base,
            layout,
            count,
            free,
        }
    }

    /// Takes a free slot, if any.
    pub(crate) fn alloc(&mut self) -> Option<BufId> {
        self.free.pop().map(BufId)
    }

    /// Returns a slot to the free list.
    pub(crate) fn free(&mut self, buf: BufId) {
        debug_assert!(self.free.len() < self.count, "slot freed twice");
        self.free.push(buf.0);
    }

    /// Number of free slots.
    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }

    /// The whole slot, mutable.
    pub(crate) fn slot_mut(&mut self, buf: &BufId) -> &mut [u8] {
        // SAFETY: the token proves exclusive ownership of the slot, so no other reference and
        // no kernel operation covers it; `&mut self` ties the slice to the pool's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(buf.0), SLOT_SIZE) }
    }

    /// Two distinct slots: a received packet and a scratch output buffer.
    pub(crate) fn pair_mut(&mut self, a: &BufId, b: &BufId) -> (&mut [u8], &mut [u8]) {
        assert_ne!(a.0, b.0, "two tokens for one slot");
        // SAFETY: as in `slot_mut`; the slots are distinct, so the slices do not overlap.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.slot_ptr(a.0), SLOT_SIZE),
                std::slice::from_raw_parts_mut(self.slot_ptr(b.0), SLOT_SIZE),
            )
        }
    }

    /// Start of slot `index`, for handing to the kernel.
    pub(crate) fn slot_ptr(&self, index: u16) -> *mut u8 {
        let index = usize::from(index);
        assert!(index < self.count, "slot {index} out of range");
        // SAFETY: in bounds of the allocation.
        unsafe { self.base.as_ptr().add(index * SLOT_SIZE) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_and_recycled() {
        let mut pool = BufPool::new(4);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(pool.free_len(), 2);
        let (sa, sb) = pool.pair_mut(&a, &b);
        sa.fill(1);
        sb.fill(2);
        assert!(pool.slot_mut(&a).iter().all(|&x| x == 1));
        assert_eq!(pool.slot_mut(&b).len(), SLOT_SIZE);
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.free_len(), 4);
        assert_eq!(pool.slot_ptr(0) as usize % 4096, 0);
    }

    #[test]
    fn headroom_and_tailroom_fit() {
        const { assert!(RX_START + MAX_PAYLOAD + TAILROOM == SLOT_SIZE) };
        const { assert!(MAX_PAYLOAD >= 1500) };
    }
}
