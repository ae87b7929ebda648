//! quinn-proto clients against a [`QuicRelay`] in virtual time: handshake, AUTH and READY,
//! verdicts and deadlines, relaying under and over the buffer bound, replacement, PEER_GONE,
//! draining, limits, violations and certificate reload.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod quic_harness;

use std::time::Duration;

use boson_dataplane_proto::quic::{
    CloseReason, Delivery, DropReason, QuicConfig, QuicError, Violation, wire,
};
use bytes::Bytes;
use quic_harness::{Notice, Sim, Verdict, client_config, config, node};
use quinn_proto::{ConnectionError, TransportErrorCode};

#[test]
fn handshake_auth_ready() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    assert_eq!(sim.clients[a].notices, [Notice::Ready(node(0xA))]);
    assert!(sim.clients[a].connected);
    assert!(sim.relay.is_connected(&node(0xA)));
    assert!(!sim.relay.is_connected(&node(0xB)));

    let stats = sim.relay.stats();
    assert_eq!(
        (stats.connections, stats.authenticated, stats.handshakes),
        (1, 1, 1)
    );
    assert_eq!(
        (
            stats.incoming_accepted,
            stats.auth_requests,
            stats.auth_accepted
        ),
        (1, 1, 1)
    );
    assert_eq!((stats.retries, stats.drops.total()), (0, 0));
    assert!(stats.udp_rx.packets >= 2 && stats.udp_tx.packets >= 2);

    // Quiet for a while: keepalives keep it up well past the idle timeout.
    sim.run_for(Duration::from_secs(120));
    assert!(sim.clients[a].lost.is_none());
    assert!(sim.relay.is_connected(&node(0xA)));
}

#[test]
fn rejected_token_closes_the_connection() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    sim.shell.verdicts.insert(b"bad".to_vec(), Verdict::Reject);
    let c = sim.connect(1, client_config(&cert, true));
    sim.clients[c].authenticate(b"bad");
    sim.run_for(Duration::from_millis(50));

    assert_eq!(
        sim.clients[c].closed_by_relay(),
        Some((1008, "unauthorized".to_owned()))
    );
    assert!(sim.clients[c].notices.is_empty(), "no READY");
    assert_eq!(sim.shell.closed.len(), 1);
    assert_eq!(sim.shell.closed[0].1, None);
    assert_eq!(sim.shell.closed[0].2, CloseReason::Rejected);
    let stats = sim.relay.stats();
    assert_eq!((stats.auth_rejected, stats.authenticated), (1, 0));

    // The closed connection is gone once quinn has drained it.
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.relay.stats().connections, 0);
    let conn = sim.shell.closed[0].0;
    assert_eq!(
        sim.relay.accept(sim.now, conn, node(1)),
        Err(QuicError::UnknownConn(conn))
    );
}

#[test]
fn auth_deadline_without_token_or_verdict() {
    let (config, cert) = config();
    let config = config.with_auth_timeout(Duration::from_secs(2)).unwrap();
    let mut sim = Sim::new(config);
    // One client never sends AUTH; the other's token never gets a verdict.
    let silent = sim.connect(1, client_config(&cert, true));
    let waiting = sim.connect(2, client_config(&cert, true));
    sim.clients[waiting].authenticate(b"no verdict");
    sim.run_for(Duration::from_millis(1900));
    assert!(sim.clients[silent].lost.is_none() && sim.clients[waiting].lost.is_none());
    assert_eq!(sim.shell.pending.len(), 1);
    let (conn, token) = sim.shell.pending[0].clone();
    assert_eq!(token, Bytes::from_static(b"no verdict"));

    sim.run_for(Duration::from_millis(200));
    for client in [silent, waiting] {
        assert_eq!(
            sim.clients[client].closed_by_relay(),
            Some((1008, "auth_timeout".to_owned()))
        );
    }
    // Only the connection the shell heard of is reported.
    assert_eq!(sim.shell.closed, [(conn, None, CloseReason::AuthTimeout)]);
    assert_eq!(sim.relay.stats().auth_timeouts, 2);
    // A late verdict is refused.
    assert_eq!(
        sim.relay.accept(sim.now, conn, node(1)),
        Err(QuicError::UnknownConn(conn))
    );
}

