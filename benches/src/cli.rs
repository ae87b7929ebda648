//! The command line: `turn`, `raw-forwarder`, `ws`, `ws-baseline`, `quic`, `quic-baseline`,
//! `run`, `plot` and `ctl`.
//!
//! Arguments are parsed once here, checked, and turned into the configs of [`generator`],
//! [`forwarder`], [`ws_generator`], [`ws_baseline`], [`quic_generator`], [`quic_baseline`],
//! [`runner`], [`ws_runner`] and [`plot`]; nothing below reads the environment.

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::generator::{self, LoadConfig, Rate, Target};
use crate::nodes::{self, NodeCredential, TokenKeys};
use crate::quic_baseline::{self, QuicBaselineConfig};
use crate::quic_client::ClientSetup;
use crate::quic_generator::{self, QuicLoadConfig};
use crate::relay_load::{PacketLimit, RelayLoad, RelayOutcome};
use crate::report::ServerKind;
use crate::runner::{self, RunConfig};
use crate::ws_baseline::{self, BaselineConfig};
use crate::ws_client::Auth;
use crate::ws_generator::{self, WsLoadConfig};
use crate::ws_report::WsServerKind;
use crate::ws_runner::{self, WsRunConfig};
use crate::{clock, ctl_load, forwarder, plot, tcp_generator, tcp_runner};

/// `run`'s offered loads unless --loads says otherwise.
const TURN_LOADS: [Rate; 4] = [
    Rate::Max,
    Rate::Pps(20_000),
    Rate::Pps(50_000),
    Rate::Pps(100_000),
];

/// `run --ws`'s offered loads unless --loads says otherwise.
const WS_LOADS: [Rate; 4] = [
    Rate::Max,
    Rate::Pps(20_000),
    Rate::Pps(100_000),
    Rate::Pps(500_000),
];

/// `run --quic`'s offered loads unless --loads says otherwise.
const QUIC_LOADS: [Rate; 4] = [
    Rate::Max,
    Rate::Pps(20_000),
    Rate::Pps(50_000),
    Rate::Pps(100_000),
];

/// Packet sizes of `run` and `run --ws` unless --sizes says otherwise.
const SIZES: [usize; 2] = [100, 1200];

/// Packet sizes of `run --quic` unless --sizes says otherwise: 1200 bytes do not fit a
/// DATAGRAM frame in a 1200-byte QUIC packet (see `quic_client::MAX_PACKET`), 1100 do.
const QUIC_SIZES: [usize; 2] = [100, 1100];

/// The JWT secret the WebSocket commands share by default (benchmarks only: every server
/// they start listens on 127.0.0.1).
pub const DEFAULT_JWT_SECRET: &str = "boson-bench-jwt-secret-0123456789abcdef";

/// Benchmarks of the BosonServer TURN relay against coturn and a raw UDP forwarder.
#[derive(Debug, Parser)]
#[command(name = "boson-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load one TURN server (or the raw forwarder) with ChannelData and measure it.
    Turn(TurnArgs),
    /// The raw forwarder: strips ChannelData headers and forwards payloads to one sink.
    RawForwarder(ForwarderArgs),
    /// Load one WebSocket relay (bosonserver's or the baseline) with SEND messages between
    /// pairs of nodes and measure it.
    Ws(WsArgs),
    /// The WebSocket relay baseline: a plain tokio-tungstenite relay of the same framing.
    WsBaseline(WsBaselineArgs),
    /// Load one QUIC relay (bosonserver's or the baseline) with SEND datagrams between pairs
    /// of nodes and measure it.
    Quic(QuicArgs),
    /// The QUIC relay baseline: a plain quinn relay of the same framing.
    QuicBaseline(QuicBaselineArgs),
    /// Side by side: rounds of bosonserver (uring, epoll), coturn and the raw forwarder.
    Run(RunArgs),
    /// Draw the PNG of a `run --json` report.
    Plot(PlotArgs),
    /// Load the control plane (REST API): register N simulated nodes, then heartbeats,
    /// routing and ICE requests at set rates, then each at its ceiling.
    Ctl(CtlArgs),
}

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// Population sizes, one fresh server each: `1000,10000` (`k` and `m` suffixes allowed).
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "1000")]
    nodes: Vec<usize>,
    /// PostgreSQL URL (with --redis-url); without it the server runs on SQLite. `{n}` in it
    /// is replaced by the population size, so each size can use a fresh database.
    #[arg(long, requires = "redis_url")]
    database_url: Option<String>,
    /// Redis URL (with --database-url); each run gets a key prefix of its own.
    #[arg(long, requires = "database_url")]
    redis_url: Option<String>,
    /// Client connections, one thread each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The heartbeat interval of the server and of every node.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Routing requests a second in the mixed phase.
    #[arg(long, default_value_t = 50.0)]
    routing_rate: f64,
    /// ICE requests a second in the mixed phase.
    #[arg(long, default_value_t = 20.0)]
    ice_rate: f64,
    /// Length of the mixed phase.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of each closed-loop phase (routing-max, heartbeat-max); 0 skips them.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Seed of the population and of the requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The bosonserver binary (default: next to this one).
    #[arg(long)]
    bosonserver: Option<PathBuf>,
    /// A short run that fails on any error: 200 nodes, 1 s phases.
    #[arg(long)]
    smoke: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `1000`, `10k`, `1m`.
