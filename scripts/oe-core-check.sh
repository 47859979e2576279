#!/usr/bin/env bash
# scripts/oe-core-check.sh -- run meta-pki-signer on a real OE-core checkout.
#
# Usage:
#   scripts/oe-core-check.sh [--build] [--no-check-layer] [--machine MACHINE] [--record] OE-CORE-DIR BITBAKE-DIR [BUILD-DIR]
#
#   OE-CORE-DIR  an openembedded-core checkout (scarthgap .. wrynose)
#   BITBAKE-DIR  the bitbake checkout of the same release
#   BUILD-DIR    build directory to use (default: a new one under ${TMPDIR:-/tmp})
#
# Steps, each reported as PASS/FAIL/SKIP on one line:
#   parse       bitbake -p with the layer: every recipe parses, no error
#   depends     bitbake -g linux-yocto with the example kernel bbappend: no path
#               from linux-yocto's do_compile (or do_configure) to pki-signer-native,
#               and do_deploy, which signs, depends on it
#   depends-compile
#               the same with PKI_SIGNER_EFI_TASK = "do_compile" for linux-yocto:
#               do_compile and do_configure do not reach pki-signer-native,
#               do_pki_signer_sign does, and do_install, do_sizecheck and do_deploy
#               come after do_pki_signer_sign
#   systemd-boot
#               the systemd-boot snippet (recipes-example/systemd-boot/snippets):
#               the same task order for systemd-boot, whose do_deploy follows
#               do_compile, and PKI_SIGNER_EFI_DIR is where this release's
#               do_install takes systemd-boot*.efi from
#   check-layer yocto-check-layer on meta-pki-signer (in a build directory of its own);
#               --no-check-layer skips it (it computes world signatures: hours on 2 cores)
#   build       only with --build (needs network or a full DL_DIR): builds
#               linux-yocto's do_deploy, then checks the signed kernel with sbverify
#               and that signing-plan.json names the deployed file
# --record writes the summary into meta-pki-signer/README.md ("On real OE-core").
#
# bitbake needs the en_US.UTF-8 locale (Debian: locales, locale-gen) and the host
# tools OE-core lists in HOSTTOOLS (Debian: chrpath diffstat gawk cpio ...).
# bitbake refuses to run as root: as root, set OE_CHECK_USER to a user that
# may write BUILD-DIR; every bitbake command then runs as that user (runuser).
# CI has no OE-core checkout: this script is for people who have one.

set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAYER="$REPO/meta-pki-signer"
BUILD=0
CHECK_LAYER=1
RECORD=0
MACHINE="qemux86-64"
while [ $# -gt 0 ]; do
	case "$1" in
	--build) BUILD=1 ;;
	--no-check-layer) CHECK_LAYER=0 ;;
	--record) RECORD=1 ;;
	--machine) MACHINE="$2"; shift ;;
	-h|--help) sed -n '2,/^$/{/^$/q;p}' "$0"; exit 0 ;;
	--*) echo "oe-core-check: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done
