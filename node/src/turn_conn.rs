//! The TURN route's I/O shell: fetches TURN credentials (`GET /api/v1/turn/ice`), allocates
//! from one UDP socket with a [`TurnClient`], tells every peer its relayed address over the
//! relay session ([`crate::signal`]), binds a channel to each peer's relayed address as it
//! learns it, and carries WireGuard's packets as ChannelData. Starts over with a new
//! allocation (after a backoff) when the allocation fails.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use boson_shared::NodeId;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::agent::{Session, Shared};
use crate::backoff::Backoff;
use crate::clock;
use crate::control::Control;
use crate::failover::Failover;
use crate::signal::Signal;
use crate::turn::{TurnClient, TurnEvent};

/// How long one control plane may take to give TURN credentials: a silent one (perhaps on
/// the host whose TURN server just died) must not hold up the new allocation.
const ICE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How often each side repeats its relayed address to its peers: the signalling rides an
/// unreliable path (a relay session may be down), so it is repeated rather than acknowledged.
const ANNOUNCE: Duration = Duration::from_secs(2);

/// Everything the TURN task needs.
pub(crate) struct TurnTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) controls: Vec<Control>,
    pub(crate) session: watch::Receiver<Session>,
    /// WireGuard's packets for the peers.
    pub(crate) packets: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// Signalling messages from the peers (through the relay session).
    pub(crate) signals: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// Signalling messages to the peers (into the relay session).
    pub(crate) relay: mpsc::Sender<(NodeId, Vec<u8>)>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) wg_endpoint: SocketAddr,
}

/// The TURN loop: runs until stopped.
pub(crate) async fn run(mut task: TurnTask) {
    let mut rng = StdRng::from_os_rng();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    // Peers' relayed addresses, kept across allocations.
    let mut known: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
    let first = task.session.borrow().server;
    // Which control plane to ask for TURN credentials first (a silent one last), and the
    // TURN server whose allocation last failed (avoided while another is offered).
    let mut failover = Failover::new(task.controls.len(), first);
    let mut failed: Option<String> = None;
    loop {
        let mut allocated = false;
        match allocate_and_run(
            &mut task,
            &mut known,
            &mut failover,
            &mut failed,
            &mut allocated,
        )
        .await
        {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => warn!("TURN route: {err:#}"),
        }
        for peer in &task.shared.peers {
            peer.route_ready.store(false, Ordering::Relaxed);
        }
        let delay = retry_delay(&mut backoff, allocated, &mut rng);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = task.stop.changed() => return,
        }
    }
}

/// The wait before the next allocation, after one that was granted (`allocated`) or not. A
/// granted allocation is a success: the backoff starts over, so an allocation lost after a
/// long good run is replaced after the first step, not after the longest wait that earlier
/// failures had built up.
fn retry_delay(
    backoff: &mut Backoff,
    allocated: bool,
    rng: &mut impl rand_core::RngCore,
) -> Duration {
    if allocated {
        backoff.reset();
    }
    backoff.next_delay(rng)
}

/// The first `turn:` URL over UDP, with its credential.
fn turn_server(ice: &crate::control::IceResponse) -> Option<(String, String, String)> {
    ice.ice_servers.iter().find_map(|server| {
        let url = server.urls.iter().find(|url| {
            url.starts_with("turn:")
                && (!url.contains("transport=") || url.contains("transport=udp"))
        })?;
        let hostport = url
            .trim_start_matches("turn:")
            .split('?')
            .next()?
            .to_owned();
        Some((
            hostport,
            server.username.clone()?,
            server.credential.clone()?,
        ))
    })
}

