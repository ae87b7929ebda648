//! RFC 8489 Appendix B.1: a request with long-term credentials, SHA-256 password algorithm,
//! USERHASH and MESSAGE-INTEGRITY-SHA256, byte for byte.
//!
//! The RFC's printed message does not check (its length field, 0x9c, and its MAC disagree with
//! the bytes it prints); this is the message as corrected by the verified erratum: USERHASH, NONCE, REALM, PASSWORD-ALGORITHM (SHA-256) and
//! MESSAGE-INTEGRITY-SHA256 under `SHA-256("マトリックス:example.org:TheMatrIX")`.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use boson_dataplane_proto::stun::password::userhash;
use boson_dataplane_proto::stun::{
    AttrType, Encoder, IntegrityError, LongTermKey, Message, MessageType, Nonce, PasswordAlgorithm,
    PasswordAlgorithmAttr, Realm, Trailer, TransactionId,
};
use hex_literal::hex;

const USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// "The\u{00AD}M\u{00AA}tr\u{2168}" after OpaqueString.
const PASSWORD: &str = "TheMatrIX";
const REALM: &str = "example.org";
const NONCE: &str = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";
const TID: [u8; 12] = hex!("78ad3433 c6ad72c0 29da412e");

const B1: [u8; 164] = hex!(
    "00010090 2112a442 78ad3433 c6ad72c0 29da412e"
    "001e0020 4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704"
    "00150029 6f624d61 744a6f73 32414141 43662f2f 3439396b 39353464 364f4c33 346f4c39"
    "46535476 79363473 41000000"
    "0014000b 6578616d 706c652e 6f726700"
    "001d0004 00020000"
    "001c0020 b5c7bf00 5b6c52a2 1c51c5e8 92f81924 136296cb 927c4314 9309278c c6518e65"
);

fn key() -> LongTermKey {
    LongTermKey::derive_with(PasswordAlgorithm::SHA256, USERNAME, REALM, PASSWORD).unwrap()
}

#[test]
fn b1_verifies() {
    let m = Message::parse(&B1).unwrap();
    assert!(m.has_integrity_sha256());
    m.verify_integrity(key().as_integrity_key()).unwrap();
    assert_eq!(
        m.get::<PasswordAlgorithmAttr>().unwrap(),
        Some(PasswordAlgorithmAttr(PasswordAlgorithm::SHA256))
    );
    assert_eq!(
        m.attribute(AttrType::USERHASH).unwrap().value(),
        userhash(USERNAME, REALM)
    );
    // The MD5 key of the same credentials does not check: the algorithm is part of the key.
    let md5 = LongTermKey::derive(USERNAME, REALM, PASSWORD);
    assert_eq!(
        m.verify_integrity(md5.as_integrity_key()).map(|_| ()),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn b1_is_reproduced_by_the_encoder() {
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId::new(TID),
    )
    .unwrap();
    enc.add_raw(AttrType::USERHASH, &userhash(USERNAME, REALM))
        .unwrap();
    enc.add(&Nonce::new(NONCE).unwrap()).unwrap();
    enc.add(&Realm::new(REALM).unwrap()).unwrap();
    enc.add(&PasswordAlgorithmAttr(PasswordAlgorithm::SHA256))
        .unwrap();
    let key = key();
    let len = enc
        .finish(Trailer::new().with_integrity_sha256(key.as_integrity_key()))
        .unwrap();
    assert_eq!(&buf[..len], &B1[..]);
}
