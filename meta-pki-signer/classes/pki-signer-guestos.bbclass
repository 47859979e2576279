# pki-signer-guestos.bbclass: turns an image into a signed GuestOS, as GyroidOS
# (trust|me) loads it: NAME-VERSION/ with the image files, and NAME-VERSION.conf
# with their sizes and hashes, signed into NAME-VERSION.sig + NAME-VERSION.cert.
#
#   inherit pki-signer-guestos
#   IMAGE_FSTYPES += "squashfs"
#   PKI_SIGNER_GUESTOS_CONF_TEMPLATE = "${THISDIR}/files/myguestos.conf"
#
# Runs in IMAGE_POSTPROCESS_COMMAND, so the signed GuestOS is part of the image's
# deploy output (DEPLOY_DIR_IMAGE/PKI_SIGNER_GUESTOS_SUBDIR) and of its sstate.
#
#   PKI_SIGNER_GUESTOS_ROLE           role that signs (GyroidOS: ssig_cml)
#   PKI_SIGNER_GUESTOS_NAME/_VERSION  NAME and VERSION above
#   PKI_SIGNER_GUESTOS_CONF_TEMPLATE  GuestOS config (protobuf text) whose mounts name the images
#   PKI_SIGNER_GUESTOS_IMAGES         SRC:DEST pairs: SRC in IMGDEPLOYDIR becomes NAME-VERSION/DEST
#   PKI_SIGNER_GUESTOS_SUBDIR         directory of the GuestOS in the image's deploy output

inherit pki-signer

PKI_SIGNER_GUESTOS_ROLE ?= "ssig_cml"
PKI_SIGNER_GUESTOS_NAME ?= "${PN}os"
PKI_SIGNER_GUESTOS_VERSION ?= "1"
PKI_SIGNER_GUESTOS_CONF_TEMPLATE ?= ""
PKI_SIGNER_GUESTOS_IMAGES ?= "${IMAGE_LINK_NAME}.squashfs:root.img"
PKI_SIGNER_GUESTOS_SUBDIR ?= "guestos"

PKI_SIGNER_ROLES += "${PKI_SIGNER_GUESTOS_ROLE}"

pki_signer_guestos_sign() {
    if [ -z "${PKI_SIGNER_GUESTOS_CONF_TEMPLATE}" ]; then
        bbfatal "pki-signer-guestos: set PKI_SIGNER_GUESTOS_CONF_TEMPLATE to the GuestOS config of ${PN}"
    fi
    ${@pki_signer_pkcs11_exports(d)}
    out="${IMGDEPLOYDIR}/${PKI_SIGNER_GUESTOS_SUBDIR}"
    base="${PKI_SIGNER_GUESTOS_NAME}-${PKI_SIGNER_GUESTOS_VERSION}"
    rm -rf "$out/$base" "$out/$base.conf" "$out/$base.sig" "$out/$base.cert"
    mkdir -p "$out/$base"
    for pair in ${PKI_SIGNER_GUESTOS_IMAGES}; do
        src="${pair%%:*}"
        dest="${pair#*:}"
        if [ ! -e "${IMGDEPLOYDIR}/$src" ]; then
            bbfatal "pki-signer-guestos: ${IMGDEPLOYDIR}/$src does not exist (PKI_SIGNER_GUESTOS_IMAGES; is its type in IMAGE_FSTYPES?)"
        fi
        cp -L "${IMGDEPLOYDIR}/$src" "$out/$base/$dest"
    done
    cp "${PKI_SIGNER_GUESTOS_CONF_TEMPLATE}" "$out/$base.conf"
    bbnote "pki-signer: signing GuestOS $base with ${PKI_SIGNER_GUESTOS_ROLE} (sha256 fingerprint ${@pki_signer_fingerprint(d, d.getVar('PKI_SIGNER_GUESTOS_ROLE'))})"
    ${PKI_SIGNER_BIN} guestos sign "$out/$base.conf" --images "$out/$base" \
        ${@pki_signer_key_args(d, d.getVar('PKI_SIGNER_GUESTOS_ROLE'))} ${@pki_signer_plan_args(d)}
}
pki_signer_guestos_sign[doc] = "Fills the image hashes into the GuestOS config and signs it; runs in IMAGE_POSTPROCESS_COMMAND"
pki_signer_guestos_sign[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

IMAGE_POSTPROCESS_COMMAND += "pki_signer_guestos_sign"

python () {
    pki_signer_hook(d, "do_image_complete", None, "PKI_SIGNER_GUESTOS_ROLE")
    # The template's content, not its path, belongs in the signature.
    template = d.getVar("PKI_SIGNER_GUESTOS_CONF_TEMPLATE")
    if template:
        d.appendVarFlag("do_image_complete", "file-checksums", " %s:%s" % (template, os.path.exists(template)))
}
