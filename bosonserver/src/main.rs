//! `bosonserver`: parses the configuration once, sets up logging, and runs the planes.

use std::sync::Arc;

use anyhow::Context as _;
use boson_control::config::ControlArgs;
use boson_control::{AppState, clock::SystemClock};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

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
    run: ControlArgs,

    /// Log format.
    #[arg(long, global = true, env = "BOSON_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every plane in one process (the default).
    ///
    /// Today that is the control plane; the STUN/TURN dataplane joins it in this process as it
    /// lands.
    Run(ControlArgs),
    /// Run the control plane alone (REST API, registry, health, metrics).
    Control(ControlArgs),
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
    let args = match cli.command {
        Some(Command::Run(args) | Command::Control(args)) => args,
        None => cli.run,
    };
    let config = args.resolve().context("invalid configuration")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_control(config))
}

async fn run_control(config: boson_control::config::Config) -> anyhow::Result<()> {
    let listen = config.http_listen;
    let state = AppState::connect(config, Arc::new(SystemClock)).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the REST API to {listen}"))?;
    tracing::info!(
        database = ?state.store.backend(),
        redis = state.cache.is_redis(),
        "REST API listening on http://{}",
        listener.local_addr().unwrap_or(listen)
    );
    boson_control::serve(state, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!("cannot listen for SIGTERM: {error}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
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
