//! [`QuicConfig`]: the relay's QUIC settings, validated when built, and the quinn-proto
//! configurations derived from them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{
    ConnectionId, ConnectionIdGenerator, EndpointConfig, IdleTimeout, InvalidCid, ServerConfig,
    TimeSource, TransportConfig, ValidationTokenConfig, VarInt,
};
use ring::{hkdf, hmac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ALPN, MAX_CONTROL_FRAME};

/// Default cap on a relay datagram (type byte, NodeId and packet): 65 535 bytes, i.e. no cap
/// of our own. The effective limit is the connection's, [`quinn_proto::Datagrams::max_size`]:
/// the path MTU less QUIC overhead (about 1 160 bytes before path MTU discovery, about 1 410
/// after it on a 1500-byte Ethernet path).
pub const DEFAULT_MAX_DATAGRAM_SIZE: usize = 65_535;

/// Default outbound datagram buffer per connection, 64 KiB: about 45 full-size packets, a few
/// milliseconds of a busy node's traffic. More would only add queueing delay to the tunnelled
/// TCP flows; less would drop bursts a congestion window absorbs.
pub const DEFAULT_DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Default maximum of live connections per relay (per core): 10 000. A connection costs at
/// most its datagram send buffer (64 KiB) plus quinn's state (tens of KiB while busy, a few
/// when idle), so the worst case stays around 1 GiB per core.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default number of unauthenticated connections above which new clients must answer a
/// stateless Retry: 64 per core. Normal churn stays below it, so ordinary connects pay no extra
/// round trip; a flood of Initials from spoofed sources crosses it at once, and from then on
/// no handshake state or TLS work is spent on an address that has not echoed a Retry token.
pub const DEFAULT_RETRY_THRESHOLD: usize = 64;

/// Configuration of a [`QuicRelay`](super::QuicRelay), validated when built.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub(crate) tls: CheckedTls,
    pub(crate) max_datagram_size: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) auth_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) datagram_send_buffer: usize,
    pub(crate) retry_threshold: usize,
    pub(crate) peer_gone_interval: Duration,
    pub(crate) peer_gone_slots: usize,
    pub(crate) mtu_discovery: bool,
    pub(crate) max_gso_segments: usize,
}

/// Why a [`QuicConfig`] (or its TLS configuration) is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The rustls configuration does not offer the relay's ALPN protocol, [`ALPN`].
    #[error("the TLS configuration does not offer ALPN \"boson-relay/1\"")]
    MissingAlpn,
    /// The rustls configuration accepts TLS early data: the relay refuses 0-RTT, whose data
    /// could be replayed and which gains nothing on long-lived connections.
    #[error("the TLS configuration accepts early data (0-RTT); set max_early_data_size to 0")]
    EarlyData,
    /// The rustls configuration has no TLS_AES_128_GCM_SHA256, which QUIC's Initial packets
    /// need.
    #[error("the TLS configuration has no TLS_AES_128_GCM_SHA256 cipher suite")]
    NoInitialCipherSuite,
    /// rustls refused the configuration or the certificate and key.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// No certificate in the PEM input.
    #[error("no certificate in the PEM input")]
    NoCertificate,
    /// No private key in the PEM input.
    #[error("no private key in the PEM input")]
    NoPrivateKey,
    /// The PEM input does not parse.
    #[error("malformed PEM input")]
    BadPem,
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    /// A duration is zero, longer than a day, or (the idle timeout) not representable.
    #[error("{0} must be above zero and at most a day")]
    InvalidDuration(&'static str),
    /// The keepalive interval is not below the idle timeout, so it cannot keep anything alive.
    #[error("the keepalive interval must be below the idle timeout")]
    KeepaliveNotBelowIdle,
    /// A count or size is out of its range (named, with the range in the setter's doc).
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
}

