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
#   PKI_SIGNER_MODE      "development" (default) or "release": release builds export
#                        PKI_SIGNER_RELEASE=1 to every pki-signer call, never generate a
#                        development PKI, and fail at parse time when a role has no
#                        production key (PKI_SIGNER_KEY/PKI_SIGNER_CERT, or a PKI_SIGNER_DIR
#                        that is not a development PKI)
#
# Production or HSM keys replace one role at a time, as varflags named after the role:
#
#   PKI_SIGNER_KEY[ssig_subca]  = "pkcs11:token=release;object=db-signer?pin-source=file:/run/pin"
#   PKI_SIGNER_CERT[ssig_subca] = "/srv/release/db-signer.pem"
#   PKI_SIGNER_KEY[ssig_cml]  = "/srv/release/cml.key"
#   PKI_SIGNER_CERT[ssig_cml] = "/srv/release/cml.pem"
#   PKI_SIGNER_KEY_PASS_FILE[ssig_cml] = "/run/secrets/cml.pass"   (an encrypted key file)
#
# A role without a PKI_SIGNER_KEY flag is signed with PKI_SIGNER_DIR's key of that role.
#
# A pkcs11: key needs its module, and often an environment for it; both reach
# the signing functions only, not the other tasks and not any task signature:
#
#   PKI_SIGNER_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
#   PKI_SIGNER_PKCS11_ENV    = "SOFTHSM2_CONF=/srv/softhsm2.conf"   (VAR=VALUE pairs)
#
# Task signatures carry the content of the signing certificates, never their
# paths: a new key re-signs, and an unchanged key, wherever it lives, reuses sstate.

PKI_SIGNER_DIR ?= "${TOPDIR}/pki"
PKI_SIGNER_PROFILE ?= ""
PKI_SIGNER_KEY_TYPE ?= ""
PKI_SIGNER_UEFI ?= "1"
# What every signing task signed, for `pki-signer resign`; empty disables it.
PKI_SIGNER_PLAN ?= "${DEPLOY_DIR_IMAGE}/signing-plan.json"
# "release": never sign with a development key (see pki-signer's README, "Release mode").
PKI_SIGNER_MODE ?= "development"
# Air-gapped release signing: with a keys.json naming the production
# certificates (no keys are read), images write the request for every file of
# the plan next to them; `pki-signer offline sign` and `complete` do the rest.
PKI_SIGNER_OFFLINE_KEYS ?= ""
PKI_SIGNER_OFFLINE_REQUEST ?= "${DEPLOY_DIR_IMAGE}/signing-request.json"

# The tool: built by this layer, or any pki-signer on PATH with PKI_SIGNER_DEPENDS = "".
# A dependency of the signing tasks only ([depends], which also makes OE-core's
# staging.bbclass put it into the recipe's native sysroot for them), never of
# DEPENDS: a kernel's configure and compile must not wait for Rust.
PKI_SIGNER_BIN ?= "pki-signer"
PKI_SIGNER_DEPENDS ?= "pki-signer-native"
PKI_SIGNER_TASK_DEPENDS = "${@' '.join(p + ':do_populate_sysroot' for p in (d.getVar('PKI_SIGNER_DEPENDS') or '').split())}"

# Roles this recipe signs with; the signing classes add theirs.
PKI_SIGNER_ROLES ?= ""

# The PKCS#11 module of pkcs11: keys whose URI has no module-path, and the
# environment the module needs (VAR=VALUE pairs, e.g. SOFTHSM2_CONF=...).
# Exported by the signing functions themselves: a global export would go into
# the environment, and so the signature, of every shell task of every recipe.
PKI_SIGNER_PKCS11_MODULE ?= ""
PKI_SIGNER_PKCS11_ENV ?= ""

