# pki-signer.bbclass: the development PKI and the key settings shared by the
# signing classes (pki-signer-efi, pki-signer-guestos). Inherit those, not this.
#
# Settings (local.conf or distro conf; every one has a ?= default):
#
#   PKI_SIGNER_DIR       where the PKI lives; created on the first build if absent
#   PKI_SIGNER_PROFILE   profile JSON for `pki init` (organisation, key types, roles)
#   PKI_SIGNER_KEY_TYPE  key type of the generated non-UEFI roles, e.g. "ec:secp384r1"
#   PKI_SIGNER_UEFI      "1": also generate PK/KEK/DB and the signature lists
#   PKI_SIGNER_PLAN      signing plan that records each signature for `pki-signer resign`
#
# Production or HSM keys replace one role at a time, as varflags named after the role:
#
#   PKI_SIGNER_KEY[ssig_subca]  = "pkcs11:token=release;object=db-signer;pin-source=file:/run/pin"
#   PKI_SIGNER_CERT[ssig_subca] = "/srv/release/db-signer.pem"
#   PKI_SIGNER_KEY[ssig_cml]  = "/srv/release/cml.key"
#   PKI_SIGNER_CERT[ssig_cml] = "/srv/release/cml.pem"
#   PKI_SIGNER_KEY_PASS_FILE[ssig_cml] = "/run/secrets/cml.pass"   (an encrypted key file)
#
# A role without a PKI_SIGNER_KEY flag is signed with PKI_SIGNER_DIR's key of that role.
#
# Task signatures carry the content of the signing certificates, never their
# paths: a new key re-signs, and an unchanged key, wherever it lives, reuses sstate.

PKI_SIGNER_DIR ?= "${TOPDIR}/pki"
PKI_SIGNER_PROFILE ?= ""
PKI_SIGNER_KEY_TYPE ?= ""
PKI_SIGNER_UEFI ?= "1"
# What every signing task signed, for `pki-signer resign`; empty disables it.
PKI_SIGNER_PLAN ?= "${DEPLOY_DIR_IMAGE}/signing-plan.json"

# The tool: built by this layer, or any pki-signer on PATH with PKI_SIGNER_DEPENDS = "".
PKI_SIGNER_BIN ?= "pki-signer"
PKI_SIGNER_DEPENDS ?= "pki-signer-native"
DEPENDS:append = " ${PKI_SIGNER_DEPENDS}"

# Roles this recipe signs with; the signing classes add theirs.
PKI_SIGNER_ROLES ?= ""

PKI_SIGNER_DIR[doc] = "Directory of the development PKI; pki-signer creates it on the first build if it is absent."
PKI_SIGNER_KEY[doc] = "Per-role key override, as a varflag named after the role: a key file or a pkcs11: URI."
PKI_SIGNER_CERT[doc] = "Per-role certificate for a PKI_SIGNER_KEY override, as a varflag named after the role."
PKI_SIGNER_PLAN[doc] = "Signing plan file that records every signature, for release engineers' pki-signer resign."

def pki_signer_is_uri(value):
    return value.startswith("pkcs11:")

def pki_signer_check_uri(d, role, what, value):
    # A PIN in the URI would land in argv, the task log and the task signature.
    if pki_signer_is_uri(value) and "pin-value=" in value:
        bb.fatal("PKI_SIGNER_%s[%s] carries pin-value=: put the PIN in a file and use pin-source=file:... instead" % (what, role))

def pki_signer_cert(d, role):
    """The certificate a role signs with: a file path or a pkcs11: URI."""
    import json
    cert = d.getVarFlag("PKI_SIGNER_CERT", role) or ""
    if cert:
        pki_signer_check_uri(d, role, "CERT", cert)
        return cert
    if d.getVarFlag("PKI_SIGNER_KEY", role):
        bb.fatal("PKI_SIGNER_KEY[%s] is set: set PKI_SIGNER_CERT[%s] to its certificate too" % (role, role))
    pkidir = d.getVar("PKI_SIGNER_DIR")
    # pki.json names each role's files; a GyroidOS directory without it uses these names.
    name = role + (".crt" if role in ("PK", "KEK", "DB") else ".cert")
    try:
        with open(os.path.join(pkidir, "pki.json")) as f:
            for entry in json.load(f).get("roles", []):
                if entry.get("role") == role and entry.get("cert"):
                    name = entry["cert"]
    except (OSError, ValueError, AttributeError):
        pass
    return os.path.join(pkidir, name)

def pki_signer_uses_dir(d, role):
    return not d.getVarFlag("PKI_SIGNER_KEY", role)

def pki_signer_key_args(d, role):
    """pki-signer arguments that select the key and certificate of a role."""
    import shlex
    if not role:
        bb.fatal("pki-signer: no signing role set")
    key = d.getVarFlag("PKI_SIGNER_KEY", role) or ""
    if not key:
        return "--role %s --dir %s" % (shlex.quote(role), shlex.quote(d.getVar("PKI_SIGNER_DIR")))
    pki_signer_check_uri(d, role, "KEY", key)
    args = ["--key", key, "--cert", pki_signer_cert(d, role)]
    passfile = d.getVarFlag("PKI_SIGNER_KEY_PASS_FILE", role) or ""
    if passfile:
        args += ["--key-pass-file", passfile]
    return " ".join(shlex.quote(a) for a in args)

