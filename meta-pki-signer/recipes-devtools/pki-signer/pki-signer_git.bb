SUMMARY = "Build-time PKI and signing tool for secure-boot images"
DESCRIPTION = "pki-signer creates a development PKI and signs kernels, UKIs, \
               EFI applications and GuestOS manifests with it: Authenticode, \
               EFI signature lists, GuestOS configs and device certificates."
SECTION = "devel"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The layer lives in the pki-signer repository, so by default the tool is
# built from the tip of PKI_SIGNER_GIT_BRANCH of that same repository, and the
# classes and the tool always match. Release builds point PKI_SIGNER_GIT_URI
# at their mirror and pin SRCREV in their distro configuration.
PKI_SIGNER_GIT_URI ?= "git://${@os.path.abspath(os.path.join(d.getVar('THISDIR'), '../../..'))};protocol=file"
PKI_SIGNER_GIT_BRANCH ?= "main"

PV = "0.1.0+git"

# destsuffix=${BP} is where S points in every supported release.
SRC_URI = "${PKI_SIGNER_GIT_URI};branch=${PKI_SIGNER_GIT_BRANCH};destsuffix=${BP}"
SRCREV ?= "${AUTOREV}"

inherit cargo

require ${BPN}-crates.inc

CVE_PRODUCT = "pki-signer"

BBCLASSEXTEND = "native nativesdk"
