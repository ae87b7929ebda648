//! A QUIC relay and quinn-proto clients on a simulated wire, in virtual time, with the test
//! playing the shell: no sockets, no clock.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boson_dataplane_proto::quic::{
    ALPN, CloseReason, Delivery, DropReason, QuicConfig, QuicConnId, QuicEvent, QuicRelay, wire,
};
use boson_dataplane_proto::ws::relay::{Message, MessageType};
use boson_shared::NodeId;
use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event, SendDatagramError, StreamEvent, StreamId, TransportConfig,
};
use rustls::pki_types::CertificateDer;

pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 8443);

thread_local! {
    /// Set while the harness is inside a call to the relay, for allocation counting.
    pub static IN_RELAY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a call into the relay, with [`IN_RELAY`] set.
pub fn relay_scope<T>(f: impl FnOnce() -> T) -> T {
    IN_RELAY.set(true);
    let out = f();
    IN_RELAY.set(false);
    out
}

/// An arbitrary origin for virtual time: only differences from it matter.
#[expect(
    clippy::disallowed_methods,
    reason = "tests need some Instant to start virtual time from; its value never matters"
)]
pub fn epoch() -> Instant {
    Instant::now()
}

pub fn node(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; 16])
}

/// A relay configuration with a fresh self-signed certificate for "localhost", and that
/// certificate.
pub fn config() -> (QuicConfig, CertificateDer<'static>) {
    QuicConfig::self_signed(&["localhost"]).unwrap()
}

/// A quinn client configuration trusting `cert`, offering the relay's ALPN; `datagrams`:
/// whether it offers DATAGRAM frames.
pub fn client_config(cert: &CertificateDer<'static>, datagrams: bool) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = TransportConfig::default();
    if !datagrams {
        transport.datagram_receive_buffer_size(None);
    }
    config.transport_config(Arc::new(transport));
    config
}

/// A control-stream message the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Ready(NodeId),
    PeerGone(NodeId),
    PeerPresent(NodeId),
    ReconnectHint,
}

/// One relay client: a quinn endpoint with one connection to the relay.
pub struct Client {
    pub addr: SocketAddr,
    endpoint: Endpoint,
    handle: ConnectionHandle,
    pub conn: Connection,
    pub stream: Option<StreamId>,
    control_in: Vec<u8>,
    control_out: Vec<u8>,
    fin_pending: bool,
    pub notices: Vec<Notice>,
    /// RECVs not yet taken by the test: `(src, packet)`.
    pub recvs: VecDeque<(NodeId, Bytes)>,
    pub connected: bool,
    pub lost: Option<ConnectionError>,
    pub drained: bool,
    /// Drops every datagram to it (and so never acknowledges anything).
    pub deaf: bool,
    /// The application reads received datagrams.
    pub reads_datagrams: bool,
    scratch: Vec<u8>,
}

