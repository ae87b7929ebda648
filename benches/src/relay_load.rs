//! What the node relays' load generators share, whatever the transport: the settings of a
//! scenario ([`RelayLoad`]), its outcome ([`RelayOutcome`]), and the run itself ([`run`]):
//! pairs connected and shared among pinned threads, each thread busy-polling turn after turn
//! until the duration ends, then draining, the generator's idle and CPU time, the relay's
//! CPU time and core ticks around the load phase, and the sums over threads.
//!
//! A transport ([`Transport`]: [`ws_generator`](crate::ws_generator) over WebSocket,
//! [`quic_generator`](crate::quic_generator) over QUIC) brings only what differs: how a pair
//! connects, what one turn of a thread does (send what is due, read or poll the sockets), what
//! a turn of the drain does, and the kernel's drop counters where it has them (UDP).
//!
//! Node `2i` sends to node `2i + 1`; a pair's sender and receiver live on the same thread.
//! Sending stops after the duration; the receivers then drain until everything sent
//! arrived, or nothing arrived for the drain time (at most [`MAX_DRAIN`] more while messages
//! keep coming), so *lost* means dropped, not late. Throughput counts only what arrived
//! while sending.
//!
//! Each thread counts the time of its turns that moved nothing: *generator idle*. Well above
//! zero at max rate means the generator waited for the relay; near zero means it may be the
//! limit, and then the result is a lower bound of the relay's capacity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::accounting::{Delivery, LatencySummary, loss_ratio, lost};
use crate::clock::{self, Epoch};
use crate::generator::Rate;
use crate::nodes::NodeCredential;
use crate::payload::STAMP_LEN;
use crate::procfs;

/// How long a drain may go on while messages keep arriving.
pub const MAX_DRAIN: Duration = Duration::from_secs(10);

/// Shortest time between two batches of one sender at a fixed rate (unless a whole batch is
/// due): 100 µs bounds a sender to 10 000 batches a second, so at 500k messages/s over 8
/// pairs a batch carries about 6 messages instead of 1, and the generator's system calls per
/// message drop with the rate. Latency is measured from the send, so the wait is not in it.
pub const PACING_TICK: Duration = Duration::from_micros(100);

/// Bound of each node's set-up (a connection, authentication, READY).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One scenario, whatever the transport.
#[derive(Debug, Clone)]
pub struct RelayLoad {
    /// The relay's address, on loopback (TCP for WebSocket, UDP for QUIC).
    pub relay: SocketAddr,
    /// Nodes with tokens, at least `2 × pairs`: node `2i` sends to node `2i + 1`.
    pub nodes: Vec<NodeCredential>,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Packet bytes per SEND (what RECV delivers), at least [`STAMP_LEN`].
    pub packet: usize,
    /// Offered load in messages per second, all pairs together.
    pub rate: Rate,
    /// How long to send.
    pub duration: Duration,
    /// After sending stops, receivers drain until nothing arrived for this long.
    pub drain: Duration,
    /// Messages per send at most (frames per `write`, datagrams per sender turn).
    pub batch: usize,
    /// Generator threads.
    pub threads: usize,
    /// Cores to pin the threads to, round robin; none: unpinned.
    pub cores: Vec<usize>,
    /// The relay's process, whose CPU time is measured over the load phase.
    pub server_pid: Option<u32>,
    /// The core the relay runs on, whose busy time is measured over the load phase.
    pub server_core: Option<usize>,
}

/// The largest packet a transport carries, and why, for the error that names it.
#[derive(Debug, Clone, Copy)]
pub struct PacketLimit {
    /// Packet bytes at most.
    pub max: usize,
    /// Said after the range when a packet is out of it (empty, or ` over QUIC: …`).
    pub why: &'static str,
}

impl RelayLoad {
    /// Checks the settings and that there are nodes enough.
    pub fn validate(&self, limit: PacketLimit) -> anyhow::Result<()> {
        self.validate_settings(limit)?;
        ensure!(
            self.nodes.len() >= 2 * self.pairs,
            "{} pairs need {} nodes, got {}",
            self.pairs,
            2 * self.pairs,
            self.nodes.len()
        );
        Ok(())
    }

