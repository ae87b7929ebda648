//! The REST API: routes, extractors and handlers. Handlers do I/O and call the pure decision
//! functions in [`crate::registry`] and [`crate::routing`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use boson_shared::{NodeId, TurnCredential};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::auth::{NodeToken, TokenError};
use crate::cache::RateDecision;
use crate::error::ApiError;
use crate::hosts::HostRecord;
use crate::model::{
    FieldError, HeartbeatRequest, MAX_REGION_LEN, NodeStatus, NodeView, RegisterRequest,
    ReportedStatus, check_country, check_text,
};
use crate::registry::{self, Decision};
use crate::routing::{self, Place, RankInput, Route, RoutingRequest};
use crate::store::{Heartbeat, HeartbeatOutcome, NodeFilter, NodeRecord, WriteOutcome};

/// Window of the per-IP registration limit.
const REGISTER_WINDOW: Duration = Duration::from_secs(60);
/// How long readiness checks may take before a dependency counts as down.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest page of `GET /api/v1/nodes`.
const MAX_PAGE: i64 = 1000;

/// The longest a registration waits for the dataplane to take the node's grant (microseconds
/// in one process, one poll of the segment between two).
const GRANT_WAIT: Duration = Duration::from_millis(250);

/// Every route of the API: method, path template (axum's `{param}` syntax) and handler. The
/// router is built from this table and [`api_routes`] lists it, so the OpenAPI test compares
/// the document with what is really served.
fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/api/v1/nodes/register", post(register)),
        (Method::GET, "/api/v1/nodes", get(list_nodes)),
        (Method::GET, "/api/v1/nodes/{node_id}", get(get_node)),
        (
            Method::DELETE,
            "/api/v1/nodes/{node_id}",
            delete(delete_node),
        ),
        (
            Method::POST,
            "/api/v1/nodes/{node_id}/heartbeat",
            post(heartbeat),
        ),
        (Method::POST, "/api/v1/routing/request", post(request_route)),
        (Method::GET, "/api/v1/turn/ice", get(ice_servers)),
        (Method::GET, "/api/v1/hosts", get(list_hosts)),
        (Method::GET, "/api/v1/openapi.json", get(openapi)),
        (Method::GET, "/health", get(health)),
        (Method::GET, "/health/live", get(live)),
        (Method::GET, "/health/ready", get(ready)),
        (Method::GET, "/metrics", get(metrics)),
    ]
}

/// The method and path template of every route the API serves, in axum's `{param}` syntax.
pub fn api_routes() -> Vec<(Method, &'static str)> {
    routes()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// Every route of the API.
pub(crate) fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        // Routes of one path merge into one method router.
        router = router.route(path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---- extractors ----

/// A JSON body whose every rejection is an [`ApiError`], and which must arrive within the
/// body read timeout (408 otherwise).
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let timeout = state.config.http.body_read_timeout;
        match tokio::time::timeout(timeout, Json::<T>::from_request(req, state)).await {
            Ok(Ok(Json(value))) => Ok(Self(value)),
            Ok(Err(rejection)) => Err(rejection.into()),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }
}

/// A query string whose every rejection is an [`ApiError`]. Unlike axum's `Query`, which
/// decodes invalid UTF-8 lossily into U+FFFD (so `?region=%FF` silently filtered on a
/// replacement character), it refuses a query that is not UTF-8 once percent-decoded.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if !percent_decodes_to_utf8(parts.uri.query().unwrap_or("")) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "the query string is not UTF-8 once percent-decoded",
            ));
        }
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Whether `raw` percent-decodes to UTF-8 as `application/x-www-form-urlencoded` does it
/// (a `%` without two hex digits after it stands for itself).
fn percent_decodes_to_utf8(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(0));
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// The `{node_id}` of a path; 400 `invalid_node_id` if it is not a UUID (or not even UTF-8).
pub(crate) struct NodePath(pub(crate) NodeId);

impl<S: Send + Sync> FromRequestParts<S> for NodePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request("invalid_node_id", rejection.body_text()))?;
        parse_node_id(&text).map(Self)
    }
}

/// The caller's node token; 401 without a valid one.
pub(crate) struct NodeAuth(pub(crate) NodeToken);

/// The caller's node token if an `Authorization` header is present (401 if it is invalid).
pub(crate) struct MaybeNodeAuth(pub(crate) Option<NodeToken>);

fn token_error(error: TokenError) -> ApiError {
    ApiError::unauthorized(error.code(), error.to_string())
}

