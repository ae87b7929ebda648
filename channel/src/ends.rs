//! The two ends of a segment: [`ControlEnd`] (one [`CoreLink`] per core) and
//! [`DataplaneEnd`] (one [`CoreEnd`] per core, each moved to its worker thread).
//!
//! Each ring has exactly one producer and one consumer: a side's end can be claimed once
//! (per process by a flag, across processes by a lock), the per-core handles are neither
//! `Clone` nor `Sync`, and every method that touches a ring takes `&mut self`.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use boson_shared::plane::{Command, Event, UnixMs};

use crate::codec::{self, DecodeError, EncodeError, MAX_MESSAGE_LEN, decode_command, decode_event};
use crate::layout::{Incarnation, MIN_RING_BYTES, SegmentSpec, Side};
use crate::ring::{Consumer, Corruption, Producer, PushError, RingStatus};
use crate::segment::{Claim, CoreId, Observer, PeerAttached, PeerWatch, Shared};
use crate::stats::StatsWriter;

// Every encodable message fits in every ring, with room to spare.
const _: () = assert!(MAX_MESSAGE_LEN * 2 <= MIN_RING_BYTES as usize);

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The ring has no room now. `try_send*` counted it as dropped; `try_send*_keep` did
    /// not (the caller still holds the message and retries).
    #[error("ring full")]
    Full,
    /// A field is over its codec bound; nothing was written or counted.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The encoding is larger than the ring can ever hold. Cannot happen with the codec's
    /// bounds (every encoding is at most [`MAX_MESSAGE_LEN`], half the smallest ring).
    #[error("message of {len} bytes, the ring carries at most {max}")]
    TooLarge {
        /// The encoded length.
        len: usize,
        /// The ring's largest message.
        max: usize,
    },
    /// The ring's indices are corrupt (the consumer resyncs when it next reads).
    #[error("ring corrupt: {0}")]
    Corrupt(Corruption),
}

