//! The punching state machine in simulated time, between two hosts behind simulated NATs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::config::RouteKind;
use crate::route::RouteSelector;
use crate::testing::{Counter, epoch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nat {
    /// Endpoint-independent mapping, address-and-port-dependent filtering (Linux
    /// MASQUERADE).
    EndpointIndependent,
    /// A new port for every destination (MASQUERADE --random-fully).
    Symmetric,
}

/// A NAT with one public address: mappings from (inside, outside destination) to a public
/// port, and the destinations each public port has sent to (its filter).
struct SimNat {
    kind: Nat,
    public: Ipv4Addr,
    next_port: u16,
    mappings: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → (inside address, destinations it sent to).
    ports: BTreeMap<u16, (SocketAddr, Vec<SocketAddr>)>,
}

impl SimNat {
    fn new(kind: Nat, public: Ipv4Addr) -> Self {
        Self {
            kind,
            public,
            next_port: 40_000,
            mappings: BTreeMap::new(),
            ports: BTreeMap::new(),
        }
    }

    /// An outgoing datagram from `inside` to `dst`: its public source.
    fn outbound(&mut self, inside: SocketAddr, dst: SocketAddr) -> SocketAddr {
        let key = match self.kind {
            Nat::EndpointIndependent => (inside, None),
            Nat::Symmetric => (inside, Some(dst)),
        };
        let port = *self.mappings.entry(key).or_insert_with(|| {
            self.next_port += 7;
            self.next_port
        });
        let entry = self
            .ports
            .entry(port)
            .or_insert_with(|| (inside, Vec::new()));
        if !entry.1.contains(&dst) {
            entry.1.push(dst);
        }
        SocketAddr::from((self.public, port))
    }

    /// An incoming datagram to `public_port` from `src`: the inside address, if the filter
    /// lets it in.
    fn inbound(&self, public_port: u16, src: SocketAddr) -> Option<SocketAddr> {
        let (inside, sent_to) = self.ports.get(&public_port)?;
        sent_to.contains(&src).then_some(*inside)
    }
}

const STUN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);
const LATENCY: Duration = Duration::from_millis(15);
const SIGNAL_LATENCY: Duration = Duration::from_millis(40);

struct Side {
    path: DirectPath<Counter>,
    nat: SimNat,
    inside: SocketAddr,
    events: Vec<(Instant, DirectEvent)>,
    /// Signalling messages this side sent.
    signals_sent: u32,
}

/// A datagram on the simulated internet.
struct InFlight {
    at: Instant,
    to_side: usize,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

struct World {
    now: Instant,
    sides: [Side; 2],
    wire: Vec<InFlight>,
    signals: Vec<(Instant, usize, Signal)>,
    /// Datagrams to side `i` are lost while set (a path that dies).
    black_hole: [bool; 2],
    /// Every probe that crossed the internet, as (src, dst, bytes): what an eavesdropper
    /// on the path sees.
    captured: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Signalling sent before this instant is lost (the relay not carrying it yet).
    signals_lost_until: Instant,
}

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

impl World {
    fn new(nats: [Nat; 2]) -> Self {
        let now = epoch();
        let make = |i: u8, kind: Nat| {
            let inside = SocketAddr::from(([192, 168, i + 1, 10], 5000));
            let mut nat = SimNat::new(kind, Ipv4Addr::new(203, 0, 113, i + 1));
            // STUN from the direct socket: the mapped address the peer is told about.
            let mapped = nat.outbound(inside, STUN);
            let path = DirectPath::new(
                node(i + 1),
                node(2 - i),
                vec![mapped, inside],
                now,
                Counter(u64::from(i) + 11),
            );
            Side {
                path,
                nat,
                inside,
                events: Vec::new(),
                signals_sent: 0,
            }
        };
        Self {
            now,
            sides: [make(0, nats[0]), make(1, nats[1])],
            wire: Vec::new(),
            signals: Vec::new(),
            black_hole: [false; 2],
            captured: Vec::new(),
            signals_lost_until: now,
        }
    }

