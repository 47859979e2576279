# shellcheck shell=bash
# scripts/stubdebs.sh -- the newer systemd stubs and tools the uki tests check
# our output with, from Debian debs that are extracted, never installed.
#
# Usage:
#   source scripts/stubdebs.sh && stubdebs_prepare
#   bash scripts/stubdebs.sh            # same, then prints the exports
#
# Debian 12 ships systemd 252; the next stubs Debian ships are 254
# (bookworm-backports), 257 (trixie) and 262 (forky; sid has 262 too).
# Installing those suites' systemd would replace the machine's own, so the
# debs are fetched with a private apt configuration (its own sources, lists
# and cache under the cache directory; the system's apt setup is left alone)
# and unpacked with dpkg-deb -x:
#   bookworm-backports: systemd-boot-efi (stub 254), systemd (its
#     systemd-measure and ukify) and libsystemd-shared (the library
#     systemd-measure links; found through LD_LIBRARY_PATH)
#   trixie: systemd-boot-efi (stub 257), systemd-ukify (ukify 257, a Python
#     script; it needs pefile, which virt-firmware already pulls into the venv)
#   forky: systemd-boot-efi (stub 262), systemd-ukify (ukify 262),
#     systemd-tpm (systemd-measure 262 moved there) and libsystemd-shared
#     262. That systemd-measure runs on Debian 12 (its newest glibc symbol is
#     GLIBC_2.34; Debian 12 has 2.36), so it is a peer too.
_stubdebs_repo_root() {
	(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# _stubdebs_apt DIR ARGS...: apt-get with only the private configuration in DIR.
_stubdebs_apt() {
	local dir="$1"
	shift
	apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/sources" \
		-o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
		-o APT::Sandbox::User=root "$@"
}

_stubdebs_updated=0

# The first of the given paths that exists, or nothing.
_stubdebs_first() {
	local p
	for p in "$@"; do
		if [ -e "$p" ]; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	return 0
}

# _stubdebs_fetch CACHE SUITE PKG: unpack PKG from SUITE into CACHE/debs/SUITE/PKG/root.
_stubdebs_fetch() {
	local cache="$1" suite="$2" pkg="$3"
	local dest="$cache/debs/$suite/$pkg" apt="$cache/debs/apt" tmp deb
	[ -f "$dest/version" ] && return 0
	mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial"
	if [ "$_stubdebs_updated" = 0 ]; then
		cat >"$apt/sources/debian-next.sources" <<-'EOF'
			Types: deb
			URIs: http://deb.debian.org/debian
			Suites: bookworm-backports trixie forky
			Components: main
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
		EOF
		echo "stubdebs: apt-get update (private lists: bookworm-backports, trixie, forky)" >&2
		_stubdebs_apt "$apt" update >&2 || return 1
		_stubdebs_updated=1
	fi
	tmp="$(mktemp -d "$cache/debs/dl.XXXXXX")" || return 1
	echo "stubdebs: downloading $pkg/$suite" >&2
	if ! (cd "$tmp" && _stubdebs_apt "$apt" download "$pkg/$suite" >&2); then
		rm -rf "$tmp"
		return 1
	fi
	deb="$(_stubdebs_first "$tmp"/*.deb)"
	mkdir -p "$tmp/root"
	dpkg-deb -x "$deb" "$tmp/root" || { rm -rf "$tmp"; return 1; }
	dpkg-deb -f "$deb" Version >"$tmp/version" || { rm -rf "$tmp"; return 1; }
	rm -f "$deb"
	rm -rf "$dest"
	mkdir -p "$(dirname "$dest")"
	mv "$tmp" "$dest"
}

# _stubdebs_measure_wrapper WRAPPER MEASURE LIBDIR VERSION: write WRAPPER, a
# script that runs MEASURE with LIBDIR (its libsystemd-shared) on
# LD_LIBRARY_PATH, and check that it runs here.
_stubdebs_measure_wrapper() {
	local wrapper="$1" measure="$2" lib="$3" version="$4"
	if [ ! -x "$measure" ] || [ ! -d "$lib" ]; then
		echo "stubdebs: no systemd-measure $version or libsystemd-shared in the debs" >&2
		return 1
	fi
	# A wrapper, not an exported LD_LIBRARY_PATH: ukify runs it as its
	# systemd-measure (--tools), and nothing else should see that library.
	printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$lib" "$measure" >"$wrapper.tmp" &&
		chmod +x "$wrapper.tmp" && mv "$wrapper.tmp" "$wrapper" || return 1
	"$wrapper" --version >/dev/null || { echo "stubdebs: systemd-measure $version does not run here" >&2; return 1; }
}

stubdebs_prepare() {
	local cache="${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}"
	local bpo="$cache/debs/bookworm-backports" trixie="$cache/debs/trixie" forky="$cache/debs/forky"
	mkdir -p "$cache/debs" || return 1
	_stubdebs_fetch "$cache" bookworm-backports systemd-boot-efi || return 1
	_stubdebs_fetch "$cache" bookworm-backports systemd || return 1
	_stubdebs_fetch "$cache" bookworm-backports libsystemd-shared || return 1
	_stubdebs_fetch "$cache" trixie systemd-boot-efi || return 1
	_stubdebs_fetch "$cache" trixie systemd-ukify || return 1
	_stubdebs_fetch "$cache" forky systemd-boot-efi || return 1
	_stubdebs_fetch "$cache" forky systemd-ukify || return 1
	_stubdebs_fetch "$cache" forky systemd-tpm || return 1
	_stubdebs_fetch "$cache" forky libsystemd-shared || return 1

	# The first that exists (no `ls | head`: scripts/test.sh runs with
	# pipefail, and ls fails for the path that does not).
	_stubdebs_measure_wrapper "$bpo/systemd-measure" \
		"$(_stubdebs_first "$bpo"/systemd/root/{usr/,}lib/systemd/systemd-measure)" \
		"$(dirname "$(_stubdebs_first "$bpo"/libsystemd-shared/root/usr/lib/*/systemd/libsystemd-shared-*.so)")" \
		254 || return 1
	_stubdebs_measure_wrapper "$forky/systemd-measure" \
		"$forky/systemd-tpm/root/usr/lib/systemd/systemd-measure" \
		"$(dirname "$(_stubdebs_first "$forky"/libsystemd-shared/root/usr/lib/*/systemd/libsystemd-shared-*.so)")" \
		262 || return 1

	local venv="${PKI_SIGNER_VENV:-.venv}"
	case "$venv" in /*) ;; *) venv="$(_stubdebs_repo_root)/$venv" ;; esac
	if ! "$venv/bin/python" -c 'import pefile' 2>/dev/null; then
		echo "stubdebs: pip installing pefile into $venv" >&2
		"$venv/bin/python" -m pip install -q --disable-pip-version-check pefile >&2 || return 1
	fi

	local efi=root/usr/lib/systemd/boot/efi/linuxx64.efi.stub
	PKI_SIGNER_TEST_STUB_254="$bpo/systemd-boot-efi/$efi"
	PKI_SIGNER_TEST_STUB_257="$trixie/systemd-boot-efi/$efi"
	PKI_SIGNER_TEST_STUB_262="$forky/systemd-boot-efi/$efi"
	PKI_SIGNER_TEST_MEASURE_254="$bpo/systemd-measure"
	PKI_SIGNER_TEST_MEASURE_262="$forky/systemd-measure"
	PKI_SIGNER_TEST_UKIFY_254="$(_stubdebs_first "$bpo"/systemd/root/{usr/,}lib/systemd/ukify)"
	PKI_SIGNER_TEST_UKIFY_257="$trixie/systemd-ukify/root/usr/lib/systemd/ukify"
	PKI_SIGNER_TEST_UKIFY_262="$forky/systemd-ukify/root/usr/lib/systemd/ukify"
	PKI_SIGNER_TEST_PYTHON="$venv/bin/python"
	export PKI_SIGNER_TEST_STUB_254 PKI_SIGNER_TEST_STUB_257 PKI_SIGNER_TEST_STUB_262 \
		PKI_SIGNER_TEST_MEASURE_254 PKI_SIGNER_TEST_MEASURE_262 PKI_SIGNER_TEST_UKIFY_254 \
		PKI_SIGNER_TEST_UKIFY_257 PKI_SIGNER_TEST_UKIFY_262 PKI_SIGNER_TEST_PYTHON
}

# Run directly (not sourced): prepare, then show what a shell should export.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	stubdebs_prepare || exit 1
	env | grep '^PKI_SIGNER_TEST_' | sed 's/^/export /'
fi