#[test]
fn datagrams_before_ready_are_dropped_and_counted() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let b = sim.join(2, &cert, node(0xB));
    let a = sim.connect(1, client_config(&cert, true));
    sim.clients[a].authenticate(b"held");
    sim.run_for(Duration::from_millis(20));
    assert!(sim.clients[a].connected);
    assert_eq!(sim.shell.pending.len(), 1);

    for i in 0..5u8 {
        sim.clients[a].send(&node(0xB), &[i; 100]).unwrap();
    }
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.shell.sends, 0, "nothing reaches the shell");
    assert!(sim.clients[b].recvs.is_empty());
    assert_eq!(sim.relay.stats().drops.get(DropReason::Unauthenticated), 5);

    // Once accepted, the same client relays.
    let (conn, _) = sim.shell.pending.pop().unwrap();
    sim.relay.accept(sim.now, conn, node(0xA)).unwrap();
    sim.run_for(Duration::from_millis(20));
    assert!(sim.clients[a].is_ready());
    sim.clients[a].send(&node(0xB), b"after ready").unwrap();
    sim.run_for(Duration::from_millis(20));
    let (src, packet) = sim.clients[b].recvs.pop_front().unwrap();
    assert_eq!((src, packet.as_ref()), (node(0xA), &b"after ready"[..]));
    // A second verdict is misuse.
    assert_eq!(
        sim.relay.accept(sim.now, conn, node(0xA)),
        Err(QuicError::NoVerdictPending(conn))
    );
}

/// A packet whose sequence number, length and contents the receiver can check.
fn packet(seq: u32) -> Vec<u8> {
    let len = 40 + (seq as usize * 37) % 500;
    let mut packet = vec![seq as u8; len];
    packet[..4].copy_from_slice(&seq.to_be_bytes());
    packet
}

fn check(seq: u32, packet: &[u8]) {
    assert_eq!(
        packet.len(),
        40 + (seq as usize * 37) % 500,
        "length of {seq}"
    );
    assert_eq!(
        packet[..4],
        seq.to_be_bytes(),
        "reordered or lost before {seq}"
    );
    assert!(
        packet[4..].iter().all(|&b| b == seq as u8),
        "contents of {seq}"
    );
}

#[test]
fn two_clients_exchange_100k_packets_in_order() {
    const N: u32 = 100_000;
    // Packets in flight per direction: at most 64 × 539 bytes, well under the 64 KiB
    // datagram send buffer, so a reader that keeps up must get every one.
    const WINDOW: u32 = 64;
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let b = sim.join(2, &cert, node(0xB));
    let before = sim.relay.stats();

    let (mut sent, mut got) = ([0u32; 2], [0u32; 2]);
    let peers = [(a, b, node(0xA)), (b, a, node(0xB))];
    let mut rounds = 0;
    while got != [N, N] {
        rounds += 1;
        assert!(rounds < 200_000, "stalled at {got:?}");
        for (dir, &(from, to, _)) in peers.iter().enumerate() {
            let dest = if to == b { node(0xB) } else { node(0xA) };
            while sent[dir] < N && sent[dir] - got[dir] < WINDOW {
                if sim.clients[from].send(&dest, &packet(sent[dir])).is_err() {
                    break;
                }
                sent[dir] += 1;
            }
        }
        sim.run_for(Duration::from_millis(1));
        for (dir, &(_, to, src)) in peers.iter().enumerate() {
            while let Some((from, packet)) = sim.clients[to].recvs.pop_front() {
                assert_eq!(from, src);
                check(got[dir], &packet);
                got[dir] += 1;
            }
        }
    }

    let stats = sim.relay.stats();
    let total = u64::from(2 * N);
    assert_eq!(stats.received.packets - before.received.packets, total);
    assert_eq!(stats.delivered.packets - before.delivered.packets, total);
    let bytes: u64 = (0..N).map(|seq| packet(seq).len() as u64).sum::<u64>() * 2;
    assert_eq!(stats.received.bytes - before.received.bytes, bytes);
    assert_eq!(stats.delivered.bytes - before.delivered.bytes, bytes);
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops);
    assert_eq!((sim.shell.sends, sim.shell.queued), (total, total));
    // Several SENDs share a QUIC packet: fewer UDP datagrams than relay messages.
    assert!(stats.udp_rx.packets < total);
}

