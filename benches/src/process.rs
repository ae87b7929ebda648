//! Server processes under test: started pinned to a core, logging to a file in a temporary
//! directory of their own, dying with the runner, and stopped when their guard drops.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A command that runs `program` pinned to `core` (`taskset -c`).
pub fn pinned(core: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(core.to_string()).arg(program);
    command
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port on 127.0.0.1 that was free a moment ago for both TCP and UDP: for a server that
/// binds one port number over both (a TURN listener, whose TCP side is on by default; the
/// node relay and its QUIC counterpart).
pub fn free_tcp_and_udp_port() -> anyhow::Result<u16> {
    for _ in 0..32 {
        let port = free_tcp_port()?;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP in 32 tries")
}

/// Fails with a build hint if `path` is not a file.
pub fn ensure_file(path: &Path, hint: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!("{} not found (build it: {hint})", path.display());
    }
    Ok(())
}

/// A running server; SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    name: &'static str,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// A fresh temporary directory for a server called `name`.
    pub fn tempdir(name: &str) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("boson-bench-{name}-"))
            .tempdir()
            .context("creating a temporary directory")
    }

    /// Starts `command` in `dir`, stdout and stderr to `dir/<name>-<id>.log`. The process
    /// gets `PR_SET_PDEATHSIG`, so it dies with this one even if no destructor runs.
    pub fn spawn(
        mut command: Command,
        name: &'static str,
        id: usize,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let log = dir.path().join(format!("{name}-{id}.log"));
        let file = File::create(&log).context("creating the server log")?;
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} under taskset"))?;
        Ok(Self {
            child,
            name,
            log,
            dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's name in tables and messages.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!(
            "--- {} (last lines) ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }

    /// Stops the server now.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for _ in 0..30 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}
