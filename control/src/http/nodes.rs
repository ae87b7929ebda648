//! `/api/v1/nodes`: registration, heartbeats, listing, lookup and deregistration. The
//! registration decision is [`registry::decide`]; this module does the I/O around it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use boson_shared::NodeId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::MAX_PAGE;
use super::extract::{ApiJson, ApiQuery, MaybeNodeAuth, NodeAuth, NodePath, token_error};
use crate::AppState;
use crate::domain::auth::TokenError;
use crate::domain::key_proof::{self, MAX_OUTSTANDING, NONCE_TTL};
use crate::domain::model::{
    FieldError, HeartbeatRequest, MAX_REGION_LEN, NodeRecord, NodeStatus, NodeView,
    RegisterRequest, ReportedStatus, ValidRegistration, check_country, check_text,
};
use crate::domain::registry::{self, Decision};
use crate::http::error::ApiError;
use crate::io::cache::RateDecision;
use crate::io::store::{Heartbeat, HeartbeatOutcome, NodeFilter, WriteOutcome};

/// Window of the per-IP registration limit.
const REGISTER_WINDOW: Duration = Duration::from_secs(60);

/// The longest a registration waits for the dataplane to take the node's grant (microseconds
/// in one process, one poll of the segment between two).
const GRANT_WAIT: Duration = Duration::from_millis(250);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterResponse {
    node_id: NodeId,
    status: &'static str,
    node: NodeView,
    session_token: String,
    token_type: &'static str,
    expires_at: i64,
    heartbeat_interval: u64,
    stun_servers: Vec<HostPort>,
    relay_servers: Vec<HostPort>,
}

#[derive(Serialize)]
pub(super) struct HostPort {
    host: String,
    port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ChallengeResponse {
    nonce: String,
    server_public_key: String,
    expires_at: i64,
    expires_in: u64,
}

/// Counts one request of `bucket` from `peer` against the registration limit.
async fn rate_limit(
    state: &AppState,
    bucket: &str,
    peer: SocketAddr,
    now: crate::clock::UnixMillis,
) -> Result<(), ApiError> {
    let limit = state.config.register_rate_limit;
    let decision = state
        .cache
        .hit(bucket, &peer.ip().to_string(), limit, REGISTER_WINDOW, now)
        .await
        .map_err(|e| ApiError::unavailable("the rate limiter", e.into()))?;
    if let RateDecision::Deny { retry_after_secs } = decision {
        return Err(ApiError::rate_limited(retry_after_secs));
    }
    Ok(())
}

/// `POST /api/v1/nodes/challenge`: a fresh single-use nonce for the key proof of one
/// registration, and the server's public key to prove against. Remembered in Redis, or in
/// the SQL store without it, so that any host of the deployment takes the answer.
pub(super) async fn challenge(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let now = state.clock.now();
    rate_limit(&state, "challenge", peer, now).await?;
    let nonce = key_proof::new_nonce(&mut rand::rng());
    let expires_at = now.saturating_add(NONCE_TTL);
    // Expired challenges are remembered one more lifetime, so a late answer hears "expired".
    let forget_before = now.saturating_sub(NONCE_TTL);
    let issued = match state
        .cache
        .issue_nonce(&nonce, expires_at, forget_before, MAX_OUTSTANDING)
        .await
        .map_err(|e| ApiError::unavailable("Redis", e.into()))?
    {
        Some(issued) => issued,
        None => {
            state
                .store
                .issue_nonce(&nonce, expires_at, forget_before, MAX_OUTSTANDING)
                .await?
        }
    };
    if !issued {
        return Err(ApiError::too_many_challenges(NONCE_TTL.as_secs()));
    }
    Ok(Json(ChallengeResponse {
        nonce,
        server_public_key: state.key_proof.public().to_base64(),
        expires_at: expires_at.0,
        expires_in: NONCE_TTL.as_secs(),
    }))
}

/// Checks the registration's key proof: its time, its nonce (taken out of the shared state
/// first, so it answers once whatever the outcome), then the MAC.
async fn check_key_proof(
    state: &AppState,
    valid: &ValidRegistration,
    now: crate::clock::UnixMillis,
) -> Result<(), ApiError> {
    let proof = &valid.key_proof;
    key_proof::check_time(proof.time, now)?;
    let expiry = match state
        .cache
        .take_nonce(&proof.nonce)
        .await
        .map_err(|e| ApiError::unavailable("Redis", e.into()))?
    {
        Some(expiry) => expiry,
        None => state.store.take_nonce(&proof.nonce).await?,
    };
    key_proof::check_nonce(expiry, now)?;
    key_proof::verify(&state.key_proof, &valid.public_key, valid.node_id, proof)?;
    Ok(())
}

pub(super) async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    MaybeNodeAuth(token): MaybeNodeAuth,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let now = state.clock.now();
    rate_limit(&state, "register", peer, now).await?;