    /// Checks everything but the nodes (which a runner prepares later).
    pub fn validate_settings(&self, limit: PacketLimit) -> anyhow::Result<()> {
        let (pairs, threads) = (self.pairs, self.threads);
        ensure!((1..=2048).contains(&pairs), "pairs must be 1..=2048");
        ensure!(
            (STAMP_LEN..=limit.max).contains(&self.packet),
            "packet size must be {STAMP_LEN}..={} bytes{}",
            limit.max,
            limit.why
        );
        ensure!((1..=1024).contains(&self.batch), "batch must be 1..=1024");
        ensure!((1..=64).contains(&threads), "threads must be 1..=64");
        ensure!(
            threads <= pairs,
            "more threads ({threads}) than pairs ({pairs})"
        );
        if let Some(pps) = self.rate.pps() {
            ensure!(
                pps >= pairs as u64,
                "a rate of {pps}/s cannot be shared by {pairs} pairs"
            );
        }
        ensure!(
            self.duration > Duration::ZERO && self.duration <= Duration::from_secs(3600),
            "duration must be above 0 and at most 1 h"
        );
        ensure!(self.drain <= Duration::from_secs(60), "drain at most 60 s");
        ensure!(
            self.relay.ip().is_loopback(),
            "the generator only talks to loopback, not {}",
            self.relay
        );
        Ok(())
    }
}

/// What one scenario of a node relay measured, over WebSocket or QUIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayOutcome {
    /// Messages whose every byte the kernel accepted at the senders (QUIC: datagrams quinn
    /// accepted into its send queue).
    pub sent: u64,
    /// RECVs from the right partner that reached the receivers.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// RECVs that arrived after a higher sequence number of their pair.
    pub reordered: u64,
    /// Relay messages that were not an expected RECV (wrong source, no stamp, unknown type).
    pub foreign: u64,
    /// PEER_GONE notices received (a pair's receiver was not known to the relay).
    pub peer_gone: u64,
    /// Connections the relay closed (or that failed) during the load.
    pub closed: u64,
    /// Writes that would have blocked: the relay was not reading fast enough (QUIC: datagrams
    /// quinn refused because the congestion window and its send queue were full).
    pub write_stalls: u64,
    /// Share of the generator threads' time spent in turns that moved no byte (0..=1).
    pub generator_idle: f64,
    /// The generator threads' busy time (not idle) while sending, per message delivered
    /// then, in nanoseconds: comparable with `cpu_ns_per_message`; below it, the generator
    /// spends less per message than the relay.
    pub generator_ns_per_message: Option<f64>,
    /// CPU seconds the generator threads ran while sending (`/proc/thread-self/schedstat`:
    /// time on a CPU only, so unlike the busy time above it does not grow when other tenants
    /// keep the generator off its core).
    #[serde(default)]
    pub generator_cpu_s: Option<f64>,
    /// `generator_cpu_s` per message delivered while sending, in nanoseconds: what the
    /// generator spends per message, against the relay's `cpu_ns_per_message`.
    #[serde(default)]
    pub generator_cpu_ns_per_message: Option<f64>,
    /// UDP datagrams the kernel dropped at the generator's own sockets because their receive
    /// buffers were full (QUIC only: over TCP nothing is dropped).
    #[serde(default)]
    pub generator_drops: Option<u64>,
    /// UDP datagrams the kernel dropped at the relay's socket(s) during the load phase
    /// because the relay did not read them in time (QUIC only).
    #[serde(default)]
    pub relay_drops: Option<u64>,
    /// Seconds spent sending.
    pub elapsed_s: f64,
    /// Seconds of the whole load phase (sending and draining): the CPU window.
    pub window_s: f64,
    /// The offered rate, `None` for max.
    pub offered_mps: Option<u64>,
    /// `sent / elapsed_s`.
    pub sent_mps: f64,
    /// Messages received before sending stopped: what the relay delivered during the window
    /// the throughput is measured over (the rest arrived during the drain).
    pub received_in_window: u64,
    /// `received_in_window / elapsed_s`: the throughput in messages. (At max rate the
    /// senders' socket buffers fill with megabytes the relay delivers after sending stops;
    /// counting those would overstate its rate.)
    pub delivered_mps: f64,
    /// Packet bytes delivered per second, in MB (10^6 bytes): `delivered_mps × packet`.
    pub delivered_mbps: f64,
    /// One-way latency, sender's stamp to receiver's read.
    pub latency: LatencySummary,
    /// CPU seconds the relay's process used during the load phase.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per delivered message, in nanoseconds.
    pub cpu_ns_per_message: Option<f64>,
    /// Share of the relay core's time spent busy during the load phase.
    pub server_core_busy: Option<f64>,
    /// Share of the relay core's time spent in softirq.
    pub server_core_softirq: Option<f64>,
}

