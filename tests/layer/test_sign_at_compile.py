"""PKI_SIGNER_EFI_TASK = "do_compile": EFI binaries are signed in the build
tree by do_pki_signer_sign, after do_compile and before do_install and
do_deploy, so the packages and DEPLOY_DIR_IMAGE both get the signed file,
while do_compile owes nothing to pki-signer."""

import json
import logging
import subprocess

import bb.data
import pytest

from bbharness import LAYER, chdir, kernel_image
from conftest import FAST_KEYS, peer

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
SYSTEMD_BOOT = "recipes/systemd-boot/systemd-boot_259.5.bb"
SNIPPET = LAYER / "recipes-example/systemd-boot/snippets/systemd-boot_%.bbappend"
AT_COMPILE = 'PKI_SIGNER_EFI_TASK = "do_compile"\n'
BUILD_TASKS = ("do_compile", "do_pki_signer_init", "do_pki_signer_sign", "do_install", "do_deploy")


def run(build, d, *tasks):
    for task in tasks:
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))


def sbverify(path, cert):
    result = subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)
    return result.returncode == 0


def signature_count(path):
    out = subprocess.run([peer("sbverify"), "--list", str(path)], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("signature "))


def plan_records(build, d):
    plan = build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "signing-plan.json"
    return [json.loads(line) for line in plan.read_text().splitlines() if line.strip()]


def parse_with_snippet(build, recipe, snippet=SNIPPET):
    """RECIPE with SNIPPET appended, as bitbake applies a bbappend."""
    build.parse_config()
    with chdir(build.topdir):
        return build.databuilder.parseRecipeVariants(str(recipe), [str(snippet)], layername=None)[""]


def foreign(deps):
    """What of pki-signer a signature holds; PKI_SIGNER_TEST_EFI and _STUB are the fixture's stand-ins for sources."""
    return sorted(v for v in deps if v.lower().startswith("pki_signer")
                  and v not in ("PKI_SIGNER_TEST_EFI", "PKI_SIGNER_TEST_STUB"))


def test_a_task_of_its_own_signs_between_compile_and_install(make_parse_build):
    d = make_parse_build(AT_COMPILE).parse(KERNEL)
    assert d.getVar("PKI_SIGNER_EFI_DIR") == d.getVar("B") + "/arch/x86/boot"
    assert d.getVar("PKI_SIGNER_EFI_FILES") == "bzImage"
    assert "do_pki_signer_sign" in d.getVar("__BBTASKS", False)
    assert {"do_compile", "do_pki_signer_init"} <= set(d.getVarFlag("do_pki_signer_sign", "deps"))
    assert "do_pki_signer_sign" in d.getVarFlag("do_install", "deps")
    # The tool is a dependency of the signing task and of nothing before it.
    assert "pki-signer-native:do_populate_sysroot" in d.getVarFlag("do_pki_signer_sign", "depends").split()
    for task in ("do_prepare_recipe_sysroot", "do_configure", "do_compile", "do_install", "do_deploy"):
        assert "pki-signer" not in (d.getVarFlag(task, "depends") or ""), task
    # do_deploy copies a signed file: it records it in the plan, it does not sign it again.
    assert d.getVarFlag("do_deploy", "postfuncs").split() == [
        "pki_signer_efi_record", "pki_signer_plan_fragment", "sstate_task_postfunc", "pki_signer_plan_merge"]
    assert d.getVarFlag("do_deploy_setscene", "postfuncs").split() == ["pki_signer_plan_merge"]
    assert not (d.getVarFlag("do_pki_signer_sign", "postfuncs") or "").split()
    taskdeps = d.getVar("__siggen_taskdeps")
    assert foreign(taskdeps["do_compile"]) == []
    assert {"pki_signer_sign_efi", "PKI_SIGNER_EFI_ROLE", "PKI_SIGNER_CERT_URIS"} <= taskdeps["do_pki_signer_sign"]


def test_do_compile_has_the_task_hash_of_a_kernel_without_the_layer(make_parse_build, dev_pki, pki_signer):
    build = make_parse_build(FAST_KEYS + AT_COMPILE, pki=dev_pki)
    tasks = ["do_compile", "do_pki_signer_sign", "do_install"]

    def hashes(recipe, extra=""):
        build.set_local_conf(build.base_conf + FAST_KEYS + AT_COMPILE + extra)
        build.parse_config()
        d = build.parse(recipe)
        return build.task_hashes(d, [t for t in tasks if d.getVarFlag(t, "task")])

    signing = hashes(KERNEL)
    plain = build.topdir / "plain" / "fake-kernel_1.0.bb"
    plain.parent.mkdir()
    plain.write_text(build.recipe_path(KERNEL).read_text().replace("inherit kernel pki-signer-efi", "inherit kernel"))
    without = hashes(plain)
    assert without["do_compile"] == signing["do_compile"]
    assert without["do_install"] != signing["do_install"], "do_install installs the signed file"

    fresh = build.topdir / "fresh" / "pki"
    subprocess.run([str(pki_signer), "pki", "init", "--dir", str(fresh), "--key-type", "ec:prime256v1"],
                   check=True, capture_output=True)
    rekeyed = hashes(KERNEL, 'PKI_SIGNER_DIR = "%s"\n' % fresh)
    assert rekeyed["do_compile"] == signing["do_compile"], "a new key does not compile again"
    assert rekeyed["do_pki_signer_sign"] != signing["do_pki_signer_sign"], "a new key signs again"


