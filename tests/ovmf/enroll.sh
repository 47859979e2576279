#!/usr/bin/env bash
# tests/ovmf/enroll.sh -- firmware proof for `pki-signer efivar auth` and the
# .auth files of `pki init --uefi`: OVMF started in Setup Mode accepts our
# PK.auth, KEK.auth and DB.auth written through efivarfs from a small
# initrd, rejects forged ones, stores exactly our signature lists, and then
# enforces Secure Boot with them.
#
# Usage:
#   tests/ovmf/enroll.sh [--pki DIR] [--timeout 180] [--keep DIR] [--accel tcg|kvm]
#
#   --pki DIR   a PKI made by `pki-signer pki init --uefi` (RSA, so that
#               OVMF can check Authenticode signatures of ssig_subca); default:
#               a fresh one (rsa:2048, SOURCE_DATE_EPOCH=1700000000)
#   --keep DIR  keep the work files (serial logs, UKIs, .auth files) in DIR
#
# Exit: 0 every firmware verdict was as expected, 1 a verdict was wrong,
# 2 harness error (missing tool, timeout, QEMU died).  Progress on stderr.
#
# How:
#   1. Host: besides the PKI's own PK.auth, KEK.auth and DB.auth, make three
#      forged updates with `efivar auth`: KEK signed by KEK (not PK), db signed
#      by DB (neither KEK nor PK), and DB.auth with one byte of its list
#      flipped.  Each file is prefixed with the attributes word (0x27:
#      NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS), which is the form
#      efivarfs takes.
#   2. An initrd (busybox-static, efivarfs.ko from the same Debian kernel
#      package as the vmlinuz) whose /init, when the firmware is in Setup
#      Mode, writes in this order, each with a single write(2) through
#      efivarfs (dd bs=1M), remounting efivarfs after each attempt so a failed
#      create leaves no stale inode:
#        PK.auth            accepted (Setup Mode: signed by the PK it carries)
#        kek-by-kek.auth    rejected (User Mode now: KEK must be signed by PK)
#        KEK.auth           accepted
#        db-by-db.auth      rejected (db must be signed by KEK or PK)
#        db-tampered.auth   rejected
#        DB.auth            accepted
#      and prints SetupMode/SecureBoot before and after, and the SHA-256 of
#      what the firmware then returns for PK, KEK and db (compared here with
#      PK.esl, KEK.esl, DB.esl).  Outside Setup Mode it only reports.
#      tests/ovmf/make-uki.sh wraps kernel + initrd into a UKI.
#   3. Boot 1: blank OVMF_VARS_4M.fd (Setup Mode), the unsigned UKI: enrolment.
#   4. Boot 2: the same variable store, the UKI signed by `pki-signer pe sign
#      --role ssig_subca` (whose certificate DB.auth put into db): must boot,
#      and the kernel must say Secure Boot is enabled.
#   5. Boot 3: the unsigned UKI: OVMF must refuse it (Access Denied).
#   QEMU: OVMF_CODE_4M.secboot.fd on q35 with SMM, -accel tcg (KVM here lacks
#   SMM), no NIC, -no-reboot.  About 25 s per boot on 2 cores.
# Needs: tests/ovmf/deps.sh (ovmf qemu busybox-static mtools dosfstools
# binutils), apt-get download (one linux-image .deb, cached with the kernel
# in ${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}/efivarfs/),
# python3 (make-uki.sh), cargo (builds pki-signer unless PKI_SIGNER_BIN is set).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OVMF_CODE="${PKI_SIGNER_OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.secboot.fd}"
OVMF_VARS="${PKI_SIGNER_OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}"
CACHE="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"
GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
IMAGE_DB=d719b2cb-3d3a-4596-a3bc-dad00e67656f

log() { echo "enroll.sh: $*" >&2; }
harness_fail() { log "ERROR: $*"; exit 2; }

PKI="" TIMEOUT=180 KEEP="" ACCEL="${PKI_SIGNER_QEMU_ACCEL:-tcg}"
while [ $# -gt 0 ]; do
	case "$1" in
	--pki) PKI="${2:?--pki needs a directory}"; shift 2 ;;
	--timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
	--keep) KEEP="${2:?--keep needs a directory}"; shift 2 ;;
	--accel) ACCEL="${2:?--accel needs tcg or kvm}"; shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) harness_fail "unknown argument $1 (see --help)" ;;
	esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || harness_fail "--timeout wants whole seconds"

