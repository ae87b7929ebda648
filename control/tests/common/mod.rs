//! Starts the real control plane on an ephemeral loopback port, against a fresh SQLite file or
//! a fresh PostgreSQL database plus a private Redis key prefix, with a manual clock.
//!
//! PostgreSQL and Redis come from `BOSON_TEST_DATABASE_URL` (a URL the tests may use to
//! `CREATE DATABASE`) and `BOSON_TEST_REDIS_URL`. Without them these tests are skipped with a
//! message, except when `CI` is set: then they fail.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use boson_control::AppState;
use boson_control::clock::{ManualClock, UnixMillis};
use boson_control::config::{
    Config, HostConfig, HttpLimits, JwtConfig, NodePolicy, RedisConfig, TurnConfig,
};
use boson_shared::TurnSecret;
pub(crate) use boson_shared::key_proof::Challenge;
use boson_shared::plane::{Command, HostId};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::sync::oneshot;

/// Which storage the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// SQLite file, limits in process.
    Sqlite,
    /// PostgreSQL and Redis.
    PostgresRedis,
}

/// Unix ms the manual clock starts at (2027-01-15).
pub(crate) const START: UnixMillis = UnixMillis(1_800_000_000_000);
pub(crate) const JWT_SECRET: &[u8] = b"integration-test-secret-of-32-bytes!";
pub(crate) const TURN_SECRET: &str = "turn-test-secret";

/// Settings a test may change before the server starts.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) node_timeout: Duration,
    pub(crate) register_rate_limit: u32,
    pub(crate) redis_url: Option<String>,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_connections_per_ip: u32,
    /// The host's heartbeat interval; its timeout is three times as long. Long by default, so
    /// that tests drive heartbeats themselves (the first one runs at start).
    pub(crate) host_heartbeat_interval: Duration,
    pub(crate) region: &'static str,
    pub(crate) relay_url: Option<String>,
    pub(crate) quic_addr: Option<String>,
    /// `--turn-secrets-file`; the configured secrets stay the test's own.
    pub(crate) turn_secrets_file: Option<std::path::PathBuf>,
    /// TLS on the API.
    pub(crate) api_tls: Option<boson_control::config::ApiTls>,
    /// `--trusted-proxies`.
    pub(crate) trusted_proxies: Vec<boson_shared::Cidr>,
    /// [`TestServer::start_cluster`]'s hosts share PostgreSQL only, not Redis.
    pub(crate) cluster_without_redis: bool,
    /// `--heartbeat-flush-interval`.
    pub(crate) heartbeat_flush_interval: Duration,
    /// `--index-sync-interval`.
    pub(crate) index_sync_interval: Duration,
    /// How often silent nodes are swept (and waiting heartbeats flushed before it).
    pub(crate) sweep_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_timeout: Duration::from_secs(90),
            register_rate_limit: 1000,
            redis_url: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections_per_ip: 256,
            host_heartbeat_interval: Duration::from_secs(3600),
            region: "US-CA",
            relay_url: None,
            quic_addr: None,
            turn_secrets_file: None,
            api_tls: None,
            trusted_proxies: Vec::new(),
            cluster_without_redis: false,
            heartbeat_flush_interval: Duration::from_secs(1),
            index_sync_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_millis(20),
        }
    }
}

/// What the hosts of one cluster share.
#[derive(Clone)]
struct Shared {
    database_url: String,
    redis: Option<RedisConfig>,
    clock: ManualClock,
}

pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) clock: ManualClock,
    pub(crate) state: AppState,
    pub(crate) backend: Backend,
    /// Every command the control plane sent to the (absent) dataplane.
    pub(crate) commands: Arc<Mutex<Vec<Command>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{name} must be set when CI is set: PostgreSQL/Redis tests may not be skipped")
        }
        _ => {
            eprintln!(
                "skipped: {name} is not set (run scripts/test.sh to start PostgreSQL and Redis)"
            );
            None
        }
    }
}

/// The PostgreSQL and Redis URLs, or `None` when the test should be skipped.
pub(crate) fn postgres_and_redis() -> Option<(String, String)> {
    Some((
        required_env("BOSON_TEST_DATABASE_URL")?,
        required_env("BOSON_TEST_REDIS_URL")?,
    ))
}