impl QuicConfig {
    /// The defaults (each `with_*` documents its own) around `tls`, which must offer ALPN
    /// [`ALPN`], TLS 1.3 with TLS_AES_128_GCM_SHA256, and no early data. Any provider works;
    /// [`tls_config_from_pem`] builds one on `ring`.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Result<Self, ConfigError> {
        Ok(Self {
            tls: check_tls(tls)?,
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            idle_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            datagram_send_buffer: DEFAULT_DATAGRAM_SEND_BUFFER,
            retry_threshold: DEFAULT_RETRY_THRESHOLD,
            peer_gone_interval: Duration::from_secs(5),
            peer_gone_slots: 4096,
            mtu_discovery: true,
            max_gso_segments: 1,
        })
    }

    /// The defaults around a certificate chain and private key in PEM (see
    /// [`tls_config_from_pem`]).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, ConfigError> {
        Self::new(tls_config_from_pem(cert_chain_pem, key_pem)?)
    }

    /// The defaults around a fresh self-signed certificate for `names` (DNS names or IP
    /// addresses), for development and tests. Returns the certificate too, for clients to
    /// trust. The key pair comes from the OS random source, through `ring`.
    #[cfg(feature = "self-signed")]
    pub fn self_signed(names: &[&str]) -> Result<(Self, CertificateDer<'static>), ConfigError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|err| ConfigError::SelfSigned(err.to_string()))?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = Self::new(tls_config(vec![cert.clone()], key)?)?;
        Ok((config, cert))
    }

    /// The cap on one relay datagram, type byte and NodeId included, in either direction
    /// (default [`DEFAULT_MAX_DATAGRAM_SIZE`]; at least 18, one byte of packet). A larger SEND
    /// is dropped ([`DropReason::Oversized`](super::DropReason::Oversized)), and so is a
    /// packet that would make a larger RECV or that exceeds the destination connection's own
    /// limit.
    pub fn with_max_datagram_size(mut self, max: usize) -> Result<Self, ConfigError> {
        if max <= crate::ws::relay::PREFIX_LEN || max > usize::from(u16::MAX) {
            return Err(ConfigError::OutOfRange("max datagram size (18..=65535)"));
        }
        self.max_datagram_size = max;
        Ok(self)
    }

    /// Keepalive and idle timeout, set together because one must be below the other. The
    /// server sends a PING after `interval` without sending anything (default 15 s: below
    /// the 30 s UDP binding timeout of common NATs), and a connection with no packet from
    /// the client for `idle_timeout` is dropped (default 30 s, RFC 9308 §3.2's
    /// recommendation; the effective value is the smaller of ours and the client's).
    pub fn with_keepalive(
        mut self,
        interval: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        self.keepalive = nonzero(interval, "keepalive interval")?;
        self.idle_timeout = nonzero(idle_timeout, "idle timeout")?;
        if self.keepalive >= self.idle_timeout {
            return Err(ConfigError::KeepaliveNotBelowIdle);
        }
        Ok(self)
    }

    /// Time from the first Initial to the owner's verdict on the token (default 10 s, like the
    /// WebSocket relay's: a handshake plus a control-plane lookup). The connection is closed
    /// with 1008 `auth_timeout` when it runs out.
    pub fn with_auth_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.auth_timeout = nonzero(timeout, "auth timeout")?;
        Ok(self)
    }

    /// Live connections this relay holds, in any state (default [`DEFAULT_MAX_CONNECTIONS`];
    /// at least 1). Beyond it, new clients get CONNECTION_REFUSED.
    pub fn with_max_connections(mut self, max: usize) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::OutOfRange("max connections (1..)"));
        }
        self.max_connections = max;
        Ok(self)
    }

    /// Bytes of outbound datagrams one connection may buffer (default
    /// [`DEFAULT_DATAGRAM_SEND_BUFFER`]; 4 KiB to 16 MiB). quinn counts 32 bytes of overhead
    /// per datagram. A RECV that does not fit is dropped
    /// ([`DropReason::SendBufferFull`](super::DropReason::SendBufferFull)).
    pub fn with_datagram_send_buffer(mut self, bytes: usize) -> Result<Self, ConfigError> {
        if !(4 * 1024..=16 * 1024 * 1024).contains(&bytes) {
            return Err(ConfigError::OutOfRange(
                "datagram send buffer (4 KiB..=16 MiB)",
            ));
        }
        self.datagram_send_buffer = bytes;
        Ok(self)
    }

    /// New clients must answer a stateless Retry while at least this many connections are
    /// unauthenticated (handshaking or awaiting a verdict); default
    /// [`DEFAULT_RETRY_THRESHOLD`]. 0 means always: every client pays one more round trip,
    /// and the relay never spends TLS work on an unvalidated address.
    pub const fn with_retry_threshold(mut self, threshold: usize) -> Self {
        self.retry_threshold = threshold;
        self
    }

    /// PEER_GONE rate limit: at most one per sender and destination per `interval` (default
    /// 5 s), tracked in `slots` fixed slots (default 4096, 16 bytes each), as in the
    /// WebSocket hub.
    pub fn with_peer_gone_limit(
        mut self,
        interval: Duration,
        slots: usize,
    ) -> Result<Self, ConfigError> {
        self.peer_gone_interval = nonzero(interval, "PEER_GONE interval")?;
        if slots == 0 {
            return Err(ConfigError::OutOfRange("PEER_GONE slots (1..)"));
        }
        self.peer_gone_slots = slots;
        Ok(self)
    }

    /// Path MTU discovery (default on). Only correct if the shell's socket never fragments
    /// (`IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`, `IPV6_DONTFRAG`); without it connections stay
    /// at 1200-byte packets, about 1 145 bytes of WireGuard packet.
    pub const fn with_mtu_discovery(mut self, enabled: bool) -> Self {
        self.mtu_discovery = enabled;
        self
    }

    /// Most datagrams [`QuicRelay::poll_transmit`](super::QuicRelay::poll_transmit) may
    /// batch into one [`Transmit`](super::Transmit) for UDP GSO (default 1: no batching;
    /// 1..=64). Raise it only if the shell sends with `UDP_SEGMENT`.
    pub fn with_max_gso_segments(mut self, segments: usize) -> Result<Self, ConfigError> {
        if !(1..=64).contains(&segments) {
            return Err(ConfigError::OutOfRange("GSO segments (1..=64)"));
        }
        self.max_gso_segments = segments;
        Ok(self)
    }

    /// The TLS configuration.
    pub const fn tls(&self) -> &Arc<rustls::ServerConfig> {
        &self.tls.rustls
    }

    // -----------------------------------------------------------------------------------
    // The quinn-proto configurations.

    /// Transport parameters and limits of every connection.
    pub(crate) fn transport(&self) -> TransportConfig {
        let mut transport = TransportConfig::default();
        // The control stream is the client's one bidirectional stream; nothing else.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        // One control frame at a time is all the client may have unread with us; we read
        // everything at once, so the window refills as fast as a well-behaved client needs.
        let window = VarInt::from_u32(CONTROL_WINDOW);
        transport.stream_receive_window(window);
        transport.receive_window(window);
        // Unacknowledged control-stream bytes we hold per connection.
        transport.send_window(u64::from(CONTROL_WINDOW));
        // `idle_timeout` is at most a day: 86.4e6 ms fits a VarInt.
        let idle_ms = u32::try_from(self.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))));
        transport.keep_alive_interval(Some(self.keepalive));
        // We advertise the largest max_datagram_frame_size (65 535: quinn advertises
        // min(buffer, 65 535)) and size the buffer 32 bytes above it, because quinn counts
        // its per-datagram overhead against this buffer and would otherwise close the
        // connection for a datagram the advertised limit allows. Our own cap is enforced by
        // dropping; and as every datagram is taken out right after its packet is processed,
        // this buffer never holds more than one UDP datagram's worth.
        transport.datagram_receive_buffer_size(Some(usize::from(u16::MAX) + 32));
        transport.datagram_send_buffer_size(self.datagram_send_buffer);
        transport.enable_segmentation_offload(self.max_gso_segments > 1);
        transport
    }

    /// The server side: TLS, transport, token keys and the virtual clock for Retry tokens.
    pub(crate) fn server(&self, keys: &Keys, clock: Arc<VirtualClock>) -> ServerConfig {
        let crypto = Arc::clone(&self.tls.quic);
        let mut server = ServerConfig::new(crypto, Arc::clone(&keys.token) as _);
        server.transport_config(Arc::new(self.transport()));
        server.time_source(clock);
        // We issue no NEW_TOKEN tokens (there is no 0-RTT to speed up), so there is nothing
        // for a token log to remember either.
        let mut tokens = ValidationTokenConfig::default();
        tokens.sent(0);
        server.validation_token_config(tokens);
        // Every Incoming is decided at once, so nothing waits in quinn's incoming buffers.
        server.max_incoming(self.max_connections.min(1 << 16));
        server
    }
}

