//! [`TurnConfig`]: everything a [`Server`](super::Server) needs, validated once.
//!
//! Built with [`TurnConfig::new`] from the four values that have no sensible default (realm,
//! secrets, advertised relay address, port range), then adjusted with `with_*` methods. Each
//! default below says why it is what it is.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use boson_shared::credentials::TurnSecret;

use super::{PeerFilter, PortTable};
use crate::stun::{AttrError, Realm, Software};

/// Configuration of one TURN [`Server`](super::Server) instance (one per core).
///
/// Clones share the [`PortTable`]: servers built from clones of one config never hand out the
/// same port.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub(crate) realm: String,
    pub(crate) secrets: Vec<TurnSecret>,
    pub(crate) relay_ip: Ipv4Addr,
    pub(crate) ports: Arc<PortTable>,
    pub(crate) software: Option<Software<'static>>,
    /// RESPONSE-ORIGIN and OTHER-ADDRESS of Binding responses (RFC 5780), when set.
    pub(crate) other_address: Option<(SocketAddr, SocketAddr)>,
    pub(crate) default_lifetime: u32,
    pub(crate) max_lifetime: u32,
    pub(crate) permission_lifetime: u32,
    pub(crate) channel_lifetime: u32,
    pub(crate) channel_cooldown: u32,
    pub(crate) nonce_lifetime: u32,
    pub(crate) port_quarantine: u32,
    pub(crate) reservation_lifetime: u32,
    pub(crate) max_allocations: usize,
    pub(crate) max_allocations_per_user: u32,
    pub(crate) max_permissions_per_allocation: usize,
    pub(crate) max_channels_per_allocation: usize,
    pub(crate) peer_filter: PeerFilter,
    pub(crate) unauthenticated_per_second: u32,
    pub(crate) unauthenticated_burst: u32,
    pub(crate) rate_limit_buckets: usize,
    pub(crate) password_algorithms: bool,
}

