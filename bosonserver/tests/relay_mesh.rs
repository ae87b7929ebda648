//! Issue 4's done-when across hosts: two `bosonserver` processes share a Redis (the relay host
//! registry and node presence) and a mesh key; a node on one relays to a node on the other.
//! The hosts serve wss with certificates of a CA made here and link over TLS 1.3 (issue 15:
//! a host without the mesh key gets no link; PEER_GONE crosses hosts).
//!
//! Needs Redis: `BOSON_TEST_REDIS_URL` (scripts/test.sh starts one). Without it the test is
//! skipped with a message, except when `CI` is set: then it fails.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};
use rustls::pki_types::{CertificateDer, ServerName};

/// A relay session's stream: TLS over TCP.
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The deployment's CA and one certificate for `localhost` and `127.0.0.1` that every host of
/// the test serves, as files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    ca_file: String,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let write = |name: &str, text: String| -> String {
            let path: PathBuf = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        Self {
            ca: ca.der().clone(),
            ca_file: write("ca.pem", ca.pem()),
            cert: write("cert.pem", leaf.pem()),
            key: write("key.pem", leaf_key.serialize_pem()),
            _dir: dir,
        }
    }

    /// A TLS connection to `relay`, trusting the CA only.
    fn connect(&self, relay: SocketAddr) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        rustls::StreamOwned::new(tls, connect(relay))
    }
}

const MESH_KEY: &str = "mesh-key-for-tests-0123456789abcdef";
const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

fn redis_url() -> Option<String> {
    match std::env::var("BOSON_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "BOSON_TEST_REDIS_URL is required when CI is set (scripts/test.sh starts Redis)"
            );
            eprintln!("skipped: BOSON_TEST_REDIS_URL is not set");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The settings every process of one host shares (the host id, so that the control plane
/// and the dataplane of a split host agree on who they are).
fn host_args<'a>(
    relay: &'a str,
    url: &'a str,
    redis: &'a str,
    prefix: &'a str,
    pki: &'a Pki,
) -> Vec<&'a str> {
    vec![
        "--relay-cert",
        &pki.cert,
        "--relay-key",
        &pki.key,
        "--mesh-ca-file",
        &pki.ca_file,
        "--turn-listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--relay-listen",
        relay,
        "--public-relay-url",
        url,
        "--mesh-key",
        MESH_KEY,
        "--jwt-secret",
        JWT_SECRET,
        "--redis-url",
        redis,
        "--redis-prefix",
        prefix,
        "--host-heartbeat-interval",
        "1s",
    ]
}

fn host(dir: &Path, redis: &str, prefix: &str, pki: &Pki) -> (common::Running, SocketAddr) {
    host_with_key(dir, redis, prefix, pki, MESH_KEY)
}

/// A host whose mesh key is `mesh_key`.
fn host_with_key(
    dir: &Path,
    redis: &str,
    prefix: &str,
    pki: &Pki,
    mesh_key: &str,
) -> (common::Running, SocketAddr) {
    let relay = format!("127.0.0.1:{}", free_port());
    let url = format!("wss://{relay}/relay");
    let mut args = vec!["run", "--http-listen", "127.0.0.1:0"];
    args.extend(host_args(&relay, &url, redis, prefix, pki));
    let at = args.iter().position(|a| *a == "--mesh-key").unwrap() + 1;
    args[at] = mesh_key;
    (common::start(dir, &args, true), relay.parse().unwrap())
}

