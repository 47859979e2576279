"""Air-gapped release signing from a Yocto build, as the layer README shows it:
with PKI_SIGNER_OFFLINE_KEYS, the image writes signing-request.json next to
the images; the signing host runs `pki-signer offline sign` on that file
alone, and `offline complete` on the build host puts release signatures on
the deployed files, which sbverify accepts under the release certificate and
refuses under the development one."""

import json
import subprocess

from conftest import FAST_KEYS
from test_plan import run, sbverify
from test_release import production_key

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
UKI = "recipes/fake-uki/fake-uki-image.bb"


def test_the_image_writes_the_request_and_offline_sign_and_complete_release_sign_the_deploy_dir(
        make_build, dev_pki, pki_signer, tmp_path):
    key, cert = production_key(tmp_path / "release", "release-signer")
    # The build host knows the production certificates only.
    public = tmp_path / "build-keys.json"
    public.write_text(json.dumps({"trust": [str(cert)], "ssig_subca": {"cert": str(cert)}}))
    build = make_build(FAST_KEYS + 'PKI_SIGNER_OFFLINE_KEYS = "%s"\n' % public, pki=dev_pki)

    kernel = build.parse(KERNEL)
    assert "do_pki_signer_request" not in kernel.getVar("__BBTASKS"), "only images write the request"
    run(build, kernel, "do_compile", "do_install", "do_pki_signer_init", "do_deploy")
    image = build.parse(UKI)
    assert "do_image_complete" in image.getVarFlag("do_pki_signer_request", "deps")
    assert image.getVarFlag("do_pki_signer_request", "nostamp") == "1"
    run(build, image, "do_pki_signer_init", "do_rootfs", "do_uki", "do_image", "do_image_complete",
        "do_pki_signer_request")

    deploy = build.topdir / image.getVar("DEPLOY_DIR_IMAGE")
    request = deploy / "signing-request.json"
    items = json.loads(request.read_text())["items"]
    kernel_file = (deploy / "bzImage").resolve().name
    assert sorted(it["artifact_abs"] for it in items) == sorted(
        str(deploy / n) for n in (kernel_file, "uki.efi"))
    # Kilobytes of digests and certificates, never the artifacts.
    assert request.stat().st_size < 64 * 1024

    # The signing host: the request and the keys, no artifact.
    host = tmp_path / "signing-host"
    host.mkdir()
    (host / "request.json").write_bytes(request.read_bytes())
    (host / "keys.json").write_text(json.dumps(
        {"trust": [str(cert)], "ssig_subca": {"key": str(key), "cert": str(cert)}}))
    signed = subprocess.run([str(pki_signer), "offline", "sign", "request.json", "--keys", "keys.json",
                             "-o", "response.json", "--yes"], capture_output=True, text=True, cwd=host)
    assert signed.returncode == 0, signed.stdout + signed.stderr

    done = subprocess.run([str(pki_signer), "offline", "complete", str(host / "response.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    dev_cert = build.topdir / "pki" / "ssig_subca.cert"
    for name in ("bzImage", kernel_file, "uki.efi"):
        released = sbverify(deploy / name, cert)
        assert released.returncode == 0, name + released.stdout + released.stderr
        assert sbverify(deploy / name, dev_cert).returncode != 0, name


def test_without_offline_keys_there_is_no_request_task(make_parse_build):
    build = make_parse_build(FAST_KEYS)
    d = build.parse(UKI)
    assert "do_pki_signer_request" not in d.getVar("__BBTASKS")
