//! Runs the real `bosonserver` on loopback and `boson-node` agents against it, with plain
//! UDP sockets standing in for WireGuard.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A child process killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) log: mpsc::Receiver<String>,
    pub(crate) name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Waits for the process to exit, at most `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Log lines so far, without waiting.
    pub(crate) fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

pub(crate) fn spawn(name: &'static str, mut command: Command, echo: bool) -> Proc {
    boson_testsupport::clear_config_env(&mut command);
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[{name}] {line}");
            }
            let _ = tx.send(line);
        }
    });
    Proc {
        child,
        log: rx,
        name,
    }
}

/// A free TCP port on loopback (bound and released).
pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free on loopback for both TCP and UDP now (the relay listens on TCP and the QUIC
/// relay on UDP at the same number).
pub(crate) fn free_tcp_udp_port() -> u16 {
    loop {
        let port = free_tcp_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `bosonserver` binary next to this test's target directory.
fn bosonserver_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let binary = dir.join("bosonserver");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build -p bosonserver`; `cargo test --workspace` does)",
        binary.display()
    );
    binary
}

/// A running server.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    pub(crate) relay_port: u16,
}

/// Starts `bosonserver run` in `dir` with a WebSocket relay on a free port, announced as
/// `ws://127.0.0.1:PORT/relay`, and `extra` arguments.
pub(crate) fn start_server(dir: &Path, extra: &[&str]) -> Server {
    start_on_free_ports(|| try_start_server_in(&[], "127.0.0.1", 0, free_tcp_port(), dir, extra))
}

/// Starts a server on ports chosen by bind-and-release, again on new ones when another
/// process (a parallel test's server, say) took one in between. Any other failure to start
/// panics with the server's log.
fn start_on_free_ports(mut start: impl FnMut() -> Result<Server, StartFailure>) -> Server {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match start() {
            Ok(server) => return server,
            Err(failure) if failure.port_taken() && attempts < 5 => {
                eprintln!("a port was taken before the server bound it; again on new ports");
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

/// As [`start_server`], with the QUIC relay announced on the relay's port
/// (`--public-quic-addr 127.0.0.1:PORT`); its development certificate is
/// `dir/data/relay-cert.pem`, for the name `localhost`.
pub(crate) fn start_server_with_quic(dir: &Path, extra: &[&str]) -> Server {
    start_on_free_ports(|| {
        let relay_port = free_tcp_udp_port();
        let quic_addr = format!("127.0.0.1:{relay_port}");
        let mut args = vec!["--public-quic-addr", quic_addr.as_str()];
        args.extend_from_slice(extra);
        try_start_server_in(&[], "127.0.0.1", 0, relay_port, dir, &args)
    })
}

/// Why a server did not come up: its exit (or silence) and everything it logged.
pub(crate) struct StartFailure {
    what: String,
    log: Vec<String>,
}

impl StartFailure {
    /// Whether it failed because an address was in use.
    fn port_taken(&self) -> bool {
        self.log
            .iter()
            .any(|line| line.to_ascii_lowercase().contains("in use"))
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the server never said where it listens: {}", self.what)?;
        for line in &self.log {
            writeln!(f, "[server] {line}")?;
        }
        Ok(())
    }
}

/// As [`start_server`], through `wrapper` (such as `ip netns exec NS`, which execs in
/// place), listening on `ip` with the API on `http_port` (0: any) and the relay on
/// `relay_port`.
pub(crate) fn start_server_in(
    wrapper: &[&str],
    ip: &str,
    http_port: u16,
    relay_port: u16,
    dir: &Path,
    extra: &[&str],
) -> Server {
    try_start_server_in(wrapper, ip, http_port, relay_port, dir, extra)
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// As [`start_server_in`], returning why the server did not come up.
pub(crate) fn try_start_server_in(
    wrapper: &[&str],
    ip: &str,
    http_port: u16,
    relay_port: u16,
    dir: &Path,
    extra: &[&str],
) -> Result<Server, StartFailure> {
    let http_listen = format!("{ip}:{http_port}");
    let turn_listen = format!("{ip}:0");
    let relay_listen = format!("{ip}:{relay_port}");
    let relay_url = format!("ws://{ip}:{relay_port}/relay");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(bosonserver_binary());
            command
        }
        None => Command::new(bosonserver_binary()),
    };
    command
        .args([
            "run",
            "--http-listen",
            &http_listen,
            "--workers",
            "1",
            "--no-pin",
            "--relay-listen",
            &relay_listen,
            "--public-relay-url",
            &relay_url,
        ])
        .args(extra)
        .current_dir(dir);
    // A test that needs a fixed STUN/TURN port passes its own.
    if !extra.contains(&"--turn-listen") {
        command.args(["--turn-listen", &turn_listen]);
    }
    let echo = std::env::var_os("BOSON_TEST_SERVER_LOG").is_some();
    if echo {
        command.env("RUST_LOG", "info");
    }
    let mut proc = spawn("server", command, echo);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    let base = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match proc.log.recv_timeout(left) {
            Ok(line) => line,
            Err(error) => {
                let what = match proc.wait_exit(Duration::from_secs(5)) {
                    Some(status) => format!("it exited ({status})"),
                    None => format!("nothing in 60 s ({error})"),
                };
                return Err(StartFailure { what, log });
            }
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        log.push(line);
    };
    Ok(Server {
        proc,
        base,
        relay_port,
    })
}

/// A node: its id, key pair files and the UDP socket standing in for its WireGuard.
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) public_key: String,
    /// The private key the key file holds.
    pub(crate) private: [u8; 32],
    pub(crate) key_file: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) wg: UdpSocket,
}