def test_the_installed_and_the_deployed_kernel_are_signed_once(make_build, dev_pki, efi_app):
    build = make_build(FAST_KEYS + AT_COMPILE + 'PKI_SIGNER_EFI_EXISTING = "append"\n', pki=dev_pki)
    d = build.parse(KERNEL)
    cert = build.topdir / "pki" / "ssig_subca.cert"
    run(build, d, *BUILD_TASKS)

    built = build.topdir / d.getVar("B") / "arch/x86/boot/bzImage"
    installed = build.topdir / d.getVar("D") / "boot" / "bzImage-1.0"
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    for path in (built, installed, deploy / kernel_image(d), deploy / "bzImage"):
        assert sbverify(path, cert), path
        assert signature_count(path) == 1, path
    assert "signing bzImage with ssig_subca" in build.task_log(d, "do_pki_signer_sign")
    # do_deploy ran no pki-signer: bitbake writes a postfunc's script beside the task's.
    temp = build.topdir / d.getVar("T")
    assert not list(temp.glob("run.pki_signer_sign_efi.*"))
    assert "pe sign" not in (temp / "run.do_deploy").read_text()

    # The plan names the deployed copy, with its links, and not the build tree,
    # which rm_work removes.
    [record] = plan_records(build, d)
    assert record["output"] == record["artifact"] == kernel_image(d)
    assert record["links"] == ["bzImage", "bzImage-testmachine.bin"]
    assert record["role"] == "ssig_subca"
    assert "output_abs" not in record or record["output_abs"].startswith(str(deploy))
    assert not build.log.messages(logging.WARNING)

    # A key change runs do_pki_signer_sign again without do_compile: it signs
    # what do_compile made, not its own output a second time.
    run(build, d, "do_pki_signer_sign")
    assert signature_count(built) == 1
    assert sbverify(built, cert)
    # do_compile again: a new file, signed once too.
    run(build, d, "do_compile", "do_pki_signer_sign")
    assert signature_count(built) == 1
    unsigned = build.topdir / d.getVar("WORKDIR") / "pki-signer-unsigned" / "bzImage"
    assert unsigned.read_bytes() == efi_app.read_bytes()


def test_the_initramfs_bundle_cannot_be_signed_at_compile(make_parse_build):
    build = make_parse_build(AT_COMPILE + 'INITRAMFS_IMAGE = "initramfs"\nINITRAMFS_IMAGE_BUNDLE = "1"\n')
    with pytest.raises(Exception):
        build.parse(KERNEL)
    errors = build.log.messages(logging.ERROR)
    assert any("INITRAMFS_IMAGE_BUNDLE" in m and "do_deploy" in m for m in errors), errors


def test_the_systemd_boot_snippet_signs_the_boot_loader_after_do_compile(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = parse_with_snippet(build, build.recipe_path(SYSTEMD_BOOT))
    assert bb.data.inherits_class("pki-signer-efi", d)
    assert d.getVar("PKI_SIGNER_EFI_DIR") == d.getVar("B") + "/src/boot"
    assert d.getVar("PKI_SIGNER_EFI_FILES") == "systemd-bootx64.efi"
    # OE-core's do_deploy runs after do_compile, not after do_install: it must wait for the signature too.
    assert "do_pki_signer_sign" in d.getVarFlag("do_deploy", "deps")
    assert "do_pki_signer_sign" in d.getVarFlag("do_install", "deps")
    assert "pki-signer" not in (d.getVarFlag("do_compile", "depends") or "")
    assert foreign(d.getVar("__siggen_taskdeps")["do_compile"]) == []

    run(build, d, *BUILD_TASKS)
    cert = build.topdir / "pki" / "ssig_subca.cert"
    installed = build.topdir / d.getVar("D") / "boot/EFI/BOOT/systemd-bootx64.efi"
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    for path in (installed, deploy / "systemd-bootx64.efi"):
        assert sbverify(path, cert), path
        assert signature_count(path) == 1, path
    # The stubs are signed as part of the UKIs made from them.
    assert signature_count(deploy / "linuxx64.efi.stub") == 0
    assert [r["output"] for r in plan_records(build, d)] == ["systemd-bootx64.efi"]


def test_the_systemd_boot_snippet_finds_the_build_directory_of_older_releases(make_parse_build):
    # systemd 255 (scarthgap) and 256 (styhead) build into src/boot/efi.
    build = make_parse_build()
    build.parse_config()
    older = build.topdir / "systemd-boot_255.21.bb"
    older.write_text(build.recipe_path(SYSTEMD_BOOT).read_text())
    d = parse_with_snippet(build, older)
    assert d.getVar("PKI_SIGNER_EFI_DIR") == d.getVar("B") + "/src/boot/efi"
    assert d.getVar("SYSTEMD_BOOT_BUILD") == d.getVar("PKI_SIGNER_EFI_DIR")
