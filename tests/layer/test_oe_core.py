"""The layer against OE-core's classes as the fixture mirrors them (each stub in
tests/layer/fixture names the openembedded-core commits it mirrors): the task
order of kernel.bbclass in every release the layer supports, kernel.bbclass's
deploy names and symlinks, uki.bbclass's place before do_image_wic, images
that sstate never restores, fakeroot image tasks, and buildhistory."""

import json
import subprocess
import tarfile

import pytest

from bbharness import kernel_image
from conftest import FAST_KEYS, peer
from test_oelint import releases

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
UKI = "recipes/fake-uki/fake-uki-image.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"
AT_COMPILE = 'PKI_SIGNER_EFI_TASK = "do_compile"\n'


def run(build, d, *tasks):
    for task in tasks:
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))


def sbverify(path, cert):
    return subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)


def before(d, task):
    """The tasks of the recipe that TASK runs after, directly or not."""
    seen, todo = set(), [task]
    while todo:
        for dep in d.getVarFlag(todo.pop(), "deps") or []:
            if dep not in seen and d.getVarFlag(dep, "task"):
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("series", releases())
def test_the_kernel_is_signed_in_order_in_every_release(make_parse_build, series):
    # kernel.bbclass up to whinlatter: "addtask deploy after do_populate_sysroot
    # do_packagedata" and an always present do_bundle_initramfs; wrynose adds
    # do_install to the former and the latter only for a bundle.
    build = make_parse_build('OE_FIXTURE_SERIES = "%s"\n' % series)
    d = build.parse(KERNEL)
    deps = d.getVarFlag("do_deploy", "deps")
    assert ("do_install" in deps) == (series == "wrynose")
    assert bool(d.getVarFlag("do_bundle_initramfs", "task")) == (series != "wrynose")
    assert {"do_install", "do_populate_sysroot", "do_packagedata", "do_pki_signer_init"} <= before(d, "do_deploy")
    for task in ("do_configure", "do_compile", "do_install"):
        assert "do_pki_signer_init" not in before(d, task), task
    assert d.getVarFlag("do_deploy", "postfuncs").split() == [
        "pki_signer_sign_efi", "pki_signer_plan_fragment", "sstate_task_postfunc", "pki_signer_plan_merge"]

    # Signing at do_compile: before everything that copies or measures the image.
    build.set_local_conf(build.base_conf + 'OE_FIXTURE_SERIES = "%s"\n' % series + AT_COMPILE)
    build.parse_config()
    d = build.parse(KERNEL)
    assert "do_compile" in d.getVarFlag("do_pki_signer_sign", "deps")
    for task in ("do_install", "do_deploy", "do_sizecheck", "do_populate_sysroot", "do_package") + \
            (("do_bundle_initramfs",) if series != "wrynose" else ()):
        assert "do_pki_signer_sign" in before(d, task), task
    for task in ("do_compile", "do_kernel_link_images", "do_strip", "do_shared_workdir", "do_compile_kernelmodules"):
        assert "do_pki_signer_sign" not in before(d, task), task


def test_the_kernel_keeps_oe_cores_names_and_links(make_build, dev_pki):
    # KERNEL_IMAGE_LINK_NAME empty: no bzImage-MACHINE.bin; KERNEL_IMAGETYPE_SYMLINK
    # off: no bzImage. The layer signs the one real file either way.
    build = make_build(FAST_KEYS + 'KERNEL_IMAGE_LINK_NAME = ""\nKERNEL_IMAGETYPE_SYMLINK = "0"\n', pki=dev_pki)
    d = build.parse(KERNEL)
    run(build, d, "do_compile", "do_pki_signer_init", "do_deploy")
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    assert sorted(p.name for p in deploy.glob("bzImage*")) == [kernel_image(d)]
    assert sbverify(deploy / kernel_image(d), build.topdir / "pki" / "ssig_subca.cert").returncode == 0
    [record] = [json.loads(line) for line in (deploy / "signing-plan.json").read_text().splitlines()]
    assert record["output"] == kernel_image(d) and "links" not in record

    # Another kernel package name (a second kernel) deploys into a subdirectory.
    build.set_local_conf(build.base_conf + FAST_KEYS + 'KERNEL_PACKAGE_NAME = "kernel-alt"\n')
    build.parse_config()
    d = build.parse(KERNEL)
    assert d.getVar("KERNEL_DEPLOYSUBDIR") == "kernel-alt"
    assert d.getVar("PKI_SIGNER_EFI_FILES") == "kernel-alt/" + kernel_image(d)


