# shellcheck shell=bash
# scripts/layer-deps.sh -- install what the meta-pki-signer tests (tests/layer) need.
#
# Usage:
#   source scripts/layer-deps.sh && layer_deps
#   bash scripts/layer-deps.sh
#
# Installs, only where missing (a second run changes nothing):
#   pip, into the venv ${PKI_SIGNER_VENV:-<repo>/.venv} (created if absent):
#     bitbake-setup  BitBake's own bb library (the wheel installs it as the
#                    top-level package `bb`: `import bb.parse`)
#     oelint-adv     the OpenEmbedded recipe linter
#     pytest
#   apt: python3-venv (only to create the venv), git (bitbake's git fetcher),
#        sbsigntool + openssl (peers that check the signatures),
#        systemd-boot-efi (the EFI binary the tests sign)
# After it, PKI_SIGNER_LAYER_PYTHON is exported: the venv's python, which
# tests/layer.rs runs pytest with.
#
# Environment:
#   PKI_SIGNER_VENV     venv directory (default: <repo root>/.venv)
#   BITBAKE_SETUP_SPEC  pip requirement for bb (default: the tested version)
#   OELINT_ADV_SPEC     pip requirement for oelint-adv (default: the tested
#                       version; new releases add rules)
#
# The function does not change the caller's shell options; it returns
# non-zero on failure.

_layer_deps_repo_root() {
	(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

layer_venv_dir() {
	local v="${PKI_SIGNER_VENV:-.venv}"
	case "$v" in
	/*) printf '%s\n' "$v" ;;
	*) printf '%s/%s\n' "$(_layer_deps_repo_root)" "$v" ;;
	esac
}

_layer_apt() {
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	# Other sessions or CI steps may hold the dpkg lock.
	DEBIAN_FRONTEND=noninteractive $sudo apt-get -q -o DPkg::Lock::Timeout=900 "$@"
}

_layer_apt_missing() {
	local p st
	for p in "$@"; do
		st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
		[ "$st" = "install ok installed" ] || printf '%s\n' "$p"
	done
}

layer_deps() {
	local bitbake_spec="${BITBAKE_SETUP_SPEC:-bitbake-setup==2.19.0}"
	local oelint_spec="${OELINT_ADV_SPEC:-oelint-adv==9.11.2}"
	local missing venv
	mapfile -t missing < <(_layer_apt_missing git openssl sbsigntool systemd-boot-efi)
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "layer_deps: apt installing: ${missing[*]}" >&2
		_layer_apt update >&2 || return 1
		_layer_apt install -y --no-install-recommends "${missing[@]}" >&2 || return 1
	fi

	venv="$(layer_venv_dir)"
	if [ ! -x "$venv/bin/python" ]; then
		echo "layer_deps: creating the venv $venv" >&2
		if ! python3 -m venv "$venv" >&2; then
			# Debian's python3 needs python3-venv for ensurepip.
			rm -rf "$venv"
			_layer_apt update >&2 && _layer_apt install -y --no-install-recommends python3-venv >&2 || return 1
			python3 -m venv "$venv" >&2 || return 1
		fi
	fi
	# Installed at the wanted versions, and bb importable the way the tests import it?
	if ! "$venv/bin/python" - "$bitbake_spec" "$oelint_spec" >/dev/null 2>&1 <<'EOF'; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    if want and version(name) != want:
        sys.exit(1)
import bb.data, oelint_adv, pytest
EOF
		echo "layer_deps: pip installing $bitbake_spec $oelint_spec pytest into $venv" >&2
		"$venv/bin/python" -m pip install -q --disable-pip-version-check \
			"$bitbake_spec" "$oelint_spec" "pytest>=7" >&2 || return 1
	fi
	PKI_SIGNER_LAYER_PYTHON="$venv/bin/python"
	export PKI_SIGNER_LAYER_PYTHON
}

# Run directly (not sourced): install now.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	layer_deps "$@"
fi