    /// Drains what each side wants to send.
    fn drain(&mut self) {
        for i in 0..2 {
            while let Some(t) = self.sides[i].path.poll_transmit() {
                self.send_from(i, t.dst, t.bytes.to_vec());
            }
            while let Some(signal) = self.sides[i].path.poll_signal() {
                self.sides[i].signals_sent += 1;
                if self.now >= self.signals_lost_until {
                    self.signals
                        .push((self.now + SIGNAL_LATENCY, 1 - i, signal));
                }
            }
            while let Some(event) = self.sides[i].path.poll_event() {
                self.sides[i].events.push((self.now, event));
            }
        }
    }

    fn send_from(&mut self, i: usize, dst: SocketAddr, bytes: Vec<u8>) {
        let inside = self.sides[i].inside;
        let src = self.sides[i].nat.outbound(inside, dst);
        // Only the other side's public address is routable: LAN addresses are not.
        let other = 1 - i;
        if dst.ip() == std::net::IpAddr::V4(self.sides[other].nat.public) {
            self.captured.push((src, dst, bytes.clone()));
            self.wire.push(InFlight {
                at: self.now + LATENCY,
                to_side: other,
                src,
                dst,
                bytes,
            });
        }
    }

    /// Runs until `until`, in 5 ms steps.
    fn run_until(&mut self, until: Instant) {
        while self.now < until {
            self.now += Duration::from_millis(5);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.signals)
                .into_iter()
                .partition(|s| s.0 <= now);
            self.signals = later;
            for (_, to, signal) in due {
                if let Signal::Candidates { secret, addrs } = signal {
                    self.sides[to].path.handle_signal(now, secret, &addrs);
                }
            }
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                .into_iter()
                .partition(|p| p.at <= now);
            self.wire = later;
            for packet in due {
                if self.black_hole[packet.to_side] {
                    continue;
                }
                let side = &mut self.sides[packet.to_side];
                if side.nat.inbound(packet.dst.port(), packet.src).is_some() {
                    let _ = side.path.handle_probe(now, packet.src, &packet.bytes);
                }
            }
            for side in &mut self.sides {
                if side.path.poll_timeout().is_some_and(|t| t <= now) {
                    side.path.handle_timeout(now);
                }
            }
            self.drain();
        }
    }

    fn first(&self, i: usize, pred: impl Fn(&DirectEvent) -> bool) -> Option<Instant> {
        self.sides[i]
            .events
            .iter()
            .find(|(_, e)| pred(e))
            .map(|(at, _)| *at)
    }
}

#[test]
fn endpoint_independent_nats_punch_through_and_keep_the_path() {
    let mut w = World::new([Nat::EndpointIndependent, Nat::EndpointIndependent]);
    let t0 = w.now;
    w.drain();
    w.run_until(t0 + Duration::from_secs(3));
    for i in 0..2 {
        let peer_public = SocketAddr::from((w.sides[1 - i].nat.public, 40_007));
        assert_eq!(
            w.sides[i].path.path(),
            Some(peer_public),
            "side {i}: {:?}",
            w.sides[i].events
        );
        let up = w.first(i, |e| matches!(e, DirectEvent::Up(_))).unwrap();
        assert!(
            up - t0 < Duration::from_secs(1),
            "side {i} up after {:?}",
            up - t0
        );
    }
    // Two minutes on: the keepalives held it, and no signalling rode the relay after the
    // path came up.
    let signals = [w.sides[0].signals_sent, w.sides[1].signals_sent];
    w.run_until(t0 + Duration::from_secs(120));
    for i in 0..2 {
        assert!(w.sides[i].path.path().is_some());
        assert_eq!(w.sides[i].events.len(), 1, "{:?}", w.sides[i].events);
        assert!(w.sides[i].path.stats().pings_sent >= 20);
    }
    assert_eq!([w.sides[0].signals_sent, w.sides[1].signals_sent], signals);

    // Side 1 stops answering: side 0 drops the path within the bound, then punches again
    // (and tells the peer its candidates again), and gives up.
    w.black_hole[1] = true;
    let dead = w.now;
    w.run_until(dead + PATH_TIMEOUT + KEEPALIVE + Duration::from_secs(1));
    let down = w
        .first(0, |e| *e == DirectEvent::Down)
        .expect("path dropped");
    assert!(down - dead <= PATH_TIMEOUT + KEEPALIVE, "{:?}", down - dead);
    assert_eq!(w.sides[0].path.path(), None);
    assert!(w.sides[0].signals_sent > signals[0]);
    w.run_until(down + PUNCH_TIMEOUT + Duration::from_secs(1));
    assert!(w.first(0, |e| *e == DirectEvent::Failed).is_some());

    // The path heals: the retry finds it again.
    w.black_hole[1] = false;
    w.run_until(down + PUNCH_TIMEOUT + RETRY_INTERVAL + Duration::from_secs(2));
    assert!(w.sides[0].path.path().is_some(), "{:?}", w.sides[0].events);
    assert!(w.sides[1].path.path().is_some());
}

