//! The QUIC load generator's client of the relay: one UDP socket, one quinn-proto endpoint
//! and one connection per node, driven by the caller's busy loop with no async runtime.
//!
//! # Why quinn-proto and not quinn
//!
//! Relaying costs a QUIC relay one decryption and one encryption per packet; the generator
//! pays the same on its side (the sender encrypts, the receiver decrypts), so a client with a
//! runtime's task switches and wake-ups on top would be the bottleneck before the relay. This
//! one stamps SENDs straight into quinn-proto's datagram queue, sends what
//! [`poll_transmit`](quinn_proto::Connection::poll_transmit) produces with one `sendmmsg` per
//! batch, and reads with one `recvmmsg` per turn; quinn-proto's own packet processing and
//! `ring`'s AES-GCM are all that is left.
//!
//! # Protocol (the relay's, `boson_dataplane_proto::quic`)
//!
//! What goes on the control stream and in the datagrams is the node agent's own
//! (`boson_node::quic`: the AUTH frame, the control stream's reader, the SEND and RECV
//! datagrams); this module is the I/O around it.
//!
//! ALPN `boson-relay/1`, TLS 1.3 trusting the certificate the caller gives. On connect the
//! client opens its one bidirectional stream and writes AUTH (`[len: 2][0x05][token]`); the
//! relay answers READY (`[00 11][0x07][node]`). From then on SENDs go out as DATAGRAM frames
//! (`[0x01][dest][packet]`) and RECVs come in the same way (`[0x02][src][packet]`); notices
//! (PEER_GONE, PEER_PRESENT, RECONNECT_HINT) come on the stream.
//!
//! # Sizes
//!
//! The client never discovers the path MTU: its packets stay at QUIC's initial 1200 bytes, so
//! a DATAGRAM frame carries at most [`MAX_PACKET`] bytes of packet behind the 17-byte relay
//! prefix on every connection, before and after the relay's own discovery. A larger packet is
//! refused when the node connects, not dropped later.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use boson_dataplane_proto::quic::ALPN;
use boson_dataplane_proto::ws::relay::PREFIX_LEN;
use boson_node::quic::ControlStream;
use boson_node::ws::Event as RelayEvent;
use boson_shared::NodeId;
use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event, ReadError, SendDatagramError, StreamEvent, StreamId, TransportConfig,
    VarInt,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::clock;
use crate::mmsg::{RecvBatch, SendBatch, Wait};

/// Largest packet (what a RECV delivers) the client offers: a DATAGRAM frame in a 1200-byte
/// QUIC packet has room for 1 162 bytes of datagram with 8-byte connection IDs (quinn's
/// `Datagrams::max_size`), less the relay prefix of 17, rounded down to leave the 3 bytes
/// quinn keeps for longer packet numbers. Checked against the live connection on connect.
pub const MAX_PACKET: usize = 1145;

/// The name the relay's certificate is issued for (bosonserver's development certificate and
/// the baseline's).
pub const SERVER_NAME: &str = "localhost";

/// Datagrams one `recvmmsg` takes at most.
const RECV_BATCH: usize = 32;

/// Bytes per receive slot: above any QUIC packet the relay sends on loopback (its path MTU
/// discovery stops at 1452).
const RECV_SLOT: usize = 2048;

/// Transmits staged for one `sendmmsg` at most.
const SEND_BATCH: usize = 32;

/// Bytes of outbound datagrams quinn queues per connection before refusing more: the relay's
/// default (`DEFAULT_DATAGRAM_SEND_BUFFER`), so the sender's queue is no deeper than the
/// relay's.
const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Requested socket receive buffer (the kernel caps it at `net.core.rmem_max`), as large as
/// bosonserver's listener's.
const SOCKET_RCVBUF: usize = 4 << 20;

/// The client side of TLS and transport, built once and shared by every node.
#[derive(Clone)]
pub struct ClientSetup(ClientConfig);

impl std::fmt::Debug for ClientSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSetup")
    }
}

