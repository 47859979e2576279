"""oelint-adv, OpenEmbedded's recipe linter, on every recipe, append and class
of the layer, for every release the layer declares. Suppressed rules and the
reasons are in meta-pki-signer/.oelint.cfg."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bbharness import LAYER
from conftest import require_peers


def oelint():
    beside_python = Path(sys.executable).parent / "oelint-adv"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("oelint-adv")
    if found is None:
        if require_peers():
            pytest.fail("oelint-adv is required (PKI_SIGNER_REQUIRE_PEERS=1): run scripts/layer-deps.sh")
        pytest.skip("oelint-adv not installed (scripts/layer-deps.sh)")
    return found


def layer_files():
    files = sorted(str(p.relative_to(LAYER)) for pattern in ("**/*.bb", "**/*.bbappend", "**/*.bbclass")
                   for p in LAYER.glob(pattern))
    assert any(f.endswith(".bbappend") for f in files) and any(f.endswith(".bbclass") for f in files)
    return files


def releases():
    text = (LAYER / "conf" / "layer.conf").read_text()
    return re.search(r'LAYERSERIES_COMPAT_pki-signer = "([^"]*)"', text).group(1).split()


@pytest.mark.parametrize("release", releases())
def test_oelint_adv_is_clean(release):
    # Run from the layer, where oelint-adv finds .oelint.cfg.
    result = subprocess.run([oelint(), "--quiet", "--release", release, "conf/layer.conf"] + layer_files(),
                            cwd=LAYER, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr
