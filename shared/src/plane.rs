//! The messages between the control plane and the dataplane.
//!
//! The control plane owns decisions (who may relay, with which secrets and limits); the
//! dataplane owns packets. They talk in two directions:
//!
//! * [`Command`], control → dataplane: grants and revocations of relay sessions, TURN secret
//!   rotation, quotas and peer filters, drain, and where remote nodes are (for the relay mesh).
//! * [`Event`], dataplane → control: nodes connecting to and leaving the relay, TURN
//!   allocations created and expired.
//!
//! Both are plain data. How they travel (an in-process queue in `bosonserver run`, a
//! shared-memory ring between two processes) is the transport's business; this module is the
//! contract both sides compile against. Every variant is idempotent or carries enough to be
//! re-sent safely: the control plane re-pushes the whole grant table and the TURN settings
//! after a dataplane restart, and the dataplane re-announces its connected nodes and live
//! allocations after a control restart.
//!
//! The TURN settings ([`Command::TurnSecrets`], [`Command::TurnQuota`],
//! [`Command::PeerFilter`]) are the control plane's: a dataplane starts with the values of its
//! own configuration, so it serves before any control plane attaches, and replaces them with
//! whatever the control plane pushes. Each command carries the whole setting, never a change
//! to it, so the latest one is the truth.

use crate::{Cidr, NodeId};

/// Most TURN secrets in one [`Command::TurnSecrets`]: rotation keeps a handful.
pub const MAX_TURN_SECRETS: usize = 16;

/// Longest TURN secret, in bytes (HMAC keys longer than a block are hashed anyway).
pub const MAX_TURN_SECRET_LEN: usize = 1024;

/// Most networks in each list of a [`Command::PeerFilter`]: operators list a few ranges, not
/// a routing table, and the filter checks them one by one.
pub const MAX_PEER_CIDRS: usize = 256;

/// A registration generation: bumped by every re-registration of a node, which revokes the
/// tokens of older generations.
pub type Generation = i64;

/// Milliseconds since the Unix epoch.
pub type UnixMs = u64;

/// Which relay host, by the id it registers under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub uuid::Uuid);

impl HostId {
    /// The id from its 16 bytes, as wire formats carry it.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The id's 16 bytes, as wire formats carry it.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hyphenated lower case, as in mesh tokens.
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for HostId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// Permission for `node` to hold a relay session with tokens of `generation`, until
/// `expires_at` (a grant outlives token expiry by nothing: the dataplane also checks the
/// token's own expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The node.
    pub node: NodeId,
    /// The only generation whose tokens are accepted.
    pub generation: Generation,
    /// After this the grant is void, unless renewed.
    pub expires_at: UnixMs,
}

/// How a relay session reached the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket over plain TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// QUIC datagrams.
    Quic,
    /// A mesh link from another relay host.
    Mesh,
}