impl ClientSetup {
    /// Trusts the certificate(s) in `cert_pem` only; ALPN `boson-relay/1`, TLS 1.3 on `ring`.
    pub fn new(cert_pem: &[u8]) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem) {
            roots
                .add(cert.context("a malformed certificate PEM")?)
                .context("an unusable certificate")?;
        }
        ensure!(!roots.is_empty(), "no certificate in the PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with ring")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(crypto)
            .context("a QUIC client configuration")?;
        let mut transport = TransportConfig::default();
        transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
        transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        // One UDP datagram per transmit: `sendmmsg` batches them instead of GSO.
        transport.enable_segmentation_offload(false);
        let mut config = ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(Self(config))
    }

    /// Reads the certificate PEM at `path`.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::new(&pem).with_context(|| format!("the certificate in {}", path.display()))
    }
}

/// What reading a node's socket and connection turned up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// UDP datagrams received (at most one `recvmmsg` batch of 32).
    pub datagrams_in: usize,
    /// UDP datagrams sent.
    pub datagrams_out: usize,
    /// PEER_GONE notices.
    pub peer_gone: u64,
    /// Control-stream messages that are not notices the generator expects.
    pub foreign: u64,
    /// The connection was lost during this poll.
    pub closed: bool,
}

impl Polled {
    /// Whether any datagram moved.
    pub const fn moved(&self) -> bool {
        self.datagrams_in > 0 || self.datagrams_out > 0
    }

    /// Whether the receive batch was full, so more may be waiting in the socket.
    pub const fn backlogged(&self) -> bool {
        self.datagrams_in >= RECV_BATCH
    }
}

/// One node's connection to the relay.
pub struct QuicNode {
    socket: UdpSocket,
    relay: SocketAddr,
    endpoint: Endpoint,
    handle: ConnectionHandle,
    conn: Connection,
    /// The node READY named.
    node: NodeId,
    token: String,
    control: Option<StreamId>,
    /// The control stream's reader (the node agent's), and its events.
    control_stream: ControlStream,
    events: Vec<RelayEvent>,
    /// The control stream broke: nothing more is read from it.
    control_broken: bool,
    ready: bool,
    lost: Option<ConnectionError>,
    /// quinn takes every UDP datagram as an owned `BytesMut`; this one is reclaimed once the
    /// views of the previous datagram are gone.
    rx: BytesMut,
    /// Endpoint responses (stateless resets) are written here and dropped: a client has
    /// nothing to answer.
    scratch: Vec<u8>,
    /// Staged transmits back to back, and their ends.
    tx: Vec<u8>,
    tx_ends: Vec<usize>,
    /// Staged transmits already sent, from the first.
    tx_sent: usize,
    /// One transmit's buffer for `poll_transmit`.
    transmit: Vec<u8>,
}