fn parse_count(text: &str) -> Result<usize, String> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, scale) = if let Some(d) = text.strip_suffix('k') {
        (d, 1_000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 1_000_000)
    } else {
        (text.as_str(), 1)
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a count such as 1000, 10k or 1m"))?;
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?}: a count from 1 up")),
        Some(n) => Ok(n),
    }
}

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let bench = std::env::current_exe().context("locating this binary")?;
    let bosonserver = bosonserver_path(args.bosonserver, &bench)?;
    let backend = match (args.database_url, args.redis_url) {
        (Some(database_url), Some(redis_url)) => ctl_load::Backend::Postgres {
            database_url,
            redis_url,
        },
        _ => ctl_load::Backend::Sqlite,
    };
    ensure!(
        args.routing_rate.is_finite() && args.routing_rate >= 0.0,
        "--routing-rate must be a rate, 0 or more"
    );
    ensure!(
        args.ice_rate.is_finite() && args.ice_rate >= 0.0,
        "--ice-rate must be a rate, 0 or more"
    );
    ensure!(
        !args.heartbeat_interval.is_zero(),
        "--heartbeat-interval must be more than 0"
    );
    let mut config = ctl_load::CtlConfig {
        bosonserver,
        backend,
        sizes: args.nodes,
        connections: args.connections,
        heartbeat_interval: args.heartbeat_interval,
        routing_rate: args.routing_rate,
        ice_rate: args.ice_rate,
        duration: args.duration,
        max_duration: args.max_duration,
        seed: args.seed,
        quiet: args.quiet,
    };
    if args.smoke {
        config.sizes = vec![200];
        config.connections = config.connections.min(4);
        config.heartbeat_interval = Duration::from_secs(2);
        config.duration = Duration::from_secs(1);
        config.max_duration = Duration::from_secs(1);
    }
    let report = ctl_load::run(&config)?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    writeln!(std::io::stdout().lock(), "{}", report.table())?;
    let failures = report.failures();
    if !failures.is_empty() {
        bail!("the control-plane run failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct TurnArgs {
    /// The TURN server (or, with --raw, the forwarder), on loopback.
    #[arg(long)]
    server: SocketAddr,
    /// The server is the raw forwarder: no TURN, one setup datagram per flow.
    #[arg(long)]
    raw: bool,
    /// TURN over TCP: each allocation is a TCP connection to --server, carrying its STUN
    /// requests and padded ChannelData (RFC 8656); the peer side stays UDP.
    #[arg(long, conflicts_with = "raw")]
    tcp: bool,
    /// TURN REST secret (the server's static-auth-secret).
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Allocations (flows), each with its own client socket.
    #[arg(long, default_value_t = 8)]
    allocations: usize,
    /// Payload bytes per packet (ChannelData adds 4).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Offered load: `max` or packets per second (`20000`, `20k`).
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// How long to send.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long the sink keeps receiving after sending stops.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Packets per sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Core to pin the generator to.
    #[arg(long)]
    core: Option<usize>,
    /// The server's pid, to measure its CPU time per packet.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The core the server runs on, to measure how busy it was.
    #[arg(long)]
    server_core: Option<usize>,
    /// Send each turn's datagrams as one UDP GSO message (--batch at most 64); the sinks
    /// receive with GRO.
    #[arg(long)]
    gso: bool,
    /// One peer sink per allocation instead of one shared.
    #[arg(long)]
    sink_per_allocation: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Write the outcome as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ForwarderArgs {
    /// Address to listen on (127.0.0.1 only).
    #[arg(long)]
    listen: SocketAddrV4,
    /// Exit after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// UDP GRO on receive and GSO on send (the ceiling for batching peers) instead of
    /// recvmmsg/sendmmsg.
    #[arg(long)]
    gso: bool,
}

/// What `ws` and `quic` share: the relay, the nodes, the load and the measurements.
#[derive(Debug, clap::Args)]
struct RelayLoadArgs {
    /// The relay's address, on loopback: TCP for `ws`, UDP for `quic`.
    #[arg(long)]
    relay: SocketAddr,
    /// Register the nodes with bosonserver's REST API at this address (its --http-listen)
    /// and use the tokens it issues. Without it, tokens are minted with --jwt-secret.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// HS256 secret to mint node tokens with (the baseline's --jwt-secret).
    #[arg(long, default_value = DEFAULT_JWT_SECRET)]
    jwt_secret: String,
    /// Sender/receiver pairs (2 connections each).
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Packet bytes per SEND (RECV carries the same); over QUIC at most 1145.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Offered load: `max` or messages per second, all pairs together (`20000`, `20k`).
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// How long to send.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After sending stops, the receivers read until nothing arrived for this long (at most
    /// 10 s more while messages keep arriving).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Messages per send at most: WebSocket frames per write, QUIC datagrams per sender
    /// turn.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Generator threads; pairs are shared among them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Cores to pin the generator threads to, comma separated (round robin).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// The relay's pid, to measure its CPU time per message.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The core the relay runs on, to measure how busy it was.
    #[arg(long)]
    server_core: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Write the outcome as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl RelayLoadArgs {
    /// The scenario, without its nodes yet.
    fn load(&self) -> RelayLoad {
        RelayLoad {
            relay: self.relay,
            nodes: Vec::new(),
            pairs: self.pairs,
            packet: self.size,
            rate: self.rate,
            duration: self.duration,
            drain: self.drain,
            batch: self.batch,
            threads: self.threads,
            cores: self.cores.clone(),
            server_pid: self.server_pid,
            server_core: self.server_core,
        }
    }

    /// Checks the scenario against `limit`, prepares the nodes, runs `generate` with a
    /// progress bar, prints the one-line table and writes the JSON.
    fn run(
        &self,
        limit: PacketLimit,
        generate: impl FnOnce(RelayLoad, &ProgressBar) -> anyhow::Result<RelayOutcome>,
    ) -> anyhow::Result<()> {
        let mut load = self.load();
        load.validate_settings(limit)?;
        load.nodes = prepare_nodes(self.api, &self.jwt_secret, 2 * self.pairs)?;
        let (packet, rate) = (load.packet, load.rate);
        let progress = bar(self.quiet);
        let outcome = generate(load, &progress)?;
        progress.finish_and_clear();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", ws_table_header())?;
        writeln!(out, "{}", ws_table_row(packet, rate, &outcome))?;
        if let Some(path) = &self.json {
            write_json(path, &outcome)?;
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
struct WsArgs {
    #[command(flatten)]
    load: RelayLoadArgs,
    /// The upgrade path.
    #[arg(long, default_value = ws_baseline::PATH)]
    path: String,
    /// How the token is presented: `header` (Authorization: Bearer on the upgrade) or
    /// `message` (an AUTH message after it).
    #[arg(long, value_enum, default_value = "header")]
    auth: AuthArg,
}

/// `--auth`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    /// `Authorization: Bearer` on the upgrade.
    Header,
    /// An AUTH message after the 101.
    Message,
}

impl From<AuthArg> for Auth {
    fn from(arg: AuthArg) -> Self {
        match arg {
            AuthArg::Header => Self::Header,
            AuthArg::Message => Self::Message,
        }
    }
}

/// What both relay baselines take: where to listen, the token secret, threads, lifetime.
#[derive(Debug, clap::Args)]
struct BaselineArgs {
    /// Address to listen on (TCP for `ws-baseline`, UDP for `quic-baseline`).
    #[arg(long)]
    listen: SocketAddr,
    /// HS256 secret node tokens are verified with (at least 32 bytes).
    #[arg(long, default_value = DEFAULT_JWT_SECRET)]
    jwt_secret: String,
    /// tokio worker threads (match the compared server's --workers).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Exit after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
}

#[derive(Debug, clap::Args)]
struct WsBaselineArgs {
    #[command(flatten)]
    baseline: BaselineArgs,
    /// Messages each connection's outbound channel holds before dropping.
    #[arg(long, default_value_t = ws_baseline::DEFAULT_QUEUE)]
    queue: usize,
    /// Never yield between SENDs (to measure what the cooperative yield is worth).
    #[arg(long, hide = true)]
    no_coop: bool,
}

#[derive(Debug, clap::Args)]
struct QuicArgs {
    #[command(flatten)]
    load: RelayLoadArgs,
    /// The relay's certificate (PEM), the only one trusted: bosonserver's
    /// `<data-dir>/relay-cert.pem`, or the baseline's --cert. It must name `localhost`.
    #[arg(long)]
    cert: PathBuf,
}

#[derive(Debug, clap::Args)]
struct QuicBaselineArgs {
    #[command(flatten)]
    baseline: BaselineArgs,
    /// Certificate chain (PEM); with --key, a self-signed one for `localhost` is written
    /// to both paths if neither file exists.
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    key: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("relays").args(["ws", "quic"]))]
struct RunArgs {
    /// Rounds; each visits every server once. Medians are over rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Load per scenario.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Drain after each scenario.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Payload sizes, comma separated. Default: 100,1200; with --quic 100,1100.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Offered loads, comma separated: `max` and/or packets (with --ws, --quic: messages) per
    /// second. Default: max,20k,50k,100k; with --ws max,20k,100k,500k (the baseline relays
    /// a few hundred thousand to two million messages per second on one core); with --quic
    /// max,20k,50k,100k.
    #[arg(long, value_delimiter = ',')]
    loads: Option<Vec<Rate>>,
    /// TURN servers, comma separated, in the order each round visits them: boson-uring,
    /// boson-epoll, boson-uring-nogso, boson-epoll-nogso (--no-udp-offload), coturn,
    /// coturn-src (--coturn-src, with --udp-gso --multiplex-peer; needs
    /// --sink-per-allocation), raw. Default: boson-uring,boson-epoll,coturn,raw; with --tcp
    /// boson-uring,boson-epoll,coturn.
    #[arg(long, value_delimiter = ',', conflicts_with = "relays")]
    servers: Option<Vec<ServerKind>>,
    /// TURN over TCP: the clients reach each TURN server through its TCP listener (the
    /// port of its UDP one), the relayed side stays UDP; the raw forwarder has no TCP side.
    #[arg(long, conflicts_with = "relays")]
    tcp: bool,
    /// The WebSocket relays instead of TURN: bosonserver's relay against the
    /// tokio-tungstenite baseline (--ws-servers), with --pairs, --threads, --workers;
    /// --sizes are packet bytes per message and --loads messages per second.
    #[arg(long)]
    ws: bool,
    /// The QUIC relays: bosonserver's against the quinn baseline, and bosonserver's QUIC
    /// against its WebSocket relay, in the same rounds (the --ws-servers default becomes
    /// boson-quic,quic-baseline,boson-ws); otherwise as --ws.
    #[arg(long, conflicts_with = "ws")]
    quic: bool,
    /// Node relays, comma separated, in the order each round visits them: boson-ws,
    /// ws-baseline, boson-quic, quic-baseline. Default: boson-ws,ws-baseline; with --quic
    /// boson-quic,quic-baseline,boson-ws.
    #[arg(long, value_delimiter = ',', requires = "relays")]
    ws_servers: Option<Vec<WsServerKind>>,
    /// Node relay sender/receiver pairs per scenario.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Node relay generator threads (all pinned to --generator-core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// WebSocket frames per write, QUIC datagrams per sender turn.
    #[arg(long, default_value_t = 64)]
    ws_batch: usize,
    /// Worker threads of each node relay (bosonserver --workers, the baselines' tokio
    /// workers).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The baseline's per-connection channel, in messages.
    #[arg(long, default_value_t = ws_baseline::DEFAULT_QUEUE)]
    ws_queue: usize,
    /// HS256 secret of node tokens, given to every node relay.
    #[arg(long, default_value = DEFAULT_JWT_SECRET)]
    jwt_secret: String,
    /// Allocations (flows) per scenario.
    #[arg(long, default_value_t = 8)]
    allocations: usize,
    /// Packets per sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// The bosonserver binary. Default: next to this binary (target/release/bosonserver for a
    /// release build; `cargo build --release -p bosonserver`).
    #[arg(long)]
    bosonserver: Option<PathBuf>,
    /// coturn's turnserver binary.
    #[arg(long, default_value = "turnserver")]
    turnserver: PathBuf,
    /// coturn's turnserver built from its current source by benches/coturn-src.sh (the
    /// coturn-src server); skipped with a message when absent.
    #[arg(long, default_value = "target/coturn/bin/turnserver")]
    coturn_src: PathBuf,
    /// The generator sends each turn's datagrams of a flow as one UDP GSO message (at most
    /// 64, as WireGuard peers batch) and its sinks receive with GRO.
    #[arg(long)]
    gso: bool,
    /// One peer sink per allocation instead of one shared (coturn's --multiplex-peer allows
    /// one allocation per peer address).
    #[arg(long)]
    sink_per_allocation: bool,
    /// TURN REST secret given to both TURN servers.
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Core the servers run on (taskset -c).
    #[arg(long, default_value_t = 1)]
    server_core: usize,
    /// Core the generator runs on.
    #[arg(long, default_value_t = 0)]
    generator_core: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Before each server's turn, wait up to this long for other tenants' CPU use to drop
    /// below 15% (the load is sampled and recorded either way).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    idle_wait: Duration,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// CI mode: 1 round of 0.5 s at 2k packets/s and at max rate, 2 allocations, both sizes;
    /// fails if any server relays nothing, or loses or receives a foreign packet at 2k/s (see
    /// `Report::smoke_failures`). Without coturn installed it skips coturn, unless CI is set.
    /// With --ws:
    /// 1 round of 1 s at 2k messages/s and at max rate, 2 pairs, both sizes; fails on any
    /// loss at 2k/s or figures that are not sane (see `WsReport::smoke_failures`). With
    /// --quic: the same over boson-quic and quic-baseline.
    #[arg(long)]
    smoke: bool,
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// A report written by `run --json`.
    #[arg(long)]
    json: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "results.png")]
    out: PathBuf,
    /// A TrueType font for the labels.
    #[arg(long, default_value = plot::DEFAULT_FONT)]
    font: PathBuf,
}

/// Parses the command line and runs the subcommand.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Turn(args) => turn(args),
        Command::RawForwarder(args) => {
            let socket = forwarder::bind(args.listen)?;
            let batching = if args.gso {
                forwarder::Batching::GroGso
            } else {
                forwarder::Batching::Mmsg
            };
            let stats = forwarder::run(&socket, args.lifetime, batching)?;
            eprintln!("raw forwarder done: {stats:?}");
            Ok(())
        }
        Command::Ws(args) => ws(args),
        Command::WsBaseline(args) => ws_baseline::run(&BaselineConfig {
            listen: args.baseline.listen,
            secret: args.baseline.jwt_secret.into_bytes(),
            workers: args.baseline.workers,
            queue: args.queue,
            lifetime: args.baseline.lifetime,
            coop: !args.no_coop,
        }),
        Command::Quic(args) => quic(args),
        Command::QuicBaseline(args) => quic_baseline::run(&QuicBaselineConfig {
            listen: args.baseline.listen,
            secret: args.baseline.jwt_secret.into_bytes(),
            workers: args.baseline.workers,
            cert: args.cert,
            key: args.key,
            lifetime: args.baseline.lifetime,
        }),
        Command::Run(args) => run(args),
        Command::Plot(args) => plot::plot_file(&args.json, &args.out, &args.font),
        Command::Ctl(args) => ctl(args),
    }
}

