//! The control-plane load generator: `boson-bench ctl`.
//!
//! For each population size N it starts `bosonserver control` (the REST API alone, no
//! dataplane) on 127.0.0.1, on SQLite in a fresh data directory or on the PostgreSQL and
//! Redis it is given, and drives it over keep-alive HTTP/1.1 connections, one thread each:
//!
//! 1. **register**: N nodes of the [`ctl_population`] mix, each with its own request;
//! 2. **mixed**, open loop for `--duration`: every node heartbeats once per heartbeat interval
//!    (N / interval a second, spread evenly), routing requests and ICE requests at their set
//!    rates; latency counts from when a request was due, so a server that falls behind shows
//!    it (no coordinated omission);
//! 3. **routing-max** and **heartbeat-max**, closed loop for `--max-duration`: every connection
//!    sends back to back, for the throughput ceiling.
//!
//! Each phase reports requests, errors, throughput, p50/p99/p999 latency and the server's CPU
//! time per request (from `/proc/PID/stat` of the server process). The server's resident
//! memory (`VmRSS`) before and after registering gives the memory per node.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::ctl_population::{self, SimNode};
use crate::process::{ServerProcess, ensure_file, free_tcp_port};
use crate::report::Machine;
use crate::runner::BOSON_CONFIG_VARS;
use crate::{clock, procfs};

/// How long one HTTP exchange may take before it counts as failed.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to answer `/health/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Latencies are recorded in microseconds, up to 60 s.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite in a fresh data directory, limits and presence in process.
    Sqlite,
    /// PostgreSQL and Redis.
    Postgres {
        /// The database URL; `{n}` in it is replaced by the population size, so each size
        /// can get a fresh database.
        database_url: String,
        /// The Redis URL.
        redis_url: String,
    },
}

impl Backend {
    /// `sqlite` or `postgres+redis`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres { .. } => "postgres+redis",
        }
    }
}

/// What `boson-bench ctl` runs.
#[derive(Debug, Clone)]
pub struct CtlConfig {
    /// The bosonserver binary.
    pub bosonserver: PathBuf,
    /// Where it keeps state.
    pub backend: Backend,
    /// Population sizes, one server each.
    pub sizes: Vec<usize>,
    /// Connections (and client threads).
    pub connections: usize,
    /// The heartbeat interval the server announces and the nodes keep.
    pub heartbeat_interval: Duration,
    /// Routing requests a second in the mixed phase.
    pub routing_rate: f64,
    /// ICE requests a second in the mixed phase.
    pub ice_rate: f64,
    /// Length of the mixed phase.
    pub duration: Duration,
    /// Length of each closed-loop phase (0: skipped).
    pub max_duration: Duration,
    /// Seed of the population and of the requests.
    pub seed: u64,
    /// No progress bar.
    pub quiet: bool,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `register`, `heartbeat`, `routing`, `ice`, `routing-max`, `heartbeat-max`.
    pub name: String,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were answered otherwise.
    pub errors: u64,
    /// The first failure, quoted.
    pub first_error: Option<String>,
    /// Wall time of the phase, s.
    pub seconds: f64,
    /// `ok` per second.
    pub throughput: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Server CPU time over the phase divided by its requests (all kinds of the phase
    /// together in the mixed phase), µs.
    pub server_cpu_us_per_request: f64,
    /// Server CPU time over the phase, s.
    pub server_cpu_s: f64,
}

/// One population size on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct CtlRun {
    /// `sqlite` or `postgres+redis`.
    pub backend: &'static str,
    /// Nodes registered.
    pub nodes: usize,
    /// Heartbeats a second the mixed phase offered.
    pub offered_heartbeats_per_s: f64,
    /// Routing requests a second it offered.
    pub offered_routing_per_s: f64,
    /// ICE requests a second it offered.
    pub offered_ice_per_s: f64,
    /// Server resident memory before registering, bytes.
    pub rss_idle_bytes: u64,
    /// After registering and the mixed phase, bytes.
    pub rss_loaded_bytes: u64,
    /// The difference over the nodes, bytes.
    pub rss_bytes_per_node: f64,
    /// Every phase, in order.
    pub phases: Vec<Phase>,
}

