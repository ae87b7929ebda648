//! The side-by-side runner: rounds of A B C D A B C D … over bosonserver (io_uring),
//! bosonserver (epoll), coturn and the raw forwarder, on one machine, in one invocation.
//!
//! Each round starts each server in turn, on 127.0.0.1 only and pinned to the server core
//! (`taskset -c`), runs every (payload, load) scenario against it with the generator pinned
//! to the generator core, and stops it. The server's CPU time per delivered packet comes from
//! `/proc/PID/stat` around each scenario's load phase. Medians over the rounds and the ratios
//! are in the [`Report`].
//!
//! Every wait is bounded: readiness probes (10 s), TURN transactions (2 s), the load itself
//! (its duration plus drain), the stop of a server (SIGTERM, then SIGKILL after 3 s). Servers
//! get `PR_SET_PDEATHSIG`, so they die with the runner even when it is killed; the raw
//! forwarder also exits by itself when its lifetime ends.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use boson_dataplane_proto::stun::{Class, Encoder, Message, MessageType, Trailer, TransactionId};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::generator::{self, LoadConfig, Rate, Target};
use crate::process::{ServerProcess, ensure_file, free_tcp_and_udp_port, pinned};
use crate::report::{Machine, Record, Report, Server, ServerKind};
use crate::{forwarder, procfs};

/// Variables that would change bosonserver's configuration if inherited.
pub const BOSON_CONFIG_VARS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "TURN_STATIC_SECRET",
    "POSTGRES_PASSWORD",
    "BOSON_DATA_DIR",
    "BOSON_HTTP_LISTEN",
    "BOSON_TURN_LISTEN",
    "BOSON_RELAY_PORTS",
    "BOSON_RELAY_IP",
    "BOSON_WORKERS",
    "BOSON_IO_BACKEND",
    "BOSON_NO_PIN",
    "BOSON_PUBLIC_HOST",
    "BOSON_LOG_FORMAT",
    "BOSON_MAX_ALLOCATIONS_PER_USER",
    "BOSON_DANGER_ALLOW_LOOPBACK_PEERS",
    "BOSON_REGISTER_RATE_LIMIT",
    "BOSON_TOKEN_TTL",
    "RUST_LOG",
];

/// How long a server may take to answer its first probe.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole machine's busy share under which it counts as quiet (our own processes are
/// stopped when it is sampled).
pub const QUIET_BELOW: f64 = 0.15;

/// Relay ports each TURN server may use.
const RELAY_PORTS: u16 = 500;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Servers, in the order each round visits them.
    pub servers: Vec<ServerKind>,
    /// Rounds.
    pub rounds: usize,
    /// Load per scenario.
    pub duration: Duration,
    /// Drain after each scenario.
    pub drain: Duration,
    /// Payload sizes.
    pub payloads: Vec<usize>,
    /// Offered loads.
    pub rates: Vec<Rate>,
    /// Flows (allocations) per scenario.
    pub flows: usize,
    /// Packets per `sendmmsg`.
    pub batch: usize,
    /// The `bosonserver` binary.
    pub bosonserver: PathBuf,
    /// coturn's `turnserver` binary.
    pub turnserver: PathBuf,
    /// coturn's `turnserver` built from source (`benches/coturn-src.sh`).
    pub coturn_src: PathBuf,
    /// The generator sends UDP GSO batches and its sinks receive with GRO.
    pub gso: bool,
    /// One sink per allocation (needed by coturn's `--multiplex-peer`).
    pub sink_per_flow: bool,
    /// This binary (to start the raw forwarder).
    pub bench: PathBuf,
    /// TURN REST secret given to both TURN servers.
    pub secret: String,
    /// Core the servers are pinned to.
    pub server_core: usize,
    /// Core the generator is pinned to.
    pub generator_core: usize,
    /// Before each server's turn, wait up to this long for the machine to be quiet (other
    /// tenants' CPU use below [`QUIET_BELOW`]); zero: do not wait.
    pub idle_wait: Duration,
    /// No progress bars.
    pub quiet: bool,
    /// The command line, recorded in the report.
    pub command: String,
}

