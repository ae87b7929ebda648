//! The grant table: which nodes may hold relay sessions on the dataplane, and the
//! [`Command`]s that keep the dataplane's copy in step with it. Pure: no I/O, time is an input.
//!
//! A node's grant is valid for its current registration `generation` until
//! `min(last_seen + node_timeout, token expiry)` ([`grant_for`]), so a node that stops sending
//! heartbeats loses relay permission even if no `Revoke` ever reaches the dataplane.
//!
//! Driving the table:
//!
//! * local events, as the API sees them: [`GrantTable::handle_grant`] (registration,
//!   heartbeat), [`GrantTable::handle_revoke`] (deletion, an `offline` heartbeat),
//!   [`GrantTable::handle_stale`] (the sweeper found the node silent);
//! * [`GrantTable::handle_sync`] with every live grant read from the store, at the first sync,
//!   and then [`GrantTable::handle_changes`] with only the rows that changed since the last
//!   sync (registrations and heartbeats as [`GrantUpdate::Live`], deletions and inactive
//!   nodes as [`GrantUpdate::Gone`]) every host heartbeat interval, so the grants of nodes
//!   that registered through other hosts arrive here too, and a sync reads what changed, not
//!   every live node;
//! * [`GrantTable::resync`] when the dataplane restarted (`Event::NeedGrants`): `ClearGrants`
//!   and then every live grant.
//!
//! Each `handle_*` returns the commands to send, in order. A store read races with local
//! events (the read may predate a registration this host just answered), so the table counts
//! its changes: [`GrantTable::epoch`], taken before a read, lets [`GrantTable::handle_sync`]
//! and [`GrantTable::handle_stale`] leave alone every entry changed since.

use std::collections::BTreeMap;
use std::time::Duration;

use boson_shared::NodeId;
use boson_shared::plane::{Command, Generation, Grant, UnixMs};

use crate::clock::UnixMillis;

/// One node's row as an incremental sync read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantUpdate {
    /// Live: this is its grant.
    Live(Grant),
    /// Deleted, inactive or lapsed at this generation.
    Gone {
        /// The node.
        node: NodeId,
        /// Its generation then.
        generation: Generation,
    },
}

/// A point in the table's history; see [`GrantTable::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

/// What the dataplane has been told, per node.
#[derive(Debug, Clone)]
pub struct GrantTable {
    entries: BTreeMap<NodeId, Entry>,
    changes: u64,
    renew_before: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    grant: Grant,
    changed: u64,
    /// The latest expiry heard of for this generation but not sent yet (not due for renewal
    /// when it was heard): [`GrantTable::handle_changes`] sends it once it is due, since an
    /// incremental sync does not read the row again.
    latest: UnixMs,
}

/// The grant a node gets at `now`: for its `generation`, until `last_seen + node_timeout` or
/// its token's expiry, whichever comes first; `None` once that has passed. A
/// `token_expires_at` of 0 means unknown (rows written before the column existed).
pub fn grant_for(
    node: NodeId,
    generation: Generation,
    last_seen: UnixMillis,
    token_expires_at: UnixMillis,
    now: UnixMillis,
    node_timeout: Duration,
) -> Option<Grant> {
    let mut until = last_seen.saturating_add(node_timeout);
    if token_expires_at.0 > 0 {
        until = until.min(token_expires_at);
    }
    (until > now).then(|| Grant {
        node,
        generation,
        expires_at: unix_ms(until),
    })
}

/// `at` as the plane's unsigned milliseconds (times before 1970 clamp to 0).
pub fn unix_ms(at: UnixMillis) -> UnixMs {
    UnixMs::try_from(at.0).unwrap_or(0)
}

