SUMMARY = "Build-time PKI and signing tool for secure-boot images"
DESCRIPTION = "pki-signer creates a development PKI and signs kernels, UKIs, \
               EFI applications and GuestOS manifests with it: Authenticode, \
               EFI signature lists, GuestOS configs and device certificates."
SECTION = "devel"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The layer lives in the pki-signer repository; by default the tool is built
# from that same repository, at a pinned commit: a fixed SRCREV keeps the task
# hashes (and every signing task after them) stable and parsing free of git
# look-ups. The commit is the one whose Cargo.lock pki-signer-crates.inc was
# generated from (tests/layer/test_recipe.py checks it); bump both together.
# Point PKI_SIGNER_GIT_URI at your mirror for release builds. To follow a branch
# instead (rebuilds on every commit), in local.conf:
#   SRCREV:pn-pki-signer-native = "${AUTOREV}"
PKI_SIGNER_GIT_URI ?= "git://${@os.path.abspath(os.path.join(d.getVar('THISDIR'), '../../..'))};protocol=file"
PKI_SIGNER_GIT_BRANCH ?= "main"

PV = "0.1.0+git"

# destsuffix=${BP} is where S points in every supported release.
SRC_URI = "${PKI_SIGNER_GIT_URI};branch=${PKI_SIGNER_GIT_BRANCH};destsuffix=${BP}"
SRCREV ?= "98b794a90cbb2b4d505a9508c236b8ec8e0dd195"

inherit cargo

# aws-lc-sys (aws-lc-rs's C part) 0.47 compiles AWS-LC with the cc crate and
# its pregenerated "universal" bindings on every Linux target: no cmake, no
# nasm (only Windows x86 assembles .asm), no bindgen/libclang. Pin that
# builder, and never link a system libcrypto found through pkg-config, so a
# change of the build host or sysroot cannot change the tool.
export AWS_LC_SYS_CMAKE_BUILDER = "0"
export AWS_LC_SYS_USE_SYSTEM = "0"

require ${BPN}-crates.inc

CVE_PRODUCT = "pki-signer"

BBCLASSEXTEND = "native nativesdk"
