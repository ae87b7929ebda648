//! The WebSocket relay's I/O shell: picks a live relay host from the control plane, opens
//! TCP (and TLS for `wss://`), drives a [`RelayClient`] over it, hands RECVs to WireGuard
//! from the peer's socket and SENDs what the peer sockets queued; reconnects with backoff,
//! to another host after a RECONNECT_HINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use boson_shared::NodeId;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::agent::{Session, Shared, peer_index};
use crate::clock;
use crate::config::RouteKind;
use crate::control::Control;
use crate::failover::{Candidate, CarrierWatch, Failover, TransportChoice};
use crate::fragment::Reassembled;
use crate::ws::{ClientConfig, Event, Input, RelayClient};

/// Everything the relay task needs.
pub(crate) struct RelayTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) controls: Vec<Control>,
    pub(crate) session: watch::Receiver<Session>,
    pub(crate) outgoing: mpsc::Receiver<(NodeId, Vec<u8>)>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) wg_endpoint: SocketAddr,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// How to reach the QUIC relay, when the session may use it.
    pub(crate) quic: Option<QuicSettings>,
    /// Which transport each session uses.
    pub(crate) choice: TransportChoice,
    /// Where signalling messages from peers go (the TURN route), if anywhere.
    pub(crate) signals: Option<mpsc::Sender<(NodeId, Vec<u8>)>>,
}

/// The QUIC relay's TLS configuration (ALPN `boson-relay/1`) and the name to verify, if
/// not the host.
pub(crate) struct QuicSettings {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) server_name: Option<String>,
}

/// How often a session checks whether [`TransportChoice`] wants the other transport.
pub(crate) const SWITCH_CHECK: Duration = Duration::from_millis(250);

/// The transport the session should use now.
pub(crate) fn wanted(task: &RelayTask) -> RouteKind {
    let quic_candidate = task.shared.peers.iter().any(|p| {
        p.selector
            .lock()
            .is_ok_and(|s| s.candidates().contains(&RouteKind::Quic))
    });
    let wanted = task.choice.wanted(
        clock::now(),
        task.shared.peers.iter().map(|p| task.shared.route_of(p)),
        quic_candidate,
    );
    if task.quic.is_none() {
        RouteKind::Ws
    } else {
        wanted
    }
}

pub(crate) use crate::failover::Ended;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayUrl {
    pub(crate) tls: bool,
    /// `HOST[:PORT]` as written, for the Host header.
    pub(crate) authority: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl RelayUrl {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            bail!("relay URL {url:?} is neither ws:// nor wss://");
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("relay URL {url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().context("relay URL port")?,
                None => default_port,
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), port.parse().context("relay URL port")?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            bail!("relay URL {url:?} has no host");
        }
        Ok(Self {
            tls,
            authority: authority.to_owned(),
            host,
            port,
            path: path.to_owned(),
        })
    }
}

/// How long one control plane may take to list the hosts while a session is being
/// replaced: a silent one (perhaps on the host that just died) must not hold up failover.
const HOSTS_TIMEOUT: Duration = Duration::from_millis(1500);

/// The relay loop: runs until stopped. The choices are [`Failover`]'s.
pub(crate) async fn run(mut task: RelayTask) {
    let mut rng = StdRng::from_os_rng();
    let first = task.session.borrow().server;
    let mut failover = Failover::new(task.controls.len(), first);
    let mut server = first;
    let mut hosts = Vec::new();
    let index = peer_index(&task.shared);
    loop {
        if *task.stop.borrow() {
            return;
        }
        let session = task.session.borrow().clone();
        if session.server != server {
            server = session.server;
            failover.set_first_control(server);
        }
        let transport = wanted(&task);
        let quic = transport == RouteKind::Quic;
        task.shared.relay_quic.store(quic, Ordering::Relaxed);
        let mut tried = None;
        let ended = match pick_host(
            &task.controls,
            &session.token,
            quic,
            &mut failover,
            &mut hosts,
        )
        .await
        {
            Ok(url) => {
                let ended = if quic {
                    crate::quic_conn::connect_and_run(&mut task, &url, &session.token, &index).await
                } else {
                    connect_and_run(&mut task, &url, &session.token, &index).await
                };
                task.shared.relay_open.store(false, Ordering::Relaxed);
                let ended = match ended {
                    Ok(ended) => ended,
                    Err(err) => {
                        warn!(relay = %url, "relay session failed: {err:#}");
                        Ended::Failed { ready: false }
                    }
                };
                tried = Some(url);
                ended
            }
            Err(err) => {
                warn!("no relay host: {err:#}");
                Ended::Failed { ready: false }
            }
        };
        task.choice.handle_ended(clock::now(), transport, ended);
        let Some(delay) = failover.handle_ended(clock::now(), tried.as_deref(), ended, &mut rng)
        else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = task.stop.changed() => return,
            // A new token (after a re-registration) is worth a try at once.
            _ = task.session.changed() => {}
        }
    }
}

