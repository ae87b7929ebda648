#!/usr/bin/env bash
# CI check of the deployment files: every YAML/JSON under deploy/ parses, the compose file,
# Kubernetes manifests, systemd unit and Dockerfile have the structure they promise, and
# every environment variable, metric and label they name exists in the Rust sources
# (.env.example must list exactly the variables the binary reads). Exits 1 on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

has_yaml() { "$1" -c 'import yaml' 2>/dev/null; }

python=python3
if ! has_yaml "$python"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "deploy/check: installing python3-yaml from Debian's packages" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null
        # Debian's package serves Debian's interpreter, which need not be the python3 on PATH.
        if ! has_yaml "$python" && has_yaml /usr/bin/python3; then
            python=/usr/bin/python3
        fi
    fi
    if ! has_yaml "$python"; then
        echo "deploy/check: installing PyYAML with pip" >&2
        "$python" -m pip install --quiet --user pyyaml
    fi
    has_yaml "$python" || { echo "deploy/check: PyYAML is missing and could not be installed" >&2; exit 1; }
fi

exec "$python" deploy/check.py
