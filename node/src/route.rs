//! Route choice for one peer under `--route auto`, sans-IO: try the routes in order, keep
//! the first that carries a WireGuard handshake, move on when handshakes stop passing, and
//! go back to better routes from time to time.
//!
//! WireGuard itself is the probe. It sends a handshake initiation (type 1, 148 bytes) at
//! least every two minutes on a live tunnel and every 5 s while it gets no answer; the
//! answer is a handshake response (type 2, 92 bytes). So:
//!
//! * an initiation sent on the current route starts a clock; a response arriving on that
//!   route within [`HANDSHAKE_TIMEOUT`] confirms the route;
//! * no response in time: the route does not carry the tunnel (or no longer does): move to
//!   the next route, cycling back to the first after the last;
//! * on a confirmed route that is not the first, try the first again after
//!   [`UPGRADE_INTERVAL`]; if it fails, the handshake timeout moves down again;
//! * an initiation arriving on another route than ours means the peer chose that one: we
//!   follow, so that our response takes the route the peer is waiting on (the responder of
//!   a handshake sends no initiation of its own, so it would never move otherwise).
//!
//! Packets arriving on any route are always handed to WireGuard: only the sending side
//! chooses.

use std::time::{Duration, Instant};

use crate::config::RouteKind;

/// How long an initiation may wait for its response on a route before the route is given
/// up: two of WireGuard's 5 s retries, plus a margin.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(11);

/// How often a peer on a worse route tries the best one again.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);

/// WireGuard's handshake initiation: type 1, 148 bytes.
pub fn is_initiation(packet: &[u8]) -> bool {
    packet.len() == 148 && packet.starts_with(&[1, 0, 0, 0])
}

/// WireGuard's handshake response: type 2, 92 bytes.
pub fn is_response(packet: &[u8]) -> bool {
    packet.len() == 92 && packet.starts_with(&[2, 0, 0, 0])
}

/// One peer's route choice.
#[derive(Debug, Clone)]
pub struct RouteSelector {
    candidates: Vec<RouteKind>,
    index: usize,
    /// When the first unanswered initiation on the current route went out.
    pending_since: Option<Instant>,
    confirmed: bool,
    upgrade_at: Option<Instant>,
    switches: u64,
}

impl RouteSelector {
    /// A selector over `candidates`, best first (at least one).
    pub fn new(candidates: Vec<RouteKind>) -> Self {
        let candidates = if candidates.is_empty() {
            vec![RouteKind::Ws]
        } else {
            candidates
        };
        Self {
            candidates,
            index: 0,
            pending_since: None,
            confirmed: false,
            upgrade_at: None,
            switches: 0,
        }
    }

    /// The route packets to the peer take now.
    pub fn current(&self) -> RouteKind {
        self.candidates[self.index]
    }

    /// Whether a handshake went through on the current route.
    pub const fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Times the route changed.
    pub const fn switches(&self) -> u64 {
        self.switches
    }

