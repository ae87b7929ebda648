//! Relay host failover, sans-IO: which relay host the next session goes to, after how long,
//! and which control plane to ask first. The relay shell (`relay_conn`) only executes.
//!
//! A session ends in one of three ways ([`Ended`]): the agent stops; the host drains
//! (RECONNECT_HINT); or it fails: refused, reset, silent (no READY in time, keepalive
//! unanswered: the WebSocket core's pings, QUIC's idle timeout), or no longer carrying
//! WireGuard's handshakes ([`CarrierWatch`]). A host that drained or
//! failed is *avoided*: for [`AVOID`] it is chosen only when no other host is listed, since
//! a host that died stays in the control plane's list until the host registry times it out.
//! A drain moves at once; a failure waits the backoff's next delay (restarted when the
//! session had reached READY, so a host dying under a working session costs 0.1-0.2 s).
//!
//! Control planes are asked for the host list in turn from the last one that answered; one
//! that did not answer is asked last from then on (it may be the host that just died).
//!
//! # The bound
//!
//! A dead relay host is noticed within [`DEAD_HOST_DETECTION`] (a reset connection at
//! once), and the next session goes to another host after at most the first backoff step
//! (0.2 s) plus the time to connect, so the tunnel is carried again within
//! [`FAILOVER_BOUND`]; a drained host is left at once.
//!
//! # Driving it
//!
//! [`Failover::control_order`] → ask for the hosts → [`Failover::handle_control`] for each
//! answer or failure → [`Failover::choose`] a host → run the session →
//! [`Failover::handle_ended`] gives the delay before the next one (`None`: stop).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use crate::backoff::Backoff;
use crate::config::RouteKind;

/// How long a host that failed or drained is avoided.
pub const AVOID: Duration = Duration::from_secs(30);

/// The WebSocket session's ping interval (also QUIC's keepalive interval, at most).
pub const KEEPALIVE: Duration = Duration::from_secs(2);

/// How long a ping may go unanswered (QUIC: how long the connection may hear nothing, less
/// the keepalive interval) before the host is taken for dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A silent relay host is given up within this: a ping at most [`KEEPALIVE`] after the last
/// one, unanswered for [`KEEPALIVE_TIMEOUT`].
pub const DEAD_HOST_DETECTION: Duration =
    Duration::from_secs(KEEPALIVE.as_secs() + KEEPALIVE_TIMEOUT.as_secs());

/// The stated bound: from a relay host's death to the tunnel carried through another host.
/// [`DEAD_HOST_DETECTION`], the first backoff step (0.2 s), asking the control planes for
/// the hosts and connecting (answered by a live host: well under a second on a LAN, up to
/// 2.8 s allowed).
pub const FAILOVER_BOUND: Duration = Duration::from_secs(8);

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopping: do not reconnect.
    Stop,
    /// The host is draining: prefer another, at once.
    Drain,
    /// It failed; `ready` says whether it had reached READY (then the backoff restarts).
    Failed {
        /// Whether READY had arrived.
        ready: bool,
    },
    /// Closed to open a session on the other transport ([`TransportChoice`]): at once, the
    /// host not avoided.
    Switch,
}

/// A relay host the control plane lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its relay URL (`ws://…`) or QUIC address.
    pub url: String,
    /// Whether the host said it drains.
    pub draining: bool,
}

/// The failover state of one relay session loop.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Host URL → when it stops being avoided.
    avoid: BTreeMap<String, Instant>,
    backoff: Backoff,
    controls: usize,
    /// The control plane to ask first.
    first_control: usize,
}

