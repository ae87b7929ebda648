//! A small blocking TURN client over UDP for the binary's tests: REST credentials, the
//! 401/438 dance, Allocate, Refresh, CreatePermission, ChannelBind and ChannelData, with
//! retransmission. It speaks through `boson_dataplane_proto`'s codec; `turn_interop.rs` checks
//! the server against coturn's own client instead.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use boson_dataplane_proto::stun::{
    Class, Encoder, ErrorCodeAttr, LongTermKey, Message, MessageType, Method, Nonce, Realm,
    Trailer, TransactionId, Username,
};
use boson_dataplane_proto::turn::attr::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use boson_shared::{TurnCredential, TurnSecret};

/// A final answer to a request: its error code (`None` for success) and bytes.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) code: Option<u16>,
    pub(crate) bytes: Vec<u8>,
}

impl Answer {
    pub(crate) fn is_success(&self) -> bool {
        self.code.is_none()
    }

    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        let message = Message::parse(&self.bytes).ok()?;
        message.get::<XorRelayedAddress>().ok()?.map(|a| a.0)
    }
}

/// One TURN client: one UDP socket (on loopback unless told otherwise), one REST credential.
pub(crate) struct TurnClient {
    pub(crate) socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    counter: u32,
    buf: Vec<u8>,
}

impl TurnClient {
    /// A client of `server` with a credential for `user` minted under `secret`, valid for an
    /// hour from `unix_now`.
    pub(crate) fn new(server: SocketAddr, secret: &str, user: &str, unix_now: u64) -> Self {
        Self::from_ip(server, secret, user, unix_now, [127, 0, 0, 1].into())
    }

    /// As [`new`](Self::new), from a socket on `ip` (any of 127.0.0.0/8 works on loopback):
    /// the server rate-limits unauthenticated answers per source address.
    pub(crate) fn from_ip(
        server: SocketAddr,
        secret: &str,
        user: &str,
        unix_now: u64,
        ip: std::net::IpAddr,
    ) -> Self {
        let credential = TurnCredential::mint(&TurnSecret::new(secret), user, unix_now + 3600);
        Self::with_credential_from(server, &credential.username, &credential.password, ip)
    }

    /// A client of `server` with a credential it was handed (by `/api/v1/turn/ice`).
    pub(crate) fn with_credential(server: SocketAddr, username: &str, password: &str) -> Self {
        Self::with_credential_from(server, username, password, [127, 0, 0, 1].into())
    }

    /// As [`with_credential`](Self::with_credential), from a socket on `ip`.
    pub(crate) fn with_credential_from(
        server: SocketAddr,
        username: &str,
        password: &str,
        ip: std::net::IpAddr,
    ) -> Self {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        Self {
            socket,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            counter: 0,
            buf: vec![0; 2048],
        }
    }

    fn next_tid(&mut self) -> TransactionId {
        self.counter += 1;
        let mut tid = [0x42; 12];
        tid[..4].copy_from_slice(&self.counter.to_be_bytes());
        let port = self.socket.local_addr().map_or(0, |a| a.port());
        tid[4..6].copy_from_slice(&port.to_be_bytes());
        TransactionId::new(tid)
    }

    fn encode(
        &self,
        method: Method,
        tid: TransactionId,
        attributes: &dyn Fn(&mut Encoder<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut enc =
            Encoder::new(&mut buf, MessageType::new(method, Class::Request), tid).unwrap();
        attributes(&mut enc);
        let key;
        let mut trailer = Trailer::new();
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            enc.add(&Username::new(&self.username).unwrap()).unwrap();
            enc.add(&Realm::new(realm).unwrap()).unwrap();
            enc.add(&Nonce::new(nonce).unwrap()).unwrap();
            key = LongTermKey::derive(&self.username, realm, &self.password);
            trailer = trailer.with_integrity(key.as_integrity_key());
        }
        let len = enc.finish(trailer.with_fingerprint()).unwrap();
        buf.truncate(len);
        buf
    }

