//! Runs the `bosonserver` binary as a user would, in a directory of its own, and learns its
//! addresses from its log.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(clippy::unwrap_used, reason = "tests")]

#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the harness"
)]
pub(crate) use boson_testsupport::services;
pub(crate) mod turn;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

/// A running server; killed when dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    /// `http://127.0.0.1:PORT` of the REST API.
    pub(crate) base: String,
    /// The STUN/TURN listener, when the dataplane runs.
    pub(crate) turn: Option<SocketAddr>,
    /// The node relay's TCP listener, when it runs.
    pub(crate) relay: Option<SocketAddr>,
    /// Every line the server has logged so far.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key` on a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(key).nth(1)?;
    rest.split_whitespace().next()
}

/// Starts the binary in `dir` with `args`, waits until the REST API (and, if `dataplane`, the
/// STUN/TURN listener) say where they listen.
pub(crate) fn start(dir: &Path, args: &[&str], dataplane: bool) -> Running {
    spawn(&[], dir, args, true, dataplane)
}

/// `bosonserver run` on loopback with ephemeral REST and STUN/TURN ports and 2 workers, then
/// `args`, in `dir`: [`start`] with the arguments most tests begin with.
#[allow(dead_code, reason = "not every test file starts a local server")]
pub(crate) fn start_local(dir: &Path, args: &[&str], dataplane: bool) -> Running {
    let local = [
        "run",
        "--http-listen",
        "127.0.0.1:0",
        "--turn-listen",
        "127.0.0.1:0",
        "--workers",
        "2",
    ];
    let args: Vec<&str> = local.iter().chain(args).copied().collect();
    start(dir, &args, dataplane)
}

/// As [`start`], run through `wrapper` (such as `ip netns exec NAME`), which must exec the
/// binary in place so that the child's pid is the server's.
#[allow(
    dead_code,
    reason = "not every test file runs a server through a wrapper"
)]
pub(crate) fn start_with(wrapper: &[&str], dir: &Path, args: &[&str], dataplane: bool) -> Running {
    spawn(wrapper, dir, args, true, dataplane)
}

/// `bosonserver dataplane` in `dir` with `args` after the subcommand: waits until its STUN/TURN
/// listener says where it listens (it serves no REST API: `base` is empty).
#[allow(dead_code, reason = "not every test file runs a dataplane process")]
pub(crate) fn start_dataplane(dir: &Path, args: &[&str]) -> Running {
    let args: Vec<&str> = std::iter::once("dataplane")
        .chain(args.iter().copied())
        .collect();
    spawn(&[], dir, &args, false, true)
}

/// Starts the binary (through `wrapper`, if any) and waits for the REST API if `http`, and
/// for the STUN/TURN listener if `dataplane`.
fn spawn(wrapper: &[&str], dir: &Path, args: &[&str], http: bool, dataplane: bool) -> Running {
    let binary = env!("CARGO_BIN_EXE_bosonserver");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    // Tests run in parallel: unless told otherwise, the relay takes any free loopback port.
    let relay_args: &[&str] = if dataplane
        && !args
            .iter()
            .any(|a| *a == "--relay-listen" || *a == "--no-relay")
    {
        &["--relay-listen", "127.0.0.1:0"]
    } else {
        &[]
    };
    command
        .args(args)
        .args(relay_args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    boson_testsupport::clear_config_env(&mut command);
    // BOSON_TEST_SERVER_LOG=<filter> shows the server's log on the test's stderr.
    let echo = std::env::var("BOSON_TEST_SERVER_LOG").ok();
    if let Some(filter) = &echo {
        command.env("RUST_LOG", filter);
    }
    let mut child = command.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log_lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if echo.is_some() {
                eprintln!("[server] {line}");
            }
            log_lines.lock().unwrap().push(line.clone());
            if let Some(base) = field(&line, "listening on ") {
                let _ = tx.send(("http", base.to_owned()));
            }
            if line.contains("node relay listening")
                && let Some(addr) = field(&line, "relay_addr=")
            {
                let _ = tx.send(("relay", addr.to_owned()));
            }
            if line.contains("dataplane started")
                && let Some(addr) = field(&line, "local_addr=")
            {
                let _ = tx.send(("turn", addr.to_owned()));
            }
        }
    });
    let mut base = None;
    let mut turn = None;
    let mut relay = None;
    while (http && base.is_none()) || (dataplane && turn.is_none()) {
        let (what, value) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server never said where it listens");
        match what {
            "http" => base = Some(value),
            "relay" => relay = Some(value.parse().unwrap()),
            _ => turn = Some(value.parse().unwrap()),
        }
    }
    Running {
        child,
        base: base.unwrap_or_default(),
        turn,
        relay,
        log,
    }
}

/// Sends a STUN Binding request to `server` and returns the XOR-MAPPED-ADDRESS it reports,
/// decoded by hand (no dependency on our own codec).
pub(crate) fn stun_mapped_address(server: SocketAddr) -> (SocketAddr, SocketAddr) {
    stun_mapped_address_from([127, 0, 0, 1].into(), server)
}

