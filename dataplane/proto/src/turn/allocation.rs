//! One allocation's state: its client, relay port, lifetime, permissions and channel bindings.
//!
//! Lookups the relay hot path makes (permission by peer IP, peer by channel, channel by peer)
//! are hash maps. Expiry is driven by the server's timer queue, which names the entry to look
//! at, so the maps are walked only once, in [`Allocation::into_expiries`] when the allocation
//! ends, to take its entries out of that queue (in any order: removals commute).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::attr::ReservationToken;
use super::{Allowed, ChannelNumber, PeerAddr};
use crate::binding::ClientAddr;
use crate::stun::TransactionId;

/// Tells apart allocations that used the same relay port at different times, so a timer set
/// for an old one never touches its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AllocationId(pub(crate) u64);

/// A channel binding. Active until `expires_at`, then in cooldown for the configured time,
/// during which neither its number nor its peer can be rebound to something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Channel {
    pub(crate) peer: PeerAddr,
    pub(crate) expires_at: Instant,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) id: AllocationId,
    pub(crate) client: ClientAddr,
    /// The REST username that created it; later requests must use the same.
    username: String,
    /// Where the `user` part starts in `username`.
    user_start: usize,
    /// Transaction id of the Allocate that created it, to recognise retransmissions.
    pub(crate) transaction_id: TransactionId,
    /// The LIFETIME that Allocate's success response carried.
    pub(crate) granted_lifetime: u32,
    /// The RESERVATION-TOKEN that response carried (EVEN-PORT R=1), for retransmissions.
    pub(crate) reservation: Option<ReservationToken>,
    pub(crate) expires_at: Instant,
    /// Expiry, and where the IP may be reached (an own address only on live relay ports).
    permissions: HashMap<IpAddr, (Instant, Allowed)>,
    channels: HashMap<ChannelNumber, Channel>,
    peer_channels: HashMap<PeerAddr, ChannelNumber>,
}

impl Allocation {
    pub(crate) fn new(
        id: AllocationId,
        client: ClientAddr,
        username: &str,
        user: &str,
        transaction_id: TransactionId,
        granted_lifetime: u32,
        expires_at: Instant,
    ) -> Self {
        Self {
            id,
            client,
            username: username.to_owned(),
            user_start: username.len() - user.len(),
            transaction_id,
            granted_lifetime,
            reservation: None,
            expires_at,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            peer_channels: HashMap::new(),
        }
    }

    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// The quota key: what follows the first `:` of the REST username.
    pub(crate) fn user(&self) -> &str {
        self.username.get(self.user_start..).unwrap_or_default()
    }

    pub(crate) fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    // Permissions.

    /// Where a live permission for `ip` lets the client reach it, if there is one at `now`.
    pub(crate) fn permission(&self, ip: IpAddr, now: Instant) -> Option<Allowed> {
        self.permissions
            .get(&ip)
            .filter(|&&(t, _)| now < t)
            .map(|&(_, allowed)| allowed)
    }

    pub(crate) fn permission_expiry(&self, ip: IpAddr) -> Option<Instant> {
        self.permissions.get(&ip).map(|&(t, _)| t)
    }

    /// Installs or refreshes a permission; returns the previous expiry if there was one.
    pub(crate) fn set_permission(
        &mut self,
        ip: IpAddr,
        expires_at: Instant,
        allowed: Allowed,
    ) -> Option<Instant> {
        self.permissions
            .insert(ip, (expires_at, allowed))
            .map(|(t, _)| t)
    }

    /// Removes the permission for `ip` if it has expired at `now`.
    pub(crate) fn expire_permission(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.permissions.get(&ip).is_some_and(|&(t, _)| t <= now) {
            self.permissions.remove(&ip);
            return true;
        }
        false
    }

    pub(crate) fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// Judges every permission's IP again with `judge`: removes those it refuses (`None`),
    /// returned with their expiries, and keeps the others with their new reach.
    pub(crate) fn revoke_permissions(
        &mut self,
        judge: impl Fn(IpAddr) -> Option<Allowed>,
    ) -> Vec<(IpAddr, Instant)> {
        let mut revoked = Vec::new();
        self.permissions
            .retain(|&ip, (expires_at, allowed)| match judge(ip) {
                Some(now_allowed) => {
                    *allowed = now_allowed;
                    true
                }
                None => {
                    revoked.push((ip, *expires_at));
                    false
                }
            });
        revoked
    }

    // Channels.

    /// The peer of an active channel.
    pub(crate) fn channel_peer(&self, number: ChannelNumber, now: Instant) -> Option<PeerAddr> {
        self.channels
            .get(&number)
            .filter(|c| now < c.expires_at)
            .map(|c| c.peer)
    }

    /// The active channel bound to `peer`.
    pub(crate) fn peer_channel(&self, peer: PeerAddr, now: Instant) -> Option<ChannelNumber> {
        let number = *self.peer_channels.get(&peer)?;
        self.channel_peer(number, now).map(|_| number)
    }

