//! `boson-icount SCENARIO SIZE ITERATIONS`: relays ITERATIONS packets of SIZE bytes through one
//! of the dataplane's sans-IO cores, in process and without sockets, so that
//! `benches/icount.sh` can count the instructions per relayed packet under valgrind's
//! callgrind. Callgrind collects only inside the functions of the [`measure`] module
//! (`--toggle-collect`), one call per packet; the set-up and the checks around them are not
//! counted. The first calls warm up (queues and tables grow to their steady size) and are
//! counted like the others: on success the program prints `calls N`, the number of measured
//! calls, which the script divides the total by. Instruction counts do not depend on the machine's load, which is
//! what makes them fit for CI on a shared machine where wall-clock figures are noise.
//!
//! The scenarios, each the hot path of one relay:
//!
//! * `turn-to-peer`: a ChannelData datagram from a client with a bound channel,
//!   [`Server::handle_client_input`] → [`ClientAction::Relay`];
//! * `turn-to-client`: a datagram from that peer on the relay port,
//!   [`Server::handle_peer_input`] → [`PeerAction::Forward`] (the ChannelData header written
//!   in place);
//! * `hub-local`: a WebSocket SEND frame from one node to another on the same core,
//!   [`Hub::handle_input`] → [`Forward::Local`], the hub's events, then
//!   [`Hub::poll_transmit`] of the RECV frame for the destination;
//! * `ws-shell`: the same SEND through the relay *shell* of a real worker over loopback TCP
//!   (socket reads and writes, framing, the hub, the write batching), see [`shell`]; callgrind
//!   collects inside `RelayShell::turn` instead, and `calls` is the frames relayed after the
//!   warm-up.
//!
//! * `cross-core`: a WebSocket RECV frame handed from one worker to another through the
//!   relay's cross-core ring, as the shell does it: the record encoded
//!   ([`CoreRecord::encode`]) and gathered into the ring ([`RingProducer::push_parts`]), then
//!   drained on the other side, copied out and parsed ([`CoreRecord::parse`]).
//!
//! Every iteration's outcome is checked (outside the measured functions); a run in which any
//! packet was not relayed exits non-zero, so a guard never measures a drop path by mistake.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use boson_channel::{RingConsumer, RingProducer};
use boson_dataplane_proto::stun::{
    AttrType, Class, Encoder, LongTermKey, Message, MessageType, Method, Nonce, Realm, Trailer,
    TransactionId, Username,
};
use boson_dataplane_proto::testing::XorShift;
use boson_dataplane_proto::turn::attr::{RequestedTransport, XorPeerAddress, XorRelayedAddress};
use boson_dataplane_proto::ws::frame::{OpCode, encode_masked};
use boson_dataplane_proto::ws::handoff::{CoreRecord, MAX_HEADER_LEN};
use boson_dataplane_proto::ws::relay::node_id;
use boson_dataplane_proto::ws::{Forward, LocalOnly};
use boson_dataplane_proto::{
    ClientAction, ClientAddr, ConnId, HEADROOM, Hub, HubEvent, PeerAction, PeerAddr, RelayPort,
    Server, TurnConfig, WsConfig,
};
use boson_shared::{NodeId, TurnCredential, TurnSecret};

mod shell;

/// Iterations before the measured ones, so queues and tables have grown to their steady size.
const WARM_UP: usize = 256;
const REALM: &str = "icount.test";
const UNIX_START: u64 = 1_700_000_000;
const CLIENT: &str = "192.0.2.10:40000";
const PEER: &str = "198.51.100.20:7000";
const CHANNEL: u16 = 0x4000;

/// The functions callgrind counts (`--toggle-collect=boson_icount::measure::*`): one relayed
/// packet each. Never inlined, so each is a symbol of its own.
mod measure {
    use super::{
        ClientAction, ClientAddr, ConnId, CoreRecord, Hub, HubEvent, Instant, LocalOnly,
        MAX_HEADER_LEN, NodeId, PeerAction, PeerAddr, RelayPort, RingConsumer, RingProducer,
        Server, XorShift,
    };