/// Control-stream flow-control window and our send window on it: one largest control frame
/// (AUTH with a 4096-byte token) fits, rounded up.
const CONTROL_WINDOW: u32 = 8 * 1024;
const _: () = assert!(MAX_CONTROL_FRAME <= CONTROL_WINDOW as usize);

/// A rustls server configuration for the relay from a certificate chain and its private key in
/// PEM: `ring` provider, TLS 1.3 only, ALPN [`ALPN`], no early data, no client certificates.
/// The shell reloads certificates by building a new one and calling
/// [`QuicRelay::set_server_config`](super::QuicRelay::set_server_config).
pub fn tls_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfigError::BadPem)?;
    if chain.is_empty() {
        return Err(ConfigError::NoCertificate);
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(ConfigError::NoPrivateKey),
        Err(_) => return Err(ConfigError::BadPem),
    };
    tls_config(chain, key)
}

fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(Arc::new(tls))
}

/// A rustls configuration that passed [`check_tls`], with quinn's wrapper around it.
#[derive(Clone)]
pub(crate) struct CheckedTls {
    pub(crate) rustls: Arc<rustls::ServerConfig>,
    quic: Arc<QuicServerConfig>,
}

impl fmt::Debug for CheckedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedTls")
            .field("rustls", &self.rustls)
            .finish_non_exhaustive()
    }
}

