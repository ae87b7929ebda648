//! STUN and TURN over TCP and TLS on the per-core loops (RFC 8489 §6.2, RFC 8656 §3.1): the
//! listeners, the connections and their limits. The protocol stays in the sans-IO cores:
//! proto's [`Reassembler`] cuts each connection's bytes into frames, which the worker hands to
//! its TURN core exactly as it does datagrams, as a [`ClientAddr::new_stream`] client (the
//! TCP 5-tuple is the client's connection, so a TCP and a UDP client with the same address
//! and port are two clients). The relayed side stays UDP.
//!
//! # Per worker
//!
//! Every worker binds the TCP listener (and the TLS one) with SO_REUSEPORT and keeps its
//! connections in an epoll set of its own, which its I/O backend watches like the node
//! relay's (both through one nested epoll fd when both run, see `Mux`). So io_uring and
//! epoll drive the same readiness code: a readable connection is read with plain `read`s
//! (through rustls for TLS) and written with `write`s, each connection's replies and peers'
//! data batched per turn. A TLS connection's socket is read only once rustls's decrypted
//! input has all been taken: rustls holds at most 16 KiB of it and refuses to read on past
//! that, so a client that sends faster than its frames are handled waits in TCP instead.
//!
//! # Limits, each with a counted close (`StreamCounters`)
//!
//! * the frame bound: a connection buffers at most one frame, `MAX_STREAM_FRAME` bytes
//!   (what fits a buffer slot, so every frame can be relayed from one), and a header that
//!   lies closes it ([`CloseReason`]);
//! * the write queue: at most [`StreamConfig::max_queue`] bytes wait per connection; what
//!   does not fit is dropped and counted (`tx_queue_full`), as a full UDP socket would;
//! * the idle timeout (no complete frame) and the TLS handshake timeout;
//! * the connection cap per source address (IPv6: its /64), shared by every worker, and a
//!   cap on one worker's connections.
//!
//! When a connection closes, its allocation is deleted ([`PacketCore::handle_client_closed`]
//! via the worker): nothing could reach its client any more.
//!
//! [`PacketCore::handle_client_closed`]: crate::PacketCore::handle_client_closed

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boson_dataplane_proto::ClientAddr;
use boson_dataplane_proto::turn::stream::{
    CloseReason, ConnectionCap, Reassembler, StreamLimits, stream_padding,
};
use boson_tls::TlsSource;

use crate::io::bufs::MAX_PAYLOAD;
use crate::io::socket::bind_tcp;
use crate::relay::poller::{Poller, Ready};

/// The largest frame a stream client may send: what fits one buffer slot's payload area
/// (rounded down to 4), so a ChannelData frame is relayed from one slot like a datagram. The
/// UDP listener has the same bound (`rx_truncated`).
pub(crate) const MAX_STREAM_FRAME: usize = MAX_PAYLOAD / 4 * 4;

/// Token of the plain TCP listener in the poller; connections use slab index and generation.
const TCP_LISTENER: u64 = u64::MAX;
/// Token of the TLS listener.
const TLS_LISTENER: u64 = u64::MAX - 1;

/// Ready sockets handled per turn, and connections accepted per listener per turn.
const READY_BUDGET: usize = 256;

/// Reads from one connection per turn at most: a busy client cannot starve the others.
const READS_PER_TURN: usize = 16;

/// How often connections are checked against the idle and handshake timeouts.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// TURN over TCP and TLS: which listeners, and the limits of their connections.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Plain TCP listen address (the STUN/TURN port, 3478, by default in the binary); every
    /// worker binds it with SO_REUSEPORT. Port 0 picks one. `None`: no TCP listener.
    pub tcp: Option<SocketAddr>,
    /// TLS listen address (5349 by default in the binary; 443 is common behind strict
    /// firewalls). `None`: no TLS listener. Needs [`tls`](Self::tls).
    pub tls_listen: Option<SocketAddr>,
    /// The TLS certificate, reloaded when its files change.
    pub tls: Option<TlsSource>,
    /// How often the certificate files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Per-connection limits: connections per source, idle and handshake timeouts. Its
    /// `max_frame` is capped at what fits a buffer slot (1 972 bytes).
    pub limits: StreamLimits,
    /// Bytes that may wait to be written on one connection. Default 256 KiB: a few hundred
    /// relayed packets, a quarter of a second of a 8 Mbit/s video call.
    pub max_queue: usize,
    /// Connections one worker holds at most; beyond, new ones are closed at once. Default
    /// 16 384.
    pub max_connections_per_worker: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            tls_listen: None,
            tls: None,
            tls_reload_interval: Duration::from_secs(10),
            limits: StreamLimits::default(),
            max_queue: 256 * 1024,
            max_connections_per_worker: 16_384,
        }
    }
}

