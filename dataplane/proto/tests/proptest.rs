//! Property tests of the STUN codec: the parser and the Binding responder never panic on any
//! input, and whatever the encoder writes parses back to the same attributes, with
//! MESSAGE-INTEGRITY and FINGERPRINT that check.

// The generators and checkers below are helpers outside `#[test]` functions, where clippy's
// `allow-unwrap-in-tests` does not reach; a panic in them is a test failure, as intended.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

use std::net::{IpAddr, SocketAddr};

use boson_dataplane_proto::stun::{
    AttrType, Attribute, Class, Encoder, ErrorCode, ErrorCodeAttr, IntegrityKey, MAGIC_COOKIE,
    MappedAddress, Message, MessageType, Method, Nonce, Realm, Software, Trailer, TransactionId,
    UnknownAttributes, Username, XorMappedAddress,
};
use boson_dataplane_proto::{BindingConfig, ClientAddr, StunServer};
use proptest::prelude::*;

/// Exercises every read-only operation of a parsed message.
fn exercise(message: &Message<'_>) {
    for raw in message.attributes() {
        let _ = (raw.attr(), raw.value(), raw.offset());
    }
    let _ = message.get::<Software<'_>>();
    let _ = message.get::<Username<'_>>();
    let _ = message.get::<Realm<'_>>();
    let _ = message.get::<Nonce<'_>>();
    let _ = message.get::<XorMappedAddress>();
    let _ = message.get::<MappedAddress>();
    let _ = message.get::<ErrorCodeAttr<'_>>();
    if let Ok(Some(unknown)) = message.get::<UnknownAttributes<'_>>() {
        let _ = unknown.iter().count();
    }
    let _ = message
        .unknown_comprehension_required(AttrType::is_stun)
        .count();
    let _ = message.verify_integrity(IntegrityKey::short_term(b"key"));
    let _ = message.verify_fingerprint();
    let _ = format!("{message:?}");
}

/// A STUN header with a consistent length followed by arbitrary attribute bytes, to get past
/// the header checks and into the TLV walk.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..0x4000,
        any::<[u8; 12]>(),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut body| {
            body.truncate(body.len() & !3);
            body
        }),
        prop::collection::vec((any::<u16>(), 0u16..40), 0..6),
    )
        .prop_map(|(raw_type, tid, mut body, tlvs)| {
            // Sprinkle plausible TLV headers (including the position-sensitive types) into the
            // random body.
            for (i, (attr, len)) in tlvs.into_iter().enumerate() {
                let attr = match i % 4 {
                    0 => 0x0008,
                    1 => 0x8028,
                    2 => 0x001C,
                    _ => attr,
                };
                body.extend_from_slice(&u16::to_be_bytes(attr));
                body.extend_from_slice(&len.to_be_bytes());
                body.resize(body.len() + usize::from((len + 3) & !3), 0xAB);
            }
            let mut msg = Vec::with_capacity(20 + body.len());
            msg.extend_from_slice(&raw_type.to_be_bytes());
            msg.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
            msg.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            msg.extend_from_slice(&tid);
            msg.extend_from_slice(&body);
            msg
        })
}

