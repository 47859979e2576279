#!/usr/bin/env bash
# tests/ovmf/rotate.sh -- firmware proof for `pki-signer pki rotate`: OVMF
# in User Mode with Secure Boot enforced, enrolled with a PKI, takes the
# rotation's db append and dbx updates through efivarfs and then boots
# only what the successor signed; then takes a KEK rotation (append, then
# the replacement that drops the retired KEK), after which a db update
# signed by the new KEK is accepted and one signed by the retired KEK refused.
#
# Usage:
#   tests/ovmf/rotate.sh [--timeout 240] [--keep DIR] [--accel tcg|kvm]
#
# Exit: 0 every firmware verdict was as expected, 1 a verdict was wrong,
# 2 harness error (missing tool, timeout, QEMU died).  Progress on stderr.
#
# How:
#   1. Host: `pki init --uefi --key-type rsa:2048` (SOURCE_DATE_EPOCH set);
#      the variable store gets its PK, KEK and db (DB and ssig_subca, as
#      DB.esl) with virt-fw-vars, Secure Boot on: User Mode from the start.
#      `pki rotate ssig_subca` makes generation 2 and
#      updates/db-append-ssig_subca.2.auth and updates/dbx-ssig_subca.1.auth
#      (both appends signed by KEK).  One updater UKI is signed by the
#      predecessor (retired/ssig_subca.1.*), another by the successor.  A
#      forged db append signed by DB (not KEK) is made with `efivar auth`.
#      Then the KEK: `pki rotate KEK` makes KEK generation 2,
#      updates/KEK-append-KEK.2.auth (append) and updates/KEK-KEK.2.auth (a
#      replacement holding only the new KEK), both signed by PK; `pki rotate
#      ssig_subca` makes generation 3, its db append and the dbx update of
#      generation 2 now signed by the new KEK.  `pki rotate KEK` runs
#      without SOURCE_DATE_EPOCH: the replacement's time must be later than
#      the KEK variable's, which virt-fw-vars set to the certificate's
#      notBefore (the clock at pki init).  `efivar auth` with
#      retired/KEK.1.key makes a db append of the retired KEK, an hour later
#      than any time the PKI signed.  pki init's KEK.auth (a PK-signed
#      replacement holding the retired KEK) is kept for a replay.
#   2. Each initrd (busybox-static, efivarfs.ko of the same Debian kernel:
#      Debian signs its modules, so it loads under lockdown) writes its
#      files through efivarfs (after chattr -i: efivarfs makes existing
#      Secure Boot variables immutable), each as the attributes word (0x67,
#      NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS|APPEND_WRITE, for an
#      append; 0x27 for a replacement) and the .auth in one write(2), and
#      prints SetupMode/SecureBoot, each verdict and then the size and
#      SHA-256 of KEK, db and dbx as the firmware returns them.
#   3. Boots, one variable store throughout:
#        generation 2-signed UKI  denied (db does not hold generation 2 yet)
#        generation 1-signed UKI  boots; forged db append rejected,
#                                 db-append-ssig_subca.2.auth accepted
#        generation 2-signed UKI  boots; dbx-ssig_subca.1.auth accepted
#        generation 1-signed UKI  denied (revoked)
#        generation 2-signed UKI  boots; writes, in this order:
#          1 db-append-ssig_subca.3.auth  rejected (new KEK not in KEK yet)
#          2 KEK-append-KEK.2.auth        accepted
#          3 db-append-ssig_subca.3.auth  accepted (signed by the new KEK)
#          4 db append of the retired KEK accepted (the append left it in KEK)
#          5 KEK-KEK.2.auth               accepted; KEK is now KEK.esl
#          6 the same retired-KEK append  rejected
#          7 pki init's KEK.auth replayed rejected (older time)
#        generation 3-signed UKI  boots; dbx-ssig_subca.2.auth (new KEK)
#                                 accepted
#        generation 2-signed UKI  denied (revoked by the new KEK's dbx update)
#   QEMU: OVMF_CODE_4M.secboot.fd on q35 with SMM, -accel tcg, no NIC,
#   -no-reboot.
# Needs: what tests/ovmf/enroll.sh needs, and virt-fw-vars (tests/ovmf/deps.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OVMF_CODE="${PKI_SIGNER_OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.secboot.fd}"
OVMF_VARS="${PKI_SIGNER_OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}"
CACHE="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"
GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
IMAGE_DB=d719b2cb-3d3a-4596-a3bc-dad00e67656f
OWNER=6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60

