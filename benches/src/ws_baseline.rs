//! The WebSocket relay baseline: the plain tokio + tokio-tungstenite relay a competent
//! engineer would write, speaking exactly bosonserver's relay framing
//! (`boson_dataplane_proto::ws::relay`), so *ours / baseline* prices our design, not a
//! different protocol.
//!
//! # What it does
//!
//! * A multi-thread tokio runtime with `--workers` threads (the same count as the server it
//!   is compared with), and a task per connection.
//! * `TCP_NODELAY`; tungstenite's limits set to the relay's 64 KiB message cap (message and
//!   frame), its other settings at their defaults (128 KiB read buffer, writes buffered to
//!   128 KiB until flushed).
//! * The upgrade must ask for [`PATH`] (else 404). The token comes in `Authorization: Bearer`
//!   on the upgrade (a bad one answers 401) or in the first message, AUTH (0x05) or a text
//!   message, within 10 s (a bad one closes with 1008). It is an HS256 JWT as the control
//!   plane issues it, verified with the secret on the command line
//!   ([`TokenKeys::verify`]); its `sub` is the node id. Then READY (0x07) with the node id.
//! * A shared `RwLock<HashMap<NodeId, Peer>>` maps each authenticated node to the sender of a
//!   bounded `mpsc` channel of `--queue` messages ([`DEFAULT_QUEUE`], 256). A newer
//!   connection of a node replaces the older, which is closed with 4000.
//! * SEND (0x01) to a connected node becomes RECV (0x02, the source id in place of the
//!   destination) in a fresh buffer, handed to the destination's channel with `try_send`: a
//!   full channel drops the packet (a relay must not let one slow reader stall its senders;
//!   bosonserver drops too). SEND to a node that is not connected answers PEER_GONE (0x03),
//!   at most once per destination per 5 s per connection.
//! * The connection's task `select!`s between its socket and its channel; on a message from
//!   the channel it feeds every queued message to tungstenite and flushes once, so a burst
//!   leaves in one write.
//! * After each SEND the task spends a unit of its tokio budget
//!   (`tokio::task::consume_budget`), so after 128 SENDs it lets the destinations' tasks run.
//!   Without it a sender's task relays a whole 128 KiB read buffer, and keeps reading, before
//!   any destination writes: at max rate the channels overflow and almost everything is
//!   dropped (measured: 0.1-0.2% of 100-byte SENDs delivered, 1-2% of 1200-byte ones). With it, a channel of 64 (the
//!   frame bound of bosonserver's per-session queue) still drops about half of them at max
//!   rate, because one turn relays up to 128; 256 drops none. A competent engineer would find
//!   and turn both knobs, so the baseline ships with both.
//! * Pings are answered by tungstenite; the baseline sends no keepalive pings of its own.
//!   Counters are per connection and added to the totals when it closes, so no shared
//!   cache line is written per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boson_dataplane_proto::ws::relay::{self, MessageType, PREFIX_LEN};
use boson_shared::NodeId;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::clock;
use crate::nodes::TokenKeys;

/// The upgrade path, bosonserver's default.
pub const PATH: &str = "/relay";

/// The relay's message cap (bosonserver's `DEFAULT_MAX_MESSAGE`), as tungstenite's message and
/// frame limits.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Default bound of each connection's outbound channel, in messages: twice the 128 SENDs a
/// task relays per turn (see the module doc), at most 256 × 64 KiB per connection.
pub const DEFAULT_QUEUE: usize = 256;

/// Time from the 101 to an AUTH message, when the upgrade had no token (bosonserver's
/// default auth timeout).
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one PEER_GONE per destination per this long, per connection.
const PEER_GONE_INTERVAL: Duration = Duration::from_secs(5);

/// Destinations remembered by a connection's PEER_GONE limiter before it forgets them all.
const PEER_GONE_SLOTS: usize = 4096;

/// Close code of a connection replaced by a newer one of the same node (bosonserver's).
const CLOSE_REPLACED: u16 = 4000;

/// The baseline's settings.
#[derive(Debug, Clone)]
pub struct BaselineConfig {
    /// Where to listen (127.0.0.1 in benchmarks).
    pub listen: SocketAddr,
    /// The HS256 secret tokens are checked with.
    pub secret: Vec<u8>,
    /// tokio worker threads.
    pub workers: usize,
    /// Bound of each connection's outbound channel, in messages.
    pub queue: usize,
    /// Exit after this long.
    pub lifetime: Duration,
    /// Let other tasks run between SENDs once the task's tokio budget is spent (see the
    /// module doc); off only to measure what it is worth.
    pub coop: bool,
}

/// Totals over closed connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections whose token was refused (or never came).
    pub refused: AtomicU64,
    /// RECVs handed to a destination's channel.
    pub relayed: AtomicU64,
    /// SENDs dropped because the destination's channel was full.
    pub dropped_full: AtomicU64,
    /// SENDs to a node that is not connected.
    pub to_unknown: AtomicU64,
    /// Messages that are not relay messages, or not SEND.
    pub ignored: AtomicU64,
}

/// Per-connection counters, added to [`Stats`] when the connection ends.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    relayed: u64,
    dropped_full: u64,
    to_unknown: u64,
    ignored: u64,
}

/// The shared state: token keys, the node map and the totals.
#[derive(Debug)]
pub struct Relay {
    keys: TokenKeys,
    coop: bool,
    peers: RwLock<HashMap<NodeId, Peer>>,
    queue: usize,
    next_conn: AtomicU64,
    stats: Stats,
}

#[derive(Debug)]
struct Peer {
    conn: u64,
    tx: mpsc::Sender<Bytes>,
}

impl Relay {
    /// A relay checking tokens with `secret`, with channels of `queue` messages.
    pub fn new(secret: &[u8], queue: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(queue >= 1, "the queue must hold at least one message");
        Ok(Self {
            keys: TokenKeys::new(secret)?,
            coop: true,
            peers: RwLock::new(HashMap::new()),
            queue,
            next_conn: AtomicU64::new(1),
            stats: Stats::default(),
        })
    }

    /// The totals so far.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Runs the baseline until its lifetime ends; prints its totals on stderr.
pub fn run(config: &BaselineConfig) -> anyhow::Result<()> {
    let mut relay = Relay::new(&config.secret, config.queue)?;
    relay.coop = config.coop;
    let relay = Arc::new(relay);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        eprintln!("ws-baseline listening on {}", listener.local_addr()?);
        tokio::select! {
            result = serve(listener, Arc::clone(&relay)) => result,
            () = tokio::time::sleep(config.lifetime) => Ok(()),
        }
    });
    eprintln!("ws-baseline done: {:?}", relay.stats());
    served
}

/// Accepts connections forever, a task each.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) -> anyhow::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, typically: wait for some to close.
                eprintln!("ws-baseline: accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        relay.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(handle(Arc::clone(&relay), stream));
    }
}

/// One connection, from the upgrade to the close. Errors end the connection quietly.
#[expect(
    clippy::result_large_err,
    reason = "the signature of tungstenite's handshake callback"
)]
async fn handle(relay: Arc<Relay>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut from_header = None;
    let callback = |request: &Request, response: Response| {
        upgrade(&relay.keys, request, response, &mut from_header)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        relay.stats.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let node = match from_header {
        Some(node) => node,
        None => {
            match tokio::time::timeout(AUTH_TIMEOUT, auth_message(&relay.keys, &mut ws)).await {
                Ok(Some(node)) => node,
                Ok(None) | Err(_) => {
                    relay.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = ws
                        .close(Some(close(CloseCode::Policy, "invalid token")))
                        .await;
                    return;
                }
            }
        }
    };
    let (tx, rx) = mpsc::channel(relay.queue);
    let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    // The replaced connection's sender drops here, which closes its task's channel.
    relay
        .peers
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(node, Peer { conn, tx });
    let counts = relay_loop(&relay, node, &mut ws, rx).await;
    {
        let mut peers = relay.peers.write().unwrap_or_else(PoisonError::into_inner);
        if peers.get(&node).is_some_and(|peer| peer.conn == conn) {
            peers.remove(&node);
        }
    }
    let stats = &relay.stats;
    stats.relayed.fetch_add(counts.relayed, Ordering::Relaxed);
    stats
        .dropped_full
        .fetch_add(counts.dropped_full, Ordering::Relaxed);
    stats
        .to_unknown
        .fetch_add(counts.to_unknown, Ordering::Relaxed);
    stats.ignored.fetch_add(counts.ignored, Ordering::Relaxed);
}

/// The upgrade callback: the path, and the bearer token if there is one.
#[expect(
    clippy::result_large_err,
    reason = "the signature of tungstenite's handshake callback"
)]
fn upgrade(
    keys: &TokenKeys,
    request: &Request,
    response: Response,
    node: &mut Option<NodeId>,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "unknown path"));
    }
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(response);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match token.map(|t| keys.verify(t, now_secs())) {
        Some(Ok(verified)) => {
            *node = Some(verified);
            Ok(response)
        }
        Some(Err(_)) | None => Err(refuse(StatusCode::UNAUTHORIZED, "invalid token")),
    }
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

/// Waits for the first message and checks it as a token: AUTH or text.
async fn auth_message(keys: &TokenKeys, ws: &mut WebSocketStream<TcpStream>) -> Option<NodeId> {
    loop {
        let message = ws.next().await?.ok()?;
        let token = match &message {
            Message::Binary(data) => match relay::Message::parse(data) {
                Ok(relay::Message::Auth { token }) => std::str::from_utf8(token).ok()?,
                Ok(_) | Err(_) => return None,
            },
            Message::Text(text) => text.as_str(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return None,
        };
        return keys.verify(token.trim(), now_secs()).ok();
    }
}

/// Relays until the client leaves or the node connects again elsewhere.
async fn relay_loop(
    relay: &Relay,
    node: NodeId,
    ws: &mut WebSocketStream<TcpStream>,
    mut rx: mpsc::Receiver<Bytes>,
) -> Counts {
    let mut counts = Counts::default();
    let mut gone_sent: HashMap<NodeId, Instant> = HashMap::new();
    if ws
        .send(Message::Binary(notice(MessageType::Ready, &node)))
        .await
        .is_err()
    {
        return counts;
    }
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let data = match incoming {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        counts.ignored += 1;
                        continue;
                    }
                };
                let Ok(relay::Message::Send { dest, packet }) = relay::Message::parse(&data) else {
                    counts.ignored += 1;
                    continue;
                };
                if !forward(relay, &node, &dest, packet, &mut counts)
                    && peer_gone_due(&mut gone_sent, dest)
                    && ws.send(Message::Binary(notice(MessageType::PeerGone, &dest))).await.is_err()
                {
                    break;
                }
                if relay.coop {
                    tokio::task::consume_budget().await;
                }
            }
            outgoing = rx.recv() => {
                let Some(first) = outgoing else {
                    let _ = ws.close(Some(close(CloseCode::from(CLOSE_REPLACED), "replaced"))).await;
                    break;
                };
                if ws.feed(Message::Binary(first)).await.is_err() {
                    break;
                }
                let mut failed = false;
                while let Ok(more) = rx.try_recv() {
                    if ws.feed(Message::Binary(more)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || ws.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    counts
}

/// Hands a RECV from `src` to `dest`'s channel; false if `dest` is not connected.
fn forward(relay: &Relay, src: &NodeId, dest: &NodeId, packet: &[u8], counts: &mut Counts) -> bool {
    let mut recv = BytesMut::with_capacity(PREFIX_LEN + packet.len());
    recv.put_u8(MessageType::Recv as u8);
    recv.put_slice(relay::node_bytes(src));
    recv.put_slice(packet);
    let peers = relay.peers.read().unwrap_or_else(PoisonError::into_inner);
    let Some(peer) = peers.get(dest) else {
        counts.to_unknown += 1;
        return false;
    };
    match peer.tx.try_send(recv.freeze()) {
        Ok(()) => counts.relayed += 1,
        Err(mpsc::error::TrySendError::Full(_)) => counts.dropped_full += 1,
        Err(mpsc::error::TrySendError::Closed(_)) => {
            counts.to_unknown += 1;
            return false;
        }
    }
    true
}

/// Whether a PEER_GONE for `dest` may go out now (and notes that it does).
pub(crate) fn peer_gone_due(sent: &mut HashMap<NodeId, Instant>, dest: NodeId) -> bool {
    let now = clock::now();
    if sent
        .get(&dest)
        .is_some_and(|&at| now.saturating_duration_since(at) < PEER_GONE_INTERVAL)
    {
        return false;
    }
    if sent.len() >= PEER_GONE_SLOTS {
        sent.clear();
    }
    sent.insert(dest, now);
    true
}

/// READY or PEER_GONE: the type byte and a node id.
fn notice(kind: MessageType, node: &NodeId) -> Bytes {
    let mut message = BytesMut::with_capacity(PREFIX_LEN);
    message.put_u8(kind as u8);
    message.put_slice(relay::node_bytes(node));
    message.freeze()
}

fn close(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

pub(crate) fn now_secs() -> i64 {
    i64::try_from(clock::unix_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use super::*;
    use crate::nodes::random_node;

    const SECRET: &[u8] = b"a test secret of at least 32 bytes!";

    type Client = WebSocketStream<TcpStream>;

    async fn start() -> (SocketAddr, Arc<Relay>) {
        let relay = Arc::new(Relay::new(SECRET, DEFAULT_QUEUE).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::clone(&relay)));
        (addr, relay)
    }

    fn token(node: &NodeId) -> String {
        TokenKeys::new(SECRET)
            .unwrap()
            .mint(node, now_secs())
            .unwrap()
    }

    /// Connects with tungstenite's client; `bearer` goes in the upgrade when given.
    async fn connect(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<Client, String> {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(token) = bearer {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        let stream = TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(request, stream)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    async fn next_binary(ws: &mut Client) -> Bytes {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        let message = next.unwrap().unwrap().unwrap();
        let Message::Binary(data) = message else {
            panic!("{message:?}");
        };
        data
    }

    async fn ready(ws: &mut Client, node: &NodeId) {
        let message = next_binary(ws).await;
        assert_eq!(
            relay::Message::parse(&message),
            Ok(relay::Message::Ready(*node))
        );
    }

    fn send(dest: &NodeId, packet: &[u8]) -> Message {
        let mut message = vec![MessageType::Send as u8];
        message.extend_from_slice(relay::node_bytes(dest));
        message.extend_from_slice(packet);
        Message::Binary(message.into())
    }

    #[tokio::test]
    async fn two_clients_exchange_messages() {
        let (addr, relay) = start().await;
        let (a, b) = (random_node(), random_node());
        let mut client_a = connect(addr, PATH, Some(&token(&a))).await.unwrap();
        ready(&mut client_a, &a).await;
        // B authenticates with an AUTH message instead of the header.
        let mut client_b = connect(addr, PATH, None).await.unwrap();
        let mut auth = vec![MessageType::Auth as u8];
        auth.extend_from_slice(token(&b).as_bytes());
        client_b.send(Message::Binary(auth.into())).await.unwrap();
        ready(&mut client_b, &b).await;

        for i in 0..20u8 {
            client_a.send(send(&b, &[i; 100])).await.unwrap();
        }
        for i in 0..20u8 {
            let message = next_binary(&mut client_b).await;
            assert_eq!(
                relay::Message::parse(&message),
                Ok(relay::Message::Recv {
                    src: a,
                    packet: &[i; 100]
                })
            );
        }
        client_b.send(send(&a, b"pong")).await.unwrap();
        let message = next_binary(&mut client_a).await;
        assert_eq!(
            relay::Message::parse(&message),
            Ok(relay::Message::Recv {
                src: b,
                packet: b"pong"
            })
        );
        drop((client_a, client_b));
        // The totals arrive when the connections' tasks end.
        for _ in 0..100 {
            if relay.stats().relayed.load(Ordering::Relaxed) == 21 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{:?}", relay.stats());
    }

    #[tokio::test]
    async fn unknown_destinations_get_one_peer_gone() {
        let (addr, _relay) = start().await;
        let a = random_node();
        let nobody = random_node();
        let mut client = connect(addr, PATH, Some(&token(&a))).await.unwrap();
        ready(&mut client, &a).await;
        client.send(send(&nobody, b"x")).await.unwrap();
        client.send(send(&nobody, b"y")).await.unwrap();
        let message = next_binary(&mut client).await;
        assert_eq!(
            relay::Message::parse(&message),
            Ok(relay::Message::PeerGone(nobody))
        );
        // The second is rate-limited: a message to itself arrives next, not another notice.
        client.send(send(&a, b"self")).await.unwrap();
        let message = next_binary(&mut client).await;
        assert_eq!(
            relay::Message::parse(&message),
            Ok(relay::Message::Recv {
                src: a,
                packet: b"self"
            })
        );
    }

    #[tokio::test]
    async fn bad_tokens_and_paths_are_refused() {
        let (addr, relay) = start().await;
        let a = random_node();
        let foreign = TokenKeys::new(&[9; 32])
            .unwrap()
            .mint(&a, now_secs())
            .unwrap();
        let error = connect(addr, PATH, Some(&foreign)).await.unwrap_err();
        assert!(error.contains("401"), "{error}");
        let error = connect(addr, PATH, Some("not-a-jwt")).await.unwrap_err();
        assert!(error.contains("401"), "{error}");
        let error = connect(addr, "/elsewhere", Some(&token(&a)))
            .await
            .unwrap_err();
        assert!(error.contains("404"), "{error}");

        // A bad AUTH message: closed with 1008, no READY.
        let mut client = connect(addr, PATH, None).await.unwrap();
        client.send(Message::text(foreign)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
        match next.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Policy),
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.stats().refused.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_second_connection_replaces_the_first() {
        let (addr, _relay) = start().await;
        let (a, b) = (random_node(), random_node());
        let mut first = connect(addr, PATH, Some(&token(&a))).await.unwrap();
        ready(&mut first, &a).await;
        let mut second = connect(addr, PATH, Some(&token(&a))).await.unwrap();
        ready(&mut second, &a).await;
        let next = tokio::time::timeout(Duration::from_secs(5), first.next()).await;
        match next.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), CLOSE_REPLACED);
            }
            other => panic!("{other:?}"),
        }
        let mut client_b = connect(addr, PATH, Some(&token(&b))).await.unwrap();
        ready(&mut client_b, &b).await;
        client_b.send(send(&a, b"hi")).await.unwrap();
        let message = next_binary(&mut second).await;
        assert_eq!(
            relay::Message::parse(&message),
            Ok(relay::Message::Recv {
                src: b,
                packet: b"hi"
            })
        );
    }
}
