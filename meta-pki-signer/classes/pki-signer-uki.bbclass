# pki-signer-uki.bbclass: makes an image's Unified Kernel Image with one
# `pki-signer uki build`: it assembles the UKI on systemd-stub, predicts PCR 11
# for the boot phases, signs that TPM PCR policy into .pcrsig with the PCR key
# and Authenticode-signs the result with the Secure Boot key.
#
#   image recipe:   inherit pki-signer-uki        (in place of: inherit uki)
#
# It is OE-core's uki.bbclass (walnascar and later) with its ukify step
# replaced: this class inherits uki and redefines do_uki, nothing else. So
# uki.bbclass still decides what goes in (UKI_KERNEL_FILENAME, INITRAMFS_IMAGE,
# UKI_CMDLINE, UKI_DEVICETREE, os-release, the systemd-boot stub), when
# (do_uki after do_rootfs, after systemd-boot's and the kernel's do_deploy and
# the initramfs image, before do_image_complete and do_image_wic) and where
# the UKI goes (DEPLOY_DIR_IMAGE/UKI_FILENAME, and IMAGE_EFI_BOOT_FILES packs it
# into the EFI system partition). ukify is not run: it cannot sign a PCR policy
# at build time (uki.bbclass: "TPM PCR pre-calculation is not supported").
#
# What goes in, found as uki.bbclass finds it (each can be set):
#
#   PKI_SIGNER_UKI_STUB        ${DEPLOY_DIR_IMAGE}/linux${EFI_ARCH}.efi.stub (systemd-boot's do_deploy)
#   PKI_SIGNER_UKI_KERNEL      ${DEPLOY_DIR_IMAGE}/${UKI_KERNEL_FILENAME}
#   PKI_SIGNER_UKI_INITRDS     ${DEPLOY_DIR_IMAGE}/${INITRAMFS_IMAGE}-${MACHINE}.TYPE, TYPE the first of
#                              INITRAMFS_FSTYPES; empty without INITRAMFS_IMAGE
#   PKI_SIGNER_UKI_OS_RELEASE  ${RECIPE_SYSROOT}${prefix}/lib/os-release
#   PKI_SIGNER_UKI_DTB         the UKI_DEVICETREE blob in DEPLOY_DIR_IMAGE (one)
#   PKI_SIGNER_UKI_UNAME       KERNEL_VERSION, if set (.uname; else the kernel's own, as ukify)
#   PKI_SIGNER_UKI_SPLASH, PKI_SIGNER_UKI_SBAT   a BMP (.splash), SBAT lines for the stub's .sbat
#   PKI_SIGNER_UKI_MICROCODE   an early microcode cpio (.ucode; systemd-stub 256 and later)
#   UKI_CMDLINE, UKI_FILENAME  as uki.bbclass has them
#
# The keys, and what is signed with them:
#
#   PKI_SIGNER_UKI_ROLE        role whose key Authenticode-signs the UKI (ssig_subca, in db)
#   PKI_SIGNER_UKI_PCR_ROLE    tpm2-pcr: the PCR policy key (`pki init --uefi` makes it);
#                              empty: a UKI without .pcrpkey and .pcrsig
#   PKI_SIGNER_UKI_PHASES      boot phases whose PCR 11 value the policy allows
#   PKI_SIGNER_UKI_PCR_BANKS   PCR banks the policy is signed for (sha256, sha384, sha512, sha1;
#                              stubs 258 and later: sha256 only)
#
# Production and HSM keys replace either role as in pki-signer.bbclass, with
# varflags; the PCR key has no certificate, its public key (PEM) takes the
# certificate's place:
#
#   PKI_SIGNER_KEY[tpm2-pcr]  = "pkcs11:token=release;object=pcr?pin-source=file:/run/pin"
#   PKI_SIGNER_CERT[tpm2-pcr] = "/srv/release/tpm2-pcr-public.pem"
#
# The task signature of do_uki carries both keys: the content of the signing
# certificate and of the PCR public key (file-checksums), or their pkcs11:
# URIs. A new key of either role builds and signs the UKI again.

inherit pki-signer

# uki.bbclass is there from walnascar (5.2) on; without it the parse stops
# below, saying so. Not inherit_defer: that would inherit it after this class,
# and its do_uki would replace ours.
# nooelint: oelint.var.inherit.inherit_defer
inherit ${@'uki' if bb.utils.which(d.getVar('BBPATH'), 'classes-recipe/uki.bbclass') or bb.utils.which(d.getVar('BBPATH'), 'classes/uki.bbclass') else ''}

