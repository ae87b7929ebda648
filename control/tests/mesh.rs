//! The relay mesh at the control level: the grants and presence the control plane sends the
//! dataplane, the relay host registry, and several hosts sharing one PostgreSQL and one Redis.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use boson_control::domain::hosts::HostLoad;
use boson_control::io::turn_settings::Reload;
use boson_shared::plane::{Command, Event, Grant, HostId, Transport};
use boson_shared::{NodeId, TurnSecret};
use common::{Backend, Node, Options, START, TURN_SECRET, TestServer};
use serde_json::json;

on_both_backends!(
    grants_follow_registration_heartbeats_and_removal,
    a_restarted_dataplane_gets_every_live_grant,
    a_reloaded_secrets_file_mints_with_and_is_pushed_to_the_dataplane,
    the_allocation_view_follows_the_dataplanes_events,
    relay_presence_follows_the_dataplanes_events,
    hosts_publish_their_record_and_load,
);

fn node_id(node: &Node) -> NodeId {
    node.id.to_string().parse().unwrap()
}

fn grant(node: &Node, generation: i64, expires_at: i64) -> Command {
    Command::Grant(Grant {
        node: node_id(node),
        generation,
        expires_at: u64::try_from(expires_at).unwrap(),
    })
}

fn revoke(node: &Node) -> Command {
    Command::Revoke {
        node: node_id(node),
    }
}

/// Waits (a little, in real time) for background tasks to send `want`, in any order.
async fn wait_for_commands(server: &TestServer, want: &[Command]) {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.extend(server.take_commands());
        if seen.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sorted = |commands: &[Command]| {
        let mut text: Vec<String> = commands.iter().map(|c| format!("{c:?}")).collect();
        text.sort();
        text
    };
    assert_eq!(sorted(&seen), sorted(want));
}