/// One pair of a transport: a sender, its partner, and what the sender has built.
pub trait Pair: Send {
    /// Messages the sender got out.
    fn sent(&self) -> u64;
    /// Sets this pair's share of the offered rate.
    fn set_share(&mut self, share: Rate);
}

/// What a turn of the drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Something arrived for the receivers: the quiet time starts again.
    pub arrived: bool,
    /// Anything moved at all; if not, the thread naps for [`Transport::DRAIN_NAP`].
    pub moved: bool,
}

/// How the generator drives one transport; the rest of a run is [`run`]'s.
pub trait Transport: Sync {
    /// One pair's connections and send state.
    type Pair: Pair;
    /// A thread's own state besides its pairs (scratch buffers, timers).
    type Io;
    /// How long a draining thread sleeps after a turn that moved nothing.
    const DRAIN_NAP: Duration;

    /// The scenario.
    fn load(&self) -> &RelayLoad;
    /// Checks the scenario, the transport's own settings too.
    fn validate(&self) -> anyhow::Result<()>;
    /// Connects pair `index`, `sender` sending to `receiver`.
    fn connect(
        &self,
        index: usize,
        sender: &NodeCredential,
        receiver: &NodeCredential,
    ) -> anyhow::Result<Self::Pair>;
    /// A thread's state, at the start of the load.
    fn thread_io(&self, start: Instant) -> Self::Io;
    /// One turn of the load at `now`, `elapsed` from its start: sends what is due, reads
    /// what arrived. Whether anything moved.
    fn turn(
        &self,
        thread: &mut Thread<Self::Pair>,
        now: Instant,
        elapsed: Duration,
        io: &mut Self::Io,
    ) -> anyhow::Result<bool>;
    /// One turn of the drain at `now`: reads what arrived, sends nothing new.
    fn drain_turn(
        &self,
        thread: &mut Thread<Self::Pair>,
        now: Instant,
        io: &mut Self::Io,
    ) -> anyhow::Result<Drained>;
    /// The kernel's drop count at the relay's socket, where the transport has one (UDP).
    fn relay_drops(&self) -> Option<u64>;
    /// The kernel's drop count at the generator's own sockets (read while they are open).
    fn generator_drops(&self, threads: &[Thread<Self::Pair>]) -> Option<u64>;
    /// Closes every pair, best effort.
    fn close(&self, pairs: Vec<Self::Pair>);
}

