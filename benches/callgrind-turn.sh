#!/usr/bin/env bash
# callgrind-turn.sh BIN TAG SIZE RATE SECS: a bosonserver binary BIN (one epoll worker) under
# callgrind while boson-bench drives TURN ChannelData at it (SIZE bytes, RATE pps or max, SECS
# seconds); prints the instructions per delivered packet of each busy thread. Counts are
# deterministic enough to compare two binaries on a busy machine; run them alternately.
# BENCH=path/to/boson-bench (default target/release/boson-bench); needs valgrind, jq, curl.
set -euo pipefail
bin=$1 tag=$2 size=$3 rate=$4 secs=$5
bench=${BENCH:-target/release/boson-bench}
d=${TMPDIR:-/tmp}/callgrind-turn-$tag-$size-$rate
rm -rf "$d"; mkdir -p "$d/data"
H=$((20000 + RANDOM % 5000)); T=$((H + 2)); P0=$((30000 + RANDOM % 5000))
RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$d/cg.out" \
    "$bin" run --http-listen 127.0.0.1:$H --relay-listen 127.0.0.1:$((H + 1)) --turn-listen 127.0.0.1:$T \
    --relay-ports $P0-$((P0 + 100)) --workers 1 --no-pin --io-backend epoll --turn-static-secret benchsecret \
    --danger-allow-loopback-peers --data-dir "$d/data" --public-host 127.0.0.1 --relay-ip 127.0.0.1 \
    >"$d/server.log" 2>&1 &
vpid=$!
for _ in $(seq 1 240); do curl -s -o /dev/null http://127.0.0.1:$H/health && break; sleep 0.5; done
sleep 2
callgrind_control -z $vpid >/dev/null
timeout 300 taskset -c 0 "$bench" turn --server 127.0.0.1:$T --secret benchsecret --allocations 8 \
    --size "$size" --rate "$rate" --duration "${secs}s" --core 0 --quiet --json "$d/load.json" >"$d/load.log" 2>&1
callgrind_control -d $vpid >/dev/null
kill -TERM $vpid
for _ in 1 2 3 4 5 6; do kill -0 $vpid 2>/dev/null || break; sleep 1; done
kill -KILL $vpid 2>/dev/null || true
wait $vpid 2>/dev/null || true
received=$(jq '.received' "$d/load.json")
echo "== $tag TURN $size B rate $rate (epoll): delivered $received, sent $(jq '.sent' "$d/load.json")"
for f in "$d"/cg.out.1-*; do
    ir=$(sed -n 's/^summary: //p' "$f"); [ -n "$ir" ] || ir=$(sed -n 's/^totals: //p' "$f")
    if [ "${ir:-0}" -gt 1000000 ]; then echo "$(basename "$f") Ir=$ir per-packet=$((ir / received))"; fi
done
