# pki-signer-efi.bbclass: Authenticode-signs the EFI binaries a recipe deploys
# (kernel images with an EFI stub, UKIs, EFI applications) for UEFI Secure Boot.
#
#   kernel recipe (or bbappend):   inherit pki-signer-efi
#   image recipe with uki.bbclass: inherit uki pki-signer-efi
#   EFI application:               inherit deploy pki-signer-efi
#                                  PKI_SIGNER_EFI_FILES = "myapp.efi"
#
# The files are signed in place where the recipe deploys them, after the deploy
# function and before sstate takes the output, so DEPLOY_DIR_IMAGE and sstate
# only ever hold the signed files, under their usual names.
#
#   PKI_SIGNER_EFI_ROLE           role that signs; its certificate goes into UEFI db
#   PKI_SIGNER_EFI_FILES          files to sign, relative to PKI_SIGNER_EFI_DIR; symlinks
#                                 are followed, so every name of a file sees the signature
#   PKI_SIGNER_EFI_TASK           task whose output is signed (do_deploy; do_uki with uki.bbclass)
#   PKI_SIGNER_EFI_DIR            where that task leaves the files
#   PKI_SIGNER_EFI_KEEP_UNSIGNED  "1": also deploy FILE.unsigned, the file before signing
#   PKI_SIGNER_EFI_EXISTING       "replace" or "append": what happens to signatures already there

inherit pki-signer

PKI_SIGNER_EFI_ROLE ?= "ssig_subca"
PKI_SIGNER_EFI_TASK ?= "${@'do_uki' if bb.data.inherits_class('uki', d) else 'do_deploy'}"
PKI_SIGNER_EFI_DIR ?= "${@d.getVar('DEPLOY_DIR_IMAGE') if d.getVar('PKI_SIGNER_EFI_TASK') == 'do_uki' else d.getVar('DEPLOYDIR')}"
PKI_SIGNER_EFI_FILES ?= "${@pki_signer_efi_default_files(d)}"
PKI_SIGNER_EFI_KEEP_UNSIGNED ?= "0"
PKI_SIGNER_EFI_EXISTING ?= "replace"

PKI_SIGNER_ROLES += "${PKI_SIGNER_EFI_ROLE}"

def pki_signer_efi_default_files(d):
    """What a recipe deploys that boots: the UKI, or the kernel image as kernel.bbclass names it."""
    if d.getVar("PKI_SIGNER_EFI_TASK") == "do_uki":
        return d.getVar("UKI_FILENAME") or ""
    if not bb.data.inherits_class("kernel", d):
        return ""
    # The real file, not the KERNEL_IMAGETYPE symlink, which KERNEL_IMAGETYPE_SYMLINK may turn off.
    subdir = d.getVar("KERNEL_DEPLOYSUBDIR") or ""
    ext = d.getVar("KERNEL_IMAGE_BIN_EXT") or ""
    imagetype = d.getVar("KERNEL_IMAGETYPE")
    files = ["%s-%s%s" % (imagetype, d.getVar("KERNEL_IMAGE_NAME"), ext)]
    if d.getVar("INITRAMFS_IMAGE") and d.getVar("INITRAMFS_IMAGE_BUNDLE") == "1":
        files.append("%s-%s%s" % (imagetype, d.getVar("INITRAMFS_NAME"), ext))
    return " ".join(os.path.join(subdir, f) for f in files)

pki_signer_sign_efi() {
    dir="${PKI_SIGNER_EFI_DIR}"
    if [ -z "${PKI_SIGNER_EFI_FILES}" ]; then
        bbfatal "pki-signer-efi: PKI_SIGNER_EFI_FILES is empty: set it to the EFI binaries ${PN} deploys"
    fi
    case "${PKI_SIGNER_EFI_EXISTING}" in
    replace|append) ;;
    *) bbfatal "PKI_SIGNER_EFI_EXISTING is '${PKI_SIGNER_EFI_EXISTING}': use replace or append" ;;
    esac
    signed=""
    for name in ${PKI_SIGNER_EFI_FILES}; do
        if [ ! -e "$dir/$name" ]; then
            bbfatal "pki-signer-efi: $dir/$name does not exist (PKI_SIGNER_EFI_FILES)"
        fi
        file=$(readlink -f "$dir/$name")
        # Two names of one file are signed once.
        case " $signed " in
        *" $file "*) continue ;;
        esac
        signed="$signed $file"
        if [ "${PKI_SIGNER_EFI_KEEP_UNSIGNED}" = "1" ]; then
            cp --remove-destination "$file" "$dir/$name.unsigned"
        fi
        bbnote "pki-signer: signing $name with ${PKI_SIGNER_EFI_ROLE} (sha256 fingerprint ${@pki_signer_fingerprint(d, d.getVar('PKI_SIGNER_EFI_ROLE'))})"
        ${PKI_SIGNER_BIN} pe sign "$file" --in-place --${PKI_SIGNER_EFI_EXISTING} \
            ${@pki_signer_key_args(d, d.getVar('PKI_SIGNER_EFI_ROLE'))} ${@pki_signer_plan_args(d)}
    done
}
pki_signer_sign_efi[doc] = "Signs PKI_SIGNER_EFI_FILES in PKI_SIGNER_EFI_DIR; runs as a postfunc of PKI_SIGNER_EFI_TASK"
pki_signer_sign_efi[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

python () {
    task = d.getVar("PKI_SIGNER_EFI_TASK")
    if task == "do_uki" and not bb.data.inherits_class("uki", d):
        # OE-core has uki.bbclass from walnascar (5.2) on; scarthgap and styhead have none.
        bb.fatal("pki-signer-efi: PKI_SIGNER_EFI_TASK is do_uki, which OE-core's uki.bbclass adds (walnascar and "
                 "later): inherit uki before pki-signer-efi, or on scarthgap/styhead sign the UKI your own task "
                 "deploys with PKI_SIGNER_EFI_TASK and PKI_SIGNER_EFI_DIR")
    pki_signer_hook(d, task, "pki_signer_sign_efi", "PKI_SIGNER_EFI_ROLE")
}
