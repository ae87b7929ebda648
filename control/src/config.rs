//! Command-line and environment settings, validated once into a [`Config`].
//!
//! Nothing below `main` reads the environment: `main` parses [`ControlArgs`] (flags, then
//! environment variables, then `.env`), calls [`ControlArgs::resolve`], and hands the resulting
//! [`Config`] to [`crate::serve`].

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use boson_shared::plane::{HostId, MAX_PEER_CIDRS};
use boson_shared::{Cidr, TurnSecret};
use rand::RngCore as _;

use crate::domain::key_proof::ServerKey;

/// Control-plane settings as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Address the REST API listens on.
    #[arg(long, env = "BOSON_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// Directory for the embedded SQLite database and generated development secrets.
    #[arg(long, env = "BOSON_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Database URL, `sqlite://PATH` or `postgres://USER@HOST/DB`. Default: SQLite in the data dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Password for a PostgreSQL `DATABASE_URL` that carries none.
    #[arg(long, env = "POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<String>,

    /// Redis URL for rate limits and presence shared between hosts. Default: kept in process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so that several deployments can share one Redis.
    #[arg(long, env = "BOSON_REDIS_PREFIX", default_value = "boson:")]
    pub redis_prefix: String,

    /// HS256 secret for node tokens, at least 32 bytes. Default: a generated development secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The control plane's static X25519 private key for key proofs at registration, standard
    /// base64 of 32 bytes (`wg genkey` makes one). Every host of a deployment must have the
    /// same. Default: generated on first start and kept in the database, which every host
    /// sharing it reads.
    #[arg(long, env = "BOSON_KEY_PROOF_SECRET", hide_env_values = true, value_parser = parse_server_key)]
    pub key_proof_secret: Option<ServerKey>,

    /// How long a node token is valid.
    #[arg(long, env = "BOSON_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// TURN REST API secrets, comma separated: the first mints credentials, all are accepted.
    /// Default: a generated development secret.
    #[arg(
        long,
        env = "TURN_STATIC_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub turn_static_secret: Vec<String>,

    /// File of TURN REST API secrets instead of TURN_STATIC_SECRET: one per line, newest
    /// first (it mints, all are accepted); blank lines and `#` comments are skipped. The
    /// control plane re-reads it on SIGHUP and when it changes, and pushes the new secrets to
    /// the dataplane; a file it cannot use is logged and the secrets in use stay.
    #[arg(
        long,
        env = "BOSON_TURN_SECRETS_FILE",
        conflicts_with = "turn_static_secret"
    )]
    pub turn_secrets_file: Option<PathBuf>,

    /// TURN allocations one user may hold on one worker. The control plane pushes it to the
    /// dataplane.
    #[arg(long, env = "BOSON_MAX_ALLOCATIONS_PER_USER", default_value_t = 32)]
    pub max_allocations_per_user: u32,

    /// Peer networks TURN clients may relay to despite the built-in filter (CIDRs, comma
    /// separated). The control plane pushes it to the dataplane.
    #[arg(long, env = "BOSON_ALLOWED_PEERS", value_delimiter = ',')]
    pub allowed_peers: Vec<Cidr>,

    /// Peer networks TURN clients may never relay to, whatever else says (CIDRs, comma
    /// separated). The control plane pushes it to the dataplane; permissions to a peer it
    /// denies end at once.
    #[arg(long, env = "BOSON_DENIED_PEERS", value_delimiter = ',')]
    pub denied_peers: Vec<Cidr>,

    /// How long a TURN credential handed out by `/api/v1/turn/ice` is valid.
    #[arg(long, env = "BOSON_TURN_CREDENTIAL_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub turn_credential_ttl: Duration,

    /// Host name or address that clients use to reach this server's STUN/TURN listener.
    #[arg(long, env = "BOSON_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,

    /// Port in the STUN/TURN URLs handed out. Default: the TURN listener's port when the
    /// dataplane runs in this process, else 3478.
    #[arg(long, env = "BOSON_TURN_PORT")]
    pub turn_port: Option<u16>,

    /// Extra ICE server URLs (`stun:`, `turn:`, `turns:`) handed out beside ours, comma separated.
    #[arg(long, env = "BOSON_EXTRA_ICE_URLS", value_delimiter = ',')]
    pub extra_ice_urls: Vec<String>,

    /// A node that sends no heartbeat for this long is marked inactive.
    #[arg(long, env = "BOSON_NODE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub node_timeout: Duration,

    /// Heartbeat interval the server asks nodes to keep.
    #[arg(long, env = "BOSON_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long node heartbeats wait in memory before they are written to the database, in
    /// one batch; `0s` writes each one as it arrives. A crash loses at most this much of the
    /// nodes' last-seen times and metrics, never a registration. At most a quarter of
    /// --node-timeout.
    #[arg(long, env = "BOSON_HEARTBEAT_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_flush_interval: Duration,

    /// How often hosts sharing a PostgreSQL database read each other's node changes into their
    /// routing index and grants when no change notification (LISTEN/NOTIFY) arrives: the
    /// staleness bound if notifications are lost.
    #[arg(long, env = "BOSON_INDEX_SYNC_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub index_sync_interval: Duration,

    /// Registrations accepted per client IP address per minute.
    #[arg(long, env = "BOSON_REGISTER_RATE_LIMIT", default_value_t = 20)]
    pub register_rate_limit: u32,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BOSON_MAX_BODY_BYTES", default_value_t = 16 * 1024, hide = true)]
    pub max_body_bytes: usize,

    /// A client that has not sent a request's complete headers this long after starting it
    /// (or after connecting) is disconnected.
    #[arg(long, env = "BOSON_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// A request whose body has not fully arrived this long after its headers answers 408.
    #[arg(long, env = "BOSON_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Duration,

    /// Open connections accepted from one client IP address; more are closed at once. Behind
    /// a trusted proxy, the address its PROXY protocol header names (a trusted proxy's own
    /// connections are not capped).
    #[arg(long, env = "BOSON_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: u32,

    /// Reverse proxies and load balancers (CIDRs, comma separated) whose word on the client's
    /// address is believed: from them only, `Forwarded`, `X-Forwarded-For` and a PROXY
    /// protocol v2 header name the client that rate limits, connection caps and `publicIp`
    /// use. Default: none, every address is the TCP peer's.
    #[arg(long, env = "BOSON_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// PEM certificate chain (leaf first) for the REST API: with --api-key it serves https
    /// only. Both files are re-read when they change, without a restart.
    #[arg(long, env = "BOSON_API_CERT", requires = "api_key")]
    pub api_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --api-cert.
    #[arg(long, env = "BOSON_API_KEY", requires = "api_cert")]
    pub api_key: Option<PathBuf>,

    /// How often the API's certificate files are checked for a change.
    #[arg(long, env = "BOSON_API_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, hide = true)]
    pub api_tls_reload_interval: Duration,

    /// This host's id in the relay host registry. Default: generated once and kept in the data
    /// dir (`host-id`), so a restart keeps it.
    #[arg(long, env = "BOSON_HOST_ID")]
    pub host_id: Option<uuid::Uuid>,

    /// Region of this host, in the nodes' `CC-REGION` form such as `US-CA`; routing prefers
    /// relay hosts near both ends of a route.
    #[arg(long, env = "BOSON_REGION", default_value = "")]
    pub region: String,

    /// Latitude and longitude of this host in degrees, `LAT,LON`; with a node's coordinates it
    /// gives a better distance estimate than regions alone.
    #[arg(long, env = "BOSON_COORDINATES", value_parser = parse_coordinates)]
    pub coordinates: Option<[f64; 2]>,

    /// `ws://` or `wss://` URL of this host's WebSocket relay, as nodes reach it. Default: none
    /// (no WebSocket relay routes through this host).
    #[arg(long, env = "BOSON_PUBLIC_RELAY_URL")]
    pub public_relay_url: Option<String>,

    /// `HOST:PORT` of this host's QUIC relay, as nodes reach it. Default: none.
    #[arg(long, env = "BOSON_PUBLIC_QUIC_ADDR")]
    pub public_quic_addr: Option<String>,

    /// Relay sessions plus TURN allocations this host takes before routing avoids it.
    #[arg(long, env = "BOSON_MAX_RELAY_CONNECTIONS", default_value_t = 10_000)]
    pub max_relay_connections: u32,

    /// Relay bandwidth of this host in Mbit/s, against which its reported use is weighed.
    #[arg(long, env = "BOSON_RELAY_BANDWIDTH", default_value_t = 1000.0)]
    pub relay_bandwidth: f64,

    /// How often this host publishes its record and load to the other hosts.
    #[arg(long, env = "BOSON_HOST_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub host_heartbeat_interval: Duration,

    /// A host silent for this long is out of the registry (and its nodes' relay presence
    /// expires with it).
    #[arg(long, env = "BOSON_HOST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub host_timeout: Duration,

    /// Seed of the routing's random choices (power of two choices between relay hosts), for
    /// reproducible runs. Default: from the operating system.
    #[arg(long, env = "BOSON_ROUTING_SEED", hide = true)]
    pub routing_seed: Option<u64>,
}

