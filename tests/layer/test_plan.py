"""The signing plan as a release engineer uses it: tmp/deploy/images/MACHINE/
signing-plan.json names the files in DEPLOY_DIR_IMAGE, also after a restore
from sstate and after rm_work, and `pki-signer resign` on it re-signs the
deployed files.

The tasks run with bb.build.exec_task, as bitbake-worker runs them, with the
fixture's sstate.bbclass: sstate_task_postfunc installs DEPLOYDIR into
DEPLOY_DIR_IMAGE with a manifest, the next run of the task removes what the
manifest lists, and TASK_setscene installs the stored output again."""

import json
import shutil
import subprocess

import pytest

from bbharness import kernel_image
from conftest import FAST_KEYS, peer
from test_release import production_key

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
EFIAPP = "recipes/fake-efiapp/fake-efiapp_1.0.bb"
UKI = "recipes/fake-uki/fake-uki-image.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"


def run(build, d, *tasks):
    for task in tasks:
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))


def deploy_dir(build, d):
    return build.topdir / d.getVar("DEPLOY_DIR_IMAGE")


def records(plan):
    return [json.loads(line) for line in plan.read_text().splitlines() if line.strip()]


def outputs(plan):
    return sorted(r["output"] for r in records(plan))


def build_kernel_and_app(build):
    kernel = build.parse(KERNEL)
    run(build, kernel, "do_compile", "do_install", "do_pki_signer_init", "do_deploy")
    app = build.parse(EFIAPP)
    run(build, app, "do_pki_signer_init", "do_deploy")
    return kernel, app


def no_lock_or_temp_files(deploy):
    return [str(p) for p in deploy.rglob("*") if p.name.endswith((".lock", ".tmp"))]


def sbverify(path, cert):
    return subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)


