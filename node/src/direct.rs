//! The direct route, sans-IO: UDP hole punching between two agents, and the liveness of the
//! path it finds. One [`DirectPath`] per peer; it takes `now`, the peer's signalling and the
//! probes that arrive, and returns the probes and signalling to send.
//!
//! # How a path is found
//!
//! 1. Each agent has one UDP socket for direct paths (not WireGuard's: its port belongs to
//!    WireGuard). Its public address is learnt with STUN from that same socket, so the NAT
//!    mapping the peer is told about is the one the probes use.
//! 2. Each side sends the other its candidates (mapped and LAN addresses) and a random
//!    16-byte secret, over the authenticated relay session ([`crate::signal`]), every
//!    [`SIGNAL_INTERVAL`] until a path is up, and at once in answer to the peer's.
//! 3. Once both secrets and a candidate are known, both sides send a PING to every
//!    candidate every [`PROBE_INTERVAL`]. The outgoing pings open each side's NAT mapping
//!    and filter towards the other, so with endpoint-independent mappings the pings meet.
//!    A PING is answered with a PONG to wherever it came from, and its source becomes a
//!    candidate too (a peer-reflexive one, RFC 8445 §7.3.1.3).
//! 4. The first PONG that answers one of our PINGs makes its source the path
//!    ([`DirectEvent::Up`]); WireGuard's packets then go there.
//! 5. No PONG within [`PUNCH_TIMEOUT`]: punching failed ([`DirectEvent::Failed`]); it is
//!    tried again after [`RETRY_INTERVAL`], or at once when the peer's signalling or PING
//!    shows it punching.
//!
//! # Keeping it
//!
//! On an up path a PING goes every [`KEEPALIVE`], which also keeps the NAT mappings open;
//! no PONG for [`PATH_TIMEOUT`] drops the path ([`DirectEvent::Down`]) and punching starts
//! again while the agent falls back to the next route.
//!
//! # Authentication
//!
//! Every probe carries a MAC (HMAC-SHA256, truncated to 16 bytes) under a key derived from
//! both sides' secrets, which only the two agents (and the relay hosts that carried them)
//! know. A PONG is accepted only when it echoes the transaction id of a PING we sent and
//! have not seen answered. So a stranger can neither make a path come up nor move it to
//! its own address: replaying an old PING only gets a PONG sent to it, and our answers are
//! never taken as theirs. WireGuard's own packets are accepted from the path's address only,
//! and WireGuard authenticates them itself.
//!
//! # Probe format
//!
//! ```text
//! offset  bytes  field
//! 0       4      0xFF "BND"  (never a WireGuard message: those start with 1..=4, 0, 0, 0;
//!                             never STUN: its first two bits are zero)
//! 4       1      version: 1
//! 5       1      kind: 1 PING, 2 PONG
//! 6       16     the sender's node id
//! 22      8      transaction id (a PONG echoes its PING's)
//! 30      16     MAC of bytes 0..30
//! ```
//!
//! # Driving it
//!
//! Inputs: [`handle_signal`](DirectPath::handle_signal),
//! [`handle_probe`](DirectPath::handle_probe), [`handle_timeout`](DirectPath::handle_timeout),
//! [`set_local_candidates`](DirectPath::set_local_candidates),
//! [`handle_peer_reachable`](DirectPath::handle_peer_reachable). After each, drain
//! [`poll_transmit`](DirectPath::poll_transmit) (probes to send from the direct socket),
//! [`poll_signal`](DirectPath::poll_signal) (signalling for the relay session) and
//! [`poll_event`](DirectPath::poll_event), then sleep until
//! [`poll_timeout`](DirectPath::poll_timeout).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boson_shared::NodeId;
use hmac::{Hmac, Mac as _};
use rand_core::RngCore;
use sha2::Sha256;

use crate::signal::{MAX_CANDIDATES, Signal};

/// How often each candidate gets a PING while punching.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// How long punching goes on without an answer before it is given up.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after a failed punch it is tried again (unless the peer starts first).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// How often an up path is pinged: keeps the NAT mappings open (Linux conntrack forgets an
/// unreplied UDP flow after 30 s, common home routers after 30-60 s) and checks the path.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long an up path may go without a PONG before it is dropped: three keepalives lost.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(16);