/// Validated control-plane configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the REST API listens.
    pub http_listen: SocketAddr,
    /// A `sqlite:` or `postgres:` URL, with any password filled in.
    pub database_url: String,
    /// Redis, when shared state is wanted.
    pub redis: Option<RedisConfig>,
    /// Node tokens.
    pub jwt: JwtConfig,
    /// The key-proof key when configured; `None`: the one kept in the database.
    pub key_proof_secret: Option<ServerKey>,
    /// ICE servers and TURN credentials.
    pub turn: TurnConfig,
    /// Liveness of nodes.
    pub nodes: NodePolicy,
    /// Registrations per IP per minute.
    pub register_rate_limit: u32,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Limits on slow or greedy HTTP clients.
    pub http: HttpLimits,
    /// TLS for the REST API (https), reloaded when its files change; `None` serves plain HTTP.
    pub api_tls: Option<ApiTls>,
    /// Proxies whose forwarding headers and PROXY protocol headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// This host in the relay host registry.
    pub host: HostConfig,
    /// Seed of the routing's random choices; `None` seeds from the operating system.
    pub routing_seed: Option<u64>,
}

/// The REST API's certificate and how often its files are checked for a change.
#[derive(Debug, Clone)]
pub struct ApiTls {
    /// The PEM certificate chain and key.
    pub source: boson_tls::TlsSource,
    /// Interval between checks of the files' modification times.
    pub reload_interval: Duration,
}

