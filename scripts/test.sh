#!/usr/bin/env bash
# The whole test suite: unit, property, conformance and end-to-end tests (real Docker, real SQLite,
# real QUIC on loopback). Needs Docker, a C compiler (the fake NVML library) and the test image,
# which this script builds when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh >/dev/null
cargo test --workspace --locked "$@"
