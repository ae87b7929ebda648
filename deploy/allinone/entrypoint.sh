#!/bin/sh
# Entrypoint of the allinone image (runs as root, then hands over to supervisord).
#
# On the first start it creates the PostgreSQL cluster on the /data volume with a role and
# database for bosonserver, protected by a generated password that only the boson user can
# read, so the image carries no credentials and every volume gets its own.
set -eu

pg_data=/data/postgres
app_data=${BOSON_DATA_DIR:-/data/bosonserver}
password_file=$app_data/postgres-password
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
export PG_BIN

mkdir -p "$pg_data" "$app_data" /run/postgresql
chown postgres:postgres "$pg_data" /run/postgresql
chmod 0700 "$pg_data"
chown boson:boson "$app_data"
chmod 0700 "$app_data"

if [ ! -s "$pg_data/PG_VERSION" ]; then
    echo "boson-allinone: first start, creating the PostgreSQL cluster in $pg_data" >&2
    # Hex only, so it is safe inside the SQL literal below.
    password=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && printf '%s\n' "$password" >"$password_file.new")
    chown boson:boson "$password_file.new"
    mv "$password_file.new" "$password_file"

    runuser -u postgres -- "$PG_BIN/initdb" -D "$pg_data" -U postgres --encoding=UTF8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    # A socket-only server just long enough to create the role; supervisord starts the real one.
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_data" -w -s \
        -o "-c listen_addresses= -c unix_socket_directories=/run/postgresql" start
    runuser -u postgres -- "$PG_BIN/psql" -h /run/postgresql -d postgres -q -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE boson LOGIN PASSWORD '$password';
CREATE DATABASE boson OWNER boson;
SQL
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_data" -w -s -m fast stop
elif [ ! -s "$password_file" ]; then
    echo "boson-allinone: $pg_data exists but $password_file is gone;" \
        "restore it, or set POSTGRES_PASSWORD to the boson role's password" >&2
    [ -n "${POSTGRES_PASSWORD:-}" ] || exit 1
fi

# supervisord exits 0 however it was stopped, so exit-on-fatal leaves this marker to tell a
# service that could not start (exit 1, for restart policies) from `docker stop` (exit 0).
fatal_marker=/run/boson-allinone.fatal
rm -f "$fatal_marker"
/usr/bin/supervisord -n -c /etc/supervisor/bosonserver.conf &
supervisord_pid=$!
trap 'kill -TERM "$supervisord_pid" 2>/dev/null' TERM INT
# A trapped signal ends `wait` early; keep waiting until supervisord itself is gone.
while kill -0 "$supervisord_pid" 2>/dev/null; do
    wait "$supervisord_pid" || true
done
[ ! -e "$fatal_marker" ] || exit 1
