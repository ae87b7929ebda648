//! Dataplane settings and start-up: one sans-IO TURN server per worker, all taking relay
//! ports from one shared [`PortTable`], driven by the thread-per-core shell.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use boson_dataplane::nofile::{self, Nofile};
use boson_dataplane::relay::EventSink;
use boson_dataplane::{Dataplane, DataplaneConfig, IoBackend, StunAlternate, WorkerInfo};
use boson_dataplane_proto::turn::{PeerFilter, PortTable};
use boson_dataplane_proto::{BindingConfig, Server, TurnConfig};
use boson_shared::Cidr;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

/// STUN/TURN dataplane settings.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DataplaneArgs {
    /// UDP address of the STUN/TURN listener; every worker binds it (SO_REUSEPORT).
    #[arg(long, env = "BOSON_TURN_LISTEN", default_value = "0.0.0.0:3478")]
    turn_listen: SocketAddr,

    /// TCP address of the STUN/TURN-over-TCP listener (RFC 8656 §3.1; `turn:…?transport=tcp`).
    /// Default: the UDP listener's address (3478/tcp).
    #[arg(long, env = "BOSON_TURN_TCP_LISTEN")]
    turn_tcp_listen: Option<SocketAddr>,

    /// Run no STUN/TURN-over-TCP listener.
    #[arg(long, env = "BOSON_NO_TURN_TCP", conflicts_with = "turn_tcp_listen")]
    no_turn_tcp: bool,

    /// TCP address of the STUN/TURN-over-TLS listener (`turns:`). Default with
    /// --turn-tls-cert: port 5349 on the UDP listener's IP; 443 helps clients behind
    /// firewalls that let only HTTPS out.
    #[arg(long, env = "BOSON_TURN_TLS_LISTEN", requires = "turn_tls_cert")]
    turn_tls_listen: Option<SocketAddr>,

    /// PEM certificate chain of the TURN-over-TLS listener; reloaded when the file changes.
    #[arg(long, env = "BOSON_TURN_TLS_CERT", requires = "turn_tls_key")]
    turn_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of the TURN-over-TLS listener.
    #[arg(long, env = "BOSON_TURN_TLS_KEY", requires = "turn_tls_cert")]
    turn_tls_key: Option<std::path::PathBuf>,

    /// TURN TCP and TLS connections one IP address (IPv6: one /64) may hold at once.
    #[arg(long, env = "BOSON_TURN_TCP_MAX_PER_IP", default_value_t = 64)]
    turn_tcp_max_per_ip: u32,

    /// A TURN TCP or TLS connection that delivers no complete message for this long is
    /// closed.
    #[arg(long, env = "BOSON_TURN_TCP_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    turn_tcp_idle_timeout: std::time::Duration,

    /// A TURN TLS handshake that takes longer is abandoned.
    #[arg(long, env = "BOSON_TURN_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    turn_tls_handshake_timeout: std::time::Duration,

    /// IPv4 address clients reach relayed allocations at (XOR-RELAYED-ADDRESS). Default:
    /// `--public-host` when it is an IPv4 address, else the listener's address.
    #[arg(long, env = "BOSON_RELAY_IP")]
    relay_ip: Option<Ipv4Addr>,

    /// Relay ports, `FIRST-LAST`, shared by the workers.
    #[arg(long, env = "BOSON_RELAY_PORTS", default_value = "49152-65535")]
    relay_ports: PortRange,

    /// UDP port of a second STUN address for RFC 5780 NAT behaviour discovery: Binding only,
    /// answered on every worker. The listener's Binding answers then carry RESPONSE-ORIGIN
    /// and OTHER-ADDRESS naming it, so a node learns whether its NAT maps by destination.
    /// Default: none.
    #[arg(long, env = "BOSON_STUN_ALT_PORT")]
    stun_alt_port: Option<u16>,

    /// IP of the second STUN address, when the host has a second address clients reach
    /// directly. Default: the TURN listener's IP (and `--relay-ip` in the answers).
    #[arg(long, env = "BOSON_STUN_ALT_IP", requires = "stun_alt_port")]
    stun_alt_ip: Option<IpAddr>,

    /// Dataplane worker threads, one pinned to each core. Default: every core.
    #[arg(long, env = "BOSON_WORKERS")]
    workers: Option<usize>,

    /// I/O backend: `auto` uses io_uring where the kernel (and seccomp) allow, else epoll.
    #[arg(long, env = "BOSON_IO_BACKEND", default_value = "auto")]
    io_backend: Backend,

    /// Do not pin workers to cores.
    #[arg(long, env = "BOSON_NO_PIN")]
    no_pin: bool,

    /// Turn UDP segmentation offload off: no GRO on the TURN sockets' receives (one datagram
    /// per receive) and no GSO on their sends. On by default where the kernel allows it.
    #[arg(long, env = "BOSON_NO_UDP_OFFLOAD")]
    no_udp_offload: bool,

    /// TURN realm.
    #[arg(long, env = "BOSON_TURN_REALM", default_value = "bosonserver")]
    turn_realm: String,

    /// Offer SHA-256 password derivation (RFC 8489 §9.2): 401s carry the nonce cookie and
    /// PASSWORD-ALGORITHMS. Off by default: each unauthenticated answer grows by 28 bytes.
    /// MESSAGE-INTEGRITY-SHA256 is accepted either way.
    #[arg(long, env = "BOSON_TURN_SHA256_PASSWORDS")]
    turn_sha256_passwords: bool,

    /// Let clients relay to loopback peers. Only for tests and benchmarks on one machine: it
    /// opens this host's local services to every client.
    #[arg(long, env = "BOSON_DANGER_ALLOW_LOOPBACK_PEERS", hide = true)]
    danger_allow_loopback_peers: bool,

    /// Seed of the workers' random number generators (nonce keys, transaction ids), for
    /// reproducible runs. Default: from the operating system.
    #[arg(long, env = "BOSON_RNG_SEED", hide = true)]
    rng_seed: Option<u64>,
}