impl std::fmt::Debug for QuicNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNode")
            .field("node", &self.node)
            .field("relay", &self.relay)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl QuicNode {
    /// Connects to the relay at `relay` as `node` with `token` and waits for READY (which
    /// must name `node`), at most `timeout`. Fails if a `packet`-byte packet would not fit a
    /// DATAGRAM frame on this connection.
    pub fn connect(
        setup: &ClientSetup,
        relay: SocketAddr,
        node: NodeId,
        token: &str,
        packet: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let socket = socket(relay)?;
        // No path MTU discovery: the generator's packets stay at 1200 bytes (module doc).
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        let start = clock::now();
        let (handle, conn) = endpoint
            .connect(start, setup.0.clone(), relay, SERVER_NAME)
            .context("starting a QUIC connection")?;
        let mut this = Self {
            socket,
            relay,
            endpoint,
            handle,
            conn,
            node,
            token: token.to_owned(),
            control: None,
            control_stream: ControlStream::default(),
            events: Vec::new(),
            control_broken: false,
            ready: false,
            lost: None,
            rx: BytesMut::with_capacity(RECV_SLOT),
            scratch: Vec::new(),
            tx: Vec::with_capacity(SEND_BATCH * 1500),
            tx_ends: Vec::with_capacity(SEND_BATCH),
            tx_sent: 0,
            transmit: Vec::with_capacity(1500),
        };
        let deadline = start + timeout;
        let mut io = NodeIo::new();
        loop {
            let now = clock::now();
            let polled = this.poll(now, &mut io, &mut |_| {})?;
            if let Some(reason) = &this.lost {
                bail!("the connection ended before READY: {reason}");
            }
            if this.ready {
                break;
            }
            ensure!(now < deadline, "no READY within {timeout:?}");
            if !polled.moved() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let max = this.conn.datagrams().max_size().unwrap_or(0);
        ensure!(
            PREFIX_LEN + packet <= max,
            "a {packet}-byte packet makes a {}-byte DATAGRAM frame, and this connection carries \
             at most {max} (packets of at most {} bytes fit)",
            PREFIX_LEN + packet,
            max.saturating_sub(PREFIX_LEN)
        );
        Ok(this)
    }

    /// The node READY named.
    pub const fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether the connection is still up.
    pub const fn is_open(&self) -> bool {
        self.lost.is_none()
    }

    /// Largest DATAGRAM frame this connection takes now.
    pub fn max_datagram(&mut self) -> Option<usize> {
        self.conn.datagrams().max_size()
    }

    /// The local UDP port (for `/proc/net/udp`).
    pub fn local_port(&self) -> u16 {
        self.socket.local_addr().map_or(0, |addr| addr.port())
    }

    /// Queues one DATAGRAM frame. `Err(datagram)` hands it back when quinn's send buffer is
    /// full (the congestion window is: try again after a poll); a datagram that can never be
    /// sent (too large, connection lost) is an error.
    pub fn send(&mut self, datagram: Bytes) -> Result<(), SendError> {
        if self.lost.is_some() {
            return Err(SendError::Closed);
        }
        match self.conn.datagrams().send(datagram, false) {
            Ok(()) => Ok(()),
            Err(SendDatagramError::Blocked(datagram)) => Err(SendError::Blocked(datagram)),
            Err(
                SendDatagramError::TooLarge
                | SendDatagramError::UnsupportedByPeer
                | SendDatagramError::Disabled,
            ) => Err(SendError::Refused),
        }
    }

    /// One turn: receives what the socket holds (one `recvmmsg`), fires due timers, handles
    /// quinn's events (every DATAGRAM frame received goes to `on_datagram`) and sends what
    /// quinn has to send.
    pub fn poll(
        &mut self,
        now: Instant,
        io: &mut NodeIo,
        on_datagram: &mut impl FnMut(Bytes),
    ) -> anyhow::Result<Polled> {
        let mut polled = Polled::default();
        let received = io
            .recv
            .recv(&self.socket, Wait::No)
            .context("receiving from the relay")?;
        for i in 0..received {
            let data = io.recv.packet(i);
            self.rx.reserve(data.len());
            self.rx.extend_from_slice(data);
            let datagram = self.rx.split();
            self.scratch.clear();
            match self
                .endpoint
                .handle(now, self.relay, None, None, datagram, &mut self.scratch)
            {
                Some(DatagramEvent::ConnectionEvent(_, event)) => self.conn.handle_event(event),
                Some(DatagramEvent::NewConnection(_) | DatagramEvent::Response(_)) | None => {}
            }
            self.events(now, &mut polled, on_datagram);
        }
        polled.datagrams_in = received;
        if self.conn.poll_timeout().is_some_and(|at| at <= now) {
            self.conn.handle_timeout(now);
        }
        self.events(now, &mut polled, on_datagram);
        polled.datagrams_out = self
            .flush(now, &mut io.sends)
            .context("sending to the relay")?;
        Ok(polled)
    }

    /// Sends what quinn has to send now (after [`send`](Self::send)); returns the UDP
    /// datagrams sent.
    pub fn transmit(&mut self, now: Instant, io: &mut NodeIo) -> anyhow::Result<usize> {
        self.flush(now, &mut io.sends)
            .context("sending to the relay")
    }

    /// Closes the connection (code 0) and sends the CONNECTION_CLOSE; best effort.
    pub fn close(&mut self, io: &mut NodeIo) {
        let now = clock::now();
        if self.lost.is_none() {
            self.conn.close(now, VarInt::from_u32(0), Bytes::new());
        }
        let _ = self.flush(now, &mut io.sends);
    }

    /// Endpoint events, then connection events, then DATAGRAM frames received.
    fn events(&mut self, now: Instant, polled: &mut Polled, on_datagram: &mut impl FnMut(Bytes)) {
        while let Some(event) = self.conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(self.handle, event) {
                self.conn.handle_event(event);
            }
        }
        while let Some(event) = self.conn.poll() {
            match event {
                Event::Connected => {
                    if let Err(error) = self.send_auth() {
                        self.conn
                            .close(now, VarInt::from_u32(0), Bytes::from(error.to_string()));
                    }
                }
                Event::ConnectionLost { reason } => {
                    polled.closed = self.lost.is_none();
                    self.lost = Some(reason);
                }
                Event::Stream(StreamEvent::Readable { id }) if Some(id) == self.control => {
                    self.read_control(polled);
                }
                Event::Stream(_)
                | Event::HandshakeDataReady
                | Event::DatagramReceived
                | Event::DatagramsUnblocked => {}
            }
        }
        while let Some(datagram) = self.conn.datagrams().recv() {
            on_datagram(datagram);
        }
    }

    /// Opens the control stream and writes AUTH.
    fn send_auth(&mut self) -> anyhow::Result<()> {
        let id = self
            .conn
            .streams()
            .open(Dir::Bi)
            .context("the relay grants no stream")?;
        self.control = Some(id);
        let frame = ControlStream::auth(&self.token).context("the token is too long")?;
        let written = self
            .conn
            .send_stream(id)
            .write(&frame)
            .context("writing AUTH")?;
        ensure!(written == frame.len(), "AUTH did not fit the stream window");
        Ok(())
    }

    /// Reads the control stream and handles every whole message.
    fn read_control(&mut self, polled: &mut Polled) {
        let Some(id) = self.control else { return };
        if self.control_broken {
            return;
        }
        let mut stream = self.conn.recv_stream(id);
        let mut ended = false;
        let ignored = self.control_stream.ignored;
        if let Ok(mut chunks) = stream.read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => {
                        if self
                            .control_stream
                            .handle(&chunk.bytes, &mut self.events)
                            .is_err()
                        {
                            polled.foreign += 1;
                            self.control_broken = true;
                            break;
                        }
                    }
                    Ok(None) | Err(ReadError::Reset(_)) => {
                        ended = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                }
            }
            let _ = chunks.finalize();
        }
        polled.foreign += self.control_stream.ignored - ignored;
        for event in self.events.drain(..) {
            match event {
                RelayEvent::Ready(node) if !self.ready && node == self.node => self.ready = true,
                RelayEvent::PeerGone(_) => polled.peer_gone += 1,
                RelayEvent::PeerPresent(_) | RelayEvent::ReconnectHint | RelayEvent::Rtt(_) => {}
                RelayEvent::Ready(_) | RelayEvent::Closed(_) => polled.foreign += 1,
            }
        }
        if ended && self.lost.is_none() {
            // The relay never finishes its side: an ended control stream means trouble.
            polled.foreign += 1;
        }
    }

    /// Sends what was staged and not sent, then what quinn has, up to [`SEND_BATCH`]
    /// transmits per `sendmmsg`; returns the UDP datagrams sent. A full socket buffer keeps
    /// the rest staged for the next call.
    fn flush(&mut self, now: Instant, sends: &mut SendBatch) -> io::Result<usize> {
        let mut sent = 0;
        loop {
            if self.tx_sent == self.tx_ends.len() {
                self.tx.clear();
                self.tx_ends.clear();
                self.tx_sent = 0;
                while self.tx_ends.len() < SEND_BATCH {
                    self.transmit.clear();
                    let Some(transmit) = self.conn.poll_transmit(now, 1, &mut self.transmit) else {
                        break;
                    };
                    self.tx.extend_from_slice(
                        &self.transmit[..transmit.size.min(self.transmit.len())],
                    );
                    self.tx_ends.push(self.tx.len());
                }
                if self.tx_ends.is_empty() {
                    return Ok(sent);
                }
            }
            let mut packets = [&[][..]; SEND_BATCH];
            let mut start = if self.tx_sent == 0 {
                0
            } else {
                self.tx_ends[self.tx_sent - 1]
            };
            let pending = &self.tx_ends[self.tx_sent..];
            for (slot, &end) in packets.iter_mut().zip(pending) {
                *slot = &self.tx[start..end];
                start = end;
            }
            let took = sends.send(&self.socket, None, packets[..pending.len()].iter().copied())?;
            if took == 0 {
                return Ok(sent);
            }
            self.tx_sent += took;
            sent += took;
        }
    }
}

