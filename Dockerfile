# Targets:
#   (default) runtime  the server alone, non-root, on debian:bookworm-slim
#             allinone the server + PostgreSQL + Redis under supervisord, for one-container setups
#
#   docker build -t bosonserver .
#   docker build --target allinone -t bosonserver:allinone .
#
# deploy/README.md explains how to run both; deploy/check.sh keeps RUST_VERSION equal to
# rust-toolchain.toml.

# Keep in step with rust-toolchain.toml (deploy/check.sh fails otherwise).
ARG RUST_VERSION=1.95.0
# The builder and the runtime must share a Debian release: the binary links the builder's glibc.
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# A global ARG is visible inside a stage only once the stage declares it again (the cache id).
ARG DEBIAN_RELEASE
WORKDIR /src
# The whole context: .dockerignore keeps out secrets, data and build output but no workspace
# member, so a new member needs no edit here (deploy/check.sh fails if one would not reach
# the context). It also keeps out rust-toolchain.toml: the image already is that toolchain,
# and the file's extra components (rustfmt, clippy) would make rustup download them mid-build.
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds, so a source change
# recompiles only our crates. The binary is copied out because a cache mount is not part of
# the image. Debug info stays (the release profile keeps it for profiling) but is compressed.
RUN --mount=type=cache,id=boson-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=boson-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=boson-target-${DEBIAN_RELEASE},target=/src/target,sharing=locked \
    cargo build --release --locked -p bosonserver \
 && mkdir -p /out \
 && objcopy --compress-debug-sections=zlib target/release/bosonserver /out/bosonserver \
 && /out/bosonserver --version

# ---- allinone: bosonserver + PostgreSQL + Redis in one container ----
FROM debian:${DEBIAN_RELEASE}-slim AS allinone
# Debian's postinst creates and starts a "main" cluster; ours lives on the /data volume
# instead, created on first start by the entrypoint, so the image's one is dropped.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql redis-server supervisor \
 && for cluster in $(pg_lsclusters -h | awk '{print $1 "/" $2}'); do \
        pg_dropcluster --stop "${cluster%/*}" "${cluster#*/}"; \
    done \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 boson \
 && useradd --no-log-init --uid 10001 --gid boson --home-dir /data/bosonserver --no-create-home \
        --shell /usr/sbin/nologin boson
COPY --from=builder /out/bosonserver /usr/local/bin/bosonserver
COPY deploy/allinone/supervisord.conf /etc/supervisor/bosonserver.conf
COPY --chmod=0755 deploy/allinone/entrypoint.sh /usr/local/bin/boson-allinone
COPY --chmod=0755 deploy/allinone/start-bosonserver.sh /usr/local/lib/boson/start-bosonserver
COPY --chmod=0755 deploy/allinone/exit-on-fatal.py /usr/local/lib/boson/exit-on-fatal
# PostgreSQL and Redis listen on loopback only, on 15432 and 16379 rather than their usual
# ports, so under --network host they do not clash with a PostgreSQL or Redis the host runs
# itself. The start script fills in the database password generated on first start.
ENV BOSON_HTTP_LISTEN=0.0.0.0:8080 \
    BOSON_TURN_LISTEN=0.0.0.0:3478 \
    BOSON_RELAY_LISTEN=0.0.0.0:8443 \
    BOSON_DATA_DIR=/data/bosonserver \
    DATABASE_URL=postgres://boson@127.0.0.1:15432/boson \
    REDIS_URL=redis://127.0.0.1:16379/
VOLUME ["/data"]
# API, STUN/TURN, the node relay (WebSocket on tcp, QUIC to come on udp) and the TURN relay
# ports (publishing 16k ports through docker-proxy is slow: prefer --network host, see
# deploy/README.md).
EXPOSE 8080/tcp 3478/udp 3478/tcp 5349/tcp 8443/tcp 8443/udp 49152-65535/udp
# Ready means the database and Redis answer too, which is what "healthy" should mean here.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/bosonserver", "healthcheck"]
# supervisord runs as root to start each service as its own user; none of them stays root.
ENTRYPOINT ["/usr/local/bin/boson-allinone"]

# ---- runtime: the server alone (last, so it is the default target) ----
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# volumes keep their ownership across image rebuilds.
RUN groupadd --gid 10001 boson \
 && useradd --no-log-init --uid 10001 --gid boson --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin boson \
 && mkdir /data \
 && chown boson:boson /data
COPY --from=builder /out/bosonserver /usr/local/bin/bosonserver
# Inside a container the listeners must not be on loopback. /data holds the SQLite default
# and, when JWT_SECRET/TURN_STATIC_SECRET are unset, the generated development secrets.
ENV BOSON_HTTP_LISTEN=0.0.0.0:8080 \
    BOSON_TURN_LISTEN=0.0.0.0:3478 \
    BOSON_RELAY_LISTEN=0.0.0.0:8443 \
    BOSON_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# API, STUN/TURN, the node relay (WebSocket on tcp, QUIC to come on udp) and the TURN relay
# ports (publishing 16k ports through docker-proxy is slow: prefer --network host, see
# deploy/README.md).
EXPOSE 8080/tcp 3478/udp 3478/tcp 5349/tcp 8443/tcp 8443/udp 49152-65535/udp
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/bosonserver", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bosonserver"]
CMD ["run"]
