//! `POST /api/v1/routing/request`: reads the candidates, the client and the relay hosts, and
//! ranks them with the pure [`routing::rank`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::MAX_PAGE;
use super::extract::{ApiJson, NodeAuth};
use super::ice::relay_hosts;
use crate::AppState;
use crate::domain::model::{NodeRecord, NodeStatus};
use crate::domain::registry;
use crate::domain::routing::{self, RankInput, Route, RoutingRequest};
use crate::http::error::ApiError;
use crate::io::store::NodeFilter;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RoutingResponse {
    routes: Vec<Route>,
    selected_route: Option<Route>,
}

pub(super) async fn request_route(
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
