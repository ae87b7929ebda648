//! The tokio shell of `boson-node run`: registration and heartbeats, one local UDP socket per
//! peer, the relay session, the status file and the metrics endpoint. The protocol decisions
//! live in the sans-IO cores ([`crate::ws`], [`crate::backoff`]); this module moves bytes and
//! keeps time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use boson_shared::{NodeId, WgPublicKey};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::clock;
use crate::config::{Config, RouteChoice, RouteKind, WgMode};
use crate::control::{Bandwidth, Control, ControlError, HeartbeatFigures, NodeInfo};
use crate::failover::TransportChoice;
use crate::fragment::{self, Reassembler};
use crate::heartbeat::{Answer, HeartbeatPolicy, Next};
use crate::metrics::{self, PeerFigures, Snapshot};
use crate::relay_conn;
use crate::route::{self, RouteSelector};
use crate::status::{PeerStatus, StatusFile};
use crate::{direct_conn, tls, turn_conn};

/// A runtime failure of `run`: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct RuntimeError(pub anyhow::Error);

/// How many rounds over the `--server` list registration makes at start before giving up.
const START_ROUNDS: u32 = 3;

/// A peer without packets for this long is `trying` again: WireGuard re-handshakes every
/// two minutes on a live tunnel and keepalives (if set) come more often.
const PEER_IDLE: Duration = Duration::from_secs(180);

/// Outgoing packets queued towards the relay; beyond it the newest are dropped (counted).
const RELAY_QUEUE: usize = 4096;

/// The shared counters and state the tasks update and the status, metrics and heartbeat
/// read.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: NodeId,
    /// The route every peer takes when forced; under `--route auto` the relay session's
    /// transport (WebSocket), and each peer's selector decides.
    pub(crate) route_kind: RouteKind,
    /// `--route auto`.
    pub(crate) auto: bool,
    pub(crate) peers: Vec<PeerState>,
    pub(crate) relay_open: AtomicBool,
    /// The relay session's transport is QUIC (else WebSocket).
    pub(crate) relay_quic: AtomicBool,
    pub(crate) relay_rtt_us: AtomicU64,
    pub(crate) relay_sessions: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) heartbeats_ok: AtomicU64,
    pub(crate) heartbeats_failed: AtomicU64,
    pub(crate) drop_not_wireguard: AtomicU64,
    pub(crate) drop_queue_full: AtomicU64,
    pub(crate) drop_no_route: AtomicU64,
    pub(crate) drop_unknown_peer: AtomicU64,
    /// The direct route's drops.
    pub(crate) direct: direct_conn::Counters,
    /// Wakes the direct task when a peer's `reachable` was set.
    pub(crate) direct_wakeup: tokio::sync::Notify,
}

/// One peer's socket and counters.
#[derive(Debug)]
pub(crate) struct PeerState {
    pub(crate) node: NodeId,
    pub(crate) key: WgPublicKey,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local_port: u16,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) rx_packets: AtomicU64,
    pub(crate) route_switches: AtomicU64,
    /// Unix ms of the last packet from the peer (0: never).
    pub(crate) last_rx_ms: AtomicU64,
    /// The peer's relay said it is not connected (cleared by PEER_PRESENT or a packet).
    pub(crate) gone: AtomicBool,
    /// TURN route: a channel to the peer's relayed address is bound.
    pub(crate) route_ready: AtomicBool,
    /// Direct route: punching found a path that answers.
    pub(crate) direct_up: AtomicBool,
    /// The relay said the peer is reachable (PEER_PRESENT, or our session opened) since
    /// the direct task last looked: it signals the peer again at once.
    pub(crate) reachable: AtomicBool,
    /// Direct paths found so far.
    pub(crate) direct_paths: AtomicU64,
    /// `--route auto`: which route packets to the peer take.
    pub(crate) selector: Mutex<RouteSelector>,
    /// The route label last reported, to count switches.
    pub(crate) route: Mutex<Option<RouteKind>>,
    /// Puts back together the packets the peer's agent sent in fragments.
    pub(crate) reassembly: Mutex<Reassembler>,
}

impl Shared {
    pub(crate) fn peer(&self, node: &NodeId) -> Option<&PeerState> {
        self.peers.iter().find(|p| &p.node == node)
    }

    /// The route packets to `peer` take now.
    pub(crate) fn route_of(&self, peer: &PeerState) -> RouteKind {
        if self.auto {
            peer.selector
                .lock()
                .map_or(RouteKind::Ws, |selector| selector.current())
        } else {
            self.route_kind
        }
    }

    /// Whether packets to `peer` can go out now.
    pub(crate) fn can_send(&self, peer: &PeerState) -> bool {
        match self.route_of(peer) {
            RouteKind::Direct => peer.direct_up.load(Ordering::Relaxed),
            RouteKind::Turn => peer.route_ready.load(Ordering::Relaxed),
            // The session must be of the route's transport (under `--route auto` it follows
            // the peers' routes: `failover::TransportChoice`).
            route @ (RouteKind::Quic | RouteKind::Ws) => {
                self.relay_open.load(Ordering::Relaxed)
                    && self.relay_quic.load(Ordering::Relaxed) == (route == RouteKind::Quic)
            }
        }
    }

