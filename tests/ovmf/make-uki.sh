#!/usr/bin/env bash
# tests/ovmf/make-uki.sh -- build an UNSIGNED test UKI (Unified Kernel Image)
# with objcopy, for the OVMF Secure Boot proof harness (tests/ovmf/boot.sh).
#
# Usage:
#   tests/ovmf/make-uki.sh OUT.efi [--kernel VMLINUZ] [--initrd INITRD]
#                                  [--cmdline "TEXT"] [--stub STUB.efi]
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
#
# Sections are appended after the stub's last section, each VMA aligned to
# 4 KiB (the objcopy method from systemd-stub(7) / the Arch wiki "Unified
# kernel image, manually" recipe):  .osrel .cmdline .linux .initrd
#
# Cache: ${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}  (kernel ~8 MB; the
# 70 MB .deb is deleted after extraction).
# Needs: objcopy objdump (binutils), busybox (busybox-static), dpkg-deb,
# apt-get (only to fetch the kernel), gzip.  See tests/ovmf/deps.sh.
# Prints the path of OUT.efi on success.
set -euo pipefail

die() { echo "make-uki.sh: $*" >&2; exit 1; }

OUT=""
KERNEL=""
INITRD=""
STUB="/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
CMDLINE="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4 rdinit=/init"
MARKER="PKI-SIGNER-BOOT-OK"
CACHE="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"

while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) KERNEL="${2:?--kernel needs a file}"; shift 2 ;;
	--initrd) INITRD="${2:?--initrd needs a file}"; shift 2 ;;
	--cmdline) CMDLINE="${2?--cmdline needs text}"; shift 2 ;;
	--stub) STUB="${2:?--stub needs a file}"; shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	-*) die "unknown option $1" ;;
	*) [ -z "$OUT" ] || die "only one OUT.efi"; OUT="$1"; shift ;;
	esac
done
[ -n "$OUT" ] || die "usage: make-uki.sh OUT.efi [--kernel VMLINUZ] [--initrd INITRD]"
[ -f "$STUB" ] || die "no stub $STUB (apt-get install systemd-boot-efi)"
for t in objcopy objdump; do command -v "$t" >/dev/null || die "$t missing (binutils)"; done

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
		(cd "$dir/dl" && apt-get -q download "$pkg=$ver" >&2)
		deb="$(ls -1 "$dir"/dl/*.deb | head -n1)"
		mkdir -p "$dir/x"
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir/x" --wildcards './boot/vmlinuz-*'
		mv "$(ls -1 "$dir"/x/boot/vmlinuz-* | head -n1)" "$dir/vmlinuz.tmp"
		mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
		rm -rf "$dir/dl" "$dir/x"
	fi
	printf '%s\n' "$dir/vmlinuz"
}

if [ -z "$KERNEL" ]; then
	KERNEL="$(fetch_kernel)"
fi
[ -f "$KERNEL" ] || die "no kernel $KERNEL"

# ---- initrd ---------------------------------------------------------------
make_initrd() {
	local bb root="$WORK/initrd"
	bb="$(command -v busybox || true)"
	[ -n "$bb" ] || die "busybox missing (apt-get install busybox-static)"
	if ! LC_ALL=C objdump -p "$bb" 2>/dev/null | grep -q 'NEEDED' ; then :; else
		die "$bb is dynamically linked; need busybox-static"
	fi
	mkdir -p "$root"/{bin,dev,proc,sys,tmp}
	cp "$bb" "$root/bin/busybox"
	# /init: no /dev/console node in the archive (no root/mknod needed), so
	# mount devtmpfs first and reopen stdio on the console.
	cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox dmesg | /bin/busybox grep -i 'secure boot' | /bin/busybox sed 's/^/PKI-SIGNER-SB: /'
echo "$MARKER"
/bin/busybox sync
/bin/busybox poweroff -f
EOF
	chmod 755 "$root/init" "$root/bin/busybox"
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) |
		gzip -9n >"$WORK/initrd.cpio.gz"
	printf '%s\n' "$WORK/initrd.cpio.gz"
}

if [ -z "$INITRD" ]; then
	INITRD="$(make_initrd)"
fi
[ -f "$INITRD" ] || die "no initrd $INITRD"

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
	--add-section .osrel="$WORK/os-release" --change-section-vma .osrel=$(printf 0x%x "$osrel_vma") \
	--add-section .cmdline="$WORK/cmdline" --change-section-vma .cmdline=$(printf 0x%x "$cmdline_vma") \
	--add-section .linux="$KERNEL" --change-section-vma .linux=$(printf 0x%x "$linux_vma") \
	--add-section .initrd="$INITRD" --change-section-vma .initrd=$(printf 0x%x "$initrd_vma") \
	--set-section-flags .osrel=data,readonly \
	--set-section-flags .cmdline=data,readonly \
	--set-section-flags .linux=code,readonly \
	--set-section-flags .initrd=data,readonly \
	"$STUB" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
printf '%s\n' "$OUT"
