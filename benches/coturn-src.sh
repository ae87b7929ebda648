#!/usr/bin/env bash
# benches/coturn-src.sh [--repo URL|PATH] [--rev REV] [--out DIR]
#
# Builds coturn's turnserver from its source, outside the tree's sources, so that
# `boson-bench run --servers ...,coturn-src --sink-per-allocation` can measure it beside
# Debian's coturn 4.6.1 with the batching options of current coturn (`--udp-gso`,
# `--multiplex-peer`; recvmmsg is on by default). Nothing of coturn is committed: the clone
# and the build live under DIR (default target/coturn, which git ignores):
#
#   DIR/src               the git checkout of REV
#   DIR/build             cmake's build tree (Release)
#   DIR/bin/turnserver    the binary (what `run --coturn-src` defaults to)
#
# --repo   where to clone from (default https://github.com/coturn/coturn.git; a local clone
#          or mirror works, e.g. on a machine without access to GitHub)
# --rev    the revision (default 8024aa6, coturn 4.17.1, the one measured in RESULTS.md)
#
# Needs git, a C compiler, cmake, pkg-config, libevent and OpenSSL headers: as root with
# apt-get (Debian) it installs what is missing (cmake pkg-config libevent-dev libssl-dev
# libmicrohttpd-dev, which coturn's Prometheus exporter needs at build time);
# otherwise it names them.
set -euo pipefail

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
repo=https://github.com/coturn/coturn.git
rev=8024aa6
out=$root/target/coturn
while (($#)); do
    case "$1" in
    --repo)
        [[ $# -ge 2 ]] || usage
        repo=$2
        shift 2
        ;;
    --rev)
        [[ $# -ge 2 ]] || usage
        rev=$2
        shift 2
        ;;
    --out)
        [[ $# -ge 2 ]] || usage
        out=$2
        shift 2
        ;;
    *) usage ;;
    esac
done

packages=(cmake pkg-config libevent-dev libssl-dev libmicrohttpd-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "coturn-src: installing ${missing[*]} (Debian)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "coturn-src: missing packages: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

mkdir -p "$out/bin"
if [[ ! -d "$out/src/.git" ]]; then
    git clone --quiet --no-checkout "$repo" "$out/src"
fi
if ! git -C "$out/src" rev-parse --verify --quiet "$rev^{commit}" >/dev/null; then
    git -C "$out/src" fetch --quiet "$repo" "$rev" || git -C "$out/src" fetch --quiet --tags "$repo"
fi
git -C "$out/src" -c advice.detachedHead=false checkout --quiet --force "$rev"
commit=$(git -C "$out/src" rev-parse --short HEAD)

echo "coturn-src: building coturn at $commit (Release) in $out/build" >&2
nice -n 10 cmake -S "$out/src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 || {
    tail -n 30 "$out/cmake.log" >&2
    exit 1
}
nice -n 10 cmake --build "$out/build" --target turnserver -j "$(nproc)" >"$out/build.log" 2>&1 || {
    tail -n 30 "$out/build.log" >&2
    exit 1
}
binary=$(find "$out/build" -type f -name turnserver -perm -u+x | head -n 1)
[[ -n "$binary" ]] || {
    echo "coturn-src: the build made no turnserver binary" >&2
    exit 1
}
cp "$binary" "$out/bin/turnserver.tmp"
mv "$out/bin/turnserver.tmp" "$out/bin/turnserver"
echo "$commit" >"$out/bin/REVISION"
echo "coturn-src: $out/bin/turnserver (coturn $commit)"
