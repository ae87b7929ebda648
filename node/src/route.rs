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
//!
//! The direct route is different from the relays: whether it exists is known before any
//! handshake, from the punching ([`crate::direct`]). So it is skipped while no direct path is
//! up ([`RouteSelector::set_direct`]); when a path comes up while a relay carries the peer,
//! the selector moves to it at once (the upgrade), and does not follow the peer's initiations
//! off it while it is up; when the path goes down, it moves on. The
//! punching retries in the background from time to time, so a peer on a relay upgrades as
//! soon as the NATs let it.
//!
//! The order comes from the server: [`plan_from_ranking`] turns the answer of
//! `POST /api/v1/routing/request` into the routes to try, best first, keeping the relays this
//! agent can take under `--route auto` ([`AUTO_ROUTES`]), with direct always first (taken
//! only while punching has a path). Until the answer arrives, or when it
//! is malformed or names no usable route, [`AUTO_ROUTES`] in its own order is the plan.

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

/// The routes `--route auto` can take in this build, in the order used when the server gave
/// none: direct, TURN, the QUIC relay, then the WebSocket relay (issue 13's order; the
/// node's one relay session follows the peers' routes: `failover::TransportChoice`).
pub const AUTO_ROUTES: [RouteKind; 4] = [
    RouteKind::Direct,
    RouteKind::Turn,
    RouteKind::Quic,
    RouteKind::Ws,
];

/// One route of the server's ranking, as the answer spells it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RankedRoute {
    /// `direct` or `relay`.
    #[serde(rename = "type")]
    pub route_type: String,
    /// For a relay: `turn`, `quic`, `ws` or `wss`.
    #[serde(default)]
    pub transport: Option<String>,
}

/// The order to try a peer's routes in, from the server's ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every route the server ranked, best first, once each.
    pub ranked: Vec<RouteKind>,
    /// Those this agent takes under `--route auto`, in the server's order.
    pub usable: Vec<RouteKind>,
}

/// Why a ranking gives no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankingError {
    /// The answer holds no route.
    #[error("the answer ranks no route")]
    Empty,
    /// A route's `type` or `transport` is not one the API documents.
    #[error("routes[{index}].{field} is {value:?}, not a documented value")]
    Unknown {
        /// Where in `routes`.
        index: usize,
        /// `type` or `transport`.
        field: &'static str,
        /// What it said.
        value: String,
    },
    /// None of the ranked relays is one this agent takes under `--route auto`.
    #[error("none of the ranked relays ({0}) is available under --route auto")]
    NoneUsable(String),
}

/// Turns the server's ranking into a [`Plan`].
pub fn plan_from_ranking(routes: &[RankedRoute]) -> Result<Plan, RankingError> {
    if routes.is_empty() {
        return Err(RankingError::Empty);
    }
    let mut ranked = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let kind = match (route.route_type.as_str(), route.transport.as_deref()) {
            ("direct", _) => RouteKind::Direct,
            ("relay", Some("turn")) => RouteKind::Turn,
            ("relay", Some("quic")) => RouteKind::Quic,
            ("relay", Some("ws" | "wss")) => RouteKind::Ws,
            ("relay", other) => {
                return Err(RankingError::Unknown {
                    index,
                    field: "transport",
                    value: other.unwrap_or("null").to_owned(),
                });
            }
            (other, _) => {
                return Err(RankingError::Unknown {
                    index,
                    field: "type",
                    value: other.to_owned(),
                });
            }
        };
        if !ranked.contains(&kind) {
            ranked.push(kind);
        }
    }
    let relays: Vec<RouteKind> = ranked
        .iter()
        .copied()
        .filter(|kind| *kind != RouteKind::Direct && AUTO_ROUTES.contains(kind))
        .collect();
    if relays.is_empty() {
        return Err(RankingError::NoneUsable(labels(&ranked)));
    }
    // Direct first whatever the ranking says: the server ranks it from the NAT types the
    // nodes registered (a guess, and a peer's may not be registered yet when we ask), while
    // the selector takes it only once punching has proved a path.
    let usable = std::iter::once(RouteKind::Direct).chain(relays).collect();
    Ok(Plan { ranked, usable })
}

/// `turn,quic,ws`: route labels joined for logs and metrics.
pub fn labels(routes: &[RouteKind]) -> String {
    routes
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
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
    /// Whether a direct path is up: the direct route is skipped while not.
    direct_up: bool,
}

impl RouteSelector {
    /// A selector over `candidates`, best first (at least one).
    pub fn new(candidates: Vec<RouteKind>) -> Self {
        let candidates = if candidates.is_empty() {
            vec![RouteKind::Ws]
        } else {
            candidates
        };
        let mut selector = Self {
            candidates,
            index: 0,
            pending_since: None,
            confirmed: false,
            upgrade_at: None,
            switches: 0,
            direct_up: false,
        };
        selector.index = selector.first_usable();
        selector
    }

