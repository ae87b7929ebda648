//! The relay host registry: every BosonServer process registers itself as a relay host, with
//! its public addresses, region, capacity and live load, and sees the others.
//!
//! A host publishes a [`HostRecord`] every `host_heartbeat_interval`: into the store (table
//! `relay_hosts`, so the registry survives restarts and works without Redis) and, when Redis
//! is configured, into a key that expires after `host_timeout`, so a host that stops
//! heartbeating disappears by itself. Whatever the backend, readers judge liveness with
//! [`is_live`] against their own `now`, so a record that is still stored (or a Redis key whose
//! expiry runs on Redis's clock) never makes a silent host look alive.
//!
//! This module holds the types and the pure decisions; the I/O is in [`crate::io::store`],
//! [`crate::io::cache`] and the `AppState` methods of [`crate::io::mesh`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boson_shared::plane::HostId;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::config::{HostConfig, TurnConfig};

/// A relay host as it publishes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    /// Stable id, kept in the host's data dir.
    #[serde(with = "host_id_text")]
    pub host_id: HostId,
    /// `CC-REGION` such as `US-CA`, or empty when unknown.
    pub region: String,
    /// Latitude and longitude in degrees.
    #[serde(default)]
    pub coordinates: Option<[f64; 2]>,
    /// Where nodes reach it.
    pub addresses: HostAddresses,
    /// What it can take.
    pub capacity: HostCapacity,
    /// What it carries now.
    pub load: HostLoad,
    /// It is shutting down: it still relays for the nodes and allocations it holds (so it
    /// stays in the registry, and the mesh keeps reaching its nodes), but takes no new ones,
    /// so routing and ICE leave it out. Absent in records of older versions: `false`.
    #[serde(default)]
    pub draining: bool,
    /// When this process started, unix ms.
    pub started_at: i64,
    /// Its latest heartbeat, unix ms.
    pub last_heartbeat: i64,
}

/// A host's public addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAddresses {
    /// Host name or address of its STUN/TURN listener.
    pub turn_host: String,
    /// UDP port of its STUN/TURN listener.
    pub turn_port: u16,
    /// Port of its TURN-over-TCP listener, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_tcp_port: Option<u16>,
    /// Port of its TURN-over-TLS listener (`turns:`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_tls_port: Option<u16>,
    /// `ws://` or `wss://` URL of its WebSocket relay.
    #[serde(default)]
    pub relay_url: Option<String>,
    /// `HOST:PORT` of its QUIC relay.
    #[serde(default)]
    pub quic_addr: Option<String>,
}

impl HostAddresses {
    /// `stun:HOST:PORT`.
    pub fn stun_url(&self) -> String {
        format!("stun:{}:{}", uri_host(&self.turn_host), self.turn_port)
    }

    /// `turn:HOST:PORT?transport=udp`.
    pub fn turn_url(&self) -> String {
        format!(
            "turn:{}:{}?transport=udp",
            uri_host(&self.turn_host),
            self.turn_port
        )
    }

    /// Every TURN URL of the host: UDP, then `turn:HOST:PORT?transport=tcp` and
    /// `turns:HOST:PORT?transport=tcp` when it runs those listeners (RFC 7065).
    pub fn turn_urls(&self) -> Vec<String> {
        let host = uri_host(&self.turn_host);
        let mut urls = vec![self.turn_url()];
        if let Some(port) = self.turn_tcp_port {
            urls.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        if let Some(port) = self.turn_tls_port {
            urls.push(format!("turns:{host}:{port}?transport=tcp"));
        }
        urls
    }
}

/// `host` as it goes into a URI: IPv6 literals in brackets.
pub fn uri_host(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// What a host can take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCapacity {
    /// Relay sessions plus TURN allocations.
    pub max_connections: u32,
    /// Relay bandwidth, Mbit/s.
    pub bandwidth: f64,
}

/// What a host carries now, as the binary reports it through `AppState::set_host_load`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostLoad {
    /// Live TURN allocations.
    pub allocations: u32,
    /// Live node relay sessions (WebSocket and QUIC).
    pub sessions: u32,
    /// Relayed traffic, Mbit/s, both directions together.
    pub bandwidth: f64,
}

