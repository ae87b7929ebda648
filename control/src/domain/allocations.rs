//! The control plane's view of the dataplane's TURN allocations, from its events: pure.
//!
//! Keyed by (core, relayed address), so every event is idempotent: the same
//! `AllocationCreated` twice (once live, once re-announced to a restarted control plane)
//! counts once, and an `AllocationExpired` of an allocation never seen created changes
//! nothing. That is what lets a restarted control plane rebuild the view from whatever is
//! left in the event rings plus the dataplane's re-announcement, in that order.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Live allocations by core and by user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationView {
    /// The user of each live allocation.
    live: BTreeMap<(u16, SocketAddr), String>,
    /// Live allocations per core; a core keeps its entry at zero once seen, so its gauge
    /// reads 0 rather than disappearing.
    per_core: BTreeMap<u16, usize>,
    /// Live allocations per user (only users holding one).
    per_user: BTreeMap<String, usize>,
}

impl AllocationView {
    /// An allocation on `core` at `relay` for `user` was created (or re-announced).
    pub fn handle_created(&mut self, core: u16, relay: SocketAddr, user: String) {
        self.per_core.entry(core).or_default();
        match self.live.insert((core, relay), user.clone()) {
            Some(previous) if previous == user => return,
            // A relay address reused before its end was seen: the newer allocation wins.
            Some(previous) => self.remove_user(&previous),
            None => *self.per_core.entry(core).or_default() += 1,
        }
        *self.per_user.entry(user).or_default() += 1;
    }

    /// The allocation on `core` at `relay` ended.
    pub fn handle_expired(&mut self, core: u16, relay: SocketAddr) {
        let Some(user) = self.live.remove(&(core, relay)) else {
            return;
        };
        if let Some(count) = self.per_core.get_mut(&core) {
            *count = count.saturating_sub(1);
        }
        self.remove_user(&user);
    }

    /// Every allocation is gone (the dataplane restarted).
    pub fn clear(&mut self) {
        self.live.clear();
        self.per_user.clear();
        for count in self.per_core.values_mut() {
            *count = 0;
        }
    }

    /// Live allocations in all.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Live allocations per core, for every core seen so far (zeros included).
    pub fn per_core(&self) -> impl Iterator<Item = (u16, usize)> + '_ {
        self.per_core.iter().map(|(&core, &count)| (core, count))
    }

    /// Live allocations of `user`.
    pub fn of_user(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Users holding at least one live allocation.
    pub fn users(&self) -> usize {
        self.per_user.len()
    }

    fn remove_user(&mut self, user: &str) {
        if let Some(count) = self.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 1], port))
    }

    #[test]
    fn events_count_once_whatever_their_repetitions() {
        let mut view = AllocationView::default();
        view.handle_created(0, relay(50_000), "alice".into());
        view.handle_created(1, relay(50_001), "alice".into());
        view.handle_created(1, relay(50_002), "bob".into());
        // A re-announcement of what is already known.
        view.handle_created(1, relay(50_001), "alice".into());
        assert_eq!(view.len(), 3);
        assert_eq!(view.per_core().collect::<Vec<_>>(), [(0, 1), (1, 2)]);
        assert_eq!((view.of_user("alice"), view.of_user("bob")), (2, 1));
        assert_eq!(view.users(), 2);

        view.handle_expired(0, relay(50_000));
        view.handle_expired(0, relay(50_000));
        view.handle_expired(0, relay(50_001)); // on core 1, not 0
        view.handle_expired(2, relay(50_009)); // never seen created
        assert_eq!(view.per_core().collect::<Vec<_>>(), [(0, 0), (1, 2)]);
        assert_eq!(view.of_user("alice"), 1);

        // A port reused for another user before its end was reported.
        view.handle_created(1, relay(50_001), "carol".into());
        assert_eq!(view.len(), 2);
        assert_eq!((view.of_user("alice"), view.of_user("carol")), (0, 1));
        assert_eq!(view.users(), 2);

        view.clear();
        assert!(view.is_empty());
        assert_eq!(view.users(), 0);
        assert_eq!(
            view.per_core().collect::<Vec<_>>(),
            [(0, 0), (1, 0)],
            "cores read zero"
        );
    }

    #[test]
    fn a_restarted_control_plane_converges_from_stale_events_and_the_announcement() {
        // What the dataplane did while no control plane read the rings: 1 and 2 created,
        // 1 expired, 3 created. Then it re-announces what lives: 2 and 3.
        let stale_then_announced = [
            (true, 50_001, "a"),
            (true, 50_002, "b"),
            (false, 50_001, "a"),
            (true, 50_003, "c"),
            (true, 50_002, "b"),
            (true, 50_003, "c"),
        ];
        // A restarted control plane may start reading anywhere in the stale part.
        for skip in 0..=4 {
            let mut view = AllocationView::default();
            for &(created, port, user) in &stale_then_announced[skip..] {
                if created {
                    view.handle_created(0, relay(port), user.into());
                } else {
                    view.handle_expired(0, relay(port));
                }
            }
            assert_eq!(view.len(), 2, "skipping {skip}");
            assert_eq!(view.of_user("a"), 0, "skipping {skip}");
            assert_eq!(
                (view.of_user("b"), view.of_user("c")),
                (1, 1),
                "skipping {skip}"
            );
        }
    }
}
