//! wireguard-go in a namespace, configured with `wg`.
//!
//! wireguard-go names its control socket after its interface in `/var/run/wireguard`, a
//! directory every namespace shares, so each instance gets an interface name of its own with
//! the test's pid in it (`wgPIDxN`, at most 15 bytes). Dropping an instance stops it and
//! removes its socket and key file; [`WireGuard::start`] first removes the sockets of test
//! processes that are gone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::wait_until;
use crate::netns::{Namespace, Station};
use crate::{process_gone, run};

/// Where wireguard-go (and `wg`) keep the control sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";

/// A key pair made by `wg genkey` and `wg pubkey`, base64 as `wg` writes them.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The private key.
    pub private: String,
    /// Its public key.
    pub public: String,
}

impl Keys {
    /// A fresh pair.
    ///
    /// # Panics
    /// When `wg` fails.
    #[must_use]
    pub fn generate() -> Self {
        let private = run("wg", &["genkey"]).trim().to_owned();
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(private.as_bytes()).unwrap();
        }
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "wg pubkey failed");
        let public = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Self { private, public }
    }
}

/// One wireguard-go instance: its interface in a station's namespace, up, with an address in
/// the tunnel's /24 and a private key; stopped on drop.
#[derive(Debug)]
pub struct WireGuard {
    /// The interface's name (also the control socket's).
    pub interface: String,
    /// Its key pair.
    pub keys: Keys,
    /// Its address inside the tunnel.
    pub address: Ipv4Addr,
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// The file holding its private key (as `--wg-private-key-file` wants it).
    pub key_file: PathBuf,
    namespace: Namespace,
    child: Option<Child>,
}

impl WireGuard {
    /// Starts wireguard-go in `station`'s namespace with a fresh key, listening on
    /// `listen_port`, with `address`/24 on its interface.
    ///
    /// # Panics
    /// When wireguard-go does not come up within 10 s, or `wg`/`ip` fail.
    #[must_use]
    pub fn start(station: &Station, address: Ipv4Addr, listen_port: u16) -> Self {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        sweep_leftovers();
        let pid = std::process::id();
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let interface = format!("wg{pid}x{n}");
        assert!(interface.len() <= 15, "{interface} is too long");
        let keys = Keys::generate();
        let key_file = std::env::temp_dir().join(format!("{interface}.key"));
        std::fs::write(&key_file, format!("{}\n", keys.private)).unwrap();
        let namespace = station.namespace.clone();
        let child = namespace
            .command("wireguard-go")
            .args(["-f", &interface])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("wireguard-go: {e}"));
        let mut wg = Self {
            interface,
            keys,
            address,
            listen_port,
            key_file,
            namespace,
            child: Some(child),
        };
        let socket = wg.socket();
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            socket.exists()
        });
        if !up {
            let status = wg.child.as_mut().map(Child::try_wait);
            panic!(
                "wireguard-go {} made no control socket in 10 s: {status:?}",
                wg.interface
            );
        }
        let port = listen_port.to_string();
        let key_file = wg.key_file.to_str().unwrap().to_owned();
        wg.wg(&[
            "set",
            &wg.interface,
            "private-key",
            &key_file,
            "listen-port",
            &port,
        ]);
        let cidr = format!("{address}/24");
        wg.namespace
            .ip(&["addr", "add", &cidr, "dev", &wg.interface]);
        wg.namespace.ip(&["link", "set", &wg.interface, "up"]);
        wg
    }

    /// `wg args` (it reaches the instance through its control socket, from any namespace).
    ///
    /// # Panics
    /// When `wg` fails.
    pub fn wg(&self, args: &[&str]) -> String {
        run("wg", args)
    }

    /// Adds (or changes) `peer` with its tunnel address as allowed IP, the given endpoint
    /// (none: learnt from the peer's first packet) and a keepalive.
    pub fn add_peer(&self, peer: &Self, endpoint: Option<SocketAddr>, keepalive: Option<u16>) {
        let allowed = format!("{}/32", peer.address);
        let mut args = vec![
            "set".to_owned(),
            self.interface.clone(),
            "peer".to_owned(),
            peer.keys.public.clone(),
            "allowed-ips".to_owned(),
            allowed,
        ];
        if let Some(endpoint) = endpoint {
            args.extend(["endpoint".to_owned(), endpoint.to_string()]);
        }
        if let Some(seconds) = keepalive {
            args.extend(["persistent-keepalive".to_owned(), seconds.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.wg(&args);
    }

    /// The endpoint `wg` shows for `peer`, if any.
    #[must_use]
    pub fn endpoint(&self, peer: &Self) -> Option<SocketAddr> {
        let out = self.wg(&["show", &self.interface, "endpoints"]);
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(key, _)| *key == peer.keys.public)
            .and_then(|(_, endpoint)| endpoint.trim().parse().ok())
    }

    /// The unix time of the latest handshake with `peer` (0: none yet).
    #[must_use]
    pub fn latest_handshake(&self, peer: &Self) -> u64 {
        let out = self.wg(&["show", &self.interface, "latest-handshakes"]);
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(key, _)| *key == peer.keys.public)
            .and_then(|(_, t)| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The process id of wireguard-go.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("{SOCKET_DIR}/{}.sock", self.interface))
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// Removes the control sockets and key files of wireguard-go instances of test processes
/// that are gone.
fn sweep_leftovers() {
    let stale = |name: &str, suffix: &str| {
        name.strip_prefix("wg")
            .and_then(|rest| rest.strip_suffix(suffix))
            .and_then(|rest| rest.split_once('x'))
            .is_some_and(|(pid, n)| n.bytes().all(|b| b.is_ascii_digit()) && process_gone(pid))
    };
    for (dir, suffix) in [
        (PathBuf::from(SOCKET_DIR), ".sock"),
        (std::env::temp_dir(), ".key"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if stale(&name.to_string_lossy(), suffix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