impl GrantTable {
    /// An empty table that re-sends a still valid grant once less than `renew_before` of it
    /// remains (half the node timeout: a heartbeat every third of the timeout then renews
    /// every other heartbeat, and one lost heartbeat never lets a grant lapse).
    pub fn new(renew_before: Duration) -> Self {
        Self {
            entries: BTreeMap::new(),
            changes: 0,
            renew_before: u64::try_from(renew_before.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Marks the present, before reading the store for [`Self::handle_sync`] or sweeping for
    /// [`Self::handle_stale`].
    pub fn epoch(&self) -> Epoch {
        Epoch(self.changes)
    }

    /// The grant the dataplane holds for `node`.
    pub fn get(&self, node: NodeId) -> Option<Grant> {
        self.entries.get(&node).map(|entry| entry.grant)
    }

    /// Every grant, by node id.
    pub fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        self.entries.values().map(|entry| entry.grant)
    }

    /// A node (re-)registered or sent a heartbeat: `Grant` it if it is new to the table, has a
    /// newer generation, or its grant needs renewing. Grants of an older generation than the
    /// table's are ignored (a slow request of a since re-registered node).
    pub fn handle_grant(&mut self, grant: Grant, now: UnixMs) -> Option<Command> {
        let send = match self.entries.get(&grant.node) {
            None => true,
            Some(old) if grant.generation > old.grant.generation => true,
            Some(old) if grant.generation < old.grant.generation => false,
            Some(old) => self.needs_renewal(&old.grant, &grant, now),
        };
        if !send {
            if let Some(old) = self.entries.get_mut(&grant.node)
                && old.grant.generation == grant.generation
            {
                old.latest = old.latest.max(grant.expires_at);
            }
            return None;
        }
        self.changes += 1;
        self.entries.insert(
            grant.node,
            Entry {
                grant,
                changed: self.changes,
                latest: grant.expires_at,
            },
        );
        Some(Command::Grant(grant))
    }

    /// A node was deleted (`up_to: None`) or gave up its registration `up_to` (an `offline`
    /// heartbeat with a token of that generation): `Revoke` it, unless it has re-registered
    /// since.
    pub fn handle_revoke(&mut self, node: NodeId, up_to: Option<Generation>) -> Option<Command> {
        let entry = self.entries.get(&node)?;
        if up_to.is_some_and(|generation| entry.grant.generation > generation) {
            return None;
        }
        self.entries.remove(&node);
        self.changes += 1;
        Some(Command::Revoke { node })
    }

    /// The sweeper, which started at `since`, found `node` silent: `Revoke` it, unless the
    /// table heard from the node after `since`.
    pub fn handle_stale(&mut self, node: NodeId, since: Epoch) -> Option<Command> {
        let entry = self.entries.get(&node)?;
        if entry.changed > since.0 {
            return None;
        }
        self.entries.remove(&node);
        self.changes += 1;
        Some(Command::Revoke { node })
    }

    /// `fresh` holds every live grant in the store, read after `since`: grant what is new or
    /// renewed, revoke what is gone. Entries changed after `since` are newer than the read and
    /// stay as they are.
    pub fn handle_sync(
        &mut self,
        fresh: impl IntoIterator<Item = Grant>,
        since: Epoch,
        now: UnixMs,
    ) -> Vec<Command> {
        let fresh: BTreeMap<NodeId, Grant> = fresh.into_iter().map(|g| (g.node, g)).collect();
        let mut commands = Vec::new();
        let gone: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(node, entry)| !fresh.contains_key(node) && entry.changed <= since.0)
            .map(|(node, _)| *node)
            .collect();
        for node in gone {
            self.entries.remove(&node);
            self.changes += 1;
            commands.push(Command::Revoke { node });
        }
        for grant in fresh.into_values() {
            let newer_here = self
                .entries
                .get(&grant.node)
                .is_some_and(|entry| entry.changed > since.0);
            if newer_here {
                continue;
            }
            // The store is the truth for entries it has seen since they last changed here,
            // even if its generation is lower (a restored database).
            if self
                .entries
                .get(&grant.node)
                .is_some_and(|entry| entry.grant.generation > grant.generation)
            {
                self.entries.remove(&grant.node);
            }
            commands.extend(self.handle_grant(grant, now));
        }
        commands
    }

    /// `changes` holds the rows that changed in the store since the last sync, read after
    /// `since`: grant what is new or renewed, revoke what is gone, and revoke every grant that
    /// has lapsed by `now` (a node silent through other hosts changes no row). Entries
    /// changed here after `since` are newer than the read and stay as they are, and a `Gone`
    /// of an older generation than the one held spares it.
    pub fn handle_changes(
        &mut self,
        changes: impl IntoIterator<Item = GrantUpdate>,
        since: Epoch,
        now: UnixMs,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        for change in changes {
            let node = match change {
                GrantUpdate::Live(grant) => grant.node,
                GrantUpdate::Gone { node, .. } => node,
            };
            if self
                .entries
                .get(&node)
                .is_some_and(|entry| entry.changed > since.0)
            {
                continue;
            }
            match change {
                GrantUpdate::Live(grant) => {
                    // The store is the truth for entries it has seen since they last changed
                    // here, even if its generation is lower (a restored database).
                    if self
                        .entries
                        .get(&node)
                        .is_some_and(|entry| entry.grant.generation > grant.generation)
                    {
                        self.entries.remove(&node);
                    }
                    commands.extend(self.handle_grant(grant, now));
                }
                GrantUpdate::Gone { generation, .. } => {
                    commands.extend(self.handle_revoke(node, Some(generation)));
                }
            }
        }
        // Renewals heard of earlier that are due now.
        let due: Vec<Grant> = self
            .entries
            .values()
            .filter(|entry| entry.latest > now)
            .filter(|entry| {
                let later = Grant {
                    expires_at: entry.latest,
                    ..entry.grant
                };
                self.needs_renewal(&entry.grant, &later, now)
            })
            .map(|entry| Grant {
                expires_at: entry.latest,
                ..entry.grant
            })
            .collect();
        for grant in due {
            commands.extend(self.handle_grant(grant, now));
        }
        let lapsed: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.grant.expires_at <= now)
            .map(|(node, _)| *node)
            .collect();
        for node in lapsed {
            self.entries.remove(&node);
            self.changes += 1;
            commands.push(Command::Revoke { node });
        }
        commands
    }