/// Runs one scenario over `transport`: connects, loads, drains, closes.
pub fn run<T: Transport>(transport: &T, progress: &ProgressBar) -> anyhow::Result<RelayOutcome> {
    transport.validate()?;
    let config = transport.load();
    let mut pairs = (0..config.pairs)
        .map(|index| {
            transport.connect(
                index,
                &config.nodes[2 * index],
                &config.nodes[2 * index + 1],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (index, pair) in pairs.iter_mut().enumerate() {
        pair.set_share(share(config.rate, config.pairs, index));
    }
    let mut groups: Vec<Vec<T::Pair>> = (0..config.threads).map(|_| Vec::new()).collect();
    for (index, pair) in pairs.into_iter().enumerate() {
        groups[index % config.threads].push(pair);
    }
    let live = Live::default();
    let relay_drops_before = transport.relay_drops();
    let cpu_before = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_before = config.server_core.map(procfs::core_ticks).transpose()?;
    let start = clock::now();
    let end = start + config.duration;
    progress.set_length(u64::try_from(config.duration.as_millis()).unwrap_or(u64::MAX));
    progress.set_position(0);
    let results: Vec<anyhow::Result<Thread<T::Pair>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(index, pairs)| {
                let core =
                    (!config.cores.is_empty()).then(|| config.cores[index % config.cores.len()]);
                let live = &live;
                scope.spawn(move || -> anyhow::Result<Thread<T::Pair>> {
                    // The thread's scratch space and timers stay on this thread.
                    let mut io = transport.thread_io(start);
                    let mut thread = Thread::new(pairs, config, Epoch::new(start));
                    thread.pin(core);
                    thread.load(transport, end, live, &mut io)?;
                    thread.drain(transport, config.drain, &mut io)?;
                    Ok(thread)
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let now = clock::now();
            let secs = (now.min(end) - start).as_secs_f64().max(1e-9);
            progress.set_position(u64::try_from((now.min(end) - start).as_millis()).unwrap_or(0));
            progress.set_message(format!(
                "sent {:.0} msg/s, delivered {:.0} msg/s",
                live.sent.load(Ordering::Relaxed) as f64 / secs,
                live.received.load(Ordering::Relaxed) as f64 / secs,
            ));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("a generator thread panicked"))
                    .and_then(|result| result)
            })
            .collect()
    });
    let window_s = (clock::now() - start).as_secs_f64();
    let cpu_after = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_after = config.server_core.map(procfs::core_ticks).transpose()?;
    let relay_drops = relay_drops_before
        .zip(transport.relay_drops())
        .map(|(before, after)| after.saturating_sub(before));
    let mut threads = Vec::with_capacity(results.len());
    for result in results {
        threads.push(result?);
    }
    let mut tally = Tally {
        sent: 0,
        in_window: 0,
        delivery: Delivery::new(config.pairs),
        counts: Counts::default(),
        idle: Duration::ZERO,
        busy_window: Duration::ZERO,
        generator_cpu: Some(Duration::ZERO),
        elapsed_s: 0.0,
        window_s,
        server_cpu: cpu_before.zip(cpu_after),
        server_core: core_before.zip(core_after),
    };
    let mut stopped = start;
    for thread in &threads {
        tally.in_window += thread.received_in_window;
        tally.delivery.merge(&thread.delivery);
        tally.sent += thread.sent();
        tally.counts.add(&thread.counts);
        tally.idle += thread.idle;
        tally.generator_cpu = tally
            .generator_cpu
            .zip(thread.cpu)
            .map(|(sum, cpu)| sum + cpu);
        tally.busy_window += thread.stopped.saturating_duration_since(start);
        stopped = stopped.max(thread.stopped);
    }
    tally.elapsed_s = (stopped - start).as_secs_f64().max(1e-9);
    // Read while the sockets are open: the counters go with them.
    let generator_drops = transport.generator_drops(&threads);
    for thread in threads {
        transport.close(thread.pairs);
    }
    Ok(tally.outcome(config.rate, config.packet, generator_drops, relay_drops))
}

/// Pair `index`'s share of `rate` among `pairs`: the remainder goes to the first pairs.
pub fn share(rate: Rate, pairs: usize, index: usize) -> Rate {
    match rate {
        Rate::Max => Rate::Max,
        Rate::Pps(pps) => {
            let pairs = pairs.max(1) as u64;
            let extra = u64::from((index as u64) < pps % pairs);
            Rate::Pps(pps / pairs + extra)
        }
    }
}

/// Counters the progress bar reads while the threads run.
#[derive(Debug, Default)]
struct Live {
    sent: AtomicU64,
    received: AtomicU64,
}

/// What a generator thread counts besides deliveries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// PEER_GONE answers.
    pub peer_gone: u64,
    /// RECVs from a node that was not the partner.
    pub foreign: u64,
    /// Sessions the relay closed.
    pub closed: u64,
    /// Sends that found the socket (or the connection's queue) full.
    pub write_stalls: u64,
}

impl Counts {
    /// Adds what one read (or poll) of a receiver found.
    pub fn note(&mut self, peer_gone: u64, foreign: u64, closed: bool) {
        self.peer_gone += peer_gone;
        self.foreign += foreign;
        self.closed += u64::from(closed);
    }

    fn add(&mut self, other: &Self) {
        self.peer_gone += other.peer_gone;
        self.foreign += other.foreign;
        self.closed += other.closed;
        self.write_stalls += other.write_stalls;
    }
}

/// One generator thread: its pairs and what it measured.
#[derive(Debug)]
pub struct Thread<P> {
    /// The pairs this thread drives.
    pub pairs: Vec<P>,
    /// The load's start, which stamps count from.
    pub epoch: Epoch,
    /// Messages per send at most.
    pub batch: usize,
    /// Deliveries, with their latency.
    pub delivery: Delivery,
    /// Everything else the reads found.
    pub counts: Counts,
    idle: Duration,
    /// The thread's CPU time while sending (`None` if `/proc` does not tell).
    cpu: Option<Duration>,
    stopped: Instant,
    /// Messages received when sending stopped.
    received_in_window: u64,
}