#[test]
fn symmetric_nats_fail_within_the_bound_and_the_selector_falls_back() {
    let mut w = World::new([Nat::Symmetric, Nat::Symmetric]);
    let t0 = w.now;
    let mut selector = RouteSelector::new(crate::route::AUTO_ROUTES.to_vec());
    w.drain();
    w.run_until(t0 + PUNCH_TIMEOUT + Duration::from_secs(1));
    for i in 0..2 {
        assert_eq!(w.sides[i].path.path(), None);
        let failed = w
            .first(i, |e| *e == DirectEvent::Failed)
            .unwrap_or_else(|| panic!("side {i} never gave up: {:?}", w.sides[i].events));
        assert!(
            failed - t0 <= PUNCH_TIMEOUT + Duration::from_millis(200),
            "side {i} gave up after {:?}",
            failed - t0
        );
        assert!(w.first(i, |e| matches!(e, DirectEvent::Up(_))).is_none());
    }
    // The selector never left the relays.
    for (_, event) in &w.sides[0].events {
        selector.set_direct(matches!(event, DirectEvent::Up(_)));
    }
    assert_eq!(selector.current(), RouteKind::Turn);
    // Quiet until the retry: no signalling on the relay between attempts.
    let signals = w.sides[0].signals_sent;
    w.run_until(t0 + RETRY_INTERVAL);
    assert_eq!(w.sides[0].signals_sent, signals);
    // It retries, and fails again.
    w.run_until(t0 + PUNCH_TIMEOUT * 2 + RETRY_INTERVAL + Duration::from_secs(1));
    assert!(w.sides[0].signals_sent > signals);
    let failures = w.sides[0]
        .events
        .iter()
        .filter(|(_, e)| *e == DirectEvent::Failed)
        .count();
    assert_eq!(failures, 2);
    assert_eq!(w.sides[0].path.path(), None);
}

#[test]
fn symmetric_to_endpoint_independent_fails_too() {
    let mut w = World::new([Nat::Symmetric, Nat::EndpointIndependent]);
    let t0 = w.now;
    w.drain();
    w.run_until(t0 + PUNCH_TIMEOUT + Duration::from_secs(1));
    assert_eq!(w.sides[0].path.path(), None);
    assert_eq!(w.sides[1].path.path(), None);
}

