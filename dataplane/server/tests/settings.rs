//! Setting changes reach every worker's core ([`SettingsHandle`]), and the cores' events
//! reach the event sink with the worker's index, driven by a fake [`PacketCore`] that speaks
//! text on the listener:
//!
//! * `GET` → replies `<worker> quota=<n> secrets=<n> filtered=<bool> updates=<n>`;
//! * `EVENT <user>` → queues an `AllocationCreated` for `<user>`, replies `<worker> OK`.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use boson_dataplane::{
    ClientAction, Command, CoreUpdate, IoBackend, PacketCore, PeerAction, PeerAddr, RelayPort,
    TurnEvent, WorkerInfo, start,
};
use boson_dataplane_proto::turn::PeerFilter;
use boson_dataplane_proto::{ClientAddr, DropReason, Stats};
use boson_shared::TurnSecret;
use boson_shared::plane::Event;
use common::{available, config};

const RELAY: &str = "192.0.2.1:50000";

struct SettingsCore {
    worker: usize,
    quota: u32,
    secrets: usize,
    filtered: bool,
    updates: u32,
    events: Vec<TurnEvent>,
    stats: Stats,
}

impl PacketCore for SettingsCore {
    fn handle_listener(
        &mut self,
        _now: Instant,
        from: ClientAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        let text = String::from_utf8_lossy(packet);
        let reply = match text.split_once(' ') {
            None if text == "GET" => format!(
                "{} quota={} secrets={} filtered={} updates={}",
                self.worker, self.quota, self.secrets, self.filtered, self.updates
            ),
            Some(("EVENT", user)) => {
                self.events.push(TurnEvent::AllocationCreated {
                    relay: RELAY.parse().unwrap(),
                    user: user.to_owned(),
                });
                format!("{} OK", self.worker)
            }
            _ => return ClientAction::Drop(DropReason::UnsupportedMethod),
        };
        out[..reply.len()].copy_from_slice(reply.as_bytes());
        ClientAction::Reply {
            dst: from,
            len: reply.len(),
        }
    }

    fn handle_relay(
        &mut self,
        _now: Instant,
        _port: RelayPort,
        _from: PeerAddr,
        _buf: &mut [u8],
        _len: usize,
    ) -> PeerAction {
        PeerAction::Drop(DropReason::NoAllocation)
    }

    fn next_command(&mut self) -> Option<Command> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_relay_failed(&mut self, _port: RelayPort) {}

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn handle_update(&mut self, _now: Instant, update: &CoreUpdate) {
        self.updates += 1;
        match update {
            CoreUpdate::SetSecrets(secrets) => self.secrets = secrets.len(),
            CoreUpdate::SetMaxAllocationsPerUser(quota) => self.quota = *quota,
            CoreUpdate::SetPeerFilter(filter) => self.filtered = *filter != PeerFilter::new(),
            // Only sent with a drain (`DrainHandle::start_with_alternate`), which this test
            // does not start.
            CoreUpdate::SetAlternateServer(_) => {}
        }
    }

    fn poll_event(&mut self) -> Option<TurnEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }
}

/// Sends `request` from `socket` until a reply comes; returns it.
fn ask(socket: &UdpSocket, server: SocketAddr, request: &str) -> String {
    let mut buf = [0u8; 512];
    for _ in 0..20 {
        socket.send_to(request.as_bytes(), server).unwrap();
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..len]).into_owned();
        }
    }
    panic!("no reply to {request}");
}

/// Asks `GET` from every socket until each reply ends with `want`; returns the workers seen.
fn wait_for_settings(sockets: &[UdpSocket], server: SocketAddr, want: &str) -> BTreeSet<String> {
    let mut workers = BTreeSet::new();
    for socket in sockets {
        let mut last = String::new();
        for _ in 0..200 {
            last = ask(socket, server, "GET");
            if last.contains(want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(last.contains(want), "{last:?} never showed {want:?}");
        workers.insert(last.split(' ').next().unwrap().to_owned());
    }
    workers
}

fn settings_reach_every_worker_and_events_leave_them(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut config = config(backend, 2);
    config.events = Some(Arc::new(move |event| {
        let _ = tx.lock().unwrap().send(event);
    }));
    let dataplane = start(config, |info: WorkerInfo| SettingsCore {
        worker: info.index,
        quota: 32,
        secrets: 1,
        filtered: false,
        updates: 0,
        events: Vec::new(),
        stats: Stats::default(),
    })
    .unwrap();
    let server = dataplane.local_addr();
    // Enough sources that the kernel's hash almost surely gives each worker some.
    let sockets: Vec<UdpSocket> = (0..32).map(|_| common::client()).collect();
    let before = wait_for_settings(&sockets, server, "quota=32 secrets=1 filtered=false");
    assert_eq!(before.len(), 2, "both workers answer: {before:?}");

    let settings = dataplane.settings_handle();
    settings.update(&CoreUpdate::SetSecrets(vec![
        TurnSecret::new("new"),
        TurnSecret::new("old"),
    ]));
    settings.update(&CoreUpdate::SetPeerFilter(
        PeerFilter::new().deny("198.51.100.0/24".parse().unwrap()),
    ));
    // A burst of one kind: only the newest matters, and it is what every core ends with.
    for quota in 1..=100 {
        settings.update(&CoreUpdate::SetMaxAllocationsPerUser(quota));
    }
    let after = wait_for_settings(&sockets, server, "quota=100 secrets=2 filtered=true");
    assert_eq!(after, before);

    for (i, socket) in sockets.iter().enumerate().take(4) {
        let reply = ask(socket, server, &format!("EVENT user{i}"));
        let worker: u16 = reply.split(' ').next().unwrap().parse().unwrap();
        let event = events.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            event,
            Event::AllocationCreated {
                core: worker,
                user: format!("user{i}"),
                relay: RELAY.parse().unwrap(),
            }
        );
    }
    dataplane.shutdown().unwrap();
}

#[test]
fn settings_reach_every_worker_and_events_leave_them_uring() {
    settings_reach_every_worker_and_events_leave_them(IoBackend::Uring);
}

#[test]
fn settings_reach_every_worker_and_events_leave_them_epoll() {
    settings_reach_every_worker_and_events_leave_them(IoBackend::Epoll);
}
