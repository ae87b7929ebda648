//! The STUN Binding responder: answers "what is my address?" ([RFC 8489 §6.3]).
//!
//! # Flow
//!
//! For each datagram the shell calls [`StunServer::handle_datagram`] with the source address and
//! an output buffer, and acts on the [`BindingOutcome`]:
//!
//! 1. not STUN, malformed, or with a wrong FINGERPRINT → [`BindingOutcome::Drop`];
//! 2. a response, or a method other than Binding → `Drop` (the TURN server,
//!    [`crate::turn::Server`], dispatches other methods itself and shares this responder's code
//!    for Binding);
//! 3. a Binding indication (keepalive) → [`BindingOutcome::Absorb`], or `Drop` if it carries
//!    unknown comprehension-required attributes;
//! 4. a Binding request with unknown comprehension-required attributes → 420 error response
//!    with UNKNOWN-ATTRIBUTES;
//! 5. any other Binding request → success response with XOR-MAPPED-ADDRESS, and, when the
//!    responder is one of two addresses of an RFC 5780 server
//!    ([`BindingConfig::with_other_address`]), RESPONSE-ORIGIN and OTHER-ADDRESS.
//!
//! # NAT behaviour discovery ([RFC 5780])
//!
//! A server with a second STUN address (another port, another IP, or both) runs one
//! responder on each, each configured with its own public address (RESPONSE-ORIGIN) and the
//! other's (OTHER-ADDRESS). A client that sends Binding requests from one socket to both and
//! compares the XOR-MAPPED-ADDRESSes learns whether its NAT maps by destination (RFC 5780
//! §4.3). CHANGE-REQUEST (RFC 5780 §7.2), which asks for an answer from the other address,
//! is not supported: it is comprehension-required and unknown here, so a request carrying it
//! gets a 420 listing it, as RFC 5780 §6 allows; the filtering test that needs it is not
//! offered.
//!
//! Responses echo the transaction id, carry SOFTWARE if configured, and end with FINGERPRINT
//! when the request did. Binding needs no authentication, so MESSAGE-INTEGRITY in a request is
//! ignored ([RFC 8489 §9]: a server without credentials for the request does not check it).
//!
//! The responder keeps no per-client state, so it needs no `now` and has no timers. Its only
//! state is [`Stats`].
//!
//! [RFC 8489 §6.3]: https://www.rfc-editor.org/rfc/rfc8489#section-6.3
//! [RFC 8489 §9]: https://www.rfc-editor.org/rfc/rfc8489#section-9
//! [RFC 5780]: https://www.rfc-editor.org/rfc/rfc5780

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::stats::{DropReason, Stats};
use crate::stun::{
    AttrType, Class, EncodeError, Encoder, ErrorCode, ErrorCodeAttr, Message, MessageType, Method,
    OtherAddress, PacketKind, ResponseOrigin, Software, Trailer, UnknownAttributes,
    XorMappedAddress, classify,
};

/// At most this many distinct unknown attribute types are listed in a 420 response. A
/// legitimate client sends a handful; the bound keeps the response small whatever the request.
pub const MAX_UNKNOWN_REPORTED: usize = 16;

/// The transport address a client's messages come from, as the shell's socket reported it,
/// and whether they come over a stream (TCP or TLS) or as datagrams. The two are different
/// 5-tuples (RFC 8656 §2.2): a UDP client and a TCP client with the same address and port
/// are different clients, and what goes back to a stream client goes over its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientAddr {
    addr: SocketAddr,
    stream: bool,
}

/// One word per IPv4 client (address, port and transport packed), not the derived walk over
/// the enum's discriminant, the octets with their length, the port and the flag: the
/// allocation table hashes the client of every packet with SipHash, and the derived form's
/// extra bytes cost a compression round per packet (benches/icount.sh's turn-to-peer). Equal
/// clients hash equal: every field hashed is compared by `Eq`.
impl std::hash::Hash for ClientAddr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let transport = u64::from(self.addr.port()) << 1 | u64::from(self.stream);
        match self.addr {
            SocketAddr::V4(v4) => state.write_u64(u64::from(v4.ip().to_bits()) << 17 | transport),
            SocketAddr::V6(v6) => {
                state.write_u128(v6.ip().to_bits());
                state.write_u64(transport | 1 << 63);
            }
        }
    }
}