PKI_SIGNER_UKI_ROLE ?= "ssig_subca"
PKI_SIGNER_UKI_PCR_ROLE ?= "${PKI_SIGNER_PCR_ROLE}"
PKI_SIGNER_UKI_PHASES ?= "enter-initrd enter-initrd:leave-initrd enter-initrd:leave-initrd:sysinit enter-initrd:leave-initrd:sysinit:ready"
PKI_SIGNER_UKI_PCR_BANKS ?= "sha256"

PKI_SIGNER_UKI_STUB ?= "${DEPLOY_DIR_IMAGE}/linux${EFI_ARCH}.efi.stub"
PKI_SIGNER_UKI_KERNEL ?= "${DEPLOY_DIR_IMAGE}/${UKI_KERNEL_FILENAME}"
PKI_SIGNER_UKI_INITRDS ?= "${@pki_signer_uki_default_initrd(d)}"
PKI_SIGNER_UKI_OS_RELEASE ?= "${RECIPE_SYSROOT}${prefix}/lib/os-release"
PKI_SIGNER_UKI_DTB ?= "${@' '.join(os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), os.path.basename(t)) for t in (d.getVar('UKI_DEVICETREE') or '').split())}"
PKI_SIGNER_UKI_UNAME ?= "${@d.getVar('KERNEL_VERSION') or ''}"
PKI_SIGNER_UKI_SPLASH ?= ""
PKI_SIGNER_UKI_SBAT ?= ""
PKI_SIGNER_UKI_MICROCODE ?= ""

PKI_SIGNER_UKI_ROLES = "${PKI_SIGNER_UKI_ROLE} ${PKI_SIGNER_UKI_PCR_ROLE}"
PKI_SIGNER_ROLES += "${PKI_SIGNER_UKI_ROLES}"

PKI_SIGNER_UKI_ROLE[doc] = "Role whose key Authenticode-signs the UKI; its certificate must be in UEFI db."
PKI_SIGNER_UKI_PCR_ROLE[doc] = "tpm2-pcr: sign the UKI's PCR 11 policy into .pcrsig with the PCR key; empty: no policy."
PKI_SIGNER_UKI_PHASES[doc] = "Boot phases (systemd-measure's --phase) whose PCR 11 values the signed policy allows."
PKI_SIGNER_UKI_PCR_BANKS[doc] = "PCR banks the policy is signed for: sha256, sha384, sha512, sha1 (stubs 258 and later: sha256 only)."
PKI_SIGNER_UKI_STUB[doc] = "systemd-stub the UKI is built on (uki.bbclass: DEPLOY_DIR_IMAGE/linuxEFI_ARCH.efi.stub)."
PKI_SIGNER_UKI_KERNEL[doc] = "Kernel image of the UKI (uki.bbclass: DEPLOY_DIR_IMAGE/UKI_KERNEL_FILENAME)."
PKI_SIGNER_UKI_INITRDS[doc] = "Initrds of the UKI, concatenated (uki.bbclass: the INITRAMFS_IMAGE in DEPLOY_DIR_IMAGE)."
PKI_SIGNER_UKI_OS_RELEASE[doc] = "os-release of the UKI (uki.bbclass: RECIPE_SYSROOT/usr/lib/os-release)."
PKI_SIGNER_UKI_DTB[doc] = "Devicetree blob of the UKI (uki.bbclass: UKI_DEVICETREE in DEPLOY_DIR_IMAGE); at most one."
PKI_SIGNER_UKI_UNAME[doc] = "Kernel release for .uname (uki.bbclass: KERNEL_VERSION)."
PKI_SIGNER_UKI_SPLASH[doc] = "BMP splash image for .splash; empty: none."
PKI_SIGNER_UKI_SBAT[doc] = "SBAT CSV lines added to the stub's .sbat; empty: the stub's own."
PKI_SIGNER_UKI_MICROCODE[doc] = "Early microcode cpio for .ucode (systemd-stub 256 and later); empty: none."

def pki_signer_uki_default_initrd(d):
    """The initramfs uki.bbclass puts into the UKI: INITRAMFS_IMAGE-MACHINE.TYPE in DEPLOY_DIR_IMAGE."""
    image = d.getVar("INITRAMFS_IMAGE") or ""
    if not image:
        return ""
    fstype = (d.getVar("INITRAMFS_FSTYPES") or "cpio.gz").split()[0]
    return os.path.join(d.getVar("DEPLOY_DIR_IMAGE"), "%s-%s.%s" % (image, d.getVar("MACHINE"), fstype))

