#!/usr/bin/env bash
# Starts, stops and restarts a test step-ca made by init-ca.sh.
#
#   ctl.sh start|stop|restart|status [DIR]
#
# DIR defaults to $PHOENIX_STEPCA_DIR (exported by tests/setup/10-stepca.sh). Everything
# else (binary, URL, root) is read from DIR/stepca.env. The process runs in its own
# session, logs to DIR/step-ca.log, and its pid is kept in DIR/step-ca.pid.
#
# start waits until GET /health answers 200 over TLS verified against the CA's root (at most
# 20 s) and fails with the log tail otherwise. stop sends SIGTERM, waits up to 10 s, then
# SIGKILL. Both are idempotent. Tokens minted before a (re)start are refused by step-ca
# (iat check): mint them after `start` returns.
set -euo pipefail

cmd="${1:?usage: ctl.sh start|stop|restart|status [DIR]}"
dir="${2:-${PHOENIX_STEPCA_DIR:?PHOENIX_STEPCA_DIR is not set and no DIR given}}"
[ -r "$dir/stepca.env" ] || { echo "ctl.sh: $dir/stepca.env missing (run init-ca.sh)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$dir/stepca.env"
pidfile="$dir/step-ca.pid"

running_pid() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Only our step-ca, never a recycled pid.
  grep -qF "$dir/config/ca.json" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

healthy() {
  curl -fsS --max-time 2 --cacert "$PHOENIX_STEPCA_ROOT" "$PHOENIX_STEPCA_URL/health" >/dev/null 2>&1
}

start() {
  if running_pid >/dev/null; then
    healthy && return 0
  else
    echo "== step-ca start $(date -u +%FT%TZ)" >>"$PHOENIX_STEPCA_LOG"
    setsid "$PHOENIX_STEPCA_BIN" "$dir/config/ca.json" >>"$PHOENIX_STEPCA_LOG" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
  local i pid
  for i in $(seq 1 200); do
    if healthy; then
      return 0
    fi
    if ! pid="$(running_pid)"; then
      echo "ctl.sh: step-ca exited during start; log tail:" >&2
      tail -n 20 "$PHOENIX_STEPCA_LOG" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "ctl.sh: step-ca (pid $pid) not healthy after 20 s; log tail:" >&2
  tail -n 20 "$PHOENIX_STEPCA_LOG" >&2
  return 1
}

# Alive and not a zombie (an orphan may wait a moment for its reaper).
alive() { [ -r "/proc/$1/status" ] && ! grep -q "^State:[[:space:]]*Z" "/proc/$1/status" 2>/dev/null; }

stop() {
  local pid i
  pid="$(running_pid)" || { rm -f "$pidfile"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    # bbolt holds an exclusive file lock: a new start must wait until this one is gone.
    for i in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.05
    done
  fi
  rm -f "$pidfile"
}

case "$cmd" in
start) start ;;
stop) stop ;;
restart) stop && start ;;
status)
  if pid="$(running_pid)" && healthy; then
    echo "step-ca running (pid $pid) at $PHOENIX_STEPCA_URL"
  else
    echo "step-ca not running"
    exit 3
  fi
  ;;
*)
  echo "usage: ctl.sh start|stop|restart|status [DIR]" >&2
  exit 2
  ;;
esac
