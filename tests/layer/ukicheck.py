"""The parts of a UKI where OE-core's uki.bbclass finds them, and the checks,
by peers, of a UKI that pki-signer-uki built:

- sbverify accepts its Authenticode signature under the signing certificate;
- testdata/uki/sections.py (a PE reader of the tests, no code of pki-signer)
  extracts its sections;
- systemd-measure calculate predicts PCR 11 from those sections;
- testdata/uki/policy.py recomputes each TPM2 PolicyPCR digest of .pcrsig
  from those predictions;
- openssl dgst -verify accepts each policy signature under the PCR public key.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bbharness import REPO
from conftest import peer, require_peers

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
MEASURE = Path("/usr/lib/systemd/systemd-measure")
TESTDATA = REPO / "testdata" / "uki"
INITRD = bytes((i * 7) % 251 for i in range(40_001))


def system_file(path, package):
    if not path.is_file():
        if require_peers():
            pytest.fail("%s is required (PKI_SIGNER_REQUIRE_PEERS=1; apt: %s)" % (path, package))
        pytest.skip("%s not installed (apt: %s)" % (path, package))
    return path


def kernel():
    """A real kernel when the environment names one (PKI_SIGNER_TEST_VMLINUZ), else the tests' stand-in."""
    env = os.environ.get("PKI_SIGNER_TEST_VMLINUZ")
    return Path(env) if env else TESTDATA / "linux.bin"


def place_inputs(build, d):
    """Put the stub, kernel, initramfs and os-release where do_uki looks for them:
    what systemd-boot's and the kernel's do_deploy, the initramfs image and
    os-release's sysroot would have put there. Returns {section: content}."""
    def at(var):
        path = build.topdir / d.getVar(var)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    shutil.copyfile(system_file(STUB, "systemd-boot-efi"), at("PKI_SIGNER_UKI_STUB"))
    shutil.copyfile(kernel(), at("PKI_SIGNER_UKI_KERNEL"))
    initrds = d.getVar("PKI_SIGNER_UKI_INITRDS").split()
    assert len(initrds) == 1, initrds
    initrd = build.topdir / initrds[0]
    initrd.parent.mkdir(parents=True, exist_ok=True)
    initrd.write_bytes(INITRD)
    shutil.copyfile(TESTDATA / "os-release", at("PKI_SIGNER_UKI_OS_RELEASE"))
    return {
        "linux": kernel().read_bytes(),
        "initrd": INITRD,
        "osrel": (TESTDATA / "os-release").read_bytes(),
        "cmdline": d.getVar("UKI_CMDLINE").encode(),
    }


def sbverify(path, cert):
    return subprocess.run([peer("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True)


def check_uki(uki, cert, pcr_public, work, parts=None):
    """Check UKI with the peers (see the module's doc string), in the directory
    WORK. CERT: the signing certificate (PEM); PCR_PUBLIC: the PCR public key
    (PEM). Returns the .pcrsig JSON."""
    result = sbverify(uki, cert)
    assert result.returncode == 0, "sbverify --cert %s %s: %s%s" % (cert, uki, result.stdout, result.stderr)
    openssl = peer("openssl")
    measure = system_file(MEASURE, "systemd")
    work.mkdir(parents=True, exist_ok=True)
    sections = work / "sections"
    listed = subprocess.run([peer("python3"), str(TESTDATA / "sections.py"), str(uki), str(sections)],
                            check=True, capture_output=True, text=True).stdout
    names = [line.split()[0] for line in listed.splitlines()]
    for name in (".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey", ".pcrsig"):
        assert name in names, names
    for name, content in (parts or {}).items():
        assert (sections / name).read_bytes() == content, name
    assert (sections / "pcrpkey").read_bytes() == Path(pcr_public).read_bytes()

    args = [str(measure), "calculate", "--json=short", "--bank=sha256"]
    for name in ("linux", "osrel", "cmdline", "initrd", "splash", "dtb", "pcrpkey"):
        if (sections / name).is_file():
            args.append("--%s=%s" % (name, sections / name))
    calc = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    (work / "calc.json").write_text(calc)
    # .pcrsig ends in NULs up to the section's size.
    pcrsig = (sections / "pcrsig").read_bytes().rstrip(b"\0")
    (work / "pcrsig.json").write_bytes(pcrsig)
    pols = subprocess.run([peer("python3"), str(TESTDATA / "policy.py"), str(work / "calc.json"),
                           str(work / "pcrsig.json"), str(work / "pol")],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(pols) == len(json.loads(calc)["sha256"]), pols
    for line in pols:
        name = line.split()[0]
        bank = name.split("-")[0]
        result = subprocess.run([openssl, "dgst", "-" + bank, "-verify", str(pcr_public),
                                 "-signature", str(work / "pol" / (name + ".sig")), str(work / "pol" / (name + ".pol"))],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "Verified OK" in result.stdout, line + result.stdout + result.stderr
    return json.loads(pcrsig)
