//! A minimal TURN client ([RFC 8656]) over UDP, or over another [`Transport`] (TCP in
//! [`turn_tcp_client`](crate::turn_tcp_client)): just what the load generators need to get a
//! channel to a peer, with REST-API credentials.
//!
//! # Flow
//!
//! ```text
//! Allocate (no auth)                    ──▶ 401 + REALM + NONCE
//! Allocate + USERNAME/REALM/NONCE/MI    ──▶ success + XOR-RELAYED-ADDRESS
//! CreatePermission(peer) + auth         ──▶ success
//! ChannelBind(0x4000, peer) + auth      ──▶ success        … ChannelData flows …
//! Refresh(LIFETIME 0) + auth            ──▶ success        (frees the allocation)
//! ```
//!
//! Any request answered with 438 (Stale Nonce) is sent again with the new nonce. Over UDP
//! requests are retransmitted every [`RETRANSMIT_AFTER`] up to [`ATTEMPTS`] times, so every
//! transaction ends within a bounded time (over a stream, never retransmitted, RFC 8489
//! §6.2.2, within the transport's own timeout). Responses are matched by transaction id; their MESSAGE-INTEGRITY is
//! not checked (this is a load generator on loopback, not a security boundary).
//!
//! [RFC 8656]: https://www.rfc-editor.org/rfc/rfc8656

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, bail};
use boson_dataplane_proto::stun::{
    Class, EncodeError, Encoder, ErrorCodeAttr, LongTermKey, Message, MessageType, Method, Nonce,
    Realm, Trailer, TransactionId, Username,
};
use boson_dataplane_proto::turn::ChannelNumber;
use boson_dataplane_proto::turn::attr::{
    Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use boson_shared::TurnCredential;

/// Wait this long for a response before sending the request again (loopback answers in
/// microseconds; this only covers a busy or still-starting server).
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(250);

/// Sends of one request before giving up: 8 × 250 ms = 2 s per transaction at most.
pub const ATTEMPTS: u32 = 8;

/// Authentication rounds (401, 438) one request may go through before giving up.
const AUTH_ROUNDS: u32 = 3;

/// The long-term credential state after the server's challenge.
#[derive(Debug, Clone)]
pub struct LongTermAuth {
    username: String,
    realm: String,
    nonce: String,
    key: LongTermKey,
}

impl LongTermAuth {
    /// Credentials for `realm` with the server's `nonce`.
    pub fn new(credential: &TurnCredential, realm: &str, nonce: &str) -> Self {
        Self {
            username: credential.username.clone(),
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            key: LongTermKey::derive(&credential.username, realm, &credential.password),
        }
    }
}

/// What a server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A success response; for Allocate, with the relayed address.
    Success {
        /// XOR-RELAYED-ADDRESS, if present.
        relayed: Option<SocketAddr>,
    },
    /// 401 with the realm and nonce to authenticate with.
    Challenge {
        /// REALM.
        realm: String,
        /// NONCE.
        nonce: String,
    },
    /// 438: the nonce expired; here is a new one.
    StaleNonce {
        /// NONCE.
        nonce: String,
    },
    /// Any other error response.
    Error {
        /// The ERROR-CODE number (0 if absent).
        code: u16,
    },
}

