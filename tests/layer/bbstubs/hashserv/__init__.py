"""Stand-in for BitBake's hashserv package, which PyPI's bitbake-setup wheel
leaves out while bb.siggen imports it at module level.

The layer tests use the basichash signature generator, which never talks to a
hash equivalence server, so nothing here is ever called.
"""


def is_valid_unihash(unihash):
    raise NotImplementedError("hash equivalence is not available in the layer tests")


def create_client(*args, **kwargs):
    raise NotImplementedError("hash equivalence is not available in the layer tests")


def create_server(*args, **kwargs):
    raise NotImplementedError("hash equivalence is not available in the layer tests")