impl<P: Pair> Thread<P> {
    fn new(pairs: Vec<P>, config: &RelayLoad, epoch: Epoch) -> Self {
        Self {
            pairs,
            epoch,
            batch: config.batch,
            delivery: Delivery::new(config.pairs),
            counts: Counts::default(),
            idle: Duration::ZERO,
            cpu: None,
            stopped: clock::now(),
            received_in_window: 0,
        }
    }

    fn pin(&self, core: Option<usize>) {
        if let Some(core) = core
            && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
        {
            eprintln!("warning: cannot pin a generator thread to core {core}; running unpinned");
        }
    }

    fn sent(&self) -> u64 {
        self.pairs.iter().map(Pair::sent).sum()
    }

    /// Turns until `end`.
    fn load<T: Transport<Pair = P>>(
        &mut self,
        transport: &T,
        end: Instant,
        live: &Live,
        io: &mut T::Io,
    ) -> anyhow::Result<()> {
        let start = self.epoch.at(0);
        let cpu_start = procfs::thread_cpu_time().ok();
        let mut last_live = start;
        let (mut reported_sent, mut reported_received) = (0, 0);
        let mut previous: Option<Instant> = None;
        loop {
            let now = clock::now();
            if let Some(turn_start) = previous.take() {
                self.idle += now.saturating_duration_since(turn_start);
            }
            if now >= end {
                break;
            }
            let moved = transport.turn(self, now, now - start, io)?;
            if now.saturating_duration_since(last_live) >= Duration::from_millis(50) {
                last_live = now;
                let (sent, received) = (self.sent(), self.delivery.received());
                live.sent.fetch_add(sent - reported_sent, Ordering::Relaxed);
                live.received
                    .fetch_add(received - reported_received, Ordering::Relaxed);
                (reported_sent, reported_received) = (sent, received);
            }
            if !moved {
                previous = Some(now);
            }
        }
        self.stopped = clock::now();
        self.cpu = cpu_start
            .zip(procfs::thread_cpu_time().ok())
            .map(|(start, end)| end.saturating_sub(start));
        self.received_in_window = self.delivery.received();
        Ok(())
    }

    /// Drains until every message sent arrived, or nothing arrived for `quiet`, or
    /// [`MAX_DRAIN`] beyond `quiet` passed. A relay that still delivers what the buffers held
    /// when sending stopped (megabytes at max rate) is waited for, so what is then missing
    /// was dropped, not late.
    fn drain<T: Transport<Pair = P>>(
        &mut self,
        transport: &T,
        quiet: Duration,
        io: &mut T::Io,
    ) -> anyhow::Result<()> {
        let start = clock::now();
        let mut last_arrival = start;
        loop {
            let now = clock::now();
            if self.delivery.received() >= self.sent()
                || now.saturating_duration_since(last_arrival) >= quiet
                || now.saturating_duration_since(start) >= quiet + MAX_DRAIN
            {
                return Ok(());
            }
            let drained = transport.drain_turn(self, now, io)?;
            if drained.arrived {
                last_arrival = now;
            }
            if !drained.moved {
                std::thread::sleep(T::DRAIN_NAP);
            }
        }
    }
}

/// What a run counted, summed over its threads.
struct Tally {
    /// Messages the senders got out.
    sent: u64,
    /// Deliveries within the load window.
    in_window: u64,
    /// Every delivery, with its latency.
    delivery: Delivery,
    /// PEER_GONE answers, foreign messages, closes, stalls.
    counts: Counts,
    /// Time the generator threads waited with nothing to do.
    idle: Duration,
    /// Sum over threads of the time from start to that thread's stop.
    busy_window: Duration,
    /// The generator threads' CPU time, when every thread could read its own.
    generator_cpu: Option<Duration>,
    /// Seconds from start to the last thread's stop (never 0).
    elapsed_s: f64,
    /// Seconds of the load window.
    window_s: f64,
    /// The server's CPU time before and after the load.
    server_cpu: Option<(Duration, Duration)>,
    /// The server core's ticks before and after the load.
    server_core: Option<(procfs::CoreTicks, procfs::CoreTicks)>,
}

