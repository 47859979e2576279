#!/usr/bin/env bash
# The main job on built-in defaults, step by step:
#   create a development PKI (with UEFI keys) -> build a small UKI from
#   testdata/uki with objcopy -> sign it with the Software Signing Sub CA ->
#   verify it against the UEFI db signature list.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_cargo
ensure_apt systemd-boot-efi binutils

step() { printf '\n==> %s\n' "$*"; }

step "build pki-signer (release)"
cargo build --release --quiet
bin=$PWD/target/release/pki-signer

work=$(mktemp -d "${TMPDIR:-/tmp}/pki-signer-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PKI_SIGNER_DIR=$work/pki

step "pki-signer pki init --uefi   (PKI_SIGNER_DIR=$PKI_SIGNER_DIR)"
"$bin" pki init --uefi

step "pki-signer pki init --uefi   (again: generate-if-absent)"
"$bin" pki init --uefi

step "pki-signer pki check"
"$bin" pki check

step "build a UKI: systemd stub + testdata/uki/{os-release,cmdline,linux.bin} (objcopy)"
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
# New sections go after the stub's last one, 4 KiB aligned (systemd-stub(7)).
end=0
while read -r size vma; do
    e=$((16#$vma + 16#$size))
    [ "$e" -gt "$end" ] && end=$e
done < <(objdump -h -w "$stub" | awk '$1 ~ /^[0-9]+$/ {print $3, $4}')
args=()
off=$(( (end + 4095) / 4096 * 4096 ))
for s in osrel:testdata/uki/os-release cmdline:testdata/uki/cmdline linux:testdata/uki/linux.bin; do
    name=${s%%:*} file=${s#*:}
    args+=(--add-section ".$name=$file" --change-section-vma ".$name=$(printf '0x%x' "$off")")
    off=$(( (off + $(stat -c %s "$file") + 4095) / 4096 * 4096 ))
done
objcopy "${args[@]}" "$stub" "$work/demo-uki.efi"
echo "$work/demo-uki.efi: $(stat -c %s "$work/demo-uki.efi") bytes"

step "pki-signer pe sign demo-uki.efi -o demo-uki.signed.efi --role ssig_subca"
"$bin" pe sign "$work/demo-uki.efi" -o "$work/demo-uki.signed.efi" --role ssig_subca

step "pki-signer pe verify demo-uki.signed.efi --db \$PKI_SIGNER_DIR/DB.esl"
"$bin" pe verify "$work/demo-uki.signed.efi" --db "$PKI_SIGNER_DIR/DB.esl"

step "pki-signer pe verify demo-uki.efi (unsigned) --db \$PKI_SIGNER_DIR/DB.esl   (must fail)"
if "$bin" pe verify "$work/demo-uki.efi" --db "$PKI_SIGNER_DIR/DB.esl"; then
    echo "unsigned image was accepted" >&2
    exit 1
fi

step "pki-signer pe show demo-uki.signed.efi"
"$bin" pe show "$work/demo-uki.signed.efi"

echo
echo "demo finished: PKI, UKI and signed UKI lived in $work (removed on exit)"
