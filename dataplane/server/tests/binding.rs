//! The shell as a STUN Binding server on loopback, with each backend forced.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boson_dataplane::{IoBackend, WorkerInfo, start};
use boson_dataplane_proto::{BindingConfig, DropReason, StunServer};
use common::{available, bind, client, config, total, wait_for};

fn stun_core(_: WorkerInfo) -> StunServer {
    StunServer::new(BindingConfig::default())
}

fn answers_a_binding_request(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let dataplane = start(config(backend, 2), stun_core).unwrap();
    assert_eq!(dataplane.backend(), backend);
    let server = dataplane.local_addr();
    assert_ne!(server.port(), 0);

    let socket = client();
    let mapped = bind(&socket, server, [7; 12]);
    assert_eq!(mapped, socket.local_addr().unwrap());

    let stats = wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.packets_out) >= 1,
    );
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|w| w.backend == backend));
    assert!(total(&stats, |w| w.counters.binding_success) >= 1);
    assert!(total(&stats, |w| w.counters.bytes_out) >= 32);
    dataplane.shutdown().unwrap();
}

#[test]
fn answers_a_binding_request_uring() {
    answers_a_binding_request(IoBackend::Uring);
}

#[test]
fn answers_a_binding_request_epoll() {
    answers_a_binding_request(IoBackend::Epoll);
}

/// Clients on many source ports spread over both workers by the SO_REUSEPORT hash; each
/// gets its own address back.
fn many_clients_across_workers(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    const CLIENTS: usize = 64;
    const ROUNDS: usize = 3;
    let dataplane = start(config(backend, 2), stun_core).unwrap();
    let server = dataplane.local_addr();
    let clients: Vec<UdpSocket> = (0..CLIENTS).map(|_| client()).collect();
    for round in 0..ROUNDS {
        for (i, socket) in clients.iter().enumerate() {
            let mut tid = [0u8; 12];
            tid[0] = round as u8;
            tid[1] = i as u8;
            assert_eq!(bind(socket, server, tid), socket.local_addr().unwrap());
        }
    }
    let stats = wait_for(
        || dataplane.stats(),
        |s| total(s, |w| w.counters.binding_success) >= (CLIENTS * ROUNDS) as u64,
    );
    // 64 random 4-tuples all hashing to one of two sockets: probability 2^-63.
    assert!(
        stats.iter().all(|w| w.counters.packets_in > 0),
        "both workers got traffic: {stats:#?}"
    );
    assert_eq!(total(&stats, |w| w.counters.sends_failed), 0);
    let final_stats = dataplane.shutdown().unwrap();
    assert!(total(&final_stats, |w| w.counters.packets_out) >= (CLIENTS * ROUNDS) as u64);
}

#[test]
fn many_clients_across_workers_uring() {
    many_clients_across_workers(IoBackend::Uring);
}

#[test]
fn many_clients_across_workers_epoll() {
    many_clients_across_workers(IoBackend::Epoll);
}

/// Garbage gets no answer and is counted under its named reason; the server keeps working.
fn garbage_is_dropped_and_counted(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let dataplane = start(config(backend, 2), stun_core).unwrap();
    let server = dataplane.local_addr();
    let socket = client();
    for _ in 0..10 {
        socket.send_to(&[0xff; 40], server).unwrap(); // top bits 11: not STUN
    }
    for _ in 0..5 {
        socket.send_to(&[0; 12], server).unwrap(); // shorter than a STUN header
    }
    // A snapshot is consistent per counter, not across counters (a worker may count a
    // datagram's drop before its packets_in is visible), so wait for every count, then check
    // that snapshot: a count that overshoots or never arrives still fails.
    let stats = wait_for(
        || dataplane.stats(),
        |s| {
            total(s, |w| w.drop_count(DropReason::NotStun)) >= 10
                && total(s, |w| w.drop_count(DropReason::Truncated)) >= 5
                && total(s, |w| w.counters.packets_in) >= 15
        },
    );
    assert_eq!(total(&stats, |w| w.drop_count(DropReason::NotStun)), 10);
    assert_eq!(total(&stats, |w| w.drop_count(DropReason::Truncated)), 5);
    assert_eq!(total(&stats, |w| w.counters.packets_in), 15);
    assert_eq!(total(&stats, |w| w.counters.packets_out), 0);
    let text = boson_dataplane::metrics::render(&stats);
    assert!(
        text.lines()
            .any(|l| l.starts_with("bosonserver_dataplane_drops_total{")
                && l.contains("reason=\"not_stun\"")
                && !l.ends_with(" 0")),
        "{text}"
    );

    // Only the valid request is answered: the first datagram the client gets is its response.
    let mapped = bind(&socket, server, [9; 12]);
    assert_eq!(mapped, socket.local_addr().unwrap());
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(socket.recv_from(&mut [0u8; 1500]).is_err(), "nothing else");
    dataplane.shutdown().unwrap();
}