log() { echo "rotate.sh: $*" >&2; }
harness_fail() { log "ERROR: $*"; exit 2; }

TIMEOUT=240 KEEP="" ACCEL="${PKI_SIGNER_QEMU_ACCEL:-tcg}"
while [ $# -gt 0 ]; do
	case "$1" in
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
if [ -x "$(ovmf_venv_dir)/bin/virt-fw-vars" ] && command -v qemu-system-x86_64 >/dev/null &&
	command -v mcopy >/dev/null && command -v mkfs.fat >/dev/null &&
	command -v busybox >/dev/null && [ -f "$OVMF_CODE" ]; then
	VIRT_FW_VARS="$(ovmf_venv_dir)/bin/virt-fw-vars"
else
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

# ---- kernel and efivarfs.ko from one linux-image package --------------------
# shellcheck source=tests/ovmf/kernel.sh
. "$HERE/kernel.sh"
KDIR="$(kernel_and_module)"
log "kernel and efivarfs.ko from $KDIR"

# ---- PKI, enrolment, rotation -----------------------------------------------
export SOURCE_DATE_EPOCH=1700000000
PKI="$WORK/pki"
"$BIN" pki init --uefi --key-type rsa:2048 --dir "$PKI" >/dev/null || harness_fail "pki init failed"
openssl x509 -in "$PKI/ssig_subca.cert" -out "$WORK/subca-1.pem" || harness_fail "openssl x509 failed"
"$VIRT_FW_VARS" --input "$OVMF_VARS" --output "$WORK/vars.fd" \
	--set-pk "$OWNER" "$PKI/PK.crt" --add-kek "$OWNER" "$PKI/KEK.crt" \
	--add-db "$OWNER" "$PKI/DB.crt" --add-db "$OWNER" "$WORK/subca-1.pem" \
	--secure-boot >"$WORK/virt-fw-vars.log" 2>&1 ||
	{ cat "$WORK/virt-fw-vars.log" >&2; harness_fail "virt-fw-vars failed"; }

# mkinitrd NAME MODE:VAR:FILE...: a UKI (unsigned) whose initrd writes each
# FILE to the variable VAR (KEK, db or dbx), in order, as an append (MODE
# append) or a replacement (MODE replace).
mkinitrd() {
	local name="$1" R="$WORK/root-$1" spec mode var file guid attr sign n=0
	shift
	mkdir -p "$R/bin" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/auth"
	cp "$(command -v busybox)" "$R/bin/busybox"
	cp "$KDIR/efivarfs.ko" "$R/efivarfs.ko"
	# busybox-static has no chattr: e2fsprogs' with its libraries.
	local lib
	cp "$(command -v chattr)" "$R/bin/chattr"
	for lib in $(ldd "$(command -v chattr)" | grep -o '/[^ ]*'); do
		mkdir -p "$R$(dirname "$lib")"
		cp -L "$lib" "$R$lib"
	done
	: >"$R/writes"
	for spec in "$@"; do
		mode="${spec%%:*}" spec="${spec#*:}"
		var="${spec%%:*}" file="${spec#*:}"
		n=$((n + 1))
		case "$var" in KEK) guid=$GLOBAL ;; db|dbx) guid=$IMAGE_DB ;; *) harness_fail "mkinitrd: variable $var" ;; esac
		case "$mode" in
		append) attr='\x67' sign='+=' ;;
		replace) attr='\x27' sign=':=' ;;
		*) harness_fail "mkinitrd: mode $mode" ;;
		esac
		# efivarfs takes the attributes word, then the EFI_VARIABLE_AUTHENTICATION_2 data.
		{ printf "$attr"'\x00\x00\x00'; cat "$file"; } >"$R/auth/$n.bin"
		echo "$n.bin $var-$guid #$n $var $sign $(basename "$file")" >>"$R/writes"
	done
	{
		echo '#!/bin/busybox sh'
		echo 'bb=/bin/busybox'
		echo '$bb mount -t devtmpfs devtmpfs /dev'
		echo 'exec </dev/console >/dev/console 2>&1'
		echo '$bb mount -t proc proc /proc'
		echo '$bb mount -t sysfs sysfs /sys'
		echo 'V=/sys/firmware/efi/efivars'
		echo 'mnt() { $bb mount -t efivarfs efivarfs $V; }'
		echo 'get() { $bb cat "$V/$1" >/tmp/var 2>/dev/null || : >/tmp/var; }'
		echo "byte() { get \"\$1-$GLOBAL\"; \$bb od -An -tu1 -j4 -N1 /tmp/var | \$bb tr -d ' \\n'; }"
		# SIZE:SHA256 of the variable's data (after its attributes word).
		echo 'sum() { get "$1"; s=$(($($bb wc -c </tmp/var)))'
		echo '	if [ $s -le 4 ]; then echo none; return; fi'
		echo '	echo "$((s - 4)):$($bb dd if=/tmp/var bs=4 skip=1 2>/dev/null | $bb sha256sum | $bb cut -d" " -f1)"; }'
		echo "vars() { echo \"ROTATE-VARS \$1 KEK=\$(sum KEK-$GLOBAL) db=\$(sum db-$IMAGE_DB) dbx=\$(sum dbx-$IMAGE_DB)\"; }"
		echo '$bb dmesg | $bb grep -i "secure boot" | $bb sed "s/^/ROTATE-DMESG: /"'
		echo "echo 'ROTATE-BOOTED $name'"
		echo 'if $bb insmod /efivarfs.ko && mnt; then'
		echo '	echo "ROTATE-STATE SetupMode=$(byte SetupMode) SecureBoot=$(byte SecureBoot)"'
		echo '	vars "#0"'
		echo '	while read -r bin file n what; do'
		# efivarfs makes the existing Secure Boot variables immutable.
		echo '		/bin/chattr -i $V/$file 2>/dev/null'
		echo '		if $bb dd if=/auth/$bin of=$V/$file bs=1M 2>/tmp/err; then r=accepted'
		echo '		else r="rejected ($($bb grep -v records /tmp/err | $bb tail -n1))"; fi'
		echo '		echo "ROTATE-WRITE $n $what: $r"'
		echo '		$bb umount $V && mnt'
		echo '		vars $n'
		echo '	done </writes'
		echo 'else'
		echo '	echo "ROTATE-NOTE efivarfs unavailable"'
		echo 'fi'
		echo 'echo ROTATE-DONE'
		echo '$bb sync'
		echo '$bb poweroff -f'
	} >"$R/init"
	chmod 755 "$R/init"
	if [ "$(id -u)" = 0 ]; then mknod -m 600 "$R/dev/console" c 5 1; fi
	(cd "$R" && find . | sort | busybox cpio -o -H newc 2>/dev/null) | gzip -9n >"$WORK/$name.initrd"
	"$HERE/make-uki.sh" "$WORK/$name.efi" --kernel "$KDIR/vmlinuz" --initrd "$WORK/$name.initrd" >/dev/null ||
		harness_fail "make-uki.sh $name failed"
}