impl ClientAddr {
    /// Wraps the source address of a received datagram.
    pub const fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: false,
        }
    }

    /// Wraps the remote address of a stream (TCP or TLS) connection.
    pub const fn new_stream(addr: SocketAddr) -> Self {
        Self { addr, stream: true }
    }

    /// Whether this client speaks over a stream connection rather than datagrams.
    pub const fn is_stream(self) -> bool {
        self.stream
    }

    /// The address as the socket reported it: where replies go.
    pub const fn get(self) -> SocketAddr {
        self.addr
    }

    /// The address to report to the client: as [`get`](Self::get), except that an
    /// IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket reports for an
    /// IPv4 peer) becomes the IPv4 address the client actually has.
    pub fn reflexive(self) -> SocketAddr {
        match self.addr {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                None => self.addr,
            },
            SocketAddr::V4(_) => self.addr,
        }
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Configuration of the Binding responder.
#[derive(Debug, Clone, Copy)]
pub struct BindingConfig {
    software: Option<Software<'static>>,
    is_known: fn(AttrType) -> bool,
    /// RESPONSE-ORIGIN and OTHER-ADDRESS, for a server with a second address.
    rfc5780: Option<OtherAddressPair>,
}

/// This responder's public address and the server's other one (RFC 5780 §7.3, §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OtherAddressPair {
    origin: SocketAddr,
    other: SocketAddr,
}

impl BindingConfig {
    /// The defaults:
    ///
    /// * no SOFTWARE: it is optional ([RFC 8489 §14.14]) and tells attackers which version to
    ///   target;
    /// * known attributes are those of RFC 8489 ([`AttrType::is_stun`]).
    ///
    /// [RFC 8489 §14.14]: https://www.rfc-editor.org/rfc/rfc8489#section-14.14
    pub const fn new() -> Self {
        Self {
            software: None,
            is_known: AttrType::is_stun,
            rfc5780: None,
        }
    }

    /// Makes this responder one of the two addresses of an RFC 5780 server: success
    /// responses carry RESPONSE-ORIGIN `origin` (this responder's address as clients reach
    /// it) and OTHER-ADDRESS `other` (the server's other address, as clients reach it).
    pub const fn with_other_address(mut self, origin: SocketAddr, other: SocketAddr) -> Self {
        self.rfc5780 = Some(OtherAddressPair { origin, other });
        self
    }

    /// Adds SOFTWARE with this description to every response.
    pub const fn with_software(mut self, software: Software<'static>) -> Self {
        self.software = Some(software);
        self
    }

    /// Replaces the registry of understood attribute types; comprehension-required types it
    /// rejects make a request fail with 420. A TURN server passes
    /// `|t| t.is_stun() || t.is_turn()`.
    pub const fn with_known_attributes(mut self, is_known: fn(AttrType) -> bool) -> Self {
        self.is_known = is_known;
        self
    }
}

impl Default for BindingConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the shell does with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum BindingOutcome {
    /// Send the first `len` bytes of the output buffer to `dst`.
    Reply {
        /// Where to send: the request's source.
        dst: ClientAddr,
        /// Length of the response in the output buffer.
        len: usize,
    },
    /// Accepted; nothing to send (Binding indication).
    Absorb,
    /// Dropped, already counted in [`Stats::drops`].
    Drop(DropReason),
}

/// The sans-IO STUN Binding responder.
#[derive(Debug)]
pub struct StunServer {
    config: BindingConfig,
    stats: Stats,
}

impl StunServer {
    /// A responder with zeroed counters.
    pub fn new(config: BindingConfig) -> Self {
        Self {
            config,
            stats: Stats::default(),
        }
    }