impl Client {
    pub fn new(id: u8, config: ClientConfig, now: Instant) -> Self {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[id; 32]);
        let mut endpoint = Endpoint::new(
            Arc::new(EndpointConfig::new(Arc::new(key))),
            None,
            true,
            Some([id; 32]),
        );
        let (handle, conn) = endpoint.connect(now, config, SERVER, "localhost").unwrap();
        Self {
            addr: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, id)),
                40_000 + u16::from(id),
            ),
            endpoint,
            handle,
            conn,
            stream: None,
            control_in: Vec::new(),
            control_out: Vec::new(),
            fin_pending: false,
            notices: Vec::new(),
            recvs: VecDeque::new(),
            connected: false,
            lost: None,
            drained: false,
            deaf: false,
            reads_datagrams: true,
            scratch: Vec::new(),
        }
    }

    /// Opens the control stream and writes AUTH.
    pub fn authenticate(&mut self, token: &[u8]) {
        let mut message = vec![MessageType::Auth as u8];
        message.extend_from_slice(token);
        let mut frame = Vec::new();
        wire::encode_control(&message, &mut frame).unwrap();
        self.write_control(&frame);
    }

    /// Writes raw bytes on the control stream, opening it once the handshake allows.
    pub fn write_control(&mut self, bytes: &[u8]) {
        self.control_out.extend_from_slice(bytes);
        self.flush_control();
    }

    pub fn finish_control(&mut self) {
        self.fin_pending = true;
        self.flush_control();
    }

    fn flush_control(&mut self) {
        if self.stream.is_none() {
            if self.control_out.is_empty() && !self.fin_pending {
                return;
            }
            // Before the server's transport parameters arrive no stream may be opened.
            let Some(id) = self.conn.streams().open(Dir::Bi) else {
                return;
            };
            self.stream = Some(id);
        }
        let id = self.stream.unwrap();
        if !self.control_out.is_empty() {
            let written = self.conn.send_stream(id).write(&self.control_out).unwrap();
            self.control_out.drain(..written);
        }
        if self.fin_pending && self.control_out.is_empty() {
            self.conn.send_stream(id).finish().unwrap();
            self.fin_pending = false;
        }
    }

    /// Queues a SEND datagram.
    pub fn send(&mut self, dest: &NodeId, packet: &[u8]) -> Result<(), SendDatagramError> {
        let mut datagram = BytesMut::new();
        wire::encode_datagram(MessageType::Send, dest, packet, &mut datagram);
        self.send_raw(datagram.freeze())
    }

    pub fn send_raw(&mut self, datagram: Bytes) -> Result<(), SendDatagramError> {
        self.conn.datagrams().send(datagram, false)
    }

    pub fn is_ready(&self) -> bool {
        self.notices.iter().any(|n| matches!(n, Notice::Ready(_)))
    }

    /// The application close the relay sent, if it closed: `(code, reason)`.
    pub fn closed_by_relay(&self) -> Option<(u64, String)> {
        match &self.lost {
            Some(ConnectionError::ApplicationClosed(close)) => Some((
                close.error_code.into_inner(),
                String::from_utf8_lossy(&close.reason).into_owned(),
            )),
            _ => None,
        }
    }

    fn handle_udp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if self.deaf {
            return;
        }
        self.scratch.clear();
        match self.endpoint.handle(
            now,
            from,
            None,
            None,
            BytesMut::from(data),
            &mut self.scratch,
        ) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) if handle == self.handle => {
                self.conn.handle_event(event);
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.endpoint.ignore(incoming),
            Some(DatagramEvent::ConnectionEvent(..) | DatagramEvent::Response(_)) | None => {}
        }
        self.process();
    }

    fn process(&mut self) {
        loop {
            if let Some(event) = self.conn.poll() {
                match event {
                    Event::Connected => {
                        self.connected = true;
                        self.flush_control();
                    }
                    Event::ConnectionLost { reason } => self.lost = Some(reason),
                    Event::Stream(StreamEvent::Readable { id }) if Some(id) == self.stream => {
                        self.read_control();
                    }
                    Event::DatagramReceived => self.read_datagrams(),
                    Event::Stream(_) | Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
                }
                continue;
            }
            let Some(event) = self.conn.poll_endpoint_events() else {
                break;
            };
            if event.is_drained() {
                self.drained = true;
            }
            if let Some(back) = self.endpoint.handle_event(self.handle, event) {
                self.conn.handle_event(back);
            }
        }
    }

    fn read_control(&mut self) {
        let id = self.stream.unwrap();
        let mut stream = self.conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            return;
        };
        while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
            self.control_in.extend_from_slice(&chunk.bytes);
        }
        let _ = chunks.finalize();
        while let Some((message, len)) = wire::parse_control(&self.control_in).unwrap() {
            let notice = match Message::parse(message).unwrap() {
                Message::Ready(node) => Notice::Ready(node),
                Message::PeerGone(node) => Notice::PeerGone(node),
                Message::PeerPresent(node) => Notice::PeerPresent(node),
                Message::ReconnectHint => Notice::ReconnectHint,
                other @ (Message::Send { .. }
                | Message::Recv { .. }
                | Message::Auth { .. }
                | Message::Forward { .. }
                | Message::Gone { .. }) => {
                    panic!("unexpected control message {other:?}")
                }
            };
            self.notices.push(notice);
            self.control_in.drain(..len);
        }
    }

    pub fn read_datagrams(&mut self) {
        if !self.reads_datagrams {
            return;
        }
        while let Some(datagram) = self.conn.datagrams().recv() {
            let Message::Recv { src, .. } = Message::parse(&datagram).unwrap() else {
                panic!("unexpected datagram {datagram:?}");
            };
            self.recvs.push_back((src, datagram.slice(17..)));
        }
    }

    /// The client's first UDP datagram (its Initial), taken off the wire.
    pub fn first_datagram(&mut self, now: Instant) -> Vec<u8> {
        let mut buf = Vec::new();
        let len = self.poll_transmit(now, &mut buf).unwrap();
        buf.truncate(len);
        buf
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        buf.clear();
        let transmit = self.conn.poll_transmit(now, 1, buf)?;
        self.process();
        Some(transmit.size)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|at| at <= now) {
            self.conn.handle_timeout(now);
            self.process();
        }
    }
}

