#!/bin/bash
# Restarts `keel dev` (4 nodes, 2 shards each) RUNS times on one data
# directory that holds a table: each run waits for the router, writes 30
# items, kills a random storage node with SIGKILL half of the time, then stops
# the cluster. A start that is not up within 25 s is counted and, for every
# node, its threads' kernel stacks and wait channels and its io_uring rings'
# /proc fdinfo (submission and completion queue heads and tails, pending
# polls) are saved with the logs under target/stress-dev-restart/hang-N.
# Starts in which keel-node's watchdog woke a shard that slept through its
# timers (ARCHITECTURE.md, "Lost wake-ups") are counted from the logs.
#
# Usage: scripts/stress-dev-restart.sh [RUNS]   (default 100)
# Builds the release binaries first. Hangs come more often on a busy machine:
# run two CPU-bound processes beside it (python3 -c 'while True: pass').
set -u
runs=${1:-100}
cd "$(dirname "$0")/.."
cargo build -q --release -p keel-node -p keel-router -p keel-ops || exit 1
bin=$PWD/target/release
base=$PWD/target/stress-dev-restart
dir=$base/data
port=29500
rm -rf "$base"
mkdir -p "$base"
export KEEL_ENDPOINT=127.0.0.1:$port
pid_of() {
  python3 -c "import json; d = json.load(open('$dir/dev.json')); print([p['pid'] for p in d['processes'] if p['name'] == '$1'][0])" 2>/dev/null
}
# Every process of the cluster names one of its ports (295xx) on its command
# line; the nodes also name the data directory. A killed process keeps its
# ports until it is gone: wait for that, or the next start finds them taken.
cluster="127\.0\.0\.1:${port%??}[0-9][0-9]"
cleanup() {
  pkill -9 -f "$dir" 2>/dev/null
  pkill -9 -f "$cluster" 2>/dev/null
  while pgrep -f "$dir" >/dev/null || pgrep -f "$cluster" >/dev/null; do sleep 0.1; done
}
cleanup
hung=0
woken=0
for i in $(seq 1 "$runs"); do
  "$bin/keel" dev --data-dir "$dir" --port "$port" --nodes 4 --shards 2 --page-cache-mb 16 >"$base/out.txt" 2>&1 &
  keel=$!
  up=0
  for _ in $(seq 1 250); do
    if grep -q "router at" "$base/out.txt"; then up=1; break; fi
    sleep 0.1
  done
  if [ $up = 0 ]; then
    hung=$((hung + 1))
    evidence=$base/hang-$i
    mkdir -p "$evidence"
    echo "run $i: not up after 25 s"
    for log in "$dir"/logs/n*.log; do
      node=$(basename "$log" .log)
      pid=$(pid_of "$node")
      [ -n "$pid" ] || continue
      {
        for task in /proc/"$pid"/task/*; do
          echo "== $task $(cat "$task/comm") $(awk '{print $3}' "$task/stat") $(cat "$task/wchan")"
          cat "$task/stack"
        done
        for fd in /proc/"$pid"/fd/*; do
          case "$(readlink "$fd")" in
            *io_uring*) echo "== io_uring fd $(basename "$fd")"; cat /proc/"$pid"/fdinfo/"$(basename "$fd")" ;;
          esac
        done
      } >"$evidence/proc-$node.txt" 2>&1
    done
    cp -r "$dir/logs" "$base/out.txt" "$evidence/" 2>/dev/null
  else
    for _ in $(seq 1 30); do
      item="{\"pk\":{\"S\":\"k$((RANDOM % 200))\"},\"v\":{\"N\":\"$i\"}}"
      "$bin/keel" put t "$item" >/dev/null 2>&1 || "$bin/keel" table create t --pk pk:S >/dev/null 2>&1
    done
    if [ $((RANDOM % 2)) = 0 ]; then
      pid=$(pid_of "n$((RANDOM % 4 + 1))")
      [ -n "$pid" ] && kill -9 "$pid"
    fi
  fi
  kill -TERM "$keel" 2>/dev/null
  wait "$keel" 2>/dev/null
  cleanup
  echo "run $i: up=$up" >>"$base/progress.txt"
  if grep -q "woke it with SIGURG" "$dir"/logs/n*.log 2>/dev/null; then
    woken=$((woken + 1))
    echo "run $i: the watchdog woke a shard"
    mkdir -p "$base/woken-$i"
    cp -r "$dir/logs" "$base/woken-$i/"
  fi
done
echo "$runs starts, $hung did not come up, $woken had a shard woken by the watchdog"
[ $hung = 0 ]