    /// Handles one received datagram, writing any response into `out` (576 bytes is plenty;
    /// a success response is at most 20 + 24 + SOFTWARE + 8 bytes).
    pub fn handle_datagram(
        &mut self,
        src: ClientAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> BindingOutcome {
        if classify(datagram) != PacketKind::Stun {
            return self.drop(DropReason::NotStun);
        }
        match Message::parse(datagram) {
            Ok(message) => self.handle_message(src, &message, out),
            Err(err) => self.drop(DropReason::from(err)),
        }
    }

    /// Handles an already parsed message: the entry point for a TURN server that parsed the
    /// datagram itself and found a Binding method.
    pub fn handle_message(
        &mut self,
        src: ClientAddr,
        message: &Message<'_>,
        out: &mut [u8],
    ) -> BindingOutcome {
        respond(&self.config, &mut self.stats, src, message, out)
    }

    /// The counters so far.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    fn drop(&mut self, reason: DropReason) -> BindingOutcome {
        self.stats.drops.record(reason);
        BindingOutcome::Drop(reason)
    }
}

/// The Binding responder as a function of its configuration and counters, so the TURN server
/// answers Binding requests with the same code while keeping one [`Stats`].
pub(crate) fn respond(
    config: &BindingConfig,
    stats: &mut Stats,
    src: ClientAddr,
    message: &Message<'_>,
    out: &mut [u8],
) -> BindingOutcome {
    let mut drop = |reason: DropReason| {
        stats.drops.record(reason);
        BindingOutcome::Drop(reason)
    };
    if message.has_fingerprint() && message.verify_fingerprint().is_err() {
        return drop(DropReason::BadFingerprint);
    }
    let class = message.class();
    if class.is_response() {
        return drop(DropReason::UnexpectedResponse);
    }
    if message.method() != Method::BINDING {
        return drop(DropReason::UnsupportedMethod);
    }

    let mut unknown = [AttrType::new(0); MAX_UNKNOWN_REPORTED];
    let unknown = collect_unknown(message, config.is_known, &mut unknown);

    if class == Class::Indication {
        if !unknown.is_empty() {
            return drop(DropReason::UnknownAttributeInIndication);
        }
        stats.binding_indications += 1;
        return BindingOutcome::Absorb;
    }

    let written = if unknown.is_empty() {
        write_success(config, src, message, out)
    } else {
        write_unknown_attributes(config, unknown, message, out)
    };
    let Ok(len) = written else {
        return drop(DropReason::BufferTooSmall);
    };
    stats.binding_requests += 1;
    if unknown.is_empty() {
        stats.binding_success += 1;
    } else {
        stats.binding_errors += 1;
    }
    BindingOutcome::Reply { dst: src, len }
}

fn write_success(
    config: &BindingConfig,
    src: ClientAddr,
    request: &Message<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut enc = Encoder::new(out, MessageType::BINDING_SUCCESS, request.transaction_id())?;
    enc.add(&XorMappedAddress(src.reflexive()))?;
    if let Some(pair) = config.rfc5780 {
        enc.add(&ResponseOrigin(pair.origin))?;
        enc.add(&OtherAddress(pair.other))?;
    }
    let len = finish(config, enc, request)?;
    Ok(len)
}

fn write_unknown_attributes(
    config: &BindingConfig,
    unknown: &[AttrType],
    request: &Message<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut enc = Encoder::new(out, MessageType::BINDING_ERROR, request.transaction_id())?;
    enc.add(&ErrorCodeAttr::with_default_reason(
        ErrorCode::UNKNOWN_ATTRIBUTE,
    ))?;
    enc.add(&UnknownAttributes::new(unknown))?;
    let len = finish(config, enc, request)?;
    Ok(len)
}

/// SOFTWARE if configured, then FINGERPRINT if the request had one.
fn finish(
    config: &BindingConfig,
    mut enc: Encoder<'_>,
    request: &Message<'_>,
) -> Result<usize, EncodeError> {
    if let Some(software) = &config.software {
        enc.add(software)?;
    }
    let trailer = if request.has_fingerprint() {
        Trailer::new().with_fingerprint()
    } else {
        Trailer::new()
    };
    let len = enc.finish(trailer)?;
    Ok(len)
}