    fn peer_route_state(&self, peer: &PeerState, now_ms: u64) -> (Option<RouteKind>, &'static str) {
        if !self.can_send(peer) {
            let state = if self.relay_open.load(Ordering::Relaxed) {
                "trying"
            } else {
                "down"
            };
            return (None, state);
        }
        let last = peer.last_rx_ms.load(Ordering::Relaxed);
        let fresh = last != 0 && now_ms.saturating_sub(last) <= PEER_IDLE.as_millis() as u64;
        let route = self.route_of(peer);
        // PEER_GONE speaks of the relay session, which carries only signalling on TURN and
        // on the direct route.
        let gone =
            matches!(route, RouteKind::Quic | RouteKind::Ws) && peer.gone.load(Ordering::Relaxed);
        let state = if fresh && !gone { "up" } else { "trying" };
        (Some(route), state)
    }

    /// Updates each peer's route label (counting switches) and returns the status.
    fn status(&self, running: bool) -> StatusFile {
        let now_ms = clock::unix_ms();
        let peers = self
            .peers
            .iter()
            .map(|peer| {
                let (route, state) = self.peer_route_state(peer, now_ms);
                if let Ok(mut last) = peer.route.lock()
                    && *last != route
                {
                    if last.is_some() || route.is_some() {
                        peer.route_switches.fetch_add(1, Ordering::Relaxed);
                    }
                    *last = route;
                }
                PeerStatus {
                    node_id: peer.node.to_string(),
                    route: route.map_or("none", RouteKind::as_str).to_owned(),
                    state: state.to_owned(),
                    local_port: peer.local_port,
                    tx_bytes: peer.tx_bytes.load(Ordering::Relaxed),
                    rx_bytes: peer.rx_bytes.load(Ordering::Relaxed),
                }
            })
            .collect();
        StatusFile {
            pid: std::process::id(),
            running,
            updated_ms: now_ms,
            node_id: self.node.to_string(),
            peers,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now_ms = clock::unix_ms();
        let rtt = self.relay_rtt_us.load(Ordering::Relaxed);
        Snapshot {
            peers: self
                .peers
                .iter()
                .map(|p| PeerFigures {
                    node: p.node.to_string(),
                    route: self
                        .peer_route_state(p, now_ms)
                        .0
                        .map_or("none", RouteKind::as_str),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_packets: p.tx_packets.load(Ordering::Relaxed),
                    rx_packets: p.rx_packets.load(Ordering::Relaxed),
                    route_switches: p.route_switches.load(Ordering::Relaxed),
                    direct_up: p.direct_up.load(Ordering::Relaxed),
                    direct_paths: p.direct_paths.load(Ordering::Relaxed),
                })
                .collect(),
            relay_connected: self.relay_open.load(Ordering::Relaxed),
            relay_rtt_seconds: (rtt != 0).then(|| rtt as f64 / 1e6),
            relay_sessions: self.relay_sessions.load(Ordering::Relaxed),
            registrations: self.registrations.load(Ordering::Relaxed),
            heartbeats_ok: self.heartbeats_ok.load(Ordering::Relaxed),
            heartbeats_failed: self.heartbeats_failed.load(Ordering::Relaxed),
            drops: vec![
                (
                    "not_from_wireguard",
                    self.drop_not_wireguard.load(Ordering::Relaxed),
                ),
                (
                    "relay_queue_full",
                    self.drop_queue_full.load(Ordering::Relaxed),
                ),
                ("no_route", self.drop_no_route.load(Ordering::Relaxed)),
                (
                    "unknown_peer",
                    self.drop_unknown_peer.load(Ordering::Relaxed),
                ),
                (
                    "direct_bad_probe",
                    self.direct.bad_probe.load(Ordering::Relaxed),
                ),
                (
                    "direct_unknown_source",
                    self.direct.unknown_source.load(Ordering::Relaxed),
                ),
            ]
            .into_iter()
            .chain(fragment::DropReason::ALL.map(|reason| {
                let dropped = self
                    .peers
                    .iter()
                    .filter_map(|p| p.reassembly.lock().ok().map(|r| r.stats().dropped(reason)))
                    .sum();
                (reason.as_str(), dropped)
            }))
            .collect(),
        }
    }
}

/// The registration state every task reads: the current token, and which server gave it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) token: String,
    pub(crate) server: usize,
    pub(crate) heartbeat: Duration,
}