#[test]
fn a_client_that_stops_reading_costs_bounded_memory() {
    const BUFFER: usize = 16 * 1024;
    let (config, cert) = config();
    let config = config.with_datagram_send_buffer(BUFFER).unwrap();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let c = sim.join(3, &cert, node(0xC));
    sim.clients[c].deaf = true;

    let mut offered = 0u64;
    for round in 0..400u32 {
        for i in 0..10 {
            if sim.clients[a]
                .send(&node(0xC), &packet(round * 10 + i))
                .is_ok()
            {
                offered += 1;
            }
        }
        sim.run_for(Duration::from_millis(5));
        let stats = sim.relay.stats();
        assert!(
            stats.datagram_send_buffered <= BUFFER as u64,
            "{} buffered",
            stats.datagram_send_buffered
        );
    }
    let stats = sim.relay.stats();
    let full = stats.drops.get(DropReason::SendBufferFull);
    assert!(full > offered / 2, "{full} of {offered} dropped");
    assert_eq!(sim.shell.sends, offered);
    assert_eq!(sim.shell.queued + full, offered);
    assert_eq!(stats.delivered.packets, sim.shell.queued);
    assert_eq!(
        sim.shell.dropped.get(&DropReason::SendBufferFull),
        Some(&full)
    );
    assert_eq!(stats.drops.total(), full);

    // C never acknowledges: the idle timeout ends it, and its buffer with it.
    sim.run_for(Duration::from_secs(60));
    assert!(
        sim.shell
            .closed
            .iter()
            .any(|&(_, n, reason)| n == Some(node(0xC)) && reason == CloseReason::IdleTimeout),
        "{:?}",
        sim.shell.closed
    );
    assert!(!sim.relay.is_connected(&node(0xC)));
    let stats = sim.relay.stats();
    assert_eq!((stats.connections, stats.idle_timeouts), (1, 1));
    assert_eq!(stats.datagram_send_buffered, 0);
    assert!(sim.clients[a].lost.is_none());
}

#[test]
fn a_newer_connection_replaces_the_older() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let b = sim.join(2, &cert, node(0xB));
    let old = sim.join(1, &cert, node(0xA));
    let (old_conn, _) = sim.shell.authenticated[1];
    sim.shell
        .verdicts
        .insert(b"second".to_vec(), Verdict::Accept(node(0xA)));
    let new = sim.connect(3, client_config(&cert, true));
    sim.clients[new].authenticate(b"second");
    sim.run_until_ready(new);
    sim.run_for(Duration::from_millis(20));

    assert_eq!(
        sim.clients[old].closed_by_relay(),
        Some((4000, "replaced".to_owned()))
    );
    assert_eq!(
        sim.shell.closed,
        [(old_conn, Some(node(0xA)), CloseReason::Replaced)]
    );
    assert!(sim.relay.is_connected(&node(0xA)));
    sim.clients[b].send(&node(0xA), b"to the new one").unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.clients[new].recvs.len(), 1);
    assert!(sim.clients[old].recvs.is_empty());
    let stats = sim.relay.stats();
    assert_eq!((stats.replaced, stats.authenticated), (1, 2));

    // The replaced connection's close does not take the node with it.
    sim.run_for(Duration::from_secs(5));
    assert!(sim.relay.is_connected(&node(0xA)));
    assert_eq!(sim.relay.stats().connections, 2);
}