def pki_signer_cert_checksums(d, roles):
    """file-checksums entries for the roles' certificates.

    bitbake hashes these files when it computes task hashes, so the task
    signature follows the certificates' content and not their paths. A
    certificate that is missing at parse time (first build) is listed as
    absent; bitbake re-parses the recipe once it appears.
    """
    entries = []
    for role in sorted(set(roles.split())):
        cert = pki_signer_cert(d, role)
        if pki_signer_is_uri(cert):
            continue
        entries.append("%s:%s" % (cert, os.path.exists(cert)))
    return " ".join(entries)

def pki_signer_cert_uris(d, roles):
    """Certificates that live in a token: their URIs stand in for their content in signatures."""
    ids = []
    for role in sorted(set(roles.split())):
        cert = pki_signer_cert(d, role)
        if pki_signer_is_uri(cert):
            ids.append("%s=%s" % (role, cert))
    return " ".join(ids)

def pki_signer_fingerprint(d, role):
    """SHA-256 of the DER of a role's certificate, as `pki-signer pki show` prints it ("" if absent)."""
    import base64, hashlib
    cert = pki_signer_cert(d, role)
    if pki_signer_is_uri(cert):
        return ""
    try:
        with open(cert) as f:
            pem = f.read()
    except OSError:
        return ""
    begin = "-----BEGIN CERTIFICATE-----"
    start = pem.find(begin)
    end = pem.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        return ""
    der = base64.b64decode("".join(pem[start + len(begin):end].split()))
    return hashlib.sha256(der).hexdigest()

def pki_signer_init_roles(d):
    return " ".join(r for r in sorted(set((d.getVar("PKI_SIGNER_ROLES") or "").split())) if pki_signer_uses_dir(d, r))

def pki_signer_init_args(d):
    import shlex
    args = ["--dir", d.getVar("PKI_SIGNER_DIR")]
    if d.getVar("PKI_SIGNER_PROFILE"):
        args += ["--profile", d.getVar("PKI_SIGNER_PROFILE")]
    if d.getVar("PKI_SIGNER_KEY_TYPE"):
        args += ["--key-type", d.getVar("PKI_SIGNER_KEY_TYPE")]
    if bb.utils.to_boolean(d.getVar("PKI_SIGNER_UEFI")):
        args.append("--uefi")
    return " ".join(shlex.quote(a) for a in args)

def pki_signer_plan_args(d):
    import shlex
    plan = d.getVar("PKI_SIGNER_PLAN") or ""
    if plan:
        return "--plan " + shlex.quote(plan)
    return ""

# Paths and switches that do not change what a signature looks like stay out
# of task signatures; the certificates' content is in them via file-checksums.
PKI_SIGNER_SIGNATURE_EXCLUDE = "PKI_SIGNER_DIR PKI_SIGNER_BIN PKI_SIGNER_PLAN \
                                PKI_SIGNER_PROFILE PKI_SIGNER_KEY_TYPE PKI_SIGNER_UEFI"
pki_signer_cert[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_key_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_init_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_plan_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

PKI_SIGNER_INIT_ROLES = "${@pki_signer_init_roles(d)}"
PKI_SIGNER_CERT_URIS = "${@pki_signer_cert_uris(d, d.getVar('PKI_SIGNER_ROLES'))}"
PKI_SIGNER_CERT_URIS[vardepvalue] = "${PKI_SIGNER_CERT_URIS}"

# Creates the PKI if it is absent. pki-signer holds PKI_SIGNER_DIR.lock while it
# checks and publishes the directory with one rename, so any number of recipes
# may run this at once and they all end up with the same PKI.
do_pki_signer_init() {
    if [ -z "${PKI_SIGNER_INIT_ROLES}" ]; then
        bbnote "pki-signer: every role has a PKI_SIGNER_KEY override; no development PKI needed"
    else
        ${PKI_SIGNER_BIN} pki init ${@pki_signer_init_args(d)}
    fi
}
do_pki_signer_init[doc] = "Creates the development PKI in PKI_SIGNER_DIR unless it is already there"
do_pki_signer_init[dirs] = "${T}"
do_pki_signer_init[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
do_pki_signer_init[file-checksums] = "${@pki_signer_cert_checksums(d, d.getVar('PKI_SIGNER_INIT_ROLES'))}"
addtask pki_signer_init after do_prepare_recipe_sysroot

python () {
    # Not an sstate task: the PKI is shared build state. Its stamp follows the
    # certificates' content, so it re-runs when the PKI changes. While a
    # certificate is missing (first build, deleted PKI) it must always run, and
    # so must every task after it: nostamp taints their hashes, so nothing
    # signed with a vanished key is restored from sstate.
    for role in (d.getVar("PKI_SIGNER_INIT_ROLES") or "").split():
        cert = pki_signer_cert(d, role)
        if not os.path.exists(cert):
            d.setVarFlag("do_pki_signer_init", "nostamp", "1")
            break
}

# Makes a task sign: FUNC (if given) runs after the task's own work and before
# sstate captures the output, the task waits for the PKI, and its signature
# follows the certificates of the roles in ROLES_VAR.
def pki_signer_hook(d, task, func, roles_var):
    post = (d.getVarFlag(task, "postfuncs") or "").split()
    if func and func not in post:
        # sstate.bbclass appends sstate_task_postfunc; whichever class runs
        # first, the signature must be in the output sstate packages.
        at = post.index("sstate_task_postfunc") if "sstate_task_postfunc" in post else len(post)
        post.insert(at, func)
        d.setVarFlag(task, "postfuncs", " ".join(post))
    d.appendVarFlag(task, "file-checksums", " ${@pki_signer_cert_checksums(d, d.getVar('%s'))}" % roles_var)
    d.appendVarFlag(task, "vardeps", " %s PKI_SIGNER_CERT_URIS" % roles_var)
    bb.build.addtask("do_pki_signer_init", task, None, d)
