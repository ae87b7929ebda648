//! The raw forwarder: the ceiling a TURN relay is measured against.
//!
//! # What it does, exactly
//!
//! One thread, one UDP socket on a 127.0.0.1 address, and this loop:
//!
//! 1. `recvmmsg` up to [`BATCH`] datagrams (waiting at most 100 ms for the first, so it can
//!    check its lifetime);
//! 2. for each datagram:
//!    * [`SETUP`] followed by a 2-byte big-endian port: the sink becomes `127.0.0.1:port`
//!      (port 0 leaves it as it was: a readiness probe), and it answers [`SETUP_OK`] to the
//!      sender;
//!    * a ChannelData frame (first two bits `01`, a 4-byte header whose length fits the
//!      datagram): its payload, `datagram[4..4 + length]`, is queued for the sink, pointing into
//!      the receive buffer (no copy);
//!    * anything else is dropped and counted;
//! 3. one `sendmmsg` of the queued payloads to the sink, from the same socket.
//!
//! It runs until its lifetime passes (or it is killed), then prints its counters.
//!
//! # With GRO and GSO ([`Batching::GroGso`], `--gso`): the ceiling for batching peers
//!
//! The same, with the kernel's UDP offloads on both sides: the socket turns on `UDP_GRO`, so
//! one receive of [`GRO_BATCH`] holds a run of one sender's equal-size datagrams (up to
//! 64 KiB, split by the segment size in the control data); the payloads of a run of equal
//! size (the last may be shorter) leave in one `sendmsg` with `UDP_SEGMENT`, gathered with
//! one iovec each from the receive buffer (no copy; at most [`GSO_SEGMENTS`] and
//! [`GSO_BYTES`]). With peers that send GSO batches this is what the kernel's loopback UDP
//! path allows one core when neither side pays a system call per datagram.
//!
//! # What it does not do (and a TURN relay does)
//!
//! No STUN, no authentication, no allocation, permission or channel lookup (the channel number
//! is ignored), no per-allocation relay socket (everything leaves from the one socket), no
//! timers, no statistics beyond three counters. So "relay pps / forwarder pps" measures what the
//! whole TURN state machine and the relay's I/O design cost on top of the same kernel UDP path,
//! with the same generator, packet sizes and batching.

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::clock;
use crate::mmsg::{self, RecvBatch, SendBatch, Wait};

/// Start of a setup datagram; a 2-byte port follows.
pub const SETUP: &[u8] = b"BOSON-BENCH-SINK";

/// The forwarder's answer to a setup datagram.
pub const SETUP_OK: &[u8] = b"BOSON-BENCH-OK";

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 64;

/// Longest datagram handled; longer ones are truncated (and then dropped as malformed).
const SLOT: usize = 2048;

/// Receives per `recvmmsg` with GRO (each up to a 64 KiB run of datagrams).
pub const GRO_BATCH: usize = 8;

/// A GRO receive's buffer: the largest UDP payload.
const GRO_SLOT: usize = 65_536;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
pub const GSO_SEGMENTS: usize = 64;

/// Most bytes in one GSO send (below the 65,507 of an IPv4 UDP payload).
pub const GSO_BYTES: usize = 65_000;

/// How the forwarder meets the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Batching {
    /// `recvmmsg` and `sendmmsg`, a datagram per message.
    #[default]
    Mmsg,
    /// `UDP_GRO` receives and `UDP_SEGMENT` sends, a run of datagrams per message.
    GroGso,
}

/// How long a blocking receive waits before the loop checks its lifetime again.
const POLL: Duration = Duration::from_millis(100);

/// Counters of one forwarder run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Payloads handed to the kernel for the sink.
    pub forwarded: u64,
    /// Datagrams that were neither setup nor well-formed ChannelData, or arrived before a sink
    /// was set up, or that the kernel refused to send.
    pub dropped: u64,
    /// Setup datagrams answered.
    pub setups: u64,
    /// Messages that carried forwarded payloads to the kernel: a datagram each with
    /// `sendmmsg`, a run of them in one GSO send.
    pub sends: u64,
}

/// What a datagram asks the forwarder to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Set the sink port (0: only answer).
    Setup(u16),
    /// Forward `datagram[range]`.
    Forward(std::ops::Range<usize>),
    /// Drop it.
    Drop,
}

/// Classifies one datagram (see the module doc).
pub fn classify(datagram: &[u8]) -> Frame {
    if let Some(rest) = datagram.strip_prefix(SETUP) {
        return match rest {
            &[high, low] => Frame::Setup(u16::from_be_bytes([high, low])),
            _ => Frame::Drop,
        };
    }
    let Some(&[first, _, high, low]) = datagram.first_chunk::<4>() else {
        return Frame::Drop;
    };
    if first >> 6 != 0b01 {
        return Frame::Drop;
    }
    let end = 4 + usize::from(u16::from_be_bytes([high, low]));
    if end > datagram.len() {
        return Frame::Drop;
    }
    Frame::Forward(4..end)
}

