//! The link between the control plane and the dataplane over a [`Segment`]: the same code in
//! one process (`bosonserver run`, a memfd) and in two (`bosonserver control --segment` and
//! `bosonserver dataplane --segment`, a file both attach).
//!
//! # Dataplane side: [`DataplanePump`]
//!
//! One thread owns every core's [`CoreEnd`]. Each turn (at most [`POLL`] apart, at once when
//! the relay reports an event) it:
//!
//! 1. re-announces the connected nodes and the live TURN allocations of each core whose
//!    `poll_peer` reports a new control incarnation (a restarted control plane starts with no
//!    presence and no view of the allocations), after the ports of the STUN/TURN listeners
//!    on core 0 ([`Event::Listening`]: a control plane in another process learns them only
//!    so);
//! 2. applies every command from every core's ring with the [`CommandApplier`];
//! 3. writes the relay's and the TURN cores' events into the ring of the core they name (a
//!    full ring drops and counts: the worker threads never wait for the control plane);
//! 4. every [`STATS_EVERY`], copies each worker's counters into its stats block, in the slot
//!    order of [`WorkerStatsSnapshot::to_slots`].
//!
//! The workers themselves do not touch the segment: they hand events to a callback and
//! publish counters lock-free, and TURN settings reach them through
//! [`SettingsHandle`](boson_dataplane::SettingsHandle) (a flag each loop turn reads), so one
//! pump keeps the worker loops free of the rings. The cost is up to [`POLL`] of latency on commands between two processes (in
//! one process the command sink wakes the pump at once, see [`Waker`]) and [`STATS_EVERY`] of
//! lag on counters; each stats block still has a single writer.
//!
//! # Control side: [`ControlLink`]
//!
//! Commands go to **core 0's ring only**: the dataplane applies them process-wide (one grant
//! table, relay orders broadcast to every worker), so copies on every core would only be
//! applied several times. The command sink never blocks (it runs under the grant table's
//! lock): it writes with `try_send_keep`, and what does not fit waits in a backlog that
//! [`ControlLink::run`] flushes first, in order, every [`POLL`]. So a full grant re-push is
//! never silently cut short; only past [`MAX_BACKLOG`] waiting commands are commands dropped,
//! and counted (`bosonserver_channel_backlog_dropped_total`). The periodic grant sync repairs
//! what a drop lost.
//!
//! [`ControlLink::run`] also drains every core's events into `AppState::handle_event`, and on
//! a new dataplane incarnation first withdraws the sessions the old one reported (it cannot
//! say so itself after `kill -9`) and forgets its allocations, then re-pushes the TURN
//! settings and every grant (`resync_grants`).
//!
//! [`Segment`]: boson_channel::Segment

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use boson_channel::{
    ControlEnd, CoreEnd, CoreId, DataplaneEnd, Observer, SegmentSpec, SendError, Side,
};
use boson_control::clock::{Clock as _, SystemClock};
use boson_dataplane::relay::EventSink;
use boson_dataplane::{StatsReader, WorkerStatsSnapshot};
use boson_shared::NodeId;
use boson_shared::plane::{Command, Event, Transport, UnixMs};

use crate::relay::CommandApplier;

/// How often each side polls the rings: the longest a command or an event waits.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// How often the dataplane pump copies the workers' counters into the segment.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(100);

/// The longest `/metrics` waits for a pump in this process to publish fresh counters (it
/// takes microseconds unless the pump is stuck).
pub(crate) const FRESH_WAIT: Duration = Duration::from_millis(50);

/// Commands the control side holds while core 0's ring is full, before it drops and counts.
/// Far above a full grant re-push of any realistic host (the ring alone holds ~6 000).
pub(crate) const MAX_BACKLOG: usize = 1 << 20;