    /// A binding of `number`, active or cooling down.
    pub(crate) fn channel(&self, number: ChannelNumber) -> Option<Channel> {
        self.channels.get(&number).copied()
    }

    /// The number bound to `peer`, active or cooling down.
    pub(crate) fn channel_of(&self, peer: PeerAddr) -> Option<ChannelNumber> {
        self.peer_channels.get(&peer).copied()
    }

    /// Binds or refreshes `number` ↔ `peer`. The caller has checked the RFC 8656 §12 rules.
    pub(crate) fn bind_channel(
        &mut self,
        number: ChannelNumber,
        peer: PeerAddr,
        expires_at: Instant,
    ) -> Option<Channel> {
        self.peer_channels.insert(peer, number);
        self.channels.insert(number, Channel { peer, expires_at })
    }

    /// Removes the binding of `number` if it expired and its cooldown ended at `now`.
    pub(crate) fn release_channel(
        &mut self,
        number: ChannelNumber,
        cooldown: std::time::Duration,
        now: Instant,
    ) -> bool {
        let Some(channel) = self.channels.get(&number) else {
            return false;
        };
        if channel.expires_at + cooldown > now {
            return false;
        }
        let peer = channel.peer;
        self.channels.remove(&number);
        self.peer_channels.remove(&peer);
        true
    }

    /// Ends every active channel to a peer `denied` refuses at `now`: it stops relaying at once
    /// and keeps its number and peer through the cooldown, as if it had expired. Returns each
    /// one's number and former expiry.
    pub(crate) fn expire_channels(
        &mut self,
        denied: impl Fn(PeerAddr) -> bool,
        now: Instant,
    ) -> Vec<(ChannelNumber, Instant)> {
        let mut expired = Vec::new();
        for (&number, channel) in &mut self.channels {
            if now < channel.expires_at && denied(channel.peer) {
                expired.push((number, channel.expires_at));
                channel.expires_at = now;
            }
        }
        expired
    }

    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Consumes the allocation into the expiry of each permission (by peer IP) and each
    /// channel binding (by number): what the server's timer queue holds for it. The order is
    /// arbitrary.
    pub(crate) fn into_expiries(self) -> Expiries {
        Expiries {
            permissions: self
                .permissions
                .into_iter()
                .map(|(ip, (expires_at, _))| (ip, expires_at))
                .collect(),
            channels: self
                .channels
                .into_iter()
                .map(|(number, channel)| (number, channel.expires_at))
                .collect(),
        }
    }
}

/// See [`Allocation::into_expiries`]. At most the per-allocation permission and channel
/// limits long.
#[derive(Debug)]
pub(crate) struct Expiries {
    pub(crate) permissions: Vec<(IpAddr, Instant)>,
    pub(crate) channels: Vec<(ChannelNumber, Instant)>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn allocation(now: Instant) -> Allocation {
        Allocation::new(
            AllocationId(1),
            ClientAddr::new("198.51.100.1:4000".parse().unwrap()),
            "1700000000:alice:x",
            "alice:x",
            TransactionId::new([1; 12]),
            600,
            now + Duration::from_secs(600),
        )
    }

    #[test]
    fn user_is_the_part_after_the_first_colon() {
        let a = allocation(crate::turn::test_epoch());
        assert_eq!(a.username(), "1700000000:alice:x");
        assert_eq!(a.user(), "alice:x");
    }

    #[test]
    fn permissions_expire_by_time() {
        let t0 = crate::turn::test_epoch();
        let mut a = allocation(t0);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(a.permission(ip, t0), None);
        let end = t0 + Duration::from_secs(300);
        assert_eq!(a.set_permission(ip, end, Allowed::Anywhere), None);
        assert_eq!(
            a.permission(ip, t0 + Duration::from_secs(299)),
            Some(Allowed::Anywhere)
        );
        assert_eq!(a.permission(ip, end), None);
        assert!(!a.expire_permission(ip, t0 + Duration::from_secs(299)));
        assert!(a.expire_permission(ip, t0 + Duration::from_secs(300)));
        assert_eq!(a.permission_count(), 0);
    }

    #[test]
    fn channels_cool_down_before_release() {
        let t0 = crate::turn::test_epoch();
        let mut a = allocation(t0);
        let number = ChannelNumber::new(0x4000).unwrap();
        let peer = PeerAddr::new("192.0.2.9:7".parse().unwrap());
        let end = t0 + Duration::from_secs(600);
        a.bind_channel(number, peer, end);
        assert_eq!(a.channel_peer(number, t0), Some(peer));
        assert_eq!(a.peer_channel(peer, t0), Some(number));
        assert_eq!(a.channel_peer(number, end), None, "inactive once expired");
        assert_eq!(a.peer_channel(peer, end), None);
        assert_eq!(a.channel_of(peer), Some(number), "still reserved");
        let cooldown = Duration::from_secs(300);
        assert!(!a.release_channel(number, cooldown, end + Duration::from_secs(299)));
        assert!(a.release_channel(number, cooldown, end + cooldown));
        assert_eq!(a.channel(number), None);
        assert_eq!(a.channel_of(peer), None);
    }
}
