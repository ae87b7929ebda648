#!/usr/bin/env bash
# The bench smoke run CI does: builds bosonserver and boson-bench (debug), then one short round
# of every server (bosonserver io_uring and epoll, coturn, raw forwarder), both packet sizes at
# max rate. Fails if any server relays nothing. A few seconds; extra args go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p bosonserver -p boson-bench
"${CARGO_TARGET_DIR:-target}/debug/boson-bench" run --smoke --quiet "$@"
