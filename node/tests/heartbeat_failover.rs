//! A control plane that dies is left at the next heartbeat: the agent heartbeats the next
//! `--server` at once, with the same token (the control planes share the registry), and
//! registers nothing again (a new registration would revoke the token its relay session
//! runs on).

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Node, start_agent, start_server, wait_log};

/// A TCP forwarder on loopback to `upstream` (`http://IP:PORT`) that stops accepting (its
/// port then refuses connections, as a dead host's) when `stop` is raised. Returns its URL.
fn stoppable_proxy(upstream: &str, stop: Arc<AtomicBool>) -> String {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((client, _)) => {
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut client, mut server) = (client, server);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                    });
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut server, &mut client);
                        let _ = client.shutdown(std::net::Shutdown::Write);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        // The listener is dropped here: connections are refused from now on.
    });
    base
}

#[test]
fn heartbeats_move_to_the_next_control_plane_at_once_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--heartbeat-interval", "1s"]);
    let stop = Arc::new(AtomicBool::new(false));
    // Two control planes of one deployment, as the agent sees them: the first reached
    // through a forwarder that can die.
    let first = stoppable_proxy(&server.base, stop.clone());
    let a = Node::new(dir.path(), 0xa1, 1);
    let b = Node::new(dir.path(), 0xa1, 2);
    let agent = start_agent(
        "agent-a",
        &a,
        &[&first, &server.base],
        &[&b],
        &["--route", "ws"],
    );
    wait_log(&agent, &["registered", &first], Duration::from_secs(30));
    wait_log(&agent, &["relay session ready"], Duration::from_secs(30));
    let token = std::fs::read_to_string(a.state_dir.join("token")).unwrap();

    stop.store(true, Ordering::Relaxed);
    let died = Instant::now();
    let line = wait_log(
        &agent,
        &["heartbeats moved to this control plane"],
        Duration::from_secs(30),
    );
    let took = died.elapsed();
    eprintln!("heartbeats moved {took:?} after the first control plane died: {line}");
    assert!(line.contains(&server.base), "{line}");
    // One heartbeat interval (1 s) plus one refused connection, with room for a busy
    // machine; before, the agent retried the dead one for about 15 s.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(
        std::fs::read_to_string(a.state_dir.join("token")).unwrap(),
        token,
        "registered again"
    );
}
