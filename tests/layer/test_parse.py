"""What bitbake's parser and datastore make of meta-pki-signer: variables,
task order, and what goes into task signatures."""

import glob
import hashlib
import logging
import re
import shutil
import subprocess

import bb
import bb.data
import pytest

from bbharness import LAYER, chdir, kernel_image
from conftest import FAST_KEYS, peer

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
UKI = "recipes/fake-uki/fake-uki-image.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"


def test_layer_conf_declares_the_collection_and_releases(make_parse_build):
    data = make_parse_build().parse_config()
    assert "pki-signer" in data.getVar("BBFILE_COLLECTIONS").split()
    assert data.getVar("LAYERSERIES_COMPAT_pki-signer").split() == sorted(
        "scarthgap styhead walnascar whinlatter wrynose".split())
    assert data.getVar("LAYERDEPENDS_pki-signer") == "core"
    # bitbake globs BBFILES: the tool's recipe is found, the kernel snippet is not,
    # so adding the layer signs nothing by itself.
    found = {f for pattern in data.getVar("BBFILES").split() for f in glob.glob(pattern)}
    assert str(LAYER / "recipes-devtools/pki-signer/pki-signer_git.bb") in found
    assert not [f for f in found if f.endswith(".bbappend")]


def test_readme_names_maintainers_and_how_to_send_patches():
    # What yocto-check-layer's test_readme looks for (OE-core
    # scripts/lib/checklayer/cases/common.py), and the security policy it points to.
    text = (LAYER / "README.md").read_text()
    assert "maintainer" in text.lower() and "patch" in text.lower()
    assert re.search(r"[\w.+-]+@[\w-]+(\.[\w-]+)+", text)
    assert (LAYER / "SECURITY.md").is_file()
    # Its pkcs11: examples are URIs pki-signer accepts: module-path and pin-source are query attributes.
    uris = re.findall(r"pkcs11:[^\"'`\s]*", text)
    assert uris
    for uri in uris:
        assert not re.search(r"[;:](pin-source|module-path|pin-value)=", uri.split("?")[0]), uri


def test_defaults_of_a_kernel_recipe(make_parse_build):
    build = make_parse_build()
    d = build.parse(KERNEL)
    topdir = str(build.topdir)
    assert d.getVar("PKI_SIGNER_DIR") == topdir + "/pki"
    assert d.getVar("PKI_SIGNER_UEFI") == "1"
    assert d.getVar("PKI_SIGNER_PLAN") == d.getVar("DEPLOY_DIR_IMAGE") + "/signing-plan.json"
    assert d.getVar("PKI_SIGNER_EFI_ROLE") == "ssig_subca"
    assert d.getVar("PKI_SIGNER_EFI_TASK") == "do_deploy"
    assert d.getVar("PKI_SIGNER_EFI_DIR") == d.getVar("DEPLOYDIR")
    # The file kernel.bbclass deploys, named as OE-core's kernel-artifact-names
    # names it (PKGE is empty; the build's DATETIME); bzImage and
    # bzImage-MACHINE.bin link to it.
    assert d.getVar("KERNEL_IMAGE_NAME") == "-1.0-r0-testmachine-" + d.getVar("DATETIME")
    assert d.getVar("PKI_SIGNER_EFI_FILES") == kernel_image(d) == "bzImage-%s.bin" % d.getVar("KERNEL_IMAGE_NAME")
    assert d.expand("${@pki_signer_init_args(d)}") == "--dir %s/pki --uefi" % topdir
    assert d.expand("${@pki_signer_key_args(d, 'ssig_subca')}") == "--role ssig_subca --dir %s/pki" % topdir
    # pki-signer records into a private file in WORKDIR; the plan in the deploy
    # directory is merged from the fragments the tasks deploy.
    d.setVar("BB_RUNTASK", "do_deploy")
    assert d.expand("${@pki_signer_plan_args(d)}") == "--plan " + d.getVar("WORKDIR") + "/pki-signer-plan/do_deploy.jsonl"


