//! The node relays' side-by-side runner: rounds of A B A B … over bosonserver's relay (over
//! WebSocket, over QUIC, or both) and the baselines (tokio-tungstenite, quinn), on one
//! machine, in one invocation.
//!
//! Each round starts each relay in turn, on 127.0.0.1 only and pinned to the server core
//! (`taskset -c`), prepares `2 × pairs + 1` nodes with tokens, checks with the extra node
//! that the relay answers with READY (an upgrade, or a QUIC connection and AUTH), runs every
//! (packet, load) scenario with the generator's threads pinned to the generator core
//! ([`ws_generator`] or [`quic_generator`]), and stops the relay. The relay's CPU time per
//! delivered message comes from `/proc/PID/stat` around each load phase. Medians over the
//! rounds and the ratios are in the [`WsReport`].
//!
//! | relay | command (on 127.0.0.1, free ports) | tokens |
//! |---|---|---|
//! | boson-ws | `bosonserver run --http-listen H --relay-listen R --turn-listen T --workers W --no-pin --jwt-secret S --register-rate-limit 1000000 …` | `POST /api/v1/nodes/challenge`, then `/register` with the key proof, on H |
//! | ws-baseline | `boson-bench ws-baseline --listen R --jwt-secret S --workers W --queue Q` | minted with S |
//! | boson-quic | the same as boson-ws; QUIC on UDP R, trusting the development certificate it writes to its data dir | `POST /api/v1/nodes/challenge`, then `/register` with the key proof, on H |
//! | quic-baseline | `boson-bench quic-baseline --listen R --jwt-secret S --workers W --cert C --key K`, C and K a fresh self-signed pair | minted with S |
//!
//! If bosonserver does not serve the relay (an old build, or one started without it), its
//! turn fails with a message that starts
//! "bosonserver does not serve the WebSocket relay:" and says what was seen (the flag
//! refused, nothing listening, or the upgrade not answered with READY); the failure is
//! recorded for each of its scenarios and the run exits non-zero after the baseline's
//! figures are printed.
//!
//! Every wait is bounded: start-up (10 s), each connection's set-up (5 s), the load (its
//! duration plus drain), the stop of a relay (SIGTERM, then SIGKILL after 3 s).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::clock;
use crate::generator::Rate;
use crate::nodes::{self, NodeCredential, TokenKeys};
use crate::process::{
    ServerProcess, ensure_file, free_tcp_and_udp_port, free_tcp_port, free_udp_port, pinned,
};
use crate::quic_baseline;
use crate::quic_client::{ClientSetup, QuicNode};
use crate::quic_generator::{self, QuicLoadConfig};
use crate::relay_load::{RelayLoad, RelayOutcome};
use crate::report::{Machine, Server as _};
use crate::runner::{BOSON_CONFIG_VARS, Done, Plan, Started, Turns, rounds};
use crate::ws_baseline;
use crate::ws_client::{self, Auth};
use crate::ws_generator::{self, WsLoadConfig};
use crate::ws_report::{WsRecord, WsReport, WsRunInfo, WsServerKind};

/// bosonserver's flag for the WebSocket relay's TCP listener.
pub const RELAY_LISTEN_FLAG: &str = "--relay-listen";

/// The beginning of every error that means bosonserver's relay is not there (yet).
pub const NOT_SERVED: &str = "bosonserver does not serve the WebSocket relay";

/// The same for its QUIC relay.
pub const NOT_SERVED_QUIC: &str = "bosonserver does not serve the QUIC relay";

/// How long a relay may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound of the probe connection's set-up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound of one attempt of the QUIC probe, retried until [`READY_TIMEOUT`].
const PROBE_ATTEMPT: Duration = Duration::from_secs(1);

