//! A test harness for the TURN server: virtual time, a seeded RNG, and clients that speak the
//! long-term credential dance. Shared by the TURN integration tests.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boson_dataplane_proto::stun::{
    AttrType, Class, Encoder, ErrorCodeAttr, LongTermKey, Message, MessageType, Method, Nonce,
    PasswordAlgorithm, PasswordAlgorithmAttr, Realm, Trailer, TransactionId, Username,
};
use boson_dataplane_proto::turn::attr::{
    Data, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayedAddress,
};
use boson_dataplane_proto::{
    ChannelNumber, ClientAction, ClientAddr, Command, HEADROOM, PeerAction, PeerAddr, RelayPort,
    Server, TurnConfig,
};
use boson_shared::{TurnCredential, TurnSecret};

pub const REALM: &str = "boson.test";
pub const RELAY_IP: [u8; 4] = [203, 0, 113, 1];
/// Unix time at the harness's start.
pub const UNIX_START: u64 = 1_700_000_000;

pub use boson_dataplane_proto::testing::XorShift;

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
pub fn epoch() -> Instant {
    Instant::now()
}

pub fn secret_a() -> TurnSecret {
    TurnSecret::new("secret-a")
}

pub fn secret_b() -> TurnSecret {
    TurnSecret::new("secret-b")
}

/// The default test configuration: two secrets, ports 50000..=50009.
pub fn config() -> TurnConfig {
    TurnConfig::new(
        REALM,
        vec![secret_a(), secret_b()],
        RELAY_IP.into(),
        50_000..=50_009,
    )
    .unwrap()
}

/// A server driven in virtual time.
pub struct Harness {
    pub server: Server<XorShift>,
    pub start: Instant,
    pub now: Instant,
    /// Every command drained so far, in order.
    pub commands: Vec<Command>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: TurnConfig) -> Self {
        let start = epoch();
        Self {
            server: Server::new(config, XorShift(0x5EED), start, UNIX_START),
            start,
            now: start,
            commands: Vec::new(),
        }
    }

    /// Unix time now.
    pub fn unix_now(&self) -> u64 {
        UNIX_START + (self.now - self.start).as_secs()
    }

    /// Moves time forward by `by`, stepping through every timer on the way as a shell would.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.server.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.server.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    pub fn drain(&mut self) -> Vec<Command> {
        let mut new = Vec::new();
        while let Some(command) = self.server.next_command() {
            new.push(command);
        }
        self.commands.extend(new.iter().copied());
        new
    }

    /// Feeds a datagram from `from`; returns the action and the response bytes, if any.
    pub fn input(&mut self, from: ClientAddr, datagram: &[u8]) -> (ClientAction, Vec<u8>) {
        let mut out = [0u8; 2048];
        let action = self
            .server
            .handle_client_input(self.now, from, datagram, &mut out);
        self.drain();
        let response = match action {
            ClientAction::Reply { dst, len } => {
                assert_eq!(dst, from, "responses go back to the source");
                out[..len].to_vec()
            }
            ClientAction::Relay { .. } | ClientAction::Absorb | ClientAction::Drop(_) => Vec::new(),
        };
        (action, response)
    }

    /// A peer datagram on `port`; returns the action and the bytes to forward, if any.
    pub fn peer_input(
        &mut self,
        port: RelayPort,
        from: SocketAddr,
        payload: &[u8],
    ) -> (PeerAction, Vec<u8>) {
        let mut buf = vec![0xAA; HEADROOM + payload.len() + 4];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let action = self.server.handle_peer_input(
            self.now,
            port,
            PeerAddr::new(from),
            &mut buf,
            payload.len(),
        );
        self.drain();
        let bytes = match &action {
            PeerAction::Forward { range, .. } => buf[range.clone()].to_vec(),
            PeerAction::Drop(_) => Vec::new(),
        };
        (action, bytes)
    }
}

/// A TURN client with a REST credential.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: ClientAddr,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub realm: String,
    pub fingerprint: bool,
    /// Derive the key with SHA-256 and sign with MESSAGE-INTEGRITY-SHA256 (RFC 8489 §9.2),
    /// echoing PASSWORD-ALGORITHMS and naming the choice in PASSWORD-ALGORITHM.
    pub sha256: bool,
    /// PASSWORD-ALGORITHMS of the last 401/438, as received.
    pub algorithms: Option<Vec<u8>>,
    counter: u32,
}

impl Client {
    /// A client at `addr` with a credential for `user` minted under `secret`, valid for an hour.
    pub fn new(addr: &str, secret: &TurnSecret, user: &str) -> Self {
        Self::with_expiry(addr, secret, user, UNIX_START + 3600)
    }