/// `auto`, `uring` or `epoll`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Backend {
    Auto,
    Uring,
    Epoll,
}

/// An inclusive port range written `FIRST-LAST`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortRange(RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first == 0 || first > last {
            return Err(format!("{s:?} is not a range of ports from 1 to 65535"));
        }
        Ok(Self(first..=last))
    }
}

/// Warns once when the relay ports overlap the kernel's ephemeral port range without being
/// reserved: any process's outgoing UDP socket may then take a relay port (the allocation
/// that wanted it gets another after a retransmission). The peer filter keeps such a socket
/// out of clients' reach either way; the warning is about reliability.
fn warn_if_ephemeral(relay: &RangeInclusive<u16>) {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    let (Some(ephemeral), Some(reserved)) =
        (read("ip_local_port_range"), read("ip_local_reserved_ports"))
    else {
        return;
    };
    if let Some(overlap) = ephemeral_overlap(relay, &ephemeral, &reserved) {
        tracing::warn!(
            relay_ports = %format!("{}-{}", relay.start(), relay.end()),
            ephemeral = %ephemeral.split_whitespace().collect::<Vec<_>>().join("-"),
            "ports {}-{} of the relay range are also the kernel's ephemeral ports: another \
             program's sockets may take them. Reserve them: sysctl -w \
             net.ipv4.ip_local_reserved_ports={}-{}",
            overlap.start(),
            overlap.end(),
            relay.start(),
            relay.end()
        );
    }
}

/// The part of `relay` inside the kernel's ephemeral range (`ip_local_port_range`'s text,
/// `FIRST LAST`) and outside its reserved ports (`ip_local_reserved_ports`'s text, such as
/// `8080,49152-65535`), as one span from its first to its last such port; `None` when there
/// is none or a text does not parse.
fn ephemeral_overlap(
    relay: &RangeInclusive<u16>,
    ephemeral: &str,
    reserved: &str,
) -> Option<RangeInclusive<u16>> {
    let mut bounds = ephemeral.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(first)), Some(Ok(last))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    let reserved: Vec<RangeInclusive<u16>> = reserved
        .trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => Some(a.trim().parse().ok()?..=b.trim().parse().ok()?),
            None => part.trim().parse().ok().map(|p| p..=p),
        })
        .collect::<Option<_>>()?;
    let exposed =
        |port: &u16| (first..=last).contains(port) && !reserved.iter().any(|r| r.contains(port));
    let low = relay.clone().find(exposed)?;
    let high = relay.clone().rev().find(exposed)?;
    Some(low..=high)
}

