//! The node relay served by the real workers over loopback TCP: authentication, cross-core
//! delivery without loss or reordering, replacement, PEER_GONE, RFC 6455 refusals, a client
//! that never reads, revocation, and TLS with certificate reload.

#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use boson_dataplane::relay::{RelayCommand, RelayConfig};
use boson_dataplane::{Dataplane, IoBackend, start};
use boson_dataplane_proto::ws::WsConfig;
use boson_dataplane_proto::ws::frame::{CloseCode, ClosePayload, FrameHeader, OpCode};
use boson_node::relay_blocking::{BlockingSender, Received};
use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

type Sender = BlockingSender<TcpStream, StdRng>;

fn relay_config(ws: WsConfig) -> RelayConfig {
    let mut relay = RelayConfig::new(Arc::new(common::relay_authenticate));
    relay.listen = "127.0.0.1:0".parse().unwrap();
    relay.ws = ws;
    relay
}

fn start_relay(backend: IoBackend, workers: usize, ws: WsConfig) -> Dataplane {
    let mut config = common::config(backend, workers);
    config.relay = Some(relay_config(ws));
    start(config, common::stun_core).unwrap()
}

/// A client authenticated as `node` with the Bearer header, READY received.
fn join(addr: SocketAddr, node: &NodeId) -> Client<TcpStream> {
    let mut client = ws_upgrade(connect(addr), Auth::Bearer(&token(node))).unwrap();
    assert_eq!(client.ready().unwrap(), *node);
    client
}

