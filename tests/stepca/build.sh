#!/usr/bin/env bash
# Makes sure a step-ca binary and the provisioner-key tool exist, building them offline
# from Debian's Go packages when needed, and prints two lines:
#   STEP_CA_BIN=<path>
#   STEPCA_KEYTOOL=<path>
#
# step-ca: $STEP_CA_BIN if set; else the cached build in $PHOENIX_CACHE/stepca (default
# /var/cache/phoenix/stepca) if it was built from the current sources; else apt-get
# installs golang-go + golang-github-smallstep-certificates-dev and builds tests/stepca/main.go
# in GOPATH mode (Debian ships the library but drops cmd/step-ca). The key tool
# (tests/stepca/provisioner-key) is always built from Debian's go.step.sm/crypto and cached
# the same way. The build cache (GOCACHE) lives beside the binaries, so a rebuild is warm.
# Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${PHOENIX_CACHE:-/var/cache/phoenix}/stepca"
mkdir -p "$cache"

log() { echo "stepca/build: $*" >&2; }

# A cached binary is reused only if it was built from the current source and build script.
stamp_of() { cat "$here/$1" "$here/build.sh" | sha256sum | cut -c1-64; }

have_go_packages() {
  command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || return 1
  local pkg
  for pkg in "$@"; do
    [ -d "/usr/share/gocode/src/$pkg" ] || return 1
  done
}

ensure_packages() {
  local debs=("$@")
  if ! have_go_packages go.step.sm/crypto/jose ${need_certificates:+github.com/smallstep/certificates/commands}; then
    log "installing ${debs[*]} (Debian packages)"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${debs[@]}" >&2
    log "apt-get install took $((SECONDS - t0)) s"
  fi
  export PATH="$PATH:/usr/lib/go/bin"
}

# build <main.go path under tests/stepca> <output name> <cgo 0|1>
build() {
  local src="$1" out="$2" cgo="$3"
  local stamp
  stamp="$(stamp_of "$src")"
  if [ -x "$cache/$out" ] && [ "$(cat "$cache/$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  local gopath
  gopath="$(mktemp -d "$cache/gopath.XXXXXX")"
  mkdir -p "$gopath/src/phoenix/$out"
  cp "$here/$src" "$gopath/src/phoenix/$out/"
  log "building $out (GOPATH mode, GOCACHE $cache/go-build)"
  local t0=$SECONDS
  # Debian ships the Go sources as a GOPATH tree; no module proxy is reachable or needed.
  # The cgo zstd dependency prints deprecation warnings; only failures matter.
  if ! (cd "$gopath/src/phoenix/$out" &&
    GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
      CGO_ENABLED="$cgo" GOCACHE="$cache/go-build" \
      go build -trimpath -ldflags "-s -w" -o "$gopath/$out" . >"$gopath/build.log" 2>&1); then
    cat "$gopath/build.log" >&2
    rm -rf "$gopath"
    log "building $out failed"
    return 1
  fi
  mv -f "$gopath/$out" "$cache/$out"
  echo "$stamp" >"$cache/$out.stamp"
  rm -rf "$gopath"
  log "built $out in $((SECONDS - t0)) s"
}

need_certificates=""
debs=(golang-go golang-step-crypto-dev)
if [ -z "${STEP_CA_BIN:-}" ]; then
  need_certificates=1
  debs+=(golang-github-smallstep-certificates-dev)
fi

stale=""
[ -z "${STEP_CA_BIN:-}" ] && [ "$(cat "$cache/step-ca.stamp" 2>/dev/null)" != "$(stamp_of main.go)" ] && stale=1
[ "$(cat "$cache/stepca-provisioner-key.stamp" 2>/dev/null)" != "$(stamp_of provisioner-key/main.go)" ] && stale=1
[ -n "$stale" ] && ensure_packages "${debs[@]}"

if [ -z "${STEP_CA_BIN:-}" ]; then
  build main.go step-ca 1
  STEP_CA_BIN="$cache/step-ca"
fi
build provisioner-key/main.go stepca-provisioner-key 0

[ -x "$STEP_CA_BIN" ] || { log "STEP_CA_BIN=$STEP_CA_BIN is not executable"; exit 1; }
echo "STEP_CA_BIN=$STEP_CA_BIN"
echo "STEPCA_KEYTOOL=$cache/stepca-provisioner-key"