    /// Everything the dataplane needs after a restart: `ClearGrants`, then every grant still
    /// valid at `now` (expired ones are dropped).
    pub fn resync(&mut self, now: UnixMs) -> Vec<Command> {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.grant.expires_at > now);
        if self.entries.len() != before {
            self.changes += 1;
        }
        let mut commands = vec![Command::ClearGrants];
        commands.extend(self.grants().map(Command::Grant));
        commands
    }

    fn needs_renewal(&self, old: &Grant, fresh: &Grant, now: UnixMs) -> bool {
        fresh.expires_at > old.expires_at && old.expires_at.saturating_sub(now) < self.renew_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(90);

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn grant(n: u8, generation: Generation, expires_at: UnixMs) -> Grant {
        Grant {
            node: node(n),
            generation,
            expires_at,
        }
    }

    fn table() -> GrantTable {
        GrantTable::new(TIMEOUT / 2)
    }

    #[test]
    fn grants_last_until_the_node_timeout_or_the_token_expiry() {
        let seen = UnixMillis(1_000_000);
        let cases = [
            // (token expiry, now, expected expiry)
            (UnixMillis(10_000_000), 1_000_000, Some(1_090_000)),
            (UnixMillis(1_050_000), 1_000_000, Some(1_050_000)),
            (UnixMillis(0), 1_000_000, Some(1_090_000)),
            (UnixMillis(10_000_000), 1_090_000, None),
            (UnixMillis(1_050_000), 1_050_000, None),
        ];
        for (token_expiry, now, want) in cases {
            let got = grant_for(node(1), 3, seen, token_expiry, UnixMillis(now), TIMEOUT);
            assert_eq!(got.map(|g| g.expires_at), want, "{token_expiry:?} at {now}");
            assert!(got.is_none_or(|g| g.generation == 3 && g.node == node(1)));
        }
    }

    #[test]
    fn handle_grant_sends_new_generations_and_renewals_only() {
        let mut t = table();
        // (grant, now, sent?)
        let steps = [
            (grant(1, 1, 90_000), 0, true),         // new node
            (grant(1, 1, 120_000), 30_000, false),  // 60 s left > 45 s: no renewal yet
            (grant(1, 1, 150_000), 60_000, true),   // 30 s left < 45 s: renew
            (grant(1, 1, 150_000), 110_000, false), // nothing later than what was sent
            (grant(1, 2, 100_000), 61_000, true),   // re-registration: new generation
            (grant(1, 1, 999_000), 62_000, false),  // a slow request of the old generation
        ];
        for (i, (g, now, sent)) in steps.into_iter().enumerate() {
            let command = t.handle_grant(g, now);
            assert_eq!(command, sent.then_some(Command::Grant(g)), "step {i}");
        }
        assert_eq!(t.get(node(1)), Some(grant(1, 2, 100_000)));
    }

    #[test]
    fn handle_revoke_spares_a_newer_registration() {
        let mut t = table();
        t.handle_grant(grant(1, 2, 90_000), 0);
        assert_eq!(
            t.handle_revoke(node(1), Some(1)),
            None,
            "offline with an old token"
        );
        assert_eq!(t.get(node(1)).map(|g| g.generation), Some(2));
        assert_eq!(
            t.handle_revoke(node(1), Some(2)),
            Some(Command::Revoke { node: node(1) })
        );
        assert_eq!(t.handle_revoke(node(1), None), None, "already revoked");
        t.handle_grant(grant(2, 5, 90_000), 0);
        assert_eq!(
            t.handle_revoke(node(2), None),
            Some(Command::Revoke { node: node(2) }),
            "deletion revokes any generation"
        );
    }

    #[test]
    fn handle_stale_spares_nodes_heard_from_since_the_sweep_began() {
        let mut t = table();
        t.handle_grant(grant(1, 1, 90_000), 0);
        t.handle_grant(grant(2, 1, 90_000), 0);
        let since = t.epoch();
        t.handle_grant(grant(2, 2, 95_000), 5_000); // re-registered while sweeping
        assert_eq!(
            t.handle_stale(node(1), since),
            Some(Command::Revoke { node: node(1) })
        );
        assert_eq!(t.handle_stale(node(2), since), None);
        assert_eq!(t.handle_stale(node(3), since), None);
    }

    #[test]
    fn handle_sync_converges_on_the_store_without_undoing_newer_local_changes() {
        let mut t = table();
        t.handle_grant(grant(1, 1, 90_000), 0); // will vanish from the store
        t.handle_grant(grant(2, 1, 90_000), 0); // will be renewed from the store
        t.handle_grant(grant(3, 4, 90_000), 0); // store shows a lower generation
        let since = t.epoch();
        // Local events after the read started:
        t.handle_grant(grant(4, 1, 90_000), 1_000); // not in the read yet
        t.handle_grant(grant(5, 2, 90_000), 1_000); // read saw generation 1
        let fresh = [
            grant(2, 1, 150_000),
            grant(3, 3, 150_000),
            grant(5, 1, 80_000),
            grant(6, 1, 100_000), // registered through another host
        ];
        let commands = t.handle_sync(fresh, since, 60_000);
        assert_eq!(
            commands,
            vec![
                Command::Revoke { node: node(1) },
                Command::Grant(grant(2, 1, 150_000)),
                Command::Grant(grant(3, 3, 150_000)),
                Command::Grant(grant(6, 1, 100_000)),
            ]
        );
        assert_eq!(t.get(node(4)), Some(grant(4, 1, 90_000)));
        assert_eq!(t.get(node(5)), Some(grant(5, 2, 90_000)));
        // A second identical sync changes nothing.
        let since = t.epoch();
        let again = [
            grant(2, 1, 150_000),
            grant(3, 3, 150_000),
            grant(4, 1, 90_000),
            grant(5, 2, 90_000),
            grant(6, 1, 100_000),
        ];
        assert_eq!(t.handle_sync(again, since, 61_000), Vec::new());
    }

    #[test]
    fn handle_changes_applies_what_changed_and_drops_what_lapsed() {
        let mut t = table();
        t.handle_grant(grant(1, 1, 90_000), 0); // will lapse, no row changes
        t.handle_grant(grant(2, 1, 90_000), 0); // renewed through another host in time
        t.handle_grant(grant(3, 2, 200_000), 0); // deleted through another host
        t.handle_grant(grant(4, 3, 200_000), 0); // an old registration's deletion
        t.handle_grant(grant(7, 1, 200_000), 0); // unchanged: stays, nothing sent
        let since = t.epoch();
        t.handle_grant(grant(5, 2, 200_000), 1_000); // re-registered here after the read
        let changes = [
            GrantUpdate::Live(grant(2, 1, 150_000)),
            GrantUpdate::Gone {
                node: node(3),
                generation: 2,
            },
            GrantUpdate::Gone {
                node: node(4),
                generation: 2,
            },
            GrantUpdate::Gone {
                node: node(5),
                generation: 1,
            },
            GrantUpdate::Live(grant(6, 1, 180_000)), // registered through another host
        ];
        let commands = t.handle_changes(changes, since, 95_000);
        assert_eq!(
            commands,
            vec![
                Command::Grant(grant(2, 1, 150_000)),
                Command::Revoke { node: node(3) },
                Command::Grant(grant(6, 1, 180_000)),
                Command::Revoke { node: node(1) },
            ]
        );
        assert_eq!(t.get(node(1)), None);
        assert_eq!(t.get(node(4)), Some(grant(4, 3, 200_000)));
        assert_eq!(t.get(node(5)), Some(grant(5, 2, 200_000)));
        assert_eq!(t.get(node(7)), Some(grant(7, 1, 200_000)));
        // Nothing changed: nothing read, nothing sent.
        let since = t.epoch();
        assert_eq!(t.handle_changes([], since, 96_000), Vec::new());
    }

    #[test]
    fn handle_changes_sends_a_renewal_read_earlier_once_it_is_due() {
        let mut t = table();
        t.handle_grant(grant(8, 1, 100_000), 0);
        let since = t.epoch();
        // Read at 50 s: 50 s left, more than half the timeout: not sent yet.
        let read = [GrantUpdate::Live(grant(8, 1, 140_000))];
        assert_eq!(t.handle_changes(read, since, 50_000), Vec::new());
        // No row changes again, but at 60 s the renewal is due.
        let since = t.epoch();
        assert_eq!(
            t.handle_changes([], since, 60_000),
            vec![Command::Grant(grant(8, 1, 140_000))]
        );
        assert_eq!(t.handle_changes([], t.epoch(), 61_000), Vec::new());
        // Heard of, but lapsed by the time it would be due: revoked, not re-granted.
        t.handle_grant(grant(9, 1, 100_000), 0);
        t.handle_changes([GrantUpdate::Live(grant(9, 1, 110_000))], t.epoch(), 50_000);
        assert_eq!(
            t.handle_changes([], t.epoch(), 120_000),
            vec![Command::Revoke { node: node(9) },]
        );
    }

    #[test]
    fn resync_clears_then_sends_every_valid_grant() {
        let mut t = table();
        t.handle_grant(grant(2, 1, 90_000), 0);
        t.handle_grant(grant(1, 3, 50_000), 0);
        t.handle_grant(grant(3, 1, 10_000), 0);
        assert_eq!(
            t.resync(20_000),
            vec![
                Command::ClearGrants,
                Command::Grant(grant(1, 3, 50_000)),
                Command::Grant(grant(2, 1, 90_000)),
            ]
        );
        assert_eq!(t.get(node(3)), None, "expired grants are dropped");
        assert_eq!(t.resync(100_000), vec![Command::ClearGrants]);
    }
}