/// Why the shell closed a connection (beyond the framing's [`CloseReason`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The client closed, or reset.
    Peer,
    /// A socket error.
    Error,
    /// TLS failed: a bad record, a failed handshake.
    Tls,
    /// The framing or a limit: see the reason.
    Framing(CloseReason),
    /// The worker holds its cap of connections.
    WorkerFull,
}

/// The counters of one worker's stream listeners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamCounters {
    pub(crate) accepted: u64,
    pub(crate) connections: u64,
    pub(crate) frames_in: u64,
    pub(crate) closed_peer: u64,
    pub(crate) closed_error: u64,
    pub(crate) closed_tls: u64,
    pub(crate) closed_framing: u64,
    pub(crate) closed_too_long: u64,
    pub(crate) closed_idle: u64,
    pub(crate) closed_handshake_timeout: u64,
    pub(crate) closed_too_many_per_ip: u64,
    pub(crate) closed_worker_full: u64,
    /// Frames for a client whose write queue was full, dropped.
    pub(crate) tx_queue_full: u64,
    /// Frames for a stream client with no connection on this worker (it closed), dropped.
    pub(crate) tx_no_connection: u64,
}

impl StreamCounters {
    const fn count(&mut self, closing: Closing) {
        let counter = match closing {
            Closing::Peer => &mut self.closed_peer,
            Closing::Error => &mut self.closed_error,
            Closing::Tls => &mut self.closed_tls,
            Closing::WorkerFull => &mut self.closed_worker_full,
            Closing::Framing(CloseReason::FrameTooLong) => &mut self.closed_too_long,
            Closing::Framing(CloseReason::Idle) => &mut self.closed_idle,
            Closing::Framing(CloseReason::HandshakeTimeout) => &mut self.closed_handshake_timeout,
            Closing::Framing(CloseReason::TooManyConnections) => &mut self.closed_too_many_per_ip,
            Closing::Framing(_) => &mut self.closed_framing,
        };
        *counter += 1;
    }
}

/// What [`wire`] hands each worker.
pub(crate) struct StreamWiring {
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
    reloader: Option<Arc<boson_tls::Reloader>>,
    cap: Arc<Mutex<ConnectionCap>>,
    limits: StreamLimits,
    max_queue: usize,
    max_connections: usize,
}

/// What [`wire`] made: one wiring per worker, the bound addresses, and the certificate
/// reloader to poll.
pub(crate) struct Wired {
    pub(crate) wirings: Vec<StreamWiring>,
    pub(crate) tcp_addr: Option<SocketAddr>,
    pub(crate) tls_addr: Option<SocketAddr>,
    pub(crate) reloader: Option<Arc<boson_tls::Reloader>>,
}

