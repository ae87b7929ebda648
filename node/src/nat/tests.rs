//! NAT discovery in simulated time: a simulated server with a second address behind
//! simulated NATs, loss, late answers, strangers and garbage.

use std::collections::BTreeMap;

use boson_dataplane_proto::stun::{ErrorCode, ErrorCodeAttr, ResponseOrigin};

use super::*;
use crate::testing::{Counter, epoch};

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| unreachable!("a literal address"))
}

/// A Binding answer of `class` to `request`: XOR-MAPPED-ADDRESS `mapped`, and the RFC 5780
/// attributes when `origin_other` is given.
fn answer(
    request: &[u8],
    class: Class,
    mapped: SocketAddr,
    origin_other: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    let txid = Message::parse(request)
        .map(|m| m.transaction_id())
        .unwrap_or_else(|_| unreachable!("our own request parses"));
    let mut buf = vec![0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::new(Method::BINDING, class), txid)
        .unwrap_or_else(|_| unreachable!("room"));
    if class == Class::ErrorResponse {
        enc.add(&ErrorCodeAttr::with_default_reason(
            ErrorCode::UNKNOWN_ATTRIBUTE,
        ))
        .unwrap_or_else(|_| unreachable!("room"));
    } else {
        enc.add(&XorMappedAddress(mapped))
            .unwrap_or_else(|_| unreachable!("room"));
    }
    if let Some((origin, other)) = origin_other {
        enc.add(&ResponseOrigin(origin))
            .unwrap_or_else(|_| unreachable!("room"));
        enc.add(&OtherAddress(other))
            .unwrap_or_else(|_| unreachable!("room"));
    }
    let len = enc
        .finish(Trailer::new().with_fingerprint())
        .unwrap_or_else(|_| unreachable!("room"));
    buf.truncate(len);
    buf
}

/// How the simulated NAT maps the probing socket towards a destination.
#[derive(Clone, Copy)]
enum Nat {
    /// One public address for every destination.
    EndpointIndependent,
    /// A new public port per destination (`--random-fully`).
    PortDependent,
}

impl Nat {
    fn map(self, dest: SocketAddr) -> SocketAddr {
        match self {
            Self::EndpointIndependent => addr("203.0.113.5:40000"),
            Self::PortDependent => {
                let sum: u16 = match dest.ip() {
                    std::net::IpAddr::V4(ip) => ip.octets().iter().map(|&o| u16::from(o)).sum(),
                    std::net::IpAddr::V6(ip) => ip.octets().iter().map(|&o| u16::from(o)).sum(),
                };
                let port = 40000 + (dest.port() % 1000) + 1000 * (sum % 20);
                SocketAddr::new(addr("203.0.113.5:1").ip(), port)
            }
        }
    }
}

/// A simulated run: `servers` maps each STUN address to its OTHER-ADDRESS (`None`: a plain
/// STUN server, `Some`: an RFC 5780 one), the first `n` requests to each `(address, n)` of
/// `lost` are lost; each answer arrives `delay` after its request. Returns the report, the instant it was done
/// and the send times per destination.
fn run(
    nat: Nat,
    listed: &[&str],
    servers: &[(&str, Option<&str>)],
    lost: &[(&str, usize)],
    delay: Duration,
    config: DiscoveryConfig,
) -> (NatReport, Duration, BTreeMap<SocketAddr, Vec<Duration>>) {
    let t0 = epoch();
    let dests: Vec<SocketAddr> = listed.iter().map(|d| addr(d)).collect();
    let mut discovery = NatDiscovery::new(&dests, config, t0, &mut Counter(7));
    let mut sends: BTreeMap<SocketAddr, Vec<Duration>> = BTreeMap::new();
    // Answers in flight: (arrival, from, bytes).
    let mut in_flight: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
    let mut now = t0;
    let mut buf = [0u8; 64];
    loop {
        while let Some((to, len)) = discovery.poll_transmit(now, &mut buf) {
            let sent = sends.entry(to).or_default();
            sent.push(now - t0);
            if lost.iter().any(|&(s, n)| addr(s) == to && sent.len() <= n) {
                continue;
            }
            let Some(&(_, other)) = servers.iter().find(|(s, _)| addr(s) == to) else {
                continue;
            };
            let pair = other.map(|o| (to, addr(o)));
            in_flight.push((
                now + delay,
                to,
                answer(&buf[..len], Class::SuccessResponse, nat.map(to), pair),
            ));
        }
        discovery.handle_timeout(now);
        if discovery.is_done() {
            return (discovery.report(), now - t0, sends);
        }
        let arrival = in_flight.iter().map(|(at, _, _)| *at).min();
        let next = match (discovery.poll_timeout(), arrival) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a
                .or(b)
                .unwrap_or_else(|| unreachable!("not done, nothing due")),
        };
        now = now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) =
            in_flight.into_iter().partition(|(at, _, _)| *at <= now);
        in_flight = rest;
        for (_, from, bytes) in due {
            let _ = discovery.handle_input(now, from, &bytes);
        }
    }
}