impl HostRecord {
    /// The fuller of connection and bandwidth use, as a fraction of capacity (0 idle, 1 full,
    /// more when over).
    pub fn utilization(&self) -> f64 {
        let connections = f64::from(self.load.allocations.saturating_add(self.load.sessions))
            / f64::from(self.capacity.max_connections.max(1));
        let bandwidth = if self.capacity.bandwidth > 0.0 && self.load.bandwidth.is_finite() {
            self.load.bandwidth / self.capacity.bandwidth
        } else {
            0.0
        };
        connections.max(bandwidth).max(0.0)
    }

    /// Whether it can take one more connection.
    pub fn has_room(&self) -> bool {
        self.utilization() < 1.0
    }

    /// Whether it takes new allocations and relay sessions at all (it is not draining).
    pub fn is_accepting(&self) -> bool {
        !self.draining
    }

    /// Its latest heartbeat.
    pub fn last_heartbeat(&self) -> UnixMillis {
        UnixMillis(self.last_heartbeat)
    }
}

/// Whether `host` counts as alive at `now`: it heartbeat within `timeout`. A heartbeat from
/// the future (another host's clock running ahead) counts as now.
pub fn is_live(host: &HostRecord, now: UnixMillis, timeout: Duration) -> bool {
    host.last_heartbeat() >= now.saturating_sub(timeout)
}

/// The live hosts among `records`, ordered by id, with `own` (this host, always alive while it
/// answers) in place of any stored copy of itself.
pub fn live_hosts(
    records: Vec<HostRecord>,
    own: HostRecord,
    now: UnixMillis,
    timeout: Duration,
) -> Vec<HostRecord> {
    let mut hosts: Vec<HostRecord> = records
        .into_iter()
        .filter(|host| host.host_id != own.host_id && is_live(host, now, timeout))
        .collect();
    hosts.push(own);
    hosts.sort_by_key(|host| host.host_id);
    hosts
}

/// What the dataplane needs to keep mesh links to the other live `hosts`: each one with a
/// relay URL, announced until `until` (the control plane re-announces them every heartbeat
/// interval, so a host that stops being live lapses by itself).
pub fn mesh_announcements(
    hosts: &[HostRecord],
    own: HostId,
    until: boson_shared::plane::UnixMs,
) -> Vec<boson_shared::plane::Command> {
    hosts
        .iter()
        .filter(|host| host.host_id != own)
        .filter_map(|host| {
            let relay_url = host.addresses.relay_url.clone()?;
            Some(boson_shared::plane::Command::MeshHost {
                host: host.host_id,
                relay_url,
                until,
            })
        })
        .collect()
}

/// This process as a relay host: its configured record and the load the binary reports.
#[derive(Debug)]
pub struct LocalHost {
    config: HostConfig,
    addresses: HostAddresses,
    started_at: UnixMillis,
    load: Mutex<HostLoad>,
    draining: AtomicBool,
}

impl LocalHost {
    /// This host, started at `now`.
    pub fn new(config: &HostConfig, turn: &TurnConfig, now: UnixMillis) -> Self {
        Self {
            addresses: HostAddresses {
                turn_host: turn.public_host.clone(),
                turn_port: turn.port,
                turn_tcp_port: turn.tcp_port,
                turn_tls_port: turn.tls_port,
                relay_url: config.relay_url.clone(),
                quic_addr: config.quic_addr.clone(),
            },
            config: config.clone(),
            started_at: now,
            load: Mutex::new(HostLoad::default()),
            draining: AtomicBool::new(false),
        }
    }

    /// Its id.
    pub fn id(&self) -> HostId {
        self.config.id
    }

    /// Replaces the reported load.
    pub fn set_load(&self, load: HostLoad) {
        *self
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = load;
    }

