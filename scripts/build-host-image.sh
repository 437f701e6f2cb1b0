#!/usr/bin/env bash
# Builds corral-test/host:latest: a "fresh host" for the install tests. It is the test image
# (scripts/build-test-image.sh: static busybox, nothing else) plus curl and the shared libraries
# that curl and the given binaries load, copied from this machine. No Rust toolchain, no Corral:
# the install script has to bring those.
#
# Usage: scripts/build-host-image.sh [BINARY...]
#   BINARY  a program the host must be able to run later (its libraries are copied; the program
#           itself is not)
set -euo pipefail

IMAGE="corral-test/host:latest"
here="$(cd "$(dirname "$0")" && pwd)"

bash "$here/build-test-image.sh" >/dev/null

curl_bin="$(command -v curl || true)"
if [[ -z $curl_bin ]]; then
  echo "build-host-image: curl is not installed on this machine (apt-get install curl)" >&2
  exit 1
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/corral-host-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/bin"
cp -L "$curl_bin" "$context/rootfs/bin/curl"

# Every library curl and the given binaries load (ldd prints "name => /path (addr)" or "/path (addr)").
for bin in "$curl_bin" "$@"; do
  if [[ ! -x $bin ]]; then
    echo "build-host-image: $bin is not an executable" >&2
    exit 1
  fi
  ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'
done | sort -u | while read -r lib; do
  mkdir -p "$context/rootfs$(dirname "$lib")"
  cp -L "$lib" "$context/rootfs$lib"
done

cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM corral-test/busybox:latest
COPY rootfs/ /
RUN ["/bin/mkdir", "-p", "/etc", "/var/lib", "/usr/local/bin", "/run"]
RUN ["/bin/sh", "-c", "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group"]
DOCKERFILE

if ! output="$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" 2>&1)"; then
  echo "$output" >&2
  echo "build-host-image: docker build of $IMAGE failed" >&2
  exit 1
fi
echo "build-host-image: built $IMAGE"