/// A relay session for `node` with `token`. The grant reaches the dataplane asynchronously
/// (over the planes' segment, polled every few ms between two processes), so a refusal
/// (1008) is retried for up to five seconds, as a real node would.
fn join(pki: &Pki, relay: SocketAddr, token: &str, node: NodeId) -> Client<Tls> {
    for _ in 0..100 {
        let mut client = ws_upgrade(pki.connect(relay), Auth::Bearer(token)).unwrap();
        match client.recv().unwrap() {
            Received::Ready(ready) => {
                assert_eq!(ready, node, "READY names the node");
                return client;
            }
            closed @ Received::Closed(_) => {
                assert_eq!(
                    closed.close_code(),
                    Some(1008),
                    "only a missing grant is retried"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("expected READY, got {other:?}"),
        }
    }
    panic!("{node} was never granted a session");
}

/// Registers node X on host A and node Y on host B, joins each to its host's relay, waits
/// until the hosts have linked both ways, then checks 2000 packets each way, in order and
/// complete. Returns both sessions and Y's id.
fn relay_across(
    pki: &Pki,
    (base_a, relay_a): (&str, SocketAddr),
    (base_b, relay_b): (&str, SocketAddr),
    ids: [&str; 2],
) -> (Client<Tls>, Client<Tls>, NodeId) {
    let http = common::Http::new();
    let [id_x, id_y] = ids;
    let token_x = http.register(
        base_a,
        &common::node_body(id_x, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let token_y = http.register(
        base_b,
        &common::node_body(id_y, "yTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let (x, y): (NodeId, NodeId) = (id_x.parse().unwrap(), id_y.parse().unwrap());
    let mut client_x = join(pki, relay_a, &token_x, x);
    let mut client_y = join(pki, relay_b, &token_y, y);

    // Until the hosts have linked and learnt each other's nodes, a SEND across is dropped
    // (counted) or answered PEER_GONE; probe until one gets through, within a few heartbeats.
    client_x
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut through = false;
    for _ in 0..100 {
        client_y.send(&x, b"probe").unwrap();
        if let Ok(Received::Packet { src, .. }) = client_x.recv() {
            assert_eq!(src, y);
            through = true;
            break;
        }
    }
    if !through {
        for base in [base_a, base_b] {
            let metrics = common::Http::new().text(&format!("{base}/metrics"));
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|l| (l.contains("_mesh_") || l.contains("_ws_")) && !l.starts_with('#'))
                .collect();
            eprintln!("{base}:\n{}", lines.join("\n"));
        }
        panic!("no packet crossed the mesh in 20 s");
    }
    // Drain stray probes, then exchange numbered packets both ways, in order and complete.
    while client_x.recv().is_ok() {}
    client_x
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client_y
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Y may hold PEER_GONEs from the probes; X → Y must also be linked (it is the other link).
    let mut back = false;
    for _ in 0..100 {
        client_x.send(&y, b"back").unwrap();
        loop {
            match client_y.recv() {
                Ok(Received::Packet { .. }) => {
                    back = true;
                    break;
                }
                Ok(Received::Closed(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if back {
            break;
        }
    }
    assert!(back, "no packet crossed the mesh the other way");
    while client_y.recv().is_ok() {}
    client_y
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for i in 0..2000u32 {
        let packet = [&i.to_le_bytes()[..], &[9u8; 300]].concat();
        client_y.send(&x, &packet).unwrap();
        assert_eq!(
            client_x.recv_packet().unwrap(),
            (y, packet.clone()),
            "packet {i} Y→X"
        );
        client_x.send(&y, &packet).unwrap();
        assert_eq!(
            client_y.recv_packet().unwrap(),
            (x, packet),
            "packet {i} X→Y"
        );
    }
    (client_x, client_y, y)
}

#[test]
fn nodes_on_two_hosts_relay_over_the_mesh() {
    let Some(redis) = redis_url() else { return };
    let prefix = format!("boson-mesh-test-{}:", std::process::id());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new();
    let (host_a, relay_a) = host(dir_a.path(), &redis, &prefix, &pki);
    let (host_b, relay_b) = host(dir_b.path(), &redis, &prefix, &pki);
    let (_client_x, mut client_y, y) = relay_across(
        &pki,
        (&host_a.base, relay_a),
        (&host_b.base, relay_b),
        [
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a01",
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02",
        ],
    );
    let http = common::Http::new();
    // A node on host A over QUIC reaches Y on host B over the mesh, both ways.
    let id_c = "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a03";
    let token_c = http.register(
        &host_a.base,
        &common::node_body(id_c, "zTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let c: NodeId = id_c.parse().unwrap();
    let node_c = common::quic_node_trusting(relay_a, pki.ca.clone(), &token_c);
    let (runtime, quic) = (&node_c.runtime, &node_c.conn);
    // Host B learns where C is at its next presence poll: probe until a packet gets through.
    let mut reached = false;
    for _ in 0..100 {
        client_y.send(&c, b"to quic").unwrap();
        let got = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), quic.read_datagram()).await
        });
        if let Ok(Ok(datagram)) = got {
            assert_eq!(&datagram[..17], &[&[0x02u8][..], y.as_bytes()].concat()[..]);
            reached = true;
            break;
        }
    }
    assert!(reached, "no packet reached the QUIC node across the mesh");
    client_y
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while client_y.recv().is_ok() {}
    client_y
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut datagram = vec![0x01];
    datagram.extend_from_slice(y.as_bytes());
    datagram.extend_from_slice(b"from quic");
    quic.send_datagram(datagram.into()).unwrap();
    assert_eq!(client_y.recv_packet().unwrap(), (c, b"from quic".to_vec()));

    // A fresh client: the pooled connection may have idled past the server's header timeout.
    let metrics = common::Http::new().text(&format!("{}/metrics", host_b.base));
    let sent: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("bosonserver_dataplane_mesh_packets_total{")
                && l.contains("direction=\"out\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        sent >= 2000,
        "host B forwarded {sent} packets over the mesh\n{metrics}"
    );
    drop(host_a);
}

/// Issue 5: the same channel serves both modes. Host B runs as `bosonserver control` and
/// `bosonserver dataplane` on one segment: the control plane announces host A over the
/// segment, and the dataplane process opens the mesh link itself.
#[test]
fn a_split_host_links_over_the_mesh_from_its_dataplane_process() {
    let Some(redis) = redis_url() else { return };
    let prefix = format!("boson-mesh-split-test-{}:", std::process::id());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new();
    let (host_a, relay_a) = host(dir_a.path(), &redis, &prefix, &pki);

    let relay = format!("127.0.0.1:{}", free_port());
    let url = format!("wss://{relay}/relay");
    let segment = dir_b.path().join("segment").display().to_string();
    let host_id = "5f0c9a7e-3b1d-4c2a-9e8f-0a1b2c3d4e5f";
    let shared = host_args(&relay, &url, &redis, &prefix, &pki);
    let mut control = vec![
        "control",
        "--segment",
        &segment,
        "--http-listen",
        "127.0.0.1:0",
        "--host-id",
        host_id,
    ];
    // The control process takes the control plane's settings only.
    for pair in shared.chunks(2) {
        if !matches!(
            pair[0],
            "--turn-listen"
                | "--relay-listen"
                | "--mesh-key"
                | "--relay-cert"
                | "--relay-key"
                | "--mesh-ca-file"
        ) {
            control.extend_from_slice(pair);
        }
    }
    let host_b_control = common::start(dir_b.path(), &control, false);
    let mut dataplane = vec!["--segment", &segment, "--no-pin", "--host-id", host_id];
    dataplane.extend(shared);
    let host_b_dataplane = common::start_dataplane(dir_b.path(), &dataplane);

    let (_x, _y, _) = relay_across(
        &pki,
        (&host_a.base, relay_a),
        (&host_b_control.base, relay.parse().unwrap()),
        [
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5b01",
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5b02",
        ],
    );
    // Host B's control plane reads the dataplane's mesh counters from the segment.
    let metrics = common::Http::new().text(&format!("{}/metrics", host_b_control.base));
    let linked = metrics
        .lines()
        .any(|l| l.starts_with("bosonserver_dataplane_mesh_") && !l.ends_with(" 0"));
    assert!(linked, "no mesh counter moved on host B\n{metrics}");
    drop(host_b_dataplane);
    drop(host_a);
}

/// Issue 15: PEER_GONE crosses hosts. Y on host B sends to X, which just left host A; until
/// B's presence learns it, B forwards to A, and A tells B (GONE) so that Y gets PEER_GONE.
#[test]
fn peer_gone_reaches_a_sender_on_another_host() {
    let Some(redis) = redis_url() else { return };
    let prefix = format!("boson-mesh-gone-test-{}:", std::process::id());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new();
    let (host_a, relay_a) = host(dir_a.path(), &redis, &prefix, &pki);
    let (host_b, relay_b) = host(dir_b.path(), &redis, &prefix, &pki);
    let (client_x, mut client_y, _) = relay_across(
        &pki,
        (&host_a.base, relay_a),
        (&host_b.base, relay_b),
        [
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5c01",
            "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5c02",
        ],
    );
    let x: NodeId = "7a1d3a52-8a5e-4c1e-9a43-3b0d2b7f5c01".parse().unwrap();
    drop(client_x);
    client_y
        .stream()
        .sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut gone = false;
    for _ in 0..200 {
        client_y.send(&x, b"to X, who left").unwrap();
        loop {
            match client_y.recv() {
                Ok(Received::PeerGone(node)) => {
                    assert_eq!(node, x, "PEER_GONE names X");
                    gone = true;
                }
                Ok(Received::Closed(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if gone {
            break;
        }
    }
    assert!(gone, "Y never learnt that X is gone");
    assert!(
        host_a
            .wait_for_log("told the sending host", Duration::from_secs(5))
            .is_some(),
        "host A did not tell host B: Y's PEER_GONE came from B's presence only"
    );
}

/// Issue 15: a host without the mesh key (but with a valid certificate of the deployment's
/// CA) is refused: it gets no link, so none of A's nodes' packets.
#[test]
fn a_host_without_the_mesh_key_gets_no_link() {
    let Some(redis) = redis_url() else { return };
    let prefix = format!("boson-mesh-refuse-test-{}:", std::process::id());
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new();
    let (host_a, _) = host(dir_a.path(), &redis, &prefix, &pki);
    let (host_c, _) = host_with_key(
        dir_c.path(),
        &redis,
        &prefix,
        &pki,
        "not-the-deployment-mesh-key-0123456789",
    );
    assert!(
        host_a
            .wait_for_log("mesh token refused", Duration::from_secs(20))
            .is_some(),
        "host A never saw host C's link"
    );
    assert!(
        host_c
            .wait_for_log("mesh link closed", Duration::from_secs(5))
            .is_some_and(|line| line.contains("Rejected")),
        "host C's link was not refused"
    );
    assert!(
        host_a
            .wait_for_log("mesh peer connected", Duration::ZERO)
            .is_none(),
        "host A accepted host C"
    );
}