fn turn(args: TurnArgs) -> anyhow::Result<()> {
    let target = if args.raw {
        Target::Raw {
            forwarder: args.server,
        }
    } else {
        Target::Turn {
            server: args.server,
            secret: args.secret,
        }
    };
    let config = LoadConfig {
        target,
        flows: args.allocations,
        payload: args.size,
        rate: args.rate,
        duration: args.duration,
        drain: args.drain,
        batch: args.batch,
        core: args.core,
        user_prefix: format!("bench{}", std::process::id()),
        server_pid: args.server_pid,
        server_core: args.server_core,
        gso: args.gso,
        sink_per_flow: args.sink_per_allocation,
    };
    config.validate()?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let outcome = if args.tcp {
        tcp_generator::run(&config, &progress)?
    } else {
        generator::run(&config, &progress)?
    };
    progress.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| payload | offered | sent pps | delivered pps | loss | reordered | p50 µs | p99 µs | p999 µs | CPU ns/pkt | sink drops | server drops |"
    )?;
    writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    writeln!(
        out,
        "| {} B | {} | {:.0} | {:.0} | {:.2}% | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
        config.payload,
        config.rate,
        outcome.sent_pps,
        outcome.delivered_pps,
        outcome.loss_ratio * 100.0,
        outcome.reordered,
        outcome.latency.p50_us,
        outcome.latency.p99_us,
        outcome.latency.p999_us,
        outcome
            .cpu_ns_per_packet
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
        outcome.sink_drops,
        outcome.server_ingress_drops,
    )?;
    if let Some(path) = args.json {
        write_json(&path, &outcome)?;
    }
    Ok(())
}

