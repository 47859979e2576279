# Signs the kernel image that linux-yocto deploys, for UEFI Secure Boot with the
# pki-signer PKI's ssig_subca key (whose certificate is in its DB.esl).
#
# This is a snippet: it lies outside the layer's BBFILES so that adding the layer
# signs nothing by itself. Copy it into your own layer as
# recipes-kernel/linux/linux-yocto_%.bbappend, or as the bbappend of your kernel.

inherit pki-signer-efi

# Also deploy bzImage-....bin.unsigned, for example to enroll other keys later.
PKI_SIGNER_EFI_KEEP_UNSIGNED = "1"
