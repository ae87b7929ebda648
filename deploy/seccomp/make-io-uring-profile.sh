#!/bin/sh
# Writes io-uring.json beside this script: Docker's default seccomp profile plus
# io_uring_setup, io_uring_enter and io_uring_register, which Docker 25 took out of its
# default (and without which bosonserver falls back to epoll, logging one warning).
#
#   deploy/seccomp/make-io-uring-profile.sh                 # profile of the local daemon's version
#   deploy/seccomp/make-io-uring-profile.sh 28.2.2          # of that Docker version
#   deploy/seccomp/make-io-uring-profile.sh --from FILE     # from a copy of profiles/seccomp/default.json
#
# The profile is derived rather than committed so it matches the daemon it is used with and
# so this repository does not carry a copy of Docker's file. Everything else in it stays as
# Docker wrote it; the added rule is the only difference.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out="$here/io-uring.json"

if [ "${1:-}" = "--from" ]; then
    [ $# -eq 2 ] || { echo "usage: $0 --from FILE" >&2; exit 2; }
    source_file=$2
else
    version=${1:-$(docker version --format '{{.Server.Version}}' 2>/dev/null || true)}
    if [ -z "$version" ]; then
        echo "cannot ask the Docker daemon for its version; pass it: $0 VERSION" >&2
        exit 1
    fi
    url="https://raw.githubusercontent.com/moby/moby/v${version#v}/profiles/seccomp/default.json"
    source_file=$(mktemp)
    trap 'rm -f "$source_file"' EXIT
    echo "fetching $url" >&2
    curl -fsSL --retry 3 -o "$source_file" "$url"
fi

python3 - "$source_file" "$out" <<'PY'
import json
import os
import sys

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]

source, out = sys.argv[1], sys.argv[2]
with open(source, encoding="utf-8") as f:
    profile = json.load(f)

# Refuse anything that does not look like an allowlist profile: adding an allow rule to a
# profile whose default is to allow would silently change nothing and prove nothing.
if profile.get("defaultAction") not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
    sys.exit(f"{source}: defaultAction {profile.get('defaultAction')!r} is not a deny default")
rules = profile.get("syscalls")
if not isinstance(rules, list) or not rules:
    sys.exit(f"{source}: no syscalls list")

def unconditional_allow(rule):
    return (rule.get("action") == "SCMP_ACT_ALLOW"
            and not rule.get("args") and not rule.get("includes") and not rule.get("excludes"))

allowed = {name for rule in rules if unconditional_allow(rule) for name in rule.get("names", [])}
missing = [name for name in IO_URING if name not in allowed]
if missing:
    rules.append({
        "names": missing,
        "action": "SCMP_ACT_ALLOW",
        "comment": "bosonserver: io_uring for the dataplane (deploy/seccomp/make-io-uring-profile.sh)",
    })

tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(profile, f, indent="\t")
    f.write("\n")
os.replace(tmp, out)
print(f"wrote {out} ({'added ' + ', '.join(missing) if missing else 'io_uring was already allowed'})",
      file=sys.stderr)
PY
