//! The load generator: N flows to a relay, one shared peer sink, one thread.
//!
//! # Setup
//!
//! * One **sink**: a UDP socket on 127.0.0.1 that every flow's peer address points at; or,
//!   with `sink_per_flow`, one sink per flow (coturn's `--multiplex-peer` allows one
//!   allocation per peer address).
//! * Per flow, one **client socket** on 127.0.0.1 (a TURN allocation is keyed by the client's
//!   5-tuple, so N allocations need N sockets). Against a TURN server the flow allocates with a
//!   REST credential minted from the shared secret (user `<prefix>-<flow>`), answers the 401
//!   challenge, creates a permission for the sink and binds channel 0x4000 to it. Against the
//!   [raw forwarder](crate::forwarder) it sends one setup datagram naming the sink's port.
//!
//! # Load
//!
//! One thread (pinned with `core_affinity` when asked) alternates: send what the rate allows
//! (at most one batch, one `sendmmsg` on the next flow's socket, round robin), then drain the
//! sink without blocking (one `recvmmsg`). A fixed rate is paced against the clock (the number
//! due is `rate × elapsed − sent`, so a late turn catches up by up to a batch); `max` sends a
//! full batch every turn. Every datagram is a ChannelData frame (channel 0x4000, 4-byte header)
//! around a payload of the requested size that starts with a [`Stamp`]. Sending stops after the
//! duration; the sink then drains until everything arrived or the drain time passed. Finally
//! each allocation is deleted (Refresh with LIFETIME 0).
//!
//! With `gso`, each turn's datagrams for a flow leave as one UDP GSO `sendmsg` (at most 64
//! segments and 65,000 bytes, as a WireGuard peer batches them), and the sinks turn on
//! `UDP_GRO` and split what arrives coalesced: the generator then offers far more than one
//! datagram per system call allows.
//!
//! Busy polling keeps latency honest (no sleep between a packet's arrival and its timestamp)
//! at the price of one fully used core: the generator's.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use boson_dataplane_proto::turn::ChannelNumber;
use boson_dataplane_proto::turn::channel_data;
use boson_shared::{TurnCredential, TurnSecret};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::accounting::{Delivery, LatencySummary, loss_ratio, lost};
use crate::clock::{self, Epoch};
use crate::forwarder;
use crate::mmsg::{self, RecvBatch, SendBatch, Wait};
use crate::payload::{STAMP_LEN, Stamp};
use crate::procfs;
use crate::turn_client::TurnSession;

/// Largest payload: the ChannelData frame must fit a 1500-byte MTU's UDP payload with room.
pub const MAX_PAYLOAD: usize = 1400;

/// Credential lifetime asked of the REST mint: long enough for any run.
pub(crate) const CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// Requested sink receive queue; the kernel caps it at `net.core.rmem_max` unless root.
const SINK_RCVBUF: usize = 16 << 20;

/// At most this many datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;

/// At most this many bytes in one GSO send.
const GSO_MAX_BYTES: usize = 65_000;

/// An offered load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    /// As fast as the generator can send.
    Max,
    /// This many packets per second, all flows together.
    Pps(u64),
}

impl Rate {
    /// The packets per second, `None` for [`Rate::Max`].
    pub const fn pps(self) -> Option<u64> {
        match self {
            Self::Max => None,
            Self::Pps(pps) => Some(pps),
        }
    }

