#!/usr/bin/env bash
# CI's container test: builds the Dockerfile's two targets exactly as the README says, runs
# them, and brings the compose quick start up healthy, on Debian's own Docker with no
# registry. Needs root.
#
#   deploy/container-test.sh          # up, run, down
#   deploy/container-test.sh up       # install Docker from Debian and start dockerd if none runs
#   deploy/container-test.sh run      # the test itself (against whatever dockerd runs)
#   deploy/container-test.sh down     # stop the dockerd `up` started and undo what `up` did
#
# .ci/run calls `up` before the test suite, so the suite runs with dockerd's iptables rules
# (FORWARD policy DROP, br_netfilter) in place, and `down` from an EXIT trap.
#
# No registry is reached: debian:bookworm-slim is made with debootstrap, the builder's
# rust:<pin>-slim-bookworm from it plus the host's own pinned toolchain, and the images only a
# registry has (PostgreSQL, Redis, Prometheus, Grafana) get stand-ins built from Debian's
# packages, under the official names, for the compose test only. deploy/README.md says what
# that leaves untested.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# Debian's client: the newer one that may come first on PATH has no buildx, so no BuildKit.
DOCKER=/usr/bin/docker
COMPOSE=/usr/bin/docker-compose
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_HOST=unix:///var/run/docker.sock
STATE=/run/boson-container-test
PACKAGES=(docker.io debootstrap docker-compose coturn curl iproute2 iptables python3 python3-cryptography)
# Everything the test creates is named after this, so a shared daemon's other objects are safe.
PREFIX=boson-ct
# What the EXIT trap of `run` does after its own cleanup (`all` sets it to down).
AFTER_RUN=:

say() { echo "container-test: $*" >&2; }
die() {
    echo "container-test: FAILED: $*" >&2
    exit 1
}

# ---- up / down: Docker on this host, and leaving the host as it was found ------------------

up() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts dockerd)"
    mkdir -p "$STATE"
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]} from Debian's packages"
        local before
        before=$(dpkg-query -W -f='${Package}\n' | sort)
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
        # Exactly what this install added (dependencies too), for `down`; not what others
        # install meanwhile, such as scripts/test.sh's PostgreSQL.
        dpkg-query -W -f='${Package}\n' | sort | comm -13 <(echo "$before") - \
            >>"$STATE/packages.installed"
    fi

    if "$DOCKER" info >/dev/null 2>&1; then
        say "using the dockerd that already runs (it is left running)"
        return
    fi
    # What dockerd changes in the root namespace, to restore at `down`.
    cat /proc/sys/net/ipv4/ip_forward >"$STATE/ip_forward"
    iptables -S FORWARD | awk '$1 == "-P" {print $3; exit}' >"$STATE/forward_policy"
    [ -d /proc/sys/net/bridge ] && touch "$STATE/had_br_netfilter"
    [ -e /var/lib/docker ] && touch "$STATE/had_var_lib_docker"
    say "starting dockerd (default flags: overlay2, bridge, iptables)"
    setsid /usr/sbin/dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$STATE/dockerd.pid"
    local deadline=$((SECONDS + 60))
    until "$DOCKER" info >/dev/null 2>&1; do
        kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null \
            || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd exited"; }
        [ "$SECONDS" -lt "$deadline" ] || die "dockerd did not answer within 60 s"
        sleep 0.5
    done
    say "dockerd runs: $("$DOCKER" info --format '{{.ServerVersion}} {{.Driver}}'), FORWARD policy $(iptables -S FORWARD | awk '$1 == "-P" {print $3; exit}')"
}

