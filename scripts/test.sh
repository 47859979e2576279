#!/usr/bin/env bash
# The test command: installs the peer tools the tests check our output with,
# then runs formatting/lint checks and every test.
#   scripts/test.sh            # everything
#   scripts/test.sh pki        # only tests whose name matches "pki" (cargo test filter)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

source scripts/testbins.sh
source tests/ovmf/deps.sh
source scripts/layer-deps.sh
source scripts/stubdebs.sh

ensure_cargo
# Peers: openssl (x509/verify/pkey), efitools (ESL/auth), sbsigntool, osslsigncode, pesign;
# systemd-boot-efi and the kernel are real binaries to sign; SoftHSM2 + opensc are the HSM;
# protoc reads GuestOS manifests independently; python3-cryptography makes the odd CSRs
# (NUL, ESC, zero-width subjects) that openssl's -subj cannot; veritysetup (cryptsetup-bin)
# checks the dm-verity hash images of GuestOS images.
ensure_apt openssl efitools sbsigntool osslsigncode pesign systemd-boot-efi softhsm2 opensc protobuf-compiler \
    python3-cryptography cryptsetup-bin
# uki: systemd-measure (systemd) predicts PCR 11; its `sign` needs libtss2 and a TPM (swtpm).
ensure_apt systemd swtpm libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0 libtss2-tcti-swtpm0
# OVMF + QEMU + swtpm (+ swtpm-tools) + virt-firmware (venv) for the firmware and TPM proofs
# (tests/firmware.rs, tests/tpm.rs: PKI_SIGNER_TEST_VMLINUZ from testbins_prepare below).
ovmf_deps
# systemd-stub 254, 257 and 262, systemd-measure 254 and 262, ukify 254, 257 and 262, from Debian debs extracted
# into the cache (tests/uki.rs, tests/tpm.rs: the stubs newer than Debian 12's); after ovmf_deps,
# whose venv has pefile for ukify.
stubdebs_prepare
# bitbake's bb library (PyPI bitbake-setup), oelint-adv and pytest for the layer tests.
layer_deps
testbins_prepare

# Tests fail (instead of skipping) when a peer tool is missing.
export PKI_SIGNER_REQUIRE_PEERS=1

cargo fmt --all -- --check
cargo clippy --quiet --all-targets -- -D warnings
# The fuzz targets are a workspace of their own, which the lines above do not
# build: check that they still compile against the library (nightly features
# of libfuzzer-sys need RUSTC_BOOTSTRAP on the stable toolchain).
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo check --quiet --bins)
cargo test --all-targets "$@"
