//! Where everything lives in a segment, and the header that lets a second process check it
//! agrees. Pure arithmetic on a [`SegmentSpec`]; the byte tables are in the crate doc.

use std::fmt;

use crate::mem::WORD;
use crate::stats::block_words;
use crate::sync::{AtomicU64, Ordering};

/// The first 8 bytes of every segment: `"BOSONSHM"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BOSONSHM");

/// Bumped on any change to the header, ring, stats or codec layout. Both sides must be
/// built with the same value; there is no negotiation (the two processes are one release).
pub const LAYOUT_VERSION: u64 = 3;

/// The unit of alignment for regions: the header, each ring's control block and data, and
/// the stats region start on a page boundary.
pub const PAGE: usize = 4096;

/// Smallest ring: twice the largest encoded message
/// ([`MAX_MESSAGE_LEN`](crate::codec::MAX_MESSAGE_LEN)), so a ring always holds a message
/// of every legal size even when it is not empty.
pub const MIN_RING_BYTES: u32 = 64 * 1024;

/// Largest ring: positions are 32-bit and wrap, which is sound up to 2^31 bytes; 1 GiB
/// is already far beyond any useful backlog.
pub const MAX_RING_BYTES: u32 = 1 << 30;

/// Most worker cores a segment can describe.
pub const MAX_CORES: u16 = 1024;

/// Most stats slots per core.
pub const MAX_STATS_SLOTS: u16 = 4096;

/// The shape of a segment: everything both sides must agree on besides the layout version.
///
/// Validated by [`Segment::create`](crate::Segment::create) and on attach; `new` gives the
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Worker cores: one command ring, one event ring and one stats block each.
    pub cores: u16,
    /// Data bytes of each command ring (power of two, [`MIN_RING_BYTES`] to
    /// [`MAX_RING_BYTES`]). Default 256 KiB: a full grant re-push after a dataplane restart
    /// is the burst, and at ~40 bytes per grant that holds ~6 000 before the control plane
    /// has to wait for the worker to drain.
    pub command_ring_bytes: u32,
    /// Data bytes of each event ring (same bounds). Default 256 KiB: a worker must never
    /// block on the control plane, so events get the same slack as commands.
    pub event_ring_bytes: u32,
    /// `u64` slots in each core's stats block; their meaning is the dataplane's. Default 64.
    pub stats_slots: u16,
}

impl SegmentSpec {
    /// The defaults for `cores` worker cores.
    pub const fn new(cores: u16) -> Self {
        Self {
            cores,
            command_ring_bytes: 256 * 1024,
            event_ring_bytes: 256 * 1024,
            stats_slots: 64,
        }
    }

    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_geometry(
            u64::from(self.cores),
            u64::from(self.command_ring_bytes),
            u64::from(self.event_ring_bytes),
            u64::from(self.stats_slots),
        )?;
        Ok(())
    }
}

/// A [`SegmentSpec`] field out of bounds (at creation, or read from a header on attach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Cores must be 1 to [`MAX_CORES`].
    #[error("cores = {found}, must be 1 to {MAX_CORES}")]
    Cores {
        /// The value given.
        found: u64,
    },
    /// A ring size is not a power of two in range.
    #[error("{field} = {found}, must be a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES}")]
    RingBytes {
        /// Which ring.
        field: Field,
        /// The value given.
        found: u64,
    },
    /// Stats slots must be 1 to [`MAX_STATS_SLOTS`].
    #[error("stats_slots = {found}, must be 1 to {MAX_STATS_SLOTS}")]
    StatsSlots {
        /// The value given.
        found: u64,
    },
}

/// A header field, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// [`SegmentSpec::cores`].
    Cores,
    /// [`SegmentSpec::command_ring_bytes`].
    CommandRingBytes,
    /// [`SegmentSpec::event_ring_bytes`].
    EventRingBytes,
    /// [`SegmentSpec::stats_slots`].
    StatsSlots,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cores => "cores",
            Self::CommandRingBytes => "command_ring_bytes",
            Self::EventRingBytes => "event_ring_bytes",
            Self::StatsSlots => "stats_slots",
        })
    }
}

