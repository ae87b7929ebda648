//! The REST API's JSON documents, and their validation into domain values.
//!
//! Field names follow the seed protocol (camelCase). Request documents refuse unknown fields,
//! so a typo is an error rather than a silently ignored setting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use boson_shared::key_proof::{KeyProof, PROOF_LEN};
use boson_shared::{NodeId, WgPublicKey};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;

/// NAT behaviour a node reports from its STUN probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatType {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping.
    Symmetric,
}

/// `POST /api/v1/nodes/register`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// UUID chosen by the node; checked in [`RegisterRequest::validate`].
    pub node_id: String,
    /// WireGuard public key, base64 of 32 bytes.
    pub public_key: String,
    /// How the node can be reached.
    pub network_info: NetworkInfo,
    /// What the node offers.
    pub capabilities: Capabilities,
    /// Where the node is.
    pub location: Location,
    /// Initial metrics, as in a heartbeat (without `activeConnections`, which defaults to 0).
    #[serde(default)]
    pub metrics: Option<NodeMetrics>,
    /// The node's preferred heartbeat interval in seconds; the server answers with its own.
    #[serde(default)]
    pub heartbeat_interval: Option<u32>,
    /// The proof that the node holds the private key of `publicKey`, answering a challenge of
    /// `POST /api/v1/nodes/challenge`. Required; optional here so that its absence gets its
    /// own error.
    #[serde(default)]
    pub key_proof: Option<KeyProof>,
}

/// How a node can be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInfo {
    /// The node's IPv4 address as the node sees it.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, if any.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// NAT behaviour.
    pub nat_type: NatType,
    /// Its public address as a STUN server saw it.
    #[serde(default)]
    pub stun_mapped_address: Option<SocketAddr>,
    /// Its WireGuard listening port.
    pub local_port: u16,
    /// The address the registration came from, as this server saw it. A value sent by the
    /// node is accepted for compatibility and replaced.
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Peers it accepts at once.
    pub max_connections: u32,
    /// Bandwidth in Mbit/s.
    pub bandwidth: Bandwidth,
    /// Whether it routes for others.
    #[serde(default)]
    pub routing: bool,
    /// Whether it NATs for others.
    #[serde(default)]
    pub natting: bool,
}

/// Up and down bandwidth, Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// Upstream.
    pub up: f64,
    /// Downstream.
    pub down: f64,
}

/// Where a node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Location {
    /// ISO 3166-1 alpha-2, stored upper case.
    pub country: String,
    /// Free-form region such as `US-CA`.
    pub region: String,
    /// Latitude and longitude in degrees.
    #[serde(default)]
    pub coordinates: Option<[f64; 2]>,
}

/// Metrics a node reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeMetrics {
    /// Round trip to this server in ms.
    pub latency: f64,
    /// CPU use in percent.
    pub cpu_usage: f64,
    /// Peers connected now.
    #[serde(default)]
    pub active_connections: u32,
    /// Jitter in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    /// Packet loss in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<f64>,
    /// Memory use in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<f64>,
    /// Bandwidth in use, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// Health a node reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedStatus {
    /// Working normally.
    Online,
    /// Working, but struggling.
    Degraded,
    /// Going away: the server marks it inactive at once.
    Offline,
}

/// `POST /api/v1/nodes/{nodeId}/heartbeat`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Current metrics; `latency`, `cpuUsage` and `activeConnections` are required.
    pub metrics: HeartbeatMetrics,
    /// Self-reported health.
    #[serde(default)]
    pub status: Option<ReportedStatus>,
}

/// Heartbeat metrics: like [`NodeMetrics`] but `activeConnections` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatMetrics {
    latency: f64,
    cpu_usage: f64,
    active_connections: u32,
    #[serde(default)]
    jitter: Option<f64>,
    #[serde(default)]
    packet_loss: Option<f64>,
    #[serde(default)]
    memory_usage: Option<f64>,
    #[serde(default)]
    bandwidth: Option<Bandwidth>,
}

