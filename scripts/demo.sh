#!/usr/bin/env bash
# The main job on built-in defaults, step by step:
# build pki-signer, create a development PKI (with UEFI keys) in a temp dir,
# show it, check it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_cargo

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

step "pki-signer pki show"
"$bin" pki show

step "pki-signer pki check"
"$bin" pki check

echo
echo "demo finished: the PKI lived in $PKI_SIGNER_DIR (removed on exit)"
