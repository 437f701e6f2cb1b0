#!/usr/bin/env bash
# Runs every cargo-fuzz target in proto/fuzz for SECONDS each (default 60), and prints what each
# run did (inputs executed, coverage). A crash fails the script: its input is in
# proto/fuzz/artifacts/TARGET/, reproduce it with `cargo +nightly fuzz run TARGET FILE`.
#
# Fuzzing needs a nightly toolchain and cargo-fuzz. Without either, this says so and exits 0:
# fuzzing is optional, the tests (scripts/test.sh) are not.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600        # longer
#   FUZZ_TARGETS="api_bodies" scripts/fuzz.sh 120
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped: no nightly toolchain (cargo +nightly fails); install one with \`rustup toolchain install nightly\`"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: skipped: cargo-fuzz is not installed (\`cargo install cargo-fuzz\`, about half a minute)"
  exit 0
fi

cd proto/fuzz
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
echo "fuzz: building ${targets//$'\n'/ }"
if ! built="$(cargo +nightly fuzz build 2>&1)"; then
  echo "$built"
  exit 1
fi

# Seeds: committed ones (seeds/TARGET), and the dstack corpus for the parser when this checkout
# sits next to it. New inputs go to corpus/TARGET (git-ignored), which later runs start from.
conformance=../../../shared/conformance/dstack-configs
failed=()
for t in $targets; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  [ "$t" = config_parser ] && [ -d "$conformance" ] && dirs+=("$conformance")
  log="$(mktemp)"
  if cargo +nightly fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)"
    echo "fuzz: $t: ${execs:-?} inputs in ${secs} s, coverage ${cov:-?} edges, no crash"
  else
    tail -n 40 "$log"
    echo "fuzz: $t: CRASH (input in proto/fuzz/artifacts/$t/)"
    failed+=("$t")
  fi
  rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