#[test]
fn a_stranger_cannot_take_the_path() {
    let mut w = World::new([Nat::EndpointIndependent, Nat::EndpointIndependent]);
    let t0 = w.now;
    w.drain();
    w.run_until(t0 + Duration::from_secs(2));
    let path = w.sides[0].path.path().unwrap();
    let stranger = SocketAddr::from(([192, 0, 2, 66], 6666));
    let now = w.now;
    // Replayed probes seen on the wire, from the stranger's address.
    let to_side0: Vec<Vec<u8>> = w
        .captured
        .iter()
        .filter(|(_, dst, _)| dst.ip() == std::net::IpAddr::V4(w.sides[0].nat.public))
        .map(|(_, _, bytes)| bytes.clone())
        .collect();
    let pong = to_side0
        .iter()
        .find(|b| ProbeHeader::parse(b).unwrap().kind == ProbeKind::Pong)
        .unwrap();
    let ping = to_side0
        .iter()
        .find(|b| ProbeHeader::parse(b).unwrap().kind == ProbeKind::Ping)
        .unwrap();
    let s0 = &mut w.sides[0].path;
    assert_eq!(
        s0.handle_probe(now, stranger, pong),
        Err(ProbeDrop::Unsolicited)
    );
    // A replayed PING gets its PONG, to the stranger: the path stays.
    assert_eq!(s0.handle_probe(now, stranger, ping), Ok(()));
    let answer = s0.poll_transmit().unwrap();
    assert_eq!(answer.dst, stranger);
    assert_eq!(s0.path(), Some(path));
    // A forged PONG (its MAC broken), and one claiming another sender.
    let mut forged = *pong.as_slice().first_chunk::<PROBE_LEN>().unwrap();
    forged[PROBE_LEN - 1] ^= 1;
    assert_eq!(
        s0.handle_probe(now, stranger, &forged),
        Err(ProbeDrop::BadMac)
    );
    let mut other = forged;
    other[6] ^= 0xFF;
    assert_eq!(
        s0.handle_probe(now, stranger, &other),
        Err(ProbeDrop::Malformed)
    );
    assert_eq!(
        s0.handle_probe(now, stranger, &pong[..20]),
        Err(ProbeDrop::Malformed)
    );
    assert_eq!(s0.path(), Some(path));
    assert!(s0.poll_event().is_none());
    // Replayed PINGs from many addresses while punching: the candidates stay bounded.
    // Keyed as side 0 is (the same seed draws the same secret).
    let mut punching = DirectPath::new(node(1), node(2), Vec::new(), now, Counter(11));
    let key_holder = &w.sides[0].path;
    punching.handle_signal(
        now,
        key_holder_remote_secret(key_holder),
        &[SocketAddr::from(([192, 0, 2, 1], 1))],
    );
    while punching.poll_transmit().is_some() {}
    for port in 0..100u16 {
        let _ = punching.handle_probe(now, SocketAddr::from(([192, 0, 2, 9], 1000 + port)), ping);
    }
    assert_eq!(punching.remote_candidates.len(), MAX_REMOTE_CANDIDATES);
    // Before the peer's secret arrives, no probe is taken at all.
    let mut fresh = DirectPath::new(node(1), node(2), Vec::new(), now, Counter(5));
    assert_eq!(
        fresh.handle_probe(now, stranger, ping),
        Err(ProbeDrop::NoKey)
    );
    assert!(fresh.poll_transmit().is_none());
}

/// The secret side 0 learnt from side 1, so a fresh path keyed like side 0 verifies side
/// 1's probes.
fn key_holder_remote_secret(path: &DirectPath<Counter>) -> [u8; 16] {
    path.remote_secret.unwrap()
}

#[test]
fn a_restarted_peer_is_punched_again() {
    let mut w = World::new([Nat::EndpointIndependent, Nat::EndpointIndependent]);
    let t0 = w.now;
    w.drain();
    w.run_until(t0 + Duration::from_secs(2));
    assert!(w.sides[0].path.path().is_some());
    // Side 1's agent restarts: a new secret, the same socket.
    let candidates = vec![
        SocketAddr::from((w.sides[1].nat.public, 40_007)),
        w.sides[1].inside,
    ];
    w.sides[1].path = DirectPath::new(node(2), node(1), candidates, w.now, Counter(99));
    w.drain();
    let restart = w.now;
    w.run_until(restart + Duration::from_secs(2));
    // Side 0 saw the new secret, dropped the old key and path, and found the path again.
    assert!(
        w.sides[0]
            .events
            .iter()
            .any(|(_, e)| *e == DirectEvent::Down),
        "{:?}",
        w.sides[0].events
    );
    assert!(w.sides[0].path.path().is_some());
    assert!(w.sides[1].path.path().is_some());
}

