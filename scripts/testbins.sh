# shellcheck shell=bash
# Sourced by scripts/test.sh (and by scripts/bench.sh, for the kernel):
# prepares the real binaries the PE tests sign and exports their paths.
# Cached in ${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}.
#   PKI_SIGNER_TEST_VMLINUZ  Debian's kernel as Debian ships it (signed by Debian)
#   PKI_SIGNER_TEST_UKI      an unsigned UKI built with objcopy (tests/ovmf/make-uki.sh)

testbins_prepare() {
    testbins_kernel
    local cache="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"
    local uki="$cache/test-uki.efi"
    if [ ! -s "$uki" ]; then
        bash tests/ovmf/make-uki.sh "$uki.part" >/dev/null && mv "$uki.part" "$uki"
    fi
    export PKI_SIGNER_TEST_UKI="$uki"
}

# testbins_kernel: PKI_SIGNER_TEST_VMLINUZ only (scripts/bench.sh uses it too).
testbins_kernel() {
    local cache="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"
    mkdir -p "$cache"
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq >/dev/null
        pkg=$(apt-cache depends linux-image-amd64 | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    fi
    local signed="$cache/vmlinuz-signed-$pkg"
    if [ ! -s "$signed" ]; then
        local tmp
        tmp=$(mktemp -d "$cache/dl.XXXXXX")
        (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1 && dpkg-deb --fsys-tarfile ./*.deb | tar -x --wildcards './boot/vmlinuz-*')
        mv "$tmp"/boot/vmlinuz-* "$signed.part" && mv "$signed.part" "$signed"
        rm -rf "$tmp"
    fi
    export PKI_SIGNER_TEST_VMLINUZ="$signed"
}