/// The relay URL (`quic`: the QUIC address) of the host [`Failover::choose`]s, from the
/// hosts the first control plane to answer lists (else those last listed).
async fn pick_host(
    controls: &[Control],
    token: &str,
    quic: bool,
    failover: &mut Failover,
    cache: &mut Vec<crate::control::Host>,
) -> anyhow::Result<String> {
    // Every control plane shares the token's key: a relay host that died may have been the
    // session's control plane too, and waiting for the next heartbeat to notice would
    // outlast the failover bound.
    let mut last_err = None;
    for at in failover.control_order().collect::<Vec<_>>() {
        let control = &controls[at];
        match tokio::time::timeout(HOSTS_TIMEOUT, control.hosts(token)).await {
            Ok(Ok(hosts)) => {
                failover.handle_control(at, true);
                *cache = hosts;
                last_err = None;
                break;
            }
            Ok(Err(err)) => {
                failover.handle_control(at, false);
                last_err = Some(anyhow::Error::from(err));
            }
            Err(_) => {
                failover.handle_control(at, false);
                last_err = Some(anyhow!(
                    "{} did not list the hosts in {HOSTS_TIMEOUT:?}",
                    control.base()
                ));
            }
        }
    }
    if let Some(err) = last_err {
        if cache.is_empty() {
            return Err(err);
        }
        warn!("no control plane answered ({err:#}): trying the relay hosts last listed");
    }
    let candidates: Vec<Candidate> = cache
        .iter()
        .filter_map(|h| {
            let url = if quic {
                h.addresses.quic_addr.clone()
            } else {
                h.addresses.relay_url.clone()
            }?;
            Some(Candidate {
                url,
                draining: h.draining,
            })
        })
        .collect();
    failover
        .choose(clock::now(), &candidates)
        .map(str::to_owned)
        .ok_or_else(|| {
            let relay = if quic { "QUIC" } else { "WebSocket" };
            anyhow!("the control plane lists no host serving the {relay} relay")
        })
}

async fn connect(task: &RelayTask, url: &RelayUrl) -> anyhow::Result<Box<dyn Stream>> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| anyhow!("connecting to {}:{} timed out", url.host, url.port))?
    .with_context(|| format!("connecting to {}:{}", url.host, url.port))?;
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .with_context(|| format!("{:?} is not a TLS server name", url.host))?;
    let connector = tokio_rustls::TlsConnector::from(task.tls.clone());
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with {} timed out", url.authority))?
        .with_context(|| format!("TLS handshake with {}", url.authority))?;
    Ok(Box::new(tls))
}