    /// A packet from WireGuard to the peer, about to go out on [`current`](Self::current).
    pub fn handle_outgoing(&mut self, now: Instant, packet: &[u8]) {
        if is_initiation(packet) && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// A packet from the peer that arrived on `via`.
    pub fn handle_incoming(&mut self, now: Instant, via: RouteKind, packet: &[u8]) {
        if is_initiation(packet)
            && via != self.current()
            && let Some(index) = self.candidates.iter().position(|&c| c == via)
        {
            self.switch_to(index);
            return;
        }
        if via == self.current() && is_response(packet) {
            self.pending_since = None;
            if !self.confirmed {
                self.confirmed = true;
                self.upgrade_at = (self.index > 0).then(|| now + UPGRADE_INTERVAL);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let handshake = self.pending_since.map(|at| at + HANDSHAKE_TIMEOUT);
        [handshake, self.upgrade_at].into_iter().flatten().min()
    }

    /// Moves to the next route when a handshake timed out, or back to the best one when an
    /// upgrade is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .pending_since
            .is_some_and(|at| now >= at + HANDSHAKE_TIMEOUT)
        {
            let next = (self.index + 1) % self.candidates.len();
            self.switch_to(next);
            return;
        }
        if self.upgrade_at.is_some_and(|at| now >= at) {
            self.switch_to(0);
        }
    }

    fn switch_to(&mut self, index: usize) {
        if index != self.index {
            self.switches += 1;
        }
        self.index = index;
        self.pending_since = None;
        self.confirmed = false;
        self.upgrade_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initiation() -> Vec<u8> {
        let mut p = vec![0u8; 148];
        p[0] = 1;
        p
    }

    fn response() -> Vec<u8> {
        let mut p = vec![0u8; 92];
        p[0] = 2;
        p
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "virtual time starts from some Instant; its value never matters"
    )]
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn keeps_the_first_route_that_carries_a_handshake() {
        let t0 = epoch();
        let mut s = RouteSelector::new(vec![RouteKind::Turn, RouteKind::Quic, RouteKind::Ws]);
        assert_eq!(s.current(), RouteKind::Turn);
        // TURN carries nothing: after the timeout, QUIC; then WebSocket answers.
        s.handle_outgoing(t0, &initiation());
        s.handle_outgoing(t0 + Duration::from_secs(5), &initiation());
        assert_eq!(s.poll_timeout(), Some(t0 + HANDSHAKE_TIMEOUT));
        s.handle_timeout(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
        assert_eq!(s.current(), RouteKind::Turn);
        s.handle_timeout(t0 + HANDSHAKE_TIMEOUT);
        assert_eq!(s.current(), RouteKind::Quic);
        let t1 = t0 + HANDSHAKE_TIMEOUT;
        s.handle_outgoing(t1, &initiation());
        s.handle_timeout(t1 + HANDSHAKE_TIMEOUT);
        assert_eq!(s.current(), RouteKind::Ws);
        let t2 = t1 + HANDSHAKE_TIMEOUT;
        s.handle_outgoing(t2, &initiation());
        // A response on another route does not confirm this one.
        s.handle_incoming(t2, RouteKind::Turn, &response());
        assert!(!s.is_confirmed());
        s.handle_incoming(t2, RouteKind::Ws, &response());
        assert!(s.is_confirmed());
        assert_eq!(s.switches(), 2);
        // Transport data and keepalives start no clock.
        s.handle_outgoing(t2, &[4, 0, 0, 0, 1, 2, 3]);
        // Later, the best route is tried again.
        assert_eq!(s.poll_timeout(), Some(t2 + UPGRADE_INTERVAL));
        s.handle_timeout(t2 + UPGRADE_INTERVAL);
        assert_eq!(s.current(), RouteKind::Turn);
        assert_eq!(s.switches(), 3);
        // It answers now: kept, and no further upgrade is planned.
        let t3 = t2 + UPGRADE_INTERVAL;
        s.handle_outgoing(t3, &initiation());
        s.handle_incoming(t3 + Duration::from_millis(20), RouteKind::Turn, &response());
        assert!(s.is_confirmed());
        assert_eq!(s.poll_timeout(), None);
        // Handshakes stop passing: it moves on again.
        let t4 = t3 + Duration::from_secs(120);
        s.handle_outgoing(t4, &initiation());
        s.handle_timeout(t4 + HANDSHAKE_TIMEOUT);
        assert_eq!(s.current(), RouteKind::Quic);
    }

    #[test]
    fn the_responder_follows_the_initiators_route() {
        let t0 = epoch();
        let mut s = RouteSelector::new(vec![RouteKind::Turn, RouteKind::Ws]);
        s.handle_incoming(t0, RouteKind::Ws, &initiation());
        assert_eq!(s.current(), RouteKind::Ws);
        s.handle_incoming(t0, RouteKind::Ws, &initiation());
        assert_eq!(s.switches(), 1);
        // The initiator upgrades: the responder follows again.
        s.handle_incoming(t0, RouteKind::Turn, &initiation());
        assert_eq!(s.current(), RouteKind::Turn);
        // Unknown routes and other packets move nothing.
        s.handle_incoming(t0, RouteKind::Quic, &initiation());
        s.handle_incoming(t0, RouteKind::Ws, &response());
        assert_eq!(s.current(), RouteKind::Turn);
    }

    #[test]
    fn wireguard_shapes() {
        assert!(is_initiation(&initiation()));
        assert!(is_response(&response()));
        assert!(!is_initiation(&response()));
        assert!(!is_response(&[2, 0, 0, 0]));
    }
}
