//! STUN/TURN over TCP and TLS against the real binary: bad input gets a counted close, and
//! other clients are served meanwhile. (coturn's client relaying over TCP and TLS is in
//! `turn_interop.rs`.)

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `bosonserver run` on loopback with TCP and TLS listeners and short timeouts, and the
/// listeners' addresses.
fn server(dir: &std::path::Path, extra: &[&str]) -> (common::Running, SocketAddr, SocketAddr) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("turn-cert.pem"), dir.join("turn-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut args = vec![
        "run",
        "--http-listen",
        "127.0.0.1:0",
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-tls-listen",
        "127.0.0.1:0",
        "--turn-tls-cert",
        cert.to_str().unwrap(),
        "--turn-tls-key",
        key.to_str().unwrap(),
        "--workers",
        "2",
        "--no-pin",
        "--turn-static-secret",
        "stream-secret",
    ];
    args.extend_from_slice(extra);
    let running = common::start(dir, &args, true);
    let line = running
        .wait_for_log("STUN/TURN over TCP/TLS started", Duration::from_secs(10))
        .expect("the stream listeners start");
    let addr = |key: &str| -> SocketAddr {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest[..rest.find(')').unwrap()].parse().unwrap()
    };
    let (tcp, tls) = (addr("tcp=Some("), addr("tls=Some("));
    (running, tcp, tls)
}

/// A STUN Binding request with transaction id `[tag; 12]`.
fn binding(tag: u8) -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[tag; 12]);
    request
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one STUN message from `stream`.
fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).unwrap();
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut message = header.to_vec();
    message.resize(20 + len, 0);
    stream.read_exact(&mut message[20..]).unwrap();
    message
}

/// A Binding request over a fresh TCP connection from `local` is answered.
fn binding_answered(server: SocketAddr, tag: u8) {
    let mut stream = connect(server);
    stream.write_all(&binding(tag)).unwrap();
    let answer = read_message(&mut stream);
    assert_eq!(&answer[..2], &[0x01, 0x01], "Binding success over TCP");
    assert_eq!(&answer[8..20], &[tag; 12]);
}

/// Whether the server closes `stream` within `within` (EOF or reset); reads and discards
/// what comes before.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = boson_testsupport::clock::now() + within;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while boson_testsupport::clock::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The sum over cores of `bosonserver_dataplane_turn_stream_closes_total{reason}`.
fn closes(http: &common::Http, base: &str, reason: &str) -> u64 {
    let text = http.text(&format!("{base}/metrics"));
    let needle = format!("reason=\"{reason}\"}}");
    text.lines()
        .filter(|l| l.starts_with("bosonserver_dataplane_turn_stream_closes_total{"))
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the `reason` counter reaches `at_least` (the stats are published per turn and
/// copied every 100 ms).
fn wait_closes(http: &common::Http, base: &str, reason: &str, at_least: u64) -> u64 {
    let deadline = boson_testsupport::clock::now() + Duration::from_secs(10);
    loop {
        let n = closes(http, base, reason);
        if n >= at_least || boson_testsupport::clock::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lying_length_fields_close_the_connection_with_a_counted_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (running, tcp, _) = server(dir.path(), &[]);
    let http = common::Http::new();
    // A STUN length that is not a multiple of 4.
    let mut stream = connect(tcp);
    let mut unaligned = binding(1);
    unaligned[3] = 2;
    stream.write_all(&unaligned).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    assert_eq!(wait_closes(&http, &running.base, "framing", 1), 1);
    // ChannelData claiming 65 535 bytes: longer than a frame may be.
    let mut stream = connect(tcp);
    stream
        .write_all(&[0x40, 0x00, 0xFF, 0xFF, 1, 2, 3, 4])
        .unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    assert_eq!(wait_closes(&http, &running.base, "frame_too_long", 1), 1);
    // A whole message followed by bytes that are no header: the message is answered, the
    // rest closes the connection (what a length that lied short leaves behind).
    let mut stream = connect(tcp);
    let mut short = binding(2);
    short.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]);
    stream.write_all(&short).unwrap();
    let answer = read_message(&mut stream);
    assert_eq!(&answer[..2], &[0x01, 0x01]);
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    assert_eq!(wait_closes(&http, &running.base, "framing", 2), 2);
    // The listener serves others all along.
    binding_answered(tcp, 3);
}

#[test]
fn half_a_message_then_silence_is_closed_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // On epoll; the other tests run on the default backend (io_uring where it is allowed).
    let (running, tcp, _) = server(
        dir.path(),
        &["--turn-tcp-idle-timeout", "2s", "--io-backend", "epoll"],
    );
    let http = common::Http::new();
    let mut stream = connect(tcp);
    stream.write_all(&binding(4)[..10]).unwrap();
    // Served meanwhile.
    binding_answered(tcp, 5);
    assert!(
        !closed_within(&mut stream, Duration::from_millis(500)),
        "not before the timeout"
    );
    assert!(closed_within(&mut stream, Duration::from_secs(10)));
    assert!(wait_closes(&http, &running.base, "idle", 1) >= 1);
    assert_eq!(closes(&http, &running.base, "framing"), 0);
}

