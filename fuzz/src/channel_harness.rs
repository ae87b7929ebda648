//! The bodies of the `boson-channel` fuzz targets, as plain `fn(&[u8])`.
//!
//! The libFuzzer binaries `plane_codec` and `channel_ring` call these, and so does the
//! stable replay test `channel/tests/fuzz_corpus.rs`, which includes this file by path. A
//! function panics if and only if it found a bug. Only the crate's public API is used.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use boson_channel::codec::{decode_command, decode_event, encode_command, encode_event};
use boson_channel::{
    Backing, ControlEnd, CoreEnd, CoreId, RecvError, Segment, SegmentSpec, SendError, Side,
};
use boson_shared::NodeId;
use boson_shared::plane::{Command, Event, Grant, Transport};

/// A target's body: panics if and only if the input exposes a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay: `corpus/<name>/*` goes through the function.
pub const TARGETS: &[(&str, Target)] =
    &[("plane_codec", plane_codec), ("channel_ring", channel_ring)];

// ---------------------------------------------------------------------------------------------
// plane_codec

/// The codec: the first byte picks the decoder (even: `Command`, odd: `Event`), the rest is
/// one message. Decoding must not panic, and whatever decodes must re-encode to exactly the
/// input (the encoding is canonical).
pub fn plane_codec(data: &[u8]) {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let mut again = Vec::new();
    if selector % 2 == 0 {
        if let Ok(command) = decode_command(message) {
            encode_command(&command, &mut again).expect("a decoded command re-encodes");
            assert_eq!(
                again, message,
                "non-canonical encoding of {command:?} accepted"
            );
        }
    } else if let Ok(event) = decode_event(message) {
        encode_event(&event, &mut again).expect("a decoded event re-encodes");
        assert_eq!(
            again, message,
            "non-canonical encoding of {event:?} accepted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// channel_ring

/// Most operations per input.
const MAX_OPS: usize = 400;

/// Two cores with the smallest rings, so large messages fill them in a few steps.
const SPEC: SegmentSpec = SegmentSpec {
    cores: 2,
    command_ring_bytes: 64 * 1024,
    event_ring_bytes: 64 * 1024,
    stats_slots: 3,
};

#[derive(Arbitrary, Debug)]
enum RingOp {
    SendCommand {
        core: u8,
        seed: u16,
        size: u16,
        keep: bool,
    },
    RecvCommand {
        core: u8,
    },
    SendEvent {
        core: u8,
        seed: u16,
        size: u16,
        keep: bool,
    },
    RecvEvent {
        core: u8,
    },
    Publish {
        core: u8,
        value: u64,
    },
    /// Drops a side's end and mapping and attaches again, as a restarted process would.
    Reattach {
        control: bool,
    },
    /// Overwrites one word of the segment file: from here on only "no panic" is checked.
    Corrupt {
        offset: u32,
        value: u64,
    },
}

/// A control plane and a dataplane, as two attaches of one file, plus a model of every
/// ring: the messages in it and the bytes they take.
struct RingRun {
    path: PathBuf,
    file: File,
    control_segment: Option<Segment>,
    control: Option<ControlEnd>,
    dataplane_segment: Option<Segment>,
    cores: Vec<CoreEnd>,
    commands: [Model<Command>; 2],
    events: [Model<Event>; 2],
    incarnations: [u64; 2],
    corrupted: bool,
}

struct Model<T> {
    queue: std::collections::VecDeque<(T, u32)>,
    used: u32,
    dropped: u64,
}

impl<T> Default for Model<T> {
    fn default() -> Self {
        Self {
            queue: Default::default(),
            used: 0,
            dropped: 0,
        }
    }
}

/// The ring model's size of a frame carrying `len` bytes.
fn frame(len: usize) -> u32 {
    u32::try_from((4 + len).next_multiple_of(8)).expect("small")
}

/// Runs a sequence of ring operations against the model.
pub fn channel_ring(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Some(mut run) = RingRun::new() else {
        return; // no writable temporary directory: nothing to test
    };
    for _ in 0..MAX_OPS {
        let Ok(op) = u.arbitrary::<RingOp>() else {
            break;
        };
        if !run.step(op) {
            break;
        }
    }
    run.finish();
}

fn segment_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("boson-channel-fuzz-{}-{n}", std::process::id()))
}

fn command(seed: u16, size: u16) -> Command {
    let node = NodeId::from_bytes([seed as u8; 16]);
    match seed % 4 {
        0 => Command::Grant(Grant {
            node,
            generation: i64::from(seed),
            expires_at: u64::from(size),
        }),
        1 => Command::Revoke { node },
        2 => {
            // Up to 16 secrets of up to 1 KiB: up to 16 KiB, a quarter of a ring.
            let len = usize::from(size) % 1025;
            let count = 1 + usize::from(seed >> 8) % 16;
            Command::TurnSecrets(vec![vec![seed as u8; len]; count])
        }
        _ => Command::Drain {
            deadline: u64::from(seed),
        },
    }
}

fn event(seed: u16, size: u16) -> Event {
    let node = NodeId::from_bytes([seed as u8; 16]);
    match seed % 3 {
        0 => Event::NodeConnected {
            node,
            core: seed,
            transport: Transport::Quic,
        },
        1 => Event::AllocationCreated {
            core: seed,
            user: "u".repeat(usize::from(size) % 1025),
            relay: SocketAddr::from((Ipv4Addr::from(u32::from(seed)), size)),
        },
        _ => Event::NeedGrants,
    }
}

impl RingRun {
    fn new() -> Option<Self> {
        let path = segment_path();
        let control_segment = Segment::create(SPEC, Backing::Path(path.clone())).ok()?;
        let dataplane_segment = Segment::attach_expecting(&path, &SPEC).expect("attach");
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        let control = control_segment.control().expect("claim control");
        let cores = dataplane_segment
            .dataplane()
            .expect("claim dataplane")
            .into_cores();
        Some(Self {
            path,
            file,
            control_segment: Some(control_segment),
            control: Some(control),
            dataplane_segment: Some(dataplane_segment),
            cores,
            commands: Default::default(),
            events: Default::default(),
            incarnations: [1, 1],
            corrupted: false,
        })
    }

    /// One operation; `false` ends the run (the segment can no longer be attached).
    fn step(&mut self, op: RingOp) -> bool {
        match op {
            RingOp::SendCommand {
                core,
                seed,
                size,
                keep,
            } => {
                let core = usize::from(core % 2);
                let command = command(seed, size);
                let control = self.control.as_mut().expect("attached");
                let link = control.core(CoreId(core as u16)).expect("core");
                let sent = if keep {
                    link.try_send_keep(&command)
                } else {
                    link.try_send(&command)
                };
                let mut bytes = Vec::new();
                encode_command(&command, &mut bytes).expect("within bounds");
                let status = link.commands_status();
                check_send(
                    &mut self.commands[core],
                    command,
                    bytes.len(),
                    keep,
                    sent,
                    self.corrupted,
                );
                if !self.corrupted {
                    let model = &self.commands[core];
                    assert_eq!(status.depth_bytes, model.used);
                    assert_eq!(status.depth_messages as usize, model.queue.len());
                    assert_eq!(status.dropped, model.dropped);
                }
            }
            RingOp::RecvCommand { core } => {
                let core = usize::from(core % 2);
                let received = self.cores[core].recv_command();
                check_recv(&mut self.commands[core], received, self.corrupted);
            }
            RingOp::SendEvent {
                core,
                seed,
                size,
                keep,
            } => {
                let core = usize::from(core % 2);
                let event = event(seed, size);
                let end = &mut self.cores[core];
                let sent = if keep {
                    end.try_send_event_keep(&event)
                } else {
                    end.try_send_event(&event)
                };
                let mut bytes = Vec::new();
                encode_event(&event, &mut bytes).expect("within bounds");
                check_send(
                    &mut self.events[core],
                    event,
                    bytes.len(),
                    keep,
                    sent,
                    self.corrupted,
                );
                if !self.corrupted {
                    let status = self.cores[core].events_status();
                    assert_eq!(status.depth_bytes, self.events[core].used);
                    assert_eq!(status.dropped, self.events[core].dropped);
                }
            }
            RingOp::RecvEvent { core } => {
                let core = usize::from(core % 2);
                let control = self.control.as_mut().expect("attached");
                let received = control
                    .core(CoreId(core as u16))
                    .expect("core")
                    .recv_event();
                check_recv(&mut self.events[core], received, self.corrupted);
            }
            RingOp::Publish { core, value } => {
                let core = usize::from(core % 2);
                self.cores[core]
                    .stats()
                    .publish(value, &[value, !value])
                    .expect("within the slots");
                let observer = self.control_segment.as_ref().expect("attached").observer();
                let snapshot = observer.stats(CoreId(core as u16));
                if !self.corrupted {
                    let snapshot = snapshot.expect("readable without a concurrent writer");
                    assert_eq!(snapshot.heartbeat, value);
                    assert_eq!(snapshot.values, [value, !value, 0]);
                    assert_eq!(snapshot.incarnation.get(), self.incarnations[1]);
                }
            }
            RingOp::Reattach { control } => return self.reattach(control),
            RingOp::Corrupt { offset, value } => {
                let len = fs::metadata(&self.path).expect("segment file").len();
                let offset = (u64::from(offset) % len) & !7;
                self.file
                    .write_all_at(&value.to_le_bytes(), offset)
                    .expect("write");
                self.corrupted = true;
            }
        }
        true
    }

    fn reattach(&mut self, control: bool) -> bool {
        let side = if control {
            Side::Control
        } else {
            Side::Dataplane
        };
        if control {
            self.control = None;
            self.control_segment = None;
        } else {
            self.cores.clear();
            self.dataplane_segment = None;
        }
        let Ok(segment) = Segment::attach_expecting(&self.path, &SPEC) else {
            assert!(self.corrupted, "an intact segment re-attaches");
            return false;
        };
        let incarnation = if control {
            let Ok(end) = segment.control() else {
                assert!(self.corrupted);
                return false;
            };
            let incarnation = end.incarnation().get();
            self.control = Some(end);
            self.control_segment = Some(segment);
            incarnation
        } else {
            let Ok(end) = segment.dataplane() else {
                assert!(self.corrupted);
                return false;
            };
            let incarnation = end.incarnation().get();
            self.cores = end.into_cores();
            self.dataplane_segment = Some(segment);
            incarnation
        };
        let i = side as usize;
        if !self.corrupted {
            assert_eq!(incarnation, self.incarnations[i] + 1, "{side} incarnation");
            let peer_saw = if control {
                self.cores.iter_mut().all(|core| {
                    core.poll_peer().map(|peer| peer.incarnation.get()) == Some(incarnation)
                })
            } else {
                let control = self.control.as_mut().expect("attached");
                control.poll_peer().map(|peer| peer.incarnation.get()) == Some(incarnation)
            };
            assert!(peer_saw, "the peer sees the new {side} incarnation");
        }
        self.incarnations[i] = incarnation;
        true
    }

    /// Drains every ring: whatever is left in the model comes out, in order.
    fn finish(mut self) {
        for core in 0..2 {
            while let Some(received) = self.cores.get_mut(core).and_then(CoreEnd::recv_command) {
                check_recv(&mut self.commands[core], Some(received), self.corrupted);
            }
            if let Some(control) = self.control.as_mut() {
                let link = control.core(CoreId(core as u16)).expect("core");
                while let Some(received) = link.recv_event() {
                    check_recv(&mut self.events[core], Some(received), self.corrupted);
                }
            }
            if !self.corrupted && !self.cores.is_empty() && self.control.is_some() {
                assert!(self.commands[core].queue.is_empty(), "commands lost");
                assert!(self.events[core].queue.is_empty(), "events lost");
            }
        }
    }
}

impl Drop for RingRun {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn check_send<T>(
    model: &mut Model<T>,
    message: T,
    len: usize,
    keep: bool,
    sent: Result<(), SendError>,
    corrupted: bool,
) {
    if corrupted {
        return;
    }
    let frame = frame(len);
    let fits = model.used + frame <= 64 * 1024;
    match sent {
        Ok(()) => {
            assert!(fits, "sent into a full ring");
            model.used += frame;
            model.queue.push_back((message, frame));
        }
        Err(SendError::Full) => {
            assert!(!fits, "refused with room");
            if !keep {
                model.dropped += 1;
            }
        }
        Err(other) => panic!("send failed on an intact ring: {other}"),
    }
}

fn check_recv<T: PartialEq + std::fmt::Debug>(
    model: &mut Model<T>,
    received: Option<Result<T, RecvError>>,
    corrupted: bool,
) {
    if corrupted {
        // Anything but a panic; keep the model from being consulted again.
        model.queue.clear();
        return;
    }
    match (received, model.queue.pop_front()) {
        (None, None) => {}
        (Some(Ok(got)), Some((expected, frame))) => {
            assert_eq!(got, expected);
            model.used -= frame;
        }
        (got, expected) => panic!("received {got:?}, model expected {expected:?}"),
    }
}
