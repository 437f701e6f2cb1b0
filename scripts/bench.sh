#!/usr/bin/env bash
# Builds the release binaries and runs the benchmarks; prints the tables kept in docs/benchmarks.md.
# Usage: scripts/bench.sh [BENCH...]   (default: skeleton proxy images node_loss scale lists, and the placement
# index bench of the coordinator crate)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh >/dev/null
cargo build --release --bin corral --bin corral-coordinator --bin corral-agent
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(skeleton proxy images node_loss scale lists placement)
for b in "${benches[@]}"; do
  echo "== $b"
  if [ "$b" = placement ]; then
    cargo bench -p corral-coordinator --bench placement
  else
    cargo bench -p corral-tests --bench "$b"
  fi
done
