//! The control plane at scale: heartbeats written behind in batches, the incremental grant
//! sync, and change notifications between hosts sharing PostgreSQL.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::Duration;

use boson_control::domain::model::NodeStatus;
use boson_control::io::store::Store;
use common::{Backend, Node, Options, START, TestServer};
use serde_json::json;

on_both_backends!(
    a_clean_stop_writes_the_heartbeats_held_in_memory,
    a_node_that_stops_heartbeating_still_expires,
);

fn node_id(node: &Node) -> boson_shared::NodeId {
    node.id.to_string().parse().unwrap()
}

async fn beat(server: &TestServer, node: &Node, token: &str, latency: f64) {
    let (status, body) = server
        .post(
            &format!("/api/v1/nodes/{}/heartbeat", node.id),
            Some(token),
            &json!({"metrics": {"latency": latency, "cpuUsage": 1, "activeConnections": 0}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits, in real time, until `check` holds; panics with `what` after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// A heartbeat is held in memory (the row keeps the registration's last-seen time, the API
/// shows the heartbeat), and a clean stop writes it; a crash loses only it.
async fn a_clean_stop_writes_the_heartbeats_held_in_memory(backend: Backend) {
    let options = Options {
        heartbeat_flush_interval: Duration::from_secs(20),
        sweep_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    for clean in [true, false] {
        let Some(server) = TestServer::start_with(backend, options.clone()).await else {
            return;
        };
        let node = Node::new("DE-BE");
        let token = server.register(&node).await;
        server.clock.advance(Duration::from_secs(10));
        beat(&server, &node, &token, 42.0).await;
        assert_eq!(server.state.pending_heartbeats(), 1);
        let stored = server
            .state
            .store
            .find(node_id(&node))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.last_seen, START, "written behind, not at once");
        let (status, body) = server
            .get(&format!("/api/v1/nodes/{}", node.id), Some(&token))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["metrics"]["latency"], 42.0, "{body}");

        let url = server.state.config.database_url.clone();
        let _dir = if clean {
            server.stop_keeping_data().await
        } else {
            // A crash: the task is dropped mid-flight, nothing is flushed.
            server.kill_keeping_data().await
        };
        let store = Store::connect(&url).await.unwrap();
        let stored = store.find(node_id(&node)).await.unwrap().unwrap();
        if clean {
            assert_eq!(
                stored.last_seen,
                START.saturating_add(Duration::from_secs(10))
            );
            assert_eq!(stored.metrics.map(|m| m.latency), Some(42.0));
        } else {
            assert_eq!(stored.last_seen, START, "the heartbeat died with the host");
            assert_eq!(stored.generation, 1, "the registration did not");
        }
        store.close().await;
    }
}

/// A node whose heartbeats are written behind stays active while they keep coming (the sweep
/// writes them before it judges), and still goes inactive, its grant revoked, once they stop.
async fn a_node_that_stops_heartbeating_still_expires(backend: Backend) {
    let options = Options {
        // Only the sweep (every 20 ms) writes the heartbeats.
        heartbeat_flush_interval: Duration::from_secs(20),
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let node = Node::new("DE-BE");
    let token = server.register(&node).await;
    server.clock.advance(Duration::from_secs(60));
    beat(&server, &node, &token, 10.0).await;
    // 120 s after the registration, 60 s after the heartbeat: alive.
    server.clock.advance(Duration::from_secs(60));
    eventually("the sweep wrote the heartbeat", || async {
        server.state.pending_heartbeats() == 0
    })
    .await;
    // Give the sweeper a few more rounds to (wrongly) mark it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = server
        .state
        .store
        .find(node_id(&node))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, NodeStatus::Active);
    assert_eq!(
        stored.last_seen,
        START.saturating_add(Duration::from_secs(60))
    );

    // 91 s of silence: inactive, and its grant goes.
    server.clock.advance(Duration::from_secs(31));
    eventually("the silent node is inactive", || async {
        let stored = server
            .state
            .store
            .find(node_id(&node))
            .await
            .unwrap()
            .unwrap();
        stored.status == NodeStatus::Inactive
    })
    .await;
    eventually("its grant is revoked", || async {
        server.take_commands().iter().any(|c| {
            matches!(c, boson_shared::plane::Command::Revoke { node: n } if *n == node_id(&node))
        })
    })
    .await;
    let (status, body) = server
        .get(&format!("/api/v1/nodes/{}", node.id), Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "inactive", "{body}");
    server.stop().await;
}

/// Two hosts on one PostgreSQL: a heartbeat held by one reaches the other's routing index once
/// written, even when it is written long after it arrived (the sync reads back one flush
/// interval), and both hosts then agree on the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_agree_on_heartbeats_written_behind() {
    let options = Options {
        heartbeat_flush_interval: Duration::from_secs(20),
        sweep_interval: Duration::from_secs(3600),
        index_sync_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let Some(hosts) = TestServer::start_cluster(2, options).await else {
        return;
    };
    let client = Node::new("US-CA");
    let client_token = hosts[0].register(&client).await;
    let target = Node::new("DE-BE");
    let target_token = hosts[0].register(&target).await;
    hosts[1].state.sync_route_index().await.unwrap();

    hosts[0].clock.advance(Duration::from_secs(10));
    beat(&hosts[1], &target, &target_token, 77.0).await;
    beat(&hosts[0], &client, &client_token, 5.0).await;
    assert_eq!(hosts[1].state.pending_heartbeats(), 1, "held, not written");
    // The write comes 15 s (of this clock) late, after host 0 synced.
    hosts[0].clock.advance(Duration::from_secs(15));
    hosts[0].state.sync_route_index().await.unwrap();
    assert_eq!(hosts[1].state.flush_heartbeats().await.unwrap(), 1);
    hosts[0].state.flush_heartbeats().await.unwrap();
    hosts[0].state.sync_route_index().await.unwrap();
    // 95 s after the registration, 85 s after the heartbeat: only the heartbeat keeps the
    // target in host 0's index.
    hosts[0].clock.advance(Duration::from_secs(70));
    beat(&hosts[0], &client, &client_token, 5.0).await;
    let target_id = target.id.to_string();
    let seen = hosts[0].routed(&client, &client_token).await;
    assert!(seen.contains(&target_id), "{seen:?}");
    for host in &hosts {
        let (status, body) = host
            .get(&format!("/api/v1/nodes/{}", target.id), Some(&client_token))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["metrics"]["latency"], 77.0, "{body}");
    }
    for host in hosts {
        host.stop().await;
    }
}

fn revoked(commands: &[boson_shared::plane::Command], node: &Node) -> bool {
    commands.iter().any(
        |c| matches!(c, boson_shared::plane::Command::Revoke { node: n } if *n == node_id(node)),
    )
}

fn granted(commands: &[boson_shared::plane::Command], node: &Node) -> bool {
    commands
        .iter()
        .any(|c| matches!(c, boson_shared::plane::Command::Grant(g) if g.node == node_id(node)))
}

/// The grant sync of a host reads what changed since its last sync: as many rows with 90
/// nodes as with 30 when the same 3 heartbeat, and it still follows deletions and expiry
/// through the other host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grant_sync_reads_what_changed_not_every_node() {
    let Some((front, back)) = TestServer::start_grant_sync_pair().await else {
        return;
    };
    let mut nodes = Vec::new();
    let mut rows_when_three_beat = Vec::new();
    // Every event 5 s (of the shared clock) after the last sync, every sync 5 s after it:
    // each sync reads back 3 s (the skew margin and the flush interval), so it sees exactly
    // what came since the previous one.
    for batch in [30, 60] {
        front.clock.advance(Duration::from_secs(5));
        for _ in 0..batch {
            let node = Node::new("DE-BE");
            let token = front.register(&node).await;
            nodes.push((node, token));
        }
        front.clock.advance(Duration::from_secs(5));
        assert_eq!(
            back.state.sync_grants().await.unwrap(),
            batch,
            "the new ones"
        );
        let commands = back.take_commands();
        for (node, _) in &nodes[nodes.len() - batch..] {
            assert!(granted(&commands, node), "{commands:?}");
        }
        front.clock.advance(Duration::from_secs(5));
        for (node, token) in &nodes[..3] {
            beat(&front, node, token, 3.0).await;
        }
        front.state.flush_heartbeats().await.unwrap();
        front.clock.advance(Duration::from_secs(5));
        rows_when_three_beat.push(back.state.sync_grants().await.unwrap());
    }
    assert_eq!(
        rows_when_three_beat,
        vec![3, 3],
        "rows read per sync, with 30 and with 90 nodes"
    );

    // t = 40 s. A deletion through the front host reaches the back host's grants.
    let (gone, gone_token) = &nodes[5];
    let (status, body) = front
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/{}", gone.id),
            Some(gone_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    back.take_commands();
    assert_eq!(back.state.sync_grants().await.unwrap(), 1, "the deletion");
    let commands = back.take_commands();
    assert!(revoked(&commands, gone), "{commands:?}");

    // t = 60 s: the renewal the sync read at 40 s (the heartbeat at 35 s) is due.
    front.clock.advance(Duration::from_secs(20));
    // (It reads the deletion again: it lies within the 3 s read back.)
    assert_eq!(back.state.sync_grants().await.unwrap(), 1);
    let commands = back.take_commands();
    assert!(granted(&commands, &nodes[0].0), "{commands:?}");
    // t = 120 s: the nodes registered at 5 s and 25 s and silent since have lapsed; those
    // that beat at 35 s have not.
    front.clock.advance(Duration::from_secs(60));
    back.state.sync_grants().await.unwrap();
    let commands = back.take_commands();
    assert!(revoked(&commands, &nodes[10].0), "{commands:?}");
    assert!(revoked(&commands, &nodes[50].0), "{commands:?}");
    assert!(!revoked(&commands, &nodes[0].0), "{commands:?}");
    // t = 130 s: they have too.
    front.clock.advance(Duration::from_secs(10));
    back.state.sync_grants().await.unwrap();
    let commands = back.take_commands();
    assert!(revoked(&commands, &nodes[0].0), "{commands:?}");
    front.stop().await;
    back.stop().await;
}

/// Two hosts on one PostgreSQL, polling each other only once an hour: a registration, a
/// heartbeat's metrics and a deletion through one reach the other's routing within a
/// notification and one sync (bounded here at 5 s of real time on a busy machine; well under
/// a second on an idle one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_other_host_by_notification() {
    let options = Options {
        index_sync_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let Some(hosts) = TestServer::start_cluster(2, options).await else {
        return;
    };
    // Both listen once their first (immediate) poll is done: a registration before that
    // could be read by the poll, proving nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Node::new("US-CA");
    let client_token = hosts[1].register(&client).await;
    let target = Node::new("DE-BE");
    let target_token = hosts[0].register(&target).await;
    let target_id = target.id.to_string();
    let within = Duration::from_secs(5);
    let seen = tokio::time::timeout(within, async {
        loop {
            if hosts[1]
                .routed(&client, &client_token)
                .await
                .contains(&target_id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the registration did not reach host 2 in {within:?}"
    );

    let (status, body) = hosts[0]
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/{}", target.id),
            Some(&target_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let gone = tokio::time::timeout(within, async {
        loop {
            if !hosts[1]
                .routed(&client, &client_token)
                .await
                .contains(&target_id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the deletion did not reach host 2 in {within:?}"
    );
    for host in hosts {
        host.stop().await;
    }
}

/// A node deleted and registered again under the same id (an agent that deregisters on a
/// clean stop and starts again) keeps the grant of its new registration on the other
/// hosts: the deletion's tombstone, which their syncs keep reading for a while, must not
/// revoke it. (The new row's generation follows the tombstone's, which is what tells the two
/// registrations apart: were generations to start over, the tombstone would revoke it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registered_again_after_its_deletion_keeps_its_grant() {
    let Some((front, back)) = TestServer::start_grant_sync_pair().await else {
        return;
    };
    front.clock.advance(Duration::from_secs(5));
    let node = Node::new("DE-BE");
    let token = front.register(&node).await;
    front.clock.advance(Duration::from_secs(5));
    back.state.sync_grants().await.unwrap();
    assert!(granted(&back.take_commands(), &node));

    let (status, body) = front
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/{}", node.id),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    front.clock.advance(Duration::from_secs(1));
    front.register(&node).await;
    // The next sync reads the new row and the tombstone; the one after reads the
    // tombstone again (it lies within the read back). Neither revokes the new grant.
    front.clock.advance(Duration::from_secs(1));
    back.state.sync_grants().await.unwrap();
    let commands = back.take_commands();
    // The new registration's generation is a new grant.
    assert!(granted(&commands, &node), "{commands:?}");
    assert!(!revoked(&commands, &node), "{commands:?}");
    front.clock.advance(Duration::from_secs(1));
    back.state.sync_grants().await.unwrap();
    let commands = back.take_commands();
    assert!(!revoked(&commands, &node), "{commands:?}");
    front.stop().await;
    back.stop().await;
}