/// Limits on slow or greedy HTTP clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers (hyper's `header_read_timeout`; it also
    /// closes idle keep-alive connections after as long).
    pub header_read_timeout: Duration,
    /// Time a request's body has to arrive once its headers are in.
    pub body_read_timeout: Duration,
    /// Open connections per client IP address.
    pub max_connections_per_ip: u32,
}

/// This host as it registers in the relay host registry. Its TURN address is the one handed
/// out in ICE answers (`TurnConfig::public_host` and `port`).
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Stable id, kept in the data dir.
    pub id: HostId,
    /// `CC-REGION`, or empty when unknown.
    pub region: String,
    /// Latitude and longitude in degrees.
    pub coordinates: Option<[f64; 2]>,
    /// `ws://` or `wss://` URL of the WebSocket relay.
    pub relay_url: Option<String>,
    /// `HOST:PORT` of the QUIC relay.
    pub quic_addr: Option<String>,
    /// Relay sessions plus TURN allocations it takes.
    pub max_connections: u32,
    /// Relay bandwidth, Mbit/s.
    pub bandwidth_mbps: f64,
    /// How often it publishes its record.
    pub heartbeat_interval: Duration,
    /// Silence after which other hosts drop it.
    pub timeout: Duration,
}

/// Redis connection settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
}