# The forged update: a db append signed by DB, which firmware must refuse.
"$BIN" efivar esl "$WORK/subca-1.pem" --owner "$OWNER" -o "$WORK/forged.esl" >/dev/null
"$BIN" efivar auth --var db --append --role DB --dir "$PKI" "$WORK/forged.esl" -o "$WORK/db-by-DB.auth" >/dev/null ||
	harness_fail "efivar auth failed"
"$BIN" pki rotate ssig_subca --dir "$PKI" --json >"$WORK/rotate.json" || harness_fail "pki rotate failed"
ADD="$PKI/updates/db-append-ssig_subca.2.auth"
REV="$PKI/updates/dbx-ssig_subca.1.auth"
[ -f "$ADD" ] && [ -f "$REV" ] || harness_fail "pki rotate wrote no updates"
mkinitrd apply-db "append:db:$WORK/db-by-DB.auth" "append:db:$ADD"
mkinitrd apply-dbx "append:dbx:$REV"
"$BIN" pe sign "$WORK/apply-db.efi" -o "$WORK/old.efi" \
	--key "$PKI/retired/ssig_subca.1.key" --cert "$PKI/retired/ssig_subca.1.cert" >/dev/null ||
	harness_fail "pe sign (generation 1) failed"
"$BIN" pe sign "$WORK/apply-dbx.efi" -o "$WORK/new.efi" --role ssig_subca --dir "$PKI" >/dev/null ||
	harness_fail "pe sign (generation 2) failed"