def test_the_uki_is_signed_before_wic_packs_it_into_the_esp(make_build, dev_pki):
    build = make_build(FAST_KEYS + 'IMAGE_FSTYPES:pn-fake-uki-image = "wic"\n', pki=dev_pki)
    d = build.parse(UKI)
    # uki.bbclass: addtask uki after do_rootfs before do_deploy do_image_complete do_image_wic
    assert "do_uki" in d.getVarFlag("do_image_wic", "deps")
    assert "do_uki" in d.getVarFlag("do_image_complete", "deps")
    assert d.getVar("IMAGE_EFI_BOOT_FILES") == "uki.efi;EFI/Linux/uki.efi"
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki", "do_image", "do_image_wic", "do_image_complete")
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    wic = deploy / (d.getVar("IMAGE_LINK_NAME") + ".wic")
    assert wic.is_symlink() and wic.name == "fake-uki-image-testmachine.rootfs.wic"
    with tarfile.open(wic) as t:
        t.extract("esp/EFI/Linux/uki.efi", build.topdir / "wic", filter="data")
    packed = build.topdir / "wic/esp/EFI/Linux/uki.efi"
    assert packed.read_bytes() == (deploy / "uki.efi").read_bytes()
    assert sbverify(packed, build.topdir / "pki" / "ssig_subca.cert").returncode == 0


def test_an_image_is_built_again_not_restored_from_sstate(make_build, dev_pki):
    # image.bbclass: SSTATE_SKIP_CREATION:task-image-complete = '1'. sstate
    # installs IMGDEPLOYDIR into DEPLOY_DIR_IMAGE but keeps no package of it.
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(UKI)
    assert d.getVarFlag("do_image_complete", "fakeroot") == "1"
    for task in ("do_uki", "do_pki_signer_init"):
        assert not d.getVarFlag(task, "fakeroot"), task
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki", "do_image", "do_image_ext4", "do_image_complete")
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    assert (deploy / (d.getVar("IMAGE_NAME") + ".ext4")).is_file()
    assert (deploy / "fake-uki-image-testmachine.rootfs.ext4").is_symlink()
    sstate = build.topdir / "sstate-cache"
    assert not sstate.exists() or not [p for p in sstate.iterdir() if p.name.endswith("_image_complete")]
    assert not build.run_task(d, "do_image_complete_setscene")


def test_buildhistory_changes_no_signing_task(make_parse_build, dev_pki):
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    guestos = build.parse(GUESTOS)
    plain = build.task_hashes(guestos, ["do_image_complete"])

    # As users enable it, with a postfunc of their own on do_deploy.
    build.set_local_conf(build.base_conf + FAST_KEYS + 'INHERIT += "buildhistory"\n'
                         'do_deploy[postfuncs] += "buildhistory_emit_sysroot"\n')
    build.parse_config()
    kernel = build.parse(KERNEL)
    # sstate.bbclass keeps buildhistory's postfuncs after its own; the plan is
    # merged last, once sstate has installed the output.
    assert kernel.getVarFlag("do_deploy", "postfuncs").split() == [
        "pki_signer_sign_efi", "pki_signer_plan_fragment", "sstate_task_postfunc", "buildhistory_emit_sysroot",
        "pki_signer_plan_merge"]
    assert kernel.getVarFlag("do_populate_sysroot", "postfuncs").split() == [
        "sstate_task_postfunc", "buildhistory_emit_sysroot"]
    guestos = build.parse(GUESTOS)
    assert guestos.getVar("IMAGE_POSTPROCESS_COMMAND").split() == [
        "buildhistory_get_imageinfo", "pki_signer_guestos_sign"]
    taskdeps = guestos.getVar("__siggen_taskdeps")["do_image_complete"]
    assert "pki_signer_guestos_sign" in taskdeps and "buildhistory_get_imageinfo" not in taskdeps
    assert build.task_hashes(guestos, ["do_image_complete"]) == plain
