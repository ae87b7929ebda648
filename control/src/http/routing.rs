//! `POST /api/v1/routing/request`: reads the client, the relay hosts and a target from the
//! store, and ranks the target with the pure [`routing::rank`], or every live node with
//! [`routing::rank_ordered`] off the routing index.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::extract::{ApiJson, NodeAuth};
use super::ice::relay_hosts;
use crate::AppState;
use crate::domain::registry;
use crate::domain::route_index::Preferences;
use crate::domain::routing::{self, RankInput, Route, RoutingRequest};
use crate::http::error::ApiError;

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
    // A target is read from the store; the ranking of every live node selects from the
    // routing index (`domain::route_index`), which looks at a few nodes, not all.
    let target = match request.target_node_id {
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
            Some(node)
        }
        None => None,
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
        candidates: target.as_slice(),
        hosts: &hosts,
        presence: &presence,
    };
    let routes = if target.is_some() {
        state.with_rng(|rng| routing::rank(&input, rng))
    } else {
        let requirements = &request.requirements;
        let preferences = Preferences {
            client_nat: request.client_network_info.nat_type,
            region: requirements.preferred_location.as_deref(),
            country: requirements.preferred_country.as_deref(),
        };
        state.with_route_index(|index| {
            state.with_rng(|rng| routing::rank_ordered(&input, index.ordered(preferences), rng))
        })
    };
    Ok(Json(RoutingResponse {
        selected_route: routes.first().cloned(),
        routes,
    }))
}