down() {
    [ -d "$STATE" ] || return 0
    if [ -e "$STATE/dockerd.pid" ]; then
        local pid
        pid=$(cat "$STATE/dockerd.pid")
        if kill -0 "$pid" 2>/dev/null; then
            say "stopping the dockerd started by up (pid $pid)"
            # Containers first, so none outlives the daemon's shutdown timeout.
            "$DOCKER" ps -aq | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
            kill -TERM "$pid"
            local deadline=$((SECONDS + 30))
            while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        # dockerd leaves its chains, rules, bridge and forwarding on: take them out again.
        for table in filter nat; do
            iptables -t "$table" -S | grep -E '^-A .*(DOCKER|docker0|br-[0-9a-f]{12})' \
                | sed 's/^-A /-D /' | while read -r rule; do
                    # shellcheck disable=SC2086 # a rule is a list of words
                    iptables -t "$table" $rule 2>/dev/null || true
                done
            iptables -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' \
                | while read -r chain; do
                    iptables -t "$table" -F "$chain" 2>/dev/null || true
                done
            iptables -t "$table" -S | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' \
                | while read -r chain; do
                    iptables -t "$table" -X "$chain" 2>/dev/null || true
                done
        done
        [ -s "$STATE/forward_policy" ] && iptables -P FORWARD "$(cat "$STATE/forward_policy")"
        [ -s "$STATE/ip_forward" ] && cat "$STATE/ip_forward" >/proc/sys/net/ipv4/ip_forward
        ip link show docker0 >/dev/null 2>&1 && ip link delete docker0
        ip -o link show type bridge | awk -F': ' '$2 ~ /^br-[0-9a-f]{12}$/ {print $2}' \
            | while read -r bridge; do ip link delete "$bridge"; done
        if [ ! -e "$STATE/had_br_netfilter" ] && [ -d /proc/sys/net/bridge ]; then
            rmmod br_netfilter 2>/dev/null || say "br_netfilter stays loaded (cannot unload it here)"
        fi
        if [ ! -e "$STATE/had_var_lib_docker" ]; then
            # Images, build cache and volumes: all ours, since the daemon was.
            umount -R /var/lib/docker 2>/dev/null || true
            rm -rf /var/lib/docker /run/docker /run/docker.sock /run/containerd 2>/dev/null || true
        fi
    fi
    if [ -s "$STATE/packages.installed" ]; then
        say "removing the packages up installed: $(tr '\n' ' ' <"$STATE/packages.installed")"
        # shellcheck disable=SC2046 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $(cat "$STATE/packages.installed") \
            >/dev/null || true
    fi
    rm -rf "$STATE"
    say "host restored"
}

# ---- base images, made locally ---------------------------------------------------------------

# debian:bookworm-slim from debootstrap, unless the daemon already has one.
base_image() {
    if "$DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1; then
        say "debian:bookworm-slim exists, kept"
        return
    fi
    say "making debian:bookworm-slim with debootstrap --variant=minbase"
    local dir
    dir=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
    rm -rf "$dir"
    echo debian:bookworm-slim >>"$WORK/made-images"
}

