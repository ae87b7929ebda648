#!/usr/bin/env bash
# Sourced by scripts/test.sh: throw-away PostgreSQL and Redis for the tests, coturn's
# tools (turnutils_uclient, turnutils_peer) for the TURN interop tests, iproute2, iptables,
# wireguard-go, wireguard-tools, ping and iperf3 for the network-namespace tests
# (testsupport/'s simulated internet, the node agent's WireGuard tunnels), and Chromium with
# NSS's certutil for the browser test (bosonserver/tests/browser.rs).
# Exports BOSON_TEST_DATABASE_URL and BOSON_TEST_REDIS_URL; stops both on exit.

services_dir=""

stop_test_services() {
    [ -n "$services_dir" ] || return 0
    if [ -f "$services_dir/redis.pid" ]; then
        kill "$(cat "$services_dir/redis.pid")" 2>/dev/null || true
    fi
    if [ -f "$services_dir/pg/postmaster.pid" ]; then
        as_postgres "$pg_bin/pg_ctl" -D "$services_dir/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$services_dir"
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Installs the Debian packages named after $1 when root and apt-get is there; else says
# what is missing and why that matters ($1) and fails. Nothing to install: succeeds.
apt_install() {
    local why=$1
    shift
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $* from Debian's packages" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing $*: $why" >&2
        return 1
    fi
}

install_if_missing() {
    local need=()
    [ -n "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null)" ] || need+=(postgresql)
    command -v redis-server >/dev/null || need+=(redis-server)
    # coturn's own client and peer, for the TURN interop tests.
    command -v turnutils_uclient >/dev/null || need+=(coturn)
    apt_install "install them (or set BOSON_TEST_DATABASE_URL and BOSON_TEST_REDIS_URL)" "${need[@]}"
}

# The network-namespace tests need root anyway: home routers NAT with iptables, nodes run
# wireguard-go (configured with wg), ping and iperf3 measure their tunnels. Installed when
# root, whatever PostgreSQL and Redis are used; else those tests skip (or fail under CI) by
# themselves.
install_netns_tools_if_missing() {
    local need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v iptables >/dev/null || need+=(iptables)
    command -v wireguard-go >/dev/null || need+=(wireguard-go)
    command -v wg >/dev/null || need+=(wireguard-tools)
    command -v ping >/dev/null || need+=(iputils-ping)
    command -v iperf3 >/dev/null || need+=(iperf3)
    apt_install "the network-namespace tests will skip" "${need[@]}"
}

# The browser test: headless Chromium relaying through our TURN server, and certutil to make
# it trust the test's CA (an NSS database in a throw-away HOME). Installed when root; else
# that test skips (or fails under CI) by itself.
install_browser_if_missing() {
    local need=()
    command -v chromium >/dev/null || need+=(chromium)
    command -v certutil >/dev/null || need+=(libnss3-tools)
    apt_install "the browser test will skip" "${need[@]}"
}

start_test_services() {
    install_netns_tools_if_missing || true
    install_browser_if_missing || true
    if [ -n "${BOSON_TEST_DATABASE_URL:-}" ] && [ -n "${BOSON_TEST_REDIS_URL:-}" ]; then
        echo "using BOSON_TEST_DATABASE_URL and BOSON_TEST_REDIS_URL as given" >&2
        return 0
    fi
    if ! install_if_missing; then
        if [ -n "${CI:-}" ]; then
            echo "CI is set: PostgreSQL and Redis are required" >&2
            exit 1
        fi
        echo "PostgreSQL/Redis tests will be skipped" >&2
        return 0
    fi
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    services_dir=$(mktemp -d /tmp/boson-test-services.XXXXXX)
    chmod 755 "$services_dir"
    trap stop_test_services EXIT

    local pg_port redis_port
    pg_port=$(free_port)
    mkdir "$services_dir/pg"
    [ "$(id -u)" = 0 ] && chown postgres: "$services_dir/pg"
    as_postgres "$pg_bin/initdb" -D "$services_dir/pg" -U postgres -A trust --no-sync >"$services_dir/initdb.log" 2>&1 \
        || { cat "$services_dir/initdb.log" >&2; exit 1; }
    as_postgres "$pg_bin/pg_ctl" -D "$services_dir/pg" -l "$services_dir/pg/server.log" -w \
        -o "-p $pg_port -k $services_dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
        start >/dev/null || { cat "$services_dir/pg/server.log" >&2; exit 1; }
    export BOSON_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"

    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --pidfile "$services_dir/redis.pid" --logfile "$services_dir/redis.log" --dir "$services_dir"
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    export BOSON_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/"
    echo "PostgreSQL on 127.0.0.1:$pg_port, Redis on 127.0.0.1:$redis_port (throw-away)" >&2
}
