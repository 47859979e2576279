"""Runs meta-pki-signer through BitBake's own library, without a bitbake server.

A Build is a build directory (conf/bblayers.conf + conf/local.conf) over the
test fixture layer (tests/layer/fixture: bitbake.conf and the OE-core classes
the layer hooks into) and meta-pki-signer. It parses the configuration with
bb.cookerdata.CookerDataBuilder and recipes with parseRecipeVariants, as the
cooker and bitbake-worker do, runs tasks with bb.build.exec_task, and computes
task hashes with the configured signature generator, as the runqueue does.

bitbake_tree and run_bitbake run `bitbake` itself instead, with its server,
runqueue and bitbake-worker (test_runqueue.py).
"""

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LAYER = REPO / "meta-pki-signer"
FIXTURE = HERE / "fixture"
STUBS = HERE / "bbstubs"
BBBIN = HERE / "bbbin"
EFI_APP = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")

if str(STUBS) not in sys.path:
    sys.path.append(str(STUBS))

import bb  # noqa: E402
import bb.build  # noqa: E402
import bb.cache  # noqa: E402
import bb.cookerdata  # noqa: E402
import bb.parse  # noqa: E402
import bb.siggen  # noqa: E402


class LogCapture(logging.Handler):
    """Collects BitBake's log records, so tests can look for errors and warnings."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, levelno):
        return [r.getMessage() for r in self.records if r.levelno >= levelno]


def pki_signer_bin():
    """The pki-signer binary under test: $PKI_SIGNER_BIN, else the newest cargo build."""
    env = os.environ.get("PKI_SIGNER_BIN")
    if env:
        return Path(env)
    built = [REPO / "target" / p / "pki-signer" for p in ("release", "debug")]
    built = [b for b in built if b.is_file()]
    if not built:
        return None
    return max(built, key=lambda b: b.stat().st_mtime)


@contextlib.contextmanager
def chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _replace_text(path, text):
    """Write a conf file the way the tool writes its outputs: other task
    processes of the same build read it at the same time (bbtask.py), and a
    plain rewrite lets them see it empty."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(".%s.%d" % (path.name, os.getpid()))
    tmp.write_text(text)
    os.replace(tmp, path)


class Build:
    def __init__(self, topdir, local_conf="", layers=(FIXTURE, LAYER)):
        self.topdir = Path(topdir)
        (self.topdir / "conf").mkdir(parents=True, exist_ok=True)
        _replace_text(
            self.topdir / "conf" / "bblayers.conf",
            'BBPATH = "${TOPDIR}"\nBBFILES ?= ""\nBBLAYERS = "%s"\n' % " ".join(str(p) for p in layers),
        )
        self.set_local_conf(local_conf)
        self.log = LogCapture()
        logging.getLogger("BitBake").addHandler(self.log)
        self.databuilder = None

    def set_local_conf(self, text):
        _replace_text(self.topdir / "conf" / "local.conf", text)

    def parse_config(self, keep_siggen=False):
        """Parse bblayers.conf, every layer.conf, bitbake.conf and local.conf."""
        cfg = bb.cookerdata.CookerConfiguration()
        cfg.env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        with chdir(self.topdir):
            self.databuilder = bb.cookerdata.CookerDataBuilder(cfg)
            self.databuilder.parseBaseConfiguration()
        if not keep_siggen or bb.parse.siggen is None:
            bb.parse.siggen = bb.siggen.init(self.databuilder.data)
        return self.databuilder.data

    def parse(self, recipe, variant=""):
        """Parse one recipe (a path relative to a layer, or absolute); the datastore of VARIANT."""
        if self.databuilder is None:
            self.parse_config()
        fn = self.recipe_path(recipe)
        with chdir(self.topdir):
            stores = self.databuilder.parseRecipeVariants(str(fn), [], layername=None)
        return stores[variant]

    @staticmethod
    def recipe_path(recipe):
        p = Path(recipe)
        if p.is_absolute():
            return p
        for base in (FIXTURE, LAYER):
            if (base / p).exists():
                return base / p
        raise FileNotFoundError(recipe)

    def run_task(self, d, task):
        """Run TASK as bitbake-worker does: prefuncs, the task, postfuncs, stamp. True if it succeeded."""
        fn = d.getVar("FILE")
        bb.parse.siggen.setup_datacache_from_datastore(fn, d)
        # bitbake-worker sets this before exec_task; OE-core's sstate code reads it.
        d.setVar("BB_CURRENTTASK", task.replace("do_", "", 1))
        # Each task runs in a new worker process, which has no mtimes cached
        # from before a test removed TMPDIR (make_stamp trusts them).
        bb.build.reset_cache()
        # exec_task duplicates stdin's descriptor, which a test runner may have replaced.
        stdin = sys.stdin
        with chdir(self.topdir), open(os.devnull) as devnull:
            sys.stdin = devnull
            try:
                return bb.build.exec_task(fn, task, d) == 0
            finally:
                sys.stdin = stdin

    def run_func(self, d, func):
        """Run one function of a recipe with bb.build.exec_func."""
        bb.utils.mkdirhier(d.getVar("T"))
        with chdir(self.topdir):
            bb.build.exec_func(func, d)

    def task_log(self, d, task):
        return (Path(d.getVar("T")) / ("log." + task)).read_text()

    def task_hashes(self, d, tasks):
        """Task hashes as the runqueue computes them for tasks of one recipe: the
        basehash from parsing, the file-checksums, the hashes of the task's
        dependencies in the same recipe and any taint (nostamp)."""
        fn = d.getVar("FILE")
        cache = bb.cache.CacheData([bb.cache.CoreRecipeInfo])
        cache.add_from_recipeinfo(fn, [bb.cache.CoreRecipeInfo(fn, d)])
        caches = {"": cache}
        siggen = bb.parse.siggen
        done = {}

        def compute(task):
            tid = fn + ":" + task
            if tid not in done:
                deps = [t for t in (d.getVarFlag(task, "deps") or []) if d.getVarFlag(t, "task")]
                for dep in deps:
                    compute(dep)
                deptids = [fn + ":" + t for t in deps]
                siggen.prep_taskhash(tid, deptids, caches)
                done[tid] = siggen.get_taskhash(tid, deptids, caches)
            return done[tid]

        return {t: compute(t) for t in tasks}


