//! Private PostgreSQL and Redis servers for the tests that must stop them or reach them from
//! other network namespaces: a throw-away cluster and redis-server on an address the test
//! chooses, stopped on drop.

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use crate::{installed, is_root};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A TCP port free on `ip` now.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The newest PostgreSQL server binaries, Debian's layout.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// A private PostgreSQL cluster that the test can stop and start.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ip: IpAddr,
    port: u16,
    root: bool,
}

impl Postgres {
    /// A cluster on loopback.
    pub fn init(bin: PathBuf) -> Self {
        Self::init_on(bin, LOOPBACK, None)
    }

    /// A cluster listening on `ip` that trusts clients from `clients` (a CIDR) besides
    /// loopback.
    pub fn init_on(bin: PathBuf, ip: IpAddr, clients: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = is_root();
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        if root {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            Command::new("chmod")
                .args(["755", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            Command::new("chown")
                .args(["postgres:", data.to_str().unwrap()])
                .status()
                .unwrap();
        }
        let postgres = Self {
            dir,
            bin,
            ip,
            port: free_port(ip),
            root,
        };
        let status = postgres
            .command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ])
            .arg("--no-sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        if let Some(clients) = clients {
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).unwrap();
            rules.push_str(&format!("host all all {clients} trust\n"));
            std::fs::write(&hba, rules).unwrap();
        }
        postgres.start();
        postgres
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off",
            self.port,
            self.data().display(),
            self.ip
        );
        let status = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-w", "-o", &options])
            .args(["-l", self.data().join("server.log").to_str().unwrap()])
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }

    /// Stops it the way an outage does: every connection is cut.
    pub fn stop(&self) {
        let status = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-w", "-m", "immediate"])
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop failed");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/postgres", self.ip, self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate"])
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private redis-server that the test can stop and start on one port.
pub struct Redis {
    ip: IpAddr,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// One on loopback, not started yet.
    #[expect(
        clippy::new_without_default,
        reason = "it takes a free port: not a plain default value"
    )]
    pub fn new() -> Self {
        Self::on(LOOPBACK)
    }

    /// One listening on `ip`, not started yet.
    pub fn on(ip: IpAddr) -> Self {
        Self {
            ip,
            port: free_port(ip),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", &self.ip.to_string()])
            // Clients from other network namespaces are not loopback; the address is private
            // to the test.
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect((self.ip, self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.ip, self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