PKI_SIGNER_DIR[doc] = "Directory of the development PKI; pki-signer creates it on the first build if it is absent."
PKI_SIGNER_KEY[doc] = "Per-role key override, as a varflag named after the role: a key file or a pkcs11: URI."
PKI_SIGNER_CERT[doc] = "Per-role certificate for a PKI_SIGNER_KEY override, as a varflag named after the role."
PKI_SIGNER_PLAN[doc] = "Signing plan file that records every signature, for release engineers' pki-signer resign."
PKI_SIGNER_OFFLINE_KEYS[doc] = "keys.json with the production certificates: image recipes then write PKI_SIGNER_OFFLINE_REQUEST from the plan (do_pki_signer_request)."
PKI_SIGNER_OFFLINE_REQUEST[doc] = "Where do_pki_signer_request writes the offline signing request."
PKI_SIGNER_MODE[doc] = "development or release: release refuses development keys, at parse time and in pki-signer (PKI_SIGNER_RELEASE=1)."
PKI_SIGNER_PKCS11_MODULE[doc] = "PKCS#11 module for pkcs11: keys whose URI has no module-path; exported in the signing functions only."
PKI_SIGNER_PKCS11_ENV[doc] = "VAR=VALUE pairs the PKCS#11 module needs (e.g. SOFTHSM2_CONF=/srv/softhsm2.conf); exported in the signing functions only."

def pki_signer_release(d):
    mode = d.getVar("PKI_SIGNER_MODE") or "development"
    if mode not in ("development", "release"):
        bb.fatal("PKI_SIGNER_MODE is '%s': use development or release" % mode)
    return mode == "release"

def pki_signer_dev_dir(path):
    """Why directory PATH is a development PKI, or "" (as pki-signer's release mode decides)."""
    import json
    manifest = os.path.join(path, "pki.json")
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                dev = json.load(f).get("development") is True
        except (OSError, ValueError, AttributeError):
            return "%s cannot be read" % manifest
        return '%s says "development": true' % manifest if dev else ""
    for root in ("ssig_rootca", "gen_rootca"):
        if os.path.isfile(os.path.join(path, root + ".key")) and os.path.isfile(os.path.join(path, root + ".cert")):
            return "%s is a GyroidOS gen_dev_certs.sh directory (root CA key %s.key beside the signing keys)" % (path, root)
    return ""

def pki_signer_release_check(d):
    """Release mode, at parse time: every role of the recipe has a production key."""
    pkidir = d.getVar("PKI_SIGNER_DIR")
    for role in sorted(set((d.getVar("PKI_SIGNER_ROLES") or "").split())):
        key = d.getVarFlag("PKI_SIGNER_KEY", role) or ""
        if not key:
            why = pki_signer_dev_dir(pkidir) if os.path.isdir(pkidir) else "%s does not exist" % pkidir
            cert = pki_signer_cert(d, role)
            if not why and not os.path.exists(cert):
                why = "%s does not exist" % cert
            if why:
                bb.fatal("PKI_SIGNER_MODE = \"release\": role %s has no production key (it would use PKI_SIGNER_DIR: %s); "
                         "set PKI_SIGNER_KEY[%s] and PKI_SIGNER_CERT[%s], or PKI_SIGNER_DIR to a production PKI"
                         % (role, why, role, role))
            continue
        cert = pki_signer_cert(d, role)
        for var, path in (("PKI_SIGNER_KEY", key), ("PKI_SIGNER_CERT", cert)):
            if pki_signer_is_uri(path):
                continue
            if not os.path.exists(path):
                bb.fatal("PKI_SIGNER_MODE = \"release\": %s[%s] = \"%s\" does not exist; set %s[%s] to the production file"
                         % (var, role, path, var, role))
            why = pki_signer_dev_dir(os.path.dirname(os.path.abspath(path)))
            if why:
                bb.fatal("PKI_SIGNER_MODE = \"release\": %s[%s] = \"%s\" is in a development PKI (%s); set %s[%s] to a production key"
                         % (var, role, path, why, var, role))

def pki_signer_is_uri(value):
    return value.startswith("pkcs11:")

def pki_signer_check_uri(d, role, what, value):
    if not pki_signer_is_uri(value):
        return
    # A PIN in the URI would land in argv, the task log and the task signature.
    if "pin-value=" in value:
        bb.fatal("PKI_SIGNER_%s[%s] carries pin-value=: put the PIN in a file and use pin-source=file:... instead" % (what, role))
    # pki-signer refuses these in the path part too, but only once the task runs.
    path = value.split("?", 1)[0]
    for attr in ("pin-source", "module-path"):
        if ";%s=" % attr in path or ":%s=" % attr in path:
            bb.fatal("PKI_SIGNER_%s[%s]: %s is a query attribute of a pkcs11: URI; write it after '?', "
                     "e.g. pkcs11:token=T;object=O?%s=..." % (what, role, attr, attr))