/// Encodes a request of `method` into `buf`: the attributes `body` adds, then (with `auth`)
/// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY, then FINGERPRINT. Returns the length.
pub fn encode_request(
    buf: &mut [u8],
    method: Method,
    transaction: TransactionId,
    auth: Option<&LongTermAuth>,
    body: &dyn Fn(&mut Encoder<'_>) -> Result<(), EncodeError>,
) -> anyhow::Result<usize> {
    let mut encoder = Encoder::new(buf, MessageType::new(method, Class::Request), transaction)?;
    body(&mut encoder)?;
    let trailer = Trailer::new().with_fingerprint();
    let len = match auth {
        Some(auth) => {
            encoder.add(&Username::new(&auth.username)?)?;
            encoder.add(&Realm::new(&auth.realm)?)?;
            encoder.add(&Nonce::new(&auth.nonce)?)?;
            encoder.finish(trailer.with_integrity(auth.key.as_integrity_key()))?
        }
        None => encoder.finish(trailer)?,
    };
    Ok(len)
}

/// Reads a response to `transaction`; `None` if `datagram` is not a STUN response to it.
pub fn parse_reply(datagram: &[u8], transaction: TransactionId) -> Option<Reply> {
    let message = Message::parse(datagram).ok()?;
    if message.transaction_id() != transaction {
        return None;
    }
    let text = |value: Option<&str>| value.map(str::to_owned);
    match message.class() {
        Class::SuccessResponse => Some(Reply::Success {
            relayed: message
                .get::<XorRelayedAddress>()
                .ok()
                .flatten()
                .map(|a| a.0),
        }),
        Class::ErrorResponse => {
            let code = message
                .get::<ErrorCodeAttr<'_>>()
                .ok()
                .flatten()
                .map_or(0, |e| e.code().as_u16());
            let realm = text(
                message
                    .get::<Realm<'_>>()
                    .ok()
                    .flatten()
                    .map(|r| r.as_str()),
            );
            let nonce = text(
                message
                    .get::<Nonce<'_>>()
                    .ok()
                    .flatten()
                    .map(|n| n.as_str()),
            );
            Some(match (code, realm, nonce) {
                (401, Some(realm), Some(nonce)) => Reply::Challenge { realm, nonce },
                (438, _, Some(nonce)) => Reply::StaleNonce { nonce },
                (code, _, _) => Reply::Error { code },
            })
        }
        Class::Request | Class::Indication => None,
    }
}

/// How a session's requests reach the server and its answers come back.
pub trait Transport {
    /// Sends `request` and returns the server's answer to `transaction`, reading into
    /// `buf`.
    fn exchange(
        &mut self,
        request: &[u8],
        transaction: TransactionId,
        buf: &mut [u8],
    ) -> anyhow::Result<Reply>;
}

/// One client 5-tuple talking TURN to one server: one allocation. Over UDP (a connected
/// [`UdpSocket`], the default) or any other [`Transport`], such as
/// [`TcpTransport`](crate::turn_tcp_client::TcpTransport).
#[derive(Debug)]
pub struct TurnSession<T = UdpSocket> {
    transport: T,
    credential: TurnCredential,
    auth: Option<LongTermAuth>,
    buf: Vec<u8>,
}

impl TurnSession<UdpSocket> {
    /// A new client socket on 127.0.0.1, connected to `server`.
    pub fn connect(server: SocketAddr, credential: TurnCredential) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding a TURN client socket")?;
        socket
            .connect(server)
            .with_context(|| format!("connecting to {server}"))?;
        socket.set_read_timeout(Some(RETRANSMIT_AFTER))?;
        Ok(Self::over(socket, credential))
    }

    /// The client socket (connected to the server).
    pub const fn socket(&self) -> &UdpSocket {
        &self.transport
    }
}

impl<T: Transport> TurnSession<T> {
    /// A session over `transport`, not yet authenticated.
    pub fn over(transport: T, credential: TurnCredential) -> Self {
        Self {
            transport,
            credential,
            auth: None,
            buf: vec![0; 1500],
        }
    }

    /// Allocates a UDP relay; returns the relayed address.
    pub fn allocate(&mut self) -> anyhow::Result<SocketAddr> {
        let reply = self.transact(Method::ALLOCATE, &|enc| enc.add(&RequestedTransport::UDP))?;
        match reply {
            Reply::Success {
                relayed: Some(relayed),
            } => Ok(relayed),
            Reply::Success { relayed: None } => {
                bail!("Allocate succeeded without a relayed address")
            }
            other @ (Reply::Challenge { .. } | Reply::StaleNonce { .. } | Reply::Error { .. }) => {
                bail!("Allocate failed: {other:?}")
            }
        }
    }

