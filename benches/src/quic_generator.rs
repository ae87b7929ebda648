//! The QUIC load generator: N pairs of nodes on a relay's QUIC listener, each sender sending
//! SEND datagrams to its partner, each receiver timing the RECVs that arrive. The run, its
//! threads, pacing, drain and outcome are [`relay_load`]'s, shared with
//! the WebSocket generator; this module is the QUIC [`Transport`].
//!
//! # Setup
//!
//! For each node one [`QuicNode`]: its own UDP socket, quinn-proto endpoint and connection,
//! AUTH on the control stream, READY awaited, and the check that the packet size fits a
//! DATAGRAM frame ([`quic_client::MAX_PACKET`], 1145 bytes).
//!
//! # One turn of a thread
//!
//! * every node (senders for the ACKs, receivers for the RECVs) receives with one
//!   `recvmmsg` (up to 32 datagrams), lets quinn handle them and its timers, and sends what
//!   quinn produced with one `sendmmsg` per 32 packets. RECVs are accounted ([`Delivery`](crate::accounting::Delivery):
//!   sequence, reordering, one-way latency from the [`Stamp`], one clock read per turn);
//! * then, unless a receiver's batch came back full (its socket may hold more: the
//!   generator serves its receivers first rather than overflow its own sockets), each
//!   sender queues what its share of the rate allows now (`max`: a batch of `batch`; at a
//!   fixed rate at most once per [`PACING_TICK`] unless a whole batch is due) as stamped
//!   SEND datagrams, one allocation per batch, and sends them at once. quinn refuses a
//!   datagram when its send buffer (64 KiB) is full, which happens when the congestion
//!   window is: the datagram is kept and offered again on the next turn (a *write stall*),
//!   so at max rate the sender offers what QUIC's congestion control lets through, as TCP's
//!   flow control does for the WebSocket generator.
//!
//! The drain keeps polling every node (quinn still holds queued datagrams and the relay
//! still delivers). Unlike TCP, QUIC datagrams are unreliable: *lost* counts datagrams the
//! relay dropped and UDP datagrams dropped on the way: the kernel's drops at the generator's
//! own sockets are reported as `generator_drops` (the generator's fault), those at the
//! relay's socket as `relay_drops` (the relay did not read in time).
//!
//! On loopback a `sendmmsg` also runs the receiving socket's side of the kernel, so the
//! generator pays for delivering into the relay's socket and the relay for delivering into
//! the generator's: per message, a QUIC generator costs about what a QUIC relay does.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use indicatif::ProgressBar;

use crate::generator::Rate;
use crate::nodes::NodeCredential;
use crate::payload::{STAMP_LEN, Stamp};
use crate::procfs;
use crate::quic_client::{self, ClientSetup, MAX_PACKET, NodeIo, QuicNode, SendError};
use crate::relay_load::{
    self, CONNECT_TIMEOUT, Drained, PACING_TICK, PacketLimit, RelayLoad, RelayOutcome, Thread,
    Transport,
};
use boson_dataplane_proto::ws::relay::PREFIX_LEN;
use boson_shared::NodeId;

/// The packets a QUIC relay carries: what fits a DATAGRAM frame.
pub const LIMIT: PacketLimit = PacketLimit {
    max: MAX_PACKET,
    why: " over QUIC: a DATAGRAM frame in a 1200-byte QUIC packet carries 1162 bytes of \
          relay message at most",
};

/// One scenario over QUIC.
#[derive(Debug, Clone)]
pub struct QuicLoadConfig {
    /// What every relay scenario has (the relay's UDP address).
    pub load: RelayLoad,
    /// TLS and transport of every client.
    pub setup: ClientSetup,
}

/// Runs one scenario: connects, loads, drains, closes.
pub fn run(config: &QuicLoadConfig, progress: &ProgressBar) -> anyhow::Result<RelayOutcome> {
    relay_load::run(config, progress)
}