#[test]
fn peer_gone_is_rate_limited_per_pair() {
    let (config, cert) = config();
    let config = config
        .with_peer_gone_limit(Duration::from_secs(5), 64)
        .unwrap();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    for _ in 0..10 {
        sim.clients[a].send(&node(0xE), b"nobody").unwrap();
    }
    sim.clients[a].send(&node(0xF), b"nobody either").unwrap();
    sim.run_for(Duration::from_millis(50));
    let gone: Vec<_> = sim.clients[a]
        .notices
        .iter()
        .filter(|n| matches!(n, Notice::PeerGone(_)))
        .copied()
        .collect();
    assert_eq!(
        gone,
        [Notice::PeerGone(node(0xE)), Notice::PeerGone(node(0xF))]
    );
    let stats = sim.relay.stats();
    assert_eq!(stats.drops.get(DropReason::PeerGone), 11);
    assert_eq!((stats.peer_gone_sent, stats.peer_gone_suppressed), (2, 9));

    // After the interval, the next SEND earns another.
    sim.run_for(Duration::from_secs(5));
    sim.clients[a].send(&node(0xE), b"still nobody").unwrap();
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        sim.clients[a].notices.last(),
        Some(&Notice::PeerGone(node(0xE)))
    );
    assert_eq!(sim.relay.stats().peer_gone_sent, 3);
}

#[test]
fn peer_present_notice() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    assert!(sim.relay.notify_present(sim.now, &node(0xA), &node(0xB)));
    assert!(!sim.relay.notify_present(sim.now, &node(0xC), &node(0xB)));
    sim.run_for(Duration::from_millis(20));
    assert_eq!(
        sim.clients[a].notices.last(),
        Some(&Notice::PeerPresent(node(0xB)))
    );
    assert_eq!(sim.relay.stats().peer_present_sent, 1);
}

/// PEER_GONE across hosts: another host's GONE about `dest` reaches `src` here by node id,
/// rate-limited per pair like the local PEER_GONE, and counts no drop on this host (the
/// packet was dropped on the other one).
#[test]
fn peer_gone_from_another_host_reaches_the_sender_by_node() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    assert!(sim.relay.notify_gone(sim.now, &node(0xA), &node(0xB)));
    assert!(
        !sim.relay.notify_gone(sim.now, &node(0xA), &node(0xB)),
        "rate-limited"
    );
    assert!(
        !sim.relay.notify_gone(sim.now, &node(0xC), &node(0xB)),
        "not here"
    );
    sim.run_for(Duration::from_millis(20));
    assert_eq!(
        sim.clients[a].notices.last(),
        Some(&Notice::PeerGone(node(0xB)))
    );
    let stats = sim.relay.stats();
    assert_eq!((stats.peer_gone_sent, stats.peer_gone_suppressed), (1, 1));
    assert_eq!(stats.drops.get(DropReason::PeerGone), 0);
}

#[test]
fn draining_hints_everyone_and_refuses_newcomers() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let b = sim.join(2, &cert, node(0xB));
    // A client mid-authentication when the drain starts.
    let late = sim.connect(3, client_config(&cert, true));
    sim.clients[late].authenticate(b"late");
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.shell.pending.len(), 1);

    sim.relay.start_draining(sim.now);
    assert!(sim.relay.is_draining());
    let (conn, _) = sim.shell.pending.pop().unwrap();
    sim.relay.accept(sim.now, conn, node(0xD)).unwrap();
    let newcomer = sim.connect(4, client_config(&cert, true));
    sim.run_for(Duration::from_millis(50));

    for client in [a, b] {
        assert_eq!(
            sim.clients[client].notices.last(),
            Some(&Notice::ReconnectHint)
        );
        assert!(sim.clients[client].lost.is_none(), "drain does not close");
    }
    assert_eq!(
        sim.clients[late].notices,
        [Notice::Ready(node(0xD)), Notice::ReconnectHint]
    );
    match &sim.clients[newcomer].lost {
        Some(ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(close.error_code, TransportErrorCode::CONNECTION_REFUSED);
        }
        other => panic!("newcomer not refused: {other:?}"),
    }
    let stats = sim.relay.stats();
    assert_eq!((stats.reconnect_hints, stats.refused_draining), (3, 1));
    // Relaying goes on while clients move.
    sim.clients[a].send(&node(0xB), b"still here").unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.clients[b].recvs.len(), 1);
}

