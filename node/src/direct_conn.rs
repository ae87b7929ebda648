//! The direct route's I/O shell: one UDP socket for every peer's direct path (its mapped
//! address learnt with STUN from this same socket at start), one [`DirectPath`] per peer,
//! the signalling through the relay session, and WireGuard's packets to and from the path
//! each peer's punching found. The decisions are [`crate::direct`]'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boson_shared::NodeId;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::agent::Shared;
use crate::clock;
use crate::config::RouteKind;
use crate::direct::{self, DirectEvent, DirectPath, ProbeHeader};
use crate::signal::Signal;

/// The direct route's drop counters (the metrics' `drops` by reason).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Probes that were malformed, unauthenticated or unsolicited.
    pub(crate) bad_probe: AtomicU64,
    /// Datagrams on the direct socket from an address that is no peer's path.
    pub(crate) unknown_source: AtomicU64,
}

/// Everything the direct task needs.
pub(crate) struct DirectTask {
    pub(crate) shared: Arc<Shared>,
    /// The direct socket (NAT discovery already ran on it).
    pub(crate) socket: UdpSocket,
    /// This agent's candidates: its mapped address, then its LAN address.
    pub(crate) candidates: Vec<SocketAddr>,
    /// WireGuard's packets for peers whose route is direct.
    pub(crate) packets: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// The peers' candidates, from the relay session.
    pub(crate) signals: mpsc::Receiver<(NodeId, Signal)>,
    /// Signalling to the peers, into the relay session.
    pub(crate) relay: mpsc::Sender<(NodeId, Vec<u8>)>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) wg_endpoint: SocketAddr,
}

/// Hands each signalling message from the relay session to the route it is for: TURN
/// addresses to the TURN task (as bytes, as it parses them), candidates to the direct task.
pub(crate) async fn dispatch_signals(
    mut from_relay: mpsc::Receiver<(NodeId, Vec<u8>)>,
    turn: Option<mpsc::Sender<(NodeId, Vec<u8>)>>,
    direct: Option<mpsc::Sender<(NodeId, Signal)>>,
) {
    while let Some((node, bytes)) = from_relay.recv().await {
        match Signal::parse(&bytes) {
            Some(Signal::TurnAddr(_)) => {
                if let Some(turn) = &turn {
                    let _ = turn.try_send((node, bytes));
                }
            }
            Some(signal @ Signal::Candidates { .. }) => {
                if let Some(direct) = &direct {
                    let _ = direct.try_send((node, signal));
                }
            }
            None => debug!(%node, "signalling message ignored"),
        }
    }
}

