//! The QUIC relay's I/O shell: a quinn connection to the host's `quicAddr` (ALPN
//! `boson-relay/1`, the certificate checked against the system's roots and `--ca-file`),
//! AUTH on the one bidirectional stream, then SEND and RECV in DATAGRAM frames. The framing
//! is [`crate::quic`]'s, packets too large for one datagram go in [`crate::fragment`]s; reconnection and host choice are `relay_conn`'s.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use boson_dataplane_proto::quic::wire;
use boson_dataplane_proto::ws::relay::{MessageType, PREFIX_LEN};
use boson_shared::NodeId;
use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::agent::Shared;
use crate::clock;
use crate::config::RouteKind;
use crate::failover::CarrierWatch;
use crate::fragment::Fragmenter;
use crate::quic::{ControlStream, parse_recv, send_datagram};
use crate::relay_conn::{Ended, QuicSettings, RelayTask, deliver, handle_event, wanted};

/// QUIC keepalive: a PING after this much silence. Like the WebSocket session's pings, it
/// keeps NAT bindings and lets a dead relay be noticed in time.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// A connection that heard nothing for this long is dead: within
/// [`crate::failover::DEAD_HOST_DETECTION`], like the WebSocket session.
const IDLE_TIMEOUT: Duration = crate::failover::DEAD_HOST_DETECTION;

/// The largest SEND datagram sent whatever the path: a packet whose datagram would be
/// larger goes in fragments ([`crate::fragment`]) of at most this size. A QUIC path carries
/// at least 1200-byte UDP packets, which hold a 1 162-byte datagram at READY (1 145 bytes of
/// packet after the 17-byte SEND prefix); larger datagrams fit only after path MTU
/// discovery, on the sender's connection and on the receiver's, which the sender cannot see.
const SAFE_DATAGRAM: usize = 1150;

/// Connects to the QUIC relay at `addr` (`HOST:PORT`, as `quicAddr` gives it) and runs the
/// session until it ends.
pub(crate) async fn connect_and_run(
    task: &mut RelayTask,
    addr: &str,
    token: &str,
    index: &BTreeMap<NodeId, usize>,
) -> anyhow::Result<Ended> {
    let Some(QuicSettings { tls, server_name }) = &task.quic else {
        bail!("no QUIC settings");
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("QUIC relay address {addr:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .with_context(|| format!("QUIC relay address {addr:?}"))?;
    let remote = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let name = server_name.clone().unwrap_or_else(|| host.to_owned());

    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.clone())
        .context("QUIC TLS configuration")?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEPALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).context("idle timeout")?,
    ));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(local).context("binding the QUIC socket")?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(remote, &name)
        .with_context(|| format!("connecting to the QUIC relay {addr}"))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| anyhow!("QUIC handshake with {addr} timed out"))?
        .with_context(|| format!("QUIC handshake with {addr} (TLS name {name:?})"))?;
    let result = run_session(task, &conn, token, index).await;
    conn.close(quinn::VarInt::from_u32(1000), b"closing");
    endpoint.wait_idle().await;
    result
}

async fn run_session(
    task: &mut RelayTask,
    conn: &quinn::Connection,
    token: &str,
    index: &BTreeMap<NodeId, usize>,
) -> anyhow::Result<Ended> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
    let auth = ControlStream::auth(token).map_err(|e| anyhow!("AUTH: {e}"))?;
    send.write_all(&auth).await.context("writing AUTH")?;
    let mut control = ControlStream::default();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut ready = false;
    let mut drain = false;
    let mut fragmenter = Fragmenter::new(rand::random());
    let mut check = tokio::time::interval(crate::relay_conn::SWITCH_CHECK);
    let mut carrier = CarrierWatch::default();
    loop {
        tokio::select! {
            read = recv.read(&mut buf) => {
                let n = read
                    .context("reading the control stream")?
                    .ok_or_else(|| anyhow!("the relay finished the control stream"))?;
                control
                    .handle(&buf[..n], &mut events)
                    .map_err(|e| anyhow!("QUIC relay: {e}"))?;
                for event in events.drain(..) {
                    if matches!(event, crate::ws::Event::PeerGone(_)) {
                        carrier.handle_peer_gone();
                    }
                    handle_event(&task.shared, event, &mut ready, &mut drain);
                }
                if let Some(rtt) = (ready).then(|| conn.rtt()) {
                    let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
                    task.shared.relay_rtt_us.store(us, Ordering::Relaxed);
                }
                if drain {
                    info!("QUIC relay host draining: moving to another host");
                    return Ok(Ended::Drain);
                }
            }
            datagram = conn.read_datagram() => {
                let datagram = datagram.context("QUIC relay connection")?;
                match parse_recv(&datagram) {
                    Some((src, packet)) if ready => {
                        carrier.handle_incoming();
                        deliver(&task.shared, index, &src, packet, task.wg_endpoint, task.signals.as_ref()).await;
                    }
                    Some(_) | None => debug!("datagram ignored"),
                }
            }
            packet = task.outgoing.recv(), if ready => {
                let Some((dest, packet)) = packet else { return Ok(Ended::Stop) };
                let now = clock::now();
                carrier.handle_outgoing(now, &packet);
                send_one(&task.shared, conn, &mut fragmenter, &dest, &packet);
                for _ in 0..255 {
                    let Ok((dest, packet)) = task.outgoing.try_recv() else { break };
                    carrier.handle_outgoing(now, &packet);
                    send_one(&task.shared, conn, &mut fragmenter, &dest, &packet);
                }
            }
            _ = task.stop.changed() => return Ok(Ended::Stop),
            _ = check.tick() => {
                if carrier.is_stalled(clock::now()) {
                    warn!("WireGuard handshakes no longer pass through this relay host: moving to another");
                    return Ok(Ended::Failed { ready: false });
                }
                if wanted(task) != RouteKind::Quic {
                    info!("moving the relay session to WebSocket");
                    return Ok(Ended::Switch);
                }
            }
        }
        if ready {
            let us = u64::try_from(conn.rtt().as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            task.shared.relay_rtt_us.store(us, Ordering::Relaxed);
        }
    }
}

fn send_one(
    shared: &Shared,
    conn: &quinn::Connection,
    fragmenter: &mut Fragmenter,
    dest: &NodeId,
    packet: &[u8],
) {
    let limit = conn
        .max_datagram_size()
        .unwrap_or(0)
        .min(SAFE_DATAGRAM)
        .saturating_sub(PREFIX_LEN);
    let sent = if packet.len() <= limit {
        conn.send_datagram(Bytes::from(send_datagram(dest, packet)))
            .map_err(|e| e.to_string())
    } else {
        // Too large for one datagram: fragments, reassembled by the peer's agent.
        match fragmenter.split(packet, limit) {
            Ok(fragments) => fragments.into_iter().try_for_each(|fragment| {
                let mut payload = Vec::with_capacity(PREFIX_LEN + fragment.len());
                wire::encode_datagram(MessageType::Send, dest, &fragment.header, &mut payload);
                payload.extend_from_slice(fragment.bytes);
                conn.send_datagram(Bytes::from(payload))
                    .map_err(|e| e.to_string())
            }),
            Err(err) => Err(err.to_string()),
        }
    };
    match sent {
        Ok(()) => {
            if let Some(peer) = shared.peer(dest) {
                peer.tx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                peer.tx_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(err) => {
            // The connection is going (or a packet beyond what 64 fragments carry): counted,
            // WireGuard retransmits.
            shared.drop_no_route.fetch_add(1, Ordering::Relaxed);
            debug!(%err, len = packet.len(), "QUIC datagram not sent");
        }
    }
}
