#!/usr/bin/env bash
# What one connected agent costs the aggregator's heap, by owner. One aggregator (the `profiling` build:
# release code with symbols) runs under heaptrack; AGENTS simulated agents (cni-metrics-fleet: v1.23
# snapshots, one HTTP/2 connection each, a report every 5 s) connect and report for STEADY seconds; the
# aggregator then stops and `scripts/heap_table.py` splits the heap at its peak by the code that
# allocated it (h2's buffers, HPACK, tonic's codec buffers, node state, tasks, ...), per agent.
#
#   scripts/heap-profile.sh                 # 2,000 agents, 30 s
#   AGENTS=5000 STEADY=60 FLEET_ARGS=--whole-reports scripts/heap-profile.sh
#
# Needs heaptrack (apt install heaptrack). Writes its files under target/heap-profile/.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-2000}
STEADY=${STEADY:-30}
PORT=${PORT:-15051}
out=target/heap-profile
mkdir -p "$out"
rm -f "$out"/agg.* "$out"/stacks.txt
cargo build --quiet --profile profiling -p cni-metrics-aggregator --bin cni-metrics-aggregator
cargo build --quiet --release -p cni-metrics-e2e --bin cni-metrics-fleet
ulimit -n "$(ulimit -Hn)"
heaptrack -o "$out/agg" target/profiling/cni-metrics-aggregator --cluster-id e2e \
  --grpc-listen "127.0.0.1:$PORT" --http-listen 127.0.0.1:0 --stdout true --publish-interval 10s \
  --breakdown az,instance_type >"$out/aggregator.log" 2>&1 &
agg=$!
sleep 3
# shellcheck disable=SC2086
target/release/cni-metrics-fleet --aggregator "127.0.0.1:$PORT" --agents "$AGENTS" --interval 5s \
  --ramp "$((AGENTS / 1000 + 2))s" ${FLEET_ARGS:-} >"$out/fleet.jsonl" &
fleet=$!
sleep "$STEADY"
open=$(tail -n 1 "$out/fleet.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["open"])')
# The aggregator (heaptrack's child) stops first, while every stream is still open.
pkill -INT -f "target/profiling/cni-metrics-aggregator" || true
wait "$agg" || true
kill "$fleet" 2>/dev/null || true
data=$(ls "$out"/agg.* | head -n 1)
heaptrack_print -f "$data" --flamegraph-cost-type peak -F "$out/stacks.txt" >/dev/null
echo "agents connected at the end: $open"
python3 scripts/heap_table.py "$out/stacks.txt" "$open"
