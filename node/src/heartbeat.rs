//! Where the next heartbeat goes, sans-IO: the heartbeat loop's decisions after each answer.
//!
//! Every control plane of a deployment shares the node registry and the token's key, so a
//! heartbeat is good on any of them. Hence:
//!
//! * a heartbeat that gets no answer (or a 5xx or 429) is sent **at once to the next
//!   control plane**, with the same token: a dead or restarting one costs one request
//!   timeout, not a series of retries, and nothing is re-registered (a new registration
//!   revokes the token the relay session runs on, cutting the tunnel for nothing);
//! * once every control plane failed in a row, the round starts again after a backoff (the
//!   deployment is down or this host is cut off; registering again would not help);
//! * only a refusal of the token itself (401, 403, 404: revoked, node deleted, timed out)
//!   leads to a new registration, at the refusing control plane first, then the others.
//!
//! The caller reports each heartbeat with [`HeartbeatPolicy::handle_answer`] and follows the
//! [`Next`] it returns; the backoff's randomness is handed in.

use std::time::Duration;

use rand_core::RngCore;

use crate::backoff::Backoff;

/// How a heartbeat went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted.
    Accepted,
    /// No answer in time, or a 5xx or 429: says nothing about the token.
    Transient,
    /// The token or the node was refused (401, 403, 404).
    Refused,
}

/// What the heartbeat loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send a heartbeat to control plane `server` after `after` (the server's interval
    /// after a success, zero to fail over, the backoff after a failed round).
    Beat {
        /// The control plane's index.
        server: usize,
        /// The wait before it.
        after: Duration,
    },
    /// Register again, trying the control planes in this order.
    Register {
        /// Control plane indices, the first to try first.
        order: Vec<usize>,
    },
}

/// The heartbeat loop's state over `controls` control planes.
#[derive(Debug, Clone)]
pub struct HeartbeatPolicy {
    controls: usize,
    /// Control planes that failed in a row since the last success.
    failed_in_row: usize,
    backoff: Backoff,
}

impl HeartbeatPolicy {
    /// A policy over `controls` control planes (at least one).
    pub fn new(controls: usize) -> Self {
        Self {
            controls: controls.max(1),
            failed_in_row: 0,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// The heartbeat to `server` got `answer`; `interval` is the server's heartbeat
    /// interval.
    pub fn handle_answer(
        &mut self,
        server: usize,
        answer: Answer,
        interval: Duration,
        rng: &mut impl RngCore,
    ) -> Next {
        let server = server % self.controls;
        match answer {
            Answer::Accepted => {
                self.failed_in_row = 0;
                self.backoff.reset();
                Next::Beat {
                    server,
                    after: interval,
                }
            }
            Answer::Transient => {
                self.failed_in_row += 1;
                let next = (server + 1) % self.controls;
                if self.failed_in_row < self.controls {
                    return Next::Beat {
                        server: next,
                        after: Duration::ZERO,
                    };
                }
                // Every control plane failed: a new round after the backoff, never longer
                // than the interval (a node silent for several intervals times out).
                self.failed_in_row = 0;
                Next::Beat {
                    server: next,
                    after: self.backoff.next_delay(rng).min(interval),
                }
            }
            Answer::Refused => {
                self.failed_in_row = 0;
                Next::Register {
                    order: (0..self.controls)
                        .map(|offset| (server + offset) % self.controls)
                        .collect(),
                }
            }
        }
    }

    /// A registration succeeded: the failures are forgotten.
    pub fn handle_registered(&mut self) {
        self.failed_in_row = 0;
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    #[test]
    fn a_dead_control_plane_is_left_at_once_without_registering_again() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut policy = HeartbeatPolicy::new(3);
        assert_eq!(
            policy.handle_answer(1, Answer::Accepted, INTERVAL, &mut rng),
            Next::Beat {
                server: 1,
                after: INTERVAL
            }
        );
        // Server 1 dies: the very next heartbeat goes to server 2, with no wait.
        assert_eq!(
            policy.handle_answer(1, Answer::Transient, INTERVAL, &mut rng),
            Next::Beat {
                server: 2,
                after: Duration::ZERO
            }
        );
        assert_eq!(
            policy.handle_answer(2, Answer::Accepted, INTERVAL, &mut rng),
            Next::Beat {
                server: 2,
                after: INTERVAL
            }
        );
    }

    #[test]
    fn a_whole_deployment_down_is_retried_with_backoff_not_registration() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut policy = HeartbeatPolicy::new(2);
        let mut waits = Vec::new();
        let mut server = 0;
        for _ in 0..12 {
            match policy.handle_answer(server, Answer::Transient, INTERVAL, &mut rng) {
                Next::Beat { server: s, after } => {
                    server = s;
                    waits.push(after);
                }
                Next::Register { .. } => panic!("registered again for an unreachable server"),
            }
        }
        // Failover within a round, a backoff between rounds, capped by the interval.
        assert_eq!(waits[0], Duration::ZERO);
        assert!(waits[1] > Duration::ZERO && waits[1] <= Duration::from_secs(1));
        assert_eq!(waits[2], Duration::ZERO);
        assert!(waits.iter().all(|w| *w <= INTERVAL));
        assert!(waits[11] > Duration::from_secs(5), "{waits:?}");
        // One success starts the backoff over.
        let _ = policy.handle_answer(server, Answer::Accepted, INTERVAL, &mut rng);
        let _ = policy.handle_answer(0, Answer::Transient, INTERVAL, &mut rng);
        match policy.handle_answer(1, Answer::Transient, INTERVAL, &mut rng) {
            Next::Beat { after, .. } => assert!(after <= Duration::from_secs(1), "{after:?}"),
            Next::Register { .. } => panic!("registered again"),
        }
    }

    #[test]
    fn a_refused_token_registers_again_there_first() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut policy = HeartbeatPolicy::new(3);
        assert_eq!(
            policy.handle_answer(2, Answer::Refused, INTERVAL, &mut rng),
            Next::Register {
                order: vec![2, 0, 1]
            }
        );
        // With one control plane, a failure waits out the backoff before the same one.
        let mut single = HeartbeatPolicy::new(1);
        match single.handle_answer(0, Answer::Transient, INTERVAL, &mut rng) {
            Next::Beat { server, after } => {
                assert_eq!(server, 0);
                assert!(after >= Duration::from_millis(500) && after <= Duration::from_secs(1));
            }
            Next::Register { .. } => panic!("registered again"),
        }
    }
}
