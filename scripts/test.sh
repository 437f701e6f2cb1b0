#!/usr/bin/env bash
# The whole test suite: unit, property, conformance and end-to-end tests (real Docker, real SQLite,
# real QUIC on loopback). First installs what the tests need when it is missing
# (scripts/test-deps.sh: a C compiler, busybox-static, OpenSSH's client and sshd, curl, `script`,
# moto_server in target/moto; apt-get needs root, and it says what to run with sudo otherwise),
# then builds the test image when it is missing. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
bash scripts/build-test-image.sh >/dev/null
bash scripts/build-test-python-image.sh >/dev/null
cargo test --workspace --locked "$@"