/// A setup datagram naming sink port `port` (0 for a readiness probe).
pub fn setup_message(port: u16) -> Vec<u8> {
    let mut message = SETUP.to_vec();
    message.extend_from_slice(&port.to_be_bytes());
    message
}

/// Binds `listen` (which must be on 127.0.0.1).
pub fn bind(listen: SocketAddrV4) -> anyhow::Result<UdpSocket> {
    ensure!(
        listen.ip().is_loopback(),
        "the raw forwarder listens on loopback only, not {listen}"
    );
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    socket.set_read_timeout(Some(POLL))?;
    let socket = socket2::Socket::from(socket);
    // Best effort: a larger queue absorbs bursts, as the relays' own sockets do.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    Ok(socket.into())
}

/// Forwards on `socket` until `lifetime` has passed.
pub fn run(
    socket: &UdpSocket,
    lifetime: Duration,
    batching: Batching,
) -> anyhow::Result<ForwarderStats> {
    match batching {
        Batching::Mmsg => run_mmsg(socket, lifetime),
        Batching::GroGso => run_gro_gso(socket, lifetime),
    }
}

/// Forwards on `socket` until `deadline` (for in-process tests and the smoke run).
pub fn run_until(
    socket: &UdpSocket,
    deadline: Instant,
    batching: Batching,
) -> anyhow::Result<ForwarderStats> {
    run(
        socket,
        deadline.saturating_duration_since(clock::now()),
        batching,
    )
}

fn run_mmsg(socket: &UdpSocket, lifetime: Duration) -> anyhow::Result<ForwarderStats> {
    let deadline = clock::now() + lifetime;
    let mut stats = ForwarderStats::default();
    let mut recv = RecvBatch::new(BATCH, SLOT);
    let mut send = SendBatch::new(BATCH);
    let mut sink: Option<SocketAddrV4> = None;
    let mut queued: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(BATCH);
    // Bounded by `deadline`: each turn blocks at most `POLL`.
    while clock::now() < deadline {
        turn(
            socket,
            &mut recv,
            &mut send,
            &mut sink,
            &mut queued,
            &mut stats,
        )?;
    }
    Ok(stats)
}

fn run_gro_gso(socket: &UdpSocket, lifetime: Duration) -> anyhow::Result<ForwarderStats> {
    mmsg::enable_gro(socket).context("UDP_GRO")?;
    let deadline = clock::now() + lifetime;
    let mut stats = ForwarderStats::default();
    let mut recv = RecvBatch::new(GRO_BATCH, GRO_SLOT);
    let mut sink: Option<SocketAddrV4> = None;
    let mut queued: Vec<(usize, std::ops::Range<usize>)> =
        Vec::with_capacity(GRO_BATCH * GSO_SEGMENTS);
    let mut iovs = Vec::with_capacity(GSO_SEGMENTS);
    // Bounded by `deadline`: each turn blocks at most `POLL`.
    while clock::now() < deadline {
        turn_gro_gso(
            socket,
            &mut recv,
            &mut sink,
            &mut queued,
            &mut iovs,
            &mut stats,
        )?;
    }
    Ok(stats)
}

/// Answers a setup datagram from `from`, and sets the sink unless it is a probe.
fn setup(
    socket: &UdpSocket,
    port: u16,
    from: Option<SocketAddrV4>,
    sink: &mut Option<SocketAddrV4>,
    stats: &mut ForwarderStats,
) {
    if port != 0 {
        *sink = Some(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port));
    }
    if let Some(from) = from {
        let _ = socket.send_to(SETUP_OK, from);
    }
    stats.setups += 1;
}

/// How many of `lens` (from the first) one GSO send carries: equal lengths, of which only
/// the last may be shorter, at most [`GSO_SEGMENTS`] and [`GSO_BYTES`]; at least one.
pub fn gso_run(lens: impl IntoIterator<Item = usize>) -> usize {
    let mut lens = lens.into_iter();
    let Some(segment) = lens.next() else {
        return 0;
    };
    let (mut count, mut bytes) = (1, segment);
    if segment == 0 {
        return count;
    }
    for len in lens {
        if count == GSO_SEGMENTS || len > segment || len == 0 || bytes + len > GSO_BYTES {
            break;
        }
        count += 1;
        bytes += len;
        if len < segment {
            break;
        }
    }
    count
}

