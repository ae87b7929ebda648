//! A simulated internet of network namespaces, with relay hosts on it and home routers that
//! NAT their LANs onto it.
//!
//! ```text
//!   root namespace (the test, PostgreSQL, Redis)         10.231.S.1
//!        │ one veth: traffic to and from the root namespace is its INPUT/OUTPUT, never FORWARD
//!   core namespace: bridge br0 ── the "internet", 10.231.S.0/24
//!        ├── host namespace (eth0 10.231.S.11)            Internet::host
//!        ├── router namespace (wan0 10.231.S.12) ─ NAT ─ bridge lan, 192.168.L.1/24
//!        │        └── node namespace (eth0 192.168.L.10, default route via the router)
//!        └── ...
//! ```
//!
//! Nothing is bridged or routed in the root namespace, so its firewall does not matter: on a
//! host where Docker runs, the root namespace's `FORWARD` policy is `DROP` and br_netfilter
//! passes bridged frames through it, which would drop every packet between two namespaces on
//! a bridge there. Each new namespace starts with an empty firewall whose policies accept.
//!
//! Names carry the test's pid (`bst-PID-K-NAME` for namespaces, `bstPIDgK` for the one link in
//! the root namespace), so concurrent test processes do not collide, and [`Internet::create`]
//! first removes what test processes that are gone left behind. Dropping an [`Internet`] kills
//! every process still running in its namespaces and deletes them, panics included.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::{process_gone, run, run_quietly};

/// The prefix of every namespace this module makes.
const PREFIX: &str = "bst-";

/// A network namespace made by an [`Internet`]: a handle, cheap to clone; the [`Internet`]
/// owns its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    /// Its name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }

    /// A command that runs `program` in this namespace (`ip netns exec`, which execs in place:
    /// the child's pid is the program's, and signals to the child reach it).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }

    /// Runs `program` with `args` in this namespace, panicking if it fails; returns its output.
    ///
    /// # Panics
    /// When the program fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.0, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n NAMESPACE args`, panicking if it fails.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Spawns `program` with `args` in this namespace, its output discarded.
    ///
    /// # Panics
    /// When it cannot be spawned.
    #[must_use]
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.0))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets `f` opens live there (and
    /// stay there when handed back).
    ///
    /// # Panics
    /// When the namespace cannot be entered, or `f` panics.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    // SAFETY: a valid namespace descriptor; setns only changes this thread's
                    // network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The pids of the processes running in this namespace.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.0])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A namespace with one address on the internet: a relay host, or a node on a router's LAN
/// (then its address is private).
#[derive(Debug, Clone)]
pub struct Station {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its address (on the internet for a host, on the LAN for a node behind a router).
    pub ip: Ipv4Addr,
}

/// How a home router maps its LAN's UDP flows onto its WAN address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Plain `MASQUERADE`: one flow keeps its source port for every destination as long as the
    /// port is free (endpoint-independent mapping, RFC 4787), filtering by conntrack
    /// (address-and-port-dependent). Two such NATs can be punched through.
    ///
    /// Like every home router (OpenWrt's `wan` zone rejects input by default), the router
    /// drops what arrives on its WAN for itself unless it belongs to a connection it knows
    /// ([`Internet::router`]). That matters for punching: without it, a peer's probe that
    /// arrives before the node behind has sent its own is recorded by conntrack as a
    /// connection to the router itself, and the node's probe back then clashes with it and
    /// is masqueraded from another port, which the peer's NAT filters.
    EndpointIndependent,
    /// `MASQUERADE --random-fully`: a new random port for every destination (symmetric).
    Symmetric,
}

/// A home router: a namespace with a WAN leg on the internet and a LAN bridge, masquerading
/// the LAN behind its WAN address.
#[derive(Debug, Clone)]
pub struct Router {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its public address on the internet.
    pub wan: Ipv4Addr,
    /// Its address on the LAN (the nodes' default gateway).
    pub lan: Ipv4Addr,
    /// Its NAT.
    pub nat: Nat,
    next_node: u8,
}

impl Router {
    /// Forwards UDP arriving on the WAN address at `port` to `to` on the LAN, same port (a
    /// port forward, as a user sets up for a WireGuard peer).
    pub fn forward_udp(&self, port: u16, to: Ipv4Addr) {
        let port = port.to_string();
        self.namespace.run(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "wan0",
                "-p",
                "udp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{to}:{port}"),
            ],
        );
    }
}

