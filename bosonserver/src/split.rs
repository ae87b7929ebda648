//! The planes as two processes: `bosonserver dataplane --segment PATH` (STUN/TURN and the node
//! relay) and `bosonserver control --segment PATH` (REST API, registry, metrics), linked by a
//! shared-memory segment file (see [`crate::planes`]). Either may start first, and either may
//! be killed and restarted while the other runs: the segment keeps the rings, and each side
//! brings a new incarnation of the other up to date.
//!
//! The dataplane reads the JWT secret, the public host and the host id the same way as `run`
//! (flags, environment, or the files generated in `--data-dir`), so both processes must share
//! those settings or the data directory. The TURN settings (secrets, per-user quota, peer
//! lists) it also reads at start, to serve before a control plane attaches; the control
//! plane's values replace them when it does (it is authoritative: a dataplane restarted after
//! a secret rotation gets the rotated secrets, whatever its own environment says).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use boson_channel::{DataplaneEnd, Segment};
use boson_control::clock::SystemClock;
use boson_control::config::{Config, ControlArgs};
use boson_dataplane::Dataplane;

use crate::dataplane::DataplanePlan;
use crate::planes::{self, ControlLink, DataplanePump};
use crate::relay::{CommandApplier, Grants, RelayArgs, RelayAuth, TurnSettings};

/// `bosonserver control`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlProcessArgs {
    #[command(flatten)]
    control: ControlArgs,

    /// Shared-memory segment file linking to a `bosonserver dataplane` (normally under
    /// /dev/shm). Without it, the control plane runs with no dataplane.
    #[arg(long, env = "BOSON_SEGMENT")]
    segment: Option<PathBuf>,

    /// The dataplane's worker count: the control plane creates the segment with this shape if
    /// it starts first, and checks it otherwise. Without it, it waits for the dataplane to
    /// create the segment.
    #[arg(long, env = "BOSON_WORKERS", requires = "segment")]
    workers: Option<usize>,
}

/// `bosonserver dataplane`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DataplaneProcessArgs {
    /// Shared-memory segment file linking to `bosonserver control` (normally under /dev/shm).
    /// Created if missing; checked against this build and `--workers` if not.
    #[arg(long, env = "BOSON_SEGMENT")]
    segment: PathBuf,

    /// The settings of `run`; of the control plane's, only the JWT secret, the TURN settings
    /// (until the control plane pushes its own), the public host, the data directory and the
    /// host id are used.
    #[command(flatten)]
    run: crate::RunArgs,
}

/// Runs the control plane, linked to a dataplane through `--segment` if given.
pub(crate) fn run_control(args: ControlProcessArgs) -> anyhow::Result<()> {
    let config = args.control.resolve().context("invalid configuration")?;
    let Some(path) = args.segment else {
        return crate::runtime()?.block_on(crate::serve_control(config, None));
    };
    let segment = match args.workers {
        Some(workers) => Segment::open_or_create(planes::spec(workers)?, &path)
            .with_context(|| format!("opening the segment {}", path.display()))?,
        None => wait_for_segment(&path)?,
    };
    let end = segment
        .control()
        .with_context(|| format!("claiming the control end of {}", path.display()))?;
    tracing::info!(
        segment = %path.display(),
        incarnation = end.incarnation().get(),
        cores = segment.spec().cores,
        "control plane attached to the segment"
    );
    let planes = crate::Planes {
        link: ControlLink::new(end, None),
        // The dataplane process is drained by its own signals, not from here.
        drain: None,
    };
    crate::runtime()?.block_on(crate::serve_control(config, Some(planes)))
}

