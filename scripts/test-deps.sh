#!/usr/bin/env bash
# Installs what Corral's tests need besides Rust and Docker, when it is missing; scripts/test.sh
# runs it first (and CI runs scripts/test.sh).
#
#   Debian packages  gcc libc6-dev      the fake NVML library (tests/fake-nvml) is built from C
#                    busybox-static     the test image (scripts/build-test-image.sh)
#                    openssh-client     `corral ssh` is tested with the system's ssh and ssh-keygen
#                    openssh-server     sshd, for ssh_config fleets (run inside the tests' containers)
#                    bsdutils           util-linux's `script`, for `corral exec -t`
#                    curl               the install tests give a fresh host this machine's curl
#                    python3-venv       for the venv below
#   PyPI             moto[server,ec2]   moto_server, the EC2 emulator of the AWS backend's tests, in
#                                       a venv at target/moto (MOTO_SERVER=PATH names another)
#
# As root it installs the packages with apt-get; otherwise it prints the sudo command to run and
# fails. moto is installed as the calling user (network access to PyPI, once).
#
# Usage: scripts/test-deps.sh [--check]   --check: install nothing, say what is missing
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h | --help)
      sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "test-deps: unknown argument \"$arg\" (use --check or --help)" >&2
      exit 2
      ;;
  esac
done

# The suite runs containers in the real Docker engine: Docker missing is a failure, not a skip.
if ! docker info >/dev/null 2>&1; then
  echo "test-deps: the Docker engine is not reachable (docker info failed); Corral's tests need it" >&2
  echo "test-deps: install Docker, start it, and make sure this user may use its socket" >&2
  exit 1
fi

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
{ command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; } || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
moto="${MOTO_SERVER:-target/moto/bin/moto_server}"
if [ ! -x "$moto" ]; then
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$check" -eq 1 ]; then
    echo "test-deps: missing Debian packages: ${need_apt[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: the tests need these Debian packages, which are not installed: ${need_apt[*]}" >&2
    echo "test-deps: install them, then run scripts/test.sh again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need_apt[*]}" >&2
    echo "test-deps: (or run this script as root: sudo scripts/test-deps.sh)" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: apt-get is unavailable; install the equivalents of: ${need_apt[*]}" >&2
    exit 1
  fi
  echo "test-deps: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$moto" ]; then
  if [ -n "${MOTO_SERVER:-}" ]; then
    echo "test-deps: MOTO_SERVER=$MOTO_SERVER is not an executable file" >&2
    exit 1
  fi
  if [ "$check" -eq 1 ]; then
    echo "test-deps: missing moto_server (target/moto); run scripts/test-deps.sh to install it" >&2
    exit 1
  fi
  echo "test-deps: installing moto[server,ec2] (the EC2 emulator) into target/moto"
  python3 -m venv target/moto
  if ! target/moto/bin/pip install -q 'moto[server,ec2]'; then
    rm -rf target/moto
    echo "test-deps: cannot install moto from PyPI (is the network reachable?); the AWS tests need it" >&2
    exit 1
  fi
fi

# The conformance corpus lives beside the repository, not in it (the conformance test fails
# without it, naming where it looked).
corpus="${CORRAL_CONFORMANCE_DIR:-../shared/conformance}/dstack-configs"
if [ ! -d "$corpus" ]; then
  echo "test-deps: warning: no conformance corpus at $corpus: the conformance test will fail" >&2
  echo "test-deps: (put the shared data there, or set CORRAL_CONFORMANCE_DIR to the folder holding dstack-configs/)" >&2
fi
