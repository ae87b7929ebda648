//! `/health`, `/health/live`, `/health/ready` and `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::http::error::ApiError;

/// How long readiness checks may take before a dependency counts as down.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub(super) async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    state.set_store_reachable(database.is_ok());
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

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The gauges count from the store: write what this host holds first (one batch per
    // scrape at most), so they include the heartbeats written behind.
    if let Err(error) = state.flush_heartbeats().await {
        tracing::warn!("metrics: heartbeats not written: {error}");
    }
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
