//! A bounded soak of the real binary: TURN clients allocate, relay, refresh and delete (a few
//! abandon their allocation), and relay sessions connect, exchange packets and leave, over and
//! over for a minute (`BOSON_TEST_SOAK_SECONDS` for longer). Afterwards the process holds the
//! memory and file descriptors it held after warm-up, plus exactly what is still open, and its
//! counters agree with each other and with what the clients did.

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::wildcard_enum_match_arm,
    reason = "tests panic on any message they do not expect"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use boson_node::relay_blocking::Received;
use boson_node::ws::Auth;
use boson_shared::NodeId;
use common::turn::{self, TurnClient};
use common::{WsClient as Client, ws_connect as connect, ws_upgrade};

const SECRET: &str = "soak-turn-secret";
const JWT_SECRET: &str = "soak-jwt-secret-0123456789abcdef-01234";
const CHANNEL: u16 = 0x4000;
const TAG: u8 = 0x50;
const TURN_THREADS: u8 = 3;
const WS_THREADS: u16 = 2;
/// Every this many cycles a TURN client leaves without deleting its allocation...
const ABANDON_EVERY: u64 = 10;
/// ...up to this many per thread, well inside the relay port range.
const ABANDON_MAX: u64 = 40;

fn duration() -> Duration {
    let seconds = std::env::var("BOSON_TEST_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// Churn below which the soak proves nothing: TURN allocations and relay connections.
const MIN_ALLOCATIONS: u64 = 1_000;
const MIN_CONNECTIONS: u64 = 500;

/// What the clients did, counted on their side.
#[derive(Default)]
struct Tally {
    allocated: AtomicU64,
    deleted: AtomicU64,
    abandoned: AtomicU64,
    turn_failures: AtomicU64,
    ws_connections: AtomicU64,
    ws_round_trips: AtomicU64,
    ws_resends: AtomicU64,
}

impl Tally {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One TURN client's life: allocate from a fresh socket, bind a channel, relay both ways,
/// refresh, and delete (or, now and then, walk away).
fn turn_cycle(
    server: SocketAddr,
    peer: &UdpSocket,
    thread: u8,
    cycle: u64,
    tally: &Tally,
    abandoned: &mut Vec<TurnClient>,
) -> Result<(), String> {
    // Sources spread over 127.0.<thread>.x: the server rate-limits unauthenticated answers
    // per source address, and every fresh client needs one.
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 10 + thread, 1 + (cycle % 250) as u8));
    let user = format!("soak-{thread}-{cycle}");
    let mut client = TurnClient::from_ip(server, SECRET, &user, turn::unix_now(), ip);
    let answer = client.allocate().map_err(|e| e.to_string())?;
    let relayed = answer
        .relayed()
        .ok_or_else(|| format!("allocate: {:?}", answer.code))?;
    tally.allocated.fetch_add(1, Ordering::Relaxed);
    let peer_addr = peer.local_addr().unwrap();
    let ok = |answer: std::io::Result<turn::Answer>, what: &str| match answer {
        Ok(answer) if answer.is_success() => Ok(()),
        Ok(answer) => Err(format!("{what}: {:?}", answer.code)),
        Err(e) => Err(format!("{what}: {e}")),
    };
    ok(client.create_permission(peer_addr), "permission")?;
    ok(client.channel_bind(CHANNEL, peer_addr), "channel")?;
    let mut buf = [0u8; 64];
    for i in 0..3u8 {
        let out = [thread, i, cycle as u8];
        client.send_channel_data(CHANNEL, &out).unwrap();
        let (len, from) = peer.recv_from(&mut buf).map_err(|e| format!("peer: {e}"))?;
        if (&buf[..len], from) != (&out[..], relayed) {
            return Err(format!("peer got {:?} from {from}", &buf[..len]));
        }
        peer.send_to(&out, relayed).unwrap();
        let back = (0..8)
            .find_map(|_| client.recv_channel_data())
            .ok_or("no ChannelData back")?;
        if back != (CHANNEL, out.to_vec()) {
            return Err(format!("client got {back:?}"));
        }
    }
    ok(client.refresh(600), "refresh")?;
    if cycle % ABANDON_EVERY == ABANDON_EVERY - 1 && (abandoned.len() as u64) < ABANDON_MAX {
        // The client walks away, but its socket stays open to the end: a later client bound
        // to the same address could otherwise get the same port, and a new user on the
        // 5-tuple of a live allocation is rightly refused (441).
        abandoned.push(client);
        tally.abandoned.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    ok(client.refresh(0), "delete")?;
    tally.deleted.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Two relay sessions connect, exchange three packets each way, and leave.
fn ws_cycle(relay: SocketAddr, nodes: &[(NodeId, String); 2], tally: &Tally, cycle: u64) {
    let mut sessions: Vec<Client<std::net::TcpStream>> = nodes
        .iter()
        .map(|(node, token)| {
            let mut client = ws_upgrade(connect(relay), Auth::Bearer(token)).unwrap();
            assert_eq!(client.ready().unwrap(), *node);
            client
                .stream()
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            tally.ws_connections.fetch_add(1, Ordering::Relaxed);
            client
        })
        .collect();
    let (a, b) = (nodes[0].0, nodes[1].0);
    for i in 0..3u8 {
        let (first, second) = sessions.split_at_mut(1);
        let packet = [&cycle.to_be_bytes()[..], &[i; 92]].concat();
        deliver(&mut first[0], a, &mut second[0], b, &packet, tally);
        deliver(&mut second[0], b, &mut first[0], a, &packet, tally);
        tally.ws_round_trips.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `packet` from `sender` (node `src`) to `receiver` (node `dest`) until it arrives.
/// A node that just connected may miss a packet sent the moment it is READY (its new session
/// may be on another core than its last one); those resends are counted, not failures.
fn deliver(
    sender: &mut Client<std::net::TcpStream>,
    src: NodeId,
    receiver: &mut Client<std::net::TcpStream>,
    dest: NodeId,
    packet: &[u8],
    tally: &Tally,
) {
    for attempt in 0..10 {
        if attempt > 0 {
            tally.ws_resends.fetch_add(1, Ordering::Relaxed);
        }
        sender.send(&dest, packet).unwrap();
        loop {
            match receiver.recv() {
                Ok(Received::Packet {
                    src: from,
                    packet: got,
                }) if from == src && got == packet => return,
                // An earlier resend, or a notice.
                Ok(Received::Packet { .. } | Received::PeerPresent(_) | Received::PeerGone(_)) => {}
                Ok(Received::Closed(reason)) => {
                    panic!("session of {dest} closed: {reason:?}")
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    panic!("{src} -> {dest}: not delivered in 10 attempts");
}

/// The sum over cores of a dataplane metric, optionally of one `event` label.
fn metric(text: &str, name: &str, event: Option<&str>) -> u64 {
    let prefix = format!("bosonserver_dataplane_{name}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter(|line| event.is_none_or(|e| line.contains(&format!("event=\"{e}\""))))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn churn_leaves_memory_descriptors_and_counters_flat() {
    let dir = tempfile::tempdir().unwrap();
    let ports = turn::relay_ports(1024);
    let server = common::start_local(
        dir.path(),
        &[
            "--relay-ports",
            &ports,
            "--danger-allow-loopback-peers",
            "--turn-static-secret",
            SECRET,
            "--jwt-secret",
            JWT_SECRET,
            "--register-rate-limit",
            "1000",
        ],
        true,
    );
    let http = common::Http::new();
    let turn_addr = server.turn.unwrap();
    let relay = server.relay.unwrap();
    let pairs: Vec<[(NodeId, String); 2]> = (0..WS_THREADS)
        .map(|t| {
            [2 * t, 2 * t + 1].map(|i| {
                let id = common::node_id(TAG, i);
                let token = http.register(
                    &server.base,
                    &common::node_body(&id, &common::wg_key(TAG, i)),
                );
                (id.parse().unwrap(), token)
            })
        })
        .collect();
    let baseline = server.resources();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for thread in 0..TURN_THREADS {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let peer = turn::peer();
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut abandoned = Vec::new();
            let mut cycle = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) =
                    turn_cycle(turn_addr, &peer, thread, cycle, &tally, &mut abandoned)
                {
                    eprintln!("TURN thread {thread}, cycle {cycle}: {error}");
                    tally.turn_failures.fetch_add(1, Ordering::Relaxed);
                }
                cycle += 1;
            }
        }));
    }
    for nodes in pairs {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut cycle = 0;
            while !stop.load(Ordering::Relaxed) {
                ws_cycle(relay, &nodes, &tally, cycle);
                cycle += 1;
            }
        }));
    }

    // Warm-up is the first fifth; then sample every few seconds.
    let total = duration();
    let warm_up = total / 5;
    std::thread::sleep(warm_up);
    let warm = server.resources();
    let warm_allocations = Tally::get(&tally.allocated);
    let mut samples = Vec::new();
    let step = Duration::from_secs(5);
    let mut elapsed = warm_up;
    // The soak runs its duration, and on a machine too busy for enough churn in that time it
    // goes on (up to four times as long) until there is enough to judge.
    let enough = || {
        Tally::get(&tally.allocated) >= MIN_ALLOCATIONS
            && Tally::get(&tally.ws_connections) >= MIN_CONNECTIONS
    };
    while elapsed < total || (!enough() && elapsed < total * 4) {
        let left = total.saturating_sub(elapsed);
        std::thread::sleep(if left.is_zero() { step } else { step.min(left) });
        elapsed += step;
        samples.push(server.resources());
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }

    let allocated = Tally::get(&tally.allocated);
    let deleted = Tally::get(&tally.deleted);
    let abandoned = Tally::get(&tally.abandoned);
    let connections = Tally::get(&tally.ws_connections);
    eprintln!(
        "soak: {allocated} allocations ({deleted} deleted, {abandoned} abandoned), \
         {connections} relay connections, {} relay round trips ({} resends); baseline \
         {baseline:?}, warm {warm:?}, samples {samples:?}",
        Tally::get(&tally.ws_round_trips),
        Tally::get(&tally.ws_resends)
    );
    assert_eq!(
        Tally::get(&tally.turn_failures),
        0,
        "every TURN cycle worked"
    );
    assert!(
        allocated >= MIN_ALLOCATIONS && connections >= MIN_CONNECTIONS,
        "too little churn to judge: {allocated} allocations, {connections} connections"
    );

    // The server's counters, once the last closes are published.
    let mut text = String::new();
    for _ in 0..300 {
        text = http.text(&format!("{}/metrics", server.base));
        if metric(&text, "ws_connections", None) == 0
            && metric(&text, "ws_connections_closed_total", None) == connections
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = metric(&text, "turn_allocation_events_total", Some("created"));
    let server_deleted = metric(&text, "turn_allocation_events_total", Some("deleted"));
    let expired = metric(&text, "turn_allocation_events_total", Some("expired"));
    let live = metric(&text, "turn_allocations", None);
    // A relay port some other socket holds cannot be bound: that allocation is created and
    // deleted at once, and the client's retransmission gets another one.
    let bind_failed = metric(&text, "relay_bind_failures_total", None);
    assert_eq!(
        created,
        allocated + bind_failed,
        "created: one per successful Allocate"
    );
    assert_eq!(
        server_deleted,
        deleted + bind_failed,
        "deleted: one per LIFETIME 0"
    );
    assert_eq!(expired, 0, "nothing lived for ten minutes");
    assert_eq!(live, abandoned, "the abandoned ones are still there");
    assert_eq!(created, server_deleted + expired + live);
    assert_eq!(
        metric(&text, "relay_sockets", None),
        live,
        "one socket each"
    );
    let accepted = metric(&text, "ws_connections_accepted_total", None);
    let closed = metric(&text, "ws_connections_closed_total", None);
    let open = metric(&text, "ws_connections", None);
    assert_eq!(accepted, connections, "accepted: one per client connection");
    assert_eq!(accepted, closed + open);
    assert_eq!(open, 0, "every client left");
    assert_eq!(metric(&text, "ws_sessions", None), 0);

    // Descriptors: after warm-up the count only follows what is open; at the end it is the
    // baseline plus one relay socket per abandoned allocation (and the API connection the
    // metrics scrape kept alive).
    let end = server.resources();
    let slack = 8;
    for sample in &samples {
        let open_allocations = u64::from(TURN_THREADS) * ABANDON_MAX + u64::from(TURN_THREADS);
        let ceiling = baseline.fds as u64 + open_allocations + 4 * u64::from(WS_THREADS) + slack;
        assert!(
            sample.fds as u64 <= ceiling,
            "{} descriptors during the soak, ceiling {ceiling}",
            sample.fds
        );
    }
    assert!(
        end.fds as u64 <= baseline.fds as u64 + live + slack,
        "{} descriptors at the end: baseline {} + {live} allocations",
        end.fds,
        baseline.fds
    );
    // Memory: after warm-up it may wobble with the allocator (a few hundred kB), not grow
    // with the traffic. The churn after warm-up runs to tens of thousands of allocations and
    // connections, so a leak of a hundred bytes each breaks the budget; the TURN timers that
    // outlived their allocations grew it by 5 MB.
    let churned = allocated - warm_allocations + connections;
    let budget = 4 * 1024;
    let peak = samples
        .iter()
        .map(|s| s.rss_kb)
        .max()
        .unwrap_or(warm.rss_kb);
    assert!(
        peak.max(end.rss_kb) <= warm.rss_kb + budget,
        "RSS grew from {} kB after warm-up to {} kB over {churned} more allocations and \
         connections",
        warm.rss_kb,
        peak.max(end.rss_kb)
    );
}
