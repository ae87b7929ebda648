//! A blocking shell of the WebSocket relay session ([`crate::ws`]) over any `Read + Write`:
//! a `TcpStream`, or a rustls `StreamOwned` for wss. The agent drives the same core from
//! tokio (`relay_conn`); this shell is for code on plain threads: the project's tests and
//! tools.
//!
//! The core does the protocol (the upgrade, AUTH, READY, SEND, RECV and the notices, pongs,
//! the closing handshake); this shell reads into one buffer, hands the core its bytes,
//! writes what the core queues, and fires the core's timers before each read. A blocking
//! read cannot wake for a timer, so timers fire only as often as the caller reads; the
//! stream's read timeout bounds each read.
//!
//! [`BlockingClient::sender`] makes a second writer of SENDs for a cloned stream, so one
//! thread can send while another receives.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use boson_dataplane_proto::ws::frame;
use boson_dataplane_proto::ws::handshake::RequestError;
use boson_dataplane_proto::ws::relay;
use boson_shared::NodeId;
use rand_core::RngCore;

use crate::clock;
use crate::ws::{Auth, ClientConfig, CloseReason, Event, Input, RelayClient, SendError, State};

/// What [`BlockingClient::recv`] returns: the next packet, notice or the end of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A packet from `src`.
    Packet {
        /// The sending node.
        src: NodeId,
        /// The packet.
        packet: Vec<u8>,
    },
    /// READY named this node (on a mesh link, the host id, in the same 16 bytes).
    Ready(NodeId),
    /// PEER_GONE: the node is not connected to the relay.
    PeerGone(NodeId),
    /// PEER_PRESENT: the node is reachable (again).
    PeerPresent(NodeId),
    /// RECONNECT_HINT: the relay host is draining.
    ReconnectHint,
    /// The session ended; the next call is an error.
    Closed(CloseReason),
}

impl Received {
    /// The code of the server's Close when this is the end of the session and the server
    /// ended it (a refused token's 1008 included).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Closed(reason) => reason.server_code().map(frame::CloseCode::get),
            Self::Packet { .. }
            | Self::Ready(_)
            | Self::PeerGone(_)
            | Self::PeerPresent(_)
            | Self::ReconnectHint => None,
        }
    }
}

/// Why [`BlockingClient::upgrade`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The host, path or token cannot go into a request.
    #[error("upgrade request: {0}")]
    Request(#[from] RequestError),
    /// The connection failed (TLS included) or timed out.
    #[error("relay connection: {0}")]
    Io(#[from] io::Error),
    /// The server refused the upgrade, or the handshake timed out.
    #[error("relay upgrade: {0}")]
    Closed(CloseReason),
}

/// A TCP connection to a relay with `TCP_NODELAY` (relay messages are small and latency
/// counts) and `read_timeout` on every read.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(read_timeout))?;
    Ok(stream)
}

/// One relay session over a blocking stream. See the [module](self).
#[derive(Debug)]
pub struct BlockingClient<S, R> {
    stream: S,
    core: RelayClient<R>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Queued SENDs and the core's control frames, in order.
    out: Vec<u8>,
    /// Whether [`Received::Closed`] was returned.
    closed_reported: bool,
}

impl<S: Read + Write> BlockingClient<S, rand::rngs::StdRng> {
    /// [`upgrade`](Self::upgrade) at the relay's `/relay`, with a session that never pings:
    /// the server's keepalive is then the only one on the connection (what the relay's tests
    /// exercise), and a split-off sender's writes never interleave with a ping.
    pub fn upgrade_without_pings(stream: S, auth: Auth<'_>) -> Result<Self, UpgradeError> {
        use rand::SeedableRng as _;
        Self::upgrade(
            stream,
            ClientConfig {
                ping_interval: Duration::from_secs(24 * 3600),
                ..ClientConfig::default()
            },
            "relay",
            "/relay",
            auth,
            rand::rngs::StdRng::from_os_rng(),
        )
    }
}

