//! The REST API: the route table, the router and its layers. One module per resource holds
//! its handlers; handlers do the I/O and call the pure decisions
//! ([`crate::domain::registry`], [`crate::domain::routing`]). [`error`] holds the one error type and
//! [`server`] the HTTP/1 accept loop under the router.

pub(crate) mod error;
mod extract;
mod health;
mod hosts;
mod ice;
mod nodes;
mod routing;
pub(crate) mod server;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

use self::health::{health, live, metrics, ready};
use self::hosts::list_hosts;
use self::ice::ice_servers;
use self::nodes::{challenge, delete_node, get_node, heartbeat, list_nodes, register};
use self::routing::request_route;
use crate::AppState;
use crate::http::error::ApiError;

/// Largest page of `GET /api/v1/nodes`.
pub(super) const MAX_PAGE: i64 = 1000;

/// Every route of the API: method, path template (axum's `{param}` syntax) and handler. The
/// router is built from this table and [`api_routes`] lists it, so the OpenAPI test compares
/// the document with what is really served.
fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/api/v1/nodes/challenge", post(challenge)),
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

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
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