/// `count` nodes registered through the REST API at `api`, or minted with `secret`.
fn prepare_nodes(
    api: Option<SocketAddr>,
    secret: &str,
    count: usize,
) -> anyhow::Result<Vec<NodeCredential>> {
    match api {
        Some(api) => nodes::register(api, count),
        None => {
            let now = i64::try_from(clock::unix_now()).unwrap_or(i64::MAX);
            TokenKeys::new(secret.as_bytes())?.mint_nodes(count, now)
        }
    }
}

fn ws(args: WsArgs) -> anyhow::Result<()> {
    let (path, auth) = (args.path, args.auth.into());
    args.load.run(ws_generator::LIMIT, |load, progress| {
        ws_generator::run(&WsLoadConfig { load, path, auth }, progress)
    })
}

fn quic(args: QuicArgs) -> anyhow::Result<()> {
    let cert = args.cert;
    args.load.run(quic_generator::LIMIT, |load, progress| {
        let setup = ClientSetup::from_file(&cert)?;
        quic_generator::run(&QuicLoadConfig { load, setup }, progress)
    })
}

/// The header of the WebSocket and QUIC generators' one-line table.
fn ws_table_header() -> &'static str {
    "| packet | offered | sent msg/s | delivered msg/s | MB/s | loss | p50 µs | p99 µs | p999 µs | CPU ns/msg | gen idle | gen ns/msg | gen CPU ns/msg | gen drops | relay drops | write stalls | PEER_GONE | closed |\n\
     |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
}

