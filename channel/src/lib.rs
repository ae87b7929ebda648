//! The shared-memory link between BosonServer's control plane and its dataplane: per-core
//! rings of [`Command`]s (control → dataplane) and [`Event`]s (dataplane → control), a stats
//! block per core, and each side's liveness.
//!
//! The same ring, in memory of its own ([`private_ring`]), is the relay's hand-off between
//! two cores of one process; [`RingProducer::push_parts`] gathers a record from several
//! slices and [`RingConsumer::drain`] lends records where they lie.
//!
//! Contract: no clock (heartbeats are times the caller supplies), no threads, no blocking,
//! and no allocation per message once buffers are warm beyond what a decoded value owns (a
//! `TurnSecrets` list, an allocation's user name). The only I/O is creating, opening and
//! mapping the segment, and the file locks that make a side's claim exclusive. Linux only
//! (memfd, open-file-description locks).
//!
//! # Use
//!
//! ```
//! use boson_channel::{Backing, CoreId, Segment, SegmentSpec};
//! use boson_shared::plane::{Command, Event};
//!
//! // One process (`bosonserver run`): a memfd. Two processes: `Backing::Path` on one side,
//! // `Segment::attach_expecting(path, &spec)` on the other (or `open_or_create` on both).
//! let segment = Segment::create(SegmentSpec::new(2), Backing::Memfd)?;
//! let mut control = segment.control()?;
//! let mut cores = segment.dataplane()?.into_cores(); // move each to its worker thread
//!
//! control.core(CoreId(1)).unwrap().try_send(&Command::ClearGrants)?;
//! let core = &mut cores[1];
//! assert_eq!(core.recv_command().unwrap()?, Command::ClearGrants);
//! core.try_send_event(&Event::NeedGrants)?;
//! core.stats().publish(1_700_000_000_000, &[7, 8, 9])?;
//!
//! assert_eq!(control.core(CoreId(1)).unwrap().recv_event().unwrap()?, Event::NeedGrants);
//! let snapshot = control.observer().stats(CoreId(1))?;
//! assert_eq!(&snapshot.values[..3], &[7, 8, 9]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! * Each ring is single-producer single-consumer, enforced: a side's end is claimed once
//!   per segment (a flag in this process, an OFD lock across processes), and the per-core
//!   handles are `Send` but neither `Sync` nor `Clone`.
//! * Bounded: a full ring refuses a message. `try_send` drops and counts it in the ring's
//!   `dropped` counter (in shared memory); `try_send_keep` leaves it to the caller.
//! * Messages arrive in order, each exactly once, including across restarts: the indices
//!   live in the segment, so a side that dies and re-attaches resumes where its
//!   predecessor's last completed operation left off. A message is committed by a single
//!   store, so one half-written by a killed producer is never seen, and one a killed
//!   consumer had not finished reading is delivered to its successor.
//! * A side that (re)claims its end bumps its [`Incarnation`]; the other side's
//!   `poll_peer` reports it once, which is the cue to resync (the control plane re-pushes
//!   grants, the dataplane re-announces connected nodes). [`Observer::side`] says whether a
//!   side is attached right now (the kernel drops a killed process's lock).
//! * Nothing read from the segment is trusted: every access is atomic (no data race even
//!   with a misbehaving peer), lengths and indices are checked, and the codec rejects any
//!   malformed input with a typed error ([`codec`]). The only `unsafe` code (mapping the
//!   file, `memfd_create`, `fcntl`) is in one private module, `mem`; the rest of the crate
//!   denies `unsafe_code`.
//! * Stats snapshots are consistent (a two-copy seqlock with one writer per block), and
//!   neither side waits for the other: a worker preempted or killed mid-publish leaves the
//!   copy readers use intact.
//!
//! # Layout
//!
//! Every field is a `u64` word, accessed atomically and stored little-endian (big-endian
//! targets are refused at compile time); regions are page-aligned. With
//! `C` = cores, `R_c` / `R_e` = command / event ring bytes, `S` = stats slots:
//!
//! | offset | length | region |
//! |---|---|---|
//! | 0 | 4096 | header |
//! | 4096 + c·(8192 + R_c + R_e) | 4096 | core c: command ring control block |
//! | … + 4096 | R_c | core c: command ring data |
//! | … + R_c | 4096 | core c: event ring control block |
//! | … + 4096 | R_e | core c: event ring data |
//! | 4096 + C·(8192 + R_c + R_e) | C·B rounded up to 4096 | stats blocks, B = 64 + 16·(2 + S) rounded up to 128 |
//!
//! Header (checked on attach; any difference is a [`HeaderError`]):
//!
//! | byte | field | written |
//! |---|---|---|
//! | 0x00 | magic `"BOSONSHM"` | last, at creation (Release) |
//! | 0x08 | layout version ([`LAYOUT_VERSION`]) | at creation |
//! | 0x10 | cores | at creation |
//! | 0x18 | command ring bytes | at creation |
//! | 0x20 | event ring bytes | at creation |
//! | 0x28 | stats slots | at creation |
//! | 0x30 | segment length in bytes | at creation |
//! | 0x40 | control: pid (0 after a clean detach) | by the control side on claim |
//! | 0x48 | control: incarnation | by the control side on claim |
//! | 0x50 | control: heartbeat | by [`ControlEnd::heartbeat`] |
//! | 0x80 | dataplane: pid | by the dataplane on claim |
//! | 0x88 | dataplane: incarnation | by the dataplane on claim |
//!
//! Ring control block (producer and consumer words 128 bytes apart, so they never share a
//! cache line nor a prefetched pair of lines):
//!
//! | byte | field | writer |
//! |---|---|---|
//! | 0x00 | tail: messages committed (high 32 bits), bytes committed (low 32 bits) | producer (Release) |
//! | 0x08 | messages dropped | producer |
//! | 0x80 | head: messages consumed (high 32), bytes consumed (low 32) | consumer (Release) |
//! | 0x88 | messages undecodable | consumer |
//! | 0x90 | resyncs after corruption | consumer |
//!
//! Ring data: frames, each a `u32` payload length, the payload (one [`codec`] message) and
//! zero padding to a multiple of 8. A frame starts at `position mod capacity` and may wrap
//! past the end of the data to its start. Positions and counts are wrapping `u32`s.
//!
//! Stats block (one writer: the core's [`CoreEnd`]); a latch of two copies, readers use
//! copy `sequence & 1` and the writer only writes the other one before moving them over:
//!
//! | byte | field |
//! |---|---|
//! | 0x00 | sequence: +1 per copy switch, +2 per publish |
//! | 0x40 | copy 0: heartbeat (caller's clock), dataplane incarnation, then S slots |
//! | 0x40 + 8·(2 + S) | copy 1: the same |
//!
//! # Model checking
//!
//! The ring and stats protocols are checked with loom (seconds in release mode, once loom is
//! built; every Acquire/Release on the ring tail and in the stats latch is load-bearing in
//! these models: weakening one makes them fail):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p boson-channel --release --lib loom
//! ```
//!
//! [`Command`]: boson_shared::plane::Command
//! [`Event`]: boson_shared::plane::Event

