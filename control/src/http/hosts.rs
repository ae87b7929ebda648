//! `GET /api/v1/hosts`: the live relay hosts.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::extract::NodeAuth;
use crate::AppState;
use crate::domain::hosts::HostRecord;
use crate::http::error::ApiError;

#[derive(Serialize)]
pub(super) struct HostList {
    hosts: Vec<HostRecord>,
    count: usize,
}

/// The live relay hosts, this one included.
pub(super) async fn list_hosts(
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
