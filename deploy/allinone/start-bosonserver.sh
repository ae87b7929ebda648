#!/bin/sh
# Runs bosonserver under supervisord as the boson user, once the local PostgreSQL and Redis
# answer: on a first start PostgreSQL takes a few seconds, and failing meanwhile would use up
# supervisord's start retries.
set -eu

if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    POSTGRES_PASSWORD=$(cat "$BOSON_DATA_DIR/postgres-password")
    export POSTGRES_PASSWORD
fi

waited=0
until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p 15432 \
    && [ "$(redis-cli -h 127.0.0.1 -p 16379 ping 2>/dev/null)" = PONG ]; do
    waited=$((waited + 1))
    if [ "$waited" -ge 60 ]; then
        echo "start-bosonserver: PostgreSQL or Redis did not answer within 60 s" >&2
        exit 1
    fi
    sleep 1
done

exec /usr/local/bin/bosonserver run
