#!/usr/bin/env bash
# The bench smoke run CI does: builds bosonserver and boson-bench (debug), then
# * one short round of every TURN server (bosonserver io_uring and epoll, coturn, raw
#   forwarder), both packet sizes at max rate; fails if any server relays nothing;
# * one short round of the WebSocket relays (1 s each at 2k messages/s and at max rate, both
#   sizes); fails on any loss at 2k/s or figures that are not sane. bosonserver's relay is
#   included as soon as `bosonserver run` has --relay-listen; until then the baseline runs
#   alone, and this script says so.
# A few seconds each; extra args go to both `run`s.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p bosonserver -p boson-bench
bin="${CARGO_TARGET_DIR:-target}/debug"
"$bin/boson-bench" run --smoke --quiet "$@"
ws_servers=ws-baseline
if "$bin/bosonserver" run --help | grep -q -- '--relay-listen'; then
    ws_servers=boson-ws,ws-baseline
else
    echo "smoke: bosonserver has no --relay-listen yet; the WebSocket smoke runs the baseline alone" >&2
fi
"$bin/boson-bench" run --ws --smoke --quiet --ws-servers "$ws_servers" "$@"
