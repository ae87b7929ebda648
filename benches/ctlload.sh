#!/usr/bin/env bash
# The control-plane benchmark: release builds, then `boson-bench ctl` on SQLite and on a
# throw-away PostgreSQL + Redis (started, and installed from Debian's packages when missing
# and root, by scripts/services.sh), at the population sizes given (default 1000,10000).
# Writes benches/results-ctl-sqlite.json and benches/results-ctl-pg.json.
#   benches/ctlload.sh [--sizes 1000,10000,50000] [--debug] [extra args of `ctl`]
# Each size gets a fresh SQLite data directory, or a fresh PostgreSQL database (ctl_<n>) and
# Redis key prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=1000,10000
profile=release
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --debug) profile=debug; shift ;;
        *) extra+=("$1"); shift ;;
    esac
done
if [ "$profile" = release ]; then
    cargo build --release --locked -p bosonserver -p boson-bench
else
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