#[test]
fn a_tls_handshake_that_never_finishes_is_closed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (running, tcp, tls) = server(
        dir.path(),
        &[
            "--turn-tls-handshake-timeout",
            "1s",
            "--io-backend",
            "epoll",
        ],
    );
    let http = common::Http::new();
    // Nothing at all, and half a ClientHello record.
    let mut silent = connect(tls);
    let mut half = connect(tls);
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    binding_answered(tcp, 6);
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
    assert!(closed_within(&mut half, Duration::from_secs(10)));
    assert_eq!(wait_closes(&http, &running.base, "handshake_timeout", 2), 2);
}

/// 10 000 connections from one address: those past the cap are closed at once and counted,
/// those within it stay open, and a client from another address is served meanwhile.
#[test]
fn connections_past_the_per_address_cap_are_closed_and_counted() {
    const CAP: usize = 8;
    const ATTEMPTS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let (running, tcp, _) = server(dir.path(), &["--turn-tcp-max-per-ip", "8"]);
    let http = common::Http::new();
    let held: Vec<TcpStream> = (0..CAP).map(|_| connect(tcp)).collect();
    // The held ones are counted before the flood starts: each answers a Binding.
    for (i, stream) in held.iter().enumerate() {
        let mut stream = stream;
        stream.write_all(&binding(i as u8)).unwrap();
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[2], header[3]]))];
        stream.read_exact(&mut rest).unwrap();
    }
    let started = boson_testsupport::clock::now();
    for _ in 0..ATTEMPTS {
        let mut stream = connect(tcp);
        assert!(
            closed_within(&mut stream, Duration::from_secs(10)),
            "a connection past the cap is closed"
        );
    }
    let flood = started.elapsed();
    // Another address is not capped, and is answered promptly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    socket.connect(&tcp.into()).unwrap();
    let mut other: TcpStream = socket.into();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other.write_all(&binding(0xAA)).unwrap();
    assert_eq!(&read_message(&mut other)[..2], &[0x01, 0x01]);
    assert_eq!(
        wait_closes(&http, &running.base, "too_many_per_ip", ATTEMPTS as u64),
        ATTEMPTS as u64
    );
    // The held connections are still served.
    for (i, stream) in held.iter().enumerate() {
        let mut stream = stream;
        stream.write_all(&binding(0x80 | i as u8)).unwrap();
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        assert_eq!(&header[8..20], &[0x80 | i as u8; 12]);
    }
    eprintln!("{ATTEMPTS} refused connections took {flood:?}");
}

/// A client over TLS that sends faster than the server reads (a browser's data channel does)
/// is served whole: rustls holds at most 16 KiB of decrypted input, and a server that asks it
/// for more records while that much waits gets an error instead, which once closed the
/// connection (found by the browser test, `browser.rs`).
#[test]
fn a_burst_over_tls_is_answered_whole() {
    const REQUESTS: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (running, _, tls) = server(dir.path(), &[]);
    let http = common::Http::new();
    let pem = std::fs::read(dir.path().join("turn-cert.pem")).unwrap();
    let cert = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut stream = rustls::StreamOwned::new(client, connect(tls));
    for round in 0..3u8 {
        // 40 000 bytes in one write: several TLS records, more than rustls buffers.
        let burst: Vec<u8> = (0..REQUESTS).flat_map(|_| binding(round)).collect();
        stream.write_all(&burst).unwrap();
        stream.flush().unwrap();
        for i in 0..REQUESTS {
            let mut header = [0u8; 20];
            stream
                .read_exact(&mut header)
                .unwrap_or_else(|e| panic!("round {round}, answer {i}: {e}"));
            assert_eq!(&header[..2], &[0x01, 0x01], "Binding success");
            assert_eq!(&header[8..20], &[round; 12]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let mut rest = vec![0u8; len];
            stream.read_exact(&mut rest).unwrap();
        }
    }
    assert_eq!(closes(&http, &running.base, "error"), 0);
}
