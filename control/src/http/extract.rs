//! The extractors: JSON bodies, queries, node ids in paths and node tokens, each refusing
//! with an [`ApiError`].

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use boson_shared::NodeId;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::domain::auth::{NodeToken, TokenError};
use crate::http::error::ApiError;

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

pub(super) fn token_error(error: TokenError) -> ApiError {
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
