#!/bin/sh
# Builds the fake NVML library into OUTDIR/libnvidia-ml.so.1.
# Point Corral at it with CORRAL_NVML_LIBRARY=OUTDIR/libnvidia-ml.so.1; FAKE_NVML_GPU_COUNT sets how
# many A100s it reports (default 2); OUTDIR/utilization (or FAKE_NVML_UTILIZATION_FILE) their
# utilization, one percentage per line per GPU (default 0); OUTDIR/gpus (or FAKE_NVML_GPUS_FILE)
# their health and metrics, lines of `INDEX key=value ...` (mem_used_mib, temp, power_w, sm_clock,
# mem_clock, graphics_clock, throttle, ecc_{corrected,uncorrected}_{volatile,aggregate},
# retired_pending, remapped_corr, remapped_unc, remap_pending, remap_failure, lost, xids=X[,X...]),
# which fake_nvml.c's header describes. Both files are read on every call, so a test may change
# them while Corral runs; appending `INDEX xids=X` raises Xid X as an NVML event.
# The Rust tests compile fake_nvml.c themselves with `cc -shared -fPIC -Wall -Wextra -Werror`, so
# it must build with just those flags: no -pthread (glibc keeps pthread_mutex_* in libc).
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
