//! End-to-end benchmarks of the BosonServer TURN relay, side by side with coturn and a raw UDP
//! forwarder, on one machine over loopback.
//!
//! # Contract
//!
//! Everything here is a benchmark shell: it opens sockets, spawns servers and reads the clock
//! (only in [`clock`]). Every server it starts listens on 127.0.0.1 only, every loop is bounded
//! in time and in count, and every child process is stopped when its guard drops.
//!
//! # Layout
//!
//! * [`generator`]: the TURN load generator (allocations, ChannelData flood, sinks).
//! * [`forwarder`]: the raw forwarder, the ceiling the relays are compared against.
//! * [`runner`]: the side-by-side runner (rounds of uring, epoll, coturn, raw).
//! * [`plot`]: the PNG of a runner's JSON results.
//! * Pure parts, unit tested: [`payload`] (sequence number and timestamp in each packet),
//!   [`accounting`] (loss, reordering, percentiles), [`maths`] (medians and ratios),
//!   [`procfs`] (CPU time and socket drops from `/proc`), [`turn_client`]'s message codec.
//! * [`mmsg`]: batched `sendmmsg`/`recvmmsg`, the only `unsafe` code.

pub mod accounting;
pub mod cli;
pub mod clock;
pub mod forwarder;
pub mod generator;
pub mod maths;
pub mod mmsg;
pub mod nodes;
pub mod payload;
pub mod plot;
pub mod process;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod turn_client;
pub mod ws_baseline;
