#!/usr/bin/env bash
# The main job on embedded defaults, on one machine: a local coordinator (embedded CA),
# one agent enrolled with a one-time token, a desired state of safe files under a
# temporary directory, converged and reported; then the status table. Cleans up after.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -p phoenix-coordinator
# The agent as guests run it: size-optimised and static (.cargo/config.toml).
cargo build-agent
bin="$PWD/target/release"
agent_bin="$PWD/target/x86_64-unknown-linux-gnu/release-agent"
work="$(mktemp -d /tmp/phoenix-demo.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
sock="$work/admin.sock"
phoenix() { "$bin/phoenix" --admin-socket "$sock" "$@"; }

echo "== coordinator (state in $work/coordinator)"
"$bin/phoenix" --admin-socket "$sock" serve --state-dir "$work/coordinator" --listen 127.0.0.1:0 \
  >"$work/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

echo "== enroll guest 101 with a one-time token"
token="$(phoenix token create --guest 101 --ttl 5m 2>/dev/null)"
"$agent_bin/phoenix-agent" --state-dir "$work/agent-101" join "$token"
mkdir -p "$work/guest-root"
"$agent_bin/phoenix-agent" --state-dir "$work/agent-101" run --file-root "$work/guest-root" \
  >"$work/agent.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do phoenix status | grep -q '^101 *yes' && break; sleep 0.1; done
root="$work/guest-root"
cat >"$work/desired.json" <<JSON
{"guests": {"101": {"resources": [
  {"kind": "file", "path": "$root/etc/motd", "content": "Managed by Phoenix\n", "mode": "0644"},
  {"kind": "file", "path": "$root/etc/app/app.conf", "content": "listen = 8080\nworkers = 2\n", "mode": "0640",
   "depends_on": ["file:$root/etc/motd"]},
  {"kind": "file", "path": "$root/etc/app/secret.env", "content": "TOKEN=demo-only\n", "mode": "0600"}
]}}}
JSON

echo "== plan (dry run: nothing changes)"
phoenix apply -f "$work/desired.json" --dry-run --timeout 30s
echo "== apply"
phoenix apply -f "$work/desired.json" --timeout 30s
echo "== drift: edit a managed file by hand; the agent's drift check or the next apply repairs it"
echo "tampered" >"$root/etc/motd"
phoenix apply -f "$work/desired.json" --dry-run --timeout 30s
echo "== status"
phoenix status
phoenix certs