/// The simulated internet: a bridge in a namespace of its own, a veth from it to the root
/// namespace (the gateway address, where a test's PostgreSQL and Redis listen), and every
/// namespace attached to it. Torn down on drop.
#[derive(Debug)]
pub struct Internet {
    pid: u32,
    k: u8,
    subnet: u8,
    core: Namespace,
    next_address: u8,
    next_lan: u8,
    next_port: u32,
    /// Every namespace made, the core first.
    namespaces: Vec<Namespace>,
    /// The root namespace's end of the gateway veth.
    root_link: Option<String>,
}

impl Internet {
    /// Internet `k` of this process (tests in one process may run at once, each with its own
    /// `k`; at most 10 at once).
    ///
    /// # Panics
    /// When a namespace or link cannot be made (not root, no `ip`).
    #[must_use]
    pub fn create(k: u8) -> Self {
        assert!(k < 10, "k is one digit");
        // Two tests must not pick the same free subnet before either takes it.
        static CREATING: Mutex<()> = Mutex::new(());
        let _creating = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        sweep_leftovers();
        let pid = std::process::id();
        let core = Namespace(format!("{PREFIX}{pid}-{k}-core"));
        let mut net = Self {
            pid,
            k,
            subnet: free_subnet(pid),
            core: core.clone(),
            next_address: 11,
            next_lan: 1,
            next_port: 0,
            namespaces: Vec::new(),
            root_link: None,
        };
        net.add_namespace(&core);
        core.ip(&["link", "add", "br0", "type", "bridge"]);
        core.ip(&["link", "set", "br0", "up"]);
        // The root namespace's leg: at most 15 bytes, "bst" + pid (7) + "g" + k.
        let root_link = format!("bst{pid}g{k}");
        run(
            "ip",
            &[
                "link",
                "add",
                &root_link,
                "type",
                "veth",
                "peer",
                "name",
                "gw",
                "netns",
                core.name(),
            ],
        );
        net.root_link = Some(root_link.clone());
        core.ip(&["link", "set", "gw", "master", "br0"]);
        core.ip(&["link", "set", "gw", "up"]);
        let gateway = format!("{}/24", net.gateway());
        run("ip", &["addr", "add", &gateway, "dev", &root_link]);
        run("ip", &["link", "set", &root_link, "up"]);
        net
    }

    /// The root namespace's address on the internet, where a test's services listen.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// The internet's prefix, as a CIDR.
    #[must_use]
    pub fn cidr(&self) -> String {
        format!("10.231.{}.0/24", self.subnet)
    }

    /// The namespace holding the internet's bridge.
    #[must_use]
    pub fn core(&self) -> &Namespace {
        &self.core
    }

    /// A namespace on the internet with the next free address (10.231.S.11 first): a relay
    /// host, or anything else with a public address.
    ///
    /// # Panics
    /// When it cannot be made, or the internet has no address left.
    pub fn host(&mut self, name: &str) -> Station {
        let namespace = self.namespace(name);
        let ip = self.attach(&namespace, "eth0");
        Station { namespace, ip }
    }

