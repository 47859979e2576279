"""Signing with a key in a PKCS#11 token (SoftHSM2) from bitbake: the module
and its environment come from local.conf (PKI_SIGNER_PKCS11_MODULE,
PKI_SIGNER_PKCS11_ENV), reach the signing functions only, and stay out of
every task signature."""

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FAST_KEYS, peer

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"
MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
SO_PIN, PIN = "12345678", "4321"
PKCS11_VARS = ("SOFTHSM2_CONF", "PKI_SIGNER_PKCS11_MODULE", "PKI_SIGNER_PKCS11_PIN")


class Token:
    def __init__(self, conf, pin_file, cert):
        self.conf, self.pin_file, self.cert = conf, pin_file, cert
        self.key_uri = "pkcs11:token=layer;object=ssig_subca?pin-source=file:%s" % pin_file

    def local_conf(self, conf=None):
        return ('PKI_SIGNER_KEY[ssig_subca] = "%s"\n'
                'PKI_SIGNER_CERT[ssig_subca] = "%s"\n'
                'PKI_SIGNER_PKCS11_MODULE = "%s"\n'
                'PKI_SIGNER_PKCS11_ENV = "SOFTHSM2_CONF=%s"\n' % (self.key_uri, self.cert, MODULE, conf or self.conf))


@pytest.fixture
def token(tmp_path, dev_pki, monkeypatch):
    """A SoftHSM2 token holding the ssig_subca key of a PKI made by pki-signer
    pki init. Its SOFTHSM2_CONF is private: only the child processes that set
    it up see it, never the test process and so never a bitbake task."""
    softhsm, p11tool, openssl = peer("softhsm2-util"), peer("pkcs11-tool"), peer("openssl")
    if not MODULE.is_file():
        peer(str(MODULE))
    for var in PKCS11_VARS:
        monkeypatch.delenv(var, raising=False)
    hsm = tmp_path / "hsm"
    (hsm / "tokens").mkdir(parents=True)
    conf = hsm / "softhsm2.conf"
    conf.write_text("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % (hsm / "tokens"))
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))

    def run(*args):
        subprocess.run(args, check=True, capture_output=True, env=env, cwd=hsm)

    run(softhsm, "--init-token", "--free", "--label", "layer", "--so-pin", SO_PIN, "--pin", PIN)
    der = hsm / "ssig_subca.key.der"
    run(openssl, "pkcs8", "-topk8", "-nocrypt", "-in", str(dev_pki / "ssig_subca.key"), "-outform", "DER",
        "-out", str(der))
    run(p11tool, "--module", str(MODULE), "--login", "--pin", PIN, "--write-object", str(der),
        "--type", "privkey", "--usage-sign", "--label", "ssig_subca", "--id", "01")
    der.unlink()
    # pki-signer finds the key's type and public half in the object of the same id.
    cert_der = hsm / "ssig_subca.crt.der"
    run(openssl, "x509", "-in", str(dev_pki / "ssig_subca.cert"), "-outform", "DER", "-out", str(cert_der))
    run(p11tool, "--module", str(MODULE), "--login", "--pin", PIN, "--write-object", str(cert_der),
        "--type", "cert", "--label", "ssig_subca", "--id", "01")
    pin_file = hsm / "pin"
    pin_file.write_text(PIN + "\n")
    # The certificate as a release engineer has it: a file beside no key.
    cert = hsm / "ssig_subca.pem"
    shutil.copyfile(dev_pki / "ssig_subca.cert", cert)
    return Token(conf, pin_file, cert)


def sbverify(path, cert):
    return subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)