/// Binds the listeners, one SO_REUSEPORT socket per worker each, and loads the certificate.
pub(crate) fn wire(config: &StreamConfig, workers: usize) -> anyhow::Result<Wired> {
    anyhow::ensure!(
        config.tls_listen.is_none() || config.tls.is_some(),
        "a TURN TLS listener needs a certificate"
    );
    anyhow::ensure!(config.max_queue >= 4096, "max_queue must be at least 4096");
    let reloader = match (&config.tls, config.tls_listen) {
        (Some(source), Some(_)) => Some(Arc::new(
            boson_tls::Reloader::new(source.clone(), "TURN")
                .context("loading the TURN TLS certificate")?,
        )),
        _ => None,
    };
    let bind_all = |addr: Option<SocketAddr>, what: &str| -> anyhow::Result<Vec<TcpListener>> {
        let Some(addr) = addr else {
            return Ok(Vec::new());
        };
        if addr.port() != 0 {
            // As for the UDP listener: another process holding the port with SO_REUSEPORT
            // would silently share it with us. A plain bind fails on any holder.
            drop(TcpListener::bind(addr).with_context(|| {
                format!("the TURN {what} port {addr} is in use (is another server running?)")
            })?);
        }
        let first =
            bind_tcp(addr).with_context(|| format!("binding the TURN {what} listener {addr}"))?;
        let addr = first.local_addr().context("reading a listener address")?;
        let mut all = vec![first];
        for _ in 1..workers {
            all.push(
                bind_tcp(addr)
                    .with_context(|| format!("binding another TURN {what} listener on {addr}"))?,
            );
        }
        Ok(all)
    };
    let mut tcp = bind_all(config.tcp, "TCP")?.into_iter();
    let mut tls = bind_all(config.tls_listen, "TLS")?.into_iter();
    let local = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok());
    let (tcp_addr, tls_addr) = (local(tcp.as_slice().first()), local(tls.as_slice().first()));
    let mut limits = config.limits;
    limits.max_frame = limits.max_frame.min(MAX_STREAM_FRAME);
    let cap = Arc::new(Mutex::new(ConnectionCap::new(
        limits.max_connections_per_ip,
    )));
    let wirings = (0..workers)
        .map(|_| StreamWiring {
            tcp: tcp.next(),
            tls: tls.next(),
            reloader: reloader.clone(),
            cap: Arc::clone(&cap),
            limits,
            max_queue: config.max_queue,
            max_connections: config.max_connections_per_worker,
        })
        .collect();
    Ok(Wired {
        wirings,
        tcp_addr,
        tls_addr,
        reloader,
    })
}

/// One epoll fd over the node relay's and the stream shell's epoll sets, for a backend that
/// watches one aux fd: readable when either is.
pub(crate) struct Mux(Poller);

impl Mux {
    pub(crate) fn new(fds: &[RawFd]) -> io::Result<Self> {
        let poller = Poller::new(fds.len().max(1))?;
        for (token, fd) in (0u64..).zip(fds) {
            poller.add(*fd, token)?;
        }
        Ok(Self(poller))
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }
}

/// One connection.
struct Conn {
    stream: TcpStream,
    client: ClientAddr,
    tls: Option<Box<rustls::ServerConnection>>,
    rx: Reassembler,
    /// Bytes waiting to be written (plaintext for TLS), from `tx_head` on.
    tx: Vec<u8>,
    tx_head: usize,
    /// The lengths of the frames in `tx`, for TLS: each goes into a record of its own, as
    /// coturn writes them (clients that read one message per record lose the rest).
    frames: VecDeque<usize>,
    /// Whether the poller also watches for writability.
    write_armed: bool,
    /// Whether the connection is on the dirty list.
    dirty: bool,
    opened: Instant,
    /// The last complete frame (or the accept).
    active: Instant,
}

impl Conn {
    fn pending(&self) -> usize {
        self.tx.len() - self.tx_head
    }

