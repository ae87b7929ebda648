//! `boson-bench ctl --smoke` end to end against the real `bosonserver control` on SQLite,
//! when a build of bosonserver sits next to the test's `boson-bench` (as after
//! `cargo build -p bosonserver`; `benches/smoke.sh` builds it first). Under `CI` a missing
//! bosonserver is a failure, not a skip.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::process::Command;

#[test]
fn ctl_smoke_registers_and_drives_every_kind_of_request() {
    let bench = Path::new(env!("CARGO_BIN_EXE_boson-bench"));
    let bosonserver = bench.with_file_name("bosonserver");
    if !bosonserver.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and there is no {}",
            bosonserver.display()
        );
        eprintln!(
            "skipped: no {} (cargo build -p bosonserver)",
            bosonserver.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ctl.json");
    let output = Command::new(bench)
        .args(["ctl", "--smoke", "--quiet", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["nodes"], 200);
    assert_eq!(run["backend"], "sqlite");
    let phases: Vec<&str> = run["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "register",
            "heartbeat",
            "routing",
            "ice",
            "routing-max",
            "heartbeat-max"
        ]
    );
    let register = &run["phases"][0];
    assert_eq!(register["ok"], 200, "{register}");
    for phase in run["phases"].as_array().unwrap() {
        assert_eq!(phase["errors"], 0, "{phase}");
        assert!(phase["ok"].as_u64().unwrap() > 0, "{phase}");
        assert!(phase["p50_ms"].as_f64().unwrap() > 0.0, "{phase}");
        assert!(
            phase["server_cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{phase}"
        );
    }
    assert!(run["rss_loaded_bytes"].as_u64().unwrap() > 0);
}