def test_the_tool_is_a_dependency_of_the_signing_tasks_only(make_parse_build):
    d = make_parse_build().parse(KERNEL)
    # Not DEPENDS: that would put pki-signer-native (and Rust) before the
    # kernel's do_prepare_recipe_sysroot, configure and compile.
    assert "pki-signer-native" not in (d.getVar("DEPENDS") or "")
    for task in ("do_prepare_recipe_sysroot", "do_configure", "do_compile", "do_install"):
        assert "pki-signer" not in (d.getVarFlag(task, "depends") or ""), task
    # [depends] on do_populate_sysroot: OE-core's staging.bbclass gives such a
    # task extend_recipe_sysroot, which installs the tool for it.
    for task in ("do_pki_signer_init", "do_deploy"):
        assert "pki-signer-native:do_populate_sysroot" in d.getVarFlag(task, "depends").split(), task
    host = make_parse_build('PKI_SIGNER_DEPENDS = ""\n', name="host").parse(KERNEL)
    assert not host.getVarFlag("do_deploy", "depends").strip()


def test_local_conf_settings_reach_the_commands(make_parse_build):
    build = make_parse_build(
        'PKI_SIGNER_DIR = "/srv/pki dir"\n'
        'PKI_SIGNER_PROFILE = "/srv/profile.json"\n'
        'PKI_SIGNER_KEY_TYPE = "ec:secp384r1"\n'
        'PKI_SIGNER_UEFI = "0"\n'
        'KERNEL_IMAGETYPE = "Image"\n'
        'INITRAMFS_IMAGE = "initramfs"\n'
        'INITRAMFS_IMAGE_BUNDLE = "1"\n')
    d = build.parse(KERNEL)
    assert d.expand("${@pki_signer_init_args(d)}") == \
        "--dir '/srv/pki dir' --profile /srv/profile.json --key-type ec:secp384r1"
    name = "-1.0-r0-testmachine-" + d.getVar("DATETIME")
    assert d.getVar("PKI_SIGNER_EFI_FILES").split() == ["Image-%s.bin" % name, "Image-initramfs-%s.bin" % name]


def test_plan_is_not_passed_when_empty(make_parse_build):
    d = make_parse_build('PKI_SIGNER_PLAN = ""\n').parse(KERNEL)
    d.setVar("BB_RUNTASK", "do_deploy")
    assert d.expand("${@pki_signer_plan_args(d)}") == ""


def test_key_overrides_are_varflags_per_role(make_parse_build):
    build = make_parse_build(
        'PKI_SIGNER_KEY[ssig_subca] = "pkcs11:token=release;object=db?pin-source=file:/run/pin"\n'
        'PKI_SIGNER_CERT[ssig_subca] = "/srv/release/db.pem"\n'
        'PKI_SIGNER_KEY[ssig_cml] = "/srv/release/cml.key"\n'
        'PKI_SIGNER_CERT[ssig_cml] = "/srv/release/cml.pem"\n'
        'PKI_SIGNER_KEY_PASS_FILE[ssig_cml] = "/run/cml.pass"\n')
    d = build.parse(KERNEL)
    # Quoted for the shell: the URI's ';' would end the command.
    assert d.expand("${@pki_signer_key_args(d, 'ssig_subca')}") == \
        "--key 'pkcs11:token=release;object=db?pin-source=file:/run/pin' --cert /srv/release/db.pem"
    assert d.expand("${@pki_signer_key_args(d, 'ssig_cml')}") == \
        "--key /srv/release/cml.key --cert /srv/release/cml.pem --key-pass-file /run/cml.pass"
    # Every role of this recipe has its own key: no development PKI is made.
    assert d.getVar("PKI_SIGNER_INIT_ROLES") == ""
    assert d.getVarFlag("do_pki_signer_init", "nostamp") is None


