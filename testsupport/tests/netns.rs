//! The simulated internet does what the end-to-end tests rely on: hosts reach each other and
//! the root namespace whatever the root namespace's firewall; an endpoint-independent router
//! keeps one mapping for every destination and a symmetric one does not; a router drops what
//! arrives unasked; everything is gone afterwards, and leftovers of dead test processes are
//! swept. Needs root, `ip` and `iptables` (skipped without, failing when `CI` is set).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use boson_testsupport::netns::{Internet, Namespace, Nat, Station};
use boson_testsupport::{require, run};

/// A UDP socket bound in `namespace` on `ip:port` (0: any).
fn udp(namespace: &Namespace, ip: Ipv4Addr, port: u16) -> UdpSocket {
    namespace.enter(|| {
        let socket = UdpSocket::bind((ip, port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket
    })
}

/// Where a datagram `from` sends to `to` appears to come from, as `to` sees it (`None`: it
/// never arrived). Retries a few times: the first packet through a fresh path can be late
/// while ARP resolves.
fn seen_from(from: &UdpSocket, to: &UdpSocket) -> Option<SocketAddr> {
    let mut buf = [0; 64];
    let target = to.local_addr().unwrap();
    for _ in 0..5 {
        from.send_to(b"probe", target).unwrap();
        if let Ok((_, source)) = to.recv_from(&mut buf) {
            return Some(source);
        }
    }
    None
}

/// Two hosts' probe sockets: two ports on the first, one on the second.
fn probes(one: &Station, two: &Station) -> [UdpSocket; 3] {
    [
        udp(&one.namespace, one.ip, 3478),
        udp(&one.namespace, one.ip, 3479),
        udp(&two.namespace, two.ip, 3478),
    ]
}

#[test]
fn routers_nat_as_told_and_the_root_firewall_does_not_matter() {
    if !require(true, &["ip", "iptables", "sysctl"]) {
        return;
    }
    // A leftover of a test process that is gone: swept by the next `create`.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = format!("bst-{}-9-stale", dead.id());
    run("ip", &["netns", "add", &stale]);

    let mut net = Internet::create(0);
    let listed = run("ip", &["netns", "list"]);
    assert!(
        !listed
            .lines()
            .any(|l| l.starts_with(&format!("{stale} ")) || l.trim() == stale),
        "the dead process's namespace was not swept: {listed}"
    );
    let one = net.host("one");
    let two = net.host("two");
    let mut eim = net.router("eim", Nat::EndpointIndependent);
    let mut sym = net.router("sym", Nat::Symmetric);
    let behind_eim = net.behind(&mut eim, "a");
    let behind_sym = net.behind(&mut sym, "b");

    // Host to host, across the internet's bridge.
    let [to_one, _, to_two] = probes(&one, &two);
    let from_one = udp(&one.namespace, one.ip, 0);
    assert_eq!(
        seen_from(&from_one, &to_two),
        Some(from_one.local_addr().unwrap()),
        "host one reaches host two"
    );
    // The root namespace (where a test's services listen) to a host and back.
    let root = UdpSocket::bind((net.gateway(), 0)).unwrap();
    root.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(
        seen_from(&root, &to_one),
        Some(root.local_addr().unwrap()),
        "the root namespace reaches host one"
    );
    assert_eq!(
        seen_from(&to_one, &root),
        Some(to_one.local_addr().unwrap()),
        "host one reaches the root namespace"
    );
    drop((to_one, to_two));

    // Behind the endpoint-independent router: one mapping, on the router's address, for all
    // three destinations; a reply from a destination it has not sent to is dropped, and
    // passes once it has.
    let targets = probes(&one, &two);
    let node = udp(&behind_eim.namespace, behind_eim.ip, 0);
    // (A stranger of its own: its unasked packet leaves a conntrack entry that would make the
    // router pick another port for a flow to the same address and port.)
    let stranger = udp(&two.namespace, two.ip, 3480);
    let node_port = node.local_addr().unwrap().port();
    let unasked = SocketAddr::from((eim.wan, node_port));
    stranger.send_to(b"unasked", unasked).unwrap();
    let mut buf = [0; 64];
    assert!(
        node.recv_from(&mut buf).is_err(),
        "the router passed a packet nobody asked for"
    );
    let mapped: Vec<SocketAddr> = targets
        .iter()
        .map(|t| seen_from(&node, t).expect("the node's probe arrived"))
        .collect();
    assert!(
        mapped.iter().all(|m| *m == mapped[0]),
        "an endpoint-independent router mapped one socket differently per destination: \
         {mapped:?}"
    );
    assert_eq!(
        mapped[0].ip(),
        eim.wan,
        "masqueraded behind the WAN address"
    );
    let asked = &targets[2];
    asked.send_to(b"asked", mapped[0]).unwrap();
    let (_, from) = node.recv_from(&mut buf).expect("the reply came through");
    assert_eq!(from, asked.local_addr().unwrap());
    drop(targets);

    // Behind the symmetric router: a mapping per destination.
    let targets = probes(&one, &two);
    let node = udp(&behind_sym.namespace, behind_sym.ip, 0);
    let mapped: Vec<SocketAddr> = targets
        .iter()
        .map(|t| seen_from(&node, t).expect("the node's probe arrived"))
        .collect();
    assert!(mapped.iter().all(|m| m.ip() == sym.wan), "{mapped:?}");
    let ports: BTreeSet<u16> = mapped.iter().map(SocketAddr::port).collect();
    assert_eq!(
        ports.len(),
        3,
        "a symmetric router mapped one socket alike for different destinations: {mapped:?}"
    );
    drop(targets);

    let namespaces: Vec<String> = [&one, &two, &behind_eim, &behind_sym]
        .iter()
        .map(|s| s.namespace.name().to_owned())
        .chain([eim.namespace.name().to_owned()])
        .collect();
    let leftovers = net.destroy();
    assert!(leftovers.is_empty(), "still there: {leftovers:?}");
    let listed = run("ip", &["netns", "list"]);
    for namespace in namespaces {
        assert!(!listed.contains(&namespace), "{namespace} is still there");
    }
}

/// A panicking test leaves nothing behind.
#[test]
fn a_panic_tears_it_down() {
    if !require(true, &["ip"]) {
        return;
    }
    let names = std::panic::catch_unwind(|| {
        let mut net = Internet::create(1);
        let host = net.host("h");
        let names = (
            net.core().name().to_owned(),
            host.namespace.name().to_owned(),
        );
        std::panic::panic_any(names)
    })
    .unwrap_err();
    let (core, host) = names.downcast_ref::<(String, String)>().unwrap();
    let listed = run("ip", &["netns", "list"]);
    assert!(!listed.contains(core.as_str()), "{core}: {listed}");
    assert!(!listed.contains(host.as_str()), "{host}: {listed}");
}
