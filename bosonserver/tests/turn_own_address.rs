//! The relay host's own address through TURN, black box: the real binary, its public host on
//! the default `127.0.0.1`, no loopback exception, and a UDP service listening on a port
//! inside the relay range (issue 15's reproduction). The service must get nothing and the
//! client a 403; two clients of the server must still reach each other through their
//! relayed addresses, and stop the moment one allocation ends.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::turn;

const SECRET: &str = "own-address-secret";

/// The clock, for deadlines on real processes.
fn now() -> Instant {
    #[expect(
        clippy::disallowed_methods,
        reason = "deadlines for a real server process"
    )]
    Instant::now()
}

/// `bosonserver run` on loopback, two workers, relay ports `ports`, and no
/// `--danger-allow-loopback-peers`: loopback is this host's own address and nothing else.
fn server(dir: &std::path::Path, ports: &str) -> common::Running {
    common::start_local(
        dir,
        &[
            "--no-pin",
            "--turn-static-secret",
            SECRET,
            "--relay-ports",
            ports,
        ],
        true,
    )
}

/// A UDP echo on the first port of `ports` it can bind; counts what it receives.
fn echo_inside(ports: &str) -> (SocketAddr, Arc<AtomicU64>) {
    let (first, last) = ports.split_once('-').unwrap();
    let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
    let socket = (first..=last)
        .find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok())
        .expect("a free port in the relay range");
    let addr = socket.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&buf[..len], from);
        }
    });
    (addr, received)
}

/// The sum over cores of the dataplane's drops under `reason`.
fn drops(http: &common::Http, base: &str, reason: &str) -> u64 {
    let needle = format!("reason=\"{reason}\"}} ");
    http.text(&format!("{base}/metrics"))
        .lines()
        .filter(|line| line.starts_with("bosonserver_dataplane_drops_total{"))
        .filter_map(|line| line.split_once(&needle))
        .map(|(_, value)| value.trim().parse::<u64>().unwrap())
        .sum()
}

/// Waits until the drops under `reason` reach `at_least` (the server has handled the
/// datagrams), for at most 20 s.
fn wait_drops(http: &common::Http, base: &str, reason: &str, at_least: u64) {
    let deadline = now() + Duration::from_secs(20);
    loop {
        let seen = drops(http, base, reason);
        if seen >= at_least {
            return;
        }
        assert!(
            now() < deadline,
            "{seen} drops under {reason}, expected {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_udp_service_inside_the_relay_range_gets_nothing_and_the_client_403() {
    let ports = turn::relay_ports(16);
    let (service, received) = echo_inside(&ports);
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &ports);
    let http = common::Http::new();
    let (mut alice, alice_relayed) = turn::allocated(server.turn.unwrap(), SECRET, "alice", 11);
    assert_eq!(alice_relayed.ip(), service.ip(), "the relay's own address");

    // The permission names no port: granted, for relay to relay; the port decides on use.
    assert!(alice.create_permission(service).unwrap().is_success());
    let bound = alice.channel_bind(0x4000, service).unwrap();
    assert_eq!(bound.code, Some(403), "ChannelBind to the service");
    for _ in 0..3 {
        alice.send_indication(service, b"ping").unwrap();
    }
    wait_drops(&http, &server.base, "peer_filtered", 3);

    // The service speaking first toward alice's relayed address reaches nobody either.
    let speaker = UdpSocket::bind((service.ip(), 0)).unwrap();
    for _ in 0..3 {
        speaker.send_to(b"unsolicited", alice_relayed).unwrap();
    }
    wait_drops(&http, &server.base, "not_a_relay_port", 3);
    alice
        .socket()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(alice.recv_channel_data(), None);
    let mut buf = [0u8; 64];
    alice.socket().set_nonblocking(true).unwrap();
    assert!(
        alice.socket().recv_from(&mut buf).is_err(),
        "nothing from the host's own non-relay ports reaches the client"
    );
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the service got a datagram"
    );
}

#[test]
fn clients_of_this_server_reach_each_other_through_their_relayed_addresses() {
    let ports = turn::relay_ports(16);
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &ports);
    let turn_addr = server.turn.unwrap();
    let http = common::Http::new();
    let [(mut alice, _), (mut bob, bob_relayed)] = turn::bound_pair(turn_addr, SECRET, (21, 22));

    let deadline = now() + Duration::from_secs(10);
    let mut delivered = (false, false);
    while delivered != (true, true) {
        assert!(now() < deadline, "relay to relay failed: {delivered:?}");
        alice.send_channel_data(0x4001, b"from alice").unwrap();
        bob.send_channel_data(0x4002, b"from bob").unwrap();
        if bob.recv_channel_data() == Some((0x4002, b"from alice".to_vec())) {
            delivered.0 = true;
        }
        if alice.recv_channel_data() == Some((0x4001, b"from bob".to_vec())) {
            delivered.1 = true;
        }
    }

    // Bob's allocation ends: alice's channel toward its port stops carrying traffic,
    // though it has not expired, and a new binding to it is refused.
    assert!(bob.refresh(0).unwrap().is_success());
    let before = drops(&http, &server.base, "not_a_relay_port");
    alice.send_channel_data(0x4001, b"too late").unwrap();
    wait_drops(&http, &server.base, "not_a_relay_port", before + 1);
    assert_eq!(
        alice.channel_bind(0x4003, bob_relayed).unwrap().code,
        Some(403)
    );
}
