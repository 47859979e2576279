SUMMARY = "Example GuestOS: a small image signed with pki-signer"
DESCRIPTION = "Builds a squashfs root image and deploys it as a GuestOS \
               (exampleos-1/root.img, exampleos-1.conf, .sig, .cert) signed \
               with the ssig_cml role of the pki-signer PKI."
SECTION = "images"
LICENSE = "MIT"

inherit core-image pki-signer-guestos

IMAGE_FSTYPES += "squashfs"
IMAGE_INSTALL = "packagegroup-core-boot"

PKI_SIGNER_GUESTOS_NAME = "exampleos"
PKI_SIGNER_GUESTOS_CONF_TEMPLATE = "${THISDIR}/files/exampleos.conf"

# An example, not something a world build should make.
EXCLUDE_FROM_WORLD = "1"