/// Refuses a TLS configuration quinn would panic on or that breaks the relay's rules.
pub(crate) fn check_tls(tls: Arc<rustls::ServerConfig>) -> Result<CheckedTls, ConfigError> {
    if !tls.alpn_protocols.iter().any(|p| p.as_slice() == ALPN) {
        return Err(ConfigError::MissingAlpn);
    }
    if tls.max_early_data_size != 0 {
        return Err(ConfigError::EarlyData);
    }
    // The checks quinn's `start_session` would otherwise turn into a panic (TLS 1.3, a QUIC
    // cipher suite).
    rustls::quic::ServerConnection::new(Arc::clone(&tls), rustls::quic::Version::V1, Vec::new())?;
    let quic = QuicServerConfig::try_from(Arc::clone(&tls))
        .map_err(|_| ConfigError::NoInitialCipherSuite)?;
    Ok(CheckedTls {
        rustls: tls,
        quic: Arc::new(quic),
    })
}

fn nonzero(duration: Duration, what: &'static str) -> Result<Duration, ConfigError> {
    if duration.is_zero() || duration > Duration::from_secs(24 * 3600) {
        return Err(ConfigError::InvalidDuration(what));
    }
    Ok(duration)
}

// ---------------------------------------------------------------------------------------
// Keys from the seed, and the clock quinn reads.

/// The secrets derived from the relay's seed, HKDF-SHA256 with one label each.
pub(crate) struct Keys {
    /// Seeds quinn's endpoint RNG (connection IDs, packet-number skips, stateless-reset
    /// padding) and, through it, every connection's.
    pub(crate) rng_seed: [u8; 32],
    /// Stateless reset tokens.
    pub(crate) reset: Arc<hmac::Key>,
    /// Retry tokens.
    pub(crate) token: Arc<hkdf::Prk>,
    /// Connection IDs: their unpredictable part, and the tag that lets us recognize ours.
    cid: (hmac::Key, hmac::Key),
}

