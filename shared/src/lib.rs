//! Types both planes of BosonServer agree on: node ids, WireGuard keys, TURN credentials, mesh
//! credentials between relay hosts ([`mesh`]), the proof of a WireGuard key's possession
//! ([`key_proof`]), IP networks ([`net`]), the claims of node tokens ([`token`]) and the
//! messages between the planes ([`plane`]).
//!
//! Contract: no I/O, no clock, no threads. Every function that depends on time takes the
//! current time as an argument, so the control plane, the dataplane and the tests all agree on
//! what "now" is.

pub mod credentials;
pub mod id;
pub mod key_proof;
pub mod mesh;
pub mod net;
pub mod plane;
pub mod token;

pub use credentials::{CredentialError, TurnCredential, TurnSecret};
pub use id::{NodeId, ParseKeyError, WgPublicKey};
pub use key_proof::KeyProofError;
pub use mesh::{ChannelBinding, MeshKey, MeshKeyError, MeshTokenError};
pub use net::{Cidr, CidrError};
pub use plane::HostId;
