//! Graceful shutdown of `bosonserver run`: on SIGTERM (or SIGINT) the process stops taking new
//! work and lets the work it has run out before it exits.
//!
//! 1. `/health/ready` answers 503 (`draining`), so load balancers send new clients elsewhere;
//!    the REST API keeps serving. The host's record in the relay host registry says it is
//!    draining, published at once, so routing and ICE on every host leave it out; it stays
//!    in the registry, so the mesh keeps relaying to the nodes it still holds.
//! 2. Every worker's TURN server answers new Allocates with 403; existing allocations keep
//!    relaying, and their clients may refresh them.
//! 3. The node relay sends RECONNECT_HINT to every session, and to every session opened from
//!    now on; sessions keep relaying until their clients leave.
//! 4. Once no allocation and no relay session is left, or `--drain-timeout` has passed, or a
//!    second signal arrives, the process shuts down and exits 0.

use std::time::Duration;

use boson_control::AppState;
use boson_dataplane::DrainHandle;

/// Graceful shutdown settings.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DrainArgs {
    /// On SIGTERM, how long TURN allocations and relay sessions may keep running while no new
    /// ones are taken; the process exits when they are all gone or this has passed. A second
    /// signal ends the wait at once.
    #[arg(long, env = "BOSON_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Duration,
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
    dataplane.start();
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
