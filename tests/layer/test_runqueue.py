"""The layer run the way bitbake runs it: `bitbake` itself, with its server,
cooker, runqueue, bitbake-worker and setscene tasks, on the fixture's recipes.

PyPI's bitbake-setup has BitBake's bb library but not bitbake's bin/
scripts: bbharness.bitbake_tree puts test-only bitbake, bitbake-server and
bitbake-worker (bbbin/) beside a copy of bb. Restores from sstate go through
the fixture's sstate.bbclass: its BB_HASHCHECK_FUNCTION finds packages by the
task's unihash, and the runqueue then runs TASK_setscene instead of TASK.

The story is the layer README's: a developer builds from an empty build
directory, the PKI appears, the kernel and the UKI are signed in
DEPLOY_DIR_IMAGE and the plan there names them; after `rm -rf tmp` the kernel
comes back from sstate, signed, with its plan, without do_deploy running; a
release engineer re-signs it from that plan with the release keys."""

import hashlib
import json
import shutil
import subprocess

import pytest

# The parts of bb that `bitbake` needs beyond what the other tests use.
for module in ("bb.main", "bb.runqueue", "bb.server.process"):
    pytest.importorskip(module)

from bbharness import deployed_kernel_image, run_bitbake  # noqa: E402
from conftest import FAST_KEYS, peer  # noqa: E402

# The fixture has no Rust toolchain to build pki-signer-native: the signing
# tasks use the pki-signer under test (PKI_SIGNER_BIN, set by make_build).
CONF = FAST_KEYS + 'PKI_SIGNER_DEPENDS = ""\n'

DEPLOY = "tmp/deploy/images/testmachine"
# kernel.bbclass deploys bzImage--PV-PR-MACHINE-DATETIME.bin, DATETIME being
# the build's (bbharness.kernel_image); these link to it.
KERNEL_LINKS = ("bzImage", "bzImage-testmachine.bin")


def bitbake(tree, build, *targets):
    """Run `bitbake TARGETS` in the build directory; bitbake's output."""
    result = run_bitbake(tree, build.topdir, *targets)
    output = result.stdout + result.stderr
    why = output
    # What bitbake-server and bitbake-worker print goes to the server's log.
    server_log = build.topdir / "bitbake-cookerdaemon.log"
    if server_log.exists():
        why += "\n--- end of %s:\n%s" % (server_log, "\n".join(server_log.read_text().splitlines()[-40:]))
    assert result.returncode == 0, why
    # Also the worker's re-parse: "When reparsing ..., the basehash value changed".
    assert "ERROR:" not in output, why
    return output


def tasks_run(build, pn, pv="1.0"):
    """The tasks bitbake-worker ran for PN since WORKDIR was made, in order (log.task_order)."""
    order = build.topdir / "tmp" / "work" / pn / pv / "temp" / "log.task_order"
    return [line.split()[1] for line in order.read_text().splitlines()]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sbverify(path, cert):
    return subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)


def assert_signed(path, cert):
    result = sbverify(path, cert)
    assert result.returncode == 0, "%s under %s: %s%s" % (path, cert, result.stdout, result.stderr)


def assert_plan_names(build, names):
    """signing-plan.json in DEPLOY_DIR_IMAGE names exactly NAMES, as deployed, with their current content."""
    deploy = build.topdir / DEPLOY
    plan = deploy / "signing-plan.json"
    records = [json.loads(line) for line in plan.read_text().splitlines() if line.strip()]
    assert sorted(r["output"] for r in records) == sorted(names), records
    for r in records:
        assert r["output_abs"] == str(deploy / r["output"])
        assert str(build.topdir / "tmp" / "work") not in json.dumps(r), r
        assert r["sha256_after"] == sha256(deploy / r["output"])
    assert [p for p in deploy.rglob("*") if p.name.endswith((".lock", ".tmp"))] == []


