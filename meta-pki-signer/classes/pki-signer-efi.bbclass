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
# With PKI_SIGNER_EFI_TASK = "do_compile" they are signed where they are built
# instead, in ${B}, by a task of their own (do_pki_signer_sign, after do_compile
# and before do_install, do_deploy and a kernel's do_sizecheck), so the packages, and so /boot in the
# rootfs, hold the signed files too. do_compile itself never waits for
# pki-signer-native. do_deploy then copies signed files: it does not sign them
# again, it only records its copies in the signing plan.
#
#   PKI_SIGNER_EFI_ROLE           role that signs; its certificate goes into UEFI db
#   PKI_SIGNER_EFI_FILES          files to sign, relative to PKI_SIGNER_EFI_DIR; symlinks
#                                 are followed, so every name of a file sees the signature
#   PKI_SIGNER_EFI_TASK           task whose output is signed (do_deploy; do_uki with uki.bbclass;
#                                 do_compile: the build tree, before do_install)
#   PKI_SIGNER_EFI_DIR            where that task leaves the files (do_compile: ${B}; a
#                                 kernel's ${B}/${KERNEL_OUTPUT_DIR})
#   PKI_SIGNER_EFI_KEEP_UNSIGNED  "1": also deploy FILE.unsigned, the file before signing
#   PKI_SIGNER_EFI_EXISTING       "replace" or "append": what happens to signatures already there

inherit pki-signer

PKI_SIGNER_EFI_ROLE ?= "ssig_subca"
PKI_SIGNER_EFI_TASK ?= "${@'do_uki' if bb.data.inherits_class('uki', d) else 'do_deploy'}"
PKI_SIGNER_EFI_DIR ?= "${@pki_signer_efi_default_dir(d)}"
PKI_SIGNER_EFI_FILES ?= "${@pki_signer_efi_default_files(d)}"
PKI_SIGNER_EFI_KEEP_UNSIGNED ?= "0"
PKI_SIGNER_EFI_EXISTING ?= "replace"

PKI_SIGNER_ROLES += "${PKI_SIGNER_EFI_ROLE}"

def pki_signer_efi_default_dir(d):
    task = d.getVar("PKI_SIGNER_EFI_TASK")
    if task == "do_uki":
        return d.getVar("DEPLOY_DIR_IMAGE")
    if task == "do_compile":
        # kernel.bbclass builds the image in KERNEL_OUTPUT_DIR (arch/${ARCH}/boot), relative to B.
        if bb.data.inherits_class("kernel", d):
            return os.path.join(d.getVar("B"), d.getVar("KERNEL_OUTPUT_DIR"))
        return d.getVar("B")
    return d.getVar("DEPLOYDIR")

