//! [`PortTable`]: the host's relay ports, one lock-free slot per port, shared by every worker's
//! [`Server`](super::Server).
//!
//! # Why one table for the host
//!
//! An RTP/RTCP client sends an Allocate with EVEN-PORT R=1 from one socket, then allocates
//! the reserved port with RESERVATION-TOKEN from another ([RFC 8656 §7.2], [§14.9]). The
//! kernel's SO_REUSEPORT hash spreads 4-tuples over the workers, so the second Allocate may
//! reach another worker than the reservation: only a host-wide table lets any worker find
//! the reserved port. It also replaces the disjoint per-worker slices of the port range, so
//! one busy worker can use every free port.
//!
//! # Slots
//!
//! One `AtomicU64` per port of the range, 8 bytes each (128 KiB for the whole port space):
//!
//! ```text
//! | state (16)      | secret (48) |
//! | 0 FREE          | 0           |
//! | 1 ALLOCATED     | 0           | an allocation holds it (or its shell is binding it)
//! | 2 QUARANTINED   | 0           | the shell could not bind it (PORT_QUARANTINE)
//! | 3 RESERVED      | secret      | EVEN-PORT R=1 reserved it for the token with `secret`
//! ```
//!
//! Every transition is one compare-and-swap from the state the caller knows:
//!
//! ```text
//! FREE ──claim──▶ ALLOCATED ──release──▶ FREE
//!                 ALLOCATED ──quarantine──▶ QUARANTINED ──end_quarantine──▶ FREE
//! FREE ──claim_reserving_next (port P + 1)──▶ RESERVED(secret)
//!                 RESERVED(secret) ──take_reservation (any worker)──▶ ALLOCATED
//!                 RESERVED(secret) ──cancel_reservation (reserving worker)──▶ FREE
//! ```
//!
//! Only FREE and RESERVED slots are contended between workers. An ALLOCATED or QUARANTINED
//! slot belongs to the one server that put it there, and only that server moves it on. The
//! table reads no clock: the server that reserved or quarantined a port keeps the timer that
//! ends it, and ends it with a CAS that fails harmlessly if another worker took the
//! reservation first.
//!
//! A port is released when its allocation ends, a moment before the shell closes its socket.
//! If another worker claims it in that moment, its bind fails: the port is quarantined and
//! the client, whose success response the shell withholds, retransmits and gets another port.
//!
//! # Reservation tokens
//!
//! A RESERVATION-TOKEN is `port (16, big-endian) | secret (48)`. The port lets any worker find
//! the slot without shared lookup state; the secret, drawn from the reserving server's RNG and
//! stored in the slot, is what makes the token valid. Guessing it takes 2^47 authenticated
//! Allocates on average, all within the reservation's 30 seconds, and a stolen reservation
//! gains nothing a plain Allocate would not give: it only denies one client its RTCP port.
//!
//! [RFC 8656 §7.2]: https://www.rfc-editor.org/rfc/rfc8656#section-7.2
//! [§14.9]: https://www.rfc-editor.org/rfc/rfc8656#section-14.9

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use super::attr::ReservationToken;
use super::{ConfigError, RelayPort};

/// The relay ports of a host, shared by its TURN servers as an `Arc<PortTable>`.
///
/// Built once by whoever starts the servers and handed to each through
/// [`TurnConfig::with_port_table`](super::TurnConfig::with_port_table). The servers claim and
/// release ports; nothing else changes the table. Ports an ended server held stay taken.
pub struct PortTable {
    first: u16,
    slots: Box<[AtomicU64]>,
}

impl fmt::Debug for PortTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortTable")
            .field("ports", &self.range())
            .finish_non_exhaustive()
    }
}

const SECRET_BITS: u32 = 48;
const SECRET_MASK: u64 = (1 << SECRET_BITS) - 1;
const FREE: u64 = 0;
const ALLOCATED: u64 = 1 << SECRET_BITS;
const QUARANTINED: u64 = 2 << SECRET_BITS;
const RESERVED: u64 = 3 << SECRET_BITS;