/// Node-token settings.
#[derive(Clone)]
pub struct JwtConfig {
    /// HS256 key, at least [`MIN_JWT_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// Token lifetime.
    pub ttl: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// ICE and TURN settings. The control plane owns them: it pushes the secrets, the quota and
/// the peer lists to the dataplane whenever a dataplane attaches, and the secrets again
/// whenever `secrets_file` changes.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// The secrets at start: never empty, within the bounds of `plane::Command::TurnSecrets`;
    /// the first one mints. Those in use later are `AppState::turn_secrets`.
    pub secrets: Vec<TurnSecret>,
    /// Where `secrets` came from, re-read on SIGHUP and when it changes.
    pub secrets_file: Option<PathBuf>,
    /// Allocations per user on each dataplane worker.
    pub max_allocations_per_user: u32,
    /// Peer networks allowed despite the dataplane's built-in filter.
    pub allowed_peers: Vec<Cidr>,
    /// Peer networks denied whatever else says.
    pub denied_peers: Vec<Cidr>,
    /// Lifetime of a minted credential.
    pub credential_ttl: Duration,
    /// Host clients use for our STUN/TURN listener.
    pub public_host: String,
    /// Port of our STUN/TURN listener.
    pub port: u16,
    /// Port of our TURN-over-TCP listener, when it runs: set by the binary from the
    /// dataplane it started.
    pub tcp_port: Option<u16>,
    /// Port of our TURN-over-TLS listener, when it runs: as `tcp_port`.
    pub tls_port: Option<u16>,
    /// Other ICE servers handed out beside ours.
    pub extra_urls: Vec<String>,
}

/// When nodes count as alive.
#[derive(Debug, Clone, Copy)]
pub struct NodePolicy {
    /// Silence after which a node is inactive.
    pub timeout: Duration,
    /// Interval the server asks nodes to keep.
    pub heartbeat_interval: Duration,
    /// How often the server marks silent nodes inactive.
    pub sweep_interval: Duration,
    /// How long heartbeats wait in memory before a batch writes them; zero writes each.
    pub heartbeat_flush_interval: Duration,
    /// Poll interval of the routing index sync between hosts on PostgreSQL.
    pub index_sync_interval: Duration,
}

