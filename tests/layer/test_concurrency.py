"""Many recipes reach do_pki_signer_init at the same moment in a bitbake build."""

import json
import subprocess
import sys
import time

from bbharness import HERE

KERNEL = "recipes/fake-kernel/fake-kernel_1.0.bb"
EFIAPP = "recipes/fake-efiapp/fake-efiapp_1.0.bb"


def test_two_recipes_initialising_at_once_make_one_pki(make_build):
    # The default key type, RSA-4096, keeps key generation slow enough that
    # the two tasks really overlap.
    build = make_build()
    sync = build.topdir / "sync"
    sync.mkdir()
    procs = []
    for i, recipe in enumerate((KERNEL, EFIAPP)):
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "bbtask.py"), str(build.topdir), recipe, "do_pki_signer_init",
             str(sync / ("ready%d" % i)), str(sync / "go")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all((sync / ("ready%d" % i)).exists() for i in range(2)):
        assert time.monotonic() < deadline, "the recipes did not parse"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (sync / "go").touch()
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert code == 0, out + err

    # One task generated the PKI; the other waited on the lock and found it complete.
    logs = [out for out, _, _ in results]
    assert sum("created PKI in" in log for log in logs) == 1, logs
    assert sum("PKI already present in" in log for log in logs) == 1, logs

    pki = build.topdir / "pki"
    roles = {r["role"]: r for r in json.loads((pki / "pki.json").read_text())["roles"]}
    assert "ssig_subca" in roles and "DB" in roles
    # Nothing half-made is left next to it.
    assert sorted(p.name for p in build.topdir.iterdir() if p.name.startswith("pki")) in (
        ["pki"], ["pki", "pki.lock"])
