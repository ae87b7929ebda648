//! The QUIC relay baseline: the plain quinn (tokio) relay a competent engineer would write,
//! speaking exactly bosonserver's relay framing over QUIC
//! (`boson_dataplane_proto::quic`), so *ours / baseline* prices our design, not a different
//! protocol. The QUIC twin of [`ws_baseline`](crate::ws_baseline).
//!
//! # What it does
//!
//! * A multi-thread tokio runtime with `--workers` threads, one `quinn::Endpoint` on one UDP
//!   socket (receive buffer 4 MiB, as bosonserver's), and a task per connection; quinn runs
//!   its endpoint and connection drivers as tasks of their own, and sends with GSO where the
//!   kernel has it.
//! * TLS 1.3 on `ring` with the certificate and key given (`--cert`, `--key`; a self-signed
//!   certificate for `localhost` is written there if neither exists), ALPN `boson-relay/1`.
//! * The transport mirrors bosonserver's: one bidirectional stream per connection, no
//!   unidirectional ones, keepalive 15 s, idle timeout 30 s, 64 KiB of outbound datagrams per
//!   connection; path MTU discovery on (quinn's default).
//! * The client opens its stream and writes AUTH (`[len: 2][0x05][token]`) within 10 s; the
//!   token is an HS256 JWT as the control plane issues it, checked with the secret on the
//!   command line ([`TokenKeys::verify`]); a bad or missing one closes the connection with
//!   1008 `unauthorized`. Then READY on the stream (`[00 11][0x07][node]`). A client that
//!   offers no DATAGRAM frames is closed with 1002.
//! * A shared `RwLock<HashMap<NodeId, Peer>>` maps each authenticated node to its
//!   `quinn::Connection`. A newer connection of a node replaces the older, which is closed
//!   with 4000 `replaced`.
//! * Each connection's task awaits `read_datagram`. A SEND to a connected node becomes a RECV
//!   (the source id in place of the destination) in a fresh buffer, handed to the
//!   destination's `Connection::send_datagram` under the read lock. quinn queues it behind
//!   the congestion window; a full queue drops its *oldest* datagrams to make room (quinn's
//!   behaviour, counted here as `displaced` when the queue had no room). A SEND to a node
//!   that is not connected answers PEER_GONE on the stream, at most once per destination per
//!   5 s per connection.
//! * Counters are per connection and added to the totals when it closes, so no shared cache
//!   line is written per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use boson_dataplane_proto::quic::{ALPN, wire};
use boson_dataplane_proto::ws::relay::{self, MessageType, PREFIX_LEN};
use boson_shared::NodeId;
use bytes::{Bytes, BytesMut};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::nodes::TokenKeys;
use crate::ws_baseline::{now_secs, peer_gone_due};

/// Time from the handshake to AUTH (bosonserver's default auth timeout).
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Outbound datagram bytes per connection (bosonserver's `DEFAULT_DATAGRAM_SEND_BUFFER`).
const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Requested socket receive buffer: bosonserver's listener's.
const SOCKET_RCVBUF: usize = 4 << 20;

/// Keepalive and idle timeout, bosonserver's.
const KEEPALIVE: Duration = Duration::from_secs(15);
const IDLE_TIMEOUT_MS: u32 = 30_000;

/// The baseline's settings.
#[derive(Debug, Clone)]
pub struct QuicBaselineConfig {
    /// Where to listen (UDP; 127.0.0.1 in benchmarks).
    pub listen: SocketAddr,
    /// The HS256 secret tokens are checked with.
    pub secret: Vec<u8>,
    /// tokio worker threads.
    pub workers: usize,
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// Exit after this long.
    pub lifetime: Duration,
}

/// Totals over closed connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections that completed the handshake.
    pub connections: AtomicU64,
    /// Connections whose token was refused (or never came).
    pub refused: AtomicU64,
    /// RECVs handed to a destination's connection.
    pub relayed: AtomicU64,
    /// RECVs queued when the destination's queue had no room, so quinn dropped older ones.
    pub displaced: AtomicU64,
    /// SENDs to a node that is not connected.
    pub to_unknown: AtomicU64,
    /// Datagrams that are not SEND, or RECVs too large for the destination's path.
    pub ignored: AtomicU64,
}

/// Per-connection counters, added to [`Stats`] when the connection ends.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    relayed: u64,
    displaced: u64,
    to_unknown: u64,
    ignored: u64,
}

/// The shared state: token keys, the node map and the totals.
#[derive(Debug)]
pub struct QuicRelay {
    keys: TokenKeys,
    peers: RwLock<HashMap<NodeId, Peer>>,
    next_conn: AtomicU64,
    stats: Stats,
}

#[derive(Debug)]
struct Peer {
    conn: u64,
    connection: quinn::Connection,
}

impl QuicRelay {
    /// A relay checking tokens with `secret`.
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        Ok(Self {
            keys: TokenKeys::new(secret)?,
            peers: RwLock::new(HashMap::new()),
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
pub fn run(config: &QuicBaselineConfig) -> anyhow::Result<()> {
    ensure_certificate(&config.cert, &config.key)?;
    let server = server_config(&read(&config.cert)?, &read(&config.key)?)?;
    let relay = Arc::new(QuicRelay::new(&config.secret)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let endpoint = bind(config.listen, server)?;
        eprintln!("quic-baseline listening on {}", endpoint.local_addr()?);
        tokio::select! {
            () = serve(endpoint.clone(), Arc::clone(&relay)) => {}
            () = tokio::time::sleep(config.lifetime) => {}
        }
        endpoint.close(VarInt::from_u32(0), b"");
        anyhow::Ok(())
    })?;
    eprintln!("quic-baseline done: {:?}", relay.stats());
    Ok(())
}

/// The server side of TLS and transport from a certificate chain and key in PEM.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<quinn::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("a malformed certificate PEM")?;
    if chain.is_empty() {
        bail!("no certificate in the PEM");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("no usable private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("a QUIC server configuration")?;
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(KEEPALIVE));
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// An endpoint on a fresh UDP socket bound to `listen`, with a 4 MiB receive buffer.
pub fn bind(listen: SocketAddr, server: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort, as bosonserver's.
    let _ = socket.set_recv_buffer_size(SOCKET_RCVBUF);
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding {listen}"))?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        runtime,
    )
    .context("starting the QUIC endpoint")
}

/// Accepts connections until the endpoint closes, a task each.
pub async fn serve(endpoint: quinn::Endpoint, relay: Arc<QuicRelay>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(handle(Arc::clone(&relay), incoming));
    }
}

/// Writes a self-signed certificate for `localhost` to `cert` and its key to `key` unless
/// both exist.
pub fn ensure_certificate(cert: &Path, key: &Path) -> anyhow::Result<()> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let made = rcgen::generate_simple_self_signed(vec![crate::quic_client::SERVER_NAME.to_owned()])
        .context("making a self-signed certificate")?;
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, made.cert.pem()).with_context(|| format!("writing {}", cert.display()))
}

/// Writes `bytes` to a new file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// One connection, from the handshake to the close. Errors end the connection quietly.
async fn handle(relay: Arc<QuicRelay>, incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else {
        return;
    };
    relay.stats.connections.fetch_add(1, Ordering::Relaxed);
    let authenticated = tokio::time::timeout(AUTH_TIMEOUT, authenticate(&relay.keys, &connection))
        .await
        .ok()
        .flatten();
    let Some((node, mut control)) = authenticated else {
        relay.stats.refused.fetch_add(1, Ordering::Relaxed);
        connection.close(code(wire::POLICY_VIOLATION.get()), b"unauthorized");
        return;
    };
    if connection.max_datagram_size().is_none() {
        connection.close(code(wire::PROTOCOL_ERROR.get()), b"no_datagrams");
        return;
    }
    let mut ready = [0u8; wire::MAX_NOTICE_FRAME];
    let len = wire::encode_notice(MessageType::Ready, Some(&node), &mut ready);
    if control.write_all(&ready[..len]).await.is_err() {
        return;
    }
    let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let replaced = relay
        .peers
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            node,
            Peer {
                conn,
                connection: connection.clone(),
            },
        );
    if let Some(old) = replaced {
        old.connection
            .close(code(wire::REPLACED.get()), b"replaced");
    }
    let counts = relay_loop(&relay, node, &connection, &mut control).await;
    {
        let mut peers = relay.peers.write().unwrap_or_else(PoisonError::into_inner);
        if peers.get(&node).is_some_and(|peer| peer.conn == conn) {
            peers.remove(&node);
        }
    }
    let stats = &relay.stats;
    stats.relayed.fetch_add(counts.relayed, Ordering::Relaxed);
    stats
        .displaced
        .fetch_add(counts.displaced, Ordering::Relaxed);
    stats
        .to_unknown
        .fetch_add(counts.to_unknown, Ordering::Relaxed);
    stats.ignored.fetch_add(counts.ignored, Ordering::Relaxed);
}

/// Accepts the client's stream and reads AUTH from it; the node and the stream's send half
/// if the token verifies.
async fn authenticate(
    keys: &TokenKeys,
    connection: &quinn::Connection,
) -> Option<(NodeId, quinn::SendStream)> {
    let (send, mut recv) = connection.accept_bi().await.ok()?;
    let mut len = [0u8; wire::CONTROL_HEADER_LEN];
    recv.read_exact(&mut len).await.ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > wire::MAX_CONTROL_MESSAGE {
        return None;
    }
    let mut message = vec![0u8; len];
    recv.read_exact(&mut message).await.ok()?;
    let Ok(relay::Message::Auth { token }) = relay::Message::parse(&message) else {
        return None;
    };
    let token = std::str::from_utf8(token).ok()?;
    let node = keys.verify(token.trim(), now_secs()).ok()?;
    Some((node, send))
}

/// Relays the connection's datagrams until it closes.
async fn relay_loop(
    relay: &QuicRelay,
    node: NodeId,
    connection: &quinn::Connection,
    control: &mut quinn::SendStream,
) -> Counts {
    let mut counts = Counts::default();
    let mut gone_sent: HashMap<NodeId, Instant> = HashMap::new();
    while let Ok(datagram) = connection.read_datagram().await {
        let Ok(relay::Message::Send { dest, packet }) = relay::Message::parse(&datagram) else {
            counts.ignored += 1;
            continue;
        };
        if !forward(relay, &node, &dest, packet, &mut counts) && peer_gone_due(&mut gone_sent, dest)
        {
            let mut notice = [0u8; wire::MAX_NOTICE_FRAME];
            let len = wire::encode_notice(MessageType::PeerGone, Some(&dest), &mut notice);
            if control.write_all(&notice[..len]).await.is_err() {
                break;
            }
        }
    }
    counts
}

/// Hands a RECV from `src` to `dest`'s connection; false if `dest` is not connected.
fn forward(
    relay: &QuicRelay,
    src: &NodeId,
    dest: &NodeId,
    packet: &[u8],
    counts: &mut Counts,
) -> bool {
    let mut recv = BytesMut::with_capacity(PREFIX_LEN + packet.len());
    wire::encode_datagram(MessageType::Recv, src, packet, &mut recv);
    let recv: Bytes = recv.freeze();
    let peers = relay.peers.read().unwrap_or_else(PoisonError::into_inner);
    let Some(peer) = peers.get(dest) else {
        counts.to_unknown += 1;
        return false;
    };
    // quinn counts a fixed overhead per queued datagram; below this much room it drops the
    // oldest to queue this one.
    let room = peer.connection.datagram_send_buffer_space();
    let len = recv.len();
    match peer.connection.send_datagram(recv) {
        Ok(()) => {
            counts.relayed += 1;
            if room < len {
                counts.displaced += 1;
            }
        }
        Err(quinn::SendDatagramError::ConnectionLost(_)) => {
            counts.to_unknown += 1;
            return false;
        }
        Err(
            quinn::SendDatagramError::TooLarge
            | quinn::SendDatagramError::UnsupportedByPeer
            | quinn::SendDatagramError::Disabled,
        ) => counts.ignored += 1,
    }
    true
}

fn code(code: u16) -> VarInt {
    VarInt::from_u32(u32::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_come_from_pem() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
        assert!(server_config(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(
            server_config(b"", key.as_bytes()).is_err(),
            "no certificate"
        );
        assert!(server_config(cert.as_bytes(), b"").is_err(), "no key");
    }

    #[test]
    fn a_certificate_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ensure_certificate(&cert, &key).unwrap();
        let first = std::fs::read(&cert).unwrap();
        ensure_certificate(&cert, &key).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first, "kept, not replaced");
        assert!(
            server_config(&first, &std::fs::read(&key).unwrap()).is_ok(),
            "a usable pair"
        );
    }
}
