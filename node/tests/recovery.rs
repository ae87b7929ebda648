//! The tunnel recovers: after the relay host (here the whole server) is killed and comes
//! back, and after the node's registration is deleted (its relay session goes with it; the
//! agent registers again and reconnects).

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Node, drain, free_tcp_port, http, recv, start_agent, start_server_in, until_through,
    wait_status, wg_packet,
};

/// The bound the README states for moving to a working relay after one dies (10 s to notice
/// a silent one; a closed connection is noticed at once), plus the backoff and a margin for
/// a busy machine.
const RECOVERY: Duration = Duration::from_secs(25);

/// 50 packets each way, all of which must arrive.
fn burst(a: &Node, port_ab: u16, b: &Node, port_ba: u16, tag: u32) {
    for seq in 0..50 {
        a.wg.send_to(&wg_packet(4, tag + seq, 200), ("127.0.0.1", port_ab))
            .unwrap();
        b.wg.send_to(&wg_packet(4, tag + seq, 300), ("127.0.0.1", port_ba))
            .unwrap();
    }
    for seq in 0..50 {
        let (got, _) = recv(&b.wg, Duration::from_secs(10)).expect("A → B burst");
        assert!(got == wg_packet(4, tag + seq, 200), "A → B {seq}");
        let (got, _) = recv(&a.wg, Duration::from_secs(10)).expect("B → A burst");
        assert!(got == wg_packet(4, tag + seq, 300), "B → A {seq}");
    }
}

#[test]
fn the_tunnel_recovers_after_the_server_dies_and_after_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, relay_port) = (free_tcp_port(), free_tcp_port());
    let start = || {
        start_server_in(
            &[],
            "127.0.0.1",
            http_port,
            relay_port,
            dir.path(),
            &["--heartbeat-interval", "1s"],
        )
    };
    let mut server = start();
    let a = Node::new(dir.path(), 0x61, 1);
    let b = Node::new(dir.path(), 0x61, 2);
    let _agent_a = start_agent("agent-a", &a, &[&server.base], &[&b], &["--route", "ws"]);
    let _agent_b = start_agent("agent-b", &b, &[&server.base], &[&a], &["--route", "ws"]);
    let port_ab: u16 = wait_status(&a.state_dir, &b.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    })[3]
        .parse()
        .unwrap();
    let port_ba: u16 = wait_status(&b.state_dir, &a.id, Duration::from_secs(30), |l| {
        l[1] == "ws"
    })[3]
        .parse()
        .unwrap();
    until_through(
        &a,
        port_ab,
        &b,
        &wg_packet(1, 0, 0),
        Duration::from_secs(30),
    );
    until_through(
        &b,
        port_ba,
        &a,
        &wg_packet(2, 0, 0),
        Duration::from_secs(10),
    );
    burst(&a, port_ab, &b, port_ba, 1000);

    // The server dies (SIGKILL) and comes back on the same ports and data.
    server.proc.signal("KILL");
    let _ = server.proc.wait_exit(Duration::from_secs(5));
    wait_status(&a.state_dir, &b.id, Duration::from_secs(15), |l| {
        l[1] == "none" && l[2] == "down"
    });
    server = start();
    let back = Instant::now();
    until_through(&a, port_ab, &b, &wg_packet(1, 1, 0), RECOVERY);
    until_through(&b, port_ba, &a, &wg_packet(2, 1, 0), RECOVERY);
    eprintln!(
        "relayed again {:?} after the server came back",
        back.elapsed()
    );
    drain(&a.wg);
    drain(&b.wg);
    burst(&a, port_ab, &b, port_ba, 2000);

    // A's registration is deleted with its own token: its relay session closes, the next
    // heartbeat is refused, the agent registers again and the tunnel carries on.
    let token = std::fs::read_to_string(a.state_dir.join("token")).unwrap();
    let (status, body) = http(
        "DELETE",
        &format!("{}/api/v1/nodes/{}", server.base, a.id),
        Some(token.trim()),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let deleted = Instant::now();
    let deadline = deleted + RECOVERY;
    loop {
        let fresh = std::fs::read_to_string(a.state_dir.join("token")).unwrap();
        if fresh.trim() != token.trim() {
            break;
        }
        assert!(Instant::now() < deadline, "A never registered again");
        std::thread::sleep(Duration::from_millis(100));
    }
    until_through(&a, port_ab, &b, &wg_packet(1, 2, 0), RECOVERY);
    until_through(&b, port_ba, &a, &wg_packet(2, 2, 0), RECOVERY);
    eprintln!("relayed again {:?} after the deletion", deleted.elapsed());
    drain(&a.wg);
    drain(&b.wg);
    burst(&a, port_ab, &b, port_ba, 3000);
}
