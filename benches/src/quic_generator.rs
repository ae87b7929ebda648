//! The QUIC load generator: N pairs of nodes on a relay's QUIC listener, each sender sending
//! SEND datagrams to its partner, each receiver timing the RECVs that arrive. The QUIC twin
//! of [`ws_generator`](crate::ws_generator), with the same offered rates, measurements and
//! outcome ([`WsOutcome`]).
//!
//! # Setup
//!
//! For each node one [`QuicNode`]: its own UDP socket, quinn-proto endpoint and connection,
//! AUTH on the control stream, READY awaited, and the check that the packet size fits a
//! DATAGRAM frame ([`quic_client::MAX_PACKET`], 1145 bytes). Node `2i` sends to node `2i + 1`.
//!
//! # Load
//!
//! `threads` threads (pinned round robin to `cores`) share the pairs and busy-poll, turn
//! after turn:
//!
//! * every node (senders for the ACKs, receivers for the RECVs) receives with one
//!   `recvmmsg` (up to 32 datagrams), lets quinn handle them and its timers, and sends what
//!   quinn produced with one `sendmmsg` per 32 packets. RECVs are accounted ([`Delivery`]:
//!   sequence, reordering, one-way latency from the [`Stamp`], one clock read per turn);
//! * then, unless a receiver's batch came back full (its socket may hold more: the
//!   generator serves its receivers first rather than overflow its own sockets), each
//!   sender queues what its share of the rate allows now (`max`: a batch of `batch`; at a
//!   fixed rate at most once per 100 µs unless a whole batch is due) as stamped SEND
//!   datagrams, one allocation per batch, and sends them at once. quinn refuses a datagram
//!   when its send buffer (64 KiB) is full, which happens when the congestion window is: the
//!   datagram is kept and offered again on the next turn (a *write stall*), so at max rate
//!   the sender offers what QUIC's congestion control lets through, as TCP's flow control
//!   does for the WebSocket generator.
//!
//! Sending stops after the duration; every node keeps being polled (quinn still holds queued
//! datagrams and the relay still delivers) until everything sent arrived, or nothing arrived
//! for the drain time (at most 10 s more). Unlike TCP, QUIC datagrams are unreliable: *lost*
//! counts datagrams the relay dropped and UDP datagrams dropped on the way: the kernel's drops
//! at the generator's own sockets are reported as `generator_drops` (the generator's fault),
//! those at the relay's socket as `relay_drops` (the relay did not read in time).
//!
//! *Generator idle*, *gen ns/msg* and *gen CPU ns/msg* are measured as in the WebSocket
//! generator. On loopback a `sendmmsg` also runs the receiving socket's side of the kernel,
//! so the generator pays for delivering into the relay's socket and the relay for delivering
//! into the generator's: per message, a QUIC generator costs about what a QUIC relay does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use bytes::{Bytes, BytesMut};
use indicatif::ProgressBar;

use crate::accounting::Delivery;
use crate::clock::{self, Epoch};
use crate::generator::Rate;
use crate::nodes::NodeCredential;
use crate::payload::{STAMP_LEN, Stamp};
use crate::procfs;
use crate::quic_client::{self, ClientSetup, MAX_PACKET, NodeIo, QuicNode, SendError};
use crate::ws_generator::{Counts, Tally, WsOutcome, share};
use boson_dataplane_proto::ws::relay::PREFIX_LEN;
use boson_shared::NodeId;

/// Bound of each node's set-up (handshake, AUTH, READY).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a drain may go on while messages keep arriving.
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// Shortest time between two batches of one sender at a fixed rate (unless a whole batch is
/// due), as in the WebSocket generator: what is due meanwhile goes out together.
const PACING_TICK: Duration = Duration::from_micros(100);

