//! NAT behaviour discovery, sans-IO ([RFC 5780] §4.3, on proto's STUN codec): STUN Binding
//! requests from one UDP socket to the server's STUN addresses, and the mapping behaviour
//! their answers show.
//!
//! # Flow
//!
//! 1. [`NatDiscovery::new`] takes the STUN destinations the server lists (one per relay
//!    host, from `GET /api/v1/turn/ice`); each gets a Binding request at once.
//! 2. An answer's XOR-MAPPED-ADDRESS is the socket's public address as that destination
//!    saw it. When the answer of a listed destination carries OTHER-ADDRESS (the host's
//!    second STUN address, RFC 5780 §7.4), that address becomes a destination too: the
//!    same host on another port (or IP).
//! 3. Once every destination answered, failed or timed out, [`NatDiscovery::report`]
//!    compares what they saw. One mapped address for two or more destinations is an
//!    **endpoint-independent mapping** (RFC 4787 §4.1); different ones an **address- or
//!    port-dependent mapping**, a symmetric NAT. When the destinations differ only in their
//!    port (one host with one IP), an address-dependent mapping that keeps the port for one
//!    destination IP cannot be told from an endpoint-independent one: the report says so.
//!
//! Filtering is not probed (that needs CHANGE-REQUEST, which the server answers with 420),
//! so an endpoint-independent mapping is reported as `PortRestricted`, the strictest
//! filtering it may have. An unknown mapping (a single answer) is reported as `Symmetric`,
//! so the server ranks no direct route that may fail; the mapped address is registered all
//! the same.
//!
//! # Retransmission ([RFC 8489 §6.2.1])
//!
//! Each request is sent again after RTO, doubling, [`DiscoveryConfig::rc`] times in all,
//! with the same transaction id; a destination that stays silent [`DiscoveryConfig::rm`]
//! times RTO after the last is given up. With the defaults (RTO 500 ms, Rc 7, Rm 16) that is
//! sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and failure at 39.5 s; an overall
//! [`DiscoveryConfig::deadline`] cuts it short (the agent runs this at start).
//!
//! # Driving
//!
//! Drain [`poll_transmit`](NatDiscovery::poll_transmit), feed datagrams to
//! [`handle_input`](NatDiscovery::handle_input), call
//! [`handle_timeout`](NatDiscovery::handle_timeout) at
//! [`poll_timeout`](NatDiscovery::poll_timeout), until
//! [`is_done`](NatDiscovery::is_done). Datagrams that answer nothing (garbage, other
//! transaction ids, other sources, duplicates, answers after the give-up) are ignored and
//! counted in [`Ignored`].
//!
//! [RFC 5780]: https://www.rfc-editor.org/rfc/rfc5780
//! [RFC 8489 §6.2.1]: https://www.rfc-editor.org/rfc/rfc8489#section-6.2.1

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boson_dataplane_proto::stun::{
    Class, Encoder, Message, MessageType, Method, OtherAddress, Trailer, TransactionId,
    XorMappedAddress,
};
use rand_core::RngCore;

/// Retransmission and time bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Initial retransmission timeout. Default 500 ms, RFC 8489 §6.2.1's recommendation.
    pub rto: Duration,
    /// Requests per destination. Default 7 (RFC 8489's Rc).
    pub rc: u32,
    /// The wait after the last request, in RTOs, before a destination is given up. Default
    /// 16 (RFC 8489's Rm).
    pub rm: u32,
    /// When everything still pending is given up, counted from [`NatDiscovery::new`]'s
    /// `now`. Default none (the RFC's schedule alone).
    pub deadline: Option<Duration>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
            deadline: None,
        }
    }
}

/// At most this many destinations, the learnt second addresses included: a server that
/// names ever new OTHER-ADDRESSes cannot grow the probe.
pub const MAX_DESTINATIONS: usize = 16;

/// What the mapping behaviour is, as far as the answers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Fewer than two destinations answered.
    Unknown,
    /// Every destination saw one mapped address; `other_ip` when two of them had different
    /// IPs (else only the port varied).
    EndpointIndependent {
        /// Whether destinations with different IPs were among them.
        other_ip: bool,
    },
    /// Destinations saw different mapped addresses.
    Dependent,
}

