# shellcheck shell=bash
# tests/ovmf/deps.sh -- install what the OVMF Secure Boot proof harness needs.
#
# Usage:
#   source tests/ovmf/deps.sh && ovmf_deps [EXTRA_APT_PKG...]
#   bash tests/ovmf/deps.sh [EXTRA_APT_PKG...]      # same, as a command
#
# Installs, only where missing (idempotent; `apt-get update` runs at most
# once, and only if some apt package must be installed):
#   apt: ovmf qemu-system-x86 systemd-boot-efi busybox-static dosfstools
#        mtools binutils openssl swtpm swtpm-tools (the TPM of boot.sh --tpm)
#        (+ any EXTRA_APT_PKG, e.g. sbsigntool)
#   pip: virt-firmware (provides virt-fw-vars) into the venv
#        ${PKI_SIGNER_VENV:-<repo>/.venv}  (python3 -m venv)
# After it, VIRT_FW_VARS is exported with the path of virt-fw-vars.
# Needs root (or sudo) for apt.  Concurrent apt runs are waited for.
#
# Environment:
#   PKI_SIGNER_VENV   venv directory (default: <repo root>/.venv)
#   VIRT_FIRMWARE_SPEC  pip requirement (default: virt-firmware)
#
# The function does not change the caller's shell options; it returns
# non-zero on failure.

_ovmf_deps_repo_root() {
	local here
	here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
	(cd "$here/../.." && pwd)
}

# Print the absolute venv path.
ovmf_venv_dir() {
	local v="${PKI_SIGNER_VENV:-.venv}"
	case "$v" in
	/*) printf '%s\n' "$v" ;;
	*) printf '%s/%s\n' "$(_ovmf_deps_repo_root)" "$v" ;;
	esac
}

_ovmf_apt() {
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	# Lock timeout: other sessions/CI steps may be running apt concurrently.
	DEBIAN_FRONTEND=noninteractive $sudo apt-get -q -o DPkg::Lock::Timeout=900 "$@"
}

ovmf_deps() {
	local pkgs=(ovmf qemu-system-x86 systemd-boot-efi busybox-static
		dosfstools mtools binutils openssl swtpm swtpm-tools "$@")
	local missing=() p st
	for p in "${pkgs[@]}"; do
		st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
		[ "$st" = "install ok installed" ] || missing+=("$p")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "ovmf_deps: apt installing: ${missing[*]}" >&2
		_ovmf_apt update >&2 || return 1
		_ovmf_apt install -y --no-install-recommends "${missing[@]}" >&2 || return 1
	fi

	local venv
	venv="$(ovmf_venv_dir)"
	if [ ! -x "$venv/bin/virt-fw-vars" ]; then
		echo "ovmf_deps: pip installing virt-firmware into $venv" >&2
		if [ ! -x "$venv/bin/python" ]; then
			if ! python3 -m venv "$venv" >&2; then
				# Debian's python3 needs python3-venv for ensurepip.
				rm -rf "$venv"
				_ovmf_apt update >&2 && _ovmf_apt install -y --no-install-recommends python3-venv >&2 || return 1
				/usr/bin/python3 -m venv "$venv" >&2 || return 1
			fi
		fi
		"$venv/bin/python" -m pip install -q --disable-pip-version-check \
			"${VIRT_FIRMWARE_SPEC:-virt-firmware}" >&2 || return 1
	fi
	VIRT_FW_VARS="$venv/bin/virt-fw-vars"
	export VIRT_FW_VARS
}

# Run directly (not sourced): install now.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	ovmf_deps "$@"
fi
