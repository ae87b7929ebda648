//! Two processes on one file-backed segment: this test binary re-executes itself as the
//! dataplane (`child`, selected by an environment variable) while the test is the control
//! plane.
//!
//! * `exchange`: thousands of commands and events each way on every core, checked for
//!   order and content, while a reader thread checks that stats snapshots of blocks being
//!   rewritten as fast as possible are never torn.
//! * `restart`: the dataplane is SIGKILLed mid-stream, twice; each successor attaches,
//!   both sides see the new incarnation, and every message committed to a ring is
//!   delivered exactly once.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns; a panic is the failure report"
)]

use std::collections::BTreeSet;
use std::env;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use boson_channel::{
    Backing, CoreEnd, CoreId, Incarnation, SegmentSpec, SendError, Side, StatsError,
};
use boson_channel::{CoreLink, Observer, Segment};
use boson_shared::NodeId;
use boson_shared::plane::{Command, Event, Grant, HostId, Transport};
use tempfile::TempDir;
use uuid::Uuid;

/// Selects the child's role; unset in the parent.
const ROLE: &str = "BOSON_CHANNEL_TEST_ROLE";
/// The segment's path, for the child.
const SEGMENT: &str = "BOSON_CHANNEL_TEST_SEGMENT";

/// Messages each way per core in `exchange`.
const EXCHANGED: u32 = 5_000;
/// Commands per core in `restart`.
const RESTART_COMMANDS: u32 = 20_000;
/// Dataplanes killed in `restart` before the last one finishes.
const KILLS: usize = 2;

/// The smallest rings, so thousands of messages wrap each one many times.
fn spec() -> SegmentSpec {
    SegmentSpec {
        cores: 2,
        command_ring_bytes: 64 * 1024,
        event_ring_bytes: 64 * 1024,
        stats_slots: 16,
    }
}

mod clock {
    use std::time::{Duration, Instant};

    /// A watchdog, so a broken protocol fails the test instead of hanging it.
    pub(crate) struct Deadline(Instant);

    impl Deadline {
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's watchdog; the library under test never reads the clock"
        )]
        pub(crate) fn after(limit: Duration) -> Self {
            Self(Instant::now() + limit)
        }

        #[expect(
            clippy::disallowed_methods,
            reason = "a test's watchdog; the library under test never reads the clock"
        )]
        pub(crate) fn check(&self, what: &str) {
            assert!(Instant::now() < self.0, "timed out: {what}");
        }
    }
}

use clock::Deadline;

/// The child process's entry point; a no-op in a normal test run.
#[test]
fn child() {
    let Ok(role) = env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(env::var(SEGMENT).unwrap());
    match role.as_str() {
        "exchange" => child_exchange(&path),
        "echo" => child_echo(&path),
        other => panic!("unknown role {other}"),
    }
}