    /// One frame for `dest` through the ring, as `relay/cross_core.rs` pushes and drains it.
    /// Returns whether the frame that came out is the one that went in.
    #[inline(never)]
    pub(crate) fn cross_core(
        tx: &mut RingProducer,
        rx: &mut RingConsumer,
        dest: &NodeId,
        frame: &[u8],
        scratch: &mut Vec<u8>,
    ) -> bool {
        let mut header = [0; MAX_HEADER_LEN];
        let (header, body) = CoreRecord::Frame { dest: *dest, frame }.encode(&mut header);
        if tx.push_parts(&[header, body]).is_err() {
            return false;
        }
        let mut same = false;
        let drained = rx.drain(|record| {
            record.copy_to_vec(scratch);
            same = matches!(
                CoreRecord::parse(scratch),
                Ok(CoreRecord::Frame { dest: d, frame: f }) if d == *dest && f.len() == frame.len()
            );
        });
        same && drained == Ok(1)
    }

    #[inline(never)]
    pub(crate) fn turn_to_peer(
        server: &mut Server<XorShift>,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        server.handle_client_input(now, from, packet, out)
    }

    #[inline(never)]
    pub(crate) fn turn_to_client(
        server: &mut Server<XorShift>,
        now: Instant,
        port: RelayPort,
        from: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        server.handle_peer_input(now, port, from, buf, len)
    }

