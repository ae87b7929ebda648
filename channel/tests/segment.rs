//! One process, whole segments: creating and attaching (and every way a header can
//! disagree), claims, incarnations, resuming after a re-attach, drop counting, stats, and
//! a hand-written frame at the offsets the crate doc's layout table gives.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use boson_channel::codec::DecodeError;
use boson_channel::{
    AttachError, Backing, ClaimError, CoreId, Corruption, CreateError, Field, HeaderError,
    LAYOUT_VERSION, MAGIC, PAGE, RecvError, Segment, SegmentSpec, SendError, Side, SpecError,
    StatsError,
};
use boson_shared::NodeId;
use boson_shared::plane::{Command, Event, Grant};
use tempfile::TempDir;

fn dir() -> TempDir {
    // tmpfs like production when there is one.
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn spec() -> SegmentSpec {
    SegmentSpec {
        cores: 2,
        command_ring_bytes: 64 * 1024,
        event_ring_bytes: 128 * 1024,
        stats_slots: 8,
    }
}

fn grant(n: u32) -> Command {
    Command::Grant(Grant {
        node: NodeId::from_bytes([n as u8; 16]),
        generation: i64::from(n),
        expires_at: u64::from(n) * 1000,
    })
}

/// Creates a segment at `path` and unmaps it again.
fn create_at(path: &Path) {
    drop(Segment::create(spec(), Backing::Path(path.to_owned())).unwrap());
}

fn write_word(path: &Path, offset: u64, value: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_le_bytes(), offset).unwrap();
}

fn header_error(result: Result<Segment, AttachError>) -> HeaderError {
    match result {
        Err(error) => *error
            .header()
            .unwrap_or_else(|| panic!("not a header error: {error}")),
        Ok(_) => panic!("attached a bad segment"),
    }
}

#[test]
fn attach_sees_the_creators_shape() {
    let dir = dir();
    let path = dir.path().join("seg");
    let created = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
    let attached = Segment::attach(&path).unwrap();
    assert_eq!(attached.spec(), spec());
    assert_eq!(attached.path(), Some(path.as_path()));
    Segment::attach_expecting(&path, &spec()).unwrap();
    drop(created);
    // The file outlives every mapping, and nothing but the segment is left behind.
    let names: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(names, std::slice::from_ref(&path));
    let len = fs::metadata(&path).unwrap().len();
    // Header, 2 × (2 control pages + 64 KiB + 128 KiB), one page of stats blocks.
    assert_eq!(len, 4096 + 2 * (8192 + 65_536 + 131_072) + 4096);
}

#[test]
fn create_refuses_an_existing_path_and_a_bad_spec() {
    let dir = dir();
    let path = dir.path().join("seg");
    create_at(&path);
    let error = Segment::create(spec(), Backing::Path(path)).err().unwrap();
    assert!(matches!(error, CreateError::Exists { .. }), "{error}");
    let bad = SegmentSpec { cores: 0, ..spec() };
    let error = Segment::create(bad, Backing::Memfd).err().unwrap();
    assert!(
        matches!(error, CreateError::Spec(SpecError::Cores { found: 0 })),
        "{error}"
    );
}

#[test]
fn open_or_create_creates_once_then_attaches() {
    let dir = dir();
    let path = dir.path().join("seg");
    let first = Segment::open_or_create(spec(), &path).unwrap();
    let second = Segment::open_or_create(spec(), &path).unwrap();
    let mut control = first.control().unwrap();
    let mut cores = second.dataplane().unwrap().into_cores();
    control
        .core(CoreId(0))
        .unwrap()
        .try_send(&grant(1))
        .unwrap();
    assert_eq!(cores[0].recv_command().unwrap().unwrap(), grant(1));
    let other = SegmentSpec {
        stats_slots: 9,
        ..spec()
    };
    assert!(Segment::open_or_create(other, &path).is_err());
}

