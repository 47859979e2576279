#!/usr/bin/env bash
# tests/ovmf/make-uki.sh -- build an UNSIGNED test UKI (Unified Kernel Image)
# with objcopy, for the OVMF Secure Boot proof harness (tests/ovmf/boot.sh).
#
# Usage:
#   tests/ovmf/make-uki.sh OUT.efi [--kernel VMLINUZ] [--initrd INITRD]
#                                  [--cmdline "TEXT"] [--stub STUB.efi] [--tpm]
#   tests/ovmf/make-uki.sh --initrd-only OUT.cpio.gz [--tpm]
#
# --initrd-only writes just the busybox initrd described below (e.g. for
# `pki-signer uki build --initrd`).  --tpm makes its /init also report the
# TPM (see "TPM report" below); without it the initrd is as before.
#
# What goes in:
#   stub     /usr/lib/systemd/boot/efi/linuxx64.efi.stub   (apt systemd-boot-efi)
#   .osrel   a small os-release naming the test image
#   .cmdline "console=ttyS0 panic=-1 ..."  (default; --cmdline overrides)
#   .linux   --kernel, else Debian's kernel: the package linux-image-amd64
#            depends on (linux-image-6.*-amd64), its -unsigned variant if the
#            archive has it; fetched with `apt-get download`, only
#            /boot/vmlinuz-* kept (cached)
#   .initrd  --initrd, else a gzip'd newc cpio with busybox-static whose /init
#            prints the kernel's "secure boot" dmesg lines prefixed with
#            "PKI-SIGNER-SB: ", then the
#            marker line "PKI-SIGNER-BOOT-OK" on /dev/console (ttyS0) and
#            powers off at once (poweroff -f).
#   TPM report (--tpm), printed before the marker line:
#            PKI-SIGNER-PCR11-SHA256: <HEX>   /sys/class/tpm/tpm0/pcr-sha256/11
#            PKI-SIGNER-PCR11-SHA1: <HEX>     (pcr-sha1/11)
#            ("none" when absent: no TPM within 10 s, or no such bank), the
#            SHA-256 of what systemd-stub handed over from .pcrsig / .pcrpkey:
#            PKI-SIGNER-EXTRA: <sha256>  /.extra/tpm2-pcr-signature.json
#            PKI-SIGNER-EXTRA: <sha256>  /.extra/tpm2-pcr-public-key.pem
#            and the kernel's tpm dmesg lines prefixed "PKI-SIGNER-TPM: ".
#            (Debian 12's kernel has the TPM TIS and CRB drivers built in.)
#
# Sections are appended after the stub's last section, each VMA aligned to
# 4 KiB (the objcopy method from systemd-stub(7) / the Arch wiki "Unified
# kernel image, manually" recipe):  .osrel .cmdline .linux .initrd
#
# Cache: ${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}  (kernel ~8 MB; the
# 70 MB .deb is deleted after extraction).
# Needs: objcopy objdump (binutils), busybox (busybox-static), dpkg-deb,
# apt-get (only to fetch the kernel), gzip.  See tests/ovmf/deps.sh.
# Output is deterministic for the same inputs (SOURCE_DATE_EPOCH, default
# 1700000000, sets the PE TimeDateStamp -- the PE checksum is recomputed --
# and the initrd's mtimes).  Also needs python3 for that header patch.
# Note: the Debian stub carries a COFF symbol table after its last section,
# so the UKI has ~12 KiB of trailing data past the last section (sbsign warns
# "gaps between PE/COFF sections?"; Authenticode hashes it as extra data).
# Prints the path of OUT.efi on success.
set -euo pipefail

die() { echo "make-uki.sh: $*" >&2; exit 1; }

OUT=""
KERNEL=""
INITRD=""
STUB="/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
CMDLINE="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4 rdinit=/init"
MARKER="PKI-SIGNER-BOOT-OK"
INITRD_ONLY=0
TPM=0
CACHE="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"

while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) KERNEL="${2:?--kernel needs a file}"; shift 2 ;;
	--initrd) INITRD="${2:?--initrd needs a file}"; shift 2 ;;
	--cmdline) CMDLINE="${2?--cmdline needs text}"; shift 2 ;;
	--stub) STUB="${2:?--stub needs a file}"; shift 2 ;;
	--initrd-only) INITRD_ONLY=1; shift ;;
	--tpm) TPM=1; shift ;;
	-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	-*) die "unknown option $1" ;;
	*) [ -z "$OUT" ] || die "only one OUT.efi"; OUT="$1"; shift ;;
	esac
done
[ -n "$OUT" ] || die "usage: make-uki.sh OUT.efi [--kernel VMLINUZ] [--initrd INITRD]"
if [ "$INITRD_ONLY" = 0 ]; then
	[ -f "$STUB" ] || die "no stub $STUB (apt-get install systemd-boot-efi)"