    /// A home router with `nat`, its WAN on the internet (next free address) and an empty
    /// LAN 192.168.L.0/24 (L counts the routers of this internet from 1). Its firewall drops
    /// traffic to itself from the WAN but for known connections' (see
    /// [`Nat::EndpointIndependent`]); forwarded traffic is the NAT's business.
    ///
    /// # Panics
    /// When it cannot be made.
    pub fn router(&mut self, name: &str, nat: Nat) -> Router {
        let namespace = self.namespace(name);
        let wan = self.attach(&namespace, "wan0");
        let l = self.next_lan;
        self.next_lan += 1;
        let lan = Ipv4Addr::new(192, 168, l, 1);
        namespace.ip(&["link", "add", "lan", "type", "bridge"]);
        namespace.ip(&["addr", "add", &format!("{lan}/24"), "dev", "lan"]);
        namespace.ip(&["link", "set", "lan", "up"]);
        namespace.run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
        let mut masquerade = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            masquerade.push("--random-fully");
        }
        namespace.run("iptables", &masquerade);
        // Dropped in the filter table, before conntrack confirms the entry, so a stray
        // inbound packet leaves no state behind.
        namespace.run(
            "iptables",
            &[
                "-A",
                "INPUT",
                "-i",
                "wan0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
        namespace.run("iptables", &["-A", "INPUT", "-i", "wan0", "-j", "DROP"]);
        Router {
            namespace,
            wan,
            lan,
            nat,
            next_node: 10,
        }
    }

    /// A namespace on `router`'s LAN (192.168.L.10 first), its default route through the
    /// router.
    ///
    /// # Panics
    /// When it cannot be made.
    pub fn behind(&mut self, router: &mut Router, name: &str) -> Station {
        let namespace = self.namespace(name);
        let port = self.port();
        router.namespace.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            namespace.name(),
        ]);
        router
            .namespace
            .ip(&["link", "set", &port, "master", "lan"]);
        router.namespace.ip(&["link", "set", &port, "up"]);
        let [a, b, c, _] = router.lan.octets();
        let ip = Ipv4Addr::new(a, b, c, router.next_node);
        router.next_node += 1;
        namespace.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        namespace.ip(&["link", "set", "eth0", "up"]);
        namespace.ip(&["route", "add", "default", "via", &router.lan.to_string()]);
        Station { namespace, ip }
    }

    /// Deletes it all; returns which of its namespaces and links still exist afterwards.
    #[must_use]
    pub fn destroy(mut self) -> Vec<String> {
        let namespaces: Vec<String> = self.namespaces.iter().map(|n| n.0.clone()).collect();
        let root_link = self.root_link.clone();
        self.delete();
        let listed = run("ip", &["netns", "list"]);
        let namespaces = namespaces.into_iter().filter(|ns| {
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns))
        });
        let links = root_link.into_iter().filter(|link| link_exists(link));
        namespaces.chain(links).collect()
    }

    /// A new namespace `bst-PID-K-NAME` with its loopback up.
    fn namespace(&mut self, name: &str) -> Namespace {
        let namespace = Namespace(format!("{PREFIX}{}-{}-{name}", self.pid, self.k));
        assert!(
            !self.namespaces.contains(&namespace),
            "two namespaces named {name}"
        );
        self.add_namespace(&namespace);
        namespace
    }

    fn add_namespace(&mut self, namespace: &Namespace) {
        run("ip", &["netns", "add", namespace.name()]);
        self.namespaces.push(namespace.clone());
        namespace.ip(&["link", "set", "lo", "up"]);
    }

    /// A fresh bridge port name in the core namespace (or a router's).
    fn port(&mut self) -> String {
        self.next_port += 1;
        format!("p{}", self.next_port)
    }

    /// Plugs `namespace` into the internet as `ifname` with the next free address.
    fn attach(&mut self, namespace: &Namespace, ifname: &str) -> Ipv4Addr {
        let ip = Ipv4Addr::new(10, 231, self.subnet, self.next_address);
        self.next_address = self
            .next_address
            .checked_add(1)
            .expect("the internet has no address left");
        let port = self.port();
        let core = self.core.clone();
        core.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            namespace.name(),
        ]);
        core.ip(&["link", "set", &port, "master", "br0"]);
        core.ip(&["link", "set", &port, "up"]);
        namespace.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
        namespace.ip(&["link", "set", ifname, "up"]);
        ip
    }

    fn delete(&mut self) {
        // Nodes and routers before the core: deleting a namespace deletes its veths.
        for namespace in self.namespaces.drain(..).rev() {
            delete_namespace(&namespace);
        }
        if let Some(link) = self.root_link.take() {
            // Gone with the core namespace already, unless that was never made.
            if link_exists(&link) {
                run_quietly("ip", &["link", "del", &link]);
            }
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Kills whatever runs in `namespace` and deletes it.
fn delete_namespace(namespace: &Namespace) {
    for pid in namespace.pids() {
        run_quietly("kill", &["-KILL", &pid.to_string()]);
    }
    run_quietly("ip", &["netns", "del", namespace.name()]);
}

fn link_exists(link: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", link])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes the namespaces and root links of test processes that are gone (killed before they
/// could clean up), with whatever still runs in those namespaces.
fn sweep_leftovers() {
    let listed = run("ip", &["netns", "list"]);
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        // bst-PID-K-NAME
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if rest.split('-').next().is_some_and(process_gone) {
            delete_namespace(&Namespace(name.to_owned()));
        }
    }
    let links = run("ip", &["-o", "link", "show"]);
    for line in links.lines() {
        // "N: bstPIDgK@ifM: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(rest) = name.strip_prefix("bst")
            && let Some((pid, _)) = rest.split_once('g')
            && process_gone(pid)
        {
            run_quietly("ip", &["link", "del", name]);
        }
    }
}

/// A 10.231.N.0/24 the root namespace uses nowhere yet, starting from one derived from `pid`.
fn free_subnet(pid: u32) -> u8 {
    let used = run("ip", &["-4", "-o", "addr", "show"]);
    (0..200)
        .map(|k| 20 + (pid + k) % 200)
        .find(|n| !used.contains(&format!(" 10.231.{n}.")))
        .map(|n| u8::try_from(n).unwrap())
        .expect("every 10.231.N.0/24 for N in 20..220 is in use")
}
