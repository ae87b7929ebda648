//! The REST API's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json`.
//!
//! Written by hand (`openapi.json` beside this file) rather than generated: it adds no
//! dependency, and `tests/openapi.rs` keeps it honest against the real router (every route
//! documented with its methods and nothing more) and the real handlers (every example request
//! accepted, every documented response shape met).

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");