/// One scenario.
#[derive(Debug, Clone)]
pub struct QuicLoadConfig {
    /// The relay's UDP address, on loopback.
    pub relay: std::net::SocketAddr,
    /// TLS and transport of every client.
    pub setup: ClientSetup,
    /// Nodes with tokens, at least `2 × pairs`: node `2i` sends to node `2i + 1`.
    pub nodes: Vec<NodeCredential>,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Packet bytes per SEND (what RECV delivers), [`STAMP_LEN`]..=[`MAX_PACKET`].
    pub packet: usize,
    /// Offered load in messages per second, all pairs together.
    pub rate: Rate,
    /// How long to send.
    pub duration: Duration,
    /// After sending stops, the nodes are polled until nothing arrived for this long.
    pub drain: Duration,
    /// Datagrams queued per sender turn at most.
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

impl QuicLoadConfig {
    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_settings(
            self.relay,
            self.pairs,
            self.packet,
            self.rate,
            self.duration,
            self.drain,
            self.batch,
            self.threads,
        )?;
        ensure!(
            self.nodes.len() >= 2 * self.pairs,
            "{} pairs need {} nodes, got {}",
            self.pairs,
            2 * self.pairs,
            self.nodes.len()
        );
        Ok(())
    }
}

/// Checks everything but the nodes and the certificate (which a runner prepares later).
#[expect(
    clippy::too_many_arguments,
    reason = "the scalar settings of QuicLoadConfig, checked before a runner has the rest"
)]
pub fn validate_settings(
    relay: std::net::SocketAddr,
    pairs: usize,
    packet: usize,
    rate: Rate,
    duration: Duration,
    drain: Duration,
    batch: usize,
    threads: usize,
) -> anyhow::Result<()> {
    ensure!((1..=2048).contains(&pairs), "pairs must be 1..=2048");
    ensure!(
        (STAMP_LEN..=MAX_PACKET).contains(&packet),
        "packet size must be {STAMP_LEN}..={MAX_PACKET} bytes over QUIC: a DATAGRAM frame in a \
         1200-byte QUIC packet carries {} bytes of relay message at most",
        MAX_PACKET + PREFIX_LEN
    );
    ensure!((1..=1024).contains(&batch), "batch must be 1..=1024");
    ensure!((1..=64).contains(&threads), "threads must be 1..=64");
    ensure!(
        threads <= pairs,
        "more threads ({threads}) than pairs ({pairs})"
    );
    if let Some(pps) = rate.pps() {
        ensure!(
            pps >= pairs as u64,
            "a rate of {pps}/s cannot be shared by {pairs} pairs"
        );
    }
    ensure!(
        duration > Duration::ZERO && duration <= Duration::from_secs(3600),
        "duration must be above 0 and at most 1 h"
    );
    ensure!(drain <= Duration::from_secs(60), "drain at most 60 s");
    ensure!(
        relay.ip().is_loopback(),
        "the generator only talks to loopback, not {relay}"
    );
    Ok(())
}

