//! Route ranking for `POST /api/v1/routing/request` and the relay host choice of
//! `GET /api/v1/turn/ice`: pure functions over the nodes and relay hosts the handlers read,
//! with the random number generator passed in, tested with tables.
//!
//! # Routes
//!
//! For each candidate node (every live node, or the requested target):
//!
//! * a **direct** route when the two NAT types can punch through each other ([`can_punch`]);
//! * a **relay** route through TURN on the best relay host, always, as the fallback;
//! * a relay route through the WebSocket and the QUIC relay of the best host that serves
//!   them, preferring the host where the target already holds its relay session (no mesh
//!   hop).
//!
//! # NAT compatibility
//!
//! RFC 4787 behaviours. A symmetric NAT picks a new mapping per destination, which a
//! port-restricted peer's filter drops (it only admits the address and port it sent to) and
//! another symmetric NAT cannot predict. Every other pair punches with simultaneous sends.
//!
//! | client \ node   | FullCone | RestrictedCone | PortRestricted | Symmetric |
//! |-----------------|----------|----------------|----------------|-----------|
//! | FullCone        | direct   | direct         | direct         | direct    |
//! | RestrictedCone  | direct   | direct         | direct         | direct    |
//! | PortRestricted  | direct   | direct         | direct         | relay     |
//! | Symmetric       | direct   | direct         | relay          | relay     |
//!
//! # Cost
//!
//! Lower is better; the unit is roughly milliseconds of latency.
//!
//! * Node: its heartbeat latency ([`UNKNOWN_LATENCY_MS`] before it reported one), plus
//!   [`LOAD_WEIGHT`] times its load (the fuller of `activeConnections / maxConnections` and
//!   bandwidth in use over its capacity), plus [`REGION_PENALTY`] and [`COUNTRY_PENALTY`]
//!   when it misses the requested preferences.
//! * Relay: [`RELAY_PENALTY`] (so a working direct route wins) and a per-transport penalty
//!   (UDP TURN 0, QUIC [`QUIC_PENALTY`], WebSocket [`WS_PENALTY`]: TCP's head-of-line
//!   blocking), plus the relay host's cost: the detour it adds between client and node
//!   ([`distance_ms`]) and [`HOST_LOAD_WEIGHT`] times its utilization. Draining hosts (they
//!   take no new allocations or sessions) are skipped while any host is not draining, and
//!   hosts at capacity while any has room.
//!
//! # Balancing
//!
//! Every answer is computed from the same heartbeat data until the next heartbeats arrive, so
//! always taking the cheapest host would send a burst of requests to one host. Instead
//! [`two_choices`] draws two distinct hosts at random and takes the cheaper (the "power of two
//! choices"): load spreads, and a host that is clearly worse than another is never picked.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use boson_shared::NodeId;
use boson_shared::plane::HostId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::hosts::HostRecord;
use crate::domain::model::NodeRecord;
use crate::domain::model::{
    FieldError, MAX_BANDWIDTH, MAX_LATENCY_MS, MAX_REGION_LEN, NatType, check_country,
    check_mapped_address, check_number, check_text,
};

/// `POST /api/v1/routing/request`, as in the seed protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingRequest {
    /// The asking node; must be the holder of the token.
    pub client_id: NodeId,
    /// A specific node to reach; without it the best nodes are ranked.
    #[serde(default)]
    pub target_node_id: Option<NodeId>,
    /// Constraints and preferences.
    #[serde(default)]
    pub requirements: Requirements,
    /// How the client itself is reachable.
    pub client_network_info: ClientNetworkInfo,
}

/// Constraints and preferences of a routing request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirements {
    /// Mbit/s the node must be able to send.
    #[serde(default)]
    pub min_bandwidth: Option<f64>,
    /// Largest acceptable node latency, ms.
    #[serde(default)]
    pub max_latency: Option<f64>,
    /// Preferred region, such as `US-CA`.
    #[serde(default)]
    pub preferred_location: Option<String>,
    /// Preferred country code.
    #[serde(default)]
    pub preferred_country: Option<String>,
}

/// The client's network, as its STUN probes found it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientNetworkInfo {
    /// Its address as it sees it.
    pub ipv4: Ipv4Addr,
    /// Its NAT behaviour.
    pub nat_type: NatType,
    /// Its public address as a STUN server saw it.
    #[serde(default)]
    pub stun_mapped_address: Option<SocketAddr>,
}

impl RoutingRequest {
    /// Checks every value as registration does: numbers finite and in range, text short and
    /// printable. `clientId` and `targetNodeId` are UUIDs by type; that the client is the
    /// token's node is the handler's check.
    pub fn validate(&self) -> Result<(), FieldError> {
        let requirements = &self.requirements;
        let code = "invalid_requirements";
        if let Some(min) = requirements.min_bandwidth {
            check_number(min, 0.0, MAX_BANDWIDTH, code, "requirements.minBandwidth")?;
        }
        if let Some(max) = requirements.max_latency {
            check_number(max, 0.0, MAX_LATENCY_MS, code, "requirements.maxLatency")?;
        }
        if let Some(region) = &requirements.preferred_location {
            check_text(
                region,
                MAX_REGION_LEN,
                code,
                "requirements.preferredLocation",
            )?;
        }
        if let Some(country) = &requirements.preferred_country {
            check_country(country, code, "requirements.preferredCountry")?;
        }
        check_mapped_address(
            self.client_network_info.stun_mapped_address,
            "invalid_client_network_info",
            "clientNetworkInfo.stunMappedAddress",
        )
    }
}

/// How traffic gets to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteType {
    /// Peer to peer, after hole punching.
    Direct,
    /// Through a relay host.
    Relay,
}

