#!/usr/bin/env bash
# tests/ovmf/boot.sh -- boot an (optionally signed) UKI in OVMF with UEFI
# Secure Boot ENFORCED and our own PK/KEK/db enrolled; report the verdict.
#
# Usage:
#   tests/ovmf/boot.sh --uki SIGNED.efi --pk PK.crt --kek KEK.crt --db DB.crt
#                      [--kek more.crt] [--db more.crt] [--dbx REVOKED.crt]
#                      [--timeout 120] [--log SERIAL.log] [--marker TEXT]
#                      [--accel tcg|kvm] [--tpm]
#
# Certificates may be PEM or DER.  --kek/--db/--dbx may be repeated.
#
# Output (stdout, one word) and exit status:
#   BOOTED   exit 0  the UKI's kernel ran our initrd, which printed the marker
#                    line (default PKI-SIGNER-BOOT-OK, see make-uki.sh) and
#                    the kernel said Secure Boot was on ("EFI stub: UEFI
#                    Secure Boot is enabled." or its lockdown line)
#   DENIED   exit 1  OVMF refused the image; its serial console says e.g.
#                      BdsDxe: failed to load Boot0001 "UEFI Non-Block Boot
#                      Device" from PciRoot(0x0)/Pci(0x1,0x0): Access Denied
#   ERROR    exit 2  timeout, QEMU died, boot option failed for another
#                    reason, booted without Secure Boot, or bad usage
# Diagnostics (timings, the firmware's deciding line) go to stderr; --log
# keeps the full serial log.  QEMU is killed as soon as the verdict is known.
#
# --tpm: give the VM a TPM 2.0: a fresh swtpm (`swtpm socket --tpm2`, state
# in the work directory, control channel on a unix socket) behind QEMU's
# tpm-tis device (-chardev socket + -tpmdev emulator), so OVMF's TCG2
# protocol measures into it and systemd-stub extends PCR 11.  The TPM
# lines of the serial log (PKI-SIGNER-PCR11-*, see make-uki.sh --tpm) go to
# stderr.  swtpm runs with --terminate (it exits when QEMU disconnects) and
# is killed, like QEMU, on every exit of this script (verdict, error,
# timeout, INT/TERM/HUP).
#
# How: virt-fw-vars (PyPI virt-firmware, venv ${PKI_SIGNER_VENV:-.venv})
# writes a copy of /usr/share/OVMF/OVMF_VARS_4M.fd with PK, KEK, db (and
# dbx) set and SecureBootEnable on; the UKI goes to \EFI\BOOT\BOOTX64.EFI of
# a FAT image (mtools) on a virtio disk; QEMU runs
# OVMF_CODE_4M.secboot.fd on q35 with SMM, -accel tcg by default (override:
# --accel or PKI_SIGNER_QEMU_ACCEL), no NIC, -no-reboot.  (KVM here lacks
# SMM, which the secboot OVMF build requires, so kvm fails at once.)
# Typical TCG wall time on 2 cores: DENIED ~9-14 s (firmware reaches BDS in
# ~8-11 s), BOOTED ~20-30 s (of which ~10 s is the Debian kernel's XZ
# decompression under TCG).
# Installs: source tests/ovmf/deps.sh; ovmf_deps   (done here if needed;
# it includes swtpm for --tpm).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OWNER_GUID="5bd6e3d6-8d1e-4c2a-9a0e-7f1c2b3a4d5e"   # owner of our sig entries
OVMF_CODE="${PKI_SIGNER_OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.secboot.fd}"
OVMF_VARS="${PKI_SIGNER_OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}"

err() { echo "boot.sh: $*" >&2; }
fail() { err "$*"; echo ERROR; exit 2; }

UKI="" PK="" KEKS=() DBS=() DBXS=() TIMEOUT=120 LOG="" MARKER="PKI-SIGNER-BOOT-OK"
ACCEL="${PKI_SIGNER_QEMU_ACCEL:-tcg}" TPM=0
need() { [ $# -ge 2 ] && [ -n "$2" ] || fail "$1 needs a value"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--uki) need "$@"; UKI="$2"; shift 2 ;;
	--pk) need "$@"; PK="$2"; shift 2 ;;
	--kek) need "$@"; KEKS+=("$2"); shift 2 ;;
	--db) need "$@"; DBS+=("$2"); shift 2 ;;
	--dbx) need "$@"; DBXS+=("$2"); shift 2 ;;
	--timeout) need "$@"; TIMEOUT="$2"; shift 2 ;;
	--log) need "$@"; LOG="$2"; shift 2 ;;
	--marker) need "$@"; MARKER="$2"; shift 2 ;;
	--accel) need "$@"; ACCEL="$2"; shift 2 ;;
	--tpm) TPM=1; shift ;;
	-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) fail "unknown argument $1 (see --help)" ;;
	esac