def test_the_kernel_is_signed_by_the_token_with_the_module_environment_of_local_conf(make_build, token):
    assert not any(var in os.environ for var in PKCS11_VARS)
    build = make_build(FAST_KEYS + token.local_conf())
    d = build.parse(KERNEL)
    for task in ("do_compile", "do_install", "do_pki_signer_init", "do_deploy"):
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))
    # Every role has its key: the token's key signed, not a development PKI's.
    assert not (build.topdir / "pki").exists()
    deployed = build.topdir / d.getVar("DEPLOYDIR") / "bzImage"
    result = sbverify(deployed, token.cert)
    assert result.returncode == 0, result.stdout + result.stderr

    # The signing function exported the module and its environment; the
    # other tasks' scripts do not mention them.
    temp = Path(d.getVar("T"))
    # bitbake links run.TASK to a task's script, not a postfunc's.
    signing = next(temp.glob("run.pki_signer_sign_efi.*")).read_text()
    assert "export SOFTHSM2_CONF=%s" % token.conf in signing
    assert "export PKI_SIGNER_PKCS11_MODULE=%s" % MODULE in signing
    for script in ("run.do_compile", "run.do_install", "run.do_deploy", "run.do_pki_signer_init"):
        text = (temp / script).read_text()
        assert "SOFTHSM2_CONF" not in text and "PKCS11" not in text, script
    # The PIN came from the pin-source file: it is in no script and no log.
    assert not [p for p in temp.iterdir() if p.is_file() and PIN in p.read_text(errors="replace")]

    # Without the module's environment SoftHSM2 does not find the token: the
    # setting is what made the signature, not something the test process had.
    build.set_local_conf(build.base_conf + FAST_KEYS + token.local_conf() + 'PKI_SIGNER_PKCS11_ENV = ""\n')
    build.parse_config()
    d = build.parse(KERNEL)
    assert not build.run_task(d, "do_deploy")
    # "no token 'layer'", or a module that finds no configuration at all.
    assert "pkcs11:token=layer;object=ssig_subca: " in build.task_log(d, "do_deploy")


def test_the_module_and_its_environment_stay_out_of_task_signatures(make_parse_build, token):
    build = make_parse_build(FAST_KEYS + token.local_conf())
    tasks = ["do_compile", "do_install", "do_pki_signer_init", "do_deploy"]

    def hashes(extra=""):
        build.set_local_conf(build.base_conf + FAST_KEYS + extra)
        build.parse_config()
        d = build.parse(KERNEL)
        return build.task_hashes(d, tasks), d

    first, d = hashes(token.local_conf())
    for task in tasks:
        deps = d.getVar("__siggen_taskdeps")[task]
        assert not [v for v in deps if v.startswith("PKI_SIGNER_PKCS11")], task
    # bitbake-worker cuts the network of tasks without [network]: the module may talk to a network HSM.
    assert d.getVarFlag("do_deploy", "network") == "1"
    # Not exported by bitbake, which would put them into every shell task's environment and signature.
    for var in ("PKI_SIGNER_PKCS11_MODULE", "PKI_SIGNER_PKCS11_ENV", "SOFTHSM2_CONF"):
        assert not d.getVarFlag(var, "export"), var

    moved = token.conf.with_name("moved-softhsm2.conf")
    shutil.copyfile(token.conf, moved)
    other_conf, _ = hashes(token.local_conf(conf=moved))
    assert other_conf == first, "another SOFTHSM2_CONF path signs with the same key"
    other_module, _ = hashes(token.local_conf().replace(str(MODULE), "/opt/hsm/lib/libvendor-pkcs11.so") +
                             'PKI_SIGNER_PKCS11_ENV += "VENDOR_HSM_SLOT=3"\n')
    assert other_module == first

    # The certificate is in the signature: another one re-signs.
    other = build.topdir / "other.pem"
    shutil.copyfile(token.cert, other)
    with open(other, "a") as f:
        f.write("\n")
    recert, _ = hashes(token.local_conf().replace(str(token.cert), str(other)))
    assert recert["do_deploy"] != first["do_deploy"]
    assert recert["do_compile"] == first["do_compile"]


def test_the_guestos_signing_exports_the_module_environment(make_parse_build, token):
    build = make_parse_build(FAST_KEYS + token.local_conf().replace("ssig_subca]", "ssig_cml]"))
    d = build.parse(GUESTOS)
    exports = d.expand("${@pki_signer_pkcs11_exports(d)}").splitlines()
    assert exports == ["export PKI_SIGNER_PKCS11_MODULE=%s" % MODULE, "export SOFTHSM2_CONF=%s" % token.conf]
    assert "${@pki_signer_pkcs11_exports(d)}" in d.getVar("pki_signer_guestos_sign", False)
    assert not [v for v in d.getVar("__siggen_taskdeps")["do_image_complete"] if v.startswith("PKI_SIGNER_PKCS11")]


