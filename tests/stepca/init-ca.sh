#!/usr/bin/env bash
# Creates a fresh step-ca under DIR without the step CLI:
#   init-ca.sh DIR STEP_CA_BIN STEPCA_KEYTOOL
#
# - root and intermediate CA: ECDSA P-256, made with `openssl ca` so their NotBefore can be
#   backdated by one day (step-ca verifies x5c renew tokens at leaf.NotAfter - 1m, which must
#   fall inside the CA certs' validity);
# - JWK provisioner "phoenix": P-256, kid = RFC 7638 thumbprint, public half inline in
#   ca.json, private half both as a plain JWK (0600) and as step's PBES2 JWE (encryptedKey)
#   with a random password file (0600);
# - bbolt DB, so revoke and replay protection survive restarts;
# - short lifetimes for rotation tests: min 10s, default 2m, max 24h, renewal after expiry on;
# - listens on 127.0.0.1 on a port that was free at init time.
#
# Writes DIR/stepca.env: the PHOENIX_STEPCA_* variables tests read (see ctl.sh).
set -euo pipefail

dir="${1:?usage: init-ca.sh DIR STEP_CA_BIN STEPCA_KEYTOOL}"
bin="${2:?usage: init-ca.sh DIR STEP_CA_BIN STEPCA_KEYTOOL}"
keytool="${3:?usage: init-ca.sh DIR STEP_CA_BIN STEPCA_KEYTOOL}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ -e "$dir/config/ca.json" ]; then
  echo "init-ca: $dir already holds a CA" >&2
  exit 1
fi
umask 077
mkdir -p "$dir"/{certs,secrets,config,db,openssl/newcerts}
touch "$dir/openssl/index.txt"
openssl rand -hex 8 >"$dir/openssl/serial"

cnf="$dir/openssl/openssl.cnf"
cat >"$cnf" <<EOF
[ ca ]
default_ca = phoenix_ca
[ phoenix_ca ]
dir = $dir/openssl
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
serial = \$dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
commonName = supplied
organizationName = optional
[ root_ext ]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ intermediate_ext ]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

start="$(date -u -d '-1 day' +%y%m%d%H%M%SZ)"
end="$(date -u -d '+10 years' +%y%m%d%H%M%SZ)"
genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

genkey "$dir/secrets/root_ca_key"
openssl req -new -key "$dir/secrets/root_ca_key" -subj "/O=Phoenix tests/CN=Phoenix Test Root CA" \
  -out "$dir/openssl/root.csr"
openssl ca -batch -notext -config "$cnf" -selfsign -keyfile "$dir/secrets/root_ca_key" \
  -in "$dir/openssl/root.csr" -out "$dir/certs/root_ca.crt" -extensions root_ext \
  -startdate "$start" -enddate "$end" 2>/dev/null

genkey "$dir/secrets/intermediate_ca_key"
openssl req -new -key "$dir/secrets/intermediate_ca_key" \
  -subj "/O=Phoenix tests/CN=Phoenix Test Intermediate CA" -out "$dir/openssl/intermediate.csr"
openssl ca -batch -notext -config "$cnf" -cert "$dir/certs/root_ca.crt" \
  -keyfile "$dir/secrets/root_ca_key" -in "$dir/openssl/intermediate.csr" \
  -out "$dir/certs/intermediate_ca.crt" -extensions intermediate_ext \
  -startdate "$start" -enddate "$end" 2>/dev/null
openssl verify -CAfile "$dir/certs/root_ca.crt" "$dir/certs/intermediate_ca.crt" >/dev/null
chmod 644 "$dir/certs/"*.crt

openssl rand -hex 24 >"$dir/secrets/password"
"$keytool" "$dir/secrets/password" "$dir/secrets"
chmod 644 "$dir/secrets/provisioner.pub.json" "$dir/secrets/provisioner.jwe"
pub="$(cat "$dir/secrets/provisioner.pub.json")"
jwe="$(cat "$dir/secrets/provisioner.jwe")"
fingerprint="$(openssl x509 -in "$dir/certs/root_ca.crt" -outform DER | sha256sum | cut -c1-64)"

# A port that is free now. step-ca is started later, so ctl.sh re-checks on start.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 20000))
  if ! port_in_use "$candidate"; then
    port="$candidate"
    break
  fi
done
[ -n "$port" ] || { echo "init-ca: no free port found" >&2; exit 1; }

cat >"$dir/config/ca.json" <<EOF
{
  "root": "$dir/certs/root_ca.crt",
  "federatedRoots": null,
  "crt": "$dir/certs/intermediate_ca.crt",
  "key": "$dir/secrets/intermediate_ca_key",
  "address": "127.0.0.1:$port",
  "insecureAddress": "",
  "dnsNames": ["127.0.0.1", "localhost"],
  "logger": {"format": "text"},
  "db": {"type": "bbolt", "dataSource": "$dir/db/bbolt.db"},
  "authority": {
    "provisioners": [{
      "type": "JWK",
      "name": "phoenix",
      "key": $pub,
      "encryptedKey": "$jwe"
    }],
    "backdate": "1m",
    "claims": {
      "minTLSCertDuration": "10s",
      "defaultTLSCertDuration": "2m",
      "maxTLSCertDuration": "24h",
      "disableRenewal": false,
      "allowRenewalAfterExpiry": true
    }
  },
  "tls": {
    "cipherSuites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                     "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
    "minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false
  }
}
EOF

cat >"$dir/stepca.env" <<EOF
PHOENIX_STEPCA_DIR=$dir
PHOENIX_STEPCA_BIN=$bin
PHOENIX_STEPCA_KEYTOOL=$keytool
PHOENIX_STEPCA_CTL=$here/ctl.sh
PHOENIX_STEPCA_INIT=$here/init-ca.sh
PHOENIX_STEPCA_URL=https://127.0.0.1:$port
PHOENIX_STEPCA_ROOT=$dir/certs/root_ca.crt
PHOENIX_STEPCA_FINGERPRINT=$fingerprint
PHOENIX_STEPCA_PROVISIONER=phoenix
PHOENIX_STEPCA_JWK=$dir/secrets/provisioner.jwk.json
PHOENIX_STEPCA_JWE=$dir/secrets/provisioner.jwe
PHOENIX_STEPCA_PASSWORD_FILE=$dir/secrets/password
PHOENIX_STEPCA_LOG=$dir/step-ca.log
EOF
chmod 644 "$dir/stepca.env"
chmod 755 "$dir" "$dir/certs" "$dir/config"