/// How a relayed route reaches its relay host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTransport {
    /// TURN over UDP (RFC 8656).
    Turn,
    /// The QUIC relay.
    Quic,
    /// The WebSocket relay over TCP.
    Ws,
    /// The WebSocket relay over TLS.
    Wss,
}

impl RelayTransport {
    fn label(self) -> &'static str {
        match self {
            Self::Turn => "turn",
            Self::Quic => "quic",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    fn penalty(self) -> f64 {
        match self {
            Self::Turn => 0.0,
            Self::Quic => QUIC_PENALTY,
            Self::Ws | Self::Wss => WS_PENALTY,
        }
    }
}

/// The relay host of a relayed route.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayHop {
    /// The host.
    #[serde(with = "crate::domain::hosts::host_id_text")]
    pub host_id: HostId,
    /// Its region.
    pub region: String,
    /// Where to reach it: a `turn:` URL, the `ws://`/`wss://` relay URL, or `quic://HOST:PORT`.
    pub url: String,
}

/// One ranked route.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Stable for the same type, transport and node: `direct:<nodeId>`, `relay:<nodeId>`
    /// (TURN), `relay-quic:<nodeId>`, `relay-ws:<nodeId>` or `relay-wss:<nodeId>`.
    pub id: String,
    /// Direct or relayed.
    #[serde(rename = "type")]
    pub route_type: RouteType,
    /// For a relayed route, how it reaches the relay.
    pub transport: Option<RelayTransport>,
    /// For a relayed route, the relay host.
    pub relay: Option<RelayHop>,
    /// Node ids from the client's side to the target.
    pub path: Vec<NodeId>,
    /// The node's WireGuard endpoint for a direct route.
    pub endpoint: Option<SocketAddr>,
    /// Latency estimate, ms.
    pub estimated_latency: f64,
    /// Bandwidth estimate, Mbit/s.
    pub estimated_bandwidth: f64,
    /// Lower is better.
    pub cost: f64,
    /// 100 for the best route, lower for the others.
    pub priority: u32,
    /// Why this route, in words.
    pub explanation: String,
}

/// Everything [`rank`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct RankInput<'a> {
    /// The request.
    pub request: &'a RoutingRequest,
    /// The client's own registration, for its location (absent if it vanished meanwhile).
    pub client: Option<&'a NodeRecord>,
    /// Live nodes to route to.
    pub candidates: &'a [NodeRecord],
    /// Live relay hosts.
    pub hosts: &'a [HostRecord],
    /// Where candidates hold relay sessions, as far as known.
    pub presence: &'a BTreeMap<NodeId, HostId>,
}

/// Latency assumed for a node that has not reported one yet, ms.
pub const UNKNOWN_LATENCY_MS: f64 = 200.0;
/// Extra latency a relay adds (two legs and a hop through a host), ms.
pub const RELAY_EXTRA_LATENCY_MS: f64 = 20.0;
/// Cost added to a relayed route, so that a working direct route wins.
pub const RELAY_PENALTY: f64 = 50.0;
/// Cost of a QUIC relay leg over TURN's plain UDP.
pub const QUIC_PENALTY: f64 = 5.0;
/// Cost of a WebSocket relay leg over TURN's plain UDP (TCP head-of-line blocking).
pub const WS_PENALTY: f64 = 10.0;
/// Cost of a relay route to a node that holds no relay session now (it must connect first)
/// or holds it on another host (one more hop through the mesh).
pub const MESH_HOP_PENALTY: f64 = 15.0;
/// Cost of a fully loaded node.
pub const LOAD_WEIGHT: f64 = 100.0;
/// Cost of a fully utilized relay host.
pub const HOST_LOAD_WEIGHT: f64 = 100.0;
/// Cost of missing the preferred region.
pub const REGION_PENALTY: f64 = 40.0;
/// Cost of missing the preferred country.
pub const COUNTRY_PENALTY: f64 = 20.0;
/// Estimated round trip between two places in one country, ms.
pub const SAME_COUNTRY_MS: f64 = 15.0;
/// Estimated round trip between two countries, ms.
pub const OTHER_COUNTRY_MS: f64 = 80.0;
/// Estimated round trip when a place is unknown, ms.
pub const UNKNOWN_DISTANCE_MS: f64 = 40.0;
/// Light in fibre covers about 100 km per millisecond of round trip (200 000 km/s, both ways).
pub const KM_PER_RTT_MS: f64 = 100.0;
/// Routes returned at most.
pub const MAX_ROUTES: usize = 10;

/// Whether two NATs can usually be punched through; the table is in the module doc.
pub fn can_punch(a: NatType, b: NatType) -> bool {
    use NatType::{PortRestricted, Symmetric};
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

/// Where a node or host is, as far as known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place<'a> {
    /// `CC-REGION` or free form; empty when unknown.
    pub region: &'a str,
    /// ISO country code; empty when unknown.
    pub country: &'a str,
    /// Latitude and longitude, degrees.
    pub coordinates: Option<[f64; 2]>,
}

impl<'a> Place<'a> {
    /// Where a node registered.
    pub fn of_node(node: &'a NodeRecord) -> Self {
        let location = &node.registration.location;
        Self {
            region: &location.region,
            country: &location.country,
            coordinates: location.coordinates,
        }
    }

    /// Where a host is configured; its country is its region's `CC-` prefix.
    pub fn of_host(host: &'a HostRecord) -> Self {
        let country = match host.region.split_once('-') {
            Some((cc, _)) if cc.len() == 2 => cc,
            _ if host.region.len() == 2 => &host.region,
            _ => "",
        };
        Self {
            region: &host.region,
            country,
            coordinates: host.coordinates,
        }
    }
}