# ---- tools ------------------------------------------------------------------
# shellcheck source=tests/ovmf/deps.sh
. "$HERE/deps.sh"
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v mcopy >/dev/null ||
	! command -v mkfs.fat >/dev/null || ! command -v busybox >/dev/null || [ ! -f "$OVMF_CODE" ]; then
	ovmf_deps || harness_fail "installing dependencies failed"
fi
BIN="${PKI_SIGNER_BIN:-}"
if [ -z "$BIN" ]; then
	(cd "$REPO" && cargo build -q) || harness_fail "cargo build failed"
	BIN="$REPO/target/debug/pki-signer"
fi
[ -x "$BIN" ] || harness_fail "no pki-signer binary at $BIN"

WORK="$(mktemp -d)"
QPID=""
cleanup() {
	if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
		kill "$QPID" 2>/dev/null || true
		wait "$QPID" 2>/dev/null || true
	fi
	if [ -n "$KEEP" ] && mkdir -p "$KEEP"; then cp -a "$WORK/." "$KEEP/" || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

# ---- kernel and efivarfs.ko from one linux-image package ---------------------
# shellcheck source=tests/ovmf/kernel.sh
. "$HERE/kernel.sh"
KDIR="$(kernel_and_module)"
log "kernel and efivarfs.ko from $KDIR"

# ---- PKI and the updates ----------------------------------------------------
if [ -z "$PKI" ]; then
	PKI="$WORK/pki"
	SOURCE_DATE_EPOCH=1700000000 "$BIN" pki init --uefi --key-type rsa:2048 --dir "$PKI" >/dev/null ||
		harness_fail "pki init failed"
fi
for f in PK.auth KEK.auth DB.auth PK.esl KEK.esl DB.esl; do
	[ -f "$PKI/$f" ] || harness_fail "$PKI/$f missing (made by pki init --uefi)"
done
A="$WORK/root/auth"
mkdir -p "$A"
"$BIN" efivar auth --var KEK --role KEK --dir "$PKI" "$PKI/KEK.esl" -o "$WORK/kek-by-kek.auth" >/dev/null
"$BIN" efivar auth --var db --role DB --dir "$PKI" "$PKI/DB.esl" -o "$WORK/db-by-db.auth" >/dev/null
cp "$PKI/DB.auth" "$WORK/db-tampered.auth"
# Flip one byte inside the last certificate's signature: the list still
# parses, only the PKCS#7 signature over it breaks.
size=$(stat -c%s "$WORK/db-tampered.auth")
printf '\x5a' | dd of="$WORK/db-tampered.auth" bs=1 seek=$((size - 20)) conv=notrunc status=none
# efivarfs takes the attributes word, then the EFI_VARIABLE_AUTHENTICATION_2 data.
efivarfs_file() { { printf '\x27\x00\x00\x00'; cat "$1"; } >"$A/$2"; }
efivarfs_file "$PKI/PK.auth" PK.bin
efivarfs_file "$PKI/KEK.auth" KEK.bin
efivarfs_file "$PKI/DB.auth" db.bin
efivarfs_file "$WORK/kek-by-kek.auth" kek-by-kek.bin
efivarfs_file "$WORK/db-by-db.auth" db-by-db.bin
efivarfs_file "$WORK/db-tampered.auth" db-tampered.bin

# ---- initrd -----------------------------------------------------------------
R="$WORK/root"
mkdir -p "$R/bin" "$R/dev" "$R/proc" "$R/sys" "$R/tmp"
cp "$(command -v busybox)" "$R/bin/busybox"
cp "$KDIR/efivarfs.ko" "$R/efivarfs.ko"
cat >"$R/init" <<EOF
#!/bin/busybox sh
bb=/bin/busybox
\$bb mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
\$bb mount -t proc proc /proc
\$bb mount -t sysfs sysfs /sys
\$bb dmesg | \$bb grep -i 'secure boot' | \$bb sed 's/^/ENROLL-DMESG: /'
V=/sys/firmware/efi/efivars
mnt() { \$bb mount -t efivarfs efivarfs \$V; }
# efivarfs files cannot seek: copy a variable out before picking it apart.
get() { \$bb cat "\$V/\$1" >/tmp/var 2>/dev/null || : >/tmp/var; }
byte() { get "\$1-$GLOBAL"; \$bb od -An -tu1 -j4 -N1 /tmp/var | \$bb tr -d ' \n'; }
state() { echo "ENROLL-STATE \$1 SetupMode=\$(byte SetupMode) SecureBoot=\$(byte SecureBoot)"; }
# One write(2) per attempt; remount afterwards so a failed create leaves no
# stale (immutable) inode behind.
put() {
	if \$bb dd if=/auth/\$2 of=\$V/\$1 bs=1M 2>/tmp/err; then r=accepted
	else r="rejected (\$(\$bb grep -v records /tmp/err | \$bb tail -n1))"; fi
	echo "ENROLL-WRITE \$2: \$r"
	\$bb umount \$V && mnt
}
sum() { get "\$1"; \$bb dd if=/tmp/var bs=4 skip=1 2>/dev/null | \$bb sha256sum | \$bb cut -d' ' -f1; }
if \$bb insmod /efivarfs.ko && mnt; then
	state before
	if [ "\$(byte SetupMode)" = 1 ]; then
		put PK-$GLOBAL PK.bin
		state after-PK
		put KEK-$GLOBAL kek-by-kek.bin
		put KEK-$GLOBAL KEK.bin
		put db-$IMAGE_DB db-by-db.bin
		put db-$IMAGE_DB db-tampered.bin
		put db-$IMAGE_DB db.bin
		state after
	fi
	echo "ENROLL-SUM PK \$(sum PK-$GLOBAL)"
	echo "ENROLL-SUM KEK \$(sum KEK-$GLOBAL)"
	echo "ENROLL-SUM db \$(sum db-$IMAGE_DB)"
else
	echo "ENROLL-NOTE efivarfs unavailable (lockdown refuses unsigned modules under Secure Boot)"
fi
echo ENROLL-DONE
\$bb sync
\$bb poweroff -f
EOF
chmod 755 "$R/init"
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$R/dev/console" c 5 1; fi
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -9n >"$WORK/initrd.gz"
"$HERE/make-uki.sh" "$WORK/enroll.efi" --kernel "$KDIR/vmlinuz" --initrd "$WORK/initrd.gz" >/dev/null ||
	harness_fail "make-uki.sh failed"
"$BIN" pe sign "$WORK/enroll.efi" -o "$WORK/enroll-signed.efi" --role ssig_subca --dir "$PKI" >/dev/null ||
	harness_fail "pe sign failed"

# ---- QEMU -------------------------------------------------------------------
cp "$OVMF_VARS" "$WORK/vars.fd"
export MTOOLS_SKIP_CHECK=1
esp() { # UKI IMG
	local kb=$(( ($(stat -Lc%s "$1") + 1023) / 1024 + 4096 ))
	rm -f "$2"
	mkfs.fat -C -n PKITEST "$2" "$kb" >/dev/null
	mmd -i "$2" ::/EFI ::/EFI/BOOT
	mcopy -i "$2" "$1" ::/EFI/BOOT/BOOTX64.EFI
}

# boot NAME UKI: run QEMU until the initrd says ENROLL-DONE, the firmware
# refuses the image, QEMU exits or the timeout hits. Leaves $WORK/NAME.log.
boot() {
	local name="$1" uki="$2" serial="$WORK/$1.log" t0 deadline
	esp "$uki" "$WORK/esp.img"
	: >"$serial"
	qemu-system-x86_64 \
		-machine q35,smm=on -accel "$ACCEL" \
		-global ICH9-LPC.disable_s3=1 \
		-global driver=cfi.pflash01,property=secure,value=on \
		-drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
		-drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd" \
		-drive if=none,id=esp,format=raw,readonly=on,file="$WORK/esp.img" \
		-device virtio-blk-pci,drive=esp \
		-m 512 -smp 1 -nodefaults -nographic -monitor none \
		-serial "file:$serial" -nic none -no-reboot \
		</dev/null >"$WORK/$name.qemu" 2>&1 &
	QPID=$!
	t0=$(date +%s)
	deadline=$((t0 + TIMEOUT))
	while kill -0 "$QPID" 2>/dev/null; do
		if grep -aq '^ENROLL-DONE' "$serial" ||
			grep -aqE 'BdsDxe: failed to (load|start) Boot[0-9A-F]{4} "UEFI' "$serial"; then
			# Give an orderly poweroff a moment to flush the variable store.
			sleep 2
			break
		fi
		[ "$(date +%s)" -lt "$deadline" ] || { kill "$QPID"; wait "$QPID" 2>/dev/null || true; QPID=""; harness_fail "$name: timeout after ${TIMEOUT}s"; }
		sleep 0.2
	done
	if kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; fi
	wait "$QPID" 2>/dev/null || true
	QPID=""
	log "$name: done after $(( $(date +%s) - t0 )) s"
}

FAILED=0
expect() { # DESCRIPTION LOG PATTERN
	if grep -aqE "$3" "$WORK/$2.log"; then
		log "ok: $1"
	else
		log "WRONG: $1 (no /$3/ in $2.log)"
		FAILED=1
	fi
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

boot enroll "$WORK/enroll.efi"
grep -aq '^ENROLL-DONE' "$WORK/enroll.log" || { tail -n 20 "$WORK/enroll.log" >&2; harness_fail "enrolment boot did not finish"; }
tr -d '\r' <"$WORK/enroll.log" | grep -a '^ENROLL-' | sed 's/^/  | /' >&2
expect "OVMF starts in Setup Mode" enroll '^ENROLL-STATE before SetupMode=1 SecureBoot=0'
expect "PK.auth accepted (signed by the PK it carries)" enroll '^ENROLL-WRITE PK.bin: accepted'
expect "User Mode after PK" enroll '^ENROLL-STATE after-PK SetupMode=0'
# EACCES is how Linux reports EFI_SECURITY_VIOLATION from SetVariable().
expect "KEK signed by KEK rejected" enroll '^ENROLL-WRITE kek-by-kek.bin: rejected .*Permission denied'
expect "KEK.auth accepted (signed by PK)" enroll '^ENROLL-WRITE KEK.bin: accepted'
expect "db signed by DB rejected" enroll '^ENROLL-WRITE db-by-db.bin: rejected .*Permission denied'
expect "tampered DB.auth rejected" enroll '^ENROLL-WRITE db-tampered.bin: rejected .*Permission denied'
expect "DB.auth accepted (signed by KEK)" enroll '^ENROLL-WRITE db.bin: accepted'
expect "firmware holds PK.esl" enroll "^ENROLL-SUM PK $(sha "$PKI/PK.esl")"
expect "firmware holds KEK.esl" enroll "^ENROLL-SUM KEK $(sha "$PKI/KEK.esl")"
expect "firmware holds DB.esl" enroll "^ENROLL-SUM db $(sha "$PKI/DB.esl")"

boot signed "$WORK/enroll-signed.efi"
tr -d '\r' <"$WORK/signed.log" | grep -a -E '^ENROLL-|Secure [Bb]oot|locked down' | sed 's/^/  | /' >&2
expect "UKI signed by ssig_subca boots" signed '^ENROLL-DONE'
expect "kernel sees Secure Boot enabled" signed 'Secure boot enabled|UEFI Secure Boot is enabled|locked down from EFI Secure Boot'

boot unsigned "$WORK/enroll.efi"
tr -d '\r' <"$WORK/unsigned.log" | grep -a 'BdsDxe: failed' | sed 's/^/  | /' >&2
expect "unsigned UKI refused" unsigned 'BdsDxe: failed to (load|start) Boot[0-9A-F]{4} "UEFI[^"]*" from .*: (Access Denied|Security Violation)'

if [ "$FAILED" = 0 ]; then
	log "PASS: OVMF enrolled PK/KEK/db from our .auth files and enforces Secure Boot with them"
	exit 0
fi
log "FAIL: see above${KEEP:+ (logs in $KEEP)}"
exit 1
