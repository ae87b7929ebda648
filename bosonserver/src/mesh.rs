//! The dataplane's outgoing relay-mesh links, in whichever process owns the relay's sockets.
//!
//! The control plane announces every other live relay host with `Command::MeshHost` each
//! heartbeat interval (see `boson_control::domain::hosts::mesh_announcements`). The announcements go
//! over the planes' segment like every other command, so `bosonserver run` and a
//! `bosonserver dataplane` process next to a `bosonserver control` link the same way; an
//! announcement lapses by itself after one host timeout, so a host that died, or that only a
//! now-dead control plane knew of, is forgotten without a withdrawal that could be lost.
//!
//! A thread ([`spawn_linker`]) then connects, every [`RETRY`], to each announced host the relay
//! has no link to (the relay drops a link when it closes, so a lost link is retried). The
//! decisions are in pure functions: [`MeshHosts::fresh`] and [`to_link`].
//!
//! Links run over TLS 1.3 to the host's `wss://` relay URL: the thread connects, finishes the
//! handshake (checking the other host's certificate against the platform's roots and
//! `--mesh-ca-file`, read again each round so a renewed CA needs no restart) and hands the
//! socket with its TLS connection to the relay, whose worker mints the token bound to that
//! connection's exporter keying material (`boson_shared::mesh`). `ws://` URLs are linked
//! only with `--danger-plain-mesh`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rustls::pki_types::ServerName;

use boson_dataplane::relay::{MeshLink, RelayHandle};
use boson_shared::plane::{HostId, UnixMs};

/// How often the linker looks for hosts to link.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The longest one connection attempt waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The relay hosts the control plane announced: URL and when the announcement lapses.
#[derive(Debug, Default)]
pub(crate) struct MeshHosts(Mutex<BTreeMap<HostId, (String, UnixMs)>>);

impl MeshHosts {
    /// Records (or renews) an announcement.
    pub(crate) fn announce(&self, host: HostId, relay_url: String, until: UnixMs) {
        self.lock().insert(host, (relay_url, until));
    }

    /// The hosts whose announcement is still valid at `now`, with their URLs; forgets the
    /// others.
    pub(crate) fn fresh(&self, now: UnixMs) -> Vec<(HostId, String)> {
        let mut hosts = self.lock();
        hosts.retain(|_, (_, until)| *until > now);
        hosts
            .iter()
            .map(|(host, (url, _))| (*host, url.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<HostId, (String, UnixMs)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How this host opens mesh links.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkerSettings {
    /// PEM roots for the other hosts' relay certificates, besides the platform's.
    pub(crate) ca_file: Option<PathBuf>,
    /// Link `ws://` hosts too, on plain WebSocket (`--danger-plain-mesh`, tests only).
    pub(crate) allow_plain: bool,
}

/// A host to connect to: where, and what to ask for in the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: HostId,
    /// `wss://`: TLS 1.3.
    pub(crate) tls: bool,
    /// `HOST:PORT`, the upgrade's `Host` header.
    pub(crate) authority: String,
    /// The upgrade's path.
    pub(crate) path: String,
}

/// What to link now: every fresh host other than `own` with no link yet. Hosts whose URL is
/// not `wss://` (nor `ws://` when `allow_plain`) come back in the second list.
pub(crate) fn to_link(
    fresh: &[(HostId, String)],
    linked: &BTreeSet<HostId>,
    own: HostId,
    allow_plain: bool,
) -> (Vec<Target>, Vec<(HostId, String)>) {
    let mut targets = Vec::new();
    let mut unusable = Vec::new();
    for (host, url) in fresh {
        if *host == own || linked.contains(host) {
            continue;
        }
        match parse_ws_url(url) {
            Some((tls, authority, path)) if tls || allow_plain => targets.push(Target {
                host: *host,
                tls,
                authority: authority.to_owned(),
                path: path.to_owned(),
            }),
            _ => unusable.push((*host, url.clone())),
        }
    }
    (targets, unusable)
}

/// `wss://AUTHORITY/PATH` → (true, authority, path); `ws://` → false.
fn parse_ws_url(url: &str) -> Option<(bool, &str, &str)> {
    let (tls, rest) = match url.strip_prefix("wss://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("ws://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/relay"),
    };
    (!authority.is_empty()).then_some((tls, authority, path))
}

/// The TLS server name of `HOST:PORT` (`[V6]:PORT` for an IPv6 address): a DNS name or an IP
/// address, which the certificate must name.
fn server_name(authority: &str) -> Option<ServerName<'static>> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// Starts the thread that keeps the links of `relay` on host `own`, and returns the table it
/// links from. The thread ends by itself once that table is dropped (with the command
/// applier that fills it) or the relay's workers are gone.
pub(crate) fn spawn_linker(
    relay: RelayHandle,
    own: HostId,
    settings: LinkerSettings,
) -> std::io::Result<Arc<MeshHosts>> {
    let hosts = Arc::new(MeshHosts::default());
    let weak = Arc::downgrade(&hosts);
    std::thread::Builder::new()
        .name("mesh-linker".to_owned())
        .spawn(move || run(&weak, &relay, own, &settings))?;
    Ok(hosts)
}

fn run(hosts: &Weak<MeshHosts>, relay: &RelayHandle, own: HostId, settings: &LinkerSettings) {
    let mut warned = BTreeSet::new();
    let mut ca_warned = false;
    loop {
        std::thread::sleep(RETRY);
        let Some(table) = hosts.upgrade() else {
            return;
        };
        let fresh = table.fresh(unix_now());
        drop(table);
        let (targets, unusable) = to_link(&fresh, &relay.mesh_links(), own, settings.allow_plain);
        for (host, url) in unusable {
            if warned.insert(host) {
                tracing::warn!(
                    %host,
                    url,
                    "mesh: only wss:// relay URLs are linked (ws:// with --danger-plain-mesh)"
                );
            }
        }
        if targets.is_empty() {
            continue;
        }
        let config = match boson_tls::mesh_client_config(settings.ca_file.as_deref()) {
            Ok(config) => {
                ca_warned = false;
                config
            }
            Err(error) => {
                if !ca_warned {
                    tracing::warn!("mesh: cannot build the TLS client: {error}");
                    ca_warned = true;
                }
                continue;
            }
        };
        for target in targets {
            match connect(&target, &config) {
                Ok((stream, tls)) => {
                    let host = target.host;
                    if !relay.mesh_link(MeshLink {
                        host,
                        stream,
                        tls,
                        authority: target.authority,
                        path: target.path,
                    }) {
                        // The workers are gone: the process is stopping.
                        return;
                    }
                    tracing::debug!(%host, "mesh: link handed to the relay");
                }
                Err(error) => {
                    tracing::debug!(host = %target.host, authority = target.authority, "mesh: cannot connect: {error}");
                }
            }
        }
    }
}

/// Connects to the first address of the target that answers and, for `wss://`, runs the TLS
/// handshake to its end (the certificate checked), each within [`CONNECT_TIMEOUT`].
fn connect(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<(TcpStream, Option<rustls::ClientConnection>)> {
    let mut last = None;
    let mut stream = None;
    for addr in target.authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last = Some(error),
        }
    }
    let mut stream =
        stream.ok_or_else(|| last.unwrap_or_else(|| std::io::Error::other("no address")))?;
    if !target.tls {
        return Ok((stream, None));
    }
    let name = server_name(&target.authority)
        .ok_or_else(|| std::io::Error::other("the relay URL names no valid TLS server name"))?;
    let mut tls =
        rustls::ClientConnection::new(Arc::clone(config), name).map_err(std::io::Error::other)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut stream)?;
    }
    while tls.wants_write() {
        tls.write_tls(&mut stream)?;
    }
    Ok((stream, Some(tls)))
}

