//! The control plane's REST API as the agent uses it: register, heartbeat, deregister, the
//! live relay hosts, TURN credentials, the routing request. Plain async request/response (no sans-IO core: the
//! decisions around it live in the agent), one HTTP/1.1 request per connection on hyper's
//! client, TLS through tokio-rustls for https.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use boson_shared::key_proof::Challenge;
use boson_shared::{NodeId, WgPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::ServerUrl;
use crate::route::RankedRoute;

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No connection, or no answer in time.
    #[error("control plane {url} unreachable: {detail}")]
    Unreachable {
        /// The server tried.
        url: String,
        /// What went wrong.
        detail: String,
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

/// The answer to `POST /api/v1/routing/request`: only the ranking is read.
#[derive(Debug, Clone, Deserialize)]
struct RoutingAnswer {
    routes: Vec<RankedRoute>,
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
    /// The private key of `key`, which every registration proves it holds.
    pub secret: crate::keys::WgSecret,
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

/// `GET /api/v1/turn/ice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceResponse {
    /// STUN and TURN servers.
    pub ice_servers: Vec<IceServer>,
}

/// One ICE server entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    /// `stun:` and `turn:` URLs.
    pub urls: Vec<String>,
    /// The TURN REST username.
    pub username: Option<String>,
    /// Its password.
    pub credential: Option<String>,
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
    base: Arc<str>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `HOST[:PORT]` as written, for the Host header.
    authority: String,
    host: String,
    port: u16,
    /// The path before `/api/...`, without a trailing slash.
    prefix: String,
}

/// Largest answer body read; the API's are a few KiB.
const MAX_BODY: usize = 1 << 20;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

impl Control {
    /// A client for `base`, trusting `tls` for https.
    pub fn new(base: &ServerUrl, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let url = base.as_str();
        let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            anyhow::bail!("{url:?} is neither http:// nor https://");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("{url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse()?,
                None => default_port,
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse()
                        .map_err(|_| anyhow::anyhow!("{url:?}: bad port {port:?}"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        anyhow::ensure!(!host.is_empty(), "{url:?} has no host");
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            base: Arc::from(url),
            tls: secure.then(|| Arc::new(tls)),
            authority: authority.to_owned(),
            host,
            port,
            prefix: prefix.to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/nodes/challenge`, then `POST /api/v1/nodes/register` answering it
    /// (with the current token when re-registering): every registration proves the node holds
    /// its WireGuard private key.
    pub async fn register(
        &self,
        info: &NodeInfo,
        token: Option<&str>,
    ) -> Result<Registered, ControlError> {
        let challenge: Challenge = self
            .send(
                "the registration challenge",
                "POST",
                "/api/v1/nodes/challenge",
                None,
                None,
            )
            .await?;
        let proof = challenge
            .answer(
                info.secret.as_bytes(),
                info.node,
                crate::clock::unix_ms() / 1000,
            )
            .map_err(|e| ControlError::Malformed {
                what: "the registration challenge",
                url: self.base.to_string(),
                detail: e.to_string(),
            })?;
        let body = json!({
            "keyProof": proof,
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
        let registered = self
            .send(
                "registration",
                "POST",
                "/api/v1/nodes/register",
                token,
                Some(&body),
            )
            .await?;
        Ok(registered)
    }

    /// `POST /api/v1/nodes/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        node: &NodeId,
        token: &str,
        figures: HeartbeatFigures,
    ) -> Result<(), ControlError> {
        let path = format!("/api/v1/nodes/{node}/heartbeat");
        let body = json!({ "metrics": figures, "status": "online" });
        let _: serde_json::Value = self
            .send("heartbeat", "POST", &path, Some(token), Some(&body))
            .await?;
        Ok(())
    }

    /// `DELETE /api/v1/nodes/{id}`.
    pub async fn deregister(&self, node: &NodeId, token: &str) -> Result<(), ControlError> {
        let path = format!("/api/v1/nodes/{node}");
        let _: serde_json::Value = self
            .send("deregistration", "DELETE", &path, Some(token), None)
            .await?;
        Ok(())
    }

    /// `POST /api/v1/routing/request` for one target: the server's ranking of the routes to
    /// it, best first.
    pub async fn routing(
        &self,
        info: &NodeInfo,
        token: &str,
        target: &NodeId,
    ) -> Result<Vec<RankedRoute>, ControlError> {
        let body = json!({
            "clientId": info.node.to_string(),
            "targetNodeId": target.to_string(),
            "clientNetworkInfo": {
                "ipv4": info.ipv4.to_string(),
                "natType": info.nat_type,
                "stunMappedAddress": info.stun_mapped,
            },
        });
        let answer: RoutingAnswer = self
            .send(
                "the routing request",
                "POST",
                "/api/v1/routing/request",
                Some(token),
                Some(&body),
            )
            .await?;
        Ok(answer.routes)
    }

    /// `GET /api/v1/hosts`: the live relay hosts.
    pub async fn hosts(&self, token: &str) -> Result<Vec<Host>, ControlError> {
        let list: HostList = self
            .send("the host list", "GET", "/api/v1/hosts", Some(token), None)
            .await?;
        Ok(list.hosts)
    }

    /// `GET /api/v1/turn/ice`: TURN servers with fresh credentials.
    pub async fn ice(&self, token: &str) -> Result<IceResponse, ControlError> {
        let ice = self
            .send(
                "the ICE servers",
                "GET",
                "/api/v1/turn/ice",
                Some(token),
                None,
            )
            .await?;
        Ok(ice)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: &'static str,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ControlError> {
        let url = self.base.to_string();
        let unreachable = |detail: String| ControlError::Unreachable {
            url: url.clone(),
            detail,
        };
        let body = body.map(ToString::to_string);
        let (status, bytes) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, token, body))
                .await
                .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
                .map_err(|e| unreachable(format!("{e:#}")))?;
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

    /// One request on a fresh connection: status and body.
    async fn exchange(
        &self,
        method: &'static str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> anyhow::Result<(u16, bytes::Bytes)> {
        use anyhow::Context as _;
        use http_body_util::{BodyExt as _, Full, Limited};
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))?
        .context("connecting")?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .context("not a TLS server name")?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .context("HTTP handshake")?;
        let driver = tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> rustls::ClientConfig {
        crate::tls::client_config(&[], &[]).unwrap()
    }

    #[test]
    fn base_urls() {
        let url = |s: &str| ServerUrl::parse(s).unwrap();
        let c = Control::new(&url("http://10.0.0.1:8080"), tls()).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("10.0.0.1", 8080, "")
        );
        assert!(c.tls.is_none());
        let c = Control::new(&url("https://api.example/boson/"), tls()).unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.prefix.as_str(),
                c.authority.as_str()
            ),
            ("api.example", 443, "/boson", "api.example")
        );
        assert!(c.tls.is_some());
        let c = Control::new(&url("http://[::1]:9"), tls()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9));
        assert!(Control::new(&url("http://h:port"), tls()).is_err());
    }
}
