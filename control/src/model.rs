//! The REST API's JSON documents, and their validation into domain values.
//!
//! Field names follow the seed protocol (camelCase). Request documents refuse unknown fields,
//! so a typo is an error rather than a silently ignored setting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use boson_shared::{NodeId, WgPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

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

/// Longest region name kept.
pub const MAX_REGION_LEN: usize = 64;

fn finite_in(value: f64, min: f64, max: f64) -> bool {
    value.is_finite() && (min..=max).contains(&value)
}

fn check(ok: bool, code: &'static str, message: impl Into<String>) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(code, message))
    }
}

impl RegisterRequest {
    /// Checks every value and builds the registration; `observed_ip` replaces `publicIp`.
    pub fn validate(self, observed_ip: IpAddr) -> Result<ValidRegistration, ApiError> {
        let node_id: NodeId = self.node_id.parse().map_err(|e| {
            ApiError::invalid("invalid_node_id", format!("nodeId is not a UUID: {e}"))
        })?;
        let public_key: WgPublicKey = self
            .public_key
            .parse()
            .map_err(|e| ApiError::invalid("invalid_public_key", format!("publicKey: {e}")))?;

        let mut network_info = self.network_info;
        check(
            network_info.local_port != 0,
            "invalid_network_info",
            "networkInfo.localPort must be between 1 and 65535",
        )?;
        network_info.public_ip = Some(observed_ip);

        let capabilities = self.capabilities;
        check(
            capabilities.max_connections >= 1,
            "invalid_capabilities",
            "capabilities.maxConnections must be at least 1",
        )?;
        check_bandwidth(&capabilities.bandwidth, "capabilities.bandwidth")?;

        let mut location = self.location;
        check(
            location.country.len() == 2
                && location.country.bytes().all(|b| b.is_ascii_alphabetic()),
            "invalid_location",
            "location.country must be an ISO 3166-1 alpha-2 code such as \"US\"",
        )?;
        location.country.make_ascii_uppercase();
        check(
            location.region.chars().count() <= MAX_REGION_LEN
                && !location.region.chars().any(char::is_control),
            "invalid_location",
            format!("location.region must be at most {MAX_REGION_LEN} printable characters"),
        )?;
        if let Some([lat, lon]) = location.coordinates {
            check(
                finite_in(lat, -90.0, 90.0) && finite_in(lon, -180.0, 180.0),
                "invalid_location",
                "location.coordinates must be [latitude -90..90, longitude -180..180]",
            )?;
        }
        if let Some(metrics) = &self.metrics {
            check_metrics(metrics)?;
        }
        Ok(ValidRegistration {
            node_id,
            public_key,
            registration: Registration {
                network_info,
                capabilities,
                location,
            },
            metrics: self.metrics,
        })
    }
}

impl HeartbeatRequest {
    /// Checks the metrics' ranges.
    pub fn validate(self) -> Result<(NodeMetrics, Option<ReportedStatus>), ApiError> {
        let metrics = NodeMetrics::from(self.metrics);
        check_metrics(&metrics)?;
        Ok((metrics, self.status))
    }
}

fn check_bandwidth(bandwidth: &Bandwidth, what: &str) -> Result<(), ApiError> {
    check(
        finite_in(bandwidth.up, 0.0, 1e9) && finite_in(bandwidth.down, 0.0, 1e9),
        "invalid_metrics",
        format!("{what}.up and .down must be between 0 and 1e9 Mbit/s"),
    )
}

fn check_metrics(m: &NodeMetrics) -> Result<(), ApiError> {
    let percent = |v: Option<f64>| v.is_none_or(|v| finite_in(v, 0.0, 100.0));
    check(
        finite_in(m.latency, 0.0, 3_600_000.0),
        "invalid_metrics",
        "metrics.latency must be between 0 and 3600000 ms",
    )?;
    check(
        finite_in(m.cpu_usage, 0.0, 100.0) && percent(m.memory_usage) && percent(m.packet_loss),
        "invalid_metrics",
        "metrics.cpuUsage, memoryUsage and packetLoss are percentages between 0 and 100",
    )?;
    check(
        m.jitter.is_none_or(|j| finite_in(j, 0.0, 3_600_000.0)),
        "invalid_metrics",
        "metrics.jitter must be between 0 and 3600000 ms",
    )?;
    if let Some(bandwidth) = &m.bandwidth {
        check_bandwidth(bandwidth, "metrics.bandwidth")?;
    }
    Ok(())
}