/// The STUN/TURN port of RFC 8489 §18.6 and RFC 8656 §18.7.
pub const DEFAULT_TURN_PORT: u16 = 3478;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl ControlArgs {
    /// Validates the settings and fills in the embedded defaults (SQLite file, development
    /// secrets persisted in the data directory so that tokens survive a restart).
    pub fn resolve(self) -> anyhow::Result<Config> {
        ensure!(
            self.heartbeat_interval < self.node_timeout,
            "--heartbeat-interval ({}) must be shorter than --node-timeout ({})",
            humantime::format_duration(self.heartbeat_interval),
            humantime::format_duration(self.node_timeout)
        );
        ensure!(
            self.node_timeout >= Duration::from_millis(100),
            "--node-timeout must be at least 100ms"
        );
        ensure!(
            self.heartbeat_flush_interval <= self.node_timeout / 4,
            "--heartbeat-flush-interval ({}) must be at most a quarter of --node-timeout ({}), \
             so a buffered heartbeat reaches the database well before the node would time out",
            humantime::format_duration(self.heartbeat_flush_interval),
            humantime::format_duration(self.node_timeout)
        );
        ensure!(
            self.index_sync_interval >= Duration::from_millis(10)
                && self.index_sync_interval <= Duration::from_secs(3600),
            "--index-sync-interval must be between 10ms and 1h"
        );
        ensure!(
            self.token_ttl >= Duration::from_secs(60),
            "--token-ttl must be at least one minute"
        );
        ensure!(
            self.turn_credential_ttl >= Duration::from_secs(60),
            "--turn-credential-ttl must be at least one minute"
        );
        ensure!(
            self.register_rate_limit >= 1,
            "--register-rate-limit must be at least 1"
        );
        ensure!(
            self.max_body_bytes >= 1024,
            "--max-body-bytes must be at least 1024"
        );
        ensure!(
            !self.public_host.trim().is_empty(),
            "--public-host is empty"
        );
        ensure!(
            self.http_header_timeout >= Duration::from_millis(100)
                && self.http_body_timeout >= Duration::from_millis(100),
            "--http-header-timeout and --http-body-timeout must be at least 100ms"
        );
        ensure!(
            self.max_connections_per_ip >= 1,
            "--max-connections-per-ip must be at least 1"
        );
        ensure!(
            self.host_heartbeat_interval >= Duration::from_millis(10)
                && self.host_heartbeat_interval * 2 <= self.host_timeout,
            "--host-timeout ({}) must be at least twice --host-heartbeat-interval ({}), \
             so one lost heartbeat does not drop a host",
            humantime::format_duration(self.host_timeout),
            humantime::format_duration(self.host_heartbeat_interval)
        );
        ensure!(
            self.max_relay_connections >= 1,
            "--max-relay-connections must be at least 1"
        );
        ensure!(
            self.relay_bandwidth.is_finite() && self.relay_bandwidth > 0.0,
            "--relay-bandwidth must be a positive number of Mbit/s"
        );
        ensure!(
            self.region.chars().count() <= crate::domain::model::MAX_REGION_LEN
                && !self.region.chars().any(char::is_control),
            "--region must be at most {} printable characters",
            crate::domain::model::MAX_REGION_LEN
        );
        if let Some(url) = &self.public_relay_url {
            ensure!(
                url.starts_with("ws://") || url.starts_with("wss://"),
                "--public-relay-url {url:?} must start with ws:// or wss://"
            );
        }
        if let Some(addr) = &self.public_quic_addr {
            ensure!(
                addr.rsplit_once(':').is_some_and(
                    |(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                ),
                "--public-quic-addr {addr:?} must be HOST:PORT"
            );
        }
        ensure!(
            self.max_allocations_per_user >= 1,
            "--max-allocations-per-user must be at least 1"
        );
        for (flag, list) in [
            ("--allowed-peers", &self.allowed_peers),
            ("--denied-peers", &self.denied_peers),
        ] {
            ensure!(
                list.len() <= MAX_PEER_CIDRS,
                "{flag} lists {} networks, at most {MAX_PEER_CIDRS} are supported",
                list.len()
            );
        }
        for url in &self.extra_ice_urls {
            ensure!(
                ["stun:", "turn:", "turns:"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme)),
                "extra ICE URL {url:?} must start with stun:, turn: or turns:"
            );
        }

        let database_url = match self.database_url {
            Some(url) => with_postgres_password(url, self.postgres_password.as_deref())?,
            None => {
                fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!("creating data directory {}", self.data_dir.display())
                })?;
                format!(
                    "sqlite://{}?mode=rwc",
                    self.data_dir.join("bosonserver.db").display()
                )
            }
        };

        let jwt_secret = match self.jwt_secret {
            Some(secret) => secret.into_bytes(),
            None => dev_secret(&self.data_dir, "jwt-secret", "JWT_SECRET")?,
        };
        ensure!(
            jwt_secret.len() >= MIN_JWT_SECRET_LEN,
            "JWT_SECRET must be at least {MIN_JWT_SECRET_LEN} bytes"
        );

        let turn_secrets = match &self.turn_secrets_file {
            Some(path) => read_turn_secrets(path)?,
            None => {
                let mut secrets: Vec<TurnSecret> = self
                    .turn_static_secret
                    .iter()
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(TurnSecret::new)
                    .collect();
                if secrets.is_empty() {
                    secrets.push(TurnSecret::new(dev_secret(
                        &self.data_dir,
                        "turn-secret",
                        "TURN_STATIC_SECRET",
                    )?));
                }
                crate::domain::turn_secrets::check(&secrets)
                    .context("invalid TURN_STATIC_SECRET")?;
                secrets
            }
        };

        let host_id = match self.host_id {
            Some(id) => HostId(id),
            None => persistent_host_id(&self.data_dir)?,
        };

        Ok(Config {
            http_listen: self.http_listen,
            database_url,
            redis: self.redis_url.map(|url| RedisConfig {
                url,
                prefix: self.redis_prefix,
            }),
            jwt: JwtConfig {
                secret: jwt_secret,
                ttl: self.token_ttl,
            },
            key_proof_secret: self.key_proof_secret,
            turn: TurnConfig {
                secrets: turn_secrets,
                secrets_file: self.turn_secrets_file,
                max_allocations_per_user: self.max_allocations_per_user,
                allowed_peers: self.allowed_peers,
                denied_peers: self.denied_peers,
                credential_ttl: self.turn_credential_ttl,
                public_host: self.public_host,
                port: self.turn_port.unwrap_or(DEFAULT_TURN_PORT),
                tcp_port: None,
                tls_port: None,
                extra_urls: self.extra_ice_urls,
            },
            nodes: NodePolicy {
                timeout: self.node_timeout,
                heartbeat_interval: self.heartbeat_interval,
                sweep_interval: sweep_interval(self.node_timeout),
                heartbeat_flush_interval: self.heartbeat_flush_interval,
                index_sync_interval: self.index_sync_interval,
            },
            register_rate_limit: self.register_rate_limit,
            max_body_bytes: self.max_body_bytes,
            http: HttpLimits {
                header_read_timeout: self.http_header_timeout,
                body_read_timeout: self.http_body_timeout,
                max_connections_per_ip: self.max_connections_per_ip,
            },
            trusted_proxies: self.trusted_proxies,
            api_tls: match (self.api_cert, self.api_key) {
                (Some(cert), Some(key)) => Some(ApiTls {
                    source: boson_tls::TlsSource { cert, key },
                    reload_interval: self.api_tls_reload_interval,
                }),
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    bail!("--api-cert and --api-key go together")
                }
            },
            host: HostConfig {
                id: host_id,
                region: self.region,
                coordinates: self.coordinates,
                relay_url: self.public_relay_url,
                quic_addr: self.public_quic_addr,
                max_connections: self.max_relay_connections,
                bandwidth_mbps: self.relay_bandwidth,
                heartbeat_interval: self.host_heartbeat_interval,
                timeout: self.host_timeout,
            },
            routing_seed: self.routing_seed,
        })
    }
}

