//! Issue 4's done-when on one host: two nodes registered through the REST API exchange packets
//! through the relay of the real binary, with the tokens the API issued; a re-registration
//! revokes the older token and its live session.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::{ws_connect as connect, ws_upgrade};

#[test]
fn registered_nodes_relay_through_ws_and_reregistration_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_local(dir.path(), &[], true);
    let relay = server.relay.expect("the relay runs by default");
    let http = common::Http::new();
    let (id_a, id_b) = (
        "6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a01",
        "6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02",
    );
    let key_a = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let key_b = "yTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let token_a = http.register(&server.base, &common::node_body(id_a, key_a));
    let token_b = http.register(&server.base, &common::node_body(id_b, key_b));
    let (a, b): (NodeId, NodeId) = (id_a.parse().unwrap(), id_b.parse().unwrap());

    let mut client_a = ws_upgrade(connect(relay), Auth::Bearer(&token_a)).unwrap();
    assert_eq!(client_a.ready().unwrap(), a);
    let mut client_b = ws_upgrade(connect(relay), Auth::Message(&token_b)).unwrap();
    assert_eq!(client_b.ready().unwrap(), b);

    for i in 0..1000u32 {
        let packet = [&i.to_le_bytes()[..], &[7u8; 500]].concat();
        client_a.send(&b, &packet).unwrap();
        assert_eq!(client_b.recv_packet().unwrap(), (a, packet.clone()));
        client_b.send(&a, &packet).unwrap();
        assert_eq!(client_a.recv_packet().unwrap(), (b, packet));
    }

    // A token that is not the API's: refused with 1008.
    let mut forged = ws_upgrade(connect(relay), Auth::Bearer(&format!("{token_a}x"))).unwrap();
    assert_eq!(forged.recv().unwrap().close_code(), Some(1008));

    // B re-registers with its token (a new generation): its live session is closed and the
    // old token no longer opens one; the new token does.
    let (status, body) = http.post(
        &format!("{}/api/v1/nodes/register", server.base),
        &http.prove(&server.base, &common::node_body(id_b, key_b)),
        Some(&token_b),
    );
    assert!(status == 200 || status == 201, "{status} {body}");
    let new_token_b = body["sessionToken"].as_str().unwrap().to_owned();
    assert_eq!(client_b.recv().unwrap().close_code(), Some(1008));
    let mut old = ws_upgrade(connect(relay), Auth::Bearer(&token_b)).unwrap();
    assert_eq!(old.recv().unwrap().close_code(), Some(1008));
    let mut renewed = ws_upgrade(connect(relay), Auth::Bearer(&new_token_b)).unwrap();
    assert_eq!(renewed.ready().unwrap(), b);
    client_a.send(&b, b"welcome back").unwrap();
    assert_eq!(
        renewed.recv_packet().unwrap(),
        (a, b"welcome back".to_vec())
    );

    // A third node over QUIC, trusting the development certificate the server wrote.
    let id_c = "6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a03";
    let token_c = http.register(
        &server.base,
        &common::node_body(id_c, "zTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let c: NodeId = id_c.parse().unwrap();
    let node_c = common::quic_node(relay, &dir.path().join("data"), &token_c);
    let (runtime, quic) = (&node_c.runtime, &node_c.conn);
    for i in 0..200u32 {
        let packet = [&i.to_le_bytes()[..], &[3u8; 900]].concat();
        let mut datagram = vec![0x01];
        datagram.extend_from_slice(a.as_bytes());
        datagram.extend_from_slice(&packet);
        quic.send_datagram(datagram.into()).unwrap();
        assert_eq!(
            client_a.recv_packet().unwrap(),
            (c, packet.clone()),
            "QUIC → WebSocket"
        );
        client_a.send(&c, &packet).unwrap();
        let back = runtime
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), quic.read_datagram()).await
            })
            .unwrap()
            .unwrap();
        assert_eq!(back[0], 0x02);
        assert_eq!(&back[1..17], a.as_bytes());
        assert_eq!(&back[17..], &packet[..], "WebSocket → QUIC");
    }

    // The relay's counters are on /metrics, per core.
    let metrics = http.text(&format!("{}/metrics", server.base));
    assert!(
        metrics.contains("bosonserver_dataplane_ws_packets_relayed_total{core=\"0\"}"),
        "{metrics}"
    );
}

/// wss through the binary: the operator's certificate, a node registered through the API.
#[test]
fn registered_nodes_relay_through_wss() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, made.cert.pem()).unwrap();
    std::fs::write(&key_path, made.signing_key.serialize_pem()).unwrap();
    let server = common::start_local(
        dir.path(),
        &[
            "--relay-cert",
            cert_path.to_str().unwrap(),
            "--relay-key",
            key_path.to_str().unwrap(),
        ],
        true,
    );
    let relay = server.relay.unwrap();
    let http = common::Http::new();
    let (id_a, id_b) = (
        "8f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a01",
        "8f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02",
    );
    let token_a = http.register(
        &server.base,
        &common::node_body(id_a, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let token_b = http.register(
        &server.base,
        &common::node_body(id_b, "yTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let (a, b): (NodeId, NodeId) = (id_a.parse().unwrap(), id_b.parse().unwrap());
    let cert = made.cert.der().clone();
    let mut client_a = ws_upgrade(tls_client(relay, &cert), Auth::Bearer(&token_a)).unwrap();
    assert_eq!(client_a.ready().unwrap(), a);
    let mut client_b = ws_upgrade(tls_client(relay, &cert), Auth::Bearer(&token_b)).unwrap();
    assert_eq!(client_b.ready().unwrap(), b);
    for i in 0..1000u32 {
        let packet = [&i.to_le_bytes()[..], &[1u8; 1200]].concat();
        client_a.send(&b, &packet).unwrap();
        assert_eq!(client_b.recv_packet().unwrap(), (a, packet.clone()));
        client_b.send(&a, &packet).unwrap();
        assert_eq!(client_a.recv_packet().unwrap(), (b, packet));
    }
}

fn tls_client(
    addr: std::net::SocketAddr,
    trust: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}
