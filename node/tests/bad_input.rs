//! Bad input gets a clear message and the stated exit code, never a panic or a spinning loop:
//! usage errors (2), an unreachable server and a malformed answer (1), a peer that is not
//! registered (the agent runs on and says so), and a restart after a crash.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Node, boson_node, start_agent, start_server, wait_status};

/// Runs `boson-node` with `args` to completion: exit code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    let out = boson_node()
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn usage_and_configuration_errors_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), 0x41, 1);
    let port = node.wg_port().to_string();
    let key = node.key_file.to_str().unwrap();
    let base = [
        "run",
        "--server",
        "http://127.0.0.1:9",
        "--wg-listen-port",
        &port,
        "--wg-private-key-file",
        key,
    ];
    for (extra, says) in [
        (&["--peer", "not-a-peer"][..], "NODE_ID=PUBLIC_KEY"),
        (
            &["--peer", "6f1d3a52-8a5e-4c1e-9a41-000000000002=short"][..],
            "public key",
        ),
        (&["--route", "sideways"][..], "--route"),
        (&["--node-id", "42"][..], "--node-id"),
        (&["--metrics-listen", "nowhere"][..], "--metrics-listen"),
    ] {
        let (code, stderr) = run(&[&base[..], extra].concat());
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{extra:?} should say {says:?}: {stderr}"
        );
        no_panic(&stderr);
    }
    let (code, stderr) = run(&[
        "run",
        "--wg-listen-port",
        &port,
        "--wg-private-key-file",
        key,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--server"), "{stderr}");
    let (code, stderr) = run(&[
        "run",
        "--server",
        "http://x",
        "--wg-listen-port",
        &port,
        "--wg-private-key-file",
        "/nonexistent",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");
    let (code, stderr) = run(&["run", "--server", "http://x", "--wg-interface", "a/b"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--wg-interface"), "{stderr}");
}

#[test]
fn an_unreachable_server_exits_1_after_trying_each() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), 0x42, 1);
    // Two closed ports: nothing listens there.
    let (a, b) = (common::free_tcp_port(), common::free_tcp_port());
    let started = Instant::now();
    let (code, stderr) = run(&[
        "run",
        "--server",
        &format!("http://127.0.0.1:{a}"),
        "--server",
        &format!("http://127.0.0.1:{b}"),
        "--wg-listen-port",
        &node.wg_port().to_string(),
        "--wg-private-key-file",
        node.key_file.to_str().unwrap(),
        "--state-dir",
        node.state_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{a}")) && stderr.contains(&format!("127.0.0.1:{b}")),
        "both tried: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    no_panic(&stderr);
}

/// A server that answers every request with `response`, except the registration
/// challenge, which it answers as the API does (so the registration itself gets `response`).
fn fake_server(response: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8192];
            let read = stream.read(&mut buf).unwrap_or(0);
            if buf[..read].starts_with(b"POST /api/v1/nodes/challenge ") {
                let body = format!(
                    "{{\"nonce\":\"{}\",\"serverPublicKey\":\"{}\",\"expiresAt\":0,\"expiresIn\":60}}",
                    "A".repeat(32),
                    // Any X25519 key of full order: the RFC 7748 §6.1 example's.
                    "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn a_malformed_answer_exits_1_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), 0x43, 1);
    for (response, says) in [
        (
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{oops",
            "malformed answer to registration",
        ),
        (
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "malformed answer to registration",
        ),
        (
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
            "HTTP 500",
        ),
        ("garbage\r\n\r\n", "unreachable"),
    ] {
        let port = fake_server(response);
        let (code, stderr) = run(&[
            "run",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--wg-listen-port",
            &node.wg_port().to_string(),
            "--wg-private-key-file",
            node.key_file.to_str().unwrap(),
            "--state-dir",
            node.state_dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{response:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{response:?} should say {says:?}: {stderr}"
        );
        no_panic(&stderr);
    }
}

/// The process's CPU time so far (utime + stime, in clock ticks of 10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_unregistered_peer_is_reported_and_a_crashed_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let a = Node::new(dir.path(), 0x44, 1);
    let ghost = Node::new(dir.path(), 0x44, 2);
    let mut agent = start_agent(
        "agent-a",
        &a,
        &[&server.base],
        &[&ghost],
        &["--route", "ws"],
    );
    let line = wait_status(&a.state_dir, &ghost.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    });
    assert_eq!(line[2], "trying");
    let port: u16 = line[3].parse().unwrap();
    // WireGuard tries to reach the ghost: the relay answers PEER_GONE, the agent says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("not connected")) {
        assert!(
            Instant::now() < deadline,
            "no word about the missing peer: {log:?}"
        );
        a.wg.send_to(&common::wg_packet(1, 0, 0), ("127.0.0.1", port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        log.extend(agent.drain_log());
    }
    // It runs on without spinning: a few seconds cost it far less than a second of CPU.
    let pid = agent.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "{used} ticks of CPU in 3 s of idling");
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");

    // A crash (SIGKILL): the node stays registered and active on the server, yet a restart
    // registers again at once with the token it kept.
    agent.signal("KILL");
    let _ = agent.wait_exit(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let _agent = start_agent(
        "agent-a2",
        &a,
        &[&server.base],
        &[&ghost],
        &["--route", "ws"],
    );
    let line = wait_status(&a.state_dir, &ghost.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    });
    assert_eq!(line[0], ghost.id);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no wait for the node timeout"
    );
}