/// Runs the dataplane, linked to a control plane through `--segment`, until SIGINT or
/// SIGTERM.
pub(crate) fn run_dataplane(args: DataplaneProcessArgs) -> anyhow::Result<()> {
    let DataplaneProcessArgs { segment: path, run } = args;
    let data_dir = run.control.data_dir.clone();
    let announced_port = run.control.turn_port;
    let config = run.control.resolve().context("invalid configuration")?;
    let plan = run
        .dataplane
        .plan(&config.turn, announced_port)
        .context("invalid configuration")?;
    // Before binding any port: a segment of another shape or build is a startup error.
    let segment = Segment::open_or_create(planes::spec(plan.workers())?, &path)
        .with_context(|| format!("opening the segment {}", path.display()))?;
    let end = segment
        .dataplane()
        .with_context(|| format!("claiming the dataplane end of {}", path.display()))?;
    let incarnation = end.incarnation().get();
    let (dataplane, pump, _) = start_dataplane(&config, plan, &run.relay, &data_dir, end)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?
        .block_on(async {
            tokio::spawn(ignore_hangup(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            )));
            // Handlers first, then the line a supervisor waits for: a SIGTERM sent as soon
            // as it is read must stop the dataplane cleanly, not kill it.
            let signal = crate::shutdown_signal();
            tracing::info!(
                segment = %path.display(),
                incarnation,
                "dataplane attached to the segment"
            );
            signal.await;
        });
    drop(pump);
    dataplane
        .shutdown()
        .map(|_| ())
        .context("stopping the dataplane")
}

/// SIGHUP belongs to the control plane (it re-reads the TURN secrets file and pushes the
/// secrets here); a dataplane sent one with it must not end. `hangup` is installed by the caller, before the dataplane says it is attached.
async fn ignore_hangup(hangup: std::io::Result<tokio::signal::unix::Signal>) {
    let Ok(mut hangup) = hangup else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!(
            "SIGHUP ignored: the control plane re-reads the TURN secrets and pushes them"
        );
    }
}

/// Starts the workers with the node relay, and the pump linking them to `end`; the waker
/// is for a control plane in the same process.
pub(crate) fn start_dataplane(
    config: &Config,
    plan: DataplanePlan,
    relay: &RelayArgs,
    data_dir: &Path,
    end: DataplaneEnd,
) -> anyhow::Result<(Dataplane, DataplanePump, planes::Waker)> {
    let grants = Arc::new(Grants::default());
    let auth = Arc::new(RelayAuth::new(
        boson_control::domain::auth::Tokens::new(&config.jwt),
        Arc::clone(&grants),
        Arc::new(SystemClock),
    ));
    let (events, waker, inbox) = planes::pump_inbox();
    let mesh_enabled = relay.mesh_enabled();
    let linker = relay.linker_settings();
    let relay = relay
        .config(auth, Some(Arc::clone(&events)), config.host.id, data_dir)
        .context("invalid configuration")?;
    let peers = plan.peer_policy();
    let dataplane = plan.with_relay(relay).with_events(events).start()?;
    let turn = TurnSettings::new(dataplane.settings_handle(), peers);
    // Mesh links are opened by the process that owns the relay's sockets, to the hosts the
    // control plane announces over the segment.
    let mesh = match dataplane.relay_handle().filter(|_| mesh_enabled) {
        Some(handle) => Some(
            crate::mesh::spawn_linker(handle, config.host.id, linker)
                .context("starting the mesh linker")?,
        ),
        None => None,
    };
    let applier = CommandApplier::new(grants, dataplane.relay_handle(), Some(turn), mesh);
    let pump = DataplanePump::spawn(end, inbox, applier, dataplane.stats_reader())?;
    Ok((dataplane, pump, waker))
}

/// Attaches the segment at `path` once the dataplane has created it.
fn wait_for_segment(path: &Path) -> anyhow::Result<Segment> {
    let mut said = false;
    loop {
        match Segment::attach(path) {
            Ok(segment) => return Ok(segment),
            Err(boson_channel::AttachError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                if !said {
                    tracing::info!(
                        segment = %path.display(),
                        "waiting for the dataplane to create the segment (or give --workers)"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("attaching {}", path.display()));
            }
        }
    }
}