#[test]
fn garbage_is_dropped_and_counted_uring() {
    garbage_is_dropped_and_counted(IoBackend::Uring);
}

#[test]
fn garbage_is_dropped_and_counted_epoll() {
    garbage_is_dropped_and_counted(IoBackend::Epoll);
}

/// Shutdown joins every worker and closes every listener socket: the port is free again.
fn shutdown_joins_and_frees_the_port(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let dataplane = start(config(backend, 2), stun_core).unwrap();
    let server = dataplane.local_addr();
    let socket = client();
    bind(&socket, server, [1; 12]);
    let final_stats = dataplane.shutdown().unwrap();
    assert_eq!(final_stats.len(), 2);
    // Without SO_REUSEPORT this bind fails while any worker socket is open.
    UdpSocket::bind(server).expect("listener port released");
}

#[test]
fn shutdown_joins_and_frees_the_port_uring() {
    shutdown_joins_and_frees_the_port(IoBackend::Uring);
}

#[test]
fn shutdown_joins_and_frees_the_port_epoll() {
    shutdown_joins_and_frees_the_port(IoBackend::Epoll);
}

/// The CPUs the calling thread may run on, as the kernel has them (`sched_getaffinity`).
fn affinity_of_this_thread() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size is that of `set`, which outlives the call.
    let rc = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..usize::try_from(libc::CPU_SETSIZE).unwrap())
        // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

#[test]
fn auto_resolves_to_a_concrete_backend_and_pins() {
    let mut cfg = config(IoBackend::Auto, 2);
    cfg.pin = true;
    // The core is made on the worker thread once it has pinned itself, so its factory can ask
    // the kernel what that thread's affinity really is.
    let affinities: Arc<Mutex<BTreeMap<usize, Vec<usize>>>> = Arc::default();
    let recorder = Arc::clone(&affinities);
    let dataplane = start(cfg, move |info: WorkerInfo| {
        recorder
            .lock()
            .unwrap()
            .insert(info.index, affinity_of_this_thread());
        stun_core(info)
    })
    .unwrap();
    assert_ne!(dataplane.backend(), IoBackend::Auto);
    let stats = dataplane.stats();
    assert_eq!(stats.len(), 2);
    let affinities = affinities.lock().unwrap().clone();
    for worker in &stats {
        let cpu = worker.cpu.expect("a pinned worker reports its CPU");
        assert_eq!(
            affinities.get(&worker.worker),
            Some(&vec![cpu]),
            "worker {} should run on CPU {cpu} alone; the kernel has {affinities:?}",
            worker.worker
        );
    }
    let socket = client();
    assert_eq!(
        bind(&socket, dataplane.local_addr(), [2; 12]),
        socket.local_addr().unwrap()
    );
    dataplane.shutdown().unwrap();
}

#[test]
fn a_port_held_by_another_server_is_refused_not_shared() {
    // Two servers of one user on one port would each get half the clients with SO_REUSEPORT.
    let first = start(config(IoBackend::Epoll, 2), stun_core).unwrap();
    let mut second = config(IoBackend::Epoll, 2);
    second.listen = first.local_addr();
    let error = start(second, stun_core).unwrap_err();
    assert!(format!("{error:#}").contains("in use"), "{error:#}");
    // And a port held by anything else the same way.
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut third = config(IoBackend::Epoll, 1);
    third.listen = holder.local_addr().unwrap();
    assert!(start(third, stun_core).is_err());
    first.shutdown().unwrap();
}

#[test]
fn invalid_configs_are_rejected() {
    for (workers, budget, buffers) in [(0, 256, 1024), (1, 0, 1024), (1, 256, 1000), (1, 512, 1024)]
    {
        let mut cfg = config(IoBackend::Epoll, workers);
        cfg.budget = budget;
        cfg.buffers = buffers;
        assert!(
            start(cfg, stun_core).is_err(),
            "{workers} {budget} {buffers}"
        );
    }
}