/// Why a received message is unusable. Either way the ring has moved on: the next call
/// returns the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// A message that does not decode was consumed and skipped (counted in
    /// [`RingStatus::undecodable`]).
    #[error("undecodable message skipped: {0}")]
    Decode(#[from] DecodeError),
    /// The ring was corrupt; everything committed before now was skipped (counted in
    /// [`RingStatus::resyncs`]).
    #[error("ring corrupt, skipped to the producer's tail: {0}")]
    Corrupt(#[from] Corruption),
}

/// The control plane's end: a [`CoreLink`] per core, and the dataplane's liveness.
///
/// Drive it from one task: each turn, [`poll_peer`](Self::poll_peer) (on `Some`, re-push
/// every grant: `ClearGrants` then one `Grant` per node), drain every core's
/// [`recv_event`](CoreLink::recv_event), then send commands. `Send`, not `Sync`.
pub struct ControlEnd {
    claim: Arc<Claim>,
    links: Vec<CoreLink>,
    peer: PeerWatch,
}

impl ControlEnd {
    pub(crate) fn new(shared: &Shared, claim: Arc<Claim>) -> Self {
        let links = (0..shared.cores())
            .map(|core| CoreLink {
                core: CoreId(core as u16),
                commands: Outbox::new(Producer::new(shared.command_ring(core))),
                events: Inbox::new(Consumer::new(shared.event_ring(core))),
                _claim: Arc::clone(&claim),
                _not_sync: PhantomData,
            })
            .collect();
        Self {
            claim,
            links,
            peer: PeerWatch::new(Side::Dataplane),
        }
    }

    /// This control plane's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.claim.incarnation
    }

    /// The segment's shape.
    pub fn spec(&self) -> SegmentSpec {
        self.claim.shared.layout.spec
    }

    /// The link to core `core`, or `None` past the last core.
    pub fn core(&mut self, core: CoreId) -> Option<&mut CoreLink> {
        self.links.get_mut(core.index())
    }

    /// Every core's link, in core order.
    pub fn cores_mut(&mut self) -> &mut [CoreLink] {
        &mut self.links
    }

    /// `Some` once per new dataplane incarnation: the first call after it attaches, and
    /// after each restart. The dataplane then holds no grants: re-push them.
    pub fn poll_peer(&mut self) -> Option<PeerAttached> {
        self.peer.poll(&self.claim.shared)
    }

    /// Records that the control plane is alive at `now` (read by
    /// [`Observer::control_heartbeat`]).
    pub fn heartbeat(&self, now: UnixMs) {
        let word = &self.claim.shared.mem.words()[Side::Control.heartbeat_word()];
        // Relaxed: a gauge, nothing is published with it.
        word.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// A read-only view of the segment.
    pub fn observer(&self) -> Observer {
        Observer::new(Arc::clone(&self.claim.shared))
    }
}

/// The control plane's link to one core: the producer of its command ring and the consumer
/// of its event ring. `Send`, not `Sync` nor `Clone`.
pub struct CoreLink {
    core: CoreId,
    commands: Outbox,
    events: Inbox,
    _claim: Arc<Claim>,
    _not_sync: PhantomData<Cell<()>>,
}

impl CoreLink {
    /// Which core.
    pub fn id(&self) -> CoreId {
        self.core
    }

    /// Sends `command`; when the ring is full it is dropped and counted
    /// ([`RingStatus::dropped`]).
    pub fn try_send(&mut self, command: &Command) -> Result<(), SendError> {
        self.commands
            .send(|out| codec::encode_command(command, out), OnFull::Drop)?;
        Ok(())
    }

    /// Sends `command`; when the ring is full returns [`SendError::Full`] without counting
    /// a drop, for a caller that keeps the command and retries (a grant re-push).
    pub fn try_send_keep(&mut self, command: &Command) -> Result<(), SendError> {
        self.commands
            .send(|out| codec::encode_command(command, out), OnFull::Keep)?;
        Ok(())
    }

    /// The oldest event, if any.
    pub fn recv_event(&mut self) -> Option<Result<Event, RecvError>> {
        self.events.recv(decode_event)
    }

    /// The command ring's counters.
    pub fn commands_status(&self) -> RingStatus {
        self.commands.producer.ring().status()
    }

    /// The event ring's counters.
    pub fn events_status(&self) -> RingStatus {
        self.events.consumer.ring().status()
    }
}

/// The dataplane's end: a [`CoreEnd`] per core, to be moved to the cores' threads with
/// [`into_cores`](Self::into_cores).
pub struct DataplaneEnd {
    claim: Arc<Claim>,
    cores: Vec<CoreEnd>,
}

impl DataplaneEnd {
    pub(crate) fn new(shared: &Shared, claim: Arc<Claim>) -> Self {
        let cores = (0..shared.cores())
            .map(|core| CoreEnd {
                core: CoreId(core as u16),
                commands: Inbox::new(Consumer::new(shared.command_ring(core))),
                events: Outbox::new(Producer::new(shared.event_ring(core))),
                stats: StatsWriter::new(shared.stats_block(core), claim.incarnation),
                peer: PeerWatch::new(Side::Control),
                claim: Arc::clone(&claim),
                _not_sync: PhantomData,
            })
            .collect();
        Self { claim, cores }
    }

    /// This dataplane's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.claim.incarnation
    }

    /// The segment's shape.
    pub fn spec(&self) -> SegmentSpec {
        self.claim.shared.layout.spec
    }

    /// A read-only view of the segment.
    pub fn observer(&self) -> Observer {
        Observer::new(Arc::clone(&self.claim.shared))
    }

    /// One handle per core, in core order. The claim is released when the last is dropped.
    pub fn into_cores(self) -> Vec<CoreEnd> {
        self.cores
    }
}

