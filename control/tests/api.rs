//! The REST API end to end: a real server on a loopback port, spoken to over HTTP, against
//! SQLite and against PostgreSQL + Redis.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::Duration;

use boson_shared::credentials;
use common::{Backend, Node, Options, TURN_SECRET, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    register_heartbeat_and_metrics,
    missed_heartbeats_make_a_node_inactive,
    reregistration_is_refused_unless_it_is_safe,
    bad_inputs_get_json_errors,
    registration_is_rate_limited_per_ip,
    listing_filters_and_requires_a_token,
    routing_ranks_routes_for_the_caller_only,
    ice_credentials_verify_like_coturn,
    health_endpoints_report_readiness,
    concurrent_registrations_of_one_id_create_it_once,
    forged_and_stale_tokens_are_refused,
    replayed_registrations_and_tokens_change_nothing,
    a_deleted_nodes_tokens_stay_dead_when_its_id_registers_again,
    migration_lifts_rows_registered_again_above_their_tombstones,
    oversized_streamed_bodies_are_refused,
    every_request_field_is_validated_and_named,
);

async fn register_heartbeat_and_metrics(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("US-CA");
    let registration = server.registration(&node).await;
    let (status, body) = server
        .post("/api/v1/nodes/register", None, &registration)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "registered");
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["node"]["nodeId"], node.id.to_string());
    assert_eq!(body["node"]["publicKey"], node.key);
    assert_eq!(body["node"]["status"], "active");
    assert_eq!(body["node"]["networkInfo"]["publicIp"], "127.0.0.1");
    assert_eq!(body["stunServers"][0]["port"], 3478);
    let token = body["sessionToken"].as_str().unwrap();

    let (status, body) = server.heartbeat(&node, token, 5).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["nextHeartbeat"], 30);

    let (status, body) = server
        .get(&format!("/api/v1/nodes/{}", node.id), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metrics"]["activeConnections"], 5);
    assert_eq!(body["lastSeen"], common::START.0);

    assert_eq!(server.sample("bosonserver_active_nodes").await, 1.0);
    assert_eq!(server.sample("bosonserver_active_connections").await, 5.0);
    // One latency from the registration (50 ms), one from the heartbeat (12.5 ms).
    assert_eq!(
        server.sample("bosonserver_node_latency_ms_count").await,
        2.0
    );
    assert_eq!(server.sample("bosonserver_node_latency_ms_sum").await, 62.5);
    let text = server.metrics().await;
    assert!(text.contains(
        r#"bosonserver_api_requests_total{method="POST",route="/api/v1/nodes/{node_id}/heartbeat",status="200"} 1"#
    ), "{text}");
    assert!(
        !text.contains(&node.id.to_string()),
        "raw paths leak into labels:\n{text}"
    );
    server.stop().await;
}

async fn missed_heartbeats_make_a_node_inactive(backend: Backend) {
    let options = Options {
        node_timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let node = Node::new("DE-BE");
    let token = server.register(&node).await;
    assert_eq!(server.sample("bosonserver_active_nodes").await, 1.0);

    server.clock.advance(Duration::from_secs(59));
    assert_eq!(server.heartbeat(&node, &token, 1).await.0, 200);
    server.clock.advance(Duration::from_secs(61));
    let path = format!("/api/v1/nodes/{}", node.id);
    let mut status = Value::Null;
    for _ in 0..200 {
        status = server.get(&path, Some(&token)).await.1["status"].clone();
        if status == "inactive" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, "inactive", "the sweeper did not mark the node");
    assert_eq!(server.sample("bosonserver_active_nodes").await, 0.0);
    assert_eq!(server.sample("bosonserver_active_connections").await, 0.0);

    // A heartbeat brings it back; a node that says it goes offline leaves at once.
    assert_eq!(server.heartbeat(&node, &token, 2).await.0, 200);
    assert_eq!(server.sample("bosonserver_active_nodes").await, 1.0);
    let (code, _) = server
        .post(
            &format!("/api/v1/nodes/{}/heartbeat", node.id),
            Some(&token),
            &json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 0}, "status": "offline"}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(server.sample("bosonserver_active_nodes").await, 0.0);
    server.stop().await;
}

async fn reregistration_is_refused_unless_it_is_safe(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("US-NY");
    let token = server.register(&node).await;
    let register = "/api/v1/nodes/register";

    let new_key = node.with_key_of(&Node::new("US-NY"));
    let (status, body) = server
        .post(register, None, &server.registration(&new_key).await)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("public_key_mismatch")),
        "{body}"
    );
    let (status, body) = server
        .post(register, None, &server.registration(&node).await)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("node_active")),
        "{body}"
    );

    let other = Node::new("US-NY");
    let other_token = server.register(&other).await;
    let (status, body) = server
        .post(
            register,
            Some(&other_token),
            &server.registration(&new_key).await,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    // A key another node holds stays with it (even proved by its holder).
    let steal = node.with_key_of(&other);
    let (status, body) = server
        .post(register, Some(&token), &server.registration(&steal).await)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("public_key_in_use")),
        "{body}"
    );

    // The node itself rotates its key; its old token dies with the old registration.
    let (status, body) = server
        .post(register, Some(&token), &server.registration(&new_key).await)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"]["publicKey"], new_key.key);
    let new_token = body["sessionToken"].as_str().unwrap().to_owned();
    let (status, body) = server.heartbeat(&node, &token, 0).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    assert_eq!(server.heartbeat(&node, &new_token, 0).await.0, 200);

    // Once silent past the timeout, the same key may come back without a token.
    server.clock.advance(Duration::from_secs(91));
    let (status, body) = server
        .post(register, None, &server.registration(&new_key).await)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.heartbeat(&node, &new_token, 0).await.0, 401);
    server.stop().await;
}