#[test]
fn oversized_datagrams_are_dropped_both_ways() {
    let (config, cert) = config();
    let config = config.with_max_datagram_size(600).unwrap();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let b = sim.join(2, &cert, node(0xB));

    // In: a SEND above the relay's cap.
    sim.clients[a].send(&node(0xB), &[1; 600]).unwrap();
    sim.clients[a].send(&node(0xB), &[2; 583]).unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.relay.stats().drops.get(DropReason::Oversized), 1);
    assert_eq!(sim.shell.sends, 1, "dropped on the way in, not at delivery");
    assert_eq!(sim.clients[b].recvs.len(), 1, "583 + 17 = 600 fits");

    // Out: a packet from elsewhere (another core) above the cap, and one above what the
    // destination connection can carry.
    let now = sim.now;
    assert_eq!(
        sim.relay.deliver(now, &node(0xB), &node(0xC), &[0; 584]),
        Delivery::Dropped(DropReason::Oversized)
    );
    let (config, cert) = quic_harness::config();
    let mut wide = Sim::new(config);
    let b = wide.join(2, &cert, node(0xB));
    assert_eq!(
        wide.relay
            .deliver(wide.now, &node(0xB), &node(0xC), &[0; 9000]),
        Delivery::Dropped(DropReason::Oversized)
    );
    assert_eq!(
        wide.relay
            .deliver(wide.now, &node(0xB), &node(0xC), &[0; 1000]),
        Delivery::Queued
    );
    assert_eq!(
        wide.relay
            .deliver(wide.now, &node(0xD), &node(0xC), &[0; 10]),
        Delivery::Gone
    );
    wide.run_for(Duration::from_millis(20));
    assert_eq!(wide.clients[b].recvs.len(), 1);
    let stats = wide.relay.stats();
    assert_eq!(stats.drops.get(DropReason::Oversized), 1);
    assert_eq!(stats.delivered.packets, 1);
    assert_eq!(sim.relay.stats().drops.get(DropReason::Oversized), 2);
}

#[test]
fn malformed_and_unknown_datagrams_are_counted() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let raw = |bytes: &'static [u8]| Bytes::from_static(bytes);
    sim.clients[a].send_raw(raw(b"\x7fnew type")).unwrap();
    sim.clients[a].send_raw(raw(b"\x01short")).unwrap();
    sim.clients[a]
        .send_raw(raw(b"\x02aaaaaaaaaaaaaaaa not for the relay"))
        .unwrap();
    sim.run_for(Duration::from_millis(20));
    let stats = sim.relay.stats();
    assert_eq!(stats.drops.get(DropReason::UnknownType), 1);
    assert_eq!(stats.drops.get(DropReason::Malformed), 2);
    assert_eq!(sim.shell.sends, 0);
    assert!(sim.clients[a].lost.is_none());
}