def test_the_plan_names_the_deployed_files_not_the_work_directory(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    kernel, app = build_kernel_and_app(build)
    deploy = deploy_dir(build, kernel)
    plan = deploy / "signing-plan.json"
    recs = {r["output"]: r for r in records(plan)}
    assert sorted(recs) == ["app.efi", kernel_image(kernel)]
    for name, r in recs.items():
        # Relative to the plan's directory, and absolute in DEPLOY_DIR_IMAGE.
        assert r["artifact"] == name
        assert r["output_abs"] == r["artifact_abs"] == str(deploy / name)
        assert str(build.topdir / "tmp" / "work") not in json.dumps(r)
        assert r["sha256_after"] == hashlib_sha256(deploy / name)
        assert r["role"] == "ssig_subca"
    # kernel.bbclass's other names of the kernel, for people reading the plan.
    assert recs[kernel_image(kernel)]["links"] == ["bzImage", "bzImage-testmachine.bin"]
    # One fragment per signing task, carried by sstate with the signed files.
    assert sorted(p.name for p in (deploy / "signing-plan.d").iterdir()) == [
        "fake-efiapp.do_deploy.json", "fake-kernel.do_deploy.json"]
    assert (build.topdir / kernel.getVar("DEPLOYDIR") / "signing-plan.d" / "fake-kernel.do_deploy.json").is_file()
    manifest = (build.topdir / "tmp/sstate-control/manifest-fake-kernel.do_deploy").read_text()
    assert str(deploy / "signing-plan.d" / "fake-kernel.do_deploy.json") in manifest.split()
    assert no_lock_or_temp_files(deploy) == []
    # pki-signer's own record and its lock stay in WORKDIR, and are consumed.
    assert not list((build.topdir / kernel.getVar("WORKDIR") / "pki-signer-plan").glob("*"))


def hashlib_sha256(path):
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerunning_or_renaming_leaves_no_duplicate_or_stale_record(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    kernel, _ = build_kernel_and_app(build)
    deploy = deploy_dir(build, kernel)
    plan = deploy / "signing-plan.json"
    run(build, kernel, "do_deploy")
    run(build, kernel, "do_deploy")
    first = kernel_image(kernel)
    assert outputs(plan) == ["app.efi", first]

    # A new kernel version deploys under a new name: sstate removes the old
    # files with the old fragment, and the plan follows.
    build.set_local_conf(build.base_conf + FAST_KEYS + 'KERNEL_IMAGE_NAME = "renamed"\n')
    build.parse_config()
    kernel = build.parse(KERNEL)
    run(build, kernel, "do_deploy")
    assert not (deploy / first).exists()
    assert outputs(plan) == ["app.efi", "bzImage-renamed.bin"]
    assert records(plan)[1]["sha256_after"] == hashlib_sha256(deploy / "bzImage-renamed.bin")

    # A file removed from the deploy directory by hand drops out at the next merge.
    (deploy / "app.efi").unlink()
    build.run_func(kernel, "pki_signer_plan_merge")
    assert outputs(plan) == ["bzImage-renamed.bin"]


def test_a_restore_from_sstate_brings_back_the_plan(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    kernel, app = build_kernel_and_app(build)
    deploy = deploy_dir(build, kernel)
    plan = deploy / "signing-plan.json"
    before = plan.read_text()

    # rm -rf tmp: the deploy directory, the work directories and the
    # manifests are gone, the sstate cache is not.
    shutil.rmtree(build.topdir / "tmp")
    build.parse_config()
    run(build, build.parse(KERNEL), "do_deploy_setscene")
    # Under the name of the build that stored it (its DATETIME), not of this parse.
    assert outputs(plan) == [kernel_image(kernel)]
    run(build, build.parse(EFIAPP), "do_deploy_setscene")
    assert plan.read_text() == before
    cert = build.topdir / "pki" / "ssig_subca.cert"
    for name in ("bzImage", "app.efi"):
        result = sbverify(deploy / name, cert)
        assert result.returncode == 0, result.stdout + result.stderr
    assert no_lock_or_temp_files(deploy) == []


def test_the_uki_fragment_goes_straight_into_the_deploy_directory(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(UKI)
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki")
    deploy = deploy_dir(build, d)
    assert (deploy / "signing-plan.d" / "fake-uki-image.do_uki.json").is_file()
    assert outputs(deploy / "signing-plan.json") == ["uki.efi"]


def guestos_supported(pki_signer):
    probe = subprocess.run([str(pki_signer), "guestos", "sign", "--help"], capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.parametrize("how", ["rm_work", "sstate_restore"])
def test_resign_of_the_deploy_directory_plan_re_signs_the_deployed_files(
        make_build, dev_pki, pki_signer, tmp_path, how):
    build = make_build(FAST_KEYS, pki=dev_pki)
    kernel, app = build_kernel_and_app(build)
    expected = ["app.efi", kernel_image(kernel)]
    with_guestos = guestos_supported(pki_signer)
    image_tasks = ("do_pki_signer_init", "do_rootfs", "do_image", "do_image_squashfs", "do_image_complete")
    if with_guestos:
        guestos = build.parse(GUESTOS)
        run(build, guestos, *image_tasks)
        expected.append("guestos/fake-guestos-imageos-1.conf")
    deploy = deploy_dir(build, kernel)
    plan = deploy / "signing-plan.json"
    assert outputs(plan) == sorted(expected)

    if how == "rm_work":
        shutil.rmtree(build.topdir / "tmp" / "work")
    else:
        shutil.rmtree(build.topdir / "tmp")
        build.parse_config()
        run(build, build.parse(KERNEL), "do_deploy_setscene")
        run(build, build.parse(EFIAPP), "do_deploy_setscene")
        if with_guestos:
            # OE-core makes no sstate package of do_image_complete
            # (SSTATE_SKIP_CREATION): an image is built and signed again.
            guestos = build.parse(GUESTOS)
            assert not build.run_task(guestos, "do_image_complete_setscene")
            run(build, guestos, *image_tasks)
        # Restored without running do_deploy: no DEPLOYDIR copy to re-sign by mistake.
        assert not (build.topdir / kernel.getVar("DEPLOYDIR")).exists()
    assert outputs(plan) == sorted(expected)

    # The release engineer's side: production keys, and resign on the plan
    # in the deploy directory, as the layer README says.
    key, cert = production_key(tmp_path / "release", "release-signer")
    # cml verifies GuestOS signatures with RSA keys only.
    cml_key, cml_cert = tmp_path / "release" / "cml.key", tmp_path / "release" / "cml.pem"
    subprocess.run([peer("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(cml_key),
                    "-subj", "/O=Example Production/CN=release-cml", "-days", "30",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign", "-out", str(cml_cert)],
                   check=True, capture_output=True)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"ssig_subca": {"key": str(key), "cert": str(cert), "trust": [str(cert)]},
                                "ssig_cml": {"key": str(cml_key), "cert": str(cml_cert), "trust": [str(cml_cert)]}}))
    result = subprocess.run([str(pki_signer), "resign", "--plan", str(plan), "--keys", str(keys)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "%d resigned" % len(expected) in result.stdout, result.stdout

    dev_cert = build.topdir / "pki" / "ssig_subca.cert"
    for name in ("bzImage", "bzImage-testmachine.bin", kernel_image(kernel), "app.efi"):
        released = sbverify(deploy / name, cert)
        assert released.returncode == 0, name + released.stdout + released.stderr
        assert sbverify(deploy / name, dev_cert).returncode != 0, name
    if with_guestos:
        verify = subprocess.run([str(pki_signer), "guestos", "verify", str(deploy / expected[-1]),
                                 "--trust", str(cml_cert)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    assert no_lock_or_temp_files(deploy) == []
