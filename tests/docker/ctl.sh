#!/usr/bin/env bash
# A private dockerd for the stack tests: its own socket, data root and containerd, no
# bridge and no iptables rules, so tests (and a daemon restart mid-converge) never touch
# the machine's own Docker daemon or its containers.
#   ctl.sh start|stop|restart DIR
set -euo pipefail
cmd="$1"
dir="$2"
sock="$dir/docker.sock"
pidfile="$dir/dockerd.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  running && return 0
  mkdir -p "$dir/data" "$dir/exec"
  [ -f "$dir/daemon.json" ] || echo '{}' >"$dir/daemon.json"
  local driver=()
  # Use the storage driver the machine's daemon is configured with (fuse-overlayfs in
  # unprivileged LXC, where overlay2 does not work); else dockerd's default.
  if [ -r /etc/docker/daemon.json ]; then
    local d
    d="$(python3 -c 'import json;print(json.load(open("/etc/docker/daemon.json")).get("storage-driver",""))' 2>/dev/null || true)"
    [ -n "$d" ] && driver=(--storage-driver "$d")
  fi
  setsid dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/exec" \
    --pidfile "$pidfile" -H "unix://$sock" "${driver[@]}" --bridge none --iptables=false \
    --ip-masq=false --mtu 1400 >>"$dir/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 150); do
    if DOCKER_HOST="unix://$sock" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  echo "dockerd did not come up; see $dir/dockerd.log" >&2
  return 1
}

stop() {
  running || return 0
  local pid
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  local i
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  *) echo "usage: ctl.sh start|stop|restart DIR" >&2; exit 2 ;;
esac