/// The worker each authenticated session count changed on, polled from the stats.
fn sessions_per_worker(dataplane: &Dataplane) -> Vec<u64> {
    dataplane
        .stats()
        .iter()
        .map(|s| s.counters.ws_sessions)
        .collect()
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    // 20 s at least: the machine may be busy with other builds and tests.
    for _ in 0..4000 {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

/// Connects `node` until its session lands on a different worker than `other_worker`
/// (SO_REUSEPORT spreads connections by hash, so a few tries suffice). Returns the client and
/// its worker.
fn join_on_other_worker(
    dataplane: &Dataplane,
    addr: SocketAddr,
    node: &NodeId,
    other_worker: usize,
) -> Client<TcpStream> {
    for _ in 0..64 {
        let before = sessions_per_worker(dataplane);
        let client = join(addr, node);
        let mut after = before.clone();
        wait_for(
            || {
                after = sessions_per_worker(dataplane);
                after != before
            },
            "the session to show in the stats",
        );
        let grew = (0..after.len()).find(|&i| after[i] > before[i]);
        if grew.is_some_and(|w| w != other_worker) {
            return client;
        }
        drop(client);
        wait_for(
            || sessions_per_worker(dataplane) == before,
            "the session to end",
        );
    }
    panic!("every connection landed on worker {other_worker}");
}

/// Sends `count` sequence-numbered packets from `tx` to `dest` with at most `window` in
/// flight, while `rx` (on its own thread) checks every one arrives in order from `src`.
fn stream_packets(
    mut tx: Sender,
    mut rx: Client<TcpStream>,
    src: NodeId,
    dest: NodeId,
    count: u64,
    window: u64,
    size: usize,
) -> (thread::JoinHandle<()>, thread::JoinHandle<()>) {
    let received = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&received);
    let reader = thread::spawn(move || {
        for seq in 0..count {
            let (from, packet) = rx.recv_packet().unwrap();
            assert_eq!(from, src);
            assert_eq!(packet.len(), size);
            let got = u64::from_le_bytes(packet[..8].try_into().unwrap());
            assert_eq!(got, seq, "lost or reordered");
            assert!(packet[8..].iter().all(|&b| b == (seq % 251) as u8));
            seen.store(seq + 1, Ordering::Release);
        }
    });
    let writer = thread::spawn(move || {
        let mut packet = vec![0u8; size];
        let mut seq = 0;
        while seq < count {
            let limit = (received.load(Ordering::Acquire) + window).min(count);
            if seq == limit {
                thread::yield_now();
                continue;
            }
            while seq < limit {
                packet[..8].copy_from_slice(&seq.to_le_bytes());
                packet[8..].fill((seq % 251) as u8);
                tx.queue_send(&dest, &packet).unwrap();
                seq += 1;
            }
            tx.flush().unwrap();
        }
    });
    (writer, reader)
}

/// A writer on a clone of the session's socket, for another thread, and the session.
fn split(client: Client<TcpStream>) -> (Sender, Client<TcpStream>) {
    let clone = client.stream().try_clone().unwrap();
    let sender = client.sender(clone, StdRng::from_os_rng()).unwrap();
    (sender, client)
}

fn cross_core_exchange(backend: IoBackend) {
    if !common::available(backend) {
        return;
    }
    let dataplane = start_relay(backend, 2, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let (a, b) = (node(1), node(2));
    let client_a = join(addr, &a);
    wait_for(
        || sessions_per_worker(&dataplane).iter().sum::<u64>() == 1,
        "A's session",
    );
    let worker_a = sessions_per_worker(&dataplane)
        .iter()
        .position(|&n| n == 1)
        .unwrap();
    let client_b = join_on_other_worker(&dataplane, addr, &b, worker_a);

    // Both directions at once.
    let (a_tx, a_rx) = split(client_a);
    let (b_tx, b_rx) = split(client_b);
    const COUNT: u64 = 100_000;
    let (w1, r1) = stream_packets(a_tx, b_rx, a, b, COUNT, 32, 64);
    let (w2, r2) = stream_packets(b_tx, a_rx, b, a, COUNT, 32, 64);
    for handle in [w1, r1, w2, r2] {
        handle.join().unwrap();
    }

    // Counters are published at the end of each worker's turn: let the last turn finish.
    let sum = |f: fn(&boson_dataplane::WorkerCounters) -> u64| -> u64 {
        dataplane.stats().iter().map(|s| f(&s.counters)).sum()
    };
    // Both sides' counters: the receiving worker may publish its last turn before the
    // sending worker has published the turn that sent.
    wait_for(
        || sum(|c| c.ws_cross_core_in) == 2 * COUNT && sum(|c| c.ws_cross_core_out) >= 2 * COUNT,
        "the counters to settle",
    );
    assert_eq!(
        sum(|c| c.ws_cross_core_out),
        2 * COUNT,
        "every packet crossed cores"
    );
    assert_eq!(sum(|c| c.ws_cross_core_full), 0);
    assert_eq!(sum(|c| c.ws_cross_core_gone), 0);
    dataplane.shutdown().unwrap();
}

#[test]
fn cross_core_exchange_epoll() {
    cross_core_exchange(IoBackend::Epoll);
}

#[test]
fn cross_core_exchange_uring() {
    cross_core_exchange(IoBackend::Uring);
}

#[test]
fn same_core_exchange_and_auth_message() {
    let dataplane = start_relay(IoBackend::Epoll, 1, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let (a, b) = (node(3), node(4));
    let mut client_a = ws_upgrade(connect(addr), Auth::Message(&token(&a))).unwrap();
    assert_eq!(client_a.ready().unwrap(), a);
    let client_b = join(addr, &b);
    let (a_tx, _a_rx) = split(client_a);
    let (_b_tx, b_rx) = split(client_b);
    let (w, r) = stream_packets(a_tx, b_rx, a, b, 20_000, 32, 1200);
    w.join().unwrap();
    r.join().unwrap();
    dataplane.shutdown().unwrap();
}

#[test]
fn refused_tokens_get_nothing_and_1008() {
    let ws = WsConfig::new()
        .with_auth_timeout(Duration::from_millis(300))
        .unwrap();
    let dataplane = start_relay(IoBackend::Epoll, 2, ws);
    let addr = dataplane.relay_addr().unwrap();
    let victim = node(5);
    let mut receiver = join(addr, &victim);

    // A forged token: closed with 1008 (policy), nothing relayed.
    let mut forged = ws_upgrade(connect(addr), Auth::Bearer("node.not-a-uuid")).unwrap();
    forged.dangerous_queue_send(&victim, b"sneaky").unwrap();
    forged.flush().ok();
    assert_eq!(forged.recv().unwrap().close_code(), Some(1008));

    // No token at all: closed when the auth deadline passes, nothing relayed meanwhile.
    let mut silent = ws_upgrade(connect(addr), Auth::Withheld).unwrap();
    silent.dangerous_queue_send(&victim, b"sneaky").unwrap();
    silent.flush().unwrap();
    assert_eq!(silent.recv().unwrap().close_code(), Some(1008));

    // The receiver got none of it: the next thing it sees is a genuine packet.
    let sender = node(6);
    let mut honest = join(addr, &sender);
    honest.send(&victim, b"hello").unwrap();
    assert_eq!(receiver.recv_packet().unwrap(), (sender, b"hello".to_vec()));
    let rejected: u64 = dataplane
        .stats()
        .iter()
        .map(|s| s.counters.ws_auth_rejected)
        .sum();
    assert_eq!(rejected, 1);
    dataplane.shutdown().unwrap();
}

#[test]
fn newer_session_replaces_older_across_cores() {
    let dataplane = start_relay(IoBackend::Epoll, 2, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let a = node(7);
    let peer = node(8);
    let mut peer_client = join(addr, &peer);
    // Several reconnects of `a`: whichever cores they land on, each newer session closes the
    // older with 4000 and the peer reaches the newest.
    let mut old = join(addr, &a);
    for round in 0..6u8 {
        let mut new = join(addr, &a);
        assert_eq!(
            old.recv().unwrap().close_code(),
            Some(4000),
            "round {round}"
        );
        // The client completed the closing handshake (the session echoed the Close); the
        // server then closes the socket.
        let mut rest = Vec::new();
        use std::io::Read as _;
        assert_eq!(
            old.stream_mut().read_to_end(&mut rest).unwrap(),
            0,
            "nothing after Close"
        );
        wait_for(
            || sessions_per_worker(&dataplane).iter().sum::<u64>() == 2,
            "the replaced session to be counted out",
        );
        peer_client.send(&a, &[round]).unwrap();
        assert_eq!(new.recv_packet().unwrap(), (peer, vec![round]));
        old = new;
    }
    dataplane.shutdown().unwrap();
}

#[test]
fn unknown_destination_gets_peer_gone() {
    let dataplane = start_relay(IoBackend::Epoll, 2, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let mut client = join(addr, &node(9));
    let nobody = node(10);
    client.send(&nobody, b"anyone?").unwrap();
    assert_eq!(
        client.recv().unwrap(),
        Received::PeerGone(nobody),
        "PEER_GONE"
    );
    dataplane.shutdown().unwrap();
}

#[test]
fn rfc6455_violations_close_with_their_codes() {
    let dataplane = start_relay(IoBackend::Epoll, 1, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let cases: [(&str, Vec<u8>, u16); 4] = [
        // Unmasked client frame.
        ("unmasked", vec![0x82, 0x02, 0x01, 0x02], 1002),
        // 1 MiB binary frame (64-bit length), masked: over the 64 KiB cap.
        (
            "oversized",
            [
                &[0x82u8, 0xff][..],
                &(1u64 << 20).to_be_bytes(),
                &[1, 2, 3, 4],
            ]
            .concat(),
            1009,
        ),
        // Text frame with invalid UTF-8 (0xff) while awaiting auth.
        (
            "bad utf-8",
            {
                let mut f = vec![0x81, 0x81, 0, 0, 0, 0, 0xff];
                f[2..6].copy_from_slice(&[0, 0, 0, 0]);
                f
            },
            1007,
        ),
        // Fragmented ping (control frame without FIN).
        ("fragmented control", vec![0x09, 0x80, 0, 0, 0, 0], 1002),
    ];
    for (what, frame, code) in cases {
        let mut client = ws_upgrade(connect(addr), Auth::Withheld).expect(what);
        // Bytes no session would write: straight to the socket.
        use std::io::Write as _;
        client.stream_mut().write_all(&frame).unwrap();
        match client.recv().unwrap() {
            closed @ Received::Closed(_) => assert_eq!(closed.close_code(), Some(code), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A request that is not an upgrade gets an HTTP error.
    let mut plain = connect(addr);
    use std::io::{Read as _, Write as _};
    plain
        .write_all(b"GET /relay HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    plain.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 4"), "{response}");
    dataplane.shutdown().unwrap();
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory() {
    let ws = WsConfig::new().with_queue(64, 128 * 1024).unwrap();
    let dataplane = start_relay(IoBackend::Epoll, 1, ws);
    let addr = dataplane.relay_addr().unwrap();
    let (sink, source) = (node(11), node(12));
    let stuck = join(addr, &sink);
    // Make the kernel buffer small so backpressure reaches the relay quickly.
    socket2::SockRef::from(stuck.stream())
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut sender = join(addr, &source);
    let packet = vec![7u8; 1200];
    for _ in 0..20 {
        for _ in 0..1000 {
            sender.queue_send(&sink, &packet).unwrap();
        }
        sender.flush().unwrap();
    }
    wait_for(
        || {
            let c = dataplane.stats()[0].counters;
            c.ws_packets_relayed >= 20_000
        },
        "all sends to be processed",
    );
    // The hub's counters are gathered every 250 ms, also when the worker is idle.
    wait_for(
        || dataplane.stats()[0].counters.ws_queue_drops > 10_000,
        "the drops to be counted",
    );
    let c = dataplane.stats()[0].counters;
    assert!(c.ws_queued_frames <= 64, "queued: {}", c.ws_queued_frames);
    // The sender is unaffected: its own session still works.
    sender.send(&node(99), b"x").unwrap();
    assert!(matches!(sender.recv().unwrap(), Received::PeerGone(_)));
    drop(stuck);
    dataplane.shutdown().unwrap();
}

#[test]
fn revocation_closes_the_session() {
    let dataplane = start_relay(IoBackend::Epoll, 2, WsConfig::new());
    let addr = dataplane.relay_addr().unwrap();
    let a = node(13);
    let mut client = join(addr, &a);
    dataplane.relay_command(&RelayCommand::Revoke(a));
    assert_eq!(client.recv().unwrap().close_code(), Some(1008));
    dataplane.shutdown().unwrap();
}

#[test]
fn ping_pong_keepalive_keeps_the_session() {
    let ws = WsConfig::new()
        .with_keepalive(Duration::from_millis(100), Duration::from_millis(200))
        .unwrap();
    let dataplane = start_relay(IoBackend::Epoll, 1, ws);
    let addr = dataplane.relay_addr().unwrap();
    let mut client = join(addr, &node(14));
    // Answering each ping keeps the session through three of them, more than the 200 ms a
    // silent session would get: counted, not timed, so a busy machine cannot fail it. The
    // read timeout only bounds a relay that stopped pinging.
    // The session answers them itself; a short read timeout lets the test count them.
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut reads = 0;
    while client.core().stats().pings < 3 {
        match client.recv() {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!(
                "pings so far {}: got {other:?}",
                client.core().stats().pings
            ),
        }
        reads += 1;
        assert!(reads < 200, "the relay stopped pinging");
    }
    assert!(client.core().is_open());
    // And one that stops answering is closed with 1001. A session always answers pings,
    // so this silence is the test's own: the raw socket after READY, read with proto's
    // frame codec.
    let (mut quiet, mut bytes) = join(addr, &node(15)).into_parts();
    let code = loop {
        if let Some(header) = FrameHeader::parse(&bytes).unwrap()
            && let Some(end) = header.frame_len().filter(|&end| end <= bytes.len())
        {
            let payload = bytes[header.header_len..end].to_vec();
            bytes.drain(..end);
            match header.opcode {
                OpCode::Ping => continue,
                OpCode::Close => break ClosePayload::parse(&payload).unwrap().code,
                other => panic!("{other:?}"),
            }
        }
        let mut chunk = [0u8; 512];
        use std::io::Read as _;
        let n = quiet.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "closed without a Close frame");
        bytes.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(code.map(CloseCode::get), Some(1001));
    dataplane.shutdown().unwrap();
}

/// A self-signed certificate for `localhost`, written to `dir` as `cert.pem`/`key.pem`.
fn write_cert(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    // Write both, then rename, so the reloader never sees half a pair.
    std::fs::write(dir.join("cert.tmp"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.tmp"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
    cert.cert.der().clone()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(addr: SocketAddr, trust: &rustls::pki_types::CertificateDer<'static>) -> TlsStream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

#[test]
fn wss_relays_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let mut relay = relay_config(WsConfig::new());
    relay.tls = Some(boson_dataplane::relay::TlsSource {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    });
    relay.tls_reload_interval = Duration::from_millis(50);
    let mut config = common::config(IoBackend::Epoll, 2);
    config.relay = Some(relay);
    let dataplane = start(config, common::stun_core).unwrap();
    let addr = dataplane.relay_addr().unwrap();

    let (a, b) = (node(20), node(21));
    let mut client_a = ws_upgrade(tls_client(addr, &first), Auth::Bearer(&token(&a))).unwrap();
    assert_eq!(client_a.ready().unwrap(), a);
    let mut client_b = ws_upgrade(tls_client(addr, &first), Auth::Bearer(&token(&b))).unwrap();
    assert_eq!(client_b.ready().unwrap(), b);
    for i in 0..2000u32 {
        let packet = [&i.to_le_bytes()[..], &[0xab; 1000]].concat();
        client_a.send(&b, &packet).unwrap();
        assert_eq!(client_b.recv_packet().unwrap(), (a, packet));
    }

    // A renewed certificate: new connections get it, established ones go on.
    let second = write_cert(dir.path());
    wait_for(
        || ws_upgrade(tls_client(addr, &second), Auth::Withheld).is_ok(),
        "the new certificate to be served",
    );
    assert!(
        ws_upgrade(tls_client(addr, &first), Auth::Withheld).is_err(),
        "the old certificate is retired"
    );
    client_b.send(&a, b"still here").unwrap();
    assert_eq!(client_a.recv_packet().unwrap(), (b, b"still here".to_vec()));

    // Plain text to the TLS port is a TLS failure, counted.
    assert!(ws_upgrade(connect(addr), Auth::Withheld).is_err());
    wait_for(
        || {
            dataplane
                .stats()
                .iter()
                .map(|s| s.counters.ws_tls_errors)
                .sum::<u64>()
                >= 1
        },
        "the TLS error to be counted",
    );
    dataplane.shutdown().unwrap();
}

fn node(n: u8) -> NodeId {
    common::relay_node(n, 0x42)
}

fn token(node: &NodeId) -> String {
    common::relay_token(node)
}

/// Finishes the TLS handshake of `stream` and returns the connection's mesh channel
/// binding: its exporter keying material, as the mesh linker computes it.
fn tls_binding(stream: &mut TlsStream) -> boson_shared::ChannelBinding {
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let material = stream
        .conn
        .export_keying_material(
            [0u8; boson_shared::mesh::BINDING_LEN],
            boson_shared::mesh::EXPORTER_LABEL,
            None,
        )
        .unwrap();
    boson_shared::ChannelBinding::from_exporter(material)
}

#[expect(
    clippy::disallowed_methods,
    reason = "mesh tokens carry the wall-clock time the relay checks"
)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Issue 15: a mesh token is bound to the TLS connection it was minted on. The token that
/// opened one link, captured and replayed on another connection to the same host within its
/// window, is refused; so is a token bound to no connection (a plain link's).
#[test]
fn a_mesh_token_is_bound_to_its_tls_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let key = boson_shared::MeshKey::new(*b"the mesh key of this test, 32+ bytes").unwrap();
    let (this_host, peer_host) = (
        boson_shared::HostId::from_bytes([0xB0; 16]),
        boson_shared::HostId::from_bytes([0xA0; 16]),
    );
    let mut relay = relay_config(WsConfig::new());
    relay.tls = Some(boson_dataplane::relay::TlsSource {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    });
    relay.mesh = Some(boson_dataplane::relay::MeshSettings {
        host: this_host,
        key: key.clone(),
        allow_plain: false,
    });
    let mut config = common::config(IoBackend::Epoll, 2);
    config.relay = Some(relay);
    let dataplane = start(config, common::stun_core).unwrap();
    let addr = dataplane.relay_addr().unwrap();

    // The genuine link: its token bound to its own connection.
    let mut link = tls_client(addr, &cert);
    let binding = tls_binding(&mut link);
    let token = key.token(peer_host, this_host, &binding, unix_now());
    let mut link = ws_upgrade(link, Auth::Bearer(&token)).unwrap();
    assert_eq!(
        link.recv().unwrap(),
        Received::Ready(NodeId::from_bytes(*peer_host.as_bytes())),
        "READY names the peer host"
    );

    // The same token on another connection: refused (1008), the genuine link untouched.
    let mut replay = tls_client(addr, &cert);
    let other = tls_binding(&mut replay);
    assert_ne!(
        other, binding,
        "every connection has its own exporter secret"
    );
    let mut replay = ws_upgrade(replay, Auth::Bearer(&token)).unwrap();
    assert_eq!(replay.recv().unwrap().close_code(), Some(1008));

    // A token bound to no connection (a plain link's): refused on TLS too.
    let mut plain = tls_client(addr, &cert);
    tls_binding(&mut plain);
    let unbound = key.token(
        peer_host,
        this_host,
        &boson_shared::ChannelBinding::PLAIN,
        unix_now(),
    );
    let mut plain = ws_upgrade(plain, Auth::Bearer(&unbound)).unwrap();
    assert_eq!(plain.recv().unwrap().close_code(), Some(1008));

    // The genuine link is untouched: no Close (4000, replaced) came to it.
    link.stream()
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        link.recv().is_err(),
        "the genuine link got nothing (no 4000 replacement, no close)"
    );
    dataplane.shutdown().unwrap();
}