/// Settings of one WebSocket run.
#[derive(Debug, Clone)]
pub struct WsRunConfig {
    /// Relays, in the order each round visits them.
    pub servers: Vec<WsServerKind>,
    /// Rounds.
    pub rounds: usize,
    /// Load per scenario.
    pub duration: Duration,
    /// Drain after each scenario.
    pub drain: Duration,
    /// Packet sizes.
    pub packets: Vec<usize>,
    /// Offered loads, messages per second.
    pub rates: Vec<Rate>,
    /// Sender/receiver pairs per scenario.
    pub pairs: usize,
    /// Generator threads.
    pub threads: usize,
    /// Frames per write.
    pub batch: usize,
    /// Worker threads of each relay (bosonserver's `--workers`, the baseline's tokio workers).
    pub workers: usize,
    /// The baseline's per-connection channel, in messages.
    pub queue: usize,
    /// The `bosonserver` binary.
    pub bosonserver: PathBuf,
    /// This binary (to start the baseline).
    pub bench: PathBuf,
    /// The HS256 secret of node tokens, given to both relays.
    pub jwt_secret: String,
    /// Core the relays are pinned to.
    pub server_core: usize,
    /// Core the generator's threads are pinned to.
    pub generator_core: usize,
    /// Before each relay's turn, wait up to this long for the machine to be quiet.
    pub idle_wait: Duration,
    /// No progress bars.
    pub quiet: bool,
    /// The command line, recorded in the report.
    pub command: String,
}

/// Runs every round and returns the report.
pub fn run(config: &WsRunConfig) -> anyhow::Result<WsReport> {
    TokenKeys::new(config.jwt_secret.as_bytes())?;
    let machine = Machine::detect();
    let plan = Plan {
        servers: &config.servers,
        rounds: config.rounds,
        sizes: &config.packets,
        rates: &config.rates,
        idle_wait: config.idle_wait,
        quiet: config.quiet,
    };
    let records = rounds(&plan, &mut RelayTurns(config));
    let info = WsRunInfo {
        machine,
        command: config.command.clone(),
        pairs: config.pairs,
        threads: config.threads,
        workers: config.workers,
    };
    Ok(WsReport::new(info, config.duration.as_secs_f64(), records))
}

/// The node relay runner's turns.
struct RelayTurns<'a>(&'a WsRunConfig);

impl Turns for RelayTurns<'_> {
    type Server = WsServerKind;
    type Started = Relay;
    type Outcome = RelayOutcome;
    type Record = WsRecord;

    fn start(&mut self, server: WsServerKind, turn: usize) -> anyhow::Result<Relay> {
        start(self.0, server, turn)
    }

    fn scenario(
        &mut self,
        relay: &Relay,
        packet: usize,
        rate: Rate,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<RelayOutcome> {
        run_scenario(self.0, relay, packet, rate, progress)
    }

    fn record(done: Done<WsServerKind, RelayOutcome>) -> WsRecord {
        WsRecord {
            round: done.round,
            server: done.server,
            packet: done.size,
            rate: done.rate,
            outcome: done.outcome,
            error: done.error,
            background_busy: done.background_busy,
        }
    }
}