#[test]
fn probes_never_look_like_wireguard_or_stun() {
    let mut p = DirectPath::new(node(1), node(2), Vec::new(), epoch(), Counter(1));
    p.handle_signal(epoch(), [3; 16], &["192.0.2.1:1".parse().unwrap()]);
    let probe = p.poll_transmit().unwrap().bytes;
    assert!(is_probe(&probe));
    assert!(!(1..=4).contains(&probe[0]));
    // STUN's first two bits are zero.
    assert_ne!(probe[0] & 0xC0, 0);
    assert_eq!(
        ProbeHeader::parse(&probe).map(|h| (h.kind, h.sender)),
        Some((ProbeKind::Ping, node(1)))
    );
}

#[test]
fn a_silent_peer_is_given_up_and_the_relay_goes_quiet() {
    let t0 = epoch();
    let mut p = DirectPath::new(
        node(1),
        node(2),
        vec!["192.0.2.1:1".parse().unwrap()],
        t0,
        Counter(1),
    );
    let mut signals = 0;
    let mut failed = None;
    let mut now = t0;
    while now < t0 + RETRY_INTERVAL {
        if p.poll_timeout().is_some_and(|at| at <= now) {
            p.handle_timeout(now);
        }
        while p.poll_signal().is_some() {
            signals += 1;
        }
        if let Some(event) = p.poll_event() {
            assert_eq!(event, DirectEvent::Failed);
            failed.get_or_insert(now);
        }
        now += Duration::from_millis(100);
    }
    let failed = failed.expect("given up");
    assert!(failed - t0 <= PUNCH_TIMEOUT + Duration::from_millis(100));
    // One signal at once, then every SIGNAL_INTERVAL until it gave up, none after.
    assert_eq!(
        signals,
        1 + PUNCH_TIMEOUT.as_secs() / SIGNAL_INTERVAL.as_secs(),
        "{signals}"
    );
    assert!(p.poll_transmit().is_none());
}

/// Both agents punch while the relay does not carry their signalling yet (a mesh link not
/// up, a session still opening): both give up after PUNCH_TIMEOUT and go quiet. Before,
/// nothing restarted them until RETRY_INTERVAL (30 s: longer than the end-to-end test waits
/// for a tunnel); now the relay's word that the peer is reachable does, at once.
#[test]
fn a_peer_that_becomes_reachable_is_signalled_again_at_once() {
    for told in [false, true] {
        let mut world = World::new([Nat::EndpointIndependent, Nat::EndpointIndependent]);
        let t0 = world.now;
        world.signals_lost_until = t0 + PUNCH_TIMEOUT + Duration::from_secs(1);
        world.drain();
        world.run_until(world.signals_lost_until);
        for i in 0..2 {
            assert!(
                world.first(i, |e| *e == DirectEvent::Failed).is_some(),
                "side {i}"
            );
            assert!(
                world
                    .first(i, |e| matches!(e, DirectEvent::Up(_)))
                    .is_none()
            );
        }
        if told {
            // Side 1's relay says side 0 is present (or its session just opened).
            world.sides[1].path.handle_peer_reachable(world.now);
            world.drain();
        }
        let told_at = world.now;
        world.run_until(t0 + RETRY_INTERVAL);
        let up = [0, 1].map(|i| world.first(i, |e| matches!(e, DirectEvent::Up(_))));
        if told {
            for (i, at) in up.iter().enumerate() {
                let at = at.unwrap_or_else(|| panic!("side {i} never came up"));
                assert!(
                    at - told_at < Duration::from_secs(1),
                    "side {i}: {:?}",
                    at - told_at
                );
            }
        } else {
            assert_eq!(up, [None, None], "quiet until the retry");
        }
    }
}