/// One allocation's life; `Ok(true)` when stopping. Sets `allocated` once the server
/// granted the allocation.
async fn allocate_and_run(
    task: &mut TurnTask,
    known: &mut BTreeMap<NodeId, SocketAddr>,
    failover: &mut Failover,
    failed: &mut Option<String>,
    allocated: &mut bool,
) -> anyhow::Result<bool> {
    let session = task.session.borrow().clone();
    // Every control plane shares the token's key: the first that answers in time and
    // offers a TURN server other than the one that just failed, else any that answered.
    let mut chosen = None;
    let mut fallback = None;
    let mut last_err = None;
    for at in failover.control_order().collect::<Vec<_>>() {
        let control = &task.controls[at];
        match tokio::time::timeout(ICE_TIMEOUT, control.ice(&session.token)).await {
            Ok(Ok(answer)) => {
                failover.handle_control(at, true);
                match turn_server(&answer) {
                    Some(server) if failed.as_deref() != Some(server.0.as_str()) => {
                        chosen = Some(server);
                        break;
                    }
                    Some(server) => fallback = fallback.or(Some(server)),
                    None => {
                        last_err =
                            Some(anyhow!("{} offers no TURN server over UDP", control.base()))
                    }
                }
            }
            Ok(Err(err)) => {
                failover.handle_control(at, false);
                last_err = Some(err.into());
            }
            Err(_) => {
                failover.handle_control(at, false);
                last_err = Some(anyhow!(
                    "{} gave no TURN credentials in {ICE_TIMEOUT:?}",
                    control.base()
                ));
            }
        }
    }
    let (hostport, username, password) = match (chosen.or(fallback), last_err) {
        (Some(server), _) => server,
        (None, Some(err)) => return Err(err),
        (None, None) => return Err(anyhow!("no control plane given")),
    };
    let server = tokio::net::lookup_host(hostport.as_str())
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{hostport} has no IPv4 address"))?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .context("binding the TURN socket")?;
    let mut client = TurnClient::new(&username, &password, clock::now(), StdRng::from_os_rng());
    let now = clock::now();
    for addr in known.values() {
        client.add_peer(now, *addr);
    }
    let mut by_relayed: BTreeMap<SocketAddr, NodeId> =
        known.iter().map(|(node, addr)| (*addr, *node)).collect();
    let mut announce_at = clock::now();
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(2048);
    loop {
        while let Some(datagram) = client.poll_transmit() {
            let _ = socket.send_to(&datagram, server).await;
        }
        while let Some(event) = client.poll_event() {
            match event {
                TurnEvent::Allocated { relayed, mapped } => {
                    info!(%relayed, %mapped, server = %server, "TURN allocation ready");
                    *allocated = true;
                    announce_at = clock::now();
                }
                TurnEvent::ChannelBound(addr) => {
                    if let Some(peer) = by_relayed.get(&addr).and_then(|n| task.shared.peer(n)) {
                        peer.route_ready.store(true, Ordering::Relaxed);
                        info!(peer = %peer.node, relayed = %addr, "TURN channel bound");
                    }
                }
                TurnEvent::Failed(err) => {
                    // Allocate elsewhere next time, if another TURN server is offered.
                    *failed = Some(hostport);
                    return Err(anyhow!("TURN allocation at {server} failed: {err}"));
                }
            }
        }
        let now = clock::now();
        if now >= announce_at {
            if let Some(relayed) = client.relayed() {
                let signal = Signal::TurnAddr(relayed).encode();
                for peer in &task.shared.peers {
                    // A peer carried on a direct path needs no TURN address now, and the
                    // relay then carries nothing of the pair (the peer learnt it before,
                    // or learns it when the path goes and the route falls back here).
                    if task.shared.route_of(peer) == crate::config::RouteKind::Direct
                        && task.shared.can_send(peer)
                    {
                        continue;
                    }
                    let _ = task.relay.try_send((peer.node, signal.clone()));
                }
            }
            announce_at = now + ANNOUNCE;
        }
        let deadline = client
            .poll_timeout()
            .map_or(announce_at, |t| t.min(announce_at));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                if from != server {
                    continue;
                }
                if let Some((relayed, range)) = client.handle_input(clock::now(), &buf[..len]) {
                    let Some(peer) = by_relayed.get(&relayed).and_then(|n| task.shared.peer(n)) else {
                        task.shared.drop_unknown_peer.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    crate::agent::note_incoming(
                        &task.shared,
                        peer,
                        crate::config::RouteKind::Turn,
                        &buf[range.clone()],
                    );
                    peer.rx_bytes.fetch_add(range.len() as u64, Ordering::Relaxed);
                    peer.rx_packets.fetch_add(1, Ordering::Relaxed);
                    peer.last_rx_ms.store(clock::unix_ms(), Ordering::Relaxed);
                    let _ = peer.socket.send_to(&buf[range], task.wg_endpoint).await;
                }
            }
            packet = task.packets.recv() => {
                let Some((node, packet)) = packet else { return Ok(true) };
                let Some(addr) = known.get(&node) else {
                    task.shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                out.clear();
                match client.encode_to_peer(*addr, &packet, &mut out) {
                    Ok(()) => {
                        let _ = socket.send_to(&out, server).await;
                        if let Some(peer) = task.shared.peer(&node) {
                            peer.tx_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                            peer.tx_packets.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(err) => {
                        task.shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
                        debug!(%err, "TURN packet not sent");
                    }
                }
            }
            signal = task.signals.recv() => {
                let Some((node, bytes)) = signal else { return Ok(true) };
                match Signal::parse(&bytes) {
                    Some(Signal::TurnAddr(addr)) if task.shared.peer(&node).is_some() => {
                        if known.get(&node) != Some(&addr) {
                            info!(peer = %node, relayed = %addr, "peer's TURN address learnt");
                            if let Some(old) = known.insert(node, addr) {
                                by_relayed.remove(&old);
                            }
                            by_relayed.insert(addr, node);
                            client.add_peer(clock::now(), addr);
                        }
                    }
                    Some(_) | None => debug!(%node, "signalling message ignored"),
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                client.handle_timeout(clock::now());
            }
            _ = task.stop.changed() => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn a_granted_allocation_starts_the_backoff_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        // Failures build the wait up to the maximum...
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            last = retry_delay(&mut backoff, false, &mut rng);
        }
        assert!(last >= Duration::from_secs(5), "{last:?}");
        // ...then an allocation that was granted (and lost after a good run) is replaced
        // after the first step, and failures grow from there again.
        let after_success = retry_delay(&mut backoff, true, &mut rng);
        assert!(
            after_success <= Duration::from_millis(500),
            "{after_success:?}"
        );
        let next = retry_delay(&mut backoff, false, &mut rng);
        assert!(next <= Duration::from_secs(1), "{next:?}");
    }
}
