//! The command line (every flag also read from `BOSON_NODE_<FLAG>`), validated once into a
//! [`Config`]. Nothing below `main` reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boson_shared::{NodeId, WgPublicKey};
use clap::{Parser, Subcommand, ValueEnum};

/// The BosonServer node agent: carries WireGuard's UDP through BosonServer.
#[derive(Debug, Parser)]
#[command(name = "boson-node", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register with the server and carry WireGuard's packets to the peers until stopped.
    Run(Box<RunArgs>),
    /// Print each peer's route: `NODE_ID ROUTE STATE LOCAL_PORT TX_BYTES RX_BYTES`.
    Status(StatusArgs),
}

/// `boson-node run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Control plane base URL (http:// or https://). Repeatable: tried in order, the next one
    /// when one is unreachable.
    #[arg(
        long = "server",
        env = "BOSON_NODE_SERVER",
        value_delimiter = ',',
        required = true
    )]
    pub servers: Vec<String>,
    /// The WireGuard interface (kernel or wireguard-go); the agent reads its key and port
    /// with `wg show` and points each peer's endpoint at the peer's local socket.
    #[arg(long, env = "BOSON_NODE_WG_INTERFACE", conflicts_with_all = ["wg_listen_port", "wg_private_key_file"])]
    pub wg_interface: Option<String>,
    /// Instead of --wg-interface: WireGuard's UDP port on 127.0.0.1 (with
    /// --wg-private-key-file); the agent runs no `wg` command.
    #[arg(
        long,
        env = "BOSON_NODE_WG_LISTEN_PORT",
        requires = "wg_private_key_file"
    )]
    pub wg_listen_port: Option<u16>,
    /// The WireGuard private key file (base64, as `wg genkey` writes it), with
    /// --wg-listen-port.
    #[arg(
        long,
        env = "BOSON_NODE_WG_PRIVATE_KEY_FILE",
        requires = "wg_listen_port"
    )]
    pub wg_private_key_file: Option<PathBuf>,
    /// This node's id (default: generated once and kept in --state-dir).
    #[arg(long, env = "BOSON_NODE_NODE_ID")]
    pub node_id: Option<String>,
    /// Node id and status file.
    #[arg(long, env = "BOSON_NODE_STATE_DIR", default_value = "./boson-node")]
    pub state_dir: PathBuf,
    /// A peer: `NODE_ID=PUBLIC_KEY` (base64). Repeatable.
    #[arg(long = "peer", env = "BOSON_NODE_PEER", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// auto (the routes in the order the server ranks them; keep the first that carries a
    /// WireGuard handshake), or one route forced for every peer.
    #[arg(long, env = "BOSON_NODE_ROUTE", value_enum, default_value_t = RouteChoice::Auto)]
    pub route: RouteChoice,
    /// Serve Prometheus text on http://ADDR/metrics.
    #[arg(long, env = "BOSON_NODE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// An extra CA (PEM) trusted for https, wss and QUIC.
    #[arg(long, env = "BOSON_NODE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name the QUIC relay's certificate must carry (default: the host of its
    /// address). `localhost` for a server's self-signed development certificate.
    #[arg(long, env = "BOSON_NODE_QUIC_SERVER_NAME")]
    pub quic_server_name: Option<String>,
}

/// `boson-node status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The running agent's --state-dir.
    #[arg(long, env = "BOSON_NODE_STATE_DIR", default_value = "./boson-node")]
    pub state_dir: PathBuf,
}

/// `--route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouteChoice {
    /// The server's ranking, first route that carries a handshake.
    Auto,
    /// UDP hole punching.
    Direct,
    /// A TURN relay.
    Turn,
    /// The QUIC relay.
    Quic,
    /// The WebSocket relay.
    Ws,
}

/// The route a peer's packets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    /// Straight to the peer's mapped address.
    Direct,
    /// Through a TURN allocation.
    Turn,
    /// Through the QUIC relay.
    Quic,
    /// Through the WebSocket relay.
    Ws,
}