@pytest.mark.parametrize("uri", ["pkcs11:token=t;object=o;pin-value=1234", "pkcs11:token=t;object=o?pin-value=1234"])
def test_a_pin_in_a_key_uri_is_refused(make_parse_build, uri):
    build = make_parse_build(
        'PKI_SIGNER_KEY[ssig_subca] = "%s"\n'
        'PKI_SIGNER_CERT[ssig_subca] = "/srv/db.pem"\n' % uri)
    with pytest.raises(Exception):
        build.parse(KERNEL)
    errors = build.log.messages(logging.ERROR)
    assert any("pin-value" in m and "pin-source=file" in m for m in errors), errors
    assert not any("1234" in m for m in errors), "the PIN must not be printed"


def test_a_key_override_needs_its_certificate(make_parse_build):
    build = make_parse_build('PKI_SIGNER_KEY[ssig_subca] = "/srv/db.key"\n')
    with pytest.raises(Exception):
        build.parse(KERNEL)
    assert any("PKI_SIGNER_CERT[ssig_subca]" in m for m in build.log.messages(logging.ERROR))


def test_kernel_signs_in_do_deploy_after_init_and_before_sstate(make_parse_build):
    d = make_parse_build().parse(KERNEL)
    tasks = d.getVar("__BBTASKS", False)
    assert "do_pki_signer_init" in tasks
    assert "do_pki_signer_init" in d.getVarFlag("do_deploy", "deps")
    assert "do_install" in d.getVarFlag("do_deploy", "deps")
    assert "do_prepare_recipe_sysroot" in d.getVarFlag("do_pki_signer_init", "deps")
    # Signed in DEPLOYDIR after the recipe's deploy function, before sstate
    # captures it with the plan fragment; the plan is merged once sstate has
    # installed both into DEPLOY_DIR_IMAGE, and again after a restore.
    assert d.getVarFlag("do_deploy", "postfuncs").split() == [
        "pki_signer_sign_efi", "pki_signer_plan_fragment", "sstate_task_postfunc", "pki_signer_plan_merge"]
    assert d.getVarFlag("do_deploy_setscene", "postfuncs").split() == ["pki_signer_plan_merge"]
    assert "pki_signer_plan_reset" in d.getVarFlag("do_deploy", "prefuncs").split()
    # The PKI is shared build state, never an sstate object.
    assert "do_pki_signer_init" not in d.getVar("SSTATETASKS").split()


def test_uki_is_signed_when_uki_bbclass_writes_it(make_parse_build):
    d = make_parse_build().parse(UKI)
    assert d.getVar("PKI_SIGNER_EFI_TASK") == "do_uki"
    assert d.getVar("PKI_SIGNER_EFI_DIR") == d.getVar("DEPLOY_DIR_IMAGE")
    assert d.getVar("PKI_SIGNER_EFI_FILES") == "uki.efi"
    # do_uki writes into DEPLOY_DIR_IMAGE itself, without sstate: its fragment goes there directly.
    assert d.getVarFlag("do_uki", "postfuncs").split() == [
        "pki_signer_sign_efi", "pki_signer_plan_fragment", "pki_signer_plan_merge"]
    assert "do_pki_signer_init" in d.getVarFlag("do_uki", "deps")
    assert not d.getVarFlag("do_deploy", "postfuncs")


def test_signing_do_uki_without_uki_bbclass_says_which_releases_have_it(make_parse_build):
    # scarthgap and styhead have no uki.bbclass, so nothing adds do_uki there.
    build = make_parse_build('PKI_SIGNER_EFI_TASK:pn-fake-efiapp = "do_uki"\n')
    with pytest.raises(Exception):
        build.parse("recipes/fake-efiapp/fake-efiapp_1.0.bb")
    errors = build.log.messages(logging.ERROR)
    assert any("uki.bbclass" in m and "walnascar" in m for m in errors), errors


