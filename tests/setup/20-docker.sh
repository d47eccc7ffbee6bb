# shellcheck shell=bash
# Sourced by tests/run-all.sh: a private Docker engine, test images and a registry on
# loopback for the stack tests (tests/tests/it/stacks.rs) and the stack benchmark.
#
# Installs (apt) busybox-static and docker-registry if missing, starts a private dockerd
# (tests/docker/ctl.sh) under $PHOENIX_TEST_WORK/docker, imports a busybox image built from
# Debian's static binary, starts docker-registry on 127.0.0.1 and pushes a second image
# there (then deletes it locally, so tests exercise the pull path). Exports:
#   PHOENIX_DOCKER_HOST (unix://…), PHOENIX_DOCKERD_CTL + PHOENIX_DOCKERD_DIR
#   (`ctl.sh start|stop|restart DIR`), PHOENIX_TEST_IMAGE (local image),
#   PHOENIX_REGISTRY (host:port), PHOENIX_REGISTRY_IMAGE (only in the registry).
# The cleanup function stops the registry and the daemon and removes their data.

phoenix_docker_setup() {
  local t0=$SECONDS
  command -v dockerd >/dev/null || { echo "dockerd is not installed" >&2; return 1; }
  if ! command -v busybox >/dev/null || ! command -v docker-registry >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static docker-registry >/dev/null || return 1
  fi
  local dir="$PHOENIX_TEST_WORK/docker"
  mkdir -p "$dir"
  export PHOENIX_DOCKERD_CTL
  PHOENIX_DOCKERD_CTL="$(pwd)/tests/docker/ctl.sh"
  export PHOENIX_DOCKERD_DIR="$dir"
  export PHOENIX_DOCKER_HOST="unix://$dir/docker.sock"
  bash "$PHOENIX_DOCKERD_CTL" start "$dir" || return 1
  local d=(docker -H "$PHOENIX_DOCKER_HOST")

  # A minimal image: Debian's static busybox and its applets, nothing else.
  local root="$dir/image-root"
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/tmp" "$root/data"
  cp "$(command -v busybox)" "$root/bin/busybox"
  local a
  for a in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
  export PHOENIX_TEST_IMAGE="phoenix-test/busybox:1"
  tar -C "$root" -c . | "${d[@]}" import -c 'CMD ["/bin/sh"]' - "$PHOENIX_TEST_IMAGE" >/dev/null || return 1

  local port
  port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
  mkdir -p "$dir/registry/data"
  cat >"$dir/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry/data
http:
  addr: 127.0.0.1:$port
YAML
  setsid docker-registry serve "$dir/registry/config.yml" >"$dir/registry/log" 2>&1 </dev/null &
  echo $! >"$dir/registry/pid"
  export PHOENIX_REGISTRY="127.0.0.1:$port"
  local i
  for i in $(seq 1 50); do
    python3 -c "import urllib.request;urllib.request.urlopen('http://$PHOENIX_REGISTRY/v2/')" 2>/dev/null && break
    sleep 0.1
  done
  # A different image ID than PHOENIX_TEST_IMAGE: same files, another default command.
  export PHOENIX_REGISTRY_IMAGE="$PHOENIX_REGISTRY/phoenix-test/busybox:pulled"
  tar -C "$root" -c . | "${d[@]}" import -c 'CMD ["/bin/true"]' - "$PHOENIX_REGISTRY_IMAGE" >/dev/null || return 1
  "${d[@]}" push "$PHOENIX_REGISTRY_IMAGE" >/dev/null || return 1
  "${d[@]}" rmi "$PHOENIX_REGISTRY_IMAGE" >/dev/null || return 1
  echo "dockerd $("${d[@]}" version --format '{{.Server.Version}}') at $PHOENIX_DOCKER_HOST, registry at $PHOENIX_REGISTRY (setup $((SECONDS - t0)) s)"
}

phoenix_docker_cleanup() {
  local dir="${PHOENIX_DOCKERD_DIR:-}"
  [ -n "$dir" ] || return 0
  if [ -f "$dir/registry/pid" ]; then
    kill "$(cat "$dir/registry/pid")" 2>/dev/null || true
  fi
  if [ -S "$dir/docker.sock" ]; then
    local ids
    ids="$(docker -H "unix://$dir/docker.sock" ps -aq 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [ -n "$ids" ] && docker -H "unix://$dir/docker.sock" rm -f $ids >/dev/null 2>&1
  fi
  bash "$PHOENIX_DOCKERD_CTL" stop "$dir"
  # Layer mounts left by a killed daemon would make rm fail.
  grep -o " $dir/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir"
}

if phoenix_docker_setup; then
  cleanup_fns+=(phoenix_docker_cleanup)
else
  echo "SETUP FAILED: private Docker engine (tests needing it fail under PHOENIX_REQUIRE_ALL=1)" >&2
fi
