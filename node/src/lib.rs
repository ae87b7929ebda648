//! `boson-node`, the node agent: it runs beside an unchanged WireGuard (kernel or
//! wireguard-go) and carries its UDP through BosonServer.
//!
//! # Contract
//!
//! Shaped like the server: the protocol logic lives in sans-IO cores that take `now` and
//! bytes and return what to send, with no socket, clock or thread ([`ws`]: the WebSocket
//! relay session; [`direct`]: hole punching; [`backoff`]; [`status`] and [`metrics`]
//! formatting), and a thin tokio shell drives them ([`agent`], `relay_conn`,
//! `direct_conn`, [`control`], [`wg`]); [`relay_blocking`] drives the relay session from
//! plain threads, for the project's tests and tools. Every codec is
//! `boson-dataplane-proto`'s: this crate writes none of its own.
//!
//! # Data path
//!
//! ```text
//!  WireGuard ──UDP──▶ 127.0.0.1:LOCAL_PORT (one socket per peer) ──▶ SEND(peer) ──▶ relay
//!  WireGuard ◀──UDP── the same socket ◀── RECV(src = peer) ◀─────────────────────── relay
//! ```
//!
//! Each peer's WireGuard endpoint is its local socket (`wg set IFACE peer KEY endpoint
//! 127.0.0.1:LOCAL_PORT`, or set by the operator in `--wg-listen-port` mode), so WireGuard
//! itself is never changed and never knows where the peer really is.

pub mod agent;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod control;
pub mod direct;
mod direct_conn;
pub mod failover;
pub mod fragment;
pub mod heartbeat;
pub mod keys;
pub mod metrics;
pub mod nat;
pub mod quic;
mod quic_conn;
pub mod relay_blocking;
mod relay_conn;
pub mod route;
pub mod signal;
pub mod status;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod turn;
pub mod turn_blocking;
mod turn_conn;
pub mod wg;
pub mod ws;