    /// Whether `route` can be taken now: the direct route only while a path is up.
    fn usable(&self, route: RouteKind) -> bool {
        route != RouteKind::Direct || self.direct_up
    }

    /// The best candidate that can be taken now (the first when none can).
    fn first_usable(&self) -> usize {
        self.candidates
            .iter()
            .position(|&c| self.usable(c))
            .unwrap_or(0)
    }

    /// The next candidate after the current one that can be taken now, cycling.
    fn next_usable(&self) -> usize {
        let n = self.candidates.len();
        (1..=n)
            .map(|step| (self.index + step) % n)
            .find(|&i| self.usable(self.candidates[i]))
            .unwrap_or((self.index + 1) % n)
    }

    /// A direct path came up or went down. Up: if the direct route is a better candidate
    /// than the current one, switch to it now. Down: if it is the current one, move on.
    pub fn set_direct(&mut self, up: bool) {
        self.direct_up = up;
        let direct = self.candidates.iter().position(|&c| c == RouteKind::Direct);
        match direct {
            Some(index) if up && index < self.index => self.switch_to(index),
            Some(index) if !up && index == self.index => {
                let next = self.next_usable();
                self.switch_to(next);
            }
            Some(_) | None => {}
        }
    }

    /// Replaces the routes to try (at least one; ignored when empty). A confirmed route
    /// that is still a candidate is kept; otherwise the choice starts again from the first.
    pub fn set_candidates(&mut self, candidates: Vec<RouteKind>) {
        if candidates.is_empty() {
            return;
        }
        let current = self.current();
        let kept = self
            .confirmed
            .then(|| candidates.iter().position(|&c| c == current))
            .flatten();
        self.candidates = candidates;
        match kept {
            Some(index) => {
                self.index = index;
                self.upgrade_at = None;
            }
            None => {
                let index = self.first_usable();
                if self.candidates[index] != current {
                    self.switches += 1;
                }
                self.index = index;
                self.pending_since = None;
                self.confirmed = false;
                self.upgrade_at = None;
            }
        }
    }