    /// Sends `method` with `attributes` (authenticated once a nonce is known) and returns the
    /// final answer, after the 401/438 dance and retransmissions; `Err` if nothing answered.
    pub(crate) fn request(
        &mut self,
        method: Method,
        attributes: &dyn Fn(&mut Encoder<'_>),
    ) -> io::Result<Answer> {
        for _ in 0..3 {
            let tid = self.next_tid();
            let request = self.encode(method, tid, attributes);
            let answer = self.transact(&request, tid)?;
            let message = Message::parse(&answer.bytes).unwrap();
            match answer.code {
                Some(401) if self.nonce.is_none() => {}
                Some(438) => {}
                _ => return Ok(answer),
            }
            if let Ok(Some(nonce)) = message.get::<Nonce<'_>>() {
                self.nonce = Some(nonce.as_str().to_owned());
            }
            if let Ok(Some(realm)) = message.get::<Realm<'_>>() {
                self.realm = Some(realm.as_str().to_owned());
            }
        }
        Err(io::Error::other("no final answer after three attempts"))
    }

    /// Sends `request` until a response with `tid` arrives (RFC 8489's retransmissions, a
    /// little faster).
    fn transact(&mut self, request: &[u8], tid: TransactionId) -> io::Result<Answer> {
        for _ in 0..12 {
            self.socket.send_to(request, self.server)?;
            loop {
                let len = match self.socket.recv_from(&mut self.buf) {
                    Ok((len, _)) => len,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let bytes = self.buf[..len].to_vec();
                let Ok(message) = Message::parse(&bytes) else {
                    continue; // ChannelData from an earlier exchange
                };
                if message.transaction_id() != tid {
                    continue;
                }
                let code = message
                    .get::<ErrorCodeAttr<'_>>()
                    .ok()
                    .flatten()
                    .map(|e| e.code().as_u16());
                return Ok(Answer { code, bytes });
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no STUN answer"))
    }

    /// Allocates a UDP relay; returns the answer (check it with `relayed()`).
    pub(crate) fn allocate(&mut self) -> io::Result<Answer> {
        self.request(Method::ALLOCATE, &|enc| {
            enc.add(&RequestedTransport::UDP).unwrap();
        })
    }

    pub(crate) fn refresh(&mut self, lifetime: u32) -> io::Result<Answer> {
        self.request(Method::REFRESH, &|enc| {
            enc.add(&Lifetime(lifetime)).unwrap();
        })
    }

    pub(crate) fn create_permission(&mut self, peer: SocketAddr) -> io::Result<Answer> {
        self.request(Method::CREATE_PERMISSION, &|enc| {
            enc.add(&XorPeerAddress(peer)).unwrap();
        })
    }

    pub(crate) fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> io::Result<Answer> {
        self.request(Method::CHANNEL_BIND, &|enc| {
            enc.add_raw(
                boson_dataplane_proto::stun::AttrType::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .unwrap();
            enc.add(&XorPeerAddress(peer)).unwrap();
        })
    }

    /// Sends `payload` to `peer` in a Send indication (no answer comes).
    pub(crate) fn send_indication(&self, peer: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let mut buf = vec![0u8; 1500];
        let tid = TransactionId::new([0x53; 12]);
        let mut enc = Encoder::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            tid,
        )
        .unwrap();
        enc.add(&XorPeerAddress(peer)).unwrap();
        enc.add(&Data(payload)).unwrap();
        let len = enc.finish(Trailer::new().with_fingerprint()).unwrap();
        self.socket.send_to(&buf[..len], self.server)?;
        Ok(())
    }

    /// Sends `payload` on channel `number`.
    pub(crate) fn send_channel_data(&self, number: u16, payload: &[u8]) -> io::Result<()> {
        let mut frame = number.to_be_bytes().to_vec();
        frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket.send_to(&frame, self.server)?;
        Ok(())
    }

    /// The next ChannelData frame's (channel, payload), skipping STUN; `None` on timeout.
    pub(crate) fn recv_channel_data(&mut self) -> Option<(u16, Vec<u8>)> {
        loop {
            let (len, _) = self.socket.recv_from(&mut self.buf).ok()?;
            let frame = &self.buf[..len];
            if len >= 4 && (0x40..0x80).contains(&frame[0]) {
                let number = u16::from_be_bytes([frame[0], frame[1]]);
                let size = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
                return Some((number, frame[4..4 + size.min(len - 4)].to_vec()));
            }
        }
    }
}

/// A peer: a UDP socket on loopback.
pub(crate) fn peer() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    socket
}

/// Unix seconds now, for credential expiry.
pub(crate) fn unix_now() -> u64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "credentials need the wall clock the server also reads"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A range of `len` UDP ports for relay sockets, below the kernel's ephemeral range (where
/// the tests' own sockets live) and picked from a free port, so tests running at the same time
/// rarely share one. A port that is taken anyway costs a retransmission: the server
/// quarantines it and answers from another.
pub(crate) fn relay_ports(len: u16) -> String {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let base = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let span = ephemeral.saturating_sub(10_000 + len).max(1);
    let first = 10_000 + base % span;
    format!("{first}-{}", first + len - 1)
}

/// A client on 127.0.0.`octet` with a credential for `user` under `secret`, allocated: the
/// client and its relayed address.
pub(crate) fn allocated(
    server: SocketAddr,
    secret: &str,
    user: &str,
    octet: u8,
) -> (TurnClient, SocketAddr) {
    let mut client =
        TurnClient::from_ip(server, secret, user, unix_now(), [127, 0, 0, octet].into());
    let answer = client.allocate().unwrap();
    assert!(answer.is_success(), "Allocate: {:?}", answer.code);
    let relayed = answer.relayed().unwrap();
    (client, relayed)
}

/// Two allocations ("alice" on 127.0.0.`octets.0`, "bob" on `.1`) bound to each other's
/// relayed address: alice's channel 0x4001 reaches bob's allocation, bob's 0x4002 alice's.
pub(crate) fn bound_pair(
    server: SocketAddr,
    secret: &str,
    octets: (u8, u8),
) -> [(TurnClient, SocketAddr); 2] {
    let (mut alice, alice_relayed) = allocated(server, secret, "alice", octets.0);
    let (mut bob, bob_relayed) = allocated(server, secret, "bob", octets.1);
    let bound = alice.channel_bind(0x4001, bob_relayed).unwrap();
    assert!(bound.is_success(), "alice's ChannelBind: {:?}", bound.code);
    let bound = bob.channel_bind(0x4002, alice_relayed).unwrap();
    assert!(bound.is_success(), "bob's ChannelBind: {:?}", bound.code);
    [(alice, alice_relayed), (bob, bob_relayed)]
}