impl<S: Read + Write, R: RngCore> BlockingClient<S, R> {
    /// Opens a session on `stream`: writes the upgrade request for `host` and `path`, reads
    /// the 101 and, with [`Auth::Message`], sends the AUTH message. READY follows
    /// ([`ready`](Self::ready)).
    pub fn upgrade(
        stream: S,
        config: ClientConfig,
        host: &str,
        path: &str,
        auth: Auth<'_>,
        rng: R,
    ) -> Result<Self, UpgradeError> {
        let core = RelayClient::with_auth(config, host, path, auth, clock::now(), rng)?;
        let buf = vec![0; core.min_input_buffer() + (1 << 16)];
        let mut this = Self {
            stream,
            core,
            buf,
            start: 0,
            end: 0,
            out: Vec::with_capacity(1 << 17),
            closed_reported: false,
        };
        this.flush()?;
        while this.core.state() == State::Upgrading {
            let input = this
                .core
                .handle_input(clock::now(), &mut this.buf[this.start..this.end]);
            match input {
                Input::NeedMore => {
                    this.fire_timers();
                    if this.core.state() == State::Upgrading {
                        this.fill()?;
                    }
                }
                Input::Consumed(_) | Input::Recv { .. } => this.start += input.consumed(),
            }
        }
        match this.core.state() {
            State::Closed(reason) => Err(UpgradeError::Closed(reason)),
            State::Upgrading | State::AwaitingReady | State::Open(_) | State::Closing => {
                this.flush()?;
                Ok(this)
            }
        }
    }

    /// Waits for READY; the node (or, on a mesh link, host) it names.
    pub fn ready(&mut self) -> io::Result<NodeId> {
        match self.recv()? {
            Received::Ready(node) => Ok(node),
            other @ (Received::Packet { .. }
            | Received::PeerGone(_)
            | Received::PeerPresent(_)
            | Received::ReconnectHint
            | Received::Closed(_)) => {
                Err(io::Error::other(format!("expected READY, got {other:?}")))
            }
        }
    }

