//! A real browser relays through our TURN server: headless Chromium (Debian's `chromium`)
//! opens two `RTCPeerConnection`s in one page, relay-only, with one of our TURN URLs as their
//! only ICE server, and sends a known set of data-channel messages each way. Four legs, one
//! after another in the same page: `turn:…?transport=udp`, `turn:…?transport=tcp`,
//! `turns:127.0.0.1:…?transport=tcp` (the URLs exactly as `GET /api/v1/turn/ice` hands them
//! out, with their credentials), and `turns:localhost:…?transport=tcp`. Each leg must deliver
//! every message intact, select a relay candidate pair of its transport (`getStats()`:
//! `candidateType` `relay`, `relayProtocol` `udp`/`tcp`/`tls`), and show in the server's
//! per-core metrics: relayed bytes and packets both ways, and for TCP and TLS the stream
//! frames that carried them.
//!
//! Chromium validates a TURN server's TLS certificate like any other (its P2P sockets use the
//! network stack's verifier: an untrusted one fails with `ERR_CERT_AUTHORITY_INVALID`, and
//! our server counts the client's alert as a `tls_error` close). On Linux it trusts the roots
//! in the NSS database under `$HOME/.pki/nssdb`: the test makes a CA, adds it there with
//! `certutil` in a throw-away `HOME`, and serves a certificate for `localhost` and
//! `127.0.0.1` signed by it. A second browser whose database lacks the CA must get no relay
//! candidate over TLS at all: that proves the first one's TLS legs were verified.
//!
//! The page (`tests/browser/relay.html`) and its legs come from a small HTTP server in this
//! test on loopback; the page reports each leg with a POST that the test answers only after
//! it has checked the metrics, so the legs' counters do not mix.
//!
//! Needs `chromium` and `certutil` (Debian's `chromium` and `libnss3-tools`;
//! `scripts/services.sh` installs them). Without them the test skips with a message, except
//! when `CI` is set: then it fails.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const SECRET: &str = "browser-secret";
/// Messages each side of a leg sends.
const MESSAGES: u64 = 200;
/// Each message is its number and a pattern of `SIZE` to `2 * SIZE - 1` letters.
const SIZE: u64 = 300;
/// How long the page waits for each step of a leg (channels open, both ready, all arrived).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the test waits for a leg's result: the page's three steps and some.
const LEG_DEADLINE: Duration = Duration::from_secs(120);
const PAGE: &str = include_str!("browser/relay.html");