# The KEK: rotated, then ssig_subca again, whose updates the new KEK signs.
cp "$PKI/KEK.auth" "$WORK/KEK-init.auth" # PK-signed, holds the KEK about to retire
# The replacement must be later than the KEK variable's time, which
# virt-fw-vars set to the KEK certificate's notBefore (the clock at pki
# init, not SOURCE_DATE_EPOCH): the rotation runs by the clock, as an
# operator's would.
env -u SOURCE_DATE_EPOCH "$BIN" pki rotate KEK --dir "$PKI" --json >"$WORK/rotate-kek.json" ||
	harness_fail "pki rotate KEK failed"
KADD="$PKI/updates/KEK-append-KEK.2.auth"
KREP="$PKI/updates/KEK-KEK.2.auth"
[ -f "$KADD" ] && [ -f "$KREP" ] || harness_fail "pki rotate KEK wrote no KEK updates"
"$BIN" pki rotate ssig_subca --dir "$PKI" --json >"$WORK/rotate-3.json" || harness_fail "pki rotate (3) failed"
ADD3="$PKI/updates/db-append-ssig_subca.3.auth"
REV2="$PKI/updates/dbx-ssig_subca.2.auth"
[ -f "$ADD3" ] && [ -f "$REV2" ] || harness_fail "pki rotate (3) wrote no updates"
# A db append signed by the retired KEK, later than anything the PKI signed.
"$BIN" efivar esl --owner "$OWNER" --sha256 "$(printf 'signed by the retired KEK' | sha256sum | cut -c1-64)" \
	-o "$WORK/retired-kek.esl" >/dev/null || harness_fail "efivar esl failed"
"$BIN" efivar auth --var db --append --key "$PKI/retired/KEK.1.key" --cert "$PKI/retired/KEK.1.crt" \
	--time "$(date -u -d "@$(($(date +%s) + 3600))" '+%F %T')" \
	"$WORK/retired-kek.esl" -o "$WORK/db-by-retired-KEK.auth" >/dev/null || harness_fail "efivar auth (retired KEK) failed"
mkinitrd apply-kek "append:db:$ADD3" "append:KEK:$KADD" "append:db:$ADD3" \
	"append:db:$WORK/db-by-retired-KEK.auth" "replace:KEK:$KREP" \
	"append:db:$WORK/db-by-retired-KEK.auth" "replace:KEK:$WORK/KEK-init.auth"
mkinitrd apply-dbx2 "append:dbx:$REV2"
"$BIN" pe sign "$WORK/apply-kek.efi" -o "$WORK/kek.efi" \
	--key "$PKI/retired/ssig_subca.2.key" --cert "$PKI/retired/ssig_subca.2.cert" >/dev/null ||
	harness_fail "pe sign (generation 2, KEK) failed"
"$BIN" pe sign "$WORK/apply-dbx2.efi" -o "$WORK/gen3.efi" --role ssig_subca --dir "$PKI" >/dev/null ||
	harness_fail "pe sign (generation 3) failed"

# ---- QEMU -------------------------------------------------------------------
export MTOOLS_SKIP_CHECK=1
esp() { # UKI IMG
	local kb=$(( ($(stat -Lc%s "$1") + 1023) / 1024 + 4096 ))
	rm -f "$2"
	mkfs.fat -C -n PKITEST "$2" "$kb" >/dev/null
	mmd -i "$2" ::/EFI ::/EFI/BOOT
	mcopy -i "$2" "$1" ::/EFI/BOOT/BOOTX64.EFI
}

# boot NAME UKI: run QEMU until the initrd says ROTATE-DONE, the firmware
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
		if grep -aq '^ROTATE-DONE' "$serial" ||
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
	tr -d '\r' <"$serial" | grep -a -E '^ROTATE-|BdsDxe: failed' | sed 's/^/  | /' >&2 || true
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
DENIED='BdsDxe: failed to (load|start) Boot[0-9A-F]{4} "UEFI[^"]*" from .*: (Access Denied|Security Violation)'

boot 1-new-before "$WORK/new.efi"
expect "successor-signed UKI denied before the db append" 1-new-before "$DENIED"

