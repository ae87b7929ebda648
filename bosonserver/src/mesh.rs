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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

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

/// A host to connect to: where, and what to ask for in the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: HostId,
    /// `HOST:PORT`, the upgrade's `Host` header.
    pub(crate) authority: String,
    /// The upgrade's path.
    pub(crate) path: String,
}

/// What to link now: every fresh host other than `own` with no link yet. Hosts whose URL is
/// not `ws://` come back in the second list (the mesh speaks plain WebSocket only).
pub(crate) fn to_link(
    fresh: &[(HostId, String)],
    linked: &BTreeSet<HostId>,
    own: HostId,
) -> (Vec<Target>, Vec<(HostId, String)>) {
    let mut targets = Vec::new();
    let mut unusable = Vec::new();
    for (host, url) in fresh {
        if *host == own || linked.contains(host) {
            continue;
        }
        match parse_ws_url(url) {
            Some((authority, path)) => targets.push(Target {
                host: *host,
                authority: authority.to_owned(),
                path: path.to_owned(),
            }),
            None => unusable.push((*host, url.clone())),
        }
    }
    (targets, unusable)
}

/// `ws://AUTHORITY/PATH` → (authority, path).
fn parse_ws_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("ws://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/relay"),
    };
    (!authority.is_empty()).then_some((authority, path))
}

/// Starts the thread that keeps the links of `relay` on host `own`, and returns the table it
/// links from. The thread ends by itself once that table is dropped (with the command
/// applier that fills it) or the relay's workers are gone.
pub(crate) fn spawn_linker(relay: RelayHandle, own: HostId) -> std::io::Result<Arc<MeshHosts>> {
    let hosts = Arc::new(MeshHosts::default());
    let weak = Arc::downgrade(&hosts);
    std::thread::Builder::new()
        .name("mesh-linker".to_owned())
        .spawn(move || run(&weak, &relay, own))?;
    Ok(hosts)
}

fn run(hosts: &Weak<MeshHosts>, relay: &RelayHandle, own: HostId) {
    let mut warned = BTreeSet::new();
    loop {
        std::thread::sleep(RETRY);
        let Some(table) = hosts.upgrade() else {
            return;
        };
        let fresh = table.fresh(unix_now());
        drop(table);
        let (targets, unusable) = to_link(&fresh, &relay.mesh_links(), own);
        for (host, url) in unusable {
            if warned.insert(host) {
                tracing::warn!(%host, url, "mesh: only ws:// relay URLs are linked");
            }
        }
        for target in targets {
            match connect(&target.authority) {
                Ok(stream) => {
                    let host = target.host;
                    if !relay.mesh_link(MeshLink {
                        host,
                        stream,
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

/// Connects to the first address of `authority` that answers.
fn connect(authority: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
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
    fn only_unlinked_other_ws_hosts_are_linked() {
        let fresh = vec![
            (host(1), "ws://own:8443/relay".to_owned()),
            (host(2), "ws://10.0.0.2:8443/relay".to_owned()),
            (host(3), "ws://10.0.0.3:8443".to_owned()),
            (host(4), "wss://10.0.0.4:8443/relay".to_owned()),
            (host(5), "ws://10.0.0.5:8443/relay".to_owned()),
        ];
        let linked = BTreeSet::from([host(5)]);
        let (targets, unusable) = to_link(&fresh, &linked, host(1));
        assert_eq!(
            targets,
            vec![
                Target {
                    host: host(2),
                    authority: "10.0.0.2:8443".to_owned(),
                    path: "/relay".to_owned(),
                },
                Target {
                    host: host(3),
                    authority: "10.0.0.3:8443".to_owned(),
                    path: "/relay".to_owned(),
                },
            ]
        );
        assert_eq!(
            unusable,
            vec![(host(4), "wss://10.0.0.4:8443/relay".to_owned())]
        );
    }

    #[test]
    fn ws_urls_split() {
        assert_eq!(
            parse_ws_url("ws://10.0.0.1:8443/relay"),
            Some(("10.0.0.1:8443", "/relay"))
        );
        assert_eq!(parse_ws_url("ws://h:1"), Some(("h:1", "/relay")));
        assert_eq!(parse_ws_url("wss://h:1/relay"), None);
        assert_eq!(parse_ws_url("ws:///relay"), None);
    }
}