def test_bitbake_signs_restores_from_sstate_and_the_plan_re_signs_the_deployed_kernel(
        make_build, bitbake_tree, dev_pki, pki_signer, tmp_path):
    peer("sbverify")
    build = make_build(CONF)
    deploy = build.topdir / DEPLOY
    dev_cert = build.topdir / "pki" / "ssig_subca.cert"
    assert not (build.topdir / "pki").exists()

    # 1. The first build, from an empty build directory. do_pki_signer_init
    # creates the PKI in the runqueue, after the server parsed the recipes
    # without it; bitbake-worker parses them again with it for do_deploy.
    bitbake(bitbake_tree, build, "fake-kernel", "fake-uki-image")
    ran = tasks_run(build, "fake-kernel")
    assert ran.index("do_pki_signer_init") < ran.index("do_deploy"), ran
    assert "do_uki" in tasks_run(build, "fake-uki-image")
    kernel = deployed_kernel_image(deploy)
    for name in (kernel,) + KERNEL_LINKS + ("uki.efi",):
        assert_signed(deploy / name, dev_cert)
    assert_plan_names(build, [kernel, "uki.efi"])
    # The image tasks ran in bitbake's fakeroot worker, with FAKEROOTENV; the
    # other tasks without (FAKEROOTNOENV). Shell tasks' scripts show it.
    image_temp = build.topdir / "tmp/work/fake-uki-image/1.0/temp"
    assert 'export PSEUDO_DISABLED="0"' in (image_temp / "run.do_image_ext4").read_text()
    kernel_temp = build.topdir / "tmp/work/fake-kernel/1.0/temp"
    assert 'export PSEUDO_UNLOAD="1"' in (kernel_temp / "run.do_deploy").read_text()

    # 2. The second build. The first one's signing tasks ran after a nostamp
    # init (no PKI at parse time), so this one may sign once more (README,
    # "Where the PKI goes"); from now on the task hashes stay the same.
    bitbake(bitbake_tree, build, "fake-kernel")
    # Signed again, so deployed again, under this build's DATETIME.
    kernel = deployed_kernel_image(deploy)
    assert_signed(deploy / kernel, dev_cert)
    assert_plan_names(build, [kernel, "uki.efi"])
    signed = sha256(deploy / kernel)

    # 3. rm -rf tmp: the deploy directory, the work directories and the stamps
    # are gone; sstate-cache and the PKI stay. bitbake restores the kernel with
    # do_deploy_setscene and runs no do_deploy.
    shutil.rmtree(build.topdir / "tmp")
    output = bitbake(bitbake_tree, build, "fake-kernel")
    assert "fake-kernel_1.0.bb:do_deploy_setscene)" in output, output
    ran = tasks_run(build, "fake-kernel")
    assert "do_deploy_setscene" in ran and "do_deploy" not in ran, ran
    # What the second build signed and stored, not a new signature.
    assert deployed_kernel_image(deploy) == kernel
    assert sha256(deploy / kernel) == signed
    for name in (kernel,) + KERNEL_LINKS:
        assert_signed(deploy / name, dev_cert)
    # The plan comes back with the fragment sstate restored.
    assert_plan_names(build, [kernel])
    assert (deploy / "signing-plan.d" / "fake-kernel.do_deploy.json").is_file()

    # 4. The release engineer, as in the README's "Release engineers": a
    # release PKI of its own (conftest's dev_pki, made by `pki-signer pki init
    # --uefi --key-type ec:prime256v1`; not the build's PKI), keys.json, and
    # `pki-signer resign` on the plan in DEPLOY_DIR_IMAGE.
    host = tmp_path / "signing-host"
    shutil.copytree(dev_pki, host / "release")
    keys = host / "keys.json"
    keys.write_text(json.dumps({
        "trust": ["release/ssig_rootca.cert"],
        "ssig_subca": {"key": "release/ssig_subca.key", "cert": "release/ssig_subca.cert"},
    }))
    plan = deploy / "signing-plan.json"
    resign = [str(pki_signer), "resign", "--plan", str(plan), "--keys", str(keys)]
    dry = subprocess.run(resign + ["--dry-run"], capture_output=True, text=True, cwd=host)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert sha256(deploy / kernel) == signed, "--dry-run wrote"
    result = subprocess.run(resign, capture_output=True, text=True, cwd=host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 resigned" in result.stdout, result.stdout

    release_cert = host / "release" / "ssig_subca.cert"
    for name in (kernel,) + KERNEL_LINKS:
        assert_signed(deploy / name, release_cert)
        assert sbverify(deploy / name, dev_cert).returncode != 0, "%s still verifies under the development key" % name


def test_bitbake_builds_the_uki_after_what_it_holds_and_again_for_a_new_pcr_key(
        make_build, bitbake_tree, dev_pki, tmp_path):
    # pki-signer-uki in the runqueue: do_uki waits for systemd-boot's
    # do_deploy (the stub), the kernel's do_deploy and the initramfs image,
    # as uki.bbclass makes it, and builds the UKI from what they deployed.
    from ukicheck import STUB, TESTDATA, check_uki, system_file
    stub = system_file(STUB, "systemd-boot-efi")
    osrel = TESTDATA / "os-release"
    # The fixture populates no sysroot, where os-release would come from.
    build = make_build(CONF + 'PKI_SIGNER_TEST_STUB = "%s"\n' % stub +
                       'PKI_SIGNER_UKI_OS_RELEASE:pn-fake-pcr-uki-image = "%s"\n' % osrel, pki=dev_pki)
    deploy = build.topdir / DEPLOY
    pki = build.topdir / "pki"
    bitbake(bitbake_tree, build, "fake-pcr-uki-image")
    assert "do_deploy" in tasks_run(build, "fake-kernel")
    assert "do_deploy" in tasks_run(build, "systemd-boot", "259.5")
    assert "do_image_complete" in tasks_run(build, "core-image-minimal-initramfs")
    image_tasks = tasks_run(build, "fake-pcr-uki-image")
    assert image_tasks.index("do_uki") < image_tasks.index("do_image_complete"), image_tasks
    kernel = deployed_kernel_image(deploy)
    parts = {"linux": (deploy / kernel).read_bytes(), "osrel": osrel.read_bytes(),
             "initrd": (deploy / "core-image-minimal-initramfs-testmachine.cpio.gz").read_bytes()}
    check_uki(deploy / "uki.efi", pki / "ssig_subca.cert", pki / "tpm2-pcr-public.pem", tmp_path / "first", parts)
    # The UKI holds the kernel its do_deploy signed; the plan names both.
    assert_signed(deploy / kernel, pki / "ssig_subca.cert")
    assert_plan_names(build, [kernel, "uki.efi"])

    # A new PCR key, the Secure Boot key unchanged: bitbake builds and signs
    # the UKI again, and signs no kernel again.
    openssl = peer("openssl")
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(pki / "tpm2-pcr-private.pem")], check=True, capture_output=True)
    subprocess.run([openssl, "pkey", "-in", str(pki / "tpm2-pcr-private.pem"), "-pubout",
                    "-out", str(pki / "tpm2-pcr-public.pem")], check=True, capture_output=True)
    kernel_tasks = tasks_run(build, "fake-kernel")
    bitbake(bitbake_tree, build, "fake-pcr-uki-image")
    assert tasks_run(build, "fake-kernel") == kernel_tasks
    assert "do_uki" in tasks_run(build, "fake-pcr-uki-image")[len(image_tasks):]
    check_uki(deploy / "uki.efi", pki / "ssig_subca.cert", pki / "tpm2-pcr-public.pem", tmp_path / "second", parts)
    assert_plan_names(build, [kernel, "uki.efi"])
