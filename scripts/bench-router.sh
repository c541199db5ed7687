#!/usr/bin/env bash
# keel-bench workloads A and C through the router of `keel dev` versus straight to a
# standalone keel-node, and the router's constant work: MemDS lookups per request and
# p99 with a warm cache and with the cache flushed every 100 ms under load.
#
#   cargo build --release -p keel-node -p keel-router -p keel-ops -p keel-bench
#   scripts/bench-router.sh [OUT]        # default target/keel-bench/router
#
# Environment: RECORDS (20000), DURATION_S (20), CLIENTS (32). Writes OUT/summary.md.
# Ports 9400 (standalone) and 9500–9539 (keel dev) must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/keel-bench/router}
records=${RECORDS:-20000}
duration=${DURATION_S:-20}
clients=${CLIENTS:-32}
bin=target/release
for b in keel keel-node keel-router keel-memds keel-control keel-bench; do
  [ -x "$bin/$b" ] || { echo "build first: cargo build --release -p keel-node -p keel-router -p keel-ops -p keel-bench" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out"
data=$(mktemp -d -p target bench-router.XXXXXX)   # on the repo's disk, never tmpfs
trap 'kill -INT ${dev:-} ${node:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT

wait_port() { for _ in $(seq 1 600); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
bench() { # name endpoint extra-args…
  local name=$1 endpoint=$2; shift 2
  "$bin/keel-bench" run --target keel --endpoint "$endpoint" --records "$records" --duration-s "$duration" \
    --clients "$clients" --out "$out/$name" "$@" > "$out/$name.txt" 2>&1
}

echo "== standalone keel-node (2 shards)"
"$bin/keel-node" --standalone --data-dir "$data/standalone" --listen 127.0.0.1:9400 --shards 2 \
  --page-cache-mb 64 > "$out/standalone.log" 2>&1 &
node=$!
wait_port 9400
bench standalone 127.0.0.1:9400 --workloads a,c
kill -TERM $node; wait $node || true; node=

echo "== keel dev (3 nodes × 2 shards, control plane, 2 MemDS, router)"
"$bin/keel" dev --data-dir "$data/dev" --port 9500 > "$out/dev.out" 2>&1 &
dev=$!
for _ in $(seq 1 1200); do grep -q "router at" "$out/dev.out" && break; sleep 0.1; done
grep -q "router at" "$out/dev.out"
bench router 127.0.0.1:9500 --workloads a,c
# The same cluster without the router: the client to node n1's entry port, following
# NotLeader hints to the other nodes (what the router saves the client from).
bench direct 127.0.0.1:9510 --no-load --workloads a,c
admin() { "$bin/keel" router --admin 127.0.0.1:9501 "$@"; }
admin status > "$out/counters-0.json"
bench warm 127.0.0.1:9500 --no-load --workloads c
admin status > "$out/counters-1.json"
admin flush --every-ms 100 --for-s $((duration + 15)) 2> "$out/flushes.txt" > /dev/null &
flusher=$!
bench cold 127.0.0.1:9500 --no-load --workloads c
kill $flusher 2>/dev/null || true; wait $flusher 2>/dev/null || true
admin status > "$out/counters-2.json"
kill -INT $dev; wait $dev || true; dev=

python3 - "$out" <<'EOF'
import json, sys, os
out = sys.argv[1]
def phases(name):
    with open(os.path.join(out, name, "results.json")) as f:
        return {p["workload"]: p for p in json.load(f)["phases"] if p["workload"] != "load"}
def counters(i):
    with open(os.path.join(out, f"counters-{i}.json")) as f:
        return json.load(f)
lines = ["| workload | standalone node ops/s | keel dev, router ops/s | router / standalone | keel dev, node direct ops/s | router / direct | standalone p99 µs | router p99 µs | direct p99 µs |",
         "|---|---|---|---|---|---|---|---|---|"]
s, r, d = phases("standalone"), phases("router"), phases("direct")
for w in ("a", "c"):
    a, b, c = s[w], r[w], d[w]
    lines.append(f"| {w.upper()} | {a['ops_per_s']:.0f} | {b['ops_per_s']:.0f} | {b['ops_per_s']/a['ops_per_s']:.2f} | "
                 f"{c['ops_per_s']:.0f} | {b['ops_per_s']/c['ops_per_s']:.2f} | "
                 f"{a['latency_us']['p99']} | {b['latency_us']['p99']} | {c['latency_us']['p99']} |")
c0, c1, c2 = counters(0), counters(1), counters(2)
def delta(x, y, k): return y[k] - x[k]
lines += ["", "| cache | requests | hits | misses | lookups sent | lookups per request | ops/s | p50 µs | p99 µs |",
          "|---|---|---|---|---|---|---|---|---|"]
for name, x, y in (("warm", c0, c1), ("flushed every 100 ms", c1, c2)):
    p = phases("warm" if name == "warm" else "cold")["c"]
    req = delta(x, y, "requests")
    lines.append(f"| {name} | {req} | {delta(x, y, 'cache_hits')} | {delta(x, y, 'cache_misses')} | "
                 f"{delta(x, y, 'lookups_sent')} | {delta(x, y, 'lookups_sent') / max(req, 1):.4f} | "
                 f"{p['ops_per_s']:.0f} | {p['latency_us']['p50']} | {p['latency_us']['p99']} |")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
EOF
