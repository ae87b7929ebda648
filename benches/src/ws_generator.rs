//! The WebSocket load generator: N pairs of nodes on a relay, each sender sending SEND
//! messages to its partner, each receiver timing the RECVs that arrive.
//!
//! # Setup
//!
//! For each pair, two connections ([`ws_client::connect`]): TCP with `TCP_NODELAY`, the
//! upgrade on the relay's path with `Authorization: Bearer <token>` (or an AUTH message), and
//! the wait for READY. Nodes and tokens come from the caller ([`crate::nodes`]): registered
//! through bosonserver's REST API, or minted for the baseline. Node `2i` sends to node
//! `2i + 1`.
//!
//! # Load
//!
//! `threads` threads (pinned round robin to `cores` when given) share the pairs; a pair's
//! sender and receiver live on the same thread. Each thread busy-polls its non-blocking
//! sockets, turn after turn:
//!
//! * each sender with nothing pending gets what its share of the rate allows now (`max`: a
//!   full batch; at a fixed rate at most once per 100 µs unless a batch is due), stamps that
//!   many copies of its pre-masked [`SendTemplate`] (24 bytes each) and writes them with
//!   **one** `write`; a partial write is finished before anything new is built;
//! * each receiver reads once (up to 256 KiB) and parses every whole frame: a RECV from its
//!   partner is accounted ([`Delivery`]: sequence, reordering, one-way latency from the
//!   [`Stamp`], one clock read per `read`); a Ping is answered;
//! * every millisecond, the senders' sockets are read too (PEER_GONE, pings, a Close).
//!
//! Sending stops after the duration; the receivers then drain until everything sent arrived,
//! or nothing arrived for the drain time (at most 10 s more while messages keep coming), so
//! *lost* means dropped, not late. Throughput counts only what arrived while sending: at max
//! rate the socket buffers hold megabytes that arrive after it.
//!
//! # Is the generator the bottleneck?
//!
//! Each thread counts the time of its turns that moved no byte (every write would block,
//! every read found nothing): *generator idle*. Well above zero at max rate means the
//! generator waited for the relay; near zero means it may be the limit, and then the result
//! is a lower bound of the relay's capacity. *Write stalls* count writes that would block.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::accounting::{Delivery, LatencySummary, loss_ratio, lost};
use crate::clock::{self, Epoch};
use crate::generator::Rate;
use crate::nodes::NodeCredential;
use crate::payload::{STAMP_LEN, Stamp};
use crate::procfs;
use crate::ws_client::{
    self, Auth, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, SendTemplate, encode_client_frame,
    parse_recv, parse_server_frame,
};
use boson_dataplane_proto::ws::relay::{self, NODE_ID_LEN};

/// Largest packet: the relay's 64 KiB message cap minus the 17-byte prefix.
pub const MAX_PACKET: usize = 64 * 1024 - relay::PREFIX_LEN;

/// Bound of each connection's set-up (TCP, upgrade, READY).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes a receiver reads at most per `read`.
const READ_BUFFER: usize = 256 * 1024;

/// How long a drain may go on while messages keep arriving.
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// Shortest time between two writes of one sender at a fixed rate (unless a whole batch is
/// due): 100 µs bounds a sender to 10 000 writes a second, so at 500k messages/s over 8 pairs
/// a write carries about 6 messages instead of 1, and the generator's system calls per
/// message drop with the rate. Latency is measured from the write, so the wait is not in it.
const PACING_TICK: Duration = Duration::from_micros(100);

/// How often the senders' own sockets are read.
const SENDER_READ_EVERY: Duration = Duration::from_millis(1);

