#!/bin/bash
# Starts `keel dev` (4 nodes, 2 shards each) RUNS times and counts the starts
# that do not come up within 25 s. For each of those it saves, under
# target/stress-dev-start/hang-N, the cluster's logs and, for every node that
# never logged "keel-node serving", gdb's backtraces and the kernel stacks of
# its threads (attaching a debugger interrupts the node's io_uring wait, so
# the node usually comes up right after: see ARCHITECTURE.md, "Lost
# wake-ups").
#
# Usage: scripts/stress-dev-start.sh [RUNS]   (default 100; needs gdb)
# Builds the debug binaries first.
set -u
runs=${1:-100}
cd "$(dirname "$0")/.."
cargo build -q -p keel-node -p keel-router -p keel-ops || exit 1
out=target/stress-dev-start
mkdir -p "$out"
hung=0
for i in $(seq 1 "$runs"); do
  dir=$PWD/$out/run
  rm -rf "$dir"
  mkdir -p "$dir"
  port=$((30000 + (i % 20) * 100))
  target/debug/keel dev --data-dir "$dir" --port "$port" --nodes 4 --shards 2 --page-cache-mb 16 >"$dir/out.txt" 2>&1 &
  keel=$!
  up=0
  for _ in $(seq 1 250); do
    if grep -q "router at" "$dir/out.txt"; then up=1; break; fi
    sleep 0.1
  done
  if [ $up = 0 ]; then
    hung=$((hung + 1))
    echo "run $i: not up after 25 s"
    for log in "$dir"/logs/n*.log; do
      grep -q "keel-node serving" "$log" && continue
      node=$(basename "$log" .log)
      pid=$(python3 -c "import json; d = json.load(open('$dir/dev.json')); print([p['pid'] for p in d['processes'] if p['name'] == '$node'][0])" 2>/dev/null)
      [ -n "$pid" ] || continue
      echo "  $node (pid $pid) never served"
      for task in /proc/"$pid"/task/*; do
        echo "== $task $(cat "$task/comm") $(cat "$task/wchan")"
        cat "$task/stack"
      done >"$dir/kernel-stacks-$node.txt" 2>/dev/null
      gdb -batch -p "$pid" -ex "thread apply all bt" >"$dir/gdb-$node.txt" 2>&1
    done
    rm -rf "$out/hang-$i"
    cp -r "$dir" "$out/hang-$i"
  fi
  kill -TERM "$keel"
  wait "$keel" 2>/dev/null
  pkill -9 -f "$dir" 2>/dev/null
done
rm -rf "$out/run"
echo "$runs starts, $hung did not come up"
[ $hung = 0 ]