/// The host's two STUN addresses (RFC 5780).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StunAddresses {
    /// Where the second address is bound.
    listen: SocketAddr,
    /// The listener as clients reach it: RESPONSE-ORIGIN of its answers.
    primary: SocketAddr,
    /// The second address as clients reach it: OTHER-ADDRESS of the listener's answers.
    alternate: SocketAddr,
}

/// The second STUN address from `--stun-alt-port` and `--stun-alt-ip`, beside the listener
/// `turn_listen` that clients reach at `public_ip:public_port`.
fn stun_alternate(
    turn_listen: SocketAddr,
    public_ip: Ipv4Addr,
    public_port: u16,
    alt_port: u16,
    alt_ip: Option<IpAddr>,
) -> anyhow::Result<StunAddresses> {
    ensure!(alt_port != 0, "--stun-alt-port may not be 0");
    let listen_ip = alt_ip.unwrap_or(turn_listen.ip());
    let listen = SocketAddr::new(listen_ip, alt_port);
    ensure!(
        listen != turn_listen && !(alt_ip.is_none() && alt_port == turn_listen.port()),
        "--stun-alt-port {alt_port} is the TURN listener's port: the second STUN address must \
         differ from the first in its port or (with --stun-alt-ip) its IP"
    );
    let public = match alt_ip {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(public_ip),
    };
    Ok(StunAddresses {
        listen,
        primary: SocketAddr::new(IpAddr::V4(public_ip), public_port),
        alternate: SocketAddr::new(public, alt_port),
    })
}

/// Validated dataplane settings.
#[derive(Debug, Clone)]
pub(crate) struct DataplanePlan {
    shell: DataplaneConfig,
    /// Every worker's TURN configuration: clones share its port table, so an EVEN-PORT
    /// reservation made on one worker can be claimed on any.
    turn: TurnConfig,
    peers: PeerPolicy,
    rng_seed: Option<u64>,
}

/// The dataplane's part of the peer filter: its own addresses and relay ports (and, for tests,
/// loopback). The operator's allow- and deny-lists come on top, from the control plane.
#[derive(Debug, Clone)]
pub(crate) struct PeerPolicy {
    base: PeerFilter,
}

impl PeerPolicy {
    /// The whole filter with the operator's lists `allow` and `deny`.
    pub(crate) fn filter(&self, allow: &[Cidr], deny: &[Cidr]) -> PeerFilter {
        let mut filter = self.base.clone();
        for cidr in allow {
            filter = filter.allow(*cidr);
        }
        for cidr in deny {
            filter = filter.deny(*cidr);
        }
        filter
    }
}

