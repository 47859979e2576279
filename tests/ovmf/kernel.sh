# shellcheck shell=bash
# tests/ovmf/kernel.sh -- sourced by enroll.sh and rotate.sh: the kernel and
# efivarfs.ko they boot. Debian builds efivarfs as a module, so the initrd must
# carry it, and it must come from the very package whose vmlinuz boots.
# Uses the caller's CACHE, log and harness_fail.

# kernel_and_module: prints the cache directory holding vmlinuz and efivarfs.ko.
kernel_and_module() {
	local meta pkg ver dir deb
	meta="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')" || true
	if [ -z "$meta" ]; then
		local any
		any="$(ls -1d "$CACHE"/efivarfs/*/efivarfs.ko 2>/dev/null | sort | tail -n1 || true)"
		if [ -n "$any" ]; then dirname "$any"; return; fi
		log "apt lists empty, running apt-get update"
		apt-get -q -o DPkg::Lock::Timeout=900 update >&2
		meta="$(apt-cache depends linux-image-amd64 | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')"
		[ -n "$meta" ] || harness_fail "cannot resolve linux-image-amd64's kernel package"
	fi
	pkg="$meta"
	if [ -n "$(apt-cache show "${meta}-unsigned" 2>/dev/null | head -n1)" ]; then
		pkg="${meta}-unsigned"
	fi
	ver="$(apt-cache policy "$pkg" | awk '$1=="Candidate:" {print $2}')"
	dir="$CACHE/efivarfs/${pkg}_${ver}"
	if [ ! -s "$dir/vmlinuz" ] || [ ! -s "$dir/efivarfs.ko" ]; then
		mkdir -p "$dir/dl"
		log "downloading $pkg $ver (vmlinuz + efivarfs.ko)"
		(cd "$dir/dl" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2) ||
			harness_fail "apt-get download $pkg failed"
		deb="$(ls -1 "$dir"/dl/*.deb | head -n1)"
		mkdir -p "$dir/x"
		dpkg-deb --fsys-tarfile "$deb" |
			tar -x -C "$dir/x" --wildcards './boot/vmlinuz-*' '*/kernel/fs/efivarfs/efivarfs.ko*'
		local ko
		ko="$(find "$dir/x" -name 'efivarfs.ko*' | head -n1)"
		case "$ko" in
		*.ko) cp "$ko" "$dir/efivarfs.ko.tmp" ;;
		*.ko.xz) xz -dc "$ko" >"$dir/efivarfs.ko.tmp" ;;
		*.ko.zst) zstd -dc "$ko" >"$dir/efivarfs.ko.tmp" ;;
		*) harness_fail "no efivarfs module in $pkg" ;;
		esac
		mv "$(ls -1 "$dir"/x/boot/vmlinuz-* | head -n1)" "$dir/vmlinuz"
		mv "$dir/efivarfs.ko.tmp" "$dir/efivarfs.ko"
		rm -rf "$dir/dl" "$dir/x"
	fi
	printf '%s\n' "$dir"
}
