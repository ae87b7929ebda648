//! Test fixtures shared by the domain's unit tests (compiled for tests only).

use boson_shared::{NodeId, WgPublicKey};

use crate::clock::UnixMillis;
use crate::domain::model::{
    Bandwidth, Capabilities, Location, NatType, NetworkInfo, NodeRecord, NodeStatus, Registration,
};

/// A registration in DE-BE behind a full-cone NAT, with no public address or coordinates.
pub(crate) fn registration() -> Registration {
    Registration {
        network_info: NetworkInfo {
            ipv4: [192, 0, 2, 1].into(),
            ipv6: None,
            nat_type: NatType::FullCone,
            stun_mapped_address: None,
            local_port: 51820,
            public_ip: None,
        },
        capabilities: Capabilities {
            max_connections: 10,
            bandwidth: Bandwidth { up: 1.0, down: 1.0 },
            routing: false,
            natting: false,
        },
        location: Location {
            country: "DE".into(),
            region: "DE-BE".into(),
            coordinates: None,
        },
    }
}

/// An active node of [`registration`], stored at `generation` and last seen at `last_seen`,
/// with no metrics, registered and its token expiring at time 0.
pub(crate) fn node_record(
    node_id: NodeId,
    public_key: WgPublicKey,
    generation: i64,
    last_seen: UnixMillis,
) -> NodeRecord {
    NodeRecord {
        node_id,
        public_key,
        generation,
        registration: registration(),
        status: NodeStatus::Active,
        reported_status: None,
        metrics: None,
        registered_at: UnixMillis(0),
        last_seen,
        token_expires_at: UnixMillis(0),
    }
}