impl Keys {
    pub(crate) fn derive(seed: &[u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"boson-relay/1 quic").extract(seed);
        let expand = |label: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            // A 32-byte output is far below HKDF-SHA256's 8160-byte limit: never fails.
            if let Ok(okm) = prk.expand(&[label], hkdf::HKDF_SHA256) {
                let _ = okm.fill(&mut out);
            }
            out
        };
        let reset = hmac::Key::new(hmac::HMAC_SHA256, &expand(b"stateless reset"));
        let token = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&expand(b"retry token"));
        let cid = (
            hmac::Key::new(hmac::HMAC_SHA256, &expand(b"connection id")),
            hmac::Key::new(hmac::HMAC_SHA256, &expand(b"connection id tag")),
        );
        Self {
            rng_seed: expand(b"endpoint rng"),
            reset: Arc::new(reset),
            token: Arc::new(token),
            cid,
        }
    }

    pub(crate) fn endpoint(&self) -> EndpointConfig {
        let mut endpoint = EndpointConfig::new(Arc::clone(&self.reset) as _);
        endpoint.rng_seed(Some(self.rng_seed));
        let (id, tag) = self.cid.clone();
        endpoint.cid_generator(move || Box::new(SeededCids::new(id.clone(), tag.clone())));
        endpoint
    }
}

/// Connection IDs from the seed instead of quinn's generators, which draw from the OS. Eight
/// bytes: five of HMAC-SHA256(key, counter) — unpredictable and unlinkable to an observer,
/// as RFC 9000 §5.1 requires — then three of HMAC-SHA256(tag key, those five), so
/// [`validate`](ConnectionIdGenerator::validate) turns away short-header garbage before it
/// earns a stateless reset. quinn retries on the rare collision with a live ID.
struct SeededCids {
    id: hmac::Key,
    tag: hmac::Key,
    counter: u64,
}

const CID_NONCE: usize = 5;
const CID_LEN: usize = 8;

impl SeededCids {
    const fn new(id: hmac::Key, tag: hmac::Key) -> Self {
        Self {
            id,
            tag,
            counter: 0,
        }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; CID_LEN - CID_NONCE] {
        let mut out = [0; CID_LEN - CID_NONCE];
        out.copy_from_slice(&hmac::sign(&self.tag, nonce).as_ref()[..CID_LEN - CID_NONCE]);
        out
    }
}

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let nonce = hmac::sign(&self.id, &self.counter.to_be_bytes());
        self.counter += 1;
        let mut cid = [0; CID_LEN];
        cid[..CID_NONCE].copy_from_slice(&nonce.as_ref()[..CID_NONCE]);
        let tag = self.tag(&cid[..CID_NONCE]);
        cid[CID_NONCE..].copy_from_slice(&tag);
        ConnectionId::new(&cid)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let Some((nonce, tag)) = cid.split_at_checked(CID_NONCE) else {
            return Err(InvalidCid);
        };
        if cid.len() != CID_LEN || self.tag(nonce) != tag {
            return Err(InvalidCid);
        }
        Ok(())
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// quinn stamps Retry tokens with a wall-clock time from a [`TimeSource`]; this one is fed
/// from the `now` of every call instead of reading the system clock. Its "wall clock" is the
/// UNIX epoch plus the time since the relay was created: only differences matter, as tokens
/// are checked by the relay that issued them (another relay's key cannot open them).
#[derive(Debug)]
pub(crate) struct VirtualClock {
    origin: Instant,
    /// Nanoseconds since `origin` of the latest `now` seen.
    elapsed_ns: AtomicU64,
}

impl VirtualClock {
    pub(crate) const fn new(origin: Instant) -> Self {
        Self {
            origin,
            elapsed_ns: AtomicU64::new(0),
        }
    }

    /// Moves the clock to `now` (never backwards).
    pub(crate) fn advance(&self, now: Instant) {
        let ns = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

impl TimeSource for VirtualClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.elapsed_ns.load(Ordering::Relaxed))
    }
}

