//! The TURN-over-TCP load generator: N flows, each a TCP connection to the server's stream
//! listener with its own allocation, all relaying to one UDP peer sink; one thread.
//!
//! # Setup
//!
//! As the [UDP generator](crate::generator), but each flow is a [`TcpTransport`]: Allocate (UDP relay), answer the
//! 401, CreatePermission and ChannelBind 0x4000 to the sink, all over the connection.
//!
//! # Load
//!
//! One thread (pinned when asked) turns round robin over the flows. A flow whose previous
//! batch is not fully written gets the rest written first; a flow with nothing pending gets
//! the frames the rate allows (at most `batch`, stamped now) as one buffer of back-to-back
//! padded ChannelData frames, written with one non-blocking `write`. So a fixed rate is paced
//! against the clock as over UDP, and `max` keeps every connection's send buffer full: TCP's
//! flow control, not loss, tells the generator how much the server takes. Each turn also
//! drains the sink with one `recvmmsg`. After the duration the pending bytes are written out
//! (so no stream ends inside a frame) and the sink drains until everything arrived or nothing
//! arrived for the drain time.
//!
//! # Measures
//!
//! What [`Outcome`] holds, with these differences from UDP: a frame counts as sent once its
//! last byte is written; delivered packets per second are over the time from the first send
//! to the last arrival (a server behind at max rate works off the backlog TCP held for it
//! after sending stops, and that time counts); `server_ingress_drops` is always 0 (a stream
//! has no drop queue). The client sockets' send buffers are [`SNDBUF`], so at max rate the
//! queue in front of the server, and so the latency there, is bounded by that plus the
//! server's receive buffer: latency at max rate is queueing, not relaying.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use boson_dataplane_proto::turn::ChannelNumber;
use boson_dataplane_proto::turn::channel_data;
use boson_shared::{TurnCredential, TurnSecret};
use indicatif::ProgressBar;

use crate::accounting::{Delivery, loss_ratio, lost};
use crate::clock::{self, Epoch};
use crate::generator::{self, CREDENTIAL_TTL, LoadConfig, Outcome, Target};
use crate::mmsg::RecvBatch;
use crate::payload::{STAMP_LEN, Stamp};
use crate::procfs;
use crate::turn_client::TurnSession;
use crate::turn_tcp_client::{TcpTransport, stream_frame};

/// Send buffer of each client connection: room for a few hundred frames, so a full
/// buffer at max rate holds milliseconds of traffic, not seconds.
pub const SNDBUF: usize = 256 << 10;

/// The longest the sink drains after sending, however long packets keep arriving.
const MAX_DRAIN: Duration = Duration::from_secs(30);

/// The longest writing out the pending bytes may take after sending stops.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One flow: its session and what it has queued.
struct Flow {
    session: TurnSession<TcpTransport>,
    /// Frames queued back to back; `written` bytes of them are out.
    out: Vec<u8>,
    written: usize,
    next_seq: u64,
    /// The connection failed: no more writes.
    dead: bool,
}

/// Runs one scenario over TCP on the calling thread (pinning it if `config.core` says so).
pub fn run(config: &LoadConfig, progress: &ProgressBar) -> anyhow::Result<Outcome> {
    config.validate()?;
    let Target::Turn { server, secret } = &config.target else {
        bail!("TURN over TCP needs a TURN server, not the raw forwarder");
    };
    ensure!(
        !config.gso && !config.sink_per_flow,
        "GSO and a sink per allocation are UDP-only settings, not for TURN over TCP"
    );
    if let Some(core) = config.core
        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
    {
        generator::warn(&format!(
            "cannot pin the generator to core {core}; running unpinned"
        ));
    }
    let sink = generator::bind_sink(false)?;
    let sink_addr = generator::v4(sink.local_addr()?)?;
    let mut flows = Vec::with_capacity(config.flows);
    for index in 0..config.flows {
        let expires = clock::unix_now() + CREDENTIAL_TTL.as_secs();
        let user = format!("{}-{index}", config.user_prefix);
        let credential = TurnCredential::mint(&TurnSecret::new(secret.as_bytes()), &user, expires);
        let transport = TcpTransport::connect(*server)?;
        let _ = socket2::SockRef::from(transport.stream()).set_send_buffer_size(SNDBUF);
        let mut session = TurnSession::over(transport, credential);
        session
            .allocate()
            .with_context(|| format!("flow {index}: allocating on {server} over TCP"))?;
        session
            .create_permission(sink_addr.into())
            .with_context(|| format!("flow {index}: CreatePermission"))?;
        session
            .channel_bind(ChannelNumber::MIN, sink_addr.into())
            .with_context(|| format!("flow {index}: ChannelBind"))?;
        flows.push(Flow {
            session,
            out: Vec::new(),
            written: 0,
            next_seq: 0,
            dead: false,
        });
    }
    let outcome = load(config, &sink, sink_addr.port(), &mut flows, progress);
    for flow in flows.iter_mut().filter(|f| !f.dead) {
        if let Err(error) = flow.session.release() {
            generator::warn(&format!("releasing an allocation over TCP: {error:#}"));
        }
    }
    outcome
}

/// What writing a flow's queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// These many frames were completed (possibly 0: the buffer was full).
    Frames(u64),
    /// The connection failed.
    Failed,
}

