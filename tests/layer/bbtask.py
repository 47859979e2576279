"""Runs one task of one recipe in its own process, as bitbake-worker does:
    python bbtask.py TOPDIR RECIPE TASK [READY_FILE GO_FILE]
With READY_FILE and GO_FILE it parses first, creates READY_FILE, and starts the
task only once GO_FILE exists, so that tests can start tasks at the same moment.
Exit status 0 if the task succeeded."""

import logging
import sys
import time
from pathlib import Path

import bbharness


def main(argv):
    topdir, recipe, task = argv[1:4]
    logging.basicConfig(level=logging.WARNING)
    build = bbharness.Build(topdir, (Path(topdir) / "conf" / "local.conf").read_text())
    d = build.parse(recipe)
    if len(argv) > 5:
        ready, go = Path(argv[4]), Path(argv[5])
        ready.touch()
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit("bbtask: %s never appeared" % go)
            time.sleep(0.01)
    ok = build.run_task(d, task)
    sys.stdout.write(build.task_log(d, task))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