    /// The next packet, notice or end of the session, answering pings on the way. An
    /// error is the stream's (a read timeout included: call again to go on), or a call
    /// after [`Received::Closed`].
    pub fn recv(&mut self) -> io::Result<Received> {
        loop {
            if let Some(received) = self.next_event() {
                return Ok(received);
            }
            if self.closed_reported {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the relay session is closed",
                ));
            }
            let input = self
                .core
                .handle_input(clock::now(), &mut self.buf[self.start..self.end]);
            let packet = match input {
                Input::NeedMore => None,
                Input::Consumed(consumed) => {
                    self.start += consumed;
                    None
                }
                Input::Recv {
                    src,
                    ref packet,
                    consumed,
                } => {
                    let at = self.start;
                    self.start += consumed;
                    Some(Received::Packet {
                        src,
                        packet: self.buf[at + packet.start..at + packet.end].to_vec(),
                    })
                }
            };
            self.flush_control()?;
            if let Some(packet) = packet {
                return Ok(packet);
            }
            if input == Input::NeedMore {
                self.fire_timers();
                self.flush_control()?;
                if self.core.is_closed() {
                    continue;
                }
                self.fill()?;
            }
        }
    }

    /// The next packet, skipping PEER_GONE and PEER_PRESENT; any other message, or the end
    /// of the session, is an error.
    pub fn recv_packet(&mut self) -> io::Result<(NodeId, Vec<u8>)> {
        loop {
            match self.recv()? {
                Received::Packet { src, packet } => return Ok((src, packet)),
                Received::PeerGone(_) | Received::PeerPresent(_) => {}
                other @ (Received::Ready(_) | Received::ReconnectHint | Received::Closed(_)) => {
                    return Err(io::Error::other(format!("expected RECV, got {other:?}")));
                }
            }
        }
    }

    /// Queues a SEND of `packet` to `dest`; [`flush`](Self::flush) writes the batch.
    pub fn queue_send(&mut self, dest: &NodeId, packet: &[u8]) -> Result<(), SendError> {
        self.core.encode_send(dest, packet, &mut self.out)
    }

    /// Queues a SEND whatever the session's state (before READY too): tests of the
    /// server's refusal of it ([`RelayClient::dangerous_encode_send`]).
    pub fn dangerous_queue_send(&mut self, dest: &NodeId, packet: &[u8]) -> Result<(), SendError> {
        self.core.dangerous_encode_send(dest, packet, &mut self.out)
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.core.poll_transmit(&mut self.out);
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        self.out.clear();
        Ok(())
    }

    /// Sends `packet` to `dest` now.
    pub fn send(&mut self, dest: &NodeId, packet: &[u8]) -> io::Result<()> {
        self.queue_send(dest, packet).map_err(io::Error::other)?;
        self.flush()
    }

    /// A writer of SENDs on `writer` (a clone of this session's stream), for another
    /// thread, masking with `rng`. Only while the session is open; the session's own
    /// control frames (pongs) go out through this client, so a server that pings while
    /// both write may see them interleaved with SENDs mid-frame: use it where the server's
    /// keepalive is longer than the exchange.
    pub fn sender<W: Write, M: RngCore>(
        &self,
        writer: W,
        rng: M,
    ) -> Result<BlockingSender<W, M>, SendError> {
        if !self.core.is_open() {
            return Err(SendError::NotOpen);
        }
        Ok(BlockingSender {
            writer,
            rng,
            out: Vec::with_capacity(1 << 17),
            max_message: self.core.config().max_message,
        })
    }

    /// The stream, to set its options.
    pub const fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream, for what a test writes past the session (deliberately bad frames).
    pub const fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream, and the bytes read from it that the session has not consumed.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.stream, rest)
    }

    /// The stream, the bytes read from it that the session has not consumed, and the
    /// session itself, for a caller that drives the core on from here (a load generator's
    /// non-blocking loop).
    pub fn into_session(self) -> (S, Vec<u8>, RelayClient<R>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.stream, rest, self.core)
    }

    /// The session's core: its state and counters.
    pub const fn core(&self) -> &RelayClient<R> {
        &self.core
    }

    fn next_event(&mut self) -> Option<Received> {
        while let Some(event) = self.core.poll_event() {
            let received = match event {
                Event::Ready(node) => Received::Ready(node),
                Event::PeerGone(node) => Received::PeerGone(node),
                Event::PeerPresent(node) => Received::PeerPresent(node),
                Event::ReconnectHint => Received::ReconnectHint,
                Event::Rtt(_) => continue,
                Event::Closed(reason) => {
                    self.closed_reported = true;
                    Received::Closed(reason)
                }
            };
            return Some(received);
        }
        None
    }

    fn fire_timers(&mut self) {
        let now = clock::now();
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// Writes the core's control frames (and whatever SENDs are queued before them). Once
    /// the session is closed the server may have closed the connection: a failure to
    /// echo its Close is no news.
    fn flush_control(&mut self) -> io::Result<()> {
        match self.flush() {
            Err(_) if self.core.is_closed() => {
                self.out.clear();
                Ok(())
            }
            result => result,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }
}

/// A writer of SENDs beside a [`BlockingClient`], from [`BlockingClient::sender`].
#[derive(Debug)]
pub struct BlockingSender<W, R> {
    writer: W,
    rng: R,
    out: Vec<u8>,
    max_message: usize,
}

impl<W: Write, R: RngCore> BlockingSender<W, R> {
    /// Queues a SEND of `packet` to `dest`; [`flush`](Self::flush) writes the batch.
    pub fn queue_send(&mut self, dest: &NodeId, packet: &[u8]) -> Result<(), SendError> {
        if relay::PREFIX_LEN + packet.len() > self.max_message {
            return Err(SendError::TooLarge(packet.len()));
        }
        let start = self.out.len();
        self.out.resize(
            start + frame::MAX_CLIENT_HEADER_LEN + relay::PREFIX_LEN + packet.len(),
            0,
        );
        let mask = self.rng.next_u32().to_ne_bytes();
        match relay::encode_send(dest, packet, mask, &mut self.out[start..]) {
            Ok(written) => {
                self.out.truncate(start + written);
                Ok(())
            }
            Err(_) => {
                self.out.truncate(start);
                Err(SendError::TooLarge(packet.len()))
            }
        }
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.out)?;
        self.writer.flush()?;
        self.out.clear();
        Ok(())
    }

    /// Sends `packet` to `dest` now.
    pub fn send(&mut self, dest: &NodeId, packet: &[u8]) -> io::Result<()> {
        self.queue_send(dest, packet).map_err(io::Error::other)?;
        self.flush()
    }
}