# rust:<pin>-slim-bookworm: the base, a C toolchain, and the host's own rustup toolchain of
# the pinned version (Debian's rustc is far older than the pin, and no toolchain can be
# downloaded here). It also trusts the host's extra CA certificates, because registries are
# reached through a TLS-inspecting proxy; the project's Dockerfile does not depend on that.
rust_image() {
    local pin tag sysroot
    pin=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
    tag="rust:$pin-slim-bookworm"
    if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
        say "$tag exists, kept"
        return
    fi
    sysroot=$(rustc --print sysroot)
    case "$(rustc --version)" in
        "rustc $pin "*) ;;
        *) die "the host's rustc is $(rustc --version), not the pinned $pin" ;;
    esac
    say "making $tag from debian:bookworm-slim and the host's toolchain $sysroot"
    local context="$WORK/rust-image"
    mkdir -p "$context/rust/lib/rustlib/x86_64-unknown-linux-gnu" "$context/ca"
    cp -a "$sysroot/bin" "$context/rust/"
    cp -a "$sysroot"/lib/*.so* "$context/rust/lib/"
    cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/lib" \
        "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin" \
        "$context/rust/lib/rustlib/x86_64-unknown-linux-gnu/"
    find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$context/ca/" \; 2>/dev/null || true
    cat >"$context/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY rust/ /usr/local/rust/
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
EOF
    "$DOCKER" build -q -t "$tag" "$context" >/dev/null || die "building $tag failed"
    rm -rf "$context"
    echo "$tag" >>"$WORK/made-images"
}

# ---- helpers ---------------------------------------------------------------------------------

# Free loopback ports: bound to port 0 and released, so nothing on the host clashes.
free_tcp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A run of N consecutive UDP ports free on every address, below the ephemeral range.
free_udp_range() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    first = random.randrange(20000, 32000 - n)
    socks = []
    try:
        for port in range(first, first + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("0.0.0.0", port))
        print(f"{first}-{first + n - 1}")
        sys.exit(0)
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
sys.exit("no free UDP port range")
EOF
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, or fails the test.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not within $limit s"
        sleep 0.5
    done
}

container_logs() { "$DOCKER" logs "$1" 2>&1 | tail -n "${2:-40}" >&2; }

# register PORT: registers a new node through the API; prints its id.
register() {
    local port=$1 id status
    # A registration proves it holds the WireGuard key (issue 15): a fresh X25519 key, the
    # server's challenge, and the MAC of shared/src/key_proof.rs, computed here in Python.
    status=$(curl -s -o "$WORK/challenge.json" -w '%{http_code}' -X POST \
        "http://127.0.0.1:$port/api/v1/nodes/challenge")
    [ "$status" = 200 ] || die "the key-proof challenge answered $status: $(cat "$WORK/challenge.json")"
    id=$(python3 -c 'import uuid; print(uuid.uuid4())')
    python3 - "$WORK/challenge.json" "$id" >"$WORK/register-body.json" <<'PY'
import base64, hashlib, hmac, json, sys, time
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

challenge = json.load(open(sys.argv[1]))
node = sys.argv[2]
key = X25519PrivateKey.generate()
server = X25519PublicKey.from_public_bytes(base64.b64decode(challenge["serverPublicKey"]))
secs = int(time.time())
message = "|".join(["boson-keyproof-v1", challenge["nonce"], node, str(secs)]).encode()
proof = hmac.new(key.exchange(server), message, hashlib.sha256).digest()
print(json.dumps({
    "nodeId": node,
    "publicKey": base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode(),
    "networkInfo": {"ipv4": "192.0.2.7", "natType": "FullCone", "localPort": 51820},
    "capabilities": {"maxConnections": 10, "bandwidth": {"up": 10, "down": 10}},
    "location": {"country": "US", "region": "US-CA"},
    "keyProof": {
        "nonce": challenge["nonce"],
        "time": secs,
        "proof": base64.urlsafe_b64encode(proof).rstrip(b"=").decode(),
    },
}))
PY
    status=$(curl -s -o "$WORK/register.json" -w '%{http_code}' -H 'content-type: application/json' \
        -d @"$WORK/register-body.json" "http://127.0.0.1:$port/api/v1/nodes/register")
    [ "$status" = 201 ] || die "registering a node answered $status: $(cat "$WORK/register.json")"
    echo "$id"
}

# node_exists PORT ID TOKEN: the node is in the registry (GET answers 200 with its id).
node_exists() {
    grep -q "\"$2\"" <<<"$(curl -sf -H "authorization: Bearer $3" "http://127.0.0.1:$1/api/v1/nodes/$2")"
}

token() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sessionToken"])' "$WORK/register.json"; }

metric() { curl -sf "http://127.0.0.1:$1/metrics" | grep -E "$2"; }

# ---- stand-ins for the images only a registry has (compose test only) ------------------------

# stand_in TAG: builds TAG from Debian's packages unless the daemon has it (a real one is
# never replaced). Each keeps the contract docker-compose.yml relies on, nothing more.
stand_in() {
    local tag=$1 context="$WORK/stand-in"
    if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
        say "$tag exists, kept"
        return
    fi
    rm -rf "$context"
    mkdir -p "$context"
    case "$tag" in
        postgres:*)
            # The official image's contract: POSTGRES_USER/_DB/_PASSWORD make the role and
            # database on the first start into /var/lib/postgresql/data; pg_isready on PATH.
            cat >"$context/entrypoint" <<'EOF'
#!/bin/sh
set -eu
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pw
    chown postgres /tmp/pw
    runuser -u postgres -- initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pw
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    runuser -u postgres -- pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses=" start
    runuser -u postgres -- createdb -U "$POSTGRES_USER" -O "$POSTGRES_USER" "$POSTGRES_DB"
    runuser -u postgres -- pg_ctl -D "$PGDATA" -w -s -m fast stop
fi
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*'
EOF
            cat >"$context/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
COPY --chmod=0755 entrypoint /usr/local/bin/entrypoint
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/entrypoint"]
EOF
            ;;
        redis:*)
            cat >"$context/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        redis-server && rm -rf /var/lib/apt/lists/*
CMD ["redis-server"]
EOF
            ;;
        prom/prometheus:*)
            cat >"$context/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus wget && rm -rf /var/lib/apt/lists/* \
 && mkdir /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
            ;;
        grafana/grafana:*)
            # Grafana is not packaged by Debian. This only answers /api/health, once the
            # provisioning and the dashboard are mounted where Grafana would read them.
            cat >"$context/entrypoint" <<'EOF'
#!/bin/sh
set -eu
ls /etc/grafana/provisioning/datasources/*.y*ml /etc/grafana/provisioning/dashboards/*.y*ml \
    /etc/grafana/dashboards/*.json >/dev/null
mkdir -p /www/api
echo '{"database":"ok","stand-in":true}' >/www/api/health
exec busybox httpd -f -p "${GF_SERVER_HTTP_ADDR:-0.0.0.0}:${GF_SERVER_HTTP_PORT:-3000}" -h /www
EOF
            cat >"$context/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        busybox && rm -rf /var/lib/apt/lists/* && ln -s /bin/busybox /usr/local/bin/wget
COPY --chmod=0755 entrypoint /usr/local/bin/entrypoint
ENTRYPOINT ["/usr/local/bin/entrypoint"]
EOF
            ;;
        *) die "no stand-in for $tag" ;;
    esac
    say "building a stand-in for $tag from Debian's packages"
    "$DOCKER" build -q -t "$tag" "$context" >/dev/null || die "building the stand-in $tag failed"
    echo "$tag" >>"$WORK/made-images"
}

# ---- the checks ------------------------------------------------------------------------------

build_images() {
    local started=$SECONDS
    say "docker build -t bosonserver ."
    "$DOCKER" build -t bosonserver . >"$WORK/build-runtime.log" 2>&1 \
        || { tail -n 40 "$WORK/build-runtime.log" >&2; die "docker build -t bosonserver . failed"; }
    say "built bosonserver in $((SECONDS - started)) s"
    started=$SECONDS
    say "docker build --target allinone -t bosonserver:allinone ."
    "$DOCKER" build --target allinone -t bosonserver:allinone . >"$WORK/build-allinone.log" 2>&1 \
        || { tail -n 40 "$WORK/build-allinone.log" >&2; die "docker build --target allinone failed"; }
    say "built bosonserver:allinone in $((SECONDS - started)) s"
    echo bosonserver >>"$WORK/made-images"
    echo bosonserver:allinone >>"$WORK/made-images"
}

# The seccomp profiles: deploy/seccomp's script run on a Docker-format default profile that
# does not allow io_uring (like Docker 25's default, which CI cannot download): the one
# Debian ships for the containers tools. The base alone must give epoll, the script's output
# io_uring.
make_profiles() {
    local dir="$WORK/seccomp"
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -q golang-github-containers-common >/dev/null 2>&1) \
        || die "apt-get download golang-github-containers-common failed"
    dpkg-deb --fsys-tarfile "$dir"/golang-github-containers-common_*.deb \
        | tar -x -O ./usr/share/containers/seccomp.json >"$dir/base.json"
    python3 - "$dir/base.json" <<'EOF'
import json, sys
profile = json.load(open(sys.argv[1]))
names = {n for rule in profile["syscalls"] for n in rule.get("names", [])}
if any(n.startswith("io_uring") for n in names):
    sys.exit("the base profile already allows io_uring: it cannot show what the script adds")
EOF
    cp deploy/seccomp/make-io-uring-profile.sh "$dir/"
    sh "$dir/make-io-uring-profile.sh" --from "$dir/base.json" 2>/dev/null
    [ -s "$dir/io-uring.json" ] || die "make-io-uring-profile.sh wrote no profile"
}

# run_server NAME PROFILE IMAGE [ENV...]: bosonserver on the host network, on free loopback
# ports (HTTP, TURN, RELAY, RANGE are set for the caller).
run_server() {
    local name=$1 profile=$2 image=$3
    shift 3
    HTTP=$(free_tcp)
    TURN=$(free_udp)
    RELAY=$(free_tcp)
    RANGE=$(free_udp_range 16)
    "$DOCKER" run -d --name "$name" --network host --security-opt "seccomp=$profile" \
        -e BOSON_HTTP_LISTEN="127.0.0.1:$HTTP" -e BOSON_TURN_LISTEN="127.0.0.1:$TURN" \
        -e BOSON_RELAY_LISTEN="127.0.0.1:$RELAY" -e BOSON_NO_RELAY_QUIC=true \
        -e BOSON_RELAY_PORTS="$RANGE" -e BOSON_PUBLIC_HOST=127.0.0.1 -e BOSON_WORKERS=2 \
        "$@" "$image" >/dev/null
    wait_until 120 "$name: /health/ready" curl -sf "http://127.0.0.1:$HTTP/health/ready" \
        || true
}

healthy() { [ "$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$1")" = healthy ]; }

backends() { metric "$1" '^bosonserver_dataplane_worker_info' | grep -o 'backend="[a-z_]*"' | sort | uniq -c | tr -s ' '; }

check_runtime() {
    local secret name="$PREFIX-runtime"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    make_profiles

    say "runtime image, with deploy/seccomp's profile"
    run_server "$name" "$WORK/seccomp/io-uring.json" bosonserver \
        -e JWT_SECRET="$secret" -e TURN_STATIC_SECRET="$secret" \
        -e BOSON_DANGER_ALLOW_LOOPBACK_PEERS=true -v "$PREFIX-runtime:/data"
    wait_until 60 "the runtime container's HEALTHCHECK" healthy "$name" \
        || { container_logs "$name"; exit 1; }
    say "  /health/ready answers and the container is healthy"

    local id
    id=$(register "$HTTP")
    node_exists "$HTTP" "$id" "$(token)" || die "the registered node $id is not in the registry"
    say "  a node registered ($id)"

    [ "$(backends "$HTTP")" = " 2 backend=\"io_uring\"" ] \
        || { container_logs "$name"; die "with the io_uring profile the workers run $(backends "$HTTP")"; }
    say "  both workers use io_uring"

    local peer
    peer=$(free_udp)
    turnutils_peer -L 127.0.0.1 -p "$peer" >/dev/null 2>&1 &
    local peer_pid=$!
    wait_until 10 "turnutils_peer on $peer" sh -c "ss -Hlun 'sport = :$peer' | grep -q ."
    timeout 60 turnutils_uclient -W "$secret" -e 127.0.0.1 -r "$peer" -p "$TURN" -m 2 -n 50 -z 5 \
        127.0.0.1 >"$WORK/uclient.log" 2>&1 || true
    kill "$peer_pid" 2>/dev/null || true
    local sent received
    # (`|| true`: without a figure grep fails the pipe, and the check below must say so.)
    sent=$(grep -o 'tot_send_msgs=[0-9]*' "$WORK/uclient.log" | tail -n 1 | cut -d= -f2 || true)
    received=$(grep -o 'tot_recv_msgs=[0-9]*' "$WORK/uclient.log" | tail -n 1 | cut -d= -f2 || true)
    if [ "${sent:-0}" != 100 ] || [ "${received:-0}" != 100 ]; then
        tail -n 15 "$WORK/uclient.log" >&2
        die "turnutils_uclient through the container: sent ${sent:-none}, received ${received:-none} of 100"
    fi
    say "  turnutils_uclient relayed 100 of 100 messages through the container to a loopback peer"

    local started=$SECONDS
    "$DOCKER" stop -t 45 "$name" >/dev/null
    local took=$((SECONDS - started)) code
    code=$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$name")
    [ "$code" = 0 ] || { container_logs "$name"; die "docker stop: exit status $code"; }
    [ "$took" -lt 45 ] || die "docker stop took $took s, the whole grace period"
    # (Not `docker logs | grep -q`: grep's early exit fails the pipe under pipefail.)
    local logs
    logs=$("$DOCKER" logs "$name" 2>&1)
    grep -q 'draining: no new allocations' <<<"$logs" && grep -q 'bosonserver: stopped' <<<"$logs" \
        || { container_logs "$name"; die "docker stop: the server did not drain and stop"; }
    say "  docker stop drained and exited 0 in $took s (grace period 45 s; $(grep -o 'drained\|drain timeout' <<<"$logs" | head -n 1))"
    "$DOCKER" rm "$name" >/dev/null

    say "runtime image, with a profile that blocks io_uring"
    run_server "$name" "$WORK/seccomp/base.json" bosonserver -v "$PREFIX-runtime:/data"
    wait_until 60 "the runtime container's HEALTHCHECK (epoll)" healthy "$name" \
        || { container_logs "$name"; exit 1; }
    [ "$(backends "$HTTP")" = " 2 backend=\"epoll\"" ] \
        || { container_logs "$name"; die "without io_uring the workers run $(backends "$HTTP")"; }
    local warnings
    warnings=$("$DOCKER" logs "$name" 2>&1 | grep -c 'io_uring unavailable, falling back to epoll' || true)
    [ "$warnings" = 1 ] || { container_logs "$name"; die "the epoll fallback logged $warnings warnings, not one"; }
    say "  both workers use epoll, with one warning"
    "$DOCKER" stop -t 45 "$name" >/dev/null
    "$DOCKER" rm "$name" >/dev/null
    "$DOCKER" volume rm "$PREFIX-runtime" >/dev/null
}

check_allinone() {
    local name="$PREFIX-allinone" port
    for port in 15432 16379; do
        ! ss -Hltn "sport = :$port" | grep -q . \
            || die "the allinone image's loopback port $port is taken on this host"
    done
    say "allinone image"
    run_server "$name" unconfined bosonserver:allinone -v "$PREFIX-allinone:/data"
    wait_until 120 "the allinone container's HEALTHCHECK" healthy "$name" \
        || { container_logs "$name" 80; exit 1; }
    "$DOCKER" exec "$name" sh -c 'pg_isready -q -h 127.0.0.1 -p 15432 -d boson' 2>/dev/null \
        || "$DOCKER" exec "$name" sh -c '"$(ls -d /usr/lib/postgresql/*/bin)/pg_isready" -q -h 127.0.0.1 -p 15432' \
        || die "no PostgreSQL inside the allinone container"
    [ "$("$DOCKER" exec "$name" redis-cli -p 16379 ping)" = PONG ] \
        || die "no Redis inside the allinone container"
    say "  healthy, with PostgreSQL and Redis inside"
    local id token
    id=$(register "$HTTP")
    token=$(token)
    # Stored in the PostgreSQL inside, not in a SQLite file.
    [ "$("$DOCKER" exec "$name" runuser -u postgres -- psql -h /run/postgresql -p 15432 -d boson \
        -tAc "SELECT count(*) FROM nodes WHERE node_id = '$id'")" = 1 ] \
        || die "the node $id is not in the allinone container's PostgreSQL"
    say "  a node registered, stored in the PostgreSQL inside"
    "$DOCKER" restart -t 45 "$name" >/dev/null
    wait_until 120 "/health/ready after docker restart" curl -sf "http://127.0.0.1:$HTTP/health/ready" \
        || { container_logs "$name" 80; exit 1; }
    node_exists "$HTTP" "$id" "$token" \
        || die "the node $id registered before docker restart is gone after it"
    say "  the node registered before docker restart is still there after it"
    "$DOCKER" rm -f "$name" >/dev/null
    "$DOCKER" volume rm "$PREFIX-allinone" >/dev/null
}