/// Everything one `boson-bench ctl` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CtlReport {
    /// The machine.
    pub machine: Machine,
    /// Client connections.
    pub connections: usize,
    /// Heartbeat interval, s.
    pub heartbeat_interval_s: f64,
    /// Runs, one per size.
    pub runs: Vec<CtlRun>,
}

impl CtlReport {
    /// A text table of every phase.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<15} {:>8} {:<14} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>9}\n",
            "backend",
            "nodes",
            "phase",
            "ok",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "cpu µs/req"
        );
        for run in &self.runs {
            for phase in &run.phases {
                out.push_str(&format!(
                    "{:<15} {:>8} {:<14} {:>8} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>9.0}\n",
                    run.backend,
                    run.nodes,
                    phase.name,
                    phase.ok,
                    phase.errors,
                    phase.throughput,
                    phase.p50_ms,
                    phase.p99_ms,
                    phase.p999_ms,
                    phase.server_cpu_us_per_request
                ));
            }
            out.push_str(&format!(
                "{:<15} {:>8} memory: {:.1} MiB idle, {:.1} MiB loaded, {:.0} bytes per node\n",
                run.backend,
                run.nodes,
                run.rss_idle_bytes as f64 / 1048576.0,
                run.rss_loaded_bytes as f64 / 1048576.0,
                run.rss_bytes_per_node
            ));
        }
        out
    }

    /// What a smoke run must not show: errors, or a phase that did nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for run in &self.runs {
            for phase in &run.phases {
                let what = format!("{} {} nodes, {}", run.backend, run.nodes, phase.name);
                if phase.errors > 0 {
                    failures.push(format!(
                        "{what}: {} errors, first: {}",
                        phase.errors,
                        phase.first_error.as_deref().unwrap_or("?")
                    ));
                }
                if phase.ok == 0 {
                    failures.push(format!("{what}: no request answered"));
                }
            }
        }
        failures
    }
}

/// Runs every size of `config`.
pub fn run(config: &CtlConfig) -> anyhow::Result<CtlReport> {
    ensure_file(&config.bosonserver, "cargo build --release -p bosonserver")?;
    ensure!(config.connections > 0, "--connections must be at least 1");
    let mut runs = Vec::new();
    for &nodes in &config.sizes {
        runs.push(
            run_size(config, nodes)
                .with_context(|| format!("{} nodes on {}", nodes, config.backend.label()))?,
        );
    }
    Ok(CtlReport {
        machine: Machine::detect(),
        connections: config.connections,
        heartbeat_interval_s: config.heartbeat_interval.as_secs_f64(),
        runs,
    })
}

/// The server under test.
struct Server {
    process: ServerProcess,
    api: SocketAddr,
}