/// Why a [`TurnConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The realm is empty or not a valid REALM value (UTF-8, fewer than 128 characters).
    #[error("invalid realm")]
    InvalidRealm(#[source] Option<AttrError>),
    /// No secret: no credential could ever be valid.
    #[error("at least one TURN secret is required")]
    NoSecret,
    /// The relay port range is empty or includes port 0.
    #[error("relay port range {first}..={last} is empty or includes port 0")]
    InvalidPortRange {
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// A duration is zero, not whole seconds, or longer than `u32::MAX` seconds.
    #[error("{what} must be a whole, non-zero number of seconds below 2^32")]
    InvalidDuration {
        /// Which setting.
        what: &'static str,
    },
    /// The default allocation lifetime exceeds the maximum.
    #[error("default allocation lifetime exceeds the maximum")]
    LifetimeOrder,
}

/// Default allocation lifetime: RFC 8656 §7.2's 10 minutes.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest lifetime a client can ask for: RFC 8656 §7.2's suggested 1 hour.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permission lifetime, fixed by RFC 8656 §9 at 5 minutes.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime, fixed by RFC 8656 §12 at 10 minutes.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires, neither its number nor its peer can be bound to something
/// else for 5 minutes (RFC 8656 §12), so late packets are not misdelivered.
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// Nonce validity: 10 minutes, coturn's `stale-nonce` default. Long enough that a client
/// refreshing every ~5 minutes sees at most one 438 per two refreshes; short enough to bound
/// replay of a captured request.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// How long a port the shell failed to bind stays out of the pool: something else holds it,
/// and handing it out again at once would fail again.
pub const PORT_QUARANTINE: Duration = Duration::from_secs(60);
/// How long the port after an EVEN-PORT R=1 allocation stays reserved for its
/// RESERVATION-TOKEN. [RFC 8656 §7.2](https://www.rfc-editor.org/rfc/rfc8656#section-7.2)
/// asks for "at least 30 seconds"; the client sends the second Allocate right after the
/// first succeeds, so the minimum is plenty, and a shorter hold returns unused ports sooner.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl TurnConfig {
    /// A configuration with every default:
    ///
    /// * lifetimes: [`DEFAULT_LIFETIME`], [`MAX_LIFETIME`], [`PERMISSION_LIFETIME`],
    ///   [`CHANNEL_LIFETIME`], [`CHANNEL_COOLDOWN`], [`NONCE_LIFETIME`], [`PORT_QUARANTINE`],
    ///   [`RESERVATION_LIFETIME`];
    /// * at most 10 000 allocations per instance (far more than one core relays well; the
    ///   port range usually binds first), 32 per user (a browser opens a few per
    ///   PeerConnection; 32 leaves room for many tabs and reconnects while stopping one
    ///   credential from exhausting a core), 128 permissions and 128 channels per allocation
    ///   (ICE needs one per remote candidate; the cap bounds per-allocation memory);
    /// * the built-in peer filter ([`PeerFilter::new`]) plus `relay_ip` as an own address;
    /// * 401/438/400 limited to 10 per second per source, bursts of 20, over 4096 buckets
    ///   (a legitimate client needs one or two per Allocate);
    /// * no SOFTWARE (it helps attackers pick exploits, and costs bytes in every response).
    ///
    /// `ports` is the relay port range, in a [`PortTable`] of this config (and its clones)
    /// alone; servers on one host share the host's table with
    /// [`with_port_table`](Self::with_port_table) instead. `relay_ip` is what
    /// XOR-RELAYED-ADDRESS advertises (the public address, behind 1:1 NAT too).
    pub fn new(
        realm: &str,
        secrets: Vec<TurnSecret>,
        relay_ip: Ipv4Addr,
        ports: RangeInclusive<u16>,
    ) -> Result<Self, ConfigError> {
        match Realm::new(realm) {
            Ok(_) if !realm.is_empty() => {}
            Ok(_) => return Err(ConfigError::InvalidRealm(None)),
            Err(err) => return Err(ConfigError::InvalidRealm(Some(err))),
        }
        if secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        let ports = Arc::new(PortTable::new(ports)?);
        Ok(Self {
            realm: realm.to_owned(),
            secrets,
            relay_ip,
            ports,
            software: None,
            other_address: None,
            default_lifetime: secs(DEFAULT_LIFETIME),
            max_lifetime: secs(MAX_LIFETIME),
            permission_lifetime: secs(PERMISSION_LIFETIME),
            channel_lifetime: secs(CHANNEL_LIFETIME),
            channel_cooldown: secs(CHANNEL_COOLDOWN),
            nonce_lifetime: secs(NONCE_LIFETIME),
            port_quarantine: secs(PORT_QUARANTINE),
            reservation_lifetime: secs(RESERVATION_LIFETIME),
            max_allocations: 10_000,
            max_allocations_per_user: 32,
            max_permissions_per_allocation: 128,
            max_channels_per_allocation: 128,
            peer_filter: PeerFilter::new(),
            unauthenticated_per_second: 10,
            unauthenticated_burst: 20,
            rate_limit_buckets: 4096,
            password_algorithms: false,
        })
    }

    /// Offers SHA-256 key derivation (RFC 8489 §9.2.3): every 401 and 438 then carries a
    /// NONCE with the nonce cookie and its "password algorithms" bit, and PASSWORD-ALGORITHMS
    /// (SHA-256, MD5), and requests under such a nonce are held to §9.2.4's algorithm checks.
    ///
    /// Off by default because it makes each unauthenticated answer 28 bytes longer (a 401 to a
    /// bare header goes from 4.4 to 5.8 times the request; see the module doc's amplification
    /// bound). MESSAGE-INTEGRITY-SHA256 over the MD5 key is accepted either way.
    pub const fn with_password_algorithms(mut self, offer: bool) -> Self {
        self.password_algorithms = offer;
        self
    }

    /// Takes relay ports from `table`, shared with the host's other servers, instead of the
    /// range given to [`new`](Self::new). Every worker of a host must share one table: an
    /// EVEN-PORT reservation made on one worker is claimed on whichever worker the kernel
    /// hands the client's next socket to (see [`PortTable`]).
    pub fn with_port_table(mut self, table: Arc<PortTable>) -> Self {
        self.ports = table;
        self
    }

    /// Binding success responses carry RESPONSE-ORIGIN `origin` (this listener's address as
    /// clients reach it) and OTHER-ADDRESS `other` (the host's second STUN address), for
    /// RFC 5780 NAT behaviour discovery; see
    /// [`BindingConfig::with_other_address`](crate::BindingConfig::with_other_address).
    pub const fn with_other_address(mut self, origin: SocketAddr, other: SocketAddr) -> Self {
        self.other_address = Some((origin, other));
        self
    }

    /// Adds SOFTWARE to every response.
    pub const fn with_software(mut self, software: Software<'static>) -> Self {
        self.software = Some(software);
        self
    }

    /// Sets the default and maximum allocation lifetimes.
    pub fn with_allocation_lifetime(
        mut self,
        default: Duration,
        max: Duration,
    ) -> Result<Self, ConfigError> {
        self.default_lifetime = whole_secs(default, "default allocation lifetime")?;
        self.max_lifetime = whole_secs(max, "maximum allocation lifetime")?;
        if self.default_lifetime > self.max_lifetime {
            return Err(ConfigError::LifetimeOrder);
        }
        Ok(self)
    }

    /// Sets how long a nonce stays valid.
    pub fn with_nonce_lifetime(mut self, lifetime: Duration) -> Result<Self, ConfigError> {
        self.nonce_lifetime = whole_secs(lifetime, "nonce lifetime")?;
        Ok(self)
    }

    /// Sets the allocation quotas: per instance, and per user (the part of the REST username
    /// after the first `:`).
    pub const fn with_allocation_quota(mut self, total: usize, per_user: u32) -> Self {
        self.max_allocations = total;
        self.max_allocations_per_user = per_user;
        self
    }

    /// Sets the per-allocation caps on permissions and channel bindings.
    pub const fn with_allocation_limits(mut self, permissions: usize, channels: usize) -> Self {
        self.max_permissions_per_allocation = permissions;
        self.max_channels_per_allocation = channels;
        self
    }

    /// Replaces the peer filter. The relay address is always added as an own address.
    pub fn with_peer_filter(mut self, filter: PeerFilter) -> Self {
        self.peer_filter = filter;
        self
    }

    /// Lets clients relay to loopback peers ([`PeerFilter::danger_allow_loopback`]): for
    /// tests and benches only.
    pub fn danger_allow_loopback_peers(mut self) -> Self {
        self.peer_filter = self.peer_filter.danger_allow_loopback();
        self
    }

    /// Sets the rate limit on responses sent before authentication: `per_second` refill and
    /// `burst` tokens per bucket, over `buckets` buckets (fixed memory, 16 bytes each).
    pub const fn with_unauthenticated_rate(
        mut self,
        per_second: u32,
        burst: u32,
        buckets: usize,
    ) -> Self {
        self.unauthenticated_per_second = per_second;
        self.unauthenticated_burst = burst;
        self.rate_limit_buckets = buckets;
        self
    }

    /// The relay port range: the port table's.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.ports.range()
    }

    /// The port table this server takes relay ports from.
    pub const fn port_table(&self) -> &Arc<PortTable> {
        &self.ports
    }

    /// The advertised relay address.
    pub const fn relay_ip(&self) -> Ipv4Addr {
        self.relay_ip
    }

    /// The configured filter with the relay address added as an own address.
    pub(crate) fn effective_peer_filter(&self) -> PeerFilter {
        self.peer_filter
            .clone()
            .own_address(IpAddr::V4(self.relay_ip))
    }
}

