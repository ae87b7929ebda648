//! Route ranking for `POST /api/v1/routing/request`: pure functions over the nodes the store
//! returned, tested with tables.
//!
//! This is the first version: one cost per candidate from live heartbeat data, and a relay
//! route through this server's TURN service wherever a direct path may fail. The NAT table is
//! [`can_punch`].

use std::net::{Ipv4Addr, SocketAddr};

use boson_shared::NodeId;
use serde::{Deserialize, Serialize};

use crate::model::NatType;
use crate::store::NodeRecord;

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

/// How traffic gets to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteType {
    /// Peer to peer, after hole punching.
    Direct,
    /// Through this server's TURN relay.
    Relay,
}

/// One ranked route.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Stable for the same type and node: `direct:<nodeId>` or `relay:<nodeId>`.
    pub id: String,
    /// Direct or relayed.
    #[serde(rename = "type")]
    pub route_type: RouteType,
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

/// Latency assumed for a node that has not reported one yet, ms.
const UNKNOWN_LATENCY_MS: f64 = 200.0;
/// Extra latency a relay adds (two legs through this server), ms.
const RELAY_EXTRA_LATENCY_MS: f64 = 20.0;
/// Cost added to a relayed route, so that a working direct route wins.
const RELAY_PENALTY: f64 = 50.0;
/// Cost of a fully loaded node.
const LOAD_WEIGHT: f64 = 100.0;
/// Cost of missing the preferred region, and of missing the preferred country.
const REGION_PENALTY: f64 = 40.0;
const COUNTRY_PENALTY: f64 = 20.0;
/// Routes returned at most.
pub const MAX_ROUTES: usize = 10;

/// Whether two NATs can usually be punched through (RFC 4787 behaviours).
///
/// | client \ node   | FullCone | RestrictedCone | PortRestricted | Symmetric |
/// |-----------------|----------|----------------|----------------|-----------|
/// | FullCone        | yes      | yes            | yes            | yes       |
/// | RestrictedCone  | yes      | yes            | yes            | yes       |
/// | PortRestricted  | yes      | yes            | yes            | no        |
/// | Symmetric       | yes      | yes            | no             | no        |
///
/// A symmetric NAT picks a new port per destination, which a port-restricted peer's filter
/// drops and another symmetric NAT cannot predict.
pub fn can_punch(a: NatType, b: NatType) -> bool {
    use NatType::{PortRestricted, Symmetric};
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

/// Ranks routes from the client to each candidate (the client itself is skipped), cheapest
/// first, at most [`MAX_ROUTES`].
pub fn rank(request: &RoutingRequest, candidates: &[NodeRecord]) -> Vec<Route> {
    let mut routes: Vec<Route> = candidates
        .iter()
        .filter(|node| node.node_id != request.client_id)
        .filter(|node| meets(&request.requirements, node))
        .flat_map(|node| routes_to(request, node))
        .collect();
    routes.sort_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.id.cmp(&b.id)));
    routes.truncate(MAX_ROUTES);
    for (rank, route) in routes.iter_mut().enumerate() {
        route.priority = 100u32.saturating_sub(u32::try_from(rank).unwrap_or(u32::MAX) * 10);
    }
    routes
}

fn latency(node: &NodeRecord) -> f64 {
    node.metrics
        .as_ref()
        .map_or(UNKNOWN_LATENCY_MS, |m| m.latency)
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

fn routes_to(request: &RoutingRequest, node: &NodeRecord) -> Vec<Route> {
    let requirements = &request.requirements;
    let capabilities = &node.registration.capabilities;
    let location = &node.registration.location;
    let mut reasons = Vec::new();

    let active = node.metrics.as_ref().map_or(0, |m| m.active_connections);
    let load = f64::from(active) / f64::from(capabilities.max_connections.max(1));
    reasons.push(format!(
        "load {active}/{} connections",
        capabilities.max_connections
    ));
    let mut base_cost = latency(node) + LOAD_WEIGHT * load.min(1.0);
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
    let explain = |first: String| {
        let mut all = vec![first];
        all.extend(reasons.iter().cloned());
        all.join("; ")
    };

    let mut routes = Vec::with_capacity(2);
    if can_punch(client_nat, node_nat) {
        let info = &node.registration.network_info;
        let endpoint = info
            .stun_mapped_address
            .or_else(|| Some(SocketAddr::from((info.ipv4, info.local_port))));
        routes.push(Route {
            id: format!("direct:{}", node.node_id),
            route_type: RouteType::Direct,
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
    routes.push(Route {
        id: format!("relay:{}", node.node_id),
        route_type: RouteType::Relay,
        path: vec![node.node_id],
        endpoint: None,
        estimated_latency: latency(node) + RELAY_EXTRA_LATENCY_MS,
        estimated_bandwidth: bandwidth,
        cost: base_cost + RELAY_PENALTY,
        priority: 0,
        explanation: explain(if can_punch(client_nat, node_nat) {
            "fallback through this server's TURN relay".to_owned()
        } else {
            format!("{client_nat:?} and {node_nat:?} NATs cannot punch through: relay via TURN")
        }),
    });
    routes
}

#[cfg(test)]
mod tests {
    use boson_shared::WgPublicKey;

    use super::*;
    use crate::clock::UnixMillis;
    use crate::model::{
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
    fn symmetric_pairs_get_only_a_relay_route() {
        let nodes = [node(1, NatType::Symmetric, 10.0, 0, "US-CA")];
        let routes = rank(&request(NatType::Symmetric, None), &nodes);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].route_type, RouteType::Relay);
        assert!(routes[0].explanation.contains("cannot punch"));
    }

    #[test]
    fn cheaper_nodes_rank_first_and_direct_beats_relay() {
        let nodes = [
            node(1, NatType::FullCone, 80.0, 0, "US-CA"),
            node(2, NatType::FullCone, 20.0, 0, "US-CA"),
            node(3, NatType::FullCone, 20.0, 100, "US-CA"),
        ];
        let routes = rank(&request(NatType::PortRestricted, None), &nodes);
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
        let routes = rank(&req, &nodes);
        assert!(routes.iter().all(|r| r.path != vec![id(3)]), "too slow");
        assert_eq!(routes[0].path, vec![id(1)]);
        req.requirements.min_bandwidth = Some(1000.0);
        assert!(rank(&req, &nodes).is_empty());
    }

    #[test]
    fn the_client_is_never_its_own_route() {
        let nodes = [node(99, NatType::FullCone, 1.0, 0, "US-CA")];
        assert!(rank(&request(NatType::FullCone, None), &nodes).is_empty());
    }
}
