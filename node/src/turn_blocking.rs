//! A blocking TURN client over one UDP socket, request by request: each call sends one
//! request ([`TurnRequest`]) and waits for its final answer, going through the 401
//! challenge and 438 Stale Nonce with [`Credentials`] and retransmitting on the socket's
//! read timeout. For the project's tests and tools, which ask for exactly the requests they
//! mean to (a Refresh to 0, a ChannelBind the server must refuse); the agent's allocation
//! runs on [`TurnClient`](crate::turn::TurnClient) instead. Every encoding and parse is
//! [`crate::turn`]'s, on proto's codec.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use boson_dataplane_proto::ChannelNumber;
use boson_dataplane_proto::stun::{Class, Message, TransactionId};
use boson_dataplane_proto::turn::channel_data::ChannelData;
use rand_core::RngCore;

use crate::turn::{Answer, Credentials, TurnRequest, encode_channel_data, encode_send_indication};

/// Sends of one request before it is given up: with the socket's read timeout between
/// them, a lost datagram or two costs a little time, not the test.
pub const SENDS: u32 = 12;

/// Rounds of 401/438 a request may go through: a server that keeps challenging gets its
/// challenge back as the final answer.
const CHALLENGES: u32 = 2;

/// A TURN client of `server` on one UDP socket, generic over the RNG that picks
/// transaction ids.
#[derive(Debug)]
pub struct BlockingTurn<R> {
    socket: UdpSocket,
    server: SocketAddr,
    credentials: Credentials,
    rng: R,
    buf: Vec<u8>,
}

impl<R: RngCore> BlockingTurn<R> {
    /// A client of `server` on `socket` with the REST credential `username`/`password`. The
    /// socket's read timeout is the retransmission interval.
    pub fn new(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
        rng: R,
    ) -> Self {
        Self {
            socket,
            server,
            credentials: Credentials::new(username, password),
            rng,
            buf: vec![0; 2048],
        }
    }

    /// Sends `request` and returns its final answer, signed after a challenge and sent
    /// again after a stale nonce; `Err` if nothing answered after [`SENDS`] sends, or a
    /// success did not carry our MESSAGE-INTEGRITY.
    pub fn request(&mut self, request: TurnRequest) -> io::Result<Answer> {
        let mut challenges = 0;
        loop {
            let mut txid = [0u8; 12];
            self.rng.fill_bytes(&mut txid);
            let txid = TransactionId::new(txid);
            let signed = request.is_signed(&self.credentials);
            let mut bytes = vec![0u8; 1024];
            let len = request
                .encode(&self.credentials, txid, &mut bytes)
                .ok_or_else(|| io::Error::other("the request does not fit 1024 bytes"))?;
            bytes.truncate(len);
            let len = self.transact(&bytes, txid)?;
            let message = Message::parse(&self.buf[..len])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unparsable answer"))?;
            if challenges < CHALLENGES && self.credentials.handle_challenge(&message).is_some() {
                challenges += 1;
                continue;
            }
            if message.class() == Class::SuccessResponse
                && signed
                && !self.credentials.verify(&message)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a success without our MESSAGE-INTEGRITY",
                ));
            }
            return Ok(Answer::parse(&message));
        }
    }

    /// Allocates a UDP relay for the server's default lifetime.
    pub fn allocate(&mut self) -> io::Result<Answer> {
        self.request(TurnRequest::Allocate { lifetime: None })
    }

    /// Refreshes the allocation for `lifetime` seconds (0 deletes it).
    pub fn refresh(&mut self, lifetime: u32) -> io::Result<Answer> {
        self.request(TurnRequest::Refresh { lifetime })
    }

    /// Installs a permission for `peer`.
    pub fn create_permission(&mut self, peer: SocketAddr) -> io::Result<Answer> {
        self.request(TurnRequest::CreatePermission(peer))
    }

    /// Binds `number` to `peer`.
    pub fn channel_bind(&mut self, number: ChannelNumber, peer: SocketAddr) -> io::Result<Answer> {
        self.request(TurnRequest::ChannelBind { number, peer })
    }

    /// Sends `payload` to `peer` in a Send indication (no answer comes).
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        let mut out = Vec::with_capacity(payload.len() + 64);
        encode_send_indication(TransactionId::new(txid), peer, payload, &mut out)
            .map_err(io::Error::other)?;
        self.socket.send_to(&out, self.server)?;
        Ok(())
    }

    /// Sends `payload` on channel `number`.
    pub fn send_channel_data(&self, number: ChannelNumber, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 4);
        encode_channel_data(number, payload, &mut out).map_err(io::Error::other)?;
        self.socket.send_to(&out, self.server)?;
        Ok(())
    }

    /// The next ChannelData frame's channel and payload, skipping anything else; `None`
    /// when the read times out.
    pub fn recv_channel_data(&mut self) -> Option<(ChannelNumber, Vec<u8>)> {
        loop {
            let (len, _) = self.socket.recv_from(&mut self.buf).ok()?;
            if let Ok(frame) = ChannelData::parse(&self.buf[..len]) {
                return Some((frame.number, self.buf[frame.payload].to_vec()));
            }
        }
    }

    /// The socket, to set its options or read from it directly.
    pub const fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Sends `request` until a response with `txid` arrives; its length in `self.buf`.
    fn transact(&mut self, request: &[u8], txid: TransactionId) -> io::Result<usize> {
        for _ in 0..SENDS {
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
                // ChannelData from an earlier exchange, or an answer to an earlier request.
                let answers = Message::parse(&self.buf[..len]).is_ok_and(|message| {
                    message.transaction_id() == txid
                        && matches!(
                            message.class(),
                            Class::SuccessResponse | Class::ErrorResponse
                        )
                });
                if answers {
                    return Ok(len);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no STUN answer"))
    }
}