    /// The routes tried, best first.
    pub fn candidates(&self) -> &[RouteKind] {
        &self.candidates
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
        // Not away from an up direct path, though: it answers our PINGs, so the peer's
        // comes up too within moments and brings the peer over (the upgrade is immediate);
        // following it to a relay meanwhile would keep us there until the next handshake.
        if is_initiation(packet)
            && via != self.current()
            && self.usable(via)
            && !(self.current() == RouteKind::Direct && self.direct_up)
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
            let next = self.next_usable();
            self.switch_to(next);
            return;
        }
        if self.upgrade_at.is_some_and(|at| now >= at) {
            let best = self.first_usable();
            if best < self.index {
                self.switch_to(best);
            } else {
                self.upgrade_at = None;
            }
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
    use crate::testing::epoch;

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

    fn ranked(routes: &[(&str, Option<&str>)]) -> Vec<RankedRoute> {
        routes
            .iter()
            .map(|(t, tr)| RankedRoute {
                route_type: (*t).to_owned(),
                transport: tr.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn the_plan_follows_the_servers_order() {
        let plan = plan_from_ranking(&ranked(&[
            ("direct", None),
            ("relay", Some("wss")),
            ("relay", Some("quic")),
            ("relay", Some("turn")),
            ("relay", Some("ws")),
        ]))
        .unwrap();
        assert_eq!(
            plan.ranked,
            vec![
                RouteKind::Direct,
                RouteKind::Ws,
                RouteKind::Quic,
                RouteKind::Turn
            ]
        );
        assert_eq!(
            plan.usable,
            vec![
                RouteKind::Direct,
                RouteKind::Ws,
                RouteKind::Quic,
                RouteKind::Turn
            ]
        );
        assert_eq!(labels(&plan.ranked), "direct,ws,quic,turn");
        // Only the relays the server named: no WebSocket relay, no WebSocket route; direct
        // first all the same (taken only once a path is punched).
        let plan = plan_from_ranking(&ranked(&[("relay", Some("turn"))])).unwrap();
        assert_eq!(plan.usable, vec![RouteKind::Direct, RouteKind::Turn]);
    }

    #[test]
    fn a_malformed_ranking_is_named() {
        assert_eq!(plan_from_ranking(&[]), Err(RankingError::Empty));
        assert_eq!(
            plan_from_ranking(&ranked(&[("relay", Some("turn")), ("teleport", None)])),
            Err(RankingError::Unknown {
                index: 1,
                field: "type",
                value: "teleport".to_owned()
            })
        );
        assert_eq!(
            plan_from_ranking(&ranked(&[("relay", None)])),
            Err(RankingError::Unknown {
                index: 0,
                field: "transport",
                value: "null".to_owned()
            })
        );
        // Every route the API names is taken under auto now.
        let plan = plan_from_ranking(&ranked(&[("direct", None), ("relay", Some("quic"))]));
        assert_eq!(
            plan.unwrap().usable,
            vec![RouteKind::Direct, RouteKind::Quic]
        );
    }

    #[test]
    fn new_candidates_keep_a_confirmed_route() {
        let t0 = epoch();
        let mut s = RouteSelector::new(AUTO_ROUTES.to_vec());
        s.handle_outgoing(t0, &initiation());
        s.handle_incoming(t0, RouteKind::Turn, &response());
        assert!(s.is_confirmed());
        s.set_candidates(vec![RouteKind::Ws, RouteKind::Turn]);
        assert_eq!(s.current(), RouteKind::Turn);
        assert!(s.is_confirmed());
        assert_eq!(s.switches(), 0);
        // Not confirmed: starts again from the server's first.
        let mut s = RouteSelector::new(AUTO_ROUTES.to_vec());
        s.handle_outgoing(t0, &initiation());
        s.set_candidates(vec![RouteKind::Ws, RouteKind::Turn]);
        assert_eq!(s.current(), RouteKind::Ws);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.switches(), 1);
        s.set_candidates(Vec::new());
        assert_eq!(s.candidates(), &[RouteKind::Ws, RouteKind::Turn]);
    }

    #[test]
    fn direct_is_taken_only_while_a_path_is_up() {
        let t0 = epoch();
        let mut s = RouteSelector::new(AUTO_ROUTES.to_vec());
        // No path yet: the relays are tried, direct skipped.
        assert_eq!(s.current(), RouteKind::Turn);
        s.handle_outgoing(t0, &initiation());
        s.handle_timeout(t0 + HANDSHAKE_TIMEOUT);
        assert_eq!(s.current(), RouteKind::Quic);
        s.handle_outgoing(t0 + HANDSHAKE_TIMEOUT, &initiation());
        s.handle_timeout(t0 + HANDSHAKE_TIMEOUT * 2);
        assert_eq!(s.current(), RouteKind::Ws);
        s.handle_outgoing(t0 + HANDSHAKE_TIMEOUT * 2, &initiation());
        s.handle_timeout(t0 + HANDSHAKE_TIMEOUT * 3);
        // Cycling skips direct too.
        assert_eq!(s.current(), RouteKind::Turn);
        let t1 = t0 + HANDSHAKE_TIMEOUT * 3;
        s.handle_outgoing(t1, &initiation());
        s.handle_incoming(t1, RouteKind::Turn, &response());
        assert!(s.is_confirmed());
        // An upgrade falls due with no path: nothing better to take, TURN stays.
        s.handle_timeout(t1 + UPGRADE_INTERVAL);
        assert_eq!(s.current(), RouteKind::Turn);
        assert!(s.is_confirmed());
        // A path comes up: upgraded at once.
        let before = s.switches();
        s.set_direct(true);
        assert_eq!(s.current(), RouteKind::Direct);
        assert_eq!(s.switches(), before + 1);
        s.handle_outgoing(t1, &initiation());
        s.handle_incoming(t1, RouteKind::Direct, &response());
        assert!(s.is_confirmed());
        assert_eq!(s.poll_timeout(), None);
        // It goes down: the next route at once, not after a handshake timeout.
        s.set_direct(false);
        assert_eq!(s.current(), RouteKind::Turn);
        // Back up while on a relay: upgraded again; the responder follows direct
        // initiations only while its own path is up.
        s.set_direct(true);
        assert_eq!(s.current(), RouteKind::Direct);
        // An initiation by relay (the peer's path not up yet) does not take us off it.
        s.handle_incoming(t1, RouteKind::Ws, &initiation());
        assert_eq!(s.current(), RouteKind::Direct);
        s.set_direct(false);
        s.handle_incoming(t1, RouteKind::Ws, &initiation());
        assert_eq!(s.current(), RouteKind::Ws);
        s.handle_incoming(t1, RouteKind::Direct, &initiation());
        assert_eq!(s.current(), RouteKind::Ws);
        // The server ranks no direct route: a path that comes up is not taken.
        let mut s = RouteSelector::new(vec![RouteKind::Turn, RouteKind::Ws]);
        s.set_direct(true);
        assert_eq!(s.current(), RouteKind::Turn);
        // Ranked after a relay that carries: kept where it is.
        let mut s = RouteSelector::new(vec![RouteKind::Turn, RouteKind::Direct]);
        s.set_direct(true);
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
