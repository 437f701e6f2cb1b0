#!/usr/bin/env bash
# One command from a checkout to a running single-node Corral: builds the binaries and the example
# image, starts a coordinator (embedded SQLite in .corral/coordinator) and a local agent enrolled
# with the coordinator's join token, points the CLI at it, and runs examples/hello.dstack.yml.
#
#   scripts/quickstart.sh          start (or reuse) and run the example
#   scripts/quickstart.sh stop     stop the coordinator and the agent started here
#
# Needs Rust, Docker and, to build the image, Debian's busybox-static (installed when root).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.corral"
bin="$root/target/debug"
http=${CORRAL_QUICKSTART_HTTP:-127.0.0.1:7070}
quic=${CORRAL_QUICKSTART_QUIC:-127.0.0.1:7071}

stop() {
  for name in agent coordinator; do
    if [ -f "$state/$name.pid" ]; then
      kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
      echo "stopped $name"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
fi

docker info >/dev/null 2>&1 || { echo "error: Docker is not reachable" >&2; exit 1; }
echo "==> building corral, corral-coordinator and corral-agent"
cargo build --quiet --bin corral --bin corral-coordinator --bin corral-agent
echo "==> building the example image"
bash scripts/build-test-image.sh
mkdir -p "$state"

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

if ! running coordinator; then
  echo "==> starting the coordinator (data in .corral/coordinator, log in .corral/coordinator.log)"
  "$bin/corral-coordinator" --data-dir "$state/coordinator" --http-listen "$http" --quic-listen "$quic" \
    >"$state/coordinator.log" 2>&1 &
  echo $! >"$state/coordinator.pid"
  for _ in $(seq 1 100); do
    [ -s "$state/coordinator/join-token" ] && curl -fsSk "https://$http/api/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsSk "https://$http/api/health" >/dev/null || { cat "$state/coordinator.log"; exit 1; }
fi
if ! running agent; then
  echo "==> starting a local agent (state in .corral/agent, log in .corral/agent.log)"
  "$bin/corral-agent" --coordinator "$quic" --token "$(cat "$state/coordinator/join-token")" \
    --state-dir "$state/agent" >"$state/agent.log" 2>&1 &
  echo $! >"$state/agent.pid"
fi

# The coordinator serves HTTPS with a certificate from its own CA: the CLI pins that CA.
"$bin/corral" config --url "https://$http" --token "$(cat "$state/coordinator/admin-token")" \
  --ca-file "$state/coordinator/ca.pem" >/dev/null
for _ in $(seq 1 100); do
  "$bin/corral" node list --json 2>/dev/null | grep -q '"status": "ready"' && break
  sleep 0.2
done
echo "==> nodes"
"$bin/corral" node list
echo "==> corral apply -f examples/hello.dstack.yml -y"
"$bin/corral" apply -f examples/hello.dstack.yml -y
echo
echo "Corral is running. Try: $bin/corral ps -a | $bin/corral apply -f examples/sleep.dstack.yml -y -d"
echo "Stop it with: scripts/quickstart.sh stop"
