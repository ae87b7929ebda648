//! `boson-node`: see the crate documentation of `boson_node` and the README.
//!
//! Exit codes: 0 after a clean stop (SIGTERM/SIGINT, after deregistering), 2 for a usage or
//! configuration error, 1 for a runtime failure.

use std::process::ExitCode;

use boson_node::config::{Cli, Command};
use boson_node::status::StatusFile;
use boson_node::{agent, clock};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version to stdout with exit 0, errors with exit 2.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs in files and journals stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Status(args) => status(&args.state_dir),
        Command::Run(args) => {
            let config = match (*args).into_config() {
                Ok(config) => config,
                Err(err) => {
                    tracing::error!("{err}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!("cannot start the runtime: {err}");
                    return ExitCode::from(1);
                }
            };
            // The handlers go in before the agent starts, so a SIGTERM at any point of its
            // start (registration, say) deregisters cleanly instead of killing it.
            match runtime.block_on(async { agent::run(config, shutdown_signal()).await }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT sent after this call: the handlers are installed when it
/// is called, not when the future is first polled. Must be called inside the runtime.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the process can only be killed: run until then.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// `boson-node status`: the peers' lines; exit 0 while the agent runs, 1 when it does not.
fn status(state_dir: &std::path::Path) -> ExitCode {
    let path = state_dir.join("status.json");
    let file: StatusFile = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(file) => file,
        Err(err) => {
            eprintln!("boson-node is not running ({}: {err})", path.display());
            return ExitCode::from(1);
        }
    };
    let exists = std::path::Path::new(&format!("/proc/{}", file.pid)).exists();
    let live = file.is_live(clock::unix_ms(), exists);
    #[expect(clippy::print_stdout, reason = "the status command's output")]
    {
        print!("{}", file.lines());
    }
    if live {
        ExitCode::SUCCESS
    } else {
        eprintln!("boson-node is not running");
        ExitCode::from(1)
    }
}