impl RouteKind {
    /// The label in the status output and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Turn => "turn",
            Self::Quic => "quic",
            Self::Ws => "ws",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer from `--peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub node: NodeId,
    /// Its WireGuard public key.
    pub key: WgPublicKey,
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, key) = s
            .split_once('=')
            .ok_or_else(|| format!("--peer {s:?}: expected NODE_ID=PUBLIC_KEY"))?;
        let node = node
            .trim()
            .parse::<NodeId>()
            .map_err(|_| format!("--peer {s:?}: {node:?} is not a UUID"))?;
        let key =
            parse_key(key.trim()).map_err(|err| format!("--peer {s:?}: the public key {err}"))?;
        Ok(Self {
            node,
            key: WgPublicKey::from_bytes(key),
        })
    }
}

/// How the agent finds WireGuard.
#[derive(Debug, Clone)]
pub enum WgMode {
    /// `wg show` / `wg set` on this interface.
    Interface(String),
    /// WireGuard listens on 127.0.0.1:port; the private key gives the public key.
    ListenPort {
        /// WireGuard's UDP port.
        port: u16,
        /// The private key file's key: it proves the registration, and gives the public key.
        private_key: crate::keys::WgSecret,
    },
}

/// A control plane base URL, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Checks a `--server` value: `http://` or `https://` and a host.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim().trim_end_matches('/');
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                ConfigError(format!(
                    "--server {url:?} must start with http:// or https://"
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
            return Err(ConfigError(format!("--server {url:?} has no host")));
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL as given, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated `run` configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Control planes, in order of preference.
    pub servers: Vec<ServerUrl>,
    /// How to reach WireGuard.
    pub wg: WgMode,
    /// This node's id, if given (else read from or written to the state dir).
    pub node_id: Option<NodeId>,
    /// Where the node id and the status file live.
    pub state_dir: PathBuf,
    /// The peers.
    pub peers: Vec<Peer>,
    /// The route policy.
    pub route: RouteChoice,
    /// Where to serve metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// An extra CA, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// The TLS name for the QUIC relay, if not its host.
    pub quic_server_name: Option<String>,
}

/// A configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl RunArgs {
    /// Validates the arguments (reading the key and CA files).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let err = |s: String| ConfigError(s);
        let mut servers = Vec::new();
        for url in &self.servers {
            servers.push(ServerUrl::parse(url)?);
        }
        let wg = match (
            self.wg_interface,
            self.wg_listen_port,
            self.wg_private_key_file,
        ) {
            (Some(iface), None, None) => {
                if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
                    return Err(err(format!(
                        "--wg-interface {iface:?} is not an interface name"
                    )));
                }
                WgMode::Interface(iface)
            }
            (None, Some(port), Some(file)) => {
                if port == 0 {
                    return Err(err("--wg-listen-port must be 1..=65535".to_owned()));
                }
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| err(format!("--wg-private-key-file {}: {e}", file.display())))?;
                let private = parse_key(text.trim()).map_err(|e| {
                    err(format!(
                        "--wg-private-key-file {}: the key {e}",
                        file.display()
                    ))
                })?;
                WgMode::ListenPort {
                    port,
                    private_key: crate::keys::WgSecret::from_bytes(private),
                }
            }
            _ => {
                return Err(err(
                    "give --wg-interface, or --wg-listen-port with --wg-private-key-file"
                        .to_owned(),
                ));
            }
        };
        let node_id = match self.node_id {
            Some(id) => Some(
                id.trim()
                    .parse::<NodeId>()
                    .map_err(|_| err(format!("--node-id {id:?} is not a UUID")))?,
            ),
            None => None,
        };
        let mut peers: Vec<Peer> = Vec::new();
        for peer in &self.peers {
            let peer: Peer = peer.parse().map_err(err)?;
            if peers.iter().any(|p| p.node == peer.node) {
                return Err(err(format!("--peer {} given twice", peer.node)));
            }
            if Some(peer.node) == node_id {
                return Err(err(format!("--peer {} is this node's own id", peer.node)));
            }
            peers.push(peer);
        }
        let ca_pem = match &self.ca_file {
            Some(file) => Some(
                std::fs::read(file)
                    .map_err(|e| err(format!("--ca-file {}: {e}", file.display())))?,
            ),
            None => None,
        };
        Ok(Config {
            servers,
            wg,
            node_id,
            state_dir: self.state_dir,
            peers,
            route: self.route,
            metrics_listen: self.metrics_listen,
            ca_pem,
            quic_server_name: self.quic_server_name,
        })
    }
}

/// A 32-byte WireGuard key from standard base64.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 33];
    match STANDARD.decode_slice(text.as_bytes(), &mut out) {
        Ok(32) => {
            let mut key = [0u8; 32];
            key.copy_from_slice(&out[..32]);
            Ok(key)
        }
        Ok(n) => Err(format!("decodes to {n} bytes, not 32")),
        Err(_) => Err("is not base64 of 32 bytes".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("boson-node").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(args) => (*args).into_config().map_err(|e| e.0),
            Command::Status(_) => Err("status".to_owned()),
        }
    }

    #[test]
    fn peers_and_servers_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "YNqHbfBQKaGvzefSSeXw7lxUv9kKKzvnzzPsQHcxpVs=\n").unwrap();
        let key = key.to_str().unwrap();
        let base = [
            "run",
            "--server",
            "http://127.0.0.1:8080/",
            "--wg-listen-port",
            "51820",
            "--wg-private-key-file",
            key,
        ];
        let config = run(&base).unwrap();
        assert_eq!(config.servers[0].as_str(), "http://127.0.0.1:8080");
        let peer = "--peer=6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02=xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let config = run(&[&base[..], &[peer]].concat()).unwrap();
        assert_eq!(config.peers.len(), 1);
        for (bad, says) in [
            ("--peer=nonsense", "NODE_ID=PUBLIC_KEY"),
            ("--peer=x=y", "is not a UUID"),
            (
                "--peer=6f1d3a52-8a5e-4c1e-9a43-3b0d2b7f5a02=abc",
                "public key",
            ),
            ("--server=ftp://x", "http://"),
            ("--route=carrier-pigeon", "invalid value"),
        ] {
            let err = run(&[&base[..], &[bad]].concat()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = run(&["run", "--server", "http://x"]).unwrap_err();
        assert!(err.contains("--wg-interface"), "{err}");
        let err = run(&[
            "run",
            "--server",
            "http://x",
            "--wg-listen-port",
            "1",
            "--wg-private-key-file",
            "/nonexistent/key",
        ])
        .unwrap_err();
        assert!(err.contains("/nonexistent/key"), "{err}");
    }
}