fn unix_now() -> UnixMs {
    use boson_control::clock::Clock as _;
    UnixMs::try_from(boson_control::clock::SystemClock.now().0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u8) -> HostId {
        HostId::from_bytes([n; 16])
    }

    #[test]
    fn announcements_lapse_unless_renewed() {
        let hosts = MeshHosts::default();
        hosts.announce(host(1), "ws://a:1/relay".to_owned(), 100);
        hosts.announce(host(2), "ws://b:1/relay".to_owned(), 200);
        assert_eq!(hosts.fresh(99).len(), 2);
        assert_eq!(
            hosts.fresh(100),
            vec![(host(2), "ws://b:1/relay".to_owned())],
            "an announcement is void at its `until`"
        );
        hosts.announce(host(2), "ws://b2:1/relay".to_owned(), 300);
        assert_eq!(
            hosts.fresh(250),
            vec![(host(2), "ws://b2:1/relay".to_owned())],
            "a renewal replaces the URL and the deadline"
        );
        assert!(hosts.fresh(300).is_empty());
        hosts.announce(host(1), "ws://a:1/relay".to_owned(), 400);
        assert_eq!(
            hosts.fresh(0).len(),
            1,
            "a lapsed host comes back when announced"
        );
    }

    #[test]
    fn only_unlinked_other_wss_hosts_are_linked() {
        let fresh = vec![
            (host(1), "wss://own:8443/relay".to_owned()),
            (host(2), "wss://10.0.0.2:8443/relay".to_owned()),
            (host(3), "wss://10.0.0.3:8443".to_owned()),
            (host(4), "ws://10.0.0.4:8443/relay".to_owned()),
            (host(5), "wss://10.0.0.5:8443/relay".to_owned()),
            (host(6), "http://10.0.0.6:8443/relay".to_owned()),
        ];
        let linked = BTreeSet::from([host(5)]);
        let target = |n: u8, tls: bool| Target {
            host: host(n),
            tls,
            authority: format!("10.0.0.{n}:8443"),
            path: "/relay".to_owned(),
        };
        let (targets, unusable) = to_link(&fresh, &linked, host(1), false);
        assert_eq!(targets, vec![target(2, true), target(3, true)]);
        assert_eq!(
            unusable,
            vec![
                (host(4), "ws://10.0.0.4:8443/relay".to_owned()),
                (host(6), "http://10.0.0.6:8443/relay".to_owned()),
            ],
            "plain WebSocket only with --danger-plain-mesh"
        );
        let (targets, unusable) = to_link(&fresh, &linked, host(1), true);
        assert_eq!(
            targets,
            vec![target(2, true), target(3, true), target(4, false)]
        );
        assert_eq!(unusable.len(), 1);
    }

    #[test]
    fn ws_urls_split() {
        assert_eq!(
            parse_ws_url("wss://10.0.0.1:8443/relay"),
            Some((true, "10.0.0.1:8443", "/relay"))
        );
        assert_eq!(parse_ws_url("ws://h:1"), Some((false, "h:1", "/relay")));
        assert_eq!(parse_ws_url("https://h:1/relay"), None);
        assert_eq!(parse_ws_url("ws:///relay"), None);
        assert_eq!(parse_ws_url("wss:///relay"), None);
    }

    #[test]
    fn server_names_of_authorities() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(
            name("relay.example.com:8443").as_deref(),
            Some("relay.example.com")
        );
        assert_eq!(name("127.0.0.1:8443").as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(
            name("relay.example.com").as_deref(),
            Some("relay.example.com")
        );
        assert_eq!(name("bad host:1"), None);
    }
}
