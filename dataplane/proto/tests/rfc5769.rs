//! The test vectors of [RFC 5769] ("Test Vectors for STUN"), byte for byte: every vector
//! parses, its MESSAGE-INTEGRITY and FINGERPRINT check under the published credentials, its
//! attributes decode to the published values, and the encoder reproduces it exactly.
//!
//! The RFC pads with spaces (0x20) in 2.1–2.3 where our encoder pads with zeros; padding is
//! covered by the HMAC and CRC, so the re-encoding tests set the padding byte to match.
//!
//! [RFC 5769]: https://www.rfc-editor.org/rfc/rfc5769

use boson_dataplane_proto::stun::{
    AttrType, Class, Encoder, IntegrityError, IntegrityKey, LongTermKey, Message, MessageType,
    Method, Nonce, Realm, Software, Trailer, TransactionId, Username, XorMappedAddress,
};
use boson_dataplane_proto::{BindingConfig, BindingOutcome, ClientAddr, DropReason, StunServer};
use hex_literal::hex;

/// RFC 5769 §2.1 and §2.2/2.3: the short-term password.
const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1, "Sample Request": Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
/// USERNAME, MESSAGE-INTEGRITY (short-term) and FINGERPRINT.
const SAMPLE_REQUEST: [u8; 108] = hex!(
    "00 01 00 58" // Request type and message length
    "21 12 a4 42" // Magic cookie
    "b7 e7 a7 01 bc 34 d6 86 fa 87 df ae" // Transaction ID
    "80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74" // SOFTWARE "STUN test client"
    "00 24 00 04 6e 00 01 ff" // PRIORITY
    "80 29 00 08 93 2f f9 b1 51 26 3b 36" // ICE-CONTROLLED
    "00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20" // USERNAME "evtj:h6vY"
    "00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2" // MESSAGE-INTEGRITY
    "80 28 00 04 e5 7a 3b cf" // FINGERPRINT
);

/// RFC 5769 §2.2, "Sample IPv4 Response": XOR-MAPPED-ADDRESS 192.0.2.1:32853.
const SAMPLE_IPV4_RESPONSE: [u8; 80] = hex!(
    "01 01 00 3c" // Response type and message length
    "21 12 a4 42" // Magic cookie
    "b7 e7 a7 01 bc 34 d6 86 fa 87 df ae" // Transaction ID
    "80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20" // SOFTWARE "test vector"
    "00 20 00 08 00 01 a1 47 e1 12 a6 43" // XOR-MAPPED-ADDRESS
    "00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7" // MESSAGE-INTEGRITY
    "80 28 00 04 c0 7d 4c 96" // FINGERPRINT
);

/// RFC 5769 §2.3, "Sample IPv6 Response": XOR-MAPPED-ADDRESS
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const SAMPLE_IPV6_RESPONSE: [u8; 92] = hex!(
    "01 01 00 48" // Response type and message length
    "21 12 a4 42" // Magic cookie
    "b7 e7 a7 01 bc 34 d6 86 fa 87 df ae" // Transaction ID
    "80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20" // SOFTWARE "test vector"
    "00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9" // XOR-MAPPED-ADDRESS
    "00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41" // MESSAGE-INTEGRITY
    "80 28 00 04 c8 fb 0b 4c" // FINGERPRINT
);

/// RFC 5769 §2.4, "Sample Request with Long-Term Authentication": USERNAME, NONCE, REALM and
/// MESSAGE-INTEGRITY, no FINGERPRINT.
const SAMPLE_LONG_TERM_REQUEST: [u8; 116] = hex!(
    "00 01 00 60" // Request type and message length
    "21 12 a4 42" // Magic cookie
    "78 ad 34 33 c6 ad 72 c0 29 da 41 2e" // Transaction ID
    "00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00" // USERNAME
    "00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41" // NONCE
    "00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00" // REALM "example.org"
    "00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66" // MESSAGE-INTEGRITY
);

/// The §2.4 username, U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9 ("マトリックス").
const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// The §2.4 password "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep.
const LONG_TERM_PASSWORD: &str = "TheMatrIX";
const LONG_TERM_REALM: &str = "example.org";
const LONG_TERM_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";

const SAMPLE_TID: TransactionId = TransactionId::new(hex!("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae"));