/// One worker core's end: the consumer of its command ring, the producer of its event ring
/// and the writer of its stats block. `Send` (move it to the core's thread), not `Sync` nor
/// `Clone`:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<boson_channel::CoreEnd>();
/// ```
///
/// ```compile_fail
/// fn cloned<T: Clone>() {}
/// cloned::<boson_channel::CoreEnd>();
/// ```
///
/// A turn of the worker's loop: [`poll_peer`](Self::poll_peer) (on `Some`, re-announce
/// this core's connected nodes), drain [`recv_command`](Self::recv_command), send events
/// with [`try_send_event`](Self::try_send_event) (never blocks: a full ring drops and
/// counts), and now and then [`stats`](Self::stats)`.publish(now, ..)`.
pub struct CoreEnd {
    core: CoreId,
    commands: Inbox,
    events: Outbox,
    stats: StatsWriter,
    peer: PeerWatch,
    claim: Arc<Claim>,
    _not_sync: PhantomData<Cell<()>>,
}

impl CoreEnd {
    /// Which core.
    pub fn id(&self) -> CoreId {
        self.core
    }

    /// This dataplane's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.claim.incarnation
    }

    /// The oldest command, if any.
    pub fn recv_command(&mut self) -> Option<Result<Command, RecvError>> {
        self.commands.recv(decode_command)
    }

    /// Sends `event`; when the ring is full it is dropped and counted
    /// ([`RingStatus::dropped`]).
    pub fn try_send_event(&mut self, event: &Event) -> Result<(), SendError> {
        self.events
            .send(|out| codec::encode_event(event, out), OnFull::Drop)?;
        Ok(())
    }

    /// Sends `event`; when the ring is full returns [`SendError::Full`] without counting a
    /// drop, for a caller that keeps the event and retries.
    pub fn try_send_event_keep(&mut self, event: &Event) -> Result<(), SendError> {
        self.events
            .send(|out| codec::encode_event(event, out), OnFull::Keep)?;
        Ok(())
    }

    /// This core's stats block writer.
    pub fn stats(&mut self) -> &mut StatsWriter {
        &mut self.stats
    }

    /// `Some` once per new control-plane incarnation: the first call after it attaches and
    /// after each restart. The new control plane knows nothing of this core's sessions:
    /// re-announce them.
    pub fn poll_peer(&mut self) -> Option<PeerAttached> {
        self.peer.poll(&self.claim.shared)
    }

    /// The command ring's counters.
    pub fn commands_status(&self) -> RingStatus {
        self.commands.consumer.ring().status()
    }

    /// The event ring's counters.
    pub fn events_status(&self) -> RingStatus {
        self.events.producer.ring().status()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFull {
    Drop,
    Keep,
}

/// A producer and the buffer messages are encoded in.
struct Outbox {
    producer: Producer,
    buf: Vec<u8>,
}

impl Outbox {
    fn new(producer: Producer) -> Self {
        Self {
            producer,
            buf: Vec::new(),
        }
    }

    fn send(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
        on_full: OnFull,
    ) -> Result<(), SendError> {
        self.buf.clear();
        encode(&mut self.buf)?;
        let error = match self.producer.push(&self.buf) {
            Ok(()) => return Ok(()),
            Err(PushError::Full) => SendError::Full,
            Err(PushError::TooLarge) => SendError::TooLarge {
                len: self.buf.len(),
                max: self.producer.ring().max_payload(),
            },
            Err(PushError::Corrupt(corruption)) => SendError::Corrupt(corruption),
        };
        if on_full == OnFull::Drop {
            self.producer.record_drop();
        }
        Err(error)
    }
}

/// A consumer and the buffer messages are copied into.
struct Inbox {
    consumer: Consumer,
    buf: Vec<u8>,
}

impl Inbox {
    fn new(consumer: Consumer) -> Self {
        Self {
            consumer,
            buf: Vec::new(),
        }
    }

    fn recv<T>(
        &mut self,
        decode: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Option<Result<T, RecvError>> {
        match self.consumer.pop(&mut self.buf) {
            Ok(false) => None,
            Ok(true) => match decode(&self.buf) {
                Ok(message) => Some(Ok(message)),
                Err(error) => {
                    self.consumer.record_undecodable();
                    Some(Err(error.into()))
                }
            },
            Err(corruption) => Some(Err(corruption.into())),
        }
    }
}