impl Transport for QuicLoadConfig {
    type Pair = Pair;
    /// The batched system calls' scratch space.
    type Io = NodeIo;
    const DRAIN_NAP: Duration = Duration::from_micros(50);

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
            QuicNode::connect(
                &self.setup,
                self.load.relay,
                node.node,
                &node.token,
                self.load.packet,
                CONNECT_TIMEOUT,
            )
            .with_context(|| {
                format!(
                    "pair {index} {role} {} on quic://{}",
                    node.node, self.load.relay
                )
            })
        };
        let tx = open(sender, "sender")?;
        let rx = open(receiver, "receiver")?;
        Ok(Pair {
            flow: u32::try_from(index).unwrap_or(u32::MAX),
            template: quic_client::send_template(&receiver.node, self.load.packet),
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
    }

    fn thread_io(&self, _start: Instant) -> NodeIo {
        NodeIo::new()
    }

    fn turn(
        &self,
        thread: &mut Thread<Pair>,
        now: Instant,
        elapsed: Duration,
        io: &mut NodeIo,
    ) -> anyhow::Result<bool> {
        let sent_ns = thread.epoch.nanos(now);
        let (mut moved, backlog) = poll_nodes(thread, now, io)?;
        // A receiver whose socket still holds datagrams is served first: sending more than
        // the generator can receive would only overflow its own sockets.
        if !backlog {
            for pair in &mut thread.pairs {
                let (queued, stalled) = pair.send(elapsed, sent_ns, thread.batch);
                thread.counts.write_stalls += u64::from(stalled);
                if queued {
                    moved = true;
                    pair.sender.transmit(now, io)?;
                }
            }
        }
        Ok(moved)
    }

    fn drain_turn(
        &self,
        thread: &mut Thread<Pair>,
        now: Instant,
        io: &mut NodeIo,
    ) -> anyhow::Result<Drained> {
        let before = thread.delivery.received();
        let (moved, _) = poll_nodes(thread, now, io)?;
        Ok(Drained {
            arrived: thread.delivery.received() > before,
            moved,
        })
    }

    fn relay_drops(&self) -> Option<u64> {
        procfs::udp_drops(self.load.relay.port()).ok()
    }

    fn generator_drops(&self, threads: &[Thread<Pair>]) -> Option<u64> {
        threads
            .iter()
            .flat_map(|thread| &thread.pairs)
            .flat_map(|pair| [pair.sender.local_port(), pair.receiver.local_port()])
            .map(procfs::udp_drops)
            .sum::<std::io::Result<u64>>()
            .ok()
    }

    fn close(&self, pairs: Vec<Pair>) {
        let mut io = NodeIo::new();
        for mut pair in pairs {
            pair.sender.close(&mut io);
            pair.receiver.close(&mut io);
        }
    }
}

/// One poll of every node: whether any UDP datagram moved, and whether a receiver's socket
/// may hold more.
fn poll_nodes(
    thread: &mut Thread<Pair>,
    now: Instant,
    io: &mut NodeIo,
) -> anyhow::Result<(bool, bool)> {
    let received_ns = thread.epoch.nanos(now);
    let (mut moved, mut backlog) = (false, false);
    for pair in &mut thread.pairs {
        let counts = &mut thread.counts;
        let polled = pair.sender.poll(now, io, &mut |_| counts.foreign += 1)?;
        moved |= polled.moved();
        counts.note(polled.peer_gone, polled.foreign, polled.closed);
        let delivery = &mut thread.delivery;
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

/// A sender, its partner, and what the sender has stamped but quinn did not take yet.
#[derive(Debug)]
pub struct Pair {
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

impl relay_load::Pair for Pair {
    fn sent(&self) -> u64 {
        self.sent
    }

    fn set_share(&mut self, share: Rate) {
        self.share = share;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_names_what_fits_a_datagram() {
        assert_eq!(MAX_PACKET + PREFIX_LEN, 1162);
        assert!(
            LIMIT
                .why
                .contains(&format!("{} bytes", MAX_PACKET + PREFIX_LEN))
        );
    }
}
