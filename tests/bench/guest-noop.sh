#!/usr/bin/env bash
# No-op converge of the LXC 101 state (nginx package, 3 files, a certificate stand-in, the
# nginx service) inside one systemd guest container (tests/setup/30-guest.sh), timed for:
#   phoenix-agent apply (release-agent build, as shipped) · salt-call --local state.apply · ansible-playbook
# Same machine, same container, same run; the tools alternate, REPS runs each; every timed run
# is checked to have changed nothing. Prints each time and the medians and ratios.
#
# Needs network once, to build the bench image (python3-venv/python3-apt, and gcc/python3-dev
# for the one salt dependency without a wheel, from Debian; salt and
# ansible-core from PyPI); the image is cached as phoenix-guest-bench:<version>.
#   REPS=7 bash tests/bench/guest-noop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS="${REPS:-7}"
source tests/setup/30-guest.sh
bench_image="${PHOENIX_GUEST_IMAGE/phoenix-guest:/phoenix-guest-bench:}"
target="${CARGO_TARGET_DIR:-target}"
cargo build-agent -q
agent="$(realpath "$target/x86_64-unknown-linux-gnu/release-agent/phoenix-agent")"
work="$(mktemp -d /tmp/phoenix-bench.XXXXXX)"
name="phoenix-bench-$$"
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

if ! docker image inspect "$bench_image" >/dev/null 2>&1; then
  echo "building $bench_image (salt, ansible-core from PyPI)" >&2
  docker rm -f "$name-build" >/dev/null 2>&1 || true
  docker run -d --name "$name-build" --network host -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro \
    "$PHOENIX_GUEST_IMAGE" sleep infinity >/dev/null
  docker exec "$name-build" sh -c '
    set -e
    apt-get -o APT::Sandbox::User=root update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-apt python3-dev gcc >/dev/null
    for v in salt ansible; do python3 -m venv --system-site-packages /opt/$v; done
    PIP_CERT=/host-ca.crt /opt/salt/bin/pip install -q salt
    PIP_CERT=/host-ca.crt /opt/ansible/bin/pip install -q ansible-core
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only nginx >/dev/null'
  docker commit "$name-build" "$bench_image" >/dev/null
  docker rm -f "$name-build" >/dev/null
fi

