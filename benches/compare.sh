#!/usr/bin/env bash
# benches/compare.sh [--rounds N] [--keep] [--bench PATH] REV_A REV_B [-- RUN_ARGS...]
#
# Two revisions of bosonserver, side by side in one run: builds a release `bosonserver` of each
# (in git worktrees outside the tree, under $BOSON_COMPARE_DIR, default /tmp/boson-compare,
# sharing one CARGO_TARGET_DIR so the dependencies build once), and a release `boson-bench` of
# the tree this script sits in (the same generator for both sides; --bench PATH uses that
# boson-bench instead). Then N rounds (default 3)
# of `boson-bench run --rounds 1 RUN_ARGS --bosonserver <bin>`, A B A B ..., and a table: per
# scenario and round, delivered per second and CPU ns per message/packet of each side, and the
# ratio B / A; then the median of the rounds' ratios. The machine is shared and noisy, which is
# why the two sides alternate and every round is printed: read the rounds, not only the median.
#
# RUN_ARGS default to the WebSocket relay at max rate:
#   --ws --ws-servers boson-ws --duration 3s --loads max --sizes 1200,100
# Any `boson-bench run` scenario works, e.g. `-- --servers boson-uring,boson-epoll --loads max`.
#
# Builds run under `nice -n 10`; the rounds do not (the runner pins the server and the
# generator with taskset). The worktrees are removed at the end unless --keep; the binaries
# and each round's JSON report stay in $BOSON_COMPARE_DIR.
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

rounds=3
keep=false
bench_given=
revs=()
run_args=()
while (($#)); do
    case "$1" in
    --rounds)
        [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || usage
        rounds=$2
        shift 2
        ;;
    --keep)
        keep=true
        shift
        ;;
    --bench)
        [[ $# -ge 2 && -x "$2" ]] || usage
        bench_given=$(realpath "$2")
        shift 2
        ;;
    --)
        shift
        run_args=("$@")
        break
        ;;
    -h | --help) usage ;;
    -*) usage ;;
    *)
        revs+=("$1")
        shift
        ;;
    esac
done
((${#revs[@]} == 2)) || usage
if ((${#run_args[@]} == 0)); then
    run_args=(--ws --ws-servers boson-ws --duration 3s --loads max --sizes 1200,100)
fi

root=$(cd "$(dirname "$0")/.." && pwd)
work=${BOSON_COMPARE_DIR:-/tmp/boson-compare}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$work/target}
mkdir -p "$work/bin"
out=$(mktemp -d "$work/run-XXXXXX")

shas=()
for rev in "${revs[@]}"; do
    sha=$(git -C "$root" rev-parse --verify --quiet "$rev^{commit}") || {
        echo "compare.sh: not a revision: $rev" >&2
        exit 2
    }
    shas+=("$sha")
done

# The worktrees this run made, one a line (build_rev runs in a subshell).
worktrees="$out/worktrees"
: >"$worktrees"
cleanup() {
    if ! $keep; then
        while read -r wt; do
            git -C "$root" worktree remove --force "$wt" 2>/dev/null || true
        done <"$worktrees"
    fi
}
trap cleanup EXIT

# bosonserver of one revision, built in its own worktree: prints the binary's path.
build_rev() {
    local sha=$1 wt="$work/rev-${1:0:12}" bin="$work/bin/bosonserver-$1"
    if [[ -x "$bin" ]]; then
        echo "$bin"
        return
    fi
    if [[ ! -d "$wt" ]]; then
        git -C "$root" worktree add --detach "$wt" "$sha" >&2
    fi
    echo "$wt" >>"$worktrees"
    echo "compare.sh: building bosonserver at ${sha:0:12} (release)" >&2
    # Both packages, as for the bench below: one feature set, so dependencies build once.
    (cd "$wt" && nice -n 10 cargo build --release --locked -p bosonserver -p boson-bench >&2)
    cp "$CARGO_TARGET_DIR/release/bosonserver" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    echo "$bin"
}

bin_a=$(build_rev "${shas[0]}")
bin_b=$(build_rev "${shas[1]}")
bench="$work/bin/boson-bench-$$"
if [[ -n "$bench_given" ]]; then
    cp "$bench_given" "$bench"
else
    echo "compare.sh: building boson-bench of $root (release)" >&2
    (cd "$root" && nice -n 10 cargo build --release --locked -p bosonserver -p boson-bench >&2)
    cp "$CARGO_TARGET_DIR/release/boson-bench" "$bench"
fi

echo "A = ${revs[0]} (${shas[0]:0:12}), B = ${revs[1]} (${shas[1]:0:12})"
echo "each round: boson-bench run --rounds 1 ${run_args[*]}"
status=0
for ((round = 1; round <= rounds; round++)); do
    for side in A B; do
        if [[ $side == A ]]; then bin=$bin_a; else bin=$bin_b; fi
        echo "round $round/$rounds: $side" >&2
        "$bench" run --rounds 1 --quiet --bosonserver "$bin" --json "$out/$side-$round.json" \
            "${run_args[@]}" >"$out/$side-$round.log" 2>&1 || {
            echo "round $round, $side: the run failed (see $out/$side-$round.log)" >&2
            status=1
        }
    done
done
rm -f "$bench"

# One line per record: side round server size rate delivered cpu_ns (TURN and node relays).
for f in "$out"/[AB]-*.json; do
    [[ -f "$f" ]] || continue
    name=$(basename "$f" .json)
    jq -r --arg side "${name%%-*}" --arg round "${name#*-}" '
        .records[] | select(.outcome != null) |
        [$side, $round, .server, (.packet // .payload), .rate,
         (.outcome.delivered_mps // .outcome.delivered_pps),
         (.outcome.cpu_ns_per_message // .outcome.cpu_ns_per_packet // -1)] | @tsv' "$f"
done >"$out/records.tsv"

awk -F'\t' '
    { key = $3 "\t" $4 " B\t" $5; r = $2 + 0
      keys[key] = 1; del[$1, key, r] = $6; cpu[$1, key, r] = $7
      if (r > maxr) maxr = r }
    function median(arr, n,    i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
            if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
        return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
    }
    END {
        printf "%-12s %-7s %-5s %5s %12s %12s %8s %9s %9s %8s\n", "server", "size", "load",
            "round", "A per s", "B per s", "B/A", "A ns/msg", "B ns/msg", "B/A"
        for (key in keys) {
            split(key, k, "\t"); n = 0; m = 0
            for (r = 1; r <= maxr; r++) {
                if (!((("A", key, r) in del) && (("B", key, r) in del))) continue
                a = del["A", key, r]; b = del["B", key, r]
                ca = cpu["A", key, r]; cb = cpu["B", key, r]
                ratio = a > 0 ? b / a : 0; cratio = ca > 0 ? cb / ca : 0
                ratios[++n] = ratio; if (ca > 0) cratios[++m] = cratio
                printf "%-12s %-7s %-5s %5d %12.0f %12.0f %8.3f %9.0f %9.0f %8.3f\n", k[1], k[2],
                    k[3], r, a, b, ratio, ca, cb, cratio
            }
            if (n) printf "%-12s %-7s %-5s %5s %12s %12s %8.3f %9s %9s %8s\n", k[1], k[2], k[3],
                "median", "", "", median(ratios, n), "", "", m ? sprintf("%.3f", median(cratios, m)) : "-"
        }
    }' "$out/records.tsv"
echo "reports: $out"
exit "$status"