#![deny(unsafe_code)]
#![cfg_attr(
    loom,
    allow(
        dead_code,
        reason = "under loom only the protocols the model tests drive are compiled in"
    )
)]

#[cfg(not(target_os = "linux"))]
compile_error!("boson-channel needs Linux: memfd_create and open-file-description locks");
// The words are native-endian in memory; the layout tables (and tools that read a segment
// file) assume little-endian, which every target we deploy to is.
#[cfg(not(target_endian = "little"))]
compile_error!("boson-channel's segment layout is little-endian");

pub mod codec;
mod layout;
#[allow(unsafe_code, reason = "the one module that maps memory and calls libc")]
mod mem;
mod ring;
mod stats;
mod sync;

#[cfg(not(loom))]
mod ends;
#[cfg(not(loom))]
mod segment;

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(not(loom))]
pub use ends::{ControlEnd, CoreEnd, CoreLink, DataplaneEnd, RecvError, SendError};
pub use layout::{
    Field, HeaderError, Incarnation, LAYOUT_VERSION, MAGIC, MAX_CORES, MAX_RING_BYTES,
    MAX_STATS_SLOTS, MIN_RING_BYTES, PAGE, SegmentSpec, Side, SpecError,
};
#[cfg(not(loom))]
pub use ring::private_ring;
pub use ring::{
    Consumer as RingConsumer, Corruption, OutOfRecord, Producer as RingProducer, PushError, Record,
    RingStatus,
};
#[cfg(not(loom))]
pub use segment::{
    AttachError, Backing, ClaimError, CoreId, CreateError, Observer, OpenError, PeerAttached, Pid,
    Segment, SideState,
};
pub use stats::{Snapshot, StatsError, StatsWriter};