impl PortTable {
    /// A table with every port of `range` free. The range must be non-empty and exclude
    /// port 0.
    pub fn new(range: RangeInclusive<u16>) -> Result<Self, ConfigError> {
        if range.is_empty() || *range.start() == 0 {
            return Err(ConfigError::InvalidPortRange {
                first: *range.start(),
                last: *range.end(),
            });
        }
        Ok(Self {
            first: *range.start(),
            slots: range.map(|_| AtomicU64::new(FREE)).collect(),
        })
    }

    /// The ports in the table.
    pub fn range(&self) -> RangeInclusive<u16> {
        // `new` refused the empty range, and the last index fits the range it came from.
        let last = self.first + (self.slots.len() - 1) as u16;
        self.first..=last
    }

    /// Free ports, counted now (a snapshot; O(ports)).
    pub fn available(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.load(Ordering::Relaxed) == FREE)
            .count()
    }

    /// Whether `port` is held by a live relay allocation of any server sharing this table (or
    /// is being bound for one): the only ports of this host a client may relay to (see
    /// [`PeerFilter`](super::PeerFilter)). Free, reserved and quarantined ports, and ports
    /// outside the range, are not. One relaxed load: a port released on another core is seen
    /// as released within that core's next instructions, never as taken by another process.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.index(port)
            .is_some_and(|index| self.slots[index].load(Ordering::Relaxed) == ALLOCATED)
    }

    /// Claims a free port, an even one if `even`. The search starts at slot `hint` (modulo the
    /// range) and wraps: a random hint per claim keeps relay ports unpredictable ([RFC 8656
    /// §7.2]) and keeps workers from racing for the same slots.
    ///
    /// [RFC 8656 §7.2]: https://www.rfc-editor.org/rfc/rfc8656#section-7.2
    pub(crate) fn claim(&self, hint: u64, even: bool) -> Option<RelayPort> {
        let index = self.find(hint, |i| {
            (!even || self.port(i).is_multiple_of(2)) && self.cas(i, FREE, ALLOCATED)
        })?;
        Some(RelayPort::new(self.port(index)))
    }

    /// Claims an even port P whose successor is free too, and reserves P + 1 under `secret`
    /// (its low 48 bits). Returns P and the token that names P + 1.
    pub(crate) fn claim_reserving_next(
        &self,
        hint: u64,
        secret: u64,
    ) -> Option<(RelayPort, ReservationToken)> {
        let reserved = RESERVED | (secret & SECRET_MASK);
        let index = self.find(hint, |i| {
            let next = i + 1;
            if !self.port(i).is_multiple_of(2)
                || next == self.slots.len()
                || self.slots[next].load(Ordering::Relaxed) != FREE
                || !self.cas(i, FREE, ALLOCATED)
            {
                return false;
            }
            if self.cas(next, FREE, reserved) {
                return true;
            }
            // Another worker took P + 1 in between; P is still ours alone.
            self.slots[i].store(FREE, Ordering::Relaxed);
            false
        })?;
        let port = self.port(index);
        Some((RelayPort::new(port), token(port + 1, secret)))
    }

    /// Takes the port `token` reserved, as an allocation: at most once, from any worker.
    /// `None` if the token names no port of this table, or its reservation was taken,
    /// cancelled, or never made.
    pub(crate) fn take_reservation(&self, token: ReservationToken) -> Option<RelayPort> {
        let (port, secret) = split(token);
        let index = self.index(port)?;
        self.cas(index, RESERVED | secret, ALLOCATED)
            .then_some(RelayPort::new(port))
    }

    /// Frees the port `token` reserved, unless it was taken already. Returns whether it was
    /// still reserved.
    pub(crate) fn cancel_reservation(&self, token: ReservationToken) -> bool {
        let (port, secret) = split(token);
        self.index(port)
            .is_some_and(|index| self.cas(index, RESERVED | secret, FREE))
    }

    /// Frees a port the caller's allocation held.
    pub(crate) fn release(&self, port: RelayPort) {
        let released = self
            .index(port.get())
            .is_some_and(|index| self.cas(index, ALLOCATED, FREE));
        debug_assert!(released, "release of {port} that was not allocated");
    }

    /// Keeps a port the caller's allocation held out of use until
    /// [`end_quarantine`](Self::end_quarantine).
    pub(crate) fn quarantine(&self, port: RelayPort) {
        let quarantined = self
            .index(port.get())
            .is_some_and(|index| self.cas(index, ALLOCATED, QUARANTINED));
        debug_assert!(quarantined, "quarantine of {port} that was not allocated");
    }

    /// Frees a port the caller quarantined.
    pub(crate) fn end_quarantine(&self, port: RelayPort) {
        let freed = self
            .index(port.get())
            .is_some_and(|index| self.cas(index, QUARANTINED, FREE));
        debug_assert!(
            freed,
            "end of a quarantine of {port} that was not quarantined"
        );
    }

    // ---------------------------------------------------------------------------------------

    /// The first slot from `hint` on (wrapping) for which `try_claim` succeeds.
    fn find(&self, hint: u64, mut try_claim: impl FnMut(usize) -> bool) -> Option<usize> {
        let len = self.slots.len();
        // The remainder is below `len`, so it fits back in usize.
        let start = (hint % len as u64) as usize;
        (start..len).chain(0..start).find(|&i| try_claim(i))
    }

    /// Moves slot `index` from `from` to `to`. A plain load first keeps a scan over taken
    /// slots from writing to their cache lines.
    ///
    /// Relaxed throughout: each slot is its own state machine and publishes no other memory
    /// (the socket behind a port is the kernel's, ordered by its own syscalls).
    fn cas(&self, index: usize, from: u64, to: u64) -> bool {
        let slot = &self.slots[index];
        slot.load(Ordering::Relaxed) == from
            && slot
                .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn index(&self, port: u16) -> Option<usize> {
        let index = usize::from(port.checked_sub(self.first)?);
        (index < self.slots.len()).then_some(index)
    }

    fn port(&self, index: usize) -> u16 {
        // Indexes come from `slots`, which has one slot per port of a u16 range.
        self.first + index as u16
    }
}

