//! Proof of possession of the WireGuard key at registration (issue 15 §4): the challenge
//! endpoint, and each way a proof is refused, with its status, code and field; on SQLite
//! (challenges in the SQL store) and on PostgreSQL + Redis (challenges in Redis), and across
//! hosts that share them.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::Duration;

use boson_control::clock::Clock as _;
use boson_control::domain::key_proof::{MAX_OUTSTANDING, NONCE_TTL};
use common::{Backend, Challenge, Node, Options, TestServer};
use serde_json::{Value, json};

on_both_backends!(
    the_challenge_publishes_the_deployment_key_and_is_rate_limited,
    the_holder_of_the_key_registers_and_nobody_else,
    replayed_expired_and_unknown_nonces_are_refused,
    a_time_outside_the_window_is_refused,
    malformed_or_missing_proofs_name_their_field,
    outstanding_challenges_are_bounded,
);

const REGISTER: &str = "/api/v1/nodes/register";

/// Status, error code and field of an answer.
fn verdict(answer: &(u16, Value)) -> (u16, Option<&str>, Option<&str>) {
    let (status, body) = answer;
    (
        *status,
        body["error"]["code"].as_str(),
        body["error"]["field"].as_str(),
    )
}

/// How many nodes the server holds.
async fn node_count(server: &TestServer, token: &str) -> u64 {
    let (status, body) = server.get("/api/v1/nodes", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

async fn the_challenge_publishes_the_deployment_key_and_is_rate_limited(backend: Backend) {
    let options = Options {
        register_rate_limit: 3,
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let (status, body) = server
        .send(reqwest::Method::POST, "/api/v1/nodes/challenge", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["serverPublicKey"],
        server.state.key_proof.public().to_base64()
    );
    assert_eq!(body["expiresIn"], NONCE_TTL.as_secs());
    assert_eq!(
        body["expiresAt"],
        server.clock.now().saturating_add(NONCE_TTL).0
    );
    let first: Challenge = serde_json::from_value(body).unwrap();
    let second = server.challenge().await;
    assert_ne!(first.nonce, second.nonce, "every challenge is fresh");
    assert_eq!(first.server_public_key, second.server_public_key);
    server.challenge().await;
    // The fourth in the minute: the registration limit, counted on its own.
    let (status, body) = server
        .send(reqwest::Method::POST, "/api/v1/nodes/challenge", None, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Registrations have their own count: the three challenges answered register.
    let node = Node::new("US-CA");
    let (status, body) = server
        .post(
            REGISTER,
            None,
            &node.registration_answering(&first, server.clock_secs()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}

async fn the_holder_of_the_key_registers_and_nobody_else(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let witness = server.register(&Node::new("US-CA")).await;
    let node = Node::new("US-CA");
    let now = server.clock_secs();

    // Someone who knows the node's id and public key, but not its private key.
    let impostor = Node::new("US-CA");
    let forged = {
        let mut body = impostor.registration_answering(&server.challenge().await, now);
        body["nodeId"] = json!(node.id);
        body["publicKey"] = json!(node.key);
        body
    };
    assert_eq!(
        verdict(&server.post(REGISTER, None, &forged).await),
        (403, Some("key_proof_mismatch"), Some("keyProof.proof")),
        "a proof made with another private key"
    );

    // A proof the key holder made for another node id does not register this one.
    let other_id = Node {
        id: uuid::Uuid::new_v4(),
        ..node.clone()
    };
    let mut moved = other_id.registration_answering(&server.challenge().await, now);
    moved["nodeId"] = json!(node.id);
    assert_eq!(
        verdict(&server.post(REGISTER, None, &moved).await),
        (403, Some("key_proof_mismatch"), Some("keyProof.proof")),
        "a proof made for another node id"
    );

    // The proof binds its time: the same proof under another time does not verify.
    let mut retimed = node.registration_answering(&server.challenge().await, now);
    retimed["keyProof"]["time"] = json!(now - 1);
    assert_eq!(
        verdict(&server.post(REGISTER, None, &retimed).await),
        (403, Some("key_proof_mismatch"), Some("keyProof.proof")),
        "a proof moved to another time"
    );

    // A proof made against another server key (another deployment's challenge).
    let foreign = Challenge {
        server_public_key: Node::new("US-CA").key,
        ..server.challenge().await
    };
    assert_eq!(
        verdict(
            &server
                .post(REGISTER, None, &node.registration_answering(&foreign, now))
                .await
        ),
        (403, Some("key_proof_mismatch"), Some("keyProof.proof")),
        "a proof against another server key"
    );

    // A public key of small order: nobody can prove it.
    let mut small = node.registration_answering(&server.challenge().await, now);
    small["publicKey"] = json!(common::base64_encode(&[0u8; 32]));
    assert_eq!(
        verdict(&server.post(REGISTER, None, &small).await),
        (422, Some("invalid_public_key"), Some("publicKey"))
    );

    assert_eq!(node_count(&server, &witness).await, 1, "nothing registered");
    // The holder of the key registers.
    let (status, body) = server
        .post(REGISTER, None, &server.registration(&node).await)
        .await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}

async fn replayed_expired_and_unknown_nonces_are_refused(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("DE-BE");
    let body = server.registration(&node).await;
    let (status, answer) = server.post(REGISTER, None, &body).await;
    assert_eq!(status, 201, "{answer}");
    let token = answer["sessionToken"].as_str().unwrap().to_owned();

    // Replayed, even with the node's own token.
    for token in [None, Some(token.as_str())] {
        assert_eq!(
            verdict(&server.post(REGISTER, token, &body).await),
            (403, Some("nonce_unknown"), Some("keyProof.nonce")),
            "replayed with token {token:?}"
        );
    }

    // A nonce this deployment never handed out.
    assert_eq!(
        verdict(
            &server
                .post(REGISTER, None, &Node::new("DE-BE").registration())
                .await
        ),
        (403, Some("nonce_unknown"), Some("keyProof.nonce"))
    );

    // A refused answer spends its nonce: one guess per challenge.
    let late = Node::new("DE-BE");
    let challenge = server.challenge().await;
    let mut wrong = late.registration_answering(&challenge, server.clock_secs());
    wrong["keyProof"]["proof"] = json!("A".repeat(43));
    assert_eq!(
        verdict(&server.post(REGISTER, None, &wrong).await),
        (403, Some("key_proof_mismatch"), Some("keyProof.proof"))
    );
    assert_eq!(
        verdict(
            &server
                .post(
                    REGISTER,
                    None,
                    &late.registration_answering(&challenge, server.clock_secs())
                )
                .await
        ),
        (403, Some("nonce_unknown"), Some("keyProof.nonce")),
        "the nonce was spent by the wrong guess"
    );

    // Answered after it expired (the proof's time is the node's and still fine).
    let challenge = server.challenge().await;
    server.clock.advance(NONCE_TTL);
    let expired = late.registration_answering(&challenge, server.clock_secs());
    assert_eq!(
        verdict(&server.post(REGISTER, None, &expired).await),
        (403, Some("nonce_expired"), Some("keyProof.nonce"))
    );
    // Just in time is in time.
    let challenge = server.challenge().await;
    server
        .clock
        .advance(NONCE_TTL.saturating_sub(Duration::from_millis(1)));
    let (status, answer) = server
        .post(
            REGISTER,
            None,
            &late.registration_answering(&challenge, server.clock_secs()),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(node_count(&server, &token).await, 2);
    server.stop().await;
}

async fn a_time_outside_the_window_is_refused(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("JP-13");
    let now = server.clock_secs();
    for (time, what) in [
        (now - 301, "five minutes and a second behind"),
        (now + 301, "five minutes and a second ahead"),
        (0, "the epoch"),
    ] {
        let body = node.registration_answering(&server.challenge().await, time);
        assert_eq!(
            verdict(&server.post(REGISTER, None, &body).await),
            (403, Some("key_proof_stale"), Some("keyProof.time")),
            "{what}"
        );
    }
    for time in [now - 300, now + 300] {
        let fresh = Node::new("JP-13");
        let body = fresh.registration_answering(&server.challenge().await, time);
        let (status, answer) = server.post(REGISTER, None, &body).await;
        assert_eq!(status, 201, "{time}: {answer}");
    }
    server.stop().await;
}

async fn malformed_or_missing_proofs_name_their_field(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = Node::new("FR-IDF");
    let good = server.registration(&node).await;
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body["keyProof"][field] = value;
        body
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("keyProof");
    let mut extra = good.clone();
    extra["keyProof"]["mac"] = json!("x");
    let cases = [
        (missing, 422, "invalid_key_proof", "keyProof"),
        (
            with("nonce", json!("short")),
            422,
            "invalid_key_proof",
            "keyProof.nonce",
        ),
        (
            with("nonce", json!(format!("{}+", "A".repeat(31)))),
            422,
            "invalid_key_proof",
            "keyProof.nonce",
        ),
        (
            with("proof", json!("A".repeat(44))),
            422,
            "invalid_key_proof",
            "keyProof.proof",
        ),
        (
            with("proof", json!(format!("{}=", "A".repeat(42)))),
            422,
            "invalid_key_proof",
            "keyProof.proof",
        ),
        (
            with("time", json!(-1)),
            422,
            "invalid_body",
            "keyProof.time",
        ),
        (
            with("time", json!("now")),
            422,
            "invalid_body",
            "keyProof.time",
        ),
        (
            with("nonce", json!(null)),
            422,
            "invalid_body",
            "keyProof.nonce",
        ),
    ];
    for (body, status, code, field) in &cases {
        assert_eq!(
            verdict(&server.post(REGISTER, None, body).await),
            (*status, Some(*code), Some(*field)),
            "{body}"
        );
    }
    let answer = server.post(REGISTER, None, &extra).await;
    assert_eq!(
        (answer.0, answer.1["error"]["code"].as_str()),
        (422, Some("invalid_body")),
        "{}",
        answer.1
    );
    // None of them spent the challenge: validation comes first.
    let (status, answer) = server.post(REGISTER, None, &good).await;
    assert_eq!(status, 201, "{answer}");
    server.stop().await;
}

/// The deployment keeps at most [`MAX_OUTSTANDING`] unanswered challenges; the bound is
/// checked where it is kept (Redis, or the SQL store), with a small bound.
async fn outstanding_challenges_are_bounded(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    const {
        assert!(
            MAX_OUTSTANDING >= 10_000,
            "room for real registration bursts"
        )
    };
    let now = server.clock.now();
    let expires = now.saturating_add(NONCE_TTL);
    let forget = now.saturating_sub(NONCE_TTL);
    let issue = |nonce: String, max: u64| {
        let state = server.state.clone();
        async move {
            match state
                .cache
                .issue_nonce(&nonce, expires, forget, max)
                .await
                .unwrap()
            {
                Some(issued) => issued,
                None => state
                    .store
                    .issue_nonce(&nonce, expires, forget, max)
                    .await
                    .unwrap(),
            }
        }
    };
    for i in 0..3 {
        assert!(issue(format!("n{i}"), 3).await, "{i}");
    }
    assert!(!issue("n3".to_owned(), 3).await, "the fourth is refused");
    // Answering one makes room.
    let taken = match server.state.cache.take_nonce("n0").await.unwrap() {
        Some(expiry) => expiry,
        None => server.state.store.take_nonce("n0").await.unwrap(),
    };
    assert_eq!(taken, Some(expires));
    assert!(issue("n3".to_owned(), 3).await);
    // Expired ones are forgotten one lifetime after they expire.
    let later = now.saturating_add(NONCE_TTL * 2 + Duration::from_millis(1));
    let state = server.state.clone();
    let fresh = match state
        .cache
        .issue_nonce(
            "n4",
            later.saturating_add(NONCE_TTL),
            later.saturating_sub(NONCE_TTL),
            3,
        )
        .await
        .unwrap()
    {
        Some(issued) => issued,
        None => state
            .store
            .issue_nonce(
                "n4",
                later.saturating_add(NONCE_TTL),
                later.saturating_sub(NONCE_TTL),
                3,
            )
            .await
            .unwrap(),
    };
    assert!(fresh, "the expired ones made room");
    server.stop().await;
}

/// A challenge one host hands out is answered once on another host sharing the store (and
/// Redis), and refused there and everywhere afterwards; every host publishes one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_from_one_host_is_accepted_once_by_another() {
    for with_redis in [true, false] {
        let options = Options {
            cluster_without_redis: !with_redis,
            ..Options::default()
        };
        let Some(hosts) = TestServer::start_cluster(2, options).await else {
            return;
        };
        let (one, two) = (&hosts[0], &hosts[1]);
        assert_eq!(
            one.state.key_proof, two.state.key_proof,
            "one deployment key"
        );
        let node = Node::new("US-CA");
        let body = one.registration(&node).await;
        let (status, answer) = two.post(REGISTER, None, &body).await;
        assert_eq!(status, 201, "redis {with_redis}: {answer}");
        for host in [one, two] {
            assert_eq!(
                verdict(&host.post(REGISTER, None, &body).await),
                (403, Some("nonce_unknown"), Some("keyProof.nonce")),
                "redis {with_redis}: the replay on {}",
                host.base
            );
        }
        for host in hosts {
            host.stop().await;
        }
    }
}