#[test]
fn sample_request_parses_and_checks() {
    let m = Message::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.transaction_id(), SAMPLE_TID);
    assert_eq!(
        m.get::<Software<'_>>().unwrap().unwrap().as_str(),
        "STUN test client"
    );
    assert_eq!(
        m.get::<Username<'_>>().unwrap().unwrap().as_str(),
        "evtj:h6vY"
    );
    assert_eq!(
        m.attribute(AttrType::new(0x0024)).unwrap().value(),
        hex!("6e 00 01 ff")
    );
    assert_eq!(m.verify_fingerprint(), Ok(()));
    let auth = m
        .verify_integrity(IntegrityKey::short_term(PASSWORD))
        .unwrap();
    assert_eq!(auth.message().transaction_id(), SAMPLE_TID);
    assert_eq!(
        m.verify_integrity(IntegrityKey::short_term(b"VOkJxbRl1RmTxUk/WvJxBT"))
            .map(|_| ()),
        Err(IntegrityError::Mismatch)
    );
    // PRIORITY is ICE's, comprehension-required, and unknown to plain STUN.
    let unknown: Vec<_> = m
        .unknown_comprehension_required(AttrType::is_stun)
        .collect();
    assert_eq!(unknown, [AttrType::new(0x0024)]);
}

#[test]
fn sample_request_re_encodes_byte_for_byte() {
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, SAMPLE_TID).unwrap();
    enc.set_padding_byte(b' ');
    enc.add(&Software::new("STUN test client").unwrap())
        .unwrap();
    enc.add_raw(AttrType::new(0x0024), &hex!("6e 00 01 ff"))
        .unwrap();
    enc.add_raw(AttrType::new(0x8029), &hex!("93 2f f9 b1 51 26 3b 36"))
        .unwrap();
    enc.add(&Username::new("evtj:h6vY").unwrap()).unwrap();
    let len = enc
        .finish(
            Trailer::new()
                .with_integrity(IntegrityKey::short_term(PASSWORD))
                .with_fingerprint(),
        )
        .unwrap();
    assert_eq!(&buf[..len], &SAMPLE_REQUEST[..]);
}

#[test]
fn sample_responses_parse_check_and_decode() {
    for (vector, mapped) in [
        (&SAMPLE_IPV4_RESPONSE[..], "192.0.2.1:32853"),
        (
            &SAMPLE_IPV6_RESPONSE[..],
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let m = Message::parse(vector).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS, "{mapped}");
        assert_eq!(m.transaction_id(), SAMPLE_TID);
        assert_eq!(m.verify_fingerprint(), Ok(()), "{mapped}");
        assert!(
            m.verify_integrity(IntegrityKey::short_term(PASSWORD))
                .is_ok(),
            "{mapped}"
        );
        assert_eq!(
            m.get::<XorMappedAddress>().unwrap().unwrap().0,
            mapped.parse().unwrap()
        );
        assert_eq!(
            m.get::<Software<'_>>().unwrap().unwrap().as_str(),
            "test vector"
        );
    }
}

