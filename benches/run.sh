#!/usr/bin/env bash
# The full side-by-side benchmark: release builds, then `boson-bench run` (default: 5 rounds of
# 5 s per scenario, about 15 minutes), the JSON report and the PNG plot next to this script.
# Extra args go to `run`, e.g. `benches/run.sh --rounds 3 --duration 3s`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bosonserver -p boson-bench
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/boson-bench" run --json benches/results.json "$@"
"$bin/boson-bench" plot --json benches/results.json --out benches/results.png
