//! End-to-end benchmarks of the BosonServer relays, side by side with references on one
//! machine over loopback: TURN against coturn and a raw UDP forwarder, the WebSocket relay
//! against a plain tokio-tungstenite relay, the QUIC relay against a plain quinn relay (and
//! against the WebSocket relay).
//!
//! # Contract
//!
//! Everything here is a benchmark shell: it opens sockets, spawns servers and reads the clock
//! (only in [`clock`]). Every server it starts listens on 127.0.0.1 only, every loop is bounded
//! in time and in count, and every child process is stopped when its guard drops.
//!
//! # Layout
//!
//! * [`generator`]: the TURN load generator (allocations, ChannelData flood, sinks);
//!   [`tcp_generator`] the same over TCP connections to the TURN server, with
//!   [`turn_tcp_client`], the client side of RFC 8656's stream framing.
//! * [`forwarder`]: the raw forwarder, the ceiling the relays are compared against.
//! * [`relay_load`]: the node relays' load generator (pairs of nodes, SEND → RECV, paced,
//!   timed and drained) over a transport: [`ws_generator`] over WebSocket, with
//!   [`ws_client`], the node agent's relay session (`boson-node`) with a pre-masked SEND
//!   template, and [`quic_generator`] over
//!   QUIC DATAGRAM frames, with [`quic_client`], quinn-proto driven without a runtime around
//!   the node agent's AUTH, control-stream reader and datagrams (`boson_node::quic`).
//! * [`ws_baseline`]: the tokio-tungstenite relay our WebSocket relay is compared against.
//! * [`quic_baseline`]: the quinn relay our QUIC relay is compared against.
//! * [`ctl_load`]: the control-plane load generator (`boson-bench ctl`): registrations,
//!   heartbeats, routing and ICE requests against `bosonserver control` on SQLite or
//!   PostgreSQL + Redis, over the simulated nodes of [`ctl_population`].
//! * [`nodes`]: node tokens, minted and verified as the control plane does, or registered
//!   through its REST API.
//! * [`runner`]: the side-by-side runner (rounds of uring, epoll, coturn, raw), [`tcp_runner`]
//!   its rounds over TCP (uring, epoll, coturn), and
//!   [`ws_runner`] for the node relays (rounds of bosonserver's relay over WebSocket and QUIC
//!   and the baselines);
//!   their results are in [`report`] and [`ws_report`].
//! * [`process`]: the guard of every server process a runner starts.
//! * [`plot`]: the PNG of a runner's JSON results.
//! * Pure parts, unit tested: [`payload`] (sequence number and timestamp in each packet),
//!   [`accounting`] (loss, reordering, percentiles), [`maths`] (medians and ratios),
//!   [`procfs`] (CPU time and socket drops from `/proc`), [`turn_client`]'s message codec,
//!   [`ws_client`]'s SEND template (read back with tungstenite), [`quic_client`]'s
//!   datagrams (the node agent's framing, `boson_node::quic`).
//! * `unsafe` is confined to system calls: [`mmsg`] (batched `sendmmsg`/`recvmmsg`),
//!   [`process`] (`prctl`, `kill`) and [`procfs`] (`sysconf`).

pub mod accounting;
pub mod cli;
pub mod clock;
pub mod ctl_load;
pub mod ctl_population;
pub mod forwarder;
pub mod generator;
pub mod maths;
pub mod mmsg;
pub mod nodes;
pub mod payload;
pub mod plot;
pub mod process;
pub mod procfs;
pub mod quic_baseline;
pub mod quic_client;
pub mod quic_generator;
pub mod relay_load;
pub mod report;
pub mod runner;
pub mod tcp_generator;
pub mod tcp_runner;
pub mod turn_client;
pub mod turn_tcp_client;
pub mod ws_baseline;
pub mod ws_client;
pub mod ws_generator;
pub mod ws_report;
pub mod ws_runner;
