#!/bin/sh
# Builds the fake NVML library into OUTDIR/libnvidia-ml.so.1.
# Point Corral at it with CORRAL_NVML_LIBRARY=OUTDIR/libnvidia-ml.so.1; FAKE_NVML_GPU_COUNT sets how
# many A100s it reports (default 2); OUTDIR/utilization (or FAKE_NVML_UTILIZATION_FILE) their
# utilization, one percentage per line per GPU (default 0).
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
${CC:-cc} -shared -fPIC -O1 -Wall -Wextra -Werror -o "$out/libnvidia-ml.so.1" "$here/fake_nvml.c"
echo "$out/libnvidia-ml.so.1"