impl Node {
    /// Node `n` of a test, with its files in `dir`.
    pub(crate) fn new(dir: &Path, tag: u8, n: u8) -> Self {
        let id = format!("6f1d3a52-8a5e-4c1e-9a{tag:02x}-0000000000{n:02x}");
        let mut private = [0u8; 32];
        for (i, b) in private.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ tag ^ n.wrapping_mul(97);
        }
        let public = boson_node::keys::public_key(private);
        let key_file = dir.join(format!("node{n}.key"));
        std::fs::write(&key_file, format!("{}\n", STANDARD.encode(private))).unwrap();
        let wg = UdpSocket::bind("127.0.0.1:0").unwrap();
        wg.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            id,
            public_key: public.to_base64(),
            private,
            key_file,
            state_dir: dir.join(format!("state{n}")),
            wg,
        }
    }

    pub(crate) fn wg_port(&self) -> u16 {
        self.wg.local_addr().unwrap().port()
    }

    pub(crate) fn peer_arg(&self) -> String {
        format!("{}={}", self.id, self.public_key)
    }
}

/// The `boson-node` binary under test.
pub(crate) fn boson_node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boson-node"))
}

/// Starts `boson-node run` for `node` against `server` with `peers` and `extra` args.
pub(crate) fn start_agent(
    name: &'static str,
    node: &Node,
    servers: &[&str],
    peers: &[&Node],
    extra: &[&str],
) -> Proc {
    let mut command = boson_node();
    command.arg("run");
    for server in servers {
        command.args(["--server", server]);
    }
    command.args([
        "--wg-listen-port",
        &node.wg_port().to_string(),
        "--wg-private-key-file",
        node.key_file.to_str().unwrap(),
        "--node-id",
        &node.id,
        "--state-dir",
        node.state_dir.to_str().unwrap(),
    ]);
    for peer in peers {
        command.args(["--peer", &peer.peer_arg()]);
    }
    command.args(extra);
    let echo = std::env::var_os("BOSON_TEST_AGENT_LOG").is_some();
    command.env("RUST_LOG", if echo { "debug" } else { "info" });
    spawn(name, command, echo)
}

/// `boson-node status --state-dir DIR`: exit code and stdout lines.
pub(crate) fn status(state_dir: &Path) -> (i32, Vec<Vec<String>>) {
    let out = boson_node()
        .args(["status", "--state-dir", state_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// Waits until `status` shows `peer` with `want(line)`, returning the line.
pub(crate) fn wait_status(
    state_dir: &Path,
    peer: &str,
    timeout: Duration,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        let (code, lines) = status(state_dir);
        if code == 0
            && let Some(line) = lines
                .iter()
                .find(|l| l.first().map(String::as_str) == Some(peer))
        {
            if want(line) {
                return line.clone();
            }
            last = Some(line.clone());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "status of {peer} in {} never matched; last {last:?}",
        state_dir.display()
    );
}

/// A WireGuard-shaped packet: handshake initiation (type 1, 148 bytes), response (type 2,
/// 92 bytes) or transport data (type 4, `16 + len` bytes), tagged with `seq`.
pub(crate) fn wg_packet(kind: u8, seq: u32, len: usize) -> Vec<u8> {
    let total = match kind {
        1 => 148,
        2 => 92,
        _ => 16 + len,
    };
    let mut packet = vec![0u8; total];
    packet[0] = kind;
    packet[4..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in packet.iter_mut().enumerate().skip(8) {
        *b = (i as u32 ^ seq) as u8;
    }
    packet
}

/// Receives one datagram on `socket` within `timeout`.
pub(crate) fn recv(socket: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65_536];
    while Instant::now() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            return Some((buf[..len].to_vec(), from));
        }
    }
    None
}

/// A blocking JSON POST to the API over plain HTTP/1.1: status and body.
pub(crate) fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    http("POST", url, None, Some(body))
}

/// A blocking API request over plain HTTP/1.1: status and JSON body (`Null` if none).
pub(crate) fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(ToString::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Sends `packet` from `from` to `to_port` until it arrives at `at`: the first packets may
/// fall before both relay sessions are up, as WireGuard's first handshake initiations do.
/// Returns the address it arrived from.
pub(crate) fn until_through(
    from: &Node,
    to_port: u16,
    at: &Node,
    packet: &[u8],
    timeout: Duration,
) -> SocketAddr {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        from.wg.send_to(packet, ("127.0.0.1", to_port)).unwrap();
        if let Some((got, src)) = recv(&at.wg, Duration::from_millis(300))
            && got == packet
        {
            return src;
        }
    }
    panic!("the packet never went through within {timeout:?}");
}

