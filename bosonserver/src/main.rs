//! `bosonserver`: parses the configuration once, sets up logging, and runs the planes.

mod dataplane;
mod drain;
mod healthcheck;
mod load;
mod mesh;
mod planes;
mod relay;
mod secrets;
mod split;

use std::sync::Arc;

use anyhow::Context as _;
use boson_control::AppState;
use boson_control::clock::SystemClock;
use boson_control::config::{Config, ControlArgs};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::dataplane::DataplaneArgs;
use crate::relay::RelayArgs;

/// BosonServer: registry, STUN/TURN and relay for a WireGuard-style VPN.
///
/// Settings come from flags, then environment variables, then a `.env` file in the working
/// directory. With none at all it runs on embedded defaults: SQLite under `./data`, limits kept
/// in process, and generated development secrets.
#[derive(Debug, Parser)]
#[command(name = "bosonserver", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Settings of `run` when no subcommand is given.
    #[command(flatten)]
    run: RunArgs,

    /// Log format.
    #[arg(long, global = true, env = "BOSON_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every plane in one process (the default): the REST API and the STUN/TURN dataplane.
    Run(Box<RunArgs>),
    /// Run the control plane alone (REST API, registry, health, metrics); with --segment,
    /// linked to a `bosonserver dataplane` through shared memory.
    Control(Box<split::ControlProcessArgs>),
    /// Run the dataplane alone (STUN/TURN, node relay), linked to a `bosonserver control`
    /// through the shared-memory segment --segment.
    Dataplane(Box<split::DataplaneProcessArgs>),
    /// Exit 0 if the local REST API answers `/health/ready`, else 1 (for container health checks).
    Healthcheck(healthcheck::HealthcheckArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    dataplane: DataplaneArgs,
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    drain: drain::DrainArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> anyhow::Result<()> {
    // A missing .env is fine; a malformed one is an error worth stopping for.
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(error) if error.not_found() => {}
        Err(error) => return Err(error).context("reading .env"),
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Every relay socket and client connection is a descriptor: use all the hard limit allows
    // (the dataplane says when even that is short of its configuration).
    if let Err(error) = boson_dataplane::nofile::Nofile::raise_to_hard() {
        tracing::warn!("cannot raise the open-file limit: {error}");
    }
    match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Run(args) => run_all(*args),
        Command::Control(args) => split::run_control(*args),
        Command::Dataplane(args) => split::run_dataplane(*args),
        Command::Healthcheck(args) => healthcheck::run(&args),
    }
}

/// Both planes: the dataplane's pinned worker threads, and the control plane on tokio.
fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let announced_port = args.control.turn_port;
    let explicit_turn_port = announced_port.is_some();
    let data_dir = args.control.data_dir.clone();
    let mut config = args.control.resolve().context("invalid configuration")?;
    let plan = args
        .dataplane
        .plan(&config.turn, announced_port)
        .context("invalid configuration")?;
    // Both ends of one in-memory segment: the same rings as two processes would share.
    let segment = boson_channel::Segment::create(
        planes::spec(plan.workers())?,
        boson_channel::Backing::Memfd,
    )
    .context("creating the planes' segment")?;
    let control_end = segment.control()?;
    let (dataplane, pump, waker) =
        split::start_dataplane(&config, plan, &args.relay, &data_dir, segment.dataplane()?)?;
    let link = planes::ControlLink::new(control_end, Some(waker));
    if !explicit_turn_port {
        config.turn.port = dataplane.local_addr().port();
    }
    config.turn.tcp_port = dataplane.turn_tcp_addr().map(|a| a.port());
    config.turn.tls_port = dataplane.turn_tls_addr().map(|a| a.port());
    let planes = Planes {
        link,
        drain: Some((dataplane.drain_handle(), args.drain.drain_timeout)),
    };
    let served = runtime()?.block_on(serve_control(config, Some(planes)));
    drop(pump);
    let stopped = dataplane.shutdown().map(|_| ());
    served?;
    stopped.context("stopping the dataplane")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// What links the control plane to the dataplane.
struct Planes {
    link: planes::ControlLink,
    /// Drains the dataplane on SIGTERM, within this timeout (when it runs in this process).
    drain: Option<(boson_dataplane::DrainHandle, std::time::Duration)>,
}

/// The host's live load from the workers' counters, for the relay host registry: what a
/// drain would wait for, and the relayed bandwidth (Mbit/s) the meter measured.
fn host_load(
    stats: &[boson_dataplane::WorkerStatsSnapshot],
    bandwidth: f64,
) -> boson_control::domain::hosts::HostLoad {
    let carried = boson_dataplane::Remaining::of(stats);
    boson_control::domain::hosts::HostLoad {
        allocations: u32::try_from(carried.allocations).unwrap_or(u32::MAX),
        sessions: u32::try_from(carried.sessions).unwrap_or(u32::MAX),
        bandwidth,
    }
}

async fn serve_control(config: Config, planes: Option<Planes>) -> anyhow::Result<()> {
    let listen = config.http_listen;
    let state = AppState::connect(config, Arc::new(SystemClock)).await?;
    tokio::spawn(secrets::watch(state.clone()));
    let mut drain = None;
    if let Some(planes) = planes {
        let Planes {
            link,
            drain: dataplane_drain,
        } = planes;
        drain = dataplane_drain;
        let metrics = link.clone();
        state.set_metrics_source(Box::new(move || metrics.render_metrics()))?;
        state.set_command_sink(link.clone())?;
        tokio::spawn(link.clone().run(state.clone()));
        let load_state = state.clone();
        // The bandwidth is a rate over one host heartbeat interval: what the other hosts
        // see in each record is the traffic since the previous one.
        let mut meter = load::BandwidthMeter::new(state.config.host.heartbeat_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let stats = link.worker_stats();
                let now = load_state.clock.now();
                let bandwidth = meter.handle_sample(now, load::relayed_bytes(&stats));
                load_state.set_host_load(host_load(&stats, bandwidth));
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the REST API to {listen}"))?;
    // The signal handlers go in before the server says it listens: a supervisor (or a
    // test) that sends SIGTERM as soon as it reads that line must get a drain, not the
    // default action that kills the process mid-request.
    let first_signal = shutdown_signal();
    let scheme = if state.config.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        database = ?state.store.backend(),
        redis = state.cache.is_redis(),
        "REST API listening on {scheme}://{}",
        listener.local_addr().unwrap_or(listen)
    );
    let drain_state = state.clone();
    let shutdown = async move {
        first_signal.await;
        // Listen for the second signal now, before the drain starts: one sent while the
        // drain looks up its alternate host and publishes itself must not be lost.
        let second = shutdown_signal();
        if let Some((dataplane, timeout)) = drain {
            drain::run(&drain_state, &dataplane, timeout, second).await;
        }
    };
    boson_control::serve(state, listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM sent after this call. The handlers are installed when it
/// is called, not when the future is first polled, so a signal sent in between is kept.
/// Must be called inside the tokio runtime.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!("cannot listen for SIGINT and SIGTERM: {error}");
                None
            }
        }
    };
    async move {
        #[cfg(unix)]
        match streams {
            Some((mut interrupt, mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