/// What a runner does in its rounds: start each server, run each scenario against it, and
/// make a record of each result. [`rounds`] does the rest, for the TURN runner here and the
/// node relays' [`ws_runner`](crate::ws_runner).
pub trait Turns {
    /// The servers it compares.
    type Server: Server;
    /// A server started and ready.
    type Started: Started;
    /// What a scenario measured.
    type Outcome;
    /// One scenario's record in the report.
    type Record;
    /// Starts `server`, the runner's `turn`th start (from 1, for its log's name).
    fn start(&mut self, server: Self::Server, turn: usize) -> anyhow::Result<Self::Started>;
    /// Runs one scenario against `started`.
    fn scenario(
        &mut self,
        started: &Self::Started,
        size: usize,
        rate: Rate,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self::Outcome>;
    /// What a scenario's record says when its server did not start.
    fn start_error(error: String) -> String {
        error
    }
    /// The record of one scenario.
    fn record(done: Done<Self::Server, Self::Outcome>) -> Self::Record;
}

/// A server a runner started.
pub trait Started {
    /// Its process.
    fn process(&self) -> &ServerProcess;
    /// Stops it.
    fn stop(self);
}

/// Where a runner's rounds go.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a, S> {
    /// Servers, in the order each round visits them.
    pub servers: &'a [S],
    /// Rounds.
    pub rounds: usize,
    /// Packet sizes.
    pub sizes: &'a [usize],
    /// Offered loads.
    pub rates: &'a [Rate],
    /// Before each server's turn, wait up to this long for the machine to be quiet.
    pub idle_wait: Duration,
    /// No progress bars.
    pub quiet: bool,
}

/// One scenario's place and result, which a runner makes its record of.
#[derive(Debug)]
pub struct Done<S, O> {
    /// Round number, from 1.
    pub round: usize,
    /// The server.
    pub server: S,
    /// Packet size.
    pub size: usize,
    /// Offered load.
    pub rate: Rate,
    /// What was measured, unless the scenario failed.
    pub outcome: Option<O>,
    /// Why it failed.
    pub error: Option<String>,
    /// Other tenants' load before this server's turn of the round.
    pub background_busy: Option<f64>,
}

/// Rounds of A B C … over `plan.servers`: each round samples the machine's background load
/// before each server's turn, starts the server, runs every (size, load) scenario against
/// it and stops it. A server that does not start gets a failed record for each of its
/// scenarios; a failed scenario is recorded with its error and the server's log tail is
/// printed.
pub fn rounds<T: Turns>(plan: &Plan<'_, T::Server>, turns: &mut T) -> Vec<T::Record> {
    let scenarios = plan.rounds * plan.servers.len() * plan.sizes.len() * plan.rates.len();
    let (multi, overall, current) = progress_bars(plan.quiet, scenarios);
    let mut records = Vec::with_capacity(scenarios);
    let mut turn = 0usize;
    for round in 1..=plan.rounds {
        for &server in plan.servers {
            overall.set_message(format!("round {round}/{} {}", plan.rounds, server.name()));
            let background = wait_quiet(plan.idle_wait);
            if background.is_some_and(|busy| busy >= QUIET_BELOW) {
                multi.suspend(|| {
                    eprintln!(
                        "warning: the machine is busy ({:.0}% CPU) before {} in round {round}",
                        background.unwrap_or_default() * 100.0,
                        server.name()
                    );
                });
            }
            turn += 1;
            let done = |size, rate, outcome, error| {
                T::record(Done {
                    round,
                    server,
                    size,
                    rate,
                    outcome,
                    error,
                    background_busy: background,
                })
            };
            let started = match turns.start(server, turn) {
                Ok(started) => started,
                Err(error) => {
                    let error = format!("{error:#}");
                    multi.suspend(|| eprintln!("{} failed to start: {error}", server.name()));
                    for &size in plan.sizes {
                        for &rate in plan.rates {
                            records.push(done(
                                size,
                                rate,
                                None,
                                Some(T::start_error(error.clone())),
                            ));
                            overall.inc(1);
                        }
                    }
                    continue;
                }
            };
            for &size in plan.sizes {
                for &rate in plan.rates {
                    overall.set_message(format!(
                        "round {round}/{} {} {size} B {rate}",
                        plan.rounds,
                        server.name()
                    ));
                    let (outcome, error) = match turns.scenario(&started, size, rate, &current) {
                        Ok(outcome) => (Some(outcome), None),
                        Err(error) => {
                            let error = format!("{error:#}");
                            multi.suspend(|| {
                                eprintln!(
                                    "{} {size} B {rate}: {error}\n{}",
                                    server.name(),
                                    started.process().log_tail()
                                );
                            });
                            (None, Some(error))
                        }
                    };
                    records.push(done(size, rate, outcome, error));
                    overall.inc(1);
                }
            }
            started.stop();
        }
    }
    current.finish_and_clear();
    overall.finish_and_clear();
    records
}

