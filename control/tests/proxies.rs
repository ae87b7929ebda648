//! Behind trusted proxies: the client address comes from `Forwarded`, `X-Forwarded-For` or a
//! PROXY protocol v2 header, but only when the connection comes from `--trusted-proxies`;
//! spoofed headers from anyone else, or spoofed hops left of the client, change nothing.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::{Backend, Challenge, Node, Options, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn server(trusted: &[&str], options: Options) -> TestServer {
    let options = Options {
        trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
        ..options
    };
    TestServer::start_with(Backend::Sqlite, options)
        .await
        .unwrap()
}

/// Registers `node` with extra headers; returns the status and body.
async fn register(server: &TestServer, node: &Node, headers: &[(&str, &str)]) -> (u16, Value) {
    // The challenge through the same proxy, as the client behind it would ask.
    let mut challenge = server.http.post(server.url("/api/v1/nodes/challenge"));
    for (name, value) in headers {
        challenge = challenge.header(*name, *value);
    }
    let challenge = challenge.send().await.unwrap();
    if challenge.status() != 200 {
        let status = challenge.status().as_u16();
        return (status, challenge.json().await.unwrap());
    }
    let challenge: Challenge = challenge.json().await.unwrap();
    let body = node.registration_answering(&challenge, server.clock_secs());
    let mut request = server
        .http
        .post(server.url("/api/v1/nodes/register"))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `publicIp` the server recorded for `node`.
async fn public_ip(server: &TestServer, node: &Node, token: &str) -> String {
    let (status, body) = server
        .get(&format!("/api/v1/nodes/{}", node.id), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["networkInfo"]["publicIp"].as_str().unwrap().to_owned()
}

async fn registered_ip(server: &TestServer, headers: &[(&str, &str)]) -> String {
    let node = Node::new("US-CA");
    let (status, body) = register(server, &node, headers).await;
    assert_eq!(status, 201, "{body}");
    public_ip(server, &node, body["sessionToken"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_spoofed_hops_are_ignored() {
    let server = server(&["127.0.0.0/8", "10.0.0.0/8"], Options::default()).await;
    let xff = "X-Forwarded-For";
    assert_eq!(
        registered_ip(&server, &[(xff, "198.51.100.7")]).await,
        "198.51.100.7"
    );
    // The client wrote a hop of its own; the proxies appended theirs: the rightmost
    // untrusted hop is the one our proxy saw.
    assert_eq!(
        registered_ip(&server, &[(xff, "6.6.6.6, 198.51.100.8, 10.1.2.3")]).await,
        "198.51.100.8"
    );
    assert_eq!(
        registered_ip(
            &server,
            &[(
                "Forwarded",
                r#"for=6.6.6.6, for="[2001:db8::9]:4711";proto=https"#
            )]
        )
        .await,
        "2001:db8::9"
    );
    // Forwarded wins over X-Forwarded-For.
    assert_eq!(
        registered_ip(
            &server,
            &[("Forwarded", "for=203.0.113.5"), (xff, "198.51.100.1")]
        )
        .await,
        "203.0.113.5"
    );
    assert_eq!(registered_ip(&server, &[]).await, "127.0.0.1", "no header");
    // A malformed header from a trusted proxy is refused, naming it.
    for (name, value) in [
        (xff, "not-an-address"),
        (xff, "unknown"),
        ("Forwarded", "for=[::1]"),
    ] {
        let (status, body) = register(&server, &Node::new("US-CA"), &[(name, value)]).await;
        assert_eq!(status, 400, "{name}: {value}: {body}");
        assert_eq!(body["error"]["code"], "invalid_forwarded_header");
        assert_eq!(body["error"]["field"], name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_an_untrusted_peer_are_ignored() {
    let server = server(&["10.0.0.0/8"], Options::default()).await;
    assert_eq!(
        registered_ip(&server, &[("X-Forwarded-For", "198.51.100.7")]).await,
        "127.0.0.1"
    );
    assert_eq!(
        registered_ip(&server, &[("Forwarded", "for=198.51.100.7")]).await,
        "127.0.0.1"
    );
    // Not even parsed: garbage is no error from an untrusted peer.
    assert_eq!(
        registered_ip(&server, &[("X-Forwarded-For", "garbage")]).await,
        "127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_forwarded_client() {
    let options = Options {
        register_rate_limit: 2,
        ..Options::default()
    };
    let server = server(&["127.0.0.0/8"], options).await;
    let a = [("X-Forwarded-For", "198.51.100.1")];
    for _ in 0..2 {
        assert_eq!(register(&server, &Node::new("US-CA"), &a).await.0, 201);
    }
    assert_eq!(register(&server, &Node::new("US-CA"), &a).await.0, 429);
    let b = [("X-Forwarded-For", "198.51.100.2")];
    assert_eq!(
        register(&server, &Node::new("US-CA"), &b).await.0,
        201,
        "another client behind the same proxy has its own limit"
    );
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `source`.
fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&8080u16.to_be_bytes());
    header
}

/// Opens a connection that sends `prefix`, then a registration of `node`; returns the
/// status line's code, or `None` if the server closed without answering.
async fn register_raw(server: &TestServer, prefix: &[u8], node: &Node) -> Option<u16> {
    register_raw_body(server, prefix, node)
        .await
        .map(|(status, _)| status)
}

/// As [`register_raw`], with the response body. The challenge is fetched the same way (its
/// answer, when it is not 200, is returned instead), as a client behind that proxy would.
async fn register_raw_body(
    server: &TestServer,
    prefix: &[u8],
    node: &Node,
) -> Option<(u16, Value)> {
    let (status, challenge) = raw_post(server, prefix, "/api/v1/nodes/challenge", "").await?;
    if status != 200 {
        return Some((status, challenge));
    }
    let challenge: Challenge = serde_json::from_value(challenge).unwrap();
    let body = node
        .registration_answering(&challenge, server.clock_secs())
        .to_string();
    raw_post(server, prefix, "/api/v1/nodes/register", &body).await
}

/// One POST on its own connection that first sends `prefix`: the status, and the body as
/// JSON (`Null` if it is not), or `None` if the server closed without answering.
async fn raw_post(
    server: &TestServer,
    prefix: &[u8],
    path: &str,
    body: &str,
) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(prefix).await;
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_names_the_client_from_trusted_peers_only() {
    let options = Options {
        max_connections_per_ip: 1,
        ..Options::default()
    };
    let trusted = server(&["127.0.0.0/8"], options.clone()).await;
    let node = Node::new("US-CA");
    let (status, body) = register_raw_body(&trusted, &proxy_v2([192, 0, 2, 99], 4321), &node)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = body["sessionToken"].as_str().unwrap();
    assert_eq!(public_ip(&trusted, &node, token).await, "192.0.2.99");
    // Without a PROXY header, the trusted peer itself.
    assert_eq!(registered_ip(&trusted, &[]).await, "127.0.0.1");

    // The connection cap counts the PROXY header's source: one connection held open from
    // 192.0.2.7 (the cap is 1) shuts out a second from it, not one from 192.0.2.8.
    let mut held = TcpStream::connect(trusted.addr).await.unwrap();
    held.write_all(&proxy_v2([192, 0, 2, 7], 1)).await.unwrap();
    held.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        held.read(&mut buf).await.unwrap() > 0,
        "the held connection is served"
    );
    assert_eq!(
        register_raw(&trusted, &proxy_v2([192, 0, 2, 7], 2), &Node::new("US-CA")).await,
        None,
        "a second connection from the same client is closed"
    );
    assert_eq!(
        register_raw(&trusted, &proxy_v2([192, 0, 2, 8], 2), &Node::new("US-CA")).await,
        Some(201)
    );
    drop(held);

    // From an untrusted peer the header is just bytes before the request: no HTTP request.
    let untrusted = server(&["10.0.0.0/8"], options).await;
    assert_eq!(
        register_raw(
            &untrusted,
            &proxy_v2([192, 0, 2, 99], 1),
            &Node::new("US-CA")
        )
        .await,
        Some(400)
    );
}
