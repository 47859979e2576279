#!/usr/bin/env python3
"""The token's own signing rate, as a baseline for `pki-signer offline sign`.

    p11-sign-loop.py MODULE TOKEN_LABEL KEY_LABEL N

One session, one login (PIN from $PKI_SIGNER_PKCS11_PIN), then N C_Sign calls
with CKM_RSA_PKCS over a SHA-256 DigestInfo: the smallest thing a token does
per Authenticode signature. Prints "SIGNATURES SECONDS" on stdout. PyKCS11 is
a thin wrapper over the C API, so this is what the token itself allows from
one process; pki-signer's rate is judged against it.
"""
import os
import sys
import time

import PyKCS11

module, token, key_label, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == token)
session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
session.login(os.environ["PKI_SIGNER_PKCS11_PIN"])
key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                           (PyKCS11.CKA_LABEL, key_label)])[0]
# DER DigestInfo prefix of SHA-256 (RFC 8017 9.2 note 1), then a digest.
prefix = bytes.fromhex("3031300d060960864801650304020105000420")
mech = PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS, None)
start = time.monotonic()
for i in range(n):
    session.sign(key, prefix + i.to_bytes(32, "big"), mech)
elapsed = time.monotonic() - start
session.logout()
session.closeSession()
print(n, "%.6f" % elapsed)