@pytest.mark.parametrize("env, message", [
    ("PKI_SIGNER_PKCS11_PIN=9876", "pin-source=file"),
    ("SOFTHSM2_CONF", "is not VAR=VALUE"),
    ("1BAD=x", "is not VAR=VALUE"),
])
def test_a_bad_module_environment_stops_the_parse(make_parse_build, env, message):
    build = make_parse_build('PKI_SIGNER_PKCS11_ENV = "%s"\n' % env)
    with pytest.raises(Exception):
        build.parse(KERNEL)
    errors = build.log.messages(logging.ERROR)
    assert any("PKI_SIGNER_PKCS11_ENV" in m and message in m for m in errors), errors
    assert not any("9876" in m for m in errors), "the PIN must not be printed"


@pytest.mark.parametrize("attr", ["pin-source=file:/run/pin", "module-path=/usr/lib/softhsm/libsofthsm2.so"])
def test_a_query_attribute_in_the_uri_path_stops_the_parse(make_parse_build, attr):
    # pki-signer refuses it too, but only when the signing task runs.
    build = make_parse_build('PKI_SIGNER_KEY[ssig_subca] = "pkcs11:token=t;object=o;%s"\n'
                             'PKI_SIGNER_CERT[ssig_subca] = "/srv/db.pem"\n' % attr)
    with pytest.raises(Exception):
        build.parse(KERNEL)
    name = attr.split("=")[0]
    errors = build.log.messages(logging.ERROR)
    assert any("%s is a query attribute" % name in m and "?%s=" % name in m for m in errors), errors


def test_both_keys_of_the_uki_in_the_token(make_build, token, dev_pki, tmp_path):
    # The Secure Boot key and the PCR policy key in one token: pki-signer-uki
    # needs no development PKI, and the UKI verifies under the certificate
    # and the PCR public key a release engineer holds as files.
    from ukicheck import check_uki, place_inputs
    der = tmp_path / "pcr.der"
    env = dict(os.environ, SOFTHSM2_CONF=str(token.conf))
    subprocess.run([peer("openssl"), "pkcs8", "-topk8", "-nocrypt", "-in", str(dev_pki / "tpm2-pcr-private.pem"),
                    "-outform", "DER", "-out", str(der)], check=True, capture_output=True)
    subprocess.run([peer("pkcs11-tool"), "--module", str(MODULE), "--token-label", "layer", "--login", "--pin", PIN,
                    "--write-object", str(der), "--type", "privkey", "--usage-sign", "--label", "pcr", "--id", "02"],
                   check=True, capture_output=True, env=env)
    der.unlink()
    public = tmp_path / "tpm2-pcr-public.pem"
    shutil.copyfile(dev_pki / "tpm2-pcr-public.pem", public)
    conf = token.local_conf() + ('PKI_SIGNER_KEY[tpm2-pcr] = "pkcs11:token=layer;object=pcr?pin-source=file:%s"\n'
                                 'PKI_SIGNER_CERT[tpm2-pcr] = "%s"\n' % (token.pin_file, public))
    build = make_build(FAST_KEYS + conf)
    d = build.parse("recipes/fake-uki/fake-pcr-uki-image.bb")
    assert d.getVar("PKI_SIGNER_INIT_ROLES") == ""
    assert d.getVarFlag("do_uki", "network") == "1"
    parts = place_inputs(build, d)
    for task in ("do_pki_signer_init", "do_rootfs", "do_uki"):
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))
    assert not (build.topdir / "pki").exists()
    check_uki(build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "uki.efi", token.cert, public, tmp_path / "check", parts)
    # The module's environment reached pki_signer_uki_build only.
    temp = Path(d.getVar("T"))
    assert "export SOFTHSM2_CONF=%s" % token.conf in next(temp.glob("run.pki_signer_uki_build.*")).read_text()
    assert "SOFTHSM2_CONF" not in (temp / "run.do_uki").read_text()
    assert not [p for p in temp.iterdir() if p.is_file() and PIN in p.read_text(errors="replace")]
