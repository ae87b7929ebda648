//! NAT discovery, sans-IO: STUN Binding requests (RFC 8489, on proto's STUN codec) from one
//! UDP socket to every STUN destination the server lists, and what their answers say.
//!
//! * The mapped address (XOR-MAPPED-ADDRESS) is the socket's public address as a STUN
//!   server saw it: the agent registers it as `stunMappedAddress`.
//! * Two destinations (two relay hosts) that see the same mapped address show an
//!   endpoint-independent mapping (RFC 4787 §4.1); different ones an address-dependent
//!   mapping, a symmetric NAT. Filtering is not probed (that needs a server that answers
//!   from another address, RFC 5780's CHANGE-REQUEST, which the server does not offer), so an
//!   endpoint-independent mapping is reported as `PortRestricted`, the strictest filtering it
//!   may have: the server then ranks a direct route only towards peers that can punch
//!   through such a filter.
//! * With one destination only, the mapping behaviour is unknown: the agent reports
//!   `Symmetric`, so the server does not rank a direct route that may fail; the mapped
//!   address is registered all the same.
//!
//! Each request is sent again after [`RTO`], doubling, [`TRIES`] times in all (RFC 8489
//! §6.2.1's schedule, shortened: this runs at start and must not hold it up long).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boson_dataplane_proto::stun::{
    Class, Encoder, Message, MessageType, Method, Trailer, TransactionId, XorMappedAddress,
};
use rand_core::RngCore;

/// First retransmission timeout.
pub const RTO: Duration = Duration::from_millis(250);

/// Requests per destination before it counts as silent.
pub const TRIES: u32 = 4;

/// What the agent reports about its NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The public address the first answering destination saw.
    pub mapped: Option<SocketAddr>,
    /// `natType` for registration: `PortRestricted` or `Symmetric`.
    pub nat_type: &'static str,
    /// Why, in words, for the log.
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    txid: TransactionId,
    sent: u32,
    next_at: Option<Instant>,
    mapped: Option<SocketAddr>,
}

/// Binding requests to a set of STUN destinations.
#[derive(Debug, Clone)]
pub struct BindingProbe {
    targets: Vec<Target>,
}

impl BindingProbe {
    /// A probe of `destinations` (duplicates ignored), all due at `now`.
    pub fn new(destinations: &[SocketAddr], now: Instant, rng: &mut impl RngCore) -> Self {
        let mut targets: Vec<Target> = Vec::new();
        for &addr in destinations {
            if targets.iter().any(|t| t.addr == addr) {
                continue;
            }
            let mut id = [0u8; 12];
            rng.fill_bytes(&mut id);
            targets.push(Target {
                addr,
                txid: TransactionId::new(id),
                sent: 0,
                next_at: Some(now),
                mapped: None,
            });
        }
        Self { targets }
    }

