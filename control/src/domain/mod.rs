//! The control plane's decisions: pure functions and state machines of `now` and data, with
//! no database, cache, socket or clock. They return domain values and domain errors
//! ([`model::FieldError`], [`registry::Refusal`]); the HTTP layer maps those to `ApiError`, and
//! [`crate::io`] and the handlers do the I/O around them. Each is tested without a database.

pub mod allocations;
pub mod auth;
pub mod client_addr;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod grants;
pub mod heartbeats;
pub mod hosts;
pub mod key_proof;
pub mod model;
pub mod presence;
pub mod registry;
pub mod route_index;
pub mod routing;
pub mod turn_secrets;