impl FromRequestParts<AppState> for MaybeNodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Self(None));
        };
        let value = value
            .to_str()
            .map_err(|_| token_error(TokenError::NotBearer))?;
        let token = state
            .tokens
            .verify_header(value, state.clock.now())
            .map_err(token_error)?;
        Ok(Self(Some(token)))
    }
}

/// A valid token is also a current one: its generation must still be the node's (every
/// re-registration revokes older tokens, and a deleted node's tokens die with it).
impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match MaybeNodeAuth::from_request_parts(parts, state).await? {
            MaybeNodeAuth(Some(token)) => token,
            MaybeNodeAuth(None) => return Err(token_error(TokenError::Missing)),
        };
        match state.store.generation(token.node_id).await? {
            Some(generation) if generation == token.generation => Ok(Self(token)),
            Some(_) | None => Err(token_error(TokenError::Revoked)),
        }
    }
}

fn parse_node_id(text: &str) -> Result<NodeId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("invalid_node_id", format!("{text:?} is not a UUID")))
}

// ---- nodes ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterResponse {
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
struct HostPort {
    host: String,
    port: u16,
}

async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    MaybeNodeAuth(token): MaybeNodeAuth,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let now = state.clock.now();
    let limit = state.config.register_rate_limit;
    let decision = state
        .cache
        .hit(
            "register",
            &peer.ip().to_string(),
            limit,
            REGISTER_WINDOW,
            now,
        )
        .await
        .map_err(|e| ApiError::unavailable("the rate limiter", e.into()))?;
    if let RateDecision::Deny { retry_after_secs } = decision {
        return Err(ApiError::rate_limited(retry_after_secs));
    }

    let valid = request.validate(peer.ip())?;
    let existing = state.store.find(valid.node_id).await?;
    let node_timeout = state.config.nodes.timeout;
    let (generation, registered_at) =
        match registry::decide(existing.as_ref(), &valid, token, now, node_timeout) {
            Decision::Refuse(refusal) => return Err(refusal.into()),
            Decision::Create => (1, now),
            Decision::Replace => existing
                .as_ref()
                .map(|old| (old.generation + 1, old.registered_at))
                .ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("replace without a stored node"))
                })?,
        };
    let issued = state
        .tokens
        .issue(valid.node_id, generation, now)
        .map_err(ApiError::internal)?;
    let record = NodeRecord {
        node_id: valid.node_id,
        public_key: valid.public_key,
        generation,
        registration: valid.registration,
        status: NodeStatus::Active,
        reported_status: None,
        metrics: valid.metrics,
        registered_at,
        last_seen: now,
        token_expires_at: issued.expires_at,
    };
    let outcome = if existing.is_some() {
        state.store.replace(&record).await?
    } else {
        state.store.insert(&record).await?
    };
    match outcome {
        WriteOutcome::Written => {}
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
            // The WebSocket relay is not served yet; the list fills when it is.
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
struct HeartbeatResponse {
    status: &'static str,
    next_heartbeat: u64,
    actions: Vec<serde_json::Value>,
}

async fn heartbeat(
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
    match state
        .store
        .heartbeat(node_id, token.generation, &beat)
        .await?
    {
        HeartbeatOutcome::Recorded => {}
        HeartbeatOutcome::NotFound => {
            return Err(ApiError::not_found(
                "node_not_found",
                "no such node; register again",
            ));
        }
        HeartbeatOutcome::Revoked => return Err(token_error(TokenError::Revoked)),
    }
    match status {
        NodeStatus::Active => state.grant(node_id, token.generation, now, token.expires_at),
        NodeStatus::Inactive => state.revoke(node_id, Some(token.generation)),
    }
    state.metrics.observe_node_latency(latency);
    if let Some(node) = state.store.find(node_id).await? {
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
struct ListQuery {
    region: Option<String>,
    country: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct NodeList {
    nodes: Vec<NodeView>,
    count: usize,
    limit: i64,
    offset: i64,
}

async fn list_nodes(
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
        limit,
        offset,
    };
    let nodes: Vec<NodeView> = state
        .store
        .list(&filter)
        .await?
        .iter()
        .map(NodeRecord::view)
        .collect();
    Ok(Json(NodeList {
        count: nodes.len(),
        nodes,
        limit,
        offset,
    }))
}

async fn get_node(
    State(state): State<AppState>,
    NodeAuth(_): NodeAuth,
    NodePath(node_id): NodePath,
) -> Result<Json<NodeView>, ApiError> {
    match state.store.find(node_id).await? {
        Some(node) => Ok(Json(node.view())),
        None => Err(ApiError::not_found(
            "node_not_found",
            format!("no node {node_id}"),
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Deleted {
    node_id: NodeId,
    status: &'static str,
}

/// A node deregisters itself: its row, its tokens and its relay grant go.
async fn delete_node(
    State(state): State<AppState>,
    NodeAuth(token): NodeAuth,
    NodePath(node_id): NodePath,
) -> Result<Json<Deleted>, ApiError> {
    if token.node_id != node_id {
        return Err(ApiError::forbidden("a node may only delete itself"));
    }
    if !state.store.delete(node_id, token.generation).await? {
        // Re-registered (or deleted) since the token was checked.
        return Err(token_error(TokenError::Revoked));
    }
    state.revoke(node_id, None);
    if let Err(error) = state.cache.clear_presence(node_id).await {
        tracing::warn!(node = %node_id, "presence not withdrawn: {error}");
    }
    Ok(Json(Deleted {
        node_id,
        status: "deleted",
    }))
}

// ---- routing ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoutingResponse {
    routes: Vec<Route>,
    selected_route: Option<Route>,
}

async fn request_route(
    State(state): State<AppState>,
    NodeAuth(token): NodeAuth,
    ApiJson(request): ApiJson<RoutingRequest>,
) -> Result<Json<RoutingResponse>, ApiError> {
    request.validate()?;
    if request.client_id != token.node_id {
        return Err(ApiError::forbidden(
            "clientId must be the node the token belongs to",
        ));
    }
    let now = state.clock.now();
    let timeout = state.config.nodes.timeout;
    let candidates: Vec<NodeRecord> = match request.target_node_id {
        Some(target) => {
            let node = state.store.find(target).await?.ok_or_else(|| {
                ApiError::not_found("node_not_found", format!("no node {target}"))
            })?;
            if !registry::is_live(&node, now, timeout) {
                return Err(ApiError::conflict(
                    "node_inactive",
                    format!("node {target} is inactive"),
                ));
            }
            vec![node]
        }
        None => {
            let filter = NodeFilter {
                status: Some(NodeStatus::Active),
                limit: MAX_PAGE,
                ..NodeFilter::default()
            };
            let mut nodes = state.store.list(&filter).await?;
            nodes.retain(|node| registry::is_live(node, now, timeout));
            nodes
        }
    };
    let client = state.store.find(token.node_id).await?;
    let hosts = relay_hosts(&state).await;
    let mut presence = BTreeMap::new();
    if let Some(target) = request.target_node_id {
        match state.relay_presence(target).await {
            Ok(Some(at)) => {
                presence.insert(target, at.host);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(node = %target, "relay presence unknown: {error}"),
        }
    }
    let input = RankInput {
        request: &request,
        client: client.as_ref(),
        candidates: &candidates,
        hosts: &hosts,
        presence: &presence,
    };
    let routes = state.with_rng(|rng| routing::rank(&input, rng));
    Ok(Json(RoutingResponse {
        selected_route: routes.first().cloned(),
        routes,
    }))
}

// ---- ICE ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IceServer {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_type: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IceResponse {
    ice_servers: Vec<IceServer>,
    ttl: u64,
    expires_at: i64,
}

/// The live relay hosts; this host alone when the registry cannot be read (it is alive: it
/// is answering), so routing degrades instead of failing.
async fn relay_hosts(state: &AppState) -> Vec<HostRecord> {
    match state.live_hosts().await {
        Ok(hosts) => hosts,
        Err(error) => {
            tracing::warn!("relay host registry unreadable, routing through this host: {error}");
            vec![state.own_record(state.clock.now())]
        }
    }
}

/// ICE servers on the relay host chosen for the caller (two choices on distance and load) and
/// a fallback host. Every host verifies the credentials: they share the TURN secrets. Minted
/// with the newest secret in use, which a reload of `--turn-secrets-file` may change.
async fn ice_servers(
    State(state): State<AppState>,
    NodeAuth(token): NodeAuth,
) -> Result<Json<IceResponse>, ApiError> {
    let turn = &state.config.turn;
    let now = state.clock.now();
    let expires_at = now.saturating_add(turn.credential_ttl);
    let expiry_secs = u64::try_from(expires_at.as_secs()).unwrap_or(0);
    let credential = TurnCredential::mint(
        &state.minting_secret(),
        &token.node_id.to_string(),
        expiry_secs,
    );
    let client = state.store.find(token.node_id).await?;
    let hosts = relay_hosts(&state).await;
    let caller = client.as_ref().map(Place::of_node);
    let chosen: Vec<HostRecord> = state.with_rng(|rng| {
        routing::choose_ice_hosts(caller.as_ref(), &hosts, rng)
            .into_iter()
            .cloned()
            .collect()
    });
    let with_credential = |urls: Vec<String>| IceServer {
        urls,
        username: Some(credential.username.clone()),
        credential: Some(credential.password.clone()),
        credential_type: Some("password"),
    };
    let mut servers = vec![
        IceServer {
            urls: chosen.iter().map(|h| h.addresses.stun_url()).collect(),
            username: None,
            credential: None,
            credential_type: None,
        },
        with_credential(chosen.iter().map(|h| h.addresses.turn_url()).collect()),
    ];
    // Extra TURN servers are assumed to share our secret (coturn's use-auth-secret).
    let (stun, relay): (Vec<String>, Vec<String>) = turn
        .extra_urls
        .iter()
        .cloned()
        .partition(|url| url.starts_with("stun:"));
    if !stun.is_empty() {
        servers.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
            credential_type: None,
        });
    }
    if !relay.is_empty() {
        servers.push(with_credential(relay));
    }
    Ok(Json(IceResponse {
        ice_servers: servers,
        ttl: turn.credential_ttl.as_secs(),
        expires_at: i64::try_from(expiry_secs).unwrap_or(i64::MAX) * 1000,
    }))
}

// ---- relay hosts and the API document ----

#[derive(Serialize)]
struct HostList {
    hosts: Vec<HostRecord>,
    count: usize,
}

/// The live relay hosts, this one included.
async fn list_hosts(
    State(state): State<AppState>,
    NodeAuth(_): NodeAuth,
) -> Result<Json<HostList>, ApiError> {
    let hosts = state
        .live_hosts()
        .await
        .map_err(|e| ApiError::unavailable("the relay host registry", e.into()))?;
    Ok(Json(HostList {
        count: hosts.len(),
        hosts,
    }))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

// ---- health and metrics ----

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let redis = if state.cache.is_redis() {
        Some(
            match tokio::time::timeout(READY_TIMEOUT, state.cache.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("timed out".to_owned()),
            },
        )
    } else {
        None
    };
    let describe = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!("failed: {error}"),
    };
    let mut failed = Vec::new();
    if database.is_err() {
        failed.push("database");
    }
    if matches!(redis, Some(Err(_))) {
        failed.push("redis");
    }
    let checks = json!({
        "database": describe(&database),
        "redis": redis.as_ref().map_or_else(|| "not_configured".to_owned(), describe),
    });
    // A draining host is not ready whatever its dependencies say: load balancers should move
    // new clients elsewhere while it finishes with the ones it has.
    let draining = state.is_draining();
    if failed.is_empty() && !draining {
        return Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    for what in &failed {
        tracing::warn!("not ready: {what} check failed");
    }
    let error = if draining {
        json!({ "code": "draining", "message": "this host is shutting down" })
    } else {
        json!({ "code": "not_ready", "message": format!("unavailable: {}", failed.join(", ")) })
    };
    let body = json!({ "status": "not_ready", "checks": checks, "error": error });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let activity = match state.store.activity().await {
        Ok(activity) => Some(activity),
        Err(error) => {
            tracing::warn!("metrics: node gauges are stale: {error}");
            None
        }
    };
    state.metrics.set_activity(activity);
    let mut text = state
        .metrics
        .render()
        .map_err(|e| ApiError::internal(e.into()))?;
    if let Some(extra) = state.extra_metrics() {
        text.push_str(&extra);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .record_request(&route, &method, response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_must_percent_decode_to_utf8() {
        for (raw, ok) in [
            ("", true),
            ("region=US-CA&limit=2", true),
            ("region=%C3%A9", true),
            ("region=%e2%82%ac", true),
            ("region=100%", true),
            ("region=%zz", true),
            ("region=%FF", false),
            ("region=%C0%AF", false),
            ("region=%ED%A0%80", false),
            ("region=%E2%82", false),
        ] {
            assert_eq!(percent_decodes_to_utf8(raw), ok, "{raw}");
        }
    }
}