fi
for t in objcopy objdump; do command -v "$t" >/dev/null || die "$t missing (binutils)"; done

# Deterministic output for the same inputs: bfd takes the PE timestamp from
# SOURCE_DATE_EPOCH, and the initrd's files get that mtime too.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---- kernel ---------------------------------------------------------------
fetch_kernel() {
	local meta pkg ver dir deb
	meta="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')" || true
	if [ -z "$meta" ]; then
		# apt lists missing: reuse any cached kernel before touching the network.
		local any
		any="$(ls -1d "$CACHE"/kernel/*/vmlinuz 2>/dev/null | sort | tail -n1 || true)"
		if [ -n "$any" ]; then printf '%s\n' "$any"; return; fi
		echo "make-uki.sh: apt lists empty, running apt-get update" >&2
		apt-get -q -o DPkg::Lock::Timeout=900 update >&2
		meta="$(apt-cache depends linux-image-amd64 | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')"
		[ -n "$meta" ] || die "cannot resolve linux-image-amd64's kernel package"
	fi
	pkg="$meta"
	if [ -n "$(apt-cache show "${meta}-unsigned" 2>/dev/null | head -n1)" ]; then
		pkg="${meta}-unsigned"
	fi
	ver="$(apt-cache policy "$pkg" | awk '$1=="Candidate:" {print $2}')"
	dir="$CACHE/kernel/${pkg}_${ver}"
	if [ ! -s "$dir/vmlinuz" ]; then
		mkdir -p "$dir/dl"
		echo "make-uki.sh: downloading $pkg $ver" >&2
		(cd "$dir/dl" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2)
		deb="$(ls -1 "$dir"/dl/*.deb | head -n1)"
		mkdir -p "$dir/x"
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir/x" --wildcards './boot/vmlinuz-*'
		mv "$(ls -1 "$dir"/x/boot/vmlinuz-* | head -n1)" "$dir/vmlinuz.tmp"
		mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
		rm -rf "$dir/dl" "$dir/x"
	fi
	printf '%s\n' "$dir/vmlinuz"
}

if [ "$INITRD_ONLY" = 0 ]; then
	[ -n "$KERNEL" ] || KERNEL="$(fetch_kernel)"
	[ -f "$KERNEL" ] || die "no kernel $KERNEL"
fi

# ---- initrd ---------------------------------------------------------------
make_initrd() {
	local bb
	bb="$(command -v busybox || true)"
	[ -n "$bb" ] || die "busybox missing (apt-get install busybox-static)"
	if LC_ALL=C objdump -p "$bb" 2>/dev/null | grep -q 'NEEDED'; then
		die "$bb is dynamically linked; need busybox-static"
	fi
	# /init: mount devtmpfs over /dev and (re)open stdio on the console.
	cat >"$WORK/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox dmesg | /bin/busybox grep -i 'secure boot' | /bin/busybox sed 's/^/PKI-SIGNER-SB: /'
EOF
	if [ "$TPM" = 1 ]; then
		# Quoted: expanded by /init at boot, not here.
		cat >>"$WORK/init" <<'EOF'
n=0
while [ ! -e /sys/class/tpm/tpm0/pcr-sha256/11 ] && [ $n -lt 100 ]; do /bin/busybox usleep 100000; n=$((n + 1)); done
/bin/busybox dmesg | /bin/busybox grep -i tpm | /bin/busybox sed 's/^/PKI-SIGNER-TPM: /'
for b in SHA256 SHA1; do
	f=/sys/class/tpm/tpm0/pcr-$(echo $b | /bin/busybox tr A-Z a-z)/11
	if [ -r $f ]; then echo "PKI-SIGNER-PCR11-$b: $(/bin/busybox cat $f)"; else echo "PKI-SIGNER-PCR11-$b: none"; fi
done
for f in /.extra/tpm2-pcr-signature.json /.extra/tpm2-pcr-public-key.pem; do
	if [ -f $f ]; then /bin/busybox sha256sum $f | /bin/busybox sed 's/^/PKI-SIGNER-EXTRA: /'; fi
done
EOF
	fi
	cat >>"$WORK/init" <<EOF
echo "$MARKER"
/bin/busybox sync
/bin/busybox poweroff -f
EOF
	# newc cpio written directly: deterministic (fixed inodes, owners and
	# mtimes) and with a /dev/console node without needing root for mknod.
	python3 - "$WORK/initrd.cpio" "$SOURCE_DATE_EPOCH" "$bb" "$WORK/init" <<'PY'
import sys
out, mtime, busybox, init = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
entries = [  # name, mode, data, (rdev major, rdev minor)
    (".", 0o040755, b"", (0, 0)),
    ("bin", 0o040755, b"", (0, 0)),
    ("bin/busybox", 0o100755, open(busybox, "rb").read(), (0, 0)),
    ("dev", 0o040755, b"", (0, 0)),
    ("dev/console", 0o020600, b"", (5, 1)),
    ("init", 0o100755, open(init, "rb").read(), (0, 0)),
    ("proc", 0o040755, b"", (0, 0)),
    ("sys", 0o040755, b"", (0, 0)),
    ("tmp", 0o041777, b"", (0, 0)),
]
def pad(n):
    return b"\0" * (-n % 4)
buf = bytearray()
def add(ino, name, mode, nlink, mtime, data, rdev):
    global buf
    nb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    buf += hdr + nb + pad(len(hdr) + len(nb)) + data + pad(len(data))
for ino, (name, mode, data, rdev) in enumerate(entries, 1):
    add(ino, name, mode, 2 if mode & 0o040000 else 1, mtime, data, rdev)
add(0, "TRAILER!!!", 0, 1, 0, b"", (0, 0))
buf += b"\0" * (-len(buf) % 512)
open(out, "wb").write(buf)
PY
	gzip -9n <"$WORK/initrd.cpio" >"$WORK/initrd.cpio.gz"
	printf '%s\n' "$WORK/initrd.cpio.gz"
}