#[test]
fn every_header_field_is_checked_on_attach() {
    let dir = dir();
    let path = dir.path().join("seg");
    let layout_len = 4096 + 2 * (8192 + 65_536 + 131_072) + 4096;

    let cases: [(&str, u64, u64, HeaderError); 8] = [
        ("magic", 0x00, 0x1234, HeaderError::Magic { found: 0x1234 }),
        ("version", 0x08, 1, HeaderError::Version { found: 1 }),
        (
            "cores",
            0x10,
            0,
            HeaderError::Geometry(SpecError::Cores { found: 0 }),
        ),
        (
            "command ring",
            0x18,
            3 << 20,
            HeaderError::Geometry(SpecError::RingBytes {
                field: Field::CommandRingBytes,
                found: 3 << 20,
            }),
        ),
        (
            "event ring",
            0x20,
            1 << 40,
            HeaderError::Geometry(SpecError::RingBytes {
                field: Field::EventRingBytes,
                found: 1 << 40,
            }),
        ),
        (
            "stats slots",
            0x28,
            100_000,
            HeaderError::Geometry(SpecError::StatsSlots { found: 100_000 }),
        ),
        (
            "length",
            0x30,
            12345,
            HeaderError::LengthField {
                expected: layout_len,
                declared: 12345,
            },
        ),
        (
            // A valid geometry, but not the one the length field was computed from.
            "cores vs length",
            0x10,
            3,
            HeaderError::LengthField {
                expected: 4096 + 3 * (8192 + 65_536 + 131_072) + 4096,
                declared: layout_len,
            },
        ),
    ];
    for (name, offset, value, expected) in cases {
        fs::remove_file(&path).ok();
        create_at(&path);
        write_word(&path, offset, value);
        assert_eq!(header_error(Segment::attach(&path)), expected, "{name}");
    }

    // A consistent header for three cores on a two-core file.
    let three_cores = 4096 + 3 * (8192 + 65_536 + 131_072) + 4096;
    write_word(&path, 0x10, 3);
    write_word(&path, 0x30, three_cores);
    assert_eq!(
        header_error(Segment::attach(&path)),
        HeaderError::FileLength {
            expected: three_cores,
            found: layout_len
        }
    );

    // The file's own length.
    fs::remove_file(&path).unwrap();
    create_at(&path);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(layout_len + 4096)
        .unwrap();
    assert_eq!(
        header_error(Segment::attach(&path)),
        HeaderError::FileLength {
            expected: layout_len,
            found: layout_len + 4096
        }
    );
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_eq!(
        header_error(Segment::attach(&path)),
        HeaderError::TooShort { len: 100 }
    );

    // A valid segment of another shape than the attaching side expects: each field.
    fs::remove_file(&path).unwrap();
    create_at(&path);
    let expectations = [
        (SegmentSpec { cores: 4, ..spec() }, Field::Cores, 4, 2),
        (
            SegmentSpec {
                command_ring_bytes: 1 << 20,
                ..spec()
            },
            Field::CommandRingBytes,
            1 << 20,
            65_536,
        ),
        (
            SegmentSpec {
                event_ring_bytes: 64 * 1024,
                ..spec()
            },
            Field::EventRingBytes,
            65_536,
            131_072,
        ),
        (
            SegmentSpec {
                stats_slots: 64,
                ..spec()
            },
            Field::StatsSlots,
            64,
            8,
        ),
    ];
    for (expect, field, expected, found) in expectations {
        let error = Segment::attach_expecting(&path, &expect).err().unwrap();
        assert_eq!(
            error.header(),
            Some(&HeaderError::Mismatch {
                field,
                expected,
                found
            }),
            "{field}"
        );
    }
    // The message names the file, the field and both values.
    let error = Segment::attach_expecting(&path, &SegmentSpec { cores: 4, ..spec() })
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("cores is 2, expected 4"), "{error}");
    assert!(error.contains(path.to_str().unwrap()), "{error}");
    assert_eq!(MAGIC.to_le_bytes(), *b"BOSONSHM");
    assert_eq!(LAYOUT_VERSION, 3);
}

#[test]
fn handles_are_send_and_observers_are_shareable() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync + Clone>() {}
    send::<boson_channel::ControlEnd>();
    send::<boson_channel::CoreLink>();
    send::<boson_channel::DataplaneEnd>();
    send::<boson_channel::CoreEnd>();
    shared::<boson_channel::Observer>();
    shared::<Segment>();
}

#[test]
fn a_missing_file_is_an_io_error() {
    let dir = dir();
    let error = Segment::attach(dir.path().join("nothing")).err().unwrap();
    assert!(matches!(error, AttachError::Io { .. }), "{error}");
}