    /// Reads once (through TLS if any) into the reassembler. `Ok(0)`: nothing now.
    fn read(&mut self) -> Result<usize, Closing> {
        let Some(tls) = self.tls.as_mut() else {
            let spare = self.rx.spare();
            if spare.is_empty() {
                return Ok(0);
            }
            return match self.stream.read(spare) {
                Ok(0) => Err(Closing::Peer),
                Ok(n) => {
                    self.rx.handle_read(n);
                    Ok(n)
                }
                Err(err) if would_block(&err) => Ok(0),
                Err(err) => Err(io_failed(self.client, "read", &err)),
            };
        };
        let mut eof = false;
        // rustls holds at most 16 KiB of decrypted input and answers a read_tls beyond that
        // with an error: the socket is read only once what it decrypted has been taken (a
        // client sending faster than the frames are handled, as a browser's data channel
        // does, fills it).
        let pending = match tls.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read(),
            Err(err) => return Err(tls_failed(tls, &mut self.stream, self.client, &err)),
        };
        if pending == 0 {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(err) if would_block(&err) => {}
                Err(err) => return Err(io_failed(self.client, "TLS read", &err)),
            }
            if let Err(err) = tls.process_new_packets() {
                return Err(tls_failed(tls, &mut self.stream, self.client, &err));
            }
        }
        let spare = self.rx.spare();
        let mut added = 0;
        if !spare.is_empty() {
            match tls.reader().read(spare) {
                Ok(0) => eof = true,
                Ok(n) => added = n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => eof = true,
            }
        }
        self.rx.handle_read(added);
        if added == 0 && eof {
            return Err(Closing::Peer);
        }
        Ok(added)
    }

    /// Whether decrypted input waits inside rustls (the socket will not report it again).
    fn has_buffered_plaintext(&mut self) -> bool {
        self.tls.as_mut().is_some_and(|tls| {
            tls.process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
        })
    }

    /// Writes what waits; `Ok(true)` when all of it went out.
    fn flush(&mut self) -> Result<bool, Closing> {
        match self.tls.as_mut() {
            None => {
                while self.tx_head < self.tx.len() {
                    match self.stream.write(&self.tx[self.tx_head..]) {
                        Ok(0) => return Err(Closing::Error),
                        Ok(n) => self.tx_head += n,
                        Err(err) if would_block(&err) => return Ok(false),
                        Err(err) => return Err(io_failed(self.client, "write", &err)),
                    }
                }
            }
            Some(tls) => loop {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.stream) {
                        Ok(0) => return Err(Closing::Error),
                        Ok(_) => {}
                        Err(err) if would_block(&err) => return Ok(false),
                        Err(err) => return Err(io_failed(self.client, "TLS write", &err)),
                    }
                }
                if tls.is_handshaking() || self.tx_head == self.tx.len() {
                    break;
                }
                // Only once rustls has sent everything: it never holds more than one
                // queue's worth.
                while let Some(len) = self.frames.pop_front() {
                    let end = (self.tx_head + len).min(self.tx.len());
                    if tls.writer().write_all(&self.tx[self.tx_head..end]).is_err() {
                        return Err(Closing::Tls);
                    }
                    self.tx_head = end;
                }
                self.tx_head = self.tx.len();
            },
        }
        if self.tx_head == self.tx.len() {
            self.tx.clear();
            self.tx_head = 0;
        }
        Ok(self.tx_head == self.tx.len() && !self.tls.as_ref().is_some_and(|t| t.wants_write()))
    }
}

/// The TLS layer of a connection failed with `err` (a bad record, an alert): logged, the
/// alert rustls queued sent (best effort), closed as [`Closing::Tls`].
fn tls_failed(
    tls: &mut rustls::ServerConnection,
    stream: &mut TcpStream,
    client: ClientAddr,
    err: &rustls::Error,
) -> Closing {
    tracing::debug!(%client, %err, "TURN TLS failed");
    let _ = tls.write_tls(stream);
    Closing::Tls
}

/// A connection's socket `what` failed with `err`: logged (at debug; a reset by the client is
/// common) and closed as [`Closing::Error`].
fn io_failed(client: ClientAddr, what: &str, err: &io::Error) -> Closing {
    tracing::debug!(%client, %err, "TURN stream {what} failed");
    Closing::Error
}