fn ws_table_row(packet: usize, rate: Rate, o: &RelayOutcome) -> String {
    format!(
        "| {packet} B | {rate} | {:.0} | {:.0} | {:.1} | {:.2}% | {:.1} | {:.1} | {:.1} | {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} |",
        o.sent_mps,
        o.delivered_mps,
        o.delivered_mbps,
        o.loss_ratio * 100.0,
        o.latency.p50_us,
        o.latency.p99_us,
        o.latency.p999_us,
        o.cpu_ns_per_message
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
        o.generator_idle * 100.0,
        o.generator_ns_per_message
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
        o.generator_cpu_ns_per_message
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
        o.generator_drops
            .map_or_else(|| "-".to_owned(), |d| d.to_string()),
        o.relay_drops
            .map_or_else(|| "-".to_owned(), |d| d.to_string()),
        o.write_stalls,
        o.peer_gone,
        o.closed,
    )
}

/// A progress bar on stderr, or a hidden one.
fn bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.ws || args.quic {
        return run_ws(args);
    }
    let mut args = args;
    if args.smoke {
        args.rounds = 1;
        args.duration = Duration::from_millis(500);
        args.drain = Duration::from_millis(200);
        args.allocations = 2;
        args.loads = Some(vec![Rate::Pps(2_000), Rate::Max]);
    }
    ensure!(
        args.rounds >= 1 && args.rounds <= 100,
        "--rounds must be 1..=100"
    );
    let loads = args.loads.unwrap_or_else(|| TURN_LOADS.to_vec());
    let sizes = args.sizes.unwrap_or_else(|| SIZES.to_vec());
    ensure!(!sizes.is_empty() && !loads.is_empty(), "no sizes or loads");
    let mut servers = args.servers.unwrap_or_else(|| {
        if args.tcp {
            tcp_runner::SERVERS.to_vec()
        } else {
            ServerKind::DEFAULT.to_vec()
        }
    });
    if servers.contains(&ServerKind::CoturnSrc) && !args.coturn_src.is_file() {
        eprintln!(
            "warning: {} not found (build it with benches/coturn-src.sh); skipping coturn-src",
            args.coturn_src.display()
        );
        servers.retain(|s| *s != ServerKind::CoturnSrc);
    }
    ensure!(!servers.is_empty(), "no servers");
    ensure!(
        !args.tcp
            || !servers
                .iter()
                .any(|s| matches!(s, ServerKind::Raw | ServerKind::RawGso)),
        "the raw forwarder has no TCP listener: leave raw and raw-gso out of --servers with --tcp"
    );
    ensure!(
        !args.tcp || (!args.gso && !args.sink_per_allocation),
        "--gso and --sink-per-allocation are UDP-only: leave them out with --tcp"
    );
    ensure!(
        !args.sink_per_allocation
            || !servers
                .iter()
                .any(|s| matches!(s, ServerKind::Raw | ServerKind::RawGso)),
        "--sink-per-allocation: the raw forwarder (raw, raw-gso) has one sink; \
         measure it in a run without that flag"
    );
    ensure!(
        args.duration > Duration::ZERO && args.duration <= Duration::from_secs(600),
        "--duration must be above 0 and at most 10 min"
    );
    let bench = std::env::current_exe().context("locating this binary")?;
    let bosonserver = bosonserver_path(args.bosonserver, &bench)?;
    if servers.contains(&ServerKind::Coturn) && !runner::on_path(&args.turnserver) {
        if !args.smoke || std::env::var_os("CI").is_some() {
            bail!(
                "{} not found: install coturn (apt-get install coturn) or leave out coturn \
                 with --servers",
                args.turnserver.display()
            );
        }
        eprintln!("warning: coturn's turnserver is not installed; the smoke run skips it");
        servers.retain(|s| *s != ServerKind::Coturn);
    }
    let config = RunConfig {
        servers,
        rounds: args.rounds,
        duration: args.duration,
        drain: args.drain,
        payloads: sizes,
        rates: loads,
        flows: args.allocations,
        batch: args.batch,
        bosonserver,
        turnserver: args.turnserver,
        // Absolute: the server runs in its own temporary directory, where a relative path
        // (the default, target/coturn/bin/turnserver) names nothing.
        coturn_src: std::path::absolute(&args.coturn_src).unwrap_or(args.coturn_src),
        gso: args.gso,
        sink_per_flow: args.sink_per_allocation,
        bench,
        secret: args.secret,
        server_core: args.server_core,
        generator_core: args.generator_core,
        idle_wait: args.idle_wait,
        quiet: args.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = if args.tcp {
        tcp_runner::run(&config)?
    } else {
        runner::run(&config)?
    };
    let failures = if args.smoke {
        report.smoke_failures()
    } else {
        report.silent()
    };
    finish_run(
        args.json.as_deref(),
        &report,
        &report.tables(),
        &failures,
        if args.tcp { "TURN over TCP" } else { "TURN" },
    )
}

