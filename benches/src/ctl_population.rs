//! The simulated nodes of the control-plane load generator ([`crate::ctl_load`]): pure and
//! seeded, so two runs of one seed register the same population and send the same requests.
//!
//! # The mix
//!
//! * NAT behaviour, after published measurements of home and mobile networks (most hosts sit
//!   behind port-restricted cone NATs, a large minority behind symmetric carrier-grade ones):
//!   full cone 10%, restricted cone 20%, port restricted 40%, symmetric 30% ([`NAT_MIX`]).
//! * Place: twelve regions on four continents, weighted towards North America and Europe
//!   ([`REGIONS`]), with coordinates jittered around each region's centre.
//! * Capacity: 8 to 256 peers and 10 to 1000 Mbit/s, small nodes commonest ([`CAPACITIES`]).
//! * Metrics: latency 5 to 300 ms, some peers connected, a little bandwidth in use; every
//!   heartbeat draws fresh ones.
//!
//! Routing requests come from a random node of the population, mostly without a target (the
//! ranking of every live node, the expensive case), a quarter with a preferred region, a
//! tenth with a latency bound.

use boson_shared::key_proof::{Challenge, KeyProof};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng as _};
use serde_json::{Value, json};

/// NAT types and their shares, in percent.
pub const NAT_MIX: [(&str, u32); 4] = [
    ("FullCone", 10),
    ("RestrictedCone", 20),
    ("PortRestricted", 40),
    ("Symmetric", 30),
];

/// A region: code, country, centre `[lat, lon]`, weight.
pub type Region = (&'static str, &'static str, [f64; 2], u32);

/// The regions nodes live in.
pub const REGIONS: [Region; 12] = [
    ("US-CA", "US", [37.4, -122.1], 14),
    ("US-NY", "US", [40.7, -74.0], 12),
    ("US-TX", "US", [30.3, -97.7], 8),
    ("CA-ON", "CA", [43.7, -79.4], 5),
    ("DE-BE", "DE", [52.5, 13.4], 12),
    ("FR-IDF", "FR", [48.9, 2.35], 9),
    ("GB-LND", "GB", [51.5, -0.1], 10),
    ("NL-NH", "NL", [52.4, 4.9], 6),
    ("JP-13", "JP", [35.7, 139.7], 8),
    ("SG-01", "SG", [1.35, 103.8], 6),
    ("BR-SP", "BR", [-23.5, -46.6], 6),
    ("AU-NSW", "AU", [-33.9, 151.2], 4),
];

/// Capacities: max connections, bandwidth Mbit/s, weight.
pub const CAPACITIES: [(u32, f64, u32); 5] = [
    (8, 10.0, 35),
    (16, 50.0, 30),
    (32, 100.0, 20),
    (64, 500.0, 10),
    (256, 1000.0, 5),
];

/// One simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    /// Its id, a v4 UUID.
    pub node_id: String,
    /// Its WireGuard private key, which registrations prove.
    pub secret: [u8; 32],
    /// Its WireGuard public key, base64.
    pub public_key: String,
    /// `FullCone` … `Symmetric`.
    pub nat: &'static str,
    /// Index into [`REGIONS`].
    pub region: usize,
    /// Its coordinates.
    pub coordinates: [f64; 2],
    /// Max connections.
    pub max_connections: u32,
    /// Bandwidth, Mbit/s, both ways.
    pub bandwidth: f64,
    /// The `ipv4` it reports (a private address, never contacted).
    pub ipv4: [u8; 4],
}

/// A draw from `items` by their weight.
fn weighted<T: Copy, R: Rng + ?Sized>(items: &[T], weight: impl Fn(&T) -> u32, rng: &mut R) -> T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut pick = rng.random_range(0..total.max(1));
    for item in items {
        let w = weight(item);
        if pick < w {
            return *item;
        }
        pick -= w;
    }
    items[items.len() - 1]
}