/// Control → dataplane.
///
/// Deliberately exhaustive (no `#[non_exhaustive]`): both planes are built from this
/// workspace, and a new variant must fail to compile in the wire codec (`boson-channel`) and
/// in every `match` until each side handles it, rather than fall into a catch-all arm at run
/// time.
///
/// `Debug` prints how many TURN secrets a [`Command::TurnSecrets`] holds, never the secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// Allow (or renew) a node's relay sessions. Replaces any older grant of the node.
    Grant(Grant),
    /// Withdraw a node's grant: its live sessions are closed, new ones refused.
    Revoke {
        /// The node.
        node: NodeId,
    },
    /// Forget every grant (the first message of a full re-push).
    ClearGrants,
    /// The TURN REST secrets, newest first; the first signs, all verify. Replaces the list
    /// the dataplane verifies with: requests (Refresh included) from now on must verify under
    /// one of these, while existing allocations keep relaying until they end. At most
    /// [`MAX_TURN_SECRETS`] of at most [`MAX_TURN_SECRET_LEN`] bytes; never empty.
    TurnSecrets(Vec<Vec<u8>>),
    /// Per-user TURN allocation quota, for new allocations (existing ones are not evicted).
    TurnQuota {
        /// Allocations per REST username.
        max_allocations_per_user: u32,
    },
    /// The operator's peer lists, on top of the dataplane's built-in filter and replacing any
    /// sent before: `allow` opens networks the built-in rules deny, `deny` closes networks
    /// whatever else says. The dataplane's own addresses and relay ports stay as it configured
    /// them. Permissions and channels to a peer the new lists deny stop relaying at once. At
    /// most [`MAX_PEER_CIDRS`] in each list.
    PeerFilter {
        /// Networks allowed despite the built-in rules.
        allow: Vec<Cidr>,
        /// Networks refused.
        deny: Vec<Cidr>,
    },
    /// Stop accepting new allocations and sessions; existing ones are served until they end
    /// or `deadline`.
    Drain {
        /// When the dataplane may stop regardless.
        deadline: UnixMs,
    },
    /// `node` is connected to relay host `host` (`None`: to no other host any more).
    Presence {
        /// The node.
        node: NodeId,
        /// The host it is connected to.
        host: Option<HostId>,
    },
    /// Relay host `host` is live and reachable at `relay_url` (`ws://…`) until `until`: the
    /// dataplane keeps a mesh link open to it while the announcement is fresh. The control
    /// plane re-announces every live host each heartbeat interval, so a host that stops
    /// being announced (it died, or the control plane that knew it did) is forgotten by
    /// itself, with no withdrawal to lose.
    MeshHost {
        /// The host.
        host: HostId,
        /// Its relay URL, as it registered it.
        relay_url: String,
        /// When the announcement lapses unless renewed.
        until: UnixMs,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Grant(grant) => f.debug_tuple("Grant").field(grant).finish(),
            Self::Revoke { node } => f.debug_struct("Revoke").field("node", node).finish(),
            Self::ClearGrants => f.write_str("ClearGrants"),
            Self::TurnSecrets(secrets) => write!(f, "TurnSecrets(<{} redacted>)", secrets.len()),
            Self::TurnQuota {
                max_allocations_per_user,
            } => f
                .debug_struct("TurnQuota")
                .field("max_allocations_per_user", max_allocations_per_user)
                .finish(),
            Self::PeerFilter { allow, deny } => f
                .debug_struct("PeerFilter")
                .field("allow", allow)
                .field("deny", deny)
                .finish(),
            Self::Drain { deadline } => {
                f.debug_struct("Drain").field("deadline", deadline).finish()
            }
            Self::Presence { node, host } => f
                .debug_struct("Presence")
                .field("node", node)
                .field("host", host)
                .finish(),
            Self::MeshHost {
                host,
                relay_url,
                until,
            } => f
                .debug_struct("MeshHost")
                .field("host", host)
                .field("relay_url", relay_url)
                .field("until", until)
                .finish(),
        }
    }
}

/// Dataplane → control.
///
/// Exhaustive for the same reason as [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node authenticated a relay session on `core`.
    NodeConnected {
        /// The node.
        node: NodeId,
        /// The worker core.
        core: u16,
        /// How it connected.
        transport: Transport,
    },
    /// A node's relay session on `core` ended.
    NodeDisconnected {
        /// The node.
        node: NodeId,
        /// The worker core.
        core: u16,
    },
    /// A TURN allocation was created for REST username `user`.
    AllocationCreated {
        /// The worker core.
        core: u16,
        /// The REST username's user part (empty for bare-expiry usernames).
        user: String,
        /// The relayed transport address.
        relay: std::net::SocketAddr,
    },
    /// A TURN allocation ended (expiry, refresh to 0 or drain).
    AllocationExpired {
        /// The worker core.
        core: u16,
        /// The relayed transport address.
        relay: std::net::SocketAddr,
    },
    /// The dataplane (re)started with no grants: the control plane must re-push them.
    NeedGrants,
    /// The ports of the dataplane's STUN/TURN listeners, told to every control plane that
    /// attaches (on core 0's ring), so one in another process hands out the URLs of the
    /// listeners that actually run.
    Listening {
        /// The UDP listener's port.
        udp: u16,
        /// The TURN-over-TCP listener's port, if it runs.
        tcp: Option<u16>,
        /// The TURN-over-TLS listener's port, if it runs.
        tls: Option<u16>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_turn_secrets() {
        let command = Command::TurnSecrets(vec![b"hunter2".to_vec(), b"correct horse".to_vec()]);
        assert_eq!(format!("{command:?}"), "TurnSecrets(<2 redacted>)");
        let quota = Command::TurnQuota {
            max_allocations_per_user: 3,
        };
        assert_eq!(
            format!("{quota:?}"),
            "TurnQuota { max_allocations_per_user: 3 }"
        );
    }
}