/// How often the candidates are sent to the peer while no path is up.
pub const SIGNAL_INTERVAL: Duration = Duration::from_secs(2);

/// An answer to the peer's signalling is not sent again within this long.
const ANSWER_HOLD: Duration = Duration::from_secs(1);

/// After a failed punch, the peer's signalling (with nothing new in it) starts punching
/// again only this long after: two sides that fail a little apart would otherwise keep
/// restarting each other, and the relay would carry their signalling for ever. The peer's
/// retry, [`RETRY_INTERVAL`] later, does restart it.
const FAILED_HOLD: Duration = Duration::from_secs(5);

/// The most candidates punched at once: the peer's signalled ones and those its PINGs came
/// from.
const MAX_REMOTE_CANDIDATES: usize = 2 * MAX_CANDIDATES;

/// PINGs remembered for their PONGs; older ones are forgotten.
const OUTSTANDING: usize = 64;

/// A probe's length.
pub const PROBE_LEN: usize = 46;

const MAGIC: [u8; 4] = [0xFF, b'B', b'N', b'D'];
const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const SIGNED_LEN: usize = PROBE_LEN - MAC_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Whether a datagram on the direct socket is a probe rather than WireGuard's.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// A probe's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Asks for a PONG.
    Ping,
    /// Answers a PING.
    Pong,
}

/// A probe's fields, before its MAC is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeHeader {
    /// PING or PONG.
    pub kind: ProbeKind,
    /// Who says it sent it (checked by the MAC, under that peer's key).
    pub sender: NodeId,
    /// The transaction id.
    pub txid: [u8; 8],
}

impl ProbeHeader {
    /// Parses a probe's header; `None` if it is not a well-formed probe.
    pub fn parse(datagram: &[u8]) -> Option<Self> {
        if datagram.len() != PROBE_LEN || !is_probe(datagram) || datagram[4] != VERSION {
            return None;
        }
        let kind = match datagram[5] {
            1 => ProbeKind::Ping,
            2 => ProbeKind::Pong,
            _ => return None,
        };
        let sender = NodeId::from_bytes(datagram[6..22].try_into().ok()?);
        let txid = datagram[22..30].try_into().ok()?;
        Some(Self { kind, sender, txid })
    }
}

/// Why a probe was not taken, for the shell's drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeDrop {
    /// Not a well-formed probe, or not from this path's peer.
    Malformed,
    /// No key yet: the peer's secret has not arrived.
    NoKey,
    /// The MAC does not verify.
    BadMac,
    /// A PONG that answers no PING of ours (late, replayed or forged).
    Unsolicited,
}

impl ProbeDrop {
    /// The label in the drop metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "direct_malformed_probe",
            Self::NoKey => "direct_probe_before_key",
            Self::BadMac => "direct_bad_mac",
            Self::Unsolicited => "direct_unsolicited_pong",
        }
    }
}

/// What happened to the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectEvent {
    /// A path is up: WireGuard's packets to the peer may go to this address.
    Up(SocketAddr),
    /// The path stopped answering: it is gone, and punching starts again.
    Down,
    /// Punching found no path within [`PUNCH_TIMEOUT`].
    Failed,
}

/// A probe to send from the direct socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dst: SocketAddr,
    /// The probe.
    pub bytes: [u8; PROBE_LEN],
}

/// Counters, read with [`DirectPath::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// PINGs sent.
    pub pings_sent: u64,
    /// PONGs sent.
    pub pongs_sent: u64,
    /// Times a path came up.
    pub paths_up: u64,
    /// Punches given up.
    pub punches_failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting since `since` for the peer's secret and candidates (a peer that never
    /// answers, or has none, is given up after [`PUNCH_TIMEOUT`] like a failed punch).
    Waiting { since: Instant },
    /// Probing every candidate.
    Punching { since: Instant, next_probe: Instant },
    /// A path is up.
    Up {
        addr: SocketAddr,
        last_pong: Instant,
        next_keepalive: Instant,
    },
    /// Punching failed at `since`; tried again at `retry_at`.
    Failed { since: Instant, retry_at: Instant },
}