    /// SEND in on `from`, then what a shell does next: the hub's events, and every frame
    /// queued for `to` written out. Returns whether the SEND was relayed locally, and the
    /// bytes written out.
    #[inline(never)]
    pub(crate) fn hub_local(
        hub: &mut Hub<LocalOnly>,
        now: Instant,
        from: ConnId,
        to: ConnId,
        input: &mut [u8],
        out: &mut [u8],
    ) -> (bool, usize) {
        let local = match hub.handle_input(now, from, input) {
            Ok(input) => matches!(input.forward, Some(super::Forward::Local(_))),
            Err(_) => false,
        };
        let mut woken = false;
        while let Some(event) = hub.poll_event() {
            woken |= matches!(event, HubEvent::Wake { conn } if conn == to);
        }
        let mut written = 0;
        if woken {
            while let Some(len) = hub.poll_transmit(to, out) {
                written += len;
            }
        }
        (local, written)
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

/// A TURN server with one allocation for [`CLIENT`], channel [`CHANNEL`] bound to [`PEER`].
struct Turn {
    server: Server<XorShift>,
    now: Instant,
    client: ClientAddr,
    port: RelayPort,
}

impl Turn {
    fn new() -> Result<Self, String> {
        let secret = TurnSecret::new("icount");
        let config = TurnConfig::new(
            REALM,
            vec![secret.clone()],
            [203, 0, 113, 1].into(),
            50_000..=50_009,
        )
        .map_err(|e| format!("TURN config: {e}"))?;
        let now = epoch();
        let mut turn = Self {
            server: Server::new(config, XorShift(0x5EED), now, UNIX_START),
            now,
            client: ClientAddr::new(addr(CLIENT)?),
            port: RelayPort::new(0),
        };
        let credential = TurnCredential::mint(&secret, "icount", UNIX_START + 3600);
        let mut auth = Auth {
            key: LongTermKey::derive(&credential.username, REALM, &credential.password),
            username: credential.username,
            nonce: None,
            counter: 0,
        };
        let response = turn.request(&mut auth, Method::ALLOCATE, &|enc| {
            enc.add(&RequestedTransport::UDP).map_err(|e| e.to_string())
        })?;
        let relayed = Message::parse(&response)
            .ok()
            .and_then(|m| m.get::<XorRelayedAddress>().ok().flatten())
            .ok_or("Allocate: no XOR-RELAYED-ADDRESS")?;
        turn.port = RelayPort::new(relayed.0.port());
        let peer = addr(PEER)?;
        turn.request(&mut auth, Method::CHANNEL_BIND, &|enc| {
            enc.add_raw(
                AttrType::CHANNEL_NUMBER,
                &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0],
            )
            .map_err(|e| e.to_string())?;
            enc.add(&XorPeerAddress(peer)).map_err(|e| e.to_string())
        })?;
        while turn.server.next_command().is_some() {}
        Ok(turn)
    }

    /// An authenticated request (after the 401 that brings the nonce); the success response.
    fn request(
        &mut self,
        auth: &mut Auth,
        method: Method,
        attributes: &dyn Fn(&mut Encoder<'_>) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        for _ in 0..2 {
            auth.counter += 1;
            let mut tid = [0x77; 12];
            tid[..4].copy_from_slice(&auth.counter.to_be_bytes());
            let mut buf = vec![0u8; 2048];
            let mut enc = Encoder::new(
                &mut buf,
                MessageType::new(method, Class::Request),
                TransactionId::new(tid),
            )
            .map_err(|e| e.to_string())?;
            attributes(&mut enc)?;
            let mut trailer = Trailer::new();
            let realm = Realm::new(REALM).map_err(|e| e.to_string())?;
            if let Some(nonce) = &auth.nonce {
                enc.add(&Username::new(&auth.username).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                enc.add(&realm).map_err(|e| e.to_string())?;
                enc.add(&Nonce::new(nonce).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                trailer = trailer.with_integrity(auth.key.as_integrity_key());
            }
            let len = enc.finish(trailer).map_err(|e| e.to_string())?;
            let mut out = vec![0u8; 2048];
            let action =
                self.server
                    .handle_client_input(self.now, self.client, &buf[..len], &mut out);
            let ClientAction::Reply { len, .. } = action else {
                return Err(format!("{method:?}: no response but {action:?}"));
            };
            out.truncate(len);
            let message = Message::parse(&out).map_err(|e| e.to_string())?;
            if message.class() == Class::SuccessResponse {
                return Ok(out);
            }
            auth.nonce = message
                .get::<Nonce<'_>>()
                .ok()
                .flatten()
                .map(|n| n.as_str().to_owned());
        }
        Err(format!("{method:?} did not succeed"))
    }
}

/// A client's long-term credential and the nonce it learnt.
struct Auth {
    username: String,
    key: LongTermKey,
    nonce: Option<String>,
    counter: u32,
}

fn turn_to_peer(size: usize, iterations: usize) -> Result<(), String> {
    let mut turn = Turn::new()?;
    let mut packet = CHANNEL.to_be_bytes().to_vec();
    packet.extend_from_slice(
        &u16::try_from(size)
            .map_err(|e| e.to_string())?
            .to_be_bytes(),
    );
    packet.resize(4 + size, 0xA5);
    let mut out = vec![0u8; 2048];
    let peer = PeerAddr::new(addr(PEER)?);
    let mut relayed = 0;
    for i in 0..WARM_UP + iterations {
        let action =
            measure::turn_to_peer(&mut turn.server, turn.now, turn.client, &packet, &mut out);
        let ok = matches!(action, ClientAction::Relay { port, peer: p, ref payload }
            if port == turn.port && p == peer && payload.len() == size);
        if i >= WARM_UP && ok {
            relayed += 1;
        }
    }
    check(relayed, iterations)
}

fn turn_to_client(size: usize, iterations: usize) -> Result<(), String> {
    let mut turn = Turn::new()?;
    let peer = PeerAddr::new(addr(PEER)?);
    let mut buf = vec![0xA5u8; HEADROOM + size + 4];
    let mut relayed = 0;
    for i in 0..WARM_UP + iterations {
        let action =
            measure::turn_to_client(&mut turn.server, turn.now, turn.port, peer, &mut buf, size);
        let ok = matches!(action, PeerAction::Forward { dst, ref range }
            if dst == turn.client && range.len() == size + 4);
        if i >= WARM_UP && ok {
            relayed += 1;
        }
    }
    check(relayed, iterations)
}

/// The relay's cross-core ring at its default size: `WARM_UP + iterations` frames of `size`
/// bytes from one worker to another, each drained before the next (a worker drains its
/// inbound rings every turn).
fn cross_core(size: usize, iterations: usize) -> Result<(), String> {
    let (mut tx, mut rx) =
        boson_channel::private_ring(4 << 20).map_err(|e| format!("a ring: {e}"))?;
    let dest = NodeId::from_bytes([0xBB; 16]);
    let frame = vec![0x5A; size];
    let mut scratch = Vec::new();
    let mut relayed = 0;
    for _ in 0..WARM_UP + iterations {
        relayed += usize::from(measure::cross_core(
            &mut tx,
            &mut rx,
            &dest,
            &frame,
            &mut scratch,
        ));
    }
    check(relayed, WARM_UP + iterations)
}

fn hub_local(size: usize, iterations: usize) -> Result<(), String> {
    let now = epoch();
    let mut hub = Hub::new(WsConfig::new(), LocalOnly, now);
    let mut out = vec![0u8; 64 * 1024];
    let a = join(&mut hub, now, [0xAA; 16], &mut out)?;
    let b = join(&mut hub, now, [0xBB; 16], &mut out)?;
    let mut message = vec![0x01];
    message.extend_from_slice(&[0xBB; 16]);
    message.resize(1 + 16 + size, 0xA5);
    let frame = client_frame(&message)?;
    let mut input = frame.clone();
    let mut relayed = 0;
    for i in 0..WARM_UP + iterations {
        input.copy_from_slice(&frame);
        let (local, written) = measure::hub_local(&mut hub, now, a, b, &mut input, &mut out);
        if i >= WARM_UP && local && written >= 1 + 16 + size {
            relayed += 1;
        }
    }
    check(relayed, iterations)
}

/// A node connected, upgraded and authenticated (the token in an AUTH message), its
/// handshake response and READY written out.
fn join(
    hub: &mut Hub<LocalOnly>,
    now: Instant,
    node: [u8; 16],
    out: &mut [u8],
) -> Result<ConnId, String> {
    let conn = hub.handle_connect(now);
    let mut input = b"GET /relay HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    input.extend_from_slice(&client_frame(b"\x05token")?);
    let mut at = 0;
    while at < input.len() {
        let consumed = hub
            .handle_input(now, conn, &mut input[at..])
            .map_err(|e| e.to_string())?
            .consumed;
        if consumed == 0 {
            return Err("the hub did not take the handshake".into());
        }
        at += consumed;
    }
    let mut asked = false;
    while let Some(event) = hub.poll_event() {
        asked |= matches!(event, HubEvent::Authenticate { conn: c, .. } if c == conn);
    }
    if !asked {
        return Err("no AUTH event".into());
    }
    hub.accept(now, conn, node_id(node))
        .map_err(|e| e.to_string())?;
    while hub.poll_event().is_some() {}
    while hub.poll_transmit(conn, out).is_some() {}
    Ok(conn)
}

fn client_frame(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; payload.len() + 14];
    let len = encode_masked(
        true,
        OpCode::Binary,
        [0x12, 0x34, 0x56, 0x78],
        payload,
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    out.truncate(len);
    Ok(out)
}

fn check(relayed: usize, iterations: usize) -> Result<(), String> {
    if relayed == iterations {
        Ok(())
    } else {
        Err(format!("relayed {relayed} of {iterations} packets"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: boson-icount turn-to-peer|turn-to-client|hub-local|cross-core|ws-shell SIZE ITERATIONS";
    let [scenario, size, iterations] = args.as_slice() else {
        let _ = writeln!(std::io::stderr(), "{usage}");
        return ExitCode::from(2);
    };
    let (Ok(size), Ok(iterations)) = (size.parse::<usize>(), iterations.parse::<usize>()) else {
        let _ = writeln!(std::io::stderr(), "{usage}");
        return ExitCode::from(2);
    };
    // What the counts are divided by: every call of the measured function (for `ws-shell`,
    // every frame relayed after the warm-up).
    let result = match scenario.as_str() {
        "turn-to-peer" => turn_to_peer(size, iterations).map(|()| WARM_UP + iterations),
        "turn-to-client" => turn_to_client(size, iterations).map(|()| WARM_UP + iterations),
        "hub-local" => hub_local(size, iterations).map(|()| WARM_UP + iterations),
        "cross-core" => cross_core(size, iterations).map(|()| WARM_UP + iterations),
        "ws-shell" => shell::ws_shell(size, iterations),
        _ => Err(usage.to_owned()),
    };
    match result {
        Ok(calls) => {
            let _ = writeln!(std::io::stdout(), "calls {calls}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "boson-icount {scenario}: {error}");
            ExitCode::FAILURE
        }
    }
}