const fn secs(duration: Duration) -> u32 {
    duration.as_secs() as u32
}

fn whole_secs(duration: Duration, what: &'static str) -> Result<u32, ConfigError> {
    match u32::try_from(duration.as_secs()) {
        Ok(secs) if secs > 0 && duration.subsec_nanos() == 0 => Ok(secs),
        Ok(_) | Err(_) => Err(ConfigError::InvalidDuration { what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Vec<TurnSecret> {
        vec![TurnSecret::new("s")]
    }

    #[test]
    fn validates_once() {
        let ip = Ipv4Addr::new(203, 0, 113, 1);
        assert!(TurnConfig::new("example.org", secret(), ip, 49152..=65535).is_ok());
        assert_eq!(
            TurnConfig::new("", secret(), ip, 1..=2).map(|_| ()),
            Err(ConfigError::InvalidRealm(None))
        );
        assert!(matches!(
            TurnConfig::new(&"r".repeat(200), secret(), ip, 1..=2),
            Err(ConfigError::InvalidRealm(Some(_)))
        ));
        assert_eq!(
            TurnConfig::new("r", vec![], ip, 1..=2).map(|_| ()),
            Err(ConfigError::NoSecret)
        );
        #[expect(clippy::reversed_empty_ranges, reason = "testing the empty range")]
        let empty = 5..=4;
        for ports in [0..=10, empty] {
            assert!(matches!(
                TurnConfig::new("r", secret(), ip, ports),
                Err(ConfigError::InvalidPortRange { .. })
            ));
        }
        let config = TurnConfig::new("r", secret(), ip, 1..=2).unwrap();
        let shared = Arc::new(PortTable::new(10..=20).unwrap());
        let other = config.clone().with_port_table(Arc::clone(&shared));
        assert_eq!(other.ports(), 10..=20);
        assert!(Arc::ptr_eq(other.port_table(), &shared));
        assert!(Arc::ptr_eq(
            config.clone().port_table(),
            config.port_table()
        ));
        assert_eq!(
            config
                .clone()
                .with_allocation_lifetime(Duration::from_secs(700), Duration::from_secs(600))
                .map(|_| ()),
            Err(ConfigError::LifetimeOrder)
        );
        assert!(matches!(
            config
                .clone()
                .with_nonce_lifetime(Duration::from_millis(1500)),
            Err(ConfigError::InvalidDuration { .. })
        ));
        assert!(matches!(
            config.with_nonce_lifetime(Duration::ZERO),
            Err(ConfigError::InvalidDuration { .. })
        ));
    }
}
