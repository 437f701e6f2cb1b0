#!/bin/sh
# Installs (or upgrades in place) Corral's agent on this host and joins it to a coordinator.
#
#   curl -fsSLk https://COORDINATOR:7070/install.sh | sh -s -- --token corral1.<ca-hash>.<secret>
#
# The script trusts nothing it downloads until the coordinator's CA matches the hash the join token
# carries; after that every download is checked against that CA (and the agent binary against its
# SHA-256). Run it as root. It needs curl, Docker, and systemd (or --foreground).
#
# Options:
#   --token TOKEN      join token (`corral token create`); or $CORRAL_JOIN_TOKEN
#   --url URL          the coordinator's HTTP(S) address (filled in when served by the coordinator)
#   --quic-port PORT   the UDP port agents dial (filled in when served by the coordinator)
#   --name NAME        this node's name (default: the host name)
#   --fleet FLEET      fleet to join, when the token names none
#   --foreground       no systemd unit: run the agent in this shell (for containers, or your own
#                      supervisor); stops with the shell. Without systemd and without this flag,
#                      the agent runs detached, logging to /var/log/corral-agent.log
#   --bundle FILE      install from an offline bundle (`corral bundle create`): nothing is downloaded
#   --prefix DIR       where the binary goes (default /usr/local/bin)
#   --state-dir DIR    the agent's identity and state (default /var/lib/corral-agent)
#   --min-disk-gib N   refuse hosts with less free disk under the state dir (default 5)
#   --no-preflight     skip the Docker, GPU runtime, disk and clock checks
#
# Uninstall: corral-agent-uninstall (installed beside the agent), or the coordinator's /uninstall.sh.
set -eu

URL="${CORRAL_URL:-@CORRAL_URL@}"
QUIC_PORT="${CORRAL_QUIC_PORT:-@CORRAL_QUIC_PORT@}"
TOKEN="${CORRAL_JOIN_TOKEN:-}"
NAME=""
FLEET=""
FOREGROUND=0
BUNDLE=""
PREFIX=/usr/local/bin
STATE_DIR=/var/lib/corral-agent
CONF_DIR=/etc/corral
UNIT=/etc/systemd/system/corral-agent.service
MIN_DISK_GIB=5
PREFLIGHT=1
SERVER_NAME=corral-coordinator

say() { printf 'corral-install: %s\n' "$*"; }
warn() { printf 'corral-install: warning: %s\n' "$*" >&2; }
die() {
  printf 'corral-install: error: %s\n' "$*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --token) TOKEN="${2:-}"; shift 2 ;;
    --url) URL="${2:-}"; shift 2 ;;
    --quic-port) QUIC_PORT="${2:-}"; shift 2 ;;
    --name) NAME="${2:-}"; shift 2 ;;
    --fleet) FLEET="${2:-}"; shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --bundle) BUNDLE="${2:-}"; shift 2 ;;
    --prefix) PREFIX="${2:-}"; shift 2 ;;
    --state-dir) STATE_DIR="${2:-}"; shift 2 ;;
    --min-disk-gib) MIN_DISK_GIB="${2:-}"; shift 2 ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    -h | --help)
      sed -n '2,26p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' || true
      exit 0
      ;;
    *) die "unknown option \"$1\" (see --help)" ;;
  esac
done

# --- inputs -------------------------------------------------------------------------------------
[ -n "$TOKEN" ] || die "--token is required (a join token from \`corral token create\`)"
case "$TOKEN" in
  corral1.*.*) ;;
  *) die "--token is not a join token (expected corral1.<64 hex digits>.<secret>)" ;;
esac
CA_HASH=$(printf '%s' "$TOKEN" | cut -d. -f2 | tr 'A-F' 'a-f')
[ ${#CA_HASH} -eq 64 ] || die "--token: the CA hash is not 64 hex digits"
case "$URL" in
  @*) die "--url is required (the coordinator's address, e.g. https://coord.example:7070)" ;;
  http://* | https://*) ;;
  *) die "--url must start with https:// or http:// (got \"$URL\")" ;;