/// Drains what `socket` has queued.
pub(crate) fn drain(socket: &UdpSocket) {
    while recv(socket, Duration::from_millis(50)).is_some() {}
}

/// A registration body for `node`.
pub(crate) fn register_body(base: &str, node: &Node) -> serde_json::Value {
    let (status, challenge) = http(
        "POST",
        &format!("{base}/api/v1/nodes/challenge"),
        None,
        None,
    );
    assert_eq!(status, 200, "{challenge}");
    let challenge: boson_shared::key_proof::Challenge = serde_json::from_value(challenge).unwrap();
    let proof = challenge
        .answer(
            &node.private,
            node.id.parse().unwrap(),
            boson_node::clock::unix_ms() / 1000,
        )
        .unwrap();
    serde_json::json!({
        "nodeId": node.id,
        "publicKey": node.public_key,
        "networkInfo": {"ipv4": "127.0.0.1", "natType": "Symmetric", "localPort": node.wg_port()},
        "capabilities": {"maxConnections": 10, "bandwidth": {"up": 1, "down": 1}},
        "location": {"country": "ZZ", "region": "test"},
        "keyProof": proof
    })
}

/// Waits for a log line of `proc` that holds every one of `needles`; returns it.
pub(crate) fn wait_log(proc: &Proc, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = proc
            .log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{} never logged a line with {needles:?}", proc.name));
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

/// An HTTP/1.1 proxy on loopback in front of the control plane at `upstream`
/// (`http://IP:PORT`) that answers `POST path` itself with `answer` (status 200, JSON) and
/// passes every other request through. One request per connection, as the agent makes them.
/// Returns its base URL.
pub(crate) fn answering_proxy(upstream: &str, path: &'static str, answer: String) -> String {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = upstream.clone();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let _ = proxy_one(client, &upstream, path, &answer);
            });
        }
    });
    base
}

/// Reads one HTTP/1.1 message (head and a `Content-Length` body).
fn read_message(stream: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

fn proxy_one(
    mut client: std::net::TcpStream,
    upstream: &str,
    path: &str,
    answer: &str,
) -> std::io::Result<()> {
    use std::io::Write as _;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = read_message(&mut client)?;
    if request.starts_with(format!("POST {path} ").as_bytes()) {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{answer}",
            answer.len()
        );
        return client.write_all(response.as_bytes());
    }
    let mut server = std::net::TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(10)))?;
    server.write_all(&request)?;
    let response = read_message(&mut server)?;
    client.write_all(&response)
}

/// Waits until the agents of `a` and `b` both report `route` for each other, opens the path
/// with a handshake initiation and response (the first packets may fall before both
/// sessions are up), then sends 4 rounds of 100 transport packets each way, of sizes up to
/// `max_len`, and checks that every one arrives (as sets: datagrams are unordered in
/// principle) and that A's status ends `up` on `route`.
pub(crate) fn carry_every_packet_both_ways(a: &Node, b: &Node, route: &str, max_len: usize) {
    let port_ab: u16 = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == route
    })[3]
        .parse()
        .unwrap();
    let port_ba: u16 = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[1] == route
    })[3]
        .parse()
        .unwrap();
    let src = until_through(a, port_ab, b, &wg_packet(1, 0, 0), Duration::from_secs(30));
    assert_eq!(src.port(), port_ba);
    until_through(b, port_ba, a, &wg_packet(2, 0, 0), Duration::from_secs(10));

    for round in 0..4u32 {
        let mut sent_ab = Vec::new();
        let mut sent_ba = Vec::new();
        for seq in 0..100u32 {
            let packet = wg_packet(4, round * 1000 + seq, (seq as usize * 13) % max_len);
            a.wg.send_to(&packet, ("127.0.0.1", port_ab)).unwrap();
            sent_ab.push(packet);
            let packet = wg_packet(4, round * 1000 + seq + 500, (seq as usize * 7) % max_len);
            b.wg.send_to(&packet, ("127.0.0.1", port_ba)).unwrap();
            sent_ba.push(packet);
        }
        for (at, sent, what) in [(b, &mut sent_ab, "A → B"), (a, &mut sent_ba, "B → A")] {
            let mut got = Vec::new();
            while got.len() < sent.len() {
                let (packet, _) = recv(&at.wg, Duration::from_secs(10)).unwrap_or_else(|| {
                    panic!("{what}: {} of 100 arrived in round {round}", got.len())
                });
                got.push(packet);
            }
            got.sort();
            sent.sort();
            assert!(got == *sent, "{what}: round {round} differs");
        }
    }
    let line = wait_status(&a.state_dir, &b.id, Duration::from_secs(5), |l| {
        l[2] == "up"
    });
    assert_eq!(line[1], route);
}
