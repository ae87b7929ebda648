//! The QUIC relay served by the real workers over loopback UDP, with quinn as the client:
//! authentication, 100k packets between two QUIC clients with none lost or reordered under
//! the window, packets between a QUIC and a WebSocket client both ways, refusals.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boson_dataplane::relay::RelayConfig;
use boson_dataplane::{Dataplane, IoBackend, start};
use boson_dataplane_proto::quic::{ALPN, QuicConfig};
use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::NodeId;
use rustls::pki_types::CertificateDer;

fn start_quic(backend: IoBackend, workers: usize) -> (Dataplane, CertificateDer<'static>) {
    let (quic, cert) = QuicConfig::self_signed(&["localhost"]).unwrap();
    let mut relay = RelayConfig::new(Arc::new(common::relay_authenticate));
    relay.listen = "127.0.0.1:0".parse().unwrap();
    relay.quic = Some(quic);
    let mut config = common::config(backend, workers);
    config.relay = Some(relay);
    (start(config, common::stun_core).unwrap(), cert)
}

struct QuicClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// Connects, sends AUTH on the control stream, and returns the READY's node id (or the
/// close error).
async fn quic_join(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    token: &str,
) -> Result<(QuicClient, NodeId), quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let len = u16::try_from(1 + token.len()).unwrap();
    let mut auth = len.to_be_bytes().to_vec();
    auth.push(0x05);
    auth.extend_from_slice(token.as_bytes());
    send.write_all(&auth).await.unwrap();
    let mut ready = [0u8; 19];
    match recv.read_exact(&mut ready).await {
        Ok(()) => {}
        Err(_) => return Err(conn.closed().await),
    }
    assert_eq!(&ready[..3], &[0x00, 0x11, 0x07], "READY");
    let node = NodeId::from_bytes(ready[3..].try_into().unwrap());
    Ok((
        QuicClient {
            _endpoint: endpoint,
            conn,
            _control: (send, recv),
        },
        node,
    ))
}

fn send_datagram(conn: &quinn::Connection, dest: &NodeId, packet: &[u8]) {
    let mut datagram = Vec::with_capacity(17 + packet.len());
    datagram.push(0x01);
    datagram.extend_from_slice(dest.as_bytes());
    datagram.extend_from_slice(packet);
    conn.send_datagram(datagram.into()).unwrap();
}

async fn recv_datagram(conn: &quinn::Connection) -> (NodeId, Vec<u8>) {
    // Generous: under the window nothing is lost, so only a starved machine waits long.
    let datagram = tokio::time::timeout(Duration::from_secs(30), conn.read_datagram())
        .await
        .expect("a datagram within 30 s")
        .unwrap();
    assert_eq!(datagram[0], 0x02, "RECV");
    (
        NodeId::from_bytes(datagram[1..17].try_into().unwrap()),
        datagram[17..].to_vec(),
    )
}

/// What A sends B until B is reachable from A's core.
const PROBE: &[u8] = b"probe";

