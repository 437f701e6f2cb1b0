#!/usr/bin/env bash
# Builds the release binaries and runs the benchmarks; prints the table kept in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh >/dev/null
cargo build --release --bin corral --bin corral-coordinator --bin corral-agent
cargo bench -p corral-tests --bench skeleton