/// What the agent reports about its NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The public address the first listed destination that answered saw.
    pub mapped: Option<SocketAddr>,
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// `natType` for registration: `PortRestricted` or `Symmetric`.
    pub nat_type: &'static str,
    /// Why, in words, for the log.
    pub reason: &'static str,
}

/// Datagrams that answered nothing, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ignored {
    /// Not a STUN message, or a malformed one.
    pub garbage: u64,
    /// A STUN message that is no Binding response to a pending request of ours from where
    /// it went (another transaction id, source or class).
    pub stray: u64,
    /// An answer to a request already answered, or given up.
    pub late: u64,
    /// A Binding success without a usable XOR-MAPPED-ADDRESS.
    pub no_address: u64,
}

/// What [`NatDiscovery::handle_input`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// It answered a pending request.
    Answered,
    /// A Binding error response to a pending request: that destination failed.
    Refused,
    /// Nothing; counted in [`Ignored`].
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Answered(SocketAddr),
    Failed,
}

#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// Listed by the server (else learnt from an OTHER-ADDRESS).
    listed: bool,
    txid: TransactionId,
    sent: u32,
    /// The next send, or (after the last) the give-up.
    next_at: Instant,
    state: State,
}

/// One run of NAT behaviour discovery; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct NatDiscovery {
    config: DiscoveryConfig,
    targets: Vec<Target>,
    deadline: Option<Instant>,
    ignored: Ignored,
    txids: [u8; 12],
}

impl NatDiscovery {
    /// A discovery towards `destinations` (duplicates ignored, at most
    /// [`MAX_DESTINATIONS`]), every request due at `now`.
    pub fn new(
        destinations: &[SocketAddr],
        config: DiscoveryConfig,
        now: Instant,
        rng: &mut impl RngCore,
    ) -> Self {
        let mut txids = [0u8; 12];
        rng.fill_bytes(&mut txids);
        let mut discovery = Self {
            config: DiscoveryConfig {
                rc: config.rc.max(1),
                ..config
            },
            targets: Vec::new(),
            deadline: config.deadline.map(|d| now + d),
            ignored: Ignored::default(),
            txids,
        };
        for &addr in destinations {
            discovery.add_target(addr, true, now);
        }
        discovery
    }