#[test]
fn each_end_is_claimed_once_and_bumps_its_incarnation() {
    let segment = Segment::create(spec(), Backing::Memfd).unwrap();
    let observer = segment.observer();
    assert_eq!(observer.side(Side::Control).incarnation.get(), 0);
    assert!(!observer.side(Side::Control).attached);

    let control = segment.control().unwrap();
    assert_eq!(control.incarnation().get(), 1);
    let error = segment.control().err().unwrap();
    assert!(
        matches!(
            error,
            ClaimError::Claimed {
                side: Side::Control
            }
        ),
        "{error}"
    );
    let state = observer.side(Side::Control);
    assert!(state.attached);
    assert_eq!(state.pid.map(|pid| pid.0), Some(std::process::id()));

    let dataplane = segment.dataplane().unwrap();
    let cores = dataplane.into_cores();
    assert!(observer.side(Side::Dataplane).attached);
    drop(control);
    let state = observer.side(Side::Control);
    assert!(!state.attached);
    assert_eq!(state.pid, None, "a clean detach clears the pid");
    assert_eq!(segment.control().unwrap().incarnation().get(), 2);
    // The dataplane's claim lives as long as any of its cores.
    let mut cores = cores;
    let last = cores.pop().unwrap();
    drop(cores);
    assert!(observer.side(Side::Dataplane).attached);
    drop(last);
    assert!(!observer.side(Side::Dataplane).attached);
}

#[test]
fn two_attaches_of_one_file_cannot_both_claim_a_side() {
    let dir = dir();
    let path = dir.path().join("seg");
    let one = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
    let two = Segment::attach(&path).unwrap();
    let held = one.dataplane().unwrap();
    let error = two.dataplane().err().unwrap();
    assert!(
        matches!(
            error,
            ClaimError::HeldElsewhere {
                side: Side::Dataplane
            }
        ),
        "{error}"
    );
    assert!(two.observer().side(Side::Dataplane).attached);
    drop(held);
    assert!(!two.observer().side(Side::Dataplane).attached);
    assert_eq!(two.dataplane().unwrap().incarnation().get(), 2);
}

#[test]
fn a_reattached_segment_resumes_where_it_was_left() {
    let dir = dir();
    let path = dir.path().join("seg");
    {
        let segment = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
        let mut control = segment.control().unwrap();
        let mut cores = segment.dataplane().unwrap().into_cores();
        for n in 0..10 {
            control
                .core(CoreId(1))
                .unwrap()
                .try_send(&grant(n))
                .unwrap();
        }
        for n in 0..4 {
            assert_eq!(cores[1].recv_command().unwrap().unwrap(), grant(n));
        }
        cores[1].try_send_event(&Event::NeedGrants).unwrap();
        // Everything is dropped and unmapped here, as if both processes exited.
    }
    let segment = Segment::attach_expecting(&path, &spec()).unwrap();
    let mut control = segment.control().unwrap();
    let mut cores = segment.dataplane().unwrap().into_cores();
    assert_eq!(control.incarnation().get(), 2);
    assert_eq!(cores[1].incarnation().get(), 2);
    // Each side sees the other's new incarnation once.
    let peer = control.poll_peer().unwrap();
    assert_eq!(peer.incarnation.get(), 2);
    assert_eq!(control.poll_peer(), None);
    assert_eq!(cores[1].poll_peer().unwrap().incarnation.get(), 2);
    assert_eq!(cores[0].poll_peer().unwrap().incarnation.get(), 2);
    assert_eq!(cores[1].poll_peer(), None);

    for n in 4..10 {
        assert_eq!(cores[1].recv_command().unwrap().unwrap(), grant(n));
    }
    assert!(cores[1].recv_command().is_none());
    let link = control.core(CoreId(1)).unwrap();
    assert_eq!(link.recv_event().unwrap().unwrap(), Event::NeedGrants);
    assert!(link.recv_event().is_none());
    let status = link.commands_status();
    assert_eq!(
        (status.committed, status.consumed, status.depth_messages),
        (10, 10, 0)
    );
}

#[test]
fn try_send_counts_drops_and_try_send_keep_does_not() {
    let segment = Segment::create(spec(), Backing::Memfd).unwrap();
    let mut control = segment.control().unwrap();
    let link = control.core(CoreId(0)).unwrap();
    let mut sent = 0;
    while link.try_send_keep(&grant(sent)).is_ok() {
        sent += 1;
    }
    // 64 KiB of 48-byte frames (2 + 16 + 8 + 8 = 34-byte messages).
    assert_eq!(sent, 65_536 / 40);
    assert_eq!(link.try_send_keep(&grant(0)), Err(SendError::Full));
    assert_eq!(link.commands_status().dropped, 0);
    assert_eq!(link.try_send(&grant(0)), Err(SendError::Full));
    assert_eq!(link.try_send(&grant(0)), Err(SendError::Full));
    let status = link.commands_status();
    assert_eq!(
        (status.dropped, status.depth_messages, status.depth_bytes),
        (2, sent, 65_520)
    );
    // An over-bound message is refused before the ring, and not counted as a drop.
    let too_many = Command::TurnSecrets(vec![Vec::new(); 17]);
    assert!(matches!(
        link.try_send(&too_many),
        Err(SendError::Encode(_))
    ));
    assert_eq!(link.commands_status().dropped, 2);
    assert_eq!(segment.observer().commands(CoreId(0)).unwrap().dropped, 2);
    assert_eq!(segment.observer().commands(CoreId(2)), None);
}