/// As [`stun_mapped_address`], from a socket on `local`.
pub(crate) fn stun_mapped_address_from(
    local: std::net::IpAddr,
    server: SocketAddr,
) -> (SocketAddr, SocketAddr) {
    let socket = std::net::UdpSocket::bind((local, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[9; 12]);
    let mut buf = [0u8; 1500];
    for _ in 0..50 {
        socket.send_to(&request, server).unwrap();
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let response = &buf[..len];
        assert_eq!(&response[..2], &[0x01, 0x01], "a Binding success response");
        assert_eq!(&response[8..20], &request[8..20], "same transaction id");
        let mut at = 20;
        while at + 4 <= len {
            let kind = u16::from_be_bytes([response[at], response[at + 1]]);
            let size = usize::from(u16::from_be_bytes([response[at + 2], response[at + 3]]));
            let value = &response[at + 4..at + 4 + size];
            if kind == 0x0020 && value[1] == 0x01 {
                let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
                let ip = std::net::Ipv4Addr::from(
                    u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ 0x2112_a442,
                );
                return (SocketAddr::from((ip, port)), socket.local_addr().unwrap());
            }
            at += 4 + size.div_ceil(4) * 4;
        }
        panic!("no XOR-MAPPED-ADDRESS in {response:?}");
    }
    panic!("no STUN answer from {server}");
}

/// A small blocking HTTP client over reqwest's async one.
pub(crate) struct Http(tokio::runtime::Runtime, reqwest::Client);

impl Http {
    pub(crate) fn new() -> Self {
        Self(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            // Idle connections are dropped before the server's idle timeout (10 s) closes
            // them under a request.
            reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
    }

    pub(crate) fn get(&self, url: &str) -> (u16, Value) {
        self.0.block_on(async {
            let response = self.1.get(url).send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }

    pub(crate) fn get_auth(&self, url: &str, token: &str) -> (u16, Value) {
        self.0.block_on(async {
            let response = self.1.get(url).bearer_auth(token).send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }

    pub(crate) fn post(&self, url: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        self.0.block_on(async {
            let mut request = self.1.post(url).json(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }

    /// Registers `node` (a [`node_body`]) with the server at `base`, asserting 201, and
    /// returns its token.
    pub(crate) fn register(&self, base: &str, node: &Value) -> String {
        let node = self.prove(base, node);
        let (status, body) = self.post(&format!("{base}/api/v1/nodes/register"), &node, None);
        assert_eq!(status, 201, "{body}");
        body["sessionToken"].as_str().unwrap().to_owned()
    }

    /// `GET /api/v1/turn/ice` from the server at `base` for the holder of `token`, asserting
    /// 200: the TURN entry's URLs, username and credential.
    pub(crate) fn ice_turn(&self, base: &str, token: &str) -> (Vec<String>, String, String) {
        let (status, answer) = self.get_auth(&format!("{base}/api/v1/turn/ice"), token);
        assert_eq!(status, 200, "{answer}");
        let turn = answer["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["username"].is_string())
            .unwrap_or_else(|| panic!("no TURN server in {answer}"));
        let urls = turn["urls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        (
            urls,
            turn["username"].as_str().unwrap().to_owned(),
            turn["credential"].as_str().unwrap().to_owned(),
        )
    }

    /// `node` (a [`node_body`], whose `publicKey` holds a seed of the node's private key)
    /// ready to send: its real public key, and the proof answering a fresh challenge of
    /// `base`, made at the server's time (the challenge's expiry less its lifetime). The
    /// private key is the seed's SHA-256: X25519 clamps the low bits of a key's first byte,
    /// where the tests' seeds differ.
    pub(crate) fn prove(&self, base: &str, node: &Value) -> Value {
        let (status, challenge) = self.post(
            &format!("{base}/api/v1/nodes/challenge"),
            &Value::Null,
            None,
        );
        assert_eq!(status, 200, "{challenge}");
        let now = challenge["expiresAt"].as_u64().unwrap() / 1000
            - challenge["expiresIn"].as_u64().unwrap();
        let challenge: boson_shared::key_proof::Challenge =
            serde_json::from_value(challenge).unwrap();
        let seed: boson_shared::WgPublicKey = node["publicKey"].as_str().unwrap().parse().unwrap();
        let secret: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes()).into();
        let mut node = node.clone();
        node["publicKey"] =
            boson_shared::WgPublicKey::from_bytes(boson_shared::key_proof::public_key(&secret))
                .to_base64()
                .into();
        let id = node["nodeId"].as_str().unwrap().parse().unwrap();
        node["keyProof"] =
            serde_json::to_value(challenge.answer(&secret, id, now).unwrap()).unwrap();
        node
    }

    /// Any request: its status, `Retry-After` header and JSON body (panics if not JSON).
    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Option<String>, Value) {
        self.0.block_on(async {
            let mut request = self.1.request(method, url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let text = response.text().await.unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
            (status, retry_after, json)
        })
    }

    pub(crate) fn text(&self, url: &str) -> String {
        self.0
            .block_on(async { self.1.get(url).send().await.unwrap().text().await.unwrap() })
    }
}

/// A QUIC relay node of a test: its own runtime (multi-threaded, so quinn's endpoint driver
/// runs while the test thread blocks on a WebSocket client) and its connection.
pub(crate) struct QuicNode {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// Joins the QUIC relay at `relay` with `token`, trusting the development certificate the
/// server wrote into `data_dir`.
pub(crate) fn quic_node(relay: SocketAddr, data_dir: &Path, token: &str) -> QuicNode {
    let pem = std::fs::read(data_dir.join("relay-cert.pem")).unwrap();
    let cert = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    quic_node_trusting(relay, cert, token)
}

/// Joins the QUIC relay at `relay` with `token`, trusting `root` (a CA or the certificate
/// itself) for a certificate that names `localhost`.
pub(crate) fn quic_node_trusting(
    relay: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    token: &str,
) -> QuicNode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (conn, control) = runtime.block_on(quic_join(relay, cert, token));
    QuicNode {
        runtime,
        conn,
        _control: control,
    }
}

/// A QUIC relay session: handshake trusting `cert`, AUTH on the control stream, READY.
pub(crate) async fn quic_join(
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    token: &str,
) -> (quinn::Connection, (quinn::SendStream, quinn::RecvStream)) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![b"boson-relay/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    // From loopback to loopback; from any address to another host's.
    let local = if addr.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let mut endpoint = quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut auth = u16::try_from(1 + token.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    auth.push(0x05);
    auth.extend_from_slice(token.as_bytes());
    send.write_all(&auth).await.unwrap();
    let mut ready = [0u8; 19];
    recv.read_exact(&mut ready).await.unwrap();
    assert_eq!(&ready[..3], &[0x00, 0x11, 0x07], "READY");
    (conn, (send, recv))
}

/// A registration body for node `id` whose WireGuard private key is derived from `key`
/// (base64 of 32 bytes), to be sent through [`Http::register`] or [`Http::prove`], which put
/// its public key in its place and prove it.
pub(crate) fn node_body(id: &str, key: &str) -> Value {
    serde_json::json!({
        "nodeId": id,
        "publicKey": key,
        "networkInfo": {"ipv4": "192.168.1.1", "natType": "Symmetric", "localPort": 51820},
        "capabilities": {"maxConnections": 100, "bandwidth": {"up": 100, "down": 100}},
        "location": {"country": "US", "region": "US-CA"}
    })
}

/// Node id number `i` of a test (`tag` keeps tests apart).
pub(crate) fn node_id(tag: u8, i: u16) -> String {
    format!("6f1d3a52-8a5e-4c1e-9a{tag:02x}-{i:012x}")
}

/// A distinct key seed (base64 of 32 bytes) for node `i` of `tag`: see [`node_body`].
pub(crate) fn wg_key(tag: u8, i: u16) -> String {
    let mut bytes = [7u8; 32];
    bytes[0] = tag;
    bytes[1..3].copy_from_slice(&i.to_be_bytes());
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

impl Running {
    /// Sends `signal` (such as `TERM`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// The first line the server has logged that contains `needle`, waiting up to `timeout`
    /// for it.
    #[allow(dead_code, reason = "not every test file reads the server's log")]
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let step = Duration::from_millis(20);
        for _ in 0..=timeout.as_millis() / step.as_millis() {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            std::thread::sleep(step);
        }
        None
    }

    /// Waits up to `timeout` for the server to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let step = Duration::from_millis(20);
        for _ in 0..=timeout.as_millis() / step.as_millis() {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(step);
        }
        None
    }

    /// The server's resident memory (kB), open file descriptors, and CPU time (clock ticks,
    /// user + system) from `/proc`.
    pub(crate) fn resources(&self) -> Resources {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kb = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) in parentheses; utime and
        // stime are fields 14 and 15, so 12 and 13 after it.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Resources {
            rss_kb,
            fds,
            cpu_ticks,
        }
    }
}

/// See [`Running::resources`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resources {
    pub(crate) rss_kb: u64,
    pub(crate) fds: usize,
    pub(crate) cpu_ticks: u64,
}

/// Clock ticks per second, the unit of [`Resources::cpu_ticks`].
pub(crate) fn clock_ticks_per_second() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// A relay session driven by the node library's blocking shell.
pub(crate) type WsClient<S> = boson_node::relay_blocking::BlockingClient<S, rand::rngs::StdRng>;

/// A TCP connection to a relay: `TCP_NODELAY`, 10 s read timeout.
pub(crate) fn ws_connect(addr: SocketAddr) -> std::net::TcpStream {
    boson_node::relay_blocking::connect(addr, Duration::from_secs(10)).unwrap()
}

/// Upgrades `stream` to a relay session at `/relay`, presenting the token as `auth` says; the
/// session never pings.
pub(crate) fn ws_upgrade<S: std::io::Read + std::io::Write>(
    stream: S,
    auth: boson_node::ws::Auth<'_>,
) -> Result<WsClient<S>, boson_node::relay_blocking::UpgradeError> {
    WsClient::upgrade_without_pings(stream, auth)
}