def pki_signer_pkcs11_env(d):
    """The environment of the signing functions' PKCS#11 module: [(name, value)]."""
    import re
    env = []
    module = d.getVar("PKI_SIGNER_PKCS11_MODULE") or ""
    if module:
        env.append(("PKI_SIGNER_PKCS11_MODULE", module))
    for pair in (d.getVar("PKI_SIGNER_PKCS11_ENV") or "").split():
        name, eq, value = pair.partition("=")
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            bb.fatal("PKI_SIGNER_PKCS11_ENV: '%s' is not VAR=VALUE" % name)
        # Exported values are written into the task's run script in T.
        if name == "PKI_SIGNER_PKCS11_PIN":
            bb.fatal("PKI_SIGNER_PKCS11_ENV sets PKI_SIGNER_PKCS11_PIN: put the PIN in a file and use "
                     "?pin-source=file:... in the pkcs11: URI instead")
        env.append((name, value))
    return env

def pki_signer_pkcs11_exports(d):
    """Shell export lines of pki_signer_pkcs11_env, for the signing functions."""
    import shlex
    return "\n".join("export %s=%s" % (name, shlex.quote(value)) for name, value in pki_signer_pkcs11_env(d))

# The TPM PCR policy key (pki-signer-uki): a key without a certificate. Its
# public key (PEM) stands in for the certificate wherever a role has one:
# PKI_SIGNER_CERT[tpm2-pcr], the task signatures, the fingerprint in the log.
PKI_SIGNER_PCR_ROLE = "tpm2-pcr"

def pki_signer_cert(d, role):
    """The certificate a role signs with (the PCR role: its public key): a file path or a pkcs11: URI."""
    import json
    pcr = role == d.getVar("PKI_SIGNER_PCR_ROLE")
    cert = d.getVarFlag("PKI_SIGNER_CERT", role) or ""
    if cert:
        pki_signer_check_uri(d, role, "CERT", cert)
        return cert
    if d.getVarFlag("PKI_SIGNER_KEY", role):
        bb.fatal("PKI_SIGNER_KEY[%s] is set: set PKI_SIGNER_CERT[%s] to its %s too"
                 % (role, role, "public key (PEM)" if pcr else "certificate"))
    pkidir = d.getVar("PKI_SIGNER_DIR")
    # pki.json names each role's files; a GyroidOS directory without it uses these names.
    if pcr:
        name = "tpm2-pcr-public.pem"
    else:
        name = role + (".crt" if role in ("PK", "KEK", "DB") else ".cert")
    try:
        with open(os.path.join(pkidir, "pki.json")) as f:
            manifest = json.load(f)
        for entry in manifest.get("roles", []):
            if entry.get("role") == role and entry.get("cert"):
                name = entry["cert"]
        for entry in manifest.get("files", []) if pcr else []:
            if entry.get("kind") == "tpm-pcr-public-key" and entry.get("path"):
                name = entry["path"]
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
    if pki_signer_release(d):
        # pki-signer compares the key with the development PKI's keys, if there is one.
        args += ["--dir", d.getVar("PKI_SIGNER_DIR")]
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
    """SHA-256 of the DER of a role's certificate, as `pki-signer pki show` prints it; of the PCR
    role's public key, its pkfp, as .pcrsig names it ("" if absent)."""
    import base64, hashlib
    cert = pki_signer_cert(d, role)
    if pki_signer_is_uri(cert):
        return ""
    try:
        with open(cert) as f:
            pem = f.read()
    except OSError:
        return ""
    label = "PUBLIC KEY" if role == d.getVar("PKI_SIGNER_PCR_ROLE") else "CERTIFICATE"
    begin = "-----BEGIN %s-----" % label
    start = pem.find(begin)
    end = pem.find("-----END %s-----" % label, start)
    if start < 0 or end < 0:
        return ""
    try:
        der = base64.b64decode("".join(pem[start + len(begin):end].split()))
        if label == "PUBLIC KEY":
            der = pki_signer_spki_key(der)
    except (ValueError, IndexError):
        return ""
    return hashlib.sha256(der).hexdigest()