#[test]
fn chromium_relays_data_channels_over_udp_tcp_and_tls() {
    if !boson_testsupport::require(false, &["chromium", "certutil"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = common::start_local(
        dir.path(),
        &[
            "--no-pin",
            "--turn-static-secret",
            SECRET,
            "--turn-realm",
            "browser",
            "--relay-ports",
            &common::turn::relay_ports(200),
            "--danger-allow-loopback-peers",
            "--turn-tls-listen",
            "127.0.0.1:0",
            "--turn-tls-cert",
            pki.cert.to_str().unwrap(),
            "--turn-tls-key",
            pki.key.to_str().unwrap(),
        ],
        true,
    );
    let (urls, username, credential) = ice_turn(&server);
    let url = |prefix: &str, transport: &str| -> String {
        urls.iter()
            .find(|u| u.starts_with(prefix) && u.ends_with(transport))
            .unwrap_or_else(|| panic!("no {prefix}…{transport} URL in {urls:?}"))
            .clone()
    };
    let tls = url("turns:127.0.0.1:", "?transport=tcp");
    let legs = [
        Leg::new("udp", url("turn:127.0.0.1:", "?transport=udp"), "udp"),
        Leg::new("tcp", url("turn:127.0.0.1:", "?transport=tcp"), "tcp"),
        Leg::new("tls", tls.clone(), "tls"),
        Leg::new("tls by name", tls.replace("127.0.0.1", "localhost"), "tls"),
    ];
    let http = common::Http::new();
    let metrics = || Metrics::read(&http, &server.base);

    let trusting = Home::new(dir.path(), "trusting", Some(&pki.ca));
    let mut before = metrics();
    let results = run_browser(&trusting, &legs, &username, &credential, |leg, result| {
        check_leg(leg, result);
        let after = wait_counted(leg, result, &before, &metrics);
        before = after;
    });
    assert_eq!(results.len(), legs.len());

    // The same TLS leg in a browser that does not trust the CA gets nowhere, and the server
    // counts the client's alert.
    let untrusting = Home::new(dir.path(), "untrusting", None);
    let before = metrics();
    let refused = Leg::new("tls, CA not trusted", legs[3].url.clone(), "tls");
    run_browser(
        &untrusting,
        std::slice::from_ref(&refused),
        &username,
        &credential,
        |_, result| {
            assert_eq!(result["ok"], false, "{result:#}");
            let error = result["error"].as_str().unwrap_or_default();
            assert!(error.contains("no relay candidate"), "{result:#}");
        },
    );
    let tls_errors = |m: &Metrics| m.sum("turn_stream_closes_total", "reason=\"tls_error\"");
    assert!(
        boson_testsupport::clock::wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || tls_errors(&metrics()) > tls_errors(&before)
        ),
        "the refused handshakes are counted as tls_error closes"
    );
}

/// One run of the page's two connections: a name, the TURN URL, and the `relayProtocol` its
/// selected local candidate must have.
struct Leg {
    name: &'static str,
    url: String,
    protocol: &'static str,
}

impl Leg {
    fn new(name: &'static str, url: String, protocol: &'static str) -> Self {
        Self {
            name,
            url,
            protocol,
        }
    }
}

/// The page's result of `leg` is a success: every message arrived intact, over a relay pair
/// of the leg's transport, allocated through the leg's URL, on both connections.
fn check_leg(leg: &Leg, result: &Value) {
    assert_eq!(result["leg"], leg.name, "{result:#}");
    assert_eq!(result["ok"], true, "leg {}: {result:#}", leg.name);
    assert_eq!(result["sent"], 2 * MESSAGES, "{result:#}");
    assert_eq!(result["received"], 2 * MESSAGES, "{result:#}");
    assert_eq!(result["intact"], 2 * MESSAGES, "{result:#}");
    let pairs = result["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{result:#}");
    for pair in pairs {
        let local = &pair["local"];
        assert_eq!(local["candidateType"], "relay", "{result:#}");
        assert_eq!(local["relayProtocol"], leg.protocol, "{result:#}");
        assert_eq!(local["url"], leg.url.as_str(), "{result:#}");
        assert_eq!(local["address"], "127.0.0.1", "{result:#}");
        assert_eq!(pair["remote"]["candidateType"], "relay", "{result:#}");
    }
}

/// Waits until the server's metrics show `leg`'s traffic since `before`, and returns them:
/// at least the messages' bytes relayed each way (they travel in SCTP over DTLS, so more),
/// in at least as many packets as full-size ones would take; over TCP and TLS, at least one
/// stream frame per payload relayed to a peer (each came in as one), and over UDP none.
fn wait_counted(
    leg: &Leg,
    result: &Value,
    before: &Metrics,
    metrics: &impl Fn() -> Metrics,
) -> Metrics {
    let bytes = result["bytes"].as_u64().unwrap();
    assert!(bytes >= 2 * MESSAGES * SIZE, "{result:#}");
    let stream = leg.protocol != "udp";
    let mut last = None;
    let counted = boson_testsupport::clock::wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let now = metrics();
            let delta = |name: &str, labels: &str| now.sum(name, labels) - before.sum(name, labels);
            let to_peer = delta("relayed_packets_total", "direction=\"to_peer\"");
            let to_client = delta("relayed_packets_total", "direction=\"to_client\"");
            let bytes_to_peer = delta("relayed_bytes_total", "direction=\"to_peer\"");
            let bytes_to_client = delta("relayed_bytes_total", "direction=\"to_client\"");
            let frames = delta("turn_stream_frames_total", "");
            let accepted = delta("turn_stream_accepted_total", "");
            let ok = bytes_to_peer >= bytes
                && bytes_to_client >= bytes
                && to_peer >= bytes / 1500
                && to_client >= bytes / 1500
                && if stream {
                    frames >= to_peer && accepted >= 2
                } else {
                    frames == 0 && accepted == 0
                };
            last = Some(format!(
                "to_peer {to_peer} packets / {bytes_to_peer} bytes, to_client {to_client} / \
                 {bytes_to_client}, stream frames {frames}, accepted {accepted}; messages {bytes} bytes"
            ));
            ok
        },
    );
    assert!(
        counted,
        "leg {}: the metrics do not show its traffic: {}",
        leg.name,
        last.unwrap_or_default()
    );
    eprintln!("leg {}: {}", leg.name, last.unwrap_or_default());
    metrics()
}

/// The server's `/metrics`, summed over cores.
struct Metrics(String);

impl Metrics {
    fn read(http: &common::Http, base: &str) -> Self {
        Self(http.text(&format!("{base}/metrics")))
    }

    /// The sum over cores of `bosonserver_dataplane_<name>` series whose labels contain
    /// `labels`.
    fn sum(&self, name: &str, labels: &str) -> u64 {
        let prefix = format!("bosonserver_dataplane_{name}{{");
        self.0
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// The TURN URLs and the credential `GET /api/v1/turn/ice` gives a registered node.
fn ice_turn(server: &common::Running) -> (Vec<String>, String, String) {
    let http = common::Http::new();
    let node = common::node_body(&common::node_id(0xb7, 1), &common::wg_key(0xb7, 1));
    let token = http.register(&server.base, &node);
    http.ice_turn(&server.base, &token)
}

/// A test CA, and a certificate for `localhost` and `127.0.0.1` signed by it, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bosonserver browser test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let mut leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let write = |name: &str, text: String| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", ca.pem()),
            cert: write("turn-cert.pem", leaf.pem()),
            key: write("turn-key.pem", leaf_key.serialize_pem()),
        }
    }
}