# The state's content, the same bytes for all three tools.
mkdir -p "$work/files" "$work/salt/files" "$work/ansible"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=site.test -addext subjectAltName=DNS:site.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/files/site.pem"
printf 'hello from phoenix\n' >"$work/files/index.html"
printf 'server_tokens off;\n' >"$work/files/tuning.conf"
cat >"$work/files/phoenix.conf" <<'SITE'
server {
  listen 443 ssl;
  server_name site.test;
  ssl_certificate /etc/ssl/phoenix/site.pem;
  ssl_certificate_key /etc/ssl/phoenix/site.pem;
  root /var/www/phoenix;
}
SITE
cp "$work"/files/* "$work/salt/files/"
cp tests/bench/guest-noop/lxc101.sls "$work/salt/"
cp tests/bench/guest-noop/lxc101.yml "$work/ansible/"
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1]); f = lambda n: (w / "files" / n).read_text()
site, pem, tun, idx = "/etc/nginx/sites-enabled/phoenix.conf", "/etc/ssl/phoenix/site.pem", "/etc/nginx/conf.d/phoenix-tuning.conf", "/var/www/phoenix/index.html"
spec = {"resources": [
  {"kind": "package", "name": "nginx"},
  {"kind": "file", "path": pem, "content": f("site.pem"), "mode": "0600"},
  {"kind": "file", "path": idx, "content": f("index.html")},
  {"kind": "file", "path": tun, "content": f("tuning.conf"), "depends_on": ["package:nginx"]},
  {"kind": "file", "path": site, "content": f("phoenix.conf"), "depends_on": ["package:nginx"]},
  {"kind": "service", "name": "nginx.service", "enabled": True, "state": "running",
   "reload_on": ["file:" + p for p in (site, pem, tun)],
   "depends_on": ["package:nginx"] + ["file:" + p for p in (site, pem, tun, idx)]}]}
(w / "spec.json").write_text(json.dumps(spec))
PY
chmod -R a+rX "$work"

docker run -d --name "$name" --network none --tmpfs /run --tmpfs /run/lock \
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro -v "$agent:/usr/local/bin/phoenix-agent:ro" \
  -v "$work:/bench:ro" "$bench_image" /sbin/init >/dev/null
for _ in $(seq 1 120); do
  s="$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)"
  [ "$s" = running ] || [ "$s" = degraded ] && break
  sleep 0.5
done

# How each tool's output proves it changed nothing, and a timer that runs inside the guest.
cat >"$work/check.py" <<'PY'
import json, re, sys
tool, out = sys.argv[1], sys.stdin.read()
try:
    if tool == "phoenix":
        r = json.loads(out)["results"]
        ok = len(r) == 6 and all(x["status"] == "unchanged" for x in r)
    elif tool == "salt":
        r = json.loads(out)["local"]
        ok = len(r) == 6 and all(v["result"] and not v["changes"] for v in r.values())
    else:
        ok = re.search(r"ok=6\s+changed=0\s+unreachable=0\s+failed=0", out) is not None
except Exception as e:
    ok = False
if not ok:
    sys.exit("%s did not report a no-op:\n%s" % (tool, out[-3000:]))
PY
cat >"$work/timed.sh" <<'SH'
#!/bin/sh
# timed.sh TOOL ARGV... -> wall microseconds of ARGV, after checking it was a no-op
tool=$1; shift
s=$(date +%s%N); "$@" >/tmp/out 2>/tmp/err; e=$(date +%s%N)
python3 /bench/check.py "$tool" </tmp/out || { tail -20 /tmp/err >&2; exit 1; }
echo $(( (e - s) / 1000 ))
SH
chmod -R a+rX "$work"

phoenix=(/usr/local/bin/phoenix-agent apply -f /bench/spec.json --json)
salt=(/opt/salt/bin/salt-call --local --file-root=/bench/salt --out=json state.apply lxc101)
ansible=(/opt/ansible/bin/ansible-playbook -i localhost, -e ansible_python_interpreter=/usr/bin/python3 /bench/ansible/lxc101.yml)

# Converge once with the agent, then let each tool see the converged state once (warm-up;
# all three must agree that nothing is left to do).
docker exec "$name" "${phoenix[@]}" >/dev/null || true
for tool in phoenix salt ansible; do
  unset -n argv; declare -n argv="$tool"
  docker exec "$name" sh /bench/timed.sh "$tool" "${argv[@]}" >/dev/null
done

declare -A times
for i in $(seq 1 "$REPS"); do
  for tool in phoenix salt ansible; do
    unset -n argv; declare -n argv="$tool"
    us="$(docker exec "$name" sh /bench/timed.sh "$tool" "${argv[@]}")"
    times[$tool]+="$us "
    printf '%-8s run %d: %8.1f ms\n' "$tool" "$i" "$(echo "$us / 1000" | bc -l)"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mp="$(echo "${times[phoenix]}" | median)"
ms="$(echo "${times[salt]}" | median)"
ma="$(echo "${times[ansible]}" | median)"
echo
echo "no-op converge of the LXC 101 state, $REPS runs each, medians:"
printf '  phoenix-agent apply        %9.1f ms\n' "$(echo "$mp/1000" | bc -l)"
printf '  salt-call --local          %9.1f ms  (%.0fx phoenix)\n' "$(echo "$ms/1000" | bc -l)" "$(echo "$ms/$mp" | bc -l)"
printf '  ansible-playbook (local)   %9.1f ms  (%.0fx phoenix)\n' "$(echo "$ma/1000" | bc -l)" "$(echo "$ma/$mp" | bc -l)"
docker exec "$name" sh -c '/opt/salt/bin/salt-call --version; /opt/ansible/bin/ansible-playbook --version | head -1'
