//! Graceful shutdown of `bosonserver run`: on SIGTERM (or SIGINT) the process stops taking new
//! work and lets the work it has run out before it exits.
//!
//! 1. `/health/ready` answers 503 (`draining`), so load balancers send new clients elsewhere;
//!    the REST API keeps serving. The host's record in the relay host registry says it is
//!    draining, published at once, so routing and ICE on every host leave it out; it stays
//!    in the registry, so the mesh keeps relaying to the nodes it still holds.
//! 2. Every worker's TURN server answers new Allocates with 300 (Try Alternate) naming the
//!    STUN/TURN listener of the least utilized other live host that is not draining (looked
//!    up once, when the drain starts; its name resolved if it is not an address), or with 403
//!    when there is none or the client's address family differs; existing allocations keep
//!    relaying, and their clients may refresh them.
//! 3. The node relay sends RECONNECT_HINT to every session, and to every session opened from
//!    now on; sessions keep relaying until their clients leave.
//! 4. Once no allocation and no relay session is left, or `--drain-timeout` has passed, or a
//!    second signal arrives, the process shuts down and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use boson_control::AppState;
use boson_control::domain::hosts::HostRecord;
use boson_dataplane::DrainHandle;
use boson_shared::HostId;

/// Graceful shutdown settings.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DrainArgs {
    /// On SIGTERM, how long TURN allocations and relay sessions may keep running while no new
    /// ones are taken; the process exits when they are all gone or this has passed. A second
    /// signal ends the wait at once.
    #[arg(long, env = "BOSON_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Duration,
}

/// How long the drain waits for the other hosts' records and a name lookup before it starts
/// without an alternate TURN server.
const ALTERNATE_LOOKUP: Duration = Duration::from_secs(2);

/// The STUN/TURN listener of another live host for 300 (Try Alternate), resolved.
async fn alternate_server(state: &AppState) -> Option<SocketAddr> {
    let hosts = match state.live_hosts().await {
        Ok(hosts) => hosts,
        Err(error) => {
            tracing::warn!("draining: no alternate TURN server: {error}");
            return None;
        }
    };
    let (host, port) = choose_alternate(&hosts, state.host_id())?;
    let resolved = tokio::net::lookup_host((host.as_str(), port)).await;
    match resolved.map(|mut addrs| addrs.next()) {
        Ok(Some(addr)) => {
            tracing::info!(%addr, "draining: new TURN allocations go to {host}");
            Some(addr)
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!("draining: no alternate TURN server: {host}: {error}");
            None
        }
    }
}

/// The least utilized live host other than `own` that is not draining (ties: the lowest id),
/// as its TURN host and port.
fn choose_alternate(hosts: &[HostRecord], own: HostId) -> Option<(String, u16)> {
    hosts
        .iter()
        .filter(|record| record.host_id != own && !record.draining)
        .min_by(|a, b| {
            a.utilization()
                .total_cmp(&b.utilization())
                .then(a.host_id.cmp(&b.host_id))
        })
        .map(|record| {
            (
                record.addresses.turn_host.clone(),
                record.addresses.turn_port,
            )
        })
}

/// How often the workers' counters are read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Drains `dataplane` and marks `state` not ready; returns when the drain is over (see the
/// module doc). `second_signal` completes on the next SIGTERM or SIGINT.
pub(crate) async fn run(
    state: &AppState,
    dataplane: &DrainHandle,
    timeout: Duration,
    second_signal: impl Future<Output = ()>,
) {
    // The dataplane first, so that by the time readiness fails every worker has been told.
    let alternate = tokio::time::timeout(ALTERNATE_LOOKUP, alternate_server(state))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!("draining: no alternate TURN server: the host lookup timed out");
            None
        });
    dataplane.start_with_alternate(alternate);
    state.start_draining();
    if let Err(error) = state.heartbeat_host().await {
        tracing::warn!("draining: not published to the other hosts yet: {error}");
    }
    let at_start = dataplane.remaining();
    tracing::info!(
        allocations = at_start.allocations,
        sessions = at_start.sessions,
        timeout = %humantime::format_duration(timeout),
        "draining: no new allocations or relay sessions; signal again to stop at once"
    );
    let run_out = async {
        loop {
            if dataplane.remaining().is_empty() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        () = run_out => tracing::info!("drained: no allocation or relay session left"),
        () = tokio::time::sleep(timeout) => {
            let left = dataplane.remaining();
            tracing::info!(
                allocations = left.allocations,
                sessions = left.sessions,
                "drain timeout: stopping with these still open"
            );
        }
        () = second_signal => tracing::info!("second signal: stopping now"),
    }
}

#[cfg(test)]
mod tests {
    use boson_control::domain::hosts::{HostAddresses, HostCapacity, HostLoad};

    use super::*;

    fn record(id: u8, turn_host: &str, allocations: u32, draining: bool) -> HostRecord {
        HostRecord {
            host_id: HostId::from_bytes([id; 16]),
            region: String::new(),
            coordinates: None,
            addresses: HostAddresses {
                turn_host: turn_host.to_owned(),
                turn_port: 3478,
                turn_tcp_port: None,
                turn_tls_port: None,
                relay_url: None,
                quic_addr: None,
            },
            capacity: HostCapacity {
                max_connections: 100,
                bandwidth: 1000.0,
            },
            load: HostLoad {
                allocations,
                sessions: 0,
                bandwidth: 0.0,
            },
            draining,
            started_at: 0,
            last_heartbeat: 0,
        }
    }

    #[test]
    fn the_alternate_is_the_least_utilized_other_host_not_draining() {
        let own = HostId::from_bytes([1; 16]);
        let hosts = [
            record(1, "192.0.2.1", 0, true),
            record(2, "192.0.2.2", 50, false),
            record(3, "192.0.2.3", 90, true),
            record(4, "turn4.example", 10, false),
            record(5, "192.0.2.5", 10, false),
        ];
        assert_eq!(
            choose_alternate(&hosts, own),
            Some(("turn4.example".to_owned(), 3478))
        );
        // Only itself, or only draining others: none.
        assert_eq!(choose_alternate(&hosts[..1], own), None);
        assert_eq!(
            choose_alternate(&[hosts[0].clone(), hosts[2].clone()], own),
            None
        );
    }
}