    /// Packets due after `elapsed` when `sent` went out already, capped at `batch`.
    pub fn due(self, elapsed: Duration, sent: u64, batch: usize) -> usize {
        match self {
            Self::Max => batch,
            Self::Pps(pps) => {
                let target = u128::from(pps) * elapsed.as_nanos() / 1_000_000_000;
                let due = target.saturating_sub(u128::from(sent));
                usize::try_from(due).unwrap_or(usize::MAX).min(batch)
            }
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `max`, a number of packets per second, or one with a `k` suffix (`20k`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        let (digits, scale) = match s.strip_suffix(['k', 'K']) {
            Some(digits) => (digits, 1_000),
            None => (s, 1),
        };
        let pps = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!("{s:?} is not `max` or a positive packet rate like 20000 or 20k")
            })?;
        Ok(Self::Pps(pps))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Max => f.write_str("max"),
            Self::Pps(pps) if pps % 1_000 == 0 => write!(f, "{}k", pps / 1_000),
            Self::Pps(pps) => write!(f, "{pps}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What the generator talks to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A TURN server, with the REST secret (coturn's `static-auth-secret`).
    Turn {
        /// The server's UDP address.
        server: SocketAddr,
        /// The shared secret credentials are minted from.
        secret: String,
    },
    /// The raw forwarder.
    Raw {
        /// Its UDP address.
        forwarder: SocketAddr,
    },
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where the packets go.
    pub target: Target,
    /// Flows (allocations), each with its own client socket.
    pub flows: usize,
    /// Payload bytes per packet (what the sink receives), at least [`STAMP_LEN`].
    pub payload: usize,
    /// Offered load.
    pub rate: Rate,
    /// How long to send.
    pub duration: Duration,
    /// How long the sink keeps draining after sending stops.
    pub drain: Duration,
    /// Packets per `sendmmsg`.
    pub batch: usize,
    /// The core to pin the generator's thread to.
    pub core: Option<usize>,
    /// Prefix of the TURN user names (`<prefix>-<flow>`); unique per scenario so per-user
    /// quotas never bite.
    pub user_prefix: String,
    /// The server's process, whose CPU time (`/proc/PID/stat`) is measured over the load
    /// phase (sending and draining), if known.
    pub server_pid: Option<u32>,
    /// The core the server runs on, whose busy and softirq time (`/proc/stat`) is measured
    /// over the load phase, if known.
    pub server_core: Option<usize>,
    /// Send each turn's datagrams as one UDP GSO message, and receive at the sinks with
    /// GRO.
    pub gso: bool,
    /// One sink per flow instead of one shared by all (TURN only).
    pub sink_per_flow: bool,
}

impl LoadConfig {
    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.flows >= 1, "at least one flow");
        ensure!(self.flows <= 4096, "at most 4096 flows");
        ensure!(
            (STAMP_LEN..=MAX_PAYLOAD).contains(&self.payload),
            "payload size must be {STAMP_LEN}..={MAX_PAYLOAD} bytes"
        );
        ensure!((1..=1024).contains(&self.batch), "batch must be 1..=1024");
        ensure!(
            !self.gso || self.batch <= GSO_MAX_SEGMENTS,
            "with GSO the batch is at most {GSO_MAX_SEGMENTS} datagrams"
        );
        ensure!(
            !self.sink_per_flow || matches!(self.target, Target::Turn { .. }),
            "the raw forwarder has one sink"
        );
        ensure!(
            self.duration > Duration::ZERO && self.duration <= Duration::from_secs(3600),
            "duration must be above 0 and at most 1 h"
        );
        ensure!(self.drain <= Duration::from_secs(60), "drain at most 60 s");
        let addr = match &self.target {
            Target::Turn { server, .. } => server,
            Target::Raw { forwarder } => forwarder,
        };
        ensure!(
            addr.ip().is_loopback(),
            "the generator only talks to loopback, not {addr}"
        );
        Ok(())
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Packets the kernel accepted at the client sockets.
    pub sent: u64,
    /// Packets delivered to the sink.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// Packets that arrived after a higher sequence number of their flow.
    pub reordered: u64,
    /// Datagrams at the sink that were not ours.
    pub foreign: u64,
    /// `sendmmsg` calls that failed (other than a full buffer).
    pub send_errors: u64,
    /// Seconds spent sending.
    pub elapsed_s: f64,
    /// Seconds of the whole load phase (sending and draining): the window of the CPU and
    /// drop measurements.
    pub window_s: f64,
    /// The offered rate, `None` for max.
    pub offered_pps: Option<u64>,
    /// `sent / elapsed_s`.
    pub sent_pps: f64,
    /// `received / elapsed_s`: the throughput.
    pub delivered_pps: f64,
    /// One-way latency, client socket to sink.
    pub latency: LatencySummary,
    /// Datagrams the kernel dropped at the sink's full queue: non-zero means the generator,
    /// not the server, lost them.
    pub sink_drops: u64,
    /// Datagrams the kernel dropped at the server's full listener queue (every socket bound to
    /// the server's port) during the load phase: the server did not keep up.
    pub server_ingress_drops: u64,
    /// CPU seconds (user + system, all threads) the server's process used during the load
    /// phase, when its pid was given.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per delivered packet, in nanoseconds.
    pub cpu_ns_per_packet: Option<f64>,
    /// Share of the server core's time spent busy during the load phase (whatever ran
    /// there: the server, softirq work, or other tenants of a shared machine).
    pub server_core_busy: Option<f64>,
    /// Share of the server core's time spent in softirq (on loopback, mostly delivering the
    /// packets the server sent; with IRQ time accounting it is not in `server_cpu_s`).
    pub server_core_softirq: Option<f64>,
}

/// One flow: a client socket and its sequence counter.
struct Flow {
    session: Option<TurnSession>,
    socket: Option<UdpSocket>,
    next_seq: u64,
}

impl Flow {
    fn socket(&self) -> anyhow::Result<&UdpSocket> {
        match (&self.session, &self.socket) {
            (Some(session), _) => Ok(session.socket()),
            (None, Some(socket)) => Ok(socket),
            (None, None) => bail!("a flow without a socket"),
        }
    }
}

/// Runs one scenario on the calling thread (pinning it if `config.core` says so).
pub fn run(config: &LoadConfig, progress: &ProgressBar) -> anyhow::Result<Outcome> {
    config.validate()?;
    if let Some(core) = config.core
        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
    {
        warn(&format!(
            "cannot pin the generator to core {core}; running unpinned"
        ));
    }
    let sink_count = if config.sink_per_flow {
        config.flows
    } else {
        1
    };
    let sinks = (0..sink_count)
        .map(|_| bind_sink(config.gso))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sink_addrs = sinks
        .iter()
        .map(|sink| v4(sink.local_addr()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut flows = set_up(config, &sink_addrs)?;
    let outcome = load(config, &sinks, &sink_addrs, &mut flows, progress);
    for flow in &mut flows {
        if let Some(session) = flow.session.as_mut()
            && let Err(error) = session.release()
        {
            warn(&format!("releasing an allocation: {error:#}"));
        }
    }
    outcome
}

/// Opens the flows: allocations, permissions and channels, or forwarder setup. Flow `i`
/// sends to sink `i` modulo their number.
fn set_up(config: &LoadConfig, sinks: &[SocketAddrV4]) -> anyhow::Result<Vec<Flow>> {
    let channel = ChannelNumber::MIN;
    let mut flows = Vec::with_capacity(config.flows);
    for index in 0..config.flows {
        let sink = sinks[index % sinks.len()];
        let flow = match &config.target {
            Target::Turn { server, secret } => {
                let expires = clock::unix_now() + CREDENTIAL_TTL.as_secs();
                let user = format!("{}-{index}", config.user_prefix);
                let credential =
                    TurnCredential::mint(&TurnSecret::new(secret.as_bytes()), &user, expires);
                let mut session = TurnSession::connect(*server, credential)?;
                session
                    .allocate()
                    .with_context(|| format!("flow {index}: allocating on {server}"))?;
                session
                    .create_permission(sink.into())
                    .with_context(|| format!("flow {index}: CreatePermission"))?;
                session
                    .channel_bind(channel, sink.into())
                    .with_context(|| format!("flow {index}: ChannelBind"))?;
                Flow {
                    session: Some(session),
                    socket: None,
                    next_seq: 0,
                }
            }
            Target::Raw { forwarder } => Flow {
                session: None,
                socket: Some(raw_setup(*forwarder, sink.port())?),
                next_seq: 0,
            },
        };
        flows.push(flow);
    }
    Ok(flows)
}

/// A client socket connected to the forwarder, which has been told where the sink is.
fn raw_setup(forwarder: SocketAddr, sink_port: u16) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(forwarder)?;
    socket.set_read_timeout(Some(Duration::from_millis(250)))?;
    let setup = forwarder::setup_message(sink_port);
    let mut buf = [0u8; 64];
    for _ in 0..8 {
        socket.send(&setup)?;
        match socket.recv(&mut buf) {
            Ok(len) if &buf[..len] == forwarder::SETUP_OK => return Ok(socket),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    bail!("the raw forwarder at {forwarder} does not answer its setup message")
}

/// A peer sink: a non-blocking UDP socket on 127.0.0.1 with a large receive queue, with
/// `UDP_GRO` if `gro`.
pub(crate) fn bind_sink(gro: bool) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(SINK_RCVBUF);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.set_nonblocking(true)?;
    if gro {
        mmsg::enable_gro(&socket).context("UDP_GRO on a sink (Linux 5.0+)")?;
    }
    Ok(socket.into())
}

/// The send/drain loop and its result.
fn load(
    config: &LoadConfig,
    sinks: &[UdpSocket],
    sink_addrs: &[SocketAddrV4],
    flows: &mut [Flow],
    progress: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let frame_len = channel_data::HEADER_LEN + config.payload;
    // A GSO send holds at most GSO_MAX_BYTES.
    let batch = if config.gso {
        config.batch.min(GSO_MAX_BYTES / frame_len).max(1)
    } else {
        config.batch
    };
    let mut gso_iovs = Vec::with_capacity(batch);
    let header = channel_data::encode_header(
        ChannelNumber::MIN,
        u16::try_from(config.payload).context("payload size")?,
    );
    let mut frames: Vec<Vec<u8>> = (0..config.batch)
        .map(|_| {
            let mut frame = vec![0u8; frame_len];
            frame[..channel_data::HEADER_LEN].copy_from_slice(&header);
            frame
        })
        .collect();
    let mut send = SendBatch::new(config.batch);
    let mut recv = if config.gso {
        RecvBatch::new(16, 65_536)
    } else {
        RecvBatch::new(64, 2048)
    };
    let mut delivery = Delivery::new(flows.len());
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let mut next_flow = 0usize;

    let server_port = match &config.target {
        Target::Turn { server, .. } => server.port(),
        Target::Raw { forwarder } => forwarder.port(),
    };
    let ingress_before = procfs::udp_drops(server_port).unwrap_or(0);
    let cpu_before = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_before = config.server_core.map(procfs::core_ticks).transpose()?;
    let start = clock::now();
    let epoch = Epoch::new(start);
    let end = start + config.duration;
    let mut last_progress = start;
    progress.set_length(u64::try_from(config.duration.as_millis()).unwrap_or(u64::MAX));
    progress.set_position(0);
    loop {
        let now = clock::now();
        if now >= end {
            break;
        }
        let due = config.rate.due(now - start, sent, batch);
        if due > 0 {
            let flow_index = next_flow;
            next_flow = (next_flow + 1) % flows.len();
            let flow = &mut flows[flow_index];
            let sent_ns = epoch.nanos(now);
            for (i, frame) in frames[..due].iter_mut().enumerate() {
                let stamp = Stamp {
                    flow: u32::try_from(flow_index).unwrap_or(u32::MAX),
                    seq: flow.next_seq + i as u64,
                    sent_ns,
                };
                if let Some(slot) = frame[channel_data::HEADER_LEN..].first_chunk_mut::<STAMP_LEN>()
                {
                    stamp.encode(slot);
                }
            }
            let result = if config.gso {
                mmsg::send_gso(
                    flow.socket()?,
                    None,
                    frames[..due].iter().map(Vec::as_slice),
                    frame_len,
                    &mut gso_iovs,
                )
            } else {
                send.send(
                    flow.socket()?,
                    None,
                    frames[..due].iter().map(Vec::as_slice),
                )
            };
            match result {
                Ok(accepted) => {
                    flow.next_seq += accepted as u64;
                    sent += accepted as u64;
                }
                Err(_) => send_errors += 1,
            }
        }
        for sink in sinks {
            drain_once(sink, &mut recv, &mut delivery, epoch)?;
        }
        if now.saturating_duration_since(last_progress) >= Duration::from_millis(100) {
            last_progress = now;
            progress.set_position(u64::try_from((now - start).as_millis()).unwrap_or(0));
            let secs = (now - start).as_secs_f64().max(1e-9);
            progress.set_message(format!(
                "sent {:.0} pps, delivered {:.0} pps",
                sent as f64 / secs,
                delivery.received() as f64 / secs
            ));
        }
    }
    let stopped = clock::now();
    let drain_end = stopped + config.drain;
    // Bounded by `drain_end`.
    while delivery.received() < sent && clock::now() < drain_end {
        let mut got = 0;
        for sink in sinks {
            got += drain_once(sink, &mut recv, &mut delivery, epoch)?;
        }
        if got == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let window_s = (clock::now() - start).as_secs_f64();
    let cpu_after = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_after = config.server_core.map(procfs::core_ticks).transpose()?;
    let core = core_before
        .zip(core_after)
        .map(|(before, after)| before.fractions(&after));
    let server_cpu_s = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64());
    let ingress_after = procfs::udp_drops(server_port).unwrap_or(0);
    let elapsed_s = (stopped - start).as_secs_f64();
    let received = delivery.received();
    Ok(Outcome {
        sent,
        received,
        lost: lost(sent, received),
        loss_ratio: loss_ratio(sent, received),
        reordered: delivery.reordered(),
        foreign: delivery.foreign(),
        send_errors,
        elapsed_s,
        window_s,
        offered_pps: config.rate.pps(),
        sent_pps: sent as f64 / elapsed_s,
        delivered_pps: received as f64 / elapsed_s,
        latency: delivery.latency(),
        sink_drops: sink_addrs
            .iter()
            .map(|sink| procfs::udp_drops(sink.port()).unwrap_or(0))
            .sum(),
        server_ingress_drops: ingress_after.saturating_sub(ingress_before),
        server_cpu_s,
        cpu_ns_per_packet: server_cpu_s
            .filter(|_| received > 0)
            .map(|cpu| cpu * 1e9 / received as f64),
        server_core_busy: core.map(|c| c.0),
        server_core_softirq: core.map(|c| c.1),
    })
}

/// One non-blocking `recvmmsg` on the sink; returns the datagrams received.
pub(crate) fn drain_once(
    sink: &UdpSocket,
    recv: &mut RecvBatch,
    delivery: &mut Delivery,
    epoch: Epoch,
) -> anyhow::Result<usize> {
    let received = recv.recv(sink, Wait::No).context("receiving at the sink")?;
    if received == 0 {
        return Ok(0);
    }
    let received_ns = epoch.nanos(clock::now());
    let mut datagrams = 0;
    for i in 0..received {
        for packet in recv.datagrams(i) {
            datagrams += 1;
            match Stamp::decode(packet) {
                Some(stamp) => delivery.handle(stamp.flow, stamp.seq, stamp.sent_ns, received_ns),
                None => delivery.handle_foreign(),
            }
        }
    }
    Ok(datagrams)
}

pub(crate) fn v4(addr: SocketAddr) -> anyhow::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(addr) => Ok(addr),
        SocketAddr::V6(_) => bail!("{addr} is not IPv4"),
    }
}

/// A warning on stderr (this crate has no log subscriber).
pub(crate) fn warn(message: &str) {
    eprintln!("warning: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("20k".parse::<Rate>(), Ok(Rate::Pps(20_000)));
        assert_eq!("1500".parse::<Rate>(), Ok(Rate::Pps(1_500)));
        for bad in ["0", "-5", "fast", "", "k"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::Pps(100_000).to_string(), "100k");
        assert_eq!(Rate::Pps(1_500).to_string(), "1500");
        assert_eq!(Rate::Max.to_string(), "max");
    }

    #[test]
    fn pacing_tracks_the_clock_and_caps_at_a_batch() {
        let rate = Rate::Pps(20_000);
        assert_eq!(rate.due(Duration::ZERO, 0, 32), 0);
        assert_eq!(rate.due(Duration::from_micros(100), 0, 32), 2);
        assert_eq!(rate.due(Duration::from_micros(100), 2, 32), 0);
        assert_eq!(rate.due(Duration::from_secs(1), 19_990, 32), 10);
        assert_eq!(
            rate.due(Duration::from_secs(1), 0, 32),
            32,
            "catch-up is capped"
        );
        assert_eq!(
            rate.due(Duration::from_secs(1), 30_000, 32),
            0,
            "ahead: nothing due"
        );
        assert_eq!(Rate::Max.due(Duration::ZERO, 1 << 40, 32), 32);
    }

    #[test]
    fn configs_are_checked() {
        let config = LoadConfig {
            target: Target::Raw {
                forwarder: "127.0.0.1:9".parse().unwrap(),
            },
            flows: 1,
            payload: 100,
            rate: Rate::Max,
            duration: Duration::from_secs(1),
            drain: Duration::from_millis(100),
            batch: 32,
            core: None,
            user_prefix: "t".into(),
            server_pid: None,
            server_core: None,
            gso: false,
            sink_per_flow: false,
        };
        config.validate().unwrap();
        let mut bad = config.clone();
        bad.sink_per_flow = true;
        assert!(bad.validate().is_err(), "the raw forwarder has one sink");
        let mut bad = config.clone();
        bad.gso = true;
        bad.batch = 65;
        assert!(bad.validate().is_err(), "at most 64 GSO segments");
        let mut bad = config.clone();
        bad.payload = STAMP_LEN - 1;
        assert!(bad.validate().is_err());
        let mut bad = config.clone();
        bad.target = Target::Raw {
            forwarder: "192.0.2.1:9".parse().unwrap(),
        };
        assert!(bad.validate().is_err(), "loopback only");
        let mut bad = config;
        bad.flows = 0;
        assert!(bad.validate().is_err());
    }
}