def pki_signer_uki_part_args(d):
    """pki-signer uki build's arguments for the parts of the UKI."""
    import shlex
    args = ["--stub", d.getVar("PKI_SIGNER_UKI_STUB"), "--linux", d.getVar("PKI_SIGNER_UKI_KERNEL"),
            "--os-release", d.getVar("PKI_SIGNER_UKI_OS_RELEASE"), "--cmdline", d.getVar("UKI_CMDLINE") or ""]
    for initrd in (d.getVar("PKI_SIGNER_UKI_INITRDS") or "").split():
        args += ["--initrd", initrd]
    for var, opt in (("PKI_SIGNER_UKI_DTB", "--dtb"), ("PKI_SIGNER_UKI_UNAME", "--uname"),
                     ("PKI_SIGNER_UKI_SPLASH", "--splash"), ("PKI_SIGNER_UKI_SBAT", "--sbat"),
                     ("PKI_SIGNER_UKI_MICROCODE", "--microcode")):
        value = (d.getVar(var) or "").strip()
        if value:
            args += [opt, value]
    return " ".join(shlex.quote(a) for a in args)

def pki_signer_uki_files(d):
    """The input files of the UKI, for the check before pki-signer runs: (what, path) pairs."""
    files = [("the systemd-boot stub (PKI_SIGNER_UKI_STUB; systemd-boot's do_deploy puts it there)",
              d.getVar("PKI_SIGNER_UKI_STUB")),
             ("the kernel (PKI_SIGNER_UKI_KERNEL, from UKI_KERNEL_FILENAME)", d.getVar("PKI_SIGNER_UKI_KERNEL")),
             ("os-release (PKI_SIGNER_UKI_OS_RELEASE)", d.getVar("PKI_SIGNER_UKI_OS_RELEASE"))]
    for initrd in (d.getVar("PKI_SIGNER_UKI_INITRDS") or "").split():
        files.append(("the initramfs (PKI_SIGNER_UKI_INITRDS, from INITRAMFS_IMAGE)", initrd))
    for var in ("PKI_SIGNER_UKI_DTB", "PKI_SIGNER_UKI_SPLASH", "PKI_SIGNER_UKI_SBAT", "PKI_SIGNER_UKI_MICROCODE"):
        if (d.getVar(var) or "").strip():
            files.append((var, d.getVar(var).strip()))
    return files

def pki_signer_uki_pcr_args(d):
    """pki-signer uki build's arguments for the PCR policy: its key, phases and banks."""
    import shlex
    role = d.getVar("PKI_SIGNER_UKI_PCR_ROLE") or ""
    if not role:
        return ""
    sign_role = d.getVar("PKI_SIGNER_UKI_ROLE")
    key = d.getVarFlag("PKI_SIGNER_KEY", role) or ""
    if key:
        pki_signer_check_uri(d, role, "KEY", key)
        args = ["--pcr-key", key]
    else:
        args = ["--pcr-role", role]
        # --dir is one option for both keys; the signing role's arguments have
        # it when that key comes from PKI_SIGNER_DIR too, or in release mode.
        if not (pki_signer_uses_dir(d, sign_role) or pki_signer_release(d)):
            args += ["--dir", d.getVar("PKI_SIGNER_DIR")]
    # --key-pass-file, too, is one option for both keys.
    passfile = d.getVarFlag("PKI_SIGNER_KEY_PASS_FILE", role) or ""
    if passfile and not d.getVarFlag("PKI_SIGNER_KEY_PASS_FILE", sign_role):
        args += ["--key-pass-file", passfile]
    for phase in (d.getVar("PKI_SIGNER_UKI_PHASES") or "").split():
        args += ["--phases", phase]
    banks = (d.getVar("PKI_SIGNER_UKI_PCR_BANKS") or "").split()
    if banks:
        args += ["--pcr-banks", ",".join(banks)]
    return " ".join(shlex.quote(a) for a in args)

def pki_signer_uki_check_inputs(d):
    """Stops the build before pki-signer runs when an input of the UKI is missing, naming the variable."""
    for what, path in pki_signer_uki_files(d):
        if not os.path.exists(path):
            bb.fatal("pki-signer-uki: %s does not exist: %s" % (path, what))
    config = d.getVar("UKI_CONFIG_FILE") or ""
    if config and os.path.exists(config):
        bb.fatal("pki-signer-uki: %s (UKI_CONFIG_FILE) is a ukify configuration, which pki-signer does not "
                 "read: set the PKI_SIGNER_UKI_* variables instead and remove it from SRC_URI" % config)

def pki_signer_uki_describe(d):
    """Which keys sign, with their fingerprints, for the task log."""
    role = d.getVar("PKI_SIGNER_UKI_ROLE")
    text = "Authenticode by %s (sha256 fingerprint %s)" % (role, pki_signer_fingerprint(d, role) or "from a token")
    pcr = d.getVar("PKI_SIGNER_UKI_PCR_ROLE")
    if pcr:
        text += ", PCR policy by %s (pkfp %s)" % (pcr, pki_signer_fingerprint(d, pcr) or "from a token")
    else:
        text += ", no PCR policy"
    return text

