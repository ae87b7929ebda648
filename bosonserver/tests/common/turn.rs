//! The binary's tests' TURN client: the node library's blocking request-level client
//! (`boson_node::turn_blocking`) on a UDP socket of the test's choosing, with REST
//! credentials minted here, and the tests' channel numbers as plain numbers.
//! `turn_interop.rs` checks the server against coturn's own client instead.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use boson_dataplane_proto::ChannelNumber;
pub(crate) use boson_node::turn::Answer;
use boson_node::turn_blocking::BlockingTurn;
use boson_shared::{TurnCredential, TurnSecret};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

/// One TURN client: one UDP socket (on loopback unless told otherwise), one REST credential.
pub(crate) struct TurnClient(BlockingTurn<StdRng>);

impl Deref for TurnClient {
    type Target = BlockingTurn<StdRng>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for TurnClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
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

    /// As [`with_credential`](Self::with_credential), from a socket on `ip`. The socket's
    /// 250 ms read timeout is the retransmission interval.
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
        Self(BlockingTurn::new(
            socket,
            server,
            username,
            password,
            StdRng::from_os_rng(),
        ))
    }

    pub(crate) fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> io::Result<Answer> {
        self.0.channel_bind(channel(number), peer)
    }

    /// Sends `payload` on channel `number`.
    pub(crate) fn send_channel_data(&self, number: u16, payload: &[u8]) -> io::Result<()> {
        self.0.send_channel_data(channel(number), payload)
    }

    /// The next ChannelData frame's (channel, payload), skipping STUN; `None` on timeout.
    pub(crate) fn recv_channel_data(&mut self) -> Option<(u16, Vec<u8>)> {
        let (number, payload) = self.0.recv_channel_data()?;
        Some((number.get(), payload))
    }
}

/// A channel number the test chose.
fn channel(number: u16) -> ChannelNumber {
    ChannelNumber::new(number).unwrap()
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