/// A child process that is killed if the test fails before it is waited for.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(role: &str, path: &Path) -> ChildGuard {
    let child = Process::new(env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SEGMENT, path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// For a child's idle loop: gives up if the control plane (the parent) has gone, so a
/// failed test leaves no process behind.
struct Idle {
    observer: Observer,
    spins: u32,
}

impl Idle {
    fn new(observer: Observer) -> Self {
        Self { observer, spins: 0 }
    }

    fn wait(&mut self) {
        self.spins += 1;
        if self.spins.is_multiple_of(4096) {
            assert!(
                self.observer.side(Side::Control).attached,
                "the control plane went away"
            );
        }
        thread::yield_now();
    }
}

fn segment_dir() -> TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A node id carrying two numbers, so echoes can say who sent what.
fn node(a: u64, b: u64) -> NodeId {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    NodeId::from_bytes(bytes)
}

fn unnode(node: &NodeId) -> (u64, u64) {
    let bytes = node.as_bytes();
    (
        u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        u64::from_le_bytes(bytes[8..].try_into().unwrap()),
    )
}

/// The `seq`th command to `core`: every kind, sizes from 18 bytes to over 2 KiB.
fn command(core: u16, seq: u32) -> Command {
    let node = node(u64::from(core), u64::from(seq));
    match seq % 4 {
        0 => Command::Grant(Grant {
            node,
            generation: i64::from(seq),
            expires_at: u64::from(seq) << 20,
        }),
        1 => Command::Revoke { node },
        2 => {
            let mut first = seq.to_le_bytes().to_vec();
            first.resize(4 + (seq as usize * 7) % 700, core as u8);
            let count = 1 + seq as usize % 3;
            Command::TurnSecrets(vec![first; count])
        }
        _ => Command::Presence {
            node,
            host: (seq % 8 != 3).then(|| HostId(Uuid::from_u128(u128::from(seq)))),
        },
    }
}

/// The `seq`th event from `core`.
fn event(core: u16, seq: u32) -> Event {
    let node = node(u64::from(core), u64::from(seq));
    match seq % 3 {
        0 => Event::NodeConnected {
            node,
            core,
            transport: Transport::Wss,
        },
        1 => Event::AllocationCreated {
            core,
            user: format!("{}-{seq}", "u".repeat(seq as usize % 300)),
            relay: SocketAddr::from((Ipv4Addr::from(seq), core)),
        },
        _ => Event::NodeDisconnected { node, core },
    }
}

/// Dataplane of `exchange`: per core, checks every command and sends every event, and
/// publishes stats all the while with every slot and the heartbeat equal.
fn child_exchange(path: &Path) {
    let segment = Segment::attach_expecting(path, &spec()).unwrap();
    let cores = segment.dataplane().unwrap().into_cores();
    let workers: Vec<_> = cores
        .into_iter()
        .map(|mut core| {
            let mut idle = Idle::new(segment.observer());
            thread::spawn(move || {
                let id = core.id().0;
                let slots = core.stats().slots();
                let (mut received, mut sent, mut publish) = (0, 0, 0u64);
                let deadline = Deadline::after(Duration::from_secs(120));
                while received < EXCHANGED || sent < EXCHANGED {
                    deadline.check("child exchange");
                    if let Some(command) = core.recv_command() {
                        assert_eq!(command.unwrap(), self::command(id, received));
                        received += 1;
                    } else {
                        idle.wait();
                    }
                    if sent < EXCHANGED {
                        match core.try_send_event_keep(&event(id, sent)) {
                            Ok(()) => sent += 1,
                            Err(SendError::Full) => {}
                            Err(other) => panic!("send: {other}"),
                        }
                    }
                    publish += 1;
                    core.stats()
                        .publish(publish, &vec![publish; slots])
                        .unwrap();
                }
                // Keep rewriting the block while the parent's reader finishes.
                for _ in 0..200_000 {
                    publish += 1;
                    core.stats()
                        .publish(publish, &vec![publish; slots])
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

#[test]
fn exchange() {
    let dir = segment_dir();
    let path = dir.path().join("segment");
    let segment = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
    let mut control = segment.control().unwrap();
    let mut child = spawn("exchange", &path);

    let stop = Arc::new(AtomicBool::new(false));
    let observer = segment.observer();
    let reader = thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let (mut snapshots, mut busy) = (0u64, 0u64);
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for core in [CoreId(0), CoreId(1)] {
                    match observer.stats(core) {
                        Ok(snapshot) => {
                            // The writer keeps every slot equal to its heartbeat: any
                            // mix of two publishes would show here.
                            let n = snapshot.heartbeat;
                            assert!(
                                snapshot.values.iter().all(|&v| v == n),
                                "torn snapshot on core {core:?}: {snapshot:?}"
                            );
                            assert!(n == 0 || snapshot.incarnation.get() == 1);
                            snapshots += 1;
                            seen.insert((core, n));
                        }
                        Err(StatsError::Contended { .. }) => busy += 1,
                        Err(other) => panic!("stats: {other}"),
                    }
                }
            }
            (snapshots, busy, seen.len())
        }
    });

    let deadline = Deadline::after(Duration::from_secs(120));
    let mut sent = [0u32; 2];
    let mut received = [0u32; 2];
    while received.iter().chain(&sent).any(|&n| n < EXCHANGED) {
        deadline.check("parent exchange");
        for link in control.cores_mut() {
            let core = link.id().0;
            let i = usize::from(core);
            while sent[i] < EXCHANGED {
                match link.try_send_keep(&command(core, sent[i])) {
                    Ok(()) => sent[i] += 1,
                    Err(SendError::Full) => break,
                    Err(other) => panic!("send: {other}"),
                }
            }
            while let Some(event) = link.recv_event() {
                assert_eq!(event.unwrap(), self::event(core, received[i]));
                received[i] += 1;
            }
        }
        thread::yield_now();
    }
    let exit = child.0.wait().unwrap();
    for link in control.cores_mut() {
        assert!(link.recv_event().is_none(), "nothing beyond what was sent");
        for status in [link.commands_status(), link.events_status()] {
            assert_eq!((status.committed, status.consumed), (EXCHANGED, EXCHANGED));
            assert_eq!(
                (status.depth_messages, status.dropped, status.undecodable),
                (0, 0, 0)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (snapshots, busy, distinct) = reader.join().unwrap();
    assert!(exit.success(), "child: {exit}");
    eprintln!("stats: {snapshots} consistent snapshots ({distinct} distinct), {busy} busy");
    // The reader really raced the writers: it saw the blocks at many different values
    // (hundreds to thousands; the bound is low so a loaded machine does not fail it).
    assert!(distinct > 20, "only {distinct} distinct snapshots");
}

/// Dataplane of `restart`: echoes each command's sequence number back as an event tagged
/// with its own incarnation, until killed (or told to stop with `Drain`).
fn child_echo(path: &Path) {
    let segment = Segment::attach_expecting(path, &spec()).unwrap();
    let dataplane = segment.dataplane().unwrap();
    let incarnation = dataplane.incarnation();
    let workers: Vec<_> = dataplane
        .into_cores()
        .into_iter()
        .map(|mut core| {
            let idle = Idle::new(segment.observer());
            thread::spawn(move || echo(&mut core, incarnation, idle))
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // The control plane never restarted: its incarnation is the first.
    let control = segment.observer().side(Side::Control);
    assert_eq!(control.incarnation.get(), 1);
    assert!(control.attached);
}

fn echo(core: &mut CoreEnd, incarnation: Incarnation, mut idle: Idle) {
    let id = core.id().0;
    let peer = core.poll_peer().expect("the control plane is attached");
    assert_eq!(peer.incarnation.get(), 1);
    loop {
        let Some(command) = core.recv_command() else {
            idle.wait();
            continue;
        };
        let command = command.unwrap();
        if let Command::Drain { .. } = command {
            return;
        }
        let Command::Grant(Grant {
            generation: seq, ..
        }) = command
        else {
            panic!("unexpected {command:?}");
        };
        let echo = Event::NodeConnected {
            node: node(incarnation.get(), seq as u64),
            core: id,
            transport: Transport::Mesh,
        };
        loop {
            match core.try_send_event_keep(&echo) {
                Ok(()) => break,
                Err(SendError::Full) => idle.wait(),
                Err(other) => panic!("send: {other}"),
            }
        }
    }
}

fn restart_command(core: u16, seq: u32) -> Command {
    Command::Grant(Grant {
        node: node(u64::from(core), u64::from(seq)),
        generation: i64::from(seq),
        expires_at: 0,
    })
}

/// What the parent knows of one core during `restart`.
#[derive(Default)]
struct CoreLog {
    /// Commands sent so far (all to the ring, none dropped).
    sent: u32,
    /// Echoes of the current incarnation: (incarnation, next expected seq).
    echoes: Vec<(u64, u32)>,
}

impl CoreLog {
    /// Sends what fits and checks every echo: per incarnation, consecutive sequence
    /// numbers, starting where `start` says.
    fn pump(&mut self, link: &mut CoreLink, starts: &[(u64, u32)]) {
        let core = link.id().0;
        while self.sent < RESTART_COMMANDS {
            match link.try_send_keep(&restart_command(core, self.sent)) {
                Ok(()) => self.sent += 1,
                Err(SendError::Full) => break,
                Err(other) => panic!("send: {other}"),
            }
        }
        while let Some(event) = link.recv_event() {
            let Event::NodeConnected {
                node, core: from, ..
            } = event.unwrap()
            else {
                panic!("unexpected event");
            };
            assert_eq!(from, core);
            let (incarnation, seq) = unnode(&node);
            let seq = u32::try_from(seq).unwrap();
            match self.echoes.last_mut() {
                Some((current, next)) if *current == incarnation => {
                    assert_eq!(
                        seq, *next,
                        "core {core} incarnation {incarnation}: gap or duplicate"
                    );
                    *next += 1;
                }
                _ => {
                    // A new incarnation's first echo: exactly where the ring's consumer
                    // position said its predecessor stopped.
                    let &(_, start) = starts
                        .iter()
                        .find(|(i, _)| *i == incarnation)
                        .unwrap_or_else(|| {
                            panic!("echo from unexpected incarnation {incarnation}")
                        });
                    assert_eq!(seq, start, "core {core} incarnation {incarnation} starts");
                    self.echoes.push((incarnation, seq + 1));
                }
            }
        }
    }

    fn echoed(&self) -> u32 {
        self.echoes.last().map_or(0, |&(_, next)| next)
    }
}

#[test]
fn restart() {
    let dir = segment_dir();
    let path = dir.path().join("segment");
    let segment = Segment::create(spec(), Backing::Path(path.clone())).unwrap();
    let observer = segment.observer();
    let mut control = segment.control().unwrap();
    let mut logs = [CoreLog::default(), CoreLog::default()];
    // Where each incarnation must start echoing, per core.
    let mut starts: [Vec<(u64, u32)>; 2] = [vec![(1, 0)], vec![(1, 0)]];
    let deadline = Deadline::after(Duration::from_secs(180));

    for round in 0..=KILLS {
        let incarnation = round as u64 + 1;
        let mut child = spawn("echo", &path);
        // The control plane notices the new dataplane exactly once.
        let peer = loop {
            deadline.check("new dataplane incarnation");
            if let Some(peer) = control.poll_peer() {
                break peer;
            }
            thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(peer.incarnation.get(), incarnation);
        assert_eq!(peer.pid.map(|pid| pid.0), Some(child.0.id()));
        assert_eq!(control.poll_peer(), None);

        if round < KILLS {
            // Kill it mid-stream: once both cores have echoed a few thousand more, while
            // the parent still has commands in flight.
            let target = 3_000 * (round as u32 + 1);
            while logs.iter().any(|log| log.echoed() < target) {
                deadline.check("echoes before the kill");
                for (log, link) in logs.iter_mut().zip(control.cores_mut()) {
                    log.pump(link, &starts[usize::from(link.id().0)]);
                }
            }
            child.0.kill().unwrap(); // SIGKILL
            child.0.wait().unwrap();
            let state = observer.side(Side::Dataplane);
            assert!(
                !state.attached,
                "the kernel released the killed side's lock"
            );
            assert_eq!(
                state.pid.map(|pid| pid.0),
                Some(child.0.id()),
                "a kill leaves its pid"
            );
            for (core, log) in logs.iter_mut().enumerate() {
                let link = control.core(CoreId(core as u16)).unwrap();
                // Drain what the dead dataplane committed: all in order, none twice.
                log.pump(link, &starts[core]);
                let consumed = observer.commands(CoreId(core as u16)).unwrap().consumed;
                let echoed = log.echoed();
                // The dead child may have consumed one command whose echo it never
                // committed; nothing else can be missing.
                assert!(
                    echoed == consumed || echoed + 1 == consumed,
                    "core {core}: {echoed} echoed, {consumed} consumed"
                );
                assert!(
                    log.sent > consumed,
                    "killed mid-stream, commands still queued"
                );
                starts[core].push((incarnation + 1, consumed));
            }
        } else {
            while logs.iter().any(|log| log.echoed() < RESTART_COMMANDS) {
                deadline.check("the last dataplane's echoes");
                for (log, link) in logs.iter_mut().zip(control.cores_mut()) {
                    log.pump(link, &starts[usize::from(link.id().0)]);
                }
            }
            for link in control.cores_mut() {
                link.try_send_keep(&Command::Drain { deadline: 0 }).unwrap();
            }
            let exit = child.0.wait().unwrap();
            assert!(exit.success(), "last child: {exit}");
        }
    }

    for (core, log) in logs.iter().enumerate() {
        let incarnations: Vec<u64> = log.echoes.iter().map(|&(i, _)| i).collect();
        assert_eq!(incarnations, [1, 2, 3], "core {core}");
        let status = observer.events(CoreId(core as u16)).unwrap();
        assert_eq!(
            (status.dropped, status.undecodable, status.resyncs),
            (0, 0, 0)
        );
        let status = observer.commands(CoreId(core as u16)).unwrap();
        assert_eq!(
            status.consumed,
            RESTART_COMMANDS + 1,
            "every command and the Drain"
        );
    }
    assert_eq!(observer.side(Side::Dataplane).incarnation.get(), 3);
    assert!(!observer.side(Side::Dataplane).attached);
}