    /// The next request due at `now`, written into `buf` (64 bytes suffice): where to send
    /// it and its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (rto, rc, rm) = (self.config.rto, self.config.rc, self.config.rm);
        let target = self
            .targets
            .iter_mut()
            .find(|t| t.state == State::Pending && t.sent < rc && t.next_at <= now)?;
        let len = Encoder::new(
            buf,
            MessageType::new(Method::BINDING, Class::Request),
            target.txid,
        )
        .ok()?
        .finish(Trailer::new().with_fingerprint())
        .ok()?;
        target.sent += 1;
        target.next_at = if target.sent < rc {
            now + rto * (1 << (target.sent - 1).min(16))
        } else {
            now + rto * rm
        };
        Some((target.addr, len))
    }

    /// A datagram from `from` arrived on the probing socket.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Input {
        let Ok(message) = Message::parse(datagram) else {
            self.ignored.garbage += 1;
            return Input::Ignored;
        };
        if message.has_fingerprint() && message.verify_fingerprint().is_err() {
            self.ignored.garbage += 1;
            return Input::Ignored;
        }
        let class = message.class();
        if message.method() != Method::BINDING || !class.is_response() {
            self.ignored.stray += 1;
            return Input::Ignored;
        }
        let txid = message.transaction_id();
        let Some(index) = self
            .targets
            .iter()
            .position(|t| t.txid == txid && same_addr(t.addr, from))
        else {
            self.ignored.stray += 1;
            return Input::Ignored;
        };
        if self.targets[index].state != State::Pending {
            self.ignored.late += 1;
            return Input::Ignored;
        }
        if class == Class::ErrorResponse {
            self.targets[index].state = State::Failed;
            return Input::Refused;
        }
        let Ok(Some(XorMappedAddress(mapped))) = message.get::<XorMappedAddress>() else {
            self.ignored.no_address += 1;
            return Input::Ignored;
        };
        self.targets[index].state = State::Answered(mapped);
        // A listed destination's second address is probed too (RFC 5780 §4.3's test II
        // and III in one: another port, and another IP when the host has one).
        if self.targets[index].listed
            && let Ok(Some(OtherAddress(other))) = message.get::<OtherAddress>()
            && other.is_ipv4() == from.is_ipv4()
            && !other.ip().is_unspecified()
            && other.port() != 0
        {
            self.add_target(other, false, now);
        }
        Input::Answered
    }

    /// When [`handle_timeout`](Self::handle_timeout) (or
    /// [`poll_transmit`](Self::poll_transmit)) has something to do next; `None` when done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self
            .targets
            .iter()
            .filter(|t| t.state == State::Pending)
            .map(|t| t.next_at)
            .min()?;
        Some(self.deadline.map_or(next, |d| next.min(d)))
    }

    /// Gives up the destinations whose last wait ended at `now`, and every pending one once
    /// the deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let past_deadline = self.deadline.is_some_and(|d| d <= now);
        let rc = self.config.rc;
        for target in &mut self.targets {
            if target.state == State::Pending
                && (past_deadline || (target.sent >= rc && target.next_at <= now))
            {
                target.state = State::Failed;
            }
        }
    }

    /// Whether every destination answered, failed or was given up.
    pub fn is_done(&self) -> bool {
        self.targets.iter().all(|t| t.state != State::Pending)
    }

    /// The destinations probed so far, the learnt ones included.
    pub fn destinations(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.targets.iter().map(|t| t.addr)
    }

    /// Datagrams ignored so far.
    pub const fn ignored(&self) -> Ignored {
        self.ignored
    }

    /// What the answers say (so far).
    pub fn report(&self) -> NatReport {
        let answers: Vec<(SocketAddr, SocketAddr)> = self
            .targets
            .iter()
            .filter_map(|t| match t.state {
                State::Answered(mapped) => Some((t.addr, mapped)),
                State::Pending | State::Failed => None,
            })
            .collect();
        let mapped = self.targets.iter().find_map(|t| match t.state {
            State::Answered(mapped) if t.listed => Some(mapped),
            State::Answered(_) | State::Pending | State::Failed => None,
        });
        let mapped = mapped.or_else(|| answers.first().map(|&(_, m)| m));
        let Some(&(first_dest, first)) = answers.first() else {
            return NatReport {
                mapped: None,
                mapping: Mapping::Unknown,
                nat_type: "Symmetric",
                reason: "no STUN destination answered: reported as symmetric (relays only)",
            };
        };
        if answers.len() < 2 {
            return NatReport {
                mapped,
                mapping: Mapping::Unknown,
                nat_type: "Symmetric",
                reason: "one STUN destination answered (the server offers no second STUN \
                         address): the mapping behaviour is unknown, reported as symmetric so \
                         no direct route is ranked that may fail",
            };
        }
        if answers.iter().any(|&(_, m)| m != first) {
            return NatReport {
                mapped,
                mapping: Mapping::Dependent,
                nat_type: "Symmetric",
                reason: "STUN destinations saw different mapped addresses \
                         (address- or port-dependent mapping)",
            };
        }
        let other_ip = answers.iter().any(|&(d, _)| d.ip() != first_dest.ip());
        NatReport {
            mapped,
            mapping: Mapping::EndpointIndependent { other_ip },
            nat_type: "PortRestricted",
            reason: if other_ip {
                "STUN destinations on different IPs and ports saw one mapped address \
                 (endpoint-independent mapping); filtering untested, reported as \
                 port-restricted"
            } else {
                "STUN destinations on different ports of one IP saw one mapped address \
                 (endpoint-independent mapping, as far as one server IP shows); filtering \
                 untested, reported as port-restricted"
            },
        }
    }

    fn add_target(&mut self, addr: SocketAddr, listed: bool, now: Instant) {
        if self.targets.len() >= MAX_DESTINATIONS
            || self.targets.iter().any(|t| same_addr(t.addr, addr))
        {
            return;
        }
        // Transaction ids: 96 random bits, then a counter in the last byte, so every
        // destination's differs and none can be guessed by an off-path sender.
        let mut id = self.txids;
        id[11] = id[11].wrapping_add(u8::try_from(self.targets.len()).unwrap_or(u8::MAX));
        self.targets.push(Target {
            addr,
            listed,
            txid: TransactionId::new(id),
            sent: 0,
            next_at: now,
            state: State::Pending,
        });
    }
}

/// Whether two addresses are one, an IPv4-mapped IPv6 address (what a dual-stack socket
/// reports) equal to its IPv4 form.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests;