def pki_signer_spki_key(der):
    """The subjectPublicKey of a SubjectPublicKeyInfo (for RSA, the RSAPublicKey DER that systemd's pkfp hashes)."""
    def content(pos):
        # (start, end) of the content of the DER element at POS
        length = der[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7f
            length = int.from_bytes(der[pos:pos + n], "big")
            pos += n
        return pos, pos + length
    inner, _ = content(0)
    _, after_alg = content(inner)
    bits, end = content(after_alg)
    # The BIT STRING's first byte counts its unused bits (0).
    return der[bits + 1:end]

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

# The signing plan, as release engineers re-sign a build: the files in
# DEPLOY_DIR_IMAGE, under their deployed names.
#
# 1. A signing task runs pki-signer with --plan on a private file in WORKDIR
#    (pki_signer_plan_args), so no lock file ever lands in the deploy directory.
# 2. pki_signer_plan_fragment, a postfunc before sstate_task_postfunc, turns it
#    into a fragment, PKI_SIGNER_PLAN_FRAGMENTS/PN.TASK.json, in the task's
#    sstate input directory (DEPLOYDIR, IMGDEPLOYDIR), with every path relative
#    to DEPLOY_DIR_IMAGE. sstate carries the fragment with the signed files, so
#    a restore from sstate brings it back too, and removes it with them.
# 3. pki_signer_plan_merge, a postfunc after sstate_task_postfunc and of the
#    task's setscene task (and a CLEANFUNC), rewrites PKI_SIGNER_PLAN from all
#    fragments in DEPLOY_DIR_IMAGE: one record per deployed file, none for a file
#    that is gone, paths relative to the plan's directory.
PKI_SIGNER_PLAN_FRAGMENTS ?= "signing-plan.d"
PKI_SIGNER_PLAN_WORK = "${WORKDIR}/pki-signer-plan"

def pki_signer_plan_work(d, task=None):
    """The private plan file pki-signer appends to during TASK ("" without a plan)."""
    if not d.getVar("PKI_SIGNER_PLAN"):
        return ""
    # BB_RUNTASK: the task bitbake runs, as bb.build.exec_task sets it.
    task = (task or d.getVar("BB_RUNTASK") or "func").replace("_setscene", "")
    if not task.startswith("do_"):
        task = "do_" + task
    return os.path.join(d.getVar("PKI_SIGNER_PLAN_WORK"), task + ".jsonl")

def pki_signer_plan_args(d):
    import shlex
    work = pki_signer_plan_work(d)
    if work:
        return "--plan " + shlex.quote(work)
    return ""

def pki_signer_plan_dirs(d, task):
    """(where TASK's fragment is written, the directories whose files end up in
    DEPLOY_DIR_IMAGE, each as (directory, same place in DEPLOY_DIR_IMAGE))."""
    deploy = os.path.normpath(d.getVar("DEPLOY_DIR_IMAGE"))
    pairs = []
    if task in (d.getVar("SSTATETASKS") or "").split():
        inputs = (d.getVarFlag(task, "sstate-inputdirs") or "").split()
        outputs = (d.getVarFlag(task, "sstate-outputdirs") or "").split()
        pairs = [(os.path.normpath(i), os.path.normpath(o)) for i, o in zip(inputs, outputs)
                 if os.path.normpath(o) == deploy or os.path.normpath(o).startswith(deploy + "/")]
    fragdir = pairs[0][0] if pairs and pairs[0][1] == deploy else deploy
    return os.path.join(fragdir, d.getVar("PKI_SIGNER_PLAN_FRAGMENTS")), pairs + [(deploy, deploy)]

def pki_signer_plan_deployed(path, pairs):
    """PATH relative to DEPLOY_DIR_IMAGE once deployed, or None."""
    path = os.path.normpath(path)
    deploy = pairs[-1][1]
    for src, dest in pairs:
        if path.startswith(src + "/"):
            return os.path.relpath(os.path.join(dest, os.path.relpath(path, src)), deploy)
    return None

def pki_signer_plan_links(target, top):
    """Symlinks under TOP that lead to TARGET, relative to TOP: the other names of a deployed file."""
    links = []
    for root, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            if os.path.islink(p) and os.path.realpath(p) == os.path.realpath(target):
                links.append(os.path.relpath(p, top))
    return sorted(links)

def pki_signer_plan_write(path, records):
    """Write RECORDS as JSON lines with one rename (none: remove PATH)."""
    import json
    if not records:
        if os.path.exists(path):
            os.unlink(path)
        return
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)

def pki_signer_plan_read(path):
    import json
    records = []
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            # A line torn by a killed writer: pki-signer fences it off too.
            bb.warn("pki-signer: %s: skipping an unreadable plan line" % path)
    return records