/// `count` nodes drawn from `seed`.
pub fn population(count: usize, seed: u64) -> Vec<SimNode> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|index| {
            let mut id: [u8; 16] = rng.random();
            id[6] = (id[6] & 0x0F) | 0x40;
            id[8] = (id[8] & 0x3F) | 0x80;
            let secret: [u8; 32] = rng.random();
            let (nat, _) = weighted(&NAT_MIX, |m| m.1, &mut rng);
            let regions: Vec<usize> = (0..REGIONS.len()).collect();
            let region = weighted(&regions, |&r| REGIONS[r].3, &mut rng);
            let centre = REGIONS[region].2;
            let coordinates = [
                (centre[0] + rng.random_range(-1.5..1.5)).clamp(-90.0, 90.0),
                (centre[1] + rng.random_range(-1.5..1.5)).clamp(-180.0, 180.0),
            ];
            let (max_connections, bandwidth, _) = weighted(&CAPACITIES, |c| c.2, &mut rng);
            let host = u32::try_from(index % (1 << 24)).unwrap_or(0);
            let [_, b, c, d] = host.to_be_bytes();
            SimNode {
                node_id: uuid_text(&id),
                secret,
                public_key: base64_32(&boson_shared::key_proof::public_key(&secret)),
                nat,
                region,
                coordinates,
                max_connections,
                bandwidth,
                ipv4: [10, b, c, d],
            }
        })
        .collect()
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn base64_32(bytes: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Metrics as a node reports them, drawn fresh.
fn metrics<R: Rng + ?Sized>(node: &SimNode, rng: &mut R) -> Value {
    let active = rng.random_range(0..=node.max_connections);
    let used = node.bandwidth * rng.random_range(0.0..0.5);
    json!({
        "latency": rng.random_range(5.0..300.0),
        "cpuUsage": rng.random_range(1.0..90.0),
        "activeConnections": active,
        "bandwidth": {"up": used, "down": used},
    })
}

impl SimNode {
    /// The key proof answering `challenge` at `unix_secs`.
    pub fn prove(&self, challenge: &Challenge, unix_secs: u64) -> anyhow::Result<KeyProof> {
        let id = self.node_id.parse()?;
        Ok(challenge.answer(&self.secret, id, unix_secs)?)
    }

    /// `POST /api/v1/nodes/register`, with `key_proof` (see [`SimNode::prove`]).
    pub fn register_body<R: Rng + ?Sized>(&self, rng: &mut R, key_proof: &KeyProof) -> Value {
        let (region, country, _, _) = REGIONS[self.region];
        let [a, b, c, d] = self.ipv4;
        json!({
            "nodeId": self.node_id,
            "publicKey": self.public_key,
            "networkInfo": {
                "ipv4": format!("{a}.{b}.{c}.{d}"),
                "natType": self.nat,
                "localPort": 51820,
            },
            "capabilities": {
                "maxConnections": self.max_connections,
                "bandwidth": {"up": self.bandwidth, "down": self.bandwidth},
                "routing": true,
            },
            "location": {"country": country, "region": region, "coordinates": self.coordinates},
            "metrics": metrics(self, rng),
            "keyProof": key_proof,
        })
    }

    /// `POST /api/v1/nodes/{id}/heartbeat`.
    pub fn heartbeat_body<R: Rng + ?Sized>(&self, rng: &mut R) -> Value {
        json!({ "metrics": metrics(self, rng) })
    }

    /// `POST /api/v1/routing/request` from this node, as the module doc mixes them.
    pub fn routing_body<R: Rng + ?Sized>(&self, rng: &mut R) -> Value {
        let [a, b, c, d] = self.ipv4;
        let mut requirements = serde_json::Map::new();
        if rng.random_bool(0.25) {
            let region = REGIONS[rng.random_range(0..REGIONS.len())].0;
            requirements.insert("preferredLocation".into(), json!(region));
        }
        if rng.random_bool(0.1) {
            requirements.insert("maxLatency".into(), json!(100.0));
        }
        json!({
            "clientId": self.node_id,
            "requirements": requirements,
            "clientNetworkInfo": {"ipv4": format!("{a}.{b}.{c}.{d}"), "natType": self.nat},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_its_weights_and_the_seed() {
        let nodes = population(20_000, 7);
        assert_eq!(nodes, population(20_000, 7), "one seed, one population");
        assert_ne!(nodes[0], population(1, 8)[0]);
        let share = |pred: &dyn Fn(&SimNode) -> bool| {
            nodes.iter().filter(|n| pred(n)).count() as f64 / nodes.len() as f64
        };
        for (nat, percent) in NAT_MIX {
            let got = share(&|n| n.nat == nat);
            let want = f64::from(percent) / 100.0;
            assert!((got - want).abs() < 0.02, "{nat}: {got}");
        }
        let us_ca = share(&|n| n.region == 0);
        assert!((us_ca - 0.14).abs() < 0.02, "{us_ca}");
        let small = share(&|n| n.max_connections == 8);
        assert!((small - 0.35).abs() < 0.02, "{small}");
        let ids: std::collections::BTreeSet<&str> =
            nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids.len(), nodes.len(), "ids are distinct");
        let keys: std::collections::BTreeSet<&str> =
            nodes.iter().map(|n| n.public_key.as_str()).collect();
        assert_eq!(keys.len(), nodes.len(), "keys are distinct");
    }

    #[test]
    fn bodies_are_what_the_api_takes() {
        let mut rng = StdRng::seed_from_u64(1);
        let node = &population(1, 3)[0];
        let server = [0x22; 32];
        let challenge = Challenge {
            nonce: "n".repeat(32),
            server_public_key: base64_32(&boson_shared::key_proof::public_key(&server)),
        };
        let proof = node.prove(&challenge, 1_800_000_000).unwrap();
        let body = node.register_body(&mut rng, &proof);
        assert_eq!(body["keyProof"]["nonce"], challenge.nonce);
        let public: boson_shared::WgPublicKey = node.public_key.parse().unwrap();
        assert_eq!(
            boson_shared::key_proof::verify(
                &server,
                public.as_bytes(),
                &challenge.nonce,
                node.node_id.parse().unwrap(),
                1_800_000_000,
                body["keyProof"]["proof"].as_str().unwrap()
            ),
            Ok(()),
            "the server verifies it with the registered key"
        );
        assert_eq!(body["nodeId"], node.node_id.as_str());
        assert_eq!(node.node_id.len(), 36);
        assert_eq!(&node.node_id[14..15], "4", "a v4 UUID");
        assert_eq!(body["networkInfo"]["natType"], node.nat);
        let active = body["metrics"]["activeConnections"].as_u64().unwrap();
        assert!(active <= u64::from(node.max_connections));
        let beat = node.heartbeat_body(&mut rng);
        assert!(beat["metrics"]["latency"].as_f64().unwrap() >= 5.0);
        let route = node.routing_body(&mut rng);
        assert_eq!(route["clientId"], node.node_id.as_str());
        assert!(route["requirements"].is_object());
    }
}
