#!/usr/bin/env bash
# Baseline for `pki-signer csr sign`: what a hand-written script does, one
# `openssl x509 -req` per CSR (which checks the CSR's self-signature), with
# the extensions pki-signer sets (CA:false, digitalSignature, clientAuth) and
# the requested subjectAltName copied. Each DEVICE.cert holds the certificate
# then the issuer's chain, like pki-signer's output.
#
#   scripts/bench/openssl-csr-sign.sh CA.cert CA.key OUTDIR CSR...
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 CA.cert CA.key OUTDIR CSR..." >&2
    exit 2
fi
ca=$1 cakey=$2 out=$3
shift 3
mkdir -p "$out"
ext=$(mktemp "$out/.ext.XXXXXX")
trap 'rm -f "$ext"' EXIT
cat >"$ext" <<'EXT'
basicConstraints = critical, CA:false
keyUsage         = critical, digitalSignature
extendedKeyUsage = clientAuth
EXT
for csr in "$@"; do
    name=$(basename "$csr" .csr)
    openssl x509 -req -in "$csr" -CA "$ca" -CAkey "$cakey" -days 365 -sha256 \
        -set_serial "0x$(openssl rand -hex 16)" -copy_extensions copy \
        -extfile "$ext" -out "$out/$name.pem" 2>/dev/null
    cat "$out/$name.pem" "$ca" >"$out/$name.cert"
    rm -f "$out/$name.pem"
done