impl Failover {
    /// A failover over `controls` control planes, asking `first` first.
    pub fn new(controls: usize, first: usize) -> Self {
        let controls = controls.max(1);
        Self {
            avoid: BTreeMap::new(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            controls,
            first_control: first % controls,
        }
    }

    /// The control planes' indices, in the order to ask them for the hosts.
    pub fn control_order(&self) -> impl Iterator<Item = usize> + use<> {
        let (n, first) = (self.controls, self.first_control);
        (0..n).map(move |offset| (first + offset) % n)
    }

    /// The session's control plane changed (a new registration): ask it first.
    pub fn set_first_control(&mut self, index: usize) {
        self.first_control = index % self.controls;
    }

    /// Control plane `index` answered (`true`) or did not (`false`).
    pub fn handle_control(&mut self, index: usize, answered: bool) {
        if answered {
            self.first_control = index % self.controls;
        } else if index % self.controls == self.first_control {
            // Ask it last from now on.
            self.first_control = (self.first_control + 1) % self.controls;
        }
    }

    /// The host for the next session: an open host not avoided, in the listed order; else
    /// the avoided open host whose avoidance ends first; else a draining one.
    pub fn choose<'a>(&self, now: Instant, hosts: &'a [Candidate]) -> Option<&'a str> {
        let avoided_until = |url: &str| self.avoid.get(url).copied().filter(|&until| until > now);
        hosts
            .iter()
            .min_by_key(|host| {
                let until = avoided_until(&host.url);
                (host.draining, until.is_some(), until)
            })
            .map(|host| host.url.as_str())
    }

    /// The session to `url` (if one was tried) ended as `ended` at `now`: the delay before
    /// the next one, `None` to stop.
    pub fn handle_ended(
        &mut self,
        now: Instant,
        url: Option<&str>,
        ended: Ended,
        rng: &mut impl RngCore,
    ) -> Option<Duration> {
        self.avoid.retain(|_, until| *until > now);
        match ended {
            Ended::Stop => None,
            Ended::Switch => Some(Duration::ZERO),
            Ended::Drain => {
                if let Some(url) = url {
                    self.avoid.insert(url.to_owned(), now + AVOID);
                }
                self.backoff.reset();
                Some(Duration::ZERO)
            }
            Ended::Failed { ready } => {
                if let Some(url) = url {
                    self.avoid.insert(url.to_owned(), now + AVOID);
                }
                if ready {
                    self.backoff.reset();
                }
                Some(self.backoff.next_delay(rng))
            }
        }
    }

    /// Whether `url` is avoided at `now`.
    pub fn is_avoided(&self, now: Instant, url: &str) -> bool {
        self.avoid.get(url).is_some_and(|&until| until > now)
    }
}

/// How long `--route auto` keeps the relay session on WebSocket after a QUIC session
/// failed before READY (UDP blocked, no host serving QUIC), before trying QUIC again.
pub const QUIC_RETRY: Duration = Duration::from_secs(60);

/// Which transport the relay session uses: forced by `--route quic|ws` (and WebSocket for
/// the signalling of `--route turn`), or under `--route auto` the one the peers' routes need.
///
/// Under `auto` the node has one relay session (the server keeps one per node), carrying
/// the TURN route's signalling and the relayed routes' packets. It is QUIC unless a peer's
/// route is the WebSocket relay, no peer has QUIC among its routes (the server did not rank
/// it), or a QUIC session lately failed before READY; a peer whose
/// route is QUIC while the session is WebSocket (or the reverse) has its packets dropped
/// (counted `no_route`) until its route selector moves on, so the two converge.
#[derive(Debug, Clone)]
pub struct TransportChoice {
    forced: Option<RouteKind>,
    quic_failed_at: Option<Instant>,
}

impl TransportChoice {
    /// Always `transport` (`Quic` or `Ws`).
    pub const fn forced(transport: RouteKind) -> Self {
        Self {
            forced: Some(transport),
            quic_failed_at: None,
        }
    }

    /// `--route auto`.
    pub const fn auto() -> Self {
        Self {
            forced: None,
            quic_failed_at: None,
        }
    }

    /// The transport the session should use at `now`, given each peer's current route and
    /// whether QUIC is among any peer's routes.
    pub fn wanted(
        &self,
        now: Instant,
        mut routes: impl Iterator<Item = RouteKind>,
        quic_candidate: bool,
    ) -> RouteKind {
        if let Some(forced) = self.forced {
            return forced;
        }
        let quic_failed = self.quic_failed_at.is_some_and(|at| now < at + QUIC_RETRY);
        if quic_failed || !quic_candidate || routes.any(|route| route == RouteKind::Ws) {
            RouteKind::Ws
        } else {
            RouteKind::Quic
        }
    }

    /// A session on `transport` ended as `ended` at `now`.
    pub fn handle_ended(&mut self, now: Instant, transport: RouteKind, ended: Ended) {
        match (transport, ended) {
            (RouteKind::Quic, Ended::Failed { ready: false }) => self.quic_failed_at = Some(now),
            (RouteKind::Quic, Ended::Failed { ready: true } | Ended::Drain) => {
                self.quic_failed_at = None;
            }
            _ => {}
        }
    }
}

/// How long WireGuard handshake initiations may go out through a relay session with
/// nothing at all coming back from any peer before the session is given up as not carrying
/// (a host that answers its keepalives but no longer relays: a broken mesh link, an
/// overloaded core): [`crate::route::HANDSHAKE_TIMEOUT`], two of WireGuard's retries.
pub const CARRIER_TIMEOUT: Duration = crate::route::HANDSHAKE_TIMEOUT;

