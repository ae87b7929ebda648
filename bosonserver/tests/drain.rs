//! Graceful drain of the real binary on SIGTERM: readiness fails, a new TURN Allocate gets 403,
//! relay sessions old and new get RECONNECT_HINT, what was established keeps relaying, and the
//! process exits 0 once it has all ended, or at `--drain-timeout`.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::turn::{self, TurnClient};
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};

const SECRET: &str = "drain-turn-secret";
const JWT_SECRET: &str = "drain-jwt-secret-0123456789abcdef-0123";
/// The first channel number.
const CHANNEL: u16 = 0x4000;

fn start(dir: &std::path::Path, drain_timeout: &str) -> common::Running {
    let ports = turn::relay_ports(64);
    common::start_local(
        dir,
        &[
            "--relay-ports",
            &ports,
            "--danger-allow-loopback-peers",
            "--turn-static-secret",
            SECRET,
            "--jwt-secret",
            JWT_SECRET,
            "--drain-timeout",
            drain_timeout,
        ],
        true,
    )
}

/// A TURN client with an allocation, a permission and channel [`CHANNEL`] to `peer`; returns
/// it and its relayed address.
fn relaying_client(server: SocketAddr, peer: SocketAddr) -> (TurnClient, SocketAddr) {
    let mut client = TurnClient::new(server, SECRET, "before", turn::unix_now());
    let answer = client.allocate().unwrap();
    assert!(answer.is_success(), "{:?}", answer.code);
    let relayed = answer.relayed().unwrap();
    assert!(client.create_permission(peer).unwrap().is_success());
    assert!(client.channel_bind(CHANNEL, peer).unwrap().is_success());
    (client, relayed)
}

/// `count` packets each way between `client` (over its channel) and `peer` (to `relayed`).
fn assert_relays(client: &mut TurnClient, peer: &std::net::UdpSocket, relayed: SocketAddr) {
    let mut buf = [0u8; 2048];
    for i in 0..20u32 {
        let out = format!("to peer {i}");
        client.send_channel_data(CHANNEL, out.as_bytes()).unwrap();
        let (len, from) = peer.recv_from(&mut buf).expect("the peer gets the packet");
        assert_eq!((&buf[..len], from), (out.as_bytes(), relayed));
        let back = format!("to client {i}");
        peer.send_to(back.as_bytes(), relayed).unwrap();
        assert_eq!(
            client.recv_channel_data(),
            Some((CHANNEL, back.into_bytes())),
            "the client gets the peer's packet"
        );
    }
}

/// A relay session of a freshly registered node `i`.
fn session(server: &common::Running, http: &common::Http, i: u16) -> (Client<TcpStream>, NodeId) {
    let id = common::node_id(0xd1, i);
    let token = http.register(
        &server.base,
        &common::node_body(&id, &common::wg_key(0xd1, i)),
    );
    let mut client = ws_upgrade(connect(server.relay.unwrap()), Auth::Bearer(&token)).unwrap();
    let node: NodeId = id.parse().unwrap();
    assert_eq!(client.ready().unwrap(), node);
    (client, node)
}

/// The next relay message, answering pings.
fn next_message(client: &mut Client<TcpStream>) -> Received {
    client.recv().unwrap()
}

fn wait_until_draining(http: &common::Http, base: &str) {
    for _ in 0..100 {
        let (status, body) = http.get(&format!("{base}/health/ready"));
        if status == 503 {
            assert_eq!(body["error"]["code"], "draining", "{body}");
            return;
        }
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("/health/ready never reported the drain");
}

#[test]
fn sigterm_drains_then_exits_when_everything_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "60s");
    let turn_addr = server.turn.unwrap();
    let http = common::Http::new();
    let peer = turn::peer();
    let (mut client, relayed) = relaying_client(turn_addr, peer.local_addr().unwrap());
    assert_relays(&mut client, &peer, relayed);
    let (mut a, node_a) = session(&server, &http, 1);
    let (mut b, node_b) = session(&server, &http, 2);

    server.signal("TERM");
    wait_until_draining(&http, &server.base);

    // The allocation made before keeps relaying, and may be refreshed.
    assert_relays(&mut client, &peer, relayed);
    assert!(client.refresh(600).unwrap().is_success());
    // A new Allocate is refused with 403.
    let mut late = TurnClient::new(turn_addr, SECRET, "after", turn::unix_now());
    assert_eq!(late.allocate().unwrap().code, Some(403));
    // Established sessions are told to move, and keep relaying meanwhile.
    assert_eq!(next_message(&mut a), Received::ReconnectHint);
    assert_eq!(next_message(&mut b), Received::ReconnectHint);
    a.send(&node_b, b"still here").unwrap();
    assert_eq!(b.recv_packet().unwrap(), (node_a, b"still here".to_vec()));
    // The API still serves, and a session opened now is told to move at once.
    let (mut c, _) = session(&server, &http, 3);
    assert_eq!(next_message(&mut c), Received::ReconnectHint);
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "it waits while allocations and sessions remain"
    );

    // Everyone leaves: the process exits 0 long before the 60 s deadline.
    assert!(client.refresh(0).unwrap().is_success());
    drop((a, b, c));
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("exits once nothing is left");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_exits_at_the_drain_timeout_with_work_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "2s");
    let http = common::Http::new();
    let peer = turn::peer();
    let (mut client, relayed) = relaying_client(server.turn.unwrap(), peer.local_addr().unwrap());
    let (_session, _) = session(&server, &http, 1);

    server.signal("TERM");
    wait_until_draining(&http, &server.base);
    assert_relays(&mut client, &peer, relayed);
    // Neither the allocation nor the session ends by itself: the deadline ends the drain, and
    // the server says so with both still open (a check that it is alive some fixed time
    // later would race the 2 s deadline on a busy machine).
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("exits at the drain timeout");
    assert!(status.success(), "{status}");
    let line = server
        .wait_for_log(
            "drain timeout: stopping with these still open",
            Duration::from_secs(5),
        )
        .expect("the drain ended at its timeout");
    assert!(
        line.contains("allocations=1") && line.contains("sessions=1"),
        "{line}"
    );
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "60s");
    let peer = turn::peer();
    let (_client, _) = relaying_client(server.turn.unwrap(), peer.local_addr().unwrap());
    let http = common::Http::new();
    server.signal("TERM");
    wait_until_draining(&http, &server.base);
    server.signal("INT");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("a second signal stops the drain");
    assert!(status.success(), "{status}");
}

/// A SIGTERM sent the moment the server says it listens (as a supervisor or this test
/// harness may) finds the handlers in place: a clean exit, not death by the signal's
/// default action. The window was a few milliseconds, so it is tried several times.
#[test]
fn a_sigterm_right_after_the_listening_line_is_handled() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut server = start(dir.path(), "60s");
        server.signal("TERM");
        let status = server
            .wait_exit(Duration::from_secs(20))
            .expect("the server stops on SIGTERM");
        assert!(
            status.success(),
            "{status}: killed by the signal, not drained"
        );
    }
}