impl From<HeartbeatMetrics> for NodeMetrics {
    fn from(m: HeartbeatMetrics) -> Self {
        Self {
            latency: m.latency,
            cpu_usage: m.cpu_usage,
            active_connections: m.active_connections,
            jitter: m.jitter,
            packet_loss: m.packet_loss,
            memory_usage: m.memory_usage,
            bandwidth: m.bandwidth,
        }
    }
}

/// Whether the server currently hears from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeats arrive in time.
    Active,
    /// Heartbeats stopped, or the node said it is going offline.
    Inactive,
}

impl NodeStatus {
    /// The value stored in the database and used in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }

    /// Parses [`NodeStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// What a node registered, after validation. Stored as one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// See [`NetworkInfo`].
    pub network_info: NetworkInfo,
    /// See [`Capabilities`].
    pub capabilities: Capabilities,
    /// See [`Location`].
    pub location: Location,
}

/// A validated registration request.
#[derive(Debug, Clone)]
pub struct ValidRegistration {
    /// The node.
    pub node_id: NodeId,
    /// Its WireGuard key.
    pub public_key: WgPublicKey,
    /// Everything else it sent.
    pub registration: Registration,
    /// Initial metrics.
    pub metrics: Option<NodeMetrics>,
    /// The proof of the key, well formed; verified by [`crate::domain::key_proof`].
    pub key_proof: ValidKeyProof,
}

/// A `keyProof` whose fields have the right shape (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKeyProof {
    /// A nonce-shaped string.
    pub nonce: String,
    /// Unix seconds.
    pub time: u64,
    /// 43 characters of base64url.
    pub proof: String,
}

/// A node as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node.
    pub node_id: NodeId,
    /// Its WireGuard key.
    pub public_key: WgPublicKey,
    /// See [`NetworkInfo`].
    pub network_info: NetworkInfo,
    /// See [`Capabilities`].
    pub capabilities: Capabilities,
    /// See [`Location`].
    pub location: Location,
    /// Whether the server hears from it.
    pub status: NodeStatus,
    /// What it last said about itself.
    pub reported_status: Option<ReportedStatus>,
    /// Last metrics it sent.
    pub metrics: Option<NodeMetrics>,
    /// First registration, unix ms.
    pub registered_at: i64,
    /// Last registration or heartbeat, unix ms.
    pub last_seen: i64,
}

/// Longest region name kept, and longest `preferredLocation` and `region` filter.
pub const MAX_REGION_LEN: usize = 64;
/// Most peers a node may claim to accept, or report connected: far above what one WireGuard
/// endpoint carries, low enough that load arithmetic stays meaningful.
pub const MAX_CONNECTIONS: u32 = 1_000_000;
/// Largest bandwidth, Mbit/s (1 Pbit/s).
pub const MAX_BANDWIDTH: f64 = 1e9;
/// Largest latency or jitter, ms (an hour).
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
/// Longest heartbeat interval a node may ask for, seconds (a day).
pub const MAX_HEARTBEAT_INTERVAL: u32 = 86_400;

/// A value the API refuses, naming the field (a JSON path such as
/// `requirements.maxLatency`): a 422 with the field in the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The stable error code, per group of fields (`invalid_metrics`, `invalid_location`, ...).
    pub code: &'static str,
    /// The field, as a path of the request document.
    pub field: &'static str,
    /// What an acceptable value is.
    pub message: String,
}

fn field_error(code: &'static str, field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        code,
        field,
        message: message.into(),
    }
}

fn check(
    ok: bool,
    code: &'static str,
    field: &'static str,
    message: impl Into<String>,
) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(field_error(code, field, message))
    }
}

/// A finite number in `min..=max`.
pub(crate) fn check_number(
    value: f64,
    min: f64,
    max: f64,
    code: &'static str,
    field: &'static str,
) -> Result<(), FieldError> {
    check(
        value.is_finite() && (min..=max).contains(&value),
        code,
        field,
        format!("must be a number from {min} to {max}"),
    )
}