impl Tally {
    /// The outcome at offered `rate` with `packet`-byte messages; the drop counts are the
    /// kernel's, where the transport has them (UDP).
    fn outcome(
        self,
        rate: Rate,
        packet: usize,
        generator_drops: Option<u64>,
        relay_drops: Option<u64>,
    ) -> RelayOutcome {
        let Self {
            sent,
            in_window,
            delivery,
            counts,
            idle,
            busy_window,
            generator_cpu,
            elapsed_s,
            window_s,
            server_cpu,
            server_core,
        } = self;
        let core = server_core.map(|(before, after)| before.fractions(&after));
        let server_cpu_s =
            server_cpu.map(|(before, after)| after.saturating_sub(before).as_secs_f64());
        let received = delivery.received();
        let delivered_mps = in_window as f64 / elapsed_s;
        RelayOutcome {
            sent,
            received,
            lost: lost(sent, received),
            loss_ratio: loss_ratio(sent, received),
            reordered: delivery.reordered(),
            foreign: counts.foreign + delivery.foreign(),
            peer_gone: counts.peer_gone,
            closed: counts.closed,
            write_stalls: counts.write_stalls,
            generator_idle: if busy_window.is_zero() {
                0.0
            } else {
                idle.as_secs_f64() / busy_window.as_secs_f64()
            },
            generator_ns_per_message: (in_window > 0)
                .then(|| busy_window.saturating_sub(idle).as_nanos() as f64 / in_window as f64),
            generator_cpu_s: generator_cpu.map(|cpu| cpu.as_secs_f64()),
            generator_cpu_ns_per_message: generator_cpu
                .filter(|_| in_window > 0)
                .map(|cpu| cpu.as_nanos() as f64 / in_window as f64),
            generator_drops,
            relay_drops,
            elapsed_s,
            window_s,
            offered_mps: rate.pps(),
            sent_mps: sent as f64 / elapsed_s,
            received_in_window: in_window,
            delivered_mps,
            delivered_mbps: delivered_mps * packet as f64 / 1e6,
            latency: delivery.latency(),
            server_cpu_s,
            cpu_ns_per_message: server_cpu_s
                .filter(|_| received > 0)
                .map(|cpu| cpu * 1e9 / received as f64),
            server_core_busy: core.map(|c| c.0),
            server_core_softirq: core.map(|c| c.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_shared_exactly() {
        let shares: Vec<Rate> = (0..3).map(|i| share(Rate::Pps(20_000), 3, i)).collect();
        assert_eq!(
            shares,
            [Rate::Pps(6_667), Rate::Pps(6_667), Rate::Pps(6_666)]
        );
        assert_eq!(share(Rate::Max, 8, 5), Rate::Max);
        assert_eq!(share(Rate::Pps(16), 8, 7), Rate::Pps(2));
    }

    #[test]
    fn settings_are_checked() {
        let limit = PacketLimit {
            max: 1000,
            why: " over the test transport",
        };
        let load = |packet, rate, threads, relay| RelayLoad {
            relay,
            nodes: Vec::new(),
            pairs: 4,
            packet,
            rate,
            duration: Duration::from_secs(1),
            drain: Duration::from_millis(500),
            batch: 64,
            threads,
            cores: Vec::new(),
            server_pid: None,
            server_core: None,
        };
        let local = SocketAddr::from(([127, 0, 0, 1], 4433));
        let ok = |packet, rate, threads, relay| {
            load(packet, rate, threads, relay).validate_settings(limit)
        };
        assert!(ok(100, Rate::Max, 1, local).is_ok());
        assert!(ok(1000, Rate::Pps(20_000), 4, local).is_ok());
        let too_big = ok(1001, Rate::Max, 1, local).unwrap_err();
        assert!(
            format!("{too_big}").contains("..=1000 bytes over the test transport"),
            "{too_big}"
        );
        assert!(ok(STAMP_LEN - 1, Rate::Max, 1, local).is_err());
        assert!(
            ok(100, Rate::Pps(3), 1, local).is_err(),
            "below one per pair"
        );
        assert!(
            ok(100, Rate::Max, 5, local).is_err(),
            "more threads than pairs"
        );
        let remote = SocketAddr::from(([192, 0, 2, 1], 4433));
        assert!(ok(100, Rate::Max, 1, remote).is_err(), "loopback only");
        let short = load(100, Rate::Max, 1, local).validate(limit).unwrap_err();
        assert!(format!("{short}").contains("need 8 nodes"), "{short}");
    }
}