    let valid = request.validate(peer.ip())?;
    check_key_proof(&state, &valid, now).await?;
    let existing = state.store.find(valid.node_id).await?;
    let node_timeout = state.config.nodes.timeout;
    let (generation, registered_at) =
        match registry::decide(existing.as_ref(), &valid, token, now, node_timeout) {
            Decision::Refuse(refusal) => return Err(refusal.into()),
            // The store numbers a new row after the id's deleted registrations (see
            // `Store::insert`); this 1 is replaced by what it stores.
            Decision::Create => (1, now),
            Decision::Replace => existing
                .as_ref()
                .map(|old| (old.generation + 1, old.registered_at))
                .ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("replace without a stored node"))
                })?,
        };
    let mut record = NodeRecord {
        node_id: valid.node_id,
        public_key: valid.public_key,
        generation,
        registration: valid.registration,
        status: NodeStatus::Active,
        reported_status: None,
        metrics: valid.metrics,
        registered_at,
        last_seen: now,
        token_expires_at: state.tokens.expiry(now),
    };
    let outcome = if existing.is_some() {
        state.store.replace(&record).await?
    } else {
        state.store.insert(&mut record).await?
    };
    match outcome {
        WriteOutcome::Written => {
            state.forget_heartbeat(record.node_id);
            state.index_node(&record);
            if let Err(error) = state.notify_changed().await {
                tracing::debug!("change notification not sent: {error}");
            }
        }
        WriteOutcome::KeyInUse => {
            return Err(ApiError::conflict(
                "public_key_in_use",
                "another node is registered with this public key",
            ));
        }
        WriteOutcome::Raced => {
            return Err(ApiError::conflict(
                "registration_conflict",
                "this node was registered concurrently; retry",
            ));
        }
    }
    // Signed once the generation is stored: a new row's is the store's choice.
    let issued = state
        .tokens
        .issue(record.node_id, record.generation, now)
        .map_err(ApiError::internal)?;
    if let Some(metrics) = &record.metrics {
        state.metrics.observe_node_latency(metrics.latency);
    }
    publish_presence(&state, &record).await;
    state.grant(record.node_id, record.generation, now, issued.expires_at);
    // The token is good on the relay when the answer arrives (see `await_dataplane`).
    state.await_dataplane(GRANT_WAIT).await;

    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let turn = &state.config.turn;
    Ok((
        status,
        Json(RegisterResponse {
            node_id: record.node_id,
            status: "registered",
            node: record.view(),
            session_token: issued.token,
            token_type: "Bearer",
            expires_at: issued.expires_at.0,
            heartbeat_interval: state.config.nodes.heartbeat_interval.as_secs().max(1),
            stun_servers: vec![HostPort {
                host: turn.public_host.clone(),
                port: turn.port,
            }],
            // Relay hosts change while a node runs: it reads them from `GET /api/v1/hosts`
            // (and its routes from `POST /api/v1/routing/request`), not from this snapshot.
            relay_servers: Vec::new(),
        }),
    ))
}