const PRIMARY: &str = "192.0.2.1:3478";
const ALTERNATE: &str = "192.0.2.1:3479";

fn rfc5780_host() -> [(&'static str, Option<&'static str>); 2] {
    [(PRIMARY, Some(ALTERNATE)), (ALTERNATE, Some(PRIMARY))]
}

#[test]
fn a_second_port_shows_an_endpoint_independent_mapping() {
    let (report, done, sends) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    assert_eq!(
        report.mapping,
        Mapping::EndpointIndependent { other_ip: false }
    );
    assert_eq!(report.nat_type, "PortRestricted");
    assert_eq!(report.mapped, Some(addr("203.0.113.5:40000")));
    // The second address, learnt from OTHER-ADDRESS, was asked once, after the first answer.
    assert_eq!(sends[&addr(ALTERNATE)], [Duration::from_millis(20)]);
    assert_eq!(done, Duration::from_millis(40));
}

#[test]
fn a_second_port_shows_a_port_dependent_mapping() {
    let (report, _, _) = run(
        Nat::PortDependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    assert_eq!(report.mapping, Mapping::Dependent);
    assert_eq!(report.nat_type, "Symmetric");
    // The mapped address registered is the listed destination's.
    assert_eq!(report.mapped, Some(Nat::PortDependent.map(addr(PRIMARY))));
}

#[test]
fn a_second_ip_is_told_apart_from_a_second_port() {
    let (report, _, _) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &[
            (PRIMARY, Some("192.0.2.2:3479")),
            ("192.0.2.2:3479", Some(PRIMARY)),
        ],
        &[],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    assert_eq!(
        report.mapping,
        Mapping::EndpointIndependent { other_ip: true }
    );
}

#[test]
fn a_plain_stun_server_leaves_the_mapping_unknown() {
    let (report, _, sends) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &[(PRIMARY, None)],
        &[],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    assert_eq!(sends.len(), 1);
    assert_eq!(report.mapping, Mapping::Unknown);
    assert_eq!(report.nat_type, "Symmetric");
    assert_eq!(report.mapped, Some(addr("203.0.113.5:40000")));
    // Two plain servers (two relay hosts) still show it.
    let (report, _, _) = run(
        Nat::PortDependent,
        &[PRIMARY, "198.51.100.1:3478"],
        &[(PRIMARY, None), ("198.51.100.1:3478", None)],
        &[],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    assert_eq!(report.mapping, Mapping::Dependent);
}

#[test]
fn retransmits_on_rfc_8489s_schedule_and_gives_up() {
    let (report, done, sends) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[(PRIMARY, usize::MAX)],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    let ms = |v: &[u64]| {
        v.iter()
            .map(|&m| Duration::from_millis(m))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sends[&addr(PRIMARY)],
        ms(&[0, 500, 1500, 3500, 7500, 15500, 31500])
    );
    assert_eq!(done, Duration::from_millis(39500));
    assert_eq!(report.mapped, None);
    assert_eq!(report.mapping, Mapping::Unknown);
}

#[test]
fn loss_is_recovered_by_retransmission() {
    // The first two requests to each address are lost; the third gets through.
    let (report, done, sends) = run(
        Nat::PortDependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[(PRIMARY, 2), (ALTERNATE, 2)],
        Duration::from_millis(20),
        DiscoveryConfig::default(),
    );
    let ms = |v: &[u64]| {
        v.iter()
            .map(|&m| Duration::from_millis(m))
            .collect::<Vec<_>>()
    };
    assert_eq!(sends[&addr(PRIMARY)], ms(&[0, 500, 1500]));
    assert_eq!(sends[&addr(ALTERNATE)], ms(&[1520, 2020, 3020]));
    assert_eq!(done, Duration::from_millis(3040));
    assert_eq!(report.mapping, Mapping::Dependent);
}

#[test]
fn answers_to_earlier_transmissions_count_once() {
    // Every answer takes 1.2 s: the request at 0 s is answered at 1.2 s, after its
    // retransmission at 0.5 s went out; that one's answer (at 1.7 s) is late.
    let (report, done, sends) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[],
        Duration::from_millis(1200),
        DiscoveryConfig::default(),
    );
    assert_eq!(sends[&addr(PRIMARY)].len(), 2);
    assert_eq!(
        report.mapping,
        Mapping::EndpointIndependent { other_ip: false }
    );
    assert_eq!(done, Duration::from_millis(2400));
}

#[test]
fn the_deadline_bounds_the_run() {
    let config = DiscoveryConfig {
        deadline: Some(Duration::from_secs(3)),
        ..DiscoveryConfig::default()
    };
    // The second address never answers.
    let (report, done, sends) = run(
        Nat::EndpointIndependent,
        &[PRIMARY],
        &rfc5780_host(),
        &[(ALTERNATE, usize::MAX)],
        Duration::from_millis(20),
        config,
    );
    assert_eq!(done, Duration::from_secs(3));
    assert_eq!(sends[&addr(ALTERNATE)].len(), 3, "at 0.02, 0.52 and 1.52 s");
    assert_eq!(report.mapping, Mapping::Unknown);
    assert_eq!(report.mapped, Some(addr("203.0.113.5:40000")));
}

#[test]
fn strangers_late_answers_and_garbage_change_nothing() {
    let t0 = epoch();
    let primary = addr(PRIMARY);
    let mut d = NatDiscovery::new(&[primary], DiscoveryConfig::default(), t0, &mut Counter(1));
    let mut buf = [0u8; 64];
    let Some((to, len)) = d.poll_transmit(t0, &mut buf) else {
        unreachable!("due at once")
    };
    assert_eq!(to, primary);
    let request = buf[..len].to_vec();
    let good = answer(
        &request,
        Class::SuccessResponse,
        addr("203.0.113.5:1"),
        Some((primary, addr(ALTERNATE))),
    );
    // Another transaction id, another source, our own request echoed, garbage.
    let other_txid = {
        // Re-encode so the FINGERPRINT still holds: only the id differs.
        let mut fake = request.clone();
        fake[8] ^= 0xFF;
        answer(&fake, Class::SuccessResponse, addr("203.0.113.6:6"), None)
    };
    assert_eq!(d.handle_input(t0, primary, &other_txid), Input::Ignored);
    assert_eq!(
        d.handle_input(t0, addr("192.0.2.99:3478"), &good),
        Input::Ignored
    );
    assert_eq!(d.handle_input(t0, primary, &request), Input::Ignored);
    assert_eq!(
        d.handle_input(t0, primary, b"not stun at all"),
        Input::Ignored
    );
    let mut corrupt = good.clone();
    corrupt[30] ^= 1;
    assert_eq!(d.handle_input(t0, primary, &corrupt), Input::Ignored);
    let ignored = d.ignored();
    assert_eq!((ignored.stray, ignored.garbage), (3, 2), "{ignored:?}");
    assert!(!d.is_done());
    // The real answer, then the same again (an answer to the retransmission): once.
    assert_eq!(d.handle_input(t0, primary, &good), Input::Answered);
    assert_eq!(d.handle_input(t0, primary, &good), Input::Ignored);
    assert_eq!(d.ignored().late, 1);
    // The learnt second address is due now; it refuses (a 420, say): failed, not pending.
    let Some((to, len)) = d.poll_transmit(t0, &mut buf) else {
        unreachable!("the second address is due")
    };
    assert_eq!(to, addr(ALTERNATE));
    let refusal = answer(&buf[..len], Class::ErrorResponse, primary, None);
    assert_eq!(d.handle_input(t0, to, &refusal), Input::Refused);
    assert!(d.is_done());
    assert_eq!(d.report().mapping, Mapping::Unknown);
    assert_eq!(d.report().mapped, Some(addr("203.0.113.5:1")));
}

#[test]
fn a_late_answer_after_the_give_up_is_ignored() {
    let t0 = epoch();
    let primary = addr(PRIMARY);
    let config = DiscoveryConfig {
        deadline: Some(Duration::from_secs(1)),
        ..DiscoveryConfig::default()
    };
    let mut d = NatDiscovery::new(&[primary], config, t0, &mut Counter(2));
    let mut buf = [0u8; 64];
    let Some((_, len)) = d.poll_transmit(t0, &mut buf) else {
        unreachable!("due at once")
    };
    let good = answer(
        &buf[..len],
        Class::SuccessResponse,
        addr("203.0.113.5:1"),
        None,
    );
    let end = t0 + Duration::from_secs(1);
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    d.handle_timeout(end);
    assert!(d.is_done());
    assert_eq!(d.poll_timeout(), None);
    assert_eq!(d.handle_input(end, primary, &good), Input::Ignored);
    assert_eq!(d.ignored().late, 1);
    assert_eq!(d.report().mapped, None);
}

#[test]
fn destinations_are_bounded_and_deduplicated() {
    let t0 = epoch();
    let mut dests = Vec::new();
    for i in 0..40u16 {
        dests.push(SocketAddr::new(addr(PRIMARY).ip(), 3000 + i));
    }
    let d = NatDiscovery::new(&dests, DiscoveryConfig::default(), t0, &mut Counter(3));
    assert_eq!(d.destinations().count(), MAX_DESTINATIONS);
    let mapped_v4 = NatDiscovery::new(
        &[addr("[::ffff:192.0.2.1]:3478"), addr(PRIMARY)],
        DiscoveryConfig::default(),
        t0,
        &mut Counter(4),
    );
    assert_eq!(
        mapped_v4.destinations().count(),
        1,
        "one address in two forms"
    );
}
