//! The live-node index routing selects from, so that a routing request does not read and rank
//! every node: pure, in memory, updated incrementally.
//!
//! # What it holds
//!
//! Every node that is active and not timed out, with its record, ordered within its NAT class
//! by its **intrinsic cost** ([`routing::intrinsic_cost`]: latency plus load, what every route
//! to it costs at least), and within the class also by region and by country (matched
//! case-insensitively, as the ranking does).
//!
//! # How a request selects
//!
//! Every route to a node costs at least its intrinsic cost, plus [`REGION_PENALTY`] and
//! [`COUNTRY_PENALTY`] when it misses the request's preferences, plus [`RELAY_PENALTY`] when
//! the client's NAT and its NAT cannot punch through (all its routes are relayed). Those
//! penalties are the same for all nodes of a (NAT class, region match, country match)
//! group, so each group is a stream of nodes in increasing lower bound, and
//! [`RouteIndex::ordered`] merges the (at most 16) streams into one. [`routing::rank_ordered`]
//! ranks nodes off that merged stream and stops once its [`MAX_ROUTES`] best routes all cost
//! less than the next node's bound: no node it has not looked at can have a route among
//! them. The answer is the full scan's (property tests check it against
//! [`routing::rank`] on random populations); the cost of a request is the nodes it looks at
//! (about [`MAX_ROUTES`] plus those its requirements filter out), not the population.
//!
//! # Upkeep
//!
//! [`RouteIndex::upsert`] on every registration and heartbeat (a node that goes inactive
//! leaves), [`RouteIndex::remove`] on deletion, [`RouteIndex::expire`] before each selection
//! (nodes silent for the node timeout leave, oldest first, each once). It is rebuilt from the
//! store at start, and hosts that share a PostgreSQL store apply each other's registrations
//! and heartbeats by reading the rows seen since their last sync (see `AppState`).
//!
//! [`REGION_PENALTY`]: crate::domain::routing::REGION_PENALTY
//! [`COUNTRY_PENALTY`]: crate::domain::routing::COUNTRY_PENALTY
//! [`RELAY_PENALTY`]: crate::domain::routing::RELAY_PENALTY
//! [`MAX_ROUTES`]: crate::domain::routing::MAX_ROUTES

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use boson_shared::NodeId;

use crate::clock::UnixMillis;
use crate::domain::model::{NatType, NodeRecord};
use crate::domain::registry;
use crate::domain::routing::{self, COUNTRY_PENALTY, REGION_PENALTY, RELAY_PENALTY};

/// The NAT classes, in index order.
const NATS: [NatType; 4] = [
    NatType::FullCone,
    NatType::RestrictedCone,
    NatType::PortRestricted,
    NatType::Symmetric,
];

fn nat_index(nat: NatType) -> usize {
    match nat {
        NatType::FullCone => 0,
        NatType::RestrictedCone => 1,
        NatType::PortRestricted => 2,
        NatType::Symmetric => 3,
    }
}

/// A node's place in its class: intrinsic cost, then id (a total order).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    cost: f64,
    node_id: NodeId,
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cost
            .total_cmp(&other.cost)
            .then_with(|| self.node_id.cmp(&other.node_id))
    }
}

/// One indexed node.
#[derive(Debug, Clone)]
struct Entry {
    record: Arc<NodeRecord>,
    key: Key,
    nat: usize,
    region: String,
    country: String,
}

/// The nodes of one NAT class.
#[derive(Debug, Default)]
struct Class {
    all: BTreeSet<Key>,
    by_region: HashMap<String, BTreeSet<Key>>,
    by_country: HashMap<String, BTreeSet<Key>>,
}

/// The live nodes, indexed for routing; see the module doc.
#[derive(Debug)]
pub struct RouteIndex {
    timeout: Duration,
    nodes: HashMap<NodeId, Entry>,
    classes: [Class; 4],
    /// `(last_seen, node)` of every indexed node, for [`RouteIndex::expire`].
    expiry: BTreeSet<(UnixMillis, NodeId)>,
}