/// One GRO receive batch and its forwarding in GSO sends.
fn turn_gro_gso(
    socket: &UdpSocket,
    recv: &mut RecvBatch,
    sink: &mut Option<SocketAddrV4>,
    queued: &mut Vec<(usize, std::ops::Range<usize>)>,
    iovs: &mut Vec<libc::iovec>,
    stats: &mut ForwarderStats,
) -> anyhow::Result<()> {
    let received = recv.recv(socket, Wait::ForOne).context("recvmmsg")?;
    queued.clear();
    for i in 0..received {
        let mut offset = 0;
        for datagram in recv.datagrams(i) {
            let start = offset;
            offset += datagram.len();
            match classify(datagram) {
                Frame::Setup(port) => setup(socket, port, recv.source(i), sink, stats),
                Frame::Forward(range) if sink.is_some() => {
                    queued.push((i, start + range.start..start + range.end));
                }
                Frame::Forward(_) | Frame::Drop => stats.dropped += 1,
            }
        }
    }
    let Some(sink) = *sink else {
        return Ok(());
    };
    let mut from = 0;
    while from < queued.len() {
        let count = gso_run(queued[from..].iter().map(|(_, range)| range.len()));
        let run = &queued[from..from + count];
        let packets = run.iter().map(|(i, range)| &recv.packet(*i)[range.clone()]);
        let sent = if count == 1 {
            // One datagram (or an empty one, which UDP_SEGMENT cannot carry).
            let (i, range) = &run[0];
            usize::from(
                socket
                    .send_to(&recv.packet(*i)[range.clone()], sink)
                    .is_ok(),
            )
        } else {
            mmsg::send_gso(socket, Some(sink), packets, run[0].1.len(), iovs)
                .context("sendmsg (UDP_SEGMENT)")?
        };
        stats.forwarded += sent as u64;
        stats.sends += u64::from(sent > 0);
        // All or nothing: a GSO send goes whole or not at all.
        stats.dropped += (count - sent) as u64;
        from += count;
    }
    Ok(())
}

/// One receive batch and its forwarding.
fn turn(
    socket: &UdpSocket,
    recv: &mut RecvBatch,
    send: &mut SendBatch,
    sink: &mut Option<SocketAddrV4>,
    queued: &mut Vec<(usize, std::ops::Range<usize>)>,
    stats: &mut ForwarderStats,
) -> anyhow::Result<()> {
    let received = recv.recv(socket, Wait::ForOne).context("recvmmsg")?;
    queued.clear();
    for i in 0..received {
        match classify(recv.packet(i)) {
            Frame::Setup(port) => setup(socket, port, recv.source(i), sink, stats),
            Frame::Forward(range) if sink.is_some() => queued.push((i, range)),
            Frame::Forward(_) | Frame::Drop => stats.dropped += 1,
        }
    }
    let Some(sink) = *sink else {
        return Ok(());
    };
    let mut from = 0;
    // At most BATCH payloads; a partial send retries the rest, 4 times at most.
    for _ in 0..4 {
        if from >= queued.len() {
            break;
        }
        let packets = queued[from..]
            .iter()
            .map(|(i, range)| &recv.packet(*i)[range.clone()]);
        let sent = send.send(socket, Some(sink), packets).context("sendmmsg")?;
        stats.sends += sent as u64;
        if sent == 0 {
            break;
        }
        from += sent;
    }
    stats.forwarded += from as u64;
    stats.dropped += (queued.len() - from) as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified() {
        assert_eq!(classify(&setup_message(4242)), Frame::Setup(4242));
        assert_eq!(classify(&setup_message(0)), Frame::Setup(0));
        assert_eq!(
            classify(b"BOSON-BENCH-SINK\x01"),
            Frame::Drop,
            "short setup"
        );
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3]),
            Frame::Forward(4..7)
        );
        assert_eq!(
            classify(&[0x7F, 0xFF, 0x00, 0x01, 9, 0, 0, 0]),
            Frame::Forward(4..5),
            "padding after the payload is allowed"
        );
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x05, 1]),
            Frame::Drop,
            "truncated"
        );
        assert_eq!(classify(&[0x00, 0x01, 0x00, 0x00]), Frame::Drop, "STUN");
        assert_eq!(classify(&[0x80, 0, 0, 0]), Frame::Drop);
        assert_eq!(classify(&[0x40]), Frame::Drop);
    }

    #[test]
    fn gso_runs_are_equal_sizes_with_a_shorter_last() {
        assert_eq!(gso_run([]), 0);
        assert_eq!(gso_run([100]), 1);
        assert_eq!(
            gso_run([100, 100, 100, 40, 100]),
            4,
            "a shorter one ends the run"
        );
        assert_eq!(gso_run([100, 120, 100]), 1, "a longer one starts the next");
        assert_eq!(gso_run([0, 0]), 1, "empty datagrams go one by one");
        assert_eq!(gso_run([100, 0]), 1);
        assert_eq!(gso_run([10; 100]), GSO_SEGMENTS);
        assert_eq!(gso_run([1200; 64]), GSO_BYTES / 1200, "at most GSO_BYTES");
    }

    #[test]
    fn loopback_only() {
        assert!(bind("0.0.0.0:0".parse().unwrap()).is_err());
        assert!(bind("127.0.0.1:0".parse().unwrap()).is_ok());
    }
}