if [ $# -lt 2 ]; then
	echo "usage: $0 [--build] [--no-check-layer] [--machine MACHINE] [--record] OE-CORE-DIR BITBAKE-DIR [BUILD-DIR]" >&2
	exit 2
fi
OECORE="$(cd "$1" && pwd)" || exit 2
BITBAKE="$(cd "$2" && pwd)" || exit 2
TOP="${3:-$(mktemp -d "${TMPDIR:-/tmp}/oe-core-check.XXXXXX")}"
mkdir -p "$TOP" && TOP="$(cd "$TOP" && pwd)"
for f in "$OECORE/oe-init-build-env" "$OECORE/meta/conf/layer.conf" "$BITBAKE/bin/bitbake"; do
	[ -e "$f" ] || { echo "oe-core-check: $f missing" >&2; exit 2; }
done
if [ "$(id -u)" = 0 ] && [ -z "${OE_CHECK_USER:-}" ]; then
	echo "oe-core-check: bitbake does not run as root: set OE_CHECK_USER to a build user" >&2
	exit 2
fi

SERIES="$(sed -n 's/^LAYERSERIES_CORENAMES = "\(.*\)"/\1/p' "$OECORE/meta/conf/layer.conf")"
OECORE_REV="${OE_CHECK_OECORE_REV:-$(git -C "$OECORE" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
BITBAKE_REV="${OE_CHECK_BITBAKE_REV:-$(git -C "$BITBAKE" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
SUMMARY="$TOP/summary.txt"
: >"$SUMMARY"

# Run a shell snippet in an initialised build directory DIR, as the build user.
in_build() {
	local dir="$1"; shift
	local script="export BITBAKEDIR='$BITBAKE'; cd '$OECORE' && . ./oe-init-build-env '$dir' >/dev/null && $*"
	if [ "$(id -u)" = 0 ]; then
		chown -R "$OE_CHECK_USER" "$TOP"
		runuser -u "$OE_CHECK_USER" -- env -i HOME="$TOP" PATH="/usr/local/bin:/usr/bin:/bin" \
			LANG=en_US.UTF-8 bash -c "$script"
	else
		env -i HOME="$HOME" PATH="$PATH" LANG=en_US.UTF-8 bash -c "$script"
	fi
}

result() {
	printf '%-12s %s\n' "$1" "$2" | tee -a "$SUMMARY"
}

# The build directory: the layer, the example kernel and systemd-boot bbappends in a layer
# of its own, and no downloads unless --build.
B="$TOP/build"
in_build "$B" true || { echo "oe-core-check: oe-init-build-env failed" >&2; exit 1; }
APPEND="$TOP/meta-pki-signer-check"
mkdir -p "$APPEND/conf" "$APPEND/recipes-kernel/linux" "$APPEND/recipes-core/systemd"
cat >"$APPEND/conf/layer.conf" <<EOF
BBPATH .= ":\${LAYERDIR}"
BBFILES += "\${LAYERDIR}/recipes-*/*/*.bbappend"
BBFILE_COLLECTIONS += "pki-signer-check"
BBFILE_PATTERN_pki-signer-check = "^\${LAYERDIR}/"
BBFILE_PRIORITY_pki-signer-check = "7"
LAYERDEPENDS_pki-signer-check = "core pki-signer"
LAYERSERIES_COMPAT_pki-signer-check = "$SERIES"
EOF
cp "$LAYER/recipes-example/linux/snippets/linux-yocto_%.bbappend" "$APPEND/recipes-kernel/linux/"
cp "$LAYER/recipes-example/systemd-boot/snippets/systemd-boot_%.bbappend" "$APPEND/recipes-core/systemd/"
# Read after local.conf by the depends-compile step only (bitbake -R).
COMPILE_CONF="$TOP/pki-signer-compile.conf"
echo 'PKI_SIGNER_EFI_TASK:pn-linux-yocto = "do_compile"' >"$COMPILE_CONF"
cat >>"$B/conf/local.conf" <<EOF
MACHINE = "$MACHINE"
PKI_SIGNER_KEY_TYPE = "ec:prime256v1"
EOF
if [ "$BUILD" = 0 ]; then
	echo 'BB_NO_NETWORK = "1"' >>"$B/conf/local.conf"
fi
in_build "$B" "bitbake-layers add-layer '$LAYER' '$APPEND'" >"$TOP/add-layer.log" 2>&1 ||
	{ result add-layer "FAIL (see $TOP/add-layer.log)"; }

# parse
if in_build "$B" "bitbake -p" >"$TOP/parse.log" 2>&1; then
	result parse "PASS ($(grep -o 'Parsing of [0-9]* .bb files complete[^.]*' "$TOP/parse.log" | tail -1))"
else
	result parse "FAIL: $(grep -m1 -E '^ERROR' "$TOP/parse.log") (see $TOP/parse.log)"
fi

# graph_verdict DOT PN SIGNING AFTER...: one line on bitbake -g's task-depends.dot. PN's
# do_configure and do_compile must not reach pki-signer-native, its task SIGNING must, and
# each task of AFTER that PN has must come after SIGNING.
graph_verdict() {
	python3 - "$@" <<'EOF'
import re, sys
dot, pn, signing, after = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
edges = {}
for a, b in re.findall(r'^"([^"]+)" -> "([^"]+)"', open(dot).read(), re.M):
    edges.setdefault(a, set()).add(b)
def reaches(start):
    seen, todo = set(), [start]
    while todo:
        t = todo.pop()
        for n in edges.get(t, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen
def tool(task):
    return any(n.startswith("pki-signer-native.") for n in reaches("%s.%s" % (pn, task)))
bad = [t for t in ("do_configure", "do_compile") if tool(t)]
sign = "%s.%s" % (pn, signing)
missing = [t for t in after if "%s.%s" % (pn, t) in edges and sign not in reaches("%s.%s" % (pn, t))]
if bad:
    print("FAIL: %s of %s reach pki-signer-native" % (" and ".join(bad), pn))
elif not tool(signing):
    print("FAIL: %s does not reach pki-signer-native (is the bbappend applied?)" % sign)
elif missing:
    print("FAIL: %s of %s do not come after %s" % (" and ".join(missing), pn, signing))
else:
    print("PASS (do_configure/do_compile do not reach pki-signer-native; %s does%s)"
          % (signing, "; %s after it" % "/".join(after) if after else ""))
EOF
}

# graph STEP TARGET SIGNING [AFTER...] [-- BITBAKE-OPTION...]: bitbake -g TARGET in a
# directory of its own, and graph_verdict on it.
graph() {
	local step="$1" target="$2" signing="$3" dir="$TOP/graph-$1"
	shift 3
	local after=() opts=()
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do
		after+=("$1")
		shift
	done
	if [ $# -gt 0 ]; then
		shift
		opts=("$@")
	fi
	mkdir -p "$dir"
	if in_build "$B" "cd '$dir' && bitbake ${opts[*]} -g $target" >"$dir/graph.log" 2>&1; then
		result "$step" "$(graph_verdict "$dir/task-depends.dot" "$target" "$signing" "${after[@]}")"
	else
		result "$step" "FAIL: bitbake -g $target: $(grep -m1 -E '^ERROR' "$dir/graph.log") (see $dir/graph.log)"
	fi
}

# depends: the kernel's compile must not wait for pki-signer-native; do_deploy signs.
graph depends linux-yocto do_deploy

# depends-compile: signing after do_compile, in a task of its own, before the tasks that
# copy or measure the image.
graph depends-compile linux-yocto do_pki_signer_sign do_install do_sizecheck do_deploy -- -R "$COMPILE_CONF"

# systemd-boot: the snippet signs after do_compile; the recipe's do_deploy follows do_compile.
graph systemd-boot systemd-boot do_pki_signer_sign do_install do_deploy
if tail -1 "$SUMMARY" | grep -q '^systemd-boot .*PASS'; then
	# The snippet's PKI_SIGNER_EFI_DIR must be where this release's recipe builds the boot
	# loader: its do_install installs systemd-boot*.efi from there.
	env_log="$TOP/graph-systemd-boot/env.log"
	efidir=""
	if in_build "$B" "bitbake -e systemd-boot" >"$env_log" 2>&1; then
		efidir="$(sed -n 's/^PKI_SIGNER_EFI_DIR="\(.*\)"$/\1/p' "$env_log")"
	fi
	if [ -n "$efidir" ] && sed -n '/^do_install() {/,/^}/p' "$env_log" | grep -qF "$efidir/systemd-boot"; then
		last="$(tail -1 "$SUMMARY")"
		sed -i '$ d' "$SUMMARY"
		echo "${last%)}; do_install installs from PKI_SIGNER_EFI_DIR)" >>"$SUMMARY"
	else
		sed -i '$ d' "$SUMMARY"
		result systemd-boot "FAIL: do_install does not install from PKI_SIGNER_EFI_DIR ('$efidir') (see $env_log)"
	fi
fi

# yocto-check-layer, in a build directory of its own (it wants only OE-core in BBLAYERS).
if [ "$CHECK_LAYER" = 1 ]; then
	C="$TOP/check-layer"
	in_build "$C" true
	[ "$BUILD" = 1 ] || echo 'BB_NO_NETWORK = "1"' >>"$C/conf/local.conf"
	if in_build "$C" "yocto-check-layer --no-auto-dependency '$LAYER'" >"$TOP/check-layer.log" 2>&1; then
		result check-layer "PASS ($(grep -E 'INFO: (Ran|OK|FAILED)' "$TOP/check-layer.log" | tr '\n' ' '))"
	else
		result check-layer "FAIL: $(grep -E '^(ERROR|FAIL)|INFO: .*(FAIL|ERROR)' "$TOP/check-layer.log" | head -5 | tr '\n' ' ') (see $TOP/check-layer.log)"
	fi
else
	result check-layer "SKIP (--no-check-layer)"
fi

# build and sign
if [ "$BUILD" = 1 ]; then
	if in_build "$B" "bitbake linux-yocto -c deploy" >"$TOP/build.log" 2>&1; then
		deploy="$B/tmp/deploy/images/$MACHINE"
		if sbverify --cert "$B/pki/ssig_subca.cert" "$deploy/bzImage" >/dev/null 2>&1 &&
			grep -q '"output": "bzImage-' "$deploy/signing-plan.json"; then
			result build "PASS (bzImage verifies under ssig_subca; signing-plan.json names the deployed file)"
		else
			result build "FAIL: the deployed bzImage or the plan is not as expected (see $deploy)"
		fi
	else
		result build "FAIL: $(grep -m1 -E '^ERROR' "$TOP/build.log") (see $TOP/build.log)"
	fi
else
	result build "SKIP (no --build)"
fi

header="OE-core $SERIES ($OECORE_REV), bitbake $BITBAKE_REV, MACHINE $MACHINE, $(date -u +%Y-%m-%d):"
echo "$header"
if [ "$RECORD" = 1 ]; then
	python3 - "$LAYER/README.md" "$header" "$SUMMARY" <<'EOF'
import re, sys
readme, header, summary = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
text = open(readme).read()
block = "<!-- oe-core-check results: begin -->\n%s\n\n```\n%s```\n<!-- oe-core-check results: end -->" % (header, summary)
text = re.sub(r"<!-- oe-core-check results: begin -->.*?<!-- oe-core-check results: end -->", lambda m: block, text, flags=re.S)
open(readme, "w").write(text)
EOF
fi
! grep -q ' FAIL' "$SUMMARY"