if [ -z "$INITRD" ]; then
	INITRD="$(make_initrd)"
fi
[ -f "$INITRD" ] || die "no initrd $INITRD"
if [ "$INITRD_ONLY" = 1 ]; then
	mkdir -p "$(dirname "$OUT")"
	cp "$INITRD" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
	printf '%s\n' "$OUT"
	exit 0
fi

# ---- os-release, cmdline --------------------------------------------------
cat >"$WORK/os-release" <<'EOF'
NAME="pki-signer test UKI"
ID=pki-signer-test
PRETTY_NAME="pki-signer OVMF Secure Boot test UKI"
VERSION_ID=1
EOF
printf '%s' "$CMDLINE" >"$WORK/cmdline"

# ---- objcopy: append sections after the stub's last one ---------------------
ALIGN=4096
align_up() { echo $(( ($1 + ALIGN - 1) / ALIGN * ALIGN )); }
# End of the stub's last section: VMA + size over the 7-field section lines.
# (plain bash arithmetic: Debian's default awk is mawk, without strtonum)
end=0
while read -r size vma; do
	e=$((16#$vma + 16#$size))
	[ "$e" -le "$end" ] || end=$e
done < <(objdump -h "$STUB" | awk 'NF==7 && $1 ~ /^[0-9]+$/ {print $3, $4}')
[ "$end" -gt 0 ] || die "cannot parse stub sections"

osrel_vma=$(align_up "$end")
cmdline_vma=$(align_up $((osrel_vma + $(stat -Lc%s "$WORK/os-release"))))
linux_vma=$(align_up $((cmdline_vma + $(stat -Lc%s "$WORK/cmdline"))))
initrd_vma=$(align_up $((linux_vma + $(stat -Lc%s "$KERNEL"))))

mkdir -p "$(dirname "$OUT")"
objcopy \
	--add-section .osrel="$WORK/os-release" --change-section-vma .osrel="$(printf 0x%x "$osrel_vma")" \
	--add-section .cmdline="$WORK/cmdline" --change-section-vma .cmdline="$(printf 0x%x "$cmdline_vma")" \
	--add-section .linux="$KERNEL" --change-section-vma .linux="$(printf 0x%x "$linux_vma")" \
	--add-section .initrd="$INITRD" --change-section-vma .initrd="$(printf 0x%x "$initrd_vma")" \
	--set-section-flags .osrel=data,readonly \
	--set-section-flags .cmdline=data,readonly \
	--set-section-flags .linux=code,readonly \
	--set-section-flags .initrd=data,readonly \
	"$STUB" "$OUT.tmp"

# objcopy stamps the COFF header with the current time (bfd 2.40 ignores
# SOURCE_DATE_EPOCH for PE): set TimeDateStamp and redo the PE checksum.
python3 - "$OUT.tmp" "$SOURCE_DATE_EPOCH" <<'PY'
import struct, sys
path, stamp = sys.argv[1], int(sys.argv[2]) & 0xFFFFFFFF
d = bytearray(open(path, "rb").read())
pe = struct.unpack_from("<I", d, 0x3C)[0]
assert d[pe:pe + 4] == b"PE\0\0"
struct.pack_into("<I", d, pe + 8, stamp)
ck = pe + 24 + 64                       # OptionalHeader.CheckSum
struct.pack_into("<I", d, ck, 0)
buf = bytes(d) + b"\0" * (len(d) & 1)
total = 0
for (w,) in struct.iter_unpack("<H", buf):
    total += w
    total = (total & 0xFFFF) + (total >> 16)
total = (total & 0xFFFF) + (total >> 16)
struct.pack_into("<I", d, ck, (total + len(d)) & 0xFFFFFFFF)
open(path, "wb").write(d)
PY
mv "$OUT.tmp" "$OUT"
printf '%s\n' "$OUT"