fn would_block(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One worker's stream listeners and connections; see the [module docs](self).
pub(crate) struct StreamShell {
    poller: Poller,
    tcp: Option<TcpListener>,
    tls_listener: Option<TcpListener>,
    reloader: Option<Arc<boson_tls::Reloader>>,
    /// The reloader's config last seen, and our copy of it (no ALPN: TURN clients may offer
    /// `stun.turn`, or nothing).
    tls_config: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
    cap: Arc<Mutex<ConnectionCap>>,
    limits: StreamLimits,
    max_queue: usize,
    max_connections: usize,
    conns: Vec<(u32, Option<Conn>)>,
    free: Vec<u32>,
    live: usize,
    by_client: HashMap<SocketAddr, u64>,
    ready: Vec<Ready>,
    dirty: Vec<u64>,
    /// Stream clients whose connection closed, for the core.
    closed: Vec<ClientAddr>,
    /// Connections that hit the read budget with input left (in the socket or decrypted
    /// inside rustls, which the socket no longer reports): read again next turn.
    unread: Vec<u64>,
    /// Whether the next turn must run whatever the backend reports.
    more: bool,
    next_sweep: Option<Instant>,
    counters: StreamCounters,
}

impl StreamShell {
    pub(crate) fn new(wiring: StreamWiring) -> io::Result<Self> {
        let poller = Poller::new(READY_BUDGET)?;
        if let Some(listener) = &wiring.tcp {
            poller.add(listener.as_raw_fd(), TCP_LISTENER)?;
        }
        if let Some(listener) = &wiring.tls {
            poller.add(listener.as_raw_fd(), TLS_LISTENER)?;
        }
        Ok(Self {
            poller,
            tcp: wiring.tcp,
            tls_listener: wiring.tls,
            reloader: wiring.reloader,
            tls_config: None,
            cap: wiring.cap,
            limits: wiring.limits,
            max_queue: wiring.max_queue,
            max_connections: wiring.max_connections,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_client: HashMap::new(),
            ready: Vec::with_capacity(READY_BUDGET),
            dirty: Vec::new(),
            closed: Vec::new(),
            unread: Vec::new(),
            more: false,
            next_sweep: None,
            counters: StreamCounters::default(),
        })
    }

    pub(crate) fn poll_fd(&self) -> RawFd {
        self.poller.raw_fd()
    }

    /// Accepts, reads and hands every complete frame to `on_frame(now, client, frame, reply)`,
    /// which appends what goes back to the client to `reply`. `ready`: the backend reported
    /// the poll fd readable.
    pub(crate) fn turn(
        &mut self,
        now: Instant,
        ready: bool,
        mut on_frame: impl FnMut(Instant, ClientAddr, &[u8], &mut Vec<u8>),
    ) {
        if !ready && !self.more {
            return;
        }
        self.more = false;
        let mut events = std::mem::take(&mut self.ready);
        if let Err(err) = self.poller.poll(&mut events) {
            tracing::warn!(%err, "polling the TURN stream sockets failed");
        }
        let mut reply = Vec::new();
        let unread = std::mem::take(&mut self.unread);
        for &token in &unread {
            self.read_conn(now, token, &mut reply, &mut on_frame);
        }
        for event in &events {
            match event.token {
                TCP_LISTENER => self.accept(now, false),
                TLS_LISTENER => self.accept(now, true),
                token => {
                    if event.writable {
                        self.mark_dirty(token);
                    }
                    if event.readable || event.hangup {
                        self.read_conn(now, token, &mut reply, &mut on_frame);
                    }
                }
            }
        }
        self.ready = events;
        if self.ready.len() == READY_BUDGET {
            self.more = true;
        }
    }

    fn read_conn(
        &mut self,
        now: Instant,
        token: u64,
        reply: &mut Vec<u8>,
        on_frame: &mut impl FnMut(Instant, ClientAddr, &[u8], &mut Vec<u8>),
    ) {
        let max_queue = self.max_queue;
        let mut outcome = Ok(());
        let mut frames = 0;
        let mut hit_budget = false;
        {
            let Some(conn) = conn_slot(&mut self.conns, token) else {
                return;
            };
            for round in 0..READS_PER_TURN {
                match conn.read() {
                    Ok(0) if !conn.has_buffered_plaintext() => break,
                    Ok(_) => {}
                    Err(closing) => {
                        outcome = Err(closing);
                        break;
                    }
                }
                while let Some(frame) = conn.rx.poll_frame() {
                    match frame {
                        Ok(frame) => {
                            frames += 1;
                            reply.clear();
                            on_frame(now, conn.client, frame, reply);
                            if !reply.is_empty() {
                                queue(conn, reply, max_queue, &mut self.counters.tx_queue_full);
                            }
                        }
                        Err(reason) => {
                            outcome = Err(Closing::Framing(reason));
                            break;
                        }
                    }
                }
                if outcome.is_err() {
                    break;
                }
                hit_budget = round + 1 == READS_PER_TURN;
            }
            hit_budget &= outcome.is_ok();
            if frames > 0 {
                conn.active = now;
            }
        }
        self.counters.frames_in += frames;
        if hit_budget && !self.unread.contains(&token) {
            self.unread.push(token);
            self.more = true;
        }
        match outcome {
            // Replies, and TLS handshake records, go out at the end of the turn.
            Ok(()) => self.mark_dirty(token),
            Err(closing) => {
                // What the client's last frames earned still goes out, best effort.
                if let Some(conn) = self.conn_mut(token) {
                    let _ = conn.flush();
                }
                self.close(token, closing);
            }
        }
    }

    /// Queues a frame for `client` (a peer's ChannelData or Data indication), with the
    /// ChannelData padding a stream needs. Returns whether it was queued; a drop is counted.
    pub(crate) fn forward(&mut self, client: SocketAddr, frame: &[u8]) -> bool {
        let Some(&token) = self.by_client.get(&client) else {
            self.counters.tx_no_connection += 1;
            return false;
        };
        let max_queue = self.max_queue;
        let Some(conn) = conn_slot(&mut self.conns, token) else {
            self.counters.tx_no_connection += 1;
            return false;
        };
        let queued = queue(conn, frame, max_queue, &mut self.counters.tx_queue_full);
        if queued {
            self.mark_dirty(token);
        }
        queued
    }

    /// Writes what each connection touched this turn has queued.
    pub(crate) fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &token in &dirty {
            let Some(conn) = self.conn_mut(token) else {
                continue;
            };
            conn.dirty = false;
            match conn.flush() {
                Ok(done) => {
                    if done == conn.write_armed {
                        conn.write_armed = !done;
                        let fd = conn.stream.as_raw_fd();
                        if let Err(err) = self.poller.set_writable(fd, token, !done) {
                            tracing::debug!(%err, "cannot re-arm a TURN stream socket");
                            self.close(token, Closing::Error);
                        }
                    }
                }
                Err(closing) => self.close(token, closing),
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// The stream clients closed since the last call.
    pub(crate) fn take_closed(&mut self) -> std::vec::Drain<'_, ClientAddr> {
        self.closed.drain(..)
    }

    /// Whether connections wait to be read again (the read budget ran out).
    pub(crate) const fn has_more(&self) -> bool {
        self.more
    }

    /// When the next idle and handshake check is due (none without connections).
    pub(crate) const fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Closes the connections past their idle or handshake timeout.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| at > now) {
            return;
        }
        let limits = self.limits;
        let expired: Vec<(u64, CloseReason)> = self
            .conns
            .iter()
            .zip(0u32..)
            .filter_map(|((generation, conn), index)| {
                let conn = conn.as_ref()?;
                let token = (u64::from(*generation) << 32) | u64::from(index);
                if conn.tls.as_ref().is_some_and(|t| t.is_handshaking())
                    && now.saturating_duration_since(conn.opened) >= limits.handshake_timeout
                {
                    return Some((token, CloseReason::HandshakeTimeout));
                }
                (now.saturating_duration_since(conn.active) >= limits.idle_timeout)
                    .then_some((token, CloseReason::Idle))
            })
            .collect();
        for (token, reason) in expired {
            self.close(token, Closing::Framing(reason));
        }
        self.next_sweep = (self.live > 0).then(|| now + SWEEP_INTERVAL);
    }

    pub(crate) fn counters(&self) -> StreamCounters {
        StreamCounters {
            connections: self.live as u64,
            ..self.counters
        }
    }

    /// Closes every connection (worker shutdown); the clients are not reported.
    pub(crate) fn close_all(&mut self) {
        for index in 0..self.conns.len() {
            let (generation, conn) = &self.conns[index];
            if conn.is_some() {
                let token = (u64::from(*generation) << 32) | index as u64;
                self.close(token, Closing::Peer);
            }
        }
        self.closed.clear();
    }

    fn accept(&mut self, now: Instant, tls: bool) {
        for _ in 0..READY_BUDGET {
            let listener = if tls {
                self.tls_listener.as_ref()
            } else {
                self.tcp.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            let (stream, from) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if would_block(&err) => return,
                Err(err) => {
                    // EMFILE and friends: the listener stays readable; try next turn.
                    tracing::debug!(%err, "TURN stream accept failed");
                    self.more = true;
                    return;
                }
            };
            self.counters.accepted += 1;
            if self.live >= self.max_connections {
                self.counters.count(Closing::WorkerFull);
                continue;
            }
            let ip = from.ip().to_canonical();
            let opened = self.lock_cap().try_open(ip);
            if let Err(reason) = opened {
                self.counters.count(Closing::Framing(reason));
                continue;
            }
            if let Err(err) = self.open(now, stream, from, tls) {
                tracing::debug!(%err, %from, "cannot set up a TURN stream connection");
                self.lock_cap().close(ip);
                self.counters.count(Closing::Error);
            }
        }
        self.more = true;
    }

    fn open(
        &mut self,
        now: Instant,
        stream: TcpStream,
        from: SocketAddr,
        tls: bool,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let tls = if tls {
            let config = self
                .tls_config()
                .ok_or_else(|| io::Error::other("no TLS config"))?;
            let mut conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            // Bounded by `max_queue` instead: see `Conn::flush`.
            conn.set_buffer_limit(None);
            Some(Box::new(conn))
        } else {
            None
        };
        let client = ClientAddr::new_stream(from);
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.conns.push((0, None));
                u32::try_from(self.conns.len() - 1).map_err(io::Error::other)?
            }
        };
        let generation = self.conns[index as usize].0;
        let token = (u64::from(generation) << 32) | u64::from(index);
        if let Err(err) = self.poller.add(stream.as_raw_fd(), token) {
            self.free.push(index);
            return Err(err);
        }
        self.conns[index as usize].1 = Some(Conn {
            stream,
            client,
            tls,
            rx: Reassembler::new(self.limits.max_frame),
            tx: Vec::new(),
            tx_head: 0,
            frames: VecDeque::new(),
            write_armed: false,
            dirty: false,
            opened: now,
            active: now,
        });
        self.live += 1;
        self.by_client.insert(from, token);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        Ok(())
    }

    /// The TLS config for a new connection: the reloader's, without ALPN.
    fn tls_config(&mut self) -> Option<Arc<rustls::ServerConfig>> {
        let current = self.reloader.as_ref()?.config();
        match &self.tls_config {
            Some((seen, ours)) if Arc::ptr_eq(seen, &current) => Some(Arc::clone(ours)),
            _ => {
                let mut ours = (*current).clone();
                ours.alpn_protocols.clear();
                let ours = Arc::new(ours);
                self.tls_config = Some((current, Arc::clone(&ours)));
                Some(ours)
            }
        }
    }

    fn close(&mut self, token: u64, closing: Closing) {
        let index = (token & u64::from(u32::MAX)) as usize;
        let Some((generation, slot)) = self.conns.get_mut(index) else {
            return;
        };
        if u64::from(*generation) != token >> 32 {
            return;
        }
        let Some(mut conn) = slot.take() else {
            return;
        };
        *generation = generation.wrapping_add(1);
        self.free.push(index as u32);
        self.live -= 1;
        self.poller.remove(conn.stream.as_raw_fd());
        if let Some(tls) = conn.tls.as_mut()
            && closing == Closing::Peer
        {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut conn.stream);
        }
        let from = conn.client.get();
        if self.by_client.get(&from) == Some(&token) {
            self.by_client.remove(&from);
        }
        self.lock_cap().close(from.ip().to_canonical());
        self.counters.count(closing);
        tracing::debug!(client = %from, reason = ?closing, "TURN stream connection closed");
        self.closed.push(conn.client);
    }

    fn conn_mut(&mut self, token: u64) -> Option<&mut Conn> {
        conn_slot(&mut self.conns, token)
    }

    fn mark_dirty(&mut self, token: u64) {
        if let Some(conn) = self.conn_mut(token)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(token);
        }
    }

    fn lock_cap(&self) -> std::sync::MutexGuard<'_, ConnectionCap> {
        self.cap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The live connection of `token` (slab index and generation).
