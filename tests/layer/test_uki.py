"""pki-signer-uki.bbclass: an image's do_uki builds the UKI with pki-signer
uki build in place of ukify, from what OE-core's uki.bbclass puts into it;
the deployed UKI is checked by sbverify, systemd-measure, an independent
PolicyPCR computation and openssl (ukicheck.py); both keys are in do_uki's
task signature; a release build stops at parse time without production keys."""

import json
import logging
import re
import shutil
import subprocess

import pytest

import bbharness
from conftest import FAST_KEYS, peer
from test_release import RELEASE, override, production_key
from ukicheck import check_uki, place_inputs

UKI = "recipes/fake-uki/fake-pcr-uki-image.bb"


def run(build, d, *tasks):
    for task in tasks:
        assert build.run_task(d, task), "%s failed:\n%s" % (task, build.task_log(d, task))


def fatal(build, recipe=UKI):
    with pytest.raises(Exception):
        build.parse(recipe)
    return build.log.messages(logging.ERROR)


def pcr_key(dirpath, name="pcr"):
    """A fresh RSA PCR key and its public key (PEM), made with openssl."""
    openssl = peer("openssl")
    dirpath.mkdir(parents=True, exist_ok=True)
    key, pub = dirpath / (name + ".key"), dirpath / (name + "-public.pem")
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    subprocess.run([openssl, "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    return key, pub


def test_do_uki_builds_measures_and_signs_the_uki_of_uki_bbclass(make_build, dev_pki, tmp_path):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(UKI)
    # uki.bbclass's task, in uki.bbclass's place; pki-signer-uki only replaced its body.
    assert d.getVarFlag("do_uki", "python") == "1"
    assert "pki_signer_uki_build" in d.getVar("do_uki", False)
    assert {"do_rootfs", "do_pki_signer_init"} <= set(d.getVarFlag("do_uki", "deps"))
    assert "do_uki" in d.getVarFlag("do_image_complete", "deps")
    assert d.getVar("IMAGE_EFI_BOOT_FILES") == "uki.efi;EFI/Linux/uki.efi"
    # uki.bbclass's dependencies, and the tool for this task only.
    assert d.getVarFlag("do_uki", "depends").split() == [
        "systemd-boot:do_deploy", "virtual/kernel:do_deploy", "core-image-minimal-initramfs:do_image_complete",
        "pki-signer-native:do_populate_sysroot"]
    parts = place_inputs(build, d)
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki")

    pki = build.topdir / "pki"
    deploy = build.topdir / d.getVar("DEPLOY_DIR_IMAGE")
    uki = deploy / "uki.efi"
    pcrsig = check_uki(uki, pki / "ssig_subca.cert", pki / "tpm2-pcr-public.pem", tmp_path / "check", parts)
    pkfp = pcrsig["sha256"][0]["pkfp"]
    assert [p["pkfp"] for p in pcrsig["sha256"]] == [pkfp] * 4, "the four default phases"

    # The log names both keys by the fingerprints the signatures carry.
    log = build.task_log(d, "do_uki")
    fingerprint = d.expand("${@pki_signer_fingerprint(d, 'ssig_subca')}")
    assert "Authenticode by ssig_subca (sha256 fingerprint %s)" % fingerprint in log
    assert "PCR policy by tpm2-pcr (pkfp %s)" % pkfp in log

    # The plan names the UKI as deployed, as a uki record with its PCR key,
    # and the stub it was built on, which systemd-boot deployed.
    records = [json.loads(line) for line in (deploy / "signing-plan.json").read_text().splitlines()]
    assert [(r["output"], r["kind"], r["pcr_key_fingerprint"], r["artifact"]) for r in records] == \
        [("uki.efi", "uki", pkfp, "linuxx64.efi.stub")]

    # SOURCE_DATE_EPOCH: the same UKI, byte for byte, when do_uki runs again.
    first = uki.read_bytes()
    run(build, d, "do_uki")
    assert uki.read_bytes() == first


def test_do_uki_says_which_input_is_missing(make_build, dev_pki):
    build = make_build(FAST_KEYS, pki=dev_pki)
    d = build.parse(UKI)
    place_inputs(build, d)
    (build.topdir / d.getVar("PKI_SIGNER_UKI_STUB")).unlink()
    run(build, d, "do_pki_signer_init", "do_rootfs")
    assert not build.run_task(d, "do_uki")
    assert "PKI_SIGNER_UKI_STUB; systemd-boot's do_deploy puts it there" in build.task_log(d, "do_uki")
    assert not (build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "uki.efi").exists()


def test_uki_bbclass_variables_choose_the_inputs(make_parse_build):
    build = make_parse_build('INITRAMFS_IMAGE = "my-initramfs"\nINITRAMFS_FSTYPES = "cpio.zst cpio.gz"\n'
                             'UKI_KERNEL_FILENAME = "Image"\nUKI_DEVICETREE = "vendor/board.dtb"\n'
                             'KERNEL_VERSION = "6.18.1-yocto"\nUKI_CMDLINE = "root=PARTLABEL=\'root a\' quiet"\n'
                             'PKI_SIGNER_UKI_MICROCODE = "${DEPLOY_DIR_IMAGE}/microcode.cpio"\n')
    d = build.parse(UKI)
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    assert d.getVar("PKI_SIGNER_UKI_STUB") == deploy + "/linuxx64.efi.stub"
    assert d.getVar("PKI_SIGNER_UKI_KERNEL") == deploy + "/Image"
    assert d.getVar("PKI_SIGNER_UKI_INITRDS") == deploy + "/my-initramfs-testmachine.cpio.zst"
    assert d.getVar("PKI_SIGNER_UKI_DTB") == deploy + "/board.dtb"
    assert d.getVar("PKI_SIGNER_UKI_OS_RELEASE") == d.getVar("WORKDIR") + "/recipe-sysroot/usr/lib/os-release"
    args = d.expand("${@pki_signer_uki_part_args(d)}")
    assert "--cmdline 'root=PARTLABEL='\"'\"'root a'\"'\"' quiet'" in args
    assert "--uname 6.18.1-yocto" in args and "--dtb %s/board.dtb" % deploy in args
    assert "--microcode %s/microcode.cpio" % deploy in args
    assert "'PKI_SIGNER_UKI_MICROCODE', '%s/microcode.cpio'" % deploy in d.expand("${@repr(pki_signer_uki_files(d))}")
    pcr = d.expand("${@pki_signer_uki_pcr_args(d)}")
    assert pcr.startswith("--pcr-role tpm2-pcr --phases enter-initrd --phases enter-initrd:leave-initrd ")
    assert pcr.endswith("--pcr-banks sha256")
    # Without INITRAMFS_IMAGE (as OE-core allows from whinlatter on), no initrd.
    build = make_parse_build('INITRAMFS_IMAGE = ""\nPKI_SIGNER_UKI_PCR_BANKS = "sha256 sha384"\n'
                             'PKI_SIGNER_UKI_PCR_ROLE = ""\n', name="noinitrd")
    d = build.parse(UKI)
    assert d.getVar("PKI_SIGNER_UKI_INITRDS") == ""
    assert d.expand("${@pki_signer_uki_pcr_args(d)}") == ""
    assert d.getVar("PKI_SIGNER_UKI_ROLES").split() == ["ssig_subca"]


def test_the_pcr_key_can_come_from_another_place_than_the_signing_key(make_parse_build, tmp_path):
    # --dir is one option for both keys: given once, by whichever key needs it.
    key, cert = production_key(tmp_path / "prod", "ssig_subca")
    d = make_parse_build(override("ssig_subca", key, cert)).parse(UKI)
    assert d.expand("${@pki_signer_uki_pcr_args(d)}").startswith("--pcr-role tpm2-pcr --dir ")
    pkey, pub = pcr_key(tmp_path / "prod")
    d = make_parse_build(override("tpm2-pcr", pkey, pub), name="pcr-file").parse(UKI)
    assert d.expand("${@pki_signer_uki_pcr_args(d)}").startswith("--pcr-key %s --phases " % pkey)
    assert d.expand("${@pki_signer_key_args(d, 'ssig_subca')}").startswith("--role ssig_subca --dir ")


def test_both_keys_are_in_the_task_signature_of_do_uki(make_parse_build, dev_pki, pki_signer, tmp_path):
    build = make_parse_build(FAST_KEYS, pki=dev_pki)
    pki = build.topdir / "pki"

    def hashes(extra=""):
        build.set_local_conf(build.base_conf + FAST_KEYS + extra)
        build.parse_config()
        d = build.parse(UKI)
        return build.task_hashes(d, ["do_uki"])["do_uki"], d

    first, d = hashes()
    assert d.getVarFlag("do_uki", "file-checksums").split() == [
        "%s:True" % (pki / "ssig_subca.cert"), "%s:True" % (pki / "tpm2-pcr-public.pem")]
    deps = d.getVar("__siggen_taskdeps")["do_uki"]
    assert {"pki_signer_uki_build", "PKI_SIGNER_UKI_ROLES", "PKI_SIGNER_CERT_URIS"} <= deps
    assert not [v for v in ("PKI_SIGNER_DIR", "PKI_SIGNER_BIN", "PKI_SIGNER_PLAN") if v in deps]
    assert hashes()[0] == first

    # The same keys elsewhere: the same hash.
    moved = tmp_path / "moved" / "pki"
    shutil.copytree(pki, moved)
    assert hashes('PKI_SIGNER_DIR = "%s"\n' % moved)[0] == first

    # Another PCR key, the signing key unchanged: a new hash.
    other_pcr = tmp_path / "other-pcr" / "pki"
    shutil.copytree(pki, other_pcr)
    _, pub = pcr_key(tmp_path / "fresh-pcr")
    shutil.copyfile(pub, other_pcr / "tpm2-pcr-public.pem")
    assert hashes('PKI_SIGNER_DIR = "%s"\n' % other_pcr)[0] != first

    # Another signing certificate, the PCR key unchanged: a new hash.
    fresh = tmp_path / "fresh" / "pki"
    subprocess.run([str(pki_signer), "pki", "init", "--dir", str(fresh), "--key-type", "ec:prime256v1"],
                   check=True, capture_output=True)
    other_sign = tmp_path / "other-sign" / "pki"
    shutil.copytree(pki, other_sign)
    shutil.copyfile(fresh / "ssig_subca.cert", other_sign / "ssig_subca.cert")
    assert hashes('PKI_SIGNER_DIR = "%s"\n' % other_sign)[0] != first

    # A UKI without PCR policy is another UKI.
    assert hashes('PKI_SIGNER_UKI_PCR_ROLE = ""\n')[0] != first

    # Keys in a token: their public key's content, or their URI, stands for them.
    uri_conf = ('PKI_SIGNER_KEY[tpm2-pcr] = "pkcs11:token=release;object=pcr"\n'
                'PKI_SIGNER_CERT[tpm2-pcr] = "%s"\n' % (moved / "tpm2-pcr-public.pem"))
    token, d = hashes(uri_conf)
    assert d.getVarFlag("do_uki", "network") == "1"
    assert "%s:True" % (moved / "tpm2-pcr-public.pem") in d.getVarFlag("do_uki", "file-checksums")
    module, _ = hashes(uri_conf + 'PKI_SIGNER_PKCS11_MODULE = "/opt/hsm/libvendor.so"\n')
    assert module == token, "where the module lives is not what signs"
    _, d = hashes('PKI_SIGNER_KEY[tpm2-pcr] = "pkcs11:token=release;object=pcr"\n'
                  'PKI_SIGNER_CERT[tpm2-pcr] = "pkcs11:token=release;object=pcr-public"\n')
    assert d.getVar("__siggen_varvals")["PKI_SIGNER_CERT_URIS"] == "tpm2-pcr=pkcs11:token=release;object=pcr-public"


def test_the_pcr_fingerprint_is_the_pkfp_of_pcrsig(make_parse_build, dev_pki):
    # pkfp: SHA-256 of the RSAPublicKey DER, as openssl writes it.
    openssl = peer("openssl")
    d = make_parse_build(FAST_KEYS, pki=dev_pki).parse(UKI)
    der = subprocess.run([openssl, "rsa", "-pubin", "-in", str(dev_pki / "tpm2-pcr-public.pem"),
                          "-RSAPublicKey_out", "-outform", "DER"], check=True, capture_output=True).stdout
    import hashlib
    assert d.expand("${@pki_signer_fingerprint(d, 'tpm2-pcr')}") == hashlib.sha256(der).hexdigest()


def test_a_release_build_of_the_uki_signs_with_production_keys_only(make_build, dev_pki, tmp_path):
    key, cert = production_key(tmp_path / "release", "ssig_subca")
    pkey, pub = pcr_key(tmp_path / "release")
    # The PCR key left on the development PKI stops the parse, naming what to set.
    build = make_build(FAST_KEYS + RELEASE + override("ssig_subca", key, cert), pki=dev_pki)
    errors = fatal(build)
    assert any("role tpm2-pcr has no production key" in m and "PKI_SIGNER_KEY[tpm2-pcr]" in m
               and '"development": true' in m for m in errors), errors
    # So does the development PCR key copied out of it: its public key is the development one.
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copyfile(dev_pki / "tpm2-pcr-private.pem", copied / "pcr.key")
    shutil.copyfile(dev_pki / "tpm2-pcr-public.pem", copied / "pcr-public.pem")
    build = make_build(FAST_KEYS + RELEASE + override("ssig_subca", key, cert) +
                       override("tpm2-pcr", copied / "pcr.key", copied / "pcr-public.pem"),
                       name="copied", pki=dev_pki)
    d = build.parse(UKI)
    place_inputs(build, d)
    run(build, d, "do_pki_signer_init", "do_rootfs")
    assert not build.run_task(d, "do_uki")
    assert "release mode refuses this PCR key" in build.task_log(d, "do_uki")

    # Production keys for both: built, and checked under the production certificate and PCR key.
    build = make_build(FAST_KEYS + RELEASE + override("ssig_subca", key, cert) + override("tpm2-pcr", pkey, pub),
                       name="release", pki=dev_pki)
    d = build.parse(UKI)
    assert d.getVar("PKI_SIGNER_INIT_ROLES") == ""
    parts = place_inputs(build, d)
    run(build, d, "do_pki_signer_init", "do_rootfs", "do_uki")
    assert d.getVarFlag("PKI_SIGNER_RELEASE", "export") == "1"
    check_uki(build.topdir / d.getVar("DEPLOY_DIR_IMAGE") / "uki.efi", cert, pub, tmp_path / "check", parts)


@pytest.mark.parametrize("conf, message", [
    ('UKI_SB_KEY = "/srv/db.key"\nUKI_SB_CERT = "/srv/db.crt"\n', "not with UKI_SB_KEY/UKI_SB_CERT"),
    ('PKI_SIGNER_UKI_PCR_ROLE = "pcr"\n', "the PCR policy key's role is tpm2-pcr"),
    ('UKI_DEVICETREE = "a.dtb b.dtb"\n', "a UKI holds one .dtb"),
    ('PKI_SIGNER_UEFI = "0"\n', 'only PKI_SIGNER_UEFI = "1" makes it there'),
    ('PKI_SIGNER_KEY[tpm2-pcr] = "/srv/pcr.key"\n', "set PKI_SIGNER_CERT[tpm2-pcr] to its public key (PEM)"),
    ('PKI_SIGNER_KEY_PASS_FILE[ssig_subca] = "/run/a"\nPKI_SIGNER_KEY_PASS_FILE[tpm2-pcr] = "/run/b"\n',
     "reads one password for both keys"),
])
def test_what_cannot_work_stops_the_parse(make_parse_build, conf, message):
    errors = fatal(make_parse_build(conf))
    assert any(message in m for m in errors), errors


def test_pki_signer_efi_does_not_sign_the_uki_again(make_parse_build, tmp_path):
    recipe = tmp_path / "both-image.bb"
    recipe.write_text('LICENSE = "MIT"\ninherit core-image pki-signer-uki pki-signer-efi\n')
    errors = fatal(make_parse_build(), recipe)
    assert any("inherit pki-signer-uki or pki-signer-efi" in m for m in errors), errors


def test_without_uki_bbclass_the_parse_says_which_releases_have_it(tmp_path, pki_signer):
    # scarthgap and styhead: no uki.bbclass in OE-core.
    fixture = tmp_path / "fixture"
    shutil.copytree(bbharness.FIXTURE, fixture)
    (fixture / "classes" / "uki.bbclass").unlink()
    build = bbharness.Build(tmp_path / "build", 'PKI_SIGNER_BIN = "%s"\n' % pki_signer,
                            layers=(fixture, bbharness.LAYER))
    try:
        errors = fatal(build, fixture / UKI)
    finally:
        logging.getLogger("BitBake").removeHandler(build.log)
    assert any("uki.bbclass" in m and "walnascar" in m and re.search("scarthgap", m) for m in errors), errors
