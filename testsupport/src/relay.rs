//! Relay hosts: `bosonserver run` in a namespace on the simulated internet, on an address of
//! its own, sharing a PostgreSQL and a Redis with the other hosts and a mesh key. Its log goes
//! to a file in its directory (shown when it fails to come up); killed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use crate::clock::wait_until;
use crate::http;
use crate::netns::Station;

/// The mesh key every relay host of a test shares.
pub const MESH_KEY: &str = "testsupport-mesh-key-0123456789abcdef";
/// The JWT secret every relay host of a test shares (node tokens work on each).
pub const JWT_SECRET: &str = "testsupport-jwt-secret-0123456789abcdef";
/// The TURN REST secret every relay host of a test shares.
pub const TURN_SECRET: &str = "testsupport-turn-secret";
/// The REST API's port on every host.
pub const HTTP_PORT: u16 = 8080;
/// STUN/TURN's port on every host.
pub const TURN_PORT: u16 = 3478;
/// The node relay's port (WebSocket over TCP, QUIC over UDP) on every host.
pub const RELAY_PORT: u16 = 8443;

/// How a relay host runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `bosonserver` binary.
    pub binary: PathBuf,
    /// The shared PostgreSQL's URL.
    pub database_url: String,
    /// The shared Redis's URL, if any.
    pub redis_url: Option<String>,
    /// The host's region.
    pub region: String,
    /// Dataplane workers (one is plenty for a test, and kind to a busy machine).
    pub workers: u16,
    /// How often the host publishes itself to the others.
    pub host_heartbeat: Duration,
    /// Silence after which the others drop it.
    pub host_timeout: Duration,
    /// How long a SIGTERM drain waits at most.
    pub drain_timeout: Duration,
    /// Two processes (`bosonserver control` and `bosonserver dataplane` on one shared-memory
    /// segment) rather than one `bosonserver run`, so the control plane can restart alone.
    pub split: bool,
    /// Further arguments, given to every process of the host (so only flags that
    /// `run`, `control` and `dataplane` all take, such as `--allowed-peers`).
    pub extra: Vec<String>,
}
/// One relay host.
#[derive(Debug)]
pub struct RelayHost {
    /// Where it runs.
    pub station: Station,
    /// Its host id.
    pub id: String,
    settings: Settings,
    dir: tempfile::TempDir,
    /// `bosonserver run`, or the dataplane when split.
    child: Option<Child>,
    /// The control plane, when split.
    control: Option<Child>,
}

impl RelayHost {
    /// A host with id `id` in `station`, not started yet.
    ///
    /// # Panics
    /// When its directory cannot be made.
    #[must_use]
    pub fn new(station: Station, id: &str, settings: Settings) -> Self {
        Self {
            station,
            id: id.to_owned(),
            settings,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            control: None,
        }
    }

    /// Its address.
    #[must_use]
    pub fn ip(&self) -> Ipv4Addr {
        self.station.ip
    }

    /// `http://IP:8080`, the control plane's base URL.
    #[must_use]
    pub fn base(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip())
    }

    /// The REST API's address.
    #[must_use]
    pub fn http(&self) -> SocketAddr {
        (self.ip(), HTTP_PORT).into()
    }

    /// Its directory (data, log).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id while it runs (the dataplane's, when split).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server (both processes when split) and waits until `/health/ready`
    /// answers 200.
    ///
    /// # Panics
    /// When it does not become ready within 60 s (its log is in the message).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "host {} already runs", self.id);
        if self.settings.split {
            self.control = Some(self.spawn("control"));
            self.child = Some(self.spawn("dataplane"));
        } else {
            self.child = Some(self.spawn("run"));
        }
        self.wait_ready();
    }

    /// Kills the control plane (SIGKILL) of a split host and starts it again, while the
    /// dataplane runs on; waits until it is ready.
    ///
    /// # Panics
    /// When the host is not split, or the control plane does not come back within 60 s.
    pub fn restart_control(&mut self) {
        assert!(self.settings.split, "host {} runs as one process", self.id);
        if let Some(mut control) = self.control.take() {
            let _ = control.kill();
            let _ = control.wait();
        }
        self.control = Some(self.spawn("control"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let addr = self.http();
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            http::get(addr, "/health/ready").is_some_and(|r| r.status == 200)
        });
        assert!(
            ready,
            "relay host {} not ready in 60 s; its log:\n{}",
            self.id,
            self.log_text()
        );
    }

    /// Spawns `bosonserver MODE` (run, control or dataplane) with this host's arguments.
    fn spawn(&self, mode: &str) -> Child {
        let ip = self.ip();
        let s = &self.settings;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args: Vec<String> = vec![mode.to_owned()];
        if mode != "run" {
            args.extend([
                "--segment".to_owned(),
                self.dir.path().join("segment").display().to_string(),
            ]);
        }
        args.extend(
            [
                "--workers",
                &s.workers.to_string(),
                "--region",
                &s.region,
                "--host-id",
                &self.id,
                "--database-url",
                &s.database_url,
                "--jwt-secret",
                JWT_SECRET,
                "--turn-static-secret",
                TURN_SECRET,
                "--http-listen",
                &format!("{ip}:{HTTP_PORT}"),
                "--public-host",
                &ip.to_string(),
                "--public-relay-url",
                &format!("ws://{ip}:{RELAY_PORT}/relay"),
                "--public-quic-addr",
                &format!("{ip}:{RELAY_PORT}"),
                "--host-heartbeat-interval",
                &ms(s.host_heartbeat),
                "--host-timeout",
                &ms(s.host_timeout),
            ]
            .map(str::to_owned),
        );
        if let Some(redis) = &s.redis_url {
            args.extend(["--redis-url".to_owned(), redis.clone()]);
        }
        if mode != "control" {
            args.extend(
                [
                    "--turn-listen",
                    &format!("{ip}:{TURN_PORT}"),
                    "--relay-listen",
                    &format!("{ip}:{RELAY_PORT}"),
                    "--mesh-key",
                    MESH_KEY,
                    // Plain ws:// relay URLs: these stations test nodes, not the mesh's TLS
                    // (bosonserver/tests/relay_mesh.rs does).
                    "--danger-plain-mesh",
                    "--drain-timeout",
                    &ms(s.drain_timeout),
                ]
                .map(str::to_owned),
            );
        }
        args.extend(s.extra.iter().cloned());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut command = self.station.namespace.command(s.binary.to_str().unwrap());
        command
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        crate::clear_config_env(&mut command);
        command.env("RUST_LOG", "info");
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", s.binary.display()))
    }

    /// Whether every process of the host still runs.
    pub fn running(&mut self) -> bool {
        self.child.is_some()
            && self
                .child
                .iter_mut()
                .chain(self.control.iter_mut())
                .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (both processes when split): it cannot deregister.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(control) = &self.control {
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(libc::pid_t::try_from(control.id()).unwrap(), libc::SIGKILL);
            }
        }
    }

    /// SIGTERM: it drains.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe {
                libc::kill(libc::pid_t::try_from(pid).unwrap(), signal);
            }
        }
    }

    /// Waits up to `within` for the server to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(within, Duration::from_millis(20), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Its Prometheus text, if it answers.
    #[must_use]
    pub fn metrics(&self) -> Option<String> {
        http::get(self.http(), "/metrics")
            .filter(|r| r.status == 200)
            .map(|r| r.body)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Its log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for RelayHost {
    fn drop(&mut self) {
        for mut child in self.child.take().into_iter().chain(self.control.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