/// Runs one scenario: connects, loads, drains, closes.
pub fn run(config: &QuicLoadConfig, progress: &ProgressBar) -> anyhow::Result<WsOutcome> {
    config.validate()?;
    let mut pairs = connect_pairs(config)?;
    for (index, pair) in pairs.iter_mut().enumerate() {
        pair.share = share(config.rate, config.pairs, index);
    }
    let mut groups: Vec<Vec<Pair>> = (0..config.threads).map(|_| Vec::new()).collect();
    for (index, pair) in pairs.into_iter().enumerate() {
        groups[index % config.threads].push(pair);
    }
    let live = Live::default();
    let relay_drops_before = procfs::udp_drops(config.relay.port()).ok();
    let cpu_before = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_before = config.server_core.map(procfs::core_ticks).transpose()?;
    let start = clock::now();
    let end = start + config.duration;
    progress.set_length(u64::try_from(config.duration.as_millis()).unwrap_or(u64::MAX));
    progress.set_position(0);
    let results: Vec<anyhow::Result<Worker>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(index, pairs)| {
                let core =
                    (!config.cores.is_empty()).then(|| config.cores[index % config.cores.len()]);
                let live = &live;
                scope.spawn(move || -> anyhow::Result<Worker> {
                    // The batched system calls' scratch space stays on this thread.
                    let mut io = NodeIo::new();
                    let mut worker = Worker::new(pairs, config, Epoch::new(start));
                    worker.pin(core);
                    worker.load(end, live, &mut io)?;
                    worker.drain(config.drain, &mut io)?;
                    Ok(worker)
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
        .zip(procfs::udp_drops(config.relay.port()).ok())
        .map(|(before, after)| after.saturating_sub(before));
    let mut workers = Vec::with_capacity(results.len());
    for result in results {
        workers.push(result?);
    }
    let mut delivery = Delivery::new(config.pairs);
    let (mut sent, mut peer_gone, mut closed, mut stalls, mut foreign) = (0, 0, 0, 0, 0);
    let (mut idle, mut busy_window) = (Duration::ZERO, Duration::ZERO);
    let mut stopped = start;
    let mut in_window = 0;
    let mut generator_cpu = Some(Duration::ZERO);
    let mut ports = Vec::new();
    for worker in &workers {
        in_window += worker.received_in_window;
        delivery.merge(&worker.delivery);
        sent += worker.pairs.iter().map(|p| p.sent).sum::<u64>();
        peer_gone += worker.counts.peer_gone;
        closed += worker.counts.closed;
        stalls += worker.counts.write_stalls;
        foreign += worker.counts.foreign;
        idle += worker.idle;
        generator_cpu = generator_cpu.zip(worker.cpu).map(|(sum, cpu)| sum + cpu);
        busy_window += worker.stopped.saturating_duration_since(start);
        stopped = stopped.max(worker.stopped);
        for pair in &worker.pairs {
            ports.extend([pair.sender.local_port(), pair.receiver.local_port()]);
        }
    }
    // Read while the sockets are open: the counters go with them.
    let generator_drops = ports
        .iter()
        .map(|&port| procfs::udp_drops(port))
        .sum::<std::io::Result<u64>>()
        .ok();
    let mut io = NodeIo::new();
    for worker in workers {
        for mut pair in worker.pairs {
            pair.sender.close(&mut io);
            pair.receiver.close(&mut io);
        }
    }
    Ok(Tally {
        sent,
        in_window,
        delivery,
        foreign,
        peer_gone,
        closed,
        write_stalls: stalls,
        idle,
        busy_window,
        generator_cpu,
        elapsed_s: (stopped - start).as_secs_f64().max(1e-9),
        window_s,
        server_cpu: cpu_before.zip(cpu_after),
        server_core: core_before.zip(core_after),
    }
    .outcome(config.rate, config.packet, generator_drops, relay_drops))
}

/// Connects every pair; the first failure is the error, naming the node's position.
fn connect_pairs(config: &QuicLoadConfig) -> anyhow::Result<Vec<Pair>> {
    (0..config.pairs)
        .map(|index| {
            let sender = &config.nodes[2 * index];
            let receiver = &config.nodes[2 * index + 1];
            let open = |node: &NodeCredential, role: &str| {
                QuicNode::connect(
                    &config.setup,
                    config.relay,
                    node.node,
                    &node.token,
                    config.packet,
                    CONNECT_TIMEOUT,
                )
                .with_context(|| {
                    format!(
                        "pair {index} {role} {} on quic://{}",
                        node.node, config.relay
                    )
                })
            };
            let tx = open(sender, "sender")?;
            let rx = open(receiver, "receiver")?;
            Ok(Pair {
                flow: u32::try_from(index).unwrap_or(u32::MAX),
                template: quic_client::send_template(&receiver.node, config.packet),
                expect_src: sender.node,
                sender: tx,
                receiver: rx,
                chunk: BytesMut::new(),
                held: None,
                share: Rate::Max,
                built: 0,
                sent: 0,
                last_batch: Duration::ZERO,
            })
        })
        .collect()
}

/// Counters the progress bar reads while the threads run.
#[derive(Debug, Default)]
struct Live {
    sent: AtomicU64,
    received: AtomicU64,
}

/// A sender, its partner, and what the sender has stamped but quinn did not take yet.
#[derive(Debug)]
struct Pair {
    flow: u32,
    sender: QuicNode,
    receiver: QuicNode,
    /// The sender's node id (the source RECVs must carry).
    expect_src: NodeId,
    /// A SEND to the receiver with a packet of zeros.
    template: Vec<u8>,
    /// Where a batch's datagrams are built: one allocation per batch, shared by its views.
    chunk: BytesMut,
    /// A stamped datagram quinn refused (its send buffer was full), offered first next time.
    held: Option<Bytes>,
    share: Rate,
    /// Messages stamped so far (what pacing counts).
    built: u64,
    /// Messages quinn accepted.
    sent: u64,
    /// When the last batch was built, from the start of the load.
    last_batch: Duration,
}

impl Pair {
    /// Offers the held datagram, then a new batch if one is due. Returns whether anything
    /// was queued and whether quinn refused a datagram for want of room.
    fn send(&mut self, elapsed: Duration, sent_ns: u64, batch: usize) -> (bool, bool) {
        if !self.sender.is_open() {
            return (false, false);
        }
        let mut queued = false;
        if let Some(datagram) = self.held.take() {
            match self.offer(datagram) {
                Offer::Taken => queued = true,
                Offer::Full => return (false, true),
                Offer::Dropped => {}
            }
        }
        let due = self.share.due(elapsed, self.built, batch);
        if due == 0 {
            return (queued, false);
        }
        if due < batch && elapsed.saturating_sub(self.last_batch) < PACING_TICK {
            return (queued, false);
        }
        self.last_batch = elapsed;
        let len = self.template.len();
        self.chunk.reserve(due * len);
        for _ in 0..due {
            self.chunk.extend_from_slice(&self.template);
            let stamp = Stamp {
                flow: self.flow,
                seq: self.built,
                sent_ns,
            };
            let at = self.chunk.len() - len + PREFIX_LEN;
            if let Some(out) = self.chunk.get_mut(at..at + STAMP_LEN)
                && let Ok(out) = <&mut [u8; STAMP_LEN]>::try_from(out)
            {
                stamp.encode(out);
            }
            self.built += 1;
            let datagram = self.chunk.split().freeze();
            match self.offer(datagram) {
                Offer::Taken => queued = true,
                Offer::Full => {
                    // The rest of the batch is not stamped: pacing catches up next turn.
                    return (queued, true);
                }
                Offer::Dropped => return (queued, false),
            }
        }
        (queued, false)
    }

    fn offer(&mut self, datagram: Bytes) -> Offer {
        match self.sender.send(datagram) {
            Ok(()) => {
                self.sent += 1;
                Offer::Taken
            }
            Err(SendError::Blocked(datagram)) => {
                self.held = Some(datagram);
                Offer::Full
            }
            // A datagram the connection can never carry is not sent: the size was checked
            // at connect, so this is a closed connection, which is counted.
            Err(SendError::Refused | SendError::Closed) => Offer::Dropped,
        }
    }
}

/// What became of one datagram offered to quinn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Taken,
    Full,
    Dropped,
}

/// One generator thread and its pairs.
struct Worker {
    pairs: Vec<Pair>,
    epoch: Epoch,
    batch: usize,
    delivery: Delivery,
    counts: Counts,
    idle: Duration,
    /// The thread's CPU time while sending (`None` if `/proc` does not tell).
    cpu: Option<Duration>,
    stopped: Instant,
    /// Messages received when sending stopped.
    received_in_window: u64,
}

impl Worker {
    fn new(pairs: Vec<Pair>, config: &QuicLoadConfig, epoch: Epoch) -> Self {
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
        self.pairs.iter().map(|p| p.sent).sum()
    }

    /// Sends and receives until `end`.
    fn load(&mut self, end: Instant, live: &Live, io: &mut NodeIo) -> anyhow::Result<()> {
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
            let elapsed = now - start;
            let sent_ns = self.epoch.nanos(now);
            let (mut moved, backlog) = self.poll_nodes(now, io)?;
            // A receiver whose socket still holds datagrams is served first: sending more
            // than the generator can receive would only overflow its own sockets.
            if !backlog {
                for pair in &mut self.pairs {
                    let (queued, stalled) = pair.send(elapsed, sent_ns, self.batch);
                    self.counts.write_stalls += u64::from(stalled);
                    if queued {
                        moved = true;
                        pair.sender.transmit(now, io)?;
                    }
                }
            }
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

    /// Polls every node until every message sent arrived, or nothing arrived for `quiet`, or
    /// [`MAX_DRAIN`] beyond `quiet` passed.
    fn drain(&mut self, quiet: Duration, io: &mut NodeIo) -> anyhow::Result<()> {
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
            let before = self.delivery.received();
            let (moved, _) = self.poll_nodes(now, io)?;
            if self.delivery.received() > before {
                last_arrival = now;
            }
            if !moved {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// One poll of every node: whether any UDP datagram moved, and whether a receiver's
    /// socket may hold more.
    fn poll_nodes(&mut self, now: Instant, io: &mut NodeIo) -> anyhow::Result<(bool, bool)> {
        let received_ns = self.epoch.nanos(now);
        let (mut moved, mut backlog) = (false, false);
        for pair in &mut self.pairs {
            let counts = &mut self.counts;
            let polled = pair.sender.poll(now, io, &mut |_| counts.foreign += 1)?;
            moved |= polled.moved();
            counts.note(polled.peer_gone, polled.foreign, polled.closed);
            let delivery = &mut self.delivery;
            let (flow, src) = (pair.flow, pair.expect_src);
            let polled =
                pair.receiver
                    .poll(
                        now,
                        io,
                        &mut |datagram| match quic_client::recv_packet(&datagram, &src)
                            .and_then(Stamp::decode)
                        {
                            Some(stamp) if stamp.flow == flow => {
                                delivery.handle(stamp.flow, stamp.seq, stamp.sent_ns, received_ns);
                            }
                            Some(_) | None => counts.foreign += 1,
                        },
                    )?;
            moved |= polled.moved();
            backlog |= polled.backlogged();
            counts.note(polled.peer_gone, polled.foreign, polled.closed);
        }
        Ok((moved, backlog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let relay = std::net::SocketAddr::from(([127, 0, 0, 1], 4433));
        let ok = |packet, rate, threads, relay| {
            validate_settings(
                relay,
                4,
                packet,
                rate,
                Duration::from_secs(1),
                Duration::from_millis(500),
                64,
                threads,
            )
        };
        assert!(ok(100, Rate::Max, 1, relay).is_ok());
        assert!(ok(MAX_PACKET, Rate::Pps(20_000), 4, relay).is_ok());
        let too_big = ok(MAX_PACKET + 1, Rate::Max, 1, relay).unwrap_err();
        assert!(
            format!("{too_big}").contains("1200-byte QUIC packet"),
            "{too_big}"
        );
        assert!(ok(STAMP_LEN - 1, Rate::Max, 1, relay).is_err());
        assert!(
            ok(100, Rate::Pps(3), 1, relay).is_err(),
            "below one per pair"
        );
        assert!(
            ok(100, Rate::Max, 5, relay).is_err(),
            "more threads than pairs"
        );
        let remote = std::net::SocketAddr::from(([192, 0, 2, 1], 4433));
        assert!(ok(100, Rate::Max, 1, remote).is_err(), "loopback only");
    }
}