async fn connect_and_run(
    task: &mut RelayTask,
    url: &str,
    token: &str,
    index: &BTreeMap<NodeId, usize>,
) -> anyhow::Result<Ended> {
    let parsed = RelayUrl::parse(url)?;
    let stream = connect(task, &parsed).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut client = RelayClient::new(
        ClientConfig {
            ping_interval: crate::failover::KEEPALIVE,
            pong_timeout: crate::failover::KEEPALIVE_TIMEOUT,
            ..ClientConfig::default()
        },
        &parsed.authority,
        &parsed.path,
        token,
        clock::now(),
        StdRng::from_os_rng(),
    )
    .map_err(|e| anyhow!("relay upgrade request: {e}"))?;
    let mut buf = vec![0u8; client.min_input_buffer() + 65_536];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(256 * 1024);
    let mut ready = false;
    let mut drain = false;
    let mut stopping = false;
    let mut switching = false;
    let mut stalled = false;
    let mut carrier = CarrierWatch::default();
    let mut check = tokio::time::interval(SWITCH_CHECK);
    loop {
        client.poll_transmit(&mut out);
        if !out.is_empty() {
            writer
                .write_all(&out)
                .await
                .context("writing to the relay")?;
            out.clear();
        }
        if client.is_closed() {
            break;
        }
        let deadline = client
            .poll_timeout()
            .unwrap_or_else(|| clock::now() + Duration::from_secs(3600));
        if start == end {
            start = 0;
            end = 0;
        } else if buf.len() - end < 4096 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        tokio::select! {
            read = reader.read(&mut buf[end..]) => {
                let n = read.context("reading from the relay")?;
                if n == 0 {
                    bail!("the relay closed the connection");
                }
                end += n;
                let now = clock::now();
                loop {
                    let input = client.handle_input(now, &mut buf[start..end]);
                    match &input {
                        Input::NeedMore => break,
                        Input::Consumed(_) => {}
                        Input::Recv { src, packet, .. } => {
                            let packet = &buf[start + packet.start..start + packet.end];
                            carrier.handle_incoming();
                            deliver(&task.shared, index, src, packet, task.wg_endpoint, task.signals.as_ref()).await;
                        }
                    }
                    start += input.consumed();
                    while let Some(event) = client.poll_event() {
                        if matches!(event, Event::PeerGone(_)) {
                            carrier.handle_peer_gone();
                        }
                        handle_event(&task.shared, event, &mut ready, &mut drain);
                    }
                    if start == end || client.is_closed() {
                        break;
                    }
                }
                if drain && !stopping {
                    info!(relay = %url, "relay host draining: moving to another host");
                    client.close(now);
                    stopping = true;
                }
            }
            packet = task.outgoing.recv(), if client.is_open() => {
                let Some((dest, packet)) = packet else { return Ok(Ended::Stop) };
                let now = clock::now();
                carrier.handle_outgoing(now, &packet);
                send_counted(&task.shared, &mut client, &dest, &packet, &mut out);
                // Batch what else is queued, up to 256 packets per write.
                for _ in 0..255 {
                    let Ok((dest, packet)) = task.outgoing.try_recv() else { break };
                    carrier.handle_outgoing(now, &packet);
                    send_counted(&task.shared, &mut client, &dest, &packet, &mut out);
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                client.handle_timeout(clock::now());
                while let Some(event) = client.poll_event() {
                    handle_event(&task.shared, event, &mut ready, &mut drain);
                }
            }
            _ = task.stop.changed(), if !stopping => {
                client.close(clock::now());
                stopping = true;
            }
            _ = check.tick(), if !stopping => {
                if carrier.is_stalled(clock::now()) {
                    warn!(relay = %url, "WireGuard handshakes no longer pass through this relay host: moving to another");
                    client.close(clock::now());
                    stopping = true;
                    stalled = true;
                } else if wanted(task) != RouteKind::Ws {
                    info!(relay = %url, "moving the relay session to QUIC");
                    client.close(clock::now());
                    stopping = true;
                    switching = true;
                }
            }
        }
    }
    if *task.stop.borrow() {
        return Ok(Ended::Stop);
    }
    if switching {
        return Ok(Ended::Switch);
    }
    if stalled {
        return Ok(Ended::Failed { ready: false });
    }
    if drain {
        return Ok(Ended::Drain);
    }
    Ok(Ended::Failed { ready })
}

pub(crate) fn send_counted(
    shared: &Shared,
    client: &mut RelayClient<StdRng>,
    dest: &NodeId,
    packet: &[u8],
    out: &mut Vec<u8>,
) {
    match client.encode_send(dest, packet, out) {
        Ok(()) => {
            if let Some(peer) = shared.peer(dest) {
                peer.tx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                peer.tx_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(err) => {
            shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
            debug!(%err, "packet not sent");
        }
    }
}

pub(crate) async fn deliver(
    shared: &Shared,
    index: &BTreeMap<NodeId, usize>,
    src: &NodeId,
    packet: &[u8],
    wg_endpoint: SocketAddr,
    signals: Option<&mpsc::Sender<(NodeId, Vec<u8>)>>,
) {
    if crate::signal::is_signal(packet) {
        if let Some(signals) = signals
            && index.contains_key(src)
        {
            let _ = signals.try_send((*src, packet.to_vec()));
        }
        return;
    }
    let Some(peer) = index.get(src).and_then(|&i| shared.peers.get(i)) else {
        shared.drop_unknown_peer.fetch_add(1, Ordering::Relaxed);
        debug!(%src, "packet from a node that is not a --peer dropped");
        return;
    };
    // A fragment (the peer's QUIC route splits packets too large for a datagram): the
    // packet goes on once whole; drops are counted by the peer's reassembler.
    let whole;
    let packet = if crate::fragment::is_fragment(packet) {
        let outcome = match peer.reassembly.lock() {
            Ok(mut reassembler) => reassembler.handle_fragment(clock::now(), packet),
            Err(_) => return,
        };
        match outcome {
            Reassembled::Complete(done) => {
                whole = done;
                whole.as_slice()
            }
            Reassembled::Pending => return,
            Reassembled::Dropped(reason) => {
                debug!(peer = %peer.node, reason = reason.as_str(), "fragment dropped");
                return;
            }
        }
    } else {
        packet
    };
    peer.rx_bytes
        .fetch_add(packet.len() as u64, Ordering::Relaxed);
    peer.rx_packets.fetch_add(1, Ordering::Relaxed);
    let via = if shared.relay_quic.load(Ordering::Relaxed) {
        RouteKind::Quic
    } else {
        RouteKind::Ws
    };
    crate::agent::note_incoming(shared, peer, via, packet);
    peer.last_rx_ms.store(clock::unix_ms(), Ordering::Relaxed);
    peer.gone.store(false, Ordering::Relaxed);
    if let Err(err) = peer.socket.send_to(packet, wg_endpoint).await {
        debug!(peer = %peer.node, %err, "handing a packet to WireGuard failed");
    }
}

pub(crate) fn handle_event(shared: &Shared, event: Event, ready: &mut bool, drain: &mut bool) {
    match event {
        Event::Ready(node) => {
            *ready = true;
            shared.relay_open.store(true, Ordering::Relaxed);
            shared.relay_sessions.fetch_add(1, Ordering::Relaxed);
            info!(%node, "relay session ready");
            // What was signalled while the session was down is lost: again, at once.
            for peer in &shared.peers {
                peer.reachable.store(true, Ordering::Relaxed);
            }
            shared.direct_wakeup.notify_one();
        }
        Event::PeerGone(node) => {
            if let Some(peer) = shared.peer(&node)
                && !peer.gone.swap(true, Ordering::Relaxed)
            {
                warn!(peer = %node, "the relay says this peer is not connected (not registered or not running?)");
            }
        }
        Event::PeerPresent(node) => {
            if let Some(peer) = shared.peer(&node) {
                peer.gone.store(false, Ordering::Relaxed);
                peer.reachable.store(true, Ordering::Relaxed);
                shared.direct_wakeup.notify_one();
            }
        }
        Event::ReconnectHint => *drain = true,
        Event::Rtt(rtt) => {
            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
            shared.relay_rtt_us.store(us, Ordering::Relaxed);
        }
        Event::Closed(reason) => {
            shared.relay_open.store(false, Ordering::Relaxed);
            info!(reason = reason.as_str(), detail = ?reason, "relay session closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let url = RelayUrl::parse("ws://127.0.0.1:8081/relay").unwrap();
        assert_eq!(
            (
                url.tls,
                url.host.as_str(),
                url.port,
                url.path.as_str(),
                url.authority.as_str()
            ),
            (false, "127.0.0.1", 8081, "/relay", "127.0.0.1:8081")
        );
        let url = RelayUrl::parse("wss://relay.example").unwrap();
        assert_eq!((url.tls, url.port, url.path.as_str()), (true, 443, "/"));
        let url = RelayUrl::parse("wss://[::1]:9/r").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9));
        for bad in [
            "http://x/relay",
            "ws:///relay",
            "ws://h:port/x",
            "wss://[::1/x",
        ] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
