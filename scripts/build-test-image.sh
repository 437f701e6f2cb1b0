#!/usr/bin/env bash
# Builds corral-test/busybox:latest, the image Corral's examples and tests run, without touching a
# registry: FROM scratch plus Debian's static busybox, with its applets linked into /bin so that
# /bin/sh, sleep, echo, env and cat exist.
#
# Usage: scripts/build-test-image.sh [--force]
#   --force  rebuild even when the image already exists
#
# Needs a reachable Docker daemon (DOCKER_HOST is honoured). When /bin/busybox is missing it installs
# the `busybox-static` package with apt-get, which needs root.
set -euo pipefail

IMAGE="corral-test/busybox:latest"
BUSYBOX="/bin/busybox"

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build-test-image: unknown argument \"$arg\" (use --force or --help)" >&2
      exit 2
      ;;
  esac
done

if ! command -v docker >/dev/null 2>&1; then
  echo "build-test-image: the docker CLI is not installed (install docker.io or docker-ce)" >&2
  exit 1
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "build-test-image: docker is unreachable at ${DOCKER_HOST:-unix:///var/run/docker.sock} (is the daemon running, and may this user use its socket?)" >&2
  exit 1
fi

if [[ $force -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-test-image: $IMAGE already exists, nothing to do (use --force to rebuild)"
  exit 0
fi

# A static binary is required: the image has no libc. Debian's `busybox` package is dynamic, so a
# /bin/busybox from it is not enough.
is_static() {
  # `file` may be absent on minimal hosts; an ELF with no PT_INTERP needs no loader.
  if command -v file >/dev/null 2>&1; then
    file -L "$1" | grep -q 'statically linked'
  else
    ! grep -q 'ld-linux' "$1"
  fi
}

if [[ ! -x $BUSYBOX ]] || ! is_static "$BUSYBOX"; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "build-test-image: $BUSYBOX is missing or not static; install it with: sudo apt-get install busybox-static" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "build-test-image: $BUSYBOX is missing or not static and apt-get is unavailable; install a static busybox at $BUSYBOX" >&2
    exit 1
  fi
  echo "build-test-image: installing busybox-static with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  if [[ ! -x $BUSYBOX ]] || ! is_static "$BUSYBOX"; then
    echo "build-test-image: busybox-static was installed but $BUSYBOX is still missing or not static" >&2
    exit 1
  fi
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/corral-test-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT

cp "$BUSYBOX" "$context/busybox"
cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/root"]
ENV PATH=/bin
CMD ["/bin/sh"]
EOF

echo "build-test-image: building $IMAGE from $BUSYBOX"
# The classic builder needs no registry for FROM scratch; BuildKit may try to resolve metadata.
# Its deprecation notice is noise here, so the output is shown only when the build fails.
if ! output="$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" 2>&1)"; then
  echo "$output" >&2
  echo "build-test-image: docker build of $IMAGE failed" >&2
  exit 1
fi
echo "build-test-image: built $IMAGE ($(docker image inspect --format '{{.Id}}' "$IMAGE"))"