/// The batched system calls' scratch space, owned by the thread that polls the nodes and
/// shared by all of them.
pub struct NodeIo {
    recv: RecvBatch,
    sends: SendBatch,
}

impl std::fmt::Debug for NodeIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeIo")
    }
}

impl NodeIo {
    /// Room for one `recvmmsg` and one `sendmmsg` batch.
    pub fn new() -> Self {
        Self {
            recv: RecvBatch::new(RECV_BATCH, RECV_SLOT),
            sends: SendBatch::new(SEND_BATCH),
        }
    }
}

impl Default for NodeIo {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a datagram was not queued.
#[derive(Debug)]
pub enum SendError {
    /// quinn's send buffer is full; here is the datagram back.
    Blocked(Bytes),
    /// The connection cannot carry it (too large, or datagrams not offered).
    Refused,
    /// The connection is lost.
    Closed,
}

/// A SEND datagram to `dest` with a `packet`-byte packet of zeros (the generator stamps the
/// first [`STAMP_LEN`](crate::payload::STAMP_LEN) bytes of the packet).
pub fn send_template(dest: &NodeId, packet: usize) -> Vec<u8> {
    boson_node::quic::send_datagram(dest, &vec![0; packet])
}

/// The packet of a RECV datagram from `src`, if that is what `datagram` is.
pub fn recv_packet<'a>(datagram: &'a [u8], src: &NodeId) -> Option<&'a [u8]> {
    boson_node::quic::parse_recv(datagram)
        .filter(|(from, _)| from == src)
        .map(|(_, packet)| packet)
}

