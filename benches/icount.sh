#!/usr/bin/env bash
# benches/icount.sh [--bless]
#
# The deterministic performance guard CI runs: instructions per relayed packet of the
# dataplane's hot paths, counted by valgrind's callgrind in a release build of
# `boson-icount` (benches/icount: the TURN core's ChannelData client->peer and peer->client
# through `turn::Server`, and the relay hub's SEND to a local session, in process, no
# sockets; and the WebSocket relay shell of a real worker relaying SENDs between two nodes
# over loopback TCP, in process), at 100 and 1200 bytes, compared with the committed baselines in
# benches/icount/baseline.txt. Fails when a path costs more than the baseline plus the
# tolerance; a path that became cheaper by more than the tolerance is reported, so that the
# baseline is lowered with the change (--bless writes the measured counts as the baseline).
#
# Installs valgrind from Debian (apt-get) when it is missing and this runs as root (CI);
# otherwise asks for it.
set -euo pipefail
cd "$(dirname "$0")/.."

# A change may cost this much more per packet, in percent, before the guard fails. Counts are
# exact for one binary; what moves them without a code change is the compiler (pinned in
# rust-toolchain.toml) and glibc's choice of memcpy for the CPU (the 1200-byte paths copy).
tolerance=3
baseline=benches/icount/baseline.txt
iterations=20000
# Frames of the shorter ws-shell run (the longer relays twice as many).
shell_frames=4096
bless=false
case "${1:-}" in
--bless) bless=true ;;
"") ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

if ! command -v valgrind >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "icount: installing valgrind (Debian)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    else
        echo "icount: valgrind is missing: apt-get install valgrind" >&2
        exit 1
    fi
fi

cargo build --release --locked -p boson-icount
bin="${CARGO_TARGET_DIR:-target}/release/boson-icount"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One callgrind run: prints "CALLS TOTAL" (measured calls, instructions collected).
count() {
    local scenario=$1 size=$2 iterations=$3 toggle=$4 out="$work/$1-$2-$3"
    local calls total
    calls=$(valgrind --tool=callgrind --callgrind-out-file="$out.cg" --collect-atstart=no \
        "--toggle-collect=$toggle" \
        "$bin" "$scenario" "$size" "$iterations" 2>"$out.log" | sed -n 's/^calls //p') || {
        cat "$out.log" >&2
        echo "icount: $scenario $size failed" >&2
        return 1
    }
    total=$(sed -n 's/^summary: //p' "$out.cg")
    if [[ -z "$calls" || -z "$total" || "$total" == 0 ]]; then
        cat "$out.log" >&2
        echo "icount: no count for $scenario $size" >&2
        return 1
    fi
    echo "$calls $total"
}

measured=()
for scenario in turn-to-peer turn-to-client hub-local cross-core; do
    for size in 100 1200; do
        read -r calls total < <(count "$scenario" "$size" "$iterations" 'boson_icount::measure::*') ||
            exit 1
        [[ -n "${total:-}" ]] || exit 1
        measured+=("$scenario $size $((total / calls))")
    done
done
# The relay shell on a real worker (loopback TCP, in process): instructions inside
# RelayShell::turn, on two lengths of run; the difference over the difference in frames, so
# the dataplane's start, the handshakes and the warm-up cancel.
for size in 100 1200; do
    shell_toggle='boson_dataplane::relay::shell::<impl boson_dataplane::relay::RelayShell>::turn'
    read -r calls1 total1 < <(count ws-shell "$size" "$shell_frames" "$shell_toggle") || exit 1
    read -r calls2 total2 < <(count ws-shell "$size" "$((2 * shell_frames))" "$shell_toggle") ||
        exit 1
    [[ -n "${total1:-}" && -n "${total2:-}" ]] || exit 1
    measured+=("ws-shell $size $(((total2 - total1) / (calls2 - calls1)))")
done

if $bless; then
    {
        echo "# Instructions per relayed packet (callgrind, release build of boson-icount):"
        echo "# scenario, packet bytes, instructions. Written by benches/icount.sh --bless."
        printf '%s\n' "${measured[@]}"
    } >"$baseline"
    printf '%s\n' "${measured[@]}"
    echo "icount: baseline written to $baseline"
    exit 0
fi

status=0
printf '%-16s %6s %12s %12s %8s\n' scenario bytes baseline measured change
for line in "${measured[@]}"; do
    read -r scenario size count <<<"$line"
    base=$(awk -v s="$scenario" -v z="$size" '$1 == s && $2 == z { print $3 }' "$baseline")
    if [[ -z "$base" ]]; then
        printf '%-16s %6s %12s %12s %8s\n' "$scenario" "$size" - "$count" "no baseline"
        status=1
        continue
    fi
    change=$(awk -v m="$count" -v b="$base" 'BEGIN { printf "%+.1f%%", (m - b) * 100 / b }')
    verdict=""
    if ((count * 100 > base * (100 + tolerance))); then
        verdict="  MORE than the baseline + ${tolerance}%"
        status=1
    elif ((count * 100 < base * (100 - tolerance))); then
        verdict="  cheaper: lower the baseline (benches/icount.sh --bless)"
    fi
    printf '%-16s %6s %12s %12s %8s%s\n' "$scenario" "$size" "$base" "$count" "$change" "$verdict"
done
if ((status)); then
    echo "icount: a hot path costs more instructions per packet than $baseline allows" >&2
fi
exit "$status"