/// Runs the agent until `shutdown` resolves; then deregisters and returns `Ok`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RuntimeError> {
    tokio::pin!(shutdown);
    let auto = config.route == RouteChoice::Auto;
    let route_kind = match config.route {
        RouteChoice::Auto | RouteChoice::Ws => RouteKind::Ws,
        RouteChoice::Quic => RouteKind::Quic,
        RouteChoice::Turn => RouteKind::Turn,
        RouteChoice::Direct => RouteKind::Direct,
    };
    let node = node_id(&config.state_dir, config.node_id).map_err(RuntimeError)?;
    let (secret, wg_port) = match &config.wg {
        WgMode::Interface(iface) => {
            let secret = crate::wg::private_key(iface).await.map_err(RuntimeError)?;
            let port = crate::wg::listen_port(iface).await.map_err(RuntimeError)?;
            (secret, port)
        }
        WgMode::ListenPort { port, private_key } => (private_key.clone(), *port),
    };
    let key = secret.public_key();
    let wg_endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, wg_port));
    let extra = match &config.ca_pem {
        Some(pem) => tls::parse_ca(pem).map_err(RuntimeError)?,
        None => Vec::new(),
    };
    let https = tls::client_config(&extra, &[]).map_err(RuntimeError)?;
    let wss = Arc::new(tls::client_config(&extra, &[b"http/1.1"]).map_err(RuntimeError)?);
    let quic = if route_kind == RouteKind::Quic || auto {
        Some(relay_conn::QuicSettings {
            tls: Arc::new(
                tls::client_config(&extra, &[boson_dataplane_proto::quic::ALPN])
                    .map_err(RuntimeError)?,
            ),
            server_name: config.quic_server_name.clone(),
        })
    } else {
        None
    };
    let choice = match (auto, route_kind) {
        (true, _) => TransportChoice::auto(),
        (false, RouteKind::Quic) => TransportChoice::forced(RouteKind::Quic),
        (false, RouteKind::Direct | RouteKind::Turn | RouteKind::Ws) => {
            TransportChoice::forced(RouteKind::Ws)
        }
    };
    let controls = config
        .servers
        .iter()
        .map(|url| Control::new(url, https.clone()))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(RuntimeError)?;

    let mut peers = Vec::new();
    for peer in &config.peers {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a peer's local UDP socket")
            .map_err(RuntimeError)?;
        let local_port = socket
            .local_addr()
            .map_err(|e| RuntimeError(e.into()))?
            .port();
        peers.push(PeerState {
            node: peer.node,
            key: peer.key,
            socket: Arc::new(socket),
            local_port,
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            route_switches: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            route_ready: AtomicBool::new(false),
            direct_up: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            direct_paths: AtomicU64::new(0),
            selector: Mutex::new(RouteSelector::new(route::AUTO_ROUTES.to_vec())),
            route: Mutex::new(None),
            reassembly: Mutex::new(Reassembler::default()),
        });
    }
    let shared = Arc::new(Shared {
        node,
        route_kind,
        auto,
        peers,
        relay_open: AtomicBool::new(false),
        relay_quic: AtomicBool::new(false),
        relay_rtt_us: AtomicU64::new(0),
        relay_sessions: AtomicU64::new(0),
        registrations: AtomicU64::new(0),
        heartbeats_ok: AtomicU64::new(0),
        heartbeats_failed: AtomicU64::new(0),
        drop_not_wireguard: AtomicU64::new(0),
        drop_queue_full: AtomicU64::new(0),
        drop_no_route: AtomicU64::new(0),
        drop_unknown_peer: AtomicU64::new(0),
        direct: direct_conn::Counters::default(),
        direct_wakeup: tokio::sync::Notify::new(),
    });
    // The direct route's socket, bound now so that NAT discovery learns its mapping: the
    // address the peers are told to punch towards.
    let direct_socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .context("binding the direct route's UDP socket")
        .map_err(RuntimeError)?;

    let info = NodeInfo {
        node,
        key,
        secret,
        ipv4: local_ipv4(&config.servers[0].to_string()).await,
        wg_port,
        stun_mapped: None,
        nat_type: "Symmetric",
    };
    let mut rng = StdRng::from_os_rng();
    let token_file = config.state_dir.join("token");
    let session = tokio::select! {
        session = register_at_start(&controls, &info, &shared, &token_file, &mut rng) => {
            session.map_err(RuntimeError)?
        }
        () = &mut shutdown => {
            info!("stopped before registering");
            return Ok(());
        }
    };
    info!(
        %node,
        server = controls[session.server].base(),
        heartbeat_secs = session.heartbeat.as_secs(),
        "registered"
    );
    let (info, session) = tokio::select! {
        found = discover_nat(&controls, info.clone(), session.clone(), &shared, &token_file, &direct_socket) => found,
        () = &mut shutdown => (info, session),
    };

    // Every peer's endpoint: set through `wg`, or printed for the operator.
    for peer in &shared.peers {
        let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, peer.local_port));
        match &config.wg {
            WgMode::Interface(iface) => {
                crate::wg::set_endpoint(iface, &peer.key, endpoint)
                    .await
                    .map_err(RuntimeError)?;
                info!(peer = %peer.node, %endpoint, "WireGuard endpoint set");
            }
            WgMode::ListenPort { .. } => {
                info!(peer = %peer.node, %endpoint, "set this as the peer's WireGuard endpoint");
            }
        }
    }

    let (session_tx, session_rx) = watch::channel(session);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (out_tx, out_rx) = mpsc::channel::<(NodeId, Vec<u8>)>(RELAY_QUEUE);

    let mut tasks = tokio::task::JoinSet::new();
    // The TURN and direct routes: WireGuard's packets go to their tasks, and the relay
    // session carries only the signalling between the agents.
    let use_turn = route_kind == RouteKind::Turn || auto;
    let use_direct = route_kind == RouteKind::Direct || auto;
    let mut signals = None;
    let (mut turn_signal_rx, mut direct_signal_rx) = (None, None);
    if use_turn || use_direct {
        let (signal_tx, signal_rx) = mpsc::channel::<(NodeId, Vec<u8>)>(256);
        signals = Some(signal_tx);
        let turn = use_turn.then(|| {
            let (tx, rx) = mpsc::channel::<(NodeId, Vec<u8>)>(256);
            turn_signal_rx = Some(rx);
            tx
        });
        let direct = use_direct.then(|| {
            let (tx, rx) = mpsc::channel(256);
            direct_signal_rx = Some(rx);
            tx
        });
        tasks.spawn(direct_conn::dispatch_signals(signal_rx, turn, direct));
    }
    let direct_tx = match direct_signal_rx {
        Some(signal_rx) => {
            let (direct_tx, direct_rx) = mpsc::channel::<(NodeId, Vec<u8>)>(RELAY_QUEUE);
            let port = direct_socket.local_addr().map_or(0, |a| a.port());
            tasks.spawn(direct_conn::run(direct_conn::DirectTask {
                shared: shared.clone(),
                socket: direct_socket,
                candidates: direct_candidates(&info, port),
                packets: direct_rx,
                signals: signal_rx,
                relay: out_tx.clone(),
                stop: stop_rx.clone(),
                wg_endpoint,
            }));
            Some(direct_tx)
        }
        None => None,
    };
    let turn_tx = if let Some(signal_rx) = turn_signal_rx {
        let (turn_tx, turn_rx) = mpsc::channel::<(NodeId, Vec<u8>)>(RELAY_QUEUE);
        tasks.spawn(turn_conn::run(turn_conn::TurnTask {
            shared: shared.clone(),
            controls: controls.clone(),
            session: session_rx.clone(),
            packets: turn_rx,
            signals: signal_rx,
            relay: out_tx.clone(),
            stop: stop_rx.clone(),
            wg_endpoint,
        }));
        Some(turn_tx)
    } else {
        None
    };
    for index in 0..shared.peers.len() {
        tasks.spawn(peer_reader(
            shared.clone(),
            index,
            wg_endpoint,
            out_tx.clone(),
            turn_tx.clone(),
            direct_tx.clone(),
        ));
    }
    drop(turn_tx);
    drop(direct_tx);
    drop(out_tx);
    if auto {
        tasks.spawn(route_timers(shared.clone()));
        for index in 0..shared.peers.len() {
            tasks.spawn(route_plan(
                shared.clone(),
                index,
                controls.clone(),
                info.clone(),
                session_rx.clone(),
            ));
        }
    }
    let relay = tokio::spawn(relay_conn::run(relay_conn::RelayTask {
        shared: shared.clone(),
        controls: controls.clone(),
        session: session_rx.clone(),
        outgoing: out_rx,
        stop: stop_rx.clone(),
        wg_endpoint,
        tls: wss,
        quic,
        choice,
        signals,
    }));
    tasks.spawn(heartbeats(
        controls.clone(),
        info.clone(),
        shared.clone(),
        session_tx,
        token_file.clone(),
    ));
    let status_path = config.state_dir.join("status.json");
    tasks.spawn(status_writer(shared.clone(), status_path.clone()));
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))
            .map_err(RuntimeError)?;
        info!(addr = %listener.local_addr().map_err(|e| RuntimeError(e.into()))?, "metrics listening");
        tasks.spawn(serve_metrics(listener, shared.clone()));
    }

    shutdown.await;
    info!("stopping: closing the relay session and deregistering");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), relay).await;
    tasks.abort_all();
    let session = session_rx.borrow().clone();
    match tokio::time::timeout(
        Duration::from_secs(5),
        deregister(&controls, session.server, &node, &session.token),
    )
    .await
    {
        Ok(Ok(())) => {
            info!(%node, "deregistered");
            let _ = std::fs::remove_file(&token_file);
        }
        Ok(Err(err)) => warn!(%err, "deregistration failed"),
        Err(_) => warn!("deregistration timed out"),
    }
    write_status(&status_path, &shared.status(false)).await;
    Ok(())
}