/// One attribute the encoder can write, with what it should decode back to.
#[derive(Debug, Clone)]
enum GenAttr {
    Software(String),
    Username(String),
    Realm(String),
    Nonce(String),
    XorMapped(SocketAddr),
    Mapped(SocketAddr),
    Error(u16, String),
    Unknown(Vec<u16>),
    Raw(u16, Vec<u8>),
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn gen_attr() -> impl Strategy<Value = GenAttr> {
    let text = "\\PC{0,40}";
    prop_oneof![
        text.prop_map(GenAttr::Software),
        text.prop_map(GenAttr::Username),
        text.prop_map(GenAttr::Realm),
        text.prop_map(GenAttr::Nonce),
        socket_addr().prop_map(GenAttr::XorMapped),
        socket_addr().prop_map(GenAttr::Mapped),
        (300u16..700, text).prop_map(|(code, reason)| GenAttr::Error(code, reason)),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(GenAttr::Unknown),
        (
            any::<u16>().prop_filter("position-sensitive types are the trailer's", |t| {
                ![0x0008, 0x001C, 0x8028].contains(t)
            }),
            prop::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(attr, value)| GenAttr::Raw(attr, value)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::SuccessResponse),
        Just(Class::ErrorResponse),
    ]
}

fn encode(enc: &mut Encoder<'_>, attr: &GenAttr) {
    let unknown_types: Vec<AttrType>;
    let result = match attr {
        GenAttr::Software(s) => enc.add(&Software::new(s).unwrap()),
        GenAttr::Username(s) => enc.add(&Username::new(s).unwrap()),
        GenAttr::Realm(s) => enc.add(&Realm::new(s).unwrap()),
        GenAttr::Nonce(s) => enc.add(&Nonce::new(s).unwrap()),
        GenAttr::XorMapped(a) => enc.add(&XorMappedAddress(*a)),
        GenAttr::Mapped(a) => enc.add(&MappedAddress(*a)),
        GenAttr::Error(code, reason) => {
            enc.add(&ErrorCodeAttr::new(ErrorCode::new(*code).unwrap(), reason).unwrap())
        }
        GenAttr::Unknown(types) => {
            unknown_types = types.iter().copied().map(AttrType::new).collect();
            enc.add(&UnknownAttributes::new(&unknown_types))
        }
        GenAttr::Raw(attr, value) => enc.add_raw(AttrType::new(*attr), value),
    };
    result.unwrap();
}

/// Decodes `value` as the generated attribute's type and checks it equals what was encoded.
fn check(attr: &GenAttr, value: &[u8], tid: &TransactionId) -> Result<(), TestCaseError> {
    match attr {
        GenAttr::Software(s) => prop_assert_eq!(Software::decode(value, tid).unwrap().as_str(), s),
        GenAttr::Username(s) => prop_assert_eq!(Username::decode(value, tid).unwrap().as_str(), s),
        GenAttr::Realm(s) => prop_assert_eq!(Realm::decode(value, tid).unwrap().as_str(), s),
        GenAttr::Nonce(s) => prop_assert_eq!(Nonce::decode(value, tid).unwrap().as_str(), s),
        GenAttr::XorMapped(a) => {
            prop_assert_eq!(XorMappedAddress::decode(value, tid).unwrap().0, *a)
        }
        GenAttr::Mapped(a) => prop_assert_eq!(MappedAddress::decode(value, tid).unwrap().0, *a),
        GenAttr::Error(code, reason) => {
            let decoded = ErrorCodeAttr::decode(value, tid).unwrap();
            prop_assert_eq!(decoded.code().as_u16(), *code);
            prop_assert_eq!(decoded.reason(), reason);
        }
        GenAttr::Unknown(types) => {
            let decoded: Vec<u16> = UnknownAttributes::decode(value, tid)
                .unwrap()
                .iter()
                .map(AttrType::as_u16)
                .collect();
            prop_assert_eq!(&decoded, types);
        }
        GenAttr::Raw(_, expected) => prop_assert_eq!(value, &expected[..]),
    }
    Ok(())
}

fn attr_type(attr: &GenAttr) -> u16 {
    match attr {
        GenAttr::Software(_) => AttrType::SOFTWARE.as_u16(),
        GenAttr::Username(_) => AttrType::USERNAME.as_u16(),
        GenAttr::Realm(_) => AttrType::REALM.as_u16(),
        GenAttr::Nonce(_) => AttrType::NONCE.as_u16(),
        GenAttr::XorMapped(_) => AttrType::XOR_MAPPED_ADDRESS.as_u16(),
        GenAttr::Mapped(_) => AttrType::MAPPED_ADDRESS.as_u16(),
        GenAttr::Error(..) => AttrType::ERROR_CODE.as_u16(),
        GenAttr::Unknown(_) => AttrType::UNKNOWN_ATTRIBUTES.as_u16(),
        GenAttr::Raw(attr, _) => *attr,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(message) = Message::parse(&bytes) {
            exercise(&message);
        }
    }

    #[test]
    fn parser_never_panics_on_stun_shaped_bytes(bytes in stun_shaped()) {
        if let Ok(message) = Message::parse(&bytes) {
            prop_assert_eq!(message.as_bytes().len(), bytes.len());
            exercise(&message);
        }
    }

    #[test]
    fn responder_never_panics(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        stun_shaped(),
    ], out_len in 0usize..128) {
        let mut server = StunServer::new(BindingConfig::default());
        let mut out = vec![0u8; out_len];
        let src = ClientAddr::new("192.0.2.1:3478".parse().unwrap());
        let _ = server.handle_datagram(src, &bytes, &mut out);
        let stats = server.stats();
        prop_assert_eq!(
            stats.binding_requests + stats.binding_indications + stats.drops.total(),
            1
        );
    }

    #[test]
    fn encode_then_parse_round_trips(
        method in 0u16..=Method::MAX,
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec(gen_attr(), 0..8),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..80)),
        fingerprint in any::<bool>(),
    ) {
        let tid = TransactionId::new(tid);
        let message_type = MessageType::new(Method::new(method).unwrap(), class);
        let mut buf = vec![0u8; 4096];
        let mut enc = Encoder::new(&mut buf, message_type, tid).unwrap();
        for attr in &attrs {
            encode(&mut enc, attr);
        }
        let mut trailer = Trailer::new();
        if let Some(key) = &key {
            trailer = trailer.with_integrity(IntegrityKey::short_term(key));
        }
        if fingerprint {
            trailer = trailer.with_fingerprint();
        }
        let len = enc.finish(trailer).unwrap();
        prop_assert_eq!(len % 4, 0);

        let message = Message::parse(&buf[..len]).unwrap();
        prop_assert_eq!(message.message_type(), message_type);
        prop_assert_eq!(message.transaction_id(), tid);

        let mut expected: Vec<u16> = attrs.iter().map(attr_type).collect();
        if key.is_some() {
            expected.push(AttrType::MESSAGE_INTEGRITY.as_u16());
        }
        if fingerprint {
            expected.push(AttrType::FINGERPRINT.as_u16());
        }
        let got: Vec<u16> = message.attributes().map(|a| a.attr().as_u16()).collect();
        prop_assert_eq!(got, expected);
        for (attr, raw) in attrs.iter().zip(message.attributes()) {
            check(attr, raw.value(), &tid)?;
        }

        match &key {
            Some(key) => prop_assert!(message.verify_integrity(IntegrityKey::short_term(key)).is_ok()),
            None => prop_assert!(!message.has_integrity()),
        }
        prop_assert_eq!(message.verify_fingerprint().is_ok(), fingerprint);
    }
}
