//! The one error type of the REST API and its JSON body.
//!
//! Every failure leaves the server as
//! `{"error": {"code": "<stable snake_case code>", "message": "<for humans>"}}` with the status
//! that fits, plus `"field": "<JSON path>"` when one field of the request is to blame (every
//! 422 that names a value, such as `requirements.maxLatency`). Internal causes are logged here
//! and never sent to the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::key_proof::{NONCE_TTL, ProofRefusal, TIME_WINDOW};
use crate::domain::model::FieldError;
use crate::domain::registry::Refusal;
use crate::io::store::StoreError;

/// An error answered to an API client.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The request field to blame, as a JSON path.
    field: Option<String>,
    retry_after_secs: Option<u64>,
    /// Logged at error level when the response is built; never returned.
    internal: Option<anyhow::Error>,
}

impl ApiError {
    /// An error with the given status, stable code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            internal: None,
        }
    }

    /// 400: the request is malformed.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: the request is well formed but a value is not acceptable.
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401: no valid credentials.
    pub(crate) fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: valid credentials that do not allow this.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409.
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 with `Retry-After`.
    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; retry later",
            )
        }
    }

    /// 503 with `Retry-After`: the deployment holds as many unanswered key-proof
    /// challenges as it keeps.
    pub(crate) fn too_many_challenges(retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_challenges",
                "too many unanswered challenges; retry later",
            )
        }
    }

    /// 503 with `Retry-After`: a dependency (database, Redis) is down.
    pub(crate) fn unavailable(what: &'static str, cause: anyhow::Error) -> Self {
        Self {
            retry_after_secs: Some(5),
            internal: Some(cause),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{what} is unavailable; retry later"),
            )
        }
    }

    /// 500: a bug or an unexpected failure. The cause is logged, not returned.
    pub(crate) fn internal(cause: anyhow::Error) -> Self {
        Self {
            internal: Some(cause),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
            )
        }
    }

    /// Names the request field to blame (a JSON path such as `requirements.maxLatency`).
    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The field to blame, if one is.
    #[cfg(test)]
    pub(crate) fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable machine-readable code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: BodyInner<'a>,
}

#[derive(Serialize)]
struct BodyInner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.internal {
            tracing::error!(code = self.code, status = %self.status, "{cause:#}");
        }
        let body = Body {
            error: BodyInner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bosonserver\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::BAD_REQUEST => "malformed_json",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "bad_request",
        };
        let text = rejection.body_text();
        let field = matches!(rejection, JsonRejection::JsonDataError(_))
            .then(|| rejected_field(&text))
            .flatten();
        let error = Self::new(status, code, text);
        match field {
            Some(field) => error.with_field(field),
            None => error,
        }
    }
}

/// The JSON path serde blamed in a data error's text (`Failed to deserialize the JSON body
/// into the target type: metrics.latency: invalid type: ...`); `None` for the whole document.
fn rejected_field(text: &str) -> Option<String> {
    let rest = text.split_once("target type: ")?.1;
    let (path, _) = rest.split_once(": ")?;
    let is_path = !path.is_empty()
        && path != "."
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_'));
    is_path.then(|| path.to_owned())
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => Self::unavailable("the database", cause.into()),
            StoreError::Corrupt(message) => Self::internal(anyhow::anyhow!(message)),
            StoreError::Query(cause) => Self::internal(cause.into()),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::invalid(error.code, format!("{}: {}", error.field, error.message))
            .with_field(error.field)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::ForeignToken => Self::forbidden("the token belongs to another node"),
            Refusal::TokenRevoked => Self::unauthorized(
                "token_revoked",
                "the token was revoked by a newer registration",
            ),
            Refusal::PublicKeyMismatch => Self::conflict(
                "public_key_mismatch",
                "this nodeId is registered with another public key; \
                 authenticate as the node to change its key",
            ),
            Refusal::NodeActive => Self::conflict(
                "node_active",
                "this node is active; authenticate with its token to re-register it",
            ),
        }
    }
}

impl From<ProofRefusal> for ApiError {
    fn from(refusal: ProofRefusal) -> Self {
        let forbidden = |code, field, message: String| {
            Self::new(StatusCode::FORBIDDEN, code, message).with_field(field)
        };
        match refusal {
            ProofRefusal::Stale => forbidden(
                "key_proof_stale",
                "keyProof.time",
                format!(
                    "keyProof.time is more than {} s from the server's clock; \
                     check the node's clock",
                    TIME_WINDOW.as_secs()
                ),
            ),
            ProofRefusal::UnknownNonce => forbidden(
                "nonce_unknown",
                "keyProof.nonce",
                "keyProof.nonce was not handed out, or was used already; \
                 get a new one from POST /api/v1/nodes/challenge"
                    .to_owned(),
            ),
            ProofRefusal::ExpiredNonce => forbidden(
                "nonce_expired",
                "keyProof.nonce",
                format!(
                    "keyProof.nonce expired (challenges last {} s); get a new one",
                    NONCE_TTL.as_secs()
                ),
            ),
            ProofRefusal::Mismatch => forbidden(
                "key_proof_mismatch",
                "keyProof.proof",
                "keyProof.proof does not verify: it was not made with the private key of \
                 publicKey for this nodeId, nonce and time"
                    .to_owned(),
            ),
            ProofRefusal::SmallOrderKey => Self::invalid(
                "invalid_public_key",
                "publicKey has small order: it cannot be a WireGuard key",
            )
            .with_field("publicKey"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_status_and_code() {
        let cases = [
            (Refusal::ForeignToken, StatusCode::FORBIDDEN, "forbidden"),
            (
                Refusal::TokenRevoked,
                StatusCode::UNAUTHORIZED,
                "token_revoked",
            ),
            (
                Refusal::PublicKeyMismatch,
                StatusCode::CONFLICT,
                "public_key_mismatch",
            ),
            (Refusal::NodeActive, StatusCode::CONFLICT, "node_active"),
        ];
        for (refusal, status, code) in cases {
            let error = ApiError::from(refusal);
            assert_eq!(
                (error.status(), error.code()),
                (status, code),
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn field_errors_are_422_naming_the_field() {
        let error = ApiError::from(FieldError {
            code: "invalid_metrics",
            field: "metrics.latency",
            message: "at most 3600000".into(),
        });
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code(), "invalid_metrics");
        assert_eq!(error.field(), Some("metrics.latency"));
    }

    #[test]
    fn data_errors_name_their_field() {
        let text = "Failed to deserialize the JSON body into the target type: \
                    metrics.activeConnections: invalid value: integer `-1`, expected u32 at line 1";
        assert_eq!(
            rejected_field(text).as_deref(),
            Some("metrics.activeConnections")
        );
        let text = "Failed to deserialize the JSON body into the target type: \
                    location.coordinates[1]: invalid type: string \"x\"";
        assert_eq!(
            rejected_field(text).as_deref(),
            Some("location.coordinates[1]")
        );
        let text = "Failed to deserialize the JSON body into the target type: missing field \
                    `nodeId` at line 1 column 2";
        assert_eq!(rejected_field(text), None);
        assert_eq!(rejected_field("something else"), None);
    }
}