/// Deregisters at the session's control plane, else at the others (they share the
/// registry): the one that registered the node may be the relay host that just died, and a
/// registration left behind holds the node id as active until the server times it out.
async fn deregister(
    controls: &[Control],
    first: usize,
    node: &NodeId,
    token: &str,
) -> Result<(), ControlError> {
    let mut last = None;
    for offset in 0..controls.len() {
        let control = &controls[(first + offset) % controls.len()];
        // A silent control plane (a dead host drops packets) must leave time for the next.
        match tokio::time::timeout(DEREGISTER_EACH, control.deregister(node, token)).await {
            Ok(Ok(())) => return Ok(()),
            // An answer about the node or the token holds on every control plane.
            Ok(Err(err)) if !is_transient(&err) => return Err(err),
            Ok(Err(err)) => {
                warn!(server = control.base(), %err, "deregistration failed: trying the next server");
                last = Some(err);
            }
            Err(_) => {
                warn!(
                    server = control.base(),
                    "deregistration timed out: trying the next server"
                );
            }
        }
    }
    match last {
        Some(err) => Err(err),
        None => Err(ControlError::Unreachable {
            url: "every --server".to_owned(),
            detail: format!("no answer within {DEREGISTER_EACH:?} each"),
        }),
    }
}

/// How long one control plane may take to deregister the node before the next is tried.
const DEREGISTER_EACH: Duration = Duration::from_millis(2000);

/// The node id from the flag, else from `STATE_DIR/node-id`, else a new one written there.
fn node_id(state_dir: &Path, given: Option<NodeId>) -> anyhow::Result<NodeId> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating --state-dir {}", state_dir.display()))?;
    if let Some(node) = given {
        return Ok(node);
    }
    let file = state_dir.join("node-id");
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let node = text
                .trim()
                .parse()
                .map_err(|_| anyhow!("{} does not hold a UUID", file.display()))?;
            Ok(node)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let node = NodeId::from_uuid(uuid::Uuid::new_v4());
            std::fs::write(&file, format!("{node}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(node)
        }
        Err(err) => Err(anyhow!("reading {}: {err}", file.display())),
    }
}