/// The segment's shape for `cores` worker cores; both processes of one build compute the
/// same one, and attaching checks it.
pub(crate) fn spec(cores: usize) -> anyhow::Result<SegmentSpec> {
    let cores = u16::try_from(cores)
        .ok()
        .filter(|c| (1..=boson_channel::MAX_CORES).contains(c))
        .with_context(|| {
            format!(
                "{cores} workers: a segment holds 1 to {}",
                boson_channel::MAX_CORES
            )
        })?;
    let mut spec = SegmentSpec::new(cores);
    spec.stats_slots = u16::try_from(WorkerStatsSnapshot::SLOTS).context("stats slots")?;
    Ok(spec)
}

/// What wakes the [`DataplanePump`] at once.
pub(crate) enum PumpInput {
    /// The relay reported an event.
    Event(Event),
    /// A control plane in this process wrote a command.
    Wake,
    /// A control plane in this process is rendering `/metrics`: publish the counters now.
    PublishStats,
}

/// Wakes the [`DataplanePump`] of this process (`bosonserver run`): after a command is
/// written, so a grant takes effect in microseconds rather than up to [`POLL`], and before
/// `/metrics` is rendered, so it shows the counters of now rather than up to
/// [`STATS_EVERY`] ago.
pub(crate) type Waker = Arc<dyn Fn(PumpInput) + Send + Sync>;

/// The relay's event callback, a [`Waker`], and the receiver the [`DataplanePump`] drains.
pub(crate) fn pump_inbox() -> (EventSink, Waker, mpsc::Receiver<PumpInput>) {
    let (tx, rx) = mpsc::channel();
    let wake_tx = Mutex::new(tx.clone());
    // A Mutex: the sink is called from every worker thread.
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |event| {
        let _ = tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(PumpInput::Event(event));
    });
    let waker: Waker = Arc::new(move |input| {
        let _ = wake_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(input);
    });
    (sink, waker, rx)
}

fn now_ms() -> UnixMs {
    u64::try_from(SystemClock.now().0).unwrap_or(0)
}