def test_guestos_signs_in_image_postprocess(make_parse_build):
    d = make_parse_build().parse(GUESTOS)
    assert "pki_signer_guestos_sign" in d.getVar("IMAGE_POSTPROCESS_COMMAND").split()
    assert "do_pki_signer_init" in d.getVarFlag("do_image_complete", "deps")
    assert d.getVar("PKI_SIGNER_GUESTOS_ROLE") == "ssig_cml"
    assert d.getVar("PKI_SIGNER_GUESTOS_NAME") == "fake-guestos-imageos"
    # image-artifact-names' IMAGE_LINK_NAME ends in IMAGE_NAME_SUFFIX, ".rootfs", in every supported release.
    assert d.getVar("PKI_SIGNER_GUESTOS_IMAGES") == "fake-guestos-image-testmachine.rootfs.squashfs:root.img"
    # The template's content goes into the signature, through file-checksums.
    assert d.expand("${THISDIR}/files/fakeos.conf:True") in d.getVarFlag("do_image_complete", "file-checksums")
    assert "pki_signer_guestos_sign" in d.getVar("__siggen_taskdeps")["do_image_complete"]


def test_signatures_carry_the_role_and_certificate_not_paths(make_parse_build, dev_pki):
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(KERNEL)
    deps = d.getVar("__siggen_taskdeps")["do_deploy"]
    assert {"pki_signer_sign_efi", "PKI_SIGNER_EFI_ROLE", "PKI_SIGNER_CERT_URIS"} <= deps
    for path_like in ("PKI_SIGNER_DIR", "TOPDIR", "PKI_SIGNER_PLAN", "PKI_SIGNER_BIN", "PKI_SIGNER_PROFILE"):
        assert path_like not in deps, path_like
    # The certificate's content: bitbake checksums this file into the task hash.
    cert = build.topdir / "pki" / "ssig_subca.cert"
    assert d.getVarFlag("do_deploy", "file-checksums").split() == ["%s:True" % cert]


def test_task_hash_follows_the_certificate_not_its_path(make_parse_build, dev_pki, pki_signer):
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    tasks = ["do_pki_signer_init", "do_deploy"]

    def hashes(extra=""):
        build.set_local_conf(build.base_conf + FAST_KEYS + extra)
        build.parse_config()
        d = build.parse(KERNEL)
        return build.task_hashes(d, tasks), d

    first, d = hashes()
    again, _ = hashes()
    assert again == first, "an unchanged key reuses sstate"

    # bitbake put the certificate's checksum (its file-checksums use MD5) into
    # the hash, and nothing else of the PKI.
    fn = d.getVar("FILE")
    cert = build.topdir / "pki" / "ssig_subca.cert"
    values = bb.parse.siggen.file_checksum_values[fn + ":do_deploy"]
    assert values == [(str(cert), hashlib.md5(cert.read_bytes()).hexdigest())]

    moved = build.topdir / "elsewhere" / "pki"
    shutil.copytree(build.topdir / "pki", moved)
    relocated, _ = hashes('PKI_SIGNER_DIR = "%s"\nPKI_SIGNER_PLAN = "/tmp/other-plan.json"\n' % moved)
    assert relocated == first, "the same key in another place reuses sstate"

    tool = build.topdir / "bin" / "pki-signer"
    tool.parent.mkdir()
    shutil.copyfile(pki_signer, tool)
    other_tool, _ = hashes('PKI_SIGNER_BIN = "%s"\n' % tool)
    assert other_tool == first

    fresh = build.topdir / "fresh" / "pki"
    subprocess.run([str(pki_signer), "pki", "init", "--dir", str(fresh), "--key-type", "ec:prime256v1"],
                   check=True, capture_output=True)
    rekeyed, _ = hashes('PKI_SIGNER_DIR = "%s"\n' % fresh)
    assert rekeyed["do_deploy"] != first["do_deploy"], "a new key re-signs"

    role, _ = hashes('PKI_SIGNER_EFI_ROLE = "ssig"\n')
    assert role["do_deploy"] != first["do_deploy"], "another role re-signs"


def test_a_missing_pki_makes_init_and_signing_run(make_parse_build):
    build = make_parse_build(FAST_KEYS)
    d = build.parse(KERNEL)
    assert d.getVarFlag("do_pki_signer_init", "nostamp") == "1"
    # bitbake taints what depends on a nostamp task: nothing signed with a key
    # that is gone can come back from sstate.
    first = build.task_hashes(d, ["do_deploy"])
    build.parse_config()
    second = build.task_hashes(build.parse(KERNEL), ["do_deploy"])
    assert first != second


