"""The signing tasks, run by bitbake on real EFI binaries with the pki-signer
binary, and their output checked by sbverify and openssl."""

import hashlib
import os
import subprocess

import pytest

from bbharness import kernel_image
from conftest import FAST_KEYS, peer

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
EFIAPP = "recipes/fake-efiapp/fake-efiapp_1.0.bb"
UKI = "recipes/fake-uki/fake-uki-image.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"


def run(build, d, *tasks):
    for task in tasks:
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))


def sbverify(path, cert):
    tool = peer("sbverify")
    return subprocess.run([tool, "--cert", str(cert), str(path)], capture_output=True, text=True)


def signature_count(path):
    tool = peer("sbverify")
    out = subprocess.run([tool, "--list", str(path)], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("signature "))


def test_the_first_build_creates_the_pki_and_deploys_a_signed_kernel(make_build):
    build = make_build(FAST_KEYS)
    d = build.parse(KERNEL)
    run(build, d, "do_compile", "do_install", "do_pki_signer_init", "do_deploy")

    pki = build.topdir / "pki"
    assert (pki / "pki.json").is_file() and (pki / "DB.esl").is_file(), "PKI_SIGNER_UEFI defaults to 1"
    deploy = build.topdir / d.getVar("DEPLOYDIR")
    # Every name kernel.bbclass deploys reaches the one signed file.
    assert os.path.islink(deploy / "bzImage")
    for name in ("bzImage", "bzImage-testmachine.bin", kernel_image(d)):
        result = sbverify(deploy / name, pki / "ssig_subca.cert")
        assert result.returncode == 0, result.stdout + result.stderr
    assert signature_count(deploy / "bzImage") == 1
    # A certificate of another role does not verify it.
    assert sbverify(deploy / "bzImage", pki / "ssig_cml.cert").returncode != 0
    log = build.task_log(d, "do_deploy")
    assert "signing %s with ssig_subca" % kernel_image(d) in log


def test_the_signing_function_alone_signs_what_deploydir_holds(make_build, dev_pki, efi_app):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(EFIAPP)
    deploy = build.topdir / d.getVar("DEPLOYDIR")
    deploy.mkdir(parents=True)
    (deploy / "app.efi").write_bytes(efi_app.read_bytes())
    build.run_func(d, "pki_signer_sign_efi")
    result = sbverify(deploy / "app.efi", build.topdir / "pki" / "ssig_subca.cert")
    assert result.returncode == 0, result.stdout + result.stderr


def test_signing_is_reproducible_with_source_date_epoch(make_build, dev_pki):
    # RSA (PKCS#1 v1.5) signatures are deterministic, so the signed file is the
    # same byte for byte when SOURCE_DATE_EPOCH fixes the signing time. The
    # UEFI DB role is RSA; its certificate is DB.crt, which pki.json names.
    build = make_build(FAST_KEYS + 'PKI_SIGNER_EFI_ROLE = "DB"\n', pki=dev_pki)
    d = build.parse(KERNEL)
    assert d.getVarFlag("do_deploy", "file-checksums").split() == ["%s:True" % (build.topdir / "pki" / "DB.crt")]
    signed = build.topdir / d.getVar("DEPLOYDIR") / "bzImage"
    run(build, d, "do_compile", "do_pki_signer_init", "do_deploy")
    first = signed.read_bytes()
    run(build, d, "do_deploy")
    assert signed.read_bytes() == first


def test_keep_unsigned_deploys_the_original_too(make_build, dev_pki, efi_app):
    build = make_build(FAST_KEYS + 'PKI_SIGNER_EFI_KEEP_UNSIGNED = "1"\n', pki=dev_pki)
    d = build.parse(KERNEL)
    run(build, d, "do_compile", "do_pki_signer_init", "do_deploy")
    deploy = build.topdir / d.getVar("DEPLOYDIR")
    unsigned = deploy / (kernel_image(d) + ".unsigned")
    assert unsigned.read_bytes() == efi_app.read_bytes()
    assert signature_count(unsigned) == 0
    assert sbverify(deploy / "bzImage", build.topdir / "pki" / "ssig_subca.cert").returncode == 0


