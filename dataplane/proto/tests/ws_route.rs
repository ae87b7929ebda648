//! The relay's routing decision, [`Hub::route_frame`], in virtual time: one core's hub with
//! its [`Directory`], fed the presence records, QUIC sessions, mesh announcements and
//! control-plane presence a shell would feed it, and asked where a frame goes from each
//! origin. Every hop kind, the mesh rule, a node moving between cores, presence expiry, a
//! QUIC node, unknown nodes, and the drops counted by reason.

#![allow(clippy::unwrap_used, reason = "tests: a panic is a test failure")]

use std::time::{Duration, Instant};

use boson_dataplane_proto::ws::frame::{OpCode, encode_masked};
use boson_dataplane_proto::ws::relay::node_id;
use boson_dataplane_proto::ws::{
    ConnId, Directory, Hop, Hub, HubEvent, Location, Origin, Route, RouteDrop, WsConfig,
};
use boson_shared::{HostId, NodeId};

const ORIGINS: [Origin; 3] = [Origin::Client, Origin::Core, Origin::Mesh];
const HOST: HostId = HostId::from_bytes([0xB0; 16]);

#[expect(
    clippy::disallowed_methods,
    reason = "virtual time needs an origin; its value never matters"
)]
fn epoch() -> Instant {
    Instant::now()
}

fn node(byte: u8) -> NodeId {
    node_id([byte; 16])
}

/// One core: its hub, which owns the directory, and virtual time.
struct Core {
    hub: Hub<Directory>,
    now: Instant,
}

impl Core {
    fn new() -> Self {
        let now = epoch();
        Self {
            hub: Hub::new(WsConfig::new(), Directory::new(), now),
            now,
        }
    }

    fn feed(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut buf = bytes.to_vec();
        let mut at = 0;
        while at < buf.len() {
            let input = self
                .hub
                .handle_input(self.now, conn, &mut buf[at..])
                .unwrap();
            if input.consumed == 0 {
                break;
            }
            at += input.consumed;
        }
    }