/// A throw-away `HOME` for Chromium, with an NSS database that trusts `ca` (or nothing).
struct Home(PathBuf);

impl Home {
    fn new(dir: &Path, name: &str, ca: Option<&Path>) -> Self {
        let home = dir.join(name);
        let db = home.join(".pki/nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let db = format!("sql:{}", db.display());
        boson_testsupport::run("certutil", &["-N", "-d", &db, "--empty-password"]);
        if let Some(ca) = ca {
            boson_testsupport::run(
                "certutil",
                &[
                    "-A",
                    "-d",
                    &db,
                    "-n",
                    "bosonserver browser test CA",
                    "-t",
                    "C,,",
                    "-i",
                    ca.to_str().unwrap(),
                ],
            );
        }
        Self(home)
    }
}

/// Headless Chromium in a process group of its own, killed with the whole group when
/// dropped, however the test ends (and, should the test be killed, by `PR_SET_PDEATHSIG`:
/// its zygote and renderers then exit with it).
struct Browser {
    child: Child,
    log: PathBuf,
}

impl Browser {
    fn start(home: &Home, url: &str) -> Self {
        let profile = home.0.join("chromium-profile");
        let log = home.0.join("chromium.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new("chromium");
        boson_testsupport::die_with_parent(&mut command);
        let child = command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // WebRTC leaves the loopback interface out unless told; the TURN server and
                // its relay addresses are on it.
                "--allow-loopback-in-peer-connection",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .env("HOME", &home.0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        Self { child, log }
    }

    /// The end of Chromium's log, without the lines about the D-Bus it does not have.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("dbus") && !l.contains("D-Bus"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser, its zygote and renderers.
        boson_testsupport::run_quietly("kill", &["-KILL", "--", &format!("-{}", self.child.id())]);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("chromium's log:\n{}", self.log_tail());
        }
    }
}

/// Serves the page with `legs` to a browser in `home`, hands each leg's result to `check`
/// (which may panic) before the page goes on, and returns the results.
fn run_browser(
    home: &Home,
    legs: &[Leg],
    username: &str,
    credential: &str,
    mut check: impl FnMut(&Leg, &Value),
) -> Vec<Value> {
    let config = json!({
        "username": username,
        "credential": credential,
        "messages": MESSAGES,
        "size": SIZE,
        "timeoutMs": STEP_TIMEOUT.as_millis() as u64,
        "legs": legs.iter().map(|l| json!({"name": l.name, "url": l.url})).collect::<Vec<_>>(),
    });
    let (results, page) = PageServer::start(config.to_string());
    let _browser = Browser::start(home, &page);
    let mut seen = Vec::new();
    for leg in legs {
        let (result, done) = results
            .recv_timeout(LEG_DEADLINE)
            .unwrap_or_else(|_| panic!("no result for leg {} within {LEG_DEADLINE:?}", leg.name));
        eprintln!("leg {}: {result}", leg.name);
        check(leg, &result);
        seen.push(result);
        let _ = done.send(());
    }
    seen
}

/// A leg's result from the page, and the sender that lets the page's POST be answered.
type Report = (Value, mpsc::Sender<()>);

/// The test's HTTP server on loopback: `GET /` the page, `GET /config` its legs, `POST
/// /result` a leg's result (answered once the test has checked it).
struct PageServer;

impl PageServer {
    /// Starts the server in a thread; returns where results arrive and the page's URL.
    fn start(config: String) -> (mpsc::Receiver<Report>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, tx) = (config.clone(), tx.clone());
                std::thread::spawn(move || serve(stream, &config, &tx));
            }
        });
        (rx, url)
    }
}

/// Answers one request on `stream`.
fn serve(stream: TcpStream, config: &str, results: &mpsc::Sender<Report>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, answer) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_owned()),
        ("GET", "/config") => ("200 OK", "application/json", config.to_owned()),
        ("POST", "/result") => {
            let result = serde_json::from_slice(&body).unwrap_or_else(
                |e| json!({"ok": false, "error": format!("unreadable result: {e}")}),
            );
            let (done, checked) = mpsc::channel();
            if results.send((result, done)).is_err() {
                return;
            }
            // The page starts its next leg when this is answered: after the test's checks.
            let _ = checked.recv_timeout(Duration::from_secs(60));
            ("204 No Content", "text/plain", String::new())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.flush();
}