boot 2-old-apply-db "$WORK/old.efi"
expect "predecessor-signed UKI boots" 2-old-apply-db '^ROTATE-BOOTED apply-db'
expect "User Mode, Secure Boot on" 2-old-apply-db '^ROTATE-STATE SetupMode=0 SecureBoot=1'
expect "db append signed by DB (not KEK) rejected" 2-old-apply-db '^ROTATE-WRITE #1 db \+= db-by-DB.auth: rejected .*Permission denied'
expect "db-append-ssig_subca.2.auth accepted" 2-old-apply-db '^ROTATE-WRITE #2 db \+= db-append-ssig_subca.2.auth: accepted'

boot 3-new-apply-dbx "$WORK/new.efi"
expect "successor-signed UKI boots after the db append" 3-new-apply-dbx '^ROTATE-BOOTED apply-dbx'
expect "dbx-ssig_subca.1.auth accepted" 3-new-apply-dbx '^ROTATE-WRITE #1 dbx \+= dbx-ssig_subca.1.auth: accepted'

boot 4-old-after "$WORK/old.efi"
expect "predecessor-signed UKI denied after the dbx update" 4-old-after "$DENIED"

boot 5-new-apply-kek "$WORK/kek.efi"
expect "successor-signed UKI still boots" 5-new-apply-kek '^ROTATE-BOOTED apply-kek'
expect "kernel sees Secure Boot enabled" 5-new-apply-kek 'Secure boot enabled|UEFI Secure Boot is enabled|locked down from EFI Secure Boot'
expect "db append signed by the new KEK rejected before the KEK append" 5-new-apply-kek '^ROTATE-WRITE #1 db \+= db-append-ssig_subca.3.auth: rejected .*Permission denied'
expect "KEK-append-KEK.2.auth (signed by PK) accepted" 5-new-apply-kek '^ROTATE-WRITE #2 KEK \+= KEK-append-KEK.2.auth: accepted'
expect "db-append-ssig_subca.3.auth (signed by the new KEK) accepted" 5-new-apply-kek '^ROTATE-WRITE #3 db \+= db-append-ssig_subca.3.auth: accepted'
expect "retired KEK's db append still accepted after the KEK append alone" 5-new-apply-kek '^ROTATE-WRITE #4 db \+= db-by-retired-KEK.auth: accepted'
expect "KEK-KEK.2.auth (PK-signed replacement) accepted" 5-new-apply-kek '^ROTATE-WRITE #5 KEK := KEK-KEK.2.auth: accepted'
expect "KEK then holds exactly KEK.esl (the new KEK only)" 5-new-apply-kek "^ROTATE-VARS #5 KEK=$(stat -c%s "$PKI/KEK.esl"):$(sha256sum "$PKI/KEK.esl" | cut -d' ' -f1) "
expect "retired KEK's db append rejected after the replacement" 5-new-apply-kek '^ROTATE-WRITE #6 db \+= db-by-retired-KEK.auth: rejected .*Permission denied'
expect "pki init's KEK.auth (older time) replayed: rejected" 5-new-apply-kek '^ROTATE-WRITE #7 KEK := KEK-init.auth: rejected .*Permission denied'
expect "KEK unchanged by the rejected writes" 5-new-apply-kek "^ROTATE-VARS #7 KEK=$(stat -c%s "$PKI/KEK.esl"):$(sha256sum "$PKI/KEK.esl" | cut -d' ' -f1) "

boot 6-gen3-apply-dbx2 "$WORK/gen3.efi"
expect "generation 3-signed UKI boots (its db append was signed by the new KEK)" 6-gen3-apply-dbx2 '^ROTATE-BOOTED apply-dbx2'
expect "dbx-ssig_subca.2.auth (signed by the new KEK) accepted" 6-gen3-apply-dbx2 '^ROTATE-WRITE #1 dbx \+= dbx-ssig_subca.2.auth: accepted'

boot 7-new-after "$WORK/kek.efi"
expect "generation 2-signed UKI denied after the new KEK's dbx update" 7-new-after "$DENIED"

if [ "$FAILED" = 0 ]; then
	log "PASS: OVMF in User Mode took the rotation's db append and dbx updates, then boots only the successor's images;"
	log "PASS: after KEK-append and KEK-KEK (replacement) it takes db/dbx updates signed by the new KEK and refuses the retired KEK's"
	exit 0
fi
log "FAIL: see above${KEEP:+ (logs in $KEEP)}"
exit 1