/// The address this host would use towards the control plane (no packet is sent).
async fn local_ipv4(server: &str) -> Ipv4Addr {
    let host = server
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1");
    let target = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
        return Ipv4Addr::LOCALHOST;
    };
    let Ok(mut addrs) = tokio::net::lookup_host(target).await else {
        return Ipv4Addr::LOCALHOST;
    };
    let Some(addr) = addrs.find(SocketAddr::is_ipv4) else {
        return Ipv4Addr::LOCALHOST;
    };
    if socket.connect(addr).await.is_err() {
        return Ipv4Addr::LOCALHOST;
    }
    match socket.local_addr() {
        Ok(SocketAddr::V4(local)) => *local.ip(),
        Ok(SocketAddr::V6(_)) | Err(_) => Ipv4Addr::LOCALHOST,
    }
}

/// How long registration at start waits out a 409 (the node id still active, after an
/// unclean stop without its token file, or held by another key) before giving up.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(90);

/// Registration at start: each server in order, with the token kept from the last run if
/// any (a restart after a crash re-registers at once with it), a few rounds; a 409 is waited
/// out up to [`CONFLICT_PATIENCE`]; every failure is logged.
async fn register_at_start(
    controls: &[Control],
    info: &NodeInfo,
    shared: &Shared,
    token_file: &Path,
    rng: &mut StdRng,
) -> anyhow::Result<Session> {
    let mut saved = std::fs::read_to_string(token_file)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let started = clock::now();
    let mut rounds = 0;
    loop {
        let mut last = None;
        let mut conflict = false;
        for (index, control) in controls.iter().enumerate() {
            let mut result = control.register(info, saved.as_deref()).await;
            if saved.is_some() && matches!(&result, Err(e) if e.status() == Some(401)) {
                // The kept token is stale (the node was deleted, or the server's key changed).
                saved = None;
                result = control.register(info, None).await;
            }
            match result {
                Ok(registered) => {
                    shared.registrations.fetch_add(1, Ordering::Relaxed);
                    save_token(token_file, &registered.session_token);
                    return Ok(Session {
                        token: registered.session_token,
                        server: index,
                        heartbeat: Duration::from_secs(registered.heartbeat_interval.max(1)),
                    });
                }
                Err(err) => {
                    match err.status() {
                        Some(409) => conflict = true,
                        Some(status) if status != 503 && status != 429 && status < 500 => {
                            // A refusal is an answer: trying again will not change it.
                            return Err(anyhow!(err));
                        }
                        Some(_) | None => {}
                    }
                    warn!(%err, "registration failed");
                    last = Some(err);
                }
            }
        }
        rounds += 1;
        let patient = conflict && clock::now().duration_since(started) < CONFLICT_PATIENCE;
        if rounds >= START_ROUNDS && !patient {
            return Err(match last {
                Some(err) => anyhow!("registration failed on every --server: {err}"),
                None => anyhow!("no control plane given"),
            });
        }
        if conflict {
            warn!(
                "the server holds this node id as active (an unclean stop, or another machine \
                 with the same id): retrying until it times the node out"
            );
        }
        tokio::time::sleep(backoff.next_delay(rng)).await;
    }
}

/// How long NAT discovery may take at start, however many STUN destinations are silent.
const NAT_DISCOVERY: Duration = Duration::from_secs(3);

/// NAT discovery ([`crate::nat`]) from the agent's own UDP socket towards the STUN
/// destinations of `GET /api/v1/turn/ice`; registers again with the mapped address and NAT
/// type it found. On any failure the first registration (no mapped address, `Symmetric`)
/// stands, and the reason is logged.
async fn discover_nat(
    controls: &[Control],
    mut info: NodeInfo,
    session: Session,
    shared: &Shared,
    token_file: &Path,
    socket: &UdpSocket,
) -> (NodeInfo, Session) {
    let control = &controls[session.server];
    let report = match probe_nat(control, &session.token, socket).await {
        Ok(report) => report,
        Err(err) => {
            warn!(err = %format!("{err:#}"), "NAT discovery failed: registered without a mapped address");
            return (info, session);
        }
    };
    info!(
        mapped = ?report.mapped,
        nat_type = %report.nat_type,
        mapping = ?report.mapping,
        reason = %report.reason,
        "NAT discovery"
    );
    let Some(mapped) = report.mapped else {
        return (info, session);
    };
    info.stun_mapped = Some(mapped.to_string());
    info.nat_type = report.nat_type;
    match control.register(&info, Some(&session.token)).await {
        Ok(registered) => {
            shared.registrations.fetch_add(1, Ordering::Relaxed);
            save_token(token_file, &registered.session_token);
            let session = Session {
                token: registered.session_token,
                server: session.server,
                heartbeat: Duration::from_secs(registered.heartbeat_interval.max(1)),
            };
            (info, session)
        }
        Err(err) => {
            // The heartbeat task's next registration carries it.
            warn!(%err, "registering the mapped address failed");
            (info, session)
        }
    }
}

