//! The control plane's REST API as the agent uses it: register, heartbeat, deregister, the
//! live relay hosts, routes. Plain async request/response (no sans-IO core: the decisions
//! around it live in the agent).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use boson_shared::{NodeId, WgPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::ServerUrl;

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No connection, or no answer in time.
    #[error("control plane {url} unreachable: {source}")]
    Unreachable {
        /// The server tried.
        url: String,
        /// The transport's error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{what} refused by {url}: HTTP {status} {code}: {message}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// The server.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The API's error code (empty if the body had none).
        code: String,
        /// The API's message.
        message: String,
    },
    /// The answer is not the JSON the API documents.
    #[error("malformed answer to {what} from {url}: {detail}")]
    Malformed {
        /// What was asked.
        what: &'static str,
        /// The server.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl ControlError {
    /// The HTTP status of a refusal.
    pub const fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Unreachable { .. } | Self::Malformed { .. } => None,
        }
    }
}

/// What registration returns.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The bearer token for everything else.
    pub session_token: String,
    /// Unix ms when the token expires.
    pub expires_at: u64,
    /// Seconds between heartbeats.
    pub heartbeat_interval: u64,
}

/// What the agent tells the server about itself at registration.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Its id.
    pub node: NodeId,
    /// Its WireGuard key.
    pub key: WgPublicKey,
    /// Its own IPv4 address as it sees it.
    pub ipv4: Ipv4Addr,
    /// WireGuard's listen port.
    pub wg_port: u16,
    /// `IP:PORT` a STUN server saw, if known.
    pub stun_mapped: Option<String>,
    /// The NAT type as far as the agent can tell.
    pub nat_type: &'static str,
}

/// Figures for a heartbeat.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatFigures {
    /// Round trip to the relay host, ms.
    pub latency: f64,
    /// Process CPU usage, percent (0 when unknown).
    pub cpu_usage: f64,
    /// Peers with a live route.
    pub active_connections: u32,
    /// Mbit/s relayed since the last heartbeat, each way.
    pub bandwidth: Bandwidth,
}

/// Mbit/s up and down.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bandwidth {
    /// Sent.
    pub up: f64,
    /// Received.
    pub down: f64,
}

/// A live relay host as `GET /api/v1/hosts` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// Its id.
    pub host_id: String,
    /// Its addresses.
    pub addresses: HostAddresses,
    /// Whether it is shutting down.
    pub draining: bool,
}

/// A host's public addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAddresses {
    /// `ws://` or `wss://` relay URL, if it serves the WebSocket relay.
    pub relay_url: Option<String>,
    /// `HOST:PORT` of the QUIC relay, if served.
    pub quic_addr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HostList {
    hosts: Vec<Host>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// An API client for one control plane.
#[derive(Debug, Clone)]
pub struct Control {
    http: reqwest::Client,
    base: Arc<str>,
}

impl Control {
    /// A client for `base`, trusting `tls` for https.
    pub fn new(base: &ServerUrl, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(5))
            .tls_backend_preconfigured(tls)
            .build()?;
        Ok(Self {
            http,
            base: Arc::from(base.as_str()),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/nodes/register`, with the current token when re-registering.
    pub async fn register(
        &self,
        info: &NodeInfo,
        token: Option<&str>,
    ) -> Result<Registered, ControlError> {
        let body = json!({
            "nodeId": info.node.to_string(),
            "publicKey": info.key.to_base64(),
            "networkInfo": {
                "ipv4": info.ipv4.to_string(),
                "natType": info.nat_type,
                "stunMappedAddress": info.stun_mapped,
                "localPort": info.wg_port,
            },
            "capabilities": {
                "maxConnections": 100,
                "bandwidth": {"up": 100, "down": 100},
                "routing": false,
                "natting": false,
            },
            "location": {"country": "ZZ", "region": "unknown"},
        });
        let url = format!("{}/api/v1/nodes/register", self.base);
        let mut request = self.http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let registered = self.send("registration", request).await?;
        Ok(registered)
    }

    /// `POST /api/v1/nodes/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        node: &NodeId,
        token: &str,
        figures: HeartbeatFigures,
    ) -> Result<(), ControlError> {
        let url = format!("{}/api/v1/nodes/{node}/heartbeat", self.base);
        let body = json!({ "metrics": figures, "status": "online" });
        let request = self.http.post(&url).bearer_auth(token).json(&body);
        let _: serde_json::Value = self.send("heartbeat", request).await?;
        Ok(())
    }

    /// `DELETE /api/v1/nodes/{id}`.
    pub async fn deregister(&self, node: &NodeId, token: &str) -> Result<(), ControlError> {
        let url = format!("{}/api/v1/nodes/{node}", self.base);
        let request = self.http.delete(&url).bearer_auth(token);
        let _: serde_json::Value = self.send("deregistration", request).await?;
        Ok(())
    }

    /// `GET /api/v1/hosts`: the live relay hosts.
    pub async fn hosts(&self, token: &str) -> Result<Vec<Host>, ControlError> {
        let url = format!("{}/api/v1/hosts", self.base);
        let request = self.http.get(&url).bearer_auth(token);
        let list: HostList = self.send("the host list", request).await?;
        Ok(list.hosts)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ControlError> {
        let url = self.base.to_string();
        let response = request
            .send()
            .await
            .map_err(|source| ControlError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ControlError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !(200..300).contains(&status) {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => (
                    String::new(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                ),
            };
            return Err(ControlError::Status {
                what,
                url,
                status,
                code,
                message,
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ControlError::Malformed {
            what,
            url,
            detail: e.to_string(),
        })?;
        Ok(value)
    }
}
