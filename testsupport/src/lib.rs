//! Test support shared by BosonServer's test suites (a dev-dependency only, never shipped).
//!
//! - [`netns`]: a simulated internet made of Linux network namespaces. The internet's bridge
//!   lives in a namespace of its own, so nothing is bridged or routed through the root
//!   namespace and the host's firewall (Docker's `FORWARD` policy `DROP` with br_netfilter
//!   loaded, for one) does not matter. Relay hosts sit on it; home routers NAT a LAN onto it,
//!   endpoint-independent or symmetric. Everything is torn down on drop, panics included, and
//!   the leftovers of test processes that died before they could clean up are removed.
//! - [`wireguard`]: wireguard-go instances (an interface each, named after the test's pid) in
//!   those namespaces, configured with `wg`.
//! - [`relay`]: relay hosts, `bosonserver run` on an address of their own on that internet,
//!   sharing a database, a Redis and a mesh key; [`http`], a minimal client to probe them.
//! - [`services`]: private PostgreSQL and Redis servers a test can stop, start and reach from
//!   its namespaces.
//! - [`udp`]: UDP as a batching peer sends it (one GSO message of many datagrams).
//! - [`require`]: what a test needs from the machine (root, programs); a test skips with a
//!   message without it, except when `CI` is set: then it fails.

#![allow(
    clippy::unwrap_used,
    reason = "test support: a failure is a test failure"
)]

pub mod clock;
pub mod http;
pub mod netns;
pub mod relay;
pub mod services;
pub mod udp;
pub mod wireguard;

use std::process::{Command, Stdio};

/// Settings that `bosonserver` and `boson-node` read from the environment without the
/// `BOSON_` prefix (the rest all have it).
const UNPREFIXED_CONFIG_VARS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "TURN_STATIC_SECRET",
    "POSTGRES_PASSWORD",
    "RUST_LOG",
];

/// Removes from `command`'s environment every variable of the caller's that would change
/// the settings of `bosonserver` or `boson-node` (every `BOSON_*` and the unprefixed ones),
/// so a test's server or agent runs on exactly the flags the test gives it.
pub fn clear_config_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("BOSON_")) {
            command.env_remove(&name);
        }
    }
    for var in UNPREFIXED_CONFIG_VARS {
        command.env_remove(var);
    }
}

/// Whether `program` is on `PATH`.
#[must_use]
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes the process `command` starts die (SIGKILL) when the thread that starts it ends, even
/// if no destructor runs (a test killed by a timeout): `PR_SET_PDEATHSIG`.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether this process runs as root.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Checks that the machine has root (when `root`) and every program of `programs`. Returns
/// `true` when all is there; otherwise prints what is missing and returns `false` (the test
/// skips), except when `CI` is set: then it panics, so that a missing capability never passes
/// as a test.
///
/// # Panics
/// When something is missing and `CI` is set.
#[must_use]
pub fn require(root: bool, programs: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if root && !is_root() {
        missing.push("root (for network namespaces)".to_owned());
    }
    missing.extend(
        programs
            .iter()
            .filter(|p| !installed(p))
            .map(|p| format!("`{p}`")),
    );
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, and this test needs {} (scripts/services.sh installs them)",
        missing.join(", ")
    );
    eprintln!("skipped: this test needs {}", missing.join(", "));
    false
}

/// Runs `program` with `args`, panicking with its error output if it fails; returns its
/// standard output.
///
/// # Panics
/// When the program cannot be run or exits unsuccessfully.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `program` with `args`, ignoring its outcome (for teardown).
pub fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether the process `pid` (as text) is gone: for telling leftovers of dead test processes
/// from those of live ones.
#[must_use]
pub fn process_gone(pid: &str) -> bool {
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}