/// The dataplane's pump thread; stopped and joined on drop.
pub(crate) struct DataplanePump {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DataplanePump {
    /// Starts the pump over `end`, applying commands with `applier`, forwarding `events`,
    /// publishing `stats`, telling every control plane that attaches what the dataplane
    /// listens on (`listening`, an [`Event::Listening`]).
    pub(crate) fn spawn(
        end: DataplaneEnd,
        events: mpsc::Receiver<PumpInput>,
        applier: CommandApplier,
        stats: StatsReader,
        listening: Event,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut pump = Pump {
            cores: end.into_cores(),
            events,
            applier,
            stats,
            listening,
            connected: BTreeMap::new(),
            allocations: BTreeMap::new(),
        };
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("boson-dp-link".to_owned())
            .spawn(move || pump.run(&stopping))
            .context("spawning the dataplane's segment pump")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DataplanePump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Pump {
    cores: Vec<CoreEnd>,
    events: mpsc::Receiver<PumpInput>,
    applier: CommandApplier,
    stats: StatsReader,
    /// The listeners' ports, what a new control plane is told first (on core 0).
    listening: Event,
    /// Sessions reported connected and not yet disconnected: what a new control plane is
    /// told.
    connected: BTreeMap<(NodeId, u16), Transport>,
    /// TURN allocations reported created and not yet expired, with their users: what a new
    /// control plane is told too.
    allocations: BTreeMap<(u16, SocketAddr), String>,
}

impl Pump {
    fn run(&mut self, stop: &AtomicBool) {
        let stats_every = u64::try_from(STATS_EVERY.as_millis()).unwrap_or(100);
        let mut last_stats = 0;
        while !stop.load(Ordering::Relaxed) {
            self.handle_control_restarts();
            self.apply_commands();
            match self.events.recv_timeout(POLL) {
                Ok(input) => {
                    self.handle_input(input);
                    while let Ok(input) = self.events.try_recv() {
                        self.handle_input(input);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The dataplane stopped; keep applying commands until told to stop.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
            }
            let now = now_ms();
            if now.saturating_sub(last_stats) >= stats_every {
                last_stats = now;
                self.publish_stats(now);
            }
        }
    }

    fn handle_control_restarts(&mut self) {
        for core in &mut self.cores {
            let Some(peer) = core.poll_peer() else {
                continue;
            };
            let id = core.id().0;
            tracing::info!(
                core = id,
                incarnation = peer.incarnation.get(),
                "control plane attached: re-announcing connected nodes and TURN allocations"
            );
            let listening = (id == 0).then(|| self.listening.clone());
            let nodes = self
                .connected
                .iter()
                .filter(|((_, core), _)| *core == id)
                .map(|(&(node, core), &transport)| Event::NodeConnected {
                    node,
                    core,
                    transport,
                });
            let allocations = self
                .allocations
                .iter()
                .filter(|((core, _), _)| *core == id)
                .map(|(&(core, relay), user)| Event::AllocationCreated {
                    core,
                    user: user.clone(),
                    relay,
                });
            for event in listening.into_iter().chain(nodes).chain(allocations) {
                if let Err(error) = core.try_send_event(&event) {
                    tracing::warn!(core = id, "re-announcing to the control plane: {error}");
                }
            }
        }
    }

    fn apply_commands(&mut self) {
        for core in &mut self.cores {
            while let Some(command) = core.recv_command() {
                match command {
                    Ok(command) => self.applier.apply(&command),
                    Err(error) => tracing::warn!(core = core.id().0, "command ring: {error}"),
                }
            }
        }
    }

    fn handle_input(&mut self, input: PumpInput) {
        match input {
            PumpInput::Event(event) => self.forward(&event),
            // The next turn applies the commands.
            PumpInput::Wake => {}
            PumpInput::PublishStats => self.publish_stats(now_ms()),
        }
    }

    fn forward(&mut self, event: &Event) {
        let core = match *event {
            Event::AllocationCreated {
                core,
                ref user,
                relay,
            } => {
                self.allocations.insert((core, relay), user.clone());
                core
            }
            Event::AllocationExpired { core, relay } => {
                self.allocations.remove(&(core, relay));
                core
            }
            Event::NodeConnected {
                node,
                core,
                transport,
            } => {
                self.connected.insert((node, core), transport);
                core
            }
            Event::NodeDisconnected { node, core } => {
                self.connected.remove(&(node, core));
                core
            }
            Event::NeedGrants | Event::Listening { .. } => 0,
        };
        let last = self.cores.len() - 1;
        let ring = &mut self.cores[usize::from(core).min(last)];
        if let Err(error) = ring.try_send_event(event) {
            tracing::debug!(core, "event not sent to the control plane: {error}");
        }
    }

    fn publish_stats(&mut self, now: UnixMs) {
        for snapshot in self.stats.read() {
            let Some(core) = self.cores.get_mut(snapshot.worker) else {
                continue;
            };
            if let Err(error) = core.stats().publish(now, &snapshot.to_slots()) {
                tracing::warn!(core = snapshot.worker, "stats not published: {error}");
            }
        }
    }
}

impl boson_control::io::mesh::CommandSink for ControlLink {
    fn send(&self, command: Command) {
        Self::send(self, command);
    }

    fn mark(&self) -> Option<u64> {
        Some(Self::mark(self))
    }

    fn reached(&self, mark: u64) -> bool {
        Self::reached(self, mark)
    }
}

/// The control plane's end of the link: the command sink, the event pump, `/metrics`.
#[derive(Clone)]
pub(crate) struct ControlLink {
    outbox: Arc<Mutex<Outbox>>,
    observer: Observer,
    counters: Arc<LinkCounters>,
    wake: Option<Waker>,
}

struct Outbox {
    end: ControlEnd,
    /// Commands waiting for room in core 0's ring, oldest first.
    backlog: VecDeque<Command>,
    /// Commands this link has written into core 0's ring.
    sent: u64,
}

#[derive(Default)]
struct LinkCounters {
    backlog: AtomicU64,
    backlog_dropped: AtomicU64,
    unsendable: AtomicU64,
    /// Relay sessions the dataplane reported (or re-announced) and not yet ended.
    sessions: AtomicU64,
}

impl ControlLink {
    /// The link over `end`; `wake` wakes a dataplane pump in this process.
    pub(crate) fn new(end: ControlEnd, wake: Option<Waker>) -> Self {
        Self {
            wake,
            observer: end.observer(),
            outbox: Arc::new(Mutex::new(Outbox {
                end,
                backlog: VecDeque::new(),
                sent: 0,
            })),
            counters: Arc::new(LinkCounters::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `command` to the dataplane, or queues it behind those already waiting. Never
    /// blocks.
    /// A mark after every command given to [`Self::send`] so far (sent or waiting).
    pub(crate) fn mark(&self) -> u64 {
        let outbox = self.lock();
        outbox.sent + outbox.backlog.len() as u64
    }

    /// Whether the dataplane has taken every command given before `mark` off the ring. (A
    /// leftover of an earlier control incarnation still in the ring only makes this later.)
    pub(crate) fn reached(&self, mark: u64) -> bool {
        let mut outbox = self.lock();
        let waiting = u64::from(outbox.core0().commands_status().depth_messages);
        outbox.sent.saturating_sub(waiting) >= mark
    }

    pub(crate) fn send(&self, command: Command) {
        self.enqueue(command);
        if let Some(wake) = &self.wake {
            wake(PumpInput::Wake);
        }
    }

    fn enqueue(&self, command: Command) {
        let mut outbox = self.lock();
        if outbox.backlog.is_empty() {
            match outbox.core0().try_send_keep(&command) {
                Ok(()) => {
                    outbox.sent += 1;
                    return;
                }
                Err(SendError::Full) => {}
                Err(error) => {
                    self.counters.unsendable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?command, "command not sent to the dataplane: {error}");
                    return;
                }
            }
        }
        if outbox.backlog.len() >= MAX_BACKLOG {
            self.counters
                .backlog_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?command, "command backlog full: command dropped");
            return;
        }
        outbox.backlog.push_back(command);
        self.counters
            .backlog
            .store(outbox.backlog.len() as u64, Ordering::Relaxed);
    }

    /// Drives the link until the process ends: flushes the backlog, heartbeats, resyncs a new
    /// dataplane, and hands every event to `state`.
    pub(crate) async fn run(self, state: boson_control::AppState) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Sessions the dataplane reported, to withdraw when it restarts.
        let mut sessions = BTreeSet::new();
        let mut events = Vec::new();
        loop {
            tick.tick().await;
            let peer = {
                let mut outbox = self.lock();
                outbox.end.heartbeat(now_ms());
                self.flush(&mut outbox);
                let peer = outbox.end.poll_peer();
                for core in outbox.end.cores_mut() {
                    while let Some(event) = core.recv_event() {
                        match event {
                            Ok(event) => events.push(event),
                            Err(error) => {
                                tracing::warn!(core = core.id().0, "event ring: {error}");
                            }
                        }
                    }
                }
                peer
            };
            if let Some(peer) = peer {
                tracing::info!(
                    incarnation = peer.incarnation.get(),
                    pid = ?peer.pid.map(|p| p.0),
                    "dataplane attached: re-pushing the TURN settings and every grant"
                );
                for (node, core) in std::mem::take(&mut sessions) {
                    state
                        .handle_event(Event::NodeDisconnected { node, core })
                        .await;
                }
                state.forget_allocations();
                if let Err(error) = state.resync_grants().await {
                    tracing::warn!("grants re-sent from memory only: {error}");
                }
            }
            for event in events.drain(..) {
                match event {
                    Event::NodeConnected { node, core, .. } => {
                        sessions.insert((node, core));
                    }
                    Event::NodeDisconnected { node, core } => {
                        sessions.remove(&(node, core));
                    }
                    Event::AllocationCreated { .. }
                    | Event::AllocationExpired { .. }
                    | Event::NeedGrants
                    | Event::Listening { .. } => {}
                }
                state.handle_event(event).await;
            }
            self.counters
                .sessions
                .store(sessions.len() as u64, Ordering::Relaxed);
        }
    }

    fn flush(&self, outbox: &mut Outbox) {
        while let Some(command) = outbox.backlog.front() {
            let command = command.clone();
            match outbox.core0().try_send_keep(&command) {
                Ok(()) => outbox.sent += 1,
                Err(SendError::Full) => break,
                Err(error) => {
                    self.counters.unsendable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?command, "command not sent to the dataplane: {error}");
                }
            }
            outbox.backlog.pop_front();
        }
        self.counters
            .backlog
            .store(outbox.backlog.len() as u64, Ordering::Relaxed);
    }

    /// Every worker's counters as the dataplane last published them (none for a core that
    /// never published).
    pub(crate) fn worker_stats(&self) -> Vec<WorkerStatsSnapshot> {
        worker_stats(&self.observer)
    }

    /// The dataplane's counters and the link's own, in Prometheus text. With a pump in this
    /// process, first has it publish and waits for that (at most [`FRESH_WAIT`]).
    pub(crate) fn render_metrics(&self) -> String {
        if let Some(wake) = &self.wake {
            let publishes = |observer: &Observer| {
                observer
                    .stats(CoreId(0))
                    .map_or(0, |snapshot| snapshot.publishes)
            };
            let before = publishes(&self.observer);
            wake(PumpInput::PublishStats);
            let step = Duration::from_millis(1);
            let mut waited = Duration::ZERO;
            while publishes(&self.observer) == before && waited < FRESH_WAIT {
                std::thread::sleep(step);
                waited += step;
            }
        }
        let mut out = boson_dataplane::metrics::render(&self.worker_stats());
        // Writing to a String cannot fail.
        let _ = render_link(&mut out, &self.observer, &self.counters, now_ms());
        out
    }
}

impl Outbox {
    fn core0(&mut self) -> &mut boson_channel::CoreLink {
        &mut self.end.cores_mut()[0]
    }
}

fn worker_stats(observer: &Observer) -> Vec<WorkerStatsSnapshot> {
    (0..observer.spec().cores)
        .filter_map(|core| {
            let snapshot = observer.stats(CoreId(core)).ok()?;
            if snapshot.publishes == 0 {
                return None;
            }
            WorkerStatsSnapshot::from_slots(usize::from(core), &snapshot.values)
        })
        .collect()
}

/// The link's metrics (every one the `bosonserver` binary defines besides the control
/// plane's and the dataplane's own).
fn render_link(
    out: &mut String,
    observer: &Observer,
    counters: &LinkCounters,
    now: UnixMs,
) -> std::fmt::Result {
    const P: &str = "bosonserver_channel_";
    let cores = observer.spec().cores;
    let rings = |core| {
        let core = CoreId(core);
        [
            ("commands", observer.commands(core)),
            ("events", observer.events(core)),
        ]
    };
    type Field = fn(&boson_channel::RingStatus) -> u64;
    let ring_metrics: [(&str, &str, &str, Field); 4] = [
        (
            "ring_depth_bytes",
            "gauge",
            "Bytes committed to a ring and not yet consumed.",
            |s| u64::from(s.depth_bytes),
        ),
        (
            "ring_dropped_total",
            "counter",
            "Messages a ring's producer dropped because it was full.",
            |s| s.dropped,
        ),
        (
            "ring_undecodable_total",
            "counter",
            "Messages a ring's consumer could not decode and skipped.",
            |s| s.undecodable,
        ),
        (
            "ring_resyncs_total",
            "counter",
            "Times a ring's consumer found it corrupt and skipped ahead.",
            |s| s.resyncs,
        ),
    ];
    for (name, kind, help, value) in ring_metrics {
        writeln!(out, "# HELP {P}{name} {help}")?;
        writeln!(out, "# TYPE {P}{name} {kind}")?;
        for core in 0..cores {
            for (direction, status) in rings(core) {
                if let Some(status) = status {
                    writeln!(
                        out,
                        "{P}{name}{{core=\"{core}\",direction=\"{direction}\"}} {}",
                        value(&status)
                    )?;
                }
            }
        }
    }
    writeln!(
        out,
        "# HELP {P}dataplane_attached Whether a dataplane process holds the segment's dataplane end (1) or not (0)."
    )?;
    writeln!(out, "# TYPE {P}dataplane_attached gauge")?;
    let dataplane = observer.side(Side::Dataplane);
    writeln!(
        out,
        "{P}dataplane_attached {}",
        u8::from(dataplane.attached)
    )?;
    writeln!(
        out,
        "# HELP {P}dataplane_incarnation The dataplane's incarnation: +1 per (re)start."
    )?;
    writeln!(out, "# TYPE {P}dataplane_incarnation gauge")?;
    writeln!(
        out,
        "{P}dataplane_incarnation {}",
        dataplane.incarnation.get()
    )?;
    writeln!(
        out,
        "# HELP {P}dataplane_heartbeat_age_seconds Time since a core last published its stats (a live core publishes every 100 ms)."
    )?;
    writeln!(out, "# TYPE {P}dataplane_heartbeat_age_seconds gauge")?;
    for core in 0..cores {
        if let Ok(snapshot) = observer.stats(CoreId(core))
            && snapshot.publishes > 0
        {
            writeln!(
                out,
                "{P}dataplane_heartbeat_age_seconds{{core=\"{core}\"}} {:.3}",
                snapshot.age(now) as f64 / 1000.0
            )?;
        }
    }
    let own: [(&str, &str, &str, &AtomicU64); 4] = [
        (
            "relay_sessions",
            "gauge",
            "Relay sessions the dataplane reports open (re-announced to a restarted control plane).",
            &counters.sessions,
        ),
        (
            "command_backlog",
            "gauge",
            "Commands waiting for room in the command ring.",
            &counters.backlog,
        ),
        (
            "backlog_dropped_total",
            "counter",
            "Commands dropped because the backlog was full.",
            &counters.backlog_dropped,
        ),
        (
            "unsendable_total",
            "counter",
            "Commands the codec refused (over a bound), not sent.",
            &counters.unsendable,
        ),
    ];
    for (name, kind, help, value) in own {
        writeln!(out, "# HELP {P}{name} {help}")?;
        writeln!(out, "# TYPE {P}{name} {kind}")?;
        writeln!(out, "{P}{name} {}", value.load(Ordering::Relaxed))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_reached_once_the_dataplane_has_taken_every_command_before_it() {
        let segment =
            boson_channel::Segment::create(spec(2).unwrap(), boson_channel::Backing::Memfd)
                .unwrap();
        let link = ControlLink::new(segment.control().unwrap(), None);
        let mut cores = segment.dataplane().unwrap().into_cores();
        assert!(
            link.reached(link.mark()),
            "nothing sent: nothing to wait for"
        );

        for _ in 0..3 {
            link.send(Command::ClearGrants);
        }
        let mark = link.mark();
        assert_eq!(mark, 3);
        for taken in 0..3 {
            assert!(!link.reached(mark), "{taken} of 3 taken");
            assert_eq!(cores[0].recv_command(), Some(Ok(Command::ClearGrants)));
        }
        assert!(link.reached(mark));
        assert!(cores[0].recv_command().is_none());

        // Commands that wait in the backlog (the ring is full) are part of the mark.
        let mut sent = 0u64;
        while link.counters.backlog.load(Ordering::Relaxed) == 0 {
            link.send(Command::Drain { deadline: sent });
            sent += 1;
        }
        let mark = link.mark();
        assert_eq!(mark, 3 + sent);
        while cores[0].recv_command().is_some() {}
        assert!(
            !link.reached(mark),
            "the ring is empty but one command still waits in the backlog"
        );
        link.flush(&mut link.lock());
        assert!(!link.reached(mark));
        while cores[0].recv_command().is_some() {}
        assert!(link.reached(mark));
    }
}