/// Runs every round and returns the report.
pub fn run(config: &RunConfig) -> anyhow::Result<Report> {
    let machine = Machine::detect();
    let plan = Plan {
        servers: &config.servers,
        rounds: config.rounds,
        sizes: &config.payloads,
        rates: &config.rates,
        idle_wait: config.idle_wait,
        quiet: config.quiet,
    };
    let records = rounds(
        &plan,
        &mut TurnTurns {
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

/// The TURN runner's turns.
struct TurnTurns<'a> {
    config: &'a RunConfig,
    /// Scenarios run so far: each gets TURN users of its own.
    scenario_id: usize,
}

impl Turns for TurnTurns<'_> {
    type Server = ServerKind;
    type Started = Running;
    type Outcome = generator::Outcome;
    type Record = Record;

    fn start(&mut self, server: ServerKind, turn: usize) -> anyhow::Result<Running> {
        start_server(self.config, server, turn)
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
            target: running.target(&config.secret),
            flows: config.flows,
            payload,
            rate,
            duration: config.duration,
            drain: config.drain,
            batch: config.batch,
            core: Some(config.generator_core),
            user_prefix: format!("bench{}-{}", std::process::id(), self.scenario_id),
            server_pid: Some(running.pid()),
            server_core: Some(config.server_core),
            gso: config.gso,
            sink_per_flow: config.sink_per_flow,
        };
        generator::run(&load, progress)
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

/// The runner's two progress bars on stderr (hidden if `quiet`): scenarios done of
/// `scenarios`, and the current load.
pub fn progress_bars(quiet: bool, scenarios: usize) -> (MultiProgress, ProgressBar, ProgressBar) {
    let multi = MultiProgress::with_draw_target(if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let overall = multi.add(ProgressBar::new(scenarios as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.set_prefix("scenarios");
    let current = multi.add(ProgressBar::new(0));
    current.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    current.set_prefix("     load");
    (multi, overall, current)
}

/// The machine's busy share over `window`.
fn background_busy(window: Duration) -> Option<f64> {
    let before = procfs::machine_ticks().ok()?;
    std::thread::sleep(window);
    let after = procfs::machine_ticks().ok()?;
    Some(before.fractions(&after).0)
}

/// Samples the machine until it is quiet or `wait` has passed; returns the last sample.
/// The sample is 1 s long when waiting, else 200 ms (which keeps the smoke run short).
pub fn wait_quiet(wait: Duration) -> Option<f64> {
    let window = if wait.is_zero() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut busy = background_busy(window);
    let mut waited = Duration::ZERO;
    while busy.is_some_and(|b| b >= QUIET_BELOW) && waited < wait {
        std::thread::sleep(Duration::from_secs(4));
        waited += Duration::from_secs(5);
        busy = background_busy(window);
    }
    busy
}

/// A TURN server (or the raw forwarder) under test.
pub(crate) struct Running {
    process: ServerProcess,
    kind: ServerKind,
    addr: SocketAddr,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its listener: UDP, and TCP on the same port for the TURN servers.
    pub(crate) const fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn target(&self, secret: &str) -> Target {
        match self.kind {
            ServerKind::Raw | ServerKind::RawGso => Target::Raw {
                forwarder: self.addr,
            },
            ServerKind::BosonUring
            | ServerKind::BosonEpoll
            | ServerKind::BosonUringNogso
            | ServerKind::BosonEpollNogso
            | ServerKind::Coturn
            | ServerKind::CoturnSrc => Target::Turn {
                server: self.addr,
                secret: secret.to_owned(),
            },
        }
    }
}

impl Started for Running {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn stop(self) {
        self.process.stop();
    }
}

/// The first relay port for this process's servers: spread by pid so concurrent runs (and
/// other tests on the machine) rarely share ports. Both servers survive a busy port.
fn relay_base(kind: ServerKind) -> u16 {
    let slot = u16::try_from(std::process::id() % 8).unwrap_or(0);
    let offset = if kind.is_ours() { 0 } else { RELAY_PORTS };
    50_000 + slot * 2 * RELAY_PORTS + offset
}

pub(crate) fn start_server(
    config: &RunConfig,
    kind: ServerKind,
    id: usize,
) -> anyhow::Result<Running> {
    let dir = ServerProcess::tempdir(kind.name())?;
    // bosonserver and coturn listen on TCP too, on the same port number.
    let port = free_tcp_and_udp_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let relay = relay_base(kind);
    let relay_range = format!("{relay}-{}", relay + RELAY_PORTS - 1);
    let command = match kind {
        ServerKind::BosonUring
        | ServerKind::BosonEpoll
        | ServerKind::BosonUringNogso
        | ServerKind::BosonEpollNogso => {
            let backend = if matches!(kind, ServerKind::BosonUring | ServerKind::BosonUringNogso) {
                "uring"
            } else {
                "epoll"
            };
            ensure_file(&config.bosonserver, "cargo build --release -p bosonserver")?;
            let mut command = pinned(config.server_core, &config.bosonserver);
            command
                .args(["run", "--http-listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--turn-listen", &addr.to_string()])
                .args(["--public-host", "127.0.0.1", "--relay-ip", "127.0.0.1"])
                .args(["--workers", "1", "--no-pin", "--io-backend", backend])
                .args(["--relay-ports", &relay_range])
                .args(["--turn-static-secret", &config.secret])
                .arg("--danger-allow-loopback-peers");
            if matches!(
                kind,
                ServerKind::BosonUringNogso | ServerKind::BosonEpollNogso
            ) {
                command.arg("--no-udp-offload");
            }
            for var in BOSON_CONFIG_VARS {
                command.env_remove(var);
            }
            command.env("RUST_LOG", "warn");
            command
        }
        ServerKind::Coturn | ServerKind::CoturnSrc => {
            let binary = if kind == ServerKind::CoturnSrc {
                &config.coturn_src
            } else {
                &config.turnserver
            };
            let mut command = pinned(config.server_core, binary);
            command
                .args(["-n", "--use-auth-secret"])
                .arg(format!("--static-auth-secret={}", config.secret))
                .args(["--realm=bench", "--allow-loopback-peers"])
                .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
                .arg(format!("--listening-port={port}"))
                .arg(format!("--min-port={relay}"))
                .arg(format!("--max-port={}", relay + RELAY_PORTS - 1))
                .args(["--relay-threads=1", "--no-cli", "--no-tls", "--no-dtls"])
                .arg(format!(
                    "--pidfile={}",
                    dir.path().join("turnserver.pid").display()
                ))
                .arg(format!("--userdb={}", dir.path().join("turndb").display()))
                .args([
                    "--log-file=stdout",
                    "--simple-log",
                    "--no-software-attribute",
                ]);
            if kind == ServerKind::CoturnSrc {
                // Batched sends (recvmmsg is on by default); multiplex allows one allocation
                // per peer address, hence `--sink-per-allocation`.
                command.args(["--udp-gso", "--multiplex-peer"]);
            }
            command
        }
        ServerKind::Raw | ServerKind::RawGso => {
            let lifetime = scenario_budget(config) + Duration::from_secs(30);
            let mut command = pinned(config.server_core, &config.bench);
            command
                .args(["raw-forwarder", "--listen", &addr.to_string(), "--lifetime"])
                .arg(format!("{}s", lifetime.as_secs()));
            if kind == ServerKind::RawGso {
                command.arg("--gso");
            }
            command
        }
    };
    let process = ServerProcess::spawn(command, kind.name(), id, dir)?;
    let mut running = Running {
        process,
        kind,
        addr,
    };
    wait_ready(&mut running)?;
    Ok(running)
}

/// An upper bound of the time one server spends on its scenarios.
fn scenario_budget(config: &RunConfig) -> Duration {
    let per = config.duration + config.drain + Duration::from_secs(5);
    per * u32::try_from(config.payloads.len() * config.rates.len()).unwrap_or(u32::MAX)
}

/// Probes until the server answers: a STUN Binding for TURN servers, a setup probe for the
/// raw forwarder. At most [`READY_TIMEOUT`].
fn wait_ready(running: &mut Running) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(running.addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let tid = TransactionId::new([0x42; 12]);
    let probe = match running.kind {
        ServerKind::Raw | ServerKind::RawGso => forwarder::setup_message(0),
        ServerKind::BosonUring
        | ServerKind::BosonEpoll
        | ServerKind::BosonUringNogso
        | ServerKind::BosonEpollNogso
        | ServerKind::Coturn
        | ServerKind::CoturnSrc => {
            let mut buf = [0u8; 64];
            let encoder = Encoder::new(&mut buf, MessageType::BINDING_REQUEST, tid)?;
            let len = encoder.finish(Trailer::new())?;
            buf[..len].to_vec()
        }
    };
    let mut buf = [0u8; 1500];
    let attempts = READY_TIMEOUT.as_millis() / 100;
    for _ in 0..attempts {
        if let Some(status) = running.process.exited()? {
            bail!(
                "{} exited during start-up ({status})\n{}",
                running.kind.name(),
                running.process.log_tail()
            );
        }
        let _ = socket.send(&probe);
        let Ok(len) = socket.recv(&mut buf) else {
            // A refused send returns at once; pace the retries.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let answer = &buf[..len];
        let ready = match running.kind {
            ServerKind::Raw | ServerKind::RawGso => answer == forwarder::SETUP_OK,
            ServerKind::BosonUring
            | ServerKind::BosonEpoll
            | ServerKind::BosonUringNogso
            | ServerKind::BosonEpollNogso
            | ServerKind::Coturn
            | ServerKind::CoturnSrc => Message::parse(answer)
                .is_ok_and(|m| m.transaction_id() == tid && m.class() == Class::SuccessResponse),
        };
        if ready {
            return Ok(());
        }
    }
    bail!(
        "{} did not answer on {} within {READY_TIMEOUT:?}\n{}",
        running.kind.name(),
        running.addr,
        running.process.log_tail()
    )
}

/// Whether `program` is on the PATH (or is a path to a file).
pub fn on_path(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
