//! The process's open-file limit (`RLIMIT_NOFILE`): every TURN allocation holds a relay
//! socket and every relay or TURN-over-TCP client a connection, so a server that keeps the
//! usual soft limit of 1024 refuses clients long before its configured limits.
//!
//! At start the server raises its soft limit to the hard one, as Go's runtime and many
//! servers do (nothing here uses `select`, which is what the low soft default protects), and
//! says once when even the hard limit is below what its configuration can use.

use std::io;

/// An open-file limit: the soft value in force and the hard ceiling it may be raised to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// The limit in force.
    pub soft: u64,
    /// How far an unprivileged process may raise it.
    pub hard: u64,
}

impl Nofile {
    /// The process's limit now.
    pub fn current() -> io::Result<Self> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        })
    }

    /// Raises the soft limit to the hard one; returns the limit in force afterwards.
    pub fn raise_to_hard() -> io::Result<Self> {
        let now = Self::current()?;
        if now.soft >= now.hard {
            return Ok(now);
        }
        let limit = libc::rlimit {
            rlim_cur: now.hard,
            rlim_max: now.hard,
        };
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Self::current()
    }
}

/// Descriptors a configuration can hold open at once: one per relay port (a TURN allocation's
/// socket), one per node relay and TURN-over-TCP/TLS connection each worker admits, and
/// `base` for listeners, rings, the control plane's database and HTTP connections.
#[must_use]
pub const fn descriptors_needed(
    relay_ports: u64,
    workers: u64,
    relay_connections_per_worker: u64,
    stream_connections_per_worker: u64,
    base: u64,
) -> u64 {
    relay_ports
        .saturating_add(workers.saturating_mul(
            relay_connections_per_worker.saturating_add(stream_connections_per_worker),
        ))
        .saturating_add(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_adds_ports_connections_per_worker_and_a_base() {
        assert_eq!(descriptors_needed(16_384, 2, 10_000, 16_384, 256), 69_408);
        assert_eq!(descriptors_needed(u64::MAX, 2, 1, 1, 1), u64::MAX);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let before = Nofile::current().unwrap();
        let after = Nofile::raise_to_hard().unwrap();
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, after.hard);
    }
}