/// Writes a runner's `report` as JSON to `json` if given, prints its `tables`, and fails
/// with the `failures` of the `what` run if there are any.
fn finish_run(
    json: Option<&Path>,
    report: &impl serde::Serialize,
    tables: &str,
    failures: &[String],
    what: &str,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        write_json(path, report)?;
    }
    writeln!(std::io::stdout().lock(), "{tables}")?;
    if !failures.is_empty() {
        bail!("the {what} run failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `run --ws` and `run --quic`: the node relays side by side.
fn run_ws(args: RunArgs) -> anyhow::Result<()> {
    let mut args = args;
    let servers = args.ws_servers.take().unwrap_or_else(|| {
        if args.quic {
            vec![
                WsServerKind::BosonQuic,
                WsServerKind::QuicBaseline,
                WsServerKind::BosonWs,
            ]
        } else {
            vec![WsServerKind::BosonWs, WsServerKind::WsBaseline]
        }
    });
    if args.smoke {
        args.rounds = 1;
        args.duration = Duration::from_secs(1);
        args.drain = Duration::from_millis(500);
        args.pairs = 2;
        args.threads = 1;
        args.loads = Some(vec![Rate::Pps(2_000), Rate::Max]);
    }
    ensure!(
        args.rounds >= 1 && args.rounds <= 100,
        "--rounds must be 1..=100"
    );
    let loads = args.loads.unwrap_or_else(|| {
        if args.quic {
            QUIC_LOADS.to_vec()
        } else {
            WS_LOADS.to_vec()
        }
    });
    let sizes = args.sizes.unwrap_or_else(|| {
        if args.quic {
            QUIC_SIZES.to_vec()
        } else {
            SIZES.to_vec()
        }
    });
    ensure!(!sizes.is_empty() && !loads.is_empty(), "no sizes or loads");
    ensure!(!servers.is_empty(), "no relays");
    ensure!(
        args.duration > Duration::ZERO && args.duration <= Duration::from_secs(600),
        "--duration must be above 0 and at most 10 min"
    );
    ensure!((1..=64).contains(&args.workers), "--workers must be 1..=64");
    let bench = std::env::current_exe().context("locating this binary")?;
    let bosonserver = bosonserver_path(args.bosonserver, &bench)?;
    let config = WsRunConfig {
        servers,
        rounds: args.rounds,
        duration: args.duration,
        drain: args.drain,
        packets: sizes,
        rates: loads,
        pairs: args.pairs,
        threads: args.threads,
        batch: args.ws_batch,
        workers: args.workers,
        queue: args.ws_queue,
        bosonserver,
        bench,
        jwt_secret: args.jwt_secret,
        server_core: args.server_core,
        generator_core: args.generator_core,
        idle_wait: args.idle_wait,
        quiet: args.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    // Checks pairs, sizes, threads and batch once, before any relay starts.
    for &packet in &config.packets {
        let load = RelayLoad {
            relay: SocketAddr::from(([127, 0, 0, 1], 1)),
            nodes: Vec::new(),
            pairs: config.pairs,
            packet,
            rate: Rate::Max,
            duration: config.duration,
            drain: config.drain,
            batch: config.batch,
            threads: config.threads,
            cores: Vec::new(),
            server_pid: None,
            server_core: None,
        };
        if config.servers.iter().any(|s| !s.is_quic()) {
            load.validate_settings(ws_generator::LIMIT)?;
        }
        if config.servers.iter().any(|s| s.is_quic()) {
            load.validate_settings(quic_generator::LIMIT)?;
        }
    }
    let report = ws_runner::run(&config)?;
    let failures = if args.smoke {
        report.smoke_failures()
    } else {
        report.silent()
    };
    let what = if args.quic { "QUIC" } else { "WebSocket" };
    finish_run(
        args.json.as_deref(),
        &report,
        &report.tables(),
        &failures,
        what,
    )
}

/// `--bosonserver`, made absolute (servers run in a directory of their own), or the
/// `bosonserver` next to this binary.
fn bosonserver_path(given: Option<PathBuf>, bench: &Path) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => {
            std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
        }
        None => Ok(sibling(bench, "bosonserver")),
    }
}

/// `name` in the directory of `exe`.
fn sibling(exe: &Path, name: &str) -> PathBuf {
    exe.parent()
        .map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