/// Estimated round trip between two places, ms: from coordinates when both have them (great
/// circle distance over [`KM_PER_RTT_MS`]), else 0 in one region, [`SAME_COUNTRY_MS`] in one
/// country, [`OTHER_COUNTRY_MS`] between countries, [`UNKNOWN_DISTANCE_MS`] when unknown.
pub fn distance_ms(a: &Place<'_>, b: &Place<'_>) -> f64 {
    if let (Some(x), Some(y)) = (a.coordinates, b.coordinates) {
        return great_circle_km(x, y) / KM_PER_RTT_MS;
    }
    let known = |text: &str| !text.is_empty();
    if known(a.region) && a.region.eq_ignore_ascii_case(b.region) {
        0.0
    } else if !known(a.country) || !known(b.country) {
        UNKNOWN_DISTANCE_MS
    } else if a.country.eq_ignore_ascii_case(b.country) {
        SAME_COUNTRY_MS
    } else {
        OTHER_COUNTRY_MS
    }
}

/// Haversine distance between two `[lat, lon]` points in degrees, km.
fn great_circle_km(a: [f64; 2], b: [f64; 2]) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (a[0].to_radians(), b[0].to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b[1] - a[1]).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// A relay host picked for a route, with its cost and why it was picked.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'h> {
    /// The host.
    pub host: &'h HostRecord,
    /// Its cost.
    pub cost: f64,
    /// Why this host.
    pub pick: Pick<'h>,
}

/// Why a [`Choice`] fell on its host.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'h> {
    /// [`two_choices`] drew it and this other host (with its cost), and it was not dearer.
    Over(&'h HostRecord, f64),
    /// It was the only eligible host.
    Only,
    /// The route's node holds its relay session there.
    Home,
}

impl Choice<'_> {
    fn explain(&self) -> String {
        let (host, cost) = (self.host.host_id.0, self.cost);
        match self.pick {
            Pick::Over(rival, rival_cost) => format!(
                "power of two choices: host {host} (cost {cost:.1}) over {} (cost \
                 {rival_cost:.1})",
                rival.host_id.0
            ),
            Pick::Only => format!("the only eligible host {host} (cost {cost:.1})"),
            Pick::Home => format!("host {host} (cost {cost:.1})"),
        }
    }
}

/// The power of two choices: draws two distinct hosts and keeps the cheaper (the first drawn
/// on a tie). `None` without hosts.
pub fn two_choices<'h, R: Rng + ?Sized>(
    hosts: &[&'h HostRecord],
    cost: impl Fn(&HostRecord) -> f64,
    rng: &mut R,
) -> Option<Choice<'h>> {
    let n = hosts.len();
    match n {
        0 => None,
        1 => Some(Choice {
            host: hosts[0],
            cost: cost(hosts[0]),
            pick: Pick::Only,
        }),
        _ => {
            let first = rng.random_range(0..n);
            let mut second = rng.random_range(0..n - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (hosts[first], hosts[second]);
            let (cost_a, cost_b) = (cost(a), cost(b));
            Some(if cost_b < cost_a {
                Choice {
                    host: b,
                    cost: cost_b,
                    pick: Pick::Over(a, cost_a),
                }
            } else {
                Choice {
                    host: a,
                    cost: cost_a,
                    pick: Pick::Over(b, cost_b),
                }
            })
        }
    }
}

/// The hosts a new route may use, and whether they are a fallback.
#[derive(Debug)]
struct Pool<'h> {
    hosts: Vec<&'h HostRecord>,
    fallback: Fallback,
}

/// Which hosts a [`Pool`] had to settle for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// None: hosts that accept new work and have room.
    None,
    /// Every host is at capacity: those that accept new work.
    Full,
    /// Every host is draining: all of them (they still answer STUN and relay for what they
    /// hold, and routing through one beats no route).
    Draining,
}

impl Fallback {
    /// What a route's explanation says about it.
    fn note(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Full => "; every relay host is at capacity",
            Self::Draining => "; every relay host is draining",
        }
    }
}

/// Hosts that are not draining and have room. Failing that, the least bad: those not
/// draining (an overloaded relay beats none), else every host.
fn eligible<'h>(hosts: impl Iterator<Item = &'h HostRecord> + Clone) -> Pool<'h> {
    let accepting: Vec<&HostRecord> = hosts.clone().filter(|h| h.is_accepting()).collect();
    if accepting.is_empty() {
        let all: Vec<&HostRecord> = hosts.collect();
        let with_room: Vec<&HostRecord> = all.iter().copied().filter(|h| h.has_room()).collect();
        return Pool {
            hosts: if with_room.is_empty() { all } else { with_room },
            fallback: Fallback::Draining,
        };
    }
    let with_room: Vec<&HostRecord> = accepting.iter().copied().filter(|h| h.has_room()).collect();
    if with_room.is_empty() {
        Pool {
            hosts: accepting,
            fallback: Fallback::Full,
        }
    } else {
        Pool {
            hosts: with_room,
            fallback: Fallback::None,
        }
    }
}

/// The relay hosts for a node's ICE servers: the first by [`two_choices`] on distance to the
/// caller and utilization, then the cheapest other eligible host as a fallback.
pub fn choose_ice_hosts<'h, R: Rng + ?Sized>(
    caller: Option<&Place<'_>>,
    hosts: &'h [HostRecord],
    rng: &mut R,
) -> Vec<&'h HostRecord> {
    let cost = |host: &HostRecord| {
        caller.map_or(0.0, |caller| distance_ms(caller, &Place::of_host(host)))
            + HOST_LOAD_WEIGHT * host.utilization().min(2.0)
    };
    let pool = eligible(hosts.iter()).hosts;
    let Some(first) = two_choices(&pool, cost, rng) else {
        return Vec::new();
    };
    let runner_up = pool
        .iter()
        .filter(|host| host.host_id != first.host.host_id)
        .min_by(|a, b| {
            cost(a)
                .total_cmp(&cost(b))
                .then_with(|| a.host_id.cmp(&b.host_id))
        });
    let mut chosen = vec![first.host];
    chosen.extend(runner_up);
    chosen
}

