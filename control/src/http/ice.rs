//! `GET /api/v1/turn/ice`: TURN REST credentials on the relay hosts chosen for the caller.

use axum::Json;
use axum::extract::State;
use boson_shared::TurnCredential;
use serde::Serialize;

use super::extract::NodeAuth;
use crate::AppState;
use crate::domain::hosts::HostRecord;
use crate::domain::routing::{self, Place};
use crate::http::error::ApiError;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IceServer {
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
pub(super) struct IceResponse {
    ice_servers: Vec<IceServer>,
    ttl: u64,
    expires_at: i64,
}

/// The live relay hosts; this host alone when the registry cannot be read (it is alive: it
/// is answering), so routing degrades instead of failing.
pub(super) async fn relay_hosts(state: &AppState) -> Vec<HostRecord> {
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
pub(super) async fn ice_servers(
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
        with_credential(
            chosen
                .iter()
                .flat_map(|h| h.addresses.turn_urls())
                .collect(),
        ),
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
