#!/usr/bin/env bash
# What `pki-signer uki build` replaces, for the uki-build benchmark: a signed
# UKI with a signed PCR policy from Debian 12's tools, the way ukify and
# systemd-stub(7) chain them:
#   1. systemd-measure sign: the .pcrsig JSON for the sections (it needs
#      libtss2 and a TPM for its trial policy session: swtpm, started by
#      the caller);
#   2. objcopy: the stub plus .osrel .cmdline .pcrpkey .initrd .linux
#      .pcrsig, each after the previous one, 4 KiB aligned in memory (the
#      systemd-stub(7) recipe, addresses computed as ukify does);
#   3. sbsign: the Authenticode signature.
#
#   scripts/bench/uki-peer-chain.sh OUT STUB KERNEL INITRD OSREL CMDLINE_FILE \
#       PCR_PRIVATE PCR_PUBLIC SWTPM_PORT KEY CERT
#
# The unsigned image and the JSON go to OUT's directory.
set -euo pipefail

if [ $# -ne 11 ]; then
    echo "usage: $0 OUT STUB KERNEL INITRD OSREL CMDLINE_FILE PCR_PRIVATE PCR_PUBLIC SWTPM_PORT KEY CERT" >&2
    exit 2
fi
out=$1 stub=$2 kernel=$3 initrd=$4 osrel=$5 cmdline=$6 pcr_priv=$7 pcr_pub=$8 port=$9
key=${10} cert=${11}
dir=$(dirname "$out")

/usr/lib/systemd/systemd-measure sign --linux="$kernel" --osrel="$osrel" --cmdline="$cmdline" \
    --initrd="$initrd" --pcrpkey="$pcr_pub" --bank=sha256 \
    --private-key="$pcr_priv" --public-key="$pcr_pub" \
    --tpm2-device="swtpm:host=127.0.0.1,port=$port" --json=short >"$dir/pcrsig.json"

# shellcheck source=scripts/bench/add-sections.sh
source "$(dirname "${BASH_SOURCE[0]}")/add-sections.sh"
add_sections "$stub" "$dir/uki.unsigned.efi" ".osrel=$osrel" ".cmdline=$cmdline" ".pcrpkey=$pcr_pub" \
    ".initrd=$initrd" ".linux=$kernel" ".pcrsig=$dir/pcrsig.json"

sbsign --key "$key" --cert "$cert" --output "$out" "$dir/uki.unsigned.efi" 2>/dev/null