/// `port (16) | secret (48)`, big-endian.
fn token(port: u16, secret: u64) -> ReservationToken {
    ReservationToken((u64::from(port) << SECRET_BITS | (secret & SECRET_MASK)).to_be_bytes())
}

fn split(token: ReservationToken) -> (u16, u64) {
    let raw = u64::from_be_bytes(token.0);
    ((raw >> SECRET_BITS) as u16, raw & SECRET_MASK)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    fn port(n: u16) -> RelayPort {
        RelayPort::new(n)
    }

    #[test]
    fn refuses_empty_ranges_and_port_zero() {
        #[expect(clippy::reversed_empty_ranges, reason = "testing the empty range")]
        let empty = 5..=4;
        for range in [0..=10, empty] {
            assert!(matches!(
                PortTable::new(range),
                Err(ConfigError::InvalidPortRange { .. })
            ));
        }
        let table = PortTable::new(65_535..=65_535).unwrap();
        assert_eq!(table.range(), 65_535..=65_535);
        assert_eq!(table.claim(7, false), Some(port(65_535)));
    }

    #[test]
    fn claims_every_port_once_then_none() {
        let table = PortTable::new(50_000..=50_009).unwrap();
        let mut taken: Vec<u16> = (0..10)
            .map(|i| table.claim(i * 7, false).unwrap().get())
            .collect();
        taken.sort_unstable();
        assert_eq!(taken, (50_000..=50_009).collect::<Vec<_>>());
        assert_eq!(table.claim(0, false), None);
        table.release(port(50_003));
        assert_eq!(table.available(), 1);
        assert_eq!(table.claim(0, true), None, "no even port free");
        assert_eq!(table.claim(0, false), Some(port(50_003)));
    }

    #[test]
    fn the_hint_picks_where_the_search_starts() {
        let table = PortTable::new(100..=109).unwrap();
        assert_eq!(table.claim(3, false), Some(port(103)));
        assert_eq!(
            table.claim(13, false),
            Some(port(104)),
            "wraps modulo the range"
        );
        assert_eq!(
            table.claim(3, true),
            Some(port(106)),
            "next even from slot 3"
        );
        assert_eq!(table.claim(9, true), Some(port(100)), "wraps to the start");
    }

    #[test]
    fn even_ports() {
        let table = PortTable::new(40_001..=40_100).unwrap();
        for i in 0..50 {
            assert_eq!(table.claim(i * 31, true).unwrap().get() % 2, 0);
        }
        assert_eq!(table.claim(0, true), None);
        assert_eq!(table.available(), 50);
    }

    #[test]
    fn reserving_needs_an_even_port_with_a_free_successor() {
        let table = PortTable::new(100..=104).unwrap();
        assert_eq!(table.claim(1, false), Some(port(101)));
        // 100's successor is taken, 104 has none in range: only 102 qualifies.
        let (p, token) = table.claim_reserving_next(0, 0xABCD).unwrap();
        assert_eq!(p, port(102));
        assert_eq!(split(token), (103, 0xABCD));
        assert_eq!(token.0, [0, 103, 0, 0, 0, 0, 0xAB, 0xCD]);
        assert_eq!(table.claim_reserving_next(0, 1), None);
        assert_eq!(table.available(), 2, "100 and 104");
        // A reserved port is not free for a plain claim either.
        assert_eq!(table.claim(3, false), Some(port(104)));
        assert_eq!(table.claim(3, false), Some(port(100)));
        assert_eq!(table.claim(3, false), None);
    }

    #[test]
    fn a_reservation_is_taken_once_with_its_exact_token() {
        let table = PortTable::new(200..=203).unwrap();
        let (_, token) = table.claim_reserving_next(0, u64::MAX).unwrap();
        let (reserved, secret) = split(token);
        assert_eq!(secret, SECRET_MASK, "only 48 bits of the secret are kept");
        for wrong in [
            super::token(reserved, secret ^ 1),
            super::token(reserved - 1, secret),
            super::token(199, secret),
            super::token(204, secret),
        ] {
            assert_eq!(table.take_reservation(wrong), None);
            assert!(!table.cancel_reservation(wrong));
        }
        assert_eq!(table.take_reservation(token), Some(port(reserved)));
        assert_eq!(table.take_reservation(token), None, "used");
        assert!(
            !table.cancel_reservation(token),
            "taken: the timer finds nothing"
        );
        table.release(port(reserved));
        assert_eq!(table.take_reservation(token), None, "still used once free");
    }

    #[test]
    fn a_cancelled_reservation_frees_the_port_and_the_token_dies() {
        let table = PortTable::new(200..=201).unwrap();
        let (p, token) = table.claim_reserving_next(0, 42).unwrap();
        assert_eq!(table.available(), 0);
        assert!(table.cancel_reservation(token));
        assert!(!table.cancel_reservation(token), "once");
        assert_eq!(table.available(), 1);
        assert_eq!(table.take_reservation(token), None, "expired");
        // Reserved again under another secret: the old token stays dead.
        table.release(p);
        let (_, fresh) = table.claim_reserving_next(0, 43).unwrap();
        assert_eq!(table.take_reservation(token), None);
        assert!(!table.cancel_reservation(token));
        assert_eq!(table.take_reservation(fresh), Some(port(201)));
    }

    #[test]
    fn take_and_cancel_race_deterministically() {
        // Both orders of the one contended step: exactly one side wins, and the slot ends in
        // the winner's state.
        for take_first in [true, false] {
            let table = PortTable::new(300..=301).unwrap();
            let (_, token) = table.claim_reserving_next(0, 9).unwrap();
            let (taken, cancelled) = if take_first {
                let taken = table.take_reservation(token);
                (taken, table.cancel_reservation(token))
            } else {
                let cancelled = table.cancel_reservation(token);
                (table.take_reservation(token), cancelled)
            };
            assert_eq!(taken.is_some(), take_first);
            assert_eq!(cancelled, !take_first);
            assert_eq!(table.available(), usize::from(!take_first));
        }
    }

    #[test]
    fn a_lost_race_for_the_successor_rolls_back() {
        // Another worker reserves 401 between our look at it and our CAS on it: simulated by
        // reserving it from inside the search, after 400 was claimed.
        let table = PortTable::new(400..=403).unwrap();
        let mut first = true;
        let found = table.find(0, |i| {
            let claimed = table.port(i).is_multiple_of(2) && table.cas(i, FREE, ALLOCATED);
            if claimed && first {
                first = false;
                assert!(table.cas(i + 1, FREE, RESERVED | 5), "the other worker");
                table.slots[i].store(FREE, Ordering::Relaxed);
                return false;
            }
            claimed && table.cas(i + 1, FREE, RESERVED | 6)
        });
        assert_eq!(found.map(|i| table.port(i)), Some(402));
        assert_eq!(
            table.claim(0, false),
            Some(port(400)),
            "rolled back to free"
        );
        assert_eq!(table.claim(0, false), None);
    }

    #[test]
    fn only_allocated_ports_are_allocated() {
        let table = PortTable::new(600..=603).unwrap();
        assert!(!table.is_allocated(600), "free");
        let (p, token) = table.claim_reserving_next(0, 7).unwrap();
        assert!(table.is_allocated(p.get()));
        assert!(!table.is_allocated(601), "reserved");
        assert_eq!(table.take_reservation(token), Some(port(601)));
        assert!(table.is_allocated(601), "taken");
        table.quarantine(port(601));
        assert!(!table.is_allocated(601), "quarantined");
        table.release(p);
        assert!(!table.is_allocated(p.get()), "released");
        assert!(!table.is_allocated(599) && !table.is_allocated(604) && !table.is_allocated(0));
    }

    #[test]
    fn quarantine_keeps_a_port_out_until_it_ends() {
        let table = PortTable::new(500..=500).unwrap();
        let p = table.claim(0, false).unwrap();
        table.quarantine(p);
        assert_eq!(table.available(), 0);
        assert_eq!(table.claim(0, false), None);
        table.end_quarantine(p);
        assert_eq!(table.claim(0, false), Some(p));
    }

    #[test]
    fn concurrent_claims_never_share_a_port() {
        let table = Arc::new(PortTable::new(10_000..=13_999).unwrap());
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let table = Arc::clone(&table);
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut tokens = Vec::new();
                    let mut hint = w * 1000;
                    loop {
                        hint = hint.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(w);
                        let reserved = (hint % 3 == 0)
                            .then(|| table.claim_reserving_next(hint >> 8, hint))
                            .flatten();
                        let claimed = match reserved {
                            Some((p, t)) => {
                                tokens.push(t);
                                Some(p)
                            }
                            None => table.claim(hint >> 8, false),
                        };
                        match claimed {
                            Some(p) => mine.push(p.get()),
                            None => break,
                        }
                    }
                    (mine, tokens)
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        // Every worker takes every other worker's tokens, racing for them.
        let takers: Vec<_> = (0..4)
            .map(|w| {
                let table = Arc::clone(&table);
                let tokens: Vec<_> = results.iter().flat_map(|r| r.1.clone()).collect();
                thread::spawn(move || {
                    let mut order = tokens;
                    let mid = w * order.len() / 4;
                    order.rotate_left(mid);
                    order
                        .into_iter()
                        .filter_map(|t| table.take_reservation(t))
                        .map(RelayPort::get)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u16> = results.into_iter().flat_map(|r| r.0).collect();
        for taker in takers {
            all.extend(taker.join().unwrap());
        }
        all.sort_unstable();
        let len = all.len();
        all.dedup();
        assert_eq!(all.len(), len, "a port claimed twice");
        assert_eq!(len, 4000, "every port ends up claimed or taken once");
        assert_eq!(table.available(), 0);
    }
}
