//! The relay-socket machinery the TURN core will use, driven by a fake [`PacketCore`]:
//! commands bind and close relay sockets, and datagrams flow both ways through them without
//! a copy, with the core writing headers into the headroom and padding into the tailroom.
//!
//! The fake core speaks text on the listener:
//!
//! * `ALLOC <port>` → `CreateAllocation`, replies `OK <port>`;
//! * `FREE <port>` → `FreeAllocation`, replies `FREED <port>`;
//! * `SEND <port> <peer> <payload>` → `Relay` of `<payload>` from relay `<port>` to `<peer>`;
//!
//! and wraps a datagram from a peer on a relay socket like TURN would: a payload starting with
//! `C` gets a 4-byte ChannelData-like header, anything else a 48-byte Data-indication-sized
//! header plus zero padding to a multiple of 4.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::str;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use boson_dataplane::{
    ClientAction, Command, HEADROOM, IoBackend, PacketCore, PeerAction, PeerAddr, RelayPort,
    WorkerInfo, start,
};
use boson_dataplane_proto::{ClientAddr, DropReason, Stats};
use common::{available, client, config, total, wait_for};

struct FakeCore {
    commands: Vec<Command>,
    client: Option<ClientAddr>,
    failed: Arc<AtomicUsize>,
    stats: Stats,
}

impl PacketCore for FakeCore {
    fn handle_listener(
        &mut self,
        _now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        let Ok(text) = str::from_utf8(packet) else {
            return ClientAction::Drop(DropReason::NotStun);
        };
        let mut words = text.splitn(4, ' ');
        let reply = |out: &mut [u8], text: &str| {
            out[..text.len()].copy_from_slice(text.as_bytes());
            ClientAction::Reply {
                dst: from,
                len: text.len(),
            }
        };
        match (words.next(), words.next().and_then(|p| p.parse().ok())) {
            (Some("ALLOC"), Some(port)) => {
                self.client = Some(from);
                self.commands.push(Command::CreateAllocation {
                    port: RelayPort::new(port),
                });
                reply(out, &format!("OK {port}"))
            }
            (Some("FREE"), Some(port)) => {
                self.commands.push(Command::FreeAllocation {
                    port: RelayPort::new(port),
                });
                reply(out, &format!("FREED {port}"))
            }
            (Some("SEND"), Some(port)) => {
                let peer: SocketAddr = words.next().unwrap().parse().unwrap();
                let payload = words.next().unwrap_or("");
                let start = text.len() - payload.len();
                ClientAction::Relay {
                    port: RelayPort::new(port),
                    peer: PeerAddr::new(peer),
                    payload: start..text.len(),
                }
            }
            _ => ClientAction::Drop(DropReason::UnsupportedMethod),
        }
    }

    fn handle_relay(
        &mut self,
        _now: Instant,
        port: RelayPort,
        _from: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        let Some(client) = self.client else {
            return PeerAction::Drop(DropReason::UnsupportedMethod);
        };
        assert!(buf.len() >= HEADROOM + len + 4, "tailroom for padding");
        let is_channel = buf[HEADROOM] == b'C';
        let start = if is_channel {
            let header = [0x40, 0x00, 0, len as u8];
            buf[HEADROOM - 4..HEADROOM].copy_from_slice(&header);
            HEADROOM - 4
        } else {
            let mut header = [b'H'; HEADROOM];
            header[..2].copy_from_slice(&port.get().to_be_bytes());
            buf[..HEADROOM].copy_from_slice(&header);
            0
        };
        let mut end = HEADROOM + len;
        if !is_channel {
            let padded = HEADROOM + len.next_multiple_of(4);
            buf[end..padded].fill(0);
            end = padded;
        }
        PeerAction::Forward {
            dst: client,
            range: start..end,
        }
    }

    fn next_command(&mut self) -> Option<Command> {
        (!self.commands.is_empty()).then(|| self.commands.remove(0))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_relay_failed(&mut self, _port: RelayPort) {
        self.client = None;
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (len, from) = socket.recv_from(&mut buf).expect("a datagram");
    (buf[..len].to_vec(), from)
}

fn relays_both_ways(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let failed = Arc::new(AtomicUsize::new(0));
    let failed_in_core = Arc::clone(&failed);
    let dataplane = start(config(backend, 2), move |_: WorkerInfo| FakeCore {
        commands: Vec::new(),
        client: None,
        failed: Arc::clone(&failed_in_core),
        stats: Stats::default(),
    })
    .unwrap();
    let server = dataplane.local_addr();
    let client = client();
    let peer = common::client();

    // Allocate: the relay socket is bound before the reply is even queued.
    let port = free_port();
    client
        .send_to(format!("ALLOC {port}").as_bytes(), server)
        .unwrap();
    assert_eq!(recv(&client), (format!("OK {port}").into_bytes(), server));
    let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(UdpSocket::bind(relay).is_err(), "relay port is bound");
    let stats = wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.relay_sockets) == 1,
    );
    assert_eq!(total(&stats, |w| w.counters.relay_bind_failed), 0);

