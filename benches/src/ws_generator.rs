//! The WebSocket load generator: N pairs of nodes on a relay, each sender sending SEND
//! messages to its partner, each receiver timing the RECVs that arrive. The run, its threads,
//! pacing, drain and outcome are [`relay_load`]'s; this module is the
//! WebSocket [`Transport`].
//!
//! # Setup
//!
//! For each pair, two connections ([`ws_client::connect`], the node agent's relay session):
//! TCP with `TCP_NODELAY`, the upgrade on the relay's path with `Authorization: Bearer
//! <token>` (or an AUTH message), and the wait for READY. Each connection's session core
//! goes on reading its frames (RECVs, notices, pings, a Close) in the loop below. Nodes and tokens come from the caller ([`crate::nodes`]): registered
//! through bosonserver's REST API, or minted for the baseline.
//!
//! # One turn of a thread
//!
//! * each sender with nothing pending gets what its share of the rate allows now (`max`: a
//!   full batch; at a fixed rate at most once per [`PACING_TICK`] unless a batch is due),
//!   stamps that many copies of its pre-masked [`SendTemplate`] (24 bytes each) and writes
//!   them with **one** `write`; a partial write is finished before anything new is built;
//! * each receiver reads once (up to 256 KiB) and hands every whole frame to its session: a
//!   RECV from its partner is accounted ([`Delivery`]: sequence, reordering, one-way latency
//!   from the [`Stamp`], one clock read per `read`); the session answers a Ping;
//! * every millisecond, the senders' sockets are read too (PEER_GONE, pings, a Close).
//!
//! The drain reads the receivers only. *Write stalls* count writes that would block.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;

use crate::accounting::Delivery;
use crate::clock::{self, Epoch};
use crate::generator::Rate;
use crate::nodes::NodeCredential;
use crate::payload::{STAMP_LEN, Stamp};
use crate::relay_load::{
    self, CONNECT_TIMEOUT, Drained, PACING_TICK, PacketLimit, RelayLoad, RelayOutcome, Thread,
    Transport,
};
use crate::ws_client::{self, Auth};
use boson_dataplane_proto::ws::relay::{self, NODE_ID_LEN};
use boson_node::ws::{Event, Input, RelayClient, SendTemplate};
use rand::rngs::StdRng;

/// Largest packet: the relay's 64 KiB message cap minus the 17-byte prefix.
pub const MAX_PACKET: usize = 64 * 1024 - relay::PREFIX_LEN;

/// The packets a WebSocket relay carries.
pub const LIMIT: PacketLimit = PacketLimit {
    max: MAX_PACKET,
    why: "",
};

/// Bytes a receiver reads at most per `read`.
const READ_BUFFER: usize = 256 * 1024;

/// How often the senders' own sockets are read.
const SENDER_READ_EVERY: Duration = Duration::from_millis(1);

/// One scenario over WebSocket.
#[derive(Debug, Clone)]
pub struct WsLoadConfig {
    /// What every relay scenario has (the relay's TCP address).
    pub load: RelayLoad,
    /// The upgrade path.
    pub path: String,
    /// How tokens are presented.
    pub auth: Auth,
}

/// Runs one scenario: connects, loads, drains, closes.
pub fn run(config: &WsLoadConfig, progress: &ProgressBar) -> anyhow::Result<RelayOutcome> {
    relay_load::run(config, progress)
}

impl Transport for WsLoadConfig {
    type Pair = Pair;
    /// When the senders' sockets were last read.
    type Io = Instant;
    const DRAIN_NAP: Duration = Duration::from_micros(100);

    fn load(&self) -> &RelayLoad {
        &self.load
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.load.validate(LIMIT)
    }

