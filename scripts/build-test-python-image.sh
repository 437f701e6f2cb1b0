#!/usr/bin/env bash
# Builds corral-test/python:latest, an image with Python 3, bash and busybox, without touching a
# registry: Debian's own packages (python3-minimal and what it needs, bash) unpacked into a root
# file system with `dpkg -x`, Debian's static busybox for the rest of the tools, and `docker
# import`. The image's label `corral.python` says its Python's version (e.g. 3.11). It has no `uv`,
# like a site with no network: `python:` runs use its own python3 when the versions match.
#
# Usage: scripts/build-test-python-image.sh [--force]
#   --force  rebuild even when the image already exists
#
# Needs a reachable Docker daemon, apt-get (the package lists are updated when a download fails,
# which needs root) and /bin/busybox static (scripts/build-test-image.sh installs it).
set -euo pipefail

IMAGE="corral-test/python:latest"
PACKAGES=(python3-minimal bash)

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build-test-python-image: unknown argument \"$arg\" (use --force or --help)" >&2
      exit 2
      ;;
  esac
done

if [[ $force -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-test-python-image: $IMAGE already exists, nothing to do (use --force to rebuild)"
  exit 0
fi
for tool in apt-get apt-cache dpkg docker; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build-test-python-image: $tool is missing (this script needs a Debian host)" >&2
    exit 1
  fi
done
if [[ ! -x /bin/busybox ]]; then
  echo "build-test-python-image: /bin/busybox is missing (run scripts/build-test-image.sh first)" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/corral-python-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir "$work/debs" "$work/root"

# The packages and everything they depend on, essential packages and all (the image has nothing
# else), without recommends.
mapfile -t wanted < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${PACKAGES[@]}" | grep -v '^ \|<' | sort -u)
download() { (cd "$work/debs" && apt-get download -qq "${wanted[@]}" 2>/dev/null); }
if ! download; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "build-test-python-image: apt-get download failed; run 'sudo apt-get update' and try again" >&2
    exit 1
  fi
  apt-get update -qq
  if ! download; then
    echo "build-test-python-image: apt-get download of ${wanted[*]} failed" >&2
    exit 1
  fi
fi
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$work/root"
done

# busybox for what the packages leave out (sh, id, cat, ls, ...), never over a real program.
root="$work/root"
mkdir -p "$root/tmp" "$root/root" "$root/etc"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ -e $root/bin/$applet || -e $root/usr/bin/$applet || -L $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

version="$(chroot "$root" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null ||
  dpkg-deb -f "$(ls "$work"/debs/python3-minimal_*.deb)" Version | cut -d. -f1,2)"
tar -C "$root" -c . | docker import \
  --change "LABEL corral.python=$version" \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'CMD ["/bin/sh"]' \
  - "$IMAGE" >/dev/null
echo "build-test-python-image: built $IMAGE (Python $version, $(docker image inspect --format '{{.Id}}' "$IMAGE"))"