/// What the token says: accept as this node, or reject. Tokens not listed get no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept(NodeId),
    Reject,
}

/// The test's shell: token verdicts, routing, and a log of what it saw.
#[derive(Debug, Default)]
pub struct Shell {
    pub verdicts: BTreeMap<Vec<u8>, Verdict>,
    /// Tokens with no verdict listed: `(conn, token)`.
    pub pending: Vec<(QuicConnId, Bytes)>,
    pub authenticated: Vec<(QuicConnId, NodeId)>,
    pub closed: Vec<(QuicConnId, Option<NodeId>, CloseReason)>,
    pub sends: u64,
    pub queued: u64,
    pub gone: u64,
    pub dropped: BTreeMap<DropReason, u64>,
}

/// One in-flight UDP datagram.
struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// The relay, its clients and the wire between them.
pub struct Sim {
    pub now: Instant,
    pub relay: QuicRelay,
    pub clients: Vec<Client>,
    pub shell: Shell,
    /// One-way delay of every datagram.
    pub latency: Duration,
    wire: VecDeque<Datagram>,
    buf: Vec<u8>,
    /// UDP datagrams the relay sent, and to whom (for the garbage tests).
    pub relay_sent: Vec<SocketAddr>,
}

impl Sim {
    pub fn new(config: QuicConfig) -> Self {
        let now = epoch();
        Self {
            now,
            relay: QuicRelay::new(config, now, [7; 32]),
            clients: Vec::new(),
            shell: Shell::default(),
            latency: Duration::from_millis(1),
            wire: VecDeque::new(),
            buf: Vec::new(),
            relay_sent: Vec::new(),
        }
    }

    /// Adds a client and starts its handshake; returns its index.
    pub fn connect(&mut self, id: u8, config: ClientConfig) -> usize {
        self.clients.push(Client::new(id, config, self.now));
        self.clients.len() - 1
    }

    /// A client that connects, authenticates with `token`, and runs until READY (or until
    /// the relay closed it), with `token` accepted as `node` by the shell.
    pub fn join(&mut self, id: u8, cert: &CertificateDer<'static>, node: NodeId) -> usize {
        let token = format!("token-{id}").into_bytes();
        self.shell
            .verdicts
            .insert(token.clone(), Verdict::Accept(node));
        let client = self.connect(id, client_config(cert, true));
        self.clients[client].authenticate(&token);
        self.run_until_ready(client);
        client
    }

    pub fn run_until_ready(&mut self, client: usize) {
        let deadline = self.now + Duration::from_secs(5);
        while !self.clients[client].is_ready()
            && self.clients[client].lost.is_none()
            && self.now < deadline
        {
            self.run_for(Duration::from_millis(1));
        }
        assert!(self.clients[client].is_ready(), "client {client} not ready");
    }