#[cfg(all(test, feature = "self-signed"))]
mod tests {
    use super::*;

    #[test]
    fn validates_settings() {
        let (config, _) = QuicConfig::self_signed(&["localhost"]).unwrap();
        let secs = Duration::from_secs;
        assert_eq!(
            config
                .clone()
                .with_keepalive(secs(30), secs(30))
                .unwrap_err(),
            ConfigError::KeepaliveNotBelowIdle
        );
        assert_eq!(
            config
                .clone()
                .with_keepalive(secs(5), Duration::ZERO)
                .unwrap_err(),
            ConfigError::InvalidDuration("idle timeout")
        );
        assert!(config.clone().with_keepalive(secs(2), secs(5)).is_ok());
        assert!(config.clone().with_max_datagram_size(17).is_err());
        assert!(config.clone().with_max_datagram_size(18).is_ok());
        assert!(config.clone().with_max_connections(0).is_err());
        assert!(config.clone().with_datagram_send_buffer(1024).is_err());
        assert!(config.clone().with_max_gso_segments(0).is_err());
        assert!(
            config
                .with_peer_gone_limit(Duration::from_secs(1), 0)
                .is_err()
        );
    }

    #[test]
    fn refuses_unfit_tls() {
        let (config, _) = QuicConfig::self_signed(&["localhost"]).unwrap();
        let mut tls = (**config.tls()).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        assert_eq!(
            QuicConfig::new(Arc::new(tls.clone())).unwrap_err(),
            ConfigError::MissingAlpn
        );
        tls.alpn_protocols.push(ALPN.to_vec());
        tls.max_early_data_size = u32::MAX;
        assert_eq!(
            QuicConfig::new(Arc::new(tls)).unwrap_err(),
            ConfigError::EarlyData
        );
    }

    #[test]
    fn pem_errors() {
        assert_eq!(
            tls_config_from_pem(b"", b"").unwrap_err(),
            ConfigError::NoCertificate
        );
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = certified.cert.pem();
        assert_eq!(
            tls_config_from_pem(cert.as_bytes(), b"").unwrap_err(),
            ConfigError::NoPrivateKey
        );
        let key = certified.signing_key.serialize_pem();
        let tls = tls_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert!(QuicConfig::new(tls).is_ok());
    }

    #[test]
    fn connection_ids_come_from_the_seed_and_validate() {
        let keys = Keys::derive(&[3; 32]);
        let ids = |keys: &Keys| {
            let (id, tag) = keys.cid.clone();
            let mut generator = SeededCids::new(id, tag);
            (0..64)
                .map(|_| generator.generate_cid())
                .collect::<Vec<_>>()
        };
        let (a, b) = (ids(&keys), ids(&Keys::derive(&[3; 32])));
        assert_eq!(a, b);
        assert_ne!(a, ids(&Keys::derive(&[4; 32])));
        let mut unique = a.clone();
        unique.sort_unstable_by_key(|cid| cid.to_vec());
        unique.dedup();
        assert_eq!(unique.len(), a.len());
        let (id, tag) = keys.cid;
        let generator = SeededCids::new(id, tag);
        assert!(a.iter().all(|cid| generator.validate(cid).is_ok()));
        let mut forged = a[0].to_vec();
        forged[7] ^= 1;
        assert!(generator.validate(&ConnectionId::new(&forged)).is_err());
        assert!(
            generator
                .validate(&ConnectionId::new(&forged[..5]))
                .is_err()
        );
    }

    #[test]
    fn keys_are_a_function_of_the_seed() {
        let (a, b) = (Keys::derive(&[1; 32]), Keys::derive(&[1; 32]));
        assert_eq!(a.rng_seed, b.rng_seed);
        assert_ne!(a.rng_seed, Keys::derive(&[2; 32]).rng_seed);
        let tag = |keys: &Keys| hmac::sign(&keys.reset, b"cid").as_ref().to_vec();
        assert_eq!(tag(&a), tag(&b));
    }
}
