//! The side-by-side runner over TCP: rounds of bosonserver (io_uring), bosonserver (epoll)
//! and coturn, each loaded through its TURN-over-TCP listener by the
//! [TCP generator](crate::tcp_generator), in one invocation.
//!
//! The servers are started exactly as [`runner`] starts them: both TURN
//! servers listen on TCP at the port of their UDP listener by default (bosonserver's
//! `--turn-tcp-listen` defaults to `--turn-listen`; coturn listens on TCP unless `--no-tcp`),
//! so the same commands serve both runs. Before its scenarios a server must answer a STUN
//! Binding over TCP too. Rounds, records, medians and ratios are those of the UDP runner
//! ([`runner::rounds`], [`Report`]); the raw forwarder has no TCP side and is refused.

use std::time::Duration;

use anyhow::{bail, ensure};
use boson_dataplane_proto::stun::{Method, TransactionId};
use indicatif::ProgressBar;

use crate::clock;
use crate::generator::{self, LoadConfig, Rate, Target};
use crate::report::{Machine, Record, Report, Server as _, ServerKind};
use crate::runner::{self, Done, Plan, RunConfig, Running, Started as _, Turns};
use crate::tcp_generator;
use crate::turn_client::{Reply, Transport as _, encode_request};
use crate::turn_tcp_client::TcpTransport;

/// How long a server's TCP listener may take to answer its first Binding.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The servers a TCP run visits unless told otherwise.
pub const SERVERS: [ServerKind; 3] = [
    ServerKind::BosonUring,
    ServerKind::BosonEpoll,
    ServerKind::Coturn,
];

/// Runs every round over TCP and returns the report.
pub fn run(config: &RunConfig) -> anyhow::Result<Report> {
    ensure!(
        !config
            .servers
            .iter()
            .any(|s| matches!(s, ServerKind::Raw | ServerKind::RawGso)),
        "the raw forwarder has no TCP listener: leave it out of --servers with --tcp"
    );
    let machine = Machine::detect();
    let plan = Plan {
        servers: &config.servers,
        rounds: config.rounds,
        sizes: &config.payloads,
        rates: &config.rates,
        idle_wait: config.idle_wait,
        quiet: config.quiet,
    };
    let records = runner::rounds(
        &plan,
        &mut TcpTurns {
            config,
            scenario_id: 0,
        },
    );
    Ok(Report::new(
        machine,
        config.command.clone(),
        config.duration.as_secs_f64(),
        config.flows,
        records,
    ))
}

/// The TCP runner's turns.
struct TcpTurns<'a> {
    config: &'a RunConfig,
    /// Scenarios run so far: each gets TURN users of its own.
    scenario_id: usize,
}

impl Turns for TcpTurns<'_> {
    type Server = ServerKind;
    type Started = Running;
    type Outcome = generator::Outcome;
    type Record = Record;

    fn start(&mut self, server: ServerKind, turn: usize) -> anyhow::Result<Running> {
        let running = runner::start_server(self.config, server, turn)?;
        if let Err(error) = wait_tcp_ready(&running) {
            let error = error.context(format!("{} over TCP", server.name()));
            running.stop();
            return Err(error);
        }
        Ok(running)
    }

    fn scenario(
        &mut self,
        running: &Running,
        payload: usize,
        rate: Rate,
        progress: &ProgressBar,
    ) -> anyhow::Result<generator::Outcome> {
        let config = self.config;
        self.scenario_id += 1;
        let load = LoadConfig {
            target: Target::Turn {
                server: running.addr(),
                secret: config.secret.clone(),
            },
            flows: config.flows,
            payload,
            rate,
            duration: config.duration,
            drain: config.drain,
            batch: config.batch,
            core: Some(config.generator_core),
            user_prefix: format!("tcp{}-{}", std::process::id(), self.scenario_id),
            server_pid: Some(running.pid()),
            server_core: Some(config.server_core),
            gso: false,
            sink_per_flow: false,
        };
        tcp_generator::run(&load, progress)
    }

    fn start_error(error: String) -> String {
        format!("server did not start: {error}")
    }

    fn record(done: Done<ServerKind, generator::Outcome>) -> Record {
        Record {
            round: done.round,
            server: done.server,
            payload: done.size,
            rate: done.rate,
            outcome: done.outcome,
            error: done.error,
            background_busy: done.background_busy,
        }
    }
}

/// Connects over TCP and sends a STUN Binding until the server answers with a success, at
/// most [`READY_TIMEOUT`].
fn wait_tcp_ready(running: &Running) -> anyhow::Result<()> {
    let deadline = clock::now() + READY_TIMEOUT;
    let mut last_error = None;
    while clock::now() < deadline {
        let attempt = || -> anyhow::Result<Reply> {
            let mut transport = TcpTransport::connect(running.addr())?;
            let tid = TransactionId::new(rand::random());
            let mut buf = [0u8; 64];
            let len = encode_request(&mut buf, Method::BINDING, tid, None, &|_| Ok(()))?;
            transport.exchange(&buf[..len], tid, &mut [])
        };
        match attempt() {
            Ok(Reply::Success { .. }) => return Ok(()),
            Ok(other) => last_error = Some(anyhow::anyhow!("Binding answered {other:?}")),
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last_error {
        Some(error) => Err(error.context(format!(
            "no STUN Binding answer on {} over TCP within {READY_TIMEOUT:?}",
            running.addr()
        ))),
        None => bail!("no STUN Binding answer on {} over TCP", running.addr()),
    }
}
