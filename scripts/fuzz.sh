#!/usr/bin/env bash
# Fuzz the parsers of untrusted input with cargo-fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh                 # every target, 600 s each
#   scripts/fuzz.sh 120             # every target, 120 s each
#   scripts/fuzz.sh 300 pe csr      # some targets
# Targets (fuzz/fuzz_targets/): pe, authenticode, pkcs7, efivar, csr, guestos, uki, offline, verity.
#
# cargo-fuzz passes nightly-only -Z flags to rustc. No nightly toolchain can be
# downloaded on our machines, so the stable compiler is told to accept them
# (RUSTC_BOOTSTRAP=1); its rust-std ships the ASan runtime, which is all
# cargo-fuzz needs.
#
# Seeds come from testdata/ and from files made here with our binary and
# openssl: a signed systemd-boot and its detached PKCS#7, the ESLs and .auth
# files of `pki init --uefi`, CSRs, GuestOS manifests. The corpus grows in
# fuzz/corpus/TARGET (git-ignored); a crash lands in fuzz/artifacts/TARGET/.
# After fixing it, copy the input to testdata/regress/TARGET/: tests/malformed.rs
# replays those through the CLI on every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pe authenticode pkcs7 efivar csr guestos uki offline verity)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

cargo build --quiet --release --bin pki-signer
bin=$root/target/release/pki-signer

# ---------------------------------------------------------------------------
# Seeds (rebuilt each run; small)
seeds=$root/fuzz/seeds
rm -rf "$seeds"
for t in pe authenticode pkcs7 efivar csr guestos uki offline verity; do mkdir -p "$seeds/$t"; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp_if() { # cp_if DEST FILES... (missing or no files are fine)
    local dest=$1
    shift
    for f in "$@"; do [ -f "$f" ] && cp "$f" "$dest/" || true; done
}

(
    cd "$work"
    "$bin" pki init --uefi --key-type ec:prime256v1 --dir pki >/dev/null
    "$bin" pki init --dir pki-rsa --key-type rsa:2048 >/dev/null
    cp_if "$seeds/efivar" pki/*.esl pki/*.auth
    # The PKCS#7 of each .auth: WIN_CERTIFICATE dwLength at 16, data from 40.
    for a in pki/*.auth; do
        python3 - "$a" "$seeds/pkcs7/$(basename "$a" .auth).p7" <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack_from("<I", b, 16)[0]
open(sys.argv[2], "wb").write(b[40:16 + n])
EOF
    done
    for efi in /usr/lib/systemd/boot/efi/systemd-bootx64.efi /usr/lib/systemd/boot/efi/linuxx64.efi.stub; do
        [ -f "$efi" ] || continue
        n=$(basename "$efi")
        cp "$efi" "$seeds/pe/$n"
        "$bin" pe sign "$efi" -o "$seeds/pe/signed-$n" --role ssig_subca --dir pki >/dev/null
        "$bin" pe sign "$efi" --detached "$seeds/authenticode/ec-$n.p7" --role ssig_subca --dir pki >/dev/null
        "$bin" pe sign "$efi" --detached "$seeds/authenticode/rsa-$n.p7" --role ssig_subca --dir pki-rsa >/dev/null
        "$bin" pe sign "$seeds/pe/signed-$n" -o "$seeds/pe/twice-$n" --append --role ssig --dir pki-rsa >/dev/null
    done
    cp_if "$seeds/pkcs7" "$seeds"/authenticode/*.p7
    # GuestOS: templates, and a signed one with a CMS signature.
    cp_if "$seeds/guestos" "$root"/testdata/guestos/*.conf
    cp "$root/testdata/guestos/core-1.conf" core-1.conf
    "$bin" guestos sign core-1.conf --cms --role ssig_cml --dir pki >/dev/null
    cp core-1.p7s "$seeds/pkcs7/"
    # dm-verity: a hash image of a small image, followed by that image.
    mkdir -p core-1
    head -c 16384 /dev/zero >core-1/root.img
    head -c 4096 /dev/zero >core-1/modules.img
    "$bin" guestos sign core-1.conf --role ssig_cml --dir pki --images . --verity >/dev/null
    cat core-1/root.hash.img core-1/root.img >"$seeds/verity/root.hash.img+data"
    # CSRs: EC and RSA, PEM and DER, with and without SANs.
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k1.pem \
        -subj "/O=fuzz/CN=device-1" -addext "subjectAltName=DNS:d1.example,IP:10.0.0.1" \
        -out "$seeds/csr/ec.csr" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout k2.pem -subj "/CN=device-2" \
        -out "$seeds/csr/rsa.csr" 2>/dev/null
    openssl req -in "$seeds/csr/ec.csr" -outform DER -out "$seeds/csr/ec.der"
)
for t in pe authenticode pkcs7 efivar csr guestos uki offline verity; do
    for d in "testdata/malformed/$t" "testdata/regress/$t"; do
        [ -d "$d" ] && cp_if "$seeds/$t" "$d"/*
    done
done
cp_if "$seeds/pkcs7" testdata/malformed/auth/* testdata/malformed/authenticode/*
cp_if "$seeds/efivar" testdata/malformed/esl/* testdata/malformed/auth/*
cp_if "$seeds/guestos" testdata/malformed/conf/*

# ---------------------------------------------------------------------------
cargo fuzz build -O
mkdir -p fuzz/logs
printf '%-14s %8s %12s %8s %s\n' target seconds executions exec/s result >fuzz/logs/summary.txt
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=fuzz/logs/$t.log
    echo "fuzzing $t for ${secs}s (log: $log)"
    start=$(date +%s)
    set +e
    # -fork=1 with -ignore_*: a crash is saved and fuzzing goes on for the
    # whole time instead of stopping at the first one. rss_limit: hostile size
    # fields must not make us allocate much.
    cargo fuzz run -O "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$secs" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -timeout=30 -rss_limit_mb=2048 -max_len=262144 >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    # Progress lines: "#EXECS: cov: .. exec/s: N oom/timeout/crash: A/B/C time: ..".
    last=$(grep -E '^#[0-9]+: ' "$log" | tail -n 1)
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
    rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    bad=$(sed -nE 's/.*oom\/timeout\/crash: ([0-9]+\/[0-9]+\/[0-9]+).*/\1/p' <<<"$last")
    if [ $rc -eq 0 ] && [ "${bad:-0/0/0}" = 0/0/0 ]; then
        result=ok
    else
        result="FAILED (exit $rc, oom/timeout/crash ${bad:-?}): see fuzz/artifacts/$t/"
        status=1
    fi
    printf '%-14s %8s %12s %8s %s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$result" | tee -a fuzz/logs/summary.txt
done
echo
cat fuzz/logs/summary.txt
exit $status