#[test]
fn sample_responses_re_encode_byte_for_byte() {
    for (vector, mapped) in [
        (&SAMPLE_IPV4_RESPONSE[..], "192.0.2.1:32853"),
        (
            &SAMPLE_IPV6_RESPONSE[..],
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let mut buf = [0u8; 256];
        let mut enc = Encoder::new(&mut buf, MessageType::BINDING_SUCCESS, SAMPLE_TID).unwrap();
        enc.set_padding_byte(b' ');
        enc.add(&Software::new("test vector").unwrap()).unwrap();
        enc.add(&XorMappedAddress(mapped.parse().unwrap())).unwrap();
        let len = enc
            .finish(
                Trailer::new()
                    .with_integrity(IntegrityKey::short_term(PASSWORD))
                    .with_fingerprint(),
            )
            .unwrap();
        assert_eq!(&buf[..len], vector, "{mapped}");
    }
}

#[test]
fn long_term_request_parses_and_checks() {
    let m = Message::parse(&SAMPLE_LONG_TERM_REQUEST).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(
        m.transaction_id(),
        TransactionId::new(hex!("78 ad 34 33 c6 ad 72 c0 29 da 41 2e"))
    );
    assert_eq!(
        m.get::<Username<'_>>().unwrap().unwrap().as_str(),
        LONG_TERM_USERNAME
    );
    assert_eq!(
        m.get::<Realm<'_>>().unwrap().unwrap().as_str(),
        LONG_TERM_REALM
    );
    assert_eq!(
        m.get::<Nonce<'_>>().unwrap().unwrap().as_str(),
        LONG_TERM_NONCE
    );
    assert!(!m.has_fingerprint());

    let key = LongTermKey::derive(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(
        key.as_bytes(),
        &hex!("e8 ca 7a d5 9d 5e b0 51 8e 31 29 11 d2 da b2 a9")
    );
    assert!(m.verify_integrity(key.as_integrity_key()).is_ok());
    // Without SASLprep the key differs ("TheMatrix" is not "TheMatrIX").
    let wrong = LongTermKey::derive(LONG_TERM_USERNAME, LONG_TERM_REALM, "TheMatrix");
    assert_eq!(
        m.verify_integrity(wrong.as_integrity_key()).map(|_| ()),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn long_term_request_re_encodes_byte_for_byte() {
    let key = LongTermKey::derive(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId::new(hex!("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")),
    )
    .unwrap();
    enc.add(&Username::new(LONG_TERM_USERNAME).unwrap())
        .unwrap();
    enc.add(&Nonce::new(LONG_TERM_NONCE).unwrap()).unwrap();
    enc.add(&Realm::new(LONG_TERM_REALM).unwrap()).unwrap();
    let len = enc
        .finish(Trailer::new().with_integrity(key.as_integrity_key()))
        .unwrap();
    assert_eq!(&buf[..len], &SAMPLE_LONG_TERM_REQUEST[..]);
}

#[test]
fn every_vector_loses_its_checks_when_a_byte_flips() {
    let short_term = IntegrityKey::short_term(PASSWORD);
    for vector in [
        &SAMPLE_REQUEST[..],
        &SAMPLE_IPV4_RESPONSE[..],
        &SAMPLE_IPV6_RESPONSE[..],
    ] {
        let mut bytes = vector.to_vec();
        bytes[9] ^= 0x01; // transaction id
        let m = Message::parse(&bytes).unwrap();
        assert!(m.verify_fingerprint().is_err());
        assert_eq!(
            m.verify_integrity(short_term).map(|_| ()),
            Err(IntegrityError::Mismatch)
        );
    }
}

#[test]
fn binding_server_answers_the_sample_request() {
    let src = ClientAddr::new("192.0.2.1:32853".parse().unwrap());
    let mut out = [0u8; 576];

    // A plain STUN server does not know ICE's PRIORITY: 420.
    let mut server = StunServer::new(BindingConfig::default());
    let BindingOutcome::Reply { dst, len } = server.handle_datagram(src, &SAMPLE_REQUEST, &mut out)
    else {
        panic!("expected a reply");
    };
    assert_eq!(dst, src);
    let m = Message::parse(&out[..len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
    assert_eq!(m.transaction_id(), SAMPLE_TID);
    assert_eq!(m.verify_fingerprint(), Ok(()));

    // One that treats ICE attributes as known answers with the mapped address.
    let mut server = StunServer::new(
        BindingConfig::new().with_known_attributes(|t| t.is_stun() || t.as_u16() == 0x0024),
    );
    let BindingOutcome::Reply { len, .. } = server.handle_datagram(src, &SAMPLE_REQUEST, &mut out)
    else {
        panic!("expected a reply");
    };
    let m = Message::parse(&out[..len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(m.transaction_id(), SAMPLE_TID);
    assert_eq!(m.get::<XorMappedAddress>().unwrap().unwrap().0, src.get());
    assert_eq!(m.verify_fingerprint(), Ok(()));

    // A corrupted copy is dropped for its fingerprint.
    let mut corrupted = SAMPLE_REQUEST;
    corrupted[30] ^= 0x01;
    assert_eq!(
        server.handle_datagram(src, &corrupted, &mut out),
        BindingOutcome::Drop(DropReason::BadFingerprint)
    );
    assert_eq!(server.stats().drops.get(DropReason::BadFingerprint), 1);

    // Responses are not requests.
    assert_eq!(
        server.handle_datagram(src, &SAMPLE_IPV4_RESPONSE, &mut out),
        BindingOutcome::Drop(DropReason::UnexpectedResponse)
    );
}