fn start(config: &CtlConfig, nodes: usize) -> anyhow::Result<Server> {
    let dir = ServerProcess::tempdir("ctl")?;
    let api = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let mut command = Command::new(&config.bosonserver);
    command
        .args(["control", "--http-listen", &api.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--jwt-secret", crate::cli::DEFAULT_JWT_SECRET])
        // Every simulated node registers from 127.0.0.1, over `connections` connections.
        .args(["--register-rate-limit", "100000000"])
        .args(["--max-connections-per-ip", "4096"])
        .arg("--heartbeat-interval")
        .arg(format!("{}ms", config.heartbeat_interval.as_millis()))
        // Registering a large population takes longer than the default 90 s: nodes stay
        // live for the whole run, heartbeats or not (liveness is not what is measured).
        .args(["--node-timeout", "24h"]);
    if let Backend::Postgres {
        database_url,
        redis_url,
    } = &config.backend
    {
        let prefix = format!("ctl{}-{}:", nodes, clock::unix_now());
        command
            .args([
                "--database-url",
                &database_url.replace("{n}", &nodes.to_string()),
            ])
            .args(["--redis-url", redis_url])
            .args(["--redis-prefix", &prefix]);
    }
    for var in BOSON_CONFIG_VARS {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "warn");
    let mut process = ServerProcess::spawn(command, "ctl", nodes, dir)?;
    let deadline = clock::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.exited()? {
            bail!("bosonserver exited ({status}):\n{}", process.log_tail());
        }
        if let Ok(mut conn) = Conn::open(api)
            && conn
                .request("GET", "/health/ready", None, None)
                .is_ok_and(|r| r.0 == 200)
        {
            break;
        }
        if clock::now() > deadline {
            bail!(
                "bosonserver not ready on {api} within {READY_TIMEOUT:?}:\n{}",
                process.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { process, api })
}

/// The resident memory of `pid`, bytes (`VmRSS` of `/proc/PID/status`).
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/PID/status")
}

/// `VmRSS:   1234 kB` → bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn run_size(config: &CtlConfig, count: usize) -> anyhow::Result<CtlRun> {
    let server = start(config, count)?;
    let pid = server.process.pid();
    let population = Arc::new(ctl_population::population(count, config.seed));
    let progress = if config.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count as u64)
    };
    progress.set_message(format!("{} nodes on {}", count, config.backend.label()));
    // Let the server settle (migrations, first host heartbeat) before the idle reading.
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss(pid)?;

    // 1. Registration.
    let cpu = procfs::cpu_time(pid)?;
    let started = clock::now();
    let outcomes = register_all(server.api, &population, config, &progress)?;
    let register = Tally::merge(outcomes.iter().map(|(tally, _)| tally));
    let register_cpu = procfs::cpu_time(pid)?.saturating_sub(cpu);
    let mut phases = vec![register.phase(
        "register",
        clock::now().saturating_duration_since(started),
        register_cpu,
    )];
    progress.finish_and_clear();
    let tokens: Vec<Option<String>> = outcomes.into_iter().flat_map(|(_, t)| t).collect();
    let tokens = Arc::new(tokens);

    // 2. The mixed phase.
    let heartbeat_rate = count as f64 / config.heartbeat_interval.as_secs_f64();
    let cpu = procfs::cpu_time(pid)?;
    let started = clock::now();
    let mixed = drive(
        server.api,
        &population,
        &tokens,
        config,
        Load::Open {
            heartbeat: heartbeat_rate,
            routing: config.routing_rate,
            ice: config.ice_rate,
        },
        config.duration,
    )?;
    let elapsed = clock::now().saturating_duration_since(started);
    let mixed_cpu = procfs::cpu_time(pid)?.saturating_sub(cpu);
    let total: u64 = mixed.iter().map(|t| t.ok + t.errors).sum();
    for (name, tally) in ["heartbeat", "routing", "ice"].into_iter().zip(&mixed) {
        let mut phase = tally.phase(name, elapsed, mixed_cpu);
        // The CPU is shared by the three kinds: per request of any kind.
        phase.server_cpu_us_per_request = per_request_us(mixed_cpu, total);
        phases.push(phase);
    }
    let rss_loaded = rss(pid)?;

    // 3. The ceilings.
    if !config.max_duration.is_zero() {
        for (name, load) in [
            ("routing-max", Load::Closed(Kind::Routing)),
            ("heartbeat-max", Load::Closed(Kind::Heartbeat)),
        ] {
            let cpu = procfs::cpu_time(pid)?;
            let started = clock::now();
            let tallies = drive(
                server.api,
                &population,
                &tokens,
                config,
                load,
                config.max_duration,
            )?;
            let elapsed = clock::now().saturating_duration_since(started);
            let used = procfs::cpu_time(pid)?.saturating_sub(cpu);
            phases.push(Tally::merge(tallies.iter()).phase(name, elapsed, used));
        }
    }
    server.process.stop();
    Ok(CtlRun {
        backend: config.backend.label(),
        nodes: count,
        offered_heartbeats_per_s: heartbeat_rate,
        offered_routing_per_s: config.routing_rate,
        offered_ice_per_s: config.ice_rate,
        rss_idle_bytes: rss_idle,
        rss_loaded_bytes: rss_loaded,
        rss_bytes_per_node: rss_loaded.saturating_sub(rss_idle) as f64 / count.max(1) as f64,
        phases,
    })
}

