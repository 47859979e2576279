"""Stand-in for BitBake's prserv package, which PyPI's bitbake-setup wheel
leaves out while bb.cooker imports prserv.serv at module level.

The layer tests set no PRSERV_HOST, so the cooker never starts a PR server.
"""
