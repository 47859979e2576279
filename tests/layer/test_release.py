"""PKI_SIGNER_MODE = "release": bitbake's parser stops a release build that
would sign with a development key or has no key for a role, naming the
variable to set; the signing tasks run pki-signer with PKI_SIGNER_RELEASE=1."""

import logging
import shutil
import subprocess

import pytest

from conftest import FAST_KEYS, peer

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
EFIAPP = "recipes/fake-efiapp/fake-efiapp_1.0.bb"
GUESTOS = "recipes/fake-guestos/fake-guestos-image.bb"
RELEASE = 'PKI_SIGNER_MODE = "release"\n'


def production_key(dirpath, name, key=None):
    """A production key and self-signed certificate made with openssl (or a
    certificate for the existing KEY file)."""
    openssl = peer("openssl")
    dirpath.mkdir(parents=True, exist_ok=True)
    keyfile = dirpath / ("%s.key" % name)
    cert = dirpath / ("%s.pem" % name)
    if key is not None:
        shutil.copyfile(key, keyfile)
        args = ["-key", str(keyfile)]
    else:
        args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(keyfile)]
    subprocess.run([openssl, "req", "-x509", *args, "-subj", "/O=Example Production/CN=%s" % name,
                    "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
                    "-out", str(cert)], check=True, capture_output=True)
    return keyfile, cert


def override(role, key, cert):
    return 'PKI_SIGNER_KEY[%s] = "%s"\nPKI_SIGNER_CERT[%s] = "%s"\n' % (role, key, role, cert)


def fatal(build, recipe):
    with pytest.raises(Exception):
        build.parse(recipe)
    return build.log.messages(logging.ERROR)


def test_a_release_build_with_one_role_left_on_the_development_pki_fails_at_parse_time(
        make_parse_build, dev_pki, tmp_path):
    key, cert = production_key(tmp_path / "release", "ssig_subca")
    # ssig_subca has a production key; ssig_cml (the GuestOS role) is left on
    # the development PKI in PKI_SIGNER_DIR.
    build = make_parse_build(FAST_KEYS + RELEASE + override("ssig_subca", key, cert), pki=dev_pki)
    d = build.parse(KERNEL)
    assert d.getVar("PKI_SIGNER_INIT_ROLES") == ""
    errors = fatal(build, GUESTOS)
    assert any("PKI_SIGNER_MODE" in m and "role ssig_cml" in m and "PKI_SIGNER_KEY[ssig_cml]" in m
               and '"development": true' in m for m in errors), errors
    assert not any("ssig_subca" in m for m in errors), errors


def test_release_mode_exports_the_switch_and_never_generates_a_pki(make_parse_build, tmp_path):
    key, cert = production_key(tmp_path / "release", "ssig_subca")
    build = make_parse_build(FAST_KEYS + RELEASE + override("ssig_subca", key, cert))
    d = build.parse(KERNEL)
    assert d.getVar("PKI_SIGNER_RELEASE") == "1"
    assert d.getVarFlag("PKI_SIGNER_RELEASE", "export") == "1"
    # pki-signer gets PKI_SIGNER_DIR too, to compare the key with the development PKI's keys.
    assert d.expand("${@pki_signer_key_args(d, 'ssig_subca')}") == \
        "--key %s --cert %s --dir %s/pki" % (key, cert, build.topdir)
    build.run_func(d, "do_pki_signer_init")
    assert not (build.topdir / "pki").exists()


def test_development_mode_is_unchanged(make_parse_build):
    d = make_parse_build(FAST_KEYS).parse(KERNEL)
    assert d.getVar("PKI_SIGNER_MODE") == "development"
    assert d.getVar("PKI_SIGNER_RELEASE") is None
    assert d.getVar("PKI_SIGNER_INIT_ROLES") == "ssig_subca"


def test_no_pki_and_no_key_is_a_parse_time_error(make_parse_build):
    build = make_parse_build(FAST_KEYS + RELEASE)
    errors = fatal(build, KERNEL)
    assert any("role ssig_subca" in m and "does not exist" in m and "PKI_SIGNER_KEY[ssig_subca]" in m
               for m in errors), errors
    assert not (build.topdir / "pki").exists()


def test_a_missing_production_key_file_is_named(make_parse_build, tmp_path):
    _, cert = production_key(tmp_path / "release", "ssig_subca")
    build = make_parse_build(FAST_KEYS + RELEASE + override("ssig_subca", tmp_path / "gone.key", cert))
    errors = fatal(build, KERNEL)
    assert any("PKI_SIGNER_KEY[ssig_subca]" in m and "gone.key" in m and "does not exist" in m
               for m in errors), errors


def test_a_key_override_into_the_development_pki_is_refused(make_parse_build, dev_pki):
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    pki = build.topdir / "pki"
    build.set_local_conf(build.base_conf + FAST_KEYS + RELEASE +
                         override("ssig_subca", pki / "ssig_subca.key", pki / "ssig_subca.cert"))
    errors = fatal(build, KERNEL)
    assert any("PKI_SIGNER_KEY[ssig_subca]" in m and "development PKI" in m for m in errors), errors


def test_an_unknown_mode_is_refused(make_parse_build):
    errors = fatal(make_parse_build(FAST_KEYS + 'PKI_SIGNER_MODE = "prod"\n'), KERNEL)
    assert any("PKI_SIGNER_MODE is 'prod'" in m for m in errors), errors


def test_release_signing_uses_production_keys_and_pki_signer_refuses_a_disguised_dev_key(
        make_build, dev_pki, efi_app, tmp_path, capfd):
    build = make_build(FAST_KEYS, pki=dev_pki)
    key, cert = production_key(tmp_path / "release", "app-signer")
    build.set_local_conf(build.base_conf + FAST_KEYS + RELEASE + override("ssig_subca", key, cert))
    build.parse_config()
    d = build.parse(EFIAPP)
    deploy = build.topdir / d.getVar("DEPLOYDIR")
    deploy.mkdir(parents=True)
    (deploy / "app.efi").write_bytes(efi_app.read_bytes())
    build.run_func(d, "pki_signer_sign_efi")
    sb = subprocess.run([peer("sbverify"), "--cert", str(cert), str(deploy / "app.efi")],
                        capture_output=True, text=True)
    assert sb.returncode == 0, sb.stdout + sb.stderr

    # The development ssig_subca key copied out of the PKI under a new
    # certificate: the parser cannot tell, pki-signer (PKI_SIGNER_RELEASE=1,
    # --dir PKI_SIGNER_DIR) compares its public key and refuses it.
    dkey, dcert = production_key(tmp_path / "disguised", "ssig_subca", key=build.topdir / "pki" / "ssig_subca.key")
    build.set_local_conf(build.base_conf + FAST_KEYS + RELEASE + override("ssig_subca", dkey, dcert))
    build.parse_config()
    d = build.parse(EFIAPP)
    (deploy / "app.efi").write_bytes(efi_app.read_bytes())
    capfd.readouterr()
    with pytest.raises(Exception):
        build.run_func(d, "pki_signer_sign_efi")
    out = capfd.readouterr()
    log = out.out + out.err
    assert "release mode refuses key %s" % dkey in log, log
    assert "its public key is that of development certificate" in log, log
    assert (deploy / "app.efi").read_bytes() == efi_app.read_bytes(), "nothing is written"