fn per_request_us(cpu: Duration, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / requests as f64
    }
}

/// Latencies and outcomes of one kind of request.
#[derive(Debug, Clone)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            first_error: None,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds that hdrhistogram accepts"),
        }
    }

    fn record(&mut self, outcome: Result<u16, String>, latency: Duration, what: &str) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                self.ok += 1;
                let _ = self.latency.record(micros);
            }
            Ok(status) => self.fail(format!("{what}: HTTP {status}")),
            Err(error) => self.fail(format!("{what}: {error}")),
        }
    }

    fn fail(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    fn merge<'a>(tallies: impl Iterator<Item = &'a Self>) -> Self {
        let mut all = Self::new();
        for tally in tallies {
            all.ok += tally.ok;
            all.errors += tally.errors;
            if all.first_error.is_none() {
                all.first_error.clone_from(&tally.first_error);
            }
            let _ = all.latency.add(&tally.latency);
        }
        all
    }

    fn phase(&self, name: &str, elapsed: Duration, cpu: Duration) -> Phase {
        let ms = |q: f64| {
            if self.latency.is_empty() {
                0.0
            } else {
                self.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let seconds = elapsed.as_secs_f64();
        Phase {
            name: name.to_owned(),
            ok: self.ok,
            errors: self.errors,
            first_error: self.first_error.clone(),
            seconds,
            throughput: if seconds > 0.0 {
                self.ok as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.latency.max() as f64 / 1000.0,
            server_cpu_us_per_request: per_request_us(cpu, self.ok + self.errors),
            server_cpu_s: cpu.as_secs_f64(),
        }
    }
}

/// Registers the population, `connections` threads each taking every `connections`-th node;
/// returns each thread's tally and the tokens of its nodes (by node index).
fn register_all(
    api: SocketAddr,
    population: &Arc<Vec<SimNode>>,
    config: &CtlConfig,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<(Tally, Vec<Option<String>>)>> {
    let threads = config.connections.min(population.len()).max(1);
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let population = Arc::clone(population);
            let progress = progress.clone();
            let seed = config.seed ^ (thread as u64) << 32;
            std::thread::spawn(move || -> anyhow::Result<(Tally, Vec<(usize, String)>)> {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut conn = Conn::open(api)?;
                let mut tally = Tally::new();
                let mut tokens = Vec::new();
                for index in (thread..population.len()).step_by(threads) {
                    // A registration is two requests: the challenge, then the registration
                    // answering it (one X25519 and one HMAC here, as on a real node).
                    let sent = clock::now();
                    let answer = register_one(&mut conn, &population[index], &mut rng);
                    let latency = clock::now().saturating_duration_since(sent);
                    let outcome = match answer {
                        Ok((status, body)) => {
                            if status == 201 || status == 200 {
                                match token_of(&body) {
                                    Some(token) => tokens.push((index, token)),
                                    None => {
                                        tally.fail("register: no sessionToken".to_owned());
                                        continue;
                                    }
                                }
                            } else if tally.first_error.is_none() {
                                tally.first_error = Some(format!(
                                    "register: HTTP {status}: {}",
                                    String::from_utf8_lossy(&body)
                                ));
                            }
                            Ok(status)
                        }
                        Err(error) => {
                            conn = Conn::open(api)?;
                            Err(format!("{error:#}"))
                        }
                    };
                    tally.record(outcome, latency, "register");
                    progress.inc(1);
                }
                Ok((tally, tokens))
            })
        })
        .collect();
    let mut by_index: Vec<Option<String>> = vec![None; population.len()];
    let mut tallies = Vec::new();
    for handle in handles {
        let (tally, tokens) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a registering thread panicked"))??;
        for (index, token) in tokens {
            by_index[index] = Some(token);
        }
        tallies.push(tally);
    }
    // One entry holds every token; the others hold none.
    let mut out: Vec<(Tally, Vec<Option<String>>)> =
        tallies.into_iter().map(|t| (t, Vec::new())).collect();
    if let Some(first) = out.first_mut() {
        first.1 = by_index;
    }
    Ok(out)
}

/// `POST /api/v1/nodes/challenge`, then `POST /api/v1/nodes/register` with the proof: the
/// registration's status and body (the challenge's when that is refused).
fn register_one(
    conn: &mut Conn,
    node: &SimNode,
    rng: &mut StdRng,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, body) = conn.request("POST", "/api/v1/nodes/challenge", None, None)?;
    if status != 200 {
        return Ok((status, body));
    }
    let challenge: boson_shared::key_proof::Challenge =
        serde_json::from_slice(&body).context("the challenge is not JSON")?;
    let proof = node.prove(&challenge, clock::unix_now())?;
    let body = serde_json::to_vec(&node.register_body(rng, &proof))?;
    conn.request("POST", "/api/v1/nodes/register", None, Some(&body))
}