impl DataplaneArgs {
    /// Validates the settings. The TURN settings the control plane owns (secrets, quota, peer
    /// lists, public host) come from its configuration, so ICE credentials and the TURN server
    /// agree from the start; the control plane pushes them again when it attaches.
    /// `announced_port` is `--turn-port` when given (the STUN/TURN port clients reach,
    /// behind a port mapping); otherwise they reach the listener's port.
    pub(crate) fn plan(
        self,
        settings: &boson_control::config::TurnConfig,
        announced_port: Option<u16>,
    ) -> anyhow::Result<DataplanePlan> {
        let public_host = settings.public_host.as_str();
        let relay_ip = match (
            self.relay_ip,
            public_host.parse::<Ipv4Addr>(),
            self.turn_listen.ip(),
        ) {
            (Some(ip), _, _) => ip,
            (None, Ok(ip), _) => ip,
            (None, Err(_), IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
            (None, Err(_), _) => bail!(
                "set --relay-ip (BOSON_RELAY_IP): the public host {public_host:?} is not an IPv4 \
                 address and the TURN listener {} names none",
                self.turn_listen
            ),
        };
        ensure!(!relay_ip.is_unspecified(), "--relay-ip may not be 0.0.0.0");
        if relay_ip.is_loopback() && !self.turn_listen.ip().is_loopback() {
            tracing::warn!(
                %relay_ip,
                turn_listen = %self.turn_listen,
                "the relay address is loopback but the TURN listener is not: ICE answers and \
                 relayed addresses name {relay_ip}, which no remote client can reach. Set \
                 --public-host (BOSON_PUBLIC_HOST) to this host's public address"
            );
        }
        warn_if_ephemeral(&self.relay_ports.0);
        let mut shell = DataplaneConfig {
            listen: self.turn_listen,
            pin: !self.no_pin,
            udp_offload: !self.no_udp_offload,
            backend: match self.io_backend {
                Backend::Auto => IoBackend::Auto,
                Backend::Uring => IoBackend::Uring,
                Backend::Epoll => IoBackend::Epoll,
            },
            ..DataplaneConfig::default()
        };
        if let Some(workers) = self.workers {
            ensure!(workers >= 1, "--workers must be at least 1");
            shell.workers = workers;
        }
        shell.stream = self.stream_config()?;
        let stun_addresses = match self.stun_alt_port {
            Some(port) => {
                ensure!(
                    self.turn_listen.port() != 0,
                    "--stun-alt-port needs a fixed --turn-listen port: the second address's \
                     answers name the listener's"
                );
                let alt = stun_alternate(
                    self.turn_listen,
                    relay_ip,
                    announced_port.unwrap_or(self.turn_listen.port()),
                    port,
                    self.stun_alt_ip,
                )?;
                shell.stun_alternate = Some(StunAlternate {
                    listen: alt.listen,
                    binding: BindingConfig::new()
                        .with_known_attributes(|t| t.is_stun())
                        .with_other_address(alt.alternate, alt.primary),
                });
                Some(alt)
            }
            None => None,
        };
        // The relay address is added by the TURN config; the listener's, and every address of
        // the host's interfaces but loopback (the built-in rules keep loopback out, and
        // --danger-allow-loopback-peers must still open it), are this host's too.
        let mut base = PeerFilter::new();
        if !self.turn_listen.ip().is_unspecified() {
            base = base.own_address(self.turn_listen.ip());
        }
        match boson_dataplane::interface_addresses() {
            Ok(addresses) => {
                for ip in addresses.into_iter().filter(|ip| !ip.is_loopback()) {
                    base = base.own_address(ip);
                }
            }
            Err(error) => tracing::warn!(
                "cannot list this host's interface addresses ({error}): only the relay and \
                 listener addresses count as its own in the TURN peer filter"
            ),
        }
        if self.danger_allow_loopback_peers {
            tracing::warn!(
                "--danger-allow-loopback-peers: TURN clients may relay to this host's loopback \
                 services. Never use this outside tests and benchmarks."
            );
            base = base.danger_allow_loopback();
        }
        let peers = PeerPolicy { base };
        let ports = self.relay_ports.0;
        let table = Arc::new(PortTable::new(ports.clone()).context("invalid --relay-ports")?);
        let mut turn = TurnConfig::new(&self.turn_realm, settings.secrets.clone(), relay_ip, ports)
            .context("invalid TURN settings")?
            .with_port_table(table)
            .with_password_algorithms(self.turn_sha256_passwords)
            .with_peer_filter(peers.filter(&settings.allowed_peers, &settings.denied_peers));
        if let Some(alt) = stun_addresses {
            turn = turn.with_other_address(alt.primary, alt.alternate);
        }
        // Any worker may end up holding every port of the shared range.
        let total = turn.ports().len();
        turn = turn.with_allocation_quota(total, settings.max_allocations_per_user);
        Ok(DataplanePlan {
            shell,
            turn,
            peers,
            rng_seed: self.rng_seed,
        })
    }
}

impl DataplaneArgs {
    /// The TCP and TLS listeners and their limits.
    fn stream_config(&self) -> anyhow::Result<boson_dataplane::turn_stream::StreamConfig> {
        ensure!(
            self.turn_tcp_max_per_ip >= 1,
            "--turn-tcp-max-per-ip must be at least 1"
        );
        ensure!(
            !self.turn_tcp_idle_timeout.is_zero() && !self.turn_tls_handshake_timeout.is_zero(),
            "--turn-tcp-idle-timeout and --turn-tls-handshake-timeout must be more than 0"
        );
        let mut config = boson_dataplane::turn_stream::StreamConfig {
            tcp: match (self.no_turn_tcp, self.turn_tcp_listen) {
                (true, _) => None,
                (false, Some(addr)) => Some(addr),
                (false, None) => Some(self.turn_listen),
            },
            ..Default::default()
        };
        if let (Some(cert), Some(key)) = (&self.turn_tls_cert, &self.turn_tls_key) {
            config.tls = Some(boson_tls::TlsSource {
                cert: cert.clone(),
                key: key.clone(),
            });
            config.tls_listen = Some(
                self.turn_tls_listen
                    .unwrap_or(SocketAddr::new(self.turn_listen.ip(), TURN_TLS_PORT)),
            );
        }
        config.limits.max_connections_per_ip = self.turn_tcp_max_per_ip;
        config.limits.idle_timeout = self.turn_tcp_idle_timeout;
        config.limits.handshake_timeout = self.turn_tls_handshake_timeout;
        Ok(config)
    }
}

impl DataplanePlan {
    /// Says once when the open-file limit (already raised to its hard ceiling in `main`) is
    /// below what this configuration can hold open, and how to raise it.
    fn warn_if_descriptors_short(&self) {
        let ports = self.turn.ports();
        let relay_ports = u64::from(ports.end() - ports.start()) + 1;
        let relay = self
            .shell
            .relay
            .as_ref()
            .map_or(0, |relay| relay.max_connections_per_worker);
        let stream = if self.shell.stream.tcp.is_some() || self.shell.stream.tls_listen.is_some() {
            self.shell.stream.max_connections_per_worker
        } else {
            0
        };
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let need = nofile::descriptors_needed(
            relay_ports,
            as_u64(self.shell.workers),
            as_u64(relay),
            as_u64(stream),
            DESCRIPTOR_BASE,
        );
        match Nofile::current() {
            Ok(limit) if limit.soft < need => tracing::warn!(
                limit = limit.soft,
                hard = limit.hard,
                need,
                "the open-file limit is below what this configuration can hold open ({relay_ports} \
                 relay ports, and per worker {relay} relay and {stream} TURN-over-TCP/TLS \
                 connections): clients past the limit are refused. Raise it (systemd: \
                 LimitNOFILE; Docker: ulimits nofile; shell: ulimit -n), or lower \
                 --relay-ports or --relay-max-connections"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!("cannot read the open-file limit: {error}"),
        }
    }
}

/// Descriptors beyond relay sockets and client connections: listeners, rings, wakers, the
/// database and HTTP connections of the control plane.
const DESCRIPTOR_BASE: u64 = 1024;

/// The STUN/TURN-over-TLS port ([RFC 8489 §18.6](https://www.rfc-editor.org/rfc/rfc8489#section-18.6)).
const TURN_TLS_PORT: u16 = 5349;

impl DataplanePlan {
    /// Worker threads, one per core: the segment's core count.
    pub(crate) const fn workers(&self) -> usize {
        self.shell.workers
    }