    /// Feeds one UDP datagram to the relay as the shell would, and acts on the events.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        relay_scope(|| self.relay.handle_datagram(self.now, from, None, data));
        self.drain_relay();
    }

    /// Processes everything due up to `now + duration`, stepping to each timer and
    /// arrival on the way.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        // Timers that stay due without time moving are a bug, not a reason to spin.
        let mut stuck = 0;
        loop {
            let before = self.now;
            while self.step() {}
            let next = [self.wire.front().map(|d| d.at), self.relay.poll_timeout()]
                .into_iter()
                .chain(self.clients.iter_mut().map(Client::poll_timeout))
                .flatten()
                .min();
            match next {
                Some(at) if at <= deadline => {
                    self.now = self.now.max(at);
                    stuck = if self.now == before { stuck + 1 } else { 0 };
                    assert!(stuck < 10_000, "timers due at {at:?} never clear");
                }
                _ => {
                    self.now = deadline;
                    self.fire_timers();
                    while self.step() {}
                    return;
                }
            }
            self.fire_timers();
        }
    }

    fn fire_timers(&mut self) {
        if self.relay.poll_timeout().is_some_and(|at| at <= self.now) {
            relay_scope(|| self.relay.handle_timeout(self.now));
            self.drain_relay();
        }
        for client in &mut self.clients {
            client.handle_timeout(self.now);
        }
    }

    /// One round of work at `now`; whether anything happened.
    fn step(&mut self) -> bool {
        let mut busy = false;
        for client in &mut self.clients {
            while let Some(len) = client.poll_transmit(self.now, &mut self.buf) {
                busy = true;
                self.wire.push_back(Datagram {
                    at: self.now + self.latency,
                    from: client.addr,
                    to: SERVER,
                    data: self.buf[..len].to_vec(),
                });
            }
        }
        while let Some(transmit) = relay_scope(|| self.relay.poll_transmit(self.now, &mut self.buf))
        {
            busy = true;
            let data = &self.buf[..transmit.len];
            let size = transmit.segment_size.unwrap_or(transmit.len).max(1);
            for segment in data.chunks(size) {
                self.relay_sent.push(transmit.dst);
                self.wire.push_back(Datagram {
                    at: self.now + self.latency,
                    from: SERVER,
                    to: transmit.dst,
                    data: segment.to_vec(),
                });
            }
        }
        while self.wire.front().is_some_and(|d| d.at <= self.now) {
            busy = true;
            let Some(datagram) = self.wire.pop_front() else {
                break;
            };
            if datagram.to == SERVER {
                self.inject(datagram.from, &datagram.data);
            } else if let Some(client) = self.clients.iter_mut().find(|c| c.addr == datagram.to) {
                client.handle_udp(self.now, datagram.from, &datagram.data);
            }
        }
        busy
    }

    /// Acts on the relay's events as the shell does.
    pub fn drain_relay(&mut self) {
        let now = self.now;
        while let Some(event) = relay_scope(|| self.relay.poll_event()) {
            match event {
                QuicEvent::Authenticate { conn, token } => {
                    match self.shell.verdicts.get(token.as_ref()).copied() {
                        Some(Verdict::Accept(node)) => {
                            relay_scope(|| self.relay.accept(now, conn, node)).unwrap();
                            self.shell.authenticated.push((conn, node));
                        }
                        Some(Verdict::Reject) => self.relay.reject(now, conn).unwrap(),
                        None => self.shell.pending.push((conn, token)),
                    }
                }
                QuicEvent::Send {
                    conn,
                    src,
                    dest,
                    packet,
                } => {
                    self.shell.sends += 1;
                    if self.relay.is_connected(&dest) {
                        match relay_scope(|| self.relay.deliver(now, &dest, &src, &packet)) {
                            Delivery::Queued => self.shell.queued += 1,
                            Delivery::Dropped(reason) => {
                                *self.shell.dropped.entry(reason).or_default() += 1;
                            }
                            Delivery::Gone => panic!("connected but gone"),
                        }
                    } else {
                        self.shell.gone += 1;
                        let _ = relay_scope(|| self.relay.peer_gone(now, conn, &dest));
                    }
                }
                QuicEvent::Closed { conn, node, reason } => {
                    self.shell.closed.push((conn, node, reason));
                }
            }
        }
    }
}
