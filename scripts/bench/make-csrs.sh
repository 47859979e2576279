#!/usr/bin/env bash
# Device CSRs for the csr benchmark: COUNT EC P-256 keys, each with a PKCS#10
# request for subject O=fleet, CN=dev-NNNNN and subjectAltName
# DNS:dev-NNNNN.local, as a device would send them. The keys are thrown away.
#
#   scripts/bench/make-csrs.sh DIR COUNT
#
# One openssl process per CSR, on all cores. Filled in a temp directory that
# is renamed to DIR when complete, so DIR is either absent or complete.
set -euo pipefail

if [ $# -ne 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 DIR COUNT" >&2
    exit 2
fi
dir=$1
count=$2
[ -e "$dir" ] && { echo "$0: $dir already exists" >&2; exit 1; }
mkdir -p "$(dirname "$dir")"
work=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2016 # expanded by the inner shell
seq -f '%05g' 1 "$count" | xargs -P "$(nproc)" -n 50 sh -c '
    dir=$0
    for n; do
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout /dev/null -subj "/O=fleet/CN=dev-$n" \
            -addext "subjectAltName=DNS:dev-$n.local" \
            -out "$dir/dev-$n.csr" 2>/dev/null || exit 255
    done' "$work"
n=$(find "$work" -name '*.csr' | wc -l)
[ "$n" -eq "$count" ] || { echo "$0: made $n of $count CSRs" >&2; exit 1; }
mv "$work" "$dir"