    /// Adds the node relay to the workers.
    pub(crate) fn with_relay(mut self, relay: Option<boson_dataplane::relay::RelayConfig>) -> Self {
        self.shell.relay = relay;
        self
    }

    /// Sends the workers' events (TURN allocations) to `events`.
    pub(crate) fn with_events(mut self, events: EventSink) -> Self {
        self.shell.events = Some(events);
        self
    }

    /// How the peer lists the control plane pushes become the workers' filter.
    pub(crate) fn peer_policy(&self) -> PeerPolicy {
        self.peers.clone()
    }

    /// Starts the workers.
    pub(crate) fn start(self) -> anyhow::Result<Dataplane> {
        self.warn_if_descriptors_short();
        let shell = self.shell.clone();
        boson_dataplane::start(shell, move |info: WorkerInfo| {
            let config = self.turn.clone();
            let rng = match self.rng_seed {
                Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(info.index as u64)),
                None => StdRng::from_os_rng(),
            };
            Server::new(config, rng, info.now, info.unix_now)
        })
        .context("starting the STUN/TURN dataplane")
    }
}

#[cfg(test)]
mod tests {
    use boson_dataplane_proto::turn::Allowed;

    use super::*;

    #[test]
    fn pushed_peer_lists_go_on_top_of_the_dataplanes_own_rules() {
        let base = PeerFilter::new()
            .own_address("192.0.2.1".parse().unwrap())
            .danger_allow_loopback();
        let policy = PeerPolicy { base: base.clone() };
        assert_eq!(policy.filter(&[], &[]), base);
        let filter = policy.filter(
            &["10.1.0.0/16".parse().unwrap()],
            &["127.0.0.2/32".parse().unwrap()],
        );
        let ip = |s: &str| s.parse().unwrap();
        assert!(filter.check(ip("10.1.2.3")).is_ok(), "pushed allow");
        assert!(filter.check(ip("10.2.0.1")).is_err(), "built-in rule");
        assert!(
            filter.check(ip("127.0.0.1")).is_ok(),
            "the dataplane's own allow"
        );
        assert!(filter.check(ip("127.0.0.2")).is_err(), "pushed deny wins");
        assert_eq!(
            filter.check(ip("192.0.2.1")),
            Ok(Allowed::LiveRelayPorts),
            "own address: live relay allocations only"
        );
    }