# The specification's quick start, word for word, in a fresh copy of the repository (the
# tracked files as they are in this tree), so no developer's .env is touched.
check_compose() {
    local dir="$WORK/quickstart" port
    for port in 8080 8443 9090 3000 5432 6379; do
        ! ss -Hltn "sport = :$port" | grep -q . \
            || die "the quick start's port $port/tcp is taken on this host"
    done
    ! ss -Hlun 'sport = :3478' | grep -q . || die "the quick start's port 3478/udp is taken on this host"
    for image in postgres:17-bookworm redis:7.4-bookworm prom/prometheus:v3.5.0 grafana/grafana:12.1.0; do
        grep -q "image: $image\$" docker-compose.yml || die "docker-compose.yml no longer uses $image: update the stand-ins"
        stand_in "$image"
    done
    mkdir -p "$dir"
    git ls-files -z | tar --null -T - -c | tar -C "$dir" -x
    (
        cd "$dir"
        say "quick start: cp .env.example .env; fill in POSTGRES_PASSWORD, JWT_SECRET, TURN_STATIC_SECRET"
        cp .env.example .env
        for name in POSTGRES_PASSWORD JWT_SECRET TURN_STATIC_SECRET; do
            grep -q "^#$name=" .env || die ".env.example has no '#$name=' line to fill in"
            sed -i "s|^#$name=.*|$name=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')|" .env
        done
        say "quick start: docker build -t bosonserver ."
        "$DOCKER" build -t bosonserver . >"$WORK/build-quickstart.log" 2>&1 \
            || { tail -n 30 "$WORK/build-quickstart.log" >&2; die "the quick start's docker build failed"; }
        say "quick start: docker-compose up -d"
        "$COMPOSE" up -d >"$WORK/compose-up.log" 2>&1 \
            || { cat "$WORK/compose-up.log" >&2; die "docker-compose up -d failed"; }
    )
    local project
    project=$(basename "$dir")
    all_healthy() {
        local statuses
        statuses=$("$DOCKER" ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Status}}')
        [ "$(echo "$statuses" | grep -c '(healthy)')" = 5 ]
    }
    if ! wait_until 240 "all five compose services healthy" all_healthy; then
        "$DOCKER" ps -a --filter "label=com.docker.compose.project=$project" >&2
        (cd "$dir" && "$COMPOSE" logs --tail 30 >&2)
        exit 1
    fi
    say "  all five services are healthy"
    # The server raised its soft open-file limit to the hard one dockerd granted.
    local pid soft hard
    pid=$("$DOCKER" inspect --format '{{.State.Pid}}' "${project}_bosonserver_1")
    read -r soft hard < <(awk '/^Max open files/ {print $4, $5}' "/proc/$pid/limits")
    [ "$soft" = "$hard" ] || die "the server's open-file limit is $soft of $hard: not raised"
    say "  the server uses its whole open-file limit ($soft)"
    local id
    id=$(register 8080)
    node_exists 8080 "$id" "$(token)" || die "a node registered through the stack is not in its registry"
    [ "$("$DOCKER" exec "${project}_postgres_1" psql -U boson -d boson \
        -tAc "SELECT count(*) FROM nodes WHERE node_id = '$id'")" = 1 ] \
        || die "the node $id is not in the stack's PostgreSQL"
    say "  a node registered, stored in the stack's PostgreSQL"
    scraped() {
        curl -sf 'http://127.0.0.1:9090/api/v1/query?query=bosonserver_dataplane_packets_received_total' \
            | python3 -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
cores = {r["metric"].get("core") for r in result if r["metric"].get("job") == "bosonserver"}
sys.exit(0 if cores and None not in cores else 1)'
    }
    wait_until 60 "Prometheus scraping the per-core dataplane metrics" scraped \
        || { curl -s 'http://127.0.0.1:9090/api/v1/targets' >&2; exit 1; }
    say "  Prometheus scrapes bosonserver's per-core metrics"
    (cd "$dir" && "$COMPOSE" down -v >/dev/null 2>&1) || die "docker-compose down -v failed"
}

