#!/usr/bin/env bash
# The bench smoke run CI does: builds bosonserver and boson-bench (debug), then
# * one short round of every TURN server (bosonserver io_uring and epoll, coturn, raw
#   forwarder), both packet sizes at 2k packets/s and at max rate; fails if any server
#   relays nothing, or loses a packet at 2k/s;
# * the same over TCP (`run --tcp`): bosonserver io_uring and epoll and coturn through their
#   TURN-over-TCP listeners, the relayed side UDP; fails if any server relays nothing, or
#   loses a packet at 2k/s;
# * one short round of the WebSocket relays, bosonserver's and the tokio-tungstenite
#   baseline (1 s each at 2k messages/s and at max rate, both sizes); fails on any loss at
#   2k/s or figures that are not sane;
# * the same over QUIC, bosonserver's QUIC relay and the quinn baseline (packets of 100 and
#   1100 bytes: 1200 do not fit a QUIC datagram);
# * the control-plane load generator (`ctl --smoke`): 200 nodes registered with
#   `bosonserver control` on SQLite, 1 s of heartbeats, routing and ICE requests, 1 s of
#   each at its ceiling; fails on any error answer.
# A few seconds each; extra args go to every `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p bosonserver -p boson-bench
bin="${CARGO_TARGET_DIR:-target}/debug"
"$bin/boson-bench" run --smoke --quiet "$@"
"$bin/boson-bench" run --tcp --smoke --quiet "$@"
"$bin/boson-bench" run --ws --smoke --quiet --ws-servers boson-ws,ws-baseline "$@"
"$bin/boson-bench" run --quic --smoke --quiet --ws-servers boson-quic,quic-baseline "$@"
"$bin/boson-bench" ctl --smoke --quiet