/// A non-blocking UDP socket on 127.0.0.1 connected to `relay`, with a large receive buffer.
fn socket(relay: SocketAddr) -> anyhow::Result<UdpSocket> {
    ensure!(
        relay.ip().is_loopback(),
        "the generator only talks to loopback, not {relay}"
    );
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(relay),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer only means earlier drops, which the generator reports.
    let _ = socket.set_recv_buffer_size(SOCKET_RCVBUF);
    let local: SocketAddr = if relay.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    socket.bind(&local.into())?;
    socket.connect(&relay.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use boson_dataplane_proto::quic::wire;
    use boson_dataplane_proto::ws::relay::{self, MessageType};

    use super::*;
    use crate::nodes::random_node;

    #[test]
    fn templates_are_sends_and_recvs_are_checked() {
        let dest = random_node();
        let template = send_template(&dest, 100);
        assert_eq!(template.len(), PREFIX_LEN + 100);
        assert_eq!(
            relay::Message::parse(&template),
            Ok(relay::Message::Send {
                dest,
                packet: &[0; 100]
            })
        );
        let src = random_node();
        let mut recv = Vec::new();
        wire::encode_datagram(MessageType::Recv, &src, b"packet", &mut recv);
        assert_eq!(recv_packet(&recv, &src), Some(&b"packet"[..]));
        assert_eq!(recv_packet(&recv, &dest), None, "another source");
        assert_eq!(recv_packet(&template, &dest), None, "not a RECV");
        assert_eq!(recv_packet(&[0x02, 1, 2], &src), None, "truncated");
    }

    #[test]
    fn certificates_are_required() {
        assert!(ClientSetup::new(b"").is_err());
        assert!(ClientSetup::new(b"-----BEGIN CERTIFICATE-----\nnot base64\n").is_err());
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).unwrap();
        assert!(ClientSetup::new(made.cert.pem().as_bytes()).is_ok());
    }
}