done
[ -n "$UKI" ] && [ -n "$PK" ] && [ ${#KEKS[@]} -gt 0 ] && [ ${#DBS[@]} -gt 0 ] ||
	fail "usage: boot.sh --uki X.efi --pk PK.crt --kek KEK.crt --db DB.crt [--timeout S]"
for f in "$UKI" "$PK" "${KEKS[@]}" "${DBS[@]}" ${DBXS[@]+"${DBXS[@]}"}; do
	[ -f "$f" ] || fail "no such file: $f"
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || fail "--timeout wants whole seconds"

# ---- dependencies -----------------------------------------------------------
# shellcheck source=tests/ovmf/deps.sh
. "$HERE/deps.sh"
if [ -x "$(ovmf_venv_dir)/bin/virt-fw-vars" ] && command -v qemu-system-x86_64 >/dev/null &&
	command -v mcopy >/dev/null && command -v mkfs.fat >/dev/null && [ -f "$OVMF_CODE" ] &&
	{ [ "$TPM" = 0 ] || command -v swtpm >/dev/null; }; then
	VIRT_FW_VARS="$(ovmf_venv_dir)/bin/virt-fw-vars"
else
	ovmf_deps || fail "installing dependencies failed"
fi
[ "$TPM" = 0 ] || command -v swtpm >/dev/null || fail "swtpm missing (apt-get install swtpm swtpm-tools)"
[ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ] || fail "OVMF files missing: $OVMF_CODE $OVMF_VARS"

WORK="$(mktemp -d)"
QPID="" TPID=""
# QEMU first (it holds swtpm's sockets), then swtpm.
stop() {
	if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then kill "$1" 2>/dev/null || true; fi
	[ -z "$1" ] || wait "$1" 2>/dev/null || true
}
cleanup() {
	stop "$QPID"; QPID=""
	stop "$TPID"; TPID=""
	if [ -n "$LOG" ] && [ -f "$WORK/serial.log" ]; then cp "$WORK/serial.log" "$LOG" || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 2' INT TERM HUP

now_ms() { date +%s%3N; }
T0=$(now_ms)
secs() { local d=$(( $(now_ms) - T0 )); printf '%d.%01ds' $((d / 1000)) $((d % 1000 / 100)); }

# ---- varstore: PK, KEK, db, dbx, SecureBootEnable -----------------------------
args=(--input "$OVMF_VARS" --output "$WORK/vars.fd" --set-pk "$OWNER_GUID" "$PK")
for c in "${KEKS[@]}"; do args+=(--add-kek "$OWNER_GUID" "$c"); done
for c in "${DBS[@]}"; do args+=(--add-db "$OWNER_GUID" "$c"); done
for c in ${DBXS[@]+"${DBXS[@]}"}; do args+=(--add-dbx-cert "$OWNER_GUID" "$c"); done
args+=(--secure-boot)
"$VIRT_FW_VARS" "${args[@]}" >"$WORK/virt-fw-vars.log" 2>&1 ||
	{ cat "$WORK/virt-fw-vars.log" >&2; fail "virt-fw-vars failed"; }

# ---- ESP: FAT image with \EFI\BOOT\BOOTX64.EFI ----------------------------------
uki_kb=$(( ($(stat -Lc%s "$UKI") + 1023) / 1024 ))
esp_kb=$(( uki_kb + 4096 ))
mkfs.fat -C -n PKITEST "$WORK/esp.img" "$esp_kb" >/dev/null || fail "mkfs.fat failed"
export MTOOLS_SKIP_CHECK=1
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT || fail "mmd failed"
mcopy -i "$WORK/esp.img" "$UKI" ::/EFI/BOOT/BOOTX64.EFI || fail "mcopy failed"

# ---- TPM: swtpm -------------------------------------------------------------
tpm_args=()
if [ "$TPM" = 1 ]; then
	mkdir -m 700 "$WORK/tpm"
	swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" \
		--ctrl type=unixio,path="$WORK/tpm/swtpm.sock" \
		--terminate --log file="$WORK/swtpm.log",level=1 \
		</dev/null >"$WORK/swtpm.out" 2>&1 &
	TPID=$!
	for _ in $(seq 100); do
		[ -S "$WORK/tpm/swtpm.sock" ] && break
		kill -0 "$TPID" 2>/dev/null || break
		sleep 0.1
	done
	[ -S "$WORK/tpm/swtpm.sock" ] ||
		fail "swtpm did not start: $(cat "$WORK/swtpm.out" "$WORK/swtpm.log" 2>/dev/null | tr '\n' ' ')"
	err "swtpm pid $TPID started"
	tpm_args=(-chardev "socket,id=chrtpm,path=$WORK/tpm/swtpm.sock"
		-tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)
fi

# ---- QEMU ---------------------------------------------------------------
: >"$WORK/serial.log"
qemu-system-x86_64 \
	-machine q35,smm=on -accel "$ACCEL" \
	-global ICH9-LPC.disable_s3=1 \
	-global driver=cfi.pflash01,property=secure,value=on \
	-drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
	-drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd" \
	-drive if=none,id=esp,format=raw,readonly=on,file="$WORK/esp.img" \
	-device virtio-blk-pci,drive=esp \
	-m 512 -smp 1 -nodefaults -nographic -monitor none \
	-serial "file:$WORK/serial.log" \
	-nic none -no-reboot \
	${tpm_args[@]+"${tpm_args[@]}"} \
	</dev/null >"$WORK/qemu.out" 2>&1 &
QPID=$!
err "qemu pid $QPID started (accel $ACCEL, timeout ${TIMEOUT}s)"

# Verdict from the serial log so far: prints BOOTED/DENIED/ERROR:<why>, or
# nothing while undecided.
judge() {
	local log="$WORK/serial.log" line
	if grep -aqE "^${MARKER}"$'\r?$' "$log"; then
		echo BOOTED; return
	fi
	# First boot option (other than the built-in shell) that failed.
	line="$(grep -a -E 'BdsDxe: failed to (load|start) Boot[0-9A-F]{4} ' "$log" |
		grep -av '"EFI Internal Shell"' | head -n1 | tr -d '\r' || true)"
	if [ -n "$line" ]; then
		case "$line" in
		*": Access Denied"|*": Security Violation") echo "DENIED:$line" ;;
		*) echo "ERROR:$line" ;;
		esac
		return
	fi
	if grep -aq 'BdsDxe: No bootable option or device was found' "$log"; then
		echo "ERROR:no bootable option found (ESP not seen?)"; return
	fi
	if grep -aqE 'Kernel panic - not syncing' "$log"; then
		echo "ERROR:$(grep -a -m1 'Kernel panic' "$log" | tr -d '\r')"; return
	fi
}