def test_uki_from_uki_bbclass_is_signed_in_deploy_dir_image(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(UKI)
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki")
    uki = build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "uki.efi"
    result = sbverify(uki, build.topdir / "pki" / "ssig_subca.cert")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_production_key_replaces_the_role_and_no_dev_pki_is_made(make_build):
    openssl = peer("openssl")
    build = make_build()
    key, cert = build.topdir / "release.key", build.topdir / "release.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=Release DB signer", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    build.set_local_conf(build.base_conf +
                         'PKI_SIGNER_KEY[ssig_subca] = "%s"\nPKI_SIGNER_CERT[ssig_subca] = "%s"\n' % (key, cert))
    d = build.parse(EFIAPP)
    assert d.getVarFlag("do_deploy", "file-checksums").split() == ["%s:True" % cert]
    run(build, d, "do_pki_signer_init", "do_deploy")
    assert "no development PKI needed" in build.task_log(d, "do_pki_signer_init")
    assert not (build.topdir / "pki").exists()
    app = build.topdir / d.getVar("DEPLOYDIR") / "app.efi"
    result = sbverify(app, cert)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_file_fails_the_task_and_names_it(make_build, dev_pki):
    build = make_build(FAST_KEYS + 'PKI_SIGNER_EFI_FILES:pn-fake-efiapp = "missing.efi"\n', pki=dev_pki)
    d = build.parse(EFIAPP)
    assert build.run_task(d, "do_pki_signer_init")
    assert not build.run_task(d, "do_deploy")
    assert "missing.efi does not exist (PKI_SIGNER_EFI_FILES)" in build.task_log(d, "do_deploy")


def test_signing_tasks_record_the_plan(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(EFIAPP)
    plan = build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "signing-plan.json"
    assert build.run_task(d, "do_pki_signer_init")
    assert build.run_task(d, "do_deploy"), build.task_log(d, "do_deploy")
    assert plan.is_file()
    # The deployed file, not DEPLOYDIR's copy (test_plan.py has the details).
    assert '"output": "app.efi"' in plan.read_text()


def test_guestos_image_is_hashed_and_signed(make_build, dev_pki, pki_signer):
    build = make_build(FAST_KEYS, pki=dev_pki)
    probe = subprocess.run([str(pki_signer), "guestos", "sign", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("pki-signer has no guestos sign yet: " + probe.stderr.strip().splitlines()[-1])
    d = build.parse(GUESTOS)
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_image", "do_image_squashfs")
    if not build.run_task(d, "do_image_complete"):
        log = build.task_log(d, "do_image_complete")
        if "not implemented" in log:
            pytest.skip("pki-signer guestos sign is not implemented yet")
        pytest.fail(log)
    out = build.topdir / d.getVar("IMGDEPLOYDIR") / "guestos"
    base = "fake-guestos-imageos-1"
    root = out / base / "root.img"
    # The IMAGE_LINK_NAME symlink of image.bbclass's create_symlinks.
    assert root.read_bytes() == (build.topdir / d.getVar("IMGDEPLOYDIR") /
                                 "fake-guestos-image-testmachine.rootfs.squashfs").read_bytes()
    conf = (out / (base + ".conf")).read_text()
    assert 'image_sha2_256: "%s"' % hashlib.sha256(root.read_bytes()).hexdigest() in conf
    assert "image_size: %d" % root.stat().st_size in conf

    # cml checks NAME.sig, a SHA-512 signature over NAME.conf, with the first
    # certificate of NAME.cert: that is the pki's ssig_cml certificate.
    openssl = peer("openssl")
    pubkey = build.topdir / "ssig_cml.pub"
    subprocess.run([openssl, "x509", "-in", str(out / (base + ".cert")), "-pubkey", "-noout", "-out", str(pubkey)],
                   check=True, capture_output=True)
    verified = subprocess.run([openssl, "dgst", "-sha512", "-verify", str(pubkey),
                               "-signature", str(out / (base + ".sig")), str(out / (base + ".conf"))],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fingerprint = subprocess.run([openssl, "x509", "-in", str(out / (base + ".cert")), "-noout", "-fingerprint",
                                  "-sha256"], check=True, capture_output=True, text=True).stdout
    assert fingerprint.split("=", 1)[1].strip().replace(":", "").lower() == \
        d.expand("${@pki_signer_fingerprint(d, 'ssig_cml')}")