async fn grants_follow_registration_heartbeats_and_removal(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // Node timeout 90 s: a grant runs until last_seen + 90 s, renewed once under 45 s remain.
    let second = 1000;
    let node = Node::new("US-CA");
    let token = server.register(&node).await;
    assert_eq!(
        server.take_commands(),
        vec![grant(&node, 1, START.0 + 90 * second)]
    );

    server.clock.advance(Duration::from_secs(30));
    assert_eq!(server.heartbeat(&node, &token, 1).await.0, 200);
    assert_eq!(server.take_commands(), vec![], "60 s left: no renewal yet");
    server.clock.advance(Duration::from_secs(20));
    assert_eq!(server.heartbeat(&node, &token, 1).await.0, 200);
    assert_eq!(
        server.take_commands(),
        vec![grant(&node, 1, START.0 + 140 * second)],
        "40 s left: renewed"
    );

    // Re-registration: a new generation.
    let (status, body) = server
        .post(
            "/api/v1/nodes/register",
            Some(&token),
            &server.registration(&node).await,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["sessionToken"].as_str().unwrap().to_owned();
    assert_eq!(
        server.take_commands(),
        vec![grant(&node, 2, START.0 + 140 * second)]
    );

    // Offline revokes; the next heartbeat grants again.
    let path = format!("/api/v1/nodes/{}/heartbeat", node.id);
    let offline = json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 0}, "status": "offline"});
    assert_eq!(server.post(&path, Some(&token), &offline).await.0, 200);
    assert_eq!(server.take_commands(), vec![revoke(&node)]);
    assert_eq!(server.heartbeat(&node, &token, 0).await.0, 200);
    assert_eq!(
        server.take_commands(),
        vec![grant(&node, 2, START.0 + 140 * second)]
    );

    // Deletion revokes, and the token dies with the node.
    let other = Node::new("US-CA");
    let other_token = server.register(&other).await;
    server.take_commands();
    let node_path = format!("/api/v1/nodes/{}", node.id);
    let (status, body) = server
        .send(
            reqwest::Method::DELETE,
            &node_path,
            Some(&other_token),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = server
        .send(reqwest::Method::DELETE, &node_path, Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"nodeId": node.id, "status": "deleted"}));
    assert_eq!(server.take_commands(), vec![revoke(&node)]);
    let (status, body) = server.get(&node_path, Some(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    let (status, body) = server.get(&node_path, Some(&other_token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("node_not_found"))
    );
    // The id is free again.
    server.register(&node).await;
    server.take_commands();

    // Silence: the sweeper revokes.
    server.clock.advance(Duration::from_secs(91));
    wait_for_commands(&server, &[revoke(&other), revoke(&node)]).await;
    server.stop().await;
}

async fn a_restarted_dataplane_gets_every_live_grant(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut nodes = vec![Node::new("DE-BE"), Node::new("DE-BE"), Node::new("DE-BE")];
    nodes.sort_by_key(|n| n.id);
    let mut tokens = Vec::new();
    for node in &nodes {
        tokens.push(server.register(node).await);
    }
    // The middle one goes offline: it has no grant to re-push.
    let offline = json!({"metrics": {"latency": 1, "cpuUsage": 1, "activeConnections": 0}, "status": "offline"});
    let path = format!("/api/v1/nodes/{}/heartbeat", nodes[1].id);
    assert_eq!(server.post(&path, Some(&tokens[1]), &offline).await.0, 200);
    server.take_commands();

    server.state.handle_event(Event::NeedGrants).await;
    let expiry = START.0 + 90_000;
    // The TURN settings first: the control plane's, whatever the dataplane started with.
    assert_eq!(
        server.take_commands(),
        vec![
            Command::TurnSecrets(vec![TURN_SECRET.into(), b"older".to_vec()]),
            Command::TurnQuota {
                max_allocations_per_user: 32
            },
            Command::PeerFilter {
                allow: Vec::new(),
                deny: Vec::new()
            },
            Command::ClearGrants,
            grant(&nodes[0], 1, expiry),
            grant(&nodes[2], 1, expiry),
        ]
    );

    // A node registered through another host (written straight to the store here) reaches
    // this dataplane with the next grant sync.
    let stranger = Node::new("DE-BE");
    let mut record = server
        .state
        .store
        .find(node_id(&nodes[0]))
        .await
        .unwrap()
        .unwrap();
    record.node_id = node_id(&stranger);
    record.public_key = stranger.key.parse().unwrap();
    server.state.store.insert(&mut record).await.unwrap();
    server.state.sync_grants().await.unwrap();
    assert_eq!(server.take_commands(), vec![grant(&stranger, 1, expiry)]);
    server.state.sync_grants().await.unwrap();
    assert_eq!(
        server.take_commands(),
        vec![],
        "a second sync sends nothing"
    );
    server.stop().await;
}

/// The password `/api/v1/turn/ice` hands `token` now.
async fn ice_credential(server: &TestServer, token: &str) -> (String, String) {
    let (status, body) = server.get("/api/v1/turn/ice", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let turn = &body["iceServers"][1];
    (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    )
}

async fn a_reloaded_secrets_file_mints_with_and_is_pushed_to_the_dataplane(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turn-secrets");
    let options = Options {
        turn_secrets_file: Some(file.clone()),
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let node = Node::new("US-CA");
    let token = server.register(&node).await;
    server.take_commands();
    let (username, password) = ice_credential(&server, &token).await;
    assert_eq!(
        password,
        TurnSecret::new(TURN_SECRET).password_for(&username)
    );

    // Rotation: the new secret mints, the old one still verifies.
    std::fs::write(&file, format!("# rotated\nrotated\n{TURN_SECRET}\n")).unwrap();
    assert_eq!(
        server.state.reload_turn_secrets().unwrap(),
        Reload::Changed { secrets: 2 }
    );
    let pushed = Command::TurnSecrets(vec![b"rotated".to_vec(), TURN_SECRET.into()]);
    assert_eq!(server.take_commands(), vec![pushed.clone()]);
    let (username, password) = ice_credential(&server, &token).await;
    assert_eq!(password, TurnSecret::new("rotated").password_for(&username));
    assert_eq!(
        server.state.turn_secrets(),
        vec![TurnSecret::new("rotated"), TurnSecret::new(TURN_SECRET)]
    );

    // The same file again: nothing to send.
    assert_eq!(
        server.state.reload_turn_secrets().unwrap(),
        Reload::Unchanged
    );
    assert_eq!(server.take_commands(), vec![]);

    // A file that cannot be used changes nothing.
    for bad in ["# emptied by mistake\n".to_owned(), "x".repeat(2000)] {
        std::fs::write(&file, bad).unwrap();
        assert!(server.state.reload_turn_secrets().is_err());
        assert_eq!(server.take_commands(), vec![]);
        let (username, password) = ice_credential(&server, &token).await;
        assert_eq!(password, TurnSecret::new("rotated").password_for(&username));
    }
    std::fs::remove_file(&file).unwrap();
    assert!(server.state.reload_turn_secrets().is_err());

    // A restarted dataplane gets the secrets in use, not those of the configuration.
    server.state.handle_event(Event::NeedGrants).await;
    assert_eq!(server.take_commands()[0], pushed);
    server.stop().await;
}

async fn the_allocation_view_follows_the_dataplanes_events(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let relay = |port: u16| std::net::SocketAddr::from(([203, 0, 113, 1], port));
    let created = |core: u16, port: u16, user: &str| Event::AllocationCreated {
        core,
        user: user.to_owned(),
        relay: relay(port),
    };
    for event in [
        created(0, 50_000, "alice"),
        created(1, 50_001, "alice"),
        created(1, 50_002, "bob"),
        // Re-announced after a control plane restart: counted once.
        created(1, 50_002, "bob"),
        Event::AllocationExpired {
            core: 0,
            relay: relay(50_000),
        },
    ] {
        server.state.handle_event(event).await;
    }
    let view = server.state.allocations();
    assert_eq!(view.len(), 2);
    assert_eq!((view.of_user("alice"), view.of_user("bob")), (1, 1));
    let metrics = server.metrics().await;
    for line in [
        "bosonserver_turn_allocations{core=\"0\"} 0",
        "bosonserver_turn_allocations{core=\"1\"} 2",
        "bosonserver_turn_allocation_users 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // A new dataplane incarnation: the old one's allocations are gone.
    server.state.forget_allocations();
    assert!(server.state.allocations().is_empty());
    assert_eq!(
        server.sample("bosonserver_turn_allocation_users").await,
        0.0
    );
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "bosonserver_turn_allocations{core=\"1\"} 0"),
        "{metrics}"
    );
    server.stop().await;
}

async fn relay_presence_follows_the_dataplanes_events(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let node = node_id(&Node::new("US-CA"));
    let state = &server.state;
    let here = state.host_id();
    assert_eq!(state.relay_presence(node).await.unwrap(), None);
    for core in [0, 1] {
        state
            .handle_event(Event::NodeConnected {
                node,
                core,
                transport: Transport::Ws,
            })
            .await;
    }
    assert_eq!(
        state.relay_presence(node).await.unwrap().unwrap().host,
        here
    );
    state
        .handle_event(Event::NodeDisconnected { node, core: 0 })
        .await;
    assert_eq!(
        state.relay_presence(node).await.unwrap().unwrap().host,
        here,
        "one session left"
    );
    // Shared with the other hosts: in Redis with the host timeout as expiry, else in the store.
    if let Some(redis) = &state.config.redis {
        let client = redis::Client::open(redis.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{}relay:{node}", redis.prefix);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let timeout = i64::try_from(state.config.host.timeout.as_millis()).unwrap();
        assert!((1..=timeout).contains(&ttl), "{key} has PTTL {ttl}");
    } else {
        assert_eq!(state.store.presence(node, START).await.unwrap(), Some(here));
    }
    state
        .handle_event(Event::NodeDisconnected { node, core: 1 })
        .await;
    assert_eq!(state.relay_presence(node).await.unwrap(), None);
    assert_eq!(state.store.presence(node, START).await.unwrap(), None);
    server.stop().await;
}

async fn hosts_publish_their_record_and_load(backend: Backend) {
    let options = Options {
        relay_url: Some("wss://relay.example.test/relay".to_owned()),
        quic_addr: Some("relay.example.test:443".to_owned()),
        ..Options::default()
    };
    let Some(server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let token = server.register(&Node::new("US-CA")).await;
    assert_eq!(server.get("/api/v1/hosts", None).await.0, 401);
    server.state.set_host_load(HostLoad {
        allocations: 7,
        sessions: 3,
        bandwidth: 12.5,
    });
    server.state.heartbeat_host().await.unwrap();
    let (status, body) = server.get("/api/v1/hosts", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    let host = &body["hosts"][0];
    assert_eq!(host["hostId"], server.state.host_id().0.to_string());
    assert_eq!(
        host["addresses"],
        json!({
            "turnHost": "turn.example.test", "turnPort": 3478,
            "relayUrl": "wss://relay.example.test/relay", "quicAddr": "relay.example.test:443"
        })
    );
    assert_eq!(host["region"], "US-CA");
    assert_eq!(
        host["capacity"],
        json!({"maxConnections": 100, "bandwidth": 1000.0})
    );
    assert_eq!(
        host["load"],
        json!({"allocations": 7, "sessions": 3, "bandwidth": 12.5})
    );
    // The stored copy is what other hosts read.
    let stored = server.state.store.hosts(START).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].load.allocations, 7);
    server.stop().await;
}

/// Sends `n` routing requests to host `from` and counts the relay host of the selected route.
async fn relays(
    hosts: &[TestServer],
    request: &serde_json::Value,
    token: &str,
    from: usize,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = hosts[from]
            .post("/api/v1/routing/request", Some(token), request)
            .await;
        assert_eq!(status, 200, "{body}");
        let route = &body["selectedRoute"];
        assert_eq!(route["type"], "relay", "{body}");
        *counts
            .entry(route["relay"]["hostId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// Three hosts on one PostgreSQL and one Redis: they see each other, routing spreads relays
/// across them and avoids a full one, grants and presence cross between them, and a host that
/// stops heartbeating is out of new routes once the host timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_share_the_load_and_drop_a_silent_one() {
    let options = Options {
        host_heartbeat_interval: Duration::from_secs(5),
        ..Options::default()
    };
    let host_timeout = options.host_heartbeat_interval * 3;
    let Some(hosts) = TestServer::start_cluster(3, options).await else {
        return;
    };
    let ids: Vec<HostId> = hosts.iter().map(|h| h.state.host_id()).collect();
    for host in &hosts {
        host.state.heartbeat_host().await.unwrap();
    }
    for host in &hosts {
        let seen: Vec<HostId> = host
            .state
            .live_hosts()
            .await
            .unwrap()
            .iter()
            .map(|h| h.host_id)
            .collect();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(seen, want, "every host sees every host");
    }

    // A symmetric pair registered through host 1: relayed, never direct.
    let mut client = Node::new("US-CA");
    client.nat = "Symmetric";
    let mut target = Node::new("US-CA");
    target.nat = "Symmetric";
    let token = hosts[0].register(&client).await;
    hosts[0].register(&target).await;
    let (_, body) = hosts[1].get("/api/v1/hosts", Some(&token)).await;
    assert_eq!(body["count"], 3, "{body}");

    // The grants reach the other hosts' dataplanes with their next sync.
    hosts[1].state.sync_grants().await.unwrap();
    let synced: Vec<Command> = hosts[1].take_commands();
    assert!(
        synced
            .iter()
            .any(|c| matches!(c, Command::Grant(g) if g.node == node_id(&target))),
        "{synced:?}"
    );

    let request = json!({
        "clientId": client.id, "targetNodeId": target.id,
        "clientNetworkInfo": {"ipv4": "192.168.1.2", "natType": "Symmetric"}
    });
    let name = |i: usize| ids[i].0.to_string();

    // Equal hosts: the burst spreads over all three.
    let counts = relays(&hosts, &request, &token, 0, 60).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 10), "{counts:?}");

    // Host 2 full: it gets nothing, wherever the request lands.
    hosts[1].state.set_host_load(HostLoad {
        allocations: 60,
        sessions: 40,
        bandwidth: 0.0,
    });
    hosts[1].state.heartbeat_host().await.unwrap();
    for from in 0..3 {
        let counts = relays(&hosts, &request, &token, from, 20).await;
        assert!(
            !counts.contains_key(&name(1)),
            "from host {from}: {counts:?}"
        );
    }
    hosts[1].state.set_host_load(HostLoad::default());
    hosts[1].state.heartbeat_host().await.unwrap();

    // Presence crosses hosts: the target connects to host 2's relay.
    let target_id = node_id(&target);
    hosts[1]
        .state
        .handle_event(Event::NodeConnected {
            node: target_id,
            core: 0,
            transport: Transport::Quic,
        })
        .await;
    assert_eq!(
        hosts[0]
            .state
            .relay_presence(target_id)
            .await
            .unwrap()
            .unwrap()
            .host,
        ids[1]
    );
    hosts[0].take_commands();
    hosts[0].state.poll_presence().await.unwrap();
    assert_eq!(
        hosts[0].take_commands(),
        vec![Command::Presence {
            node: target_id,
            host: Some(ids[1])
        }]
    );
    hosts[1]
        .state
        .handle_event(Event::NodeDisconnected {
            node: target_id,
            core: 0,
        })
        .await;
    hosts[0].state.poll_presence().await.unwrap();
    assert_eq!(
        hosts[0].take_commands(),
        vec![Command::Presence {
            node: target_id,
            host: None
        }]
    );

    // Host 3 crashes: no clean leave, its records stay in Redis and PostgreSQL. Until the
    // host timeout has passed it is still a candidate...
    let mut hosts = hosts;
    let crashed = hosts.pop().unwrap();
    crashed.kill().await;
    hosts[0].clock.advance(host_timeout);
    for host in &hosts {
        host.state.heartbeat_host().await.unwrap();
    }
    assert_eq!(hosts[0].state.live_hosts().await.unwrap().len(), 3);
    // ...and one millisecond later it is out of every new route and ICE answer.
    hosts[0].clock.advance(Duration::from_millis(1));
    for host in &hosts {
        host.state.heartbeat_host().await.unwrap();
    }
    for from in 0..2 {
        let counts = relays(&hosts, &request, &token, from, 30).await;
        assert!(
            !counts.contains_key(&name(2)),
            "from host {from}: {counts:?}"
        );
        assert_eq!(counts.len(), 2, "the survivors share: {counts:?}");
        let (_, body) = hosts[from].get("/api/v1/hosts", Some(&token)).await;
        assert_eq!(body["count"], 2, "{body}");
        let (_, body) = hosts[from].get("/api/v1/turn/ice", Some(&token)).await;
        let text = body.to_string();
        assert!(!text.contains("h3.example.test"), "{text}");
        assert!(
            body["iceServers"][1]["urls"].as_array().unwrap().len() == 2,
            "{body}"
        );
    }
    for host in hosts {
        host.stop().await;
    }
}

/// Two hosts on one PostgreSQL: a node registered through one is in the other's routing index
/// after its next sync (the background task does it every second; the test calls it), and
/// leaves it the same way when it goes offline through the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_index_follows_the_other_hosts_through_the_store() {
    let Some(hosts) = TestServer::start_cluster(2, Options::default()).await else {
        return;
    };
    let client = Node::new("US-CA");
    let client_token = hosts[1].register(&client).await;
    let target = Node::new("DE-BE");
    let target_token = hosts[0].register(&target).await;
    let target_id = target.id.to_string();
    assert_eq!(hosts[0].routed(&client, &client_token).await[0], target_id);

    hosts[1].state.sync_route_index().await.unwrap();
    let seen = hosts[1].routed(&client, &client_token).await;
    assert!(seen.contains(&target_id), "{seen:?}");

    let (status, body) = hosts[0]
        .post(
            &format!("/api/v1/nodes/{}/heartbeat", target.id),
            Some(&target_token),
            &json!({"metrics": {"latency": 10, "cpuUsage": 1, "activeConnections": 0},
                    "status": "offline"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(hosts[0].routed(&client, &client_token).await.is_empty());
    hosts[1].state.sync_route_index().await.unwrap();
    let seen = hosts[1].routed(&client, &client_token).await;
    assert!(!seen.contains(&target_id), "{seen:?}");
    for host in hosts {
        host.stop().await;
    }
}