    /// The next request due at `now`, if any: where to send it and its bytes.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let target = self
            .targets
            .iter_mut()
            .find(|t| t.next_at.is_some_and(|at| at <= now))?;
        let mut buf = vec![0u8; 64];
        let len = Encoder::new(
            &mut buf,
            MessageType::new(Method::BINDING, Class::Request),
            target.txid,
        )
        .ok()?
        .finish(Trailer::new().with_fingerprint())
        .ok()?;
        buf.truncate(len);
        target.sent += 1;
        target.next_at = (target.sent < TRIES).then(|| now + RTO * (1 << (target.sent - 1)));
        Some((target.addr, buf))
    }

    /// A datagram that arrived from `from`; `true` if it answered one of our requests.
    pub fn handle_input(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok(message) = Message::parse(datagram) else {
            return false;
        };
        if message.message_type() != MessageType::new(Method::BINDING, Class::SuccessResponse) {
            return false;
        }
        let Some(target) = self
            .targets
            .iter_mut()
            .find(|t| t.addr == from && t.txid == message.transaction_id() && t.mapped.is_none())
        else {
            return false;
        };
        let Ok(Some(XorMappedAddress(mapped))) = message.get::<XorMappedAddress>() else {
            return false;
        };
        target.mapped = Some(mapped);
        target.next_at = None;
        true
    }

    /// When [`poll_transmit`](Self::poll_transmit) has something next; `None` when done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets.iter().filter_map(|t| t.next_at).min()
    }

    /// Whether every destination answered or was given up. A destination is given up
    /// [`RTO`] times 2^[`TRIES`] after its first request (the last one's wait).
    pub fn is_done(&self) -> bool {
        self.targets.iter().all(|t| t.next_at.is_none())
    }

    /// How many destinations are probed.
    pub fn destinations(&self) -> usize {
        self.targets.len()
    }

    /// What the answers say.
    pub fn report(&self) -> NatReport {
        let seen: Vec<SocketAddr> = self.targets.iter().filter_map(|t| t.mapped).collect();
        let Some(&first) = seen.first() else {
            return NatReport {
                mapped: None,
                nat_type: "Symmetric",
                reason: "no STUN destination answered: reported as symmetric (relays only)",
            };
        };
        if seen.len() < 2 {
            return NatReport {
                mapped: Some(first),
                nat_type: "Symmetric",
                reason: "one STUN destination answered: the mapping behaviour is unknown, \
                         reported as symmetric so no direct route is ranked that may fail",
            };
        }
        if seen.iter().all(|&m| m == first) {
            NatReport {
                mapped: Some(first),
                nat_type: "PortRestricted",
                reason: "two STUN destinations saw one mapped address (endpoint-independent \
                         mapping); filtering untested, reported as port-restricted",
            }
        } else {
            NatReport {
                mapped: Some(first),
                nat_type: "Symmetric",
                reason: "two STUN destinations saw different mapped addresses \
                         (address-dependent mapping)",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Counter, epoch};

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| unreachable!("a literal address"))
    }

    /// A Binding success for `request` saying `mapped`.
    fn answer(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let txid = Message::parse(request)
            .map(|m| m.transaction_id())
            .unwrap_or_else(|_| unreachable!("our own request parses"));
        let mut buf = vec![0u8; 128];
        let mut enc = Encoder::new(
            &mut buf,
            MessageType::new(Method::BINDING, Class::SuccessResponse),
            txid,
        )
        .unwrap_or_else(|_| unreachable!("room"));
        enc.add(&XorMappedAddress(mapped))
            .unwrap_or_else(|_| unreachable!("room"));
        let len = enc
            .finish(Trailer::new())
            .unwrap_or_else(|_| unreachable!("room"));
        buf.truncate(len);
        buf
    }

    fn run(mapped_by: &[(&str, Option<&str>)]) -> NatReport {
        let t0 = epoch();
        let dests: Vec<SocketAddr> = mapped_by.iter().map(|(d, _)| addr(d)).collect();
        let mut probe = BindingProbe::new(&dests, t0, &mut Counter(0));
        let mut now = t0;
        while let Some(at) = probe.poll_timeout() {
            now = now.max(at);
            while let Some((to, request)) = probe.poll_transmit(now) {
                let says = mapped_by
                    .iter()
                    .find(|(d, _)| addr(d) == to)
                    .and_then(|(_, m)| *m);
                if let Some(m) = says {
                    assert!(probe.handle_input(to, &answer(&request, addr(m))));
                }
            }
        }
        assert!(probe.is_done());
        probe.report()
    }

    #[test]
    fn one_destination_gives_the_address_but_not_the_behaviour() {
        let r = run(&[("10.0.0.1:3478", Some("203.0.113.5:40000"))]);
        assert_eq!(r.mapped, Some(addr("203.0.113.5:40000")));
        assert_eq!(r.nat_type, "Symmetric");
    }

    #[test]
    fn two_destinations_tell_the_mapping() {
        let same = run(&[
            ("10.0.0.1:3478", Some("203.0.113.5:40000")),
            ("10.0.0.2:3478", Some("203.0.113.5:40000")),
        ]);
        assert_eq!(same.nat_type, "PortRestricted");
        let differ = run(&[
            ("10.0.0.1:3478", Some("203.0.113.5:40000")),
            ("10.0.0.2:3478", Some("203.0.113.5:40001")),
        ]);
        assert_eq!(differ.nat_type, "Symmetric");
        assert_eq!(differ.mapped, Some(addr("203.0.113.5:40000")));
        // One of two silent: one answer only.
        let half = run(&[
            ("10.0.0.1:3478", None),
            ("10.0.0.2:3478", Some("203.0.113.5:40001")),
        ]);
        assert_eq!(half.nat_type, "Symmetric");
        assert_eq!(half.mapped, Some(addr("203.0.113.5:40001")));
    }

    #[test]
    fn silence_is_bounded_and_retransmitted() {
        let t0 = epoch();
        let d = addr("10.0.0.1:3478");
        let mut probe = BindingProbe::new(&[d, d], t0, &mut Counter(0));
        assert_eq!(probe.destinations(), 1);
        let mut sent = 0;
        let mut now = t0;
        while let Some(at) = probe.poll_timeout() {
            now = at;
            while probe.poll_transmit(now).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, TRIES);
        // 250 + 500 + 1000 ms between the four sends.
        assert_eq!(now - t0, RTO * 7);
        assert_eq!(probe.report().mapped, None);
    }

    #[test]
    fn strangers_and_garbage_are_ignored() {
        let t0 = epoch();
        let d = addr("10.0.0.1:3478");
        let mut probe = BindingProbe::new(&[d], t0, &mut Counter(0));
        let Some((_, request)) = probe.poll_transmit(t0) else {
            unreachable!("due at once")
        };
        let good = answer(&request, addr("203.0.113.5:1"));
        assert!(!probe.handle_input(addr("10.0.0.9:3478"), &good));
        assert!(!probe.handle_input(d, b"not stun"));
        assert!(!probe.handle_input(d, &request));
        assert!(probe.handle_input(d, &good));
        assert!(!probe.handle_input(d, &good), "once");
        assert!(probe.is_done());
    }
}