/// The direct loop: runs until stopped.
pub(crate) async fn run(mut task: DirectTask) {
    let shared = task.shared.clone();
    let now = clock::now();
    let mut paths: Vec<DirectPath<StdRng>> = shared
        .peers
        .iter()
        .map(|peer| {
            DirectPath::new(
                shared.node,
                peer.node,
                task.candidates.clone(),
                now,
                StdRng::from_os_rng(),
            )
        })
        .collect();
    let index: BTreeMap<NodeId, usize> = crate::agent::peer_index(&shared);
    // The up paths' addresses, for the packets that arrive.
    let mut by_addr: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    info!(candidates = ?task.candidates, "direct route: punching from this socket's candidates");
    loop {
        for (i, path) in paths.iter_mut().enumerate() {
            while let Some(transmit) = path.poll_transmit() {
                if let Err(err) = task.socket.send_to(&transmit.bytes, transmit.dst).await {
                    debug!(dst = %transmit.dst, %err, "direct probe not sent");
                }
            }
            while let Some(signal) = path.poll_signal() {
                let _ = task.relay.try_send((path.peer(), signal.encode()));
            }
            while let Some(event) = path.poll_event() {
                on_event(&shared, i, path, event, &mut by_addr);
            }
        }
        let now = clock::now();
        let deadline = paths
            .iter()
            .filter_map(DirectPath::poll_timeout)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            received = task.socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(got) => got,
                    Err(err) => {
                        debug!(%err, "direct socket receive error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let datagram = &buf[..len];
                if direct::is_probe(datagram) {
                    let found = ProbeHeader::parse(datagram)
                        .and_then(|h| index.get(&h.sender).copied());
                    let result = match found {
                        Some(i) => paths[i].handle_probe(clock::now(), from, datagram),
                        None => Err(direct::ProbeDrop::Malformed),
                    };
                    if let Err(reason) = result {
                        shared.direct.bad_probe.fetch_add(1, Ordering::Relaxed);
                        debug!(%from, reason = reason.as_str(), "direct probe dropped");
                    }
                    continue;
                }
                let Some(&i) = by_addr.get(&from) else {
                    // Late STUN answers from NAT discovery land here too.
                    shared.direct.unknown_source.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let peer = &shared.peers[i];
                peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                peer.rx_packets.fetch_add(1, Ordering::Relaxed);
                crate::agent::note_incoming(&shared, peer, RouteKind::Direct, datagram);
                peer.last_rx_ms.store(clock::unix_ms(), Ordering::Relaxed);
                if let Err(err) = peer.socket.send_to(datagram, task.wg_endpoint).await {
                    debug!(peer = %peer.node, %err, "handing a packet to WireGuard failed");
                }
            }
            packet = task.packets.recv() => {
                let Some((node, packet)) = packet else { return };
                let Some(&i) = index.get(&node) else { continue };
                let Some(addr) = paths[i].path() else {
                    shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                match task.socket.send_to(&packet, addr).await {
                    Ok(_) => {
                        let peer = &shared.peers[i];
                        peer.tx_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                        peer.tx_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
                        debug!(%addr, %err, "direct packet not sent");
                    }
                }
            }
            signal = task.signals.recv() => {
                let Some((node, signal)) = signal else { return };
                if let (Some(&i), Signal::Candidates { secret, addrs }) = (index.get(&node), &signal) {
                    paths[i].handle_signal(clock::now(), *secret, addrs);
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                let now = clock::now();
                for path in &mut paths {
                    if path.poll_timeout().is_some_and(|at| at <= now) {
                        path.handle_timeout(now);
                    }
                }
            }
            () = shared.direct_wakeup.notified() => {
                let now = clock::now();
                for (i, path) in paths.iter_mut().enumerate() {
                    if shared.peers[i].reachable.swap(false, Ordering::Relaxed) {
                        path.handle_peer_reachable(now);
                    }
                }
            }
            _ = task.stop.changed() => return,
        }
    }
}

/// A path came up, went down or could not be found: the shared state, the route selector
/// and the log hear of it.
fn on_event(
    shared: &Shared,
    i: usize,
    path: &DirectPath<StdRng>,
    event: DirectEvent,
    by_addr: &mut BTreeMap<SocketAddr, usize>,
) {
    let peer = &shared.peers[i];
    by_addr.retain(|_, &mut index| index != i);
    let up = match event {
        DirectEvent::Up(addr) => {
            by_addr.insert(addr, i);
            info!(peer = %peer.node, %addr, "direct path up");
            true
        }
        DirectEvent::Down => {
            info!(peer = %peer.node, "direct path stopped answering: dropped, punching again");
            false
        }
        DirectEvent::Failed => {
            info!(
                peer = %peer.node,
                retry_secs = direct::RETRY_INTERVAL.as_secs(),
                state = path.state_label(),
                "direct path: punching found no way through"
            );
            false
        }
    };
    peer.direct_up.store(up, Ordering::Relaxed);
    if up {
        peer.direct_paths.fetch_add(1, Ordering::Relaxed);
    }
    if shared.auto
        && let Ok(mut selector) = peer.selector.lock()
    {
        let before = selector.current();
        selector.set_direct(up);
        if selector.current() != before {
            info!(peer = %peer.node, from = %before, to = %selector.current(), "route switched");
        }
    }
}
