//! End-to-end fragmentation of relay packets between two agents, sans-IO: how the QUIC route
//! carries WireGuard packets larger than a QUIC DATAGRAM frame.
//!
//! wireguard-go at its default MTU of 1 420 sends packets of up to 1 452 bytes, and a QUIC
//! datagram on a 1500-byte path holds about 1 145 bytes of packet before path MTU discovery
//! and about 1 397 after it. Rather than change WireGuard's MTU, the sending agent splits a
//! packet that does not fit into fragments, each one relay packet, and the receiving agent
//! puts them back together before handing the packet to WireGuard. The relay server sees
//! opaque packets and needs no change; the receiving agent reassembles whatever transport
//! its own session uses (a fragment sent over QUIC may arrive over WebSocket).
//!
//! A relay packet is normally a WireGuard message (first byte 1..=4, then three zero
//! bytes) or a signalling message (`0xFF "BNS"`, [`crate::signal`]). A fragment starts with
//! `0xFE 'F'`, which neither ever produces:
//!
//! ```text
//! offset  bytes  field
//! 0       2      0xFE 'F'
//! 2       4      packet id, big-endian (per sender, wrapping)
//! 6       1      index of this fragment, 0-based
//! 7       1      count of fragments, 2..=64
//! 8       2      total length of the packet, big-endian
//! 10      ...    bytes [index * chunk, min(total, (index + 1) * chunk)) of the packet,
//!                where chunk = ceil(total / count)
//! ```
//!
//! Every fragment's length follows from `total` and `count`, so the receiver checks each
//! exactly. Reassembly is bounded: at most [`ReassemblyConfig::max_partials`] packets in
//! flight per sender (the oldest is dropped for a new one), each given up after
//! [`ReassemblyConfig::timeout`]; every drop is counted by [`DropReason`].
//!
//! # Driving it
//!
//! * Sending: [`Fragmenter::split`] with the packet and the largest fragment the path takes;
//!   write each [`Fragment`]'s header then its bytes as one relay packet.
//! * Receiving: [`is_fragment`] tells a fragment from a whole packet;
//!   [`Reassembler::handle_fragment`] returns the packet when its last fragment arrives;
//!   [`Reassembler::handle_timeout`] at [`Reassembler::poll_timeout`] drops stale partials.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const MAGIC: [u8; 2] = [0xFE, b'F'];

/// Bytes of fragment header before the packet's bytes.
pub const HEADER_LEN: usize = 10;

/// Most fragments one packet is split into.
pub const MAX_FRAGMENTS: usize = 64;

/// Largest packet that can be fragmented (the header's 16-bit total).
pub const MAX_PACKET: usize = u16::MAX as usize;

/// Whether a relay packet is a fragment rather than a whole packet.
pub fn is_fragment(packet: &[u8]) -> bool {
    packet.starts_with(&MAGIC)
}

/// Why a packet cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The largest fragment leaves no room for a packet byte after the header.
    #[error("a fragment of {0} bytes has no room after the {HEADER_LEN}-byte header")]
    FragmentTooSmall(usize),
    /// The packet needs more than [`MAX_FRAGMENTS`] fragments, or exceeds [`MAX_PACKET`].
    #[error("a packet of {len} bytes does not split into {MAX_FRAGMENTS} fragments of {fragment}")]
    TooLarge {
        /// The packet's length.
        len: usize,
        /// The largest fragment allowed.
        fragment: usize,
    },
}

/// The sending side: numbers the packets it splits.
#[derive(Debug, Clone, Default)]
pub struct Fragmenter {
    next_id: u32,
}

impl Fragmenter {
    /// A fragmenter whose first packet id is `first` (any value; random avoids confusion
    /// with the fragments of an earlier run still in the receiver's table).
    pub const fn new(first: u32) -> Self {
        Self { next_id: first }
    }

    /// Splits `packet` into fragments of at most `max_fragment` bytes each, header
    /// included. A packet that fits `max_fragment` whole needs no fragmentation: send it as
    /// it is.
    pub fn split<'a>(
        &mut self,
        packet: &'a [u8],
        max_fragment: usize,
    ) -> Result<Fragments<'a>, SplitError> {
        let room = max_fragment.saturating_sub(HEADER_LEN);
        if room == 0 {
            return Err(SplitError::FragmentTooSmall(max_fragment));
        }
        let count = packet.len().div_ceil(room).max(1);
        if count > MAX_FRAGMENTS || packet.len() > MAX_PACKET {
            return Err(SplitError::TooLarge {
                len: packet.len(),
                fragment: max_fragment,
            });
        }
        // At least two (the receiver refuses fewer): one would be a whole packet.
        let count = count.max(2);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(Fragments {
            packet,
            id,
            count,
            chunk: packet.len().div_ceil(count),
            index: 0,
        })
    }
}

