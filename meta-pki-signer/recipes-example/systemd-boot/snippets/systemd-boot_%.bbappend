# Signs the systemd-boot EFI binary where meson builds it, after do_compile and
# before do_install and do_deploy, with the pki-signer PKI's ssig_subca key
# (whose certificate is in its DB.esl). The package, and so the ESP and /boot
# of every image with systemd-boot, holds the signed boot loader, and so does
# DEPLOY_DIR_IMAGE. do_compile does not wait for pki-signer-native.
#
# This is a snippet: it lies outside the layer's BBFILES so that adding the layer
# signs nothing by itself. Copy it into your own layer as
# recipes-core/systemd/systemd-boot_%.bbappend.

inherit pki-signer-efi

PKI_SIGNER_EFI_TASK = "do_compile"
# OE-core's systemd-boot recipe builds into src/boot/efi up to systemd 256
# (scarthgap, styhead), and into src/boot from 257 (walnascar) on.
PKI_SIGNER_EFI_DIR = "${B}/src/boot${@'/efi' if bb.utils.vercmp_string_op(d.getVar('PV'), '257', '<') else ''}"
# The boot loader only: the linux and addon stubs become part of UKIs, which
# are signed as a whole.
PKI_SIGNER_EFI_FILES = "systemd-boot${EFI_ARCH}.efi"