/// A burst far larger than the receive pool: on io_uring the buffer ring runs dry, the
/// multishot receive ends with ENOBUFS and is re-armed; either way the worker keeps up and
/// answers afterwards, and no slot leaks (the final request still finds buffers).
fn survives_a_burst_larger_than_the_pool(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    const BURST: usize = 5000;
    let mut cfg = config(backend, 1);
    cfg.buffers = 64;
    cfg.budget = 16;
    let dataplane = start(cfg, stun_core).unwrap();
    let server = dataplane.local_addr();
    let sender = client();
    let request = common::binding_request([3; 12]);
    for _ in 0..BURST {
        sender.send_to(&request, server).unwrap();
    }
    wait_for(
        || dataplane.stats(),
        |s| {
            let w = &s[0];
            w.counters.packets_in > 0
                && w.counters.packets_out + w.counters.sends_failed == w.counters.packets_in
        },
    );
    for round in 0..3 {
        let socket = client();
        assert_eq!(
            bind(&socket, server, [round; 12]),
            socket.local_addr().unwrap()
        );
    }
    dataplane.shutdown().unwrap();
}

#[test]
fn survives_a_burst_larger_than_the_pool_uring() {
    survives_a_burst_larger_than_the_pool(IoBackend::Uring);
}

#[test]
fn survives_a_burst_larger_than_the_pool_epoll() {
    survives_a_burst_larger_than_the_pool(IoBackend::Epoll);
}

/// A Binding request to `server` from `socket`: the response's source and the message.
fn exchange(
    socket: &UdpSocket,
    server: std::net::SocketAddr,
    tid: [u8; 12],
) -> (std::net::SocketAddr, Vec<u8>) {
    let request = common::binding_request(tid);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket.send_to(&request, server).unwrap();
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            return (from, buf[..len].to_vec());
        }
    }
    panic!("no Binding response from {server}");
}

/// The second STUN address (RFC 5780): every worker answers on it too, from it, and both
/// addresses' answers name their origin and the other address; the counters include it.
fn answers_on_the_second_address(backend: IoBackend) {
    use boson_dataplane::StunAlternate;
    use boson_dataplane_proto::stun::{Message, OtherAddress, ResponseOrigin, XorMappedAddress};
    if !available(backend) {
        return;
    }
    // Fixed ports: each answer names the other's.
    let free = || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let (primary, alternate) = (free(), free());
    let mut config = config(backend, 2);
    config.listen = primary;
    config.stun_alternate = Some(StunAlternate {
        listen: alternate,
        binding: BindingConfig::new().with_other_address(alternate, primary),
    });
    let dataplane = start(config, move |_| {
        StunServer::new(BindingConfig::new().with_other_address(primary, alternate))
    })
    .unwrap();
    let socket = client();
    for (to, other, tid) in [(primary, alternate, [1; 12]), (alternate, primary, [2; 12])] {
        let (from, response) = exchange(&socket, to, tid);
        assert_eq!(from, to, "answered from the address asked");
        let m = Message::parse(&response).unwrap();
        assert_eq!(
            m.get::<XorMappedAddress>().unwrap().unwrap().0,
            socket.local_addr().unwrap()
        );
        assert_eq!(m.get::<ResponseOrigin>().unwrap().unwrap().0, to);
        assert_eq!(m.get::<OtherAddress>().unwrap().unwrap().0, other);
    }
    // Garbage on the second address is a counted drop, not an answer.
    socket.send_to(b"\x00\x01garbage", alternate).unwrap();
    let stats = wait_for(
        || dataplane.stats(),
        |s| {
            total(s, |w| w.counters.binding_success) >= 2
                && s.iter()
                    .map(|w| w.drop_count(DropReason::Truncated))
                    .sum::<u64>()
                    >= 1
        },
    );
    assert!(total(&stats, |w| w.counters.binding_success) >= 2);
    dataplane.shutdown().unwrap();
}

#[test]
fn answers_on_the_second_address_uring() {
    answers_on_the_second_address(IoBackend::Uring);
}

#[test]
fn answers_on_the_second_address_epoll() {
    answers_on_the_second_address(IoBackend::Epoll);
}
