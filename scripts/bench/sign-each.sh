#!/usr/bin/env bash
# The shell loop that batch signing replaces: one signer process per EFI file.
#
#   scripts/bench/sign-each.sh sbsign KEY CERT OUTDIR FILE...
#   scripts/bench/sign-each.sh pki-signer BIN PKIDIR OUTDIR FILE...   (--role ssig_subca)
set -euo pipefail

if [ $# -lt 5 ]; then
    echo "usage: $0 sbsign KEY CERT OUTDIR FILE... | pki-signer BIN PKIDIR OUTDIR FILE..." >&2
    exit 2
fi
tool=$1 a=$2 b=$3 out=$4
shift 4
case $tool in
    sbsign)
        for f in "$@"; do
            sbsign --key "$a" --cert "$b" --output "$out/${f##*/}" "$f" 2>/dev/null
        done ;;
    pki-signer)
        for f in "$@"; do
            "$a" pe sign "$f" -o "$out/${f##*/}" --role ssig_subca --dir "$b" >/dev/null
        done ;;
    *) echo "$0: unknown tool '$tool'" >&2; exit 2 ;;
esac
