//! Helpers shared by the integration tests: loopback configs, STUN messages, polling waits.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use boson_dataplane::{DataplaneConfig, IoBackend, WorkerStatsSnapshot};
use boson_dataplane_proto::stun::{
    Encoder, Message, MessageType, Trailer, TransactionId, XorMappedAddress,
};

/// Whether forcing `backend` can work here; says so on stderr when not. With `CI` set a
/// missing io_uring fails the test instead: CI must prove the io_uring path, never report a
/// test that did not run as passed.
pub(crate) fn available(backend: IoBackend) -> bool {
    if backend != IoBackend::Uring {
        return true;
    }
    match boson_dataplane::check_uring() {
        Ok(()) => true,
        Err(err) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring unavailable, and CI is set so this test may not skip: {err:#}"
            );
            eprintln!("skipped: io_uring unavailable: {err:#}");
            false
        }
    }
}

/// Loopback, ephemeral port, unpinned (tests share the machine).
pub(crate) fn config(backend: IoBackend, workers: usize) -> DataplaneConfig {
    DataplaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        pin: false,
        backend,
        ..DataplaneConfig::default()
    }
}

/// A client socket on loopback with a read timeout.
pub(crate) fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

/// A Binding request with FINGERPRINT.
pub(crate) fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut buf = vec![0; 128];
    let enc = Encoder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId::new(tid),
    )
    .unwrap();
    let len = enc.finish(Trailer::new().with_fingerprint()).unwrap();
    buf.truncate(len);
    buf
}

/// Sends a Binding request from `socket` to `server` (retransmitting like a STUN client)
/// and returns the XOR-MAPPED-ADDRESS of the success response.
pub(crate) fn bind(socket: &UdpSocket, server: SocketAddr, tid: [u8; 12]) -> SocketAddr {
    let request = binding_request(tid);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket.send_to(&request, server).unwrap();
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from, server, "response from the listener address");
        let response = Message::parse(&buf[..len]).unwrap();
        assert_eq!(response.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(response.transaction_id(), TransactionId::new(tid));
        assert_eq!(response.verify_fingerprint(), Ok(()));
        return response.get::<XorMappedAddress>().unwrap().unwrap().0;
    }
    panic!("no Binding response from {server}");
}

/// Polls `stats` until `done` holds, for up to 5 s.
pub(crate) fn wait_for(
    stats: impl Fn() -> Vec<WorkerStatsSnapshot>,
    done: impl Fn(&[WorkerStatsSnapshot]) -> bool,
) -> Vec<WorkerStatsSnapshot> {
    // 20 s at least: the workers share the machine with other builds and tests.
    for _ in 0..2000 {
        let now = stats();
        if done(&now) {
            return now;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let last = stats();
    panic!("condition not reached; stats: {last:#?}");
}

/// Sum of one counter over workers.
pub(crate) fn total(stats: &[WorkerStatsSnapshot], f: impl Fn(&WorkerStatsSnapshot) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

/// Relay tokens of the tests are `node.<uuid>`; anything else is refused.
pub(crate) fn relay_authenticate(
    token: &[u8],
) -> Result<boson_shared::NodeId, boson_dataplane::relay::AuthError> {
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.strip_prefix("node."))
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
        .map(|id| boson_shared::NodeId::from_bytes(*id.as_bytes()))
        .ok_or_else(|| boson_dataplane::relay::AuthError::Invalid("not a test token".into()))
}

/// Test node number `n`; `tag` keeps test files apart.
pub(crate) fn relay_node(n: u8, tag: u8) -> boson_shared::NodeId {
    let mut bytes = [0u8; 16];
    bytes[0] = n;
    bytes[15] = tag;
    boson_shared::NodeId::from_bytes(bytes)
}

/// The token [`relay_authenticate`] accepts for `node`.
pub(crate) fn relay_token(node: &boson_shared::NodeId) -> String {
    format!("node.{}", uuid::Uuid::from_bytes(*node.as_bytes()))
}

/// A STUN-only core for relay tests, which do not use TURN.
pub(crate) fn stun_core(_: boson_dataplane::WorkerInfo) -> boson_dataplane_proto::StunServer {
    boson_dataplane_proto::StunServer::new(boson_dataplane_proto::BindingConfig::default())
}

/// A relay session driven by the node library's blocking shell.
pub(crate) type WsClient<S> = boson_node::relay_blocking::BlockingClient<S, rand::rngs::StdRng>;

/// A TCP connection to the relay: `TCP_NODELAY`, 10 s read timeout.
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