/// The direct route's candidates: the mapped address NAT discovery found for the direct
/// socket, then the LAN address (the one towards the control plane) with its port. Loopback
/// addresses are left out (a STUN server on this host's loopback sees one): no peer on
/// another machine reaches them.
fn direct_candidates(info: &NodeInfo, port: u16) -> Vec<SocketAddr> {
    let mut candidates: Vec<SocketAddr> = info
        .stun_mapped
        .as_deref()
        .and_then(|mapped| mapped.parse::<SocketAddr>().ok())
        .filter(|mapped| !mapped.ip().is_loopback() && !mapped.ip().is_unspecified())
        .into_iter()
        .collect();
    let lan = SocketAddr::from((info.ipv4, port));
    if !info.ipv4.is_loopback() && !info.ipv4.is_unspecified() && !candidates.contains(&lan) {
        candidates.push(lan);
    }
    candidates
}

/// `host:port` of a `stun:` or UDP `turn:` URL (port 3478 when none is given).
fn stun_destination(url: &str) -> Option<String> {
    let (rest, query) = match url.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (url, None),
    };
    let hostport = match rest.split_once(':') {
        Some(("stun", hostport)) => hostport,
        Some(("turn", hostport)) if query.is_none_or(|q| q.contains("transport=udp")) => hostport,
        _ => return None,
    };
    let has_port = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
    Some(if has_port {
        hostport.to_owned()
    } else {
        format!("{hostport}:3478")
    })
}

/// Runs one [`crate::nat::NatDiscovery`] from `socket` (the direct route's, whose mapping
/// the peers punch towards), bounded by [`NAT_DISCOVERY`].
async fn probe_nat(
    control: &Control,
    token: &str,
    socket: &UdpSocket,
) -> anyhow::Result<crate::nat::NatReport> {
    let ice = control.ice(token).await?;
    let mut destinations = Vec::new();
    for url in ice.ice_servers.iter().flat_map(|s| s.urls.iter()) {
        let Some(hostport) = stun_destination(url) else {
            continue;
        };
        match tokio::net::lookup_host(&hostport).await {
            Ok(mut addrs) => destinations.extend(addrs.find(SocketAddr::is_ipv4)),
            Err(err) => warn!(%hostport, %err, "cannot resolve a STUN destination"),
        }
    }
    if destinations.is_empty() {
        return Err(anyhow!("the server lists no STUN destination"));
    }
    let config = crate::nat::DiscoveryConfig {
        deadline: Some(NAT_DISCOVERY),
        ..crate::nat::DiscoveryConfig::default()
    };
    let mut discovery = crate::nat::NatDiscovery::new(
        &destinations,
        config,
        clock::now(),
        &mut StdRng::from_os_rng(),
    );
    let mut buf = vec![0u8; 1500];
    let mut out = [0u8; 64];
    loop {
        let now = clock::now();
        while let Some((to, len)) = discovery.poll_transmit(now, &mut out) {
            if let Err(err) = socket.send_to(&out[..len], to).await {
                debug!(%to, %err, "STUN request not sent");
            }
        }
        discovery.handle_timeout(now);
        let Some(next) = discovery.poll_timeout() else {
            break;
        };
        let wait = next.saturating_duration_since(now);
        match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => {
                let _ = discovery.handle_input(clock::now(), from, &buf[..len]);
            }
            Ok(Err(err)) => {
                // An ICMP error from an earlier send; the retransmissions go on.
                debug!(%err, "NAT discovery receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {}
        }
    }
    let destinations: Vec<String> = discovery.destinations().map(|d| d.to_string()).collect();
    debug!(destinations = %destinations.join(","), ignored = ?discovery.ignored(), "NAT discovery done");
    Ok(discovery.report())
}

/// Keeps the session token in the state dir (mode 0600), so a restart can re-register.
fn save_token(path: &Path, token: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(token.as_bytes()));
    if let Err(err) = written {
        warn!(%err, path = %path.display(), "cannot keep the session token");
    }
}

/// How long one heartbeat may take before the next control plane is tried: a dead host
/// drops packets, and its silence must not hold the node's liveness up for the whole
/// request timeout.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a failed heartbeat says nothing about the token: the server did not answer, was
/// overloaded or failed inside. A 401, 403 or 404 (token revoked, node deleted) is not.
fn is_transient(err: &ControlError) -> bool {
    match err.status() {
        None => matches!(err, ControlError::Unreachable { .. }),
        Some(status) => status == 429 || status >= 500,
    }
}