python pki_signer_plan_fragment() {
    # The records of this task's private plan, with the paths they will have in
    # DEPLOY_DIR_IMAGE, as this task's fragment of the deploy directory's plan.
    task = (d.getVar("BB_RUNTASK") or "").replace("_setscene", "")
    work = pki_signer_plan_work(d, task)
    if not work:
        return
    fragdir, pairs = pki_signer_plan_dirs(d, task)
    fragment = os.path.join(fragdir, "%s.%s.json" % (d.getVar("PN"), task))
    records = []
    if os.path.exists(work):
        seen = {}
        top = next(src for src, dest in pairs if dest == pairs[-1][1])
        for r in pki_signer_plan_read(work):
            signed = r.get("output_abs") or r.get("output") or ""
            for key in ("artifact", "output"):
                where = r.get(key + "_abs") or r.get(key) or ""
                rel = pki_signer_plan_deployed(where, pairs)
                if rel is None:
                    # The artifact of a UKI is the stub it was built on, which may
                    # live in a sysroot; only the signed file must be deployed.
                    if key == "output":
                        bb.warn("pki-signer: %s is not deployed to DEPLOY_DIR_IMAGE; the plan names it by its "
                                "work-directory path, which rm_work removes" % where)
                    r[key] = r[key + "_abs"] = where
                else:
                    r[key] = rel
                    r.pop(key + "_abs", None)
            # The other names of the file (kernel.bbclass's symlinks), for people reading the plan.
            links = pki_signer_plan_links(signed, top) if "output_abs" not in r else []
            if links:
                r["links"] = links
            # A task that signs one file twice keeps the last signature.
            seen[r["output"]] = r
        records = [seen[k] for k in sorted(seen)]
    if records:
        bb.utils.mkdirhier(fragdir)
    pki_signer_plan_write(fragment, records)
    for leftover in (work, work + ".lock"):
        if os.path.exists(leftover):
            os.unlink(leftover)
}
pki_signer_plan_fragment[doc] = "Turns what this task signed into its fragment of the deploy directory's signing plan"
pki_signer_plan_fragment[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE} BB_RUNTASK"