/// Runs one scenario against `relay` with the generator of its transport.
fn run_scenario(
    config: &WsRunConfig,
    relay: &Relay,
    packet: usize,
    rate: Rate,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<RelayOutcome> {
    let load = RelayLoad {
        relay: relay.addr,
        nodes: relay.nodes[..2 * config.pairs].to_vec(),
        pairs: config.pairs,
        packet,
        rate,
        duration: config.duration,
        drain: config.drain,
        batch: config.batch,
        threads: config.threads,
        cores: vec![config.generator_core],
        server_pid: Some(relay.process.pid()),
        server_core: Some(config.server_core),
    };
    match &relay.quic {
        Some(setup) => quic_generator::run(
            &QuicLoadConfig {
                load,
                setup: setup.clone(),
            },
            progress,
        ),
        None => ws_generator::run(
            &WsLoadConfig {
                load,
                path: ws_baseline::PATH.to_owned(),
                auth: Auth::Header,
            },
            progress,
        ),
    }
}

/// A relay under test, ready, with its nodes.
struct Relay {
    process: ServerProcess,
    /// TCP (WebSocket) or UDP (QUIC).
    addr: SocketAddr,
    /// `2 × pairs` nodes for the scenarios (and the probe's, last).
    nodes: Vec<NodeCredential>,
    /// For a QUIC relay: the clients' TLS, trusting its certificate.
    quic: Option<ClientSetup>,
}

impl Started for Relay {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn stop(self) {
        self.process.stop();
    }
}

/// Starts `kind`, waits until it accepts, prepares the nodes and probes one session.
fn start(config: &WsRunConfig, kind: WsServerKind, id: usize) -> anyhow::Result<Relay> {
    let dir = ServerProcess::tempdir(kind.name())?;
    let count = 2 * config.pairs + 1;
    let workers = config.workers.to_string();
    match kind {
        WsServerKind::BosonWs | WsServerKind::BosonQuic => {
            ensure_file(&config.bosonserver, "cargo build --release -p bosonserver")?;
            // The QUIC relay binds the WebSocket relay's port number over UDP.
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_and_udp_port()?));
            let api = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
            // The TURN listener's TCP side binds the same port number.
            let turn = SocketAddr::from(([127, 0, 0, 1], free_tcp_and_udp_port()?));
            let data = dir.path().join("data");
            let mut command = pinned(config.server_core, &config.bosonserver);
            command
                .args(["run", "--http-listen", &api.to_string()])
                .args([RELAY_LISTEN_FLAG, &addr.to_string()])
                .args(["--turn-listen", &turn.to_string()])
                .arg("--data-dir")
                .arg(&data)
                .args(["--public-host", "127.0.0.1", "--relay-ip", "127.0.0.1"])
                .args(["--relay-ports", &turn_relay_ports()])
                .args(["--workers", &workers, "--no-pin"])
                .args(["--jwt-secret", &config.jwt_secret])
                // Every node of every round registers from 127.0.0.1.
                .args(["--register-rate-limit", "1000000"]);
            for var in BOSON_CONFIG_VARS {
                command.env_remove(var);
            }
            command.env("RUST_LOG", "warn");
            let mut process = ServerProcess::spawn(command, kind.name(), id, dir)?;
            let not_served = if kind.is_quic() {
                NOT_SERVED_QUIC
            } else {
                NOT_SERVED
            };
            wait_listening(&mut process, &[api, addr]).map_err(|error| {
                anyhow::anyhow!(
                    "{not_served}: {error}; it was started with {RELAY_LISTEN_FLAG} {addr}\n{}",
                    process.log_tail()
                )
            })?;
            let nodes = nodes::register(api, count)
                .context("registering nodes through bosonserver's REST API")?;
            let quic = if kind.is_quic() {
                // Written at start-up, before the listeners bind.
                let setup = ClientSetup::from_file(&data.join("relay-cert.pem"))
                    .map_err(|error| anyhow::anyhow!("{not_served}: {error:#}"))?;
                probe_quic(&mut process, addr, &setup, &nodes)
                    .map_err(|error| anyhow::anyhow!("{not_served} on quic://{addr}: {error:#}"))?;
                Some(setup)
            } else {
                probe(&process, addr, &nodes)
                    .map_err(|error| anyhow::anyhow!("{not_served} on ws://{addr}: {error:#}"))?;
                None
            };
            Ok(Relay {
                process,
                addr,
                nodes,
                quic,
            })
        }
        WsServerKind::WsBaseline => {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
            let lifetime = turn_budget(config) + Duration::from_secs(30);
            let mut command = pinned(config.server_core, &config.bench);
            command
                .args(["ws-baseline", "--listen", &addr.to_string()])
                .args(["--jwt-secret", &config.jwt_secret])
                .args(["--workers", &workers])
                .args(["--queue", &config.queue.to_string()])
                .arg("--lifetime")
                .arg(format!("{}s", lifetime.as_secs()));
            let mut process = ServerProcess::spawn(command, kind.name(), id, dir)?;
            wait_listening(&mut process, &[addr])
                .map_err(|error| anyhow::anyhow!("{error}\n{}", process.log_tail()))?;
            let now = i64::try_from(clock::unix_now()).unwrap_or(i64::MAX);
            let nodes = TokenKeys::new(config.jwt_secret.as_bytes())?.mint_nodes(count, now)?;
            probe(&process, addr, &nodes)
                .with_context(|| format!("the baseline on ws://{addr}"))?;
            Ok(Relay {
                process,
                addr,
                nodes,
                quic: None,
            })
        }
        WsServerKind::QuicBaseline => {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            quic_baseline::ensure_certificate(&cert, &key)?;
            let setup = ClientSetup::from_file(&cert)?;
            let lifetime = turn_budget(config) + Duration::from_secs(30);
            let mut command = pinned(config.server_core, &config.bench);
            command
                .args(["quic-baseline", "--listen", &addr.to_string()])
                .args(["--jwt-secret", &config.jwt_secret])
                .args(["--workers", &workers])
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg("--lifetime")
                .arg(format!("{}s", lifetime.as_secs()));
            let mut process = ServerProcess::spawn(command, kind.name(), id, dir)?;
            let now = i64::try_from(clock::unix_now()).unwrap_or(i64::MAX);
            let nodes = TokenKeys::new(config.jwt_secret.as_bytes())?.mint_nodes(count, now)?;
            probe_quic(&mut process, addr, &setup, &nodes)
                .with_context(|| format!("the baseline on quic://{addr}"))?;
            Ok(Relay {
                process,
                addr,
                nodes,
                quic: Some(setup),
            })
        }
    }
}