    #[test]
    fn every_interface_address_of_the_host_is_its_own() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DataplaneArgs,
        }
        let args = <Cli as clap::Parser>::try_parse_from(["test", "--relay-ports", "50000-50009"])
            .unwrap()
            .args;
        let settings = boson_control::config::TurnConfig {
            secrets: vec![boson_shared::TurnSecret::new("s")],
            secrets_file: None,
            max_allocations_per_user: 4,
            allowed_peers: vec!["0.0.0.0/0".parse().unwrap()],
            denied_peers: Vec::new(),
            credential_ttl: std::time::Duration::from_secs(60),
            public_host: "192.0.2.1".to_owned(),
            port: 3478,
            port_fixed: false,
            tcp_port: None,
            tls_port: None,
            extra_urls: Vec::new(),
        };
        let plan = args.plan(&settings, None).unwrap();
        let filter = plan.peer_policy().filter(&settings.allowed_peers, &[]);
        let addresses = boson_dataplane::interface_addresses().unwrap();
        // The operator allowed every IPv4 address: the host's own stay limited to its live
        // relay allocations, in both families.
        for ip in addresses.into_iter().filter(|ip| !ip.is_loopback()) {
            assert_eq!(filter.check(ip), Ok(Allowed::LiveRelayPorts), "{ip}");
        }
        assert_eq!(
            filter.check("203.0.113.9".parse().unwrap()),
            Ok(Allowed::Anywhere)
        );
    }

    #[test]
    fn relay_ports_among_unreserved_ephemeral_ports_are_found() {
        let linux = "32768\t60999\n";
        assert_eq!(
            ephemeral_overlap(&(49152..=65535), linux, "\n"),
            Some(49152..=60999),
            "the defaults overlap"
        );
        assert_eq!(
            ephemeral_overlap(&(49152..=65535), linux, "49152-65535\n"),
            None
        );
        assert_eq!(
            ephemeral_overlap(&(49152..=65535), linux, "8080,49152-50000,50002-65535\n"),
            Some(50001..=50001)
        );
        assert_eq!(ephemeral_overlap(&(20000..=32767), linux, ""), None);
        assert_eq!(ephemeral_overlap(&(61000..=65535), linux, ""), None);
        assert_eq!(ephemeral_overlap(&(1..=2), "garbage", ""), None);
        assert_eq!(ephemeral_overlap(&(49152..=65535), linux, "x-y"), None);
    }

    #[test]
    fn the_second_stun_address() {
        let listen: SocketAddr = "0.0.0.0:3478".parse().unwrap();
        let public: Ipv4Addr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            stun_alternate(listen, public, 3478, 3479, None).unwrap(),
            StunAddresses {
                listen: "0.0.0.0:3479".parse().unwrap(),
                primary: "192.0.2.1:3478".parse().unwrap(),
                alternate: "192.0.2.1:3479".parse().unwrap(),
            }
        );
        let other_ip =
            stun_alternate(listen, public, 3478, 3478, "192.0.2.2".parse().ok()).unwrap();
        assert_eq!(other_ip.listen, "192.0.2.2:3478".parse().unwrap());
        assert_eq!(other_ip.alternate, "192.0.2.2:3478".parse().unwrap());
        for (port, ip) in [(3478, None), (0, None), (3478, Some("0.0.0.0"))] {
            assert!(
                stun_alternate(listen, public, 3478, port, ip.and_then(|i| i.parse().ok()))
                    .is_err(),
                "{port} {ip:?}"
            );
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "49152-65535".parse::<PortRange>(),
            Ok(PortRange(49152..=65535))
        );
        for bad in ["0-10", "10-5", "10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