    /// Permits `peer`'s IP on the allocation.
    pub fn create_permission(&mut self, peer: SocketAddr) -> anyhow::Result<()> {
        let reply = self.transact(Method::CREATE_PERMISSION, &|enc| {
            enc.add(&XorPeerAddress(peer))
        })?;
        ensure_success("CreatePermission", &reply)
    }

    /// Binds `channel` to `peer`.
    pub fn channel_bind(&mut self, channel: ChannelNumber, peer: SocketAddr) -> anyhow::Result<()> {
        let reply = self.transact(Method::CHANNEL_BIND, &|enc| {
            enc.add(&channel)?;
            enc.add(&XorPeerAddress(peer))
        })?;
        ensure_success("ChannelBind", &reply)
    }

    /// Deletes the allocation (Refresh with LIFETIME 0).
    pub fn release(&mut self) -> anyhow::Result<()> {
        let reply = self.transact(Method::REFRESH, &|enc| enc.add(&Lifetime(0)))?;
        ensure_success("Refresh", &reply)
    }

    /// The transport, to send ChannelData on.
    pub const fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// One request, through as many authentication rounds as the server asks for.
    fn transact(
        &mut self,
        method: Method,
        body: &dyn Fn(&mut Encoder<'_>) -> Result<(), EncodeError>,
    ) -> anyhow::Result<Reply> {
        for _ in 0..AUTH_ROUNDS {
            let transaction = TransactionId::new(rand::random());
            let len = encode_request(&mut self.buf, method, transaction, self.auth.as_ref(), body)?;
            let request = self.buf[..len].to_vec();
            let reply = self
                .transport
                .exchange(&request, transaction, &mut self.buf)?;
            match reply {
                Reply::Challenge { realm, nonce } => {
                    self.auth = Some(LongTermAuth::new(&self.credential, &realm, &nonce));
                }
                Reply::StaleNonce { nonce } => {
                    let Some(auth) = self.auth.as_mut() else {
                        bail!("438 Stale Nonce to an unauthenticated request");
                    };
                    auth.nonce = nonce;
                }
                Reply::Success { .. } | Reply::Error { .. } => return Ok(reply),
            }
        }
        bail!(
            "{} still unauthenticated after {AUTH_ROUNDS} rounds",
            method.name().unwrap_or("request")
        )
    }
}

/// Over UDP a request is sent again every [`RETRANSMIT_AFTER`], at most [`ATTEMPTS`] times.
impl Transport for UdpSocket {
    fn exchange(
        &mut self,
        request: &[u8],
        transaction: TransactionId,
        buf: &mut [u8],
    ) -> anyhow::Result<Reply> {
        for _ in 0..ATTEMPTS {
            self.send(request).context("sending a TURN request")?;
            // Skip anything else until the read timeout (stale retransmitted responses).
            for _ in 0..64 {
                match self.recv(buf) {
                    Ok(len) => {
                        if let Some(reply) = parse_reply(&buf[..len], transaction) {
                            return Ok(reply);
                        }
                    }
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // ICMP port unreachable: the server is not (yet) there; retry.
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(RETRANSMIT_AFTER);
                        break;
                    }
                    Err(error) => return Err(error).context("receiving a TURN response"),
                }
            }
        }
        bail!(
            "no response from {} after {ATTEMPTS} attempts",
            self.peer_addr()
                .map_or_else(|_| "the server".to_owned(), |a| a.to_string())
        )
    }
}

