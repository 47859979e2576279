"""See __init__.py: the two functions bb.cooker calls, for a build without PRSERV_HOST."""


class PRServiceConfigError(Exception):
    pass


def auto_start(d):
    # bb.cooker.handlePRServ: None means no PR server, as with an empty PRSERV_HOST.
    if (d.getVar("PRSERV_HOST") or "").strip():
        raise PRServiceConfigError("PRSERV_HOST is set, but the layer tests have no PR server")
    return None


def auto_shutdown():
    pass