verdict=""
deadline=$(( T0 + TIMEOUT * 1000 ))
while :; do
	verdict="$(judge)"
	[ -z "$verdict" ] || break
	if ! kill -0 "$QPID" 2>/dev/null; then
		verdict="$(judge)"   # it may have printed the marker just before poweroff
		[ -n "$verdict" ] || verdict="ERROR:qemu exited without a verdict: $(tr '\n' ' ' <"$WORK/qemu.out")"
		break
	fi
	if [ "$(now_ms)" -ge "$deadline" ]; then
		verdict="ERROR:timeout after ${TIMEOUT}s"
		break
	fi
	sleep 0.1
done
# Stop QEMU at once (it may already have powered off), then swtpm.
stop "$QPID"; QPID=""
stop "$TPID"; TPID=""
if [ "$TPM" = 1 ]; then
	grep -a -E '^PKI-SIGNER-(PCR11|EXTRA)' "$WORK/serial.log" | tr -d '\r' | sed 's/^/boot.sh: tpm: /' >&2 || true
fi

case "$verdict" in
BOOTED)
	# Belt and braces: the kernel must have seen Secure Boot on.  Its EFI
	# stub prints "EFI stub: UEFI Secure Boot is enabled." and, with SB on,
	# Debian's kernel logs "Kernel is locked down from EFI Secure Boot".
	sb="$(grep -a -m1 -E 'UEFI Secure Boot is enabled|locked down from EFI Secure Boot|Secure boot enabled' \
		"$WORK/serial.log" | tr -d '\r' || true)"
	if [ -z "$sb" ]; then
		err "booted, but the kernel did not report Secure Boot enabled (after $(secs))"
		echo ERROR; exit 2
	fi
	err "kernel: $sb"
	err "marker seen after $(secs)"
	echo BOOTED; exit 0 ;;
DENIED:*)
	err "firmware: ${verdict#DENIED:}"
	err "denied after $(secs)"
	echo DENIED; exit 1 ;;
*)
	err "${verdict#ERROR:} (after $(secs))"
	err "last serial lines:"; tail -n 15 "$WORK/serial.log" | tr -d '\r' | sed 's/^/  | /' >&2
	if [ "$TPM" = 1 ] && [ -s "$WORK/swtpm.log" ]; then
		err "swtpm log:"; tail -n 10 "$WORK/swtpm.log" | sed 's/^/  | /' >&2
	fi
	echo ERROR; exit 2 ;;
esac