/// Why a segment's header does not describe the segment this build expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file cannot even hold a header.
    #[error("{len} bytes, smaller than the {PAGE}-byte header")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// Not a BosonServer segment, or its creator has not finished initialising it.
    #[error("magic is {found:#018x}, expected {MAGIC:#018x} (\"BOSONSHM\")")]
    Magic {
        /// The first 8 bytes, little-endian.
        found: u64,
    },
    /// Written by a build with another layout.
    #[error("layout version {found}, this build speaks {LAYOUT_VERSION}")]
    Version {
        /// The segment's version.
        found: u64,
    },
    /// The header's geometry is out of bounds.
    #[error("invalid geometry: {0}")]
    Geometry(#[source] SpecError),
    /// The header's length field disagrees with its own geometry.
    #[error("header says the segment is {declared} bytes, but its geometry needs {expected}")]
    LengthField {
        /// What the header's geometry needs.
        expected: u64,
        /// The header's length field.
        declared: u64,
    },
    /// The file is not as long as the header says.
    #[error("file is {found} bytes long, but its header describes {expected}")]
    FileLength {
        /// What the header describes.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// A field differs from what the attaching side was configured with.
    #[error("{field} is {found}, expected {expected}")]
    Mismatch {
        /// Which field.
        field: Field,
        /// The attaching side's value.
        expected: u64,
        /// The segment's value.
        found: u64,
    },
}

/// How many times a side has claimed its end of a segment: bumped by every claim, so a
/// changed value means the side restarted (or re-attached). 0: never claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub(crate) u64);

impl Incarnation {
    /// The count.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// One side of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The control plane: sends commands, receives events, reads stats.
    Control,
    /// The dataplane: one [`CoreEnd`](crate::CoreEnd) per worker core.
    Dataplane,
}

impl Side {
    /// The other side.
    pub const fn peer(self) -> Self {
        match self {
            Self::Control => Self::Dataplane,
            Self::Dataplane => Self::Control,
        }
    }

    /// Which byte of the file the side's attach lock covers.
    pub(crate) const fn lock_byte(self) -> i64 {
        match self {
            Self::Control => 0,
            Self::Dataplane => 1,
        }
    }

    /// First word of the side's liveness block in the header.
    const fn block(self) -> usize {
        match self {
            Self::Control => 0x40 / WORD,
            Self::Dataplane => 0x80 / WORD,
        }
    }

    pub(crate) const fn pid_word(self) -> usize {
        self.block()
    }

    pub(crate) const fn incarnation_word(self) -> usize {
        self.block() + 1
    }

    pub(crate) const fn heartbeat_word(self) -> usize {
        self.block() + 2
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Control => "control",
            Self::Dataplane => "dataplane",
        })
    }
}

// Header words (byte offset / 8); the table is in the crate doc.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_CORES: usize = 2;
const H_COMMAND_RING: usize = 3;
const H_EVENT_RING: usize = 4;
const H_STATS_SLOTS: usize = 5;
const H_LEN: usize = 6;

/// Bytes of a ring's control block (producer and consumer indices), before its data.
pub(crate) const RING_CONTROL_LEN: usize = PAGE;

/// Bytes of a stats block's fixed part (the sequence, reserved), before its two copies.
pub(crate) const STATS_HEADER_LEN: usize = 64;

/// Stats blocks are padded to this so two cores' blocks never share a cache line, nor a
/// pair of lines (Intel's spatial prefetcher pulls lines in 128-byte pairs).
pub(crate) const STATS_ALIGN: usize = 128;

/// Byte offsets of every region of a segment with a given spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) spec: SegmentSpec,
    core_stride: usize,
    stats_offset: usize,
    pub(crate) stats_stride: usize,
    pub(crate) len: usize,
}

/// Where one ring lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingRegion {
    /// Byte offset of the control block.
    pub(crate) control: usize,
    /// Byte offset of the data.
    pub(crate) data: usize,
    /// Data bytes.
    pub(crate) capacity: u32,
}

impl Layout {
    /// The layout of a valid spec. Every size fits comfortably in `usize` on 64-bit targets
    /// (at most ~2 TiB); the arithmetic is checked anyway.
    pub(crate) fn of(spec: SegmentSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        let cores = usize::from(spec.cores);
        let command = to_usize(spec.command_ring_bytes);
        let event = to_usize(spec.event_ring_bytes);
        let core_stride = 2 * RING_CONTROL_LEN + command + event;
        let stats_stride =
            (block_words(usize::from(spec.stats_slots)) * WORD).next_multiple_of(STATS_ALIGN);
        let stats_offset = PAGE + cores * core_stride;
        let len = stats_offset + (cores * stats_stride).next_multiple_of(PAGE);
        Ok(Self {
            spec,
            core_stride,
            stats_offset,
            stats_stride,
            len,
        })
    }

