//! The `bosonserver` binary as a user runs it: no configuration at all, in an empty directory.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::start;
use serde_json::json;

#[test]
fn runs_on_embedded_defaults_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
        true,
    );
    // The dataplane answers STUN on its port, with the address it saw.
    let turn = server.turn.unwrap();
    let (mapped, local) = common::stun_mapped_address(turn);
    assert_eq!(mapped, local);
    let http = common::Http::new();
    let (status, body) = http.get(&format!("{}/health/ready", server.base));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["redis"], "not_configured");

    let node = json!({
        "nodeId": "550e8400-e29b-41d4-a716-446655440000",
        "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "networkInfo": {"ipv4": "192.168.1.1", "natType": "FullCone", "localPort": 51820},
        "capabilities": {"maxConnections": 100, "bandwidth": {"up": 100, "down": 100}},
        "location": {"country": "US", "region": "US-CA"}
    });
    let token = http.register(&server.base, &node);
    let beat = json!({"metrics": {"latency": 20, "cpuUsage": 5, "activeConnections": 2}});
    let url = format!(
        "{}/api/v1/nodes/550e8400-e29b-41d4-a716-446655440000/heartbeat",
        server.base
    );
    assert_eq!(http.post(&url, &beat, Some(&token)).0, 200);
    let metrics = http.text(&format!("{}/metrics", server.base));
    assert!(
        metrics.contains("\nbosonserver_active_nodes 1\n"),
        "{metrics}"
    );
    // The dataplane's counters are on the same page, per core.
    for core in ["0", "1"] {
        let sample = format!("bosonserver_dataplane_binding_requests_total{{core=\"{core}\"}}");
        assert!(metrics.contains(&sample), "{sample} missing:\n{metrics}");
    }
    // The ICE servers point at the dataplane's actual port.
    let (status, ice) = http.get_auth(&format!("{}/api/v1/turn/ice", server.base), &token);
    assert_eq!(status, 200, "{ice}");
    assert_eq!(
        ice["iceServers"][0]["urls"][0],
        format!("stun:127.0.0.1:{}", turn.port())
    );

    // The embedded defaults live in ./data: database and development secrets.
    for file in ["bosonserver.db", "jwt-secret", "turn-secret"] {
        assert!(dir.path().join("data").join(file).exists(), "{file}");
    }

    // SIGTERM: graceful shutdown, exit 0.
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..500 {
        exited = server.child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = exited.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");

    // A restart keeps the node and its token (the development secret is persisted).
    let again = start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
        ],
        true,
    );
    assert_eq!(
        http.post(&url.replace(&server.base, &again.base), &beat, Some(&token))
            .0,
        200
    );
}

#[test]
fn invalid_configuration_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bosonserver"))
        .args(["run", "--jwt-secret", "too-short"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECRET must be at least 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 15: the relay mesh runs over TLS. A mesh key without a relay certificate is a
/// configuration error at start, not a mesh in clear.
#[test]
fn a_mesh_key_without_a_relay_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bosonserver"));
    command
        .args([
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
            "--mesh-key",
            "a-mesh-key-of-at-least-32-bytes-0123456789",
        ])
        .current_dir(dir.path());
    boson_testsupport::clear_config_env(&mut command);
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts anyway would never exit: give it 30 s, then fail.
    let mut status = None;
    for _ in 0..1500 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(status.is_some(), "the server started with a mesh in clear");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--mesh-key needs --relay-cert and --relay-key"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