fn ensure_success(what: &str, reply: &Reply) -> anyhow::Result<()> {
    match reply {
        Reply::Success { .. } => Ok(()),
        Reply::Challenge { .. } | Reply::StaleNonce { .. } | Reply::Error { .. } => {
            bail!("{what} failed: {reply:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use boson_dataplane_proto::stun::ErrorCode;
    use boson_shared::TurnSecret;

    use super::*;

    fn credential() -> TurnCredential {
        TurnCredential::mint(&TurnSecret::new("s3cret"), "bench-0", 4_000_000_000)
    }

    #[test]
    fn unauthenticated_allocate_is_bare() {
        let mut buf = [0u8; 512];
        let tid = TransactionId::new([3; 12]);
        let len = encode_request(&mut buf, Method::ALLOCATE, tid, None, &|enc| {
            enc.add(&RequestedTransport::UDP)
        })
        .unwrap();
        let message = Message::parse(&buf[..len]).unwrap();
        assert_eq!(message.method(), Method::ALLOCATE);
        assert_eq!(message.class(), Class::Request);
        assert_eq!(
            message.get::<RequestedTransport>().unwrap(),
            Some(RequestedTransport::UDP)
        );
        assert!(!message.has_integrity());
        assert!(message.has_fingerprint());
        message.verify_fingerprint().unwrap();
    }

    #[test]
    fn authenticated_requests_verify_under_the_long_term_key() {
        let credential = credential();
        let auth = LongTermAuth::new(&credential, "bosonserver", "nonce-1");
        let peer: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let channel = ChannelNumber::MIN;
        let mut buf = [0u8; 512];
        let tid = TransactionId::new([5; 12]);
        let len = encode_request(&mut buf, Method::CHANNEL_BIND, tid, Some(&auth), &|enc| {
            enc.add(&channel)?;
            enc.add(&XorPeerAddress(peer))
        })
        .unwrap();
        let message = Message::parse(&buf[..len]).unwrap();
        let key = LongTermKey::derive(&credential.username, "bosonserver", &credential.password);
        message.verify_integrity(key.as_integrity_key()).unwrap();
        assert_eq!(
            message.get::<XorPeerAddress>().unwrap(),
            Some(XorPeerAddress(peer))
        );
        assert_eq!(message.get::<ChannelNumber>().unwrap(), Some(channel));
        assert_eq!(
            message.get::<Username<'_>>().unwrap().map(|u| u.as_str()),
            Some(credential.username.as_str())
        );
        assert_eq!(
            message.get::<Nonce<'_>>().unwrap().map(|n| n.as_str()),
            Some("nonce-1")
        );
    }

    fn response(
        class: Class,
        tid: TransactionId,
        build: &dyn Fn(&mut Encoder<'_>) -> Result<(), EncodeError>,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut enc =
            Encoder::new(&mut buf, MessageType::new(Method::ALLOCATE, class), tid).unwrap();
        build(&mut enc).unwrap();
        let len = enc.finish(Trailer::new()).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn replies_are_classified() {
        let tid = TransactionId::new([9; 12]);
        let relayed: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let success = response(Class::SuccessResponse, tid, &|enc| {
            enc.add(&XorRelayedAddress(relayed))
        });
        assert_eq!(
            parse_reply(&success, tid),
            Some(Reply::Success {
                relayed: Some(relayed)
            })
        );
        assert_eq!(
            parse_reply(&success, TransactionId::new([1; 12])),
            None,
            "another transaction"
        );

        let challenge = response(Class::ErrorResponse, tid, &|enc| {
            enc.add(&ErrorCodeAttr::with_default_reason(
                ErrorCode::UNAUTHENTICATED,
            ))?;
            enc.add(&Realm::new("r").unwrap())?;
            enc.add(&Nonce::new("n").unwrap())
        });
        assert_eq!(
            parse_reply(&challenge, tid),
            Some(Reply::Challenge {
                realm: "r".into(),
                nonce: "n".into()
            })
        );

        let stale = response(Class::ErrorResponse, tid, &|enc| {
            enc.add(&ErrorCodeAttr::with_default_reason(ErrorCode::STALE_NONCE))?;
            enc.add(&Nonce::new("n2").unwrap())
        });
        assert_eq!(
            parse_reply(&stale, tid),
            Some(Reply::StaleNonce { nonce: "n2".into() })
        );

        let quota = response(Class::ErrorResponse, tid, &|enc| {
            enc.add(&ErrorCodeAttr::with_default_reason(
                ErrorCode::ALLOCATION_QUOTA_REACHED,
            ))
        });
        assert_eq!(parse_reply(&quota, tid), Some(Reply::Error { code: 486 }));
        assert_eq!(parse_reply(b"\x40\x00\x00\x00", tid), None, "ChannelData");
    }
}