/// What a request prefers, as the index matches it.
#[derive(Debug, Clone, Copy)]
pub struct Preferences<'a> {
    /// The client's NAT.
    pub client_nat: NatType,
    /// Preferred region, if any.
    pub region: Option<&'a str>,
    /// Preferred country, if any.
    pub country: Option<&'a str>,
}

impl RouteIndex {
    /// An empty index; nodes silent for `timeout` leave it.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            nodes: HashMap::new(),
            classes: Default::default(),
            expiry: BTreeSet::new(),
        }
    }

    /// Nodes indexed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is indexed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Takes `record` as the node's newest state: indexed if it is live at `now`, dropped
    /// otherwise. A record older than the one indexed (by `last_seen`, then generation) is
    /// ignored, so a sync that read the store a moment ago cannot undo a newer heartbeat.
    pub fn upsert(&mut self, record: NodeRecord, now: UnixMillis) {
        if let Some(old) = self.nodes.get(&record.node_id) {
            let old = &old.record;
            if (old.last_seen, old.generation) > (record.last_seen, record.generation) {
                return;
            }
        }
        self.remove(record.node_id);
        if !registry::is_live(&record, now, self.timeout) {
            return;
        }
        let location = &record.registration.location;
        let entry = Entry {
            key: Key {
                cost: routing::intrinsic_cost(&record),
                node_id: record.node_id,
            },
            nat: nat_index(record.registration.network_info.nat_type),
            region: location.region.to_ascii_lowercase(),
            country: location.country.to_ascii_lowercase(),
            record: Arc::new(record),
        };
        let class = &mut self.classes[entry.nat];
        class.all.insert(entry.key);
        class
            .by_region
            .entry(entry.region.clone())
            .or_default()
            .insert(entry.key);
        class
            .by_country
            .entry(entry.country.clone())
            .or_default()
            .insert(entry.key);
        self.expiry
            .insert((entry.record.last_seen, entry.record.node_id));
        self.nodes.insert(entry.record.node_id, entry);
    }

    /// Drops the node, if indexed.
    pub fn remove(&mut self, node_id: NodeId) {
        let Some(entry) = self.nodes.remove(&node_id) else {
            return;
        };
        let class = &mut self.classes[entry.nat];
        class.all.remove(&entry.key);
        for (map, name) in [
            (&mut class.by_region, &entry.region),
            (&mut class.by_country, &entry.country),
        ] {
            if let Some(set) = map.get_mut(name) {
                set.remove(&entry.key);
                if set.is_empty() {
                    map.remove(name);
                }
            }
        }
        self.expiry.remove(&(entry.record.last_seen, node_id));
    }

    /// Drops the nodes silent for the timeout at `now`; returns how many.
    pub fn expire(&mut self, now: UnixMillis) -> usize {
        let cutoff = now.saturating_sub(self.timeout);
        let mut expired = 0;
        while let Some(&(seen, node)) = self.expiry.first() {
            if seen >= cutoff {
                break;
            }
            self.remove(node);
            expired += 1;
        }
        expired
    }

    /// One node's record.
    pub fn get(&self, node_id: NodeId) -> Option<&Arc<NodeRecord>> {
        self.nodes.get(&node_id).map(|entry| &entry.record)
    }

    /// Every indexed node with a lower bound of the cost of any of its routes for a request
    /// with `preferences`, in increasing bound (see the module doc).
    pub fn ordered<'s>(
        &'s self,
        preferences: Preferences<'_>,
    ) -> impl Iterator<Item = (f64, &'s NodeRecord)> + 's {
        let region = preferences.region.map(str::to_ascii_lowercase);
        let country = preferences.country.map(str::to_ascii_lowercase);
        let mut streams: Vec<Stream<'s>> = Vec::with_capacity(16);
        for (index, nat) in NATS.into_iter().enumerate() {
            let class = &self.classes[index];
            let punch = if routing::can_punch(preferences.client_nat, nat) {
                0.0
            } else {
                RELAY_PENALTY
            };
            // Each (region match, country match) group once, read from the smallest set
            // that holds it and filtered to it; without a preference, one group for all.
            let region_groups: &[Option<bool>] = if region.is_some() {
                &[Some(true), Some(false)]
            } else {
                &[None]
            };
            let country_groups: &[Option<bool>] = if country.is_some() {
                &[Some(true), Some(false)]
            } else {
                &[None]
            };
            for &in_region in region_groups {
                for &in_country in country_groups {
                    let set = match (in_region, in_country, &region, &country) {
                        (Some(true), _, Some(r), _) => class.by_region.get(r),
                        (_, Some(true), _, Some(c)) => class.by_country.get(c),
                        _ => Some(&class.all),
                    };
                    let Some(set) = set else { continue };
                    let mut penalty = punch;
                    if in_region == Some(false) {
                        penalty += REGION_PENALTY;
                    }
                    if in_country == Some(false) {
                        penalty += COUNTRY_PENALTY;
                    }
                    let (region, country) = (region.clone(), country.clone());
                    let group = move |entry: &Entry| {
                        let region_ok = match (in_region, &region) {
                            (Some(want), Some(r)) => (entry.region == *r) == want,
                            _ => true,
                        };
                        let country_ok = match (in_country, &country) {
                            (Some(want), Some(c)) => (entry.country == *c) == want,
                            _ => true,
                        };
                        region_ok && country_ok
                    };
                    let nodes = &self.nodes;
                    let iter = set.iter().filter_map(move |key| {
                        let entry = nodes.get(&key.node_id)?;
                        group(entry).then_some((key.cost + penalty, &*entry.record))
                    });
                    streams.push(Stream {
                        iter: Box::new(iter),
                        head: None,
                    });
                }
            }
        }
        Merge::new(streams)
    }
}