    /// Core `core`'s command ring (control → dataplane).
    pub(crate) fn command_ring(&self, core: usize) -> RingRegion {
        let control = PAGE + core * self.core_stride;
        RingRegion {
            control,
            data: control + RING_CONTROL_LEN,
            capacity: self.spec.command_ring_bytes,
        }
    }

    /// Core `core`'s event ring (dataplane → control).
    pub(crate) fn event_ring(&self, core: usize) -> RingRegion {
        let control = PAGE
            + core * self.core_stride
            + RING_CONTROL_LEN
            + to_usize(self.spec.command_ring_bytes);
        RingRegion {
            control,
            data: control + RING_CONTROL_LEN,
            capacity: self.spec.event_ring_bytes,
        }
    }

    /// Byte offset of core `core`'s stats block.
    pub(crate) fn stats_block(&self, core: usize) -> usize {
        self.stats_offset + core * self.stats_stride
    }

    /// Writes the header of a fresh (zeroed) segment, the magic last: an attacher that sees
    /// the magic sees every other field.
    pub(crate) fn write_header(&self, words: &[AtomicU64]) {
        let fields = [
            (H_VERSION, LAYOUT_VERSION),
            (H_CORES, u64::from(self.spec.cores)),
            (H_COMMAND_RING, u64::from(self.spec.command_ring_bytes)),
            (H_EVENT_RING, u64::from(self.spec.event_ring_bytes)),
            (H_STATS_SLOTS, u64::from(self.spec.stats_slots)),
            (H_LEN, to_u64(self.len)),
        ];
        for (word, value) in fields {
            // Relaxed: published by the Release store of the magic below.
            words[word].store(value, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire load in `read_header`, so whoever sees the magic
        // sees the fields. (Across processes the file is only linked into place after this,
        // which orders it anyway; in one process this is what does.)
        words[H_MAGIC].store(MAGIC, Ordering::Release);
    }

    /// Reads and checks a segment's header against the file's length: the layout it
    /// describes, or what is wrong with it.
    pub(crate) fn read_header(words: &[AtomicU64], file_len: u64) -> Result<Self, HeaderError> {
        if file_len < to_u64(PAGE) || words.len() < PAGE / WORD {
            return Err(HeaderError::TooShort { len: file_len });
        }
        // Acquire: pairs with the Release store in `write_header`.
        let magic = words[H_MAGIC].load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(HeaderError::Magic { found: magic });
        }
        // Relaxed: ordered after the magic's Acquire load, and never written again.
        let field = |word: usize| words[word].load(Ordering::Relaxed);
        let version = field(H_VERSION);
        if version != LAYOUT_VERSION {
            return Err(HeaderError::Version { found: version });
        }
        let (cores, command, event, slots) = (
            field(H_CORES),
            field(H_COMMAND_RING),
            field(H_EVENT_RING),
            field(H_STATS_SLOTS),
        );
        let spec = check_geometry(cores, command, event, slots).map_err(HeaderError::Geometry)?;
        let layout = Self::of(spec).map_err(HeaderError::Geometry)?;
        let expected = to_u64(layout.len);
        let declared = field(H_LEN);
        if declared != expected {
            return Err(HeaderError::LengthField { expected, declared });
        }
        if file_len != expected {
            return Err(HeaderError::FileLength {
                expected,
                found: file_len,
            });
        }
        Ok(layout)
    }

    /// Checks the layout against the spec the attaching side was configured with.
    pub(crate) fn expect(&self, spec: &SegmentSpec) -> Result<(), HeaderError> {
        let pairs = [
            (
                Field::Cores,
                u64::from(spec.cores),
                u64::from(self.spec.cores),
            ),
            (
                Field::CommandRingBytes,
                u64::from(spec.command_ring_bytes),
                u64::from(self.spec.command_ring_bytes),
            ),
            (
                Field::EventRingBytes,
                u64::from(spec.event_ring_bytes),
                u64::from(self.spec.event_ring_bytes),
            ),
            (
                Field::StatsSlots,
                u64::from(spec.stats_slots),
                u64::from(self.spec.stats_slots),
            ),
        ];
        for (field, expected, found) in pairs {
            if expected != found {
                return Err(HeaderError::Mismatch {
                    field,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }
}

/// Validates raw geometry (from a spec, or from a header where every field is a `u64`).
fn check_geometry(
    cores: u64,
    command: u64,
    event: u64,
    slots: u64,
) -> Result<SegmentSpec, SpecError> {
    let cores = u16::try_from(cores)
        .ok()
        .filter(|&c| (1..=MAX_CORES).contains(&c))
        .ok_or(SpecError::Cores { found: cores })?;
    let ring = |field: Field, bytes: u64| {
        u32::try_from(bytes)
            .ok()
            .filter(|b| b.is_power_of_two() && (MIN_RING_BYTES..=MAX_RING_BYTES).contains(b))
            .ok_or(SpecError::RingBytes {
                field,
                found: bytes,
            })
    };
    let command_ring_bytes = ring(Field::CommandRingBytes, command)?;
    let event_ring_bytes = ring(Field::EventRingBytes, event)?;
    let stats_slots = u16::try_from(slots)
        .ok()
        .filter(|&s| (1..=MAX_STATS_SLOTS).contains(&s))
        .ok_or(SpecError::StatsSlots { found: slots })?;
    Ok(SegmentSpec {
        cores,
        command_ring_bytes,
        event_ring_bytes,
        stats_slots,
    })
}

fn to_usize(bytes: u32) -> usize {
    // Lossless on every target with 64-bit atomics and a usize of at least 32 bits.
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_page_aligned_and_disjoint() {
        let spec = SegmentSpec {
            cores: 3,
            command_ring_bytes: 64 * 1024,
            event_ring_bytes: 128 * 1024,
            stats_slots: 5,
        };
        let layout = Layout::of(spec).unwrap();
        let mut regions = vec![(0, PAGE)];
        for core in 0..3 {
            for ring in [layout.command_ring(core), layout.event_ring(core)] {
                assert_eq!(ring.control % PAGE, 0);
                assert_eq!(ring.data % PAGE, 0);
                regions.push((ring.control, ring.control + RING_CONTROL_LEN));
                regions.push((ring.data, ring.data + ring.capacity as usize));
            }
            let stats = layout.stats_block(core);
            assert_eq!(stats % STATS_ALIGN, 0);
            regions.push((stats, stats + layout.stats_stride));
        }
        assert_eq!(layout.stats_block(0) % PAGE, 0);
        assert_eq!(
            layout.stats_stride, 256,
            "64 + 2 × (2 + 5) × 8 rounds up to 256"
        );
        regions.sort_unstable();
        for pair in regions.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:?} overlap");
        }
        assert!(regions.last().unwrap().1 <= layout.len);
        assert_eq!(layout.len % PAGE, 0);
    }

    #[test]
    fn spec_bounds() {
        let ok = SegmentSpec::new(4);
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                SegmentSpec { cores: 0, ..ok },
                SpecError::Cores { found: 0 },
            ),
            (
                SegmentSpec {
                    cores: MAX_CORES + 1,
                    ..ok
                },
                SpecError::Cores {
                    found: u64::from(MAX_CORES) + 1,
                },
            ),
            (
                SegmentSpec {
                    command_ring_bytes: 100_000,
                    ..ok
                },
                SpecError::RingBytes {
                    field: Field::CommandRingBytes,
                    found: 100_000,
                },
            ),
            (
                SegmentSpec {
                    event_ring_bytes: MIN_RING_BYTES / 2,
                    ..ok
                },
                SpecError::RingBytes {
                    field: Field::EventRingBytes,
                    found: u64::from(MIN_RING_BYTES / 2),
                },
            ),
            (
                SegmentSpec {
                    event_ring_bytes: MAX_RING_BYTES * 2,
                    ..ok
                },
                SpecError::RingBytes {
                    field: Field::EventRingBytes,
                    found: u64::from(MAX_RING_BYTES) * 2,
                },
            ),
            (
                SegmentSpec {
                    stats_slots: 0,
                    ..ok
                },
                SpecError::StatsSlots { found: 0 },
            ),
        ];
        for (spec, error) in cases {
            assert_eq!(spec.validate(), Err(error), "{spec:?}");
        }
    }
}