#[test]
fn retry_when_unauthenticated_connections_pile_up() {
    let (config, cert) = config();
    let mut sim = Sim::new(config.clone().with_retry_threshold(1));
    // The first is taken directly; the second finds one unauthenticated and gets a Retry.
    let first = sim.connect(1, client_config(&cert, true));
    sim.run_for(Duration::from_millis(10));
    let second = sim.connect(2, client_config(&cert, true));
    sim.run_for(Duration::from_millis(20));
    assert!(sim.clients[first].connected && sim.clients[second].connected);
    assert_eq!(sim.relay.stats().retries, 1);

    // Threshold 0: always.
    let mut sim = Sim::new(config.with_retry_threshold(0));
    let a = sim.join(1, &cert, node(0xA));
    let b = sim.join(2, &cert, node(0xB));
    sim.clients[a].send(&node(0xB), b"validated").unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.clients[b].recvs.len(), 1);
    let stats = sim.relay.stats();
    assert_eq!((stats.retries, stats.incoming_accepted), (2, 2));
}

#[test]
fn connection_limit_refuses_the_next_client() {
    let (config, cert) = config();
    let mut sim = Sim::new(config.with_max_connections(1).unwrap());
    let a = sim.join(1, &cert, node(0xA));
    let b = sim.connect(2, client_config(&cert, true));
    sim.run_for(Duration::from_millis(20));
    assert!(matches!(
        &sim.clients[b].lost,
        Some(ConnectionError::ConnectionClosed(close))
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED
    ));
    assert!(sim.clients[a].lost.is_none());
    assert_eq!(sim.relay.stats().refused_full, 1);
}

#[test]
fn control_stream_violations_close_with_1002() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let cases: [(&[u8], bool, Violation); 5] = [
        // AUTH then a SEND on the stream.
        (
            b"\x00\x04\x05tok\x00\x12\x01aaaaaaaaaaaaaaaaX",
            false,
            Violation::UnexpectedMessage,
        ),
        // An empty token.
        (b"\x00\x01\x05", false, Violation::BadToken),
        // A zero-length frame.
        (b"\x00\x00", false, Violation::BadControlFrame),
        // AUTH twice.
        (
            b"\x00\x02\x05a\x00\x02\x05b",
            false,
            Violation::DuplicateAuth,
        ),
        // FIN in the middle of AUTH.
        (b"\x00\x09\x05tok", true, Violation::ControlStreamClosed),
    ];
    for (i, (bytes, fin, violation)) in cases.into_iter().enumerate() {
        let client = sim.connect(10 + i as u8, client_config(&cert, true));
        sim.clients[client].write_control(bytes);
        if fin {
            sim.clients[client].finish_control();
        }
        sim.run_for(Duration::from_millis(50));
        assert_eq!(
            sim.clients[client].closed_by_relay(),
            Some((1002, violation.as_str().to_owned())),
            "case {i}"
        );
    }
    assert_eq!(sim.relay.stats().protocol_errors, 5);
    // Those that got as far as AUTH were reported, with the violation.
    let reasons: Vec<_> = sim.shell.closed.iter().map(|c| c.2).collect();
    assert_eq!(
        reasons,
        [
            CloseReason::PeerMisbehaved(Violation::UnexpectedMessage),
            CloseReason::PeerMisbehaved(Violation::DuplicateAuth),
        ]
    );
}

#[test]
fn unknown_control_messages_are_skipped_and_fin_after_auth_is_fine() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    sim.shell
        .verdicts
        .insert(b"tok".to_vec(), Verdict::Accept(node(0xA)));
    let a = sim.connect(1, client_config(&cert, true));
    let mut bytes = Vec::new();
    wire::encode_control(b"\x05tok", &mut bytes).unwrap();
    wire::encode_control(b"\x42future", &mut bytes).unwrap();
    sim.clients[a].write_control(&bytes);
    sim.clients[a].finish_control();
    sim.run_until_ready(a);
    sim.run_for(Duration::from_millis(50));
    assert!(sim.clients[a].lost.is_none());
    assert_eq!(sim.relay.stats().drops.get(DropReason::UnknownType), 1);
    // Notices still flow on the server's half of the stream.
    assert!(sim.relay.notify_present(sim.now, &node(0xA), &node(0xB)));
    sim.run_for(Duration::from_millis(20));
    assert_eq!(
        sim.clients[a].notices.last(),
        Some(&Notice::PeerPresent(node(0xB)))
    );
}