/// At most `max` characters, none of them a control character.
pub(crate) fn check_text(
    value: &str,
    max: usize,
    code: &'static str,
    field: &'static str,
) -> Result<(), FieldError> {
    check(
        value.chars().count() <= max && !value.chars().any(char::is_control),
        code,
        field,
        format!("must be at most {max} characters, none of them control characters"),
    )
}

/// An ISO 3166-1 alpha-2 code (either case).
pub(crate) fn check_country(
    value: &str,
    code: &'static str,
    field: &'static str,
) -> Result<(), FieldError> {
    check(
        value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()),
        code,
        field,
        "must be an ISO 3166-1 alpha-2 code such as \"US\"",
    )
}

/// A transport address a STUN server could have seen: a port, and an address that is
/// neither unspecified nor multicast.
pub(crate) fn check_mapped_address(
    value: Option<SocketAddr>,
    code: &'static str,
    field: &'static str,
) -> Result<(), FieldError> {
    check(
        value.is_none_or(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()),
        code,
        field,
        "must be IP:PORT with a port from 1 to 65535 and a unicast address",
    )
}

impl RegisterRequest {
    /// Checks every value and builds the registration; `observed_ip` replaces `publicIp`.
    pub fn validate(self, observed_ip: IpAddr) -> Result<ValidRegistration, FieldError> {
        let node_id: NodeId = self
            .node_id
            .parse()
            .map_err(|e| field_error("invalid_node_id", "nodeId", format!("is not a UUID: {e}")))?;
        let public_key = self
            .public_key
            .parse::<WgPublicKey>()
            .map_err(|e| field_error("invalid_public_key", "publicKey", e.to_string()))?;

        let mut network_info = self.network_info;
        check(
            network_info.local_port != 0,
            "invalid_network_info",
            "networkInfo.localPort",
            "must be from 1 to 65535",
        )?;
        check_mapped_address(
            network_info.stun_mapped_address,
            "invalid_network_info",
            "networkInfo.stunMappedAddress",
        )?;
        network_info.public_ip = Some(observed_ip);

        let capabilities = self.capabilities;
        check(
            (1..=MAX_CONNECTIONS).contains(&capabilities.max_connections),
            "invalid_capabilities",
            "capabilities.maxConnections",
            format!("must be from 1 to {MAX_CONNECTIONS}"),
        )?;
        check_bandwidth(
            &capabilities.bandwidth,
            "invalid_metrics",
            ["capabilities.bandwidth.up", "capabilities.bandwidth.down"],
        )?;

        let mut location = self.location;
        check_country(&location.country, "invalid_location", "location.country")?;
        location.country.make_ascii_uppercase();
        check_text(
            &location.region,
            MAX_REGION_LEN,
            "invalid_location",
            "location.region",
        )?;
        if let Some([lat, lon]) = location.coordinates {
            check_number(lat, -90.0, 90.0, "invalid_location", "location.coordinates")?;
            check_number(
                lon,
                -180.0,
                180.0,
                "invalid_location",
                "location.coordinates",
            )?;
        }
        if let Some(metrics) = &self.metrics {
            check_metrics(metrics)?;
        }
        if let Some(interval) = self.heartbeat_interval {
            check(
                (1..=MAX_HEARTBEAT_INTERVAL).contains(&interval),
                "invalid_heartbeat_interval",
                "heartbeatInterval",
                format!("must be from 1 to {MAX_HEARTBEAT_INTERVAL} seconds"),
            )?;
        }
        let key_proof = check_key_proof(self.key_proof)?;
        Ok(ValidRegistration {
            node_id,
            public_key,
            registration: Registration {
                network_info,
                capabilities,
                location,
            },
            metrics: self.metrics,
            key_proof,
        })
    }
}

