//! Slow and greedy HTTP clients: slowloris, idle connections, slow bodies, and too many
//! connections from one address. The server must cut them off without hurting anyone else.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::{Backend, Options, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `bytes` one per `pace` until the server closes the connection; returns how many
/// were sent by then and what the server sent back. Panics if the server never closes.
async fn trickle(stream: TcpStream, bytes: &[u8], pace: Duration) -> (usize, Vec<u8>) {
    let (mut read, mut write) = stream.into_split();
    let mut received = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return (sent, received),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(pace), if sent < bytes.len() => {
                if write.write_all(&bytes[sent..=sent]).await.is_err() {
                    return (sent, received);
                }
                sent += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_at_the_header_timeout() {
    let options = Options {
        header_read_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let server = TestServer::start_with(Backend::Sqlite, options)
        .await
        .unwrap();
    let request = b"GET /health HTTP/1.1\r\nHost: slow.example.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let slow = tokio::spawn(async move { trickle(stream, request, Duration::from_secs(1)).await });

    // Everyone else is served meanwhile.
    for _ in 0..3 {
        assert_eq!(server.get("/health", None).await.0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let (sent, received) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the slow client was never cut off")
        .unwrap();
    // One byte a second against a 2 s timeout: closed after two or three bytes, long before
    // the request line was complete. Up to 8 leaves a busy machine room to be late, and still
    // tells a 2 s timeout from none (the whole request, 82 bytes, would take 82 s).
    assert!(
        (1..=8).contains(&sent),
        "sent {sent} bytes before the close"
    );
    assert!(
        received.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&received)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_slow_bodies_get_408() {
    let options = Options {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    let server = TestServer::start_with(Backend::Sqlite, options)
        .await
        .unwrap();

    // Connected, never says a word.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("an idle connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Headers in time, then half a body and silence: 408 with a JSON error.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /api/v1/nodes/register HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"nodeId\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the slow body was never answered");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let options = Options {
        max_connections_per_ip: 3,
        ..Options::default()
    };
    let server = TestServer::start_with(Backend::Sqlite, options)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The fourth is closed on accept, before it sends anything.
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection over the limit stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A closed connection gives its slot back.
    drop(held.pop());
    let mut status = 0;
    for _ in 0..100 {
        let fresh = reqwest::Client::new();
        if let Ok(response) = fresh.get(server.url("/health")).send().await {
            status = response.status().as_u16();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    drop(held);
    let mut refused = 0.0;
    for _ in 0..100 {
        // Slots come back as the server notices the closes: retry until one is free.
        let Ok(response) = reqwest::Client::new()
            .get(server.url("/metrics"))
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let text = response.text().await.unwrap();
        refused = text
            .lines()
            .find_map(|l| l.strip_prefix("bosonserver_http_connections_refused_total "))
            .unwrap()
            .parse()
            .unwrap();
        if refused >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused >= 1.0, "refusals are counted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let response = server
        .http
        .get(server.url("/health"))
        .header("x-padding", "a".repeat(32 * 1024))
        .send()
        .await;
    match response {
        Ok(response) => assert_eq!(response.status().as_u16(), 431),
        // hyper may close before the client finished writing.
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error}"),
    }
    assert_eq!(server.get("/health", None).await.0, 200);
    server.stop().await;
}