def pki_signer_efi_default_files(d):
    """What a recipe deploys that boots: the UKI, or the kernel image as kernel.bbclass names it."""
    if d.getVar("PKI_SIGNER_EFI_TASK") == "do_uki":
        return d.getVar("UKI_FILENAME") or ""
    if not bb.data.inherits_class("kernel", d):
        return ""
    if d.getVar("PKI_SIGNER_EFI_TASK") == "do_compile":
        # The name make gives it; do_install and do_deploy copy it from there.
        return d.getVar("KERNEL_IMAGETYPE")
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
    pristine="${@pki_signer_efi_pristine(d)}"
    ${@pki_signer_pkcs11_exports(d)}
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
        if [ -n "$pristine" ]; then
            # The build tree outlives this task: after a key change it runs
            # again without do_compile and finds the file it signed last time.
            # It starts again from what do_compile made, so "append" does not
            # stack signatures of ours.
            kept="$pristine/$(printf '%s' "$name" | tr / %)"
            if [ -e "$kept.signed" ] && [ "$(sha256sum < "$file")" = "$(cat "$kept.signed")" ]; then
                cp "$kept" "$file"
            else
                mkdir -p "$pristine"
                cp "$file" "$kept"
            fi
        fi
        if [ "${PKI_SIGNER_EFI_KEEP_UNSIGNED}" = "1" ]; then
            cp --remove-destination "$file" "$dir/$name.unsigned"
        fi
        bbnote "pki-signer: signing $name with ${PKI_SIGNER_EFI_ROLE} (sha256 fingerprint ${@pki_signer_fingerprint(d, d.getVar('PKI_SIGNER_EFI_ROLE'))})"
        ${PKI_SIGNER_BIN} pe sign "$file" --in-place --${PKI_SIGNER_EFI_EXISTING} \
            ${@pki_signer_key_args(d, d.getVar('PKI_SIGNER_EFI_ROLE'))} ${@pki_signer_plan_args(d)}
        if [ -n "$pristine" ]; then
            sha256sum < "$file" > "$kept.signed"
        fi
    done
}
pki_signer_sign_efi[doc] = "Signs PKI_SIGNER_EFI_FILES in PKI_SIGNER_EFI_DIR; a postfunc of PKI_SIGNER_EFI_TASK, or do_pki_signer_sign"
pki_signer_sign_efi[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

def pki_signer_efi_pristine(d):
    """Where signing at do_compile keeps the unsigned files ("" otherwise)."""
    if d.getVar("PKI_SIGNER_EFI_TASK") != "do_compile":
        return ""
    return os.path.join(d.getVar("WORKDIR"), "pki-signer-unsigned")

# PKI_SIGNER_EFI_TASK = "do_compile": a task of its own, so that the tool is a
# dependency of this task only and do_compile's signature has nothing of
# pki-signer in it.
do_pki_signer_sign() {
    pki_signer_sign_efi
}
do_pki_signer_sign[doc] = "Signs the EFI binaries do_compile made in the build tree (PKI_SIGNER_EFI_TASK = do_compile)"
do_pki_signer_sign[dirs] = "${B}"
do_pki_signer_sign[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

python pki_signer_efi_record() {
    # do_pki_signer_sign signed the build tree, which the plan cannot name:
    # rm_work removes it, and pki-signer resign re-signs what is deployed. The
    # copies this task deploys are recorded instead, found by their content.
    import hashlib, json
    signed = pki_signer_plan_work(d, "do_pki_signer_sign")
    work = pki_signer_plan_work(d)
    if not signed or not work or not os.path.exists(signed):
        return
    records = pki_signer_plan_read(signed)
    bysha = {}
    for r in records:
        bysha.setdefault(r.get("sha256_after", "").lower(), r)
    # Deploy directories also hold large files (module tarballs): hash only
    # files of the size of a signed one.
    outputs = [r.get("output_abs") or "" for r in records]
    sizes = {os.path.getsize(o) for o in outputs} if all(os.path.isfile(o) for o in outputs) else None
    fragdir, pairs = pki_signer_plan_dirs(d, (d.getVar("BB_RUNTASK") or "").replace("_setscene", ""))
    found, lines = set(), []
    for src, _ in pairs[:-1]:
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(x for x in dirs if os.path.join(root, x) != fragdir)
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                if sizes is not None and os.path.getsize(path) not in sizes:
                    continue
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                r = bysha.get(h.hexdigest())
                if r is None:
                    continue
                found.add(h.hexdigest())
                r = dict(r, artifact=path, artifact_abs=path, output=path, output_abs=path)
                lines.append(json.dumps(r, sort_keys=True))
    for sha, r in sorted(bysha.items()):
        if sha not in found:
            bb.warn("pki-signer: %s deploys no copy of %s, which do_pki_signer_sign signed: the signing plan "
                    "has no record of it" % (d.getVar("BB_RUNTASK"), r.get("output_abs") or r.get("output")))
    if lines:
        bb.utils.mkdirhier(os.path.dirname(work))
        with open(work, "a") as f:
            f.write("".join(l + "\n" for l in lines))
}
pki_signer_efi_record[doc] = "Records in the signing plan the deployed copies of what do_pki_signer_sign signed"
pki_signer_efi_record[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE} BB_RUNTASK"
# Like the plan's own functions, it does not change what is signed.
pki_signer_efi_record[vardepvalue] = "pki_signer_efi_record"

def pki_signer_efi_at_compile(d):
    if bb.data.inherits_class("kernel", d) and d.getVar("INITRAMFS_IMAGE") and d.getVar("INITRAMFS_IMAGE_BUNDLE") == "1":
        # do_bundle_initramfs builds the bundle after do_install, and kernel.bbclass
        # installs no image into /boot with a bundle: only do_deploy can sign it.
        bb.fatal("pki-signer-efi: PKI_SIGNER_EFI_TASK = \"do_compile\" cannot sign the initramfs bundle "
                 "(INITRAMFS_IMAGE_BUNDLE = \"1\"), which is built after do_install: leave PKI_SIGNER_EFI_TASK at do_deploy")
    deploy = bool(d.getVarFlag("do_deploy", "task"))
    before = ["do_install"] + (["do_deploy"] if deploy else [])
    # kernel.bbclass's do_sizecheck (after do_compile, before do_install) checks
    # KERNEL_IMAGE_MAXSIZE against the image in the build tree: the signed one.
    if d.getVarFlag("do_sizecheck", "task"):
        before.append("do_sizecheck")
    bb.build.addtask("do_pki_signer_sign", " ".join(before), "do_compile", d)
    pki_signer_sign_hook(d, "do_pki_signer_sign", "PKI_SIGNER_EFI_ROLE")
    if deploy:
        pki_signer_plan_hook(d, "do_deploy", "pki_signer_efi_record")

python () {
    task = d.getVar("PKI_SIGNER_EFI_TASK")
    if task == "do_uki" and not bb.data.inherits_class("uki", d):
        # OE-core has uki.bbclass from walnascar (5.2) on; scarthgap and styhead have none.
        bb.fatal("pki-signer-efi: PKI_SIGNER_EFI_TASK is do_uki, which OE-core's uki.bbclass adds (walnascar and "
                 "later): inherit uki before pki-signer-efi, or on scarthgap/styhead sign the UKI your own task "
                 "deploys with PKI_SIGNER_EFI_TASK and PKI_SIGNER_EFI_DIR")
    if task == "do_compile":
        pki_signer_efi_at_compile(d)
    else:
        pki_signer_hook(d, task, "pki_signer_sign_efi", "PKI_SIGNER_EFI_ROLE")
}