/// Ranks routes from the client to each candidate (the client itself is skipped), cheapest
/// first, at most [`MAX_ROUTES`].
pub fn rank<R: Rng + ?Sized>(input: &RankInput<'_>, rng: &mut R) -> Vec<Route> {
    let request = input.request;
    let mut routes: Vec<Route> = Vec::new();
    for node in input.candidates {
        if node.node_id == request.client_id || !meets(&request.requirements, node) {
            continue;
        }
        routes.extend(routes_to(input, node, rng));
    }
    finish(routes)
}

/// Sorts cheapest first (ties by id), keeps [`MAX_ROUTES`], numbers the priorities.
fn finish(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.id.cmp(&b.id)));
    routes.truncate(MAX_ROUTES);
    for (rank, route) in routes.iter_mut().enumerate() {
        route.priority = 100u32.saturating_sub(u32::try_from(rank).unwrap_or(u32::MAX) * 10);
    }
    routes
}

/// As [`rank`], over nodes that come in increasing `bound`, where every route to a node costs
/// at least its bound (as [`crate::domain::route_index::RouteIndex::ordered`] yields them;
/// `input.candidates` is not read). It stops at the first node whose bound exceeds the
/// [`MAX_ROUTES`]th best cost so far: no later node can have a route among the best, so the
/// answer is [`rank`]'s over all of them, and its cost is the nodes looked at.
pub fn rank_ordered<'n, R: Rng + ?Sized>(
    input: &RankInput<'_>,
    ordered: impl Iterator<Item = (f64, &'n NodeRecord)>,
    rng: &mut R,
) -> Vec<Route> {
    let request = input.request;
    let mut routes: Vec<Route> = Vec::new();
    for (bound, node) in ordered {
        if routes.len() >= MAX_ROUTES {
            routes.sort_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.id.cmp(&b.id)));
            routes.truncate(MAX_ROUTES);
            let worst = routes[MAX_ROUTES - 1].cost;
            // The bound adds the same penalties in another order: allow for rounding, so a
            // node whose route might tie is still looked at.
            if bound - worst > BOUND_SLACK * worst.abs().max(1.0) {
                break;
            }
        }
        if node.node_id == request.client_id || !meets(&request.requirements, node) {
            continue;
        }
        routes.extend(routes_to(input, node, rng));
    }
    finish(routes)
}

/// Relative slack of [`rank_ordered`]'s stopping test.
const BOUND_SLACK: f64 = 1e-9;

/// What every route to `node` costs at least: its latency plus its load (before the
/// request's preferences, NAT and relay add theirs).
pub fn intrinsic_cost(node: &NodeRecord) -> f64 {
    latency(node) + LOAD_WEIGHT * node_load(node).min(1.0)
}

fn latency(node: &NodeRecord) -> f64 {
    node.metrics
        .as_ref()
        .map_or(UNKNOWN_LATENCY_MS, |m| m.latency)
}

/// The fuller of connections and bandwidth in use, as a fraction of the node's capacity.
fn node_load(node: &NodeRecord) -> f64 {
    let capabilities = &node.registration.capabilities;
    let Some(metrics) = &node.metrics else {
        return 0.0;
    };
    let connections =
        f64::from(metrics.active_connections) / f64::from(capabilities.max_connections.max(1));
    let bandwidth = match metrics.bandwidth {
        Some(used) if capabilities.bandwidth.up > 0.0 && capabilities.bandwidth.down > 0.0 => {
            (used.up / capabilities.bandwidth.up).max(used.down / capabilities.bandwidth.down)
        }
        Some(_) | None => 0.0,
    };
    connections.max(bandwidth)
}

fn meets(requirements: &Requirements, node: &NodeRecord) -> bool {
    let bandwidth_ok = requirements
        .min_bandwidth
        .is_none_or(|min| node.registration.capabilities.bandwidth.up >= min);
    let latency_ok = requirements
        .max_latency
        .is_none_or(|max| latency(node) <= max);
    bandwidth_ok && latency_ok
}

