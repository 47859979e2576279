"""Fixtures of the meta-pki-signer tests. Run them with
    .venv/bin/python -m pytest tests/layer
after scripts/layer-deps.sh has filled the venv; `cargo test --test layer` does
both, with the pki-signer binary cargo just built."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bbharness  # noqa: E402

# Fast keys for tests that do not look at key types; the UEFI keys stay RSA-2048.
FAST_KEYS = 'PKI_SIGNER_KEY_TYPE = "ec:prime256v1"\n'


def require_peers():
    return os.environ.get("PKI_SIGNER_REQUIRE_PEERS") == "1"


def peer(name):
    """Path of a peer tool; skips the test if it is missing, unless PKI_SIGNER_REQUIRE_PEERS=1."""
    path = shutil.which(name)
    if path is None:
        if require_peers():
            pytest.fail("peer tool %s is required (PKI_SIGNER_REQUIRE_PEERS=1) but not installed" % name)
        pytest.skip("peer tool %s not installed" % name)
    return path


@pytest.fixture(scope="session")
def pki_signer():
    path = bbharness.pki_signer_bin()
    if path is None or not path.is_file():
        pytest.fail("no pki-signer binary: run cargo build, or set PKI_SIGNER_BIN")
    return path


@pytest.fixture(scope="session")
def efi_app():
    if not bbharness.EFI_APP.is_file():
        if require_peers():
            pytest.fail("%s is required (apt: systemd-boot-efi)" % bbharness.EFI_APP)
        pytest.skip("%s not installed (apt: systemd-boot-efi)" % bbharness.EFI_APP)
    return bbharness.EFI_APP


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory, pki_signer):
    """One development PKI for the tests that only sign with it; copy it, don't change it."""
    pki = tmp_path_factory.mktemp("pki-template") / "pki"
    subprocess.run([str(pki_signer), "pki", "init", "--dir", str(pki), "--key-type", "ec:prime256v1", "--uefi"],
                   check=True, capture_output=True)
    return pki


@pytest.fixture(scope="session")
def bitbake_tree(tmp_path_factory):
    """A bitbake tree (bin/ and lib/) to run `bitbake` from: see bbharness.bitbake_tree."""
    return bbharness.bitbake_tree(tmp_path_factory.mktemp("bitbake-tree") / "bitbake")


class BuildFactory:
    def __init__(self, tmp_path, pki_signer, efi_app):
        self.tmp_path = tmp_path
        self.pki_signer = pki_signer
        self.efi_app = efi_app
        self.builds = []

    def __call__(self, local_conf="", name="build", pki=None):
        """A build directory whose local.conf sets the tool, the EFI binary and LOCAL_CONF."""
        topdir = self.tmp_path / name
        topdir.mkdir(parents=True, exist_ok=True)
        efi = topdir / "app.efi"
        if self.efi_app is not None and not efi.exists():
            shutil.copyfile(self.efi_app, efi)
        if pki is not None:
            shutil.copytree(pki, topdir / "pki")
        base = 'PKI_SIGNER_BIN = "%s"\nPKI_SIGNER_TEST_EFI = "%s"\n' % (self.pki_signer, efi)
        build = bbharness.Build(topdir, base + local_conf)
        build.base_conf = base
        self.builds.append(build)
        return build

    def close(self):
        for b in self.builds:
            logging.getLogger("BitBake").removeHandler(b.log)


@pytest.fixture
def make_build(tmp_path, pki_signer, efi_app):
    factory = BuildFactory(tmp_path, pki_signer, efi_app)
    yield factory
    factory.close()


@pytest.fixture
def make_parse_build(tmp_path, pki_signer):
    """Like make_build, for tests that only parse and need no EFI binary."""
    factory = BuildFactory(tmp_path, pki_signer, None)
    yield factory
    factory.close()