def test_reparse_after_the_pki_appears_keeps_the_basehash(make_parse_build, pki_signer):
    # bitbake-worker re-parses the recipe before each task and fails the build
    # if a basehash changed since the server parsed it. The first build creates
    # the PKI between the two parses.
    build = make_parse_build(FAST_KEYS)
    build.parse_config()
    before = build.parse(KERNEL).getVar("__siggen_basehashes")
    subprocess.run([str(pki_signer), "pki", "init", "--dir", str(build.topdir / "pki"),
                    "--key-type", "ec:prime256v1"], check=True, capture_output=True)
    build.parse_config(keep_siggen=True)
    after = build.parse(KERNEL).getVar("__siggen_basehashes")
    assert after == before
    assert not [m for m in build.log.messages(logging.ERROR) if "basehash value changed" in m]


def test_a_token_certificate_is_named_in_the_signature(make_parse_build):
    uri = "pkcs11:token=release;object=db-cert"
    build = make_parse_build(
        'PKI_SIGNER_KEY[ssig_subca] = "pkcs11:token=release;object=db"\n'
        'PKI_SIGNER_CERT[ssig_subca] = "%s"\n' % uri)
    d = build.parse(KERNEL)
    assert d.getVar("__siggen_varvals")["PKI_SIGNER_CERT_URIS"] == "ssig_subca=" + uri
    assert not d.getVarFlag("do_deploy", "file-checksums").strip()


def test_fingerprint_is_the_certificate_sha256_that_openssl_prints(make_parse_build, dev_pki):
    openssl = peer("openssl")
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(KERNEL)
    for role in ("ssig_subca", "ssig_cml", "DB"):
        out = subprocess.run([openssl, "x509", "-noout", "-fingerprint", "-sha256",
                              "-in", str(build.topdir / "pki" / ("%s.%s" % (role, "crt" if role == "DB" else "cert")))],
                             check=True, capture_output=True, text=True).stdout
        expected = out.strip().split("=", 1)[1].replace(":", "").lower()
        assert d.expand("${@pki_signer_fingerprint(d, '%s')}" % role) == expected


def test_the_kernel_snippet_signs_a_kernel_it_is_appended_to(make_parse_build):
    build = make_parse_build()
    build.parse_config()
    snippet = LAYER / "recipes-example/linux/snippets/linux-yocto_%.bbappend"
    kernel = build.recipe_path(KERNEL)
    # The fake kernel inherits pki-signer-efi itself; parse a plain kernel recipe
    # with the snippet appended instead, as bitbake applies a bbappend.
    plain = build.topdir / "linux-yocto_6.6.bb"
    plain.write_text(kernel.read_text().replace("inherit kernel pki-signer-efi", "inherit kernel"))
    with chdir(build.topdir):
        d = build.databuilder.parseRecipeVariants(str(plain), [str(snippet)], layername=None)[""]
    assert bb.data.inherits_class("pki-signer-efi", d)
    assert d.getVar("PKI_SIGNER_EFI_KEEP_UNSIGNED") == "1"
    assert d.getVarFlag("do_deploy", "postfuncs").split() == [
        "pki_signer_sign_efi", "pki_signer_plan_fragment", "sstate_task_postfunc", "pki_signer_plan_merge"]


def test_the_example_guestos_image_parses(make_parse_build):
    d = make_parse_build().parse(str(LAYER / "recipes-example/images/pki-signer-example-guestos.bb"))
    assert d.getVar("PKI_SIGNER_GUESTOS_NAME") == "exampleos"
    assert "squashfs" in d.getVar("IMAGE_FSTYPES").split()
    template = d.getVar("PKI_SIGNER_GUESTOS_CONF_TEMPLATE")
    assert 'name: "exampleos"' in open(template).read()
    assert "pki_signer_guestos_sign" in d.getVar("IMAGE_POSTPROCESS_COMMAND").split()
