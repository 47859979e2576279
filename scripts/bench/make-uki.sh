#!/usr/bin/env bash
# A large unsigned UKI for the pe-sign/pe-verify benchmarks: the systemd EFI
# stub plus .osrel, .cmdline and a .linux section of SIZE_MB MB of
# pseudo-random bytes (AES-CTR of zeros under a fixed key: the same file on
# every machine, and incompressible like a real compressed kernel).
#
#   scripts/bench/make-uki.sh OUT SIZE_MB
#
# Written next to OUT and renamed into place, so an interrupted run never
# leaves a truncated OUT behind for the cache to trust.
set -euo pipefail

if [ $# -ne 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 OUT SIZE_MB" >&2
    exit 2
fi
out=$1
size=$(($2 * 1000 * 1000))
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
[ -r "$stub" ] || { echo "$0: $stub missing (Debian package systemd-boot-efi)" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.make-uki.XXXXXX")
trap 'rm -rf "$work"' EXIT

printf 'ID=bench\nNAME="pki-signer benchmark"\n' >"$work/osrel"
printf 'console=ttyS0 quiet\n' >"$work/cmdline"
openssl enc -aes-128-ctr -nosalt -K 00000000000000000000000000000000 \
    -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null |
    head -c "$size" >"$work/linux" || true
[ "$(stat -c %s "$work/linux")" -eq "$size" ] || { echo "$0: could not make $size bytes" >&2; exit 1; }

# shellcheck source=scripts/bench/add-sections.sh
source "$(dirname "${BASH_SOURCE[0]}")/add-sections.sh"
add_sections "$stub" "$work/uki.efi" ".osrel=$work/osrel" ".cmdline=$work/cmdline" ".linux=$work/linux"
mv "$work/uki.efi" "$out"