fn routes_to<R: Rng + ?Sized>(input: &RankInput<'_>, node: &NodeRecord, rng: &mut R) -> Vec<Route> {
    let request = input.request;
    let requirements = &request.requirements;
    let capabilities = &node.registration.capabilities;
    let location = &node.registration.location;
    let mut reasons = Vec::new();

    let active = node.metrics.as_ref().map_or(0, |m| m.active_connections);
    let load = node_load(node);
    reasons.push(format!(
        "node latency {:.1} ms, load {active}/{} connections ({:.0}%)",
        latency(node),
        capabilities.max_connections,
        load * 100.0
    ));
    let mut base_cost = intrinsic_cost(node);
    if let Some(region) = &requirements.preferred_location {
        if region.eq_ignore_ascii_case(&location.region) {
            reasons.push(format!("in preferred region {region}"));
        } else {
            base_cost += REGION_PENALTY;
        }
    }
    if let Some(country) = &requirements.preferred_country {
        if country.eq_ignore_ascii_case(&location.country) {
            reasons.push(format!("in preferred country {country}"));
        } else {
            base_cost += COUNTRY_PENALTY;
        }
    }
    let bandwidth = capabilities.bandwidth.up;
    let client_nat = request.client_network_info.nat_type;
    let node_nat = node.registration.network_info.nat_type;
    let punches = can_punch(client_nat, node_nat);
    let explain = |first: String| {
        let mut all = vec![first];
        all.extend(reasons.iter().cloned());
        all.join("; ")
    };

    let mut routes = Vec::with_capacity(4);
    if punches {
        let info = &node.registration.network_info;
        let endpoint = info
            .stun_mapped_address
            .or_else(|| Some(SocketAddr::from((info.ipv4, info.local_port))));
        routes.push(Route {
            id: format!("direct:{}", node.node_id),
            route_type: RouteType::Direct,
            transport: None,
            relay: None,
            path: vec![node.node_id],
            endpoint,
            estimated_latency: latency(node),
            estimated_bandwidth: bandwidth,
            cost: base_cost,
            priority: 0,
            explanation: explain(format!(
                "{client_nat:?} and {node_nat:?} NATs can punch through"
            )),
        });
    }
    let why_relay = if punches {
        "fallback if hole punching fails".to_owned()
    } else {
        format!("{client_nat:?} and {node_nat:?} NATs cannot punch through")
    };

    let client = input.client.map(Place::of_node);
    let target = Place::of_node(node);
    let detour = |host: &HostRecord| {
        let via = Place::of_host(host);
        let direct = client.as_ref().map_or(0.0, |c| distance_ms(c, &target));
        let legs =
            client.as_ref().map_or(0.0, |c| distance_ms(c, &via)) + distance_ms(&via, &target);
        (legs - direct).max(0.0)
    };
    let host_cost =
        |host: &HostRecord| detour(host) + HOST_LOAD_WEIGHT * host.utilization().min(2.0);
    let at = input.presence.get(&node.node_id).copied();

    let relay_route = |transport: RelayTransport, choice: Choice<'_>, url: String, note: String| {
        let host = choice.host;
        let id = match transport {
            RelayTransport::Turn => format!("relay:{}", node.node_id),
            other @ (RelayTransport::Quic | RelayTransport::Ws | RelayTransport::Wss) => {
                format!("relay-{}:{}", other.label(), node.node_id)
            }
        };
        let mesh = if transport == RelayTransport::Turn || at == Some(host.host_id) {
            0.0
        } else {
            MESH_HOP_PENALTY
        };
        Route {
            id,
            route_type: RouteType::Relay,
            transport: Some(transport),
            relay: Some(RelayHop {
                host_id: host.host_id,
                region: host.region.clone(),
                url,
            }),
            path: vec![node.node_id],
            endpoint: None,
            estimated_latency: latency(node) + RELAY_EXTRA_LATENCY_MS + detour(host),
            estimated_bandwidth: bandwidth,
            cost: base_cost + RELAY_PENALTY + transport.penalty() + choice.cost + mesh,
            priority: 0,
            explanation: explain(format!(
                "{why_relay}: {} relay; {}; host load {:.0}%{note}",
                transport.label(),
                choice.explain(),
                host.utilization() * 100.0
            )),
        }
    };

    let pool = eligible(input.hosts.iter());
    if let Some(choice) = two_choices(&pool.hosts, host_cost, rng) {
        let url = choice.host.addresses.turn_url();
        let note = pool.fallback.note().to_owned();
        routes.push(relay_route(RelayTransport::Turn, choice, url, note));
    }

    for transport in [RelayTransport::Quic, RelayTransport::Ws] {
        let url_of = |host: &HostRecord| -> Option<(RelayTransport, String)> {
            match transport {
                RelayTransport::Quic => host
                    .addresses
                    .quic_addr
                    .as_ref()
                    .map(|addr| (RelayTransport::Quic, format!("quic://{addr}"))),
                RelayTransport::Turn | RelayTransport::Ws | RelayTransport::Wss => {
                    host.addresses.relay_url.as_ref().map(|url| {
                        let t = if url.starts_with("wss://") {
                            RelayTransport::Wss
                        } else {
                            RelayTransport::Ws
                        };
                        (t, url.clone())
                    })
                }
            }
        };
        let serving: Vec<&HostRecord> =
            input.hosts.iter().filter(|h| url_of(h).is_some()).collect();
        let pool = eligible(serving.iter().copied());
        // Where the node holds its relay session, the relay needs no mesh hop; unless that
        // host is draining: it takes no new sessions.
        let home = at.and_then(|at| serving.iter().copied().find(|h| h.host_id == at));
        let open_home = home.filter(|h| h.is_accepting() || pool.fallback == Fallback::Draining);
        let (choice, note) = match open_home {
            Some(host) => (
                Some(Choice {
                    host,
                    cost: host_cost(host),
                    pick: Pick::Home,
                }),
                "; the node holds its relay session on this host",
            ),
            None => {
                let note = match (pool.fallback, at, home) {
                    (Fallback::Full | Fallback::Draining, _, _) => pool.fallback.note(),
                    (Fallback::None, _, Some(_)) => {
                        "; the node's relay host is draining: one mesh hop"
                    }
                    (Fallback::None, Some(_), None) => {
                        "; the node's relay host does not serve this transport: one mesh hop"
                    }
                    (Fallback::None, None, None) => "; the node holds no relay session now",
                };
                (two_choices(&pool.hosts, host_cost, rng), note)
            }
        };
        let note = note.to_owned();
        if let Some(choice) = choice
            && let Some((transport, url)) = url_of(choice.host)
        {
            routes.push(relay_route(transport, choice, url, note));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use boson_shared::WgPublicKey;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::clock::UnixMillis;
    use crate::domain::hosts::HostLoad;
    use crate::domain::hosts::tests::host;
    use crate::domain::model::{
        Bandwidth, Capabilities, Location, NetworkInfo, NodeMetrics, NodeStatus, Registration,
    };

    fn id(n: u8) -> NodeId {
        format!("00000000-0000-4000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    fn node(n: u8, nat: NatType, latency: f64, active: u32, region: &str) -> NodeRecord {
        NodeRecord {
            node_id: id(n),
            public_key: WgPublicKey::from_bytes([n; 32]),
            generation: 1,
            registration: Registration {
                network_info: NetworkInfo {
                    ipv4: [192, 0, 2, n].into(),
                    ipv6: None,
                    nat_type: nat,
                    stun_mapped_address: None,
                    local_port: 51820,
                    public_ip: None,
                },
                capabilities: Capabilities {
                    max_connections: 100,
                    bandwidth: Bandwidth {
                        up: 100.0,
                        down: 100.0,
                    },
                    routing: true,
                    natting: false,
                },
                location: Location {
                    country: region[..2].to_owned(),
                    region: region.to_owned(),
                    coordinates: None,
                },
            },
            status: NodeStatus::Active,
            reported_status: None,
            metrics: Some(NodeMetrics {
                latency,
                cpu_usage: 10.0,
                active_connections: active,
                jitter: None,
                packet_loss: None,
                memory_usage: None,
                bandwidth: None,
            }),
            registered_at: UnixMillis(0),
            last_seen: UnixMillis(0),
            token_expires_at: UnixMillis(0),
        }
    }

    fn request(nat: NatType, target: Option<u8>) -> RoutingRequest {
        RoutingRequest {
            client_id: id(99),
            target_node_id: target.map(id),
            requirements: Requirements::default(),
            client_network_info: ClientNetworkInfo {
                ipv4: [198, 51, 100, 7].into(),
                nat_type: nat,
                stun_mapped_address: None,
            },
        }
    }

    fn one_host() -> Vec<HostRecord> {
        vec![host(1, "US-CA", HostLoad::default())]
    }

    fn rank_with(
        request: &RoutingRequest,
        nodes: &[NodeRecord],
        hosts: &[HostRecord],
        presence: &BTreeMap<NodeId, HostId>,
    ) -> Vec<Route> {
        let input = RankInput {
            request,
            client: None,
            candidates: nodes,
            hosts,
            presence,
        };
        rank(&input, &mut StdRng::seed_from_u64(7))
    }

    fn simple_rank(request: &RoutingRequest, nodes: &[NodeRecord]) -> Vec<Route> {
        rank_with(request, nodes, &one_host(), &BTreeMap::new())
    }

    fn load(allocations: u32) -> HostLoad {
        HostLoad {
            allocations,
            sessions: 0,
            bandwidth: 0.0,
        }
    }

    #[test]
    fn nat_table_is_symmetric_and_matches_the_documented_rows() {
        use NatType::*;
        let all = [FullCone, RestrictedCone, PortRestricted, Symmetric];
        let blocked = [
            (PortRestricted, Symmetric),
            (Symmetric, PortRestricted),
            (Symmetric, Symmetric),
        ];
        for a in all {
            for b in all {
                assert_eq!(can_punch(a, b), can_punch(b, a));
                assert_eq!(can_punch(a, b), !blocked.contains(&(a, b)), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn route_types_follow_the_nat_table() {
        use NatType::*;
        let all = [FullCone, RestrictedCone, PortRestricted, Symmetric];
        for client in all {
            for target in all {
                let routes =
                    simple_rank(&request(client, None), &[node(1, target, 10.0, 0, "US-CA")]);
                let types: Vec<RouteType> = routes.iter().map(|r| r.route_type).collect();
                let want = if can_punch(client, target) {
                    vec![RouteType::Direct, RouteType::Relay]
                } else {
                    vec![RouteType::Relay]
                };
                assert_eq!(types, want, "{client:?} -> {target:?}");
            }
        }
    }

    #[test]
    fn symmetric_pairs_get_only_a_relay_route() {
        let nodes = [node(1, NatType::Symmetric, 10.0, 0, "US-CA")];
        let routes = simple_rank(&request(NatType::Symmetric, None), &nodes);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].route_type, RouteType::Relay);
        assert_eq!(routes[0].transport, Some(RelayTransport::Turn));
        assert_eq!(
            routes[0].relay.as_ref().unwrap().url,
            "turn:h1.example.test:3478?transport=udp"
        );
        assert!(routes[0].explanation.contains("cannot punch"));
    }

    #[test]
    fn cheaper_nodes_rank_first_and_direct_beats_relay() {
        let nodes = [
            node(1, NatType::FullCone, 80.0, 0, "US-CA"),
            node(2, NatType::FullCone, 20.0, 0, "US-CA"),
            node(3, NatType::FullCone, 20.0, 100, "US-CA"),
        ];
        let routes = simple_rank(&request(NatType::PortRestricted, None), &nodes);
        let order: Vec<_> = routes.iter().map(|r| r.id.clone()).collect();
        assert_eq!(order[0], format!("direct:{}", id(2)));
        assert_eq!(order[1], format!("relay:{}", id(2)));
        assert_eq!(order[2], format!("direct:{}", id(1)));
        assert_eq!(routes[0].priority, 100);
        assert_eq!(routes[1].priority, 90);
        assert_eq!(
            routes[0].endpoint,
            Some(SocketAddr::from(([192, 0, 2, 2], 51820)))
        );
    }

    #[test]
    fn requirements_filter_and_preferences_reorder() {
        let nodes = [
            node(1, NatType::FullCone, 30.0, 0, "US-CA"),
            node(2, NatType::FullCone, 10.0, 0, "DE-BE"),
            node(3, NatType::FullCone, 500.0, 0, "DE-BE"),
        ];
        let mut req = request(NatType::FullCone, None);
        req.requirements.max_latency = Some(100.0);
        req.requirements.preferred_location = Some("us-ca".into());
        let routes = simple_rank(&req, &nodes);
        assert!(routes.iter().all(|r| r.path != vec![id(3)]), "too slow");
        assert_eq!(routes[0].path, vec![id(1)]);
        req.requirements.min_bandwidth = Some(1000.0);
        assert!(simple_rank(&req, &nodes).is_empty());
    }

    #[test]
    fn the_client_is_never_its_own_route() {
        let nodes = [node(99, NatType::FullCone, 1.0, 0, "US-CA")];
        assert!(simple_rank(&request(NatType::FullCone, None), &nodes).is_empty());
    }

    #[test]
    fn node_bandwidth_in_use_counts_as_load() {
        let idle = node(1, NatType::FullCone, 10.0, 0, "US-CA");
        let mut busy = node(2, NatType::FullCone, 10.0, 0, "US-CA");
        busy.metrics.as_mut().unwrap().bandwidth = Some(Bandwidth {
            up: 90.0,
            down: 10.0,
        });
        assert!((node_load(&busy) - 0.9).abs() < 1e-9);
        let routes = simple_rank(&request(NatType::FullCone, None), &[busy, idle]);
        assert_eq!(routes[0].id, format!("direct:{}", id(1)));
    }

    #[test]
    fn distances_from_coordinates_regions_and_countries() {
        let place = |region, country, coordinates| Place {
            region,
            country,
            coordinates,
        };
        let sf = Some([37.7749, -122.4194]);
        let ny = Some([40.7128, -74.0060]);
        let cases = [
            (place("US-CA", "US", sf), place("US-NY", "US", ny), 41.3),
            (place("US-CA", "US", sf), place("US-CA", "US", sf), 0.0),
            (place("US-CA", "US", None), place("us-ca", "US", None), 0.0),
            (
                place("US-CA", "US", None),
                place("US-NY", "US", None),
                SAME_COUNTRY_MS,
            ),
            (
                place("US-CA", "US", sf),
                place("DE-BE", "DE", None),
                OTHER_COUNTRY_MS,
            ),
            (
                place("", "", None),
                place("DE-BE", "DE", None),
                UNKNOWN_DISTANCE_MS,
            ),
            (
                place("", "", None),
                place("", "", None),
                UNKNOWN_DISTANCE_MS,
            ),
        ];
        for (a, b, want) in cases {
            let got = distance_ms(&a, &b);
            assert!((got - want).abs() < 0.1, "{a:?} {b:?}: {got}");
            assert!((distance_ms(&b, &a) - got).abs() < 1e-9, "symmetric");
        }
        let mut h = host(1, "DE-BE", HostLoad::default());
        assert_eq!(Place::of_host(&h).country, "DE");
        h.region = "europe-west".to_owned();
        assert_eq!(Place::of_host(&h).country, "");
        h.region = "DE".to_owned();
        assert_eq!(Place::of_host(&h).country, "DE");
    }

    #[test]
    fn two_choices_never_picks_the_worse_of_its_pair_and_spreads_ties() {
        let hosts: Vec<HostRecord> = (1..=4).map(|n| host(n, "US-CA", load(0))).collect();
        let refs: Vec<&HostRecord> = hosts.iter().collect();
        let mut rng = StdRng::seed_from_u64(1);
        let mut picks = BTreeMap::new();
        for _ in 0..400 {
            let choice = two_choices(&refs, |_| 1.0, &mut rng).unwrap();
            *picks.entry(choice.host.host_id).or_insert(0) += 1;
            assert!(matches!(choice.pick, Pick::Over(r, _) if r.host_id != choice.host.host_id));
        }
        assert_eq!(picks.len(), 4, "equal hosts all get traffic: {picks:?}");
        assert!(picks.values().all(|&n| n > 50), "{picks:?}");
        // The single costliest host can never win a draw.
        let cost = |h: &HostRecord| {
            if h.host_id == hosts[3].host_id {
                9.0
            } else {
                1.0
            }
        };
        for _ in 0..100 {
            assert_ne!(
                two_choices(&refs, cost, &mut rng).unwrap().host.host_id,
                hosts[3].host_id
            );
        }
        assert!(two_choices(&[], cost, &mut rng).is_none());
        assert!(matches!(
            two_choices(&refs[..1], cost, &mut rng).unwrap().pick,
            Pick::Only
        ));
    }

    #[test]
    fn relay_hosts_are_chosen_by_load_and_distance() {
        let target = node(1, NatType::Symmetric, 10.0, 0, "DE-BE");
        let req = request(NatType::Symmetric, None);
        let hosts_of = |specs: &[(u8, &str, u32)]| -> Vec<HostRecord> {
            specs
                .iter()
                .map(|&(n, region, used)| host(n, region, load(used)))
                .collect()
        };
        let cases: [(&str, Vec<HostRecord>, u8); 4] = [
            (
                "idle beats busy",
                hosts_of(&[(1, "DE-BE", 90), (2, "DE-BE", 0)]),
                2,
            ),
            (
                "near beats far",
                hosts_of(&[(1, "US-CA", 0), (2, "DE-BE", 0)]),
                2,
            ),
            (
                "full is skipped",
                hosts_of(&[(1, "DE-BE", 100), (2, "US-CA", 50)]),
                2,
            ),
            (
                "all full: least bad",
                hosts_of(&[(1, "DE-BE", 100), (2, "DE-BE", 150)]),
                1,
            ),
        ];
        for (what, hosts, want) in cases {
            for seed in 0..20 {
                let input = RankInput {
                    request: &req,
                    client: None,
                    candidates: std::slice::from_ref(&target),
                    hosts: &hosts,
                    presence: &BTreeMap::new(),
                };
                let routes = rank(&input, &mut StdRng::seed_from_u64(seed));
                let hop = routes[0].relay.as_ref().unwrap();
                assert_eq!(
                    hop.host_id,
                    host(want, "", load(0)).host_id,
                    "{what}: {}",
                    routes[0].explanation
                );
            }
        }
    }

    #[test]
    fn websocket_and_quic_relays_prefer_the_host_the_node_is_on() {
        let mut hosts: Vec<HostRecord> = (1..=3).map(|n| host(n, "US-CA", load(0))).collect();
        for h in &mut hosts[..2] {
            h.addresses.relay_url = Some(format!("wss://{}/relay", h.addresses.turn_host));
            h.addresses.quic_addr = Some(format!("{}:443", h.addresses.turn_host));
        }
        let target = node(1, NatType::Symmetric, 10.0, 0, "US-CA");
        let req = request(NatType::Symmetric, Some(1));
        let presence = BTreeMap::from([(id(1), hosts[1].host_id)]);
        for seed in 0..10 {
            let input = RankInput {
                request: &req,
                client: None,
                candidates: std::slice::from_ref(&target),
                hosts: &hosts,
                presence: &presence,
            };
            let routes = rank(&input, &mut StdRng::seed_from_u64(seed));
            let kinds: Vec<(String, Option<RelayTransport>)> =
                routes.iter().map(|r| (r.id.clone(), r.transport)).collect();
            assert_eq!(
                kinds,
                vec![
                    (format!("relay:{}", id(1)), Some(RelayTransport::Turn)),
                    (format!("relay-quic:{}", id(1)), Some(RelayTransport::Quic)),
                    (format!("relay-wss:{}", id(1)), Some(RelayTransport::Wss)),
                ]
            );
            for route in &routes[1..] {
                let hop = route.relay.as_ref().unwrap();
                assert_eq!(hop.host_id, hosts[1].host_id, "{}", route.explanation);
                assert!(
                    route
                        .explanation
                        .contains("holds its relay session on this host")
                );
                // Two hosts serve it: the home host is not "the only eligible" one.
                assert!(
                    !route.explanation.contains("only eligible"),
                    "{}",
                    route.explanation
                );
            }
            assert_eq!(
                routes[1].relay.as_ref().unwrap().url,
                "quic://h2.example.test:443"
            );
        }
        // Not connected anywhere: still offered, behind TURN, with the reason.
        let routes = rank_with(
            &req,
            std::slice::from_ref(&target),
            &hosts,
            &BTreeMap::new(),
        );
        assert!(
            routes[2].explanation.contains("holds no relay session"),
            "{}",
            routes[2].explanation
        );
        assert!(routes[2].cost > routes[0].cost);
    }

    #[test]
    fn draining_hosts_get_no_new_routes_while_another_host_takes_them() {
        let mut hosts: Vec<HostRecord> = (1..=3).map(|n| host(n, "US-CA", load(0))).collect();
        for h in &mut hosts {
            h.addresses.relay_url = Some(format!("ws://{}/relay", h.addresses.turn_host));
        }
        hosts[1].draining = true;
        let draining = hosts[1].host_id;
        let target = node(1, NatType::Symmetric, 10.0, 0, "US-CA");
        let req = request(NatType::Symmetric, Some(1));
        // The node holds its relay session on the draining host.
        let presence = BTreeMap::from([(id(1), draining)]);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..40 {
            let input = RankInput {
                request: &req,
                client: None,
                candidates: std::slice::from_ref(&target),
                hosts: &hosts,
                presence: &presence,
            };
            let routes = rank(&input, &mut rng);
            assert_eq!(routes.len(), 2, "TURN and WebSocket");
            for route in &routes {
                let hop = route.relay.as_ref().unwrap();
                assert_ne!(hop.host_id, draining, "{}", route.explanation);
            }
            let ws = &routes[1];
            assert_eq!(ws.transport, Some(RelayTransport::Ws));
            assert!(
                ws.explanation
                    .contains("the node's relay host is draining: one mesh hop"),
                "{}",
                ws.explanation
            );
            let ice = choose_ice_hosts(None, &hosts, &mut rng);
            assert_eq!(ice.len(), 2);
            assert!(ice.iter().all(|h| h.host_id != draining));
        }

        // A full host that accepts beats an idle one that drains.
        let mut full = host(4, "US-CA", load(100));
        full.addresses.relay_url = Some("ws://h4.example.test/relay".to_owned());
        let pair = [full, hosts[1].clone()];
        let routes = rank_with(&req, std::slice::from_ref(&target), &pair, &presence);
        for route in &routes {
            assert_eq!(route.relay.as_ref().unwrap().host_id, pair[0].host_id);
            assert!(
                route
                    .explanation
                    .contains("every relay host is at capacity")
            );
        }

        // Every host draining: routes still name one (it relays what it holds, and answers
        // STUN), say why, and the node's own host is preferred again.
        for h in &mut hosts {
            h.draining = true;
        }
        let routes = rank_with(&req, std::slice::from_ref(&target), &hosts, &presence);
        assert!(
            routes[0]
                .explanation
                .contains("every relay host is draining"),
            "{}",
            routes[0].explanation
        );
        assert_eq!(routes[1].relay.as_ref().unwrap().host_id, draining);
        assert!(
            routes[1]
                .explanation
                .contains("holds its relay session on this host")
        );
        assert_eq!(choose_ice_hosts(None, &hosts, &mut rng).len(), 2);
    }

    #[test]
    fn ice_hosts_are_the_two_choices_pick_and_a_fallback() {
        let hosts = vec![
            host(1, "US-CA", load(0)),
            host(2, "DE-BE", load(0)),
            host(3, "DE-BE", load(99)),
        ];
        let berlin = Place {
            region: "DE-BE",
            country: "DE",
            coordinates: None,
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let chosen = choose_ice_hosts(Some(&berlin), &hosts, &mut rng);
            assert_eq!(chosen.len(), 2);
            assert_ne!(chosen[0].host_id, chosen[1].host_id);
            // Host 2 is the cheapest: it is picked whenever drawn, else it is the fallback.
            assert!(chosen.iter().any(|h| h.host_id == hosts[1].host_id));
        }
        assert_eq!(choose_ice_hosts(None, &hosts[..1], &mut rng).len(), 1);
        assert!(choose_ice_hosts(None, &[], &mut rng).is_empty());
    }
}