# OE-core's do_uki, with pki-signer in place of ukify: the same inputs and output.
python do_uki() {
    pki_signer_uki_check_inputs(d)
    bb.utils.mkdirhier(d.getVar("DEPLOY_DIR_IMAGE"))
    bb.build.exec_func("pki_signer_uki_build", d)
}
do_uki[doc] = "Builds the UKI with pki-signer: assembled, PCR 11 policy signed, Authenticode-signed"
do_uki[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

pki_signer_uki_build() {
    ${@pki_signer_pkcs11_exports(d)}
    bbnote "pki-signer: building ${UKI_FILENAME}: ${@pki_signer_uki_describe(d)}"
    ${PKI_SIGNER_BIN} uki build ${@pki_signer_uki_part_args(d)} -o "${DEPLOY_DIR_IMAGE}/${UKI_FILENAME}" \
        ${@pki_signer_key_args(d, d.getVar('PKI_SIGNER_UKI_ROLE'))} ${@pki_signer_uki_pcr_args(d)} \
        ${@pki_signer_plan_args(d)}
}
pki_signer_uki_build[doc] = "Builds, measures and signs DEPLOY_DIR_IMAGE/UKI_FILENAME with pki-signer uki build"
pki_signer_uki_build[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_uki_pcr_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_uki_describe[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

def pki_signer_uki_parse_checks(d):
    """What stops the parse, naming what to change."""
    if not bb.data.inherits_class("uki", d):
        bb.fatal("pki-signer-uki replaces the ukify step of OE-core's uki.bbclass, which walnascar and later "
                 "have; scarthgap and styhead have none: build the UKI in a task of your own and sign it with "
                 "pki-signer-efi (PKI_SIGNER_EFI_TASK, PKI_SIGNER_EFI_DIR)")
    if bb.data.inherits_class("pki-signer-efi", d) and d.getVar("PKI_SIGNER_EFI_TASK") == "do_uki":
        bb.fatal("pki-signer-uki signs the UKI itself: inherit pki-signer-uki or pki-signer-efi in %s, not both"
                 % d.getVar("PN"))
    if d.getVar("UKI_SB_KEY") or d.getVar("UKI_SB_CERT"):
        bb.fatal("pki-signer-uki signs the UKI with PKI_SIGNER_UKI_ROLE (%s), not with UKI_SB_KEY/UKI_SB_CERT: "
                 "unset them, or give that key as PKI_SIGNER_KEY[%s] and PKI_SIGNER_CERT[%s]"
                 % ((d.getVar("PKI_SIGNER_UKI_ROLE"),) * 3))
    pcr = d.getVar("PKI_SIGNER_UKI_PCR_ROLE") or ""
    if pcr and pcr != d.getVar("PKI_SIGNER_PCR_ROLE"):
        bb.fatal("PKI_SIGNER_UKI_PCR_ROLE is '%s': the PCR policy key's role is %s (empty: no PCR policy)"
                 % (pcr, d.getVar("PKI_SIGNER_PCR_ROLE")))
    if pcr and pki_signer_uses_dir(d, pcr) and not pki_signer_release(d) \
            and not bb.utils.to_boolean(d.getVar("PKI_SIGNER_UEFI")):
        bb.fatal("pki-signer-uki: the PCR key comes from PKI_SIGNER_DIR, and only PKI_SIGNER_UEFI = \"1\" "
                 "makes it there (pki init --uefi): set it, or PKI_SIGNER_KEY[%s] and PKI_SIGNER_CERT[%s]"
                 % (pcr, pcr))
    sign_role = d.getVar("PKI_SIGNER_UKI_ROLE")
    passes = [d.getVarFlag("PKI_SIGNER_KEY_PASS_FILE", r) for r in (sign_role, pcr) if r]
    if pcr and all(passes) and len(set(passes)) > 1:
        bb.fatal("PKI_SIGNER_KEY_PASS_FILE[%s] and PKI_SIGNER_KEY_PASS_FILE[%s] differ: pki-signer uki build "
                 "reads one password for both keys" % (sign_role, pcr))
    if len((d.getVar("PKI_SIGNER_UKI_DTB") or "").split()) > 1:
        bb.fatal("pki-signer-uki: PKI_SIGNER_UKI_DTB (from UKI_DEVICETREE) names %s: a UKI holds one .dtb"
                 % d.getVar("PKI_SIGNER_UKI_DTB"))

python () {
    pki_signer_uki_parse_checks(d)
    # do_uki signs: it waits for the PKI and the tool, its signature follows
    # both keys, and what it deployed goes into the signing plan.
    pki_signer_hook(d, "do_uki", None, "PKI_SIGNER_UKI_ROLES")
}
