#!/usr/bin/env bash
# The full side-by-side benchmark: release builds, then `boson-bench run` (default: 5 rounds of
# 5 s per scenario, about 15 minutes), the JSON report and the PNG plot next to this script.
# Extra args go to `run`, e.g. `benches/run.sh --rounds 3 --duration 3s`.
# With --ws it runs the WebSocket relays instead (bosonserver's against the tokio-tungstenite
# baseline) and writes results-ws.json and results-ws.png; with --quic the QUIC relays
# (bosonserver's against the quinn baseline, and against bosonserver's WebSocket relay) and
# writes results-quic.json and results-quic.png.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bosonserver -p boson-bench
bin="${CARGO_TARGET_DIR:-target}/release"
name=results
for arg in "$@"; do
    if [[ "$arg" == --ws ]]; then
        name=results-ws
    elif [[ "$arg" == --quic ]]; then
        name=results-quic
    fi
done
status=0
"$bin/boson-bench" run --json "benches/$name.json" "$@" || status=$?
# A run with failed scenarios still writes its report: plot what there is, keep the status.
if [[ -f "benches/$name.json" ]]; then
    "$bin/boson-bench" plot --json "benches/$name.json" --out "benches/$name.png"
fi
exit "$status"