async fn fresh_postgres_database(admin_url: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("boson_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::AnyConnection::connect(admin_url)
        .await
        .expect("connecting to BOSON_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    admin.close().await.ok();
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("BOSON_TEST_DATABASE_URL has a database path");
    format!("{base}/{name}")
}

impl TestServer {
    /// Starts a server, or returns `None` if the backend is not available here (never in CI).
    pub(crate) async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, Options::default()).await
    }

    pub(crate) async fn start_with(backend: Backend, options: Options) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let shared = match backend {
            Backend::Sqlite => Shared {
                database_url: format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display()),
                redis: options.redis_url.clone().map(|url| RedisConfig {
                    url,
                    prefix: format!("boson-test:{}:", uuid::Uuid::new_v4().simple()),
                }),
                clock: ManualClock::new(START),
            },
            Backend::PostgresRedis => {
                let (pg, redis) = postgres_and_redis()?;
                Shared {
                    database_url: fresh_postgres_database(&pg).await,
                    redis: Some(RedisConfig {
                        url: options.redis_url.clone().unwrap_or(redis),
                        prefix: format!("boson-test:{}:", uuid::Uuid::new_v4().simple()),
                    }),
                    clock: ManualClock::new(START),
                }
            }
        };
        Some(Self::start_member(backend, &options, &shared, 1, dir).await)
    }

    /// `n` hosts sharing one database, one Redis prefix (unless
    /// [`Options::cluster_without_redis`]) and one clock (PostgreSQL and Redis only: SQLite is
    /// one host's file). Host `i` (from 1) serves TURN as `hI.example.test`.
    pub(crate) async fn start_cluster(n: u8, options: Options) -> Option<Vec<Self>> {
        let (pg, redis) = postgres_and_redis()?;
        let shared = Shared {
            database_url: fresh_postgres_database(&pg).await,
            redis: (!options.cluster_without_redis).then(|| RedisConfig {
                url: redis,
                prefix: format!("boson-test:{}:", uuid::Uuid::new_v4().simple()),
            }),
            clock: ManualClock::new(START),
        };
        let mut hosts = Vec::new();
        for i in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            hosts.push(Self::start_member(Backend::PostgresRedis, &options, &shared, i, dir).await);
        }
        Some(hosts)
    }

    /// Two hosts of one PostgreSQL ([`Self::start_cluster`]) that leave syncing to the test:
    /// they sweep and sync their routing index by themselves only once an hour. The second
    /// (the "back" host, the first being the "front") has had its first grant sync, which
    /// read every live node there was: none.
    pub(crate) async fn start_grant_sync_pair() -> Option<(Self, Self)> {
        let options = Options {
            sweep_interval: Duration::from_secs(3600),
            index_sync_interval: Duration::from_secs(3600),
            ..Options::default()
        };
        let mut hosts = Self::start_cluster(2, options).await?;
        let back = hosts.pop().unwrap();
        let front = hosts.pop().unwrap();
        back.state.sync_grants().await.unwrap();
        Some((front, back))
    }

    async fn start_member(
        backend: Backend,
        options: &Options,
        shared: &Shared,
        index: u8,
        dir: tempfile::TempDir,
    ) -> Self {
        let config = Config {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            database_url: shared.database_url.clone(),
            redis: shared.redis.clone(),
            jwt: JwtConfig {
                secret: JWT_SECRET.to_vec(),
                ttl: Duration::from_secs(3600),
            },
            key_proof_secret: None,
            turn: TurnConfig {
                secrets: vec![TurnSecret::new(TURN_SECRET), TurnSecret::new("older")],
                secrets_file: options.turn_secrets_file.clone(),
                max_allocations_per_user: 32,
                allowed_peers: Vec::new(),
                denied_peers: Vec::new(),
                credential_ttl: Duration::from_secs(600),
                public_host: if index == 1 {
                    "turn.example.test".to_owned()
                } else {
                    format!("h{index}.example.test")
                },
                port: 3478,
                tcp_port: None,
                tls_port: None,
                extra_urls: vec!["stun:stun.example.test:3478".to_owned()],
            },
            nodes: NodePolicy {
                timeout: options.node_timeout,
                heartbeat_interval: options.node_timeout / 3,
                sweep_interval: options.sweep_interval,
                heartbeat_flush_interval: options.heartbeat_flush_interval,
                index_sync_interval: options.index_sync_interval,
            },
            register_rate_limit: options.register_rate_limit,
            max_body_bytes: 16 * 1024,
            http: HttpLimits {
                header_read_timeout: options.header_read_timeout,
                body_read_timeout: options.body_read_timeout,
                max_connections_per_ip: options.max_connections_per_ip,
            },
            host: HostConfig {
                id: HostId(uuid::Uuid::new_v4()),
                region: options.region.to_owned(),
                coordinates: None,
                relay_url: options.relay_url.clone(),
                quic_addr: options.quic_addr.clone(),
                max_connections: 100,
                bandwidth_mbps: 1000.0,
                heartbeat_interval: options.host_heartbeat_interval,
                timeout: options.host_heartbeat_interval * 3,
            },
            routing_seed: Some(u64::from(index)),
            api_tls: options.api_tls.clone(),
            trusted_proxies: options.trusted_proxies.clone(),
        };
        let clock = shared.clock.clone();
        let state = AppState::connect(config, Arc::new(clock.clone()))
            .await
            .expect("starting the control plane");
        let commands = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&commands);
        state
            .set_command_sink(move |command| recorder.lock().unwrap().push(command))
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(boson_control::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            addr,
            http: reqwest::Client::new(),
            clock,
            state,
            backend,
            commands,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The commands sent since the last call.
    pub(crate) fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }

    /// Stops the server as a crash would: no clean leave from the host registry.
    pub(crate) async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// [`Self::kill`], handing back the data directory like [`Self::stop_keeping_data`].
    pub(crate) async fn kill_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self._dir
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `body` as JSON with an optional bearer token; returns status and parsed body.
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Registers `node` and returns its token, asserting 201.
    pub(crate) async fn register(&self, node: &Node) -> String {
        let body = self.registration(node).await;
        let (status, body) = self.post("/api/v1/nodes/register", None, &body).await;
        assert_eq!(status, 201, "{body}");
        body["sessionToken"].as_str().unwrap().to_owned()
    }

    /// A fresh challenge of this server (asserting 200).
    pub(crate) async fn challenge(&self) -> Challenge {
        let (status, body) = self
            .send(reqwest::Method::POST, "/api/v1/nodes/challenge", None, None)
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// `node`'s registration with the answer to a fresh challenge of this server, proved at
    /// the server's (manual) clock.
    pub(crate) async fn registration(&self, node: &Node) -> Value {
        let challenge = self.challenge().await;
        node.registration_answering(&challenge, self.clock_secs())
    }

    /// The manual clock in unix seconds.
    pub(crate) fn clock_secs(&self) -> u64 {
        use boson_control::clock::Clock as _;
        u64::try_from(self.clock.now().as_secs()).unwrap()
    }

    pub(crate) async fn heartbeat(&self, node: &Node, token: &str, active: u32) -> (u16, Value) {
        self.post(
            &format!("/api/v1/nodes/{}/heartbeat", node.id),
            Some(token),
            &json!({"metrics": {"latency": 12.5, "cpuUsage": 30, "activeConnections": active}}),
        )
        .await
    }

    /// The node ids an untargeted routing request through this host ranks for `client`
    /// (asserting 200).
    pub(crate) async fn routed(&self, client: &Node, token: &str) -> Vec<String> {
        let request = json!({
            "clientId": client.id,
            "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "FullCone"}
        });
        let (status, body) = self
            .post("/api/v1/routing/request", Some(token), &request)
            .await;
        assert_eq!(status, 200, "{body}");
        body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"][0].as_str().unwrap().to_owned())
            .collect()
    }

    /// The Prometheus text.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled sample in the Prometheus text.
    pub(crate) async fn sample(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Stops the server cleanly and hands back its data directory (the SQLite file), so a
    /// test can read what it left in the store.
    pub(crate) async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self._dir
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A node a test registers.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) id: uuid::Uuid,
    /// Its WireGuard private key.
    pub(crate) secret: [u8; 32],
    /// Its WireGuard public key, base64.
    pub(crate) key: String,
    pub(crate) region: &'static str,
    pub(crate) nat: &'static str,
}