/// `--key-proof-secret`.
fn parse_server_key(text: &str) -> Result<ServerKey, String> {
    ServerKey::parse(text)
}

/// `LAT,LON` in degrees.
fn parse_coordinates(text: &str) -> Result<[f64; 2], String> {
    let bad = || format!("{text:?} is not LAT,LON (degrees)");
    let (lat, lon) = text.split_once(',').ok_or_else(bad)?;
    let lat: f64 = lat.trim().parse().map_err(|_| bad())?;
    let lon: f64 = lon.trim().parse().map_err(|_| bad())?;
    let in_range = lat.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && lon.is_finite()
        && (-180.0..=180.0).contains(&lon);
    if !in_range {
        return Err(format!(
            "{text:?}: latitude must be -90..90 and longitude -180..180"
        ));
    }
    Ok([lat, lon])
}

/// Reads this host's id from `host-id` in the data dir, creating it on first start so that a
/// restart registers as the same host.
fn persistent_host_id(data_dir: &Path) -> anyhow::Result<HostId> {
    let path = data_dir.join("host-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = uuid::Uuid::parse_str(text.trim()).with_context(|| {
                format!(
                    "{} does not hold a UUID; fix or delete it (or set BOSON_HOST_ID)",
                    path.display()
                )
            })?;
            Ok(HostId(id))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            let id = uuid::Uuid::new_v4();
            fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {} (or set BOSON_HOST_ID)", path.display()))?;
            tracing::info!("new relay host id {id}, kept in {}", path.display());
            Ok(HostId(id))
        }
        Err(error) => {
            Err(error).with_context(|| format!("reading {} (or set BOSON_HOST_ID)", path.display()))
        }
    }
}

/// A quarter of the timeout, so a silent node turns inactive at most 25% late, and at most
/// every five seconds, so a long timeout still reacts promptly.
fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
}

/// Puts `password` into a PostgreSQL URL that has none.
fn with_postgres_password(url: String, password: Option<&str>) -> anyhow::Result<String> {
    let Some(password) = password else {
        return Ok(url);
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("DATABASE_URL is not a URL");
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Ok(url);
    }
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        bail!("POSTGRES_PASSWORD is set but DATABASE_URL names no user");
    };
    if userinfo.contains(':') {
        // The URL's own password wins.
        return Ok(url);
    }
    Ok(format!(
        "{scheme}://{userinfo}:{}@{host}{tail}",
        percent_encode(password)
    ))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads the development secret `name` from the data directory, creating it (mode 0600) on