esac
case "$QUIC_PORT" in
  @*) QUIC_PORT=7071 ;;
  '' | *[!0-9]*) die "--quic-port must be a port number (the UDP port agents dial, 7071 by default)" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root: curl -fsSLk $URL/install.sh | sudo sh -s -- --token ..."
for tool in sha256sum base64 uname sed cut tr df; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing on this host"
done
[ -n "$BUNDLE" ] || command -v curl >/dev/null 2>&1 || die "curl is missing on this host (or install from a bundle: --bundle FILE)"
command -v tar >/dev/null 2>&1 || [ -z "$BUNDLE" ] || die "tar is missing on this host (needed for --bundle)"

# host and port of the URL (IPv6 in brackets stays bracketed)
HOSTPORT=${URL#*://}
HOSTPORT=${HOSTPORT%%/*}
case "$HOSTPORT" in
  \[*\]:*) HOST=${HOSTPORT%:*}; PORT=${HOSTPORT##*:} ;;
  \[*\]) HOST=$HOSTPORT; PORT="" ;;
  *:*) HOST=${HOSTPORT%:*}; PORT=${HOSTPORT##*:} ;;
  *) HOST=$HOSTPORT; PORT="" ;;
esac
case "$URL" in https://*) PORT=${PORT:-443} ;; *) PORT=${PORT:-80} ;; esac
NAME=${NAME:-$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)}
ARCH=$(uname -m)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/corral-install.XXXXXX")
AGENT_PID=""
cleanup() {
  rm -rf "$WORK"
  if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fetch PATH OUT [curl options...]: the coordinator's file, or its error message.
CURL_TLS="-k"
BASE="$URL"
fetch() {
  path=$1
  out=$2
  shift 2
  code=$(curl -sS $CURL_TLS "$@" -o "$out" -w '%{http_code}' "$BASE$path") || return 1
  if [ "$code" != 200 ]; then
    msg=$(sed -n 's/.*"error":"\(.*\)"}.*/\1/p' "$out" 2>/dev/null)
    printf '%s %s: %s\n' "$code" "$path" "${msg:-$(head -c 300 "$out" 2>/dev/null)}" >"$out.err"
    return 1
  fi
}
fetch_err() { cat "$1.err" 2>/dev/null || echo "cannot reach $URL"; }

# --- the coordinator: who it is, and whether the token works --------------------------------------
HAVE_CURL=0
command -v curl >/dev/null 2>&1 && HAVE_CURL=1
if [ "$HAVE_CURL" = 0 ]; then
  warn "no curl: the coordinator's CA is checked by the agent when it first connects"
else
  fetch /ca.pem "$WORK/ca.pem" || die "cannot fetch the coordinator's CA: $(fetch_err "$WORK/ca.pem")"
  GOT=$(sed -e '/-----/d' "$WORK/ca.pem" | tr -d '\r\n ' | base64 -d | sha256sum | cut -d' ' -f1)
  if [ "$GOT" != "$CA_HASH" ]; then
    die "the coordinator at $URL has CA $GOT, but the token pins $CA_HASH: it is not the coordinator the token was made for (or something is in between). Nothing was installed."
  fi
  case "$URL" in
    https://*)
      # From here on: only a server with a certificate from that CA. Corral's own clients check the
      # name it always carries, whatever address they dial.
      if curl -fsS --cacert "$WORK/ca.pem" --connect-to "$SERVER_NAME:$PORT:$HOST:$PORT" \
        -o /dev/null "https://$SERVER_NAME:$PORT/api/health" 2>/dev/null; then
        CURL_TLS="--cacert $WORK/ca.pem --connect-to $SERVER_NAME:$PORT:$HOST:$PORT"
        BASE="https://$SERVER_NAME:$PORT"
      elif curl -fsS -o /dev/null "$URL/api/health" 2>/dev/null; then
        # The operator's own certificate, trusted by this host.
        CURL_TLS=""
      else
        die "the HTTPS certificate of $URL is neither from the CA the token pins nor trusted by this host"
      fi
      ;;
    *) warn "$URL is plain HTTP: the agent binary cannot be authenticated in transit (serve HTTPS)" ;;
  esac
  fetch /api/join/check "$WORK/check" -H "Authorization: Bearer $TOKEN" ||
    die "the coordinator refuses this token: $(fetch_err "$WORK/check")"
  say "coordinator $URL: CA matches the token, token accepted"