async fn quic_exchange(backend: IoBackend) {
    if !common::available(backend) {
        return;
    }
    let (dataplane, cert) = start_quic(backend, 2);
    let addr = dataplane.relay_addr().unwrap();
    let (a, b) = (node(1), node(2));
    let (client_a, got) = quic_join(addr, &cert, &token(&a)).await.unwrap();
    assert_eq!(got, a);
    let (client_b, got) = quic_join(addr, &cert, &token(&b)).await.unwrap();
    assert_eq!(got, b);

    // With two workers, A and B may be on different cores: B's arrival reaches A's core
    // through the cross-core ring a moment after B's READY, and a packet A's core reads
    // before that is answered PEER_GONE (on A's stream). Probe until one gets through; the
    // reader below skips probes that were still on their way.
    let mut through = false;
    // Up to 30 s: only a starved machine needs more than the first probe or two.
    for _ in 0..300 {
        send_datagram(&client_a.conn, &b, PROBE);
        let read = client_b.conn.read_datagram();
        if let Ok(datagram) = tokio::time::timeout(Duration::from_millis(100), read).await {
            assert_eq!(&datagram.unwrap()[17..], PROBE);
            through = true;
            break;
        }
    }
    assert!(through, "B never became reachable from A");

    // 100k packets A → B, at most 32 in flight: none lost, none reordered. The sender waits
    // for the reader's progress (not spinning, which on two cores would starve the workers),
    // and stops as soon as the reader fails, so a loss is a failure, not a hang.
    const COUNT: u64 = 100_000;
    let (progress, mut received) = tokio::sync::watch::channel(0u64);
    let reader = {
        let conn = client_b.conn.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while seq < COUNT {
                let (src, packet) = recv_datagram(&conn).await;
                assert_eq!(src, a);
                if packet == PROBE {
                    continue;
                }
                let got = u64::from_le_bytes(packet[..8].try_into().unwrap());
                assert_eq!(got, seq, "lost or reordered");
                assert_eq!(packet.len(), 200);
                seq += 1;
                progress.send_replace(seq);
            }
        })
    };
    let mut packet = vec![0xabu8; 200];
    let mut seq = 0;
    while seq < COUNT {
        // An error: the reader ended (it failed; `reader.await` below says why).
        let Ok(done) = received.wait_for(|&done| done + 32 > seq).await.map(|d| *d) else {
            break;
        };
        let limit = (done + 32).min(COUNT);
        while seq < limit {
            packet[..8].copy_from_slice(&seq.to_le_bytes());
            send_datagram(&client_a.conn, &b, &packet);
            seq += 1;
        }
    }
    reader.await.unwrap();

    // A QUIC client and a WebSocket client, both ways.
    let c = node(3);
    let ws = tokio::task::spawn_blocking(move || {
        let mut client =
            common::ws_upgrade(common::ws_connect(addr), Auth::Bearer(&token(&c))).unwrap();
        assert_eq!(client.ready().unwrap(), c);
        client
    })
    .await
    .unwrap();
    let ws = Arc::new(std::sync::Mutex::new(ws));
    // C's arrival reaches A's worker through the cross-core ring a moment after C's READY;
    // until then a packet to C is answered PEER_GONE. Probe until one gets through, then
    // drain the extra probes.
    let mut through = false;
    for _ in 0..50 {
        send_datagram(&client_a.conn, &c, b"probe");
        let ws2 = Arc::clone(&ws);
        through = tokio::task::spawn_blocking(move || {
            let mut ws = ws2.lock().unwrap();
            ws.stream()
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let got = matches!(ws.recv(), Ok(Received::Packet { .. }));
            if got {
                while ws.recv().is_ok() {}
            }
            ws.stream()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            got
        })
        .await
        .unwrap();
        if through {
            break;
        }
    }
    assert!(through, "C never became reachable from A");
    for i in 0..500u32 {
        let packet = [&i.to_le_bytes()[..], &[5u8; 700]].concat();
        send_datagram(&client_a.conn, &c, &packet);
        let ws2 = Arc::clone(&ws);
        let expected = packet.clone();
        tokio::task::spawn_blocking(move || {
            let mut ws = ws2.lock().unwrap();
            assert_eq!(ws.recv_packet().unwrap(), (a, expected));
            ws.send(&a, &packet).unwrap();
        })
        .await
        .unwrap();
        let (src, back) = recv_datagram(&client_a.conn).await;
        assert_eq!((src, back.len()), (c, 704));
        assert_eq!(&back[..4], &i.to_le_bytes());
    }

    let sum = |f: fn(&boson_dataplane::WorkerCounters) -> u64| -> u64 {
        dataplane.stats().iter().map(|s| f(&s.counters)).sum()
    };
    assert!(sum(|c| c.quic_packets_in) >= COUNT + 500);
    assert_eq!(sum(|c| c.quic_sessions), 2);
    drop((client_a, client_b));
    tokio::task::spawn_blocking(move || dataplane.shutdown().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_exchange_epoll() {
    quic_exchange(IoBackend::Epoll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_exchange_uring() {
    quic_exchange(IoBackend::Uring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_refuses_bad_tokens_and_answers_peer_gone() {
    let (dataplane, cert) = start_quic(IoBackend::Epoll, 2);
    let addr = dataplane.relay_addr().unwrap();
    let refused = quic_join(addr, &cert, "node.nonsense").await;
    match refused {
        Err(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code.into_inner(), 1008);
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a forged token was accepted"),
    }
    // PEER_GONE arrives on the control stream for an unknown destination.
    let (mut client, _) = quic_join(addr, &cert, &token(&node(9))).await.unwrap();
    send_datagram(&client.conn, &node(10), b"anyone?");
    let mut notice = [0u8; 19];
    tokio::time::timeout(
        Duration::from_secs(5),
        client._control.1.read_exact(&mut notice),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&notice[..3], &[0x00, 0x11, 0x03], "PEER_GONE");
    assert_eq!(&notice[3..], node(10).as_bytes());
    drop(client);
    tokio::task::spawn_blocking(move || dataplane.shutdown().unwrap())
        .await
        .unwrap();
}

fn node(n: u8) -> NodeId {
    common::relay_node(n, 0x51)
}

fn token(node: &NodeId) -> String {
    common::relay_token(node)
}