/// One peer's direct path.
#[derive(Debug)]
pub struct DirectPath<R> {
    me: NodeId,
    peer: NodeId,
    rng: R,
    local_secret: [u8; 16],
    remote_secret: Option<[u8; 16]>,
    key: Option<[u8; 32]>,
    local_candidates: Vec<SocketAddr>,
    remote_candidates: Vec<SocketAddr>,
    state: State,
    next_signal: Option<Instant>,
    last_signal: Option<Instant>,
    outstanding: VecDeque<[u8; 8]>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<Signal>,
    events: VecDeque<DirectEvent>,
    stats: Stats,
}

impl<R: RngCore> DirectPath<R> {
    /// A path from `me` to `peer`, announcing `local_candidates` (best first); the first
    /// signalling is due at `now`.
    pub fn new(
        me: NodeId,
        peer: NodeId,
        local_candidates: Vec<SocketAddr>,
        now: Instant,
        mut rng: R,
    ) -> Self {
        let mut local_secret = [0u8; 16];
        rng.fill_bytes(&mut local_secret);
        Self {
            me,
            peer,
            rng,
            local_secret,
            remote_secret: None,
            key: None,
            local_candidates,
            remote_candidates: Vec::new(),
            state: State::Waiting { since: now },
            next_signal: Some(now),
            last_signal: None,
            outstanding: VecDeque::new(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The peer.
    pub const fn peer(&self) -> NodeId {
        self.peer
    }

    /// Where WireGuard's packets to the peer go, while a path is up.
    pub const fn path(&self) -> Option<SocketAddr> {
        match self.state {
            State::Up { addr, .. } => Some(addr),
            State::Waiting { .. } | State::Punching { .. } | State::Failed { .. } => None,
        }
    }

    /// `waiting`, `punching`, `up` or `failed`, for logs.
    pub const fn state_label(&self) -> &'static str {
        match self.state {
            State::Waiting { .. } => "waiting",
            State::Punching { .. } => "punching",
            State::Up { .. } => "up",
            State::Failed { .. } => "failed",
        }
    }

    /// The counters.
    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// The relay says the peer is reachable now: PEER_PRESENT for it, or this agent's own
    /// relay session just became ready. Signalling sent before may have been lost (the
    /// relay drops it while either end is not connected, or between hosts whose mesh link
    /// is not up yet), and a punch that heard nothing from the peer gives up after
    /// [`PUNCH_TIMEOUT`] and goes quiet until [`RETRY_INTERVAL`]: two agents that both
    /// gave up so would wait that long for each other. So the candidates go at once, a
    /// wait for the peer starts over, and a given-up punch starts again. An up path, or a
    /// punch under way (which signals every [`SIGNAL_INTERVAL`] anyway), is left alone.
    pub fn handle_peer_reachable(&mut self, now: Instant) {
        match self.state {
            State::Up { .. } | State::Punching { .. } => {}
            State::Waiting { .. } | State::Failed { .. } => {
                self.state = State::Waiting { since: now };
                self.send_signal(now);
                self.start_punching(now);
            }
        }
    }

    /// New local candidates (after NAT discovery, say): the peer is told at once.
    pub fn set_local_candidates(&mut self, now: Instant, candidates: Vec<SocketAddr>) {
        if candidates != self.local_candidates {
            self.local_candidates = candidates;
            self.next_signal = Some(now);
        }
    }

    /// The peer's signalling arrived: its secret and candidates.
    pub fn handle_signal(&mut self, now: Instant, secret: [u8; 16], candidates: &[SocketAddr]) {
        let new_secret = self.remote_secret != Some(secret);
        let mut added = false;
        for &addr in candidates.iter().take(MAX_CANDIDATES) {
            if !self.remote_candidates.contains(&addr) {
                self.remote_candidates.push(addr);
                added = true;
            }
        }
        if new_secret {
            // A new secret is a new agent at the other end (a restart): nothing of the old
            // key or path holds.
            self.remote_secret = Some(secret);
            self.key = Some(derive_key(self.me, self.local_secret, self.peer, secret));
            self.outstanding.clear();
            if let State::Up { .. } = self.state {
                self.events.push_back(DirectEvent::Down);
            }
            self.state = State::Waiting { since: now };
        }
        let news = new_secret || added;
        let just_failed = matches!(self.state, State::Failed { since, .. }
            if now.saturating_duration_since(since) < FAILED_HOLD);
        // Answer, unless we just did: the peer is punching (or about to) and needs ours.
        if news
            || (!just_failed
                && self
                    .last_signal
                    .is_none_or(|at| now.saturating_duration_since(at) >= ANSWER_HOLD))
        {
            self.send_signal(now);
        }
        match self.state {
            State::Waiting { .. } => self.start_punching(now),
            State::Failed { .. } if news || !just_failed => self.start_punching(now),
            State::Failed { .. } | State::Punching { .. } | State::Up { .. } => {}
        }
    }

    /// A probe arrived on the direct socket from `from`; `Err` says why it was dropped.
    pub fn handle_probe(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), ProbeDrop> {
        let header = ProbeHeader::parse(datagram).ok_or(ProbeDrop::Malformed)?;
        if header.sender != self.peer {
            return Err(ProbeDrop::Malformed);
        }
        let key = self.key.ok_or(ProbeDrop::NoKey)?;
        let mut mac =
            <HmacSha256 as hmac::KeyInit>::new_from_slice(&key).map_err(|_| ProbeDrop::BadMac)?;
        mac.update(&datagram[..SIGNED_LEN]);
        mac.verify_truncated_left(&datagram[SIGNED_LEN..])
            .map_err(|_| ProbeDrop::BadMac)?;
        match header.kind {
            ProbeKind::Ping => {
                let pong = self.probe(ProbeKind::Pong, header.txid, &key);
                self.transmits.push_back(Transmit {
                    dst: from,
                    bytes: pong,
                });
                self.stats.pongs_sent += 1;
                // A peer-reflexive candidate; bounded, as a replayed PING can come from
                // anywhere (it only gets PINGs, which need the peer's key to answer).
                if self.path().is_none()
                    && !self.remote_candidates.contains(&from)
                    && self.remote_candidates.len() < MAX_REMOTE_CANDIDATES
                {
                    self.remote_candidates.push(from);
                }
                match self.state {
                    State::Failed { .. } | State::Waiting { .. } => self.start_punching(now),
                    State::Punching { .. } | State::Up { .. } => {}
                }
                Ok(())
            }
            ProbeKind::Pong => {
                let Some(index) = self.outstanding.iter().position(|t| *t == header.txid) else {
                    return Err(ProbeDrop::Unsolicited);
                };
                self.outstanding.remove(index);
                match self.state {
                    State::Up {
                        addr,
                        ref mut last_pong,
                        ..
                    } if addr == from => *last_pong = now,
                    State::Up { .. } => {}
                    State::Waiting { .. } | State::Punching { .. } | State::Failed { .. } => {
                        self.state = State::Up {
                            addr: from,
                            last_pong: now,
                            next_keepalive: now + KEEPALIVE,
                        };
                        self.next_signal = None;
                        self.stats.paths_up += 1;
                        self.events.push_back(DirectEvent::Up(from));
                    }
                }
                Ok(())
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match self.state {
            State::Waiting { since } => Some(since + PUNCH_TIMEOUT),
            State::Punching { since, next_probe } => Some(next_probe.min(since + PUNCH_TIMEOUT)),
            State::Up {
                last_pong,
                next_keepalive,
                ..
            } => Some(next_keepalive.min(last_pong + PATH_TIMEOUT)),
            State::Failed { retry_at, .. } => Some(retry_at),
        };
        [state, self.next_signal].into_iter().flatten().min()
    }

    /// Sends what is due at `now`: signalling, PINGs; gives up a punch or a path that does
    /// not answer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_signal.is_some_and(|at| now >= at) {
            self.send_signal(now);
        }
        match self.state {
            State::Waiting { since } | State::Punching { since, .. }
                if now >= since + PUNCH_TIMEOUT =>
            {
                self.state = State::Failed {
                    since: now,
                    retry_at: now + RETRY_INTERVAL,
                };
                // Quiet until the retry: the relay session carries no more of it.
                self.next_signal = None;
                self.stats.punches_failed += 1;
                self.events.push_back(DirectEvent::Failed);
            }
            State::Waiting { .. } => {}
            State::Punching { since, next_probe } => {
                if now >= next_probe {
                    let targets = self.remote_candidates.clone();
                    for dst in targets {
                        self.ping(dst);
                    }
                    self.state = State::Punching {
                        since,
                        next_probe: now + PROBE_INTERVAL,
                    };
                }
            }
            State::Up {
                addr,
                last_pong,
                next_keepalive,
            } => {
                if now >= last_pong + PATH_TIMEOUT {
                    self.events.push_back(DirectEvent::Down);
                    self.state = State::Waiting { since: now };
                    self.start_punching(now);
                    self.send_signal(now);
                } else if now >= next_keepalive {
                    self.ping(addr);
                    self.state = State::Up {
                        addr,
                        last_pong,
                        next_keepalive: now + KEEPALIVE,
                    };
                }
            }
            State::Failed { retry_at, .. } => {
                if now >= retry_at {
                    self.state = State::Waiting { since: now };
                    self.send_signal(now);
                    self.start_punching(now);
                }
            }
        }
    }

    /// The next probe to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next signalling message for the peer, to send over the relay session.
    pub fn poll_signal(&mut self) -> Option<Signal> {
        self.signals.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DirectEvent> {
        self.events.pop_front()
    }

    fn start_punching(&mut self, now: Instant) {
        if self.key.is_none() || self.remote_candidates.is_empty() {
            if !matches!(self.state, State::Waiting { .. }) {
                self.state = State::Waiting { since: now };
            }
            return;
        }
        self.state = State::Punching {
            since: now,
            next_probe: now,
        };
        if self.next_signal.is_none() {
            self.next_signal = Some(now + SIGNAL_INTERVAL);
        }
        self.handle_timeout(now);
    }

    fn send_signal(&mut self, now: Instant) {
        self.signals.push_back(Signal::Candidates {
            secret: self.local_secret,
            addrs: self.local_candidates.clone(),
        });
        self.last_signal = Some(now);
        self.next_signal = match self.state {
            State::Up { .. } => None,
            State::Waiting { .. } | State::Punching { .. } | State::Failed { .. } => {
                Some(now + SIGNAL_INTERVAL)
            }
        };
    }

    fn ping(&mut self, dst: SocketAddr) {
        let Some(key) = self.key else { return };
        let mut txid = [0u8; 8];
        self.rng.fill_bytes(&mut txid);
        if self.outstanding.len() == OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(txid);
        let bytes = self.probe(ProbeKind::Ping, txid, &key);
        self.transmits.push_back(Transmit { dst, bytes });
        self.stats.pings_sent += 1;
    }

    fn probe(&self, kind: ProbeKind, txid: [u8; 8], key: &[u8; 32]) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = match kind {
            ProbeKind::Ping => 1,
            ProbeKind::Pong => 2,
        };
        out[6..22].copy_from_slice(self.me.as_bytes());
        out[22..30].copy_from_slice(&txid);
        let tag = mac(key, &out[..SIGNED_LEN]);
        out[SIGNED_LEN..].copy_from_slice(&tag);
        out
    }
}

/// The probes' key: HMAC-SHA256 under a fixed label over both secrets, the lower node id's
/// first, so both sides derive the same key.
fn derive_key(a: NodeId, secret_a: [u8; 16], b: NodeId, secret_b: [u8; 16]) -> [u8; 32] {
    let (first, second) = if a < b {
        (secret_a, secret_b)
    } else {
        (secret_b, secret_a)
    };
    let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(b"boson-node direct v1")
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(&first);
    mac.update(&second);
    mac.finalize().into_bytes().into()
}

fn mac(key: &[u8; 32], bytes: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(bytes);
    let full: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

#[cfg(test)]
mod tests;