/// first use. Loud, because a production deployment must set `env_var` instead.
fn dev_secret(data_dir: &Path, name: &str, env_var: &str) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(name);
    let secret = match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => text.trim().as_bytes().to_vec(),
        Ok(_) | Err(_) => {
            fs::create_dir_all(data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            text.into_bytes()
        }
    };
    tracing::warn!(
        "{env_var} is not set: using a development secret from {}. \
         Set {env_var} before exposing this server to anyone.",
        path.display()
    );
    Ok(secret)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads and parses the TURN secrets file at `path` (`--turn-secrets-file`), at start and
/// on every reload.
pub fn read_turn_secrets(path: &Path) -> anyhow::Result<Vec<TurnSecret>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the TURN secrets file {}", path.display()))?;
    let secrets = crate::domain::turn_secrets::parse(&text)
        .with_context(|| format!("the TURN secrets file {}", path.display()))?;
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlArgs,
    }

    fn args(extra: &[&str]) -> ControlArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn postgres_password_is_inserted_only_where_missing() {
        let url = |u: &str, p| with_postgres_password(u.to_owned(), p).unwrap();
        assert_eq!(
            url("postgres://boson@db:5432/boson", Some("p@ss word")),
            "postgres://boson:p%40ss%20word@db:5432/boson"
        );
        assert_eq!(
            url("postgres://boson:own@db/boson", Some("x")),
            "postgres://boson:own@db/boson"
        );
        assert_eq!(url("sqlite://x.db", Some("x")), "sqlite://x.db");
        assert_eq!(url("postgres://boson@db/b", None), "postgres://boson@db/b");
        assert!(with_postgres_password("postgres://db/b".into(), Some("x")).is_err());
    }

    #[test]
    fn embedded_defaults_generate_and_keep_dev_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let first = args(&["--data-dir", data]).resolve().unwrap();
        assert!(first.database_url.starts_with("sqlite://"));
        assert!(first.redis.is_none());
        assert!(first.key_proof_secret.is_none(), "kept in the database");
        assert_eq!(first.jwt.secret.len(), 64);
        let second = args(&["--data-dir", data]).resolve().unwrap();
        assert_eq!(
            first.jwt.secret, second.jwt.secret,
            "restart keeps tokens valid"
        );
        assert_eq!(first.turn.secrets, second.turn.secrets);
        assert_ne!(first.jwt.secret, second.turn.secrets[0].as_bytes());
        assert_eq!(first.host.id, second.host.id, "restart keeps the host id");
        let pinned = uuid::Uuid::new_v4();
        let given = args(&["--data-dir", data, "--host-id", &pinned.to_string()])
            .resolve()
            .unwrap();
        assert_eq!(given.host.id, HostId(pinned));
    }

    #[test]
    fn a_corrupt_host_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("host-id"), "not a uuid").unwrap();
        let error = args(&["--data-dir", dir.path().to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(format!("{error:#}").contains("host-id"), "{error:#}");
    }

    #[test]
    fn api_tls_needs_both_files_and_trusted_proxies_are_cidrs() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let plain = args(&["--data-dir", data]).resolve().unwrap();
        assert!(plain.api_tls.is_none() && plain.trusted_proxies.is_empty());
        let tls = args(&[
            "--data-dir",
            data,
            "--api-cert",
            "/c.pem",
            "--api-key",
            "/k.pem",
            "--trusted-proxies",
            "10.0.0.0/8,2001:db8::/32",
        ])
        .resolve()
        .unwrap();
        let api = tls.api_tls.unwrap();
        assert_eq!(api.source.cert, PathBuf::from("/c.pem"));
        assert_eq!(api.source.key, PathBuf::from("/k.pem"));
        assert_eq!(api.reload_interval, Duration::from_secs(5));
        assert_eq!(tls.trusted_proxies.len(), 2);
        for bad in [
            &["--api-cert", "/c.pem"][..],
            &["--api-key", "/k.pem"],
            &["--trusted-proxies", "10.0.0.0/33"],
            &["--trusted-proxies", "proxy.example"],
            &["--key-proof-secret", "c2hvcnQ="],
        ] {
            let mut argv = vec!["test"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coordinates_parse_within_range() {
        assert_eq!(parse_coordinates("37.77, -122.42"), Ok([37.77, -122.42]));
        for bad in ["37.77", "91,0", "0,181", "a,b", "NaN,0"] {
            assert!(parse_coordinates(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        for bad in [
            &["--jwt-secret", "short"][..],
            &["--heartbeat-interval", "90s", "--node-timeout", "60s"],
            &["--extra-ice-urls", "http://example.com"],
            &["--register-rate-limit", "0"],
            &["--token-ttl", "1s"],
            &["--host-heartbeat-interval", "10s", "--host-timeout", "15s"],
            &["--public-relay-url", "http://relay.example.com"],
            &["--public-quic-addr", "relay.example.com"],
            &["--max-connections-per-ip", "0"],
            &["--relay-bandwidth", "0"],
            &["--http-header-timeout", "1ms"],
        ] {
            let mut argv = vec!["--data-dir", data];
            argv.extend_from_slice(bad);
            assert!(args(&argv).resolve().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn turn_secrets_split_on_commas_for_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let config = args(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--turn-static-secret",
            "new,old",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            config.turn.secrets,
            vec![TurnSecret::new("new"), TurnSecret::new("old")]
        );
    }

    #[test]
    fn turn_secrets_come_from_a_file_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let file = dir.path().join("turn-secrets");
        fs::write(&file, "# rotated 2024-05\nnew\n\n  old  \n").unwrap();
        let path = file.to_str().unwrap();
        let config = args(&["--data-dir", data, "--turn-secrets-file", path])
            .resolve()
            .unwrap();
        assert_eq!(
            config.turn.secrets,
            vec![TurnSecret::new("new"), TurnSecret::new("old")]
        );
        assert_eq!(config.turn.secrets_file.as_deref(), Some(file.as_path()));
        // A file the control plane cannot use stops the start.
        fs::write(&file, "# nothing\n").unwrap();
        let error = args(&["--data-dir", data, "--turn-secrets-file", path])
            .resolve()
            .unwrap_err();
        assert!(format!("{error:#}").contains("no secret"), "{error:#}");
        let missing = dir.path().join("missing");
        assert!(
            args(&[
                "--data-dir",
                data,
                "--turn-secrets-file",
                missing.to_str().unwrap()
            ])
            .resolve()
            .is_err()
        );
        // Both sources at once are ambiguous.
        let mut argv = vec![
            "test",
            "--turn-secrets-file",
            path,
            "--turn-static-secret",
            "x",
        ];
        argv.extend(["--data-dir", data]);
        assert!(Cli::try_parse_from(argv).is_err());
        // The environment's secrets obey the same bounds as the file's.
        let long = "x".repeat(boson_shared::plane::MAX_TURN_SECRET_LEN + 1);
        assert!(
            args(&["--data-dir", data, "--turn-static-secret", &long])
                .resolve()
                .is_err()
        );
    }

    #[test]
    fn turn_policy_is_validated_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = args(&[
            "--data-dir",
            data,
            "--max-allocations-per-user",
            "4",
            "--allowed-peers",
            "10.1.0.0/16,fc00::/7",
            "--denied-peers",
            "198.51.100.0/24",
        ])
        .resolve()
        .unwrap();
        assert_eq!(config.turn.max_allocations_per_user, 4);
        assert_eq!(config.turn.allowed_peers.len(), 2);
        assert_eq!(
            config.turn.denied_peers,
            vec!["198.51.100.0/24".parse::<Cidr>().unwrap()]
        );
        assert!(
            args(&["--data-dir", data, "--max-allocations-per-user", "0"])
                .resolve()
                .is_err()
        );
        let many = vec!["192.0.2.1/32"; MAX_PEER_CIDRS + 1].join(",");
        assert!(
            args(&["--data-dir", data, "--denied-peers", &many])
                .resolve()
                .is_err()
        );
        let mut argv = vec!["test", "--data-dir", data, "--allowed-peers", "10.0.0.0/33"];
        assert!(Cli::try_parse_from(argv.drain(..)).is_err());
    }

    #[test]
    fn sweep_interval_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(90)),
            Duration::from_secs(5)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(40)),
            Duration::from_millis(25)
        );
    }
}