    /// From now on its record says it is draining. There is no way back: a drain ends with
    /// the process.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The record it publishes at `now`.
    pub fn record(&self, now: UnixMillis) -> HostRecord {
        HostRecord {
            host_id: self.config.id,
            region: self.config.region.clone(),
            coordinates: self.config.coordinates,
            addresses: self.addresses.clone(),
            capacity: HostCapacity {
                max_connections: self.config.max_connections,
                bandwidth: self.config.bandwidth_mbps,
            },
            load: *self
                .load
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            draining: self.draining.load(Ordering::Relaxed),
            started_at: self.started_at.0,
            last_heartbeat: now.0,
        }
    }
}

/// A [`HostId`] as its hyphenated UUID text.
pub fn host_id_string(id: HostId) -> String {
    id.0.hyphenated().to_string()
}

/// Parses [`host_id_string`].
pub fn parse_host_id(text: &str) -> Option<HostId> {
    uuid::Uuid::parse_str(text).ok().map(HostId)
}

/// Serde for [`HostId`] as UUID text (the shared type carries no serde, by design: the planes
/// exchange it in process).
pub(crate) mod host_id_text {
    use boson_shared::plane::HostId;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(id: &HostId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::host_id_string(*id))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HostId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::parse_host_id(&text).ok_or_else(|| serde::de::Error::custom("host id is not a UUID"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn host(n: u8, region: &str, load: HostLoad) -> HostRecord {
        HostRecord {
            host_id: HostId(uuid::Uuid::from_bytes([n; 16])),
            region: region.to_owned(),
            coordinates: None,
            addresses: HostAddresses {
                turn_host: format!("h{n}.example.test"),
                turn_port: 3478,
                turn_tcp_port: None,
                turn_tls_port: None,
                relay_url: None,
                quic_addr: None,
            },
            capacity: HostCapacity {
                max_connections: 100,
                bandwidth: 1000.0,
            },
            load,
            draining: false,
            started_at: 0,
            last_heartbeat: 1_000_000,
        }
    }

    fn load(allocations: u32, sessions: u32, bandwidth: f64) -> HostLoad {
        HostLoad {
            allocations,
            sessions,
            bandwidth,
        }
    }

    #[test]
    fn utilization_is_the_fuller_of_connections_and_bandwidth() {
        for (load, want, room) in [
            (load(0, 0, 0.0), 0.0, true),
            (load(30, 20, 0.0), 0.5, true),
            (load(10, 0, 900.0), 0.9, true),
            (load(60, 40, 0.0), 1.0, false),
            (load(0, 0, 1500.0), 1.5, false),
            (load(0, 0, f64::NAN), 0.0, true),
            (
                load(u32::MAX, u32::MAX, 0.0),
                f64::from(u32::MAX) / 100.0,
                false,
            ),
        ] {
            let host = host(1, "US-CA", load);
            assert!((host.utilization() - want).abs() < 1e-9, "{load:?}");
            assert_eq!(host.has_room(), room, "{load:?}");
        }
    }

    #[test]
    fn mesh_announcements_name_every_other_host_with_a_relay_url() {
        use boson_shared::plane::Command;
        let mut hosts: Vec<HostRecord> = (1..=4)
            .map(|n| host(n, "US-CA", HostLoad::default()))
            .collect();
        for h in &mut hosts[..3] {
            h.addresses.relay_url = Some(format!("ws://{}:8443/relay", h.addresses.turn_host));
        }
        let own = hosts[0].host_id;
        let announced = mesh_announcements(&hosts, own, 42);
        assert_eq!(
            announced,
            vec![
                Command::MeshHost {
                    host: hosts[1].host_id,
                    relay_url: "ws://h2.example.test:8443/relay".to_owned(),
                    until: 42,
                },
                Command::MeshHost {
                    host: hosts[2].host_id,
                    relay_url: "ws://h3.example.test:8443/relay".to_owned(),
                    until: 42,
                },
            ],
            "not itself, not host 4 (no relay URL)"
        );
    }

    #[test]
    fn liveness_is_judged_against_the_readers_clock() {
        let timeout = Duration::from_secs(15);
        let h = host(1, "US-CA", HostLoad::default());
        for (now, live) in [
            (1_000_000, true),
            (1_015_000, true),
            (1_015_001, false),
            (999_000, true),
        ] {
            assert_eq!(is_live(&h, UnixMillis(now), timeout), live, "{now}");
        }
    }

    #[test]
    fn own_record_replaces_a_stale_copy_and_dead_hosts_drop_out() {
        let timeout = Duration::from_secs(15);
        let now = UnixMillis(1_020_000);
        let mut stale_self = host(1, "US-CA", HostLoad::default());
        stale_self.last_heartbeat = 0;
        let mut own = stale_self.clone();
        own.last_heartbeat = now.0;
        let mut fresh = host(2, "DE-BE", HostLoad::default());
        fresh.last_heartbeat = now.0 - 1000;
        let dead = host(3, "FR-IDF", HostLoad::default());
        let hosts = live_hosts(
            vec![dead, fresh.clone(), stale_self],
            own.clone(),
            now,
            timeout,
        );
        assert_eq!(hosts, vec![own, fresh]);
    }

    #[test]
    fn records_round_trip_through_json_with_text_ids() {
        let h = host(7, "US-CA", load(1, 2, 3.5));
        let text = serde_json::to_string(&h).unwrap();
        assert!(
            text.contains("\"hostId\":\"07070707-0707-0707-0707-070707070707\""),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<HostRecord>(&text).unwrap(), h);
    }

    #[test]
    fn records_of_older_versions_are_not_draining() {
        let mut value = serde_json::to_value(host(7, "US-CA", HostLoad::default())).unwrap();
        value.as_object_mut().unwrap().remove("draining").unwrap();
        let record: HostRecord = serde_json::from_value(value).unwrap();
        assert!(!record.draining && record.is_accepting());
    }

    #[test]
    fn turn_urls_list_tcp_and_tls_only_when_the_host_runs_them() {
        let mut addresses = host(1, "US-CA", HostLoad::default()).addresses;
        assert_eq!(
            addresses.turn_urls(),
            ["turn:h1.example.test:3478?transport=udp"]
        );
        addresses.turn_tcp_port = Some(3478);
        addresses.turn_tls_port = Some(443);
        addresses.turn_host = "2001:db8::1".to_owned();
        assert_eq!(
            addresses.turn_urls(),
            [
                "turn:[2001:db8::1]:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=tcp",
                "turns:[2001:db8::1]:443?transport=tcp",
            ]
        );
        let json = serde_json::to_value(&addresses).unwrap();
        assert_eq!(json["turnTlsPort"], 443);
        let old: HostAddresses = serde_json::from_value(serde_json::json!({
            "turnHost": "h.example.test", "turnPort": 3478
        }))
        .unwrap();
        assert_eq!(
            old.turn_tcp_port, None,
            "records of older versions have none"
        );
    }

    #[test]
    fn a_draining_host_says_so_from_its_next_record() {
        let config = HostConfig {
            id: HostId(uuid::Uuid::from_bytes([3; 16])),
            region: "DE-BE".to_owned(),
            coordinates: None,
            relay_url: None,
            quic_addr: None,
            max_connections: 10,
            bandwidth_mbps: 100.0,
            heartbeat_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        };
        let turn = TurnConfig {
            secrets: vec![boson_shared::TurnSecret::new("s")],
            secrets_file: None,
            max_allocations_per_user: 10,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            credential_ttl: Duration::from_secs(60),
            public_host: "192.0.2.1".to_owned(),
            port: 3478,
            tcp_port: None,
            tls_port: None,
            extra_urls: Vec::new(),
        };
        let local = LocalHost::new(&config, &turn, UnixMillis(5));
        assert!(local.record(UnixMillis(6)).is_accepting());
        local.start_draining();
        let record = local.record(UnixMillis(7));
        assert!(record.draining && !record.is_accepting());
        assert_eq!(record.last_heartbeat, 7);
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains("\"draining\":true"), "{text}");
    }

    #[test]
    fn urls_bracket_ipv6_hosts() {
        let mut addresses = host(1, "", HostLoad::default()).addresses;
        addresses.turn_host = "2001:db8::1".to_owned();
        assert_eq!(
            addresses.turn_url(),
            "turn:[2001:db8::1]:3478?transport=udp"
        );
        assert_eq!(addresses.stun_url(), "stun:[2001:db8::1]:3478");
    }
}
