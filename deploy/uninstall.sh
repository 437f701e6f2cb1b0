#!/bin/sh
# Removes what Corral's install script put on this host: the agent service, its binary, its
# configuration, its state (the node's identity) and the containers it ran.
#
#   corral-agent-uninstall [--keep-state] [--keep-containers]
#
# The coordinator still lists the node until `corral node remove NODE`.
set -eu

PREFIX=/usr/local/bin
STATE_DIR=/var/lib/corral-agent
CONF_DIR=/etc/corral
UNIT=/etc/systemd/system/corral-agent.service
KEEP_STATE=0
KEEP_CONTAINERS=0

say() { printf 'corral-uninstall: %s\n' "$*"; }
die() {
  printf 'corral-uninstall: error: %s\n' "$*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --keep-state) KEEP_STATE=1; shift ;;
    --keep-containers) KEEP_CONTAINERS=1; shift ;;
    --prefix) PREFIX="${2:-}"; shift 2 ;;
    --state-dir) STATE_DIR="${2:-}"; shift 2 ;;
    -h | --help)
      sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown option \"$1\" (--keep-state, --keep-containers)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root"

if [ -f "$CONF_DIR/agent.env" ]; then
  STATE_DIR=$(sed -n 's/^CORRAL_STATE_DIR=//p' "$CONF_DIR/agent.env" | head -n 1)
  STATE_DIR=${STATE_DIR:-/var/lib/corral-agent}
fi

if [ -f "$UNIT" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now corral-agent >/dev/null 2>&1 || true
  rm -f "$UNIT"
  systemctl daemon-reload || true
  say "stopped and removed the corral-agent service"
fi
# agents started with --foreground (no pgrep on minimal hosts: /proc says it)
agents() {
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = corral-agent ] || continue
    # an exited one its parent has not reaped yet is gone already
    grep -q '^State:[[:space:]]*Z' "$d/status" 2>/dev/null || echo "${d#/proc/}"
  done
}
pids=$(agents)
if [ -n "$pids" ]; then
  kill $pids 2>/dev/null || true
  i=0
  while [ -n "$(agents)" ] && [ $i -lt 40 ]; do
    sleep 0.25
    i=$((i + 1))
  done
  say "stopped the running agent"
fi

# This node's containers (the label its agent put on them), not any other Corral node's on the
# same Docker.
NODE_ID=$(sed -n 's/.*"node_id" *: *"\([^"]*\)".*/\1/p' "$STATE_DIR/node.json" 2>/dev/null || true)
if [ "$KEEP_CONTAINERS" = 0 ] && [ -n "$NODE_ID" ]; then
  SOCK=${DOCKER_HOST:-unix:///var/run/docker.sock}
  SOCK=${SOCK#unix://}
  ids=""
  if command -v docker >/dev/null 2>&1; then
    ids=$(docker ps -aq --filter "label=corral.node=$NODE_ID" 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    # The runs' own networks on this host.
    nets=$(docker network ls -q --filter "label=corral.node=$NODE_ID" 2>/dev/null || true)
    [ -z "$nets" ] || docker network rm $nets >/dev/null 2>&1 || true
  elif [ -S "$SOCK" ] && command -v curl >/dev/null 2>&1; then
    ids=$(curl -fsS --unix-socket "$SOCK" -G 'http://localhost/containers/json?all=1' \
      --data-urlencode "filters={\"label\":[\"corral.node=$NODE_ID\"]}" |
      grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4 || true)
    for id in $ids; do
      curl -fsS --unix-socket "$SOCK" -X DELETE "http://localhost/containers/$id?force=1" >/dev/null
    done
  fi
  say "removed the containers Corral ran ($(echo $ids | wc -w))"
fi

rm -f "$PREFIX/corral-agent" "$PREFIX/corral-agent.prev" "$PREFIX/corral-agent.new" "$CONF_DIR/agent.env"
rmdir "$CONF_DIR" 2>/dev/null || true
if [ "$KEEP_STATE" = 0 ]; then
  rm -rf "$STATE_DIR"
  say "removed $STATE_DIR (this host's node identity)"
fi
say "removed $PREFIX/corral-agent; run \`corral node remove NODE\` to forget the node"
rm -f "$PREFIX/corral-agent-uninstall"