    pub fn with_expiry(addr: &str, secret: &TurnSecret, user: &str, expires_at: u64) -> Self {
        let credential = TurnCredential::mint(secret, user, expires_at);
        Self::with_credential(addr, &credential.username, &credential.password)
    }

    pub fn with_credential(addr: &str, username: &str, password: &str) -> Self {
        Self {
            addr: ClientAddr::new(addr.parse().unwrap()),
            username: username.to_owned(),
            password: password.to_owned(),
            nonce: None,
            realm: REALM.to_owned(),
            fingerprint: true,
            sha256: false,
            algorithms: None,
            counter: 0,
        }
    }

    pub fn key(&self) -> LongTermKey {
        let algorithm = if self.sha256 {
            PasswordAlgorithm::SHA256
        } else {
            PasswordAlgorithm::MD5
        };
        LongTermKey::derive_with(algorithm, &self.username, &self.realm, &self.password).unwrap()
    }

    pub fn next_tid(&mut self) -> TransactionId {
        self.counter += 1;
        let mut tid = [0x77; 12];
        tid[..4].copy_from_slice(&self.counter.to_be_bytes());
        tid[4..8].copy_from_slice(&self.addr.get().port().to_be_bytes().repeat(2));
        TransactionId::new(tid)
    }

    /// Encodes a message; with `auth`, adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
    pub fn encode(
        &self,
        method: Method,
        class: Class,
        tid: TransactionId,
        auth: bool,
        attributes: impl FnOnce(&mut Encoder<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut enc = Encoder::new(&mut buf, MessageType::new(method, class), tid).unwrap();
        attributes(&mut enc);
        let key = self.key();
        let mut trailer = Trailer::new();
        if auth {
            enc.add(&Username::new(&self.username).unwrap()).unwrap();
            enc.add(&Realm::new(&self.realm).unwrap()).unwrap();
            let nonce = self.nonce.as_deref().unwrap_or("none");
            enc.add(&Nonce::new(nonce).unwrap()).unwrap();
            if self.sha256 {
                let algorithms = self.algorithms.as_deref().unwrap_or_default();
                enc.add_raw(AttrType::PASSWORD_ALGORITHMS, algorithms)
                    .unwrap();
                enc.add(&PasswordAlgorithmAttr(PasswordAlgorithm::SHA256))
                    .unwrap();
                trailer = trailer.with_integrity_sha256(key.as_integrity_key());
            } else {
                trailer = trailer.with_integrity(key.as_integrity_key());
            }
        }
        if self.fingerprint {
            trailer = trailer.with_fingerprint();
        }
        let len = enc.finish(trailer).unwrap();
        buf.truncate(len);
        buf
    }

    /// Remembers REALM and NONCE from a 401 or 438.
    pub fn learn(&mut self, response: &[u8]) {
        let m = Message::parse(response).unwrap();
        if let Ok(Some(nonce)) = m.get::<Nonce<'_>>() {
            self.nonce = Some(nonce.as_str().to_owned());
        }
        if let Ok(Some(realm)) = m.get::<Realm<'_>>() {
            self.realm = realm.as_str().to_owned();
        }
        if let Some(list) = m.attribute(AttrType::PASSWORD_ALGORITHMS) {
            self.algorithms = Some(list.value().to_vec());
        }
    }
}

/// A response, parsed on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response(pub Vec<u8>);

impl Response {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.0).unwrap()
    }

    pub fn class(&self) -> Class {
        self.message().class()
    }

    /// The error code, or `None` for a success response.
    pub fn code(&self) -> Option<u16> {
        self.message()
            .get::<ErrorCodeAttr<'_>>()
            .unwrap()
            .map(|e| e.code().as_u16())
    }

    pub fn is_success(&self) -> bool {
        self.class() == Class::SuccessResponse
    }

    pub fn lifetime(&self) -> u32 {
        self.message().get::<Lifetime>().unwrap().unwrap().0
    }

    pub fn relayed(&self) -> SocketAddr {
        self.message()
            .get::<XorRelayedAddress>()
            .unwrap()
            .unwrap()
            .0
    }

    pub fn relay_port(&self) -> RelayPort {
        RelayPort::new(self.relayed().port())
    }

    pub fn reservation_token(&self) -> Option<ReservationToken> {
        self.message().get::<ReservationToken>().unwrap()
    }
}

