//! NAT discovery: the agent sends a STUN Binding from its own UDP socket to the server's
//! STUN port (from `GET /api/v1/turn/ice`) and registers the mapped address it learns. With
//! one relay host (one STUN destination) the mapping behaviour is unknown and it reports
//! `Symmetric`; with its second STUN port it learns the mapping behaviour.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "a black-box test waits on the real clock, with deadlines"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, http, post, register_body, start_agent, start_server, wait_log};

#[test]
fn the_agent_registers_the_mapped_address_a_stun_binding_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let a = Node::new(dir.path(), 0x91, 1);
    let b = Node::new(dir.path(), 0x91, 2);
    let agent = start_agent("agent-a", &a, &[&server.base], &[&b], &[]);
    let line = wait_log(
        &agent,
        &[
            "NAT discovery",
            "nat_type=Symmetric",
            "one STUN destination",
        ],
        Duration::from_secs(30),
    );
    let mapped = line
        .split("mapped=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no mapped address in {line:?}"))
        .to_owned();
    let addr: std::net::SocketAddr = mapped.parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(
        addr.port(),
        a.wg_port(),
        "the agent's own socket, not WireGuard's"
    );

    // The server holds it: another node reads A's registration.
    let (status, body) = post(
        &format!("{}/api/v1/nodes/register", server.base),
        &register_body(&server.base, &b),
    );
    assert_eq!(status, 201, "{body}");
    let token = body["sessionToken"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, view) = http(
            "GET",
            &format!("{}/api/v1/nodes/{}", server.base, a.id),
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{view}");
        let info = &view["networkInfo"];
        if info["stunMappedAddress"].as_str() == Some(mapped.as_str()) {
            assert_eq!(info["natType"], "Symmetric", "{view}");
            break;
        }
        assert!(Instant::now() < deadline, "never registered: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With the server's second STUN port (`--stun-alt-port`, RFC 5780), the agent learns it
/// from OTHER-ADDRESS, probes it from the same socket, and, as nothing on loopback
/// translates, sees one mapped address for both: an endpoint-independent mapping.
#[test]
fn a_second_stun_port_shows_the_mapping_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    let (turn_port, alt_port) = (common::free_tcp_udp_port(), common::free_tcp_udp_port());
    let turn_listen = format!("127.0.0.1:{turn_port}");
    let alt = alt_port.to_string();
    let server = start_server(
        dir.path(),
        &["--turn-listen", &turn_listen, "--stun-alt-port", &alt],
    );
    let a = Node::new(dir.path(), 0x92, 1);
    let b = Node::new(dir.path(), 0x92, 2);
    let agent = start_agent("agent-a", &a, &[&server.base], &[&b], &[]);
    let line = wait_log(&agent, &["NAT discovery"], Duration::from_secs(30));
    assert!(line.contains("nat_type=PortRestricted"), "{line}");
    assert!(
        line.contains("EndpointIndependent { other_ip: false }"),
        "{line}"
    );
    let (status, body) = post(
        &format!("{}/api/v1/nodes/register", server.base),
        &register_body(&server.base, &b),
    );
    assert_eq!(status, 201, "{body}");
    let token = body["sessionToken"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, view) = http(
            "GET",
            &format!("{}/api/v1/nodes/{}", server.base, a.id),
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{view}");
        if view["networkInfo"]["natType"] == "PortRestricted" {
            assert!(
                view["networkInfo"]["stunMappedAddress"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("127.0.0.1:")),
                "{view}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never registered: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