/// Heartbeats at the interval the server gave, moving to the next control plane at once
/// when one does not answer and registering again only when the token is refused
/// ([`crate::heartbeat`]'s decisions).
async fn heartbeats(
    controls: Vec<Control>,
    info: NodeInfo,
    shared: Arc<Shared>,
    session_tx: watch::Sender<Session>,
    token_file: PathBuf,
) {
    let mut rng = StdRng::from_os_rng();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut policy = HeartbeatPolicy::new(controls.len());
    let mut cpu = CpuMeter::new();
    let mut last_bytes = (0u64, 0u64);
    let mut last_at = clock::now();
    let mut next = Next::Beat {
        server: session_tx.borrow().server,
        after: session_tx.borrow().heartbeat,
    };
    loop {
        let (server, after) = match next {
            Next::Beat { server, after } => (server, after),
            Next::Register { order } => {
                register_again(
                    &controls,
                    &info,
                    &shared,
                    &session_tx,
                    &token_file,
                    &order,
                    &mut backoff,
                    &mut rng,
                )
                .await;
                policy.handle_registered();
                let session = session_tx.borrow().clone();
                next = Next::Beat {
                    server: session.server,
                    after: session.heartbeat,
                };
                continue;
            }
        };
        tokio::time::sleep(after).await;
        let session = session_tx.borrow().clone();
        let now = clock::now();
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;
        let tx: u64 = shared
            .peers
            .iter()
            .map(|p| p.tx_bytes.load(Ordering::Relaxed))
            .sum();
        let rx: u64 = shared
            .peers
            .iter()
            .map(|p| p.rx_bytes.load(Ordering::Relaxed))
            .sum();
        let now_ms = clock::unix_ms();
        let active = shared
            .peers
            .iter()
            .filter(|p| shared.peer_route_state(p, now_ms).1 == "up")
            .count();
        let figures = HeartbeatFigures {
            latency: shared.relay_rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
            cpu_usage: cpu.percent(now),
            active_connections: u32::try_from(active).unwrap_or(u32::MAX),
            bandwidth: Bandwidth {
                up: (tx - last_bytes.0) as f64 * 8.0 / 1e6 / secs,
                down: (rx - last_bytes.1) as f64 * 8.0 / 1e6 / secs,
            },
        };
        last_bytes = (tx, rx);
        let control = &controls[server];
        let result = match tokio::time::timeout(
            HEARTBEAT_TIMEOUT,
            control.heartbeat(&info.node, &session.token, figures),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ControlError::Unreachable {
                url: control.base().to_owned(),
                detail: format!("no answer within {HEARTBEAT_TIMEOUT:?}"),
            }),
        };
        let answer = match result {
            Ok(()) => {
                shared.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                if server != session.server {
                    info!(
                        server = control.base(),
                        "heartbeats moved to this control plane"
                    );
                    session_tx.send_modify(|s| s.server = server);
                }
                Answer::Accepted
            }
            Err(err) => {
                shared.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                warn!(%err, "heartbeat failed");
                if is_transient(&err) {
                    Answer::Transient
                } else {
                    Answer::Refused
                }
            }
        };
        next = policy.handle_answer(server, answer, session.heartbeat, &mut rng);
    }
}

/// Registers again, trying the control planes in `order` (each with the current token,
/// which every control plane of the deployment accepts), round after round with backoff,
/// until one accepts; publishes the new session.
#[expect(
    clippy::too_many_arguments,
    reason = "the heartbeat task's state, passed down once"
)]
async fn register_again(
    controls: &[Control],
    info: &NodeInfo,
    shared: &Shared,
    session_tx: &watch::Sender<Session>,
    token_file: &Path,
    order: &[usize],
    backoff: &mut Backoff,
    rng: &mut StdRng,
) {
    let token = session_tx.borrow().token.clone();
    let mut token = Some(token);
    loop {
        for &index in order {
            let mut result = controls[index].register(info, token.as_deref()).await;
            if token.is_some() && matches!(&result, Err(e) if e.status() == Some(401)) {
                // The token is no longer good (a restart with a new key, or the node was
                // deleted): register afresh, here and from now on.
                token = None;
                result = controls[index].register(info, None).await;
            }
            match result {
                Ok(registered) => {
                    shared.registrations.fetch_add(1, Ordering::Relaxed);
                    info!(server = controls[index].base(), "registered again");
                    save_token(token_file, &registered.session_token);
                    let _ = session_tx.send(Session {
                        token: registered.session_token,
                        server: index,
                        heartbeat: Duration::from_secs(registered.heartbeat_interval.max(1)),
                    });
                    backoff.reset();
                    return;
                }
                Err(err) => warn!(%err, "registration failed"),
            }
        }
        tokio::time::sleep(backoff.next_delay(rng)).await;
    }
}

