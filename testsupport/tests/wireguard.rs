//! The baseline of the node agent's end-to-end tests: two wireguard-go nodes behind two
//! endpoint-independent home routers, endpoints set by hand (the second router forwards the
//! WireGuard port, the second node learns the first's mapped address from its first packet),
//! ping 100 out of 100 across the tunnel. Needs root, `ip`, `iptables`, `wireguard-go`, `wg`
//! and `ping` (skipped without, failing when `CI` is set; `scripts/services.sh` installs them).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use boson_testsupport::clock::wait_until;
use boson_testsupport::netns::{Internet, Nat};
use boson_testsupport::require;
use boson_testsupport::wireguard::WireGuard;

const PORT: u16 = 51820;

#[test]
fn wireguard_go_across_two_nats_with_manual_endpoints() {
    if !require(
        true,
        &["ip", "iptables", "sysctl", "wireguard-go", "wg", "ping"],
    ) {
        return;
    }
    let mut net = Internet::create(2);
    let mut home_a = net.router("ra", Nat::EndpointIndependent);
    let mut home_b = net.router("rb", Nat::EndpointIndependent);
    let a = net.behind(&mut home_a, "a");
    let b = net.behind(&mut home_b, "b");
    home_b.forward_udp(PORT, b.ip);

    let wg_a = WireGuard::start(&a, Ipv4Addr::new(10, 99, 0, 1), PORT);
    let wg_b = WireGuard::start(&b, Ipv4Addr::new(10, 99, 0, 2), PORT);
    assert_ne!(wg_a.interface, wg_b.interface);
    wg_a.add_peer(&wg_b, Some(SocketAddr::from((home_b.wan, PORT))), Some(1));
    wg_b.add_peer(&wg_a, None, None);

    // The first ping starts the handshake; then 100 must all answer.
    let peer = wg_b.address.to_string();
    let answered = wait_until(Duration::from_secs(15), Duration::ZERO, || {
        a.namespace
            .command("ping")
            .args(["-c", "1", "-W", "1", &peer])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(answered, "no ping answered across the tunnel in 15 s");
    let out = a
        .namespace
        .run("ping", &["-c", "100", "-i", "0.01", "-W", "2", "-q", &peer]);
    assert!(
        out.contains("100 packets transmitted, 100 received"),
        "lost pings across the tunnel: {out}"
    );
    // B learnt A's endpoint from A's packets: router A's address, so the tunnel crossed both
    // NATs.
    let endpoint = wg_b.endpoint(&wg_a).expect("B has an endpoint for A");
    assert_eq!(endpoint.ip(), home_a.wan, "{endpoint}");
    assert!(wg_a.latest_handshake(&wg_b) > 0);
    eprintln!("{}", out.lines().last().unwrap_or_default());

    drop((wg_a, wg_b));
    let leftovers = net.destroy();
    assert!(leftovers.is_empty(), "still there: {leftovers:?}");
}