#[test]
fn stats_snapshots_heartbeats_and_bounds() {
    let segment = Segment::create(spec(), Backing::Memfd).unwrap();
    let observer = segment.observer();
    let mut cores = segment.dataplane().unwrap().into_cores();
    let never = observer.stats(CoreId(1)).unwrap();
    assert_eq!(
        (never.publishes, never.heartbeat, never.values.len()),
        (0, 0, 8)
    );

    let writer = cores[1].stats();
    assert_eq!(writer.slots(), 8);
    writer.publish(1_000, &[1, 2, 3]).unwrap();
    let snapshot = observer.stats(CoreId(1)).unwrap();
    assert_eq!(snapshot.values, [1, 2, 3, 0, 0, 0, 0, 0]);
    assert_eq!((snapshot.publishes, snapshot.heartbeat), (1, 1_000));
    assert_eq!(snapshot.incarnation.get(), 1);
    assert_eq!(snapshot.age(4_000), 3_000);
    assert_eq!(snapshot.age(500), 0);

    writer.heartbeat(2_000);
    let snapshot = observer.stats(CoreId(1)).unwrap();
    assert_eq!((snapshot.publishes, snapshot.heartbeat), (2, 2_000));
    assert_eq!(
        &snapshot.values[..3],
        &[1, 2, 3],
        "a heartbeat keeps the values"
    );

    assert_eq!(
        writer.publish(3_000, &[0; 9]),
        Err(StatsError::TooManyValues { given: 9, slots: 8 })
    );
    assert_eq!(
        observer.stats(CoreId(2)),
        Err(StatsError::UnknownCore { core: 2, cores: 2 })
    );
    assert_eq!(
        observer.stats(CoreId(0)).unwrap().publishes,
        0,
        "blocks are per core"
    );

    segment.control().unwrap().heartbeat(5_000);
    assert_eq!(observer.control_heartbeat(), 5_000);
}

/// A frame written by hand at the offsets of the crate doc's layout table: the table is
/// right, and a consumed message that does not decode is skipped and counted.
#[test]
fn a_hand_written_frame_lands_where_the_layout_table_says() {
    let dir = dir();
    let path = dir.path().join("seg");
    let segment = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
    let mut cores = segment.dataplane().unwrap().into_cores();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    // Core 1's command ring: 4096 + 1 × (8192 + 64 KiB + 128 KiB).
    let control = 4096 + (8192 + 65_536 + 131_072) as u64;
    let data = control + PAGE as u64;
    // Frame 1: length 3, payload "\x03\x03\x00" (ClearGrants plus a stray byte).
    // Frame 2: length 2, ClearGrants.
    file.write_all_at(&[3, 0, 0, 0, 3, 3, 0, 0, 2, 0, 0, 0, 3, 3, 0, 0], data)
        .unwrap();
    let tail: u64 = (2 << 32) | 16; // two messages, 16 bytes
    file.write_all_at(&tail.to_le_bytes(), control).unwrap();

    assert_eq!(
        cores[1].recv_command().unwrap(),
        Err(RecvError::Decode(DecodeError::TrailingBytes { extra: 1 }))
    );
    assert_eq!(cores[1].recv_command().unwrap(), Ok(Command::ClearGrants));
    assert!(cores[1].recv_command().is_none());
    let status = cores[1].commands_status();
    assert_eq!(
        (status.undecodable, status.consumed, status.resyncs),
        (1, 2, 0)
    );

    // A tail further ahead than the ring is long is reported once, then the ring works
    // again for a producer that attaches after it.
    let bogus: u64 = (9 << 32) | (16 + 128 * 1024);
    file.write_all_at(&bogus.to_le_bytes(), control).unwrap();
    assert!(matches!(
        cores[1].recv_command(),
        Some(Err(RecvError::Corrupt(Corruption::Span { .. })))
    ));
    assert!(cores[1].recv_command().is_none());
    assert_eq!(cores[1].commands_status().resyncs, 1);
    let mut control = segment.control().unwrap();
    control
        .core(CoreId(1))
        .unwrap()
        .try_send(&grant(7))
        .unwrap();
    assert_eq!(cores[1].recv_command().unwrap(), Ok(grant(7)));
}