/// One group's nodes in increasing bound, with the next one peeked.
struct Stream<'s> {
    iter: Box<dyn Iterator<Item = (f64, &'s NodeRecord)> + 's>,
    head: Option<(f64, &'s NodeRecord)>,
}

/// The streams merged in increasing bound (ties by node id, so the order is total).
struct Merge<'s> {
    streams: Vec<Stream<'s>>,
}

impl<'s> Merge<'s> {
    fn new(mut streams: Vec<Stream<'s>>) -> Self {
        for stream in &mut streams {
            stream.head = stream.iter.next();
        }
        Self { streams }
    }
}

impl<'s> Iterator for Merge<'s> {
    type Item = (f64, &'s NodeRecord);

    fn next(&mut self) -> Option<Self::Item> {
        let best = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.head.map(|h| (i, h)))
            .min_by(|(_, a), (_, b)| {
                a.0.total_cmp(&b.0)
                    .then_with(|| a.1.node_id.cmp(&b.1.node_id))
            })
            .map(|(i, _)| i)?;
        let stream = &mut self.streams[best];
        let item = stream.head.take();
        stream.head = stream.iter.next();
        item
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use boson_shared::WgPublicKey;
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::domain::hosts::tests::host;
    use crate::domain::hosts::{HostLoad, HostRecord};
    use crate::domain::model::{
        Bandwidth, Capabilities, Location, NetworkInfo, NodeMetrics, NodeStatus, Registration,
    };
    use crate::domain::routing::{
        ClientNetworkInfo, RankInput, Requirements, Route, RoutingRequest, rank, rank_ordered,
    };

    const TIMEOUT: Duration = Duration::from_secs(90);
    const NOW: UnixMillis = UnixMillis(1_000_000_000);
    const PLACES: [(&str, &str); 5] = [
        ("US-CA", "US"),
        ("us-ny", "us"),
        ("DE-BE", "DE"),
        ("FR-IDF", "FR"),
        ("", ""),
    ];

    fn id(n: u32) -> NodeId {
        format!("00000000-0000-4000-8000-{n:012}").parse().unwrap()
    }

    /// A node from drawn numbers: NAT, place, latency (None: unknown), load, bandwidth.
    #[allow(clippy::too_many_arguments, reason = "a test's generator")]
    fn node(
        n: u32,
        nat: usize,
        place: usize,
        latency: Option<f64>,
        active: u32,
        used: Option<f64>,
        up: f64,
        seen_ago_s: u64,
    ) -> NodeRecord {
        let (region, country) = PLACES[place];
        let [_, b, c, d] = n.to_be_bytes();
        NodeRecord {
            node_id: id(n),
            public_key: WgPublicKey::from_bytes([d; 32]),
            generation: 1,
            registration: Registration {
                network_info: NetworkInfo {
                    ipv4: [10, b, c, d].into(),
                    ipv6: None,
                    nat_type: NATS[nat],
                    stun_mapped_address: None,
                    local_port: 51820,
                    public_ip: None,
                },
                capabilities: Capabilities {
                    max_connections: 50,
                    bandwidth: Bandwidth { up, down: up },
                    routing: true,
                    natting: false,
                },
                location: Location {
                    country: country.to_owned(),
                    region: region.to_owned(),
                    coordinates: None,
                },
            },
            status: NodeStatus::Active,
            reported_status: None,
            metrics: latency.map(|latency| NodeMetrics {
                latency,
                cpu_usage: 10.0,
                active_connections: active,
                jitter: None,
                packet_loss: None,
                memory_usage: None,
                bandwidth: used.map(|u| Bandwidth { up: u, down: u }),
            }),
            registered_at: UnixMillis(0),
            last_seen: NOW.saturating_sub(Duration::from_secs(seen_ago_s)),
            token_expires_at: UnixMillis(0),
        }
    }

    fn node_strategy(n: u32) -> impl Strategy<Value = NodeRecord> {
        (
            0..4usize,
            0..PLACES.len(),
            // Few distinct latencies: ties in cost are common.
            prop::option::weighted(0.9, (0u32..40).prop_map(|l| f64::from(l) * 5.0)),
            0u32..80,
            prop::option::of(0.0..150.0f64),
            prop::sample::select(vec![10.0, 100.0, 1000.0]),
            // A few are past the timeout.
            prop::sample::select(vec![0u64, 10, 60, 200]),
        )
            .prop_map(move |(nat, place, latency, active, used, up, ago)| {
                node(n, nat, place, latency, active, used, up, ago)
            })
    }

    fn population() -> impl Strategy<Value = Vec<NodeRecord>> {
        (0usize..60).prop_flat_map(|len| {
            (0..u32::try_from(len).unwrap())
                .map(node_strategy)
                .collect::<Vec<_>>()
        })
    }

    fn request_strategy() -> impl Strategy<Value = (RoutingRequest, usize)> {
        (
            0..4usize,
            prop::option::of(0..PLACES.len()),
            prop::option::of(0..PLACES.len()),
            prop::option::of(prop::sample::select(vec![50.0, 500.0])),
            prop::option::of(prop::sample::select(vec![20.0, 100.0, 1000.0])),
            // The client: one of the population (index), or a stranger.
            0usize..70,
        )
            .prop_map(|(nat, region, country, min_bw, max_lat, client)| {
                let request = RoutingRequest {
                    client_id: id(u32::try_from(client).unwrap()),
                    target_node_id: None,
                    requirements: Requirements {
                        min_bandwidth: min_bw,
                        max_latency: max_lat,
                        preferred_location: region.map(|p| PLACES[p].0.to_uppercase()),
                        preferred_country: country.map(|p| PLACES[p].1.to_lowercase()),
                    },
                    client_network_info: ClientNetworkInfo {
                        ipv4: [198, 51, 100, 7].into(),
                        nat_type: NATS[nat],
                        stun_mapped_address: None,
                    },
                };
                (request, client)
            })
    }

    fn hosts_strategy() -> impl Strategy<Value = Vec<HostRecord>> {
        // At most one host: the relay choice then draws no random numbers, so the two
        // rankings (which look at different nodes) see the same hosts.
        (0usize..2, 0usize..PLACES.len(), 0u32..150, any::<bool>()).prop_map(
            |(count, place, used, relays)| {
                (0..count)
                    .map(|_| {
                        let mut h = host(
                            1,
                            PLACES[place].0,
                            HostLoad {
                                allocations: used,
                                sessions: 0,
                                bandwidth: 0.0,
                            },
                        );
                        if relays {
                            h.addresses.relay_url = Some("wss://h1.example.test/relay".into());
                            h.addresses.quic_addr = Some("h1.example.test:443".into());
                        }
                        h
                    })
                    .collect()
            },
        )
    }

    fn both(
        nodes: &[NodeRecord],
        (request, client): &(RoutingRequest, usize),
        hosts: &[HostRecord],
    ) -> (Vec<Route>, Vec<Route>) {
        let mut index = RouteIndex::new(TIMEOUT);
        for n in nodes {
            index.upsert(n.clone(), NOW);
        }
        let live: Vec<NodeRecord> = nodes
            .iter()
            .filter(|n| registry::is_live(n, NOW, TIMEOUT))
            .cloned()
            .collect();
        assert_eq!(index.len(), live.len());
        let presence = BTreeMap::new();
        let input = RankInput {
            request,
            client: nodes.get(*client),
            candidates: &live,
            hosts,
            presence: &presence,
        };
        let scanned = rank(&input, &mut StdRng::seed_from_u64(1));
        let preferences = Preferences {
            client_nat: request.client_network_info.nat_type,
            region: request.requirements.preferred_location.as_deref(),
            country: request.requirements.preferred_country.as_deref(),
        };
        let indexed = rank_ordered(
            &input,
            index.ordered(preferences),
            &mut StdRng::seed_from_u64(1),
        );
        (scanned, indexed)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn the_indexed_selection_is_the_full_scans(
            nodes in population(),
            request in request_strategy(),
            hosts in hosts_strategy(),
        ) {
            let (scanned, indexed) = both(&nodes, &request, &hosts);
            prop_assert_eq!(scanned, indexed);
        }

        #[test]
        fn the_order_is_by_bound_and_every_bound_holds(
            nodes in population(),
            request in request_strategy(),
            hosts in hosts_strategy(),
        ) {
            let mut index = RouteIndex::new(TIMEOUT);
            for n in &nodes {
                index.upsert(n.clone(), NOW);
            }
            let (request, client) = &request;
            let preferences = Preferences {
                client_nat: request.client_network_info.nat_type,
                region: request.requirements.preferred_location.as_deref(),
                country: request.requirements.preferred_country.as_deref(),
            };
            let presence = BTreeMap::new();
            let ordered: Vec<(f64, &NodeRecord)> = index.ordered(preferences).collect();
            prop_assert_eq!(ordered.len(), index.len(), "each node once");
            for pair in ordered.windows(2) {
                prop_assert!(pair[0].0 <= pair[1].0);
            }
            for (bound, node) in ordered {
                let one = [node.clone()];
                let unbounded = RoutingRequest {
                    requirements: Requirements {
                        min_bandwidth: None,
                        max_latency: None,
                        ..request.requirements.clone()
                    },
                    client_id: id(u32::MAX),
                    ..request.clone()
                };
                let input = RankInput {
                    request: &unbounded,
                    client: nodes.get(*client),
                    candidates: &one,
                    hosts: &hosts,
                    presence: &presence,
                };
                for route in rank(&input, &mut StdRng::seed_from_u64(2)) {
                    prop_assert!(route.cost >= bound - 1e-9, "{} < {bound}", route.cost);
                }
            }
        }
    }

    #[test]
    fn updates_move_nodes_and_expiry_drops_the_silent() {
        let mut index = RouteIndex::new(TIMEOUT);
        let mut a = node(1, 0, 0, Some(10.0), 0, None, 100.0, 0);
        let b = node(2, 0, 0, Some(20.0), 0, None, 100.0, 0);
        index.upsert(a.clone(), NOW);
        index.upsert(b.clone(), NOW);
        let prefs = Preferences {
            client_nat: NatType::FullCone,
            region: None,
            country: None,
        };
        let order = |index: &RouteIndex| -> Vec<NodeId> {
            index.ordered(prefs).map(|(_, n)| n.node_id).collect()
        };
        assert_eq!(order(&index), [id(1), id(2)]);
        // A heartbeat with a worse latency moves it behind.
        a.metrics.as_mut().unwrap().latency = 30.0;
        a.last_seen = NOW.saturating_add(Duration::from_secs(1));
        index.upsert(a.clone(), NOW);
        assert_eq!(order(&index), [id(2), id(1)]);
        // An older record (a sync that read the store earlier) does not undo it.
        let mut stale = a.clone();
        stale.metrics.as_mut().unwrap().latency = 1.0;
        stale.last_seen = NOW;
        index.upsert(stale, NOW);
        assert_eq!(order(&index), [id(2), id(1)]);
        // Going inactive leaves the index.
        let mut offline = b.clone();
        offline.status = NodeStatus::Inactive;
        offline.last_seen = NOW.saturating_add(Duration::from_secs(2));
        index.upsert(offline, NOW);
        assert_eq!(order(&index), [id(1)]);
        // Silence for the timeout too, counted from the last heartbeat.
        index.upsert(b, NOW);
        assert_eq!(index.expire(NOW.saturating_add(TIMEOUT)), 0);
        assert_eq!(
            index.expire(NOW.saturating_add(TIMEOUT + Duration::from_millis(1))),
            1
        );
        assert_eq!(order(&index), [id(1)]);
        index.remove(id(1));
        assert!(index.is_empty());
        assert!(
            index
                .classes
                .iter()
                .all(|c| c.all.is_empty() && c.by_region.is_empty() && c.by_country.is_empty())
        );
        assert!(index.expiry.is_empty());
    }

    #[test]
    fn a_request_looks_at_a_few_nodes_not_all() {
        let mut index = RouteIndex::new(TIMEOUT);
        for n in 0..20_000u32 {
            let latency = f64::from(n % 997);
            let nat = usize::try_from(n % 4).unwrap();
            let place = usize::try_from(n % 4).unwrap();
            index.upsert(node(n, nat, place, Some(latency), 0, None, 100.0, 0), NOW);
        }
        let request = RoutingRequest {
            client_id: id(u32::MAX),
            target_node_id: None,
            requirements: Requirements {
                preferred_location: Some("DE-BE".into()),
                ..Requirements::default()
            },
            client_network_info: ClientNetworkInfo {
                ipv4: [198, 51, 100, 7].into(),
                nat_type: NatType::Symmetric,
                stun_mapped_address: None,
            },
        };
        let prefs = Preferences {
            client_nat: NatType::Symmetric,
            region: Some("DE-BE"),
            country: None,
        };
        let looked = std::cell::Cell::new(0usize);
        let counted = index
            .ordered(prefs)
            .inspect(|_| looked.set(looked.get() + 1));
        let hosts = vec![host(1, "DE-BE", HostLoad::default())];
        let presence = BTreeMap::new();
        let input = RankInput {
            request: &request,
            client: None,
            candidates: &[],
            hosts: &hosts,
            presence: &presence,
        };
        let routes = rank_ordered(&input, counted, &mut StdRng::seed_from_u64(1));
        assert_eq!(routes.len(), 10);
        assert!(looked.get() < 40, "looked at {} nodes", looked.get());
    }
}