/// Tells other hosts (through Redis) that the node is alive here. A failure is logged, not
/// returned: presence is advisory and the database already holds the truth.
async fn publish_presence(state: &AppState, node: &NodeRecord) {
    let result = if node.status == NodeStatus::Active {
        let value =
            json!({ "lastSeen": node.last_seen.0, "generation": node.generation }).to_string();
        state
            .cache
            .set_presence(node.node_id, &value, state.config.nodes.timeout)
            .await
    } else {
        state.cache.clear_presence(node.node_id).await
    };
    if let Err(error) = result {
        tracing::warn!(node = %node.node_id, "presence not published: {error}");
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HeartbeatResponse {
    status: &'static str,
    next_heartbeat: u64,
    actions: Vec<serde_json::Value>,
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    NodeAuth(token): NodeAuth,
    NodePath(node_id): NodePath,
    body: Result<ApiJson<HeartbeatRequest>, ApiError>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if token.node_id != node_id {
        return Err(ApiError::forbidden(
            "a node may only send its own heartbeat",
        ));
    }
    let ApiJson(request) = body?;
    let (metrics, reported_status) = request.validate()?;
    let now = state.clock.now();
    let status = if reported_status == Some(ReportedStatus::Offline) {
        NodeStatus::Inactive
    } else {
        NodeStatus::Active
    };
    let latency = metrics.latency;
    let beat = Heartbeat {
        metrics,
        reported_status,
        status,
        at: now,
    };
    // The fast path: a live node of this generation, as the routing index knows it, has its
    // heartbeat held for the next batch write (see `domain::heartbeats`), with no database
    // round trip. Anything else (an `offline` heartbeat, a node the index does not hold, a
    // token the index says is revoked) is written at once, as before.
    let indexed = if status == NodeStatus::Active && state.writes_behind() {
        state.with_route_index(|index| {
            index
                .get(node_id)
                .filter(|record| record.generation == token.generation)
                .map(|record| NodeRecord::clone(record))
        })
    } else {
        None
    };
    let node = if let Some(mut record) = indexed {
        record.metrics = Some(beat.metrics.clone());
        record.reported_status = beat.reported_status;
        record.status = beat.status;
        record.last_seen = beat.at;
        state.buffer_heartbeat(node_id, token.generation, beat);
        Some(record)
    } else {
        state.forget_heartbeat(node_id);
        match state
            .store
            .heartbeat(node_id, token.generation, &beat)
            .await?
        {
            // The database answers (again): the next heartbeats may be written behind.
            HeartbeatOutcome::Recorded => state.set_store_reachable(true),
            HeartbeatOutcome::NotFound => {
                return Err(ApiError::not_found(
                    "node_not_found",
                    "no such node; register again",
                ));
            }
            HeartbeatOutcome::Revoked => return Err(token_error(TokenError::Revoked)),
        }
        let node = state.store.find(node_id).await?;
        if let Err(error) = state.notify_changed().await {
            tracing::debug!("change notification not sent: {error}");
        }
        node
    };
    match status {
        NodeStatus::Active => state.grant(node_id, token.generation, now, token.expires_at),
        NodeStatus::Inactive => state.revoke(node_id, Some(token.generation)),
    }
    state.metrics.observe_node_latency(latency);
    if let Some(node) = node {
        state.index_node(&node);
        publish_presence(&state, &node).await;
    }
    Ok(Json(HeartbeatResponse {
        status: "ok",
        next_heartbeat: state.config.nodes.heartbeat_interval.as_secs().max(1),
        actions: Vec::new(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    region: Option<String>,
    country: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodeList {
    nodes: Vec<NodeView>,
    count: usize,
    limit: i64,
    offset: i64,
    /// Where the next page starts; `None` on the last page. A page holds at most
    /// [`MAX_PAGE`] nodes, so a reader that wants them all must follow it.
    next_offset: Option<i64>,
}

pub(super) async fn list_nodes(
    State(state): State<AppState>,
    NodeAuth(_): NodeAuth,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<NodeList>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| {
            NodeStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "status must be \"active\" or \"inactive\"")
                    .with_field("status")
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    let offset = query.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        )
        .with_field("limit"));
    }
    if offset < 0 {
        return Err(
            ApiError::bad_request("invalid_query", "offset must be at least 0")
                .with_field("offset"),
        );
    }
    // The same rules as the registered values they filter on; 400 like every query error.
    let query_field = |result: Result<(), FieldError>| {
        result.map_err(|e| {
            ApiError::bad_request("invalid_query", format!("{}: {}", e.field, e.message))
                .with_field(e.field)
        })
    };
    if let Some(region) = &query.region {
        query_field(check_text(
            region,
            MAX_REGION_LEN,
            "invalid_query",
            "region",
        ))?;
    }
    if let Some(country) = &query.country {
        query_field(check_country(country, "invalid_query", "country"))?;
    }
    let filter = NodeFilter {
        region: query.region,
        country: query.country.map(|c| c.to_ascii_uppercase()),
        status,
        // One more than asked, to tell whether another page follows.
        limit: limit + 1,
        offset,
    };
    let mut records = state.store.list(&filter).await?;
    let more = records.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let nodes: Vec<NodeView> = records
        .into_iter()
        .map(|record| state.with_pending_heartbeat(record).view())
        .collect();
    Ok(Json(NodeList {
        count: nodes.len(),
        next_offset: more.then(|| offset.saturating_add(limit)),
        nodes,
        limit,
        offset,
    }))
}

pub(super) async fn get_node(
    State(state): State<AppState>,
    NodeAuth(_): NodeAuth,
    NodePath(node_id): NodePath,
) -> Result<Json<NodeView>, ApiError> {
    match state.store.find(node_id).await? {
        Some(node) => Ok(Json(state.with_pending_heartbeat(node).view())),
        None => Err(ApiError::not_found(
            "node_not_found",
            format!("no node {node_id}"),
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Deleted {
    node_id: NodeId,
    status: &'static str,
}

/// A node deregisters itself: its row, its tokens and its relay grant go.
pub(super) async fn delete_node(
    State(state): State<AppState>,
    NodeAuth(token): NodeAuth,
    NodePath(node_id): NodePath,
) -> Result<Json<Deleted>, ApiError> {
    if token.node_id != node_id {
        return Err(ApiError::forbidden("a node may only delete itself"));
    }
    state.forget_heartbeat(node_id);
    if !state
        .store
        .delete(node_id, token.generation, state.clock.now())
        .await?
    {
        // Re-registered (or deleted) since the token was checked.
        return Err(token_error(TokenError::Revoked));
    }
    state.revoke(node_id, None);
    state.unindex_node(node_id);
    if let Err(error) = state.notify_changed().await {
        tracing::debug!("change notification not sent: {error}");
    }
    if let Err(error) = state.cache.clear_presence(node_id).await {
        tracing::warn!(node = %node_id, "presence not withdrawn: {error}");
    }
    Ok(Json(Deleted {
        node_id,
        status: "deleted",
    }))
}