    fn connect(
        &self,
        index: usize,
        sender: &NodeCredential,
        receiver: &NodeCredential,
    ) -> anyhow::Result<Pair> {
        let open = |node: &NodeCredential, role: &str| {
            ws_client::connect(
                self.load.relay,
                &self.path,
                &node.node,
                &node.token,
                self.auth,
                CONNECT_TIMEOUT,
            )
            .with_context(|| {
                format!(
                    "pair {index} {role} {} on ws://{}{}",
                    node.node, self.load.relay, self.path
                )
            })
        };
        let mut tx = open(sender, "sender")?;
        let rx = open(receiver, "receiver")?;
        let template = tx
            .session
            .dangerous_send_template(&receiver.node, &vec![0; self.load.packet.max(STAMP_LEN)])
            .with_context(|| format!("pair {index}: a {}-byte packet", self.load.packet))?;
        let frame_len = template.len();
        Ok(Pair {
            flow: u32::try_from(index).unwrap_or(u32::MAX),
            sender: Endpoint::new(tx)?,
            receiver: Endpoint::new(rx)?,
            expect_src: *sender.node.as_bytes(),
            out: template.bytes().repeat(self.load.batch),
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
    }

    fn thread_io(&self, start: Instant) -> Instant {
        start
    }

    fn turn(
        &self,
        thread: &mut Thread<Pair>,
        now: Instant,
        elapsed: Duration,
        last_sender_read: &mut Instant,
    ) -> anyhow::Result<bool> {
        let sent_ns = thread.epoch.nanos(now);
        let mut moved = false;
        for pair in &mut thread.pairs {
            let (progress, stalled) = pair.send(elapsed, sent_ns, thread.batch);
            moved |= progress;
            thread.counts.write_stalls += u64::from(stalled);
        }
        moved |= read_receivers(thread);
        if now.saturating_duration_since(*last_sender_read) >= SENDER_READ_EVERY {
            *last_sender_read = now;
            moved |= read_senders(thread);
        }
        Ok(moved)
    }

    fn drain_turn(
        &self,
        thread: &mut Thread<Pair>,
        _now: Instant,
        _io: &mut Instant,
    ) -> anyhow::Result<Drained> {
        let moved = read_receivers(thread);
        Ok(Drained {
            arrived: moved,
            moved,
        })
    }

    fn relay_drops(&self) -> Option<u64> {
        None
    }

    fn generator_drops(&self, _threads: &[Thread<Pair>]) -> Option<u64> {
        None
    }

    fn close(&self, pairs: Vec<Pair>) {
        for pair in pairs {
            pair.close();
        }
    }
}

/// One read on every receiver; whether any bytes arrived.
fn read_receivers(thread: &mut Thread<Pair>) -> bool {
    let mut moved = false;
    for pair in &mut thread.pairs {
        let read = read_endpoint(
            &mut pair.receiver,
            Some((pair.flow, &pair.expect_src)),
            true,
            &mut thread.delivery,
            thread.epoch,
        );
        moved |= read.bytes > 0;
        thread
            .counts
            .note(read.peer_gone, read.foreign, read.closed);
    }
    moved
}

/// One read on every sender (notices, pings, closes); whether any bytes arrived.
fn read_senders(thread: &mut Thread<Pair>) -> bool {
    let mut moved = false;
    for pair in &mut thread.pairs {
        let idle = pair.written == pair.batch_frames * pair.frame_len;
        let read = read_endpoint(
            &mut pair.sender,
            None,
            idle,
            &mut thread.delivery,
            thread.epoch,
        );
        moved |= read.bytes > 0;
        thread
            .counts
            .note(read.peer_gone, read.foreign, read.closed);
    }
    moved
}

/// One authenticated connection, non-blocking, and what it has read but not parsed.
#[derive(Debug)]
pub struct Endpoint {
    stream: TcpStream,
    session: RelayClient<StdRng>,
    /// Control frames the session queued (pongs, a Close) not yet written.
    control: Vec<u8>,
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
            session: connection.session,
            control: Vec::new(),
            inbox,
            filled,
            open: true,
        })
    }

    /// Sends a Close (1000) if `frame_boundary` (nothing half written), and shuts the
    /// socket down; best effort.
    fn close(&mut self, frame_boundary: bool) {
        if frame_boundary && self.open {
            self.session.close(clock::now());
            self.session.poll_transmit(&mut self.control);
            let _ = self.stream.write(&self.control);
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
                let mut plain = [0u8; STAMP_LEN];
                stamp.encode(&mut plain);
                let frame = &mut self.out[i * self.frame_len..(i + 1) * self.frame_len];
                self.template.write_packet(frame, 0, &plain);
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

impl relay_load::Pair for Pair {
    fn sent(&self) -> u64 {
        self.sent
    }

    fn set_share(&mut self, share: Rate) {
        self.share = share;
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
    let now = clock::now();
    let received_ns = epoch.nanos(now);
    let mut at = 0;
    loop {
        let input = endpoint
            .session
            .handle_input(now, &mut endpoint.inbox[at..endpoint.filled]);
        match input {
            Input::NeedMore => break,
            Input::Consumed(consumed) => at += consumed,
            Input::Recv {
                src,
                ref packet,
                consumed,
            } => {
                let packet = &endpoint.inbox[at + packet.start..at + packet.end];
                match expect {
                    Some((flow, want)) if src.as_bytes() == want => match Stamp::decode(packet) {
                        Some(stamp) if stamp.flow == flow => {
                            delivery.handle(stamp.flow, stamp.seq, stamp.sent_ns, received_ns);
                        }
                        Some(_) | None => read.foreign += 1,
                    },
                    Some(_) | None => read.foreign += 1,
                }
                at += consumed;
            }
        }
        while let Some(event) = endpoint.session.poll_event() {
            match event {
                Event::PeerGone(_) => read.peer_gone += 1,
                Event::Closed(_) => {
                    endpoint.open = false;
                    read.closed = true;
                    return read;
                }
                Event::Ready(_) | Event::PeerPresent(_) | Event::ReconnectHint | Event::Rtt(_) => {}
            }
        }
    }
    endpoint.inbox.copy_within(at..endpoint.filled, 0);
    endpoint.filled -= at;
    if may_write {
        // A pong is at most 131 bytes; if even that does not fit, the stream cannot go on
        // without a torn frame. While a batch is half written the pong waits in the session.
        endpoint.session.poll_transmit(&mut endpoint.control);
        if !endpoint.control.is_empty() {
            if matches!(endpoint.stream.write(&endpoint.control), Ok(n) if n == endpoint.control.len())
            {
                endpoint.control.clear();
            } else {
                endpoint.open = false;
                read.closed = true;
            }
        }
    }
    read
}