    // Peer → client, ChannelData-style: 4-byte header written into the headroom.
    peer.send_to(b"Channel payload", relay).unwrap();
    let (got, from) = recv(&client);
    assert_eq!(from, server, "forwarded from the listener socket");
    assert_eq!(&got[..4], &[0x40, 0x00, 0, 15]);
    assert_eq!(&got[4..], b"Channel payload");

    // Peer → client, Data-indication-style: the whole headroom plus padding in the tailroom.
    peer.send_to(b"data 13 bytes", relay).unwrap();
    let (got, _) = recv(&client);
    assert_eq!(got.len(), HEADROOM + 16);
    assert_eq!(&got[..2], &port.to_be_bytes());
    assert!(got[2..HEADROOM].iter().all(|&b| b == b'H'));
    assert_eq!(&got[HEADROOM..HEADROOM + 13], b"data 13 bytes");
    assert_eq!(&got[HEADROOM + 13..], &[0, 0, 0]);

    // Peer → client, a GSO batch (12 datagrams of 200 bytes and a short one of 50): the
    // relay socket receives it as one GRO batch, the core sees each datagram, and the
    // client gets each, wrapped, in order; the wrapped ones leave as one GSO send.
    let before = dataplane.stats();
    let sizes: Vec<usize> = (0..12).map(|_| 200).chain([50]).collect();
    let datagram = |i: usize, len: usize| -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
        d[0] = b'C';
        d
    };
    let batch: Vec<u8> = sizes
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| datagram(i, len))
        .collect();
    boson_testsupport::udp::send_gso(&peer, relay, &batch, 200);
    for (i, &len) in sizes.iter().enumerate() {
        let (got, from) = recv(&client);
        assert_eq!(from, server);
        assert_eq!(got[..4], [0x40, 0x00, 0, len as u8], "datagram {i}");
        assert_eq!(got[4..], datagram(i, len), "datagram {i}");
    }
    let after = wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.packets_out) >= total(&before, |w| w.counters.packets_out) + 13,
    );
    let grown =
        |f: fn(&boson_dataplane::WorkerStatsSnapshot) -> u64| total(&after, f) - total(&before, f);
    assert_eq!(grown(|w| w.counters.rx_gro_batches), 1, "one GRO receive");
    assert_eq!(grown(|w| w.counters.tx_gso_sends), 1, "one GSO send");
    assert_eq!(grown(|w| w.counters.udp_offload_refused), 0);

    // Client → peer: the payload goes out of the relay socket.
    let send = format!("SEND {port} {} hello peer", peer.local_addr().unwrap());
    client.send_to(send.as_bytes(), server).unwrap();
    let (got, from) = recv(&peer);
    assert_eq!(got, b"hello peer");
    assert_eq!(from, relay, "sent from the relay socket");

    // Free: the socket closes and the port can be bound again.
    client
        .send_to(format!("FREE {port}").as_bytes(), server)
        .unwrap();
    assert_eq!(recv(&client).0, format!("FREED {port}").into_bytes());
    wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.relay_sockets) == 0,
    );
    let rebound = (0..100).find_map(|_| {
        UdpSocket::bind(relay)
            .inspect_err(|_| std::thread::sleep(Duration::from_millis(10)))
            .ok()
    });
    let rebound = rebound.expect("relay port released");

    // A port that cannot be bound: the core hears about it and the reply is withheld.
    client
        .send_to(format!("ALLOC {port}").as_bytes(), server)
        .unwrap();
    let stats = wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.relay_bind_failed) == 1,
    );
    assert_eq!(failed.load(Ordering::Relaxed), 1);
    assert_eq!(total(&stats, |w| w.counters.relay_sockets), 0);
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(client.recv_from(&mut [0u8; 64]).is_err(), "no OK for it");
    drop(rebound);

    let stats = dataplane.shutdown().unwrap();
    assert_eq!(total(&stats, |w| w.counters.sends_failed), 0);
    assert_eq!(total(&stats, |w| w.counters.bad_core_range), 0);
    assert_eq!(total(&stats, |w| w.counters.relay_missing), 0);
}

#[test]
fn relays_both_ways_uring() {
    relays_both_ways(IoBackend::Uring);
}

#[test]
fn relays_both_ways_epoll() {
    relays_both_ways(IoBackend::Epoll);
}
