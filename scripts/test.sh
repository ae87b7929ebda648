#!/usr/bin/env bash
# The whole test suite: `scripts/test.sh [cargo test args]`.
#
# Starts a throw-away PostgreSQL and Redis on loopback for the storage tests (installing them
# from Debian's packages first when they are missing and this runs as root), runs
# `cargo test --workspace`, and stops them again. If BOSON_TEST_DATABASE_URL and
# BOSON_TEST_REDIS_URL are already set, those servers are used instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh
start_test_services

cargo test --workspace --locked "$@"
