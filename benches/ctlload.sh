#!/usr/bin/env bash
# The control-plane benchmark: release builds, then `boson-bench ctl` on SQLite and on a
# throw-away PostgreSQL + Redis (started, and installed from Debian's packages when missing
# and root, by scripts/services.sh), at the population sizes given (default 1000,10000).
# Writes benches/results-ctl-sqlite.json and benches/results-ctl-pg.json, and plots the cost
# against N from both into benches/results-ctl.svg (benches/plot_ctl.py).
#   benches/ctlload.sh [--sizes 1000,10000,100000] [--debug] [--no-build] [extra args of `ctl`]
# --no-build uses the binaries already in $CARGO_TARGET_DIR (or target/).
# Each size gets a fresh SQLite data directory, or a fresh PostgreSQL database (ctl_<n>) and
# Redis key prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=1000,10000
profile=release
build=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=0; shift ;;
        *) extra+=("$1"); shift ;;
    esac
done
if [ "$build" = 1 ] && [ "$profile" = release ]; then
    cargo build --release --locked -p bosonserver -p boson-bench
elif [ "$build" = 1 ]; then
    cargo build --locked -p bosonserver -p boson-bench
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

"$bin/boson-bench" ctl --nodes "$sizes" --json benches/results-ctl-sqlite.json "${extra[@]}"

# shellcheck source=scripts/services.sh
source scripts/services.sh
start_test_services
if [ -z "${BOSON_TEST_DATABASE_URL:-}" ]; then
    echo "no PostgreSQL and Redis: the postgres+redis runs are skipped" >&2
    [ -z "${CI:-}" ] || exit 1
    exit 0
fi
base="${BOSON_TEST_DATABASE_URL%/*}"
for n in ${sizes//,/ }; do
    n=$(echo "$n" | tr 'A-Z' 'a-z' | sed -e 's/k$/000/' -e 's/m$/000000/')
    psql "$BOSON_TEST_DATABASE_URL" -q -c "DROP DATABASE IF EXISTS ctl_$n" -c "CREATE DATABASE ctl_$n"
done
# The sizes are normalised the same way for {n} in the URL.
norm=$(for n in ${sizes//,/ }; do echo "$n" | tr 'A-Z' 'a-z' | sed -e 's/k$/000/' -e 's/m$/000000/'; done | paste -sd,)
"$bin/boson-bench" ctl --nodes "$norm" --json benches/results-ctl-pg.json \
    --database-url "$base/ctl_{n}" --redis-url "$BOSON_TEST_REDIS_URL" "${extra[@]}"

python3 benches/plot_ctl.py benches/results-ctl-sqlite.json benches/results-ctl-pg.json \
    -o benches/results-ctl.svg
