#!/usr/bin/env bash
# The WireGuard tunnel through each of boson-node's routes against the direct route (issue
# 13 §5): iperf3 TCP throughput, ping latency, and the CPU time per byte of wireguard-go,
# boson-node and bosonserver, on one network-namespace topology in one run (two relay hosts
# sharing PostgreSQL and Redis, two endpoint-independent home routers, a wireguard-go node
# behind each; node/tests/e2e_netns.rs `measure_routes`). Release builds. Needs root.
#
#   benches/tunnel.sh            # prints a Markdown table (also in target/tunnel-results.md)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "benches/tunnel.sh needs root (network namespaces)" >&2
    exit 1
fi
# shellcheck source=scripts/services.sh
source scripts/services.sh
install_netns_tools_if_missing
install_if_missing

cargo build --release --locked -p bosonserver -p boson-node
# The test finds bosonserver next to boson-node, in target/release.
cargo test --release --locked -p boson-node --test e2e_netns measure_routes \
    -- --ignored --nocapture --test-threads 1 2>&1 | tee target/tunnel-run.log
grep '^|' target/tunnel-run.log | tee target/tunnel-results.md