    /// A connection upgrades and presents a token; returns it once the hub asks for the
    /// verdict.
    fn present_token(&mut self) -> ConnId {
        let conn = self.hub.handle_connect(self.now);
        self.feed(
            conn,
            b"GET /relay HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        );
        let mut frame = [0u8; 64];
        let len = encode_masked(true, OpCode::Binary, [1, 2, 3, 4], b"\x05token", &mut frame);
        self.feed(conn, &frame[..len.unwrap()]);
        let mut asked = false;
        while let Some(event) = self.hub.poll_event() {
            asked |= matches!(event, HubEvent::Authenticate { conn: c, .. } if c == conn);
        }
        assert!(asked, "the hub asks for a verdict");
        conn
    }

    /// A node's WebSocket session on this core's hub.
    fn join(&mut self, node: NodeId) -> ConnId {
        let conn = self.present_token();
        self.hub.accept(self.now, conn, node).unwrap();
        assert_eq!(self.hub.route(&node), Route::Local(conn));
        conn
    }

    /// A mesh link of `host` on this core's hub.
    fn join_mesh(&mut self, host: HostId) -> ConnId {
        let conn = self.present_token();
        self.hub.accept_mesh(self.now, conn, host).unwrap();
        self.hub.directory_mut().mesh_here(&host);
        conn
    }

    fn dir(&mut self) -> &mut Directory {
        self.hub.directory_mut()
    }

    /// Asks where a frame for `dest` from `from` goes, and checks that a drop, and only a
    /// drop, is counted under its reason.
    fn hop(&mut self, dest: NodeId, from: Origin) -> Hop {
        let before = *self.hub.directory().drops();
        let hop = self.hub.route_frame(&dest, from);
        let after = *self.hub.directory().drops();
        for (reason, count) in after.iter() {
            let expected = before.get(reason) + u64::from(hop == Hop::Drop(reason));
            assert_eq!(count, expected, "{reason:?} after {hop:?}");
        }
        hop
    }

    /// The hop from each of client, core and mesh.
    fn hops(&mut self, dest: NodeId) -> [Hop; 3] {
        ORIGINS.map(|from| self.hop(dest, from))
    }
}

#[test]
fn an_unknown_node_is_dropped_from_every_origin() {
    let mut core = Core::new();
    let drop = Hop::Drop(RouteDrop::UnknownNode);
    assert_eq!(core.hops(node(1)), [drop; 3]);
    assert_eq!(core.hub.directory().drops().get(RouteDrop::UnknownNode), 3);
    assert_eq!(core.hub.directory().drops().total(), 3);
}

#[test]
fn a_session_of_this_hub_takes_the_frame_from_every_origin() {
    let mut core = Core::new();
    let conn = core.join(node(1));
    assert_eq!(core.hops(node(1)), [Hop::Session(conn); 3]);
    // A stale record of another core does not win over the session here.
    core.dir().arrive(node(1), 2, 1);
    assert_eq!(core.hops(node(1)), [Hop::Session(conn); 3]);
    assert_eq!(core.hub.directory().drops().total(), 0);
}

#[test]
fn another_core_takes_a_clients_or_a_mesh_frame_but_no_other_cores() {
    let mut core = Core::new();
    assert!(core.dir().arrive(node(1), 2, 5));
    assert_eq!(
        core.hops(node(1)),
        [Hop::Core(2), Hop::Drop(RouteDrop::CoreLoop), Hop::Core(2)]
    );
    assert_eq!(core.hub.directory().drops().get(RouteDrop::CoreLoop), 1);
}

#[test]
fn a_node_moving_between_cores_is_followed_by_its_newest_session() {
    let mut core = Core::new();
    let x = node(1);
    // On core 1, then on core 2 with a newer session; core 1's LEAVE comes late.
    core.dir().arrive(x, 1, 1);
    assert_eq!(core.hop(x, Origin::Client), Hop::Core(1));
    core.dir().arrive(x, 2, 2);
    assert_eq!(core.hop(x, Origin::Client), Hop::Core(2));
    core.dir().leave(&x, 1, 1);
    assert_eq!(core.hop(x, Origin::Client), Hop::Core(2));
    // An ARRIVE of the older session read after the newer one does not move it back.
    assert!(!core.dir().arrive(x, 1, 1));
    assert_eq!(core.hop(x, Origin::Mesh), Hop::Core(2));

    // It moves here; core 2's session ends.
    let conn = core.join(x);
    core.dir().leave(&x, 2, 2);
    assert_eq!(core.hub.directory().get(&x), None);
    assert_eq!(core.hop(x, Origin::Core), Hop::Session(conn));

    // Its session here idles out in virtual time (the client never answers a ping)...
    let deadline = core.now + Duration::from_secs(3600);
    while core.hub.route(&x) == Route::Local(conn) {
        let at = core.hub.poll_timeout().unwrap();
        assert!(at <= deadline, "the idle session closes");
        core.now = at;
        core.hub.handle_timeout(core.now);
    }
    core.hub.handle_disconnect(conn).unwrap();
    assert_eq!(
        core.hop(x, Origin::Client),
        Hop::Drop(RouteDrop::UnknownNode)
    );

    // ...and the node comes back on core 3.
    core.dir().arrive(x, 3, 3);
    assert_eq!(core.hop(x, Origin::Client), Hop::Core(3));
    core.dir().leave(&x, 3, 3);
    assert_eq!(
        core.hop(x, Origin::Client),
        Hop::Drop(RouteDrop::UnknownNode)
    );
}

#[test]
fn a_quic_node_of_this_core_takes_the_frame_from_every_origin() {
    let mut core = Core::new();
    let q = node(7);
    core.dir().quic_up(q, 10);
    assert_eq!(
        core.hub.directory().get(&q),
        Some(Location::Quic { epoch: 10 })
    );
    assert_eq!(core.hops(q), [Hop::Quic; 3]);
    // An older session's ARRIVE from another core does not take it away.
    assert!(!core.dir().arrive(q, 2, 9));
    assert_eq!(core.hop(q, Origin::Client), Hop::Quic);
    // The session ends: gone.
    assert!(core.dir().quic_down(&q, 10));
    assert_eq!(
        core.hop(q, Origin::Client),
        Hop::Drop(RouteDrop::UnknownNode)
    );

    // A newer session on another core replaces the QUIC one; the QUIC one's end leaves it.
    core.dir().quic_up(q, 11);
    assert!(core.dir().arrive(q, 2, 12));
    assert!(!core.dir().quic_down(&q, 11));
    assert_eq!(core.hop(q, Origin::Client), Hop::Core(2));
    assert_eq!(core.hub.directory().drops().total(), 1);
}

#[test]
fn a_frame_from_the_mesh_never_goes_back_out_over_it() {
    let mut core = Core::new();
    let z = node(3);
    core.dir().set_host(z, Some(HOST));
    let no_link = Hop::Drop(RouteDrop::NoMeshLink);
    let back = Hop::Drop(RouteDrop::NoMeshBack);

    // No core holds a link to the host.
    assert_eq!(core.hops(z), [no_link, no_link, back]);
    // Core 2 holds it: a client's frame goes there; another core's frame does not hop on.
    core.dir().mesh_up(HOST, 2);
    assert_eq!(core.hops(z), [Hop::Core(2), no_link, back]);
    // This core takes the link.
    let link = core.join_mesh(HOST);
    assert_eq!(core.hub.mesh_conn(&HOST), Some(link));
    assert_eq!(core.hops(z), [Hop::Mesh(HOST), Hop::Mesh(HOST), back]);
    // Core 2's late MESH_DOWN changes nothing; the link's end here leaves no link at all.
    core.dir().mesh_down(&HOST, 2);
    core.hub.handle_disconnect(link).unwrap();
    assert_eq!(core.hops(z), [no_link, no_link, back]);

    let drops = core.hub.directory().drops();
    assert_eq!(drops.get(RouteDrop::NoMeshBack), 4);
    assert_eq!(drops.get(RouteDrop::NoMeshLink), 5);
}

#[test]
fn another_hosts_presence_expires_and_never_beats_a_session_here() {
    let mut core = Core::new();
    let z = node(3);
    let link = core.join_mesh(HOST);
    core.dir().set_host(z, Some(HOST));
    assert_eq!(core.hop(z, Origin::Client), Hop::Mesh(HOST));
    // The control plane's presence of the node expired.
    core.dir().set_host(z, None);
    assert_eq!(
        core.hop(z, Origin::Client),
        Hop::Drop(RouteDrop::UnknownNode)
    );

    // A session on this host wins over the other host's presence, either order.
    core.dir().arrive(z, 1, 1);
    core.dir().set_host(z, Some(HOST));
    assert_eq!(core.hop(z, Origin::Client), Hop::Core(1));
    core.dir().set_host(z, None);
    assert_eq!(core.hop(z, Origin::Client), Hop::Core(1));
    core.dir().leave(&z, 1, 1);
    core.dir().set_host(z, Some(HOST));
    core.dir().quic_up(z, 2);
    assert_eq!(core.hop(z, Origin::Client), Hop::Quic);
    assert!(core.dir().quic_down(&z, 2));
    core.dir().set_host(z, Some(HOST));
    assert_eq!(core.hop(z, Origin::Core), Hop::Mesh(HOST));
    assert_eq!(core.hub.mesh_conn(&HOST), Some(link));
}