#[expect(
    clippy::type_complexity,
    reason = "the table of cases reads best as tuples"
)]
async fn bad_inputs_get_json_errors(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("FR-IDF");
    let token = server.register(&node).await;
    let heartbeat = format!("/api/v1/nodes/{}/heartbeat", node.id);
    let register = "/api/v1/nodes/register";
    let with = |field: &str, value: Value| {
        let mut body = Node::new("FR-IDF").registration();
        let mut target = &mut body;
        let parts: Vec<&str> = field.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            target = &mut target[*part];
        }
        target[parts[parts.len() - 1]] = value;
        body.to_string()
    };
    // The body of `with`, but with raw bytes (not JSON-encoded) as the field's value.
    let with_raw = |field: &str, raw: &[u8]| -> Vec<u8> {
        let text = with(field, json!("@@RAW@@"));
        let (before, after) = text.split_once("\"@@RAW@@\"").unwrap();
        [before.as_bytes(), raw, after.as_bytes()].concat()
    };
    let short_key = common::base64_encode(&[1u8; 31]);
    let forged = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
        parts.join(".")
    };
    let other_token = server.register(&Node::new("FR-IDF")).await;
    let ghost = uuid::Uuid::new_v4();
    let ghost_token = server
        .state
        .tokens
        .issue(ghost.to_string().parse().unwrap(), 1, server.clock_now())
        .unwrap()
        .token;
    // Deep nesting is refused at the first wrong type, before any recursion.
    let nested = format!("{{\"nodeId\":{}{}}}", "[".repeat(8_000), "]".repeat(8_000));
    let beat = r#"{"metrics":{"latency":1,"cpuUsage":1,"activeConnections":1}}"#;

    let cases: Vec<(
        Method,
        String,
        Option<&str>,
        Option<&str>,
        Vec<u8>,
        u16,
        &str,
    )> = vec![
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            b"{\"nodeId\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            nested.clone().into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            b"{\"nodeId\":\"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("surprise", json!(1)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.localPort", json!("51820")).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.localPort", json!(70000)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.localPort", json!(0)).into_bytes(),
            422,
            "invalid_network_info",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.natType", json!("Open")).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.ipv4", json!("::1")).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("publicKey", json!(short_key)).into_bytes(),
            422,
            "invalid_public_key",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("publicKey", json!("%%%")).into_bytes(),
            422,
            "invalid_public_key",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("nodeId", json!("550e8400")).into_bytes(),
            422,
            "invalid_node_id",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("location.country", json!("USA")).into_bytes(),
            422,
            "invalid_location",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("capabilities.maxConnections", json!(0)).into_bytes(),
            422,
            "invalid_capabilities",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("capabilities.maxConnections", json!(1e300)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("metrics.cpuUsage", json!(101)).into_bytes(),
            422,
            "invalid_metrics",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            vec![b' '; 17 * 1024],
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            register.into(),
            None,
            None,
            with("nodeId", json!(node.id)).into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            None,
            Some("application/json"),
            beat.into(),
            401,
            "missing_token",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some("Basic abc"),
            Some("application/json"),
            beat.into(),
            401,
            "invalid_token",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&forged),
            Some("application/json"),
            beat.into(),
            401,
            "invalid_token",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&other_token),
            Some("application/json"),
            beat.into(),
            403,
            "forbidden",
        ),
        // A token of a node that does not exist (any more) is revoked with it.
        (
            Method::POST,
            format!("/api/v1/nodes/{ghost}/heartbeat"),
            Some(&ghost_token),
            Some("application/json"),
            beat.into(),
            401,
            "token_revoked",
        ),
        (
            Method::POST,
            "/api/v1/nodes/not-a-uuid/heartbeat".into(),
            Some(&token),
            Some("application/json"),
            beat.into(),
            400,
            "invalid_node_id",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":1,"cpuUsage":1,"activeConnections":-1}}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":1,"cpuUsage":1,"activeConnections":1e30}}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":-1,"cpuUsage":1,"activeConnections":1}}"#.to_vec(),
            422,
            "invalid_metrics",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"cpuUsage":1,"activeConnections":1}}"#.to_vec(),
            422,
            "invalid_body",
        ),
        // Huge numbers: out of f64's range is not JSON we can represent (400); out of the
        // field's range is a wrong value (422).
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":1e400,"cpuUsage":1,"activeConnections":1}}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":1e308,"cpuUsage":1,"activeConnections":1}}"#.to_vec(),
            422,
            "invalid_metrics",
        ),
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            br#"{"metrics":{"latency":1,"cpuUsage":1,"activeConnections":18446744073709551616}}"#
                .to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("capabilities.maxConnections", json!(4_294_967_296_u64)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("networkInfo.localPort", json!(-1)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("capabilities.bandwidth.up", json!(1e300)).into_bytes(),
            422,
            "invalid_metrics",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("nodeId", json!(format!("{}{}", "9".repeat(400), node.id))).into_bytes(),
            422,
            "invalid_node_id",
        ),
        // Bad Unicode: lone surrogates in escapes, overlong and truncated UTF-8, control
        // characters where text must be printable.
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with_raw("location.region", br#""\ud800""#),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with_raw("location.region", br#""\udc00\ud800""#),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with_raw("nodeId", br#""\ud83d""#),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with_raw("location.region", b"\"\xc0\xaf\""),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with_raw("location.region", b"\"US-\xe2\x82\""),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("location.region", json!("US\u{0000}CA")).into_bytes(),
            422,
            "invalid_location",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            with("location.region", json!("US\u{202E}CA\u{0007}")).into_bytes(),
            422,
            "invalid_location",
        ),
        (
            Method::GET,
            "/api/v1/nodes/%FF%FE".into(),
            Some(&token),
            None,
            Vec::new(),
            400,
            "invalid_node_id",
        ),
        (
            Method::POST,
            "/api/v1/nodes/%ED%A0%80/heartbeat".into(),
            Some(&token),
            Some("application/json"),
            beat.into(),
            400,
            "invalid_node_id",
        ),
        (
            Method::GET,
            "/api/v1/nodes?region=%FF".into(),
            Some(&token),
            None,
            Vec::new(),
            400,
            "invalid_query",
        ),
        // Deep nesting at every body, refused at the first wrong type without recursing.
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            format!("{}{}", "[".repeat(8_000), "]".repeat(8_000)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/routing/request".into(),
            Some(&token),
            Some("application/json"),
            format!("{{\"clientId\":{}", "{\"a\":".repeat(3_000)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            register.into(),
            None,
            Some("application/json"),
            "[".repeat(16_000).into_bytes(),
            422,
            "invalid_body",
        ),
        // Oversized bodies on every endpoint that takes one.
        (
            Method::POST,
            heartbeat.clone(),
            Some(&token),
            Some("application/json"),
            format!("{{\"metrics\":{{\"latency\":1{}}}}}", " ".repeat(17 * 1024)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/api/v1/routing/request".into(),
            Some(&token),
            Some("application/json"),
            vec![b'{'; 64 * 1024],
            413,
            "payload_too_large",
        ),
        (
            Method::GET,
            format!("/api/v1/nodes/{ghost}"),
            Some(&token),
            None,
            Vec::new(),
            404,
            "node_not_found",
        ),
        (
            Method::GET,
            "/api/v1/nodes?status=zombie".into(),
            Some(&token),
            None,
            Vec::new(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/api/v1/nodes?limit=0".into(),
            Some(&token),
            None,
            Vec::new(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/api/v1/nodes?colour=red".into(),
            Some(&token),
            None,
            Vec::new(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/api/v1/nowhere".into(),
            None,
            None,
            Vec::new(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/nodes/register".into(),
            None,
            None,
            Vec::new(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, auth, content_type, body, want_status, want_code) in cases {
        let mut request = server
            .http
            .request(method.clone(), server.url(&path))
            .body(body);
        if let Some(auth) = auth {
            let value = if auth.contains(' ') {
                auth.to_owned()
            } else {
                format!("Bearer {auth}")
            };
            request = request.header("authorization", value);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let www_authenticate = response.headers().contains_key("www-authenticate");
        let text = response.text().await.unwrap();
        let what = format!("{method} {path} -> {status} {text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {what}"));
        assert_eq!(status, want_status, "{what}");
        assert_eq!(body["error"]["code"], want_code, "{what}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert_eq!(www_authenticate, status == 401, "{what}");
    }

    // Expired: the clock moves past the token's hour.
    server.clock.advance(Duration::from_secs(3600 + 6));
    let (status, body) = server.heartbeat(&node, &token, 0).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_expired")),
        "{body}"
    );

    // Nothing above reached the registry.
    server.clock.advance(Duration::from_secs(1));
    let fresh = server.register(&Node::new("FR-IDF")).await;
    let (_, body) = server.get("/api/v1/nodes", Some(&fresh)).await;
    assert_eq!(body["count"], 3, "{body}");
    server.stop().await;
}

async fn registration_is_rate_limited_per_ip(backend: Backend) {
    let options = Options {
        register_rate_limit: 3,
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    for _ in 0..3 {
        server.register(&Node::new("JP-13")).await;
    }
    let response = server
        .http
        .post(server.url("/api/v1/nodes/register"))
        .json(&Node::new("JP-13").registration())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The next window admits again.
    server.clock.advance(Duration::from_secs(60));
    server.register(&Node::new("JP-13")).await;
    server.stop().await;
}

async fn listing_filters_and_requires_a_token(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let a = Node::new("US-CA");
    let b = Node::new("US-NY");
    let c = Node::new("DE-BE");
    let token = server.register(&a).await;
    server.register(&b).await;
    let c_token = server.register(&c).await;
    assert_eq!(server.get("/api/v1/nodes", None).await.0, 401);

    let ids = |body: &Value| -> Vec<String> {
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["nodeId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = server.get("/api/v1/nodes", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 3);
    let (_, body) = server.get("/api/v1/nodes?region=US-NY", Some(&token)).await;
    assert_eq!(ids(&body), vec![b.id.to_string()]);
    let (_, body) = server.get("/api/v1/nodes?country=us", Some(&token)).await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["nextOffset"], Value::Null, "{body}");
    // A page says where the next one starts, and the last one that there is none.
    let (_, body) = server.get("/api/v1/nodes?limit=2", Some(&token)).await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["nextOffset"], 2, "{body}");
    let (_, body) = server
        .get("/api/v1/nodes?limit=2&offset=2", Some(&token))
        .await;
    assert_eq!(body["count"], 1);
    assert_eq!(body["nextOffset"], Value::Null, "{body}");
    let (_, body) = server.get("/api/v1/nodes?limit=3", Some(&token)).await;
    assert_eq!(body["nextOffset"], Value::Null, "exactly full: {body}");

    server.post(
        &format!("/api/v1/nodes/{}/heartbeat", c.id),
        Some(&c_token),
        &json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 0}, "status": "offline"}),
    ).await;
    let (_, body) = server
        .get("/api/v1/nodes?status=inactive", Some(&token))
        .await;
    assert_eq!(ids(&body), vec![c.id.to_string()]);
    let (_, body) = server
        .get("/api/v1/nodes?status=active&region=US-CA", Some(&token))
        .await;
    assert_eq!(ids(&body), vec![a.id.to_string()]);
    server.stop().await;
}

async fn routing_ranks_routes_for_the_caller_only(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut client = Node::new("US-CA");
    client.nat = "Symmetric";
    let mut target = Node::new("US-CA");
    target.nat = "Symmetric";
    let open = Node::new("US-NY");
    let token = server.register(&client).await;
    server.register(&target).await;
    server.register(&open).await;
    let request = |client_id: uuid::Uuid, target: Option<uuid::Uuid>| {
        json!({
            "clientId": client_id,
            "targetNodeId": target,
            "requirements": {"maxLatency": 100, "preferredLocation": "US-CA", "preferredCountry": "US"},
            "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "Symmetric", "stunMappedAddress": null}
        })
    };
    let path = "/api/v1/routing/request";
    let (status, body) = server
        .post(path, Some(&token), &request(client.id, Some(target.id)))
        .await;
    assert_eq!(status, 200, "{body}");
    let routes = body["routes"].as_array().unwrap();
    assert_eq!(
        routes.len(),
        1,
        "two symmetric NATs get only a relay: {body}"
    );
    assert_eq!(routes[0]["type"], "relay");
    assert_eq!(body["selectedRoute"]["id"], format!("relay:{}", target.id));

    let (_, body) = server
        .post(path, Some(&token), &request(client.id, None))
        .await;
    let first = &body["selectedRoute"];
    assert_eq!(first["type"], "direct", "{body}");
    assert_eq!(first["path"][0], open.id.to_string());
    assert!(
        body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["path"][0] != client.id.to_string())
    );

    let (status, body) = server
        .post(path, Some(&token), &request(target.id, None))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = server.post(path, None, &request(client.id, None)).await;
    assert_eq!(status, 401);
    let (status, body) = server
        .post(
            path,
            Some(&token),
            &request(client.id, Some(uuid::Uuid::new_v4())),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("node_not_found"))
    );
    server.stop().await;
}

async fn ice_credentials_verify_like_coturn(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("BR-SP");
    let token = server.register(&node).await;
    assert_eq!(server.get("/api/v1/turn/ice", None).await.0, 401);
    let (status, body) = server.get("/api/v1/turn/ice", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ttl"], 600);
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers[0]["urls"][0], "stun:turn.example.test:3478");
    assert!(servers[0].get("username").is_none());
    let turn = &servers[1];
    assert_eq!(turn["urls"][0], "turn:turn.example.test:3478?transport=udp");
    assert_eq!(servers[2]["urls"][0], "stun:stun.example.test:3478");
    let username = turn["username"].as_str().unwrap();
    let password = turn["credential"].as_str().unwrap();
    let expiry = common::START.as_secs() + 600;
    assert_eq!(username, format!("{expiry}:{}", node.id));
    let now = u64::try_from(common::START.as_secs()).unwrap();
    let secrets = &server.state.config.turn.secrets;
    let secret = credentials::verify(secrets, username, password, now).unwrap();
    assert_eq!(secret.as_bytes(), TURN_SECRET.as_bytes());
    assert_eq!(
        credentials::verify(secrets, username, password, now + 601),
        Err(credentials::CredentialError::Expired)
    );
    server.stop().await;
}

async fn health_endpoints_report_readiness(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    assert_eq!(
        server.get("/health", None).await,
        (
            200,
            json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
        )
    );
    assert_eq!(
        server.get("/health/live", None).await,
        (200, json!({"status": "live"}))
    );
    let (status, body) = server.get("/health/ready", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    let redis = if backend == Backend::Sqlite {
        "not_configured"
    } else {
        "ok"
    };
    assert_eq!(body["checks"]["redis"], redis);

    // The database goes away: ready says so, live does not care.
    server.state.store.close().await;
    let response = server
        .http
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{body}"
    );
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(server.get("/health/live", None).await.0, 200);
    // And the API answers 503, not 500.
    assert_registration_unavailable(&server).await;
    assert_eq!(server.sample("bosonserver_database_up").await, 0.0);
}

async fn concurrent_registrations_of_one_id_create_it_once(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("IN-MH");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = server.http.clone();
        let url = server.url("/api/v1/nodes/register");
        let body = server.registration(&node).await;
        tasks.push(tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["error"]["code"].as_str().map(str::to_owned))
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            (201, None) => created += 1,
            (409, Some(code)) => assert!(
                ["node_active", "registration_conflict"].contains(&code.as_str()),
                "{code}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1);
    server.stop().await;
}

/// Signs `claims` under `header` with `key` (HMAC-SHA256 whatever the header says, when
/// `alg` is `None`; else with that algorithm).
fn sign(
    header: &Value,
    claims: &Value,
    key: &[u8],
    alg: Option<jsonwebtoken::Algorithm>,
) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(key),
        alg.unwrap_or(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap();
    format!("{message}.{signature}")
}

/// Every way to forge, bend or replay a node token gets 401 with a JSON error, on every
/// endpoint that takes a token.
async fn forged_and_stale_tokens_are_refused(backend: Backend) {
    use base64::Engine as _;
    use jsonwebtoken::Algorithm;

    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("NL-NH");
    let token = server.register(&node).await;
    let now = common::START.as_secs();
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut claims = json!({
            "sub": node.id.to_string(), "iss": "bosonserver", "aud": "bosonserver-node",
            "iat": now, "exp": now + 3600, "generation": 1,
        });
        edit(&mut claims);
        claims
    };
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let secret = common::JWT_SECRET;
    let good = sign(&hs256, &claims(&|_| {}), secret, None);
    // Sanity: a token built this way is accepted.
    assert_eq!(server.get("/api/v1/nodes", Some(&good)).await.0, 200);
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered =
        |claims: &Value| format!("{}.{}.{}", parts[0], b64(&claims.to_string()), parts[2]);

    // Re-registration revokes the first token; a token claiming a newer generation than the
    // node's is no better.
    let (status, body) = server
        .post(
            "/api/v1/nodes/register",
            Some(&token),
            &server.registration(&node).await,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let current = body["sessionToken"].as_str().unwrap().to_owned();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, no signature",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&claims(&|_| {}).to_string())
            ),
            "invalid_token",
        ),
        (
            "alg none with a real signature",
            format!("{}.{}.{}", b64(r#"{"alg":"none"}"#), parts[1], parts[2]),
            "invalid_token",
        ),
        (
            "HS384 with the real secret",
            sign(
                &json!({"alg": "HS384"}),
                &claims(&|_| {}),
                secret,
                Some(Algorithm::HS384),
            ),
            "invalid_token",
        ),
        (
            "HS512 with the real secret",
            sign(
                &json!({"alg": "HS512"}),
                &claims(&|_| {}),
                secret,
                Some(Algorithm::HS512),
            ),
            "invalid_token",
        ),
        (
            "RS256 header, HMAC signature with the secret as the public key",
            sign(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &claims(&|_| {}),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "ES256 header, HMAC signature",
            sign(&json!({"alg": "ES256"}), &claims(&|_| {}), secret, None),
            "invalid_token",
        ),
        (
            "forged kid pointing at an empty key",
            sign(
                &json!({"alg": "HS256", "kid": "../../../../dev/null"}),
                &claims(&|_| {}),
                b"",
                None,
            ),
            "invalid_token",
        ),
        (
            "kid with SQL, signed with the real secret",
            sign(
                &json!({"alg": "HS256", "kid": "x' UNION SELECT 'k"}),
                &claims(&|_| {}),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "jku to an attacker's key set",
            sign(
                &json!({"alg": "HS256", "jku": "https://attacker.example/jwks"}),
                &claims(&|_| {}),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "wrong secret",
            sign(
                &hs256,
                &claims(&|_| {}),
                b"another-secret-of-at-least-32-bytes!!",
                None,
            ),
            "invalid_token",
        ),
        (
            "tampered generation",
            tampered(&claims(&|c| c["generation"] = json!(2))),
            "invalid_token",
        ),
        (
            "tampered subject",
            tampered(&claims(&|c| {
                c["sub"] = json!(uuid::Uuid::new_v4().to_string())
            })),
            "invalid_token",
        ),
        (
            "tampered expiry",
            tampered(&claims(&|c| c["exp"] = json!(now + 10 * 365 * 86400))),
            "invalid_token",
        ),
        (
            "wrong audience",
            sign(
                &hs256,
                &claims(&|c| c["aud"] = json!("bosonserver-admin")),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "audience list without ours",
            sign(
                &hs256,
                &claims(&|c| c["aud"] = json!(["other", "more"])),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "wrong issuer",
            sign(&hs256, &claims(&|c| c["iss"] = json!("evil")), secret, None),
            "invalid_token",
        ),
        (
            "issued in the future",
            sign(
                &hs256,
                &claims(&|c| c["iat"] = json!(now + 600)),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "expired past the leeway",
            sign(
                &hs256,
                &claims(&|c| {
                    c["iat"] = json!(now - 7200);
                    c["exp"] = json!(now - 6);
                }),
                secret,
                None,
            ),
            "token_expired",
        ),
        (
            "no expiry",
            sign(
                &hs256,
                &claims(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                secret,
                None,
            ),
            "invalid_token",
        ),
        (
            "string generation",
            sign(
                &hs256,
                &claims(&|c| c["generation"] = json!("1")),
                secret,
                None,
            ),
            "invalid_token",
        ),
        ("garbage", "not.a.token".to_owned(), "invalid_token"),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "invalid_token",
        ),
        ("empty", String::new(), "invalid_token"),
        ("huge", "A".repeat(8 * 1024), "invalid_token"),
        ("revoked by re-registration", token.clone(), "token_revoked"),
        (
            "a generation the node never had",
            sign(
                &hs256,
                &claims(&|c| c["generation"] = json!(7)),
                secret,
                None,
            ),
            "token_revoked",
        ),
    ];
    let heartbeat = format!("/api/v1/nodes/{}/heartbeat", node.id);
    let beat = json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 0}});
    let route = json!({
        "clientId": node.id,
        "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "FullCone"}
    });
    let endpoints: Vec<(Method, String, Option<&Value>)> = vec![
        (Method::GET, "/api/v1/nodes".into(), None),
        (Method::GET, format!("/api/v1/nodes/{}", node.id), None),
        (Method::GET, "/api/v1/turn/ice".into(), None),
        (Method::GET, "/api/v1/hosts".into(), None),
        (Method::POST, heartbeat.clone(), Some(&beat)),
        (Method::POST, "/api/v1/routing/request".into(), Some(&route)),
        (Method::DELETE, format!("/api/v1/nodes/{}", node.id), None),
    ];
    for (what, bad, want_code) in &cases {
        for (method, path, body) in &endpoints {
            let mut request = server
                .http
                .request(method.clone(), server.url(path))
                .header("authorization", format!("Bearer {bad}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").cloned();
            let text = response.text().await.unwrap();
            let where_ = format!("{what}: {method} {path} -> {status} {text}");
            let body: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {where_}"));
            assert_eq!(status, 401, "{where_}");
            assert_eq!(body["error"]["code"], *want_code, "{where_}");
            assert!(challenge.is_some(), "{where_}");
        }
    }
    // Registration with a bad token is refused the same way (and creates nothing).
    let stranger = Node::new("NL-NH");
    for (what, bad, want_code) in &cases[..cases.len() - 2] {
        let (status, body) = server
            .send(
                Method::POST,
                "/api/v1/nodes/register",
                Some(bad),
                Some(&stranger.registration()),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some(*want_code)),
            "{what}: {body}"
        );
    }
    // Header bytes that are not text are no better.
    let response = server
        .http
        .get(server.url("/api/v1/nodes"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");

    // Nothing above touched the node: the current token still works.
    assert_eq!(server.heartbeat(&node, &current, 1).await.0, 200);
    let (status, body) = server
        .get(&format!("/api/v1/nodes/{}", stranger.id), Some(&current))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("node_not_found"))
    );
    server.stop().await;
}

/// The same registration sent twice, and a token captured before a re-registration: the
/// replay is refused and changes nothing.
async fn replayed_registrations_and_tokens_change_nothing(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("SE-AB");
    let body = server.registration(&node).await;
    let (status, first) = server.post("/api/v1/nodes/register", None, &body).await;
    assert_eq!(status, 201, "{first}");
    let token = first["sessionToken"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/nodes/{}", node.id);
    let (_, before) = server.get(&path, Some(&token)).await;

    // The identical body again, as an eavesdropper or a retrying proxy would send it: its
    // proof answered its challenge already.
    server.clock.advance(Duration::from_secs(1));
    let (status, replay) = server.post("/api/v1/nodes/register", None, &body).await;
    assert_eq!(
        (status, replay["error"]["code"].as_str()),
        (403, Some("nonce_unknown")),
        "{replay}"
    );
    // With a fresh proof but no token, the live node is not taken over either.
    let (status, replay) = server
        .post(
            "/api/v1/nodes/register",
            None,
            &server.registration(&node).await,
        )
        .await;
    assert_eq!(
        (status, replay["error"]["code"].as_str()),
        (409, Some("node_active")),
        "{replay}"
    );
    let (_, after) = server.get(&path, Some(&token)).await;
    assert_eq!(before, after, "the replay changed the node");
    assert_eq!(
        server.heartbeat(&node, &token, 0).await.0,
        200,
        "the first token still works"
    );

    // The node re-registers; the token captured before is dead everywhere, also for
    // registering again (which would otherwise hand out a fresh token).
    let (status, renewed) = server
        .post(
            "/api/v1/nodes/register",
            Some(&token),
            &server.registration(&node).await,
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let current = renewed["sessionToken"].as_str().unwrap().to_owned();
    server.take_commands();
    for (status, body) in [
        server
            .post(
                "/api/v1/nodes/register",
                Some(&token),
                &server.registration(&node).await,
            )
            .await,
        server.heartbeat(&node, &token, 0).await,
        server.get("/api/v1/turn/ice", Some(&token)).await,
        server.get(&path, Some(&token)).await,
        server.send(Method::DELETE, &path, Some(&token), None).await,
    ] {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("token_revoked")),
            "{body}"
        );
    }
    assert_eq!(
        server.take_commands(),
        vec![],
        "no grant or revocation for a stale token"
    );
    let (status, node_now) = server.get(&path, Some(&current)).await;
    assert_eq!(status, 200);
    assert_eq!(node_now["status"], "active", "{node_now}");
    server.stop().await;
}

/// A node deleted and registered again under the same id gets a new generation, never its
/// deleted registration's: a token captured before the deletion stays dead (401 with a JSON
/// body) on every authenticated call, and so does the relay grant it was made for, while the
/// new registration's token works. Twice, so that the generations follow the highest the id
/// ever had, not just the last deletion.
async fn a_deleted_nodes_tokens_stay_dead_when_its_id_registers_again(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("FR-IDF");
    let path = format!("/api/v1/nodes/{}", node.id);
    let mut dead: Vec<String> = Vec::new();
    let mut token = server.register(&node).await;
    let mut generations = vec![granted_generation(&server.take_commands(), &node)];
    for _ in 0..2 {
        let (status, body) = server.send(Method::DELETE, &path, Some(&token), None).await;
        assert_eq!(status, 200, "{body}");
        dead.push(token);
        server.clock.advance(Duration::from_secs(1));
        token = server.register(&node).await;
        generations.push(granted_generation(&server.take_commands(), &node));
        for old in &dead {
            for (what, (status, body)) in [
                ("get", server.get(&path, Some(old)).await),
                ("heartbeat", server.heartbeat(&node, old, 0).await),
                ("ice", server.get("/api/v1/turn/ice", Some(old)).await),
                (
                    "delete",
                    server.send(Method::DELETE, &path, Some(old), None).await,
                ),
            ] {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (401, Some("token_revoked")),
                    "{what} with a token of the deleted registration: {body}"
                );
            }
        }
        assert_eq!(
            server.take_commands(),
            vec![],
            "no grant or revocation for a dead token"
        );
        let (status, body) = server.get(&path, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "active", "{body}");
        let (status, body) = server.heartbeat(&node, &token, 1).await;
        assert_eq!(status, 200, "{body}");
    }
    // The relay accepts only the grant's generation: each registration's is new.
    assert!(
        generations.windows(2).all(|pair| pair[0] < pair[1]),
        "{generations:?}"
    );
    server.stop().await;
}

/// A store where a node id was registered again before generations followed the tombstones
/// (its row back at its deleted registration's generation, so the deleted registration's
/// token works again) is repaired by migration 0005: the row is lifted above its tombstone.
async fn migration_lifts_rows_registered_again_above_their_tombstones(backend: Backend) {
    use sqlx::Connection as _;

    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("FR-IDF");
    let path = format!("/api/v1/nodes/{}", node.id);
    let old = server.register(&node).await;
    let (status, body) = server.send(Method::DELETE, &path, Some(&old), None).await;
    assert_eq!(status, 200, "{body}");
    server.register(&node).await;
    // What an older version left: the new row at the deleted one's generation, and the
    // migration not applied yet.
    let url = server.state.config.database_url.clone();
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    for sql in [
        "UPDATE nodes SET generation = 1",
        "DELETE FROM _sqlx_migrations WHERE version = 5",
    ] {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    db.close().await.unwrap();
    assert_eq!(
        server.get(&path, Some(&old)).await.0,
        200,
        "the hole the migration closes"
    );

    let store = boson_control::io::store::Store::connect(&url)
        .await
        .unwrap();
    store.close().await;
    let (status, body) = server.get(&path, Some(&old)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    server.stop().await;
}

/// A registration racing a deletion of the same id (on PostgreSQL, where the two run side by
/// side): the insert waits for the deletion's transaction, then numbers its generation after
/// the tombstone that transaction wrote, which its own statement could not yet see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_racing_a_deletion_numbers_after_its_tombstone() {
    use sqlx::Connection as _;

    let Some(server) = TestServer::start(Backend::PostgresRedis).await else {
        return;
    };
    let node = Node::new("FR-IDF");
    let old = server.register(&node).await;
    let id: boson_shared::NodeId = node.id.to_string().parse().unwrap();
    let mut record = server.state.store.find(id).await.unwrap().unwrap();
    assert_eq!(record.generation, 1);

    // Another host deletes the node, and has not committed yet.
    let url = server.state.config.database_url.clone();
    let mut deleter = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut deletion = deleter.begin().await.unwrap();
    sqlx::query("DELETE FROM nodes WHERE node_id = $1")
        .bind(node.id.to_string())
        .execute(&mut *deletion)
        .await
        .unwrap();
    // (Stamped now, as a deletion is: the sweeper prunes old tombstones.)
    sqlx::query(
        "INSERT INTO node_deletions (node_id, generation, deleted_at_ms) VALUES ($1, 1, $2)",
    )
    .bind(node.id.to_string())
    .bind(common::START.0)
    .execute(&mut *deletion)
    .await
    .unwrap();
    let store = server.state.store.clone();
    let insert = tokio::spawn(async move {
        let outcome = store.insert(&mut record).await.unwrap();
        (outcome, record.generation)
    });
    // The insert waits on the deleted row's key.
    let mut watcher = sqlx::AnyConnection::connect(&url).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let row = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if sqlx::Row::get::<i64, _>(&row, "n") > 0 {
                return;
            }
            assert!(!insert.is_finished(), "the insert did not wait");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the insert never waited");
    deletion.commit().await.unwrap();
    let (outcome, generation) = insert.await.unwrap();
    assert_eq!(outcome, boson_control::io::store::WriteOutcome::Written);
    assert_eq!(generation, 2, "after the tombstone committed meanwhile");
    let (status, body) = server
        .get(&format!("/api/v1/nodes/{}", node.id), Some(&old))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    server.stop().await;
}

/// The generation of the one grant for `node` among `commands`.
fn granted_generation(commands: &[boson_shared::plane::Command], node: &Node) -> i64 {
    let id: boson_shared::NodeId = node.id.to_string().parse().unwrap();
    let grants: Vec<i64> = commands
        .iter()
        .filter_map(|command| {
            if let boson_shared::plane::Command::Grant(grant) = command
                && grant.node == id
            {
                Some(grant.generation)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(grants.len(), 1, "{commands:?}");
    grants[0]
}

/// Bodies without a length, streamed in chunks past the limit, get 413 like any other.
async fn oversized_streamed_bodies_are_refused(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /api/v1/nodes/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1024, " ".repeat(1024));
    for _ in 0..32 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed early
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(server.get("/health", None).await.0, 200);
    server.stop().await;
}

/// A registration while a dependency is down answers 503, not 500: with a proof when the
/// challenge can still be had (the database is down but Redis, which keeps challenges, is
/// not), else with the challenge's own 503 and a registration that fails as early.
async fn assert_registration_unavailable(server: &TestServer) {
    for _ in 0..2 {
        let node = Node::new("US-CA");
        let challenge = server
            .http
            .post(server.url("/api/v1/nodes/challenge"))
            .send()
            .await
            .unwrap();
        let body = if challenge.status() == 200 {
            let challenge = challenge.json().await.unwrap();
            node.registration_answering(&challenge, server.clock_secs())
        } else {
            assert_eq!(challenge.status(), 503);
            assert_eq!(challenge.headers()["retry-after"], "5");
            let body: Value = challenge.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            node.registration()
        };
        let response = server
            .http
            .post(server.url("/api/v1/nodes/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
}

/// Redis holds presence with the node timeout as its expiry.
#[tokio::test]
async fn presence_is_published_to_redis_with_expiry() {
    let Some(server) = TestServer::start(Backend::PostgresRedis).await else {
        return;
    };
    let node = Node::new("GB-LND");
    let token = server.register(&node).await;
    assert_eq!(server.heartbeat(&node, &token, 3).await.0, 200);
    let redis = server.state.config.redis.clone().unwrap();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}presence:{}", redis.prefix, node.id);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=90_000).contains(&ttl), "{key} has PTTL {ttl}");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(value.contains("\"generation\":1"), "{value}");
    server.stop().await;
}

/// A Redis that dies makes the server not ready and the registration answer 503.
#[tokio::test]
async fn readiness_names_redis_when_it_is_down() {
    if common::postgres_and_redis().is_none() {
        return;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test");
    let url = format!("redis://127.0.0.1:{port}/");
    let mut ready = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "private redis-server did not start");
    let options = Options {
        redis_url: Some(url),
        ..Options::default()
    };
    let server = TestServer::start_with(Backend::PostgresRedis, options)
        .await
        .unwrap();
    assert_eq!(server.get("/health/ready", None).await.0, 200);
    redis.kill().unwrap();
    redis.wait().unwrap();
    let (status, body) = server.get("/health/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{body}"
    );
    assert_eq!(body["checks"]["database"], "ok");
    assert_registration_unavailable(&server).await;
    server.stop().await;
}

impl TestServer {
    fn clock_now(&self) -> boson_control::clock::UnixMillis {
        use boson_control::clock::Clock as _;
        self.clock.now()
    }
}

/// A host that began a graceful shutdown reports not ready (so load balancers move away) and
/// keeps answering the API for the clients it has.
#[tokio::test]
async fn a_draining_host_is_not_ready_but_keeps_serving() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    assert_eq!(server.get("/health/ready", None).await.0, 200);
    server.state.start_draining();
    let response = server
        .http
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["error"]["code"], "draining", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(server.get("/health/live", None).await.0, 200);
    let node = Node::new("US-CA");
    let token = server.register(&node).await;
    assert_eq!(server.heartbeat(&node, &token, 1).await.0, 200);
    server.stop().await;
}

/// A Redis that is down when the server starts does not stop it: it starts not ready, answers
/// 503 where it needs Redis, and recovers by itself once Redis answers.
#[tokio::test]
async fn the_server_starts_without_redis_and_recovers_when_it_comes() {
    if common::postgres_and_redis().is_none() {
        return;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let options = Options {
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        ..Options::default()
    };
    let server = TestServer::start_with(Backend::PostgresRedis, options)
        .await
        .expect("starts with Redis down");
    let (status, body) = server.get("/health/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{body}"
    );
    assert_registration_unavailable(&server).await;
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test");
    let mut status = 0;
    for _ in 0..100 {
        status = server.get("/health/ready", None).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "ready once Redis answers");
    let node = Node::new("US-CA");
    server.register(&node).await;
    redis.kill().unwrap();
    redis.wait().unwrap();
    server.stop().await;
}

/// Every field of every request type, at and past its bounds: a wrong value is 422 (400 in a
/// query string, as every query error) with the field named in the JSON error, and the
/// bound itself is accepted.
async fn every_request_field_is_validated_and_named(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("US-CA");
    let token = server.register(&node).await;
    let set = |mut body: Value, field: &str, value: Value| {
        let mut target = &mut body;
        let parts: Vec<&str> = field.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            target = &mut target[*part];
        }
        target[parts[parts.len() - 1]] = value;
        body
    };
    let register = |field: &str, value: Value| set(Node::new("US-CA").registration(), field, value);
    let beat = |field: &str, value: Value| {
        set(
            json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 1}}),
            field,
            value,
        )
    };
    let route = |field: &str, value: Value| {
        set(
            json!({
                "clientId": node.id,
                "requirements": {},
                "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "FullCone"}
            }),
            field,
            value,
        )
    };
    let long = |n: usize| json!("a".repeat(n));
    let heartbeat = format!("/api/v1/nodes/{}/heartbeat", node.id);
    let routing = "/api/v1/routing/request";
    let registering = "/api/v1/nodes/register";

    // (path, token, body, status, code, field): one row per rule.
    let refused: Vec<(&str, bool, Value, u16, &str, &str)> = vec![
        (
            registering,
            false,
            register("heartbeatInterval", json!(0)),
            422,
            "invalid_heartbeat_interval",
            "heartbeatInterval",
        ),
        (
            registering,
            false,
            register("heartbeatInterval", json!(86_401)),
            422,
            "invalid_heartbeat_interval",
            "heartbeatInterval",
        ),
        (
            registering,
            false,
            register("capabilities.maxConnections", json!(1_000_001)),
            422,
            "invalid_capabilities",
            "capabilities.maxConnections",
        ),
        (
            registering,
            false,
            register("capabilities.bandwidth.down", json!(-1)),
            422,
            "invalid_metrics",
            "capabilities.bandwidth.down",
        ),
        (
            registering,
            false,
            register("networkInfo.localPort", json!(0)),
            422,
            "invalid_network_info",
            "networkInfo.localPort",
        ),
        (
            registering,
            false,
            register("networkInfo.stunMappedAddress", json!("203.0.113.1:0")),
            422,
            "invalid_network_info",
            "networkInfo.stunMappedAddress",
        ),
        (
            registering,
            false,
            register("networkInfo.stunMappedAddress", json!("0.0.0.0:5")),
            422,
            "invalid_network_info",
            "networkInfo.stunMappedAddress",
        ),
        (
            registering,
            false,
            register("networkInfo.stunMappedAddress", json!("224.0.0.1:5")),
            422,
            "invalid_network_info",
            "networkInfo.stunMappedAddress",
        ),
        (
            registering,
            false,
            register("location.country", json!("U1")),
            422,
            "invalid_location",
            "location.country",
        ),
        (
            registering,
            false,
            register("location.region", long(65)),
            422,
            "invalid_location",
            "location.region",
        ),
        (
            registering,
            false,
            register("location.region", json!("US\tCA")),
            422,
            "invalid_location",
            "location.region",
        ),
        (
            registering,
            false,
            register("location.coordinates", json!([90.5, 0])),
            422,
            "invalid_location",
            "location.coordinates",
        ),
        (
            registering,
            false,
            register("location.coordinates", json!([0, -180.5])),
            422,
            "invalid_location",
            "location.coordinates",
        ),
        (
            registering,
            false,
            register("metrics.latency", json!(-1)),
            422,
            "invalid_metrics",
            "metrics.latency",
        ),
        (
            registering,
            false,
            register("metrics.cpuUsage", json!(100.5)),
            422,
            "invalid_metrics",
            "metrics.cpuUsage",
        ),
        (
            registering,
            false,
            register("metrics.jitter", json!(3_600_001)),
            422,
            "invalid_metrics",
            "metrics.jitter",
        ),
        (
            registering,
            false,
            register("metrics.packetLoss", json!(-0.1)),
            422,
            "invalid_metrics",
            "metrics.packetLoss",
        ),
        (
            registering,
            false,
            register("metrics.memoryUsage", json!(101)),
            422,
            "invalid_metrics",
            "metrics.memoryUsage",
        ),
        (
            registering,
            false,
            register("metrics.activeConnections", json!(1_000_001)),
            422,
            "invalid_metrics",
            "metrics.activeConnections",
        ),
        (
            registering,
            false,
            register("metrics.bandwidth", json!({"up": 1, "down": 1e10})),
            422,
            "invalid_metrics",
            "metrics.bandwidth.down",
        ),
        (
            registering,
            false,
            register("metrics.activeConnections", json!(-1)),
            422,
            "invalid_body",
            "metrics.activeConnections",
        ),
        (
            &heartbeat,
            true,
            beat("metrics.latency", json!(3_600_001)),
            422,
            "invalid_metrics",
            "metrics.latency",
        ),
        (
            &heartbeat,
            true,
            beat("metrics.activeConnections", json!(2_000_000)),
            422,
            "invalid_metrics",
            "metrics.activeConnections",
        ),
        (
            &heartbeat,
            true,
            beat("metrics.jitter", json!(1e308)),
            422,
            "invalid_metrics",
            "metrics.jitter",
        ),
        (
            &heartbeat,
            true,
            beat("metrics.bandwidth", json!({"up": -1, "down": 1})),
            422,
            "invalid_metrics",
            "metrics.bandwidth.up",
        ),
        (
            routing,
            true,
            route("requirements.maxLatency", json!(9.2e18)),
            422,
            "invalid_requirements",
            "requirements.maxLatency",
        ),
        (
            routing,
            true,
            route("requirements.maxLatency", json!(-1)),
            422,
            "invalid_requirements",
            "requirements.maxLatency",
        ),
        (
            routing,
            true,
            route("requirements.minBandwidth", json!(-5)),
            422,
            "invalid_requirements",
            "requirements.minBandwidth",
        ),
        (
            routing,
            true,
            route("requirements.minBandwidth", json!(1e10)),
            422,
            "invalid_requirements",
            "requirements.minBandwidth",
        ),
        (
            routing,
            true,
            route("requirements.preferredLocation", long(15_000)),
            422,
            "invalid_requirements",
            "requirements.preferredLocation",
        ),
        (
            routing,
            true,
            route("requirements.preferredLocation", json!("US\u{7}CA")),
            422,
            "invalid_requirements",
            "requirements.preferredLocation",
        ),
        (
            routing,
            true,
            route("requirements.preferredCountry", json!("USA")),
            422,
            "invalid_requirements",
            "requirements.preferredCountry",
        ),
        (
            routing,
            true,
            route("requirements.preferredCountry", json!("\n\n")),
            422,
            "invalid_requirements",
            "requirements.preferredCountry",
        ),
        (
            routing,
            true,
            route(
                "clientNetworkInfo.stunMappedAddress",
                json!("203.0.113.1:0"),
            ),
            422,
            "invalid_client_network_info",
            "clientNetworkInfo.stunMappedAddress",
        ),
    ];
    for (path, auth, body, want_status, want_code, want_field) in refused {
        let token = auth.then_some(token.as_str());
        let (status, answer) = server.post(path, token, &body).await;
        let what = format!("{path} {want_field}: {status} {answer}");
        assert_eq!(status, want_status, "{what}");
        assert_eq!(answer["error"]["code"], want_code, "{what}");
        assert_eq!(answer["error"]["field"], want_field, "{what}");
    }
    for (query, field) in [
        ("region=".to_owned() + &"a".repeat(65), "region"),
        ("region=US%07CA".to_owned(), "region"),
        ("country=USA".to_owned(), "country"),
        ("status=zombie".to_owned(), "status"),
        ("limit=0".to_owned(), "limit"),
        ("limit=1001".to_owned(), "limit"),
        ("offset=-1".to_owned(), "offset"),
    ] {
        let (status, answer) = server
            .get(&format!("/api/v1/nodes?{query}"), Some(&token))
            .await;
        assert_eq!(
            (
                status,
                answer["error"]["code"].as_str(),
                answer["error"]["field"].as_str()
            ),
            (400, Some("invalid_query"), Some(field)),
            "{query}: {answer}"
        );
    }

    // The bounds themselves are accepted.
    let mut edge = server.registration(&Node::new("US-CA")).await;
    for (field, value) in [
        ("heartbeatInterval", json!(86_400)),
        ("capabilities.maxConnections", json!(1_000_000)),
        ("location.region", long(64)),
        ("location.coordinates", json!([-90, 180])),
        ("metrics.activeConnections", json!(1_000_000)),
        ("metrics.latency", json!(3_600_000)),
    ] {
        edge = set(edge, field, value);
    }
    let (status, answer) = server.post(registering, None, &edge).await;
    assert_eq!(status, 201, "{answer}");
    let mut edge = route("requirements.maxLatency", json!(3_600_000));
    for (field, value) in [
        ("requirements.minBandwidth", json!(0)),
        ("requirements.preferredLocation", long(64)),
        ("requirements.preferredCountry", json!("us")),
    ] {
        edge = set(edge, field, value);
    }
    let (status, answer) = server.post(routing, Some(&token), &edge).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server
        .get(
            &format!("/api/v1/nodes?country=us&region={}", "a".repeat(64)),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    server.stop().await;
}