/// The shape of `keyProof`: present, a nonce as the challenge endpoint makes them, a proof of
/// [`PROOF_LEN`] base64url characters.
fn check_key_proof(proof: Option<KeyProof>) -> Result<ValidKeyProof, FieldError> {
    let code = "invalid_key_proof";
    let proof = proof.ok_or_else(|| {
        field_error(
            code,
            "keyProof",
            "is required: {nonce, time, proof} answering POST /api/v1/nodes/challenge",
        )
    })?;
    check(
        crate::domain::key_proof::is_nonce_shaped(&proof.nonce),
        code,
        "keyProof.nonce",
        format!(
            "must be the nonce of a challenge ({} base64url characters)",
            crate::domain::key_proof::NONCE_LEN
        ),
    )?;
    check(
        proof.proof.len() == PROOF_LEN
            && proof
                .proof
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        code,
        "keyProof.proof",
        format!("must be {PROOF_LEN} base64url characters (an HMAC-SHA256, unpadded)"),
    )?;
    Ok(ValidKeyProof {
        nonce: proof.nonce,
        time: proof.time,
        proof: proof.proof,
    })
}

impl HeartbeatRequest {
    /// Checks the metrics' ranges.
    pub fn validate(self) -> Result<(NodeMetrics, Option<ReportedStatus>), FieldError> {
        let metrics = NodeMetrics::from(self.metrics);
        check_metrics(&metrics)?;
        Ok((metrics, self.status))
    }
}

/// Both directions of a bandwidth, `fields` naming `[up, down]`.
pub(crate) fn check_bandwidth(
    bandwidth: &Bandwidth,
    code: &'static str,
    [up, down]: [&'static str; 2],
) -> Result<(), FieldError> {
    check_number(bandwidth.up, 0.0, MAX_BANDWIDTH, code, up)?;
    check_number(bandwidth.down, 0.0, MAX_BANDWIDTH, code, down)
}

fn check_metrics(m: &NodeMetrics) -> Result<(), FieldError> {
    let code = "invalid_metrics";
    check_number(m.latency, 0.0, MAX_LATENCY_MS, code, "metrics.latency")?;
    check_number(m.cpu_usage, 0.0, 100.0, code, "metrics.cpuUsage")?;
    check(
        m.active_connections <= MAX_CONNECTIONS,
        code,
        "metrics.activeConnections",
        format!("must be from 0 to {MAX_CONNECTIONS}"),
    )?;
    for (value, field, max) in [
        (m.jitter, "metrics.jitter", MAX_LATENCY_MS),
        (m.packet_loss, "metrics.packetLoss", 100.0),
        (m.memory_usage, "metrics.memoryUsage", 100.0),
    ] {
        if let Some(value) = value {
            check_number(value, 0.0, max, code, field)?;
        }
    }
    if let Some(bandwidth) = &m.bandwidth {
        check_bandwidth(
            bandwidth,
            code,
            ["metrics.bandwidth.up", "metrics.bandwidth.down"],
        )?;
    }
    Ok(())
}

/// A node as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// Id.
    pub node_id: NodeId,
    /// WireGuard key; unique across nodes.
    pub public_key: WgPublicKey,
    /// Bumped by every registration; tokens of older generations are refused.
    pub generation: i64,
    /// What the node registered.
    pub registration: Registration,
    /// Whether the server hears from it.
    pub status: NodeStatus,
    /// What it last said about itself.
    pub reported_status: Option<ReportedStatus>,
    /// Last metrics.
    pub metrics: Option<NodeMetrics>,
    /// First registration.
    pub registered_at: UnixMillis,
    /// Last registration or heartbeat.
    pub last_seen: UnixMillis,
    /// When the token of the current generation expires (0: unknown, for rows written
    /// before this was kept).
    pub token_expires_at: UnixMillis,
}

impl NodeRecord {
    /// The API's view of the node.
    pub fn view(&self) -> NodeView {
        NodeView {
            node_id: self.node_id,
            public_key: self.public_key,
            network_info: self.registration.network_info.clone(),
            capabilities: self.registration.capabilities.clone(),
            location: self.registration.location.clone(),
            status: self.status,
            reported_status: self.reported_status,
            metrics: self.metrics.clone(),
            registered_at: self.registered_at.0,
            last_seen: self.last_seen.0,
        }
    }
}