/// A `keyProof` of the right shape that answers no challenge: what a body without a real
/// proof carries, so that it reaches the proof check (and is refused there).
pub(crate) fn unanswered_key_proof() -> Value {
    json!({"nonce": "A".repeat(32), "time": START.as_secs(), "proof": "A".repeat(43)})
}

impl Node {
    pub(crate) fn new(region: &'static str) -> Self {
        let secret: [u8; 32] = rand_bytes();
        Self {
            id: uuid::Uuid::new_v4(),
            secret,
            key: base64_encode(&boson_shared::key_proof::public_key(&secret)),
            region,
            nat: "FullCone",
        }
    }

    /// This node (same id) with `other`'s key pair.
    pub(crate) fn with_key_of(&self, other: &Self) -> Self {
        Self {
            secret: other.secret,
            key: other.key.clone(),
            ..self.clone()
        }
    }

    /// The registration answering `challenge`, proved at `unix_secs`.
    pub(crate) fn registration_answering(&self, challenge: &Challenge, unix_secs: u64) -> Value {
        let proof = challenge
            .answer(
                &self.secret,
                self.id.to_string().parse().unwrap(),
                unix_secs,
            )
            .unwrap();
        let mut body = self.registration();
        body["keyProof"] = serde_json::to_value(proof).unwrap();
        body
    }

    /// The registration with [`unanswered_key_proof`].
    pub(crate) fn registration(&self) -> Value {
        json!({
            "nodeId": self.id,
            "publicKey": self.key,
            "networkInfo": {
                "ipv4": "192.168.1.1", "ipv6": null, "natType": self.nat,
                "stunMappedAddress": "203.0.113.1:51820", "localPort": 51820
            },
            "capabilities": {
                "maxConnections": 100, "bandwidth": {"up": 100, "down": 100},
                "routing": true, "natting": true
            },
            "location": {"country": &self.region[..2], "region": self.region, "coordinates": [37.7749, -122.4194]},
            "metrics": {"latency": 50, "jitter": 5, "packetLoss": 0.1, "cpuUsage": 30, "memoryUsage": 40},
            "heartbeatInterval": 30,
            "keyProof": unanswered_key_proof()
        })
    }
}

/// 32 random bytes (two v4 UUIDs: the tests need uniqueness, not key quality).
fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::PostgresRedis).await;
                }
            )*
        }
    };
}