/// Waits until every address accepts TCP connections, the process exits, or
/// [`READY_TIMEOUT`] passes.
fn wait_listening(process: &mut ServerProcess, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let attempts = READY_TIMEOUT.as_millis() / 50;
    for _ in 0..attempts {
        if let Some(status) = process.exited()? {
            bail!("it exited during start-up ({status})");
        }
        if addrs.iter().all(|addr| accepts(*addr)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let silent: Vec<String> = addrs
        .iter()
        .filter(|addr| !accepts(**addr))
        .map(ToString::to_string)
        .collect();
    bail!(
        "nothing accepts TCP connections on {} after {READY_TIMEOUT:?}",
        silent.join(", ")
    )
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// One upgrade with the last node's token, up to READY, then a close.
fn probe(
    process: &ServerProcess,
    addr: SocketAddr,
    nodes: &[NodeCredential],
) -> anyhow::Result<()> {
    let node = nodes.last().context("no nodes")?;
    let connection = ws_client::connect(
        addr,
        ws_baseline::PATH,
        &node.node,
        &node.token,
        Auth::Header,
        PROBE_TIMEOUT,
    )
    .with_context(|| format!("upgrading as {}\n{}", node.node, process.log_tail()))?;
    let _ = connection.stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Connects the last node over QUIC up to READY, then closes, retrying until the relay
/// answers, the process exits, or [`READY_TIMEOUT`] passes (UDP has no accept to wait for).
fn probe_quic(
    process: &mut ServerProcess,
    addr: SocketAddr,
    setup: &ClientSetup,
    nodes: &[NodeCredential],
) -> anyhow::Result<()> {
    let node = nodes.last().context("no nodes")?;
    let deadline = clock::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.exited()? {
            bail!(
                "it exited during start-up ({status})\n{}",
                process.log_tail()
            );
        }
        match QuicNode::connect(
            setup,
            addr,
            node.node,
            &node.token,
            crate::payload::STAMP_LEN,
            PROBE_ATTEMPT,
        ) {
            Ok(mut session) => {
                session.close(&mut crate::quic_client::NodeIo::new());
                return Ok(());
            }
            Err(error) if clock::now() >= deadline => {
                return Err(error.context(format!(
                    "no QUIC session as {} within {READY_TIMEOUT:?}\n{}",
                    node.node,
                    process.log_tail()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// An upper bound of the time one relay spends on its scenarios.
fn turn_budget(config: &WsRunConfig) -> Duration {
    let per = config.duration + config.drain + Duration::from_secs(10);
    per * u32::try_from(config.packets.len() * config.rates.len()).unwrap_or(u32::MAX)
}

/// TURN relay ports for bosonserver's (idle) TURN dataplane: 100 ports, spread by pid, apart
/// from the TURN runner's 50000-57999.
fn turn_relay_ports() -> String {
    let slot = u16::try_from(std::process::id() % 8).unwrap_or(0);
    let first = 58_000 + slot * 100;
    format!("{first}-{}", first + 99)
}