fi

# --- preflight ----------------------------------------------------------------------------------
docker_api() {
  curl -fsS --max-time 10 --unix-socket "$DOCKER_SOCK" "http://localhost$1"
}
if [ "$PREFLIGHT" = 1 ]; then
  DOCKER_SOCK=${DOCKER_HOST:-unix:///var/run/docker.sock}
  case "$DOCKER_SOCK" in
    unix://*) DOCKER_SOCK=${DOCKER_SOCK#unix://} ;;
    *) die "DOCKER_HOST=$DOCKER_HOST: only a unix socket is supported by this check (or --no-preflight)" ;;
  esac
  [ -S "$DOCKER_SOCK" ] || die "Docker is not running here ($DOCKER_SOCK is missing): install Docker Engine and start it (systemctl enable --now docker)"
  if [ "$HAVE_CURL" = 1 ]; then
    [ "$(docker_api /_ping 2>/dev/null)" = OK ] || die "Docker does not answer at $DOCKER_SOCK (is the daemon healthy? may root use the socket?)"
    INFO=$(docker_api /info) || die "Docker does not answer /info at $DOCKER_SOCK"
  else
    INFO=""
    warn "no curl: Docker's socket exists, its answers and runtimes are not checked"
  fi
  [ -z "$INFO" ] || say "Docker $(printf '%s' "$INFO" | sed -n 's/.*"ServerVersion":"\([^"]*\)".*/\1/p') reachable"
  if [ -n "$INFO" ] && { ls /dev/nvidia[0-9]* >/dev/null 2>&1 || command -v nvidia-smi >/dev/null 2>&1; }; then
    printf '%s' "$INFO" | grep -q '"nvidia":' ||
      die "this host has NVIDIA GPUs but Docker has no nvidia runtime: install the NVIDIA Container Toolkit, then run nvidia-ctk runtime configure --runtime=docker and restart Docker"
    say "NVIDIA GPUs and the nvidia container runtime present"
  fi
  mkdir -p "$STATE_DIR"
  FREE_KIB=$(df -Pk "$STATE_DIR" | awk 'NR==2 {print $4}')
  if [ "$FREE_KIB" -lt $((MIN_DISK_GIB * 1024 * 1024)) ]; then
    die "only $((FREE_KIB / 1024)) MiB free under $STATE_DIR; at least $MIN_DISK_GIB GiB is needed for images and job data (--min-disk-gib to change)"
  fi
  if [ "$HAVE_CURL" = 1 ]; then
    fetch /api/time "$WORK/time" || die "cannot read the coordinator's clock: $(fetch_err "$WORK/time")"
    SKEW=$(($(date +%s) - $(cat "$WORK/time")))
    [ "$SKEW" -lt 0 ] && SKEW=$((-SKEW))
    [ "$SKEW" -le 60 ] || die "this host's clock is ${SKEW} s off the coordinator's: synchronize it (timedatectl set-ntp true, or chrony) and re-run"
    [ "$SKEW" -le 5 ] || warn "this host's clock is ${SKEW} s off the coordinator's"
  fi
fi

# --- the binary ---------------------------------------------------------------------------------
if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE" ] || die "--bundle $BUNDLE: no such file"
  MEMBER=$(tar -tzf "$BUNDLE" 2>/dev/null | grep "/bin/$ARCH/corral-agent\$" | head -n 1 || true)
  [ -n "$MEMBER" ] || die "--bundle $BUNDLE: not a Corral bundle (tar.gz), or it has no agent for $ARCH"
  ROOT=${MEMBER%%/*}
  mkdir -p "$WORK/bundle"
  tar -xzf "$BUNDLE" -C "$WORK/bundle" "$ROOT/bin/$ARCH/corral-agent" "$ROOT/uninstall.sh" "$ROOT/SHA256SUMS" ||
    die "--bundle $BUNDLE: cannot extract the agent"
  (cd "$WORK/bundle/$ROOT" && grep -E "  (bin/$ARCH/corral-agent|uninstall.sh)\$" SHA256SUMS | sha256sum -c >/dev/null) ||
    die "the bundle's checksums do not match: it is damaged"
  cp "$WORK/bundle/$ROOT/bin/$ARCH/corral-agent" "$WORK/corral-agent"
  cp "$WORK/bundle/$ROOT/uninstall.sh" "$WORK/uninstall.sh"
  say "the agent comes from $BUNDLE (nothing downloaded)"
else
  fetch "/download/corral-agent-$ARCH" "$WORK/corral-agent" || die "cannot download the agent: $(fetch_err "$WORK/corral-agent")"
  fetch "/download/corral-agent-$ARCH.sha256" "$WORK/sha256" || die "cannot download the agent's digest: $(fetch_err "$WORK/sha256")"
  WANT=$(cut -d' ' -f1 "$WORK/sha256")
  GOT=$(sha256sum "$WORK/corral-agent" | cut -d' ' -f1)
  [ "$WANT" = "$GOT" ] || die "the downloaded agent's SHA-256 is $GOT, the coordinator says $WANT"
  fetch /uninstall.sh "$WORK/uninstall.sh" || die "cannot download the uninstall script: $(fetch_err "$WORK/uninstall.sh")"
fi
chmod 755 "$WORK/corral-agent"
VERSION=$("$WORK/corral-agent" --version 2>&1) || die "the agent binary does not run on this host: $VERSION"

UPGRADE=0
[ -x "$PREFIX/corral-agent" ] && UPGRADE=1
mkdir -p "$PREFIX" "$CONF_DIR" "$STATE_DIR"
# rename over the old binary: a running agent keeps its file until it restarts
cp "$WORK/corral-agent" "$PREFIX/corral-agent.new" && mv -f "$PREFIX/corral-agent.new" "$PREFIX/corral-agent"
cp "$WORK/uninstall.sh" "$PREFIX/corral-agent-uninstall" && chmod 755 "$PREFIX/corral-agent-uninstall"
umask 077
{
  echo "CORRAL_COORDINATOR=$HOST:$QUIC_PORT"
  echo "CORRAL_JOIN_TOKEN=$TOKEN"
  echo "CORRAL_STATE_DIR=$STATE_DIR"
  echo "CORRAL_NODE_NAME=$NAME"
  [ -z "$FLEET" ] || echo "CORRAL_FLEET=$FLEET"
} >"$CONF_DIR/agent.env"
umask 022
if [ "$UPGRADE" = 1 ]; then say "upgraded $PREFIX/corral-agent to $VERSION"; else say "installed $VERSION at $PREFIX/corral-agent"; fi

# --- run it -------------------------------------------------------------------------------------
show_node() {
  # The node as the coordinator sees it, once it has joined and reported its hardware.
  if [ "$HAVE_CURL" = 0 ]; then
    say "the agent is joining: \`corral node list\` shows it"
    return 0
  fi
  i=0
  while [ $i -lt 120 ]; do
    if [ -n "$AGENT_PID" ] && ! kill -0 "$AGENT_PID" 2>/dev/null; then
      wait "$AGENT_PID" || true
      AGENT_PID=""
      if [ -n "${AGENT_LOG:-}" ]; then
        die "the agent stopped before joining: $(grep -v '^ *$' "$AGENT_LOG" | tail -n 1)"
      fi
      die "the agent stopped before joining (its error is above)"
    fi
    # the node's id, once the agent has enrolled (its name may differ from --name: made unique)
    NODE_ID=$(sed -n 's/.*"node_id" *: *"\([^"]*\)".*/\1/p' "$STATE_DIR/node.json" 2>/dev/null || true)
    if [ -n "$NODE_ID" ] && fetch "/api/join/node?id=$NODE_ID" "$WORK/node" -H "Authorization: Bearer $TOKEN" 2>/dev/null; then
      # the host joined, but its fleet takes no jobs on it (it lacks the fleet's resources, ...)
      REFUSED=$(sed -n 's/^refused: //p' "$WORK/node")
      if [ -n "$REFUSED" ]; then
        sed '1d; s/^/  /' "$WORK/node" >&2
        warn "the agent stays enrolled and connected, with no jobs: fix the fleet and apply it again, or \`corral node remove\` the node"
        return 0
      fi
      say "joined:"
      sed 's/^/  /' "$WORK/node"
      return 0
    fi
    i=$((i + 1))
    sleep 0.5
  done
  return 1
}

if [ "$FOREGROUND" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  cat >"$UNIT" <<EOF
[Unit]
Description=Corral agent
Documentation=$URL
After=network-online.target docker.service
Wants=network-online.target

[Service]
EnvironmentFile=$CONF_DIR/agent.env
ExecStart=$PREFIX/corral-agent
Restart=on-failure
RestartSec=5
# stopping the agent never stops its containers
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
  systemctl daemon-reload
  systemctl enable corral-agent >/dev/null 2>&1
  systemctl restart corral-agent
  say "started the corral-agent service (journalctl -u corral-agent -f)"
  show_node || die "the node did not join within 60 s: journalctl -u corral-agent -n 50"
elif [ "$FOREGROUND" = 1 ]; then
  set -a
  . "$CONF_DIR/agent.env"
  set +a
  "$PREFIX/corral-agent" &
  AGENT_PID=$!
  show_node || warn "the node did not report within 60 s; the agent keeps trying"
  [ -z "${REFUSED:-}" ] || warn "the fleet refuses this host: $REFUSED"
  say "the agent runs in the foreground (Ctrl-C stops it; its containers keep running)"
  trap 'kill -TERM "$AGENT_PID" 2>/dev/null' INT TERM
  status=0
  # a signal ends `wait` early: wait again until the agent has stopped
  while kill -0 "$AGENT_PID" 2>/dev/null; do
    if wait "$AGENT_PID"; then status=0; else status=$?; fi
  done
  AGENT_PID=""
  exit "$status"
else
  # No systemd: detached from this shell (an SSH session may end), restarted by nobody.
  warn "no systemd here: the agent runs detached (log: /var/log/corral-agent.log) and does not restart after a reboot or a crash; --foreground runs it under your own supervisor"
  for d in /proc/[0-9]*; do
    # an agent an earlier run of this script left running: the new binary replaces it
    [ "$(cat "$d/comm" 2>/dev/null)" != corral-agent ] || kill "${d#/proc/}" 2>/dev/null || true
  done
  set -a
  . "$CONF_DIR/agent.env"
  set +a
  mkdir -p /var/log
  AGENT_LOG=/var/log/corral-agent.log
  # immune to the hangup the end of an SSH session sends (nohup is not everywhere)
  (
    trap '' HUP
    exec "$PREFIX/corral-agent"
  ) </dev/null >>"$AGENT_LOG" 2>&1 &
  AGENT_PID=$!
  show_node || die "the node did not join within 60 s: see /var/log/corral-agent.log"
  AGENT_PID=""
fi
[ -z "${REFUSED:-}" ] || die "the fleet refuses this host: $REFUSED"
