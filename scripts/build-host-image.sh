#!/usr/bin/env bash
# Builds corral-test/host:latest: a "fresh host" for the install tests. It is the test image
# (scripts/build-test-image.sh: static busybox, nothing else) plus curl, OpenSSH's sshd (for
# ssh_config fleets: started only by the tests that need it) and the shared libraries that these
# and the given binaries load, copied from this machine. No Rust toolchain, no Corral: the install
# script has to bring those.
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

sshd_bin=/usr/sbin/sshd
if [[ ! -x $sshd_bin ]]; then
  echo "build-host-image: $sshd_bin is missing on this machine (apt-get install openssh-server)" >&2
  exit 1
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/corral-host-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/bin" "$context/rootfs/usr/sbin" "$context/rootfs/etc/ssh"
cp -L "$curl_bin" "$context/rootfs/bin/curl"
cp -L "$sshd_bin" "$context/rootfs/usr/sbin/sshd"
ssh-keygen -q -t ed25519 -N '' -f "$context/rootfs/etc/ssh/ssh_host_ed25519_key"
cat >"$context/rootfs/etc/ssh/sshd_config" <<'SSHD'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd.pid
SSHD

# Every library curl and the given binaries load (ldd prints "name => /path (addr)" or "/path (addr)").
for bin in "$curl_bin" "$sshd_bin" "$@"; do
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
RUN ["/bin/sh", "-c", "printf 'root:x:0:0:root:/root:/bin/sh\\nsshd:x:100:65534::/run/sshd:/bin/false\\nubuntu:x:1000:1000::/home/ubuntu:/bin/sh\\n' > /etc/passwd && printf 'root:x:0:\\nnogroup:x:65534:\\nubuntu:x:1000:\\n' > /etc/group && printf 'root:*:19000:0:99999:7:::\\nubuntu:*:19000:0:99999:7:::\\n' > /etc/shadow && mkdir -p /run/sshd /root/.ssh /home/ubuntu/.ssh && chown -R 1000:1000 /home/ubuntu"]
DOCKERFILE

if ! output="$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" 2>&1)"; then
  echo "$output" >&2
  echo "build-host-image: docker build of $IMAGE failed" >&2
  exit 1
fi
echo "build-host-image: built $IMAGE"