/// Whether a relay session still carries WireGuard's handshakes, sans-IO. One per session.
///
/// The clock starts at the first handshake initiation sent through the session after
/// anything last came back; anything from a peer through the session (a packet, a
/// signalling message) stops it, and so does the relay's PEER_GONE (the relay said why:
/// the peer is not connected, and another host would not change that). A session whose
/// clock reaches [`CARRIER_TIMEOUT`] is ended as failed (before READY, so the backoff grows
/// if the peer itself is the reason) and the next goes to another host.
#[derive(Debug, Clone, Default)]
pub struct CarrierWatch {
    pending_since: Option<Instant>,
}

impl CarrierWatch {
    /// A packet went out to a peer through the session.
    pub fn handle_outgoing(&mut self, now: Instant, packet: &[u8]) {
        if crate::route::is_initiation(packet) && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// Something came from a peer through the session.
    pub const fn handle_incoming(&mut self) {
        self.pending_since = None;
    }

    /// The relay said a peer is not connected.
    pub const fn handle_peer_gone(&mut self) {
        self.pending_since = None;
    }

    /// Whether the session stopped carrying, at `now`.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.pending_since
            .is_some_and(|at| now >= at + CARRIER_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::testing::epoch;

    fn hosts(list: &[(&str, bool)]) -> Vec<Candidate> {
        list.iter()
            .map(|(url, draining)| Candidate {
                url: (*url).to_owned(),
                draining: *draining,
            })
            .collect()
    }

    #[test]
    fn a_host_that_dies_under_a_session_is_left_for_the_other_at_once() {
        let t0 = epoch();
        let mut rng = StdRng::seed_from_u64(1);
        let mut f = Failover::new(2, 0);
        // The dead host stays listed (the registry has not timed it out yet).
        let list = hosts(&[("ws://a/relay", false), ("ws://b/relay", false)]);
        assert_eq!(f.choose(t0, &list), Some("ws://a/relay"));
        // Its keepalive went unanswered after READY: the next session goes to b, soon.
        let t1 = t0 + Duration::from_secs(60);
        let delay = f
            .handle_ended(
                t1,
                Some("ws://a/relay"),
                Ended::Failed { ready: true },
                &mut rng,
            )
            .unwrap();
        assert!(delay <= Duration::from_millis(200), "{delay:?}");
        assert_eq!(f.choose(t1, &list), Some("ws://b/relay"));
        // b fails to connect too: both avoided, a's avoidance ends first, so a comes back;
        // the backoff grows while nothing reaches READY.
        let t2 = t1 + Duration::from_secs(1);
        let d2 = f
            .handle_ended(
                t2,
                Some("ws://b/relay"),
                Ended::Failed { ready: false },
                &mut rng,
            )
            .unwrap();
        assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
        assert_eq!(f.choose(t2, &list), Some("ws://a/relay"));
        // After the avoidance, the listed order again.
        assert!(f.is_avoided(t1 + AVOID - Duration::from_millis(1), "ws://a/relay"));
        assert!(!f.is_avoided(t1 + AVOID, "ws://a/relay"));
        assert_eq!(f.choose(t2 + AVOID, &list), Some("ws://a/relay"));
        // The bound holds together.
        assert!(DEAD_HOST_DETECTION + Duration::from_millis(200) < FAILOVER_BOUND);
    }

    #[test]
    fn a_drain_moves_at_once_and_draining_hosts_come_last() {
        let t0 = epoch();
        let mut rng = StdRng::seed_from_u64(2);
        let mut f = Failover::new(1, 0);
        let list = hosts(&[("a", true), ("b", false)]);
        assert_eq!(f.choose(t0, &list), Some("b"));
        assert_eq!(
            f.handle_ended(t0, Some("b"), Ended::Drain, &mut rng),
            Some(Duration::ZERO)
        );
        // The host list has not caught up: b still open, but avoided; a drains: b is
        // still better than a draining host.
        assert_eq!(f.choose(t0, &list), Some("b"));
        let list = hosts(&[("a", true), ("b", true), ("c", false)]);
        assert_eq!(f.choose(t0, &list), Some("c"));
        assert_eq!(f.choose(t0, &[]), None);
        assert_eq!(f.handle_ended(t0, None, Ended::Stop, &mut rng), None);
    }

    #[test]
    fn a_silent_control_plane_is_asked_last() {
        let mut f = Failover::new(3, 1);
        assert_eq!(f.control_order().collect::<Vec<_>>(), [1, 2, 0]);
        f.handle_control(1, false);
        assert_eq!(f.control_order().collect::<Vec<_>>(), [2, 0, 1]);
        f.handle_control(0, true);
        assert_eq!(f.control_order().collect::<Vec<_>>(), [0, 1, 2]);
        // A failure of another than the first changes nothing.
        f.handle_control(2, false);
        assert_eq!(f.control_order().next(), Some(0));
        f.set_first_control(2);
        assert_eq!(f.control_order().next(), Some(2));
    }

    #[test]
    fn auto_prefers_quic_and_falls_back_to_websocket() {
        let t0 = epoch();
        let mut c = TransportChoice::auto();
        fn routes(r: &[RouteKind]) -> impl Iterator<Item = RouteKind> + '_ {
            r.iter().copied()
        }
        // TURN's signalling and the QUIC route: QUIC.
        assert_eq!(
            c.wanted(t0, routes(&[RouteKind::Turn]), true),
            RouteKind::Quic
        );
        assert_eq!(
            c.wanted(t0, routes(&[RouteKind::Turn, RouteKind::Quic]), true),
            RouteKind::Quic
        );
        // A peer moved on to the WebSocket relay: the session follows.
        assert_eq!(
            c.wanted(t0, routes(&[RouteKind::Quic, RouteKind::Ws]), true),
            RouteKind::Ws
        );
        // QUIC does not get through (UDP blocked): WebSocket for a while, then QUIC again.
        c.handle_ended(t0, RouteKind::Quic, Ended::Failed { ready: false });
        assert_eq!(
            c.wanted(t0, routes(&[RouteKind::Quic]), true),
            RouteKind::Ws
        );
        assert_eq!(
            c.wanted(
                t0 + QUIC_RETRY - Duration::from_millis(1),
                routes(&[]),
                true
            ),
            RouteKind::Ws
        );
        assert_eq!(
            c.wanted(t0 + QUIC_RETRY, routes(&[]), true),
            RouteKind::Quic
        );
        // A WebSocket failure says nothing about QUIC; a QUIC session that worked clears it.
        c.handle_ended(t0, RouteKind::Quic, Ended::Failed { ready: false });
        c.handle_ended(t0, RouteKind::Ws, Ended::Failed { ready: false });
        assert_eq!(c.wanted(t0, routes(&[]), true), RouteKind::Ws);
        c.handle_ended(t0, RouteKind::Quic, Ended::Failed { ready: true });
        assert_eq!(c.wanted(t0, routes(&[]), true), RouteKind::Quic);
        // No peer's ranking has QUIC (no host serves it): WebSocket from the start.
        c.handle_ended(t0, RouteKind::Quic, Ended::Drain);
        assert_eq!(
            c.wanted(t0, routes(&[RouteKind::Turn]), false),
            RouteKind::Ws
        );
        // Forced: whatever the peers.
        let f = TransportChoice::forced(RouteKind::Ws);
        assert_eq!(
            f.wanted(t0, routes(&[RouteKind::Quic]), true),
            RouteKind::Ws
        );
    }

    #[test]
    fn a_switch_is_immediate_and_avoids_nothing() {
        let t0 = epoch();
        let mut rng = StdRng::seed_from_u64(3);
        let mut f = Failover::new(1, 0);
        assert_eq!(
            f.handle_ended(t0, Some("a"), Ended::Switch, &mut rng),
            Some(Duration::ZERO)
        );
        assert!(!f.is_avoided(t0, "a"));
    }

    #[test]
    fn a_session_that_stops_carrying_handshakes_is_given_up() {
        let t0 = epoch();
        let mut initiation = vec![0u8; 148];
        initiation[0] = 1;
        let mut w = CarrierWatch::default();
        // Data and keepalives start no clock.
        w.handle_outgoing(t0, &[4, 0, 0, 0, 9]);
        assert!(!w.is_stalled(t0 + CARRIER_TIMEOUT * 2));
        // Initiations every 5 s, nothing back: stalled at the timeout, not before.
        w.handle_outgoing(t0, &initiation);
        w.handle_outgoing(t0 + Duration::from_secs(5), &initiation);
        assert!(!w.is_stalled(t0 + CARRIER_TIMEOUT - Duration::from_millis(1)));
        assert!(w.is_stalled(t0 + CARRIER_TIMEOUT));
        // Anything back from a peer: carrying again; the next initiation starts afresh.
        w.handle_incoming();
        assert!(!w.is_stalled(t0 + CARRIER_TIMEOUT));
        let t1 = t0 + Duration::from_secs(20);
        w.handle_outgoing(t1, &initiation);
        assert!(w.is_stalled(t1 + CARRIER_TIMEOUT));
        // PEER_GONE explains the silence: no host switch for it.
        w.handle_peer_gone();
        assert!(!w.is_stalled(t1 + CARRIER_TIMEOUT * 3));
    }
}