impl Harness {
    /// Sends an authenticated request, doing the 401/438 dance as needed (at most twice), and
    /// returns the final response. Checks that every response after authentication carries
    /// a valid MESSAGE-INTEGRITY, and FINGERPRINT exactly when the request did.
    pub fn request(
        &mut self,
        client: &mut Client,
        method: Method,
        attributes: impl Fn(&mut Encoder<'_>),
    ) -> Response {
        let tid = client.next_tid();
        self.request_with_tid(client, method, tid, attributes)
    }

    pub fn request_with_tid(
        &mut self,
        client: &mut Client,
        method: Method,
        tid: TransactionId,
        attributes: impl Fn(&mut Encoder<'_>),
    ) -> Response {
        for _ in 0..3 {
            let bytes = client.encode(
                method,
                Class::Request,
                tid,
                client.nonce.is_some(),
                &attributes,
            );
            let (action, response) = self.input(client.addr, &bytes);
            assert!(
                matches!(action, ClientAction::Reply { .. }),
                "expected a response, got {action:?}"
            );
            let response = Response(response);
            let m = response.message();
            assert_eq!(m.transaction_id(), tid);
            assert_eq!(m.method(), method);
            assert_eq!(m.has_fingerprint(), client.fingerprint);
            if client.fingerprint {
                assert_eq!(m.verify_fingerprint(), Ok(()));
            }
            match response.code() {
                Some(401 | 438) => {
                    assert!(!m.has_integrity(), "401/438 carry no MESSAGE-INTEGRITY");
                    let before = client.nonce.clone();
                    client.learn(&response.0);
                    if response.code() == Some(401) && before.is_some() {
                        return response; // credentials are wrong: retrying will not help
                    }
                }
                _ => {
                    let key = client.key();
                    assert!(
                        m.verify_integrity(key.as_integrity_key()).is_ok(),
                        "authenticated responses carry MESSAGE-INTEGRITY"
                    );
                    assert_eq!(
                        m.has_integrity_sha256(),
                        client.sha256,
                        "the response uses the request's integrity attribute"
                    );
                    return response;
                }
            }
        }
        panic!("no final response after three attempts")
    }

    /// Allocates for `client`; returns the relay port.
    pub fn allocate(&mut self, client: &mut Client) -> RelayPort {
        let response = self.request(client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        });
        assert!(
            response.is_success(),
            "allocate failed: {:?}",
            response.code()
        );
        response.relay_port()
    }

    /// An Allocate with EVEN-PORT R=1 from `client`.
    pub fn allocate_reserving(&mut self, client: &mut Client) -> Response {
        self.request(client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
            enc.add(&EvenPort { reserve: true }).unwrap();
        })
    }

    /// An Allocate with RESERVATION-TOKEN `token` from `client`.
    pub fn allocate_reserved(&mut self, client: &mut Client, token: ReservationToken) -> Response {
        self.request(client, Method::ALLOCATE, |enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
            enc.add(&token).unwrap();
        })
    }

    pub fn create_permission(&mut self, client: &mut Client, peers: &[SocketAddr]) -> Response {
        self.request(client, Method::CREATE_PERMISSION, |enc| {
            for peer in peers {
                enc.add(&XorPeerAddress(*peer)).unwrap();
            }
        })
    }

    pub fn channel_bind(&mut self, client: &mut Client, number: u16, peer: SocketAddr) -> Response {
        self.request(client, Method::CHANNEL_BIND, |enc| {
            enc.add_raw(
                AttrType::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .unwrap();
            enc.add(&XorPeerAddress(peer)).unwrap();
        })
    }

    pub fn refresh(&mut self, client: &mut Client, lifetime: Option<u32>) -> Response {
        self.request(client, Method::REFRESH, |enc| {
            if let Some(lifetime) = lifetime {
                enc.add(&Lifetime(lifetime)).unwrap();
            }
        })
    }

    /// A Send indication from `client` to `peer`.
    pub fn send_indication(
        &mut self,
        client: &mut Client,
        peer: SocketAddr,
        payload: &[u8],
    ) -> (ClientAction, Vec<u8>) {
        let tid = client.next_tid();
        let bytes = client.encode(Method::SEND, Class::Indication, tid, false, |enc| {
            enc.add(&XorPeerAddress(peer)).unwrap();
            enc.add(&Data(payload)).unwrap();
        });
        let (action, _) = self.input(client.addr, &bytes);
        (action, bytes)
    }

    /// A ChannelData frame from `client`.
    pub fn channel_data(
        &mut self,
        client: &Client,
        number: u16,
        payload: &[u8],
    ) -> (ClientAction, Vec<u8>) {
        let frame = channel_data_frame(number, payload);
        let (action, _) = self.input(client.addr, &frame);
        (action, frame)
    }
}

pub fn channel_data_frame(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn channel(number: u16) -> ChannelNumber {
    ChannelNumber::new(number).unwrap()
}
