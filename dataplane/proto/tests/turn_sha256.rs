//! SHA-256 long-term credentials (RFC 8489 §9.2, §14.6, §14.11, §14.12) against the TURN
//! server: the 401's nonce cookie and PASSWORD-ALGORITHMS, a client that picks SHA-256 and signs
//! with MESSAGE-INTEGRITY-SHA256, and the RFC's 400 for every inconsistent choice.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

mod common;

use boson_dataplane_proto::stun::{
    AttrType, Class, Method, PasswordAlgorithm, PasswordAlgorithmAttr, password,
};
use boson_dataplane_proto::turn::attr::{RequestedTransport, XorPeerAddress};
use boson_dataplane_proto::{ClientAction, ClientAddr};
use common::{Client, Harness, Response, secret_a};

fn harness() -> Harness {
    Harness::with_config(common::config().with_password_algorithms(true))
}

fn sha_client(addr: &str) -> Client {
    let mut client = Client::new(addr, &secret_a(), "alice");
    client.sha256 = true;
    client
}

/// Gets a 401 so the client holds a nonce and the algorithm list.
fn challenge(h: &mut Harness, client: &mut Client) {
    let tid = client.next_tid();
    let bytes = client.encode(Method::ALLOCATE, Class::Request, tid, false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, response) = h.input(client.addr, &bytes);
    assert_eq!(Response(response.clone()).code(), Some(401));
    client.learn(&response);
    let nonce = client.nonce.as_deref().unwrap();
    assert!(
        nonce.starts_with(password::NONCE_COOKIE_PASSWORD_ALGORITHMS),
        "{nonce}"
    );
    assert_eq!(
        client.algorithms.as_deref(),
        Some(password::SERVER_PASSWORD_ALGORITHMS.as_bytes())
    );
}

#[test]
fn sha256_client_allocates_refreshes_and_relays() {
    let mut h = harness();
    let mut alice = sha_client("192.0.2.10:40000");
    // `request` checks every authenticated response with the SHA-256 key and that it carries
    // MESSAGE-INTEGRITY-SHA256.
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert!(response.is_success(), "{:?}", response.code());
    assert!(
        response
            .message()
            .attribute(AttrType::MESSAGE_INTEGRITY)
            .is_none()
    );
    let peer = "198.51.100.7:9000".parse().unwrap();
    let response = h.request(&mut alice, Method::CREATE_PERMISSION, |enc| {
        enc.add(&XorPeerAddress(peer)).unwrap();
    });
    assert!(response.is_success());
    let response = h.request(&mut alice, Method::REFRESH, |_| {});
    assert!(response.is_success());
    assert_eq!(h.server.allocation_count(), 1);

    // The MD5 key of the same credential does not verify a SHA-256 response.
    let mut md5 = alice.clone();
    md5.sha256 = false;
    let tid = alice.next_tid();
    let bytes = alice.encode(Method::REFRESH, Class::Request, tid, true, |_| {});
    let (_, response) = h.input(alice.addr, &bytes);
    let response = Response(response);
    let m = response.message();
    assert!(m.verify_integrity(alice.key().as_integrity_key()).is_ok());
    assert!(m.verify_integrity(md5.key().as_integrity_key()).is_err());
}