#[test]
fn a_client_without_datagrams_is_closed_after_the_handshake() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let c = sim.connect(1, client_config(&cert, false));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        sim.clients[c].closed_by_relay(),
        Some((1002, "no_datagrams".to_owned()))
    );
    let stats = sim.relay.stats();
    assert_eq!((stats.handshakes, stats.protocol_errors), (1, 1));
}

#[test]
fn certificate_reload_applies_to_new_connections() {
    let (config, old_cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &old_cert, node(0xA));
    let (fresh, new_cert) = QuicConfig::self_signed(&["localhost"]).unwrap();
    sim.relay.set_server_config(fresh.tls().clone()).unwrap();

    let b = sim.join(2, &new_cert, node(0xB));
    let stale = sim.connect(3, client_config(&old_cert, true));
    sim.run_for(Duration::from_millis(50));
    assert!(
        matches!(
            sim.clients[stale].lost,
            Some(ConnectionError::TransportError(_))
        ),
        "{:?}",
        sim.clients[stale].lost
    );
    // The established connection keeps working.
    sim.clients[a]
        .send(&node(0xB), b"across the reload")
        .unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.clients[b].recvs.len(), 1);

    let mut unfit = (**fresh.tls()).clone();
    unfit.alpn_protocols.clear();
    assert!(sim.relay.set_server_config(unfit.into()).is_err());
}

#[test]
fn garbage_is_absorbed() {
    let (config, cert) = config();
    let mut sim = Sim::new(config);
    let a = sim.join(1, &cert, node(0xA));
    let from = "198.51.100.7:9999".parse().unwrap();
    let before = sim.relay.stats();
    let mut fed = 0u64;
    for len in [0usize, 1, 5, 20, 21, 64, 1199, 1200, 1500] {
        let data: Vec<u8> = (0..len).map(|i| (i * 131 + len) as u8).collect();
        sim.inject(from, &data);
        fed += 1;
    }
    // A long-header Initial-looking prefix with a broken body, and a short header aimed
    // at no connection.
    let mut initial = vec![0xC0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
    initial.resize(1200, 0xAB);
    sim.inject(from, &initial);
    sim.inject(from, &[0x40; 60]);
    fed += 2;
    // A real Initial, cut short; with its payload damaged; and intact but from a spoofed
    // source that will never answer.
    let mut probe = quic_harness::Client::new(99, client_config(&cert, true), sim.now);
    let real = probe.first_datagram(sim.now);
    sim.inject(from, &real[..1199]);
    let mut damaged = real.clone();
    damaged[1100] ^= 0x5A;
    sim.inject(from, &damaged);
    let spoofed = "198.51.100.8:443".parse().unwrap();
    sim.inject(spoofed, &real);
    fed += 3;
    let stats = sim.relay.stats();
    assert_eq!(stats.incoming_failed, 1, "damaged payload fails to decrypt");
    assert_eq!(
        stats.incoming_accepted, 2,
        "the joined client and the spoofed one"
    );
    sim.run_for(Duration::from_secs(1));

    let stats = sim.relay.stats();
    assert!(stats.udp_rx.packets - before.udp_rx.packets >= fed);
    assert!(stats.drops.get(DropReason::Unroutable) >= 9);
    assert_eq!(stats.connections, 2);
    assert!(sim.clients[a].lost.is_none());
    // Whatever the relay answered (a stateless reset, a close) went back to the sender only.
    let strays: Vec<_> = sim
        .relay_sent
        .iter()
        .filter(|&&dst| dst != from && dst != spoofed && dst != sim.clients[a].addr)
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    // The half-open connection of the spoofed source is dropped at the auth deadline.
    sim.run_for(Duration::from_secs(15));
    let stats = sim.relay.stats();
    assert_eq!((stats.connections, stats.auth_timeouts), (1, 1));
    assert!(sim.clients[a].lost.is_none());
}
