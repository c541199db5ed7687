#!/usr/bin/env bash
# Shows, on a running keel-node under load, that its I/O goes through
# io_uring with O_DIRECT data files:
#   1. strace -f: the io_uring_setup calls (rings of every shard) and that no
#      read/write/pread/pwrite/fsync syscalls touch data files (they are
#      io_uring operations);
#   2. /proc/PID/fdinfo: every open WAL segment and B-tree file has O_DIRECT
#      (glommio opens files with IORING_OP_OPENAT, which strace cannot show).
# Usage: scripts/check-io-path.sh [DIR]   (DIR on ext4/xfs; default target/io-check)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/io-check}
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }
cargo build -q --release -p keel-node -p keel-bench
rm -rf "$dir" && mkdir -p "$dir"
strace -f -qq -e trace=io_uring_setup,pwrite64,pwritev,pwritev2,fsync,fdatasync -o "$dir/strace.txt" \
  target/release/keel-node --data-dir "$dir/node" --shards 2 --listen 127.0.0.1:7690 > "$dir/node.log" 2>&1 &
until grep -q "keel-node listening on" "$dir/node.log"; do sleep 0.1; done
target/release/keel-bench load --endpoint 127.0.0.1:7690 --records 20000 --clients 32 --duration-s 3 --phases put
pid=$(pgrep -f -- "--data-dir $dir/node" | grep -v "^$(pgrep -x strace | head -1)$" | tail -1)
echo "== open data files and their flags (O_DIRECT = 040000)"
bad=0
for fd in /proc/"$pid"/fd/*; do
  target=$(readlink "$fd") || continue
  case "$target" in
    *.seg|*.btree)
      flags=$(awk '/^flags/ {print $2}' /proc/"$pid"/fdinfo/"$(basename "$fd")")
      direct=$(( (8#$flags & 8#40000) != 0 ))
      echo "$flags ${target#"$PWD"/} $([ $direct = 1 ] && echo O_DIRECT || echo 'NO O_DIRECT')"
      [ $direct = 1 ] || bad=1 ;;
  esac
done
kill -TERM "$pid"
wait || true
echo "== syscalls seen by strace -f"
echo "io_uring_setup: $(grep -c io_uring_setup "$dir/strace.txt")"
echo "pwrite/fsync/fdatasync: $(grep -cE 'pwrite|fsync|fdatasync' "$dir/strace.txt" || true) (data goes through io_uring)"
exit $bad
