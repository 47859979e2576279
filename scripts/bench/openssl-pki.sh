#!/usr/bin/env bash
# Baseline for `pki-signer pki init`: the development PKI built the way a
# hand-written openssl script does it (compare GyroidOS gen_dev_certs.sh),
# one openssl command after another.
#
#   scripts/bench/openssl-pki.sh DIR KEYTYPE     KEYTYPE: rsa:BITS | ec:CURVE
#
# Same roles, issuers, subjects, lifetimes and extensions as src/pki.rs
# (BUILTIN). Writes NAME.key (PKCS#8 PEM) and NAME.cert (the certificate
# followed by its issuing sub CAs, root excluded) into DIR. No pki.json.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR rsa:BITS|ec:CURVE" >&2
    exit 2
fi
dir=$1
keytype=$2

case $keytype in
    rsa:*) genpkey_args=(-algorithm RSA -pkeyopt "rsa_keygen_bits:${keytype#rsa:}") ;;
    ec:*) genpkey_args=(-algorithm EC -pkeyopt "ec_paramgen_curve:${keytype#ec:}"
                        -pkeyopt ec_param_enc:named_curve) ;;
    *) echo "$0: unknown key type '$keytype'" >&2; exit 2 ;;
esac

mkdir -p "$dir"
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

subj_prefix="/C=DE/O=Development PKI/OU=Development"

cnf=$work/openssl.cnf
cat >"$cnf" <<'CNF'
[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]

[ root_ca ]
basicConstraints     = critical, CA:true
keyUsage             = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ sub_ca ]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

# ssig_subca signs kernels/UKIs itself, so it also needs digitalSignature.
[ sub_ca_signing ]
basicConstraints       = critical, CA:true
keyUsage               = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ leaf_code ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = codeSigning
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ leaf_server ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF

genkey() { # NAME
    openssl genpkey "${genpkey_args[@]}" -out "$dir/$1.key"
}

root() { # NAME CN DAYS
    genkey "$1"
    openssl req -new -x509 -config "$cnf" -extensions root_ca \
        -key "$dir/$1.key" -subj "$subj_prefix/CN=$2" \
        -days "$3" -sha256 -out "$work/$1.pem"
    cp "$work/$1.pem" "$dir/$1.cert"   # roots: just the root
}

issue() { # NAME CN DAYS ISSUER EXTENSIONS
    genkey "$1"
    openssl req -new -config "$cnf" -key "$dir/$1.key" \
        -subj "$subj_prefix/CN=$2" -out "$work/$1.csr"
    # Random 128-bit serial (req -x509 picks a random one for roots itself).
    openssl x509 -req -in "$work/$1.csr" -CA "$work/$4.pem" -CAkey "$dir/$4.key" \
        -days "$3" -sha256 -extfile "$cnf" -extensions "$5" \
        -set_serial "0x$(openssl rand -hex 16)" -out "$work/$1.pem"
    # Chain: the certificate, then its issuer's chain unless that is a root.
    if [ -f "$work/$4.chain" ]; then
        cat "$work/$1.pem" "$work/$4.chain" >"$dir/$1.cert"
    else
        cp "$work/$1.pem" "$dir/$1.cert"
    fi
    cp "$dir/$1.cert" "$work/$1.chain"
}

root  ssig_rootca    "Software Signing Root CA"     3650
issue ssig_subca     "Software Signing Sub CA"      2190 ssig_rootca    sub_ca_signing
issue ssig_subca_cml "CML Signing Sub CA"           2190 ssig_rootca    sub_ca
issue ssig           "Software Signing Certificate" 1095 ssig_subca     leaf_code
issue ssig_cml       "CML Signing Certificate"      1095 ssig_subca_cml leaf_code
root  gen_rootca     "General Root CA"              3650
issue device_subca   "Device Sub CA"                 730 gen_rootca     sub_ca
issue user_subca     "User Sub CA"                  2190 gen_rootca     sub_ca
issue backend_subca  "Backend Sub CA"               2190 gen_rootca     sub_ca
issue backend        "Backend Certificate"          1095 backend_subca  leaf_server