python pki_signer_plan_merge() {
    pki_signer_plan_merge_all(d)
}
pki_signer_plan_merge[doc] = "Rewrites PKI_SIGNER_PLAN from the plan fragments in DEPLOY_DIR_IMAGE"
pki_signer_plan_merge[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

def pki_signer_plan_merge_all(d):
    """Rewrite PKI_SIGNER_PLAN from the fragments in DEPLOY_DIR_IMAGE."""
    import fcntl, glob
    plan = d.getVar("PKI_SIGNER_PLAN")
    if not plan:
        return
    deploy = os.path.normpath(d.getVar("DEPLOY_DIR_IMAGE"))
    fragdir = os.path.join(deploy, d.getVar("PKI_SIGNER_PLAN_FRAGMENTS"))
    plandir = os.path.dirname(os.path.abspath(plan))
    bb.utils.mkdirhier(plandir)
    # Recipes merge at the same time: they take turns on the plan's directory
    # itself, which nothing removes, so no lock file is left beside the plan.
    fd = os.open(plandir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        byoutput = {}
        for fragment in sorted(glob.glob(os.path.join(fragdir, "*.json"))):
            try:
                records = pki_signer_plan_read(fragment)
            except (OSError, ValueError) as e:
                bb.warn("pki-signer: cannot read plan fragment %s: %s" % (fragment, e))
                continue
            for r in records:
                for key in ("artifact", "output"):
                    where = r.get(key + "_abs") or os.path.join(deploy, r[key])
                    r[key + "_abs"] = where
                    under = where.startswith(plandir + "/")
                    r[key] = os.path.relpath(where, plandir) if under else where
                # A file that is no longer deployed has nothing to re-sign.
                if os.path.lexists(r["output_abs"]):
                    byoutput[r["output_abs"]] = r
        pki_signer_plan_write(plan, [byoutput[k] for k in sorted(byoutput)])
        # Left by killed merges, and by layer versions that let pki-signer
        # append to the plan itself.
        for stale in glob.glob(glob.escape(plan) + ".*.tmp") + [plan + ".lock"]:
            if not stale.endswith(".%d.tmp" % os.getpid()) and os.path.lexists(stale):
                os.unlink(stale)
    finally:
        os.close(fd)

python pki_signer_plan_reset() {
    # A killed run may have left records of files that are signed again now.
    work = pki_signer_plan_work(d)
    for leftover in (work, work + ".lock") if work else ():
        if os.path.exists(leftover):
            os.unlink(leftover)
}
pki_signer_plan_reset[doc] = "Removes what a killed run of this task left in its private plan"
pki_signer_plan_reset[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE} BB_RUNTASK"

# The plan does not change what is signed: its functions stay out of the
# signatures of the tasks they run in, and so does the plan's place.
pki_signer_plan_fragment[vardepvalue] = "pki_signer_plan_fragment"
pki_signer_plan_merge[vardepvalue] = "pki_signer_plan_merge"
pki_signer_plan_reset[vardepvalue] = "pki_signer_plan_reset"
CLEANFUNCS += "pki_signer_plan_merge"

# Paths and switches that do not change what a signature looks like stay out
# of task signatures; the certificates' content is in them via file-checksums.
# Nor do the PKCS#11 module and its environment: where a key lives is not
# what it signs with, and the signer's certificate is in the signature.
PKI_SIGNER_SIGNATURE_EXCLUDE = "PKI_SIGNER_DIR PKI_SIGNER_BIN PKI_SIGNER_PLAN \
                                PKI_SIGNER_PROFILE PKI_SIGNER_KEY_TYPE PKI_SIGNER_UEFI \
                                PKI_SIGNER_PKCS11_MODULE PKI_SIGNER_PKCS11_ENV"
pki_signer_cert[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_key_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_init_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_plan_args[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE} BB_RUNTASK"
pki_signer_plan_work[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE} BB_RUNTASK PKI_SIGNER_PLAN_WORK"
pki_signer_pkcs11_env[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
pki_signer_pkcs11_exports[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

PKI_SIGNER_INIT_ROLES = "${@pki_signer_init_roles(d)}"
PKI_SIGNER_CERT_URIS = "${@pki_signer_cert_uris(d, d.getVar('PKI_SIGNER_ROLES'))}"
PKI_SIGNER_CERT_URIS[vardepvalue] = "${PKI_SIGNER_CERT_URIS}"

# Creates the PKI if it is absent. pki-signer holds PKI_SIGNER_DIR.lock while it
# checks and publishes the directory with one rename, so any number of recipes
# may run this at once and they all end up with the same PKI.
do_pki_signer_init() {
    if [ -z "${PKI_SIGNER_INIT_ROLES}" ]; then
        bbnote "pki-signer: every role has a PKI_SIGNER_KEY override; no development PKI needed"
    elif [ "${PKI_SIGNER_MODE}" = "release" ]; then
        bbnote "pki-signer: release mode uses the production PKI in ${PKI_SIGNER_DIR}; nothing is generated"
    else
        ${PKI_SIGNER_BIN} pki init ${@pki_signer_init_args(d)}
    fi
}
do_pki_signer_init[doc] = "Creates the development PKI in PKI_SIGNER_DIR unless it is already there"
do_pki_signer_init[dirs] = "${T}"
do_pki_signer_init[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"
do_pki_signer_init[file-checksums] = "${@pki_signer_cert_checksums(d, d.getVar('PKI_SIGNER_INIT_ROLES'))}"
do_pki_signer_init[depends] += "${PKI_SIGNER_TASK_DEPENDS}"
addtask pki_signer_init after do_prepare_recipe_sysroot

# The request covers the whole deploy directory's plan, which other recipes
# change too: it is written at the end of every image build (nostamp), after
# the image's own files are deployed and merged into the plan.
do_pki_signer_request() {
    plan="${PKI_SIGNER_PLAN}"
    if [ -z "$plan" ]; then
        bbfatal "PKI_SIGNER_OFFLINE_KEYS needs the signing plan: PKI_SIGNER_PLAN is empty"
    fi
    if [ ! -e "$plan" ]; then
        bbwarn "pki-signer: no signing plan at $plan: nothing was signed, so no request is written"
        return
    fi
    ${PKI_SIGNER_BIN} offline request --plan "$plan" --keys "${PKI_SIGNER_OFFLINE_KEYS}" \
        -o "${PKI_SIGNER_OFFLINE_REQUEST}"
    bbnote "pki-signer: offline signing request for $plan written to ${PKI_SIGNER_OFFLINE_REQUEST}"
}
do_pki_signer_request[doc] = "Writes the offline signing request for the deploy directory's signing plan"
do_pki_signer_request[nostamp] = "1"
do_pki_signer_request[dirs] = "${T}"
do_pki_signer_request[depends] += "${PKI_SIGNER_TASK_DEPENDS}"
do_pki_signer_request[vardepsexclude] = "${PKI_SIGNER_SIGNATURE_EXCLUDE}"

python () {
    if d.getVar("PKI_SIGNER_OFFLINE_KEYS") and bb.data.inherits_class("image", d):
        bb.build.addtask("do_pki_signer_request", "do_build", "do_image_complete", d)
    # Release mode: every pki-signer call refuses development keys, and a role
    # without a production key stops the build here, naming what to set.
    if pki_signer_release(d):
        d.setVar("PKI_SIGNER_RELEASE", "1")
        d.setVarFlag("PKI_SIGNER_RELEASE", "export", "1")
        pki_signer_release_check(d)
    # A bad URI or module environment stops the parse, not the signing task
    # hours into a build.
    for role in sorted(set((d.getVar("PKI_SIGNER_ROLES") or "").split())):
        pki_signer_check_uri(d, role, "KEY", d.getVarFlag("PKI_SIGNER_KEY", role) or "")
        pki_signer_check_uri(d, role, "CERT", d.getVarFlag("PKI_SIGNER_CERT", role) or "")
    pki_signer_pkcs11_env(d)
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
# sstate captures the output, the task waits for the PKI and for the tool, its
# signature follows the certificates of the roles in ROLES_VAR, and what it
# signed goes into the deploy directory's plan.
def pki_signer_hook(d, task, func, roles_var):
    pki_signer_plan_hook(d, task, func)
    pki_signer_sign_hook(d, task, roles_var)

# What makes TASK a signing task, without the plan's postfuncs: for a task
# whose output is not deployed (see pki_signer_plan_hook for the one that is).
def pki_signer_sign_hook(d, task, roles_var):
    if "pki_signer_plan_reset" not in (d.getVarFlag(task, "prefuncs") or "").split():
        d.appendVarFlag(task, "prefuncs", " pki_signer_plan_reset")
    d.appendVarFlag(task, "depends", " ${PKI_SIGNER_TASK_DEPENDS}")
    d.appendVarFlag(task, "file-checksums", " ${@pki_signer_cert_checksums(d, d.getVar('%s'))}" % roles_var)
    d.appendVarFlag(task, "vardeps", " %s PKI_SIGNER_CERT_URIS" % roles_var)
    # bitbake-worker cuts the network of tasks without [network]; a PKCS#11
    # module may talk to a network HSM (sstate tasks such as do_deploy have it
    # already, do_uki and do_pki_signer_sign do not).
    roles = (d.getVar(roles_var) or "").split()
    if any(pki_signer_is_uri(d.getVarFlag("PKI_SIGNER_KEY", r) or "") for r in roles):
        d.setVarFlag(task, "network", "1")
    bb.build.addtask("do_pki_signer_init", task, None, d)

# TASK's output goes to DEPLOY_DIR_IMAGE: FUNC (if given) and the plan fragment
# run before sstate captures it, and the plan is merged once sstate installed it.
def pki_signer_plan_hook(d, task, func):
    post = (d.getVarFlag(task, "postfuncs") or "").split()
    # sstate.bbclass appends sstate_task_postfunc; whichever class runs first,
    # the signature and the plan fragment must be in the output sstate packages,
    # and the plan is merged once sstate has installed them.
    before = [f for f in (func, "pki_signer_plan_fragment") if f and f not in post]
    at = post.index("sstate_task_postfunc") if "sstate_task_postfunc" in post else len(post)
    post[at:at] = before
    if "pki_signer_plan_merge" not in post:
        post.append("pki_signer_plan_merge")
    d.setVarFlag(task, "postfuncs", " ".join(post))
    if "pki_signer_plan_reset" not in (d.getVarFlag(task, "prefuncs") or "").split():
        d.appendVarFlag(task, "prefuncs", " pki_signer_plan_reset")
    # A restore from sstate installs the task's fragment: merge it too.
    setscene = task + "_setscene"
    if task in (d.getVar("SSTATETASKS") or "").split() and \
            "pki_signer_plan_merge" not in (d.getVarFlag(setscene, "postfuncs") or "").split():
        d.appendVarFlag(setscene, "postfuncs", " pki_signer_plan_merge")