fn conn_slot(conns: &mut [(u32, Option<Conn>)], token: u64) -> Option<&mut Conn> {
    let (generation, conn) = conns.get_mut((token & u64::from(u32::MAX)) as usize)?;
    if u64::from(*generation) != token >> 32 {
        return None;
    }
    conn.as_mut()
}

/// Appends `frame` and its stream padding to the connection's queue, or counts a drop when
/// the queue would exceed `max_queue`.
fn queue(conn: &mut Conn, frame: &[u8], max_queue: usize, full: &mut u64) -> bool {
    let pad = stream_padding(frame.len());
    if conn.pending() + frame.len() + pad > max_queue {
        *full += 1;
        return false;
    }
    if conn.tx_head > 0 && conn.tx_head >= conn.tx.len() / 2 {
        conn.tx.drain(..conn.tx_head);
        conn.tx_head = 0;
    }
    conn.tx.extend_from_slice(frame);
    conn.tx.extend(std::iter::repeat_n(0, pad));
    if conn.tls.is_some() {
        conn.frames.push_back(frame.len() + pad);
    }
    true
}

// A stream frame fits a slot's payload area, and a full-size packet fits a frame.
const _: () = assert!(MAX_STREAM_FRAME.is_multiple_of(4) && MAX_STREAM_FRAME <= MAX_PAYLOAD);
const _: () = assert!(MAX_STREAM_FRAME >= 1500);