#[test]
fn md5_clients_that_ignore_the_cookie_still_work() {
    let mut h = harness();
    let mut bob = Client::new("192.0.2.11:40000", &secret_a(), "bob");
    let response = h.request(&mut bob, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert!(response.is_success());
    assert!(!response.message().has_integrity_sha256());
}

#[test]
fn inconsistent_algorithm_choices_get_400() {
    let mut h = harness();
    let mut alice = sha_client("192.0.2.10:40000");
    challenge(&mut h, &mut alice);
    let list = alice.algorithms.clone().unwrap();
    type Case = (&'static str, Option<Vec<u8>>, Option<u16>);
    let cases: [Case; 4] = [
        ("PASSWORD-ALGORITHM without the list", None, Some(2)),
        (
            "the list without PASSWORD-ALGORITHM",
            Some(list.clone()),
            None,
        ),
        (
            "a list other than the one sent (reordered)",
            Some([&list[4..], &list[..4]].concat()),
            Some(2),
        ),
        ("a choice not on the list", Some(list.clone()), Some(3)),
    ];
    for (name, algorithms, choice) in cases {
        let mut client = alice.clone();
        client.sha256 = false; // builds the attributes itself below
        let tid = client.next_tid();
        let key = alice.key();
        let bytes = {
            let mut buf = vec![0u8; 512];
            let mut enc = boson_dataplane_proto::stun::Encoder::new(
                &mut buf,
                boson_dataplane_proto::stun::MessageType::new(Method::ALLOCATE, Class::Request),
                tid,
            )
            .unwrap();
            enc.add(&RequestedTransport::UDP).unwrap();
            enc.add(&boson_dataplane_proto::stun::Username::new(&client.username).unwrap())
                .unwrap();
            enc.add(&boson_dataplane_proto::stun::Realm::new(&client.realm).unwrap())
                .unwrap();
            enc.add(
                &boson_dataplane_proto::stun::Nonce::new(client.nonce.as_deref().unwrap()).unwrap(),
            )
            .unwrap();
            if let Some(list) = &algorithms {
                enc.add_raw(AttrType::PASSWORD_ALGORITHMS, list).unwrap();
            }
            if let Some(choice) = choice {
                enc.add(&PasswordAlgorithmAttr(PasswordAlgorithm::new(choice)))
                    .unwrap();
            }
            let len = enc
                .finish(
                    boson_dataplane_proto::stun::Trailer::new()
                        .with_integrity_sha256(key.as_integrity_key()),
                )
                .unwrap();
            buf.truncate(len);
            buf
        };
        let (action, response) = h.input(client.addr, &bytes);
        assert!(matches!(action, ClientAction::Reply { .. }), "{name}");
        assert_eq!(Response(response).code(), Some(400), "{name}");
    }
    assert_eq!(h.server.allocation_count(), 0);
    // The consistent request from the same client succeeds.
    let response = h.request(&mut alice, Method::ALLOCATE, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    assert!(response.is_success());
}

#[test]
fn key_algorithm_must_match_the_named_one() {
    let mut h = harness();
    let mut alice = sha_client("192.0.2.10:40000");
    challenge(&mut h, &mut alice);
    // Names SHA-256 but derives the key with MD5: the MAC does not check, 401.
    let mut liar = alice.clone();
    liar.sha256 = false;
    let md5_key = liar.key();
    let tid = alice.next_tid();
    let mut bytes = alice.encode(Method::ALLOCATE, Class::Request, tid, false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&boson_dataplane_proto::stun::Username::new(&alice.username).unwrap())
            .unwrap();
        enc.add(&boson_dataplane_proto::stun::Realm::new(&alice.realm).unwrap())
            .unwrap();
        enc.add(&boson_dataplane_proto::stun::Nonce::new(alice.nonce.as_deref().unwrap()).unwrap())
            .unwrap();
        enc.add_raw(
            AttrType::PASSWORD_ALGORITHMS,
            alice.algorithms.as_deref().unwrap(),
        )
        .unwrap();
        enc.add(&PasswordAlgorithmAttr(PasswordAlgorithm::SHA256))
            .unwrap();
    });
    // Sign with MESSAGE-INTEGRITY-SHA256 under the MD5 key.
    sign_sha256(&mut bytes, md5_key.as_bytes());
    let (_, response) = h.input(alice.addr, &bytes);
    assert_eq!(Response(response).code(), Some(401));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn a_nonce_stripped_of_its_cookie_is_stale() {
    let mut h = harness();
    let mut alice = sha_client("192.0.2.10:40000");
    challenge(&mut h, &mut alice);
    // A downgrading middlebox removes the cookie: the server never minted that nonce.
    let nonce = alice.nonce.clone().unwrap();
    let mut stripped = alice.clone();
    stripped.sha256 = false;
    stripped.nonce = Some(nonce[password::NONCE_COOKIE_LEN..].to_owned());
    let tid = stripped.next_tid();
    let bytes = stripped.encode(Method::ALLOCATE, Class::Request, tid, true, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, response) = h.input(ClientAddr::new(alice.addr.get()), &bytes);
    assert_eq!(Response(response).code(), Some(438));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn without_the_offer_sha256_integrity_over_the_md5_key_works() {
    // The default configuration: no cookie, no PASSWORD-ALGORITHMS in the 401 (the
    // amplification bound stays as it was), yet a client that signs with
    // MESSAGE-INTEGRITY-SHA256 over the MD5 key is served, and answered in kind.
    let mut h = Harness::new();
    let mut carol = Client::new("192.0.2.12:40000", &secret_a(), "carol");
    let tid = carol.next_tid();
    let bytes = carol.encode(Method::ALLOCATE, Class::Request, tid, false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
    });
    let (_, response) = h.input(carol.addr, &bytes);
    let response = Response(response);
    assert_eq!(response.code(), Some(401));
    let m = response.message();
    assert!(m.attribute(AttrType::PASSWORD_ALGORITHMS).is_none());
    carol.learn(&response.0);
    assert_eq!(carol.nonce.as_deref().map(str::len), Some(24));

    let tid = carol.next_tid();
    let mut bytes = carol.encode(Method::ALLOCATE, Class::Request, tid, false, |enc| {
        enc.add(&RequestedTransport::UDP).unwrap();
        enc.add(&boson_dataplane_proto::stun::Username::new(&carol.username).unwrap())
            .unwrap();
        enc.add(&boson_dataplane_proto::stun::Realm::new(&carol.realm).unwrap())
            .unwrap();
        enc.add(&boson_dataplane_proto::stun::Nonce::new(carol.nonce.as_deref().unwrap()).unwrap())
            .unwrap();
    });
    let key = carol.key();
    sign_sha256(&mut bytes, key.as_bytes());
    let (action, response) = h.input(carol.addr, &bytes);
    assert!(matches!(action, ClientAction::Reply { .. }));
    let response = Response(response);
    assert!(response.is_success(), "{:?}", response.code());
    let m = response.message();
    assert!(m.has_integrity_sha256());
    m.verify_integrity(key.as_integrity_key()).unwrap();
    assert_eq!(h.server.allocation_count(), 1);
}

/// Replaces a message's trailing FINGERPRINT with MESSAGE-INTEGRITY-SHA256 under `key`.
fn sign_sha256(bytes: &mut Vec<u8>, key: &[u8]) {
    use hmac::{Hmac, KeyInit, Mac};
    bytes.truncate(bytes.len() - 8);
    let body = u16::try_from(bytes.len() - 20 + 36).unwrap();
    bytes[2..4].copy_from_slice(&body.to_be_bytes());
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(bytes);
    let mac = mac.finalize().into_bytes();
    bytes.extend_from_slice(&[0x00, 0x1C, 0x00, 0x20]);
    bytes.extend_from_slice(&mac);
}