/// Fills `out` with the distinct unknown comprehension-required types of `message`, in wire
/// order, up to `out.len()`, and returns the filled part.
pub(crate) fn collect_unknown<'o>(
    message: &Message<'_>,
    is_known: fn(AttrType) -> bool,
    out: &'o mut [AttrType],
) -> &'o [AttrType] {
    let mut n = 0;
    for attr in message.unknown_comprehension_required(is_known) {
        if n == out.len() {
            break;
        }
        if !out[..n].contains(&attr) {
            out[n] = attr;
            n += 1;
        }
    }
    &out[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{IntegrityKey, TransactionId, Username};

    const TID: TransactionId = TransactionId::new([0x42; 12]);

    fn src() -> ClientAddr {
        ClientAddr::new("198.51.100.7:50000".parse().unwrap())
    }

    /// Encodes a message of `message_type` with raw attributes.
    fn request(
        message_type: MessageType,
        attrs: &[(AttrType, &[u8])],
        trailer: Trailer<'_>,
    ) -> Vec<u8> {
        let mut buf = vec![0; 1024];
        let mut enc = Encoder::new(&mut buf, message_type, TID).unwrap();
        for (attr, value) in attrs {
            enc.add_raw(*attr, value).unwrap();
        }
        let len = enc.finish(trailer).unwrap();
        buf.truncate(len);
        buf
    }

    fn respond(server: &mut StunServer, datagram: &[u8]) -> (BindingOutcome, Vec<u8>) {
        let mut out = [0u8; 576];
        let outcome = server.handle_datagram(src(), datagram, &mut out);
        let len = match outcome {
            BindingOutcome::Reply { len, .. } => len,
            BindingOutcome::Absorb | BindingOutcome::Drop(_) => 0,
        };
        (outcome, out[..len].to_vec())
    }

    #[test]
    fn answers_a_plain_binding_request() {
        let mut server = StunServer::new(BindingConfig::default());
        let req = request(MessageType::BINDING_REQUEST, &[], Trailer::new());
        let (outcome, resp) = respond(&mut server, &req);
        assert_eq!(
            outcome,
            BindingOutcome::Reply {
                dst: src(),
                len: 32
            }
        );
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(m.transaction_id(), TID);
        assert_eq!(
            m.get::<XorMappedAddress>(),
            Ok(Some(XorMappedAddress(src().get())))
        );
        assert!(
            !m.has_fingerprint(),
            "no FINGERPRINT unless the request had one"
        );
        assert!(m.attribute(AttrType::SOFTWARE).is_none());
        let stats = server.stats();
        assert_eq!(stats.binding_requests, 1);
        assert_eq!(stats.binding_success, 1);
        assert_eq!(stats.drops.total(), 0);
    }

    #[test]
    fn mirrors_fingerprint_and_adds_software() {
        let config = BindingConfig::new().with_software(Software::new("BosonServer").unwrap());
        let mut server = StunServer::new(config);
        let req = request(
            MessageType::BINDING_REQUEST,
            &[],
            Trailer::new().with_fingerprint(),
        );
        let (_, resp) = respond(&mut server, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.verify_fingerprint(), Ok(()));
        assert_eq!(
            m.get::<Software<'_>>().unwrap().map(|s| s.as_str()),
            Some("BosonServer")
        );
    }

    #[test]
    fn ignores_integrity_it_cannot_check() {
        let mut server = StunServer::new(BindingConfig::default());
        let req = request(
            MessageType::BINDING_REQUEST,
            &[(AttrType::USERNAME, b"someone")],
            Trailer::new()
                .with_integrity(IntegrityKey::short_term(b"whatever"))
                .with_fingerprint(),
        );
        let (outcome, _) = respond(&mut server, &req);
        assert!(matches!(outcome, BindingOutcome::Reply { .. }));
        assert!(Message::parse(&req).unwrap().get::<Username<'_>>().is_ok());
    }

    #[test]
    fn reports_ipv4_for_a_mapped_source_but_replies_to_the_socket_address() {
        let mut server = StunServer::new(BindingConfig::default());
        let mapped = ClientAddr::new("[::ffff:192.0.2.1]:32853".parse().unwrap());
        let req = request(MessageType::BINDING_REQUEST, &[], Trailer::new());
        let mut out = [0u8; 128];
        let BindingOutcome::Reply { dst, len } = server.handle_datagram(mapped, &req, &mut out)
        else {
            panic!("expected a reply");
        };
        assert_eq!(dst, mapped);
        let m = Message::parse(&out[..len]).unwrap();
        assert_eq!(
            m.get::<XorMappedAddress>().unwrap().unwrap().0,
            "192.0.2.1:32853".parse().unwrap()
        );
        let v6 = ClientAddr::new("[2001:db8::1]:1".parse().unwrap());
        assert_eq!(v6.reflexive(), v6.get());
    }

    #[test]
    fn unknown_comprehension_required_gets_420() {
        let mut server = StunServer::new(BindingConfig::default());
        let req = request(
            MessageType::BINDING_REQUEST,
            &[
                (AttrType::new(0x0024), &[0; 4]),
                (AttrType::new(0x8029), &[0; 8]), // optional: never reported
                (AttrType::new(0x7001), b""),
                (AttrType::new(0x0024), &[0; 4]), // duplicate: reported once
            ],
            Trailer::new().with_fingerprint(),
        );
        let (outcome, resp) = respond(&mut server, &req);
        assert!(matches!(outcome, BindingOutcome::Reply { .. }));
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
        assert_eq!(m.transaction_id(), TID);
        let err = m.get::<ErrorCodeAttr<'_>>().unwrap().unwrap();
        assert_eq!(err.code(), ErrorCode::UNKNOWN_ATTRIBUTE);
        let unknown: Vec<_> = m
            .get::<UnknownAttributes<'_>>()
            .unwrap()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(unknown, [AttrType::new(0x0024), AttrType::new(0x7001)]);
        assert_eq!(m.verify_fingerprint(), Ok(()));
        assert_eq!(server.stats().binding_errors, 1);
        assert_eq!(server.stats().binding_requests, 1);

        // The same request is fine for a server that knows the type.
        let mut ice_aware = StunServer::new(
            BindingConfig::new().with_known_attributes(|t| t.is_stun() || t.as_u16() < 0x8000),
        );
        let (_, resp) = respond(&mut ice_aware, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    }

    #[test]
    fn the_420_list_is_bounded() {
        let mut server = StunServer::new(BindingConfig::default());
        let types: Vec<AttrType> = (0x7000..0x7040).map(AttrType::new).collect();
        let attrs: Vec<(AttrType, &[u8])> = types.iter().map(|t| (*t, &b""[..])).collect();
        let req = request(MessageType::BINDING_REQUEST, &attrs, Trailer::new());
        let (_, resp) = respond(&mut server, &req);
        let m = Message::parse(&resp).unwrap();
        let listed = m.get::<UnknownAttributes<'_>>().unwrap().unwrap();
        assert_eq!(listed.len(), MAX_UNKNOWN_REPORTED);
        assert!(
            listed
                .iter()
                .eq(types[..MAX_UNKNOWN_REPORTED].iter().copied())
        );
    }

    #[test]
    fn an_rfc5780_responder_names_its_origin_and_the_other_address() {
        let origin: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        let other: SocketAddr = "192.0.2.10:3479".parse().unwrap();
        let mut server = StunServer::new(BindingConfig::new().with_other_address(origin, other));
        let req = request(
            MessageType::BINDING_REQUEST,
            &[],
            Trailer::new().with_fingerprint(),
        );
        let (_, resp) = respond(&mut server, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(
            m.get::<XorMappedAddress>(),
            Ok(Some(XorMappedAddress(src().get())))
        );
        assert_eq!(m.get::<ResponseOrigin>(), Ok(Some(ResponseOrigin(origin))));
        assert_eq!(m.get::<OtherAddress>(), Ok(Some(OtherAddress(other))));
        assert_eq!(m.verify_fingerprint(), Ok(()));
        // A plain responder names neither.
        let (_, resp) = respond(&mut StunServer::new(BindingConfig::new()), &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.get::<ResponseOrigin>(), Ok(None));
        assert_eq!(m.get::<OtherAddress>(), Ok(None));
    }

    #[test]
    fn change_request_is_refused_with_420() {
        // CHANGE-REQUEST (0x0003, RFC 5780 §7.2) asking for another IP and port.
        let mut server = StunServer::new(BindingConfig::new().with_other_address(
            "192.0.2.10:3478".parse().unwrap(),
            "192.0.2.10:3479".parse().unwrap(),
        ));
        let req = request(
            MessageType::BINDING_REQUEST,
            &[(AttrType::new(0x0003), &[0, 0, 0, 6])],
            Trailer::new(),
        );
        let (_, resp) = respond(&mut server, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
        let err = m.get::<ErrorCodeAttr<'_>>().unwrap().unwrap();
        assert_eq!(err.code(), ErrorCode::UNKNOWN_ATTRIBUTE);
        let unknown: Vec<_> = m
            .get::<UnknownAttributes<'_>>()
            .unwrap()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(unknown, [AttrType::new(0x0003)]);
    }

    #[test]
    fn indications_are_absorbed() {
        let mut server = StunServer::new(BindingConfig::default());
        let ind = request(MessageType::BINDING_INDICATION, &[], Trailer::new());
        let (outcome, _) = respond(&mut server, &ind);
        assert_eq!(outcome, BindingOutcome::Absorb);
        assert_eq!(server.stats().binding_indications, 1);

        let ind = request(
            MessageType::BINDING_INDICATION,
            &[(AttrType::new(0x7001), b"")],
            Trailer::new(),
        );
        let (outcome, _) = respond(&mut server, &ind);
        assert_eq!(
            outcome,
            BindingOutcome::Drop(DropReason::UnknownAttributeInIndication)
        );
    }

    #[test]
    fn drops_with_named_reasons() {
        let mut server = StunServer::new(BindingConfig::default());
        let good = request(
            MessageType::BINDING_REQUEST,
            &[(AttrType::SOFTWARE, b"x")],
            Trailer::new().with_fingerprint(),
        );

        let mut bad_fingerprint = good.clone();
        bad_fingerprint[25] ^= 1; // inside SOFTWARE's padding: structure intact, CRC wrong
        let mut bad_cookie = good.clone();
        bad_cookie[5] ^= 1;
        let mut bad_length = good.clone();
        bad_length.extend_from_slice(&[0; 4]);
        let mut overrun = good.clone();
        overrun[23] = 0x40;
        let response = request(MessageType::BINDING_SUCCESS, &[], Trailer::new());
        let allocate = request(
            MessageType::new(Method::ALLOCATE, Class::Request),
            &[],
            Trailer::new(),
        );

        for (datagram, reason) in [
            (&[][..], DropReason::NotStun),
            (&[0x40, 0x00, 0x00, 0x00][..], DropReason::NotStun),
            (&[0xC0; 24][..], DropReason::NotStun),
            (&good[..12], DropReason::Truncated),
            (&bad_fingerprint[..], DropReason::BadFingerprint),
            (&bad_cookie[..], DropReason::BadMagicCookie),
            (&bad_length[..], DropReason::BadLength),
            (&overrun[..], DropReason::MalformedAttribute),
            (&response[..], DropReason::UnexpectedResponse),
            (&allocate[..], DropReason::UnsupportedMethod),
        ] {
            let (outcome, _) = respond(&mut server, datagram);
            assert_eq!(outcome, BindingOutcome::Drop(reason), "{}", reason.as_str());
            assert!(server.stats().drops.get(reason) > 0);
        }
        assert_eq!(server.stats().drops.get(DropReason::NotStun), 3);
        assert_eq!(server.stats().drops.total(), 10);
        assert_eq!(server.stats().binding_requests, 0);
    }

    #[test]
    fn small_output_buffer_is_a_drop() {
        let mut server = StunServer::new(BindingConfig::default());
        let req = request(MessageType::BINDING_REQUEST, &[], Trailer::new());
        let mut out = [0u8; 31];
        assert_eq!(
            server.handle_datagram(src(), &req, &mut out),
            BindingOutcome::Drop(DropReason::BufferTooSmall)
        );
        assert_eq!(server.stats().binding_requests, 0);
    }
}