/// The fragments of one packet, in order.
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    packet: &'a [u8],
    id: u32,
    count: usize,
    chunk: usize,
    index: usize,
}

/// One fragment: write `header`, then `bytes`, as one relay packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The fragment header.
    pub header: [u8; HEADER_LEN],
    /// The packet's bytes this fragment carries.
    pub bytes: &'a [u8],
}

impl Fragment<'_> {
    /// Header and bytes together.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.bytes.len()
    }

    /// Never: a fragment always has its header.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Fragment<'a>;

    fn next(&mut self) -> Option<Fragment<'a>> {
        if self.index >= self.count {
            return None;
        }
        let start = (self.index * self.chunk).min(self.packet.len());
        let end = ((self.index + 1) * self.chunk).min(self.packet.len());
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2..6].copy_from_slice(&self.id.to_be_bytes());
        // Both fit a byte: count <= MAX_FRAGMENTS, and the total <= MAX_PACKET.
        header[6] = u8::try_from(self.index).unwrap_or(u8::MAX);
        header[7] = u8::try_from(self.count).unwrap_or(u8::MAX);
        header[8..10].copy_from_slice(
            &u16::try_from(self.packet.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        self.index += 1;
        Some(Fragment {
            header,
            bytes: &self.packet[start..end],
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Fragments<'_> {}

/// Why a fragment, or a packet under reassembly, was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A header that breaks the layout: short, a count outside 2..=64, an index beyond the
    /// count, a length that does not match, or a total that differs from the packet's other
    /// fragments.
    Malformed,
    /// A fragment already received.
    Duplicate,
    /// A packet whose fragments did not all arrive within the timeout.
    Expired,
    /// A packet pushed out by a newer one when the table was full.
    Evicted,
}

impl DropReason {
    /// Stable `snake_case` label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "fragment_malformed",
            Self::Duplicate => "fragment_duplicate",
            Self::Expired => "fragment_expired",
            Self::Evicted => "fragment_evicted",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [Self; 4] = [
        Self::Malformed,
        Self::Duplicate,
        Self::Expired,
        Self::Evicted,
    ];
}

/// The receiving side's bounds.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyConfig {
    /// Packets in flight at once. Default 32 (at most 32 × 64 KiB of memory per sender).
    pub max_partials: usize,
    /// How long the fragments of one packet may take to arrive. Default 1 s: the fragments
    /// of a packet leave together, so only loss delays one for longer, and WireGuard's own
    /// retransmissions do not wait on it.
    pub timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_partials: 32,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Counters of a [`Reassembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReassemblyStats {
    /// Packets put back together.
    pub reassembled: u64,
    /// Fragments received (well-formed or not).
    pub fragments: u64,
    /// Drops by [`DropReason`], in [`DropReason::ALL`]'s order.
    pub drops: [u64; 4],
}

impl ReassemblyStats {
    /// The drops counted for `reason`.
    pub const fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// What [`Reassembler::handle_fragment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Reassembled {
    /// The packet is whole: hand it to WireGuard.
    Complete(Vec<u8>),
    /// Kept; more fragments are needed.
    Pending,
    /// Dropped (counted).
    Dropped(DropReason),
}

#[derive(Debug)]
struct Partial {
    id: u32,
    count: u8,
    total: u16,
    received: u64,
    started: Instant,
    buf: Vec<u8>,
}

/// The receiving side, one per sending peer.
#[derive(Debug, Default)]
pub struct Reassembler {
    config: ReassemblyConfig,
    /// Oldest first.
    partials: VecDeque<Partial>,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            config: ReassemblyConfig {
                max_partials: config.max_partials.max(1),
                ..config
            },
            partials: VecDeque::new(),
            stats: ReassemblyStats::default(),
        }
    }

    /// A fragment (the whole relay packet, header included) arrived at `now`.
    pub fn handle_fragment(&mut self, now: Instant, fragment: &[u8]) -> Reassembled {
        self.stats.fragments += 1;
        self.handle_timeout(now);
        let Some(header) = fragment.get(..HEADER_LEN) else {
            return self.drop(DropReason::Malformed);
        };
        if header[..2] != MAGIC {
            return self.drop(DropReason::Malformed);
        }
        let id = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let (index, count) = (header[6], header[7]);
        let total = u16::from_be_bytes([header[8], header[9]]);
        let bytes = &fragment[HEADER_LEN..];
        if !(2..=MAX_FRAGMENTS).contains(&usize::from(count)) || index >= count {
            return self.drop(DropReason::Malformed);
        }
        let chunk = usize::from(total).div_ceil(usize::from(count));
        let start = (usize::from(index) * chunk).min(usize::from(total));
        let end = ((usize::from(index) + 1) * chunk).min(usize::from(total));
        if bytes.len() != end - start {
            return self.drop(DropReason::Malformed);
        }
        let at = match self.partials.iter().position(|p| p.id == id) {
            Some(at) => {
                let partial = &self.partials[at];
                if partial.count != count || partial.total != total {
                    return self.drop(DropReason::Malformed);
                }
                at
            }
            None => {
                if self.partials.len() >= self.config.max_partials {
                    self.partials.pop_front();
                    self.stats.drops[DropReason::Evicted as usize] += 1;
                }
                self.partials.push_back(Partial {
                    id,
                    count,
                    total,
                    received: 0,
                    started: now,
                    buf: vec![0; usize::from(total)],
                });
                self.partials.len() - 1
            }
        };
        let partial = &mut self.partials[at];
        let bit = 1u64 << index;
        if partial.received & bit != 0 {
            return self.drop(DropReason::Duplicate);
        }
        partial.received |= bit;
        partial.buf[start..end].copy_from_slice(bytes);
        let all = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        if partial.received != all {
            return Reassembled::Pending;
        }
        let Some(done) = self.partials.remove(at) else {
            return Reassembled::Pending;
        };
        self.stats.reassembled += 1;
        Reassembled::Complete(done.buf)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partials
            .iter()
            .map(|p| p.started + self.config.timeout)
            .min()
    }

    /// Drops the packets whose fragments did not all arrive in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        let before = self.partials.len();
        self.partials.retain(|p| now < p.started + timeout);
        let expired = (before - self.partials.len()) as u64;
        self.stats.drops[DropReason::Expired as usize] += expired;
    }

    /// Packets under reassembly.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }

    /// The counters.
    pub const fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    fn drop(&mut self, reason: DropReason) -> Reassembled {
        self.stats.drops[reason as usize] += 1;
        Reassembled::Dropped(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::epoch;

    fn packet(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 4) as u8).collect()
    }

    fn frames(fragments: Fragments<'_>) -> Vec<Vec<u8>> {
        fragments
            .map(|f| [f.header.as_slice(), f.bytes].concat())
            .collect()
    }

    #[test]
    fn a_full_size_wireguard_packet_round_trips_in_any_order() {
        let t0 = epoch();
        // wireguard-go at MTU 1420: 1452-byte packets; 1145 bytes fit a datagram at READY.
        let p = packet(1452);
        let mut f = Fragmenter::new(u32::MAX);
        let parts = frames(f.split(&p, 1145).unwrap());
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|x| x.len() <= 1145 && is_fragment(x)));
        let mut r = Reassembler::default();
        assert_eq!(r.handle_fragment(t0, &parts[1]), Reassembled::Pending);
        assert_eq!(r.pending(), 1);
        assert_eq!(r.handle_fragment(t0, &parts[0]), Reassembled::Complete(p));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.poll_timeout(), None);
        // Ids wrap; many fragments; interleaved packets.
        let a = packet(9000);
        let b = packet(3000);
        let pa = frames(f.split(&a, 500).unwrap());
        let pb = frames(f.split(&b, 500).unwrap());
        assert_eq!(pa.len(), 19);
        assert_eq!(pa[0][2..6], [0, 0, 0, 0], "the id wrapped from u32::MAX");
        let mut got = Vec::new();
        for (i, frame) in pa.iter().rev().enumerate() {
            if let Some(x) = pb.get(i) {
                got.push(r.handle_fragment(t0, x));
            }
            got.push(r.handle_fragment(t0, frame));
        }
        let complete: Vec<_> = got
            .into_iter()
            .filter_map(|g| match g {
                Reassembled::Complete(p) => Some(p),
                Reassembled::Pending | Reassembled::Dropped(_) => None,
            })
            .collect();
        assert_eq!(complete, vec![b, a]);
        assert_eq!(r.stats().reassembled, 3);
        assert_eq!(r.stats().drops, [0; 4]);
    }

    #[test]
    fn small_packets_still_come_in_two() {
        let mut f = Fragmenter::default();
        // A fragment is never a whole packet, even when it would fit.
        let parts = frames(f.split(&[1, 0, 0, 0, 9], 1200).unwrap());
        assert_eq!(parts.len(), 2);
        let mut r = Reassembler::default();
        let t0 = epoch();
        assert_eq!(r.handle_fragment(t0, &parts[0]), Reassembled::Pending);
        assert_eq!(
            r.handle_fragment(t0, &parts[1]),
            Reassembled::Complete(vec![1, 0, 0, 0, 9])
        );
    }

    #[test]
    fn splitting_is_bounded() {
        let mut f = Fragmenter::default();
        assert_eq!(
            f.split(&packet(100), HEADER_LEN).unwrap_err(),
            SplitError::FragmentTooSmall(HEADER_LEN)
        );
        assert!(matches!(
            f.split(&packet(65 * 100), HEADER_LEN + 100),
            Err(SplitError::TooLarge { len: 6500, .. })
        ));
        assert_eq!(
            f.split(&packet(64 * 100), HEADER_LEN + 100).unwrap().len(),
            64
        );
        assert!(f.split(&packet(MAX_PACKET + 1), 2000).is_err());
    }

    #[test]
    fn bad_fragments_are_named_and_counted() {
        let t0 = epoch();
        let mut r = Reassembler::default();
        let mut f = Fragmenter::default();
        let p = packet(300);
        let parts = frames(f.split(&p, 110).unwrap());
        assert_eq!(parts.len(), 3);
        let malformed = |mut frame: Vec<u8>, at: usize, value: u8| {
            frame[at] = value;
            frame
        };
        for bad in [
            parts[0][..5].to_vec(),                  // short
            malformed(parts[0].clone(), 1, b'X'),    // not the magic
            malformed(parts[0].clone(), 7, 1),       // count 1
            malformed(parts[0].clone(), 7, 65),      // count above 64
            malformed(parts[0].clone(), 6, 3),       // index beyond count
            parts[0][..parts[0].len() - 1].to_vec(), // length does not match
        ] {
            assert_eq!(
                r.handle_fragment(t0, &bad),
                Reassembled::Dropped(DropReason::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(r.handle_fragment(t0, &parts[0]), Reassembled::Pending);
        assert_eq!(
            r.handle_fragment(t0, &parts[0]),
            Reassembled::Dropped(DropReason::Duplicate)
        );
        // Same id, another total: refused, the partial kept.
        let mut other = parts[1].clone();
        other[9] = other[9].wrapping_add(1);
        assert_eq!(
            r.handle_fragment(t0, &other),
            Reassembled::Dropped(DropReason::Malformed)
        );
        assert_eq!(r.handle_fragment(t0, &parts[2]), Reassembled::Pending);
        assert_eq!(r.handle_fragment(t0, &parts[1]), Reassembled::Complete(p));
        let stats = r.stats();
        assert_eq!(stats.dropped(DropReason::Malformed), 7);
        assert_eq!(stats.dropped(DropReason::Duplicate), 1);
        assert_eq!(stats.fragments, 11);
    }

    #[test]
    fn reassembly_is_bounded_in_time_and_space() {
        let t0 = epoch();
        let config = ReassemblyConfig {
            max_partials: 2,
            timeout: Duration::from_secs(1),
        };
        let mut r = Reassembler::new(config);
        let mut f = Fragmenter::default();
        let packets: Vec<Vec<u8>> = (0..3).map(|i| packet(200 + i)).collect();
        let parts: Vec<Vec<Vec<u8>>> = packets
            .iter()
            .map(|p| frames(f.split(p, 150).unwrap()))
            .collect();
        // Three packets' first halves: the oldest is evicted.
        for p in &parts {
            assert_eq!(r.handle_fragment(t0, &p[0]), Reassembled::Pending);
        }
        assert_eq!(r.pending(), 2);
        assert_eq!(r.stats().dropped(DropReason::Evicted), 1);
        // The evicted packet's second half starts a new partial that can never finish.
        assert_eq!(r.handle_fragment(t0, &parts[0][1]), Reassembled::Pending);
        assert_eq!(r.stats().dropped(DropReason::Evicted), 2);
        assert_eq!(
            r.handle_fragment(t0, &parts[2][1]),
            Reassembled::Complete(packets[2].clone())
        );
        // Time passes: what is left expires, at the stated bound and not before.
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        r.handle_timeout(t0 + Duration::from_millis(999));
        assert_eq!(r.pending(), 1);
        r.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.stats().dropped(DropReason::Expired), 1);
        // A late second half is a partial of its own, which expires too.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(r.handle_fragment(t1, &parts[1][1]), Reassembled::Pending);
        assert_eq!(
            r.handle_fragment(t1 + config.timeout, &parts[1][0]),
            Reassembled::Pending
        );
        assert_eq!(r.stats().dropped(DropReason::Expired), 2);
    }
}