def kernel_image(d, imagetype="bzImage"):
    """The name kernel.bbclass's do_deploy gives the kernel image (OE-core's
    kernel_do_deploy): TYPE-KERNEL_IMAGE_NAME.bin, with kernel-artifact-names'
    KERNEL_IMAGE_NAME, "${PKGE}-${PKGV}-${PKGR}-${MACHINE}${IMAGE_VERSION_SUFFIX}":
    PKGE is empty (hence "--") and the suffix is the build's DATETIME."""
    return "%s-%s%s" % (imagetype, d.getVar("KERNEL_IMAGE_NAME"), d.getVar("KERNEL_IMAGE_BIN_EXT"))


def deployed_kernel_image(deploy, imagetype="bzImage"):
    """The kernel image file (not a symlink) in the deploy directory DEPLOY, as
    kernel_image names it, for builds whose DATETIME the test does not know."""
    found = [p.name for p in Path(deploy).glob(imagetype + "--*.bin") if not p.is_symlink()]
    assert len(found) == 1, found
    return found[0]


def copy_efi_app(dest):
    shutil.copyfile(EFI_APP, dest)
    return dest


# Running bitbake itself: the runqueue, bitbake-worker, setscene tasks.

def bitbake_tree(dest):
    """Lay out DEST as a bitbake checkout is laid out, for `bitbake` to run from.

    PyPI's bitbake-setup installs only the bb library. bb finds bitbake-server
    and bitbake-worker by the real path of its own files (bin/ beside lib/bb),
    so the tree gets a copy of the installed bb (a symlink would resolve back
    into the venv), the stand-ins for the packages the wheel leaves out
    (bbstubs: hashserv, prserv) beside it, and the test-only scripts of
    bbbin/ in bin/.
    """
    dest = Path(dest)
    nocache = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(bb.__file__).parent, dest / "lib" / "bb", ignore=nocache)
    for stub in STUBS.iterdir():
        if stub.is_dir() and not stub.name.startswith("__"):
            shutil.copytree(stub, dest / "lib" / stub.name, ignore=nocache)
    (dest / "bin").mkdir()
    for script in ("bitbake", "bitbake-server", "bitbake-worker"):
        shutil.copyfile(BBBIN / script, dest / "bin" / script)
        (dest / "bin" / script).chmod(0o755)
    return dest


def run_bitbake(tree, topdir, *args, timeout=600):
    """Run `bitbake ARGS` in the build directory TOPDIR; the CompletedProcess.

    bitbake keeps only a few variables of its environment for the build
    (bb.utils.clean_environment); LC_ALL gives it the UTF-8 locale it wants.
    """
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONDONTWRITEBYTECODE") if k in os.environ}
    env["LC_ALL"] = "C.UTF-8"
    return subprocess.run([sys.executable, str(Path(tree) / "bin" / "bitbake"), *args], cwd=topdir, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