fn token_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["sessionToken"].as_str().map(str::to_owned)
}

/// The kinds of request after registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Heartbeat,
    Routing,
    Ice,
}

impl Kind {
    const ALL: [Self; 3] = [Self::Heartbeat, Self::Routing, Self::Ice];

    fn index(self) -> usize {
        match self {
            Self::Heartbeat => 0,
            Self::Routing => 1,
            Self::Ice => 2,
        }
    }
}

/// How requests are offered.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// At these rates a second, over all connections.
    Open {
        heartbeat: f64,
        routing: f64,
        ice: f64,
    },
    /// Back to back, one kind.
    Closed(Kind),
}

/// Drives `load` for `duration`; returns one tally per [`Kind`] (closed loads: one).
fn drive(
    api: SocketAddr,
    population: &Arc<Vec<SimNode>>,
    tokens: &Arc<Vec<Option<String>>>,
    config: &CtlConfig,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Vec<Tally>> {
    let threads = config.connections;
    let start = clock::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let population = Arc::clone(population);
            let tokens = Arc::clone(tokens);
            let seed = config.seed.wrapping_add(0x9e37_79b9 * (thread as u64 + 1));
            std::thread::spawn(move || {
                worker(WorkerInput {
                    api,
                    population: &population,
                    tokens: &tokens,
                    thread,
                    threads,
                    load,
                    start,
                    end: start + duration,
                    seed,
                })
            })
        })
        .collect();
    let mut tallies = vec![Tally::new(), Tally::new(), Tally::new()];
    for handle in handles {
        let mine = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        for (all, one) in tallies.iter_mut().zip(&mine) {
            *all = Tally::merge([&*all, one].into_iter());
        }
    }
    Ok(match load {
        Load::Open { .. } => tallies,
        Load::Closed(kind) => vec![tallies.swap_remove(kind.index())],
    })
}

struct WorkerInput<'a> {
    api: SocketAddr,
    population: &'a [SimNode],
    tokens: &'a [Option<String>],
    thread: usize,
    threads: usize,
    load: Load,
    start: Instant,
    end: Instant,
    seed: u64,
}

/// One connection's share: the open schedules of each kind at `rate / threads`, or back to
/// back.
fn worker(input: WorkerInput<'_>) -> anyhow::Result<[Tally; 3]> {
    let WorkerInput {
        api,
        population,
        tokens,
        thread,
        threads,
        load,
        start,
        end,
        seed,
    } = input;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = Conn::open(api)?;
    let mut tallies = [Tally::new(), Tally::new(), Tally::new()];
    // Heartbeats go round this thread's nodes in order; the others pick a node at random.
    let mut mine = (thread..population.len()).step_by(threads).cycle();
    let intervals: [Option<Duration>; 3] = match load {
        Load::Open {
            heartbeat,
            routing,
            ice,
        } => [heartbeat, routing, ice].map(|rate| {
            let per_thread = rate / threads as f64;
            (per_thread > 0.0).then(|| Duration::from_secs_f64(1.0 / per_thread))
        }),
        Load::Closed(_) => [None; 3],
    };
    // Stagger the threads' first requests over one interval.
    let mut due: [Option<Instant>; 3] = std::array::from_fn(|i| {
        intervals[i].map(|every| start + every.mul_f64(thread as f64 / threads as f64))
    });
    std::thread::sleep(start.saturating_duration_since(clock::now()));
    loop {
        let (kind, at) = match load {
            Load::Closed(kind) => (kind, clock::now()),
            Load::Open { .. } => {
                let Some((index, at)) = due
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.map(|d| (i, d)))
                    .min_by_key(|&(_, d)| d)
                else {
                    break;
                };
                if let Some(every) = intervals[index] {
                    due[index] = Some(at + every);
                }
                (Kind::ALL[index], at)
            }
        };
        if at >= end {
            break;
        }
        let now = clock::now();
        if now < at {
            std::thread::sleep(at - now);
        }
        let node = match kind {
            Kind::Heartbeat => mine.next().unwrap_or(0),
            Kind::Routing | Kind::Ice => rng.random_range(0..population.len()),
        };
        let Some(token) = tokens.get(node).and_then(Option::as_deref) else {
            tallies[kind.index()].fail(format!("{kind:?}: node {node} has no token"));
            continue;
        };
        let sim = &population[node];
        let answer = match kind {
            Kind::Heartbeat => {
                let path = format!("/api/v1/nodes/{}/heartbeat", sim.node_id);
                let body = serde_json::to_vec(&sim.heartbeat_body(&mut rng))?;
                conn.request("POST", &path, Some(token), Some(&body))
            }
            Kind::Routing => {
                let body = serde_json::to_vec(&sim.routing_body(&mut rng))?;
                conn.request("POST", "/api/v1/routing/request", Some(token), Some(&body))
            }
            Kind::Ice => conn.request("GET", "/api/v1/turn/ice", Some(token), None),
        };
        // From when the request was due: queueing behind a slow server counts.
        let latency = clock::now().saturating_duration_since(at);
        let outcome = match answer {
            Ok((status, body)) => {
                if !(200..300).contains(&status) && tallies[kind.index()].first_error.is_none() {
                    tallies[kind.index()].first_error = Some(format!(
                        "{kind:?}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Ok(status)
            }
            Err(error) => {
                conn = Conn::open(api)?;
                Err(format!("{error:#}"))
            }
        };
        tallies[kind.index()].record(outcome, latency, &format!("{kind:?}"));
    }
    Ok(tallies)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
        stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its answer: status and body.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        self.stream.write_all(&out)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((status, start, len)) = parse_head(&self.buf)?
                && self.buf.len() >= start + len
            {
                let body = self.buf[start..start + len].to_vec();
                return Ok((status, body));
            }
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// The status, where the body starts and its `Content-Length`, once the head is complete.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(u16, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(start) = response.parse(buf).context("a malformed answer")?
    else {
        return Ok(None);
    };
    let status = response.code.context("no status")?;
    let mut len = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            len = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
        }
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked answer: this client reads Content-Length only");
        }
    }
    Ok(Some((status, start, len.unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_memory_parse() {
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_head(answer).unwrap(),
            Some((201, answer.len() - 2, 2))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nVmSwap: 0 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn tallies_count_only_success_as_latency() {
        let mut tally = Tally::new();
        tally.record(Ok(200), Duration::from_millis(2), "x");
        tally.record(Ok(500), Duration::from_millis(900), "x");
        tally.record(Err("reset".into()), Duration::from_millis(900), "x");
        let phase = tally.phase("x", Duration::from_secs(1), Duration::from_millis(3));
        assert_eq!((phase.ok, phase.errors), (1, 2));
        assert_eq!(phase.first_error.as_deref(), Some("x: HTTP 500"));
        assert!((phase.p99_ms - 2.0).abs() < 0.01, "{}", phase.p99_ms);
        assert!((phase.server_cpu_us_per_request - 1000.0).abs() < 1e-6);
        assert!((phase.throughput - 1.0).abs() < 1e-9);
    }
}
