#!/usr/bin/env python3
"""Independent PE reader for tests/uki.rs (no code shared with pki-signer).

    sections.py UKI OUTDIR   writes OUTDIR/<name without dot> for every section:
                             its VirtualSize bytes (raw data, zero-filled past
                             SizeOfRawData), i.e. what systemd-stub measures;
                             prints "name vs va rawoff rawsize" lines.
"""
import os
import struct
import sys

uki, out = sys.argv[1], sys.argv[2]
d = open(uki, "rb").read()
pe = struct.unpack_from("<I", d, 0x3C)[0]
assert d[pe:pe + 4] == b"PE\0\0", "no PE signature"
nsect = struct.unpack_from("<H", d, pe + 6)[0]
optsize = struct.unpack_from("<H", d, pe + 20)[0]
table = pe + 24 + optsize
os.makedirs(out, exist_ok=True)
for i in range(nsect):
    name, vs, va, rs, rp = struct.unpack_from("<8sIIII", d, table + 40 * i)
    name = name.rstrip(b"\0").decode()
    data = d[rp:rp + min(vs, rs)] + b"\0" * max(0, vs - rs)
    with open(os.path.join(out, name.lstrip(".")), "wb") as f:
        f.write(data)
    print(name, vs, va, rp, rs)