/// Process CPU use from `/proc/self/stat` (utime + stime), percent of one core.
struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    const fn new() -> Self {
        Self { last: None }
    }

    fn percent(&mut self, now: Instant) -> f64 {
        let Some(ticks) = cpu_ticks() else { return 0.0 };
        let result = match self.last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                // USER_HZ is 100 on every Linux ABI.
                if secs > 0.0 {
                    ((ticks - before) as f64 / 100.0 / secs * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        result
    }
}

fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses (which may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads what WireGuard sends to one peer's socket and queues it for the peer's route.
async fn peer_reader(
    shared: Arc<Shared>,
    index: usize,
    wg_endpoint: SocketAddr,
    relay: mpsc::Sender<(NodeId, Vec<u8>)>,
    turn: Option<mpsc::Sender<(NodeId, Vec<u8>)>>,
    direct: Option<mpsc::Sender<(NodeId, Vec<u8>)>>,
) {
    let peer = &shared.peers[index];
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match peer.socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                // ICMP errors from an earlier send surface here; they are not fatal.
                debug!(peer = %peer.node, %err, "peer socket receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if from != wg_endpoint {
            shared.drop_not_wireguard.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let packet = &buf[..len];
        if shared.auto
            && let Ok(mut selector) = peer.selector.lock()
        {
            selector.handle_outgoing(clock::now(), packet);
        }
        if !shared.can_send(peer) {
            shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let out = match (shared.route_of(peer), &turn, &direct) {
            (RouteKind::Turn, Some(turn), _) => turn,
            (RouteKind::Direct, _, Some(direct)) => direct,
            _ => &relay,
        };
        match out.try_send((peer.node, packet.to_vec())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.drop_queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// `--route auto`: fires every peer's route timers (handshake timeouts, upgrades).
async fn route_timers(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = clock::now();
        for peer in &shared.peers {
            if let Ok(mut selector) = peer.selector.lock() {
                let before = selector.current();
                selector.handle_timeout(now);
                if selector.current() != before {
                    info!(peer = %peer.node, from = %before, to = %selector.current(), "route switched");
                }
            }
        }
    }
}

/// How long the agent keeps asking for a peer's ranking while the server cannot give one
/// (the peer not registered yet, not live, or the server unreachable) before it logs that it
/// keeps the default order; it goes on asking after that, more slowly.
const PLAN_PATIENCE: Duration = Duration::from_secs(60);

/// How often a peer's ranking is asked for again once the server gave one.
const PLAN_REFRESH: Duration = Duration::from_secs(300);

/// `--route auto`: asks the server how to reach the peer (`POST /api/v1/routing/request`)
/// and gives its selector the routes in the server's order; again every [`PLAN_REFRESH`]. A
/// malformed answer is logged and the default order ([`route::AUTO_ROUTES`]) kept.
async fn route_plan(
    shared: Arc<Shared>,
    index: usize,
    controls: Vec<Control>,
    info: NodeInfo,
    session: watch::Receiver<Session>,
) {
    let peer = &shared.peers[index];
    let default = route::labels(&route::AUTO_ROUTES);
    let mut rng = StdRng::from_os_rng();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut since = clock::now();
    let mut told = false;
    loop {
        let current = session.borrow().clone();
        let answer = controls[current.server]
            .routing(&info, &current.token, &peer.node)
            .await;
        let ranking = match answer {
            Ok(routes) => Ok(routes),
            Err(err @ ControlError::Malformed { .. }) => Err(err.to_string()),
            Err(err) => {
                // Not an answer about the routes: the peer may not have registered yet.
                if !told && clock::now().duration_since(since) >= PLAN_PATIENCE {
                    warn!(peer = %peer.node, %err, order = %default,
                        "the server gives no route ranking: trying routes in the default order");
                    told = true;
                } else {
                    debug!(peer = %peer.node, %err, "route ranking not available yet");
                }
                tokio::time::sleep(backoff.next_delay(&mut rng)).await;
                continue;
            }
        };
        match ranking
            .and_then(|routes| route::plan_from_ranking(&routes).map_err(|e| e.to_string()))
        {
            Ok(plan) => {
                let order = route::labels(&plan.usable);
                info!(peer = %peer.node, ranked = %route::labels(&plan.ranked), %order,
                    "route order from the server");
                if let Ok(mut selector) = peer.selector.lock() {
                    selector.set_candidates(plan.usable);
                }
            }
            Err(err) => {
                warn!(peer = %peer.node, %err, order = %default,
                    "malformed routing answer: trying routes in the default order");
            }
        }
        backoff.reset();
        told = false;
        tokio::time::sleep(PLAN_REFRESH).await;
        since = clock::now();
    }
}

/// A packet from `peer` arrived on `via`: tells its route selector.
pub(crate) fn note_incoming(shared: &Shared, peer: &PeerState, via: RouteKind, packet: &[u8]) {
    if shared.auto
        && let Ok(mut selector) = peer.selector.lock()
    {
        selector.handle_incoming(clock::now(), via, packet);
    }
}

/// Rewrites the status file every second.
async fn status_writer(shared: Arc<Shared>, path: PathBuf) {
    loop {
        write_status(&path, &shared.status(true)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Writes the file atomically (a temporary file renamed over it).
async fn write_status(path: &Path, status: &StatusFile) {
    let Ok(json) = serde_json::to_vec_pretty(status) else {
        return;
    };
    let tmp = path.with_extension("json.tmp");
    if let Err(err) = tokio::fs::write(&tmp, json).await {
        warn!(%err, path = %tmp.display(), "cannot write the status file");
        return;
    }
    if let Err(err) = tokio::fs::rename(&tmp, path).await {
        warn!(%err, path = %path.display(), "cannot write the status file");
    }
}

/// A minimal HTTP/1.1 server for `GET /metrics`.
async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                }
                None
            })
            .await;
            if !matches!(read, Ok(Some(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let response = if head.starts_with("GET /metrics ") {
                let body = metrics::render(&shared.snapshot());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The peers' nodes, for lookups by the relay task.
pub(crate) fn peer_index(shared: &Shared) -> BTreeMap<NodeId, usize> {
    shared
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.node, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::stun_destination;

    #[test]
    fn stun_destinations_from_ice_urls() {
        let d = |u: &str| stun_destination(u);
        assert_eq!(d("stun:10.0.0.1:3478").as_deref(), Some("10.0.0.1:3478"));
        assert_eq!(
            d("turn:relay.example:3479?transport=udp").as_deref(),
            Some("relay.example:3479")
        );
        assert_eq!(
            d("stun:relay.example").as_deref(),
            Some("relay.example:3478")
        );
        assert_eq!(d("turn:10.0.0.1:3478?transport=tcp"), None);
        assert_eq!(d("turns:10.0.0.1:5349"), None);
        assert_eq!(d("http://x"), None);
    }
}