/// One scenario.
#[derive(Debug, Clone)]
pub struct WsLoadConfig {
    /// The relay's TCP address, on loopback.
    pub relay: SocketAddr,
    /// The upgrade path.
    pub path: String,
    /// How tokens are presented.
    pub auth: Auth,
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
    /// Frames per `write` at most.
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

impl WsLoadConfig {
    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_settings()?;
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
    pub fn validate_settings(&self) -> anyhow::Result<()> {
        ensure!((1..=2048).contains(&self.pairs), "pairs must be 1..=2048");
        ensure!(
            (STAMP_LEN..=MAX_PACKET).contains(&self.packet),
            "packet size must be {STAMP_LEN}..={MAX_PACKET} bytes"
        );
        ensure!((1..=1024).contains(&self.batch), "batch must be 1..=1024");
        ensure!((1..=64).contains(&self.threads), "threads must be 1..=64");
        ensure!(
            self.threads <= self.pairs,
            "more threads ({}) than pairs ({})",
            self.threads,
            self.pairs
        );
        if let Some(pps) = self.rate.pps() {
            ensure!(
                pps >= self.pairs as u64,
                "a rate of {pps}/s cannot be shared by {} pairs",
                self.pairs
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

/// What one scenario of a node relay measured, over WebSocket (here) or QUIC
/// ([`crate::quic_generator`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsOutcome {
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

/// Connects every pair; the first failure is the error, naming the node's position.
pub fn connect_pairs(config: &WsLoadConfig) -> anyhow::Result<Vec<Pair>> {
    (0..config.pairs)
        .map(|index| {
            let sender = &config.nodes[2 * index];
            let receiver = &config.nodes[2 * index + 1];
            let open = |node: &NodeCredential, role: &str| {
                ws_client::connect(
                    config.relay,
                    &config.path,
                    &node.node,
                    &node.token,
                    config.auth,
                    CONNECT_TIMEOUT,
                )
                .with_context(|| {
                    format!(
                        "pair {index} {role} {} on ws://{}{}",
                        node.node, config.relay, config.path
                    )
                })
            };
            let tx = open(sender, "sender")?;
            let rx = open(receiver, "receiver")?;
            let template = SendTemplate::new(&receiver.node, config.packet, tx.mask);
            let frame_len = template.len();
            Ok(Pair {
                flow: u32::try_from(index).unwrap_or(u32::MAX),
                sender: Endpoint::new(tx)?,
                receiver: Endpoint::new(rx)?,
                expect_src: *sender.node.as_bytes(),
                out: template.bytes().repeat(config.batch),
                template,
                frame_len,
                share: Rate::Max,
                built: 0,
                batch_frames: 0,
                written: 0,
                counted: 0,
                sent: 0,
                last_batch: Duration::ZERO,
            })
        })
        .collect()
}

/// Runs one scenario: connects, loads, drains, closes.
pub fn run(config: &WsLoadConfig, progress: &ProgressBar) -> anyhow::Result<WsOutcome> {
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
                scope.spawn(move || {
                    let mut worker = Worker::new(pairs, config, Epoch::new(start));
                    worker.pin(core);
                    worker.load(end, live);
                    worker.drain(config.drain);
                    worker
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
            .map(|h| h.join().map_err(|_| anyhow!("a generator thread panicked")))
            .collect()
    });
    let window_s = (clock::now() - start).as_secs_f64();
    let cpu_after = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_after = config.server_core.map(procfs::core_ticks).transpose()?;
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
    }
    for worker in workers {
        for pair in worker.pairs {
            pair.close();
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
    .outcome(config.rate, config.packet, None, None))
}

/// What a relay generator's run counted, summed over its threads; the WebSocket and the QUIC
/// generators turn it into a [`WsOutcome`] the same way.
pub(crate) struct Tally {
    /// Messages the senders got out.
    pub(crate) sent: u64,
    /// Deliveries within the load window.
    pub(crate) in_window: u64,
    /// Every delivery, with its latency.
    pub(crate) delivery: Delivery,
    /// RECVs from a node that was not the partner.
    pub(crate) foreign: u64,
    /// PEER_GONE answers.
    pub(crate) peer_gone: u64,
    /// Sessions the relay closed.
    pub(crate) closed: u64,
    /// Sends that found the socket full.
    pub(crate) write_stalls: u64,
    /// Time the generator threads waited with nothing to do.
    pub(crate) idle: Duration,
    /// Sum over threads of the time from start to that thread's stop.
    pub(crate) busy_window: Duration,
    /// The generator threads' CPU time, when every thread could read its own.
    pub(crate) generator_cpu: Option<Duration>,
    /// Seconds from start to the last thread's stop (never 0).
    pub(crate) elapsed_s: f64,
    /// Seconds of the load window.
    pub(crate) window_s: f64,
    /// The server's CPU time before and after the load.
    pub(crate) server_cpu: Option<(Duration, Duration)>,
    /// The server core's ticks before and after the load.
    pub(crate) server_core: Option<(procfs::CoreTicks, procfs::CoreTicks)>,
}

impl Tally {
    /// The outcome at offered `rate` with `packet`-byte messages; the drop counts are the
    /// kernel's, where the transport has them (UDP).
    pub(crate) fn outcome(
        self,
        rate: Rate,
        packet: usize,
        generator_drops: Option<u64>,
        relay_drops: Option<u64>,
    ) -> WsOutcome {
        let Self {
            sent,
            in_window,
            delivery,
            foreign,
            peer_gone,
            closed,
            write_stalls,
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
        WsOutcome {
            sent,
            received,
            lost: lost(sent, received),
            loss_ratio: loss_ratio(sent, received),
            reordered: delivery.reordered(),
            foreign: foreign + delivery.foreign(),
            peer_gone,
            closed,
            write_stalls,
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

/// One authenticated connection, non-blocking, and what it has read but not parsed.
#[derive(Debug)]
pub struct Endpoint {
    stream: TcpStream,
    mask: [u8; 4],
    inbox: Vec<u8>,
    filled: usize,
    open: bool,
}

impl Endpoint {
    fn new(connection: ws_client::Connection) -> anyhow::Result<Self> {
        let stream = connection.stream;
        stream.set_nonblocking(true)?;
        let mut inbox = vec![0u8; READ_BUFFER];
        let filled = connection.leftover.len().min(READ_BUFFER);
        inbox[..filled].copy_from_slice(&connection.leftover[..filled]);
        Ok(Self {
            stream,
            mask: connection.mask,
            inbox,
            filled,
            open: true,
        })
    }

    /// Sends a Close (1000) if `frame_boundary` (nothing half written), and shuts the
    /// socket down; best effort.
    fn close(&mut self, frame_boundary: bool) {
        if frame_boundary && self.open {
            let mut frame = Vec::with_capacity(8);
            encode_client_frame(OP_CLOSE, &1000u16.to_be_bytes(), self.mask, &mut frame);
            let _ = self.stream.write(&frame);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A sender, its partner, and the sender's batch buffer.
#[derive(Debug)]
pub struct Pair {
    flow: u32,
    sender: Endpoint,
    receiver: Endpoint,
    /// The sender's node id (the source RECVs must carry).
    expect_src: [u8; NODE_ID_LEN],
    template: SendTemplate,
    frame_len: usize,
    /// `batch` copies of the template; the first `batch_frames` are the current batch.
    out: Vec<u8>,
    share: Rate,
    /// Messages stamped so far (what pacing counts).
    built: u64,
    batch_frames: usize,
    /// Bytes of the current batch written.
    written: usize,
    /// Messages of the current batch already counted as sent.
    counted: usize,
    /// Messages written in full.
    sent: u64,
    /// When the current batch was built, from the start of the load.
    last_batch: Duration,
}

impl Pair {
    fn close(mut self) {
        // A Close frame behind half a batch would be torn garbage to the relay: then the
        // sender's socket is only shut down.
        let whole = self.written == self.batch_frames * self.frame_len;
        self.sender.close(whole);
        self.receiver.close(true);
    }

    /// Writes what is pending, or builds and writes a new batch if one is due. Returns
    /// whether bytes moved, and whether a write would have blocked.
    fn send(&mut self, elapsed: Duration, sent_ns: u64, batch: usize) -> (bool, bool) {
        if self.written == self.batch_frames * self.frame_len {
            let due = self.share.due(elapsed, self.built, batch);
            if due == 0 || !self.sender.open {
                return (false, false);
            }
            // At a fixed rate, a sender writes at most once per tick unless a whole batch is
            // due: what is due meanwhile goes out together, in one system call.
            if due < batch && elapsed.saturating_sub(self.last_batch) < PACING_TICK {
                return (false, false);
            }
            self.last_batch = elapsed;
            for i in 0..due {
                let stamp = Stamp {
                    flow: self.flow,
                    seq: self.built + i as u64,
                    sent_ns,
                };
                let frame = &mut self.out[i * self.frame_len..(i + 1) * self.frame_len];
                self.template.stamp(frame, &stamp);
            }
            self.built += due as u64;
            self.batch_frames = due;
            self.written = 0;
            self.counted = 0;
        }
        let end = self.batch_frames * self.frame_len;
        match self.sender.stream.write(&self.out[self.written..end]) {
            Ok(0) => {
                self.sender.open = false;
                (false, false)
            }
            Ok(n) => {
                self.written += n;
                let done = self.written / self.frame_len;
                self.sent += (done - self.counted) as u64;
                self.counted = done;
                (true, self.written < end)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => (false, false),
            Err(_) => {
                self.sender.open = false;
                (false, false)
            }
        }
    }
}

/// What one endpoint's read turned up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Read {
    bytes: usize,
    peer_gone: u64,
    foreign: u64,
    closed: bool,
}

/// What a generator thread counts besides deliveries (the QUIC generator's too).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// PEER_GONE answers.
    pub(crate) peer_gone: u64,
    /// RECVs from a node that was not the partner.
    pub(crate) foreign: u64,
    /// Sessions the relay closed.
    pub(crate) closed: u64,
    /// Sends that found the socket (or the connection's queue) full.
    pub(crate) write_stalls: u64,
}

impl Counts {
    /// Adds what one read (or poll) of a receiver found.
    pub(crate) fn note(&mut self, peer_gone: u64, foreign: u64, closed: bool) {
        self.peer_gone += peer_gone;
        self.foreign += foreign;
        self.closed += u64::from(closed);
    }
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
    fn new(pairs: Vec<Pair>, config: &WsLoadConfig, epoch: Epoch) -> Self {
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
    fn load(&mut self, end: Instant, live: &Live) {
        let start = self.epoch.at(0);
        let cpu_start = procfs::thread_cpu_time().ok();
        let mut last_sender_read = start;
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
            let mut moved = false;
            for pair in &mut self.pairs {
                let (progress, stalled) = pair.send(elapsed, sent_ns, self.batch);
                moved |= progress;
                self.counts.write_stalls += u64::from(stalled);
            }
            moved |= self.read_receivers();
            if now.saturating_duration_since(last_sender_read) >= SENDER_READ_EVERY {
                last_sender_read = now;
                moved |= self.read_senders();
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
    }

    /// Reads the receivers until every message sent arrived, or nothing arrived for `quiet`,
    /// or [`MAX_DRAIN`] beyond `quiet` passed. A relay that still delivers what the socket
    /// buffers held when sending stopped (megabytes at max rate) is waited for, so what is
    /// then missing was dropped, not late.
    fn drain(&mut self, quiet: Duration) {
        let start = clock::now();
        let mut last_arrival = start;
        loop {
            let now = clock::now();
            if self.delivery.received() >= self.sent()
                || now.saturating_duration_since(last_arrival) >= quiet
                || now.saturating_duration_since(start) >= quiet + MAX_DRAIN
            {
                return;
            }
            if self.read_receivers() {
                last_arrival = now;
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// One read on every receiver; whether any bytes arrived.
    fn read_receivers(&mut self) -> bool {
        let mut moved = false;
        for pair in &mut self.pairs {
            let read = read_endpoint(
                &mut pair.receiver,
                Some((pair.flow, &pair.expect_src)),
                true,
                &mut self.delivery,
                self.epoch,
            );
            moved |= read.bytes > 0;
            self.counts.note(read.peer_gone, read.foreign, read.closed);
        }
        moved
    }

    /// One read on every sender (notices, pings, closes); whether any bytes arrived.
    fn read_senders(&mut self) -> bool {
        let mut moved = false;
        for pair in &mut self.pairs {
            let idle = pair.written == pair.batch_frames * pair.frame_len;
            let read = read_endpoint(&mut pair.sender, None, idle, &mut self.delivery, self.epoch);
            moved |= read.bytes > 0;
            self.counts.note(read.peer_gone, read.foreign, read.closed);
        }
        moved
    }
}

/// One non-blocking read on `endpoint`, then every whole frame parsed. RECVs are accounted
/// when `expect` names the flow and source this endpoint receives from. A ping is answered
/// only when `may_write` (no batch is half written on this socket); otherwise the relay's
/// next ping gets the answer.
fn read_endpoint(
    endpoint: &mut Endpoint,
    expect: Option<(u32, &[u8; NODE_ID_LEN])>,
    may_write: bool,
    delivery: &mut Delivery,
    epoch: Epoch,
) -> Read {
    let mut read = Read::default();
    if !endpoint.open {
        return read;
    }
    match endpoint.stream.read(&mut endpoint.inbox[endpoint.filled..]) {
        Ok(0) => {
            endpoint.open = false;
            read.closed = true;
            return read;
        }
        Ok(n) => {
            endpoint.filled += n;
            read.bytes = n;
        }
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            return read;
        }
        Err(_) => {
            endpoint.open = false;
            read.closed = true;
            return read;
        }
    }
    let received_ns = epoch.nanos(clock::now());
    let mut at = 0;
    let mut pong = None;
    loop {
        let frame = match parse_server_frame(&endpoint.inbox[at..endpoint.filled]) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                endpoint.open = false;
                read.closed = true;
                return read;
            }
        };
        let (frame, len) = frame;
        match frame.opcode {
            OP_BINARY => match (parse_recv(frame.payload), expect) {
                (Some((src, packet)), Some((flow, want))) if src == want => {
                    match Stamp::decode(packet) {
                        Some(stamp) if stamp.flow == flow => {
                            delivery.handle(stamp.flow, stamp.seq, stamp.sent_ns, received_ns);
                        }
                        Some(_) | None => read.foreign += 1,
                    }
                }
                _ => match relay::Message::parse(frame.payload) {
                    Ok(relay::Message::PeerGone(_)) => read.peer_gone += 1,
                    Ok(
                        relay::Message::PeerPresent(_)
                        | relay::Message::ReconnectHint
                        | relay::Message::Ready(_),
                    ) => {}
                    Ok(_) | Err(_) => read.foreign += 1,
                },
            },
            OP_PING => pong = Some(frame.payload.to_vec()),
            OP_CLOSE => {
                endpoint.open = false;
                read.closed = true;
                return read;
            }
            _ => read.foreign += 1,
        }
        at += len;
    }
    endpoint.inbox.copy_within(at..endpoint.filled, 0);
    endpoint.filled -= at;
    if let Some(payload) = pong
        && may_write
    {
        let mut frame = Vec::with_capacity(payload.len() + 6);
        encode_client_frame(OP_PONG, &payload, endpoint.mask, &mut frame);
        // A pong is at most 131 bytes; if even that does not fit, the stream cannot go on
        // without a torn frame.
        if !matches!(endpoint.stream.write(&frame), Ok(n) if n == frame.len()) {
            endpoint.open = false;
            read.closed = true;
        }
    }
    read
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
}
