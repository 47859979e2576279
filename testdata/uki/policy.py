#!/usr/bin/env python3
"""Independent TPM2 PolicyPCR check for tests/uki.rs.

    policy.py CALC.json PCRSIG.json OUTDIR

CALC.json is `systemd-measure calculate --json=short` output, PCRSIG.json a
.pcrsig. For every bank and phase it recomputes the PolicyPCR digest from the
PCR 11 value systemd-measure predicted (TPM 2.0 Part 3, TPM2_PolicyPCR, in a
SHA-256 policy session, from an all-zero policy):

    pol = SHA256(0^32 || TPM_CC_PolicyPCR (0x17F) ||
                 TPML_PCR_SELECTION{count 1, hash alg, sizeofSelect 3, 00 08 00} ||
                 SHA256(pcr11))

asserts it equals "pol", and writes OUTDIR/<bank>-<i>.pol (the digest) and
.sig (the decoded signature) for `openssl dgst -<bank> -verify`.
"""
import base64
import hashlib
import json
import os
import struct
import sys

ALG = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}

calc = json.load(open(sys.argv[1]))
sig = json.load(open(sys.argv[2]))
out = sys.argv[3]
os.makedirs(out, exist_ok=True)
n = 0
for bank, entries in sig.items():
    predicted = calc[bank]
    assert len(predicted) == len(entries), (bank, len(predicted), len(entries))
    for i, (c, s) in enumerate(zip(predicted, entries)):
        pcr = bytes.fromhex(c["hash"])
        sel = struct.pack(">IHB3s", 1, ALG[bank], 3, bytes([0x00, 0x08, 0x00]))
        pol = hashlib.sha256(
            b"\0" * 32 + struct.pack(">I", 0x17F) + sel + hashlib.sha256(pcr).digest()
        ).digest()
        assert pol.hex() == s["pol"], (bank, c["phase"], pol.hex(), s["pol"])
        assert s["pcrs"] == [11], s["pcrs"]
        open(os.path.join(out, f"{bank}-{i}.pol"), "wb").write(pol)
        open(os.path.join(out, f"{bank}-{i}.sig"), "wb").write(base64.b64decode(s["sig"]))
        print(f"{bank}-{i} {c['phase']}")
        n += 1
assert n > 0