impl Flow {
    /// Writes what is queued, without blocking.
    fn flush(&mut self, frame_len: usize) -> Wrote {
        if self.dead || self.written == self.out.len() {
            return Wrote::Frames(0);
        }
        let before = self.written / frame_len;
        let mut stream = self.session.transport_mut().stream();
        match stream.write(&self.out[self.written..]) {
            Ok(n) => self.written += n,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                self.dead = true;
                return Wrote::Failed;
            }
        }
        let done = self.written / frame_len - before;
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        Wrote::Frames(done as u64)
    }

    fn pending(&self) -> bool {
        !self.dead && self.written < self.out.len()
    }
}

/// Adds what a write did to the frames sent or the send errors.
fn count(wrote: Wrote, sent: &mut u64, send_errors: &mut u64) {
    match wrote {
        Wrote::Frames(n) => *sent += n,
        Wrote::Failed => *send_errors += 1,
    }
}

/// The send/drain loop and its result.
fn load(
    config: &LoadConfig,
    sink: &std::net::UdpSocket,
    sink_port: u16,
    flows: &mut [Flow],
    progress: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let template = stream_frame(ChannelNumber::MIN, config.payload)?;
    let frame_len = template.len();
    for flow in flows.iter_mut() {
        flow.session
            .transport_mut()
            .stream()
            .set_nonblocking(true)?;
        flow.out.reserve(frame_len * config.batch);
    }
    let mut recv = RecvBatch::new(64, 2048);
    let mut delivery = Delivery::new(flows.len());
    let (mut sent, mut queued, mut send_errors) = (0u64, 0u64, 0u64);
    let mut next_flow = 0usize;
    let cpu_before = config.server_pid.map(procfs::cpu_time).transpose()?;
    let core_before = config.server_core.map(procfs::core_ticks).transpose()?;
    let start = clock::now();
    let epoch = Epoch::new(start);
    let end = start + config.duration;
    let mut last_arrival = start;
    let mut last_progress = start;
    progress.set_length(u64::try_from(config.duration.as_millis()).unwrap_or(u64::MAX));
    progress.set_position(0);
    loop {
        let now = clock::now();
        if now >= end {
            break;
        }
        let index = next_flow;
        next_flow = (next_flow + 1) % flows.len();
        let flow = &mut flows[index];
        if !flow.pending() && !flow.dead {
            let due = config.rate.due(now - start, queued, config.batch);
            let sent_ns = epoch.nanos(now);
            for _ in 0..due {
                let at = flow.out.len();
                flow.out.extend_from_slice(&template);
                let stamp = Stamp {
                    flow: u32::try_from(index).unwrap_or(u32::MAX),
                    seq: flow.next_seq,
                    sent_ns,
                };
                let payload = at + channel_data::HEADER_LEN;
                if let Some(slot) = flow.out[payload..].first_chunk_mut::<STAMP_LEN>() {
                    stamp.encode(slot);
                }
                flow.next_seq += 1;
            }
            queued += due as u64;
        }
        count(flow.flush(frame_len), &mut sent, &mut send_errors);
        if generator::drain_once(sink, &mut recv, &mut delivery, epoch)? > 0 {
            last_arrival = clock::now();
        }
        if now.saturating_duration_since(last_progress) >= Duration::from_millis(100) {
            last_progress = now;
            progress.set_position(u64::try_from((now - start).as_millis()).unwrap_or(0));
            let secs = (now - start).as_secs_f64().max(1e-9);
            progress.set_message(format!(
                "sent {:.0} pps, delivered {:.0} pps (TCP)",
                sent as f64 / secs,
                delivery.received() as f64 / secs
            ));
        }
    }
    let stopped = clock::now();
    // Finish every started frame: a stream left inside a frame would swallow the Refresh.
    let flush_end = stopped + FLUSH_TIMEOUT;
    while flows.iter().any(Flow::pending) && clock::now() < flush_end {
        for flow in flows.iter_mut() {
            count(flow.flush(frame_len), &mut sent, &mut send_errors);
        }
        if generator::drain_once(sink, &mut recv, &mut delivery, epoch)? > 0 {
            last_arrival = clock::now();
        }
    }
    ensure!(
        !flows.iter().any(Flow::pending),
        "the server took no bytes for {FLUSH_TIMEOUT:?} after sending stopped"
    );
    let flushed = clock::now();
    // Until everything arrived, or nothing did for the drain time; bounded by MAX_DRAIN.
    let drain_cap = flushed + MAX_DRAIN;
    loop {
        let now = clock::now();
        if delivery.received() >= sent
            || now >= drain_cap
            || now.saturating_duration_since(last_arrival.max(flushed)) >= config.drain
        {
            break;
        }
        if generator::drain_once(sink, &mut recv, &mut delivery, epoch)? > 0 {
            last_arrival = clock::now();
        } else {
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
    let elapsed_s = (stopped - start).as_secs_f64();
    let delivering_s = elapsed_s.max((last_arrival - start).as_secs_f64());
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
        delivered_pps: received as f64 / delivering_s,
        latency: delivery.latency(),
        sink_drops: procfs::udp_drops(sink_port).unwrap_or(0),
        server_ingress_drops: 0,
        server_cpu_s,
        cpu_ns_per_packet: server_cpu_s
            .filter(|_| received > 0)
            .map(|cpu| cpu * 1e9 / received as f64),
        server_core_busy: core.map(|c| c.0),
        server_core_softirq: core.map(|c| c.1),
    })
}