run() {
    [ "$(id -u)" = 0 ] || die "needs root"
    "$DOCKER" info >/dev/null 2>&1 || die "no dockerd answers: run '$0 up' first"
    local started=$SECONDS
    WORK=$(mktemp -d /tmp/boson-container-test.XXXXXX)
    : >"$WORK/made-images"
    # Replaces the caller's EXIT trap, so it runs that too (`all`: down).
    trap 'cleanup_run; $AFTER_RUN' EXIT
    base_image
    rust_image
    build_images
    check_runtime
    check_allinone
    check_compose
    trap - EXIT
    cleanup_run
    echo "container-test: PASSED: images built and run, allinone kept its data, compose quick start healthy ($((SECONDS - started)) s)"
}

# What run made on a daemon it shares: its containers, volumes and compose project. (On a
# daemon `up` started, `down` removes everything with the daemon's directory.)
cleanup_run() {
    [ -n "${WORK:-}" ] || return 0
    "$DOCKER" ps -aq --filter "name=^$PREFIX-" | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
    "$DOCKER" volume ls -q --filter "name=^$PREFIX-" | xargs -r "$DOCKER" volume rm >/dev/null 2>&1 || true
    if [ -d "$WORK/quickstart" ]; then
        (cd "$WORK/quickstart" && "$COMPOSE" down -v >/dev/null 2>&1) || true
    fi
    rm -rf "$WORK"
}

case "${1:-all}" in
    up) up ;;
    run) run ;;
    down) down ;;
    all)
        AFTER_RUN=down
        trap down EXIT
        up
        run
        down
        ;;
    *)
        echo "usage: $0 [up|run|down|all]" >&2
        exit 2
        ;;
esac
